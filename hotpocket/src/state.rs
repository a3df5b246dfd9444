//! The contract state's hash tree: what a ledger's `state_hash` is, and what state sync
//! fetches and verifies piece by piece.
//!
//! - A **block** is up to [`BLOCK_SIZE`] bytes of a file; its hash is `blake3(bytes)`.
//! - A **file** is described by its manifest (executable bit, size, block hashes); its hash
//!   is `blake3("berth-state-file-v1" ‖ postcard(manifest))`.
//! - A **directory** is its entries sorted by name, each a sub-directory's hash, a file's
//!   hash or a symlink's target; its hash is `blake3("berth-state-dir-v1" ‖
//!   postcard(entries))`.
//! - The state hash is the hash of the state directory itself.
//!
//! A node keeps the tree of its own state in memory ([`StateTree`], about 40 bytes per
//! block and per entry), rebuilt after every execution from a stat cache, so that unchanged
//! files are not read again. The tree answers peers' requests by hash ([`StateTree::serve`])
//! and tells a syncing node which parts it already has.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::{hash_parts, Hash};

/// Size of a file block, the unit state sync fetches.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Longest entry name accepted from a peer (Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

const FILE_TAG: &[u8] = b"berth-state-file-v1";
const DIR_TAG: &[u8] = b"berth-state-dir-v1";

/// What a directory entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRef {
    Dir(Hash),
    File(Hash),
    /// A symbolic link and its target, which is its whole content.
    Link(Vec<u8>),
    /// Something the node does not read: a FIFO, a socket, a device, or a regular file it
    /// may not open. Hashed by its kind only, so one such file can neither block the round
    /// loop (a FIFO opened for reading waits for a writer) nor stop it (`EACCES`).
    Special(SpecialKind),
}

/// The kind of a [`NodeRef::Special`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// A regular file this node may not open for reading (mode 000 for a non-root node).
    Unreadable,
}

impl SpecialKind {
    /// The kind of a non-regular, non-directory, non-symlink file type; None for those.
    pub fn of(kind: std::fs::FileType) -> Option<SpecialKind> {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            Some(SpecialKind::Fifo)
        } else if kind.is_socket() {
            Some(SpecialKind::Socket)
        } else if kind.is_char_device() {
            Some(SpecialKind::CharDevice)
        } else if kind.is_block_device() {
            Some(SpecialKind::BlockDevice)
        } else {
            None
        }
    }
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name, as bytes (no `/`, not `.` or `..`).
    pub name: Vec<u8>,
    pub node: NodeRef,
}

/// A file's description: its blocks' hashes in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    pub executable: bool,
    pub size: u64,
    pub blocks: Vec<Hash>,
}

impl FileManifest {
    /// The file's hash.
    pub fn hash(&self) -> Hash {
        let body = postcard::to_allocvec(self).unwrap_or_default();
        hash_parts([FILE_TAG, body.as_slice()])
    }

    /// Whether the block count fits the size.
    pub fn is_consistent(&self) -> bool {
        self.blocks.len() as u64 == self.size.div_ceil(BLOCK_SIZE)
    }

    /// Length of block `index`.
    pub fn block_len(&self, index: usize) -> u64 {
        let start = index as u64 * BLOCK_SIZE;
        self.size.saturating_sub(start).min(BLOCK_SIZE)
    }
}

/// A directory's hash from its entries (sorted by name).
pub fn dir_hash(entries: &[DirEntry]) -> Hash {
    let body = postcard::to_allocvec(entries).unwrap_or_default();
    hash_parts([DIR_TAG, body.as_slice()])
}

/// Whether a listing received from a peer is well formed: names valid, sorted, unique.
pub fn listing_is_valid(entries: &[DirEntry]) -> Result<(), &'static str> {
    for e in entries {
        if e.name.is_empty()
            || e.name.len() > MAX_NAME_LEN
            || e.name == b"."
            || e.name == b".."
            || e.name.contains(&b'/')
            || e.name.contains(&0)
        {
            return Err("an entry name is not a plain file name");
        }
    }
    if entries.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err("entries are not sorted by name or repeat a name");
    }
    Ok(())
}

/// Where a piece of this node's state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    File(PathBuf),
    Block(PathBuf, u32),
}

#[derive(Debug, Clone)]
struct FileNode {
    /// (inode, size, mtime s, mtime ns) when hashed.
    stat: (u64, u64, i64, i64),
    manifest: FileManifest,
    hash: Hash,
}

/// The hash tree of a state directory, with an index by hash.
#[derive(Debug, Default, Clone)]
pub struct StateTree {
    root: Hash,
    dirs: HashMap<PathBuf, (Hash, Vec<DirEntry>)>,
    files: HashMap<PathBuf, FileNode>,
    by_hash: HashMap<Hash, Location>,
}

impl StateTree {
    /// The root hash (the state hash) of the last [`StateTree::rehash`].
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Hashes the tree at `dir`, reading only files whose inode, size or mtime changed since
    /// the last call.
    pub fn rehash(&mut self, dir: &Path) -> std::io::Result<Hash> {
        let mut next = StateTree::default();
        let root = hash_dir_into(dir, Path::new(""), &self.files, &mut next)?;
        next.root = root;
        next.index();
        *self = next;
        Ok(root)
    }

    fn index(&mut self) {
        let mut by_hash = HashMap::new();
        for (path, (hash, _)) in &self.dirs {
            by_hash.insert(*hash, Location::Dir(path.clone()));
        }
        for (path, f) in &self.files {
            by_hash.insert(f.hash, Location::File(path.clone()));
            for (i, b) in f.manifest.blocks.iter().enumerate() {
                by_hash
                    .entry(*b)
                    .or_insert_with(|| Location::Block(path.clone(), i as u32));
            }
        }
        self.by_hash = by_hash;
    }

    /// Where a piece with this hash is, if this tree has it.
    pub fn locate(&self, hash: &Hash) -> Option<&Location> {
        self.by_hash.get(hash)
    }

    /// A directory's entries.
    pub fn listing(&self, path: &Path) -> Option<&[DirEntry]> {
        self.dirs.get(path).map(|(_, e)| e.as_slice())
    }

    /// A file's manifest.
    pub fn manifest(&self, path: &Path) -> Option<&FileManifest> {
        self.files.get(path).map(|f| &f.manifest)
    }

    /// Whether the file at `path` (under `dir`) is still as it was hashed.
    pub fn file_unchanged(&self, dir: &Path, path: &Path) -> bool {
        let Some(f) = self.files.get(path) else {
            return false;
        };
        std::fs::symlink_metadata(dir.join(path)).is_ok_and(|m| stat_key(&m) == f.stat)
    }

    /// Number of files and blocks in the tree.
    pub fn counts(&self) -> (usize, usize) {
        let blocks = self.files.values().map(|f| f.manifest.blocks.len()).sum();
        (self.files.len(), blocks)
    }
}

/// Reads block `index` of the file at `path`, and returns it if its hash is `expect`.
pub fn read_block(path: &Path, index: u32, expect: &Hash) -> Option<Vec<u8>> {
    let mut file = open_regular(path).ok()?;
    file.seek(SeekFrom::Start(u64::from(index) * BLOCK_SIZE))
        .ok()?;
    let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
    file.take(BLOCK_SIZE).read_to_end(&mut buf).ok()?;
    (hash_parts([buf.as_slice()]) == *expect).then_some(buf)
}

fn stat_key(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

fn hash_dir_into(
    root: &Path,
    rel: &Path,
    cache: &HashMap<PathBuf, FileNode>,
    out: &mut StateTree,
) -> std::io::Result<Hash> {
    let mut names: Vec<(Vec<u8>, std::fs::DirEntry)> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e)))
        .collect::<Result<_, _>>()?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = Vec::with_capacity(names.len());
    for (name, entry) in names {
        let child = rel.join(entry.file_name());
        let full = root.join(&child);
        let meta = std::fs::symlink_metadata(&full)?;
        let node = if meta.file_type().is_symlink() {
            NodeRef::Link(std::fs::read_link(&full)?.as_os_str().as_bytes().to_vec())
        } else if meta.is_dir() {
            NodeRef::Dir(hash_dir_into(root, &child, cache, out)?)
        } else if let Some(kind) = SpecialKind::of(meta.file_type()) {
            tracing::debug!(path = %full.display(), ?kind, "special file in the state hashed by its kind");
            NodeRef::Special(kind)
        } else {
            let stat = stat_key(&meta);
            let executable = meta.permissions().mode() & 0o111 != 0;
            let node = match cache.get(&child) {
                Some(f) if f.stat == stat && f.manifest.executable == executable => f.clone(),
                _ => match hash_file(&full, executable) {
                    Ok(manifest) => {
                        let hash = manifest.hash();
                        FileNode {
                            stat,
                            manifest,
                            hash,
                        }
                    }
                    Err(HashFileError::Unreadable(e)) => {
                        tracing::warn!(path = %full.display(), error = %e, "a state file this node may not read is hashed as unreadable");
                        entries.push(DirEntry {
                            name,
                            node: NodeRef::Special(SpecialKind::Unreadable),
                        });
                        continue;
                    }
                    Err(HashFileError::NotRegular(kind)) => {
                        entries.push(DirEntry {
                            name,
                            node: NodeRef::Special(kind),
                        });
                        continue;
                    }
                    Err(HashFileError::Io(e)) => return Err(e),
                },
            };
            let hash = node.hash;
            out.files.insert(child, node);
            NodeRef::File(hash)
        };
        entries.push(DirEntry { name, node });
    }
    let hash = dir_hash(&entries);
    out.dirs.insert(rel.to_path_buf(), (hash, entries));
    Ok(hash)
}

/// Makes a special entry that state sync received (the kind is its whole content): a FIFO,
/// a socket file, an empty mode-000 file for `Unreadable`, a device (which needs
/// `CAP_MKNOD`; without it the sync fails with that error).
pub fn make_special(path: &Path, kind: SpecialKind) -> std::io::Result<()> {
    use rustix::fs::{FileType, Mode, CWD};
    let node = |t: FileType| {
        rustix::fs::mknodat(CWD, path, t, Mode::from_raw_mode(0o600), 0)
            .map_err(std::io::Error::from)
    };
    match kind {
        SpecialKind::Fifo => node(FileType::Fifo),
        SpecialKind::CharDevice => node(FileType::CharacterDevice),
        SpecialKind::BlockDevice => node(FileType::BlockDevice),
        SpecialKind::Socket => std::os::unix::net::UnixListener::bind(path).map(drop),
        SpecialKind::Unreadable => {
            std::fs::File::create(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000))
        }
    }
}

/// Why a state file was not hashed as a regular file.
#[derive(Debug, thiserror::Error)]
pub enum HashFileError {
    #[error("the file may not be opened: {0}")]
    Unreadable(std::io::Error),
    #[error("not a regular file but a {0:?}")]
    NotRegular(SpecialKind),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Opens a state file for reading without ever blocking or following a link:
/// `O_NONBLOCK | O_NOFOLLOW`, then checks on the open descriptor that it is a regular file
/// (the name may have been swapped for a FIFO since it was listed).
pub fn open_regular(path: &Path) -> Result<std::fs::File, HashFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NONBLOCK.bits() | rustix::fs::OFlags::NOFOLLOW.bits();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags as i32)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => HashFileError::Unreadable(e),
            _ => HashFileError::Io(e),
        })?;
    let kind = file.metadata()?.file_type();
    if let Some(special) = SpecialKind::of(kind) {
        return Err(HashFileError::NotRegular(special));
    }
    if !kind.is_file() {
        return Err(HashFileError::Io(std::io::Error::other(
            "not a regular file",
        )));
    }
    Ok(file)
}

/// Hashes a file block by block.
pub fn hash_file(path: &Path, executable: bool) -> Result<FileManifest, HashFileError> {
    let mut file = open_regular(path)?;
    let mut blocks = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        size += filled as u64;
        blocks.push(hash_parts([&buf[..filled]]));
        if filled < buf.len() {
            break;
        }
    }
    Ok(FileManifest {
        executable,
        size,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_root_follows_content_names_and_modes_and_unchanged_files_are_not_reread() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = StateTree::default();
        std::fs::write(dir.path().join("a"), b"one").unwrap();
        let h1 = tree.rehash(dir.path()).unwrap();
        assert_eq!(h1, StateTree::default().rehash(dir.path()).unwrap());
        std::fs::write(dir.path().join("a"), b"two").unwrap();
        let h2 = tree.rehash(dir.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let h3 = tree.rehash(dir.path()).unwrap();
        assert_ne!(h2, h3);
        let mut perms = std::fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions();
        perms.set_mode(0o755);
        std::fs::set_permissions(dir.path().join("a"), perms).unwrap();
        assert_ne!(h3, tree.rehash(dir.path()).unwrap());
    }

    #[test]
    fn a_large_file_is_split_into_blocks_indexed_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![7u8; (BLOCK_SIZE * 2 + 10) as usize];
        data[BLOCK_SIZE as usize] = 1;
        std::fs::write(dir.path().join("big"), &data).unwrap();
        let mut tree = StateTree::default();
        let root = tree.rehash(dir.path()).unwrap();
        let m = tree.manifest(Path::new("big")).unwrap().clone();
        assert_eq!(m.blocks.len(), 3);
        assert!(m.is_consistent());
        assert_eq!(m.block_len(2), 10);
        assert_eq!(
            tree.locate(&m.blocks[1]),
            Some(&Location::Block(PathBuf::from("big"), 1))
        );
        assert_eq!(
            read_block(&dir.path().join("big"), 1, &m.blocks[1]).unwrap(),
            &data[BLOCK_SIZE as usize..2 * BLOCK_SIZE as usize]
        );
        assert!(read_block(&dir.path().join("big"), 1, &m.blocks[0]).is_none());
        let listing = tree.listing(Path::new("")).unwrap();
        assert_eq!(dir_hash(listing), root);
        assert_eq!(tree.locate(&root), Some(&Location::Dir(PathBuf::new())));
    }

    #[test]
    fn fifos_and_sockets_are_hashed_by_kind_without_being_opened_and_copied_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("a"), b"one").unwrap();
        let plain = StateTree::default().rehash(&state).unwrap();
        // A FIFO with no writer: opening it for reading without O_NONBLOCK waits forever.
        make_special(&state.join("pipe"), SpecialKind::Fifo).unwrap();
        make_special(&state.join("sock"), SpecialKind::Socket).unwrap();
        let mut tree = StateTree::default();
        let with_special = tree.rehash(&state).unwrap();
        assert_ne!(plain, with_special);
        let listing = tree.listing(Path::new("")).unwrap();
        assert_eq!(listing[1].node, NodeRef::Special(SpecialKind::Fifo));
        assert_eq!(listing[2].node, NodeRef::Special(SpecialKind::Socket));
        assert!(matches!(
            hash_file(&state.join("pipe"), false),
            Err(HashFileError::NotRegular(SpecialKind::Fifo))
        ));
        // The copy an upload starts from is made without opening them, and hashes alike.
        let copy = dir.path().join("copy");
        crate::fsutil::copy_tree(&state, &copy).unwrap();
        assert_eq!(StateTree::default().rehash(&copy).unwrap(), with_special);
    }

    #[test]
    fn listings_with_unsafe_or_unsorted_names_are_refused() {
        let e = |n: &[u8]| DirEntry {
            name: n.to_vec(),
            node: NodeRef::Link(b"x".to_vec()),
        };
        assert!(listing_is_valid(&[e(b"a"), e(b"b")]).is_ok());
        assert!(listing_is_valid(&[e(b"b"), e(b"a")]).is_err());
        assert!(listing_is_valid(&[e(b"a"), e(b"a")]).is_err());
        assert!(listing_is_valid(&[e(b"..")]).is_err());
        assert!(listing_is_valid(&[e(b"a/b")]).is_err());
        assert!(listing_is_valid(&[e(b"")]).is_err());
    }
}
