//! A hostile user on the user port (issue 19): memory before login, owner lockout, idle
//! sessions, inputs that must not be stored, and state files that must not brick the node.
//! Each test runs the real `hotpocket` binary on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use berth_hotpocket_client::client::{Client, ConnectOptions};
use berth_hotpocket_client::protocol::pubkey_hex;
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A node whose `hp.cfg` `user` section was changed by `edit` (stopped, edited, started).
fn node_with(
    dir: &std::path::Path,
    roundtime: u64,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Node {
    let node = Node::create(dir, &key(1), roundtime);
    node.stop();
    let path = dir.join("hp.cfg");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut cfg["user"]);
    std::fs::write(&path, cfg.to_string()).unwrap();
    Node::start(dir)
}

fn alive(node: &mut Node) -> bool {
    node.child.try_wait().unwrap().is_none()
}

/// A bundle whose contract is the shell script `contract` (which may `exec ./echo`, the echo
/// example beside it), with `install.sh` when given.
fn script_bundle(contract: Vec<u8>, install: Option<Vec<u8>>) -> Vec<u8> {
    let config = serde_json::json!({"bin_path": "contract", "version": "1.0"});
    let mut files = vec![
        ("contract.config", config.to_string().into_bytes(), 0o644),
        ("contract", contract, 0o755),
        (
            "echo",
            std::fs::read(example_bin("echo-contract")).unwrap(),
            0o755,
        ),
    ];
    if let Some(install) = install {
        files.push(("install.sh", install, 0o755));
    }
    zip_of(&files)
}

/// A throw-away key from a counter.
fn throwaway(i: u32) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    seed[31] = 0xAA;
    SigningKey::from_bytes(&seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_half_open_handshakes_leave_the_node_answering_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::create(dir.path(), &key(1), 200);
    // Ten anonymous connections each send a 31 MB "challenge answer".
    let mut attackers = Vec::new();
    for _ in 0..10 {
        let addr = node.addr.clone();
        attackers.push(tokio::spawn(async move {
            let mut ws = raw_ws(&addr).await;
            let challenge = next_json(&mut ws).await.unwrap();
            assert_eq!(challenge["type"], "user_challenge");
            let sent = ws.send(Message::binary(vec![b'{'; 31 << 20])).await;
            // The node stops reading after a few KB and closes: either the send fails or
            // the next read sees the end.
            sent.is_err() || next_json(&mut ws).await.is_none()
        }));
    }
    for a in attackers {
        assert!(
            a.await.unwrap(),
            "an oversized handshake answer must end the connection"
        );
    }
    assert!(
        alive(&mut node),
        "the node must survive the oversized handshakes"
    );
    let owner = node.connect(&key(1)).await;
    owner.stat().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwaway_sessions_filling_the_node_never_lock_the_owner_out() {
    // Scaled down from 1000 (the default `max_connections`) to 100, with 150 throw-away
    // sessions: the property is the same, the node is full when the owner comes.
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), 200, |user| {
        user["max_connections"] = serde_json::json!(100);
        user["max_connections_per_ip"] = serde_json::json!(1000);
    });
    let mut sessions = Vec::new();
    for batch in 0..5u32 {
        let mut pending = Vec::new();
        for i in 0..30 {
            let addr = node.addr.clone();
            pending.push(tokio::spawn(async move {
                Client::connect(&addr, throwaway(batch * 30 + i), ConnectOptions::default()).await
            }));
        }
        for p in pending {
            if let Ok(c) = p.await.unwrap() {
                sessions.push(c);
            }
        }
    }
    let mut open = 0;
    for c in &sessions {
        if c.lcl().await.is_ok() {
            open += 1;
        }
    }
    assert_eq!(open, 100, "the node holds max_connections sessions");
    // The owner gets in although the node is full, and stays in.
    let owner = node.connect(&key(1)).await;
    owner.stat().await.unwrap();
    let mut still_open = 0;
    for c in &sessions {
        if c.lcl().await.is_ok() {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 99,
        "one anonymous session made room for the owner"
    );
    owner.lcl().await.unwrap();
    // A new stranger is refused while the node is full.
    let stranger = Client::connect(&node.addr, throwaway(9999), ConnectOptions::default()).await;
    if let Ok(stranger) = stranger {
        assert!(
            stranger.lcl().await.is_err(),
            "a full node refuses a new stranger"
        );
    }
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), 200, |user| {
        user["max_connections_per_ip"] = serde_json::json!(3);
    });
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(node.connect(&throwaway(i)).await);
    }
    let fourth = Client::connect(&node.addr, throwaway(3), ConnectOptions::default()).await;
    assert!(
        fourth.is_err(),
        "a fourth connection from one address is closed at once"
    );
    drop(held);
    // Slots are given back when connections end.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(&node.addr, throwaway(4), ConnectOptions::default()).await {
            again = Some(c);
            break;
        }
        sleep_ms(100).await;
    }
    again.expect("a slot comes back").lcl().await.unwrap();
}

#[tokio::test]
async fn an_idle_session_is_closed_after_the_timeout_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), 200, |user| {
        user["idle_timeout_secs"] = serde_json::json!(1);
    });
    let user = key(5);
    let mut ws = raw_ws(&node.addr).await;
    let challenge = next_json(&mut ws).await.unwrap();
    let text = challenge["challenge"].as_str().unwrap();
    let answer = serde_json::json!({
        "type": "user_challenge_response",
        "sig": hex::encode(user.sign(text.as_bytes()).to_bytes()),
        "pubkey": pubkey_hex(&user.verifying_key()),
        "protocol": "json",
    });
    ws.send(Message::text(answer.to_string())).await.unwrap();
    // Say nothing; the node closes the session and names the timeout.
    let reason = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.reason.to_string()),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    let reason = reason.expect("a close frame with a reason");
    assert!(
        reason.contains("idle") && reason.contains("idle_timeout_secs"),
        "{reason}"
    );
}

fn stored_inputs(dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT COUNT(*) FROM inputs", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn inputs_of_a_key_that_may_not_use_the_node_are_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::create(dir.path(), &key(1), 200);
    let stranger = node.connect(&key(7)).await;
    let big = vec![b'x'; 200 * 1024];
    for _ in 0..5 {
        let out = stranger.submit_and_wait(&big).await.unwrap();
        assert!(
            String::from_utf8_lossy(&out.outputs[0]).contains("UserNotAllowed"),
            "the stranger is told why"
        );
    }
    let small = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        ("contract", b"#!/bin/sh\ncat\n".to_vec(), 0o755),
    ]);
    let upload = stranger.upload_bundle(&small).await.unwrap();
    assert_eq!(upload.message, "UserNotAllowed");
    // The owner's own request is recorded as before; nothing of the stranger's is.
    let owner = node.connect(&key(1)).await;
    owner.bootstrap_status().await.unwrap();
    assert_eq!(
        stored_inputs(dir.path()),
        1,
        "only the owner's input is stored"
    );
}

async fn wait_for_ledgers(client: &Client, past: u64) -> u64 {
    for _ in 0..200 {
        let (seq, _) = client.lcl().await.unwrap();
        if seq > past {
            return seq;
        }
        sleep_ms(50).await;
    }
    panic!("no ledger closed past {past}");
}

#[tokio::test]
async fn a_fifo_and_an_unreadable_file_in_the_state_neither_block_nor_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let owner_key = key(1);
    let mut node = Node::create(dir.path(), &owner_key, 200);
    let bin = std::fs::read(example_bin("echo-contract")).unwrap();
    let install = b"#!/bin/sh\nmkfifo fifo\necho secret > locked\nchmod 000 locked\n".to_vec();
    let bad = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        ("contract", bin.clone(), 0o755),
        ("install.sh", install, 0o755),
    ]);
    let owner = install_bundle(&node, &owner_key, &bad).await;
    let state = dir.path().join("contract_fs/state");
    assert!(
        std::fs::symlink_metadata(state.join("fifo")).is_ok(),
        "the FIFO is in the state"
    );
    let (seq, _) = owner.lcl().await.unwrap();
    let later = wait_for_ledgers(&owner, seq + 3).await;
    assert!(alive(&mut node), "the node keeps running");
    // The contract still answers, and the owner can replace the bundle.
    let out = owner.submit_and_wait(b"ping").await.unwrap();
    assert!(out.ledger_seq_no > later - 1);
    let fix = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        ("contract", bin, 0o755),
        (
            "install.sh",
            b"#!/bin/sh\nrm -f fifo locked\n".to_vec(),
            0o755,
        ),
    ]);
    let reply = owner.upload_bundle(&fix).await.unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    assert!(
        std::fs::symlink_metadata(state.join("fifo")).is_err(),
        "the fix removed the FIFO"
    );
    let (seq, _) = owner.lcl().await.unwrap();
    wait_for_ledgers(&owner, seq + 2).await;
    assert!(alive(&mut node));
}

#[tokio::test]
async fn the_contract_and_install_sh_cannot_touch_the_nodes_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let owner_key = key(1);
    let node = Node::create(dir.path(), &owner_key, 200);
    // Each step writes what it could do into its own state; the contract then echoes.
    let attempts = |label: &str, node_dir: &str| {
        format!(
            "r=\"{label}\"\n\
             if echo pwn >> {node_dir}/hp.cfg 2>/dev/null; then r=\"$r hp.cfg:written\"; else r=\"$r hp.cfg:denied\"; fi\n\
             if cat {node_dir}/hp.cfg >/dev/null 2>&1; then r=\"$r hp.cfg-read:yes\"; else r=\"$r hp.cfg-read:denied\"; fi\n\
             if echo pwn >> {node_dir}/ledger.sqlite 2>/dev/null; then r=\"$r ledger:written\"; else r=\"$r ledger:denied\"; fi\n\
             if ls {node_dir}/tls >/dev/null 2>&1; then r=\"$r tls:listed\"; else r=\"$r tls:denied\"; fi\n\
             if echo ok > own-file; then r=\"$r own:written\"; fi\n\
             if kill -0 $PPID 2>/dev/null; then r=\"$r node:signalable\"; else r=\"$r node:protected\"; fi\n"
        )
    };
    let install = format!(
        "#!/bin/sh\n{}echo \"$r\" > install-probe.txt\n",
        attempts("install", "../..")
    );
    let contract = format!(
        "#!/bin/sh\n{}\
         if cp ../patch.cfg p && cat p > ../patch.cfg; then r=\"$r patch.cfg:rewritten\"; fi\n\
         echo \"$r\" > contract-probe.txt\nexec ./echo \"$@\"\n",
        attempts("contract", "../..")
    );
    let zip = script_bundle(contract.into_bytes(), Some(install.into_bytes()));
    let owner = install_bundle(&node, &owner_key, &zip).await;
    let out = owner.submit_and_wait(b"after the attempts").await.unwrap();
    assert!(
        !out.outputs.is_empty(),
        "the contract still runs and answers"
    );
    let state = dir.path().join("contract_fs/state");
    let install_probe = std::fs::read_to_string(state.join("install-probe.txt")).unwrap();
    assert_eq!(
        install_probe.trim(),
        "install hp.cfg:denied hp.cfg-read:denied ledger:denied tls:denied own:written \
         node:protected"
    );
    let contract_probe = std::fs::read_to_string(state.join("contract-probe.txt")).unwrap();
    assert_eq!(
        contract_probe.trim(),
        "contract hp.cfg:denied hp.cfg-read:denied ledger:denied tls:denied own:written \
         node:protected patch.cfg:rewritten"
    );
    // The node rewrote hp.cfg itself (the installed contract's section); nothing else did.
    let hp_cfg = std::fs::read_to_string(dir.path().join("hp.cfg")).unwrap();
    assert!(!hp_cfg.contains("pwn"), "{hp_cfg}");
    // The node's own files still work: more ledgers close and answer.
    let again = owner.submit_and_wait(b"again").await.unwrap();
    assert!(again.ledger_seq_no > out.ledger_seq_no);
}

#[tokio::test]
async fn a_contract_flooding_its_output_reaches_the_log_only_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let owner_key = key(1);
    Node::create(dir.path(), &owner_key, 200).stop();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let node = Node::start_with_stderr(dir.path(), log.into());
    // 20 MB to stdout and a 100 kB line to stderr on every run, then the echo contract.
    let flood = b"#!/bin/sh\nyes flooding-the-log | head -c 20000000\nhead -c 100000 /dev/zero | tr '\\0' x >&2\necho >&2\nexec ./echo \"$@\"\n".to_vec();
    let zip = script_bundle(flood, None);
    let owner = install_bundle(&node, &owner_key, &zip).await;
    for _ in 0..2 {
        let out = owner.submit_and_wait(b"still here").await.unwrap();
        assert!(!out.outputs.is_empty(), "the contract still answers");
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    // Two runs wrote 40 MB; the log holds the burst and a few seconds of the rate.
    assert!(
        log.len() < 2_000_000,
        "{} bytes of log for 40 MB of contract output",
        log.len()
    );
    assert!(log.contains("flooding-the-log"), "some of it passes");
    assert!(
        !log.lines()
            .any(|l| l.len() > 2 * berth_hotpocket::contract_log::MAX_LINE + 512),
        "long lines are cut"
    );
    node.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("over the log budget"),
        "the dropped bytes are reported"
    );
}

async fn install_bundle(node: &Node, owner: &SigningKey, zip: &[u8]) -> Client {
    install(node, owner, zip).await
}
