//! Berth's wire and on-disk formats.
//!
//! Every format that crosses a process boundary (lease token URI, memo payloads,
//! sealed boxes, host registration, instance details, bundle `contract.config`,
//! host config) is defined here and nowhere else. This crate knows nothing of
//! tokio, SQLite or Docker.
#![forbid(unsafe_code)]
