//! The workspace's one test harness (a dev-dependency only): whether the Docker engine
//! answers, nested `cargo build`s of binaries the tests run, and the instance image.
//!
//! Tests that need Docker print SKIPPED and pass without an engine, unless
//! `BERTH_REQUIRE_DOCKER=1` (CI), which makes them fail.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The instance image the sandbox and the Docker tests run (`hotpocket/image/build.sh`).
pub const HOTPOCKET_IMAGE: &str = "berth-hotpocket:latest";

/// The Node.js instance image (`hotpocket/image/build-node.sh`): the instance image plus
/// Node.js and glibc from Debian's packages.
pub const HOTPOCKET_NODE_IMAGE: &str = "berth-hotpocket-node:latest";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The target directory the running test (or bench) binary was built into:
/// `<target>/<profile>/deps/<binary>`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// Whether `BERTH_REQUIRE_DOCKER=1`: tests that need Docker fail instead of skipping.
pub fn docker_required() -> bool {
    std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// Reports an unreachable Docker engine: panics when `BERTH_REQUIRE_DOCKER=1`, otherwise
/// prints SKIPPED (the caller then returns).
pub fn docker_unreachable(why: impl Display) {
    if docker_required() {
        panic!("BERTH_REQUIRE_DOCKER=1 but the Docker engine is unreachable: {why}");
    }
    eprintln!("SKIPPED: the Docker engine is unreachable: {why}");
}

/// Whether the Docker engine answers `docker info`; see [`docker_unreachable`] for when it
/// does not.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        docker_unreachable("`docker info` fails");
    }
    ok
}

/// A `cargo` command in the repository root, without the variables cargo sets for the
/// running test, which would make the nested build look different from a plain
/// `cargo build` and rebuild dependencies.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let per_test = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR";
        if per_test {
            cmd.env_remove(&name);
        }
    }
    cmd.current_dir(root());
    cmd
}

/// Runs `cargo build <args>` (dev profile) into the running test's target directory once
/// per process and set of arguments; returns `<target>/debug`, where the artifacts are.
pub fn cargo_build(args: &[&str]) -> PathBuf {
    cargo_build_profile("dev", args)
}

/// [`cargo_build`] in another profile (a bench builds what it runs in its own profile);
/// returns the profile's output directory.
pub fn cargo_build_profile(profile: &str, args: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<Vec<String>, PathBuf>>> = OnceLock::new();
    let key: Vec<String> = std::iter::once(profile)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = built.get(&key) {
        return dir.clone();
    }
    let target = target_dir();
    let status = cargo()
        .args(["build", "--profile", profile])
        .args(args)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build {} failed", args.join(" "));
    let dir = target.join(if profile == "dev" { "debug" } else { profile });
    built.insert(key, dir.clone());
    dir
}

/// A binary of a workspace package, built by a nested `cargo build` (once per process).
pub fn bin(package: &str, name: &str) -> PathBuf {
    let bin = cargo_build(&["-p", package, "--bin", name]).join(name);
    assert!(bin.is_file(), "{}", bin.display());
    bin
}

/// Whether the engine has `image`.
pub fn has_image(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The instance image [`HOTPOCKET_IMAGE`] and the example bundles in `examples/bundles`,
/// built by `hotpocket/image/build.sh` when either is missing (once per process).
pub fn ensure_hotpocket_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bundle = root().join("examples/bundles/counter.zip");
        if !has_image(HOTPOCKET_IMAGE) || !bundle.is_file() {
            let status = Command::new(root().join("hotpocket/image/build.sh"))
                .current_dir(root())
                .status()
                .unwrap();
            assert!(status.success(), "hotpocket/image/build.sh failed");
        }
    });
}

/// The Node.js instance image [`HOTPOCKET_NODE_IMAGE`], after [`ensure_hotpocket_image`]:
/// `hotpocket/image/build-node.sh` runs once per process. It does nothing when the image
/// exists and was built on the current [`HOTPOCKET_IMAGE`]; otherwise it downloads Debian's
/// packages (network to the Debian mirror) and builds it. Returns the image's id, so that a
/// later re-tag does not change what the caller runs.
pub fn ensure_hotpocket_node_image() -> String {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            ensure_hotpocket_image();
            let status = Command::new(root().join("hotpocket/image/build-node.sh"))
                .current_dir(root())
                .status()
                .unwrap();
            assert!(status.success(), "hotpocket/image/build-node.sh failed");
            let out = Command::new("docker")
                .args([
                    "image",
                    "inspect",
                    "--format",
                    "{{.Id}}",
                    HOTPOCKET_NODE_IMAGE,
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out).trim().to_owned()
        })
        .clone()
}

/// A finished command's stdout, lossily decoded.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished command's stderr, lossily decoded.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "the command failed ({}): stdout {} stderr {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts exit code 1 (a failure, not a usage error) and returns stderr.
pub fn fails(o: std::process::Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected failure: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

/// Asserts exit code 2 (a usage error: what clap rejects) with nothing on stdout, and returns
/// stderr.
pub fn usage_error(o: std::process::Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected a usage error: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "a usage error prints no data");
    stderr(&o)
}
