//! The typed payloads of Berth's messages, as carried in memos (see [`crate::memo`]).
//!
//! Every payload is a JSON object with `"v": 1` (see [`crate::payload`]). Secrets travel only
//! inside a [`Sealed`] member, encrypted to the recipient; everything else is public on the
//! ledger. Every answer names, in `request`, the hash of the transaction it answers.

use std::fmt;
use std::marker::PhantomData;
use std::num::{NonZeroU16, NonZeroU32};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::field::{
    ContractId, CountryCode, Drops, HostAddress, InstanceName, NfTokenId, PeerAddress, PeerHost,
    Text, TxHash,
};
use crate::key::PublicKey;
use crate::payload::{self, PayloadError};
use crate::sealed::{self, SealError};

/// A payload that travels sealed inside a memo; `FORMAT` names it in errors and the README.
pub trait SealedPayload: Serialize + DeserializeOwned {
    const FORMAT: &'static str;
}

/// Why a sealed payload could not be opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpenError {
    #[error("{format}: {error}")]
    Seal {
        format: &'static str,
        error: SealError,
    },
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// A payload of type `T` sealed to one recipient; in JSON, the envelope in standard base64
/// (RFC 4648 §4, with padding).
pub struct Sealed<T> {
    envelope: Vec<u8>,
    payload: PhantomData<fn() -> T>,
}

impl<T: SealedPayload> Sealed<T> {
    /// Seals `value` (as its JSON payload) to the holder of `recipient`'s secret.
    pub fn seal(recipient: &PublicKey, value: &T) -> Result<Self, SealError> {
        sealed::seal(recipient, &payload::encode(value)).map(Self::from_envelope)
    }

    /// Opens and parses the payload with the recipient's ed25519 secret.
    pub fn open(&self, recipient: &SigningKey) -> Result<T, OpenError> {
        let plaintext =
            sealed::open(recipient, &self.envelope).map_err(|error| OpenError::Seal {
                format: T::FORMAT,
                error,
            })?;
        Ok(payload::decode(T::FORMAT, &plaintext)?)
    }
}

impl<T> Sealed<T> {
    pub fn from_envelope(envelope: Vec<u8>) -> Self {
        Self {
            envelope,
            payload: PhantomData,
        }
    }

    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
}

impl<T> Clone for Sealed<T> {
    fn clone(&self) -> Self {
        Self::from_envelope(self.envelope.clone())
    }
}

impl<T> PartialEq for Sealed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.envelope == other.envelope
    }
}

impl<T> Eq for Sealed<T> {}

impl<T> fmt::Debug for Sealed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.envelope.len())
    }
}

impl<T> Serialize for Sealed<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(&self.envelope))
    }
}

impl<'de, T> Deserialize<'de> for Sealed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let envelope = BASE64.decode(text.as_bytes()).map_err(|e| {
            serde::de::Error::custom(format!("sealed box: not standard base64: {e}"))
        })?;
        if envelope.len() < sealed::OVERHEAD {
            return Err(serde::de::Error::custom(SealError::Truncated {
                len: envelope.len(),
            }));
        }
        Ok(Self::from_envelope(envelope))
    }
}

/// Optional settings of the instance's HotPocket contract, applied over the host's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    /// The UNL: public keys of the nodes of the cluster (at most 4, so that the request fits one memo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unl: Option<Unl>,
    /// Consensus round time in milliseconds, 1 to 3 600 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roundtime_ms: Option<Ranged<1, 3_600_000>>,
    /// Percentage of the round time given to each of stages 1 to 3, 1 to 33.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_slice: Option<Ranged<1, 33>>,
    /// Consensus threshold in percent, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Ranged<1, 100>>,
    /// Peer ports of the cluster's other nodes, to dial (at most [`Peers::MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Peers>,
    /// The node joins as an observer: its own key is not in the UNL; it follows the cluster
    /// until a change of the UNL (through consensus) adds it. Needs `unl` or `await_cluster`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observer: bool,
    /// The node closes no ledger until its owner names its cluster (UNL and peers) over the
    /// user port. How a tenant wires nodes whose keys it learns only from their hosts'
    /// answers. Excludes `unl` and `peers`, which the owner's request then gives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub await_cluster: bool,
    /// The instance image to run the contract in; the host's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<InstanceImage>,
}

/// The instance images a tenant may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceImage {
    /// The host's default image (the minimal one unless the host says otherwise): static
    /// binaries only.
    Minimal,
    /// Node.js and glibc (`berth-hotpocket-node`): Evernode's usual Node.js bundles and
    /// dynamically linked binaries.
    Node,
}

impl InstanceImage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Node => "node",
        }
    }
}

impl std::str::FromStr for InstanceImage {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "minimal" => Ok(Self::Minimal),
            "node" => Ok(Self::Node),
            other => Err(format!(
                "`{other}` is not an instance image: minimal or node"
            )),
        }
    }
}

impl ContractConfig {
    /// `unl` and `peers` together name at most this many entries, so that a request fits
    /// one memo.
    pub const MAX_ENTRIES: usize = 4;

    /// True when the request asks for anything but the host's defaults.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Settings that contradict each other; the host refuses the purchase with this reason.
    pub fn conflict(&self) -> Option<&'static str> {
        if self.await_cluster && (self.unl.is_some() || self.peers.is_some()) {
            return Some("await_cluster excludes unl and peers: the owner names the cluster later");
        }
        if self.observer && self.unl.is_none() && !self.await_cluster {
            return Some("an observer needs the unl it follows (or await_cluster)");
        }
        let entries = self.unl.as_ref().map_or(0, |u| u.keys().len())
            + self.peers.as_ref().map_or(0, |p| p.addresses().len());
        if entries > Self::MAX_ENTRIES {
            return Some("unl and peers name more than 4 entries together; use await_cluster and the owner's cluster request for larger clusters");
        }
        None
    }
}

/// At most [`Peers::MAX`] peer addresses, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<PeerAddress>", into = "Vec<PeerAddress>")]
pub struct Peers(Vec<PeerAddress>);

impl Peers {
    pub const MAX: usize = 4;

    pub fn addresses(&self) -> &[PeerAddress] {
        &self.0
    }
}

impl TryFrom<Vec<PeerAddress>> for Peers {
    type Error = String;
    fn try_from(peers: Vec<PeerAddress>) -> Result<Self, String> {
        if peers.is_empty() || peers.len() > Self::MAX {
            return Err(format!(
                "expected 1 to {} peer addresses, got {}",
                Self::MAX,
                peers.len()
            ));
        }
        if let Some((i, peer)) = peers
            .iter()
            .enumerate()
            .find(|(i, peer)| peers[..*i].contains(peer))
        {
            return Err(format!("peer {peer} is repeated at position {i}"));
        }
        Ok(Self(peers))
    }
}

impl From<Peers> for Vec<PeerAddress> {
    fn from(peers: Peers) -> Self {
        peers.0
    }
}

/// At most [`Unl::MAX`] node keys, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<PublicKey>", into = "Vec<PublicKey>")]
pub struct Unl(Vec<PublicKey>);

impl Unl {
    pub const MAX: usize = 4;

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }
}

impl TryFrom<Vec<PublicKey>> for Unl {
    type Error = String;
    fn try_from(keys: Vec<PublicKey>) -> Result<Self, String> {
        if keys.is_empty() || keys.len() > Self::MAX {
            return Err(format!(
                "expected 1 to {} keys, got {}",
                Self::MAX,
                keys.len()
            ));
        }
        if let Some((i, key)) = keys
            .iter()
            .enumerate()
            .find(|(i, key)| keys[..*i].contains(key))
        {
            return Err(format!("key {key} is repeated at position {i}"));
        }
        Ok(Self(keys))
    }
}

impl From<Unl> for Vec<PublicKey> {
    fn from(unl: Unl) -> Self {
        unl.0
    }
}

/// An integer known to lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Ranged<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Ranged<MIN, MAX> {
    pub fn new(value: u64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be between {MIN} and {MAX}, got {value}"))
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> TryFrom<u64> for Ranged<MIN, MAX> {
    type Error = String;
    fn try_from(value: u64) -> Result<Self, String> {
        Self::new(value)
    }
}

impl<const MIN: u64, const MAX: u64> From<Ranged<MIN, MAX>> for u64 {
    fn from(value: Ranged<MIN, MAX>) -> u64 {
        value.0
    }
}

/// What a tenant asks for when it buys a lease: sealed to the host's `MessageKey`, carried by
/// the `NFTokenAcceptOffer` transaction in a `berth/acquire` memo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// The HotPocket user key that will own the instance (the only user its bootstrap accepts).
    pub owner_key: PublicKey,
    /// The HotPocket contract id of the instance.
    pub contract_id: ContractId,
    /// The key the answer is sealed to; when absent, the `MessageKey` of the buyer's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_key: Option<PublicKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContractConfig>,
}

impl SealedPayload for AcquireRequest {
    const FORMAT: &'static str = "acquire request";
}

/// Where and how the tenant reaches its new instance: sealed to the tenant, in `berth/acquire-ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceDetails {
    pub name: InstanceName,
    /// DNS name or IP address of the host.
    pub host: HostAddress,
    /// Port of HotPocket's user protocol (WebSocket over TLS).
    pub user_port: NonZeroU16,
    /// Port of the node's peer protocol.
    pub peer_port: NonZeroU16,
    /// The instance node's public key.
    pub node_key: PublicKey,
    pub contract_id: ContractId,
    /// The lease token the instance belongs to.
    pub lease: NfTokenId,
    /// When the lease ends, in Unix seconds (derived from ledger close times).
    pub expires_at: u64,
}

impl SealedPayload for InstanceDetails {
    const FORMAT: &'static str = "instance details";
}

/// `berth/acquire`: the sealed [`AcquireRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acquire {
    pub sealed: Sealed<AcquireRequest>,
}

/// `berth/acquire-ok`: the sealed [`InstanceDetails`], naming the purchase it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireOk {
    pub request: TxHash,
    pub sealed: Sealed<InstanceDetails>,
}

/// Why a request was refused or refunded. Version 1 defines exactly these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The memo was missing, malformed, or could not be opened.
    BadPayload,
    /// The payload's format version is not one the host reads.
    UnsupportedVersion,
    /// The amount paid does not match the price.
    BadAmount,
    /// No free slot (or no free ports) to serve the request.
    NoCapacity,
    /// The host is draining and takes no new leases.
    Draining,
    /// The named lease token is not one of the host's live leases.
    UnknownLease,
    /// The sender does not hold the named lease token.
    NotLeaseOwner,
    /// The lease had already expired.
    LeaseExpired,
    /// The instance could not be created or did not become healthy.
    ProvisioningFailed,
    /// A lease lost its instance and was ended by the host.
    InstanceLost,
    /// An unexpected fault on the host.
    Internal,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 11] = [
        Self::BadPayload,
        Self::UnsupportedVersion,
        Self::BadAmount,
        Self::NoCapacity,
        Self::Draining,
        Self::UnknownLease,
        Self::NotLeaseOwner,
        Self::LeaseExpired,
        Self::ProvisioningFailed,
        Self::InstanceLost,
        Self::Internal,
    ];
}

/// `berth/acquire-err`, `berth/extend-err`, `berth/terminate-err`, `berth/refund`: a refusal
/// (or refund) of the named request, public, without secrets. The transaction carrying it
/// pays back what the host returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub request: TxHash,
    pub code: ReasonCode,
    /// A sentence for people, at most 256 bytes.
    pub message: Text<256>,
}

/// `berth/extend`: the payment of this transaction buys more moments of the named lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    pub lease: NfTokenId,
}

/// `berth/extend-ok`: the lease now ends at `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendOk {
    pub request: TxHash,
    pub lease: NfTokenId,
    /// Moments added by this extension: floor(amount paid / price per moment).
    pub moments: NonZeroU32,
    /// The new end of the lease, Unix seconds.
    pub expires_at: u64,
}

/// `berth/terminate`: end the named lease now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terminate {
    pub lease: NfTokenId,
}

/// `berth/terminate-ok`: the lease is ended and its instance destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateOk {
    pub request: TxHash,
    pub lease: NfTokenId,
}

/// `berth/host-reg`: a host announces itself to the registry account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    /// Version of the host's `berth-agent`.
    pub version: Text<32>,
    pub domain: HostAddress,
    /// Where instances' peer ports are reached, when not at `domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<PeerHost>,
    pub country: CountryCode,
    /// Totals the host gives to instances.
    pub cpu_millicores: NonZeroU32,
    pub memory_mb: NonZeroU32,
    pub disk_mb: NonZeroU32,
    /// Number of instance slots (lease tokens).
    pub slots: NonZeroU32,
    pub moment_secs: NonZeroU32,
    /// Price of one moment of one slot.
    pub price: Drops,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<Text<64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text<128>>,
}

/// `berth/heartbeat`: the host is alive; sent to the registry once per moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Slots with a live sell offer.
    pub free_slots: u32,
}

/// `berth/host-dereg`: the host leaves the registry; it takes no new leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDereg {}
