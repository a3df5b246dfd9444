//! The bootstrap: installing an owner's contract bundle (a zip with `contract.config`, an
//! optional `hp.cfg.override` and an optional `install.sh`), with rollback on failure
//! (evernode-bootstrap-contract semantics, done natively by the node).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{BootstrapSection, ContractSection};
use crate::fsutil::{copy_tree, remove_tree};
/// The bootstrap's answer is a wire type of the client crate; the node names it from here.
pub(crate) use crate::protocol::bundle::BootstrapReply;
use crate::protocol::bundle::{safe_relative, ConfigRangeError, ContractConfig};

/// Most entries a bundle may hold.
pub const MAX_BUNDLE_ENTRIES: usize = 10_000;

/// Why a bundle was refused or its installation failed; the text goes back to the owner.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("bundle unpacks to more than {limit} bytes")]
    UnpackedTooLarge { limit: u64 },
    #[error("bundle has more than {MAX_BUNDLE_ENTRIES} entries")]
    TooManyEntries,
    #[error("bundle is not a valid zip: {0}")]
    NotZip(String),
    #[error("bundle entry `{0}` escapes the contract directory")]
    PathEscape(String),
    #[error("bundle entry `{0}` is a symlink; symlinks are not allowed")]
    Symlink(String),
    #[error("bundle has no contract.config at its root")]
    NoConfig,
    #[error("bundle contract.config is not valid: {0}")]
    BadConfig(String),
    #[error("bundle hp.cfg.override is not valid: {0}")]
    BadOverride(String),
    #[error(transparent)]
    Range(#[from] ConfigRangeError),
    #[error("contract.config bin_path `{0}` does not exist in the bundle or the image")]
    MissingBinary(String),
    #[error("install.sh failed with exit code {0}")]
    InstallFailed(i32),
    #[error("install.sh did not finish within {0} seconds")]
    InstallTimedOut(u64),
    // The owner reads these as text (the bootstrap's answer), so the cause is in the message
    // and not also a `source()`.
    #[error("installing the bundle: {step}: {error}")]
    Io {
        step: &'static str,
        error: std::io::Error,
    },
    #[error("installing the bundle: {0}")]
    Exec(crate::exec::ExecError),
}

impl From<crate::exec::ExecError> for BundleError {
    fn from(error: crate::exec::ExecError) -> Self {
        BundleError::Exec(error)
    }
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> BundleError {
    move |error| BundleError::Io { step, error }
}

/// An installer request decoded from an owner's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapInput {
    Upload {
        zip: Option<Vec<u8>>,
    },
    Status,
    /// The owner's cluster request; `spec` is None when its JSON is not a cluster spec.
    Cluster {
        spec: Option<crate::protocol::bundle::ClusterSpec>,
    },
}

/// Parses an input as an installer request if it is one. The owner request form
/// (`berth_hotpocket_client::protocol::bundle::OwnerRequest`) always is. Before a contract
/// is installed, so are the forms the stock Evernode bootstrap contract takes: JSON with
/// base64 content, or BSON with binary content. After, those reach the contract.
pub fn parse_request(input: &[u8], installed: bool) -> Option<BootstrapInput> {
    use crate::protocol::bundle::{OwnerRequest, OWNER_REQUEST_PREFIX};
    use base64::Engine;
    match OwnerRequest::parse(input) {
        Some(Ok(OwnerRequest::Upload(zip))) => {
            return Some(BootstrapInput::Upload { zip: Some(zip) })
        }
        Some(Ok(OwnerRequest::Status)) => return Some(BootstrapInput::Status),
        Some(Ok(OwnerRequest::Cluster(spec))) => {
            return Some(BootstrapInput::Cluster { spec: Some(spec) })
        }
        Some(Err(_)) if input.get(OWNER_REQUEST_PREFIX.len()) == Some(&b'C') => {
            return Some(BootstrapInput::Cluster { spec: None })
        }
        Some(Err(_)) => return Some(BootstrapInput::Upload { zip: None }),
        None if installed => return None,
        None => {}
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
        return match value.get("type")?.as_str()? {
            "status" => Some(BootstrapInput::Status),
            "upload" => Some(BootstrapInput::Upload {
                zip: value
                    .get("content")
                    .and_then(|c| c.as_str())
                    .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok()),
            }),
            _ => None,
        };
    }
    let doc = crate::protocol::bson::Doc::decode(input).ok()?;
    match doc.get("type")?.as_str()? {
        "status" => Some(BootstrapInput::Status),
        "upload" => Some(BootstrapInput::Upload {
            zip: doc
                .get("content")
                .and_then(|c| c.as_bytes())
                .map(<[u8]>::to_vec),
        }),
        _ => None,
    }
}

/// The unpacked, validated bundle waiting in a staging directory.
#[derive(Debug)]
struct Staged {
    dir: PathBuf,
    config: ContractConfig,
    has_install: bool,
}

/// Paths of the contract's file system: `<contract_fs>/state` is the working directory,
/// `<contract_fs>/patch.cfg` its `../patch.cfg`.
#[derive(Debug, Clone)]
pub struct ContractFs {
    pub root: PathBuf,
}

impl ContractFs {
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn patch_file(&self) -> PathBuf {
        self.root.join("patch.cfg")
    }
    fn staging(&self) -> PathBuf {
        self.root.join(".staging")
    }
    fn backup(&self) -> PathBuf {
        self.root.join(".backup")
    }
    fn next(&self) -> PathBuf {
        self.root.join(".next")
    }
}

/// A bundle that passed validation, unpacked in the staging directory.
#[derive(Debug)]
pub struct StagedBundle(Staged);

/// A bundle installed into the next state directory (`install.sh` done there), waiting to
/// replace the live state.
#[derive(Debug, Clone)]
pub struct PreparedBundle {
    config: ContractConfig,
}

/// Validates a bundle and unpacks it into the staging directory. Every check here depends
/// on the bundle alone, so every node of a cluster reaches the same verdict.
pub fn stage_bundle(
    zip_bytes: &[u8],
    fs: &ContractFs,
    limits: &BootstrapSection,
) -> Result<StagedBundle, BundleError> {
    let size = zip_bytes.len() as u64;
    if size > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size,
            limit: limits.max_bundle_bytes,
        });
    }
    stage(zip_bytes, fs, limits.max_unpacked_bytes).map(StagedBundle)
}

/// Builds the next state directory (the live state, then the bundle over it) and runs
/// `install.sh` there. The live state is not touched; on failure the next state is removed.
pub async fn prepare_bundle(
    staged: StagedBundle,
    fs: &ContractFs,
    limits: &BootstrapSection,
    jail: &crate::exec::Jail,
) -> Result<PreparedBundle, BundleError> {
    let staged = staged.0;
    let next = fs.next();
    let result = async {
        remove_tree(&next).map_err(io("clearing the next state"))?;
        let state = fs.state_dir();
        std::fs::create_dir_all(&state).map_err(io("creating the state directory"))?;
        copy_tree(&state, &next).map_err(io("copying the state"))?;
        copy_tree(&staged.dir, &next).map_err(io("copying the bundle"))?;
        if staged.has_install {
            let secs = limits.install_timeout_secs;
            match crate::exec::run_script(jail, &next, "install.sh", &[], Duration::from_secs(secs))
                .await?
            {
                Some(0) => {}
                Some(code) => return Err(BundleError::InstallFailed(code)),
                None => return Err(BundleError::InstallTimedOut(secs)),
            }
        }
        Ok(())
    }
    .await;
    remove_tree(&staged.dir).map_err(io("removing the staging directory"))?;
    match result {
        Ok(()) => Ok(PreparedBundle {
            config: staged.config,
        }),
        Err(e) => {
            let _ = remove_tree(&next);
            Err(e)
        }
    }
}

/// Makes a prepared bundle live: the next state replaces the state directory, and
/// `contract` takes the bundle's config.
pub fn commit_bundle(
    prepared: PreparedBundle,
    fs: &ContractFs,
    contract: &mut ContractSection,
) -> Result<(), BundleError> {
    let state = fs.state_dir();
    remove_tree(&fs.backup()).map_err(io("clearing the backup"))?;
    std::fs::rename(&state, fs.backup()).map_err(io("setting the old state aside"))?;
    if let Err(e) = std::fs::rename(fs.next(), &state) {
        let _ = std::fs::rename(fs.backup(), &state);
        return Err(io("moving the next state in")(e));
    }
    remove_tree(&fs.backup()).map_err(io("removing the old state"))?;
    contract.apply(&prepared.config);
    Ok(())
}

/// Drops a prepared bundle; the live state stays as it is.
pub fn abort_bundle(fs: &ContractFs) {
    if let Err(e) = remove_tree(&fs.next()) {
        tracing::warn!(error = %berth_log::chain(&e), "removing the next state directory failed");
    }
}

/// Validates, prepares and commits a bundle in one go (a node alone, or tests); on failure
/// the state directory is as before.
pub async fn install_bundle(
    zip_bytes: &[u8],
    fs: &ContractFs,
    limits: &BootstrapSection,
    contract: &mut ContractSection,
    jail: &crate::exec::Jail,
) -> Result<(), BundleError> {
    let staged = stage_bundle(zip_bytes, fs, limits)?;
    let prepared = prepare_bundle(staged, fs, limits, jail).await?;
    commit_bundle(prepared, fs, contract)
}

fn stage(zip_bytes: &[u8], fs: &ContractFs, max_unpacked: u64) -> Result<Staged, BundleError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes))
        .map_err(|e| BundleError::NotZip(e.to_string()))?;
    if archive.len() > MAX_BUNDLE_ENTRIES {
        return Err(BundleError::TooManyEntries);
    }
    let dir = fs.staging();
    remove_tree(&dir).map_err(io("clearing the staging directory"))?;
    std::fs::create_dir_all(&dir).map_err(io("creating the staging directory"))?;
    let outcome = unpack(&mut archive, &dir, max_unpacked).and_then(|()| read_config(&dir));
    match outcome {
        Ok((config, has_install)) => Ok(Staged {
            dir,
            config,
            has_install,
        }),
        Err(e) => {
            let _ = remove_tree(&dir);
            Err(e)
        }
    }
}

fn unpack(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    dir: &Path,
    max_unpacked: u64,
) -> Result<(), BundleError> {
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| BundleError::NotZip(e.to_string()))?;
        let name = entry.name().to_owned();
        let rel = safe_relative(&name).ok_or_else(|| BundleError::PathEscape(name.clone()))?;
        if entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000) {
            return Err(BundleError::Symlink(name));
        }
        let target = dir.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(io("creating a bundle directory"))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating a bundle directory"))?;
        }
        let remaining = max_unpacked.saturating_sub(total);
        let mut out = std::fs::File::create(&target).map_err(io("writing a bundle file"))?;
        let written = std::io::copy(&mut (&mut entry).take(remaining + 1), &mut out)
            .map_err(|e| BundleError::NotZip(format!("entry `{name}`: {e}")))?;
        total += written;
        if total > max_unpacked {
            return Err(BundleError::UnpackedTooLarge {
                limit: max_unpacked,
            });
        }
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let mode = (mode & 0o755) | 0o600;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(io("setting bundle file mode"))?;
        }
    }
    Ok(())
}

fn read_config(dir: &Path) -> Result<(ContractConfig, bool), BundleError> {
    let cfg_path = dir.join("contract.config");
    let text = std::fs::read(&cfg_path).map_err(|_| BundleError::NoConfig)?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| BundleError::BadConfig(e.to_string()))?;
    let override_path = dir.join("hp.cfg.override");
    if override_path.exists() {
        let text = std::fs::read(&override_path).map_err(io("reading hp.cfg.override"))?;
        let over: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| BundleError::BadOverride(e.to_string()))?;
        if let Some(section) = over.get("contract") {
            let Some(fields) = section.as_object() else {
                return Err(BundleError::BadOverride(
                    "`contract` is not an object".into(),
                ));
            };
            let Some(target) = value.as_object_mut() else {
                return Err(BundleError::BadConfig("not a JSON object".into()));
            };
            for (k, v) in fields {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    let config: ContractConfig =
        serde_json::from_value(value).map_err(|e| BundleError::BadConfig(e.to_string()))?;
    config.validate()?;
    let bin = Path::new(&config.bin_path);
    let exists = if bin.is_absolute() {
        bin.exists()
    } else {
        safe_relative(&config.bin_path).is_some_and(|rel| dir.join(rel).is_file())
    };
    if !exists {
        return Err(BundleError::MissingBinary(config.bin_path.clone()));
    }
    Ok((config, dir.join("install.sh").is_file()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn zip_slip_names_are_refused() {
        assert!(safe_relative("../evil").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert_eq!(safe_relative("./a/b").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn bootstrap_requests_are_recognised() {
        assert_eq!(
            parse_request(br#"{"type":"status"}"#, false),
            Some(BootstrapInput::Status)
        );
        assert_eq!(
            parse_request(br#"{"type":"upload","content":"AA=="}"#, false),
            Some(BootstrapInput::Upload { zip: Some(vec![0]) })
        );
        use crate::protocol::bson::{Bson, Doc};
        let bson = Doc::new()
            .with("type", Bson::String("upload".into()))
            .with("content", Bson::Binary(vec![7]));
        assert_eq!(
            parse_request(&bson.encode(), false),
            Some(BootstrapInput::Upload { zip: Some(vec![7]) })
        );
        assert_eq!(parse_request(b"hello", false), None);
        assert_eq!(parse_request(br#"{"type":"other"}"#, false), None);
        // Once installed, only the owner request form goes to the installer.
        assert_eq!(parse_request(br#"{"type":"status"}"#, true), None);
        let status = crate::protocol::bundle::OwnerRequest::Status.encode();
        assert_eq!(parse_request(&status, true), Some(BootstrapInput::Status));
        let spec = crate::protocol::bundle::ClusterSpec {
            unl: vec![format!("ed{}", "ab".repeat(32))],
            peers: vec!["10.0.0.1:22861".into()],
        };
        let cluster = crate::protocol::bundle::OwnerRequest::Cluster(spec.clone()).encode();
        for installed in [false, true] {
            assert_eq!(
                parse_request(&cluster, installed),
                Some(BootstrapInput::Cluster {
                    spec: Some(spec.clone())
                })
            );
        }
        let mut garbled = crate::protocol::bundle::OWNER_REQUEST_PREFIX.to_vec();
        garbled.extend_from_slice(b"C{\"unl\":7}");
        assert_eq!(
            parse_request(&garbled, true),
            Some(BootstrapInput::Cluster { spec: None })
        );
    }
}
