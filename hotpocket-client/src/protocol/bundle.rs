//! The contract section of HotPocket's config, as a bundle's `contract.config` carries it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `consensus` of the contract section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Consensus {
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Round time in ms, 1..=3_600_000.
    #[serde(default = "default_roundtime")]
    pub roundtime: u64,
    /// Percent of the round each of stages 1–3 takes, 1..=33.
    #[serde(default = "default_stage_slice")]
    pub stage_slice: u32,
    /// Percent of the UNL that must agree, 1..=100.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
}

impl Default for Consensus {
    fn default() -> Self {
        Consensus {
            mode: default_mode(),
            roundtime: default_roundtime(),
            stage_slice: default_stage_slice(),
            threshold: default_threshold(),
        }
    }
}

fn default_mode() -> String {
    "public".to_owned()
}
fn default_roundtime() -> u64 {
    1000
}
fn default_stage_slice() -> u32 {
    25
}
fn default_threshold() -> u32 {
    80
}

/// `npl` of the contract section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Npl {
    #[serde(default = "default_mode")]
    pub mode: String,
}

impl Default for Npl {
    fn default() -> Self {
        Npl {
            mode: default_mode(),
        }
    }
}

/// `round_limits`; 0 means "no limit" as in HotPocket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoundLimits {
    #[serde(default)]
    pub user_input_bytes: u64,
    #[serde(default)]
    pub user_output_bytes: u64,
    #[serde(default)]
    pub npl_output_bytes: u64,
    #[serde(default)]
    pub proc_cpu_seconds: u64,
    #[serde(default)]
    pub proc_mem_bytes: u64,
    #[serde(default)]
    pub proc_ofd_count: u64,
    /// Milliseconds a run may take before it is killed; 0 means the node default.
    #[serde(default)]
    pub exec_timeout: u64,
}

/// A bundle's `contract.config` (every field but `bin_path` optional).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unl: Option<Vec<String>>,
    pub bin_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_ledger_offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<Consensus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npl: Option<Npl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_limits: Option<RoundLimits>,
}

/// A `contract.config` value out of range; names the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("contract.config key `{key}`: {problem}")]
pub struct ConfigRangeError {
    pub key: &'static str,
    pub problem: String,
}

fn range_err(key: &'static str, problem: impl Into<String>) -> ConfigRangeError {
    ConfigRangeError {
        key,
        problem: problem.into(),
    }
}

impl ContractConfig {
    /// Checks fields and ranges (hpcore `conf.cpp` limits).
    pub fn validate(&self) -> Result<(), ConfigRangeError> {
        if self.bin_path.trim().is_empty() {
            return Err(range_err("bin_path", "must not be empty"));
        }
        if self.bin_path.contains('\0') {
            return Err(range_err("bin_path", "contains a NUL byte"));
        }
        if let Some(unl) = &self.unl {
            for key in unl {
                if super::parse_pubkey_hex(key).is_err() {
                    return Err(range_err(
                        "unl",
                        format!("`{key}` is not a 66-char `ed` key"),
                    ));
                }
            }
        }
        if let Some(env) = &self.environment {
            for name in env.keys() {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(range_err(
                        "environment",
                        format!("bad variable name `{name}`"),
                    ));
                }
            }
        }
        if let Some(offset) = self.max_input_ledger_offset {
            if offset == 0 || offset > 1_000_000 {
                return Err(range_err(
                    "max_input_ledger_offset",
                    format!("{offset} not in 1..=1000000"),
                ));
            }
        }
        if let Some(c) = &self.consensus {
            if !(1..=3_600_000).contains(&c.roundtime) {
                return Err(range_err(
                    "consensus.roundtime",
                    format!("{} not in 1..=3600000", c.roundtime),
                ));
            }
            if !(1..=33).contains(&c.stage_slice) {
                return Err(range_err(
                    "consensus.stage_slice",
                    format!("{} not in 1..=33", c.stage_slice),
                ));
            }
            if !(1..=100).contains(&c.threshold) {
                return Err(range_err(
                    "consensus.threshold",
                    format!("{} not in 1..=100", c.threshold),
                ));
            }
            if c.mode != "public" && c.mode != "private" {
                return Err(range_err(
                    "consensus.mode",
                    format!("`{}` is not public or private", c.mode),
                ));
            }
        }
        if let Some(npl) = &self.npl {
            if npl.mode != "public" && npl.mode != "private" {
                return Err(range_err(
                    "npl.mode",
                    format!("`{}` is not public or private", npl.mode),
                ));
            }
        }
        Ok(())
    }
}

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildBundleError {
    #[error("bundle entry `{0}` escapes the contract directory")]
    PathEscape(String),
    #[error("encoding contract.config")]
    Config(#[source] serde_json::Error),
    #[error("writing the bundle zip")]
    Zip(#[source] zip::result::ZipError),
    #[error("writing the bundle zip")]
    Write(#[source] std::io::Error),
}

/// The bootstrap's answer (`uploadResult` / `statusResult`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapReply {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub message: String,
}

impl BootstrapReply {
    pub fn ok(kind: &str, message: impl Into<String>) -> Self {
        BootstrapReply {
            kind: kind.to_owned(),
            status: "ok".to_owned(),
            message: message.into(),
        }
    }
    pub fn fail(kind: &str, message: impl Into<String>) -> Self {
        BootstrapReply {
            kind: kind.to_owned(),
            status: "fail".to_owned(),
            message: message.into(),
        }
    }
}

/// The start of an owner's request to Berth's installer (upload or status). It is text, so
/// that JSON-mode clients can send it, but it cannot begin a JSON document (0x01), and read
/// as a BSON document's length it is over 1 GB, more than any input may be. So after a
/// contract is installed the owner's own JSON and BSON inputs all reach the contract, and
/// only inputs with this prefix go to the installer.
pub const OWNER_REQUEST_PREFIX: &[u8] = b"\x01BERTH-OWNER\x00";

/// An owner's request to the installer, in its prefixed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerRequest {
    /// `prefix ‖ 'U' ‖ base64(zip)`.
    Upload(Vec<u8>),
    /// `prefix ‖ 'S'`.
    Status,
    /// `prefix ‖ 'C' ‖ JSON of` [`ClusterSpec`]: the cluster this node belongs to.
    Cluster(ClusterSpec),
}

/// The cluster an owner puts a node in: the whole UNL and the peers to dial, replacing the
/// node's own. Sent to a node that awaits its cluster (created with `HP_AWAIT_CLUSTER`), it
/// takes effect at once, before the node's first ledger; sent to a running cluster, it is an
/// input like any other and takes effect on every node at the ledger that executes it (the
/// UNL through `patch.cfg`, the peers as a peer changeset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Node keys, `ed` + 64 hex digits; 1 to [`ClusterSpec::MAX_NODES`].
    pub unl: Vec<String>,
    /// `host:port` of the nodes' peer ports; at most [`ClusterSpec::MAX_NODES`].
    pub peers: Vec<String>,
}

impl ClusterSpec {
    pub const MAX_NODES: usize = 64;

    /// Checks keys and addresses; the error names the offending value.
    pub fn validate(&self) -> Result<(), ConfigRangeError> {
        if self.unl.is_empty() || self.unl.len() > Self::MAX_NODES {
            return Err(range_err(
                "unl",
                format!("{} keys, expected 1 to {}", self.unl.len(), Self::MAX_NODES),
            ));
        }
        for (i, key) in self.unl.iter().enumerate() {
            if super::parse_pubkey_hex(key).is_err() {
                return Err(range_err(
                    "unl",
                    format!("`{key}` is not a 66-char `ed` key"),
                ));
            }
            if self.unl[..i].contains(key) {
                return Err(range_err("unl", format!("`{key}` is repeated")));
            }
        }
        if self.peers.len() > Self::MAX_NODES {
            return Err(range_err(
                "peers",
                format!("{} peers, at most {}", self.peers.len(), Self::MAX_NODES),
            ));
        }
        for peer in &self.peers {
            let ok = peer.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(range_err("peers", format!("`{peer}` is not host:port")));
            }
        }
        Ok(())
    }
}

impl OwnerRequest {
    /// The input bytes (UTF-8).
    pub fn encode(&self) -> Vec<u8> {
        use base64::Engine;
        let mut out = OWNER_REQUEST_PREFIX.to_vec();
        match self {
            OwnerRequest::Upload(zip) => {
                out.push(b'U');
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(zip)
                        .as_bytes(),
                );
            }
            OwnerRequest::Status => out.push(b'S'),
            OwnerRequest::Cluster(spec) => {
                out.push(b'C');
                // A struct of strings always serializes.
                out.extend_from_slice(serde_json::to_string(spec).unwrap_or_default().as_bytes());
            }
        }
        out
    }

    /// Parses an input that starts with the prefix: None for any other input, and an
    /// upload with no zip when its base64 does not decode.
    pub fn parse(input: &[u8]) -> Option<Result<OwnerRequest, &'static str>> {
        use base64::Engine;
        let rest = input.strip_prefix(OWNER_REQUEST_PREFIX)?;
        Some(match rest.split_first() {
            Some((b'U', b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(OwnerRequest::Upload)
                .map_err(|_| "the upload's content is not base64"),
            Some((b'S', [])) => Ok(OwnerRequest::Status),
            Some((b'C', json)) => serde_json::from_slice::<ClusterSpec>(json)
                .map(OwnerRequest::Cluster)
                .map_err(|_| "the cluster request is not a cluster spec"),
            _ => Err("unknown owner request"),
        })
    }
}

#[cfg(test)]
mod owner_request_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owner_requests_round_trip_and_never_look_like_json_or_bson() {
        let cluster = OwnerRequest::Cluster(ClusterSpec {
            unl: vec![format!("ed{}", "ab".repeat(32))],
            peers: vec!["10.0.0.1:22861".into()],
        });
        for r in [
            OwnerRequest::Upload(vec![0, 255, 7]),
            OwnerRequest::Status,
            cluster,
        ] {
            let bytes = r.encode();
            assert!(std::str::from_utf8(&bytes).is_ok(), "sendable in JSON mode");
            assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_err());
            assert!(crate::protocol::bson::Doc::decode(&bytes).is_err());
            assert_eq!(OwnerRequest::parse(&bytes), Some(Ok(r)));
        }
        assert_eq!(OwnerRequest::parse(br#"{"type":"upload"}"#), None);
        assert!(matches!(
            OwnerRequest::parse(b"\x01BERTH-OWNER\x00X"),
            Some(Err(_))
        ));
    }
}

/// A zip entry name as a relative path that stays inside the directory.
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.contains('\\') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Builds a bundle zip: `contract.config` plus files `(name in the bundle, bytes, unix mode)`.
pub fn build_bundle(
    config: &ContractConfig,
    files: &[(String, Vec<u8>, u32)],
) -> Result<Vec<u8>, BuildBundleError> {
    use std::io::Write;
    let zip_err = BuildBundleError::Zip;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let text = serde_json::to_vec_pretty(config).map_err(BuildBundleError::Config)?;
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("contract.config", opts.unix_permissions(0o644))
        .map_err(zip_err)?;
    zip.write_all(&text).map_err(BuildBundleError::Write)?;
    for (name, bytes, mode) in files {
        if safe_relative(name).is_none() {
            return Err(BuildBundleError::PathEscape(name.clone()));
        }
        zip.start_file(name.as_str(), opts.unix_permissions(*mode))
            .map_err(zip_err)?;
        zip.write_all(bytes).map_err(BuildBundleError::Write)?;
    }
    zip.finish().map_err(zip_err)?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn minimal_config_needs_only_bin_path() {
        let cfg: ContractConfig = serde_json::from_str(r#"{"bin_path":"echo"}"#).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cfg: ContractConfig =
            serde_json::from_str(r#"{"bin_path":"x","consensus":{"roundtime":0}}"#).unwrap();
        assert_eq!(cfg.validate().unwrap_err().key, "consensus.roundtime");
        let cfg: ContractConfig =
            serde_json::from_str(r#"{"bin_path":"x","unl":["abc"]}"#).unwrap();
        assert_eq!(cfg.validate().unwrap_err().key, "unl");
        assert!(serde_json::from_str::<ContractConfig>(r#"{"bin_path":"x","bogus":1}"#).is_err());
    }
}
