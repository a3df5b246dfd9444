//! The user-side library: connect to a node over TLS (accepting its self-signed certificate),
//! answer the challenge with an ed25519 key (optionally checking the node's own signature),
//! submit inputs and await their status and outputs, read requests, `lcl`, `stat`, and the
//! bootstrap's `upload` / `status`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::sync::{oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::anchor::{BerthReply, BerthRequest, CheckpointSigner, LedgerAnswer};
use crate::protocol::bundle::{BootstrapReply, ClusterSpec, OwnerRequest};
use crate::protocol::history::{LedgerQuery, LedgerQueryResult, LedgerRecord};
use crate::protocol::user::{
    InputStatus, ParsedContainer, Protocol, Reply, Request, ServerChallengeResponse, UserChallenge,
    UserChallengeResponse,
};
use crate::protocol::{parse_pubkey_hex, pubkey_hex};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Client errors naming the node address or the step.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("tls set-up")]
    Tls(#[from] rustls::Error),
    #[error("handshake with {addr}: {problem}")]
    Handshake { addr: String, problem: String },
    #[error("sending to the node: {0}")]
    Send(tokio_tungstenite::tungstenite::Error),
    #[error("the connection to the node closed")]
    Closed,
    #[error("the node closed the connection: {0}")]
    ClosedByNode(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("input rejected: {0}")]
    Rejected(String),
    #[error("input is not valid UTF-8 (JSON protocol inputs are strings; use BSON for bytes)")]
    NotUtf8,
    #[error("bootstrap reply missing or malformed")]
    NoBootstrapReply,
    #[error("the node refused the ledger query from ledger {from}: {code}")]
    LedgerQuery { from: u64, code: String },
    #[error("the node refused: {0}")]
    Refused(String),
}

/// How many ledgers ahead of the lcl inputs may be included by default.
pub const DEFAULT_LEDGER_OFFSET: u64 = 10;

/// Connection options.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Send a server challenge and check the node's signature.
    pub server_challenge: bool,
    /// Time allowed for connect + handshake, and the default wait for replies.
    pub timeout: Duration,
    /// How long to wait for outputs after an input was accepted.
    pub output_grace: Duration,
    pub max_msg_bytes: usize,
    /// Message encoding after the handshake.
    pub protocol: Protocol,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            server_challenge: true,
            timeout: Duration::from_secs(20),
            output_grace: Duration::from_secs(3),
            max_msg_bytes: 64 * 1024 * 1024,
            protocol: Protocol::Json,
        }
    }
}

/// What became of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputOutcome {
    Accepted {
        ledger_seq_no: u64,
        ledger_hash: String,
    },
    Rejected {
        reason: String,
    },
}

/// An input that was sent.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// blake3 of the signature, hex.
    pub input_hash: String,
    pub nonce: u64,
    pub max_ledger_seq_no: u64,
    /// The signed container bytes (JSON text or BSON).
    pub input_container: Vec<u8>,
    pub sig: Vec<u8>,
}

/// Outputs of one ledger for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerOutputs {
    pub ledger_seq_no: u64,
    pub ledger_hash: String,
    pub outputs: Vec<Vec<u8>>,
    /// The nodes (`ed…`) whose `unl_sig` signature over the output tree's root verified,
    /// checked as hp-js-client checks them ([`output_signers`]); a client trusts the outputs
    /// when these are at least 80 % of the UNL.
    pub signers: Vec<String>,
}

/// The keys whose signatures in `unl_sig` verify over the root of an output's hash tree, as
/// HotPocket clients compute it: the user's output hash is `blake3(0xED‖key ‖ outputs…)` and
/// must equal `output_hash`; the root is blake3 over the tree's hashes with that hash in the
/// tree's one empty place. Empty when the outputs do not match their hash or the tree has no
/// (or more than one) empty place.
pub fn output_signers(
    me: &[u8; 33],
    outputs: &[Vec<u8>],
    output_hash: &[u8],
    hash_tree: &[Option<Vec<u8>>],
    unl_sig: &[(Vec<u8>, Vec<u8>)],
) -> Vec<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(me);
    for o in outputs {
        hasher.update(o);
    }
    let own = *hasher.finalize().as_bytes();
    if own.as_slice() != output_hash || hash_tree.iter().filter(|h| h.is_none()).count() != 1 {
        return Vec::new();
    }
    let mut hasher = blake3::Hasher::new();
    for h in hash_tree {
        hasher.update(h.as_deref().unwrap_or(own.as_slice()));
    }
    let root = *hasher.finalize().as_bytes();
    let mut signers: Vec<String> = unl_sig
        .iter()
        .filter_map(|(key, sig)| {
            let bytes: [u8; 32] = key.get(1..)?.try_into().ok()?;
            let sig: [u8; 64] = sig.as_slice().try_into().ok()?;
            let node = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
            ed25519_dalek::Verifier::verify(
                &node,
                &root,
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .ok()
            .map(|()| pubkey_hex(&node))
        })
        .collect();
    signers.sort();
    signers.dedup();
    signers
}

/// `stat_response` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStat {
    pub hp_version: String,
    pub ledger_seq_no: u64,
    pub ledger_hash: String,
    pub roundtime: u64,
    pub contract_execution_enabled: bool,
    pub current_unl: Vec<String>,
    /// Whether the node follows the UNL's ledgers.
    pub in_sync: bool,
    /// What the node's last round said.
    pub vote_status: String,
    /// `host:port` of the node's connected peers.
    pub peers: Vec<String>,
    /// Ledgers the node keeps behind its last closed one; 0 keeps all.
    pub ledger_retention: u64,
}

#[derive(Default)]
struct Inbox {
    /// Each `unl_change` received: the new UNL as `ed…` keys.
    unl_changes: Vec<Vec<String>>,
    statuses: HashMap<String, InputOutcome>,
    status_order: VecDeque<String>,
    status_waiters: HashMap<String, oneshot::Sender<InputOutcome>>,
    outputs: BTreeMap<u64, LedgerOutputs>,
    lcl_waiters: VecDeque<oneshot::Sender<(u64, String)>>,
    stat_waiters: VecDeque<oneshot::Sender<NodeStat>>,
    signature_waiters: VecDeque<oneshot::Sender<Result<CheckpointSigner, String>>>,
    ledger_waiters: VecDeque<oneshot::Sender<LedgerAnswer>>,
    read_waiters: HashMap<String, oneshot::Sender<Vec<u8>>>,
    query_waiters: HashMap<String, oneshot::Sender<LedgerQueryResult>>,
    unmatched: Vec<Reply>,
    closed: bool,
    /// The reason in the node's close frame, when it gave one.
    close_reason: Option<String>,
}

struct Inner {
    /// This user's key, 0xED ‖ 32 bytes.
    me: [u8; 33],
    inbox: Mutex<Inbox>,
    outputs_changed: Notify,
    lcl_seq: AtomicU64,
    events: tokio::sync::broadcast::Sender<LedgerOutputs>,
}

/// Statuses nobody waited for are kept up to this many (oldest dropped first).
const MAX_UNCLAIMED_STATUSES: usize = 100_000;

impl Inner {
    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        match self.inbox.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A connection to one node as one user.
pub struct Client {
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    inner: Arc<Inner>,
    reader: tokio::task::JoinHandle<()>,
    key: SigningKey,
    opts: ConnectOptions,
    last_nonce: AtomicU64,
    next_read_id: AtomicU64,
    /// The contract id and version the node announced.
    pub contract_id: String,
    pub contract_version: String,
    /// The node's key and UNL when the server challenge was used.
    pub node_pubkey: Option<String>,
    pub unl: Vec<String>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn next_payload(source: &mut SplitStream<Ws>) -> Option<Vec<u8>> {
    next_frame(source, &mut None).await
}

/// The next message's payload; `None` once the connection closed, with the reason of the
/// node's close frame (when it gave one) in `reason`.
async fn next_frame(source: &mut SplitStream<Ws>, reason: &mut Option<String>) -> Option<Vec<u8>> {
    while let Some(msg) = source.next().await {
        match msg {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Text(t)) => return Some(t.as_bytes().to_vec()),
            Ok(Message::Close(frame)) => {
                *reason = frame
                    .map(|f| f.reason.to_string())
                    .filter(|r| !r.is_empty());
                return None;
            }
            Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

impl Client {
    /// Connects to `host:port` and completes the handshake as the holder of `key`.
    pub async fn connect(
        addr: &str,
        key: SigningKey,
        opts: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let hs = |problem: &str| ClientError::Handshake {
            addr: addr.to_owned(),
            problem: problem.to_owned(),
        };
        let tls = crate::tls::client_config_accepting_self_signed()?;
        let ws_config = WebSocketConfig {
            max_message_size: Some(opts.max_msg_bytes),
            max_frame_size: Some(opts.max_msg_bytes),
            ..Default::default()
        };
        let url = format!("wss://{addr}");
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(ws_config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        );
        let (ws, _) = tokio::time::timeout(opts.timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout("the connection"))?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let (mut sink, mut source) = ws.split();
        let hello = tokio::time::timeout(opts.timeout, next_payload(&mut source))
            .await
            .map_err(|_| ClientError::Timeout("the user challenge"))?
            .ok_or(ClientError::Closed)?;
        let hello: UserChallenge = serde_json::from_slice(&hello)
            .map_err(|_| hs("first message is not a user_challenge"))?;
        if hello.kind != "user_challenge" {
            return Err(hs("first message is not a user_challenge"));
        }
        let server_challenge = opts.server_challenge.then(|| {
            let mut b = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut b);
            hex::encode(b)
        });
        let response = UserChallengeResponse {
            kind: "user_challenge_response".to_owned(),
            sig: hex::encode(key.sign(hello.challenge.as_bytes()).to_bytes()),
            pubkey: pubkey_hex(&key.verifying_key()),
            server_challenge: server_challenge.clone(),
            protocol: opts.protocol.as_str().to_owned(),
        };
        let bytes = serde_json::to_vec(&response).map_err(|_| hs("encoding the response"))?;
        sink.send(Message::binary(bytes))
            .await
            .map_err(ClientError::Send)?;
        let (mut node_pubkey, mut unl) = (None, Vec::new());
        if let Some(challenge) = server_challenge {
            let reply = tokio::time::timeout(opts.timeout, next_payload(&mut source))
                .await
                .map_err(|_| ClientError::Timeout("the server challenge response"))?
                .ok_or_else(|| hs("the node closed the connection (challenge refused or key already connected)"))?;
            let reply: ServerChallengeResponse =
                serde_json::from_slice(&reply).map_err(|_| hs("no server_challenge_response"))?;
            let node_key =
                parse_pubkey_hex(&reply.pubkey).map_err(|_| hs("node pubkey malformed"))?;
            let mut sig = [0u8; 64];
            hex::decode_to_slice(&reply.sig, &mut sig)
                .map_err(|_| hs("node signature malformed"))?;
            let content = format!("{challenge}{}{}", hello.contract_id, hello.contract_version);
            node_key
                .verify(content.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| hs("node signature does not verify"))?;
            node_pubkey = Some(pubkey_hex(&node_key));
            unl = reply.unl;
        }
        let inner = Arc::new(Inner {
            me: crate::protocol::pubkey_bytes(&key.verifying_key()),
            inbox: Mutex::new(Inbox::default()),
            outputs_changed: Notify::new(),
            lcl_seq: AtomicU64::new(0),
            events: tokio::sync::broadcast::channel(4096).0,
        });
        let reader = tokio::spawn(read_loop(source, inner.clone(), opts.protocol));
        let client = Client {
            sink: tokio::sync::Mutex::new(sink),
            inner,
            reader,
            key,
            opts,
            last_nonce: AtomicU64::new(0),
            next_read_id: AtomicU64::new(1),
            contract_id: hello.contract_id,
            contract_version: hello.contract_version,
            node_pubkey,
            unl,
        };
        // Learn the lcl so default max_ledger_seq_no values are right; a closed connection
        // here means the node refused us (e.g. the key is already connected).
        client.lcl().await?;
        Ok(client)
    }

    /// This user's public key (`ed…`).
    pub fn pubkey(&self) -> String {
        pubkey_hex(&self.key.verifying_key())
    }

    /// Sends raw bytes as one binary frame (for tests of malformed messages).
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.sink
            .lock()
            .await
            .send(Message::binary(bytes))
            .await
            .map_err(ClientError::Send)
    }

    async fn send_request(&self, request: &Request) -> Result<(), ClientError> {
        self.send_raw(request.encode(self.opts.protocol)).await
    }

    /// Submits an input with the default nonce (time in ms, increasing) and
    /// `max_ledger_seq_no` (the node's lcl, asked first, + 10; as hp-js-client does).
    pub async fn submit(&self, input: &[u8]) -> Result<Submitted, ClientError> {
        let nonce = self.next_nonce();
        let (lcl, _) = self.lcl().await?;
        let max = lcl + DEFAULT_LEDGER_OFFSET;
        self.submit_with(input, nonce, max).await
    }

    fn next_nonce(&self) -> u64 {
        let now = now_ms();
        let mut last = self.last_nonce.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_nonce
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Submits an input with an explicit nonce and max ledger.
    pub async fn submit_with(
        &self,
        input: &[u8],
        nonce: u64,
        max_ledger_seq_no: u64,
    ) -> Result<Submitted, ClientError> {
        let container = ParsedContainer {
            input: input.to_vec(),
            nonce,
            max_ledger_seq_no,
        }
        .encode(self.opts.protocol)
        .ok_or(ClientError::NotUtf8)?;
        let sig = self.key.sign(&container).to_bytes().to_vec();
        let submitted = self.submit_signed(container, sig).await?;
        Ok(Submitted {
            nonce,
            max_ledger_seq_no,
            ..submitted
        })
    }

    /// Sends a `contract_input` with a given container and signature as is.
    pub async fn submit_signed(
        &self,
        input_container: Vec<u8>,
        sig: Vec<u8>,
    ) -> Result<Submitted, ClientError> {
        let input_hash = hex::encode(blake3::hash(&sig).as_bytes());
        let request = Request::Input {
            container: input_container.clone(),
            sig: sig.clone(),
        };
        self.send_request(&request).await?;
        Ok(Submitted {
            input_hash,
            nonce: 0,
            max_ledger_seq_no: 0,
            input_container,
            sig,
        })
    }

    /// Why the connection is gone: the node's close reason when it gave one.
    fn closed_error(&self) -> ClientError {
        match self.inner.inbox().close_reason.clone() {
            Some(reason) => ClientError::ClosedByNode(reason),
            None => ClientError::Closed,
        }
    }

    /// Waits for the status of an input.
    pub async fn wait_status(&self, input_hash: &str) -> Result<InputOutcome, ClientError> {
        let rx = {
            let mut inbox = self.inner.inbox();
            if let Some(outcome) = inbox.statuses.remove(input_hash) {
                return Ok(outcome);
            }
            if inbox.closed {
                return Err(self.closed_error());
            }
            let (tx, rx) = oneshot::channel();
            inbox.status_waiters.insert(input_hash.to_owned(), tx);
            rx
        };
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("an input status"))?
            .map_err(|_| self.closed_error())
    }

    /// Waits up to `grace` for this user's outputs of a ledger (empty when none came).
    pub async fn outputs_of(&self, ledger_seq_no: u64, grace: Duration) -> LedgerOutputs {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.inner.outputs_changed.notified();
            {
                let inbox = self.inner.inbox();
                if let Some(found) = inbox.outputs.get(&ledger_seq_no) {
                    return found.clone();
                }
                if inbox.closed {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        LedgerOutputs {
            ledger_seq_no,
            ledger_hash: String::new(),
            outputs: Vec::new(),
            signers: Vec::new(),
        }
    }

    /// Submits an input, waits for it to be accepted, then returns its ledger's outputs.
    pub async fn submit_and_wait(&self, input: &[u8]) -> Result<LedgerOutputs, ClientError> {
        let submitted = self.submit(input).await?;
        match self.wait_status(&submitted.input_hash).await? {
            InputOutcome::Accepted { ledger_seq_no, .. } => {
                Ok(self.outputs_of(ledger_seq_no, self.opts.output_grace).await)
            }
            InputOutcome::Rejected { reason } => Err(ClientError::Rejected(reason)),
        }
    }

    /// A stream of outputs as they arrive (one item per `contract_output` message).
    pub fn output_events(&self) -> tokio::sync::broadcast::Receiver<LedgerOutputs> {
        self.inner.events.subscribe()
    }

    /// The highest ledger sequence number seen from the node.
    pub fn known_lcl(&self) -> u64 {
        self.inner.lcl_seq.load(Ordering::Relaxed)
    }

    /// Every `unl_change` received so far (each the new UNL as `ed…` keys).
    pub fn unl_changes(&self) -> Vec<Vec<String>> {
        self.inner.inbox().unl_changes.clone()
    }

    /// Every output received so far, by ledger.
    pub fn received_outputs(&self) -> Vec<LedgerOutputs> {
        self.inner.inbox().outputs.values().cloned().collect()
    }

    /// Messages that matched no request (e.g. statuses of unparseable messages).
    pub fn take_unmatched(&self) -> Vec<Reply> {
        std::mem::take(&mut self.inner.inbox().unmatched)
    }

    /// A read-only contract run with `content`; returns the contract's first reply.
    pub async fn read(&self, content: impl AsRef<[u8]>) -> Result<Vec<u8>, ClientError> {
        let id = self
            .next_read_id
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let (tx, rx) = oneshot::channel();
        self.inner.inbox().read_waiters.insert(id.clone(), tx);
        let content = content.as_ref().to_vec();
        self.send_request(&Request::Read {
            id: Some(id),
            content,
        })
        .await?;
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("a read response"))?
            .map_err(|_| ClientError::Closed)
    }

    /// One page of `ledger_query` over ledgers `from..=to` (Berth's range filter; hpcore's
    /// `seq_no` filter when `from == to`), with raw inputs and outputs when asked. The node
    /// answers a prefix of the range; `next_seq_no` names where the next page starts.
    pub async fn ledger_query(
        &self,
        from: u64,
        to: u64,
        inputs: bool,
        outputs: bool,
    ) -> Result<LedgerQueryResult, ClientError> {
        let id = format!("q{}", self.next_read_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.inner.inbox().query_waiters.insert(id.clone(), tx);
        self.send_request(&Request::LedgerQuery(LedgerQuery {
            id,
            from,
            to,
            range: from != to,
            inputs,
            outputs,
        }))
        .await?;
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("a ledger query result"))?
            .map_err(|_| ClientError::Closed)
    }

    /// Ledgers `from..=to` with their raw inputs and outputs, page by page (Berth's range of
    /// `ledger_query`); stops early at the node's last ledger. `progress` gets (ledgers so
    /// far, ledgers wanted) after each page. A page with an error ends it with
    /// [`ClientError::LedgerQuery`].
    pub async fn ledger_history(
        &self,
        from: u64,
        to: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Vec<LedgerRecord>, ClientError> {
        let mut ledgers = Vec::new();
        let mut next = from;
        while next <= to {
            let page = self.ledger_query(next, to, true, true).await?;
            if let Some(code) = page.error {
                return Err(ClientError::LedgerQuery { from: next, code });
            }
            let Some(last) = page.results.last().map(|l| l.seq_no) else {
                break;
            };
            ledgers.extend(page.results);
            progress(ledgers.len() as u64, to + 1 - from);
            next = last + 1;
            if page.next_seq_no.is_none() {
                break;
            }
        }
        Ok(ledgers)
    }

    /// The node's last closed ledger: (seq, hash hex).
    pub async fn lcl(&self) -> Result<(u64, String), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner.inbox().lcl_waiters.push_back(tx);
        self.send_request(&Request::Lcl).await?;
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("the lcl response"))?
            .map_err(|_| ClientError::Closed)
    }

    /// The node's status.
    pub async fn stat(&self) -> Result<NodeStat, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner.inbox().stat_waiters.push_back(tx);
        self.send_request(&Request::Stat).await?;
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("the stat response"))?
            .map_err(|_| ClientError::Closed)
    }

    /// Asks the node to sign a checkpoint (or signer list) transaction of its cluster's
    /// account (the unsigned transaction's binary form) as one signer of a multi-signed
    /// transaction; [`ClientError::Refused`] carries the node's reason.
    pub async fn sign_checkpoint(&self, tx: &[u8]) -> Result<CheckpointSigner, ClientError> {
        let (send, rx) = oneshot::channel();
        self.inner.inbox().signature_waiters.push_back(send);
        self.send_request(&Request::Berth(BerthRequest::CheckpointSign {
            tx: tx.to_vec(),
        }))
        .await?;
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("a checkpoint signature"))?
            .map_err(|_| ClientError::Closed)?
            .map_err(ClientError::Refused)
    }

    /// The node's ledger at `seq` (its hashes, if it has it) and its last closed ledger.
    pub async fn ledger_at(&self, seq: u64) -> Result<LedgerAnswer, ClientError> {
        let (send, rx) = oneshot::channel();
        self.inner.inbox().ledger_waiters.push_back(send);
        self.send_request(&Request::Berth(BerthRequest::LedgerAt { seq }))
            .await?;
        tokio::time::timeout(self.opts.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("a ledger answer"))?
            .map_err(|_| ClientError::Closed)
    }

    /// Uploads a contract bundle (zip bytes) to the installer and returns its answer. The
    /// input is the owner request form ([`OwnerRequest`]), which reaches the installer also
    /// after a contract is installed (the stock Evernode form `{type: "upload", content}`
    /// works only before: then it goes to the contract).
    pub async fn upload_bundle(&self, zip: &[u8]) -> Result<BootstrapReply, ClientError> {
        let msg = OwnerRequest::Upload(zip.to_vec()).encode();
        self.bootstrap_call(&msg, "uploadResult").await
    }

    /// Puts the node in a cluster (see [`ClusterSpec`]) and returns the node's answer
    /// (`clusterResult`). A node that awaits its cluster answers at once; a running cluster
    /// answers in the outputs of the ledger that applied it.
    pub async fn set_cluster(&self, spec: &ClusterSpec) -> Result<BootstrapReply, ClientError> {
        let msg = OwnerRequest::Cluster(spec.clone()).encode();
        self.bootstrap_call(&msg, "clusterResult").await
    }

    /// Asks the bootstrap for its status.
    pub async fn bootstrap_status(&self) -> Result<BootstrapReply, ClientError> {
        self.bootstrap_call(&OwnerRequest::Status.encode(), "statusResult")
            .await
    }

    /// Sends a bootstrap request and waits for its answer: in the outputs of the ledger that
    /// holds the request, or of a later one (an upload is answered once the UNL decided on
    /// it, one ledger later). A node that awaits its cluster answers every request at once
    /// at its genesis ledger, so outputs received before the request are skipped.
    async fn bootstrap_call(&self, msg: &[u8], kind: &str) -> Result<BootstrapReply, ClientError> {
        let mut events = self.output_events();
        let before: HashMap<u64, usize> = self
            .received_outputs()
            .iter()
            .map(|o| (o.ledger_seq_no, o.outputs.len()))
            .collect();
        let submitted = self.submit(msg).await?;
        let seq = match self.wait_status(&submitted.input_hash).await? {
            InputOutcome::Accepted { ledger_seq_no, .. } => ledger_seq_no,
            InputOutcome::Rejected { reason } => return Err(ClientError::Rejected(reason)),
        };
        let find = |outputs: &[Vec<u8>]| {
            outputs
                .iter()
                .filter_map(|o| serde_json::from_slice::<BootstrapReply>(o).ok())
                .find(|r| r.kind == kind)
        };
        for out in self.received_outputs() {
            if out.ledger_seq_no >= seq {
                let seen = before.get(&out.ledger_seq_no).copied().unwrap_or(0);
                if let Some(reply) = find(out.outputs.get(seen..).unwrap_or_default()) {
                    return Ok(reply);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(out)) if out.ledger_seq_no >= seq => {
                    if let Some(reply) = find(&out.outputs) {
                        return Ok(reply);
                    }
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) | Err(_) => return Err(ClientError::NoBootstrapReply),
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.sink.lock().await.close().await;
    }
}

async fn read_loop(mut source: SplitStream<Ws>, inner: Arc<Inner>, protocol: Protocol) {
    let mut close_reason = None;
    while let Some(payload) = next_frame(&mut source, &mut close_reason).await {
        let Some(msg) = Reply::decode(protocol, &payload) else {
            continue;
        };
        let mut inbox = inner.inbox();
        match msg {
            Reply::UnlChange { unl } => inbox
                .unl_changes
                .push(unl.iter().map(hex::encode).collect()),
            Reply::InputStatus {
                status,
                reason,
                input_hash,
                ledger,
            } => {
                let outcome = match status {
                    InputStatus::Accepted => {
                        let (seq, hash) = ledger.clone().unwrap_or_default();
                        inner.lcl_seq.fetch_max(seq, Ordering::Relaxed);
                        InputOutcome::Accepted {
                            ledger_seq_no: seq,
                            ledger_hash: hex::encode(hash),
                        }
                    }
                    InputStatus::Rejected => InputOutcome::Rejected {
                        reason: reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
                    },
                };
                if input_hash.is_empty() {
                    inbox.unmatched.push(Reply::InputStatus {
                        status,
                        reason,
                        input_hash,
                        ledger,
                    });
                    continue;
                }
                let input_hash = hex::encode(input_hash);
                if let Some(waiter) = inbox.status_waiters.remove(&input_hash) {
                    let _ = waiter.send(outcome);
                } else {
                    inbox.status_order.push_back(input_hash.clone());
                    inbox.statuses.insert(input_hash, outcome);
                    while inbox.status_order.len() > MAX_UNCLAIMED_STATUSES {
                        if let Some(old) = inbox.status_order.pop_front() {
                            inbox.statuses.remove(&old);
                        }
                    }
                }
            }
            Reply::Output {
                ledger_seq_no,
                ledger_hash,
                outputs,
                output_hash,
                hash_tree,
                unl_sig,
            } => {
                let signers =
                    output_signers(&inner.me, &outputs, &output_hash, &hash_tree, &unl_sig);
                inner.lcl_seq.fetch_max(ledger_seq_no, Ordering::Relaxed);
                let ledger_hash = hex::encode(ledger_hash);
                let entry = inbox
                    .outputs
                    .entry(ledger_seq_no)
                    .or_insert_with(|| LedgerOutputs {
                        ledger_seq_no,
                        ledger_hash: ledger_hash.clone(),
                        outputs: Vec::new(),
                        signers: Vec::new(),
                    });
                entry.outputs.extend(outputs.iter().cloned());
                entry.signers = signers.clone();
                while inbox.outputs.len() > 10_000 {
                    inbox.outputs.pop_first();
                }
                drop(inbox);
                // Nobody listening is fine.
                let _ = inner.events.send(LedgerOutputs {
                    ledger_seq_no,
                    ledger_hash,
                    outputs,
                    signers,
                });
                inner.outputs_changed.notify_waiters();
            }
            Reply::LedgerQueryResult(result) => {
                if let Some(waiter) = inbox.query_waiters.remove(&result.reply_for) {
                    let _ = waiter.send(result);
                }
            }
            Reply::ReadResponse { reply_for, content } => {
                let id = reply_for.unwrap_or_default();
                if let Some(waiter) = inbox.read_waiters.remove(&id) {
                    let _ = waiter.send(content);
                }
            }
            Reply::Lcl {
                ledger_seq_no,
                ledger_hash,
            } => {
                inner.lcl_seq.fetch_max(ledger_seq_no, Ordering::Relaxed);
                if let Some(waiter) = inbox.lcl_waiters.pop_front() {
                    let _ = waiter.send((ledger_seq_no, hex::encode(ledger_hash)));
                }
            }
            Reply::Stat {
                ledger_seq_no,
                ledger_hash,
                roundtime,
                contract_execution_enabled,
                unl,
                in_sync,
                vote_status,
                peers,
                ledger_retention,
            } => {
                if let Some(waiter) = inbox.stat_waiters.pop_front() {
                    let _ = waiter.send(NodeStat {
                        hp_version: crate::protocol::HP_VERSION.to_owned(),
                        ledger_seq_no,
                        ledger_hash: hex::encode(ledger_hash),
                        roundtime,
                        contract_execution_enabled,
                        current_unl: unl.iter().map(hex::encode).collect(),
                        in_sync,
                        vote_status,
                        peers,
                        ledger_retention,
                    });
                }
            }
            Reply::Berth(BerthReply::CheckpointSignature(answer)) => {
                if let Some(waiter) = inbox.signature_waiters.pop_front() {
                    let _ = waiter.send(answer);
                }
            }
            Reply::Berth(BerthReply::Ledger(answer)) => {
                if let Some(waiter) = inbox.ledger_waiters.pop_front() {
                    let _ = waiter.send(answer);
                }
            }
        }
    }
    let mut inbox = inner.inbox();
    inbox.closed = true;
    inbox.close_reason = close_reason;
    inbox.status_waiters.clear();
    inbox.lcl_waiters.clear();
    inbox.stat_waiters.clear();
    inbox.signature_waiters.clear();
    inbox.ledger_waiters.clear();
    inbox.read_waiters.clear();
    drop(inbox);
    inner.outputs_changed.notify_waiters();
}
