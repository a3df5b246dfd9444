//! The tenant's settings: `<home>/settings.json`, which ledger and registry to use when no
//! `--ledger` / `--registry` flag or `BERTH_LEDGER` / `BERTH_REGISTRY` variable says.
//! `berth sandbox` writes it for the tenant home it creates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the settings inside the tenant's home.
pub const SETTINGS_FILE: &str = "settings.json";

/// Why the settings could not be read or written; names the file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file {path} is not valid: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Defaults for the ledger-facing commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// XRPL server, `ws://` or `wss://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
    /// The registry account hosts register with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

impl Settings {
    /// Reads `<home>/settings.json`; a missing file is empty settings.
    pub fn load(home: &Path) -> Result<Settings, SettingsError> {
        let path = home.join(SETTINGS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SettingsError::Corrupt {
                path,
                problem: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(source) => Err(SettingsError::Io {
                step: "reading",
                path,
                source,
            }),
        }
    }

    /// Writes `<home>/settings.json` (through a temporary file and a rename).
    pub fn save(&self, home: &Path) -> Result<PathBuf, SettingsError> {
        let path = home.join(SETTINGS_FILE);
        let io = |step: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SettingsError::Io { step, path, source }
        };
        std::fs::create_dir_all(home).map_err(io("creating", home))?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| SettingsError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        crate::atomic::write(&path, &text, 0o644).map_err(io("writing", &path))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_round_trip_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), Settings::default());
        let s = Settings {
            ledger: Some("ws://127.0.0.1:6006".into()),
            registry: Some("rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh".into()),
        };
        s.save(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join(SETTINGS_FILE), "{\"ledgr\": 1}").unwrap();
        let err = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("settings.json") && err.contains("ledgr"),
            "{err}"
        );
    }
}
