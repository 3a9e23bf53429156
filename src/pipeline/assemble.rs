//! The layer and assemble stages: the binary's deterministic layer, then config and manifest on
//! top of the base image, written into the output layout.

use std::collections::BTreeMap;

use super::base::BasePlatform;
use super::verify::VerifiedBinary;
use crate::oci::image::{derive_config, manifest, AddedLayer, ImageError};
use crate::oci::json::{canonical, JsonError};
use crate::oci::layer::{write_layer, Entry, LayerBlob, LayerError};
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::{
    oci_layer_media_type, Descriptor, Index, PlatformSpec, MEDIA_CONFIG, MEDIA_INDEX,
    MEDIA_LAYER_GZIP, MEDIA_MANIFEST,
};
use crate::spec::{BuildSpec, VariantSpec};

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// Writes the layer holding `<workdir>/<binary>` and the project's `[[image.files]]`.
pub fn layer(
    binary: &VerifiedBinary,
    spec: &BuildSpec,
    variant: &VariantSpec,
    out: &Layout,
) -> Result<LayerBlob, LayerError> {
    let workdir = variant.image.workdir.trim_matches('/');
    let mut entries = Vec::new();
    if !workdir.is_empty() {
        entries.push(Entry::dir(workdir, 0o755));
    }
    let path = if workdir.is_empty() {
        variant.binary.clone()
    } else {
        format!("{workdir}/{}", variant.binary)
    };
    entries.push(Entry::file(&path, 0o755, binary.path()));
    for f in &spec.files {
        entries.push(Entry::file(&f.dst, f.mode, &f.src));
    }
    write_layer(&entries, spec.source_date_epoch, &out.blob_dir())
}

/// The annotations of every image galley writes.
pub fn annotations(
    spec: &BuildSpec,
    base_name: &str,
    base: Option<&BasePlatform>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        "org.opencontainers.image.version".to_string(),
        spec.version.clone(),
    );
    a.insert(
        "org.opencontainers.image.created".to_string(),
        spec.created.clone(),
    );
    if let Some(rev) = &spec.revision {
        a.insert("org.opencontainers.image.revision".to_string(), rev.clone());
    }
    if let Some(src) = &spec.source {
        a.insert("org.opencontainers.image.source".to_string(), src.clone());
    }
    if let Some(base) = base {
        a.insert(
            "org.opencontainers.image.base.name".to_string(),
            base_name.to_string(),
        );
        a.insert(
            "org.opencontainers.image.base.digest".to_string(),
            base.manifest_digest.to_string(),
        );
    }
    a
}

/// An assembled platform image.
pub struct Assembled {
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// manifest + config + all layers, as stored.
    pub image_size: u64,
    pub base_layers_size: u64,
}

/// Writes config and manifest for one platform image; returns the manifest's descriptor.
pub fn assemble(
    spec: &BuildSpec,
    variant: &VariantSpec,
    out: &Layout,
    base: &BasePlatform,
    base_name: &str,
    layer: &LayerBlob,
) -> Result<Assembled, AssembleError> {
    let platform: PlatformSpec = base.target.platform().into();
    let dir = variant.image.workdir.trim_end_matches('/');
    let mut created_by = format!(
        "galley: COPY {0} {dir}/{0} (WORKDIR {1})",
        variant.binary, variant.image.workdir
    );
    if !spec.files.is_empty() {
        created_by.push_str(&format!(" + {} project files", spec.files.len()));
    }
    let added = AddedLayer {
        diff_id: &layer.diff_id,
        created_by,
    };
    let config_bytes = derive_config(
        &base.config,
        base.manifest.layers.len(),
        &platform,
        &variant.image,
        &added,
        &spec.created,
    )?;
    let config_digest = out.put_blob(&config_bytes)?;
    let config = Descriptor::new(MEDIA_CONFIG, config_digest, config_bytes.len() as u64);

    let mut layers: Vec<Descriptor> = base
        .manifest
        .layers
        .iter()
        .map(|l| {
            Descriptor::new(
                oci_layer_media_type(&l.media_type),
                l.digest.clone(),
                l.size,
            )
        })
        .collect();
    let base_layers_size: u64 = layers.iter().map(|l| l.size).sum();
    layers.push(Descriptor::new(
        MEDIA_LAYER_GZIP,
        layer.digest.clone(),
        layer.size,
    ));
    let (_, manifest_bytes) = manifest(
        config.clone(),
        layers,
        annotations(spec, base_name, Some(base)),
    )?;
    let manifest_digest = out.put_blob(&manifest_bytes)?;
    let mut desc = Descriptor::new(MEDIA_MANIFEST, manifest_digest, manifest_bytes.len() as u64);
    desc.platform = Some(platform);
    let image_size = manifest_bytes.len() as u64 + config.size + base_layers_size + layer.size;
    Ok(Assembled {
        manifest: desc,
        config,
        image_size,
        base_layers_size,
    })
}

/// Writes an image index over several platform manifests; returns its descriptor.
pub fn index(
    spec: &BuildSpec,
    out: &Layout,
    base_name: &str,
    manifests: Vec<Descriptor>,
) -> Result<Descriptor, AssembleError> {
    let mut idx = Index::empty();
    idx.manifests = manifests;
    idx.annotations = annotations(spec, base_name, None);
    let bytes = canonical("image index", &idx)?;
    let digest = out.put_blob(&bytes)?;
    Ok(Descriptor::new(MEDIA_INDEX, digest, bytes.len() as u64))
}
