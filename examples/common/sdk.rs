#![allow(dead_code)]
//! A minimal HotPocket contract kit for Rust contracts: the args document, inputs from the
//! memory file, length-prefixed outputs, and the inherited descriptors. It depends on
//! serde_json only, so contract binaries stay small.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};

/// The parts of the args document these contracts use.
#[derive(Debug)]
pub struct Args {
    pub readonly: bool,
    pub user_in_fd: i32,
    /// Per user: output fd and `[offset, length]` of each input.
    pub users: BTreeMap<String, (i32, Vec<(u64, u64)>)>,
    /// The whole document.
    pub raw: serde_json::Value,
}

/// Errors a contract meets reading its round.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("reading the args document from stdin")]
    ReadArgs(#[source] std::io::Error),
    #[error("parsing the args document")]
    ParseArgs(#[source] serde_json::Error),
    #[error("args document field `{0}` missing or malformed")]
    Field(&'static str),
    #[error("reading input at offset {offset} length {len}")]
    ReadInput {
        offset: u64,
        len: u64,
        source: std::io::Error,
    },
}

/// Reads and parses the args JSON (stdin until EOF).
pub fn read_args(mut reader: impl Read) -> Result<Args, ContractError> {
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(ContractError::ReadArgs)?;
    let raw: serde_json::Value = serde_json::from_slice(&text).map_err(ContractError::ParseArgs)?;
    let fd = |v: &serde_json::Value| v.as_i64().and_then(|n| i32::try_from(n).ok());
    let user_in_fd = raw
        .get("user_in_fd")
        .and_then(fd)
        .ok_or(ContractError::Field("user_in_fd"))?;
    let readonly = raw
        .get("readonly")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut users = BTreeMap::new();
    let list = raw
        .get("users")
        .and_then(|v| v.as_object())
        .ok_or(ContractError::Field("users"))?;
    for (key, entry) in list {
        let items = entry.as_array().ok_or(ContractError::Field("users"))?;
        let out_fd = items
            .first()
            .and_then(fd)
            .ok_or(ContractError::Field("users"))?;
        let mut spans = Vec::new();
        for span in &items[1..] {
            let pair = span.as_array().ok_or(ContractError::Field("users"))?;
            match (
                pair.first().and_then(|v| v.as_u64()),
                pair.get(1).and_then(|v| v.as_u64()),
            ) {
                (Some(off), Some(len)) => spans.push((off, len)),
                _ => return Err(ContractError::Field("users")),
            }
        }
        users.insert(key.clone(), (out_fd, spans));
    }
    Ok(Args {
        readonly,
        user_in_fd,
        users,
        raw,
    })
}

/// Takes ownership of an inherited descriptor named in the args document.
///
/// Call at most once per number, and only with numbers from the args: HotPocket opened
/// them for this process and nothing else in it owns them.
#[allow(unsafe_code)]
pub fn take_fd(fd: i32) -> OwnedFd {
    // SAFETY: the node passed `fd` open to this process for the contract's exclusive use,
    // and callers take each number once (see above).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads one input `[offset, length]` from the inputs memory file.
pub fn read_input(inputs: &std::fs::File, span: (u64, u64)) -> Result<Vec<u8>, ContractError> {
    let (offset, len) = span;
    let size = usize::try_from(len).map_err(|_| ContractError::ReadInput {
        offset,
        len,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "input too large"),
    })?;
    let mut buf = vec![0u8; size];
    inputs
        .read_exact_at(&mut buf, offset)
        .map_err(|source| ContractError::ReadInput {
            offset,
            len,
            source,
        })?;
    Ok(buf)
}

/// Writes one output message: 4-byte big-endian length, then the bytes.
pub fn write_output(out: &mut impl Write, msg: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "output over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(msg)?;
    out.flush()
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
