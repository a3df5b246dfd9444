//! The node's part of anchoring a cluster on the XRP Ledger: it answers for its ledgers,
//! signs a checkpoint only of its own ledger, only the two allowed shapes of transaction,
//! and never two states at one seq, also after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use berth_hotpocket_client::client::ClientError;
use berth_schemas::checkpoint::Checkpoint;
use berth_xrpl_core::codec::{Amount, StObject, Value};
use berth_xrpl_core::fields::field;
use berth_xrpl_core::{decode_account_id, KeyPair, KeyType};
use common::*;

fn checkpoint_tx(account: [u8; 20], cp: &Checkpoint, sequence: u32) -> StObject {
    let memo = cp.to_memo();
    let mut m = StObject::new();
    m.set("MemoType", Value::Blob(memo.memo_type));
    m.set("MemoFormat", Value::Blob(memo.memo_format));
    m.set("MemoData", Value::Blob(memo.memo_data));
    let mut tx = StObject::new();
    tx.set("TransactionType", Value::UInt16(3));
    tx.set("Account", Value::AccountId(account));
    tx.set("Fee", Value::Amount(Amount::Drops(30)));
    tx.set("Sequence", Value::UInt32(sequence));
    tx.set("LastLedgerSequence", Value::UInt32(100));
    tx.set("SigningPubKey", Value::Blob(Vec::new()));
    tx.set("Memos", Value::Array(vec![(field("Memo").unwrap(), m)]));
    tx
}

/// A change to a good checkpoint.
type Change = fn(&mut Checkpoint);

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_signs_only_its_own_ledger_and_never_two_states_at_one_seq() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 100);
    let zip = bundle("counter-contract", basic_config());
    let client = install(&node, &owner, &zip).await;
    client.submit_and_wait(b"incr visits").await.unwrap();
    let (lcl, _) = client.lcl().await.unwrap();
    let seq = lcl - 1;

    // Any user may ask, not only the owner.
    let stranger = node.connect(&key(9)).await;
    let answer = stranger.ledger_at(seq).await.unwrap();
    assert!(answer.lcl_seq >= lcl);
    let own = answer.ledger.expect("the node has its ledger");
    assert_eq!(own.bundle_hash, *blake3::hash(&zip).as_bytes());
    assert!(stranger
        .ledger_at(lcl + 10_000)
        .await
        .unwrap()
        .ledger
        .is_none());

    let cluster = KeyPair::generate(KeyType::Ed25519).account_id();
    let good = Checkpoint {
        contract: CONTRACT_ID.into(),
        seq,
        ledger: own.hash,
        state: own.state_hash,
        bundle: own.bundle_hash,
    };
    let tx = checkpoint_tx(cluster, &good, 5);
    let signer = stranger.sign_checkpoint(&tx.to_bytes()).await.unwrap();
    // The node's XRPL account is the account of its ed25519 key.
    let node_key = KeyPair::from_ed25519_secret(&[0x42; 32]);
    assert_eq!(signer.account, node_key.address());
    assert_eq!(signer.signing_pub_key, node_key.public_key_hex());
    let mut entry = StObject::new();
    entry.set(
        "Account",
        Value::AccountId(decode_account_id(&signer.account).unwrap()),
    );
    entry.set(
        "SigningPubKey",
        Value::Blob(hex::decode(&signer.signing_pub_key).unwrap()),
    );
    entry.set(
        "TxnSignature",
        Value::Blob(hex::decode(&signer.txn_signature).unwrap()),
    );
    let mut signed = tx.clone();
    berth_xrpl_core::tx::multisign(&mut signed, vec![entry]);
    berth_xrpl_core::tx::verify_signatures(&signed).unwrap();
    // The same state again (a retry with another Sequence) is fine.
    stranger
        .sign_checkpoint(&checkpoint_tx(cluster, &good, 6).to_bytes())
        .await
        .unwrap();

    // Another state, bundle, contract or seq: refused, naming what differs.
    let variants: [(Change, &str); 4] = [
        (|c| c.state = [7; 32], "state hash"),
        (|c| c.bundle = [0; 32], "bundle hash"),
        (|c| c.contract = "other".into(), "contract"),
        (|c| c.seq += 10_000, "no ledger"),
    ];
    for (change, what) in variants {
        let mut bad = good.clone();
        change(&mut bad);
        let tx = checkpoint_tx(cluster, &bad, 7);
        let reason = refused(stranger.sign_checkpoint(&tx.to_bytes()).await);
        assert!(reason.contains(what), "{reason}");
    }

    // Only the two shapes: no payments, no big fees, no extra fields.
    let mut pay = checkpoint_tx(cluster, &good, 8);
    pay.set("TransactionType", Value::UInt16(0));
    pay.remove("Memos");
    pay.set("Destination", Value::AccountId([1; 20]));
    pay.set("Amount", Value::Amount(Amount::Drops(1_000_000)));
    assert!(refused(stranger.sign_checkpoint(&pay.to_bytes()).await).contains("not allowed"));
    let mut fee = checkpoint_tx(cluster, &good, 8);
    fee.set("Fee", Value::Amount(Amount::Drops(5_000_000)));
    assert!(refused(stranger.sign_checkpoint(&fee.to_bytes()).await).contains("Fee"));
    let mut flag = checkpoint_tx(cluster, &good, 8);
    flag.set("SetFlag", Value::UInt32(4));
    assert!(refused(stranger.sign_checkpoint(&flag.to_bytes()).await).contains("SetFlag"));
    assert!(refused(stranger.sign_checkpoint(b"garbage").await).contains("decode"));

    // A signer list naming exactly the UNL (this node alone), quorum 1: signed; another: not.
    let mut list = StObject::new();
    list.set("TransactionType", Value::UInt16(12));
    list.set("Account", Value::AccountId(cluster));
    list.set("Fee", Value::Amount(Amount::Drops(30)));
    list.set("Sequence", Value::UInt32(9));
    list.set("SigningPubKey", Value::Blob(Vec::new()));
    list.set("SignerQuorum", Value::UInt32(1));
    let entry_of = |account: [u8; 20]| {
        let mut e = StObject::new();
        e.set("Account", Value::AccountId(account));
        e.set("SignerWeight", Value::UInt16(1));
        (field("SignerEntry").unwrap(), e)
    };
    list.set(
        "SignerEntries",
        Value::Array(vec![entry_of(node_key.account_id())]),
    );
    stranger.sign_checkpoint(&list.to_bytes()).await.unwrap();
    list.set(
        "SignerEntries",
        Value::Array(vec![entry_of(node_key.account_id()), entry_of([3; 20])]),
    );
    assert!(refused(stranger.sign_checkpoint(&list.to_bytes()).await).contains("UNL"));
    drop(stranger);
    drop(client);
    node.stop();

    // Rewrite the node's ledger at `seq` (a tampered node) and restart it: it still refuses
    // to sign that other state at a seq it signed before.
    let db = dir.path().join("ledger.sqlite");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE ledgers SET state_hash = ?1 WHERE seq_no = ?2",
            rusqlite::params![[7u8; 32].as_slice(), seq],
        )
        .unwrap();
    }
    let node = Node::start(dir.path());
    let stranger = node.connect(&key(9)).await;
    let answer = stranger.ledger_at(seq).await.unwrap();
    assert_eq!(answer.ledger.unwrap().state_hash, [7; 32]);
    let mut tampered = good.clone();
    tampered.state = [7; 32];
    let reason = refused(
        stranger
            .sign_checkpoint(&checkpoint_tx(cluster, &tampered, 10).to_bytes())
            .await,
    );
    assert!(reason.contains("already signed another state"), "{reason}");
    drop(stranger);
    node.stop();
}
