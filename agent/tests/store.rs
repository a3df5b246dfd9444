#![allow(clippy::unwrap_used)]
//! The SQLite store: migrations, keyed outbox rows, transactions that land whole, reopen.

use berth_agent::ledger::{LedgerAction, MemoHex};
use berth_agent::store::{
    Cursor, LeaseState, NewLease, OutboxState, SlotState, Store, StoreError, SCHEMA_VERSION,
};
use berth_schemas::field::{AccountAddress, TxHash};
use berth_schemas::key::PublicKey;

/// A transaction hash standing for `label`.
fn hash(label: &str) -> TxHash {
    let mut bytes = [0u8; 32];
    bytes[..label.len()].copy_from_slice(label.as_bytes());
    TxHash(bytes)
}

/// An account standing for `label`.
fn account(label: &str) -> AccountAddress {
    let mut bytes = [0u8; 20];
    bytes[..label.len()].copy_from_slice(label.as_bytes());
    AccountAddress::from_account_id(bytes)
}

fn public_key(seed: u8) -> PublicKey {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    PublicKey::from_verifying_key(&key.verifying_key()).unwrap()
}

fn payment(to: &str) -> LedgerAction {
    LedgerAction::Payment {
        destination: account(to),
        amount_drops: 1,
        memo: MemoHex {
            memo_type: "00".into(),
            memo_format: "00".into(),
            memo_data: "00".into(),
        },
    }
}

fn lease(purchase: &str, slot: u32, ports: (u16, u16)) -> NewLease {
    NewLease {
        purchase_tx: hash(purchase),
        slot,
        token_id: format!("{slot:064X}").parse().unwrap(),
        tenant: account("rTenant"),
        reply_key: public_key(1),
        owner_key: public_key(2),
        contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".parse().unwrap(),
        instance: format!("l-{purchase}"),
        node_secret: "secret".into(),
        node_key: public_key(3),
        user_port: ports.0,
        peer_port: ports.1,
        moments: 1,
        started_at: 100,
        expires_at: 3700,
        pooled: false,
        contract_config: None,
    }
}

#[test]
fn a_new_store_has_the_current_schema_and_reopens_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.db");
    {
        let mut store = Store::open(&path).unwrap();
        store
            .transaction(|tx| {
                tx.ensure_slots(2, |slot, generation| {
                    (format!("mint:{slot}:{generation}"), payment("rX"))
                })?;
                tx.record_lease(&lease("AA", 0, (26201, 22861)))?;
                tx.set_cursor(Cursor {
                    ledger: 7,
                    close_time: 1000,
                    resumed_at: 900,
                })
            })
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let read = store.read();
    assert_eq!(read.slots().unwrap().len(), 2);
    assert_eq!(read.slots().unwrap()[0].state, SlotState::Minting);
    assert_eq!(read.outbox(&[]).unwrap().len(), 2);
    let leases = read.leases(&[LeaseState::Provisioning]).unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].purchase_tx, hash("AA"));
    assert_eq!(read.ports_in_use().unwrap().len(), 2);
    assert_eq!(read.cursor().unwrap().unwrap().ledger, 7);
    let version: u32 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn an_outbox_key_is_written_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("agent.db")).unwrap();
    let (first, second) = store
        .transaction(|tx| {
            Ok((
                tx.enqueue("answer:AB", &payment("rFirst"))?,
                tx.enqueue("answer:AB", &payment("rSecond"))?,
            ))
        })
        .unwrap();
    assert!(first);
    assert!(!second);
    let row = store.read().outbox_row("answer:AB").unwrap().unwrap();
    assert_eq!(row.action, payment("rFirst"));
    assert_eq!(row.state, OutboxState::Pending);
}

#[test]
fn a_failed_transaction_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("agent.db")).unwrap();
    let result: Result<(), StoreError> = store.transaction(|tx| {
        tx.record_request(&hash("CD"), "acquire", 5, "leased")?;
        tx.enqueue("answer:CD", &payment("rX"))?;
        // A second lease on the same ports violates the ports primary key.
        tx.record_lease(&lease("P1", 0, (26201, 22861)))?;
        tx.record_lease(&lease("P2", 1, (26201, 22862)))?;
        Ok(())
    });
    assert!(result.is_err());
    let read = store.read();
    assert!(!read.request_seen(&hash("CD")).unwrap());
    assert!(read.outbox_row("answer:CD").unwrap().is_none());
    assert!(read.leases(&[]).unwrap().is_empty());
}

#[test]
fn requests_are_recorded_once_and_ended_leases_free_their_ports() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("agent.db")).unwrap();
    store
        .transaction(|tx| {
            assert!(tx.record_request(&hash("EF"), "extend", 3, "extended")?);
            assert!(!tx.record_request(&hash("EF"), "extend", 3, "again")?);
            let id = tx.record_lease(&lease("P1", 0, (26201, 22861)))?;
            tx.set_lease_state(id, LeaseState::Ended)?;
            Ok(())
        })
        .unwrap();
    let read = store.read();
    assert_eq!(
        read.request(&hash("EF")).unwrap(),
        Some(("extend".into(), "extended".into()))
    );
    assert!(read.ports_in_use().unwrap().is_empty());
}

#[test]
fn held_rows_wait_for_release_and_prepared_rows_keep_their_blob() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("agent.db")).unwrap();
    store
        .transaction(|tx| {
            tx.enqueue_as("answer:H", &payment("rX"), OutboxState::Held)?;
            tx.enqueue("mint:0:0", &payment("rY"))?;
            tx.outbox_prepared("mint:0:0", &hash("HASH"), "BLOB", 42)
        })
        .unwrap();
    assert_eq!(
        store.read().outbox(&[OutboxState::Pending]).unwrap().len(),
        0
    );
    let prepared = store.read().outbox_row("mint:0:0").unwrap().unwrap();
    assert_eq!(prepared.state, OutboxState::Prepared);
    assert_eq!(prepared.blob.as_deref(), Some("BLOB"));
    assert_eq!(prepared.last_ledger, Some(42));
    store.transaction(|tx| tx.release("answer:H")).unwrap();
    assert_eq!(
        store.read().outbox_row("answer:H").unwrap().unwrap().state,
        OutboxState::Pending
    );
}

#[test]
fn a_read_only_store_reads_while_a_writer_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.db");
    let mut writer = Store::open(&path).unwrap();
    writer
        .transaction(|tx| tx.record_error("test", "something failed"))
        .unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    let errors = reader.read().recent_errors(10).unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].message, "something failed");
    writer
        .transaction(|tx| tx.set_setting("draining", "true"))
        .unwrap();
    assert!(reader.read().draining().unwrap());
}

#[test]
fn a_missing_or_newer_database_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(err.to_string().contains("missing.db"), "{err}");

    let newer = dir.path().join("newer.db");
    drop(Store::open(&newer).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
            [],
        )
        .unwrap();
    let err = Store::open(&newer).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("newer.db"));
}
