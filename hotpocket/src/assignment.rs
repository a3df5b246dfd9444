//! `hotpocket run --await-assignment`: a pooled instance, started before it is sold, waits
//! for the host to assign it. It blocks in the kernel on an inotify watch of its state
//! directory (no polling, no CPU) until the host writes `assigned`, which it does after the
//! instance's identity in `assign.env` (both in one archive, in that order). The names and
//! the `HP_*` lines are the provisioner's (`berth_provisioner::spec::ASSIGNMENT_ENV`,
//! `ASSIGNED_MARKER`, `InstanceSpec::assignment_env`). A restarted instance finds the marker
//! at once and runs with the config it created at its first start.

use std::path::{Path, PathBuf};

use rustix::fs::inotify;
use thiserror::Error;

/// File in the state directory that hands a pooled instance its identity as `HP_*` lines.
pub const ASSIGNMENT_ENV: &str = "assign.env";
/// File in the state directory written after [`ASSIGNMENT_ENV`]: the instance may start.
pub const ASSIGNED_MARKER: &str = "assigned";

#[derive(Debug, Error)]
pub enum AssignmentError {
    #[error("cannot watch {path} for the assignment")]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the assignment {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("assignment {path} line {line}: {problem}")]
    Bad {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The identity a pooled instance is handed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub contract_id: Option<String>,
    pub owner: Option<String>,
    pub node_secret: Option<String>,
}

/// Blocks until [`ASSIGNED_MARKER`] exists in `state_dir`.
pub fn wait(state_dir: &Path) -> Result<(), AssignmentError> {
    let watch_err = |source: rustix::io::Errno| AssignmentError::Watch {
        path: state_dir.to_owned(),
        source: source.into(),
    };
    let marker = state_dir.join(ASSIGNED_MARKER);
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC).map_err(watch_err)?;
    // The watch is in place before the first look, so a marker written in between is seen.
    inotify::add_watch(
        &fd,
        state_dir,
        inotify::WatchFlags::CREATE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::CLOSE_WRITE,
    )
    .map_err(watch_err)?;
    let mut events = [0u8; 4096];
    let mut waited = false;
    while !marker.exists() {
        if !waited {
            tracing::info!(dir = %state_dir.display(), "pooled: waiting for the assignment");
            waited = true;
        }
        // Any event in the directory wakes us; then look again.
        match rustix::io::read(&fd, &mut events) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(watch_err(e)),
        }
    }
    Ok(())
}

/// Reads the identity in `state_dir`'s [`ASSIGNMENT_ENV`].
pub fn read(state_dir: &Path) -> Result<Assignment, AssignmentError> {
    let path = state_dir.join(ASSIGNMENT_ENV);
    let text = std::fs::read_to_string(&path).map_err(|source| AssignmentError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text, &path)
}

fn parse(text: &str, path: &Path) -> Result<Assignment, AssignmentError> {
    let mut assignment = Assignment::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(AssignmentError::Bad {
                path: path.to_owned(),
                line: index + 1,
                problem: "expected KEY=value".to_owned(),
            });
        };
        let slot = match key {
            "HP_CONTRACT_ID" => &mut assignment.contract_id,
            "HP_OWNER_PUBKEY" => &mut assignment.owner,
            "HP_NODE_SECRET" => &mut assignment.node_secret,
            other => {
                tracing::warn!(key = other, "assignment: unknown key ignored");
                continue;
            }
        };
        *slot = Some(value.to_owned());
    }
    Ok(assignment)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_provisioners_lines_parse_and_a_bad_line_is_named() {
        let path = Path::new("/state/assign.env");
        let a = parse(
            "HP_CONTRACT_ID=3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10\nHP_OWNER_PUBKEY=edab\nHP_NODE_SECRET=00\nHP_OTHER=1\n",
            path,
        )
        .unwrap();
        assert_eq!(
            a.contract_id.as_deref(),
            Some("3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10")
        );
        assert_eq!(a.owner.as_deref(), Some("edab"));
        assert_eq!(a.node_secret.as_deref(), Some("00"));
        let err = parse("HP_CONTRACT_ID\n", path).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn waiting_ends_when_the_marker_appears_and_at_once_when_it_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_owned();
        let waiter = std::thread::spawn(move || wait(&state));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished());
        std::fs::write(dir.path().join(ASSIGNMENT_ENV), "HP_CONTRACT_ID=x\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "the identity alone does not start it"
        );
        std::fs::write(dir.path().join(ASSIGNED_MARKER), "assigned\n").unwrap();
        waiter.join().unwrap().unwrap();
        wait(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap().contract_id.as_deref(), Some("x"));
    }
}
