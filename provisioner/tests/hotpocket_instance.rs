//! The provisioner runs the real HotPocket instance image: its container contract
//! (entrypoint, HP_* environment, /state volume owned by uid 10001, read-only root)
//! must be the one the `hotpocket` runtime expects. The owner uploads the echo bundle
//! through the instance's TLS user port and gets an output back.
//! Builds the image with hotpocket/image/build.sh when it is missing; fails instead of
//! skipping when BERTH_REQUIRE_DOCKER=1.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_hotpocket::image::IMAGE_TAG;
use berth_hotpocket_client::client::{Client, ConnectOptions};
use berth_hotpocket_client::protocol::pubkey_hex;
use berth_provisioner::{InstanceIdentity, InstanceSpec, Provisioner};
use common::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The instance image and the echo bundle, built when missing.
fn ensure_hotpocket_image() -> PathBuf {
    let bundle = workspace().join("examples/bundles/echo.zip");
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE_TAG])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present || !bundle.exists() {
        let status = Command::new(workspace().join("hotpocket/image/build.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "hotpocket/image/build.sh failed");
    }
    bundle
}

#[tokio::test]
async fn the_provisioner_runs_the_hotpocket_image_and_the_owner_talks_to_it() {
    let Some(h) = Harness::new(config("hp", 24100, resources(1))).await else {
        return;
    };
    let bundle = ensure_hotpocket_image();
    let owner = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let ports = h.specs("x", 1).await[0].ports;
    let identity = InstanceIdentity {
        contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".into(),
        owner_pubkey: pubkey_hex(&owner.verifying_key()),
        node_secret: hex::encode([9u8; 32]),
    };
    let spec = InstanceSpec::hotpocket("hp0", "lease-hp0", identity, ports);
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start("hp0").await.unwrap();

    let addr = format!("127.0.0.1:{}", ports.user);
    let mut client = None;
    for _ in 0..100 {
        match Client::connect(&addr, owner.clone(), ConnectOptions::default()).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let logs = h.provisioner.logs("hp0", 50).await.unwrap_or_default();
    let client =
        client.unwrap_or_else(|| panic!("the instance never answered on {addr}; logs:\n{logs:?}"));
    let reply = client
        .upload_bundle(&std::fs::read(bundle).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    let out = client.submit_and_wait(b"leased").await.unwrap();
    assert_eq!(out.outputs, vec![b"leased".to_vec()]);
    drop(client);

    h.provisioner.destroy("hp0").await.unwrap();
    assert!(h.provisioner.list().await.unwrap().is_empty());
}
