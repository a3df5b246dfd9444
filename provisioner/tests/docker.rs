//! The provisioner against the real Docker engine, with the probe image standing in for the
//! hotpocket runtime. Each test works in its own namespace and removes it when done.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeSet;

use berth_provisioner::{
    ContextDir, DiskQuotaMode, Health, ImageOutcome, ImageSpec, InstanceState, Operation,
    ProvisionError, Provisioner, ReconcileAction,
};
use common::{config, resources, Harness};
use tokio::io::AsyncReadExt;

async fn greeting(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test]
async fn limits_and_hardening_are_in_effect() {
    let mut cfg = config("limits", 21000, resources(2));
    cfg.pids_limit = 64;
    cfg.open_files_limit = 512;
    cfg.host_ip = [127, 0, 0, 1].into();
    let Some(h) = Harness::new(cfg).await else {
        return;
    };
    let spec = h.specs("lim", 1).await.remove(0);
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start(&spec.name).await.unwrap();
    assert!(
        h.wait_answering(spec.ports.user, 10).await,
        "user port never answered"
    );
    assert_eq!(
        greeting(spec.ports.user).await.trim(),
        format!("berth-probe {}", spec.identity.contract_id)
    );
    assert_eq!(
        h.provisioner.health(&spec.name).await.unwrap(),
        Health::Answering
    );

    let inspect = h
        .docker
        .inspect_container(&h.provisioner.container_name(&spec.name), None)
        .await
        .unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(
        host.memory_swap,
        Some(64 << 20),
        "no swap configured: memory-swap equals memory"
    );
    assert_eq!(
        (host.cpu_period, host.cpu_quota),
        (Some(100_000), Some(100_000))
    );
    assert_eq!(host.pids_limit, Some(64));
    let nofile = host
        .ulimits
        .unwrap()
        .into_iter()
        .find(|u| u.name.as_deref() == Some("nofile"))
        .unwrap();
    assert_eq!((nofile.soft, nofile.hard), (Some(512), Some(512)));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.cap_add, None);
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges:true".to_owned()])
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.init, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(
        host.network_mode.as_deref(),
        Some(berth_provisioner::config::DEFAULT_NETWORK)
    );
    assert_eq!(host.pid_mode.as_deref().unwrap_or(""), "");
    assert_eq!(host.ipc_mode.as_deref(), Some("private"));
    assert_eq!(
        host.cgroupns_mode.map(|mode| mode.to_string()).as_deref(),
        Some("private")
    );
    assert_eq!(host.userns_mode.as_deref().unwrap_or(""), "");
    assert_eq!(host.uts_mode.as_deref().unwrap_or(""), "");
    let restart = host
        .restart_policy
        .unwrap()
        .name
        .map(|name| name.to_string());
    assert_eq!(restart.as_deref(), Some("unless-stopped"));
    assert!(host.tmpfs.unwrap()["/tmp"].contains("size=16777216"));
    let binding = &host.port_bindings.unwrap()[&format!("{}/tcp", spec.ports.user)]
        .clone()
        .unwrap()[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(binding.host_port, Some(spec.ports.user.to_string()));
    let config = inspect.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("10001:10001"));
    let labels = config.labels.unwrap();
    assert_eq!(labels["berth.lease"], spec.lease_id);
    assert_eq!(labels["berth.instance"], spec.name);
    assert_eq!(labels["berth.managed"], "true");
    let mount = inspect
        .mounts
        .unwrap()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some("/state"))
        .unwrap();
    assert_eq!(mount.name, Some(h.provisioner.volume_name(&spec.name)));
    assert_eq!(mount.rw, Some(true));

    // Inside: uid 10001, no capabilities, no_new_privs, read-only root, writable /state and /tmp.
    let (code, status) = h.exec(&spec.name, &["/probe", "status"]).await;
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("Uid:\t10001\t10001"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("root: read-only"), "{status}");
    assert!(status.contains("tmp: writable"), "{status}");
    let (code, filled) = h.exec(&spec.name, &["/probe", "fill", "/state", "1"]).await;
    assert_eq!((code, filled.trim()), (0, "filled 1"));
    assert!(h
        .provisioner
        .logs(&spec.name, 10)
        .await
        .unwrap()
        .contains("probe listening"));

    let status = h.provisioner.host_status().await.unwrap();
    assert_eq!(status.instances, 1);
    if status.storage_driver == "fuse-overlayfs" {
        assert_eq!(status.disk_quota_mode, DiskQuotaMode::Watchdog);
        assert_eq!(host.storage_opt.unwrap_or_default().len(), 0);
    }
}

#[tokio::test]
async fn a_process_cannot_exceed_the_memory_or_pids_limit() {
    let mut cfg = config("oom", 21100, resources(1));
    cfg.pids_limit = 32;
    let Some(h) = Harness::new(cfg).await else {
        return;
    };
    let spec = h.specs("oom", 1).await.remove(0);
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start(&spec.name).await.unwrap();
    assert!(h.wait_answering(spec.ports.user, 10).await);

    // 64 MiB of memory, no swap: allocating 200 MiB gets the process killed.
    let (code, output) = h.exec(&spec.name, &["/probe", "alloc", "200"]).await;
    assert!(
        !output.contains("done"),
        "allocation beyond the limit succeeded: {output}"
    );
    assert_eq!(
        code,
        137,
        "expected an OOM kill (137), output ends {:?}",
        output.lines().last()
    );
    let allocated: u32 = output
        .lines()
        .filter_map(|l| l.strip_prefix("allocated ")?.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(
        allocated < 64,
        "allocated {allocated} MiB under a 64 MiB limit"
    );

    // 32 pids including the probe's own threads: spawning 200 threads stops short.
    let (code, output) = h.exec(&spec.name, &["/probe", "spawn", "200"]).await;
    assert_eq!(code, 0, "{output}");
    let spawned: u32 = output
        .trim()
        .strip_prefix("spawned ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        spawned < 32,
        "spawned {spawned} threads under a pids limit of 32"
    );
    assert!(spawned > 0);
    // The instance itself survives both.
    assert_eq!(
        h.provisioner.health(&spec.name).await.unwrap(),
        Health::Answering
    );
}

#[tokio::test]
async fn a_crashed_instance_is_restarted_by_its_restart_policy() {
    let Some(h) = Harness::new(config("restart", 21900, resources(1))).await else {
        return;
    };
    let spec = h.specs("crash", 1).await.remove(0);
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start(&spec.name).await.unwrap();
    assert!(h.wait_answering(spec.ports.user, 10).await);
    let mut peer = tokio::net::TcpStream::connect(("127.0.0.1", spec.ports.peer))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut peer, b"crash")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = h.provisioner.inspect(&spec.name).await.unwrap();
        if status.restart_count >= 1 && status.summary.state == InstanceState::Running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(h.wait_answering(spec.ports.user, 10).await);
    let logs = h.provisioner.logs(&spec.name, 50).await.unwrap();
    assert!(logs.contains("probe crashing on request"), "{logs}");
    // A stop by the provisioner is not undone by the policy.
    h.provisioner.stop(&spec.name).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = h.provisioner.inspect(&spec.name).await.unwrap();
    assert_eq!(status.summary.state, InstanceState::Exited);
    assert!(matches!(
        h.provisioner.health(&spec.name).await.unwrap(),
        Health::NotRunning(InstanceState::Exited)
    ));
}

#[tokio::test]
async fn ports_of_destroyed_instances_are_reused() {
    let Some(h) = Harness::new(config("ports", 21200, resources(3))).await else {
        return;
    };
    let none = BTreeSet::new();
    let first = h.provisioner.allocate_ports(&none).await.unwrap();
    let a = h.spec("pa", "lease-a", first);
    h.provisioner.create(&a).await.unwrap();
    let second = h.provisioner.allocate_ports(&none).await.unwrap();
    assert_ne!(second.user, first.user);
    assert_ne!(second.peer, first.peer);
    let b = h.spec("pb", "lease-b", second);
    h.provisioner.create(&b).await.unwrap();
    // The caller's own record counts as in use too.
    let reserved = h.ports_in(&[h.provisioner.allocate_ports(&none).await.unwrap()]);
    let third = h.provisioner.allocate_ports(&reserved).await.unwrap();
    assert!(!reserved.contains(&third.user) && !reserved.contains(&third.peer));

    // A clash is refused by name.
    let clash = h.spec("pc", "lease-c", second);
    match h.provisioner.create(&clash).await {
        Err(ProvisionError::PortTaken {
            instance, holder, ..
        }) => assert_eq!((instance.as_str(), holder.as_str()), ("pc", "pb")),
        other => panic!("expected a port clash, got {other:?}"),
    }

    h.provisioner.destroy(&a.name).await.unwrap();
    // A port something else on the host listens on is skipped while it is held.
    let squatter = std::net::TcpListener::bind(("0.0.0.0", first.user)).unwrap();
    let around = h.provisioner.allocate_ports(&none).await.unwrap();
    assert_ne!(around.user, first.user);
    assert_eq!(around.peer, first.peer);
    drop(squatter);
    assert_eq!(h.provisioner.allocate_ports(&none).await.unwrap(), first);
    let again = h.spec("pd", "lease-d", first);
    h.provisioner.create(&again).await.unwrap();
    h.provisioner.start(&again.name).await.unwrap();
    assert!(h.wait_answering(first.user, 10).await);
}

#[tokio::test]
async fn destroy_is_idempotent() {
    let Some(h) = Harness::new(config("destroy", 21300, resources(1))).await else {
        return;
    };
    let spec = h.specs("gone", 1).await.remove(0);
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start(&spec.name).await.unwrap();
    let outcome = h.provisioner.destroy(&spec.name).await.unwrap();
    assert!(
        outcome.container_removed && outcome.volume_removed,
        "{outcome:?}"
    );
    let again = h.provisioner.destroy(&spec.name).await.unwrap();
    assert!(again.was_already_gone(), "{again:?}");
    assert!(h
        .provisioner
        .destroy("never-existed")
        .await
        .unwrap()
        .was_already_gone());
    match h.provisioner.inspect(&spec.name).await {
        Err(ProvisionError::NotFound { instance }) => assert_eq!(instance, spec.name),
        other => panic!("expected not found, got {other:?}"),
    }
    let volume = h.provisioner.volume_name(&spec.name);
    assert!(
        h.docker.inspect_volume(&volume).await.is_err(),
        "volume {volume} survived destroy"
    );
    assert!(h.provisioner.list().await.unwrap().is_empty());
    // Operations on a missing instance name it.
    let error = h
        .provisioner
        .start(&spec.name)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error, format!("instance {} does not exist", spec.name));
}

#[tokio::test]
async fn failed_create_leaves_nothing_behind() {
    let mut cfg = config("failcreate", 21400, resources(2));
    cfg.runtime = Some("berth-no-such-runtime".to_owned());
    let Some(h) = Harness::new(cfg).await else {
        return;
    };
    let spec = h.specs("bad", 1).await.remove(0);
    let error = h.provisioner.create(&spec).await.unwrap_err();
    match &error {
        ProvisionError::Engine { instance, op, .. } => {
            assert_eq!((instance.as_str(), *op), ("bad0", Operation::Create))
        }
        other => panic!("expected an engine error, got {other:?}"),
    }
    assert_eq!(error.to_string(), "cannot create instance bad0");
    assert!(h.provisioner.list().await.unwrap().is_empty());
    assert!(h
        .docker
        .inspect_volume(&h.provisioner.volume_name("bad0"))
        .await
        .is_err());

    let Some(h) = Harness::new(config("failimage", 21420, resources(2))).await else {
        return;
    };
    let mut spec = h.specs("noimg", 1).await.remove(0);
    spec.image = "berth-no-such-image:none".to_owned();
    assert!(matches!(
        h.provisioner.create(&spec).await,
        Err(ProvisionError::Engine {
            op: Operation::Create,
            ..
        })
    ));
    assert!(h.provisioner.list().await.unwrap().is_empty());
    assert!(h
        .docker
        .inspect_volume(&h.provisioner.volume_name("noimg0"))
        .await
        .is_err());
}

#[tokio::test]
async fn reconcile_after_a_crash_between_create_and_start() {
    let Some(h) = Harness::new(config("reconcile", 21500, resources(4))).await else {
        return;
    };
    let specs = h.specs("rc", 4).await;
    let (crashed, missing, orphan, volume_only) = (&specs[0], &specs[1], &specs[2], &specs[3]);
    // The agent crashed after create, before start.
    h.provisioner.create(crashed).await.unwrap();
    // A container of a lease that has ended.
    h.provisioner.create(orphan).await.unwrap();
    h.provisioner.start(&orphan.name).await.unwrap();
    // A state volume whose container went away.
    h.provisioner.create(volume_only).await.unwrap();
    h.docker
        .remove_container(&h.provisioner.container_name(&volume_only.name), None)
        .await
        .unwrap();
    // The missing instance's name still has a state volume of an earlier lease.
    let mut earlier = missing.clone();
    earlier.lease_id = "lease-earlier".to_owned();
    h.provisioner.create(&earlier).await.unwrap();
    h.docker
        .remove_container(&h.provisioner.container_name(&missing.name), None)
        .await
        .unwrap();
    match h.provisioner.create(missing).await {
        Err(ProvisionError::ForeignVolume {
            instance, lease, ..
        }) => {
            assert_eq!(
                (instance.as_str(), lease.as_str()),
                (missing.name.as_str(), "lease-earlier")
            )
        }
        other => panic!("expected the earlier lease's volume to be refused, got {other:?}"),
    }

    let expected = vec![crashed.clone(), missing.clone()];
    let actions = h.provisioner.reconcile(&expected).await.unwrap();
    let wanted = [
        ReconcileAction::RemovedOrphan {
            instance: orphan.name.clone(),
        },
        ReconcileAction::RemovedOrphanVolume {
            instance: volume_only.name.clone(),
        },
        ReconcileAction::Started {
            instance: crashed.name.clone(),
        },
        ReconcileAction::Recreated {
            instance: missing.name.clone(),
        },
    ];
    assert_eq!(actions, wanted);
    for spec in &expected {
        assert!(
            h.wait_answering(spec.ports.user, 10).await,
            "{} not answering",
            spec.name
        );
    }
    let names: Vec<String> = h
        .provisioner
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec![crashed.name.clone(), missing.name.clone()]);
    let volume = h
        .docker
        .inspect_volume(&h.provisioner.volume_name(&missing.name))
        .await
        .unwrap();
    assert_eq!(volume.labels["berth.lease"], missing.lease_id);
    assert!(h
        .docker
        .inspect_volume(&h.provisioner.volume_name(&volume_only.name))
        .await
        .is_err());

    // A second pass has nothing to do; a changed lease replaces the instance.
    let actions = h.provisioner.reconcile(&expected).await.unwrap();
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, ReconcileAction::Kept { .. })),
        "{actions:?}"
    );
    let mut moved = missing.clone();
    moved.lease_id = "lease-new".to_owned();
    let actions = h
        .provisioner
        .reconcile(&[crashed.clone(), moved.clone()])
        .await
        .unwrap();
    assert_eq!(
        actions[1],
        ReconcileAction::Replaced {
            instance: moved.name.clone()
        }
    );
    assert_eq!(
        h.provisioner
            .inspect(&moved.name)
            .await
            .unwrap()
            .summary
            .lease_id,
        "lease-new"
    );
}

#[tokio::test]
async fn many_instances_created_concurrently() {
    const COUNT: usize = 8;
    let Some(h) = Harness::new(config("many", 21600, resources(COUNT as u32))).await else {
        return;
    };
    let specs = h.specs("m", COUNT).await;
    let provisioner = &h.provisioner;
    // Two agents racing on one instance: one creates it, the other is told it exists, and
    // the loser does not take the winner's container or volume with it.
    let (first, second) = tokio::join!(
        h.provisioner.create(&specs[0]),
        h.provisioner.create(&specs[0])
    );
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(ProvisionError::AlreadyExists { instance }) if *instance == specs[0].name)),
        "{outcomes:?}"
    );
    let results =
        futures_util::future::join_all(specs.iter().enumerate().map(|(index, spec)| async move {
            if index > 0 {
                provisioner.create(spec).await?;
            }
            provisioner.start(&spec.name).await
        }))
        .await;
    for (spec, result) in specs.iter().zip(results) {
        result.unwrap_or_else(|error| panic!("{}: {error}", spec.name));
    }
    for spec in &specs {
        assert!(
            h.wait_answering(spec.ports.user, 15).await,
            "{} not answering",
            spec.name
        );
        assert!(greeting(spec.ports.user)
            .await
            .contains(&spec.identity.contract_id));
    }
    let listed = h.provisioner.list().await.unwrap();
    assert_eq!(listed.len(), COUNT);
    assert!(listed.iter().all(|s| s.state == InstanceState::Running));
    // Over capacity is refused.
    let extra = h.spec(
        "extra",
        "lease-extra",
        h.provisioner
            .allocate_ports(&BTreeSet::new())
            .await
            .unwrap(),
    );
    assert!(matches!(
        h.provisioner.create(&extra).await,
        Err(ProvisionError::CapacityReached { limit: 8 })
    ));
    let destroyed =
        futures_util::future::join_all(specs.iter().map(|spec| h.provisioner.destroy(&spec.name)))
            .await;
    assert!(destroyed
        .into_iter()
        .all(|outcome| outcome.unwrap().container_removed));
    assert!(h.provisioner.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn disk_watchdog_stops_an_instance_over_its_quota() {
    let mut res = resources(2);
    res.disk_mib = 8; // 4 MiB each
    let Some(h) = Harness::new(config("disk", 21700, res)).await else {
        return;
    };
    let specs = h.specs("d", 2).await;
    for spec in &specs {
        h.provisioner.create(spec).await.unwrap();
        h.provisioner.start(&spec.name).await.unwrap();
        assert!(h.wait_answering(spec.ports.user, 10).await);
    }
    let (code, output) = h
        .exec(&specs[0].name, &["/probe", "fill", "/state", "6"])
        .await;
    assert_eq!(code, 0, "{output}");
    let checks = h.provisioner.enforce_disk_quota().await.unwrap();
    let hog = checks.iter().find(|c| c.instance == specs[0].name).unwrap();
    assert!(hog.used_bytes > 6 << 20 && hog.stopped, "{hog:?}");
    assert_eq!(hog.quota_bytes, 4 << 20);
    let modest = checks.iter().find(|c| c.instance == specs[1].name).unwrap();
    assert!(!modest.stopped && modest.used_bytes < 1 << 20, "{modest:?}");
    assert_eq!(
        h.provisioner
            .inspect(&specs[0].name)
            .await
            .unwrap()
            .summary
            .state,
        InstanceState::Exited
    );
    assert_eq!(
        h.provisioner.health(&specs[1].name).await.unwrap(),
        Health::Answering
    );
    assert_eq!(
        h.provisioner.host_status().await.unwrap().disk_quota_mode,
        h.provisioner.disk_quota_mode()
    );

    // The watchdog task does the same on its own, and stops when told.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    tracker.spawn(
        h.provisioner
            .clone()
            .run_disk_watchdog(std::time::Duration::from_millis(200), shutdown.clone()),
    );
    tracker.close();
    let (code, output) = h
        .exec(&specs[1].name, &["/probe", "fill", "/state", "5"])
        .await;
    assert_eq!(code, 0, "{output}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while h
        .provisioner
        .inspect(&specs[1].name)
        .await
        .unwrap()
        .summary
        .state
        == InstanceState::Running
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the watchdog did not stop {}",
            specs[1].name
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(15), tracker.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn ensure_image_builds_a_missing_image_once() {
    let Some(h) = Harness::new(config("image", 21800, resources(1))).await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("berth-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY hello /hello\n").unwrap();
    std::fs::write(dir.join("hello"), "hello\n").unwrap();
    let tag = format!("berth-image-test:{}", std::process::id());
    let spec = ImageSpec::from_dir(&tag, &dir);
    assert_eq!(
        h.provisioner.ensure_image(&spec).await.unwrap(),
        ImageOutcome::Built
    );
    assert_eq!(
        h.provisioner.ensure_image(&spec).await.unwrap(),
        ImageOutcome::AlreadyPresent
    );
    let _ = h
        .docker
        .remove_image(
            &tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;

    let missing = ImageSpec {
        tag: format!("berth-image-missing:{}", std::process::id()),
        context: std::sync::Arc::new(ContextDir(dir.join("nowhere"))),
    };
    let error = h.provisioner.ensure_image(&missing).await.unwrap_err();
    assert!(
        matches!(error, ProvisionError::ImageContext { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&missing.tag), "{error}");
    let broken_dir = dir.join("broken");
    std::fs::create_dir_all(&broken_dir).unwrap();
    std::fs::write(
        broken_dir.join("Dockerfile"),
        "FROM scratch\nCOPY absent /absent\n",
    )
    .unwrap();
    let broken = ImageSpec::from_dir(
        format!("berth-image-broken:{}", std::process::id()),
        &broken_dir,
    );
    assert!(matches!(
        h.provisioner.ensure_image(&broken).await,
        Err(ProvisionError::ImageBuild { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pooled_instance_waits_for_its_assignment_and_runs_with_that_identity() {
    let Some(h) = Harness::new(config("assign", 20900, resources(2))).await else {
        return;
    };
    let spec = h.specs("a", 1).await.remove(0).awaiting_assignment();
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start(&spec.name).await.unwrap();
    // Started without an owner: it does not listen yet.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!h.provisioner.user_port_answers(spec.ports.user).await);
    h.provisioner.assign(&spec).await.unwrap();
    assert!(h.wait_answering(spec.ports.user, 10).await);
    assert_eq!(
        greeting(spec.ports.user).await.trim(),
        format!("berth-probe {}", spec.identity.contract_id)
    );
    // A container that is gone is named, so that its lease can make it again.
    h.provisioner.destroy(&spec.name).await.unwrap();
    assert!(matches!(
        h.provisioner.assign(&spec).await,
        Err(ProvisionError::NotFound { .. })
    ));
}

#[tokio::test]
async fn instances_cannot_reach_each_other_directly() {
    let config = common::config("isolate", 29600, common::resources(2));
    let Some(h) = Harness::new(config).await else {
        return;
    };
    let specs = h.specs("iso", 2).await;
    for spec in &specs {
        h.provisioner.create(spec).await.unwrap();
        h.provisioner.start(&spec.name).await.unwrap();
    }
    assert!(h.wait_answering(specs[1].ports.user, 20).await);
    // Both on the instances' network, which has no inter-container traffic.
    let network = h
        .docker
        .inspect_network(berth_provisioner::config::DEFAULT_NETWORK, None)
        .await
        .unwrap();
    let icc = network
        .options
        .unwrap_or_default()
        .get("com.docker.network.bridge.enable_icc")
        .cloned();
    assert_eq!(icc.as_deref(), Some("false"));
    let other = h
        .docker
        .inspect_container(&h.provisioner.container_name(&specs[1].name), None)
        .await
        .unwrap();
    let ip = other
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(berth_provisioner::config::DEFAULT_NETWORK).cloned())
        .and_then(|n| n.ip_address)
        .unwrap();
    // The other instance listens inside its container on the user port it publishes.
    let target = format!("{ip}:{}", specs[1].ports.user);
    let (code, out) = h
        .exec(&specs[0].name, &["/probe", "connect", &target])
        .await;
    assert_eq!(code, 1, "{target}: {out}");
    assert!(out.contains("unreachable"), "{out}");
    common::cleanup(&h.docker, &h.provisioner.config().namespace).await;
}

/// A private address outside Docker: a network namespace behind a veth pair, host side
/// `10.214.<n>.1/30`, namespace side `10.214.<n>.2/30` (nothing listens there, so a
/// connection that gets through is refused by the namespace's kernel). Removed when dropped.
struct PrivateNet {
    ns: String,
    peer: String,
}

impl PrivateNet {
    fn create(n: u8) -> PrivateNet {
        let id = std::process::id() % 100_000;
        let ns = format!("berth-egress-{id}");
        let (host, inner) = (format!("bge{id}h"), format!("bge{id}n"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (host_ip, inner_ip) = (format!("10.214.{n}.1/30"), format!("10.214.{n}.2/30"));
        run(&["netns", "add", &ns]);
        let net = PrivateNet {
            ns: ns.clone(),
            peer: format!("10.214.{n}.2"),
        };
        run(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
        run(&["link", "set", &inner, "netns", &ns]);
        run(&["addr", "add", &host_ip, "dev", &host]);
        run(&["link", "set", &host, "up"]);
        run(&[
            "netns", "exec", &ns, "ip", "addr", "add", &inner_ip, "dev", &inner,
        ]);
        run(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
        run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        let gateway = format!("10.214.{n}.1");
        run(&[
            "netns", "exec", &ns, "ip", "route", "add", "default", "via", &gateway,
        ]);
        net
    }
}

impl Drop for PrivateNet {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

#[tokio::test]
async fn instances_cannot_reach_private_networks_unless_the_host_allows_them() {
    let mut config = common::config("egress", 22000, common::resources(1));
    config.egress = berth_provisioner::EgressPolicy::Block;
    let Some(h) = Harness::new(config.clone()).await else {
        return;
    };
    let private = PrivateNet::create(77);
    let spec = h.specs("eg", 1).await.remove(0);
    h.provisioner.create(&spec).await.unwrap();
    h.provisioner.start(&spec.name).await.unwrap();
    assert!(h.wait_answering(spec.ports.user, 20).await);
    let status = h.provisioner.secure_network().await.unwrap();
    assert!(
        matches!(status, berth_provisioner::EgressStatus::Filtered { .. }),
        "{status}"
    );
    let target = format!("{}:9", private.peer);
    let probe = ["/probe", "connect", target.as_str()];
    let connect = || h.exec(&spec.name, &probe);

    // Blocked: the host answers "prohibited" for the private address.
    let (code, out) = connect().await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unreachable") && !out.contains("refused"),
        "{out}"
    );

    // The host allows that network: the packet now reaches the namespace, whose kernel
    // refuses the connection (nothing listens), so the path is open.
    let mut allowing = config.clone();
    allowing.egress_allow = vec!["10.214.77.0/30".parse().unwrap()];
    let again = berth_provisioner::DockerProvisioner::connect(allowing)
        .await
        .unwrap();
    again.secure_network().await.unwrap();
    let (code, out) = connect().await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused"),
        "reached the allowed network: {out}"
    );

    // And back to the default: blocked again.
    let blocking = berth_provisioner::DockerProvisioner::connect(config)
        .await
        .unwrap();
    blocking.secure_network().await.unwrap();
    let (_, out) = connect().await;
    assert!(!out.contains("refused"), "{out}");
    common::cleanup(&h.docker, &h.provisioner.config().namespace).await;
}
