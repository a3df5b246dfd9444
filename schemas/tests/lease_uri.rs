//! The lease token URI: the example, round trips, and every bad field named.
#![allow(clippy::unwrap_used)]

mod support;

use berth_schemas::lease_uri::{LeaseUri, LeaseUriError};
use proptest::prelude::*;
use support::*;

fn example() -> LeaseUri {
    LeaseUri {
        slot: 0,
        cpu_millicores: nz(1000),
        memory_mb: nz(2048),
        disk_mb: nz(10240),
        price: drops(1_000_000),
        moment_secs: nz(3600),
    }
}

#[test]
fn readme_example_round_trips() {
    let text = "berth:1:0:1000:2048:10240:1000000:3600";
    assert_eq!(example().to_string(), text);
    assert_eq!(text.parse::<LeaseUri>().unwrap(), example());
    assert_eq!(example().to_hex(), hex::encode_upper(text));
    assert_eq!(LeaseUri::from_hex(&example().to_hex()).unwrap(), example());
    assert_eq!(LeaseUri::from_bytes(text.as_bytes()).unwrap(), example());
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(text) && readme.contains(&example().to_hex()),
        "README.md must show the example"
    );
}

fn field_error(text: &str) -> (&'static str, String) {
    match text.parse::<LeaseUri>() {
        Err(LeaseUriError::Field { field, problem }) => (field, problem),
        other => panic!("{text}: expected a field error, got {other:?}"),
    }
}

#[test]
fn each_bad_field_is_named() {
    let cases = [
        ("berth:1:x:1000:2048:10240:1000000:3600", "slot"),
        ("berth:1:4294967296:1000:2048:10240:1000000:3600", "slot"),
        ("berth:1:0:0:2048:10240:1000000:3600", "cpu_millicores"),
        ("berth:1:0:1000:02048:10240:1000000:3600", "memory_mb"),
        ("berth:1:0:1000:2048:+10240:1000000:3600", "disk_mb"),
        ("berth:1:0:1000:2048:10240:0:3600", "price_drops"),
        (
            "berth:1:0:1000:2048:10240:100000000000000001:3600",
            "price_drops",
        ),
        ("berth:1:0:1000:2048:10240:1000000:", "moment_secs"),
        ("berth:1:0:1000:2048:10240:1000000: 3600", "moment_secs"),
    ];
    for (text, field) in cases {
        let (named, problem) = field_error(text);
        assert_eq!(named, field, "{text}: {problem}");
        let message = text.parse::<LeaseUri>().unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("lease uri: field `{field}`: ")),
            "{message}"
        );
    }
}

#[test]
fn structural_errors_are_named() {
    assert_eq!(
        "ipfs://bafy".parse::<LeaseUri>(),
        Err(LeaseUriError::NotBerth)
    );
    assert_eq!(
        LeaseUri::from_bytes(b""),
        Err(LeaseUriError::Length { len: 0 })
    );
    assert_eq!(
        LeaseUri::from_bytes(&[b'b'; 257]),
        Err(LeaseUriError::Length { len: 257 })
    );
    assert_eq!(
        LeaseUri::from_bytes(b"berth:\xff"),
        Err(LeaseUriError::NotText)
    );
    assert_eq!(LeaseUri::from_hex("zz"), Err(LeaseUriError::NotHex));
    assert_eq!(
        "berth:2:0:1".parse::<LeaseUri>(),
        Err(LeaseUriError::Version {
            found: "2".to_owned()
        })
    );
    assert_eq!(
        "berth:1:0:1000".parse::<LeaseUri>(),
        Err(LeaseUriError::FieldCount {
            expected: 7,
            found: 3
        })
    );
    assert_eq!(
        "berth:1:0:1000:2048:10240:1000000:3600:9".parse::<LeaseUri>(),
        Err(LeaseUriError::FieldCount {
            expected: 7,
            found: 8
        })
    );
}

prop_compose! {
    fn any_uri()(slot in any::<u32>(), cpu in 1u32.., memory in 1u32.., disk in 1u32..,
                 price in 1u64..=berth_schemas::field::MAX_DROPS, moment in 1u32..) -> LeaseUri {
        LeaseUri { slot, cpu_millicores: nz(cpu), memory_mb: nz(memory), disk_mb: nz(disk), price: drops(price), moment_secs: nz(moment) }
    }
}

proptest! {
    #[test]
    fn any_uri_round_trips_within_the_ledger_limit(uri in any_uri()) {
        let bytes = uri.to_bytes();
        prop_assert!(bytes.len() <= 256);
        prop_assert_eq!(LeaseUri::from_bytes(&bytes).unwrap(), uri);
    }

    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = LeaseUri::from_bytes(&bytes);
    }

    #[test]
    fn parsing_near_misses_never_panics(text in "berth:[0-9:a+-]{0,60}") {
        let _ = text.parse::<LeaseUri>();
    }
}
