//! The peer port over real TLS WebSocket on 127.0.0.1: handshake, one session per key,
//! refusals, redialing and bad frames, driven through the library API and a raw client.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use berth_hotpocket::peer::net::{Inbound, PeerConfig, PeerNet};
use berth_hotpocket::peer::wire::{
    self, challenge_message, ChallengeResponse, Hello, NodeKey, PeerMsg, Proposal, RefuseReason,
    Sig, WireLcl,
};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CONTRACT: &str = "3c4a1b2e-peer-net-test";
const TIME_CONFIG: u64 = 100_025;
const MAX_FRAME: usize = 64 * 1024;
const WAIT: Duration = Duration::from_secs(15);

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

struct TestNode {
    net: PeerNet,
    key: NodeKey,
    inbound: mpsc::Receiver<Inbound>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    _dir: tempfile::TempDir,
}

impl TestNode {
    async fn start(n: u8, contract: &str, time_config: u64, listen: SocketAddr) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let (tx, inbound) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let net = PeerNet::start(
            PeerConfig {
                listen,
                known_peers: Vec::new(),
                contract_id: contract.to_owned(),
                time_config,
                max_frame_bytes: MAX_FRAME,
            },
            key(n),
            berth_hotpocket::tls::server_config(dir.path()).unwrap(),
            berth_hotpocket::tls::peer_client_config().unwrap(),
            tx,
            cancel.clone(),
            tracker.clone(),
        )
        .await
        .unwrap();
        TestNode {
            net,
            key: NodeKey::of(&key(n)),
            inbound,
            cancel,
            tracker,
            _dir: dir,
        }
    }

    async fn any(n: u8) -> TestNode {
        TestNode::start(n, CONTRACT, TIME_CONFIG, "127.0.0.1:0".parse().unwrap()).await
    }

    fn addr(&self) -> String {
        self.net.local_addr().to_string()
    }

    fn peer_keys(&self) -> Vec<NodeKey> {
        self.net.peers().into_iter().map(|p| p.key).collect()
    }

    async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(WAIT, self.tracker.wait())
            .await
            .expect("peer tasks stop on cancel");
    }

    /// The next consensus message, within `WAIT`.
    async fn recv(&mut self) -> Inbound {
        tokio::time::timeout(WAIT, self.inbound.recv())
            .await
            .expect("a peer message arrives")
            .expect("inbound open")
    }
}

/// Waits until `cond` holds (polling), panicking with `what` after `WAIT`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn proposal(k: &SigningKey, stage: u8) -> Proposal {
    Proposal {
        node: NodeKey([0; 32]),
        stage,
        time: 1_000,
        lcl: WireLcl {
            seq_no: 4,
            hash: [4; 32],
        },
        state_hash: [1; 32],
        patch_hash: [2; 32],
        output_hash: [3; 32],
        output_sig: Sig([0; 64]),
        install: [0; 32],
        inputs: vec![[5; 32]],
        sig: Sig([0; 64]),
    }
    .sign(k)
}

/// Two nodes agree on one session: each lists the other once and they are the two ends of
/// the same connection (one outbound, the other inbound).
fn one_session_each(a: &TestNode, b: &TestNode) -> bool {
    let pa: Vec<_> = a
        .net
        .peers()
        .into_iter()
        .filter(|p| p.key == b.key)
        .collect();
    let pb: Vec<_> = b
        .net
        .peers()
        .into_iter()
        .filter(|p| p.key == a.key)
        .collect();
    pa.len() == 1 && pb.len() == 1 && pa[0].outbound != pb[0].outbound
}

type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw TLS WebSocket connection to a node's peer port.
async fn raw_connect(addr: &str) -> Raw {
    let tls = berth_hotpocket::tls::peer_client_config().unwrap();
    let config = WebSocketConfig {
        max_message_size: Some(4 * MAX_FRAME),
        max_frame_size: Some(4 * MAX_FRAME),
        ..Default::default()
    };
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://{addr}/"),
            Some(config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    ws
}

/// The next peer message from a raw connection; None when it closed.
async fn raw_recv(ws: &mut Raw) -> Option<PeerMsg> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the node answers or closes in time")?;
        match msg {
            Ok(Message::Binary(b)) => return Some(wire::decode(&b, MAX_FRAME).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn raw_send(ws: &mut Raw, msg: &PeerMsg) {
    ws.send(Message::Binary(wire::encode(msg))).await.unwrap();
}

/// Reads the node's hello, sends ours; returns the node's challenge.
async fn raw_hello(ws: &mut Raw, contract: &str, time_config: u64) -> [u8; 16] {
    let Some(PeerMsg::Hello(theirs)) = raw_recv(ws).await else {
        panic!("the node speaks first with a hello");
    };
    raw_send(
        ws,
        &PeerMsg::Hello(Hello {
            contract_id: contract.to_owned(),
            time_config,
            challenge: [7; 16],
        }),
    )
    .await;
    theirs.challenge
}

/// Completes the handshake as `k`; returns once the node's answer verified.
async fn raw_verified(addr: &str, k: &SigningKey) -> Raw {
    let mut ws = raw_connect(addr).await;
    let challenge = raw_hello(&mut ws, CONTRACT, TIME_CONFIG).await;
    let Some(PeerMsg::ChallengeResponse(answer)) = raw_recv(&mut ws).await else {
        panic!("the node answers our challenge");
    };
    assert!(answer
        .node
        .verifies(&challenge_message(&[7; 16], CONTRACT), &answer.sig));
    raw_send(
        &mut ws,
        &PeerMsg::ChallengeResponse(ChallengeResponse {
            node: NodeKey::of(k),
            sig: Sig::sign(k, &challenge_message(&challenge, CONTRACT)),
        }),
    )
    .await;
    ws
}

/// Reads until a refusal (skipping the hello and answer); None when closed without one.
async fn raw_refusal(ws: &mut Raw) -> Option<wire::Refuse> {
    loop {
        match raw_recv(ws).await? {
            PeerMsg::Refuse(r) => return Some(r),
            PeerMsg::Hello(_) | PeerMsg::ChallengeResponse(_) => {}
            other => panic!("unexpected {} before the refusal", other.kind()),
        }
    }
}

#[tokio::test]
async fn three_nodes_verify_each_other_once_and_get_broadcasts() {
    init_tracing();
    let mut nodes = vec![
        TestNode::any(1).await,
        TestNode::any(2).await,
        TestNode::any(3).await,
    ];
    let addrs: Vec<String> = nodes.iter().map(TestNode::addr).collect();
    // Everyone dials everyone (itself too: refused as its own key).
    for node in &nodes {
        node.net.set_known_peers(addrs.clone());
    }
    until("every pair keeps exactly one shared session", || {
        nodes.iter().all(|n| n.net.peers().len() == 2)
            && one_session_each(&nodes[0], &nodes[1])
            && one_session_each(&nodes[0], &nodes[2])
            && one_session_each(&nodes[1], &nodes[2])
    })
    .await;
    for n in &nodes {
        let keys = n.peer_keys();
        for other in nodes.iter().filter(|o| o.key != n.key) {
            assert_eq!(keys.iter().filter(|k| **k == other.key).count(), 1);
        }
        assert!(!keys.contains(&n.key), "a node never lists itself");
    }

    let p = proposal(&key(1), 1);
    nodes[0].net.broadcast(&PeerMsg::Proposal(p.clone()));
    for n in &mut nodes[1..] {
        let got = n.recv().await;
        assert_eq!(got.from, NodeKey::of(&key(1)));
        assert_eq!(got.msg, PeerMsg::Proposal(p.clone()));
    }

    let to = nodes[0].key;
    let p = proposal(&key(3), 2);
    assert!(nodes[2].net.send(&to, &PeerMsg::Proposal(p.clone())));
    let got = nodes[0].recv().await;
    assert_eq!(got.from, NodeKey::of(&key(3)));
    assert_eq!(got.msg, PeerMsg::Proposal(p));
    assert!(!nodes[2].net.send(
        &NodeKey::of(&key(9)),
        &PeerMsg::Proposal(proposal(&key(3), 2))
    ));

    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn another_contract_id_is_refused() {
    init_tracing();
    let a = TestNode::any(1).await;
    let b = TestNode::start(
        2,
        "another-contract",
        TIME_CONFIG,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    b.net.set_known_peers(vec![a.addr()]);
    a.net.set_known_peers(vec![b.addr()]);

    let mut ws = raw_connect(&a.addr()).await;
    raw_hello(&mut ws, "another-contract", TIME_CONFIG).await;
    let refusal = raw_refusal(&mut ws).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::ContractIdMismatch);
    assert!(
        refusal.detail.contains("another-contract"),
        "{}",
        refusal.detail
    );
    assert!(refusal.detail.contains(CONTRACT), "{}", refusal.detail);
    assert!(
        raw_recv(&mut ws).await.is_none(),
        "closed after the refusal"
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(a.net.peers().is_empty());
    assert!(b.net.peers().is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn another_time_config_is_refused_until_it_matches() {
    init_tracing();
    let a = TestNode::any(1).await;
    let b = TestNode::start(2, CONTRACT, TIME_CONFIG + 1, "127.0.0.1:0".parse().unwrap()).await;

    let mut ws = raw_connect(&a.addr()).await;
    raw_hello(&mut ws, CONTRACT, TIME_CONFIG + 1).await;
    let refusal = raw_refusal(&mut ws).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::TimeConfigMismatch);
    assert!(
        refusal.detail.contains(&TIME_CONFIG.to_string()),
        "{}",
        refusal.detail
    );
    assert!(
        refusal.detail.contains(&(TIME_CONFIG + 1).to_string()),
        "{}",
        refusal.detail
    );

    // Only b dials: it keeps trying (slowly) and gets in once a announces b's config.
    b.net.set_known_peers(vec![a.addr()]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(a.net.peers().is_empty());
    assert!(b.net.peers().is_empty());
    a.net.set_time_config(TIME_CONFIG + 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while !one_session_each(&a, &b) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b redials after a time_config change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_bad_challenge_answer_is_refused_and_silence_is_dropped() {
    init_tracing();
    let a = TestNode::any(1).await;

    let mut ws = raw_connect(&a.addr()).await;
    let challenge = raw_hello(&mut ws, CONTRACT, TIME_CONFIG).await;
    // Signed by another key than the one claimed.
    raw_send(
        &mut ws,
        &PeerMsg::ChallengeResponse(ChallengeResponse {
            node: NodeKey::of(&key(5)),
            sig: Sig::sign(&key(6), &challenge_message(&challenge, CONTRACT)),
        }),
    )
    .await;
    let refusal = raw_refusal(&mut ws).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::BadChallengeResponse);

    // The answer to a challenge of another contract does not verify either.
    let mut ws = raw_connect(&a.addr()).await;
    let challenge = raw_hello(&mut ws, CONTRACT, TIME_CONFIG).await;
    raw_send(
        &mut ws,
        &PeerMsg::ChallengeResponse(ChallengeResponse {
            node: NodeKey::of(&key(5)),
            sig: Sig::sign(&key(5), &challenge_message(&challenge, "other")),
        }),
    )
    .await;
    let refusal = raw_refusal(&mut ws).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::BadChallengeResponse);

    // Another protocol version is refused as such.
    let mut ws = raw_connect(&a.addr()).await;
    let Some(PeerMsg::Hello(_)) = raw_recv(&mut ws).await else {
        panic!("a hello first");
    };
    let mut hello = wire::encode(&PeerMsg::Hello(Hello {
        contract_id: CONTRACT.to_owned(),
        time_config: TIME_CONFIG,
        challenge: [7; 16],
    }));
    hello[0] = 9;
    ws.send(Message::Binary(hello)).await.unwrap();
    let refusal = raw_refusal(&mut ws).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::Version);

    // Its own key is refused.
    let mut ws = raw_verified(&a.addr(), &key(1)).await;
    let refusal = raw_refusal(&mut ws).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::OwnKey);

    // Silence: the hello is read, nothing is answered; the node hangs up (after 5 s).
    let mut ws = raw_connect(&a.addr()).await;
    let Some(PeerMsg::Hello(_)) = raw_recv(&mut ws).await else {
        panic!("a hello first");
    };
    let started = std::time::Instant::now();
    assert!(
        raw_recv(&mut ws).await.is_none(),
        "dropped without a message"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(a.net.peers().is_empty());
    a.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_comes_back_is_redialed() {
    init_tracing();
    let a = TestNode::any(1).await;
    let b = TestNode::any(2).await;
    let b_addr = b.net.local_addr();
    a.net.set_known_peers(vec![b.addr()]);
    until("a dials b", || one_session_each(&a, &b)).await;

    b.shutdown().await;
    until("a sees b gone", || a.net.peers().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Back on the same port, dialing nobody itself: a must redial.
    let mut b = TestNode::start(2, CONTRACT, TIME_CONFIG, b_addr).await;
    until("a redials b", || one_session_each(&a, &b)).await;
    let status = a.net.peers();
    assert_eq!(status.len(), 1);
    assert!(status[0].outbound);
    assert_eq!(status[0].addr, b_addr);

    let p = proposal(&key(1), 0);
    a.net.broadcast(&PeerMsg::Proposal(p.clone()));
    let got = b.recv().await;
    assert_eq!(got.from, a.key);
    assert_eq!(got.msg, PeerMsg::Proposal(p));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn bad_frames_from_a_verified_peer_are_dropped() {
    init_tracing();
    let mut a = TestNode::any(1).await;
    let c = TestNode::any(3).await;
    c.net.set_known_peers(vec![a.addr()]);
    until("c and a peer", || one_session_each(&a, &c)).await;

    let raw_key = key(2);
    let mut ws = raw_verified(&a.addr(), &raw_key).await;
    until("a lists the raw peer", || {
        a.peer_keys().contains(&NodeKey::of(&raw_key))
    })
    .await;

    // Malformed frames, a text frame, another version, handshake messages: dropped, the
    // session stays.
    ws.send(Message::Binary(vec![1, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    ws.send(Message::Binary(Vec::new())).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    let mut other_version = wire::encode(&PeerMsg::Proposal(proposal(&raw_key, 1)));
    other_version[0] = 9;
    ws.send(Message::Binary(other_version)).await.unwrap();
    raw_send(
        &mut ws,
        &PeerMsg::Hello(Hello {
            contract_id: CONTRACT.to_owned(),
            time_config: TIME_CONFIG,
            challenge: [1; 16],
        }),
    )
    .await;
    // A good message after them arrives.
    let good = proposal(&raw_key, 1);
    raw_send(&mut ws, &PeerMsg::Proposal(good.clone())).await;
    let got = a.recv().await;
    assert_eq!(got.from, NodeKey::of(&raw_key));
    assert_eq!(got.msg, PeerMsg::Proposal(good));
    assert!(a.peer_keys().contains(&NodeKey::of(&raw_key)));

    // An oversized frame ends that session; nothing of it is delivered.
    let mut big = proposal(&raw_key, 2);
    big.inputs = (0..=(MAX_FRAME / 32) as u32)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            h
        })
        .collect();
    let big = big.sign(&raw_key);
    let _ = ws
        .send(Message::Binary(wire::encode(&PeerMsg::Proposal(big))))
        .await;
    until("the oversized sender is dropped", || {
        !a.peer_keys().contains(&NodeKey::of(&raw_key))
    })
    .await;

    // The well-behaved peer is unaffected.
    assert!(one_session_each(&a, &c));
    let p = proposal(&key(3), 3);
    c.net.broadcast(&PeerMsg::Proposal(p.clone()));
    let got = a.recv().await;
    assert_eq!(got.from, c.key, "nothing from the bad peer was delivered");
    assert_eq!(got.msg, PeerMsg::Proposal(p));

    // Too many bad frames end a session too.
    let mut ws = raw_verified(&a.addr(), &raw_key).await;
    until("a lists the raw peer again", || {
        a.peer_keys().contains(&NodeKey::of(&raw_key))
    })
    .await;
    for _ in 0..16 {
        if ws.send(Message::Binary(vec![1, 0xff])).await.is_err() {
            break;
        }
    }
    until("the noisy peer is dropped", || {
        !a.peer_keys().contains(&NodeKey::of(&raw_key))
    })
    .await;
    assert!(a.inbound.try_recv().is_err(), "no bad frame was delivered");
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_second_session_of_a_key_replaces_the_first_dialed_the_same_way() {
    init_tracing();
    let a = TestNode::any(1).await;
    let raw_key = key(2);
    let mut first = raw_verified(&a.addr(), &raw_key).await;
    until("a lists the raw peer", || {
        a.peer_keys().contains(&NodeKey::of(&raw_key))
    })
    .await;
    // Both dialed by the raw side: the newer stays, the older is refused.
    let _second = raw_verified(&a.addr(), &raw_key).await;
    let refusal = raw_refusal(&mut first).await.expect("a refusal");
    assert_eq!(refusal.reason, RefuseReason::DuplicateSession);
    assert!(
        raw_recv(&mut first).await.is_none(),
        "closed after the refusal"
    );
    let peers = a.net.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].key, NodeKey::of(&raw_key));
    a.shutdown().await;
}

#[tokio::test]
async fn removing_a_known_peer_keeps_its_inbound_session() {
    init_tracing();
    let a = TestNode::any(1).await;
    let b = TestNode::any(2).await;
    a.net.set_known_peers(vec![b.addr()]);
    b.net.set_known_peers(vec![a.addr()]);
    until("a and b peer", || one_session_each(&a, &b)).await;
    // a stops dialing b; b still dials a, so a ends up with b's inbound session.
    a.net.set_known_peers(Vec::new());
    until("a holds b's inbound session", || {
        one_session_each(&a, &b) && !a.net.peers()[0].outbound
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peers = a.net.peers();
    assert_eq!(peers.len(), 1);
    assert!(!peers[0].outbound, "the inbound session stays");
    a.shutdown().await;
    b.shutdown().await;
}
