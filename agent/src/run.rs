//! `berth-agent run`: the supervisor. Connects, sets the MessageKey, registers, mints and
//! offers, catches up from the cursor, then runs the agent as named tasks that it owns until
//! shutdown.
//!
//! Tasks (all on one [`TaskTracker`], stopped by one [`CancellationToken`]):
//! - `stream`: transactions and ledger closes into the machine, catch-up after a reconnect
//!   or a failed request; every turn of its loop is progress for the watchdog;
//! - `expiry`: ledger closes (in order, from `stream`) into the machine: the cursor, leases
//!   entering grace and ending;
//! - `outbox`: signs, submits and settles outbox rows;
//! - `housekeeping`: on the cron schedule, reconcile with Docker and the ledger, bounded
//!   parallel health checks, the disk-quota watchdog, re-queues decided by the machine;
//! - `heartbeat`: once the offers are live, then once per moment;
//! - `pool`: keeps the pool of started, unassigned instances at its goal;
//! - `watchdog`: `WATCHDOG=1` while `stream` makes progress, never waiting on the others;
//! - `metrics`: the Prometheus endpoint, when `agent.metrics` is set;
//! - one task per job (provisioning or ending a lease), so 50 purchases provision at once.
//!
//! Every decision is the [`Machine`]'s: the tasks only feed it events and carry out what it
//! returns.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_mb_xrpl::history::account_history;
use berth_mb_xrpl::{Client, ClientConfig, StreamEvent, SubmitConfig, Submitter};
use berth_provisioner::{
    EgressPolicy, HostResources, InstanceState, PortRange, Provisioner, ProvisionerConfig,
    ReconcileAction,
};
use berth_schemas::config::{HostConfig, PrivateEgress};
use berth_schemas::field::AccountAddress;
use berth_schemas::memo::Message;
use berth_schemas::message::{Heartbeat, HostInfo};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::ledger::{LedgerAction, LedgerError, LedgerEvent, MemoHex};
use crate::machine::{Job, Machine, MachineError, MachineSettings};
use crate::outbox::OutboxKey;
use crate::setup::HostKeys;
use crate::status::keys;
use crate::store::{LeaseState, SlotState, Store, StoreError};
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
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Knobs of `run` that are not in the config file.
#[derive(Clone)]
pub struct RunSettings {
    pub machine: MachineSettings,
    /// Send sd_notify READY / WATCHDOG / STATUS / STOPPING.
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

/// The service manager, as the supervisor sees it: a narrow trait so tests can record.
pub trait Notifier: Send + Sync {
    /// Sends states (`READY=1`, `WATCHDOG=1`, `STATUS=…`, `STOPPING=1`).
    fn notify(&self, state: &[sd_notify::NotifyState<'_>]);
    /// The watchdog timeout the manager set, if any.
    fn watchdog_timeout(&self) -> Option<Duration>;
}

/// systemd's notification socket (`NOTIFY_SOCKET`).
#[derive(Debug, Default)]
pub struct SystemdNotifier;

impl Notifier for SystemdNotifier {
    fn notify(&self, state: &[sd_notify::NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(false, state) {
            debug!(error = %berth_log::chain(&e), "sd_notify failed");
        }
    }

    fn watchdog_timeout(&self) -> Option<Duration> {
        let mut usec = 0u64;
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
    }
}

/// No service manager.
#[derive(Debug, Default)]
pub struct SilentNotifier;

impl Notifier for SilentNotifier {
    fn notify(&self, _state: &[sd_notify::NotifyState<'_>]) {}
    fn watchdog_timeout(&self) -> Option<Duration> {
        None
    }
}

/// Progress of the event path: `stream` bumps it every turn of its loop (and while idle),
/// the watchdog pings only when it moved.
#[derive(Debug, Default)]
pub struct Progress(AtomicU64);

impl Progress {
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The watchdog task: every `timeout / 2`, `WATCHDOG=1` when `progress` moved since the
/// last look. It awaits nothing but its timer, so no other task can hold it up.
pub async fn watchdog(
    notifier: Arc<dyn Notifier>,
    timeout: Duration,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(timeout / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = progress.get();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = progress.get();
        if now != seen {
            notifier.notify(&[sd_notify::NotifyState::Watchdog]);
            seen = now;
        } else {
            warn!("event path made no progress for half the watchdog timeout: not pinging");
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
    provisioner.egress = match config.runtime.private_egress {
        PrivateEgress::Block => EgressPolicy::Block,
        PrivateEgress::BlockIfPossible => EgressPolicy::BlockIfPossible,
        PrivateEgress::Allow => EgressPolicy::Allow,
    };
    provisioner.egress_allow = config.runtime.egress_allow.clone();
    provisioner
}

fn set(machine: &Machine, key: &str, value: &str) -> Result<(), StoreError> {
    machine.store().transaction(|tx| tx.set_setting(key, value))
}

fn memo_action(
    to: AccountAddress,
    message: &Message,
) -> Result<LedgerAction, berth_schemas::memo::MemoError> {
    Ok(LedgerAction::Payment {
        destination: to,
        amount_drops: 1,
        memo: MemoHex::from(&message.to_memo()?),
    })
}

/// How `run` talks to the service manager and how often the watchdog looks.
#[derive(Clone)]
pub struct Supervision {
    pub notifier: Arc<dyn Notifier>,
    /// Overrides the manager's watchdog timeout (tests).
    pub watchdog: Option<Duration>,
}

/// Runs the agent until `shutdown` fires. The provisioner is passed in (Docker in the binary).
pub async fn run(
    config: HostConfig,
    keys: HostKeys,
    provisioner: Arc<dyn Provisioner>,
    settings: RunSettings,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let notifier: Arc<dyn Notifier> = if settings.notify {
        Arc::new(SystemdNotifier)
    } else {
        Arc::new(SilentNotifier)
    };
    let supervision = Supervision {
        notifier,
        watchdog: None,
    };
    run_supervised(config, keys, provisioner, settings, supervision, shutdown).await
}

/// [`run`] with the service manager passed in.
pub async fn run_supervised(
    config: HostConfig,
    keys: HostKeys,
    provisioner: Arc<dyn Provisioner>,
    settings: RunSettings,
    supervision: Supervision,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let notifier = supervision.notifier.clone();
    let status = |text: &str| notifier.notify(&[sd_notify::NotifyState::Status(text)]);
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
    status("connecting to the ledger");
    let metrics_listener = match config.agent.metrics {
        Some(address) => Some(crate::metrics::bind(address).await?),
        None => None,
    };

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
        keys.account_address(),
        keys.message.clone(),
        settings.machine.clone(),
    ));
    set(&machine, keys::HOST_ADDRESS, &host)?;

    let tracker = TaskTracker::new();
    if let Some(listener) = metrics_listener {
        tracker.spawn(
            crate::metrics::serve(listener, machine.clone(), shutdown.clone())
                .instrument(tracing::info_span!("task", name = "metrics")),
        );
    }
    // MessageKey and registration first: the outbox keeps them in order before the mints.
    let message_key = keys
        .message_public()
        .map_err(|e| MachineError::Memo {
            what: "message key",
            problem: e.to_string(),
        })?
        .to_ledger_hex();
    if xrpl.message_key_hex(&host).await?.as_deref() != Some(message_key.as_str()) {
        machine.store().transaction(|tx| -> Result<_, StoreError> {
            tx.enqueue(
                OutboxKey::MessageKey {
                    key_hex: message_key.clone(),
                },
                &LedgerAction::SetMessageKey {
                    key_hex: message_key.clone(),
                },
            )
            .map(drop)
        })?;
    }
    let registration = registration_action(&config)?;
    let registration_key = OutboxKey::HostReg {
        digest: hex::encode(sha2_digest(
            &serde_json::to_vec(&registration).unwrap_or_default(),
        )),
    };
    machine
        .store()
        .transaction(|tx| tx.enqueue(registration_key, &registration).map(drop))?;

    check_funds_and_mint(&machine, &xrpl).await?;

    tracker.spawn(
        outbox_task(
            machine.clone(),
            tracker.clone(),
            shutdown.clone(),
            settings.outbox_idle,
        )
        .instrument(tracing::info_span!("task", name = "outbox")),
    );

    for job in machine.resume()? {
        spawn_job(&tracker, &machine, job);
    }
    if let Err(e) = machine.resume_pool().await {
        machine.record_error("pool", &e);
    }
    status("catching up from the cursor");
    let catch_up_done = catch_up(&machine, &xrpl, &tracker).await?;
    info!(host = %host, "caught up; following the ledger");
    notifier.notify(&[sd_notify::NotifyState::Ready]);
    status("following the ledger");

    let progress = Arc::new(Progress::default());
    let watchdog_timeout = supervision.watchdog.or_else(|| notifier.watchdog_timeout());
    if let Some(timeout) = watchdog_timeout {
        tracker.spawn(
            watchdog(
                notifier.clone(),
                timeout,
                progress.clone(),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("task", name = "watchdog")),
        );
    }
    let (closes, closed) = tokio::sync::mpsc::unbounded_channel();
    tracker.spawn(
        expiry_task(machine.clone(), tracker.clone(), closed, shutdown.clone())
            .instrument(tracing::info_span!("task", name = "expiry")),
    );
    tracker.spawn(
        heartbeat_task(machine.clone(), config.clone(), shutdown.clone())
            .instrument(tracing::info_span!("task", name = "heartbeat")),
    );
    tracker.spawn(
        pool_task(machine.clone(), shutdown.clone())
            .instrument(tracing::info_span!("task", name = "pool")),
    );
    tracker.spawn(
        housekeeping_task(
            machine.clone(),
            xrpl.clone(),
            provisioner.clone(),
            tracker.clone(),
            schedule,
            notifier.clone(),
            shutdown.clone(),
        )
        .instrument(tracing::info_span!("task", name = "housekeeping")),
    );

    // The `stream` task is this one: it owns the event subscription.
    let idle_tick = watchdog_timeout.map_or(Duration::from_secs(3600), |t| t / 4);
    let mut idle = tokio::time::interval(idle_tick);
    let mut draining = machine.store().read().draining()?;
    // True while some request could not be handled: ledger closes then catch up from the
    // cursor instead of moving it.
    let mut stale = !catch_up_done;
    let span = tracing::info_span!("task", name = "stream");
    loop {
        progress.bump();
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = idle.tick() => continue,
            event = events.recv() => event,
        };
        async {
            match event {
                Ok(StreamEvent::Transaction(tx)) => {
                    if let Some(event) = event_of(&tx, &host) {
                        // A failed request keeps the cursor where it is until a catch-up
                        // handles it: nothing is skipped.
                        stale |= !handle(&machine, &tracker, &event).await;
                    }
                }
                Ok(StreamEvent::LedgerClosed { index, time, .. }) => {
                    if let Err(e) = set(&machine, keys::LEDGER_TIP, &index.to_string()) {
                        machine.record_error("stream", &e);
                    }
                    if stale {
                        match catch_up(&machine, &xrpl, &tracker).await {
                            Ok(done) => stale = !done,
                            Err(e) => machine.record_error("catch-up", &e),
                        }
                    } else {
                        let _ = closes.send(LedgerEvent::LedgerClosed {
                            ledger: index,
                            close_time: time,
                        });
                    }
                    let now_draining = machine.store().read().draining().unwrap_or(draining);
                    if now_draining != draining {
                        if now_draining {
                            info!("drain requested: offers are being cancelled");
                        }
                        machine.pool_wake();
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
                Err(RecvError::Closed) => shutdown.cancel(),
            }
        }
        .instrument(span.clone())
        .await;
    }

    info!("shutting down: waiting for work in flight");
    notifier.notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    client.shutdown().await;
    info!("berth-agent stopped");
    Ok(())
}

/// Signs in order, then submits each prepared row on its own task, so an answer never
/// waits for the validation of another.
async fn outbox_task(
    machine: Arc<Machine>,
    tasks: TaskTracker,
    token: CancellationToken,
    idle: Duration,
) {
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
                    let span = tracing::info_span!("submit", key = %row.key);
                    tasks.spawn(
                        async move {
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
                        }
                        .instrument(span),
                    );
                }
            }
            Err(e) => machine.record_error("outbox", &e),
        }
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

/// Ledger closes, in order, into the machine: cursor, grace, ending.
async fn expiry_task(
    machine: Arc<Machine>,
    tracker: TaskTracker,
    mut closes: tokio::sync::mpsc::UnboundedReceiver<LedgerEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let close = tokio::select! {
            _ = shutdown.cancelled() => break,
            close = closes.recv() => close,
        };
        let Some(close) = close else { break };
        handle(&machine, &tracker, &close).await;
    }
}

/// Heartbeats: the first once the offers minted at start-up are live (or after one moment
/// at the latest), then once per moment.
async fn heartbeat_task(machine: Arc<Machine>, config: HostConfig, shutdown: CancellationToken) {
    let moment = Duration::from_secs(u64::from(config.lease.moment_secs.get()));
    let waiting_since = tokio::time::Instant::now();
    loop {
        let settling = machine
            .store()
            .read()
            .slots()
            .map(|slots| {
                slots
                    .iter()
                    .any(|s| matches!(s.state, SlotState::Minting | SlotState::Offering))
            })
            .unwrap_or(false);
        if !settling || waiting_since.elapsed() >= moment {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let mut ticker = tokio::time::interval(moment);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                if let Err(e) = send_heartbeat(&machine, &config) {
                    machine.record_error("heartbeat", &e);
                }
            }
        }
    }
}

/// Keeps the pool at its goal: after each purchase that took an instance, on drain, and
/// every few seconds (slots freed by ended leases).
async fn pool_task(machine: Arc<Machine>, shutdown: CancellationToken) {
    loop {
        match machine.tend_pool().await {
            Ok(plan) if plan != crate::machine::PoolPlan::Steady => {
                debug!(?plan, "pool tended");
                continue;
            }
            Ok(_) => {}
            Err(e) => machine.record_error("pool", &e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = machine.pool_changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Housekeeping on the cron schedule; a pass that fails is recorded, the next one runs.
async fn housekeeping_task(
    machine: Arc<Machine>,
    xrpl: Arc<XrplLedger>,
    provisioner: Arc<dyn Provisioner>,
    tracker: TaskTracker,
    schedule: cron::Schedule,
    notifier: Arc<dyn Notifier>,
    shutdown: CancellationToken,
) {
    loop {
        let next = schedule
            .upcoming(chrono::Utc)
            .next()
            .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(600));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(next) => {}
        }
        let pass = housekeeping(&machine, &xrpl, provisioner.as_ref(), &tracker);
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = pass => result,
        };
        if let Err(e) = result {
            machine.record_error("housekeeping", &e);
        }
        if let Ok(text) = status_line(&machine) {
            notifier.notify(&[sd_notify::NotifyState::Status(&text)]);
        }
    }
}

/// The `STATUS=` line: leases, slots on offer, pool, outbox.
fn status_line(machine: &Machine) -> Result<String, StoreError> {
    let store = machine.store();
    let reader = store.read();
    let live = reader
        .leases(&[LeaseState::Active, LeaseState::Grace])?
        .len();
    let offered = reader
        .slots()?
        .iter()
        .filter(|s| s.state == SlotState::Offered)
        .count();
    let pool = reader.pool()?.len();
    let (outbox, _) = reader.outbox_backlog()?;
    let draining = if reader.draining()? { ", draining" } else { "" };
    Ok(format!(
        "{live} leases, {offered} slots offered, {pool} pooled, {outbox} outbox rows{draining}"
    ))
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
        peer_address: config.host.peer_address.clone(),
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
    memo_action(config.ledger.registry, &Message::HostReg(info)).map_err(|e| bad("host-reg")(&e))
}

fn send_heartbeat(machine: &Machine, config: &HostConfig) -> Result<(), MachineError> {
    let free_slots = machine.free_slots()?;
    let action = memo_action(
        config.ledger.registry,
        &Message::Heartbeat(Heartbeat { free_slots }),
    )
    .map_err(|e| MachineError::Memo {
        what: "heartbeat",
        problem: e.to_string(),
    })?;
    let now = crate::store::now_secs();
    machine.store().transaction(|tx| -> Result<_, StoreError> {
        tx.enqueue(OutboxKey::Heartbeat { at: now }, &action)?;
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

/// Reconciles ledger, SQLite and Docker; records instance health (bounded, in parallel);
/// runs the disk-quota watchdog; carries out the machine's re-queues.
async fn housekeeping(
    machine: &Arc<Machine>,
    xrpl: &XrplLedger,
    provisioner: &dyn Provisioner,
    tracker: &TaskTracker,
) -> Result<(), RunError> {
    let facts = xrpl.account_facts().await?;
    set(machine, keys::BALANCE, &facts.balance_drops.to_string())?;
    set(machine, keys::RESERVE, &facts.reserve_drops.to_string())?;
    // Tenants are promised a disk limit: the watchdog stops instances over it, and the
    // machine holds a lease's instance stopped from then on (before reconcile, which then
    // keeps it stopped).
    match provisioner.enforce_disk_quota().await {
        Ok(checks) => {
            machine.over_disk_quota(&checks)?;
        }
        Err(e) => machine.record_error("disk-quota", &e),
    }
    // Docker: exactly the instances of live leases and the ready pool. Not while a lease is
    // being provisioned or ended (its job owns its instance), and no job starts meanwhile.
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
    let parallel = usize::try_from(machine.config().agent.health_checks.get()).unwrap_or(8);
    let healths: Vec<(String, String)> = futures_util::stream::iter(live)
        .map(|lease| async move {
            if let Some(why) = &lease.held_stopped {
                return (lease.instance, format!("stopped: {why}"));
            }
            let health = match provisioner.health(&lease.instance).await {
                Ok(berth_provisioner::Health::Answering) => "answering".to_owned(),
                Ok(berth_provisioner::Health::NotAnswering) => "not answering".to_owned(),
                Ok(berth_provisioner::Health::NotRunning(InstanceState::Exited)) => {
                    "exited".to_owned()
                }
                Ok(berth_provisioner::Health::NotRunning(state)) => state.to_string(),
                Err(e) => format!("unknown: {e}"),
            };
            (lease.instance, health)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    machine.store().transaction(|tx| -> Result<_, StoreError> {
        for (instance, health) in &healths {
            tx.set_setting(&format!("{}{instance}", keys::HEALTH), health)?;
        }
        Ok::<_, StoreError>(())
    })?;
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
        machine.offer_lost(&slot)?;
    }
    // Ledger: slots whose mint or offer failed get them queued again.
    machine.requeue_failed()?;
    // Leases stuck in provisioning or ending (a job failed): run their jobs again.
    for job in machine.resume()? {
        spawn_job(tracker, machine, job);
    }
    Ok(())
}
