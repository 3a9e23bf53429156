//! The attest stage's output: each document (the SBOM, the provenance) as a blob in the layout,
//! wrapped in an OCI 1.1 artifact manifest whose `subject` is the image manifest, and recorded in
//! index.json as a referrer of that image. The image itself does not change: its digest is the
//! same with or without them.

use std::collections::BTreeMap;

use crate::oci::json::{canonical, JsonError};
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::{artifact_manifest, Descriptor, EMPTY_JSON, MEDIA_MANIFEST};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// A document to attach to an image.
pub struct Document {
    /// Its media type, also the artifact manifest's `artifactType`.
    pub artifact_type: &'static str,
    /// The file name tools such as oras give it (`org.opencontainers.image.title`).
    pub title: &'static str,
    /// More annotations for the artifact manifest (copied into referrers lists).
    pub annotations: BTreeMap<String, String>,
    pub value: serde_json::Value,
}

/// The annotation naming a document's file.
const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// Writes each document and its artifact manifest (referring to `subject`) into `out` and
/// records them as `subject`'s referrers. Returns the artifact manifests' descriptors, each with
/// its `artifactType` and annotations, as a referrers list shows them.
pub fn attach(
    out: &Layout,
    subject: &Descriptor,
    created: &str,
    docs: &[Document],
) -> Result<Vec<Descriptor>, AttachError> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    out.put_blob(EMPTY_JSON)?;
    let mut referrers = Vec::new();
    for doc in docs {
        let bytes = canonical("attached document", &doc.value)?;
        let digest = out.put_blob(&bytes)?;
        let mut layer = Descriptor::new(doc.artifact_type, digest, bytes.len() as u64);
        layer
            .annotations
            .insert(ANNOTATION_TITLE.to_string(), doc.title.to_string());
        let mut annotations = doc.annotations.clone();
        annotations.insert(ANNOTATION_CREATED.to_string(), created.to_string());
        let manifest = artifact_manifest(doc.artifact_type, &layer, subject, &annotations)?;
        let digest = out.put_blob(&manifest)?;
        let mut desc = Descriptor::new(MEDIA_MANIFEST, digest, manifest.len() as u64);
        desc.artifact_type = Some(doc.artifact_type.to_string());
        desc.annotations = annotations;
        referrers.push(desc);
    }
    let entries: Vec<(Descriptor, crate::oci::Digest)> = referrers
        .iter()
        .map(|d| (d.clone(), subject.digest.clone()))
        .collect();
    out.add_referrers(&entries)?;
    Ok(referrers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    #[test]
    fn documents_become_referrers_of_the_image_and_the_bytes_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let out = Layout::create(dir.path()).unwrap();
        let subject = Descriptor::new(MEDIA_MANIFEST, Digest::of(b"image"), 5);
        let docs = [Document {
            artifact_type: "application/spdx+json",
            title: "sbom.spdx.json",
            annotations: BTreeMap::new(),
            value: serde_json::json!({"b": 1, "a": [2]}),
        }];
        let first = attach(&out, &subject, "2023-11-14T22:13:20Z", &docs).unwrap();
        let again = attach(&out, &subject, "2023-11-14T22:13:20Z", &docs).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0].artifact_type.as_deref(),
            Some("application/spdx+json")
        );
        // Listed once, under the image's digest, and nowhere else.
        let listed = out.referrers(&subject.digest).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].digest, first[0].digest);
        assert!(out.referrers(&Digest::of(b"other")).unwrap().is_empty());
        let m: serde_json::Value =
            serde_json::from_slice(&out.read_json_blob(&first[0].digest).unwrap()).unwrap();
        assert_eq!(m["subject"]["digest"], subject.digest.to_string());
        assert_eq!(m["config"]["mediaType"], crate::oci::MEDIA_EMPTY);
        assert!(out.has_blob(&Digest::of(EMPTY_JSON)));
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                out.blob_path(&m["layers"][0]["digest"].as_str().unwrap().parse().unwrap()),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(doc, serde_json::json!({"a": [2], "b": 1}));
    }
}
