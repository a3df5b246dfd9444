//! Read-only views of the contract state for read requests: as on HotPocket, a read request
//! runs against the state of the last executed ledger, where writes fail, and never against
//! the live state a round is changing.
//!
//! A view is a directory `<contract_fs>/.views/<n>/state` (with `../patch.cfg` beside it) of
//! read-only files (mode 0444, or 0555
//! for executables) in read-only directories. The round loop builds one after every
//! execution once a read request asked for it: files unchanged since the previous view are
//! hard-linked from it, the others copied from the live state. So a view costs one copy of
//! each file that changed, plus links. A view is removed when the last run using it ends
//! and a newer view exists.
//!
//! The contract runs as the same user as the runtime, so it could `chmod` its way back to
//! writing; a view whose file no longer looks as it was made is not linked from again.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::state::{NodeRef, StateTree};

/// One read-only view of the state.
#[derive(Debug)]
pub struct ReadView {
    /// `<contract_fs>/.views/<n>`, removed with the view.
    base: PathBuf,
    /// `base/state`.
    dir: PathBuf,
    /// File hash and stat of every file, by path, as made.
    files: HashMap<PathBuf, ([u8; 32], StatKey)>,
}

impl ReadView {
    /// The view's directory: the working directory of a read-only run.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ReadView {
    fn drop(&mut self) {
        if let Err(e) = remove_view(&self.base) {
            tracing::warn!(error = %berth_log::chain(&e), dir = %self.base.display(), "removing a read-only view failed");
        }
    }
}

/// Makes a view's directories writable again, then removes it.
fn remove_view(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    make_dirs_writable(dir)?;
    std::fs::remove_dir_all(dir)
}

fn make_dirs_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// (inode, size, mtime): what a file looked like when a view was made.
type StatKey = (u64, u64, i64);

fn stat_key(m: &std::fs::Metadata) -> StatKey {
    (m.ino(), m.size(), m.mtime())
}

/// The views of one node.
#[derive(Debug)]
pub struct ReadViews {
    root: PathBuf,
    next: u64,
    current: Option<Arc<ReadView>>,
}

impl ReadViews {
    /// Views under `<contract_fs>/.views`; views left by an earlier run are removed.
    pub fn new(contract_fs: &Path) -> std::io::Result<ReadViews> {
        let root = contract_fs.join(".views");
        remove_view(&root)?;
        std::fs::create_dir_all(&root)?;
        Ok(ReadViews {
            root,
            next: 0,
            current: None,
        })
    }

    /// Builds the view of `state_dir` as `tree` describes it (hashed just now, with no run
    /// in between) and of `patch` (`../patch.cfg`), and makes it the current one.
    pub fn refresh(
        &mut self,
        state_dir: &Path,
        patch: &Path,
        tree: &StateTree,
    ) -> std::io::Result<Arc<ReadView>> {
        let base = self.root.join(self.next.to_string());
        self.next += 1;
        remove_view(&base)?;
        std::fs::create_dir_all(&base)?;
        let mut view = ReadView {
            dir: base.join("state"),
            base,
            files: HashMap::new(),
        };
        let built = build(
            state_dir,
            tree,
            Path::new(""),
            self.current.as_deref(),
            &mut view,
        )
        .and_then(|()| {
            if patch.is_file() {
                let dest = view.base.join("patch.cfg");
                std::fs::copy(patch, &dest)?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o444))?;
            }
            std::fs::set_permissions(&view.base, std::fs::Permissions::from_mode(0o555))
        });
        if let Err(e) = built {
            // Dropping the half-built view removes it.
            drop(view);
            return Err(e);
        }
        let view = Arc::new(view);
        self.current = Some(view.clone());
        Ok(view)
    }
}

fn build(
    state_dir: &Path,
    tree: &StateTree,
    rel: &Path,
    prev: Option<&ReadView>,
    view: &mut ReadView,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let here = view.dir.join(rel);
    std::fs::create_dir_all(&here)?;
    std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o755))?;
    let entries = tree.listing(rel).unwrap_or_default().to_vec();
    for e in &entries {
        let child = rel.join(std::ffi::OsStr::from_bytes(&e.name));
        let dest = view.dir.join(&child);
        match &e.node {
            NodeRef::Dir(_) => build(state_dir, tree, &child, prev, view)?,
            NodeRef::Link(target) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &dest)?
            }
            // Read requests see no FIFOs, sockets, devices or unreadable files: none of
            // them is opened by the node.
            NodeRef::Special(_) => {}
            NodeRef::File(hash) => {
                let reuse = prev.and_then(|p| {
                    let (h, stat) = p.files.get(&child)?;
                    let src = p.dir.join(&child);
                    let now = std::fs::symlink_metadata(&src).ok()?;
                    (h == hash && stat_key(&now) == *stat && now.mode() & 0o222 == 0).then_some(src)
                });
                match reuse {
                    Some(src) => std::fs::hard_link(&src, &dest)?,
                    None => {
                        std::fs::copy(state_dir.join(&child), &dest)?;
                        let exec = tree.manifest(&child).is_some_and(|m| m.executable);
                        let mode = if exec { 0o555 } else { 0o444 };
                        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
                    }
                }
                let meta = std::fs::symlink_metadata(&dest)?;
                view.files.insert(child, (*hash, stat_key(&meta)));
            }
        }
    }
    std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o555))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_view_is_read_only_and_the_next_links_what_did_not_change() {
        let fs = tempfile::tempdir().unwrap();
        let state = fs.path().join("state");
        std::fs::create_dir_all(state.join("sub")).unwrap();
        std::fs::write(state.join("a"), b"one").unwrap();
        std::fs::write(state.join("sub/b"), b"two").unwrap();
        let mut tree = StateTree::default();
        tree.rehash(&state).unwrap();
        let mut views = ReadViews::new(fs.path()).unwrap();
        let patch = fs.path().join("patch.cfg");
        std::fs::write(&patch, b"{}").unwrap();
        let first = views.refresh(&state, &patch, &tree).unwrap();
        assert_eq!(
            std::fs::read(first.dir().join("../patch.cfg")).unwrap(),
            b"{}"
        );
        assert_eq!(std::fs::read(first.dir().join("sub/b")).unwrap(), b"two");
        let mode = std::fs::metadata(first.dir().join("a")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o444);
        let dmode = std::fs::metadata(first.dir().join("sub")).unwrap().mode();
        assert_eq!(dmode & 0o777, 0o555);

        std::fs::write(state.join("a"), b"changed").unwrap();
        tree.rehash(&state).unwrap();
        let second = views.refresh(&state, &patch, &tree).unwrap();
        assert_eq!(std::fs::read(second.dir().join("a")).unwrap(), b"changed");
        let ino = |v: &ReadView, p: &str| std::fs::metadata(v.dir().join(p)).unwrap().ino();
        assert_eq!(ino(&first, "sub/b"), ino(&second, "sub/b"), "linked");
        assert_ne!(ino(&first, "a"), ino(&second, "a"), "copied");

        let old = first.dir().parent().unwrap().to_path_buf();
        drop(first);
        assert!(!old.exists(), "a view nobody uses is removed");
        assert!(second.dir().exists());
    }
}
