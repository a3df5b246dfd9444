//! One HotPocket node: start-up (open the store, make TLS, bind the user and peer ports),
//! the state its tasks share, and shutdown. The round loop (`round`) runs consensus with the
//! other nodes of the UNL over the peer port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bootstrap::ContractFs;
use crate::clock::{Clock, SystemClock};
use crate::config::{NodeConfig, DEFAULT_EXEC_TIMEOUT_MS};
use crate::consensus::RoundTiming;
use crate::exec::{ContractCommand, RunContext};
use crate::ledger::{Hash, LclId};
use crate::peer::net::{PeerConfig, PeerNet};
use crate::peer::wire::RelayedInput;
use crate::protocol::user::Reply;
use crate::protocol::HP_VERSION;
use crate::store::{Store, StoreError};

/// Start-up errors naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Anchor(#[from] crate::anchor::AnchorError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Peer(#[from] crate::peer::net::PeerError),
    #[error("node directory `{}`", path.display())]
    NodeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the user port {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("preparing the contract directory {path}")]
    ContractDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The node stopped on its own (the reason is logged too).
#[derive(Debug, thiserror::Error)]
#[error("node failed: {0}")]
pub struct NodeFailure(pub String);

/// A message for one connected user (encoded by its session in the user's protocol).
pub type Outbound = Reply;

/// A connected user's mailbox.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the session (evicted for the owner or a UNL node, or replaced).
    pub kick: CancellationToken,
    /// The owner's or a UNL node's key: never evicted, always let in.
    pub privileged: bool,
    /// When the user last sent a frame (ms since the node started).
    pub last_active: Arc<std::sync::atomic::AtomicU64>,
}

/// Why a session was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("user {0} already has a session")]
    Duplicate(String),
    #[error("the node holds its limit of {0} sessions")]
    Full(usize),
}

/// What the node tells `stat` about consensus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// The node follows the UNL's ledgers (or is alone in its UNL).
    pub in_sync: bool,
    /// What the last round said: `in sync`, `not enough peers proposing …`, `out of sync: …`.
    pub vote_status: String,
}

/// State shared by the round loop and the user sessions.
pub struct Shared {
    pub contract_id: String,
    pub node_pubkey: String,
    pub signing_key: SigningKey,
    pub owner_pubkey: String,
    pub lcl: RwLock<LclId>,
    pub contract: RwLock<crate::config::ContractSection>,
    pub sessions: Mutex<HashMap<String, SessionHandle>>,
    /// Largest message of the owner and UNL keys (`limits.max_msg_bytes`).
    pub max_msg_bytes: usize,
    /// The user port's limits (see [`crate::config::UserLimits`]).
    pub limits: crate::config::UserLimits,
    /// When the node started (the sessions' clock for idleness).
    pub started: std::time::Instant,
    /// Connections (handshakes and sessions) per source address.
    pub per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// How contract processes are started and confined.
    pub jail: crate::exec::Jail,
    pub fs: ContractFs,
    pub read_slots: tokio::sync::Semaphore,
    pub net: PeerNet,
    pub sync: Mutex<SyncStatus>,
    /// Why the node stopped on its own, if it did.
    pub failure: Mutex<Option<String>>,
    /// Set by the first read request: from then on the round loop keeps a read-only view of
    /// the state after every execution.
    pub read_views_wanted: std::sync::atomic::AtomicBool,
    /// `ledger.retention`: ledgers kept behind the last closed one (0: all).
    pub ledger_retention: u64,
    /// The view read requests run in.
    pub read_view: Mutex<Option<Arc<crate::readview::ReadView>>>,
    /// Checkpoint signatures and ledger answers (see [`crate::anchor`]).
    pub anchor: crate::anchor::Anchor,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Shared {
    /// Current last closed ledger.
    pub fn lcl(&self) -> LclId {
        match self.lcl.read() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    pub(crate) fn set_lcl(&self, lcl: LclId) {
        match self.lcl.write() {
            Ok(mut g) => *g = lcl,
            Err(p) => *p.into_inner() = lcl,
        }
    }

    /// A copy of the contract section.
    pub fn contract(&self) -> crate::config::ContractSection {
        match self.contract.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn set_contract(&self, contract: crate::config::ContractSection) {
        match self.contract.write() {
            Ok(mut g) => *g = contract,
            Err(p) => *p.into_inner() = contract,
        }
    }

    /// Consensus status for `stat`.
    /// The current read-only view of the state, if one was made.
    pub fn read_view(&self) -> Option<Arc<crate::readview::ReadView>> {
        lock(&self.read_view).clone()
    }

    pub(crate) fn set_read_view(&self, view: Arc<crate::readview::ReadView>) {
        *lock(&self.read_view) = Some(view);
    }

    pub fn sync_status(&self) -> SyncStatus {
        lock(&self.sync).clone()
    }

    pub(crate) fn set_sync_status(&self, status: SyncStatus) {
        *lock(&self.sync) = status;
    }

    /// Whether a key is always let in: the owner's or a UNL node's.
    pub fn is_privileged(&self, user: &str) -> bool {
        user == self.owner_pubkey || self.contract().unl.iter().any(|k| k == user)
    }

    /// Milliseconds since the node started (the sessions' activity clock).
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a session. A privileged key (owner, UNL) always gets in: its older session
    /// is replaced, and when the node is full the session idle longest among the others is
    /// closed. Other keys get one session each while there is room.
    pub fn register(&self, user: &str, handle: SessionHandle) -> Result<(), RegisterError> {
        let mut map = lock(&self.sessions);
        if let Some(old) = map.get(user) {
            if !handle.privileged {
                return Err(RegisterError::Duplicate(user.to_owned()));
            }
            tracing::info!(
                user,
                "a privileged key logged in again; its older session is closed"
            );
            old.kick.cancel();
            map.remove(user);
        }
        if map.len() >= self.limits.max_sessions {
            if !handle.privileged {
                return Err(RegisterError::Full(self.limits.max_sessions));
            }
            let oldest = map
                .iter()
                .filter(|(_, h)| !h.privileged)
                .min_by_key(|(_, h)| h.last_active.load(std::sync::atomic::Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(victim) => {
                    tracing::info!(user = %victim, for_user = user, "node full: the session idle longest is closed for a privileged key");
                    if let Some(h) = map.remove(&victim) {
                        h.kick.cancel();
                    }
                }
                None => return Err(RegisterError::Full(self.limits.max_sessions)),
            }
        }
        map.insert(user.to_owned(), handle);
        Ok(())
    }

    /// Counts a connection from `ip`; None when that address holds its limit.
    pub fn admit_ip(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut map = lock(&self.per_ip);
        let n = map.entry(ip).or_default();
        if *n >= self.limits.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            shared: self.clone(),
            ip,
        })
    }

    /// Removes a session if it is still the registered one.
    pub fn unregister(&self, user: &str, id: u64) {
        let mut map = lock(&self.sessions);
        if map.get(user).is_some_and(|h| h.id == id) {
            map.remove(user);
        }
    }

    /// Queues a message for a user; drops it (with a warning) when the user is slow.
    pub fn send_to(&self, user: &str, msg: Outbound) {
        let tx = lock(&self.sessions).get(user).map(|h| h.tx.clone());
        if let Some(tx) = tx {
            if tx.try_send(msg).is_err() {
                tracing::warn!(user, "user mailbox full or closed; message dropped");
            }
        }
    }

    /// Queues a message for every connected user.
    pub fn send_to_all(&self, msg: &Outbound) {
        let txs: Vec<_> = lock(&self.sessions)
            .values()
            .map(|h| h.tx.clone())
            .collect();
        for tx in txs {
            let _ = tx.try_send(msg.clone());
        }
    }

    /// The contract command for the current contract section.
    pub fn contract_command(&self, contract: &crate::config::ContractSection) -> ContractCommand {
        let timeout_ms = if contract.round_limits.exec_timeout == 0 {
            DEFAULT_EXEC_TIMEOUT_MS
        } else {
            contract.round_limits.exec_timeout
        };
        ContractCommand {
            jail: self.jail.clone(),
            state_dir: self.fs.state_dir(),
            bin_path: contract.bin_path.clone(),
            bin_args: contract.bin_args.clone(),
            environment: contract.environment.clone(),
            limits: contract.round_limits.clone(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// The run context for a round or a read request.
    pub fn run_context(&self, readonly: bool, timestamp: u64, lcl: Option<LclId>) -> RunContext {
        let contract = self.contract();
        RunContext {
            hp_version: HP_VERSION.to_owned(),
            contract_id: self.contract_id.clone(),
            public_key: self.node_pubkey.clone(),
            private_key: format!(
                "ed{}{}",
                hex::encode(self.signing_key.to_bytes()),
                hex::encode(self.signing_key.verifying_key().as_bytes())
            ),
            timestamp,
            readonly,
            lcl: lcl.map(|l| (l.seq_no, hex::encode(l.hash))),
            unl: contract.unl,
        }
    }
}

/// One connection counted against its source address until dropped.
pub struct IpSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.shared.per_ip);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The memory the user-port limits follow: the cgroup's limit (`memory.max` of cgroup v2,
/// `memory.limit_in_bytes` of v1) when one is set and readable, else the machine's memory
/// (`MemTotal`), else 1 GiB.
pub fn detected_memory_limit() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|n| *n > 0 && *n < 1 << 60);
    let total = || {
        read("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    cgroup.or_else(total).unwrap_or(1 << 30)
}

/// The descriptor limit (`RLIMIT_NOFILE`), raised to its hard limit first when allowed.
pub fn descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if matches!((lim.current, lim.maximum), (Some(c), Some(m)) if c < m) {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    lim.current.unwrap_or(1 << 20)
}

/// An input that passed the session's checks (format and signature).
#[derive(Debug, Clone)]
pub struct SignedInput {
    pub user: String,
    pub nonce: u64,
    pub max_ledger_seq_no: u64,
    pub input: Vec<u8>,
    pub hash: Hash,
    /// The input as the user signed it, to circulate to the other nodes.
    pub relay: RelayedInput,
}

/// Messages to the round loop.
#[derive(Debug)]
pub enum RoundMsg {
    /// From a user of this node, signature checked.
    Input(SignedInput),
    /// Relayed by a peer, signatures checked off the round loop, in the order sent.
    Relayed(Vec<SignedInput>),
}

/// A started node.
pub struct RunningNode {
    pub user_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl RunningNode {
    /// Stops accepting, ends sessions and the round loop, waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Runs until `shutdown` fires or the node fails, then shuts down; returns the failure.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeFailure> {
        tokio::select! {
            _ = shutdown => {}
            _ = self.cancel.cancelled() => {}
        }
        let failure = lock(&self.shared.failure).take();
        self.shutdown().await;
        match failure {
            Some(reason) => Err(NodeFailure(reason)),
            None => Ok(()),
        }
    }
}

/// Start-up settings beyond the config.
#[derive(Clone)]
pub struct StartOptions {
    pub state_dir: PathBuf,
    /// The `hotpocket` executable (rlimit wrapper for contracts).
    pub wrapper: PathBuf,
    /// The clock rounds are timed by.
    pub clock: Arc<dyn Clock>,
}

impl StartOptions {
    /// Options with the system clock.
    pub fn new(state_dir: PathBuf, wrapper: PathBuf) -> StartOptions {
        StartOptions {
            state_dir,
            wrapper,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Wall-clock milliseconds since the epoch (the system clock).
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// Largest peer frame: a relayed input may be as large as a user message.
fn max_peer_frame(cfg: &NodeConfig) -> usize {
    usize::try_from(cfg.user.max_bytes_per_msg)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024)
}

/// Builds the node (store, TLS, user and peer ports) and spawns its tasks.
/// How this node starts contract processes: through its own executable, hiding the node
/// directory from them where the kernel offers Landlock (logged either way).
pub fn jail(opts: &StartOptions) -> Result<crate::exec::Jail, NodeError> {
    let abi = crate::confine::probe();
    let hide = if abi > 0 {
        let dir = opts
            .state_dir
            .canonicalize()
            .map_err(|source| NodeError::NodeDir {
                path: opts.state_dir.clone(),
                source,
            })?;
        tracing::info!(landlock_abi = abi, node_dir = %dir.display(),
            "contract confinement: the contract may change only its state and ../patch.cfg");
        Some(dir)
    } else {
        tracing::warn!(
            "contract confinement unavailable (no Landlock in this kernel, or refused by the \
             seccomp profile): the contract can reach the node's own files"
        );
        None
    };
    Ok(crate::exec::Jail {
        wrapper: opts.wrapper.clone(),
        hide,
    })
}

pub async fn start(cfg: NodeConfig, opts: StartOptions) -> Result<RunningNode, NodeError> {
    cfg.validate()?;
    let signing_key = cfg.signing_key()?;
    let fs = ContractFs {
        root: opts.state_dir.join("contract_fs"),
    };
    let state = fs.state_dir();
    std::fs::create_dir_all(&state).map_err(|source| NodeError::ContractDir {
        path: state.clone(),
        source,
    })?;
    let store = Store::open(&opts.state_dir.join("ledger.sqlite"))?;
    let lcl = store.lcl()?;
    let anchor = crate::anchor::Anchor::open(&opts.state_dir.join("ledger.sqlite"))?;
    let tls = crate::tls::server_config(&opts.state_dir)?;
    let ip: std::net::IpAddr = cfg.user.listen.parse().map_err(|_| NodeError::Bind {
        addr: cfg.user.listen.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP address"),
    })?;
    let addr = SocketAddr::new(ip, cfg.user.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let user_addr = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: addr.to_string(),
        source,
    })?;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let timing = RoundTiming::new(
        &cfg.contract.id,
        cfg.contract.consensus.roundtime,
        cfg.contract.consensus.stage_slice,
    );
    let (peer_tx, peer_rx) = mpsc::channel(8 * 1024);
    let net = PeerNet::start(
        PeerConfig {
            listen: SocketAddr::new(ip, cfg.mesh.port),
            known_peers: cfg.mesh.known_peers.clone(),
            contract_id: cfg.contract.id.clone(),
            time_config: timing.time_config(),
            max_frame_bytes: max_peer_frame(&cfg),
        },
        signing_key.clone(),
        tls.clone(),
        crate::tls::peer_client_config()?,
        peer_tx,
        cancel.clone(),
        tracker.clone(),
    )
    .await?;
    let peer_addr = net.local_addr();
    let limits =
        crate::config::UserLimits::derive(&cfg.user, detected_memory_limit(), descriptor_limit());
    tracing::info!(
        memory = limits.memory_bytes,
        max_msg = limits.max_msg_bytes,
        user_msg = limits.user_msg_bytes,
        sessions = limits.max_sessions,
        handshakes = limits.max_handshakes,
        per_ip = limits.max_per_ip,
        pool = limits.pool_bytes,
        idle_secs = limits.idle_timeout.as_secs(),
        "user port limits"
    );

    let shared = Arc::new(Shared {
        contract_id: cfg.contract.id.clone(),
        node_pubkey: cfg.node.public_key.clone(),
        signing_key,
        owner_pubkey: cfg.bootstrap.owner_pubkey.to_ascii_lowercase(),
        lcl: RwLock::new(lcl),
        contract: RwLock::new(cfg.contract.clone()),
        sessions: Mutex::new(HashMap::new()),
        max_msg_bytes: limits.max_msg_bytes,
        limits,
        started: std::time::Instant::now(),
        per_ip: Mutex::new(HashMap::new()),
        jail: jail(&opts)?,
        fs,
        read_slots: tokio::sync::Semaphore::new(4),
        net,
        sync: Mutex::new(SyncStatus {
            in_sync: false,
            vote_status: "starting".to_owned(),
        }),
        failure: Mutex::new(None),
        read_views_wanted: std::sync::atomic::AtomicBool::new(false),
        ledger_retention: cfg.ledger.retention,
        read_view: Mutex::new(None),
        anchor,
    });
    let (round_tx, round_rx) = mpsc::channel(16 * 1024);

    let round = crate::round::RoundLoop::new(
        shared.clone(),
        store,
        cfg,
        opts.state_dir.clone(),
        opts.clock.clone(),
        round_rx,
        peer_rx,
        round_tx.clone(),
        tracker.clone(),
    );
    tracker.spawn(round.run(cancel.clone()));
    tracker.spawn(crate::server::accept_loop(
        listener,
        tls,
        shared.clone(),
        round_tx,
        cancel.clone(),
        tracker.clone(),
    ));
    tracing::info!(%user_addr, %peer_addr, lcl = %lcl, contract_id = %shared.contract_id, "user and peer ports listening");
    Ok(RunningNode {
        user_addr,
        peer_addr,
        shared,
        cancel,
        tracker,
    })
}

/// Path helper for tests and the binary: the default state layout.
pub fn ledger_db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.sqlite")
}
