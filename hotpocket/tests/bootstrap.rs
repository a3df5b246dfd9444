//! The bootstrap: uploads by the owner and by strangers, malformed bundles, rollback.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn refused(reply: &berth_hotpocket_client::protocol::bundle::BootstrapReply, needle: &str) {
    assert_eq!(reply.kind, "uploadResult");
    assert_eq!(reply.status, "fail", "{reply:?}");
    assert!(
        reply.message.contains(needle),
        "`{}` should mention `{needle}`",
        reply.message
    );
}

#[tokio::test]
async fn stranger_gets_user_not_allowed_before_install() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::create(dir.path(), &key(1), 200);
    let stranger = node.connect(&key(7)).await;
    // A small bundle: a stranger's message is bounded by `user_msg_bytes`, far below a
    // debug build of the echo contract on a small machine.
    let small = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        ("contract", b"#!/bin/sh\ncat\n".to_vec(), 0o755),
    ]);
    let reply = stranger.upload_bundle(&small).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert_eq!(reply.message, "UserNotAllowed");
    let status = stranger.bootstrap_status().await.unwrap();
    assert_eq!(status.message, "UserNotAllowed");
    let other = stranger.submit_and_wait(b"hello").await.unwrap();
    assert!(String::from_utf8_lossy(&other.outputs[0]).contains("UserNotAllowed"));
    // Nothing was installed.
    let owner = node.connect(&key(1)).await;
    assert!(!owner.stat().await.unwrap().contract_execution_enabled);
}

#[tokio::test]
async fn malformed_bundles_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let client = node.connect(&owner).await;
    let cfg = |v: serde_json::Value| v.to_string().into_bytes();
    let bin = b"#!/bin/sh\nexit 0\n".to_vec();

    refused(
        &client.upload_bundle(b"this is not a zip").await.unwrap(),
        "not a valid zip",
    );
    let no_config = zip_of(&[("run.sh", bin.clone(), 0o755)]);
    refused(
        &client.upload_bundle(&no_config).await.unwrap(),
        "no contract.config",
    );
    let missing_bin = zip_of(&[(
        "contract.config",
        cfg(serde_json::json!({"bin_path": "nothere"})),
        0o644,
    )]);
    refused(
        &client.upload_bundle(&missing_bin).await.unwrap(),
        "`nothere` does not exist",
    );
    let no_bin_path = zip_of(&[(
        "contract.config",
        cfg(serde_json::json!({"version": "1"})),
        0o644,
    )]);
    refused(
        &client.upload_bundle(&no_bin_path).await.unwrap(),
        "bin_path",
    );
    let bad_range = zip_of(&[(
        "contract.config",
        cfg(serde_json::json!({"bin_path": "/bin/sh", "consensus": {"roundtime": 0}})),
        0o644,
    )]);
    refused(
        &client.upload_bundle(&bad_range).await.unwrap(),
        "consensus.roundtime",
    );
    let slip = zip_of(&[
        (
            "contract.config",
            cfg(serde_json::json!({"bin_path": "/bin/sh"})),
            0o644,
        ),
        ("../../escape.txt", b"x".to_vec(), 0o644),
    ]);
    refused(
        &client.upload_bundle(&slip).await.unwrap(),
        "escapes the contract directory",
    );
    assert!(!dir.path().join("escape.txt").exists());
    let link = zip_of(&[
        (
            "contract.config",
            cfg(serde_json::json!({"bin_path": "/bin/sh"})),
            0o644,
        ),
        ("evil", b"/etc/passwd".to_vec(), 0o120777),
    ]);
    refused(&client.upload_bundle(&link).await.unwrap(), "symlink");
    assert!(!client.stat().await.unwrap().contract_execution_enabled);
}

#[tokio::test]
async fn failing_install_rolls_back_and_a_later_upload_replaces_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let client = install(&node, &owner, &bundle("counter-contract", basic_config())).await;
    let out = client.submit_and_wait(b"incr hits").await.unwrap();
    assert_eq!(out.outputs, vec![b"1".to_vec()]);

    // install.sh fails: the state and the counter contract stay.
    let counter = std::fs::read(example_bin("counter-contract")).unwrap();
    let failing = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        (
            "contract",
            std::fs::read(example_bin("echo-contract")).unwrap(),
            0o755,
        ),
        (
            "install.sh",
            b"#!/bin/sh\necho installing\nexit 7\n".to_vec(),
            0o755,
        ),
    ]);
    let reply = client.upload_bundle(&failing).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert!(reply.message.contains("exit code 7"), "{}", reply.message);
    let state = dir.path().join("contract_fs/state");
    assert_eq!(
        std::fs::read(state.join("contract")).unwrap(),
        counter,
        "binary rolled back"
    );
    assert!(!state.join("install.sh").exists());
    let out = client.submit_and_wait(b"incr hits").await.unwrap();
    assert_eq!(out.outputs, vec![b"2".to_vec()], "counter state kept");

    // install.sh that hangs is stopped by the timeout.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("hp.cfg")).unwrap()).unwrap();
    assert_eq!(cfg["bootstrap"]["install_timeout_secs"], 120);
    drop(client);
    node.stop();
    cfg["bootstrap"]["install_timeout_secs"] = serde_json::json!(1);
    std::fs::write(dir.path().join("hp.cfg"), cfg.to_string()).unwrap();
    let node = Node::start(dir.path());
    let client = node.connect(&owner).await;
    let hanging = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        (
            "contract",
            std::fs::read(example_bin("echo-contract")).unwrap(),
            0o755,
        ),
        ("install.sh", b"#!/bin/sh\nsleep 30\n".to_vec(), 0o755),
    ]);
    let reply = client.upload_bundle(&hanging).await.unwrap();
    assert!(
        reply.message.contains("did not finish within 1 seconds"),
        "{}",
        reply.message
    );

    // A good install.sh runs once and the new contract replaces the old from the next round.
    let replacing = zip_of(&[
        (
            "contract.config",
            serde_json::json!({"bin_path": "contract", "version": "2.0"})
                .to_string()
                .into_bytes(),
            0o644,
        ),
        (
            "contract",
            std::fs::read(example_bin("echo-contract")).unwrap(),
            0o755,
        ),
        (
            "install.sh",
            b"#!/bin/sh\necho ran >> install.log\n".to_vec(),
            0o755,
        ),
    ]);
    let reply = client.upload_bundle(&replacing).await.unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    assert_eq!(
        std::fs::read_to_string(state.join("install.log")).unwrap(),
        "ran\n"
    );
    let out = client.submit_and_wait(b"incr hits").await.unwrap();
    assert_eq!(out.outputs, vec![b"incr hits".to_vec()], "echo now answers");
    let status = client.bootstrap_status().await.unwrap();
    assert_eq!(status.message, "Contract version 2.0 is installed");
    let fresh = node.connect(&key(4)).await;
    assert_eq!(fresh.contract_version, "2.0");
}

#[tokio::test]
async fn after_install_the_owners_own_upload_shaped_inputs_reach_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 200);
    let client = node.connect(&owner).await;
    // Before install the stock Evernode form is the installer's.
    let before = client
        .submit_and_wait(br#"{"type":"status"}"#)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&before.outputs[0]).contains("statusResult"),
        "{before:?}"
    );
    let reply = client
        .upload_bundle(&bundle("echo-contract", basic_config()))
        .await
        .unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    // After install, the owner's JSON and BSON inputs are the contract's, whatever their shape.
    for msg in [
        br#"{"type":"status"}"#.as_slice(),
        br#"{"type":"upload","content":"AA=="}"#.as_slice(),
    ] {
        let out = client.submit_and_wait(msg).await.unwrap();
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        assert_eq!(out.outputs.len(), 1, "{out:?}");
        assert_eq!(json(&out.outputs[0]), json(msg), "echoed by the contract");
    }
    // The owner request form still reaches the installer.
    let status = client.bootstrap_status().await.unwrap();
    assert_eq!(status.kind, "statusResult");
    assert_eq!(status.status, "ok");
}
