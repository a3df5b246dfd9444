//! The ledger chain: the open ledger, closed ledgers, transaction history, held
//! transactions, and the events that subscribers see.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_xrpl_core::hash::{sha512_half, transaction_id, PREFIX_LEDGER_MASTER, PREFIX_TX_NODE};
use berth_xrpl_core::{codec::write_vl, index, KeyPair, StObject, Ter, Value};
use serde_json::{Map, Value as Json};
use tokio::sync::broadcast;

use crate::engine::{self, Applied, Env, Fees, Outcome};
use crate::state::{Key, State};
use crate::store::{Store, StoreError};

/// Seconds between the Unix epoch and the XRP Ledger's (2000-01-01).
pub const RIPPLE_EPOCH: u64 = 946_684_800;
/// Drops of XRP in existence at genesis: 100 billion XRP.
pub const GENESIS_DROPS: i64 = 100_000_000_000_000_000;
/// rippled's standalone genesis account and its (public) seed.
pub const GENESIS_ADDRESS: &str = "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh";
pub const GENESIS_SEED: &str = "snoPBrXtMeMyMHUVTgbuqAfg1SUTb";
/// How many closed ledgers keep a queryable state snapshot.
const SNAPSHOTS: usize = 256;
/// Held (future-sequence) transactions kept per account.
const MAX_HELD_PER_ACCOUNT: usize = 64;

/// The header of a closed ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seq: u32,
    pub hash: Key,
    pub parent_hash: Key,
    pub account_hash: Key,
    pub tx_hash: Key,
    pub close_time: u32,
    pub parent_close_time: u32,
    pub total_drops: i64,
    pub tx_count: u32,
}

impl Header {
    /// rippled's ledger hash formula over the header fields.
    pub fn compute_hash(&self) -> Key {
        sha512_half(&[
            &PREFIX_LEDGER_MASTER,
            &self.seq.to_be_bytes(),
            &(self.total_drops as u64).to_be_bytes(),
            &self.parent_hash,
            &self.tx_hash,
            &self.account_hash,
            &self.parent_close_time.to_be_bytes(),
            &self.close_time.to_be_bytes(),
            &[10u8, 0u8],
        ])
    }
}

/// A transaction in a ledger (or in the open ledger).
#[derive(Debug, Clone)]
pub struct TxRecord {
    pub hash: Key,
    pub blob: Vec<u8>,
    pub tx: StObject,
    pub meta: StObject,
    pub extra: Map<String, Json>,
    pub ter: Ter,
    pub ledger_seq: u32,
    pub index: u32,
}

/// What subscribers are told.
#[derive(Debug, Clone)]
pub enum Event {
    /// A ledger closed, with its transactions in order and the accounts each one
    /// belongs to. One event a ledger, so a busy ledger cannot overrun subscribers.
    LedgerClosed(Header, std::sync::Arc<Vec<ClosedTx>>),
}

/// A transaction of a closed ledger, with the accounts it belongs to.
#[derive(Debug, Clone)]
pub struct ClosedTx {
    pub record: std::sync::Arc<TxRecord>,
    pub affected: Vec<[u8; 20]>,
}

/// The answer to a submission.
#[derive(Debug, Clone)]
pub struct SubmitResult {
    pub ter: Ter,
    pub hash: Key,
    pub tx: StObject,
    pub applied: bool,
    pub held: bool,
    pub account_sequence_next: Option<u32>,
    pub account_sequence_available: Option<u32>,
}

/// Which ledger a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerSel {
    Current,
    Closed,
    Validated,
    Seq(u32),
    Hash(Key),
}

/// A ledger resolved for reading.
pub struct LedgerView {
    pub state: State,
    pub header: Option<Header>,
    pub seq: u32,
}

struct Held {
    blob: Vec<u8>,
    tx: StObject,
    hash: Key,
    last_ledger: Option<u32>,
}

struct Inner {
    open: State,
    open_seq: u32,
    open_txs: Vec<Key>,
    headers: BTreeMap<u32, Header>,
    by_hash: HashMap<Key, u32>,
    snapshots: VecDeque<(u32, State)>,
    txs: HashMap<Key, std::sync::Arc<TxRecord>>,
    /// Transaction hashes of each closed ledger, in order.
    ledger_txs: HashMap<u32, Vec<Key>>,
    account_txs: HashMap<[u8; 20], Vec<(u32, u32, Key)>>,
    held: BTreeMap<([u8; 20], u32), Held>,
    dirty: BTreeMap<Key, Option<StObject>>,
    store: Option<Store>,
}

/// The ledger chain. All methods are safe to call from many tasks.
pub struct Node {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    fees: Fees,
    genesis: KeyPair,
    started: std::time::Instant,
}

/// Why the chain could not start or persist.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the genesis seed does not load: {0}")]
    Genesis(String),
}

fn now_ripple() -> u32 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(RIPPLE_EPOCH);
    u32::try_from(unix.saturating_sub(RIPPLE_EPOCH)).unwrap_or(u32::MAX)
}

fn tx_leaf(r: &TxRecord) -> Key {
    let mut buf = Vec::with_capacity(r.blob.len() + 256);
    buf.extend_from_slice(&PREFIX_TX_NODE);
    write_vl(&mut buf, r.blob.len());
    buf.extend_from_slice(&r.blob);
    let meta = r.meta.to_bytes();
    write_vl(&mut buf, meta.len());
    buf.extend_from_slice(&meta);
    buf.extend_from_slice(&r.hash);
    sha512_half(&[&buf])
}

impl SubmitResult {
    /// A transaction that changed nothing, with its result.
    fn not_applied(ter: Ter, hash: Key, tx: StObject) -> SubmitResult {
        SubmitResult {
            ter,
            hash,
            tx,
            applied: false,
            held: false,
            account_sequence_next: None,
            account_sequence_available: None,
        }
    }
}

impl Node {
    /// A new chain: resumed from the store when it holds one, else from genesis.
    pub fn open(store: Option<Store>, fees: Fees) -> Result<Node, NodeError> {
        let genesis =
            KeyPair::from_seed(GENESIS_SEED).map_err(|e| NodeError::Genesis(e.to_string()))?;
        let (events, _) = broadcast::channel(1024);
        let mut inner = Inner {
            open: State::default(),
            open_seq: 2,
            open_txs: Vec::new(),
            headers: BTreeMap::new(),
            by_hash: HashMap::new(),
            snapshots: VecDeque::new(),
            txs: HashMap::new(),
            ledger_txs: HashMap::new(),
            account_txs: HashMap::new(),
            held: BTreeMap::new(),
            dirty: BTreeMap::new(),
            store,
        };
        let loaded = match &inner.store {
            Some(s) => s.load()?,
            None => None,
        };
        match loaded {
            Some(l) => {
                let last = l.headers.last().map(|h| h.seq).unwrap_or(1);
                for (k, o) in l.objects {
                    inner.open.put(k, Some(o));
                }
                for h in l.headers {
                    inner.by_hash.insert(h.hash, h.seq);
                    inner.headers.insert(h.seq, h);
                }
                for r in l.txs {
                    for a in affected_of(&r) {
                        inner.account_txs.entry(a).or_default().push((
                            r.ledger_seq,
                            r.index,
                            r.hash,
                        ));
                    }
                    inner
                        .ledger_txs
                        .entry(r.ledger_seq)
                        .or_default()
                        .push(r.hash);
                    inner.txs.insert(r.hash, std::sync::Arc::new(r));
                }
                for v in inner.account_txs.values_mut() {
                    v.sort();
                }
                inner.open_seq = last + 1;
                inner.snapshots.push_back((last, inner.open.clone()));
            }
            None => {
                let mut acct = StObject::new();
                acct.set("LedgerEntryType", Value::UInt16(0x61));
                acct.set("Account", Value::AccountId(genesis.account_id()));
                acct.set("Flags", Value::UInt32(0));
                acct.set("OwnerCount", Value::UInt32(0));
                acct.set("Sequence", Value::UInt32(1));
                acct.set(
                    "Balance",
                    Value::Amount(berth_xrpl_core::Amount::Drops(GENESIS_DROPS)),
                );
                let key = index::account_root(&genesis.account_id());
                inner.open.put(key, Some(acct.clone()));
                inner.dirty.insert(key, Some(acct));
                let close_time = now_ripple();
                let mut h = Header {
                    seq: 1,
                    hash: [0; 32],
                    parent_hash: [0; 32],
                    account_hash: inner.open.hash(),
                    tx_hash: [0; 32],
                    close_time,
                    parent_close_time: 0,
                    total_drops: GENESIS_DROPS,
                    tx_count: 0,
                };
                h.hash = h.compute_hash();
                if let Some(s) = &mut inner.store {
                    s.save_close(&h, &[], &inner.dirty)?;
                }
                inner.dirty.clear();
                inner.by_hash.insert(h.hash, 1);
                inner.headers.insert(1, h);
                inner.snapshots.push_back((1, inner.open.clone()));
                inner.open_seq = 2;
            }
        }
        Ok(Node {
            inner: Mutex::new(inner),
            events,
            fees,
            genesis,
            started: std::time::Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the chain half-changed: every
        // change is computed first and then stored in one step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds since this node started.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn fees(&self) -> Fees {
        self.fees
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn genesis(&self) -> &KeyPair {
        &self.genesis
    }

    pub fn current_seq(&self) -> u32 {
        self.lock().open_seq
    }

    pub fn last_closed(&self) -> Header {
        let g = self.lock();
        #[allow(clippy::expect_used)]
        g.headers
            .values()
            .next_back()
            .cloned()
            .expect("the chain always holds the genesis ledger")
    }

    pub fn first_seq(&self) -> u32 {
        self.lock().headers.keys().next().copied().unwrap_or(1)
    }

    pub fn header(&self, seq: u32) -> Option<Header> {
        self.lock().headers.get(&seq).cloned()
    }

    /// Resolves a ledger selector to a state to read.
    pub fn view(&self, sel: LedgerSel) -> Option<LedgerView> {
        let g = self.lock();
        let last = *g.headers.keys().next_back()?;
        let seq = match sel {
            LedgerSel::Current => {
                return Some(LedgerView {
                    state: g.open.clone(),
                    header: None,
                    seq: g.open_seq,
                })
            }
            LedgerSel::Closed | LedgerSel::Validated => last,
            LedgerSel::Seq(s) if s == g.open_seq => {
                return Some(LedgerView {
                    state: g.open.clone(),
                    header: None,
                    seq: g.open_seq,
                })
            }
            LedgerSel::Seq(s) => s,
            LedgerSel::Hash(h) => *g.by_hash.get(&h)?,
        };
        let state = g
            .snapshots
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, st)| st.clone())?;
        Some(LedgerView {
            state,
            header: g.headers.get(&seq).cloned(),
            seq,
        })
    }

    /// The header of a closed ledger, by selector (no state needed).
    pub fn header_of(&self, sel: LedgerSel) -> Option<Header> {
        let g = self.lock();
        match sel {
            LedgerSel::Current => None,
            LedgerSel::Closed | LedgerSel::Validated => g.headers.values().next_back().cloned(),
            LedgerSel::Seq(s) => g.headers.get(&s).cloned(),
            LedgerSel::Hash(h) => g.by_hash.get(&h).and_then(|s| g.headers.get(s)).cloned(),
        }
    }

    pub fn tx(&self, hash: &Key) -> Option<std::sync::Arc<TxRecord>> {
        self.lock().txs.get(hash).cloned()
    }

    /// Hashes of the transactions of a ledger, in order (the open one included).
    pub fn ledger_txs(&self, seq: u32) -> Vec<std::sync::Arc<TxRecord>> {
        let g = self.lock();
        if seq == g.open_seq {
            return g
                .open_txs
                .iter()
                .filter_map(|h| g.txs.get(h).cloned())
                .collect();
        }
        g.ledger_txs
            .get(&seq)
            .map(|hs| hs.iter().filter_map(|h| g.txs.get(h).cloned()).collect())
            .unwrap_or_default()
    }

    /// Validated transactions of an account within `[min, max]`, in ledger order.
    pub fn account_txs(
        &self,
        account: &[u8; 20],
        min: u32,
        max: u32,
    ) -> Vec<std::sync::Arc<TxRecord>> {
        let g = self.lock();
        let last = g.headers.keys().next_back().copied().unwrap_or(1);
        let max = max.min(last);
        g.account_txs
            .get(account)
            .map(|v| {
                v.iter()
                    .filter(|(l, _, _)| *l >= min && *l <= max)
                    .filter_map(|(_, _, h)| g.txs.get(h).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies a signed transaction (already decoded and signature-checked) to the
    /// open ledger.
    pub fn submit(&self, blob: Vec<u8>, tx: StObject) -> SubmitResult {
        let hash = transaction_id(&blob);
        let account = tx.account("Account").unwrap_or([0; 20]);
        let mut g = self.lock();
        let mut result = if g.txs.contains_key(&hash) || g.held.values().any(|h| h.hash == hash) {
            SubmitResult::not_applied(Ter::tefALREADY, hash, tx)
        } else {
            let r = self.apply_locked(&mut g, blob.clone(), tx.clone(), hash);
            if r.ter == Ter::terPRE_SEQ {
                let seq = tx.u32("Sequence").unwrap_or(0);
                let count = g.held.range((account, 0)..=(account, u32::MAX)).count();
                if count < MAX_HELD_PER_ACCOUNT {
                    g.held.insert(
                        (account, seq),
                        Held {
                            blob,
                            last_ledger: tx.u32("LastLedgerSequence"),
                            tx,
                            hash,
                        },
                    );
                    SubmitResult { held: true, ..r }
                } else {
                    r
                }
            } else {
                if r.applied {
                    self.retry_held(&mut g, &account);
                }
                r
            }
        };
        if let Some(a) = g.open.account(&account) {
            let s = a.u32("Sequence");
            result.account_sequence_next = s;
            result.account_sequence_available = s;
        }
        result
    }

    fn apply_locked(&self, g: &mut Inner, blob: Vec<u8>, tx: StObject, hash: Key) -> SubmitResult {
        let parent_close_time = g
            .headers
            .values()
            .next_back()
            .map(|h| h.close_time)
            .unwrap_or(0);
        let env = Env {
            seq: g.open_seq,
            parent_close_time,
            fees: self.fees,
        };
        let index = g.open_txs.len() as u32;
        match engine::apply(&g.open, &env, &tx, &hash, index) {
            Outcome::Rejected(ter) => SubmitResult::not_applied(ter, hash, tx),
            Outcome::Included(a) => {
                let Applied {
                    ter,
                    changes,
                    meta,
                    extra,
                    ..
                } = *a;
                for (k, v) in changes {
                    g.open.put(k, v.clone());
                    g.dirty.insert(k, v);
                }
                let rec = TxRecord {
                    hash,
                    blob,
                    tx: tx.clone(),
                    meta,
                    extra,
                    ter,
                    ledger_seq: env.seq,
                    index,
                };
                for acct in affected_of(&rec) {
                    g.account_txs
                        .entry(acct)
                        .or_default()
                        .push((env.seq, index, hash));
                }
                g.txs.insert(hash, std::sync::Arc::new(rec));
                g.open_txs.push(hash);
                SubmitResult {
                    applied: true,
                    ..SubmitResult::not_applied(ter, hash, tx)
                }
            }
        }
    }

    /// Applies held transactions of an account whose turn has come.
    fn retry_held(&self, g: &mut Inner, account: &[u8; 20]) {
        loop {
            let Some(seq) = g.open.account(account).and_then(|a| a.u32("Sequence")) else {
                return;
            };
            // Drop held transactions that can no longer apply.
            let stale: Vec<_> = g
                .held
                .range((*account, 0)..(*account, seq))
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                g.held.remove(&k);
            }
            let Some(h) = g.held.remove(&(*account, seq)) else {
                return;
            };
            let r = self.apply_locked(g, h.blob, h.tx, h.hash);
            if !r.applied {
                return;
            }
        }
    }

    /// Closes the open ledger: it becomes validated, and a new open ledger starts.
    pub fn close(&self) -> Result<Header, NodeError> {
        let mut g = self.lock();
        let parent = g
            .headers
            .values()
            .next_back()
            .cloned()
            .ok_or(NodeError::Genesis("no closed ledger".into()))?;
        let records: Vec<std::sync::Arc<TxRecord>> = g
            .open_txs
            .iter()
            .filter_map(|h| g.txs.get(h).cloned())
            .collect();
        let tx_hash = if records.is_empty() {
            [0; 32]
        } else {
            let mut buf = Vec::with_capacity(records.len() * 32);
            for r in &records {
                buf.extend_from_slice(&tx_leaf(r));
            }
            sha512_half(&[&buf])
        };
        let fees_burnt: i64 = records
            .iter()
            .map(|r| match r.tx.amount("Fee") {
                Some(berth_xrpl_core::Amount::Drops(d)) => *d,
                _ => 0,
            })
            .sum();
        let mut h = Header {
            seq: g.open_seq,
            hash: [0; 32],
            parent_hash: parent.hash,
            account_hash: g.open.hash(),
            tx_hash,
            close_time: now_ripple().max(parent.close_time + 1),
            parent_close_time: parent.close_time,
            total_drops: parent.total_drops - fees_burnt,
            tx_count: records.len() as u32,
        };
        h.hash = h.compute_hash();
        let dirty = std::mem::take(&mut g.dirty);
        if let Some(s) = &mut g.store {
            if let Err(e) = s.save_close(&h, &records, &dirty) {
                g.dirty = dirty;
                return Err(e.into());
            }
        }
        g.by_hash.insert(h.hash, h.seq);
        g.headers.insert(h.seq, h.clone());
        let snap = g.open.clone();
        g.snapshots.push_back((h.seq, snap));
        while g.snapshots.len() > SNAPSHOTS {
            g.snapshots.pop_front();
        }
        let closed_txs = std::mem::take(&mut g.open_txs);
        g.ledger_txs.insert(h.seq, closed_txs);
        g.open_seq += 1;
        // Held transactions past their last ledger are dropped; the rest retried.
        let open_seq = g.open_seq;
        g.held
            .retain(|_, held| held.last_ledger.is_none_or(|l| l >= open_seq));
        let accounts: Vec<[u8; 20]> = g.held.keys().map(|(a, _)| *a).collect();
        for a in accounts {
            self.retry_held(&mut g, &a);
        }
        drop(g);
        let txs: Vec<ClosedTx> = records
            .into_iter()
            .map(|r| ClosedTx {
                affected: affected_of(&r),
                record: r,
            })
            .collect();
        let _ = self
            .events
            .send(Event::LedgerClosed(h.clone(), std::sync::Arc::new(txs)));
        Ok(h)
    }
}

/// Accounts a recorded transaction belongs to (from its fields and metadata).
pub fn affected_of(r: &TxRecord) -> Vec<[u8; 20]> {
    let mut out = std::collections::BTreeSet::new();
    for f in ["Account", "Destination", "Owner", "Issuer", "RegularKey"] {
        if let Some(a) = r.tx.account(f) {
            out.insert(a);
        }
    }
    if let Some(Value::Array(nodes)) = r.meta.get("AffectedNodes") {
        for (_, n) in nodes {
            let key = n.hash256("LedgerIndex").unwrap_or([0; 32]);
            for part in ["NewFields", "FinalFields"] {
                if let Some(Value::Object(o)) = n.get(part) {
                    for f in ["Account", "Owner", "Destination"] {
                        if let Some(a) = o.account(f) {
                            out.insert(a);
                        }
                    }
                }
            }
            if n.u16("LedgerEntryType") == Some(0x50) {
                let mut a = [0u8; 20];
                a.copy_from_slice(&key[..20]);
                out.insert(a);
            }
        }
    }
    out.into_iter().collect()
}
