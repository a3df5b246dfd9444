#![allow(clippy::unwrap_used)]
//! Issue 19's check: the real `berth-agent` binary, its ledger (localnet, in this test's
//! process) apart from it, is killed with SIGKILL at random moments, 20 times, while several
//! tenants send it a stream of 50 mixed requests (acquires, malformed purchases, extensions,
//! terminations, extensions of unknown leases, plain payments), and restarted each time. After
//! a last clean run: every request has exactly one answer of its kind, every refund matches
//! its refusal, no lease is served twice, every live lease has exactly one instance and no
//! instance is without a live lease. Real Docker (the probe image).
//!
//! The run prints its seed; `BERTH_CHAOS_SEED=<seed>` draws the same requests and kill delays
//! again (the interleaving with the ledger's closes is real time).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_agent::store::{LeaseState, OutboxState};
use berth_agent::test_support::*;
use berth_mb_xrpl::Client;
use berth_provisioner::Provisioner;
use berth_schemas::field::NfTokenId;
use berth_schemas::key::PublicKey;
use berth_schemas::memo::Message;
use berth_schemas::message::{Extend, ReasonCode, Terminate};
use berth_xrpl_core::KeyPair;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const REQUESTS: usize = 50;
const KILLS: usize = 20;
const TENANTS: usize = 4;
/// What a purchase refused for the buyer's mistake keeps (answer, burn, mint, offer).
const REFUSAL_FEES: u64 = 4 * 12;

/// What a request was, and so which answers it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Acquire,
    /// A purchase whose acquire memo is garbage.
    Malformed,
    /// An extension of a lease token the tenant holds.
    Extend,
    /// A termination of a lease token the tenant holds.
    Terminate,
    /// An extension of a token that is no lease.
    ExtendUnknown,
    /// A payment without a memo.
    Plain,
}

#[derive(Debug)]
struct Request {
    hash: String,
    kind: Kind,
    paid: u64,
}

struct Tenant {
    account: KeyPair,
    key: SigningKey,
}

/// A live sell offer of the host's: (token, offer).
async fn some_offer(client: &Client, host: &str, rng: &mut StdRng) -> Option<(String, String)> {
    let nfts = client
        .request(
            "account_nfts",
            json!({"account": host, "ledger_index": "validated"}),
        )
        .await
        .ok()?;
    let mut found = Vec::new();
    for nft in nfts["account_nfts"].as_array().into_iter().flatten() {
        let token = nft["NFTokenID"].as_str()?.to_owned();
        let Ok(offers) = client
            .request(
                "nft_sell_offers",
                json!({"nft_id": token, "ledger_index": "validated"}),
            )
            .await
        else {
            continue;
        };
        if let Some(offer) = offers["offers"][0]["nft_offer_index"].as_str() {
            found.push((token, offer.to_owned()));
        }
    }
    (!found.is_empty()).then(|| found.swap_remove(rng.gen_range(0..found.len())))
}

/// The lease tokens `account` holds (validated).
async fn held_tokens(client: &Client, account: &str) -> Vec<String> {
    let nfts = client
        .request(
            "account_nfts",
            json!({"account": account, "ledger_index": "validated"}),
        )
        .await
        .unwrap();
    nfts["account_nfts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|nft| nft["NFTokenID"].as_str().map(str::to_owned))
        .collect()
}

fn payment(host: &str, drops: u64, memos: Option<Value>) -> Value {
    let mut tx =
        json!({"TransactionType": "Payment", "Destination": host, "Amount": drops.to_string()});
    if let Some(memos) = memos {
        tx["Memos"] = memos;
    }
    tx
}

/// Sends `REQUESTS` requests drawn from `rng`, one after the other (each validated before
/// the next), counting them in `sent`. Returns the requests that validated with tesSUCCESS
/// (a purchase that lost its offer to another is no request).
async fn stream(
    client: Client,
    host: String,
    host_key: PublicKey,
    tenants: Arc<Vec<Tenant>>,
    mut rng: StdRng,
    sent: Arc<AtomicUsize>,
) -> Vec<Request> {
    let mut requests = Vec::new();
    let unknown: NfTokenId = "AB".repeat(32).parse().unwrap();
    for _ in 0..REQUESTS {
        let tenant = rng.gen_range(0..TENANTS);
        let who = &tenants[tenant];
        // Drawn among the requests this tenant can make now, by weight.
        let offer = some_offer(&client, &host, &mut rng).await;
        let held = held_tokens(&client, &who.account.address()).await;
        let choices: Vec<(Kind, u32)> = [
            (Kind::Acquire, 30),
            (Kind::Malformed, 15),
            (Kind::Extend, 15),
            (Kind::Terminate, 15),
            (Kind::ExtendUnknown, 10),
            (Kind::Plain, 10),
        ]
        .into_iter()
        .filter(|(kind, _)| match kind {
            Kind::Acquire | Kind::Malformed => offer.is_some(),
            Kind::Extend | Kind::Terminate => !held.is_empty(),
            Kind::ExtendUnknown | Kind::Plain => true,
        })
        .collect();
        let mut roll = rng.gen_range(0..choices.iter().map(|(_, w)| w).sum::<u32>());
        let kind = choices
            .iter()
            .find(|(_, weight)| {
                let here = roll < *weight;
                roll = roll.saturating_sub(*weight);
                here
            })
            .map(|(kind, _)| *kind)
            .unwrap();
        let mut tx = None;
        let mut paid = 0;
        if let (Kind::Acquire | Kind::Malformed, Some((_, offer))) = (kind, &offer) {
            let mut memos = acquire_memo_to(&host_key, &who.key);
            if kind == Kind::Malformed {
                memos[0]["Memo"]["MemoData"] = json!("00FF00FF");
            }
            paid = PRICE;
            tx = Some(json!({"TransactionType": "NFTokenAcceptOffer",
                             "NFTokenSellOffer": offer, "Memos": memos}));
        }
        if matches!(kind, Kind::Extend | Kind::Terminate) {
            let lease: NfTokenId = held[rng.gen_range(0..held.len())].parse().unwrap();
            let (drops, message) = if kind == Kind::Extend {
                (
                    PRICE * rng.gen_range(2..5) / 2,
                    Message::Extend(Extend { lease }),
                )
            } else {
                (1, Message::Terminate(Terminate { lease }))
            };
            paid = drops;
            tx = Some(payment(&host, drops, Some(memo_json(&message))));
        }
        if kind == Kind::ExtendUnknown {
            paid = PRICE;
            tx = Some(payment(
                &host,
                paid,
                Some(memo_json(&Message::Extend(Extend { lease: unknown }))),
            ));
        }
        if kind == Kind::Plain {
            paid = rng.gen_range(1_000..100_000);
            tx = Some(payment(&host, paid, None));
        }
        let (hash, result) = submit_tx(&client, &who.account, tx.unwrap()).await;
        sent.fetch_add(1, Ordering::SeqCst);
        println!(
            "request {:2}: {kind:?} by tenant {tenant}, {paid} drops: {hash} {result}",
            requests.len()
        );
        if result == "tesSUCCESS" {
            requests.push(Request { hash, kind, paid });
        }
    }
    requests
}

/// Kills the running binary `KILLS` times, each after a delay drawn from `rng`, spread over
/// the stream (the i-th kill waits for request 2·i to be sent), restarting it at once.
async fn killer(w: &mut World, mut rng: StdRng, sent: Arc<AtomicUsize>) {
    for kill in 0..KILLS {
        while sent.load(Ordering::SeqCst) < kill * REQUESTS / KILLS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delay = rng.gen_range(50..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let pid = w.binary_pid().unwrap();
        println!(
            "kill {kill:2} after {delay} ms (request {})",
            sent.load(Ordering::SeqCst)
        );
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        w.wait_killed().await;
        w.spawn_binary(None);
    }
}

/// Every request's answers, waiting (up to a bound) until each has at least one.
async fn all_answers(
    w: &World,
    tenants: &[Tenant],
    requests: &[Request],
) -> BTreeMap<String, Vec<(u64, Message)>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut answers = BTreeMap::new();
        for tenant in tenants {
            answers.extend(host_answers(&w.client, &w.host, &tenant.account.address()).await);
        }
        let missing: Vec<_> = requests
            .iter()
            .filter(|r| !answers.contains_key(&r.hash))
            .collect();
        if missing.is_empty() {
            return answers;
        }
        assert!(
            Instant::now() < deadline,
            "unanswered after 120 s: {missing:?}; errors: {:?}; the agent's log ends:\n{}",
            w.store().map(|s| s.read().recent_errors(10).unwrap()),
            w.binary_log(150)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the agent has nothing left to do: no lease being provisioned or ended, no
/// outbox row waiting to be signed or validated.
async fn settled(w: &World) {
    for _ in 0..600 {
        if let Some(store) = w.store() {
            let reader = store.read();
            let busy = reader
                .leases(&[LeaseState::Provisioning, LeaseState::Ending])
                .unwrap()
                .len()
                + reader
                    .outbox(&[
                        OutboxState::Pending,
                        OutboxState::Prepared,
                        OutboxState::Held,
                    ])
                    .unwrap()
                    .len();
            if busy == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent never settled");
}

/// Checks the one answer of `request` against its kind: an answer of its family, refusals
/// giving back what they should. Returns whether it is an acquire-ok.
fn check_answer(request: &Request, amount: u64, message: &Message) -> bool {
    let what = format!("{request:?}: {amount} drops, {message:?}");
    match (request.kind, message) {
        (Kind::Acquire, Message::AcquireOk(_)) => {
            assert_eq!(amount, 1, "{what}");
            return true;
        }
        (Kind::Acquire, Message::AcquireErr(f)) => {
            // Not the buyer's mistake: the whole price back.
            println!("refused acquire: {what}");
            assert_eq!(amount, request.paid, "{what}");
            assert_ne!(f.code, ReasonCode::BadPayload, "{what}");
        }
        (Kind::Malformed, Message::AcquireErr(f)) => {
            assert_eq!(f.code, ReasonCode::BadPayload, "{what}");
            assert_eq!(amount, request.paid - REFUSAL_FEES, "{what}");
        }
        (Kind::Extend, Message::ExtendOk(ok)) => {
            let moments = request.paid / PRICE;
            assert_eq!(u64::from(ok.moments.get()), moments, "{what}");
            assert_eq!(amount, (request.paid - moments * PRICE).max(1), "{what}");
        }
        (Kind::Extend | Kind::ExtendUnknown, Message::ExtendErr(f)) => {
            assert_eq!(f.code, ReasonCode::UnknownLease, "{what}");
            assert_eq!(amount, request.paid, "{what}");
        }
        (Kind::Terminate, Message::TerminateOk(_)) => assert_eq!(amount, 1, "{what}"),
        (Kind::Terminate, Message::TerminateErr(f)) => {
            assert_eq!(f.code, ReasonCode::UnknownLease, "{what}");
            assert_eq!(amount, request.paid, "{what}");
        }
        (Kind::Plain, Message::Refund(f)) => {
            assert_eq!(f.code, ReasonCode::BadPayload, "{what}");
            assert_eq!(amount, request.paid, "{what}");
        }
        _ => panic!("wrong answer to {what}"),
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_through_twenty_sigkills_get_one_answer_each_and_leave_no_orphan() {
    let seed = std::env::var("BERTH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("chaos seed {seed} (BERTH_CHAOS_SEED={seed} draws this run again)");
    let started = Instant::now();
    let options = Options {
        binary: Some(env!("CARGO_BIN_EXE_berth-agent").into()),
        ..Options::default()
    };
    let Some(mut w) = World::start_with("chaos", 3, 28100, options).await else {
        return;
    };
    let mut tenants = Vec::new();
    for n in 0..TENANTS {
        tenants.push(Tenant {
            account: fund(&w.client, 100 * XRP).await,
            key: SigningKey::from_bytes(&[n as u8 + 101; 32]),
        });
    }
    let tenants = Arc::new(tenants);
    w.spawn_binary(None);
    w.offered(0, 0).await;

    let sent = Arc::new(AtomicUsize::new(0));
    let requests = stream(
        w.client.clone(),
        w.host.clone(),
        w.host_message_key,
        tenants.clone(),
        StdRng::seed_from_u64(seed),
        sent.clone(),
    );
    let (requests, ()) = tokio::join!(
        requests,
        killer(&mut w, StdRng::seed_from_u64(seed ^ 0x5eed), sent)
    );
    println!(
        "{} requests validated, {KILLS} kills, after {:?}",
        requests.len(),
        started.elapsed()
    );

    // The last run is a clean one: it answers what is left and settles.
    let answers = all_answers(&w, &tenants, &requests).await;
    settled(&w).await;
    // One more look, some closes later: nothing was answered twice meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut later = BTreeMap::new();
    for tenant in tenants.iter() {
        later.extend(host_answers(&w.client, &w.host, &tenant.account.address()).await);
    }
    w.terminate_binary();

    let leases = w.store().unwrap().read().leases(&[]).unwrap();
    let mut acquired = 0;
    for request in &requests {
        let got = &later[&request.hash];
        assert_eq!(got.len(), 1, "{request:?}: {got:?}");
        assert_eq!(got.len(), answers[&request.hash].len());
        let (amount, message) = &got[0];
        if check_answer(request, *amount, message) {
            acquired += 1;
            let served: Vec<_> = leases
                .iter()
                .filter(|l| l.purchase_tx.to_string() == request.hash)
                .collect();
            assert_eq!(served.len(), 1, "{request:?}: {served:?}");
        }
    }
    // No lease served twice: one lease per purchase, one live lease per token and per slot.
    let purchases: BTreeSet<_> = leases.iter().map(|l| l.purchase_tx).collect();
    assert_eq!(purchases.len(), leases.len(), "a purchase served twice");
    let live: Vec<_> = leases
        .iter()
        .filter(|l| matches!(l.state, LeaseState::Active | LeaseState::Grace))
        .collect();
    let tokens: BTreeSet<_> = live.iter().map(|l| l.token_id).collect();
    let slots: BTreeSet<_> = live.iter().map(|l| l.slot).collect();
    assert_eq!(tokens.len(), live.len(), "a token leased twice: {live:?}");
    assert_eq!(slots.len(), live.len(), "a slot leased twice: {live:?}");
    assert!(
        leases.iter().all(|l| matches!(
            l.state,
            LeaseState::Active | LeaseState::Grace | LeaseState::Ended
        )),
        "{leases:?}"
    );
    // Every live lease has exactly one instance; no instance without a live lease.
    let instances = w.provisioner.list().await.unwrap();
    for lease in &live {
        let of_lease = instances
            .iter()
            .filter(|i| i.name == lease.instance)
            .count();
        assert_eq!(
            of_lease, 1,
            "lease {} has {of_lease} instances",
            lease.token_id
        );
    }
    let names: BTreeSet<_> = live.iter().map(|l| l.instance.as_str()).collect();
    let orphans: Vec<_> = instances
        .iter()
        .filter(|i| !names.contains(i.name.as_str()))
        .collect();
    assert!(orphans.is_empty(), "orphan instances: {orphans:?}");
    let by_kind = |kind: Kind| requests.iter().filter(|r| r.kind == kind).count();
    println!(
        "{} answered: {acquired} acquired of {} acquires, {} malformed, {} extends, {} terminations, {} unknown extends, {} plain; {} live leases; {:?} in all",
        requests.len(),
        by_kind(Kind::Acquire),
        by_kind(Kind::Malformed),
        by_kind(Kind::Extend),
        by_kind(Kind::Terminate),
        by_kind(Kind::ExtendUnknown),
        by_kind(Kind::Plain),
        live.len(),
        started.elapsed()
    );
    w.stop().await;
}
