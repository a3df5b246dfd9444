//! Harness: runs the real `berth` binary, and a real `hotpocket` node.
//!
//! The `hotpocket` binary and the `echo-contract` example come from the `berth-hotpocket`
//! crate: `hotpocket_artifacts()` runs `cargo build -p berth-hotpocket --bin hotpocket
//! --example echo-contract` (same target dir; a no-op when they are fresh) and finds them
//! next to `berth` in the target dir.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub const CONTRACT_ID: &str = "7a1e0c52-94a4-4d7c-b1f4-3c0f0f4c2e11";

/// Runs `berth` with `BERTH_HOME=home` and the given arguments.
pub fn berth(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_HOME", home)
        .env_remove("BERTH_LEDGER")
        .env_remove("BERTH_REGISTRY")
        .env_remove("BERTH_SEED")
        .output()
        .unwrap()
}

#[allow(unused_imports)]
pub use berth_test_support::{fails, ok, stderr, stdout};

pub fn json(o: Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap()
}

/// (hotpocket binary, echo contract binary).
pub fn hotpocket_artifacts() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = berth_test_support::cargo_build(&[
            "-p",
            "berth-hotpocket",
            "--bin",
            "hotpocket",
            "--example",
            "echo-contract",
        ]);
        let bin = dir.join("hotpocket");
        let echo = dir.join("examples").join("echo-contract");
        assert!(
            bin.is_file() && echo.is_file(),
            "{} / {}",
            bin.display(),
            echo.display()
        );
        (bin, echo)
    })
}

/// A real HotPocket node process on 127.0.0.1.
pub struct Node {
    pub child: Child,
    pub addr: String,
}

impl Node {
    pub fn create(dir: &Path, owner_pubkey: &str) -> Node {
        let (bin, _) = hotpocket_artifacts();
        let status = Command::new(bin)
            .arg("new")
            .arg(dir)
            .args(["--owner", owner_pubkey, "--contract-id", CONTRACT_ID])
            .args([
                "--user-port",
                "0",
                "--peer-port",
                "0",
                "--roundtime-ms",
                "200",
            ])
            .args(["--node-secret", &"42".repeat(32)])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = Command::new(bin)
            .args(["run", "--state-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1", "--user-port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("hotpocket user port listening on ") {
                addr = Some(rest.trim().to_owned());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Node {
            child,
            addr: addr.expect("node printed its address"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
