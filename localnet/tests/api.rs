//! The WebSocket API of a real localnet on 127.0.0.1: every method, and the rules
//! of Payment and AccountSet with their failure codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use berth_xrpl_core::{tx, KeyPair, KeyType};
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn server_methods_answer_like_rippled() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;

    let r = c.ok(json!({"command": "ping"})).await;
    assert!(r.is_object());
    let info = c.ok(json!({"command": "server_info"})).await;
    assert_eq!(info["info"]["validated_ledger"]["seq"], 1);
    assert_eq!(info["info"]["validated_ledger"]["reserve_base_xrp"], 10.0);
    assert_eq!(info["info"]["complete_ledgers"], "1-1");
    let st = c.ok(json!({"command": "server_state"})).await;
    assert_eq!(st["state"]["validated_ledger"]["reserve_inc"], 2_000_000);
    let fee = c.ok(json!({"command": "fee"})).await;
    assert_eq!(fee["drops"]["base_fee"], "10");
    assert_eq!(fee["drops"]["open_ledger_fee"], "10");
    assert_eq!(fee["ledger_current_index"], 2);

    assert_eq!(
        c.ok(json!({"command": "ledger_current"})).await["ledger_current_index"],
        2
    );
    let closed = c.ok(json!({"command": "ledger_closed"})).await;
    assert_eq!(closed["ledger_index"], 1);
    let genesis_hash = closed["ledger_hash"].as_str().unwrap().to_string();
    assert_eq!(genesis_hash.len(), 64);

    // Closing chains ledgers by hash.
    assert_eq!(c.close_ledger().await, 3);
    let l2 = c
        .ok(json!({"command": "ledger", "ledger_index": "validated", "api_version": 2}))
        .await;
    assert_eq!(l2["ledger_index"], 2);
    assert_eq!(l2["validated"], true);
    assert_eq!(l2["ledger"]["parent_hash"], json!(genesis_hash));
    assert_eq!(l2["ledger"]["ledger_index"], 2);
    assert_eq!(l2["ledger"]["total_coins"], "100000000000000000");
    let cur = c
        .ok(json!({"command": "ledger", "ledger_index": "current"}))
        .await;
    assert_eq!(cur["ledger"]["closed"], false);
    assert_eq!(cur["ledger_current_index"], 3);
    let by_hash = c
        .ok(json!({"command": "ledger", "ledger_hash": genesis_hash}))
        .await;
    assert_eq!(by_hash["ledger_index"], 1);
    let missing = c
        .call(json!({"command": "ledger", "ledger_index": 99}))
        .await;
    assert_eq!(missing["error"], "lgrNotFound");

    // The genesis account holds every drop.
    let g = c
        .ok(json!({"command": "account_info", "account": GENESIS, "ledger_index": "validated"}))
        .await;
    assert_eq!(g["account_data"]["Balance"], "100000000000000000");
    assert_eq!(g["account_data"]["Sequence"], 1);
    assert_eq!(g["validated"], true);
    net.shutdown().await;
}

const GENESIS: &str = berth_localnet::GENESIS_ADDRESS;

#[tokio::test]
async fn payments_create_accounts_and_charge_fees() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(100).await;
    assert_eq!(c.balance(&alice.address()).await, 100 * XRP);
    // A new account's sequence is the ledger it was created in.
    assert_eq!(c.sequence(&alice.address()).await, 2);

    let bob = KeyPair::generate(KeyType::Secp256k1);
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": (20 * XRP).to_string(), "DestinationTag": 42}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    assert_eq!(t["validated"], true);
    assert_eq!(t["meta"]["delivered_amount"], (20 * XRP).to_string());
    assert_eq!(t["tx_json"]["DestinationTag"], 42);
    let nodes = t["meta"]["AffectedNodes"].as_array().unwrap();
    assert!(nodes
        .iter()
        .any(|n| n["CreatedNode"]["LedgerEntryType"] == "AccountRoot"
            && n["CreatedNode"]["NewFields"]["Account"] == json!(bob.address())));
    assert!(nodes
        .iter()
        .any(
            |n| n["ModifiedNode"]["FinalFields"]["Account"] == json!(alice.address())
                && n["ModifiedNode"]["PreviousFields"]["Balance"] == json!((100 * XRP).to_string())
        ));
    assert_eq!(c.balance(&alice.address()).await, 80 * XRP - 10);

    // secp256k1 accounts sign too.
    let r = c
        .submit_result(
            &bob,
            json!({"TransactionType": "Payment", "Destination": alice.address(), "Amount": "1000"}),
        )
        .await;
    assert_eq!(r, "tesSUCCESS");
    net.shutdown().await;
}

#[tokio::test]
async fn payment_failures_carry_rippled_codes() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(50).await;
    let nobody = KeyPair::generate(KeyType::Ed25519);

    // tec: included, fee charged, sequence consumed.
    let seq = c.sequence(&alice.address()).await;
    let before = c.balance(&alice.address()).await;
    let r = c
        .submit_result(&alice, json!({"TransactionType": "Payment", "Destination": nobody.address(), "Amount": "1000"}))
        .await;
    assert_eq!(r, "tecNO_DST_INSUF_XRP");
    assert_eq!(c.sequence(&alice.address()).await, seq + 1);
    assert_eq!(c.balance(&alice.address()).await, before - 10);

    let bob = c.funded(20).await;
    let r = c
        .submit_result(&alice, json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": (45 * XRP).to_string()}))
        .await;
    assert_eq!(
        r, "tecUNFUNDED_PAYMENT",
        "the 10 XRP reserve is not spendable"
    );

    // tem: not included, nothing charged.
    let seq = c.sequence(&alice.address()).await;
    let before = c.balance(&alice.address()).await;
    for (txj, want) in [
        (
            json!({"TransactionType": "Payment", "Destination": alice.address(), "Amount": "1"}),
            "temREDUNDANT",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "0"}),
            "temBAD_AMOUNT",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Flags": 0x0002_0000}),
            "temBAD_SEND_XRP_PARTIAL",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "SendMax": "2"}),
            "temBAD_SEND_XRP_MAX",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Flags": 0x0000_0001}),
            "temINVALID_FLAG",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Fee": "-5"}),
            "temBAD_FEE",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Fee": "9"}),
            "telINSUF_FEE_P",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Sequence": seq - 1}),
            "tefPAST_SEQ",
        ),
        (
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "LastLedgerSequence": 2}),
            "tefMAX_LEDGER",
        ),
    ] {
        assert_eq!(c.submit_result(&alice, txj.clone()).await, want, "{txj}");
    }
    assert_eq!(c.sequence(&alice.address()).await, seq);
    assert_eq!(c.balance(&alice.address()).await, before);

    // A transaction from an account that does not exist.
    let r = c
        .submit_result(&nobody, json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Sequence": 1}))
        .await;
    assert_eq!(r, "terNO_ACCOUNT");
    // Signed with a key that is not the account's.
    let r = c
        .submit_result(&nobody, json!({"TransactionType": "Payment", "Account": alice.address(), "Destination": bob.address(), "Amount": "1", "Sequence": seq}))
        .await;
    assert_eq!(r, "tefBAD_AUTH");
    // Fee bigger than the balance.
    let r = c
        .submit_result(&alice, json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "Fee": (100 * XRP).to_string()}))
        .await;
    assert_eq!(r, "terINSUF_FEE_B");

    // Destination tags.
    let r = c
        .submit_close(&bob, json!({"TransactionType": "AccountSet", "SetFlag": 1}))
        .await;
    assert_eq!(result_of(&r), "tesSUCCESS");
    let r = c
        .submit_result(
            &alice,
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1"}),
        )
        .await;
    assert_eq!(r, "tecDST_TAG_NEEDED");
    let r = c
        .submit_result(&alice, json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1", "DestinationTag": 9}))
        .await;
    assert_eq!(r, "tesSUCCESS");
    net.shutdown().await;
}

#[tokio::test]
async fn future_sequences_are_held_then_applied() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(50).await;
    let bob = c.funded(50).await;
    let seq = c.sequence(&alice.address()).await;
    let pay = |s: u32| json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "1000", "Sequence": s});
    let r = c.submit(&alice, pay(seq + 1)).await;
    assert_eq!(r["engine_result"], "terPRE_SEQ");
    assert_eq!(r["kept"], true);
    let r = c.submit(&alice, pay(seq)).await;
    assert_eq!(r["engine_result"], "tesSUCCESS");
    // Both applied: the held one followed the first.
    assert_eq!(c.sequence(&alice.address()).await, seq + 2);
    net.shutdown().await;
}

#[tokio::test]
async fn bad_signatures_and_blobs_are_refused_with_reasons() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(50).await;
    let seq = c.sequence(&alice.address()).await;
    let txj = json!({"TransactionType": "Payment", "Account": alice.address(), "Destination": GENESIS, "Amount": "1", "Fee": "10", "Sequence": seq});
    let mut signed = tx::sign_json(&txj, &alice).unwrap();
    // Flip a byte of the signature (the last bytes of the blob are the Destination;
    // the signature sits before Account): corrupt the Amount instead so the
    // signature no longer covers the blob.
    let pos = signed.blob.len() / 3;
    signed.blob[pos] ^= 0x01;
    let r = c
        .call(json!({"command": "submit", "tx_blob": hex::encode_upper(&signed.blob)}))
        .await;
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"], "invalidTransaction", "{r}");

    // Truncated at every length: always a clear error, never a crash.
    let good = tx::sign_json(&txj, &alice).unwrap();
    for cut in [1usize, 5, 17, good.blob.len() / 2, good.blob.len() - 1] {
        let r = c
            .call(json!({"command": "submit", "tx_blob": hex::encode_upper(&good.blob[..cut])}))
            .await;
        assert_eq!(r["status"], "error", "cut {cut}: {r}");
        assert!(r["error"] == "invalidTransaction", "cut {cut}: {r}");
        assert!(!r["error_exception"].as_str().unwrap().is_empty());
    }
    let r = c
        .call(json!({"command": "submit", "tx_blob": "ZZZZ"}))
        .await;
    assert_eq!(r["error"], "invalidParams");
    let r = c.call(json!({"command": "submit"})).await;
    assert_eq!(r["error"], "invalidParams");
    assert_eq!(r["error_message"], "Missing field 'tx_blob'.");
    let r = c
        .call(json!({"command": "submit", "tx_blob": "FFFFFFFFFFFFFFFF"}))
        .await;
    assert_eq!(r["error"], "invalidTransaction");

    // The connection still works, and the good transaction applies.
    let r = c
        .ok(json!({"command": "submit", "tx_blob": good.blob_hex()}))
        .await;
    assert_eq!(r["engine_result"], "tesSUCCESS");
    // Submitting it again is refused as already applied.
    let r = c
        .ok(json!({"command": "submit", "tx_blob": good.blob_hex()}))
        .await;
    assert_eq!(r["engine_result"], "tefALREADY");
    net.shutdown().await;
}

#[tokio::test]
async fn a_foreign_network_id_and_oversized_or_odd_memos_are_refused_as_rippled_does() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(50).await;
    let pay = json!({"TransactionType": "Payment", "Destination": GENESIS, "Amount": "1"});
    // A NetworkID on a network whose id is below 1025 (localnet, like Mainnet).
    let mut foreign = pay.clone();
    foreign["NetworkID"] = json!(21338);
    assert_eq!(
        c.submit_result(&alice, foreign).await,
        "telNETWORK_ID_MAKES_TX_NON_CANONICAL"
    );
    // A 2 KB memo: over rippled's 1 KB limit on the serialized Memos.
    let submit_raw = |txj: Value| {
        let mut txj = txj;
        txj["Account"] = json!(alice.address());
        txj["Fee"] = json!("10");
        txj
    };
    let seq = c.sequence(&alice.address()).await;
    let memo = |data: usize, ty: &str| json!([{"Memo": {"MemoType": hex::encode_upper(ty), "MemoData": "AB".repeat(data)}}]);
    let cases = [
        (
            memo(2048, "berth/x"),
            "The memo exceeds the maximum allowed size.",
        ),
        (
            memo(8, "bad type"),
            "may only contain characters that are allowed in URLs",
        ),
    ];
    for (memos, reason) in cases {
        let mut txj = submit_raw(pay.clone());
        txj["Sequence"] = json!(seq);
        txj["Memos"] = memos;
        let signed = tx::sign_json(&txj, &alice).unwrap();
        let r = c
            .call(json!({"command": "submit", "tx_blob": signed.blob_hex()}))
            .await;
        assert_eq!(r["error"], "invalidTransaction", "{r}");
        let why = r["error_exception"].as_str().unwrap();
        assert!(
            why.starts_with("fails local checks: ") && why.contains(reason),
            "{why}"
        );
    }
    // A memo within the limit still goes through.
    let mut txj = pay.clone();
    txj["Memos"] = memo(900, "berth/x");
    assert_eq!(c.submit_result(&alice, txj).await, "tesSUCCESS");
    net.shutdown().await;
}

#[tokio::test]
async fn half_sent_http_requests_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let net = start_with(berth_localnet::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: std::time::Duration::ZERO,
        http_timeout: std::time::Duration::from_millis(300),
        ..berth_localnet::Config::default()
    })
    .await;
    let addr = net
        .url()
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("closed long before 10 s");
    let answer = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // A body that never arrives in full: 408 naming the deadline.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"method\"",
    )
    .await
    .unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("answered long before 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
    // The server still answers others.
    let mut c = Client::connect(&net.url()).await;
    c.ok(json!({"command": "server_info"})).await;
    net.shutdown().await;
}

#[tokio::test]
async fn garbage_requests_get_rippled_style_errors_and_the_connection_survives() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let r = c.raw("{not json").await;
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"], "jsonInvalid");
    let r = c.raw("[1,2,3]").await;
    assert_eq!(r["error"], "jsonInvalid");
    let r = c.call(json!({"nothing": 1})).await;
    assert_eq!(r["error"], "missingCommand");
    let r = c.call(json!({"command": "no_such_method"})).await;
    assert_eq!(r["error"], "unknownCmd");
    assert_eq!(r["error_code"], 32);
    assert_eq!(r["request"]["command"], "no_such_method");
    let r = c.call(json!({"command": "ping", "api_version": 7})).await;
    assert_eq!(r["error"], "invalid_API_version");
    let r = c
        .call(json!({"command": "account_info", "account": "rBad"}))
        .await;
    assert_eq!(r["error"], "actMalformed");
    let r = c.call(json!({"command": "account_info"})).await;
    assert_eq!(r["error"], "invalidParams");
    let r = c
        .call(json!({"command": "account_info", "account": KeyPair::generate(KeyType::Ed25519).address()}))
        .await;
    assert_eq!(r["error"], "actNotFound");
    assert_eq!(r["error_code"], 19);
    let r = c
        .call(json!({"command": "tx", "transaction": "00".repeat(32)}))
        .await;
    assert_eq!(r["error"], "txnNotFound");
    let r = c.call(json!({"command": "tx", "transaction": "xyz"})).await;
    assert_eq!(r["error"], "invalidParams");
    let r = c
        .call(json!({"command": "subscribe", "streams": ["nope"]}))
        .await;
    assert_eq!(r["error"], "malformedStream");
    assert_eq!(c.ok(json!({"command": "ping"})).await, json!({}));

    // An oversize message closes that connection only; the server goes on.
    let mut big = Client::connect(&net.url()).await;
    let huge = format!(
        "{{\"command\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let answer = big.raw_or_closed(&huge).await;
    assert!(answer.is_none(), "an oversize frame is refused: {answer:?}");
    let mut fresh = Client::connect(&net.url()).await;
    assert_eq!(fresh.ok(json!({"command": "ping"})).await, json!({}));
    net.shutdown().await;
}

#[tokio::test]
async fn account_set_sets_message_key_domain_and_flags() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(50).await;
    let key = KeyPair::generate(KeyType::Ed25519);
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "AccountSet", "MessageKey": key.public_key_hex(), "Domain": hex::encode_upper("example.org"), "SetFlag": 9}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    let info = c
        .ok(json!({"command": "account_info", "account": alice.address(), "ledger_index": "validated"}))
        .await;
    assert_eq!(
        info["account_data"]["MessageKey"],
        json!(key.public_key_hex())
    );
    assert_eq!(
        info["account_data"]["Domain"],
        json!(hex::encode_upper("example.org"))
    );
    assert_eq!(info["account_flags"]["depositAuth"], true);

    // Clearing.
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "AccountSet", "MessageKey": "", "ClearFlag": 9}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    let info = c
        .ok(json!({"command": "account_info", "account": alice.address()}))
        .await;
    assert!(info["account_data"].get("MessageKey").is_none());
    assert_eq!(info["account_flags"]["depositAuth"], false);

    for (txj, want) in [
        (
            json!({"TransactionType": "AccountSet", "MessageKey": "0011"}),
            "telBAD_PUBLIC_KEY",
        ),
        (
            json!({"TransactionType": "AccountSet", "Domain": "AB".repeat(257)}),
            "telBAD_DOMAIN",
        ),
        (
            json!({"TransactionType": "AccountSet", "SetFlag": 1, "ClearFlag": 1}),
            "temINVALID_FLAG",
        ),
        (
            json!({"TransactionType": "AccountSet", "TransferRate": 5}),
            "temBAD_TRANSFER_RATE",
        ),
        (
            json!({"TransactionType": "AccountSet", "SetFlag": 4}),
            "tecNO_ALTERNATIVE_KEY",
        ),
    ] {
        assert_eq!(c.submit_result(&alice, txj.clone()).await, want, "{txj}");
    }
    net.shutdown().await;
}

#[tokio::test]
async fn regular_key_signs_and_master_can_be_disabled() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(50).await;
    let regular = KeyPair::generate(KeyType::Secp256k1);
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "SetRegularKey", "RegularKey": regular.address()}),
        )
        .await;
    assert_eq!(result_of(&t), "tesSUCCESS");
    // Only the master key may disable itself (rippled's tecNEED_MASTER_KEY).
    let seq = c.sequence(&alice.address()).await;
    let r = c
        .submit_result(&regular, json!({"TransactionType": "AccountSet", "Account": alice.address(), "SetFlag": 4, "Sequence": seq}))
        .await;
    assert_eq!(r, "tecNEED_MASTER_KEY");
    c.close_ledger().await;
    let r = c
        .submit_result(
            &alice,
            json!({"TransactionType": "AccountSet", "SetFlag": 4}),
        )
        .await;
    assert_eq!(r, "tesSUCCESS");
    c.close_ledger().await;
    let r = c
        .submit_result(
            &alice,
            json!({"TransactionType": "AccountSet", "Domain": "AA"}),
        )
        .await;
    assert_eq!(r, "tefMASTER_DISABLED");
    let seq = c.sequence(&alice.address()).await;
    let r = c
        .submit_result(&regular, json!({"TransactionType": "AccountSet", "Account": alice.address(), "Domain": "AA", "Sequence": seq}))
        .await;
    assert_eq!(r, "tesSUCCESS");
    net.shutdown().await;
}

#[tokio::test]
async fn account_tx_pages_through_history_both_ways() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(100).await;
    let bob = c.funded(100).await;
    let mut hashes = Vec::new();
    for i in 0..7 {
        let r = c
            .submit(&alice, json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": (1000 + i).to_string()}))
            .await;
        hashes.push(r["tx_json"]["hash"].as_str().unwrap().to_string());
        if i % 3 == 0 && i < 6 {
            c.close_ledger().await;
        }
    }
    // Not yet validated: the last ones are in the open ledger.
    let open = c
        .ok(json!({"command": "account_tx", "account": bob.address(), "api_version": 2}))
        .await;
    assert!(open["transactions"].as_array().unwrap().len() < 8);
    c.close_ledger().await;

    // Forward, two at a time: the funding payment then the 7 payments.
    let mut seen = Vec::new();
    let mut marker = serde_json::Value::Null;
    loop {
        let mut req = json!({"command": "account_tx", "account": bob.address(), "forward": true, "limit": 2, "api_version": 2});
        if !marker.is_null() {
            req["marker"] = marker.clone();
        }
        let r = c.ok(req).await;
        for t in r["transactions"].as_array().unwrap() {
            assert_eq!(t["validated"], true);
            assert!(t["tx_json"].is_object() && t["meta"].is_object());
            seen.push(t["hash"].as_str().unwrap().to_string());
        }
        marker = r.get("marker").cloned().unwrap_or(serde_json::Value::Null);
        if marker.is_null() {
            break;
        }
    }
    assert_eq!(seen.len(), 8);
    assert_eq!(&seen[1..], &hashes[..]);

    // Backward, API v1 shape, a ledger range.
    let r = c
        .ok(json!({"command": "account_tx", "account": bob.address(), "ledger_index_min": -1, "ledger_index_max": -1, "limit": 3}))
        .await;
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 3);
    assert_eq!(txs[0]["tx"]["hash"], json!(hashes[6]));
    assert!(r.get("marker").is_some());
    let r = c
        .call(json!({"command": "account_tx", "account": bob.address(), "ledger_index_min": 9, "ledger_index_max": 3}))
        .await;
    assert_eq!(r["error"], "lgrIdxsInvalid");

    // A closed ledger lists its transactions, as hashes or expanded.
    let first = c
        .ok(json!({"command": "tx", "transaction": hashes[0], "api_version": 2}))
        .await["ledger_index"]
        .clone();
    let l = c
        .ok(json!({"command": "ledger", "ledger_index": first, "transactions": true}))
        .await;
    assert!(l["ledger"]["transactions"]
        .as_array()
        .unwrap()
        .contains(&json!(hashes[0])));
    let l = c
        .ok(json!({"command": "ledger", "ledger_index": first, "transactions": true, "expand": true, "api_version": 2}))
        .await;
    assert!(l["ledger"]["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["hash"] == json!(hashes[0]) && t["tx_json"]["TransactionType"] == "Payment"));

    // tx in both API versions and in binary.
    let v1 = c
        .ok(json!({"command": "tx", "transaction": hashes[0]}))
        .await;
    assert_eq!(v1["TransactionType"], "Payment");
    assert_eq!(v1["hash"], json!(hashes[0]));
    assert_eq!(v1["validated"], true);
    assert!(v1["inLedger"].is_u64());
    let v2 = c
        .ok(json!({"command": "tx", "transaction": hashes[0], "api_version": 2}))
        .await;
    assert_eq!(v2["tx_json"]["TransactionType"], "Payment");
    assert!(v2["ledger_hash"].is_string() && v2["close_time_iso"].is_string());
    let bin = c
        .ok(json!({"command": "tx", "transaction": hashes[0], "binary": true, "api_version": 2}))
        .await;
    let blob = hex::decode(bin["tx_blob"].as_str().unwrap()).unwrap();
    assert_eq!(
        hex::encode_upper(berth_xrpl_core::hash::transaction_id(&blob)),
        hashes[0]
    );
    net.shutdown().await;
}

#[tokio::test]
async fn json_rpc_over_http_post_on_the_same_port() {
    let net = start().await;
    let body = json!({"method": "account_info", "params": [{"account": GENESIS, "ledger_index": "validated"}]});
    let text = http_post(&net.addr().to_string(), &body.to_string()).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["result"]["status"], "success");
    assert_eq!(v["result"]["account_data"]["Account"], GENESIS);
    let text = http_post(
        &net.addr().to_string(),
        r#"{"method":"nope","params":[{}]}"#,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["result"]["status"], "error");
    assert_eq!(v["result"]["error"], "unknownCmd");
    net.shutdown().await;
}

async fn http_post(host: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[tokio::test]
async fn subscriptions_deliver_ledgers_and_account_transactions() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(100).await;
    let bob = c.funded(100).await;
    let mut sub = Client::connect(&net.url()).await;
    let r = sub
        .ok(json!({"command": "subscribe", "streams": ["ledger"], "accounts": [bob.address()], "api_version": 2}))
        .await;
    assert!(r["ledger_index"].is_u64() && r["reserve_base"] == 10_000_000);

    let pay = c
        .submit(
            &alice,
            json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "5000"}),
        )
        .await;
    let hash = pay["tx_json"]["hash"].clone();
    let seq = c.close_ledger().await - 1;
    let closed = sub.wait_event(|v| v["type"] == "ledgerClosed").await;
    assert_eq!(closed["ledger_index"], seq);
    assert_eq!(closed["txn_count"], 1);
    let t = sub.wait_event(|v| v["type"] == "transaction").await;
    assert_eq!(t["hash"], hash);
    assert_eq!(t["validated"], true);
    assert_eq!(t["engine_result"], "tesSUCCESS");
    assert_eq!(t["tx_json"]["Destination"], json!(bob.address()));
    assert!(t["meta"]["AffectedNodes"].is_array());

    // A transaction not touching bob is not delivered; after unsubscribing nothing is.
    c.submit(
        &alice,
        json!({"TransactionType": "AccountSet", "Domain": "AA"}),
    )
    .await;
    c.close_ledger().await;
    sub.wait_event(|v| v["type"] == "ledgerClosed").await;
    sub.ok(json!({"command": "unsubscribe", "streams": ["ledger"], "accounts": [bob.address()]}))
        .await;
    c.submit(
        &alice,
        json!({"TransactionType": "Payment", "Destination": bob.address(), "Amount": "5000"}),
    )
    .await;
    c.close_ledger().await;
    sub.ok(json!({"command": "ping"})).await;
    assert!(
        !sub.events.iter().any(|v| v["type"] == "transaction"),
        "{:?}",
        sub.events
    );
    net.shutdown().await;
}

#[tokio::test]
async fn ledgers_close_on_the_timer() {
    let net = start_with(berth_localnet::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: std::time::Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let mut c = Client::connect(&net.url()).await;
    c.ok(json!({"command": "subscribe", "streams": ["ledger"]}))
        .await;
    let a = c.wait_event(|v| v["type"] == "ledgerClosed").await;
    let b = c.wait_event(|v| v["type"] == "ledgerClosed").await;
    assert!(b["ledger_index"].as_u64() > a["ledger_index"].as_u64());
    net.shutdown().await;
}

#[tokio::test]
async fn a_restarted_localnet_resumes_from_its_data_dir() {
    let dir = std::env::temp_dir().join(format!("berth-localnet-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = berth_localnet::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        close_interval: std::time::Duration::ZERO,
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let net = start_with(cfg.clone()).await;
    let mut c = Client::connect(&net.url()).await;
    let alice = c.funded(100).await;
    let t = c
        .submit_close(
            &alice,
            json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 1, "Flags": 9}),
        )
        .await;
    let hash = t["hash"].clone();
    let closed = c.ok(json!({"command": "ledger_closed"})).await;
    // Something in the open ledger is lost on restart (rippled's open ledger is too).
    net.shutdown().await;

    let net = start_with(cfg).await;
    let mut c = Client::connect(&net.url()).await;
    assert_eq!(c.ok(json!({"command": "ledger_closed"})).await, closed);
    assert_eq!(c.balance(&alice.address()).await, 100 * XRP - 10);
    let t2 = c
        .ok(json!({"command": "tx", "transaction": hash, "api_version": 2}))
        .await;
    assert_eq!(t2["meta"]["nftoken_id"], t["meta"]["nftoken_id"]);
    let nfts = c
        .ok(json!({"command": "account_nfts", "account": alice.address()}))
        .await;
    assert_eq!(nfts["account_nfts"].as_array().unwrap().len(), 1);
    // The chain goes on from where it was.
    assert_eq!(
        c.close_ledger().await,
        closed["ledger_index"].as_u64().unwrap() + 2
    );
    let l = c
        .ok(json!({"command": "ledger", "ledger_index": "validated"}))
        .await;
    assert_eq!(l["ledger"]["parent_hash"], closed["ledger_hash"]);
    net.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn wallet_fund_is_a_real_payment_from_genesis() {
    let net = start().await;
    let mut c = Client::connect(&net.url()).await;
    let k = KeyPair::generate(KeyType::Ed25519);
    let r = c
        .ok(json!({"command": "wallet_fund", "destination": k.address(), "amount": "25000000"}))
        .await;
    assert_eq!(r["engine_result"], "tesSUCCESS");
    c.close_ledger().await;
    assert_eq!(c.balance(&k.address()).await, 25 * XRP);
    let t = c
        .ok(json!({"command": "tx", "transaction": r["hash"], "api_version": 2}))
        .await;
    assert_eq!(t["tx_json"]["Account"], GENESIS);
    net.shutdown().await;
}
