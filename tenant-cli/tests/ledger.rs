//! `berth keys` and `berth hosts` driven as a process against an in-process localnet.
#![allow(clippy::unwrap_used)]

mod common;

use std::num::NonZeroU32;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use berth_localnet::{Config, Localnet, GENESIS_SEED};
use berth_mb_xrpl::{Client, ClientConfig, SubmitConfig, Submitter};
use berth_schemas::field::Drops;
use berth_schemas::lease_uri::LeaseUri;
use berth_schemas::memo::Message;
use berth_schemas::message::{Heartbeat, HostDereg, HostInfo};
use berth_xrpl_core::{KeyPair, KeyType};
use common::{berth, fails, json, ok};
use serde_json::{json, Value};

async fn localnet() -> Localnet {
    Localnet::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Runs `berth` off the async runtime's threads.
async fn berth_async(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    let home = home.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        berth(&home, &args)
    })
    .await
    .unwrap()
}

async fn submit(client: &Client, key: &KeyPair, tx: Value) -> berth_mb_xrpl::Validated {
    let seed = key.seed().unwrap();
    let s = Submitter::new(
        client.clone(),
        KeyPair::from_seed(&seed).unwrap(),
        SubmitConfig::default(),
    )
    .unwrap();
    let signed = s.prepare(tx).await.unwrap();
    let v = s.submit_and_wait(&signed).await.unwrap();
    assert!(v.is_success(), "{:?}", v.result);
    v
}

async fn fund(client: &Client, address: &str) {
    let genesis = KeyPair::from_seed(GENESIS_SEED).unwrap();
    submit(
        client,
        &genesis,
        json!({"TransactionType": "Payment", "Account": genesis.address(), "Destination": address, "Amount": "100000000"}),
    )
    .await;
}

fn memo_json(message: &Message) -> Value {
    let m = message.to_memo().unwrap().to_hex();
    json!([{"Memo": {"MemoType": m.memo_type, "MemoFormat": m.memo_format, "MemoData": m.memo_data}}])
}

#[test]
fn keys_new_show_import_round_trip_with_mode_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = ok(berth(&home, &["keys", "new"]));
    assert!(out.contains("address") && !out.contains("seed"), "{out}");
    let file = home.join("keys.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);

    let public = json(berth(&home, &["keys", "show", "--json"]));
    assert!(public.get("seed").is_none() && public.get("hotpocket_secret").is_none());
    assert_eq!(public["key_type"], "ed25519");
    assert!(public["hotpocket_public_key"]
        .as_str()
        .unwrap()
        .starts_with("ed"));
    let secret = json(berth(&home, &["keys", "show", "--json", "--show-secrets"]));
    let seed = secret["seed"].as_str().unwrap();
    let hp = secret["hotpocket_secret"].as_str().unwrap();
    assert_eq!(secret["address"], public["address"]);

    // Existing keys are kept without --force.
    let err = fails(berth(&home, &["keys", "new"]));
    assert!(
        err.contains("already exist") && err.contains("--force"),
        "{err}"
    );

    // Import elsewhere: the same wallet and user key.
    let other = tmp.path().join("other");
    let imported = json(berth(
        &other,
        &[
            "keys",
            "import",
            "--seed",
            seed,
            "--hotpocket-secret",
            hp,
            "--json",
        ],
    ));
    assert_eq!(imported, public);
    let mode = std::fs::metadata(other.join("keys.json"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // The seed from stdin.
    let third = tmp.path().join("third");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["keys", "import", "--seed", "-", "--json"])
        .env("BERTH_HOME", &third)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{seed}").unwrap();
    }
    let from_stdin = json(child.wait_with_output().unwrap());
    assert_eq!(from_stdin["address"], public["address"]);

    // secp256k1 wallets.
    let k = json(berth(
        &home,
        &[
            "keys",
            "new",
            "--force",
            "--key-type",
            "secp256k1",
            "--json",
        ],
    ));
    assert_eq!(k["key_type"], "secp256k1");
    assert_ne!(k["address"], public["address"]);

    // Bad input is named.
    let err = fails(berth(
        &other,
        &["keys", "import", "--seed", "snotaseed", "--force"],
    ));
    assert!(err.contains("bad XRPL seed"), "{err}");
    let err = fails(berth(
        &other,
        &[
            "keys",
            "import",
            "--seed",
            seed,
            "--hotpocket-secret",
            "abcd",
            "--force",
        ],
    ));
    assert!(
        err.contains("bad HotPocket user key") && err.contains("64 hex"),
        "{err}"
    );
    let o = berth(&home, &["keys", "new", "--key-type", "rsa"]);
    assert_eq!(o.status.code(), Some(2));
    let err = fails(berth(&tmp.path().join("none"), &["keys", "show"]));
    assert!(err.contains("berth keys new"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_set_the_message_key_on_the_ledger() {
    let net = localnet().await;
    let client = Client::connect(ClientConfig::new([net.url()]))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let url = net.url();

    // A new account is unfunded: the keys are saved and the error says to fund it.
    let o = berth_async(
        &home,
        &["keys", "new", "--set-message-key", "--ledger", &url],
    )
    .await;
    let err = fails(o);
    assert!(
        err.contains("fund") && err.contains("does not exist"),
        "{err}"
    );
    assert!(home.join("keys.json").exists());

    let wallet = KeyPair::generate(KeyType::Ed25519);
    fund(&client, &wallet.address()).await;
    let seed = wallet.seed().unwrap();
    let o = berth_async(
        &home,
        &[
            "keys",
            "import",
            "--force",
            "--seed",
            &seed,
            "--set-message-key",
            "--ledger",
            &url,
        ],
    )
    .await;
    ok(o);
    let info = client
        .request(
            "account_info",
            json!({"account": wallet.address(), "ledger_index": "validated"}),
        )
        .await
        .unwrap();
    assert_eq!(
        info["account_data"]["MessageKey"]
            .as_str()
            .unwrap()
            .to_uppercase(),
        berth_tenant::keys::Keys::import(&seed, None)
            .unwrap()
            .message_public()
            .unwrap()
            .to_ledger_hex()
            .to_uppercase()
    );
    client.shutdown().await;
    net.shutdown().await;
}

fn host_info(domain: &str, price: u64) -> HostInfo {
    serde_json::from_value(json!({
        "version": "0.1.0", "domain": domain, "country": "DE", "cpu_millicores": 4000,
        "memory_mb": 4096, "disk_mb": 10240, "slots": 2, "moment_secs": 3600,
        "price": price.to_string(),
    }))
    .unwrap()
}

fn lease(slot: u32, memory_mb: u32, price: u64) -> LeaseUri {
    LeaseUri {
        slot,
        cpu_millicores: NonZeroU32::new(2000).unwrap(),
        memory_mb: NonZeroU32::new(memory_mb).unwrap(),
        disk_mb: NonZeroU32::new(5120).unwrap(),
        price: Drops::new(price).unwrap(),
        moment_secs: NonZeroU32::new(3600).unwrap(),
    }
}

/// Mints a lease token and, when `offer`, puts it up for sale at its price.
async fn mint(client: &Client, host: &KeyPair, uri: LeaseUri, offer: bool) {
    let v = submit(
        client,
        host,
        json!({"TransactionType": "NFTokenMint", "Account": host.address(), "NFTokenTaxon": 0,
               "Flags": 8, "URI": uri.to_hex()}),
    )
    .await;
    let token = v.meta["nftoken_id"].as_str().unwrap().to_owned();
    if offer {
        submit(
            client,
            host,
            json!({"TransactionType": "NFTokenCreateOffer", "Account": host.address(),
                   "NFTokenID": token, "Amount": uri.price.get().to_string(), "Flags": 1}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_lists_registered_hosts_with_live_offers_and_filters() {
    let net = localnet().await;
    let client = Client::connect(ClientConfig::new([net.url()]))
        .await
        .unwrap();
    let url = net.url();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let registry = KeyPair::generate(KeyType::Ed25519);
    let (h1, h2, gone) = (
        KeyPair::generate(KeyType::Ed25519),
        KeyPair::generate(KeyType::Secp256k1),
        KeyPair::generate(KeyType::Ed25519),
    );
    for k in [&registry, &h1, &h2, &gone] {
        fund(&client, &k.address()).await;
    }
    let reg = registry.address();

    // Nobody registered yet.
    let err = fails(berth_async(&home, &["hosts", "--ledger", &url, "--registry", &reg]).await);
    assert!(
        err.contains("no host found") && err.contains("no host has registered"),
        "{err}"
    );
    // With --json: an empty list on stdout, the reason on stderr.
    let out = berth_async(
        &home,
        &["--json", "hosts", "--ledger", &url, "--registry", &reg],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, json!([]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no host has registered"), "{err}");

    let pay = |k: &KeyPair, m: &Message| {
        json!({"TransactionType": "Payment", "Account": k.address(), "Destination": reg,
               "Amount": "1", "Memos": memo_json(m)})
    };
    submit(
        &client,
        &h1,
        pay(&h1, &Message::HostReg(host_info("h1.example.com", 1000))),
    )
    .await;
    submit(
        &client,
        &h2,
        pay(&h2, &Message::HostReg(host_info("h2.example.com", 5000))),
    )
    .await;
    submit(
        &client,
        &gone,
        pay(&gone, &Message::HostReg(host_info("gone.example.com", 1))),
    )
    .await;
    submit(
        &client,
        &gone,
        pay(&gone, &Message::HostDereg(HostDereg {})),
    )
    .await;
    submit(
        &client,
        &h1,
        pay(&h1, &Message::Heartbeat(Heartbeat { free_slots: 1 })),
    )
    .await;
    // h1: one slot on offer, one sold out (no offer); h2: two slots, one with more memory.
    mint(&client, &h1, lease(0, 2048, 1000), true).await;
    mint(&client, &h1, lease(1, 2048, 1000), false).await;
    mint(&client, &h2, lease(0, 1024, 5000), true).await;
    mint(&client, &h2, lease(1, 8192, 6000), true).await;

    // `berth hosts --json` against this ledger and registry, with extra filter flags.
    let hosts_json = |extra: &[&str]| {
        let mut args = vec![
            "hosts",
            "--ledger",
            url.as_str(),
            "--registry",
            reg.as_str(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let home = home.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            json(berth_async(&home, &args).await)
        }
    };
    let all = hosts_json(&[]).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["address"], h1.address());
    assert_eq!(all[0]["domain"], "h1.example.com");
    assert_eq!(all[0]["offers"].as_array().unwrap().len(), 1);
    assert_eq!(all[0]["offers"][0]["amount_drops"], 1000);
    assert_eq!(all[0]["announced_free_slots"], 1);
    assert_eq!(all[1]["address"], h2.address());
    assert_eq!(all[1]["offers"].as_array().unwrap().len(), 2);

    let cheap = hosts_json(&["--max-price", "5500"]).await;
    assert_eq!(cheap.as_array().unwrap().len(), 2);
    assert_eq!(cheap[1]["offers"].as_array().unwrap().len(), 1);

    let big = hosts_json(&["--min-memory", "4096"]).await;
    assert_eq!(big.as_array().unwrap().len(), 1);
    assert_eq!(big[0]["address"], h2.address());
    assert_eq!(big[0]["offers"][0]["memory_mb"], 8192);

    let two = hosts_json(&["--min-free", "2"]).await;
    assert_eq!(two.as_array().unwrap().len(), 1);
    let recent = hosts_json(&["--seen-within", "600"]).await;
    assert_eq!(recent.as_array().unwrap().len(), 2);

    let table = ok(berth_async(&home, &["hosts", "--ledger", &url, "--registry", &reg]).await);
    assert!(
        table.contains("HOST")
            && table.contains("h1.example.com")
            && table.contains("h2.example.com"),
        "{table}"
    );
    assert!(!table.contains("gone.example.com"), "{table}");

    let err = fails(
        berth_async(
            &home,
            &[
                "hosts",
                "--ledger",
                &url,
                "--registry",
                &reg,
                "--max-price",
                "10",
            ],
        )
        .await,
    );
    assert!(
        err.contains("no host found") && err.contains("relax --max-price"),
        "{err}"
    );

    client.shutdown().await;
    net.shutdown().await;
}

/// A host that stopped heartbeating (silent for three of its moments) still has live offers
/// on the ledger, but `hosts` leaves it out and `acquire` refuses to pay it, each saying
/// how to insist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_is_left_out_and_not_paid() {
    // Closes every second, so that ledger close times follow the wall clock (a close time
    // is at least one second after its parent's).
    let net = Localnet::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: Duration::from_millis(1000),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::connect(ClientConfig::new([net.url()]))
        .await
        .unwrap();
    let url = net.url();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let (registry, host) = (
        KeyPair::generate(KeyType::Ed25519),
        KeyPair::generate(KeyType::Ed25519),
    );
    for k in [&registry, &host] {
        fund(&client, &k.address()).await;
    }
    let reg = registry.address();
    // Moments of one second: silent after three.
    let mut info = host_info("h.example.com", 1000);
    info.moment_secs = NonZeroU32::new(1).unwrap();
    let message_key = berth_schemas::key::PublicKey::from_verifying_key(
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key(),
    )
    .unwrap();
    submit(
        &client,
        &host,
        json!({"TransactionType": "AccountSet", "Account": host.address(),
               "MessageKey": message_key.to_ledger_hex()}),
    )
    .await;
    let mut uri = lease(0, 1024, 1000);
    uri.moment_secs = NonZeroU32::new(1).unwrap();
    mint(&client, &host, uri, true).await;
    submit(
        &client,
        &host,
        json!({"TransactionType": "Payment", "Account": host.address(), "Destination": reg,
               "Amount": "1", "Memos": memo_json(&Message::HostReg(info))}),
    )
    .await;
    ok(berth_async(&home, &["keys", "new"]).await);
    tokio::time::sleep(Duration::from_millis(4500)).await;

    let flags = ["--ledger", url.as_str(), "--registry", reg.as_str()];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(&flags);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let home = home.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            berth_async(&home, &args).await
        }
    };
    let err = fails(run(with(&["hosts"])).await);
    assert!(
        err.contains("no host found") && err.contains("--include-silent"),
        "{err}"
    );
    let listed = json(run(with(&["hosts", "--include-silent", "--json"])).await);
    assert_eq!(listed[0]["address"], host.address(), "{listed}");
    let err = fails(run(with(&["acquire", &host.address()])).await);
    assert!(
        err.contains(&host.address())
            && err.contains("has sent nothing")
            && err.contains("--allow-silent")
            && err.contains("berth hosts"),
        "{err}"
    );
    client.shutdown().await;
    net.shutdown().await;
}
