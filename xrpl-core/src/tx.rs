//! Signing transactions and checking signed ones.

use serde_json::Value as Json;

use crate::address::encode_account_id;
use crate::codec::{JsonError, StObject, Value};
use crate::fields;
use crate::hash::{transaction_id, PREFIX_TX_MULTISIGN, PREFIX_TX_SIGN};
use crate::keys::{self, KeyPair};

/// A signed transaction: its blob and its ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    pub blob: Vec<u8>,
    pub hash: [u8; 32],
}

impl SignedTx {
    pub fn blob_hex(&self) -> String {
        hex::encode_upper(&self.blob)
    }

    pub fn hash_hex(&self) -> String {
        hex::encode_upper(self.hash)
    }
}

/// The payload a single signature covers.
pub fn signing_payload(tx: &StObject) -> Vec<u8> {
    let mut p = PREFIX_TX_SIGN.to_vec();
    p.extend_from_slice(&tx.to_signing_bytes());
    p
}

/// Signs a transaction object with the key pair: sets SigningPubKey and TxnSignature.
pub fn sign(tx: &mut StObject, key: &KeyPair) -> SignedTx {
    tx.set("SigningPubKey", Value::Blob(key.public_key().to_vec()));
    tx.remove("TxnSignature");
    let sig = key.sign(&signing_payload(tx));
    tx.set("TxnSignature", Value::Blob(sig));
    let blob = tx.to_bytes();
    SignedTx {
        hash: transaction_id(&blob),
        blob,
    }
}

/// Signs a transaction given in JSON form (every field filled, e.g. Fee and Sequence).
pub fn sign_json(tx: &Json, key: &KeyPair) -> Result<SignedTx, JsonError> {
    let mut obj = StObject::from_json(tx)?;
    Ok(sign(&mut obj, key))
}

/// Whether a transaction's single signature is valid for its SigningPubKey.
pub fn check_signature(tx: &StObject) -> bool {
    let (Some(pk), Some(sig)) = (tx.blob("SigningPubKey"), tx.blob("TxnSignature")) else {
        return false;
    };
    keys::verify(pk, &signing_payload(tx), sig)
}

/// The fewest and the most signers of a multi-signed transaction, and of entries in a
/// signer list (rippled's bounds with the ExpandedSignerList amendment).
pub const MIN_MULTI_SIGNERS: usize = 1;
pub const MAX_MULTI_SIGNERS: usize = 32;

/// The payload one signer of a multi-signed transaction signs: `SMT\0`, the
/// transaction's signing fields, then the signer's 20-byte AccountID.
pub fn multisigning_payload(tx: &StObject, signer: &[u8; 20]) -> Vec<u8> {
    let mut p = PREFIX_TX_MULTISIGN.to_vec();
    p.extend_from_slice(&tx.to_signing_bytes());
    p.extend_from_slice(signer);
    p
}

/// One signer's `Signer` object {Account, SigningPubKey, TxnSignature} for a
/// transaction. `account` is the signer account, which `key` must be allowed to sign
/// for (its master key, its regular key, or a phantom account's own key). The
/// transaction is signed as multi-signed: with an empty SigningPubKey.
pub fn sign_for(tx: &StObject, key: &KeyPair, account: &[u8; 20]) -> StObject {
    let mut unsigned = tx.clone();
    unsigned.set("SigningPubKey", Value::Blob(Vec::new()));
    unsigned.remove("TxnSignature");
    let sig = key.sign(&multisigning_payload(&unsigned, account));
    let mut signer = StObject::new();
    signer.set("Account", Value::AccountId(*account));
    signer.set("SigningPubKey", Value::Blob(key.public_key().to_vec()));
    signer.set("TxnSignature", Value::Blob(sig));
    signer
}

/// Puts `Signer` objects (from [`sign_for`]) into a transaction, sorted by account as
/// rippled requires, with an empty SigningPubKey and no TxnSignature.
pub fn multisign(tx: &mut StObject, mut signers: Vec<StObject>) -> SignedTx {
    signers.sort_by_key(|s| s.account("Account"));
    #[allow(clippy::expect_used)]
    let f = fields::field("Signer").expect("Signer is a known field");
    tx.set("SigningPubKey", Value::Blob(Vec::new()));
    tx.remove("TxnSignature");
    tx.set(
        "Signers",
        Value::Array(signers.into_iter().map(|s| (f, s)).collect()),
    );
    let blob = tx.to_bytes();
    SignedTx {
        hash: transaction_id(&blob),
        blob,
    }
}

/// rippled's local signature check of a transaction (`STTx::checkSign`): a single
/// signature when SigningPubKey is set, otherwise the `Signers`, each over its own
/// multi-signing payload, sorted strictly by account, none the transaction's own
/// account. The error is rippled's reason, as `submit` gives it after
/// "fails local checks: ".
pub fn verify_signatures(tx: &StObject) -> Result<(), String> {
    let pk = tx.blob("SigningPubKey").unwrap_or_default();
    if !pk.is_empty() {
        if tx.contains("Signers") {
            return Err("Cannot both single- and multi-sign.".into());
        }
        return match check_signature(tx) {
            true => Ok(()),
            false => Err("Invalid signature.".into()),
        };
    }
    let Some(signers) = tx.get("Signers") else {
        return Err("Empty SigningPubKey.".into());
    };
    if tx.contains("TxnSignature") {
        return Err("Cannot both single- and multi-sign.".into());
    }
    let Value::Array(signers) = signers else {
        return Err("Invalid Signers array size.".into());
    };
    if !(MIN_MULTI_SIGNERS..=MAX_MULTI_SIGNERS).contains(&signers.len()) {
        return Err("Invalid Signers array size.".into());
    }
    let own = tx.account("Account");
    let mut last = [0u8; 20];
    for (_, signer) in signers {
        let id = signer.account("Account").unwrap_or([0; 20]);
        if own == Some(id) {
            return Err("Invalid multisigner.".into());
        }
        if id == last {
            return Err("Duplicate Signers not allowed.".into());
        }
        if id < last {
            return Err("Unsorted Signers array.".into());
        }
        last = id;
        let valid = match (signer.blob("SigningPubKey"), signer.blob("TxnSignature")) {
            (Some(spk), Some(sig)) => keys::verify(spk, &multisigning_payload(tx, &id), sig),
            _ => false,
        };
        if !valid {
            return Err(format!(
                "Invalid signature on account {}.",
                encode_account_id(&id)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::Amount;
    use crate::KeyType;

    fn payment(from: [u8; 20]) -> StObject {
        let mut tx = StObject::new();
        tx.set("TransactionType", Value::UInt16(0));
        tx.set("Account", Value::AccountId(from));
        tx.set("Destination", Value::AccountId([9; 20]));
        tx.set("Amount", Value::Amount(Amount::Drops(1_000)));
        tx.set("Fee", Value::Amount(Amount::Drops(40)));
        tx.set("Sequence", Value::UInt32(1));
        tx
    }

    #[test]
    fn multisigning_payload_is_prefix_signing_fields_and_signer() {
        let mut tx = payment([1; 20]);
        tx.set("SigningPubKey", Value::Blob(Vec::new()));
        let p = multisigning_payload(&tx, &[7; 20]);
        assert_eq!(&p[..4], b"SMT\0");
        assert_eq!(&p[4..p.len() - 20], tx.to_signing_bytes().as_slice());
        assert_eq!(&p[p.len() - 20..], &[7; 20]);
    }

    #[test]
    fn signers_verify_and_the_signers_field_is_not_signed() {
        let keys: Vec<KeyPair> = (0..3)
            .map(|i| {
                KeyPair::generate(if i % 2 == 0 {
                    KeyType::Ed25519
                } else {
                    KeyType::Secp256k1
                })
            })
            .collect();
        let mut tx = payment([1; 20]);
        let signers = keys
            .iter()
            .map(|k| sign_for(&tx, k, &k.account_id()))
            .collect();
        let signed = multisign(&mut tx, signers);
        let back = StObject::from_bytes(&signed.blob).unwrap();
        assert_eq!(verify_signatures(&back), Ok(()));
        assert_eq!(signed.hash, transaction_id(&signed.blob));
    }

    fn with_signers(tx: &mut StObject, signers: Vec<StObject>) {
        let f = fields::field("Signer").unwrap();
        tx.set("SigningPubKey", Value::Blob(Vec::new()));
        tx.set(
            "Signers",
            Value::Array(signers.into_iter().map(|s| (f, s)).collect()),
        );
    }

    #[test]
    fn unsorted_duplicate_and_self_signers_are_refused_with_rippled_reasons() {
        let mut keys: Vec<KeyPair> = (0..2)
            .map(|_| KeyPair::generate(KeyType::Ed25519))
            .collect();
        keys.sort_by_key(KeyPair::account_id);
        let base = payment([1; 20]);
        let s: Vec<StObject> = keys
            .iter()
            .map(|k| sign_for(&base, k, &k.account_id()))
            .collect();

        let mut tx = base.clone();
        with_signers(&mut tx, vec![s[1].clone(), s[0].clone()]);
        assert_eq!(
            verify_signatures(&tx).unwrap_err(),
            "Unsorted Signers array."
        );

        let mut tx = base.clone();
        with_signers(&mut tx, vec![s[0].clone(), s[0].clone()]);
        assert_eq!(
            verify_signatures(&tx).unwrap_err(),
            "Duplicate Signers not allowed."
        );

        let own = payment(keys[0].account_id());
        let mut tx = own.clone();
        with_signers(
            &mut tx,
            vec![sign_for(&own, &keys[0], &keys[0].account_id())],
        );
        assert_eq!(verify_signatures(&tx).unwrap_err(), "Invalid multisigner.");

        let mut tx = base.clone();
        with_signers(&mut tx, Vec::new());
        assert_eq!(
            verify_signatures(&tx).unwrap_err(),
            "Invalid Signers array size."
        );

        let mut tx = base.clone();
        tx.set("SigningPubKey", Value::Blob(Vec::new()));
        assert_eq!(verify_signatures(&tx).unwrap_err(), "Empty SigningPubKey.");
    }

    #[test]
    fn a_signature_for_another_account_or_transaction_fails() {
        let k = KeyPair::generate(KeyType::Secp256k1);
        let base = payment([1; 20]);
        // Signed as if for another signer account: the payload differs.
        let mut forged = sign_for(&base, &k, &[5; 20]);
        forged.set("Account", Value::AccountId(k.account_id()));
        let mut tx = base.clone();
        with_signers(&mut tx, vec![forged]);
        assert!(verify_signatures(&tx)
            .unwrap_err()
            .starts_with("Invalid signature on account r"));

        let good = sign_for(&base, &k, &k.account_id());
        let mut tx = base.clone();
        tx.set("Sequence", Value::UInt32(2));
        with_signers(&mut tx, vec![good]);
        assert!(verify_signatures(&tx).is_err());
    }
}
