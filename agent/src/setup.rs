//! `berth-agent init`: the config file and the host's secret key, and loading them back.
//!
//! The host key file holds one XRPL family seed (`s…`), mode 0600. The message key (whose
//! public half is published as the account's `MessageKey`) is derived from it:
//! ed25519 seed = SHA-512-half(`berth/message-key/v1` ‖ seed entropy), so there is one secret
//! to back up. **Invariant:** no secret is ever logged or printed; `HostKeys`' `Debug` hides them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_schemas::config::{ConfigError, HostConfig};
use berth_schemas::key::PublicKey;
use berth_xrpl_core::address::decode_seed;
use berth_xrpl_core::{KeyPair, KeyType};
use ed25519_dalek::SigningKey;
use thiserror::Error;

/// Why `init` or loading the config or keys failed; names the file.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("{path} exists already; init refuses to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("key file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold a valid family seed")]
    BadSeed { path: PathBuf },
}

/// The host's keys: the account key (signs transactions) and the message key (opens requests).
pub struct HostKeys {
    pub account: KeyPair,
    pub message: SigningKey,
    seed: String,
}

impl std::fmt::Debug for HostKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeys")
            .field("address", &self.account.address())
            .field(
                "message_key",
                &self.message_public().map(|k| k.to_string()).ok(),
            )
            .finish_non_exhaustive()
    }
}

impl HostKeys {
    /// Keys of a family seed (`s…`).
    pub fn from_seed(seed: &str) -> Option<Self> {
        let account = KeyPair::from_seed(seed).ok()?;
        let (entropy, _) = decode_seed(seed).ok()?;
        Some(Self {
            account,
            message: berth_schemas::key::message_key_from_entropy(&entropy),
            seed: seed.to_owned(),
        })
    }

    /// A fresh copy of the account key pair (for the submitter).
    pub fn account_key(&self) -> KeyPair {
        KeyPair::from_seed(&self.seed).unwrap_or_else(|_| KeyPair::generate(KeyType::Ed25519))
    }

    pub fn address(&self) -> String {
        self.account.address()
    }

    /// The host's account, typed.
    pub fn account_address(&self) -> berth_schemas::field::AccountAddress {
        berth_schemas::field::AccountAddress::from_account_id(self.account.account_id())
    }

    /// The public message key, as published in `MessageKey`.
    pub fn message_public(&self) -> Result<PublicKey, berth_schemas::key::KeyError> {
        PublicKey::from_verifying_key(&self.message.verifying_key())
    }
}

/// Reads and validates a config file.
pub fn load_config(path: &Path) -> Result<HostConfig, SetupError> {
    let text = fs::read_to_string(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    HostConfig::from_toml(&text).map_err(|source| SetupError::Config {
        path: path.to_owned(),
        source,
    })
}

/// Reads the host key file, refusing one that group or others can read.
pub fn load_keys(path: &Path) -> Result<HostKeys, SetupError> {
    let metadata = fs::metadata(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SetupError::KeyFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(|source| SetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    HostKeys::from_seed(text.trim()).ok_or_else(|| SetupError::BadSeed {
        path: path.to_owned(),
    })
}

/// Writes a new file with `mode`, refusing to replace an existing one.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), SetupError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| SetupError::Write {
            path: parent.to_owned(),
            source,
        })?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SetupError::Exists {
                path: path.to_owned(),
            },
            _ => SetupError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| SetupError::Write {
            path: path.to_owned(),
            source,
        })
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub config_path: PathBuf,
    pub key_path: PathBuf,
    pub address: String,
    pub message_key: String,
}

/// Writes `config` to `config_path` and a new host key to its key file (0600). Refuses when
/// either exists. `seed` imports an existing account instead of generating one.
pub fn init(
    config_path: &Path,
    config: &HostConfig,
    seed: Option<&str>,
) -> Result<InitReport, SetupError> {
    config.validate().map_err(|source| SetupError::Config {
        path: config_path.to_owned(),
        source,
    })?;
    let key_path = config.key_file();
    for path in [config_path, key_path.as_path()] {
        if path.exists() {
            return Err(SetupError::Exists {
                path: path.to_owned(),
            });
        }
    }
    let seed = match seed {
        Some(seed) => seed.trim().to_owned(),
        None => KeyPair::generate(KeyType::Ed25519)
            .seed()
            .ok_or_else(|| SetupError::BadSeed {
                path: key_path.clone(),
            })?,
    };
    let keys = HostKeys::from_seed(&seed).ok_or_else(|| SetupError::BadSeed {
        path: key_path.clone(),
    })?;
    let message_key = keys
        .message_public()
        .map(|k| k.to_ledger_hex())
        .map_err(|_| SetupError::BadSeed {
            path: key_path.clone(),
        })?;
    write_new(&key_path, &format!("{seed}\n"), 0o600)?;
    write_new(config_path, &config.to_toml(), 0o644)?;
    fs::create_dir_all(&config.host.data_dir).map_err(|source| SetupError::Write {
        path: config.host.data_dir.clone(),
        source,
    })?;
    Ok(InitReport {
        config_path: config_path.to_owned(),
        key_path,
        address: keys.address(),
        message_key,
    })
}
