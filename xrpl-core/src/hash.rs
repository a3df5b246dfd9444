//! SHA-512Half and the hash prefixes of the XRP Ledger.

use sha2::{Digest, Sha512};

/// Prefix of a transaction ID: `TXN\0`.
pub const PREFIX_TRANSACTION_ID: [u8; 4] = *b"TXN\0";
/// Prefix of a single-signing payload: `STX\0`.
pub const PREFIX_TX_SIGN: [u8; 4] = *b"STX\0";
/// Prefix of a multi-signing payload: `SMT\0`.
pub const PREFIX_TX_MULTISIGN: [u8; 4] = *b"SMT\0";
/// Prefix of a ledger header hash: `LWR\0`.
pub const PREFIX_LEDGER_MASTER: [u8; 4] = *b"LWR\0";
/// Prefix of a transaction-with-metadata leaf: `SND\0`.
pub const PREFIX_TX_NODE: [u8; 4] = *b"SND\0";
/// Prefix of a state leaf: `MLN\0`.
pub const PREFIX_LEAF_NODE: [u8; 4] = *b"MLN\0";
/// Prefix of an inner tree node: `MIN\0`.
pub const PREFIX_INNER_NODE: [u8; 4] = *b"MIN\0";

/// The first 32 bytes of the SHA-512 of the concatenated parts.
pub fn sha512_half(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    let full = h.finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&full[..32]);
    out
}

/// The ID of a signed transaction blob.
pub fn transaction_id(signed_blob: &[u8]) -> [u8; 32] {
    sha512_half(&[&PREFIX_TRANSACTION_ID, signed_blob])
}
