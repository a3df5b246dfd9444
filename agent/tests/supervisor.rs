//! The supervisor's watchdog: `run` on an in-process localnet with a recording notifier (a
//! fake of the narrow `Notifier` trait) and a provisioner whose reconcile is slow (the
//! recording provisioner behind a wrapper of the `Provisioner` trait). A housekeeping pass
//! that lasts longer than the watchdog timeout must not stop the pings.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::machine::MachineSettings;
use berth_agent::run::{run_supervised, Notifier, RunSettings, Supervision};
use berth_agent::setup::HostKeys;
use berth_localnet::{Config, Localnet};
use berth_mb_xrpl::{Client, ClientConfig};
use berth_provisioner::{
    DestroyOutcome, DiskCheck, Health, HostStatus, ImageOutcome, ImageSpec, InstancePorts,
    InstanceSpec, InstanceStatus, InstanceSummary, PortRange, ProvisionError, Provisioner,
    ReconcileAction, RecordingProvisioner,
};
use berth_schemas::config::HostConfig;
use berth_xrpl_core::{KeyPair, KeyType};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What happened, in order: pings and the slow pass's start and end.
type Log = Arc<Mutex<Vec<&'static str>>>;

struct RecordingNotifier(Log);

impl Notifier for RecordingNotifier {
    fn notify(&self, state: &[sd_notify::NotifyState<'_>]) {
        for s in state {
            if matches!(s, sd_notify::NotifyState::Watchdog) {
                self.0.lock().unwrap().push("watchdog");
            }
        }
    }
    fn watchdog_timeout(&self) -> Option<Duration> {
        None
    }
}

/// The recording provisioner with a reconcile that takes `slow`.
struct SlowReconcileProvisioner {
    inner: RecordingProvisioner,
    slow: Duration,
    log: Log,
}

#[async_trait::async_trait]
impl Provisioner for SlowReconcileProvisioner {
    async fn ensure_image(&self, image: &ImageSpec) -> Result<ImageOutcome, ProvisionError> {
        self.inner.ensure_image(image).await
    }
    async fn allocate_ports(
        &self,
        reserved: &BTreeSet<u16>,
    ) -> Result<InstancePorts, ProvisionError> {
        self.inner.allocate_ports(reserved).await
    }
    async fn create(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        self.inner.create(spec).await
    }
    async fn assign(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        self.inner.assign(spec).await
    }
    async fn start(&self, name: &str) -> Result<(), ProvisionError> {
        self.inner.start(name).await
    }
    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        self.inner.stop(name).await
    }
    async fn destroy(&self, name: &str) -> Result<DestroyOutcome, ProvisionError> {
        self.inner.destroy(name).await
    }
    async fn inspect(&self, name: &str) -> Result<InstanceStatus, ProvisionError> {
        self.inner.inspect(name).await
    }
    async fn health(&self, name: &str) -> Result<Health, ProvisionError> {
        self.inner.health(name).await
    }
    async fn logs(&self, name: &str, tail: usize) -> Result<String, ProvisionError> {
        self.inner.logs(name, tail).await
    }
    async fn list(&self) -> Result<Vec<InstanceSummary>, ProvisionError> {
        self.inner.list().await
    }
    async fn reconcile(
        &self,
        expected: &[InstanceSpec],
    ) -> Result<Vec<ReconcileAction>, ProvisionError> {
        self.log.lock().unwrap().push("housekeeping-start");
        tokio::time::sleep(self.slow).await;
        self.log.lock().unwrap().push("housekeeping-end");
        self.inner.reconcile(expected).await
    }
    async fn host_status(&self) -> Result<HostStatus, ProvisionError> {
        self.inner.host_status().await
    }
    async fn enforce_disk_quota(&self) -> Result<Vec<DiskCheck>, ProvisionError> {
        self.inner.enforce_disk_quota().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_go_on_through_a_housekeeping_pass_longer_than_its_timeout_with_recording_notifier_and_slow_reconcile_provisioner(
) {
    let ledger_dir = tempfile::tempdir().unwrap();
    let net = Localnet::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: Duration::from_millis(500),
        data_dir: Some(ledger_dir.path().to_owned()),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = Client::connect(ClientConfig::new([net.url()]))
        .await
        .unwrap();
    let host_key = KeyPair::generate(KeyType::Ed25519);
    let registry = KeyPair::generate(KeyType::Ed25519);
    for account in [&host_key, &registry] {
        client
            .request(
                "wallet_fund",
                json!({"destination": account.address(), "amount": "1000000000"}),
            )
            .await
            .unwrap();
        // Funded once a validated ledger has the account.
        while client
            .request(
                "account_info",
                json!({"account": account.address(), "ledger_index": "validated"}),
            )
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig::from_toml(&format!(
        r#"
[ledger]
servers = ["{url}"]
registry = "{registry}"
[host]
domain = "127.0.0.1"
country = "DE"
data_dir = "{data}"
[lease]
slots = 1
price_drops = "1000000"
[resources]
cpu_millicores = 500
memory_mb = 256
disk_mb = 256
[housekeeping]
schedule = "* * * * * *"
"#,
        url = net.url(),
        registry = registry.address(),
        data = dir.path().display(),
    ))
    .unwrap();
    let keys = HostKeys::from_seed(&host_key.seed().unwrap()).unwrap();
    let log: Log = Arc::default();
    // Pings every 100 ms; a housekeeping pass of 2 s is ten times the watchdog timeout.
    let watchdog = Duration::from_millis(200);
    let provisioner = Arc::new(SlowReconcileProvisioner {
        inner: RecordingProvisioner::new(
            PortRange::new(26201, 26300),
            PortRange::new(22861, 22960),
            4,
        ),
        slow: Duration::from_secs(2),
        log: log.clone(),
    });
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_supervised(
        config,
        keys,
        provisioner,
        RunSettings {
            machine: MachineSettings::default(),
            notify: false,
            outbox_idle: Duration::from_millis(50),
        },
        Supervision {
            notifier: Arc::new(RecordingNotifier(log.clone())),
            watchdog: Some(watchdog),
        },
        shutdown.clone(),
    ));
    // Until one slow pass has ended.
    loop {
        if log.lock().unwrap().contains(&"housekeeping-end") {
            break;
        }
        if agent.is_finished() {
            panic!("the agent stopped: {:?}", agent.await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    let start = log.iter().position(|e| *e == "housekeeping-start").unwrap();
    let end = log.iter().position(|e| *e == "housekeeping-end").unwrap();
    let pings_during = log[start..end].iter().filter(|e| **e == "watchdog").count();
    assert!(
        pings_during >= 5,
        "only {pings_during} watchdog pings while housekeeping ran: {log:?}"
    );
}
