//! ed25519 public keys as the XRP Ledger (`MessageKey`, `SigningPubKey`) and HotPocket write
//! them: `0xED ‖ 32 bytes`, in text `ed` + 64 hex digits.

use std::fmt;
use std::str::FromStr;

use curve25519_dalek::edwards::CompressedEdwardsY;
use thiserror::Error;

/// The prefix byte that marks an ed25519 key on the XRP Ledger and in HotPocket.
pub const ED25519_PREFIX: u8 = 0xED;

/// Why bytes or text are not an ed25519 public key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("ed25519 public key: expected 66 characters (\"ED\" + 64 hex), got {len}")]
    TextLength { len: usize },
    #[error("ed25519 public key: expected 33 bytes starting 0xED (or 32 bytes), got {len} bytes")]
    ByteLength { len: usize },
    #[error("ed25519 public key: must start with \"ED\" (0xED), found {found:?}")]
    Prefix { found: String },
    #[error("ed25519 public key: not hexadecimal")]
    NotHex,
    #[error("ed25519 public key: not a point on the curve")]
    NotOnCurve,
    #[error("ed25519 public key: a point of small order, unusable for encryption")]
    SmallOrder,
}

/// A validated ed25519 public key: a point on the curve, not of small order, so that it can
/// be used both to verify signatures and (converted to X25519) as a sealed-box recipient.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    edwards: [u8; 32],
    /// The Montgomery form of the same point, computed once when the key is validated.
    montgomery: [u8; 32],
}

impl PublicKey {
    /// Accepts the ledger form (33 bytes, first 0xED) or the bare 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let raw: [u8; 32] = match bytes {
            [ED25519_PREFIX, rest @ ..] if rest.len() == 32 => rest
                .try_into()
                .map_err(|_| KeyError::ByteLength { len: bytes.len() })?,
            [first, ..] if bytes.len() == 33 => {
                return Err(KeyError::Prefix {
                    found: format!("{first:02X}"),
                })
            }
            _ if bytes.len() == 32 => bytes
                .try_into()
                .map_err(|_| KeyError::ByteLength { len: bytes.len() })?,
            _ => return Err(KeyError::ByteLength { len: bytes.len() }),
        };
        let point = CompressedEdwardsY(raw)
            .decompress()
            .ok_or(KeyError::NotOnCurve)?;
        if point.is_small_order() {
            return Err(KeyError::SmallOrder);
        }
        Ok(Self {
            edwards: raw,
            montgomery: point.to_montgomery().to_bytes(),
        })
    }

    /// A signature-verifying key, checked the same way as bytes from outside.
    pub fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> Result<Self, KeyError> {
        Self::from_bytes(key.as_bytes())
    }

    /// The 32 bytes of the compressed Edwards point.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.edwards
    }

    /// The ledger form: `0xED ‖ 32 bytes`.
    pub fn to_prefixed_bytes(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = ED25519_PREFIX;
        out[1..].copy_from_slice(&self.edwards);
        out
    }

    /// The ledger's JSON form: `ED` + 64 upper-case hex digits (as in `MessageKey`).
    pub fn to_ledger_hex(&self) -> String {
        hex::encode_upper(self.to_prefixed_bytes())
    }

    /// The X25519 public key of the same key pair (the birational Edwards → Montgomery map).
    pub fn to_x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.montgomery)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// Parses `ED` + 64 hex digits, in either case.
    fn from_str(text: &str) -> Result<Self, KeyError> {
        if text.len() != 66 {
            return Err(KeyError::TextLength {
                len: text.chars().count(),
            });
        }
        let bytes = hex::decode(text).map_err(|_| KeyError::NotHex)?;
        if bytes.first() != Some(&ED25519_PREFIX) {
            return Err(KeyError::Prefix {
                found: text.chars().take(2).collect(),
            });
        }
        Self::from_bytes(&bytes)
    }
}

/// Formats as HotPocket does: `ed` + 64 lower-case hex digits.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed{}", hex::encode(self.edwards))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

crate::field::serde_as_string!(PublicKey);

/// Domain separator of the message-key derivation.
pub const MESSAGE_KEY_DOMAIN: &[u8] = b"berth/message-key/v1";

/// The ed25519 message key of an XRPL account, derived from its seed's 16 bytes of entropy:
/// secret = first 32 bytes of SHA-512(`berth/message-key/v1` ‖ entropy). Hosts publish its
/// public half as their `MessageKey`; tenants name it as `reply_key`. One secret (the seed)
/// to back up, and the account's signing key is never used to decrypt.
pub fn message_key_from_entropy(entropy: &[u8; 16]) -> ed25519_dalek::SigningKey {
    use sha2::{Digest, Sha512};
    let mut hasher = Sha512::new();
    hasher.update(MESSAGE_KEY_DOMAIN);
    hasher.update(entropy);
    let digest = hasher.finalize();
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&digest[..32]);
    ed25519_dalek::SigningKey::from_bytes(&secret)
}
