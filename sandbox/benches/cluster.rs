//! `cargo bench -p berth-sandbox --bench cluster`: a cluster across hosts, timed, on the
//! real Docker engine with a sandbox of four host agents (as root each on its own address).
//!
//! Prints: the time from `cluster create --nodes 3` to the first ledger every node agreed
//! on (and its parts: purchases answered, nodes wired), and the time `replace-node` takes to
//! move a node to the fourth host once the contract's state is 10 MiB (the counter example
//! holding 20 values of 512 KiB). Needs the instance image (`hotpocket/image/build.sh`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use berth_sandbox::sandbox::{Sandbox, SandboxOptions};
use berth_schemas::config::PortRange;
use berth_tenant::book::Book;
use berth_tenant::cluster::{Clusters, CreateOptions};
use berth_tenant::instance;
use berth_tenant::keys::Keys;
use berth_tenant::lease::Tenant;

const STATE_VALUES: usize = 20;
const VALUE_BYTES: usize = 512 * 1024;

fn main() {
    if !berth_test_support::docker_available() {
        return;
    }
    berth_test_support::ensure_hotpocket_image();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let opts = SandboxOptions {
        hosts: 4,
        slots: 2,
        user_ports: PortRange {
            first: 28200,
            last: 28219,
        },
        peer_ports: PortRange {
            first: 28300,
            last: 28319,
        },
        log_to_file: false,
        ..SandboxOptions::default()
    };
    let started = Instant::now();
    let sandbox = Sandbox::start(opts, &mut |_| {}).await.unwrap();
    println!(
        "sandbox with 4 hosts up in {:.1} s (own addresses: {})",
        started.elapsed().as_secs_f64(),
        sandbox.info.own_addresses
    );
    let result = run(&sandbox).await;
    sandbox.shutdown().await.unwrap();
    result.unwrap();
}

async fn run(sandbox: &Sandbox) -> Result<(), String> {
    let info = &sandbox.info;
    let keys = Keys::load(&info.tenant_home).map_err(|e| e.to_string())?;
    let client =
        berth_mb_xrpl::Client::connect(berth_mb_xrpl::ClientConfig::new([info.ledger.clone()]))
            .await
            .map_err(|e| e.to_string())?;
    let tenant = Tenant::new(client.clone(), &keys, Book::new(&info.tenant_home))
        .map_err(|e| e.to_string())?;
    let clusters = Clusters {
        tenant: &tenant,
        book: Book::new(&info.tenant_home),
        user: &keys.user,
        node_timeout: Duration::from_secs(30),
    };
    let hosts: Vec<String> = info.hosts.iter().map(|h| h.account.clone()).collect();
    let opts = CreateOptions {
        nodes: 3,
        hosts: hosts[..3].to_vec(),
        allow_same_host: false,
        roundtime_ms: Some(500),
        threshold: Some(51),
        image: None,
        max_price_drops: None,
        allow_silent: false,
        wait: Duration::from_secs(180),
    };
    let bundle =
        instance::load_bundle(&berth_test_support::root().join("examples/bundles/counter.zip"))
            .map_err(|e| e.to_string())?;
    let mut quiet = |_: &str| {};
    let created = clusters
        .create(
            Some("bench".into()),
            &info.registry,
            &opts,
            Some(&bundle),
            &mut quiet,
        )
        .await
        .map_err(|e| berth_log::chain(&e))?;
    let t = &created.timings;
    println!(
        "cluster create --nodes 3 (roundtime 500 ms): first ledger agreed by all 3 nodes {:.2} s after the start (purchases answered {:.2} s, wired {:.2} s); bundle deployed at {:.2} s",
        t.first_agreed_ledger_secs, t.purchases_secs, t.wired_secs, t.deployed_secs
    );
    // 10 MiB of state: 20 values of 512 KiB, through any node.
    let record = clusters.load("bench").map_err(|e| e.to_string())?;
    let (_, node) = clusters
        .any_node(&record)
        .await
        .map_err(|e| berth_log::chain(&e))?;
    let filled = Instant::now();
    for i in 0..STATE_VALUES {
        let value: String = (0..VALUE_BYTES)
            .map(|j| char::from(b'a' + ((i * 7 + j * 13) % 26) as u8))
            .collect();
        node.input(format!("set v{i} {value}").as_bytes())
            .await
            .map_err(|e| berth_log::chain(&e))?;
    }
    node.close().await;
    println!(
        "state filled with {} MiB in {:.1} s",
        STATE_VALUES * VALUE_BYTES / (1024 * 1024),
        filled.elapsed().as_secs_f64()
    );
    let moved = Instant::now();
    let replace = CreateOptions {
        nodes: 1,
        hosts: Vec::new(),
        ..opts
    };
    clusters
        .replace_node(
            "bench",
            "3",
            Some(hosts[3].clone()),
            &info.registry,
            &replace,
            &mut quiet,
        )
        .await
        .map_err(|e| berth_log::chain(&e))?;
    println!(
        "cluster replace-node with a 10 MiB state: {:.2} s (new node bought, caught up, in the UNL and in sync; old lease ended)",
        moved.elapsed().as_secs_f64()
    );
    clusters
        .terminate("bench", Duration::from_secs(120), &mut quiet)
        .await
        .map_err(|e| berth_log::chain(&e))?;
    client.shutdown().await;
    Ok(())
}
