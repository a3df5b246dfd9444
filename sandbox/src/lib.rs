//! `berth sandbox`: the whole marketplace on one machine, for newcomers and tests.
//!
//! - [`sandbox`]: [`sandbox::Sandbox`] runs localnet, a funded registry, host and tenant, and
//!   the host agent on the real Docker engine, in this process.
//! - [`demo`]: the tenant flow of `berth sandbox --demo`, over the tenant CLI's library.
//!
//! This crate holds everything a tenant's own `berth` does not need (the host agent, the
//! ledger server, the Docker client, SQLite). `berth sandbox` runs its binary,
//! `berth-sandbox`, found next to `berth` or on the PATH.
#![forbid(unsafe_code)]

pub mod demo;
pub mod sandbox;
