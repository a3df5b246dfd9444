//! `berth-agent run`: connect, set the MessageKey, register, mint and offer, catch up from the
//! cursor, then follow the ledger until shutdown.
//!
//! Tasks (all on one [`TaskTracker`], stopped by one [`CancellationToken`]):
//! - the event loop (this function): stream transactions and ledger closes into the machine,
//!   catch-up after a reconnect, heartbeats, housekeeping on the cron schedule, watchdog pings;
//! - the outbox worker: signs, submits and settles outbox rows;
//! - one task per job (provisioning or ending a lease), so 50 purchases provision at once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use berth_mb_xrpl::history::account_history;
use berth_mb_xrpl::{Client, ClientConfig, StreamEvent, SubmitConfig, Submitter};
use berth_provisioner::{
    HostResources, InstanceState, PortRange, Provisioner, ProvisionerConfig, ReconcileAction,
};
use berth_schemas::config::HostConfig;
use berth_schemas::memo::Message;
use berth_schemas::message::{Heartbeat, HostInfo};
use thiserror::Error;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ledger::{LedgerAction, LedgerError, MemoHex};
use crate::machine::{Job, Machine, MachineError, MachineSettings};
use crate::setup::HostKeys;
use crate::status::keys;
use crate::store::{LeaseState, OutboxState, SlotState, Store, StoreError};
use crate::xrpl::{event_of, XrplLedger};

/// Why `run` stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("ledger client")]
    Client(#[from] berth_mb_xrpl::ClientError),
    #[error("ledger submitter")]
    Submit(#[from] berth_mb_xrpl::SubmitError),
    #[error("housekeeping.schedule {schedule:?} is not a cron expression: {problem}")]
    Schedule { schedule: String, problem: String },
    #[error("cannot create data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Knobs of `run` that are not in the config file.
#[derive(Clone)]
pub struct RunSettings {
    pub machine: MachineSettings,
    /// Send sd_notify READY / WATCHDOG / STOPPING.
    pub notify: bool,
    /// Pause of the outbox worker when it found nothing to do.
    pub outbox_idle: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            machine: MachineSettings::default(),
            notify: true,
            outbox_idle: Duration::from_millis(100),
        }
    }
}

/// The provisioner's configuration from the host config: namespace `berth`, the totals split
/// over the slots, the configured port ranges.
pub fn provisioner_config(config: &HostConfig) -> ProvisionerConfig {
    let r = &config.resources;
    let mut provisioner = ProvisionerConfig::new(
        "berth",
        HostResources {
            cpu_millis: u64::from(r.cpu_millicores.get()),
            memory_mib: u64::from(r.memory_mb.get()),
            swap_mib: u64::from(r.swap_mb),
            disk_mib: u64::from(r.disk_mb.get()),
            instances: config.lease.slots.get(),
        },
        PortRange::new(config.ports.user.first, config.ports.user.last),
        PortRange::new(config.ports.peer.first, config.ports.peer.last),
    );
    provisioner.pids_limit = i64::try_from(config.runtime.pids_limit.get()).unwrap_or(i64::MAX);
    provisioner
}

fn notify(settings: &RunSettings, state: &[sd_notify::NotifyState<'_>]) {
    if settings.notify {
        if let Err(e) = sd_notify::notify(false, state) {
            debug!(error = %e, "sd_notify failed");
        }
    }
}

fn set(machine: &Machine, key: &str, value: &str) -> Result<(), StoreError> {
    machine.store().transaction(|tx| tx.set_setting(key, value))
}

fn memo_action(
    to: &str,
    message: &Message,
) -> Result<LedgerAction, berth_schemas::memo::MemoError> {
    Ok(LedgerAction::Payment {
        destination: to.to_owned(),
        amount_drops: 1,
        memo: MemoHex::from(&message.to_memo()?),
    })
}

/// Runs the agent until `shutdown` fires. The provisioner is passed in (Docker in the binary).
pub async fn run(
    config: HostConfig,
    keys: HostKeys,
    provisioner: Arc<dyn Provisioner>,
    settings: RunSettings,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let schedule = cron::Schedule::from_str(&config.housekeeping.schedule).map_err(|e| {
        RunError::Schedule {
            schedule: config.housekeeping.schedule.clone(),
            problem: e.to_string(),
        }
    })?;
    std::fs::create_dir_all(&config.host.data_dir).map_err(|source| RunError::DataDir {
        path: config.host.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&crate::database_path(&config))?;
    let host = keys.address();
    info!(version = env!("CARGO_PKG_VERSION"), host = %host, servers = ?config.ledger.servers, "berth-agent starting");

    // `Client::start` and a first request rather than `Client::connect`, whose future is not
    // `Send` in this version of berth-mb-xrpl (it holds a watch guard across an await).
    let client = Client::start(ClientConfig::new(config.ledger.servers.clone()))?;
    client.validated_ledger_index().await?;
    let mut events = client.events();
    client
        .subscribe_accounts(std::slice::from_ref(&host))
        .await?;
    client.subscribe_ledger().await?;
    let submitter = Submitter::new(
        client.clone(),
        keys.account_key(),
        SubmitConfig {
            max_fee_drops: config.ledger.max_fee_drops.get(),
            ..SubmitConfig::default()
        },
    )?;
    let xrpl = Arc::new(XrplLedger::new(client.clone(), submitter));
    let machine = Arc::new(Machine::new(
        store,
        provisioner.clone(),
        xrpl.clone(),
        config.clone(),
        host.clone(),
        keys.message.clone(),
        settings.machine.clone(),
    ));
    set(&machine, keys::HOST_ADDRESS, &host)?;

    let tracker = TaskTracker::new();
    // MessageKey and registration first: the outbox keeps them in order before the mints.
    let message_key = keys
        .message_public()
        .map_err(|e| MachineError::Memo {
            what: "message key",
            problem: e.to_string(),
        })?
        .to_ledger_hex();
    if xrpl.message_key_hex(&host).await?.as_deref() != Some(message_key.as_str()) {
        machine.store().transaction(|tx| {
            tx.enqueue(
                &format!("message-key:{message_key}"),
                &LedgerAction::SetMessageKey {
                    key_hex: message_key.clone(),
                },
            )
            .map(drop)
        })?;
    }
    let registration = registration_action(&config)?;
    let registration_key = format!(
        "host-reg:{}",
        hex::encode(sha2_digest(
            &serde_json::to_vec(&registration).unwrap_or_default()
        ))
    );
    machine
        .store()
        .transaction(|tx| tx.enqueue(&registration_key, &registration).map(drop))?;

    check_funds_and_mint(&machine, &xrpl).await?;

    // The outbox worker: signs in order, then submits each prepared row on its own task, so
    // an answer never waits for the validation of another.
    {
        let machine = machine.clone();
        let token = shutdown.clone();
        let idle = settings.outbox_idle;
        let tasks = tracker.clone();
        tracker.spawn(async move {
            let in_flight = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
            while !token.is_cancelled() {
                let prepared = tokio::select! {
                    _ = token.cancelled() => break,
                    result = machine.prepare_pending() => result,
                };
                match prepared {
                    Ok(rows) => {
                        for row in rows {
                            let fresh = in_flight
                                .lock()
                                .map(|mut set| set.insert(row.key.clone()))
                                .unwrap_or(false);
                            if !fresh {
                                continue;
                            }
                            let (machine, in_flight, token) =
                                (machine.clone(), in_flight.clone(), token.clone());
                            tasks.spawn(async move {
                                tokio::select! {
                                    _ = token.cancelled() => {}
                                    result = machine.submit_row(&row) => {
                                        if let Err(e) = result {
                                            machine.record_error("outbox", &e);
                                            // Not again at once: the ledger may be away.
                                            tokio::time::sleep(Duration::from_secs(1)).await;
                                        }
                                    }
                                }
                                if let Ok(mut set) = in_flight.lock() {
                                    set.remove(&row.key);
                                }
                            });
                        }
                    }
                    Err(e) => machine.record_error("outbox", &e),
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(idle) => {}
                }
            }
        });
    }

    for job in machine.resume()? {
        spawn_job(&tracker, &machine, job);
    }
    let catch_up_done = catch_up(&machine, &xrpl, &tracker).await?;
    info!(host = %host, "caught up; following the ledger");
    notify(&settings, &[sd_notify::NotifyState::Ready]);

    let mut watchdog_usec = 0u64;
    let watchdog = if settings.notify && sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        Duration::from_micros(watchdog_usec / 2)
    } else {
        Duration::from_secs(3600)
    };
    let mut watchdog = tokio::time::interval(watchdog);
    let heartbeat_every = Duration::from_secs(u64::from(config.lease.moment_secs.get()));
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut draining = machine.store().read().draining()?;
    // True while some request could not be handled: ledger closes then catch up from the
    // cursor instead of moving it.
    let mut stale = !catch_up_done;

    loop {
        let next_housekeeping = schedule
            .upcoming(chrono::Utc)
            .next()
            .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(600));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = watchdog.tick() => notify(&settings, &[sd_notify::NotifyState::Watchdog]),
            _ = heartbeat.tick() => {
                if let Err(e) = send_heartbeat(&machine, &config) {
                    machine.record_error("heartbeat", &e);
                }
            }
            _ = tokio::time::sleep(next_housekeeping) => {
                if let Err(e) = housekeeping(&machine, &xrpl, provisioner.as_ref(), &tracker).await {
                    machine.record_error("housekeeping", &e);
                }
            }
            event = events.recv() => match event {
                Ok(StreamEvent::Transaction(tx)) => {
                    if let Some(event) = event_of(&tx, &host) {
                        // A failed request keeps the cursor where it is until a catch-up
                        // handles it: nothing is skipped.
                        stale |= !handle(&machine, &tracker, &event).await;
                    }
                }
                Ok(StreamEvent::LedgerClosed { index, time, .. }) => {
                    set(&machine, keys::LEDGER_TIP, &index.to_string())?;
                    if stale {
                        match catch_up(&machine, &xrpl, &tracker).await {
                            Ok(done) => stale = !done,
                            Err(e) => machine.record_error("catch-up", &e),
                        }
                    } else {
                        let event = crate::ledger::LedgerEvent::LedgerClosed { ledger: index, close_time: time };
                        handle(&machine, &tracker, &event).await;
                    }
                    let now_draining = machine.store().read().draining()?;
                    if now_draining && !draining {
                        info!("drain requested: offers are being cancelled");
                    }
                    draining = now_draining;
                }
                Ok(StreamEvent::Reconnected { url }) => {
                    info!(%url, "reconnected; catching up from the cursor");
                    match catch_up(&machine, &xrpl, &tracker).await {
                        Ok(done) => stale = !done,
                        Err(e) => {
                            stale = true;
                            machine.record_error("catch-up", &e);
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "event stream lagged; catching up from the cursor");
                    match catch_up(&machine, &xrpl, &tracker).await {
                        Ok(done) => stale = !done,
                        Err(e) => {
                            stale = true;
                            machine.record_error("catch-up", &e);
                        }
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    info!("shutting down: waiting for work in flight");
    notify(&settings, &[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    client.shutdown().await;
    info!("berth-agent stopped");
    Ok(())
}

fn sha2_digest(bytes: &[u8]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn registration_action(config: &HostConfig) -> Result<LedgerAction, MachineError> {
    let bad = |what: &'static str| {
        move |e: &dyn std::fmt::Display| MachineError::Memo {
            what,
            problem: e.to_string(),
        }
    };
    let info = HostInfo {
        version: env!("CARGO_PKG_VERSION")
            .parse()
            .map_err(|e| bad("host-reg")(&format!("{e:?}")))?,
        domain: config.host.domain.clone(),
        country: config.host.country,
        cpu_millicores: config.resources.cpu_millicores,
        memory_mb: config.resources.memory_mb,
        disk_mb: config.resources.disk_mb,
        slots: config.lease.slots,
        moment_secs: config.lease.moment_secs,
        price: config.lease.price_drops,
        cpu_model: None,
        description: config.host.description.clone(),
    };
    memo_action(&config.ledger.registry.to_string(), &Message::HostReg(info))
        .map_err(|e| bad("host-reg")(&e))
}

fn send_heartbeat(machine: &Machine, config: &HostConfig) -> Result<(), MachineError> {
    let free_slots = machine.free_slots()?;
    let action = memo_action(
        &config.ledger.registry.to_string(),
        &Message::Heartbeat(Heartbeat { free_slots }),
    )
    .map_err(|e| MachineError::Memo {
        what: "heartbeat",
        problem: e.to_string(),
    })?;
    let now = crate::store::now_secs();
    machine.store().transaction(|tx| {
        tx.enqueue(&format!("heartbeat:{now}"), &action)?;
        tx.set_setting(keys::HEARTBEAT, &now.to_string())
    })?;
    Ok(())
}

/// Checks balance against the reserve the slots need, then creates missing slots.
async fn check_funds_and_mint(machine: &Machine, xrpl: &XrplLedger) -> Result<(), RunError> {
    let facts = xrpl.account_facts().await?;
    set(machine, keys::BALANCE, &facts.balance_drops.to_string())?;
    set(machine, keys::RESERVE, &facts.reserve_drops.to_string())?;
    let existing = machine.store().read().slots()?.len() as u64;
    let wanted = u64::from(machine.config().lease.slots.get());
    let new_slots = wanted.saturating_sub(existing);
    if new_slots == 0 {
        return Ok(());
    }
    // Each new slot: one sell offer (one owner object), and a token page per 32 tokens.
    let objects = new_slots + new_slots.div_ceil(32);
    let fees = new_slots * 2 * machine.config().ledger.max_fee_drops.get();
    let needed = facts.reserve_drops + objects * facts.owner_reserve_drops + fees;
    if facts.balance_drops < needed {
        let message = format!(
            "balance {} drops is below the {needed} drops needed to mint and offer {new_slots} slots \
             (reserve {} + {objects} objects x {} + fees {fees}); fund the account and restart",
            facts.balance_drops, facts.reserve_drops, facts.owner_reserve_drops
        );
        warn!(%message, "not minting");
        machine
            .store()
            .transaction(|tx| tx.record_error("reserve", &message))?;
        return Ok(());
    }
    let created = machine.ensure_slots()?;
    info!(slots = created.len(), "slots created, mints queued");
    Ok(())
}

fn spawn_job(tracker: &TaskTracker, machine: &Arc<Machine>, job: Job) {
    let machine = machine.clone();
    tracker.spawn(async move {
        // A failed job is left in its state; housekeeping and the next start run it again.
        if let Err(e) = machine.run_job(job).await {
            machine.record_error("job", &e);
        }
    });
}

/// Handles one event and spawns its jobs; false when it failed (it is then not recorded,
/// and a catch-up from the cursor replays it).
async fn handle(
    machine: &Arc<Machine>,
    tracker: &TaskTracker,
    event: &crate::ledger::LedgerEvent,
) -> bool {
    match machine.handle(event).await {
        Ok(jobs) => {
            for job in jobs {
                spawn_job(tracker, machine, job);
            }
            true
        }
        Err(e) => {
            machine.record_error("event", &e);
            false
        }
    }
}

/// Handles the account's history from the cursor to the validated ledger. Moves the cursor
/// only when every request was handled; returns whether it did.
async fn catch_up(
    machine: &Arc<Machine>,
    xrpl: &XrplLedger,
    tracker: &TaskTracker,
) -> Result<bool, RunError> {
    let cursor = machine.store().read().cursor()?;
    let (validated, close_time) = xrpl.validated_ledger().await?;
    let Some(cursor) = cursor else {
        // First start: nothing of this host can be in the history before now.
        machine.caught_up(validated, close_time)?;
        return Ok(true);
    };
    let history = account_history(xrpl.client(), xrpl.account(), cursor.ledger + 1).await?;
    let count = history.transactions.len();
    let mut all_handled = true;
    for tx in &history.transactions {
        if let Some(event) = event_of(tx, xrpl.account()) {
            all_handled &= handle(machine, tracker, &event).await;
        }
    }
    if !all_handled {
        warn!(
            from = cursor.ledger + 1,
            "a request failed; the cursor stays for the next catch-up"
        );
        return Ok(false);
    }
    for job in machine.caught_up(history.validated_ledger, close_time)? {
        spawn_job(tracker, machine, job);
    }
    info!(
        from = cursor.ledger + 1,
        to = history.validated_ledger,
        transactions = count,
        "caught up"
    );
    Ok(true)
}

/// `result` of a failed outbox row whose work housekeeping queued again.
const RETRIED: &str = "retried by housekeeping";

/// Reconciles ledger, SQLite and Docker; records instance health; re-queues lost work.
async fn housekeeping(
    machine: &Arc<Machine>,
    xrpl: &XrplLedger,
    provisioner: &dyn Provisioner,
    tracker: &TaskTracker,
) -> Result<(), RunError> {
    let facts = xrpl.account_facts().await?;
    set(machine, keys::BALANCE, &facts.balance_drops.to_string())?;
    set(machine, keys::RESERVE, &facts.reserve_drops.to_string())?;
    // Docker: exactly the instances of live leases. Not while a lease is being provisioned
    // or ended (its job owns its instance), and no job starts meanwhile.
    let gate = machine.exclusive().await;
    let busy = !machine.resume()?.is_empty();
    let reconciled = if busy {
        Ok(Vec::new())
    } else {
        provisioner.reconcile(&machine.expected_instances()?).await
    };
    drop(gate);
    match reconciled {
        Ok(actions) => {
            for action in actions {
                match action {
                    ReconcileAction::Kept { .. } => {}
                    other => info!(action = ?other, "reconcile"),
                }
            }
        }
        Err(e) => machine.record_error("reconcile", &e),
    }
    let live = machine
        .store()
        .read()
        .leases(&[LeaseState::Active, LeaseState::Grace])?;
    for lease in live {
        let health = match provisioner.health(&lease.instance).await {
            Ok(berth_provisioner::Health::Answering) => "answering".to_owned(),
            Ok(berth_provisioner::Health::NotAnswering) => "not answering".to_owned(),
            Ok(berth_provisioner::Health::NotRunning(InstanceState::Exited)) => "exited".to_owned(),
            Ok(berth_provisioner::Health::NotRunning(state)) => state.to_string(),
            Err(e) => format!("unknown: {e}"),
        };
        set(
            machine,
            &format!("{}{}", keys::HEALTH, lease.instance),
            &health,
        )?;
    }
    // Ledger: an offer the ledger no longer has (cancelled or expired behind our back) is
    // made again.
    let offered: Vec<_> = machine
        .store()
        .read()
        .slots()?
        .into_iter()
        .filter(|s| s.state == SlotState::Offered)
        .collect();
    for slot in offered {
        let (Some(token), Some(offer)) = (&slot.token_id, &slot.offer_id) else {
            continue;
        };
        if xrpl.sell_offers(token).await?.contains(offer) {
            continue;
        }
        warn!(slot = slot.slot, %offer, "sell offer lost; offering again");
        let price = machine.config().lease.price_drops.get();
        let now = crate::store::now_secs();
        machine.store().transaction(|tx| {
            // Only if nothing changed meanwhile (a purchase also removes the offer).
            if tx.slot(slot.slot)?.as_ref() != Some(&slot) {
                return Ok(());
            }
            tx.set_slot(slot.slot, SlotState::Offering, Some(token), None)?;
            tx.enqueue(
                &format!("offer:{token}:{now}"),
                &LedgerAction::Offer {
                    slot: slot.slot,
                    token_id: token.clone(),
                    amount_drops: price,
                },
            )
            .map(drop)
        })?;
    }
    // Ledger: slots whose mint or offer failed get them queued again.
    let failed: Vec<_> = machine
        .store()
        .read()
        .outbox(&[OutboxState::Failed])?
        .into_iter()
        .filter(|row| row.result.as_deref() != Some(RETRIED))
        .collect();
    let now = crate::store::now_secs();
    let price = machine.config().lease.price_drops.get();
    let draining = machine.store().read().draining()?;
    machine.store().transaction(|tx| {
        for slot in tx.slots()? {
            let lost = failed.iter().any(|row| match &row.action {
                LedgerAction::Mint { slot: s, .. } => *s == slot.slot,
                LedgerAction::Offer { slot: s, .. } => *s == slot.slot,
                _ => false,
            });
            if !lost {
                continue;
            }
            match (slot.state, &slot.token_id) {
                (SlotState::Minting, None) => {
                    tx.enqueue(
                        &format!("mint:{}:{}:{now}", slot.slot, slot.generation),
                        &LedgerAction::Mint {
                            slot: slot.slot,
                            uri_hex: machine.config().lease_uri(slot.slot).to_hex(),
                        },
                    )?;
                }
                (SlotState::Offering, Some(token)) if !draining => {
                    tx.enqueue(
                        &format!("offer:{token}:{now}"),
                        &LedgerAction::Offer {
                            slot: slot.slot,
                            token_id: token.clone(),
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
    })?;
    // Leases stuck in provisioning or ending (a job failed): run their jobs again.
    for job in machine.resume()? {
        spawn_job(tracker, machine, job);
    }
    Ok(())
}
