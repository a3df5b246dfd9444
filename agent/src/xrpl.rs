//! The real [`Ledger`]: `berth-mb-xrpl`'s client and submitter, and the conversion of its
//! validated transactions into [`LedgerEvent`]s.

use berth_mb_xrpl::events::{decode, MarketEvent};
use berth_mb_xrpl::{
    Client, ClientError, SignedTx, SubmitError, Submitter, Validated, ValidatedTx,
};
use berth_schemas::field::{AccountAddress, NfTokenId, OfferId, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::memo::Memo;
use serde_json::{json, Value};
use tracing::warn;

use crate::ledger::{
    AccountFacts, Ledger, LedgerAction, LedgerError, LedgerEvent, PreparedTx, TxOutcome, TxResult,
    LEASE_TOKEN_FLAGS, LEASE_TOKEN_TAXON,
};

/// Seconds between the Unix epoch and the XRP Ledger's epoch.
const RIPPLE_EPOCH_OFFSET: u64 = 946_684_800;

/// The host account's view of the ledger through `berth-mb-xrpl`.
pub struct XrplLedger {
    client: Client,
    submitter: Submitter,
}

impl XrplLedger {
    pub fn new(client: Client, submitter: Submitter) -> Self {
        Self { client, submitter }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn account(&self) -> &str {
        self.submitter.account()
    }

    /// Balance and reserves of the host account.
    pub async fn account_facts(&self) -> Result<AccountFacts, LedgerError> {
        let info = self
            .client
            .request(
                "account_info",
                json!({"account": self.account(), "ledger_index": "validated"}),
            )
            .await
            .map_err(|e| match e.rpc_error() {
                Some("actNotFound") => LedgerError::Protocol(format!(
                    "host account {} does not exist on the ledger: fund it first",
                    self.account()
                )),
                _ => connection(e),
            })?;
        let data = &info["account_data"];
        let balance_drops = number(&data["Balance"])
            .ok_or_else(|| LedgerError::Protocol("account_info without Balance".into()))?;
        let owner_count = number(&data["OwnerCount"]).unwrap_or(0);
        let state = self
            .client
            .request("server_state", json!({}))
            .await
            .map_err(connection)?;
        let ledger = &state["state"]["validated_ledger"];
        let base = number(&ledger["reserve_base"]).unwrap_or(10_000_000);
        let inc = number(&ledger["reserve_inc"]).unwrap_or(2_000_000);
        Ok(AccountFacts {
            balance_drops,
            reserve_drops: base + inc * owner_count,
            owner_reserve_drops: inc,
        })
    }

    /// The `MessageKey` currently set on an account, as ledger hex.
    pub async fn message_key_hex(&self, account: &str) -> Result<Option<String>, LedgerError> {
        let data = self
            .client
            .account_data(account)
            .await
            .map_err(connection)?;
        Ok(data.and_then(|d| d["MessageKey"].as_str().map(str::to_ascii_uppercase)))
    }

    /// Ids of the live sell offers of a token (none when it has none or no longer exists).
    pub async fn sell_offers(&self, token_id: &NfTokenId) -> Result<Vec<OfferId>, LedgerError> {
        match self
            .client
            .request(
                "nft_sell_offers",
                json!({"nft_id": token_id.to_string(), "ledger_index": "validated"}),
            )
            .await
        {
            Ok(result) => Ok(result["offers"]
                .as_array()
                .map(|offers| {
                    offers
                        .iter()
                        .filter_map(|o| o["nft_offer_index"].as_str())
                        .map(|id| {
                            id.parse().map_err(|e| {
                                LedgerError::Protocol(format!("nft_sell_offers of {token_id}: {e}"))
                            })
                        })
                        .collect::<Result<_, _>>()
                })
                .transpose()?
                .unwrap_or_default()),
            Err(e) if e.rpc_error() == Some("objectNotFound") => Ok(Vec::new()),
            Err(e) => Err(connection(e)),
        }
    }

    /// Index and close time (Unix seconds) of the latest validated ledger.
    pub async fn validated_ledger(&self) -> Result<(u32, u64), LedgerError> {
        let result = self
            .client
            .request("ledger", json!({"ledger_index": "validated"}))
            .await
            .map_err(connection)?;
        let ledger = &result["ledger"];
        let index = number(&ledger["ledger_index"])
            .or_else(|| number(&result["ledger_index"]))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| LedgerError::Protocol("ledger without ledger_index".into()))?;
        let close_time = number(&ledger["close_time"])
            .map(|t| t + RIPPLE_EPOCH_OFFSET)
            .unwrap_or_else(crate::store::now_secs);
        Ok((index, close_time))
    }
}

/// A number given as JSON number or decimal string.
fn number(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

fn connection(error: ClientError) -> LedgerError {
    LedgerError::Connection(error.to_string())
}

fn transaction_json(action: &LedgerAction) -> Value {
    match action {
        LedgerAction::Payment {
            destination,
            amount_drops,
            memo,
        } => json!({
            "TransactionType": "Payment",
            "Destination": destination,
            "Amount": amount_drops.to_string(),
            "Memos": [{"Memo": {
                "MemoType": memo.memo_type,
                "MemoFormat": memo.memo_format,
                "MemoData": memo.memo_data,
            }}],
        }),
        LedgerAction::Mint { uri_hex, .. } => json!({
            "TransactionType": "NFTokenMint",
            "NFTokenTaxon": LEASE_TOKEN_TAXON,
            "Flags": LEASE_TOKEN_FLAGS,
            "URI": uri_hex,
        }),
        LedgerAction::Offer {
            token_id,
            amount_drops,
            ..
        } => json!({
            "TransactionType": "NFTokenCreateOffer",
            "NFTokenID": token_id,
            "Amount": amount_drops.to_string(),
            "Flags": 1,
        }),
        LedgerAction::Burn {
            token_id, owner, ..
        } => {
            let mut tx = json!({"TransactionType": "NFTokenBurn", "NFTokenID": token_id});
            if let Some(owner) = owner {
                tx["Owner"] = json!(owner);
            }
            tx
        }
        LedgerAction::CancelOffer { offer_id, .. } => json!({
            "TransactionType": "NFTokenCancelOffer",
            "NFTokenOffers": [offer_id],
        }),
        LedgerAction::SetMessageKey { key_hex } => json!({
            "TransactionType": "AccountSet",
            "MessageKey": key_hex,
        }),
    }
}

fn action_name(action: &LedgerAction) -> &'static str {
    match action {
        LedgerAction::Payment { .. } => "payment",
        LedgerAction::Mint { .. } => "mint",
        LedgerAction::Offer { .. } => "offer",
        LedgerAction::Burn { .. } => "burn",
        LedgerAction::CancelOffer { .. } => "cancel offer",
        LedgerAction::SetMessageKey { .. } => "set message key",
    }
}

fn submit_error(action: &str, error: SubmitError) -> LedgerError {
    match error {
        SubmitError::BadTransaction { detail } => LedgerError::Refused {
            action: action.to_owned(),
            result: detail,
        },
        SubmitError::Rejected {
            result, message, ..
        } => LedgerError::Refused {
            action: action.to_owned(),
            result: format!("{result}: {message}"),
        },
        other => LedgerError::Connection(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Ledger for XrplLedger {
    async fn prepare(&self, action: &LedgerAction) -> Result<PreparedTx, LedgerError> {
        let signed = self
            .submitter
            .prepare(transaction_json(action))
            .await
            .map_err(|e| submit_error(action_name(action), e))?;
        let blob = serde_json::to_string(&signed)
            .map_err(|e| LedgerError::Protocol(format!("signed transaction: {e}")))?;
        Ok(PreparedTx {
            hash: tx_hash(&signed.hash)?,
            blob,
            last_ledger: signed.last_ledger_sequence,
        })
    }

    async fn submit_and_wait(
        &self,
        tx: &PreparedTx,
        on_resigned: &(dyn for<'p> Fn(&'p PreparedTx) -> Result<(), String> + Send + Sync),
    ) -> Result<TxOutcome, LedgerError> {
        let signed: SignedTx = serde_json::from_str(&tx.blob)
            .map_err(|e| LedgerError::Protocol(format!("stored transaction {}: {e}", tx.hash)))?;
        let persist = |next: &SignedTx| -> Result<(), String> {
            let blob = serde_json::to_string(next)
                .map_err(|e| format!("re-signed transaction {}: {e}", next.hash))?;
            on_resigned(&PreparedTx {
                hash: tx_hash(&next.hash).map_err(|e| e.to_string())?,
                blob,
                last_ledger: next.last_ledger_sequence,
            })
        };
        match self.submitter.submit_and_wait_with(&signed, persist).await {
            Ok(validated) => Ok(TxOutcome::Validated {
                result: TxResult::from_token(&validated.result),
                nftoken_id: meta_id(&validated, "nftoken_id")?,
                offer_id: meta_id(&validated, "offer_id")?,
            }),
            Err(SubmitError::Expired { .. } | SubmitError::SequenceTaken { .. }) => {
                self.submitter.reset_sequence().await;
                Ok(TxOutcome::Expired)
            }
            Err(e) => Err(submit_error("submit", e)),
        }
    }

    async fn minted_token_id(&self, mint: &PreparedTx) -> Result<Option<NfTokenId>, LedgerError> {
        let signed: SignedTx = serde_json::from_str(&mint.blob)
            .map_err(|e| LedgerError::Protocol(format!("stored transaction {}: {e}", mint.hash)))?;
        let issuer: AccountAddress = self
            .account()
            .parse()
            .map_err(|e| LedgerError::Protocol(format!("host account {}: {e}", self.account())))?;
        let info = self
            .client
            .request(
                "account_info",
                json!({"account": self.account(), "ledger_index": "current"}),
            )
            .await
            .map_err(connection)?;
        let data = &info["account_data"];
        let first = number(&data["FirstNFTokenSequence"]).and_then(|v| u32::try_from(v).ok());
        let minted = number(&data["MintedNFTokens"])
            .map_or(Some(0), |v| u32::try_from(v).ok())
            .ok_or_else(|| LedgerError::Protocol("MintedNFTokens out of range".into()))?;
        // The account's first mint sets FirstNFTokenSequence to its own sequence.
        let Some(token_seq) = first.unwrap_or(signed.sequence).checked_add(minted) else {
            return Ok(None);
        };
        let flags = u16::try_from(LEASE_TOKEN_FLAGS & 0xFFFF).unwrap_or_default();
        Ok(Some(NfTokenId(berth_xrpl_core::index::nftoken_id(
            flags,
            0,
            issuer.account_id(),
            LEASE_TOKEN_TAXON,
            token_seq,
        ))))
    }

    async fn message_key(
        &self,
        account: &AccountAddress,
    ) -> Result<Option<PublicKey>, LedgerError> {
        Ok(self
            .message_key_hex(&account.to_string())
            .await?
            .and_then(|hex| hex.parse().ok()))
    }

    async fn holds(
        &self,
        account: &AccountAddress,
        token: &NfTokenId,
        ledger: u32,
    ) -> Result<bool, LedgerError> {
        let account = account.to_string();
        let mut at = json!(ledger);
        let mut marker: Option<Value> = None;
        loop {
            let mut params = json!({"account": account, "ledger_index": at, "limit": 400});
            if let Some(m) = marker.take() {
                params["marker"] = m;
            }
            let page = match self.client.request("account_nfts", params).await {
                Ok(page) => page,
                Err(e) if e.rpc_error() == Some("actNotFound") => return Ok(false),
                // History no longer kept by the server: the holder now is the best answer.
                Err(e) if e.rpc_error() == Some("lgrNotFound") && at != json!("validated") => {
                    at = json!("validated");
                    continue;
                }
                Err(e) => return Err(connection(e)),
            };
            let found = page["account_nfts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|nft| {
                    nft["NFTokenID"]
                        .as_str()
                        .and_then(|id| id.parse::<NfTokenId>().ok())
                        .is_some_and(|id| id == *token)
                });
            if found {
                return Ok(true);
            }
            match page.get("marker") {
                Some(m) if !m.is_null() => marker = Some(m.clone()),
                _ => return Ok(false),
            }
        }
    }
}

/// The memos of a transaction's JSON (unreadable memos are left out: the machine then
/// refunds for a missing memo).
fn memos(tx: &Value) -> Vec<Memo> {
    tx.get("Memos")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|m| {
                    let m = m.get("Memo").unwrap_or(m);
                    let f = |k: &str| m.get(k).and_then(Value::as_str);
                    Memo::from_hex(f("MemoType"), f("MemoFormat"), f("MemoData")).ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An id the metadata of a validated transaction names (`nftoken_id`, `offer_id`), typed.
fn meta_id<T: std::str::FromStr>(validated: &Validated, key: &str) -> Result<Option<T>, LedgerError>
where
    T::Err: std::fmt::Display,
{
    validated.meta[key]
        .as_str()
        .map(|text| {
            text.parse().map_err(|e| {
                LedgerError::Protocol(format!("{key} of transaction {}: {e}", validated.hash))
            })
        })
        .transpose()
}

/// A transaction hash from the ledger client, typed.
fn tx_hash(text: &str) -> Result<TxHash, LedgerError> {
    text.parse()
        .map_err(|e| LedgerError::Protocol(format!("transaction hash {text:?}: {e}")))
}

/// A value the ledger client decoded as text, typed; `None` (logged) when the server sent
/// something that is not one, which no validated transaction has.
fn typed<T: std::str::FromStr>(tx: &ValidatedTx, what: &str, text: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| warn!(tx = %tx.hash, what, value = text, error = %e, "transaction left out: a field is not valid"))
        .ok()
}

/// The event a validated transaction is for the host `account`, if any.
pub fn event_of(tx: &ValidatedTx, account: &str) -> Option<LedgerEvent> {
    let close_time = tx.close_time_unix.unwrap_or_else(crate::store::now_secs);
    let hash: TxHash = typed(tx, "hash", &tx.hash)?;
    let payment = |sender: &str, amount: Option<u64>| {
        Some(LedgerEvent::Payment {
            tx_hash: hash,
            ledger: tx.ledger_index,
            close_time,
            from: typed(tx, "sender", sender)?,
            amount_drops: amount,
            memos: memos(&tx.tx),
        })
    };
    match decode(tx, account)? {
        MarketEvent::Purchase {
            buyer,
            token_id,
            amount_drops,
            ..
        } => Some(LedgerEvent::Purchase {
            tx_hash: hash,
            ledger: tx.ledger_index,
            close_time,
            buyer: typed(tx, "buyer", &buyer)?,
            token_id: typed(tx, "NFTokenID", &token_id)?,
            amount_drops,
            memos: memos(&tx.tx),
        }),
        MarketEvent::Extend {
            sender,
            amount_drops,
            ..
        }
        | MarketEvent::Terminate {
            sender,
            amount_drops,
            ..
        } => payment(&sender, Some(amount_drops)),
        MarketEvent::Unrequested {
            sender,
            amount_drops,
            reason,
            ..
        } => {
            let xrp = !matches!(reason, berth_mb_xrpl::events::Problem::NotXrp { .. });
            payment(&sender, xrp.then_some(amount_drops))
        }
        MarketEvent::Answer { .. }
        | MarketEvent::HostRegistration { .. }
        | MarketEvent::HostDeregistration { .. }
        | MarketEvent::Heartbeat { .. } => None,
    }
}
