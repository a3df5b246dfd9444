//! The XRPL memo of each Berth message: `MemoType` names the message (`berth/…`),
//! `MemoFormat` is `application/json`, `MemoData` is the JSON payload (see
//! [`crate::payload`]). On the ledger the three are hex strings; here they are bytes.
//!
//! rippled refuses a transaction whose serialized `Memos` array exceeds 1024 bytes; a memo is
//! built only if it fits ([`MEMOS_LIMIT`], [`Memo::serialized_len`]).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::message::{
    Acquire, AcquireOk, Extend, ExtendOk, Failure, Heartbeat, HostDereg, HostInfo, Terminate,
    TerminateOk,
};
use crate::payload::{self, PayloadError};

/// rippled's limit on the serialized `Memos` array of one transaction (`STTx.cpp`, `isMemoOkay`).
pub const MEMOS_LIMIT: usize = 1024;

/// The `MemoFormat` of every Berth memo.
pub const MEMO_FORMAT: &str = "application/json";

/// The prefix of every Berth `MemoType`.
pub const TYPE_PREFIX: &str = "berth/";

/// One memo as raw bytes (the ledger shows each field as hex).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Memo {
    pub memo_type: Vec<u8>,
    pub memo_format: Vec<u8>,
    pub memo_data: Vec<u8>,
}

/// One memo as the ledger's JSON shows it: upper-case hex of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexMemo {
    pub memo_type: String,
    pub memo_format: String,
    pub memo_data: String,
}

/// Length of the prefix rippled writes before a variable-length field of `len` bytes.
fn vl_prefix_len(len: usize) -> usize {
    match len {
        0..=192 => 1,
        193..=12_480 => 2,
        _ => 3,
    }
}

impl Memo {
    /// Bytes this memo takes in the serialized `Memos` array (what rippled's 1024-byte limit
    /// counts): the `Memo` object header, each present field (1-byte field id, length prefix,
    /// bytes) and the object end marker.
    pub fn serialized_len(&self) -> usize {
        let field = |bytes: &[u8]| {
            if bytes.is_empty() {
                0
            } else {
                1 + vl_prefix_len(bytes.len()) + bytes.len()
            }
        };
        1 + field(&self.memo_type) + field(&self.memo_format) + field(&self.memo_data) + 1
    }

    pub fn to_hex(&self) -> HexMemo {
        HexMemo {
            memo_type: hex::encode_upper(&self.memo_type),
            memo_format: hex::encode_upper(&self.memo_format),
            memo_data: hex::encode_upper(&self.memo_data),
        }
    }

    /// Reads a memo as found in a transaction's JSON; absent fields are empty.
    pub fn from_hex(
        memo_type: Option<&str>,
        memo_format: Option<&str>,
        memo_data: Option<&str>,
    ) -> Result<Self, MemoError> {
        let decode = |field: &'static str, text: Option<&str>| {
            hex::decode(text.unwrap_or_default()).map_err(|_| MemoError::Hex { field })
        };
        Ok(Self {
            memo_type: decode("MemoType", memo_type)?,
            memo_format: decode("MemoFormat", memo_format)?,
            memo_data: decode("MemoData", memo_data)?,
        })
    }
}

macro_rules! memo_kinds {
    ($($kind:ident => $text:literal,)*) => {
        /// The `MemoType` of each Berth message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MemoKind {
            $($kind,)*
        }

        impl MemoKind {
            pub const ALL: &'static [MemoKind] = &[$(MemoKind::$kind,)*];

            /// The `MemoType` text, e.g. `berth/acquire`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(MemoKind::$kind => $text,)*
                }
            }
        }

        impl FromStr for MemoKind {
            type Err = MemoError;
            fn from_str(text: &str) -> Result<Self, MemoError> {
                match text {
                    $($text => Ok(MemoKind::$kind),)*
                    _ if text.starts_with(TYPE_PREFIX) => Err(MemoError::UnknownType { memo_type: text.to_owned() }),
                    _ => Err(MemoError::NotBerth { memo_type: text.to_owned() }),
                }
            }
        }
    };
}

memo_kinds! {
    Acquire => "berth/acquire",
    AcquireOk => "berth/acquire-ok",
    AcquireErr => "berth/acquire-err",
    Extend => "berth/extend",
    ExtendOk => "berth/extend-ok",
    ExtendErr => "berth/extend-err",
    Terminate => "berth/terminate",
    TerminateOk => "berth/terminate-ok",
    TerminateErr => "berth/terminate-err",
    Refund => "berth/refund",
    HostReg => "berth/host-reg",
    HostDereg => "berth/host-dereg",
    Heartbeat => "berth/heartbeat",
}

impl fmt::Display for MemoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a memo could not be built or read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemoError {
    #[error("memo: {field} is not hexadecimal")]
    Hex { field: &'static str },
    #[error("memo type {memo_type:?} is not a Berth message")]
    NotBerth { memo_type: String },
    #[error("memo type {memo_type:?} is not a Berth message this build knows")]
    UnknownType { memo_type: String },
    #[error("{kind}: MemoFormat {found:?} is not {MEMO_FORMAT:?}")]
    Format { kind: MemoKind, found: String },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("{kind}: memo takes {size} bytes on the ledger, over the limit of {MEMOS_LIMIT}")]
    TooLarge { kind: MemoKind, size: usize },
}

/// Every Berth message, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Acquire(Acquire),
    AcquireOk(AcquireOk),
    AcquireErr(Failure),
    Extend(Extend),
    ExtendOk(ExtendOk),
    ExtendErr(Failure),
    Terminate(Terminate),
    TerminateOk(TerminateOk),
    TerminateErr(Failure),
    Refund(Failure),
    HostReg(HostInfo),
    HostDereg(HostDereg),
    Heartbeat(Heartbeat),
}

impl Message {
    pub fn kind(&self) -> MemoKind {
        match self {
            Message::Acquire(_) => MemoKind::Acquire,
            Message::AcquireOk(_) => MemoKind::AcquireOk,
            Message::AcquireErr(_) => MemoKind::AcquireErr,
            Message::Extend(_) => MemoKind::Extend,
            Message::ExtendOk(_) => MemoKind::ExtendOk,
            Message::ExtendErr(_) => MemoKind::ExtendErr,
            Message::Terminate(_) => MemoKind::Terminate,
            Message::TerminateOk(_) => MemoKind::TerminateOk,
            Message::TerminateErr(_) => MemoKind::TerminateErr,
            Message::Refund(_) => MemoKind::Refund,
            Message::HostReg(_) => MemoKind::HostReg,
            Message::HostDereg(_) => MemoKind::HostDereg,
            Message::Heartbeat(_) => MemoKind::Heartbeat,
        }
    }

    /// The request transaction this message answers, for answers.
    pub fn answers(&self) -> Option<crate::field::TxHash> {
        match self {
            Message::AcquireOk(m) => Some(m.request),
            Message::ExtendOk(m) => Some(m.request),
            Message::TerminateOk(m) => Some(m.request),
            Message::AcquireErr(f)
            | Message::ExtendErr(f)
            | Message::TerminateErr(f)
            | Message::Refund(f) => Some(f.request),
            _ => None,
        }
    }

    /// The JSON payload (`MemoData`).
    pub fn payload(&self) -> Vec<u8> {
        match self {
            Message::Acquire(m) => payload::encode(m),
            Message::AcquireOk(m) => payload::encode(m),
            Message::Extend(m) => payload::encode(m),
            Message::ExtendOk(m) => payload::encode(m),
            Message::Terminate(m) => payload::encode(m),
            Message::TerminateOk(m) => payload::encode(m),
            Message::AcquireErr(f)
            | Message::ExtendErr(f)
            | Message::TerminateErr(f)
            | Message::Refund(f) => payload::encode(f),
            Message::HostReg(m) => payload::encode(m),
            Message::HostDereg(m) => payload::encode(m),
            Message::Heartbeat(m) => payload::encode(m),
        }
    }

    /// Builds the memo, refusing one that would not fit the ledger's limit on its own.
    pub fn to_memo(&self) -> Result<Memo, MemoError> {
        let kind = self.kind();
        let memo = Memo {
            memo_type: kind.as_str().as_bytes().to_vec(),
            memo_format: MEMO_FORMAT.as_bytes().to_vec(),
            memo_data: self.payload(),
        };
        let size = memo.serialized_len();
        if size > MEMOS_LIMIT {
            return Err(MemoError::TooLarge { kind, size });
        }
        Ok(memo)
    }

    /// Reads the Berth message of a transaction's memos: the first memo whose type starts with
    /// `berth/`, ignoring foreign memos. `None` when there is none.
    pub fn from_memos(memos: &[Memo]) -> Option<Result<Self, MemoError>> {
        memos
            .iter()
            .find(|memo| memo.memo_type.starts_with(TYPE_PREFIX.as_bytes()))
            .map(Self::from_memo)
    }

    /// Reads a memo. A memo whose type does not start with `berth/` gives
    /// [`MemoError::NotBerth`], so callers can skip foreign memos.
    pub fn from_memo(memo: &Memo) -> Result<Self, MemoError> {
        let memo_type = String::from_utf8_lossy(&memo.memo_type);
        let kind: MemoKind = memo_type.parse()?;
        if memo.memo_format != MEMO_FORMAT.as_bytes() {
            return Err(MemoError::Format {
                kind,
                found: String::from_utf8_lossy(&memo.memo_format).into_owned(),
            });
        }
        let format = kind.as_str();
        let data = &memo.memo_data;
        Ok(match kind {
            MemoKind::Acquire => Message::Acquire(payload::decode(format, data)?),
            MemoKind::AcquireOk => Message::AcquireOk(payload::decode(format, data)?),
            MemoKind::AcquireErr => Message::AcquireErr(payload::decode(format, data)?),
            MemoKind::Extend => Message::Extend(payload::decode(format, data)?),
            MemoKind::ExtendOk => Message::ExtendOk(payload::decode(format, data)?),
            MemoKind::ExtendErr => Message::ExtendErr(payload::decode(format, data)?),
            MemoKind::Terminate => Message::Terminate(payload::decode(format, data)?),
            MemoKind::TerminateOk => Message::TerminateOk(payload::decode(format, data)?),
            MemoKind::TerminateErr => Message::TerminateErr(payload::decode(format, data)?),
            MemoKind::Refund => Message::Refund(payload::decode(format, data)?),
            MemoKind::HostReg => Message::HostReg(payload::decode(format, data)?),
            MemoKind::HostDereg => Message::HostDereg(payload::decode(format, data)?),
            MemoKind::Heartbeat => Message::Heartbeat(payload::decode(format, data)?),
        })
    }
}
