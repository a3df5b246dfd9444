//! Persistence of the whole chain in SQLite, written once per closed ledger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_xrpl_core::{StObject, Ter};
use rusqlite::{params, Connection, OptionalExtension};

use crate::node::{Header, TxRecord};
use crate::state::Key;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open ledger store {path}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("ledger store {path}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("ledger store {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// The SQLite file behind a `--data-dir`.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// What a store holds at start.
pub struct Loaded {
    pub headers: Vec<Header>,
    pub txs: Vec<TxRecord>,
    pub objects: Vec<(Key, StObject)>,
}

fn key_of(v: Vec<u8>, path: &Path, what: &str) -> Result<Key, StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        what: format!("{what} is not 32 bytes"),
    })
}

impl Store {
    /// Opens (creating if needed) `ledger.sqlite` in the directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("ledger.sqlite");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Corrupt {
            path: dir.to_path_buf(),
            what: format!("cannot create the directory: {e}"),
        })?;
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS ledgers (
                seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, parent_hash BLOB NOT NULL,
                account_hash BLOB NOT NULL, tx_hash BLOB NOT NULL, close_time INTEGER NOT NULL,
                parent_close_time INTEGER NOT NULL, total_drops INTEGER NOT NULL,
                tx_count INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS txs (
                hash BLOB PRIMARY KEY, ledger_seq INTEGER NOT NULL, idx INTEGER NOT NULL,
                blob BLOB NOT NULL, meta BLOB NOT NULL, extra TEXT NOT NULL, ter INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS state (key BLOB PRIMARY KEY, obj BLOB NOT NULL);",
        )
        .map_err(open_err)?;
        Ok(Store { conn, path })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Writes a closed ledger, its transactions and the state changes in one step.
    pub fn save_close(
        &mut self,
        h: &Header,
        txs: &[Arc<TxRecord>],
        dirty: &BTreeMap<Key, Option<StObject>>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sql {
            path: path.clone(),
            source,
        };
        let t = self.conn.transaction().map_err(sql)?;
        t.execute(
            "INSERT OR REPLACE INTO ledgers VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            params![
                h.seq,
                &h.hash[..],
                &h.parent_hash[..],
                &h.account_hash[..],
                &h.tx_hash[..],
                h.close_time,
                h.parent_close_time,
                h.total_drops,
                h.tx_count
            ],
        )
        .map_err(sql)?;
        {
            let mut ins = t
                .prepare_cached("INSERT OR REPLACE INTO txs VALUES (?1,?2,?3,?4,?5,?6,?7)")
                .map_err(sql)?;
            for r in txs {
                ins.execute(params![
                    &r.hash[..],
                    r.ledger_seq,
                    r.index,
                    &r.blob,
                    r.meta.to_bytes(),
                    serde_json::Value::Object(r.extra.clone()).to_string(),
                    r.ter.code()
                ])
                .map_err(sql)?;
            }
            let mut put = t
                .prepare_cached("INSERT OR REPLACE INTO state VALUES (?1,?2)")
                .map_err(sql)?;
            let mut del = t
                .prepare_cached("DELETE FROM state WHERE key = ?1")
                .map_err(sql)?;
            for (k, v) in dirty {
                match v {
                    Some(o) => put.execute(params![&k[..], o.to_bytes()]).map_err(sql)?,
                    None => del.execute(params![&k[..]]).map_err(sql)?,
                };
            }
        }
        t.commit().map_err(sql)
    }

    /// Reads everything back; `None` when the store is empty.
    pub fn load(&self) -> Result<Option<Loaded>, StoreError> {
        let any: Option<u32> = self
            .conn
            .query_row("SELECT MAX(seq) FROM ledgers", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?
            .flatten();
        if any.is_none() {
            return Ok(None);
        }
        let mut headers = Vec::new();
        let mut st = self
            .conn
            .prepare("SELECT seq, hash, parent_hash, account_hash, tx_hash, close_time, parent_close_time, total_drops, tx_count FROM ledgers ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, u32>(8)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (seq, hash, parent, acct, txh, ct, pct, total, count) =
                row.map_err(|e| self.sql(e))?;
            headers.push(Header {
                seq,
                hash: key_of(hash, &self.path, "ledger hash")?,
                parent_hash: key_of(parent, &self.path, "parent hash")?,
                account_hash: key_of(acct, &self.path, "account hash")?,
                tx_hash: key_of(txh, &self.path, "transaction hash")?,
                close_time: ct,
                parent_close_time: pct,
                total_drops: total,
                tx_count: count,
            });
        }
        let mut txs = Vec::new();
        let mut st = self
            .conn
            .prepare("SELECT hash, ledger_seq, idx, blob, meta, extra, ter FROM txs ORDER BY ledger_seq, idx")
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i32>(6)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (hash, seq, idx, blob, meta, extra, ter) = row.map_err(|e| self.sql(e))?;
            let tx = StObject::from_bytes(&blob)
                .map_err(|e| self.corrupt(format!("transaction blob: {e}")))?;
            let meta = StObject::from_bytes(&meta)
                .map_err(|e| self.corrupt(format!("transaction metadata: {e}")))?;
            let extra = match serde_json::from_str(&extra) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(self.corrupt("transaction extra fields")),
            };
            txs.push(TxRecord {
                hash: key_of(hash, &self.path, "transaction hash")?,
                blob,
                tx,
                meta,
                extra,
                ter: Ter::from_code(ter).ok_or_else(|| self.corrupt(format!("result {ter}")))?,
                ledger_seq: seq,
                index: idx,
            });
        }
        let mut objects = Vec::new();
        let mut st = self
            .conn
            .prepare("SELECT key, obj FROM state")
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (k, o) = row.map_err(|e| self.sql(e))?;
            let obj =
                StObject::from_bytes(&o).map_err(|e| self.corrupt(format!("state object: {e}")))?;
            objects.push((key_of(k, &self.path, "state key")?, obj));
        }
        Ok(Some(Loaded {
            headers,
            txs,
            objects,
        }))
    }
}
