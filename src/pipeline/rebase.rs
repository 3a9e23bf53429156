//! `galley rebase`: a galley image moved onto another base without compiling. galley's own layer
//! is kept byte for byte; the base's layers are swapped; the config is derived from the new base
//! as the assemble stage derives it (`oci::image::rebase_config`); the base annotations name the
//! new base; the SBOM and provenance are attached again to the new manifest, the provenance
//! recording the digest it was rebased from. The tags move last, together.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::attach::{attach, AttachError, Document};
use super::base::{resolve_ref, BaseError, BaseImage, Lookup};
use crate::attest::{IN_TOTO_MEDIA_TYPE, SPDX_MEDIA_TYPE};
use crate::oci::image::{manifest, rebase_config, ImageError};
use crate::oci::json::{canonical, JsonError};
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::{
    is_index, oci_layer_media_type, Descriptor, Digest, Index, Manifest, PlatformSpec,
    ANNOTATION_SUBJECT, MEDIA_INDEX, MEDIA_MANIFEST,
};
use crate::registry::{Reference, RegistryOptions};
use crate::spec::BaseRef;
use crate::target::Target;

const BASE_NAME: &str = "org.opencontainers.image.base.name";
const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
const CREATED: &str = "org.opencontainers.image.created";

#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Registry(Box<crate::registry::RegistryError>),
    #[error("{0} was not built by galley (no {BASE_DIGEST} annotation, or no galley layer on top): only galley's images can be rebased")]
    NotGalley(String),
    #[error("{image} is for {platform}, which galley does not build")]
    Platform { image: String, platform: String },
    #[error("{image} was built on {name} ({digest}), an image layout galley cannot find again: give it with --from-base oci:DIR:TAG")]
    NeedFromBase {
        image: String,
        name: String,
        digest: Digest,
    },
    #[error("--from-base {given} is {found} for {platform}, but the image was built on {recorded}: give the base it was built on")]
    WrongFromBase {
        given: String,
        platform: String,
        found: Digest,
        recorded: Digest,
    },
}

/// What to rebase, onto what, and where the result goes.
pub struct RebaseRequest<'a> {
    /// The layout holding the image, and its tag.
    pub layout: &'a Layout,
    pub tag: &'a str,
    pub new_base: &'a BaseRef,
    /// The base the image was built on, when galley cannot find it from the annotations (a
    /// layout base).
    pub from_base: Option<&'a BaseRef>,
    /// The layout the rebased image is written to (may be `layout`).
    pub out: &'a Layout,
    /// The tags it gets there (moved last, together).
    pub tags: &'a [String],
    pub lookup: &'a Lookup<'a>,
    pub options: &'a RegistryOptions,
}

/// One platform image, before and after.
#[derive(Debug, Clone, Serialize)]
pub struct RebasedPlatform {
    pub platform: String,
    pub from: Digest,
    pub to: Digest,
    /// The new config's digest.
    pub config: Digest,
    pub base_from: Digest,
    pub base_to: Digest,
}

/// What `galley rebase` did.
#[derive(Debug, Clone, Serialize)]
pub struct RebaseReport {
    /// The image (manifest or index) rebased, and the result.
    pub from: Digest,
    pub to: Digest,
    pub base: String,
    /// What the new base's reference resolved to (an index or a manifest).
    pub base_digest: Digest,
    pub platforms: Vec<RebasedPlatform>,
    pub tags: Vec<String>,
    /// Documents attached again (SBOM, provenance), per platform.
    pub referrers: usize,
}

/// Rebases `req.tag` of `req.layout` onto `req.new_base`.
pub fn rebase(req: &RebaseRequest<'_>) -> Result<RebaseReport, RebaseError> {
    let image = format!("{}:{}", req.layout.root().display(), req.tag);
    let top = req.layout.resolve(req.tag)?;
    let children: Vec<Descriptor> = if is_index(&top.media_type) {
        req.layout
            .read_json::<Index>("image index", &top.digest)?
            .manifests
    } else {
        vec![top.clone()]
    };
    // Each platform's manifest, config and target.
    let mut images = Vec::new();
    for d in &children {
        let m: Manifest = req.layout.read_json("image manifest", &d.digest)?;
        let config = req.layout.read_json_blob(&m.config.digest)?;
        let cfg: Value = serde_json::from_slice(&config)
            .map_err(|e| ImageError::BaseConfig(format!("the image's config: {e}")))?;
        let galley_top = cfg["history"]
            .as_array()
            .and_then(|h| h.last())
            .is_some_and(|h| h["comment"] == "galley");
        let (Some(base_digest), true) = (m.annotations.get(BASE_DIGEST), galley_top) else {
            return Err(RebaseError::NotGalley(image));
        };
        let base_digest: Digest = base_digest
            .parse()
            .map_err(|_| RebaseError::NotGalley(image.clone()))?;
        let platform = PlatformSpec {
            os: cfg["os"].as_str().unwrap_or("").into(),
            architecture: cfg["architecture"].as_str().unwrap_or("").into(),
            variant: None,
        };
        let target = Target::ALL
            .into_iter()
            .find(|t| {
                let p = t.platform();
                p.os == platform.os && p.architecture == platform.architecture
            })
            .ok_or_else(|| RebaseError::Platform {
                image: image.clone(),
                platform: platform.to_string(),
            })?;
        images.push((d.clone(), m, config, base_digest, target));
    }
    let targets: Vec<Target> = images.iter().map(|i| i.4).collect();
    let (new_base, new_src) = resolve_ref(req.new_base, &targets, req.lookup, req.options)?;
    let old_name = images[0]
        .1
        .annotations
        .get(BASE_NAME)
        .cloned()
        .unwrap_or_default();
    let old_bases = old_bases(req, &image, &old_name, &images, &targets)?;

    // Every config first: a platform the new base cannot carry refuses the whole rebase before
    // anything is written.
    let mut configs = Vec::new();
    for (_, _, config, _, target) in &images {
        let (old_base_config, _) = &old_bases[target];
        let nb = new_base
            .for_target(*target)
            .expect("resolve_ref gives every target");
        configs.push(rebase_config(config, old_base_config, &nb.config)?);
    }
    new_base.copy_layers(&new_src, req.out)?;
    let mut platforms = Vec::new();
    let mut new_children = Vec::new();
    let mut attached = Vec::new();
    for ((desc, m, _, old_digest, target), new_config) in images.iter().zip(configs) {
        let nb = new_base
            .for_target(*target)
            .expect("resolve_ref gives every target");
        let config_digest = req.out.put_blob(&new_config)?;
        let config_of_platform = config_digest.clone();
        let galley_layer = m
            .layers
            .last()
            .ok_or_else(|| RebaseError::NotGalley(image.clone()))?
            .clone();
        if !req.out.has_blob(&galley_layer.digest) {
            req.out.copy_blob_from(req.layout, &galley_layer.digest)?;
        }
        let mut layers: Vec<Descriptor> = nb
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
        layers.push(galley_layer);
        let mut annotations = m.annotations.clone();
        annotations.insert(BASE_NAME.into(), new_base.name.clone());
        annotations.insert(BASE_DIGEST.into(), nb.manifest_digest.to_string());
        let mut config_desc = m.config.clone();
        config_desc.digest = config_digest;
        config_desc.size = new_config.len() as u64;
        let (_, bytes) = manifest(config_desc, layers, annotations.clone())?;
        let digest = req.out.put_blob(&bytes)?;
        let mut new_desc = desc.clone();
        new_desc.media_type = MEDIA_MANIFEST.into();
        new_desc.digest = digest.clone();
        new_desc.size = bytes.len() as u64;
        new_desc
            .annotations
            .retain(|k, _| k != crate::oci::ANNOTATION_REF_NAME);
        if new_desc.digest != desc.digest {
            let created = annotations.get(CREATED).cloned().unwrap_or_default();
            let moved = Moved {
                image: &desc.digest,
                image_to: &digest,
                base: old_digest,
                base_to: &nb.manifest_digest,
                base_name: &old_name,
                base_name_to: &new_base.name,
            };
            attached.push((
                new_desc.clone(),
                created,
                documents(req.layout, &desc.digest, &moved)?,
            ));
        }
        platforms.push(RebasedPlatform {
            platform: PlatformSpec::from(target.platform()).to_string(),
            from: desc.digest.clone(),
            to: digest,
            config: config_of_platform,
            base_from: old_digest.clone(),
            base_to: nb.manifest_digest.clone(),
        });
        new_children.push(new_desc);
    }
    // The documents once every image is written: index.json changes only for a whole rebase.
    let mut referrers = 0;
    for (subject, created, docs) in &attached {
        referrers += docs.len();
        attach(req.out, subject, created, docs)?;
    }
    let result = if is_index(&top.media_type) {
        let mut index: Index = req.layout.read_json("image index", &top.digest)?;
        index.manifests = new_children;
        let bytes = canonical("image index", &index)?;
        let digest = req.out.put_blob(&bytes)?;
        Descriptor::new(MEDIA_INDEX, digest, bytes.len() as u64)
    } else {
        let mut d = new_children.remove(0);
        d.annotations.clear();
        d
    };
    // Every blob is written: now the tags, together.
    let tagged: Vec<(String, Descriptor)> = req
        .tags
        .iter()
        .map(|t| (t.clone(), result.clone()))
        .collect();
    req.out.set_tags(&tagged)?;
    Ok(RebaseReport {
        from: top.digest,
        to: result.digest,
        base: new_base.name,
        base_digest: new_base.digest,
        platforms,
        tags: req.tags.to_vec(),
        referrers,
    })
}

/// Brings a registry image (an index or a manifest, every platform of it), its blobs and its
/// referrers into `into`, tagged `tag`; returns what the tag names. A rebase then reads it as
/// it reads a layout.
pub fn pull_image(
    reference: &Reference,
    options: &RegistryOptions,
    cache_dir: &std::path::Path,
    into: &Layout,
    tag: &str,
) -> Result<Descriptor, RebaseError> {
    use crate::registry::pull::{current_digest, pull_referrers, BlobCache};
    let registry = |e: crate::registry::RegistryError| RebaseError::Registry(Box::new(e));
    let cache = BlobCache::open(cache_dir).map_err(registry)?;
    let top = current_digest(reference, options, &cache).map_err(registry)?;
    let from = cache.layout();
    let raw: Value = from.read_json("image manifest or index", &top)?;
    let children: Vec<Descriptor> = match raw.get("manifests") {
        Some(_) => from.read_json::<Index>("image index", &top)?.manifests,
        None => vec![Descriptor::new(MEDIA_MANIFEST, top.clone(), 0)],
    };
    let media_type = if raw.get("manifests").is_some() {
        MEDIA_INDEX
    } else {
        MEDIA_MANIFEST
    };
    let mut subjects = Vec::new();
    for child in &children {
        // By digest: each platform's manifest, config and layers, through the blob cache.
        let pinned = Reference {
            tag: None,
            digest: Some(child.digest.clone()),
            ..reference.clone()
        };
        // A manifest pulled by its digest is read whatever the target asked for: the rebase
        // finds each image's platform in its config.
        let at = BaseRef::Registry(pinned);
        let (image, _) = resolve_ref(&at, &[Target::ALL[0]], &no_refresh(cache_dir), options)?;
        into.copy_blob_from(from, &child.digest)?;
        for p in &image.platforms {
            into.copy_blob_from(from, &p.manifest.config.digest)?;
            for l in &p.manifest.layers {
                into.copy_blob_from(from, &l.digest)?;
            }
        }
        subjects.push(child.digest.clone());
    }
    into.put_blob(&from.read_json_blob(&top)?)?;
    let referrers = pull_referrers(reference, &subjects, options, &cache).map_err(registry)?;
    for (r, _) in &referrers {
        into.copy_blob_from(from, &r.digest)?;
        let m: Manifest = from.read_json("artifact manifest", &r.digest)?;
        into.copy_blob_from(from, &m.config.digest)?;
        for l in &m.layers {
            into.copy_blob_from(from, &l.digest)?;
        }
    }
    into.add_referrers(&referrers)?;
    let size = from.read_json_blob(&top)?.len() as u64;
    let desc = Descriptor::new(media_type, top, size);
    into.set_tags(&[(tag.to_string(), desc.clone())])?;
    Ok(desc)
}

fn no_refresh(cache_dir: &std::path::Path) -> Lookup<'_> {
    Lookup {
        cache_dir,
        pin: None,
        refresh: false,
        ttl: crate::registry::pull::DEFAULT_BASE_TTL,
    }
}

/// The config of the base each platform image was built on, by target: from `--from-base`, else
/// from the registry the annotation names (by digest, through the blob cache).
fn old_bases(
    req: &RebaseRequest<'_>,
    image: &str,
    old_name: &str,
    images: &[(Descriptor, Manifest, Vec<u8>, Digest, Target)],
    targets: &[Target],
) -> Result<BTreeMap<Target, (Vec<u8>, Digest)>, RebaseError> {
    let recorded = &images[0].3;
    // A registry base is read by the digest recorded, whoever names it: its tag may have
    // moved since (that is why there is a rebase).
    let registry = match req.from_base {
        Some(BaseRef::Registry(r)) => Some(r.clone()),
        Some(BaseRef::Layout { .. }) => None,
        None => match BaseRef::parse(old_name) {
            Ok(BaseRef::Registry(r)) => Some(r),
            _ => None,
        },
    };
    if let Some(r) = registry {
        let mut out = BTreeMap::new();
        for (_, _, _, digest, target) in images {
            let at = BaseRef::Registry(Reference {
                tag: None,
                digest: Some(digest.clone()),
                ..r.clone()
            });
            let (b, _) = resolve_ref(&at, &[*target], req.lookup, req.options)?;
            let p = b.for_target(*target).expect("resolved for its target");
            out.insert(*target, (p.config.clone(), p.manifest_digest.clone()));
        }
        return Ok(out);
    }
    let Some(given) = req.from_base else {
        return Err(RebaseError::NeedFromBase {
            image: image.to_string(),
            name: old_name.to_string(),
            digest: recorded.clone(),
        });
    };
    // A layout: as it is now, checked against the digest recorded.
    let base: BaseImage = resolve_ref(given, targets, req.lookup, req.options)?.0;
    let given = Some(given.display_name());
    let mut out = BTreeMap::new();
    for (_, _, _, digest, target) in images {
        let p = base.for_target(*target).expect("resolved for its target");
        if &p.manifest_digest != digest {
            return Err(RebaseError::WrongFromBase {
                given: given.clone().unwrap_or_default(),
                platform: PlatformSpec::from(target.platform()).to_string(),
                found: p.manifest_digest.clone(),
                recorded: digest.clone(),
            });
        }
        out.insert(*target, (p.config.clone(), p.manifest_digest.clone()));
    }
    Ok(out)
}

/// What moved, for rewriting the attached documents.
struct Moved<'a> {
    image: &'a Digest,
    image_to: &'a Digest,
    base: &'a Digest,
    base_to: &'a Digest,
    base_name: &'a str,
    base_name_to: &'a str,
}

/// The documents attached to `subject`, rewritten for the rebased image: its digest and its
/// base's in place of the old ones; the provenance also says what it was rebased from.
fn documents(
    layout: &Layout,
    subject: &Digest,
    m: &Moved<'_>,
) -> Result<Vec<Document>, RebaseError> {
    let mut docs = Vec::new();
    for r in layout.referrers(subject)? {
        let (title, kind) = match r.artifact_type.as_deref() {
            Some(SPDX_MEDIA_TYPE) => ("sbom.spdx.json", SPDX_MEDIA_TYPE),
            Some(IN_TOTO_MEDIA_TYPE) => ("provenance.intoto.json", IN_TOTO_MEDIA_TYPE),
            // Not galley's: it is about the old image, and stays with it.
            _ => continue,
        };
        let artifact: Manifest = layout.read_json("artifact manifest", &r.digest)?;
        let Some(layer) = artifact.layers.first() else {
            continue;
        };
        let bytes = layout.read_json_blob(&layer.digest)?;
        let mut value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BaseConfig(format!("an attached document: {e}")))?;
        rewrite(&mut value, m);
        if kind == IN_TOTO_MEDIA_TYPE {
            if let Some(p) = value.pointer_mut("/predicate/buildDefinition/internalParameters") {
                p["rebasedFrom"] = serde_json::json!({
                    "image": m.image.to_string(),
                    "base": {"name": m.base_name, "digest": m.base.to_string()},
                });
            }
        }
        let annotations = r
            .annotations
            .into_iter()
            .filter(|(k, _)| k != ANNOTATION_SUBJECT && k != CREATED)
            .collect();
        docs.push(Document {
            artifact_type: kind,
            title,
            annotations,
            value,
        });
    }
    Ok(docs)
}

/// Every string of `v` with the old digests' hex (and the old base's name) replaced.
fn rewrite(v: &mut Value, m: &Moved<'_>) {
    match v {
        Value::String(s) => {
            if s == m.base_name && !m.base_name.is_empty() {
                *s = m.base_name_to.to_string();
            }
            *s = s
                .replace(m.image.hex(), m.image_to.hex())
                .replace(m.base.hex(), m.base_to.hex());
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, m)),
        Value::Object(o) => o.values_mut().for_each(|x| rewrite(x, m)),
        _ => {}
    }
}
