//! One HotPocket node: start-up (open the store, make TLS, bind the user port), the round
//! loop (collect inputs, run the contract or the bootstrap, close a ledger, answer users) and
//! shutdown. Rounds, proposals and ledgers are shaped for a UNL of several nodes; with one
//! node every round closes on its own proposal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bootstrap::{self, BootstrapInput, BootstrapReply, ContractFs};
use crate::config::{NodeConfig, DEFAULT_EXEC_TIMEOUT_MS, DEFAULT_ROUND_INPUT_BYTES};
use crate::consensus::{self, Proposal};
use crate::exec::{self, ContractCommand, RunContext, RunEnd};
use crate::ledger::{self, Hash, LclId, RoundOutcome, StateHasher, ZERO_HASH};
use crate::protocol::bundle::ContractConfig;
use crate::protocol::user::{InputStatus, RejectReason, Reply};
use crate::protocol::{pubkey_bytes_from_hex, HP_VERSION};
use crate::store::{Store, StoreError, StoredInput, StoredOutputs};

/// Start-up errors naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    pub max_msg_bytes: usize,
    pub max_connections: usize,
    pub wrapper: PathBuf,
    pub fs: ContractFs,
    pub read_slots: tokio::sync::Semaphore,
    /// Why the node stopped on its own, if it did.
    pub failure: Mutex<Option<String>>,
}

impl Shared {
    /// Current last closed ledger.
    pub fn lcl(&self) -> LclId {
        match self.lcl.read() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    /// A copy of the contract section.
    pub fn contract(&self) -> crate::config::ContractSection {
        match self.contract.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        match self.sessions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Registers a session; false when the key already has one.
    pub fn register(&self, user: &str, handle: SessionHandle) -> bool {
        let mut map = self.sessions();
        if map.contains_key(user) || map.len() >= self.max_connections {
            return false;
        }
        map.insert(user.to_owned(), handle);
        true
    }

    /// Removes a session if it is still the registered one.
    pub fn unregister(&self, user: &str, id: u64) {
        let mut map = self.sessions();
        if map.get(user).is_some_and(|h| h.id == id) {
            map.remove(user);
        }
    }

    /// Queues a message for a user; drops it (with a warning) when the user is gone or slow.
    pub fn send_to(&self, user: &str, msg: Outbound) {
        let tx = self.sessions().get(user).map(|h| h.tx.clone());
        if let Some(tx) = tx {
            if tx.try_send(msg).is_err() {
                tracing::warn!(user, "user mailbox full or closed; message dropped");
            }
        }
    }

    fn connected_users(&self) -> Vec<String> {
        self.sessions().keys().cloned().collect()
    }

    /// The contract command for the current contract section.
    pub fn contract_command(&self, contract: &crate::config::ContractSection) -> ContractCommand {
        let timeout_ms = if contract.round_limits.exec_timeout == 0 {
            DEFAULT_EXEC_TIMEOUT_MS
        } else {
            contract.round_limits.exec_timeout
        };
        ContractCommand {
            wrapper: self.wrapper.clone(),
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

/// An input that passed the session's checks (format and signature).
#[derive(Debug)]
pub struct SignedInput {
    pub user: String,
    pub nonce: u64,
    pub max_ledger_seq_no: u64,
    pub input: Vec<u8>,
    pub hash: Hash,
}

/// Messages to the round loop.
#[derive(Debug)]
pub enum RoundMsg {
    Input(SignedInput),
}

/// A started node.
pub struct RunningNode {
    pub user_addr: SocketAddr,
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
        let failure = match self.shared.failure.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        self.shutdown().await;
        match failure {
            Some(reason) => Err(NodeFailure(reason)),
            None => Ok(()),
        }
    }
}

/// Start-up settings beyond the config.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub state_dir: PathBuf,
    /// The `hotpocket` executable (rlimit wrapper for contracts).
    pub wrapper: PathBuf,
}

/// Builds the node (store, TLS, user port) and spawns its tasks.
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

    let shared = Arc::new(Shared {
        contract_id: cfg.contract.id.clone(),
        node_pubkey: cfg.node.public_key.clone(),
        signing_key,
        owner_pubkey: cfg.bootstrap.owner_pubkey.to_ascii_lowercase(),
        lcl: RwLock::new(lcl),
        contract: RwLock::new(cfg.contract.clone()),
        sessions: Mutex::new(HashMap::new()),
        max_msg_bytes: usize::try_from(cfg.user.max_bytes_per_msg).unwrap_or(usize::MAX),
        max_connections: cfg.user.max_connections,
        wrapper: opts.wrapper.clone(),
        fs,
        read_slots: tokio::sync::Semaphore::new(4),
        failure: Mutex::new(None),
    });
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (round_tx, round_rx) = mpsc::channel(16 * 1024);

    let round = RoundLoop {
        shared: shared.clone(),
        store,
        cfg,
        state_dir: opts.state_dir.clone(),
        rx: round_rx,
        pending: Vec::new(),
        pending_hashes: HashSet::new(),
        pending_bytes: HashMap::new(),
        nonces: HashMap::new(),
        hasher: StateHasher::default(),
        applied_patch: None,
        warned_alone: false,
        input_offset: 10,
        input_limit: DEFAULT_ROUND_INPUT_BYTES,
    };
    tracker.spawn(round.run(cancel.clone()));
    tracker.spawn(crate::server::accept_loop(
        listener,
        tls,
        shared.clone(),
        round_tx,
        cancel.clone(),
        tracker.clone(),
    ));
    tracing::info!(%user_addr, lcl = %lcl, contract_id = %shared.contract_id, "user port listening");
    Ok(RunningNode {
        user_addr,
        shared,
        cancel,
        tracker,
    })
}

struct Pending {
    input: SignedInput,
}

struct RoundLoop {
    shared: Arc<Shared>,
    store: Store,
    cfg: NodeConfig,
    state_dir: PathBuf,
    rx: mpsc::Receiver<RoundMsg>,
    pending: Vec<Pending>,
    pending_hashes: HashSet<Hash>,
    pending_bytes: HashMap<String, u64>,
    nonces: HashMap<String, u64>,
    hasher: StateHasher,
    applied_patch: Option<Hash>,
    warned_alone: bool,
    /// `max_input_ledger_offset` and the per-user input byte limit of the current round.
    input_offset: u64,
    input_limit: u64,
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn reject(reason: RejectReason, hash: &Hash) -> Reply {
    Reply::InputStatus {
        status: InputStatus::Rejected,
        reason: Some(reason),
        input_hash: hash.to_vec(),
        ledger: None,
    }
}

impl RoundLoop {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            let contract = self.shared.contract();
            let roundtime = contract.consensus.roundtime.max(1);
            self.input_offset = contract.max_input_ledger_offset;
            self.input_limit = match contract.round_limits.user_input_bytes {
                0 => DEFAULT_ROUND_INPUT_BYTES,
                n => n,
            };
            let now = now_ms();
            let boundary = (now / roundtime + 1) * roundtime;
            let sleep = tokio::time::sleep(Duration::from_millis(boundary - now));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        tracing::info!("round loop stopped");
                        return;
                    }
                    _ = &mut sleep => break,
                    msg = self.rx.recv() => match msg {
                        Some(RoundMsg::Input(input)) => self.accept_input(input),
                        None => return,
                    },
                }
            }
            if let Err(e) = self.close_round(boundary, &cancel).await {
                tracing::error!(error = %e, "closing the round failed; node stops");
                if let Ok(mut g) = self.shared.failure.lock() {
                    *g = Some(format!(
                        "closing round {}: {e}",
                        self.shared.lcl().seq_no + 1
                    ));
                }
                cancel.cancel();
                return;
            }
        }
    }

    fn accept_input(&mut self, input: SignedInput) {
        match self.check_input(&input) {
            Ok(()) => {
                *self.pending_bytes.entry(input.user.clone()).or_default() +=
                    input.input.len() as u64;
                self.nonces.insert(input.user.clone(), input.nonce);
                self.pending_hashes.insert(input.hash);
                self.pending.push(Pending { input });
            }
            Err(reason) => self
                .shared
                .send_to(&input.user, reject(reason, &input.hash)),
        }
    }

    fn check_input(&mut self, input: &SignedInput) -> Result<(), RejectReason> {
        if self.pending_hashes.contains(&input.hash) {
            return Err(RejectReason::AlreadySubmitted);
        }
        match self.store.input_recorded(&input.hash) {
            Ok(true) => return Err(RejectReason::AlreadySubmitted),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "input lookup failed");
                return Err(RejectReason::BadMsgFormat);
            }
        }
        let lcl = self.shared.lcl();
        if input.max_ledger_seq_no <= lcl.seq_no {
            return Err(RejectReason::MaxLedgerExpired);
        }
        let offset = self.input_offset;
        if input.max_ledger_seq_no > lcl.seq_no + offset {
            return Err(RejectReason::MaxLedgerOffsetExceeded);
        }
        let last = match self.nonces.get(&input.user) {
            Some(n) => *n,
            None => {
                let n = self.store.last_nonce(&input.user).unwrap_or(u64::MAX);
                self.nonces.insert(input.user.clone(), n);
                n
            }
        };
        if input.nonce <= last {
            return Err(RejectReason::NonceExpired);
        }
        let limit = self.input_limit;
        let used = self.pending_bytes.get(&input.user).copied().unwrap_or(0);
        if used + input.input.len() as u64 > limit {
            return Err(RejectReason::RoundInputsOverflow);
        }
        Ok(())
    }

    async fn close_round(
        &mut self,
        time: u64,
        cancel: &CancellationToken,
    ) -> Result<(), NodeError> {
        let started = std::time::Instant::now();
        let lcl = self.shared.lcl();
        let mut inputs: Vec<SignedInput> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|p| p.input)
            .collect();
        self.pending_hashes.clear();
        self.pending_bytes.clear();
        inputs.sort_by_key(|i| ledger::input_order_key(i.nonce, &i.hash));
        let (inputs, expired): (Vec<_>, Vec<_>) = inputs
            .into_iter()
            .partition(|i| i.max_ledger_seq_no > lcl.seq_no);
        for i in &expired {
            self.shared
                .send_to(&i.user, reject(RejectReason::MaxLedgerExpired, &i.hash));
        }

        let contract = self.shared.contract();
        let installed = !contract.bin_path.is_empty();
        let mut outputs: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut contract_users: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut boot: Vec<(String, BootstrapInput)> = Vec::new();
        for input in &inputs {
            let is_owner = input.user == self.shared.owner_pubkey;
            let request = if !installed || is_owner {
                bootstrap::parse_request(&input.input)
            } else {
                None
            };
            match request {
                Some(req) if is_owner => boot.push((input.user.clone(), req)),
                Some(req) => {
                    let kind = reply_kind(&req);
                    push_reply(
                        &mut outputs,
                        &input.user,
                        BootstrapReply::fail(kind, "UserNotAllowed"),
                    );
                }
                None if !installed => {
                    let reply = if is_owner {
                        BootstrapReply::fail(
                            "error",
                            "no contract installed; send {type:\"upload\"} or {type:\"status\"}",
                        )
                    } else {
                        BootstrapReply::fail("error", "UserNotAllowed")
                    };
                    push_reply(&mut outputs, &input.user, reply);
                }
                None => contract_users
                    .entry(input.user.clone())
                    .or_default()
                    .push(input.input.clone()),
            }
        }

        if installed {
            for user in self.shared.connected_users() {
                contract_users.entry(user).or_default();
            }
            let cmd = self.shared.contract_command(&contract);
            let ctx = self.shared.run_context(false, time, Some(lcl));
            // A shutdown while the contract runs abandons the round: its inputs were never
            // acknowledged (users resubmit) and the killed run closes no ledger.
            let run = tokio::select! {
                run = exec::run_contract(&cmd, &ctx, &contract_users) => run,
                _ = cancel.cancelled() => {
                    tracing::info!(seq = lcl.seq_no + 1, "round abandoned for shutdown");
                    return Ok(());
                }
            };
            match run {
                Ok(result) => {
                    match result.end {
                        RunEnd::Exited(0) => {}
                        RunEnd::Exited(code) => tracing::warn!(
                            code,
                            seq = lcl.seq_no + 1,
                            "contract exited with an error code"
                        ),
                        RunEnd::Signalled(sig) => {
                            tracing::warn!(sig, seq = lcl.seq_no + 1, "contract killed by a signal")
                        }
                        RunEnd::TimedOut => tracing::warn!(
                            seq = lcl.seq_no + 1,
                            "contract passed exec_timeout and was killed"
                        ),
                    }
                    for user in &result.truncated {
                        tracing::warn!(user, "contract output passed user_output_bytes; cut");
                    }
                    for (user, msgs) in result.outputs {
                        if !msgs.is_empty() {
                            outputs.entry(user).or_default().extend(msgs);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "contract could not run"),
            }
            self.post_exec(lcl).await;
            self.apply_patch();
        }

        let executed = started.elapsed();
        for (user, req) in boot {
            let reply = self.bootstrap(req).await;
            push_reply(&mut outputs, &user, reply);
        }
        let count = inputs.len();
        self.close_ledger(lcl, time, inputs, outputs)?;
        tracing::debug!(
            seq = lcl.seq_no + 1,
            inputs = count,
            exec_ms = executed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            late_ms = now_ms().saturating_sub(time),
            "round closed"
        );
        Ok(())
    }

    async fn bootstrap(&mut self, req: BootstrapInput) -> BootstrapReply {
        match req {
            BootstrapInput::Status => {
                let contract = self.shared.contract();
                let message = if contract.bin_path.is_empty() {
                    "Bootstrap contract is online".to_owned()
                } else {
                    format!("Contract version {} is installed", contract.version)
                };
                BootstrapReply::ok("statusResult", message)
            }
            BootstrapInput::Upload { zip } => {
                let Some(zip) = zip else {
                    return BootstrapReply::fail(
                        "uploadResult",
                        "upload content missing: send zip bytes (BSON binary, or base64 in JSON)",
                    );
                };
                let mut contract = self.shared.contract();
                let bootstrap_cfg = self.cfg.bootstrap.clone();
                match bootstrap::install_bundle(
                    &zip,
                    &self.shared.fs,
                    &bootstrap_cfg,
                    &mut contract,
                )
                .await
                {
                    Ok(()) => {
                        if let Err(e) = self.save_contract(contract) {
                            return BootstrapReply::fail(
                                "uploadResult",
                                format!("saving the config: {e}"),
                            );
                        }
                        tracing::info!("contract bundle installed");
                        BootstrapReply::ok(
                            "uploadResult",
                            "Contract upload and installation succeeded",
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "contract bundle refused");
                        BootstrapReply::fail("uploadResult", e.to_string())
                    }
                }
            }
        }
    }

    fn save_contract(
        &mut self,
        contract: crate::config::ContractSection,
    ) -> Result<(), crate::config::ConfigError> {
        self.cfg.contract = contract.clone();
        self.cfg.save(&self.state_dir)?;
        let patch = ContractConfig {
            id: Some(contract.id.clone()),
            version: Some(contract.version.clone()),
            unl: Some(contract.unl.clone()),
            bin_path: contract.bin_path.clone(),
            bin_args: Some(contract.bin_args.clone()),
            environment: Some(contract.environment.clone()),
            max_input_ledger_offset: Some(contract.max_input_ledger_offset),
            consensus: Some(contract.consensus.clone()),
            npl: Some(contract.npl.clone()),
            round_limits: Some(contract.round_limits.clone()),
        };
        if let Ok(text) = serde_json::to_vec_pretty(&patch) {
            let path = self.shared.fs.patch_file();
            if let Err(e) = crate::fsutil::write_atomic(&path, &text, 0o644) {
                tracing::warn!(error = %e, path = %path.display(), "writing patch.cfg failed");
            }
            self.applied_patch = Some(ledger::hash_parts([text.as_slice()]));
        }
        match self.shared.contract.write() {
            Ok(mut g) => *g = contract,
            Err(p) => *p.into_inner() = contract,
        }
        Ok(())
    }

    async fn post_exec(&mut self, lcl: LclId) {
        let dir = self.shared.fs.state_dir();
        if !dir.join("post_exec.sh").is_file() {
            return;
        }
        let args = vec![(lcl.seq_no).to_string(), hex::encode(lcl.hash)];
        let timeout = self
            .shared
            .contract_command(&self.shared.contract())
            .timeout;
        match exec::run_script(&dir, "post_exec.sh", &args, timeout).await {
            Ok(Some(0)) => {
                if let Err(e) = std::fs::remove_file(dir.join("post_exec.sh")) {
                    tracing::warn!(error = %e, "removing post_exec.sh failed");
                }
            }
            Ok(other) => tracing::warn!(?other, "post_exec.sh failed; it stays for the next round"),
            Err(e) => tracing::warn!(error = %e, "post_exec.sh could not run"),
        }
    }

    fn patch_hash(&self) -> Hash {
        std::fs::read(self.shared.fs.patch_file())
            .map(|b| ledger::hash_parts([b.as_slice()]))
            .unwrap_or(ZERO_HASH)
    }

    /// Applies `../patch.cfg` when the contract changed it.
    fn apply_patch(&mut self) {
        let path = self.shared.fs.patch_file();
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let hash = ledger::hash_parts([bytes.as_slice()]);
        if self.applied_patch == Some(hash) {
            return;
        }
        self.applied_patch = Some(hash);
        let parsed = serde_json::from_slice::<ContractConfig>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
        match parsed {
            Ok(patch) => {
                let mut contract = self.shared.contract();
                contract.apply(&patch);
                if let Err(e) = self.save_contract(contract) {
                    tracing::warn!(error = %e, "saving patched config failed");
                } else {
                    tracing::info!("patch.cfg applied");
                }
            }
            Err(e) => tracing::warn!(error = %e, "patch.cfg is not valid; ignored"),
        }
    }

    fn close_ledger(
        &mut self,
        lcl: LclId,
        time: u64,
        inputs: Vec<SignedInput>,
        outputs: BTreeMap<String, Vec<Vec<u8>>>,
    ) -> Result<(), NodeError> {
        let state_dir = self.shared.fs.state_dir();
        let state_hash =
            self.hasher
                .hash_dir(&state_dir)
                .map_err(|source| NodeError::ContractDir {
                    path: state_dir,
                    source,
                })?;
        let mut users: Vec<[u8; 33]> = inputs
            .iter()
            .map(|i| i.user.as_str())
            .chain(outputs.keys().map(|k| k.as_str()))
            .filter_map(pubkey_bytes_from_hex)
            .collect();
        users.sort();
        users.dedup();
        let input_hashes: Vec<Hash> = inputs.iter().map(|i| i.hash).collect();
        let user_hashes: Vec<(String, Hash)> = outputs
            .iter()
            .filter_map(|(user, msgs)| {
                let key = pubkey_bytes_from_hex(user)?;
                Some((user.clone(), ledger::user_output_hash(&key, msgs)))
            })
            .collect();
        let hashes: Vec<Hash> = user_hashes.iter().map(|(_, h)| *h).collect();
        let output_hash = ledger::output_root(&hashes);
        let own = Proposal {
            node: self.shared.node_pubkey.clone(),
            stage: 3,
            time,
            lcl,
            users,
            input_hashes,
            output_hash,
            state_hash,
            patch_hash: self.patch_hash(),
        };
        let contract = self.shared.contract();
        let proposals = [own];
        let agreed = match consensus::agreed(
            &contract.unl,
            lcl,
            &proposals,
            contract.consensus.threshold,
        ) {
            Some(p) => p,
            None => {
                // Peer consensus is a later step: with other nodes in the UNL this node
                // cannot reach the threshold alone, so it closes on its own proposal.
                if !self.warned_alone {
                    tracing::warn!(unl = contract.unl.len(), "UNL names other nodes but peer consensus is not built yet; closing rounds alone");
                    self.warned_alone = true;
                }
                &proposals[0]
            }
        };
        let round = RoundOutcome {
            time: agreed.time,
            state_hash: agreed.state_hash,
            patch_hash: agreed.patch_hash,
            users: &agreed.users,
            input_hashes: &agreed.input_hashes,
            output_hash: agreed.output_hash,
        };
        let closed = ledger::close_ledger(lcl, &round);
        let stored_inputs: Vec<StoredInput> = inputs
            .iter()
            .map(|i| StoredInput {
                pubkey: i.user.clone(),
                nonce: i.nonce,
                hash: i.hash,
                blob: i.input.clone(),
            })
            .collect();
        let stored_outputs: Vec<StoredOutputs> = outputs
            .iter()
            .map(|(user, msgs)| StoredOutputs {
                pubkey: user.clone(),
                outputs: msgs.clone(),
            })
            .collect();
        self.store
            .commit(&closed, &stored_inputs, &stored_outputs)?;
        match self.shared.lcl.write() {
            Ok(mut g) => *g = closed.id(),
            Err(p) => *p.into_inner() = closed.id(),
        }

        for input in &inputs {
            self.shared.send_to(
                &input.user,
                Reply::InputStatus {
                    status: InputStatus::Accepted,
                    reason: None,
                    input_hash: input.hash.to_vec(),
                    ledger: Some((closed.seq_no, closed.hash.to_vec())),
                },
            );
        }
        let root_sig = self
            .shared
            .signing_key
            .sign(&output_hash)
            .to_bytes()
            .to_vec();
        let node_key =
            crate::protocol::pubkey_bytes(&self.shared.signing_key.verifying_key()).to_vec();
        for (user, own_hash) in &user_hashes {
            let Some(msgs) = outputs.get(user) else {
                continue;
            };
            let tree = hashes
                .iter()
                .map(|h| (h != own_hash).then(|| h.to_vec()))
                .collect();
            self.shared.send_to(
                user,
                Reply::Output {
                    ledger_seq_no: closed.seq_no,
                    ledger_hash: closed.hash.to_vec(),
                    outputs: msgs.clone(),
                    output_hash: own_hash.to_vec(),
                    hash_tree: tree,
                    unl_sig: vec![(node_key.clone(), root_sig.clone())],
                },
            );
        }
        Ok(())
    }
}

fn reply_kind(req: &BootstrapInput) -> &'static str {
    match req {
        BootstrapInput::Upload { .. } => "uploadResult",
        BootstrapInput::Status => "statusResult",
    }
}

fn push_reply(outputs: &mut BTreeMap<String, Vec<Vec<u8>>>, user: &str, reply: BootstrapReply) {
    if let Ok(bytes) = serde_json::to_vec(&reply) {
        outputs.entry(user.to_owned()).or_default().push(bytes);
    }
}

/// Path helper for tests and the binary: the default state layout.
pub fn ledger_db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.sqlite")
}
