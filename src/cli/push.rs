//! `galley push LAYOUT REPOSITORY`: pushes the tagged images of an OCI layout built earlier:
//! every image's blobs, manifests and referrers first, then, when all of them are there, the
//! tags of all of them.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

use super::PushArgs;
use crate::oci::layout::Layout;
use crate::oci::{Descriptor, ANNOTATION_REF_NAME};
use crate::registry::push::{PushStats, Pusher};
use crate::registry::Reference;

#[derive(Serialize)]
struct PushedImage {
    digest: String,
    references: Vec<String>,
    blobs: PushStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Pushes; returns whether every image was pushed.
pub fn run(args: PushArgs) -> anyhow::Result<bool> {
    let target = Reference::parse(&args.repository)?;
    anyhow::ensure!(
        target.tag.is_none() && target.digest.is_none(),
        "{} is not a repository: give host/repo without tag or digest (the layout's tags are pushed)",
        args.repository
    );
    let layout = Layout::open(&args.layout)?;
    let index = layout.index()?;
    // Group the layout's tags by the image they point at: each image's content is pushed once.
    let mut images: BTreeMap<String, (Descriptor, Vec<String>)> = BTreeMap::new();
    for d in &index.manifests {
        let Some(tag) = d.annotations.get(ANNOTATION_REF_NAME) else {
            continue;
        };
        if !args.tags.is_empty() && !args.tags.contains(tag) {
            continue;
        }
        let mut desc = d.clone();
        desc.annotations.clear();
        images
            .entry(d.digest.to_string())
            .or_insert_with(|| (desc, Vec::new()))
            .1
            .push(tag.clone());
    }
    if let Some(missing) = args
        .tags
        .iter()
        .find(|t| !images.values().any(|(_, tags)| tags.contains(t)))
    {
        anyhow::bail!("no image tagged {missing:?} in {}", args.layout.display());
    }
    anyhow::ensure!(
        !images.is_empty(),
        "{} holds no tagged image",
        args.layout.display()
    );

    let options = args.registry.options()?;
    let pusher = Pusher::new(&target, &options, None).context("setting up the push")?;
    // Every image's content first; the tags only once all of it is there, together (as
    // `build --push` does): a failed second image leaves the first one unreleased too.
    let mut results = Vec::new();
    for (digest, (desc, _)) in &images {
        let mut stats = PushStats::default();
        let outcome = pusher
            .push_content(&layout, desc, &mut stats)
            .and_then(|()| pusher.push_referrers_of(&layout, desc, &mut stats));
        if let Err(e) = &outcome {
            eprintln!("push of {digest} failed: {e}");
        }
        results.push(PushedImage {
            digest: digest.clone(),
            references: Vec::new(),
            blobs: stats,
            error: outcome.err().map(|e| e.to_string()),
        });
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        eprintln!(
            "{failed} of {} images could not be pushed: no tag moved",
            results.len()
        );
        for r in &mut results {
            r.error
                .get_or_insert_with(|| "not tagged: another image of the push failed".into());
        }
    } else {
        for (r, (_, (desc, tags))) in results.iter_mut().zip(&images) {
            match pusher.push_tags(&layout, desc, tags) {
                Ok(refs) => {
                    eprintln!(
                        "pushed {} ({} uploaded, {} skipped, {} mounted)",
                        refs.join(", "),
                        r.blobs.uploaded,
                        r.blobs.skipped,
                        r.blobs.mounted
                    );
                    r.references = refs;
                }
                Err(e) => {
                    eprintln!("tagging {} failed: {e}", r.digest);
                    r.error = Some(e.to_string());
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        // host/repo:tag@sha256:..., one per line, for scripts.
        for r in &results {
            for reference in &r.references {
                println!("{reference}");
            }
        }
    }
    Ok(results.iter().all(|r| r.error.is_none()))
}
