//! XLS-20 NFTokens on a real localnet: mint, offers, accept, cancel, burn, with
//! IDs computed independently and every failure code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use berth_xrpl_core::{index, KeyPair};
use common::*;
use serde_json::{json, Value};

fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

async fn mint(c: &mut Client, who: &KeyPair, flags: u32, fee: u16, uri: &str) -> String {
    let seq = c.sequence(&who.address()).await;
    let mut txj = json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 7, "Flags": flags, "URI": hex::encode_upper(uri)});
    if fee > 0 {
        txj["TransferFee"] = json!(fee);
    }
    let t = c.submit_close(who, txj).await;
    assert_eq!(result_of(&t), "tesSUCCESS", "{t}");
    let id = t["meta"]["nftoken_id"].as_str().unwrap().to_string();
    // The ID is the one XLS-20 defines, computed here independently.
    let info = c
        .ok(json!({"command": "account_info", "account": who.address()}))
        .await;
    let first = info["account_data"]["FirstNFTokenSequence"]
        .as_u64()
        .unwrap() as u32;
    let minted = info["account_data"]["MintedNFTokens"].as_u64().unwrap() as u32;
    if minted == 1 {
        assert_eq!(first, seq, "the first mint's sequence");
    }
    let want = index::nftoken_id(flags as u16, fee, &who.account_id(), 7, first + minted - 1);
    assert_eq!(id, hex::encode_upper(want));
    id
}

async fn offer(
    c: &mut Client,
    who: &KeyPair,
    token: &str,
    amount: i64,
    extra: Value,
) -> (String, String) {
    let seq = c.sequence(&who.address()).await;
    let mut txj = json!({"TransactionType": "NFTokenCreateOffer", "NFTokenID": token, "Amount": amount.to_string()});
    for (k, v) in extra.as_object().unwrap() {
        txj[k] = v.clone();
    }
    let t = c.submit_close(who, txj).await;
    let result = result_of(&t).to_string();
    if result == "tesSUCCESS" {
        let id = t["meta"]["offer_id"].as_str().unwrap().to_string();
        assert_eq!(
            id,
            hex::encode_upper(index::nft_offer(&who.account_id(), seq))
        );
        (result, id)
    } else {
        (result, String::new())
    }
}

#[tokio::test]
async fn mint_offer_accept_burn_a_lease_token() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let host = c.funded(100).await;
    let tenant = c.funded(100).await;

    let token = mint(&mut c, &host, 0x9, 0, "berth:1:slot0").await;
    assert_eq!(c.owner_count(&host.address()).await, 1, "one NFT page");
    let nfts = c
        .ok(json!({"command": "account_nfts", "account": host.address()}))
        .await;
    let n = &nfts["account_nfts"][0];
    assert_eq!(n["NFTokenID"], json!(token));
    assert_eq!(n["URI"], json!(hex::encode_upper("berth:1:slot0")));
    assert_eq!(n["Flags"], 9);
    assert_eq!(n["NFTokenTaxon"], 7);
    assert_eq!(n["Issuer"], json!(host.address()));

    let (r, sell) = offer(&mut c, &host, &token, 5 * XRP, json!({"Flags": 1})).await;
    assert_eq!(r, "tesSUCCESS");
    assert_eq!(c.owner_count(&host.address()).await, 2, "page + offer");
    let offers = c
        .ok(json!({"command": "nft_sell_offers", "nft_id": token}))
        .await;
    let o = &offers["offers"][0];
    assert_eq!(o["nft_offer_index"], json!(sell));
    assert_eq!(o["amount"], (5 * XRP).to_string());
    assert_eq!(o["owner"], json!(host.address()));
    assert_eq!(o["flags"], 1);
    let none = c
        .call(json!({"command": "nft_buy_offers", "nft_id": token}))
        .await;
    assert_eq!(none["error"], "objectNotFound");
    let objs = c
        .ok(json!({"command": "account_objects", "account": host.address(), "type": "nft_offer"}))
        .await;
    assert_eq!(objs["account_objects"][0]["index"], json!(sell));

    // The tenant buys the lease.
    let host_before = c.balance(&host.address()).await;
    let t = c
        .submit_close(&tenant, json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": sell, "Memos": [{"Memo": {"MemoType": hex::encode_upper("berth/acquire"), "MemoData": "00FF"}}]}))
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS", "{t}");
    assert_eq!(t["meta"]["nftoken_id"], json!(token));
    assert!(t["meta"]["AffectedNodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["DeletedNode"]["LedgerEntryType"] == "NFTokenOffer"));
    assert_eq!(c.balance(&host.address()).await, host_before + 5 * XRP);
    assert_eq!(c.balance(&tenant.address()).await, 95 * XRP - 10);
    assert_eq!(c.owner_count(&host.address()).await, 0);
    assert_eq!(c.owner_count(&tenant.address()).await, 1);
    let nfts = c
        .ok(json!({"command": "account_nfts", "account": tenant.address()}))
        .await;
    assert_eq!(nfts["account_nfts"][0]["NFTokenID"], json!(token));
    let gone = c
        .call(json!({"command": "nft_sell_offers", "nft_id": token}))
        .await;
    assert_eq!(gone["error"], "objectNotFound");

    // The issuer burns the burnable token the tenant holds (expiry).
    let t = c
        .submit_close(&host, json!({"TransactionType": "NFTokenBurn", "NFTokenID": token, "Owner": tenant.address()}))
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    assert_eq!(c.owner_count(&tenant.address()).await, 0);
    let info = c
        .ok(json!({"command": "account_info", "account": host.address()}))
        .await;
    assert_eq!(info["account_data"]["BurnedNFTokens"], 1);
    net.shutdown().await;
}

#[tokio::test]
async fn buy_offers_transfer_fees_and_cancellation() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let issuer = c.funded(100).await;
    let alice = c.funded(100).await;
    let bob = c.funded(100).await;
    // 10% transfer fee (10000 of 100000), transferable.
    let token = mint(&mut c, &issuer, 0x8, 10_000, "t").await;
    let (_, sell) = offer(
        &mut c,
        &issuer,
        &token,
        0,
        json!({"Flags": 1, "Destination": alice.address()}),
    )
    .await;
    // Bob may not take an offer meant for Alice.
    let t = c
        .submit_close(
            &bob,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": sell}),
        )
        .await;
    assert_eq!(result_of(&t), "tecNO_PERMISSION");
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": sell}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");

    // Bob bids on Alice's token; Alice accepts: the issuer takes 10%.
    let (r, buy) = offer(
        &mut c,
        &bob,
        &token,
        10 * XRP,
        json!({"Owner": alice.address()}),
    )
    .await;
    assert_eq!(r, "tesSUCCESS");
    let bids = c
        .ok(json!({"command": "nft_buy_offers", "nft_id": token}))
        .await;
    assert_eq!(bids["offers"][0]["nft_offer_index"], json!(buy));
    let (i0, a0) = (
        c.balance(&issuer.address()).await,
        c.balance(&alice.address()).await,
    );
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenBuyOffer": buy}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    assert_eq!(c.balance(&issuer.address()).await, i0 + XRP);
    assert_eq!(c.balance(&alice.address()).await, a0 + 9 * XRP - 10);

    // Cancel: only the owner (or destination) may, missing offers are skipped.
    let (_, ask) = offer(&mut c, &bob, &token, 50 * XRP, json!({"Flags": 1})).await;
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "NFTokenCancelOffer", "NFTokenOffers": [ask]}),
        )
        .await;
    assert_eq!(result_of(&t), "tecNO_PERMISSION");
    let oc = c.owner_count(&bob.address()).await;
    let t = c
        .submit_close(&bob, json!({"TransactionType": "NFTokenCancelOffer", "NFTokenOffers": [ask, "00".repeat(32)]}))
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    assert_eq!(t["meta"]["nftoken_ids"][0], json!(token));
    assert_eq!(c.owner_count(&bob.address()).await, oc - 1);
    let r = c
        .submit_result(
            &bob,
            json!({"TransactionType": "NFTokenCancelOffer", "NFTokenOffers": []}),
        )
        .await;
    assert_eq!(r, "temMALFORMED");
    let r = c
        .submit_result(
            &bob,
            json!({"TransactionType": "NFTokenCancelOffer", "NFTokenOffers": [ask, ask]}),
        )
        .await;
    assert_eq!(r, "temMALFORMED");
    net.shutdown().await;
}

#[tokio::test]
async fn nft_failures_carry_rippled_codes() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let host = c.funded(100).await;
    let tenant = c.funded(100).await;
    let poor = c.funded(11).await;

    // Preflight failures (not included).
    for (txj, want) in [
        (
            json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0, "TransferFee": 50001, "Flags": 8}),
            "temBAD_NFTOKEN_TRANSFER_FEE",
        ),
        (
            json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0, "TransferFee": 10}),
            "temMALFORMED",
        ),
        (
            json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0, "URI": ""}),
            "temMALFORMED",
        ),
        (
            json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0, "Flags": 4}),
            "temINVALID_FLAG",
        ),
        (
            json!({"TransactionType": "NFTokenAcceptOffer"}),
            "temMALFORMED",
        ),
        (
            json!({"TransactionType": "NFTokenCreateOffer", "NFTokenID": "00".repeat(32), "Amount": "0"}),
            "temBAD_AMOUNT",
        ),
        (
            json!({"TransactionType": "NFTokenCreateOffer", "NFTokenID": "00".repeat(32), "Amount": "1"}),
            "temMALFORMED",
        ),
        (
            json!({"TransactionType": "NFTokenCreateOffer", "NFTokenID": "00".repeat(32), "Amount": "1", "Flags": 1, "Expiration": 0}),
            "temBAD_EXPIRATION",
        ),
    ] {
        assert_eq!(c.submit_result(&host, txj.clone()).await, want, "{txj}");
    }

    // Reserve: 11 XRP cannot hold a page (needs 12).
    let r = c
        .submit_result(
            &poor,
            json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0}),
        )
        .await;
    assert_eq!(r, "tecINSUFFICIENT_RESERVE");

    let token = mint(&mut c, &host, 0x8, 0, "x").await;
    let missing = "00".repeat(32);
    // Offer for a token the account does not hold.
    let (r, _) = offer(&mut c, &tenant, &token, XRP, json!({"Flags": 1})).await;
    assert_eq!(r, "tecNO_ENTRY");
    // Already expired (ripple-epoch time 1).
    let (r, _) = offer(
        &mut c,
        &host,
        &token,
        XRP,
        json!({"Flags": 1, "Expiration": 1}),
    )
    .await;
    assert_eq!(r, "tecEXPIRED");
    // Destination that does not exist.
    let (r, _) = offer(&mut c, &host, &token, XRP, json!({"Flags": 1, "Destination": KeyPair::generate(berth_xrpl_core::KeyType::Ed25519).address()})).await;
    assert_eq!(r, "tecNO_DST");
    // A buy offer the buyer cannot fund.
    let (r, _) = offer(
        &mut c,
        &poor,
        &token,
        50 * XRP,
        json!({"Owner": host.address()}),
    )
    .await;
    assert_eq!(r, "tecUNFUNDED_OFFER");

    let (_, sell) = offer(&mut c, &host, &token, 95 * XRP, json!({"Flags": 1})).await;
    for (who, txj, want) in [
        (
            &host,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": sell}),
            "tecCANT_ACCEPT_OWN_NFTOKEN_OFFER",
        ),
        (
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenBuyOffer": sell}),
            "tecNFTOKEN_OFFER_TYPE_MISMATCH",
        ),
        (
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": missing}),
            "tecOBJECT_NOT_FOUND",
        ),
        (
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": sell}),
            "tecINSUFFICIENT_FUNDS",
        ),
        (
            &tenant,
            json!({"TransactionType": "NFTokenBurn", "NFTokenID": token, "Owner": host.address()}),
            "tecNO_PERMISSION",
        ),
        (
            &tenant,
            json!({"TransactionType": "NFTokenBurn", "NFTokenID": missing}),
            "tecNO_ENTRY",
        ),
    ] {
        let t = c.submit_close(who, txj.clone()).await;
        assert_eq!(result_of(&t), want, "{txj}");
    }

    // A non-burnable token held by someone else cannot be burned by its issuer.
    let (_, cheap) = offer(&mut c, &host, &token, XRP, json!({"Flags": 1})).await;
    let t = c
        .submit_close(
            &tenant,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": cheap}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    let t = c
        .submit_close(&host, json!({"TransactionType": "NFTokenBurn", "NFTokenID": token, "Owner": tenant.address()}))
        .await;
    assert_eq!(result_of(&t), "tecNO_PERMISSION");
    // The stale 95 XRP offer can no longer be taken: the seller no longer holds it.
    let buyer = c.funded(200).await;
    let t = c
        .submit_close(
            &buyer,
            json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": sell}),
        )
        .await;
    assert_eq!(result_of(&t), "tecNO_PERMISSION");
    // Burning by the holder removes the token and every offer for it.
    let t = c
        .submit_close(
            &tenant,
            json!({"TransactionType": "NFTokenBurn", "NFTokenID": token}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    let gone = c
        .call(json!({"command": "nft_sell_offers", "nft_id": token}))
        .await;
    assert_eq!(gone["error"], "objectNotFound");
    assert_eq!(c.owner_count(&host.address()).await, 0);
    net.shutdown().await;
}

#[tokio::test]
async fn many_tokens_span_pages_and_owner_count_follows() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let host = c.funded(1000).await;
    let seq0 = c.sequence(&host.address()).await;
    let mut ids = Vec::new();
    for i in 0..70u32 {
        let r = c
            .submit(&host, json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0, "Flags": 9, "Sequence": seq0 + i}))
            .await;
        assert_eq!(r["engine_result"], "tesSUCCESS");
    }
    c.close_ledger().await;
    let mut marker = Value::Null;
    loop {
        let mut req = json!({"command": "account_nfts", "account": host.address(), "limit": 25});
        if !marker.is_null() {
            req["marker"] = marker.clone();
        }
        let r = c.ok(req).await;
        for n in r["account_nfts"].as_array().unwrap() {
            ids.push(hex32(&n["NFTokenID"]));
        }
        marker = r.get("marker").cloned().unwrap_or(Value::Null);
        if marker.is_null() {
            break;
        }
    }
    assert_eq!(ids.len(), 70);
    let pages = c.owner_count(&host.address()).await;
    assert!((3..=5).contains(&pages), "70 tokens in {pages} pages");
    let objs = c
        .ok(json!({"command": "account_objects", "account": host.address(), "type": "nft_page"}))
        .await;
    assert_eq!(
        objs["account_objects"].as_array().unwrap().len() as u64,
        pages
    );
    // Burn them all: every page goes, and the owner count returns to zero.
    let seq = c.sequence(&host.address()).await;
    for (i, id) in ids.iter().enumerate() {
        let r = c
            .submit(&host, json!({"TransactionType": "NFTokenBurn", "NFTokenID": hex::encode_upper(id), "Sequence": seq + i as u32}))
            .await;
        assert_eq!(r["engine_result"], "tesSUCCESS", "burn {i}");
    }
    c.close_ledger().await;
    assert_eq!(c.owner_count(&host.address()).await, 0);
    net.shutdown().await;
}
