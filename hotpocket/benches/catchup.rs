//! Catch-up of a node far behind: a 3-node cluster (threshold 51 %) starts with a state of
//! BENCH_STATE_MB (default 100) files of 1 MiB; one node is killed, the other two rewrite
//! BENCH_CHANGED_PCT (default 10) % of the files and close BENCH_BEHIND (default 1000) more
//! ledgers at BENCH_ROUNDTIME ms (default 100); the node restarts and the bench times how
//! long it takes to be in sync again on the cluster's ledger. Real `hotpocket` processes
//! over TLS WebSocket on 127.0.0.1.
//!
//! For comparison it also times copying the changed bytes from one peer to another over the
//! peer protocol's own connection (TLS WebSocket, 1 MiB frames of 64 KiB blocks).
//!
//! `cargo bench -p berth-hotpocket --bench catchup`

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_hotpocket::peer::net::{PeerConfig, PeerNet};
use berth_hotpocket::peer::wire::{NodeKey, PeerMsg, Piece, PieceKind, Want};
use berth_hotpocket_client::client::{Client, ConnectOptions};
use common::{bundle, cluster_args, env_u64, example_contract, free_port, new_node, run_node};
use ed25519_dalek::SigningKey;

const MIB: usize = 1024 * 1024;

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("catchup: benchmark skipped in test mode; run `cargo bench -p berth-hotpocket --bench catchup`");
        return Ok(());
    }
    let state_mb = env_u64("BENCH_STATE_MB", 100) as usize;
    let changed_pct = env_u64("BENCH_CHANGED_PCT", 10) as usize;
    let behind = env_u64("BENCH_BEHIND", 1000);
    let roundtime = env_u64("BENCH_ROUNDTIME", 100);
    let changed = (state_mb * changed_pct).div_ceil(100);
    let hotpocket = std::path::PathBuf::from(env!("CARGO_BIN_EXE_hotpocket"));
    let probe = example_contract(&hotpocket, "probe-contract")?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "catch-up bench: 3 nodes (threshold 51 %), roundtime {roundtime} ms, state {state_mb} MiB \
         ({state_mb} files of 1 MiB), {changed} MiB rewritten, node {behind} ledgers behind"
    );
    let root = tempfile::tempdir()?;
    let owner = SigningKey::from_bytes(&[1; 32]);
    let ports = (0..3)
        .map(|_| free_port())
        .collect::<anyhow::Result<Vec<u16>>>()?;
    let dirs: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("node{i}")))
        .collect();
    let setup = Instant::now();
    for (i, dir) in dirs.iter().enumerate() {
        let mut args = cluster_args(3, &ports, i);
        args.extend(["--threshold".to_owned(), "51".to_owned()]);
        new_node(&hotpocket, dir, &owner, roundtime, &args)?;
        write_state(&dir.join("contract_fs").join("state"), state_mb)?;
    }
    let log = root.path().join("node2.log");
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (node, addr) = run_node(&hotpocket, dir, (i == 2).then_some(log.as_path()))?;
        nodes.push(Some(node));
        addrs.push(addr);
    }
    let result = runtime.block_on(async {
        let admin = connect(&addrs[0], &owner).await?;
        wait_for_ledger(&admin, 2, Duration::from_secs(30)).await?;
        let reply = admin.upload_bundle(&bundle(&probe)?).await?;
        if reply.status != "ok" {
            bail!("upload failed: {}", reply.message);
        }
        let user = connect(&addrs[0], &SigningKey::from_bytes(&[9; 32])).await?;
        // Wait until node 2 has the contract too, then take it down.
        let n2 = connect(&addrs[2], &SigningKey::from_bytes(&[10; 32])).await?;
        while !n2.stat().await?.contract_execution_enabled {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(n2);
        nodes[2] = None;
        let killed_at = user.lcl().await?.0;
        for k in 0..changed {
            let out = user
                .submit_and_wait(format!("fill f{k:04} 0 {MIB} {}", 1000 + k).as_bytes())
                .await?;
            if out.outputs.first().map(|o| o.starts_with(b"filled")) != Some(true) {
                bail!("fill failed: {:?}", out.outputs);
            }
        }
        println!(
            "  set-up: state written and bundle installed; waiting for {behind} ledgers ({:.0} s so far)",
            setup.elapsed().as_secs_f64()
        );
        wait_for_ledger(
            &user,
            killed_at + behind,
            Duration::from_millis(behind * roundtime * 4 + 60_000),
        )
        .await?;
        let goal = user.lcl().await?.0;
        let started = Instant::now();
        let (node, addr) = run_node(&hotpocket, &dirs[2], Some(&log))?;
        nodes[2] = Some(node);
        let c = connect(&addr, &SigningKey::from_bytes(&[11; 32])).await?;
        loop {
            let stat = c.stat().await?;
            let lcl = c.lcl().await?.0;
            if stat.in_sync && stat.vote_status == "in sync" && lcl >= goal {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("node 2 did not catch up: {} at {lcl}", stat.vote_status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let baseline = copy_baseline(changed * MIB).await?;
        Ok((goal - killed_at, took, baseline))
    });
    drop(nodes);
    let (ledgers, took, baseline) = result?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = |what: &str| {
        text.lines()
            .rev()
            .find(|l| l.contains(what))
            .unwrap_or("(not logged)")
            .to_owned()
    };
    let done = line("state sync done");
    let walked = line("state sync: tree walked");
    let fetched = line("state sync: blocks fetched");
    println!(
        "  caught up {ledgers} ledgers behind in {:.2} s (process start to in sync on the cluster's ledger)",
        took.as_secs_f64()
    );
    println!(
        "  state sync: {} (tree walked, local parts linked: {})",
        field_summary(&done),
        field_summary(&walked)
    );
    if fetched != "(not logged)" {
        println!("  blocks: {}", field_summary(&fetched));
    }
    let sync_ms: f64 = done
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms=")?.parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "  baseline: {changed} MiB over one peer connection in {:.3} s; state sync / baseline = {:.1}, catch-up / baseline = {:.1}",
        baseline.as_secs_f64(),
        sync_ms / 1000.0 / baseline.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64()
    );
    Ok(())
}

/// The `key=value` fields of a log line.
fn field_summary(line: &str) -> String {
    line.split_whitespace()
        .filter(|w| {
            [
                "fetched_bytes=",
                "local_bytes=",
                "pieces=",
                "ms=",
                "to_fetch=",
                "fetch_ms=",
            ]
            .iter()
            .any(|k| w.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `mb` files of 1 MiB of pseudo-random bytes, the same on every node.
fn write_state(dir: &Path, mb: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for k in 0..mb {
        let mut x = (k as u64 + 1) * 0x9E37_79B9_7F4A_7C15;
        let mut buf = Vec::with_capacity(MIB);
        while buf.len() < MIB {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(dir.join(format!("f{k:04}")), &buf)?;
    }
    Ok(())
}

async fn connect(addr: &str, key: &SigningKey) -> anyhow::Result<Client> {
    Client::connect(addr, key.clone(), ConnectOptions::default())
        .await
        .with_context(|| format!("connecting to {addr}"))
}

async fn wait_for_ledger(c: &Client, seq: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let lcl = c.lcl().await?.0;
        if lcl >= seq {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ledger {seq} not reached (at {lcl})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Time to send `bytes` from one peer to another over the peer protocol's connection, in
/// state responses of 16 blocks of 64 KiB.
async fn copy_baseline(bytes: usize) -> anyhow::Result<Duration> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let start = |key: SigningKey, dir: &Path, known: Vec<String>| {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let cfg = PeerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            known_peers: known,
            contract_id: common::CONTRACT_ID.to_owned(),
            time_config: 100_025,
            max_frame_bytes: 4 * MIB,
        };
        let server = berth_hotpocket::tls::server_config(dir);
        let client = berth_hotpocket::tls::peer_client_config();
        let cancel = cancel.clone();
        let tracker = tracker.clone();
        async move {
            let net = PeerNet::start(cfg, key, server?, client?, tx, cancel, tracker).await?;
            anyhow::Ok((net, rx))
        }
    };
    let (a, b) = (
        SigningKey::from_bytes(&[50; 32]),
        SigningKey::from_bytes(&[51; 32]),
    );
    let (net_a, _rx_a) = start(a.clone(), dirs.0.path(), Vec::new()).await?;
    let addr = net_a.local_addr().to_string();
    let (_net_b, mut rx_b) = start(b.clone(), dirs.1.path(), vec![addr]).await?;
    let to = NodeKey::of(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while net_a.peers().is_empty() {
        if Instant::now() > deadline {
            bail!("peers did not connect");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let block = vec![7u8; 64 * 1024];
    let frames = bytes.div_ceil(16 * block.len());
    let started = Instant::now();
    for id in 0..frames {
        let pieces = (0..16)
            .map(|i| {
                let want = Want {
                    kind: PieceKind::Block,
                    hash: [i as u8; 32],
                };
                (want, Piece::Block(block.clone()))
            })
            .collect();
        let msg = PeerMsg::StateResponse {
            id: id as u32,
            pieces,
            busy: false,
        };
        while !net_a.send(&to, &msg) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut got = 0;
    while got < frames {
        match tokio::time::timeout(Duration::from_secs(30), rx_b.recv()).await {
            Ok(Some(_)) => got += 1,
            _ => bail!("baseline transfer stalled at {got} of {frames} frames"),
        }
    }
    let took = started.elapsed();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(took)
}
