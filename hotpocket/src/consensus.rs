//! The agreement rules of a round (after hpcore `src/consensus.cpp`), as pure functions over
//! the proposals a node has collected, so that they are tested without a network.
//!
//! A round is a wall-clock window of `roundtime` ms starting at `offset + k·roundtime`.
//! Each node proposes at stage 0 (the round's start) the inputs it holds and the result of
//! executing its last closed ledger (state, patch and output hashes); at stages 1, 2 and 3
//! (`stage_slice` % of the round apart) it proposes again, keeping the inputs that 50, 65 and
//! 80 % of the UNL (scaled by `threshold / 80`) voted for at the stage before. A ledger
//! closes when `threshold` % of the UNL signed stage-3 proposals with one root. Only signed
//! proposals from UNL members count, one per node (its latest of the round).

use std::collections::{BTreeMap, BTreeSet};

use crate::ledger::{Hash, LclId};
use crate::peer::wire::{NodeKey, Proposal};

/// Number of UNL members that make `percent` % of a UNL of `unl` nodes (at least 1).
pub fn votes_needed(unl: usize, percent: f64) -> usize {
    let need = (percent / 100.0 * unl as f64 - 1e-9).ceil();
    (need.max(1.0) as usize).min(unl.max(1))
}

/// Percent of the UNL that the inputs proposed at `stage` need: 50 / 65 / 80 for stages
/// 1 / 2 / 3, scaled by `threshold / 80`, capped at 100.
pub fn stage_percent(stage: u8, threshold: u32) -> f64 {
    let base = match stage {
        0 | 1 => 50.0,
        2 => 65.0,
        _ => 80.0,
    };
    (base * f64::from(threshold) / 80.0).min(100.0)
}

/// The round timing shared by every node of a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTiming {
    pub roundtime: u64,
    /// Percent of the round each of stages 1–3 takes.
    pub stage_slice: u32,
    /// Offset of round starts from multiples of `roundtime`, from the contract id.
    pub offset: u64,
}

impl RoundTiming {
    /// The timing of a contract: the offset is `blake3(contract id) mod roundtime`, so that
    /// contracts do not all start their rounds on the same millisecond.
    pub fn new(contract_id: &str, roundtime: u64, stage_slice: u32) -> RoundTiming {
        let roundtime = roundtime.max(1);
        let digest = blake3::hash(contract_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        RoundTiming {
            roundtime,
            stage_slice: stage_slice.clamp(1, 33),
            offset: u64::from_be_bytes(first) % roundtime,
        }
    }

    /// Length of each of stages 1–3 (ms, at least 1).
    pub fn slice(&self) -> u64 {
        (self.roundtime * u64::from(self.stage_slice) / 100).max(1)
    }

    /// Start of the round that `now` falls in.
    pub fn round_start(&self, now: u64) -> u64 {
        let shifted = now.saturating_sub(self.offset);
        shifted / self.roundtime * self.roundtime + self.offset
    }

    /// Start of the first round after `now`.
    pub fn next_round_start(&self, now: u64) -> u64 {
        self.round_start(now) + self.roundtime
    }

    /// When stage `stage` (0–3) of the round starting at `start` begins.
    pub fn stage_start(&self, start: u64, stage: u8) -> u64 {
        start + u64::from(stage) * self.slice()
    }

    /// `roundtime * 100 + stage_slice`, the value peers compare in their handshake.
    pub fn time_config(&self) -> u64 {
        self.roundtime * 100 + u64::from(self.stage_slice)
    }
}

/// What this node has to propose from: its last closed ledger and the result of executing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnView {
    pub lcl: LclId,
    pub state_hash: Hash,
    pub patch_hash: Hash,
    pub output_hash: Hash,
    /// This node's verdict on a bundle waiting to be installed (zero when none).
    pub install: Hash,
}

/// The latest proposal of each node for one round.
#[derive(Debug, Default, Clone)]
pub struct RoundProposals {
    by_node: BTreeMap<NodeKey, Proposal>,
}

impl RoundProposals {
    /// Keeps `p` unless the node already proposed a later stage this round; returns whether
    /// it was kept.
    pub fn insert(&mut self, p: Proposal) -> bool {
        match self.by_node.get(&p.node) {
            Some(old) if old.stage > p.stage || *old == p => false,
            _ => {
                self.by_node.insert(p.node, p);
                true
            }
        }
    }

    /// The collected proposals of UNL members.
    pub fn from_unl<'a>(
        &'a self,
        unl: &'a BTreeSet<NodeKey>,
    ) -> impl Iterator<Item = &'a Proposal> + 'a {
        self.by_node.values().filter(move |p| unl.contains(&p.node))
    }

    /// Number of proposals kept.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// True when nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

/// How this node differs from the part of the UNL that agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desync {
    /// Enough of the UNL build on another last closed ledger.
    Lcl { majority: LclId },
    /// Enough of the UNL have another state after the same ledger.
    State { majority: Hash },
    /// Enough of the UNL have another `patch.cfg` after the same ledger.
    Patch { majority: Hash },
    /// No state hash has enough of the UNL behind it (a non-deterministic contract, or
    /// nodes that disagree): no ledger can close until that changes.
    Diverged { distinct_states: usize },
}

impl std::fmt::Display for Desync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Desync::Lcl { majority } => write!(f, "the UNL's majority is on ledger {majority}"),
            Desync::State { majority } => write!(
                f,
                "the UNL's majority has state {}",
                &hex::encode(majority)[..16]
            ),
            Desync::Patch { majority } => write!(
                f,
                "the UNL's majority has patch.cfg {}",
                &hex::encode(majority)[..16]
            ),
            Desync::Diverged { distinct_states } => write!(
                f,
                "the nodes report {distinct_states} different states and none has enough votes (non-deterministic contract?)"
            ),
        }
    }
}

/// The verdict at a stage boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageVerdict {
    /// Propose these inputs (sorted) at the stage.
    Propose { inputs: Vec<Hash> },
    /// Fewer UNL members proposed this round than the threshold needs.
    NotEnoughPeers { have: usize, need: usize },
    /// This node's view differs from the agreeing UNL: it must not propose.
    OutOfSync(Desync),
}

/// Decides stage `stage` (1–3) of a round from the proposals collected so far. `held` says
/// whether this node holds an input (only those can be voted for).
pub fn stage_verdict(
    stage: u8,
    own: &OwnView,
    proposals: &RoundProposals,
    unl: &BTreeSet<NodeKey>,
    threshold: u32,
    held: impl Fn(&Hash) -> bool,
) -> StageVerdict {
    let props: Vec<&Proposal> = proposals.from_unl(unl).collect();
    let need = votes_needed(unl.len(), f64::from(threshold));
    if props.len() < need {
        return StageVerdict::NotEnoughPeers {
            have: props.len(),
            need,
        };
    }
    if let Some(desync) = desync(own, &props, need) {
        return StageVerdict::OutOfSync(desync);
    }
    let input_need = votes_needed(unl.len(), stage_percent(stage, threshold));
    let mut votes: BTreeMap<&Hash, usize> = BTreeMap::new();
    for p in props.iter().filter(|p| LclId::from(p.lcl) == own.lcl) {
        for h in &p.inputs {
            *votes.entry(h).or_default() += 1;
        }
    }
    let inputs = votes
        .into_iter()
        .filter(|(h, n)| *n >= input_need && held(h))
        .map(|(h, _)| *h)
        .collect();
    StageVerdict::Propose { inputs }
}

/// How this node differs from the UNL members whose view reaches `need` votes, if it does.
pub fn desync(own: &OwnView, props: &[&Proposal], need: usize) -> Option<Desync> {
    let (lcl, n) = plurality(props.iter().map(|p| LclId::from(p.lcl)))?;
    if lcl != own.lcl {
        return (n >= need).then_some(Desync::Lcl { majority: lcl });
    }
    let same: Vec<&&Proposal> = props
        .iter()
        .filter(|p| LclId::from(p.lcl) == own.lcl)
        .collect();
    if let Some((state, n)) = plurality(same.iter().map(|p| p.state_hash)) {
        if state != own.state_hash && n >= need {
            return Some(Desync::State { majority: state });
        }
        if n < need {
            let distinct: BTreeSet<Hash> = same.iter().map(|p| p.state_hash).collect();
            if distinct.len() > 1 {
                return Some(Desync::Diverged {
                    distinct_states: distinct.len(),
                });
            }
        }
    }
    if let Some((patch, n)) = plurality(same.iter().map(|p| p.patch_hash)) {
        if patch != own.patch_hash && n >= need {
            return Some(Desync::Patch { majority: patch });
        }
    }
    None
}

/// The most frequent value and its count (ties: the smallest value, so every node picks
/// the same).
fn plurality<T: Ord + Copy>(values: impl Iterator<Item = T>) -> Option<(T, usize)> {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    let mut best: Option<(T, usize)> = None;
    for (v, n) in counts {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((v, n));
        }
    }
    best
}

/// Why a round did not close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoClose {
    /// Too few stage-3 proposals arrived.
    NotEnoughStage3 { have: usize, need: usize },
    /// Enough arrived but with different roots.
    PossibleFork { best: usize, need: usize },
}

impl std::fmt::Display for NoClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoClose::NotEnoughStage3 { have, need } => {
                write!(f, "not enough stage 3 proposals (votes:{have} needed:{need})")
            }
            NoClose::PossibleFork { best, need } => write!(
                f,
                "possible fork condition: stage 3 proposals disagree (best root votes:{best} needed:{need})"
            ),
        }
    }
}

/// The stage-3 proposal `threshold` % of the UNL signed with one root, if there is one.
pub fn agreed<'a>(
    proposals: &'a RoundProposals,
    unl: &BTreeSet<NodeKey>,
    threshold: u32,
) -> Result<&'a Proposal, NoClose> {
    let need = votes_needed(unl.len(), f64::from(threshold));
    let stage3: Vec<&'a Proposal> = proposals
        .by_node
        .values()
        .filter(|p| p.stage == 3 && unl.contains(&p.node))
        .collect();
    if stage3.len() < need {
        return Err(NoClose::NotEnoughStage3 {
            have: stage3.len(),
            need,
        });
    }
    let mut by_root: BTreeMap<Hash, Vec<&Proposal>> = BTreeMap::new();
    for p in stage3 {
        by_root.entry(p.root()).or_default().push(p);
    }
    let best = by_root.values().map(Vec::len).max().unwrap_or(0);
    by_root
        .into_values()
        .find(|ps| ps.len() >= need)
        .and_then(|ps| ps.first().copied())
        .ok_or(NoClose::PossibleFork { best, need })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::peer::wire::{Sig, WireLcl};
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn unl(n: u8) -> BTreeSet<NodeKey> {
        (1..=n).map(|i| NodeKey::of(&key(i))).collect()
    }

    fn own() -> OwnView {
        OwnView {
            lcl: LclId::GENESIS,
            state_hash: [1; 32],
            patch_hash: [2; 32],
            output_hash: [3; 32],
            install: [0; 32],
        }
    }

    fn prop(node: u8, stage: u8, inputs: &[u8]) -> Proposal {
        let o = own();
        Proposal {
            node: NodeKey([0; 32]),
            stage,
            time: 1000,
            lcl: WireLcl::from(o.lcl),
            state_hash: o.state_hash,
            patch_hash: o.patch_hash,
            output_hash: o.output_hash,
            output_sig: Sig([0; 64]),
            install: [0; 32],
            inputs: inputs.iter().map(|i| [*i; 32]).collect(),
            sig: Sig([0; 64]),
        }
        .sign(&key(node))
    }

    fn collect(props: impl IntoIterator<Item = Proposal>) -> RoundProposals {
        let mut r = RoundProposals::default();
        for p in props {
            r.insert(p);
        }
        r
    }

    #[test]
    fn votes_needed_rounds_up() {
        assert_eq!(votes_needed(5, 80.0), 4);
        assert_eq!(votes_needed(3, 80.0), 3);
        assert_eq!(votes_needed(3, 50.0), 2);
        assert_eq!(votes_needed(1, 80.0), 1);
        assert_eq!(votes_needed(4, 51.0), 3);
        assert_eq!(votes_needed(10, 100.0), 10);
        assert_eq!(stage_percent(1, 80), 50.0);
        assert_eq!(stage_percent(2, 40), 32.5);
        assert_eq!(stage_percent(3, 100), 100.0);
    }

    #[test]
    fn a_lone_node_agrees_with_itself() {
        let r = collect([prop(1, 3, &[9])]);
        let p = agreed(&r, &unl(1), 80).unwrap();
        assert_eq!(p.inputs, vec![[9; 32]]);
    }

    #[test]
    fn eighty_percent_of_the_unl_closes_and_a_minority_never_does() {
        let u = unl(5);
        let three = collect((1..=3).map(|n| prop(n, 3, &[])));
        assert_eq!(
            agreed(&three, &u, 80).unwrap_err(),
            NoClose::NotEnoughStage3 { have: 3, need: 4 }
        );
        let four = collect((1..=4).map(|n| prop(n, 3, &[])));
        assert!(agreed(&four, &u, 80).is_ok());
        let split = collect((1..=4).map(|n| prop(n, 3, &[n % 2])));
        assert_eq!(
            agreed(&split, &u, 80).unwrap_err(),
            NoClose::PossibleFork { best: 2, need: 4 }
        );
    }

    #[test]
    fn strangers_and_earlier_stages_are_not_counted() {
        let u = unl(3);
        let mut r = collect([prop(1, 3, &[]), prop(2, 3, &[]), prop(7, 3, &[])]);
        assert!(agreed(&r, &u, 80).is_err(), "key 7 is not in the UNL");
        r.insert(prop(3, 2, &[]));
        assert!(
            agreed(&r, &u, 80).is_err(),
            "a stage-2 proposal is not a stage-3 vote"
        );
        assert!(
            !r.insert(prop(3, 1, &[])),
            "an earlier stage never replaces a later one"
        );
        r.insert(prop(3, 3, &[]));
        assert!(agreed(&r, &u, 80).is_ok());
    }

    #[test]
    fn inputs_need_the_stage_percentage_of_votes() {
        let u = unl(5);
        // Input 1 held by 3 nodes, input 2 by 2, input 3 by 1.
        let r = collect([
            prop(1, 0, &[1, 2, 3]),
            prop(2, 0, &[1, 2]),
            prop(3, 0, &[1]),
            prop(4, 0, &[]),
        ]);
        let v = stage_verdict(1, &own(), &r, &u, 80, |_| true);
        // Stage 1 needs 50 % of 5 = 3 votes.
        assert_eq!(
            v,
            StageVerdict::Propose {
                inputs: vec![[1; 32]]
            }
        );
        let v = stage_verdict(1, &own(), &r, &u, 80, |h| *h != [1; 32]);
        assert_eq!(
            v,
            StageVerdict::Propose { inputs: vec![] },
            "unheld inputs are not voted"
        );
    }

    #[test]
    fn too_few_proposers_is_reported_not_fatal() {
        let r = collect([prop(1, 0, &[]), prop(2, 0, &[])]);
        assert_eq!(
            stage_verdict(1, &own(), &r, &unl(5), 80, |_| true),
            StageVerdict::NotEnoughPeers { have: 2, need: 4 }
        );
    }

    #[test]
    fn a_node_whose_state_differs_from_the_majority_is_out_of_sync() {
        let u = unl(3);
        let r = collect((1..=3).map(|n| prop(n, 0, &[])));
        let mut mine = own();
        mine.state_hash = [9; 32];
        assert_eq!(
            stage_verdict(1, &mine, &r, &u, 80, |_| true),
            StageVerdict::OutOfSync(Desync::State { majority: [1; 32] })
        );
        let mut behind = own();
        behind.lcl = LclId {
            seq_no: 7,
            hash: [7; 32],
        };
        assert!(matches!(
            stage_verdict(1, &behind, &r, &u, 80, |_| true),
            StageVerdict::OutOfSync(Desync::Lcl { .. })
        ));
    }

    #[test]
    fn disagreeing_states_are_reported_as_divergence() {
        let u = unl(3);
        let mut props = Vec::new();
        for n in 1..=3u8 {
            let mut p = prop(n, 0, &[]);
            p.state_hash = [n; 32];
            props.push(p.sign(&key(n)));
        }
        let r = collect(props);
        let mut mine = own();
        mine.state_hash = [1; 32];
        assert_eq!(
            stage_verdict(1, &mine, &r, &u, 80, |_| true),
            StageVerdict::OutOfSync(Desync::Diverged { distinct_states: 3 })
        );
    }

    #[test]
    fn round_timing_is_shared_and_offset_by_contract() {
        let t = RoundTiming::new("3c349abe-4d70-4f50-9fa6-018f1f2530ab", 1000, 25);
        assert!(t.offset < 1000);
        let start = t.round_start(1_700_000_000_123);
        assert_eq!((start - t.offset) % 1000, 0);
        assert!(start <= 1_700_000_000_123 && 1_700_000_000_123 < start + 1000);
        assert_eq!(t.stage_start(start, 3), start + 750);
        assert_eq!(t.next_round_start(start), start + 1000);
        assert_eq!(t.time_config(), 100_025);
    }
}
