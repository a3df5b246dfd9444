//! Reliable submission against an in-process localnet (ledgers close on `ledger_accept`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_mb_xrpl::{Client, SubmitConfig, SubmitError, Submitter, TxStatus};
use berth_xrpl_core::{KeyPair, KeyType};
use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn payment(to: &str, drops: u64) -> Value {
    json!({"TransactionType": "Payment", "Destination": to, "Amount": drops.to_string()})
}

fn submit_config() -> SubmitConfig {
    SubmitConfig {
        poll_interval: Duration::from_millis(100),
        ..SubmitConfig::default()
    }
}

/// Closes a ledger every `every` until cancelled.
fn close_ledgers(c: &Client, every: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let (c, t) = (c.clone(), token.clone());
    tokio::spawn(async move {
        while !t.is_cancelled() {
            tokio::time::sleep(every).await;
            let _ = c.request("ledger_accept", json!({})).await;
        }
    });
    token
}

#[tokio::test]
async fn prepare_autofills_and_submission_waits_for_validation() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Secp256k1, 100 * XRP).await;
    let dest = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let info = c
        .request("account_info", json!({"account": key.address()}))
        .await
        .unwrap();
    let seq = info["account_data"]["Sequence"].as_u64().unwrap() as u32;
    let current = c.request("ledger_current", json!({})).await.unwrap()["ledger_current_index"]
        .as_u64()
        .unwrap() as u32;
    let s = Submitter::new(c.clone(), key, submit_config()).unwrap();
    let signed = s.prepare(payment(&dest, XRP)).await.unwrap();
    assert_eq!(signed.sequence, seq);
    assert_eq!(signed.fee_drops, 10);
    assert_eq!(signed.last_ledger_sequence, current + 20);
    assert_eq!(signed.account, s.account());
    assert_eq!(signed.tx_json["Fee"], "10");
    assert_eq!(signed.hash.len(), 64);
    // The SignedTx survives a round trip through JSON (what the agent's outbox stores).
    let stored: berth_mb_xrpl::SignedTx =
        serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
    assert_eq!(stored, signed);
    assert_eq!(
        s.status(&signed.hash).await.unwrap(),
        TxStatus::NotFound {
            validated_ledger: current - 1
        }
    );

    let closer = close_ledgers(&c, Duration::from_millis(150));
    let v = s.submit_and_wait(&stored).await.unwrap();
    closer.cancel();
    assert_eq!(v.hash, signed.hash);
    assert_eq!(v.result, "tesSUCCESS");
    assert!(v.is_success());
    assert!(v.ledger_index >= current);
    assert!(matches!(s.status(&signed.hash).await.unwrap(), TxStatus::Validated(x) if x == v));
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn concurrent_submissions_get_consecutive_sequences_and_all_validate() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Ed25519, 100 * XRP).await;
    let dest = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let s = Arc::new(Submitter::new(c.clone(), key, submit_config()).unwrap());
    let (a, b) = tokio::join!(
        s.prepare(payment(&dest, 1000)),
        s.prepare(payment(&dest, 2000))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut seqs = [a.sequence, b.sequence];
    seqs.sort();
    assert_eq!(seqs[1], seqs[0] + 1);
    let closer = close_ledgers(&c, Duration::from_millis(150));
    // Submit the later sequence first: it is held (terPRE_SEQ) until the gap fills.
    let (later, earlier) = if a.sequence > b.sequence {
        (a, b)
    } else {
        (b, a)
    };
    let (r1, r2) = tokio::join!(s.submit_and_wait(&later), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.submit_and_wait(&earlier).await
    });
    closer.cancel();
    assert!(r1.unwrap().is_success());
    assert!(r2.unwrap().is_success());
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn a_sequence_taken_by_another_transaction_is_reported() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Secp256k1, 100 * XRP).await;
    let seed = key.seed().unwrap();
    let dest = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let s = Submitter::new(c.clone(), key, submit_config()).unwrap();
    let mine = s.prepare(payment(&dest, 1000)).await.unwrap();
    // Another process with the same key uses that sequence first.
    let other = Submitter::new(
        c.clone(),
        KeyPair::from_seed(&seed).unwrap(),
        submit_config(),
    )
    .unwrap();
    let theirs = other.prepare(payment(&dest, 5000)).await.unwrap();
    assert_eq!(theirs.sequence, mine.sequence);
    let closer = close_ledgers(&c, Duration::from_millis(150));
    other.submit_and_wait(&theirs).await.unwrap();
    let err = s.submit_and_wait(&mine).await.unwrap_err();
    assert!(
        matches!(&err, SubmitError::SequenceTaken { hash, sequence, .. } if *hash == mine.hash && *sequence == mine.sequence),
        "{err}"
    );
    // Prepared again, it gets the next free sequence and goes through.
    let again = s.prepare_retry(&mine).await.unwrap();
    assert_eq!(again.sequence, mine.sequence + 1);
    assert!(again.fee_drops > mine.fee_drops);
    assert!(s.submit_and_wait(&again).await.unwrap().is_success());
    closer.cancel();
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn last_ledger_sequence_expiry_is_reported() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Ed25519, 100 * XRP).await;
    let dest = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let cfg = SubmitConfig {
        last_ledger_offset: 2,
        ..submit_config()
    };
    let s = Submitter::new(c.clone(), key, cfg).unwrap();

    // Case 1: submitted after its last ledger passed: tefMAX_LEDGER.
    let late = s.prepare(payment(&dest, 1000)).await.unwrap();
    for _ in 0..3 {
        accept(&c).await;
    }
    let err = s.submit_and_wait(&late).await.unwrap_err();
    assert!(
        matches!(&err, SubmitError::Expired { hash, last_ledger_sequence, last_result, .. }
            if *hash == late.hash && *last_ledger_sequence == late.last_ledger_sequence && last_result == "tefMAX_LEDGER"),
        "{err}"
    );

    // Case 2: held behind a sequence gap (terPRE_SEQ) while ledgers close past its last ledger.
    let gap = s.prepare(payment(&dest, 1000)).await.unwrap();
    let held = s.prepare(payment(&dest, 1000)).await.unwrap();
    assert_eq!(held.sequence, gap.sequence + 1);
    let closer = close_ledgers(&c, Duration::from_millis(100));
    let err = s.submit_and_wait(&held).await.unwrap_err();
    closer.cancel();
    match &err {
        SubmitError::Expired {
            hash,
            validated_ledger,
            last_ledger_sequence,
            last_result,
        } => {
            assert_eq!(*hash, held.hash);
            assert!(validated_ledger >= last_ledger_sequence);
            assert_eq!(last_result, "terPRE_SEQ");
        }
        other => panic!("expected Expired, got {other}"),
    }
    assert!(
        matches!(s.status(&held.hash).await.unwrap(), TxStatus::NotFound { validated_ledger } if validated_ledger >= held.last_ledger_sequence)
    );
    // After expiry the counter is reset: the next prepare reuses the free sequence.
    let next = s.prepare(payment(&dest, 1000)).await.unwrap();
    assert_eq!(next.sequence, gap.sequence);
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn the_fee_cap_is_respected() {
    // The network wants 100 drops; a cap of 50 refuses to prepare.
    let net = localnet_with(None, "127.0.0.1:0", 100).await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Ed25519, 100 * XRP).await;
    let seed = key.seed().unwrap();
    let dest = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let capped = SubmitConfig {
        max_fee_drops: 50,
        ..submit_config()
    };
    let s = Submitter::new(c.clone(), key, capped).unwrap();
    let err = s.prepare(payment(&dest, 1000)).await.unwrap_err();
    assert!(
        matches!(
            err,
            SubmitError::FeeAboveCap {
                fee_drops: 100,
                cap: 50,
                ..
            }
        ),
        "{err}"
    );

    // A transaction signed with too low a fee gets telINSUF_FEE_P and is re-signed with raised
    // fees up to the cap: first with a cap below the network fee (gives up at the cap) ...
    let mut low = payment(&dest, 1000);
    low["Fee"] = json!("40");
    let signed = s.prepare(low.clone()).await.unwrap();
    assert_eq!(signed.fee_drops, 40);
    let seen = Mutex::new(Vec::new());
    let err = s
        .submit_and_wait_with(&signed, |t| {
            seen.lock().unwrap().push(t.fee_drops);
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::FeeCapReached { cap: 50, result, .. } if result == "telINSUF_FEE_P"),
        "{err}"
    );
    assert_eq!(*seen.lock().unwrap(), vec![50]);

    // ... then with a cap above it: raised 40 → 60 → 90 → 135 (capped at 120), validated.
    let roomy = SubmitConfig {
        max_fee_drops: 120,
        ..submit_config()
    };
    let key2 = KeyPair::from_seed(&seed).unwrap();
    let s2 = Submitter::new(c.clone(), key2, roomy).unwrap();
    let signed = s2.prepare(low).await.unwrap();
    let seen = Mutex::new(Vec::new());
    let closer = close_ledgers(&c, Duration::from_millis(150));
    let v = s2
        .submit_and_wait_with(&signed, |t| {
            seen.lock().unwrap().push(t.clone());
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap();
    closer.cancel();
    let seen = seen.into_inner().unwrap();
    let fees: Vec<u64> = seen.iter().map(|t| t.fee_drops).collect();
    assert_eq!(fees, vec![60, 90, 120]);
    // Each version names the ones it replaces, so a crashed caller finds whichever validated.
    let last = seen.last().unwrap();
    assert_eq!(last.hash, v.hash);
    assert_eq!(
        last.replaces,
        vec![
            signed.hash.clone(),
            seen[0].hash.clone(),
            seen[1].hash.clone()
        ]
    );
    let mut first_only = seen[0].clone();
    first_only.replaces.clear();
    assert!(matches!(
        s2.status_of(&first_only).await.unwrap(),
        TxStatus::NotFound { .. }
    ));
    let mut newest_first = signed.clone();
    newest_first.replaces = vec![v.hash.clone()];
    assert!(matches!(s2.status_of(&newest_first).await.unwrap(), TxStatus::Validated(x) if x == v));
    assert!(v.is_success());
    assert_ne!(v.hash, signed.hash);
    let tx = c
        .request("tx", json!({"transaction": v.hash}))
        .await
        .unwrap();
    assert_eq!(tx["tx_json"]["Fee"], "120");
    assert_eq!(
        tx["tx_json"]["Sequence"].as_u64().unwrap() as u32,
        signed.sequence
    );
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn a_tec_result_is_validated_with_its_code() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Ed25519, 100 * XRP).await;
    let nobody = KeyPair::generate(KeyType::Ed25519).address();
    let s = Submitter::new(c.clone(), key, submit_config()).unwrap();
    // 1 XRP cannot create an account (reserve 10 XRP): tecNO_DST_INSUF_XRP.
    let signed = s.prepare(payment(&nobody, XRP)).await.unwrap();
    let closer = close_ledgers(&c, Duration::from_millis(150));
    let v = s.submit_and_wait(&signed).await.unwrap();
    closer.cancel();
    assert_eq!(v.result, "tecNO_DST_INSUF_XRP");
    assert_eq!(v.ter(), Some(berth_xrpl_core::Ter::tecNO_DST_INSUF_XRP));
    assert!(!v.is_success());
    assert_eq!(v.meta["TransactionResult"], "tecNO_DST_INSUF_XRP");
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn the_same_blob_submitted_twice_validates_once() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Secp256k1, 100 * XRP).await;
    let address = key.address();
    let dest = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let s = Submitter::new(c.clone(), key, submit_config()).unwrap();
    let signed = s.prepare(payment(&dest, 1234)).await.unwrap();
    // Submitted by hand first: known to the server, not yet validated.
    let r = c
        .request("submit", json!({"tx_blob": signed.blob}))
        .await
        .unwrap();
    assert_eq!(r["engine_result"], "tesSUCCESS");
    assert!(matches!(
        s.status(&signed.hash).await.unwrap(),
        TxStatus::Pending { .. }
    ));
    let closer = close_ledgers(&c, Duration::from_millis(150));
    let (a, b) = tokio::join!(s.submit_and_wait(&signed), s.submit_and_wait(&signed));
    closer.cancel();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    let h = berth_mb_xrpl::history::account_history(&c, &address, 1)
        .await
        .unwrap();
    let sent: Vec<_> = h
        .transactions
        .iter()
        .filter(|t| t.account() == address)
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].hash, signed.hash);
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn permanent_rejections_name_the_result() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = funded(&c, KeyType::Ed25519, 100 * XRP).await;
    let s = Submitter::new(c.clone(), key, submit_config()).unwrap();
    // A payment to oneself is malformed: temREDUNDANT.
    let signed = s.prepare(payment(s.account(), 1000)).await.unwrap();
    let err = s.submit_and_wait(&signed).await.unwrap_err();
    assert!(
        matches!(&err, SubmitError::Rejected { result, hash, .. } if result.starts_with("tem") && *hash == signed.hash),
        "{err}"
    );
    // An unfunded account cannot prepare.
    let ghost = Submitter::new(
        c.clone(),
        KeyPair::generate(KeyType::Ed25519),
        submit_config(),
    )
    .unwrap();
    let err = ghost.prepare(payment(s.account(), 1000)).await.unwrap_err();
    assert!(matches!(err, SubmitError::AccountNotFound { .. }), "{err}");
    // A transaction the codec cannot encode names the field.
    let err = s
        .prepare(json!({"TransactionType": "Payment", "Destination": "nope", "Amount": "1"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Destination"), "{err}");
    c.shutdown().await;
    net.shutdown().await;
}
