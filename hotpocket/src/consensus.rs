//! Round proposals and the agreement rule, shaped for a UNL of several nodes (hpcore
//! `src/consensus.cpp`). Stages 1–3 need 50 / 65 / 80 % of the UNL (scaled by
//! `threshold`/80); a ledger closes on a stage-3 root that enough of the UNL proposed. Peer
//! messaging is a later step: today a node sees only its own proposal.

use crate::ledger::{hash_parts, Hash, LclId};

/// One node's proposal for a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Proposer's `ed…` key.
    pub node: String,
    pub stage: u8,
    pub time: u64,
    pub lcl: LclId,
    /// Users of the round, sorted, 0xED ‖ key.
    pub users: Vec<[u8; 33]>,
    /// Input hashes in consensus order.
    pub input_hashes: Vec<Hash>,
    pub output_hash: Hash,
    pub state_hash: Hash,
    pub patch_hash: Hash,
}

impl Proposal {
    /// The hash nodes agree on: every field but the proposer and stage.
    pub fn root(&self) -> Hash {
        let time = self.time.to_be_bytes();
        let seq = self.lcl.seq_no.to_be_bytes();
        let users = hash_parts(self.users.iter().map(|u| u.as_slice()));
        let inputs = hash_parts(self.input_hashes.iter().map(|h| h.as_slice()));
        hash_parts([
            time.as_slice(),
            seq.as_slice(),
            self.lcl.hash.as_slice(),
            users.as_slice(),
            inputs.as_slice(),
            self.output_hash.as_slice(),
            self.state_hash.as_slice(),
            self.patch_hash.as_slice(),
        ])
    }
}

/// Percent of the UNL a stage needs: 50 / 65 / 80 for stages 1 / 2 / 3, scaled by
/// `threshold / 80`, capped at 100.
pub fn stage_percent(stage: u8, threshold: u32) -> f64 {
    let base = match stage {
        0 | 1 => 50.0,
        2 => 65.0,
        _ => 80.0,
    };
    (base * f64::from(threshold) / 80.0).min(100.0)
}

/// The stage-3 proposal enough of the UNL agree on, if any. Proposals from nodes outside
/// the UNL, of other stages or on another lcl do not count; one vote per node.
pub fn agreed<'a>(
    unl: &[String],
    lcl: LclId,
    proposals: &'a [Proposal],
    threshold: u32,
) -> Option<&'a Proposal> {
    if unl.is_empty() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let mut votes: Vec<(Hash, usize, &Proposal)> = Vec::new();
    for p in proposals {
        if p.stage != 3 || p.lcl != lcl || !unl.contains(&p.node) || !seen.insert(p.node.as_str()) {
            continue;
        }
        let root = p.root();
        match votes.iter_mut().find(|(r, _, _)| *r == root) {
            Some(entry) => entry.1 += 1,
            None => votes.push((root, 1, p)),
        }
    }
    let need = stage_percent(3, threshold) / 100.0 * unl.len() as f64;
    votes
        .into_iter()
        .filter(|(_, n, _)| *n as f64 >= need)
        .max_by_key(|(_, n, _)| *n)
        .map(|(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn proposal(node: &str, output: u8) -> Proposal {
        Proposal {
            node: node.to_owned(),
            stage: 3,
            time: 1000,
            lcl: LclId::GENESIS,
            users: vec![],
            input_hashes: vec![],
            output_hash: [output; 32],
            state_hash: [0; 32],
            patch_hash: [0; 32],
        }
    }

    #[test]
    fn a_lone_node_agrees_with_itself() {
        let unl = vec!["a".to_owned()];
        let own = [proposal("a", 1)];
        assert_eq!(agreed(&unl, LclId::GENESIS, &own, 80), Some(&own[0]));
    }

    #[test]
    fn eighty_percent_of_the_unl_is_needed() {
        let unl: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut props: Vec<Proposal> = ["a", "b", "c"].iter().map(|n| proposal(n, 1)).collect();
        assert!(
            agreed(&unl, LclId::GENESIS, &props, 80).is_none(),
            "3 of 5 is 60 %"
        );
        props.push(proposal("d", 1));
        assert!(
            agreed(&unl, LclId::GENESIS, &props, 80).is_some(),
            "4 of 5 is 80 %"
        );
        props.push(proposal("d", 1));
        props.push(proposal("x", 1));
        let split: Vec<Proposal> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| proposal(n, (i % 2) as u8))
            .collect();
        assert!(
            agreed(&unl, LclId::GENESIS, &split, 80).is_none(),
            "disagreeing roots do not add up"
        );
        assert_eq!(stage_percent(1, 80), 50.0);
        assert_eq!(stage_percent(2, 40), 32.5);
    }
}
