//! A cluster's state anchored on the XRP Ledger, with the real parts: three `hotpocket`
//! processes on 127.0.0.1 as one cluster (threshold 51, so two close ledgers), localnet in
//! process, the tenant library's `anchor --setup`, checkpoints every 10 ledgers, and
//! `berth cluster verify` as a third party runs it (the binary with `--account` and
//! `--node`): all agree; a node shut down lags; a node whose ledger was rewritten
//! contradicts the last checkpoint (exit 1). Prints the cost of a checkpoint for 3 and 5
//! nodes and the time from a ledger's close to its validated checkpoint.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_hotpocket_client::protocol::anchor::signer_quorum;
use berth_hotpocket_client::protocol::bundle::ClusterSpec;
use berth_hotpocket_client::protocol::pubkey_hex;
use berth_localnet::{Config, Localnet, GENESIS_SEED};
use berth_mb_xrpl::{Client, ClientConfig, SubmitConfig, Submitter};
use berth_tenant::anchor::{self, node_account, CheckpointReport, NodeTarget, Verdict};
use berth_tenant::book::{Book, LeaseRecord};
use berth_tenant::cluster::{ClusterNode, ClusterRecord, Clusters, NodeState};
use berth_tenant::keys::Keys;
use berth_tenant::lease::Tenant;
use berth_xrpl_core::{KeyPair, KeyType};
use common::{berth, hotpocket_artifacts, CONTRACT_ID};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

const THRESHOLD: u32 = 51;

fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct HpNode {
    dir: PathBuf,
    key: SigningKey,
    peer_port: u16,
    child: Option<Child>,
    addr: String,
}

impl HpNode {
    fn run(&mut self) {
        let (bin, _) = hotpocket_artifacts();
        let log = std::fs::File::create(self.dir.join("node.log")).unwrap();
        let mut child = Command::new(bin)
            .args(["run", "--state-dir"])
            .arg(&self.dir)
            .args(["--listen", "127.0.0.1", "--user-port", "0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if let Some(rest) = line
                .unwrap()
                .strip_prefix("hotpocket user port listening on ")
            {
                self.addr = rest.trim().to_owned();
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("wss://{}", self.addr)
    }
}

impl Drop for HpNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_cluster(root: &Path, owner: &str, n: usize) -> Vec<HpNode> {
    let (bin, _) = hotpocket_artifacts();
    let keys: Vec<SigningKey> = (0..n)
        .map(|i| SigningKey::from_bytes(&[70 + i as u8; 32]))
        .collect();
    let unl: Vec<String> = keys
        .iter()
        .map(|k| pubkey_hex(&k.verifying_key()))
        .collect();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let dir = root.join(format!("node{i}"));
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("127.0.0.1:{p}"))
            .collect();
        let status = Command::new(bin)
            .arg("new")
            .arg(&dir)
            .args([
                "--owner",
                owner,
                "--contract-id",
                CONTRACT_ID,
                "--user-port",
                "0",
            ])
            .args([
                "--peer-port",
                &ports[i].to_string(),
                "--roundtime-ms",
                "300",
            ])
            .args(["--threshold", &THRESHOLD.to_string()])
            .args(["--node-secret", &hex::encode(key.to_bytes())])
            .args(["--unl", &unl.join(","), "--peers", &peers.join(",")])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let mut node = HpNode {
            dir,
            key,
            peer_port: ports[i],
            child: None,
            addr: String::new(),
        };
        node.run();
        nodes.push(node);
    }
    nodes
}

async fn submit(client: &Client, key: &KeyPair, tx: Value) -> berth_mb_xrpl::Validated {
    let s = Submitter::new(
        client.clone(),
        KeyPair::from_seed(&key.seed().unwrap()).unwrap(),
        SubmitConfig::default(),
    )
    .unwrap();
    let signed = s.prepare(tx).await.unwrap();
    let v = s.submit_and_wait(&signed).await.unwrap();
    assert!(v.is_success(), "{:?}", v.result);
    v
}

fn lease_of(i: usize, node: &HpNode) -> LeaseRecord {
    let (host, port) = node.addr.rsplit_once(':').unwrap();
    LeaseRecord {
        lease: format!("{:064X}", i + 1),
        host: "rHost".into(),
        purchase: format!("{:064X}", 100 + i),
        name: format!("node{i}"),
        instance_host: host.to_owned(),
        user_port: port.parse().unwrap(),
        peer_port: 0,
        peer_host: None,
        node_key: pubkey_hex(&node.key.verifying_key()),
        contract_id: CONTRACT_ID.to_owned(),
        expires_at: u64::MAX / 2,
        price_drops: 1,
        moment_secs: 3600,
        ended: None,
    }
}

async fn berth_async(home: &Path, args: Vec<String>) -> std::process::Output {
    let home = home.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        berth(&home, &args)
    })
    .await
    .unwrap()
}

/// `berth cluster verify` as a third party: only the account and the nodes' user ports.
async fn verify_cli(home: &Path, ledger: &str, account: &str, nodes: &[HpNode]) -> (bool, Value) {
    let mut args = vec![
        "cluster".to_owned(),
        "verify".to_owned(),
        "--ledger".to_owned(),
        ledger.to_owned(),
        "--account".to_owned(),
        account.to_owned(),
        "--json".to_owned(),
        "--timeout".to_owned(),
        "5".to_owned(),
    ];
    for n in nodes {
        args.push("--node".into());
        args.push(n.url());
    }
    let out = berth_async(home, args).await;
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

/// The next checkpoint (every 10 ledgers) after ledger `after`.
async fn next_checkpoint(clusters: &Clusters<'_>, after: u64) -> CheckpointReport {
    let mut progress = |line: &str| eprintln!("{line}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "a checkpoint after ledger {after} within 60 s"
        );
        if let Some(r) = clusters
            .checkpoint("anchored", Some(10), &mut progress)
            .await
            .unwrap()
        {
            assert_eq!(r.seq % 10, 0);
            assert!(r.seq > after);
            return r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn verdicts(report: &Value) -> Vec<String> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["verdict"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_anchored_every_10_ledgers_is_verified_node_by_node() {
    let close_ms: u64 = std::env::var("ANCHOR_TEST_CLOSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let net = Localnet::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: Duration::from_millis(close_ms),
        ..Default::default()
    })
    .await
    .unwrap();
    let ledger_url = net.url();
    let client = Client::connect(ClientConfig::new([ledger_url.clone()]))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let keys = Keys::generate(KeyType::Ed25519);
    keys.save(&home, false).unwrap();
    let genesis = KeyPair::from_seed(GENESIS_SEED).unwrap();
    submit(
        &client,
        &genesis,
        json!({"TransactionType": "Payment", "Destination": keys.wallet.address(), "Amount": "100000000"}),
    )
    .await;

    let mut nodes = start_cluster(tmp.path(), &keys.user_pubkey_hex(), 3);
    let book = Book::new(&home);
    let mut record_nodes = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let lease = lease_of(i, n);
        book.save_lease(&lease).unwrap();
        record_nodes.push(ClusterNode {
            host: lease.host.clone(),
            purchase: lease.purchase.clone(),
            lease: lease.lease.clone(),
            state: NodeState::Member,
            peer_host: None,
        });
    }
    let record = ClusterRecord {
        name: "anchored".into(),
        contract_id: CONTRACT_ID.into(),
        roundtime_ms: Some(300),
        threshold: Some(THRESHOLD),
        image: None,
        size: 3,
        allow_same_host: true,
        hosts: Vec::new(),
        nodes: record_nodes,
        wired: true,
        deployed: None,
        anchor: None,
    };
    book.save_cluster(&record.name, &record).unwrap();
    let tenant = Tenant::new(client.clone(), &keys, Book::new(&home)).unwrap();
    let clusters = Clusters {
        tenant: &tenant,
        book: Book::new(&home),
        user: &keys.user,
        node_timeout: Duration::from_secs(10),
    };
    let mut progress = |line: &str| eprintln!("{line}");

    // Setup: the signer list is the three node keys, quorum 2 of 3 (threshold 51).
    let setup = clusters
        .anchor_setup("anchored", None, &mut progress)
        .await
        .unwrap();
    assert_eq!(setup.quorum, 2);
    let account = setup.account.clone();
    let info = client
        .request(
            "account_info",
            json!({"account": account, "signer_lists": true}),
        )
        .await
        .unwrap();
    let flags = info["account_data"]["Flags"].as_u64().unwrap();
    assert_ne!(flags & 0x0010_0000, 0, "lsfDisableMaster set");
    let owner_count = info["account_data"]["OwnerCount"].as_u64().unwrap();
    let balance: u64 = info["account_data"]["Balance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut listed: Vec<String> = info["signer_lists"][0]["SignerEntries"]
        .as_array()
        .or_else(|| info["account_data"]["signer_lists"][0]["SignerEntries"].as_array())
        .unwrap()
        .iter()
        .map(|e| e["SignerEntry"]["Account"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut want: Vec<String> = setup.signers.iter().map(|(_, a)| a.clone()).collect();
    want.sort();
    assert_eq!(listed, want);

    // Anchor every 10 ledgers: three checkpoints.
    let mut reports = Vec::new();
    for _ in 0..3 {
        let after = reports.last().map_or(0, |r: &CheckpointReport| r.seq);
        reports.push(next_checkpoint(&clusters, after).await);
    }
    let (ok, report) = verify_cli(&home, &ledger_url, &account, &nodes).await;
    assert!(ok, "{report}");
    assert_eq!(
        report["checkpoints"].as_array().unwrap().len(),
        3,
        "{report}"
    );
    assert!(report["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["valid"] == true));
    assert_eq!(
        verdicts(&report),
        ["agrees", "agrees", "agrees"],
        "{report}"
    );

    // The binary: one checkpoint of the latest ledger, as JSON. `null` means the latest
    // ledger is anchored already (the cluster has not closed one since, on a loaded
    // machine): ask again once it has.
    let mut cli = Value::Null;
    for _ in 0..40 {
        let out = berth_async(
            &home,
            [
                "cluster",
                "anchor",
                "--cluster",
                "anchored",
                "--once",
                "--json",
                "--ledger",
                &ledger_url,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await;
        cli = serde_json::from_str(&common::ok(out)).unwrap();
        if !cli.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        cli["seq"].as_u64().unwrap() > reports.last().unwrap().seq,
        "{cli}"
    );
    assert_eq!(cli["signers"], 2);

    // Node 2 shut down: the other two go on and anchor; node 2 lags, it does not lie.
    nodes[1].stop();
    let r = next_checkpoint(&clusters, reports.last().unwrap().seq).await;
    assert!(
        r.refusals.iter().any(|x| x.starts_with("node 2")),
        "{:?}",
        r.refusals
    );
    reports.push(r);
    let last = reports.last().unwrap().clone();
    let (ok, report) = verify_cli(&home, &ledger_url, &account, &nodes).await;
    assert!(ok, "{report}");
    assert_eq!(verdicts(&report), ["agrees", "lags", "agrees"], "{report}");

    // Node 3's ledger at the last checkpoint rewritten (another state): it contradicts.
    nodes[2].stop();
    {
        let conn = rusqlite_open(&nodes[2].dir.join("ledger.sqlite"));
        conn.execute(
            "UPDATE ledgers SET state_hash = ?1 WHERE seq_no = ?2",
            rusqlite::params![[9u8; 32].as_slice(), last.seq],
        )
        .unwrap();
    }
    nodes[2].run();
    let (ok, report) = verify_cli(&home, &ledger_url, &account, &nodes).await;
    assert!(!ok, "verify exits 1 when a node contradicts");
    assert_eq!(
        verdicts(&report),
        ["agrees", "lags", "contradicts"],
        "{report}"
    );

    // The library's verify with the cluster's record names the same (node 3 listens on a
    // new port since its restart: the lease record says so).
    Book::new(&home)
        .save_lease(&lease_of(2, &nodes[2]))
        .unwrap();
    let targets: Vec<NodeTarget> =
        anchor::targets_of(&Book::new(&home), &clusters.load("anchored").unwrap());
    let lib = anchor::verify(
        &client,
        &account,
        &targets,
        Duration::from_secs(5),
        &mut progress,
    )
    .await
    .unwrap();
    assert_eq!(lib.nodes[2].verdict, Verdict::Contradicts);
    assert!(lib.contradicted());

    // Node 2 leaves the UNL (the owner's cluster request, through consensus of 1 and 3):
    // checkpoints stop until the signer list follows; the old list's quorum (nodes 1 and
    // 3, each signing only a list naming its own new UNL) signs the new one.
    let owner = berth_tenant::instance::Instance::connect(
        &nodes[0].url(),
        &keys.user,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let spec = ClusterSpec {
        unl: [0, 2]
            .iter()
            .map(|&i| pubkey_hex(&nodes[i].key.verifying_key()))
            .collect(),
        peers: [0, 2]
            .iter()
            .map(|&i| format!("127.0.0.1:{}", nodes[i].peer_port))
            .collect(),
    };
    let reply = owner.set_cluster(&spec).await.unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    owner.close().await;
    let mut record = clusters.load("anchored").unwrap();
    record.nodes[1].state = NodeState::Leaving;
    book.save_cluster(&record.name, &record).unwrap();
    let stale = clusters
        .checkpoint("anchored", Some(10), &mut progress)
        .await;
    assert!(
        matches!(stale, Err(anchor::AnchorError::StaleSigners { .. })),
        "{stale:?}"
    );
    let updated = clusters
        .update_signers("anchored", &mut progress)
        .await
        .unwrap()
        .expect("the list changes");
    assert_eq!((updated.signers.len(), updated.quorum), (2, 2));
    assert!(clusters
        .update_signers("anchored", &mut progress)
        .await
        .unwrap()
        .is_none());
    let lib = anchor::verify(
        &client,
        &account,
        &[],
        Duration::from_secs(5),
        &mut progress,
    )
    .await
    .unwrap();
    assert_eq!(lib.signer_list.len(), 2);
    assert!(
        lib.checkpoints.iter().all(|c| c.valid),
        "old checkpoints judged by the old list"
    );

    // Figures: a checkpoint's cost for 3 and 5 nodes, and close → validated.
    let (base, inc) = tenant.reserves().await;
    let fee_info = client.request("fee", Value::Null).await.unwrap();
    let base_fee: u64 = fee_info["drops"]["base_fee"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for (n, threshold) in [(3usize, 80u32), (3, 51), (5, 80), (5, 51)] {
        let q = signer_quorum(n, threshold) as u64;
        eprintln!(
            "FIGURE checkpoint nodes={n} threshold={threshold} quorum={q} fee_drops={} account_reserve_drops={} (base {base} + 1 signer list object {inc})",
            base_fee * (1 + q),
            base + inc,
        );
    }
    // The reserve counts one object for a signer list of any size (measured for 5 too).
    let five = KeyPair::generate(KeyType::Ed25519);
    submit(
        &client,
        &genesis,
        json!({"TransactionType": "Payment", "Destination": five.address(), "Amount": "50000000"}),
    )
    .await;
    let entries: Vec<Value> = (0..5)
        .map(|i| {
            let k = SigningKey::from_bytes(&[90 + i as u8; 32]);
            json!({"SignerEntry": {"Account": node_account(&pubkey_hex(&k.verifying_key())).unwrap(), "SignerWeight": 1}})
        })
        .collect();
    submit(
        &client,
        &five,
        json!({"TransactionType": "SignerListSet", "SignerQuorum": 4, "SignerEntries": entries}),
    )
    .await;
    let info5 = client.account_data(&five.address()).await.unwrap().unwrap();
    eprintln!(
        "FIGURE owner_count nodes=3: {owner_count}, nodes=5: {}; cluster account balance after setup {balance} drops",
        info5["OwnerCount"]
    );
    let times: Vec<u64> = reports.iter().map(|r| r.close_to_validated_ms).collect();
    eprintln!(
        "FIGURE close_to_validated_ms (localnet closes every {close_ms} ms, roundtime 300 ms): {times:?}; fees {:?}",
        reports.iter().map(|r| r.fee_drops).collect::<Vec<_>>()
    );
    drop(nodes);
    client.shutdown().await;
    net.shutdown().await;
}

fn rusqlite_open(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}
