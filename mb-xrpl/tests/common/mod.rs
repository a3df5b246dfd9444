//! Test harness: an in-process localnet on 127.0.0.1:0 and helpers over our client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use berth_localnet::{Config, Localnet};
use berth_mb_xrpl::{Client, ClientConfig, StreamEvent};
use berth_xrpl_core::{KeyPair, KeyType};
use serde_json::json;
use tokio::sync::broadcast;

pub const XRP: u64 = 1_000_000;

/// A localnet that closes ledgers only on `ledger_accept`.
pub async fn localnet() -> Localnet {
    localnet_with(None, "127.0.0.1:0", 10).await
}

pub async fn localnet_with(data_dir: Option<PathBuf>, listen: &str, base_fee: i64) -> Localnet {
    let mut cfg = Config {
        listen: listen.parse().unwrap(),
        close_interval: Duration::ZERO,
        data_dir,
        ..Config::default()
    };
    cfg.fees.base = base_fee;
    Localnet::start(cfg).await.expect("localnet starts")
}

/// A client with short timeouts and backoff, for tests.
pub fn config(urls: &[String]) -> ClientConfig {
    let mut c = ClientConfig::new(urls.iter().cloned());
    c.request_timeout = Duration::from_secs(10);
    c.connect_timeout = Duration::from_secs(2);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
}

pub async fn client(net: &Localnet) -> Client {
    Client::connect(config(&[net.url()]))
        .await
        .expect("client connects")
}

pub async fn accept(client: &Client) -> u32 {
    let r = client.request("ledger_accept", json!({})).await.unwrap();
    r["ledger_current_index"].as_u64().unwrap() as u32 - 1
}

/// A new funded account (validated).
pub async fn funded(client: &Client, key_type: KeyType, drops: u64) -> KeyPair {
    let key = KeyPair::generate(key_type);
    client
        .request(
            "wallet_fund",
            json!({"destination": key.address(), "amount": drops.to_string()}),
        )
        .await
        .unwrap();
    accept(client).await;
    key
}

/// The next event matching `pred`, within 10 s.
pub async fn next_event(
    rx: &mut broadcast::Receiver<StreamEvent>,
    pred: impl Fn(&StreamEvent) -> bool,
) -> StreamEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = rx.recv().await.expect("event channel open");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event within 10 s")
}
