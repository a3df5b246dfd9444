//! The instance image a tenant asks for, in instances the real host agent makes: a sandbox
//! whose host offers the Node.js and glibc image (`--node-image`), `berth acquire --image
//! node`, then an Evernode-style Node.js bundle (`bin_path: /usr/bin/node`) and a
//! dynamically linked C contract deployed with `berth deploy` and answering inputs.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use berth_e2e::{berth, json, ok, ports, Sandbox};

#[test]
fn a_node_bundle_and_a_dynamically_linked_binary_run_in_an_instance_the_agent_made() {
    if !berth_e2e::docker_available() {
        return;
    }
    berth_test_support::ensure_hotpocket_node_image();
    let node_image = berth_test_support::HOTPOCKET_NODE_IMAGE;
    let (user, peer) = ports(27800);
    let Some(sb) = Sandbox::start(&[
        "--slots",
        "2",
        "--node-image",
        node_image,
        "--user-ports",
        &user,
        "--peer-ports",
        &peer,
    ]) else {
        return;
    };
    let home = sb.tenant_home();
    let host = sb.get("host");
    let acquired = json(berth(
        &home,
        &["acquire", &host, "--image", "node", "--json"],
    ));
    let lease = acquired["record"]["lease"].as_str().unwrap().to_owned();
    // The agent made the instance from the node image.
    let name = acquired["record"]["name"].as_str().unwrap();
    let image = Command::new("docker")
        .args(["ps", "--format", "{{.Image}} {{.Names}}"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&image.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(node_image) && l.contains(name)),
        "{listed}"
    );
    // The node's secret is not in the container's environment (`docker inspect`).
    let container = listed
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .to_owned();
    let env = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", &container])
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    assert!(env.contains("HP_USER_PORT"), "{env}");
    assert!(!env.contains("HP_NODE_SECRET"), "{env}");

    // An Evernode-style Node.js bundle: the example beside its contract.config.
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("node-echo");
    copy_dir(
        &berth_test_support::root().join("examples/node-echo"),
        &bundle,
    );
    std::fs::write(
        bundle.join("contract.config"),
        r#"{"bin_path": "/usr/bin/node", "bin_args": "index.js", "version": "1.0"}"#,
    )
    .unwrap();
    ok(berth(&home, &["deploy", &lease, bundle.to_str().unwrap()]));
    let out = json(berth(&home, &["input", &lease, "hello node", "--json"]));
    assert_eq!(out["outputs"][0], "Echoing: hello node", "{out}");

    // A dynamically linked C contract, deployed over it (the owner's upgrade).
    let c = tmp.path().join("dyn");
    std::fs::create_dir_all(&c).unwrap();
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-o"])
        .arg(c.join("contract"))
        .arg(berth_test_support::root().join("hotpocket/tests/fixtures/dyn_echo.c"))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    std::fs::write(
        c.join("contract.config"),
        r#"{"bin_path": "contract", "version": "2.0"}"#,
    )
    .unwrap();
    ok(berth(&home, &["deploy", &lease, c.to_str().unwrap()]));
    let out = json(berth(&home, &["input", &lease, "hello glibc", "--json"]));
    let text = out["outputs"][0].as_str().unwrap();
    assert!(
        text.starts_with("glibc 2.") && text.ends_with(": hello glibc"),
        "{out}"
    );
    ok(berth(&home, &["terminate", &lease]));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
