//! Prometheus metrics: counters and histograms the machine feeds as it works, gauges read
//! from the store at each scrape, and [`serve`], the `GET /metrics` endpoint on the loopback
//! address of `agent.metrics`.
//!
//! Names: `berth_leases{state}`, `berth_slots{state}` (every slot state, and `free`: slots
//! not leased), `berth_pool_instances{state}`, `berth_outbox_depth`,
//! `berth_outbox_oldest_age_seconds`, `berth_ledger_lag_ledgers`,
//! `berth_answer_latency_seconds`, `berth_provisioning_seconds{source}`,
//! `berth_refunds_total{reason}`, `berth_errors_total{context}`.

use std::sync::Arc;

use berth_schemas::message::ReasonCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::machine::Machine;
use crate::status::keys;
use crate::store::{Reader, StateTable, StoreError};

type Labels = Vec<(&'static str, String)>;

fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

fn buckets() -> Histogram {
    // 50 ms to ~100 s.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

/// Why the metrics endpoint could not start.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {address}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    leases: Family<Labels, Gauge>,
    slots: Family<Labels, Gauge>,
    pool: Family<Labels, Gauge>,
    outbox_depth: Gauge,
    outbox_oldest_age: Gauge,
    ledger_lag: Gauge,
    answer_latency: Histogram,
    provisioning: Family<Labels, Histogram, fn() -> Histogram>,
    refunds: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let leases = Family::<Labels, Gauge>::default();
        let slots = Family::<Labels, Gauge>::default();
        let pool = Family::<Labels, Gauge>::default();
        let outbox_depth = Gauge::default();
        let outbox_oldest_age = Gauge::default();
        let ledger_lag = Gauge::default();
        let answer_latency = buckets();
        let provisioning = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            buckets as fn() -> Histogram,
        );
        let refunds = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        registry.register("leases", "Leases by state", leases.clone());
        registry.register(
            "slots",
            "Slots by state; state=free counts the slots no lease holds",
            slots.clone(),
        );
        registry.register(
            "pool_instances",
            "Pooled instances (started, no owner yet) by state",
            pool.clone(),
        );
        registry.register(
            "outbox_depth",
            "Outbox rows not yet on the ledger (pending or signed)",
            outbox_depth.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest outbox row not yet on the ledger",
            outbox_oldest_age.clone(),
        );
        registry.register(
            "ledger_lag_ledgers",
            "Validated ledgers seen but not yet handled (tip minus cursor)",
            ledger_lag.clone(),
        );
        registry.register(
            "answer_latency_seconds",
            "From an answer's outbox row being written to its validation",
            answer_latency.clone(),
        );
        registry.register(
            "provisioning_seconds",
            "Bringing up a lease's instance; source=pool (assigned) or create",
            provisioning.clone(),
        );
        registry.register("refunds", "Refused requests by reason", refunds.clone());
        registry.register("errors", "Errors by context", errors.clone());
        Self {
            registry,
            leases,
            slots,
            pool,
            outbox_depth,
            outbox_oldest_age,
            ledger_lag,
            answer_latency,
            provisioning,
            refunds,
            errors,
        }
    }

    /// A request was refused (and refunded) for `code`.
    pub fn refused(&self, code: ReasonCode) {
        let reason = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{code:?}"));
        self.refunds.get_or_create(&label("reason", reason)).inc();
    }

    /// An error was recorded in `context`.
    pub fn error(&self, context: &str) {
        self.errors.get_or_create(&label("context", context)).inc();
    }

    /// An instance was brought up for a lease in `seconds`.
    pub fn provisioned(&self, pooled: bool, seconds: f64) {
        let source = if pooled { "pool" } else { "create" };
        self.provisioning
            .get_or_create(&label("source", source))
            .observe(seconds);
    }

    /// An answer validated `seconds` after it was queued.
    pub fn answered(&self, seconds: f64) {
        self.answer_latency.observe(seconds);
    }

    /// Reads the gauges from the store.
    pub fn refresh(&self, reader: &Reader<'_>) -> Result<(), StoreError> {
        for (family, table) in [
            (&self.leases, StateTable::Leases),
            (&self.slots, StateTable::Slots),
            (&self.pool, StateTable::Pool),
        ] {
            family.clear();
            if table == StateTable::Pool {
                for state in ["creating", "ready"] {
                    family.get_or_create(&label("state", state)).set(0);
                }
            }
            let counts = reader.counts_by_state(table)?;
            if table == StateTable::Slots {
                let free: u64 = counts
                    .iter()
                    .filter(|(state, _)| state != "leased")
                    .map(|(_, n)| n)
                    .sum();
                family
                    .get_or_create(&label("state", "free"))
                    .set(gauge(free));
            }
            for (state, n) in counts {
                family.get_or_create(&label("state", state)).set(gauge(n));
            }
        }
        let (depth, oldest) = reader.outbox_backlog()?;
        self.outbox_depth.set(gauge(depth));
        let now = crate::store::now_secs();
        self.outbox_oldest_age
            .set(gauge(oldest.map_or(0, |t| now.saturating_sub(t))));
        let tip: Option<u64> = reader
            .setting(keys::LEDGER_TIP)?
            .and_then(|t| t.parse().ok());
        let cursor = reader.cursor()?.map(|c| u64::from(c.ledger));
        self.ledger_lag.set(gauge(match (tip, cursor) {
            (Some(tip), Some(cursor)) => tip.saturating_sub(cursor),
            _ => 0,
        }));
        Ok(())
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Binds the metrics endpoint; refuses a non-loopback address.
pub async fn bind(address: std::net::SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind { address, source })
}

/// Answers `GET /metrics` (anything else: 404) until `shutdown`; one scrape at a time.
pub async fn serve(
    listener: tokio::net::TcpListener,
    machine: Arc<Machine>,
    shutdown: CancellationToken,
) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "metrics endpoint listening");
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        if read.is_err() {
            continue;
        }
        let wanted = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
        let response = if wanted {
            let refreshed = machine
                .metrics()
                .refresh(&machine.store().read())
                .map(|()| machine.metrics().encode());
            match refreshed {
                Ok(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                Err(e) => {
                    let body = format!("cannot read the store: {e}\n");
                    format!(
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
            }
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        if let Err(e) = stream.write_all(response.as_bytes()).await {
            debug!(error = %berth_log::chain(&e), "metrics scrape dropped");
        }
        let _ = stream.shutdown().await;
    }
}
