//! HotPocket's `ledger_query` on the user port (hpcore `src/msg/json/usrmsg_json.cpp`,
//! `src/msg/bson/usrmsg_bson.cpp`, `src/ledger/ledger_query.cpp`), with Berth's additive
//! range filter (`filter_by: "seq_no_range"`) and paging field (`next_seq_no`).
//!
//! Request: `{type: "ledger_query", id, filter_by: "seq_no", params: {seq_no}, include:
//! ["inputs", "outputs"]}` (`raw_inputs` / `raw_outputs` are accepted as the same). Reply:
//! `{type: "ledger_query_result", reply_for, error: null | code, results: [record…]}` where a
//! record is `{seq_no, timestamp, hash, prev_hash, state_hash, config_hash, user_hash,
//! input_hash, output_hash, inputs?: [{pubkey, hash, nonce, blob}], outputs?: [{pubkey, hash,
//! blobs: […]}]}`. Binary fields are hex in JSON mode and BSON binary in BSON mode.

use serde::{Deserialize, Serialize};

use super::bson::{Bson, Doc};

/// hpcore's only filter.
pub const FILTER_SEQ_NO: &str = "seq_no";
/// Berth's range filter: `params: {from, to}` (inclusive), answered a page at a time.
pub const FILTER_SEQ_NO_RANGE: &str = "seq_no_range";

/// Error codes of a `ledger_query_result`.
pub mod error {
    /// The node could not read its record.
    pub const EXEC_FAILURE: &str = "exec_failure";
    /// The ledgers asked for are older than the node keeps (`ledger.retention`).
    pub const PRUNED: &str = "pruned";
    /// The user asked faster than the node answers queries.
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// A ledger query: ledgers `from..=to` (one for hpcore's `seq_no` filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerQuery {
    pub id: String,
    pub from: u64,
    pub to: u64,
    /// Whether the filter was Berth's range (answers may then carry `next_seq_no`).
    pub range: bool,
    pub inputs: bool,
    pub outputs: bool,
}

/// One input of a ledger, in consensus order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    #[serde(with = "hex_bytes")]
    pub pubkey: Vec<u8>,
    /// blake3 of the user's signature.
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
    pub nonce: u64,
    /// The input as the contract received it.
    #[serde(with = "hex_bytes")]
    pub blob: Vec<u8>,
}

/// One user's outputs of a ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    #[serde(with = "hex_bytes")]
    pub pubkey: Vec<u8>,
    /// `blake3(pubkey ‖ outputs…)`.
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
    #[serde(with = "hex_list")]
    pub blobs: Vec<Vec<u8>>,
}

/// One ledger as `ledger_query` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRecord {
    pub seq_no: u64,
    pub timestamp: u64,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub state_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub config_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub user_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub input_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub output_hash: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<InputRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputRecord>>,
}

/// The answer to a [`LedgerQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerQueryResult {
    pub reply_for: String,
    pub error: Option<String>,
    pub results: Vec<LedgerRecord>,
    /// Berth: the first ledger of the asked range this page left out (ask again from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq_no: Option<u64>,
}

/// A downloaded history, as `berth audit` hands it to `hotpocket replay` (one JSON
/// document): what the node announced (contract id, UNL) and its ledgers in order, each with
/// its raw inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFile {
    pub contract_id: String,
    /// `ed…` keys, as the node's `stat` listed them.
    pub unl: Vec<String>,
    pub ledgers: Vec<LedgerRecord>,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

mod hex_list {
    pub fn serialize<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts: Vec<String> = serde::Deserialize::deserialize(d)?;
        texts
            .iter()
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// The JSON-mode request fields after `type`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryJson {
    pub id: String,
    pub filter_by: String,
    pub params: serde_json::Value,
    pub include: Vec<String>,
}

fn includes<'a>(items: impl Iterator<Item = &'a str>) -> (bool, bool) {
    let (mut inputs, mut outputs) = (false, false);
    for item in items {
        match item {
            "inputs" | "raw_inputs" => inputs = true,
            "outputs" | "raw_outputs" => outputs = true,
            _ => {}
        }
    }
    (inputs, outputs)
}

impl LedgerQuery {
    /// From the JSON fields; None when malformed (hpcore answers `bad_msg_format`).
    pub fn from_json(q: QueryJson) -> Option<LedgerQuery> {
        let num = |k: &str| q.params.get(k).and_then(serde_json::Value::as_u64);
        let (inputs, outputs) = includes(q.include.iter().map(String::as_str));
        LedgerQuery::checked(&q.id, &q.filter_by, num, inputs, outputs)
    }

    fn checked(
        id: &str,
        filter_by: &str,
        num: impl Fn(&str) -> Option<u64>,
        inputs: bool,
        outputs: bool,
    ) -> Option<LedgerQuery> {
        if id.is_empty() {
            return None;
        }
        let (from, to, range) = match filter_by {
            FILTER_SEQ_NO => {
                let seq = num("seq_no")?;
                (seq, seq, false)
            }
            FILTER_SEQ_NO_RANGE => (num("from")?, num("to")?, true),
            _ => return None,
        };
        if to < from {
            return None;
        }
        Some(LedgerQuery {
            id: id.to_owned(),
            from,
            to,
            range,
            inputs,
            outputs,
        })
    }

    /// From a BSON document; None when malformed.
    pub fn from_bson(doc: &Doc) -> Option<LedgerQuery> {
        let id = doc.get("id")?.as_str()?;
        let filter_by = doc.get("filter_by")?.as_str()?;
        let Some(Bson::Document(params)) = doc.get("params") else {
            return None;
        };
        let Some(Bson::Array(include)) = doc.get("include") else {
            return None;
        };
        let (inputs, outputs) = includes(include.iter().filter_map(Bson::as_str));
        let num = |k: &str| params.get(k).and_then(Bson::as_u64);
        LedgerQuery::checked(id, filter_by, num, inputs, outputs)
    }

    fn filter(&self) -> (&'static str, Vec<(&'static str, u64)>) {
        if self.range {
            (
                FILTER_SEQ_NO_RANGE,
                vec![("from", self.from), ("to", self.to)],
            )
        } else {
            (FILTER_SEQ_NO, vec![("seq_no", self.from)])
        }
    }

    fn include(&self) -> Vec<&'static str> {
        let mut list = Vec::new();
        if self.inputs {
            list.push("inputs");
        }
        if self.outputs {
            list.push("outputs");
        }
        list
    }

    /// The JSON-mode message.
    pub fn to_json(&self) -> serde_json::Value {
        let (filter_by, params) = self.filter();
        let params: serde_json::Map<String, serde_json::Value> = params
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        serde_json::json!({
            "type": "ledger_query",
            "id": self.id,
            "filter_by": filter_by,
            "params": params,
            "include": self.include(),
        })
    }

    /// The BSON-mode message.
    pub fn to_bson(&self) -> Doc {
        let (filter_by, params) = self.filter();
        let mut p = Doc::new();
        for (k, v) in params {
            p = p.with(k, Bson::Int64(v as i64));
        }
        Doc::new()
            .with("type", Bson::String("ledger_query".into()))
            .with("id", Bson::String(self.id.clone()))
            .with("filter_by", Bson::String(filter_by.into()))
            .with("params", Bson::Document(p))
            .with(
                "include",
                Bson::Array(
                    self.include()
                        .into_iter()
                        .map(|s| Bson::String(s.into()))
                        .collect(),
                ),
            )
    }
}

impl LedgerRecord {
    /// Bytes this record adds to a reply, roughly (for the reply's byte budget).
    pub fn weight(&self) -> usize {
        let inputs: usize = self
            .inputs
            .iter()
            .flatten()
            .map(|i| i.blob.len() + 80)
            .sum();
        let outputs: usize = self
            .outputs
            .iter()
            .flatten()
            .map(|o| o.blobs.iter().map(|b| b.len() + 8).sum::<usize>() + 80)
            .sum();
        300 + inputs + outputs
    }

    fn to_bson(&self) -> Bson {
        let bin = |v: &Vec<u8>| Bson::Binary(v.clone());
        let mut doc = Doc::new()
            .with("seq_no", Bson::Int64(self.seq_no as i64))
            .with("timestamp", Bson::Int64(self.timestamp as i64))
            .with("hash", bin(&self.hash))
            .with("prev_hash", bin(&self.prev_hash))
            .with("state_hash", bin(&self.state_hash))
            .with("config_hash", bin(&self.config_hash))
            .with("user_hash", bin(&self.user_hash))
            .with("input_hash", bin(&self.input_hash))
            .with("output_hash", bin(&self.output_hash));
        if let Some(inputs) = &self.inputs {
            let list = inputs
                .iter()
                .map(|i| {
                    Bson::Document(
                        Doc::new()
                            .with("pubkey", bin(&i.pubkey))
                            .with("hash", bin(&i.hash))
                            .with("nonce", Bson::Int64(i.nonce as i64))
                            .with("blob", bin(&i.blob)),
                    )
                })
                .collect();
            doc = doc.with("inputs", Bson::Array(list));
        }
        if let Some(outputs) = &self.outputs {
            let list = outputs
                .iter()
                .map(|o| {
                    Bson::Document(
                        Doc::new()
                            .with("pubkey", bin(&o.pubkey))
                            .with("hash", bin(&o.hash))
                            .with("blobs", Bson::Array(o.blobs.iter().map(bin).collect())),
                    )
                })
                .collect();
            doc = doc.with("outputs", Bson::Array(list));
        }
        Bson::Document(doc)
    }

    fn from_bson(doc: &Doc) -> Option<LedgerRecord> {
        let bytes = |d: &Doc, k: &str| d.get(k).and_then(Bson::as_bytes).map(<[u8]>::to_vec);
        let docs = |k: &str| match doc.get(k) {
            Some(Bson::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|i| match i {
                        Bson::Document(d) => Some(d.clone()),
                        _ => None,
                    })
                    .collect::<Vec<Doc>>(),
            ),
            _ => None,
        };
        let inputs = match docs("inputs") {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|d| {
                        Some(InputRecord {
                            pubkey: bytes(d, "pubkey")?,
                            hash: bytes(d, "hash")?,
                            nonce: d.get("nonce")?.as_u64()?,
                            blob: bytes(d, "blob")?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
        };
        let outputs = match docs("outputs") {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|d| {
                        let Some(Bson::Array(blobs)) = d.get("blobs") else {
                            return None;
                        };
                        Some(OutputRecord {
                            pubkey: bytes(d, "pubkey")?,
                            hash: bytes(d, "hash")?,
                            blobs: blobs
                                .iter()
                                .map(|b| b.as_bytes().map(<[u8]>::to_vec))
                                .collect::<Option<Vec<_>>>()?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
        };
        Some(LedgerRecord {
            seq_no: doc.get("seq_no")?.as_u64()?,
            timestamp: doc.get("timestamp")?.as_u64()?,
            hash: bytes(doc, "hash")?,
            prev_hash: bytes(doc, "prev_hash")?,
            state_hash: bytes(doc, "state_hash")?,
            config_hash: bytes(doc, "config_hash")?,
            user_hash: bytes(doc, "user_hash")?,
            input_hash: bytes(doc, "input_hash")?,
            output_hash: bytes(doc, "output_hash")?,
            inputs,
            outputs,
        })
    }
}

impl LedgerQueryResult {
    /// The BSON-mode message.
    pub fn to_bson(&self) -> Doc {
        let mut doc = Doc::new()
            .with("type", Bson::String("ledger_query_result".into()))
            .with("reply_for", Bson::String(self.reply_for.clone()))
            .with("error", self.error.clone().map_or(Bson::Null, Bson::String))
            .with(
                "results",
                Bson::Array(self.results.iter().map(LedgerRecord::to_bson).collect()),
            );
        if let Some(next) = self.next_seq_no {
            doc = doc.with("next_seq_no", Bson::Int64(next as i64));
        }
        doc
    }

    /// From a BSON document; None when malformed.
    pub fn from_bson(doc: &Doc) -> Option<LedgerQueryResult> {
        let Some(Bson::Array(results)) = doc.get("results") else {
            return None;
        };
        Some(LedgerQueryResult {
            reply_for: doc.get("reply_for")?.as_str()?.to_owned(),
            error: doc.get("error").and_then(Bson::as_str).map(str::to_owned),
            results: results
                .iter()
                .map(|r| match r {
                    Bson::Document(d) => LedgerRecord::from_bson(d),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            next_seq_no: doc.get("next_seq_no").and_then(Bson::as_u64),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record() -> LedgerRecord {
        LedgerRecord {
            seq_no: 7,
            timestamp: 1_700_000_000_000,
            hash: vec![1; 32],
            prev_hash: vec![2; 32],
            state_hash: vec![3; 32],
            config_hash: vec![4; 32],
            user_hash: vec![5; 32],
            input_hash: vec![6; 32],
            output_hash: vec![7; 32],
            inputs: Some(vec![InputRecord {
                pubkey: vec![0xed; 33],
                hash: vec![8; 32],
                nonce: 42,
                blob: b"incr a".to_vec(),
            }]),
            outputs: Some(vec![OutputRecord {
                pubkey: vec![0xed; 33],
                hash: vec![9; 32],
                blobs: vec![b"1".to_vec(), Vec::new()],
            }]),
        }
    }

    #[test]
    fn a_result_survives_both_protocols() {
        let result = LedgerQueryResult {
            reply_for: "q1".into(),
            error: None,
            results: vec![record()],
            next_seq_no: Some(8),
        };
        let json = serde_json::to_vec(&result).unwrap();
        assert_eq!(
            serde_json::from_slice::<LedgerQueryResult>(&json).unwrap(),
            result
        );
        let bson = result.to_bson().encode();
        let doc = Doc::decode(&bson).unwrap();
        assert_eq!(LedgerQueryResult::from_bson(&doc).unwrap(), result);
    }

    #[test]
    fn hpcore_queries_and_the_range_extension_parse() {
        let q: QueryJson = serde_json::from_value(serde_json::json!({
            "id": "a", "filter_by": "seq_no", "params": {"seq_no": 5}, "include": ["raw_inputs"]
        }))
        .unwrap();
        let q = LedgerQuery::from_json(q).unwrap();
        assert_eq!(
            (q.from, q.to, q.inputs, q.outputs, q.range),
            (5, 5, true, false, false)
        );
        let range = LedgerQuery {
            id: "b".into(),
            from: 3,
            to: 9,
            range: true,
            inputs: true,
            outputs: true,
        };
        assert_eq!(LedgerQuery::from_bson(&range.to_bson()).unwrap(), range);
        let json: QueryJson = serde_json::from_value(range.to_json()).unwrap();
        assert_eq!(LedgerQuery::from_json(json).unwrap(), range);
        let bad: QueryJson = serde_json::from_value(serde_json::json!({
            "id": "c", "filter_by": "seq_no_range", "params": {"from": 9, "to": 3}, "include": []
        }))
        .unwrap();
        assert!(LedgerQuery::from_json(bad).is_none());
    }
}
