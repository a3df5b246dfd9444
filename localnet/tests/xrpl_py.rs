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

/// A running `berth-localnet` on a free port, and the Python that has xrpl-py.
struct Net {
    _server: Server,
    /// Kept open: the server writes to it, and a closed pipe would end it.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    listen: String,
    py: String,
}

fn start() -> Net {
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
    Net {
        _server: server,
        _stdout: lines,
        listen,
        py,
    }
}

impl Net {
    /// Runs a script of `tests/interop/` against the server; returns the JSON it prints,
    /// which must record at least `min_checks` checks made.
    fn run(&self, script: &str, min_checks: usize) -> serde_json::Value {
        let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(&self.py)
            .args([
                path,
                format!("ws://{}/", self.listen),
                format!("http://{}/", self.listen),
            ])
            .output()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "xrpl-py script {script} failed:\n{stdout}\n{stderr}"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("the script prints JSON");
        assert!(v["checks"].as_array().unwrap().len() >= min_checks, "{v}");
        v
    }
}

#[test]
fn xrpl_py_agrees_with_localnet_on_hashes_ids_and_results() {
    let v = start().run("xrpl_py_flow.py", 20);
    assert_eq!(v["past_seq"], "tefPAST_SEQ");

    // Our own crate computes the same offer index as xrpl-py did.
    let alice = decode_account_id(v["alice"].as_str().unwrap()).unwrap();
    let offer = v["offer_id"].as_str().unwrap();
    let found = (1..200u32).any(|s| hex::encode_upper(index::nft_offer(&alice, s)) == offer);
    assert!(found, "offer {offer} is some keylet of alice's");
}

/// A 3-of-5 signer list and multi-signed transactions, each failure with rippled's
/// result; also the costs: one owner count per list, 10 drops per signature.
#[test]
fn xrpl_py_multisigns_as_on_rippled() {
    let v = start().run("xrpl_py_multisign.py", 25);
    assert_eq!(v["too_few"], "tefBAD_QUORUM");
    assert_eq!(v["not_listed"], "tefBAD_SIGNATURE");
    assert_eq!(v["low_fee"], "telINSUF_FEE_P");
    assert_eq!(v["master_disabled"], "tefMASTER_DISABLED");
    assert_eq!(
        v["duplicate"],
        "fails local checks: Duplicate Signers not allowed."
    );
    assert_eq!(v["unsorted"], "fails local checks: Unsorted Signers array.");
    assert_eq!(v["fee_3_signers"], 40);
    assert_eq!(v["fee_5_signers"], 60);
    assert_eq!(v["reserve_signer_list_3"], 2_000_000);
    assert_eq!(v["reserve_signer_list_5"], 2_000_000);
    eprintln!(
        "signer list reserve: 3 signers {} drops, 5 signers {} drops; multi-signed fee: 3 signers {} drops, 5 signers {} drops",
        v["reserve_signer_list_3"], v["reserve_signer_list_5"], v["fee_3_signers"], v["fee_5_signers"]
    );
}
