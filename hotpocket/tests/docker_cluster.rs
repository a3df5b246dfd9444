//! Consensus among containers of the instance image (`berth-hotpocket:latest`) on private
//! Docker networks: every node a hardened container (read-only root, uid 10001, all
//! capabilities dropped, /state on a volume) configured through HP_* variables.
//!
//! Networks per cluster (all named with the cluster's unique prefix):
//! - `<prefix>-peer`: internal bridge; node `i` has the alias `node<i>` there and the nodes
//!   peer through `node<j>:22861`. Partitions disconnect nodes from this network.
//! - `<prefix>-side`: internal bridge for the minority side of a two-sided partition.
//! - `<prefix>-users`: a bridge the user ports are published from (`127.0.0.1::8081`), so the
//!   test can still ask a cut-off node for its status. The nodes never dial each other there
//!   (the `node<j>` aliases exist only on the peer networks). Docker republishes the port on
//!   another host port whenever the container's networks change, so the address is looked
//!   up before every connection.
//!
//! The image is (re)built once per test binary with hotpocket/image/build.sh and the tests run
//! the image id that build produced. Without Docker the tests skip, unless
//! BERTH_REQUIRE_DOCKER=1, when they fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_hotpocket::consensus::RoundTiming;
use berth_hotpocket::image::IMAGE_TAG;
use berth_hotpocket_client::client::{Client, ConnectOptions, NodeStat};
use berth_hotpocket_client::protocol::pubkey_hex;
use common::*;
use ed25519_dalek::SigningKey;

const OWNER: u8 = 1;
const PEER_PORT: u16 = 22861;
/// The longest a test may take, all waits included.
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// Time allowed for ledgers to resume after a partition heals or a node returns (a dialer
/// may be backing off for up to 10 s, and a session cut by the partition may linger).
const RESUME: Duration = Duration::from_secs(90);

/// `contract.consensus.stage_slice` when the bundle does not set it (percent of a round).
const DEFAULT_STAGE_SLICE: u32 = 25;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One cluster at a time: each runs several containers with sub-second rounds on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs build.sh once per test binary (an image left from an earlier build may be stale) and
/// returns the id of the image it tagged, so that a later re-tag does not change what runs.
fn image() -> String {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let mut build = Command::new(workspace().join("hotpocket/image/build.sh"));
            // Without the variables cargo sets for this test process: build scripts watch
            // some of them (ring: CARGO_MANIFEST_DIR), and a difference from a build run in a
            // shell would recompile the static binary every time.
            for (name, _) in std::env::vars_os() {
                let Some(name) = name.to_str() else { continue };
                if name == "CARGO"
                    || name == "CARGO_MANIFEST_DIR"
                    || name == "CARGO_MANIFEST_PATH"
                    || name == "CARGO_CRATE_NAME"
                    || name == "CARGO_PRIMARY_PACKAGE"
                    || name == "CARGO_TARGET_TMPDIR"
                    || name == "CARGO_RUSTC_CURRENT_DIR"
                    || name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_")
                {
                    build.env_remove(name);
                }
            }
            let out = build
                .output()
                .map_err(|e| format!("running hotpocket/image/build.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "hotpocket/image/build.sh failed ({}):\n{}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE_TAG])
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "berth-dc-{}-{:06x}",
        std::process::id(),
        (nanos ^ rand::random::<u32>()) & 0xff_ffff
    )
}

/// A fresh monitor key per connection (one connection per user key per node).
fn monitor_key() -> SigningKey {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    key(128 + NEXT.fetch_add(1, Ordering::Relaxed) % 120)
}

/// Containers of the instance image sharing a UNL. Dropping it removes the containers,
/// their volumes and the networks (also when a test fails).
struct Cluster {
    image: String,
    prefix: String,
    keys: Vec<SigningKey>,
    roundtime: u64,
    threshold: u32,
    side_net: bool,
}

impl Cluster {
    /// Starts a cluster whose nodes all closed ledger 2 together. Without catch-up (a later
    /// issue) a node that comes up after the others closed ledger 1 can never join them; when
    /// the threshold needs fewer than all nodes, container start-up can be that slow, and the
    /// cluster is started again (up to three times).
    async fn start(nodes: usize, roundtime: u64, threshold: u32) -> Cluster {
        for attempt in 1..=3 {
            let cluster = Cluster::launch(nodes, roundtime, threshold).await;
            match cluster.wait_genesis(Duration::from_secs(60)).await {
                Ok(()) => return cluster,
                Err(why) => eprintln!("cluster start, attempt {attempt}: {why}"),
            }
        }
        panic!("no cluster start in three attempts had every node on the first ledgers");
    }

    /// Waits until every node closed ledger 2; Err when a node is still at ledger 0 after
    /// the others closed ledger 3 (it came up too late to ever join).
    async fn wait_genesis(&self, within: Duration) -> Result<(), String> {
        let all: Vec<usize> = (0..self.keys.len()).collect();
        let deadline = Instant::now() + within;
        loop {
            let seqs = self.seqs(&all).await;
            if seqs.iter().all(|s| *s >= 2) {
                return Ok(());
            }
            if seqs.contains(&0) && seqs.iter().any(|s| *s >= 3) {
                let late: Vec<usize> = all.iter().copied().filter(|&i| seqs[i] == 0).collect();
                let stat = self.stat(late[0]).await;
                return Err(format!(
                    "{:?} started after the others closed ledger 1 (lcls {seqs:?}); {}: {}",
                    self.aliases(&late),
                    Self::alias(late[0]),
                    stat.vote_status
                ));
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "the nodes did not all reach ledger 2 within {within:?}: {seqs:?}"
                ));
            }
            sleep_ms(250).await;
        }
    }

    /// Creates the networks and containers and starts every container at once.
    async fn launch(nodes: usize, roundtime: u64, threshold: u32) -> Cluster {
        let cluster = Cluster {
            image: image(),
            prefix: unique_prefix(),
            keys: (0..nodes).map(|i| key(50 + i as u8)).collect(),
            roundtime,
            threshold,
            side_net: false,
        };
        cluster.ok(docker(&[
            "network",
            "create",
            "--internal",
            &cluster.net("peer"),
        ]));
        cluster.ok(docker(&["network", "create", &cluster.net("users")]));
        for i in 0..nodes {
            cluster.create(i);
        }
        // In parallel: one after the other, the first nodes may close ledgers before the
        // last one is up.
        let names: Vec<String> = (0..nodes).map(|i| cluster.name(i)).collect();
        let started: Vec<Result<String, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|n| s.spawn(move || docker(&["start", n])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in started {
            cluster.ok(r);
        }
        for i in 0..nodes {
            cluster.wait_ready(i, 1).await;
        }
        cluster
    }

    fn net(&self, which: &str) -> String {
        format!("{}-{which}", self.prefix)
    }

    fn name(&self, i: usize) -> String {
        format!("{}-node{}", self.prefix, i + 1)
    }

    fn alias(i: usize) -> String {
        format!("node{}", i + 1)
    }

    fn key_hex(&self, i: usize) -> String {
        pubkey_hex(&self.keys[i].verifying_key())
    }

    fn sorted_unl(&self) -> Vec<String> {
        let mut unl: Vec<String> = (0..self.keys.len()).map(|i| self.key_hex(i)).collect();
        unl.sort();
        unl
    }

    /// Creates node `i`'s volume and container (hardened as the provisioner runs it), on the
    /// users network with the user port published on 127.0.0.1, and on the peer network as
    /// `node<i>`.
    fn create(&self, i: usize) {
        let name = self.name(i);
        self.ok(docker(&["volume", "create", &name]));
        let peers: Vec<String> = (0..self.keys.len())
            .filter(|j| *j != i)
            .map(|j| format!("{}:{PEER_PORT}", Self::alias(j)))
            .collect();
        let unl: Vec<String> = (0..self.keys.len()).map(|j| self.key_hex(j)).collect();
        let env = [
            format!("HP_CONTRACT_ID={CONTRACT_ID}"),
            format!(
                "HP_OWNER_PUBKEY={}",
                pubkey_hex(&key(OWNER).verifying_key())
            ),
            format!("HP_NODE_SECRET={}", hex::encode(self.keys[i].to_bytes())),
            "HP_USER_PORT=8081".to_owned(),
            format!("HP_PEER_PORT={PEER_PORT}"),
            format!("HP_ROUNDTIME_MS={}", self.roundtime),
            format!("HP_UNL={}", unl.join(",")),
            format!("HP_PEERS={}", peers.join(",")),
            format!("HP_THRESHOLD={}", self.threshold),
            "RUST_LOG=info,berth_hotpocket::peer=debug".to_owned(),
        ];
        let volume = format!("{name}:/state");
        let users = self.net("users");
        let mut args: Vec<&str> = vec![
            "create",
            "--name",
            &name,
            "--network",
            &users,
            "--read-only",
            "--tmpfs",
            "/tmp:size=16m",
            "--user",
            "10001:10001",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            &volume,
            "-p",
            "127.0.0.1::8081",
        ];
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        args.extend([self.image.as_str(), "run", "--state-dir", "/state"]);
        self.ok(docker(&args));
        self.connect_net(i, "peer");
    }

    /// Unwraps a docker result, failing with every container's log.
    fn ok(&self, r: Result<String, String>) -> String {
        r.unwrap_or_else(|e| self.fail(&e))
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.logs())
    }

    /// The last lines of every container's log (stdout and stderr).
    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.keys.len() {
            let name = self.name(i);
            let log = Command::new("sh")
                .args(["-c", &format!("docker logs --tail 40 {name} 2>&1")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("docker logs: {e}"));
            out.push_str(&format!(
                "--- docker logs {name} ({}) ---\n",
                Self::alias(i)
            ));
            out.push_str(&log);
        }
        out
    }

    /// Waits until node `i` printed its ready lines `starts` times.
    async fn wait_ready(&self, i: usize, starts: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = docker(&["logs", &self.name(i)]).unwrap_or_default();
            if logs.matches("hotpocket peer port listening on").count() >= starts {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("{} did not start", Self::alias(i)));
            }
            sleep_ms(100).await;
        }
    }

    /// Node `i`'s user port on 127.0.0.1 (it moves when the container's networks change).
    fn addr(&self, i: usize) -> Option<String> {
        let port = docker(&["port", &self.name(i), "8081/tcp"]).ok()?;
        port.lines().next().map(|l| l.trim().to_owned())
    }

    /// A user connection to node `i`, retried while the port is being (re)published.
    async fn connect(&self, i: usize, user: &SigningKey, timeout: Duration) -> Client {
        let opts = ConnectOptions {
            output_grace: Duration::from_secs(8),
            timeout,
            ..ConnectOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let err = match self.addr(i) {
                Some(addr) => match Client::connect(&addr, user.clone(), opts.clone()).await {
                    Ok(c) => return c,
                    Err(e) => format!("{addr}: {e}"),
                },
                None => "no published user port".to_owned(),
            };
            if Instant::now() > deadline {
                self.fail(&format!("connecting to {}: {err}", Self::alias(i)));
            }
            sleep_ms(200).await;
        }
    }

    async fn monitor(&self, i: usize) -> Client {
        self.connect(i, &monitor_key(), Duration::from_secs(5))
            .await
    }

    async fn stat(&self, i: usize) -> NodeStat {
        match self.monitor(i).await.stat().await {
            Ok(s) => s,
            Err(e) => self.fail(&format!("stat of {}: {e}", Self::alias(i))),
        }
    }

    /// (seq, hash) of each node in `nodes`, asked at about the same time.
    async fn lcls(&self, nodes: &[usize]) -> Vec<(u64, String)> {
        let asks = nodes.iter().map(|&i| async move {
            match self.monitor(i).await.lcl().await {
                Ok(l) => l,
                Err(e) => self.fail(&format!("lcl of {}: {e}", Self::alias(i))),
            }
        });
        futures_util::future::join_all(asks).await
    }

    async fn seqs(&self, nodes: &[usize]) -> Vec<u64> {
        self.lcls(nodes).await.into_iter().map(|l| l.0).collect()
    }

    /// Waits until every node in `nodes` closed ledger `seq`.
    async fn wait_for_ledger(&self, nodes: &[usize], seq: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seqs = self.seqs(nodes).await;
            if seqs.iter().all(|s| *s >= seq) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "nodes {:?} did not reach ledger {seq} within {within:?}: {seqs:?}",
                    self.aliases(nodes)
                ));
            }
            sleep_ms(250).await;
        }
    }

    /// Polls node `i`'s stat until `pred` holds.
    async fn wait_stat(
        &self,
        i: usize,
        what: &str,
        within: Duration,
        pred: impl Fn(&NodeStat) -> bool,
    ) -> NodeStat {
        let deadline = Instant::now() + within;
        loop {
            let stat = self.stat(i).await;
            if pred(&stat) {
                return stat;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{}: {what} not seen within {within:?}; last stat: in_sync {} vote_status {:?} lcl {} peers {:?}",
                    Self::alias(i),
                    stat.in_sync,
                    stat.vote_status,
                    stat.ledger_seq_no,
                    stat.peers
                ));
            }
            sleep_ms(250).await;
        }
    }

    /// Samples the lcl of every node in `nodes` until one ledger was reported by all of them;
    /// fails when two nodes ever report different hashes for the same seq (a fork).
    async fn assert_one_chain(&self, nodes: &[usize], within: Duration) -> (u64, String) {
        let deadline = Instant::now() + within;
        let mut seen: BTreeMap<u64, (String, Vec<usize>)> = BTreeMap::new();
        loop {
            for (&i, (seq, hash)) in nodes.iter().zip(self.lcls(nodes).await) {
                let entry = seen
                    .entry(seq)
                    .or_insert_with(|| (hash.clone(), Vec::new()));
                if entry.0 != hash {
                    self.fail(&format!(
                        "fork at ledger {seq}: {} has {hash}, {:?} have {}",
                        Self::alias(i),
                        self.aliases(&entry.1),
                        entry.0
                    ));
                }
                if !entry.1.contains(&i) {
                    entry.1.push(i);
                }
            }
            if let Some((seq, (hash, _))) = seen
                .iter()
                .rev()
                .find(|(_, (_, by))| nodes.iter().all(|n| by.contains(n)))
            {
                return (*seq, hash.clone());
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no ledger reported by all of {:?} within {within:?}: {seen:?}",
                    self.aliases(nodes)
                ));
            }
            sleep_ms(100).await;
        }
    }

    /// Watches `nodes` for six rounds: none may close a ledger.
    async fn assert_stalled(&self, nodes: &[usize]) -> Vec<u64> {
        let stalled = self.seqs(nodes).await;
        let watch_until = Instant::now() + Duration::from_millis(6 * self.roundtime);
        while Instant::now() < watch_until {
            sleep_ms(self.roundtime / 2).await;
            let now = self.seqs(nodes).await;
            if now != stalled {
                self.fail(&format!(
                    "a ledger closed while partitioned ({:?}): {stalled:?} -> {now:?}",
                    self.aliases(nodes)
                ));
            }
        }
        stalled
    }

    fn aliases(&self, nodes: &[usize]) -> Vec<String> {
        nodes.iter().map(|&i| Self::alias(i)).collect()
    }

    fn connect_net(&self, i: usize, which: &str) {
        self.ok(docker(&[
            "network",
            "connect",
            "--alias",
            &Self::alias(i),
            &self.net(which),
            &self.name(i),
        ]));
    }

    fn disconnect_net(&self, i: usize, which: &str) {
        self.ok(docker(&[
            "network",
            "disconnect",
            &self.net(which),
            &self.name(i),
        ]));
    }

    /// Runs the network changes `(connect?, node, network)` at once, starting just after a
    /// round starts, and checks that they were done before stage 3 of that round. A partition
    /// made or healed one container after the other could let part of the cluster close a
    /// ledger that another part never closes (in a cut: the round in flight; in a heal: the
    /// first round the threshold is reached again), and until catch-up exists such a node can
    /// never rejoin. Rounds start at wall-clock multiples of the roundtime plus an offset
    /// from the contract id, on the host's clock, which the containers share.
    async fn change_networks_between_rounds(&self, changes: &[(bool, usize, &str)]) {
        let timing = RoundTiming::new(CONTRACT_ID, self.roundtime, DEFAULT_STAGE_SLICE);
        let start = timing.next_round_start(now_ms());
        sleep_ms(start + 20 - now_ms()).await;
        std::thread::scope(|s| {
            for &(connect, i, which) in changes {
                s.spawn(move || {
                    if connect {
                        self.connect_net(i, which)
                    } else {
                        self.disconnect_net(i, which)
                    }
                });
            }
        });
        let done = now_ms();
        let stage3 = timing.stage_start(start, 3);
        if done >= stage3 {
            self.fail(&format!(
                "the network changes took {} ms, past stage 3 of their round ({} ms): part of the cluster may have closed a ledger the rest never will",
                done - start,
                stage3 - start
            ));
        }
    }

    fn kill(&self, i: usize) {
        self.ok(docker(&["kill", &self.name(i)]));
    }

    async fn restart(&self, i: usize) {
        self.ok(docker(&["start", &self.name(i)]));
        self.wait_ready(i, 2).await;
    }

    /// Waits until every node in `nodes` runs the uploaded contract.
    async fn wait_installed(&self, nodes: &[usize]) {
        for &i in nodes {
            self.wait_stat(
                i,
                "contract_execution_enabled",
                Duration::from_secs(20),
                |s| s.contract_execution_enabled,
            )
            .await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.keys.len() {
            let _ = docker(&["rm", "-f", "-v", &self.name(i)]);
            let _ = docker(&["volume", "rm", "-f", &self.name(i)]);
        }
        for which in ["peer", "users", "side"] {
            if which != "side" || self.side_net {
                let _ = docker(&["network", "rm", &self.net(which)]);
            }
        }
    }
}

/// Runs a test body within [`TEST_LIMIT`], one cluster at a time.
async fn bounded(body: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_containers_agree_and_every_node_signs_the_output() {
    if !berth_test_support::docker_available() {
        return;
    }
    bounded(async {
        let cluster = Cluster::start(3, 500, 80).await;
        let all = [0, 1, 2];
        let owner = cluster
            .connect(0, &key(OWNER), Duration::from_secs(20))
            .await;
        let zip = std::fs::read(workspace().join("examples/bundles/echo.zip")).unwrap();
        let reply = match owner.upload_bundle(&zip).await {
            Ok(r) => r,
            Err(e) => cluster.fail(&format!("upload through node1: {e}")),
        };
        assert_eq!(reply.status, "ok", "upload failed: {}", reply.message);
        cluster.wait_installed(&all).await;

        let user = key(9);
        let on2 = cluster.connect(1, &user, Duration::from_secs(20)).await;
        let on3 = cluster.connect(2, &user, Duration::from_secs(20)).await;
        let out = match on2.submit_and_wait(b"hello from a docker cluster").await {
            Ok(o) => o,
            Err(e) => cluster.fail(&format!("input through node2: {e}")),
        };
        assert_eq!(
            out.outputs,
            vec![b"hello from a docker cluster".to_vec()],
            "node2 echoed the input"
        );
        assert_eq!(
            out.signers,
            cluster.sorted_unl(),
            "unl_sig on node2's output verified for every UNL node"
        );
        let got = on3
            .outputs_of(out.ledger_seq_no, Duration::from_secs(8))
            .await;
        assert_eq!(
            got.outputs, out.outputs,
            "node3 sent the same output of ledger {}",
            out.ledger_seq_no
        );
        assert_eq!(
            got.ledger_hash, out.ledger_hash,
            "node3 names the same ledger"
        );
        assert_eq!(
            got.signers,
            cluster.sorted_unl(),
            "unl_sig on node3's output verified for every UNL node"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_rejoins_in_sync_with_the_state_its_peers_built_meanwhile() {
    if !berth_test_support::docker_available() {
        return;
    }
    bounded(async {
        let cluster = Cluster::start(3, 500, 60).await;
        let all = [0, 1, 2];
        let owner = cluster
            .connect(0, &key(OWNER), Duration::from_secs(20))
            .await;
        let zip = std::fs::read(workspace().join("examples/bundles/counter.zip")).unwrap();
        let reply = match owner.upload_bundle(&zip).await {
            Ok(r) => r,
            Err(e) => cluster.fail(&format!("upload through node1: {e}")),
        };
        assert_eq!(reply.status, "ok", "upload failed: {}", reply.message);
        cluster.wait_installed(&all).await;
        drop(owner);

        cluster.kill(2);
        let two = [0, 1];
        let user = key(9);
        let on1 = cluster.connect(0, &user, Duration::from_secs(20)).await;
        for i in 1..=3u32 {
            let out = match on1.submit_and_wait(b"incr n").await {
                Ok(o) => o,
                Err(e) => cluster.fail(&format!("input through node1: {e}")),
            };
            assert_eq!(out.outputs, vec![i.to_string().into_bytes()]);
        }
        drop(on1);
        // Far enough behind that node3 records the ledgers and syncs the state.
        let behind = *cluster.seqs(&two).await.iter().max().unwrap() + 10;
        cluster
            .wait_for_ledger(&two, behind, Duration::from_secs(40))
            .await;

        cluster.restart(2).await;
        let cluster_now = *cluster.seqs(&two).await.iter().max().unwrap();
        cluster
            .wait_stat(2, "in sync on the UNL's ledger", RESUME, |s| {
                s.in_sync && s.vote_status == "in sync"
            })
            .await;
        cluster
            .wait_for_ledger(&all, cluster_now + 2, Duration::from_secs(40))
            .await;
        cluster
            .assert_one_chain(&all, Duration::from_secs(20))
            .await;
        // The counter node3 continues from is the one its peers built while it was down.
        let on3 = cluster.connect(2, &user, Duration::from_secs(20)).await;
        let out = match on3.submit_and_wait(b"incr n").await {
            Ok(o) => o,
            Err(e) => cluster.fail(&format!("input through node3: {e}")),
        };
        assert_eq!(
            out.outputs,
            vec![b"4".to_vec()],
            "node3 has the synced state"
        );
        assert_eq!(out.signers.len(), 3, "all three nodes signed it");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_two_partition_closes_nothing_on_either_side_and_heals_without_a_fork() {
    if !berth_test_support::docker_available() {
        return;
    }
    bounded(async {
        let cluster = Cluster::start(3, 500, 80).await;
        let all = [0, 1, 2];
        cluster
            .change_networks_between_rounds(&[(false, 2, "peer")])
            .await;
        for i in all {
            cluster
                .wait_stat(
                    i,
                    "`not enough peers proposing`",
                    Duration::from_secs(15),
                    |s| s.vote_status.contains("not enough peers proposing"),
                )
                .await;
        }
        let stalled = cluster.assert_stalled(&all).await;

        cluster
            .change_networks_between_rounds(&[(true, 2, "peer")])
            .await;
        let resume_at = stalled.iter().max().unwrap() + 2;
        let healed = Instant::now();
        cluster.wait_for_ledger(&all, resume_at, RESUME).await;
        eprintln!(
            "ledgers resumed {:?} after the partition healed",
            healed.elapsed()
        );
        let (seq, hash) = cluster
            .assert_one_chain(&all, Duration::from_secs(30))
            .await;
        assert!(seq >= resume_at, "{seq} {hash}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_three_partition_of_five_heals_without_a_fork() {
    if !berth_test_support::docker_available() {
        return;
    }
    bounded(async {
        // Long rounds: the partition is made and healed within stages 0-2 of one round.
        let mut cluster = Cluster::start(5, 2000, 80).await;
        let all = [0, 1, 2, 3, 4];
        // node4 and node5 move to a network of their own: they still reach each other.
        cluster.side_net = true;
        cluster.ok(docker(&[
            "network",
            "create",
            "--internal",
            &cluster.net("side"),
        ]));
        cluster
            .change_networks_between_rounds(&[(false, 3, "peer"), (false, 4, "peer")])
            .await;
        for i in [3, 4] {
            cluster.connect_net(i, "side");
        }
        for i in all {
            cluster
                .wait_stat(
                    i,
                    "`not enough peers proposing`",
                    Duration::from_secs(15),
                    |s| s.vote_status.contains("not enough peers proposing"),
                )
                .await;
        }
        let stalled = cluster.assert_stalled(&all).await;

        for i in [3, 4] {
            cluster.disconnect_net(i, "side");
        }
        cluster
            .change_networks_between_rounds(&[(true, 3, "peer"), (true, 4, "peer")])
            .await;
        let resume_at = stalled.iter().max().unwrap() + 2;
        let healed = Instant::now();
        cluster.wait_for_ledger(&all, resume_at, RESUME).await;
        eprintln!(
            "ledgers resumed {:?} after the partition healed",
            healed.elapsed()
        );
        let (seq, hash) = cluster
            .assert_one_chain(&all, Duration::from_secs(30))
            .await;
        assert!(seq >= resume_at, "{seq} {hash}");
    })
    .await;
}
