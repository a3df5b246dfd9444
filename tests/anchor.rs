//! A cluster's state anchored on the XRP Ledger, on the multi-host sandbox with the real
//! binaries: a 3-node cluster on 3 hosts (threshold 51), `berth cluster anchor --setup`,
//! a checkpoint every 10 ledgers, and `berth cluster verify`: every node agrees; a node
//! whose ledger was rewritten in its state volume contradicts the last checkpoint (exit 1);
//! a node shut down lags, it does not lie. The instance image must hold a runtime with the
//! anchor extension: `BERTH_E2E_IMAGE` names another image than `berth-hotpocket:latest`.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::{berth, counter_bundle, json, ok, ports, Sandbox};
use serde_json::Value;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The container of cluster node `i` (1-based), from the lease record's instance name.
fn container_of(home: &std::path::Path, view: &Value, i: usize) -> String {
    let lease = view["nodes"][i - 1]["lease"].as_str().unwrap();
    let record: Value = serde_json::from_slice(
        &std::fs::read(home.join("leases").join(format!("{lease}.json"))).unwrap(),
    )
    .unwrap();
    let name = record["name"].as_str().unwrap().to_owned();
    let all = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    all.lines()
        .find(|c| c.ends_with(&name) || *c == name)
        .unwrap_or_else(|| panic!("no container for {name} in {all}"))
        .to_owned()
}

fn verdicts(report: &Value) -> Vec<String> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["verdict"].as_str().unwrap().to_owned())
        .collect()
}

fn verify(home: &std::path::Path) -> (bool, Value) {
    let out = berth(
        home,
        &[
            "cluster",
            "verify",
            "--cluster",
            "anc",
            "--json",
            "--timeout",
            "5",
        ],
    );
    let ok = out.status.success();
    (ok, serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn a_cluster_anchored_every_10_ledgers_is_verified_node_by_node() {
    let image =
        std::env::var("BERTH_E2E_IMAGE").unwrap_or_else(|_| "berth-hotpocket:latest".into());
    let (user, peer) = ports(27900);
    let Some(sb) = Sandbox::start(&[
        "--hosts",
        "3",
        "--slots",
        "2",
        "--user-ports",
        &user,
        "--peer-ports",
        &peer,
        "--image",
        &image,
    ]) else {
        return;
    };
    let home = sb.tenant_home();
    let bundle = counter_bundle().to_str().unwrap().to_owned();
    ok(berth(
        &home,
        &[
            "cluster",
            "create",
            "--nodes",
            "3",
            "--name",
            "anc",
            "--threshold",
            "51",
            "--bundle",
            &bundle,
        ],
    ));
    let setup = json(berth(
        &home,
        &["cluster", "anchor", "--cluster", "anc", "--setup", "--json"],
    ));
    assert_eq!(setup["quorum"], 2, "{setup}");

    // A checkpoint every 10 ledgers: three of them.
    let mut checkpoints: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while checkpoints.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "three checkpoints: {checkpoints:?}"
        );
        let r = json(berth(
            &home,
            &[
                "cluster",
                "anchor",
                "--cluster",
                "anc",
                "--every",
                "10",
                "--once",
                "--json",
            ],
        ));
        if !r.is_null() {
            assert_eq!(r["seq"].as_u64().unwrap() % 10, 0, "{r}");
            eprintln!(
                "FIGURE e2e checkpoint of ledger {}: fee {} drops, {} ms from close to validated",
                r["seq"], r["fee_drops"], r["close_to_validated_ms"]
            );
            checkpoints.push(r);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (all_ok, report) = verify(&home);
    assert!(all_ok, "{report}");
    assert_eq!(
        verdicts(&report),
        ["agrees", "agrees", "agrees"],
        "{report}"
    );

    // Node 3's ledger at the last checkpoint rewritten in its state volume: it contradicts.
    let view = json(berth(&home, &["cluster", "status", "anc", "--json"]));
    let node3 = container_of(&home, &view, 3);
    let last = checkpoints.last().unwrap()["seq"].as_u64().unwrap();
    docker(&["stop", &node3]);
    let volume = docker(&[
        "inspect",
        &node3,
        "--format",
        "{{range .Mounts}}{{.Source}} {{end}}",
    ]);
    let db = volume
        .split_whitespace()
        .map(|d| std::path::Path::new(d).join("ledger.sqlite"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no ledger.sqlite under {volume}"));
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('UPDATE ledgers SET state_hash=? WHERE seq_no=?', (bytes([9])*32, int(sys.argv[2]))); c.commit()",
            db.to_str().unwrap(),
            &last.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    docker(&["start", &node3]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (all_ok, report) = verify(&home);
        if verdicts(&report)[2] == "contradicts" {
            assert!(!all_ok, "verify exits 1 when a node contradicts");
            break report;
        }
        assert!(Instant::now() < deadline, "node 3 never answered: {report}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(verdicts(&report)[..2], ["agrees", "agrees"], "{report}");

    // Node 2 shut down: it lags, it does not lie.
    let node2 = container_of(&home, &view, 2);
    docker(&["stop", &node2]);
    let (all_ok, report) = verify(&home);
    assert!(!all_ok, "node 3 still contradicts: {report}");
    assert_eq!(
        verdicts(&report),
        ["agrees", "lags", "contradicts"],
        "{report}"
    );
    sb.stop();
}
