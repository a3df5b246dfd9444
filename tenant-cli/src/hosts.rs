//! Host discovery: registrations and heartbeats from the registry account's history, then
//! each host's live lease offers checked on the ledger.

use std::collections::BTreeMap;

use berth_mb_xrpl::events::decode;
use berth_mb_xrpl::history::account_history;
use berth_mb_xrpl::{Client, ClientError, MarketEvent};
use berth_schemas::lease_uri::LeaseUri;
use berth_schemas::message::HostInfo;
use serde::Serialize;
use serde_json::{json, Value};

/// Errors naming the account or the ledger request.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("reading the registry {registry}")]
    Registry {
        registry: String,
        source: ClientError,
    },
    #[error("reading the offers of host {host}")]
    Offers { host: String, source: ClientError },
}

/// A live sell offer of one lease token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Offer {
    pub token_id: String,
    pub offer_id: String,
    pub amount_drops: u64,
    pub slot: u32,
    pub cpu_millicores: u32,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub moment_secs: u32,
}

/// One registered host.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub address: String,
    pub domain: String,
    /// Where its instances' peer ports are reached, when not at `domain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    pub country: String,
    pub version: String,
    pub slots: u32,
    pub moment_secs: u32,
    pub price_drops: u64,
    pub cpu_millicores: u32,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub registered_unix: Option<u64>,
    /// Close time of the latest heartbeat (or of the registration when none).
    pub last_seen_unix: Option<u64>,
    /// Free slots the last heartbeat announced.
    pub announced_free_slots: Option<u32>,
    /// Lease tokens of the host with a live sell offer on the ledger.
    pub offers: Vec<Offer>,
}

/// A host that has sent nothing to the registry for this many of its moments is silent: it
/// heartbeats once per moment, so its agent has missed two beats and would likely not
/// answer a purchase.
pub const SILENT_AFTER_MOMENTS: u64 = 3;

impl HostView {
    pub fn free_slots(&self) -> usize {
        self.offers.len()
    }

    /// Whether the host has been silent (no registration or heartbeat) for
    /// [`SILENT_AFTER_MOMENTS`] of its moments at `now_unix`.
    pub fn silent(&self, now_unix: u64) -> bool {
        let limit = SILENT_AFTER_MOMENTS.saturating_mul(u64::from(self.moment_secs));
        self.last_seen_unix
            .is_none_or(|t| now_unix.saturating_sub(t) > limit)
    }

    /// The cheapest live offer's price per moment.
    pub fn lowest_price(&self) -> Option<u64> {
        self.offers.iter().map(|o| o.amount_drops).min()
    }
}

/// Filters of `berth hosts`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub max_price_drops: Option<u64>,
    pub min_free: Option<usize>,
    pub min_memory_mb: Option<u32>,
    /// Hosts seen (heartbeat or registration) within this many seconds of `now_unix`.
    pub seen_within_secs: Option<u64>,
    /// Also list silent hosts ([`HostView::silent`]); they are left out by default.
    pub include_silent: bool,
    pub now_unix: u64,
}

impl Filter {
    /// Keeps the offers matching the price and memory filters; the host when it still has
    /// enough of them and was seen recently enough.
    pub fn apply(&self, mut host: HostView) -> Option<HostView> {
        host.offers.retain(|o| {
            self.max_price_drops.is_none_or(|max| o.amount_drops <= max)
                && self.min_memory_mb.is_none_or(|min| o.memory_mb >= min)
        });
        let enough = host.free_slots() >= self.min_free.unwrap_or(1);
        let recent = self.seen_within_secs.is_none_or(|within| {
            host.last_seen_unix
                .is_some_and(|t| self.now_unix.saturating_sub(t) <= within)
        });
        let alive = self.include_silent || !host.silent(self.now_unix);
        (enough && recent && alive).then_some(host)
    }
}

#[derive(Default)]
struct Seen {
    info: Option<HostInfo>,
    registered: Option<u64>,
    last_seen: Option<u64>,
    free: Option<u32>,
}

/// Hosts registered with `registry` (latest registration per host, none after a
/// deregistration) with their live offers, sorted by lowest price then address.
pub async fn list(client: &Client, registry: &str) -> Result<Vec<HostView>, HostsError> {
    let history = account_history(client, registry, 1)
        .await
        .map_err(|source| HostsError::Registry {
            registry: registry.to_owned(),
            source,
        })?;
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for tx in &history.transactions {
        match decode(tx, registry) {
            Some(MarketEvent::HostRegistration {
                host,
                to,
                info,
                close_time_unix,
                ..
            }) if to == registry => {
                let s = seen.entry(host).or_default();
                s.info = Some(info);
                s.registered = close_time_unix;
                s.last_seen = close_time_unix.max(s.last_seen);
            }
            Some(MarketEvent::HostDeregistration { host, to, .. }) if to == registry => {
                seen.remove(&host);
            }
            Some(MarketEvent::Heartbeat {
                host,
                to,
                heartbeat,
                close_time_unix,
                ..
            }) if to == registry => {
                let s = seen.entry(host).or_default();
                s.free = Some(heartbeat.free_slots);
                s.last_seen = close_time_unix.max(s.last_seen);
            }
            _ => {}
        }
    }
    let mut hosts = Vec::new();
    for (address, s) in seen {
        let Some(info) = s.info else { continue };
        let offers = live_offers(client, &address).await?;
        hosts.push(HostView {
            domain: text(&info.domain),
            peer_address: info.peer_address.as_ref().map(|p| p.as_str().to_owned()),
            country: info.country.as_str().to_owned(),
            version: info.version.as_str().to_owned(),
            slots: info.slots.get(),
            moment_secs: info.moment_secs.get(),
            price_drops: info.price.get(),
            cpu_millicores: info.cpu_millicores.get(),
            memory_mb: info.memory_mb.get(),
            disk_mb: info.disk_mb.get(),
            registered_unix: s.registered,
            last_seen_unix: s.last_seen,
            announced_free_slots: s.free,
            offers,
            address,
        });
    }
    hosts.sort_by(|a, b| {
        (a.lowest_price().unwrap_or(u64::MAX), &a.address)
            .cmp(&(b.lowest_price().unwrap_or(u64::MAX), &b.address))
    });
    Ok(hosts)
}

fn text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The host's tokens with a Berth lease URI that have a sell offer by the host, open to
/// anyone, for XRP.
pub async fn live_offers(client: &Client, host: &str) -> Result<Vec<Offer>, HostsError> {
    let err = |source| HostsError::Offers {
        host: host.to_owned(),
        source,
    };
    let mut tokens = Vec::new();
    let mut marker: Option<Value> = None;
    loop {
        let mut params = json!({"account": host, "limit": 400});
        if let Some(m) = marker.take() {
            params["marker"] = m;
        }
        let page = client.request("account_nfts", params).await.map_err(err)?;
        for nft in page["account_nfts"].as_array().into_iter().flatten() {
            let (Some(id), Some(uri)) = (nft["NFTokenID"].as_str(), nft["URI"].as_str()) else {
                continue;
            };
            if nft["Issuer"].as_str().is_some_and(|i| i != host) {
                continue;
            }
            if let Ok(lease) = LeaseUri::from_hex(uri) {
                tokens.push((id.to_owned(), lease));
            }
        }
        match page.get("marker") {
            Some(m) if !m.is_null() => marker = Some(m.clone()),
            _ => break,
        }
    }
    let mut offers = Vec::new();
    for (token_id, lease) in tokens {
        let result = match client
            .request("nft_sell_offers", json!({"nft_id": token_id}))
            .await
        {
            Ok(r) => r,
            Err(e) if e.rpc_error() == Some("objectNotFound") => continue,
            Err(e) => return Err(err(e)),
        };
        let live = result["offers"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|o| {
                let open = o.get("destination").is_none_or(Value::is_null);
                let by_host = o["owner"].as_str() == Some(host);
                let drops = o["amount"].as_str()?.parse::<u64>().ok()?;
                (open && by_host).then(|| (o["nft_offer_index"].as_str().map(str::to_owned), drops))
            });
        if let Some((Some(offer_id), amount_drops)) = live {
            offers.push(Offer {
                token_id,
                offer_id,
                amount_drops,
                slot: lease.slot,
                cpu_millicores: lease.cpu_millicores.get(),
                memory_mb: lease.memory_mb.get(),
                disk_mb: lease.disk_mb.get(),
                moment_secs: lease.moment_secs.get(),
            });
        }
    }
    Ok(offers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(price: u64, memory_mb: u32) -> Offer {
        Offer {
            token_id: format!("T{price}-{memory_mb}"),
            offer_id: "O".into(),
            amount_drops: price,
            slot: 0,
            cpu_millicores: 1000,
            memory_mb,
            disk_mb: 1000,
            moment_secs: 60,
        }
    }

    fn host(last_seen: Option<u64>, offers: Vec<Offer>) -> HostView {
        HostView {
            address: "rHost".into(),
            domain: "h.example".into(),
            peer_address: None,
            country: "DE".into(),
            version: "0.1.0".into(),
            slots: 2,
            moment_secs: 60,
            price_drops: 10,
            cpu_millicores: 2000,
            memory_mb: 2048,
            disk_mb: 2000,
            registered_unix: last_seen,
            last_seen_unix: last_seen,
            announced_free_slots: None,
            offers,
        }
    }

    #[test]
    fn filters_drop_offers_then_hosts() {
        let now = 1_000;
        let h = || host(Some(900), vec![offer(10, 512), offer(50, 4096)]);
        let f = |f: Filter| f.apply(h()).map(|h| h.offers.len());
        let base = Filter {
            now_unix: now,
            ..Filter::default()
        };
        assert_eq!(f(base.clone()), Some(2));
        assert_eq!(
            f(Filter {
                max_price_drops: Some(10),
                ..base.clone()
            }),
            Some(1)
        );
        assert_eq!(
            f(Filter {
                max_price_drops: Some(9),
                ..base.clone()
            }),
            None
        );
        assert_eq!(
            f(Filter {
                min_memory_mb: Some(1024),
                ..base.clone()
            }),
            Some(1)
        );
        assert_eq!(
            f(Filter {
                min_free: Some(3),
                ..base.clone()
            }),
            None
        );
        assert_eq!(
            f(Filter {
                seen_within_secs: Some(100),
                ..base.clone()
            }),
            Some(2)
        );
        assert_eq!(
            f(Filter {
                seen_within_secs: Some(99),
                ..base.clone()
            }),
            None
        );
        // Silent for more than three moments (60 s each): left out unless asked for.
        let silent = || host(Some(now - 181), vec![offer(10, 512)]);
        assert!(base.apply(silent()).is_none());
        assert!(base
            .apply(host(Some(now - 180), vec![offer(10, 512)]))
            .is_some());
        let with_silent = Filter {
            include_silent: true,
            ..base.clone()
        };
        assert!(with_silent.apply(silent()).is_some());
        // No offer at all: not listed; never seen: not listed when recency is asked.
        assert!(base.apply(host(Some(900), vec![])).is_none());
        let recent = Filter {
            seen_within_secs: Some(10_000),
            ..base
        };
        assert!(recent.apply(host(None, vec![offer(1, 1)])).is_none());
    }
}
