//! `berth deploy|input|read|status` against a real `hotpocket` node process over TLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{berth, fails, hotpocket_artifacts, json, ok, Node};

/// A contract directory holding the echo example as `contract`.
fn echo_dir(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("echo");
    std::fs::create_dir_all(&dir).unwrap();
    let (_, echo) = hotpocket_artifacts();
    std::fs::copy(echo, dir.join("contract")).unwrap();
    std::fs::set_permissions(dir.join("contract"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("contract.config"),
        r#"{"bin_path": "contract", "version": "1.0"}"#,
    )
    .unwrap();
    dir
}

/// An owner's home with keys, a node that owner owns (nothing installed), its URL and the
/// echo contract directory.
fn owned_echo_node(
    root: &std::path::Path,
) -> (std::path::PathBuf, Node, String, std::path::PathBuf) {
    let owner = root.join("owner");
    ok(berth(&owner, &["keys", "new"]));
    let owner_key = json(berth(&owner, &["keys", "show", "--json"]))["hotpocket_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let node = Node::create(&root.join("node"), &owner_key);
    let url = format!("wss://{}", node.addr);
    (owner, node, url, echo_dir(root))
}

#[test]
fn deploy_echo_then_input_read_and_status_and_a_stranger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let stranger = tmp.path().join("stranger");
    ok(berth(&stranger, &["keys", "new"]));
    let (owner, _node, url, dir) = owned_echo_node(tmp.path());

    // Before anything is installed, a stranger's upload is refused: by the bootstrap
    // (`UserNotAllowed`), or, when the bundle is over the node's limit for users other than
    // the owner, by the node closing the connection; either way the error names the owner.
    let err = fails(berth(&stranger, &["deploy", &url, dir.to_str().unwrap()]));
    assert!(
        err.contains("owner") && (err.contains("UserNotAllowed") || err.contains("limit")),
        "{err}"
    );

    let out = ok(berth(
        &owner,
        &[
            "deploy",
            &url,
            dir.to_str().unwrap(),
            "--contract-id",
            common::CONTRACT_ID,
        ],
    ));
    assert!(out.contains("bootstrap: ok"), "{out}");

    let out = ok(berth(&owner, &["input", &url, "hello berth"]));
    assert_eq!(out.trim(), "hello berth");

    let file = tmp.path().join("input.txt");
    std::fs::write(&file, "from a file").unwrap();
    let v = json(berth(
        &owner,
        &["input", &url, &format!("@{}", file.display()), "--json"],
    ));
    assert_eq!(v["outputs"], serde_json::json!(["from a file"]));
    assert!(v["ledger_seq_no"].as_u64().unwrap() > 0);

    let out = ok(berth(&owner, &["read", &url, "a read"]));
    assert_eq!(out.trim(), "a read");

    let status = json(berth(&owner, &["status", &url, "--json"]));
    assert_eq!(status["contract_id"], common::CONTRACT_ID);
    assert!(status["lcl_seq_no"].as_u64().unwrap() > 0);
    assert_eq!(status["lcl_hash"].as_str().unwrap().len(), 64);
    let text = ok(berth(&owner, &["status", &url]));
    assert!(
        text.contains("lcl") && text.contains(common::CONTRACT_ID),
        "{text}"
    );

    // A zip made by `hotpocket bundle` replaces the contract.
    let (hotpocket, echo) = hotpocket_artifacts();
    let zip = tmp.path().join("echo.zip");
    let status = std::process::Command::new(hotpocket)
        .args(["bundle", "--bin"])
        .arg(echo)
        .arg("--out")
        .arg(&zip)
        .args(["--version", "2.0"])
        .status()
        .unwrap();
    assert!(status.success());
    let reply = json(berth(
        &owner,
        &["deploy", &url, zip.to_str().unwrap(), "--json"],
    ));
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(ok(berth(&owner, &["input", &url, "again"])).trim(), "again");

    // After the install a stranger's upload (in the owner request form, which only the
    // installer takes) is refused by name, or closed when over the limit for users.
    let err = fails(berth(&stranger, &["deploy", &url, dir.to_str().unwrap()]));
    assert!(
        err.contains("owner's keys") && (err.contains("UserNotAllowed") || err.contains("limit")),
        "{err}"
    );

    // The wrong contract id is named.
    let err = fails(berth(
        &owner,
        &[
            "deploy",
            &url,
            dir.to_str().unwrap(),
            "--contract-id",
            "other-contract",
        ],
    ));
    assert!(
        err.contains("other-contract") && err.contains(common::CONTRACT_ID),
        "{err}"
    );
}

#[test]
fn bad_bundles_are_named_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    ok(berth(&home, &["keys", "new"]));
    // Port 9 is never a HotPocket node: the bundle check comes first.
    let url = "127.0.0.1:9";

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = fails(berth(&home, &["deploy", url, empty.to_str().unwrap()]));
    assert!(
        err.contains("no contract.config") && err.contains("bin_path"),
        "{err}"
    );

    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("contract.config"), "{not json").unwrap();
    let err = fails(berth(&home, &["deploy", url, broken.to_str().unwrap()]));
    assert!(err.contains("contract.config is not valid"), "{err}");

    let nobin = tmp.path().join("nobin");
    std::fs::create_dir_all(&nobin).unwrap();
    std::fs::write(nobin.join("contract.config"), r#"{"bin_path":"missing"}"#).unwrap();
    let err = fails(berth(&home, &["deploy", url, nobin.to_str().unwrap()]));
    assert!(err.contains("bin_path `missing`"), "{err}");

    let notzip = tmp.path().join("bundle.zip");
    std::fs::write(&notzip, "plain text").unwrap();
    let err = fails(berth(&home, &["deploy", url, notzip.to_str().unwrap()]));
    assert!(err.contains("not a zip file"), "{err}");
}

#[test]
fn unreachable_instances_and_missing_keys_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let err = fails(berth(&home, &["status", "127.0.0.1:9"]));
    assert!(
        err.contains("no keys") && err.contains("berth keys new"),
        "{err}"
    );

    ok(berth(&home, &["keys", "new"]));
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = fails(berth(&home, &["input", &format!("127.0.0.1:{port}"), "x"]));
    assert!(
        err.contains("unreachable") && err.contains("is the instance running"),
        "{err}"
    );

    let err = fails(berth(&home, &["status", "not-an-address"]));
    assert!(
        err.contains("`not-an-address` is neither a lease")
            && err.contains("berth leases")
            && err.contains("host:port"),
        "{err}"
    );

    // Usage errors exit 2.
    let o = berth(&home, &["deploy"]);
    assert_eq!(o.status.code(), Some(2));
    let o = berth(&home, &["deploy", "--help"]);
    assert_eq!(o.status.code(), Some(0));
}

/// Connecting through a lease checks what the host's sealed details promise: the node's key
/// (proven by its signature over the client's challenge) and the contract id.
#[tokio::test]
async fn a_lease_connection_refuses_a_node_that_is_not_the_leased_instance() {
    use berth_tenant::instance::{Instance, InstanceError};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let user = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let user_hex = berth_hotpocket_client::protocol::pubkey_hex(&user.verifying_key());
    let node = Node::create(&tmp.path().join("node"), &user_hex);
    let url = format!("wss://{}", node.addr);
    // The node's secret in `Node::create` is 0x42 × 32.
    let node_key = berth_hotpocket_client::protocol::pubkey_hex(
        &ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]).verifying_key(),
    );
    let timeout = Duration::from_secs(10);

    let good = Instance::connect_expecting(&url, &user, timeout, &node_key, common::CONTRACT_ID)
        .await
        .unwrap();
    assert_eq!(good.node_key(), Some(node_key.as_str()));
    good.close().await;

    let impostor = berth_hotpocket_client::protocol::pubkey_hex(
        &ed25519_dalek::SigningKey::from_bytes(&[0x43; 32]).verifying_key(),
    );
    match Instance::connect_expecting(&url, &user, timeout, &impostor, common::CONTRACT_ID).await {
        Err(
            e @ InstanceError::NotTheLeasedInstance {
                what: "node key", ..
            },
        ) => {
            let text = e.to_string();
            assert!(
                text.contains(&impostor) && text.contains("nothing was sent"),
                "{text}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a node with another key was accepted"),
    }
    let other_contract = "00000000-0000-4000-8000-000000000000";
    match Instance::connect_expecting(&url, &user, timeout, &node_key, other_contract).await {
        Err(InstanceError::NotTheLeasedInstance {
            what: "contract id",
            ..
        }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a node of another contract was accepted"),
    }
}

/// `berth <args>` with the test's `hotpocket` first on the PATH (as `berth audit` finds it).
fn berth_with_hotpocket(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    let (hotpocket, _) = hotpocket_artifacts();
    let dir = hotpocket.parent().unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_HOME", home)
        .env("PATH", path)
        .env_remove("BERTH_LEDGER")
        .env_remove("BERTH_REGISTRY")
        .output()
        .unwrap()
}

#[test]
fn audit_verifies_an_instance_redeployed_and_any_user_may_run_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (owner, _node, url, dir) = owned_echo_node(tmp.path());
    ok(berth(&owner, &["deploy", &url, dir.to_str().unwrap()]));
    for input in ["one", "two"] {
        assert_eq!(ok(berth(&owner, &["input", &url, input])).trim(), input);
    }
    // A second deploy replaces the contract; the replay follows it.
    ok(berth(&owner, &["deploy", &url, dir.to_str().unwrap()]));
    assert_eq!(ok(berth(&owner, &["input", &url, "three"])).trim(), "three");

    let out = berth_with_hotpocket(&owner, &["audit", &url, "--json"]);
    let report = json(out);
    assert_eq!(report["verified"], true, "{report}");
    assert!(report["ledgers_verified"].as_u64().unwrap() > 3, "{report}");
    assert!(report["inputs_replayed"].as_u64().unwrap() >= 5, "{report}");

    // Someone with no Berth keys at all audits the address with a throw-away key.
    let auditor = tmp.path().join("auditor");
    let out = berth_with_hotpocket(&auditor, &["audit", &url]);
    let text = ok(out);
    assert!(text.starts_with("verified "), "{text}");
}
