//! `berth-agent run` (being wired to berth-mb-xrpl).

use crate::setup::HostKeys;
use berth_schemas::config::HostConfig;

/// Runs the agent until SIGTERM.
pub fn main(_config: HostConfig, _keys: HostKeys) -> anyhow::Result<()> {
    anyhow::bail!("run is not wired to the ledger client yet")
}
