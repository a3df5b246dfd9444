//! Input rules: signatures, nonces, max ledger, sizes and every reject reason.
#![allow(clippy::unwrap_used)]

mod common;

use berth_hotpocket_client::client::{Client, ConnectOptions, InputOutcome};
use common::*;
use ed25519_dalek::Signer;

fn rejected(reason: &str) -> InputOutcome {
    InputOutcome::Rejected {
        reason: reason.to_owned(),
    }
}

async fn echo_node(dir: &std::path::Path, roundtime: u64) -> (Node, Client) {
    let owner = key(1);
    let node = Node::create(dir, &owner, roundtime);
    let owner_client = install(&node, &owner, &bundle("echo-contract", basic_config())).await;
    (node, owner_client)
}

#[tokio::test]
async fn bad_signature_is_rejected_as_bad_sig() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _owner) = echo_node(dir.path(), 200).await;
    let user = node.connect(&key(5)).await;
    let (lcl, _) = user.lcl().await.unwrap();
    let container = format!(
        r#"{{"input":"hi","nonce":1,"max_ledger_seq_no":{}}}"#,
        lcl + 5
    );
    let sig = key(6).sign(container.as_bytes()).to_bytes().to_vec();
    let sent = user
        .submit_signed(container.into_bytes(), sig)
        .await
        .unwrap();
    assert_eq!(
        user.wait_status(&sent.input_hash).await.unwrap(),
        rejected("bad_sig")
    );
}

#[tokio::test]
async fn replayed_input_is_already_submitted_and_old_nonce_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _owner) = echo_node(dir.path(), 200).await;
    let user = node.connect(&key(5)).await;
    let sent = user.submit(b"first").await.unwrap();
    let outcome = user.wait_status(&sent.input_hash).await.unwrap();
    assert!(
        matches!(outcome, InputOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    // The same signed container again, after it is in a ledger.
    let again = user
        .submit_signed(sent.input_container.clone(), sent.sig.clone())
        .await
        .unwrap();
    assert_eq!(
        user.wait_status(&again.input_hash).await.unwrap(),
        rejected("already_submitted")
    );
    // A new input with a nonce not above the last one.
    let (lcl, _) = user.lcl().await.unwrap();
    let old = user
        .submit_with(b"older", sent.nonce - 1, lcl + 5)
        .await
        .unwrap();
    assert_eq!(
        user.wait_status(&old.input_hash).await.unwrap(),
        rejected("nonce_expired")
    );
    // Replayed within the same round: the second copy is refused.
    let fresh = user
        .submit_with(b"twice", sent.nonce + 10, lcl + 5)
        .await
        .unwrap();
    let copy = user
        .submit_signed(fresh.input_container.clone(), fresh.sig.clone())
        .await
        .unwrap();
    let statuses = (
        user.wait_status(&fresh.input_hash).await.unwrap(),
        user.wait_status(&copy.input_hash).await.unwrap(),
    );
    let both = [statuses.0, statuses.1];
    assert!(
        both.iter()
            .any(|s| matches!(s, InputOutcome::Accepted { .. })),
        "{both:?}"
    );
    assert!(both.contains(&rejected("already_submitted")), "{both:?}");
}

#[tokio::test]
async fn expired_and_too_far_max_ledger_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _owner) = echo_node(dir.path(), 200).await;
    let user = node.connect(&key(5)).await;
    let (lcl, _) = user.lcl().await.unwrap();
    let expired = user.submit_with(b"late", 10, lcl).await.unwrap();
    assert_eq!(
        user.wait_status(&expired.input_hash).await.unwrap(),
        rejected("max_ledger_expired")
    );
    let far = user.submit_with(b"far", 11, lcl + 1000).await.unwrap();
    assert_eq!(
        user.wait_status(&far.input_hash).await.unwrap(),
        rejected("max_ledger_offset_exceeded")
    );
    // Zero nonce and garbage containers are format errors.
    let zero = user.submit_with(b"zero", 0, lcl + 5).await.unwrap();
    assert_eq!(
        user.wait_status(&zero.input_hash).await.unwrap(),
        rejected("bad_msg_format")
    );
    let garbage = b"not json".to_vec();
    let sig = key(5).sign(&garbage).to_bytes().to_vec();
    let bad = user.submit_signed(garbage, sig).await.unwrap();
    assert_eq!(
        user.wait_status(&bad.input_hash).await.unwrap(),
        rejected("bad_msg_format")
    );
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_reject_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let user = node.connect(&key(5)).await;
    user.send_raw(b"{{{{".to_vec()).await.unwrap();
    user.send_raw(br#"{"type":"no_such_thing"}"#.to_vec())
        .await
        .unwrap();
    user.lcl().await.unwrap();
    let reasons: Vec<String> = user
        .take_unmatched()
        .into_iter()
        .filter_map(|m| match m {
            berth_hotpocket_client::protocol::user::Reply::InputStatus {
                reason: Some(r), ..
            } => Some(r.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec!["bad_msg_format".to_owned(), "invalid_msg_type".to_owned()]
    );
}

#[tokio::test]
async fn oversize_message_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("hp.cfg")).unwrap()).unwrap();
    assert_eq!(cfg["user"]["max_bytes_per_msg"], 32 * 1024 * 1024);
    node.stop();
    cfg["user"]["max_bytes_per_msg"] = serde_json::json!(64 * 1024);
    std::fs::write(dir.path().join("hp.cfg"), cfg.to_string()).unwrap();
    let node = Node::start(dir.path());
    let user = node.connect(&key(5)).await;
    let big = vec![b'x'; 100 * 1024];
    let _ = user.submit(&big).await;
    let after = user.lcl().await;
    assert!(
        after.is_err(),
        "connection must be closed after an oversize message"
    );
    // The node itself keeps serving.
    let again = node.connect(&key(5)).await;
    again.lcl().await.unwrap();
}

#[tokio::test]
async fn per_round_input_bytes_overflow_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 1000);
    let config =
        serde_json::json!({"bin_path": "contract", "round_limits": {"user_input_bytes": 1000}});
    let _owner = install(&node, &owner, &bundle("echo-contract", config)).await;
    let user = Client::connect(&node.addr, key(5), ConnectOptions::default())
        .await
        .unwrap();
    let (lcl, _) = user.lcl().await.unwrap();
    let chunk = vec![b'a'; 600];
    let first = user.submit_with(&chunk, 1, lcl + 5).await.unwrap();
    let second = user.submit_with(&chunk, 2, lcl + 5).await.unwrap();
    let a = user.wait_status(&first.input_hash).await.unwrap();
    let b = user.wait_status(&second.input_hash).await.unwrap();
    // Both may land in different rounds if a round boundary falls between them.
    if let (
        InputOutcome::Accepted {
            ledger_seq_no: x, ..
        },
        InputOutcome::Accepted {
            ledger_seq_no: y, ..
        },
    ) = (&a, &b)
    {
        assert_ne!(
            x, y,
            "600 + 600 bytes must not share a round with a 1000-byte limit"
        );
    } else {
        assert!(matches!(a, InputOutcome::Accepted { .. }), "{a:?}");
        assert_eq!(b, rejected("round_inputs_overflow"));
    }
}
