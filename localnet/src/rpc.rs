//! rippled's API methods over the chain: requests and answers as JSON, in the
//! shapes of API versions 1 and 2.

use std::sync::Arc;

use berth_xrpl_core::address::{decode_account_id, encode_account_id};
use berth_xrpl_core::hash::transaction_id;
use berth_xrpl_core::index::{self, nftoken_parts};
use berth_xrpl_core::{tx as xtx, Amount, StObject, Ter, Value};
use serde_json::{json, Map, Value as Json};

use crate::engine;
use crate::node::{Header, LedgerSel, Node, TxRecord, RIPPLE_EPOCH};
use crate::state::Key;

/// Largest transaction blob accepted by `submit`, in bytes.
pub const MAX_TX_BYTES: usize = 64 * 1024;

/// An error answer, as rippled gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub token: &'static str,
    pub code: Option<i32>,
    pub message: String,
    /// Extra fields rippled puts beside the error (e.g. `error_exception`).
    pub extra: Map<String, Json>,
}

impl RpcError {
    fn new(token: &'static str, code: i32, message: impl Into<String>) -> Self {
        RpcError {
            token,
            code: Some(code),
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new("invalidParams", 31, message)
    }

    pub fn unknown_command() -> Self {
        Self::new("unknownCmd", 32, "Unknown method.")
    }

    pub fn missing_command() -> Self {
        Self::new("missingCommand", 47, "Missing command entry.")
    }

    pub fn act_malformed() -> Self {
        Self::new("actMalformed", 35, "Account malformed.")
    }

    pub fn act_not_found() -> Self {
        Self::new("actNotFound", 19, "Account not found.")
    }

    pub fn lgr_not_found() -> Self {
        Self::new("lgrNotFound", 21, "ledgerNotFound")
    }

    pub fn txn_not_found() -> Self {
        Self::new("txnNotFound", 29, "Transaction not found.")
    }

    pub fn object_not_found() -> Self {
        Self::new("objectNotFound", 92, "The requested object was not found.")
    }

    pub fn invalid_transaction(exception: impl Into<String>) -> Self {
        let exception = exception.into();
        let mut e = RpcError {
            token: "invalidTransaction",
            code: None,
            message: exception.clone(),
            extra: Map::new(),
        };
        e.extra
            .insert("error_exception".into(), Json::String(exception));
        e
    }

    pub fn malformed_stream() -> Self {
        Self::new("malformedStream", 71, "Stream malformed.")
    }

    pub fn bad_syntax(message: impl Into<String>) -> Self {
        Self::new("badSyntax", 1, message)
    }

    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new("notSupported", 75, message)
    }

    pub fn invalid_api_version() -> Self {
        Self::new("invalid_API_version", 6, "API version must be 1 or 2.")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", 73, message)
    }

    pub fn no_permission() -> Self {
        Self::new(
            "noPermission",
            6,
            "You don't have permission for this command.",
        )
    }

    /// The error's fields, to merge into an answer.
    pub fn to_fields(&self) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("error".into(), Json::String(self.token.into()));
        if let Some(c) = self.code {
            m.insert("error_code".into(), json!(c));
        }
        m.insert("error_message".into(), Json::String(self.message.clone()));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }
}

pub type RpcResult = Result<Map<String, Json>, RpcError>;

fn obj(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

/// Close time as rippled's ISO 8601 form.
pub fn iso_time(close_time: u32) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp((u64::from(close_time) + RIPPLE_EPOCH) as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn human_time(close_time: u32) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp((u64::from(close_time) + RIPPLE_EPOCH) as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:04}-{}-{:02} {:02}:{:02}:{:02}.000000000 UTC",
        t.year(),
        months[usize::from(u8::from(t.month())) - 1],
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn hex(k: &[u8]) -> Json {
    Json::String(hex::encode_upper(k))
}

fn param_account(params: &Map<String, Json>, name: &str) -> Result<[u8; 20], RpcError> {
    let s = params
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("Missing field '{name}'.")))?
        .as_str()
        .ok_or_else(RpcError::act_malformed)?;
    decode_account_id(s).map_err(|_| RpcError::act_malformed())
}

fn param_hash(params: &Map<String, Json>, name: &str) -> Result<Key, RpcError> {
    let s = params
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("Missing field '{name}'.")))?
        .as_str()
        .ok_or_else(|| RpcError::invalid_params(format!("Invalid field '{name}', not string.")))?;
    hex::decode(s)
        .ok()
        .and_then(|v| <Key>::try_from(v).ok())
        .ok_or_else(|| RpcError::invalid_params(format!("Invalid field '{name}'.")))
}

fn param_bool(params: &Map<String, Json>, name: &str) -> bool {
    params.get(name).and_then(Json::as_bool).unwrap_or(false)
}

fn param_limit(params: &Map<String, Json>, default: usize, max: usize) -> Result<usize, RpcError> {
    match params.get("limit") {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| (n as usize).clamp(1, max))
            .ok_or_else(|| {
                RpcError::invalid_params("Invalid field 'limit', not unsigned integer.")
            }),
    }
}

/// Reads `ledger_index` / `ledger_hash`.
pub fn ledger_sel(params: &Map<String, Json>, default: LedgerSel) -> Result<LedgerSel, RpcError> {
    if let Some(h) = params.get("ledger_hash") {
        let s = h
            .as_str()
            .ok_or_else(|| RpcError::invalid_params("ledgerHashNotString"))?;
        let k = hex::decode(s)
            .ok()
            .and_then(|v| <Key>::try_from(v).ok())
            .ok_or_else(|| RpcError::invalid_params("ledgerHashMalformed"))?;
        return Ok(LedgerSel::Hash(k));
    }
    match params.get("ledger_index") {
        None => Ok(default),
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(LedgerSel::Seq)
            .ok_or_else(|| RpcError::new("lgrIdxMalformed", 58, "Ledger index malformed.")),
        Some(Json::String(s)) => match s.as_str() {
            "current" => Ok(LedgerSel::Current),
            "closed" => Ok(LedgerSel::Closed),
            "validated" => Ok(LedgerSel::Validated),
            other => other
                .parse::<u32>()
                .map(LedgerSel::Seq)
                .map_err(|_| RpcError::invalid_params("ledgerIndexMalformed")),
        },
        Some(_) => Err(RpcError::invalid_params("ledgerIndexMalformed")),
    }
}

fn ledger_fields(out: &mut Map<String, Json>, seq: u32, header: &Option<Header>) {
    match header {
        Some(h) => {
            out.insert("ledger_hash".into(), hex(&h.hash));
            out.insert("ledger_index".into(), json!(h.seq));
            out.insert("validated".into(), json!(true));
        }
        None => {
            out.insert("ledger_current_index".into(), json!(seq));
            out.insert("validated".into(), json!(false));
        }
    }
}

fn entry_json(key: &Key, o: &StObject) -> Json {
    let mut j = obj(o.to_json());
    j.insert("index".into(), hex(key));
    Json::Object(j)
}

/// The JSON of a transaction with its `hash`.
fn tx_fields(r: &TxRecord) -> Map<String, Json> {
    let mut t = obj(r.tx.to_json());
    t.insert("hash".into(), hex(&r.hash));
    t
}

/// Metadata as rippled answers it, with the fields it synthesises.
pub fn meta_json(r: &TxRecord) -> Json {
    let mut m = obj(r.meta.to_json());
    for (k, v) in &r.extra {
        m.insert(k.clone(), v.clone());
    }
    if r.tx.transaction_type() == Some("Payment") && !m.contains_key("delivered_amount") {
        m.insert("delivered_amount".into(), json!("unavailable"));
    }
    Json::Object(m)
}

/// A transaction with its metadata and ledger, in the shape of the API version.
pub fn tx_entry(
    r: &TxRecord,
    header: Option<&Header>,
    api: u32,
    binary: bool,
) -> Map<String, Json> {
    let validated = header.is_some();
    let mut out = Map::new();
    if binary {
        out.insert("tx_blob".into(), hex(&r.blob));
        let meta_key = if api >= 2 { "meta_blob" } else { "meta" };
        out.insert(meta_key.into(), hex(&r.meta.to_bytes()));
        if api >= 2 {
            out.insert("hash".into(), hex(&r.hash));
        }
    } else if api >= 2 {
        out.insert("tx_json".into(), r.tx.to_json());
        out.insert("hash".into(), hex(&r.hash));
        out.insert("meta".into(), meta_json(r));
    } else {
        let mut t = tx_fields(r);
        if let Some(h) = header {
            t.insert("ledger_index".into(), json!(h.seq));
            t.insert("date".into(), json!(h.close_time));
        }
        out.insert("tx".into(), Json::Object(t));
        out.insert("meta".into(), meta_json(r));
    }
    out.insert("ledger_index".into(), json!(r.ledger_seq));
    if let Some(h) = header {
        if api >= 2 {
            out.insert("ledger_hash".into(), hex(&h.hash));
            out.insert("close_time_iso".into(), json!(iso_time(h.close_time)));
        }
    }
    out.insert("validated".into(), json!(validated));
    out
}

/// The `ledgerClosed` stream message.
pub fn ledger_closed_msg(node: &Node, h: &Header) -> Json {
    let f = node.fees();
    json!({
        "type": "ledgerClosed",
        "fee_base": f.base,
        "fee_ref": f.base,
        "ledger_hash": hex::encode_upper(h.hash),
        "ledger_index": h.seq,
        "ledger_time": h.close_time,
        "reserve_base": f.reserve_base,
        "reserve_inc": f.reserve_inc,
        "txn_count": h.tx_count,
        "validated_ledgers": format!("{}-{}", node.first_seq(), h.seq),
    })
}

/// The `transaction` stream message.
pub fn transaction_msg(r: &TxRecord, h: &Header, api: u32) -> Json {
    let mut m = Map::new();
    m.insert("type".into(), json!("transaction"));
    m.insert("engine_result".into(), json!(r.ter.token()));
    m.insert("engine_result_code".into(), json!(r.ter.code()));
    m.insert("engine_result_message".into(), json!(r.ter.message()));
    m.insert("ledger_hash".into(), hex(&h.hash));
    m.insert("ledger_index".into(), json!(h.seq));
    m.insert("meta".into(), meta_json(r));
    m.insert("status".into(), json!("closed"));
    m.insert("close_time_iso".into(), json!(iso_time(h.close_time)));
    if api >= 2 {
        let mut t = obj(r.tx.to_json());
        t.insert("date".into(), json!(h.close_time));
        m.insert("tx_json".into(), Json::Object(t));
        m.insert("hash".into(), hex(&r.hash));
    } else {
        let mut t = tx_fields(r);
        t.insert("date".into(), json!(h.close_time));
        m.insert("transaction".into(), Json::Object(t));
    }
    m.insert("validated".into(), json!(true));
    Json::Object(m)
}

fn header_json(h: &Header, api: u32) -> Map<String, Json> {
    let idx = if api >= 2 {
        json!(h.seq)
    } else {
        json!(h.seq.to_string())
    };
    obj(json!({
        "account_hash": hex::encode_upper(h.account_hash),
        "close_flags": 0,
        "close_time": h.close_time,
        "close_time_human": human_time(h.close_time),
        "close_time_iso": iso_time(h.close_time),
        "close_time_resolution": 10,
        "closed": true,
        "ledger_hash": hex::encode_upper(h.hash),
        "ledger_index": idx,
        "parent_close_time": h.parent_close_time,
        "parent_hash": hex::encode_upper(h.parent_hash),
        "total_coins": h.total_drops.to_string(),
        "transaction_hash": hex::encode_upper(h.tx_hash),
    }))
}

/// Handles every method but the subscription ones.
pub fn handle(node: &Arc<Node>, method: &str, params: &Map<String, Json>, api: u32) -> RpcResult {
    match method {
        "ping" => Ok(Map::new()),
        "server_info" => server_info(node),
        "server_state" => server_state(node),
        "fee" => fee(node),
        "ledger_current" => Ok(obj(json!({"ledger_current_index": node.current_seq()}))),
        "ledger_closed" => {
            let h = node.last_closed();
            Ok(obj(
                json!({"ledger_hash": hex::encode_upper(h.hash), "ledger_index": h.seq}),
            ))
        }
        "ledger_accept" => {
            node.close()
                .map_err(|e| RpcError::internal(format!("cannot close the ledger: {e}")))?;
            Ok(obj(json!({"ledger_current_index": node.current_seq()})))
        }
        "ledger" => ledger(node, params, api),
        "account_info" => account_info(node, params, api),
        "account_objects" => account_objects(node, params),
        "account_nfts" => account_nfts(node, params),
        "account_tx" => account_tx(node, params, api),
        "nft_sell_offers" => nft_offers(node, params, true),
        "nft_buy_offers" => nft_offers(node, params, false),
        "tx" => tx(node, params, api),
        "submit" => submit(node, params),
        "submit_multisigned" => submit_multisigned(node, params),
        "wallet_fund" => wallet_fund(node, params),
        _ => Err(RpcError::unknown_command()),
    }
}

fn server_state_name() -> &'static str {
    "full"
}

fn server_info(node: &Arc<Node>) -> RpcResult {
    let h = node.last_closed();
    let f = node.fees();
    Ok(obj(json!({"info": {
        "build_version": concat!("berth-localnet-", env!("CARGO_PKG_VERSION")),
        "complete_ledgers": format!("{}-{}", node.first_seq(), h.seq),
        "hostid": "berth-localnet",
        "io_latency_ms": 1,
        "last_close": {"converge_time_s": 0, "proposers": 0},
        "load_factor": 1,
        "peers": 0,
        "pubkey_node": "n9KAa2zVWjPHgfzsE3iZ8HAbzJtPrnhvoXxYErxKJ6VbTqJPjg5e",
        "server_state": server_state_name(),
        "standalone": true,
        "time": iso_time(h.close_time),
        "uptime": node.uptime(),
        "validated_ledger": {
            "age": 0,
            "base_fee_xrp": f.base as f64 / 1e6,
            "hash": hex::encode_upper(h.hash),
            "reserve_base_xrp": f.reserve_base as f64 / 1e6,
            "reserve_inc_xrp": f.reserve_inc as f64 / 1e6,
            "seq": h.seq,
        },
        "validation_quorum": 0,
    }})))
}

fn server_state(node: &Arc<Node>) -> RpcResult {
    let h = node.last_closed();
    let f = node.fees();
    Ok(obj(json!({"state": {
        "build_version": concat!("berth-localnet-", env!("CARGO_PKG_VERSION")),
        "complete_ledgers": format!("{}-{}", node.first_seq(), h.seq),
        "load_base": 256,
        "load_factor": 256,
        "peers": 0,
        "server_state": server_state_name(),
        "validated_ledger": {
            "base_fee": f.base,
            "close_time": h.close_time,
            "hash": hex::encode_upper(h.hash),
            "reserve_base": f.reserve_base,
            "reserve_inc": f.reserve_inc,
            "seq": h.seq,
        },
    }})))
}

fn fee(node: &Arc<Node>) -> RpcResult {
    let f = node.fees().base.to_string();
    let size = node.ledger_txs(node.current_seq()).len();
    Ok(obj(json!({
        "current_ledger_size": size.to_string(),
        "current_queue_size": "0",
        "drops": {"base_fee": f, "median_fee": "5000", "minimum_fee": f, "open_ledger_fee": f},
        "expected_ledger_size": "1000",
        "ledger_current_index": node.current_seq(),
        "levels": {"median_level": "128000", "minimum_level": "256", "open_ledger_level": "256", "reference_level": "256"},
        "max_queue_size": "2000",
    })))
}

fn ledger(node: &Arc<Node>, params: &Map<String, Json>, api: u32) -> RpcResult {
    let sel = ledger_sel(params, LedgerSel::Current)?;
    let want_txs = param_bool(params, "transactions");
    let expand = param_bool(params, "expand");
    let binary = param_bool(params, "binary");
    let mut out = Map::new();
    let (seq, mut l, header) = match node.header_of(sel) {
        Some(h) => (h.seq, header_json(&h, api), Some(h)),
        None if sel == LedgerSel::Current || sel == LedgerSel::Seq(node.current_seq()) => {
            let seq = node.current_seq();
            let parent = node.last_closed();
            let idx = if api >= 2 {
                json!(seq)
            } else {
                json!(seq.to_string())
            };
            (
                seq,
                obj(
                    json!({"closed": false, "ledger_index": idx, "parent_hash": hex::encode_upper(parent.hash), "parent_close_time": parent.close_time, "total_coins": parent.total_drops.to_string()}),
                ),
                None,
            )
        }
        None => return Err(RpcError::lgr_not_found()),
    };
    if want_txs {
        let txs: Vec<Json> = node
            .ledger_txs(seq)
            .iter()
            .map(|r| {
                if !expand {
                    hex(&r.hash)
                } else if binary {
                    json!({"tx_blob": hex::encode_upper(&r.blob), "meta": hex::encode_upper(r.meta.to_bytes())})
                } else if api >= 2 {
                    json!({"tx_json": r.tx.to_json(), "meta": meta_json(r), "hash": hex::encode_upper(r.hash)})
                } else {
                    let mut t = tx_fields(r);
                    t.insert("metaData".into(), meta_json(r));
                    Json::Object(t)
                }
            })
            .collect();
        l.insert("transactions".into(), Json::Array(txs));
    }
    out.insert("ledger".into(), Json::Object(l));
    ledger_fields(&mut out, seq, &header);
    Ok(out)
}

fn view(node: &Arc<Node>, params: &Map<String, Json>) -> Result<crate::node::LedgerView, RpcError> {
    let sel = ledger_sel(params, LedgerSel::Current)?;
    node.view(sel).ok_or_else(RpcError::lgr_not_found)
}

fn account_info(node: &Arc<Node>, params: &Map<String, Json>, api: u32) -> RpcResult {
    let id = param_account(params, "account")?;
    let signer_lists = match params.get("signer_lists") {
        None => false,
        Some(Json::Bool(b)) => *b,
        Some(_) if api >= 2 => return Err(RpcError::invalid_params("Invalid parameters.")),
        Some(_) => false,
    };
    let v = view(node, params)?;
    let key = index::account_root(&id);
    let acct = v.state.get(&key).ok_or_else(|| {
        let mut e = RpcError::act_not_found();
        e.extra
            .insert("account".into(), json!(encode_account_id(&id)));
        e
    })?;
    let flags = acct.u32("Flags").unwrap_or(0);
    let mut out = Map::new();
    let mut data = entry_json(&key, acct);
    if signer_lists {
        // An array, for the several lists rippled may one day keep; in `account_data`
        // for API version 1, beside it from version 2 on.
        let list_key = index::signer_list(&id);
        let lists: Vec<Json> = v
            .state
            .get(&list_key)
            .map(|l| entry_json(&list_key, l))
            .into_iter()
            .collect();
        match (api, &mut data) {
            (1, Json::Object(d)) => {
                d.insert("signer_lists".into(), Json::Array(lists));
            }
            _ => {
                out.insert("signer_lists".into(), Json::Array(lists));
            }
        }
    }
    out.insert("account_data".into(), data);
    out.insert(
        "account_flags".into(),
        json!({
            "defaultRipple": flags & 0x0080_0000 != 0,
            "depositAuth": flags & 0x0100_0000 != 0,
            "disableMasterKey": flags & 0x0010_0000 != 0,
            "disallowIncomingNFTokenOffer": flags & 0x0400_0000 != 0,
            "disallowIncomingXRP": flags & 0x0008_0000 != 0,
            "requireAuthorization": flags & 0x0004_0000 != 0,
            "requireDestinationTag": flags & 0x0002_0000 != 0,
        }),
    );
    ledger_fields(&mut out, v.seq, &v.header);
    Ok(out)
}

/// Reads a `marker`: the key to resume after, as hex.
fn param_marker(params: &Map<String, Json>) -> Result<Option<Key>, RpcError> {
    match params.get("marker") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => hex::decode(s)
            .ok()
            .and_then(|v| <Key>::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| RpcError::invalid_params("Invalid field 'marker'.")),
        Some(_) => Err(RpcError::invalid_params(
            "Invalid field 'marker', not string.",
        )),
    }
}

fn account_objects(node: &Arc<Node>, params: &Map<String, Json>) -> RpcResult {
    let id = param_account(params, "account")?;
    let limit = param_limit(params, 200, 400)?;
    let marker = param_marker(params)?;
    let filter = params.get("type").and_then(Json::as_str);
    let want: Option<u16> = match filter {
        None => None,
        Some("nft_offer") => Some(0x37),
        Some("nft_page") => Some(0x50),
        Some("account") => Some(0x61),
        Some("signer_list") => Some(0x53),
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "Invalid field 'type': {other:?} is not a type localnet keeps"
            )))
        }
    };
    let v = view(node, params)?;
    if v.state.account(&id).is_none() {
        return Err(RpcError::act_not_found());
    }
    let mut keys = v.state.owned(&id);
    keys.sort();
    let mut objects = Vec::new();
    let mut next = None;
    for k in keys.into_iter().filter(|k| marker.is_none_or(|m| *k > m)) {
        let Some(o) = v.state.get(&k) else { continue };
        if want.is_some_and(|t| o.u16("LedgerEntryType") != Some(t)) {
            continue;
        }
        if objects.len() == limit {
            next = objects.last().map(|(k, _): &(Key, Json)| *k);
            break;
        }
        objects.push((k, entry_json(&k, o)));
    }
    let mut out = Map::new();
    out.insert("account".into(), json!(encode_account_id(&id)));
    out.insert(
        "account_objects".into(),
        Json::Array(objects.into_iter().map(|(_, j)| j).collect()),
    );
    if params.contains_key("limit") {
        out.insert("limit".into(), json!(limit));
    }
    if let Some(m) = next {
        out.insert("marker".into(), hex(&m));
    }
    ledger_fields(&mut out, v.seq, &v.header);
    Ok(out)
}

fn account_nfts(node: &Arc<Node>, params: &Map<String, Json>) -> RpcResult {
    let id = param_account(params, "account")?;
    let limit = param_limit(params, 100, 400)?;
    let marker = param_marker(params)?;
    let v = view(node, params)?;
    if v.state.account(&id).is_none() {
        return Err(RpcError::act_not_found());
    }
    let lo = index::nft_page(&id, &[0; 12]);
    let hi = index::nft_page(&id, &[0xFF; 12]);
    let mut nfts = Vec::new();
    let mut next = None;
    'pages: for (_, page) in v.state.range(lo, hi) {
        let Some(Value::Array(tokens)) = page.get("NFTokens") else {
            continue;
        };
        for (_, t) in tokens {
            let Some(tid) = t.hash256("NFTokenID") else {
                continue;
            };
            if marker.is_some_and(|m| tid <= m) {
                continue;
            }
            if nfts.len() == limit {
                next = nfts.last().map(|(k, _): &(Key, Json)| *k);
                break 'pages;
            }
            let p = nftoken_parts(&tid);
            let mut j = json!({
                "Flags": p.flags,
                "Issuer": encode_account_id(&p.issuer),
                "NFTokenID": hex::encode_upper(tid),
                "NFTokenTaxon": p.taxon,
                "TransferFee": p.transfer_fee,
                "nft_serial": p.sequence,
            });
            if let Some(uri) = t.blob("URI") {
                j["URI"] = json!(hex::encode_upper(uri));
            }
            nfts.push((tid, j));
        }
    }
    let mut out = Map::new();
    out.insert("account".into(), json!(encode_account_id(&id)));
    out.insert(
        "account_nfts".into(),
        Json::Array(nfts.into_iter().map(|(_, j)| j).collect()),
    );
    out.insert("limit".into(), json!(limit));
    if let Some(m) = next {
        out.insert("marker".into(), hex(&m));
    }
    ledger_fields(&mut out, v.seq, &v.header);
    Ok(out)
}

fn nft_offers(node: &Arc<Node>, params: &Map<String, Json>, sells: bool) -> RpcResult {
    let token = param_hash(params, "nft_id")?;
    let limit = param_limit(params, 250, 500)?;
    let marker = param_marker(params)?;
    let v = view(node, params)?;
    let mut offers = Vec::new();
    let mut next = None;
    for k in v.state.token_offers(&token) {
        let Some(o) = v.state.get(&k) else { continue };
        let is_sell = o.u32("Flags").unwrap_or(0) & 1 != 0;
        if is_sell != sells || marker.is_some_and(|m| k <= m) {
            continue;
        }
        if offers.len() == limit {
            next = offers.last().map(|(k, _): &(Key, Json)| *k);
            break;
        }
        let amount = match o.amount("Amount") {
            Some(Amount::Drops(d)) => json!(d.to_string()),
            Some(a) => berth_xrpl_core::codec::amount_to_json(a),
            None => Json::Null,
        };
        let mut j = json!({
            "amount": amount,
            "flags": o.u32("Flags").unwrap_or(0),
            "nft_offer_index": hex::encode_upper(k),
            "owner": o.account("Owner").map(|a| encode_account_id(&a)),
        });
        if let Some(d) = o.account("Destination") {
            j["destination"] = json!(encode_account_id(&d));
        }
        if let Some(e) = o.u32("Expiration") {
            j["expiration"] = json!(e);
        }
        offers.push((k, j));
    }
    if offers.is_empty() {
        return Err(RpcError::object_not_found());
    }
    let mut out = Map::new();
    out.insert("nft_id".into(), hex(&token));
    out.insert(
        "offers".into(),
        Json::Array(offers.into_iter().map(|(_, j)| j).collect()),
    );
    if params.contains_key("limit") {
        out.insert("limit".into(), json!(limit));
    }
    if let Some(m) = next {
        out.insert("marker".into(), hex(&m));
    }
    Ok(out)
}

fn param_ledger_bound(params: &Map<String, Json>, name: &str) -> Result<Option<i64>, RpcError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| RpcError::invalid_params(format!("Invalid field '{name}'."))),
    }
}

fn account_tx(node: &Arc<Node>, params: &Map<String, Json>, api: u32) -> RpcResult {
    let id = param_account(params, "account")?;
    let limit = param_limit(params, 200, 400)?;
    let forward = param_bool(params, "forward");
    let binary = param_bool(params, "binary");
    let first = node.first_seq();
    let last = node.last_closed().seq;
    let (min, max) = if params.contains_key("ledger_index") || params.contains_key("ledger_hash") {
        match ledger_sel(params, LedgerSel::Validated)? {
            LedgerSel::Seq(s) => (s, s),
            LedgerSel::Hash(h) => {
                let hd = node
                    .header_of(LedgerSel::Hash(h))
                    .ok_or_else(RpcError::lgr_not_found)?;
                (hd.seq, hd.seq)
            }
            _ => (last, last),
        }
    } else {
        let min = param_ledger_bound(params, "ledger_index_min")?.unwrap_or(-1);
        let max = param_ledger_bound(params, "ledger_index_max")?.unwrap_or(-1);
        let min = if min < 0 { first } else { min as u32 };
        let max = if max < 0 { last } else { max as u32 };
        if max < min {
            return Err(RpcError::new(
                "lgrIdxsInvalid",
                57,
                "Ledger indexes invalid.",
            ));
        }
        (min, max)
    };
    let marker = match params.get("marker") {
        None | Some(Json::Null) => None,
        Some(m) => {
            let l = m.get("ledger").and_then(Json::as_u64);
            let s = m.get("seq").and_then(Json::as_u64);
            match (l, s) {
                (Some(l), Some(s)) => Some((l as u32, s as u32)),
                _ => return Err(RpcError::invalid_params("Invalid field 'marker'.")),
            }
        }
    };
    let mut txs = node.account_txs(&id, min, max);
    if !forward {
        txs.reverse();
    }
    let mut started = marker.is_none();
    let mut out_txs = Vec::new();
    let mut next = None;
    for r in txs {
        let pos = (r.ledger_seq, r.index);
        if !started {
            if Some(pos) == marker {
                started = true;
            } else {
                continue;
            }
        }
        if out_txs.len() == limit {
            next = Some(json!({"ledger": pos.0, "seq": pos.1}));
            break;
        }
        let h = node.header(r.ledger_seq);
        out_txs.push(Json::Object(tx_entry(&r, h.as_ref(), api, binary)));
    }
    let mut out = Map::new();
    out.insert("account".into(), json!(encode_account_id(&id)));
    out.insert("ledger_index_min".into(), json!(min));
    out.insert("ledger_index_max".into(), json!(max));
    out.insert("limit".into(), json!(limit));
    out.insert("transactions".into(), Json::Array(out_txs));
    out.insert("validated".into(), json!(true));
    if let Some(m) = next {
        out.insert("marker".into(), m);
    }
    Ok(out)
}

fn tx(node: &Arc<Node>, params: &Map<String, Json>, api: u32) -> RpcResult {
    let hash = param_hash(params, "transaction")?;
    let binary = param_bool(params, "binary");
    let r = node.tx(&hash).ok_or_else(RpcError::txn_not_found)?;
    let header = node.header(r.ledger_seq);
    let mut out = tx_entry(&r, header.as_ref(), api, binary);
    if api < 2 && !binary {
        // API v1 puts the transaction's fields at the top level.
        if let Some(Json::Object(t)) = out.remove("tx") {
            for (k, v) in t {
                out.insert(k, v);
            }
        }
        if let Some(h) = &header {
            out.insert("inLedger".into(), json!(h.seq));
        }
    }
    Ok(out)
}

/// Decodes and checks a submitted blob, then applies it.
pub fn submit_blob(node: &Arc<Node>, blob: Vec<u8>) -> RpcResult {
    if blob.len() > MAX_TX_BYTES {
        return Err(RpcError::invalid_transaction(format!(
            "transaction of {} bytes exceeds the {MAX_TX_BYTES}-byte limit",
            blob.len()
        )));
    }
    let tx =
        StObject::from_bytes(&blob).map_err(|e| RpcError::invalid_transaction(e.to_string()))?;
    let ty = engine::check_format(&tx).map_err(RpcError::invalid_transaction)?;
    if !engine::SUPPORTED_TYPES.contains(&ty) {
        return Err(RpcError::not_supported(format!(
            "transaction type {ty} is not supported by localnet (supported: {})",
            engine::SUPPORTED_TYPES.join(", ")
        )));
    }
    if let Err(reason) = xtx::verify_signatures(&tx) {
        return Err(RpcError::invalid_transaction(format!(
            "fails local checks: {reason}"
        )));
    }
    if let Some(reason) = engine::memo_problem(&tx) {
        return Err(RpcError::invalid_transaction(format!(
            "fails local checks: {reason}"
        )));
    }
    let r = node.submit(blob.clone(), tx);
    let mut tx_json = obj(r.tx.to_json());
    tx_json.insert("hash".into(), hex(&r.hash));
    let mut out = Map::new();
    out.insert("accepted".into(), json!(r.applied || r.held));
    out.insert("applied".into(), json!(r.applied));
    out.insert("broadcast".into(), json!(r.applied));
    out.insert("engine_result".into(), json!(r.ter.token()));
    out.insert("engine_result_code".into(), json!(r.ter.code()));
    out.insert("engine_result_message".into(), json!(r.ter.message()));
    out.insert("kept".into(), json!(r.applied || r.held));
    out.insert("queued".into(), json!(false));
    out.insert(
        "open_ledger_cost".into(),
        json!(node.fees().base.to_string()),
    );
    out.insert("tx_blob".into(), hex(&blob));
    out.insert("tx_json".into(), Json::Object(tx_json));
    out.insert(
        "validated_ledger_index".into(),
        json!(node.last_closed().seq),
    );
    if let Some(n) = r.account_sequence_next {
        out.insert("account_sequence_next".into(), json!(n));
    }
    if let Some(n) = r.account_sequence_available {
        out.insert("account_sequence_available".into(), json!(n));
    }
    Ok(out)
}

fn submit(node: &Arc<Node>, params: &Map<String, Json>) -> RpcResult {
    if params.contains_key("secret")
        || params.contains_key("seed")
        || params.contains_key("tx_json")
    {
        return Err(RpcError::not_supported(
            "sign-and-submit is not supported: submit a signed tx_blob",
        ));
    }
    let s = params
        .get("tx_blob")
        .ok_or_else(|| RpcError::invalid_params("Missing field 'tx_blob'."))?
        .as_str()
        .ok_or_else(|| RpcError::invalid_params("Invalid field 'tx_blob', not string."))?;
    let blob = hex::decode(s)
        .map_err(|_| RpcError::invalid_params("Invalid field 'tx_blob', not hex."))?;
    submit_blob(node, blob)
}

/// `submit_multisigned`: a multi-signed transaction as `tx_json`, checked the way
/// rippled's `transactionSubmitMultiSigned` does (fields, then the Signers sorted by
/// account, no duplicates, not the transaction's account), then submitted as `submit`
/// does.
fn submit_multisigned(node: &Arc<Node>, params: &Map<String, Json>) -> RpcResult {
    let missing = |f: &str| RpcError::invalid_params(format!("Missing field '{f}'."));
    let tx_json = params.get("tx_json").ok_or_else(|| missing("tx_json"))?;
    let fields = tx_json
        .as_object()
        .ok_or_else(|| RpcError::invalid_params("Invalid field 'tx_json', not object."))?;
    for f in [
        "Sequence",
        "SigningPubKey",
        "Account",
        "TransactionType",
        "Fee",
    ] {
        if !fields.contains_key(f) {
            return Err(missing(&format!("tx_json.{f}")));
        }
    }
    if fields.get("SigningPubKey") != Some(&json!("")) {
        return Err(RpcError::invalid_params(
            "When multi-signing 'tx_json.SigningPubKey' must be empty.",
        ));
    }
    let account = fields
        .get("Account")
        .and_then(Json::as_str)
        .and_then(|a| decode_account_id(a).ok())
        .ok_or_else(|| RpcError::new("srcActMalformed", 65, "Source account is malformed."))?;
    let current = node
        .view(LedgerSel::Current)
        .ok_or_else(|| RpcError::internal("no open ledger"))?;
    if current.state.account(&account).is_none() {
        return Err(RpcError::new(
            "srcActNotFound",
            67,
            "Source account not found.",
        ));
    }
    let mut tx =
        StObject::from_json(tx_json).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if tx.contains("TxnSignature") {
        return Err(RpcError::new(
            "signingMalformed",
            63,
            "Signing of transaction is malformed.",
        ));
    }
    match tx.amount("Fee") {
        Some(Amount::Drops(d)) if *d > 0 => {}
        Some(Amount::Drops(_)) => {
            return Err(RpcError::invalid_params(
                "Invalid Fee field.  Fees must be greater than zero.",
            ))
        }
        _ => {
            return Err(RpcError::invalid_params(
                "Invalid Fee field.  Fees must be specified in XRP.",
            ))
        }
    }
    let mut signers = match tx.remove("Signers") {
        Some(Value::Array(items)) => items,
        _ => return Err(missing("tx_json.Signers")),
    };
    if signers.is_empty() {
        return Err(RpcError::invalid_params(
            "tx_json.Signers array may not be empty.",
        ));
    }
    // A Signer object has these three fields and no others.
    let well_formed = signers.iter().all(|(f, o)| {
        f.name == "Signer"
            && o.fields().count() == 3
            && ["Account", "SigningPubKey", "TxnSignature"]
                .iter()
                .all(|n| o.contains(n))
    });
    if !well_formed {
        return Err(RpcError::invalid_params(
            "Signers array may only contain Signer entries.",
        ));
    }
    signers.sort_by_key(|(_, o)| o.account("Account"));
    if let Some(w) = signers
        .windows(2)
        .find(|w| w[0].1.account("Account") == w[1].1.account("Account"))
    {
        let dup = w[0].1.account("Account").unwrap_or_default();
        return Err(RpcError::invalid_params(format!(
            "Duplicate Signers:Signer:Account entries ({}) are not allowed.",
            encode_account_id(&dup)
        )));
    }
    if signers
        .iter()
        .any(|(_, o)| o.account("Account") == Some(account))
    {
        return Err(RpcError::invalid_params(format!(
            "A Signer may not be the transaction's Account ({}).",
            encode_account_id(&account)
        )));
    }
    tx.set("Signers", Value::Array(signers));
    submit_blob(node, tx.to_bytes())
}

/// Localnet's convenience: a payment from the genesis account, signed by the server.
/// Params: `destination` (address), `amount` (drops, default 1,000 XRP).
fn wallet_fund(node: &Arc<Node>, params: &Map<String, Json>) -> RpcResult {
    let dst = param_account(params, "destination")?;
    let amount: i64 = match params.get("amount") {
        None => 1_000_000_000,
        Some(v) => v
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_i64())
            .filter(|d| *d > 0)
            .ok_or_else(|| RpcError::invalid_params("Invalid field 'amount': drops as a string"))?,
    };
    let genesis = node.genesis();
    let seq = node
        .view(LedgerSel::Current)
        .and_then(|v| {
            v.state
                .account(&genesis.account_id())
                .and_then(|a| a.u32("Sequence"))
        })
        .ok_or_else(|| RpcError::internal("the genesis account is gone"))?;
    let mut tx = StObject::new();
    tx.set("TransactionType", Value::UInt16(0));
    tx.set("Account", Value::AccountId(genesis.account_id()));
    tx.set("Destination", Value::AccountId(dst));
    tx.set("Amount", Value::Amount(Amount::Drops(amount)));
    tx.set("Fee", Value::Amount(Amount::Drops(node.fees().base)));
    tx.set("Sequence", Value::UInt32(seq));
    tx.set("Flags", Value::UInt32(0));
    let signed = xtx::sign(&mut tx, genesis);
    debug_assert_eq!(signed.hash, transaction_id(&signed.blob));
    let mut out = submit_blob(node, signed.blob)?;
    if out.get("engine_result") != Some(&json!(Ter::tesSUCCESS.token())) {
        let why = out
            .get("engine_result")
            .cloned()
            .unwrap_or(Json::Null)
            .to_string();
        return Err(RpcError::internal(format!("funding payment failed: {why}")));
    }
    out.insert("hash".into(), hex(&signed.hash));
    Ok(out)
}
