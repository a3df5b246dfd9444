//! Fault injection for the kill-and-restart tests: when the environment variable
//! `BERTH_AGENT_FAILPOINT` names a point, the process sends itself SIGKILL on reaching it (no
//! destructors, no flush: what a crash or `kill -9` does). Unset, a point costs one comparison.
//!
//! Built only with the `failpoints` feature (this crate's tests enable it); without it
//! [`hit`] is an empty inline function and the environment is never read.
//!
//! Points: `acquire-recorded` (lease row committed, no instance yet), `acquire-started`
//! (instance running, acquire-ok not queued), `answer-prepared` (an answer signed and stored,
//! not submitted), `extend-recorded` (extension committed), `end-begun` (lease marked ending,
//! instance not destroyed), `end-destroyed` (instance destroyed, lease not marked ended).

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

#[cfg(feature = "failpoints")]
static POINT: OnceLock<Option<String>> = OnceLock::new();

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Kills the process with SIGKILL when `point` is the configured failpoint.
#[cfg(feature = "failpoints")]
pub fn hit(point: &str) {
    let configured = POINT.get_or_init(|| std::env::var("BERTH_AGENT_FAILPOINT").ok());
    if configured.as_deref() != Some(point) {
        return;
    }
    tracing::warn!(
        point,
        "failpoint reached: killing this process with SIGKILL"
    );
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    // SIGKILL is asynchronous only in theory; never go on past a failpoint.
    std::thread::sleep(std::time::Duration::from_secs(60));
    std::process::abort();
}
