//! [`Client`]: one logical connection to rippled's WebSocket API over a list of servers.
//!
//! A single task owns the socket. Callers send requests to it through a channel; it gives
//! each an id, routes the answer back by that id, and publishes stream messages as
//! [`StreamEvent`]s on a broadcast channel. When the socket drops it reconnects with
//! exponential backoff and jitter, trying the servers in order (primary first), subscribes
//! again to everything subscribed so far, and emits [`StreamEvent::Reconnected`] so that
//! users catch up through account history (the stream cannot replay what it missed).
//!
//! Requests in flight on a dropped connection: reads (every method but `submit`,
//! `sign_and_submit`, `submit_multisigned`, `ledger_accept`, `wallet_fund`, `subscribe` and
//! `unsubscribe`) are sent again on the next connection; the others fail with
//! [`ClientError::ConnectionLost`], because the caller must decide (for `submit`, look the
//! hash up). Every request has a timeout ([`ClientConfig::request_timeout`]).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Map, Value};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::tx::{json_u32, ValidatedTx, RIPPLE_EPOCH_OFFSET};

/// Settings of a [`Client`]. `ClientConfig::new(urls)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://` or `wss://` URLs: the primary first, then fallbacks in order.
    pub urls: Vec<String>,
    /// How long a request may wait for its answer (including time spent reconnecting).
    pub request_timeout: Duration,
    /// How long one connection attempt (TCP + TLS + WebSocket handshake) may take.
    pub connect_timeout: Duration,
    /// First delay between rounds of connection attempts; doubles each round.
    pub backoff_initial: Duration,
    /// Longest delay between rounds of connection attempts.
    pub backoff_max: Duration,
    /// A WebSocket ping is sent after this long without traffic; a connection silent for
    /// twice as long is considered dead and replaced.
    pub ping_interval: Duration,
    /// Capacity of the [`StreamEvent`] broadcast channel; a receiver that falls further
    /// behind gets `Lagged` and should catch up through account history.
    pub event_capacity: usize,
    /// For `wss://`: trust only these CA certificates (DER) instead of the public web PKI
    /// roots, e.g. a private network's CA. `None`: the public roots.
    pub tls_root_certs_der: Option<Vec<Vec<u8>>>,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        ClientConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            event_capacity: 1024,
            tls_root_certs_der: None,
        }
    }

    /// Checks every setting; the error names the key.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |key: &'static str, message: String| Err(ClientError::Config { key, message });
        if self.urls.is_empty() {
            return bad("urls", "at least one server URL is needed".into());
        }
        for url in &self.urls {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return bad("urls", format!("{url:?} is not a ws:// or wss:// URL"));
            }
        }
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
            ("ping_interval", self.ping_interval),
        ] {
            if d.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if self.backoff_max < self.backoff_initial {
            return bad(
                "backoff_max",
                format!(
                    "{:?} is below backoff_initial {:?}",
                    self.backoff_max, self.backoff_initial
                ),
            );
        }
        if self.event_capacity == 0 {
            return bad("event_capacity", "must be greater than zero".into());
        }
        self.tls_connector()?;
        Ok(())
    }

    /// The rustls connector for `wss://` when private roots are configured.
    fn tls_connector(&self) -> Result<Option<Connector>, ClientError> {
        let Some(certs) = &self.tls_root_certs_der else {
            return Ok(None);
        };
        let bad = |message: String| ClientError::Config {
            key: "tls_root_certs_der",
            message,
        };
        if certs.is_empty() {
            return Err(bad("an empty list would trust no server".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, der) in certs.iter().enumerate() {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| bad(format!("certificate #{i}: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(Connector::Rustls(Arc::new(tls))))
    }
}

/// Why a request (or the client) failed.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    #[error("client config: {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot connect to any of {urls:?}: {last_error}")]
    ConnectFailed {
        urls: Vec<String>,
        last_error: String,
    },
    /// rippled answered with an error: `error` is its token (`actNotFound`, `txnNotFound`, …).
    #[error("{url}: {method}: {error}: {message}")]
    Rpc {
        url: String,
        method: String,
        error: String,
        message: String,
    },
    #[error("{url}: {method}: no answer within {timeout:?}")]
    Timeout {
        url: String,
        method: String,
        timeout: Duration,
    },
    #[error("{url}: {method}: connection lost before the answer")]
    ConnectionLost { url: String, method: String },
    #[error("{url}: {method}: malformed answer: {detail}")]
    BadResponse {
        url: String,
        method: String,
        detail: String,
    },
    #[error("{method}: bad request: {detail}")]
    BadRequest { method: String, detail: String },
    #[error("{method}: the client is shut down")]
    Shutdown { method: String },
}

impl ClientError {
    /// rippled's error token, for [`ClientError::Rpc`].
    pub fn rpc_error(&self) -> Option<&str> {
        match self {
            ClientError::Rpc { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A message from the server's streams, or a reconnection.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A ledger closed (and, on the servers Berth uses, was validated).
    LedgerClosed {
        index: u32,
        hash: String,
        /// Close time, Unix seconds.
        time: u64,
    },
    /// A validated transaction of a subscribed account (or of the `transactions` stream).
    Transaction(ValidatedTx),
    /// The connection was replaced and subscriptions renewed. Stream messages in between are
    /// lost: catch up through account history from your cursor.
    Reconnected { url: String },
}

/// Methods not sent again on a new connection when the old one dropped before the answer.
const NOT_RETRIED: &[&str] = &[
    "submit",
    "sign_and_submit",
    "submit_multisigned",
    "ledger_accept",
    "wallet_fund",
    "subscribe",
    "unsubscribe",
];

enum Command {
    Request {
        id: u64,
        method: String,
        body: String,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    Cancel {
        id: u64,
    },
}

#[derive(Default)]
struct Subscriptions {
    accounts: BTreeSet<String>,
    streams: BTreeSet<String>,
}

impl Subscriptions {
    fn request(&self) -> Option<Value> {
        if self.accounts.is_empty() && self.streams.is_empty() {
            return None;
        }
        let mut m = Map::new();
        m.insert("command".into(), json!("subscribe"));
        m.insert("api_version".into(), json!(2));
        if !self.accounts.is_empty() {
            m.insert("accounts".into(), json!(self.accounts));
        }
        if !self.streams.is_empty() {
            m.insert("streams".into(), json!(self.streams));
        }
        Some(Value::Object(m))
    }
}

struct Shared {
    config: ClientConfig,
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<StreamEvent>,
    subs: Arc<Mutex<Subscriptions>>,
    connected: watch::Receiver<Option<String>>,
    last_error: Arc<Mutex<String>>,
    next_id: AtomicU64,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// A rippled WebSocket client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("urls", &self.shared.config.urls)
            .field("connected", &*self.shared.connected.borrow())
            .finish()
    }
}

impl Client {
    /// Starts the client and waits until it is connected to one of the servers (at most
    /// `connect_timeout` per server and round, `request_timeout` in all).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::start(config)?;
        let mut rx = client.shared.connected.clone();
        // The watch guard must not live across an await: the future stays Send.
        let connected = matches!(
            tokio::time::timeout(
                client.shared.config.request_timeout,
                rx.wait_for(Option::is_some)
            )
            .await,
            Ok(Ok(_))
        );
        if !connected {
            let last_error = lock(&client.shared.last_error).clone();
            let urls = client.shared.config.urls.clone();
            client.shutdown().await;
            return Err(ClientError::ConnectFailed { urls, last_error });
        }
        Ok(client)
    }

    /// Starts the client without waiting for a connection; requests wait for one (within
    /// their timeout).
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let tls = config.tls_connector()?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(config.event_capacity);
        let (connected_tx, connected) = watch::channel(None);
        let subs = Arc::new(Mutex::new(Subscriptions::default()));
        let last_error = Arc::new(Mutex::new(String::from("no attempt yet")));
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let conn = Connection {
            config: config.clone(),
            tls,
            commands: rx,
            events: events.clone(),
            subs: subs.clone(),
            connected: connected_tx,
            last_error: last_error.clone(),
            token: token.clone(),
            pending: HashMap::new(),
            internal: 0,
        };
        tracker.spawn(conn.run());
        Ok(Client {
            shared: Arc::new(Shared {
                config,
                commands,
                events,
                subs,
                connected,
                last_error,
                next_id: AtomicU64::new(1),
                token,
                tracker,
            }),
        })
    }

    /// The URL of the server in use, `None` while reconnecting.
    pub fn connected_url(&self) -> Option<String> {
        self.shared.connected.borrow().clone()
    }

    /// Stream events from now on.
    pub fn events(&self) -> broadcast::Receiver<StreamEvent> {
        self.shared.events.subscribe()
    }

    /// Sends `method` with `params` (a JSON object, or null) and returns the answer's
    /// `result`. Requests use API version 2 unless `params` names `api_version`.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.request_with_timeout(method, params, self.shared.config.request_timeout)
            .await
    }

    /// [`Client::request`] with its own timeout.
    pub async fn request_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let mut body = match params {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(ClientError::BadRequest {
                    method: method.into(),
                    detail: format!("params must be a JSON object, got {other}"),
                })
            }
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        body.insert("id".into(), json!(id));
        body.insert("command".into(), json!(method));
        body.entry("api_version").or_insert(json!(2));
        let (reply, answer) = oneshot::channel();
        let shutdown = || ClientError::Shutdown {
            method: method.into(),
        };
        if self.shared.token.is_cancelled() {
            return Err(shutdown());
        }
        self.shared
            .commands
            .send(Command::Request {
                id,
                method: method.into(),
                body: Value::Object(body).to_string(),
                reply,
            })
            .map_err(|_| shutdown())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(shutdown()),
            Err(_) => {
                let _ = self.shared.commands.send(Command::Cancel { id });
                Err(ClientError::Timeout {
                    url: self
                        .connected_url()
                        .unwrap_or_else(|| "(not connected)".into()),
                    method: method.into(),
                    timeout,
                })
            }
        }
    }

    /// Subscribes to the validated transactions of `accounts` (kept across reconnects).
    pub async fn subscribe_accounts(&self, accounts: &[String]) -> Result<(), ClientError> {
        // One bad address would make every later resubscription fail: refuse it here.
        if let Some(bad) = accounts
            .iter()
            .find(|a| !berth_xrpl_core::address::is_valid_address(a))
        {
            return Err(ClientError::BadRequest {
                method: "subscribe".into(),
                detail: format!("{bad:?} is not a classic account address"),
            });
        }
        let added: Vec<String> = {
            let mut subs = lock(&self.shared.subs);
            accounts
                .iter()
                .filter(|a| subs.accounts.insert((*a).clone()))
                .cloned()
                .collect()
        };
        let result = self
            .send_subscription(json!({ "accounts": accounts }))
            .await;
        if result.is_err() {
            // Refused (e.g. a malformed address): do not renew it on reconnects either.
            let mut subs = lock(&self.shared.subs);
            for a in &added {
                subs.accounts.remove(a);
            }
        }
        result
    }

    /// Stops the account subscriptions of `accounts`.
    pub async fn unsubscribe_accounts(&self, accounts: &[String]) -> Result<(), ClientError> {
        {
            let mut subs = lock(&self.shared.subs);
            for a in accounts {
                subs.accounts.remove(a);
            }
        }
        self.request("unsubscribe", json!({ "accounts": accounts }))
            .await
            .map(drop)
    }

    /// Subscribes to the `ledger` stream ([`StreamEvent::LedgerClosed`]), kept across
    /// reconnects.
    pub async fn subscribe_ledger(&self) -> Result<(), ClientError> {
        if !lock(&self.shared.subs).streams.insert("ledger".into()) {
            // Already subscribed; the connection task renews it on every reconnect.
            return Ok(());
        }
        let result = self
            .send_subscription(json!({ "streams": ["ledger"] }))
            .await;
        if result.is_err() {
            lock(&self.shared.subs).streams.remove("ledger");
        }
        result
    }

    async fn send_subscription(&self, params: Value) -> Result<(), ClientError> {
        match self.request("subscribe", params).await {
            Ok(_) => Ok(()),
            // The next connection subscribes again to everything in `subs`.
            Err(ClientError::ConnectionLost { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The `account_data` of `account` in the latest validated ledger; `None` when the account
    /// does not exist there (`actNotFound`).
    pub async fn account_data(&self, account: &str) -> Result<Option<Value>, ClientError> {
        match self
            .request(
                "account_info",
                json!({"account": account, "ledger_index": "validated"}),
            )
            .await
        {
            Ok(mut info) => Ok(Some(info["account_data"].take())),
            Err(e) if e.rpc_error() == Some("actNotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of the latest validated ledger.
    pub async fn validated_ledger_index(&self) -> Result<u32, ClientError> {
        let method = "ledger";
        let r = self
            .request(method, json!({"ledger_index": "validated"}))
            .await?;
        r.get("ledger_index")
            .and_then(json_u32)
            .or_else(|| {
                r.get("ledger")
                    .and_then(|l| l.get("ledger_index"))
                    .and_then(json_u32)
            })
            .ok_or_else(|| self.bad_response(method, "no ledger_index in the answer"))
    }

    pub(crate) fn bad_response(&self, method: &str, detail: impl Into<String>) -> ClientError {
        ClientError::BadResponse {
            url: self
                .connected_url()
                .unwrap_or_else(|| "(not connected)".into()),
            method: method.into(),
            detail: detail.into(),
        }
    }

    /// Stops the connection task and waits for it. Requests still waiting fail with
    /// [`ClientError::Shutdown`].
    pub async fn shutdown(&self) {
        self.shared.token.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Pending {
    method: String,
    body: String,
    /// `None` for the client's own requests (resubscription).
    reply: Option<oneshot::Sender<Result<Value, ClientError>>>,
    sent: bool,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The task that owns the socket.
struct Connection {
    config: ClientConfig,
    tls: Option<Connector>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Sender<StreamEvent>,
    subs: Arc<Mutex<Subscriptions>>,
    connected: watch::Sender<Option<String>>,
    last_error: Arc<Mutex<String>>,
    token: CancellationToken,
    pending: HashMap<u64, Pending>,
    /// Ids of the client's own requests count down from `u64::MAX`.
    internal: u64,
}

enum Wake<T> {
    Done(T),
    Stop,
}

impl Connection {
    async fn run(mut self) {
        let n = self.config.urls.len();
        let mut attempt: usize = 0;
        let mut ever_connected = false;
        loop {
            if attempt > 0 && attempt % n == 0 {
                let delay = self.backoff(attempt / n);
                debug!(
                    ?delay,
                    round = attempt / n,
                    "all servers failed, backing off"
                );
                if let Wake::Stop = self.serve_while(tokio::time::sleep(delay)).await {
                    break;
                }
            }
            let url = self.config.urls[attempt % n].clone();
            let connect = tokio::time::timeout(
                self.config.connect_timeout,
                tokio_tungstenite::connect_async_tls_with_config(
                    url.clone(),
                    None,
                    true,
                    self.tls.clone(),
                ),
            );
            let socket = match self.serve_while(connect).await {
                Wake::Stop => break,
                Wake::Done(Ok(Ok((socket, _)))) => socket,
                Wake::Done(Ok(Err(e))) => {
                    warn!(%url, error = %berth_log::chain(&e), "cannot connect");
                    *lock(&self.last_error) = format!("{url}: {e}");
                    attempt += 1;
                    continue;
                }
                Wake::Done(Err(_)) => {
                    warn!(%url, timeout = ?self.config.connect_timeout, "connection attempt timed out");
                    *lock(&self.last_error) = format!(
                        "{url}: no connection within {:?}",
                        self.config.connect_timeout
                    );
                    attempt += 1;
                    continue;
                }
            };
            info!(%url, "connected");
            let up_since = Instant::now();
            let stop = self.serve(socket, &url, ever_connected).await;
            ever_connected = true;
            self.connected.send_replace(None);
            self.fail_or_requeue(&url);
            if stop {
                break;
            }
            // A connection that lived a while starts over from the primary at once; one that
            // dropped right away counts as a failed attempt, so a flapping server backs off.
            if up_since.elapsed() >= self.config.backoff_max {
                attempt = 0;
            } else {
                attempt = (attempt / n + 1) * n;
            }
        }
        for (_, p) in self.pending.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(ClientError::Shutdown { method: p.method }));
            }
        }
        self.connected.send_replace(None);
        debug!("connection task stopped");
    }

    fn backoff(&self, round: usize) -> Duration {
        let exp = u32::try_from(round.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(20);
        let full = self
            .config
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max);
        // Equal jitter: half fixed, half random.
        let half = full / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    /// Runs `fut` while queueing requests that arrive meanwhile.
    async fn serve_while<F: Future>(&mut self, fut: F) -> Wake<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                _ = self.token.cancelled() => return Wake::Stop,
                out = &mut fut => return Wake::Done(out),
                cmd = self.commands.recv() => match cmd {
                    None => return Wake::Stop,
                    Some(cmd) => self.accept(cmd),
                },
            }
        }
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Request {
                id,
                method,
                body,
                reply,
            } => {
                self.pending.insert(
                    id,
                    Pending {
                        method,
                        body,
                        reply: Some(reply),
                        sent: false,
                    },
                );
            }
            Command::Cancel { id } => {
                self.pending.remove(&id);
            }
        }
    }

    /// After a drop: reads are sent again on the next connection, the rest fail.
    fn fail_or_requeue(&mut self, url: &str) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if !p.sent {
                continue;
            }
            if p.reply.is_some() && !NOT_RETRIED.contains(&p.method.as_str()) {
                p.sent = false;
                continue;
            }
            if let Some(p) = self.pending.remove(&id) {
                if let Some(reply) = p.reply {
                    let _ = reply.send(Err(ClientError::ConnectionLost {
                        url: url.into(),
                        method: p.method,
                    }));
                }
            }
        }
    }

    /// Serves one connection until it drops (`false`) or the client stops (`true`).
    async fn serve(&mut self, socket: Socket, url: &str, reconnected: bool) -> bool {
        let (mut sink, mut stream) = socket.split();
        // Renew subscriptions first, so that nothing sent after `Reconnected` is missed.
        let resubscribe = lock(&self.subs).request();
        if let Some(mut body) = resubscribe {
            self.internal += 1;
            let id = u64::MAX - self.internal;
            body["id"] = json!(id);
            self.pending.insert(
                id,
                Pending {
                    method: "subscribe".into(),
                    body: body.to_string(),
                    reply: None,
                    sent: false,
                },
            );
        }
        let mut unsent: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.sent)
            .map(|(id, p)| (*id, p.body.clone()))
            .collect();
        // The resubscription (highest ids) goes first.
        unsent.sort_by_key(|u| std::cmp::Reverse(u.0));
        for (id, body) in unsent {
            if let Err(e) = sink.send(Message::Text(body)).await {
                warn!(%url, error = %berth_log::chain(&e), "send failed");
                return false;
            }
            if let Some(p) = self.pending.get_mut(&id) {
                p.sent = true;
            }
        }
        self.connected.send_replace(Some(url.to_owned()));
        if reconnected {
            let _ = self
                .events
                .send(StreamEvent::Reconnected { url: url.into() });
        }
        let ping = self.config.ping_interval;
        let mut last_frame = Instant::now();
        let mut ticker = tokio::time::interval(ping);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.token.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return true;
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        let _ = sink.send(Message::Close(None)).await;
                        return true;
                    }
                    Some(Command::Request { id, method, body, reply }) => {
                        let sent = sink.send(Message::Text(body.clone())).await;
                        self.pending.insert(id, Pending { method, body, reply: Some(reply), sent: true });
                        if let Err(e) = sent {
                            warn!(%url, error = %berth_log::chain(&e), "send failed");
                            return false;
                        }
                    }
                    Some(cmd @ Command::Cancel { .. }) => self.accept(cmd),
                },
                frame = stream.next() => {
                    last_frame = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => self.dispatch(url, &text),
                        Some(Ok(Message::Close(_))) | None => {
                            warn!(%url, "server closed the connection");
                            return false;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            warn!(%url, error = %berth_log::chain(&e), "connection failed");
                            return false;
                        }
                    }
                }
                _ = ticker.tick() => {
                    if last_frame.elapsed() >= ping * 2 {
                        warn!(%url, silent = ?last_frame.elapsed(), "connection silent, replacing it");
                        return false;
                    }
                    if last_frame.elapsed() >= ping {
                        if let Err(e) = sink.send(Message::Ping(Vec::new())).await {
                            warn!(%url, error = %berth_log::chain(&e), "ping failed");
                            return false;
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, url: &str, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            warn!(%url, "ignoring a frame that is not JSON");
            return;
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("ledgerClosed") => {
                let index = msg.get("ledger_index").and_then(json_u32);
                let hash = msg.get("ledger_hash").and_then(Value::as_str);
                let time = msg.get("ledger_time").and_then(Value::as_u64);
                match (index, hash, time) {
                    (Some(index), Some(hash), Some(time)) => {
                        let _ = self.events.send(StreamEvent::LedgerClosed {
                            index,
                            hash: hash.to_owned(),
                            time: time + RIPPLE_EPOCH_OFFSET,
                        });
                    }
                    _ => warn!(%url, "ignoring a malformed ledgerClosed message"),
                }
            }
            Some("transaction") => match ValidatedTx::from_json(&msg) {
                Some(tx) => {
                    let _ = self.events.send(StreamEvent::Transaction(tx));
                }
                None => debug!(%url, "ignoring an unvalidated or incomplete transaction message"),
            },
            _ => self.answer(url, msg),
        }
    }

    fn answer(&mut self, url: &str, msg: Value) {
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            debug!(%url, "ignoring a message without id");
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            debug!(%url, id, "answer to a request nobody waits for");
            return;
        };
        let result = if msg.get("status").and_then(Value::as_str) == Some("success") {
            match msg.get("result") {
                Some(r) => Ok(r.clone()),
                None => Err(ClientError::BadResponse {
                    url: url.into(),
                    method: p.method.clone(),
                    detail: "success without result".into(),
                }),
            }
        } else {
            let field = |k: &str| {
                msg.get(k)
                    .or_else(|| msg.get("result").and_then(|r| r.get(k)))
                    .and_then(Value::as_str)
            };
            Err(ClientError::Rpc {
                url: url.into(),
                method: p.method.clone(),
                error: field("error").unwrap_or("unknownError").to_owned(),
                message: field("error_message")
                    .or_else(|| field("error_exception"))
                    .unwrap_or_default()
                    .to_owned(),
            })
        };
        match p.reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                if let Err(e) = result {
                    warn!(%url, error = %berth_log::chain(&e), "resubscription failed");
                }
            }
        }
    }
}
