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
