//! Leases end by themselves: with moments of a few seconds the host destroys the instance
//! and takes the token back, and the tenant's commands name the expiry.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use berth_e2e::{berth, fails, json, ports, Sandbox};

#[test]
fn a_lease_of_short_moments_expires_and_the_tenant_is_told() {
    let (user, peer) = ports(27500);
    let Some(sb) = Sandbox::start(&[
        "--slots",
        "1",
        "--moment-secs",
        "8",
        "--grace-secs",
        "1",
        "--user-ports",
        &user,
        "--peer-ports",
        &peer,
    ]) else {
        return;
    };
    let home = sb.tenant_home();
    let host = sb.get("host");
    let acquired = json(berth(&home, &["acquire", &host, "--json"]));
    let lease = acquired["record"]["lease"].as_str().unwrap().to_owned();
    let expires_at = acquired["record"]["expires_at"].as_u64().unwrap();
    assert_eq!(sb.containers().len(), 1);
    let leases = json(berth(&home, &["leases", "--json"]));
    assert_eq!(leases[0]["state"], "active", "{leases}");

    // Wait for the end, then for the host to take the token back.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let leases = json(berth(&home, &["leases", "--json"]));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if leases.as_array().unwrap().is_empty() && now >= expires_at {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never ended: {leases}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let all = json(berth(&home, &["leases", "--all", "--json"]));
    assert_eq!(all[0]["lease"], lease.as_str(), "{all}");
    assert_eq!(all[0]["state"], "expired", "{all}");
    assert_eq!(all[0]["held"], false, "{all}");

    // Every lease command names the expiry and what to do.
    for args in [
        vec!["input", lease.as_str(), "incr x"],
        vec!["status", lease.as_str()],
        vec!["extend", lease.as_str(), "1"],
    ] {
        let err = fails(berth(&home, &args));
        assert!(
            err.contains("expired") && err.contains("berth acquire"),
            "{args:?}: {err}"
        );
    }
    // The instance is gone from the engine, and the slot is offered again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sb.containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "instance left: {:?}",
            sb.containers()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Until the fresh token is offered, `hosts` says "no host found".
        let out = berth(&home, &["hosts", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let hosts: serde_json::Value = serde_json::from_str(&text).unwrap();
            if hosts[0]["offers"].as_array().is_some_and(|o| o.len() == 1) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "slot never offered again: {text}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(sb.stop().success());
}
