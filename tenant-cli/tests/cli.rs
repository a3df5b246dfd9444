//! The `berth` binary's exit codes (1 failure, 2 usage) and where its errors go.
#![allow(clippy::unwrap_used)]

mod common;

use berth_test_support::{fails, usage_error};
use common::berth;

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    for args in [
        &["frobnicate"][..],
        &["hosts", "--max-price", "cheap"][..],
        &["--json"][..],
        &["cluster", "create"][..],
        &["cluster", "create", "--nodes", "0"][..],
        &["cluster", "create", "--nodes", "17"][..],
        &["cluster", "create", "--nodes", "3", "--resume", "c1"][..],
        &["cluster", "create", "--nodes", "3", "--threshold", "101"][..],
        &["cluster", "remove-node", "c1"][..],
        &["cluster", "anchor"][..],
        &[
            "cluster",
            "anchor",
            "--cluster",
            "c1",
            "--setup",
            "--every",
            "10",
        ][..],
        &["cluster", "anchor", "--cluster", "c1", "--fund", "5"][..],
        &["cluster", "verify"][..],
        &["cluster", "verify", "--cluster", "c1", "--account", "rX"][..],
    ] {
        let err = usage_error(berth(&home, args));
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    // A settings file that cannot be read as one.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("settings.json"), "{not json").unwrap();
    let out = berth(&home, &["--json", "hosts"]);
    assert!(
        out.stdout.is_empty(),
        "errors go to stderr, also with --json"
    );
    let err = fails(out);
    assert!(err.contains("settings.json"), "{err}");
}

#[test]
fn anchor_and_verify_have_help_and_verify_fails_without_a_cluster_record() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    for cmd in ["anchor", "verify"] {
        let out = berth(&home, &["cluster", cmd, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(help.contains("--json"), "{cmd}: {help}");
    }
    // verify needs no keys: with an unknown cluster it fails (1) naming it.
    let err = fails(berth(&home, &["cluster", "verify", "--cluster", "nope"]));
    assert!(err.contains("nope"), "{err}");
}
