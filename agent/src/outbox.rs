//! The outbox worker: signs pending rows (persisting blob and hash before anything is sent),
//! submits prepared rows until they validate or expire, and feeds each outcome back to the
//! machine.
//!
//! **Invariant:** a row's signed blob is in SQLite before it is submitted, so a restart
//! resubmits the very same transaction (same hash) instead of signing a second one.

use std::fmt;

use berth_schemas::field::{NfTokenId, OfferId, TxHash};

use futures_util::future::join_all;
use tracing::{debug, warn};

use crate::ledger::{LedgerError, PreparedTx};
use crate::machine::{Machine, MachineError};
use crate::store::{OutboxRow, OutboxState, StoreError};

/// The key of an outbox row: what makes it be written at most once. Every key the agent
/// writes is spelled here, and only here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxKey {
    /// The one answer (or refund) to a request transaction: `answer:<hash>`.
    Answer(TxHash),
    /// The mint of a slot's token of one generation; `attempt` is 0 for the first and the
    /// time of a retry after a failed one: `mint:<slot>:<generation>:<attempt>`.
    Mint {
        slot: u32,
        generation: u32,
        attempt: u64,
    },
    /// A sell offer of a token; `attempt` is 0 for the first and the time of a re-offer
    /// (after a lost offer, a failed one or a drain undone): `offer:<token>:<attempt>`.
    Offer { token: NfTokenId, attempt: u64 },
    /// The burn of a token: `burn:<token>`.
    Burn { token: NfTokenId },
    /// The cancel of a sell offer (drain): `cancel:<offer>`.
    Cancel { offer: OfferId },
    /// Setting the account's MessageKey: `message-key:<key hex>`.
    MessageKey { key_hex: String },
    /// Registration with these host details (digest of the action): `host-reg:<digest>`.
    HostReg { digest: String },
    /// A heartbeat sent at `at` (Unix seconds): `heartbeat:<at>`.
    Heartbeat { at: u64 },
}

impl fmt::Display for OutboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxKey::Answer(request) => write!(f, "answer:{request}"),
            OutboxKey::Mint {
                slot,
                generation,
                attempt,
            } => write!(f, "mint:{slot}:{generation}:{attempt}"),
            OutboxKey::Offer { token, attempt } => write!(f, "offer:{token}:{attempt}"),
            OutboxKey::Burn { token } => write!(f, "burn:{token}"),
            OutboxKey::Cancel { offer } => write!(f, "cancel:{offer}"),
            OutboxKey::MessageKey { key_hex } => write!(f, "message-key:{key_hex}"),
            OutboxKey::HostReg { digest } => write!(f, "host-reg:{digest}"),
            OutboxKey::Heartbeat { at } => write!(f, "heartbeat:{at}"),
        }
    }
}

/// The kind of a stored key (rows written by older builds included), for decisions and
/// metrics: the part before the first `:`.
pub fn key_kind(key: &str) -> &str {
    key.split(':').next().unwrap_or(key)
}

impl Machine {
    /// One pass over the outbox: signs pending rows, then submits every prepared row and
    /// waits for all of them. Returns how many rows reached an outcome.
    pub async fn flush_outbox(&self) -> Result<usize, MachineError> {
        self.prepare_pending().await?;
        let prepared = self.store().read().outbox(&[OutboxState::Prepared])?;
        let results = join_all(prepared.iter().map(|row| self.submit_row(row))).await;
        let mut done = 0;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(()) => done += 1,
                Err(e) => {
                    self.record_error("outbox", &e);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// Signs every pending row in order, persisting each blob before anything is submitted.
    /// Returns the rows now prepared (including those prepared before).
    pub async fn prepare_pending(&self) -> Result<Vec<OutboxRow>, MachineError> {
        let pending = self.store().read().outbox(&[OutboxState::Pending])?;
        for row in &pending {
            match self.ledger().prepare(&row.action).await {
                Ok(prepared) => {
                    self.store().transaction(|tx| -> Result<_, StoreError> {
                        tx.outbox_prepared(
                            &row.key,
                            &prepared.hash,
                            &prepared.blob,
                            prepared.last_ledger,
                        )
                    })?;
                    debug!(key = %row.key, hash = %prepared.hash, "outbox row signed");
                    if key_kind(&row.key) == "answer" {
                        crate::failpoint::hit("answer-prepared");
                    }
                }
                Err(LedgerError::Refused { action, result }) => {
                    warn!(key = %row.key, %result, "outbox row refused for good");
                    self.store().transaction(|tx| -> Result<_, StoreError> {
                        tx.outbox_done(&row.key, OutboxState::Failed, &result)?;
                        tx.record_error(
                            "outbox",
                            &format!("{} ({action}) refused: {result}", row.key),
                        )
                    })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.store().read().outbox(&[OutboxState::Prepared])?)
    }

    /// Submits one prepared row and applies its outcome.
    pub async fn submit_row(&self, row: &OutboxRow) -> Result<(), MachineError> {
        let (Some(hash), Some(blob), Some(last_ledger)) =
            (row.tx_hash, row.blob.clone(), row.last_ledger)
        else {
            self.store()
                .transaction(|tx| tx.outbox_retry(&row.key, "prepared row without a blob"))?;
            return Ok(());
        };
        let prepared = PreparedTx {
            hash,
            blob,
            last_ledger,
        };
        let key = row.key.clone();
        let persist = |next: &PreparedTx| -> Result<(), String> {
            self.store()
                .transaction(|tx| -> Result<_, StoreError> {
                    tx.outbox_resigned(&key, &next.hash, &next.blob, next.last_ledger)
                })
                .map_err(|e| format!("cannot persist the re-signed {key}: {e}"))
        };
        let outcome = self.ledger().submit_and_wait(&prepared, &persist).await?;
        debug!(key = %row.key, hash = %prepared.hash, ?outcome, "outbox row settled");
        self.on_outcome(row, &outcome)
    }
}
