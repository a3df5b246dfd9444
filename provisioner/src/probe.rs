//! The probe image: a stand-in for the hotpocket runtime with the same container contract
//! (listens on HP_USER_PORT / HP_PEER_PORT, writes to the state volume), plus commands that
//! try to exceed the instance's limits. Used by the tests and the benchmark; its context is
//! generated here by compiling `probe/main.rs` (std only) into a static binary with `rustc`.
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::image::{BuildContext, ImageSpec};
use crate::spec::InstanceSpec;

const SOURCE: &str = include_str!("../probe/main.rs");

/// The Dockerfile of the probe image. `/state` is owned by 10001 in the image, so Docker copies
/// that ownership into a new, empty named volume mounted there.
pub const DOCKERFILE: &str = "FROM scratch\n\
COPY probe /probe\n\
COPY --chown=10001:10001 state /state\n\
USER 10001:10001\n\
ENTRYPOINT []\n\
CMD [\"/probe\", \"run\", \"--state-dir\", \"/state\"]\n";

/// Builds the probe's context in a directory of its own.
#[derive(Debug, Clone)]
pub struct ProbeContext {
    pub dir: PathBuf,
}

impl BuildContext for ProbeContext {
    fn prepare(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(self.dir.join("state"))?;
        std::fs::write(self.dir.join("state/.keep"), b"")?;
        std::fs::write(self.dir.join("Dockerfile"), DOCKERFILE)?;
        let source = self.dir.join("main.rs");
        std::fs::write(&source, SOURCE)?;
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        let output = Command::new(&rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "strip=symbols",
                "-C",
                "target-feature=+crt-static",
            ])
            .arg(&source)
            .arg("-o")
            .arg(self.dir.join("probe"))
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "{rustc} could not compile the probe: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(self.dir.clone())
    }
}

/// The probe image's tag: it changes whenever the probe's source or Dockerfile does.
pub fn tag() -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    SOURCE.hash(&mut hasher);
    DOCKERFILE.hash(&mut hasher);
    format!("berth-probe:{:016x}", hasher.finish())
}

/// The probe image, with its context generated under `work_dir`.
pub fn image(work_dir: impl Into<PathBuf>) -> ImageSpec {
    ImageSpec {
        tag: tag(),
        context: Arc::new(ProbeContext {
            dir: work_dir.into(),
        }),
    }
}

/// Turns a hotpocket spec into one that runs the probe instead (same env, ports and state).
pub fn instance(mut spec: InstanceSpec) -> InstanceSpec {
    spec.image = tag();
    spec.command = ["/probe", "run", "--state-dir"].map(String::from).to_vec();
    spec.command.push(spec.state_dir.clone());
    spec
}
