//! The real `hotpocket` binary over TLS WebSocket with the real client.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test]
async fn handshake_with_server_challenge_then_lcl_and_stat() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 100);
    let client = node.connect(&owner).await;
    assert_eq!(client.contract_id, CONTRACT_ID);
    let node_pk = client.node_pubkey.clone().unwrap();
    assert_eq!(client.unl, vec![node_pk.clone()]);
    let (seq1, _) = client.lcl().await.unwrap();
    sleep_ms(350).await;
    let stat = client.stat().await.unwrap();
    assert!(stat.ledger_seq_no > seq1, "ledgers close every round");
    assert_eq!(stat.roundtime, 100);
    assert!(!stat.contract_execution_enabled);
    assert_eq!(stat.current_unl, vec![node_pk]);
}

#[tokio::test]
async fn owner_uploads_echo_bundle_and_inputs_are_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let client = node.connect(&owner).await;
    let status = client.bootstrap_status().await.unwrap();
    assert_eq!(status.status, "ok");
    let reply = client
        .upload_bundle(&bundle("echo-contract", basic_config()))
        .await
        .unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    let out = client.submit_and_wait(b"hello world").await.unwrap();
    assert_eq!(out.outputs, vec![b"hello world".to_vec()]);
    let other = node.connect(&key(9)).await;
    let out = other.submit_and_wait(br#"{"a":1}"#).await.unwrap();
    assert_eq!(out.outputs, vec![br#"{"a":1}"#.to_vec()]);
    assert_eq!(other.read("ping").await.unwrap(), b"ping");
}
