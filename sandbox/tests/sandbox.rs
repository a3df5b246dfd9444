//! `berth sandbox` as a process: the real binary, the real Docker engine, the instance image
//! `berth-hotpocket:latest` (built with hotpocket/image/build.sh when missing). Tests that need
//! Docker print SKIPPED without it, and fail instead when `BERTH_REQUIRE_DOCKER=1`. Each test
//! uses its own ports and Docker namespace, so they run in parallel.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_mb_xrpl::{Client, ClientConfig, SubmitConfig, Submitter};
use berth_schemas::key::PublicKey;
use berth_schemas::memo::Message;
use berth_schemas::message::{Acquire, AcquireRequest, Sealed};
use berth_tenant::instance::{Instance, StatusView};
use berth_tenant::keys::Keys;
use berth_test_support::{docker_available, ensure_hotpocket_image, fails, usage_error};
use berth_xrpl_core::KeyPair;
use serde_json::{json, Value};

const CONTRACT: &str = "5d0b6b0e-8c1a-4f7e-9f53-2a6c1b9e4d21";

/// `berth` (built by a nested `cargo build`), which runs this package's `berth-sandbox` from
/// the same directory.
fn berth_bin() -> PathBuf {
    berth_test_support::bin("berth-tenant", "berth")
}

/// Runs `berth` with `BERTH_HOME=home` and the given arguments.
fn berth(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(berth_bin())
        .args(args)
        .env("BERTH_HOME", home)
        .env_remove("BERTH_LEDGER")
        .env_remove("BERTH_REGISTRY")
        .env_remove("BERTH_SEED")
        .output()
        .unwrap()
}

/// A `berth --json sandbox` process; SIGTERMed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(berth_bin())
            .arg("--json")
            .arg("sandbox")
            .args(args)
            .env_remove("BERTH_HOME")
            .env_remove("BERTH_LEDGER")
            .env_remove("BERTH_REGISTRY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Running {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The JSON ready line.
    fn ready(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => serde_json::from_str(&line).unwrap(),
            Err(e) => {
                self.terminate();
                panic!("no ready line ({e}); stderr: {}", self.stderr());
            }
        }
    }

    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }

    /// SIGTERM, then waits up to 60 s; returns the exit code.
    fn terminate(&mut self) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Container names of a Docker namespace (`docker ps -a`).
fn containers(namespace: &str, format: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=berth.namespace={namespace}"),
            "--format",
            format,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn text(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {value}"))
        .to_owned()
}

/// Buys the first live offer as the sandbox's tenant, with an acquire request sealed to the
/// host's MessageKey; the answer goes to the tenant's MessageKey the sandbox set.
async fn buy(info: &Value, offer: &str) {
    let keys = Keys::load(Path::new(&text(info, "tenant_home"))).unwrap();
    let client = Client::connect(ClientConfig::new([text(info, "ledger")]))
        .await
        .unwrap();
    let host = client
        .request(
            "account_info",
            json!({"account": text(info, "host"), "ledger_index": "validated"}),
        )
        .await
        .unwrap();
    let host_key = hex::decode(host["account_data"]["MessageKey"].as_str().unwrap()).unwrap();
    let request = AcquireRequest {
        owner_key: PublicKey::from_verifying_key(&keys.user.verifying_key()).unwrap(),
        contract_id: CONTRACT.parse().unwrap(),
        reply_key: None,
        config: None,
    };
    let sealed = Sealed::seal(&PublicKey::from_bytes(&host_key).unwrap(), &request).unwrap();
    let memo = Message::Acquire(Acquire { sealed })
        .to_memo()
        .unwrap()
        .to_hex();
    let wallet = KeyPair::from_seed(&keys.wallet.seed().unwrap()).unwrap();
    let submitter = Submitter::new(client.clone(), wallet, SubmitConfig::default()).unwrap();
    let signed = submitter
        .prepare(json!({
            "TransactionType": "NFTokenAcceptOffer",
            "Account": keys.wallet.address(),
            "NFTokenSellOffer": offer,
            "Memos": [{"Memo": {"MemoType": memo.memo_type, "MemoFormat": memo.memo_format,
                                "MemoData": memo.memo_data}}],
        }))
        .await
        .unwrap();
    let validated = submitter.submit_and_wait(&signed).await.unwrap();
    assert!(validated.is_success(), "{}", validated.result);
    client.shutdown().await;
}

/// The instance's status over HotPocket's user protocol, as its owner (retried while the node
/// starts).
async fn instance_status(url: &str, keys: &Keys) -> StatusView {
    let mut last = String::new();
    for _ in 0..60 {
        match Instance::connect(url, &keys.user, Duration::from_secs(5)).await {
            Ok(node) => {
                let status = node.status().await;
                node.close().await;
                match status {
                    Ok(status) => return status,
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("instance {url} never answered: {last}");
}

/// Waits until the namespace has a running container whose user port accepts connections.
fn wait_for_instance(namespace: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let running = containers(namespace, "{{.State}} {{.Label \"berth.user-port\"}}");
        if let Some(port) = running
            .iter()
            .find_map(|line| line.strip_prefix("running "))
            .and_then(|port| port.trim().parse::<u16>().ok())
        {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "no instance answered in namespace {namespace}: {:?}",
        containers(namespace, "{{.Names}} {{.Status}}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_in_a_given_dir_lists_its_host_runs_a_purchase_and_stops_clean() {
    if !docker_available() {
        return;
    }
    ensure_hotpocket_image();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sandbox");
    let namespace = format!("berth-sbxtest-{}-dir", std::process::id());
    let mut sandbox = Running::spawn(&[
        "--dir",
        dir.to_str().unwrap(),
        "--user-ports",
        "26401-26449",
        "--peer-ports",
        "23061-23109",
        "--namespace",
        &namespace,
        "--close-ms",
        "500",
    ]);
    let info = sandbox.ready();
    assert_eq!(info["ready"], json!(true), "{info}");
    assert_eq!(
        PathBuf::from(text(&info, "dir")),
        std::fs::canonicalize(&dir).unwrap()
    );
    assert_eq!(text(&info, "namespace"), namespace);
    assert_eq!(info["slots"], json!(3));
    assert!(
        text(&info, "ledger").starts_with("ws://127.0.0.1:"),
        "{info}"
    );
    assert!(Path::new(&text(&info, "log")).is_file(), "{info}");
    let home = PathBuf::from(text(&info, "tenant_home"));
    assert!(home.join("keys.json").is_file() && home.join("settings.json").is_file());

    // The tenant home alone is enough: no --ledger, no --registry.
    let out = berth(&home, &["hosts", "--json"]);
    let hosts: Value = serde_json::from_str(&berth_test_support::ok(out)).unwrap();
    let host = &hosts.as_array().unwrap()[0];
    assert_eq!(host["address"], info["host"], "{hosts}");
    let offers = host["offers"].as_array().unwrap();
    assert_eq!(offers.len(), 3, "{hosts}");
    assert_eq!(host["domain"], json!("127.0.0.1"));
    assert!(
        containers(&namespace, "{{.Names}}").is_empty(),
        "no instance before a purchase"
    );

    // A purchase runs the instance image within the sandbox's limits.
    buy(&info, offers[0]["offer_id"].as_str().unwrap()).await;
    let port = wait_for_instance(&namespace);
    assert!((26401..=26449).contains(&port), "{port}");
    let keys = Keys::load(&home).unwrap();
    let status = instance_status(&format!("127.0.0.1:{port}"), &keys).await;
    assert_eq!(status.contract_id, CONTRACT, "{status:?}");

    assert_eq!(sandbox.terminate(), Some(0));
    let stderr = sandbox.stderr();
    assert!(
        stderr.contains("sandbox stopped, 1 instance removed"),
        "{stderr}"
    );
    assert!(containers(&namespace, "{{.Names}}").is_empty());
    // A given dir is kept, and a second sandbox refuses it.
    assert!(dir.join("tenant/keys.json").is_file());
    let again = Command::new(berth_bin())
        .args(["sandbox", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let err = fails(again);
    assert!(
        err.contains("exists and is not empty; remove it or choose another"),
        "{err}"
    );
}

#[test]
fn sandbox_in_a_temp_dir_is_deleted_on_sigterm() {
    if !docker_available() {
        return;
    }
    ensure_hotpocket_image();
    let namespace = format!("berth-sbxtest-{}-tmp", std::process::id());
    let mut sandbox = Running::spawn(&[
        "--user-ports",
        "26451-26499",
        "--peer-ports",
        "23111-23159",
        "--namespace",
        &namespace,
        "--slots",
        "1",
    ]);
    let info = sandbox.ready();
    let dir = PathBuf::from(text(&info, "dir"));
    assert!(dir.is_dir(), "{info}");
    assert!(dir.starts_with(std::env::temp_dir()), "{info}");
    assert_eq!(sandbox.terminate(), Some(0));
    let stderr = sandbox.stderr();
    assert!(stderr.contains("sandbox stopped"), "{stderr}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn sandbox_without_docker_says_how_to_get_it() {
    let out = Command::new(berth_bin())
        .args(["sandbox"])
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .output()
        .unwrap();
    let err = fails(out);
    for word in [
        "no Docker engine",
        "unix:///nonexistent.sock",
        "install Docker Engine",
        "systemctl start docker",
        "docker group",
        "DOCKER_HOST",
    ] {
        assert!(err.contains(word), "{word:?} not in {err}");
    }
}

#[test]
fn sandbox_names_a_missing_image_and_build_sh() {
    if !docker_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sandbox");
    let out = Command::new(berth_bin())
        .args(["sandbox", "--image", "berth-no-such-image:latest", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = fails(out);
    assert!(
        err.contains("berth-no-such-image:latest") && err.contains("hotpocket/image/build.sh"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing is created before the checks pass");
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let sandbox = env!("CARGO_BIN_EXE_berth-sandbox");
    for args in [&["--no-such-flag"][..], &["--bundle", "x.zip"][..]] {
        usage_error(Command::new(sandbox).args(args).output().unwrap());
    }
    // Through `berth sandbox`: the sandbox's own exit code.
    let tmp = tempfile::tempdir().unwrap();
    let err = usage_error(berth(tmp.path(), &["sandbox", "--slots", "0"]));
    assert!(err.contains("--slots"), "{err}");
    // A failure before anything starts (no Docker needed): the demo's bundle is unreadable.
    let missing = tmp.path().join("missing.zip");
    let out = Command::new(sandbox)
        .args(["--json", "--demo", "--bundle"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "errors go to stderr, also with --json"
    );
    assert!(fails(out).contains("missing.zip"));
}
