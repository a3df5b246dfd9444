//! The user port: TLS, WebSocket, the challenge handshake and one session per user key.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, Verifier};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HANDSHAKE_READ_BYTES;
use crate::exec::{self, RunEnd};
use crate::ledger::hash_parts;
use crate::node::{RoundMsg, SessionHandle, Shared, SignedInput};
use crate::protocol::anchor::{BerthReply, BerthRequest, LedgerAnswer};
use crate::protocol::user::{
    InputStatus, ParsedContainer, Protocol, RejectReason, Reply, Request, ServerChallengeResponse,
    UserChallenge, UserChallengeResponse,
};
use crate::protocol::{parse_pubkey_hex, pubkey_hex, HP_VERSION};

/// How long TLS, the WebSocket upgrade and the challenge answer may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("handshake timed out")]
    Timeout,
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("websocket")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("challenge response refused: {0}")]
    Challenge(&'static str),
    #[error(transparent)]
    Register(#[from] crate::node::RegisterError),
    #[error("idle for {0:?}; session closed")]
    Idle(Duration),
}

/// Accepts user connections until cancelled. A connection gets a handshake slot
/// (`user.max_handshakes`) and counts against its address (`user.max_connections_per_ip`);
/// without either it is closed at once.
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    round_tx: mpsc::Sender<RoundMsg>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(shared.limits.max_handshakes));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %berth_log::chain(&e), "accepting a user connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(ip_slot) = shared.admit_ip(peer.ip()) else {
            tracing::debug!(%peer, limit = shared.limits.max_per_ip, "connection refused: its address holds its limit");
            continue;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = shared.limits.max_handshakes, "connection refused: too many handshakes in progress");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, shared, round_tx, cancel, inner) = (
            acceptor.clone(),
            shared.clone(),
            round_tx.clone(),
            cancel.clone(),
            tracker.clone(),
        );
        tracker.spawn(async move {
            let _ip_slot = ip_slot;
            let result =
                session(stream, acceptor, handshake, shared, round_tx, cancel, inner).await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %berth_log::chain(&e), "user session ended");
            }
        });
    }
}

/// A stream that reads at most `allowance` bytes, then fails: before login the whole
/// handshake may read [`HANDSHAKE_READ_BYTES`]; after it, a user who is not privileged may
/// read `user_msg_bytes` (plus a frame header's slack) per message. So no connection makes
/// the node buffer more than its limit, whatever the WebSocket layer would accept.
struct Metered<S> {
    inner: S,
    allowance: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let left = self.allowance.load(Ordering::Relaxed);
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::other(
                "read limit of the connection reached",
            )));
        }
        let mut local = [0u8; 8192];
        let want = buf.remaining().min(left).min(local.len());
        let mut part = ReadBuf::new(&mut local[..want]);
        match Pin::new(&mut self.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                let n = part.filled().len();
                buf.put_slice(part.filled());
                let _ = self
                    .allowance
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                        Some(a.saturating_sub(n))
                    });
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Slack over a message's limit for WebSocket frame headers and a read chunk of the next.
const FRAME_SLACK: usize = 16 * 1024;

async fn session(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake: tokio::sync::OwnedSemaphorePermit,
    shared: Arc<Shared>,
    round_tx: mpsc::Sender<RoundMsg>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), SessionError> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let tls = tokio::time::timeout_at(deadline, acceptor.accept(stream))
        .await
        .map_err(|_| SessionError::Timeout)?
        .map_err(SessionError::Tls)?;
    let allowance = Arc::new(AtomicUsize::new(HANDSHAKE_READ_BYTES));
    let metered = Metered {
        inner: tls,
        allowance: allowance.clone(),
    };
    let ws_config = WebSocketConfig {
        max_message_size: Some(shared.max_msg_bytes),
        max_frame_size: Some(shared.max_msg_bytes),
        ..Default::default()
    };
    let ws = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_async_with_config(metered, Some(ws_config)),
    )
    .await
    .map_err(|_| SessionError::Timeout)??;
    let (mut sink, mut source) = ws.split();

    let mut challenge_bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut challenge_bytes);
    let challenge = hex::encode(challenge_bytes);
    let contract = shared.contract();
    let hello = UserChallenge {
        hp_version: HP_VERSION.to_owned(),
        kind: "user_challenge".to_owned(),
        contract_id: shared.contract_id.clone(),
        contract_version: contract.version.clone(),
        challenge: challenge.clone(),
    };
    sink.send(Message::binary(json_bytes(&hello))).await?;
    let answer = tokio::time::timeout_at(deadline, next_payload(&mut source))
        .await
        .map_err(|_| SessionError::Timeout)??
        .ok_or(SessionError::Challenge("connection closed"))?;
    let response: UserChallengeResponse = serde_json::from_slice(&answer)
        .map_err(|_| SessionError::Challenge("not a challenge response"))?;
    drop(answer);
    if response.kind != "user_challenge_response" {
        return Err(SessionError::Challenge("wrong message type"));
    }
    let protocol = Protocol::parse(&response.protocol)
        .ok_or(SessionError::Challenge("protocol must be json or bson"))?;
    let key =
        parse_pubkey_hex(&response.pubkey).map_err(|_| SessionError::Challenge("bad pubkey"))?;
    let sig = decode_sig(&response.sig).ok_or(SessionError::Challenge("bad signature encoding"))?;
    key.verify(challenge.as_bytes(), &sig)
        .map_err(|_| SessionError::Challenge("bad signature"))?;
    let user = pubkey_hex(&key);
    if let Some(server_challenge) = &response.server_challenge {
        if server_challenge.is_empty() || server_challenge.len() > 32 {
            return Err(SessionError::Challenge("bad server_challenge"));
        }
        let content = format!(
            "{server_challenge}{}{}",
            shared.contract_id, contract.version
        );
        let reply = ServerChallengeResponse {
            kind: "server_challenge_response".to_owned(),
            sig: hex::encode(shared.signing_key.sign(content.as_bytes()).to_bytes()),
            pubkey: shared.node_pubkey.clone(),
            unl: contract.unl.clone(),
        };
        sink.send(Message::binary(json_bytes(&reply))).await?;
    }

    let privileged = shared.is_privileged(&user);
    // Each message of an ordinary user may read this much; the owner's and the UNL's only
    // the WebSocket limit.
    let per_message = if privileged {
        usize::MAX
    } else {
        shared.limits.user_msg_bytes.saturating_add(FRAME_SLACK)
    };
    let (tx, mut rx) = mpsc::channel::<Reply>(4096);
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let kick = CancellationToken::new();
    let last_active = Arc::new(AtomicU64::new(shared.uptime_ms()));
    let session_handle = SessionHandle {
        id,
        tx: tx.clone(),
        kick: kick.clone(),
        privileged,
        last_active: last_active.clone(),
    };
    if let Err(e) = shared.register(&user, session_handle) {
        let _ = sink
            .send(Message::Close(Some(close_frame(
                CloseCode::Again,
                &e.to_string(),
            ))))
            .await;
        return Err(e.into());
    }
    allowance.store(per_message, Ordering::Relaxed);
    drop(handshake);
    tracing::debug!(user, privileged, "user connected");
    let idle = shared.limits.idle_timeout;
    let mut berth_budget = BerthBudget::default();
    let result = async {
        let mut idle_at = tokio::time::Instant::now() + idle;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = kick.cancelled() => {
                    let _ = sink.send(Message::Close(Some(close_frame(CloseCode::Again, "session closed for the node's owner or a UNL node, or replaced by a newer one")))).await;
                    break;
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    let why = format!("idle for {} s (user.idle_timeout_secs)", idle.as_secs());
                    let _ = sink.send(Message::Close(Some(close_frame(CloseCode::Away, &why)))).await;
                    return Err(SessionError::Idle(idle));
                }
                out = rx.recv() => match out {
                    Some(msg) => {
                        // Queue everything waiting, then flush once.
                        sink.feed(Message::binary(msg.encode(protocol))).await?;
                        let mut queued = 1;
                        while queued < 256 {
                            let Ok(more) = rx.try_recv() else { break };
                            sink.feed(Message::binary(more.encode(protocol))).await?;
                            queued += 1;
                        }
                        sink.flush().await?;
                    }
                    None => break,
                },
                incoming = next_payload(&mut source) => {
                    let payload = match incoming {
                        Ok(Some(payload)) => payload,
                        Ok(None) => break,
                        Err(e) => {
                            if allowance.load(Ordering::Relaxed) == 0 {
                                let why = format!(
                                    "message larger than this node's limit of {} bytes for users",
                                    shared.limits.user_msg_bytes
                                );
                                tracing::info!(user, limit = shared.limits.user_msg_bytes, "session closed: message over the limit");
                                let _ = sink.send(Message::Close(Some(close_frame(CloseCode::Size, &why)))).await;
                            }
                            return Err(e);
                        }
                    };
                    allowance.store(per_message, Ordering::Relaxed);
                    idle_at = tokio::time::Instant::now() + idle;
                    last_active.store(shared.uptime_ms(), Ordering::Relaxed);
                    let request = Request::decode(protocol, &payload);
                    if let Ok(Request::Berth(b)) = request {
                        // Over the budget the session waits out the second (backpressure).
                        if let Some(wait) = berth_budget.take(tokio::time::Instant::now()) {
                            tokio::time::sleep(wait).await;
                        }
                        let _ = tx.try_send(Reply::Berth(berth_request(b, &shared)));
                        continue;
                    }
                    handle(request, protocol, &user, &shared, &round_tx, &tx, &tracker).await;
                }
            }
        }
        Ok::<(), SessionError>(())
    }
    .await;
    shared.unregister(&user, id);
    let _ = sink.close().await;
    tracing::debug!(user, "user disconnected");
    result
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame<'static> {
    let mut reason = reason.to_owned();
    // A close frame's reason is at most 123 bytes.
    while reason.len() > 123 {
        reason.pop();
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

fn json_bytes<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_default()
}

fn decode_sig(text: &str) -> Option<Signature> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(Signature::from_bytes(&bytes))
}

/// The next data payload (binary or text frame); None when the connection closed.
async fn next_payload<S>(source: &mut S) -> Result<Option<Vec<u8>>, SessionError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(msg) = source.next().await {
        match msg? {
            Message::Binary(b) => return Ok(Some(b)),
            Message::Text(t) => return Ok(Some(t.into_bytes())),
            Message::Close(_) => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

fn rejected(reason: RejectReason, input_hash: Vec<u8>) -> Reply {
    Reply::InputStatus {
        status: InputStatus::Rejected,
        reason: Some(reason),
        input_hash,
        ledger: None,
    }
}

async fn handle(
    request: Result<Request, RejectReason>,
    protocol: Protocol,
    user: &str,
    shared: &Arc<Shared>,
    round_tx: &mpsc::Sender<RoundMsg>,
    tx: &mpsc::Sender<Reply>,
    tracker: &TaskTracker,
) {
    let request = match request {
        Ok(r) => r,
        Err(reason) => {
            let _ = tx.try_send(rejected(reason, Vec::new()));
            return;
        }
    };
    match request {
        Request::Input { container, sig } => {
            let hash = hash_parts([sig.as_slice()]);
            let Some(parsed) = ParsedContainer::decode(protocol, &container) else {
                let _ = tx.try_send(rejected(RejectReason::BadMsgFormat, hash.to_vec()));
                return;
            };
            if parsed.nonce == 0 {
                let _ = tx.try_send(rejected(RejectReason::BadMsgFormat, hash.to_vec()));
                return;
            }
            let sig64 = <[u8; 64]>::try_from(sig.as_slice()).ok();
            let valid = parse_pubkey_hex(user)
                .ok()
                .zip(sig64)
                .is_some_and(|(key, sig)| {
                    key.verify(&container, &Signature::from_bytes(&sig)).is_ok()
                });
            let (true, Some(sig64), Some(user_key)) =
                (valid, sig64, crate::peer::wire::NodeKey::parse(user))
            else {
                let _ = tx.try_send(rejected(RejectReason::BadSig, hash.to_vec()));
                return;
            };
            let relay = crate::peer::wire::RelayedInput {
                user: user_key,
                protocol: match protocol {
                    Protocol::Json => 0,
                    Protocol::Bson => 1,
                },
                sig: crate::peer::wire::Sig(sig64),
                container,
            };
            let input = SignedInput {
                user: user.to_owned(),
                nonce: parsed.nonce,
                max_ledger_seq_no: parsed.max_ledger_seq_no,
                input: parsed.input,
                hash,
                relay,
            };
            if round_tx.send(RoundMsg::Input(input)).await.is_err() {
                tracing::warn!("round loop gone; input dropped");
            }
        }
        Request::Read { id, content } => {
            let (shared, tx, user) = (shared.clone(), tx.clone(), user.to_owned());
            tracker.spawn(async move { read_request(shared, tx, user, id, content).await });
        }
        Request::Stat => {
            let lcl = shared.lcl();
            let contract = shared.contract();
            let sync = shared.sync_status();
            let _ = tx.try_send(Reply::Stat {
                in_sync: sync.in_sync,
                vote_status: sync.vote_status,
                peers: shared
                    .net
                    .peers()
                    .iter()
                    .map(|p| p.addr.to_string())
                    .collect(),
                ledger_seq_no: lcl.seq_no,
                ledger_hash: lcl.hash.to_vec(),
                ledger_retention: shared.ledger_retention,
                roundtime: contract.consensus.roundtime,
                contract_execution_enabled: !contract.bin_path.is_empty(),
                unl: contract
                    .unl
                    .iter()
                    .filter_map(|k| crate::protocol::pubkey_bytes_from_hex(k).map(|b| b.to_vec()))
                    .collect(),
            });
        }
        Request::Lcl => {
            let lcl = shared.lcl();
            let _ = tx.try_send(Reply::Lcl {
                ledger_seq_no: lcl.seq_no,
                ledger_hash: lcl.hash.to_vec(),
            });
        }
        Request::Subscription => {}
        Request::LedgerQuery(q) => {
            // One query at a time per session (this awaits), sharing the read requests' slots.
            let Ok(_slot) = shared.read_slots.acquire().await else {
                return;
            };
            let db = shared
                .fs
                .root
                .parent()
                .map(crate::node::ledger_db_path)
                .unwrap_or_default();
            let query = q.clone();
            let result =
                tokio::task::spawn_blocking(move || crate::history::answer(&db, &query)).await;
            let reply = result.unwrap_or_else(|_| {
                crate::history::failed(&q, crate::protocol::history::error::EXEC_FAILURE)
            });
            let _ = tx.send(Reply::LedgerQueryResult(reply)).await;
        }
        // Answered in the session loop, within the session's budget.
        Request::Berth(_) => {}
    }
}

/// Berth extension requests one session is answered per second; a session asking more
/// waits (each costs a SQLite read, a signature also a write).
const BERTH_REQUESTS_PER_SEC: u32 = 50;

/// A session's budget of Berth extension requests.
#[derive(Default)]
struct BerthBudget {
    window: Option<tokio::time::Instant>,
    used: u32,
}

impl BerthBudget {
    /// Counts a request; how long to wait first when the second's budget is spent.
    fn take(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        let second = Duration::from_secs(1);
        let wait = match self.window {
            Some(start) if now.duration_since(start) < second => {
                if self.used < BERTH_REQUESTS_PER_SEC {
                    None
                } else {
                    Some(second - now.duration_since(start))
                }
            }
            _ => {
                self.window = Some(now);
                self.used = 0;
                None
            }
        };
        if let Some(w) = wait {
            self.window = Some(now + w);
            self.used = 0;
        }
        self.used += 1;
        wait
    }
}

/// Answers a Berth extension request (see [`crate::anchor`]); any user may ask.
fn berth_request(request: BerthRequest, shared: &Shared) -> BerthReply {
    match request {
        BerthRequest::LedgerAt { seq } => {
            let lcl = shared.lcl().seq_no;
            match shared.anchor.ledger_answer(seq, lcl) {
                Ok(answer) => BerthReply::Ledger(answer),
                Err(e) => {
                    tracing::warn!(seq, error = %berth_log::chain(&e), "reading a ledger for a user failed");
                    BerthReply::Ledger(LedgerAnswer {
                        seq,
                        lcl_seq: lcl,
                        ledger: None,
                    })
                }
            }
        }
        BerthRequest::CheckpointSign { tx } => {
            let contract = shared.contract();
            let secret = shared.signing_key.to_bytes();
            let ctx = crate::anchor::SignContext {
                contract_id: &shared.contract_id,
                unl: &contract.unl,
                threshold: contract.consensus.threshold,
                secret: &secret,
            };
            let answer = shared.anchor.sign(&tx, &ctx);
            if let Err(reason) = &answer {
                tracing::info!(reason, "refused to sign a checkpoint");
            }
            BerthReply::CheckpointSignature(answer)
        }
    }
}

/// How long the first read request waits for the round loop's first read-only view (the
/// next execution; a round at most, unless the node is out of sync).
const READ_VIEW_WAIT: Duration = Duration::from_secs(15);

async fn read_request(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Reply>,
    user: String,
    id: Option<String>,
    content: Vec<u8>,
) {
    let contract = shared.contract();
    if contract.bin_path.is_empty() {
        let _ = tx.try_send(Reply::ReadResponse {
            reply_for: id,
            content: br#"{"error":"no contract installed"}"#.to_vec(),
        });
        return;
    }
    let Ok(_slot) = shared.read_slots.acquire().await else {
        return;
    };
    // Reads run in a read-only view of the last executed ledger's state; the first read
    // asks the round loop to make views and waits for the next one.
    shared.read_views_wanted.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + READ_VIEW_WAIT;
    let view = loop {
        if let Some(view) = shared.read_view() {
            break view;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = tx.try_send(Reply::ReadResponse {
                reply_for: id,
                content: br#"{"error":"the state is not ready for reads yet"}"#.to_vec(),
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut cmd = shared.contract_command(&contract);
    cmd.state_dir = view.dir().to_path_buf();
    let ctx = shared.run_context(true, crate::node::now_ms(), None);
    let mut users = BTreeMap::new();
    users.insert(user.clone(), vec![content]);
    match exec::run_contract(&cmd, &ctx, &users, None).await {
        Ok(result) => {
            if result.end != RunEnd::Exited(0) {
                tracing::debug!(user, end = ?result.end, "read-only run ended abnormally");
            }
            for msg in result.outputs.get(&user).into_iter().flatten() {
                let _ = tx.try_send(Reply::ReadResponse {
                    reply_for: id.clone(),
                    content: msg.clone(),
                });
            }
        }
        Err(e) => tracing::warn!(error = %berth_log::chain(&e), "read-only run failed"),
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_session_past_its_berth_budget_waits_out_the_second() {
        let mut budget = BerthBudget::default();
        let t0 = tokio::time::Instant::now();
        for _ in 0..BERTH_REQUESTS_PER_SEC {
            assert_eq!(budget.take(t0), None);
        }
        let wait = budget.take(t0 + Duration::from_millis(300));
        assert_eq!(wait, Some(Duration::from_millis(700)));
        // The next second starts after that wait.
        let t1 = t0 + Duration::from_millis(1000);
        for _ in 1..BERTH_REQUESTS_PER_SEC {
            assert_eq!(budget.take(t1), None);
        }
        assert!(budget.take(t1).is_some());
        assert_eq!(budget.take(t1 + Duration::from_secs(2)), None);
    }
}
