//! Benchmarks of the agent on localnet with real Docker (the probe image), printing figures:
//!
//! - `latency`: purchase validated → acquire-ok validated, one purchase at a time, 1 s closes
//!   (target p50 ≤ 2.5 s);
//! - `burst`: 50 purchases submitted together on a 50-slot host, 1 s closes: how many are
//!   served and the same latency's p50 / p95 (target p95 ≤ 10 s);
//! - `rss`: resident memory of the idle `berth-agent` binary holding 10 leases (target ≤ 25 MB).
//!
//! `cargo bench -p berth-agent --bench agent [-- latency|burst|rss]` (all by default).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use berth_agent::test_support::*;
use berth_mb_xrpl::events::{decode, MarketEvent};
use berth_mb_xrpl::history::account_history;

/// Polls the tenant's history until the host's answer to `request` is validated.
async fn answered(w: &World, tenant: &str, request: &str) -> Instant {
    loop {
        let history = account_history(&w.client, tenant, 1).await.unwrap();
        let found = history.transactions.iter().any(|tx| {
            matches!(decode(tx, tenant), Some(MarketEvent::Answer { request: r, .. }) if r.to_string() == request)
        });
        if found {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut seconds: Vec<f64>) {
    seconds.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.2}s p95={:.2}s max={:.2}s",
        seconds.len(),
        percentile(&seconds, 0.5),
        percentile(&seconds, 0.95),
        seconds.last().copied().unwrap_or_default()
    );
}

fn one_second() -> Options {
    Options {
        close_interval: Duration::from_secs(1),
        ..Options::default()
    }
}

async fn latency() {
    let n = 10;
    let Some(w) = World::start_with("bench-lat", n, 28000, one_second()).await else {
        return;
    };
    let mut seconds = Vec::new();
    for slot in 0..n {
        let (_, offer) = w.offered(slot, 0).await;
        let buyer = w.buy(&offer, slot as u8 + 1).await;
        let validated = Instant::now();
        let done = answered(&w, &buyer.account.address(), &buyer.purchase).await;
        seconds.push((done - validated).as_secs_f64());
    }
    report(
        "purchase-validated to answer-validated, one at a time, 1 s closes",
        seconds,
    );
    w.stop().await;
}

async fn burst() {
    let n = 50;
    // `BERTH_BENCH_POOL` (default 50): the pool of started instances the burst draws on.
    let pool = std::env::var("BERTH_BENCH_POOL")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(n);
    let options = Options {
        pool,
        ..one_second()
    };
    let Some(w) = World::start_with("bench-burst", n, 28200, options).await else {
        return;
    };
    // Wait for the pool to be full before the burst (its cost is paid ahead).
    let mut pool_ready = 0;
    for _ in 0..1200 {
        pool_ready = w
            .store()
            .map(|s| {
                s.read()
                    .pool()
                    .unwrap()
                    .iter()
                    .filter(|p| p.state == berth_agent::store::PoolState::Ready)
                    .count()
            })
            .unwrap_or(0);
        if pool_ready >= pool as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("burst: pool of {pool_ready} ready instances");
    let mut offers = Vec::new();
    for slot in 0..n {
        offers.push(w.offered(slot, 0).await.1);
    }
    let mut tenants = Vec::new();
    for _ in 0..n {
        tenants.push(fund(&w.client, 100 * XRP).await);
    }
    let started = Instant::now();
    let buys = offers
        .iter()
        .zip(&tenants)
        .enumerate()
        .map(|(i, (offer, tenant))| {
            let w = &w;
            async move {
                let key = ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 1; 32]);
                let tx = serde_json::json!({"TransactionType": "NFTokenAcceptOffer",
                "NFTokenSellOffer": offer, "Memos": w.acquire_memo(&key)});
                let (hash, result) = w.submit_result(tenant, tx).await;
                let validated = Instant::now();
                assert_eq!(result, "tesSUCCESS");
                let done = tokio::time::timeout(
                    Duration::from_secs(120),
                    answered(w, &tenant.address(), &hash),
                )
                .await
                .ok();
                done.map(|d| (d - validated).as_secs_f64())
            }
        });
    let results = futures_util::future::join_all(buys).await;
    let served: Vec<f64> = results.into_iter().flatten().collect();
    println!(
        "burst: {} of {n} purchases served, wall {:.1}s",
        served.len(),
        started.elapsed().as_secs_f64()
    );
    report(
        "purchase-validated to answer-validated, 50 at once, 1 s closes",
        served,
    );
    w.stop().await;
}

async fn rss() {
    let n = 10;
    let options = Options {
        binary: Some(env!("CARGO_BIN_EXE_berth-agent").into()),
        ..Options::default()
    };
    let Some(mut w) = World::start_with("bench-rss", n, 28400, options).await else {
        return;
    };
    w.spawn_binary(None);
    for slot in 0..n {
        let (_, offer) = w.offered(slot, 0).await;
        let buyer = w.buy(&offer, slot as u8 + 1).await;
        answered(&w, &buyer.account.address(), &buyer.purchase).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pid = w.binary_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse::<u64>()
            .unwrap_or(0)
    };
    println!(
        "idle berth-agent with {n} leases: VmRSS {:.1} MB (VmHWM {:.1} MB)",
        line("VmRSS:") as f64 / 1024.0,
        line("VmHWM:") as f64 / 1024.0
    );
    w.terminate_binary();
    w.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if wants("latency") {
        latency().await;
    }
    if wants("burst") {
        burst().await;
    }
    if wants("rss") {
        rss().await;
    }
}
