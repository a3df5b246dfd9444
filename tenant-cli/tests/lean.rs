//! A tenant's `cargo install` of `berth` builds none of the host side: the sandbox is the
//! separate `berth-sandbox` binary.
#![allow(clippy::unwrap_used)]

#[test]
fn berth_tenant_depends_on_no_host_side_crate() {
    let out = berth_test_support::cargo()
        .args([
            "tree",
            "-p",
            "berth-tenant",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("berth-hotpocket-client"), "{tree}");
    // `--prefix none` lines are `<crate> v<version> [(path)] [(*)]`.
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    for name in [
        "berth-agent",
        "berth-localnet",
        "berth-provisioner",
        "berth-hotpocket",
        "bollard",
        "rusqlite",
    ] {
        assert!(
            !crates.contains(&name),
            "berth-tenant depends on {name}:\n{tree}"
        );
    }
}
