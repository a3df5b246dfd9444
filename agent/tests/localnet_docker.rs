#![allow(clippy::unwrap_used)]
//! End to end, in process: `run` against an in-process localnet (real signatures, NFTokens,
//! offers, memos through berth-mb-xrpl) and the real Docker engine (the provisioner's probe
//! image standing in for hotpocket). The tenant's side is driven with berth-mb-xrpl directly.
//! Needs Docker: with BERTH_REQUIRE_DOCKER=1 an unreachable engine fails the tests.

use std::sync::Arc;
use std::time::Duration;

use berth_agent::machine::MachineSettings;
use berth_agent::run::{provisioner_config, run, RunSettings};
use berth_agent::setup::HostKeys;
use berth_agent::store::{SlotState, Store};
use berth_localnet::{Config, Localnet};
use berth_mb_xrpl::events::{decode, MarketEvent};
use berth_mb_xrpl::history::account_history;
use berth_mb_xrpl::{Client, ClientConfig, SubmitConfig, Submitter};
use berth_provisioner::{probe, DockerProvisioner, ProvisionError, Provisioner};
use berth_schemas::config::HostConfig;
use berth_schemas::field::NfTokenId;
use berth_schemas::key::PublicKey;
use berth_schemas::memo::Message;
use berth_schemas::message::{Acquire, AcquireRequest, Extend, ReasonCode, Sealed, Terminate};
use berth_xrpl_core::{KeyPair, KeyType};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const XRP: u64 = 1_000_000;
const PRICE: u64 = XRP;
const CONTRACT: &str = "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10";

struct World {
    net: Localnet,
    client: Client,
    dir: tempfile::TempDir,
    config: HostConfig,
    host: String,
    host_message_key: PublicKey,
    provisioner: Arc<DockerProvisioner>,
    shutdown: CancellationToken,
    agent: tokio::task::JoinHandle<()>,
}

async fn fund(client: &Client, drops: u64) -> KeyPair {
    let key = KeyPair::generate(KeyType::Ed25519);
    client
        .request(
            "wallet_fund",
            json!({"destination": key.address(), "amount": drops.to_string()}),
        )
        .await
        .unwrap();
    for _ in 0..100 {
        let info = client
            .request(
                "account_info",
                json!({"account": key.address(), "ledger_index": "validated"}),
            )
            .await;
        if info.is_ok() {
            return key;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("account {} never funded", key.address());
}

/// The provisioner on a namespace of this test, or None to skip without Docker.
async fn provisioner(config: &HostConfig, tag: &str) -> Option<Arc<DockerProvisioner>> {
    let mut pc = provisioner_config(config);
    pc.namespace = format!("bat-{}-{tag}", std::process::id());
    pc.host_ip = [127, 0, 0, 1].into();
    match DockerProvisioner::connect(pc).await {
        Ok(p) => {
            let dir =
                std::env::temp_dir().join(format!("berth-agent-probe-{}", std::process::id()));
            p.ensure_image(&probe::image(dir)).await.unwrap();
            p.reconcile(&[]).await.unwrap();
            Some(Arc::new(p))
        }
        Err(e) => {
            if std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("BERTH_REQUIRE_DOCKER=1 but the docker engine is unreachable: {e}");
            }
            eprintln!("SKIPPED: docker engine unreachable ({e})");
            None
        }
    }
}

impl World {
    async fn start(tag: &str, slots: u32, base_port: u16) -> Option<World> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let net = Localnet::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            close_interval: Duration::from_millis(300),
            data_dir: None,
            ..Config::default()
        })
        .await
        .unwrap();
        let client = Client::connect(ClientConfig::new([net.url()]))
            .await
            .unwrap();
        let host_key = fund(&client, 1000 * XRP).await;
        let registry = fund(&client, 100 * XRP).await;
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig::from_toml(&format!(
            r#"
[ledger]
servers = ["{url}"]
registry = "{registry}"
[host]
domain = "127.0.0.1"
country = "DE"
data_dir = "{data}"
[lease]
slots = {slots}
price_drops = "{PRICE}"
moment_secs = 3600
grace_secs = 5
[resources]
cpu_millicores = {cpu}
memory_mb = {memory}
disk_mb = {memory}
[ports]
user = "{u0}-{u1}"
peer = "{p0}-{p1}"
[housekeeping]
schedule = "*/2 * * * * *"
"#,
            url = net.url(),
            registry = registry.address(),
            data = dir.path().display(),
            cpu = 500 * slots,
            memory = 64 * slots,
            u0 = base_port,
            u1 = base_port + 19,
            p0 = base_port + 50,
            p1 = base_port + 69,
        ))
        .unwrap();
        let provisioner = provisioner(&config, tag).await?;
        let seed = host_key.seed().unwrap();
        let keys = HostKeys::from_seed(&seed).unwrap();
        let host = keys.address();
        let host_message_key = keys.message_public().unwrap();
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn({
            let (config, provisioner, shutdown) =
                (config.clone(), provisioner.clone(), shutdown.clone());
            async move {
                let settings = RunSettings {
                    machine: MachineSettings {
                        stall_secs: 60,
                        customize: probe::instance,
                    },
                    notify: false,
                    outbox_idle: Duration::from_millis(50),
                };
                run(config, keys, provisioner, settings, shutdown)
                    .await
                    .unwrap();
            }
        });
        Some(World {
            net,
            client,
            dir,
            config,
            host,
            host_message_key,
            provisioner,
            shutdown,
            agent,
        })
    }

    fn store(&self) -> Option<Store> {
        Store::open_read_only(&berth_agent::database_path(&self.config)).ok()
    }

    /// Waits until `slot` has a live sell offer; returns (token, offer).
    async fn offered(&self, slot: u32, generation: u32) -> (String, String) {
        for _ in 0..300 {
            if let Some(s) = self
                .store()
                .and_then(|store| store.read().slot(slot).ok().flatten())
            {
                if let (SlotState::Offered, Some(token), Some(offer)) =
                    (s.state, s.token_id, s.offer_id)
                {
                    if s.generation >= generation {
                        return (token, offer);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let errors = self
            .store()
            .map(|s| s.read().recent_errors(10).unwrap())
            .unwrap_or_default();
        panic!("slot {slot} generation {generation} was never offered; errors: {errors:?}");
    }

    async fn submit(&self, key: &KeyPair, tx: Value) -> String {
        let submitter = Submitter::new(
            self.client.clone(),
            KeyPair::from_seed(&key.seed().unwrap()).unwrap(),
            SubmitConfig::default(),
        )
        .unwrap();
        let signed = submitter.prepare(tx).await.unwrap();
        let validated = submitter.submit_and_wait(&signed).await.unwrap();
        assert_eq!(
            validated.result,
            "tesSUCCESS",
            "{tx_hash}",
            tx_hash = signed.hash
        );
        signed.hash
    }

    /// The answers the host sent to `tenant` for `request`, waiting for at least one.
    async fn answers(&self, tenant: &str, request: &str) -> Vec<(u64, Message)> {
        for _ in 0..300 {
            let history = account_history(&self.client, tenant, 1).await.unwrap();
            let found: Vec<_> = history
                .transactions
                .iter()
                .filter_map(|tx| match decode(tx, tenant) {
                    Some(MarketEvent::Answer {
                        from,
                        request: r,
                        message,
                        amount_drops,
                        ..
                    }) if from == self.host && r.to_string() == request => {
                        Some((amount_drops, message))
                    }
                    _ => None,
                })
                .collect();
            if !found.is_empty() {
                // One more ledger: a second answer would show up by now.
                tokio::time::sleep(Duration::from_millis(700)).await;
                let again = account_history(&self.client, tenant, 1).await.unwrap();
                let count = again
                    .transactions
                    .iter()
                    .filter(|tx| matches!(decode(tx, tenant), Some(MarketEvent::Answer { request: r, .. }) if r.to_string() == request))
                    .count();
                assert_eq!(count, found.len(), "answers kept coming for {request}");
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no answer to {request}");
    }

    fn acquire_memo(&self, tenant: &SigningKey) -> Value {
        let public = PublicKey::from_verifying_key(&tenant.verifying_key()).unwrap();
        let request = AcquireRequest {
            owner_key: public,
            contract_id: CONTRACT.parse().unwrap(),
            reply_key: Some(public),
            config: None,
        };
        let sealed = Sealed::seal(&self.host_message_key, &request).unwrap();
        memo_json(&Message::Acquire(Acquire { sealed }))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.agent)
            .await
            .unwrap()
            .unwrap();
        self.provisioner.reconcile(&[]).await.unwrap();
        self.client.shutdown().await;
        self.net.shutdown().await;
        drop(self.dir);
    }
}

fn memo_json(message: &Message) -> Value {
    let hex = message.to_memo().unwrap().to_hex();
    json!([{"Memo": {"MemoType": hex.memo_type, "MemoFormat": hex.memo_format, "MemoData": hex.memo_data}}])
}

async fn greeting(port: u16) -> String {
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut text = String::new();
            if stream.read_to_string(&mut text).await.is_ok() && !text.is_empty() {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("port {port} never greeted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_extend_terminate_on_localnet_with_docker() {
    let Some(w) = World::start("flow", 1, 27100).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    let tenant = fund(&w.client, 100 * XRP).await;
    let tenant_key = SigningKey::from_bytes(&[42; 32]);
    let purchase = w
        .submit(
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer,
                   "Memos": w.acquire_memo(&tenant_key)}),
        )
        .await;

    // acquire-ok: 1 drop, details only the tenant's key opens.
    let answers = w.answers(&tenant.address(), &purchase).await;
    assert_eq!(answers.len(), 1);
    let (amount, Message::AcquireOk(ok)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(*amount, 1);
    assert!(ok.sealed.open(&SigningKey::from_bytes(&[43; 32])).is_err());
    let details = ok.sealed.open(&tenant_key).unwrap();
    assert_eq!(details.lease.to_string(), token);
    assert_eq!(details.contract_id.to_string(), CONTRACT);
    assert_eq!(details.host.to_string(), "127.0.0.1");
    let status = w.provisioner.inspect(details.name.as_str()).await.unwrap();
    assert_eq!(status.summary.lease_id, token);
    assert_eq!(
        greeting(details.user_port.get()).await.trim(),
        format!("berth-probe {CONTRACT}")
    );

    // Extension: 2.5 moments paid, 2 added, half a price back.
    let lease: NfTokenId = token.parse().unwrap();
    let extend = w
        .submit(
            &tenant,
            json!({"TransactionType": "Payment", "Destination": w.host, "Amount": (PRICE * 5 / 2).to_string(),
                   "Memos": memo_json(&Message::Extend(Extend { lease }))}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &extend).await;
    let (amount, Message::ExtendOk(ext)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!((*amount, ext.moments.get()), (PRICE / 2, 2));
    assert_eq!(ext.expires_at, details.expires_at + 2 * 3600);

    // Termination: instance gone, token burnt, a fresh one offered.
    let terminate = w
        .submit(
            &tenant,
            json!({"TransactionType": "Payment", "Destination": w.host, "Amount": "1",
                   "Memos": memo_json(&Message::Terminate(Terminate { lease }))}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &terminate).await;
    assert!(
        matches!(answers[0].1, Message::TerminateOk(_)),
        "{answers:?}"
    );
    assert!(matches!(
        w.provisioner.inspect(details.name.as_str()).await,
        Err(ProvisionError::NotFound { .. })
    ));
    let (new_token, _) = w.offered(0, 1).await;
    assert_ne!(new_token, token);
    let nfts = w
        .client
        .request("account_nfts", json!({"account": tenant.address()}))
        .await
        .unwrap();
    assert_eq!(
        nfts["account_nfts"].as_array().map(Vec::len),
        Some(0),
        "{nfts}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refunded_with_reasons_on_localnet() {
    let Some(w) = World::start("refund", 2, 27200).await else {
        return;
    };
    let (_, offer) = w.offered(0, 0).await;
    let tenant = fund(&w.client, 100 * XRP).await;
    let before = balance(&w.client, &tenant.address()).await;
    // A purchase without a memo: refunded, bad_payload, the token re-minted.
    let purchase = w
        .submit(
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &purchase).await;
    let (amount, Message::AcquireErr(f)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!((*amount, f.code), (PRICE, ReasonCode::BadPayload));
    // A purchase sealed to another key: refunded, bad_payload.
    let (_, offer1) = w.offered(1, 0).await;
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let sealed = Sealed::seal(
        &PublicKey::from_verifying_key(&stranger.verifying_key()).unwrap(),
        &AcquireRequest {
            owner_key: PublicKey::from_verifying_key(&stranger.verifying_key()).unwrap(),
            contract_id: CONTRACT.parse().unwrap(),
            reply_key: None,
            config: None,
        },
    )
    .unwrap();
    let purchase = w
        .submit(
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer1,
                   "Memos": memo_json(&Message::Acquire(Acquire { sealed }))}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &purchase).await;
    let (_, Message::AcquireErr(f)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(f.code, ReasonCode::BadPayload);
    // A plain payment and an extension of an unknown lease: refunded.
    let plain = w
        .submit(
            &tenant,
            json!({"TransactionType": "Payment", "Destination": w.host, "Amount": "12345"}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &plain).await;
    let (amount, Message::Refund(f)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!((*amount, f.code), (12345, ReasonCode::BadPayload));
    let unknown: NfTokenId = "AB".repeat(32).parse().unwrap();
    let extend = w
        .submit(
            &tenant,
            json!({"TransactionType": "Payment", "Destination": w.host, "Amount": PRICE.to_string(),
                   "Memos": memo_json(&Message::Extend(Extend { lease: unknown }))}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &extend).await;
    let (amount, Message::ExtendErr(f)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!((*amount, f.code), (PRICE, ReasonCode::UnknownLease));
    // Both slots are offered again with fresh tokens, and the tenant lost only fees.
    w.offered(0, 1).await;
    w.offered(1, 1).await;
    let after = balance(&w.client, &tenant.address()).await;
    assert!(
        before - after < 1000,
        "tenant lost {} drops",
        before - after
    );
    w.stop().await;
}

async fn balance(client: &Client, account: &str) -> u64 {
    let info = client
        .request(
            "account_info",
            json!({"account": account, "ledger_index": "validated"}),
        )
        .await
        .unwrap();
    info["account_data"]["Balance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
