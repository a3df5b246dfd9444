//! Catch-up of an account's validated history from a ledger cursor, oldest first
//! (`account_tx` with `forward: true`, marker paging, API version 2).
//!
//! Typical use after start or [`crate::StreamEvent::Reconnected`]: read from the cursor,
//! handle every transaction, then store `validated_ledger + 1` as the new cursor. Handling
//! must be idempotent: a transaction of a ledger already read may come again from the
//! stream.

use serde_json::{json, Value};
use tracing::warn;

use crate::client::{Client, ClientError};
use crate::tx::{json_u32, ValidatedTx};

/// Transactions per `account_tx` page.
pub const DEFAULT_PAGE_SIZE: u32 = 200;

/// What one catch-up found.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Validated transactions of the account in ledger order (ledger, then index in ledger).
    pub transactions: Vec<ValidatedTx>,
    /// The validated ledger the read stopped at: the history up to it is complete, so the
    /// next cursor is `validated_ledger + 1`.
    pub validated_ledger: u32,
}

/// Pages through an account's validated history from `from_ledger` up to the validated
/// ledger at the time of the first page.
#[derive(Debug)]
pub struct HistoryPager {
    client: Client,
    account: String,
    from_ledger: u32,
    page_size: u32,
    /// Fixed on the first page.
    validated_ledger: Option<u32>,
    marker: Option<Value>,
    done: bool,
}

impl HistoryPager {
    pub fn new(client: Client, account: impl Into<String>, from_ledger: u32) -> Self {
        HistoryPager {
            client,
            account: account.into(),
            from_ledger,
            page_size: DEFAULT_PAGE_SIZE,
            validated_ledger: None,
            marker: None,
            done: false,
        }
    }

    /// Transactions per request (1 …; servers cap it, rippled at 400).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// The validated ledger this read stops at, once the first page was read.
    pub fn validated_ledger(&self) -> Option<u32> {
        self.validated_ledger
    }

    /// The next page, `None` when the history up to the validated ledger is read.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ValidatedTx>>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let max = match self.validated_ledger {
            Some(v) => v,
            None => {
                let v = self.client.validated_ledger_index().await?;
                self.validated_ledger = Some(v);
                v
            }
        };
        if self.from_ledger > max {
            self.done = true;
            return Ok(None);
        }
        let mut params = json!({
            "account": self.account,
            "ledger_index_min": self.from_ledger,
            "ledger_index_max": max,
            "forward": true,
            "limit": self.page_size,
            "api_version": 2,
        });
        if let Some(m) = &self.marker {
            params["marker"] = m.clone();
        }
        let method = "account_tx";
        let r = self.client.request(method, params).await?;
        let entries = r
            .get("transactions")
            .and_then(Value::as_array)
            .ok_or_else(|| self.client.bad_response(method, "no transactions array"))?;
        let mut page = Vec::with_capacity(entries.len());
        for entry in entries {
            match ValidatedTx::from_json(entry) {
                Some(tx) => page.push(tx),
                None => {
                    let hash = entry.get("hash").and_then(|h| h.as_str()).unwrap_or("?");
                    let ledger = entry.get("ledger_index").and_then(json_u32).unwrap_or(0);
                    warn!(
                        account = %self.account,
                        hash,
                        ledger,
                        "skipping an unvalidated or incomplete account_tx entry"
                    );
                }
            }
        }
        self.marker = r.get("marker").filter(|m| !m.is_null()).cloned();
        if self.marker.is_none() {
            self.done = true;
        }
        Ok(Some(page))
    }
}

/// Every validated transaction of `account` from ledger `from_ledger` on, oldest first,
/// with the validated ledger the read stopped at.
pub async fn account_history(
    client: &Client,
    account: &str,
    from_ledger: u32,
) -> Result<History, ClientError> {
    let mut pager = HistoryPager::new(client.clone(), account, from_ledger);
    let mut transactions = Vec::new();
    while let Some(page) = pager.next_page().await? {
        transactions.extend(page);
    }
    let validated_ledger = match pager.validated_ledger() {
        Some(v) => v,
        None => client.validated_ledger_index().await?,
    };
    Ok(History {
        transactions,
        validated_ledger,
    })
}
