//! A cluster's checkpoint on the XRP Ledger: the memo of a transaction from the cluster's
//! account (multi-signed by its nodes) naming one of the cluster's ledgers.
//!
//! `MemoType` `berth/checkpoint`, `MemoFormat` `application/json`, `MemoData` a payload
//! ([`crate::payload`], so with `"v": 1`):
//! `{"contract": "<contract id>", "seq": 120, "ledger": "<64 hex>", "state": "<64 hex>",
//!   "bundle": "<64 hex>"}`: the HotPocket ledger's sequence number, its hash, its state
//! hash, and the blake3 hash of the bundle installed at that ledger (zeros when none).
//! Hashes are lower-case hex, as HotPocket shows them.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memo::{Memo, MEMO_FORMAT};
use crate::payload::{self, PayloadError};

/// The `MemoType` of a checkpoint.
pub const CHECKPOINT_MEMO_TYPE: &str = "berth/checkpoint";

/// One checkpoint: what the nodes that sign it agree the cluster's ledger `seq` was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The HotPocket contract id (a UUID in the cluster's config), 1 to 64 characters.
    pub contract: String,
    pub seq: u64,
    #[serde(with = "hash_hex")]
    pub ledger: [u8; 32],
    #[serde(with = "hash_hex")]
    pub state: [u8; 32],
    #[serde(with = "hash_hex")]
    pub bundle: [u8; 32],
}

/// Why a memo is not a checkpoint.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("memo type `{0}` is not {CHECKPOINT_MEMO_TYPE}")]
    NotCheckpoint(String),
    #[error("{CHECKPOINT_MEMO_TYPE}: memo format `{0}` is not {MEMO_FORMAT}")]
    Format(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("{CHECKPOINT_MEMO_TYPE}: field `contract`: expected 1 to 64 characters, got {0}")]
    Contract(usize),
}

impl Checkpoint {
    /// The memo carrying this checkpoint.
    pub fn to_memo(&self) -> Memo {
        Memo {
            memo_type: CHECKPOINT_MEMO_TYPE.as_bytes().to_vec(),
            memo_format: MEMO_FORMAT.as_bytes().to_vec(),
            memo_data: payload::encode(self),
        }
    }

    /// Reads a checkpoint from a memo, checking its type, format, version and every field.
    pub fn from_memo(memo: &Memo) -> Result<Checkpoint, CheckpointError> {
        if memo.memo_type != CHECKPOINT_MEMO_TYPE.as_bytes() {
            return Err(CheckpointError::NotCheckpoint(
                String::from_utf8_lossy(&memo.memo_type)
                    .chars()
                    .take(64)
                    .collect(),
            ));
        }
        if memo.memo_format != MEMO_FORMAT.as_bytes() {
            return Err(CheckpointError::Format(
                String::from_utf8_lossy(&memo.memo_format)
                    .chars()
                    .take(64)
                    .collect(),
            ));
        }
        let cp: Checkpoint = payload::decode(CHECKPOINT_MEMO_TYPE, &memo.memo_data)?;
        if cp.contract.is_empty() || cp.contract.len() > 64 {
            return Err(CheckpointError::Contract(cp.contract.len()));
        }
        Ok(cp)
    }
}

mod hash_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if text.len() != 64 || hex::decode_to_slice(&text, &mut out).is_err() {
            return Err(serde::de::Error::custom(format!(
                "expected 64 hex digits, got {} characters",
                text.len()
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            contract: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
            seq: 120,
            ledger: [1; 32],
            state: [2; 32],
            bundle: [0; 32],
        }
    }

    #[test]
    fn round_trips_and_fits_the_memo_budget() {
        let memo = sample().to_memo();
        assert!(memo.serialized_len() < crate::memo::MEMOS_LIMIT / 2);
        assert_eq!(Checkpoint::from_memo(&memo).unwrap(), sample());
        let hex = memo.to_hex();
        let back = Memo::from_hex(
            Some(&hex.memo_type),
            Some(&hex.memo_format),
            Some(&hex.memo_data),
        )
        .unwrap();
        assert_eq!(Checkpoint::from_memo(&back).unwrap(), sample());
    }

    #[test]
    fn bad_memos_name_what_is_wrong() {
        let mut memo = sample().to_memo();
        memo.memo_type = b"berth/heartbeat".to_vec();
        assert!(Checkpoint::from_memo(&memo)
            .unwrap_err()
            .to_string()
            .contains("berth/heartbeat"));
        let mut memo = sample().to_memo();
        let zeros = "0".repeat(64);
        memo.memo_data = format!(
            r#"{{"v":1,"contract":"c","seq":1,"ledger":"00","state":"{zeros}","bundle":"{zeros}"}}"#
        )
        .into_bytes();
        let err = Checkpoint::from_memo(&memo).unwrap_err().to_string();
        assert!(err.contains("ledger"), "{err}");
        let mut memo = sample().to_memo();
        memo.memo_data = br#"{"v":2}"#.to_vec();
        assert!(Checkpoint::from_memo(&memo).is_err());
    }
}
