//! The Berth host agent: lease state machine, SQLite store and the host CLI.
//!
//! - [`store`]: the SQLite store (WAL, versioned schema, outbox, cursor).
//! - [`ledger`]: the narrow ledger boundary: actions, events, the [`ledger::Ledger`] trait.
//! - [`machine`]: the lease state machine over the store, a provisioner and a ledger;
//!   [`outbox`]: the worker that signs, submits and settles its rows.
//! - [`metrics`]: Prometheus metrics and their loopback endpoint.
//! - [`run`]: the supervisor: the agent's named tasks under one cancellation token.
//! - [`setup`]: `init`, the config file and the host key; [`status`]: `status` and `leases`.
//! - `test_support` (with the `failpoints` feature only): the end-to-end harness of the
//!   agent's tests and benchmarks.
#![forbid(unsafe_code)]

pub mod failpoint;
pub mod ledger;
pub mod machine;
pub mod metrics;
pub mod outbox;
pub mod run;
pub mod setup;
pub mod status;
pub mod store;
#[cfg(feature = "failpoints")]
pub mod test_support;
pub mod xrpl;

/// The agent's database file: `<data_dir>/agent.db`.
pub fn database_path(config: &berth_schemas::config::HostConfig) -> std::path::PathBuf {
    config.host.data_dir.join("agent.db")
}
