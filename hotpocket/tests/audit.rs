//! `ledger_query` and `hotpocket replay`: a node's history is downloaded through the user
//! port and replayed; a verified chain, an altered output, a broken link and a contract that
//! reads the wall clock are each told apart.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_hotpocket_client::client::Client;
use berth_hotpocket_client::protocol::history::HistoryFile;
use common::*;

/// Downloads ledgers `1..=to` page by page, with raw inputs and outputs.
async fn history(client: &Client, to: u64) -> HistoryFile {
    let stat = client.stat().await.unwrap();
    let ledgers = client.ledger_history(1, to, |_, _| {}).await.unwrap();
    HistoryFile {
        contract_id: client.contract_id.clone(),
        unl: stat.current_unl,
        ledgers,
    }
}

/// Runs `hotpocket replay --json` on a history: (exit code, report, stderr).
fn replay(dir: &Path, file: &HistoryFile) -> (i32, Option<serde_json::Value>, String) {
    let path = dir.join("history.json");
    std::fs::write(&path, serde_json::to_vec(file).unwrap()).unwrap();
    let out = Command::new(hotpocket_bin())
        .args(["replay", "--json", "--history"])
        .arg(&path)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).ok();
    (
        out.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the stopped node again, downloads ledgers `1..=to` and stops it.
async fn restart_and_download(
    dir: &Path,
    owner: &ed25519_dalek::SigningKey,
    to: u64,
) -> HistoryFile {
    let node = Node::start(dir);
    let client = node.connect(owner).await;
    let file = history(&client, to).await;
    drop(client);
    node.stop();
    file
}

async fn wait_for_lcl(client: &Client, seq: u64) -> u64 {
    loop {
        let (lcl, _) = client.lcl().await.unwrap();
        if lcl >= seq {
            return lcl;
        }
        sleep_ms(50).await;
    }
}

fn sql(dir: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
    let changed = conn.execute(statement, []).unwrap();
    assert_eq!(changed, 1, "{statement}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_ledgers_verify_and_an_altered_output_or_link_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 20);
    let owner_client = install(&node, &owner, &bundle("counter-contract", basic_config())).await;
    let mut users = Vec::new();
    for seed in 2..=4u8 {
        let client = node.connect(&key(seed)).await;
        users.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let input = match n % 3 {
                    0 => format!("incr c{seed}"),
                    1 => format!("set k{seed} {n}"),
                    _ => "incr shared".to_owned(),
                };
                let _ = client.submit_and_wait(input.as_bytes()).await;
                n += 1;
                if client.known_lcl() >= 502 {
                    return n;
                }
            }
        }));
    }
    let mut submitted = 0;
    for u in users {
        submitted += u.await.unwrap();
    }
    assert!(submitted > 100, "inputs from several users: {submitted}");
    let lcl = wait_for_lcl(&owner_client, 502).await;
    let file = history(&owner_client, lcl).await;
    assert_eq!(file.ledgers.len() as u64, lcl);
    // hpcore's form: one ledger by seq_no, without raw data unless asked.
    let one = owner_client.ledger_query(7, 7, false, false).await.unwrap();
    assert_eq!(one.results.len(), 1);
    assert_eq!(one.results[0].seq_no, 7);
    assert!(one.results[0].inputs.is_none() && one.next_seq_no.is_none());
    // Berth's range comes a page at a time.
    let page = owner_client.ledger_query(1, 300, true, true).await.unwrap();
    assert_eq!(page.results.len(), 64);
    assert_eq!(page.next_seq_no, Some(65));
    drop(owner_client);
    node.stop();

    let (code, report, stderr) = replay(dir.path(), &file);
    let report = report.unwrap_or_else(|| panic!("no report; stderr: {stderr}"));
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert_eq!(report["verified"], true, "{report}");
    assert!(
        report["ledgers_verified"].as_u64().unwrap() >= 500,
        "{report}"
    );
    assert!(
        report["inputs_replayed"].as_u64().unwrap() >= submitted,
        "{report}"
    );
    assert!(stderr.contains("ledgers/s"), "progress on stderr: {stderr}");
    eprintln!("replay report: {report}");

    // One stored output altered: reported at its ledger, with the inputs that made it.
    let user = berth_hotpocket_client::protocol::pubkey_hex(&key(3).verifying_key());
    let altered = file
        .ledgers
        .iter()
        .filter(|l| l.seq_no > 250)
        .find(|l| {
            l.outputs
                .iter()
                .flatten()
                .any(|o| hex::encode(&o.pubkey) == user)
        })
        .unwrap()
        .seq_no;
    sql(
        dir.path(),
        &format!("UPDATE outputs SET blob = x'6c6965' WHERE ledger_seq = {altered} AND pubkey = '{user}' AND ord = 0"),
    );
    let file = restart_and_download(dir.path(), &owner, lcl).await;
    let (code, report, stderr) = replay(dir.path(), &file);
    let report = report.unwrap_or_else(|| panic!("no report; stderr: {stderr}"));
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["mismatch"]["seq_no"], altered, "{report}");
    assert_eq!(report["mismatch"]["what"], "outputs", "{report}");
    assert_eq!(report["mismatch"]["user"], user.as_str(), "{report}");
    assert!(report["mismatch"]["recorded"]
        .as_str()
        .unwrap()
        .contains("lie"));
    assert!(!report["mismatch"]["inputs"].as_array().unwrap().is_empty());

    // A ledger header altered: the chain is refused before any replay.
    sql(
        dir.path(),
        "UPDATE ledgers SET time = time + 1 WHERE seq_no = 100",
    );
    let file = restart_and_download(dir.path(), &owner, lcl).await;
    let (code, report, stderr) = replay(dir.path(), &file);
    assert_eq!(code, 1);
    assert!(report.is_none(), "no report for a refused chain");
    assert!(
        stderr.contains("history refused before replay") && stderr.contains("ledger 100"),
        "{stderr}"
    );
    assert!(!stderr.contains("replayed"), "nothing replayed: {stderr}");
}

#[tokio::test]
async fn a_contract_reading_the_wall_clock_differs_at_its_first_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 50);
    let zip = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        (
            "contract",
            b"#!/bin/sh\ncat > /dev/null\ndate +%s%N > clock\n".to_vec(),
            0o755,
        ),
    ]);
    let client = install(&node, &owner, &zip).await;
    let (installed_at, _) = client.lcl().await.unwrap();
    let lcl = wait_for_lcl(&client, installed_at + 5).await;
    let file = history(&client, lcl).await;
    drop(client);
    node.stop();
    let (code, report, stderr) = replay(dir.path(), &file);
    let report = report.unwrap_or_else(|| panic!("no report; stderr: {stderr}"));
    assert_eq!(code, 1, "{report}");
    let install = report["install_ledger"].as_u64().unwrap();
    assert_eq!(report["mismatch"]["what"], "state", "{report}");
    assert_eq!(
        report["mismatch"]["seq_no"],
        install + 1,
        "the first ledger the contract ran in: {report}"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn a_node_with_a_retention_keeps_that_many_ledgers_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let node = Node::create(dir.path(), &owner, 20);
    let client = node.connect(&owner).await;
    let stat = client.stat().await.unwrap();
    assert_eq!(stat.ledger_retention, 0, "the whole history by default");
    drop(client);
    node.stop();
    let cfg_path = dir.path().join("hp.cfg");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["ledger"] = serde_json::json!({"retention": 256});
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

    let node = Node::start(dir.path());
    let client = node.connect(&owner).await;
    let lcl = wait_for_lcl(&client, 300).await;
    let stat = client.stat().await.unwrap();
    assert_eq!(stat.ledger_retention, 256);
    let old = client.ledger_query(1, 10, true, true).await.unwrap();
    assert_eq!(old.error.as_deref(), Some("pruned"), "{old:?}");
    assert!(old.results.is_empty());
    let recent = client
        .ledger_query(lcl - 100, lcl, false, false)
        .await
        .unwrap();
    assert_eq!(recent.error, None);
    assert_eq!(recent.results.first().unwrap().seq_no, lcl - 100);
    drop(client);
    node.stop();
}
