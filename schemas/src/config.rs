//! The host agent's configuration file (`berth-agent.toml`).
//!
//! [`HostConfig::from_toml`] parses and validates; every error names the key (`lease.slots`)
//! and the bad value. Defaults are documented on each field and in `schemas/README.md`.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::field::{AccountAddress, CountryCode, Drops, HostAddress, PeerHost, Text};
use crate::lease_uri::LeaseUri;
use crate::payload::field_path;

/// Why a host config file is not valid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("host config: key `{key}`: {problem}")]
    Parse { key: String, problem: String },
    #[error("host config: key `{key}` = {value}: {problem}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
    },
}

fn invalid(key: &'static str, value: impl fmt::Display, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub ledger: LedgerConfig,
    pub host: HostSection,
    pub lease: LeaseConfig,
    pub resources: Resources,
    #[serde(default)]
    pub ports: Ports,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub housekeeping: Housekeeping,
    #[serde(default)]
    pub agent: AgentSection,
}

/// `[agent]`: the host agent's own knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Instances kept created and started, without an owner, so a purchase is answered
    /// without waiting for Docker (at most the free slots). Default 0.
    #[serde(default)]
    pub pool: u32,
    /// Loopback address of the Prometheus metrics endpoint (`GET /metrics`), e.g.
    /// `"127.0.0.1:9464"`. Default none: no endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Instance health checks run at once during housekeeping. Default 8.
    #[serde(default = "default_health_checks")]
    pub health_checks: NonZeroU32,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            pool: 0,
            metrics: None,
            health_checks: default_health_checks(),
        }
    }
}

fn default_health_checks() -> NonZeroU32 {
    const { non_zero(8) }
}

/// `[ledger]`: where the agent talks to the XRP Ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// WebSocket URLs of rippled-compatible servers (`ws://` or `wss://`), primary first, then
    /// fallbacks in order. Required, at least one.
    pub servers: Vec<String>,
    /// The registry account hosts register and heartbeat to. Required.
    pub registry: AccountAddress,
    /// Highest fee the agent pays for one transaction, in drops. Default 1000.
    #[serde(default = "default_max_fee")]
    pub max_fee_drops: Drops,
}

/// `[host]`: who the host is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// DNS name or IP address tenants reach instances at. Required.
    pub domain: HostAddress,
    /// Address other hosts' instances reach this host's peer ports at, when it is not
    /// `domain` (a private network between hosts, say). Published in the registration and
    /// in each instance's details. Default none: `domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<PeerHost>,
    /// ISO 3166-1 alpha-2 country code, published in the registration. Required.
    pub country: CountryCode,
    /// Free text published in the registration, at most 128 bytes. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text<128>>,
    /// Directory of the agent's database and instance state. Default `/var/lib/berth`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// File holding the host account's secret (family seed). Default `<data_dir>/host.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[lease]`: what the host sells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Number of instance slots (lease tokens). Required, at least 1.
    pub slots: NonZeroU32,
    /// Price of one moment of one slot, in drops. Required.
    pub price_drops: Drops,
    /// Length of a moment in seconds. Default 3600.
    #[serde(default = "default_moment_secs")]
    pub moment_secs: NonZeroU32,
    /// Seconds an expired lease keeps its instance before it is destroyed, and the slack
    /// given after the ledger resumes closing. Default 300.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u32,
    /// Drops kept per transaction a malformed purchase costs the host (its refund, and the
    /// burn, mint and offer that put the slot back on sale): the refund of a purchase
    /// refused for the buyer's own mistake (`bad_payload`, `bad_amount`,
    /// `unsupported_version`) is the price less these fees. Refusals that are the host's
    /// doing (no capacity, draining, provisioning) are refunded in full. Default 12; 0
    /// refunds everything.
    #[serde(default = "default_refusal_fee_drops")]
    pub refusal_fee_drops: u64,
}

fn default_refusal_fee_drops() -> u64 {
    12
}

/// `[resources]`: host totals given to instances, split evenly across slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores (1000 = one core). Required.
    pub cpu_millicores: NonZeroU32,
    /// Memory in MB. Required.
    pub memory_mb: NonZeroU32,
    /// Swap in MB on top of memory. Default 0.
    #[serde(default)]
    pub swap_mb: u32,
    /// Disk in MB. Required.
    pub disk_mb: NonZeroU32,
}

/// An inclusive range of TCP ports, written `"first-last"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Number of ports in the range (at least 1).
    pub fn count(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let problem = || {
            format!("expected \"first-last\" with ports 1 to 65535 and first <= last, got {text:?}")
        };
        let (first, last) = text.split_once('-').ok_or_else(problem)?;
        let first: u16 = first.parse().map_err(|_| problem())?;
        let last: u16 = last.parse().map_err(|_| problem())?;
        if first == 0 || first > last {
            return Err(problem());
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

crate::field::serde_as_string!(PortRange);

/// `[ports]`: ranges instance ports are taken from; each needs at least one port per slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    /// HotPocket user ports. Default `"26201-26300"`.
    #[serde(default = "default_user_ports")]
    pub user: PortRange,
    /// HotPocket peer ports. Default `"22861-22960"`.
    #[serde(default = "default_peer_ports")]
    pub peer: PortRange,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            user: default_user_ports(),
            peer: default_peer_ports(),
        }
    }
}

/// `[runtime]`: how instances run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Docker endpoint. Default none: the `DOCKER_HOST` environment or the local socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// Instance image (built locally by `hotpocket/image/build.sh`). Default `"berth-hotpocket:latest"`.
    #[serde(default = "default_image")]
    pub image: String,
    /// Highest number of processes in one instance. Default 256.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: NonZeroU64,
    /// The Node.js and glibc instance image this host offers to purchases that ask for
    /// `image = "node"` (built by `hotpocket/image/build-node.sh`, e.g.
    /// `"berth-hotpocket-node:latest"`). Default none: such purchases are refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_image: Option<String>,
    /// Shortest consensus round a tenant may ask for, in ms; a purchase asking for less is
    /// refunded. Default 100.
    #[serde(default = "default_min_roundtime_ms")]
    pub min_roundtime_ms: NonZeroU32,
    /// Whether instances may reach private and link-local networks (RFC 1918, 100.64.0.0/10,
    /// 169.254.0.0/16 …) through the host: `"block"` (default) installs firewall rules for the
    /// instances' network at start and refuses to start when it cannot (it needs root and
    /// iptables); `"block-if-possible"` warns instead; `"allow"` installs none.
    #[serde(default)]
    pub private_egress: PrivateEgress,
    /// Private networks instances may still reach when they are blocked, e.g.
    /// `["192.168.1.0/24"]` when a ledger node or cluster peers are on the host's LAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allow: Vec<ipnet::Ipv4Net>,
}

/// `runtime.private_egress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivateEgress {
    #[default]
    Block,
    BlockIfPossible,
    Allow,
}

fn default_min_roundtime_ms() -> NonZeroU32 {
    NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN)
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            docker_host: None,
            image: default_image(),
            pids_limit: default_pids_limit(),
            node_image: None,
            min_roundtime_ms: default_min_roundtime_ms(),
            private_egress: PrivateEgress::default(),
            egress_allow: Vec::new(),
        }
    }
}

/// `[housekeeping]`: periodic reconcile and prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Housekeeping {
    /// Cron expression with seconds (`sec min hour day-of-month month day-of-week [year]`).
    /// Default `"0 */10 * * * *"` (every ten minutes).
    #[serde(default = "default_schedule")]
    pub schedule: String,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
        }
    }
}

fn default_max_fee() -> Drops {
    Drops::DEFAULT_MAX_FEE
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/berth")
}
fn default_moment_secs() -> NonZeroU32 {
    const { non_zero(3600) }
}
fn default_grace_secs() -> u32 {
    300
}
fn default_user_ports() -> PortRange {
    PortRange {
        first: 26201,
        last: 26300,
    }
}
fn default_peer_ports() -> PortRange {
    PortRange {
        first: 22861,
        last: 22960,
    }
}
fn default_image() -> String {
    "berth-hotpocket:latest".to_owned()
}
fn default_pids_limit() -> NonZeroU64 {
    const {
        match NonZeroU64::new(256) {
            Some(limit) => limit,
            None => panic!("zero"),
        }
    }
}
const fn non_zero(value: u32) -> NonZeroU32 {
    match NonZeroU32::new(value) {
        Some(value) => value,
        None => panic!("zero"),
    }
}
fn default_schedule() -> String {
    "0 */10 * * * *".to_owned()
}

/// The share of host resources one slot gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceSize {
    pub cpu_millicores: NonZeroU32,
    pub memory_mb: NonZeroU32,
    pub swap_mb: u32,
    pub disk_mb: NonZeroU32,
}

/// Smallest memory one instance may get (Docker refuses limits under 6 MB).
pub const MIN_INSTANCE_MEMORY_MB: u32 = 16;

impl HostConfig {
    /// Parses and validates the TOML text of a config file.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: HostConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|error| {
                let problem = error.inner().message().to_owned();
                ConfigError::Parse {
                    key: field_path(&error.path().to_string(), &problem),
                    problem,
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as TOML (defaults included), for `berth-agent init`.
    pub fn to_toml(&self) -> String {
        // Every field is a string, integer, array of strings or table: always serializable.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks the rules that span keys; single values are checked by their types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let servers = &self.ledger.servers;
        if servers.is_empty() {
            return Err(invalid(
                "ledger.servers",
                "[]",
                "at least one server is required",
            ));
        }
        for url in servers {
            let rest = url
                .strip_prefix("wss://")
                .or_else(|| url.strip_prefix("ws://"));
            let host_ok = rest.is_some_and(|rest| {
                let authority = rest.split('/').next().unwrap_or_default();
                !authority.is_empty() && !authority.contains(char::is_whitespace)
            });
            if !host_ok {
                return Err(invalid(
                    "ledger.servers",
                    format!("{url:?}"),
                    "expected a ws:// or wss:// URL with a host",
                ));
            }
        }
        if self
            .host
            .key_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid("host.key_file", "\"\"", "must not be empty"));
        }
        if self.host.data_dir.as_os_str().is_empty() {
            return Err(invalid("host.data_dir", "\"\"", "must not be empty"));
        }
        if let Some(address) = self.agent.metrics {
            if !address.ip().is_loopback() {
                return Err(invalid(
                    "agent.metrics",
                    format!("\"{address}\""),
                    "must be a loopback address (127.0.0.1 or ::1)",
                ));
            }
        }
        let slots = self.lease.slots.get();
        for (key, range) in [
            ("ports.user", self.ports.user),
            ("ports.peer", self.ports.peer),
        ] {
            if range.count() < slots {
                return Err(invalid(
                    key,
                    format!("\"{range}\""),
                    format!("{} ports for {slots} slots", range.count()),
                ));
            }
        }
        if self.ports.user.overlaps(&self.ports.peer) {
            return Err(invalid(
                "ports.peer",
                format!("\"{}\"", self.ports.peer),
                format!("overlaps ports.user \"{}\"", self.ports.user),
            ));
        }
        let r = &self.resources;
        if r.cpu_millicores.get() < slots {
            return Err(invalid(
                "resources.cpu_millicores",
                r.cpu_millicores,
                format!("less than 1 millicore for each of {slots} slots"),
            ));
        }
        if r.memory_mb.get() / slots < MIN_INSTANCE_MEMORY_MB {
            return Err(invalid(
                "resources.memory_mb",
                r.memory_mb,
                format!("less than {MIN_INSTANCE_MEMORY_MB} MB for each of {slots} slots"),
            ));
        }
        if r.disk_mb.get() < slots {
            return Err(invalid(
                "resources.disk_mb",
                r.disk_mb,
                format!("less than 1 MB for each of {slots} slots"),
            ));
        }
        if self.runtime.image.trim().is_empty() {
            return Err(invalid("runtime.image", "\"\"", "must not be empty"));
        }
        if self
            .runtime
            .node_image
            .as_ref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(invalid("runtime.node_image", "\"\"", "must not be empty"));
        }
        if let Err(e) = cron::Schedule::from_str(&self.housekeeping.schedule) {
            return Err(invalid(
                "housekeeping.schedule",
                format!("{:?}", self.housekeeping.schedule),
                e.to_string(),
            ));
        }
        Ok(())
    }

    /// Where the host key lives: `host.key_file`, or `<data_dir>/host.key`.
    pub fn key_file(&self) -> PathBuf {
        self.host
            .key_file
            .clone()
            .unwrap_or_else(|| self.host.data_dir.join("host.key"))
    }

    /// The resources of one slot: totals divided evenly (remainders stay unused).
    pub fn instance_size(&self) -> InstanceSize {
        let slots = self.lease.slots;
        let share =
            |total: NonZeroU32| NonZeroU32::new(total.get() / slots).unwrap_or(NonZeroU32::MIN);
        InstanceSize {
            cpu_millicores: share(self.resources.cpu_millicores),
            memory_mb: share(self.resources.memory_mb),
            swap_mb: self.resources.swap_mb / slots,
            disk_mb: share(self.resources.disk_mb),
        }
    }

    /// The URI of the lease token of `slot`.
    pub fn lease_uri(&self, slot: u32) -> LeaseUri {
        let size = self.instance_size();
        LeaseUri {
            slot,
            cpu_millicores: size.cpu_millicores,
            memory_mb: size.memory_mb,
            disk_mb: size.disk_mb,
            price: self.lease.price_drops,
            moment_secs: self.lease.moment_secs,
        }
    }
}
