//! The base image: resolved once per build, per target platform, and its blobs copied (verified)
//! into the output layout.

use crate::oci::layout::{Layout, LayoutError};
use crate::oci::{is_index, is_manifest, Descriptor, Digest, Index, Manifest, PlatformSpec};
use std::time::SystemTime;

use crate::registry::pull::{pull, BlobCache, Resolution};
use crate::registry::{Reference, RegistryError, RegistryOptions};
use crate::spec::{BaseRef, BuildSpec};
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
    /// How a registry tag was resolved (absent for a layout on disk).
    pub resolution: Option<Resolution>,
    /// When the tag was resolved to `digest`.
    pub resolved_at: Option<SystemTime>,
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
    #[error("base image {name} is now {found}, not {pinned} as recorded: the base changed since (restore the recorded base to rebuild the same image)")]
    PinMismatch {
        name: String,
        pinned: Digest,
        found: Digest,
    },
    #[error("base image {name}: {source}")]
    Registry {
        name: String,
        source: Box<RegistryError>,
    },
}

/// Resolves the spec's base reference for each of its targets, reading manifests and configs
/// (digests checked).
pub fn resolve(
    spec: &BuildSpec,
    options: &RegistryOptions,
) -> Result<(BaseImage, Layout), BaseError> {
    let lookup = Lookup {
        cache_dir: &spec.cache_dir,
        pin: spec.base_pin.as_ref(),
        refresh: spec.refresh_base,
        ttl: spec.base_ttl,
    };
    resolve_ref(&spec.base, &spec.targets, &lookup, options)
}

/// How a base reference is looked up: the blob cache, a pinned digest, the tag's TTL.
pub struct Lookup<'a> {
    pub cache_dir: &'a std::path::Path,
    pub pin: Option<&'a Digest>,
    pub refresh: bool,
    pub ttl: std::time::Duration,
}

/// Resolves a base reference for `targets` (see [`resolve`]); returns the image and the layout
/// holding its blobs (the base's own layout, or the blob cache).
pub fn resolve_ref(
    base: &BaseRef,
    targets: &[Target],
    lookup: &Lookup<'_>,
    options: &RegistryOptions,
) -> Result<(BaseImage, Layout), BaseError> {
    let name = base.display_name();
    let (dir, tag) = match base {
        BaseRef::Layout { dir, tag } => (dir, tag),
        BaseRef::Registry(reference) => {
            let rerr = |source| BaseError::Registry {
                name: name.clone(),
                source: Box::new(source),
            };
            let cache = BlobCache::open(lookup.cache_dir).map_err(rerr)?;
            // A pinned rebuild fetches the recorded digest; the name (annotations) stays the
            // reference as given.
            let pinned = match (lookup.pin, &reference.digest) {
                (Some(pin), None) => Some(Reference {
                    digest: Some(pin.clone()),
                    ..reference.clone()
                }),
                (Some(pin), Some(d)) if pin != d => {
                    return Err(BaseError::PinMismatch {
                        name,
                        pinned: pin.clone(),
                        found: d.clone(),
                    })
                }
                _ => None,
            };
            let pulled = pull(
                pinned.as_ref().unwrap_or(reference),
                targets,
                options,
                &cache,
                lookup.refresh,
                lookup.ttl,
            )
            .map_err(rerr)?;
            let image = BaseImage {
                name,
                digest: pulled.digest,
                platforms: pulled.platforms,
                reference: Some(reference.clone()),
                blobs_downloaded: pulled.blobs_downloaded,
                resolution: Some(pulled.resolution),
                resolved_at: pulled.resolved_at,
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
    if let Some(pin) = lookup.pin.filter(|p| **p != top.digest) {
        return Err(BaseError::PinMismatch {
            name,
            pinned: pin.clone(),
            found: top.digest,
        });
    }
    let mut platforms = Vec::new();
    for &target in targets.iter() {
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
            resolution: None,
            resolved_at: None,
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
