//! The agent's narrow view of the ledger: the actions it queues in the outbox, the events it
//! handles, and the [`Ledger`] trait the message-board client (`berth-mb-xrpl`) implements.
//!
//! **Invariant:** nothing here knows about WebSockets or transaction encoding; the outbox
//! stores [`LedgerAction`]s as JSON, and only the [`Ledger`] implementation turns them into
//! signed transactions.

use berth_schemas::field::{AccountAddress, NfTokenId, OfferId, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::memo::{Memo, MemoError};
use berth_xrpl_core::Ter;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `tfBurnable | tfTransferable`: the host can burn a sold token; tenants can resell it.
pub const LEASE_TOKEN_FLAGS: u32 = 0x0000_0001 | 0x0000_0008;
/// Taxon of Berth lease tokens.
pub const LEASE_TOKEN_TAXON: u32 = 0;

/// A memo as upper-case hex fields, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoHex {
    pub memo_type: String,
    pub memo_format: String,
    pub memo_data: String,
}

impl From<&Memo> for MemoHex {
    fn from(memo: &Memo) -> Self {
        let hex = memo.to_hex();
        Self {
            memo_type: hex.memo_type,
            memo_format: hex.memo_format,
            memo_data: hex.memo_data,
        }
    }
}

impl MemoHex {
    pub fn to_memo(&self) -> Result<Memo, MemoError> {
        Memo::from_hex(
            Some(&self.memo_type),
            Some(&self.memo_format),
            Some(&self.memo_data),
        )
    }
}

/// One transaction the host wants on the ledger, stored in the outbox until validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerAction {
    /// An XRP payment (answers, refunds, registration, heartbeats).
    Payment {
        destination: AccountAddress,
        amount_drops: u64,
        memo: MemoHex,
    },
    /// `NFTokenMint` of a slot's lease token (flags [`LEASE_TOKEN_FLAGS`]).
    Mint { slot: u32, uri_hex: String },
    /// `NFTokenCreateOffer` selling the slot's token at `amount_drops`.
    Offer {
        slot: u32,
        token_id: NfTokenId,
        amount_drops: u64,
    },
    /// `NFTokenBurn` of a token, held by `owner` when it is not the host.
    Burn {
        slot: u32,
        token_id: NfTokenId,
        owner: Option<AccountAddress>,
    },
    /// `NFTokenCancelOffer` of the host's own sell offer.
    CancelOffer { slot: u32, offer_id: OfferId },
    /// `AccountSet` of the host account's `MessageKey` (33 bytes, `ED…` hex).
    SetMessageKey { key_hex: String },
}

/// A transaction signed and ready to submit; resubmitting it is always safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTx {
    pub hash: TxHash,
    pub blob: String,
    /// The ledger after which it can no longer validate.
    pub last_ledger: u32,
}

/// What became of a submitted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOutcome {
    /// In a validated ledger with this result code (`tesSUCCESS`, `tec…`).
    Validated {
        result: TxResult,
        /// `nftoken_id` of a mint, from the metadata.
        nftoken_id: Option<NfTokenId>,
        /// `offer_id` of a created offer, from the metadata.
        offer_id: Option<OfferId>,
    },
    /// Its `LastLedgerSequence` passed without it: it never will validate.
    Expired,
}

/// The engine result of a validated transaction: a [`Ter`] this build knows, or the token
/// of one it does not (a newer `tec` code), which is never a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxResult {
    Known(Ter),
    Unknown(String),
}

impl TxResult {
    /// The result of a `TransactionResult` token.
    pub fn from_token(token: &str) -> Self {
        Ter::from_token(token).map_or_else(|| TxResult::Unknown(token.to_owned()), TxResult::Known)
    }

    /// The known result, if it is one.
    pub fn ter(&self) -> Option<Ter> {
        match self {
            TxResult::Known(ter) => Some(*ter),
            TxResult::Unknown(_) => None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.ter().is_some_and(Ter::is_success)
    }
}

impl std::fmt::Display for TxResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxResult::Known(ter) => ter.fmt(f),
            TxResult::Unknown(token) => f.write_str(token),
        }
    }
}

/// Errors of the ledger boundary; transient ones are retried by the outbox worker.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("ledger connection: {0}")]
    Connection(String),
    #[error("transaction {action} refused: {result}")]
    Refused { action: String, result: String },
    #[error("ledger answer: {0}")]
    Protocol(String),
}

/// The account facts `run` checks before minting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountFacts {
    pub balance_drops: u64,
    /// Reserve the account needs now (base + owner reserve × owned objects), drops.
    pub reserve_drops: u64,
    /// Owner reserve per extra object, drops.
    pub owner_reserve_drops: u64,
}

/// What the agent needs of the ledger client.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Builds and signs `action` (Sequence, Fee, LastLedgerSequence filled), not submitted.
    async fn prepare(&self, action: &LedgerAction) -> Result<PreparedTx, LedgerError>;
    /// Submits (or resubmits) and waits until it is validated or expired. When the client
    /// re-signs the transaction with a raised fee (same sequence, new hash), `on_resigned`
    /// gets the new version before it is submitted, so the caller can persist it: after a
    /// crash, the stored version still knows every earlier hash it replaces and no answer
    /// is paid twice. An error from `on_resigned` stops the submission.
    async fn submit_and_wait(
        &self,
        tx: &PreparedTx,
        on_resigned: &(dyn for<'p> Fn(&'p PreparedTx) -> Result<(), String> + Send + Sync),
    ) -> Result<TxOutcome, LedgerError>;
    /// The NFTokenID the prepared mint `mint` gets if no other mint of the host's account
    /// applies before it: XLS-20 derives it from the flags, transfer fee, issuer, taxon and
    /// the issuer's next token sequence (`FirstNFTokenSequence + MintedNFTokens`, or the
    /// mint's own `Sequence` for the account's first mint), read from the current ledger.
    /// `None` when this ledger cannot tell; the token is then offered once the mint validates.
    async fn minted_token_id(&self, _mint: &PreparedTx) -> Result<Option<NfTokenId>, LedgerError> {
        Ok(None)
    }
    /// The `MessageKey` of an account, when it has an ed25519 one.
    async fn message_key(&self, account: &AccountAddress)
        -> Result<Option<PublicKey>, LedgerError>;
    /// Whether `account` held the NFToken `token` in validated ledger `ledger` (in the latest
    /// validated ledger when the server no longer keeps that one). The holder of a lease
    /// token is the tenant of record, also after a resale.
    async fn holds(
        &self,
        account: &AccountAddress,
        token: &NfTokenId,
        ledger: u32,
    ) -> Result<bool, LedgerError>;
}

/// A validated transaction or ledger close, decoded into what the agent handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// An `NFTokenAcceptOffer` (tesSUCCESS) that bought one of the host's sell offers.
    Purchase {
        tx_hash: TxHash,
        ledger: u32,
        /// Close time of its ledger, Unix seconds.
        close_time: u64,
        buyer: AccountAddress,
        token_id: NfTokenId,
        /// Drops delivered to the host.
        amount_drops: u64,
        memos: Vec<Memo>,
    },
    /// A Payment (tesSUCCESS) to the host; `amount_drops` is `None` when not XRP.
    Payment {
        tx_hash: TxHash,
        ledger: u32,
        close_time: u64,
        from: AccountAddress,
        amount_drops: Option<u64>,
        memos: Vec<Memo>,
    },
    /// A validated ledger closed: the ledger clock moves, expiry runs.
    LedgerClosed { ledger: u32, close_time: u64 },
}
