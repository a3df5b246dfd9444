//! The end-to-end harness of the agent's tests and benchmarks (with the `failpoints` feature
//! only). The agent runs in process (`run` on a task) or as the real `berth-agent` binary (for
//! SIGKILL tests, [`Options::binary`]), against an in-process localnet (real signatures,
//! NFTokens, offers, memos through berth-mb-xrpl) and the real Docker engine (the provisioner's
//! probe image standing in for hotpocket). The tenant's side is driven with berth-mb-xrpl
//! directly. Needs Docker: with BERTH_REQUIRE_DOCKER=1 an unreachable engine fails the tests.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_localnet::{Config, Localnet};
use berth_mb_xrpl::events::{decode, MarketEvent};
use berth_mb_xrpl::history::account_history;
use berth_mb_xrpl::{Client, ClientConfig, SubmitConfig, Submitter};
use berth_provisioner::{probe, ContextDir, DockerProvisioner, ImageSpec, Provisioner};
use berth_schemas::config::HostConfig;
use berth_schemas::key::PublicKey;
use berth_schemas::memo::Message;
use berth_schemas::message::{Acquire, AcquireRequest, Sealed};
use berth_xrpl_core::{KeyPair, KeyType};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::machine::MachineSettings;
use crate::run::{provisioner_config, run, RunSettings};
use crate::setup::HostKeys;
use crate::store::{SlotState, Store};

pub const XRP: u64 = 1_000_000;
pub const PRICE: u64 = XRP;
pub const CONTRACT: &str = "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10";

pub struct World {
    pub net: Option<Localnet>,
    close_interval: Duration,
    /// The ledger's data directory, removed when the world is dropped.
    #[allow(dead_code)]
    ledger_dir: tempfile::TempDir,
    pub client: Client,
    pub dir: tempfile::TempDir,
    pub config: HostConfig,
    pub host: String,
    pub host_message_key: PublicKey,
    /// The host account's key, for tests that act behind the agent's back.
    pub host_key: KeyPair,
    pub provisioner: Arc<DockerProvisioner>,
    shutdown: CancellationToken,
    pub agent: Agent,
}

/// How the agent of a [`World`] runs.
pub enum Agent {
    InProcess(tokio::task::JoinHandle<()>),
    /// The real binary, started and killed by the test.
    Binary {
        bin: PathBuf,
        config_path: PathBuf,
        namespace: String,
        child: Option<std::process::Child>,
        log: PathBuf,
    },
}

/// What differs between worlds.
pub struct Options {
    pub moment_secs: u32,
    pub grace_secs: u32,
    /// Run the real `berth-agent` binary at this path (started with [`World::spawn_binary`]);
    /// a test or bench has it as `env!("CARGO_BIN_EXE_berth-agent")`.
    pub binary: Option<PathBuf>,
    /// Time between ledger closes.
    pub close_interval: Duration,
    /// Run the real instance image `berth-hotpocket:latest` (built by hotpocket/image/build.sh
    /// when missing) instead of the probe.
    pub hotpocket: bool,
    /// `agent.pool`: instances kept started for the next purchases.
    pub pool: u32,
    /// `agent.metrics`: the Prometheus endpoint's address.
    pub metrics: Option<std::net::SocketAddr>,
    /// `resources.disk_mb`, shared by the slots (default 64 MB per slot).
    pub disk_mb: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            moment_secs: 3600,
            grace_secs: 5,
            pool: 0,
            metrics: None,
            disk_mb: None,
            binary: None,
            close_interval: Duration::from_millis(300),
            hotpocket: false,
        }
    }
}

fn write_key(path: &std::path::Path, seed: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(file, "{seed}").unwrap();
}

pub async fn fund(client: &Client, drops: u64) -> KeyPair {
    let key = KeyPair::generate(KeyType::Ed25519);
    client
        .request(
            "wallet_fund",
            json!({"destination": key.address(), "amount": drops.to_string()}),
        )
        .await
        .unwrap();
    for _ in 0..100 {
        let info = client
            .request(
                "account_info",
                json!({"account": key.address(), "ledger_index": "validated"}),
            )
            .await;
        if info.is_ok() {
            return key;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("account {} never funded", key.address());
}

/// The provisioner on a namespace of this test, or None to skip without Docker.
async fn provisioner(config: &HostConfig, tag: &str) -> Option<Arc<DockerProvisioner>> {
    let mut pc = provisioner_config(config);
    pc.namespace = format!("bat-{}-{tag}", std::process::id());
    pc.host_ip = [127, 0, 0, 1].into();
    match DockerProvisioner::connect(pc).await {
        Ok(p) => {
            let dir =
                std::env::temp_dir().join(format!("berth-agent-probe-{}", std::process::id()));
            p.ensure_image(&probe::image(dir)).await.unwrap();
            p.reconcile(&[]).await.unwrap();
            Some(Arc::new(p))
        }
        Err(e) => {
            berth_test_support::docker_unreachable(e);
            None
        }
    }
}

impl World {
    pub async fn start(tag: &str, slots: u32, base_port: u16) -> Option<World> {
        Self::start_with(tag, slots, base_port, Options::default()).await
    }

    pub async fn start_with(
        tag: &str,
        slots: u32,
        base_port: u16,
        options: Options,
    ) -> Option<World> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let ledger_dir = tempfile::tempdir().unwrap();
        let net = Localnet::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            close_interval: options.close_interval,
            data_dir: Some(ledger_dir.path().to_owned()),
            ..Config::default()
        })
        .await
        .unwrap();
        let client = Client::connect(ClientConfig::new([net.url()]))
            .await
            .unwrap();
        let host_key = fund(&client, 1000 * XRP).await;
        let registry = fund(&client, 100 * XRP).await;
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
slots = {slots}
price_drops = "{PRICE}"
moment_secs = {moment}
grace_secs = {grace}
[resources]
cpu_millicores = {cpu}
memory_mb = {memory}
disk_mb = {disk}
[ports]
user = "{u0}-{u1}"
peer = "{p0}-{p1}"
[housekeeping]
schedule = "*/2 * * * * *"
[agent]
pool = {pool}
{metrics}
"#,
            pool = options.pool,
            metrics = options
                .metrics
                .map(|a| format!("metrics = \"{a}\""))
                .unwrap_or_default(),
            url = net.url(),
            registry = registry.address(),
            data = dir.path().display(),
            moment = options.moment_secs,
            grace = options.grace_secs,
            cpu = 500 * slots,
            memory = 64 * slots,
            disk = options.disk_mb.unwrap_or(64 * slots),
            u0 = base_port,
            u1 = base_port + slots as u16 + 19,
            p0 = base_port + 5000,
            p1 = base_port + 5000 + slots as u16 + 19,
        ))
        .unwrap();
        let mut config = config;
        let provisioner = provisioner(&config, tag).await?;
        if options.binary.is_some() {
            config.runtime.image = hotpocket_shaped_probe(&provisioner, dir.path()).await;
        }
        if options.hotpocket {
            berth_test_support::ensure_hotpocket_image();
            config.runtime.image = berth_test_support::HOTPOCKET_IMAGE.to_owned();
        }
        let customize: fn(berth_provisioner::InstanceSpec) -> berth_provisioner::InstanceSpec =
            if options.hotpocket {
                |spec| spec
            } else {
                probe::instance
            };
        let seed = host_key.seed().unwrap();
        let keys = HostKeys::from_seed(&seed).unwrap();
        let host = keys.address();
        let host_message_key = keys.message_public().unwrap();
        let shutdown = CancellationToken::new();
        let agent = if let Some(bin) = options.binary {
            let key_file = dir.path().join("host.key");
            write_key(&key_file, &seed);
            let mut text = config.to_toml();
            text = text.replace(
                "[host]\n",
                &format!("[host]\nkey_file = {:?}\n", key_file.display().to_string()),
            );
            let config_path = dir.path().join("berth-agent.toml");
            std::fs::write(&config_path, text).unwrap();
            Agent::Binary {
                bin,
                config_path,
                namespace: provisioner.config().namespace.clone(),
                child: None,
                log: dir.path().join("agent.log"),
            }
        } else {
            Agent::InProcess(tokio::spawn({
                let (config, provisioner, shutdown) =
                    (config.clone(), provisioner.clone(), shutdown.clone());
                async move {
                    let settings = RunSettings {
                        machine: MachineSettings {
                            stall_secs: 60,
                            customize,
                            parallel_jobs: 64,
                        },
                        notify: false,
                        outbox_idle: Duration::from_millis(50),
                    };
                    run(config, keys, provisioner, settings, shutdown)
                        .await
                        .unwrap();
                }
            }))
        };
        Some(World {
            close_interval: options.close_interval,
            net: Some(net),
            ledger_dir,
            client,
            dir,
            config,
            host,
            host_message_key,
            host_key: KeyPair::from_seed(&seed).unwrap(),
            provisioner,
            shutdown,
            agent,
        })
    }

    pub fn store(&self) -> Option<Store> {
        Store::open_read_only(&crate::database_path(&self.config)).ok()
    }

    /// Waits until `slot` has a live sell offer; returns (token, offer).
    pub async fn offered(&self, slot: u32, generation: u32) -> (String, String) {
        for _ in 0..300 {
            if let Some(s) = self
                .store()
                .and_then(|store| store.read().slot(slot).ok().flatten())
            {
                if let (SlotState::Offered, Some(token), Some(offer)) =
                    (s.state, s.token_id, s.offer_id)
                {
                    if s.generation >= generation {
                        return (token.to_string(), offer.to_string());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let errors = self
            .store()
            .map(|s| s.read().recent_errors(10).unwrap())
            .unwrap_or_default();
        panic!("slot {slot} generation {generation} was never offered; errors: {errors:?}");
    }

    pub async fn submit(&self, key: &KeyPair, tx: Value) -> String {
        let (hash, result) = self.submit_result(key, tx).await;
        assert_eq!(result, "tesSUCCESS", "{hash}");
        hash
    }

    /// The answers the host sent to `tenant` for `request`, waiting for at least one.
    pub async fn answers(&self, tenant: &str, request: &str) -> Vec<(u64, Message)> {
        for _ in 0..300 {
            let found = host_answers(&self.client, &self.host, tenant)
                .await
                .remove(request)
                .unwrap_or_default();
            if !found.is_empty() {
                // One more ledger: a second answer would show up by now.
                tokio::time::sleep(Duration::from_millis(700)).await;
                let again = account_history(&self.client, tenant, 1).await.unwrap();
                let count = again
                    .transactions
                    .iter()
                    .filter(|tx| matches!(decode(tx, tenant), Some(MarketEvent::Answer { request: r, .. }) if r.to_string() == request))
                    .count();
                assert_eq!(count, found.len(), "answers kept coming for {request}");
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no answer to {request}");
    }

    pub fn acquire_memo(&self, tenant: &SigningKey) -> Value {
        acquire_memo_to(&self.host_message_key, tenant)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        match &mut self.agent {
            Agent::InProcess(handle) => {
                tokio::time::timeout(Duration::from_secs(30), handle)
                    .await
                    .unwrap()
                    .unwrap();
            }
            Agent::Binary { .. } => self.terminate_binary(),
        }
        self.provisioner.reconcile(&[]).await.unwrap();
        self.client.shutdown().await;
        if let Some(net) = self.net.take() {
            net.shutdown().await;
        }
        drop(self.dir);
    }
}

/// The memos of a purchase asking `host` (its message key) for an instance of [`CONTRACT`]
/// owned by `tenant`, answers sealed to `tenant`.
pub fn acquire_memo_to(host: &PublicKey, tenant: &SigningKey) -> Value {
    let public = PublicKey::from_verifying_key(&tenant.verifying_key()).unwrap();
    let request = AcquireRequest {
        owner_key: public,
        contract_id: CONTRACT.parse().unwrap(),
        reply_key: Some(public),
        config: None,
    };
    let sealed = Sealed::seal(host, &request).unwrap();
    memo_json(&Message::Acquire(Acquire { sealed }))
}

/// The answers `host` sent to `tenant` so far, by the request they name (hash text), each as
/// (drops, message), in ledger order.
pub async fn host_answers(
    client: &Client,
    host: &str,
    tenant: &str,
) -> std::collections::BTreeMap<String, Vec<(u64, Message)>> {
    let history = account_history(client, tenant, 1).await.unwrap();
    let mut answers = std::collections::BTreeMap::<_, Vec<_>>::new();
    for tx in &history.transactions {
        if let Some(MarketEvent::Answer {
            from,
            request,
            message,
            amount_drops,
            ..
        }) = decode(tx, tenant)
        {
            if from == host {
                answers
                    .entry(request.to_string())
                    .or_default()
                    .push((amount_drops, message));
            }
        }
    }
    answers
}

/// Signs `tx` for `key`, submits it and waits for validation; returns hash and result
/// (which may be a `tec`).
pub async fn submit_tx(client: &Client, key: &KeyPair, tx: Value) -> (String, String) {
    let submitter = Submitter::new(
        client.clone(),
        KeyPair::from_seed(&key.seed().unwrap()).unwrap(),
        SubmitConfig::default(),
    )
    .unwrap();
    let signed = submitter.prepare(tx).await.unwrap();
    let validated = submitter.submit_and_wait(&signed).await.unwrap();
    (signed.hash, validated.result)
}

pub fn memo_json(message: &Message) -> Value {
    let hex = message.to_memo().unwrap().to_hex();
    json!([{"Memo": {"MemoType": hex.memo_type, "MemoFormat": hex.memo_format, "MemoData": hex.memo_data}}])
}

pub async fn greeting(port: u16) -> String {
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut text = String::new();
            if stream.read_to_string(&mut text).await.is_ok() && !text.is_empty() {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("port {port} never greeted");
}

pub async fn balance(client: &Client, account: &str) -> u64 {
    let info = client
        .request(
            "account_info",
            json!({"account": account, "ledger_index": "validated"}),
        )
        .await
        .unwrap();
    info["account_data"]["Balance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

impl World {
    /// Starts the binary (with `BERTH_AGENT_FAILPOINT` set when given).
    pub fn spawn_binary(&mut self, failpoint: Option<&str>) {
        let Agent::Binary {
            bin,
            config_path,
            namespace,
            child,
            log,
        } = &mut self.agent
        else {
            panic!("not a binary world");
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut command = std::process::Command::new(bin);
        command
            .args(["--config", &config_path.display().to_string(), "run"])
            .env("BERTH_DOCKER_NAMESPACE", namespace.as_str())
            .env("RUST_LOG", "info,berth_localnet=warn")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        match failpoint {
            Some(point) => command.env("BERTH_AGENT_FAILPOINT", point),
            None => command.env_remove("BERTH_AGENT_FAILPOINT"),
        };
        *child = Some(command.spawn().unwrap());
    }

    /// Waits for the binary to die of SIGKILL (at its failpoint).
    pub async fn wait_killed(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let Agent::Binary { child, log, .. } = &mut self.agent else {
            panic!("not a binary world");
        };
        let mut process = child.take().unwrap();
        for _ in 0..300 {
            if let Some(status) = process.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "agent exited with {status}; log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = process.kill();
        panic!(
            "agent never reached its failpoint; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Stops the ledger server for `down`, then starts it again on the same address with the
    /// same chain: every WebSocket connection drops and must reconnect.
    pub async fn drop_ledger(&mut self, down: Duration) {
        let net = self.net.take().unwrap();
        let addr = net.addr();
        net.shutdown().await;
        tokio::time::sleep(down).await;
        self.net = Some(
            Localnet::start(Config {
                listen: addr,
                close_interval: self.close_interval,
                data_dir: Some(self.ledger_dir.path().to_owned()),
                ..Config::default()
            })
            .await
            .unwrap(),
        );
    }

    /// Submits and waits for validation; returns hash and result (which may be a `tec`).
    pub async fn submit_result(&self, key: &KeyPair, tx: Value) -> (String, String) {
        submit_tx(&self.client, key, tx).await
    }

    /// Runs a `berth-agent` command on this world's config; returns its stdout.
    pub fn command(&self, args: &[&str]) -> Vec<u8> {
        let Agent::Binary {
            bin, config_path, ..
        } = &self.agent
        else {
            panic!("not a binary world");
        };
        let out = std::process::Command::new(bin)
            .arg("--config")
            .arg(config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// What the binary logged so far (all its runs), the last `lines` lines.
    pub fn binary_log(&self, lines: usize) -> String {
        let Agent::Binary { log, .. } = &self.agent else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The running binary's process id.
    pub fn binary_pid(&self) -> Option<u32> {
        match &self.agent {
            Agent::Binary { child, .. } => child.as_ref().map(std::process::Child::id),
            Agent::InProcess(_) => None,
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate_binary(&mut self) {
        let Agent::Binary { child, log, .. } = &mut self.agent else {
            return;
        };
        if let Some(mut process) = child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            let status = process.wait().unwrap();
            assert!(
                status.success(),
                "agent exited with {status}; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// An image laid out like the hotpocket image (`/hotpocket`, `/state` owned by 10001) whose
/// `/hotpocket` is the probe: what the unmodified binary can run.
async fn hotpocket_shaped_probe(provisioner: &DockerProvisioner, dir: &std::path::Path) -> String {
    let context = dir.join("instance-image");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {} AS probe\nFROM scratch\nCOPY --from=probe /probe /hotpocket\n\
             COPY --from=probe --chown=10001:10001 /state /state\nUSER 10001:10001\n",
            probe::tag()
        ),
    )
    .unwrap();
    let tag = format!(
        "berth-agent-test-instance:{}",
        probe::tag().replace("berth-probe:", "")
    );
    provisioner
        .ensure_image(&ImageSpec {
            tag: tag.clone(),
            context: Arc::new(ContextDir(context)),
        })
        .await
        .unwrap();
    tag
}

/// A tenant that bought a lease: its account, its message key, the purchase hash.
pub struct Buyer {
    pub account: KeyPair,
    pub key: SigningKey,
    pub purchase: String,
}

impl World {
    /// A new funded tenant buys `offer` with an acquire request sealed to the host; the
    /// tenant's ed25519 key is made of `seed`.
    pub async fn buy(&self, offer: &str, seed: u8) -> Buyer {
        let account = fund(&self.client, 100 * XRP).await;
        let key = SigningKey::from_bytes(&[seed; 32]);
        let purchase = self
            .submit(
                &account,
                json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer,
                       "Memos": self.acquire_memo(&key)}),
            )
            .await;
        Buyer {
            account,
            key,
            purchase,
        }
    }
}
