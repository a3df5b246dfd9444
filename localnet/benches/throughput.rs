//! Localnet throughput: pre-signed transactions submitted over WebSocket, counted
//! once applied and closed into a validated ledger.
//!
//! Run: `cargo bench -p berth-localnet --bench throughput`
//! Knobs (env): BENCH_PAYMENTS (default 20000), BENCH_TRADES (default 6000),
//! BENCH_CONNECTIONS (default 8), BENCH_CLOSE_MS (default 1000: the server also
//! closes ledgers on its timer while the run goes on).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use berth_localnet::{Config, Localnet, GENESIS_SEED};
use berth_xrpl_core::{index, tx, KeyPair, KeyType};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::{connect_async, tungstenite::Message};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends every blob of each lane in order on its own connection (pipelined) and
/// returns the engine results.
async fn blast(url: &str, lanes: Vec<Vec<String>>) -> Vec<String> {
    let mut tasks = Vec::new();
    for lane in lanes {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let (ws, _) = connect_async(&url).await.unwrap();
            let (mut w, mut r) = ws.split();
            let n = lane.len();
            let writer = tokio::spawn(async move {
                for (i, blob) in lane.into_iter().enumerate() {
                    let m = json!({"id": i, "command": "submit", "tx_blob": blob});
                    w.send(Message::Text(m.to_string())).await.unwrap();
                }
                w
            });
            let mut results = Vec::with_capacity(n);
            while results.len() < n {
                let Some(Ok(Message::Text(t))) = r.next().await else {
                    continue;
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                results.push(
                    v["result"]["engine_result"]
                        .as_str()
                        .unwrap_or("error")
                        .to_string(),
                );
            }
            let _ = writer.await;
            results
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn call(url: &str, req: Value) -> Value {
    let (mut ws, _) = connect_async(url).await.unwrap();
    ws.send(Message::Text(req.to_string())).await.unwrap();
    loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn sequence(url: &str, key: &KeyPair) -> u32 {
    let r = call(
        url,
        json!({"command": "account_info", "account": key.address()}),
    )
    .await;
    r["result"]["account_data"]["Sequence"].as_u64().unwrap() as u32
}

fn sign(key: &KeyPair, txj: Value) -> String {
    tx::sign_json(&txj, key).unwrap().blob_hex()
}

/// Funds accounts from genesis and closes the ledger; returns the next ledger.
async fn fund(url: &str, genesis: &KeyPair, gseq: &mut u32, who: &[KeyPair], drops: i64) {
    let blobs: Vec<String> = who
        .iter()
        .map(|k| {
            let b = sign(
                genesis,
                json!({"TransactionType": "Payment", "Account": genesis.address(), "Destination": k.address(),
                       "Amount": drops.to_string(), "Fee": "10", "Sequence": *gseq}),
            );
            *gseq += 1;
            b
        })
        .collect();
    let r = blast(url, vec![blobs]).await;
    assert!(r.iter().all(|x| x == "tesSUCCESS"), "funding failed");
    call(url, json!({"command": "ledger_accept"})).await;
}

fn report(name: &str, units: usize, txs: usize, elapsed: Duration, target: f64) {
    let per_s = units as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<28} {units:>7} in {:>6.3} s = {per_s:>8.0}/s ({txs} transactions, {:.0} tx/s; target {target:.0}/s: {})",
        elapsed.as_secs_f64(),
        txs as f64 / elapsed.as_secs_f64(),
        if per_s >= target { "met" } else { "NOT met" }
    );
}

async fn run() {
    let payments = env_usize("BENCH_PAYMENTS", 20_000);
    let trades = env_usize("BENCH_TRADES", 6_000);
    let conns = env_usize("BENCH_CONNECTIONS", 8).max(1);
    let close_ms = env_usize("BENCH_CLOSE_MS", 1000) as u64;
    let net = Localnet::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: Duration::from_millis(close_ms),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = net.url();
    let genesis = KeyPair::from_seed(GENESIS_SEED).unwrap();
    let mut gseq = 1u32;
    println!("berth-localnet throughput ({conns} WebSocket connections, ledgers also closing every {close_ms} ms)");

    // Payments: ed25519 senders, pre-signed.
    let senders: Vec<KeyPair> = (0..conns * 25)
        .map(|_| KeyPair::generate(KeyType::Ed25519))
        .collect();
    let sink = KeyPair::generate(KeyType::Ed25519);
    fund(&url, &genesis, &mut gseq, &senders, 1_000_000_000).await;
    fund(
        &url,
        &genesis,
        &mut gseq,
        std::slice::from_ref(&sink),
        100_000_000,
    )
    .await;
    let per_sender = payments.div_ceil(senders.len());
    let mut lanes: Vec<Vec<String>> = vec![Vec::new(); conns];
    for (i, s) in senders.iter().enumerate() {
        let seq0 = sequence(&url, s).await;
        for j in 0..per_sender {
            lanes[i % conns].push(sign(
                s,
                json!({"TransactionType": "Payment", "Account": s.address(), "Destination": sink.address(),
                       "Amount": "1000", "Fee": "10", "Sequence": seq0 + j as u32}),
            ));
        }
    }
    let n: usize = lanes.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let results = blast(&url, lanes).await;
    call(&url, json!({"command": "ledger_accept"})).await;
    let elapsed = t0.elapsed();
    let ok = results.iter().filter(|r| *r == "tesSUCCESS").count();
    assert_eq!(ok, n, "every payment applies");
    report("ed25519 payments", n, n, elapsed, 3000.0);

    // Trades: mint → sell offer → accept, IDs predicted so all can be pre-signed.
    let pairs = conns * 10;
    let per_pair = trades.div_ceil(pairs);
    let sellers: Vec<KeyPair> = (0..pairs)
        .map(|_| KeyPair::generate(KeyType::Ed25519))
        .collect();
    let buyers: Vec<KeyPair> = (0..pairs)
        .map(|_| KeyPair::generate(KeyType::Ed25519))
        .collect();
    fund(&url, &genesis, &mut gseq, &sellers, 1_000_000_000).await;
    fund(&url, &genesis, &mut gseq, &buyers, 1_000_000_000).await;
    let mut lanes: Vec<Vec<String>> = vec![Vec::new(); conns];
    for (p, (s, b)) in sellers.iter().zip(&buyers).enumerate() {
        let s0 = sequence(&url, s).await;
        let b0 = sequence(&url, b).await;
        for i in 0..per_pair as u32 {
            let token = index::nftoken_id(9, 0, &s.account_id(), 0, s0 + i);
            let offer_seq = s0 + 2 * i + 1;
            let offer = index::nft_offer(&s.account_id(), offer_seq);
            let lane = &mut lanes[p % conns];
            lane.push(sign(s, json!({"TransactionType": "NFTokenMint", "Account": s.address(), "NFTokenTaxon": 0, "Flags": 9,
                "URI": "626572746802", "Fee": "10", "Sequence": s0 + 2 * i})));
            lane.push(sign(s, json!({"TransactionType": "NFTokenCreateOffer", "Account": s.address(), "NFTokenID": hex::encode_upper(token),
                "Amount": "1000000", "Flags": 1, "Fee": "10", "Sequence": offer_seq})));
            lane.push(sign(
                b,
                json!({"TransactionType": "NFTokenAcceptOffer", "Account": b.address(),
                "NFTokenSellOffer": hex::encode_upper(offer), "Fee": "10", "Sequence": b0 + i}),
            ));
        }
    }
    let n: usize = lanes.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let results = blast(&url, lanes).await;
    call(&url, json!({"command": "ledger_accept"})).await;
    let elapsed = t0.elapsed();
    let ok = results.iter().filter(|r| *r == "tesSUCCESS").count();
    assert_eq!(
        ok,
        n,
        "every mint, offer and accept applies: {:?}",
        results.iter().find(|r| *r != "tesSUCCESS")
    );
    report("NFT trades (mint+offer+accept)", n / 3, n, elapsed, 1000.0);
    let closed = call(&url, json!({"command": "ledger_closed"})).await;
    println!("last validated ledger {}", closed["result"]["ledger_index"]);
    net.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}
