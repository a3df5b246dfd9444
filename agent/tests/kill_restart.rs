#![allow(clippy::unwrap_used)]
//! The real `berth-agent` binary, killed with SIGKILL at each step of acquire, extend and
//! expire (`BERTH_AGENT_FAILPOINT`), then restarted: every request gets exactly one answer and
//! no instance is created twice or left behind. Localnet in process, real Docker (an image
//! shaped like hotpocket's whose `/hotpocket` is the provisioner's probe).

use std::time::Duration;

use berth_agent::store::LeaseState;
use berth_agent::test_support::*;
use berth_provisioner::Provisioner;
use berth_schemas::field::NfTokenId;
use berth_schemas::memo::Message;
use berth_schemas::message::Extend;
use serde_json::json;

async fn instances_of(w: &World, token: &str) -> usize {
    w.provisioner
        .list()
        .await
        .unwrap()
        .iter()
        .filter(|i| i.lease_id == token)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_extend_survive_sigkill_at_each_step() {
    let options = Options {
        binary: Some(env!("CARGO_BIN_EXE_berth-agent").into()),
        ..Options::default()
    };
    let Some(mut w) = World::start_with("kill-acq", 3, 27300, options).await else {
        return;
    };
    let steps = ["acquire-recorded", "acquire-started", "answer-prepared"];
    let mut leases = Vec::new();
    for (slot, step) in steps.iter().enumerate() {
        w.spawn_binary(Some(step));
        let (token, offer) = w.offered(slot as u32, 0).await;
        let Buyer {
            account: tenant,
            key: tenant_key,
            purchase,
        } = w.buy(&offer, slot as u8 + 1).await;
        w.wait_killed().await;
        w.spawn_binary(None);
        let answers = w.answers(&tenant.address(), &purchase).await;
        assert_eq!(answers.len(), 1, "{step}: {answers:?}");
        let Message::AcquireOk(ok) = &answers[0].1 else {
            panic!("{step}: {answers:?}")
        };
        let details = ok.sealed.open(&tenant_key).unwrap();
        assert_eq!(details.lease.to_string(), token, "{step}");
        assert_eq!(instances_of(&w, &token).await, 1, "{step}");
        w.terminate_binary();
        leases.push((token, tenant));
    }

    let (token, tenant) = &leases[0];
    let lease: NfTokenId = token.parse().unwrap();
    for step in ["extend-recorded", "answer-prepared"] {
        w.spawn_binary(Some(step));
        let extend = w
            .submit(
                tenant,
                json!({"TransactionType": "Payment", "Destination": w.host, "Amount": PRICE.to_string(),
                       "Memos": memo_json(&Message::Extend(Extend { lease }))}),
            )
            .await;
        w.wait_killed().await;
        w.spawn_binary(None);
        let answers = w.answers(&tenant.address(), &extend).await;
        assert_eq!(answers.len(), 1, "{step}: {answers:?}");
        assert!(
            matches!(answers[0].1, Message::ExtendOk(_)),
            "{step}: {answers:?}"
        );
        w.terminate_binary();
    }
    let store = w.store().unwrap();
    let lease_row = store
        .read()
        .leases(&[])
        .unwrap()
        .into_iter()
        .find(|l| l.token_id.to_string() == *token)
        .unwrap();
    assert_eq!(lease_row.moments, 3, "each extension counted once");

    // status and leases read the database while run runs.
    w.spawn_binary(None);
    let status: serde_json::Value =
        serde_json::from_slice(&w.command(&["status", "--json"])).unwrap();
    assert_eq!(status["host_address"], w.host.as_str());
    assert_eq!(status["registered"], true, "{status}");
    assert_eq!(status["slots"]["leased"], 3, "{status}");
    assert_eq!(status["leases"].as_array().unwrap().len(), 3, "{status}");
    let listed: serde_json::Value =
        serde_json::from_slice(&w.command(&["leases", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(
        listed[0].get("node_secret").is_none(),
        "secrets are not listed"
    );
    let text = String::from_utf8(w.command(&["status"])).unwrap();
    assert!(text.contains("3 leased"), "{text}");
    w.terminate_binary();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_survives_sigkill_at_each_step() {
    let options = Options {
        binary: Some(env!("CARGO_BIN_EXE_berth-agent").into()),
        // Long enough that the purchase is answered (and the first run stopped) well before
        // the lease ends, also on a loaded machine. Ledger time runs ahead of the wall clock
        // here: each 300 ms close advances the close time by at least one second.
        moment_secs: 30,
        grace_secs: 1,
        ..Options::default()
    };
    let Some(mut w) = World::start_with("kill-exp", 2, 27400, options).await else {
        return;
    };
    for (slot, step) in ["end-begun", "end-destroyed"].iter().enumerate() {
        w.spawn_binary(None);
        let (token, offer) = w.offered(slot as u32, 0).await;
        let Buyer {
            account: tenant,
            key: _,
            purchase,
        } = w.buy(&offer, slot as u8 + 7).await;
        let answers = w.answers(&tenant.address(), &purchase).await;
        assert!(matches!(answers[0].1, Message::AcquireOk(_)), "{answers:?}");
        w.terminate_binary();
        // Expiry happens in a run that dies at the step, and is finished by the next run.
        w.spawn_binary(Some(step));
        w.wait_killed().await;
        w.spawn_binary(None);
        let mut ended = false;
        for _ in 0..300 {
            let store = w.store().unwrap();
            ended = store
                .read()
                .leases(&[LeaseState::Ended])
                .unwrap()
                .iter()
                .any(|l| l.token_id.to_string() == token);
            if ended {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ended, "{step}: lease never ended");
        assert_eq!(instances_of(&w, &token).await, 0, "{step}: orphan instance");
        let (fresh, _) = w.offered(slot as u32, 1).await;
        assert_ne!(fresh, token, "{step}");
        // Expiry answers nobody: still exactly the one acquire-ok.
        assert_eq!(
            w.answers(&tenant.address(), &purchase).await.len(),
            1,
            "{step}"
        );
        w.terminate_binary();
    }
    // drain while running: the live offers are cancelled, the slots held.
    w.spawn_binary(None);
    w.command(&["drain"]);
    let mut held = false;
    for _ in 0..200 {
        let slots = w.store().unwrap().read().slots().unwrap();
        held = slots
            .iter()
            .all(|s| s.state == berth_agent::store::SlotState::Held);
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held, "drain left offers live");
    w.terminate_binary();
    w.stop().await;
}
