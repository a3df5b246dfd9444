//! The Node.js instance image (`berth-hotpocket-node:latest`, hotpocket/image/build-node.sh)
//! under real Docker, hardened as the provisioner runs an instance (read-only root, uid 10001,
//! all capabilities dropped, no new privileges, docker-init, /tmp a noexec tmpfs, pids and
//! memory limits, /state on a volume):
//! - a Node.js bundle as Evernode ships them (`bin_path: /usr/bin/node`, `bin_args: index.js`,
//!   `examples/node-echo`, written against hotpocket-nodejs-contract's interface) runs, keeps
//!   its state across ledgers, and is refused by the minimal image, which has no Node.js;
//! - a contract built here with the host's `cc`, dynamically linked against glibc, runs.
//!
//! The helper builds the image when it is missing or stale (Debian's packages, no registry).
//! Without Docker the tests skip, unless BERTH_REQUIRE_DOCKER=1, when they fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_hotpocket::image::{is_static_elf, IMAGE_TAG, NODE_IMAGE_TAG};
use berth_hotpocket_client::client::{Client, ConnectOptions};
use berth_hotpocket_client::protocol::bundle::{build_bundle, ContractConfig};
use berth_hotpocket_client::protocol::pubkey_hex;
use common::*;
use serde_json::{json, Value};

/// Whether the tests can run: the engine answers (or they skip, see the module doc).
fn engine() -> bool {
    match docker(&["version", "--format", "{{.Server.Version}}"]) {
        Ok(_) => true,
        Err(e) => {
            berth_test_support::docker_unreachable(e);
            false
        }
    }
}

/// The Node.js image's id (built when missing or stale).
fn node_image() -> String {
    assert_eq!(NODE_IMAGE_TAG, berth_test_support::HOTPOCKET_NODE_IMAGE);
    berth_test_support::ensure_hotpocket_node_image()
}

/// One running instance container; dropping it removes the container and its volume.
struct Instance {
    name: String,
    addr: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["volume", "rm", "-f", &self.name]);
    }
}

impl Instance {
    /// Starts `image` as the provisioner would and waits for its user port.
    async fn start(image: &str, tag: &str) -> Instance {
        let name = format!("berth-hp-node-test-{}-{tag}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let _ = docker(&["volume", "rm", "-f", &name]);
        docker(&["volume", "create", &name]).unwrap();
        // Removes the container and volume also when the start fails.
        let mut instance = Instance {
            name: name.clone(),
            addr: String::new(),
        };
        let owner_env = format!("HP_OWNER_PUBKEY={}", pubkey_hex(&key(1).verifying_key()));
        let volume = format!("{name}:/state");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--init",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,noexec,nosuid,nodev,size=16m,mode=1777",
            "--user",
            "10001:10001",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "256",
            "--ulimit",
            "nofile=4096:4096",
            "--memory",
            "128m",
            "--memory-swap",
            "128m",
            "-v",
            &volume,
            "-p",
            "127.0.0.1::8081",
            "-e",
            &format!("HP_CONTRACT_ID={CONTRACT_ID}"),
            "-e",
            &owner_env,
            "-e",
            "HP_USER_PORT=8081",
            "-e",
            "HP_PEER_PORT=22861",
            "-e",
            "HP_ROUNDTIME_MS=200",
            image,
            "run",
            "--state-dir",
            "/state",
        ])
        .unwrap();
        for _ in 0..150 {
            let logs = docker(&["logs", &name]).unwrap_or_default();
            if logs.contains("hotpocket user port listening on") {
                let port = docker(&["port", &name, "8081/tcp"]).unwrap();
                let addr = port.lines().next().unwrap().trim().to_owned();
                instance.addr = addr;
                return instance;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{image} did not start; logs: {}",
            docker(&["logs", &name]).unwrap_or_default()
        );
    }

    async fn owner(&self) -> Client {
        Client::connect(&self.addr, key(1), ConnectOptions::default())
            .await
            .unwrap()
    }

    fn logs(&self) -> String {
        docker(&["logs", &self.name]).unwrap_or_default()
    }
}

fn config(value: Value) -> ContractConfig {
    serde_json::from_value(value).unwrap()
}

/// `examples/node-echo` as a bundle (`index.js` and its `node_modules`).
fn node_bundle() -> Vec<u8> {
    let dir = berth_test_support::root().join("examples/node-echo");
    let mut files = Vec::new();
    collect(&dir, &dir, &mut files);
    files.sort();
    assert!(files.iter().any(|(name, _, _)| name == "index.js"));
    build_bundle(
        &config(json!({
            "bin_path": "/usr/bin/node",
            "bin_args": "index.js",
            "version": "1.0",
        })),
        &files,
    )
    .unwrap()
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.push((name, std::fs::read(&path).unwrap(), 0o644));
        }
    }
}

fn as_json(output: &[u8]) -> Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(output)))
}

#[tokio::test]
async fn a_node_bundle_runs_in_the_node_image() {
    if !engine() {
        return;
    }
    let image = node_image();
    // The same container contract as the minimal image's.
    let config = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.WorkingDir}}",
        &image,
    ])
    .unwrap();
    assert_eq!(
        config,
        r#"10001:10001 ["/hotpocket"] ["run","--state-dir","/state"] /state"#
    );
    let node = Instance::start(&image, "node").await;
    let owner = node.owner().await;
    let reply = owner.upload_bundle(&node_bundle()).await.unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);

    for (count, input) in [(1, "hello node"), (2, "hello again")] {
        let out = owner.submit_and_wait(input.as_bytes()).await.unwrap();
        assert_eq!(out.outputs.len(), 2, "logs: {}", node.logs());
        // The contract sends JSON (the library's default protocol); in the client's JSON mode
        // an output that is JSON travels embedded, so a JSON string arrives as its text.
        assert_eq!(
            String::from_utf8_lossy(&out.outputs[0]),
            format!("Echoing: {input}")
        );
        let info = as_json(&out.outputs[1]);
        // Debian's Node.js: 18 on bookworm, newer on later releases.
        let major: u32 = info["node"].as_str().unwrap()[1..]
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(major >= 18, "{info}");
        // count.txt in the state directory persists between ledgers.
        assert_eq!(info["count"], json!(count), "{info}");
        assert_eq!(info["unl"], json!(1), "{info}");
        assert!(info["lcl"].as_u64().unwrap() >= 1, "{info}");
    }
}

#[tokio::test]
async fn the_minimal_image_refuses_a_node_bundle() {
    if !engine() {
        return;
    }
    node_image(); // builds the minimal image too
    let minimal = Instance::start(IMAGE_TAG, "minimal").await;
    let reply = minimal
        .owner()
        .await
        .upload_bundle(&node_bundle())
        .await
        .unwrap();
    assert_eq!(reply.status, "fail", "{}", reply.message);
    assert!(reply.message.contains("/usr/bin/node"), "{}", reply.message);
}

#[tokio::test]
async fn a_dynamically_linked_binary_runs_in_the_node_image() {
    if !engine() {
        return;
    }
    let image = node_image();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("contract");
    let source = berth_test_support::root().join("hotpocket/tests/fixtures/dyn_echo.c");
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&source)
        .output()
        .expect("a C compiler (`cc`) for the dynamically linked contract");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    assert!(
        !is_static_elf(&bin).unwrap(),
        "the contract must need the dynamic loader"
    );
    let bundle = build_bundle(
        &config(json!({ "bin_path": "contract", "version": "1.0" })),
        &[("contract".into(), std::fs::read(&bin).unwrap(), 0o755)],
    )
    .unwrap();

    let node = Instance::start(&image, "dyn").await;
    let owner = node.owner().await;
    let reply = owner.upload_bundle(&bundle).await.unwrap();
    assert_eq!(reply.status, "ok", "{}", reply.message);
    let out = owner.submit_and_wait(b"hello glibc").await.unwrap();
    assert_eq!(out.outputs.len(), 1, "logs: {}", node.logs());
    let text = String::from_utf8(out.outputs[0].clone()).unwrap();
    assert!(
        text.starts_with("glibc 2.") && text.ends_with(": hello glibc"),
        "{text}"
    );
}
