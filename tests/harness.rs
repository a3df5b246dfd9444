//! Harness of the end-to-end tests: the real `berth` binary (built by a nested `cargo build`
//! into this workspace's target directory), `berth sandbox` as the world (localnet, a host
//! agent on the real Docker engine, a funded tenant), and helpers to run tenant commands.
//!
//! Needs Docker and the instance image `berth-hotpocket:latest` with the example bundles
//! (built by `hotpocket/image/build.sh` when missing). Without an engine the tests print
//! SKIPPED and pass, unless `BERTH_REQUIRE_DOCKER=1`, which makes them fail.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use berth_test_support::{docker_available, root};

/// The `berth` binary and, next to it, `berth-sandbox` (which `berth sandbox` runs), built
/// once per test process by a nested `cargo build`.
pub fn berth_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = berth_test_support::cargo_build(&[
            "-p",
            "berth-tenant",
            "--bin",
            "berth",
            "-p",
            "berth-sandbox",
            "--bin",
            "berth-sandbox",
        ]);
        let bin = dir.join("berth");
        assert!(bin.is_file(), "{}", bin.display());
        bin
    })
}

/// The instance image and the example bundles, built by hotpocket/image/build.sh when
/// missing; returns the counter bundle.
pub fn counter_bundle() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        berth_test_support::ensure_hotpocket_image();
        let bundle = root().join("examples/bundles/counter.zip");
        assert!(bundle.is_file(), "{}", bundle.display());
        bundle
    })
}

/// Runs `berth` with `home` as its home and waits for it.
pub fn berth(home: &Path, args: &[&str]) -> Output {
    Command::new(berth_bin())
        .args(args)
        .env("BERTH_HOME", home)
        .env_remove("BERTH_LEDGER")
        .env_remove("BERTH_REGISTRY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Stdout of a command that must succeed.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "expected success: {}", describe(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stdout of a `--json` command that must succeed, parsed.
pub fn json(o: Output) -> Value {
    let text = ok(o);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Stderr of a command that must fail with exit code 1.
pub fn fails(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected failure: {}",
        describe(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `berth sandbox`, stopped (SIGTERM) when dropped.
pub struct Sandbox {
    child: Option<Child>,
    /// The ready line: ledger, registry, host, tenant, tenant_home, namespace, dir, ….
    pub info: Value,
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// Starts `berth --json sandbox --dir <tmp> <args>` and waits for its ready line.
    /// `None` when Docker is unavailable and not required.
    pub fn start(args: &[&str]) -> Option<Sandbox> {
        if !docker_available() {
            return None;
        }
        counter_bundle();
        let dir = tempfile::tempdir().unwrap();
        let sandbox_dir = dir.path().join("sandbox");
        let mut child = Command::new(berth_bin())
            .args(["--json", "sandbox", "--dir"])
            .arg(&sandbox_dir)
            .args(args)
            .env("BERTH_HOME", dir.path().join("unused-home"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        let info = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["ready"] == true {
                            break v;
                        }
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("berth sandbox never printed its ready line");
                }
            }
        };
        Some(Sandbox {
            child: Some(child),
            info,
            dir,
        })
    }

    pub fn get(&self, key: &str) -> String {
        self.info[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {}", self.info))
            .to_owned()
    }

    pub fn tenant_home(&self) -> PathBuf {
        PathBuf::from(self.get("tenant_home"))
    }

    /// Containers of the sandbox's namespace (running or not).
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
            .arg(format!("label=berth.namespace={}", self.get("namespace")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A second tenant: keys in a new home, funded with `xrp`, MessageKey set, settings
    /// pointing at this sandbox (through the flags, not the settings file).
    pub fn new_tenant(&self, name: &str, xrp: u64) -> PathBuf {
        let home = self.dir.path().join(name);
        let key = berth_xrpl_core::KeyPair::generate(berth_xrpl_core::KeyType::Ed25519);
        fund(&self.get("ledger"), &key.address(), xrp);
        let seed = key.seed().unwrap();
        ok(berth(
            &home,
            &[
                "keys",
                "import",
                "--seed",
                &seed,
                "--set-message-key",
                "--ledger",
                &self.get("ledger"),
            ],
        ));
        home
    }

    /// Stops the sandbox with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate().unwrap()
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Funds `address` with `xrp` through localnet's admin `wallet_fund` and waits until the
/// account exists in a validated ledger.
pub fn fund(ledger: &str, address: &str, xrp: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = berth_mb_xrpl::Client::connect(berth_mb_xrpl::ClientConfig::new([ledger]))
            .await
            .unwrap();
        client
            .request(
                "wallet_fund",
                serde_json::json!({"destination": address, "amount": (xrp * 1_000_000).to_string()}),
            )
            .await
            .unwrap();
        for _ in 0..100 {
            let info = client
                .request(
                    "account_info",
                    serde_json::json!({"account": address, "ledger_index": "validated"}),
                )
                .await;
            if info.is_ok() {
                client.shutdown().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{address} was never funded");
    });
}

/// Port ranges of one test's sandbox, apart from the other tests'.
pub fn ports(base: u16) -> (String, String) {
    (
        format!("{}-{}", base, base + 19),
        format!("{}-{}", base + 100, base + 119),
    )
}
