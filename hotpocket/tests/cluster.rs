//! Consensus among several `hotpocket` processes on 127.0.0.1: every node a real process
//! with its own user and peer ports, peering over TLS WebSocket.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_hotpocket_client::client::{Client, ConnectOptions, LedgerOutputs};
use berth_hotpocket_client::protocol::bundle::{BootstrapReply, ClusterSpec};
use berth_hotpocket_client::protocol::pubkey_hex;
use berth_hotpocket_client::protocol::user::Protocol;
use common::*;
use ed25519_dalek::SigningKey;

const OWNER: u8 = 1;

/// Cluster tests run one at a time: each starts several processes with sub-second rounds,
/// and the machine they share is small.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A peer port for a node, chosen below the kernel's ephemeral range (32768–60999), so that
/// the other nodes' outgoing connections cannot take it between this choice and the node's
/// bind; checked free by binding it once.
fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Member {
    dir: PathBuf,
    child: Option<Child>,
    addr: String,
    key: SigningKey,
    peer_port: u16,
    /// Extra environment for the node's process (fault injection, creation from HP_*).
    env: Vec<(String, String)>,
}

/// A cluster of `hotpocket` processes sharing a UNL and peering with each other.
struct Cluster {
    _root: tempfile::TempDir,
    members: Vec<Member>,
}

struct Settings {
    nodes: usize,
    roundtime: u64,
    threshold: u32,
    /// Clock skew (ms) per node, when any.
    skews: Vec<i64>,
    /// Extra environment variables: (node, name, value).
    envs: Vec<(usize, &'static str, &'static str)>,
    /// Nodes that dial nobody and that nobody dials.
    isolated: Vec<usize>,
}

impl Settings {
    fn new(nodes: usize, roundtime: u64) -> Settings {
        Settings {
            nodes,
            roundtime,
            threshold: 80,
            skews: Vec::new(),
            envs: Vec::new(),
            isolated: Vec::new(),
        }
    }
}

impl Cluster {
    fn start(s: Settings) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let keys: Vec<SigningKey> = (0..s.nodes).map(|i| key(100 + i as u8)).collect();
        let unl: Vec<String> = keys
            .iter()
            .map(|k| pubkey_hex(&k.verifying_key()))
            .collect();
        let ports: Vec<u16> = (0..s.nodes).map(|_| free_port()).collect();
        let mut members = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let dir = root.path().join(format!("node{i}"));
            let peers: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && !s.isolated.contains(j) && !s.isolated.contains(&i))
                .map(|(_, p)| format!("127.0.0.1:{p}"))
                .collect();
            let status = Command::new(hotpocket_bin())
                .arg("new")
                .arg(&dir)
                .args(["--owner", &pubkey_hex(&key(OWNER).verifying_key())])
                .args(["--contract-id", CONTRACT_ID, "--user-port", "0"])
                .args(["--peer-port", &ports[i].to_string()])
                .args(["--roundtime-ms", &s.roundtime.to_string()])
                .args(["--threshold", &s.threshold.to_string()])
                .args(["--node-secret", &hex::encode(k.to_bytes())])
                .args(["--unl", &unl.join(",")])
                .args(["--peers", &peers.join(",")])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            members.push(Member {
                dir,
                child: None,
                addr: String::new(),
                key: k.clone(),
                peer_port: ports[i],
                env: s
                    .envs
                    .iter()
                    .filter(|(n, _, _)| *n == i)
                    .map(|(_, k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        let mut cluster = Cluster {
            _root: root,
            members,
        };
        for i in 0..s.nodes {
            cluster.run(i, s.skews.get(i).copied());
        }
        cluster
    }

    /// Starts (or restarts) node `i`; its log goes to `<dir>/node.log`.
    fn run(&mut self, i: usize, skew: Option<i64>) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("node.log"))
            .unwrap();
        let mut cmd = Command::new(hotpocket_bin());
        cmd.args(["run", "--state-dir"])
            .arg(&m.dir)
            .args(["--listen", "127.0.0.1", "--user-port", "0"])
            .env(
                "RUST_LOG",
                "info,berth_hotpocket::peer=debug,berth_hotpocket::round=debug",
            )
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(skew) = skew {
            cmd.env("HP_CLOCK_SKEW_MS", skew.to_string());
        }
        for (k, v) in &m.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("hotpocket user port listening on ") {
                addr = Some(rest.trim().to_owned());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        m.addr = addr.expect("node printed its address");
        m.child = Some(child);
    }

    /// Starts `nodes` nodes the way a tenant's purchase makes them: created at first start
    /// from HP_* variables with `HP_AWAIT_CLUSTER=1`, no UNL and no peers, so each holds at
    /// genesis until the owner's cluster request.
    fn start_held(nodes: usize, roundtime: u64, threshold: u32) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            _root: root,
            members: Vec::new(),
        };
        for i in 0..nodes {
            let dir = cluster._root.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let k = key(100 + i as u8);
            let port = free_port();
            let env = [
                ("HP_CONTRACT_ID", CONTRACT_ID.to_owned()),
                ("HP_OWNER_PUBKEY", pubkey_hex(&key(OWNER).verifying_key())),
                ("HP_NODE_SECRET", hex::encode(k.to_bytes())),
                ("HP_PEER_PORT", port.to_string()),
                ("HP_ROUNDTIME_MS", roundtime.to_string()),
                ("HP_THRESHOLD", threshold.to_string()),
                ("HP_AWAIT_CLUSTER", "1".to_owned()),
            ];
            cluster.members.push(Member {
                dir,
                child: None,
                addr: String::new(),
                key: k,
                peer_port: port,
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            });
            cluster.run(i, None);
        }
        cluster
    }

    /// The cluster spec of `nodes`: their keys and peer addresses.
    fn spec(&self, nodes: &[usize]) -> ClusterSpec {
        ClusterSpec {
            unl: nodes.iter().map(|&i| self.key_hex(i)).collect(),
            peers: nodes
                .iter()
                .map(|&i| format!("127.0.0.1:{}", self.members[i].peer_port))
                .collect(),
        }
    }

    /// Sends the owner's cluster request for `nodes` to node `via`; returns the answer.
    async fn set_cluster(&self, via: usize, nodes: &[usize]) -> BootstrapReply {
        let owner = self.connect(via, &key(OWNER)).await;
        match owner.set_cluster(&self.spec(nodes)).await {
            Ok(reply) => reply,
            Err(e) => panic!("cluster request to node {via}: {e}\n{}", self.logs_tail()),
        }
    }

    /// Creates a blank node that follows the cluster's UNL as an observer (its key is not
    /// in the UNL) and dials every member; returns its index. It is not started.
    fn add_observer(&mut self, roundtime: u64, threshold: u32) -> usize {
        let i = self.members.len();
        let k = key(100 + i as u8);
        let dir = self._root.path().join(format!("node{i}"));
        let unl: Vec<String> = (0..i).map(|j| self.key_hex(j)).collect();
        let peers: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.peer_port))
            .collect();
        let port = free_port();
        let status = Command::new(hotpocket_bin())
            .arg("new")
            .arg(&dir)
            .args(["--owner", &pubkey_hex(&key(OWNER).verifying_key())])
            .args(["--contract-id", CONTRACT_ID, "--user-port", "0"])
            .args(["--peer-port", &port.to_string()])
            .args(["--roundtime-ms", &roundtime.to_string()])
            .args(["--threshold", &threshold.to_string()])
            .args(["--node-secret", &hex::encode(k.to_bytes())])
            .args(["--unl", &unl.join(",")])
            .args(["--peers", &peers.join(",")])
            .arg("--observer")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        self.members.push(Member {
            dir,
            child: None,
            addr: String::new(),
            key: k,
            peer_port: port,
            env: Vec::new(),
        });
        i
    }

    /// Node `i`'s record of ledger `seq` (read from its SQLite store).
    fn ledger_of(&self, i: usize, seq: u64) -> Option<berth_hotpocket::ledger::Ledger> {
        let path = berth_hotpocket::node::ledger_db_path(&self.members[i].dir);
        let store = berth_hotpocket::store::Store::open(&path).unwrap();
        store.ledger(seq).unwrap()
    }

    /// Node `i`'s contract state directory.
    fn state_dir(&self, i: usize) -> PathBuf {
        self.members[i].dir.join("contract_fs").join("state")
    }

    /// Waits until node `i` says it is in sync (as a UNL member, or an observer when
    /// `observer`) on a ledger at or past `seq`.
    async fn wait_in_sync(&self, i: usize, seq: u64, observer: bool, within: Duration) {
        let want = if observer {
            "in sync (observer)"
        } else {
            "in sync"
        };
        let deadline = Instant::now() + within;
        let c = self.connect(i, &key(220 + i as u8)).await;
        loop {
            let stat = c.stat().await.unwrap();
            let lcl = c.lcl().await.unwrap().0;
            if stat.in_sync && stat.vote_status == want && lcl >= seq {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} not {want} at ledger {seq} (lcl {lcl}, {})\n{}",
                stat.vote_status,
                self.logs_tail()
            );
            sleep_ms(100).await;
        }
    }

    /// Restarts node `i` and waits until it is in sync on the ledger `others` are on.
    async fn rejoin(&mut self, i: usize, others: &[usize], within: Duration) {
        self.run(i, None);
        let target = *self.lcls(others).await.iter().max().unwrap();
        self.wait_in_sync(i, target, false, within).await;
    }

    /// Waits until `nodes` closed `n` more ledgers.
    async fn advance(&self, nodes: &[usize], n: u64, within: Duration) {
        let now = *self.lcls(nodes).await.iter().max().unwrap();
        self.wait_for_ledger(nodes, now + n, within).await;
    }

    /// Checks that nodes `nodes` recorded the same ledger at the highest sequence number
    /// they all have: the same chain, and so the same state hashes up to it.
    async fn assert_same_chain(&self, nodes: &[usize]) {
        let seq = *self.lcls(nodes).await.iter().min().unwrap();
        let first = self.ledger_of(nodes[0], seq).expect("ledger recorded");
        for &i in &nodes[1..] {
            let other = self.ledger_of(i, seq).expect("ledger recorded");
            assert_eq!(
                other, first,
                "node {i} and node {} differ at ledger {seq}",
                nodes[0]
            );
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].dir.join("node.log")).unwrap_or_default()
    }

    fn key_hex(&self, i: usize) -> String {
        pubkey_hex(&self.members[i].key.verifying_key())
    }

    async fn connect(&self, i: usize, user: &SigningKey) -> Client {
        let opts = ConnectOptions {
            output_grace: Duration::from_secs(8),
            ..ConnectOptions::default()
        };
        Client::connect(&self.members[i].addr, user.clone(), opts)
            .await
            .unwrap()
    }

    /// The lcl of each live node (through a fresh monitor connection each).
    async fn lcls(&self, live: &[usize]) -> Vec<u64> {
        let mut out = Vec::new();
        for &i in live {
            let c = self.connect(i, &key(200 + i as u8)).await;
            out.push(c.lcl().await.unwrap().0);
        }
        out
    }

    /// Waits until every node in `live` reached ledger `seq`.
    async fn wait_for_ledger(&self, live: &[usize], seq: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let lcls = self.lcls(live).await;
            if lcls.iter().all(|l| *l >= seq) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {live:?} did not reach ledger {seq}: {lcls:?}\n{}",
                self.logs_tail()
            );
            sleep_ms(200).await;
        }
    }

    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for i in 0..self.members.len() {
            let log = self.log(i);
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| {
                    !l.contains("ledger request answered")
                        && !l.contains("asking for the ledgers")
                        && !l.contains("without enough UNL signatures")
                })
                .take(40)
                .collect();
            out.push_str(&format!("--- node {i} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Installs `zip` through node `via` as the owner, and checks every node installed it.
async fn install_everywhere(cluster: &Cluster, via: usize, zip: &[u8], live: &[usize]) {
    let owner = cluster.connect(via, &key(OWNER)).await;
    install_with(cluster, &owner, via, zip, live).await;
}

/// Installs `zip` with the owner's connection to node `via`, and checks every node did.
async fn install_with(cluster: &Cluster, owner: &Client, via: usize, zip: &[u8], live: &[usize]) {
    let reply = match owner.upload_bundle(zip).await {
        Ok(r) => r,
        Err(e) => panic!("upload through node {via}: {e}\n{}", cluster.logs_tail()),
    };
    assert_eq!(reply.status, "ok", "upload failed: {}", reply.message);
    for &i in live {
        let c = cluster.connect(i, &key(210 + i as u8)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.stat().await.unwrap().contract_execution_enabled {
            assert!(
                Instant::now() < deadline,
                "node {i} did not install the bundle"
            );
            sleep_ms(100).await;
        }
    }
}

fn text(out: &LedgerOutputs) -> String {
    out.outputs
        .iter()
        .map(|o| String::from_utf8_lossy(o).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_sent_to_node_2_is_output_by_every_node_signed_by_the_whole_unl() {
    let _serial = serial().await;
    let cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    install_everywhere(
        &cluster,
        0,
        &bundle("probe-contract", basic_config()),
        &[0, 1, 2],
    )
    .await;
    let user = key(9);
    let clients = [
        cluster.connect(0, &user).await,
        cluster.connect(1, &user).await,
        cluster.connect(2, &user).await,
    ];
    let stat = clients[1].stat().await.unwrap();
    assert!(stat.in_sync, "{}", stat.vote_status);
    assert_eq!(stat.peers.len(), 2, "node 2 peers with the other two");
    let out = clients[1]
        .submit_and_wait(b"echo hello cluster")
        .await
        .unwrap();
    assert_eq!(text(&out), "hello cluster");
    let unl: Vec<String> = (0..3).map(|i| cluster.key_hex(i)).collect();
    let mut sorted = unl.clone();
    sorted.sort();
    for (i, c) in clients.iter().enumerate() {
        let got = c
            .outputs_of(out.ledger_seq_no, Duration::from_secs(8))
            .await;
        assert_eq!(got.outputs, out.outputs, "node {i} sent the same output");
        assert_eq!(
            got.ledger_hash, out.ledger_hash,
            "node {i} names the same ledger"
        );
        assert_eq!(
            got.signers, sorted,
            "node {i}: unl_sig from every UNL node, verified"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_five_down_ledgers_close_and_with_two_none_close_on_the_minority() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(Settings::new(5, 400));
    let all = [0, 1, 2, 3, 4];
    cluster
        .wait_for_ledger(&all, 2, Duration::from_secs(20))
        .await;
    cluster.kill(4);
    let before = cluster.lcls(&[0, 1, 2, 3]).await;
    let target = before.iter().max().unwrap() + 3;
    cluster
        .wait_for_ledger(&[0, 1, 2, 3], target, Duration::from_secs(20))
        .await;

    cluster.kill(3);
    // Let the round in flight finish, then watch: no ledger may close on 3 of 5.
    sleep_ms(1200).await;
    let stalled = cluster.lcls(&[0, 1, 2]).await;
    sleep_ms(2400).await;
    let later = cluster.lcls(&[0, 1, 2]).await;
    assert_eq!(
        stalled, later,
        "no ledger closes with 3 of 5 (threshold 80)"
    );
    let c = cluster.connect(0, &key(9)).await;
    let stat = c.stat().await.unwrap();
    assert!(!stat.in_sync);
    assert!(
        stat.vote_status.contains("not enough peers proposing"),
        "{}",
        stat.vote_status
    );

    // Node 3 stopped on the same ledger as the rest: when it returns, the cluster resumes.
    cluster.run(3, None);
    let max = later.iter().max().unwrap() + 2;
    cluster
        .wait_for_ledger(&[0, 1, 2, 3], max, Duration::from_secs(30))
        .await;
    // Node 4 stopped ledgers ago: it fetches what it missed from its peers, checks each
    // ledger against the UNL's signatures, replays it, and is back in the UNL's chain.
    cluster.run(4, None);
    let now = cluster.lcls(&[0]).await[0];
    cluster
        .wait_for_ledger(&all, now + 2, Duration::from_secs(30))
        .await;
    let back = cluster.connect(4, &key(12)).await;
    let other = cluster.connect(0, &key(13)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s0, h0) = other.lcl().await.unwrap();
        let (s4, h4) = back.lcl().await.unwrap();
        if s0 == s4 {
            assert_eq!(h0, h4, "one chain");
            break;
        }
        assert!(Instant::now() < deadline, "node 4 at {s4}, node 0 at {s0}");
        sleep_ms(50).await;
    }
    assert!(back.stat().await.unwrap().in_sync);
    assert!(cluster.log(4).contains("replaying a ledger the UNL closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_deterministic_contract_is_reported_and_no_ledger_closes_on_split_state() {
    let _serial = serial().await;
    let cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    install_everywhere(
        &cluster,
        0,
        &bundle("probe-contract", basic_config()),
        &[0, 1, 2],
    )
    .await;
    let user = cluster.connect(1, &key(9)).await;
    let submitted = user.submit(b"random").await.unwrap();
    let accepted = user.wait_status(&submitted.input_hash).await.unwrap();
    let berth_hotpocket_client::client::InputOutcome::Accepted { ledger_seq_no, .. } = accepted
    else {
        panic!("random input rejected: {accepted:?}");
    };
    // Each node wrote its own random bytes: their states split and stay split.
    sleep_ms(2000).await;
    let lcls = cluster.lcls(&[0, 1, 2]).await;
    assert!(
        lcls.iter().all(|l| *l == ledger_seq_no),
        "no ledger after the divergent one: {lcls:?}"
    );
    let out = user
        .outputs_of(ledger_seq_no, Duration::from_millis(500))
        .await;
    assert!(
        out.outputs.is_empty(),
        "outputs of a divergent execution are never released"
    );
    let stat = user.stat().await.unwrap();
    assert!(!stat.in_sync);
    assert!(
        stat.vote_status.contains("different states"),
        "{}",
        stat.vote_status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nodes_contract_hears_every_other_nodes_npl_message() {
    let _serial = serial().await;
    let cluster = Cluster::start(Settings::new(3, 500));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    install_everywhere(
        &cluster,
        0,
        &bundle("probe-contract", basic_config()),
        &[0, 1, 2],
    )
    .await;
    let user = cluster.connect(2, &key(9)).await;
    let out = user.submit_and_wait(b"npl").await.unwrap();
    let mut unl: Vec<String> = (0..3).map(|i| cluster.key_hex(i)).collect();
    unl.sort();
    // The output is agreed (same on every node) only if every contract heard all three.
    assert_eq!(text(&out), unl.join(","));
    assert_eq!(out.signers.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unl_change_in_patch_cfg_takes_effect_at_the_same_ledger_everywhere() {
    let _serial = serial().await;
    let cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    install_everywhere(
        &cluster,
        0,
        &bundle("probe-contract", basic_config()),
        &[0, 1, 2],
    )
    .await;
    let user = cluster.connect(0, &key(9)).await;
    let watcher = cluster.connect(1, &key(10)).await;
    assert_eq!(
        text(&user.submit_and_wait(b"track-unl").await.unwrap()),
        "tracking"
    );
    // Node 2 leaves the UNL: it becomes an observer and follows.
    let new_unl = format!("{},{}", cluster.key_hex(0), cluster.key_hex(1));
    let out = user
        .submit_and_wait(format!("patch-unl {new_unl}").as_bytes())
        .await
        .unwrap();
    assert_eq!(text(&out), "patched");
    cluster
        .wait_for_ledger(&[0, 1, 2], out.ledger_seq_no + 4, Duration::from_secs(20))
        .await;
    let mut logs = Vec::new();
    for i in 0..3 {
        let c = cluster.connect(i, &key(20 + i as u8)).await;
        logs.push(String::from_utf8(c.read("cat unl.log").await.unwrap()).unwrap());
    }
    let switch_at = |log: &str| {
        log.lines()
            .find(|l| !l.contains(&cluster.key_hex(2)))
            .and_then(|l| l.split(' ').next())
            .map(str::to_owned)
    };
    let first = switch_at(&logs[0]).expect("the UNL changed");
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(
            switch_at(log).as_deref(),
            Some(first.as_str()),
            "node {i}:\n{log}"
        );
    }
    let changes = watcher.unl_changes();
    assert_eq!(changes.len(), 1, "users got one unl_change");
    assert_eq!(changes[0].len(), 2);
    let observer = cluster.connect(2, &key(11)).await.stat().await.unwrap();
    assert!(
        observer.in_sync,
        "the observer follows: {}",
        observer.vote_status
    );
    assert!(observer.vote_status.contains("observer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_skewed_by_a_tenth_of_the_roundtime_still_close_ledgers() {
    let _serial = serial().await;
    let mut s = Settings::new(3, 500);
    s.skews = vec![50, 0, -50];
    let cluster = Cluster::start(s);
    cluster
        .wait_for_ledger(&[0, 1, 2], 5, Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_proposals_are_never_counted() {
    let _serial = serial().await;
    // Three UNL nodes, one of them down: 2 of 3 is below the 80 % threshold. A stranger
    // running the same contract with all four keys in its own UNL must not tip it.
    let mut cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    cluster.kill(2);
    let root = tempfile::tempdir().unwrap();
    let stranger_dir = root.path().join("stranger");
    let unl: Vec<String> = (0..3)
        .map(|i| cluster.key_hex(i))
        .chain([pubkey_hex(&key(99).verifying_key())])
        .collect();
    let peers: Vec<String> = (0..2)
        .map(|i| {
            let cfg: serde_json::Value = serde_json::from_slice(
                &std::fs::read(cluster.members[i].dir.join("hp.cfg")).unwrap(),
            )
            .unwrap();
            format!("127.0.0.1:{}", cfg["mesh"]["port"])
        })
        .collect();
    let status = Command::new(hotpocket_bin())
        .arg("new")
        .arg(&stranger_dir)
        .args(["--owner", &pubkey_hex(&key(OWNER).verifying_key())])
        .args([
            "--contract-id",
            CONTRACT_ID,
            "--user-port",
            "0",
            "--peer-port",
            "0",
        ])
        .args(["--roundtime-ms", "400", "--node-secret", &"99".repeat(32)])
        .args(["--unl", &unl.join(","), "--peers", &peers.join(",")])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let _stranger = start_logged(&stranger_dir);
    sleep_ms(1200).await;
    let stalled = cluster.lcls(&[0, 1]).await;
    sleep_ms(2000).await;
    assert_eq!(
        stalled,
        cluster.lcls(&[0, 1]).await,
        "no ledger with the stranger's votes"
    );
    let log = cluster.log(0);
    assert!(
        log.contains("outside the UNL not counted"),
        "the stranger's proposals are named in the log"
    );
}

fn start_logged(dir: &Path) -> Node {
    Node::start(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_unsigned_and_strangers_peer_messages_are_dropped_with_a_reason() {
    use berth_hotpocket::consensus::RoundTiming;
    use berth_hotpocket::peer::net::{PeerConfig, PeerNet};
    use berth_hotpocket::peer::wire::{NodeKey, PeerMsg, RelayedInput, Sig};

    let _serial = serial().await;
    let cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.members[0].dir.join("hp.cfg")).unwrap())
            .unwrap();
    let node0 = format!("127.0.0.1:{}", cfg["mesh"]["port"]);

    // A stranger completes a real handshake with node 0 (anyone can), hears its broadcasts,
    // and sends back forgeries.
    let tls_dir = tempfile::tempdir().unwrap();
    let stranger = key(77);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let net = PeerNet::start(
        PeerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            known_peers: vec![node0],
            contract_id: CONTRACT_ID.to_owned(),
            time_config: RoundTiming::new(CONTRACT_ID, 400, 25).time_config(),
            max_frame_bytes: 1 << 20,
        },
        stranger.clone(),
        berth_hotpocket::tls::server_config(tls_dir.path()).unwrap(),
        berth_hotpocket::tls::peer_client_config().unwrap(),
        tx,
        cancel.clone(),
        tracker.clone(),
    )
    .await
    .unwrap();
    let captured = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(inbound) = rx.recv().await {
                if let PeerMsg::Proposal(p) = inbound.msg {
                    break p;
                }
            }
        }
    })
    .await
    .expect("node 0 broadcasts its proposals to a verified session");
    let before = cluster.lcls(&[0]).await[0];

    // Forged: node 1's key with the stranger's signature, and an extra input.
    let mut forged = captured.clone().sign(&stranger);
    forged.node = NodeKey::of(&cluster.members[1].key);
    forged.inputs = vec![[7; 32]];
    net.broadcast(&PeerMsg::Proposal(forged));
    // Unsigned.
    let mut unsigned = captured.clone();
    unsigned.sig = Sig([0; 64]);
    net.broadcast(&PeerMsg::Proposal(unsigned));
    // The stranger's own, correctly signed.
    net.broadcast(&PeerMsg::Proposal(captured.clone().sign(&stranger)));
    // A user input whose signature is not the user's.
    net.broadcast(&PeerMsg::Inputs(vec![RelayedInput {
        user: NodeKey::of(&key(9)),
        protocol: 0,
        container: br#"{"input":"aGk=","nonce":1,"max_ledger_seq_no":1000}"#.to_vec(),
        sig: Sig([1; 64]),
    }]));
    // Replayed: node 0's proposal again, four rounds later.
    sleep_ms(1700).await;
    net.broadcast(&PeerMsg::Proposal(captured));
    sleep_ms(1000).await;

    let after = cluster.lcls(&[0, 1, 2]).await;
    assert!(
        after.iter().all(|l| *l > before),
        "the cluster kept closing ledgers: {before} -> {after:?}"
    );
    let log = cluster.log(0);
    for reason in [
        "bad proposal signature",
        "outside the UNL not counted",
        "relayed input with a bad user signature",
        "proposal outside the round window dropped",
    ] {
        assert!(log.contains(reason), "node 0 logs `{reason}`");
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_whose_install_fails_on_one_node_goes_live_nowhere() {
    let _serial = serial().await;
    let cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    // install.sh fails on node 2 only (it runs in node 2's directory; it cannot read the
    // node's hp.cfg, see `confine`).
    let install =
        "#!/bin/sh\ncase \"$(pwd)\" in */node2/*) exit 9 ;; esac\necho installed > installed.txt\n"
            .to_owned();
    let zip = zip_of(&[
        (
            "contract.config",
            basic_config().to_string().into_bytes(),
            0o644,
        ),
        (
            "contract",
            std::fs::read(example_bin("probe-contract")).unwrap(),
            0o755,
        ),
        ("install.sh", install.into_bytes(), 0o755),
    ]);
    let owner = cluster.connect(0, &key(OWNER)).await;
    let reply = owner.upload_bundle(&zip).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert!(
        reply.message.contains("failed on at least one node"),
        "{}",
        reply.message
    );
    let before = cluster.lcls(&[0, 1, 2]).await;
    for i in 0..3 {
        let stat = cluster
            .connect(i, &key(30 + i as u8))
            .await
            .stat()
            .await
            .unwrap();
        assert!(
            !stat.contract_execution_enabled,
            "node {i} kept the old contract"
        );
    }
    // The cluster goes on, and a bundle that installs everywhere goes live everywhere.
    let target = before.iter().max().unwrap() + 2;
    cluster
        .wait_for_ledger(&[0, 1, 2], target, Duration::from_secs(20))
        .await;
    install_with(
        &cluster,
        &owner,
        0,
        &bundle("probe-contract", basic_config()),
        &[0, 1, 2],
    )
    .await;
}

// ----- catch-up: ledger sync and state sync -----

/// Starts a cluster and installs the probe contract on the `live` nodes.
async fn with_probe(s: Settings, live: &[usize]) -> Cluster {
    let cluster = Cluster::start(s);
    cluster
        .wait_for_ledger(live, 2, Duration::from_secs(20))
        .await;
    install_everywhere(&cluster, 0, &bundle("probe-contract", basic_config()), live).await;
    cluster
}

/// Sends `cmd` as a user through node `via` and waits for its output.
async fn run_cmd(cluster: &Cluster, via: usize, cmd: &str) -> String {
    let c = cluster.connect(via, &key(9)).await;
    match c.submit_and_wait(cmd.as_bytes()).await {
        Ok(out) => text(&out),
        Err(e) => panic!("`{cmd}` through node {via}: {e}\n{}", cluster.logs_tail()),
    }
}

fn state_root(dir: &Path) -> [u8; 32] {
    berth_hotpocket::state::StateTree::default()
        .rehash(dir)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_200_state_changing_ledgers_close_rejoins_on_the_same_chain() {
    let _serial = serial().await;
    let mut s = Settings::new(3, 200);
    s.threshold = 51;
    let mut cluster = with_probe(s, &[0, 1, 2]).await;
    // From now on every ledger changes the state (unl.log grows by a line).
    assert_eq!(run_cmd(&cluster, 0, "track-unl").await, "tracking");
    run_cmd(&cluster, 0, "fill big 0 300000 7").await;
    cluster.kill(2);
    let from = *cluster.lcls(&[0, 1]).await.iter().max().unwrap();
    let filled = cluster
        .connect(1, &key(9))
        .await
        .submit_and_wait(b"fill big 70000 5000 8")
        .await
        .unwrap();
    assert_eq!(text(&filled), "filled big");
    cluster
        .wait_for_ledger(&[0, 1], from + 200, Duration::from_secs(120))
        .await;
    cluster.rejoin(2, &[0, 1], Duration::from_secs(60)).await;
    cluster.assert_same_chain(&[0, 1, 2]).await;
    let log = cluster.log(2);
    assert!(
        log.contains("state sync done"),
        "node 2 synced its state rather than replaying 200 ledgers"
    );
    // The outputs of a ledger node 2 recorded without executing it came from a peer,
    // checked against the output root the UNL agreed on.
    let store = berth_hotpocket::store::Store::open(&berth_hotpocket::node::ledger_db_path(
        &cluster.members[2].dir,
    ))
    .unwrap();
    let outputs = store.outputs_of(filled.ledger_seq_no).unwrap();
    let user = pubkey_hex(&key(9).verifying_key());
    assert!(
        outputs
            .iter()
            .any(|o| o.pubkey == user && o.outputs == vec![b"filled big".to_vec()]),
        "{outputs:?}"
    );
    assert_eq!(
        std::fs::read(cluster.state_dir(2).join("big")).unwrap(),
        std::fs::read(cluster.state_dir(0).join("big")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_corrupted_on_one_node_is_detected_and_repaired_from_its_peers() {
    let _serial = serial().await;
    // With 80 % of 3, no ledger closes without the corrupted node: the cluster goes on
    // only once it repaired its state.
    let cluster = with_probe(Settings::new(3, 400), &[0, 1, 2]).await;
    run_cmd(&cluster, 0, "fill data 0 200000 3").await;
    let good = std::fs::read(cluster.state_dir(0).join("data")).unwrap();
    // Overwrite a few bytes behind the runtime's back.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(cluster.state_dir(2).join("data"))
            .unwrap();
        f.seek(SeekFrom::Start(100_000)).unwrap();
        f.write_all(b"corrupted by the test").unwrap();
    }
    cluster
        .advance(&[0, 1, 2], 5, Duration::from_secs(40))
        .await;
    let log = cluster.log(2);
    assert!(log.contains("state sync started"), "node 2 noticed");
    assert!(log.contains("state sync done"), "node 2 repaired");
    assert_eq!(
        std::fs::read(cluster.state_dir(2).join("data")).unwrap(),
        good
    );
    cluster.assert_same_chain(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupted_state_blocks_fault_injected_is_skipped_and_sync_completes() {
    let _serial = serial().await;
    let mut s = Settings::new(3, 250);
    s.threshold = 51;
    s.envs = vec![(0, "HP_FAULT_CORRUPT_STATE_BLOCKS", "1")];
    let mut cluster = with_probe(s, &[0, 1, 2]).await;
    cluster.kill(2);
    run_cmd(&cluster, 1, "fill big 0 4000000 11").await;
    cluster.advance(&[0, 1], 12, Duration::from_secs(30)).await;
    cluster.rejoin(2, &[0, 1], Duration::from_secs(60)).await;
    let log = cluster.log(2);
    assert!(
        log.contains("peer served bad state data"),
        "the corrupted blocks were noticed:\n{}",
        cluster.logs_tail()
    );
    assert!(log.contains("state sync done"));
    assert_eq!(
        std::fs::read(cluster.state_dir(2).join("big")).unwrap(),
        std::fs::read(cluster.state_dir(1).join("big")).unwrap()
    );
    cluster.assert_same_chain(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_of_a_state_sync_keeps_a_whole_state_and_finishes_later() {
    let _serial = serial().await;
    let mut s = Settings::new(3, 250);
    s.threshold = 51;
    let mut cluster = with_probe(s, &[0, 1, 2]).await;
    run_cmd(&cluster, 0, "fill small 0 1000 1").await;
    cluster.kill(2);
    let old = state_root(&cluster.state_dir(2));
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        run_cmd(&cluster, 0, &format!("fill {name} 0 16000000 {i}")).await;
    }
    cluster.advance(&[0, 1], 12, Duration::from_secs(30)).await;
    let new = state_root(&cluster.state_dir(0));
    assert_ne!(old, new);

    // Restart, and kill it as soon as its sync has begun building the new state.
    let work = cluster.members[2].dir.join("contract_fs").join(".sync");
    cluster.run(2, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !work.join("state").exists() {
        assert!(Instant::now() < deadline, "no sync started");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(20));
    cluster.kill(2);
    let completed = work.join("COMPLETE").exists();
    let after_kill = state_root(&cluster.state_dir(2));
    assert!(
        after_kill == old || after_kill == new,
        "the state after a kill is the old or the new one, never a mix"
    );

    cluster.rejoin(2, &[0, 1], Duration::from_secs(60)).await;
    assert_eq!(state_root(&cluster.state_dir(2)), new);
    assert!(!work.exists(), "the sync's work directory is gone");
    cluster.assert_same_chain(&[0, 1, 2]).await;
    let log = cluster.log(2);
    assert!(
        completed || log.contains("dropping a state sync that had not completed"),
        "the restart dropped the unfinished sync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_node_syncs_as_an_observer_then_proposes_once_patch_cfg_adds_it() {
    let _serial = serial().await;
    let mut s = Settings::new(3, 300);
    s.threshold = 51;
    let mut cluster = with_probe(s, &[0, 1, 2]).await;
    run_cmd(&cluster, 0, "fill data 0 500000 5").await;
    cluster
        .advance(&[0, 1, 2], 10, Duration::from_secs(30))
        .await;

    let fresh = cluster.add_observer(300, 51);
    cluster.run(fresh, None);
    let target = *cluster.lcls(&[0, 1, 2]).await.iter().max().unwrap();
    cluster
        .wait_in_sync(fresh, target, true, Duration::from_secs(60))
        .await;
    assert_eq!(
        std::fs::read(cluster.state_dir(fresh).join("data")).unwrap(),
        std::fs::read(cluster.state_dir(0).join("data")).unwrap()
    );

    // The UNL takes the new node in; 51 % of 4 is 3, so with node 1 gone ledgers close only
    // if the new node proposes.
    let mut unl: Vec<String> = (0..4).map(|i| cluster.key_hex(i)).collect();
    unl.sort();
    assert_eq!(
        run_cmd(&cluster, 0, &format!("patch-unl {}", unl.join(","))).await,
        "patched"
    );
    let now = *cluster.lcls(&[0, 1, 2]).await.iter().max().unwrap();
    cluster
        .wait_in_sync(fresh, now + 2, false, Duration::from_secs(30))
        .await;
    cluster.kill(1);
    let now = *cluster.lcls(&[0, 2, fresh]).await.iter().max().unwrap();
    cluster
        .wait_for_ledger(&[0, 2, fresh], now + 3, Duration::from_secs(30))
        .await;
    cluster.assert_same_chain(&[0, 2, fresh]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_changeset_from_the_contract_connects_a_node_nobody_dialed() {
    let _serial = serial().await;
    let mut s = Settings::new(3, 300);
    s.threshold = 51;
    s.isolated = vec![2];
    let cluster = with_probe(s, &[0, 1]).await;
    let alone = cluster.connect(2, &key(30)).await.stat().await.unwrap();
    assert!(alone.peers.is_empty() && !alone.in_sync, "{alone:?}");

    let addr = format!("127.0.0.1:{}", cluster.members[2].peer_port);
    assert_eq!(
        run_cmd(&cluster, 0, &format!("peers add {addr}")).await,
        "peers changed"
    );
    let now = *cluster.lcls(&[0, 1]).await.iter().max().unwrap();
    cluster
        .wait_in_sync(2, now, false, Duration::from_secs(60))
        .await;
    let stat = cluster.connect(0, &key(31)).await.stat().await.unwrap();
    assert_eq!(stat.peers.len(), 2, "node 0 dials node 2 now: {stat:?}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.members[0].dir.join("hp.cfg")).unwrap())
            .unwrap();
    assert!(
        saved["mesh"]["known_peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == &serde_json::json!(addr)),
        "the changed peers are saved: {saved}"
    );
    cluster.assert_same_chain(&[0, 1, 2]).await;
}

// ----- the owner's cluster: genesis hold and cluster changes -----

/// Waits `ms`, then checks that node `i` is still held at genesis.
async fn assert_held(cluster: &Cluster, i: usize) {
    let c = cluster.connect(i, &key(230 + i as u8)).await;
    let stat = c.stat().await.unwrap();
    assert_eq!(stat.ledger_seq_no, 0, "node {i} closed no ledger");
    assert!(
        stat.vote_status.contains("awaits its cluster") && !stat.in_sync,
        "node {i}: {}",
        stat.vote_status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_nodes_close_nothing_until_the_owner_sets_the_cluster_then_agree() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_held(3, 400, 80);
    // Alone in its UNL a node would close a ledger every round; held, none does.
    sleep_ms(1500).await;
    for i in 0..3 {
        assert_held(&cluster, i).await;
    }
    // A restart keeps the hold (it is in hp.cfg).
    cluster.kill(0);
    cluster.run(0, None);
    sleep_ms(1000).await;
    assert_held(&cluster, 0).await;

    for i in 0..3 {
        let reply = cluster.set_cluster(i, &[0, 1, 2]).await;
        assert_eq!(
            (reply.kind.as_str(), reply.status.as_str()),
            ("clusterResult", "ok"),
            "node {i}: {}",
            reply.message
        );
    }
    // The tenant may resume: the same request again is answered ok.
    let again = cluster.set_cluster(1, &[0, 1, 2]).await;
    assert_eq!(again.status, "ok", "{}", again.message);

    cluster
        .wait_for_ledger(&[0, 1, 2], 3, Duration::from_secs(30))
        .await;
    cluster.assert_same_chain(&[0, 1, 2]).await;
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.members[0].dir.join("hp.cfg")).unwrap())
            .unwrap();
    assert_eq!(saved["mesh"]["await_cluster"], serde_json::json!(false));
    assert_eq!(
        saved["mesh"]["known_peers"].as_array().unwrap().len(),
        2,
        "its own address is not a peer: {saved}"
    );

    install_everywhere(
        &cluster,
        2,
        &bundle("probe-contract", basic_config()),
        &[0, 1, 2],
    )
    .await;
    let user = cluster.connect(1, &key(9)).await;
    let out = user.submit_and_wait(b"echo agreed").await.unwrap();
    assert_eq!(text(&out), "agreed");
    let mut unl: Vec<String> = (0..3).map(|i| cluster.key_hex(i)).collect();
    unl.sort();
    assert_eq!(out.signers, unl, "unl_sig from all three");
    cluster.assert_same_chain(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_node_refuses_strangers_and_bad_specs_and_stays_held() {
    let _serial = serial().await;
    let cluster = Cluster::start_held(2, 300, 80);
    let spec = cluster.spec(&[0, 1]);

    let stranger = cluster.connect(0, &key(9)).await;
    let reply = stranger.set_cluster(&spec).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert!(
        reply.message.contains("UserNotAllowed"),
        "{}",
        reply.message
    );
    // Anything else a user sends is answered with the reason too.
    let other = cluster.connect(0, &key(10)).await;
    let other = other.submit_and_wait(b"hello").await.unwrap();
    assert!(
        text(&other).contains("awaits its cluster"),
        "{}",
        text(&other)
    );

    let owner = cluster.connect(0, &key(OWNER)).await;
    let without_me = cluster.spec(&[1]);
    let reply = owner.set_cluster(&without_me).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert!(
        reply.message.contains(&cluster.key_hex(0)),
        "the reason names the node's key: {}",
        reply.message
    );
    let bad_key = ClusterSpec {
        unl: vec![cluster.key_hex(0), "ed1234".to_owned()],
        peers: spec.peers.clone(),
    };
    let reply = owner.set_cluster(&bad_key).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert!(reply.message.contains("ed1234"), "{}", reply.message);
    let bad_peer = ClusterSpec {
        unl: spec.unl.clone(),
        peers: vec!["nohost".to_owned()],
    };
    let reply = owner.set_cluster(&bad_peer).await.unwrap();
    assert_eq!(reply.status, "fail");
    assert!(reply.message.contains("nohost"), "{}", reply.message);
    sleep_ms(900).await;
    assert_held(&cluster, 0).await;

    // Node 1 alone, as its own cluster, starts closing ledgers; node 0 still holds.
    let reply = cluster.set_cluster(1, &[1]).await;
    assert_eq!(reply.status, "ok", "{}", reply.message);
    cluster
        .wait_for_ledger(&[1], 3, Duration::from_secs(20))
        .await;
    assert_held(&cluster, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_adds_an_observer_to_a_running_cluster_then_removes_an_original() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(Settings::new(3, 400));
    cluster
        .wait_for_ledger(&[0, 1, 2], 2, Duration::from_secs(20))
        .await;
    let fresh = cluster.add_observer(400, 80);
    cluster.run(fresh, None);
    let target = *cluster.lcls(&[0, 1, 2]).await.iter().max().unwrap();
    cluster
        .wait_in_sync(fresh, target, true, Duration::from_secs(60))
        .await;

    // No contract is installed: the installer applies the request all the same.
    let reply = cluster.set_cluster(0, &[0, 1, 2, fresh]).await;
    assert_eq!(
        (reply.kind.as_str(), reply.status.as_str()),
        ("clusterResult", "ok"),
        "{}",
        reply.message
    );
    let now = *cluster.lcls(&[0, 1, 2]).await.iter().max().unwrap();
    cluster
        .wait_in_sync(fresh, now + 2, false, Duration::from_secs(30))
        .await;
    // No contract: the installer answers the input. Its answer is JSON, which a JSON-mode
    // client receives re-encoded; in BSON mode the output bytes, and so `unl_sig`, check.
    // The owner's input: a stranger's, before install, is answered at once by one node and
    // never goes into a ledger.
    let opts = ConnectOptions {
        output_grace: Duration::from_secs(8),
        protocol: Protocol::Bson,
        ..ConnectOptions::default()
    };
    let user = Client::connect(&cluster.members[fresh].addr, key(OWNER), opts)
        .await
        .unwrap();
    let out = user.submit_and_wait(b"hello").await.unwrap();
    let mut four: Vec<String> = [0, 1, 2, fresh].map(|i| cluster.key_hex(i)).to_vec();
    four.sort();
    assert_eq!(
        out.signers,
        four,
        "the new node signs outputs too: {out:?}\n{}",
        cluster.logs_tail()
    );

    // Node 1 leaves the UNL but stays connected: it stops counting, the others go on.
    let reply = cluster.set_cluster(2, &[0, 2, fresh]).await;
    assert_eq!(reply.status, "ok", "{}", reply.message);
    cluster
        .advance(&[0, 2, fresh], 3, Duration::from_secs(30))
        .await;
    let out = user.submit_and_wait(b"hello again").await.unwrap();
    let mut three: Vec<String> = [0, 2, fresh].map(|i| cluster.key_hex(i)).to_vec();
    three.sort();
    assert_eq!(out.signers, three, "node 1 no longer counts");
    let stat = cluster.connect(1, &key(31)).await.stat().await.unwrap();
    assert_eq!(stat.current_unl.len(), 3, "node 1 follows the change too");
    cluster.kill(1);
    cluster
        .advance(&[0, 2, fresh], 3, Duration::from_secs(30))
        .await;
    cluster.assert_same_chain(&[0, 2, fresh]).await;
}
