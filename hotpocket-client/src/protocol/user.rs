//! Messages of the user protocol (hpcore `src/msg/usrmsg_common.hpp`, `usrmsg_json.cpp`).
//!
//! Every message is a JSON object with a `type`. In JSON mode binary fields (hashes, keys,
//! signatures) are hex strings; inputs are strings; outputs are strings or, when the output
//! text is itself JSON, embedded JSON.

use serde::{Deserialize, Serialize};

/// Node → user, first message after the WebSocket opens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserChallenge {
    pub hp_version: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub contract_id: String,
    pub contract_version: String,
    /// 16 random bytes in hex; the user signs this ASCII string.
    pub challenge: String,
}

/// User → node, answer to [`UserChallenge`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserChallengeResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub sig: String,
    pub pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_challenge: Option<String>,
    pub protocol: String,
}

/// Node → user when the user sent a `server_challenge`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerChallengeResponse {
    #[serde(rename = "type")]
    pub kind: String,
    /// Signature of `server_challenge ‖ contract_id ‖ contract_version`.
    pub sig: String,
    pub pubkey: String,
    pub unl: Vec<String>,
}

/// The signed part of a `contract_input`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputContainer {
    pub input: String,
    pub nonce: u64,
    pub max_ledger_seq_no: u64,
}

/// Messages a user sends after the handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserRequest {
    ContractInput {
        /// The stringified [`InputContainer`]; the signature covers these bytes.
        input_container: String,
        sig: String,
    },
    ContractReadRequest {
        #[serde(default)]
        id: Option<String>,
        content: String,
    },
    Stat,
    Lcl,
    Subscription {
        channel: String,
        enabled: bool,
    },
    LedgerQuery(super::history::QueryJson),
}

/// Outcome of a submitted input.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputStatus {
    Accepted,
    Rejected,
}

/// Why an input was refused (hpcore `usrmsg_common.hpp`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    BadMsgFormat,
    InvalidMsgType,
    BadSig,
    MaxLedgerExpired,
    MaxLedgerOffsetExceeded,
    NonceExpired,
    AlreadySubmitted,
    RoundInputsOverflow,
}

impl RejectReason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadMsgFormat => "bad_msg_format",
            RejectReason::InvalidMsgType => "invalid_msg_type",
            RejectReason::BadSig => "bad_sig",
            RejectReason::MaxLedgerExpired => "max_ledger_expired",
            RejectReason::MaxLedgerOffsetExceeded => "max_ledger_offset_exceeded",
            RejectReason::NonceExpired => "nonce_expired",
            RejectReason::AlreadySubmitted => "already_submitted",
            RejectReason::RoundInputsOverflow => "round_inputs_overflow",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Messages the node sends after the handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeMessage {
    ContractInputStatus {
        status: InputStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<RejectReason>,
        /// blake3 of the input signature, hex.
        input_hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ledger_seq_no: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ledger_hash: Option<String>,
    },
    ContractOutput {
        ledger_seq_no: u64,
        ledger_hash: String,
        outputs: Vec<serde_json::Value>,
        output_hash: String,
        hash_tree: serde_json::Value,
        unl_sig: Vec<[String; 2]>,
    },
    ContractReadResponse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_for: Option<String>,
        content: serde_json::Value,
    },
    StatResponse {
        hp_version: String,
        ledger_seq_no: u64,
        ledger_hash: String,
        in_sync: bool,
        roundtime: u64,
        contract_execution_enabled: bool,
        read_requests_enabled: bool,
        is_full_history_node: bool,
        /// Berth: ledgers kept behind the last closed one; 0 (absent) keeps all.
        #[serde(default)]
        ledger_retention: u64,
        current_unl: Vec<String>,
        peers: Vec<String>,
        #[serde(default)]
        vote_status: String,
    },
    UnlChange {
        unl: Vec<String>,
    },
    LclResponse {
        ledger_seq_no: u64,
        ledger_hash: String,
    },
    LedgerQueryResult(super::history::LedgerQueryResult),
    /// Sent when a message cannot be understood at all (not a HotPocket message).
    Error {
        reason: String,
    },
}

/// hpcore's `is_json_string` rule: output text that already looks like JSON (object, array,
/// quoted string, number, boolean) is embedded as is; anything else becomes a JSON string.
pub fn output_to_json(output: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(output);
    let trimmed = text.as_ref();
    let looks_json = !trimmed.is_empty()
        && (trimmed.starts_with('{') && trimmed.ends_with('}')
            || trimmed.starts_with('[') && trimmed.ends_with(']')
            || trimmed.len() >= 2 && trimmed.starts_with('"') && trimmed.ends_with('"')
            || trimmed == "true"
            || trimmed == "false"
            || is_plain_number(trimmed));
    if looks_json {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed) {
            return value;
        }
    }
    serde_json::Value::String(text.into_owned())
}

fn is_plain_number(text: &str) -> bool {
    let mut dot = false;
    for c in text.chars() {
        match c {
            '0'..='9' => {}
            '.' if !dot => dot = true,
            _ => return false,
        }
    }
    true
}

/// The inverse of [`output_to_json`] as a client sees it: strings give their text, anything
/// else its JSON text.
pub fn json_to_output(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// The message encoding chosen at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Bson,
}

impl Protocol {
    /// Parses the handshake's `protocol` field.
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "json" => Some(Protocol::Json),
            "bson" => Some(Protocol::Bson),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Bson => "bson",
        }
    }
}

/// A user → node request after the handshake, with raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Input {
        container: Vec<u8>,
        sig: Vec<u8>,
    },
    Read {
        id: Option<String>,
        content: Vec<u8>,
    },
    Stat,
    Lcl,
    Subscription,
    LedgerQuery(super::history::LedgerQuery),
    /// A Berth extension (`berth_…`, see [`super::anchor`]).
    Berth(super::anchor::BerthRequest),
}

/// The signed container's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedContainer {
    pub input: Vec<u8>,
    pub nonce: u64,
    pub max_ledger_seq_no: u64,
}

/// A node → user message with raw bytes; encoded per protocol at the edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    InputStatus {
        status: InputStatus,
        reason: Option<RejectReason>,
        input_hash: Vec<u8>,
        ledger: Option<(u64, Vec<u8>)>,
    },
    Output {
        ledger_seq_no: u64,
        ledger_hash: Vec<u8>,
        outputs: Vec<Vec<u8>>,
        output_hash: Vec<u8>,
        /// All users' output hashes, this user's as None.
        hash_tree: Vec<Option<Vec<u8>>>,
        /// (0xED ‖ pubkey, signature of the root) per UNL node.
        unl_sig: Vec<(Vec<u8>, Vec<u8>)>,
    },
    ReadResponse {
        reply_for: Option<String>,
        content: Vec<u8>,
    },
    Stat {
        ledger_seq_no: u64,
        ledger_hash: Vec<u8>,
        roundtime: u64,
        contract_execution_enabled: bool,
        /// 0xED ‖ pubkey of each UNL node.
        unl: Vec<Vec<u8>>,
        /// Whether the node follows the UNL's ledgers.
        in_sync: bool,
        /// Why not, or what the last round said (`vote_status`).
        vote_status: String,
        /// `host:port` of each connected peer.
        peers: Vec<String>,
        /// Ledgers kept behind the last closed one (`ledger.retention`); 0 keeps all.
        ledger_retention: u64,
    },
    /// The UNL changed (a `patch.cfg` reached consensus).
    UnlChange {
        /// 0xED ‖ pubkey of each UNL node.
        unl: Vec<Vec<u8>>,
    },
    Lcl {
        ledger_seq_no: u64,
        ledger_hash: Vec<u8>,
    },
    LedgerQueryResult(super::history::LedgerQueryResult),
    /// A Berth extension's answer (see [`super::anchor`]).
    Berth(super::anchor::BerthReply),
}

fn ed_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap_or_default()
}

use super::bson::{Bson, Doc};

impl Reply {
    /// Encodes for the wire.
    pub fn encode(&self, protocol: Protocol) -> Vec<u8> {
        if let Reply::Berth(b) = self {
            return b.encode(protocol);
        }
        match protocol {
            Protocol::Json => serde_json::to_vec(&self.to_json()).unwrap_or_default(),
            Protocol::Bson => self.to_bson().encode(),
        }
    }

    /// The JSON-mode message.
    pub fn to_json(&self) -> serde_json::Value {
        if let Reply::Berth(b) = self {
            return b.to_json();
        }
        serde_json::to_value(self.hp_json()).unwrap_or_default()
    }

    fn hp_json(&self) -> NodeMessage {
        match self {
            Reply::InputStatus {
                status,
                reason,
                input_hash,
                ledger,
            } => NodeMessage::ContractInputStatus {
                status: *status,
                reason: *reason,
                input_hash: hex::encode(input_hash),
                ledger_seq_no: ledger.as_ref().map(|l| l.0),
                ledger_hash: ledger.as_ref().map(|l| hex::encode(&l.1)),
            },
            Reply::Output {
                ledger_seq_no,
                ledger_hash,
                outputs,
                output_hash,
                hash_tree,
                unl_sig,
            } => NodeMessage::ContractOutput {
                ledger_seq_no: *ledger_seq_no,
                ledger_hash: hex::encode(ledger_hash),
                outputs: outputs.iter().map(|o| output_to_json(o)).collect(),
                output_hash: hex::encode(output_hash),
                hash_tree: serde_json::Value::Array(
                    hash_tree
                        .iter()
                        .map(|h| {
                            h.as_ref()
                                .map_or(serde_json::Value::Null, |h| hex::encode(h).into())
                        })
                        .collect(),
                ),
                unl_sig: unl_sig
                    .iter()
                    .map(|(k, s)| [ed_hex(k), hex::encode(s)])
                    .collect(),
            },
            Reply::ReadResponse { reply_for, content } => NodeMessage::ContractReadResponse {
                reply_for: reply_for.clone(),
                content: output_to_json(content),
            },
            Reply::Stat {
                ledger_seq_no,
                ledger_hash,
                roundtime,
                contract_execution_enabled,
                unl,
                in_sync,
                vote_status,
                peers,
                ledger_retention,
            } => NodeMessage::StatResponse {
                hp_version: super::HP_VERSION.to_owned(),
                ledger_seq_no: *ledger_seq_no,
                ledger_hash: hex::encode(ledger_hash),
                in_sync: *in_sync,
                roundtime: *roundtime,
                contract_execution_enabled: *contract_execution_enabled,
                read_requests_enabled: true,
                is_full_history_node: *ledger_retention == 0,
                ledger_retention: *ledger_retention,
                current_unl: unl.iter().map(|k| ed_hex(k)).collect(),
                peers: peers.clone(),
                vote_status: vote_status.clone(),
            },
            Reply::UnlChange { unl } => NodeMessage::UnlChange {
                unl: unl.iter().map(|k| ed_hex(k)).collect(),
            },
            Reply::Lcl {
                ledger_seq_no,
                ledger_hash,
            } => NodeMessage::LclResponse {
                ledger_seq_no: *ledger_seq_no,
                ledger_hash: hex::encode(ledger_hash),
            },
            Reply::LedgerQueryResult(r) => NodeMessage::LedgerQueryResult(r.clone()),
            // Encoded by `to_json` before this is reached.
            Reply::Berth(_) => NodeMessage::Error {
                reason: "berth extension".into(),
            },
        }
    }

    /// The BSON-mode message (hpcore `usrmsg_bson.cpp` layout).
    pub fn to_bson(&self) -> Doc {
        let ty = |t: &str| Doc::new().with("type", Bson::String(t.to_owned()));
        let seq = |n: u64| Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX));
        match self {
            Reply::InputStatus {
                status,
                reason,
                input_hash,
                ledger,
            } => {
                let status = match status {
                    InputStatus::Accepted => "accepted",
                    InputStatus::Rejected => "rejected",
                };
                let mut doc =
                    ty("contract_input_status").with("status", Bson::String(status.to_owned()));
                if let Some(reason) = reason {
                    doc = doc.with("reason", Bson::String(reason.as_str().to_owned()));
                }
                doc = doc.with("input_hash", Bson::Binary(input_hash.clone()));
                if let Some((n, hash)) = ledger {
                    doc = doc
                        .with("ledger_seq_no", seq(*n))
                        .with("ledger_hash", Bson::Binary(hash.clone()));
                }
                doc
            }
            Reply::Output {
                ledger_seq_no,
                ledger_hash,
                outputs,
                output_hash,
                hash_tree,
                unl_sig,
            } => ty("contract_output")
                .with("ledger_seq_no", seq(*ledger_seq_no))
                .with("ledger_hash", Bson::Binary(ledger_hash.clone()))
                .with(
                    "outputs",
                    Bson::Array(outputs.iter().map(|o| Bson::Binary(o.clone())).collect()),
                )
                .with("output_hash", Bson::Binary(output_hash.clone()))
                .with(
                    "hash_tree",
                    Bson::Array(
                        hash_tree
                            .iter()
                            .map(|h| h.clone().map_or(Bson::Null, Bson::Binary))
                            .collect(),
                    ),
                )
                .with(
                    "unl_sig",
                    Bson::Array(
                        unl_sig
                            .iter()
                            .map(|(k, s)| {
                                Bson::Array(vec![Bson::Binary(k.clone()), Bson::Binary(s.clone())])
                            })
                            .collect(),
                    ),
                ),
            Reply::ReadResponse { reply_for, content } => {
                let mut doc = ty("contract_read_response");
                if let Some(id) = reply_for {
                    doc = doc.with("reply_for", Bson::String(id.clone()));
                }
                doc.with("content", Bson::Binary(content.clone()))
            }
            Reply::Stat {
                ledger_seq_no,
                ledger_hash,
                roundtime,
                contract_execution_enabled,
                unl,
                in_sync,
                vote_status,
                peers,
                ledger_retention,
            } => ty("stat_response")
                .with("hp_version", Bson::String(super::HP_VERSION.to_owned()))
                .with("ledger_seq_no", seq(*ledger_seq_no))
                .with("ledger_hash", Bson::Binary(ledger_hash.clone()))
                .with("roundtime", seq(*roundtime))
                .with(
                    "contract_execution_enabled",
                    Bson::Bool(*contract_execution_enabled),
                )
                .with("read_requests_enabled", Bson::Bool(true))
                .with("is_full_history_node", Bson::Bool(*ledger_retention == 0))
                .with("ledger_retention", seq(*ledger_retention))
                .with(
                    "current_unl",
                    Bson::Array(unl.iter().map(|k| Bson::Binary(k.clone())).collect()),
                )
                .with("in_sync", Bson::Bool(*in_sync))
                .with("vote_status", Bson::String(vote_status.clone()))
                .with(
                    "peers",
                    Bson::Array(peers.iter().map(|p| Bson::String(p.clone())).collect()),
                ),
            Reply::UnlChange { unl } => ty("unl_change").with(
                "unl",
                Bson::Array(unl.iter().map(|k| Bson::Binary(k.clone())).collect()),
            ),
            Reply::Lcl {
                ledger_seq_no,
                ledger_hash,
            } => ty("lcl_response")
                .with("ledger_seq_no", seq(*ledger_seq_no))
                .with("ledger_hash", Bson::Binary(ledger_hash.clone())),
            Reply::LedgerQueryResult(r) => r.to_bson(),
            Reply::Berth(b) => Doc::decode(&b.encode(Protocol::Bson)).unwrap_or_default(),
        }
    }

    /// Decodes a node message (client side); None for messages it does not know.
    pub fn decode(protocol: Protocol, bytes: &[u8]) -> Option<Reply> {
        match protocol {
            Protocol::Json => {
                let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
                match value.get("type").and_then(|t| t.as_str()) {
                    Some(k) if super::anchor::is_berth_type(k) => {
                        super::anchor::BerthReply::from_json(&value).map(Reply::Berth)
                    }
                    _ => Reply::from_json(serde_json::from_value(value).ok()?),
                }
            }
            Protocol::Bson => {
                let doc = Doc::decode(bytes).ok()?;
                match doc.get("type").and_then(Bson::as_str) {
                    Some(k) if super::anchor::is_berth_type(k) => {
                        super::anchor::BerthReply::from_bson(&doc).map(Reply::Berth)
                    }
                    _ => Reply::from_bson(&doc),
                }
            }
        }
    }

    fn from_json(msg: NodeMessage) -> Option<Reply> {
        Some(match msg {
            NodeMessage::ContractInputStatus {
                status,
                reason,
                input_hash,
                ledger_seq_no,
                ledger_hash,
            } => Reply::InputStatus {
                status,
                reason,
                input_hash: unhex(&input_hash),
                ledger: ledger_seq_no
                    .map(|n| (n, ledger_hash.as_deref().map(unhex).unwrap_or_default())),
            },
            NodeMessage::ContractOutput {
                ledger_seq_no,
                ledger_hash,
                outputs,
                output_hash,
                hash_tree,
                unl_sig,
            } => Reply::Output {
                ledger_seq_no,
                ledger_hash: unhex(&ledger_hash),
                outputs: outputs.iter().map(json_to_output).collect(),
                output_hash: unhex(&output_hash),
                hash_tree: hash_tree
                    .as_array()
                    .map(|a| a.iter().map(|h| h.as_str().map(unhex)).collect())
                    .unwrap_or_default(),
                unl_sig: unl_sig.iter().map(|[k, s]| (unhex(k), unhex(s))).collect(),
            },
            NodeMessage::ContractReadResponse { reply_for, content } => Reply::ReadResponse {
                reply_for,
                content: json_to_output(&content),
            },
            NodeMessage::StatResponse {
                ledger_seq_no,
                ledger_hash,
                roundtime,
                contract_execution_enabled,
                current_unl,
                in_sync,
                peers,
                vote_status,
                ledger_retention,
                ..
            } => Reply::Stat {
                ledger_retention,
                ledger_seq_no,
                ledger_hash: unhex(&ledger_hash),
                roundtime,
                contract_execution_enabled,
                unl: current_unl.iter().map(|k| unhex(k)).collect(),
                in_sync,
                vote_status,
                peers,
            },
            NodeMessage::UnlChange { unl } => Reply::UnlChange {
                unl: unl.iter().map(|k| unhex(k)).collect(),
            },
            NodeMessage::LclResponse {
                ledger_seq_no,
                ledger_hash,
            } => Reply::Lcl {
                ledger_seq_no,
                ledger_hash: unhex(&ledger_hash),
            },
            NodeMessage::LedgerQueryResult(r) => Reply::LedgerQueryResult(r),
            NodeMessage::Error { .. } => return None,
        })
    }

    fn from_bson(doc: &Doc) -> Option<Reply> {
        let bytes = |k: &str| doc.get(k).and_then(Bson::as_bytes).map(<[u8]>::to_vec);
        let num = |k: &str| doc.get(k).and_then(Bson::as_u64);
        let list = |k: &str| match doc.get(k) {
            Some(Bson::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        Some(match doc.get("type")?.as_str()? {
            "contract_input_status" => Reply::InputStatus {
                status: match doc.get("status")?.as_str()? {
                    "accepted" => InputStatus::Accepted,
                    _ => InputStatus::Rejected,
                },
                reason: doc.get("reason").and_then(Bson::as_str).and_then(|r| {
                    serde_json::from_value(serde_json::Value::String(r.to_owned())).ok()
                }),
                input_hash: bytes("input_hash").unwrap_or_default(),
                ledger: num("ledger_seq_no").map(|n| (n, bytes("ledger_hash").unwrap_or_default())),
            },
            "contract_output" => Reply::Output {
                ledger_seq_no: num("ledger_seq_no")?,
                ledger_hash: bytes("ledger_hash").unwrap_or_default(),
                outputs: list("outputs")
                    .iter()
                    .filter_map(|o| o.as_bytes().map(<[u8]>::to_vec))
                    .collect(),
                output_hash: bytes("output_hash").unwrap_or_default(),
                hash_tree: list("hash_tree")
                    .iter()
                    .map(|h| h.as_bytes().map(<[u8]>::to_vec))
                    .collect(),
                unl_sig: list("unl_sig")
                    .iter()
                    .filter_map(|pair| match pair {
                        Bson::Array(p) if p.len() == 2 => {
                            Some((p[0].as_bytes()?.to_vec(), p[1].as_bytes()?.to_vec()))
                        }
                        _ => None,
                    })
                    .collect(),
            },
            "contract_read_response" => Reply::ReadResponse {
                reply_for: doc
                    .get("reply_for")
                    .and_then(Bson::as_str)
                    .map(str::to_owned),
                content: bytes("content").unwrap_or_default(),
            },
            "stat_response" => Reply::Stat {
                ledger_retention: num("ledger_retention").unwrap_or(0),
                ledger_seq_no: num("ledger_seq_no")?,
                ledger_hash: bytes("ledger_hash").unwrap_or_default(),
                roundtime: num("roundtime").unwrap_or(0),
                contract_execution_enabled: matches!(
                    doc.get("contract_execution_enabled"),
                    Some(Bson::Bool(true))
                ),
                unl: list("current_unl")
                    .iter()
                    .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec))
                    .collect(),
                in_sync: matches!(doc.get("in_sync"), Some(Bson::Bool(true))),
                vote_status: doc
                    .get("vote_status")
                    .and_then(Bson::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                peers: list("peers")
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect(),
            },
            "unl_change" => Reply::UnlChange {
                unl: list("unl")
                    .iter()
                    .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec))
                    .collect(),
            },
            "lcl_response" => Reply::Lcl {
                ledger_seq_no: num("ledger_seq_no")?,
                ledger_hash: bytes("ledger_hash").unwrap_or_default(),
            },
            "ledger_query_result" => {
                Reply::LedgerQueryResult(super::history::LedgerQueryResult::from_bson(doc)?)
            }
            _ => return None,
        })
    }
}

const KNOWN_REQUESTS: [&str; 6] = [
    "contract_input",
    "contract_read_request",
    "stat",
    "lcl",
    "subscription",
    "ledger_query",
];

impl Request {
    /// Decodes a user request; the error is the reject reason to answer with.
    pub fn decode(protocol: Protocol, bytes: &[u8]) -> Result<Request, RejectReason> {
        match protocol {
            Protocol::Json => {
                let request: UserRequest = match serde_json::from_slice(bytes) {
                    Ok(r) => r,
                    Err(_) => {
                        // Tell an unknown type from a malformed message.
                        let value: serde_json::Value = serde_json::from_slice(bytes)
                            .map_err(|_| RejectReason::BadMsgFormat)?;
                        let kind = value.get("type").and_then(|t| t.as_str());
                        if kind.is_some_and(super::anchor::is_berth_type) {
                            return super::anchor::BerthRequest::from_json(&value)
                                .map(Request::Berth)
                                .ok_or(RejectReason::BadMsgFormat);
                        }
                        return Err(match kind {
                            Some(k) if !KNOWN_REQUESTS.contains(&k) => RejectReason::InvalidMsgType,
                            _ => RejectReason::BadMsgFormat,
                        });
                    }
                };
                Ok(match request {
                    UserRequest::ContractInput {
                        input_container,
                        sig,
                    } => Request::Input {
                        container: input_container.into_bytes(),
                        sig: unhex(&sig),
                    },
                    UserRequest::ContractReadRequest { id, content } => Request::Read {
                        id,
                        content: content.into_bytes(),
                    },
                    UserRequest::Stat => Request::Stat,
                    UserRequest::Lcl => Request::Lcl,
                    UserRequest::Subscription { .. } => Request::Subscription,
                    UserRequest::LedgerQuery(q) => Request::LedgerQuery(
                        super::history::LedgerQuery::from_json(q)
                            .ok_or(RejectReason::BadMsgFormat)?,
                    ),
                })
            }
            Protocol::Bson => {
                let doc = Doc::decode(bytes).map_err(|_| RejectReason::BadMsgFormat)?;
                let kind = doc
                    .get("type")
                    .and_then(Bson::as_str)
                    .ok_or(RejectReason::BadMsgFormat)?;
                let field = |k: &str| doc.get(k).and_then(Bson::as_bytes).map(<[u8]>::to_vec);
                match kind {
                    "contract_input" => Ok(Request::Input {
                        container: field("input_container").ok_or(RejectReason::BadMsgFormat)?,
                        sig: field("sig").ok_or(RejectReason::BadMsgFormat)?,
                    }),
                    "contract_read_request" => Ok(Request::Read {
                        id: doc.get("id").and_then(Bson::as_str).map(str::to_owned),
                        content: field("content").ok_or(RejectReason::BadMsgFormat)?,
                    }),
                    "stat" => Ok(Request::Stat),
                    "lcl" => Ok(Request::Lcl),
                    "subscription" => Ok(Request::Subscription),
                    "ledger_query" => super::history::LedgerQuery::from_bson(&doc)
                        .map(Request::LedgerQuery)
                        .ok_or(RejectReason::BadMsgFormat),
                    k if super::anchor::is_berth_type(k) => {
                        super::anchor::BerthRequest::from_bson(&doc)
                            .map(Request::Berth)
                            .ok_or(RejectReason::BadMsgFormat)
                    }
                    _ => Err(RejectReason::InvalidMsgType),
                }
            }
        }
    }

    /// Encodes a request (client side).
    pub fn encode(&self, protocol: Protocol) -> Vec<u8> {
        if let Request::Berth(b) = self {
            return b.encode(protocol);
        }
        match protocol {
            Protocol::Json => {
                let value = match self {
                    Request::Input { container, sig } => serde_json::json!({
                        "type": "contract_input",
                        "input_container": String::from_utf8_lossy(container),
                        "sig": hex::encode(sig),
                    }),
                    Request::Read { id, content } => serde_json::json!({
                        "type": "contract_read_request",
                        "id": id,
                        "content": String::from_utf8_lossy(content),
                    }),
                    Request::Stat => serde_json::json!({"type": "stat"}),
                    Request::Lcl => serde_json::json!({"type": "lcl"}),
                    Request::Subscription => {
                        serde_json::json!({"type": "subscription", "channel": "ledger_event", "enabled": false})
                    }
                    Request::LedgerQuery(q) => q.to_json(),
                    Request::Berth(_) => serde_json::Value::Null,
                };
                value.to_string().into_bytes()
            }
            Protocol::Bson => {
                let ty = |t: &str| Doc::new().with("type", Bson::String(t.to_owned()));
                let doc = match self {
                    Request::Input { container, sig } => ty("contract_input")
                        .with("input_container", Bson::Binary(container.clone()))
                        .with("sig", Bson::Binary(sig.clone())),
                    Request::Read { id, content } => {
                        let mut doc = ty("contract_read_request");
                        if let Some(id) = id {
                            doc = doc.with("id", Bson::String(id.clone()));
                        }
                        doc.with("content", Bson::Binary(content.clone()))
                    }
                    Request::Stat => ty("stat"),
                    Request::Lcl => ty("lcl"),
                    Request::Subscription => ty("subscription")
                        .with("channel", Bson::String("ledger_event".into()))
                        .with("enabled", Bson::Bool(false)),
                    Request::LedgerQuery(q) => q.to_bson(),
                    Request::Berth(_) => Doc::new(),
                };
                doc.encode()
            }
        }
    }
}

impl ParsedContainer {
    /// Parses the signed container of an input.
    pub fn decode(protocol: Protocol, bytes: &[u8]) -> Option<ParsedContainer> {
        match protocol {
            Protocol::Json => {
                let c: InputContainer = serde_json::from_slice(bytes).ok()?;
                Some(ParsedContainer {
                    input: c.input.into_bytes(),
                    nonce: c.nonce,
                    max_ledger_seq_no: c.max_ledger_seq_no,
                })
            }
            Protocol::Bson => {
                let doc = Doc::decode(bytes).ok()?;
                let input = match doc.get("input")? {
                    Bson::Binary(b) => b.clone(),
                    Bson::String(s) => s.clone().into_bytes(),
                    _ => return None,
                };
                Some(ParsedContainer {
                    input,
                    nonce: doc.get("nonce")?.as_u64()?,
                    max_ledger_seq_no: doc.get("max_ledger_seq_no")?.as_u64()?,
                })
            }
        }
    }

    /// Encodes a container (client side); JSON mode needs UTF-8 input.
    pub fn encode(&self, protocol: Protocol) -> Option<Vec<u8>> {
        match protocol {
            Protocol::Json => {
                let input = String::from_utf8(self.input.clone()).ok()?;
                let c = InputContainer {
                    input,
                    nonce: self.nonce,
                    max_ledger_seq_no: self.max_ledger_seq_no,
                };
                serde_json::to_vec(&c).ok()
            }
            Protocol::Bson => Some(
                Doc::new()
                    .with("input", Bson::Binary(self.input.clone()))
                    .with("nonce", Bson::Int64(i64::try_from(self.nonce).ok()?))
                    .with(
                        "max_ledger_seq_no",
                        Bson::Int64(i64::try_from(self.max_ledger_seq_no).ok()?),
                    )
                    .encode(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reject_reasons_use_hotpocket_spelling() {
        let text = serde_json::to_string(&RejectReason::MaxLedgerOffsetExceeded).unwrap();
        assert_eq!(text, "\"max_ledger_offset_exceeded\"");
        assert_eq!(
            RejectReason::RoundInputsOverflow.as_str(),
            "round_inputs_overflow"
        );
    }

    #[test]
    fn json_looking_outputs_are_embedded_and_text_stays_text() {
        assert_eq!(output_to_json(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(output_to_json(b"hello"), serde_json::json!("hello"));
        assert_eq!(output_to_json(b"42"), serde_json::json!(42));
        assert_eq!(output_to_json(b"{broken"), serde_json::json!("{broken"));
        assert_eq!(json_to_output(&serde_json::json!("hello")), b"hello");
    }

    #[test]
    fn replies_survive_both_encodings() {
        let reply = Reply::Output {
            ledger_seq_no: 9,
            ledger_hash: vec![1; 32],
            outputs: vec![b"hi".to_vec(), br#"{"a":1}"#.to_vec()],
            output_hash: vec![2; 32],
            hash_tree: vec![None, Some(vec![3; 32])],
            unl_sig: vec![(vec![0xED; 33], vec![4; 64])],
        };
        for protocol in [Protocol::Json, Protocol::Bson] {
            assert_eq!(
                Reply::decode(protocol, &reply.encode(protocol)).unwrap(),
                reply
            );
        }
        let bad = Request::decode(Protocol::Bson, b"junk").unwrap_err();
        assert_eq!(bad, RejectReason::BadMsgFormat);
    }

    #[test]
    fn requests_parse_by_type() {
        let msg: UserRequest =
            serde_json::from_str(r#"{"type":"contract_input","input_container":"{}","sig":"00"}"#)
                .unwrap();
        assert!(matches!(msg, UserRequest::ContractInput { .. }));
        let msg: UserRequest = serde_json::from_str(r#"{"type":"lcl"}"#).unwrap();
        assert_eq!(msg, UserRequest::Lcl);
    }
}
