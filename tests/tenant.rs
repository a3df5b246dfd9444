//! The tenant's commands against a running `berth sandbox`: hosts, acquire (interrupted and
//! resumed), leases rebuilt from the ledger, deploy / input / read / status by lease, a
//! second tenant refused by the first tenant's instance, extend, terminate, and the error
//! paths (no host found, insufficient balance, lease terminated, instance unreachable).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use berth_e2e::{berth, berth_bin, counter_bundle, fails, json, ok, ports, Sandbox};

#[test]
fn a_tenant_buys_deploys_talks_extends_and_terminates_and_every_error_says_what_to_do() {
    let (user, peer) = ports(27400);
    let Some(sb) = Sandbox::start(&["--slots", "3", "--user-ports", &user, "--peer-ports", &peer])
    else {
        return;
    };
    let bundle = counter_bundle().to_str().unwrap().to_owned();
    let home = sb.tenant_home();
    let host = sb.get("host");
    let (ledger, registry) = (sb.get("ledger"), sb.get("registry"));

    // Hosts: the settings file the sandbox wrote supplies --ledger and --registry.
    let hosts = json(berth(&home, &["hosts", "--json"]));
    let listed = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == host.as_str())
        .unwrap_or_else(|| panic!("{host} not listed: {hosts}"));
    assert_eq!(listed["offers"].as_array().unwrap().len(), 3, "{listed}");

    // No host found: a filter nothing matches says so and what to relax.
    let err = fails(berth(&home, &["hosts", "--max-price", "1"]));
    assert!(
        err.contains("no host found") && err.contains("relax"),
        "{err}"
    );
    // An account that is not a host.
    let stranger = berth_xrpl_core::KeyPair::generate(berth_xrpl_core::KeyType::Ed25519).address();
    let err = fails(berth(&home, &["acquire", &stranger]));
    assert!(
        err.contains(&stranger) && err.contains("does not exist") && err.contains("berth hosts"),
        "{err}"
    );
    // Insufficient balance: 11 XRP covers the reserve, not the reserve plus price.
    let poor = sb.new_tenant("poor", 11);
    let err = fails(berth(
        &poor,
        &[
            "acquire",
            &host,
            "--ledger",
            &ledger,
            "--registry",
            &registry,
        ],
    ));
    assert!(
        err.contains("insufficient balance") && err.contains("fund"),
        "{err}"
    );

    // Acquire, killed right after the purchase is recorded, then resumed by its hash.
    let mut child = Command::new(berth_bin())
        .args(["acquire", &host])
        .env("BERTH_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hash = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find("--resume ") {
            hash = Some(line[at + 9..at + 9 + 64].to_owned());
            break;
        }
    }
    let hash = hash.expect("acquire printed no resume hash");
    let _ = child.kill();
    let _ = child.wait();
    assert!(home.join("pending").join(format!("{hash}.json")).exists());
    let acquired = json(berth(&home, &["acquire", "--resume", &hash, "--json"]));
    assert_eq!(acquired["purchase"], hash.as_str(), "{acquired}");
    let record = &acquired["record"];
    let lease = record["lease"].as_str().unwrap().to_owned();
    let address = format!(
        "{}:{}",
        record["instance_host"].as_str().unwrap(),
        record["user_port"]
    );
    let expires_at = record["expires_at"].as_u64().unwrap();
    assert!(!home.join("pending").join(format!("{hash}.json")).exists());
    // Resuming again finds the lease on the ledger: same lease, nothing bought twice.
    let again = json(berth(&home, &["acquire", "--resume", &hash, "--json"]));
    assert_eq!(again["record"]["lease"], lease.as_str());

    // `leases` reads the ledger: with the local records gone it rebuilds them.
    std::fs::remove_dir_all(home.join("leases")).unwrap();
    let leases = json(berth(&home, &["leases", "--json"]));
    let leases = leases.as_array().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["lease"], lease.as_str());
    assert_eq!(leases[0]["state"], "active");
    assert_eq!(leases[0]["host"], host.as_str());
    assert_eq!(leases[0]["instance"], format!("wss://{address}").as_str());
    assert_eq!(leases[0]["expires_at"], expires_at);
    assert!(home.join("leases").join(format!("{lease}.json")).exists());

    // Deploy, input, read and status by lease: its last 8 digits are enough (the ids of one
    // host's tokens share their first 48).
    let short = &lease[lease.len() - 8..];
    let out = ok(berth(&home, &["deploy", short, &bundle]));
    assert!(out.contains("bootstrap: ok"), "{out}");
    assert_eq!(ok(berth(&home, &["input", short, "incr hits"])).trim(), "1");
    assert_eq!(ok(berth(&home, &["input", short, "incr hits"])).trim(), "2");
    assert_eq!(ok(berth(&home, &["read", short, "get hits"])).trim(), "2");
    let status = json(berth(&home, &["status", short, "--json"]));
    assert!(status["lcl_seq_no"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["contract_id"], record["contract_id"]);

    // A second tenant cannot deploy to the first tenant's instance.
    let other = sb.new_tenant("other", 100);
    let err = fails(berth(&other, &["deploy", &address, &bundle]));
    assert!(err.contains("owner"), "{err}");
    // Nor use the first tenant's lease: it is not in its book or its account.
    let err = fails(berth(&other, &["extend", &lease, "1", "--ledger", &ledger]));
    assert!(err.contains("no lease matches"), "{err}");
    // The first tenant's contract state is untouched.
    assert_eq!(ok(berth(&home, &["read", short, "get hits"])).trim(), "2");

    // Instance unreachable, by lease: a second lease whose container is stopped behind the
    // tenant's back.
    let second = json(berth(&home, &["acquire", &host, "--json"]));
    let second_lease = second["record"]["lease"].as_str().unwrap().to_owned();
    let second_port = second["record"]["user_port"].to_string();
    let ids = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("publish={second_port}"))
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&ids.stdout).trim().to_owned();
    assert!(!id.is_empty(), "no container publishes {second_port}");
    let stopped = Command::new("docker")
        .args(["stop", "-t", "1", &id])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let err = fails(berth(&home, &["status", &second_lease, "--timeout", "5"]));
    assert!(
        err.contains(&format!("the instance of lease {second_lease}"))
            && err.contains("unreachable")
            && err.contains("berth leases"),
        "{err}"
    );

    // Extend by two moments.
    let moment = record["moment_secs"].as_u64().unwrap();
    let extended = json(berth(&home, &["extend", short, "2", "--json"]));
    assert_eq!(extended["moments"], 2, "{extended}");
    assert_eq!(
        extended["expires_at"].as_u64().unwrap(),
        expires_at + 2 * moment
    );

    // An extension killed right after it was recorded is finished by the next `extend`,
    // not paid twice: one more moment in all.
    let mut child = Command::new(berth_bin())
        .args(["extend", short, "1"])
        .env("BERTH_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("recorded") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let in_flight = std::fs::read_dir(home.join("requests")).unwrap().count();
    assert_eq!(in_flight, 1, "the extension was not recorded");
    let out = berth(&home, &["extend", short, "1", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let resumed = json(out);
    assert!(stderr.contains("instead of paying again"), "{stderr}");
    assert_eq!(
        resumed["expires_at"].as_u64().unwrap(),
        expires_at + 3 * moment,
        "{resumed}"
    );
    assert_eq!(std::fs::read_dir(home.join("requests")).unwrap().count(), 0);

    // Terminate; the lease is then refused by name, and its instance is gone.
    let out = ok(berth(&home, &["terminate", short]));
    assert!(out.contains("terminated"), "{out}");
    let err = fails(berth(&home, &["input", short, "incr hits"]));
    assert!(
        err.contains("terminated") && err.contains("berth acquire"),
        "{err}"
    );
    let all = json(berth(&home, &["leases", "--all", "--json"]));
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|l| l["lease"] == lease.as_str() && l["state"] == "terminated"),
        "{all}"
    );
    let err = fails(berth(&home, &["status", &address, "--timeout", "5"]));
    assert!(
        err.contains("unreachable") && err.contains("is the instance running"),
        "{err}"
    );

    // The sandbox stops cleanly and removes what it started.
    let status = sb.stop();
    assert!(status.success(), "{status:?}");
}
