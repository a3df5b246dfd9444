//! `berth sandbox`: the whole marketplace on one machine, in this process.
//!
//! [`Sandbox::start`] checks the Docker engine and the instance image, starts a localnet
//! ledger, funds a registry, a host and a tenant, writes the tenant's home (keys and
//! settings), runs the host agent on a task of its own and returns once the host offers every
//! slot on the ledger. [`Sandbox::shutdown`] stops the agent, removes every container of the
//! sandbox's Docker namespace, stops the ledger and deletes the directory (unless asked to
//! keep it). A start that fails half-way undoes what it started.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent::run::{provisioner_config, run, RunError, RunSettings};
use berth_agent::setup::HostKeys;
use berth_localnet::{Config as LedgerConfig, Localnet, StartError};
use berth_log::chain;
use berth_mb_xrpl::{Client, ClientConfig, ClientError};
use berth_provisioner::{
    BuildContext, DockerProvisioner, ImageSpec, ProvisionError, Provisioner, ReconcileAction,
};
use berth_schemas::config::{ConfigError, HostConfig, PortRange};
use berth_xrpl_core::{KeyPair, KeyType};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use berth_tenant::hosts;
use berth_tenant::keys::{self, Keys, KeysError};
use berth_tenant::settings::{Settings, SettingsError};

const XRP: u64 = 1_000_000;
/// What the registry account is funded with.
const REGISTRY_DROPS: u64 = 100 * XRP;
/// How long the Docker engine may take to answer the first call.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent may take to stop before its task is aborted.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Where bollard looks when `DOCKER_HOST` is not set.
const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";

/// Everything `berth sandbox` can be told; [`Default`] is what the command does without flags.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The sandbox's directory (created; must be empty if it exists). `None`: a new temporary
    /// directory, deleted at shutdown unless `keep`.
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory at shutdown.
    pub keep: bool,
    /// The tenant's home; `None`: `<dir>/tenant`. Keys already there are used (and funded).
    pub tenant_home: Option<PathBuf>,
    /// The instance image; it must exist in the engine.
    pub image: String,
    /// The Node.js and glibc image the hosts offer to purchases asking for it
    /// (`runtime.node_image`); it must exist in the engine. `None`: not offered.
    pub node_image: Option<String>,
    /// Where the ledger listens (WebSocket and JSON-RPC on one port).
    pub ledger_listen: SocketAddr,
    /// Time between ledger closes.
    pub close_interval: Duration,
    pub slots: u32,
    /// Price of one moment of one slot, in drops.
    pub price_drops: u64,
    pub moment_secs: u32,
    /// Seconds an expired lease's instance is kept before it is destroyed.
    pub grace_secs: u32,
    pub cpu_millicores_per_slot: u32,
    pub memory_mb_per_slot: u32,
    pub disk_mb_per_slot: u32,
    /// Host ports of the instances' user (client) ports.
    pub user_ports: PortRange,
    /// Host ports of the instances' peer ports.
    pub peer_ports: PortRange,
    /// The agent's housekeeping (reconcile, expiry) runs every this many seconds (1 to 59).
    pub housekeeping_secs: u32,
    /// What the tenant's account is funded with.
    pub tenant_drops: u64,
    /// What the host's account is funded with.
    pub host_drops: u64,
    /// Docker namespace (container name prefix and label); `None`: `berth-sandbox-<pid>`.
    pub namespace: Option<String>,
    /// How long to wait for the host's offers once the agent runs.
    pub ready_timeout: Duration,
    /// Install a global tracing subscriber writing to `<dir>/agent.log` (`RUST_LOG`, default
    /// `info`). Skipped when the process already has one.
    pub log_to_file: bool,
    /// Host agents to run (1 to [`MAX_HOSTS`]), each with its own account, slots, ports and
    /// Docker namespace. With more than one, each also gets its own address on this machine
    /// where it can (see [`SandboxInfo::own_addresses`]), so that peer traffic between
    /// hosts crosses addresses and a test can cut one host off.
    pub hosts: u32,
}

/// The most host agents one sandbox runs.
pub const MAX_HOSTS: u32 = 8;

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            dir: None,
            keep: false,
            tenant_home: None,
            image: berth_provisioner::spec::HOTPOCKET_IMAGE.to_owned(),
            node_image: None,
            ledger_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            close_interval: Duration::from_millis(1000),
            slots: 3,
            price_drops: XRP,
            moment_secs: 3600,
            grace_secs: 60,
            cpu_millicores_per_slot: 500,
            memory_mb_per_slot: 256,
            disk_mb_per_slot: 1024,
            user_ports: PortRange {
                first: 26201,
                last: 26299,
            },
            peer_ports: PortRange {
                first: 22861,
                last: 22959,
            },
            housekeeping_secs: 5,
            tenant_drops: 1000 * XRP,
            host_drops: 10_000 * XRP,
            namespace: None,
            ready_timeout: Duration::from_secs(120),
            log_to_file: true,
            hosts: 1,
        }
    }
}

/// What runs, for the ready message (`--json` prints it as one line).
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    /// Always true: a sandbox exists only once its offers are live.
    pub ready: bool,
    pub dir: PathBuf,
    /// The ledger's WebSocket URL.
    pub ledger: String,
    /// The ledger's JSON-RPC URL.
    pub ledger_http: String,
    pub registry: String,
    pub host: String,
    pub tenant: String,
    pub tenant_home: PathBuf,
    /// The Docker namespace of the instances (label `berth.namespace`).
    pub namespace: String,
    /// The agent's and the ledger's log.
    pub log: PathBuf,
    pub price_drops: u64,
    pub moment_secs: u32,
    pub slots: u32,
    /// The instances' user ports, `first-last`.
    pub user_ports: String,
    pub tenant_drops: u64,
    /// Every host agent (the first is `host`).
    pub hosts: Vec<SandboxHost>,
    /// Each host has an address of its own (added to the loopback interface as
    /// `10.213.x.y/32`, removed at shutdown). False with one host (127.0.0.1), or when the
    /// addresses could not be added (not root): then the hosts share the Docker bridge's
    /// gateway address, which containers reach too.
    pub own_addresses: bool,
}

/// One host agent of the sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxHost {
    pub account: String,
    /// Where its instances' ports are published (and its domain).
    pub address: IpAddr,
    /// Its Docker namespace (label `berth.namespace`).
    pub namespace: String,
    /// Its instances' user and peer ports, `first-last`.
    pub user_ports: String,
    pub peer_ports: String,
    pub data_dir: PathBuf,
}

/// Why the sandbox could not start or stop; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no Docker engine at {endpoint}: {problem}; the sandbox runs instances in Docker: install \
         Docker Engine, start it (`sudo systemctl start docker`) and add your user to the docker \
         group (`sudo usermod -aG docker $USER`, then log in again), or set DOCKER_HOST to a \
         reachable engine"
    )]
    NoDocker { endpoint: String, problem: String },
    #[error(
        "the instance image {image} is not in the Docker engine; build it from a source checkout \
         with `hotpocket/image/build.sh` (the node image with `hotpocket/image/build-node.sh`; \
         scripts/sandbox.sh builds the first), or pass --image"
    )]
    ImageMissing { image: String },
    #[error("docker engine: {step}")]
    Docker {
        step: &'static str,
        #[source]
        source: Box<ProvisionError>,
    },
    #[error("the sandbox options do not make a valid host")]
    Options(#[source] ConfigError),
    #[error("sandbox directory {path} exists and is not empty; remove it or choose another")]
    DirExists { path: PathBuf },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the local ledger")]
    Ledger(#[source] StartError),
    #[error("local ledger at {url}: {step}")]
    Client {
        url: String,
        step: &'static str,
        #[source]
        source: Box<ClientError>,
    },
    #[error("funding {account} on the local ledger: {problem}")]
    Fund { account: String, problem: String },
    #[error("tenant keys in {home}")]
    Keys {
        home: PathBuf,
        #[source]
        source: KeysError,
    },
    #[error("the generated host account {account} has no usable seed")]
    HostKeys { account: String },
    #[error("setting the tenant's MessageKey on {account}: {problem}")]
    MessageKey { account: String, problem: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the host agent stopped: {problem}; its log is {log}")]
    AgentStopped { problem: String, log: PathBuf },
    #[error(
        "the host offered {got} of {want} slots after {secs} s{last_error}; the sandbox \
         directory is kept, see the log {log}"
    )]
    OffersTimeout {
        got: usize,
        want: usize,
        secs: u64,
        last_error: String,
        log: PathBuf,
    },
}

/// A running sandbox. Call [`Sandbox::shutdown`]: dropping it leaves the agent's containers.
pub struct Sandbox {
    pub info: SandboxInfo,
    parts: Parts,
}

impl Sandbox {
    /// Starts everything and returns once the host has `opts.slots` live offers. `progress`
    /// receives one line per step and while waiting. On an error, what was started is stopped
    /// again (the directory is kept when the agent's log may explain the error). Run the
    /// future to its end: dropping it half-way skips that clean-up.
    pub async fn start(
        opts: SandboxOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Sandbox, SandboxError> {
        let mut parts = Parts {
            keep: opts.keep,
            ..Parts::default()
        };
        match start(&opts, &mut parts, progress).await {
            Ok(info) => Ok(Sandbox { info, parts }),
            Err(error) => {
                let keep = matches!(
                    error,
                    SandboxError::AgentStopped { .. } | SandboxError::OffersTimeout { .. }
                );
                if let Err(cleanup) = parts.teardown(keep).await {
                    tracing::warn!(error = %chain(&cleanup), "cleaning up a failed sandbox start");
                }
                Err(error)
            }
        }
    }

    /// Resolves when the agent's task ends on its own (it should not before shutdown), with
    /// the reason. Cancel-safe: use it in `select!` next to a signal.
    pub async fn agent_stopped(&mut self) -> SandboxError {
        let log = self.info.log.clone();
        loop {
            if let Some(agent) = self
                .parts
                .agents
                .iter_mut()
                .find(|a| a.handle.as_ref().is_some_and(JoinHandle::is_finished))
            {
                return agent.stopped(log).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the agent, removes every container of the sandbox's namespace, stops the ledger
    /// and deletes the directory (unless `--dir` or `keep`). Returns how many instances were
    /// removed.
    pub async fn shutdown(mut self) -> Result<usize, SandboxError> {
        let keep = self.parts.keep;
        self.parts.teardown(keep).await
    }
}

/// What a sandbox has started so far; [`Parts::teardown`] stops it in reverse.
#[derive(Default)]
struct Parts {
    keep: bool,
    dir: Option<Workdir>,
    provisioners: Vec<Arc<DockerProvisioner>>,
    /// Addresses added to the loopback interface, removed last.
    aliases: Vec<IpAddr>,
    net: Option<Localnet>,
    client: Option<Client>,
    agents: Vec<AgentTask>,
}

impl Parts {
    async fn teardown(&mut self, keep_dir: bool) -> Result<usize, SandboxError> {
        for agent in self.agents.drain(..) {
            agent.stop().await;
        }
        let mut removed = Ok(0);
        for provisioner in &self.provisioners {
            match (remove_all(provisioner).await, &mut removed) {
                (Ok(n), Ok(total)) => *total += n,
                (Err(e), Ok(_)) => removed = Err(e),
                (_, Err(_)) => {}
            }
        }
        for alias in self.aliases.drain(..) {
            if let Err(problem) = alias_command("del", alias) {
                tracing::warn!(%alias, problem, "could not remove a sandbox address");
            }
        }
        if let Some(client) = self.client.take() {
            client.shutdown().await;
        }
        if let Some(net) = self.net.take() {
            net.shutdown().await;
        }
        if let Some(dir) = self.dir.take() {
            dir.finish(keep_dir);
        }
        removed
    }
}

/// Removes every container (and state volume) of the provisioner's namespace.
async fn remove_all(provisioner: &DockerProvisioner) -> Result<usize, SandboxError> {
    let actions = provisioner
        .reconcile(&[])
        .await
        .map_err(|source| SandboxError::Docker {
            step: "removing the sandbox's instances",
            source: Box::new(source),
        })?;
    for action in &actions {
        if let ReconcileAction::Failed { instance, error } = action {
            tracing::warn!(instance, error, "could not remove a sandbox instance");
        }
    }
    Ok(actions
        .iter()
        .filter(|a| matches!(a, ReconcileAction::RemovedOrphan { .. }))
        .count())
}

/// The sandbox directory: a temporary one (deleted unless kept) or one the user named (kept).
enum Workdir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl Workdir {
    fn create(dir: Option<&Path>) -> Result<Workdir, SandboxError> {
        let Some(path) = dir else {
            return tempfile::Builder::new()
                .prefix("berth-sandbox-")
                .tempdir()
                .map(Workdir::Temp)
                .map_err(|source| SandboxError::Io {
                    step: "creating a temporary directory in",
                    path: std::env::temp_dir(),
                    source,
                });
        };
        let io = |step| {
            move |source| SandboxError::Io {
                step,
                path: path.to_owned(),
                source,
            }
        };
        match std::fs::read_dir(path) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(SandboxError::DirExists {
                        path: path.to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(io("creating"))?;
            }
            Err(e) => return Err(io("reading")(e)),
        }
        let path = std::fs::canonicalize(path).map_err(io("resolving"))?;
        Ok(Workdir::Given(path))
    }

    fn path(&self) -> &Path {
        match self {
            Workdir::Temp(dir) => dir.path(),
            Workdir::Given(path) => path,
        }
    }

    fn finish(self, keep: bool) {
        if let Workdir::Temp(dir) = self {
            if keep {
                let _ = dir.keep();
            } else if let Err(e) = dir.close() {
                tracing::warn!(error = %chain(&e), "could not delete the sandbox directory");
            }
        }
    }
}

/// The agent's task and the token that stops it.
struct AgentTask {
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), RunError>>>,
}

impl AgentTask {
    async fn stopped(&mut self, log: PathBuf) -> SandboxError {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let result = handle.await;
        self.handle = None;
        let problem = match result {
            Ok(Ok(())) => "it ended without being asked to".to_owned(),
            Ok(Err(e)) => chain(&e),
            Err(join) => format!("its task failed: {}", chain(&join)),
        };
        SandboxError::AgentStopped { problem, log }
    }

    async fn stop(mut self) {
        self.token.cancel();
        let Some(mut handle) = self.handle.take() else {
            return;
        };
        match tokio::time::timeout(AGENT_STOP_TIMEOUT, &mut handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %chain(&e), "the host agent stopped on an error")
            }
            Ok(Err(join)) => {
                tracing::warn!(error = %chain(&join), "the host agent's task failed")
            }
            Err(_) => {
                tracing::warn!(
                    "the host agent did not stop within {AGENT_STOP_TIMEOUT:?}; aborting it"
                );
                handle.abort();
            }
        }
    }
}

/// The build context of an image that must not be built here: only asked for when the image
/// is missing.
#[derive(Debug)]
struct NoBuild;

impl BuildContext for NoBuild {
    fn prepare(&self) -> std::io::Result<PathBuf> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the sandbox does not build images",
        ))
    }
}

/// The host's config. `ledger` and `registry` may be placeholders (checking the options
/// before anything runs).
fn host_config(
    opts: &SandboxOptions,
    ledger: &str,
    registry: &str,
    data_dir: &Path,
    host: &HostPlan,
) -> Result<HostConfig, ConfigError> {
    let slots = opts.slots;
    let mut config = HostConfig::from_toml(&format!(
        r#"
[ledger]
servers = ["{ledger}"]
registry = "{registry}"
[host]
domain = "{domain}"
country = "DE"
description = "berth sandbox"
[lease]
slots = {slots}
price_drops = "{price}"
moment_secs = {moment}
grace_secs = {grace}
[resources]
cpu_millicores = {cpu}
memory_mb = {memory}
disk_mb = {disk}
[ports]
user = "{user}"
peer = "{peer}"
[housekeeping]
schedule = "*/{every} * * * * *"
[agent]
metrics = "127.0.0.1:0"
"#,
        price = opts.price_drops,
        moment = opts.moment_secs,
        grace = opts.grace_secs,
        cpu = u64::from(opts.cpu_millicores_per_slot) * u64::from(slots),
        memory = u64::from(opts.memory_mb_per_slot) * u64::from(slots),
        disk = u64::from(opts.disk_mb_per_slot) * u64::from(slots),
        user = host.user_ports,
        peer = host.peer_ports,
        domain = host.address,
        every = opts.housekeeping_secs.clamp(1, 59),
    ))?;
    config.host.data_dir = data_dir.to_owned();
    config.runtime.image = opts.image.clone();
    config.runtime.node_image = opts.node_image.clone();
    config.validate()?;
    Ok(config)
}

/// Where one host of the sandbox lives.
#[derive(Debug, Clone)]
struct HostPlan {
    address: IpAddr,
    user_ports: PortRange,
    peer_ports: PortRange,
}

/// Host `index` of `hosts`: its share of the port ranges, at `address`.
fn host_plan(opts: &SandboxOptions, index: u32, address: IpAddr) -> HostPlan {
    let share = |range: PortRange| {
        let hosts = opts.hosts.max(1);
        let len = (u32::from(range.last) - u32::from(range.first) + 1) / hosts;
        let first = u32::from(range.first) + index * len;
        let last = first + len.max(1) - 1;
        PortRange {
            first: u16::try_from(first).unwrap_or(range.last),
            last: u16::try_from(last).unwrap_or(range.last),
        }
    };
    HostPlan {
        address,
        user_ports: share(opts.user_ports),
        peer_ports: share(opts.peer_ports),
    }
}

/// `ip addr add|del <ip>/32 dev lo`; the error is `ip`'s own message.
fn alias_command(op: &str, ip: IpAddr) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(["addr", op, &format!("{ip}/32"), "dev", "lo"])
        .output()
        .map_err(|e| format!("running `ip`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// One address of its own per host, `10.213.<b>.<1..>`, on the loopback interface;
/// `None` when they cannot be added (not root, no `ip`), after removing any it added.
fn add_aliases(count: u32, parts: &mut Parts) -> Option<Vec<IpAddr>> {
    let pid = std::process::id();
    for attempt in 0..8u32 {
        let block = u8::try_from((pid.wrapping_add(attempt * 37)) % 250).unwrap_or(0);
        let mut added = Vec::new();
        let mut failed = None;
        for i in 0..count {
            let ip = IpAddr::V4(Ipv4Addr::new(
                10,
                213,
                block,
                u8::try_from(i + 1).unwrap_or(1),
            ));
            match alias_command("add", ip) {
                Ok(()) => added.push(ip),
                Err(problem) => {
                    failed = Some(problem);
                    break;
                }
            }
        }
        match failed {
            None => {
                parts.aliases.extend(added.iter().copied());
                return Some(added);
            }
            Some(problem) => {
                for ip in added {
                    let _ = alias_command("del", ip);
                }
                // "File exists": another sandbox uses the block; anything else will not pass.
                if !problem.contains("exists") {
                    tracing::info!(
                        problem,
                        "hosts share one address: cannot add addresses of their own"
                    );
                    return None;
                }
            }
        }
    }
    None
}

fn install_log(path: &Path) -> Result<(), SandboxError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SandboxError::Io {
            step: "opening the log",
            path: path.to_owned(),
            source,
        })?;
    berth_log::init_file("info", file);
    Ok(())
}

async fn start(
    opts: &SandboxOptions,
    parts: &mut Parts,
    progress: &mut dyn FnMut(&str),
) -> Result<SandboxInfo, SandboxError> {
    let count = opts.hosts.clamp(1, MAX_HOSTS);
    // 1. The options, checked as the host configs they make, before anything runs.
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for index in 0..count {
        host_config(
            opts,
            "ws://127.0.0.1:1/",
            berth_localnet::GENESIS_ADDRESS,
            Path::new("/"),
            &host_plan(opts, index, localhost),
        )
        .map_err(SandboxError::Options)?;
    }

    // 2. The Docker engine and the image.
    progress("checking the Docker engine…");
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| format!("berth-sandbox-{}", std::process::id()));
    let first = connect_provisioner(opts, &namespace, localhost).await?;
    for tag in std::iter::once(&opts.image).chain(opts.node_image.as_ref()) {
        let image = ImageSpec {
            tag: tag.clone(),
            context: Arc::new(NoBuild),
        };
        match first.ensure_image(&image).await {
            Ok(_) => {}
            Err(ProvisionError::ImageContext { .. }) => {
                return Err(SandboxError::ImageMissing { image: tag.clone() })
            }
            Err(source) => {
                return Err(SandboxError::Docker {
                    step: "inspecting the instance image",
                    source: Box::new(source),
                })
            }
        }
    }

    // 3. The hosts' addresses and provisioners: one host at 127.0.0.1; several each at an
    //    address of its own, or all at the Docker bridge's gateway.
    let (addresses, own_addresses) = if count == 1 {
        (vec![localhost], false)
    } else {
        match add_aliases(count, parts) {
            Some(own) => {
                progress(&format!(
                    "{count} hosts at addresses of their own: {}",
                    own.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                (own, true)
            }
            None => {
                let gateway = first
                    .bridge_gateway()
                    .await
                    .map_err(|source| SandboxError::Docker {
                        step: "inspecting the bridge network",
                        source: Box::new(source),
                    })?
                    .unwrap_or(localhost);
                progress(&format!(
                    "{count} hosts share the address {gateway} (addresses of their own need root)"
                ));
                (vec![gateway; count as usize], false)
            }
        }
    };
    let plans: Vec<HostPlan> = (0..count)
        .map(|i| host_plan(opts, i, addresses[i as usize]))
        .collect();
    let namespaces: Vec<String> = (0..count)
        .map(|i| {
            if count == 1 {
                namespace.clone()
            } else {
                format!("{namespace}-h{}", i + 1)
            }
        })
        .collect();
    drop(first);
    for (plan, ns) in plans.iter().zip(&namespaces) {
        let provisioner = connect_provisioner(opts, ns, plan.address).await?;
        remove_all(&provisioner).await?;
        parts.provisioners.push(provisioner);
    }

    // 4. The directory, the log and the ledger.
    let workdir = Workdir::create(opts.dir.as_deref())?;
    let dir = workdir.path().to_owned();
    parts.dir = Some(workdir);
    let log = dir.join("agent.log");
    if opts.log_to_file {
        install_log(&log)?;
    }
    progress("starting the ledger…");
    let net = Localnet::start(LedgerConfig {
        listen: opts.ledger_listen,
        close_interval: opts.close_interval,
        data_dir: Some(dir.join("ledger")),
        ..LedgerConfig::default()
    })
    .await
    .map_err(SandboxError::Ledger)?;
    let ledger = net.url();
    let ledger_http = net.http_url();
    parts.net = Some(net);
    let client_error = |step| {
        let url = ledger.clone();
        move |source| SandboxError::Client {
            url,
            step,
            source: Box::new(source),
        }
    };
    // `start` and a first request: the future of `Client::connect` is not `Send`.
    let client =
        Client::start(ClientConfig::new([ledger.clone()])).map_err(client_error("connecting"))?;
    parts.client = Some(client.clone());
    client
        .validated_ledger_index()
        .await
        .map_err(client_error("reading the validated ledger"))?;

    // 5. Accounts: registry, hosts, tenant.
    progress(if count == 1 {
        "funding the registry, the host and the tenant…"
    } else {
        "funding the registry, the hosts and the tenant…"
    });
    let registry = KeyPair::generate(KeyType::Ed25519);
    let host_pairs: Vec<KeyPair> = (0..count)
        .map(|_| KeyPair::generate(KeyType::Ed25519))
        .collect();
    let tenant_home = opts
        .tenant_home
        .clone()
        .unwrap_or_else(|| dir.join("tenant"));
    let keys_error = |source| SandboxError::Keys {
        home: tenant_home.clone(),
        source,
    };
    let tenant = match Keys::load(&tenant_home) {
        Ok(keys) => keys,
        Err(KeysError::Missing(_)) => {
            let keys = Keys::generate(KeyType::Ed25519);
            keys.save(&tenant_home, false).map_err(keys_error)?;
            keys
        }
        Err(e) => return Err(keys_error(e)),
    };
    let mut accounts = vec![(registry.address(), REGISTRY_DROPS)];
    accounts.extend(host_pairs.iter().map(|h| (h.address(), opts.host_drops)));
    accounts.push((tenant.wallet.address(), opts.tenant_drops));
    for (account, drops) in &accounts {
        fund(&client, account, *drops).await?;
    }
    for (account, _) in &accounts {
        wait_funded(&client, account).await?;
    }

    // 6. The tenant's MessageKey and settings.
    let tenant_address = tenant.wallet.address();
    let message_key_error = |problem: String| SandboxError::MessageKey {
        account: tenant_address.clone(),
        problem,
    };
    let validated = keys::set_message_key(&client, &tenant)
        .await
        .map_err(|e| message_key_error(chain(&e)))?;
    if !validated.is_success() {
        return Err(message_key_error(validated.result));
    }
    Settings {
        ledger: Some(ledger.clone()),
        registry: Some(registry.address()),
    }
    .save(&tenant_home)?;

    // 7. The host agents.
    progress(if count == 1 {
        "starting the host agent…"
    } else {
        "starting the host agents…"
    });
    let mut hosts_info = Vec::new();
    for (i, (pair, plan)) in host_pairs.iter().zip(&plans).enumerate() {
        let data_dir = if count == 1 {
            dir.join("host")
        } else {
            dir.join(format!("host-{}", i + 1))
        };
        let config = host_config(opts, &ledger, &registry.address(), &data_dir, plan)
            .map_err(SandboxError::Options)?;
        let host_keys = pair
            .seed()
            .as_deref()
            .and_then(HostKeys::from_seed)
            .ok_or_else(|| SandboxError::HostKeys {
                account: pair.address(),
            })?;
        let account = host_keys.address();
        let token = CancellationToken::new();
        let handle = tokio::spawn(run(
            config,
            host_keys,
            parts.provisioners[i].clone(),
            RunSettings {
                notify: false,
                ..RunSettings::default()
            },
            token.clone(),
        ));
        parts.agents.push(AgentTask {
            token,
            handle: Some(handle),
        });
        hosts_info.push(SandboxHost {
            account,
            address: plan.address,
            namespace: namespaces[i].clone(),
            user_ports: plan.user_ports.to_string(),
            peer_ports: plan.peer_ports.to_string(),
            data_dir,
        });
    }

    // 8. The offers.
    for (i, host) in hosts_info.iter().enumerate() {
        wait_for_offers(
            &client,
            &registry.address(),
            &host.account,
            opts,
            &mut parts.agents[i],
            &log,
            progress,
        )
        .await?;
    }

    Ok(SandboxInfo {
        ready: true,
        dir,
        ledger,
        ledger_http,
        registry: registry.address(),
        host: hosts_info[0].account.clone(),
        tenant: tenant_address,
        tenant_home,
        namespace,
        log,
        price_drops: opts.price_drops,
        moment_secs: opts.moment_secs,
        slots: opts.slots,
        user_ports: hosts_info[0].user_ports.clone(),
        tenant_drops: opts.tenant_drops,
        hosts: hosts_info,
        own_addresses,
    })
}

/// A provisioner for one host of the sandbox: its namespace, publishing on `address`.
async fn connect_provisioner(
    opts: &SandboxOptions,
    namespace: &str,
    address: IpAddr,
) -> Result<Arc<DockerProvisioner>, SandboxError> {
    let draft = host_config(
        opts,
        "ws://127.0.0.1:1/",
        berth_localnet::GENESIS_ADDRESS,
        Path::new("/"),
        &host_plan(opts, 0, address),
    )
    .map_err(SandboxError::Options)?;
    let mut provisioner_config = provisioner_config(&draft);
    provisioner_config.namespace = namespace.to_owned();
    provisioner_config.host_ip = address;
    // The sandbox also runs without root (no iptables): block where it can, say so otherwise.
    provisioner_config.egress = berth_provisioner::EgressPolicy::BlockIfPossible;
    let endpoint =
        || std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_DOCKER_SOCKET.to_owned());
    match tokio::time::timeout(
        DOCKER_TIMEOUT,
        DockerProvisioner::connect(provisioner_config),
    )
    .await
    {
        Ok(Ok(p)) => Ok(Arc::new(p)),
        Ok(Err(error @ ProvisionError::Connect { .. })) => Err(SandboxError::NoDocker {
            endpoint: endpoint(),
            problem: chain(&error),
        }),
        Ok(Err(source)) => Err(SandboxError::Docker {
            step: "configuring the provisioner",
            source: Box::new(source),
        }),
        Err(_) => Err(SandboxError::NoDocker {
            endpoint: endpoint(),
            problem: format!("no answer within {} s", DOCKER_TIMEOUT.as_secs()),
        }),
    }
}

/// Pays `drops` from the ledger's genesis account (localnet's admin `wallet_fund`).
async fn fund(client: &Client, account: &str, drops: u64) -> Result<(), SandboxError> {
    client
        .request(
            "wallet_fund",
            json!({"destination": account, "amount": drops.to_string()}),
        )
        .await
        .map(drop)
        .map_err(|e| SandboxError::Fund {
            account: account.to_owned(),
            problem: chain(&e),
        })
}

/// Waits until `account` exists in a validated ledger.
async fn wait_funded(client: &Client, account: &str) -> Result<(), SandboxError> {
    let started = Instant::now();
    loop {
        match client.account_data(account).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if started.elapsed() > Duration::from_secs(30) => {
                return Err(SandboxError::Fund {
                    account: account.to_owned(),
                    problem: "not in a validated ledger after 30 s".into(),
                })
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(SandboxError::Fund {
                    account: account.to_owned(),
                    problem: format!("not in a validated ledger after 30 s: {}", chain(&e)),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls the registry until `host` is registered with `opts.slots` live offers.
async fn wait_for_offers(
    client: &Client,
    registry: &str,
    host: &str,
    opts: &SandboxOptions,
    agent: &mut AgentTask,
    log: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    let want = opts.slots as usize;
    let started = Instant::now();
    let mut last_line = (None, Instant::now());
    let mut last_error = String::new();
    loop {
        if agent.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            return Err(agent.stopped(log.to_owned()).await);
        }
        let offered = match hosts::list(client, registry).await {
            Ok(found) => found
                .iter()
                .find(|h| h.address == host)
                .map(hosts::HostView::free_slots),
            Err(e) => {
                last_error = chain(&e);
                None
            }
        };
        if offered.is_some_and(|n| n >= want) {
            return Ok(());
        }
        let secs = started.elapsed().as_secs();
        if started.elapsed() > opts.ready_timeout {
            return Err(SandboxError::OffersTimeout {
                got: offered.unwrap_or(0),
                want,
                secs,
                last_error: if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last_error})")
                },
                log: log.to_owned(),
            });
        }
        if last_line.0 != Some(offered) || last_line.1.elapsed() >= Duration::from_secs(5) {
            let line = match offered {
                None => format!("waiting for the host to register… ({secs} s)"),
                Some(n) => format!("waiting for {want} lease offers… {n}/{want} ({secs} s)"),
            };
            progress(&line);
            last_line = (Some(offered), Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_options_make_a_valid_host_config() {
        let opts = SandboxOptions::default();
        let config = host_config(
            &opts,
            "ws://127.0.0.1:6006/",
            berth_localnet::GENESIS_ADDRESS,
            Path::new("/tmp/x"),
            &host_plan(&opts, 0, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .unwrap();
        assert_eq!(config.lease.slots.get(), 3);
        assert_eq!(config.resources.cpu_millicores.get(), 1500);
        assert_eq!(config.resources.memory_mb.get(), 768);
        assert_eq!(config.runtime.image, "berth-hotpocket:latest");
        assert_eq!(config.host.data_dir, Path::new("/tmp/x"));
        let tight = SandboxOptions {
            slots: 5,
            user_ports: PortRange {
                first: 30000,
                last: 30001,
            },
            ..SandboxOptions::default()
        };
        let err = host_config(
            &tight,
            "ws://127.0.0.1:6006/",
            berth_localnet::GENESIS_ADDRESS,
            Path::new("/"),
            &host_plan(&tight, 0, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ports"), "{err}");
    }

    #[test]
    fn several_hosts_share_the_port_ranges_without_overlap() {
        let opts = SandboxOptions {
            hosts: 3,
            ..SandboxOptions::default()
        };
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let plans: Vec<HostPlan> = (0..3).map(|i| host_plan(&opts, i, ip)).collect();
        for pair in plans.windows(2) {
            assert!(pair[0].user_ports.last < pair[1].user_ports.first);
            assert!(pair[0].peer_ports.last < pair[1].peer_ports.first);
        }
        assert_eq!(plans[0].user_ports.first, opts.user_ports.first);
        assert!(plans[2].user_ports.last <= opts.user_ports.last);
        for plan in &plans {
            host_config(
                &opts,
                "ws://127.0.0.1:6006/",
                berth_localnet::GENESIS_ADDRESS,
                Path::new("/"),
                plan,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_given_dir_must_be_empty_or_absent_and_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let absent = tmp.path().join("a/b");
        let dir = Workdir::create(Some(&absent)).unwrap();
        std::fs::write(dir.path().join("agent.log"), "x").unwrap();
        dir.finish(false);
        assert!(absent.join("agent.log").is_file(), "a given dir is kept");
        let err = Workdir::create(Some(&absent)).err().unwrap().to_string();
        assert!(err.contains("exists and is not empty"), "{err}");
        let temp = Workdir::create(None).unwrap();
        let path = temp.path().to_owned();
        temp.finish(false);
        assert!(!path.exists());
        let kept = Workdir::create(None).unwrap();
        let path = kept.path().to_owned();
        kept.finish(true);
        assert!(path.is_dir());
        std::fs::remove_dir(path).unwrap();
    }
}
