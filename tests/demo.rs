//! `berth sandbox --demo`: the newcomer's command runs the whole tenant flow on the real
//! Docker engine and exits 0 only if every step worked; it leaves no instance behind.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use berth_e2e::{berth_bin, counter_bundle, docker_available, ports};

/// Runs `berth --json sandbox --demo <args>` with the counter bundle on ports from `base`;
/// returns its report (it must have succeeded) and its stderr.
fn run_demo(args: &[&str], base: u16) -> (serde_json::Value, String) {
    let tmp = tempfile::tempdir().unwrap();
    let (user, peer) = ports(base);
    let out = Command::new(berth_bin())
        .args(["--json", "sandbox", "--demo", "--bundle"])
        .arg(counter_bundle())
        .args(args)
        .args(["--user-ports", &user, "--peer-ports", &peer])
        .env("BERTH_HOME", tmp.path().join("home"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "demo {args:?} failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    (serde_json::from_str(&stdout).unwrap(), stderr)
}

#[test]
fn sandbox_demo_runs_the_whole_tenant_flow_and_leaves_nothing_behind() {
    if !docker_available() {
        return;
    }
    let (report, stderr) = run_demo(&[], 27300);
    assert_eq!(report["ok"], true, "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            s["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [
            "hosts",
            "acquire",
            "deploy",
            "input",
            "output",
            "extend",
            "terminate",
            "instance gone"
        ]
    );
    // Progress with timings went to stderr, one line per step.
    for step in &steps {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(step) && l.contains("ok") && l.contains(" s")),
            "no progress line for {step}:\n{stderr}"
        );
    }
    // The counter counted: two inputs, then a read of the same value.
    let output = report["steps"][4]["detail"].as_str().unwrap();
    assert!(output.contains("→ 2"), "{output}");
    // Nothing of the sandbox is left on the engine.
    let namespace = report["sandbox"]["namespace"].as_str().unwrap();
    let left = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=berth.namespace={namespace}"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left behind"
    );
}

#[test]
fn sandbox_cluster_demo_creates_signs_replaces_and_terminates() {
    if !docker_available() {
        return;
    }
    let (report, _) = run_demo(&["--cluster", "3"], 27500);
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            s["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [
            "cluster create",
            "input",
            "signed by all",
            "replace node",
            "after replace",
            "terminate",
            "instances gone"
        ]
    );
    assert_eq!(report["sandbox"]["hosts"].as_array().unwrap().len(), 4);
    let signed = report["steps"][2]["detail"].as_str().unwrap();
    assert!(signed.contains("all 3 nodes"), "{signed}");
    // Nothing of any of the four hosts is left on the engine.
    let namespace = report["sandbox"]["namespace"].as_str().unwrap();
    let left = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Label \"berth.namespace\"}}"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout)
            .lines()
            .any(|ns| ns.starts_with(namespace)),
        "containers left behind"
    );
}
