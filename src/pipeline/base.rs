//! The base image: resolved once per build, per target platform, and its blobs copied (verified)
//! into the output layout.

use crate::oci::layout::{Layout, LayoutError};
use crate::oci::{is_index, is_manifest, Descriptor, Digest, Index, Manifest, PlatformSpec};
use crate::registry::pull::{pull, BlobCache};
use crate::registry::{Reference, RegistryError, RegistryOptions};
use crate::spec::BaseRef;
use crate::target::Target;

/// The base image for one platform.
pub use crate::oci::PlatformImage as BasePlatform;

/// The base image resolved for every target of a build.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The annotation name (`org.opencontainers.image.base.name`).
    pub name: String,
    /// What the reference resolved to (index or manifest).
    pub digest: Digest,
    pub platforms: Vec<BasePlatform>,
    /// The registry reference it came from, when it came from a registry.
    pub reference: Option<Reference>,
    /// Blobs downloaded for this build (0 when the cache had everything).
    pub blobs_downloaded: u32,
}

impl BaseImage {
    pub fn for_target(&self, target: Target) -> Option<&BasePlatform> {
        self.platforms.iter().find(|p| p.target == target)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("base image {name}: {source}")]
    Layout { name: String, source: LayoutError },
    #[error("base image {name} has no image for {platform} (it has: {available}): pick a base image that includes it")]
    NoPlatform {
        name: String,
        platform: String,
        available: String,
    },
    #[error("base image {name} is a {media_type}, not an image manifest or index")]
    UnknownMediaType { name: String, media_type: String },
    #[error("base image {name}: {source}")]
    Registry {
        name: String,
        source: Box<RegistryError>,
    },
}

/// Resolves the base reference for each target, reading its manifests and configs (digests checked).
pub fn resolve(
    base: &BaseRef,
    targets: &[Target],
    options: &RegistryOptions,
    cache_dir: &std::path::Path,
    refresh: bool,
) -> Result<(BaseImage, Layout), BaseError> {
    let name = base.display_name();
    let (dir, tag) = match base {
        BaseRef::Layout { dir, tag } => (dir, tag),
        BaseRef::Registry(reference) => {
            let rerr = |source| BaseError::Registry {
                name: name.clone(),
                source: Box::new(source),
            };
            let cache = BlobCache::open(cache_dir).map_err(rerr)?;
            let pulled = pull(reference, targets, options, &cache, refresh).map_err(rerr)?;
            let image = BaseImage {
                name,
                digest: pulled.digest,
                platforms: pulled.platforms,
                reference: Some(reference.clone()),
                blobs_downloaded: pulled.blobs_downloaded,
            };
            return Ok((image, cache.layout().clone()));
        }
    };
    let lerr = |source| BaseError::Layout {
        name: name.clone(),
        source,
    };
    let src = Layout::open(dir).map_err(lerr)?;
    let top = src.resolve(tag).map_err(lerr)?;
    let mut platforms = Vec::new();
    for &target in targets {
        let want: PlatformSpec = target.platform().into();
        let desc: Descriptor = if is_index(&top.media_type) {
            let index: Index = src.read_json("image index", &top.digest).map_err(lerr)?;
            match index.for_platform(&want) {
                Ok(d) => d.clone(),
                Err(available) => {
                    return Err(BaseError::NoPlatform {
                        name,
                        platform: want.to_string(),
                        available,
                    });
                }
            }
        } else if is_manifest(&top.media_type) {
            top.clone()
        } else {
            return Err(BaseError::UnknownMediaType {
                name,
                media_type: top.media_type.clone(),
            });
        };
        let manifest: Manifest = src
            .read_json("image manifest", &desc.digest)
            .map_err(lerr)?;
        let config = src.read_json_blob(&manifest.config.digest).map_err(lerr)?;
        platforms.push(BasePlatform {
            target,
            manifest_digest: desc.digest.clone(),
            manifest,
            config,
        });
    }
    Ok((
        BaseImage {
            name,
            digest: top.digest,
            platforms,
            reference: None,
            blobs_downloaded: 0,
        },
        src,
    ))
}

impl BaseImage {
    /// Copies every base layer into the output layout, streaming and verifying digests.
    pub fn copy_layers(&self, src: &Layout, out: &Layout) -> Result<(), BaseError> {
        for p in &self.platforms {
            for layer in &p.manifest.layers {
                out.copy_blob_from(src, &layer.digest)
                    .map_err(|source| BaseError::Layout {
                        name: self.name.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }
}
