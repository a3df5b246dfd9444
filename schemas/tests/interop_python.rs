//! The sealed box against an independent implementation written from the README in Python
//! (`interop/sealed_box.py`, package `cryptography`; Debian `python3-cryptography`).
//! The interpreter is `$BERTH_PYTHON` when set (scripts/test.sh's virtualenv), else `python3`.
//! These tests fail, not skip, when the interpreter or the package is missing.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use berth_schemas::sealed::{open, seal};
use support::*;

fn python(args: &[&str]) -> (bool, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/sealed_box.py");
    let interpreter = std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(&interpreter)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {interpreter} (needs Python 3 with the cryptography package): {e}")
        });
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "install python3-cryptography: {stderr}"
    );
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap().trim().to_owned(),
        stderr,
    )
}

#[test]
fn python_reproduces_the_readme_vector() {
    let (ok, envelope, stderr) = python(&[
        "seal",
        &"11".repeat(32),
        &"22".repeat(32),
        &"33".repeat(12),
        &hex::encode(b"{\"v\":1}"),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(envelope, include_str!("data/sealed-box-vector.hex").trim());
}

#[test]
fn python_opens_what_rust_seals() {
    let plaintext = b"{\"owner_key\":\"ed..\",\"v\":1}";
    let envelope = seal(&public_key(0x44), plaintext).unwrap();
    let (ok, opened, stderr) =
        python(&["open", &hex::encode([0x44u8; 32]), &hex::encode(&envelope)]);
    assert!(ok, "{stderr}");
    assert_eq!(opened, hex::encode(plaintext));
    let (ok, _, stderr) = python(&["open", &hex::encode([0x45u8; 32]), &hex::encode(&envelope)]);
    assert!(
        !ok && stderr.contains("InvalidTag"),
        "wrong key must fail: {stderr}"
    );
}

#[test]
fn rust_opens_what_python_seals() {
    let (ok, envelope, stderr) = python(&[
        "seal",
        &hex::encode([0x55u8; 32]),
        &"77".repeat(32),
        &"01".repeat(12),
        &hex::encode(b"details"),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        open(&signing_key(0x55), &hex::decode(envelope).unwrap()).unwrap(),
        b"details"
    );
}
