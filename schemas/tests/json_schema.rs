//! The JSON Schema files in `schemas/json/` agree with the Rust types: every payload the
//! types write validates, every README example validates and parses, and payloads the types
//! reject are rejected by the schemas too.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use berth_schemas::checkpoint::Checkpoint;
use berth_schemas::memo::{Memo, MemoKind, Message, MEMO_FORMAT};
use berth_schemas::message::{AcquireRequest, ExtendOk, Failure, InstanceDetails, ReasonCode};
use berth_schemas::payload;
use proptest::prelude::*;
use serde_json::Value;
use support::*;

/// The schema file (stem) of each memo kind's payload.
fn schema_name(kind: MemoKind) -> &'static str {
    match kind {
        MemoKind::AcquireErr | MemoKind::ExtendErr | MemoKind::TerminateErr | MemoKind::Refund => {
            "failure"
        }
        other => other.as_str().trim_start_matches("berth/"),
    }
}

fn validator(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("json")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(name: &str, payload: &[u8]) {
    let instance: Value = serde_json::from_slice(payload).unwrap();
    let validator = validator(name);
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: {instance} fails its schema: {errors:?}"
    );
}

#[test]
fn every_schema_file_is_used_and_every_kind_has_one() {
    let mut used: Vec<&str> = MemoKind::ALL
        .iter()
        .map(|&kind| schema_name(kind))
        .collect();
    used.extend(["acquire-request", "instance-details", "checkpoint"]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let stem = file
            .strip_suffix(".schema.json")
            .unwrap_or_else(|| panic!("unexpected file {file}"));
        assert!(used.contains(&stem), "{file} belongs to no format");
    }
    for name in used {
        validator(name);
    }
}

#[test]
fn payloads_written_by_the_types_validate() {
    for message in one_of_each() {
        assert_valid(schema_name(message.kind()), &message.payload());
    }
    assert_valid("acquire-request", &payload::encode(&typical_request()));
    assert_valid("acquire-request", &payload::encode(&maximal_request()));
    assert_valid("instance-details", &payload::encode(&typical_details()));
    assert_valid("instance-details", &payload::encode(&maximal_details()));
    let checkpoint = Checkpoint {
        contract: "3c349abe-4d70-4f50-9fa6-018f1f2530ab".into(),
        seq: u64::MAX,
        ledger: [0xab; 32],
        state: [1; 32],
        bundle: [0; 32],
    };
    assert_valid("checkpoint", &checkpoint.to_memo().memo_data);
}

/// Parses an example with the Rust types: the memo kinds through a memo, the sealed
/// payloads directly.
fn parse_with_types(name: &str, json: &str) -> Result<(), String> {
    match name {
        "acquire-request" => {
            payload::decode::<AcquireRequest>("acquire request", json.as_bytes()).map(drop)
        }
        "instance-details" => {
            payload::decode::<InstanceDetails>("instance details", json.as_bytes()).map(drop)
        }
        "checkpoint" => {
            let mut memo = Checkpoint {
                contract: "c".into(),
                seq: 0,
                ledger: [0; 32],
                state: [0; 32],
                bundle: [0; 32],
            }
            .to_memo();
            memo.memo_data = json.as_bytes().to_vec();
            return Checkpoint::from_memo(&memo)
                .map(drop)
                .map_err(|e| e.to_string());
        }
        kind => {
            let memo = Memo {
                memo_type: kind.as_bytes().to_vec(),
                memo_format: MEMO_FORMAT.as_bytes().to_vec(),
                memo_data: json.as_bytes().to_vec(),
            };
            return Message::from_memo(&memo)
                .map(drop)
                .map_err(|e| e.to_string());
        }
    }
    .map_err(|e| e.to_string())
}

/// Each `<!-- example: NAME -->` line in README.md, followed by a fenced JSON block.
fn readme_examples() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let mut examples = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```json"),
            "example {name}: a ```json block must follow"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|line| *line != "```").collect();
        examples.push((name.to_owned(), body.join("\n")));
    }
    examples
}

#[test]
fn readme_examples_validate_and_parse() {
    let examples = readme_examples();
    let names: Vec<&str> = examples.iter().map(|(name, _)| name.as_str()).collect();
    for kind in MemoKind::ALL {
        assert!(
            names.contains(&kind.as_str()),
            "README has no example of {kind}"
        );
    }
    for (name, json) in &examples {
        let schema = name.parse::<MemoKind>().map(schema_name).unwrap_or(name);
        assert_valid(schema, json.as_bytes());
        parse_with_types(name, json).unwrap_or_else(|e| panic!("README example {name}: {e}"));
    }
}

#[test]
fn readme_sealed_examples_open_with_the_test_vector_key() {
    let examples = readme_examples();
    let find = |kind: &str| {
        let (_, json) = examples.iter().find(|(name, _)| name == kind).unwrap();
        let memo = Memo {
            memo_type: kind.as_bytes().to_vec(),
            memo_format: MEMO_FORMAT.as_bytes().to_vec(),
            memo_data: json.as_bytes().to_vec(),
        };
        Message::from_memo(&memo).unwrap()
    };
    let Message::Acquire(acquire) = find("berth/acquire") else {
        panic!("berth/acquire example")
    };
    assert_eq!(
        acquire.sealed.open(&signing_key(0x11)).unwrap(),
        typical_request()
    );
    let Message::AcquireOk(ok) = find("berth/acquire-ok") else {
        panic!("berth/acquire-ok example")
    };
    assert_eq!(
        ok.sealed.open(&signing_key(0x11)).unwrap(),
        typical_details()
    );
}

#[test]
fn payloads_the_types_reject_fail_their_schema_too() {
    let hash = "CD".repeat(32);
    let lease = "AB".repeat(32);
    let key = public_key(1).to_string();
    let cases = [
        ("berth/extend", r#"{"v":1}"#.to_owned()),
        ("berth/extend", r#"{"v":2,"lease":"00"}"#.to_owned()),
        ("berth/extend", format!(r#"{{"v":1,"lease":"{lease}","more":1}}"#)),
        ("berth/extend-ok", format!(r#"{{"v":1,"request":"{hash}","lease":"{lease}","moments":0,"expires_at":1}}"#)),
        ("berth/refund", format!(r#"{{"v":1,"request":"{hash}","code":"oops","message":""}}"#)),
        ("berth/refund", format!(r#"{{"v":1,"request":"{hash}","code":"internal","message":"a\u0007b"}}"#)),
        ("berth/heartbeat", r#"{"v":1,"free_slots":-1}"#.to_owned()),
        ("berth/host-reg", r#"{"v":1,"version":"1","domain":"h","country":"de","cpu_millicores":1,"memory_mb":1,"disk_mb":1,"slots":1,"moment_secs":1,"price":"1"}"#.to_owned()),
        ("berth/host-reg", r#"{"v":1,"version":"1","domain":"h","country":"DE","cpu_millicores":1,"memory_mb":1,"disk_mb":1,"slots":1,"moment_secs":1,"price":"01"}"#.to_owned()),
        ("berth/acquire", r#"{"v":1,"sealed":"AAAA"}"#.to_owned()),
        ("acquire-request", format!(r#"{{"v":1,"owner_key":"{key}","contract_id":"not-a-uuid"}}"#)),
        ("acquire-request", format!(r#"{{"v":1,"owner_key":"{key}","contract_id":"3fa85f64-5717-4562-b3fc-2c963f66afa6","config":{{"unl":["{key}","{key}"]}}}}"#)),
        ("acquire-request", format!(r#"{{"v":1,"owner_key":"{key}","contract_id":"3fa85f64-5717-4562-b3fc-2c963f66afa6","config":{{"threshold":101}}}}"#)),
        ("instance-details", r#"{"v":1,"name":"Upper"}"#.to_owned()),
    ];
    for (name, json) in cases {
        assert!(
            parse_with_types(name, &json).is_err(),
            "types accept {name} {json}"
        );
        let schema = name.parse::<MemoKind>().map(schema_name).unwrap_or(name);
        let instance: Value = serde_json::from_str(&json).unwrap();
        assert!(
            !validator(schema).is_valid(&instance),
            "schema {schema} accepts {json}"
        );
    }
}

proptest! {
    #[test]
    fn generated_failures_validate(code in prop::sample::select(ReasonCode::ALL.to_vec()), text in "\\PC{0,80}", hash in any::<[u8; 32]>()) {
        let failure = Failure { request: berth_schemas::field::TxHash(hash), code, message: text.parse().unwrap() };
        assert_valid("failure", &Message::Refund(failure).payload());
    }

    #[test]
    fn generated_extensions_validate(moments in 1u32.., expires_at in any::<u64>(), lease in any::<[u8; 32]>()) {
        let ok = ExtendOk { request: tx_hash(1), lease: berth_schemas::field::NfTokenId(lease), moments: nz(moments), expires_at };
        assert_valid("extend-ok", &Message::ExtendOk(ok).payload());
    }
}
