//! The `berth-localnet` binary's interface: exit codes (1 failure, 2 usage) and `--json`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use berth_test_support::{fails, ok, usage_error};

fn localnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth-localnet"))
        .args(args)
        .env_remove("BERTH_LOCALNET_LISTEN")
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    for args in [
        &["--no-such-flag"][..],
        &["--listen", "not-an-address"][..],
        &["fund"][..],
    ] {
        let err = usage_error(localnet(args));
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    // A data directory that is a file: the ledger cannot be opened.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = localnet(&[
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.stdout.is_empty(),
        "errors go to stderr, also with --json"
    );
    let err = fails(out);
    assert!(err.contains("error: starting localnet"), "{err}");
    // No server to fund from.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let address = "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe";
    assert!(fails(localnet(&["fund", address, "--url", &url])).contains(&url));
}

#[test]
fn json_prints_a_ready_line_and_funding_as_one_document() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_berth-localnet"))
        .args([
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--close-interval",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = ready["websocket"].as_str().unwrap().to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{line}");
    assert_eq!(
        ready["genesis"]["address"],
        "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh"
    );
    assert_eq!(ready["data_dir"], serde_json::Value::Null);
    // `--json` after the subcommand works too: it is global.
    let address = "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe";
    let out = localnet(&["fund", address, "--xrp", "20", "--url", &url, "--json"]);
    let _ = server.kill();
    let _ = server.wait();
    let funded: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(funded["hash"].as_str().unwrap().len(), 64, "{funded}");
}
