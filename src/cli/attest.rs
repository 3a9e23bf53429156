//! `galley sbom LAYOUT TAG`: prints the SBOM (or, with `--provenance`, the provenance statement)
//! attached to an image of a layout galley built.

use std::path::PathBuf;

use anyhow::Context;

use super::SbomArgs;
use crate::attest::{IN_TOTO_MEDIA_TYPE, SPDX_MEDIA_TYPE};
use crate::oci::layout::Layout;
use crate::oci::{is_index, Index, Manifest, PlatformSpec};

/// Prints the document on stdout, exactly as stored (its sha256 is the layer digest).
pub fn run(args: SbomArgs) -> anyhow::Result<bool> {
    let (dir, tag) = image_ref(&args.image, args.tag.as_deref())?;
    let layout = Layout::open(&dir)?;
    let top = layout
        .resolve(&tag)
        .with_context(|| format!("no image tagged {tag:?} in {}", dir.display()))?;
    let tag = tag.as_str();
    let image = if is_index(&top.media_type) {
        let index: Index = layout.read_json("image index", &top.digest)?;
        let platforms: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(PlatformSpec::to_string))
            .collect();
        let chosen = match &args.platform {
            Some(p) => index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().map(PlatformSpec::to_string).as_ref() == Some(p)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => anyhow::bail!(
                "{} is an index of several platforms ({}): choose one with --platform",
                tag,
                platforms.join(", ")
            ),
        };
        chosen
            .with_context(|| {
                format!(
                    "{} has no platform {:?} (it has {})",
                    tag,
                    args.platform.as_deref().unwrap_or(""),
                    platforms.join(", ")
                )
            })?
            .clone()
    } else {
        top
    };
    let (want, what) = if args.provenance {
        (IN_TOTO_MEDIA_TYPE, "provenance statement")
    } else {
        (SPDX_MEDIA_TYPE, "SBOM")
    };
    let referrer =
        layout
            .referrers(&image.digest)?
            .into_iter()
            .find(|d| d.artifact_type.as_deref() == Some(want))
            .with_context(|| {
                format!(
                "no {what} is attached to {} ({}): it was built with `{} = false` in galley.toml, \
                 or by a galley without attestations; build it again to attach one",
                tag,
                image.digest,
                if args.provenance { "provenance" } else { "sbom" }
            )
            })?;
    let manifest: Manifest = layout.read_json("artifact manifest", &referrer.digest)?;
    let layer = manifest
        .layers
        .first()
        .with_context(|| format!("artifact manifest {} has no layer", referrer.digest))?;
    let bytes = std::fs::read(layout.blob_path(&layer.digest))
        .with_context(|| format!("the {what} blob {} is missing", layer.digest))?;
    anyhow::ensure!(
        crate::oci::Digest::of(&bytes) == layer.digest,
        "the {what} blob {} does not match its digest: the layout is damaged",
        layer.digest
    );
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.write_all(b"\n")?;
    Ok(true)
}

/// Splits `oci:DIR:TAG`, or takes DIR and TAG as given.
fn image_ref(image: &str, tag: Option<&str>) -> anyhow::Result<(PathBuf, String)> {
    if let Some(tag) = tag {
        return Ok((PathBuf::from(image), tag.to_string()));
    }
    let rest = image.strip_prefix("oci:").with_context(|| {
        format!(
            "{image:?} names no image in a layout: write oci:DIR:TAG (e.g. oci:out:sqlite-1.4.2) \
             or DIR TAG"
        )
    })?;
    match rest.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() => {
            Ok((PathBuf::from(dir), tag.to_string()))
        }
        _ => anyhow::bail!("{image:?} has no tag: write oci:DIR:TAG (e.g. oci:out:sqlite-1.4.2)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_at_the_last_colon() {
        let (d, t) = image_ref("oci:out:sqlite-1.4.2", None).unwrap();
        assert_eq!((d, t.as_str()), (PathBuf::from("out"), "sqlite-1.4.2"));
        let (d, t) = image_ref("out", Some("pg-1")).unwrap();
        assert_eq!((d, t.as_str()), (PathBuf::from("out"), "pg-1"));
        assert!(image_ref("out", None)
            .unwrap_err()
            .to_string()
            .contains("oci:DIR:TAG"));
        assert!(image_ref("oci:out", None)
            .unwrap_err()
            .to_string()
            .contains("no tag"));
    }
}
