//! Replay speed of `hotpocket replay` (what `berth audit` runs) for the counter and echo
//! examples: a node closes BENCH_LEDGERS (default 300) ledgers at BENCH_ROUNDTIME ms
//! (default 20) while BENCH_USERS (default 3) users send inputs; its history is downloaded
//! with `ledger_query` and replayed. Prints ledgers/s and inputs/s, and how many times faster
//! than a cluster closing those ledgers at roundtime 1000 ms (1 ledger/s) the replay is.
//! Real `hotpocket` processes on 127.0.0.1.
//!
//! `cargo bench -p berth-hotpocket --bench replay`

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_hotpocket_client::client::{Client, ConnectOptions};
use berth_hotpocket_client::protocol::history::HistoryFile;
use common::{bundle, env_u64, example_contract, new_node, run_node};
use ed25519_dalek::SigningKey;

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("replay: benchmark skipped in test mode; run `cargo bench -p berth-hotpocket --bench replay`");
        return Ok(());
    }
    let ledgers = env_u64("BENCH_LEDGERS", 300);
    let roundtime = env_u64("BENCH_ROUNDTIME", 20);
    let users = env_u64("BENCH_USERS", 3) as u8;
    let hotpocket = std::path::PathBuf::from(env!("CARGO_BIN_EXE_hotpocket"));
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "replay bench: {ledgers} ledgers closed at roundtime {roundtime} ms with {users} users sending inputs"
    );
    println!(
        "{:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "contract", "ledgers", "inputs", "seconds", "ledgers/s", "inputs/s", "x rt 1000ms"
    );
    for (name, input) in [("counter-contract", "incr c"), ("echo-contract", "hello")] {
        let bin = example_contract(&hotpocket, name)?;
        let root = tempfile::tempdir()?;
        let history = runtime.block_on(record(
            &hotpocket,
            root.path(),
            &bin,
            roundtime,
            ledgers,
            users,
            input,
        ))?;
        let file = root.path().join("history.json");
        std::fs::write(&file, serde_json::to_vec(&history)?)?;
        let out = std::process::Command::new(&hotpocket)
            .args(["replay", "--json", "--history"])
            .arg(&file)
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "replay gave no report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if report["verified"] != true {
            bail!("{name}: the replay did not verify: {report}");
        }
        let secs = report["elapsed_ms"].as_f64().unwrap_or(0.0).max(1.0) / 1000.0;
        let replayed = report["ledgers_replayed"].as_f64().unwrap_or(0.0);
        let inputs = report["inputs_replayed"].as_f64().unwrap_or(0.0);
        println!(
            "{:>8} {:>8} {:>8} {:>10.2} {:>10.0} {:>10.0} {:>12.0}",
            name.trim_end_matches("-contract"),
            replayed,
            inputs,
            secs,
            replayed / secs,
            inputs / secs,
            replayed / secs,
        );
    }
    Ok(())
}

/// Runs a node with `bin` until it closed `ledgers` ledgers under load; its history.
#[allow(clippy::too_many_arguments)]
async fn record(
    hotpocket: &Path,
    root: &Path,
    bin: &Path,
    roundtime: u64,
    ledgers: u64,
    users: u8,
    input: &'static str,
) -> anyhow::Result<HistoryFile> {
    let owner = SigningKey::from_bytes(&[1; 32]);
    let dir = root.join("node");
    new_node(hotpocket, &dir, &owner, roundtime, &[])?;
    let (_node, addr) = run_node(hotpocket, &dir, None)?;
    let opts = ConnectOptions {
        timeout: Duration::from_secs(20),
        ..ConnectOptions::default()
    };
    let owner_client = Client::connect(&addr, owner, opts.clone()).await?;
    let reply = owner_client.upload_bundle(&bundle(bin)?).await?;
    if reply.status != "ok" {
        bail!("upload refused: {}", reply.message);
    }
    let mut tasks = Vec::new();
    for seed in 0..users {
        let client = Client::connect(
            &addr,
            SigningKey::from_bytes(&[10 + seed; 32]),
            opts.clone(),
        )
        .await?;
        tasks.push(tokio::spawn(async move {
            while client.known_lcl() < ledgers + 1 {
                let _ = client.submit_and_wait(input.as_bytes()).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let stat = owner_client.stat().await?;
    let records = owner_client
        .ledger_history(1, stat.ledger_seq_no, |_, _| {})
        .await?;
    Ok(HistoryFile {
        contract_id: owner_client.contract_id.clone(),
        unl: stat.current_unl,
        ledgers: records,
    })
}
