//! The provisioner's interface: config from HP_* variables on first start, overrides later,
//! and bad settings named in the error; exit codes (1 failure, 2 usage) and `--json`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use berth_hotpocket_client::protocol::pubkey_hex;
use berth_test_support::{fails, ok, usage_error};
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
    let run = || {
        let mut cmd = Command::new(hotpocket_bin());
        cmd.args(["run", "--state-dir"]).arg(dir.path());
        cmd
    };
    let out = run()
        .env("HP_CONTRACT_ID", CONTRACT_ID)
        .env("HP_OWNER_PUBKEY", "ed1234")
        .output()
        .unwrap();
    let err = fails(out);
    assert!(err.contains("bootstrap.owner_pubkey"), "{err}");
    assert!(fails(run().output().unwrap()).contains("HP_CONTRACT_ID"));
    // A config file that cannot be read as one.
    std::fs::write(dir.path().join("hp.cfg"), "not json").unwrap();
    let err = fails(run().output().unwrap());
    assert!(err.contains("hp.cfg"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_runtime_failures_exit_1() {
    // Usage: what clap rejects (an unknown flag or command, a value out of range).
    let threshold_0 = [
        "new",
        "/tmp/x",
        "--owner",
        "ed",
        "--contract-id",
        "c",
        "--threshold",
        "0",
    ];
    for args in [
        &["run", "--no-such-flag"][..],
        &threshold_0[..],
        &["frobnicate"][..],
    ] {
        let err = usage_error(Command::new(hotpocket_bin()).args(args).output().unwrap());
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    // Failure: a missing contract executable.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(hotpocket_bin())
        .args(["--json", "bundle", "--bin"])
        .arg(dir.path().join("missing"))
        .arg("--out")
        .arg(dir.path().join("b.zip"))
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "errors go to stderr, also with --json"
    );
    assert!(fails(out).contains("missing"));
}

#[test]
fn json_prints_one_document_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    let owner = pubkey_hex(&key(1).verifying_key());
    // --json is global: before or after the subcommand.
    let out = Command::new(hotpocket_bin())
        .arg("new")
        .arg(&node_dir)
        .args(["--owner", &owner, "--contract-id", CONTRACT_ID, "--json"])
        .args(["--node-secret", &"07".repeat(32)])
        .output()
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(
        created["public_key"],
        pubkey_hex(&key(7).verifying_key()).as_str()
    );
    assert_eq!(created["dir"], node_dir.display().to_string().as_str());

    let contract = dir.path().join("contract");
    std::fs::write(&contract, "#!/bin/sh\n").unwrap();
    let zip = dir.path().join("b.zip");
    let out = Command::new(hotpocket_bin())
        .args(["--json", "bundle", "--bin"])
        .arg(&contract)
        .arg("--out")
        .arg(&zip)
        .output()
        .unwrap();
    let wrote: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(wrote["path"], zip.display().to_string().as_str());
    assert_eq!(
        wrote["bytes"].as_u64(),
        Some(std::fs::metadata(&zip).unwrap().len())
    );

    // `run --json`: one line naming both ports once they listen.
    let mut child = Command::new(hotpocket_bin())
        .args(["--json", "run", "--listen", "127.0.0.1", "--user-port", "0"])
        .args(["--peer-port", "0", "--state-dir"])
        .arg(&node_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    for port in ["user_addr", "peer_addr"] {
        let addr: std::net::SocketAddr = ready[port].as_str().unwrap().parse().unwrap();
        assert_ne!(addr.port(), 0, "{line}");
    }
}
