//! History catch-up and marketplace events over real transactions on a localnet.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_mb_xrpl::events::{self, MarketEvent, Problem};
use berth_mb_xrpl::history::{account_history, HistoryPager};
use berth_mb_xrpl::{Client, SubmitConfig, Submitter, ValidatedTx};
use berth_schemas::memo::{MemoKind, Message};
use berth_schemas::message::ReasonCode;
use berth_xrpl_core::KeyType;
use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Checks the problem a purchase reports.
type ProblemCheck = fn(&Problem) -> bool;

const README: &str = include_str!("../../schemas/README.md");

/// The README's example payload of `memo_type`.
fn example(memo_type: &str) -> String {
    let marker = format!("<!-- example: {memo_type} -->\n```json\n");
    let start = README.find(&marker).unwrap() + marker.len();
    let end = start + README[start..].find("\n```").unwrap();
    README[start..end].to_owned()
}

fn memo(memo_type: &str, data: &str) -> Value {
    json!([{"Memo": {
        "MemoType": hex::encode_upper(memo_type),
        "MemoFormat": hex::encode_upper("application/json"),
        "MemoData": hex::encode_upper(data),
    }}])
}

fn pay(to: &str, drops: u64, memos: Option<Value>) -> Value {
    let mut tx =
        json!({"TransactionType": "Payment", "Destination": to, "Amount": drops.to_string()});
    if let Some(m) = memos {
        tx["Memos"] = m;
    }
    tx
}

fn closer(c: &Client) -> CancellationToken {
    let token = CancellationToken::new();
    let (c, t) = (c.clone(), token.clone());
    tokio::spawn(async move {
        while !t.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = c.request("ledger_accept", json!({})).await;
        }
    });
    token
}

async fn send(s: &Submitter, tx: Value) -> berth_mb_xrpl::Validated {
    let signed = s.prepare(tx).await.unwrap();
    let v = s.submit_and_wait(&signed).await.unwrap();
    assert!(v.is_success(), "{}: {}", v.hash, v.result);
    v
}

async fn validated(c: &Client, hash: &str) -> ValidatedTx {
    let r = c.request("tx", json!({"transaction": hash})).await.unwrap();
    ValidatedTx::from_json(&r).unwrap()
}

/// Mints a lease token and offers it for sale; returns (token id, offer id).
async fn lease_offer(host: &Submitter, price: u64) -> (String, String) {
    let mint = send(
        host,
        json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 0, "Flags": 9,
               "URI": hex::encode_upper("berth:1:0:1000:2048:10240:1000000:3600")}),
    )
    .await;
    let token = mint.meta["nftoken_id"].as_str().unwrap().to_owned();
    let offer = send(
        host,
        json!({"TransactionType": "NFTokenCreateOffer", "NFTokenID": token,
               "Amount": price.to_string(), "Flags": 1}),
    )
    .await;
    (token, offer.meta["offer_id"].as_str().unwrap().to_owned())
}

/// A submitter for a new funded account.
async fn submitter(c: &Client, key_type: KeyType, drops: u64) -> Submitter {
    Submitter::new(c.clone(), funded(c, key_type, drops).await, cfg()).unwrap()
}

fn cfg() -> SubmitConfig {
    SubmitConfig {
        poll_interval: Duration::from_millis(100),
        ..SubmitConfig::default()
    }
}

#[tokio::test]
async fn every_marketplace_event_decodes_and_malformed_memos_carry_reasons() {
    let net = localnet().await;
    let c = client(&net).await;
    let host = submitter(&c, KeyType::Ed25519, 1000 * XRP).await;
    let tenant = submitter(&c, KeyType::Secp256k1, 1000 * XRP).await;
    let registry = funded(&c, KeyType::Ed25519, 20 * XRP).await.address();
    let (h, t) = (host.account().to_owned(), tenant.account().to_owned());
    let stop = closer(&c);

    // Purchase with a valid berth/acquire.
    let (token, offer) = lease_offer(&host, XRP).await;
    let buy = |offer: &str, memos: Option<Value>| {
        let mut tx = json!({"TransactionType": "NFTokenAcceptOffer", "NFTokenSellOffer": offer});
        if let Some(m) = memos {
            tx["Memos"] = m;
        }
        tx
    };
    let v = send(
        &tenant,
        buy(
            &offer,
            Some(memo("berth/acquire", &example("berth/acquire"))),
        ),
    )
    .await;
    let tx = validated(&c, &v.hash).await;
    match events::decode(&tx, &h).unwrap() {
        MarketEvent::Purchase {
            tx_hash,
            buyer,
            token_id,
            offer_id,
            amount_drops,
            request,
        } => {
            assert_eq!(tx_hash, v.hash);
            assert_eq!(buyer, t);
            assert_eq!(token_id, token);
            assert_eq!(offer_id, offer);
            assert_eq!(amount_drops, XRP);
            assert!(request.is_ok(), "{request:?}");
        }
        other => panic!("expected Purchase, got {other:?}"),
    }
    // The buyer's own view of its purchase is no event for it.
    assert_eq!(events::decode(&tx, &t), None);

    // Purchases without a memo, with a malformed one, and with the wrong kind.
    let cases: [(Option<Value>, ProblemCheck); 3] = [
        (None, |p| *p == Problem::MissingMemo),
        (Some(memo("berth/acquire", "{\"v\":1}")), |p| {
            matches!(p, Problem::Malformed(_))
                && p.to_string().contains("berth/acquire")
                && p.to_string().contains("sealed")
        }),
        (Some(memo("berth/extend", &example("berth/extend"))), |p| {
            matches!(
                p,
                Problem::WrongKind {
                    kind: MemoKind::Extend,
                    ..
                }
            )
        }),
    ];
    for (memos, check) in cases {
        let (_, offer) = lease_offer(&host, 2 * XRP).await;
        let v = send(&tenant, buy(&offer, memos)).await;
        match events::decode(&validated(&c, &v.hash).await, &h).unwrap() {
            MarketEvent::Purchase {
                amount_drops,
                request: Err(p),
                ..
            } => {
                assert_eq!(amount_drops, 2 * XRP);
                assert!(check(&p), "{p}");
                assert_eq!(p.code(), ReasonCode::BadPayload);
            }
            other => panic!("expected a Purchase with a problem, got {other:?}"),
        }
    }

    // Requests by payment.
    let v = send(
        &tenant,
        pay(
            &h,
            3 * XRP,
            Some(memo("berth/extend", &example("berth/extend"))),
        ),
    )
    .await;
    assert!(
        matches!(events::decode(&validated(&c, &v.hash).await, &h).unwrap(),
        MarketEvent::Extend { sender, amount_drops, .. } if sender == t && amount_drops == 3 * XRP)
    );
    let v = send(
        &tenant,
        pay(
            &h,
            1,
            Some(memo("berth/terminate", &example("berth/terminate"))),
        ),
    )
    .await;
    assert!(
        matches!(events::decode(&validated(&c, &v.hash).await, &h).unwrap(),
        MarketEvent::Terminate { sender, amount_drops: 1, .. } if sender == t)
    );

    // Money without a usable request: always an event with a named reason.
    let bad: [(Option<Value>, Option<MemoKind>, &str); 5] = [
        (None, None, "no Berth memo"),
        (
            Some(memo("berth/extend", "{\"lease\":\"0707\",\"v\":1}")),
            Some(MemoKind::Extend),
            "lease",
        ),
        (
            Some(memo("berth/extend", "{\"lease\":\"0707\",\"v\":2}")),
            Some(MemoKind::Extend),
            "version",
        ),
        (
            Some(memo("berth/acquire", &example("berth/acquire"))),
            Some(MemoKind::Acquire),
            "cannot ride on a Payment",
        ),
        (Some(memo("berth/launch", "{}")), None, "berth/launch"),
    ];
    for (memos, kind, text) in bad {
        let v = send(&tenant, pay(&h, 5 * XRP, memos)).await;
        match events::decode(&validated(&c, &v.hash).await, &h).unwrap() {
            MarketEvent::Unrequested {
                sender,
                amount_drops,
                kind: k,
                reason,
                ..
            } => {
                assert_eq!(sender, t);
                assert_eq!(amount_drops, 5 * XRP);
                assert_eq!(k, kind, "{reason}");
                assert!(reason.to_string().contains(text), "{reason} lacks {text}");
                if text == "version" {
                    assert_eq!(reason.code(), ReasonCode::UnsupportedVersion);
                }
            }
            other => panic!("expected Unrequested, got {other:?}"),
        }
    }

    // Answers, seen by both sides.
    for kind in [
        "berth/acquire-ok",
        "berth/acquire-err",
        "berth/extend-ok",
        "berth/extend-err",
        "berth/terminate-ok",
        "berth/terminate-err",
        "berth/refund",
    ] {
        let v = send(&host, pay(&t, 1, Some(memo(kind, &example(kind))))).await;
        let tx = validated(&c, &v.hash).await;
        for account in [&h, &t] {
            match events::decode(&tx, account).unwrap() {
                MarketEvent::Answer {
                    from,
                    to,
                    amount_drops: 1,
                    request,
                    message,
                    ..
                } => {
                    assert_eq!((from.as_str(), to.as_str()), (h.as_str(), t.as_str()));
                    assert_eq!(message.kind().as_str(), kind);
                    assert_eq!(Some(request), message.answers());
                }
                other => panic!("expected Answer for {kind}, got {other:?}"),
            }
        }
    }

    // Registry messages.
    let v = send(
        &host,
        pay(
            &registry,
            1,
            Some(memo("berth/host-reg", &example("berth/host-reg"))),
        ),
    )
    .await;
    assert!(
        matches!(events::decode(&validated(&c, &v.hash).await, &registry).unwrap(),
        MarketEvent::HostRegistration { host: x, close_time_unix: Some(_), .. } if x == h)
    );
    let v = send(
        &host,
        pay(
            &registry,
            1,
            Some(memo("berth/heartbeat", &example("berth/heartbeat"))),
        ),
    )
    .await;
    let hb = validated(&c, &v.hash).await;
    for account in [&registry, &h] {
        assert!(matches!(events::decode(&hb, account).unwrap(),
            MarketEvent::Heartbeat { host: x, heartbeat, .. } if x == h && heartbeat.free_slots == 3));
    }
    let v = send(
        &host,
        pay(
            &registry,
            1,
            Some(memo("berth/host-dereg", &example("berth/host-dereg"))),
        ),
    )
    .await;
    assert!(
        matches!(events::decode(&validated(&c, &v.hash).await, &registry).unwrap(),
        MarketEvent::HostDeregistration { host: x, .. } if x == h)
    );

    // Transactions of other kinds or of other accounts are no events; a tec moved nothing.
    let mint = send(
        &host,
        json!({"TransactionType": "NFTokenMint", "NFTokenTaxon": 1}),
    )
    .await;
    assert_eq!(events::decode(&validated(&c, &mint.hash).await, &h), None);
    assert_eq!(events::decode(&hb, &t), None);
    let signed = tenant
        .prepare(pay(
            &berth_xrpl_core::KeyPair::generate(KeyType::Ed25519).address(),
            1,
            None,
        ))
        .await
        .unwrap();
    let tec = tenant.submit_and_wait(&signed).await.unwrap();
    assert!(tec.result.starts_with("tec"));
    assert_eq!(events::decode(&validated(&c, &tec.hash).await, &h), None);
    stop.cancel();
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn history_catches_up_across_pages_from_a_cursor_in_ledger_order() {
    let net = localnet().await;
    let c = client(&net).await;
    let host = funded(&c, KeyType::Ed25519, 1000 * XRP).await.address();
    let tenant = submitter(&c, KeyType::Ed25519, 1000 * XRP).await;
    // Ledger 1: 3 payments; then 4 more ledgers of 2 payments each.
    let mut sent = Vec::new();
    let mut cursor = 0;
    for round in 0..5 {
        let n = if round == 0 { 3 } else { 2 };
        let mut batch = Vec::new();
        for i in 0..n {
            batch.push(tenant.prepare(pay(&host, 1000 + i, None)).await.unwrap());
        }
        for s in &batch {
            let r = c
                .request("submit", json!({"tx_blob": s.blob}))
                .await
                .unwrap();
            assert_eq!(r["engine_result"], "tesSUCCESS");
        }
        let ledger = accept(&c).await;
        if round == 1 {
            cursor = ledger;
        }
        sent.extend(batch.into_iter().map(|s| (ledger, s.hash)));
    }
    let expected: Vec<_> = sent
        .iter()
        .filter(|(l, _)| *l >= cursor)
        .map(|(_, h)| h.clone())
        .collect();
    assert_eq!(expected.len(), 8);

    let mut pager = HistoryPager::new(c.clone(), host.clone(), cursor).page_size(3);
    let mut pages = 0;
    let mut got = Vec::new();
    while let Some(page) = pager.next_page().await.unwrap() {
        assert!(page.len() <= 3);
        pages += 1;
        got.extend(page);
    }
    assert!(pages >= 3, "{pages} pages");
    let hashes: Vec<_> = got.iter().map(|t| t.hash.clone()).collect();
    assert_eq!(hashes, expected);
    assert!(got
        .windows(2)
        .all(|w| w[0].ledger_index <= w[1].ledger_index));
    let top = pager.validated_ledger().unwrap();

    // Nothing new: the next read from top + 1 is empty; new transactions appear after it.
    let h = account_history(&c, &host, top + 1).await.unwrap();
    assert!(h.transactions.is_empty());
    assert_eq!(h.validated_ledger, top);
    let s = tenant.prepare(pay(&host, 7, None)).await.unwrap();
    c.request("submit", json!({"tx_blob": s.blob}))
        .await
        .unwrap();
    let l = accept(&c).await;
    let h = account_history(&c, &host, top + 1).await.unwrap();
    assert_eq!(h.transactions.len(), 1);
    assert_eq!(h.transactions[0].hash, s.hash);
    assert_eq!(h.transactions[0].ledger_index, l);
    assert_eq!(h.validated_ledger, l);
    assert!(h.transactions.iter().all(|t| t.result == "tesSUCCESS"));
    c.shutdown().await;
    net.shutdown().await;
}

#[test]
fn the_readme_examples_are_berth_messages() {
    for kind in MemoKind::ALL {
        let m = berth_schemas::memo::Memo {
            memo_type: kind.as_str().as_bytes().to_vec(),
            memo_format: b"application/json".to_vec(),
            memo_data: example(kind.as_str()).into_bytes(),
        };
        assert_eq!(Message::from_memo(&m).unwrap().kind(), *kind);
    }
}

/// A plain TCP forwarder to `backend` on `listen`; aborting the task cuts every connection.
async fn forwarder(
    listen: std::net::SocketAddr,
    backend: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            conns.spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, task)
}

/// The pattern the agent follows: the stream misses what happens while the connection is
/// down; after `Reconnected`, history from the cursor recovers it.
#[tokio::test]
async fn transactions_missed_while_disconnected_are_recovered_from_history() {
    let net = localnet().await;
    let direct = client(&net).await;
    let watched = funded(&direct, KeyType::Ed25519, 100 * XRP).await.address();
    let payer = submitter(&direct, KeyType::Ed25519, 100 * XRP).await;
    let (addr, cut) = forwarder("127.0.0.1:0".parse().unwrap(), net.addr()).await;
    let c = Client::connect(config(&[format!("ws://{addr}/")]))
        .await
        .unwrap();
    let mut rx = c.events();
    c.subscribe_accounts(std::slice::from_ref(&watched))
        .await
        .unwrap();
    let cursor = c.validated_ledger_index().await.unwrap() + 1;

    cut.abort();
    let _ = cut.await;
    let mut missed = Vec::new();
    for drops in [1000, 2000] {
        let s = payer.prepare(pay(&watched, drops, None)).await.unwrap();
        direct
            .request("submit", json!({"tx_blob": s.blob}))
            .await
            .unwrap();
        missed.push(s.hash);
    }
    accept(&direct).await;
    let (_, restored) = forwarder(addr, net.addr()).await;
    let mut streamed = Vec::new();
    loop {
        match next_event(&mut rx, |_| true).await {
            berth_mb_xrpl::StreamEvent::Reconnected { .. } => break,
            berth_mb_xrpl::StreamEvent::Transaction(tx) => streamed.push(tx.hash),
            _ => {}
        }
    }
    assert!(
        streamed.iter().all(|h| !missed.contains(h)),
        "the stream could not see them"
    );
    let h = account_history(&c, &watched, cursor).await.unwrap();
    let recovered: Vec<_> = h.transactions.iter().map(|t| t.hash.clone()).collect();
    assert_eq!(recovered, missed);
    // And the renewed subscription delivers what comes next.
    let s = payer.prepare(pay(&watched, 3000, None)).await.unwrap();
    direct
        .request("submit", json!({"tx_blob": s.blob}))
        .await
        .unwrap();
    accept(&direct).await;
    let e = next_event(&mut rx, |e| {
        matches!(e, berth_mb_xrpl::StreamEvent::Transaction(_))
    })
    .await;
    assert!(matches!(e, berth_mb_xrpl::StreamEvent::Transaction(tx) if tx.hash == s.hash));
    restored.abort();
    c.shutdown().await;
    direct.shutdown().await;
    net.shutdown().await;
}
