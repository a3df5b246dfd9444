//! Ledger records and HotPocket's hash formulas (hpcore `src/ledger/ledger.cpp`):
//!
//! - `user_hash  = blake3(user pubkeys, sorted, each 0xED ‖ 32 bytes)`
//! - `input_hash = blake3(input hashes in consensus order)`, an input hash being `blake3(sig)`
//! - `data_hash  = blake3(seq_no BE8 ‖ time BE8 ‖ state_hash ‖ patch_hash ‖ user_hash ‖
//!   input_hash ‖ output_hash)`
//! - `ledger_hash = blake3(prev_ledger_hash ‖ data_hash)`; genesis is seq 0, all-zero hash.

/// A 32-byte blake3 hash.
pub type Hash = [u8; 32];

/// The all-zero hash of genesis and of empty fields.
pub const ZERO_HASH: Hash = [0u8; 32];

/// blake3 over the concatenation of parts.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Hash {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// The id of a ledger: sequence number and hash (`"<seq>-<hex>"` in HotPocket's logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LclId {
    pub seq_no: u64,
    pub hash: Hash,
}

impl LclId {
    /// The genesis ledger.
    pub const GENESIS: LclId = LclId {
        seq_no: 0,
        hash: ZERO_HASH,
    };
}

impl std::fmt::Display for LclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.seq_no, hex::encode(self.hash))
    }
}

/// One closed ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub seq_no: u64,
    pub timestamp: u64,
    pub hash: Hash,
    pub prev_hash: Hash,
    pub data_hash: Hash,
    pub state_hash: Hash,
    pub config_hash: Hash,
    pub user_hash: Hash,
    pub input_hash: Hash,
    pub output_hash: Hash,
}

impl Ledger {
    /// The id of this ledger.
    pub fn id(&self) -> LclId {
        LclId {
            seq_no: self.seq_no,
            hash: self.hash,
        }
    }
}

/// What a round agreed on, from which the next ledger is made.
#[derive(Debug, Clone)]
pub struct RoundOutcome<'a> {
    pub time: u64,
    pub state_hash: Hash,
    pub patch_hash: Hash,
    /// Users with inputs or outputs this round, sorted, in 33-byte binary form.
    pub users: &'a [[u8; 33]],
    /// Input hashes in consensus order.
    pub input_hashes: &'a [Hash],
    pub output_hash: Hash,
}

/// A ledger's data hash from its fields (hpcore's formula).
#[allow(clippy::too_many_arguments)]
pub fn data_hash(
    seq_no: u64,
    time: u64,
    state_hash: &Hash,
    patch_hash: &Hash,
    user_hash: &Hash,
    input_hash: &Hash,
    output_hash: &Hash,
) -> Hash {
    let seq_bytes = seq_no.to_be_bytes();
    let time_bytes = time.to_be_bytes();
    hash_parts([
        seq_bytes.as_slice(),
        time_bytes.as_slice(),
        state_hash.as_slice(),
        patch_hash.as_slice(),
        user_hash.as_slice(),
        input_hash.as_slice(),
        output_hash.as_slice(),
    ])
}

/// A ledger's hash: `blake3(prev_hash ‖ data_hash)`.
pub fn ledger_hash(prev_hash: &Hash, data_hash: &Hash) -> Hash {
    hash_parts([prev_hash.as_slice(), data_hash.as_slice()])
}

/// The user hash of a ledger: blake3 over its users' keys (sorted, each 0xED ‖ 32 bytes).
pub fn user_hash(users: &[[u8; 33]]) -> Hash {
    hash_parts(users.iter().map(|u| u.as_slice()))
}

/// The input hash of a ledger: blake3 over its input hashes in consensus order.
pub fn input_hash(input_hashes: &[Hash]) -> Hash {
    hash_parts(input_hashes.iter().map(|h| h.as_slice()))
}

/// Closes the ledger after `prev` from a round's outcome.
pub fn close_ledger(prev: LclId, round: &RoundOutcome<'_>) -> Ledger {
    let seq_no = prev.seq_no + 1;
    let user_hash = user_hash(round.users);
    let input_hash = input_hash(round.input_hashes);
    let data_hash = data_hash(
        seq_no,
        round.time,
        &round.state_hash,
        &round.patch_hash,
        &user_hash,
        &input_hash,
        &round.output_hash,
    );
    let hash = ledger_hash(&prev.hash, &data_hash);
    Ledger {
        seq_no,
        timestamp: round.time,
        hash,
        prev_hash: prev.hash,
        data_hash,
        state_hash: round.state_hash,
        config_hash: round.patch_hash,
        user_hash,
        input_hash,
        output_hash: round.output_hash,
    }
}

/// The leaves of an execution's output tree: each user's output hash (users whose key does
/// not parse are left out), in byte order, then the state hash (`None` marks it).
pub fn output_leaves(
    outputs: &std::collections::BTreeMap<String, Vec<Vec<u8>>>,
    state_hash: Hash,
) -> Vec<(Option<String>, Hash)> {
    let mut leaves: Vec<(Option<String>, Hash)> = outputs
        .iter()
        .filter_map(|(user, msgs)| {
            let key = crate::protocol::pubkey_bytes_from_hex(user)?;
            Some((Some(user.clone()), user_output_hash(&key, msgs)))
        })
        .collect();
    // As hpcore: user output hashes in byte order, then the state hash.
    leaves.sort_by_key(|a| a.1);
    leaves.push((None, state_hash));
    leaves
}

/// The output root over [`output_leaves`]: what the UNL signs and the next ledger names.
pub fn leaves_root(leaves: &[(Option<String>, Hash)]) -> Hash {
    hash_parts(leaves.iter().map(|(_, h)| h.as_slice()))
}

/// A user's output hash: `blake3(pubkey ‖ outputs…)`.
pub fn user_output_hash(pubkey: &[u8; 33], outputs: &[Vec<u8>]) -> Hash {
    hash_parts(std::iter::once(pubkey.as_slice()).chain(outputs.iter().map(|o| o.as_slice())))
}

/// Root over users' output hashes (sorted by user): `blake3(h1 ‖ h2 ‖ …)`, zero when none.
pub fn output_root(user_hashes: &[Hash]) -> Hash {
    if user_hashes.is_empty() {
        return ZERO_HASH;
    }
    hash_parts(user_hashes.iter().map(|h| h.as_slice()))
}

/// Ordering key of an input: nonce big-endian ‖ blake3(sig).
pub fn input_order_key(nonce: u64, input_hash: &Hash) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&nonce.to_be_bytes());
    key[8..].copy_from_slice(input_hash);
    key
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ledger_hash_chains_over_previous() {
        let round = RoundOutcome {
            time: 1000,
            state_hash: [1; 32],
            patch_hash: ZERO_HASH,
            users: &[],
            input_hashes: &[],
            output_hash: ZERO_HASH,
        };
        let first = close_ledger(LclId::GENESIS, &round);
        assert_eq!(first.seq_no, 1);
        assert_eq!(
            first.hash,
            hash_parts([ZERO_HASH.as_slice(), first.data_hash.as_slice()])
        );
        let second = close_ledger(first.id(), &round);
        assert_eq!(second.prev_hash, first.hash);
        assert_ne!(second.hash, first.hash);
    }
}
