//! Reliable submission, in two steps so that a caller can survive a crash in between:
//!
//! 1. [`Submitter::prepare`] fills `Account`, `Sequence` (from `account_info` of the current
//!    ledger, then a local counter so that transactions prepared back to back get
//!    consecutive sequences), `Fee` (the open ledger's fee, refused above
//!    [`SubmitConfig::max_fee_drops`]) and `LastLedgerSequence` (current ledger +
//!    [`SubmitConfig::last_ledger_offset`]), and signs. The caller persists the returned
//!    [`SignedTx`] (it is serde-serializable) BEFORE submitting it.
//! 2. [`Submitter::submit_and_wait`] submits the blob and waits until it is validated, or
//!    until it can never be: [`SubmitError::SequenceTaken`] (another transaction used the
//!    sequence) and [`SubmitError::Expired`] (its `LastLedgerSequence` passed) tell the caller
//!    to prepare again ([`Submitter::prepare_retry`] raises the fee within the cap); a `tel`
//!    result is retried at once with a raised fee within the cap (re-signed with the same
//!    sequence, so at most one version can ever be validated); `tem` and other `tef` results
//!    are permanent ([`SubmitError::Rejected`]).
//!
//! After a crash, [`Submitter::status`] tells validated / pending / not found, with the
//! latest validated ledger, so the caller knows whether the `LastLedgerSequence` has passed.

use std::time::Duration;

use berth_xrpl_core::{KeyPair, Ter};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::client::{Client, ClientError, StreamEvent};
use crate::tx::{json_drops, json_u32, ValidatedTx};

/// Settings of a [`Submitter`].
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    /// The highest fee, in drops, this submitter ever signs.
    pub max_fee_drops: u64,
    /// `LastLedgerSequence` = current ledger + this.
    pub last_ledger_offset: u32,
    /// Checked at least this often while waiting, even when no ledger close arrives.
    pub poll_interval: Duration,
    /// Each raise multiplies the fee by (100 + this) / 100 (at least +1 drop).
    pub fee_raise_percent: u64,
}

impl Default for SubmitConfig {
    fn default() -> Self {
        SubmitConfig {
            max_fee_drops: 2_000,
            last_ledger_offset: 20,
            poll_interval: Duration::from_secs(1),
            fee_raise_percent: 50,
        }
    }
}

impl SubmitConfig {
    /// Checks every setting; the error names the key.
    pub fn validate(&self) -> Result<(), SubmitError> {
        let bad = |key: &'static str, message: &str| {
            Err(SubmitError::Config {
                key,
                message: message.into(),
            })
        };
        if self.max_fee_drops == 0 {
            return bad("max_fee_drops", "must be at least 1 drop");
        }
        if self.last_ledger_offset == 0 {
            return bad("last_ledger_offset", "must be at least 1 ledger");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be greater than zero");
        }
        if self.fee_raise_percent == 0 {
            return bad("fee_raise_percent", "must be greater than zero");
        }
        Ok(())
    }
}

/// A signed transaction ready to submit; persist it before submitting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTx {
    /// Transaction hash, 64 upper-case hex digits.
    pub hash: String,
    /// The signed blob, upper-case hex (what `submit` takes).
    pub blob: String,
    pub account: String,
    pub sequence: u32,
    pub fee_drops: u64,
    pub last_ledger_sequence: u32,
    /// The signed transaction's fields.
    pub tx_json: Value,
    /// Hashes of earlier versions of this transaction (same sequence, lower fee) replaced by
    /// a fee raise. At most one version can be validated; [`Submitter::status_of`] checks all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

/// A transaction in a validated ledger: its outcome is final.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub hash: String,
    pub ledger_index: u32,
    /// The result token (`tesSUCCESS`, or a `tec` code: included, fee charged, nothing done).
    pub result: String,
    pub meta: Value,
}

impl Validated {
    /// The result as a typed code; `None` for a token this build does not know.
    pub fn ter(&self) -> Option<Ter> {
        Ter::from_token(&self.result)
    }

    pub fn is_success(&self) -> bool {
        self.result == "tesSUCCESS"
    }
}

/// Where a transaction is, by hash.
#[derive(Debug, Clone, PartialEq)]
pub enum TxStatus {
    Validated(Validated),
    /// Known to the server but not yet in a validated ledger.
    Pending {
        validated_ledger: u32,
    },
    /// Unknown to the server. Once `validated_ledger` ≥ the transaction's
    /// `LastLedgerSequence`, it can never be validated.
    NotFound {
        validated_ledger: u32,
    },
}

/// Why a transaction was not (or will never be) validated.
#[derive(Debug, Error)]
pub enum SubmitError {
    #[error("submit config: {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("transaction is not valid: {detail}")]
    BadTransaction { detail: String },
    #[error("account {account} does not exist on the ledger")]
    AccountNotFound { account: String },
    #[error(
        "open ledger fee {fee_drops} drops is above the cap of {cap} drops (account {account})"
    )]
    FeeAboveCap {
        account: String,
        fee_drops: u64,
        cap: u64,
    },
    /// Another transaction used this sequence; prepare again.
    #[error(
        "transaction {hash}: sequence {sequence} of {account} was used by another transaction"
    )]
    SequenceTaken {
        hash: String,
        account: String,
        sequence: u32,
    },
    /// `LastLedgerSequence` passed without validation; prepare again (fresh sequence).
    #[error("transaction {hash}: not validated by its last ledger {last_ledger_sequence} (validated ledger {validated_ledger}, last result {last_result})")]
    Expired {
        hash: String,
        last_ledger_sequence: u32,
        validated_ledger: u32,
        last_result: String,
    },
    /// A `tel` result at the fee cap.
    #[error("transaction {hash}: {result} at the fee cap of {cap} drops")]
    FeeCapReached {
        hash: String,
        result: String,
        cap: u64,
    },
    /// A `tem`, `tef` (other than the handled ones) or submit-time error: permanent.
    #[error("transaction {hash}: rejected with {result}: {message}")]
    Rejected {
        hash: String,
        result: String,
        message: String,
    },
    #[error("transaction {hash}: cannot persist the re-signed version")]
    Persist {
        hash: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Prepares, signs and submits the transactions of one account.
pub struct Submitter {
    client: Client,
    key: KeyPair,
    account: String,
    config: SubmitConfig,
    /// The next sequence to use; `None` = ask the server.
    next_sequence: Mutex<Option<u32>>,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter")
            .field("account", &self.account)
            .field("config", &self.config)
            .finish()
    }
}

impl Submitter {
    pub fn new(client: Client, key: KeyPair, config: SubmitConfig) -> Result<Self, SubmitError> {
        config.validate()?;
        let account = key.address();
        Ok(Submitter {
            client,
            key,
            account,
            config,
            next_sequence: Mutex::new(None),
        })
    }

    /// The classic address of the signing account.
    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Forgets the local sequence counter: the next `prepare` asks the server. Done
    /// automatically after `SequenceTaken` and `Expired`.
    pub async fn reset_sequence(&self) {
        *self.next_sequence.lock().await = None;
    }

    /// Autofills and signs `tx` (a JSON object with `TransactionType` and its own fields;
    /// `Account`, `Sequence`, `Fee` and `LastLedgerSequence` are filled when absent).
    pub async fn prepare(&self, tx: Value) -> Result<SignedTx, SubmitError> {
        self.prepare_inner(tx, 0).await
    }

    /// Prepares `previous` again after [`SubmitError::Expired`] or
    /// [`SubmitError::SequenceTaken`]: a fresh sequence, a new `LastLedgerSequence` and a
    /// raised fee (within the cap).
    pub async fn prepare_retry(&self, previous: &SignedTx) -> Result<SignedTx, SubmitError> {
        let mut tx = previous.tx_json.clone();
        if let Some(m) = tx.as_object_mut() {
            for k in [
                "Sequence",
                "Fee",
                "LastLedgerSequence",
                "SigningPubKey",
                "TxnSignature",
                "hash",
            ] {
                m.remove(k);
            }
        }
        let min_fee = self
            .raise(previous.fee_drops)
            .min(self.config.max_fee_drops);
        self.prepare_inner(tx, min_fee).await
    }

    fn raise(&self, fee: u64) -> u64 {
        fee.saturating_add((fee.saturating_mul(self.config.fee_raise_percent) / 100).max(1))
    }

    async fn prepare_inner(&self, tx: Value, min_fee: u64) -> Result<SignedTx, SubmitError> {
        let Value::Object(mut fields) = tx else {
            return Err(SubmitError::BadTransaction {
                detail: format!("expected a JSON object, got {tx}"),
            });
        };
        match fields.get("Account").and_then(Value::as_str) {
            None => {
                fields.insert("Account".into(), json!(self.account));
            }
            Some(a) if a == self.account => {}
            Some(a) => {
                return Err(SubmitError::BadTransaction {
                    detail: format!(
                        "field Account is {a}, but this submitter signs for {}",
                        self.account
                    ),
                })
            }
        }
        // Held across the awaits below, so that concurrent prepares get consecutive sequences.
        let mut next = self.next_sequence.lock().await;
        let given_sequence = fields.get("Sequence").and_then(json_u32);
        let sequence = match (given_sequence, *next) {
            (Some(s), _) => s,
            (None, Some(s)) => s,
            (None, None) => self.account_sequence().await?,
        };
        fields.insert("Sequence".into(), json!(sequence));
        let fee_info = self.client.request("fee", Value::Null).await?;
        let fee_drops = match fields.get("Fee").and_then(json_drops) {
            Some(f) => f,
            None => {
                let drops = |key: &str| {
                    fee_info
                        .pointer(&format!("/drops/{key}"))
                        .and_then(json_drops)
                        .ok_or_else(|| self.client.bad_response("fee", format!("no drops.{key}")))
                };
                let open = drops("open_ledger_fee")?;
                let minimum = drops("minimum_fee").or_else(|_| drops("base_fee"))?;
                // Below the minimum a transaction can never get in; between the minimum and
                // the open ledger fee rippled queues it (terQUEUED), so sign at the cap.
                if minimum > self.config.max_fee_drops {
                    return Err(SubmitError::FeeAboveCap {
                        account: self.account.clone(),
                        fee_drops: minimum,
                        cap: self.config.max_fee_drops,
                    });
                }
                open.max(min_fee).min(self.config.max_fee_drops)
            }
        };
        if fee_drops > self.config.max_fee_drops {
            return Err(SubmitError::FeeAboveCap {
                account: self.account.clone(),
                fee_drops,
                cap: self.config.max_fee_drops,
            });
        }
        fields.insert("Fee".into(), json!(fee_drops.to_string()));
        let last_ledger_sequence = match fields.get("LastLedgerSequence").and_then(json_u32) {
            Some(l) => l,
            None => {
                let current = fee_info
                    .get("ledger_current_index")
                    .and_then(json_u32)
                    .ok_or_else(|| self.client.bad_response("fee", "no ledger_current_index"))?;
                let l = current.saturating_add(self.config.last_ledger_offset);
                fields.insert("LastLedgerSequence".into(), json!(l));
                l
            }
        };
        let tx_json = Value::Object(fields);
        let signed = self.sign(tx_json, sequence, fee_drops, last_ledger_sequence)?;
        if given_sequence.is_none() {
            *next = Some(sequence.saturating_add(1));
        }
        debug!(hash = %signed.hash, sequence, fee_drops, last_ledger_sequence, "prepared");
        Ok(signed)
    }

    fn sign(
        &self,
        mut tx_json: Value,
        sequence: u32,
        fee_drops: u64,
        last_ledger_sequence: u32,
    ) -> Result<SignedTx, SubmitError> {
        let signed = berth_xrpl_core::tx::sign_json(&tx_json, &self.key).map_err(|e| {
            SubmitError::BadTransaction {
                detail: e.to_string(),
            }
        })?;
        if let Some(m) = tx_json.as_object_mut() {
            m.insert(
                "SigningPubKey".into(),
                json!(self.key.public_key_hex().to_uppercase()),
            );
        }
        Ok(SignedTx {
            hash: signed.hash_hex(),
            blob: signed.blob_hex(),
            account: self.account.clone(),
            sequence,
            fee_drops,
            last_ledger_sequence,
            tx_json,
            replaces: Vec::new(),
        })
    }

    async fn account_sequence(&self) -> Result<u32, SubmitError> {
        account_sequence(&self.client, &self.account).await
    }

    /// Where the transaction with `hash` is.
    pub async fn status(&self, hash: &str) -> Result<TxStatus, ClientError> {
        tx_status(&self.client, hash).await
    }

    /// Where `signed` is, counting the earlier versions it replaces: validated if any
    /// version is, pending if any is known, else not found. What a caller that crashed asks
    /// about the transactions of its outbox.
    pub async fn status_of(&self, signed: &SignedTx) -> Result<TxStatus, ClientError> {
        let mut status = tx_status(&self.client, &signed.hash).await?;
        for hash in &signed.replaces {
            match tx_status(&self.client, hash).await? {
                v @ TxStatus::Validated(_) => return Ok(v),
                p @ TxStatus::Pending { .. } if matches!(status, TxStatus::NotFound { .. }) => {
                    status = p
                }
                _ => {}
            }
        }
        Ok(status)
    }

    /// Submits `signed` and waits for its final outcome. A `tel` result is retried with a
    /// raised fee; the re-signed versions are not handed to the caller (see
    /// [`Submitter::submit_and_wait_with`] to persist them).
    pub async fn submit_and_wait(&self, signed: &SignedTx) -> Result<Validated, SubmitError> {
        self.submit_and_wait_with(signed, |_| Ok::<(), std::convert::Infallible>(()))
            .await
    }

    /// [`Submitter::submit_and_wait`], calling `persist` with each re-signed version (raised
    /// fee, same sequence) before it is submitted; an error from `persist` stops the
    /// submission ([`SubmitError::Persist`]) without submitting that version.
    pub async fn submit_and_wait_with<F, E>(
        &self,
        signed: &SignedTx,
        mut persist: F,
    ) -> Result<Validated, SubmitError>
    where
        F: FnMut(&SignedTx) -> Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut events = self.client.events();
        self.client.subscribe_ledger().await?;
        let mut current = signed.clone();
        let mut last_result = String::from("(not submitted)");
        let mut submit_now = true;
        let mut failures = 0;
        loop {
            if submit_now {
                submit_now = false;
                match self.submit_once(&current).await? {
                    // tefALREADY says nothing new: keep the result that explains the wait.
                    Step::Wait(result) if result == "tefALREADY" && current.hash == signed.hash => {
                        if last_result.starts_with('(') {
                            last_result = result;
                        }
                    }
                    Step::Wait(result) => last_result = result,
                    Step::Check(result) => {
                        last_result = result.clone();
                        match self.status_of(&current).await? {
                            TxStatus::Validated(v) => return Ok(v),
                            TxStatus::Pending { .. } => {}
                            TxStatus::NotFound { validated_ledger } => {
                                return Err(self.gone(&current, &result, validated_ledger).await)
                            }
                        }
                    }
                    Step::RaiseFee(result) => {
                        if current.fee_drops >= self.config.max_fee_drops {
                            self.reset_sequence().await;
                            return Err(SubmitError::FeeCapReached {
                                hash: current.hash,
                                result,
                                cap: self.config.max_fee_drops,
                            });
                        }
                        let fee = self.raise(current.fee_drops).min(self.config.max_fee_drops);
                        let mut tx = current.tx_json.clone();
                        tx["Fee"] = json!(fee.to_string());
                        let mut next =
                            self.sign(tx, current.sequence, fee, current.last_ledger_sequence)?;
                        next.replaces = current.replaces.clone();
                        next.replaces.push(current.hash.clone());
                        info!(old = %current.hash, new = %next.hash, fee, %result, "raising the fee");
                        if let Err(e) = persist(&next) {
                            return Err(SubmitError::Persist {
                                hash: next.hash,
                                source: e.into(),
                            });
                        }
                        current = next;
                        last_result = result;
                        submit_now = true;
                        continue;
                    }
                    Step::Fail(e) => {
                        self.reset_sequence().await;
                        return Err(e);
                    }
                }
            }
            wait_for_ledger(&mut events, self.config.poll_interval).await;
            let status = match self.status_of(&current).await {
                Ok(status) => {
                    failures = 0;
                    status
                }
                // A dropped connection or a slow answer says nothing about the transaction:
                // keep waiting (the client reconnects), within a bound.
                Err(e @ (ClientError::ConnectionLost { .. } | ClientError::Timeout { .. }))
                    if failures < MAX_LOOKUP_FAILURES =>
                {
                    failures += 1;
                    warn!(hash = %current.hash, error = %berth_log::chain(&e), failures, "cannot look the transaction up, waiting");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match status {
                TxStatus::Validated(v) => return Ok(v),
                TxStatus::Pending { validated_ledger }
                | TxStatus::NotFound { validated_ledger }
                    if validated_ledger >= current.last_ledger_sequence =>
                {
                    // One last look: it may have been validated in that very ledger.
                    if let TxStatus::Validated(v) = self.status_of(&current).await? {
                        return Ok(v);
                    }
                    self.reset_sequence().await;
                    return Err(SubmitError::Expired {
                        hash: current.hash,
                        last_ledger_sequence: current.last_ledger_sequence,
                        validated_ledger,
                        last_result,
                    });
                }
                TxStatus::Pending { .. } => {}
                TxStatus::NotFound { .. } => submit_now = true,
            }
        }
    }

    /// After `tefPAST_SEQ` / `tefMAX_LEDGER` and a hash lookup that found nothing.
    async fn gone(&self, tx: &SignedTx, result: &str, validated_ledger: u32) -> SubmitError {
        self.reset_sequence().await;
        if result == "tefMAX_LEDGER" {
            SubmitError::Expired {
                hash: tx.hash.clone(),
                last_ledger_sequence: tx.last_ledger_sequence,
                validated_ledger,
                last_result: result.into(),
            }
        } else {
            SubmitError::SequenceTaken {
                hash: tx.hash.clone(),
                account: tx.account.clone(),
                sequence: tx.sequence,
            }
        }
    }

    async fn submit_once(&self, tx: &SignedTx) -> Result<Step, SubmitError> {
        let r = self
            .client
            .request("submit", json!({"tx_blob": tx.blob}))
            .await;
        let r = match r {
            Ok(r) => r,
            // The blob may or may not have reached the server: look the hash up.
            Err(ClientError::ConnectionLost { .. } | ClientError::Timeout { .. }) => {
                return Ok(Step::Wait("(connection lost during submit)".into()))
            }
            // The server cannot take transactions right now: try again on the next poll.
            Err(ClientError::Rpc { error, .. })
                if TRANSIENT_RPC_ERRORS.contains(&error.as_str()) =>
            {
                warn!(hash = %tx.hash, %error, "server busy, will resubmit");
                return Ok(Step::Wait(error));
            }
            Err(ClientError::Rpc { error, message, .. }) => {
                return Ok(Step::Fail(SubmitError::Rejected {
                    hash: tx.hash.clone(),
                    result: error,
                    message,
                }))
            }
            Err(e) => return Err(e.into()),
        };
        submit_answer(&self.client, &r, &tx.hash)
    }
}

/// The next `Sequence` of `account` in the current ledger.
pub(crate) async fn account_sequence(client: &Client, account: &str) -> Result<u32, SubmitError> {
    let method = "account_info";
    let r = client
        .request(
            method,
            json!({"account": account, "ledger_index": "current"}),
        )
        .await;
    let r = match r {
        Ok(r) => r,
        Err(e) if e.rpc_error() == Some("actNotFound") => {
            return Err(SubmitError::AccountNotFound {
                account: account.to_owned(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    r.pointer("/account_data/Sequence")
        .and_then(json_u32)
        .ok_or_else(|| {
            client
                .bad_response(method, "no account_data.Sequence")
                .into()
        })
}

/// What a `submit` (or `submit_multisigned`) answer says to do next.
pub(crate) fn submit_answer(client: &Client, r: &Value, hash: &str) -> Result<Step, SubmitError> {
    let result = r
        .get("engine_result")
        .and_then(Value::as_str)
        .ok_or_else(|| client.bad_response("submit", "no engine_result"))?
        .to_owned();
    let message = r
        .get("engine_result_message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    debug!(%hash, %result, "submitted");
    Ok(classify(hash, result, message))
}

/// rippled's submit errors that say "not now" rather than "never".
pub(crate) const TRANSIENT_RPC_ERRORS: &[&str] =
    &["tooBusy", "slowDown", "noNetwork", "noCurrent", "noClosed"];

/// Consecutive failed lookups (connection lost, timeout) tolerated while waiting.
const MAX_LOOKUP_FAILURES: u32 = 10;

pub(crate) enum Step {
    /// Accepted, queued, held or already known: wait for validation.
    Wait(String),
    /// `tefPAST_SEQ` / `tefMAX_LEDGER`: validated already, or never will be.
    Check(String),
    /// A `tel` result: try again with a higher fee.
    RaiseFee(String),
    Fail(SubmitError),
}

fn classify(hash: &str, result: String, message: String) -> Step {
    match result.as_str() {
        "tesSUCCESS" | "terQUEUED" | "terPRE_SEQ" | "tefALREADY" => Step::Wait(result),
        "tefPAST_SEQ" | "tefMAX_LEDGER" => Step::Check(result),
        r if r.starts_with("tec") => Step::Wait(result),
        r if r.starts_with("tel") => Step::RaiseFee(result),
        // Other ter codes (terNO_ACCOUNT, terINSUF_FEE_B, …) may clear up: resubmit each
        // ledger until LastLedgerSequence.
        r if r.starts_with("ter") => {
            warn!(%hash, %result, %message, "retryable result, waiting");
            Step::Wait(result)
        }
        _ => Step::Fail(SubmitError::Rejected {
            hash: hash.into(),
            result,
            message,
        }),
    }
}

/// Waits for the next ledger close, at most `poll`.
pub(crate) async fn wait_for_ledger(
    events: &mut tokio::sync::broadcast::Receiver<StreamEvent>,
    poll: Duration,
) {
    let _ = tokio::time::timeout(poll, async {
        loop {
            match events.recv().await {
                Ok(StreamEvent::LedgerClosed { .. } | StreamEvent::Reconnected { .. }) => return,
                Ok(StreamEvent::Transaction(_)) => {}
                Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    })
    .await;
}

/// Where the transaction with `hash` is, with the latest validated ledger.
pub async fn tx_status(client: &Client, hash: &str) -> Result<TxStatus, ClientError> {
    // Validated ledger first: a transaction not found after that is not in it.
    let validated_ledger = client.validated_ledger_index().await?;
    match client.request("tx", json!({"transaction": hash})).await {
        Ok(r) => match ValidatedTx::from_json(&r) {
            Some(v) => Ok(TxStatus::Validated(Validated {
                hash: v.hash,
                ledger_index: v.ledger_index,
                result: v.result,
                meta: v.meta,
            })),
            None => Ok(TxStatus::Pending { validated_ledger }),
        },
        Err(e) if e.rpc_error() == Some("txnNotFound") => {
            Ok(TxStatus::NotFound { validated_ledger })
        }
        Err(e) => Err(e),
    }
}
