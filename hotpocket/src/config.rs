//! The node's configuration file `hp.cfg` in the state directory, made at first start from
//! the provisioner's environment and read on every later start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::protocol::bundle::{Consensus, ContractConfig, Npl, RoundLimits};
use crate::protocol::{parse_pubkey_hex, pubkey_hex};

/// Default message size bound for user messages (bytes).
pub const DEFAULT_MAX_MSG_BYTES: u64 = 32 * 1024 * 1024;
/// Default bound on one user's input bytes per round when `round_limits.user_input_bytes` is 0.
pub const DEFAULT_ROUND_INPUT_BYTES: u64 = 64 * 1024 * 1024;
/// Default `exec_timeout` (ms) when the contract sets none.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 300_000;

/// Errors of loading or creating the configuration; each names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing config file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// `node` section: this node's key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeSection {
    pub public_key: String,
    /// 32-byte ed25519 secret seed, hex.
    pub private_key: String,
}

/// `contract` section (hp.cfg). `bin_path` is empty until a bundle is installed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContractSection {
    pub id: String,
    pub version: String,
    pub unl: Vec<String>,
    #[serde(default)]
    pub bin_path: String,
    #[serde(default)]
    pub bin_args: String,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub max_input_ledger_offset: u64,
    pub consensus: Consensus,
    #[serde(default)]
    pub npl: Npl,
    #[serde(default)]
    pub round_limits: RoundLimits,
}

impl ContractSection {
    /// Applies a bundle's `contract.config` (or a `patch.cfg`) over this section.
    pub fn apply(&mut self, cfg: &ContractConfig) {
        if let Some(version) = &cfg.version {
            self.version = version.clone();
        }
        if let Some(unl) = &cfg.unl {
            if !unl.is_empty() {
                self.unl = unl.iter().map(|k| k.to_ascii_lowercase()).collect();
            }
        }
        self.bin_path = cfg.bin_path.clone();
        self.bin_args = cfg.bin_args.clone().unwrap_or_default();
        self.environment = cfg.environment.clone().unwrap_or_default();
        if let Some(offset) = cfg.max_input_ledger_offset {
            self.max_input_ledger_offset = offset;
        }
        if let Some(consensus) = &cfg.consensus {
            self.consensus = consensus.clone();
        }
        if let Some(npl) = &cfg.npl {
            self.npl = npl.clone();
        }
        if let Some(limits) = &cfg.round_limits {
            self.round_limits = limits.clone();
        }
    }
}

/// `bootstrap` section: who may upload a contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapSection {
    pub owner_pubkey: String,
    /// Seconds `install.sh` may run.
    #[serde(default = "default_install_timeout")]
    pub install_timeout_secs: u64,
    /// Largest accepted bundle (zip bytes).
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: u64,
    /// Largest total of unpacked bundle bytes.
    #[serde(default = "default_max_unpacked_bytes")]
    pub max_unpacked_bytes: u64,
}

impl BootstrapSection {
    /// The section with every limit at its default.
    pub fn for_owner(owner_pubkey: String) -> BootstrapSection {
        BootstrapSection {
            owner_pubkey,
            install_timeout_secs: default_install_timeout(),
            max_bundle_bytes: default_max_bundle_bytes(),
            max_unpacked_bytes: default_max_unpacked_bytes(),
        }
    }
}

fn default_install_timeout() -> u64 {
    120
}
fn default_max_bundle_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_unpacked_bytes() -> u64 {
    256 * 1024 * 1024
}

/// `user` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserSection {
    pub port: u16,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_max_msg")]
    pub max_bytes_per_msg: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections (handshakes and sessions) one source address may hold.
    #[serde(default = "default_max_per_ip")]
    pub max_connections_per_ip: usize,
    /// Handshakes (TLS, upgrade, challenge) in progress at once.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Seconds a session may stay silent (no frame from the user) before it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// The memory the user-port limits are derived from (bytes); 0: the container's cgroup
    /// limit (`memory.max`), else the machine's memory. See [`UserLimits`].
    #[serde(default)]
    pub memory_limit_bytes: u64,
}

fn default_listen() -> String {
    "0.0.0.0".to_owned()
}
fn default_max_msg() -> u64 {
    DEFAULT_MAX_MSG_BYTES
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_per_ip() -> usize {
    64
}
fn default_max_handshakes() -> usize {
    64
}
fn default_idle_timeout() -> u64 {
    300
}

/// Bytes a connection may send before its user is logged in: the WebSocket upgrade request
/// and the challenge answer (a few hundred bytes each).
pub const HANDSHAKE_READ_BYTES: usize = 16 * 1024;
/// What one open session costs besides its messages (TLS and WebSocket buffers, tasks).
pub const SESSION_OVERHEAD_BYTES: u64 = 96 * 1024;
/// Descriptors kept for everything but user connections (store, peers, contract runs).
pub const FD_RESERVE: u64 = 256;
/// Inputs one user may have pooled for the next ledgers.
pub const MAX_USER_INPUTS_PER_ROUND: usize = 4096;

/// The user port's limits, derived from the configured ones, the instance's memory and its
/// descriptor limit, so that memory stays bounded under any mix of connections. With
/// `budget = memory / 2`:
/// - messages of the owner and UNL keys ≤ `min(max_bytes_per_msg, budget / 4)`;
/// - sessions ≤ `min(max_connections, RLIMIT_NOFILE − 256 − max_handshakes,
///   budget / 8 / 96 KiB)`, handshakes ≤ `max_handshakes`, each reading ≤ 16 KiB;
/// - other users' messages ≤ `min(that, budget / 4 / (3 · sessions))` (a message is held
///   about three times while it is decoded);
/// - all users' pooled input bytes (the owner aside) ≤ `budget / 8`, and one user's ≤
///   `min(round_limits.user_input_bytes or 64 MiB, budget / 8)`.
///
/// So the user port holds at most about `budget · 11/8` ≈ 69 % of the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    pub memory_bytes: u64,
    /// Largest message of the owner and UNL keys (and the WebSocket frame limit).
    pub max_msg_bytes: usize,
    /// Largest message of any other user.
    pub user_msg_bytes: usize,
    pub max_sessions: usize,
    pub max_handshakes: usize,
    pub max_per_ip: usize,
    /// All users' pooled input bytes but the owner's.
    pub pool_bytes: u64,
    pub idle_timeout: std::time::Duration,
}

impl UserLimits {
    /// The limits for `memory` bytes of memory and `nofile` descriptors (no I/O).
    pub fn derive(user: &UserSection, memory: u64, nofile: u64) -> UserLimits {
        let memory = if user.memory_limit_bytes > 0 {
            user.memory_limit_bytes
        } else {
            memory
        };
        let budget = memory / 2;
        let max_msg = user.max_bytes_per_msg.min(budget / 4).max(1024);
        let by_fd = nofile
            .saturating_sub(FD_RESERVE)
            .saturating_sub(user.max_handshakes as u64);
        let by_mem = budget / 8 / SESSION_OVERHEAD_BYTES;
        let sessions = (user.max_connections as u64).min(by_fd).min(by_mem).max(2);
        let user_msg = (budget / 4 / (3 * sessions)).clamp(1024, max_msg);
        UserLimits {
            memory_bytes: memory,
            max_msg_bytes: usize::try_from(max_msg).unwrap_or(usize::MAX),
            user_msg_bytes: usize::try_from(user_msg).unwrap_or(usize::MAX),
            max_sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
            max_handshakes: user.max_handshakes,
            max_per_ip: user.max_connections_per_ip,
            pool_bytes: budget / 8,
            idle_timeout: std::time::Duration::from_secs(user.idle_timeout_secs),
        }
    }
}

/// `mesh` section: the peer port, the peers to dial, and the genesis hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshSection {
    pub port: u16,
    #[serde(default)]
    pub known_peers: Vec<String>,
    /// Genesis hold (`HP_AWAIT_CLUSTER`): the node runs no rounds until its owner's cluster
    /// request sets its UNL and peers (then this is cleared and saved).
    #[serde(default)]
    pub await_cluster: bool,
}

/// The whole `hp.cfg`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub contract: ContractSection,
    pub bootstrap: BootstrapSection,
    pub user: UserSection,
    pub mesh: MeshSection,
    #[serde(default)]
    pub ledger: LedgerSection,
}

/// Fewest ledgers a node with a retention keeps: more than a peer that falls behind asks
/// for (`LedgerRequest` batches of 32) before it syncs its state instead.
pub const MIN_LEDGER_RETENTION: u64 = 256;

/// `ledger` section: how much history the node keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerSection {
    /// Ledgers kept behind the last closed one, with their inputs, outputs and proofs
    /// (at least [`MIN_LEDGER_RETENTION`]); 0, the default, keeps the whole history.
    #[serde(default)]
    pub retention: u64,
}

impl LedgerSection {
    /// The first ledger kept once `lcl` closed; 1 when the whole history is kept.
    pub fn oldest_kept(&self, lcl: u64) -> u64 {
        match self.retention {
            0 => 1,
            n => lcl.saturating_sub(n.max(MIN_LEDGER_RETENTION)).max(1),
        }
    }
}

/// What a new node is made from (the provisioner's env vars or `hotpocket new` flags).
#[derive(Debug, Clone, Default)]
pub struct NewNode {
    pub contract_id: String,
    pub owner_pubkey: String,
    pub node_secret_hex: Option<String>,
    pub user_port: u16,
    pub peer_port: u16,
    pub roundtime_ms: Option<u64>,
    /// The UNL (`ed…` keys); this node's own key is added when missing. Empty: this node
    /// alone.
    pub unl: Vec<String>,
    /// Peers to dial (`host:port`).
    pub peers: Vec<String>,
    /// Percent of the UNL that must agree (1–100).
    pub threshold: Option<u32>,
    /// This node's key is not added to the UNL (it joins as an observer).
    pub observer: bool,
    /// Hold at genesis until the owner's cluster request (`HP_AWAIT_CLUSTER`).
    pub await_cluster: bool,
}

/// Settings an environment may change on a later start.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub user_port: Option<u16>,
    pub peer_port: Option<u16>,
    pub roundtime_ms: Option<u64>,
    pub listen: Option<String>,
    /// Replaces `mesh.known_peers`.
    pub peers: Option<Vec<String>>,
}

/// File name of the config inside the state directory.
pub const CONFIG_FILE: &str = "hp.cfg";

impl NodeConfig {
    /// Builds and validates the config of a new node (no I/O).
    pub fn create(new: &NewNode) -> Result<NodeConfig, ConfigError> {
        let id = uuid::Uuid::parse_str(&new.contract_id).map_err(|e| {
            invalid(
                "contract.id",
                format!("`{}` is not a uuid: {e}", new.contract_id),
            )
        })?;
        let owner = parse_pubkey_hex(&new.owner_pubkey)
            .map_err(|e| invalid("bootstrap.owner_pubkey", e.to_string()))?;
        let signing = match &new.node_secret_hex {
            Some(hex_seed) => {
                signing_key_from_hex(hex_seed).map_err(|p| invalid("node.private_key", p))?
            }
            None => SigningKey::generate(&mut rand::rngs::OsRng),
        };
        let node_pk = pubkey_hex(&signing.verifying_key());
        let mut consensus = Consensus::default();
        if let Some(ms) = new.roundtime_ms {
            consensus.roundtime = ms;
        }
        if let Some(t) = new.threshold {
            consensus.threshold = t;
        }
        let mut unl = Vec::with_capacity(new.unl.len() + 1);
        for key in new.unl.iter().filter(|k| !k.trim().is_empty()) {
            let key =
                parse_pubkey_hex(key.trim()).map_err(|e| invalid("contract.unl", e.to_string()))?;
            let hex = pubkey_hex(&key);
            if !unl.contains(&hex) {
                unl.push(hex);
            }
        }
        // A held observer learns the UNL it follows from the owner's cluster request.
        if new.observer && unl.is_empty() && !new.await_cluster {
            return Err(invalid(
                "contract.unl",
                "an observer needs the UNL it follows (or the cluster hold)",
            ));
        }
        if !new.observer && !unl.contains(&node_pk) {
            unl.push(node_pk.clone());
        }
        let cfg = NodeConfig {
            node: NodeSection {
                public_key: node_pk.clone(),
                private_key: hex::encode(signing.to_bytes()),
            },
            contract: ContractSection {
                id: id.to_string(),
                version: "1.0".to_owned(),
                unl,
                bin_path: String::new(),
                bin_args: String::new(),
                environment: BTreeMap::new(),
                max_input_ledger_offset: 10,
                consensus,
                npl: Npl::default(),
                round_limits: RoundLimits::default(),
            },
            bootstrap: BootstrapSection {
                owner_pubkey: pubkey_hex(&owner),
                install_timeout_secs: default_install_timeout(),
                max_bundle_bytes: default_max_bundle_bytes(),
                max_unpacked_bytes: default_max_unpacked_bytes(),
            },
            user: UserSection {
                port: new.user_port,
                listen: default_listen(),
                max_bytes_per_msg: default_max_msg(),
                max_connections: default_max_connections(),
                max_connections_per_ip: default_max_per_ip(),
                max_handshakes: default_max_handshakes(),
                idle_timeout_secs: default_idle_timeout(),
                memory_limit_bytes: 0,
            },
            mesh: MeshSection {
                port: new.peer_port,
                known_peers: new
                    .peers
                    .iter()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
                await_cluster: new.await_cluster,
            },
            ledger: LedgerSection::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies start-time overrides.
    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(p) = o.user_port {
            self.user.port = p;
        }
        if let Some(p) = o.peer_port {
            self.mesh.port = p;
        }
        if let Some(ms) = o.roundtime_ms {
            self.contract.consensus.roundtime = ms;
        }
        if let Some(listen) = &o.listen {
            self.user.listen = listen.clone();
        }
        if let Some(peers) = &o.peers {
            self.mesh.known_peers = peers.clone();
        }
    }

    /// Checks every key (no I/O).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let signing = signing_key_from_hex(&self.node.private_key)
            .map_err(|p| invalid("node.private_key", p))?;
        if pubkey_hex(&signing.verifying_key()) != self.node.public_key.to_ascii_lowercase() {
            return Err(invalid(
                "node.public_key",
                "does not match node.private_key",
            ));
        }
        uuid::Uuid::parse_str(&self.contract.id).map_err(|e| {
            invalid(
                "contract.id",
                format!("`{}` is not a uuid: {e}", self.contract.id),
            )
        })?;
        parse_pubkey_hex(&self.bootstrap.owner_pubkey)
            .map_err(|e| invalid("bootstrap.owner_pubkey", e.to_string()))?;
        if self.contract.unl.is_empty() && !self.mesh.await_cluster {
            return Err(invalid("contract.unl", "must name at least one node"));
        }
        for key in &self.contract.unl {
            parse_pubkey_hex(key).map_err(|e| invalid("contract.unl", e.to_string()))?;
        }
        let rt = self.contract.consensus.roundtime;
        if !(1..=3_600_000).contains(&rt) {
            return Err(invalid(
                "contract.consensus.roundtime",
                format!("{rt} not in 1..=3600000"),
            ));
        }
        let threshold = self.contract.consensus.threshold;
        if !(1..=100).contains(&threshold) {
            return Err(invalid(
                "contract.consensus.threshold",
                format!("{threshold} not in 1..=100"),
            ));
        }
        let slice = self.contract.consensus.stage_slice;
        if !(1..=33).contains(&slice) {
            return Err(invalid(
                "contract.consensus.stage_slice",
                format!("{slice} not in 1..=33"),
            ));
        }
        for peer in &self.mesh.known_peers {
            let ok = peer.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(invalid(
                    "mesh.known_peers",
                    format!("`{peer}` is not host:port"),
                ));
            }
        }
        if self.contract.max_input_ledger_offset == 0 {
            return Err(invalid(
                "contract.max_input_ledger_offset",
                "must be at least 1",
            ));
        }
        if self.user.max_bytes_per_msg < 1024 {
            return Err(invalid("user.max_bytes_per_msg", "must be at least 1024"));
        }
        if self.user.max_connections == 0 {
            return Err(invalid("user.max_connections", "must be at least 1"));
        }
        if self.user.max_connections_per_ip == 0 {
            return Err(invalid("user.max_connections_per_ip", "must be at least 1"));
        }
        if self.user.max_handshakes == 0 {
            return Err(invalid("user.max_handshakes", "must be at least 1"));
        }
        if self.user.idle_timeout_secs == 0 {
            return Err(invalid("user.idle_timeout_secs", "must be at least 1"));
        }
        if self.user.memory_limit_bytes != 0 && self.user.memory_limit_bytes < 16 * 1024 * 1024 {
            return Err(invalid(
                "user.memory_limit_bytes",
                format!(
                    "{} is below 16 MiB (0: detect)",
                    self.user.memory_limit_bytes
                ),
            ));
        }
        if self.user.listen.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "user.listen",
                format!("`{}` is not an IP address", self.user.listen),
            ));
        }
        if self.bootstrap.install_timeout_secs == 0 {
            return Err(invalid(
                "bootstrap.install_timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// This node's signing key.
    pub fn signing_key(&self) -> Result<SigningKey, ConfigError> {
        signing_key_from_hex(&self.node.private_key).map_err(|p| invalid("node.private_key", p))
    }

    /// Reads and validates `hp.cfg` from a state directory.
    pub fn load(state_dir: &Path) -> Result<NodeConfig, ConfigError> {
        let path = state_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let cfg: NodeConfig =
            serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `hp.cfg` atomically (temp file + rename), readable only by the owner.
    pub fn save(&self, state_dir: &Path) -> Result<(), ConfigError> {
        let path = state_dir.join(CONFIG_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        crate::fsutil::write_atomic(&path, &text, 0o600)
            .map_err(|source| ConfigError::Write { path, source })
    }
}

fn signing_key_from_hex(text: &str) -> Result<SigningKey, String> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| "is not 64 hex digits (an ed25519 secret seed)".to_owned())?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn owner() -> String {
        pubkey_hex(&SigningKey::from_bytes(&[7u8; 32]).verifying_key())
    }

    #[test]
    fn new_config_has_own_key_in_unl_and_validates() {
        let cfg = NodeConfig::create(&NewNode {
            contract_id: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
            owner_pubkey: owner(),
            node_secret_hex: Some("11".repeat(32)),
            user_port: 8081,
            peer_port: 22861,
            roundtime_ms: Some(200),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.contract.unl, vec![cfg.node.public_key.clone()]);
        assert_eq!(cfg.contract.consensus.roundtime, 200);
        assert!(!cfg.mesh.await_cluster);
        cfg.validate().unwrap();
    }

    #[test]
    fn a_held_observer_needs_no_unl_until_the_owner_names_it() {
        let new = NewNode {
            contract_id: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
            owner_pubkey: owner(),
            observer: true,
            await_cluster: true,
            ..Default::default()
        };
        let cfg = NodeConfig::create(&new).unwrap();
        assert!(cfg.contract.unl.is_empty(), "not in its own UNL");
        cfg.validate().unwrap();
        let unheld = NewNode {
            await_cluster: false,
            ..new
        };
        let err = NodeConfig::create(&unheld).unwrap_err().to_string();
        assert!(err.contains("observer needs the UNL"), "{err}");
    }

    #[test]
    fn a_config_without_await_cluster_loads_and_the_hold_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::create(&NewNode {
            contract_id: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
            owner_pubkey: owner(),
            await_cluster: true,
            ..Default::default()
        })
        .unwrap();
        cfg.save(dir.path()).unwrap();
        assert!(NodeConfig::load(dir.path()).unwrap().mesh.await_cluster);
        // A config written before the hold existed has no `await_cluster` key.
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
        old["mesh"].as_object_mut().unwrap().remove("await_cluster");
        std::fs::write(dir.path().join(CONFIG_FILE), old.to_string()).unwrap();
        assert!(!NodeConfig::load(dir.path()).unwrap().mesh.await_cluster);
    }

    #[test]
    fn empty_list_entries_are_ignored_and_a_bad_peer_is_named() {
        let mut new = NewNode {
            contract_id: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
            owner_pubkey: owner(),
            unl: vec![String::new()],
            peers: vec![String::new(), " 10.0.0.2:22861 ".into()],
            threshold: Some(51),
            ..Default::default()
        };
        let cfg = NodeConfig::create(&new).unwrap();
        assert_eq!(cfg.contract.unl.len(), 1);
        assert_eq!(cfg.mesh.known_peers, vec!["10.0.0.2:22861".to_owned()]);
        assert_eq!(cfg.contract.consensus.threshold, 51);
        new.peers = vec!["nohost".into()];
        let err = NodeConfig::create(&new).unwrap_err().to_string();
        assert!(
            err.contains("mesh.known_peers") && err.contains("nohost"),
            "{err}"
        );
        new.peers = vec![];
        new.unl = vec!["ed1234".into()];
        let err = NodeConfig::create(&new).unwrap_err().to_string();
        assert!(err.contains("contract.unl"), "{err}");
    }

    #[test]
    fn user_limits_follow_memory_and_descriptors() {
        let cfg = NodeConfig::create(&NewNode {
            contract_id: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
            owner_pubkey: owner(),
            ..Default::default()
        })
        .unwrap();
        let small = UserLimits::derive(&cfg.user, 256 << 20, 1 << 20);
        assert_eq!(small.max_msg_bytes, 32 << 20);
        assert_eq!(small.max_sessions, 170);
        assert!(small.user_msg_bytes >= 60 * 1024 && small.user_msg_bytes < 70 * 1024);
        assert_eq!(small.pool_bytes, 16 << 20);
        let held = small.max_sessions as u64
            * (SESSION_OVERHEAD_BYTES + 3 * small.user_msg_bytes as u64)
            + 3 * small.max_msg_bytes as u64
            + 2 * small.pool_bytes;
        assert!(held < 256 << 20, "{held}");
        let big = UserLimits::derive(&cfg.user, 64 << 30, 1 << 20);
        assert_eq!(big.max_sessions, 1000);
        assert_eq!(big.max_msg_bytes, 32 << 20);
        let few_fds = UserLimits::derive(&cfg.user, 64 << 30, 1024);
        assert_eq!(few_fds.max_sessions, 1024 - 256 - 64);
        let mut user = cfg.user.clone();
        user.memory_limit_bytes = 64 << 20;
        assert_eq!(
            UserLimits::derive(&user, 64 << 30, 1 << 20).memory_bytes,
            64 << 20
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut new = NewNode {
            contract_id: "not-a-uuid".into(),
            owner_pubkey: owner(),
            ..Default::default()
        };
        let err = NodeConfig::create(&new).unwrap_err().to_string();
        assert!(err.contains("contract.id"), "{err}");
        new.contract_id = "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into();
        new.owner_pubkey = "ed00".into();
        let err = NodeConfig::create(&new).unwrap_err().to_string();
        assert!(err.contains("bootstrap.owner_pubkey"), "{err}");
        new.owner_pubkey = owner();
        new.node_secret_hex = Some("zz".into());
        let err = NodeConfig::create(&new).unwrap_err().to_string();
        assert!(err.contains("node.private_key"), "{err}");
    }
}
