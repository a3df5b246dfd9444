//! Answers `ledger_query` from the node's SQLite record (hpcore `src/ledger/ledger_query.cpp`),
//! a page at a time: at most [`MAX_LEDGERS_PER_REPLY`] ledgers and about
//! [`REPLY_BYTE_BUDGET`] bytes of inputs and outputs per reply (always at least one ledger).

use std::path::Path;

use crate::ledger;
use crate::protocol::history::{
    error, InputRecord, LedgerQuery, LedgerQueryResult, LedgerRecord, OutputRecord,
};
use crate::protocol::pubkey_bytes_from_hex;
use crate::store::{Store, StoreError};

/// Most ledgers in one `ledger_query_result`.
pub const MAX_LEDGERS_PER_REPLY: u64 = 64;
/// Bytes of inputs and outputs after which a reply stops adding ledgers.
pub const REPLY_BYTE_BUDGET: usize = 4 * 1024 * 1024;

/// The answer to `q` from the database at `db` (opened read-only for this query).
pub fn answer(db: &Path, q: &LedgerQuery) -> LedgerQueryResult {
    match Store::open_reader(db).and_then(|store| page(&store, q)) {
        Ok((results, next_seq_no)) => LedgerQueryResult {
            reply_for: q.id.clone(),
            error: None,
            results,
            next_seq_no,
        },
        Err(StoreError::Pruned { .. }) => failed(q, error::PRUNED),
        Err(e) => {
            tracing::warn!(error = %berth_log::chain(&e), from = q.from, to = q.to, "ledger query failed");
            failed(q, error::EXEC_FAILURE)
        }
    }
}

/// A result carrying only an error code.
pub fn failed(q: &LedgerQuery, code: &str) -> LedgerQueryResult {
    LedgerQueryResult {
        reply_for: q.id.clone(),
        error: Some(code.to_owned()),
        results: Vec::new(),
        next_seq_no: None,
    }
}

fn page(store: &Store, q: &LedgerQuery) -> Result<(Vec<LedgerRecord>, Option<u64>), StoreError> {
    if q.from < store.oldest()? {
        return Err(StoreError::Pruned { from: q.from });
    }
    let mut results = Vec::new();
    let mut bytes = 0usize;
    let last = q.to.min(q.from.saturating_add(MAX_LEDGERS_PER_REPLY - 1));
    let mut seq = q.from;
    while seq <= last {
        if !results.is_empty() && bytes >= REPLY_BYTE_BUDGET {
            break;
        }
        let Some(record) = record(store, seq, q.inputs, q.outputs)? else {
            // Past the last closed ledger: nothing more to page through.
            return Ok((results, None));
        };
        bytes += record.weight();
        results.push(record);
        seq += 1;
    }
    let next = (q.range && seq <= q.to).then_some(seq);
    Ok((results, next))
}

/// One ledger as `ledger_query` returns it; None when the node has no such ledger.
pub fn record(
    store: &Store,
    seq_no: u64,
    inputs: bool,
    outputs: bool,
) -> Result<Option<LedgerRecord>, StoreError> {
    let Some(l) = store.ledger(seq_no)? else {
        return Ok(None);
    };
    let key = |hex: &str| pubkey_bytes_from_hex(hex).map_or_else(Vec::new, |k| k.to_vec());
    let inputs = if inputs {
        Some(
            store
                .inputs_of(seq_no)?
                .into_iter()
                .map(|i| InputRecord {
                    pubkey: key(&i.pubkey),
                    hash: i.hash.to_vec(),
                    nonce: i.nonce,
                    blob: i.blob,
                })
                .collect(),
        )
    } else {
        None
    };
    let outputs = if outputs {
        Some(
            store
                .outputs_of(seq_no)?
                .into_iter()
                .map(|o| {
                    let pubkey = key(&o.pubkey);
                    let hash = pubkey_bytes_from_hex(&o.pubkey).map_or_else(Vec::new, |k| {
                        ledger::user_output_hash(&k, &o.outputs).to_vec()
                    });
                    OutputRecord {
                        pubkey,
                        hash,
                        blobs: o.outputs,
                    }
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(Some(LedgerRecord {
        inputs,
        outputs,
        ..header(&l)
    }))
}

/// A ledger's header fields as a record, without raw inputs or outputs.
pub fn header(l: &ledger::Ledger) -> LedgerRecord {
    LedgerRecord {
        seq_no: l.seq_no,
        timestamp: l.timestamp,
        hash: l.hash.to_vec(),
        prev_hash: l.prev_hash.to_vec(),
        state_hash: l.state_hash.to_vec(),
        config_hash: l.config_hash.to_vec(),
        user_hash: l.user_hash.to_vec(),
        input_hash: l.input_hash.to_vec(),
        output_hash: l.output_hash.to_vec(),
        inputs: None,
        outputs: None,
    }
}
