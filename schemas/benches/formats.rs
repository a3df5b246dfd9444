//! Throughput of the formats a host handles per ledger: sealing and opening boxes, reading
//! memos and lease URIs. Prints one line per operation. Run: `cargo bench -p berth-schemas`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use berth_schemas::field::{Drops, NfTokenId, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::lease_uri::LeaseUri;
use berth_schemas::memo::Message;
use berth_schemas::message::{AcquireOk, AcquireRequest, InstanceDetails, Sealed};
use berth_schemas::sealed;
use ed25519_dalek::SigningKey;

fn measure(name: &str, mut op: impl FnMut()) {
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < Duration::from_millis(700) {
        op();
        runs += 1;
    }
    let per = start.elapsed() / u32::try_from(runs).unwrap_or(u32::MAX);
    println!(
        "{name:<40} {:>10.1} µs/op {:>10.0} ops/s",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
}

fn main() {
    let secret = SigningKey::from_bytes(&[7; 32]);
    let public = PublicKey::from_verifying_key(&secret.verifying_key()).unwrap();
    let request = AcquireRequest {
        owner_key: public,
        contract_id: "3fa85f64-5717-4562-b3fc-2c963f66afa6".parse().unwrap(),
        reply_key: None,
        config: None,
    };
    let details = InstanceDetails {
        name: "i-3f2a9c".parse().unwrap(),
        host: "host1.example.com".parse().unwrap(),
        user_port: NonZeroU16::new(26201).unwrap(),
        peer_port: NonZeroU16::new(22861).unwrap(),
        node_key: public,
        contract_id: request.contract_id,
        lease: NfTokenId([7; 32]),
        expires_at: 1_790_000_000,
    };
    let plaintext = vec![0x42u8; 300];
    let envelope = sealed::seal(&public, &plaintext).unwrap();
    measure("sealed box: seal 300 bytes", || {
        black_box(sealed::seal(black_box(&public), black_box(&plaintext)).unwrap());
    });
    measure("sealed box: open 300 bytes", || {
        black_box(sealed::open(black_box(&secret), black_box(&envelope)).unwrap());
    });
    let sealed_request = Sealed::seal(&public, &request).unwrap();
    measure("acquire request: open + parse", || {
        black_box(sealed_request.open(black_box(&secret)).unwrap());
    });
    let answer = Message::AcquireOk(AcquireOk {
        request: TxHash([1; 32]),
        sealed: Sealed::seal(&public, &details).unwrap(),
    });
    let memo = answer.to_memo().unwrap();
    measure("acquire-ok: build memo (seal + JSON)", || {
        let message = Message::AcquireOk(AcquireOk {
            request: TxHash([1; 32]),
            sealed: Sealed::seal(&public, &details).unwrap(),
        });
        black_box(message.to_memo().unwrap());
    });
    measure("acquire-ok: parse memo (no open)", || {
        black_box(Message::from_memo(black_box(&memo)).unwrap());
    });
    let uri = LeaseUri {
        slot: 3,
        cpu_millicores: NonZeroU32::new(1000).unwrap(),
        memory_mb: NonZeroU32::new(2048).unwrap(),
        disk_mb: NonZeroU32::new(10240).unwrap(),
        price: Drops::new(1_000_000).unwrap(),
        moment_secs: NonZeroU32::new(3600).unwrap(),
    }
    .to_bytes();
    measure("lease uri: parse", || {
        black_box(LeaseUri::from_bytes(black_box(&uri)).unwrap());
    });
}
