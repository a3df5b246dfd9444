//! The contract interface: args, limits, crashes, timeouts, post_exec.sh, patch.cfg, reads.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn probe_node(
    dir: &std::path::Path,
    config: serde_json::Value,
) -> (Node, berth_hotpocket_client::client::Client) {
    let owner = key(1);
    let node = Node::create(dir, &owner, 200);
    let client = install(&node, &owner, &bundle("probe-contract", config)).await;
    (node, client)
}

fn text(out: &berth_hotpocket_client::client::LedgerOutputs) -> String {
    out.outputs
        .iter()
        .map(|o| String::from_utf8_lossy(o).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn contract_gets_hotpocket_args() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = probe_node(dir.path(), basic_config()).await;
    let out = client.submit_and_wait(b"args").await.unwrap();
    let args: serde_json::Value = serde_json::from_slice(&out.outputs[0]).unwrap();
    assert_eq!(args["contract_id"], CONTRACT_ID);
    assert_eq!(args["readonly"], false);
    // The contract runs on the ledger that holds its inputs; outputs name that ledger.
    assert_eq!(args["lcl_seq_no"].as_u64().unwrap(), out.ledger_seq_no);
    assert!(args["npl_fd"].is_number() && args["control_fd"].is_number());
    let me = client.pubkey();
    assert!(args["users"][&me][0].is_number(), "output fd first");
    assert_eq!(args["users"][&me][1][1], 4, "[offset, length] of the input");
    assert_eq!(
        args["public_key"].as_str().unwrap(),
        client.node_pubkey.clone().unwrap()
    );
    // Read-only runs have no npl fd and no lcl.
    let read: serde_json::Value =
        serde_json::from_slice(&client.read("args").await.unwrap()).unwrap();
    assert_eq!(read["readonly"], true);
    assert!(read.get("npl_fd").is_none() && read.get("lcl_seq_no").is_none());
    drop(node);
}

#[tokio::test]
async fn round_limits_are_applied_to_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let limits = serde_json::json!({"bin_path": "contract", "round_limits": {
        "proc_cpu_seconds": 7, "proc_mem_bytes": 268435456u64, "proc_ofd_count": 40, "user_output_bytes": 2000}});
    let (_node, client) = probe_node(dir.path(), limits).await;
    let limits = text(&client.submit_and_wait(b"limits").await.unwrap());
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    assert!(
        line("Max cpu time").contains(" 7 "),
        "{}",
        line("Max cpu time")
    );
    // proc_mem_bytes is RLIMIT_DATA (as hpcore), so that Node.js can still reserve its
    // address space.
    assert!(
        line("Max data size").contains("268435456"),
        "{}",
        line("Max data size")
    );
    assert!(
        line("Max address space").contains("unlimited"),
        "{}",
        line("Max address space")
    );
    assert!(
        line("Max open files").contains("40"),
        "{}",
        line("Max open files")
    );
    let files = text(&client.submit_and_wait(b"files 100").await.unwrap());
    let opened: usize = files.trim_start_matches("opened ").parse().unwrap();
    assert!(opened < 40, "{files}");
    let alloc = text(&client.submit_and_wait(b"alloc 512").await.unwrap());
    assert_eq!(alloc, "alloc of 512 MiB failed");
    // Output past user_output_bytes is cut.
    let spam = client.submit_and_wait(b"spam 5000").await.unwrap();
    assert!(
        spam.outputs.is_empty(),
        "5000 bytes over a 2000-byte limit are dropped"
    );
    let small = client.submit_and_wait(b"spam 100").await.unwrap();
    assert_eq!(small.outputs[0].len(), 100);
}

#[tokio::test]
async fn crash_and_timeout_do_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"bin_path": "contract", "round_limits": {"exec_timeout": 600}});
    let (_node, client) = probe_node(dir.path(), config).await;
    // A post_exec.sh that stays (exit 1) and logs the ledger of every run it follows.
    let script = "write post_exec.sh echo \"$1\" >> post_exec.log; exit 1";
    client.submit_and_wait(script.as_bytes()).await.unwrap();
    let crash = client.submit_and_wait(b"crash").await.unwrap();
    assert!(crash.outputs.is_empty());
    let started = Instant::now();
    let slow = client.submit_and_wait(b"sleep 20").await.unwrap();
    assert!(slow.outputs.is_empty(), "killed before it answered");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exec_timeout enforced"
    );
    let fine = client.submit_and_wait(b"echo still here").await.unwrap();
    assert_eq!(fine.outputs, vec![b"still here".to_vec()]);
    let log = std::fs::read_to_string(dir.path().join("contract_fs/state/post_exec.log")).unwrap();
    let seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        seqs.contains(&crash.ledger_seq_no),
        "a run that exited (code 3) is followed by post_exec.sh: {log}"
    );
    assert!(
        !seqs.contains(&slow.ledger_seq_no),
        "a run killed at exec_timeout is not: {log}"
    );
}

#[tokio::test]
async fn post_exec_script_runs_and_patch_cfg_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = probe_node(dir.path(), basic_config()).await;
    let state = dir.path().join("contract_fs/state");
    // One argument, "<seq> <hash>", as hpcore passes it: $2 is empty.
    let script = "write post_exec.sh echo \"$1|$2|$#\" > post_exec.out";
    client.submit_and_wait(script.as_bytes()).await.unwrap();
    for _ in 0..50 {
        if state.join("post_exec.out").exists() {
            break;
        }
        sleep_ms(100).await;
    }
    let out = std::fs::read_to_string(state.join("post_exec.out")).unwrap();
    let fields: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(fields[1..], ["", "1"], "one argument: {out}");
    let mut parts = fields[0].split(' ');
    assert!(parts.next().unwrap().parse::<u64>().is_ok());
    assert_eq!(parts.next().unwrap().len(), 64);
    assert!(
        !state.join("post_exec.sh").exists(),
        "exit 0 deletes post_exec.sh"
    );

    let patch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("contract_fs/patch.cfg")).unwrap())
            .unwrap();
    assert_eq!(patch["bin_path"], "contract");
    let mut patched = patch.clone();
    patched["version"] = serde_json::json!("3.1");
    // A key this runtime does not know is ignored, as hpcore does, not a reason to refuse.
    patched["a_future_key"] = serde_json::json!({"x": 1});
    let cmd = format!("write ../patch.cfg {patched}");
    client.submit_and_wait(cmd.as_bytes()).await.unwrap();
    sleep_ms(500).await;
    let fresh = node.connect(&key(8)).await;
    assert_eq!(fresh.contract_version, "3.1");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("hp.cfg")).unwrap()).unwrap();
    assert_eq!(saved["contract"]["version"], "3.1");
}

#[tokio::test]
async fn a_read_request_runs_in_a_read_only_view_and_never_changes_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, client) = probe_node(dir.path(), basic_config()).await;
    let state = dir.path().join("contract_fs/state");
    client.submit_and_wait(b"write kept v1").await.unwrap();
    // A read sees the state of the last executed ledger...
    assert_eq!(client.read("cat kept").await.unwrap(), b"v1");
    // ...and what it writes does not reach the state (as a non-root instance user the
    // write fails outright: the view's files are 0444 in 0555 directories).
    let _ = client
        .read("write kept overwritten-by-a-read")
        .await
        .unwrap();
    let _ = client.read("write new-file from-a-read").await.unwrap();
    assert_eq!(std::fs::read(state.join("kept")).unwrap(), b"v1");
    assert!(!state.join("new-file").exists());
    let out = client.submit_and_wait(b"cat kept").await.unwrap();
    assert_eq!(out.outputs, vec![b"v1".to_vec()], "the next round sees v1");
    // A later view follows the state.
    client.submit_and_wait(b"write kept v2").await.unwrap();
    assert_eq!(client.read("cat kept").await.unwrap(), b"v2");
    let views = dir.path().join("contract_fs/.views");
    let view = std::fs::read_dir(&views)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("state"))
        .find(|p| p.join("kept").exists())
        .expect("a view");
    let mode = std::fs::metadata(view.join("kept")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o444
    );
}
