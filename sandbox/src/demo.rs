//! The tenant flow of `berth sandbox --demo`, step by step with timings: hosts → acquire →
//! deploy → input → output → extend → terminate. It uses the same library calls as the
//! commands (`hosts`, `lease::Tenant`, `instance::Instance`), so a demo that passes is the
//! CLI's own path working end to end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_mb_xrpl::{Client, ClientConfig};
use serde::Serialize;

use berth_tenant::book::Book;
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
        let number = STEPS.iter().position(|s| *s == name).map_or(0, |i| i + 1);
        let (ok, detail, value) = match result {
            Ok((value, detail)) => (true, detail, Some(value)),
            Err(detail) => (false, detail, None),
        };
        (self.out)(&format!(
            "[{number}/{}] {:<13} {} {:>7.2} s  {detail}",
            STEPS.len(),
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

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
