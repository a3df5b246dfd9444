//! The WebSocket client against an in-process localnet.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_mb_xrpl::{Client, ClientError, StreamEvent};
use berth_xrpl_core::KeyType;
use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn requests_return_results_and_errors_carry_tokens() {
    let net = localnet().await;
    let c = client(&net).await;
    let info = c.request("server_info", json!({})).await.unwrap();
    assert!(info["info"].is_object(), "{info}");
    assert_eq!(c.connected_url().as_deref(), Some(net.url().as_str()));

    let err = c
        .request(
            "account_info",
            json!({"account": "rPEPPER7kfTD9w2To4CQk6UCfuHM9c6GDY"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.rpc_error(), Some("actNotFound"), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&net.url()) && text.contains("account_info"),
        "{text}"
    );

    let err = c.request("no_such_method", json!({})).await.unwrap_err();
    assert_eq!(err.rpc_error(), Some("unknownCmd"), "{err}");

    let err = c.request("ping", json!("not an object")).await.unwrap_err();
    assert!(matches!(err, ClientError::BadRequest { .. }), "{err}");

    // Many requests at once are routed to their own callers by id.
    let calls = (0..20).map(|_| c.request("ledger_current", json!({})));
    for r in futures_util::future::join_all(calls).await {
        assert!(r.unwrap()["ledger_current_index"].as_u64().is_some());
    }
    c.shutdown().await;
    let err = c.request("ping", json!({})).await.unwrap_err();
    assert!(matches!(err, ClientError::Shutdown { .. }), "{err}");
    net.shutdown().await;
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let ws = || config(&["wss://127.0.0.1:1/".into()]);
    let mut slow_backoff = ws();
    slow_backoff.backoff_max = Duration::from_millis(1);
    let mut bad_root = ws();
    bad_root.tls_root_certs_der = Some(vec![b"not a certificate".to_vec()]);
    let mut no_roots = ws();
    no_roots.tls_root_certs_der = Some(Vec::new());
    let cases = [
        (config(&[]), "urls", "at least one"),
        (
            config(&["http://127.0.0.1:1/".into()]),
            "urls",
            "http://127.0.0.1:1/",
        ),
        (slow_backoff, "backoff_max", "backoff_initial"),
        (bad_root, "tls_root_certs_der", "certificate #0"),
        (no_roots, "tls_root_certs_der", "trust no server"),
    ];
    for (cfg, key, text) in cases {
        match Client::start(cfg).unwrap_err() {
            ClientError::Config { key: k, message } => {
                assert_eq!(k, key);
                assert!(message.contains(text), "{message} lacks {text}");
            }
            other => panic!("expected a config error for {key}, got {other}"),
        }
    }
}

#[tokio::test]
async fn subscriptions_deliver_ledgers_and_account_transactions() {
    let net = localnet().await;
    let c = client(&net).await;
    let key = berth_xrpl_core::KeyPair::generate(KeyType::Ed25519);
    let mut rx = c.events();
    c.subscribe_ledger().await.unwrap();
    c.subscribe_accounts(&[key.address()]).await.unwrap();
    let err = c
        .subscribe_accounts(&["not-an-address".to_owned()])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::BadRequest { .. }), "{err}");
    assert!(err.to_string().contains("not-an-address"), "{err}");
    let fund = c
        .request(
            "wallet_fund",
            json!({"destination": key.address(), "amount": "50000000"}),
        )
        .await
        .unwrap();
    let hash = fund["tx_json"]["hash"].as_str().unwrap().to_owned();
    let closed = accept(&c).await;
    let e = next_event(&mut rx, |e| matches!(e, StreamEvent::LedgerClosed { .. })).await;
    let StreamEvent::LedgerClosed {
        index,
        hash: lh,
        time,
    } = e
    else {
        unreachable!()
    };
    assert_eq!(index, closed);
    assert_eq!(lh.len(), 64);
    assert!(time > 946_684_800, "{time}");
    let e = next_event(&mut rx, |e| matches!(e, StreamEvent::Transaction(_))).await;
    let StreamEvent::Transaction(tx) = e else {
        unreachable!()
    };
    assert_eq!(tx.hash, hash);
    assert_eq!(tx.ledger_index, closed);
    assert_eq!(tx.result, "tesSUCCESS");
    assert_eq!(tx.tx_type(), "Payment");
    assert_eq!(tx.tx["Destination"], key.address());
    assert!(tx.meta["AffectedNodes"].is_array());
    assert!(tx.close_time_unix.is_some());
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn restart_on_the_same_port_reconnects_resubscribes_and_requests_work() {
    let dir = tempfile::tempdir().unwrap();
    let net = localnet_with(Some(dir.path().to_owned()), "127.0.0.1:0", 10).await;
    let addr = net.addr();
    let c = client(&net).await;
    let key = berth_xrpl_core::KeyPair::generate(KeyType::Secp256k1);
    let mut rx = c.events();
    c.subscribe_ledger().await.unwrap();
    c.subscribe_accounts(&[key.address()]).await.unwrap();
    accept(&c).await;
    next_event(&mut rx, |e| matches!(e, StreamEvent::LedgerClosed { .. })).await;

    net.shutdown().await;
    // A read issued while the server is down waits and is answered after the restart.
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { c.request("ledger_current", json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.connected_url(), None);
    let net = localnet_with(Some(dir.path().to_owned()), &addr.to_string(), 10).await;
    let e = next_event(&mut rx, |e| matches!(e, StreamEvent::Reconnected { .. })).await;
    assert_eq!(e, StreamEvent::Reconnected { url: net.url() });
    assert!(pending.await.unwrap().unwrap()["ledger_current_index"]
        .as_u64()
        .is_some());

    // Subscriptions were renewed: ledger closes and account transactions arrive again.
    let fund = c
        .request(
            "wallet_fund",
            json!({"destination": key.address(), "amount": "50000000"}),
        )
        .await
        .unwrap();
    let hash = fund["tx_json"]["hash"].as_str().unwrap().to_owned();
    accept(&c).await;
    next_event(&mut rx, |e| matches!(e, StreamEvent::LedgerClosed { .. })).await;
    let e = next_event(&mut rx, |e| matches!(e, StreamEvent::Transaction(_))).await;
    let StreamEvent::Transaction(tx) = e else {
        unreachable!()
    };
    assert_eq!(tx.hash, hash);
    c.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn a_dead_primary_falls_back_to_the_second_server() {
    let net = localnet().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/", l.local_addr().unwrap())
    };
    let c = Client::connect(config(&[dead.clone(), net.url()]))
        .await
        .unwrap();
    assert_eq!(c.connected_url().as_deref(), Some(net.url().as_str()));
    c.request("ping", json!({})).await.unwrap();
    c.shutdown().await;

    let mut cfg = config(std::slice::from_ref(&dead));
    cfg.request_timeout = Duration::from_millis(800);
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectFailed { .. }), "{err}");
    assert!(err.to_string().contains(&dead), "{err}");
    net.shutdown().await;
}

/// A scripted WebSocket server (not rippled: it reads one request and hangs up) shows what
/// happens to requests in flight on a dropped connection.
#[tokio::test]
async fn in_flight_submit_fails_and_in_flight_read_is_retried_with_a_scripted_server() {
    let net = localnet().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flaky = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        // Two connections: each reads one request and hangs up without answering.
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _ = ws.next().await;
            let _ = ws.close(None).await;
        }
    });
    let c = Client::connect(config(&[flaky.clone(), net.url()]))
        .await
        .unwrap();
    assert_eq!(c.connected_url().as_deref(), Some(flaky.as_str()));
    let err = c
        .request("submit", json!({"tx_blob": "00"}))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err}");
    assert!(err.to_string().contains("submit"), "{err}");
    // The next connection is the flaky one again (primary first); the read it swallows is
    // sent again on the connection after that (the localnet).
    let r = c.request("ledger_current", json!({})).await.unwrap();
    assert!(r["ledger_current_index"].as_u64().is_some());
    assert_eq!(c.connected_url().as_deref(), Some(net.url().as_str()));
    server.await.unwrap();
    c.shutdown().await;
    net.shutdown().await;
}

/// A scripted WebSocket server (not rippled) that accepts and then stays silent: requests
/// time out naming server and method, and the silent connection is replaced by a fallback.
#[tokio::test]
async fn a_silent_server_times_out_requests_and_is_replaced_with_a_scripted_server() {
    let net = localnet().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Never read (so pings go unanswered), hold the socket for a while.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(ws);
    });
    let mut cfg = config(&[silent.clone(), net.url()]);
    cfg.ping_interval = Duration::from_millis(300);
    let c = Client::connect(cfg).await.unwrap();
    assert_eq!(c.connected_url().as_deref(), Some(silent.as_str()));
    let err = c
        .request_with_timeout("server_info", json!({}), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&silent) && text.contains("server_info"),
        "{text}"
    );
    // After two ping intervals of silence the client moves to the next server.
    let mut rx = c.events();
    let e = next_event(&mut rx, |e| matches!(e, StreamEvent::Reconnected { .. })).await;
    assert_eq!(e, StreamEvent::Reconnected { url: net.url() });
    c.request("ping", json!({})).await.unwrap();
    server.abort();
    c.shutdown().await;
    net.shutdown().await;
}

/// `wss://` for real: a rustls TLS terminator (test-made, with a private CA) in front of the
/// localnet. Without that CA the handshake fails; trusting it, requests and streams work.
#[tokio::test]
async fn wss_through_a_tls_terminator_with_a_private_ca() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;

    let net = localnet().await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = certified.cert.der().to_vec();
    let key_der = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der.clone())],
            PrivateKeyDer::Pkcs8(key_der),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = net.addr();
    let proxy = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    let url = format!("wss://localhost:{port}/");

    let mut cfg = config(std::slice::from_ref(&url));
    cfg.request_timeout = Duration::from_secs(1);
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectFailed { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    let mut cfg = config(std::slice::from_ref(&url));
    cfg.tls_root_certs_der = Some(vec![cert_der]);
    let c = Client::connect(cfg).await.unwrap();
    assert_eq!(c.connected_url().as_deref(), Some(url.as_str()));
    let mut rx = c.events();
    c.subscribe_ledger().await.unwrap();
    let closed = accept(&c).await;
    let e = next_event(&mut rx, |e| matches!(e, StreamEvent::LedgerClosed { .. })).await;
    assert!(matches!(e, StreamEvent::LedgerClosed { index, .. } if index == closed));
    c.shutdown().await;
    proxy.abort();
    net.shutdown().await;
}
