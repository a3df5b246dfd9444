//! An XRP-Ledger-compatible ledger server in standalone mode.
//!
//! `berth-localnet` serves rippled's WebSocket and JSON-RPC API for the methods and
//! transaction types Berth uses, with real signatures, transaction IDs, NFToken IDs,
//! offer indexes, reserves, result codes and metadata. Ledgers close on a timer (or
//! on `ledger_accept`) and count as validated at once.
//!
//! Layers, bottom up: [`state`] (ledger objects with snapshots), [`engine`] (checks
//! and applies one transaction), [`node`] (the chain: open ledger, closes, history,
//! events), [`store`] (SQLite persistence), [`rpc`] (API methods), [`server`]
//! (WebSocket and HTTP).
#![forbid(unsafe_code)]

pub mod engine;
pub mod node;
pub mod rpc;
pub mod server;
pub mod state;
pub mod store;

pub use node::{GENESIS_ADDRESS, GENESIS_SEED};
pub use server::{Config, Localnet, StartError};
