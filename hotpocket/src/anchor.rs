//! Anchoring the cluster on the XRP Ledger, the node's part: it answers "what is your
//! ledger at seq S" and signs, as one signer of the cluster account's multi-signed
//! transactions, exactly two shapes of transaction:
//!
//! - a **checkpoint**: an `AccountSet` with no fields of its own and one `berth/checkpoint`
//!   memo (`berth_schemas::checkpoint`) whose contract id, ledger hash, state hash and
//!   bundle hash are those of this node's own closed ledger at that seq;
//! - a **signer list** update: a `SignerListSet` naming exactly the current UNL's node keys
//!   (as XRPL accounts, weight 1) with the quorum of the cluster's threshold.
//!
//! Either may carry only the common fields `Account`, `Fee` (at most [`MAX_FEE_DROPS`]),
//! `Sequence`, `LastLedgerSequence`, `Flags` (0 or tfFullyCanonical), `NetworkID` and an
//! empty `SigningPubKey`. So a stranger can make the node sign nothing that moves money.
//!
//! Before answering with a checkpoint signature the node records (seq → ledger hash, state
//! hash) in its SQLite database; it refuses a checkpoint of another state at a seq it has
//! signed, also after a restart, and signs at most [`MAX_SIGNATURES_PER_SEQ`] transactions
//! per seq (a retry with a new Sequence or fee is one more), which bounds the fees a stranger
//! can make the account pay.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_hotpocket_client::protocol::anchor::{
    signer_quorum, CheckpointSigner, LedgerAnswer, LedgerHashes,
};
use berth_schemas::checkpoint::Checkpoint;
use berth_schemas::memo::Memo;
use berth_xrpl_core::codec::{Amount, StObject, Value};
use berth_xrpl_core::{encode_account_id, KeyPair};
use rusqlite::{params, Connection, OptionalExtension};

/// The highest `Fee` the node signs, in drops (0.1 XRP).
pub const MAX_FEE_DROPS: i64 = 100_000;

/// Checkpoint transactions signed for one seq at most.
pub const MAX_SIGNATURES_PER_SEQ: u32 = 8;

/// XRPL transaction type codes.
const ACCOUNT_SET: u16 = 3;
const SIGNER_LIST_SET: u16 = 12;
const TF_FULLY_CANONICAL: u32 = 0x8000_0000;

const COMMON_FIELDS: &[&str] = &[
    "TransactionType",
    "Account",
    "Fee",
    "Sequence",
    "LastLedgerSequence",
    "Flags",
    "NetworkID",
    "SigningPubKey",
];

/// The anchor database's errors, naming the database.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("anchor database {path}: {op}")]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
    },
}

/// What the node needs to judge a transaction: its contract, UNL and threshold.
pub struct SignContext<'a> {
    pub contract_id: &'a str,
    /// `ed…` keys of the current UNL.
    pub unl: &'a [String],
    pub threshold: u32,
    /// The node's ed25519 secret key.
    pub secret: &'a [u8; 32],
}

/// The node's anchor record: its own connection to the ledger database (WAL), so that
/// answers never wait for the round loop.
pub struct Anchor {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS checkpoint_signatures (
    seq_no INTEGER PRIMARY KEY, ledger_hash BLOB NOT NULL, state_hash BLOB NOT NULL,
    signed INTEGER NOT NULL);
";

fn hash32(bytes: Vec<u8>) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

impl Anchor {
    /// Opens the anchor tables in the ledger database at `path` (opened by
    /// [`crate::store::Store`] first, which owns the ledgers and bundles tables).
    pub fn open(path: &Path) -> Result<Anchor, AnchorError> {
        let err = |op| {
            let path = path.to_path_buf();
            move |source| AnchorError::Sqlite { path, op, source }
        };
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout"))?;
        conn.execute_batch(SCHEMA).map_err(err("create schema"))?;
        Ok(Anchor {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> AnchorError + '_ {
        move |source| AnchorError::Sqlite {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// The hashes of this node's ledger `seq`, if it has it.
    pub fn ledger(&self, seq: u64) -> Result<Option<LedgerHashes>, AnchorError> {
        let conn = self.conn();
        let row: Option<(Vec<u8>, Vec<u8>, u64)> = conn
            .query_row(
                "SELECT hash, state_hash, time FROM ledgers WHERE seq_no = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.err("read ledger"))?;
        let Some((hash, state, time_ms)) = row else {
            return Ok(None);
        };
        let bundle: Option<Vec<u8>> = conn
            .query_row(
                "SELECT hash FROM bundles WHERE seq_no <= ?1 ORDER BY seq_no DESC LIMIT 1",
                [seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read bundle"))?;
        let (Some(hash), Some(state_hash)) = (hash32(hash), hash32(state)) else {
            return Ok(None);
        };
        Ok(Some(LedgerHashes {
            hash,
            state_hash,
            bundle_hash: bundle.and_then(hash32).unwrap_or([0; 32]),
            time_ms,
        }))
    }

    /// The answer to `berth_ledger`.
    pub fn ledger_answer(&self, seq: u64, lcl_seq: u64) -> Result<LedgerAnswer, AnchorError> {
        Ok(LedgerAnswer {
            seq,
            lcl_seq,
            ledger: self.ledger(seq)?,
        })
    }

    /// Judges and signs a transaction (see the module's description). The error is the
    /// refusal's reason, for the user.
    pub fn sign(&self, tx: &[u8], ctx: &SignContext<'_>) -> Result<CheckpointSigner, String> {
        let obj = StObject::from_bytes(tx)
            .map_err(|e| format!("the transaction does not decode: {e}"))?;
        check_common(&obj)?;
        match obj.u16("TransactionType") {
            Some(ACCOUNT_SET) => {
                let cp = checkpoint_of(&obj)?;
                self.check_checkpoint(&cp, ctx)?;
                let signer = sign_for(&obj, ctx.secret);
                self.record(&cp)?;
                tracing::info!(seq = cp.seq, ledger = %hex::encode(cp.ledger), "signed a checkpoint");
                Ok(signer)
            }
            Some(SIGNER_LIST_SET) => {
                check_signer_list(&obj, ctx)?;
                tracing::info!(nodes = ctx.unl.len(), "signed a signer list update");
                Ok(sign_for(&obj, ctx.secret))
            }
            other => Err(format!(
                "only AccountSet (checkpoint) and SignerListSet transactions are signed, not type {}",
                other.map_or("(none)".to_owned(), |t| t.to_string())
            )),
        }
    }

    fn check_checkpoint(&self, cp: &Checkpoint, ctx: &SignContext<'_>) -> Result<(), String> {
        if cp.contract != ctx.contract_id {
            return Err(format!(
                "checkpoint names contract {}, this node runs {}",
                cp.contract, ctx.contract_id
            ));
        }
        let own = self
            .ledger(cp.seq)
            .map_err(|e| berth_log::chain(&e).to_string())?
            .ok_or_else(|| format!("this node has no ledger {} (yet)", cp.seq))?;
        let mut differs = Vec::new();
        if own.hash != cp.ledger {
            differs.push(format!(
                "ledger hash (this node's is {})",
                hex::encode(own.hash)
            ));
        }
        if own.state_hash != cp.state {
            differs.push(format!(
                "state hash (this node's is {})",
                hex::encode(own.state_hash)
            ));
        }
        if own.bundle_hash != cp.bundle {
            differs.push(format!(
                "bundle hash (this node's is {})",
                hex::encode(own.bundle_hash)
            ));
        }
        match differs.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "checkpoint of ledger {} differs from this node's: {}",
                cp.seq,
                differs.join(", ")
            )),
        }
    }

    /// Records the signature of a checkpoint in one SQLite transaction, refusing another
    /// state at a seq already signed and more than [`MAX_SIGNATURES_PER_SEQ`] signatures.
    fn record(&self, cp: &Checkpoint) -> Result<(), String> {
        let mut conn = self.conn();
        let fail = |e: rusqlite::Error| {
            tracing::error!(path = %self.path.display(), error = %e, "recording a checkpoint signature failed");
            format!("this node could not record the signature: {e}")
        };
        let tx = conn.transaction().map_err(fail)?;
        let row: Option<(Vec<u8>, Vec<u8>, u32)> = tx
            .query_row(
                "SELECT ledger_hash, state_hash, signed FROM checkpoint_signatures WHERE seq_no = ?1",
                [cp.seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(fail)?;
        match row {
            Some((ledger, state, _)) if ledger != cp.ledger || state != cp.state => {
                return Err(format!(
                    "this node already signed another state for ledger {} (ledger {}, state {})",
                    cp.seq,
                    hex::encode(ledger),
                    hex::encode(state)
                ))
            }
            Some((_, _, n)) if n >= MAX_SIGNATURES_PER_SEQ => {
                return Err(format!(
                    "this node already signed {n} checkpoint transactions for ledger {}, the most it signs",
                    cp.seq
                ))
            }
            Some(_) => {
                tx.execute(
                    "UPDATE checkpoint_signatures SET signed = signed + 1 WHERE seq_no = ?1",
                    [cp.seq],
                )
                .map_err(fail)?;
            }
            None => {
                tx.execute(
                    "INSERT INTO checkpoint_signatures VALUES (?1, ?2, ?3, 1)",
                    params![cp.seq, cp.ledger.as_slice(), cp.state.as_slice()],
                )
                .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)
    }
}

fn check_common(obj: &StObject) -> Result<(), String> {
    for (field, _) in obj.fields() {
        let allowed = COMMON_FIELDS.contains(&field.name)
            || matches!(
                (obj.u16("TransactionType"), field.name),
                (Some(ACCOUNT_SET), "Memos")
                    | (Some(SIGNER_LIST_SET), "SignerQuorum" | "SignerEntries")
            );
        if !allowed {
            return Err(format!("field {} is not allowed here", field.name));
        }
    }
    if obj.account("Account").is_none() {
        return Err("the transaction has no Account".into());
    }
    match obj.amount("Fee") {
        Some(Amount::Drops(d)) if (0..=MAX_FEE_DROPS).contains(d) => {}
        _ => return Err(format!("Fee must be XRP drops, at most {MAX_FEE_DROPS}")),
    }
    if !matches!(obj.u32("Flags"), None | Some(0) | Some(TF_FULLY_CANONICAL)) {
        return Err("Flags must be 0".into());
    }
    if obj.blob("SigningPubKey").is_some_and(|k| !k.is_empty()) {
        return Err("SigningPubKey must be empty: the transaction is multi-signed".into());
    }
    Ok(())
}

fn checkpoint_of(obj: &StObject) -> Result<Checkpoint, String> {
    let Some(Value::Array(memos)) = obj.get("Memos") else {
        return Err("a checkpoint carries one berth/checkpoint memo; this has no Memos".into());
    };
    let [(_, memo)] = memos.as_slice() else {
        return Err(format!(
            "a checkpoint carries exactly one memo, this has {}",
            memos.len()
        ));
    };
    let memo = Memo {
        memo_type: memo.blob("MemoType").unwrap_or_default().to_vec(),
        memo_format: memo.blob("MemoFormat").unwrap_or_default().to_vec(),
        memo_data: memo.blob("MemoData").unwrap_or_default().to_vec(),
    };
    Checkpoint::from_memo(&memo).map_err(|e| berth_log::chain(&e).to_string())
}

fn check_signer_list(obj: &StObject, ctx: &SignContext<'_>) -> Result<(), String> {
    let mut want: Vec<[u8; 20]> = Vec::new();
    for key in ctx.unl {
        let Some(bytes) = berth_hotpocket_client::protocol::pubkey_bytes_from_hex(key) else {
            return Err(format!("this node's UNL key {key} is malformed"));
        };
        want.push(berth_xrpl_core::keys::account_id_of(&bytes));
    }
    want.sort_unstable();
    let quorum = signer_quorum(ctx.unl.len(), ctx.threshold);
    if obj.u32("SignerQuorum") != Some(quorum) {
        return Err(format!(
            "SignerQuorum must be {quorum} ({} % of {} nodes)",
            ctx.threshold,
            ctx.unl.len()
        ));
    }
    let Some(Value::Array(entries)) = obj.get("SignerEntries") else {
        return Err("the signer list has no SignerEntries".into());
    };
    let mut got = Vec::new();
    for (_, entry) in entries {
        if entry.u16("SignerWeight") != Some(1) {
            return Err("every SignerWeight must be 1".into());
        }
        if entry.fields().count() != 2 {
            return Err("a SignerEntry holds only Account and SignerWeight".into());
        }
        got.push(entry.account("Account").unwrap_or([0; 20]));
    }
    got.sort_unstable();
    if got != want {
        let names = |ids: &[[u8; 20]]| {
            ids.iter()
                .map(encode_account_id)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "the signer list must be this node's UNL as accounts ({}), not ({})",
            names(&want),
            names(&got)
        ));
    }
    Ok(())
}

fn sign_for(obj: &StObject, secret: &[u8; 32]) -> CheckpointSigner {
    let key = KeyPair::from_ed25519_secret(secret);
    let account = key.account_id();
    let signer = berth_xrpl_core::tx::sign_for(obj, &key, &account);
    CheckpointSigner {
        account: encode_account_id(&account),
        signing_pub_key: key.public_key_hex(),
        txn_signature: hex::encode_upper(signer.blob("TxnSignature").unwrap_or_default()),
    }
}
