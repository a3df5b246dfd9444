//! `provision-bench`'s exit codes: 2 for bad arguments, 1 when the bench cannot run.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use berth_test_support::{fails, usage_error};

#[test]
fn bad_arguments_exit_2_and_an_unreachable_engine_exits_1() {
    let bench = env!("CARGO_BIN_EXE_provision-bench");
    for args in [
        &["many"][..],
        &["0"][..],
        &["5", "--fast"][..],
        &["5", "6"][..],
    ] {
        let err = usage_error(Command::new(bench).args(args).output().unwrap());
        assert!(err.contains("usage: provision-bench"), "{args:?}: {err}");
    }
    let out = Command::new(bench)
        .arg("1")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(fails(out).contains("connecting to docker"));
}
