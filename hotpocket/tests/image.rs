//! The instance image under real Docker: read-only root, uid 10001, all capabilities dropped,
//! /state on a volume; the owner uploads the static echo bundle and talks to it over TLS.
//! Builds the image (hotpocket/image/build.sh) when it is missing. Fails instead of skipping
//! when BERTH_REQUIRE_DOCKER=1.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use berth_hotpocket::image::IMAGE_TAG;
use berth_hotpocket_client::client::{Client, ConnectOptions};
use berth_hotpocket_client::protocol::pubkey_hex;
use common::*;

/// Builds the image and bundles when missing.
fn ensure_image() -> PathBuf {
    assert_eq!(IMAGE_TAG, berth_test_support::HOTPOCKET_IMAGE);
    berth_test_support::ensure_hotpocket_image();
    berth_test_support::root().join("examples/bundles/echo.zip")
}

struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = docker(&args);
        }
    }
}

#[tokio::test]
async fn hardened_container_serves_an_uploaded_bundle() {
    if let Err(e) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        berth_test_support::docker_unreachable(e);
        return;
    }
    let bundle = ensure_image();
    let owner = key(1);
    let name = format!("berth-hp-test-{}", std::process::id());
    let _cleanup = Cleanup(vec![
        vec!["rm".into(), "-f".into(), name.clone()],
        vec!["volume".into(), "rm".into(), "-f".into(), name.clone()],
    ]);
    docker(&["volume", "create", &name]).unwrap();
    let owner_env = format!("HP_OWNER_PUBKEY={}", pubkey_hex(&owner.verifying_key()));
    let volume = format!("{name}:/state");
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--tmpfs",
        "/tmp:size=16m",
        "--user",
        "10001:10001",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &volume,
        "-p",
        "127.0.0.1::8081",
        "-e",
        &format!("HP_CONTRACT_ID={CONTRACT_ID}"),
        "-e",
        &owner_env,
        "-e",
        "HP_USER_PORT=8081",
        "-e",
        "HP_PEER_PORT=22861",
        "-e",
        "HP_ROUNDTIME_MS=200",
        IMAGE_TAG,
        "run",
        "--state-dir",
        "/state",
    ])
    .unwrap();
    let mut ready = false;
    for _ in 0..100 {
        let logs = docker(&["logs", &name]).unwrap_or_default();
        if logs.contains("hotpocket user port listening on") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "container logs: {}",
        docker(&["logs", &name]).unwrap_or_default()
    );
    let port = docker(&["port", &name, "8081/tcp"]).unwrap();
    let addr = port.lines().next().unwrap().trim().to_owned();
    let client = Client::connect(&addr, owner.clone(), ConnectOptions::default())
        .await
        .unwrap();
    let reply = client
        .upload_bundle(&std::fs::read(bundle).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    let out = client.submit_and_wait(b"hello from docker").await.unwrap();
    assert_eq!(out.outputs, vec![b"hello from docker".to_vec()]);
    let inspect = docker(&[
        "inspect",
        "--format",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
        &name,
    ])
    .unwrap();
    assert_eq!(inspect, "10001:10001 true");
}
