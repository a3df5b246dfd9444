//! Typed marketplace events decoded from validated transactions, seen from one account (a
//! host, a tenant or the registry). See `schemas/README.md` for the memo protocol.
//!
//! Rules:
//! - only `tesSUCCESS` transactions make events (a `tec` moved no money and no token);
//! - money that reached `account` always makes an event: a request with a malformed or
//!   missing memo decodes to [`MarketEvent::Unrequested`] (or a `Purchase` whose `request`
//!   is an `Err`) carrying a [`Problem`] the host refunds with — never dropped, never a panic;
//! - answers (`-ok`, `-err`, `refund`) are reported in both directions, so a host replaying
//!   its own history sees which requests it has answered;
//! - registry messages (`host-reg`, `host-dereg`, `heartbeat`) are reported in both
//!   directions too (the registry sees them arrive, a host sees its own).

use berth_schemas::field::TxHash;
use berth_schemas::memo::{Memo, MemoError, MemoKind, Message};
use berth_schemas::message::{Acquire, Extend, Heartbeat, HostInfo, ReasonCode, Terminate};
use serde_json::Value;
use thiserror::Error;

use crate::tx::{json_drops, ValidatedTx};

/// tfSellNFToken.
const SELL_FLAG: u64 = 0x1;

/// Why money that arrived does not carry a request the host can serve.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("no Berth memo")]
    MissingMemo,
    #[error("{0}")]
    Malformed(MemoError),
    #[error("{kind} cannot ride on a {tx_type} to this account")]
    WrongKind { kind: MemoKind, tx_type: String },
    #[error("amount is not XRP: {amount}")]
    NotXrp { amount: String },
}

impl Problem {
    /// The failure code an answer to this problem carries.
    pub fn code(&self) -> ReasonCode {
        match self {
            Problem::Malformed(MemoError::Payload(
                berth_schemas::payload::PayloadError::Version { .. },
            )) => ReasonCode::UnsupportedVersion,
            Problem::NotXrp { .. } => ReasonCode::BadAmount,
            _ => ReasonCode::BadPayload,
        }
    }
}

/// A marketplace event.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketEvent {
    /// Someone bought one of `account`'s lease sell offers (an `NFTokenAcceptOffer` that
    /// deleted an `NFTokenOffer` owned by `account`). `request` is the `berth/acquire` memo.
    Purchase {
        tx_hash: String,
        buyer: String,
        token_id: String,
        offer_id: String,
        amount_drops: u64,
        request: Result<Acquire, Problem>,
    },
    /// A `berth/extend` payment to `account`.
    Extend {
        tx_hash: String,
        sender: String,
        amount_drops: u64,
        request: Extend,
    },
    /// A `berth/terminate` payment to `account`.
    Terminate {
        tx_hash: String,
        sender: String,
        amount_drops: u64,
        request: Terminate,
    },
    /// A payment to `account` that is not a request it can serve; a host refunds it
    /// (`berth/refund`, or the `-err` of `kind` when the memo type was readable).
    Unrequested {
        tx_hash: String,
        sender: String,
        amount_drops: u64,
        kind: Option<MemoKind>,
        reason: Problem,
    },
    /// An answer (`-ok`, `-err`, `refund`) sent by or to `account`, naming its request.
    Answer {
        tx_hash: String,
        from: String,
        to: String,
        amount_drops: u64,
        request: TxHash,
        message: Message,
    },
    /// `berth/host-reg` from `host` to the registry `to`.
    HostRegistration {
        tx_hash: String,
        host: String,
        to: String,
        info: HostInfo,
        close_time_unix: Option<u64>,
    },
    /// `berth/host-dereg`.
    HostDeregistration {
        tx_hash: String,
        host: String,
        to: String,
        close_time_unix: Option<u64>,
    },
    /// `berth/heartbeat`.
    Heartbeat {
        tx_hash: String,
        host: String,
        to: String,
        heartbeat: Heartbeat,
        close_time_unix: Option<u64>,
    },
}

impl MarketEvent {
    pub fn tx_hash(&self) -> &str {
        match self {
            MarketEvent::Purchase { tx_hash, .. }
            | MarketEvent::Extend { tx_hash, .. }
            | MarketEvent::Terminate { tx_hash, .. }
            | MarketEvent::Unrequested { tx_hash, .. }
            | MarketEvent::Answer { tx_hash, .. }
            | MarketEvent::HostRegistration { tx_hash, .. }
            | MarketEvent::HostDeregistration { tx_hash, .. }
            | MarketEvent::Heartbeat { tx_hash, .. } => tx_hash,
        }
    }
}

/// The memos of a transaction's JSON; a memo whose fields are not hex is reported.
fn memos(tx: &Value) -> Result<Vec<Memo>, MemoError> {
    let Some(list) = tx.get("Memos").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| {
            let m = m.get("Memo").unwrap_or(m);
            let f = |k: &str| m.get(k).and_then(Value::as_str);
            Memo::from_hex(f("MemoType"), f("MemoFormat"), f("MemoData"))
        })
        .collect()
}

/// The Berth message of a transaction: `None` without a Berth memo.
fn message(tx: &Value) -> Option<Result<Message, MemoError>> {
    match memos(tx) {
        Ok(list) => Message::from_memos(&list),
        Err(e) => Some(Err(e)),
    }
}

/// The memo type of the first Berth memo, when readable (for `-err` answers).
fn kind_of(tx: &Value) -> Option<MemoKind> {
    let list = memos(tx).ok()?;
    let memo = list.iter().find(|m| {
        m.memo_type
            .starts_with(berth_schemas::memo::TYPE_PREFIX.as_bytes())
    })?;
    std::str::from_utf8(&memo.memo_type).ok()?.parse().ok()
}

/// Decodes `tx` as seen from `account`. `None` when it is no marketplace event for it.
pub fn decode(tx: &ValidatedTx, account: &str) -> Option<MarketEvent> {
    if tx.result != "tesSUCCESS" {
        return None;
    }
    match tx.tx_type() {
        "NFTokenAcceptOffer" => decode_purchase(tx, account),
        "Payment" => decode_payment(tx, account),
        _ => None,
    }
}

fn decode_purchase(tx: &ValidatedTx, account: &str) -> Option<MarketEvent> {
    let buyer = tx.account();
    if buyer == account {
        return None;
    }
    let nodes = tx.meta.get("AffectedNodes")?.as_array()?;
    let (offer_id, offer) = nodes.iter().find_map(|n| {
        let d = n.get("DeletedNode")?;
        if d.get("LedgerEntryType")?.as_str()? != "NFTokenOffer" {
            return None;
        }
        let f = d.get("FinalFields")?;
        let sell = f.get("Flags").and_then(Value::as_u64).unwrap_or(0) & SELL_FLAG != 0;
        if !sell || f.get("Owner")?.as_str()? != account {
            return None;
        }
        Some((d.get("LedgerIndex")?.as_str()?.to_owned(), f))
    })?;
    let token_id = offer
        .get("NFTokenID")
        .and_then(Value::as_str)
        .or_else(|| tx.meta.get("nftoken_id").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let amount = offer.get("Amount").cloned().unwrap_or(Value::Null);
    let (amount_drops, not_xrp) = match json_drops(&amount) {
        Some(d) => (d, None),
        None => (
            0,
            Some(Problem::NotXrp {
                amount: amount.to_string(),
            }),
        ),
    };
    let request = match (not_xrp, message(&tx.tx)) {
        (Some(p), _) => Err(p),
        (None, None) => Err(Problem::MissingMemo),
        (None, Some(Err(e))) => Err(Problem::Malformed(e)),
        (None, Some(Ok(Message::Acquire(a)))) => Ok(a),
        (None, Some(Ok(other))) => Err(Problem::WrongKind {
            kind: other.kind(),
            tx_type: "NFTokenAcceptOffer".into(),
        }),
    };
    Some(MarketEvent::Purchase {
        tx_hash: tx.hash.clone(),
        buyer: buyer.to_owned(),
        token_id,
        offer_id,
        amount_drops,
        request,
    })
}

fn decode_payment(tx: &ValidatedTx, account: &str) -> Option<MarketEvent> {
    let from = tx.account().to_owned();
    let to = tx.tx.get("Destination")?.as_str()?.to_owned();
    if from == to || (from != account && to != account) {
        return None;
    }
    let incoming = to == account;
    let amount = tx
        .meta
        .get("delivered_amount")
        .or_else(|| tx.tx.get("DeliverMax"))
        .or_else(|| tx.tx.get("Amount"))
        .cloned()
        .unwrap_or(Value::Null);
    let amount_drops = json_drops(&amount);
    let tx_hash = tx.hash.clone();
    let unrequested = |kind: Option<MemoKind>, reason: Problem| {
        incoming.then(|| MarketEvent::Unrequested {
            tx_hash: tx.hash.clone(),
            sender: from.clone(),
            amount_drops: amount_drops.unwrap_or(0),
            kind,
            reason,
        })
    };
    let message = match message(&tx.tx) {
        None => return unrequested(None, Problem::MissingMemo),
        Some(Err(e)) => return unrequested(kind_of(&tx.tx), Problem::Malformed(e)),
        Some(Ok(m)) => m,
    };
    let close_time_unix = tx.close_time_unix;
    let Some(drops) = amount_drops else {
        return unrequested(
            Some(message.kind()),
            Problem::NotXrp {
                amount: amount.to_string(),
            },
        );
    };
    if let Some(request) = message.answers() {
        return Some(MarketEvent::Answer {
            tx_hash,
            from,
            to,
            amount_drops: drops,
            request,
            message,
        });
    }
    match message {
        Message::HostReg(info) => Some(MarketEvent::HostRegistration {
            tx_hash,
            host: from,
            to,
            info,
            close_time_unix,
        }),
        Message::HostDereg(_) => Some(MarketEvent::HostDeregistration {
            tx_hash,
            host: from,
            to,
            close_time_unix,
        }),
        Message::Heartbeat(heartbeat) => Some(MarketEvent::Heartbeat {
            tx_hash,
            host: from,
            to,
            heartbeat,
            close_time_unix,
        }),
        _ if !incoming => None,
        Message::Extend(request) => Some(MarketEvent::Extend {
            tx_hash,
            sender: from,
            amount_drops: drops,
            request,
        }),
        Message::Terminate(request) => Some(MarketEvent::Terminate {
            tx_hash,
            sender: from,
            amount_drops: drops,
            request,
        }),
        other => unrequested(
            Some(other.kind()),
            Problem::WrongKind {
                kind: other.kind(),
                tx_type: "Payment".into(),
            },
        ),
    }
}
