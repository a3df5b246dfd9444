//! Interoperability: xrpl-py (an independent, widely used XRPL client from PyPI)
//! drives the real `berth-localnet` binary, and its locally computed hashes and IDs
//! must match localnet's. Needs Python with xrpl-py: `scripts/test.sh` sets up
//! `.venv` and `BERTH_PYTHON`; the test fails (it does not skip) without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use berth_xrpl_core::{address::decode_account_id, index};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> String {
    std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn xrpl_py_agrees_with_localnet_on_hashes_ids_and_results() {
    let py = python();
    let probe = Command::new(&py)
        .args(["-c", "import xrpl"])
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {py}: {e}; run scripts/test.sh, which installs xrpl-py in .venv")
        });
    assert!(
        probe.success(),
        "{py} has no xrpl-py: run scripts/test.sh (it creates .venv with xrpl-py) or set BERTH_PYTHON"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-localnet"))
        .args(["--listen", &listen, "--close-interval", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth-localnet starts");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let banner: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert!(banner[1].contains(&format!("ws://{listen}/")), "{banner:?}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/xrpl_py_flow.py");
    let out = Command::new(&py)
        .args([
            script,
            &format!("ws://{listen}/"),
            &format!("http://{listen}/"),
        ])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "xrpl-py flow failed:\n{stdout}\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("the script prints JSON");
    assert!(v["checks"].as_array().unwrap().len() >= 20, "{v}");
    assert_eq!(v["past_seq"], "tefPAST_SEQ");

    // Our own crate computes the same offer index as xrpl-py did.
    let alice = decode_account_id(v["alice"].as_str().unwrap()).unwrap();
    let offer = v["offer_id"].as_str().unwrap();
    let found = (1..200u32).any(|s| hex::encode_upper(index::nft_offer(&alice, s)) == offer);
    assert!(found, "offer {offer} is some keylet of alice's");
    drop(server);
}
