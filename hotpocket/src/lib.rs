//! The HotPocket-compatible instance runtime that runs inside every instance.
//!
//! - `protocol`: the wire formats, from `berth-hotpocket-client` (which also holds the
//!   user-side client the tenant CLI and the tests use).
//! - [`config`]: the node's `hp.cfg` in its state directory.
//! - [`node`]: start-up and shared state; `round`: the round loop (proposals, closing
//!   ledgers, executing them, output votes); [`consensus`]: the agreement rules as pure
//!   functions; [`peer`]: the peer port and its wire format; `server`: the user port;
//!   [`clock`]: the wall clock rounds are timed by.
//! - [`exec`]: running a contract; [`bootstrap`]: installing an owner's bundle.
//! - [`ledger`] and [`store`]: hash formulas and the SQLite record.
//! - [`image`]: the build context of the instance image.
//! - [`anchor`]: what the node signs for the cluster's checkpoints on the XRP Ledger.
#![forbid(unsafe_code)]

/// The wire formats live in `berth-hotpocket-client`, shared with the tenant CLI; the runtime
/// names them `crate::protocol`.
use berth_hotpocket_client::protocol;

pub mod anchor;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod confine;
pub mod consensus;
pub mod contract_log;
pub mod exec;
mod fsutil;
pub mod history;
pub mod image;
pub mod ledger;
pub mod node;
pub mod peer;
pub mod readview;
pub mod replay;
mod round;
mod server;
pub mod state;
pub mod store;
mod sync;
pub mod tls;
