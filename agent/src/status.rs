//! `berth-agent status` and `leases`: a report read from the store (read-only, while `run`
//! runs). What only `run` knows (balance, registration, the ledger's tip, instance health) it
//! writes to the `settings` table, and the report reads it from there.

use std::fmt::Write as _;

use serde::Serialize;

use crate::store::{
    Cursor, ErrorRow, Lease, LeaseState, OutboxState, Reader, SlotState, StoreError,
};

/// Settings keys `run` writes for `status`.
pub mod keys {
    pub const HOST_ADDRESS: &str = "host_address";
    pub const BALANCE: &str = "balance_drops";
    pub const RESERVE: &str = "reserve_drops";
    pub const REGISTERED: &str = "registered";
    pub const LEDGER_TIP: &str = "ledger_tip";
    pub const HEARTBEAT: &str = "last_heartbeat";
    /// Prefix of `health:<instance>`.
    pub const HEALTH: &str = "health:";
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlotCounts {
    pub total: usize,
    pub offered: usize,
    pub leased: usize,
    /// Minting, offering, burning or held: not for sale right now.
    pub other: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseLine {
    #[serde(flatten)]
    pub lease: Lease,
    pub health: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    pub held: usize,
    pub pending: usize,
    pub prepared: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub host_address: Option<String>,
    pub balance_drops: Option<u64>,
    pub reserve_drops: Option<u64>,
    pub registered: bool,
    pub draining: bool,
    pub cursor: Option<Cursor>,
    pub ledger_tip: Option<u32>,
    /// Ledgers between the tip and the cursor.
    pub lag: Option<u32>,
    pub slots: SlotCounts,
    pub outbox: OutboxCounts,
    pub leases: Vec<LeaseLine>,
    pub recent_errors: Vec<ErrorRow>,
}

/// Live leases (or every lease with `all`), each with its last known health.
pub fn leases(read: &Reader<'_>, all: bool) -> Result<Vec<LeaseLine>, StoreError> {
    let states: &[LeaseState] = if all {
        &[]
    } else {
        &[
            LeaseState::Provisioning,
            LeaseState::Active,
            LeaseState::Grace,
            LeaseState::Ending,
        ]
    };
    read.leases(states)?
        .into_iter()
        .map(|lease| {
            let health = read.setting(&format!("{}{}", keys::HEALTH, lease.instance))?;
            Ok(LeaseLine { lease, health })
        })
        .collect()
}

pub fn report(read: &Reader<'_>) -> Result<StatusReport, StoreError> {
    let number = |key| -> Result<Option<u64>, StoreError> {
        Ok(read.setting(key)?.and_then(|v| v.parse().ok()))
    };
    let slots = read.slots()?;
    let count = |state| slots.iter().filter(|s| s.state == state).count();
    let offered = count(SlotState::Offered);
    let leased = count(SlotState::Leased);
    let outbox = read.outbox(&[
        OutboxState::Held,
        OutboxState::Pending,
        OutboxState::Prepared,
        OutboxState::Failed,
    ])?;
    let in_state = |state| outbox.iter().filter(|r| r.state == state).count();
    let cursor = read.cursor()?;
    let ledger_tip = number(keys::LEDGER_TIP)?.and_then(|v| u32::try_from(v).ok());
    Ok(StatusReport {
        host_address: read.setting(keys::HOST_ADDRESS)?,
        balance_drops: number(keys::BALANCE)?,
        reserve_drops: number(keys::RESERVE)?,
        registered: read.setting(keys::REGISTERED)?.as_deref() == Some("true"),
        draining: read.draining()?,
        lag: ledger_tip
            .zip(cursor)
            .map(|(tip, c)| tip.saturating_sub(c.ledger)),
        cursor,
        ledger_tip,
        slots: SlotCounts {
            total: slots.len(),
            offered,
            leased,
            other: slots.len() - offered - leased,
        },
        outbox: OutboxCounts {
            held: in_state(OutboxState::Held),
            pending: in_state(OutboxState::Pending),
            prepared: in_state(OutboxState::Prepared),
            failed: in_state(OutboxState::Failed),
        },
        leases: leases(read, false)?,
        recent_errors: read.recent_errors(10)?,
    })
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The lease table as text.
pub fn render_leases(leases: &[LeaseLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<35} {:>6} {:>6} {:>12} {:<14}",
        "INSTANCE", "STATE", "TENANT", "USER", "PEER", "EXPIRES_AT", "HEALTH"
    );
    for line in leases {
        let l = &line.lease;
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<35} {:>6} {:>6} {:>12} {:<14}",
            l.instance,
            l.state.as_str(),
            l.tenant,
            l.user_port,
            l.peer_port,
            l.expires_at,
            or_dash(line.health.as_deref())
        );
    }
    out
}

/// The status report as text.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host address   {}",
        or_dash(report.host_address.as_deref())
    );
    let _ = writeln!(
        out,
        "balance        {} drops (reserve {})",
        or_dash(report.balance_drops),
        or_dash(report.reserve_drops)
    );
    let _ = writeln!(out, "registered     {}", report.registered);
    let _ = writeln!(out, "draining       {}", report.draining);
    let _ = writeln!(
        out,
        "ledger cursor  {} (tip {}, lag {})",
        or_dash(report.cursor.map(|c| c.ledger)),
        or_dash(report.ledger_tip),
        or_dash(report.lag)
    );
    let s = &report.slots;
    let _ = writeln!(
        out,
        "slots          {} total: {} offered, {} leased, {} other",
        s.total, s.offered, s.leased, s.other
    );
    let o = &report.outbox;
    let _ = writeln!(
        out,
        "outbox         {} pending, {} prepared, {} held, {} failed",
        o.pending, o.prepared, o.held, o.failed
    );
    let _ = writeln!(out, "leases");
    out.push_str(&render_leases(&report.leases));
    let _ = writeln!(out, "recent errors");
    for error in &report.recent_errors {
        let _ = writeln!(out, "  {} {}: {}", error.at, error.context, error.message);
    }
    out
}
