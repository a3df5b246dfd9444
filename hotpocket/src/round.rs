//! The round loop: one task per node that owns the ledger store and the contract's state.
//!
//! Each round (see [`crate::consensus`]) it proposes, votes with the UNL over the peer port,
//! and on agreement closes the next ledger, then executes the contract on that ledger's
//! inputs. The result of an execution (state, `patch.cfg` and output hashes) is what the
//! node proposes in the next round, and what it signs in an output vote; users get outputs
//! once enough of the UNL signed the same output root (`unl_sig`).
//!
//! A node behind follows the ledgers it missed from their proofs (replaying a few, recording
//! many), and a node whose state is not the UNL's syncs it ([`crate::sync`]).
//!
//! **Invariants**: a ledger closes only on stage-3 proposals that `threshold` % of the UNL
//! signed with one root, and only when this node's last closed ledger and execution result
//! are those the root names; a node whose view differs says so and stops proposing; a
//! ledger is in SQLite before its inputs are executed, and an execution before its outputs
//! reach users.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bootstrap::{self, BootstrapInput, BootstrapReply};
use crate::clock::Clock;
use crate::config::{NodeConfig, DEFAULT_ROUND_INPUT_BYTES, MAX_USER_INPUTS_PER_ROUND};
use crate::consensus::{
    self, agreed, stage_verdict, votes_needed, OwnView, RoundProposals, RoundTiming, StageVerdict,
};
use crate::exec::{self, NplLink, RunEnd};
use crate::ledger::{self, Hash, LclId, RoundOutcome, ZERO_HASH};
use crate::node::{NodeError, RoundMsg, Shared, SignedInput, SyncStatus};
use crate::peer::net::Inbound;
use crate::peer::wire::{
    install_vote, LedgerOutputs, LedgerProof, SyncedLedger, MAX_LEDGERS_PER_MESSAGE,
};
use crate::peer::wire::{
    NodeKey, NplMessage, OutputVote, PeerMsg, Proposal, RelayedInput, Sig, WireLcl, MAX_RELAY_BATCH,
};
use crate::protocol::bundle::{ClusterSpec, ContractConfig};
use crate::protocol::pubkey_bytes_from_hex;
use crate::protocol::user::{InputStatus, ParsedContainer, Protocol, RejectReason, Reply};
use crate::state::StateTree;
use crate::store::{Execution, Store, StoredInput, StoredOutputs};
use crate::sync::{self, RateLimit, StateSync, SyncError, SyncProgress, SyncStats, SyncTarget};

/// Relayed inputs are sent in batches of at most this age (ms).
const RELAY_BATCH_MS: u64 = 5;
/// Most NPL messages kept for a ledger this node has not started executing yet.
const MAX_EARLY_NPL: usize = 1024;
/// A node this many ledgers behind or fewer, whose state is right, executes the ledgers it
/// missed; further behind, it records them and syncs the state of the last one instead.
const REPLAY_MAX: u64 = 8;
/// What one peer may ask of this node: requests a second (ledgers, inputs, state pieces)
/// and state bytes a second, each with a burst allowance.
const PEER_REQUESTS_PER_SEC: f64 = 500.0;
const PEER_STATE_BYTES_PER_SEC: f64 = 64.0 * 1024.0 * 1024.0;
const PEER_STATE_BYTES_BURST: f64 = 16.0 * 1024.0 * 1024.0;

/// Rate limits on one peer's requests.
struct PeerLimits {
    requests: RateLimit,
    bytes: RateLimit,
}

impl PeerLimits {
    fn new() -> PeerLimits {
        PeerLimits {
            requests: RateLimit::new(PEER_REQUESTS_PER_SEC, PEER_REQUESTS_PER_SEC),
            bytes: RateLimit::new(PEER_STATE_BYTES_PER_SEC, PEER_STATE_BYTES_BURST),
        }
    }
}

/// A state sync in progress (its task reports on `sync_done_rx`).
struct Syncing {
    target: SyncTarget,
    responses: mpsc::Sender<sync::Response>,
    progress: Arc<SyncProgress>,
    cancel: CancellationToken,
}

impl Drop for Syncing {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An input waiting for a ledger.
struct Pooled {
    input: SignedInput,
}

/// What an execution produced, waiting for the UNL's signatures.
struct Release {
    ledger: LclId,
    root: Hash,
    outputs: BTreeMap<String, Vec<Vec<u8>>>,
    /// Leaves of the output tree: each user's output hash (by user), then the state hash.
    leaves: Vec<(Option<String>, Hash)>,
    /// Past this (clock ms), outputs go out with `threshold` % of the UNL's signatures.
    deadline: u64,
}

/// One input of a ledger, as the contract gets it.
struct LedgerInput {
    user: String,
    input: Vec<u8>,
}

enum Stop {
    Cancelled,
    Failed(NodeError),
}

impl From<NodeError> for Stop {
    fn from(e: NodeError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Stop {
        Stop::Failed(NodeError::Store(e))
    }
}

/// Where this round's NPL messages go: the ledger they belong to and the contract's channel.
type NplSink = (LclId, mpsc::Sender<(String, Vec<u8>)>);

pub(crate) struct RoundLoop {
    shared: Arc<Shared>,
    store: Store,
    cfg: NodeConfig,
    state_dir: PathBuf,
    clock: Arc<dyn Clock>,
    user_rx: mpsc::Receiver<RoundMsg>,
    peer_rx: mpsc::Receiver<Inbound>,
    me: NodeKey,
    pool: BTreeMap<Hash, Pooled>,
    pool_bytes: HashMap<String, u64>,
    /// Pooled inputs per user.
    pool_counts: HashMap<String, usize>,
    /// Pooled input bytes of all users but the owner.
    pool_total: u64,
    /// Highest nonce per user, pooled or in a ledger.
    nonces: HashMap<String, u64>,
    relay_batch: Vec<RelayedInput>,
    relay_since: u64,
    /// The hash tree of the state directory as of the last execution.
    tree: StateTree,
    applied_patch: Option<Hash>,
    /// The last closed ledger and the result of executing it.
    exec: OwnView,
    /// Proposals by round start.
    rounds: BTreeMap<u64, RoundProposals>,
    /// Output votes by executed ledger.
    votes: BTreeMap<WireLcl, BTreeMap<NodeKey, OutputVote>>,
    release: Option<Release>,
    npl_sink: Option<NplSink>,
    npl_early: Vec<NplMessage>,
    last_status: String,
    /// The peer port's channel closed (it only does at shutdown).
    peer_closed: bool,
    /// The UNL's keys and the threshold of the current config (see `save_contract`).
    unl: BTreeSet<NodeKey>,
    threshold: u32,
    /// A stage-3 proposal of an earlier round arrived: that round may close late.
    late_check: bool,
    /// A bundle waiting for the UNL's verdict.
    pending_install: Option<PendingInstall>,
    /// Relayed batches go to the verifier task, in order.
    verify_tx: mpsc::Sender<(NodeKey, Vec<RelayedInput>)>,
    /// Inputs of the last few closed ledgers as their users signed them, to answer peers
    /// that missed them.
    recent: BTreeMap<u64, Vec<RelayedInput>>,
    /// Agreed inputs asked of peers, and when.
    requested: Option<(Vec<Hash>, u64)>,
    /// Ledgers received from peers, to check and replay in order.
    catchup: std::collections::VecDeque<SyncedLedger>,
    /// The outputs a peer sent for the last ledger recorded without executing it, until the
    /// next ledger's agreed output root can check them.
    unchecked_outputs: Option<(u64, LedgerOutputs)>,
    /// When this node last asked for missed ledgers.
    ledgers_asked_at: u64,
    /// Answers to the owner that go out with the next execution's outputs.
    boot_replies: Vec<(String, BootstrapReply)>,
    /// Ledgers were recorded without being executed here: the state is not that of
    /// `exec.lcl` until a state sync brings it.
    state_unknown: bool,
    /// The newest ledger the UNL was seen on while this node was behind.
    behind_goal: Option<LclId>,
    /// The running state sync.
    syncing: Option<Syncing>,
    sync_done_tx: mpsc::Sender<Result<SyncStats, SyncError>>,
    sync_done_rx: mpsc::Receiver<Result<SyncStats, SyncError>>,
    /// Rate limits on what each peer asks of this node.
    limits: HashMap<NodeKey, PeerLimits>,
    /// Fault injection for tests (`HP_FAULT_CORRUPT_STATE_BLOCKS`): every state block this
    /// node serves has a byte flipped.
    corrupt_served_blocks: bool,
    tracker: TaskTracker,
    /// Read-only views of the state for read requests, once one asked.
    views: Option<crate::readview::ReadViews>,
    /// Genesis hold (`mesh.await_cluster`): no rounds until the owner's cluster request.
    held: bool,
}

/// A bundle this node validated, waiting for the UNL to agree that it goes live.
struct PendingInstall {
    /// blake3 of the zip.
    bundle: Hash,
    owner: String,
    /// The next state, when `install.sh` succeeded here.
    prepared: Option<bootstrap::PreparedBundle>,
    /// Why it did not, when it did not.
    local_error: Option<String>,
}

/// Wall-clock ms of `clock`.
fn sleep_for(target: u64, now: u64) -> Duration {
    Duration::from_millis(target.saturating_sub(now))
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        store: Store,
        cfg: NodeConfig,
        state_dir: PathBuf,
        clock: Arc<dyn Clock>,
        user_rx: mpsc::Receiver<RoundMsg>,
        peer_rx: mpsc::Receiver<Inbound>,
        verified_tx: mpsc::Sender<RoundMsg>,
        tracker: TaskTracker,
    ) -> RoundLoop {
        let me = NodeKey::of(&shared.signing_key);
        let (verify_tx, verify_rx) = mpsc::channel(256);
        let unl = Self::parse_unl(&cfg.contract);
        let threshold = cfg.contract.consensus.threshold;
        let held = cfg.mesh.await_cluster;
        tracker.spawn(verifier(verify_rx, verified_tx));
        let lcl = shared.lcl();
        let (sync_done_tx, sync_done_rx) = mpsc::channel(1);
        RoundLoop {
            shared,
            store,
            cfg,
            state_dir,
            clock,
            user_rx,
            peer_rx,
            me,
            pool: BTreeMap::new(),
            pool_bytes: HashMap::new(),
            pool_counts: HashMap::new(),
            pool_total: 0,
            nonces: HashMap::new(),
            relay_batch: Vec::new(),
            relay_since: 0,
            tree: StateTree::default(),
            applied_patch: None,
            exec: OwnView {
                lcl,
                state_hash: ZERO_HASH,
                patch_hash: ZERO_HASH,
                output_hash: ZERO_HASH,
                install: ZERO_HASH,
            },
            rounds: BTreeMap::new(),
            votes: BTreeMap::new(),
            release: None,
            npl_sink: None,
            npl_early: Vec::new(),
            last_status: String::new(),
            peer_closed: false,
            unl,
            threshold,
            late_check: false,
            pending_install: None,
            verify_tx,
            recent: BTreeMap::new(),
            requested: None,
            catchup: std::collections::VecDeque::new(),
            unchecked_outputs: None,
            ledgers_asked_at: 0,
            boot_replies: Vec::new(),
            state_unknown: false,
            behind_goal: None,
            syncing: None,
            sync_done_tx,
            sync_done_rx,
            limits: HashMap::new(),
            corrupt_served_blocks: std::env::var_os("HP_FAULT_CORRUPT_STATE_BLOCKS").is_some(),
            tracker,
            views: None,
            held,
        }
    }

    fn timing(&self) -> RoundTiming {
        let c = self.shared.contract();
        RoundTiming::new(&c.id, c.consensus.roundtime, c.consensus.stage_slice)
    }

    /// The UNL's keys, parsed once per config change (every peer message consults them).
    fn unl(&self) -> &BTreeSet<NodeKey> {
        &self.unl
    }

    fn parse_unl(contract: &crate::config::ContractSection) -> BTreeSet<NodeKey> {
        contract
            .unl
            .iter()
            .filter_map(|k| NodeKey::parse(k))
            .collect()
    }

    fn fail(&self, cancel: &CancellationToken, e: NodeError) {
        tracing::error!(error = %berth_log::chain(&e), "round loop failed; node stops");
        if let Ok(mut g) = self.shared.failure.lock() {
            *g = Some(format!("ledger {}: {e}", self.shared.lcl().seq_no + 1));
        }
        cancel.cancel();
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        match self.recover(&cancel).await {
            Ok(()) => {}
            Err(Stop::Cancelled) => return,
            Err(Stop::Failed(e)) => return self.fail(&cancel, e),
        }
        if self.held {
            match self.hold(&cancel).await {
                Ok(()) => {}
                Err(Stop::Cancelled) => return,
                Err(Stop::Failed(e)) => return self.fail(&cancel, e),
            }
        }
        loop {
            let timing = self.timing();
            let start = timing.next_round_start(self.clock.now_ms());
            let result = match self.wait_until(start, &cancel).await {
                Ok(()) => self.round(start, timing, &cancel).await,
                Err(stop) => Err(stop),
            };
            match result {
                Ok(()) => {}
                Err(Stop::Cancelled) => {
                    tracing::info!("round loop stopped");
                    return;
                }
                Err(Stop::Failed(e)) => return self.fail(&cancel, e),
            }
        }
    }

    /// Finds the result of executing the last closed ledger: recorded, or executed now if
    /// the node stopped between closing a ledger and executing it.
    async fn recover(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        // A bundle prepared before a stop was never voted on: it is dropped.
        bootstrap::abort_bundle(&self.shared.fs);
        // A state switch a crash interrupted is finished; an unfinished sync is dropped.
        sync::recover(&self.shared.fs).map_err(|source| NodeError::ContractDir {
            path: self.shared.fs.root.clone(),
            source,
        })?;
        let lcl = self.store.lcl()?;
        let last = self.store.last_execution()?;
        match last {
            Some(e) if e.seq_no == lcl.seq_no => {
                // The tree is needed to serve peers; a state changed while the node was
                // stopped shows here, and the node syncs it from the UNL.
                let state_hash = self.state_hash().await?;
                if state_hash != e.state_hash {
                    tracing::warn!(lcl = %lcl, "the state directory changed while the node was stopped");
                }
                self.exec = OwnView {
                    lcl,
                    state_hash,
                    patch_hash: e.patch_hash,
                    output_hash: e.output_hash,
                    install: ZERO_HASH,
                };
                self.applied_patch = Some(e.patch_hash);
            }
            Some(e) if e.seq_no + 1 == lcl.seq_no => {
                tracing::info!(seq = lcl.seq_no, "executing the last closed ledger again (stopped before its execution was recorded)");
                let inputs = self
                    .store
                    .inputs_of(lcl.seq_no)?
                    .into_iter()
                    .map(|i| LedgerInput {
                        user: i.pubkey,
                        input: i.blob,
                    })
                    .collect();
                let time = self.store.ledger(lcl.seq_no)?.map_or(0, |l| l.timestamp);
                self.applied_patch = Some(e.patch_hash);
                self.execute(lcl, time, inputs, false, cancel).await?;
            }
            Some(e) if e.seq_no < lcl.seq_no => {
                // Ledgers recorded without executing them (a catch-up that a stop
                // interrupted): the state comes from the UNL by state sync.
                tracing::info!(
                    seq = lcl.seq_no,
                    executed = e.seq_no,
                    "ledgers recorded but not executed: the state will be synced"
                );
                self.state_unknown = true;
                self.applied_patch = Some(e.patch_hash);
                self.exec = OwnView {
                    lcl,
                    state_hash: ZERO_HASH,
                    patch_hash: ZERO_HASH,
                    output_hash: ZERO_HASH,
                    install: ZERO_HASH,
                };
            }
            _ => {
                // A new node (genesis), or a store from before executions were recorded:
                // the state directory as it is is the result of the last closed ledger.
                let state_hash = self.state_hash().await?;
                let patch_hash = self.patch_hash();
                let output_hash = ledger::hash_parts([state_hash.as_slice()]);
                self.store.record_execution(
                    &Execution {
                        seq_no: lcl.seq_no,
                        state_hash,
                        patch_hash,
                        output_hash,
                    },
                    &[],
                )?;
                self.applied_patch = Some(patch_hash);
                self.exec = OwnView {
                    lcl,
                    state_hash,
                    patch_hash,
                    output_hash,
                    install: ZERO_HASH,
                };
            }
        }
        Ok(())
    }

    // ----- waiting and events -----

    /// Handles events until the clock reaches `target`.
    async fn wait_until(&mut self, target: u64, cancel: &CancellationToken) -> Result<(), Stop> {
        while self.clock.now_ms() < target {
            self.next_event(target, cancel).await?;
            self.follow_late(cancel).await?;
        }
        Ok(())
    }

    /// Closes an earlier round whose stage-3 proposals reached the threshold only after
    /// this node gave up on it (they arrived late), if it builds on this node's ledger.
    async fn follow_late(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        self.catch_up(cancel).await?;
        if !std::mem::take(&mut self.late_check) {
            return Ok(());
        }
        let unl = self.unl().clone();
        let threshold = self.threshold;
        let found = self.rounds.values().find_map(|props| {
            let p = agreed(props, &unl, threshold).ok()?;
            if LclId::from(p.lcl) != self.exec.lcl {
                return None;
            }
            Some((p.clone(), stage3_of(props, &unl, p)))
        });
        if let Some((p, proof)) = found {
            tracing::info!(round = p.time, lcl = %self.exec.lcl, "closing a ledger whose stage 3 proposals arrived late");
            self.close(p, proof, true, cancel).await?;
        }
        Ok(())
    }

    /// Follows ledgers received from peers, each checked against its proof: stage-3
    /// proposals that `threshold` % of the UNL signed with one root on this node's ledger,
    /// and inputs whose users signed them. A node a few ledgers behind whose state is right
    /// executes them; one further behind, or whose state is wrong, records them without
    /// executing, then syncs the state the UNL proposes on the last one.
    async fn catch_up(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        let mut progressed = false;
        while let Some(SyncedLedger { proof, outputs }) = self.catchup.pop_front() {
            if self.syncing.is_some() {
                self.catchup.clear();
                break;
            }
            let Some((p, stage3)) = self.check_proof(&proof) else {
                continue;
            };
            if LclId::from(p.lcl) != self.exec.lcl {
                continue;
            }
            self.check_outputs(p.state_hash, p.output_hash)?;
            let wanted: BTreeSet<Hash> = p.inputs.iter().copied().collect();
            let mut inputs: Vec<SignedInput> = verify_relayed(self.me, proof.inputs)
                .into_iter()
                .filter(|i| wanted.contains(&i.hash))
                .collect();
            inputs.sort_by_key(|i| i.hash);
            inputs.dedup_by_key(|i| i.hash);
            let seq = self.exec.lcl.seq_no + 1;
            let goal = self.behind_goal.map_or(seq, |g| g.seq_no.max(seq));
            let state_fits = !self.state_unknown
                && p.state_hash == self.exec.state_hash
                && p.patch_hash == self.exec.patch_hash
                && p.output_hash == self.exec.output_hash;
            if state_fits && goal - seq <= REPLAY_MAX {
                for input in inputs {
                    if !self.pool.contains_key(&input.hash) {
                        self.add_to_pool(input);
                    }
                }
                // A ledger or two behind (a round lost to load), the node acts as if it had
                // closed the ledger itself: it votes on the outputs and sends its users
                // theirs.
                let live = goal - seq <= 1;
                tracing::info!(
                    seq,
                    live,
                    "replaying a ledger the UNL closed while this node was away"
                );
                let before = self.exec.lcl;
                self.close(p, stage3, live, cancel).await?;
                if self.exec.lcl == before {
                    // It could not follow (another state, missing inputs): the rest cannot
                    // either.
                    self.catchup.clear();
                    break;
                }
                progressed = true;
                continue;
            }
            if inputs.len() != wanted.len() {
                tracing::warn!(
                    seq,
                    have = inputs.len(),
                    agreed = wanted.len(),
                    "ledger from a peer without all its inputs signed by their users; dropped"
                );
                self.catchup.clear();
                break;
            }
            self.record_unexecuted(p, stage3, inputs)?;
            self.unchecked_outputs = Some((self.exec.lcl.seq_no, outputs));
            progressed = true;
        }
        if progressed && self.syncing.is_none() {
            match self.behind_goal {
                Some(goal) if goal.seq_no > self.exec.lcl.seq_no => {
                    // Ask for the next batch at once rather than next round.
                    self.ledgers_asked_at = 0;
                    self.request_ledgers(goal);
                }
                // On the UNL's ledger with a state not known: sync it from the latest
                // proposals rather than waiting for the next round.
                _ if self.state_unknown => {
                    if let Some(start) = self.rounds.keys().next_back().copied() {
                        self.sync_to_majority(start);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records the outputs a peer sent for the last ledger recorded unexecuted, if they hash
    /// to the output root the UNL agreed on for it (with the state after it); drops them
    /// otherwise.
    fn check_outputs(&mut self, state_hash: Hash, output_hash: Hash) -> Result<(), Stop> {
        let Some((seq, outputs)) = self.unchecked_outputs.take() else {
            return Ok(());
        };
        if seq != self.exec.lcl.seq_no {
            return Ok(());
        }
        if output_root(&outputs, state_hash) != Some(output_hash) {
            tracing::debug!(
                seq,
                "outputs from a peer do not match the agreed root; not recorded"
            );
            return Ok(());
        }
        let stored: Vec<StoredOutputs> = outputs
            .into_iter()
            .filter(|(_, msgs)| !msgs.is_empty())
            .map(|(pubkey, outputs)| StoredOutputs { pubkey, outputs })
            .collect();
        if !stored.is_empty() {
            self.store.record_outputs(seq, &stored)?;
        }
        Ok(())
    }

    /// The agreed proposal a ledger proof holds, and its stage-3 proposals from the UNL,
    /// when `threshold` % of the UNL signed one root.
    fn check_proof(&self, proof: &LedgerProof) -> Option<(Proposal, Vec<Proposal>)> {
        let unl = self.unl();
        let mut props = RoundProposals::default();
        for p in &proof.proposals {
            if p.stage == 3 && p.check().is_ok() {
                props.insert(p.clone());
            }
        }
        match agreed(&props, unl, self.threshold) {
            Ok(p) => {
                let p = p.clone();
                let stage3 = stage3_of(&props, unl, &p);
                Some((p, stage3))
            }
            Err(_) => {
                tracing::warn!(lcl = %self.exec.lcl, "ledger from a peer without enough UNL signatures dropped");
                None
            }
        }
    }

    /// Records a ledger the UNL closed without executing it (the state sync that follows
    /// brings the state it led to).
    fn record_unexecuted(
        &mut self,
        p: Proposal,
        stage3: Vec<Proposal>,
        inputs: Vec<SignedInput>,
    ) -> Result<(), Stop> {
        for i in &inputs {
            self.take_from_pool(&i.hash);
        }
        let (closed, _) = self.commit_agreed(&p, stage3, inputs)?;
        if self.pending_install.take().is_some() {
            bootstrap::abort_bundle(&self.shared.fs);
        }
        self.release = None;
        self.state_unknown = true;
        self.exec = OwnView {
            lcl: closed.id(),
            state_hash: ZERO_HASH,
            patch_hash: ZERO_HASH,
            output_hash: ZERO_HASH,
            install: ZERO_HASH,
        };
        let goal = self.behind_goal.map_or(closed.seq_no, |g| g.seq_no);
        if closed.seq_no % 100 == 0 || closed.seq_no >= goal {
            tracing::info!(
                seq = closed.seq_no,
                goal,
                "catching up: ledgers recorded without executing them"
            );
        }
        self.shared.set_sync_status(SyncStatus {
            in_sync: false,
            vote_status: format!(
                "catching up: {} ledgers behind",
                goal.saturating_sub(closed.seq_no)
            ),
        });
        Ok(())
    }

    /// When more than half of the UNL propose one result of this node's last ledger and it
    /// is not this node's (a state changed behind the contract's back, or a contract that
    /// is not deterministic here), syncs to it: a node's own view cannot be trusted over a
    /// majority of the UNL, and with a high threshold the others may need this node to
    /// close the next ledger.
    fn sync_to_majority(&mut self, start: u64) {
        if self.syncing.is_some() {
            return;
        }
        let unl = self.unl().clone();
        let mut views: BTreeMap<(Hash, Hash, Hash), Vec<NodeKey>> = BTreeMap::new();
        if let Some(props) = self.rounds.get(&start) {
            for p in props.from_unl(&unl) {
                if LclId::from(p.lcl) == self.exec.lcl && p.node != self.me {
                    views
                        .entry((p.state_hash, p.patch_hash, p.output_hash))
                        .or_default()
                        .push(p.node);
                }
            }
        }
        let Some(((state, patch, output), nodes)) =
            views.into_iter().max_by_key(|(_, nodes)| nodes.len())
        else {
            return;
        };
        let own = (
            self.exec.state_hash,
            self.exec.patch_hash,
            self.exec.output_hash,
        );
        if nodes.len() * 2 <= unl.len() || (!self.state_unknown && own == (state, patch, output)) {
            return;
        }
        let target = SyncTarget {
            lcl: self.exec.lcl,
            state,
            patch,
            output,
        };
        self.start_sync(target, nodes);
    }

    /// Starts syncing the state `target` names (the result of this node's last ledger)
    /// from `peers`, the UNL members that propose it.
    fn start_sync(&mut self, target: SyncTarget, peers: Vec<NodeKey>) {
        let peers: Vec<NodeKey> = peers.into_iter().filter(|k| *k != self.me).collect();
        let (responses, rx) = mpsc::channel(64);
        let progress = Arc::new(SyncProgress::default());
        let cancel = CancellationToken::new();
        let job = StateSync {
            target,
            own: Arc::new(self.tree.clone()),
            fs: self.shared.fs.clone(),
            net: self.shared.net.clone(),
            peers,
            responses: rx,
            progress: progress.clone(),
        };
        let done = self.sync_done_tx.clone();
        let token = cancel.clone();
        self.tracker.spawn(async move {
            let result = job.run(token).await;
            let _ = done.send(result).await;
        });
        tracing::info!(
            lcl = %target.lcl,
            state = %hex::encode(target.state),
            "state sync started: this node's state is not the one the UNL agreed on"
        );
        self.syncing = Some(Syncing {
            target,
            responses,
            progress,
            cancel,
        });
        self.set_status(false, format!("syncing the state of ledger {}", target.lcl));
    }

    /// Switches to the state a sync brought: the node proposes from the next round on.
    async fn on_sync_done(&mut self, result: Result<SyncStats, SyncError>) -> Result<(), Stop> {
        let Some(syncing) = self.syncing.take() else {
            return Ok(());
        };
        let target = syncing.target;
        let stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                tracing::warn!(error = %berth_log::chain(&e), "state sync failed; it starts again with the next ledgers");
                self.set_status(false, format!("out of sync: {e}"));
                return Ok(());
            }
        };
        sync::switch(&self.shared.fs).map_err(|source| NodeError::ContractDir {
            path: self.shared.fs.root.clone(),
            source,
        })?;
        let state_hash = self.state_hash().await?;
        if state_hash != target.state {
            tracing::warn!(lcl = %target.lcl, "the state after a sync is not its target; syncing again");
            self.state_unknown = true;
            return Ok(());
        }
        self.store.record_execution(
            &Execution {
                seq_no: target.lcl.seq_no,
                state_hash,
                patch_hash: target.patch,
                output_hash: target.output,
            },
            &[],
        )?;
        self.exec = OwnView {
            lcl: target.lcl,
            state_hash,
            patch_hash: target.patch,
            output_hash: target.output,
            install: ZERO_HASH,
        };
        self.state_unknown = false;
        self.release = None;
        self.check_outputs(target.state, target.output)?;
        tracing::info!(
            lcl = %target.lcl,
            fetched_bytes = stats.fetched_bytes,
            local_bytes = stats.local_bytes,
            pieces = stats.pieces,
            ms = stats.elapsed.as_millis() as u64,
            "state sync done"
        );
        self.set_status(false, "state synced; joining the next round".to_owned());
        if let Some(goal) = self.behind_goal {
            self.ledgers_asked_at = 0;
            self.request_ledgers(goal);
        }
        Ok(())
    }

    /// Answers a peer syncing its state, within its rate limit.
    fn on_state_request(&mut self, from: NodeKey, id: u32, wants: Vec<crate::peer::wire::Want>) {
        use crate::peer::wire::{PieceKind, MAX_STATE_RESPONSE_BYTES};
        let budget = MAX_STATE_RESPONSE_BYTES.min(self.shared.max_msg_bytes / 2);
        let estimate: usize = wants
            .iter()
            .map(|w| match w.kind {
                PieceKind::Block => crate::state::BLOCK_SIZE as usize,
                _ => 4096,
            })
            .sum::<usize>()
            .min(budget);
        let limits = self.peer_limits(from);
        let allowed = limits.requests.take(1.0) && limits.bytes.take(estimate as f64);
        let msg = if allowed {
            let pieces = sync::serve(
                &self.tree,
                &self.shared.fs,
                &wants,
                budget,
                self.corrupt_served_blocks,
            );
            PeerMsg::StateResponse {
                id,
                pieces,
                busy: false,
            }
        } else {
            tracing::debug!(peer = %from, "state request over the peer's rate limit; answered busy");
            PeerMsg::StateResponse {
                id,
                pieces: Vec::new(),
                busy: true,
            }
        };
        self.shared.net.send(&from, &msg);
    }

    /// One peer's rate limits. Past 256 peers, those outside the UNL are forgotten, so that
    /// keys that come and go cannot grow the table.
    fn peer_limits(&mut self, from: NodeKey) -> &mut PeerLimits {
        if self.limits.len() >= 256 && !self.limits.contains_key(&from) {
            let unl = &self.unl;
            self.limits.retain(|k, _| unl.contains(k));
        }
        self.limits.entry(from).or_insert_with(PeerLimits::new)
    }

    /// Whether a peer may ask this node for something now (its request rate limit).
    fn request_allowed(&mut self, from: NodeKey) -> bool {
        let ok = self.peer_limits(from).requests.take(1.0);
        if !ok {
            tracing::debug!(peer = %from, "peer request over its rate limit dropped");
        }
        ok
    }

    /// Asks a peer on the UNL's ledger for the ledgers this node missed (at most once a
    /// round, or at once when the last batch was followed).
    /// A UNL node proposing on a later ledger than this node's: the others may have closed
    /// a ledger this node missed (a peer died between the stage-3 proposals), while no
    /// majority proposes on it yet. Asking that node for the ledgers is safe: each comes
    /// with its proof and is taken only if `threshold` % of the UNL signed it.
    fn catch_up_with_a_peer_ahead(&mut self, start: u64) {
        let mine = self.exec.lcl.seq_no;
        let ahead = self.rounds.get(&start).and_then(|props| {
            props
                .from_unl(self.unl())
                .filter(|p| p.node != self.me && p.lcl.seq_no > mine)
                .map(|p| LclId::from(p.lcl))
                .max_by_key(|lcl| lcl.seq_no)
        });
        if let Some(lcl) = ahead {
            self.request_ledgers(lcl);
        }
    }

    fn request_ledgers(&mut self, majority: LclId) {
        if self.behind_goal.is_none_or(|g| g.seq_no < majority.seq_no) {
            self.behind_goal = Some(majority);
        }
        if majority.seq_no <= self.exec.lcl.seq_no || self.syncing.is_some() {
            return;
        }
        let now = self.clock.now_ms();
        if now < self.ledgers_asked_at + self.timing().roundtime {
            return;
        }
        self.ledgers_asked_at = now;
        let from_seq = self.exec.lcl.seq_no + 1;
        let count =
            (majority.seq_no - self.exec.lcl.seq_no).min(u64::from(MAX_LEDGERS_PER_MESSAGE)) as u16;
        let mut holders: Vec<NodeKey> = self
            .rounds
            .values()
            .flat_map(|props| props.from_unl(self.unl()))
            .filter(|p| p.lcl.seq_no >= from_seq && p.node != self.me)
            .map(|p| p.node)
            .collect();
        holders.sort();
        holders.dedup();
        let msg = PeerMsg::LedgerRequest { from_seq, count };
        let pick = holders.get((now as usize) % holders.len().max(1)).copied();
        tracing::debug!(from_seq, count, majority = %majority, peer = ?pick, "asking for the ledgers this node missed");
        if !pick.is_some_and(|k| self.shared.net.send(&k, &msg)) {
            self.shared.net.broadcast(&msg);
        }
    }

    /// Answers a peer that missed ledgers, from the store.
    fn on_ledger_request(&mut self, from: NodeKey, from_seq: u64, count: u16) {
        let last = self.exec.lcl.seq_no;
        let mut proofs = Vec::new();
        let mut bytes = 0usize;
        let budget = self.shared.max_msg_bytes / 2;
        for seq in from_seq..from_seq.saturating_add(u64::from(count)) {
            if seq == 0 || seq > last {
                break;
            }
            let Ok(Some(blob)) = self.store.proof(seq) else {
                break;
            };
            let Some(proof) = LedgerProof::from_bytes(&blob) else {
                break;
            };
            let outputs: LedgerOutputs = self
                .store
                .outputs_of(seq)
                .unwrap_or_default()
                .into_iter()
                .map(|o| (o.pubkey, o.outputs))
                .collect();
            bytes += blob.len()
                + outputs
                    .iter()
                    .map(|(u, m)| u.len() + m.iter().map(Vec::len).sum::<usize>())
                    .sum::<usize>();
            proofs.push(SyncedLedger { proof, outputs });
            if bytes > budget {
                break;
            }
        }
        tracing::debug!(peer = %from, from_seq, count, sent = proofs.len(), "ledger request answered");
        if !proofs.is_empty() {
            self.shared.net.send(&from, &PeerMsg::Ledgers(proofs));
        }
    }

    /// Handles one event, or returns at `deadline`.
    async fn next_event(&mut self, deadline: u64, cancel: &CancellationToken) -> Result<(), Stop> {
        let now = self.clock.now_ms();
        self.try_release(now);
        let mut wake = deadline;
        if !self.relay_batch.is_empty() {
            let flush_at = self.relay_since + RELAY_BATCH_MS;
            if now >= flush_at || self.relay_batch.len() >= MAX_RELAY_BATCH {
                self.flush_relay();
            } else {
                wake = wake.min(flush_at);
            }
        }
        // Wake for the release deadline while it is ahead; past it, only a vote can
        // release the outputs.
        if let Some(r) = self.release.as_ref().filter(|r| r.deadline > now) {
            wake = wake.min(r.deadline);
        }
        if let Some(s) = &self.syncing {
            let behind = self
                .behind_goal
                .map_or(0, |g| g.seq_no.saturating_sub(self.exec.lcl.seq_no));
            self.shared.set_sync_status(SyncStatus {
                in_sync: false,
                vote_status: format!(
                    "syncing the state of ledger {}: {} of {} bytes fetched, {} ledgers behind",
                    s.target.lcl,
                    s.progress
                        .fetched
                        .load(std::sync::atomic::Ordering::Relaxed),
                    s.progress
                        .to_fetch
                        .load(std::sync::atomic::Ordering::Relaxed),
                    behind
                ),
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
            _ = tokio::time::sleep(sleep_for(wake, now)) => {}
            done = self.sync_done_rx.recv() => if let Some(done) = done {
                self.on_sync_done(done).await?;
            },
            msg = self.user_rx.recv() => match msg {
                Some(msg) => self.on_round_msg(msg),
                None => return Err(Stop::Cancelled),
            },
            msg = self.peer_rx.recv(), if !self.peer_closed => match msg {
                Some(inbound) => self.on_peer(inbound),
                None => self.peer_closed = true,
            },
        }
        Ok(())
    }

    fn flush_relay(&mut self) {
        if self.relay_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.relay_batch);
        self.shared.net.broadcast(&PeerMsg::Inputs(batch));
    }

    fn on_user_input(&mut self, input: SignedInput) {
        if self.resumed_cluster_request(&input) {
            return;
        }
        if let Some(reply) = self.refusal(&input) {
            // Answered at once and never pooled, relayed or stored: what a user may not
            // submit costs the node no disk.
            tracing::info!(user = %input.user, reason = %reply.message, "input of a user who may not submit it refused unrecorded");
            self.answer_now(&input, reply);
            return;
        }
        match self.check_input(&input) {
            Ok(()) => {
                if self.relay_batch.is_empty() {
                    self.relay_since = self.clock.now_ms();
                }
                self.relay_batch.push(input.relay.clone());
                self.add_to_pool(input);
            }
            Err(reason) => self
                .shared
                .send_to(&input.user, reject(reason, &input.hash)),
        }
    }

    /// The answer to an input its user may not submit: anyone but the owner before a
    /// contract is installed, and an installer request of anyone but the owner. None when
    /// the input may go into a ledger. Judged on the node's contract as it is now.
    fn refusal(&self, input: &SignedInput) -> Option<BootstrapReply> {
        if input.user == self.shared.owner_pubkey {
            return None;
        }
        let installed = !self.shared.contract().bin_path.is_empty();
        match bootstrap::parse_request(&input.input, installed) {
            Some(req) => Some(BootstrapReply::fail(reply_kind(&req), not_allowed(&req))),
            None if !installed => Some(BootstrapReply::fail("error", "UserNotAllowed")),
            None => None,
        }
    }

    fn add_to_pool(&mut self, input: SignedInput) {
        *self.pool_counts.entry(input.user.clone()).or_default() += 1;
        if input.user != self.shared.owner_pubkey {
            self.pool_total += input.input.len() as u64;
        }
        *self.pool_bytes.entry(input.user.clone()).or_default() += input.input.len() as u64;
        self.nonces.insert(input.user.clone(), input.nonce);
        self.pool.insert(input.hash, Pooled { input });
    }

    fn take_from_pool(&mut self, hash: &Hash) -> Option<SignedInput> {
        let p = self.pool.remove(hash)?;
        if let Some(b) = self.pool_bytes.get_mut(&p.input.user) {
            *b = b.saturating_sub(p.input.input.len() as u64);
            if *b == 0 {
                self.pool_bytes.remove(&p.input.user);
            }
        }
        if let Some(n) = self.pool_counts.get_mut(&p.input.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pool_counts.remove(&p.input.user);
            }
        }
        if p.input.user != self.shared.owner_pubkey {
            self.pool_total = self.pool_total.saturating_sub(p.input.input.len() as u64);
        }
        Some(p.input)
    }

    /// The rules an input must pass before it is pooled (from a user or a peer).
    fn check_input(&mut self, input: &SignedInput) -> Result<(), RejectReason> {
        if self.pool.contains_key(&input.hash) {
            return Err(RejectReason::AlreadySubmitted);
        }
        match self.store.input_recorded(&input.hash) {
            Ok(true) => return Err(RejectReason::AlreadySubmitted),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %berth_log::chain(&e), "input lookup failed");
                return Err(RejectReason::BadMsgFormat);
            }
        }
        let contract = self.shared.contract();
        let lcl = self.shared.lcl();
        if input.max_ledger_seq_no <= lcl.seq_no {
            return Err(RejectReason::MaxLedgerExpired);
        }
        if input.max_ledger_seq_no > lcl.seq_no + contract.max_input_ledger_offset {
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
        // Bounds of what one round may pool, and so store: one user's inputs and bytes,
        // and all users' bytes but the owner's (the memory-derived `pool_bytes`).
        let is_owner = input.user == self.shared.owner_pubkey;
        let pool_limit = self.shared.limits.pool_bytes;
        let limit = match contract.round_limits.user_input_bytes {
            0 => DEFAULT_ROUND_INPUT_BYTES,
            n => n,
        };
        let limit = if is_owner {
            limit
        } else {
            limit.min(pool_limit)
        };
        let size = input.input.len() as u64;
        let used = self.pool_bytes.get(&input.user).copied().unwrap_or(0);
        let count = self.pool_counts.get(&input.user).copied().unwrap_or(0);
        if used + size > limit || count >= MAX_USER_INPUTS_PER_ROUND {
            tracing::debug!(user = %input.user, used, size, limit, count, max_inputs = MAX_USER_INPUTS_PER_ROUND, "input over the user's round limit");
            return Err(RejectReason::RoundInputsOverflow);
        }
        if !is_owner && self.pool_total + size > pool_limit {
            tracing::info!(user = %input.user, pooled = self.pool_total, size, limit = pool_limit, "input over the round's limit for all users");
            return Err(RejectReason::RoundInputsOverflow);
        }
        Ok(())
    }

    fn on_peer(&mut self, inbound: Inbound) {
        let Inbound { from, msg } = inbound;
        match msg {
            PeerMsg::Proposal(p) => self.on_proposal(from, p),
            PeerMsg::Inputs(batch) => {
                if self.verify_tx.try_send((from, batch)).is_err() {
                    tracing::warn!(peer = %from, "input verifier busy; relayed batch dropped");
                }
            }
            PeerMsg::InputRequest(hashes) => {
                if self.request_allowed(from) {
                    self.on_input_request(from, hashes)
                }
            }
            PeerMsg::LedgerRequest { from_seq, count } => {
                if self.request_allowed(from) {
                    self.on_ledger_request(from, from_seq, count.min(MAX_LEDGERS_PER_MESSAGE))
                }
            }
            PeerMsg::StateRequest { id, wants } => self.on_state_request(from, id, wants),
            PeerMsg::StateResponse { id, pieces, busy } => match &self.syncing {
                Some(s) => {
                    let r = sync::Response {
                        from,
                        id,
                        pieces,
                        busy,
                    };
                    if s.responses.try_send(r).is_err() {
                        tracing::debug!(peer = %from, "state sync busy; response dropped");
                    }
                }
                None => {
                    tracing::debug!(peer = %from, "state response with no sync running dropped")
                }
            },
            PeerMsg::Ledgers(proofs) => {
                if self.catchup.len() + proofs.len() <= 4 * usize::from(MAX_LEDGERS_PER_MESSAGE) {
                    self.catchup.extend(proofs);
                }
            }
            PeerMsg::Npl(m) => self.on_npl(from, m),
            PeerMsg::OutputVote(v) => self.on_output_vote(from, v),
            other => {
                tracing::debug!(peer = %from, kind = other.kind(), "unexpected peer message dropped")
            }
        }
    }

    fn on_proposal(&mut self, from: NodeKey, p: Proposal) {
        if let Err(why) = p.check() {
            tracing::warn!(peer = %from, node = %p.node, reason = why, "proposal dropped");
            return;
        }
        if !self.unl().contains(&p.node) {
            tracing::debug!(peer = %from, node = %p.node, "proposal from a node outside the UNL not counted");
            return;
        }
        let timing = self.timing();
        let current = timing.round_start(self.clock.now_ms());
        let aligned = p.time >= timing.offset && (p.time - timing.offset) % timing.roundtime == 0;
        if !aligned {
            tracing::warn!(peer = %from, node = %p.node, time = p.time, "proposal dropped: its time is not a round start");
            return;
        }
        // Proposals of the last three rounds and the next one are kept; older ones are
        // replays or hopelessly late, later ones come from a clock far ahead.
        if p.time + 3 * timing.roundtime < current || p.time > current + timing.roundtime {
            tracing::debug!(peer = %from, node = %p.node, time = p.time, current, "proposal outside the round window dropped");
            return;
        }
        let late = p.stage == 3 && p.time < current;
        if self.rounds.entry(p.time).or_default().insert(p) && late {
            self.late_check = true;
        }
    }

    fn on_round_msg(&mut self, msg: RoundMsg) {
        match msg {
            RoundMsg::Input(input) => self.on_user_input(input),
            RoundMsg::Relayed(inputs) => {
                let wanted = self.requested.as_ref().map(|(h, _)| h.clone());
                for input in inputs {
                    if self.pool.contains_key(&input.hash) {
                        continue;
                    }
                    let asked = wanted.as_ref().is_some_and(|w| w.contains(&input.hash));
                    if !asked && self.refusal(&input).is_some() {
                        tracing::debug!(user = %input.user, "relayed input its user may not submit not pooled");
                        continue;
                    }
                    // An input the UNL already agreed on is pooled whatever this node's
                    // own view of its nonce: the ledger's rules decide at close.
                    match self.check_input(&input) {
                        Ok(()) => self.add_to_pool(input),
                        Err(_) if asked => self.add_to_pool(input),
                        Err(reason) => {
                            tracing::debug!(user = %input.user, %reason, "relayed input not pooled")
                        }
                    }
                }
                if self.requested.is_some() {
                    self.late_check = true;
                }
            }
        }
    }

    /// Answers a peer that lacks inputs a ledger agreed on, from the pool and the inputs of
    /// the last few ledgers.
    fn on_input_request(&mut self, from: NodeKey, hashes: Vec<Hash>) {
        let wanted: BTreeSet<Hash> = hashes.into_iter().collect();
        let mut found: Vec<RelayedInput> = wanted
            .iter()
            .filter_map(|h| self.pool.get(h).map(|p| p.input.relay.clone()))
            .collect();
        for relays in self.recent.values() {
            for r in relays {
                if wanted.contains(&ledger::hash_parts([r.sig.0.as_slice()])) {
                    found.push(r.clone());
                }
            }
        }
        found.truncate(MAX_RELAY_BATCH);
        tracing::debug!(peer = %from, asked = wanted.len(), found = found.len(), "input request answered");
        if !found.is_empty() {
            self.shared.net.send(&from, &PeerMsg::Inputs(found));
        }
    }

    fn on_npl(&mut self, from: NodeKey, m: NplMessage) {
        if let Err(why) = m.check() {
            tracing::warn!(peer = %from, node = %m.node, reason = why, "npl message dropped");
            return;
        }
        if !self.unl().contains(&m.node) {
            tracing::debug!(peer = %from, node = %m.node, "npl message from a node outside the UNL dropped");
            return;
        }
        let lcl = LclId::from(m.lcl);
        match &self.npl_sink {
            Some((running, sink)) if *running == lcl => {
                if sink.try_send((m.node.hex(), m.data)).is_err() {
                    tracing::warn!(node = %m.node, "contract npl queue full; message dropped");
                }
            }
            _ if lcl.seq_no > self.exec.lcl.seq_no => {
                if self.npl_early.len() < MAX_EARLY_NPL {
                    self.npl_early.push(m);
                }
            }
            _ => tracing::debug!(node = %m.node, lcl = %lcl, "late npl message dropped"),
        }
    }

    fn on_output_vote(&mut self, from: NodeKey, v: OutputVote) {
        if let Err(why) = v.check() {
            tracing::warn!(peer = %from, node = %v.node, reason = why, "output vote dropped");
            return;
        }
        if !self.unl().contains(&v.node) {
            return;
        }
        let seq = v.ledger.seq_no;
        let ours = self.exec.lcl.seq_no;
        if seq + 2 < ours || seq > ours + 2 {
            tracing::debug!(peer = %from, seq, "output vote for a distant ledger dropped");
            return;
        }
        self.votes.entry(v.ledger).or_default().insert(v.node, v);
        self.try_release(self.clock.now_ms());
    }

    // ----- the round -----

    fn set_status(&mut self, in_sync: bool, status: String) {
        if status != self.last_status {
            if in_sync {
                tracing::info!(status = %status, lcl = %self.exec.lcl, "consensus");
            } else {
                tracing::warn!(status = %status, lcl = %self.exec.lcl, "consensus");
            }
            self.last_status = status.clone();
        }
        self.shared.set_sync_status(SyncStatus {
            in_sync,
            vote_status: status,
        });
    }

    fn propose(&mut self, stage: u8, start: u64, inputs: Vec<Hash>) {
        let p = Proposal {
            node: self.me,
            stage,
            time: start,
            lcl: self.exec.lcl.into(),
            state_hash: self.exec.state_hash,
            patch_hash: self.exec.patch_hash,
            output_hash: self.exec.output_hash,
            output_sig: Sig([0; 64]),
            install: self.exec.install,
            inputs,
            sig: Sig([0; 64]),
        }
        .sign(&self.shared.signing_key);
        self.shared.net.broadcast(&PeerMsg::Proposal(p.clone()));
        self.rounds.entry(start).or_default().insert(p);
    }

    /// Inputs this node holds that may go into the next ledger, sorted.
    fn stage0_inputs(&self) -> Vec<Hash> {
        let next = self.exec.lcl.seq_no + 1;
        self.pool
            .iter()
            .filter(|(_, p)| p.input.max_ledger_seq_no >= next)
            .map(|(h, _)| *h)
            .take(crate::peer::wire::MAX_PROPOSAL_INPUTS)
            .collect()
    }

    async fn round(
        &mut self,
        start: u64,
        timing: RoundTiming,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        self.rounds
            .retain(|t, _| *t + 3 * timing.roundtime >= start);
        let unl = self.unl().clone();
        // A node syncing, or whose state is not known, proposes nothing.
        let member = unl.contains(&self.me) && self.syncing.is_none() && !self.state_unknown;
        let threshold = self.threshold;
        self.flush_relay();
        if member {
            let inputs = self.stage0_inputs();
            self.propose(0, start, inputs);
        }
        // A node alone in its UNL has nobody to wait for: its stages follow at once.
        let alone = member && unl.len() == 1;
        for stage in 1..=3u8 {
            if !alone {
                self.wait_until(timing.stage_start(start, stage), cancel)
                    .await?;
            }
            // Proposals late by less than a stage still count: under load a peer's may
            // arrive after the boundary.
            let give_up = if stage < 3 {
                timing.stage_start(start, stage + 1)
            } else {
                start + timing.roundtime
            };
            loop {
                self.flush_relay();
                self.absorb_install_failure(start);
                if self.state_unknown {
                    self.sync_to_majority(start);
                }
                let empty = RoundProposals::default();
                let props = self.rounds.get(&start).unwrap_or(&empty);
                let pool = &self.pool;
                match stage_verdict(stage, &self.exec, props, &unl, threshold, |h| {
                    pool.contains_key(h)
                }) {
                    StageVerdict::Propose { inputs } => {
                        if member {
                            self.propose(stage, start, inputs);
                        }
                        break;
                    }
                    StageVerdict::NotEnoughPeers { have, need } => {
                        self.catch_up_with_a_peer_ahead(start);
                        if self.clock.now_ms() >= give_up {
                            self.set_status(
                                false,
                                format!("not enough peers proposing (votes:{have} needed:{need})"),
                            );
                            return Ok(());
                        }
                        self.next_event(give_up, cancel).await?;
                        self.follow_late(cancel).await?;
                    }
                    StageVerdict::OutOfSync(why) => {
                        match why {
                            consensus::Desync::Lcl { majority } => self.request_ledgers(majority),
                            consensus::Desync::State { .. }
                            | consensus::Desync::Patch { .. }
                            | consensus::Desync::Diverged { .. } => self.sync_to_majority(start),
                        }
                        self.set_status(false, format!("out of sync: {why}"));
                        let behind = matches!(why, consensus::Desync::Lcl { .. });
                        if behind && self.syncing.is_none() && self.clock.now_ms() < give_up {
                            // The missed ledgers may arrive within this stage: the node then
                            // joins this round rather than the next, which the others may
                            // close without it (and it would be behind again).
                            self.next_event(give_up, cancel).await?;
                            self.follow_late(cancel).await?;
                            continue;
                        }
                        return Ok(());
                    }
                }
            }
        }
        let deadline = start + timing.roundtime;
        loop {
            let empty = RoundProposals::default();
            let props = self.rounds.get(&start).unwrap_or(&empty);
            match agreed(props, &unl, threshold) {
                Ok(p) => {
                    let p = p.clone();
                    let stage3 = stage3_of(props, &unl, &p);
                    return self.close(p, stage3, true, cancel).await;
                }
                Err(why) => {
                    self.catch_up_with_a_peer_ahead(start);
                    if self.clock.now_ms() >= deadline {
                        self.set_status(false, why.to_string());
                        return Ok(());
                    }
                    self.next_event(deadline, cancel).await?;
                    self.follow_late(cancel).await?;
                }
            }
        }
    }

    /// Closes the ledger the UNL agreed on, then executes it.
    async fn close(
        &mut self,
        agreed: Proposal,
        stage3: Vec<Proposal>,
        live: bool,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let lcl = self.exec.lcl;
        if self.syncing.is_some() || self.state_unknown {
            // The state sync under way (or the next one) decides.
            return Ok(());
        }
        if agreed.install != self.exec.install {
            // The only difference a node may follow: the UNL voted against a bundle this
            // node could install.
            let against = self
                .pending_install
                .as_ref()
                .map(|p| install_vote(&p.bundle, false));
            if against == Some(agreed.install) {
                bootstrap::abort_bundle(&self.shared.fs);
                if let Some(p) = self.pending_install.as_mut() {
                    p.prepared = None;
                }
                self.exec.install = agreed.install;
            } else {
                self.set_status(
                    false,
                    "out of sync: the UNL decided on a bundle installation this node cannot follow"
                        .to_owned(),
                );
                return Ok(());
            }
        }
        if LclId::from(agreed.lcl) != lcl
            || agreed.state_hash != self.exec.state_hash
            || agreed.patch_hash != self.exec.patch_hash
            || agreed.output_hash != self.exec.output_hash
        {
            self.set_status(
                false,
                format!(
                    "out of sync: the UNL closed a ledger after {} from a state this node does not have",
                    LclId::from(agreed.lcl)
                ),
            );
            return Ok(());
        }
        let missing = agreed
            .inputs
            .iter()
            .filter(|h| !self.pool.contains_key(*h))
            .count();
        if missing > 0 {
            let hashes: Vec<Hash> = agreed
                .inputs
                .iter()
                .filter(|h| !self.pool.contains_key(*h))
                .take(MAX_RELAY_BATCH)
                .copied()
                .collect();
            let now = self.clock.now_ms();
            let roundtime = self.timing().roundtime;
            // Ask again at most once a round.
            let ask = match &self.requested {
                Some((_, at)) => now >= at + roundtime,
                None => true,
            };
            if ask {
                tracing::info!(missing, "asking peers for inputs the UNL agreed on");
                self.shared
                    .net
                    .broadcast(&PeerMsg::InputRequest(hashes.clone()));
                self.requested = Some((hashes, now));
            }
            self.set_status(
                false,
                format!("out of sync: waiting for {missing} inputs the UNL agreed on"),
            );
            return Ok(());
        }
        self.requested = None;
        let inputs: Vec<SignedInput> = agreed
            .inputs
            .iter()
            .filter_map(|h| self.take_from_pool(h))
            .collect();
        let proof_signers: Vec<(NodeKey, Sig)> =
            stage3.iter().map(|q| (q.node, q.output_sig)).collect();
        let (closed, valid) = self.commit_agreed(&agreed, stage3, inputs)?;
        // The previous execution's outputs: the UNL just agreed on their root.
        if let Some(r) = &self.release {
            if r.root == agreed.output_hash {
                let votes = self.votes.entry(r.ledger.into()).or_default();
                for &(node, sig) in &proof_signers {
                    votes.entry(node).or_insert(OutputVote {
                        node,
                        ledger: r.ledger.into(),
                        state_hash: agreed.state_hash,
                        output_hash: agreed.output_hash,
                        sig,
                    });
                }
                if let Some(r) = self.release.as_mut() {
                    r.deadline = 0;
                }
                self.try_release(self.clock.now_ms());
            }
        }
        self.release = None;
        if self.behind_goal.is_some_and(|g| g.seq_no <= closed.seq_no) {
            self.behind_goal = None;
        }
        self.settle_install(agreed.install);
        self.apply_agreed_patch(agreed.patch_hash);
        let member = self.unl().contains(&self.me);
        self.set_status(
            true,
            if member {
                "in sync".to_owned()
            } else {
                "in sync (observer)".to_owned()
            },
        );
        tracing::debug!(seq = closed.seq_no, inputs = valid.len(), "ledger closed");
        let inputs = valid
            .into_iter()
            .map(|i| LedgerInput {
                user: i.user,
                input: i.input,
            })
            .collect();
        self.execute(closed.id(), agreed.time, inputs, live, cancel)
            .await
    }

    /// Records the ledger the UNL agreed on, with its proof, applying the input rules that
    /// every node applies against the ledger chain; users with inputs in it are told. Returns
    /// the ledger and the inputs that made it.
    fn commit_agreed(
        &mut self,
        agreed: &Proposal,
        stage3: Vec<Proposal>,
        mut inputs: Vec<SignedInput>,
    ) -> Result<(ledger::Ledger, Vec<SignedInput>), Stop> {
        let lcl = self.exec.lcl;
        inputs.sort_by_key(|i| ledger::input_order_key(i.nonce, &i.hash));
        let proof = LedgerProof {
            proposals: stage3,
            inputs: inputs.iter().map(|i| i.relay.clone()).collect(),
        };

        // The same rules on every node, against the ledger chain only.
        let new_seq = lcl.seq_no + 1;
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut valid = Vec::with_capacity(inputs.len());
        for input in inputs {
            let prev = match last.get(&input.user) {
                Some(n) => *n,
                None => self.store.last_nonce(&input.user)?,
            };
            let reason = if input.max_ledger_seq_no < new_seq {
                Some(RejectReason::MaxLedgerExpired)
            } else if input.nonce <= prev {
                Some(RejectReason::NonceExpired)
            } else {
                None
            };
            match reason {
                Some(r) => self.shared.send_to(&input.user, reject(r, &input.hash)),
                None => {
                    last.insert(input.user.clone(), input.nonce);
                    valid.push(input);
                }
            }
        }
        let mut users: Vec<[u8; 33]> = valid
            .iter()
            .filter_map(|i| pubkey_bytes_from_hex(&i.user))
            .collect();
        users.sort();
        users.dedup();
        let input_hashes: Vec<Hash> = valid.iter().map(|i| i.hash).collect();
        let closed = ledger::close_ledger(
            lcl,
            &RoundOutcome {
                time: agreed.time,
                state_hash: agreed.state_hash,
                patch_hash: agreed.patch_hash,
                users: &users,
                input_hashes: &input_hashes,
                output_hash: agreed.output_hash,
            },
        );
        let stored: Vec<StoredInput> = valid
            .iter()
            .map(|i| StoredInput {
                pubkey: i.user.clone(),
                nonce: i.nonce,
                hash: i.hash,
                blob: i.input.clone(),
            })
            .collect();
        self.store.commit(&closed, &stored)?;
        self.store.record_proof(closed.seq_no, &proof.to_bytes())?;
        if self.cfg.ledger.retention > 0 {
            let keep = self.cfg.ledger.oldest_kept(closed.seq_no);
            let pruned = self.store.prune_before(keep)?;
            if pruned > 0 {
                tracing::debug!(
                    pruned,
                    oldest = keep,
                    "ledgers past ledger.retention dropped"
                );
            }
        }
        self.recent.insert(
            closed.seq_no,
            valid.iter().map(|i| i.relay.clone()).collect(),
        );
        while self.recent.len() > 8 {
            self.recent.pop_first();
        }
        self.shared.set_lcl(closed.id());
        for input in &valid {
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
        self.expire_pool(closed.seq_no);
        Ok((closed, valid))
    }

    /// Drops pooled inputs that can no longer make a ledger after `seq`.
    fn expire_pool(&mut self, seq: u64) {
        let expired: Vec<Hash> = self
            .pool
            .iter()
            .filter(|(_, p)| p.input.max_ledger_seq_no <= seq)
            .map(|(h, _)| *h)
            .collect();
        for h in expired {
            if let Some(i) = self.take_from_pool(&h) {
                self.shared
                    .send_to(&i.user, reject(RejectReason::MaxLedgerExpired, &i.hash));
            }
        }
    }

    /// Executes `ledger`'s inputs (the bootstrap's and the contract's), records the result
    /// and votes for its output root. `live` is false when re-executing at start-up.
    async fn execute(
        &mut self,
        ledger: LclId,
        time: u64,
        inputs: Vec<LedgerInput>,
        live: bool,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let started = std::time::Instant::now();
        let contract = self.shared.contract();
        let installed = !contract.bin_path.is_empty();
        let mut outputs: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (user, reply) in std::mem::take(&mut self.boot_replies) {
            push_reply(&mut outputs, &user, reply);
        }
        let mut contract_users: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut boot: Vec<(String, BootstrapInput)> = Vec::new();
        for input in &inputs {
            let is_owner = input.user == self.shared.owner_pubkey;
            let request = bootstrap::parse_request(&input.input, installed);
            match request {
                Some(req) if is_owner => boot.push((input.user.clone(), req)),
                Some(req) => push_reply(
                    &mut outputs,
                    &input.user,
                    BootstrapReply::fail(reply_kind(&req), not_allowed(&req)),
                ),
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
            let cmd = self.shared.contract_command(&contract);
            let ctx = self.shared.run_context(false, time, Some(ledger));
            let (npl_out_tx, mut npl_out_rx) = mpsc::channel::<Vec<u8>>(1024);
            let (npl_in_tx, npl_in_rx) = mpsc::channel(4096);
            for m in std::mem::take(&mut self.npl_early) {
                if LclId::from(m.lcl) == ledger {
                    let _ = npl_in_tx.try_send((m.node.hex(), m.data));
                } else if m.lcl.seq_no > ledger.seq_no {
                    self.npl_early.push(m);
                }
            }
            self.npl_sink = Some((ledger, npl_in_tx.clone()));
            let link = NplLink {
                outgoing: npl_out_tx,
                incoming: npl_in_rx,
            };
            let run = exec::run_contract(&cmd, &ctx, &contract_users, Some(link));
            tokio::pin!(run);
            // Peers' messages keep flowing while the contract runs: NPL reaches it, and
            // proposals of the next round are collected.
            let run = loop {
                tokio::select! {
                    run = &mut run => break run,
                    _ = cancel.cancelled() => {
                        tracing::info!(seq = ledger.seq_no, "execution abandoned for shutdown; it runs again at start");
                        self.npl_sink = None;
                        return Err(Stop::Cancelled);
                    }
                    msg = self.user_rx.recv() => if let Some(msg) = msg {
                        self.on_round_msg(msg)
                    },
                    msg = self.peer_rx.recv(), if !self.peer_closed => match msg {
                        Some(m) => self.on_peer(m),
                        None => self.peer_closed = true,
                    },
                    data = npl_out_rx.recv() => if let Some(data) = data {
                        let m = NplMessage::new(&self.shared.signing_key, ledger, data);
                        if self.unl().contains(&self.me) {
                            let _ = npl_in_tx.try_send((m.node.hex(), m.data.clone()));
                            self.shared.net.broadcast(&PeerMsg::Npl(m));
                        }
                    },
                }
            };
            self.npl_sink = None;
            // As hpcore: post_exec.sh follows a run that exited, never a killed one.
            let exited = matches!(&run, Ok(r) if matches!(r.end, RunEnd::Exited(_)));
            match run {
                Ok(result) => {
                    match result.end {
                        RunEnd::Exited(0) => {}
                        RunEnd::Exited(code) => tracing::warn!(
                            code,
                            seq = ledger.seq_no,
                            "contract exited with an error code"
                        ),
                        RunEnd::Signalled(sig) => {
                            tracing::warn!(sig, seq = ledger.seq_no, "contract killed by a signal")
                        }
                        RunEnd::TimedOut => tracing::warn!(
                            seq = ledger.seq_no,
                            "contract passed exec_timeout and was killed"
                        ),
                    }
                    for user in &result.truncated {
                        tracing::warn!(user, "contract output passed user_output_bytes; cut");
                    }
                    for message in &result.control {
                        self.on_control(message);
                    }
                    for (user, msgs) in result.outputs {
                        if !msgs.is_empty() {
                            outputs.entry(user).or_default().extend(msgs);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %berth_log::chain(&e), "contract could not run"),
            }
            if exited {
                self.post_exec(ledger).await;
            }
        }
        let executed = started.elapsed();
        for (user, req) in boot {
            if let Some(reply) = self.bootstrap(user.clone(), req).await {
                push_reply(&mut outputs, &user, reply);
            }
        }

        let state_hash = self.state_hash().await?;
        let patch_hash = self.patch_hash();
        let leaves = ledger::output_leaves(&outputs, state_hash);
        let root = ledger::leaves_root(&leaves);
        let stored: Vec<StoredOutputs> = outputs
            .iter()
            .map(|(user, msgs)| StoredOutputs {
                pubkey: user.clone(),
                outputs: msgs.clone(),
            })
            .collect();
        self.store.record_execution(
            &Execution {
                seq_no: ledger.seq_no,
                state_hash,
                patch_hash,
                output_hash: root,
            },
            &stored,
        )?;
        self.exec = OwnView {
            lcl: ledger,
            state_hash,
            patch_hash,
            output_hash: root,
            install: self.own_install_vote(),
        };
        tracing::debug!(
            seq = ledger.seq_no,
            exec_ms = executed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "ledger executed"
        );
        if !live {
            return Ok(());
        }
        if self.unl().contains(&self.me) {
            let vote = OutputVote {
                node: self.me,
                ledger: ledger.into(),
                state_hash,
                output_hash: root,
                sig: Sig::sign(&self.shared.signing_key, &root),
            };
            self.shared
                .net
                .broadcast(&PeerMsg::OutputVote(vote.clone()));
            self.votes
                .entry(ledger.into())
                .or_default()
                .insert(self.me, vote);
        }
        let seq = ledger.seq_no;
        self.votes.retain(|l, _| l.seq_no + 2 >= seq);
        let roundtime = self.shared.contract().consensus.roundtime;
        self.release = Some(Release {
            ledger,
            root,
            outputs,
            leaves,
            deadline: self.clock.now_ms() + roundtime,
        });
        self.try_release(self.clock.now_ms());
        Ok(())
    }

    /// Sends the pending outputs once enough of the UNL signed their root: at once with
    /// 80 % (what HotPocket clients require) and `threshold` %, or after the deadline with
    /// `threshold` %.
    fn try_release(&mut self, now: u64) {
        let Some(r) = &self.release else { return };
        let unl = self.unl().clone();
        let threshold = self.threshold;
        let need = votes_needed(unl.len(), f64::from(threshold));
        let full = need.max(votes_needed(unl.len(), 80.0));
        let sigs: Vec<(NodeKey, Sig)> = self
            .votes
            .get(&WireLcl::from(r.ledger))
            .map(|votes| {
                votes
                    .values()
                    .filter(|v| v.output_hash == r.root && unl.contains(&v.node))
                    .map(|v| (v.node, v.sig))
                    .collect()
            })
            .unwrap_or_default();
        if sigs.len() < full && !(sigs.len() >= need && now >= r.deadline) {
            return;
        }
        let Some(r) = self.release.take() else { return };
        let unl_sig: Vec<(Vec<u8>, Vec<u8>)> = sigs
            .iter()
            .map(|(k, s)| (k.prefixed().to_vec(), s.0.to_vec()))
            .collect();
        for (user, msgs) in &r.outputs {
            let Some(own) = r
                .leaves
                .iter()
                .find(|(u, _)| u.as_deref() == Some(user.as_str()))
                .map(|(_, h)| *h)
            else {
                continue;
            };
            let tree = r
                .leaves
                .iter()
                .map(|(u, h)| (u.as_deref() != Some(user.as_str())).then(|| h.to_vec()))
                .collect();
            self.shared.send_to(
                user,
                Reply::Output {
                    ledger_seq_no: r.ledger.seq_no,
                    ledger_hash: r.ledger.hash.to_vec(),
                    outputs: msgs.clone(),
                    output_hash: own.to_vec(),
                    hash_tree: tree,
                    unl_sig: unl_sig.clone(),
                },
            );
        }
    }

    /// Re-hashes the state off the round loop's thread (file-system work blocks; the tree
    /// never opens a FIFO or follows a link, see `state`).
    async fn state_hash(&mut self) -> Result<Hash, NodeError> {
        let state_dir = self.shared.fs.state_dir();
        let mut tree = std::mem::take(&mut self.tree);
        let dir = state_dir.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let hash = tree.rehash(&dir);
            (tree, hash)
        })
        .await;
        let hash = match joined {
            Ok((tree, hash)) => {
                self.tree = tree;
                hash
            }
            Err(e) => Err(std::io::Error::other(format!(
                "the state hasher failed: {e}"
            ))),
        }
        .map_err(|source| NodeError::ContractDir {
            path: state_dir,
            source,
        })?;
        self.refresh_read_view();
        Ok(hash)
    }

    /// Makes a read-only view of the state just hashed, once read requests asked for one.
    fn refresh_read_view(&mut self) {
        use std::sync::atomic::Ordering;
        if !self.shared.read_views_wanted.load(Ordering::Relaxed) {
            return;
        }
        if self.views.is_none() {
            match crate::readview::ReadViews::new(&self.shared.fs.root) {
                Ok(v) => self.views = Some(v),
                Err(e) => {
                    tracing::warn!(error = %berth_log::chain(&e), "read-only views cannot be made; read requests wait");
                    return;
                }
            }
        }
        let (state_dir, patch) = (self.shared.fs.state_dir(), self.shared.fs.patch_file());
        let Some(views) = self.views.as_mut() else {
            return;
        };
        match views.refresh(&state_dir, &patch, &self.tree) {
            Ok(view) => self.shared.set_read_view(view),
            Err(e) => {
                tracing::warn!(error = %berth_log::chain(&e), "making a read-only view failed; reads use the previous one")
            }
        }
    }

    fn patch_hash(&self) -> Hash {
        std::fs::read(self.shared.fs.patch_file())
            .map(|b| ledger::hash_parts([b.as_slice()]))
            .unwrap_or(ZERO_HASH)
    }

    /// Applies `../patch.cfg` when the ledger just closed agreed on its current content.
    fn apply_agreed_patch(&mut self, agreed: Hash) {
        let path = self.shared.fs.patch_file();
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let hash = ledger::hash_parts([bytes.as_slice()]);
        if hash != agreed || self.applied_patch == Some(hash) {
            return;
        }
        self.applied_patch = Some(hash);
        let installed = !self.shared.contract().bin_path.is_empty();
        match parse_patch(&bytes, installed) {
            Ok(patch) => {
                let before = self.shared.contract();
                let mut contract = before.clone();
                contract.apply(&patch);
                if let Err(e) = self.save_contract(contract) {
                    tracing::warn!(error = %berth_log::chain(&e), "saving patched config failed");
                    return;
                }
                let after = self.shared.contract();
                tracing::info!(
                    seq = self.shared.lcl().seq_no,
                    unl = after.unl.len(),
                    roundtime = after.consensus.roundtime,
                    "patch.cfg applied"
                );
                if after.unl != before.unl {
                    let unl = after
                        .unl
                        .iter()
                        .filter_map(|k| pubkey_bytes_from_hex(k).map(|b| b.to_vec()))
                        .collect();
                    self.shared.send_to_all(&Reply::UnlChange { unl });
                }
                let timing = self.timing();
                self.shared.net.set_time_config(timing.time_config());
            }
            Err(e) => tracing::warn!(reason = %e, "patch.cfg is not valid; ignored"),
        }
    }

    async fn bootstrap(&mut self, owner: String, req: BootstrapInput) -> Option<BootstrapReply> {
        match req {
            BootstrapInput::Cluster { spec } => Some(self.cluster_change(spec)),
            BootstrapInput::Status => {
                let contract = self.shared.contract();
                let message = if contract.bin_path.is_empty() {
                    "Bootstrap contract is online".to_owned()
                } else {
                    format!("Contract version {} is installed", contract.version)
                };
                Some(BootstrapReply::ok("statusResult", message))
            }
            BootstrapInput::Upload { zip } => {
                let Some(zip) = zip else {
                    return Some(BootstrapReply::fail(
                        "uploadResult",
                        "upload content missing: send zip bytes (BSON binary, or base64 in JSON)",
                    ));
                };
                if self.pending_install.is_some() {
                    return Some(BootstrapReply::fail(
                        "uploadResult",
                        "another bundle is being installed; upload again once it is answered",
                    ));
                }
                let bootstrap_cfg = self.cfg.bootstrap.clone();
                // Validation depends on the bundle alone: every node refuses it the same way.
                let staged = match bootstrap::stage_bundle(&zip, &self.shared.fs, &bootstrap_cfg) {
                    Ok(staged) => staged,
                    Err(e) => {
                        tracing::warn!(error = %berth_log::chain(&e), "contract bundle refused");
                        return Some(BootstrapReply::fail("uploadResult", e.to_string()));
                    }
                };
                // install.sh may not behave the same everywhere: the UNL votes on it, and the
                // bundle goes live at the next ledger on every node, or on none.
                let bundle = ledger::hash_parts([zip.as_slice()]);
                let pending = match bootstrap::prepare_bundle(
                    staged,
                    &self.shared.fs,
                    &bootstrap_cfg,
                    &self.shared.jail,
                )
                .await
                {
                    Ok(prepared) => PendingInstall {
                        bundle,
                        owner,
                        prepared: Some(prepared),
                        local_error: None,
                    },
                    Err(e) => {
                        tracing::warn!(error = %berth_log::chain(&e), "contract bundle could not be installed on this node");
                        PendingInstall {
                            bundle,
                            owner,
                            prepared: None,
                            local_error: Some(e.to_string()),
                        }
                    }
                };
                self.pending_install = Some(pending);
                None
            }
        }
    }

    /// This node's install vote for its proposals.
    fn own_install_vote(&self) -> Hash {
        self.pending_install
            .as_ref()
            .map_or(ZERO_HASH, |p| install_vote(&p.bundle, p.prepared.is_some()))
    }

    /// A UNL member that could not install the waiting bundle votes against it; so does
    /// everyone who sees that vote, and the bundle goes live nowhere.
    fn absorb_install_failure(&mut self, start: u64) {
        let Some(p) = &self.pending_install else {
            return;
        };
        if p.prepared.is_none() {
            return;
        }
        let against = install_vote(&p.bundle, false);
        let unl = self.unl().clone();
        let lcl = self.exec.lcl;
        let seen = self.rounds.get(&start).is_some_and(|props| {
            props
                .from_unl(&unl)
                .any(|q| q.install == against && LclId::from(q.lcl) == lcl)
        });
        if seen {
            tracing::warn!("another node could not install the waiting bundle: voting against it");
            bootstrap::abort_bundle(&self.shared.fs);
            if let Some(p) = self.pending_install.as_mut() {
                p.prepared = None;
            }
            self.exec.install = against;
        }
    }

    /// Makes the waiting bundle live, or drops it, as the ledger just closed decided; the
    /// owner's answer goes out with the next execution's outputs.
    fn settle_install(&mut self, agreed: Hash) {
        let Some(p) = self.pending_install.take() else {
            return;
        };
        let alone = self.unl().len() == 1;
        let reply = if agreed == install_vote(&p.bundle, true) {
            let mut contract = self.shared.contract();
            let done = p
                .prepared
                .map(|prepared| bootstrap::commit_bundle(prepared, &self.shared.fs, &mut contract));
            match done {
                Some(Ok(())) => match self.save_contract(contract) {
                    Ok(()) => {
                        let seq = self.shared.lcl().seq_no;
                        if let Err(e) = self.store.record_bundle(seq, &p.bundle) {
                            tracing::error!(seq, error = %berth_log::chain(&e), "recording the installed bundle's hash failed");
                        }
                        tracing::info!(seq, "contract bundle installed");
                        BootstrapReply::ok(
                            "uploadResult",
                            "Contract upload and installation succeeded",
                        )
                    }
                    Err(e) => {
                        BootstrapReply::fail("uploadResult", format!("saving the config: {e}"))
                    }
                },
                Some(Err(e)) => {
                    tracing::error!(error = %berth_log::chain(&e), "the UNL installed the bundle but this node could not switch to it");
                    BootstrapReply::fail("uploadResult", e.to_string())
                }
                None => {
                    BootstrapReply::fail("uploadResult", "this node could not install the bundle")
                }
            }
        } else {
            bootstrap::abort_bundle(&self.shared.fs);
            let message = match (alone, p.local_error) {
                (true, Some(e)) => e,
                _ => "installation failed on at least one node of the cluster; the old contract keeps running".to_owned(),
            };
            tracing::warn!(message, "contract bundle not installed");
            BootstrapReply::fail("uploadResult", message)
        };
        self.boot_replies.push((p.owner, reply));
    }

    fn save_contract(
        &mut self,
        contract: crate::config::ContractSection,
    ) -> Result<(), crate::config::ConfigError> {
        self.cfg.contract = contract.clone();
        self.cfg.save(&self.state_dir)?;
        let patch = contract_patch(&contract);
        if let Ok(text) = serde_json::to_vec_pretty(&patch) {
            let path = self.shared.fs.patch_file();
            if let Err(e) = crate::fsutil::write_atomic(&path, &text, 0o644) {
                tracing::warn!(error = %berth_log::chain(&e), path = %path.display(), "writing patch.cfg failed");
            }
            self.applied_patch = Some(ledger::hash_parts([text.as_slice()]));
        }
        self.unl = Self::parse_unl(&contract);
        self.threshold = contract.consensus.threshold;
        self.shared.set_contract(contract);
        Ok(())
    }

    /// A contract's control message: `peer_changeset` changes the peers this node dials
    /// (each node applies its own contract's, as hpcore does).
    fn on_control(&mut self, message: &exec::ControlMessage) {
        let exec::ControlMessage::PeerChangeset { add, remove } = message;
        let valid = |p: &String| {
            p.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0)
            })
        };
        let mut peers = self.cfg.mesh.known_peers.clone();
        for p in add {
            if !valid(p) {
                tracing::warn!(peer = %p, "peer_changeset: not host:port; ignored");
            } else if !peers.contains(p) {
                peers.push(p.clone());
            }
        }
        peers.retain(|p| !remove.contains(p));
        if peers == self.cfg.mesh.known_peers {
            return;
        }
        tracing::info!(
            added = add.len(),
            removed = remove.len(),
            peers = peers.len(),
            "peer_changeset from the contract applied"
        );
        self.replace_known_peers(peers);
    }

    /// Replaces the peers this node dials (saved in `hp.cfg`; they apply at once).
    fn replace_known_peers(&mut self, peers: Vec<String>) {
        self.cfg.mesh.known_peers = peers.clone();
        if let Err(e) = self.cfg.save(&self.state_dir) {
            tracing::warn!(error = %berth_log::chain(&e), "saving the changed peers failed; they apply until a restart");
        }
        self.shared.net.set_known_peers(peers);
    }

    // ----- the cluster: the genesis hold and the owner's cluster requests -----

    /// The genesis hold: the node answers its users but runs no rounds and closes no ledger
    /// until the owner's cluster request sets its UNL and peers.
    async fn hold(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        tracing::info!(node = %self.shared.node_pubkey, "genesis hold: no rounds until the owner's cluster request");
        self.set_status(false, AWAITING_CLUSTER.to_owned());
        while self.held {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                msg = self.user_rx.recv() => match msg {
                    Some(RoundMsg::Input(input)) => self.on_held_input(input),
                    Some(other) => self.on_round_msg(other),
                    None => return Err(Stop::Cancelled),
                },
                msg = self.peer_rx.recv(), if !self.peer_closed => match msg {
                    Some(inbound) => self.on_peer(inbound),
                    None => self.peer_closed = true,
                },
            }
        }
        Ok(())
    }

    /// An input during the hold: answered at once and never recorded. Only the owner's
    /// cluster request changes anything.
    fn on_held_input(&mut self, input: SignedInput) {
        if let Err(reason) = self.check_input(&input) {
            self.shared
                .send_to(&input.user, reject(reason, &input.hash));
            return;
        }
        self.nonces.insert(input.user.clone(), input.nonce);
        let is_owner = input.user == self.shared.owner_pubkey;
        let reply = match bootstrap::parse_request(&input.input, false) {
            Some(req) if !is_owner => {
                tracing::info!(user = %input.user, "request of a user who is not the owner refused during the genesis hold");
                BootstrapReply::fail(reply_kind(&req), not_allowed(&req))
            }
            Some(BootstrapInput::Cluster { spec }) => self.apply_cluster_now(spec),
            Some(BootstrapInput::Status) => BootstrapReply::ok("statusResult", AWAITING_CLUSTER),
            Some(req) => BootstrapReply::fail(reply_kind(&req), AWAITING_CLUSTER),
            None => BootstrapReply::fail("error", AWAITING_CLUSTER),
        };
        self.answer_now(&input, reply);
    }

    /// Answers an input at once, outside consensus: accepted at this node's last closed
    /// ledger (genesis), with one output whose root this node alone signs.
    fn answer_now(&self, input: &SignedInput, reply: BootstrapReply) {
        let (Some(key), Ok(bytes)) = (
            pubkey_bytes_from_hex(&input.user),
            serde_json::to_vec(&reply),
        ) else {
            return;
        };
        let lcl = self.shared.lcl();
        let outputs = vec![bytes];
        let own = ledger::user_output_hash(&key, &outputs);
        let state = self.exec.state_hash;
        let root = ledger::hash_parts([own.as_slice(), state.as_slice()]);
        let sig = Sig::sign(&self.shared.signing_key, &root);
        self.shared.send_to(
            &input.user,
            Reply::InputStatus {
                status: InputStatus::Accepted,
                reason: None,
                input_hash: input.hash.to_vec(),
                ledger: Some((lcl.seq_no, lcl.hash.to_vec())),
            },
        );
        self.shared.send_to(
            &input.user,
            Reply::Output {
                ledger_seq_no: lcl.seq_no,
                ledger_hash: lcl.hash.to_vec(),
                outputs,
                output_hash: own.to_vec(),
                hash_tree: vec![None, Some(state.to_vec())],
                unl_sig: vec![(self.me.prefixed().to_vec(), sig.0.to_vec())],
            },
        );
    }

    /// Applies the owner's cluster request at once (the hold: there is no ledger to agree
    /// in): the UNL and the peers are saved, the hold is cleared, and rounds start.
    fn apply_cluster_now(&mut self, spec: Option<ClusterSpec>) -> BootstrapReply {
        let spec = match checked_spec(spec) {
            Ok(spec) => spec,
            Err(message) => {
                tracing::warn!(reason = %message, "cluster request refused; the node stays held");
                return BootstrapReply::fail(CLUSTER_RESULT, message);
            }
        };
        let me = self.shared.node_pubkey.to_ascii_lowercase();
        let observer = !self.cfg.contract.unl.contains(&me);
        if !observer && !spec.unl.contains(&me) {
            let message = format!(
                "the cluster's UNL does not contain this node's key {me}; the node stays held"
            );
            tracing::warn!(reason = %message, "cluster request refused");
            return BootstrapReply::fail(CLUSTER_RESULT, message);
        }
        let peers = self.own_peers(&spec.peers);
        let mut cfg = self.cfg.clone();
        cfg.contract.unl = spec.unl.clone();
        cfg.mesh.known_peers = peers.clone();
        cfg.mesh.await_cluster = false;
        if let Err(e) = cfg.validate().and_then(|()| cfg.save(&self.state_dir)) {
            tracing::error!(error = %berth_log::chain(&e), "saving the cluster failed; the node stays held");
            return BootstrapReply::fail(
                CLUSTER_RESULT,
                format!("saving the cluster: {}", berth_log::chain(&e)),
            );
        }
        let changed = cfg.contract.unl != self.cfg.contract.unl;
        self.cfg = cfg;
        self.unl = Self::parse_unl(&self.cfg.contract);
        self.shared.set_contract(self.cfg.contract.clone());
        self.shared.net.set_known_peers(peers.clone());
        if changed {
            let unl = spec
                .unl
                .iter()
                .filter_map(|k| pubkey_bytes_from_hex(k).map(|b| b.to_vec()))
                .collect();
            self.shared.send_to_all(&Reply::UnlChange { unl });
        }
        let was_held = std::mem::take(&mut self.held);
        tracing::info!(
            unl = ?spec.unl,
            peers = ?peers,
            was_held,
            "cluster set by the owner; rounds start"
        );
        BootstrapReply::ok(
            CLUSTER_RESULT,
            format!(
                "cluster set: a UNL of {} nodes, dialing {} peers",
                spec.unl.len(),
                peers.len()
            ),
        )
    }

    /// The owner's cluster request again once the hold is cleared but before any ledger
    /// closed (a tenant resuming): the cluster already set is answered ok at once. Any
    /// other goes through consensus like every input. True when the input was answered.
    fn resumed_cluster_request(&mut self, input: &SignedInput) -> bool {
        if input.user != self.shared.owner_pubkey || self.shared.lcl().seq_no != 0 {
            return false;
        }
        let Some(BootstrapInput::Cluster { spec: Some(spec) }) =
            bootstrap::parse_request(&input.input, true)
        else {
            return false;
        };
        let Ok(spec) = checked_spec(Some(spec)) else {
            return false;
        };
        if spec.unl != self.cfg.contract.unl
            || self.own_peers(&spec.peers) != self.cfg.mesh.known_peers
        {
            return false;
        }
        if let Err(reason) = self.check_input(input) {
            self.shared
                .send_to(&input.user, reject(reason, &input.hash));
            return true;
        }
        self.nonces.insert(input.user.clone(), input.nonce);
        tracing::info!("the owner sent the cluster already set; answered at once");
        self.answer_now(
            input,
            BootstrapReply::ok(
                CLUSTER_RESULT,
                format!("cluster already set: a UNL of {} nodes", spec.unl.len()),
            ),
        );
        true
    }

    /// The owner's cluster request in a ledger, executed alike on every node: the UNL goes
    /// into `patch.cfg` (other keys kept), so it changes at the ledger that agrees on it,
    /// and the peers replace this node's. The answer depends on the request alone.
    fn cluster_change(&mut self, spec: Option<ClusterSpec>) -> BootstrapReply {
        let spec = match checked_spec(spec) {
            Ok(spec) => spec,
            Err(message) => {
                tracing::warn!(reason = %message, "cluster request refused");
                return BootstrapReply::fail(CLUSTER_RESULT, message);
            }
        };
        if let Err(e) = self.write_patch_unl(&spec.unl) {
            let path = self.shared.fs.patch_file();
            tracing::error!(error = %berth_log::chain(&e), path = %path.display(), "writing the cluster's UNL failed");
            return BootstrapReply::fail(
                CLUSTER_RESULT,
                format!("writing {}: {e}", path.display()),
            );
        }
        let peers = self.own_peers(&spec.peers);
        if peers != self.cfg.mesh.known_peers {
            self.replace_known_peers(peers.clone());
        }
        tracing::info!(
            seq = self.shared.lcl().seq_no,
            unl = ?spec.unl,
            peers = ?peers,
            "cluster request executed: the UNL changes with the ledger that agrees on it"
        );
        BootstrapReply::ok(
            CLUSTER_RESULT,
            format!(
                "cluster change agreed: the UNL of {} nodes takes effect with the next ledger",
                spec.unl.len()
            ),
        )
    }

    /// Sets the `unl` key of `patch.cfg`, keeping its other keys; a node without one (no
    /// contract installed) starts from its contract section, which every node shares.
    fn write_patch_unl(&self, unl: &[String]) -> std::io::Result<()> {
        let path = self.shared.fs.patch_file();
        let existing = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .filter(serde_json::Value::is_object),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut patch = match existing {
            Some(patch) => patch,
            None => serde_json::to_value(contract_patch(&self.shared.contract()))
                .map_err(std::io::Error::other)?,
        };
        patch["unl"] = serde_json::json!(unl);
        let text = serde_json::to_vec_pretty(&patch).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&path, &text, 0o644)
    }

    /// `peers` without this node's own peer address (when it can tell: same port, and a
    /// loopback or its listen address); the peer port refuses a session with its own key
    /// in any case.
    fn own_peers(&self, peers: &[String]) -> Vec<String> {
        let own = self.shared.net.local_addr();
        let mut out: Vec<String> = Vec::with_capacity(peers.len());
        for p in peers {
            if is_own_addr(p, own) {
                tracing::debug!(peer = %p, "this node's own address left out of its peers");
            } else if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    async fn post_exec(&mut self, lcl: LclId) {
        let timeout = self
            .shared
            .contract_command(&self.shared.contract())
            .timeout;
        crate::replay::post_exec(&self.shared.jail, &self.shared.fs.state_dir(), lcl, timeout)
            .await;
    }
}

/// What a node that awaits its cluster answers to everything but its owner's cluster
/// request.
const AWAITING_CLUSTER: &str =
    "the node awaits its cluster: no rounds run until its owner's cluster request sets the UNL and the peers";

/// The kind of the answer to a cluster request.
const CLUSTER_RESULT: &str = "clusterResult";

/// The contract section as a `patch.cfg` (every key set).
fn contract_patch(contract: &crate::config::ContractSection) -> ContractConfig {
    ContractConfig {
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
    }
}

/// A cluster request's spec, validated, with its keys lowercased and sorted (so that every
/// node's config and `patch.cfg` spell the UNL alike whatever order the owner sent) and its
/// peers trimmed. The error is the owner's answer.
fn checked_spec(spec: Option<ClusterSpec>) -> Result<ClusterSpec, String> {
    let Some(spec) = spec else {
        return Err(
            "the cluster request is not a cluster spec: send {\"unl\": [\"ed…\"], \"peers\": [\"host:port\"]}"
                .to_owned(),
        );
    };
    let mut unl: Vec<String> = spec
        .unl
        .iter()
        .map(|k| k.trim().to_ascii_lowercase())
        .collect();
    unl.sort();
    let spec = ClusterSpec {
        unl,
        peers: spec.peers.iter().map(|p| p.trim().to_owned()).collect(),
    };
    spec.validate()
        .map_err(|e| format!("invalid cluster spec: `{}`: {}", e.key, e.problem))?;
    Ok(spec)
}

/// Whether `peer` (`host:port`) names this node's own peer port `own`, as far as the
/// address tells: the same port on a loopback address, `localhost`, or the listen address.
fn is_own_addr(peer: &str, own: std::net::SocketAddr) -> bool {
    let Some((host, port)) = peer.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(own.port()) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return false,
        }
    };
    ip == own.ip() || (ip.is_loopback() && (own.ip().is_loopback() || own.ip().is_unspecified()))
}

/// The keys of the contract section a `patch.cfg` may set.
const PATCH_KEYS: [&str; 10] = [
    "id",
    "version",
    "unl",
    "bin_path",
    "bin_args",
    "environment",
    "max_input_ledger_offset",
    "consensus",
    "npl",
    "round_limits",
];

/// Parses and validates a `patch.cfg`. As hpcore, a top-level key it does not know is
/// ignored (and logged), not a reason to reject the file. A node with no contract
/// `installed` may have a patch with an empty `bin_path` (a cluster request writes the UNL
/// before any bundle): it stays without a contract.
fn parse_patch(bytes: &[u8], installed: bool) -> Result<ContractConfig, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    let unknown: Vec<String> = object
        .keys()
        .filter(|k| !PATCH_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in &unknown {
        tracing::warn!(key, "patch.cfg key not known; ignored");
        object.remove(key);
    }
    let config: ContractConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if !installed && config.bin_path.is_empty() {
        let placeholder = ContractConfig {
            bin_path: "-".to_owned(),
            ..config.clone()
        };
        placeholder.validate().map_err(|e| e.to_string())?;
    } else {
        config.validate().map_err(|e| e.to_string())?;
    }
    Ok(config)
}

/// The output root of a ledger's outputs, as execution computes it: the users' output
/// hashes in byte order, then the state hash after the run. None when a user key is bad.
fn output_root(outputs: &LedgerOutputs, state_hash: Hash) -> Option<Hash> {
    let mut leaves = Vec::with_capacity(outputs.len() + 1);
    for (user, msgs) in outputs.iter().filter(|(_, m)| !m.is_empty()) {
        let key = pubkey_bytes_from_hex(user)?;
        leaves.push(ledger::user_output_hash(&key, msgs));
    }
    leaves.sort();
    leaves.push(state_hash);
    Some(ledger::hash_parts(leaves.iter().map(|h| h.as_slice())))
}

fn reply_kind(req: &BootstrapInput) -> &'static str {
    match req {
        BootstrapInput::Upload { .. } => "uploadResult",
        BootstrapInput::Status => "statusResult",
        BootstrapInput::Cluster { .. } => "clusterResult",
    }
}

/// The answer to a user who is not the owner and sent an installer request.
fn not_allowed(req: &BootstrapInput) -> &'static str {
    match req {
        BootstrapInput::Cluster { .. } => {
            "UserNotAllowed: only the node's owner may set its cluster"
        }
        _ => "UserNotAllowed",
    }
}

fn push_reply(outputs: &mut BTreeMap<String, Vec<Vec<u8>>>, user: &str, reply: BootstrapReply) {
    if let Ok(bytes) = serde_json::to_vec(&reply) {
        outputs.entry(user.to_owned()).or_default().push(bytes);
    }
}

/// Checks relayed inputs off the round loop, batch after batch in the order they came (so
/// one user's inputs keep their order): the user's signature over the container, then the
/// container itself. Drops are logged with their reason.
async fn verifier(
    mut rx: mpsc::Receiver<(NodeKey, Vec<RelayedInput>)>,
    tx: mpsc::Sender<RoundMsg>,
) {
    while let Some((from, batch)) = rx.recv().await {
        let Ok(verified) = tokio::task::spawn_blocking(move || verify_relayed(from, batch)).await
        else {
            continue;
        };
        if !verified.is_empty() && tx.send(RoundMsg::Relayed(verified)).await.is_err() {
            return;
        }
    }
}

fn verify_relayed(from: NodeKey, batch: Vec<RelayedInput>) -> Vec<SignedInput> {
    // One batch verification for the common case (about twice as fast as one by one);
    // when it fails, each signature is checked on its own to find the bad ones.
    let all_good = batch_verifies(&batch);
    let mut out = Vec::with_capacity(batch.len());
    for relay in batch {
        let protocol = match relay.protocol {
            0 => Protocol::Json,
            1 => Protocol::Bson,
            other => {
                tracing::warn!(peer = %from, protocol = other, "relayed input with an unknown protocol dropped");
                continue;
            }
        };
        if !all_good && !relay.user.verifies(&relay.container, &relay.sig) {
            tracing::warn!(peer = %from, user = %relay.user, "relayed input with a bad user signature dropped");
            continue;
        }
        let Some(parsed) = ParsedContainer::decode(protocol, &relay.container) else {
            tracing::warn!(peer = %from, user = %relay.user, "relayed input container does not parse; dropped");
            continue;
        };
        if parsed.nonce == 0 {
            tracing::warn!(peer = %from, user = %relay.user, "relayed input with nonce 0 dropped");
            continue;
        }
        out.push(SignedInput {
            user: relay.user.hex(),
            nonce: parsed.nonce,
            max_ledger_seq_no: parsed.max_ledger_seq_no,
            input: parsed.input,
            hash: ledger::hash_parts([relay.sig.0.as_slice()]),
            relay,
        });
    }
    out
}

/// The stage-3 proposals of UNL members that agree with `p`: the proof of its ledger.
fn stage3_of(props: &RoundProposals, unl: &BTreeSet<NodeKey>, p: &Proposal) -> Vec<Proposal> {
    let root = p.root();
    props
        .from_unl(unl)
        .filter(|q| q.stage == 3 && q.root() == root)
        .cloned()
        .collect()
}

/// Whether every user signature of a batch verifies (ed25519 batch verification).
fn batch_verifies(batch: &[RelayedInput]) -> bool {
    if batch.len() < 4 {
        return false;
    }
    let mut keys = Vec::with_capacity(batch.len());
    for r in batch {
        match ed25519_dalek::VerifyingKey::from_bytes(&r.user.0) {
            Ok(k) => keys.push(k),
            Err(_) => return false,
        }
    }
    let messages: Vec<&[u8]> = batch.iter().map(|r| r.container.as_slice()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = batch
        .iter()
        .map(|r| ed25519_dalek::Signature::from_bytes(&r.sig.0))
        .collect();
    ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::SigningKey;

    fn relay(user: u8, nonce: u64) -> RelayedInput {
        let key = SigningKey::from_bytes(&[user; 32]);
        let container =
            format!(r#"{{"input":"aGk=","nonce":{nonce},"max_ledger_seq_no":10}}"#).into_bytes();
        RelayedInput {
            user: NodeKey::of(&key),
            protocol: 0,
            sig: Sig::sign(&key, &container),
            container,
        }
    }

    #[test]
    fn own_peer_addresses_are_recognised_by_port_and_host() {
        let own: std::net::SocketAddr = "127.0.0.1:22861".parse().unwrap();
        assert!(is_own_addr("127.0.0.1:22861", own));
        assert!(is_own_addr("localhost:22861", own));
        assert!(!is_own_addr("127.0.0.1:22862", own));
        assert!(!is_own_addr("10.0.0.2:22861", own));
        let any: std::net::SocketAddr = "0.0.0.0:22861".parse().unwrap();
        assert!(is_own_addr("127.0.0.1:22861", any));
        assert!(!is_own_addr("10.0.0.2:22861", any));
        assert!(!is_own_addr("nohost", any));
    }

    #[test]
    fn a_cluster_spec_is_sorted_lowercased_and_its_faults_named() {
        let hex_of = |seed: u8| {
            crate::protocol::pubkey_hex(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
        };
        let (a, b) = (
            hex_of(1).to_ascii_uppercase().replacen("ED", "ed", 1),
            hex_of(2),
        );
        let (a, b) = if a.to_ascii_lowercase() < b {
            (b, a)
        } else {
            (a, b)
        };
        let spec = checked_spec(Some(ClusterSpec {
            unl: vec![a.clone(), b.clone()],
            peers: vec![" 10.0.0.1:22861 ".into()],
        }))
        .unwrap();
        assert_eq!(spec.unl, vec![b.clone(), a.to_ascii_lowercase()]);
        assert_eq!(spec.peers, vec!["10.0.0.1:22861".to_owned()]);
        let err = checked_spec(Some(ClusterSpec {
            unl: vec!["ed1234".into()],
            peers: vec![],
        }))
        .unwrap_err();
        assert!(err.contains("ed1234"), "{err}");
        let err = checked_spec(Some(ClusterSpec {
            unl: vec![b.clone(), b.to_ascii_uppercase().replacen("ED", "ed", 1)],
            peers: vec![],
        }))
        .unwrap_err();
        assert!(err.contains("repeated"), "{err}");
        assert!(checked_spec(None)
            .unwrap_err()
            .contains("not a cluster spec"));
    }

    #[test]
    fn a_patch_without_bin_path_is_valid_only_while_no_contract_is_installed() {
        let key = crate::protocol::pubkey_hex(&SigningKey::from_bytes(&[3; 32]).verifying_key());
        let patch = format!(r#"{{"bin_path":"","unl":["{key}"]}}"#);
        let cfg = parse_patch(patch.as_bytes(), false).unwrap();
        assert_eq!(cfg.unl.unwrap().len(), 1);
        assert!(parse_patch(patch.as_bytes(), true).is_err());
        let bad = r#"{"bin_path":"","unl":["nokey"]}"#;
        assert!(parse_patch(bad.as_bytes(), false).is_err());
    }

    #[test]
    fn a_bad_signature_in_a_batch_drops_only_that_input() {
        let mut batch: Vec<RelayedInput> = (1..=8).map(|u| relay(u, 5)).collect();
        assert!(batch_verifies(&batch));
        assert_eq!(verify_relayed(NodeKey([0; 32]), batch.clone()).len(), 8);
        batch[3].sig = Sig([7; 64]);
        batch[5].container[10] ^= 1;
        assert!(!batch_verifies(&batch));
        let kept = verify_relayed(NodeKey([0; 32]), batch);
        assert_eq!(kept.len(), 6);
        assert!(kept.iter().all(|i| i.nonce == 5 && i.input == b"aGk="));
    }
}
