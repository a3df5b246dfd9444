//! The outbox worker: signs pending rows (persisting blob and hash before anything is sent),
//! submits prepared rows until they validate or expire, and feeds each outcome back to the
//! machine.
//!
//! **Invariant:** a row's signed blob is in SQLite before it is submitted, so a restart
//! resubmits the very same transaction (same hash) instead of signing a second one.

use std::fmt;

use berth_schemas::field::{NfTokenId, OfferId, TxHash};

use futures_util::future::join_all;
use tracing::{debug, info, warn};

use crate::ledger::{LedgerAction, LedgerError, PreparedTx};
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

/// `result` of an offer row dropped unsigned: its slot has another token by now.
pub const SUPERSEDED: &str = "superseded: the slot has another token";

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

    /// Signs every pending row in order, persisting each blob before anything is submitted;
    /// rows queued meanwhile (the offer a mint brings) are signed in the same pass, so they
    /// get the next sequences. Returns the rows now prepared (including those prepared
    /// before).
    pub async fn prepare_pending(&self) -> Result<Vec<OutboxRow>, MachineError> {
        let mut seen = std::collections::HashSet::new();
        loop {
            let pending: Vec<_> = self
                .store()
                .read()
                .outbox(&[OutboxState::Pending])?
                .into_iter()
                .filter(|row| !seen.contains(&row.key))
                .collect();
            if pending.is_empty() {
                break;
            }
            for row in &pending {
                seen.insert(row.key.clone());
                self.prepare_row(row).await?;
            }
        }
        Ok(self.store().read().outbox(&[OutboxState::Prepared])?)
    }

    async fn prepare_row(&self, row: &OutboxRow) -> Result<(), MachineError> {
        if !self.offer_wanted(row)? {
            return Ok(());
        }
        match self.ledger().prepare(&row.action).await {
            Ok(prepared) => {
                let predicted = match &row.action {
                    LedgerAction::Mint { slot, .. } => self
                        .predict_mint(&row.key, &prepared)
                        .await?
                        .map(|token| (*slot, token)),
                    _ => None,
                };
                let offered = self.store().transaction(|tx| -> Result<_, StoreError> {
                    tx.outbox_prepared(
                        &row.key,
                        &prepared.hash,
                        &prepared.blob,
                        prepared.last_ledger,
                    )?;
                    match &predicted {
                        Some((slot, token)) => self.offer_with_mint(tx, *slot, token),
                        None => Ok(false),
                    }
                })?;
                debug!(key = %row.key, hash = %prepared.hash, "outbox row signed");
                if let (true, Some((slot, token))) = (offered, predicted) {
                    info!(slot, token = %token, mint = %prepared.hash, "slot offered with its mint");
                }
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
        Ok(())
    }

    /// Whether to sign `row` now. An offer is signed only while its slot names its token: a
    /// slot still waiting for its mint keeps the row pending; a slot with another token
    /// (a prediction that a failed or expired mint made stale) ends the row as
    /// [`SUPERSEDED`]. Every other row is signed.
    fn offer_wanted(&self, row: &OutboxRow) -> Result<bool, MachineError> {
        let LedgerAction::Offer { slot, token_id, .. } = &row.action else {
            return Ok(true);
        };
        let current = self.store().read().slot(*slot)?.and_then(|s| s.token_id);
        match current {
            Some(token) if token == *token_id => Ok(true),
            None => Ok(false),
            Some(token) => {
                warn!(key = %row.key, slot, token = %token, "offer of a token the slot no longer has, dropped");
                self.store()
                    .transaction(|tx| tx.outbox_done(&row.key, OutboxState::Failed, SUPERSEDED))?;
                Ok(false)
            }
        }
    }

    /// The id the just-signed mint `key` will make, when it can be known now: no other mint
    /// of the host is signed and unsettled (each would take a token sequence first, and
    /// could still fail), and the ledger can tell ([`crate::ledger::Ledger::minted_token_id`]).
    /// Only the outbox worker signs, so no mint is signed between this look and the
    /// transaction that records the prediction.
    async fn predict_mint(
        &self,
        key: &str,
        prepared: &PreparedTx,
    ) -> Result<Option<NfTokenId>, MachineError> {
        let other_in_flight = self
            .store()
            .read()
            .outbox(&[OutboxState::Prepared])?
            .iter()
            .any(|row| row.key != key && matches!(row.action, LedgerAction::Mint { .. }));
        if other_in_flight || self.store().read().draining()? {
            return Ok(None);
        }
        match self.ledger().minted_token_id(prepared).await {
            Ok(token) => Ok(token),
            Err(e) => {
                // Not fatal: the slot is offered once the mint validates.
                warn!(%key, error = %berth_log::chain(&e), "cannot predict the token of a mint");
                Ok(None)
            }
        }
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
