//! The agent's SQLite store: slots, leases, ports, the instance pool, the outbox, the ledger
//! cursor, recent errors. Persistence only: what to write is decided by `crate::machine`.
//!
//! **Invariant:** every state transition is one SQLite transaction together with the outbox rows
//! it causes, and every outbox row is keyed (the caller's keys, spelled by
//! `crate::outbox::OutboxKey`) so it is written at most once. That, and the `requests` table that records each request
//! transaction handled, is what makes "exactly one answer per request" hold across a SIGKILL.
//!
//! The database runs in WAL mode, so `berth-agent status` can read it while `run` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_schemas::field::{AccountAddress, ContractId, NfTokenId, OfferId, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::message::ContractConfig;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql, Transaction};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ledger::LedgerAction;

/// The schema version this build writes; [`Store::open`] migrates older files up to it.
/// It is the number of migrations, so that adding one cannot leave it behind.
#[allow(clippy::cast_possible_truncation)]
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const MIGRATIONS: [&str; 4] = [
    r#"
CREATE TABLE slots (
    slot        INTEGER PRIMARY KEY,
    generation  INTEGER NOT NULL DEFAULT 0,
    token_id    TEXT UNIQUE,
    offer_id    TEXT,
    state       TEXT NOT NULL
);
CREATE TABLE leases (
    id           INTEGER PRIMARY KEY,
    purchase_tx  TEXT NOT NULL UNIQUE,
    slot         INTEGER NOT NULL,
    token_id     TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    reply_key    TEXT NOT NULL,
    owner_key    TEXT NOT NULL,
    contract_id  TEXT NOT NULL,
    instance     TEXT NOT NULL UNIQUE,
    node_secret  TEXT NOT NULL,
    node_key     TEXT NOT NULL,
    user_port    INTEGER NOT NULL,
    peer_port    INTEGER NOT NULL,
    moments      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    state        TEXT NOT NULL,
    end_request  TEXT,
    end_reason   TEXT
);
CREATE INDEX leases_state ON leases(state);
CREATE TABLE ports (
    port      INTEGER PRIMARY KEY,
    lease_id  INTEGER NOT NULL REFERENCES leases(id)
);
CREATE TABLE requests (
    tx_hash   TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    ledger    INTEGER NOT NULL,
    outcome   TEXT NOT NULL
);
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,
    action       TEXT NOT NULL,
    state        TEXT NOT NULL,
    tx_hash      TEXT,
    blob         TEXT,
    last_ledger  INTEGER,
    result       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX outbox_state ON outbox(state);
CREATE TABLE cursor (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    ledger      INTEGER NOT NULL,
    close_time  INTEGER NOT NULL,
    resumed_at  INTEGER NOT NULL
);
CREATE TABLE errors (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    context  TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE pool (
    instance    TEXT PRIMARY KEY,
    user_port   INTEGER NOT NULL UNIQUE,
    peer_port   INTEGER NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
ALTER TABLE leases ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE leases ADD COLUMN held_stopped TEXT;
"#,
    r#"
ALTER TABLE leases ADD COLUMN contract_config TEXT;
"#,
];

/// Why the store failed; names the database file or the row.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this build's {SCHEMA_VERSION}"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("database {path} has no agent schema yet (run `berth-agent run` once)")]
    Empty { path: PathBuf },
    #[error("database query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("outbox row {key}: action is not valid JSON")]
    BadAction {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {value:?} in the database is not valid")]
    BadValue { what: &'static str, value: String },
}

/// The life of a slot's lease token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// No token: a mint is queued in the outbox.
    Minting,
    /// Minted; a sell offer is queued.
    Offering,
    /// A sell offer is live on the ledger.
    Offered,
    /// Minted but not offered because the host drains.
    Held,
    /// Sold: a lease holds it.
    Leased,
    /// Its token is being burnt before a fresh one is minted (older builds only: a recycle
    /// now queues the burn and the next mint together, and the slot is `minting`).
    Burning,
}

/// The life of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Recorded; the instance is being created.
    Provisioning,
    /// Instance running, answered with `acquire-ok`.
    Active,
    /// Past its end, in the grace period: the instance still exists.
    Grace,
    /// Being ended (terminated, expired or failed): the instance is being destroyed.
    Ending,
    /// Over; the instance is gone.
    Ended,
}

macro_rules! text_enum {
    ($ty:ident, $what:literal, $($variant:ident = $text:literal),+) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            fn parse(text: &str) -> Result<Self, StoreError> {
                match text {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(StoreError::BadValue { what: $what, value: text.to_owned() }),
                }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    SlotState,
    "slot state",
    Minting = "minting",
    Offering = "offering",
    Offered = "offered",
    Held = "held",
    Leased = "leased",
    Burning = "burning"
);
text_enum!(
    LeaseState,
    "lease state",
    Provisioning = "provisioning",
    Active = "active",
    Grace = "grace",
    Ending = "ending",
    Ended = "ended"
);
text_enum!(
    OutboxState,
    "outbox state",
    Held = "held",
    Pending = "pending",
    Prepared = "prepared",
    Validated = "validated",
    Failed = "failed"
);

/// A table whose rows have a `state`, for [`Reader::counts_by_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateTable {
    Leases,
    Slots,
    Pool,
}

/// The life of a pooled instance (created and started before it is sold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolState {
    /// Recorded (its ports taken); its instance is being created and started.
    Creating,
    /// Running without an owner: the next purchase may take it.
    Ready,
}

text_enum!(
    PoolState,
    "pool state",
    Creating = "creating",
    Ready = "ready"
);

/// One pooled instance. A purchase takes it out of the pool and into its lease, for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolInstance {
    pub instance: String,
    pub user_port: u16,
    pub peer_port: u16,
    pub state: PoolState,
    pub created_at: u64,
}

/// Where an outbox row is on its way to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Written, waiting for its lease to be cleaned up before it may go out.
    Held,
    /// Written, not yet signed.
    Pending,
    /// Signed: blob and hash persisted; submitting (again) is safe.
    Prepared,
    /// In a validated ledger.
    Validated,
    /// Validated with a failure result, or refused for good.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub slot: u32,
    pub generation: u32,
    pub token_id: Option<NfTokenId>,
    pub offer_id: Option<OfferId>,
    pub state: SlotState,
}

/// One lease row. `node_secret` is never serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub id: i64,
    pub purchase_tx: TxHash,
    pub slot: u32,
    pub token_id: NfTokenId,
    pub tenant: AccountAddress,
    pub reply_key: PublicKey,
    pub owner_key: PublicKey,
    pub contract_id: ContractId,
    pub instance: String,
    #[serde(skip)]
    pub node_secret: String,
    pub node_key: PublicKey,
    pub user_port: u16,
    pub peer_port: u16,
    pub moments: u64,
    pub started_at: u64,
    pub expires_at: u64,
    pub state: LeaseState,
    pub end_request: Option<TxHash>,
    pub end_reason: Option<String>,
    /// Its instance came from the pool (it was assigned, not created, for this lease).
    pub pooled: bool,
    /// Why its instance is held stopped for the rest of the lease (it went over its disk
    /// quota); `None` while it may run.
    pub held_stopped: Option<String>,
    /// The contract settings the purchase asked for (a cluster node's), if any.
    pub contract_config: Option<ContractConfig>,
}

/// A lease about to be recorded (see [`Store::record_lease`]).
#[derive(Debug, Clone)]
pub struct NewLease {
    pub purchase_tx: TxHash,
    pub slot: u32,
    pub token_id: NfTokenId,
    pub tenant: AccountAddress,
    pub reply_key: PublicKey,
    pub owner_key: PublicKey,
    pub contract_id: ContractId,
    pub instance: String,
    pub node_secret: String,
    pub node_key: PublicKey,
    pub user_port: u16,
    pub peer_port: u16,
    pub moments: u64,
    pub started_at: u64,
    pub expires_at: u64,
    pub pooled: bool,
    pub contract_config: Option<ContractConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub key: String,
    pub action: LedgerAction,
    pub state: OutboxState,
    pub tx_hash: Option<TxHash>,
    #[serde(skip)]
    pub blob: Option<String>,
    pub last_ledger: Option<u32>,
    pub result: Option<String>,
    pub attempts: u32,
    /// When the row was written, Unix seconds.
    pub created_at: u64,
}

/// The last ledger whose transactions were all handled, and the ledger clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    pub ledger: u32,
    /// Close time of that ledger, Unix seconds.
    pub close_time: u64,
    /// Close time of the first ledger after the last stall, Unix seconds.
    pub resumed_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorRow {
    pub at: u64,
    pub context: String,
    pub message: String,
}

/// The agent's database. One connection; the agent serializes writes through it.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A typed value (hash, token, account, key, contract id) written as its text form.
struct AsText<T>(T);

impl<T: std::fmt::Display> ToSql for AsText<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.to_string()))
    }
}

/// A value stored as JSON text; a text that does not parse is an error naming the column.
struct Json<T>(T);

impl<T: serde::de::DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A typed value read back from its text form; a text that does not parse is an error
/// naming the column, never a default.
struct Parsed<T>(T);

impl<T> FromSql for Parsed<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map(Parsed)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Column `index` of `row` as a typed value.
fn typed<T>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<T>
where
    Parsed<T>: FromSql,
{
    row.get::<_, Parsed<T>>(index).map(|p| p.0)
}

/// Column `index` of `row` as an optional typed value (NULL is `None`).
fn typed_opt<T>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<T>>
where
    Parsed<T>: FromSql,
{
    Ok(row.get::<_, Option<Parsed<T>>>(index)?.map(|p| p.0))
}

impl Store {
    /// Opens (creating if needed) the database read-write, in WAL mode, and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only (for `status` and `leases` while `run` runs).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let store = Self {
            conn,
            path: path.to_owned(),
        };
        match store.version()? {
            0 => Err(StoreError::Empty {
                path: path.to_owned(),
            }),
            v if v > SCHEMA_VERSION => Err(StoreError::TooNew {
                path: path.to_owned(),
                found: v,
            }),
            _ => Ok(store),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn version(&self) -> Result<u32, StoreError> {
        let has_table: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version')",
            [],
            |row| row.get(0),
        )?;
        if !has_table {
            return Ok(0);
        }
        Ok(self
            .conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |row| {
                row.get::<_, Option<u32>>(0)
            })?
            .unwrap_or(0))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
            });
        }
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )?;
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
                params![index + 1, to_i64(now_secs())],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in one SQLite transaction: all of its writes land, or none.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction_with(f)
    }

    /// [`Store::transaction`] where `f` fails with the caller's error, which any
    /// [`StoreError`] converts into.
    pub fn transaction_with<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = Tx(self.conn.transaction().map_err(StoreError::from)?);
        let value = f(&tx)?;
        tx.0.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// A read on the connection, outside any write transaction.
    pub fn read(&self) -> Reader<'_> {
        Reader(&self.conn)
    }
}

/// Reads, usable on a [`Store`] or inside a [`Tx`].
pub struct Reader<'a>(&'a Connection);

/// A write transaction of the store; see [`Store::transaction`].
pub struct Tx<'a>(Transaction<'a>);

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

fn slot_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Slot, String)> {
    Ok((
        Slot {
            slot: row.get(0)?,
            generation: row.get(1)?,
            token_id: typed_opt(row, 2)?,
            offer_id: typed_opt(row, 3)?,
            state: SlotState::Minting,
        },
        row.get(4)?,
    ))
}

fn finish_slot((mut slot, state): (Slot, String)) -> Result<Slot, StoreError> {
    slot.state = SlotState::parse(&state)?;
    Ok(slot)
}

const LEASE_COLUMNS: &str = "id, purchase_tx, slot, token_id, tenant, reply_key, owner_key, \
    contract_id, instance, node_secret, node_key, user_port, peer_port, moments, started_at, \
    expires_at, state, end_request, end_reason, pooled, held_stopped, contract_config";

fn lease_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Lease, String)> {
    Ok((
        Lease {
            id: row.get(0)?,
            purchase_tx: typed(row, 1)?,
            slot: row.get(2)?,
            token_id: typed(row, 3)?,
            tenant: typed(row, 4)?,
            reply_key: typed(row, 5)?,
            owner_key: typed(row, 6)?,
            contract_id: typed(row, 7)?,
            instance: row.get(8)?,
            node_secret: row.get(9)?,
            node_key: typed(row, 10)?,
            user_port: row.get(11)?,
            peer_port: row.get(12)?,
            moments: row.get::<_, i64>(13)?.max(0).unsigned_abs(),
            started_at: row.get::<_, i64>(14)?.max(0).unsigned_abs(),
            expires_at: row.get::<_, i64>(15)?.max(0).unsigned_abs(),
            state: LeaseState::Provisioning,
            end_request: typed_opt(row, 17)?,
            end_reason: row.get(18)?,
            pooled: row.get(19)?,
            held_stopped: row.get(20)?,
            contract_config: row.get::<_, Option<Json<ContractConfig>>>(21)?.map(|j| j.0),
        },
        row.get(16)?,
    ))
}

fn finish_lease((mut lease, state): (Lease, String)) -> Result<Lease, StoreError> {
    lease.state = LeaseState::parse(&state)?;
    Ok(lease)
}

const OUTBOX_COLUMNS: &str =
    "id, key, action, state, tx_hash, blob, last_ledger, result, attempts, created_at";

/// An outbox row as stored, before its action JSON and state are parsed.
struct RawOutbox {
    id: i64,
    key: String,
    action: String,
    state: String,
    tx_hash: Option<TxHash>,
    blob: Option<String>,
    last_ledger: Option<u32>,
    result: Option<String>,
    attempts: u32,
    created_at: i64,
}

fn finish_outbox(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawOutbox> {
    Ok(RawOutbox {
        id: row.get(0)?,
        key: row.get(1)?,
        action: row.get(2)?,
        state: row.get(3)?,
        tx_hash: typed_opt(row, 4)?,
        blob: row.get(5)?,
        last_ledger: row.get(6)?,
        result: row.get(7)?,
        attempts: row.get(8)?,
        created_at: row.get(9)?,
    })
}

fn parse_outbox(raw: RawOutbox) -> Result<OutboxRow, StoreError> {
    let action = serde_json::from_str(&raw.action).map_err(|source| StoreError::BadAction {
        key: raw.key.clone(),
        source,
    })?;
    Ok(OutboxRow {
        id: raw.id,
        key: raw.key,
        action,
        state: OutboxState::parse(&raw.state)?,
        tx_hash: raw.tx_hash,
        blob: raw.blob,
        last_ledger: raw.last_ledger,
        result: raw.result,
        attempts: raw.attempts,
        created_at: raw.created_at.max(0).unsigned_abs(),
    })
}

macro_rules! reads {
    ($($ty:ty),+) => {$(
impl $ty {
    /// Every slot, by index.
    pub fn slots(&self) -> Result<Vec<Slot>, StoreError> {
        let mut stmt = self.prepare(
            "SELECT slot, generation, token_id, offer_id, state FROM slots ORDER BY slot",
        )?;
        let rows = stmt.query_map([], slot_from_row)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(finish_slot).collect()
    }

    pub fn slot(&self, slot: u32) -> Result<Option<Slot>, StoreError> {
        self.prepare(
            "SELECT slot, generation, token_id, offer_id, state FROM slots WHERE slot = ?1",
        )?
        .query_row([slot], slot_from_row)
        .optional()?
        .map(finish_slot)
        .transpose()
    }

    /// The slot whose current token is `token_id`.
    pub fn slot_by_token(&self, token_id: &NfTokenId) -> Result<Option<Slot>, StoreError> {
        self.prepare(
            "SELECT slot, generation, token_id, offer_id, state FROM slots WHERE token_id = ?1",
        )?
        .query_row([AsText(token_id)], slot_from_row)
        .optional()?
        .map(finish_slot)
        .transpose()
    }

    /// Leases, newest first; only those in `states` when it is not empty.
    pub fn leases(&self, states: &[LeaseState]) -> Result<Vec<Lease>, StoreError> {
        let mut stmt = self.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases ORDER BY id DESC"
        ))?;
        let rows = stmt.query_map([], lease_from_row)?.collect::<Result<Vec<_>, _>>()?;
        let leases = rows.into_iter().map(finish_lease).collect::<Result<Vec<_>, _>>()?;
        Ok(leases
            .into_iter()
            .filter(|lease| states.is_empty() || states.contains(&lease.state))
            .collect())
    }

    pub fn lease_by_purchase(&self, purchase_tx: &TxHash) -> Result<Option<Lease>, StoreError> {
        self.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE purchase_tx = ?1"
        ))?
        .query_row([AsText(purchase_tx)], lease_from_row)
        .optional()?
        .map(finish_lease)
        .transpose()
    }

    /// The live (not ended) lease of a token.
    pub fn live_lease_by_token(&self, token_id: &NfTokenId) -> Result<Option<Lease>, StoreError> {
        self.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE token_id = ?1 AND state != 'ended' \
             ORDER BY id DESC LIMIT 1"
        ))?
        .query_row([AsText(token_id)], lease_from_row)
        .optional()?
        .map(finish_lease)
        .transpose()
    }

    pub fn lease(&self, id: i64) -> Result<Option<Lease>, StoreError> {
        self.prepare(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1"))?
            .query_row([id], lease_from_row)
            .optional()?
            .map(finish_lease)
            .transpose()
    }

    /// Whether the request transaction was handled already.
    pub fn request_seen(&self, tx_hash: &TxHash) -> Result<bool, StoreError> {
        Ok(self
            .prepare("SELECT 1 FROM requests WHERE tx_hash = ?1")?
            .query_row([AsText(tx_hash)], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// What was decided for a request: `(kind, outcome)`.
    pub fn request(&self, tx_hash: &TxHash) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .prepare("SELECT kind, outcome FROM requests WHERE tx_hash = ?1")?
            .query_row([AsText(tx_hash)], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    /// Every port held by a lease or a pooled instance.
    pub fn ports_in_use(&self) -> Result<std::collections::BTreeSet<u16>, StoreError> {
        let mut stmt = self.prepare(
            "SELECT port FROM ports UNION SELECT user_port FROM pool UNION SELECT peer_port FROM pool",
        )?;
        let ports = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
        Ok(ports)
    }

    /// `(state, count)` of the rows of `leases` or `slots` (for metrics).
    pub fn counts_by_state(&self, table: StateTable) -> Result<Vec<(String, u64)>, StoreError> {
        let sql = match table {
            StateTable::Leases => "SELECT state, COUNT(*) FROM leases GROUP BY state",
            StateTable::Slots => "SELECT state, COUNT(*) FROM slots GROUP BY state",
            StateTable::Pool => "SELECT state, COUNT(*) FROM pool GROUP BY state",
        };
        let mut stmt = self.prepare(sql)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0).unsigned_abs()))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Rows waiting to reach the ledger (pending or prepared) and the creation time of the
    /// oldest, Unix seconds.
    pub fn outbox_backlog(&self) -> Result<(u64, Option<u64>), StoreError> {
        Ok(self
            .prepare(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state IN ('pending', 'prepared')",
            )?
            .query_row([], |row| {
                Ok((
                    row.get::<_, i64>(0)?.max(0).unsigned_abs(),
                    row.get::<_, Option<i64>>(1)?.map(|t| t.max(0).unsigned_abs()),
                ))
            })?)
    }

    /// The pooled instances, oldest first.
    pub fn pool(&self) -> Result<Vec<PoolInstance>, StoreError> {
        let mut stmt = self.prepare(
            "SELECT instance, user_port, peer_port, state, created_at FROM pool ORDER BY created_at, instance",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    PoolInstance {
                        instance: row.get(0)?,
                        user_port: row.get(1)?,
                        peer_port: row.get(2)?,
                        state: PoolState::Creating,
                        created_at: row.get::<_, i64>(4)?.max(0).unsigned_abs(),
                    },
                    row.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(mut pooled, state)| {
                pooled.state = PoolState::parse(&state)?;
                Ok(pooled)
            })
            .collect()
    }

    pub fn outbox_row(&self, key: &str) -> Result<Option<OutboxRow>, StoreError> {
        self.prepare(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE key = ?1"))?
            .query_row([key], finish_outbox)
            .optional()?
            .map(parse_outbox)
            .transpose()
    }

    /// Outbox rows in one of `states`, oldest first.
    pub fn outbox(&self, states: &[OutboxState]) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.prepare(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY id"))?;
        let rows = stmt.query_map([], finish_outbox)?.collect::<Result<Vec<_>, _>>()?;
        let rows = rows.into_iter().map(parse_outbox).collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|row| states.is_empty() || states.contains(&row.state))
            .collect())
    }

    pub fn cursor(&self) -> Result<Option<Cursor>, StoreError> {
        Ok(self
            .prepare("SELECT ledger, close_time, resumed_at FROM cursor WHERE id = 1")?
            .query_row([], |row| {
                Ok(Cursor {
                    ledger: row.get(0)?,
                    close_time: row.get::<_, i64>(1)?.max(0).unsigned_abs(),
                    resumed_at: row.get::<_, i64>(2)?.max(0).unsigned_abs(),
                })
            })
            .optional()?)
    }

    /// The `limit` most recent errors, newest first.
    pub fn recent_errors(&self, limit: u32) -> Result<Vec<ErrorRow>, StoreError> {
        let mut stmt =
            self.prepare("SELECT at, context, message FROM errors ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt
            .query_map([limit], |row| {
                Ok(ErrorRow {
                    at: row.get::<_, i64>(0)?.max(0).unsigned_abs(),
                    context: row.get(1)?,
                    message: row.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .prepare("SELECT value FROM settings WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?)
    }

    /// Whether `berth-agent drain` was asked for.
    pub fn draining(&self) -> Result<bool, StoreError> {
        Ok(self.setting("draining")?.as_deref() == Some("true"))
    }
}
    )+};
}

impl Reader<'_> {
    fn prepare(&self, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        self.0.prepare_cached(sql)
    }
}

reads!(Reader<'_>, Tx<'_>);

impl Tx<'_> {
    fn prepare(&self, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        self.0.prepare_cached(sql)
    }

    /// Creates the slot rows `0..count` that do not exist yet, each with a queued mint.
    /// Returns the slots created.
    pub fn ensure_slots<K: std::fmt::Display>(
        &self,
        count: u32,
        mint: impl Fn(u32, u32) -> (K, LedgerAction),
    ) -> Result<Vec<u32>, StoreError> {
        let mut created = Vec::new();
        for slot in 0..count {
            if self.slot(slot)?.is_none() {
                self.execute(
                    "INSERT INTO slots (slot, generation, state) VALUES (?1, 0, 'minting')",
                    [slot],
                )?;
                let (key, action) = mint(slot, 0);
                self.enqueue(key, &action)?;
                created.push(slot);
            }
        }
        Ok(created)
    }

    pub fn set_slot(
        &self,
        slot: u32,
        state: SlotState,
        token_id: Option<&NfTokenId>,
        offer_id: Option<&OfferId>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE slots SET state = ?2, token_id = ?3, offer_id = ?4 WHERE slot = ?1",
            params![
                slot,
                state.as_str(),
                token_id.map(AsText),
                offer_id.map(AsText)
            ],
        )?;
        Ok(())
    }

    /// Starts the slot's next token: forgets the old one, bumps the generation.
    pub fn next_generation(&self, slot: u32) -> Result<u32, StoreError> {
        self.execute(
            "UPDATE slots SET generation = generation + 1, token_id = NULL, offer_id = NULL, \
             state = 'minting' WHERE slot = ?1",
            [slot],
        )?;
        Ok(self.slot(slot)?.map(|s| s.generation).unwrap_or_default())
    }

    /// Queues a ledger action under `key`; a second call with the same key changes nothing.
    /// Returns whether the row is new.
    pub fn enqueue(
        &self,
        key: impl std::fmt::Display,
        action: &LedgerAction,
    ) -> Result<bool, StoreError> {
        self.enqueue_as(key, action, OutboxState::Pending)
    }

    /// Like [`Tx::enqueue`], in `state` (`held` rows wait for [`Tx::release`]).
    pub fn enqueue_as(
        &self,
        key: impl std::fmt::Display,
        action: &LedgerAction,
        state: OutboxState,
    ) -> Result<bool, StoreError> {
        let key = key.to_string();
        let action = serde_json::to_string(action).map_err(|source| StoreError::BadAction {
            key: key.clone(),
            source,
        })?;
        let now = to_i64(now_secs());
        let changed = self.execute(
            "INSERT INTO outbox (key, action, state, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(key) DO NOTHING",
            params![key, action, state.as_str(), now],
        )?;
        Ok(changed == 1)
    }

    /// Lets a `held` outbox row go out.
    pub fn release(&self, key: impl std::fmt::Display) -> Result<(), StoreError> {
        let key = key.to_string();
        self.execute(
            "UPDATE outbox SET state = 'pending', updated_at = ?2 WHERE key = ?1 AND state = 'held'",
            params![key, to_i64(now_secs())],
        )?;
        Ok(())
    }

    /// Records that a request transaction was handled, with what outcome.
    /// Returns false when it was recorded already.
    pub fn record_request(
        &self,
        tx_hash: &TxHash,
        kind: &str,
        ledger: u32,
        outcome: &str,
    ) -> Result<bool, StoreError> {
        let changed = self.execute(
            "INSERT INTO requests (tx_hash, kind, ledger, outcome) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(tx_hash) DO NOTHING",
            params![AsText(tx_hash), kind, ledger, outcome],
        )?;
        Ok(changed == 1)
    }

    pub fn set_request_outcome(&self, tx_hash: &TxHash, outcome: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE requests SET outcome = ?2 WHERE tx_hash = ?1",
            params![AsText(tx_hash), outcome],
        )?;
        Ok(())
    }

    /// Records a pooled instance as being created (its ports are taken from now on).
    pub fn add_pooled(
        &self,
        instance: &str,
        user_port: u16,
        peer_port: u16,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO pool (instance, user_port, peer_port, state, created_at) \
             VALUES (?1, ?2, ?3, 'creating', ?4)",
            params![instance, user_port, peer_port, to_i64(now_secs())],
        )?;
        Ok(())
    }

    /// Marks a pooled instance running; false when it left the pool meanwhile.
    pub fn pooled_ready(&self, instance: &str) -> Result<bool, StoreError> {
        let changed = self.execute(
            "UPDATE pool SET state = 'ready' WHERE instance = ?1",
            [instance],
        )?;
        Ok(changed == 1)
    }

    /// Takes an instance out of the pool; false when it was not there.
    pub fn take_pooled(&self, instance: &str) -> Result<bool, StoreError> {
        let changed = self.execute("DELETE FROM pool WHERE instance = ?1", [instance])?;
        Ok(changed == 1)
    }

    /// Records a lease in state `provisioning` and takes its ports. Returns its id.
    pub fn record_lease(&self, lease: &NewLease) -> Result<i64, StoreError> {
        let contract_config = match &lease.contract_config {
            Some(config) => {
                Some(
                    serde_json::to_string(config).map_err(|e| StoreError::BadValue {
                        what: "contract config",
                        value: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        self.execute(
            "INSERT INTO leases (purchase_tx, slot, token_id, tenant, reply_key, owner_key, \
             contract_id, instance, node_secret, node_key, user_port, peer_port, moments, \
             started_at, expires_at, state, pooled, contract_config) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 'provisioning', ?16, ?17)",
            params![
                AsText(&lease.purchase_tx),
                lease.slot,
                AsText(&lease.token_id),
                AsText(&lease.tenant),
                AsText(&lease.reply_key),
                AsText(&lease.owner_key),
                AsText(&lease.contract_id),
                lease.instance,
                lease.node_secret,
                AsText(&lease.node_key),
                lease.user_port,
                lease.peer_port,
                to_i64(lease.moments),
                to_i64(lease.started_at),
                to_i64(lease.expires_at),
                lease.pooled,
                contract_config,
            ],
        )?;
        let id = self.last_insert_rowid();
        for port in [lease.user_port, lease.peer_port] {
            self.execute(
                "INSERT INTO ports (port, lease_id) VALUES (?1, ?2)",
                params![port, id],
            )?;
        }
        Ok(id)
    }

    pub fn set_lease_state(&self, id: i64, state: LeaseState) -> Result<(), StoreError> {
        self.execute(
            "UPDATE leases SET state = ?2 WHERE id = ?1",
            params![id, state.as_str()],
        )?;
        if state == LeaseState::Ended {
            self.execute("DELETE FROM ports WHERE lease_id = ?1", [id])?;
        }
        Ok(())
    }

    /// Marks a lease `ending`, remembering the request (if any) that ended it and why.
    pub fn begin_ending(
        &self,
        id: i64,
        request: Option<&TxHash>,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE leases SET state = 'ending', end_request = ?2, end_reason = ?3 WHERE id = ?1",
            params![id, request.map(AsText), reason],
        )?;
        Ok(())
    }

    /// Holds a lease's instance stopped for the rest of the lease, saying why.
    pub fn hold_stopped(&self, id: i64, why: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE leases SET held_stopped = ?2 WHERE id = ?1",
            params![id, why],
        )?;
        Ok(())
    }

    pub fn extend_lease(&self, id: i64, moments: u64, expires_at: u64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE leases SET moments = moments + ?2, expires_at = ?3, \
             state = CASE WHEN state = 'grace' THEN 'active' ELSE state END WHERE id = ?1",
            params![id, to_i64(moments), to_i64(expires_at)],
        )?;
        Ok(())
    }

    /// Persists the signed transaction of an outbox row before it is submitted.
    pub fn outbox_prepared(
        &self,
        key: &str,
        tx_hash: &TxHash,
        blob: &str,
        last_ledger: u32,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET state = 'prepared', tx_hash = ?2, blob = ?3, last_ledger = ?4, \
             attempts = attempts + 1, updated_at = ?5 WHERE key = ?1",
            params![key, AsText(tx_hash), blob, last_ledger, to_i64(now_secs())],
        )?;
        Ok(())
    }

    /// Replaces the signed transaction of a prepared row by its re-signed version (raised
    /// fee, same sequence); the new version lists the hashes it replaces.
    pub fn outbox_resigned(
        &self,
        key: &str,
        tx_hash: &TxHash,
        blob: &str,
        last_ledger: u32,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET tx_hash = ?2, blob = ?3, last_ledger = ?4, updated_at = ?5 \
             WHERE key = ?1 AND state = 'prepared'",
            params![key, AsText(tx_hash), blob, last_ledger, to_i64(now_secs())],
        )?;
        Ok(())
    }

    /// Sends an outbox row back to `pending` (its transaction can never validate).
    pub fn outbox_retry(&self, key: &str, why: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET state = 'pending', tx_hash = NULL, blob = NULL, last_ledger = NULL, \
             result = ?2, updated_at = ?3 WHERE key = ?1",
            params![key, why, to_i64(now_secs())],
        )?;
        Ok(())
    }

    pub fn outbox_done(
        &self,
        key: &str,
        state: OutboxState,
        result: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET state = ?2, result = ?3, updated_at = ?4 WHERE key = ?1",
            params![key, state.as_str(), result, to_i64(now_secs())],
        )?;
        Ok(())
    }

    /// Moves the cursor to `ledger`; `resumed_at` restarts when the ledger had stalled.
    pub fn set_cursor(&self, cursor: Cursor) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO cursor (id, ledger, close_time, resumed_at) VALUES (1, ?1, ?2, ?3) \
             ON CONFLICT(id) DO UPDATE SET ledger = ?1, close_time = ?2, resumed_at = ?3",
            params![
                cursor.ledger,
                to_i64(cursor.close_time),
                to_i64(cursor.resumed_at)
            ],
        )?;
        Ok(())
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, value],
        )?;
        Ok(())
    }

    /// Keeps an error for `status`; only the latest 200 are kept.
    pub fn record_error(&self, context: &str, message: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO errors (at, context, message) VALUES (?1, ?2, ?3)",
            params![to_i64(now_secs()), context, message],
        )?;
        self.execute(
            "DELETE FROM errors WHERE id <= (SELECT MAX(id) FROM errors) - 200",
            [],
        )?;
        Ok(())
    }
}
