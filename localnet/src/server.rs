//! The network face: rippled's WebSocket API at `/` and JSON-RPC over HTTP POST on
//! the same port, plus the timer that closes ledgers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_xrpl_core::address::decode_account_id;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value as Json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::engine::Fees;
use crate::node::{Event, Node, NodeError};
use crate::rpc::{self, RpcError};
use crate::store::{Store, StoreError};

/// Largest request accepted, over WebSocket or HTTP, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How to run a localnet.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Time between ledger closes; zero closes only on `ledger_accept`.
    pub close_interval: Duration,
    /// Where to persist the chain; in memory when `None`.
    pub data_dir: Option<PathBuf>,
    pub fees: Fees,
    /// How long a connection may take to send an HTTP request's headers, and a JSON-RPC
    /// request its body, before it is closed.
    pub http_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6006)),
            close_interval: Duration::from_millis(1000),
            data_dir: None,
            fees: Fees::default(),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a localnet could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A running localnet. Dropping it without [`Localnet::shutdown`] leaves its tasks
/// to end with the runtime.
pub struct Localnet {
    node: Arc<Node>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Localnet {
    /// Opens the chain, binds the port and starts serving and closing ledgers.
    pub async fn start(cfg: Config) -> Result<Localnet, StartError> {
        let store = match &cfg.data_dir {
            Some(d) => Some(Store::open(d)?),
            None => None,
        };
        let node = Arc::new(Node::open(store, cfg.fees)?);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let state = AppState {
            node: node.clone(),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        };
        let app = Router::new()
            .route("/", get(ws_upgrade).post(json_rpc))
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .layer(axum::Extension(BodyTimeout(cfg.http_timeout)))
            .with_state(state);
        tracker.spawn(serve(
            listener,
            app,
            cfg.http_timeout,
            cancel.clone(),
            tracker.clone(),
        ));
        if !cfg.close_interval.is_zero() {
            let n = node.clone();
            let c = cancel.clone();
            let every = cfg.close_interval;
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = c.cancelled() => break,
                        _ = tick.tick() => {
                            let n = n.clone();
                            match tokio::task::spawn_blocking(move || n.close()).await {
                                Ok(Ok(h)) => debug!(ledger = h.seq, txs = h.tx_count, "ledger closed"),
                                Ok(Err(e)) => warn!(error = %berth_log::chain(&e), "ledger close failed"),
                                Err(e) => warn!(error = %berth_log::chain(&e), "ledger close task failed"),
                            }
                        }
                    }
                }
            });
        }
        info!(%addr, close_ms = cfg.close_interval.as_millis() as u64, persisted = cfg.data_dir.is_some(), "localnet serving");
        Ok(Localnet {
            node,
            addr,
            cancel,
            tracker,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL, e.g. `ws://127.0.0.1:6006/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The JSON-RPC URL, e.g. `http://127.0.0.1:6006/`.
    pub fn http_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops serving and closing ledgers, and waits for every task to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn is_admin(peer: &SocketAddr) -> bool {
    peer.ip().is_loopback()
}

fn api_version(req: &Map<String, Json>) -> Result<u32, RpcError> {
    match req.get("api_version") {
        None => Ok(1),
        Some(v) => match v.as_u64() {
            Some(1) => Ok(1),
            Some(2) => Ok(2),
            _ => Err(RpcError::invalid_api_version()),
        },
    }
}

const ADMIN_METHODS: &[&str] = &["ledger_accept", "wallet_fund"];

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(st): State<AppState>,
) -> Response {
    let tracker = st.tracker.clone();
    ws.max_message_size(MAX_REQUEST_BYTES)
        .on_upgrade(move |socket| {
            let fut = connection(socket, peer, st);
            async move {
                tracker.spawn(fut);
            }
        })
        .into_response()
}

/// What one connection is subscribed to.
#[derive(Default)]
struct Subs {
    ledger: bool,
    transactions: bool,
    accounts: HashSet<[u8; 20]>,
    api: u32,
}

async fn connection(socket: WebSocket, peer: SocketAddr, st: AppState) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Json>(1024);
    let subs = Arc::new(Mutex::new(Subs {
        api: 1,
        ..Subs::default()
    }));
    let conn_cancel = st.cancel.child_token();
    debug!(%peer, "websocket connected");

    // Writer: everything sent to the client goes through here.
    let wc = conn_cancel.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = wc.cancelled() => break,
                m = out_rx.recv() => match m {
                    Some(m) => {
                        if sink.send(Message::Text(m.to_string())).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        let _ = sink.close().await;
    });

    // Forwarder: stream events filtered by this connection's subscriptions.
    let mut events = st.node.subscribe();
    let fsubs = subs.clone();
    let fout = out_tx.clone();
    let fnode = st.node.clone();
    let fc = conn_cancel.clone();
    let forwarder = tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = fc.cancelled() => break,
                ev = events.recv() => ev,
            };
            let msgs: Vec<Json> = match ev {
                Ok(Event::LedgerClosed(h, txs)) => {
                    let (ledger, all, accounts, api) = match fsubs.lock() {
                        Ok(s) => (s.ledger, s.transactions, s.accounts.clone(), s.api),
                        Err(_) => break,
                    };
                    let mut out = Vec::new();
                    if ledger {
                        out.push(rpc::ledger_closed_msg(&fnode, &h));
                    }
                    if all || !accounts.is_empty() {
                        for t in txs.iter() {
                            if all || t.affected.iter().any(|a| accounts.contains(a)) {
                                out.push(rpc::transaction_msg(&t.record, &h, api));
                            }
                        }
                    }
                    out
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(%peer, missed_ledgers = n, "subscriber too slow; closing its connection");
                    fc.cancel();
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            for m in msgs {
                if fout.send(m).await.is_err() {
                    return;
                }
            }
        }
    });

    loop {
        let msg = tokio::select! {
            _ = conn_cancel.cancelled() => break,
            m = stream.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(b))) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    let _ = out_tx
                        .send(json!({"error": "jsonInvalid", "error_message": "binary frame is not UTF-8 JSON", "status": "error", "type": "response"}))
                        .await;
                    continue;
                }
            },
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                debug!(%peer, error = %berth_log::chain(&e), "websocket read failed");
                break;
            }
        };
        let reply = handle_ws_text(&st.node, &subs, &peer, &text);
        if out_tx.send(reply).await.is_err() {
            break;
        }
    }
    conn_cancel.cancel();
    drop(out_tx);
    let _ = forwarder.await;
    let _ = writer.await;
    debug!(%peer, "websocket closed");
}

fn ws_error(id: Option<&Json>, err: &RpcError, request: Option<&Json>) -> Json {
    let mut m = err.to_fields();
    if let Some(r) = request {
        m.insert("request".into(), r.clone());
    }
    let mut inner = m.clone();
    inner.insert("status".into(), json!("error"));
    m.insert("result".into(), Json::Object(inner));
    m.insert("status".into(), json!("error"));
    m.insert("type".into(), json!("response"));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Json::Object(m)
}

fn handle_ws_text(node: &Arc<Node>, subs: &Mutex<Subs>, peer: &SocketAddr, text: &str) -> Json {
    let req: Json = match serde_json::from_str(text) {
        Ok(Json::Object(m)) => Json::Object(m),
        Ok(_) | Err(_) => {
            return ws_error(
                None,
                &RpcError {
                    token: "jsonInvalid",
                    code: None,
                    message: "Unable to parse request: not a JSON object".into(),
                    extra: Map::new(),
                },
                None,
            )
        }
    };
    let Json::Object(params) = &req else {
        return Json::Null;
    };
    let id = params.get("id");
    let method = params
        .get("command")
        .or_else(|| params.get("method"))
        .and_then(Json::as_str);
    let Some(method) = method else {
        return ws_error(id, &RpcError::missing_command(), Some(&req));
    };
    let api = match api_version(params) {
        Ok(a) => a,
        Err(e) => return ws_error(id, &e, Some(&req)),
    };
    let result = if ADMIN_METHODS.contains(&method) && !is_admin(peer) {
        Err(RpcError::no_permission())
    } else {
        match method {
            "subscribe" => subscribe(node, subs, params, api, true),
            "unsubscribe" => subscribe(node, subs, params, api, false),
            m => rpc::handle(node, m, params, api),
        }
    };
    match result {
        Ok(r) => {
            let mut m = Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id.clone());
            }
            m.insert("result".into(), Json::Object(r));
            m.insert("status".into(), json!("success"));
            m.insert("type".into(), json!("response"));
            if params.contains_key("api_version") {
                m.insert("api_version".into(), json!(api));
            }
            Json::Object(m)
        }
        Err(e) => ws_error(id, &e, Some(&req)),
    }
}

fn subscribe(
    node: &Arc<Node>,
    subs: &Mutex<Subs>,
    params: &Map<String, Json>,
    api: u32,
    on: bool,
) -> rpc::RpcResult {
    let mut streams = Vec::new();
    if let Some(v) = params.get("streams") {
        let arr = v.as_array().ok_or_else(RpcError::malformed_stream)?;
        for s in arr {
            match s.as_str() {
                Some(
                    n @ ("ledger"
                    | "transactions"
                    | "server"
                    | "validations"
                    | "consensus"
                    | "transactions_proposed"),
                ) => streams.push(n.to_string()),
                _ => return Err(RpcError::malformed_stream()),
            }
        }
    }
    let mut accounts = Vec::new();
    for key in ["accounts", "accounts_proposed"] {
        if let Some(v) = params.get(key) {
            let arr = v.as_array().ok_or_else(RpcError::act_malformed)?;
            for a in arr {
                let id = a
                    .as_str()
                    .and_then(|s| decode_account_id(s).ok())
                    .ok_or_else(RpcError::act_malformed)?;
                accounts.push(id);
            }
        }
    }
    if params.contains_key("books") {
        return Err(RpcError::not_supported(
            "order book streams are not supported by localnet",
        ));
    }
    let mut s = subs
        .lock()
        .map_err(|_| RpcError::internal("subscription state poisoned"))?;
    if on {
        s.api = api;
    }
    for n in &streams {
        match n.as_str() {
            "ledger" => s.ledger = on,
            "transactions" | "transactions_proposed" => s.transactions = on,
            _ => {}
        }
    }
    for a in accounts {
        if on {
            s.accounts.insert(a);
        } else {
            s.accounts.remove(&a);
        }
    }
    drop(s);
    let mut out = Map::new();
    if on && streams.iter().any(|s| s == "ledger") {
        let h = node.last_closed();
        if let Json::Object(mut m) = rpc::ledger_closed_msg(node, &h) {
            m.remove("type");
            m.remove("txn_count");
            out = m;
        }
    }
    Ok(out)
}

/// How long a JSON-RPC request's body may take to arrive.
#[derive(Debug, Clone, Copy)]
struct BodyTimeout(Duration);

/// Accepts connections until `cancel`, each served by hyper with a deadline for the request
/// headers (a half-sent request is dropped, as rippled does), WebSocket upgrades allowed.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait and go on.
                    warn!(error = %e, "localnet: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(ConnectInfo(peer))),
        );
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "localnet: connection ended");
            }
        });
    }
}

async fn json_rpc(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(st): State<AppState>,
    axum::Extension(BodyTimeout(timeout)): axum::Extension<BodyTimeout>,
    request: axum::extract::Request,
) -> Response {
    let read = axum::body::to_bytes(request.into_body(), MAX_REQUEST_BYTES);
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Unable to read request: {e}"),
            )
                .into_response()
        }
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
                .into_response()
        }
    };
    let req: Json = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("Unable to parse request: {e}"),
            )
                .into_response()
        }
    };
    let Some(method) = req.get("method").and_then(Json::as_str) else {
        return (StatusCode::BAD_REQUEST, "Null method").into_response();
    };
    let params: Map<String, Json> = match req.get("params") {
        None => Map::new(),
        Some(Json::Array(a)) => match a.first() {
            None => Map::new(),
            Some(Json::Object(m)) => m.clone(),
            Some(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    "params must be an array of one object",
                )
                    .into_response()
            }
        },
        Some(Json::Object(m)) => m.clone(),
        Some(_) => return (StatusCode::BAD_REQUEST, "params unparseable").into_response(),
    };
    let result = match api_version(&params) {
        Err(e) => Err(e),
        Ok(_) if ADMIN_METHODS.contains(&method) && !is_admin(&peer) => {
            Err(RpcError::no_permission())
        }
        Ok(api) => match method {
            "subscribe" | "unsubscribe" => Err(RpcError {
                token: "noEvents",
                code: Some(7),
                message: "Current transport does not support events.".into(),
                extra: Map::new(),
            }),
            m => {
                let node = st.node.clone();
                let m = m.to_string();
                let p = params.clone();
                match tokio::task::spawn_blocking(move || rpc::handle(&node, &m, &p, api)).await {
                    Ok(r) => r,
                    Err(e) => Err(RpcError::internal(format!("request failed: {e}"))),
                }
            }
        },
    };
    let body = match result {
        Ok(mut r) => {
            r.insert("status".into(), json!("success"));
            json!({ "result": r })
        }
        Err(e) => {
            let mut m = e.to_fields();
            m.insert("request".into(), Json::Object(params));
            m.insert("status".into(), json!("error"));
            json!({ "result": m })
        }
    };
    axum::Json(body).into_response()
}
