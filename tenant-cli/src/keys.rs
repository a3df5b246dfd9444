//! The tenant's key store: one XRPL wallet and one HotPocket user key (ed25519), kept in
//! `<home>/keys.json` with mode 0600 inside a 0700 directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use berth_xrpl_core::{KeyPair, KeyType};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// File name of the key store inside the tenant's home.
pub const KEYS_FILE: &str = "keys.json";

/// Key store errors naming the file or the bad value.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("keys already exist in {0}; pass --force to replace them")]
    Exists(PathBuf),
    #[error("no keys in {0}; create them with `berth keys new` or `berth keys import`")]
    Missing(PathBuf),
    #[error("bad XRPL seed: {0}")]
    BadSeed(String),
    #[error("bad HotPocket user key: {0}")]
    BadUserKey(String),
    #[error("key file {path} is not valid: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("setting the MessageKey")]
    Ledger(#[from] berth_mb_xrpl::SubmitError),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeysError {
    let path = path.to_path_buf();
    move |source| KeysError::Io { step, path, source }
}

/// The stored form.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    xrpl_seed: String,
    hotpocket_secret: String,
}

/// The tenant's keys.
pub struct Keys {
    pub wallet: KeyPair,
    pub user: SigningKey,
}

/// What `keys show` prints; secrets only when asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysView {
    pub address: String,
    pub key_type: String,
    pub public_key: String,
    pub hotpocket_public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpocket_secret: Option<String>,
}

impl Keys {
    /// Fresh keys of the given XRPL key type.
    pub fn generate(key_type: KeyType) -> Keys {
        Keys {
            wallet: KeyPair::generate(key_type),
            user: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Keys from an XRPL seed (`s…`) and, optionally, a HotPocket secret (64 hex chars);
    /// without one a fresh user key is made.
    pub fn import(seed: &str, user_secret_hex: Option<&str>) -> Result<Keys, KeysError> {
        let wallet =
            KeyPair::from_seed(seed.trim()).map_err(|e| KeysError::BadSeed(e.to_string()))?;
        let user = match user_secret_hex {
            Some(hex) => parse_user_secret(hex)?,
            None => SigningKey::generate(&mut rand::rngs::OsRng),
        };
        Ok(Keys { wallet, user })
    }

    /// The tenant's message key: hosts seal instance details to its public half (named as
    /// `reply_key` in every request and published as the account's `MessageKey`). Derived
    /// from the wallet seed as the host's is (`berth_schemas::key::message_key_from_entropy`).
    pub fn message_key(&self) -> Result<SigningKey, KeysError> {
        let seed = self
            .wallet
            .seed()
            .ok_or_else(|| KeysError::BadSeed("the wallet has no seed".into()))?;
        let (entropy, _) = berth_xrpl_core::address::decode_seed(&seed)
            .map_err(|e| KeysError::BadSeed(e.to_string()))?;
        Ok(berth_schemas::key::message_key_from_entropy(&entropy))
    }

    /// The public half of [`Keys::message_key`].
    pub fn message_public(&self) -> Result<berth_schemas::key::PublicKey, KeysError> {
        berth_schemas::key::PublicKey::from_verifying_key(&self.message_key()?.verifying_key())
            .map_err(|e| KeysError::BadSeed(format!("message key: {e}")))
    }

    /// The HotPocket user public key as HotPocket writes it (`ed` + 64 hex).
    pub fn user_pubkey_hex(&self) -> String {
        berth_hotpocket_client::protocol::pubkey_hex(&self.user.verifying_key())
    }

    pub fn view(&self, show_secrets: bool) -> KeysView {
        KeysView {
            address: self.wallet.address(),
            key_type: self.wallet.key_type().as_str().to_owned(),
            public_key: self.wallet.public_key_hex(),
            hotpocket_public_key: self.user_pubkey_hex(),
            seed: show_secrets.then(|| self.wallet.seed()).flatten(),
            hotpocket_secret: show_secrets.then(|| hex::encode(self.user.to_bytes())),
        }
    }

    /// Writes the keys to `<home>/keys.json` (0600); refuses to replace existing keys
    /// unless `force`.
    pub fn save(&self, home: &Path, force: bool) -> Result<PathBuf, KeysError> {
        let path = home.join(KEYS_FILE);
        if path.exists() && !force {
            return Err(KeysError::Exists(path));
        }
        std::fs::create_dir_all(home).map_err(io_err("creating", home))?;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting", home))?;
        let seed = self
            .wallet
            .seed()
            .ok_or_else(|| KeysError::BadSeed("the wallet has no seed to store".into()))?;
        let stored = Stored {
            xrpl_seed: seed,
            hotpocket_secret: hex::encode(self.user.to_bytes()),
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(|e| KeysError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        crate::atomic::write(&path, &text, 0o600).map_err(io_err("writing", &path))?;
        Ok(path)
    }

    /// Loads `<home>/keys.json`.
    pub fn load(home: &Path) -> Result<Keys, KeysError> {
        let path = home.join(KEYS_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeysError::Missing(path))
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let corrupt = |problem: String| KeysError::Corrupt {
            path: path.clone(),
            problem,
        };
        let stored: Stored = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        let wallet = KeyPair::from_seed(&stored.xrpl_seed)
            .map_err(|e| corrupt(format!("xrpl_seed: {e}")))?;
        let user = parse_user_secret(&stored.hotpocket_secret)
            .map_err(|e| corrupt(format!("hotpocket_secret: {e}")))?;
        Ok(Keys { wallet, user })
    }
}

fn parse_user_secret(text: &str) -> Result<SigningKey, KeysError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| KeysError::BadUserKey(format!("not hex ({e}); expected 64 hex chars")))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        KeysError::BadUserKey(format!("{} bytes; expected 32 (64 hex chars)", b.len()))
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// The tenant's home: `$BERTH_HOME`, else `~/.berth`.
pub fn default_home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("BERTH_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".berth"))
}

/// Sets the account's `MessageKey` to the tenant's message key and waits for validation.
pub async fn set_message_key(
    client: &berth_mb_xrpl::Client,
    keys: &Keys,
) -> Result<berth_mb_xrpl::Validated, KeysError> {
    let seed = keys
        .wallet
        .seed()
        .ok_or_else(|| KeysError::BadSeed("the wallet has no seed".into()))?;
    let wallet = KeyPair::from_seed(&seed).map_err(|e| KeysError::BadSeed(e.to_string()))?;
    let submitter = berth_mb_xrpl::Submitter::new(
        client.clone(),
        wallet,
        berth_mb_xrpl::SubmitConfig::default(),
    )?;
    let tx = serde_json::json!({
        "TransactionType": "AccountSet",
        "Account": keys.wallet.address(),
        "MessageKey": keys.message_public()?.to_ledger_hex(),
    });
    let signed = submitter.prepare(tx).await?;
    Ok(submitter.submit_and_wait(&signed).await?)
}
