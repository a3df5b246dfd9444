//! The instance image's build context: a Dockerfile `FROM scratch` holding the static
//! `hotpocket` binary at `/hotpocket` and a static busybox (`/bin/sh` and friends) for
//! contracts that are scripts. `hotpocket/image/build.sh` builds the binaries and the image;
//! the provisioner may instead call [`prepare_context`] and build through bollard.
//!
//! Context layout: `Dockerfile`, `hotpocket` (static ELF), `busybox` (static ELF).
//!
//! A second image, [`NODE_IMAGE_TAG`], runs Node.js contracts (Evernode's usual
//! `bin_path: /usr/bin/node`, `bin_args: index.js`) and dynamically linked glibc binaries:
//! `hotpocket/image/build-node.sh` adds one layer to this image, `nodejs` and its dependency
//! closure (glibc, libstdc++, OpenSSL, ICU, …) unpacked from Debian's packages with no
//! registry (`hotpocket/image/Dockerfile.node`). Same entrypoint, user, `/state` and ports;
//! a host runs it by naming it in `runtime.image`.

use std::path::{Path, PathBuf};

/// The tag the provisioner runs.
pub const IMAGE_TAG: &str = "berth-hotpocket:latest";

/// The Node.js instance image (`hotpocket/image/build-node.sh`): this image plus Node.js and
/// glibc from Debian's packages.
pub const NODE_IMAGE_TAG: &str = "berth-hotpocket-node:latest";

/// The uid the instance runs as.
pub const INSTANCE_UID: u32 = 10001;

/// The Dockerfile of the instance image.
pub const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "sh", "-c", "mkdir -p /state /tmp /usr/bin /usr/local/bin && chmod 1777 /tmp && chown 10001:10001 /state && ln -s /bin/env /usr/bin/env"]
COPY hotpocket /hotpocket
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 10001:10001
WORKDIR /state
EXPOSE 8081 22861
ENTRYPOINT ["/hotpocket"]
CMD ["run", "--state-dir", "/state"]
"#;

/// Image context errors naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} not found at {path}; build it with hotpocket/image/build.sh{hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error(
        "{path} is not a static executable (it needs a dynamic loader; the image is FROM scratch)"
    )]
    NotStatic { path: PathBuf },
    #[error("image context file {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the context's binaries come from.
#[derive(Debug, Clone)]
pub struct ImageSources {
    pub hotpocket: PathBuf,
    pub busybox: PathBuf,
}

impl ImageSources {
    /// `BERTH_HOTPOCKET_STATIC` or the path `build.sh` writes
    /// (`$CARGO_TARGET_DIR|<workspace>/target` + `/hotpocket-static/x86_64-unknown-linux-gnu/release/hotpocket`);
    /// `BERTH_BUSYBOX` or `/bin/busybox`.
    pub fn locate() -> Result<ImageSources, ImageError> {
        let hotpocket = match std::env::var_os("BERTH_HOTPOCKET_STATIC") {
            Some(p) => PathBuf::from(p),
            None => {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        Path::new(env!("CARGO_MANIFEST_DIR"))
                            .join("..")
                            .join("target")
                    });
                target.join("hotpocket-static/x86_64-unknown-linux-gnu/release/hotpocket")
            }
        };
        let busybox = std::env::var_os("BERTH_BUSYBOX")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
        if !hotpocket.is_file() {
            return Err(ImageError::Missing {
                what: "static hotpocket binary",
                path: hotpocket,
                hint: "",
            });
        }
        if !busybox.is_file() {
            return Err(ImageError::Missing {
                what: "static busybox",
                path: busybox,
                hint: " after installing the Debian package busybox-static",
            });
        }
        Ok(ImageSources { hotpocket, busybox })
    }
}

/// Writes the build context into `dir` from the located sources; returns `dir`.
pub fn prepare_context(dir: &Path) -> Result<PathBuf, ImageError> {
    prepare_context_from(dir, &ImageSources::locate()?)
}

/// Writes the build context into `dir` from given sources; returns `dir`.
pub fn prepare_context_from(dir: &Path, sources: &ImageSources) -> Result<PathBuf, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    for bin in [&sources.hotpocket, &sources.busybox] {
        if !is_static_elf(bin).map_err(io(bin))? {
            return Err(ImageError::NotStatic { path: bin.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dockerfile = dir.join("Dockerfile");
    std::fs::write(&dockerfile, DOCKERFILE).map_err(io(&dockerfile))?;
    for (src, name) in [
        (&sources.hotpocket, "hotpocket"),
        (&sources.busybox, "busybox"),
    ] {
        let dst = dir.join(name);
        std::fs::copy(src, &dst).map_err(io(&dst))?;
    }
    Ok(dir.to_path_buf())
}

/// True for a 64-bit little-endian ELF executable without a `PT_INTERP` program header.
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    Ok(elf_is_static(&bytes))
}

fn elf_is_static(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        match bytes.get(at..at + 4) {
            Some(t) => u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP,
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dynamic_executables_are_not_static() {
        // The test binary itself is dynamically linked (no crt-static in test builds).
        let exe = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&exe).unwrap());
        assert!(!elf_is_static(
            b"not an elf at all, not an elf at all, not an elf at all, padding!"
        ));
    }

    #[test]
    fn context_refuses_a_dynamic_hotpocket() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let err = prepare_context_from(
            dir.path(),
            &ImageSources {
                hotpocket: exe.clone(),
                busybox: exe,
            },
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::NotStatic { .. }), "{err}");
    }
}
