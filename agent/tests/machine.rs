#![allow(clippy::unwrap_used)]
//! The lease state machine over a real SQLite store, the recording provisioner (no Docker) and
//! `FakeLedger` (validates everything at once). Each test names what it drives.

mod common;

use berth_agent::ledger::{LedgerAction, LedgerEvent};
use berth_agent::machine::Job;
use berth_agent::store::{LeaseState, OutboxState, SlotState};
use berth_provisioner::{Call, Operation};
use berth_schemas::memo::Message;
use berth_schemas::message::{Extend, ReasonCode, Terminate};
use common::*;

const BUYER: &str = "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe";
const OTHER: &str = "r3kmLJN5D28dHuH8vZNUZpMC43pEHpaocV";
/// What a purchase refused for the buyer's mistake keeps: the answer, burn, mint and offer
/// at the default `lease.refusal_fee_drops`.
const REFUSAL_FEES: u64 = 4 * 12;

fn creates(h: &Harness) -> usize {
    h.provisioner
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count()
}

fn in_state(h: &Harness, state: LeaseState) -> usize {
    h.machine.store().read().leases(&[state]).unwrap().len()
}

/// (recipient, memo type) of each payment prepared.
fn kinds(payments: &[(String, u64, Message)]) -> Vec<(&str, &str)> {
    payments
        .iter()
        .map(|(to, _, m)| (to.as_str(), m.kind().as_str()))
        .collect()
}

fn destroyed(h: &Harness, purchase: u8) -> bool {
    h.provisioner
        .calls()
        .contains(&Call::Destroy(instance_of(purchase)))
}

fn failure_code(message: &Message) -> ReasonCode {
    match message {
        Message::AcquireErr(f)
        | Message::ExtendErr(f)
        | Message::TerminateErr(f)
        | Message::Refund(f) => f.code,
        other => panic!("not a failure: {other:?}"),
    }
}

async fn leased(h: &Harness, tenant: &ed25519_dalek::SigningKey) -> String {
    h.offer_all().await;
    let token = h.token(0);
    h.handle(purchase(
        1,
        BUYER,
        &token,
        PRICE,
        vec![h.acquire_memo(tenant)],
        1000,
    ))
    .await;
    h.machine.flush_outbox().await.unwrap();
    token
}

#[tokio::test]
async fn slots_are_minted_then_offered_at_the_price() {
    let h = Harness::new(3);
    h.offer_all().await;
    let slots = h.machine.store().read().slots().unwrap();
    assert_eq!(slots.len(), 3);
    assert!(slots
        .iter()
        .all(|s| s.state == SlotState::Offered && s.offer_id.is_some()));
    assert_eq!(h.ledger.count("mint"), 3);
    assert_eq!(h.ledger.count("offer"), 3);
    assert!(h.ledger.prepared.lock().unwrap().iter().all(|a| match a {
        LedgerAction::Offer { amount_drops, .. } => *amount_drops == PRICE,
        _ => true,
    }));
    // Slots already there are not minted again.
    assert!(h.machine.ensure_slots().unwrap().is_empty());
}

#[tokio::test]
async fn a_purchase_gets_an_instance_and_details_only_the_tenant_opens() {
    let h = Harness::new(1);
    let tenant = key(1);
    let token = leased(&h, &tenant).await;
    assert_eq!(creates(&h), 1);
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 1);
    let (to, amount, message) = &payments[0];
    assert_eq!((to.as_str(), *amount), (BUYER, 1));
    let Message::AcquireOk(ok) = message else {
        panic!("{message:?}")
    };
    assert_eq!(ok.request.to_string(), hash(1));
    let details = ok.sealed.open(&tenant).unwrap();
    assert_eq!(details.name.as_str(), instance_of(1));
    assert_eq!(details.host.to_string(), "host1.example.com");
    assert_eq!(details.lease.to_string(), token);
    assert_eq!(details.expires_at, 1000 + MOMENT);
    assert_eq!(
        details.contract_id.to_string(),
        "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10"
    );
    assert!(ok.sealed.open(&h.host_key).is_err());
    assert!(ok.sealed.open(&key(2)).is_err());
    let lease = &h
        .machine
        .store()
        .read()
        .leases(&[LeaseState::Active])
        .unwrap()[0];
    assert_eq!(lease.tenant.to_string(), BUYER);
    assert_eq!(u16::from(details.user_port), lease.user_port);
    assert_eq!(
        h.machine.store().read().slot(0).unwrap().unwrap().state,
        SlotState::Leased
    );
}

#[tokio::test]
async fn a_replayed_purchase_is_answered_once_even_after_a_restart() {
    let h = Harness::new(1);
    let tenant = key(1);
    let token = leased(&h, &tenant).await;
    let event = purchase(1, BUYER, &token, PRICE, vec![h.acquire_memo(&tenant)], 1000);
    h.handle(event.clone()).await;
    let h = h.restart();
    assert!(h.machine.resume().unwrap().is_empty());
    h.handle(event).await;
    h.machine.flush_outbox().await.unwrap();
    assert_eq!(creates(&h), 1);
    assert_eq!(h.ledger.payments().len(), 1);
}

#[tokio::test]
async fn a_crash_between_record_and_provision_resumes_with_one_instance_and_one_answer() {
    let h = Harness::new(1);
    let tenant = key(1);
    h.offer_all().await;
    let token = h.token(0);
    // Handle, but "crash" before running the provisioning job.
    let jobs = h
        .machine
        .handle(&purchase(
            1,
            BUYER,
            &token,
            PRICE,
            vec![h.acquire_memo(&tenant)],
            1000,
        ))
        .await
        .unwrap();
    assert!(matches!(jobs.as_slice(), [Job::Provision(_)]));
    // The instance was even created before the crash (crash between create and start).
    let lease = h.machine.store().read().leases(&[]).unwrap()[0].clone();
    let spec = h.machine.expected_instances().unwrap().remove(0);
    assert_eq!(spec.name, lease.instance);
    berth_provisioner::Provisioner::create(h.provisioner.as_ref(), &spec)
        .await
        .unwrap();
    let h = h.restart();
    let jobs = h.machine.resume().unwrap();
    assert_eq!(jobs, vec![Job::Provision(lease.id)]);
    for job in jobs {
        h.machine.run_job(job).await.unwrap();
    }
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 1);
    assert!(matches!(payments[0].2, Message::AcquireOk(_)));
    assert_eq!(
        h.machine
            .store()
            .read()
            .leases(&[LeaseState::Active])
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_wrong_amount_is_refunded_and_the_token_reminted_and_reoffered() {
    let h = Harness::new(1);
    h.offer_all().await;
    let token = h.token(0);
    h.handle(purchase(
        1,
        BUYER,
        &token,
        PRICE / 2,
        vec![h.acquire_memo(&key(1))],
        1000,
    ))
    .await;
    for _ in 0..4 {
        h.machine.flush_outbox().await.unwrap();
    }
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].1, PRICE / 2 - REFUSAL_FEES);
    assert_eq!(failure_code(&payments[0].2), ReasonCode::BadAmount);
    assert_eq!(creates(&h), 0);
    assert!(h.ledger.prepared.lock().unwrap().iter().any(|a| matches!(a,
        LedgerAction::Burn { token_id, owner: Some(owner), .. } if token_id.to_string() == token && owner.to_string() == BUYER)));
    let slot = h.machine.store().read().slot(0).unwrap().unwrap();
    assert_eq!(slot.state, SlotState::Offered);
    assert_eq!(slot.generation, 1);
    assert_ne!(slot.token_id.unwrap().to_string(), token);
}

#[tokio::test]
async fn missing_and_undecryptable_memos_and_unknown_tokens_are_refunded_with_reasons() {
    let h = Harness::new(3);
    h.offer_all().await;
    h.handle(purchase(1, BUYER, &h.token(0), PRICE, vec![], 1000))
        .await;
    // Sealed to a key that is not the host's message key.
    let elsewhere = acquire_memo_to(&public(&key(8)), &key(1));
    h.handle(purchase(
        2,
        BUYER,
        &h.token(1),
        PRICE,
        vec![elsewhere],
        1000,
    ))
    .await;
    h.handle(purchase(
        3,
        BUYER,
        &"AB".repeat(32),
        PRICE,
        vec![h.acquire_memo(&key(1))],
        1000,
    ))
    .await;
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 3);
    let by_request = |n: u8| {
        payments
            .iter()
            .find(|(_, _, m)| m.answers().unwrap().to_string() == hash(n))
            .unwrap()
            .clone()
    };
    let (_, amount, missing) = by_request(1);
    assert_eq!(
        (failure_code(&missing), amount),
        (ReasonCode::BadPayload, PRICE - REFUSAL_FEES)
    );
    let (_, _, sealed) = by_request(2);
    assert_eq!(failure_code(&sealed), ReasonCode::BadPayload);
    let Message::AcquireErr(f) = &sealed else {
        panic!()
    };
    assert!(
        f.message.as_str().contains("cannot be opened"),
        "{}",
        f.message.as_str()
    );
    let (_, _, unknown) = by_request(3);
    assert_eq!(failure_code(&unknown), ReasonCode::UnknownLease);
    assert_eq!(creates(&h), 0);
    // Slots 0 and 1 are burnt and re-minted; the unknown token touched no slot.
    assert_eq!(h.ledger.count("burn"), 2);
}

#[tokio::test]
async fn cluster_settings_reach_the_instance_and_ones_the_host_cannot_honour_are_refunded() {
    use berth_schemas::message::ContractConfig;
    let h = Harness::new(4);
    h.offer_all().await;
    let host = public(&h.host_key);
    let tenant = key(1);
    let held = ContractConfig {
        await_cluster: true,
        roundtime_ms: Some(500.try_into().unwrap()),
        threshold: Some(51.try_into().unwrap()),
        ..ContractConfig::default()
    };
    let conflicting = ContractConfig {
        await_cluster: true,
        peers: Some(serde_json::from_str(r#"["10.0.0.2:22861"]"#).unwrap()),
        ..ContractConfig::default()
    };
    let too_fast = ContractConfig {
        roundtime_ms: Some(20.try_into().unwrap()),
        ..ContractConfig::default()
    };
    let lonely_observer = ContractConfig {
        observer: true,
        ..ContractConfig::default()
    };
    for (n, config) in [held, conflicting, too_fast, lonely_observer]
        .into_iter()
        .enumerate()
    {
        let n = u8::try_from(n).unwrap() + 1;
        let memo = acquire_memo_with(&host, &tenant, Some(config));
        let token = h.token(u32::from(n) - 1);
        h.handle(purchase(n, BUYER, &token, PRICE, vec![memo], 1000))
            .await;
    }
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    let answer = |n: u8| {
        payments
            .iter()
            .find(|(_, _, m)| m.answers().unwrap().to_string() == hash(n))
            .unwrap()
            .clone()
    };
    // The node awaiting its cluster runs with the settings as HP_* variables.
    let Message::AcquireOk(ok) = answer(1).2 else {
        panic!("{:?}", answer(1))
    };
    let details = ok.sealed.open(&tenant).unwrap();
    assert_eq!(details.host.to_string(), "host1.example.com");
    let created: Vec<_> = h
        .provisioner
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Create(spec) => Some(spec),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "refused purchases create nothing");
    let env = &created[0].contract_env;
    for (name, value) in [
        ("HP_AWAIT_CLUSTER", "true"),
        ("HP_ROUNDTIME_MS", "500"),
        ("HP_THRESHOLD", "51"),
    ] {
        assert!(
            env.contains(&(name.to_owned(), value.to_owned())),
            "{name}={value} in {env:?}"
        );
    }
    // The others are refunded in full, with a reason naming the setting.
    for (n, words) in [
        (2, "await_cluster excludes unl and peers"),
        (3, "roundtime_ms 20 is below this host's minimum of 100 ms"),
        (4, "an observer needs the unl"),
    ] {
        let (to, amount, message) = answer(n);
        assert_eq!((to.as_str(), amount), (BUYER, PRICE - REFUSAL_FEES));
        let Message::AcquireErr(f) = &message else {
            panic!("{message:?}")
        };
        assert_eq!(f.code, ReasonCode::BadPayload);
        assert!(f.message.as_str().contains(words), "{}", f.message.as_str());
    }
    // The settings are kept with the lease, so reconcile makes the same instance again.
    let lease = &h
        .machine
        .store()
        .read()
        .leases(&[LeaseState::Active])
        .unwrap()[0];
    assert!(lease.contract_config.as_ref().unwrap().await_cluster);
}

#[tokio::test]
async fn the_node_image_is_run_when_asked_and_offered_and_refunded_when_not_offered() {
    use berth_schemas::message::{ContractConfig, InstanceImage};
    let node = || ContractConfig {
        image: Some(InstanceImage::Node),
        ..ContractConfig::default()
    };
    let tenant = key(1);
    // Offered: the instance runs the host's node image.
    let h = Harness::new_with(1, |c| {
        c.runtime.node_image = Some("berth-hotpocket-node:latest".into())
    });
    h.offer_all().await;
    let memo = acquire_memo_with(&public(&h.host_key), &tenant, Some(node()));
    h.handle(purchase(1, BUYER, &h.token(0), PRICE, vec![memo], 1000))
        .await;
    let images: Vec<String> = h
        .provisioner
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Create(spec) => Some(spec.image.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(images, ["berth-hotpocket-node:latest"]);
    // Not offered: refunded in full with the reason.
    let h = Harness::new(1);
    h.offer_all().await;
    let memo = acquire_memo_with(&public(&h.host_key), &tenant, Some(node()));
    h.handle(purchase(1, BUYER, &h.token(0), PRICE, vec![memo], 1000))
        .await;
    h.machine.flush_outbox().await.unwrap();
    let (to, amount, message) = h.ledger.payments().remove(0);
    assert_eq!((to.as_str(), amount), (BUYER, PRICE - REFUSAL_FEES));
    let Message::AcquireErr(f) = &message else {
        panic!("{message:?}")
    };
    assert!(
        f.message.as_str().contains("48 drops of fees kept"),
        "{}",
        f.message.as_str()
    );
    let Message::AcquireErr(f) = &message else {
        panic!("{message:?}")
    };
    assert!(
        f.message.as_str().contains("does not offer the node image"),
        "{}",
        f.message.as_str()
    );
    assert_eq!(creates(&h), 0);
}

#[tokio::test]
async fn a_failed_provisioning_is_refunded_cleaned_up_and_the_slot_reoffered() {
    let h = Harness::new(1);
    h.offer_all().await;
    let token = h.token(0);
    h.provisioner.fail_next(Operation::Start, &instance_of(1));
    h.handle(purchase(
        1,
        BUYER,
        &token,
        PRICE,
        vec![h.acquire_memo(&key(1))],
        1000,
    ))
    .await;
    for _ in 0..4 {
        h.machine.flush_outbox().await.unwrap();
    }
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 1);
    assert_eq!(failure_code(&payments[0].2), ReasonCode::ProvisioningFailed);
    assert_eq!(payments[0].1, PRICE);
    assert!(destroyed(&h, 1));
    assert!(h.machine.ports_in_use().unwrap().is_empty());
    assert_eq!(
        h.machine.store().read().slot(0).unwrap().unwrap().state,
        SlotState::Offered
    );
    let errors = h.machine.store().read().recent_errors(5).unwrap();
    assert_eq!(errors[0].context, "provision");
}

#[tokio::test]
async fn an_extension_adds_whole_moments_and_pays_back_the_remainder() {
    let h = Harness::new(1);
    let token = leased(&h, &key(1)).await;
    let lease: berth_schemas::field::NfTokenId = token.parse().unwrap();
    h.handle(payment(
        5,
        BUYER,
        PRICE * 5 / 2,
        Some(Message::Extend(Extend { lease })),
    ))
    .await;
    h.handle(payment(
        6,
        BUYER,
        PRICE / 2,
        Some(Message::Extend(Extend { lease })),
    ))
    .await;
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 3);
    let (_, amount, Message::ExtendOk(ok)) = &payments[1] else {
        panic!("{payments:?}")
    };
    assert_eq!(*amount, PRICE / 2);
    assert_eq!(ok.moments.get(), 2);
    assert_eq!(ok.expires_at, 1000 + 3 * MOMENT);
    let (_, refund, err) = &payments[2];
    assert_eq!(
        (*refund, failure_code(err)),
        (PRICE / 2, ReasonCode::BadAmount)
    );
    assert_eq!(h.machine.store().read().leases(&[]).unwrap()[0].moments, 3);
}

#[tokio::test]
async fn termination_by_the_holder_destroys_and_recycles_and_others_are_refused() {
    let h = Harness::new(1);
    let token = leased(&h, &key(1)).await;
    let lease: berth_schemas::field::NfTokenId = token.parse().unwrap();
    h.handle(payment(
        5,
        OTHER,
        1,
        Some(Message::Terminate(Terminate { lease })),
    ))
    .await;
    h.handle(payment(
        6,
        BUYER,
        1,
        Some(Message::Terminate(Terminate { lease })),
    ))
    .await;
    h.handle(payment(
        7,
        BUYER,
        1,
        Some(Message::Terminate(Terminate { lease })),
    ))
    .await;
    for _ in 0..4 {
        h.machine.flush_outbox().await.unwrap();
    }
    let payments = h.ledger.payments();
    assert_eq!(
        kinds(&payments),
        vec![
            (BUYER, "berth/acquire-ok"),
            (OTHER, "berth/terminate-err"),
            (BUYER, "berth/terminate-ok"),
            (BUYER, "berth/terminate-err"),
        ]
    );
    assert_eq!(failure_code(&payments[1].2), ReasonCode::NotLeaseOwner);
    assert_eq!(failure_code(&payments[3].2), ReasonCode::UnknownLease);
    assert!(destroyed(&h, 1));
    let slot = h.machine.store().read().slot(0).unwrap().unwrap();
    assert_eq!((slot.state, slot.generation), (SlotState::Offered, 1));
}

#[tokio::test]
async fn after_a_resale_the_new_holder_terminates_and_the_buyer_no_longer_can() {
    let h = Harness::new(1);
    let token = leased(&h, &key(1)).await;
    let lease: berth_schemas::field::NfTokenId = token.parse().unwrap();
    // The buyer sells the token on the DEX; the host sees none of it.
    h.ledger.transfer(&token, OTHER);
    let terminate = || Some(Message::Terminate(Terminate { lease }));
    h.handle(payment(5, BUYER, 1, terminate())).await;
    h.handle(payment(6, OTHER, 1, terminate())).await;
    for _ in 0..4 {
        h.machine.flush_outbox().await.unwrap();
    }
    let payments = h.ledger.payments();
    assert_eq!(
        kinds(&payments),
        vec![
            (BUYER, "berth/acquire-ok"),
            (BUYER, "berth/terminate-err"),
            (OTHER, "berth/terminate-ok"),
        ]
    );
    assert_eq!(failure_code(&payments[1].2), ReasonCode::NotLeaseOwner);
    assert!(destroyed(&h, 1));
}

#[tokio::test]
async fn expiry_waits_for_the_grace_period_and_pauses_while_the_ledger_stalls() {
    let h = Harness::new(1);
    leased(&h, &key(1)).await;
    let closed = |ledger, close_time| LedgerEvent::LedgerClosed { ledger, close_time };
    h.handle(closed(20, 1000)).await;
    h.handle(closed(21, 1000 + MOMENT)).await;
    // Past its end, but the gap over the stall limit restarts the grace period.
    assert_eq!(in_state(&h, LeaseState::Grace), 1);
    assert!(!destroyed(&h, 1));
    // Ledgers close every few seconds from here on.
    let mut time = 1000 + MOMENT;
    let mut ledger = 22;
    while time < 1000 + MOMENT + GRACE - 10 {
        time += 5;
        ledger += 1;
        h.handle(closed(ledger, time)).await;
    }
    assert_eq!(in_state(&h, LeaseState::Grace), 1);
    assert!(!destroyed(&h, 1));
    for _ in 0..4 {
        time += 5;
        ledger += 1;
        h.handle(closed(ledger, time)).await;
    }
    assert!(destroyed(&h, 1));
    for _ in 0..4 {
        h.machine.flush_outbox().await.unwrap();
    }
    assert_eq!(
        h.machine
            .store()
            .read()
            .leases(&[LeaseState::Ended])
            .unwrap()
            .len(),
        1
    );
    let slot = h.machine.store().read().slot(0).unwrap().unwrap();
    assert_eq!((slot.state, slot.generation), (SlotState::Offered, 1));
    assert_eq!(
        h.machine.store().read().cursor().unwrap().unwrap().ledger,
        ledger - 1
    );
    // The only payment is the acquire-ok: expiry answers nobody.
    assert_eq!(h.ledger.payments().len(), 1);
}

#[tokio::test]
async fn a_crash_while_ending_finishes_after_restart_with_one_answer() {
    let h = Harness::new(1);
    let token = leased(&h, &key(1)).await;
    let lease: berth_schemas::field::NfTokenId = token.parse().unwrap();
    let jobs = h
        .machine
        .handle(&payment(
            5,
            BUYER,
            1,
            Some(Message::Terminate(Terminate { lease })),
        ))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    // The held answer does not go out before the instance is destroyed.
    h.machine.flush_outbox().await.unwrap();
    assert_eq!(h.ledger.payments().len(), 1);
    assert_eq!(
        h.machine
            .store()
            .read()
            .outbox_row(&format!("answer:{}", hash(5)))
            .unwrap()
            .unwrap()
            .state,
        OutboxState::Held
    );
    let h = h.restart();
    for job in h.machine.resume().unwrap() {
        h.machine.run_job(job).await.unwrap();
    }
    h.handle(payment(
        5,
        BUYER,
        1,
        Some(Message::Terminate(Terminate { lease })),
    ))
    .await;
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 2);
    assert!(matches!(payments[1].2, Message::TerminateOk(_)));
}

#[tokio::test]
async fn payments_without_a_request_are_refunded_and_answers_and_own_payments_ignored() {
    let h = Harness::new(1);
    h.offer_all().await;
    h.handle(payment(1, BUYER, 5000, None)).await;
    h.handle(payment(2, HOST, 5000, None)).await;
    let answer = Message::Refund(berth_schemas::message::Failure {
        request: hash(9).parse().unwrap(),
        code: ReasonCode::Internal,
        message: "x".parse().unwrap(),
    });
    h.handle(payment(3, OTHER, 5000, Some(answer))).await;
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    assert_eq!(payments.len(), 1);
    assert_eq!((payments[0].0.as_str(), payments[0].1), (BUYER, 5000));
    assert_eq!(failure_code(&payments[0].2), ReasonCode::BadPayload);
}

#[tokio::test]
async fn draining_cancels_offers_and_refuses_late_purchases() {
    let h = Harness::new(2);
    h.offer_all().await;
    let token = h.token(0);
    assert_eq!(h.machine.drain().unwrap(), 2);
    h.machine.flush_outbox().await.unwrap();
    assert!(h
        .machine
        .store()
        .read()
        .slots()
        .unwrap()
        .iter()
        .all(|s| s.state == SlotState::Held));
    h.handle(purchase(
        1,
        BUYER,
        &token,
        PRICE,
        vec![h.acquire_memo(&key(1))],
        1000,
    ))
    .await;
    h.machine.flush_outbox().await.unwrap();
    let payments = h.ledger.payments();
    assert_eq!(failure_code(&payments[0].2), ReasonCode::Draining);
    // The refused slot's token was burnt and the next one minted in that same pass (held, as
    // the host drains): undraining offers both slots.
    assert_eq!(h.machine.undrain().unwrap(), 2);
}

#[tokio::test]
async fn a_re_signed_answer_is_persisted_before_it_is_submitted() {
    // A raised fee re-signs an answer (same sequence, new hash): the outbox row must hold
    // the new version, which knows the hashes it replaces, so a restart cannot pay twice.
    let h = Harness::new(1);
    h.offer_all().await;
    *h.ledger.resign_next.lock().unwrap() = true;
    let tenant = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let token = h.token(0);
    h.handle(purchase(
        1,
        BUYER,
        &token,
        PRICE,
        vec![h.acquire_memo(&tenant)],
        1000,
    ))
    .await;
    h.machine.flush_outbox().await.unwrap();
    let resigned = h.ledger.resigned.lock().unwrap().clone();
    assert_eq!(resigned.len(), 1, "one submission was re-signed");
    let (old, new) = &resigned[0];
    let rows = h
        .machine
        .store()
        .read()
        .outbox(&[OutboxState::Validated])
        .unwrap();
    assert!(rows
        .iter()
        .any(|r| r.tx_hash.map(|h| h.to_string()).as_deref() == Some(new.as_str())));
    assert!(!rows
        .iter()
        .any(|r| r.tx_hash.map(|h| h.to_string()).as_deref() == Some(old.as_str())));
}

#[tokio::test]
async fn an_instance_over_its_disk_quota_is_held_stopped_and_reconcile_keeps_it_so() {
    use berth_provisioner::{Health, InstanceState, Provisioner, ReconcileAction};
    let h = Harness::new(2);
    leased(&h, &key(1)).await;
    let lease = h
        .machine
        .store()
        .read()
        .leases(&[LeaseState::Active])
        .unwrap()[0]
        .clone();
    // The recording provisioner's quota is 1 GiB; the tenant wrote 2.
    h.provisioner.set_disk_usage(&lease.instance, 2 << 30);
    let checks = h.provisioner.enforce_disk_quota().await.unwrap();
    assert_eq!(
        h.machine.over_disk_quota(&checks).unwrap(),
        vec![lease.instance.clone()]
    );
    // Held once: the next pass finds it held already.
    let checks = h.provisioner.enforce_disk_quota().await.unwrap();
    assert!(h.machine.over_disk_quota(&checks).unwrap().is_empty());
    let held = h.machine.store().read().lease(lease.id).unwrap().unwrap();
    assert_eq!(held.state, LeaseState::Active);
    assert!(held
        .held_stopped
        .as_deref()
        .is_some_and(|why| why.starts_with("over its disk quota")));
    // Reconcile does not start it again.
    let actions = h
        .provisioner
        .reconcile(&h.machine.expected_instances().unwrap())
        .await
        .unwrap();
    assert!(actions.contains(&ReconcileAction::Kept {
        instance: lease.instance.clone()
    }));
    assert_eq!(
        h.provisioner.health(&lease.instance).await.unwrap(),
        Health::NotRunning(InstanceState::Exited)
    );
    let errors = h.machine.store().read().recent_errors(10).unwrap();
    assert_eq!(
        errors.iter().filter(|e| e.context == "disk-quota").count(),
        1
    );
}
