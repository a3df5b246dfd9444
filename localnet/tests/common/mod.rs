//! Test harness: a localnet on 127.0.0.1:0 and a small WebSocket client for it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_localnet::{Config, Localnet, GENESIS_SEED};
use berth_xrpl_core::{tx, KeyPair, KeyType};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{connect_async, tungstenite::Message, MaybeTlsStream, WebSocketStream};

pub const XRP: i64 = 1_000_000;

/// A localnet that closes ledgers only when asked.
pub async fn start() -> Localnet {
    start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: Duration::ZERO,
        ..Config::default()
    })
    .await
}

pub async fn start_with(cfg: Config) -> Localnet {
    Localnet::start(cfg).await.expect("localnet starts")
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Stream messages received while waiting for answers.
    pub events: Vec<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = connect_async(url).await.expect("websocket connects");
        Client {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends raw text and returns the next answer (not a stream message).
    pub async fn raw(&mut self, text: &str) -> Value {
        self.ws.send(Message::Text(text.to_string())).await.unwrap();
        self.next_response(None).await
    }

    /// Sends raw text; `None` when the server closed the connection instead of
    /// answering.
    pub async fn raw_or_closed(&mut self, text: &str) -> Option<Value> {
        if self.ws.send(Message::Text(text.to_string())).await.is_err() {
            return None;
        }
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("answer or close within 10 s");
            match m {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn next_response(&mut self, id: Option<u64>) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("answer within 10 s")
                .expect("connection open")
                .expect("frame");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "response" && (id.is_none() || v["id"] == json!(id.unwrap())) {
                return v;
            }
            self.events.push(v);
        }
    }

    /// Sends a request and returns the whole answer.
    pub async fn call(&mut self, mut req: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.ws.send(Message::Text(req.to_string())).await.unwrap();
        self.next_response(Some(id)).await
    }

    /// Sends a request and returns its `result`, panicking on an error answer.
    pub async fn ok(&mut self, req: Value) -> Value {
        let r = self.call(req.clone()).await;
        assert_eq!(r["status"], "success", "request {req} failed: {r}");
        r["result"].clone()
    }

    /// Waits for a stream message matching the predicate.
    pub async fn wait_event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&pred) {
            return self.events.remove(i);
        }
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("event within 10 s")
                .expect("connection open")
                .expect("frame");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if pred(&v) {
                return v;
            }
            self.events.push(v);
        }
    }

    pub async fn close_ledger(&mut self) -> u64 {
        let r = self.ok(json!({"command": "ledger_accept"})).await;
        r["ledger_current_index"].as_u64().unwrap()
    }

    pub async fn sequence(&mut self, address: &str) -> u32 {
        let r = self
            .ok(json!({"command": "account_info", "account": address, "ledger_index": "current"}))
            .await;
        r["account_data"]["Sequence"].as_u64().unwrap() as u32
    }

    pub async fn balance(&mut self, address: &str) -> i64 {
        let r = self
            .ok(json!({"command": "account_info", "account": address, "ledger_index": "current"}))
            .await;
        r["account_data"]["Balance"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub async fn owner_count(&mut self, address: &str) -> u64 {
        let r = self
            .ok(json!({"command": "account_info", "account": address, "ledger_index": "current"}))
            .await;
        r["account_data"]["OwnerCount"].as_u64().unwrap()
    }

    /// Fills Sequence and Fee, signs and submits; returns the submit result.
    pub async fn submit(&mut self, key: &KeyPair, mut txj: Value) -> Value {
        if txj.get("Sequence").is_none() {
            let seq = self.sequence(&key.address()).await;
            txj["Sequence"] = json!(seq);
        }
        if txj.get("Fee").is_none() {
            txj["Fee"] = json!("10");
        }
        if txj.get("Account").is_none() {
            txj["Account"] = json!(key.address());
        }
        let signed = tx::sign_json(&txj, key).expect("transaction JSON encodes");
        let r = self
            .ok(json!({"command": "submit", "tx_blob": signed.blob_hex()}))
            .await;
        assert_eq!(
            r["tx_json"]["hash"],
            json!(signed.hash_hex()),
            "hash as computed locally"
        );
        r
    }

    /// Submits and returns the engine result token.
    pub async fn submit_result(&mut self, key: &KeyPair, txj: Value) -> String {
        let r = self.submit(key, txj).await;
        r["engine_result"].as_str().unwrap().to_string()
    }

    /// Submits, closes the ledger, and returns the validated transaction (API v2).
    pub async fn submit_close(&mut self, key: &KeyPair, txj: Value) -> Value {
        let r = self.submit(key, txj).await;
        let hash = r["tx_json"]["hash"].as_str().unwrap().to_string();
        self.close_ledger().await;
        self.ok(json!({"command": "tx", "transaction": hash, "api_version": 2}))
            .await
    }

    /// A new ed25519 account funded by genesis with `xrp` XRP (ledger closed).
    pub async fn funded(&mut self, xrp: i64) -> KeyPair {
        self.funded_with(xrp, KeyType::Ed25519).await
    }

    pub async fn funded_with(&mut self, xrp: i64, kt: KeyType) -> KeyPair {
        let k = KeyPair::generate(kt);
        let g = genesis();
        let r = self
            .submit(
                &g,
                json!({"TransactionType": "Payment", "Destination": k.address(), "Amount": (xrp * XRP).to_string()}),
            )
            .await;
        assert_eq!(r["engine_result"], "tesSUCCESS", "{r}");
        self.close_ledger().await;
        k
    }
}

pub fn genesis() -> KeyPair {
    KeyPair::from_seed(GENESIS_SEED).unwrap()
}

/// The engine result of a validated transaction answered by `tx` (API v2).
pub fn result_of(tx: &Value) -> &str {
    tx["meta"]["TransactionResult"].as_str().unwrap()
}
