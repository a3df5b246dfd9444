//! Berth's wire and on-disk formats.
//!
//! Every format that crosses a process boundary is defined here and nowhere else:
//!
//! - [`lease_uri`]: the URI of a lease token (`berth:1:…`, on the ledger in `NFTokenMint`);
//! - [`memo`]: the XRPL memo triple (`MemoType` / `MemoFormat` / `MemoData`) of every Berth
//!   message, with the ledger's 1024-byte budget enforced when a memo is built;
//! - [`message`]: the typed payloads carried by those memos (acquire, extend, terminate,
//!   refunds, host registration, heartbeat) and the sealed payloads inside them;
//! - [`sealed`]: the sealed box (ephemeral X25519, HKDF-SHA256, AES-256-GCM) addressed to an
//!   account's ed25519 `MessageKey`;
//! - [`checkpoint`]: a cluster's checkpoint memo (`berth/checkpoint`), anchored on the ledger
//!   by a transaction its nodes multi-sign;
//! - [`config`]: the host agent's TOML configuration file.
//!
//! The byte-by-byte description for third parties is `schemas/README.md`; JSON Schema files
//! for the JSON payloads live in `schemas/json/`.
//!
//! **Invariant**: this crate knows nothing of tokio, SQLite or Docker, and no function in it
//! panics on outside input.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod field;
pub mod key;
pub mod lease_uri;
pub mod memo;
pub mod message;
pub mod payload;
pub mod sealed;
