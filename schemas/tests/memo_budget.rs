//! Every valid message, even at the largest its fields allow, fits the ledger's memo budget.
#![allow(clippy::unwrap_used)]

mod support;

use berth_schemas::field::{PeerHost, TxHash};
use berth_schemas::memo::{Message, MEMOS_LIMIT};
use berth_schemas::message::*;
use support::*;

fn size(message: &Message) -> usize {
    let memo = message.to_memo().unwrap_or_else(|e| panic!("{e}"));
    memo.serialized_len()
}

#[test]
fn maximal_messages_fit_the_ledger_memo_budget() {
    let failure = Failure {
        request: TxHash([0xFF; 32]),
        code: ReasonCode::ProvisioningFailed,
        message: worst_text(256).parse().unwrap(),
    };
    let host = HostInfo {
        version: worst_text(32).parse().unwrap(),
        domain: maximal_details().host,
        peer_address: Some(
            format!("{}.{}", "p".repeat(20), "q".repeat(PeerHost::MAX_LEN - 21))
                .parse()
                .unwrap(),
        ),
        country: "DE".parse().unwrap(),
        cpu_millicores: nz(u32::MAX),
        memory_mb: nz(u32::MAX),
        disk_mb: nz(u32::MAX),
        slots: nz(u32::MAX),
        moment_secs: nz(u32::MAX),
        price: drops(berth_schemas::field::MAX_DROPS),
        cpu_model: Some(worst_text(64).parse().unwrap()),
        description: Some(worst_text(128).parse().unwrap()),
    };
    let messages = [
        Message::Acquire(Acquire {
            sealed: Sealed::seal(&public_key(9), &maximal_request()).unwrap(),
        }),
        Message::AcquireOk(AcquireOk {
            request: tx_hash(1),
            sealed: Sealed::seal(&public_key(9), &maximal_details()).unwrap(),
        }),
        Message::AcquireErr(failure.clone()),
        Message::Refund(failure),
        Message::ExtendOk(ExtendOk {
            request: tx_hash(1),
            lease: token_id(2),
            moments: nz(u32::MAX),
            expires_at: u64::MAX,
        }),
        Message::HostReg(host),
        Message::Heartbeat(Heartbeat {
            free_slots: u32::MAX,
        }),
    ];
    for message in &messages {
        let size = size(message);
        println!("{}: {size} of {MEMOS_LIMIT} bytes", message.kind());
        assert!(size <= MEMOS_LIMIT, "{}: {size}", message.kind());
    }
}
