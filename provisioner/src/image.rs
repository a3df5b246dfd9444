//! The instance image: present, or built from a local context (there is no registry).
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use crate::error::{is_not_found, ProvisionError};

/// Produces a Docker build context directory (with a `Dockerfile` at its root). Only called
/// when the image is missing.
pub trait BuildContext: Send + Sync + fmt::Debug {
    fn prepare(&self) -> std::io::Result<PathBuf>;
}

/// A build context that already exists on disk.
#[derive(Debug, Clone)]
pub struct ContextDir(pub PathBuf);

impl BuildContext for ContextDir {
    fn prepare(&self) -> std::io::Result<PathBuf> {
        let dockerfile = self.0.join("Dockerfile");
        if dockerfile.is_file() {
            Ok(self.0.clone())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no Dockerfile in {}", self.0.display()),
            ))
        }
    }
}

/// An image tag and how to build it when the engine does not have it.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub tag: String,
    pub context: Arc<dyn BuildContext>,
}

impl ImageSpec {
    pub fn from_dir(tag: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            tag: tag.into(),
            context: Arc::new(ContextDir(dir.into())),
        }
    }
}

/// What [`ensure_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOutcome {
    AlreadyPresent,
    Built,
}

/// Makes sure `spec.tag` exists, building it from its context (tarred and sent to the engine,
/// classic builder) when it does not.
pub async fn ensure_image(
    docker: &Docker,
    spec: &ImageSpec,
) -> Result<ImageOutcome, ProvisionError> {
    match docker.inspect_image(&spec.tag).await {
        Ok(_) => return Ok(ImageOutcome::AlreadyPresent),
        Err(error) if is_not_found(&error) => {}
        Err(source) => {
            return Err(ProvisionError::ImageInspect {
                tag: spec.tag.clone(),
                source,
            })
        }
    }
    let context = Arc::clone(&spec.context);
    let tag = spec.tag.clone();
    let archive = tokio::task::spawn_blocking(move || {
        let dir = context.prepare()?;
        tar_dir(&dir)
    })
    .await
    .map_err(|join| ProvisionError::ImageContext {
        tag: tag.clone(),
        source: std::io::Error::other(join),
    })?
    .map_err(|source| ProvisionError::ImageContext {
        tag: tag.clone(),
        source,
    })?;

    tracing::info!(image = %spec.tag, context_bytes = archive.len(), "building image");
    let options = BuildImageOptionsBuilder::default()
        .t(&spec.tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(archive.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|source| ProvisionError::ImageBuild {
            tag: spec.tag.clone(),
            source,
        })?;
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim)
            .filter(|line| !line.is_empty())
        {
            tracing::debug!(image = %spec.tag, "{line}");
        }
    }
    // The classic builder reports some failures only by not tagging.
    match docker.inspect_image(&spec.tag).await {
        Ok(_) => Ok(ImageOutcome::Built),
        Err(source) => Err(ProvisionError::ImageBuild {
            tag: spec.tag.clone(),
            source,
        }),
    }
}

fn tar_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}
