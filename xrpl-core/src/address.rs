//! Base58Check encodings of the XRP Ledger: classic addresses and seeds.

use sha2::{Digest, Sha256};

const ACCOUNT_ID_PREFIX: &[u8] = &[0x00];
const FAMILY_SEED_PREFIX: &[u8] = &[0x21];
const ED25519_SEED_PREFIX: &[u8] = &[0x01, 0xE1, 0x4B];

/// Why an encoded string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("{what} {text:?} is not base58 in the XRP Ledger alphabet")]
    NotBase58 { what: &'static str, text: String },
    #[error("{what} {text:?} has a bad checksum")]
    BadChecksum { what: &'static str, text: String },
    #[error("{what} {text:?} has the wrong prefix or length")]
    WrongKind { what: &'static str, text: String },
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let h = Sha256::digest(Sha256::digest(payload));
    [h[0], h[1], h[2], h[3]]
}

fn encode_check(prefix: &[u8], payload: &[u8]) -> String {
    let mut v = Vec::with_capacity(prefix.len() + payload.len() + 4);
    v.extend_from_slice(prefix);
    v.extend_from_slice(payload);
    let c = checksum(&v);
    v.extend_from_slice(&c);
    bs58::encode(v)
        .with_alphabet(bs58::Alphabet::RIPPLE)
        .into_string()
}

fn decode_check(
    what: &'static str,
    text: &str,
    prefix: &[u8],
    len: usize,
) -> Result<Vec<u8>, AddressError> {
    let raw = bs58::decode(text)
        .with_alphabet(bs58::Alphabet::RIPPLE)
        .into_vec()
        .map_err(|_| AddressError::NotBase58 {
            what,
            text: text.to_string(),
        })?;
    if raw.len() != prefix.len() + len + 4 || !raw.starts_with(prefix) {
        return Err(AddressError::WrongKind {
            what,
            text: text.to_string(),
        });
    }
    let (body, sum) = raw.split_at(raw.len() - 4);
    if checksum(body) != sum {
        return Err(AddressError::BadChecksum {
            what,
            text: text.to_string(),
        });
    }
    Ok(body[prefix.len()..].to_vec())
}

/// The classic address (`r…`) of a 20-byte account ID.
pub fn encode_account_id(id: &[u8; 20]) -> String {
    encode_check(ACCOUNT_ID_PREFIX, id)
}

/// The 20-byte account ID of a classic address.
pub fn decode_account_id(address: &str) -> Result<[u8; 20], AddressError> {
    let v = decode_check("address", address, ACCOUNT_ID_PREFIX, 20)?;
    let mut id = [0u8; 20];
    id.copy_from_slice(&v);
    Ok(id)
}

/// Whether the text is a well-formed classic address.
pub fn is_valid_address(address: &str) -> bool {
    decode_account_id(address).is_ok()
}

/// The key type a seed is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ed25519,
    Secp256k1,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Secp256k1 => "secp256k1",
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "secp256k1" => Ok(KeyType::Secp256k1),
            other => Err(format!(
                "unknown key type {other:?}: expected ed25519 or secp256k1"
            )),
        }
    }
}

/// Encodes 16 bytes of seed entropy (`s…`, or `sEd…` for ed25519).
pub fn encode_seed(entropy: &[u8; 16], key_type: KeyType) -> String {
    match key_type {
        KeyType::Ed25519 => encode_check(ED25519_SEED_PREFIX, entropy),
        KeyType::Secp256k1 => encode_check(FAMILY_SEED_PREFIX, entropy),
    }
}

/// Decodes a seed into its entropy and key type.
pub fn decode_seed(seed: &str) -> Result<([u8; 16], KeyType), AddressError> {
    let (body, kt) = match decode_check("seed", seed, ED25519_SEED_PREFIX, 16) {
        Ok(b) => (b, KeyType::Ed25519),
        Err(_) => (
            decode_check("seed", seed, FAMILY_SEED_PREFIX, 16)?,
            KeyType::Secp256k1,
        ),
    };
    let mut e = [0u8; 16];
    e.copy_from_slice(&body);
    Ok((e, kt))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn genesis_address_round_trips() {
        let id = decode_account_id("rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh").unwrap();
        assert_eq!(encode_account_id(&id), "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh");
    }

    #[test]
    fn bad_checksum_and_garbage_are_named() {
        assert!(matches!(
            decode_account_id("rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTi"),
            Err(AddressError::BadChecksum { .. })
        ));
        assert!(matches!(
            decode_account_id("not an address!"),
            Err(AddressError::NotBase58 { .. })
        ));
        assert!(matches!(
            decode_account_id("snoPBrXtMeMyMHUVTgbuqAfg1SUTb"),
            Err(AddressError::WrongKind { .. })
        ));
    }

    #[test]
    fn genesis_seed_is_a_secp256k1_family_seed() {
        let (e, kt) = decode_seed("snoPBrXtMeMyMHUVTgbuqAfg1SUTb").unwrap();
        assert_eq!(kt, KeyType::Secp256k1);
        assert_eq!(encode_seed(&e, kt), "snoPBrXtMeMyMHUVTgbuqAfg1SUTb");
    }
}
