//! The XRP Ledger's binary codec, address and seed encodings, key derivation,
//! signing and ledger object IDs. Pure: no I/O, no async.
//!
//! Written for Berth instead of using xrpl-rust's codec so that decoding untrusted
//! bytes never panics and every secp256k1 seed loads; checked against xrpl-py in the
//! localnet interoperability tests.
#![forbid(unsafe_code)]

pub mod address;
pub mod codec;
pub mod fields;
pub mod hash;
pub mod index;
pub mod keys;
pub mod ter;
pub mod tx;

pub use address::{decode_account_id, encode_account_id, KeyType};
pub use codec::{Amount, StObject, Value};
pub use keys::KeyPair;
pub use ter::Ter;
