//! Signing transactions and checking signed ones.

use serde_json::Value as Json;

use crate::codec::{JsonError, StObject, Value};
use crate::hash::{transaction_id, PREFIX_TX_SIGN};
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
