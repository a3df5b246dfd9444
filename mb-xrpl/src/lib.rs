//! The message board: a client of rippled's WebSocket API, reliable submission,
//! account-history catch-up and typed marketplace events. Used by the host agent and the
//! tenant CLI.
//!
//! - [`client`]: [`Client`], one logical connection to a list of servers (primary, then
//!   fallbacks) that reconnects with backoff, routes responses by request id, keeps
//!   subscriptions across reconnects and publishes [`StreamEvent`]s.
//! - [`submit`]: [`Submitter`], `prepare` (autofill and sign, so the caller can persist the
//!   blob first) and `submit_and_wait` (submit, resubmit, wait for validation or expiry).
//! - [`multisign`]: transactions of an account whose signers are elsewhere (a cluster's
//!   nodes): prepare for the signers, combine their entries, submit and wait.
//! - [`history`]: validated account history from a ledger cursor, in ledger order.
//! - [`events`]: [`events::decode`] turns a validated transaction into a [`MarketEvent`].
//!
//! **Invariant**: this crate knows nothing of SQLite, Docker or the lease state machine; it
//! speaks rippled's JSON API and Berth's memos, nothing else.
#![forbid(unsafe_code)]

pub mod client;
pub mod events;
pub mod history;
pub mod multisign;
pub mod submit;
mod tx;

pub use client::{Client, ClientConfig, ClientError, StreamEvent};
pub use events::MarketEvent;
pub use submit::{SignedTx, SubmitConfig, SubmitError, Submitter, TxStatus, Validated};
pub use tx::ValidatedTx;
