#![allow(clippy::unwrap_used)]
//! End to end, in process: `run` against an in-process localnet and the real Docker engine
//! (the provisioner's probe image standing in for hotpocket); the tenant's side is driven with
//! berth-mb-xrpl directly. With BERTH_REQUIRE_DOCKER=1 an unreachable engine fails the tests.

use berth_agent::test_support::*;
use berth_provisioner::{ProvisionError, Provisioner};
use berth_schemas::field::NfTokenId;
use berth_schemas::key::PublicKey;
use berth_schemas::memo::Message;
use berth_schemas::message::{Acquire, AcquireRequest, Extend, ReasonCode, Sealed, Terminate};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_extend_terminate_on_localnet_with_docker() {
    let Some(w) = World::start("flow", 1, 27100).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    let Buyer {
        account: tenant,
        key: tenant_key,
        purchase,
    } = w.buy(&offer, 42).await;

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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        details.expires_at.abs_diff(now + 3600) < 60,
        "expires_at {} is not one moment from now {now}",
        details.expires_at
    );
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
    // The buyer's mistake: the refund keeps the four fees it cost the host (answer, burn,
    // mint, offer), at the default 12 drops each.
    assert_eq!((*amount, f.code), (PRICE - 48, ReasonCode::BadPayload));
    assert!(
        f.message.as_str().contains("48 drops of fees kept"),
        "{f:?}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buyers_racing_for_one_offer_get_one_lease() {
    let Some(w) = World::start("race", 1, 27500).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    let (a, b) = (
        fund(&w.client, 100 * XRP).await,
        fund(&w.client, 100 * XRP).await,
    );
    let (ka, kb) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let accept = |key: &SigningKey| {
        json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer,
               "Memos": w.acquire_memo(key)})
    };
    let ((ha, ra), (hb, rb)) = tokio::join!(
        w.submit_result(&a, accept(&ka)),
        w.submit_result(&b, accept(&kb))
    );
    let results = [ra.as_str(), rb.as_str()];
    assert_eq!(
        results.iter().filter(|r| **r == "tesSUCCESS").count(),
        1,
        "{results:?}"
    );
    let (winner, winner_key, purchase) = if ra == "tesSUCCESS" {
        (&a, &ka, ha)
    } else {
        (&b, &kb, hb)
    };
    let answers = w.answers(&winner.address(), &purchase).await;
    assert_eq!(answers.len(), 1);
    let Message::AcquireOk(ok) = &answers[0].1 else {
        panic!("{answers:?}")
    };
    assert_eq!(ok.sealed.open(winner_key).unwrap().lease.to_string(), token);
    let instances = w.provisioner.list().await.unwrap();
    assert_eq!(instances.len(), 1, "{instances:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_connection_dropped_mid_purchase_still_gets_one_answer() {
    let Some(mut w) = World::start("drop", 1, 27600).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    let Buyer {
        account: tenant,
        key: tenant_key,
        purchase,
    } = w.buy(&offer, 5).await;
    // The purchase is validated; the answer is on its way when the server goes away.
    w.drop_ledger(Duration::from_secs(2)).await;
    let answers = w.answers(&tenant.address(), &purchase).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let Message::AcquireOk(ok) = &answers[0].1 else {
        panic!("{answers:?}")
    };
    assert_eq!(
        ok.sealed.open(&tenant_key).unwrap().lease.to_string(),
        token
    );
    // And the agent follows the ledger after the reconnect: an extension is answered.
    let lease: NfTokenId = token.parse().unwrap();
    let extend = w
        .submit(
            &tenant,
            json!({"TransactionType": "Payment", "Destination": w.host, "Amount": PRICE.to_string(),
                   "Memos": memo_json(&Message::Extend(Extend { lease }))}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &extend).await;
    assert!(matches!(answers[0].1, Message::ExtendOk(_)), "{answers:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_runs_the_hotpocket_image_on_localnet() {
    let options = Options {
        hotpocket: true,
        ..Options::default()
    };
    let Some(w) = World::start_with("hotpocket", 1, 27700, options).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    let Buyer {
        account: tenant,
        key: tenant_key,
        purchase,
    } = w.buy(&offer, 11).await;
    let answers = w.answers(&tenant.address(), &purchase).await;
    let Message::AcquireOk(ok) = &answers[0].1 else {
        panic!("{answers:?}")
    };
    let details = ok.sealed.open(&tenant_key).unwrap();
    assert_eq!(details.lease.to_string(), token);
    let mut health = None;
    for _ in 0..100 {
        health = Some(w.provisioner.health(details.name.as_str()).await.unwrap());
        if health == Some(berth_provisioner::Health::Answering) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        health,
        Some(berth_provisioner::Health::Answering),
        "hotpocket never answered on user port {}",
        details.user_port
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_offer_is_made_again_by_housekeeping() {
    let Some(w) = World::start("lost", 1, 27800).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    // The offer disappears behind the agent's back (and the host's sequence moves on).
    w.submit(
        &w.host_key,
        json!({"TransactionType": "NFTokenCancelOffer", "NFTokenOffers": [offer]}),
    )
    .await;
    let mut again = None;
    for _ in 0..300 {
        let slot = w.store().unwrap().read().slot(0).unwrap().unwrap();
        if let (berth_agent::store::SlotState::Offered, Some(new)) = (slot.state, slot.offer_id) {
            if new.to_string() != offer {
                again = Some((slot.token_id.unwrap().to_string(), new.to_string()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (same_token, new_offer) = again.expect("the lost offer was never made again");
    assert_eq!(same_token, token);
    let offers = w
        .client
        .request("nft_sell_offers", json!({"nft_id": token}))
        .await
        .unwrap();
    assert!(offers.to_string().contains(&new_offer), "{offers}");
    w.stop().await;
}

/// Issue 19, point 8: the slot of a refused purchase is on sale again within one close. The
/// refund, the burn of the sold token, the mint of the next one and its sell offer are signed
/// with consecutive sequences (the new token's id is known before its mint validates) and
/// submitted together: the offer validates in the refund's ledger or the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_slot_is_on_offer_again_within_one_close() {
    let Some(w) = World::start("reoffer", 1, 28000).await else {
        return;
    };
    let (token, offer) = w.offered(0, 0).await;
    let tenant = fund(&w.client, 100 * XRP).await;
    // An acquire memo whose sealed request is garbage.
    let mut memos = w.acquire_memo(&SigningKey::from_bytes(&[5; 32]));
    memos[0]["Memo"]["MemoData"] = json!("00FF00FF");
    let purchase = w
        .submit(
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer,
                   "Memos": memos}),
        )
        .await;
    let answers = w.answers(&tenant.address(), &purchase).await;
    let (amount, Message::AcquireErr(f)) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!((*amount, f.code), (PRICE - 48, ReasonCode::BadPayload));
    let (fresh, fresh_offer) = w.offered(0, 1).await;
    assert_ne!(fresh, token);

    // Where each step validated, from the host's history on localnet.
    let history = berth_mb_xrpl::history::account_history(&w.client, &w.host, 1)
        .await
        .unwrap();
    let ledger_of = |what: &str, pick: &dyn Fn(&berth_mb_xrpl::ValidatedTx) -> bool| {
        let found: Vec<_> = history.transactions.iter().filter(|tx| pick(tx)).collect();
        assert_eq!(found.len(), 1, "{what}: {found:?}");
        assert_eq!(found[0].result, "tesSUCCESS", "{what}");
        found[0].ledger_index
    };
    let purchased = ledger_of("purchase", &|tx| tx.hash == purchase);
    let refunded = ledger_of("refund", &|tx| {
        tx.tx_type() == "Payment" && tx.tx["Destination"] == tenant.address().as_str()
    });
    let burnt = ledger_of("burn", &|tx| {
        tx.tx_type() == "NFTokenBurn" && tx.tx["NFTokenID"] == token.as_str()
    });
    let minted = ledger_of("mint", &|tx| {
        tx.tx_type() == "NFTokenMint" && tx.meta["nftoken_id"] == fresh.as_str()
    });
    let offered = ledger_of("offer", &|tx| {
        tx.tx_type() == "NFTokenCreateOffer" && tx.tx["NFTokenID"] == fresh.as_str()
    });
    println!(
        "purchase {purchased}, refund {refunded}, burn {burnt}, mint {minted}, offer {offered}"
    );
    assert!(refunded > purchased);
    assert!(
        offered <= refunded + 1,
        "offer in ledger {offered}, refund in {refunded}"
    );
    assert!(burnt <= offered && minted <= offered);
    // The ledger itself holds the offer at that ledger.
    let offers = w
        .client
        .request(
            "nft_sell_offers",
            json!({"nft_id": fresh, "ledger_index": refunded + 1}),
        )
        .await
        .unwrap();
    assert_eq!(
        offers["offers"][0]["nft_offer_index"],
        fresh_offer.as_str(),
        "{offers}"
    );
    w.stop().await;
}
