//! Peer sessions over TLS WebSocket (binary frames of [`super::wire`]).
//!
//! Each session, inbound or dialed, runs the same symmetric handshake: both sides send a
//! [`Hello`] with a fresh challenge, check the other's contract id and `time_config`, and
//! answer the other's challenge with a [`ChallengeResponse`] signed by their node key. A
//! session is verified once the other side's answer verifies; until then (at most
//! [`HANDSHAKE_TIMEOUT`] from the TCP accept or connect) it carries nothing else.
//!
//! **Invariant**: one verified session per node key. When a second one verifies, both ends
//! keep the session dialed by the lower key (by key bytes; between two sessions dialed by
//! the same side, the newer), so they keep the same TCP connection; the other gets
//! [`RefuseReason::DuplicateSession`].
//!
//! Every known peer has a dialer task that reconnects with exponential backoff and jitter,
//! stops for good on a contract id mismatch or its own key, and does not dial an address
//! while the key it turned out to belong to has a session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand::{Rng, RngCore};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{
    self, challenge_message, ChallengeResponse, DecodeError, Hello, NodeKey, PeerMsg, Refuse,
    RefuseReason, Sig, CHALLENGE_LEN, MAX_DETAIL_LEN, PEER_PROTOCOL_VERSION,
};

/// How long a connection may take from TCP accept/connect to a verified session.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames waiting to be sent per session; more are dropped.
pub const SEND_QUEUE_LEN: usize = 4096;
/// Undecodable frames a verified session may send before it is closed.
pub const MAX_BAD_FRAMES: u32 = 16;
/// First redial delay (before jitter).
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest redial delay (before jitter).
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A verified session is pinged this often ...
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// ... and closed when nothing (not even a pong) arrived for this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Time allowed for sending a refusal or a close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the peer port.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// `host:port` of peers to dial.
    pub known_peers: Vec<String>,
    pub contract_id: String,
    /// `roundtime_ms * 100 + stage_slice`.
    pub time_config: u64,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
}

/// A message from a verified peer (never a handshake message).
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeKey,
    pub msg: PeerMsg,
}

/// A verified session, for `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub key: NodeKey,
    pub addr: SocketAddr,
    /// True when this node dialed the session.
    pub outbound: bool,
}

/// Errors starting the peer port.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("binding the peer port {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a connection ended before or without a verified session (for logs).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("resolving {addr}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} resolves to no address")]
    NoAddress { addr: String },
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    #[error("websocket")]
    Ws(#[from] tungstenite::Error),
    #[error("not verified within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("closed during the handshake")]
    Closed,
    #[error("handshake: {0}")]
    Protocol(String),
}

/// How a connection ended.
enum Ending {
    /// Shut down (node shutdown or the dialer was removed).
    Cancelled,
    /// Never verified: network trouble, timeout, protocol violation.
    Failed(SessionError),
    /// This node refused the peer (`key` when its challenge answer had verified).
    WeRefused {
        reason: RefuseReason,
        key: Option<NodeKey>,
    },
    /// The peer refused this node.
    TheyRefused {
        reason: RefuseReason,
        key: Option<NodeKey>,
    },
    /// A verified session ended.
    Ended { key: NodeKey },
}

/// Bytes of one encoded frame, shared by every session it is queued to.
type Frame = Arc<[u8]>;

/// A registered verified session.
struct Session {
    id: u64,
    addr: SocketAddr,
    outbound: bool,
    tx: mpsc::Sender<Frame>,
    /// Cancelled to make the session give way to a newer one.
    kick: CancellationToken,
    /// Cancelled when the session has ended.
    done: CancellationToken,
}

#[derive(Default)]
struct State {
    sessions: HashMap<NodeKey, Session>,
    /// Known peer address → its dialer's stop token.
    dialers: HashMap<String, CancellationToken>,
}

struct Inner {
    key: SigningKey,
    me: NodeKey,
    contract_id: String,
    time_config: AtomicU64,
    max_frame_bytes: usize,
    tls_client: Arc<rustls::ClientConfig>,
    inbound: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
    next_id: AtomicU64,
    state: Mutex<State>,
}

/// Handle to the peer port; cheap to clone.
#[derive(Clone)]
pub struct PeerNet {
    local_addr: SocketAddr,
    inner: Arc<Inner>,
}

impl PeerNet {
    /// Binds the peer port, starts accepting and dialing; verified peers' messages go to
    /// `inbound`. Every task belongs to `tracker` and stops on `cancel`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        cfg: PeerConfig,
        key: SigningKey,
        tls_server: Arc<rustls::ServerConfig>,
        tls_client: Arc<rustls::ClientConfig>,
        inbound: mpsc::Sender<Inbound>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<PeerNet, PeerError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| PeerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| PeerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let inner = Arc::new(Inner {
            me: NodeKey::of(&key),
            key,
            contract_id: cfg.contract_id,
            time_config: AtomicU64::new(cfg.time_config),
            max_frame_bytes: cfg.max_frame_bytes,
            tls_client,
            inbound,
            cancel,
            tracker,
            runtime: tokio::runtime::Handle::current(),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        });
        tracing::info!(addr = %local_addr, key = %inner.me, "peer port listening");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_server);
        inner
            .tracker
            .spawn(accept_loop(inner.clone(), listener, acceptor));
        let net = PeerNet { local_addr, inner };
        net.set_known_peers(cfg.known_peers);
        Ok(net)
    }

    /// The bound peer address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends to every verified session (encoded once); a full session queue drops it.
    pub fn broadcast(&self, msg: &PeerMsg) {
        let Some(frame) = self.inner.frame(msg) else {
            return;
        };
        let targets: Vec<(NodeKey, mpsc::Sender<Frame>)> = self
            .inner
            .state()
            .sessions
            .iter()
            .map(|(k, s)| (*k, s.tx.clone()))
            .collect();
        for (key, tx) in targets {
            queue(&tx, &key, msg.kind(), frame.clone());
        }
    }

    /// Sends to one verified peer; false when there is no session with it (or its queue is
    /// full and the message was dropped).
    pub fn send(&self, to: &NodeKey, msg: &PeerMsg) -> bool {
        let Some(tx) = self.inner.state().sessions.get(to).map(|s| s.tx.clone()) else {
            return false;
        };
        let Some(frame) = self.inner.frame(msg) else {
            return false;
        };
        queue(&tx, to, msg.kind(), frame)
    }

    /// The verified sessions.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = self
            .inner
            .state()
            .sessions
            .iter()
            .map(|(key, s)| PeerStatus {
                key: *key,
                addr: s.addr,
                outbound: s.outbound,
            })
            .collect();
        peers.sort_by_key(|p| p.key);
        peers
    }

    /// Replaces the peers to dial (config change, `peer_changeset`). Dialers of removed
    /// peers stop (with their outbound session); inbound sessions stay.
    pub fn set_known_peers(&self, peers: Vec<String>) {
        let wanted: Vec<String> = peers
            .into_iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let mut start = Vec::new();
        {
            let mut state = self.inner.state();
            state.dialers.retain(|addr, stop| {
                let keep = wanted.contains(addr);
                if !keep {
                    tracing::info!(peer = %addr, "no longer dialing a removed peer");
                    stop.cancel();
                }
                keep
            });
            for addr in wanted {
                if !state.dialers.contains_key(&addr) {
                    let stop = self.inner.cancel.child_token();
                    state.dialers.insert(addr.clone(), stop.clone());
                    start.push((addr, stop));
                }
            }
        }
        for (addr, stop) in start {
            self.inner.tracker.spawn_on(
                dial_loop(self.inner.clone(), addr, stop),
                &self.inner.runtime,
            );
        }
    }

    /// The time config announced in later handshakes (after a config change).
    pub fn set_time_config(&self, time_config: u64) {
        self.inner.time_config.store(time_config, Ordering::Relaxed);
    }
}

/// Queues a frame to one session; false (and a warning) when its queue is full or closed.
fn queue(tx: &mpsc::Sender<Frame>, key: &NodeKey, kind: &'static str, frame: Frame) -> bool {
    match tx.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(key = %key, kind, "peer send queue full, message dropped");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the whole port would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig {
            max_message_size: Some(self.max_frame_bytes),
            max_frame_size: Some(self.max_frame_bytes),
            ..Default::default()
        }
    }

    /// Encodes an outgoing message; None (logged) when it is over the frame limit.
    fn frame(&self, msg: &PeerMsg) -> Option<Frame> {
        let bytes = wire::encode(msg);
        if bytes.len() > self.max_frame_bytes {
            tracing::warn!(
                kind = msg.kind(),
                len = bytes.len(),
                max = self.max_frame_bytes,
                "outgoing peer message over the frame limit, dropped"
            );
            return None;
        }
        Some(bytes.into())
    }

    /// Registers a verified session, applying the one-session-per-key rule. Err when the
    /// existing session is kept (the new one must refuse and close).
    fn register(&self, key: NodeKey, session: Session) -> Result<(), ()> {
        let mut state = self.state();
        if let Some(old) = state.sessions.get(&key) {
            if !keep_new(self.me, key, old.outbound, session.outbound) {
                return Err(());
            }
            tracing::debug!(
                key = %key,
                old_peer = %old.addr,
                new_peer = %session.addr,
                "a newer session with this key replaces the old one"
            );
            old.kick.cancel();
        }
        state.sessions.insert(key, session);
        Ok(())
    }

    fn unregister(&self, key: &NodeKey, id: u64) {
        let mut state = self.state();
        if state.sessions.get(key).is_some_and(|s| s.id == id) {
            state.sessions.remove(key);
        }
    }

    /// The `done` token of the live session with `key`, if any.
    fn live_session(&self, key: &NodeKey) -> Option<CancellationToken> {
        self.state().sessions.get(key).map(|s| s.done.clone())
    }
}

/// Whether a newly verified session with `key` replaces the existing one: between sessions
/// dialed by different sides, the one dialed by the lower key stays (both ends compute the
/// same); between two dialed by the same side, the newer (the old one is most likely left
/// over from a restart).
fn keep_new(me: NodeKey, key: NodeKey, old_outbound: bool, new_outbound: bool) -> bool {
    let dialer = |outbound: bool| if outbound { me } else { key };
    let (old_dialer, new_dialer) = (dialer(old_outbound), dialer(new_outbound));
    old_dialer == new_dialer || new_dialer < old_dialer
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let accepted = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %berth_log::chain(&e), "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let _ = stream.set_nodelay(true);
        let (inner2, acceptor) = (inner.clone(), acceptor.clone());
        inner.tracker.spawn(async move {
            let stop = inner2.cancel.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = accept_one(&inner2, stream, acceptor, addr, deadline, &stop) => {}
            }
        });
    }
    tracing::debug!("peer port closed");
}

async fn accept_one(
    inner: &Arc<Inner>,
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    addr: SocketAddr,
    deadline: Instant,
    stop: &CancellationToken,
) -> Ending {
    let failed = |e: SessionError| {
        let ending = Ending::Failed(e);
        log_ending(&ending, addr, false);
        ending
    };
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => return failed(SessionError::Timeout),
        Ok(Err(e)) => return failed(SessionError::Tls(e)),
        Ok(Ok(tls)) => tls,
    };
    let ws = match tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_async_with_config(tls, Some(inner.ws_config())),
    )
    .await
    {
        Err(_) => return failed(SessionError::Timeout),
        Ok(Err(e)) => return failed(SessionError::Ws(e)),
        Ok(Ok(ws)) => ws,
    };
    run_session(inner, ws, addr, false, deadline, stop).await
}

/// Splits `host:port` into the host (without IPv6 brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

async fn dial_one(inner: &Arc<Inner>, peer: &str, stop: &CancellationToken) -> Ending {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(peer)).await {
            Err(_) => return Ending::Failed(SessionError::Timeout),
            Ok(Err(source)) => {
                return Ending::Failed(SessionError::Resolve {
                    addr: peer.to_owned(),
                    source,
                })
            }
            Ok(Ok(addrs)) => addrs.collect(),
        };
    let mut last = SessionError::NoAddress {
        addr: peer.to_owned(),
    };
    let mut connected = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => return Ending::Failed(SessionError::Timeout),
            Ok(Err(source)) => last = SessionError::Connect { addr, source },
            Ok(Ok(stream)) => {
                connected = Some((stream, addr));
                break;
            }
        }
    }
    let Some((stream, addr)) = connected else {
        return Ending::Failed(last);
    };
    let _ = stream.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host_of(peer).to_owned())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::from(addr.ip()));
    let connector = tokio_rustls::TlsConnector::from(inner.tls_client.clone());
    let tls = match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
        Err(_) => return Ending::Failed(SessionError::Timeout),
        Ok(Err(e)) => return Ending::Failed(SessionError::Tls(e)),
        Ok(Ok(tls)) => tls,
    };
    let url = format!("wss://{peer}/");
    let ws = match tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::client_async_with_config(url.as_str(), tls, Some(inner.ws_config())),
    )
    .await
    {
        Err(_) => return Ending::Failed(SessionError::Timeout),
        Ok(Err(e)) => return Ending::Failed(SessionError::Ws(e)),
        Ok(Ok((ws, _))) => ws,
    };
    run_session(inner, ws, addr, true, deadline, stop).await
}

/// A delay of `base` ± 50 %.
fn jittered(base: Duration) -> Duration {
    let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms + ms / 2))
}

/// Dials `peer` until stopped: backoff on failure, redial after a session ends.
async fn dial_loop(inner: Arc<Inner>, peer: String, stop: CancellationToken) {
    // The delay before the next failed dial's retry; doubles up to the cap.
    let mut backoff = BACKOFF_START;
    // The key this address turned out to belong to.
    let mut known_key: Option<NodeKey> = None;
    loop {
        // Not while the key behind this address has a session (e.g. one it dialed).
        if let Some(done) = known_key.and_then(|k| inner.live_session(&k)) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = done.cancelled() => {}
            }
            backoff = BACKOFF_START;
        }
        let ending = tokio::select! {
            _ = stop.cancelled() => Ending::Cancelled,
            ending = dial_one(&inner, &peer, &stop) => ending,
        };
        let delay = match ending {
            Ending::Cancelled => return,
            Ending::Failed(e) => {
                tracing::debug!(peer = %peer, backoff_ms = backoff.as_millis(), reason = %berth_log::chain(&e), "dialing peer failed");
                let delay = backoff;
                backoff = (backoff * 2).min(BACKOFF_CAP);
                delay
            }
            Ending::Ended { key } => {
                known_key = Some(key);
                backoff = BACKOFF_START;
                backoff
            }
            Ending::WeRefused { reason, key } | Ending::TheyRefused { reason, key } => {
                if key.is_some() {
                    known_key = key;
                }
                match reason {
                    RefuseReason::ContractIdMismatch | RefuseReason::OwnKey => {
                        tracing::warn!(
                            peer = %peer,
                            key = known_key.map(|k| k.hex()),
                            reason = reason.as_str(),
                            "no longer dialing this peer"
                        );
                        return;
                    }
                    // Its config may change: keep trying, slowly.
                    RefuseReason::TimeConfigMismatch | RefuseReason::Version => BACKOFF_CAP,
                    // Redialed once the session that won ends (see the top of the loop).
                    RefuseReason::DuplicateSession => BACKOFF_START,
                    RefuseReason::BadChallengeResponse => {
                        let delay = backoff;
                        backoff = (backoff * 2).min(BACKOFF_CAP);
                        delay
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(jittered(delay)) => {}
        }
    }
}

/// Logs a connection that ended unverified for another reason than a refusal (refusals
/// and verified sessions are logged where they happen).
fn log_ending(ending: &Ending, addr: SocketAddr, outbound: bool) {
    match ending {
        Ending::Failed(e) if outbound => {
            tracing::debug!(peer = %addr, outbound, reason = %berth_log::chain(&e), "peer connection dropped before verification")
        }
        Ending::Failed(e) => {
            tracing::info!(peer = %addr, outbound, reason = %berth_log::chain(&e), "peer connection dropped before verification")
        }
        Ending::Cancelled => {
            tracing::debug!(peer = %addr, outbound, "peer connection closed on shutdown")
        }
        _ => {}
    }
}

/// Next binary payload; text frames are returned as payloads too (and fail to decode).
async fn next_payload<S>(source: &mut S) -> Result<Option<Vec<u8>>, tungstenite::Error>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    while let Some(msg) = source.next().await {
        match msg? {
            Message::Binary(b) => return Ok(Some(b)),
            Message::Text(t) => return Ok(Some(t.into_bytes())),
            Message::Close(_) => return Ok(None),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(None)
}

/// Cuts a refusal detail to the wire limit (on a char boundary).
fn detail(mut text: String) -> String {
    if text.len() > MAX_DETAIL_LEN {
        let mut end = MAX_DETAIL_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Sends a refusal (the session is closed after it), within [`CLOSE_TIMEOUT`].
async fn refuse<K>(sink: &mut K, reason: RefuseReason, text: String)
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let msg = PeerMsg::Refuse(Refuse {
        reason,
        detail: detail(text),
    });
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        sink.send(Message::Binary(wire::encode(&msg))),
    )
    .await;
}

/// Closes cleanly within [`CLOSE_TIMEOUT`]: the WebSocket close handshake, then the TLS
/// close_notify.
async fn finish<S>(
    sink: SplitSink<WebSocketStream<S>, Message>,
    source: SplitStream<WebSocketStream<S>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut ws) = sink.reunite(source) else {
        return;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
        let _ = ws.get_mut().shutdown().await;
    })
    .await;
}

/// Runs the handshake, then the verified session until it ends; closes the connection.
async fn run_session<S>(
    inner: &Arc<Inner>,
    ws: WebSocketStream<S>,
    addr: SocketAddr,
    outbound: bool,
    deadline: Instant,
    stop: &CancellationToken,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    let ending = session(
        inner,
        &mut sink,
        &mut source,
        addr,
        outbound,
        deadline,
        stop,
    )
    .await;
    log_ending(&ending, addr, outbound);
    finish(sink, source).await;
    ending
}

#[allow(clippy::too_many_arguments)]
async fn session<K, R>(
    inner: &Arc<Inner>,
    sink: &mut K,
    source: &mut R,
    addr: SocketAddr,
    outbound: bool,
    deadline: Instant,
    stop: &CancellationToken,
) -> Ending
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let key =
        match tokio::time::timeout_at(deadline, handshake(inner, sink, source, addr, outbound))
            .await
        {
            Err(_) => return Ending::Failed(SessionError::Timeout),
            Ok(Err(ending)) => return ending,
            Ok(Ok(key)) => key,
        };

    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Frame>(SEND_QUEUE_LEN);
    let kick = stop.child_token();
    let done = CancellationToken::new();
    let entry = Session {
        id,
        addr,
        outbound,
        tx,
        kick: kick.clone(),
        done: done.clone(),
    };
    let duplicate = || format!("a session with {} exists", inner.me.hex());
    if inner.register(key, entry).is_err() {
        tracing::debug!(
            peer = %addr,
            key = %key,
            outbound,
            reason = RefuseReason::DuplicateSession.as_str(),
            "refusing peer: the session dialed by the lower key is kept"
        );
        refuse(sink, RefuseReason::DuplicateSession, duplicate()).await;
        return Ending::WeRefused {
            reason: RefuseReason::DuplicateSession,
            key: Some(key),
        };
    }
    // Unregisters however this function is left.
    struct Registered<'a> {
        inner: &'a Inner,
        key: NodeKey,
        id: u64,
        done: CancellationToken,
    }
    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            self.inner.unregister(&self.key, self.id);
            self.done.cancel();
        }
    }
    let _registered = Registered {
        inner,
        key,
        id,
        done,
    };
    tracing::info!(peer = %addr, key = %key, outbound, "peer session verified");

    let ending = verified(inner, sink, source, rx, key, addr, &kick, stop).await;
    if let Ending::WeRefused { reason, .. } = &ending {
        refuse(sink, *reason, duplicate()).await;
    }
    ending
}

/// Both hellos and both challenge answers; Ok with the peer's verified key.
async fn handshake<K, R>(
    inner: &Inner,
    sink: &mut K,
    source: &mut R,
    addr: SocketAddr,
    outbound: bool,
) -> Result<NodeKey, Ending>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let fail = |e: SessionError| Ending::Failed(e);
    let mut mine = [0u8; CHALLENGE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut mine);
    let time_config = inner.time_config.load(Ordering::Relaxed);
    let hello = PeerMsg::Hello(Hello {
        contract_id: inner.contract_id.clone(),
        time_config,
        challenge: mine,
    });
    sink.send(Message::Binary(wire::encode(&hello)))
        .await
        .map_err(|e| fail(e.into()))?;

    let mut theirs_ok = false;
    loop {
        let payload = next_payload(source)
            .await
            .map_err(|e| fail(e.into()))?
            .ok_or_else(|| fail(SessionError::Closed))?;
        let msg = match wire::decode(&payload, inner.max_frame_bytes) {
            Ok(msg) => msg,
            Err(DecodeError::Version(v)) => {
                let text =
                    format!("peer speaks protocol version {v}, this node {PEER_PROTOCOL_VERSION}");
                return Err(
                    we_refuse(sink, addr, None, outbound, RefuseReason::Version, text).await,
                );
            }
            Err(e) => return Err(fail(SessionError::Protocol(e.to_string()))),
        };
        match msg {
            PeerMsg::Hello(h) if !theirs_ok => {
                if h.contract_id != inner.contract_id {
                    let text = format!(
                        "contract id {:?} differs from this node's {:?}",
                        h.contract_id, inner.contract_id
                    );
                    let reason = RefuseReason::ContractIdMismatch;
                    return Err(we_refuse(sink, addr, None, outbound, reason, text).await);
                }
                if h.time_config != time_config {
                    let text = format!(
                        "time_config {} differs from this node's {}",
                        h.time_config, time_config
                    );
                    let reason = RefuseReason::TimeConfigMismatch;
                    return Err(we_refuse(sink, addr, None, outbound, reason, text).await);
                }
                let answer = PeerMsg::ChallengeResponse(ChallengeResponse {
                    node: inner.me,
                    sig: Sig::sign(
                        &inner.key,
                        &challenge_message(&h.challenge, &inner.contract_id),
                    ),
                });
                sink.send(Message::Binary(wire::encode(&answer)))
                    .await
                    .map_err(|e| fail(e.into()))?;
                theirs_ok = true;
            }
            PeerMsg::ChallengeResponse(cr) if theirs_ok => {
                if !cr
                    .node
                    .verifies(&challenge_message(&mine, &inner.contract_id), &cr.sig)
                {
                    let text = format!("the answer of {} did not verify", cr.node.hex());
                    let reason = RefuseReason::BadChallengeResponse;
                    return Err(we_refuse(sink, addr, None, outbound, reason, text).await);
                }
                if cr.node == inner.me {
                    let text = format!("{} is this node's own key", cr.node.hex());
                    let reason = RefuseReason::OwnKey;
                    return Err(we_refuse(sink, addr, Some(cr.node), outbound, reason, text).await);
                }
                return Ok(cr.node);
            }
            PeerMsg::Refuse(r) => {
                tracing::warn!(
                    peer = %addr,
                    outbound,
                    reason = r.reason.as_str(),
                    detail = %r.detail,
                    "peer refused this node"
                );
                return Err(Ending::TheyRefused {
                    reason: r.reason,
                    key: None,
                });
            }
            other => {
                return Err(fail(SessionError::Protocol(format!(
                    "unexpected {} message",
                    other.kind()
                ))))
            }
        }
    }
}

/// Logs and sends a refusal during the handshake.
async fn we_refuse<K>(
    sink: &mut K,
    addr: SocketAddr,
    key: Option<NodeKey>,
    outbound: bool,
    reason: RefuseReason,
    text: String,
) -> Ending
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    tracing::warn!(
        peer = %addr,
        key = key.map(|k| k.hex()),
        outbound,
        reason = reason.as_str(),
        detail = %text,
        "refusing peer"
    );
    refuse(sink, reason, text).await;
    Ending::WeRefused { reason, key }
}

/// A verified session: queued frames out, consensus messages in.
#[allow(clippy::too_many_arguments)]
async fn verified<K, R>(
    inner: &Inner,
    sink: &mut K,
    source: &mut R,
    mut rx: mpsc::Receiver<Frame>,
    key: NodeKey,
    addr: SocketAddr,
    kick: &CancellationToken,
    stop: &CancellationToken,
) -> Ending
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let writer = async {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { return Ok::<(), tungstenite::Error>(()) };
                    sink.feed(Message::Binary(frame.to_vec())).await?;
                    // Queue what else is waiting, then flush once.
                    for _ in 0..255 {
                        let Ok(more) = rx.try_recv() else { break };
                        sink.feed(Message::Binary(more.to_vec())).await?;
                    }
                    sink.flush().await?;
                }
                _ = ping.tick() => sink.send(Message::Ping(Vec::new())).await?,
            }
        }
    };
    let reader = async {
        let mut bad = 0u32;
        loop {
            let payload = match tokio::time::timeout(IDLE_TIMEOUT, source.next()).await {
                Err(_) => return "idle timeout".to_owned(),
                Ok(None) => return "connection closed".to_owned(),
                Ok(Some(Err(e))) => return format!("websocket: {e}"),
                Ok(Some(Ok(Message::Close(_)))) => return "closed by the peer".to_owned(),
                Ok(Some(Ok(Message::Binary(b)))) => b,
                Ok(Some(Ok(Message::Text(_)))) => {
                    bad += 1;
                    tracing::warn!(peer = %addr, key = %key, reason = "text frame", bad_frames = bad, "peer frame dropped");
                    if bad >= MAX_BAD_FRAMES {
                        return format!("{bad} bad frames");
                    }
                    continue;
                }
                Ok(Some(Ok(_))) => continue,
            };
            let problem = match wire::decode(&payload, inner.max_frame_bytes) {
                Ok(
                    msg @ (PeerMsg::Proposal(_)
                    | PeerMsg::Inputs(_)
                    | PeerMsg::InputRequest(_)
                    | PeerMsg::LedgerRequest { .. }
                    | PeerMsg::Ledgers(_)
                    | PeerMsg::Npl(_)
                    | PeerMsg::OutputVote(_)
                    | PeerMsg::StateRequest { .. }
                    | PeerMsg::StateResponse { .. }),
                ) => {
                    let kind = msg.kind();
                    match inner.inbound.try_send(Inbound { from: key, msg }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(peer = %addr, key = %key, kind, "inbound queue full, peer message dropped")
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return "inbound queue closed".to_owned()
                        }
                    }
                    continue;
                }
                Ok(PeerMsg::Refuse(r)) => {
                    return format!("refused by the peer: {} ({})", r.reason.as_str(), r.detail)
                }
                Ok(msg @ (PeerMsg::Hello(_) | PeerMsg::ChallengeResponse(_))) => {
                    format!("{} message after the handshake", msg.kind())
                }
                Err(e) => e.to_string(),
            };
            bad += 1;
            tracing::warn!(peer = %addr, key = %key, reason = %problem, bad_frames = bad, "peer frame dropped");
            if bad >= MAX_BAD_FRAMES {
                return format!("{bad} bad frames");
            }
        }
    };
    let ended = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ending::Cancelled,
        _ = kick.cancelled() => {
            tracing::debug!(peer = %addr, key = %key, "peer session replaced by another session of its key");
            return Ending::WeRefused { reason: RefuseReason::DuplicateSession, key: Some(key) };
        }
        why = reader => why,
        result = writer => match result {
            Ok(()) => "send queue closed".to_owned(),
            Err(e) => format!("websocket: {e}"),
        },
    };
    tracing::info!(peer = %addr, key = %key, reason = %ended, "peer session ended");
    Ending::Ended { key }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_keep_the_session_dialed_by_the_lower_key() {
        let (low, high) = (NodeKey([1; 32]), NodeKey([2; 32]));
        // `low` holds a session it was dialed on (by `high`); now its own dial verifies.
        assert!(keep_new(low, high, false, true));
        // `high` holds the session it dialed; now `low`'s dial verifies.
        assert!(keep_new(high, low, true, false));
        // And the other order of arrival.
        assert!(!keep_new(low, high, true, false));
        assert!(!keep_new(high, low, false, true));
        // Same dialer: the newer.
        assert!(keep_new(low, high, true, true));
        assert!(keep_new(low, high, false, false));
    }

    #[test]
    fn hosts_details_and_jitter() {
        assert_eq!(host_of("node1.example:22860"), "node1.example");
        assert_eq!(host_of("[::1]:22860"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        let long = "é".repeat(MAX_DETAIL_LEN);
        let cut = detail(long);
        assert!(cut.len() <= MAX_DETAIL_LEN && cut.chars().all(|c| c == 'é'));
        for _ in 0..100 {
            let d = jittered(BACKOFF_START);
            assert!(d >= BACKOFF_START / 2 && d <= BACKOFF_START * 3 / 2);
        }
    }
}
