//! `galley push LAYOUT REPOSITORY`: pushes the tagged images of an OCI layout built earlier.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

use super::PushArgs;
use crate::oci::layout::Layout;
use crate::oci::{Descriptor, ANNOTATION_REF_NAME};
use crate::registry::push::{PushStats, Pusher};
use crate::registry::{Reference, RegistryOptions};

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

    let options = RegistryOptions {
        insecure: args.registry.insecure_registries.clone(),
        ca_bundle: args.registry.ca_bundle.clone(),
        credential: super::credential(&args.registry)?,
        ..Default::default()
    };
    let pusher = Pusher::new(&target, &options, None).context("setting up the push")?;
    let mut results = Vec::new();
    for (digest, (desc, tags)) in &images {
        let mut stats = PushStats::default();
        let outcome = pusher
            .push_content(&layout, desc, &mut stats)
            .and_then(|()| pusher.push_referrers_of(&layout, desc, &mut stats))
            .and_then(|()| pusher.push_tags(&layout, desc, tags));
        let (references, error) = match outcome {
            Ok(r) => (r, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        match &error {
            None => eprintln!(
                "pushed {} ({} uploaded, {} skipped, {} mounted)",
                references.join(", "),
                stats.uploaded,
                stats.skipped,
                stats.mounted
            ),
            Some(e) => eprintln!("push of {digest} failed, no tag moved: {e}"),
        }
        results.push(PushedImage {
            digest: digest.clone(),
            references,
            blobs: stats,
            error,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(results.iter().all(|r| r.error.is_none()))
}
