//! An XRP-Ledger-compatible ledger server in standalone mode.
#![forbid(unsafe_code)]
