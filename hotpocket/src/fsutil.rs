//! Small file-system helpers shared by the config, TLS and bootstrap code.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes a file through a temporary sibling (`tempfile`) and a rename, so readers see old or
/// new only.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Copies a directory tree (files, dirs, symlinks as links). Special files (FIFOs, sockets,
/// devices) are made anew by kind and never opened; a file this process may not read is
/// made empty with mode 000, as the state hash sees it. So a file in the state can neither
/// block nor fail the copy an owner's upload starts from.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use crate::state::{open_regular, HashFileError, SpecialKind};
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(link, &target)?;
        } else if let Some(special) = SpecialKind::of(kind) {
            make_or_skip(&target, special);
        } else {
            match open_regular(&entry.path()) {
                Ok(mut src) => {
                    let mode = src.metadata()?.permissions().mode();
                    let mut dst = std::fs::File::create(&target)?;
                    std::io::copy(&mut src, &mut dst)?;
                    dst.set_permissions(std::fs::Permissions::from_mode(mode))?;
                }
                Err(HashFileError::Unreadable(_)) => make_or_skip(&target, SpecialKind::Unreadable),
                Err(HashFileError::NotRegular(special)) => make_or_skip(&target, special),
                Err(HashFileError::Io(e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Makes a special file in a copy; one that cannot be made (a device without `CAP_MKNOD`)
/// is left out, on every node alike, rather than failing the copy.
fn make_or_skip(target: &Path, kind: crate::state::SpecialKind) {
    if let Err(e) = crate::state::make_special(target, kind) {
        tracing::warn!(path = %target.display(), ?kind, error = %e, "special file left out of the copy");
    }
}

/// Removes a directory tree if it exists.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
