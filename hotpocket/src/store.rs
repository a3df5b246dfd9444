//! The node's SQLite store: ledgers, their inputs and outputs, and each user's last nonce.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::ledger::{Hash, LclId, Ledger, ZERO_HASH};

/// Store errors naming the database and operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger database {path}: {op}")]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("ledger database {path}: corrupt {what}")]
    Corrupt { path: PathBuf, what: &'static str },
    #[error("ledger {from} was pruned (ledger.retention)")]
    Pruned { from: u64 },
}

/// An input as recorded in a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInput {
    pub pubkey: String,
    pub nonce: u64,
    pub hash: Hash,
    pub blob: Vec<u8>,
}

/// Outputs of one user in one ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutputs {
    pub pubkey: String,
    pub outputs: Vec<Vec<u8>>,
}

/// The SQLite store (WAL).
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledgers (
    seq_no INTEGER PRIMARY KEY, time INTEGER NOT NULL, hash BLOB NOT NULL, prev_hash BLOB NOT NULL,
    data_hash BLOB NOT NULL, state_hash BLOB NOT NULL, config_hash BLOB NOT NULL,
    user_hash BLOB NOT NULL, input_hash BLOB NOT NULL, output_hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (
    ledger_seq INTEGER NOT NULL, ord INTEGER NOT NULL, pubkey TEXT NOT NULL, nonce INTEGER NOT NULL,
    hash BLOB NOT NULL UNIQUE, blob BLOB NOT NULL, PRIMARY KEY (ledger_seq, ord));
CREATE TABLE IF NOT EXISTS outputs (
    ledger_seq INTEGER NOT NULL, pubkey TEXT NOT NULL, ord INTEGER NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (ledger_seq, pubkey, ord));
CREATE TABLE IF NOT EXISTS users (pubkey TEXT PRIMARY KEY, last_nonce INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS proofs (seq_no INTEGER PRIMARY KEY, proof BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (seq_no INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    seq_no INTEGER PRIMARY KEY, state_hash BLOB NOT NULL, patch_hash BLOB NOT NULL,
    output_hash BLOB NOT NULL);
";

/// What executing a ledger's inputs left: the hashes the next round proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    pub seq_no: u64,
    pub state_hash: Hash,
    pub patch_hash: Hash,
    pub output_hash: Hash,
}

fn to_hash(bytes: Vec<u8>) -> Option<Hash> {
    bytes.try_into().ok()
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |op| {
            let path = path.to_path_buf();
            move |source| StoreError::Sqlite { path, op, source }
        };
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("set WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err("set synchronous"))?;
        conn.execute_batch(SCHEMA).map_err(err("create schema"))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens the database at `path` read-only (the user port's ledger queries; the round
    /// loop's connection is the only writer).
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            op: "open read-only",
            source,
        })?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// The last closed ledger (genesis when none).
    pub fn lcl(&self) -> Result<LclId, StoreError> {
        let row: Option<(u64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT seq_no, hash FROM ledgers ORDER BY seq_no DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err("read lcl"))?;
        match row {
            None => Ok(LclId::GENESIS),
            Some((seq_no, hash)) => {
                let hash = to_hash(hash).ok_or(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: "ledger hash",
                })?;
                Ok(LclId { seq_no, hash })
            }
        }
    }

    /// The ledger with a sequence number.
    pub fn ledger(&self, seq_no: u64) -> Result<Option<Ledger>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT seq_no, time, hash, prev_hash, data_hash, state_hash, config_hash, user_hash,
                 input_hash, output_hash FROM ledgers WHERE seq_no = ?1",
                [seq_no],
                |r| {
                    let h = |i: usize| -> rusqlite::Result<Hash> {
                        Ok(to_hash(r.get::<_, Vec<u8>>(i)?).unwrap_or(ZERO_HASH))
                    };
                    Ok(Ledger {
                        seq_no: r.get(0)?,
                        timestamp: r.get(1)?,
                        hash: h(2)?,
                        prev_hash: h(3)?,
                        data_hash: h(4)?,
                        state_hash: h(5)?,
                        config_hash: h(6)?,
                        user_hash: h(7)?,
                        input_hash: h(8)?,
                        output_hash: h(9)?,
                    })
                },
            )
            .optional()
            .map_err(self.err("read ledger"))?;
        Ok(row)
    }

    /// The oldest ledger kept (1 when none was pruned or none is recorded).
    pub fn oldest(&self) -> Result<u64, StoreError> {
        let seq: Option<u64> = self
            .conn
            .query_row("SELECT min(seq_no) FROM ledgers", [], |r| r.get(0))
            .map_err(self.err("read oldest ledger"))?;
        Ok(seq.unwrap_or(1))
    }

    /// Drops every ledger before `seq_no` with its inputs, outputs, proof and execution
    /// (`ledger.retention`); users' last nonces stay. Returns how many ledgers went.
    pub fn prune_before(&mut self, seq_no: u64) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let err = |op| {
            let path = path.clone();
            move |source| StoreError::Sqlite { path, op, source }
        };
        let tx = self.conn.transaction().map_err(err("begin"))?;
        let gone = tx
            .execute("DELETE FROM ledgers WHERE seq_no < ?1", [seq_no])
            .map_err(err("prune ledgers"))?;
        for (sql, op) in [
            ("DELETE FROM inputs WHERE ledger_seq < ?1", "prune inputs"),
            ("DELETE FROM outputs WHERE ledger_seq < ?1", "prune outputs"),
            ("DELETE FROM proofs WHERE seq_no < ?1", "prune proofs"),
            (
                "DELETE FROM executions WHERE seq_no < ?1",
                "prune executions",
            ),
        ] {
            tx.execute(sql, [seq_no]).map_err(err(op))?;
        }
        tx.commit().map_err(err("commit"))?;
        Ok(gone)
    }

    /// The last nonce the user had accepted in a ledger (0 when none).
    pub fn last_nonce(&self, pubkey: &str) -> Result<u64, StoreError> {
        let nonce: Option<u64> = self
            .conn
            .query_row(
                "SELECT last_nonce FROM users WHERE pubkey = ?1",
                [pubkey],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read nonce"))?;
        Ok(nonce.unwrap_or(0))
    }

    /// Whether an input with this hash is in a ledger already.
    pub fn input_recorded(&self, hash: &Hash) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM inputs WHERE hash = ?1",
                [hash.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("look up input"))?;
        Ok(found.is_some())
    }

    /// Records a closed ledger with its inputs in one transaction (its outputs come with its
    /// execution, [`Store::record_execution`]).
    pub fn commit(&mut self, ledger: &Ledger, inputs: &[StoredInput]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |op| {
            let path = path.clone();
            move |source| StoreError::Sqlite { path, op, source }
        };
        let tx = self.conn.transaction().map_err(err("begin"))?;
        tx.execute(
            "INSERT INTO ledgers VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                ledger.seq_no,
                ledger.timestamp,
                ledger.hash.as_slice(),
                ledger.prev_hash.as_slice(),
                ledger.data_hash.as_slice(),
                ledger.state_hash.as_slice(),
                ledger.config_hash.as_slice(),
                ledger.user_hash.as_slice(),
                ledger.input_hash.as_slice(),
                ledger.output_hash.as_slice()
            ],
        )
        .map_err(err("insert ledger"))?;
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO inputs VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(err("prepare input insert"))?;
            let mut nonce = tx
                .prepare_cached(
                    "INSERT INTO users VALUES (?1, ?2) ON CONFLICT(pubkey)
                     DO UPDATE SET last_nonce = max(last_nonce, excluded.last_nonce)",
                )
                .map_err(err("prepare nonce update"))?;
            for (i, input) in inputs.iter().enumerate() {
                ins.execute(params![
                    ledger.seq_no,
                    i as i64,
                    input.pubkey,
                    input.nonce,
                    input.hash.as_slice(),
                    input.blob
                ])
                .map_err(err("insert input"))?;
            }
            let mut highest: std::collections::HashMap<&str, u64> =
                std::collections::HashMap::new();
            for input in inputs {
                let entry = highest.entry(input.pubkey.as_str()).or_default();
                *entry = (*entry).max(input.nonce);
            }
            for (pubkey, last) in highest {
                nonce
                    .execute(params![pubkey, last])
                    .map_err(err("update nonce"))?;
            }
        }
        tx.commit().map_err(err("commit"))
    }

    /// Records the result of executing ledger `exec.seq_no`, with the outputs it produced, in
    /// one transaction.
    pub fn record_execution(
        &mut self,
        exec: &Execution,
        outputs: &[StoredOutputs],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |op| {
            let path = path.clone();
            move |source| StoreError::Sqlite { path, op, source }
        };
        let tx = self.conn.transaction().map_err(err("begin"))?;
        tx.execute(
            "INSERT OR REPLACE INTO executions VALUES (?1, ?2, ?3, ?4)",
            params![
                exec.seq_no,
                exec.state_hash.as_slice(),
                exec.patch_hash.as_slice(),
                exec.output_hash.as_slice()
            ],
        )
        .map_err(err("insert execution"))?;
        write_outputs(&tx, exec.seq_no, outputs).map_err(|(op, e)| err(op)(e))?;
        tx.commit().map_err(err("commit"))
    }

    /// Records the outputs of a ledger this node did not execute (taken from a peer and
    /// checked against the output root the UNL agreed on).
    pub fn record_outputs(
        &mut self,
        seq_no: u64,
        outputs: &[StoredOutputs],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |op| {
            let path = path.clone();
            move |source| StoreError::Sqlite { path, op, source }
        };
        let tx = self.conn.transaction().map_err(err("begin"))?;
        write_outputs(&tx, seq_no, outputs).map_err(|(op, e)| err(op)(e))?;
        tx.commit().map_err(err("commit"))
    }

    /// The outputs recorded for a ledger, by user.
    pub fn outputs_of(&self, seq_no: u64) -> Result<Vec<StoredOutputs>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT pubkey, blob FROM outputs WHERE ledger_seq = ?1 ORDER BY pubkey, ord",
            )
            .map_err(self.err("prepare outputs query"))?;
        let rows = stmt
            .query_map([seq_no], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(self.err("query outputs"))?;
        let mut out: Vec<StoredOutputs> = Vec::new();
        for row in rows {
            let (pubkey, blob) = row.map_err(self.err("read outputs"))?;
            match out.last_mut() {
                Some(last) if last.pubkey == pubkey => last.outputs.push(blob),
                _ => out.push(StoredOutputs {
                    pubkey,
                    outputs: vec![blob],
                }),
            }
        }
        Ok(out)
    }

    /// Records why a ledger closed (the stage-3 proposals, encoded by the caller) and its
    /// inputs as their users signed them (encoded too), so that peers that missed the
    /// ledger can check and replay it.
    pub fn record_proof(&mut self, seq_no: u64, proof: &[u8]) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO proofs VALUES (?1, ?2)",
                params![seq_no, proof],
            )
            .map_err(self.err("insert proof"))?;
        Ok(())
    }

    /// The recorded proof of a ledger, if any.
    pub fn proof(&self, seq_no: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row(
                "SELECT proof FROM proofs WHERE seq_no = ?1",
                [seq_no],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read proof"))
    }

    /// Records that the bundle with blake3 `hash` went live at ledger `seq_no` (what a
    /// checkpoint of a later ledger names as its bundle, see [`crate::anchor`]).
    pub fn record_bundle(&mut self, seq_no: u64, hash: &Hash) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO bundles VALUES (?1, ?2)",
                params![seq_no, hash.as_slice()],
            )
            .map_err(self.err("record bundle"))?;
        Ok(())
    }

    /// The latest recorded execution, if any.
    pub fn last_execution(&self) -> Result<Option<Execution>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT seq_no, state_hash, patch_hash, output_hash FROM executions
                 ORDER BY seq_no DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.err("read last execution"))?;
        let Some((seq_no, state, patch, output)) = row else {
            return Ok(None);
        };
        let corrupt = || StoreError::Corrupt {
            path: self.path.clone(),
            what: "execution hashes",
        };
        Ok(Some(Execution {
            seq_no,
            state_hash: to_hash(state).ok_or_else(corrupt)?,
            patch_hash: to_hash(patch).ok_or_else(corrupt)?,
            output_hash: to_hash(output).ok_or_else(corrupt)?,
        }))
    }

    /// Inputs of a ledger in consensus order.
    pub fn inputs_of(&self, seq_no: u64) -> Result<Vec<StoredInput>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT pubkey, nonce, hash, blob FROM inputs WHERE ledger_seq = ?1 ORDER BY ord",
            )
            .map_err(self.err("prepare inputs query"))?;
        let rows = stmt
            .query_map([seq_no], |r| {
                Ok(StoredInput {
                    pubkey: r.get(0)?,
                    nonce: r.get(1)?,
                    hash: to_hash(r.get::<_, Vec<u8>>(2)?).unwrap_or(ZERO_HASH),
                    blob: r.get(3)?,
                })
            })
            .map_err(self.err("query inputs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read inputs"))
    }

    /// Every output ever recorded for a user, in ledger order.
    pub fn outputs_for_user(&self, pubkey: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT ledger_seq, blob FROM outputs WHERE pubkey = ?1 ORDER BY ledger_seq, ord",
            )
            .map_err(self.err("prepare outputs query"))?;
        let rows = stmt
            .query_map([pubkey], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("query outputs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read outputs"))
    }
}

/// Replaces a ledger's outputs inside a transaction; the error names the step.
fn write_outputs(
    tx: &rusqlite::Transaction<'_>,
    seq_no: u64,
    outputs: &[StoredOutputs],
) -> Result<(), (&'static str, rusqlite::Error)> {
    tx.execute("DELETE FROM outputs WHERE ledger_seq = ?1", [seq_no])
        .map_err(|e| ("clear outputs", e))?;
    let mut out = tx
        .prepare_cached("INSERT INTO outputs VALUES (?1, ?2, ?3, ?4)")
        .map_err(|e| ("prepare output insert", e))?;
    for user in outputs {
        for (i, blob) in user.outputs.iter().enumerate() {
            out.execute(params![seq_no, user.pubkey, i as i64, blob])
                .map_err(|e| ("insert output", e))?;
        }
    }
    Ok(())
}
