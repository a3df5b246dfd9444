#![allow(clippy::unwrap_used)]
//! The `berth-agent` binary's offline commands: init, help, errors that name the file.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use berth_test_support::{fails, ok, usage_error};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth-agent"))
        .args(args)
        .env_remove("BERTH_AGENT_CONFIG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn init_args<'a>(config: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        config,
        "init",
        "--server",
        "ws://127.0.0.1:6006",
        "--registry",
        "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh",
        "--domain",
        "host1.example.com",
        "--country",
        "DE",
        "--slots",
        "2",
        "--data-dir",
        data,
    ]
}

#[test]
fn init_writes_a_config_and_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/berth-agent.toml");
    let data = dir.path().join("data");
    let (config_s, data_s) = (config.display().to_string(), data.display().to_string());
    let out = agent(&init_args(&config_s, &data_s));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key_file = data.join("host.key");
    let seed = std::fs::read_to_string(&key_file).unwrap();
    assert!(seed.trim().starts_with('s'), "a family seed");
    assert!(!stdout.contains(seed.trim()), "the seed is never printed");
    assert!(stdout.contains("host address r"), "{stdout}");
    assert!(stdout.contains("message key  ED"), "{stdout}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let parsed =
        berth_schemas::config::HostConfig::from_toml(&std::fs::read_to_string(&config).unwrap())
            .unwrap();
    assert_eq!(parsed.lease.slots.get(), 2);
    assert_eq!(parsed.host.data_dir, data);

    let again = agent(&init_args(&config_s, &data_s));
    assert!(!again.status.success());
    let stderr = text(&again.stderr);
    assert!(stderr.contains("refuses to overwrite"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        seed,
        "key untouched"
    );

    // No database yet: status names it.
    let status = agent(&["--config", &config_s, "status"]);
    assert!(!status.status.success());
    assert!(
        text(&status.stderr).contains("agent.db"),
        "{}",
        text(&status.stderr)
    );
}

#[test]
fn bad_init_options_and_a_readable_key_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth-agent.toml").display().to_string();
    let data = dir.path().join("data").display().to_string();
    let mut args = init_args(&config, &data);
    args[10] = "Germany";
    let out = agent(&args);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("host.country"),
        "{}",
        text(&out.stderr)
    );

    let out = agent(&init_args(&config, &data));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = dir.path().join("data/host.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let keys = berth_agent::setup::load_keys(&key).unwrap_err();
    assert!(keys.to_string().contains("chmod 600"), "{keys}");
}

#[test]
fn every_command_has_help() {
    for command in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["run", "--help"],
        vec!["status", "--help"],
        vec!["leases", "--help"],
        vec!["drain", "--help"],
    ] {
        let out = agent(&command);
        assert!(out.status.success(), "{command:?}");
        assert!(text(&out.stdout).contains("Usage"), "{command:?}");
    }
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    for args in [
        vec!["frobnicate"],
        vec!["status", "--no-such-flag"],
        vec!["init", "--registry", "r"],
    ] {
        let err = usage_error(agent(&args));
        assert!(err.contains("Usage"), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth-agent.toml");
    std::fs::write(&config, "[ledger\nnot toml").unwrap();
    let config_s = config.display().to_string();
    for command in ["run", "status", "leases", "drain"] {
        let out = agent(&["--json", "--config", &config_s, command]);
        assert!(out.stdout.is_empty(), "{command}: errors go to stderr");
        let err = fails(out);
        assert!(err.contains("berth-agent.toml"), "{command}: {err}");
    }
    // A bad value is a failure too, named by its key.
    let data = dir.path().join("data").display().to_string();
    let other = dir.path().join("other.toml").display().to_string();
    let mut args = init_args(&other, &data);
    args[10] = "Germany";
    assert!(fails(agent(&args)).contains("host.country"));
}

#[test]
fn json_is_global_and_prints_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth-agent.toml");
    let data = dir.path().join("data");
    let (config_s, data_s) = (config.display().to_string(), data.display().to_string());
    let mut args = vec!["--json"];
    args.extend(init_args(&config_s, &data_s));
    let init: serde_json::Value = serde_json::from_str(&ok(agent(&args))).unwrap();
    assert_eq!(init["config"], config_s.as_str());
    let key_file = data.join("host.key").display().to_string();
    assert_eq!(init["key_file"], key_file.as_str());
    let address = init["address"].as_str().unwrap();
    assert!(address.starts_with('r'), "{init}");
    let message_key = init["message_key"].as_str().unwrap();
    assert!(message_key.starts_with("ED"), "{init}");
    // Before or after the subcommand.
    for args in [
        vec!["--config", &config_s, "drain", "--json"],
        vec!["--json", "--config", &config_s, "drain", "--undo"],
    ] {
        let drain: serde_json::Value = serde_json::from_str(&ok(agent(&args))).unwrap();
        assert_eq!(drain["draining"], !args.contains(&"--undo"), "{drain}");
    }
}
