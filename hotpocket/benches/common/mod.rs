//! What the hotpocket benches share: building an example contract, bundling it, and
//! starting clusters of real `hotpocket` processes on 127.0.0.1.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use berth_hotpocket_client::protocol::pubkey_hex;
use ed25519_dalek::SigningKey;

pub const CONTRACT_ID: &str = "3c349abe-4d70-4f50-9fa6-018f1f2530ab";

/// The path of an example contract binary (`echo-contract`, `probe-contract`), built in the
/// bench's profile (a no-op when it is up to date; `cargo bench` does not build examples).
pub fn example_contract(hotpocket: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = hotpocket.parent().context("binary has no parent dir")?;
    let path = dir.join("examples").join(name);
    let profile = if dir.ends_with("release") {
        "release"
    } else {
        "dev"
    };
    berth_test_support::cargo_build_profile(profile, &["-p", "berth-hotpocket", "--example", name]);
    if !path.exists() {
        bail!("could not build {}", path.display());
    }
    Ok(path)
}

/// A `BENCH_*` setting from the environment, or its default.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A node process, killed when dropped.
pub struct NodeProc(pub Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A peer port below the kernel's ephemeral range, so that the other nodes' outgoing
/// connections cannot take it before the node binds it.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    for _ in 0..1000 {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in 20000..32000")
}

/// The `hotpocket new` arguments of node `i` of a cluster of `n` sharing a UNL, each
/// dialing the others.
pub fn cluster_args(n: usize, ports: &[u16], i: usize) -> Vec<String> {
    let keys: Vec<SigningKey> = (0..n).map(node_key).collect();
    let unl: Vec<String> = keys
        .iter()
        .map(|k| pubkey_hex(&k.verifying_key()))
        .collect();
    let peers: Vec<String> = (0..n)
        .filter(|j| *j != i)
        .map(|j| format!("127.0.0.1:{}", ports[j]))
        .collect();
    vec![
        "--peer-port".to_owned(),
        ports[i].to_string(),
        "--node-secret".to_owned(),
        hex::encode(keys[i].to_bytes()),
        "--unl".to_owned(),
        unl.join(","),
        "--peers".to_owned(),
        peers.join(","),
    ]
}

/// Node `i`'s key.
pub fn node_key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[200 + i as u8; 32])
}

/// Starts `n` nodes sharing a UNL, each dialing the others; returns them and their user
/// addresses.
pub fn start_cluster(
    hotpocket: &Path,
    root: &Path,
    owner: &SigningKey,
    roundtime: u64,
    n: usize,
) -> anyhow::Result<(Vec<NodeProc>, Vec<String>)> {
    let ports = (0..n)
        .map(|_| free_port())
        .collect::<anyhow::Result<Vec<u16>>>()?;
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("node{i}"));
        new_node(
            hotpocket,
            &dir,
            owner,
            roundtime,
            &cluster_args(n, &ports, i),
        )?;
        let (node, addr) = run_node(hotpocket, &dir, None)?;
        nodes.push(node);
        addrs.push(addr);
    }
    Ok((nodes, addrs))
}

/// `hotpocket new` in `dir`.
pub fn new_node(
    hotpocket: &Path,
    dir: &Path,
    owner: &SigningKey,
    roundtime: u64,
    extra: &[String],
) -> anyhow::Result<()> {
    let status = Command::new(hotpocket)
        .arg("new")
        .arg(dir)
        .args(["--owner", &pubkey_hex(&owner.verifying_key())])
        .args(["--contract-id", CONTRACT_ID, "--user-port", "0"])
        .args(["--roundtime-ms", &roundtime.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("hotpocket new failed");
    }
    Ok(())
}

/// `hotpocket run` on `dir`; its log goes to `log` at `info` (or to the bench's stderr at
/// `BENCH_NODE_LOG`, default `warn`). Returns the node and its user address.
pub fn run_node(
    hotpocket: &Path,
    dir: &Path,
    log: Option<&Path>,
) -> anyhow::Result<(NodeProc, String)> {
    let level = std::env::var("BENCH_NODE_LOG").ok();
    let (stderr, level) = match log {
        Some(path) => (
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            level.unwrap_or_else(|| "info".to_owned()),
        ),
        None => (Stdio::inherit(), level.unwrap_or_else(|| "warn".to_owned())),
    };
    let mut child = Command::new(hotpocket)
        .args(["run", "--listen", "127.0.0.1", "--state-dir"])
        .arg(dir)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let node = NodeProc(child);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if let Some(addr) = line?.strip_prefix("hotpocket user port listening on ") {
            let addr = addr.trim().to_owned();
            std::thread::spawn(move || for _ in lines {});
            return Ok((node, addr));
        }
    }
    bail!("node exited before listening")
}

/// A bundle of one contract binary (as `contract`).
pub fn bundle(bin: &Path) -> anyhow::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.start_file("contract.config", opts)?;
    zip.write_all(br#"{"bin_path":"contract"}"#)?;
    zip.start_file("contract", opts)?;
    zip.write_all(&std::fs::read(bin)?)?;
    zip.finish()?;
    Ok(buf.into_inner())
}
