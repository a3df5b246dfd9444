//! The sealed box: round trips, failures named, libsodium's key conversion, a fixed vector.
#![allow(clippy::unwrap_used)]

mod support;

use berth_schemas::key::{KeyError, PublicKey};
use berth_schemas::sealed::{self, open, seal, seal_with_rng, SealError, OVERHEAD};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use rand::{CryptoRng, RngCore};
use support::*;

#[test]
fn round_trip_opens_with_the_recipient_key() {
    let envelope = seal(&public_key(1), b"hello instance").unwrap();
    assert_eq!(envelope.len(), OVERHEAD + 14);
    assert_eq!(envelope[0], sealed::VERSION);
    assert_eq!(open(&signing_key(1), &envelope).unwrap(), b"hello instance");
}

#[test]
fn each_seal_uses_a_fresh_ephemeral_key_and_nonce() {
    let a = seal(&public_key(1), b"same").unwrap();
    let b = seal(&public_key(1), b"same").unwrap();
    assert_ne!(a[1..45], b[1..45]);
}

#[test]
fn wrong_key_fails_authentication() {
    let envelope = seal(&public_key(1), b"secret").unwrap();
    assert_eq!(open(&signing_key(2), &envelope), Err(SealError::Decrypt));
}

#[test]
fn any_tampered_byte_fails() {
    let envelope = seal(&public_key(1), b"lease details").unwrap();
    for i in 1..envelope.len() {
        let mut tampered = envelope.clone();
        tampered[i] ^= 0x01;
        let result = open(&signing_key(1), &tampered);
        assert!(
            matches!(result, Err(SealError::Decrypt | SealError::EphemeralKey)),
            "byte {i}: {result:?}"
        );
    }
}

#[test]
fn truncated_envelope_is_named() {
    let envelope = seal(&public_key(1), b"").unwrap();
    assert_eq!(envelope.len(), OVERHEAD);
    assert_eq!(open(&signing_key(1), &envelope).unwrap(), b"");
    let error = open(&signing_key(1), &envelope[..OVERHEAD - 1]).unwrap_err();
    assert_eq!(error, SealError::Truncated { len: OVERHEAD - 1 });
    assert_eq!(
        error.to_string(),
        "sealed box: envelope of 60 bytes is shorter than the minimum 61"
    );
}

#[test]
fn unknown_version_byte_is_named() {
    let mut envelope = seal(&public_key(1), b"x").unwrap();
    envelope[0] = 2;
    assert_eq!(
        open(&signing_key(1), &envelope),
        Err(SealError::Version { found: 2 })
    );
}

#[test]
fn small_order_ephemeral_key_is_refused() {
    let mut envelope = seal(&public_key(1), b"x").unwrap();
    envelope[1..33].copy_from_slice(&[0u8; 32]);
    assert_eq!(
        open(&signing_key(1), &envelope),
        Err(SealError::EphemeralKey)
    );
}

#[test]
fn ledger_form_of_the_key_is_accepted() {
    let key = public_key(5);
    let ledger_hex = key.to_ledger_hex();
    assert!(ledger_hex.starts_with("ED") && ledger_hex.len() == 66);
    let parsed: PublicKey = ledger_hex.parse().unwrap();
    assert_eq!(parsed, key);
    assert_eq!(
        PublicKey::from_bytes(&key.to_prefixed_bytes()).unwrap(),
        key
    );
    let envelope = seal(&parsed, b"to the MessageKey").unwrap();
    assert_eq!(
        open(&signing_key(5), &envelope).unwrap(),
        b"to the MessageKey"
    );
}

#[test]
fn bad_keys_are_named() {
    assert_eq!(
        "ED00".parse::<PublicKey>(),
        Err(KeyError::TextLength { len: 4 })
    );
    let not_ed = format!("02{}", "11".repeat(32));
    assert!(matches!(
        not_ed.parse::<PublicKey>(),
        Err(KeyError::Prefix { .. })
    ));
    let not_hex = format!("ED{}", "zz".repeat(32));
    assert_eq!(not_hex.parse::<PublicKey>(), Err(KeyError::NotHex));
    // The identity point (y = 1) decompresses but is of small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::SmallOrder));
    // y = 2 is not the y-coordinate of any curve point.
    let mut off_curve = [0u8; 32];
    off_curve[0] = 2;
    assert_eq!(PublicKey::from_bytes(&off_curve), Err(KeyError::NotOnCurve));
    assert_eq!(
        PublicKey::from_bytes(&[0xED; 20]),
        Err(KeyError::ByteLength { len: 20 })
    );
}

/// libsodium's own test (`test/default/ed25519_convert.c` and `.exp`): the seed 421151a4…
/// converts to these X25519 keys with `crypto_sign_ed25519_{pk,sk}_to_curve25519`.
#[test]
fn key_conversion_matches_libsodium() {
    let seed: [u8; 32] =
        hex::decode("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
            .unwrap()
            .try_into()
            .unwrap();
    let signing = SigningKey::from_bytes(&seed);
    let public = PublicKey::from_verifying_key(&signing.verifying_key()).unwrap();
    assert_eq!(
        hex::encode(public.to_x25519().as_bytes()),
        "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"
    );
    assert_eq!(
        hex::encode(sealed::x25519_secret(&signing).to_bytes()),
        "8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166"
    );
}

/// An RNG that hands out fixed bytes, so the README's test vector can be reproduced.
struct FixedBytes(Vec<u8>);

impl RngCore for FixedBytes {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("seal only fills byte buffers")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("seal only fills byte buffers")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let taken: Vec<u8> = self.0.drain(..dest.len()).collect();
        dest.copy_from_slice(&taken);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedBytes {}

/// The vector printed in `schemas/README.md` ("Sealed box test vector").
#[test]
fn readme_test_vector() {
    let recipient_seed = [0x11u8; 32];
    let ephemeral_secret = [0x22u8; 32];
    let nonce = [0x33u8; 12];
    let recipient = SigningKey::from_bytes(&recipient_seed);
    let public = PublicKey::from_verifying_key(&recipient.verifying_key()).unwrap();
    let mut rng = FixedBytes([ephemeral_secret.as_slice(), nonce.as_slice()].concat());
    let envelope = seal_with_rng(&mut rng, &public, b"{\"v\":1}").unwrap();
    let expected = include_str!("data/sealed-box-vector.hex").trim();
    println!("recipient public: {}", public.to_ledger_hex());
    println!("envelope: {}", hex::encode(&envelope));
    assert_eq!(hex::encode(&envelope), expected);
    let readme = include_str!("../README.md");
    for part in [
        &expected[..66],
        &expected[66..90],
        &expected[90..],
        &public.to_ledger_hex(),
    ] {
        assert!(
            readme.contains(part),
            "README.md must show the vector: {part}"
        );
    }
    assert_eq!(open(&recipient, &envelope).unwrap(), b"{\"v\":1}");
}

proptest! {
    #[test]
    fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = open(&signing_key(1), &bytes);
    }

    #[test]
    fn open_never_panics_on_mutated_envelopes(
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
        position in any::<usize>(),
        value in any::<u8>(),
        cut in any::<usize>(),
    ) {
        let mut envelope = seal(&public_key(1), &plaintext).unwrap();
        let i = position % envelope.len();
        envelope[i] = value;
        envelope.truncate(cut % (envelope.len() + 1));
        let _ = open(&signing_key(1), &envelope);
    }

    #[test]
    fn round_trip_any_plaintext(plaintext in proptest::collection::vec(any::<u8>(), 0..2048), key in 1u8..=255) {
        let envelope = seal(&public_key(key), &plaintext).unwrap();
        prop_assert_eq!(open(&signing_key(key), &envelope).unwrap(), plaintext);
    }
}
