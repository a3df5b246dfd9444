//! Clusters across hosts with the real binaries: `berth sandbox --hosts 4` (localnet, four
//! host agents, each with its own address, on the real Docker engine) and `berth cluster …`.
//! One sandbox serves the whole story, in order: settings a host cannot honour are refunded;
//! a 3-node cluster on 3 hosts answers inputs signed by all three; one host cut off (its
//! address removed, its instance killed) and the other two keep closing ledgers (threshold
//! 51); `replace-node` moves the node to the fourth host with the counter's state; a
//! `cluster create` killed after its purchases is resumed without paying twice; and
//! `cluster terminate` leaves no container.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{berth, berth_bin, counter_bundle, fails, json, ok, ports, Sandbox};
use serde_json::Value;

fn containers_with_prefix(namespace: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Label \"berth.namespace\"}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, ns)| ns.starts_with(namespace))
        })
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

fn status(home: &std::path::Path, name: &str) -> Value {
    json(berth(home, &["cluster", "status", name, "--json"]))
}

fn members(view: &Value) -> Vec<&Value> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "member")
        .collect()
}

/// Polls `cluster status` until `done` holds, or panics with the last view.
fn wait_status(
    home: &std::path::Path,
    name: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let view = status(home, name);
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: {view:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_cluster_on_three_hosts_agrees_survives_a_lost_host_moves_and_ends() {
    let (user, peer) = ports(27600);
    let Some(sb) = Sandbox::start(&[
        "--hosts",
        "4",
        "--slots",
        "3",
        "--user-ports",
        &user,
        "--peer-ports",
        &peer,
    ]) else {
        return;
    };
    let bundle = counter_bundle().to_str().unwrap().to_owned();
    let home = sb.tenant_home();
    let hosts: Vec<Value> = sb.info["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 4, "{}", sb.info);
    assert_eq!(
        sb.info["own_addresses"], true,
        "each host needs an address of its own (the tests run as root): {}",
        sb.info
    );
    let account = |i: usize| hosts[i]["account"].as_str().unwrap().to_owned();
    let namespace = sb.get("namespace");

    // Settings a host cannot honour: every purchase is refunded with the reason.
    let err = fails(berth(
        &home,
        &[
            "cluster",
            "create",
            "--nodes",
            "2",
            "--name",
            "too-fast",
            "--roundtime",
            "20",
            "--hosts",
            &format!("{},{}", account(0), account(1)),
        ],
    ));
    assert!(
        err.contains("roundtime_ms 20 is below this host's minimum of 100 ms")
            && err.contains("paid back"),
        "{err}"
    );

    // Three nodes on three hosts, wired, deployed, all in sync.
    let started = Instant::now();
    let created = json(berth(
        &home,
        &[
            "cluster",
            "create",
            "--nodes",
            "3",
            "--name",
            "main",
            "--threshold",
            "51",
            "--roundtime",
            "500",
            "--bundle",
            &bundle,
            "--hosts",
            &format!("{},{},{}", account(0), account(1), account(2)),
            "--json",
        ],
    ));
    println!(
        "cluster create --nodes 3: {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        created["timings"]
    );
    let cluster = &created["cluster"];
    assert_eq!(members(cluster).len(), 3, "{cluster:#}");
    assert_eq!(cluster["in_sync"], 3, "{cluster:#}");
    let used: std::collections::BTreeSet<&str> = members(cluster)
        .iter()
        .map(|n| n["host"].as_str().unwrap())
        .collect();
    assert_eq!(used.len(), 3, "three distinct hosts: {cluster:#}");
    for n in members(cluster) {
        assert_eq!(n["peers"].as_array().unwrap().len(), 2, "a full mesh: {n}");
    }

    // An input through the cluster, answered with signatures of all three nodes.
    let input = json(berth(&home, &["input", "main", "incr visits", "--json"]));
    assert_eq!(input["outputs"], serde_json::json!(["1"]), "{input}");
    let keys: std::collections::BTreeSet<String> = members(cluster)
        .iter()
        .map(|n| n["node_key"].as_str().unwrap().to_lowercase())
        .collect();
    let signers: std::collections::BTreeSet<String> = input["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(signers, keys, "every node signed the output: {input}");
    ok(berth(&home, &["input", "main", "incr visits"]));

    // Host 3 cut off: its address removed, its instance killed. With threshold 51 the
    // other two keep closing ledgers.
    let address = hosts[2]["address"].as_str().unwrap().to_owned();
    let cut = Command::new("ip")
        .args(["addr", "del", &format!("{address}/32"), "dev", "lo"])
        .status()
        .unwrap();
    assert!(cut.success());
    for c in containers_with_prefix(hosts[2]["namespace"].as_str().unwrap()) {
        Command::new("docker").args(["kill", &c]).output().unwrap();
    }
    let before = status(&home, "main")["lcl_seq_no"].as_u64().unwrap();
    let after = wait_status(&home, "main", 60, "two nodes keep closing", |v| {
        v["lcl_seq_no"].as_u64().unwrap_or(0) >= before + 3 && v["in_sync"] == 2
    });
    let lost = &after["nodes"][2];
    assert!(!lost["reachable"].as_bool().unwrap(), "{lost}");

    // The node moves to host 4 with the contract's state; the old lease ends.
    let started = Instant::now();
    let replaced = json(berth(
        &home,
        &[
            "cluster",
            "replace-node",
            "main",
            "3",
            "--host",
            &account(3),
            "--json",
        ],
    ));
    println!(
        "cluster replace-node: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let view = &replaced["cluster"];
    assert_eq!(view["in_sync"], 3, "{view:#}");
    let hosts_now: std::collections::BTreeSet<&str> = members(view)
        .iter()
        .map(|n| n["host"].as_str().unwrap())
        .collect();
    assert!(hosts_now.contains(account(3).as_str()), "{view:#}");
    assert!(!hosts_now.contains(account(2).as_str()), "{view:#}");
    assert_eq!(view["nodes"][2]["state"], "gone", "{view:#}");
    // The counter's state came along: the next input counts on from 2.
    let input = json(berth(&home, &["input", "main", "incr visits", "--json"]));
    assert_eq!(input["outputs"], serde_json::json!(["3"]), "{input}");
    assert_eq!(input["signers"].as_array().unwrap().len(), 3, "{input}");
    let leases = json(berth(&home, &["leases", "--json"]));
    let old = view["nodes"][2]["lease"].as_str().unwrap();
    assert!(
        leases
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["lease"] != old || l["state"] != "active"),
        "the old lease ended: {leases:#}"
    );

    // `cluster create` killed once its purchases are validated, then resumed: no second
    // purchase, and the cluster comes up.
    let leases_before = json(berth(&home, &["leases", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "active")
        .count();
    let mut child = Command::new(berth_bin())
        .args([
            "cluster",
            "create",
            "--nodes",
            "2",
            "--name",
            "resumed",
            "--hosts",
            &format!("{},{}", account(0), account(1)),
        ])
        .env("BERTH_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut validated = 0;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("validated in ledger") {
            validated += 1;
            if validated == 2 {
                break;
            }
        }
    }
    assert_eq!(validated, 2, "both purchases validated before the kill");
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = json(berth(
        &home,
        &["cluster", "create", "--resume", "resumed", "--json"],
    ));
    assert_eq!(resumed["cluster"]["in_sync"], 2, "{resumed:#}");
    let leases_after = json(berth(&home, &["leases", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "active")
        .count();
    assert_eq!(leases_after, leases_before + 2, "exactly two purchases");

    // Terminate: every lease ends and no container of the clusters is left.
    for name in ["main", "resumed"] {
        let ended = json(berth(&home, &["cluster", "terminate", name, "--json"]));
        assert!(ended["terminated"].as_u64().unwrap() >= 2, "{ended}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = (0..4)
            .filter(|i| *i != 2)
            .flat_map(|i| containers_with_prefix(hosts[i]["namespace"].as_str().unwrap()))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "containers left: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = namespace;
    drop(sb);
}
