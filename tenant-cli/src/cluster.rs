//! Clusters: one contract run by nodes on several hosts, as one thing the tenant names.
//!
//! `create` buys the nodes' leases together, each purchase asking the host for a node that
//! awaits its cluster (`await_cluster`: it closes no ledger yet); once every host answered
//! with its node's key and peer address, the owner's cluster request (`ClusterSpec`: the
//! whole UNL and the peers) goes to every node, which then start from the same genesis. Then
//! the bundle is deployed through any node and `create` returns once every node follows the
//! cluster's ledgers (a node in sync proposes).
//!
//! The cluster's record (`<home>/clusters/<name>.json`) is written before anything is paid
//! and after every step, with the purchases' hashes, so `create --resume` finishes from what
//! the record, the ledger and the nodes say and never buys a node twice: a purchase in the
//! record is finished (its signed blob re-submitted, or its answer read), never made again.
//!
//! Changing the members (`add_node`, `remove_node`, `replace_node`) sends a new
//! `ClusterSpec` to a live node: it is an input like any other, so the UNL changes at the
//! same ledger on every node. A new node joins as an observer (awaiting, then told the
//! current UNL without itself), catches up, and only then is added; a removed node's lease
//! ends only after the UNL without it is agreed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_hotpocket_client::protocol::bundle::{BootstrapReply, ClusterSpec};
use berth_schemas::message::{ContractConfig, InstanceImage, Ranged};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::book::{Book, BookError, LeaseRecord};
use crate::hosts::{self, HostView};
use crate::instance::{Instance, InstanceError};
use crate::lease::{self, AcquireOptions, LeaseError, Progress, Tenant};

/// Why a cluster command failed; each names the cluster, node or host.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("a cluster needs 1 to {max} nodes, not {nodes}")]
    BadSize { nodes: usize, max: usize },
    #[error("`{0}` is not a usable cluster name: 1 to 40 of a-z, 0-9, '-' and '_'")]
    BadName(String),
    #[error("cluster {name} exists already in {path}; pick another --name, or finish it with `berth cluster create --resume {name}`")]
    Exists { name: String, path: String },
    #[error("no cluster named {name} in this home (see `berth cluster list`)")]
    Unknown { name: String },
    #[error("{wanted} nodes on distinct hosts, but only {found} live host(s) have a free slot{names}; add --allow-same-host, or name hosts with --hosts")]
    NotEnoughHosts {
        wanted: usize,
        found: usize,
        names: String,
    },
    #[error("--hosts names {host} twice: two nodes on one host fail together; pass --allow-same-host to allow it")]
    SameHost { host: String },
    #[error("--hosts names {given} host(s) for {wanted} node(s)")]
    HostCount { given: usize, wanted: usize },
    #[error("node {node} of cluster {cluster} ({host}): {source}")]
    Node {
        cluster: String,
        node: usize,
        host: String,
        #[source]
        source: Box<LeaseError>,
    },
    #[error("node {node} of cluster {cluster} at {addr}")]
    Instance {
        cluster: String,
        node: usize,
        addr: String,
        #[source]
        source: Box<InstanceError>,
    },
    #[error("node {node} of cluster {cluster} refused the cluster request: {message}")]
    Refused {
        cluster: String,
        node: usize,
        message: String,
    },
    #[error("cluster {cluster} refused the bundle: {message}")]
    BundleRefused { cluster: String, message: String },
    #[error("cluster {cluster}: {what} after {secs} s ({detail}); the record is kept: run the command again to go on")]
    Timeout {
        cluster: String,
        what: &'static str,
        secs: u64,
        detail: String,
    },
    #[error("cluster {cluster} has no node {node} (nodes are numbered from 1; see `berth cluster status`)")]
    NoSuchNode { cluster: String, node: String },
    #[error("cluster {cluster}: no node answers; {detail}")]
    NoLiveNode { cluster: String, detail: String },
    #[error("cluster {cluster} would have no node left")]
    LastNode { cluster: String },
    #[error(transparent)]
    Lease(Box<LeaseError>),
    #[error(transparent)]
    Book(#[from] BookError),
}

impl From<LeaseError> for ClusterError {
    fn from(e: LeaseError) -> Self {
        ClusterError::Lease(Box::new(e))
    }
}

/// A node of a cluster as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The host's account.
    pub host: String,
    /// The purchase's hash: written before it is submitted, so a resume finishes it.
    pub purchase: String,
    /// The lease token, once known (the offer bought names it before the answer).
    pub lease: String,
    pub state: NodeState,
    /// The `peer_address` of the host's registration, when it names one: where other
    /// nodes dial this node's peer port instead of the instance's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_host: Option<String>,
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Purchase signed (and maybe submitted); no answer read yet.
    Buying,
    /// The host answered with the instance's details (in the lease book).
    Leased,
    /// Leased, following the cluster as an observer, not yet in the UNL.
    Joining,
    /// In the cluster's UNL.
    Member,
    /// Out of the UNL, lease being ended.
    Leaving,
    /// The purchase was refused (refunded) or the lease ended.
    Gone,
}

/// A cluster's record, `<home>/clusters/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    pub contract_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roundtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// The nodes' instance image, when not the hosts' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<InstanceImage>,
    /// Nodes wanted.
    pub size: usize,
    pub allow_same_host: bool,
    /// Hosts to use first, in order (`--hosts`).
    #[serde(default)]
    pub hosts: Vec<String>,
    pub nodes: Vec<ClusterNode>,
    /// The nodes were sent the cluster request.
    pub wired: bool,
    /// blake-free fingerprint of the bundle deployed (its length and FNV-1a), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    /// The cluster's account on the XRP Ledger, once `berth cluster anchor --setup` made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<crate::anchor::AnchorAccount>,
}

impl ClusterRecord {
    /// The index of a node named by its 1-based number or the end of its lease id; a node
    /// that is gone is not found.
    pub fn node_index(&self, node: &str) -> Result<usize, ClusterError> {
        let want = node.trim().to_uppercase();
        let by_number = want
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=self.nodes.len()).contains(n))
            .map(|n| n - 1);
        by_number
            .or_else(|| {
                self.nodes
                    .iter()
                    .position(|n| !want.is_empty() && n.lease.ends_with(&want))
            })
            .filter(|i| self.nodes[*i].state != NodeState::Gone)
            .ok_or_else(|| ClusterError::NoSuchNode {
                cluster: self.name.clone(),
                node: node.to_owned(),
            })
    }

    pub(crate) fn live_nodes(&self) -> impl Iterator<Item = (usize, &ClusterNode)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !matches!(n.state, NodeState::Gone))
    }
}

/// What `create` asks for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub nodes: usize,
    pub hosts: Vec<String>,
    pub allow_same_host: bool,
    pub roundtime_ms: Option<u64>,
    pub threshold: Option<u32>,
    pub image: Option<InstanceImage>,
    pub max_price_drops: Option<u64>,
    pub allow_silent: bool,
    /// How long to wait for each host's answer and for the cluster to agree.
    pub wait: Duration,
}

/// How long `status` waits for each node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest cluster `create` makes (the UNL of a cluster request may hold more).
pub const MAX_NODES: usize = 16;

/// One node as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// 1-based, as commands name it.
    pub node: usize,
    pub host: String,
    pub state: NodeState,
    pub lease: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcl_seq_no: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcl_hash: Option<String>,
    pub in_sync: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vote_status: Option<String>,
    pub peers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `cluster status` and what `create` returns.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub name: String,
    pub contract_id: String,
    pub nodes: Vec<NodeView>,
    /// The highest ledger that in-sync nodes report (the cluster's last agreed ledger).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcl_seq_no: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcl_hash: Option<String>,
    /// Nodes in sync / nodes in the UNL.
    pub in_sync: usize,
    pub members: usize,
}

/// Seconds each phase of `create` took (for people and the benchmark report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateTimings {
    pub purchases_secs: f64,
    pub wired_secs: f64,
    pub first_agreed_ledger_secs: f64,
    pub deployed_secs: f64,
    pub total_secs: f64,
}

/// What `create` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub cluster: ClusterView,
    pub timings: CreateTimings,
}

/// Closes the connection to node `i` and returns the installer's answer it gave; a transport
/// error names the node.
async fn closed_answer(
    record: &ClusterRecord,
    i: usize,
    node: Instance,
    reply: Result<BootstrapReply, InstanceError>,
) -> Result<BootstrapReply, ClusterError> {
    let addr = node.addr().to_owned();
    node.close().await;
    reply.map_err(|e| ClusterError::Instance {
        cluster: record.name.clone(),
        node: i + 1,
        addr,
        source: Box::new(e),
    })
}

fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadName(name.to_owned()))
    }
}

/// A bundle's fingerprint for the record (not a security check: the nodes verify bundles).
fn fingerprint(zip: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in zip {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}:{hash:016x}", zip.len())
}

/// The tenant's clusters: records in the book's home, operations over a [`Tenant`].
pub struct Clusters<'a> {
    pub tenant: &'a Tenant,
    pub book: Book,
    /// The owner's HotPocket key (signs cluster requests and uploads).
    pub user: &'a SigningKey,
    /// Connect and answer timeout for each node.
    pub node_timeout: Duration,
}

impl Clusters<'_> {
    pub fn load(&self, name: &str) -> Result<ClusterRecord, ClusterError> {
        self.book
            .cluster(name)?
            .ok_or_else(|| ClusterError::Unknown {
                name: name.to_owned(),
            })
    }

    pub(crate) fn save(&self, record: &ClusterRecord) -> Result<(), ClusterError> {
        self.book.save_cluster(&record.name, record)?;
        Ok(())
    }

    /// Creates a cluster (or, with `resume`, finishes the one named) and returns once every
    /// node follows its ledgers.
    pub async fn create(
        &self,
        name: Option<String>,
        registry: &str,
        opts: &CreateOptions,
        bundle: Option<&[u8]>,
        progress: Progress<'_>,
    ) -> Result<Created, ClusterError> {
        let started = Instant::now();
        if opts.nodes == 0 || opts.nodes > MAX_NODES {
            return Err(ClusterError::BadSize {
                nodes: opts.nodes,
                max: MAX_NODES,
            });
        }
        if !opts.hosts.is_empty() && opts.hosts.len() != opts.nodes {
            return Err(ClusterError::HostCount {
                given: opts.hosts.len(),
                wanted: opts.nodes,
            });
        }
        if !opts.allow_same_host {
            let mut seen = BTreeSet::new();
            if let Some(host) = opts.hosts.iter().find(|h| !seen.insert(h.as_str())) {
                return Err(ClusterError::SameHost { host: host.clone() });
            }
        }
        let contract_id = lease::random_contract_id().to_string();
        let name = name.unwrap_or_else(|| format!("c-{}", &contract_id[..8]));
        check_name(&name)?;
        if let Some(path) = self.book.cluster_path_if_exists(&name) {
            return Err(ClusterError::Exists {
                name,
                path: path.display().to_string(),
            });
        }
        let record = ClusterRecord {
            name,
            contract_id,
            roundtime_ms: opts.roundtime_ms,
            threshold: opts.threshold,
            image: opts.image,
            size: opts.nodes,
            allow_same_host: opts.allow_same_host,
            hosts: opts.hosts.clone(),
            nodes: Vec::new(),
            wired: false,
            deployed: None,
            anchor: None,
        };
        self.save(&record)?;
        self.finish_create(record, registry, opts, bundle, started, progress)
            .await
    }

    /// `create --resume <name>`: finishes what the record says is left.
    pub async fn resume(
        &self,
        name: &str,
        registry: &str,
        opts: &CreateOptions,
        bundle: Option<&[u8]>,
        progress: Progress<'_>,
    ) -> Result<Created, ClusterError> {
        let record = self.load(name)?;
        progress(&format!(
            "resuming cluster {name}: {} of {} node(s) bought so far",
            record
                .nodes
                .iter()
                .filter(|n| n.state != NodeState::Gone && n.state != NodeState::Buying)
                .count(),
            record.size
        ));
        self.finish_create(record, registry, opts, bundle, Instant::now(), progress)
            .await
    }

    async fn finish_create(
        &self,
        mut record: ClusterRecord,
        registry: &str,
        opts: &CreateOptions,
        bundle: Option<&[u8]>,
        started: Instant,
        progress: Progress<'_>,
    ) -> Result<Created, ClusterError> {
        let mut timings = CreateTimings::default();
        let config = ContractConfig {
            await_cluster: true,
            roundtime_ms: record
                .roundtime_ms
                .map(Ranged::new)
                .transpose()
                .map_err(|e| LeaseError::Build(format!("roundtime: {e}")))?,
            threshold: record
                .threshold
                .map(|t| Ranged::new(u64::from(t)))
                .transpose()
                .map_err(|e| LeaseError::Build(format!("threshold: {e}")))?,
            image: record.image,
            ..ContractConfig::default()
        };
        // 1. Every node bought: purchases in the record are finished, missing ones made.
        self.buy_nodes(&mut record, registry, opts, &config, progress)
            .await?;
        timings.purchases_secs = started.elapsed().as_secs_f64();
        // 2. The cluster request to every node (a node that has it answers ok again).
        if !record.wired {
            let spec = self.spec(&record, &[])?;
            progress(&format!(
                "wiring {} node(s) into one UNL and peer mesh…",
                spec.unl.len()
            ));
            let members: Vec<usize> = record.live_nodes().map(|(i, _)| i).collect();
            for i in members {
                self.send_spec(&record, i, &spec).await?;
                record.nodes[i].state = NodeState::Member;
            }
            record.wired = true;
            self.save(&record)?;
        }
        timings.wired_secs = started.elapsed().as_secs_f64();
        // 3. Every node in sync: ledgers close with all of them proposing.
        progress("waiting for the first ledgers agreed by every node…");
        let view = self.wait_in_sync(&record, opts.wait, progress).await?;
        timings.first_agreed_ledger_secs = started.elapsed().as_secs_f64();
        progress(&format!(
            "cluster {} agreed on ledger {} with all {} node(s)",
            record.name,
            view.lcl_seq_no.unwrap_or(0),
            view.members
        ));
        // 4. The bundle, through any node: it goes live on every node at one ledger.
        if let Some(zip) = bundle {
            let print = fingerprint(zip);
            if record.deployed.as_deref() != Some(print.as_str()) {
                self.deploy(&record, zip, progress).await?;
                record.deployed = Some(print);
                self.save(&record)?;
            }
        }
        timings.deployed_secs = started.elapsed().as_secs_f64();
        let cluster = self.status(&record).await?;
        timings.total_secs = started.elapsed().as_secs_f64();
        Ok(Created { cluster, timings })
    }

    /// Hosts to buy from: the named ones in order, else live hosts with a free slot,
    /// cheapest first, never one already used (unless allowed).
    async fn pick_hosts(
        &self,
        record: &ClusterRecord,
        registry: &str,
        opts: &CreateOptions,
        wanted: usize,
    ) -> Result<Vec<String>, ClusterError> {
        let used: BTreeSet<&str> = record.live_nodes().map(|(_, n)| n.host.as_str()).collect();
        let tried: BTreeSet<&str> = record
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Gone)
            .map(|n| n.host.as_str())
            .collect();
        if !record.hosts.is_empty() {
            let remaining: Vec<String> = record
                .hosts
                .iter()
                .filter(|h| record.allow_same_host || !used.contains(h.as_str()))
                .filter(|h| !tried.contains(h.as_str()))
                .take(wanted)
                .cloned()
                .collect();
            if remaining.len() >= wanted {
                return Ok(remaining);
            }
        }
        let listed = hosts::list(self.tenant.client(), registry)
            .await
            .map_err(LeaseError::from)?;
        let now = lease::now_unix();
        let mut candidates: Vec<HostView> = listed
            .into_iter()
            .filter(|h| h.free_slots() > 0 && (opts.allow_silent || !h.silent(now)))
            .filter(|h| {
                opts.max_price_drops
                    .is_none_or(|max| h.lowest_price().unwrap_or(u64::MAX) <= max)
            })
            .filter(|h| !tried.contains(h.address.as_str()))
            .collect();
        candidates.sort_by_key(|h| (h.lowest_price().unwrap_or(u64::MAX), h.address.clone()));
        let mut picked = Vec::new();
        for h in &candidates {
            let slots = if record.allow_same_host {
                h.free_slots()
            } else if used.contains(h.address.as_str()) {
                0
            } else {
                1
            };
            for _ in 0..slots {
                if picked.len() < wanted {
                    picked.push(h.address.clone());
                }
            }
        }
        if picked.len() < wanted {
            return Err(ClusterError::NotEnoughHosts {
                wanted,
                found: picked.len(),
                names: if picked.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", picked.join(", "))
                },
            });
        }
        Ok(picked)
    }

    /// Buys what the record lacks, all purchases submitted together, and finishes the ones
    /// in flight. Each purchase is in the record before it is submitted.
    async fn buy_nodes(
        &self,
        record: &mut ClusterRecord,
        registry: &str,
        opts: &CreateOptions,
        config: &ContractConfig,
        progress: Progress<'_>,
    ) -> Result<(), ClusterError> {
        let have = record.live_nodes().count();
        if have < record.size {
            let wanted = record.size - have;
            let hosts = self.pick_hosts(record, registry, opts, wanted).await?;
            let mut spend = 0u64;
            let peer_hosts = self.peer_hosts(registry).await?;
            let mut acquire = AcquireOptions {
                contract_id: Some(
                    record
                        .contract_id
                        .parse()
                        .map_err(|e| LeaseError::Build(format!("contract id: {e}")))?,
                ),
                max_price_drops: opts.max_price_drops,
                moments: 1,
                wait: opts.wait,
                allow_silent: opts.allow_silent,
                config: Some(config.clone()),
                avoid_offers: Vec::new(),
            };
            for host in &hosts {
                let pending = self
                    .tenant
                    .prepare_purchase(host, &acquire, false)
                    .await
                    .map_err(|e| self.node_error(record, record.nodes.len(), host, e))?;
                spend = spend.saturating_add(pending.price_drops);
                // Two nodes on one host (when allowed) take two of its offers.
                acquire.avoid_offers.push(pending.offer.clone());
                record.nodes.push(ClusterNode {
                    host: host.clone(),
                    purchase: pending.signed.hash.clone(),
                    lease: pending.lease.clone(),
                    state: NodeState::Buying,
                    peer_host: peer_hosts.get(host).cloned(),
                });
                self.save(record)?;
            }
            self.tenant
                .check_funds(spend, u32::try_from(hosts.len()).unwrap_or(u32::MAX))
                .await?;
            progress(&format!(
                "cluster {}: buying {} lease(s) from {} — if this is interrupted, `berth cluster create --resume {}` finishes it without paying twice",
                record.name,
                hosts.len(),
                hosts.join(", "),
                record.name
            ));
        }
        // Every purchase in flight, finished together.
        let buying: Vec<usize> = record
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.state == NodeState::Buying)
            .map(|(i, _)| i)
            .collect();
        if buying.is_empty() {
            return Ok(());
        }
        let shared = Mutex::new(progress);
        let say = |line: &str| {
            if let Ok(mut p) = shared.lock() {
                (*p)(line)
            }
        };
        let finishing = buying.iter().map(|&i| {
            let node = record.nodes[i].clone();
            let say = &say;
            async move {
                let mut p = |line: &str| say(&format!("node {}: {line}", i + 1));
                let result = match self.book.pending(&node.purchase) {
                    Ok(Some(pending)) => self.tenant.finish(pending, opts.wait, &mut p).await,
                    Ok(None) => self.tenant.resume(&node.purchase, opts.wait, &mut p).await,
                    Err(e) => Err(e.into()),
                };
                (i, result)
            }
        });
        let results = futures_util::future::join_all(finishing).await;
        let mut failed = Vec::new();
        for (i, result) in results {
            match result {
                Ok(acquired) => {
                    record.nodes[i].lease = acquired.record.lease.clone();
                    record.nodes[i].state = NodeState::Leased;
                }
                Err(
                    e @ (LeaseError::Refused { .. }
                    | LeaseError::OfferGone { .. }
                    | LeaseError::NeverValidated { .. }
                    | LeaseError::TxFailed { .. }),
                ) => {
                    // Nothing is held (refunded, or never paid): a resume buys elsewhere.
                    record.nodes[i].state = NodeState::Gone;
                    failed.push(self.node_error(record, i, &record.nodes[i].host.clone(), e));
                }
                Err(e) => failed.push(self.node_error(record, i, &record.nodes[i].host.clone(), e)),
            }
        }
        self.save(record)?;
        match failed.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    fn node_error(
        &self,
        record: &ClusterRecord,
        i: usize,
        host: &str,
        e: LeaseError,
    ) -> ClusterError {
        ClusterError::Node {
            cluster: record.name.clone(),
            node: i + 1,
            host: host.to_owned(),
            source: Box::new(e),
        }
    }

    /// The lease record of a node, with the peer address its host registered.
    pub(crate) fn lease_of(&self, node: &ClusterNode) -> Result<LeaseRecord, ClusterError> {
        let mut lease = self.book.find(&node.lease)?;
        if lease.peer_host.is_none() {
            lease.peer_host = node.peer_host.clone();
        }
        Ok(lease)
    }

    /// The `peer_address` of each registered host that names one, from one read of the
    /// registry.
    async fn peer_hosts(
        &self,
        registry: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ClusterError> {
        let listed = hosts::list(self.tenant.client(), registry)
            .await
            .map_err(LeaseError::from)?;
        Ok(listed
            .into_iter()
            .filter_map(|h| Some((h.address, h.peer_address?)))
            .collect())
    }

    /// The cluster request for the nodes in the UNL (members and joining nodes named in
    /// `with`), leaving out nodes leaving or gone.
    fn spec(&self, record: &ClusterRecord, without: &[usize]) -> Result<ClusterSpec, ClusterError> {
        let mut unl = Vec::new();
        let mut peers = Vec::new();
        for (i, node) in record.live_nodes() {
            if without.contains(&i)
                || node.state == NodeState::Leaving
                || node.state == NodeState::Buying
            {
                continue;
            }
            let lease = self.lease_of(node)?;
            unl.push(lease.node_key.to_lowercase());
            peers.push(lease.peer_address());
        }
        Ok(ClusterSpec { unl, peers })
    }

    pub(crate) async fn connect(
        &self,
        record: &ClusterRecord,
        i: usize,
    ) -> Result<Instance, ClusterError> {
        self.connect_within(record, i, self.node_timeout).await
    }

    async fn connect_within(
        &self,
        record: &ClusterRecord,
        i: usize,
        timeout: Duration,
    ) -> Result<Instance, ClusterError> {
        let lease = self.lease_of(&record.nodes[i])?;
        Instance::connect_expecting(
            &lease.instance_url(),
            self.user,
            timeout,
            &lease.node_key,
            &lease.contract_id,
        )
        .await
        .map_err(|e| ClusterError::Instance {
            cluster: record.name.clone(),
            node: i + 1,
            addr: lease.instance_url(),
            source: Box::new(e),
        })
    }

    async fn send_spec(
        &self,
        record: &ClusterRecord,
        i: usize,
        spec: &ClusterSpec,
    ) -> Result<(), ClusterError> {
        let node = self.connect(record, i).await?;
        let reply = node.set_cluster(spec).await;
        let reply = closed_answer(record, i, node, reply).await?;
        if reply.status != "ok" {
            return Err(ClusterError::Refused {
                cluster: record.name.clone(),
                node: i + 1,
                message: reply.message,
            });
        }
        Ok(())
    }

    /// The first node of the cluster that answers, in-sync members first.
    pub async fn any_node(
        &self,
        record: &ClusterRecord,
    ) -> Result<(usize, Instance), ClusterError> {
        let mut problems = Vec::new();
        let order: Vec<usize> = record
            .live_nodes()
            .filter(|(_, n)| n.state == NodeState::Member)
            .map(|(i, _)| i)
            .collect();
        for i in order {
            match self.connect(record, i).await {
                Ok(node) => return Ok((i, node)),
                Err(e) => problems.push(berth_log::chain(&e)),
            }
        }
        Err(ClusterError::NoLiveNode {
            cluster: record.name.clone(),
            detail: if problems.is_empty() {
                "it has no member node".to_owned()
            } else {
                problems.join("; ")
            },
        })
    }

    async fn deploy(
        &self,
        record: &ClusterRecord,
        zip: &[u8],
        progress: Progress<'_>,
    ) -> Result<(), ClusterError> {
        let (i, node) = self.any_node(record).await?;
        progress(&format!(
            "deploying the bundle ({} bytes) through node {}…",
            zip.len(),
            i + 1
        ));
        let reply = node.upload(zip).await;
        let reply = closed_answer(record, i, node, reply).await?;
        if reply.status != "ok" {
            return Err(ClusterError::BundleRefused {
                cluster: record.name.clone(),
                message: reply.message,
            });
        }
        Ok(())
    }

    /// Polls every node until all members are in sync on one ledger.
    async fn wait_in_sync(
        &self,
        record: &ClusterRecord,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<ClusterView, ClusterError> {
        let started = Instant::now();
        let mut noted = Instant::now();
        loop {
            let view = self.status(record).await?;
            let members: Vec<&NodeView> = view
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Member)
                .collect();
            let synced = members
                .iter()
                .filter(|n| n.in_sync && n.lcl_seq_no.unwrap_or(0) > 0)
                .count();
            if synced == members.len() && !members.is_empty() {
                return Ok(view);
            }
            if started.elapsed() >= wait {
                let detail = members
                    .iter()
                    .map(|n| {
                        format!(
                            "node {}: {}",
                            n.node,
                            n.problem
                                .clone()
                                .or_else(|| n.vote_status.clone())
                                .unwrap_or_else(|| format!("lcl {}", n.lcl_seq_no.unwrap_or(0)))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(ClusterError::Timeout {
                    cluster: record.name.clone(),
                    what: "not every node in sync",
                    secs: started.elapsed().as_secs(),
                    detail,
                });
            }
            if noted.elapsed() >= Duration::from_secs(5) {
                noted = Instant::now();
                progress(&format!(
                    "  {synced} of {} node(s) in sync… {} s",
                    members.len(),
                    started.elapsed().as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Every node's view, asked in parallel.
    pub async fn status(&self, record: &ClusterRecord) -> Result<ClusterView, ClusterError> {
        let asks = record.nodes.iter().enumerate().map(|(i, node)| async move {
            let lease = self.book.lease(&node.lease).ok().flatten();
            let mut view = NodeView {
                node: i + 1,
                host: node.host.clone(),
                state: node.state,
                lease: node.lease.clone(),
                expires_at: lease.as_ref().map(|l| l.expires_at),
                instance: lease.as_ref().map(LeaseRecord::instance_url),
                node_key: lease.as_ref().map(|l| l.node_key.clone()),
                reachable: false,
                lcl_seq_no: None,
                lcl_hash: None,
                in_sync: false,
                vote_status: None,
                peers: Vec::new(),
                problem: None,
            };
            if lease.is_none() || matches!(node.state, NodeState::Gone | NodeState::Buying) {
                return view;
            }
            // A dead node must not hold up the others' report.
            let within = self.node_timeout.min(STATUS_TIMEOUT);
            match self.connect_within(record, i, within).await {
                Ok(instance) => {
                    match instance.stat().await {
                        Ok(stat) => {
                            view.reachable = true;
                            view.lcl_seq_no = Some(stat.ledger_seq_no);
                            view.lcl_hash = Some(stat.ledger_hash);
                            view.in_sync = stat.in_sync;
                            view.vote_status = Some(stat.vote_status);
                            view.peers = stat.peers;
                        }
                        Err(e) => view.problem = Some(berth_log::chain(&e)),
                    }
                    instance.close().await;
                }
                Err(e) => view.problem = Some(berth_log::chain(&e)),
            }
            view
        });
        let nodes = futures_util::future::join_all(asks).await;
        let agreed = nodes
            .iter()
            .filter(|n| n.in_sync)
            .filter_map(|n| n.lcl_seq_no.zip(n.lcl_hash.clone()))
            .max_by_key(|(seq, _)| *seq);
        Ok(ClusterView {
            name: record.name.clone(),
            contract_id: record.contract_id.clone(),
            in_sync: nodes
                .iter()
                .filter(|n| n.in_sync && n.state == NodeState::Member)
                .count(),
            members: nodes
                .iter()
                .filter(|n| n.state == NodeState::Member)
                .count(),
            lcl_seq_no: agreed.as_ref().map(|(seq, _)| *seq),
            lcl_hash: agreed.map(|(_, hash)| hash),
            nodes,
        })
    }

    /// Pays for `moments` more moments of every live lease of the cluster.
    pub async fn extend(
        &self,
        name: &str,
        moments: u32,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Vec<lease::Extended>, ClusterError> {
        let record = self.load(name)?;
        let mut out = Vec::new();
        for (i, node) in record.live_nodes() {
            if node.state == NodeState::Buying {
                continue;
            }
            let mut p = |line: &str| progress(&format!("node {}: {line}", i + 1));
            let extended = self
                .tenant
                .extend(&node.lease, moments, wait, &mut p)
                .await
                .map_err(|e| self.node_error(&record, i, &node.host, e))?;
            out.push(extended);
        }
        Ok(out)
    }

    /// Ends every lease of the cluster (their hosts destroy the instances).
    pub async fn terminate(
        &self,
        name: &str,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Vec<String>, ClusterError> {
        let mut record = self.load(name)?;
        let shared = Mutex::new(progress);
        let say = |line: &str| {
            if let Ok(mut p) = shared.lock() {
                (*p)(line)
            }
        };
        let ending: Vec<usize> = record
            .live_nodes()
            .filter(|(_, n)| n.state != NodeState::Buying)
            .map(|(i, _)| i)
            .collect();
        let ends = ending.iter().map(|&i| {
            let node = record.nodes[i].clone();
            let say = &say;
            async move {
                let mut p = |line: &str| say(&format!("node {}: {line}", i + 1));
                let result = match self.tenant.terminate(&node.lease, wait, &mut p).await {
                    Err(LeaseError::Terminated { .. }) => Ok(String::new()),
                    other => other,
                };
                (i, result)
            }
        });
        let results = futures_util::future::join_all(ends).await;
        let mut done = Vec::new();
        let mut failed = None;
        for (i, result) in results {
            match result {
                Ok(request) => {
                    record.nodes[i].state = NodeState::Gone;
                    done.push(request);
                }
                Err(e) => {
                    let host = record.nodes[i].host.clone();
                    failed.get_or_insert(self.node_error(&record, i, &host, e));
                }
            }
        }
        self.save(&record)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Adds a node on another host (or `host`): bought as a held observer, told the
    /// cluster's UNL and peers, caught up, and only then added to the UNL through consensus.
    /// Returns the new node's index in the record.
    pub async fn add_node(
        &self,
        name: &str,
        host: Option<String>,
        registry: &str,
        opts: &CreateOptions,
        progress: Progress<'_>,
    ) -> Result<usize, ClusterError> {
        let mut record = self.load(name)?;
        let host = match host {
            Some(host) => {
                let taken = record
                    .live_nodes()
                    .any(|(_, n)| n.host == host && n.state != NodeState::Leaving);
                if taken && !record.allow_same_host && !opts.allow_same_host {
                    return Err(ClusterError::SameHost { host });
                }
                host
            }
            None => {
                let mut picked = self.pick_hosts(&record, registry, opts, 1).await?;
                picked.remove(0)
            }
        };
        let config = ContractConfig {
            await_cluster: true,
            observer: true,
            roundtime_ms: record.roundtime_ms.and_then(|r| Ranged::new(r).ok()),
            threshold: record
                .threshold
                .and_then(|t| Ranged::new(u64::from(t)).ok()),
            image: record.image,
            ..ContractConfig::default()
        };
        let acquire = AcquireOptions {
            contract_id: record.contract_id.parse().ok(),
            max_price_drops: opts.max_price_drops,
            moments: 1,
            wait: opts.wait,
            allow_silent: opts.allow_silent,
            config: Some(config),
            avoid_offers: Vec::new(),
        };
        let index = record.nodes.len();
        let pending = self
            .tenant
            .prepare_purchase(&host, &acquire, true)
            .await
            .map_err(|e| self.node_error(&record, index, &host, e))?;
        record.nodes.push(ClusterNode {
            host: host.clone(),
            purchase: pending.signed.hash.clone(),
            lease: pending.lease.clone(),
            state: NodeState::Buying,
            peer_host: self.peer_hosts(registry).await?.remove(&host),
        });
        self.save(&record)?;
        progress(&format!(
            "node {}: buying a lease from {host} (purchase {})",
            index + 1,
            pending.signed.hash
        ));
        let acquired = match self.tenant.finish(pending, opts.wait, progress).await {
            Ok(acquired) => acquired,
            Err(e) => {
                if matches!(
                    e,
                    LeaseError::Refused { .. }
                        | LeaseError::OfferGone { .. }
                        | LeaseError::NeverValidated { .. }
                        | LeaseError::TxFailed { .. }
                ) {
                    record.nodes[index].state = NodeState::Gone;
                    self.save(&record)?;
                }
                return Err(self.node_error(&record, index, &host, e));
            }
        };
        record.nodes[index].lease = acquired.record.lease.clone();
        record.nodes[index].state = NodeState::Leased;
        self.save(&record)?;
        // Follow the cluster as an observer, and catch up.
        let current = self.spec(&record, &[index])?;
        progress(&format!(
            "node {}: following the cluster's {} node(s) as an observer…",
            index + 1,
            current.unl.len()
        ));
        self.send_spec(&record, index, &current).await?;
        record.nodes[index].state = NodeState::Joining;
        self.save(&record)?;
        let target = self.status(&record).await?.lcl_seq_no.unwrap_or(0);
        self.wait_node(&record, index, opts.wait, "the new node to catch up", |n| {
            n.lcl_seq_no.unwrap_or(0) >= target
        })
        .await?;
        // Into the UNL, through consensus, then in sync as a member.
        let joined = self.spec(&record, &[])?;
        progress(&format!(
            "node {}: caught up to ledger {target}; adding it to the UNL ({} nodes)…",
            index + 1,
            joined.unl.len()
        ));
        self.change_members(&record, &[index], &joined).await?;
        record.nodes[index].state = NodeState::Member;
        self.save(&record)?;
        self.wait_node(&record, index, opts.wait, "the new node in sync", |n| {
            n.in_sync
        })
        .await?;
        Ok(index)
    }

    /// Takes a node out of the UNL through consensus, then ends its lease.
    pub async fn remove_node(
        &self,
        name: &str,
        node: &str,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<String, ClusterError> {
        let mut record = self.load(name)?;
        let index = self.node_index(&record, node)?;
        let others = record
            .live_nodes()
            .filter(|(i, n)| *i != index && n.state == NodeState::Member)
            .count();
        if others == 0 {
            return Err(ClusterError::LastNode {
                cluster: record.name.clone(),
            });
        }
        if record.nodes[index].state != NodeState::Leaving {
            let remaining = self.spec(&record, &[index])?;
            progress(&format!(
                "node {}: taking it out of the UNL ({} nodes left)…",
                index + 1,
                remaining.unl.len()
            ));
            self.change_members(&record, &[index], &remaining).await?;
            record.nodes[index].state = NodeState::Leaving;
            self.save(&record)?;
        }
        let lease = record.nodes[index].lease.clone();
        progress(&format!("node {}: ending its lease…", index + 1));
        let host = record.nodes[index].host.clone();
        let request = match self.tenant.terminate(&lease, wait, progress).await {
            Ok(request) => request,
            Err(LeaseError::Terminated { .. }) => String::new(),
            Err(e) => return Err(self.node_error(&record, index, &host, e)),
        };
        record.nodes[index].state = NodeState::Gone;
        self.save(&record)?;
        Ok(request)
    }

    /// Moves a node to another host: a new node is added and in sync before the old one
    /// leaves the UNL and its lease ends. Returns the new node's number.
    pub async fn replace_node(
        &self,
        name: &str,
        node: &str,
        host: Option<String>,
        registry: &str,
        opts: &CreateOptions,
        progress: Progress<'_>,
    ) -> Result<usize, ClusterError> {
        let record = self.load(name)?;
        let old = self.node_index(&record, node)?;
        let added = self
            .add_node(name, host, registry, opts, &mut *progress)
            .await?;
        self.remove_node(name, &(old + 1).to_string(), opts.wait, progress)
            .await?;
        Ok(added + 1)
    }

    /// Sends a cluster request to a live member (none of `skip`) and checks its answer.
    async fn change_members(
        &self,
        record: &ClusterRecord,
        skip: &[usize],
        spec: &ClusterSpec,
    ) -> Result<(), ClusterError> {
        let mut problems = Vec::new();
        let members: Vec<usize> = record
            .live_nodes()
            .filter(|(i, n)| !skip.contains(i) && n.state == NodeState::Member)
            .map(|(i, _)| i)
            .collect();
        for i in members {
            match self.send_spec(record, i, spec).await {
                Ok(()) => return Ok(()),
                Err(e @ ClusterError::Refused { .. }) => return Err(e),
                Err(e) => problems.push(berth_log::chain(&e)),
            }
        }
        Err(ClusterError::NoLiveNode {
            cluster: record.name.clone(),
            detail: problems.join("; "),
        })
    }

    /// Polls node `index` until `done` holds for its view.
    async fn wait_node(
        &self,
        record: &ClusterRecord,
        index: usize,
        wait: Duration,
        what: &'static str,
        done: impl Fn(&NodeView) -> bool,
    ) -> Result<NodeView, ClusterError> {
        let started = Instant::now();
        loop {
            let view = self.status(record).await?;
            let node = view.nodes.into_iter().nth(index);
            if let Some(node) = node {
                if node.reachable && done(&node) {
                    return Ok(node);
                }
                if started.elapsed() >= wait {
                    return Err(ClusterError::Timeout {
                        cluster: record.name.clone(),
                        what,
                        secs: started.elapsed().as_secs(),
                        detail: format!(
                            "node {}: lcl {}, {}",
                            index + 1,
                            node.lcl_seq_no.unwrap_or(0),
                            node.problem.or(node.vote_status).unwrap_or_default()
                        ),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Every cluster in this home.
    pub fn list(&self) -> Result<Vec<ClusterRecord>, ClusterError> {
        Ok(self.book.clusters()?)
    }

    /// The record's node index for a 1-based node number or a lease id (part).
    pub fn node_index(&self, record: &ClusterRecord, node: &str) -> Result<usize, ClusterError> {
        record.node_index(node)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(host: &str, lease: &str, state: NodeState) -> ClusterNode {
        ClusterNode {
            host: host.to_owned(),
            purchase: "AB".repeat(32),
            lease: lease.to_owned(),
            state,
            peer_host: None,
        }
    }

    #[test]
    fn names_are_checked_and_records_round_trip_through_the_book() {
        for good in ["c-3f1c0d6e", "main", "a_b-9"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Main", "../x", "a b", &"x".repeat(41)] {
            assert!(
                matches!(check_name(bad), Err(ClusterError::BadName(_))),
                "{bad:?}"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let book = Book::new(tmp.path());
        let record = ClusterRecord {
            name: "main".into(),
            contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".into(),
            roundtime_ms: Some(500),
            threshold: Some(51),
            image: None,
            size: 2,
            allow_same_host: false,
            hosts: vec![],
            nodes: vec![node("rA", &"01".repeat(32), NodeState::Member)],
            wired: true,
            deployed: Some(fingerprint(b"zip")),
            anchor: None,
        };
        book.save_cluster("main", &record).unwrap();
        let back: ClusterRecord = book.cluster("main").unwrap().unwrap();
        assert_eq!(back, record);
        assert!(book.cluster::<ClusterRecord>("../main").unwrap().is_none());
        assert!(book.cluster_path_if_exists("main").is_some());
        assert_eq!(book.clusters::<ClusterRecord>().unwrap().len(), 1);
    }

    #[test]
    fn nodes_are_named_by_number_or_the_end_of_their_lease_and_gone_ones_are_not() {
        let record = ClusterRecord {
            name: "main".into(),
            contract_id: String::new(),
            roundtime_ms: None,
            threshold: None,
            image: None,
            size: 3,
            allow_same_host: false,
            hosts: vec![],
            nodes: vec![
                node(
                    "rA",
                    &format!("{}AAAA1111", "0".repeat(56)),
                    NodeState::Member,
                ),
                node(
                    "rB",
                    &format!("{}BBBB2222", "0".repeat(56)),
                    NodeState::Gone,
                ),
                node(
                    "rC",
                    &format!("{}CCCC3333", "0".repeat(56)),
                    NodeState::Member,
                ),
            ],
            wired: true,
            deployed: None,
            anchor: None,
        };
        assert_eq!(record.node_index("1").unwrap(), 0);
        assert_eq!(record.node_index("cccc3333").unwrap(), 2);
        let gone = record.node_index("2").unwrap_err().to_string();
        assert!(gone.contains("no node 2"), "{gone}");
        assert!(record.node_index("9").is_err());
        assert_eq!(record.live_nodes().count(), 2);
    }
}
