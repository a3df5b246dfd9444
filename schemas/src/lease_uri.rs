//! The URI of a lease token (`NFTokenMint.URI`, 1 to 256 bytes on the ledger).
//!
//! Version 1 is ASCII text, fields separated by `:`, every number in canonical decimal
//! (digits only, no sign, no leading zero):
//!
//! ```text
//! berth:1:<slot>:<cpu_millicores>:<memory_mb>:<disk_mb>:<price_drops>:<moment_secs>
//! berth:1:0:1000:2048:10240:1000000:3600
//! ```
//!
//! Text rather than a binary layout: explorers and `account_nfts` show the URI decoded, so a
//! person can read a lease; the fields cost 30 to 60 bytes, well inside the 256-byte limit,
//! and the canonical form makes each lease's URI unique.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use thiserror::Error;

use crate::field::{parse_canonical_u64, Drops};

/// The text every lease URI starts with.
pub const PREFIX: &str = "berth:";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// The ledger's limit on `URI`.
pub const MAX_URI_BYTES: usize = 256;

/// The fields after the prefix, in order.
const FIELDS: [&str; 7] = [
    "version",
    "slot",
    "cpu_millicores",
    "memory_mb",
    "disk_mb",
    "price_drops",
    "moment_secs",
];

/// Why bytes are not a version-1 lease URI; `field` names the bad field.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LeaseUriError {
    #[error("lease uri: {len} bytes, expected 1 to {MAX_URI_BYTES}")]
    Length { len: usize },
    #[error("lease uri: does not start with {PREFIX:?}, not a Berth lease")]
    NotBerth,
    #[error("lease uri: not ASCII text")]
    NotText,
    #[error("lease uri: not hexadecimal")]
    NotHex,
    #[error(
        "lease uri: field `version`: unsupported version {found:?}, this build reads {VERSION}"
    )]
    Version { found: String },
    #[error("lease uri: expected {expected} fields after {PREFIX:?}, got {found}")]
    FieldCount { expected: usize, found: usize },
    #[error("lease uri: field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

/// What a lease token sells: one slot of a given size, priced per moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseUri {
    /// Index of the slot on its host, from 0.
    pub slot: u32,
    pub cpu_millicores: NonZeroU32,
    pub memory_mb: NonZeroU32,
    pub disk_mb: NonZeroU32,
    /// Price of one moment.
    pub price: Drops,
    /// Length of one moment in seconds.
    pub moment_secs: NonZeroU32,
}

impl LeaseUri {
    /// The URI bytes (ASCII), as given to `NFTokenMint`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Upper-case hex of the bytes, as the ledger's JSON writes `URI`.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.to_bytes())
    }

    /// Parses URI bytes. [`LeaseUriError::NotBerth`] means a foreign token, not a bad one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LeaseUriError> {
        if bytes.is_empty() || bytes.len() > MAX_URI_BYTES {
            return Err(LeaseUriError::Length { len: bytes.len() });
        }
        if !bytes.starts_with(PREFIX.as_bytes()) {
            return Err(LeaseUriError::NotBerth);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| LeaseUriError::NotText)?;
        text.parse()
    }

    /// Parses the ledger's hex form of `URI`.
    pub fn from_hex(text: &str) -> Result<Self, LeaseUriError> {
        let bytes = hex::decode(text).map_err(|_| LeaseUriError::NotHex)?;
        Self::from_bytes(&bytes)
    }
}

fn number(field: &'static str, text: &str) -> Result<u64, LeaseUriError> {
    parse_canonical_u64(field, text).map_err(|e| LeaseUriError::Field {
        field,
        problem: e.to_string(),
    })
}

fn u32_field(field: &'static str, text: &str) -> Result<u32, LeaseUriError> {
    let value = number(field, text)?;
    u32::try_from(value).map_err(|_| LeaseUriError::Field {
        field,
        problem: format!("{value} is larger than {}", u32::MAX),
    })
}

fn positive(field: &'static str, text: &str) -> Result<NonZeroU32, LeaseUriError> {
    NonZeroU32::new(u32_field(field, text)?).ok_or(LeaseUriError::Field {
        field,
        problem: "must be at least 1".to_owned(),
    })
}

impl FromStr for LeaseUri {
    type Err = LeaseUriError;

    fn from_str(text: &str) -> Result<Self, LeaseUriError> {
        if text.is_empty() || text.len() > MAX_URI_BYTES {
            return Err(LeaseUriError::Length { len: text.len() });
        }
        let rest = text.strip_prefix(PREFIX).ok_or(LeaseUriError::NotBerth)?;
        if !rest.is_ascii() {
            return Err(LeaseUriError::NotText);
        }
        let parts: Vec<&str> = rest.split(':').collect();
        // The version decides the layout, so check it before counting fields.
        if parts[0] != VERSION.to_string() {
            return Err(LeaseUriError::Version {
                found: parts[0].to_owned(),
            });
        }
        let [_, slot, cpu, memory, disk, price, moment] = parts[..] else {
            return Err(LeaseUriError::FieldCount {
                expected: FIELDS.len(),
                found: parts.len(),
            });
        };
        Ok(Self {
            slot: u32_field(FIELDS[1], slot)?,
            cpu_millicores: positive(FIELDS[2], cpu)?,
            memory_mb: positive(FIELDS[3], memory)?,
            disk_mb: positive(FIELDS[4], disk)?,
            price: Drops::new(number(FIELDS[5], price)?).map_err(|e| LeaseUriError::Field {
                field: FIELDS[5],
                problem: e.to_string(),
            })?,
            moment_secs: positive(FIELDS[6], moment)?,
        })
    }
}

impl fmt::Display for LeaseUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{VERSION}:{}:{}:{}:{}:{}:{}",
            self.slot,
            self.cpu_millicores,
            self.memory_mb,
            self.disk_mb,
            self.price,
            self.moment_secs
        )
    }
}
