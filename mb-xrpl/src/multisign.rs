//! Multi-signed transactions of an account whose keys are elsewhere (a cluster's account,
//! signed by its nodes):
//!
//! 1. [`prepare`] fills `Sequence` (the account's, from the current ledger), `Fee` (the
//!    base fee × (1 + signers), rippled's minimum for a multi-signed transaction, refused
//!    above the cap), `LastLedgerSequence` and an empty `SigningPubKey`, and gives the
//!    transaction's binary form for the signers;
//! 2. the caller gathers `Signer` entries (each over that binary form) until the quorum;
//! 3. [`Unsigned::combine`] sorts them into `Signers` and [`submit_and_wait`] submits the
//!    result with `submit_multisigned`, resubmitting its blob until it is validated or its
//!    `LastLedgerSequence` passed ([`SubmitError::Expired`]: prepare again).

use std::time::Duration;

use berth_xrpl_core::codec::{StObject, Value as StValue};
use berth_xrpl_core::tx::SignedTx as CoreSignedTx;
use serde_json::{json, Value};
use tracing::warn;

use crate::client::{Client, ClientError};
use crate::submit::{
    account_sequence, submit_answer, tx_status, wait_for_ledger, Step, SubmitError, TxStatus,
    Validated, TRANSIENT_RPC_ERRORS,
};
use crate::tx::{json_drops, json_u32};

/// A transaction ready for its signers.
#[derive(Debug, Clone)]
pub struct Unsigned {
    pub tx: StObject,
    pub account: String,
    pub sequence: u32,
    pub fee_drops: u64,
    pub last_ledger_sequence: u32,
}

/// A multi-signed transaction.
#[derive(Debug, Clone)]
pub struct MultiSigned {
    pub hash: String,
    pub blob: String,
    pub tx_json: Value,
    pub last_ledger_sequence: u32,
}

impl Unsigned {
    /// The bytes each signer signs for (with `SMT\0` and its account in front and behind).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.tx.to_bytes()
    }

    /// Puts the signers' entries in, sorted by account.
    pub fn combine(&self, signers: Vec<StObject>) -> MultiSigned {
        let mut tx = self.tx.clone();
        let CoreSignedTx { blob, hash } = berth_xrpl_core::tx::multisign(&mut tx, signers);
        MultiSigned {
            hash: hex::encode_upper(hash),
            blob: hex::encode_upper(blob),
            tx_json: tx.to_json(),
            last_ledger_sequence: self.last_ledger_sequence,
        }
    }
}

/// Fills a multi-signed transaction of `tx_json`'s `Account` for `signers` signatures.
/// `max_fee_drops` caps the fee; `last_ledger_offset` ledgers after the current one it
/// expires.
pub async fn prepare(
    client: &Client,
    tx_json: Value,
    signers: usize,
    max_fee_drops: u64,
    last_ledger_offset: u32,
) -> Result<Unsigned, SubmitError> {
    let Value::Object(mut fields) = tx_json else {
        return Err(SubmitError::BadTransaction {
            detail: "expected a JSON object".into(),
        });
    };
    let account = fields
        .get("Account")
        .and_then(Value::as_str)
        .ok_or_else(|| SubmitError::BadTransaction {
            detail: "no Account".into(),
        })?
        .to_owned();
    let sequence = match fields.get("Sequence").and_then(json_u32) {
        Some(s) => s,
        None => account_sequence(client, &account).await?,
    };
    let fee_info = client.request("fee", Value::Null).await?;
    let base = fee_info
        .pointer("/drops/base_fee")
        .and_then(json_drops)
        .ok_or_else(|| client.bad_response("fee", "no drops.base_fee"))?;
    let open = fee_info
        .pointer("/drops/open_ledger_fee")
        .and_then(json_drops)
        .unwrap_or(base);
    let fee_drops = base.max(open).saturating_mul(1 + signers as u64);
    if fee_drops > max_fee_drops {
        return Err(SubmitError::FeeAboveCap {
            account,
            fee_drops,
            cap: max_fee_drops,
        });
    }
    let current = fee_info
        .get("ledger_current_index")
        .and_then(json_u32)
        .ok_or_else(|| client.bad_response("fee", "no ledger_current_index"))?;
    let last_ledger_sequence = current.saturating_add(last_ledger_offset);
    fields.insert("Sequence".into(), json!(sequence));
    fields.insert("Fee".into(), json!(fee_drops.to_string()));
    fields.insert("LastLedgerSequence".into(), json!(last_ledger_sequence));
    fields.insert("SigningPubKey".into(), json!(""));
    let tx =
        StObject::from_json(&Value::Object(fields)).map_err(|e| SubmitError::BadTransaction {
            detail: e.to_string(),
        })?;
    Ok(Unsigned {
        tx,
        account,
        sequence,
        fee_drops,
        last_ledger_sequence,
    })
}

/// One signer's entry from its three fields (as a node gives them).
pub fn signer_entry(
    account: &str,
    signing_pub_key_hex: &str,
    txn_signature_hex: &str,
) -> Option<StObject> {
    let mut s = StObject::new();
    s.set(
        "Account",
        StValue::AccountId(berth_xrpl_core::decode_account_id(account).ok()?),
    );
    s.set(
        "SigningPubKey",
        StValue::Blob(hex::decode(signing_pub_key_hex).ok()?),
    );
    s.set(
        "TxnSignature",
        StValue::Blob(hex::decode(txn_signature_hex).ok()?),
    );
    Some(s)
}

/// Submits a multi-signed transaction and waits until it is validated (with any result; a
/// `tec` is validated too) or can never be.
pub async fn submit_and_wait(
    client: &Client,
    tx: &MultiSigned,
    poll: Duration,
) -> Result<Validated, SubmitError> {
    let mut events = client.events();
    client.subscribe_ledger().await?;
    let mut last_result = "(not submitted)".to_owned();
    let mut first = true;
    loop {
        let (method, params) = match first {
            true => ("submit_multisigned", json!({"tx_json": tx.tx_json})),
            false => ("submit", json!({"tx_blob": tx.blob})),
        };
        first = false;
        match client.request(method, params).await {
            Ok(r) => match submit_answer(client, &r, &tx.hash)? {
                Step::Fail(e) => return Err(e),
                Step::RaiseFee(r) | Step::Wait(r) | Step::Check(r) => last_result = r,
            },
            Err(ClientError::ConnectionLost { .. } | ClientError::Timeout { .. }) => {}
            Err(ClientError::Rpc { error, .. })
                if TRANSIENT_RPC_ERRORS.contains(&error.as_str()) =>
            {
                warn!(hash = %tx.hash, %error, "server busy, will resubmit");
            }
            Err(ClientError::Rpc { error, message, .. }) => {
                return Err(SubmitError::Rejected {
                    hash: tx.hash.clone(),
                    result: error,
                    message,
                })
            }
            Err(e) => return Err(e.into()),
        }
        loop {
            match tx_status(client, &tx.hash).await? {
                TxStatus::Validated(v) => return Ok(v),
                TxStatus::Pending { validated_ledger }
                | TxStatus::NotFound { validated_ledger }
                    if validated_ledger >= tx.last_ledger_sequence =>
                {
                    if let TxStatus::Validated(v) = tx_status(client, &tx.hash).await? {
                        return Ok(v);
                    }
                    return Err(SubmitError::Expired {
                        hash: tx.hash.clone(),
                        last_ledger_sequence: tx.last_ledger_sequence,
                        validated_ledger,
                        last_result,
                    });
                }
                TxStatus::Pending { .. } => wait_for_ledger(&mut events, poll).await,
                TxStatus::NotFound { .. } => {
                    wait_for_ledger(&mut events, poll).await;
                    break;
                }
            }
        }
    }
}
