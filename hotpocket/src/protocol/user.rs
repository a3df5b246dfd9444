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
        current_unl: Vec<String>,
        peers: Vec<String>,
    },
    LclResponse {
        ledger_seq_no: u64,
        ledger_hash: String,
    },
    /// Sent when a message cannot be understood at all (not a HotPocket message).
    Error { reason: String },
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
    fn requests_parse_by_type() {
        let msg: UserRequest =
            serde_json::from_str(r#"{"type":"contract_input","input_container":"{}","sig":"00"}"#)
                .unwrap();
        assert!(matches!(msg, UserRequest::ContractInput { .. }));
        let msg: UserRequest = serde_json::from_str(r#"{"type":"lcl"}"#).unwrap();
        assert_eq!(msg, UserRequest::Lcl);
    }
}
