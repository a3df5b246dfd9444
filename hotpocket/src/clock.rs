//! The wall clock rounds are timed by, as a narrow trait so that tests can give nodes
//! skewed clocks.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as this node sees them.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The system clock shifted by a fixed number of milliseconds (a node whose clock is off:
/// `hotpocket run --clock-skew-ms`, for tests of clock tolerance only).
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    pub skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.skew_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_runs_ahead_or_behind() {
        let now = SystemClock.now_ms();
        let ahead = SkewedClock { skew_ms: 10_000 }.now_ms();
        let behind = SkewedClock { skew_ms: -10_000 }.now_ms();
        assert!(ahead >= now + 10_000 && ahead < now + 11_000);
        assert!(behind + 10_000 >= now && behind + 9_000 < now);
    }
}
