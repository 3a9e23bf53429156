//! The pure image model: digests, canonical JSON, deterministic layers, manifests, configs and the
//! OCI image layout on disk.
//!
//! This module knows nothing about cargo, registries or HTTP.

pub mod archive;
pub mod digest;
pub mod image;
pub mod json;
pub mod layer;
pub mod layout;
pub mod time;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use digest::Digest;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The media type of the empty JSON config of an artifact manifest.
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The empty JSON blob (`{}`) every artifact manifest names as its config.
pub const EMPTY_JSON: &[u8] = b"{}";
/// On a referrer's index.json entry in a layout: the digest of the manifest it refers to.
pub const ANNOTATION_SUBJECT: &str = "dev.galley.subject";

/// An artifact manifest that refers to `subject` (OCI 1.1 referrers): the empty config, one
/// layer holding the document, `artifactType` saying what it is, and `annotations` (which a
/// registry copies into its referrers list). Returns its canonical bytes.
pub fn artifact_manifest(
    artifact_type: &str,
    layer: &Descriptor,
    subject: &Descriptor,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<u8>, json::JsonError> {
    let subject = Descriptor::new(&subject.media_type, subject.digest.clone(), subject.size);
    json::canonical(
        "artifact manifest",
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": MEDIA_EMPTY,
                "digest": Digest::of(EMPTY_JSON),
                "size": EMPTY_JSON.len(),
                "data": "e30=",
            },
            "layers": [layer],
            "subject": subject,
            "annotations": annotations,
        }),
    )
}

/// The annotation that names a tag inside an OCI image layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where an image runs, as written in index entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// Whether an index entry with this platform serves `want`. An arm64 entry without a variant
    /// is v8 in practice, so a missing variant on either side matches.
    pub fn serves(&self, want: &PlatformSpec) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (self.variant.is_none() || want.variant.is_none() || self.variant == want.variant)
    }
}

impl std::fmt::Display for PlatformSpec {
    /// `os/architecture[/variant]`, as `linux/arm64/v8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl From<crate::target::Platform> for PlatformSpec {
    fn from(p: crate::target::Platform) -> Self {
        PlatformSpec {
            architecture: p.architecture.to_string(),
            os: p.os.to_string(),
            variant: p.variant.map(str::to_string),
        }
    }
}

/// A reference to content: media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// What an artifact manifest holds (an SBOM, a provenance statement), for referrers.
    #[serde(
        default,
        rename = "artifactType",
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI, or Docker v2 schema 2 when read from a base image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI, or a Docker manifest list when read from a base image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// The entry serving `want`; otherwise the platforms the index has, for an error message.
    pub fn for_platform(&self, want: &PlatformSpec) -> Result<&Descriptor, String> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.serves(want)))
            .ok_or_else(|| {
                let have: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                if have.is_empty() {
                    "no platforms".to_string()
                } else {
                    have.join(", ")
                }
            })
    }

    pub fn empty() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// One image of a (possibly multi-platform) reference: its manifest and config, for a target.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub target: crate::target::Target,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: Vec<u8>,
}

/// Whether a media type names an image manifest galley can build on.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Whether a media type names an image index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The OCI media type for a base layer: Docker's gzip layer type names the same bytes.
pub fn oci_layer_media_type(media_type: &str) -> &str {
    if media_type == DOCKER_LAYER_GZIP {
        MEDIA_LAYER_GZIP
    } else {
        media_type
    }
}
