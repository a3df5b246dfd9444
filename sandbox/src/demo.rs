//! The tenant flow of `berth sandbox --demo`, step by step with timings: hosts → acquire →
//! deploy → input → output → extend → terminate. It uses the same library calls as the
//! commands (`hosts`, `lease::Tenant`, `instance::Instance`), so a demo that passes is the
//! CLI's own path working end to end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_mb_xrpl::{Client, ClientConfig};
use serde::Serialize;

use berth_tenant::book::Book;
use berth_tenant::cluster::{Clusters, CreateOptions};
use berth_tenant::hosts;
use berth_tenant::instance::{self, Instance};
use berth_tenant::keys::Keys;
use berth_tenant::lease::{self, AcquireOptions, Tenant};

/// Where the demo runs.
#[derive(Debug, Clone)]
pub struct DemoEnv {
    pub ledger: String,
    pub registry: String,
    /// The funded tenant's home (keys with the MessageKey set).
    pub tenant_home: PathBuf,
    /// The host to lease from.
    pub host: String,
    /// The contract bundle (directory or zip) deployed; the counter example expected.
    pub bundle: PathBuf,
    /// How long to wait for each answer of the host.
    pub wait: Duration,
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub millis: u128,
    pub detail: String,
}

/// The whole run: every step attempted until the first failure.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub ok: bool,
    pub steps: Vec<Step>,
    pub lease: Option<String>,
}

/// The steps, in order, for numbering.
pub const STEPS: [&str; 8] = [
    "hosts",
    "acquire",
    "deploy",
    "input",
    "output",
    "extend",
    "terminate",
    "instance gone",
];

struct Runner<'a> {
    /// The step names of this flow, for numbering.
    names: &'static [&'static str],
    steps: Vec<Step>,
    out: &'a mut dyn FnMut(&str),
}

impl Runner<'_> {
    fn record<T>(
        &mut self,
        name: &'static str,
        started: Instant,
        result: Result<(T, String), String>,
    ) -> Option<T> {
        let millis = started.elapsed().as_millis();
        let number = self
            .names
            .iter()
            .position(|s| *s == name)
            .map_or(0, |i| i + 1);
        let (ok, detail, value) = match result {
            Ok((value, detail)) => (true, detail, Some(value)),
            Err(detail) => (false, detail, None),
        };
        (self.out)(&format!(
            "[{number}/{}] {:<14} {} {:>7.2} s  {detail}",
            self.names.len(),
            name,
            if ok { "ok  " } else { "FAIL" },
            millis as f64 / 1000.0,
        ));
        self.steps.push(Step {
            name,
            ok,
            millis,
            detail,
        });
        value
    }
}

/// Runs the tenant flow; progress lines go to `out`. The report says which step failed.
pub async fn run(env: &DemoEnv, out: &mut dyn FnMut(&str)) -> DemoReport {
    let mut runner = Runner {
        names: &STEPS,
        steps: Vec::new(),
        out,
    };
    let lease = flow(env, &mut runner).await;
    let ok = runner.steps.len() == STEPS.len() && runner.steps.iter().all(|s| s.ok);
    DemoReport {
        ok,
        steps: runner.steps,
        lease,
    }
}

async fn flow(env: &DemoEnv, r: &mut Runner<'_>) -> Option<String> {
    let keys = match Keys::load(&env.tenant_home) {
        Ok(k) => k,
        Err(e) => {
            r.record::<()>("hosts", Instant::now(), Err(berth_log::chain(&e)));
            return None;
        }
    };
    let client = match Client::connect(ClientConfig::new([env.ledger.clone()])).await {
        Ok(c) => c,
        Err(e) => {
            r.record::<()>(
                "hosts",
                Instant::now(),
                Err(format!(
                    "connecting to {}: {}",
                    env.ledger,
                    berth_log::chain(&e)
                )),
            );
            return None;
        }
    };
    let result = tenant_flow(env, &keys, &client, r).await;
    client.shutdown().await;
    result
}

async fn tenant_flow(
    env: &DemoEnv,
    keys: &Keys,
    client: &Client,
    r: &mut Runner<'_>,
) -> Option<String> {
    // 1. hosts
    let t = Instant::now();
    let listed = hosts::list(client, &env.registry).await;
    let found = listed.map_err(|e| berth_log::chain(&e)).and_then(|hosts| {
        let count = hosts.len();
        hosts
            .into_iter()
            .find(|h| h.address == env.host && h.free_slots() > 0)
            .map(|h| {
                let detail = format!(
                    "{count} host(s) registered; {} offers {} slot(s) from {} per {} s",
                    h.address,
                    h.free_slots(),
                    lease::Xrp(h.lowest_price().unwrap_or(h.price_drops)),
                    h.moment_secs
                );
                ((), detail)
            })
            .ok_or_else(|| format!("host {} has no live offer in the registry", env.host))
    });
    r.record("hosts", t, found)?;

    // 2. acquire
    let tenant = match Tenant::new(client.clone(), keys, Book::new(&env.tenant_home)) {
        Ok(t) => t,
        Err(e) => {
            r.record::<()>("acquire", Instant::now(), Err(berth_log::chain(&e)));
            return None;
        }
    };
    let t = Instant::now();
    let opts = AcquireOptions {
        contract_id: None,
        max_price_drops: None,
        moments: 1,
        wait: env.wait,
        allow_silent: false,
        config: None,
        avoid_offers: Vec::new(),
    };
    let mut quiet = |_: &str| {};
    let acquired = tenant
        .acquire(&env.host, &opts, &mut quiet)
        .await
        .map(|a| {
            let detail = format!(
                "lease {} → instance {}",
                berth_tenant::book::short_lease(&a.record.lease),
                a.record.instance_url()
            );
            (a, detail)
        })
        .map_err(|e| berth_log::chain(&e));
    let acquired = r.record("acquire", t, acquired)?;
    let record = acquired.record;
    let lease_id = record.lease.clone();

    // 3. deploy
    let t = Instant::now();
    let timeout = Duration::from_secs(20);
    let deployed = async {
        let zip = instance::load_bundle(&env.bundle).map_err(|e| berth_log::chain(&e))?;
        let node = Instance::connect_expecting(
            &record.instance_url(),
            &keys.user,
            timeout,
            &record.node_key,
            &record.contract_id,
        )
        .await
        .map_err(|e| berth_log::chain(&e))?;
        let reply = node.upload(&zip).await;
        let result = match reply {
            Ok(reply) if reply.status == "ok" => Ok((
                node,
                format!(
                    "{} ({} bytes): bootstrap {} {}",
                    file_name(&env.bundle),
                    zip.len(),
                    reply.status,
                    reply.message
                ),
            )),
            Ok(reply) => Err(format!("bootstrap {}: {}", reply.status, reply.message)),
            Err(e) => Err(berth_log::chain(&e)),
        };
        result
    }
    .await;
    let node = r.record("deploy", t, deployed)?;

    // 4. input, 5. output (the counter example counts: two inputs, then a read).
    let t = Instant::now();
    let first = node
        .input(b"incr visits")
        .await
        .map_err(|e| berth_log::chain(&e))
        .map(|o| {
            let view = instance::InputView::from(o);
            let detail = format!(
                "`incr visits` accepted in ledger {} → {:?}",
                view.ledger_seq_no, view.outputs
            );
            (view, detail)
        });
    let first = r.record("input", t, first)?;
    let t = Instant::now();
    let second = async {
        let again = node
            .input(b"incr visits")
            .await
            .map_err(|e| berth_log::chain(&e))?;
        let again = instance::InputView::from(again);
        let read = node.read(b"get visits").await.map_err(|e| berth_log::chain(&e))?;
        let read = String::from_utf8_lossy(&read).into_owned();
        let expected_first = first.outputs.first().cloned().unwrap_or_default();
        let counted = again.outputs.first().cloned().unwrap_or_default();
        let consistent = expected_first.parse::<u64>().ok().map(|n| n + 1)
            == counted.parse::<u64>().ok()
            && read == counted;
        if consistent {
            Ok((
                (),
                format!("second input → {counted}; read `get visits` → {read}"),
            ))
        } else {
            Err(format!(
                "outputs do not count up: first {expected_first:?}, second {counted:?}, read {read:?} (is the bundle the counter example?)"
            ))
        }
    }
    .await;
    node.close().await;
    r.record("output", t, second)?;

    // 6. extend
    let t = Instant::now();
    let extended = tenant
        .extend(&lease_id, 1, env.wait, &mut quiet)
        .await
        .map_err(|e| berth_log::chain(&e))
        .and_then(|x| {
            if x.expires_at > record.expires_at {
                Ok((
                    (),
                    format!(
                        "+{} moment: ends at {} instead of {}",
                        x.moments, x.expires_at, record.expires_at
                    ),
                ))
            } else {
                Err(format!(
                    "the host confirmed, but the end did not move ({} → {})",
                    record.expires_at, x.expires_at
                ))
            }
        });
    r.record("extend", t, extended)?;

    // 7. terminate
    let t = Instant::now();
    let terminated = tenant
        .terminate(&lease_id, env.wait, &mut quiet)
        .await
        .map_err(|e| berth_log::chain(&e))
        .map(|request| {
            (
                (),
                format!("host confirmed (request {})", lease::short(&request)),
            )
        });
    r.record("terminate", t, terminated)?;

    // 8. the instance is gone
    let t = Instant::now();
    let gone = async {
        let deadline = Instant::now() + env.wait;
        loop {
            match Instance::connect(&record.instance_url(), &keys.user, Duration::from_secs(3))
                .await
            {
                Err(_) => {
                    return Ok(((), format!("{} refuses connections", record.instance_url())))
                }
                Ok(node) => {
                    node.close().await;
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{} still answers after the termination",
                            record.instance_url()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
    .await;
    r.record("instance gone", t, gone)?;
    Some(lease_id)
}

/// The steps of the cluster demo, in order.
pub const CLUSTER_STEPS: [&str; 7] = [
    "cluster create",
    "input",
    "signed by all",
    "replace node",
    "after replace",
    "terminate",
    "instances gone",
];

/// `berth sandbox --demo --cluster N`: a cluster on N of the sandbox's hosts (one host
/// left over for the replacement), an input answered and signed by every node, a node
/// moved to the spare host with the state, and the end of every lease.
pub async fn run_cluster(env: &DemoEnv, nodes: usize, out: &mut dyn FnMut(&str)) -> DemoReport {
    let mut runner = Runner {
        names: &CLUSTER_STEPS,
        steps: Vec::new(),
        out,
    };
    let name = cluster_flow(env, nodes, &mut runner).await;
    let ok = runner.steps.len() == CLUSTER_STEPS.len() && runner.steps.iter().all(|s| s.ok);
    DemoReport {
        ok,
        steps: runner.steps,
        lease: name,
    }
}

async fn cluster_flow(env: &DemoEnv, nodes: usize, r: &mut Runner<'_>) -> Option<String> {
    let fail = |e: &dyn std::error::Error| berth_log::chain(e);
    let keys = match Keys::load(&env.tenant_home) {
        Ok(k) => k,
        Err(e) => {
            r.record::<()>("cluster create", Instant::now(), Err(fail(&e)));
            return None;
        }
    };
    let client = match Client::connect(ClientConfig::new([env.ledger.clone()])).await {
        Ok(c) => c,
        Err(e) => {
            r.record::<()>("cluster create", Instant::now(), Err(fail(&e)));
            return None;
        }
    };
    let tenant = match Tenant::new(client.clone(), &keys, Book::new(&env.tenant_home)) {
        Ok(t) => t,
        Err(e) => {
            r.record::<()>("cluster create", Instant::now(), Err(fail(&e)));
            client.shutdown().await;
            return None;
        }
    };
    let clusters = Clusters {
        tenant: &tenant,
        book: Book::new(&env.tenant_home),
        user: &keys.user,
        node_timeout: Duration::from_secs(20),
    };
    let result = cluster_steps(env, nodes, &clusters, r).await;
    client.shutdown().await;
    result
}

async fn cluster_steps(
    env: &DemoEnv,
    nodes: usize,
    clusters: &Clusters<'_>,
    r: &mut Runner<'_>,
) -> Option<String> {
    let mut quiet = |_: &str| {};
    let opts = CreateOptions {
        nodes,
        hosts: Vec::new(),
        allow_same_host: false,
        roundtime_ms: Some(500),
        threshold: Some(51),
        image: None,
        max_price_drops: None,
        allow_silent: false,
        wait: env.wait,
    };
    // 1. create
    let t = Instant::now();
    let zip = match instance::load_bundle(&env.bundle) {
        Ok(zip) => zip,
        Err(e) => {
            r.record::<()>("cluster create", t, Err(berth_log::chain(&e)));
            return None;
        }
    };
    let created = clusters
        .create(Some("demo".to_owned()), &env.registry, &opts, Some(&zip), &mut quiet)
        .await
        .map(|c| {
            let detail = format!(
                "{} nodes on {} hosts, in sync at ledger {} (leases {:.1} s, wired {:.1} s, first agreed ledger {:.1} s)",
                c.cluster.members,
                c.cluster.nodes.iter().map(|n| n.host.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
                c.cluster.lcl_seq_no.unwrap_or(0),
                c.timings.purchases_secs,
                c.timings.wired_secs,
                c.timings.first_agreed_ledger_secs,
            );
            (c, detail)
        })
        .map_err(|e| berth_log::chain(&e));
    let created = r.record("cluster create", t, created)?;
    let name = created.cluster.name.clone();
    let keys: std::collections::BTreeSet<String> = created
        .cluster
        .nodes
        .iter()
        .filter_map(|n| n.node_key.clone())
        .map(|k| k.to_lowercase())
        .collect();

    // 2. input, 3. signed by every node
    let input = |want: &'static str| {
        let name = name.clone();
        async move {
            let record = clusters.load(&name).map_err(|e| berth_log::chain(&e))?;
            let (i, node) = clusters
                .any_node(&record)
                .await
                .map_err(|e| berth_log::chain(&e))?;
            let out = node.input(b"incr visits").await;
            node.close().await;
            let view = instance::InputView::from(out.map_err(|e| berth_log::chain(&e))?);
            if view.outputs.first().map(String::as_str) != Some(want) {
                return Err(format!("expected output {want}, got {:?}", view.outputs));
            }
            Ok((view, i + 1))
        }
    };
    let t = Instant::now();
    let first = input("1").await.map(|(view, node)| {
        let detail = format!(
            "`incr visits` through node {node} accepted in ledger {} → {:?}",
            view.ledger_seq_no, view.outputs
        );
        (view, detail)
    });
    let first = r.record("input", t, first)?;
    let t = Instant::now();
    let signers: std::collections::BTreeSet<String> =
        first.signers.iter().map(|k| k.to_lowercase()).collect();
    let signed = if signers == keys {
        Ok((
            (),
            format!("unl_sig verified from all {} nodes", keys.len()),
        ))
    } else {
        Err(format!(
            "signed by {} of {} nodes: {signers:?}",
            signers.len(),
            keys.len()
        ))
    };
    r.record("signed by all", t, signed)?;

    // 4. replace the last node (onto the spare host), 5. the state came along
    let t = Instant::now();
    let replaced = clusters
        .replace_node(&name, &nodes.to_string(), None, &env.registry, &opts, &mut quiet)
        .await
        .map(|added| ((), format!("node {nodes} moved to a new host as node {added}, in sync; the old lease ended")))
        .map_err(|e| berth_log::chain(&e));
    r.record("replace node", t, replaced)?;
    let t = Instant::now();
    let after = input("2").await.map(|(view, node)| {
        let detail = format!(
            "through node {node}: {:?}, signed by {} nodes",
            view.outputs,
            view.signers.len()
        );
        ((), detail)
    });
    r.record("after replace", t, after)?;

    // 6. terminate, 7. gone
    let t = Instant::now();
    let record = clusters.load(&name).ok();
    let ended = clusters
        .terminate(&name, env.wait, &mut quiet)
        .await
        .map(|ended| ((), format!("{} lease(s) ended", ended.len())))
        .map_err(|e| berth_log::chain(&e));
    r.record("terminate", t, ended)?;
    let t = Instant::now();
    let gone = async {
        let urls: Vec<String> = record
            .iter()
            .flat_map(|rec| rec.nodes.iter())
            .filter_map(|n| clusters.book.lease(&n.lease).ok().flatten())
            .map(|l| l.instance_url())
            .collect();
        let deadline = Instant::now() + env.wait;
        loop {
            let mut answering = Vec::new();
            for url in &urls {
                if let Ok(node) =
                    Instance::connect(url, clusters.user, Duration::from_secs(3)).await
                {
                    node.close().await;
                    answering.push(url.clone());
                }
            }
            if answering.is_empty() {
                return Ok(((), format!("{} instance(s) refuse connections", urls.len())));
            }
            if Instant::now() > deadline {
                return Err(format!("still answering: {answering:?}"));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    .await;
    r.record("instances gone", t, gone)?;
    Some(name)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
