//! The sealed box: a message encrypted to the holder of an ed25519 key, anonymously.
//!
//! ```text
//! envelope = version (1 byte, 0x01) ‖ ephemeral X25519 public key (32) ‖ nonce (12)
//!            ‖ AES-256-GCM ciphertext ‖ tag (16)
//! shared   = X25519(ephemeral secret, recipient X25519 public)
//! key      = HKDF-SHA256(salt = "berth/sealed-box/v1", ikm = shared,
//!                        info = "berth/sealed-box/v1/aes-256-gcm" ‖ ephemeral public ‖ recipient X25519 public)
//! ```
//!
//! The recipient's X25519 key is its ed25519 key converted: the public key through the
//! Edwards → Montgomery map, the secret as libsodium's `crypto_sign_ed25519_sk_to_curve25519`
//! (the first 32 bytes of SHA-512(seed), clamped).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

use crate::key::PublicKey;

/// The first byte of every envelope of this version.
pub const VERSION: u8 = 1;
/// HKDF salt, fixed for version 1.
pub const HKDF_SALT: &[u8] = b"berth/sealed-box/v1";
/// HKDF info prefix, fixed for version 1; both public keys follow it.
pub const HKDF_INFO_PREFIX: &[u8] = b"berth/sealed-box/v1/aes-256-gcm";

const PUBLIC_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext: version, ephemeral key, nonce and tag.
pub const OVERHEAD: usize = 1 + PUBLIC_LEN + NONCE_LEN + TAG_LEN;

/// Why a sealed box could not be made or opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed box: envelope of {len} bytes is shorter than the minimum {OVERHEAD}")]
    Truncated { len: usize },
    #[error("sealed box: unsupported version byte {found:#04x}, expected {VERSION:#04x}")]
    Version { found: u8 },
    #[error("sealed box: ephemeral public key is of small order")]
    EphemeralKey,
    #[error("sealed box: authentication failed (wrong recipient key or altered envelope)")]
    Decrypt,
    #[error("sealed box: plaintext of {len} bytes is too large to encrypt")]
    Encrypt { len: usize },
}

/// The X25519 secret of an ed25519 key pair (libsodium `crypto_sign_ed25519_sk_to_curve25519`).
pub fn x25519_secret(recipient: &SigningKey) -> StaticSecret {
    let hash = Sha512::digest(recipient.to_bytes());
    let mut scalar = [0u8; 32];
    scalar.copy_from_slice(&hash[..32]);
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
    StaticSecret::from(scalar)
}

fn cipher(shared: &[u8; 32], ephemeral: &X25519Public, recipient: &X25519Public) -> Aes256Gcm {
    let mut info = Vec::with_capacity(HKDF_INFO_PREFIX.len() + 2 * PUBLIC_LEN);
    info.extend_from_slice(HKDF_INFO_PREFIX);
    info.extend_from_slice(ephemeral.as_bytes());
    info.extend_from_slice(recipient.as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 × 32, so expansion cannot fail;
    // should it ever, the all-zero key would fail every authentication check.
    let _ = Hkdf::<Sha256>::new(Some(HKDF_SALT), shared).expand(&info, &mut key);
    Aes256Gcm::new(&key.into())
}

/// Seals `plaintext` to the holder of `recipient`'s secret, with the operating system's RNG.
pub fn seal(recipient: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    seal_with_rng(&mut rand::rngs::OsRng, recipient, plaintext)
}

/// Seals with the given RNG (for reproducible test vectors; use [`seal`] otherwise).
pub fn seal_with_rng<R: RngCore + CryptoRng>(
    rng: &mut R,
    recipient: &PublicKey,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut ephemeral_bytes = [0u8; 32];
    rng.fill_bytes(&mut ephemeral_bytes);
    let ephemeral = StaticSecret::from(ephemeral_bytes);
    let ephemeral_public = X25519Public::from(&ephemeral);
    let recipient_x = recipient.to_x25519();
    // `PublicKey` rejects small-order points, so this exchange is always contributory.
    let shared = ephemeral.diffie_hellman(&recipient_x);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ciphertext = cipher(shared.as_bytes(), &ephemeral_public, &recipient_x)
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| SealError::Encrypt {
            len: plaintext.len(),
        })?;
    let mut envelope = Vec::with_capacity(OVERHEAD + plaintext.len());
    envelope.push(VERSION);
    envelope.extend_from_slice(ephemeral_public.as_bytes());
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(&ciphertext);
    Ok(envelope)
}

/// Opens an envelope sealed to `recipient`'s public key. Never panics, whatever the bytes.
pub fn open(recipient: &SigningKey, envelope: &[u8]) -> Result<Vec<u8>, SealError> {
    if envelope.len() < OVERHEAD {
        return Err(SealError::Truncated {
            len: envelope.len(),
        });
    }
    let (version, rest) = envelope.split_at(1);
    if version[0] != VERSION {
        return Err(SealError::Version { found: version[0] });
    }
    let (ephemeral_bytes, rest) = rest.split_at(PUBLIC_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let mut ephemeral = [0u8; PUBLIC_LEN];
    ephemeral.copy_from_slice(ephemeral_bytes);
    let ephemeral = X25519Public::from(ephemeral);
    let secret = x25519_secret(recipient);
    let shared = secret.diffie_hellman(&ephemeral);
    if !shared.was_contributory() {
        return Err(SealError::EphemeralKey);
    }
    cipher(shared.as_bytes(), &ephemeral, &X25519Public::from(&secret))
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .map_err(|_| SealError::Decrypt)
}
