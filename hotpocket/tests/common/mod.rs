//! Harness: runs the real `hotpocket` binary on 127.0.0.1 and builds bundles.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_hotpocket_client::client::{Client, ConnectOptions};
use berth_hotpocket_client::protocol::pubkey_hex;
use ed25519_dalek::SigningKey;

/// Runs `docker <args>`: its trimmed stdout, or an error naming the command and its stderr.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub const CONTRACT_ID: &str = "3c349abe-4d70-4f50-9fa6-018f1f2530ab";

pub fn hotpocket_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hotpocket"))
}

/// A built example contract (`cargo test` builds examples).
pub fn example_bin(name: &str) -> PathBuf {
    let path = hotpocket_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {} not built; run `cargo test -p berth-hotpocket` (builds examples)",
        path.display()
    );
    path
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub struct Node {
    pub dir: PathBuf,
    pub child: Child,
    pub addr: String,
}

impl Node {
    /// Creates a node dir owned by `owner` and starts it.
    pub fn create(dir: &Path, owner: &SigningKey, roundtime_ms: u64) -> Node {
        let status = Command::new(hotpocket_bin())
            .arg("new")
            .arg(dir)
            .args([
                "--owner",
                &pubkey_hex(&owner.verifying_key()),
                "--contract-id",
                CONTRACT_ID,
            ])
            .args([
                "--user-port",
                "0",
                "--peer-port",
                "0",
                "--roundtime-ms",
                &roundtime_ms.to_string(),
            ])
            .args(["--node-secret", &"42".repeat(32)])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        Node::start(dir)
    }

    /// Starts a node on an existing dir.
    pub fn start(dir: &Path) -> Node {
        Self::start_with_stderr(dir, Stdio::inherit())
    }

    /// Starts a node on an existing dir, its stderr (its log) to `stderr`.
    pub fn start_with_stderr(dir: &Path, stderr: Stdio) -> Node {
        let mut child = Command::new(hotpocket_bin())
            .args(["run", "--state-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1", "--user-port", "0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("hotpocket user port listening on ") {
                addr = Some(rest.trim().to_owned());
                break;
            }
        }
        // Keep draining stdout so contract output never blocks.
        std::thread::spawn(move || for _ in lines {});
        Node {
            dir: dir.to_path_buf(),
            child,
            addr: addr.expect("node printed its address"),
        }
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::Term).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "node exited with {status}");
    }

    pub async fn connect(&self, key: &SigningKey) -> Client {
        Client::connect(&self.addr, key.clone(), ConnectOptions::default())
            .await
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A zip from (name, bytes, unix mode) entries; mode 0o120xxx makes a symlink to `bytes`.
pub fn zip_of(entries: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        for (name, bytes, mode) in entries {
            if mode & 0o170000 == 0o120000 {
                let target = String::from_utf8(bytes.clone()).unwrap();
                zip.add_symlink(*name, target, zip::write::SimpleFileOptions::default())
                    .unwrap();
                continue;
            }
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(*mode);
            zip.start_file(*name, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// A bundle with an example contract binary as `contract` and the given config.
pub fn bundle(example: &str, config: serde_json::Value) -> Vec<u8> {
    let bin = std::fs::read(example_bin(example)).unwrap();
    zip_of(&[
        ("contract.config", config.to_string().into_bytes(), 0o644),
        ("contract", bin, 0o755),
    ])
}

pub fn basic_config() -> serde_json::Value {
    serde_json::json!({"bin_path": "contract", "version": "1.0"})
}

pub async fn install(node: &Node, owner: &SigningKey, zip: &[u8]) -> Client {
    let client = node.connect(owner).await;
    let reply = client.upload_bundle(zip).await.unwrap();
    assert_eq!(reply.status, "ok", "upload failed: {}", reply.message);
    client
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A raw TLS WebSocket to the node (for handshake tests).
pub async fn raw_ws(
    addr: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let tls = berth_hotpocket_client::tls::client_config_accepting_self_signed().unwrap();
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{addr}").as_str(),
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    )
    .await
    .unwrap();
    ws
}

/// The next binary/text payload as JSON, or None when the node closed the connection.
pub async fn next_json<S>(ws: &mut S) -> Option<serde_json::Value>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??;
        match msg {
            Ok(Message::Binary(b)) => return serde_json::from_slice(&b).ok(),
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
