//! Memos: every message kind round-trips, errors name the memo type and the field.
#![allow(clippy::unwrap_used)]

mod support;

use berth_schemas::memo::{Memo, MemoError, MemoKind, Message, MEMO_FORMAT};
use berth_schemas::message::{OpenError, ReasonCode};
use berth_schemas::payload::PayloadError;
use berth_schemas::sealed::SealError;
use proptest::prelude::*;
use support::*;

#[test]
fn every_kind_round_trips_through_bytes_and_hex() {
    let messages = one_of_each();
    let kinds: Vec<MemoKind> = messages.iter().map(Message::kind).collect();
    assert_eq!(kinds, MemoKind::ALL, "one message of each kind, in order");
    for message in messages {
        let memo = message.to_memo().unwrap();
        assert_eq!(memo.memo_type, message.kind().as_str().as_bytes());
        assert_eq!(memo.memo_format, MEMO_FORMAT.as_bytes());
        assert_eq!(Message::from_memo(&memo).unwrap(), message);
        let hex = memo.to_hex();
        let back = Memo::from_hex(
            Some(&hex.memo_type),
            Some(&hex.memo_format),
            Some(&hex.memo_data),
        )
        .unwrap();
        assert_eq!(Message::from_memo(&back).unwrap(), message);
        assert_eq!(
            message.kind().as_str().parse::<MemoKind>().unwrap(),
            message.kind()
        );
    }
}

#[test]
fn answers_name_their_request() {
    for message in one_of_each() {
        let is_answer = matches!(
            message.kind(),
            MemoKind::AcquireOk
                | MemoKind::AcquireErr
                | MemoKind::ExtendOk
                | MemoKind::ExtendErr
                | MemoKind::TerminateOk
                | MemoKind::TerminateErr
                | MemoKind::Refund
        );
        assert_eq!(message.answers().is_some(), is_answer, "{}", message.kind());
    }
}

#[test]
fn sealed_payloads_open_for_their_recipient_only() {
    let messages = one_of_each();
    let Message::Acquire(acquire) = &messages[0] else {
        panic!("acquire first")
    };
    assert_eq!(
        acquire.sealed.open(&signing_key(9)).unwrap(),
        maximal_request()
    );
    let Message::AcquireOk(ok) = &messages[1] else {
        panic!("acquire-ok second")
    };
    assert_eq!(ok.sealed.open(&signing_key(8)).unwrap(), typical_details());
    assert_eq!(
        ok.sealed.open(&signing_key(9)),
        Err(OpenError::Seal {
            format: "instance details",
            error: SealError::Decrypt
        })
    );
}

#[test]
fn payload_json_is_what_the_readme_shows() {
    let payload = Message::Extend(berth_schemas::message::Extend {
        lease: token_id(0x0A),
    })
    .payload();
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        format!("{{\"lease\":\"{}\",\"v\":1}}", "0A".repeat(32))
    );
    let heartbeat =
        Message::Heartbeat(berth_schemas::message::Heartbeat { free_slots: 3 }).payload();
    assert_eq!(heartbeat, br#"{"free_slots":3,"v":1}"#);
}

fn memo(kind: &str, data: &str) -> Memo {
    Memo {
        memo_type: kind.as_bytes().to_vec(),
        memo_format: MEMO_FORMAT.as_bytes().to_vec(),
        memo_data: data.as_bytes().to_vec(),
    }
}

fn field_error(kind: &str, data: &str) -> (String, String) {
    match Message::from_memo(&memo(kind, data)) {
        Err(MemoError::Payload(PayloadError::Field {
            format,
            field,
            problem,
        })) => {
            assert_eq!(format, kind);
            (field, problem)
        }
        other => panic!("{kind} {data}: expected a field error, got {other:?}"),
    }
}

#[test]
fn bad_fields_are_named_with_the_memo_type() {
    let lease = "AB".repeat(32);
    let hash = "CD".repeat(32);
    let cases = [
        (
            "berth/extend",
            r#"{"v":1}"#.to_owned(),
            "lease",
            "missing field",
        ),
        (
            "berth/extend",
            r#"{"v":1,"lease":"ABCD"}"#.to_owned(),
            "lease",
            "expected 64 hex digits",
        ),
        (
            "berth/extend",
            format!(r#"{{"v":1,"lease":"{lease}","extra":true}}"#),
            "extra",
            "unknown field",
        ),
        (
            "berth/extend-ok",
            format!(r#"{{"v":1,"request":"{hash}","lease":"{lease}","moments":0,"expires_at":5}}"#),
            "moments",
            "nonzero",
        ),
        (
            "berth/acquire-err",
            format!(r#"{{"v":1,"request":"{hash}","code":"nope","message":"x"}}"#),
            "code",
            "unknown variant",
        ),
        (
            "berth/refund",
            format!(
                r#"{{"v":1,"request":"{hash}","code":"internal","message":"{}"}}"#,
                "x".repeat(257)
            ),
            "message",
            "at most 256 bytes",
        ),
        (
            "berth/host-reg",
            r#"{"v":1,"version":"1","domain":"-bad-","country":"DE"}"#.to_owned(),
            "domain",
            "host address",
        ),
        (
            "berth/heartbeat",
            r#"{"v":1,"free_slots":-1}"#.to_owned(),
            "free_slots",
            "invalid value",
        ),
        (
            "berth/acquire",
            r#"{"v":1,"sealed":"AAAA"}"#.to_owned(),
            "sealed",
            "shorter than the minimum",
        ),
        (
            "berth/acquire",
            r#"{"v":1,"sealed":"!!"}"#.to_owned(),
            "sealed",
            "base64",
        ),
    ];
    for (kind, data, field, problem) in cases {
        let (named, said) = field_error(kind, &data);
        assert_eq!(named, field, "{kind} {data}: {said}");
        assert!(said.contains(problem), "{kind} {data}: {said}");
        let message = Message::from_memo(&memo(kind, &data))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&format!("{kind}: field `{field}`: ")),
            "{message}"
        );
    }
}

#[test]
fn nested_fields_of_sealed_payloads_are_named() {
    let request =
        br#"{"v":1,"owner_key":"ed0000","contract_id":"3fa85f64-5717-4562-b3fc-2c963f66afa6"}"#;
    let envelope = berth_schemas::sealed::seal(&public_key(9), request).unwrap();
    let acquire = berth_schemas::message::Acquire {
        sealed: berth_schemas::message::Sealed::from_envelope(envelope),
    };
    let error = acquire.sealed.open(&signing_key(9)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("acquire request: field `owner_key`: ed25519 public key"),
        "{error}"
    );

    let config = format!(
        r#"{{"v":1,"owner_key":"{}","contract_id":"3fa85f64-5717-4562-b3fc-2c963f66afa6","config":{{"roundtime_ms":0}}}}"#,
        public_key(1)
    );
    let envelope = berth_schemas::sealed::seal(&public_key(9), config.as_bytes()).unwrap();
    let sealed =
        berth_schemas::message::Sealed::<berth_schemas::message::AcquireRequest>::from_envelope(
            envelope,
        );
    let error = sealed.open(&signing_key(9)).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "acquire request: field `config.roundtime_ms`: must be between 1 and 3600000"
        ),
        "{error}"
    );
}

#[test]
fn version_and_shape_errors_are_named() {
    let error =
        Message::from_memo(&memo("berth/heartbeat", r#"{"v":2,"free_slots":1}"#)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "berth/heartbeat: field `v`: unsupported version 2, this build reads version 1"
    );
    let (field, _) = field_error("berth/heartbeat", r#"{"free_slots":1}"#);
    assert_eq!(field, "v");
    let error = Message::from_memo(&memo("berth/heartbeat", "[1]")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "berth/heartbeat: not a JSON object: found an array"
    );
    let error = Message::from_memo(&memo("berth/heartbeat", "{")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("berth/heartbeat: not a JSON object: EOF"),
        "{error}"
    );
}

#[test]
fn memo_level_errors_are_named() {
    assert_eq!(
        Message::from_memo(&memo("text/plain", "{}")),
        Err(MemoError::NotBerth {
            memo_type: "text/plain".to_owned()
        })
    );
    assert_eq!(
        Message::from_memo(&memo("berth/dance", "{}")),
        Err(MemoError::UnknownType {
            memo_type: "berth/dance".to_owned()
        })
    );
    let mut wrong_format = memo("berth/heartbeat", r#"{"v":1,"free_slots":1}"#);
    wrong_format.memo_format = b"text/plain".to_vec();
    assert_eq!(
        Message::from_memo(&wrong_format).unwrap_err().to_string(),
        "berth/heartbeat: MemoFormat \"text/plain\" is not \"application/json\""
    );
    assert_eq!(
        Memo::from_hex(Some("6265"), None, Some("XYZ")),
        Err(MemoError::Hex { field: "MemoData" })
    );
}

#[test]
fn the_berth_memo_is_found_among_foreign_ones() {
    let foreign = Memo {
        memo_type: b"text/plain".to_vec(),
        memo_format: Vec::new(),
        memo_data: b"hi".to_vec(),
    };
    let heartbeat = memo("berth/heartbeat", r#"{"v":1,"free_slots":2}"#);
    let found = Message::from_memos(&[foreign.clone(), heartbeat])
        .unwrap()
        .unwrap();
    assert_eq!(
        found,
        Message::Heartbeat(berth_schemas::message::Heartbeat { free_slots: 2 })
    );
    assert!(Message::from_memos(&[foreign]).is_none());
    assert!(Message::from_memos(&[]).is_none());
    let broken = memo("berth/heartbeat", "{}");
    assert!(matches!(
        Message::from_memos(&[broken]),
        Some(Err(MemoError::Payload(_)))
    ));
}

#[test]
fn a_memo_over_the_budget_is_refused_with_its_size() {
    let huge = berth_schemas::message::Sealed::from_envelope(vec![7u8; 900]);
    let message = Message::Acquire(berth_schemas::message::Acquire { sealed: huge });
    match message.to_memo() {
        Err(MemoError::TooLarge {
            kind: MemoKind::Acquire,
            size,
        }) => assert!(size > 1024),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn serialized_length_counts_what_rippled_counts() {
    // One memo with only MemoData of 1019 bytes is exactly 1024 bytes: object header, field id,
    // two-byte length, data, end marker.
    let memo = Memo {
        memo_data: vec![0; 1019],
        ..Memo::default()
    };
    assert_eq!(memo.serialized_len(), 1024);
    let small = Memo {
        memo_type: b"berth/heartbeat".to_vec(),
        memo_format: b"application/json".to_vec(),
        memo_data: vec![0; 192],
    };
    assert_eq!(
        small.serialized_len(),
        1 + (1 + 1 + 15) + (1 + 1 + 16) + (1 + 1 + 192) + 1
    );
}

#[test]
fn every_reason_code_round_trips() {
    for code in ReasonCode::ALL {
        let message = Message::Refund(failure(code));
        assert_eq!(
            Message::from_memo(&message.to_memo().unwrap()).unwrap(),
            message
        );
    }
}

proptest! {
    #[test]
    fn from_memo_never_panics_on_arbitrary_bytes(
        kind in prop::sample::select(MemoKind::ALL.to_vec()),
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let memo = Memo { memo_type: kind.as_str().as_bytes().to_vec(), memo_format: MEMO_FORMAT.as_bytes().to_vec(), memo_data: data };
        let _ = Message::from_memo(&memo);
    }

    #[test]
    fn from_memo_never_panics_on_json_like_text(
        kind in prop::sample::select(MemoKind::ALL.to_vec()),
        data in r#"\{"v":1(,"[a-z_]{1,12}":("[0-9A-Fa-f:.\-]{0,70}"|[0-9-]{1,22}|null|\[\]|\{\}))*\}"#,
    ) {
        let _ = Message::from_memo(&memo(kind.as_str(), &data));
    }

    #[test]
    fn failures_round_trip(code in prop::sample::select(ReasonCode::ALL.to_vec()), text in "\\PC{0,60}", hash in any::<[u8; 32]>()) {
        let message = Message::AcquireErr(berth_schemas::message::Failure {
            request: berth_schemas::field::TxHash(hash),
            code,
            message: text.parse().unwrap(),
        });
        prop_assert_eq!(Message::from_memo(&message.to_memo().unwrap()).unwrap(), message);
    }
}
