//! State sync: a node whose state differs from the one the UNL agreed on fetches the
//! pieces of the agreed state tree it lacks from several peers, checks each against its
//! hash before writing it, and switches to the new state in one step.
//!
//! The new state is built in `<contract_fs>/.sync/state`: directories and files this node
//! already has with the same hash are hard-linked from the live state, blocks it has are
//! copied locally, and only the rest crosses the network. When the tree is whole and its
//! root is the target, `COMPLETE` is written and [`switch`] moves it in place of the live
//! state. [`recover`] at start finishes a switch that a crash interrupted, or drops a sync
//! that had not completed: the live state is always the old one or the new one.
//!
//! Peers serve pieces by hash from their own [`StateTree`] ([`serve`]), within a per-peer
//! rate limit ([`RateLimit`]). A peer that sends a piece that does not match its hash is
//! dropped for the rest of the sync; one that does not have a piece (its state moved on) is
//! not asked for it again.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::ContractFs;
use crate::ledger::{hash_parts, Hash, LclId, ZERO_HASH};
use crate::peer::net::PeerNet;
use crate::peer::wire::{
    NodeKey, PeerMsg, Piece, PieceKind, Want, MAX_STATE_RESPONSE_BYTES, MAX_STATE_WANTS,
};
use crate::state::{
    dir_hash, listing_is_valid, read_block, DirEntry, FileManifest, Location, NodeRef, StateTree,
    BLOCK_SIZE,
};

/// Requests a syncing node keeps in flight per peer.
const PER_PEER_WINDOW: usize = 4;
/// A request not answered within this is asked of another peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that said it was busy is not asked again for this long.
const BUSY_BACKOFF: Duration = Duration::from_millis(250);

/// The state a sync brings this node to: the result of executing `lcl`, as the UNL agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTarget {
    pub lcl: LclId,
    pub state: Hash,
    pub patch: Hash,
    pub output: Hash,
}

/// Why a sync stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("state sync to {target}: {}", path.display())]
    Io {
        target: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state sync to {target}: no peer serves {missing} (their state moved on, or they are all skipped)")]
    Unavailable { target: String, missing: String },
    #[error("state sync to {target}: the assembled state hashes to {got}, not the target")]
    Mismatch { target: String, got: String },
    #[error("state sync cancelled")]
    Cancelled,
}

/// Progress of the running sync, read by `stat` and the logs.
#[derive(Debug, Default)]
pub struct SyncProgress {
    /// Bytes of blocks to fetch from peers (known once the tree is walked).
    pub to_fetch: AtomicU64,
    /// Bytes of blocks fetched and written.
    pub fetched: AtomicU64,
    /// Bytes taken from this node's own state instead.
    pub local: AtomicU64,
}

/// What a finished sync did.
#[derive(Debug, Clone, Copy)]
pub struct SyncStats {
    pub fetched_bytes: u64,
    pub local_bytes: u64,
    pub pieces: u64,
    pub elapsed: Duration,
}

/// A state response, routed from the round loop to the running sync.
#[derive(Debug)]
pub struct Response {
    pub from: NodeKey,
    pub id: u32,
    pub pieces: Vec<(Want, Piece)>,
    pub busy: bool,
}

fn work_dir(fs: &ContractFs) -> PathBuf {
    fs.root.join(".sync")
}

fn old_dir(fs: &ContractFs) -> PathBuf {
    fs.root.join(".sync-old")
}

/// Answers a state request from this node's tree: pieces in the order asked, as many as fit
/// in `budget` bytes. `corrupt` flips a byte of every block (fault injection for tests).
pub fn serve(
    tree: &StateTree,
    fs: &ContractFs,
    wants: &[Want],
    budget: usize,
    corrupt: bool,
) -> Vec<(Want, Piece)> {
    let state_dir = fs.state_dir();
    let patch = std::fs::read(fs.patch_file()).ok();
    let mut used = 0usize;
    let mut out = Vec::with_capacity(wants.len());
    for want in wants.iter().take(MAX_STATE_WANTS) {
        if used >= budget {
            break;
        }
        let piece = match (want.kind, tree.locate(&want.hash)) {
            (PieceKind::Block, _)
                if patch
                    .as_ref()
                    .is_some_and(|p| hash_parts([p.as_slice()]) == want.hash) =>
            {
                Piece::Block(patch.clone().unwrap_or_default())
            }
            (PieceKind::Block, Some(Location::Block(path, i))) => {
                match read_block(&state_dir.join(path), *i, &want.hash) {
                    Some(b) => Piece::Block(b),
                    None => Piece::Missing,
                }
            }
            (PieceKind::Dir, Some(Location::Dir(path))) => match tree.listing(path) {
                Some(entries) => Piece::Dir(entries.to_vec()),
                None => Piece::Missing,
            },
            (PieceKind::File, Some(Location::File(path))) => match tree.manifest(path) {
                Some(m) => Piece::File(m.clone()),
                None => Piece::Missing,
            },
            _ => Piece::Missing,
        };
        used += match &piece {
            Piece::Block(b) => b.len(),
            Piece::Dir(e) => e.len() * 48,
            Piece::File(m) => m.blocks.len() * 32,
            Piece::Missing => 0,
        } + 40;
        let piece = match piece {
            Piece::Block(mut b) if corrupt && !b.is_empty() => {
                b[0] ^= 0xff;
                Piece::Block(b)
            }
            p => p,
        };
        out.push((*want, piece));
    }
    out
}

/// Checks a piece against the hash it was asked by.
fn verify(want: &Want, piece: &Piece) -> Result<(), &'static str> {
    match (want.kind, piece) {
        (PieceKind::Dir, Piece::Dir(entries)) => {
            listing_is_valid(entries)?;
            if dir_hash(entries) != want.hash {
                return Err("directory listing does not match its hash");
            }
        }
        (PieceKind::File, Piece::File(m)) => {
            if !m.is_consistent() {
                return Err("file manifest's block count does not fit its size");
            }
            if m.hash() != want.hash {
                return Err("file manifest does not match its hash");
            }
        }
        (PieceKind::Block, Piece::Block(b)) => {
            if hash_parts([b.as_slice()]) != want.hash {
                return Err("block does not match its hash");
            }
        }
        (_, Piece::Missing) => {}
        _ => return Err("piece of another kind than asked"),
    }
    Ok(())
}

/// A token bucket: `rate` units a second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `cost` units if there are enough.
    pub fn take(&mut self, cost: f64) -> bool {
        let now = Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + secs * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Finishes a switch a crash interrupted, or drops a sync that had not completed. Runs at
/// start, before the state is hashed.
pub fn recover(fs: &ContractFs) -> std::io::Result<()> {
    let work = work_dir(fs);
    if work.join("COMPLETE").is_file() {
        tracing::info!("finishing a state switch interrupted by a stop");
        switch(fs)?;
    } else if work.exists() {
        tracing::info!("dropping a state sync that had not completed; the old state stays");
        crate::fsutil::remove_tree(&work)?;
    }
    crate::fsutil::remove_tree(&old_dir(fs))?;
    Ok(())
}

/// Moves a completed sync's state (and `patch.cfg`) in place of the live ones. Each step
/// can be redone after a crash ([`recover`]).
pub fn switch(fs: &ContractFs) -> std::io::Result<()> {
    let work = work_dir(fs);
    let new_state = work.join("state");
    let state = fs.state_dir();
    let old = old_dir(fs);
    if new_state.exists() {
        if state.exists() {
            crate::fsutil::remove_tree(&old)?;
            std::fs::rename(&state, &old)?;
        }
        std::fs::rename(&new_state, &state)?;
    }
    let patch = work.join("patch.cfg");
    if patch.exists() {
        std::fs::rename(&patch, fs.patch_file())?;
    } else if work.join("NO_PATCH").exists() {
        match std::fs::remove_file(fs.patch_file()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(&fs.root)?;
    crate::fsutil::remove_tree(&work)?;
    crate::fsutil::remove_tree(&old)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// One block to fetch and where it goes.
struct BlockJob {
    path: PathBuf,
    index: usize,
    len: u64,
}

/// A running state sync. Built by the round loop, run as its own task.
pub struct StateSync {
    pub target: SyncTarget,
    pub own: Arc<StateTree>,
    pub fs: ContractFs,
    pub net: PeerNet,
    /// Peers that signed the target (the UNL members that agreed on it).
    pub peers: Vec<NodeKey>,
    pub responses: mpsc::Receiver<Response>,
    pub progress: Arc<SyncProgress>,
}

fn io_err(target: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SyncError {
    let target = target.to_owned();
    let path = path.to_path_buf();
    move |source| SyncError::Io {
        target,
        path,
        source,
    }
}

impl StateSync {
    /// Builds the target state in the work directory and marks it complete; the round loop
    /// then calls [`switch`].
    pub async fn run(self, cancel: CancellationToken) -> Result<SyncStats, SyncError> {
        let started = Instant::now();
        let StateSync {
            target,
            own,
            fs,
            net,
            peers,
            mut responses,
            progress,
        } = self;
        let name = format!("ledger {} state {}", target.lcl, hex::encode(target.state));
        let io = |path: &Path| io_err(&name, path);
        let mut fetcher = Fetcher {
            net: &net,
            candidates: peers,
            responses: &mut responses,
            next_id: 1,
            peers: Peers::default(),
            target: name.clone(),
        };
        let work = work_dir(&fs);
        let root = work.join("state");
        let prev = work.join("prev");
        // What an earlier attempt fetched (its target moved on) is a source too.
        crate::fsutil::remove_tree(&prev).map_err(io(&prev))?;
        if root.exists() {
            std::fs::rename(&root, &prev).map_err(io(&root))?;
        }
        for name in ["patch.cfg", "NO_PATCH", "COMPLETE"] {
            let path = work.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let prev_tree = if prev.exists() {
            let mut t = StateTree::default();
            t.rehash(&prev).map_err(io(&prev))?;
            Some(t)
        } else {
            None
        };
        let own_dir = fs.state_dir();
        let mut sources: Vec<(&StateTree, &Path)> = vec![(&own, own_dir.as_path())];
        if let Some(t) = &prev_tree {
            sources.push((t, prev.as_path()));
        }
        let mut pieces = 0u64;

        // patch.cfg
        if target.patch == ZERO_HASH {
            std::fs::write(work.join("NO_PATCH"), b"").map_err(io(&work))?;
        } else {
            let want = Want {
                kind: PieceKind::Block,
                hash: target.patch,
            };
            let mut got = Vec::new();
            pieces += fetcher
                .fetch(vec![want], &cancel, &mut |_, piece| {
                    if let Piece::Block(b) = piece {
                        got = b;
                    }
                    Ok(())
                })
                .await?;
            let path = work.join("patch.cfg");
            std::fs::write(&path, &got).map_err(io(&path))?;
        }

        // Directories, level by level. What this node has with the same hash is linked.
        let mut placer = Placer {
            sources: &sources,
            root: &root,
            name: &name,
            next: HashMap::new(),
            manifests: HashMap::new(),
            local: 0,
        };
        let mut level: HashMap<Hash, Vec<PathBuf>> = HashMap::new();
        level.insert(target.state, vec![PathBuf::new()]);
        while !level.is_empty() {
            let mut fetch_dirs: HashMap<Hash, Vec<PathBuf>> = HashMap::new();
            for (hash, paths) in level {
                for rel in &paths {
                    let dest = root.join(rel);
                    std::fs::create_dir_all(&dest).map_err(io(&dest))?;
                }
                let mine = sources
                    .iter()
                    .find_map(|(tree, _)| match tree.locate(&hash) {
                        Some(Location::Dir(src)) => tree.listing(src),
                        _ => None,
                    });
                match mine {
                    Some(entries) => {
                        for rel in &paths {
                            placer.place(entries, rel)?;
                        }
                    }
                    None => {
                        fetch_dirs.insert(hash, paths);
                    }
                }
            }
            if !fetch_dirs.is_empty() {
                let wants = wants_of(PieceKind::Dir, fetch_dirs.keys());
                let mut listings = Vec::new();
                pieces += fetcher
                    .fetch(wants, &cancel, &mut |want, piece| {
                        if let Piece::Dir(entries) = piece {
                            listings.push((want.hash, entries));
                        }
                        Ok(())
                    })
                    .await?;
                for (hash, entries) in listings {
                    for rel in fetch_dirs.get(&hash).into_iter().flatten() {
                        placer.place(&entries, rel)?;
                    }
                }
            }
            level = std::mem::take(&mut placer.next);
        }

        // Files this node lacks: their manifests, then blocks it has locally.
        let manifests = std::mem::take(&mut placer.manifests);
        let mut written: Vec<PathBuf> = Vec::new();
        let mut jobs: HashMap<Hash, Vec<BlockJob>> = HashMap::new();
        if !manifests.is_empty() {
            let wants = wants_of(PieceKind::File, manifests.keys());
            let mut got: Vec<(Hash, FileManifest)> = Vec::new();
            pieces += fetcher
                .fetch(wants, &cancel, &mut |want, piece| {
                    if let Piece::File(m) = piece {
                        got.push((want.hash, m));
                    }
                    Ok(())
                })
                .await?;
            for (hash, manifest) in got {
                for rel in manifests.get(&hash).into_iter().flatten() {
                    let path = root.join(rel);
                    placer.create_file(&path, &manifest, &mut jobs)?;
                    written.push(path);
                }
            }
        }
        progress.local.store(placer.local, Ordering::Relaxed);
        let to_fetch: u64 = jobs.values().filter_map(|j| j.first()).map(|j| j.len).sum();
        progress.to_fetch.store(to_fetch, Ordering::Relaxed);
        tracing::info!(
            target = %name,
            to_fetch,
            local = placer.local,
            blocks = jobs.len(),
            ms = started.elapsed().as_millis() as u64,
            "state sync: tree walked"
        );
        let fetching = Instant::now();

        // Blocks from peers, written where the manifests put them.
        if !jobs.is_empty() {
            let wants = wants_of(PieceKind::Block, jobs.keys());
            let progress = &progress;
            pieces += fetcher
                .fetch(wants, &cancel, &mut |want, piece| {
                    let Piece::Block(bytes) = piece else {
                        return Ok(());
                    };
                    for job in jobs.get(&want.hash).into_iter().flatten() {
                        if bytes.len() as u64 != job.len {
                            return Err(SyncError::Mismatch {
                                target: name.clone(),
                                got: format!(
                                    "a block of {} bytes where {} of {} needs {}",
                                    bytes.len(),
                                    job.index,
                                    job.path.display(),
                                    job.len
                                ),
                            });
                        }
                        write_at(&job.path, job.index, &bytes).map_err(io(&job.path))?;
                    }
                    progress
                        .fetched
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(())
                })
                .await?;
        }
        let fetch_ms = fetching.elapsed().as_millis() as u64;
        // Durable before the tree is marked complete; the files are flushed in parallel so
        // that their journal commits can be shared.
        let flushes: Vec<_> = written
            .iter()
            .cloned()
            .map(|path| {
                tokio::task::spawn_blocking(move || {
                    let r = std::fs::File::open(&path).and_then(|f| f.sync_data());
                    (path, r)
                })
            })
            .collect();
        for flush in flushes {
            if let Ok((path, Err(e))) = flush.await {
                return Err(io(&path)(e));
            }
        }

        // The whole tree, hashed again from disk, must be the target. Files linked from this
        // node's own state keep their inode and mtime, so its tree's cache spares reading
        // them again: only what was written here is read.
        let got = (*own).clone().rehash(&root).map_err(io(&root))?;
        if got != target.state {
            return Err(SyncError::Mismatch {
                target: name.clone(),
                got: hex::encode(got),
            });
        }
        let marker = work.join("COMPLETE");
        std::fs::write(&marker, hex::encode(target.state)).map_err(io(&marker))?;
        std::fs::File::open(&marker)
            .and_then(|f| f.sync_all())
            .map_err(io(&marker))?;
        sync_dir(&work).map_err(io(&work))?;
        crate::fsutil::remove_tree(&prev).map_err(io(&prev))?;
        tracing::debug!(target = %name, fetch_ms, "state sync: blocks fetched, tree checked and made durable");
        Ok(SyncStats {
            fetched_bytes: progress.fetched.load(Ordering::Relaxed),
            local_bytes: placer.local,
            pieces,
            elapsed: started.elapsed(),
        })
    }
}

/// Wants of one kind for these hashes.
fn wants_of<'a>(kind: PieceKind, hashes: impl Iterator<Item = &'a Hash>) -> Vec<Want> {
    hashes.map(|h| Want { kind, hash: *h }).collect()
}

fn write_at(path: &Path, index: usize, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(index as u64 * BLOCK_SIZE))?;
    f.write_all(bytes)
}

/// Lays out directory entries in the new tree: sub-directories for the next level, files
/// this node has hard-linked, others' manifests to fetch, symlinks made.
struct Placer<'a> {
    /// Trees this node has, with their directories: its live state, and what an earlier
    /// attempt fetched.
    sources: &'a [(&'a StateTree, &'a Path)],
    root: &'a Path,
    name: &'a str,
    next: HashMap<Hash, Vec<PathBuf>>,
    manifests: HashMap<Hash, Vec<PathBuf>>,
    /// Bytes taken from this node's own state.
    local: u64,
}

impl Placer<'_> {
    fn place(&mut self, entries: &[DirEntry], rel: &Path) -> Result<(), SyncError> {
        use std::os::unix::ffi::OsStrExt;
        for e in entries {
            let child = rel.join(std::ffi::OsStr::from_bytes(&e.name));
            match &e.node {
                NodeRef::Dir(h) => self.next.entry(*h).or_default().push(child),
                NodeRef::Link(target) => {
                    let dest = self.root.join(&child);
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &dest)
                        .map_err(io_err(self.name, &dest))?;
                }
                NodeRef::Special(kind) => {
                    let dest = self.root.join(&child);
                    crate::state::make_special(&dest, *kind).map_err(io_err(self.name, &dest))?;
                }
                NodeRef::File(h) => {
                    let mine = self
                        .sources
                        .iter()
                        .find_map(|(tree, dir)| match tree.locate(h) {
                            Some(Location::File(p)) if tree.file_unchanged(dir, p) => {
                                Some((dir.join(p), tree.manifest(p).map_or(0, |m| m.size)))
                            }
                            _ => None,
                        });
                    match mine {
                        Some((src, size)) => {
                            let dest = self.root.join(&child);
                            std::fs::hard_link(&src, &dest).map_err(io_err(self.name, &dest))?;
                            self.local += size;
                        }
                        None => self.manifests.entry(*h).or_default().push(child),
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates a file of the manifest's size and mode, copies the blocks this node has, and
    /// notes the others as jobs.
    fn create_file(
        &mut self,
        path: &Path,
        m: &FileManifest,
        jobs: &mut HashMap<Hash, Vec<BlockJob>>,
    ) -> Result<(), SyncError> {
        let name = self.name;
        let io = |p: &Path| io_err(name, p);
        let f = std::fs::File::create(path).map_err(io(path))?;
        f.set_len(m.size).map_err(io(path))?;
        let mode = if m.executable { 0o755 } else { 0o644 };
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(path))?;
        drop(f);
        for (i, h) in m.blocks.iter().enumerate() {
            let local = self
                .sources
                .iter()
                .find_map(|(tree, dir)| match tree.locate(h) {
                    Some(Location::Block(p, j)) => read_block(&dir.join(p), *j, h),
                    _ => None,
                });
            match local {
                Some(bytes) if bytes.len() as u64 == m.block_len(i) => {
                    write_at(path, i, &bytes).map_err(io(path))?;
                    self.local += bytes.len() as u64;
                }
                _ => jobs.entry(*h).or_default().push(BlockJob {
                    path: path.to_path_buf(),
                    index: i,
                    len: m.block_len(i),
                }),
            }
        }
        Ok(())
    }
}

/// A request in flight.
struct InFlight {
    peer: NodeKey,
    wants: Vec<Want>,
    sent: Instant,
}

/// The fetch engine's view of peers during one sync.
#[derive(Default)]
struct Peers {
    /// Peers that sent a piece not matching its hash: not asked again.
    bad: HashSet<NodeKey>,
    /// Peers not asked until then (busy, slow, or not connected).
    backoff: HashMap<NodeKey, Instant>,
    /// Peers that said they lack a piece.
    lacking: HashMap<Hash, BTreeSet<NodeKey>>,
}

/// Fetches pieces by hash from several peers, each checked before it is handed on.
struct Fetcher<'a> {
    net: &'a PeerNet,
    candidates: Vec<NodeKey>,
    responses: &'a mut mpsc::Receiver<Response>,
    next_id: u32,
    peers: Peers,
    target: String,
}

/// No piece for this long: the sync gives up (the round loop starts another).
const STALL_TIMEOUT: Duration = Duration::from_secs(20);

impl Fetcher<'_> {
    fn usable(&self, now: Instant) -> Vec<NodeKey> {
        self.candidates
            .iter()
            .filter(|k| !self.peers.bad.contains(k))
            .filter(|k| self.peers.backoff.get(k).is_none_or(|t| *t <= now))
            .copied()
            .collect()
    }

    fn unavailable(&self, want: &Want) -> bool {
        let lacking = self.peers.lacking.get(&want.hash);
        self.candidates
            .iter()
            .filter(|k| !self.peers.bad.contains(k))
            .all(|k| lacking.is_some_and(|l| l.contains(k)))
    }

    fn fail_unavailable(&self, want: &Want) -> SyncError {
        SyncError::Unavailable {
            target: self.target.clone(),
            missing: format!("{:?} {}", want.kind, hex::encode(want.hash)),
        }
    }

    /// Fetches every piece of `wants`, handing each to `sink` once checked. Returns how
    /// many pieces came.
    async fn fetch(
        &mut self,
        wants: Vec<Want>,
        cancel: &CancellationToken,
        sink: &mut (dyn FnMut(Want, Piece) -> Result<(), SyncError> + Send),
    ) -> Result<u64, SyncError> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Want> = wants.into_iter().filter(|w| seen.insert(*w)).collect();
        let mut inflight: HashMap<u32, InFlight> = HashMap::new();
        let mut done = 0u64;
        let mut last_progress = Instant::now();
        while !queue.is_empty() || !inflight.is_empty() {
            let now = Instant::now();
            // Send while peers have room, one request per peer in turn, so that the load
            // (and any bad peer) is spread.
            let mut usable = self.usable(now);
            let mut sent_any = true;
            while sent_any && !queue.is_empty() {
                sent_any = false;
                usable.retain(|peer| {
                    inflight.values().filter(|f| f.peer == *peer).count() < PER_PEER_WINDOW
                });
                for peer in usable.clone() {
                    if queue.is_empty() {
                        break;
                    }
                    let batch = self.take_batch(&mut queue, &peer);
                    if batch.is_empty() {
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id = self.next_id.wrapping_add(1);
                    let msg = PeerMsg::StateRequest {
                        id,
                        wants: batch.clone(),
                    };
                    if !self.net.send(&peer, &msg) {
                        for w in batch.into_iter().rev() {
                            queue.push_front(w);
                        }
                        self.peers
                            .backoff
                            .insert(peer, now + Duration::from_secs(1));
                        usable.retain(|k| *k != peer);
                        continue;
                    }
                    inflight.insert(
                        id,
                        InFlight {
                            peer,
                            wants: batch,
                            sent: now,
                        },
                    );
                    sent_any = true;
                }
            }
            if let Some(w) = queue.iter().find(|w| self.unavailable(w)) {
                return Err(self.fail_unavailable(w));
            }
            if now.duration_since(last_progress) > STALL_TIMEOUT {
                let w = queue
                    .front()
                    .or_else(|| inflight.values().flat_map(|f| f.wants.first()).next())
                    .copied();
                return Err(match w {
                    Some(w) => self.fail_unavailable(&w),
                    None => SyncError::Cancelled,
                });
            }
            let response = tokio::select! {
                _ = cancel.cancelled() => return Err(SyncError::Cancelled),
                r = self.responses.recv() => match r {
                    Some(r) => Some(r),
                    None => return Err(SyncError::Cancelled),
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => None,
            };
            if let Some(r) = response {
                let Some(req) = inflight.remove(&r.id) else {
                    continue;
                };
                if req.peer != r.from {
                    inflight.insert(r.id, req);
                    continue;
                }
                if r.busy {
                    self.peers
                        .backoff
                        .insert(r.from, Instant::now() + BUSY_BACKOFF);
                    for w in req.wants.into_iter().rev() {
                        queue.push_front(w);
                    }
                    continue;
                }
                let mut answered = HashSet::new();
                for (want, piece) in r.pieces {
                    if !req.wants.contains(&want) || answered.contains(&want) {
                        self.skip_peer(r.from, "answered a piece it was not asked for");
                        break;
                    }
                    if let Err(why) = verify(&want, &piece) {
                        self.skip_peer(r.from, why);
                        break;
                    }
                    answered.insert(want);
                    if matches!(piece, Piece::Missing) {
                        self.peers
                            .lacking
                            .entry(want.hash)
                            .or_default()
                            .insert(r.from);
                        queue.push_back(want);
                        continue;
                    }
                    sink(want, piece)?;
                    done += 1;
                    last_progress = Instant::now();
                }
                for w in req.wants.into_iter().rev() {
                    if !answered.contains(&w) {
                        queue.push_front(w);
                    }
                }
            }
            // Requests past their time go to other peers.
            let now = Instant::now();
            let expired: Vec<u32> = inflight
                .iter()
                .filter(|(_, f)| now.duration_since(f.sent) > REQUEST_TIMEOUT)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some(f) = inflight.remove(&id) {
                    tracing::warn!(peer = %f.peer, pieces = f.wants.len(), "state request timed out; asking another peer");
                    self.peers
                        .backoff
                        .insert(f.peer, now + Duration::from_secs(1));
                    for w in f.wants.into_iter().rev() {
                        queue.push_front(w);
                    }
                }
            }
        }
        Ok(done)
    }

    fn skip_peer(&mut self, peer: NodeKey, why: &str) {
        if self.peers.bad.insert(peer) {
            tracing::warn!(%peer, reason = why, target = %self.target, "peer served bad state data; it is skipped for the rest of this sync");
        }
    }

    /// Takes the next wants for `peer`: those it has not said it lacks, as many as one
    /// response can carry.
    fn take_batch(&self, queue: &mut VecDeque<Want>, peer: &NodeKey) -> Vec<Want> {
        let blocks_max = (MAX_STATE_RESPONSE_BYTES / BLOCK_SIZE as usize).max(1);
        let mut batch = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(w) = queue.pop_front() {
            let lacks = self
                .peers
                .lacking
                .get(&w.hash)
                .is_some_and(|l| l.contains(peer));
            let max = if w.kind == PieceKind::Block {
                blocks_max
            } else {
                MAX_STATE_WANTS
            };
            if lacks || batch.len() >= max {
                kept.push_back(w);
                if batch.len() >= max {
                    break;
                }
                continue;
            }
            batch.push(w);
        }
        while let Some(w) = kept.pop_back() {
            queue.push_front(w);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fs_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, ContractFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = ContractFs {
            root: dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(fs.state_dir()).unwrap();
        for (name, body) in files {
            std::fs::write(fs.state_dir().join(name), body).unwrap();
        }
        (dir, fs)
    }

    #[test]
    fn pieces_are_served_by_hash_and_checked_against_it() {
        let big = vec![5u8; (BLOCK_SIZE + 3) as usize];
        let (_d, fs) = fs_with(&[("a", b"alpha"), ("big", &big)]);
        std::fs::write(fs.patch_file(), b"{\"bin_path\":\"x\"}").unwrap();
        let mut tree = StateTree::default();
        let root = tree.rehash(&fs.state_dir()).unwrap();
        let manifest = tree.manifest(Path::new("big")).unwrap().clone();
        let wants = [
            Want {
                kind: PieceKind::Dir,
                hash: root,
            },
            Want {
                kind: PieceKind::File,
                hash: manifest.hash(),
            },
            Want {
                kind: PieceKind::Block,
                hash: manifest.blocks[1],
            },
            Want {
                kind: PieceKind::Block,
                hash: hash_parts([b"{\"bin_path\":\"x\"}".as_slice()]),
            },
            Want {
                kind: PieceKind::Block,
                hash: [9; 32],
            },
        ];
        let pieces = serve(&tree, &fs, &wants, 1 << 20, false);
        assert_eq!(pieces.len(), 5);
        for (want, piece) in &pieces {
            verify(want, piece).unwrap();
        }
        assert_eq!(pieces[2].1, Piece::Block(vec![5, 5, 5]));
        assert_eq!(pieces[4].1, Piece::Missing);

        // A lying peer's block, a listing for another hash, a piece of another kind.
        let bad = serve(&tree, &fs, &wants[2..3], 1 << 20, true);
        assert_eq!(
            verify(&bad[0].0, &bad[0].1),
            Err("block does not match its hash")
        );
        let mut listing = tree.listing(Path::new("")).unwrap().to_vec();
        listing.pop();
        assert!(verify(&wants[0], &Piece::Dir(listing)).is_err());
        assert!(verify(&wants[0], &Piece::Block(Vec::new())).is_err());

        // The budget cuts the answer to a prefix.
        let cut = serve(&tree, &fs, &wants, 10, false);
        assert_eq!(cut.len(), 1);
    }

    #[test]
    fn a_completed_sync_is_switched_in_at_start_and_an_unfinished_one_dropped() {
        let (_d, fs) = fs_with(&[("a", b"old")]);
        let work = work_dir(&fs);
        std::fs::create_dir_all(work.join("state")).unwrap();
        std::fs::write(work.join("state").join("a"), b"new").unwrap();
        // Unfinished: the old state stays.
        recover(&fs).unwrap();
        assert_eq!(std::fs::read(fs.state_dir().join("a")).unwrap(), b"old");
        assert!(!work.exists());

        // Complete, and a crash after the live state was set aside: the new one goes in.
        std::fs::create_dir_all(work.join("state")).unwrap();
        std::fs::write(work.join("state").join("a"), b"new").unwrap();
        std::fs::write(work.join("patch.cfg"), b"{}").unwrap();
        std::fs::write(work.join("COMPLETE"), b"x").unwrap();
        std::fs::rename(fs.state_dir(), old_dir(&fs)).unwrap();
        recover(&fs).unwrap();
        assert_eq!(std::fs::read(fs.state_dir().join("a")).unwrap(), b"new");
        assert_eq!(std::fs::read(fs.patch_file()).unwrap(), b"{}");
        assert!(!work.exists() && !old_dir(&fs).exists());
    }

    #[test]
    fn the_rate_limit_refuses_past_its_burst_and_refills() {
        let mut r = RateLimit::new(1000.0, 10.0);
        assert!(r.take(10.0));
        assert!(!r.take(5.0));
        std::thread::sleep(Duration::from_millis(20));
        assert!(r.take(5.0));
    }
}
