#![allow(clippy::unwrap_used)]
//! Tenants are promised a disk limit (`disk_mb` of the lease URI, shared by the slots): an
//! instance that writes past it is stopped by housekeeping's disk watchdog and held stopped
//! for the rest of its lease, while the host's other instances run on. Real agent (`run` in
//! process), localnet and the real Docker engine; the watchdog reads Docker's volume
//! directory, which needs root. With BERTH_REQUIRE_DOCKER=1 an unreachable engine fails.

use std::time::{Duration, Instant};

use berth_agent::store::{Lease, LeaseState};
use berth_agent::test_support::*;
use berth_provisioner::{Health, InstanceState, ProvisionError, Provisioner};

/// The lease of a purchase, once recorded.
fn lease_of(w: &World, purchase: &str) -> Lease {
    w.store()
        .unwrap()
        .read()
        .lease_by_purchase(&purchase.parse().unwrap())
        .unwrap()
        .unwrap()
}

async fn state_of(w: &World, instance: &str) -> InstanceState {
    w.provisioner.inspect(instance).await.unwrap().summary.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_writing_past_its_disk_limit_is_stopped_and_held_and_others_run_on() {
    // 8 MB over 2 slots: 4 MiB for each instance.
    let options = Options {
        disk_mb: Some(8),
        ..Options::default()
    };
    let Some(w) = World::start_with("disk", 2, 27900, options).await else {
        return;
    };
    let mut buyers = Vec::new();
    for slot in 0..2 {
        let (_, offer) = w.offered(slot, 0).await;
        let buyer = w.buy(&offer, slot as u8 + 1).await;
        w.answers(&buyer.account.address(), &buyer.purchase).await;
        buyers.push(buyer);
    }
    let hog = lease_of(&w, &buyers[0].purchase);
    let modest = lease_of(&w, &buyers[1].purchase);
    assert_eq!(
        (hog.state, modest.state),
        (LeaseState::Active, LeaseState::Active)
    );

    // The watchdog measures state volumes on the host's filesystem: without read access to
    // Docker's volume directory it cannot keep the promise, and this test says so.
    if let Err(e @ ProvisionError::VolumeRead { .. }) =
        w.provisioner.volume_usage(&hog.instance).await
    {
        panic!(
            "the disk watchdog cannot read Docker's volume directory ({}): run the agent (and \
             this test) as root, or give the engine a storage-opt quota",
            berth_log::chain(&e)
        );
    }

    // The tenant's code (here a `docker exec` as the instance's own user, 10001) writes
    // 6 MiB into its 4 MiB.
    let container = w.provisioner.container_name(&hog.instance);
    let fill = std::process::Command::new("docker")
        .args(["exec", &container, "/probe", "fill", "/state", "6"])
        .output()
        .unwrap();
    assert!(
        fill.status.success(),
        "docker exec {container} /probe fill: {}",
        String::from_utf8_lossy(&fill.stderr)
    );

    // Housekeeping (every 2 s here) stops it and holds its lease's instance stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let lease = lease_of(&w, &buyers[0].purchase);
        if let Some(why) = lease.held_stopped {
            break why;
        }
        assert!(
            Instant::now() < deadline,
            "housekeeping never held {} stopped; errors: {:?}",
            hog.instance,
            w.store().unwrap().read().recent_errors(10).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(held.contains("over its disk quota"), "{held}");
    assert_eq!(state_of(&w, &hog.instance).await, InstanceState::Exited);
    let errors = w.store().unwrap().read().recent_errors(20).unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.context == "disk-quota" && e.message.contains(&hog.instance)),
        "{errors:?}"
    );

    // Reconcile runs on every pass and keeps it stopped: it is not started again.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(state_of(&w, &hog.instance).await, InstanceState::Exited);
    }
    // The lease is not ended by it (the tenant may terminate or let it run out), and
    // `leases` shows why its instance is down.
    let hog_now = lease_of(&w, &buyers[0].purchase);
    assert_eq!(hog_now.state, LeaseState::Active);
    let health = w
        .store()
        .unwrap()
        .read()
        .setting(&format!(
            "{}{}",
            berth_agent::status::keys::HEALTH,
            hog.instance
        ))
        .unwrap();
    assert!(
        health
            .as_deref()
            .is_some_and(|h| h.starts_with("stopped: over its disk quota")),
        "{health:?}"
    );

    // The other instance runs on, untouched.
    let modest_now = lease_of(&w, &buyers[1].purchase);
    assert_eq!(modest_now.state, LeaseState::Active);
    assert!(modest_now.held_stopped.is_none());
    assert_eq!(
        w.provisioner.health(&modest.instance).await.unwrap(),
        Health::Answering
    );
    w.stop().await;
}
