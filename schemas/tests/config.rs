//! The host config file: the example parses, defaults apply, bad values are named by key.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use berth_schemas::config::{ConfigError, HostConfig, PortRange};

const EXAMPLE: &str = include_str!("../examples/berth-agent.toml");

const MINIMAL: &str = r#"
[ledger]
servers = ["ws://127.0.0.1:6006"]
registry = "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh"

[host]
domain = "127.0.0.1"
country = "NL"

[lease]
slots = 2
price_drops = "500"

[resources]
cpu_millicores = 2000
memory_mb = 1024
disk_mb = 2048
"#;

#[test]
fn example_file_parses_and_round_trips() {
    let config = HostConfig::from_toml(EXAMPLE).unwrap();
    assert_eq!(config.ledger.servers.len(), 2);
    assert_eq!(config.lease.slots.get(), 4);
    assert_eq!(
        config.ports.user,
        PortRange {
            first: 26201,
            last: 26300
        }
    );
    let written = config.to_toml();
    assert_eq!(HostConfig::from_toml(&written).unwrap(), config);
}

#[test]
fn readme_shows_the_example_file() {
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(EXAMPLE.trim()),
        "README.md must quote examples/berth-agent.toml verbatim"
    );
}

#[test]
fn defaults_fill_a_minimal_file() {
    let config = HostConfig::from_toml(MINIMAL).unwrap();
    let defaults = HostConfig::from_toml(EXAMPLE).unwrap();
    assert_eq!(config.ledger.max_fee_drops, defaults.ledger.max_fee_drops);
    assert_eq!(config.lease.moment_secs.get(), 3600);
    assert_eq!(config.lease.grace_secs, 300);
    assert_eq!(config.resources.swap_mb, 0);
    assert_eq!(config.ports, defaults.ports);
    assert_eq!(config.runtime.image, "berth-hotpocket:latest");
    assert_eq!(config.runtime.pids_limit.get(), 256);
    assert_eq!(config.runtime.docker_host, None);
    assert_eq!(config.housekeeping.schedule, "0 */10 * * * *");
    assert_eq!(config.host.data_dir, PathBuf::from("/var/lib/berth"));
    assert_eq!(config.key_file(), PathBuf::from("/var/lib/berth/host.key"));
}

#[test]
fn instance_size_and_lease_uri_follow_the_totals() {
    let config = HostConfig::from_toml(MINIMAL).unwrap();
    let size = config.instance_size();
    assert_eq!(
        (
            size.cpu_millicores.get(),
            size.memory_mb.get(),
            size.disk_mb.get()
        ),
        (1000, 512, 1024)
    );
    assert_eq!(
        config.lease_uri(1).to_string(),
        "berth:1:1:1000:512:1024:500:3600"
    );
}

fn error_for(replace: &str, with: &str) -> ConfigError {
    let text = MINIMAL.replace(replace, with);
    assert_ne!(text, MINIMAL, "{replace} not found");
    HostConfig::from_toml(&text).unwrap_err()
}

fn key_of(error: &ConfigError) -> &str {
    match error {
        ConfigError::Parse { key, .. } => key,
        ConfigError::Invalid { key, .. } => key,
    }
}

#[test]
fn bad_values_are_named_by_key() {
    let cases = [
        ("slots = 2", "slots = 0", "lease.slots"),
        ("slots = 2", "slots = \"two\"", "lease.slots"),
        ("slots = 2\n", "", "lease.slots"),
        (
            "price_drops = \"500\"",
            "price_drops = \"05\"",
            "lease.price_drops",
        ),
        (
            "registry = \"rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh\"",
            "registry = \"rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTj\"",
            "ledger.registry",
        ),
        (
            "servers = [\"ws://127.0.0.1:6006\"]",
            "servers = []",
            "ledger.servers",
        ),
        (
            "servers = [\"ws://127.0.0.1:6006\"]",
            "servers = [\"http://x\"]",
            "ledger.servers",
        ),
        ("country = \"NL\"", "country = \"nl\"", "host.country"),
        (
            "domain = \"127.0.0.1\"",
            "domain = \"bad host\"",
            "host.domain",
        ),
        (
            "disk_mb = 2048",
            "disk_mb = 2048\nswap = 1",
            "resources.swap",
        ),
        ("disk_mb = 2048", "disk_mb = 1", "resources.disk_mb"),
        ("memory_mb = 1024", "memory_mb = 20", "resources.memory_mb"),
        (
            "cpu_millicores = 2000",
            "cpu_millicores = 1",
            "resources.cpu_millicores",
        ),
        (
            "disk_mb = 2048\n",
            "disk_mb = 2048\n[ports]\nuser = \"100-100\"\n",
            "ports.user",
        ),
        (
            "disk_mb = 2048\n",
            "disk_mb = 2048\n[ports]\nuser = \"9-2\"\n",
            "ports.user",
        ),
        (
            "disk_mb = 2048\n",
            "disk_mb = 2048\n[ports]\nuser = \"1000-2000\"\npeer = \"2000-2100\"\n",
            "ports.peer",
        ),
        (
            "disk_mb = 2048\n",
            "disk_mb = 2048\n[housekeeping]\nschedule = \"every minute\"\n",
            "housekeeping.schedule",
        ),
        (
            "disk_mb = 2048\n",
            "disk_mb = 2048\n[runtime]\nimage = \" \"\n",
            "runtime.image",
        ),
    ];
    for (replace, with, key) in cases {
        let error = error_for(replace, with);
        assert_eq!(key_of(&error), key, "{with}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("host config: key `{key}`")),
            "{error}"
        );
    }
}

#[test]
fn invalid_errors_show_the_bad_value() {
    let error = error_for("cpu_millicores = 2000", "cpu_millicores = 1");
    assert_eq!(
        error.to_string(),
        "host config: key `resources.cpu_millicores` = 1: less than 1 millicore for each of 2 slots"
    );
}

#[test]
fn not_toml_is_an_error_not_a_panic() {
    assert!(HostConfig::from_toml("[[[").is_err());
    assert!(HostConfig::from_toml("").is_err());
    assert!(HostConfig::from_toml("\u{0}").is_err());
}
