//! Property tests over the whole submit path (hex-decoded blob → decode → format
//! checks → signature → engine): arbitrary and mutated blobs never panic, and every
//! refusal carries a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use berth_localnet::engine::Fees;
use berth_localnet::node::Node;
use berth_localnet::rpc::submit_blob;
use berth_localnet::GENESIS_SEED;
use berth_xrpl_core::{tx, KeyPair};
use proptest::prelude::*;
use serde_json::json;

fn node() -> Arc<Node> {
    Arc::new(Node::open(None, Fees::default()).unwrap())
}

fn valid_blobs() -> &'static [Vec<u8>] {
    static BLOBS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    BLOBS.get_or_init(make_valid_blobs)
}

fn make_valid_blobs() -> Vec<Vec<u8>> {
    let g = KeyPair::from_seed(GENESIS_SEED).unwrap();
    let txs = [
        json!({"TransactionType": "Payment", "Account": g.address(), "Destination": "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe", "Amount": "20000000", "Fee": "10", "Sequence": 1, "Memos": [{"Memo": {"MemoType": "6265727468", "MemoData": "0102"}}]}),
        json!({"TransactionType": "NFTokenMint", "Account": g.address(), "NFTokenTaxon": 0, "Flags": 9, "URI": "626572746831", "Fee": "10", "Sequence": 1}),
        json!({"TransactionType": "NFTokenCancelOffer", "Account": g.address(), "NFTokenOffers": ["00".repeat(32)], "Fee": "10", "Sequence": 1}),
        json!({"TransactionType": "AccountSet", "Account": g.address(), "Domain": "AABB", "Fee": "10", "Sequence": 1}),
    ];
    txs.iter()
        .map(|t| tx::sign_json(t, &g).unwrap().blob)
        .collect()
}

fn check(node: &Arc<Node>, blob: Vec<u8>) {
    match submit_blob(node, blob) {
        Ok(r) => assert!(r["engine_result"].is_string()),
        Err(e) => assert!(!e.message.is_empty(), "refusal without a reason: {e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&node(), bytes);
    }

    #[test]
    fn mutated_valid_blobs_never_panic(which in 0usize..4, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let mut blob = valid_blobs()[which].clone();
        for (pos, byte) in edits {
            let n = blob.len();
            blob[pos % n] = byte;
        }
        let keep = cut % (blob.len() + 1);
        blob.truncate(keep.max(1));
        check(&node(), blob);
    }
}

#[test]
fn every_truncation_of_a_valid_blob_is_refused_with_a_reason() {
    let n = node();
    for blob in valid_blobs().iter().cloned() {
        for cut in 0..blob.len() {
            match submit_blob(&n, blob[..cut].to_vec()) {
                Ok(r) => panic!("a truncated blob was accepted: {r:?}"),
                Err(e) => assert!(!e.message.is_empty()),
            }
        }
    }
}
