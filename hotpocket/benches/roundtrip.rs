//! Clusters of 1, 3 and 5 nodes, 100 users, the echo contract: inputs/s and input-to-output
//! latency (p50, p95) at roundtimes 1000 and 200 ms. Runs real `hotpocket` processes over TLS
//! WebSocket on 127.0.0.1, peering with each other; users are spread over the nodes and an
//! output counts when it reaches its user with the UNL's signatures.
//!
//! Each roundtime runs twice: a latency run at a moderate offered load (BENCH_LATENCY_RATE,
//! default 1000 inputs/s) and a throughput run at a high one (BENCH_RATE, default 6000 inputs/s,
//! where latency includes queueing once the node saturates).
//!
//! `cargo bench -p berth-hotpocket --bench roundtrip` (env BENCH_RATE, BENCH_LATENCY_RATE;
//! BENCH_SECS = measuring seconds per run, default 8; BENCH_ROUNDTIMES and BENCH_NODES =
//! comma-separated lists, default 1000,200 and 1,3,5; BENCH_NODE_LOG = the nodes' RUST_LOG).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use berth_hotpocket_client::client::{Client, ConnectOptions};
use common::{bundle, example_contract, start_cluster};
use ed25519_dalek::SigningKey;

mod common;

const USERS: usize = 100;

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("roundtrip: benchmark skipped in test mode; run `cargo bench -p berth-hotpocket --bench roundtrip`");
        return Ok(());
    }
    let latency_rate: f64 = std::env::var("BENCH_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000.0);
    let rate: f64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000.0);
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let hotpocket = PathBuf::from(env!("CARGO_BIN_EXE_hotpocket"));
    let echo = example_contract(&hotpocket, "echo-contract")?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "hotpocket roundtrip bench: {USERS} users, echo contract, {secs} s per run; \
         latency run offers {latency_rate} inputs/s, throughput run {rate} inputs/s"
    );
    println!(
        "{:>5} {:>10} | {:>10} {:>10} {:>8} | {:>10} {:>10} {:>10} {:>7}",
        "nodes",
        "roundtime",
        "lat p50",
        "lat p95",
        "p50/rt",
        "inputs/s",
        "sat p50",
        "sat p95",
        "lost"
    );
    let list = |name: &str, default: &[u64]| -> Vec<u64> {
        match std::env::var(name) {
            Ok(list) => list
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .collect(),
            Err(_) => default.to_vec(),
        }
    };
    let roundtimes = list("BENCH_ROUNDTIMES", &[1000, 200]);
    let node_counts = list("BENCH_NODES", &[1, 3, 5]);
    for nodes in node_counts {
        let nodes = nodes.max(1) as usize;
        for &roundtime in &roundtimes {
            let lat =
                runtime.block_on(run(&hotpocket, &echo, nodes, roundtime, latency_rate, secs))?;
            let thr = runtime.block_on(run(&hotpocket, &echo, nodes, roundtime, rate, secs))?;
            println!(
                "{:>5} {:>8}ms | {:>8.1}ms {:>8.1}ms {:>8.2} | {:>10.0} {:>8.1}ms {:>8.1}ms {:>7}",
                nodes,
                roundtime,
                lat.p50,
                lat.p95,
                lat.p50 / roundtime as f64,
                thr.throughput,
                thr.p50,
                thr.p95,
                thr.lost + lat.lost
            );
        }
    }
    Ok(())
}

/// The echo example next to the binary, built first when missing.
struct Figures {
    throughput: f64,
    p50: f64,
    p95: f64,
    lost: usize,
}

async fn run(
    hotpocket: &Path,
    echo: &Path,
    nodes: usize,
    roundtime: u64,
    rate: f64,
    secs: u64,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let owner = SigningKey::from_bytes(&[1; 32]);
    let (_nodes, addrs) = start_cluster(hotpocket, dir.path(), &owner, roundtime, nodes)?;
    let addr = addrs[0].clone();
    let opts = ConnectOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let admin = Client::connect(&addr, owner.clone(), opts.clone()).await?;
    let reply = admin.upload_bundle(&bundle(echo)?).await?;
    if reply.status != "ok" {
        bail!("upload failed: {}", reply.message);
    }
    // Every node installs the bundle at the same ledger; wait until each says so.
    for at in &addrs {
        let probe = Client::connect(at, SigningKey::from_bytes(&[9; 32]), opts.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !probe.stat().await?.contract_execution_enabled {
            if Instant::now() > deadline {
                bail!("node {at} did not install the bundle");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut clients = Vec::new();
    for i in 0..USERS {
        let key = SigningKey::from_bytes(&[(i + 10) as u8; 32]);
        let at = &addrs[i % addrs.len()];
        clients.push(Arc::new(Client::connect(at, key, opts.clone()).await?));
    }
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let sent_total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let per_user_interval = Duration::from_secs_f64(USERS as f64 / rate);
    let warmup = Duration::from_millis(roundtime * 2);
    let measure = Duration::from_secs(secs);
    let start = Instant::now() + warmup;
    let stop_sending = start + measure;
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let latencies = latencies.clone();
        let sent_total = sent_total.clone();
        tasks.push(tokio::spawn(async move {
            let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
            let mut events = client.output_events();
            let receiver = {
                let sent = sent.clone();
                let latencies = latencies.clone();
                tokio::spawn(async move {
                    while let Ok(batch) = events.recv().await {
                        let now = Instant::now();
                        for out in batch.outputs {
                            let text = String::from_utf8_lossy(&out);
                            let Some(seq) =
                                text.rsplit('-').next().and_then(|s| s.parse::<u64>().ok())
                            else {
                                continue;
                            };
                            let Some(at) = sent.lock().ok().and_then(|mut m| m.remove(&seq)) else {
                                continue;
                            };
                            if at >= start && at < stop_sending {
                                if let Ok(mut l) = latencies.lock() {
                                    l.push(now.duration_since(at).as_secs_f64() * 1000.0);
                                }
                            }
                        }
                    }
                })
            };
            // Spread users over the interval.
            tokio::time::sleep(per_user_interval.mul_f64(i as f64 / USERS as f64)).await;
            let mut tick = tokio::time::interval(per_user_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            let mut nonce = 1u64;
            while Instant::now() < stop_sending {
                tick.tick().await;
                seq += 1;
                nonce += 1;
                let input = format!("u{i}-{seq}");
                let max = client.known_lcl() + 8;
                let at = Instant::now();
                if let Ok(mut m) = sent.lock() {
                    m.insert(seq, at);
                }
                if client
                    .submit_with(input.as_bytes(), nonce, max)
                    .await
                    .is_err()
                {
                    break;
                }
                if at >= start && at < stop_sending {
                    sent_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(roundtime * 3 + 500)).await;
            receiver.abort();
        }));
    }
    for t in tasks {
        t.await?;
    }
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
        }
    };
    let sent = sent_total.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Figures {
        throughput: l.len() as f64 / measure.as_secs_f64(),
        p50: pct(0.5),
        p95: pct(0.95),
        lost: sent.saturating_sub(l.len()),
    })
}
