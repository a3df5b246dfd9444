//! The instance pool and the metrics endpoint, over a real SQLite store, the recording
//! provisioner (a fake of the narrow `Provisioner` trait) and `FakeLedger`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use berth_agent::machine::{Machine, MachineSettings, PoolPlan};
use berth_agent::store::{LeaseState, PoolState, Store};
use berth_provisioner::{Call, PortRange, RecordingProvisioner};
use berth_schemas::message::ReasonCode;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pooled {
    _dir: tempfile::TempDir,
    machine: Arc<Machine>,
    provisioner: Arc<RecordingProvisioner>,
    ledger: Arc<FakeLedger>,
    host_key: ed25519_dalek::SigningKey,
}

async fn pooled(slots: u32, pool: u32) -> Pooled {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.db")).unwrap();
    let provisioner = Arc::new(RecordingProvisioner::new(
        PortRange::new(26201, 26300),
        PortRange::new(22861, 22960),
        slots,
    ));
    let ledger = Arc::new(FakeLedger::default());
    let mut config = config(slots);
    config.agent.pool = pool;
    let host_key = key(7);
    let machine = Arc::new(Machine::new(
        store,
        provisioner.clone(),
        ledger.clone(),
        config,
        HOST.parse().unwrap(),
        host_key.clone(),
        MachineSettings {
            stall_secs: 60,
            customize: |spec| spec,
            parallel_jobs: 8,
        },
    ));
    machine.ensure_slots().unwrap();
    for _ in 0..3 {
        machine.flush_outbox().await.unwrap();
    }
    Pooled {
        _dir: dir,
        machine,
        provisioner,
        ledger,
        host_key,
    }
}

impl Pooled {
    fn pool(&self) -> Vec<berth_agent::store::PoolInstance> {
        self.machine.store().read().pool().unwrap()
    }

    fn token(&self, slot: u32) -> String {
        token_of(&self.machine, slot)
    }

    async fn buy(&self, tx: u8, slot: u32) {
        let token = self.token(slot);
        self.ledger.transfer(&token, BUYER);
        let memo = acquire_memo_to(&public(&self.host_key), &key(tx));
        let event = purchase(tx, BUYER, &token, PRICE, vec![memo], 1000);
        for job in self.machine.handle(&event).await.unwrap() {
            self.machine.run_job(job).await.unwrap();
        }
        self.machine.flush_outbox().await.unwrap();
    }

    fn creates(&self) -> Vec<berth_provisioner::InstanceSpec> {
        self.provisioner
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Create(spec) => Some(*spec),
                _ => None,
            })
            .collect()
    }
}

const BUYER: &str = "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe";

#[tokio::test]
async fn a_purchase_takes_a_pooled_instance_and_the_pool_refills_with_recording_provisioner_and_fake_ledger(
) {
    let p = pooled(3, 2).await;
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Grow(2));
    let pool = p.pool();
    assert_eq!(pool.len(), 2);
    assert!(pool.iter().all(|i| i.state == PoolState::Ready));
    // Started without an owner: no identity in the environment.
    for spec in p.creates() {
        assert!(spec.awaits_assignment);
        assert!(!spec.env().iter().any(|e| e.starts_with("HP_OWNER_PUBKEY")));
    }
    let creates_before = p.creates().len();

    p.buy(1, 0).await;
    let lease = p.machine.store().read().leases(&[]).unwrap().remove(0);
    assert!(lease.pooled);
    assert_eq!(lease.state, LeaseState::Active);
    assert!(pool.iter().any(|i| i.instance == lease.instance));
    assert_eq!(
        (lease.user_port, lease.peer_port),
        pool.iter()
            .find(|i| i.instance == lease.instance)
            .map(|i| (i.user_port, i.peer_port))
            .unwrap()
    );
    // Assigned, not created: the answer did not wait for a new instance.
    assert!(p
        .provisioner
        .calls()
        .contains(&Call::Assign(lease.instance.clone())));
    assert_eq!(p.creates().len(), creates_before);
    let answered = p
        .ledger
        .payments()
        .iter()
        .any(|(_, _, m)| matches!(m, berth_schemas::memo::Message::AcquireOk(_)));
    assert!(answered);

    // The pool refills to its goal, and the assigned instance is never in it again.
    assert_eq!(p.pool().len(), 1);
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Grow(1));
    let refilled = p.pool();
    assert_eq!(refilled.len(), 2);
    assert!(refilled.iter().all(|i| i.instance != lease.instance));
    // One instance per slot at most: 1 lease + 2 pooled = 3 slots.
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Steady);
    p.buy(2, 1).await;
    p.buy(3, 2).await;
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Steady);
    assert!(p.pool().is_empty());
}

#[tokio::test]
async fn a_purchase_with_an_empty_pool_creates_its_instance_with_recording_provisioner_and_fake_ledger(
) {
    let p = pooled(2, 2).await;
    // The pool was never filled.
    p.buy(1, 0).await;
    let lease = p.machine.store().read().leases(&[]).unwrap().remove(0);
    assert!(!lease.pooled);
    assert_eq!(lease.state, LeaseState::Active);
    assert_eq!(lease.instance, instance_of(1));
    let created = p.creates();
    assert_eq!(created.len(), 1);
    // Made for the lease, but handed its identity the same way as a pooled one: through
    // its state volume before it starts, never in its environment (no secret in
    // `docker inspect`).
    assert!(created[0].awaits_assignment);
    assert!(!created[0]
        .env()
        .iter()
        .any(|e| e.starts_with("HP_NODE_SECRET")));
    let calls = p.provisioner.calls();
    let assigned = calls
        .iter()
        .position(|c| matches!(c, Call::Assign(_)))
        .expect("assigned");
    let started = calls
        .iter()
        .position(|c| matches!(c, Call::Start(_)))
        .expect("started");
    assert!(assigned < started, "identity before start: {calls:?}");
}

#[tokio::test]
async fn the_pool_shrinks_to_nothing_in_drain_and_grows_after_with_recording_provisioner() {
    let p = pooled(4, 5).await;
    // Never more than the slots.
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Grow(4));
    p.machine.drain().unwrap();
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Shrink(4));
    assert!(p.pool().is_empty());
    let destroyed = p
        .provisioner
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Destroy(_)))
        .count();
    assert_eq!(destroyed, 4);
    p.machine.undrain().unwrap();
    assert_eq!(p.machine.tend_pool().await.unwrap(), PoolPlan::Grow(4));
}

#[tokio::test]
async fn reconcile_expects_ready_pooled_instances_and_pooled_leases_as_created_with_recording_provisioner(
) {
    let p = pooled(3, 2).await;
    p.machine.tend_pool().await.unwrap();
    p.buy(1, 0).await;
    let expected = p.machine.expected_instances().unwrap();
    // 1 lease (its spec keeps the pool's labels) + 1 pooled left.
    assert_eq!(expected.len(), 2);
    assert!(expected
        .iter()
        .all(|spec| spec.awaits_assignment && spec.lease_id == spec.name));
}

async fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_metrics_endpoint_reports_leases_slots_pool_and_refunds_with_recording_provisioner_and_fake_ledger(
) {
    let p = pooled(3, 1).await;
    p.machine.tend_pool().await.unwrap();
    p.buy(1, 0).await;
    // A plain payment without a memo is refunded with a reason.
    let refund = payment(9, BUYER, 5, None);
    p.machine.handle(&refund).await.unwrap();
    p.machine.flush_outbox().await.unwrap();
    // The pool gave its instance to the purchase and is filled again.
    p.machine.tend_pool().await.unwrap();

    let listener = berth_agent::metrics::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(berth_agent::metrics::serve(
        listener,
        p.machine.clone(),
        shutdown.clone(),
    ));
    let response = scrape(address).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "berth_leases{state=\"active\"} 1",
        "berth_slots{state=\"leased\"} 1",
        "berth_slots{state=\"free\"} 2",
        "berth_pool_instances{state=\"creating\"} 0",
        "berth_slots{state=\"offered\"} 2",
        "berth_pool_instances{state=\"ready\"} 1",
        "berth_outbox_depth 0",
        "berth_ledger_lag_ledgers 0",
        "berth_provisioning_seconds_count{source=\"pool\"} 1",
        // acquire-ok and the refund
        "berth_answer_latency_seconds_count 2",
    ] {
        assert!(response.contains(line), "{line} missing in\n{response}");
    }
    let reason = serde_json::to_value(ReasonCode::BadPayload).unwrap();
    let refunds = format!(
        "berth_refunds_total{{reason=\"{}\"}} 1",
        reason.as_str().unwrap()
    );
    assert!(
        response.contains(&refunds),
        "{refunds} missing in\n{response}"
    );
    // Anything else is not found.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut other = String::new();
    stream.read_to_string(&mut other).await.unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    shutdown.cancel();
    server.await.unwrap();
}
