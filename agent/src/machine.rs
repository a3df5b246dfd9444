//! The lease state machine: ledger events in, store transitions + outbox rows + provisioner
//! calls out.
//!
//! **Invariant:** [`Machine::handle`] decides and records a request in one store transaction
//! before any side effect, and skips a request it has recorded: replaying events after a crash
//! (catch-up from the cursor) answers nothing twice. Instance names derive from the purchase
//! hash, so re-running a provisioning job never creates a second instance. Work that outlives
//! a transaction (creating or destroying an instance) is a [`Job`] that [`Machine::resume`]
//! finds again from the lease state after a restart. A recycled slot's burn, next mint and
//! (when the mint's token id is known before it validates) offer are queued so that they
//! validate together ([`Machine::offer_with_mint`]).

use std::sync::{Arc, Mutex, MutexGuard};

use berth_provisioner::{DiskCheck, InstanceIdentity, InstanceSpec, ProvisionError, Provisioner};
use berth_schemas::config::HostConfig;
use berth_schemas::field::{AccountAddress, InstanceName, NfTokenId, Text, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::memo::{Memo, Message};
use berth_schemas::message::{
    AcquireOk, ExtendOk, Failure, InstanceDetails, ReasonCode, Sealed, TerminateOk,
};
use ed25519_dalek::SigningKey;
use thiserror::Error;
use tracing::{info, warn};

use berth_xrpl_core::Ter;

use crate::ledger::{Ledger, LedgerAction, LedgerError, LedgerEvent, MemoHex, TxOutcome};
use crate::metrics::Metrics;
use crate::outbox::{key_kind, OutboxKey};
use crate::store::{
    Cursor, Lease, LeaseState, NewLease, OutboxRow, OutboxState, PoolState, SlotState, Store,
    StoreError, Tx,
};

/// Why the machine could not handle an event or job (it is retried).
#[derive(Debug, Error)]
pub enum MachineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("instance {instance}")]
    Provision {
        instance: String,
        #[source]
        source: ProvisionError,
    },
    #[error("cannot build the {what} memo: {problem}")]
    Memo { what: &'static str, problem: String },
    #[error("lease {id} is not in the store")]
    NoLease { id: i64 },
}

/// Work left after an event was recorded: run it with [`Machine::run_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Create and start the lease's instance, then answer `acquire-ok`.
    Provision(i64),
    /// Destroy the lease's instance, then release its answer and recycle its token.
    End(i64),
}

/// Knobs of the machine that are not in the host config.
#[derive(Clone)]
pub struct MachineSettings {
    /// A gap between two ledger closes longer than this is a stall: expiry restarts its grace
    /// period when the ledger closes again.
    pub stall_secs: u64,
    /// Changes every instance spec before it is created (the tests run the probe image).
    pub customize: fn(InstanceSpec) -> InstanceSpec,
    /// Jobs (creating or destroying an instance) run at most this many at once.
    pub parallel_jobs: usize,
}

impl Default for MachineSettings {
    fn default() -> Self {
        Self {
            stall_secs: 60,
            customize: |spec| spec,
            parallel_jobs: 64,
        }
    }
}

/// The host's lease business over the store, a provisioner and a ledger.
pub struct Machine {
    store: Mutex<Store>,
    provisioner: Arc<dyn Provisioner>,
    ledger: Arc<dyn Ledger>,
    config: HostConfig,
    host_address: AccountAddress,
    message_key: SigningKey,
    settings: MachineSettings,
    /// Jobs hold it shared; housekeeping's reconcile holds it alone, so it never sees (and
    /// removes or recreates) an instance a job is creating or destroying.
    jobs_gate: tokio::sync::RwLock<()>,
    job_permits: tokio::sync::Semaphore,
    /// Held from choosing ports (or a pooled instance) until they are recorded, so two
    /// instances are never given the same port and a pooled instance goes to one lease.
    ports: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Woken when the pool lost an instance (to a purchase) or the host drains.
    pool_changed: tokio::sync::Notify,
}

fn answer_key(request: &TxHash) -> OutboxKey {
    OutboxKey::Answer(*request)
}

fn mint_key(slot: u32, generation: u32) -> OutboxKey {
    OutboxKey::Mint {
        slot,
        generation,
        attempt: 0,
    }
}

/// A refusal decided while reading a purchase or payment.
struct Refusal {
    code: ReasonCode,
    message: String,
}

fn refusal(code: ReasonCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl Machine {
    pub fn new(
        store: Store,
        provisioner: Arc<dyn Provisioner>,
        ledger: Arc<dyn Ledger>,
        config: HostConfig,
        host_address: AccountAddress,
        message_key: SigningKey,
        settings: MachineSettings,
    ) -> Self {
        Self {
            store: Mutex::new(store),
            provisioner,
            ledger,
            config,
            host_address,
            message_key,
            jobs_gate: tokio::sync::RwLock::new(()),
            job_permits: tokio::sync::Semaphore::new(settings.parallel_jobs.max(1)),
            ports: tokio::sync::Mutex::new(()),
            metrics: Arc::new(Metrics::new()),
            pool_changed: tokio::sync::Notify::new(),
            settings,
        }
    }

    /// The agent's metrics (counters and histograms the machine feeds).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits until no job runs and holds off new ones while the guard lives.
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.jobs_gate.write().await
    }

    /// The store, locked; never held across an await.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    pub fn ledger(&self) -> &dyn Ledger {
        self.ledger.as_ref()
    }

    fn price(&self) -> u64 {
        self.config.lease.price_drops.get()
    }

    fn moment_secs(&self) -> u64 {
        u64::from(self.config.lease.moment_secs.get())
    }

    fn mint_action(&self, slot: u32) -> LedgerAction {
        LedgerAction::Mint {
            slot,
            uri_hex: self.config.lease_uri(slot).to_hex(),
        }
    }

    /// Creates missing slots (each with a queued mint). Returns the slots created.
    pub fn ensure_slots(&self) -> Result<Vec<u32>, MachineError> {
        let count = self.config.lease.slots.get();
        Ok(self.store().transaction(|tx| -> Result<_, StoreError> {
            tx.ensure_slots(count, |slot, generation| {
                (mint_key(slot, generation), self.mint_action(slot))
            })
        })?)
    }

    /// Records an error for `status`.
    pub fn record_error(&self, context: &str, error: &dyn std::error::Error) {
        let message = berth_log::chain(error);
        warn!(context, error = %message, "agent error");
        self.metrics.error(context);
        if let Err(e) = self
            .store()
            .transaction(|tx| tx.record_error(context, &message))
        {
            warn!(error = %berth_log::chain(&e), "cannot record an error in the store");
        }
    }

    /// Handles one event; returns jobs to run (possibly concurrently) with [`Machine::run_job`].
    pub async fn handle(&self, event: &LedgerEvent) -> Result<Vec<Job>, MachineError> {
        match event {
            LedgerEvent::Purchase {
                tx_hash,
                ledger,
                close_time,
                buyer,
                token_id,
                amount_drops,
                memos,
            } => {
                self.purchase(
                    tx_hash,
                    *ledger,
                    *close_time,
                    buyer,
                    token_id,
                    *amount_drops,
                    memos,
                )
                .await
            }
            LedgerEvent::Payment {
                tx_hash,
                ledger,
                from,
                amount_drops,
                memos,
                ..
            } => {
                self.payment(tx_hash, *ledger, from, *amount_drops, memos)
                    .await
            }
            LedgerEvent::LedgerClosed { ledger, close_time } => {
                self.ledger_closed(*ledger, *close_time)
            }
        }
    }

    /// Jobs left unfinished by a previous run (after a crash): provisioning and ending leases.
    pub fn resume(&self) -> Result<Vec<Job>, MachineError> {
        let store = self.store();
        let reader = store.read();
        let mut jobs = Vec::new();
        for lease in reader.leases(&[LeaseState::Provisioning, LeaseState::Ending])? {
            jobs.push(match lease.state {
                LeaseState::Provisioning => Job::Provision(lease.id),
                _ => Job::End(lease.id),
            });
        }
        Ok(jobs)
    }

    /// Writes the answer row (a Payment carrying `message`) for `request`.
    fn answer(
        &self,
        tx: &Tx<'_>,
        request: &TxHash,
        to: &AccountAddress,
        amount_drops: u64,
        message: &Message,
        state: OutboxState,
    ) -> Result<(), MachineError> {
        let memo = message.to_memo().map_err(|e| MachineError::Memo {
            what: message.kind().as_str(),
            problem: e.to_string(),
        })?;
        let action = LedgerAction::Payment {
            destination: *to,
            amount_drops: amount_drops.max(1),
            memo: MemoHex::from(&memo),
        };
        tx.enqueue_as(answer_key(request), &action, state)?;
        Ok(())
    }

    /// The failure message of a refused request; counts the refusal by its reason.
    fn failure(&self, request: &TxHash, refusal: &Refusal) -> Result<Failure, MachineError> {
        self.metrics.refused(refusal.code);
        let request = *request;
        let mut text = refusal.message.clone();
        while text.len() > 256 {
            text.pop();
        }
        let message: Text<256> = text.parse().map_err(|e| MachineError::Memo {
            what: "failure",
            problem: format!("message: {e:?}"),
        })?;
        Ok(Failure {
            request,
            code: refusal.code,
            message,
        })
    }

    /// Puts the slot back on sale: queues the burn of its token and, at once, the mint of
    /// the next one (the slot forgets the old token). The outbox signs them in this order
    /// with consecutive sequences, and the mint brings its offer
    /// ([`Machine::offer_with_mint`]), so all of them can validate in one ledger.
    fn recycle(
        &self,
        tx: &Tx<'_>,
        slot: u32,
        holder: Option<&AccountAddress>,
    ) -> Result<(), MachineError> {
        let Some(current) = tx.slot(slot)? else {
            return Ok(());
        };
        if let Some(token_id) = current.token_id {
            tx.enqueue(
                OutboxKey::Burn { token: token_id },
                &LedgerAction::Burn {
                    slot,
                    token_id,
                    owner: holder.copied(),
                },
            )?;
        }
        let generation = tx.next_generation(slot)?;
        tx.enqueue(mint_key(slot, generation), &self.mint_action(slot))?;
        Ok(())
    }

    fn offer_action(&self, slot: u32, token_id: &NfTokenId) -> LedgerAction {
        LedgerAction::Offer {
            slot,
            token_id: *token_id,
            amount_drops: self.price(),
        }
    }

    /// A mint of `slot` was just signed and will make `token` (no other mint of the host
    /// is in flight, so its id is known before it validates): the slot is offered with it,
    /// the offer row queued behind the mint so that the outbox signs it next and both can
    /// validate in the same ledger. Nothing while draining or when the slot is not waiting
    /// for this mint. Returns whether the slot is now `offering` the token.
    pub(crate) fn offer_with_mint(
        &self,
        tx: &Tx<'_>,
        slot: u32,
        token: &NfTokenId,
    ) -> Result<bool, StoreError> {
        if tx.draining()? {
            return Ok(false);
        }
        match tx.slot(slot)? {
            Some(current) if current.state == SlotState::Minting && current.token_id.is_none() => {}
            _ => return Ok(false),
        }
        tx.set_slot(slot, SlotState::Offering, Some(token), None)?;
        // The same prediction again (the mint expired and was signed anew): its offer row
        // goes out again too; a failed one is replaced.
        let live = tx
            .outbox(&[
                OutboxState::Pending,
                OutboxState::Prepared,
                OutboxState::Validated,
            ])?
            .iter()
            .any(|row| matches!(&row.action, LedgerAction::Offer { token_id, .. } if token_id == token));
        if !live {
            let first = OutboxKey::Offer {
                token: *token,
                attempt: 0,
            };
            let attempt = if tx.outbox_row(&first.to_string())?.is_some() {
                crate::store::now_secs()
            } else {
                0
            };
            tx.enqueue(
                OutboxKey::Offer {
                    token: *token,
                    attempt,
                },
                &self.offer_action(slot, token),
            )?;
        }
        Ok(true)
    }

    /// The mint of `slot` failed or expired: a slot offering the token predicted for it
    /// waits for a mint again (housekeeping re-queues a failed one; an expired one is signed
    /// again and predicts again).
    fn mint_undone(tx: &Tx<'_>, slot: u32) -> Result<(), StoreError> {
        if let Some(current) = tx.slot(slot)? {
            if matches!(current.state, SlotState::Offering | SlotState::Offered) {
                tx.set_slot(slot, SlotState::Minting, None, None)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn purchase(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        close_time: u64,
        buyer: &AccountAddress,
        token_id: &NfTokenId,
        amount: u64,
        memos: &[Memo],
    ) -> Result<Vec<Job>, MachineError> {
        if self.store().read().request_seen(tx_hash)? {
            return Ok(Vec::new());
        }
        let slot = self.store().read().slot_by_token(token_id)?;
        let decision = self.judge_purchase(buyer, token_id, amount, memos).await?;
        // A slot whose token is sold or being burnt is never recycled by a refusal here.
        let for_sale = slot
            .clone()
            .filter(|s| !matches!(s.state, SlotState::Leased | SlotState::Burning));
        let (slot, (acquire, reply_key)) = match (slot, for_sale, decision) {
            (_, for_sale, Err(why)) => {
                let recycle = for_sale.map(|s| s.slot);
                return self.refuse_purchase(tx_hash, ledger, buyer, amount, recycle, why);
            }
            (None, _, Ok(_)) => {
                let why = refusal(
                    ReasonCode::UnknownLease,
                    format!("token {token_id} is not a lease of this host"),
                );
                return self.refuse_purchase(tx_hash, ledger, buyer, amount, None, why);
            }
            (Some(busy), None, Ok(_)) => {
                let why = refusal(
                    ReasonCode::Internal,
                    format!("slot {} of token {token_id} is not for sale", busy.slot),
                );
                return self.refuse_purchase(tx_hash, ledger, buyer, amount, None, why);
            }
            (Some(_), Some(open), Ok(ok)) => (open.slot, ok),
        };
        // A pooled instance when one is ready (it is the lease's for good), else new ports
        // for an instance created for this lease.
        // A pooled instance was started with the host's defaults; a purchase with its own
        // contract settings (a cluster node's) gets an instance made with them.
        let contract_config = acquire.config.clone().filter(|c| !c.is_default());
        let ports_guard = self.ports.lock().await;
        let pooled = self
            .store()
            .read()
            .pool()?
            .into_iter()
            .find(|p| p.state == PoolState::Ready && contract_config.is_none());
        let (instance, ports) = match &pooled {
            Some(p) => (
                p.instance.clone(),
                berth_provisioner::InstancePorts {
                    user: p.user_port,
                    peer: p.peer_port,
                },
            ),
            None => {
                let reserved = self.store().read().ports_in_use()?;
                match self.provisioner.allocate_ports(&reserved).await {
                    Ok(ports) => (instance_name(tx_hash), ports),
                    Err(ProvisionError::PortsExhausted { kind, range }) => {
                        let why = refusal(
                            ReasonCode::NoCapacity,
                            format!("no free {kind} port in {range}, the price is refunded"),
                        );
                        return self.refuse_purchase(
                            tx_hash,
                            ledger,
                            buyer,
                            amount,
                            Some(slot),
                            why,
                        );
                    }
                    Err(source) => {
                        return Err(MachineError::Provision {
                            instance: instance_name(tx_hash),
                            source,
                        })
                    }
                }
            }
        };
        let node = SigningKey::generate(&mut rand::rngs::OsRng);
        let node_key = PublicKey::from_verifying_key(&node.verifying_key()).map_err(|e| {
            MachineError::Memo {
                what: "node key",
                problem: e.to_string(),
            }
        })?;
        let lease = NewLease {
            purchase_tx: *tx_hash,
            slot,
            token_id: *token_id,
            tenant: *buyer,
            reply_key,
            owner_key: acquire.owner_key,
            contract_id: acquire.contract_id,
            instance: instance.clone(),
            node_secret: hex::encode(node.to_bytes()),
            node_key,
            user_port: ports.user,
            peer_port: ports.peer,
            moments: 1,
            started_at: close_time,
            expires_at: close_time.saturating_add(self.moment_secs()),
            pooled: pooled.is_some(),
            contract_config,
        };
        let id = self.store().transaction(|tx| -> Result<_, StoreError> {
            if !tx.record_request(tx_hash, "acquire", ledger, "leased")? {
                return Ok(None);
            }
            // Under the ports lock nothing else takes a ready pooled instance.
            if pooled.is_some() && !tx.take_pooled(&instance)? {
                return Err(StoreError::BadValue {
                    what: "pooled instance",
                    value: instance.clone(),
                });
            }
            let id = tx.record_lease(&lease)?;
            tx.set_slot(slot, SlotState::Leased, Some(token_id), None)?;
            Ok(Some(id))
        })?;
        drop(ports_guard);
        info!(purchase = %tx_hash, slot, instance = %lease.instance, pooled = lease.pooled, "lease recorded");
        if lease.pooled {
            self.pool_changed.notify_one();
        }
        crate::failpoint::hit("acquire-recorded");
        Ok(id.map(Job::Provision).into_iter().collect())
    }

    /// Checks amount and request; `Ok((request, reply key))` or the refusal.
    async fn judge_purchase(
        &self,
        buyer: &AccountAddress,
        token_id: &NfTokenId,
        amount: u64,
        memos: &[Memo],
    ) -> Result<Result<(berth_schemas::message::AcquireRequest, PublicKey), Refusal>, MachineError>
    {
        if amount != self.price() {
            return Ok(Err(refusal(
                ReasonCode::BadAmount,
                format!(
                    "paid {amount} drops for token {token_id}, the price is {} drops",
                    self.price()
                ),
            )));
        }
        let acquire = match Message::from_memos(memos) {
            None => {
                return Ok(Err(refusal(
                    ReasonCode::BadPayload,
                    "purchase without a berth/acquire memo",
                )))
            }
            Some(Err(e)) => return Ok(Err(refusal(ReasonCode::BadPayload, e.to_string()))),
            Some(Ok(Message::Acquire(acquire))) => acquire,
            Some(Ok(other)) => {
                return Ok(Err(refusal(
                    ReasonCode::BadPayload,
                    format!(
                        "purchase carries {}, not berth/acquire",
                        other.kind().as_str()
                    ),
                )))
            }
        };
        let request = match acquire.sealed.open(&self.message_key) {
            Ok(request) => request,
            Err(e) => {
                return Ok(Err(refusal(
                    ReasonCode::BadPayload,
                    format!("acquire request cannot be opened with the host's message key: {e}"),
                )))
            }
        };
        if let Some(config) = &request.config {
            if let Err(why) = self.judge_contract_config(config) {
                return Ok(Err(refusal(ReasonCode::BadPayload, why)));
            }
        }
        if self.store().read().draining()? {
            return Ok(Err(refusal(
                ReasonCode::Draining,
                "the host is draining and takes no new leases",
            )));
        }
        let reply_key = match request.reply_key {
            Some(key) => key,
            None => match self.ledger.message_key(buyer).await? {
                Some(key) => key,
                None => {
                    return Ok(Err(refusal(
                        ReasonCode::BadPayload,
                        format!("no reply key: the request names none and {buyer} has no ed25519 MessageKey"),
                    )))
                }
            },
        };
        Ok(Ok((request, reply_key)))
    }

    /// Whether this host can run the contract settings a purchase asks for; the reason
    /// names the setting when it cannot.
    fn judge_contract_config(
        &self,
        config: &berth_schemas::message::ContractConfig,
    ) -> Result<(), String> {
        if let Some(conflict) = config.conflict() {
            return Err(format!("contract settings: {conflict}"));
        }
        if config.stage_slice.is_some() {
            return Err(
                "contract settings: stage_slice is not supported by this host (its runtime uses the default)"
                    .to_owned(),
            );
        }
        if config.image == Some(berth_schemas::message::InstanceImage::Node)
            && self.config.runtime.node_image.is_none()
        {
            return Err(
                "contract settings: this host does not offer the node image (Node.js and glibc); pick a host that does, or the minimal image"
                    .to_owned(),
            );
        }
        let min = u64::from(self.config.runtime.min_roundtime_ms.get());
        if let Some(roundtime) = config.roundtime_ms {
            if roundtime.get() < min {
                return Err(format!(
                    "contract settings: roundtime_ms {} is below this host's minimum of {min} ms",
                    roundtime.get()
                ));
            }
        }
        Ok(())
    }

    fn refuse_purchase(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        buyer: &AccountAddress,
        amount: u64,
        slot: Option<u32>,
        why: Refusal,
    ) -> Result<Vec<Job>, MachineError> {
        // The buyer's own mistake costs the host fees (this refund, and the burn, mint and
        // offer that put the slot back on sale): its refund keeps them.
        let buyers_mistake = matches!(
            why.code,
            ReasonCode::BadPayload | ReasonCode::BadAmount | ReasonCode::UnsupportedVersion
        );
        let fees = if buyers_mistake {
            let transactions = if slot.is_some() { 4 } else { 1 };
            self.config
                .lease
                .refusal_fee_drops
                .saturating_mul(transactions)
                .min(amount.saturating_sub(1))
        } else {
            0
        };
        let why = if fees > 0 {
            Refusal {
                code: why.code,
                message: format!("{} ({fees} drops of fees kept)", why.message),
            }
        } else {
            why
        };
        let refund = amount.saturating_sub(fees);
        let failure = self.failure(tx_hash, &why)?;
        info!(purchase = %tx_hash, code = ?why.code, reason = %why.message, refund, fees, "purchase refused");
        self.store()
            .transaction_with(|tx| -> Result<_, MachineError> {
                let outcome = format!("refused: {}", why.message);
                if !tx.record_request(tx_hash, "acquire", ledger, &outcome)? {
                    return Ok(());
                }
                self.answer(
                    tx,
                    tx_hash,
                    buyer,
                    refund,
                    &Message::AcquireErr(failure),
                    OutboxState::Pending,
                )?;
                if let Some(slot) = slot {
                    self.recycle(tx, slot, Some(buyer))?;
                }
                Ok(())
            })?;
        Ok(Vec::new())
    }

    async fn payment(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        from: &AccountAddress,
        amount: Option<u64>,
        memos: &[Memo],
    ) -> Result<Vec<Job>, MachineError> {
        if *from == self.host_address || self.store().read().request_seen(tx_hash)? {
            return Ok(Vec::new());
        }
        let Some(amount) = amount else {
            self.store().transaction(|tx| -> Result<_, StoreError> {
                tx.record_request(tx_hash, "payment", ledger, "ignored: not XRP")?;
                tx.record_error(
                    "payment",
                    &format!("payment {tx_hash} from {from} is not XRP; not answered"),
                )
            })?;
            return Ok(Vec::new());
        };
        let message = match Message::from_memos(memos) {
            None => Err(refusal(
                ReasonCode::BadPayload,
                "payment without a Berth memo",
            )),
            Some(Err(e)) => Err(refusal(ReasonCode::BadPayload, e.to_string())),
            Some(Ok(message)) => Ok(message),
        };
        match message {
            Err(why) => self.refund(tx_hash, ledger, from, amount, "payment", why),
            Ok(Message::Extend(extend)) => {
                self.extend(tx_hash, ledger, from, amount, &extend.lease)
            }
            Ok(Message::Terminate(terminate)) => {
                self.terminate(tx_hash, ledger, from, amount, &terminate.lease)
                    .await
            }
            Ok(message) if message.answers().is_some() => {
                // An answer (of another host, or our own echoed): never answer an answer.
                self.store().transaction(|tx| -> Result<_, StoreError> {
                    tx.record_request(tx_hash, message.kind().as_str(), ledger, "ignored: answer")
                })?;
                Ok(Vec::new())
            }
            Ok(message) => {
                let why = refusal(
                    ReasonCode::BadPayload,
                    format!(
                        "{} is not a request this host serves",
                        message.kind().as_str()
                    ),
                );
                self.refund(tx_hash, ledger, from, amount, "payment", why)
            }
        }
    }

    fn refund(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        to: &AccountAddress,
        amount: u64,
        kind: &str,
        why: Refusal,
    ) -> Result<Vec<Job>, MachineError> {
        let failure = self.failure(tx_hash, &why)?;
        let message = match kind {
            "extend" => Message::ExtendErr(failure),
            "terminate" => Message::TerminateErr(failure),
            _ => Message::Refund(failure),
        };
        info!(request = %tx_hash, kind, code = ?why.code, reason = %why.message, "request refused");
        self.store()
            .transaction_with(|tx| -> Result<_, MachineError> {
                if tx.record_request(tx_hash, kind, ledger, &format!("refused: {}", why.message))? {
                    self.answer(tx, tx_hash, to, amount, &message, OutboxState::Pending)?;
                }
                Ok(())
            })?;
        Ok(Vec::new())
    }

    fn live_lease(&self, token: &NfTokenId) -> Result<Option<Lease>, MachineError> {
        Ok(self
            .store()
            .read()
            .live_lease_by_token(token)?
            .filter(|lease| {
                matches!(
                    lease.state,
                    LeaseState::Provisioning | LeaseState::Active | LeaseState::Grace
                )
            }))
    }

    fn unknown_lease(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        from: &AccountAddress,
        amount: u64,
        kind: &str,
        token: &NfTokenId,
    ) -> Result<Vec<Job>, MachineError> {
        let why = refusal(
            ReasonCode::UnknownLease,
            format!("lease {token} is not live on this host"),
        );
        self.refund(tx_hash, ledger, from, amount, kind, why)
    }

    fn extend(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        from: &AccountAddress,
        amount: u64,
        token: &NfTokenId,
    ) -> Result<Vec<Job>, MachineError> {
        let Some(lease) = self.live_lease(token)? else {
            return self.unknown_lease(tx_hash, ledger, from, amount, "extend", token);
        };
        let moments = amount / self.price();
        let Some(moments_nz) = u32::try_from(moments)
            .ok()
            .and_then(std::num::NonZeroU32::new)
        else {
            let why = refusal(
                ReasonCode::BadAmount,
                format!(
                    "paid {amount} drops, one moment costs {} drops",
                    self.price()
                ),
            );
            return self.refund(tx_hash, ledger, from, amount, "extend", why);
        };
        let remainder = amount - moments * self.price();
        let expires_at = lease
            .expires_at
            .saturating_add(moments.saturating_mul(self.moment_secs()));
        let answer = Message::ExtendOk(ExtendOk {
            request: *tx_hash,
            lease: *token,
            moments: moments_nz,
            expires_at,
        });
        self.store()
            .transaction_with(|tx| -> Result<_, MachineError> {
                if tx.record_request(
                    tx_hash,
                    "extend",
                    ledger,
                    &format!("extended by {moments}"),
                )? {
                    tx.extend_lease(lease.id, moments, expires_at)?;
                    self.answer(tx, tx_hash, from, remainder, &answer, OutboxState::Pending)?;
                }
                Ok(())
            })?;
        info!(request = %tx_hash, lease = %token, moments, remainder, expires_at, "lease extended");
        crate::failpoint::hit("extend-recorded");
        Ok(Vec::new())
    }

    async fn terminate(
        &self,
        tx_hash: &TxHash,
        ledger: u32,
        from: &AccountAddress,
        amount: u64,
        token: &NfTokenId,
    ) -> Result<Vec<Job>, MachineError> {
        let Some(lease) = self.live_lease(token)? else {
            return self.unknown_lease(tx_hash, ledger, from, amount, "terminate", token);
        };
        // The holder of the token when the request validated is the tenant of record: the
        // buyer, or whoever bought the token from them since.
        let holds = self.ledger.holds(from, token, ledger).await?;
        if holds && lease.tenant != *from {
            info!(request = %tx_hash, lease = %token, buyer = %lease.tenant, holder = %from, "termination by a later holder of the token");
        }
        if !holds {
            let why = refusal(
                ReasonCode::NotLeaseOwner,
                "the sender does not hold the lease token",
            );
            return self.refund(tx_hash, ledger, from, amount, "terminate", why);
        }
        let answer = Message::TerminateOk(TerminateOk {
            request: *tx_hash,
            lease: *token,
        });
        let started = self
            .store()
            .transaction_with(|tx| -> Result<_, MachineError> {
                if !tx.record_request(tx_hash, "terminate", ledger, "terminated")? {
                    return Ok(false);
                }
                tx.begin_ending(lease.id, Some(tx_hash), "terminated")?;
                self.answer(tx, tx_hash, from, 1, &answer, OutboxState::Held)?;
                Ok(true)
            })?;
        info!(request = %tx_hash, lease = %token, "lease terminated by its holder");
        Ok(if started {
            vec![Job::End(lease.id)]
        } else {
            Vec::new()
        })
    }

    fn ledger_closed(&self, ledger: u32, close_time: u64) -> Result<Vec<Job>, MachineError> {
        let grace = u64::from(self.config.lease.grace_secs);
        let stall = self.settings.stall_secs;
        let ending = self.store().transaction(|tx| -> Result<_, StoreError> {
            let previous = tx.cursor()?;
            if previous.is_some_and(|c| c.ledger >= ledger) {
                return Ok(Vec::new());
            }
            // The close of `ledger` may come before its transactions: only the ledger before
            // it is known to be fully handled.
            let handled_through = ledger
                .saturating_sub(1)
                .max(previous.map_or(0, |c| c.ledger));
            let resumed_at = match previous {
                Some(c) if close_time.saturating_sub(c.close_time) <= stall => c.resumed_at,
                _ => close_time,
            };
            let mut ending = Vec::new();
            for lease in tx.leases(&[LeaseState::Active, LeaseState::Grace])? {
                if lease.state == LeaseState::Active && lease.expires_at <= close_time {
                    tx.set_lease_state(lease.id, LeaseState::Grace)?;
                    info!(lease = %lease.token_id, "lease expired, grace period begins");
                }
                let deadline = lease.expires_at.max(resumed_at).saturating_add(grace);
                if lease.expires_at <= close_time && close_time >= deadline {
                    tx.begin_ending(lease.id, None, "expired")?;
                    ending.push(Job::End(lease.id));
                }
            }
            tx.set_cursor(Cursor {
                ledger: handled_through,
                close_time,
                resumed_at,
            })?;
            Ok(ending)
        })?;
        Ok(ending)
    }

    /// Records that every transaction up to `ledger` (closed at `close_time`) was handled:
    /// the end of a catch-up from history.
    pub fn caught_up(&self, ledger: u32, close_time: u64) -> Result<Vec<Job>, MachineError> {
        let jobs = self.ledger_closed(ledger.saturating_add(1), close_time)?;
        Ok(jobs)
    }

    /// Runs a job to its end; safe to run again after a crash.
    pub async fn run_job(&self, job: Job) -> Result<(), MachineError> {
        let _permit = self.job_permits.acquire().await;
        let _gate = self.jobs_gate.read().await;
        let (Job::Provision(id) | Job::End(id)) = job;
        let lease = self.store().read().lease(id)?;
        let span = tracing::info_span!(
            "job",
            ?job,
            lease = lease.as_ref().map(|l| tracing::field::display(l.token_id)),
            request = lease
                .as_ref()
                .map(|l| tracing::field::display(l.purchase_tx)),
            instance = lease.as_ref().map(|l| l.instance.as_str()),
        );
        let work = async {
            match job {
                Job::Provision(id) => self.provision(id).await,
                Job::End(id) => self.end(id).await,
            }
        };
        tracing::Instrument::instrument(work, span).await
    }

    /// A hotpocket instance spec (customized for tests), before any pool treatment.
    fn base_spec(
        &self,
        name: &str,
        lease_label: &str,
        identity: InstanceIdentity,
        ports: berth_provisioner::InstancePorts,
    ) -> InstanceSpec {
        let mut spec = InstanceSpec::hotpocket(name, lease_label, identity, ports);
        spec.image = self.config.runtime.image.clone();
        (self.settings.customize)(spec)
    }

    fn spec(&self, lease: &Lease) -> InstanceSpec {
        let identity = InstanceIdentity {
            contract_id: lease.contract_id.to_string(),
            owner_pubkey: lease.owner_key.to_string(),
            node_secret: lease.node_secret.clone(),
        };
        let ports = berth_provisioner::InstancePorts {
            user: lease.user_port,
            peer: lease.peer_port,
        };
        // Every instance takes its identity from `assign` (a file in its state volume), never
        // from its environment, where `docker inspect` would show the node's secret.
        let mut spec = if lease.pooled {
            // The container was made for the pool: its labels name the instance, not the
            // lease. Reconcile must see it as is.
            self.base_spec(&lease.instance, &lease.instance, identity, ports)
                .awaiting_assignment()
        } else {
            self.base_spec(
                &lease.instance,
                &lease.token_id.to_string(),
                identity,
                ports,
            )
            .awaiting_assignment()
        };
        spec.held_stopped = lease.held_stopped.is_some();
        if let Some(config) = &lease.contract_config {
            spec.contract_env = contract_env(config);
            if config.image == Some(berth_schemas::message::InstanceImage::Node) {
                if let Some(node) = &self.config.runtime.node_image {
                    spec.image = node.clone();
                }
            }
        }
        spec
    }

    /// The disk watchdog's findings. The instance of a live lease over its disk quota (the
    /// watchdog stopped it) is held stopped for the rest of the lease: reconcile keeps it
    /// stopped, `leases` shows why, and the error is recorded once. The tenant may still
    /// terminate or let the lease run out. Returns the instances newly held.
    pub fn over_disk_quota(&self, checks: &[DiskCheck]) -> Result<Vec<String>, MachineError> {
        let over: Vec<&DiskCheck> = checks
            .iter()
            .filter(|c| c.used_bytes > c.quota_bytes)
            .collect();
        if over.is_empty() {
            return Ok(Vec::new());
        }
        let held = self.store().transaction(|tx| -> Result<_, StoreError> {
            let live = tx.leases(&[LeaseState::Active, LeaseState::Grace])?;
            let mut held = Vec::new();
            for check in over {
                let usage = format!(
                    "its state volume uses {} of its {} bytes",
                    check.used_bytes, check.quota_bytes
                );
                match live.iter().find(|l| l.instance == check.instance) {
                    Some(lease) if lease.held_stopped.is_none() => {
                        tx.hold_stopped(lease.id, &format!("over its disk quota: {usage}"))?;
                        tx.record_error(
                            "disk-quota",
                            &format!(
                                "lease {} instance {} held stopped: {usage}",
                                lease.token_id, lease.instance
                            ),
                        )?;
                        warn!(lease = %lease.token_id, instance = %lease.instance, used = check.used_bytes, quota = check.quota_bytes, "instance over its disk quota held stopped");
                        held.push(lease.instance.clone());
                    }
                    Some(_) => {}
                    None if check.stopped => tx.record_error(
                        "disk-quota",
                        &format!("instance {} stopped: {usage}", check.instance),
                    )?,
                    None => {}
                }
            }
            Ok(held)
        })?;
        for _ in &held {
            self.metrics.error("disk-quota");
        }
        Ok(held)
    }

    fn pool_spec(&self, instance: &str, ports: berth_provisioner::InstancePorts) -> InstanceSpec {
        let nobody = InstanceIdentity {
            contract_id: String::new(),
            owner_pubkey: String::new(),
            node_secret: String::new(),
        };
        self.base_spec(instance, instance, nobody, ports)
            .awaiting_assignment()
    }

    /// The specs of every instance that should exist (for reconcile): live leases' and the
    /// ready pool's.
    pub fn expected_instances(&self) -> Result<Vec<InstanceSpec>, MachineError> {
        let leases = self.store().read().leases(&[
            LeaseState::Provisioning,
            LeaseState::Active,
            LeaseState::Grace,
        ])?;
        let mut specs: Vec<InstanceSpec> = leases.iter().map(|lease| self.spec(lease)).collect();
        for pooled in self.store().read().pool()? {
            if pooled.state == PoolState::Ready {
                specs.push(self.pool_spec(
                    &pooled.instance,
                    berth_provisioner::InstancePorts {
                        user: pooled.user_port,
                        peer: pooled.peer_port,
                    },
                ));
            }
        }
        Ok(specs)
    }

    async fn create_and_start(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        match self.provisioner.create(spec).await {
            Ok(()) | Err(ProvisionError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        self.provisioner.start(&spec.name).await
    }

    /// The lease's instance running with its identity: a pooled one is assigned (and made
    /// again, on its volume, if it vanished); another is created and started.
    async fn bring_up(&self, lease: &Lease) -> Result<(), ProvisionError> {
        let spec = self.spec(lease);
        if !lease.pooled {
            // Identity first, then start: the runtime finds it at once. A container the
            // engine says it does not know right after it was made (seen on a loaded machine,
            // cause not found) is made again, a few times, rather than failing the purchase.
            let mut attempt = 0;
            loop {
                let made = async {
                    match self.provisioner.create(&spec).await {
                        Ok(()) | Err(ProvisionError::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    self.provisioner.assign(&spec).await?;
                    self.provisioner.start(&spec.name).await
                }
                .await;
                match made {
                    Err(ProvisionError::NotFound { .. }) if attempt < 3 => {
                        attempt += 1;
                        warn!(instance = %spec.name, attempt, "instance vanished while it was made; making it again");
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    other => return other,
                }
            }
        }
        match self.provisioner.assign(&spec).await {
            Err(ProvisionError::NotFound { .. }) => {
                self.create_and_start(&spec).await?;
                self.provisioner.assign(&spec).await
            }
            other => other,
        }
    }

    async fn provision(&self, id: i64) -> Result<(), MachineError> {
        let lease = self
            .store()
            .read()
            .lease(id)?
            .ok_or(MachineError::NoLease { id })?;
        if lease.state != LeaseState::Provisioning {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.bring_up(&lease).await;
        self.metrics
            .provisioned(lease.pooled, started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                crate::failpoint::hit("acquire-started");
                let answer = self.acquire_ok(&lease)?;
                let active = self.store().transaction(|tx| -> Result<_, StoreError> {
                    tx.enqueue(answer_key(&lease.purchase_tx), &answer)?;
                    // A termination may have come while the instance was being made.
                    if !is_state(tx, id, LeaseState::Provisioning)? {
                        return Ok(false);
                    }
                    tx.set_lease_state(id, LeaseState::Active)?;
                    Ok(true)
                })?;
                if active {
                    info!(purchase = %lease.purchase_tx, instance = %lease.instance, "instance running, acquire-ok queued");
                    return Ok(());
                }
                // Terminated while its instance was being made: the purchase is answered all
                // the same, and the instance goes with the lease (its end job may have run
                // already, before the instance existed).
                info!(purchase = %lease.purchase_tx, instance = %lease.instance, "lease ended while its instance was made; destroying it");
                self.destroy(&lease.instance).await?;
                self.end(id).await
            }
            Err(e) => {
                self.record_error("provision", &e);
                let why = refusal(
                    ReasonCode::ProvisioningFailed,
                    format!("instance could not be created: {e}"),
                );
                let failure = self.failure(&lease.purchase_tx, &why)?;
                self.store()
                    .transaction_with(|tx| -> Result<_, MachineError> {
                        // A lease terminated meanwhile keeps its termination's answer.
                        if is_state(tx, id, LeaseState::Provisioning)? {
                            tx.begin_ending(id, None, "provisioning failed")?;
                        }
                        self.answer(
                            tx,
                            &lease.purchase_tx,
                            &lease.tenant,
                            self.price(),
                            &Message::AcquireErr(failure),
                            OutboxState::Held,
                        )?;
                        Ok(tx.set_request_outcome(
                            &lease.purchase_tx,
                            "refused: provisioning failed",
                        )?)
                    })?;
                self.end(id).await
            }
        }
    }

    fn acquire_ok(&self, lease: &Lease) -> Result<LedgerAction, MachineError> {
        let bad = |what: &'static str| {
            move |e: &dyn std::fmt::Display| MachineError::Memo {
                what,
                problem: e.to_string(),
            }
        };
        let details = InstanceDetails {
            name: lease
                .instance
                .parse::<InstanceName>()
                .map_err(|e| bad("instance name")(&e))?,
            host: self.config.host.domain.clone(),
            user_port: std::num::NonZeroU16::new(lease.user_port)
                .ok_or_else(|| bad("user port")(&"zero"))?,
            peer_port: std::num::NonZeroU16::new(lease.peer_port)
                .ok_or_else(|| bad("peer port")(&"zero"))?,
            node_key: lease.node_key,
            contract_id: lease.contract_id,
            lease: lease.token_id,
            expires_at: lease.expires_at,
        };
        let sealed = Sealed::seal(&lease.reply_key, &details).map_err(|e| bad("acquire-ok")(&e))?;
        let message = Message::AcquireOk(AcquireOk {
            request: lease.purchase_tx,
            sealed,
        });
        let memo = message.to_memo().map_err(|e| bad("acquire-ok")(&e))?;
        Ok(LedgerAction::Payment {
            destination: lease.tenant,
            amount_drops: 1,
            memo: MemoHex::from(&memo),
        })
    }

    async fn end(&self, id: i64) -> Result<(), MachineError> {
        let lease = self
            .store()
            .read()
            .lease(id)?
            .ok_or(MachineError::NoLease { id })?;
        if lease.state != LeaseState::Ending {
            return Ok(());
        }
        crate::failpoint::hit("end-begun");
        self.destroy(&lease.instance).await?;
        crate::failpoint::hit("end-destroyed");
        self.store()
            .transaction_with(|tx| -> Result<_, MachineError> {
                // Two jobs may end one lease (its end job and a provisioning job that found
                // it terminated): the slot is recycled once.
                if !is_state(tx, id, LeaseState::Ending)? {
                    return Ok(());
                }
                tx.set_lease_state(id, LeaseState::Ended)?;
                if let Some(request) = &lease.end_request {
                    tx.release(answer_key(request))?;
                }
                tx.release(answer_key(&lease.purchase_tx))?;
                self.recycle(tx, lease.slot, Some(&lease.tenant))
            })?;
        info!(lease = %lease.token_id, instance = %lease.instance, reason = ?lease.end_reason, "lease ended, instance destroyed");
        Ok(())
    }

    /// Applies a validated (or failed) outbox transaction: the next step of its slot.
    pub fn on_outcome(&self, row: &OutboxRow, outcome: &TxOutcome) -> Result<(), MachineError> {
        let TxOutcome::Validated {
            result,
            nftoken_id,
            offer_id,
        } = outcome
        else {
            self.store().transaction(|tx| -> Result<_, StoreError> {
                if let LedgerAction::Mint { slot, .. } = &row.action {
                    Self::mint_undone(tx, *slot)?;
                }
                tx.outbox_retry(&row.key, "expired")
            })?;
            return Ok(());
        };
        let ter = result.ter();
        let success = result.is_success();
        let result = result.to_string();
        let draining = self.store().read().draining()?;
        self.store().transaction(|tx| -> Result<_, StoreError> {
            let state = if success {
                OutboxState::Validated
            } else {
                OutboxState::Failed
            };
            tx.outbox_done(&row.key, state, &result)?;
            if success && key_kind(&row.key) == "answer" {
                self.metrics
                    .answered(crate::store::now_secs().saturating_sub(row.created_at) as f64);
            }
            match &row.action {
                LedgerAction::Mint { slot, .. } => match (success, nftoken_id) {
                    // Offered with its mint already: the predicted id was right.
                    (true, Some(token))
                        if tx.slot(*slot)?.and_then(|s| s.token_id) == Some(*token) => {}
                    (true, Some(token)) => {
                        if let Some(predicted) = tx.slot(*slot)?.and_then(|s| s.token_id) {
                            tx.record_error(
                                "mint",
                                &format!(
                                    "mint of slot {slot} made token {token}, not the predicted {predicted} (another mint of the host account came first); offering {token} now"
                                ),
                            )?;
                        }
                        if draining {
                            tx.set_slot(*slot, SlotState::Held, Some(token), None)?;
                        } else {
                            tx.set_slot(*slot, SlotState::Offering, Some(token), None)?;
                            tx.enqueue(
                                OutboxKey::Offer {
                                    token: *token,
                                    attempt: 0,
                                },
                                &self.offer_action(*slot, token),
                            )?;
                        }
                    }
                    _ => {
                        Self::mint_undone(tx, *slot)?;
                        tx.record_error(
                            "mint",
                            &format!("mint of slot {slot} ended with {result}"),
                        )?
                    }
                },
                LedgerAction::Offer { slot, token_id, .. } => match (success, offer_id) {
                    (true, Some(offer)) => {
                        if tx
                            .slot(*slot)?
                            .is_some_and(|s| s.state == SlotState::Offering)
                        {
                            tx.set_slot(*slot, SlotState::Offered, Some(token_id), Some(offer))?;
                        }
                    }
                    _ => tx.record_error(
                        "offer",
                        &format!("offer of token {token_id} ended with {result}"),
                    )?,
                },
                LedgerAction::Burn { slot, token_id, .. } => {
                    // tecNO_ENTRY: burnt already. The next token's mint was queued with the
                    // burn, except by older builds, whose slots wait `burning` for it.
                    if success || ter == Some(Ter::tecNO_ENTRY) {
                        let waiting = tx.slot(*slot)?.is_some_and(|s| {
                            s.state == SlotState::Burning && s.token_id == Some(*token_id)
                        });
                        if waiting {
                            let generation = tx.next_generation(*slot)?;
                            tx.enqueue(mint_key(*slot, generation), &self.mint_action(*slot))?;
                        }
                    } else {
                        tx.record_error(
                            "burn",
                            &format!("burn of token {token_id} ended with {result}"),
                        )?;
                    }
                }
                LedgerAction::CancelOffer { slot, .. } => {
                    if let Some(current) = tx.slot(*slot)? {
                        if current.state == SlotState::Offered {
                            tx.set_slot(*slot, SlotState::Held, current.token_id.as_ref(), None)?;
                        }
                    }
                }
                LedgerAction::Payment { destination, .. } if !success => tx.record_error(
                    "answer",
                    &format!("payment {} to {destination} ended with {result}", row.key),
                )?,
                LedgerAction::Payment { .. } if key_kind(&row.key) == "host-reg" => {
                    tx.set_setting(crate::status::keys::REGISTERED, "true")?
                }
                LedgerAction::Payment { .. } | LedgerAction::SetMessageKey { .. } => {}
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Stops selling: cancels live offers (slots become `held`); the pool shrinks to
    /// nothing. Returns offers cancelled.
    pub fn drain(&self) -> Result<usize, MachineError> {
        let cancelled = self.store().transaction(drain)?;
        self.pool_changed.notify_one();
        Ok(cancelled)
    }

    /// Offers every `held` slot again. Returns offers queued.
    pub fn undrain(&self) -> Result<usize, MachineError> {
        let price = self.price();
        let offered = self.store().transaction(|tx| undrain(tx, price))?;
        self.pool_changed.notify_one();
        Ok(offered)
    }

    /// Ports held by live leases and the pool.
    pub fn ports_in_use(&self) -> Result<std::collections::BTreeSet<u16>, MachineError> {
        Ok(self.store().read().ports_in_use()?)
    }

    /// The ledger clock and lease count, for logs and heartbeats.
    pub fn free_slots(&self) -> Result<u32, MachineError> {
        let slots = self.store().read().slots()?;
        Ok(slots
            .iter()
            .filter(|s| s.state == SlotState::Offered)
            .count()
            .try_into()
            .unwrap_or(u32::MAX))
    }
}

impl Machine {
    /// Destroys an instance (container and state volume); gone already is fine.
    async fn destroy(&self, instance: &str) -> Result<(), MachineError> {
        self.provisioner
            .destroy(instance)
            .await
            .map(drop)
            .map_err(|source| MachineError::Provision {
                instance: instance.to_owned(),
                source,
            })
    }
}

/// Whether lease `id` is in `state` now (inside the transaction that acts on it).
fn is_state(tx: &Tx<'_>, id: i64, state: LeaseState) -> Result<bool, StoreError> {
    Ok(tx.lease(id)?.is_some_and(|lease| lease.state == state))
}

/// Instance name of a purchase: `l-` and the first 20 hex digits of its hash, lower case.
/// The `HP_*` variables the hotpocket runtime creates its node config from, for the contract
/// settings a purchase asked for (`hotpocket run --help` names them).
pub fn contract_env(config: &berth_schemas::message::ContractConfig) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let join = |items: Vec<String>| items.join(",");
    if let Some(unl) = &config.unl {
        env.push((
            "HP_UNL".to_owned(),
            join(unl.keys().iter().map(ToString::to_string).collect()),
        ));
    }
    if let Some(peers) = &config.peers {
        env.push((
            "HP_PEERS".to_owned(),
            join(peers.addresses().iter().map(ToString::to_string).collect()),
        ));
    }
    if let Some(roundtime) = config.roundtime_ms {
        env.push(("HP_ROUNDTIME_MS".to_owned(), roundtime.get().to_string()));
    }
    if let Some(threshold) = config.threshold {
        env.push(("HP_THRESHOLD".to_owned(), threshold.get().to_string()));
    }
    if config.observer {
        env.push(("HP_OBSERVER".to_owned(), "true".to_owned()));
    }
    if config.await_cluster {
        env.push(("HP_AWAIT_CLUSTER".to_owned(), "true".to_owned()));
    }
    env
}

pub fn instance_name(purchase_tx: &TxHash) -> String {
    format!("l-{}", hex::encode(&purchase_tx.as_bytes()[..10]))
}

/// Stops selling: queues a cancel of every live offer. Returns how many.
pub fn drain(tx: &Tx<'_>) -> Result<usize, StoreError> {
    tx.set_setting("draining", "true")?;
    let mut cancelled = 0;
    for slot in tx.slots()? {
        if let (SlotState::Offered, Some(offer)) = (slot.state, slot.offer_id) {
            tx.enqueue(
                OutboxKey::Cancel { offer },
                &LedgerAction::CancelOffer {
                    slot: slot.slot,
                    offer_id: offer,
                },
            )?;
            cancelled += 1;
        }
    }
    Ok(cancelled)
}

/// Sells again: queues an offer at `price` for every `held` slot. Returns how many.
pub fn undrain(tx: &Tx<'_>, price: u64) -> Result<usize, StoreError> {
    tx.set_setting("draining", "false")?;
    let mut offered = 0;
    let attempt = crate::store::now_secs();
    for slot in tx.slots()? {
        if let (SlotState::Held, Some(token)) = (slot.state, slot.token_id) {
            tx.set_slot(slot.slot, SlotState::Offering, Some(&token), None)?;
            tx.enqueue(
                OutboxKey::Offer { token, attempt },
                &LedgerAction::Offer {
                    slot: slot.slot,
                    token_id: token,
                    amount_drops: price,
                },
            )?;
            offered += 1;
        }
    }
    Ok(offered)
}

/// `result` of a failed outbox row whose work housekeeping queued again.
const RETRIED: &str = "retried by housekeeping";

/// What the pool should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolPlan {
    /// Create this many instances.
    Grow(u32),
    /// Remove this many ready instances.
    Shrink(u32),
    Steady,
}

impl Machine {
    /// The pool's size goal: `agent.pool`, never more than the slots no live lease uses,
    /// nothing while draining.
    pub fn pool_plan(&self) -> Result<PoolPlan, MachineError> {
        let store = self.store();
        let reader = store.read();
        let pool = u32::try_from(reader.pool()?.len()).unwrap_or(u32::MAX);
        let live = u32::try_from(
            reader
                .leases(&[
                    LeaseState::Provisioning,
                    LeaseState::Active,
                    LeaseState::Grace,
                    LeaseState::Ending,
                ])?
                .len(),
        )
        .unwrap_or(u32::MAX);
        let goal = if reader.draining()? {
            0
        } else {
            self.config
                .agent
                .pool
                .min(self.config.lease.slots.get().saturating_sub(live))
        };
        Ok(match pool.cmp(&goal) {
            std::cmp::Ordering::Less => PoolPlan::Grow(goal - pool),
            std::cmp::Ordering::Greater => PoolPlan::Shrink(pool - goal),
            std::cmp::Ordering::Equal => PoolPlan::Steady,
        })
    }

    /// Asks the pool task to look again (the drain state changed).
    pub fn pool_wake(&self) {
        self.pool_changed.notify_one();
    }

    /// Waits until the pool lost an instance or the host's drain state changed.
    pub async fn pool_changed(&self) {
        self.pool_changed.notified().await;
    }

    /// Instances left `creating` by a previous run: destroyed and forgotten (start-up).
    pub async fn resume_pool(&self) -> Result<(), MachineError> {
        let stale: Vec<_> = self
            .store()
            .read()
            .pool()?
            .into_iter()
            .filter(|p| p.state == PoolState::Creating)
            .collect();
        for pooled in stale {
            self.destroy(&pooled.instance).await?;
            self.store()
                .transaction(|tx| tx.take_pooled(&pooled.instance))?;
        }
        Ok(())
    }

    /// Brings the pool to its goal ([`Machine::pool_plan`]): creates and starts the missing
    /// instances at once (within the job permits), or removes surplus ready ones. Returns
    /// the plan it carried out.
    pub async fn tend_pool(&self) -> Result<PoolPlan, MachineError> {
        let plan = self.pool_plan()?;
        match plan {
            PoolPlan::Steady => {}
            PoolPlan::Grow(n) => {
                let mut names = Vec::new();
                {
                    let _ports = self.ports.lock().await;
                    for _ in 0..n {
                        let reserved = self.store().read().ports_in_use()?;
                        let ports = match self.provisioner.allocate_ports(&reserved).await {
                            Ok(ports) => ports,
                            Err(ProvisionError::PortsExhausted { .. }) => break,
                            Err(source) => {
                                return Err(MachineError::Provision {
                                    instance: "pool".to_owned(),
                                    source,
                                })
                            }
                        };
                        let name = format!("p-{}", hex::encode(rand::random::<[u8; 10]>()));
                        self.store()
                            .transaction(|tx| tx.add_pooled(&name, ports.user, ports.peer))?;
                        names.push((name, ports));
                    }
                }
                let results = futures_util::future::join_all(
                    names
                        .iter()
                        .map(|(name, ports)| self.add_to_pool(name, *ports)),
                )
                .await;
                for result in results {
                    if let Err(e) = result {
                        self.record_error("pool", &e);
                    }
                }
            }
            PoolPlan::Shrink(n) => {
                let _ports = self.ports.lock().await;
                let ready: Vec<_> = self
                    .store()
                    .read()
                    .pool()?
                    .into_iter()
                    .filter(|p| p.state == PoolState::Ready)
                    .rev()
                    .take(n as usize)
                    .collect();
                let _gate = self.jobs_gate.read().await;
                for pooled in ready {
                    self.destroy(&pooled.instance).await?;
                    self.store()
                        .transaction(|tx| tx.take_pooled(&pooled.instance))?;
                    info!(instance = %pooled.instance, "pooled instance removed");
                }
            }
        }
        Ok(plan)
    }

    async fn add_to_pool(
        &self,
        name: &str,
        ports: berth_provisioner::InstancePorts,
    ) -> Result<(), MachineError> {
        let _permit = self.job_permits.acquire().await;
        let _gate = self.jobs_gate.read().await;
        let spec = self.pool_spec(name, ports);
        let started = std::time::Instant::now();
        let made = self.create_and_start(&spec).await;
        if let Err(source) = made {
            // Nothing of it stays: not the container, not the record.
            let _ = self.provisioner.destroy(name).await;
            self.store().transaction(|tx| tx.take_pooled(name))?;
            return Err(MachineError::Provision {
                instance: name.to_owned(),
                source,
            });
        }
        let kept = self.store().transaction(|tx| tx.pooled_ready(name))?;
        info!(
            instance = name,
            seconds = started.elapsed().as_secs_f64(),
            kept,
            "pooled instance running"
        );
        Ok(())
    }

    /// Housekeeping found the slot's sell offer gone from the ledger: offers it again,
    /// unless the slot changed meanwhile (a purchase also removes the offer).
    pub fn offer_lost(&self, seen: &crate::store::Slot) -> Result<(), MachineError> {
        let (Some(token), Some(_)) = (seen.token_id, seen.offer_id) else {
            return Ok(());
        };
        let price = self.price();
        let attempt = crate::store::now_secs();
        self.store().transaction(|tx| -> Result<_, StoreError> {
            if tx.slot(seen.slot)?.as_ref() != Some(seen) {
                return Ok(());
            }
            tx.set_slot(seen.slot, SlotState::Offering, Some(&token), None)?;
            tx.enqueue(
                OutboxKey::Offer { token, attempt },
                &LedgerAction::Offer {
                    slot: seen.slot,
                    token_id: token,
                    amount_drops: price,
                },
            )
            .map(drop)
        })?;
        Ok(())
    }

    /// Housekeeping: slots whose mint or offer failed get them queued again (a new
    /// attempt's key); each failed row is marked retried.
    pub fn requeue_failed(&self) -> Result<(), MachineError> {
        let failed: Vec<_> = self
            .store()
            .read()
            .outbox(&[OutboxState::Failed])?
            .into_iter()
            .filter(|row| {
                !matches!(
                    row.result.as_deref(),
                    Some(RETRIED | crate::outbox::SUPERSEDED)
                )
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let price = self.price();
        let attempt = crate::store::now_secs();
        self.store()
            .transaction_with(|tx| -> Result<(), MachineError> {
                let draining = tx.draining()?;
                for slot in tx.slots()? {
                    let lost = failed.iter().any(|row| match &row.action {
                        LedgerAction::Mint { slot: s, .. } => *s == slot.slot,
                        LedgerAction::Offer { slot: s, .. } => *s == slot.slot,
                        _ => false,
                    });
                    if !lost {
                        continue;
                    }
                    match (slot.state, slot.token_id) {
                        (SlotState::Minting, None) => {
                            tx.enqueue(
                                OutboxKey::Mint {
                                    slot: slot.slot,
                                    generation: slot.generation,
                                    attempt,
                                },
                                &self.mint_action(slot.slot),
                            )?;
                        }
                        (SlotState::Offering, Some(token)) if !draining => {
                            tx.enqueue(
                                OutboxKey::Offer { token, attempt },
                                &LedgerAction::Offer {
                                    slot: slot.slot,
                                    token_id: token,
                                    amount_drops: price,
                                },
                            )?;
                        }
                        _ => {}
                    }
                }
                for row in &failed {
                    tx.outbox_done(&row.key, OutboxState::Failed, RETRIED)?;
                }
                Ok(())
            })
    }
}
