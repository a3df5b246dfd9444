//! [`ValidatedTx`]: one transaction of a validated ledger, as the `transaction` stream,
//! `account_tx` and `tx` report it (API version 2, or version 1's layout).

use serde_json::Value;

/// Seconds between the Unix epoch and the XRP Ledger's epoch (2000-01-01T00:00:00Z).
pub const RIPPLE_EPOCH_OFFSET: u64 = 946_684_800;

/// One transaction of a validated ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedTx {
    /// Transaction hash, 64 upper-case hex digits.
    pub hash: String,
    /// The validated ledger that holds it.
    pub ledger_index: u32,
    /// The transaction's fields (`tx_json`), without `hash`, `ledger_index` or `date`.
    pub tx: Value,
    /// The metadata: `AffectedNodes`, `TransactionResult`, `delivered_amount`, ….
    pub meta: Value,
    /// The result token, e.g. `tesSUCCESS` or `tecNO_DST_INSUF_XRP`.
    pub result: String,
    /// The ledger's close time in Unix seconds, when the server reported it.
    pub close_time_unix: Option<u64>,
}

impl ValidatedTx {
    /// The result as a typed code; `None` for a token this build does not know.
    pub fn ter(&self) -> Option<berth_xrpl_core::Ter> {
        berth_xrpl_core::Ter::from_token(&self.result)
    }

    /// The `TransactionType` field.
    pub fn tx_type(&self) -> &str {
        self.tx["TransactionType"].as_str().unwrap_or_default()
    }

    /// The sending `Account` field.
    pub fn account(&self) -> &str {
        self.tx["Account"].as_str().unwrap_or_default()
    }

    /// Reads a transaction from a `transaction` stream message, an `account_tx` entry or a
    /// `tx` result. `None` unless it is validated and carries hash, ledger index, fields and
    /// metadata (so only validated, complete transactions ever reach a caller).
    pub fn from_json(v: &Value) -> Option<ValidatedTx> {
        if v.get("validated").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        // API v2: `tx_json` + `hash`; v1 stream: `transaction`; v1 account_tx: `tx`;
        // v1 `tx` result: fields at the top level.
        let fields = v
            .get("tx_json")
            .or_else(|| v.get("transaction"))
            .or_else(|| v.get("tx"))
            .unwrap_or(v);
        let fields = fields.as_object()?;
        let hash = v
            .get("hash")
            .or_else(|| fields.get("hash"))
            .and_then(Value::as_str)?
            .to_ascii_uppercase();
        let ledger_index = v
            .get("ledger_index")
            .or_else(|| fields.get("ledger_index"))
            .and_then(json_u32)?;
        let meta = v.get("meta").filter(|m| m.is_object())?.clone();
        let result = meta
            .get("TransactionResult")
            .or_else(|| v.get("engine_result"))
            .and_then(Value::as_str)?
            .to_owned();
        let close_time_unix = fields
            .get("date")
            .or_else(|| v.get("date"))
            .and_then(Value::as_u64)
            .map(|d| d + RIPPLE_EPOCH_OFFSET)
            .or_else(|| {
                v.get("close_time_iso")
                    .and_then(Value::as_str)
                    .and_then(parse_iso_utc)
            });
        let mut tx = Value::Object(fields.clone());
        if let Some(m) = tx.as_object_mut() {
            for k in [
                "hash",
                "ledger_index",
                "date",
                "inLedger",
                "meta",
                "validated",
                "ctid",
            ] {
                m.remove(k);
            }
        }
        Some(ValidatedTx {
            hash,
            ledger_index,
            tx,
            meta,
            result,
            close_time_unix,
        })
    }
}

/// A ledger index written as a number or a decimal string.
pub(crate) fn json_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A drops amount written as a decimal string (XRP amounts) or a number.
pub(crate) fn json_drops(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (what rippled writes in `close_time_iso`) to Unix seconds.
fn parse_iso_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iso_times_parse_to_unix_seconds() {
        assert_eq!(
            parse_iso_utc("2000-01-01T00:00:00Z"),
            Some(RIPPLE_EPOCH_OFFSET)
        );
        assert_eq!(parse_iso_utc("2026-11-21T06:19:22Z"), Some(1_795_241_962));
        assert_eq!(parse_iso_utc("2026-13-21T06:19:22Z"), None);
        assert_eq!(parse_iso_utc("garbage"), None);
    }

    #[test]
    fn unvalidated_or_incomplete_transactions_are_refused() {
        let full = json!({"validated": true, "hash": "ab", "ledger_index": 5,
            "tx_json": {"Account": "r1", "TransactionType": "Payment", "date": 10},
            "meta": {"TransactionResult": "tesSUCCESS"}});
        let tx = ValidatedTx::from_json(&full).unwrap();
        assert_eq!(tx.hash, "AB");
        assert_eq!(tx.close_time_unix, Some(10 + RIPPLE_EPOCH_OFFSET));
        assert_eq!(tx.tx_type(), "Payment");
        assert!(tx.tx.get("date").is_none());
        let mut pending = full.clone();
        pending["validated"] = json!(false);
        assert_eq!(ValidatedTx::from_json(&pending), None);
        let mut no_meta = full;
        no_meta.as_object_mut().unwrap().remove("meta");
        assert_eq!(ValidatedTx::from_json(&no_meta), None);
    }
}
