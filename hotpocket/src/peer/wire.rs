//! The peer protocol's wire format: Berth's own, versioned, every size bounded.
//! `hotpocket/PROTOCOL.md` describes it byte by byte; this module is its only owner.
//!
//! A frame is one binary WebSocket message holding one [`Frame`] in postcard encoding
//! (<https://postcard.jamesmunns.com/wire-format>): the protocol version as a varint, then
//! the message. Every message that a node relays or counts carries its own signature:
//! proposals and output votes by the proposing node, NPL messages by the sending node and
//! relayed inputs by their user, so no peer can forge one.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ledger::{hash_parts, Hash, LclId};

/// The version this node speaks (and the only one it accepts). 3 since state listings name
/// special files (`Special`).
pub const PEER_PROTOCOL_VERSION: u16 = 3;
/// Most input hashes a proposal may carry.
pub const MAX_PROPOSAL_INPUTS: usize = 65_536;
/// Largest NPL message a contract may send (hp-nodejs-contract's own cap).
pub const MAX_NPL_BYTES: usize = 128 * 1024;
/// Most relayed inputs in one frame.
pub const MAX_RELAY_BATCH: usize = 4096;
/// Length of a handshake challenge.
pub const CHALLENGE_LEN: usize = 16;
/// Longest detail text in a refusal.
pub const MAX_DETAIL_LEN: usize = 512;

/// A node's ed25519 public key (the 32 key bytes; `ed…` hex in text).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeKey(pub [u8; 32]);

impl NodeKey {
    /// The key of a signing key.
    pub fn of(key: &SigningKey) -> NodeKey {
        NodeKey(key.verifying_key().to_bytes())
    }

    /// Parses `ed` + 64 hex digits.
    pub fn parse(text: &str) -> Option<NodeKey> {
        let key = crate::protocol::parse_pubkey_hex(text).ok()?;
        Some(NodeKey(key.to_bytes()))
    }

    /// `ed…` lowercase hex, as HotPocket writes keys.
    pub fn hex(&self) -> String {
        format!("ed{}", hex::encode(self.0))
    }

    /// 0xED ‖ key, as HotPocket hashes keys and as `unl_sig` carries them.
    pub fn prefixed(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = 0xED;
        out[1..].copy_from_slice(&self.0);
        out
    }

    fn verifying(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }

    /// Whether `sig` is this key's signature over `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &Sig) -> bool {
        self.verifying()
            .is_some_and(|k| k.verify(msg, &Signature::from_bytes(&sig.0)).is_ok())
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.hex())
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Short form for logs: the first 8 hex digits after `ed`.
        write!(f, "ed{}", &hex::encode(self.0)[..8])
    }
}

/// An ed25519 signature (64 bytes, a byte string on the wire).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

impl Sig {
    /// Signs `msg` with `key`.
    pub fn sign(key: &SigningKey, msg: &[u8]) -> Sig {
        Sig(key.sign(msg).to_bytes())
    }
}

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({}…)", &hex::encode(self.0)[..8])
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sig, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                <[u8; 64]>::try_from(v)
                    .map(Sig)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Sig, E> {
                self.visit_bytes(v)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Sig, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A ledger id on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WireLcl {
    pub seq_no: u64,
    pub hash: Hash,
}

impl From<LclId> for WireLcl {
    fn from(l: LclId) -> WireLcl {
        WireLcl {
            seq_no: l.seq_no,
            hash: l.hash,
        }
    }
}

impl From<WireLcl> for LclId {
    fn from(l: WireLcl) -> LclId {
        LclId {
            seq_no: l.seq_no,
            hash: l.hash,
        }
    }
}

/// Why a peer refuses a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The peer speaks another protocol version.
    Version,
    /// The peer runs another contract.
    ContractIdMismatch,
    /// The peer's roundtime or stage slice differs (`time_config`).
    TimeConfigMismatch,
    /// The peer's challenge answer did not verify.
    BadChallengeResponse,
    /// A session with this key exists already.
    DuplicateSession,
    /// The peer dialed itself.
    OwnKey,
}

impl RefuseReason {
    /// The reason as logs and `stat` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Version => "protocol version mismatch",
            RefuseReason::ContractIdMismatch => "contract id mismatch",
            RefuseReason::TimeConfigMismatch => "round timing (time_config) mismatch",
            RefuseReason::BadChallengeResponse => "challenge response did not verify",
            RefuseReason::DuplicateSession => "a session with this node key exists",
            RefuseReason::OwnKey => "connected to itself",
        }
    }
}

/// Each side's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub contract_id: String,
    /// `roundtime_ms * 100 + stage_slice`, as hpcore compares it.
    pub time_config: u64,
    pub challenge: [u8; CHALLENGE_LEN],
}

/// The answer to the other side's [`Hello`]: this node's key and its signature over
/// [`challenge_message`] of the other side's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub node: NodeKey,
    pub sig: Sig,
}

/// What a node signs to prove its key to a peer: a domain tag, the peer's challenge and the
/// contract id, so that the answer is good for this session and this contract only.
pub fn challenge_message(challenge: &[u8; CHALLENGE_LEN], contract_id: &str) -> Hash {
    hash_parts([
        b"berth-peer-challenge-v1".as_slice(),
        challenge.as_slice(),
        contract_id.as_bytes(),
    ])
}

/// A refusal; the sender closes the session after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    pub reason: RefuseReason,
    pub detail: String,
}

/// One node's proposal for a round (hpcore's `Proposal`, our own layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub node: NodeKey,
    /// 0..=3.
    pub stage: u8,
    /// The round's start (ms since the epoch): the ledger time this node proposes.
    pub time: u64,
    /// The ledger this round builds on.
    pub lcl: WireLcl,
    /// The contract's state hash after executing `lcl`.
    pub state_hash: Hash,
    /// blake3 of `patch.cfg` after executing `lcl`.
    pub patch_hash: Hash,
    /// Output root of executing `lcl`.
    pub output_hash: Hash,
    /// This node's signature over `output_hash` (an `unl_sig` entry).
    pub output_sig: Sig,
    /// The node's verdict on a bundle waiting to be installed ([`install_vote`]), zero when
    /// none waits.
    pub install: Hash,
    /// Input hashes (blake3 of the user's signature) this node votes for, sorted.
    pub inputs: Vec<Hash>,
    /// The node's signature over [`Proposal::signing_hash`].
    pub sig: Sig,
}

impl Proposal {
    /// What nodes agree on: every field but the proposer, the stage and the signatures.
    pub fn root(&self) -> Hash {
        let time = self.time.to_be_bytes();
        let seq = self.lcl.seq_no.to_be_bytes();
        let inputs = hash_parts(self.inputs.iter().map(|h| h.as_slice()));
        hash_parts([
            time.as_slice(),
            seq.as_slice(),
            self.lcl.hash.as_slice(),
            self.state_hash.as_slice(),
            self.patch_hash.as_slice(),
            self.output_hash.as_slice(),
            self.install.as_slice(),
            inputs.as_slice(),
        ])
    }

    /// What the node signs: a domain tag, its key, the stage and the root.
    pub fn signing_hash(&self) -> Hash {
        hash_parts([
            b"berth-proposal-v1".as_slice(),
            self.node.0.as_slice(),
            [self.stage].as_slice(),
            self.root().as_slice(),
        ])
    }

    /// Signs the proposal (sets `node`, `output_sig` and `sig`).
    pub fn sign(mut self, key: &SigningKey) -> Proposal {
        self.node = NodeKey::of(key);
        self.output_sig = Sig::sign(key, &self.output_hash);
        self.sig = Sig::sign(key, &self.signing_hash());
        self
    }

    /// Checks both signatures and the bounds; names what is wrong.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.stage > 3 {
            return Err("stage above 3");
        }
        if self.inputs.len() > MAX_PROPOSAL_INPUTS {
            return Err("too many inputs");
        }
        if !self.inputs.windows(2).all(|w| w[0] < w[1]) {
            return Err("inputs not sorted and distinct");
        }
        if !self.node.verifies(&self.signing_hash(), &self.sig) {
            return Err("bad proposal signature");
        }
        if !self.node.verifies(&self.output_hash, &self.output_sig) {
            return Err("bad output signature");
        }
        Ok(())
    }
}

/// A node's verdict on installing the bundle with hash `bundle`: `ok` when it validated and
/// its `install.sh` succeeded on this node.
pub fn install_vote(bundle: &Hash, ok: bool) -> Hash {
    hash_parts([
        b"berth-install-v1".as_slice(),
        bundle.as_slice(),
        [u8::from(ok)].as_slice(),
    ])
}

/// A user's input, relayed as the user signed it so that no node can forge one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedInput {
    /// The user's ed25519 key.
    pub user: NodeKey,
    /// 0 = JSON, 1 = BSON: how `container` is encoded.
    pub protocol: u8,
    /// The input container exactly as the user signed it.
    pub container: Vec<u8>,
    /// The user's signature over `container`.
    pub sig: Sig,
}

/// A contract's NPL message, signed by its node and bound to the ledger the run follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NplMessage {
    pub node: NodeKey,
    pub lcl: WireLcl,
    pub data: Vec<u8>,
    pub sig: Sig,
}

impl NplMessage {
    fn signing_hash(node: &NodeKey, lcl: &WireLcl, data: &[u8]) -> Hash {
        hash_parts([
            b"berth-npl-v1".as_slice(),
            node.0.as_slice(),
            data,
            lcl.seq_no.to_be_bytes().as_slice(),
            lcl.hash.as_slice(),
        ])
    }

    /// A signed NPL message.
    pub fn new(key: &SigningKey, lcl: LclId, data: Vec<u8>) -> NplMessage {
        let node = NodeKey::of(key);
        let lcl = WireLcl::from(lcl);
        let sig = Sig::sign(key, &Self::signing_hash(&node, &lcl, &data));
        NplMessage {
            node,
            lcl,
            data,
            sig,
        }
    }

    /// Checks the signature and the size.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.data.len() > MAX_NPL_BYTES {
            return Err("npl message too large");
        }
        if !self.node.verifies(
            &Self::signing_hash(&self.node, &self.lcl, &self.data),
            &self.sig,
        ) {
            return Err("bad npl signature");
        }
        Ok(())
    }
}

/// A node's result of executing a ledger: its output root, signed. The signature is over the
/// root alone because HotPocket clients verify `unl_sig` that way; the root commits to the
/// state hash (it is a leaf of the output tree) and so to the ledger executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputVote {
    pub node: NodeKey,
    /// The ledger whose inputs were executed.
    pub ledger: WireLcl,
    pub state_hash: Hash,
    pub output_hash: Hash,
    pub sig: Sig,
}

impl OutputVote {
    /// Checks the signature.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.node.verifies(&self.output_hash, &self.sig) {
            return Err("bad output vote signature");
        }
        Ok(())
    }
}

/// Most ledgers asked for or sent in one message.
pub const MAX_LEDGERS_PER_MESSAGE: u16 = 32;

/// A closed ledger as a peer can check it without trusting the sender: `threshold` % of
/// the UNL signed stage-3 proposals with one root naming the ledger before it, the state
/// and the inputs (whose users signed them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerProof {
    pub proposals: Vec<Proposal>,
    pub inputs: Vec<RelayedInput>,
}

impl LedgerProof {
    /// Encodes for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a stored proof.
    pub fn from_bytes(bytes: &[u8]) -> Option<LedgerProof> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A closed ledger as a syncing peer gets it: its proof, and the outputs its execution gave
/// each user (checked against the output root the next ledger's proof agreed on; empty when
/// the sender did not execute it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedLedger {
    pub proof: LedgerProof,
    pub outputs: LedgerOutputs,
}

/// Each user's outputs of one ledger (`ed…` key, messages).
pub type LedgerOutputs = Vec<(String, Vec<Vec<u8>>)>;

/// Most pieces asked for in one state request.
pub const MAX_STATE_WANTS: usize = 64;
/// Most block bytes in one state response (and never more than half a frame).
pub const MAX_STATE_RESPONSE_BYTES: usize = 1024 * 1024;
/// Most entries in one directory listing a peer may send.
pub const MAX_DIR_ENTRIES: usize = 100_000;

/// What kind of state piece a hash names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PieceKind {
    /// A directory's listing.
    Dir,
    /// A file's manifest.
    File,
    /// A file block's bytes (or `patch.cfg`'s whole content, hashed the same way).
    Block,
}

/// One piece of state asked for by its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Want {
    pub kind: PieceKind,
    pub hash: Hash,
}

/// A piece of state as a peer sends it; the receiver checks it against the hash it asked
/// for before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    Dir(Vec<crate::state::DirEntry>),
    File(crate::state::FileManifest),
    Block(Vec<u8>),
    /// The peer does not have it (its state moved on).
    Missing,
}

/// Every peer message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    Hello(Hello),
    ChallengeResponse(ChallengeResponse),
    Refuse(Refuse),
    Proposal(Proposal),
    /// Users' inputs, relayed in batches.
    Inputs(Vec<RelayedInput>),
    /// Hashes of inputs a ledger agreed on that the sender lacks; peers answer with
    /// `Inputs` holding those they have.
    InputRequest(Vec<Hash>),
    /// Closed ledgers the sender missed, from `from_seq`, at most `count`.
    LedgerRequest {
        from_seq: u64,
        count: u16,
    },
    /// Closed ledgers, each with what proves it: the agreeing stage-3 proposals and the
    /// inputs as their users signed them.
    Ledgers(Vec<SyncedLedger>),
    Npl(NplMessage),
    OutputVote(OutputVote),
    /// Pieces of a state tree, by hash (state sync).
    StateRequest {
        id: u32,
        wants: Vec<Want>,
    },
    /// The answer to a `StateRequest`, pieces in the order asked (a prefix of them when the
    /// response budget ran out). `busy`: the peer's rate limit refused the request.
    StateResponse {
        id: u32,
        pieces: Vec<(Want, Piece)>,
        busy: bool,
    },
}

impl PeerMsg {
    /// The message's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Hello(_) => "hello",
            PeerMsg::ChallengeResponse(_) => "challenge_response",
            PeerMsg::Refuse(_) => "refuse",
            PeerMsg::Proposal(_) => "proposal",
            PeerMsg::Inputs(_) => "inputs",
            PeerMsg::InputRequest(_) => "input_request",
            PeerMsg::LedgerRequest { .. } => "ledger_request",
            PeerMsg::Ledgers(_) => "ledgers",
            PeerMsg::Npl(_) => "npl",
            PeerMsg::OutputVote(_) => "output_vote",
            PeerMsg::StateRequest { .. } => "state_request",
            PeerMsg::StateResponse { .. } => "state_response",
        }
    }
}

/// The frame: version, then the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Frame {
    version: u16,
    msg: PeerMsg,
}

/// Why a frame was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("peer frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("peer frame is not a valid message: {0}")]
    Malformed(String),
    #[error("peer frame has protocol version {0}, this node speaks {PEER_PROTOCOL_VERSION}")]
    Version(u16),
}

/// Encodes a message into one frame.
pub fn encode(msg: &PeerMsg) -> Vec<u8> {
    let frame = Frame {
        version: PEER_PROTOCOL_VERSION,
        msg: msg.clone(),
    };
    // Serializing these types into a Vec cannot fail.
    postcard::to_allocvec(&frame).unwrap_or_default()
}

/// Decodes one frame of at most `max` bytes.
pub fn decode(bytes: &[u8], max: usize) -> Result<PeerMsg, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    // The version comes first, so a frame of another version is named as such even when its
    // message does not parse.
    let (version, _) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if version != PEER_PROTOCOL_VERSION {
        return Err(DecodeError::Version(version));
    }
    let frame: Frame =
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match &frame.msg {
        PeerMsg::Refuse(r) if r.detail.len() > MAX_DETAIL_LEN => {
            return Err(DecodeError::Malformed("refusal detail too long".into()));
        }
        PeerMsg::LedgerRequest { count, .. } if *count > MAX_LEDGERS_PER_MESSAGE => {
            return Err(DecodeError::Malformed(format!(
                "request for {count} ledgers, more than {MAX_LEDGERS_PER_MESSAGE}"
            )));
        }
        PeerMsg::Ledgers(l) if l.len() > usize::from(MAX_LEDGERS_PER_MESSAGE) => {
            return Err(DecodeError::Malformed(format!(
                "{} ledgers in one message, more than {MAX_LEDGERS_PER_MESSAGE}",
                l.len()
            )));
        }
        PeerMsg::InputRequest(hashes) if hashes.len() > MAX_RELAY_BATCH => {
            return Err(DecodeError::Malformed(format!(
                "request for {} inputs, more than {MAX_RELAY_BATCH}",
                hashes.len()
            )));
        }
        PeerMsg::Inputs(batch) if batch.len() > MAX_RELAY_BATCH => {
            return Err(DecodeError::Malformed(format!(
                "{} relayed inputs in one frame, more than {MAX_RELAY_BATCH}",
                batch.len()
            )));
        }
        PeerMsg::Proposal(p) if p.inputs.len() > MAX_PROPOSAL_INPUTS => {
            return Err(DecodeError::Malformed(format!(
                "proposal with {} inputs, more than {MAX_PROPOSAL_INPUTS}",
                p.inputs.len()
            )));
        }
        PeerMsg::StateRequest { wants, .. } if wants.len() > MAX_STATE_WANTS => {
            return Err(DecodeError::Malformed(format!(
                "state request for {} pieces, more than {MAX_STATE_WANTS}",
                wants.len()
            )));
        }
        PeerMsg::StateResponse { pieces, .. } => {
            if pieces.len() > MAX_STATE_WANTS {
                return Err(DecodeError::Malformed(format!(
                    "state response with {} pieces, more than {MAX_STATE_WANTS}",
                    pieces.len()
                )));
            }
            for (_, piece) in pieces {
                match piece {
                    Piece::Block(b) if b.len() as u64 > crate::state::BLOCK_SIZE => {
                        return Err(DecodeError::Malformed(format!(
                            "state block of {} bytes, more than {}",
                            b.len(),
                            crate::state::BLOCK_SIZE
                        )));
                    }
                    Piece::Dir(e) if e.len() > MAX_DIR_ENTRIES => {
                        return Err(DecodeError::Malformed(format!(
                            "directory listing of {} entries, more than {MAX_DIR_ENTRIES}",
                            e.len()
                        )));
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(frame.msg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn proposal(k: &SigningKey) -> Proposal {
        Proposal {
            node: NodeKey([0; 32]),
            stage: 2,
            time: 1_000,
            lcl: WireLcl {
                seq_no: 4,
                hash: [4; 32],
            },
            state_hash: [1; 32],
            patch_hash: [2; 32],
            output_hash: [3; 32],
            output_sig: Sig([0; 64]),
            install: [0; 32],
            inputs: vec![[5; 32], [6; 32]],
            sig: Sig([0; 64]),
        }
        .sign(k)
    }

    #[test]
    fn frames_round_trip_and_signed_proposals_verify() {
        let p = proposal(&key(1));
        p.check().unwrap();
        let bytes = encode(&PeerMsg::Proposal(p.clone()));
        assert_eq!(decode(&bytes, 1 << 20).unwrap(), PeerMsg::Proposal(p));
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let mut p = proposal(&key(1));
        p.inputs.push([7; 32]);
        assert_eq!(p.check(), Err("bad proposal signature"));
        let mut p = proposal(&key(1));
        p.node = NodeKey::of(&key(2));
        assert_eq!(p.check(), Err("bad proposal signature"));
        let mut p = proposal(&key(1));
        p.stage = 3;
        assert_eq!(p.check(), Err("bad proposal signature"));
    }

    #[test]
    fn bad_frames_are_named() {
        let bytes = encode(&PeerMsg::Proposal(proposal(&key(1))));
        assert!(matches!(
            decode(&bytes, 10),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3], 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(decode(&other, 1 << 20), Err(DecodeError::Version(9)));
        assert!(decode(&[], 10).is_err());
    }

    #[test]
    fn state_sync_messages_over_their_bounds_are_refused_with_the_bound_named() {
        let want = Want {
            kind: PieceKind::Block,
            hash: [1; 32],
        };
        let ok = encode(&PeerMsg::StateRequest {
            id: 1,
            wants: vec![want; MAX_STATE_WANTS],
        });
        assert!(decode(&ok, 1 << 20).is_ok());
        let many = encode(&PeerMsg::StateRequest {
            id: 1,
            wants: vec![want; MAX_STATE_WANTS + 1],
        });
        match decode(&many, 1 << 20) {
            Err(DecodeError::Malformed(why)) => assert!(why.contains("65 pieces"), "{why}"),
            other => panic!("{other:?}"),
        }
        let big = encode(&PeerMsg::StateResponse {
            id: 1,
            pieces: vec![(want, Piece::Block(vec![0; 64 * 1024 + 1]))],
            busy: false,
        });
        match decode(&big, 1 << 20) {
            Err(DecodeError::Malformed(why)) => assert!(why.contains("state block"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn npl_messages_are_bound_to_their_ledger() {
        let lcl = LclId {
            seq_no: 3,
            hash: [3; 32],
        };
        let mut m = NplMessage::new(&key(1), lcl, b"hi".to_vec());
        m.check().unwrap();
        m.lcl.seq_no = 4;
        assert!(m.check().is_err());
    }

    #[test]
    fn the_challenge_answer_is_bound_to_challenge_and_contract() {
        let k = key(1);
        let msg = challenge_message(&[1; 16], "c");
        let sig = Sig::sign(&k, &msg);
        assert!(NodeKey::of(&k).verifies(&msg, &sig));
        assert!(!NodeKey::of(&k).verifies(&challenge_message(&[2; 16], "c"), &sig));
        assert!(!NodeKey::of(&k).verifies(&challenge_message(&[1; 16], "d"), &sig));
    }
}
