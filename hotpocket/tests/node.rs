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

#[tokio::test]
async fn handshake_with_a_bad_signature_is_refused() {
    use ed25519_dalek::Signer;
    use futures_util::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let mut ws = raw_ws(&node.addr).await;
    let hello = next_json(&mut ws).await.unwrap();
    assert_eq!(hello["type"], "user_challenge");
    assert_eq!(hello["contract_id"], CONTRACT_ID);
    let challenge = hello["challenge"].as_str().unwrap();
    assert_eq!(challenge.len(), 32, "16 random bytes in hex");
    // Signed by another key than the one claimed.
    let sig = key(2).sign(challenge.as_bytes());
    let response = serde_json::json!({
        "type": "user_challenge_response",
        "sig": hex::encode(sig.to_bytes()),
        "pubkey": berth_hotpocket_client::protocol::pubkey_hex(&owner.verifying_key()),
        "protocol": "json",
    });
    ws.send(tokio_tungstenite::tungstenite::Message::binary(
        response.to_string().into_bytes(),
    ))
    .await
    .unwrap();
    let lcl = serde_json::json!({"type": "lcl"}).to_string().into_bytes();
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::binary(lcl))
        .await;
    assert!(
        next_json(&mut ws).await.is_none(),
        "node must close the connection"
    );
}

#[tokio::test]
async fn one_connection_per_user_key() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let user = key(3);
    let _first = node.connect(&user).await;
    let second = berth_hotpocket_client::client::Client::connect(
        &node.addr,
        user.clone(),
        berth_hotpocket_client::client::ConnectOptions::default(),
    )
    .await;
    assert!(
        second.is_err(),
        "a second connection with the same key is refused"
    );
    // Another key still connects.
    let _other = node.connect(&key(4)).await;
    // The owner always gets in: a newer login replaces its older session (which may be a
    // half-dead one), so it is never locked out by its own stale connection.
    let old = node.connect(&owner).await;
    let new = node.connect(&owner).await;
    new.lcl().await.unwrap();
    assert!(
        old.lcl().await.is_err(),
        "the owner's older session is closed"
    );
}

#[tokio::test]
async fn bson_protocol_carries_binary_inputs_outputs_and_uploads() {
    use berth_hotpocket_client::client::{Client, ConnectOptions};
    use berth_hotpocket_client::protocol::user::Protocol;
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let opts = ConnectOptions {
        protocol: Protocol::Bson,
        ..Default::default()
    };
    let client = Client::connect(&node.addr, owner.clone(), opts.clone())
        .await
        .unwrap();
    // The upload goes as a BSON document with binary content (the stock Evernode form).
    let reply = client
        .upload_bundle(&bundle("echo-contract", basic_config()))
        .await
        .unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    let binary = vec![0u8, 159, 146, 150, 255, b'{'];
    let out = client.submit_and_wait(&binary).await.unwrap();
    assert_eq!(out.outputs, vec![binary.clone()]);
    assert_eq!(client.read(&binary).await.unwrap(), binary);
    let stat = client.stat().await.unwrap();
    assert!(stat.contract_execution_enabled);
    assert_eq!(stat.current_unl.len(), 1);
    let (seq, hash) = client.lcl().await.unwrap();
    assert!(seq >= out.ledger_seq_no && hash.len() == 64);
    // A JSON user of the same node sees the same ledger chain.
    let json_user = node.connect(&key(2)).await;
    assert!(json_user.lcl().await.unwrap().0 >= seq);
}
