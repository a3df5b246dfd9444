//! The tenant's local record of leases and purchases in flight, under the tenant's home:
//! - `<home>/leases/<LEASE>.json`: one [`LeaseRecord`] per lease (the decrypted instance
//!   details, expiry, price), written when the host's answer is opened;
//! - `<home>/pending/<HASH>.json`: one [`PendingPurchase`] per purchase whose answer has not
//!   been read yet, written *before* the purchase is submitted, so an interrupted `acquire`
//!   resumes (`berth acquire --resume <HASH>`) without paying twice.
//!
//! Every file is written to a temporary name and renamed, so a crash leaves the old or the
//! new version, never half of one. The ledger stays the authority: `berth leases` rebuilds
//! missing records from the tenant's account history.

use std::path::{Path, PathBuf};

use berth_mb_xrpl::SignedTx;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Why the local record could not be read or written; names the file.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("no lease matches {arg:?} in {dir}; list them with `berth leases`")]
    NoMatch { arg: String, dir: PathBuf },
    #[error("{arg:?} matches {count} leases ({examples}); give more of the lease id")]
    Ambiguous {
        arg: String,
        count: usize,
        examples: String,
    },
}

/// How a lease ended, as far as the tenant knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// The tenant terminated it and the host confirmed.
    Terminated,
    /// Its end passed (and the token left the tenant's account).
    Expired,
}

/// One lease the tenant holds or held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease token's NFTokenID, 64 upper-case hex digits.
    pub lease: String,
    /// The host's account (the token's issuer).
    pub host: String,
    /// Hash of the purchase (`NFTokenAcceptOffer`).
    pub purchase: String,
    /// The instance's name on its host.
    pub name: String,
    /// Where the instance is reached (DNS name or IP).
    pub instance_host: String,
    pub user_port: u16,
    pub peer_port: u16,
    /// Where other nodes reach the peer port, when not at `instance_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_host: Option<String>,
    /// The instance node's public key (`ed…`).
    pub node_key: String,
    pub contract_id: String,
    /// End of the lease, Unix seconds.
    pub expires_at: u64,
    /// Price of one moment, drops, and the moment's length, from the token URI.
    pub price_drops: u64,
    pub moment_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

impl LeaseRecord {
    /// The node's peer port as other nodes dial it, `host:port`.
    pub fn peer_address(&self) -> String {
        let host = self.peer_host.as_deref().unwrap_or(&self.instance_host);
        if host.contains(':') {
            format!("[{host}]:{}", self.peer_port)
        } else {
            format!("{host}:{}", self.peer_port)
        }
    }

    /// The instance's user port as `wss://host:port`.
    pub fn instance_url(&self) -> String {
        if self.instance_host.contains(':') {
            format!("wss://[{}]:{}", self.instance_host, self.user_port)
        } else {
            format!("wss://{}:{}", self.instance_host, self.user_port)
        }
    }
}

/// A purchase submitted (or about to be) whose answer has not been read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingPurchase {
    /// The host's account.
    pub host: String,
    /// The lease token bought and the sell offer accepted.
    pub lease: String,
    pub offer: String,
    pub price_drops: u64,
    pub moment_secs: u32,
    pub contract_id: String,
    /// Moments asked for in all; more than one means an extension follows the purchase.
    pub moments: u32,
    /// The signed purchase, submitted again as it is (same hash) if it never reached the
    /// ledger.
    pub signed: SignedTx,
}

/// An extension or termination submitted (or about to be) whose answer has not been read:
/// the next command about the same lease finishes it instead of paying again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub lease: String,
    pub host: String,
    /// `extension` or `termination`.
    pub what: String,
    pub amount_drops: u64,
    /// The signed payment, submitted again as it is if it never reached the ledger.
    pub signed: SignedTx,
}

/// The tenant's lease book in `<home>`.
#[derive(Debug, Clone)]
pub struct Book {
    home: PathBuf,
}

impl Book {
    pub fn new(home: &Path) -> Book {
        Book {
            home: home.to_path_buf(),
        }
    }

    fn leases_dir(&self) -> PathBuf {
        self.home.join("leases")
    }

    fn pending_dir(&self) -> PathBuf {
        self.home.join("pending")
    }

    pub fn save_lease(&self, record: &LeaseRecord) -> Result<PathBuf, BookError> {
        write_json(&self.leases_dir(), &record.lease, record)
    }

    /// The record of `lease` (64 hex digits), if any.
    pub fn lease(&self, lease: &str) -> Result<Option<LeaseRecord>, BookError> {
        read_json(
            &self
                .leases_dir()
                .join(format!("{}.json", lease.to_uppercase())),
        )
    }

    /// Every lease record, sorted by expiry.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, BookError> {
        let mut all: Vec<LeaseRecord> = list_json(&self.leases_dir())?;
        all.sort_by(|a, b| (a.expires_at, &a.lease).cmp(&(b.expires_at, &b.lease)));
        Ok(all)
    }

    /// The one record whose lease id is `arg` or contains it (case-insensitive). The ids of
    /// one host's tokens share their first 48 hex digits (flags, fee, issuer), so the
    /// distinguishing part is the end: `berth` shows leases by their last 8 digits.
    pub fn find(&self, arg: &str) -> Result<LeaseRecord, BookError> {
        let want = arg.trim().to_uppercase();
        let all = self.leases()?;
        if let Some(exact) = all.iter().find(|r| r.lease == want) {
            return Ok(exact.clone());
        }
        let matches: Vec<&LeaseRecord> = all
            .iter()
            .filter(|r| !want.is_empty() && r.lease.contains(&want))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(BookError::NoMatch {
                arg: arg.to_owned(),
                dir: self.leases_dir(),
            }),
            many => Err(BookError::Ambiguous {
                arg: arg.to_owned(),
                count: many.len(),
                examples: many
                    .iter()
                    .take(3)
                    .map(|r| format!("…{}", short_lease(&r.lease)))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    pub fn save_pending(&self, pending: &PendingPurchase) -> Result<PathBuf, BookError> {
        write_json(&self.pending_dir(), &pending.signed.hash, pending)
    }

    pub fn pending(&self, hash: &str) -> Result<Option<PendingPurchase>, BookError> {
        read_json(
            &self
                .pending_dir()
                .join(format!("{}.json", hash.to_uppercase())),
        )
    }

    /// Forgets a pending purchase (its answer was read, or it provably never happened).
    pub fn remove_pending(&self, hash: &str) -> Result<(), BookError> {
        remove_json(&self.pending_dir(), hash)
    }

    fn clusters_dir(&self) -> PathBuf {
        self.home.join("clusters")
    }

    /// Writes a cluster's record (`<home>/clusters/<name>.json`).
    pub fn save_cluster<T: Serialize>(&self, name: &str, record: &T) -> Result<PathBuf, BookError> {
        std::fs::create_dir_all(self.clusters_dir())
            .map_err(io("creating", &self.clusters_dir()))?;
        let path = self.clusters_dir().join(format!("{name}.json"));
        let text = serde_json::to_vec_pretty(record).map_err(|e| BookError::Corrupt {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        crate::atomic::write(&path, &text, 0o644).map_err(io("writing", &path))?;
        Ok(path)
    }

    /// The record of cluster `name`, if any.
    pub fn cluster<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, BookError> {
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Ok(None);
        }
        read_json(&self.clusters_dir().join(format!("{name}.json")))
    }

    /// The path of cluster `name`'s record when it exists.
    pub fn cluster_path_if_exists(&self, name: &str) -> Option<PathBuf> {
        let path = self.clusters_dir().join(format!("{name}.json"));
        path.exists().then_some(path)
    }

    /// Every cluster record.
    pub fn clusters<T: DeserializeOwned>(&self) -> Result<Vec<T>, BookError> {
        list_json(&self.clusters_dir())
    }

    fn requests_dir(&self) -> PathBuf {
        self.home.join("requests")
    }

    pub fn save_request(&self, request: &PendingRequest) -> Result<PathBuf, BookError> {
        write_json(&self.requests_dir(), &request.signed.hash, request)
    }

    /// Requests about `lease` still in flight.
    pub fn requests_for(&self, lease: &str) -> Result<Vec<PendingRequest>, BookError> {
        let all: Vec<PendingRequest> = list_json(&self.requests_dir())?;
        Ok(all
            .into_iter()
            .filter(|r| r.lease.eq_ignore_ascii_case(lease))
            .collect())
    }

    /// Forgets a request (its answer was read, or it provably never happened).
    pub fn remove_request(&self, hash: &str) -> Result<(), BookError> {
        remove_json(&self.requests_dir(), hash)
    }
}

fn remove_json(dir: &Path, name: &str) -> Result<(), BookError> {
    let path = dir.join(format!("{}.json", name.to_uppercase()));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BookError::Io {
            step: "removing",
            path,
            source,
        }),
    }
}

/// The last 8 hex digits of a lease id (the token's sequence number on its host), which is
/// how `berth` shows a lease and what its commands accept.
pub fn short_lease(lease: &str) -> &str {
    lease.get(lease.len().saturating_sub(8)..).unwrap_or(lease)
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BookError {
    let path = path.to_path_buf();
    move |source| BookError::Io { step, path, source }
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<PathBuf, BookError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(format!("{}.json", name.to_uppercase()));
    let text = serde_json::to_vec_pretty(value).map_err(|e| BookError::Corrupt {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    crate::atomic::write(&path, &text, 0o644).map_err(io("writing", &path))?;
    Ok(path)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, BookError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BookError::Corrupt {
                path: path.to_path_buf(),
                problem: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

fn list_json<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, BookError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io("listing", dir))?.path();
        let is_record = path.extension().is_some_and(|e| e == "json")
            && !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
        if is_record {
            if let Some(value) = read_json(&path)? {
                out.push(value);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(lease: &str, expires_at: u64) -> LeaseRecord {
        LeaseRecord {
            lease: lease.to_owned(),
            host: "rHost".into(),
            purchase: "AB".repeat(32),
            name: "i-1".into(),
            instance_host: "127.0.0.1".into(),
            user_port: 26201,
            peer_port: 22861,
            peer_host: None,
            node_key: format!("ed{}", "11".repeat(32)),
            contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".into(),
            expires_at,
            price_drops: 1_000_000,
            moment_secs: 3600,
            ended: None,
        }
    }

    #[test]
    fn leases_are_found_by_prefix_and_ambiguity_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::new(dir.path());
        assert!(book.leases().unwrap().is_empty());
        let a = format!("000800{}", "A".repeat(58));
        let b = format!("000800{}", "B".repeat(58));
        book.save_lease(&record(&a, 20)).unwrap();
        book.save_lease(&record(&b, 10)).unwrap();
        assert_eq!(book.leases().unwrap()[0].lease, b, "sorted by expiry");
        assert_eq!(book.find(&a.to_lowercase()[..8]).unwrap().lease, a);
        assert_eq!(book.find(short_lease(&b)).unwrap().lease, b, "by its end");
        assert_eq!(book.lease(&b).unwrap().unwrap().expires_at, 10);
        let err = book.find("000800").unwrap_err().to_string();
        assert!(
            err.contains("matches 2 leases") && err.contains("give more"),
            "{err}"
        );
        let err = book.find("FFFF").unwrap_err().to_string();
        assert!(
            err.contains("no lease matches") && err.contains("berth leases"),
            "{err}"
        );
        assert_eq!(
            record(&a, 1).instance_url(),
            "wss://127.0.0.1:26201".to_owned()
        );
    }

    #[test]
    fn a_corrupt_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::new(dir.path());
        std::fs::create_dir_all(dir.path().join("leases")).unwrap();
        std::fs::write(dir.path().join("leases/X.json"), "{").unwrap();
        let err = book.leases().unwrap_err().to_string();
        assert!(err.contains("X.json") && err.contains("not valid"), "{err}");
    }
}
