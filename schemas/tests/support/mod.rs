//! Values shared by the integration tests: fixed keys and maximal / typical messages.
#![allow(dead_code, clippy::unwrap_used)]

use std::num::{NonZeroU16, NonZeroU32};

use berth_schemas::field::{ContractId, Drops, NfTokenId, PeerAddress, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::message::{AcquireRequest, ContractConfig, InstanceDetails, Peers, Ranged, Unl};
use ed25519_dalek::SigningKey;

pub fn signing_key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

pub fn public_key(byte: u8) -> PublicKey {
    PublicKey::from_verifying_key(&signing_key(byte).verifying_key()).unwrap()
}

pub fn tx_hash(byte: u8) -> TxHash {
    TxHash([byte; 32])
}

pub fn token_id(byte: u8) -> NfTokenId {
    NfTokenId([byte; 32])
}

pub fn contract_id() -> ContractId {
    "3fa85f64-5717-4562-b3fc-2c963f66afa6".parse().unwrap()
}

pub fn nz(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

pub fn drops(value: u64) -> Drops {
    Drops::new(value).unwrap()
}

/// Text of exactly `len` bytes made of characters JSON must escape (two bytes each on the wire).
pub fn worst_text(len: usize) -> String {
    "\"".repeat(len)
}

pub fn typical_request() -> AcquireRequest {
    AcquireRequest {
        owner_key: public_key(1),
        contract_id: contract_id(),
        reply_key: None,
        config: None,
    }
}

/// The largest request a host accepts: `unl` and `peers` name at most
/// [`ContractConfig::MAX_ENTRIES`] together.
pub fn maximal_request() -> AcquireRequest {
    let keys = ContractConfig::MAX_ENTRIES / 2;
    let unl: Vec<PublicKey> = (0..keys as u8).map(|i| public_key(100 + i)).collect();
    AcquireRequest {
        owner_key: public_key(1),
        contract_id: contract_id(),
        reply_key: Some(public_key(2)),
        config: Some(ContractConfig {
            unl: Some(Unl::try_from(unl).unwrap()),
            roundtime_ms: Some(Ranged::new(3_600_000).unwrap()),
            stage_slice: Some(Ranged::new(33).unwrap()),
            threshold: Some(Ranged::new(100).unwrap()),
            peers: Some(
                Peers::try_from(
                    (0..ContractConfig::MAX_ENTRIES - keys)
                        .map(|i| {
                            format!("{}{i}.example:65535", "p".repeat(PeerAddress::MAX_LEN - 15))
                                .parse()
                                .unwrap()
                        })
                        .collect::<Vec<PeerAddress>>(),
                )
                .unwrap(),
            ),
            observer: true,
            await_cluster: false,
            image: Some(berth_schemas::message::InstanceImage::Minimal),
        }),
    }
}

pub fn typical_details() -> InstanceDetails {
    InstanceDetails {
        name: "i-3f2a9c".parse().unwrap(),
        host: "host1.example.com".parse().unwrap(),
        user_port: NonZeroU16::new(26201).unwrap(),
        peer_port: NonZeroU16::new(22861).unwrap(),
        node_key: public_key(3),
        contract_id: contract_id(),
        lease: token_id(7),
        expires_at: 1_790_000_000,
    }
}

pub fn maximal_details() -> InstanceDetails {
    let label = "a".repeat(63);
    InstanceDetails {
        name: "n".repeat(32).parse().unwrap(),
        host: format!("{label}.{label}.{label}.{}", "b".repeat(61))
            .parse()
            .unwrap(),
        user_port: NonZeroU16::new(65535).unwrap(),
        peer_port: NonZeroU16::new(65535).unwrap(),
        expires_at: u64::MAX,
        ..typical_details()
    }
}

use berth_schemas::memo::Message;
use berth_schemas::message::*;

pub fn failure(code: ReasonCode) -> Failure {
    Failure {
        request: tx_hash(0xAB),
        code,
        message: "no free slot, the price is refunded".parse().unwrap(),
    }
}

pub fn host_info() -> HostInfo {
    HostInfo {
        version: "0.1.0".parse().unwrap(),
        domain: "host1.example.com".parse().unwrap(),
        peer_address: None,
        country: "DE".parse().unwrap(),
        cpu_millicores: nz(8000),
        memory_mb: nz(16384),
        disk_mb: nz(204800),
        slots: nz(8),
        moment_secs: nz(3600),
        price: drops(1_000_000),
        cpu_model: Some("AMD EPYC 7B13".parse().unwrap()),
        description: None,
    }
}

/// One message of every kind, the sealed ones sealed to `public_key(9)` / `public_key(8)`.
pub fn one_of_each() -> Vec<Message> {
    vec![
        Message::Acquire(Acquire {
            sealed: Sealed::seal(&public_key(9), &maximal_request()).unwrap(),
        }),
        Message::AcquireOk(AcquireOk {
            request: tx_hash(1),
            sealed: Sealed::seal(&public_key(8), &typical_details()).unwrap(),
        }),
        Message::AcquireErr(failure(ReasonCode::NoCapacity)),
        Message::Extend(Extend { lease: token_id(7) }),
        Message::ExtendOk(ExtendOk {
            request: tx_hash(2),
            lease: token_id(7),
            moments: nz(3),
            expires_at: 1_790_010_800,
        }),
        Message::ExtendErr(failure(ReasonCode::UnknownLease)),
        Message::Terminate(Terminate { lease: token_id(7) }),
        Message::TerminateOk(TerminateOk {
            request: tx_hash(3),
            lease: token_id(7),
        }),
        Message::TerminateErr(failure(ReasonCode::NotLeaseOwner)),
        Message::Refund(failure(ReasonCode::InstanceLost)),
        Message::HostReg(host_info()),
        Message::HostDereg(HostDereg {}),
        Message::Heartbeat(Heartbeat { free_slots: 3 }),
    ]
}
