//! The HotPocket-compatible instance runtime that runs inside every instance.
//!
//! - [`protocol`]: wire formats (user messages, contract args, bundle `contract.config`).
//! - [`config`]: the node's `hp.cfg` in its state directory.
//! - [`node`]: start-up and shared state; `round`: the round loop (proposals, closing
//!   ledgers, executing them, output votes); [`consensus`]: the agreement rules as pure
//!   functions; [`peer`]: the peer port and its wire format; `server`: the user port;
//!   [`clock`]: the wall clock rounds are timed by.
//! - [`exec`]: running a contract; [`bootstrap`]: installing an owner's bundle.
//! - [`ledger`] and [`store`]: hash formulas and the SQLite record.
//! - [`client`]: the user-side library (used by tests and the tenant CLI).
//! - [`image`]: the build context of the instance image.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod client;
pub mod clock;
pub mod config;
pub mod consensus;
pub mod exec;
mod fsutil;
pub mod image;
pub mod ledger;
pub mod node;
pub mod peer;
pub mod protocol;
mod round;
mod server;
pub mod store;
pub mod tls;
