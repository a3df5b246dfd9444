//! Keeps contract processes (the contract, `install.sh`, `post_exec.sh` and all they start)
//! out of the node's own files with Landlock.
//!
//! The contract runs in `<node>/contract_fs/state` and used to be able to reach `../..`:
//! `hp.cfg` (node and owner keys), `ledger.sqlite` and `tls/`. The node and its contract share a
//! user id inside the container (which has no capabilities to switch ids), so file modes cannot
//! separate them; Landlock can, unprivileged. `hotpocket exec-contract` applies the rules to
//! itself just before it execs the contract, so they hold for every process the contract starts
//! and cannot be lifted:
//! - the working directory (the state, or the next state for `install.sh`): everything;
//! - `../patch.cfg`: read and write (HotPocket lets a contract change its config that way);
//! - `/dev`: read and write of existing files (`/dev/null`, `/dev/urandom`);
//! - `/tmp`: everything (the instance's small tmpfs), unless the node directory is in it;
//! - every other file of the machine: read and execute, **except the node directory**.
//!
//! Where the kernel has Landlock ABI 6, they also cannot signal processes outside (`kill` of
//! the node) nor connect to abstract Unix sockets made outside.
//!
//! Landlock grants by hierarchy, so "all but the node directory" is spelled out as the
//! siblings of each directory on the way from `/` down to it. Symbolic links among them are
//! left out: what they point at is reachable under its own name if it is allowed at all.
//!
//! Landlock needs Linux 5.13; [`probe`] tells the node at start whether the kernel (and the
//! container's seccomp profile) offers it, and the node logs what it found.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};

/// The newest Landlock ABI these rules use; older kernels enforce what they know.
const ABI_USED: ABI = ABI::V5;

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("contract confinement: reading directory `{}`", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("contract confinement: the node directory `{}` is not absolute", .0.display())]
    NotAbsolute(PathBuf),
    #[error("contract confinement: landlock")]
    Landlock(#[from] landlock::RulesetError),
}

/// What a contract process may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The node's directory: hidden, except what the fields below open.
    pub hidden: PathBuf,
    /// Full access (the process's working directory).
    pub writable: PathBuf,
    /// Files it may read and write though they are in the hidden directory (`patch.cfg`).
    pub rw_files: Vec<PathBuf>,
}

/// How far the kernel enforced the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    /// An older Landlock ABI: writes outside the allowed places are refused, some newer
    /// kinds of access (e.g. truncation, device ioctls) are not.
    Partly,
    /// No Landlock in this kernel, or the seccomp profile refuses it.
    Not,
}

/// The newest Landlock ABI (1 to 5) this kernel enforces in full, or 0 when it has none or
/// the seccomp profile refuses it. Creates (and drops) rulesets; restricts nothing.
pub fn probe() -> u8 {
    use landlock::{CompatLevel, Compatible};
    [ABI::V5, ABI::V4, ABI::V3, ABI::V2, ABI::V1]
        .into_iter()
        .find(|abi| {
            Ruleset::default()
                .set_compatibility(CompatLevel::HardRequirement)
                .handle_access(AccessFs::from_all(*abi))
                .and_then(|r| r.create())
                .is_ok()
        })
        .map_or(0, |abi| abi as u8)
}

/// Applies `c` to this process (and so to everything it execs and starts). Call it in a
/// single-threaded process just before exec (`hotpocket exec-contract` does).
pub fn confine_self(c: &Confinement) -> Result<Enforced, ConfineError> {
    let read = AccessFs::from_read(ABI_USED);
    let all = AccessFs::from_all(ABI_USED);
    let dev = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::ReadDir | AccessFs::Truncate;
    let rw_file = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;

    let readable = readable_outside(&c.hidden)?;
    let mut ruleset = Ruleset::default()
        .handle_access(all)?
        // Landlock ABI 6: no signals to processes outside (the node), no abstract Unix
        // sockets made outside. Older kernels skip it (best effort).
        .scope(Scope::from_all(ABI::V6))?
        .create()?
        .add_rules(path_beneath_rules(&readable, read))?
        .add_rules(path_beneath_rules([&c.writable], all))?;
    let dev_dir = Path::new("/dev");
    if !c.hidden.starts_with(dev_dir) {
        ruleset = ruleset.add_rules(path_beneath_rules([dev_dir], dev))?;
    }
    // The instance's own scratch space (a small tmpfs in the container), unless the node
    // directory is inside it (as in tests on a host).
    let tmp = Path::new("/tmp");
    if !c.hidden.starts_with(tmp) {
        ruleset = ruleset.add_rules(path_beneath_rules([tmp], all))?;
    }
    let files: Vec<&PathBuf> = c.rw_files.iter().filter(|f| f.is_file()).collect();
    if !files.is_empty() {
        ruleset = ruleset.add_rules(path_beneath_rules(files, rw_file))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partly,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}

/// Every entry of the file system that is not `hidden` nor on the way to it, as the fewest
/// hierarchies: the siblings of each directory from `/` down to `hidden`. Symbolic links are
/// left out (see the module docs).
fn readable_outside(hidden: &Path) -> Result<Vec<PathBuf>, ConfineError> {
    if !hidden.is_absolute() {
        return Err(ConfineError::NotAbsolute(hidden.to_owned()));
    }
    let mut out = Vec::new();
    let mut dir = PathBuf::from("/");
    for component in hidden.components().skip(1) {
        let next: OsString = component.as_os_str().to_owned();
        let entries = std::fs::read_dir(&dir).map_err(|source| ConfineError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            if entry.file_name() == next {
                continue;
            }
            match entry.file_type() {
                Ok(t) if !t.is_symlink() => out.push(entry.path()),
                _ => {}
            }
        }
        dir.push(component);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_way_down_to_the_hidden_directory_is_left_out_and_its_siblings_are_in() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().canonicalize().unwrap();
        let node = base.join("node");
        std::fs::create_dir_all(node.join("contract_fs/state")).unwrap();
        std::fs::create_dir(base.join("other")).unwrap();
        std::fs::write(base.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(&node, base.join("link-to-node")).unwrap();
        let readable = readable_outside(&node).unwrap();
        assert!(readable.contains(&base.join("other")));
        assert!(readable.contains(&base.join("file")));
        assert!(
            !readable.iter().any(|p| p.starts_with(&node)),
            "{readable:?}"
        );
        assert!(!readable.contains(&base.join("link-to-node")));
        // No ancestor of the node directory is granted as a whole.
        assert!(
            !readable.iter().any(|p| node.starts_with(p)),
            "{readable:?}"
        );
        assert!(readable.contains(&PathBuf::from("/usr")) || !Path::new("/usr").exists());
    }

    #[test]
    fn a_relative_node_directory_is_refused() {
        assert!(matches!(
            readable_outside(Path::new("node")),
            Err(ConfineError::NotAbsolute(_))
        ));
    }
}
