//! HotPocket wire formats: user messages, the contract's args document and the bundle's
//! `contract.config`. Only this module derives their serialization.

pub mod anchor;
pub mod bson;
pub mod bundle;
pub mod contract;
pub mod history;
pub mod user;

/// The HotPocket protocol version this runtime speaks.
pub const HP_VERSION: &str = "0.6.4";

/// Length of an ed25519 public key in hex with the `ed` prefix.
pub const PUBKEY_HEX_LEN: usize = 66;

/// Error for a malformed `ed`-prefixed hex public key.
#[derive(Debug, thiserror::Error)]
#[error("public key `{0}` is not `ed` followed by 64 hex digits")]
pub struct BadPubkey(pub String);

/// Parses an `ed`-prefixed hex ed25519 public key (66 characters).
pub fn parse_pubkey_hex(text: &str) -> Result<ed25519_dalek::VerifyingKey, BadPubkey> {
    let bad = || BadPubkey(text.chars().take(80).collect());
    if text.len() != PUBKEY_HEX_LEN || !text[..2].eq_ignore_ascii_case("ed") {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&text[2..], &mut bytes).map_err(|_| bad())?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// The `ed`-prefixed lowercase hex form of a public key.
pub fn pubkey_hex(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("ed{}", hex::encode(key.as_bytes()))
}

/// The binary form HotPocket hashes: 0xED followed by the 32 key bytes.
pub fn pubkey_bytes(key: &ed25519_dalek::VerifyingKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = 0xED;
    out[1..].copy_from_slice(key.as_bytes());
    out
}

/// The 33-byte binary form (0xED ‖ key) of an `ed`-prefixed hex key, without checking that
/// the key is a valid curve point (callers have verified signatures with it already).
pub fn pubkey_bytes_from_hex(text: &str) -> Option<[u8; 33]> {
    if text.len() != PUBKEY_HEX_LEN || !text[..2].eq_ignore_ascii_case("ed") {
        return None;
    }
    let mut out = [0u8; 33];
    out[0] = 0xED;
    hex::decode_to_slice(&text[2..], &mut out[1..]).ok()?;
    Some(out)
}
