//! Berth's extension of the user protocol for anchoring a cluster on the XRP Ledger: a
//! user asks a node to sign a checkpoint transaction of the cluster's account, or for its
//! ledger at a sequence number (what `berth cluster verify` compares with a checkpoint).
//! Any user may ask; the answers are public facts about the node's ledger.
//!
//! Requests (JSON mode; BSON mode has the same fields, `tx` as binary):
//! - `{"type": "berth_checkpoint_sign", "tx": "<hex of the unsigned transaction>"}`
//! - `{"type": "berth_ledger", "seq": 120}`
//!
//! Answers, in the order of the requests:
//! - `{"type": "berth_checkpoint_signature", "status": "ok", "account": "r…",
//!   "signing_pub_key": "ED…", "txn_signature": "<hex>"}` (the `Signer` of the multi-signed
//!   transaction), or `{"status": "refused", "reason": "…"}` naming what differs;
//! - `{"type": "berth_ledger_response", "seq": 120, "lcl_seq": 131, "found": true,
//!   "hash": "<64 hex>", "state_hash": "<64 hex>", "bundle_hash": "<64 hex>", "time": <ms>}`;
//!   `found` is false (and the hashes absent) when the node has no ledger at `seq`.

use serde_json::{json, Value};

use super::bson::{Bson, Doc};
use super::user::Protocol;

/// The signer quorum of a cluster account for `nodes` UNL nodes (each of weight 1) and the
/// cluster's consensus `threshold` in percent: ceil(threshold × nodes / 100), at least 1 and
/// at most `nodes`, the number of nodes that close a ledger.
pub fn signer_quorum(nodes: usize, threshold: u32) -> u32 {
    let need = (u64::from(threshold) * nodes as u64).div_ceil(100).max(1);
    u32::try_from(need.min(nodes.max(1) as u64)).unwrap_or(u32::MAX)
}

/// A Berth extension request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BerthRequest {
    /// Sign this (unsigned, binary) transaction as one signer of a multi-signed one.
    CheckpointSign { tx: Vec<u8> },
    /// The node's ledger at `seq`.
    LedgerAt { seq: u64 },
}

/// One signer's entry of a multi-signed transaction, as a node gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSigner {
    /// The signer's classic address (the account of the node's ed25519 key).
    pub account: String,
    /// `ED` ‖ the node's key, upper-case hex.
    pub signing_pub_key: String,
    /// Upper-case hex.
    pub txn_signature: String,
}

/// A node's ledger at a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAnswer {
    pub seq: u64,
    /// The node's last closed ledger when it answered.
    pub lcl_seq: u64,
    /// (ledger hash, state hash, bundle hash) when the node has the ledger.
    pub ledger: Option<LedgerHashes>,
}

/// The hashes of one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerHashes {
    pub hash: [u8; 32],
    pub state_hash: [u8; 32],
    /// blake3 of the bundle installed at that ledger; zeros when none, or when the node does
    /// not know it (it caught up by state sync past the install).
    pub bundle_hash: [u8; 32],
    /// When the ledger closed: the round's time, Unix milliseconds.
    pub time_ms: u64,
}

/// A Berth extension answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BerthReply {
    /// The signature, or why the node refused.
    CheckpointSignature(Result<CheckpointSigner, String>),
    Ledger(LedgerAnswer),
}

/// Whether a message type is a Berth extension (`berth_…`).
pub fn is_berth_type(kind: &str) -> bool {
    kind.starts_with("berth_")
}

fn hash_of(text: Option<&str>) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text?, &mut out).ok()?;
    Some(out)
}

impl BerthRequest {
    /// The JSON-mode or BSON-mode message.
    pub fn encode(&self, protocol: Protocol) -> Vec<u8> {
        match protocol {
            Protocol::Json => match self {
                BerthRequest::CheckpointSign { tx } => {
                    json!({"type": "berth_checkpoint_sign", "tx": hex::encode_upper(tx)})
                }
                BerthRequest::LedgerAt { seq } => json!({"type": "berth_ledger", "seq": seq}),
            }
            .to_string()
            .into_bytes(),
            Protocol::Bson => match self {
                BerthRequest::CheckpointSign { tx } => Doc::new()
                    .with("type", Bson::String("berth_checkpoint_sign".into()))
                    .with("tx", Bson::Binary(tx.clone())),
                BerthRequest::LedgerAt { seq } => Doc::new()
                    .with("type", Bson::String("berth_ledger".into()))
                    .with("seq", Bson::Int64(i64::try_from(*seq).unwrap_or(i64::MAX))),
            }
            .encode(),
        }
    }

    /// Reads a JSON-mode request whose type is `berth_…`; None when it is malformed.
    pub fn from_json(value: &Value) -> Option<BerthRequest> {
        match value.get("type")?.as_str()? {
            "berth_checkpoint_sign" => Some(BerthRequest::CheckpointSign {
                tx: hex::decode(value.get("tx")?.as_str()?).ok()?,
            }),
            "berth_ledger" => Some(BerthRequest::LedgerAt {
                seq: value.get("seq")?.as_u64()?,
            }),
            _ => None,
        }
    }

    /// Reads a BSON-mode request whose type is `berth_…`; None when it is malformed.
    pub fn from_bson(doc: &Doc) -> Option<BerthRequest> {
        match doc.get("type")?.as_str()? {
            "berth_checkpoint_sign" => Some(BerthRequest::CheckpointSign {
                tx: doc.get("tx")?.as_bytes()?.to_vec(),
            }),
            "berth_ledger" => Some(BerthRequest::LedgerAt {
                seq: doc.get("seq")?.as_u64()?,
            }),
            _ => None,
        }
    }
}

impl BerthReply {
    /// The JSON form (BSON mode carries the same members, hashes as hex strings).
    pub fn to_json(&self) -> Value {
        match self {
            BerthReply::CheckpointSignature(Ok(s)) => json!({
                "type": "berth_checkpoint_signature",
                "status": "ok",
                "account": s.account,
                "signing_pub_key": s.signing_pub_key,
                "txn_signature": s.txn_signature,
            }),
            BerthReply::CheckpointSignature(Err(reason)) => json!({
                "type": "berth_checkpoint_signature",
                "status": "refused",
                "reason": reason,
            }),
            BerthReply::Ledger(a) => {
                let mut v = json!({
                    "type": "berth_ledger_response",
                    "seq": a.seq,
                    "lcl_seq": a.lcl_seq,
                    "found": a.ledger.is_some(),
                });
                if let Some(l) = &a.ledger {
                    v["hash"] = json!(hex::encode(l.hash));
                    v["state_hash"] = json!(hex::encode(l.state_hash));
                    v["bundle_hash"] = json!(hex::encode(l.bundle_hash));
                    v["time"] = json!(l.time_ms);
                }
                v
            }
        }
    }

    /// Encodes for the wire.
    pub fn encode(&self, protocol: Protocol) -> Vec<u8> {
        let value = self.to_json();
        match protocol {
            Protocol::Json => value.to_string().into_bytes(),
            Protocol::Bson => {
                let mut doc = Doc::new();
                if let Value::Object(map) = value {
                    for (k, v) in map {
                        let b = match v {
                            Value::String(s) => Bson::String(s),
                            Value::Bool(b) => Bson::Bool(b),
                            Value::Number(n) => Bson::Int64(n.as_i64().unwrap_or(i64::MAX)),
                            _ => continue,
                        };
                        doc = doc.with(&k, b);
                    }
                }
                doc.encode()
            }
        }
    }

    /// Reads a JSON-mode answer whose type is `berth_…`.
    pub fn from_json(value: &Value) -> Option<BerthReply> {
        let text = |k: &str| value.get(k).and_then(Value::as_str);
        match text("type")? {
            "berth_checkpoint_signature" => {
                Some(BerthReply::CheckpointSignature(match text("status")? {
                    "ok" => Ok(CheckpointSigner {
                        account: text("account")?.to_owned(),
                        signing_pub_key: text("signing_pub_key")?.to_owned(),
                        txn_signature: text("txn_signature")?.to_owned(),
                    }),
                    _ => Err(text("reason").unwrap_or("refused").to_owned()),
                }))
            }
            "berth_ledger_response" => {
                let found = value.get("found").and_then(Value::as_bool) == Some(true);
                let ledger = match found {
                    true => Some(LedgerHashes {
                        hash: hash_of(text("hash"))?,
                        state_hash: hash_of(text("state_hash"))?,
                        bundle_hash: hash_of(text("bundle_hash"))?,
                        time_ms: value.get("time").and_then(Value::as_u64).unwrap_or(0),
                    }),
                    false => None,
                };
                Some(BerthReply::Ledger(LedgerAnswer {
                    seq: value.get("seq")?.as_u64()?,
                    lcl_seq: value.get("lcl_seq")?.as_u64()?,
                    ledger,
                }))
            }
            _ => None,
        }
    }

    /// Reads a BSON-mode answer whose type is `berth_…`.
    pub fn from_bson(doc: &Doc) -> Option<BerthReply> {
        let mut map = serde_json::Map::new();
        for (k, v) in doc.iter() {
            let value = match v {
                Bson::String(s) => json!(s),
                Bson::Bool(b) => json!(b),
                Bson::Int64(n) => json!(n),
                Bson::Int32(n) => json!(n),
                _ => continue,
            };
            map.insert(k.clone(), value);
        }
        BerthReply::from_json(&Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quorum_is_the_share_of_nodes_that_close_a_ledger() {
        assert_eq!(signer_quorum(3, 80), 3);
        assert_eq!(signer_quorum(3, 51), 2);
        assert_eq!(signer_quorum(5, 80), 4);
        assert_eq!(signer_quorum(5, 60), 3);
        assert_eq!(signer_quorum(1, 1), 1);
        assert_eq!(signer_quorum(4, 100), 4);
    }

    #[test]
    fn requests_and_answers_round_trip_in_both_protocols() {
        let requests = [
            BerthRequest::CheckpointSign { tx: vec![1, 2, 3] },
            BerthRequest::LedgerAt { seq: 77 },
        ];
        let answers = [
            BerthReply::CheckpointSignature(Ok(CheckpointSigner {
                account: "rXYZ".into(),
                signing_pub_key: "ED00".into(),
                txn_signature: "AB".into(),
            })),
            BerthReply::CheckpointSignature(Err("ledger 5 differs".into())),
            BerthReply::Ledger(LedgerAnswer {
                seq: 5,
                lcl_seq: 9,
                ledger: Some(LedgerHashes {
                    hash: [1; 32],
                    state_hash: [2; 32],
                    bundle_hash: [0; 32],
                    time_ms: 1_700_000_000_000,
                }),
            }),
            BerthReply::Ledger(LedgerAnswer {
                seq: 50,
                lcl_seq: 9,
                ledger: None,
            }),
        ];
        for r in &requests {
            let json: Value = serde_json::from_slice(&r.encode(Protocol::Json)).unwrap();
            assert_eq!(BerthRequest::from_json(&json).as_ref(), Some(r));
            let doc = Doc::decode(&r.encode(Protocol::Bson)).unwrap();
            assert_eq!(BerthRequest::from_bson(&doc).as_ref(), Some(r));
        }
        for a in &answers {
            let json: Value = serde_json::from_slice(&a.encode(Protocol::Json)).unwrap();
            assert_eq!(BerthReply::from_json(&json).as_ref(), Some(a));
            let doc = Doc::decode(&a.encode(Protocol::Bson)).unwrap();
            assert_eq!(BerthReply::from_bson(&doc).as_ref(), Some(a));
        }
    }
}
