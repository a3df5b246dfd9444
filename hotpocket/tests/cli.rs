//! The provisioner's interface: config from HP_* variables on first start, overrides later,
//! and bad settings named in the error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use berth_hotpocket_client::protocol::pubkey_hex;
use common::*;

fn run_with_env(dir: &std::path::Path, env: &[(&str, String)]) -> Node {
    let mut cmd = Command::new(hotpocket_bin());
    cmd.args(["run", "--listen", "127.0.0.1"])
        .env("HP_STATE_DIR", dir)
        .env("HP_USER_PORT", "0")
        .env("HP_PEER_PORT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("hotpocket user port listening on ")
                .map(str::to_owned)
        })
        .expect("ready line");
    std::thread::spawn(move || for _ in lines {});
    Node {
        dir: dir.to_path_buf(),
        child,
        addr,
    }
}

#[tokio::test]
async fn env_vars_create_the_config_once_and_overrides_apply_later() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let secret = "07".repeat(32);
    let env = vec![
        ("HP_CONTRACT_ID", CONTRACT_ID.to_owned()),
        ("HP_OWNER_PUBKEY", pubkey_hex(&owner.verifying_key())),
        ("HP_NODE_SECRET", secret.clone()),
        ("HP_PEER_PORT", "22999".to_owned()),
        ("HP_ROUNDTIME_MS", "300".to_owned()),
    ];
    let node = run_with_env(dir.path(), &env);
    let client = node.connect(&owner).await;
    assert_eq!(
        client.node_pubkey.clone().unwrap(),
        pubkey_hex(&key(7).verifying_key())
    );
    assert_eq!(client.stat().await.unwrap().roundtime, 300);
    drop(client);
    node.stop();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("hp.cfg")).unwrap()).unwrap();
    assert_eq!(cfg["node"]["private_key"], secret);
    assert_eq!(cfg["mesh"]["port"], 22999);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("hp.cfg"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the node secret is readable by the owner only"
    );
    // Later start: the stored config is used; the roundtime override applies.
    let node = run_with_env(dir.path(), &[("HP_ROUNDTIME_MS", "150".to_owned())]);
    let client = node.connect(&owner).await;
    assert_eq!(client.stat().await.unwrap().roundtime, 150);
    assert_eq!(client.contract_id, CONTRACT_ID);
}

#[test]
fn bad_settings_are_named_and_exit_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(hotpocket_bin())
        .args(["run", "--state-dir"])
        .arg(dir.path())
        .env("HP_CONTRACT_ID", CONTRACT_ID)
        .env("HP_OWNER_PUBKEY", "ed1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bootstrap.owner_pubkey"), "{stderr}");
    let out = Command::new(hotpocket_bin())
        .args(["run", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HP_CONTRACT_ID"));
}
