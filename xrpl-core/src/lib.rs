//! The XRP Ledger's binary codec, address and seed encodings, key derivation,
//! signing and ledger object IDs. Pure: no I/O, no async.
#![forbid(unsafe_code)]
