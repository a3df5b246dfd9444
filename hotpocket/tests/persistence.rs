//! Ledgers, inputs, outputs and state survive a restart; replays give identical outputs.
#![allow(clippy::unwrap_used)]

mod common;

use berth_hotpocket::store::Store;
use common::*;

#[tokio::test]
async fn restart_keeps_lcl_chain_and_contract_state() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 100);
    let client = install(&node, &owner, &bundle("counter-contract", basic_config())).await;
    for want in ["1", "2"] {
        let out = client.submit_and_wait(b"incr visits").await.unwrap();
        assert_eq!(out.outputs, vec![want.as_bytes().to_vec()]);
    }
    drop(client);
    node.stop();
    let db = dir.path().join("ledger.sqlite");
    let before = Store::open(&db).unwrap().lcl().unwrap();
    assert!(before.seq_no > 2);

    let node = Node::start(dir.path());
    let client = node.connect(&owner).await;
    let (seq, _) = client.lcl().await.unwrap();
    assert!(
        seq >= before.seq_no,
        "lcl resumes, not restarts from genesis"
    );
    let out = client.submit_and_wait(b"incr visits").await.unwrap();
    assert_eq!(out.outputs, vec![b"3".to_vec()], "state survived");
    assert_eq!(client.read("get visits").await.unwrap(), b"3");
    drop(client);
    node.stop();
    let store = Store::open(&db).unwrap();
    let next = store.ledger(before.seq_no + 1).unwrap().unwrap();
    assert_eq!(
        next.prev_hash, before.hash,
        "the chain continues from the old lcl"
    );
    let kept = store.ledger(before.seq_no).unwrap().unwrap();
    assert_eq!(kept.hash, before.hash);
}

#[tokio::test]
async fn replaying_the_same_inputs_gives_identical_outputs_and_state() {
    let inputs: Vec<&[u8]> = vec![
        b"set a 1", b"incr a", b"incr b", b"get a", b"del a", b"get a",
    ];
    let mut runs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let owner = key(1);
        let node = Node::create(dir.path(), &owner, 100);
        let _owner = install(&node, &owner, &bundle("counter-contract", basic_config())).await;
        let user = node.connect(&key(2)).await;
        let mut outputs = Vec::new();
        for input in &inputs {
            outputs.push(user.submit_and_wait(input).await.unwrap().outputs);
        }
        drop(user);
        node.stop();
        let store = Store::open(&dir.path().join("ledger.sqlite")).unwrap();
        let recorded = store
            .outputs_for_user(&berth_hotpocket_client::protocol::pubkey_hex(
                &key(2).verifying_key(),
            ))
            .unwrap();
        let lcl = store.lcl().unwrap();
        let state_hash = store.ledger(lcl.seq_no).unwrap().unwrap().state_hash;
        let recorded: Vec<Vec<u8>> = recorded.into_iter().map(|(_, o)| o).collect();
        runs.push((outputs, recorded, state_hash));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1, runs[1].1, "persisted outputs identical");
    assert_eq!(runs[0].2, runs[1].2, "state hash identical");
    assert_eq!(runs[0].0[3], vec![b"2".to_vec()]);
    assert_eq!(runs[0].0[5], vec![b"(none)".to_vec()]);
}
