//! Talking to an instance over its TLS WebSocket: bundling and uploading a contract, inputs,
//! read requests, `lcl` and `stat`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_hotpocket_client::client::{
    Client, ClientError, ConnectOptions, LedgerOutputs, NodeStat,
};
use berth_hotpocket_client::protocol::anchor::{CheckpointSigner, LedgerAnswer};
use berth_hotpocket_client::protocol::bundle::ContractConfig;
use berth_hotpocket_client::protocol::bundle::{build_bundle, BootstrapReply, ClusterSpec};
use berth_hotpocket_client::protocol::history::HistoryFile;
use ed25519_dalek::SigningKey;
use serde::Serialize;

/// Largest bundle `berth deploy` sends (the instance applies its own limit too).
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// Errors naming the instance, the bundle or the file.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("bad instance address `{0}`: expected host:port or wss://host:port")]
    BadAddress(String),
    #[error("instance {addr} is unreachable")]
    Unreachable {
        addr: String,
        source: Box<ClientError>,
    },
    #[error("instance {addr}")]
    Request {
        addr: String,
        source: Box<ClientError>,
    },
    #[error("instance {addr} sent no bootstrap answer to the upload: a contract is installed and only its owner's uploads reach the bootstrap; deploy with the owner's keys")]
    NoBootstrapAnswer { addr: String },
    #[error("instance {addr} is not the one the host's sealed details name: it announced {what} {got}, the details say {expected}; nothing was sent to it (another service on that port, or a stale lease record?)")]
    NotTheLeasedInstance {
        addr: String,
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("bad bundle {path}: {problem}")]
    BadBundle { path: PathBuf, problem: String },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError {
    let path = path.to_path_buf();
    move |source| InstanceError::Io { step, path, source }
}

/// `host:port` from `wss://host:port[/]` or `host:port`.
pub fn parse_address(url: &str) -> Result<String, InstanceError> {
    let rest = url.strip_prefix("wss://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok || rest.contains('/') || rest.contains("://") {
        return Err(InstanceError::BadAddress(url.to_owned()));
    }
    Ok(rest.to_owned())
}

/// A connection to one instance as one user.
pub struct Instance {
    addr: String,
    client: Client,
}

impl Instance {
    /// Connects (TLS, the node's self-signed certificate accepted) and completes the
    /// handshake with `key`.
    pub async fn connect(
        url: &str,
        key: &SigningKey,
        timeout: Duration,
    ) -> Result<Self, InstanceError> {
        let addr = parse_address(url)?;
        let opts = ConnectOptions {
            timeout,
            ..ConnectOptions::default()
        };
        let client = Client::connect(&addr, key.clone(), opts)
            .await
            .map_err(|source| InstanceError::Unreachable {
                addr: addr.clone(),
                source: Box::new(source),
            })?;
        Ok(Instance { addr, client })
    }

    fn request(&self) -> impl FnOnce(ClientError) -> InstanceError + '_ {
        |source| InstanceError::Request {
            addr: self.addr.clone(),
            source: Box::new(source),
        }
    }

    /// Connects like [`Instance::connect`], then checks that the node is the one a lease's
    /// sealed instance details name: it proved it holds `node_key` (signed the client's
    /// challenge) and announced `contract_id`. The TLS certificate is self-signed, so this
    /// is what tells a tenant it talks to its own instance before it uploads or signs
    /// anything.
    pub async fn connect_expecting(
        url: &str,
        key: &SigningKey,
        timeout: Duration,
        node_key: &str,
        contract_id: &str,
    ) -> Result<Self, InstanceError> {
        let instance = Self::connect(url, key, timeout).await?;
        let mismatch =
            |what: &'static str, expected: &str, got: &str| InstanceError::NotTheLeasedInstance {
                addr: instance.addr.clone(),
                what,
                expected: expected.to_owned(),
                got: got.to_owned(),
            };
        let announced = instance.client.node_pubkey.clone().unwrap_or_default();
        let problem = if !announced.eq_ignore_ascii_case(node_key) {
            Some(mismatch("node key", node_key, &announced))
        } else if !instance.contract_id().eq_ignore_ascii_case(contract_id) {
            Some(mismatch("contract id", contract_id, instance.contract_id()))
        } else {
            None
        };
        match problem {
            Some(e) => {
                instance.close().await;
                Err(e)
            }
            None => Ok(instance),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's public key (`ed…`), proven by its signature in the handshake.
    pub fn node_key(&self) -> Option<&str> {
        self.client.node_pubkey.as_deref()
    }

    /// The contract id the instance announced in the handshake.
    pub fn contract_id(&self) -> &str {
        &self.client.contract_id
    }

    pub async fn upload(&self, zip: &[u8]) -> Result<BootstrapReply, InstanceError> {
        match self.client.upload_bundle(zip).await {
            Err(ClientError::NoBootstrapReply) => Err(InstanceError::NoBootstrapAnswer {
                addr: self.addr.clone(),
            }),
            other => other.map_err(self.request()),
        }
    }

    pub async fn input(&self, data: &[u8]) -> Result<LedgerOutputs, InstanceError> {
        self.client
            .submit_and_wait(data)
            .await
            .map_err(self.request())
    }

    pub async fn read(&self, data: &[u8]) -> Result<Vec<u8>, InstanceError> {
        self.client.read(data).await.map_err(self.request())
    }

    pub async fn status(&self) -> Result<StatusView, InstanceError> {
        let (lcl_seq_no, lcl_hash) = self.client.lcl().await.map_err(self.request())?;
        let stat = self.client.stat().await.map_err(self.request())?;
        Ok(StatusView {
            address: self.addr.clone(),
            contract_id: self.client.contract_id.clone(),
            lcl_seq_no,
            lcl_hash,
            hp_version: stat.hp_version,
            roundtime_ms: stat.roundtime,
            contract_execution_enabled: stat.contract_execution_enabled,
            unl: stat.current_unl,
        })
    }

    /// Puts the node in a cluster (the owner's cluster request) and returns its answer.
    pub async fn set_cluster(&self, spec: &ClusterSpec) -> Result<BootstrapReply, InstanceError> {
        match self.client.set_cluster(spec).await {
            Err(ClientError::NoBootstrapReply) => Err(InstanceError::NoBootstrapAnswer {
                addr: self.addr.clone(),
            }),
            other => other.map_err(self.request()),
        }
    }

    /// The node's `Signer` entry for a checkpoint or signer-list transaction of the
    /// cluster's account (see `berth_hotpocket_client::protocol::anchor`).
    pub async fn sign_checkpoint(&self, tx: &[u8]) -> Result<CheckpointSigner, InstanceError> {
        self.client
            .sign_checkpoint(tx)
            .await
            .map_err(self.request())
    }

    /// The node's ledger at `seq`.
    pub async fn ledger_at(&self, seq: u64) -> Result<LedgerAnswer, InstanceError> {
        self.client.ledger_at(seq).await.map_err(self.request())
    }

    /// The node's own status report (`stat`).
    pub async fn stat(&self) -> Result<NodeStat, InstanceError> {
        self.client.stat().await.map_err(self.request())
    }

    /// Downloads ledgers `1..=to` (default: the node's last closed ledger) with their raw
    /// inputs and outputs, a page (`ledger_query`, Berth's range) at a time; `progress` gets
    /// (ledgers downloaded, ledgers wanted) after each page.
    pub async fn history(
        &self,
        to: Option<u64>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<HistoryFile, InstanceError> {
        let stat = self.stat().await?;
        let to = to.unwrap_or(stat.ledger_seq_no).min(stat.ledger_seq_no);
        let ledgers = self
            .client
            .ledger_history(1, to, &mut progress)
            .await
            .map_err(self.request())?;
        Ok(HistoryFile {
            contract_id: self.contract_id().to_owned(),
            unl: stat.current_unl,
            ledgers,
        })
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}

/// `berth status` output.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub address: String,
    pub contract_id: String,
    pub lcl_seq_no: u64,
    pub lcl_hash: String,
    pub hp_version: String,
    pub roundtime_ms: u64,
    pub contract_execution_enabled: bool,
    pub unl: Vec<String>,
}

/// `berth input` output.
#[derive(Debug, Clone, Serialize)]
pub struct InputView {
    pub ledger_seq_no: u64,
    pub ledger_hash: String,
    /// Outputs as text (invalid UTF-8 replaced).
    pub outputs: Vec<String>,
    /// The nodes (`ed…`) whose signature over these outputs verified (`unl_sig`).
    pub signers: Vec<String>,
}

impl From<LedgerOutputs> for InputView {
    fn from(o: LedgerOutputs) -> Self {
        InputView {
            ledger_seq_no: o.ledger_seq_no,
            ledger_hash: o.ledger_hash,
            outputs: o
                .outputs
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
            signers: o.signers,
        }
    }
}

/// The bundle for `path`: a directory is checked (`contract.config` first, with HotPocket's
/// own validation, then its `bin_path`) and zipped; a file must already be a zip.
pub fn load_bundle(path: &Path) -> Result<Vec<u8>, InstanceError> {
    let bad = |problem: String| InstanceError::BadBundle {
        path: path.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(io_err("reading", path))?;
    if meta.is_dir() {
        return bundle_dir(path);
    }
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the limit of {MAX_BUNDLE_BYTES}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(io_err("reading", path))?;
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err(bad(
            "not a zip file; pass a contract directory or a zip made by `hotpocket bundle`".into(),
        ));
    }
    Ok(bytes)
}

fn bundle_dir(dir: &Path) -> Result<Vec<u8>, InstanceError> {
    let bad = |problem: String| InstanceError::BadBundle {
        path: dir.to_path_buf(),
        problem,
    };
    let cfg_path = dir.join("contract.config");
    let text = std::fs::read(&cfg_path).map_err(|_| {
        bad("no contract.config; write one such as {\"bin_path\": \"contract\", \"version\": \"1.0\"}".into())
    })?;
    let config: ContractConfig = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("contract.config is not valid: {e}")))?;
    config.validate().map_err(|e| bad(e.to_string()))?;
    let bin = Path::new(&config.bin_path);
    if !bin.is_absolute() && !dir.join(bin).is_file() {
        return Err(bad(format!(
            "contract.config bin_path `{}` is not a file in the directory",
            config.bin_path
        )));
    }
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    let total: u64 = files.iter().map(|(_, b, _)| b.len() as u64).sum();
    if total > MAX_BUNDLE_BYTES {
        return Err(bad(format!(
            "{total} bytes of files, more than the limit of {MAX_BUNDLE_BYTES}"
        )));
    }
    build_bundle(&config, &files).map_err(|e| bad(berth_log::chain(&e)))
}

fn collect(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, Vec<u8>, u32)>,
) -> Result<(), InstanceError> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("listing", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
        let rel = path
            .strip_prefix(root)
            .map_err(|_| InstanceError::BadBundle {
                path: path.clone(),
                problem: "outside the bundle directory".into(),
            })?
            .to_string_lossy()
            .into_owned();
        if meta.file_type().is_symlink() {
            return Err(InstanceError::BadBundle {
                path,
                problem: "is a symlink; bundles may not hold symlinks".into(),
            });
        }
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if rel != "contract.config" {
            let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
            out.push((rel, bytes, meta.permissions().mode() & 0o777));
        }
    }
    Ok(())
}

/// `data` or, written `@file`, the file's bytes.
pub fn input_bytes(arg: &str) -> Result<Vec<u8>, InstanceError> {
    match arg.strip_prefix('@') {
        Some(file) => {
            let path = Path::new(file);
            std::fs::read(path).map_err(io_err("reading", path))
        }
        None => Ok(arg.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_address("wss://127.0.0.1:8081/").unwrap(),
            "127.0.0.1:8081"
        );
        assert_eq!(
            parse_address("host.example:443").unwrap(),
            "host.example:443"
        );
        for bad in [
            "",
            "host",
            "ws://host:1",
            "host:0",
            "host:99999",
            "wss://h:1/x",
        ] {
            let e = parse_address(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
