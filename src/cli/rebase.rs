//! `galley rebase`.

use std::time::Duration;

use anyhow::Context as _;

use super::RebaseArgs;
use crate::oci::layout::Layout;
use crate::pipeline::base::Lookup;
use crate::pipeline::rebase::{rebase, RebaseRequest};
use crate::registry::pull::BlobCache;
use crate::registry::push::{PushStats, Pusher};
use crate::registry::reference::is_tag;
use crate::registry::Reference;
use crate::spec::BaseRef;

/// Rebases the image and prints the new reference (the report with --json).
pub fn run(args: RebaseArgs) -> anyhow::Result<()> {
    let options = args.registry.options()?;
    let cache_dir = BlobCache::default_dir();
    // A registry image is brought into a scratch layout, rebased there and pushed back (or
    // written to --output).
    let mut scratch = None;
    let mut remote = None;
    let (dir, tag) = match BaseRef::parse(&args.image) {
        Ok(BaseRef::Layout { dir, tag }) if args.image.starts_with("oci:") => (dir, tag),
        Ok(BaseRef::Registry(r)) if r.tag.is_some() => {
            let tmp = tempfile::Builder::new()
                .prefix("galley-rebase-")
                .tempdir()
                .context("a scratch layout for the registry image")?;
            let layout = Layout::create(&tmp.path().join("image"))?;
            let tag = r.tag.clone().expect("matched a tag");
            crate::pipeline::rebase::pull_image(&r, &options, &cache_dir, &layout, &tag)
                .with_context(|| format!("reading {}", args.image))?;
            let dir = layout.root().to_path_buf();
            scratch = Some(tmp);
            remote = Some(r);
            (dir, tag)
        }
        _ => anyhow::bail!(
            "{} is not an image: give oci:DIR:TAG (a layout galley wrote) or host/repo:tag (rebased and pushed back)",
            args.image
        ),
    };
    let new_base = BaseRef::parse(&args.base).context("--base")?;
    let from_base = args
        .from_base
        .as_deref()
        .map(BaseRef::parse)
        .transpose()
        .context("--from-base")?;
    if let Some(bad) = args.tags.iter().find(|t| !is_tag(t)) {
        anyhow::bail!("--tag {bad:?} is not a tag: letters, digits, '.', '_' and '-', at most 128");
    }
    let layout = Layout::open(&dir)?;
    let out = match &args.output {
        Some(o) => Layout::create(o)?,
        None => layout.clone(),
    };
    let tags = if args.tags.is_empty() {
        vec![tag.clone()]
    } else {
        args.tags.clone()
    };
    let lookup = Lookup {
        cache_dir: &cache_dir,
        pin: None,
        refresh: false,
        ttl: Duration::from_secs(24 * 3600),
    };
    let report = rebase(&RebaseRequest {
        layout: &layout,
        tag: &tag,
        new_base: &new_base,
        from_base: from_base.as_ref(),
        out: &out,
        tags: &tags,
        lookup: &lookup,
        options: &options,
    })?;
    // In place: every image and document first, then the tags.
    let pushed = match (&remote, &args.output) {
        (Some(r), None) => {
            let repo = Reference {
                tag: None,
                digest: None,
                ..r.clone()
            };
            let pusher = Pusher::new(&repo, &options, None).context("setting up the push")?;
            let desc = out.resolve(&tags[0])?;
            let mut stats = PushStats::default();
            pusher
                .push_content(&out, &desc, &mut stats)
                .and_then(|()| pusher.push_referrers_of(&out, &desc, &mut stats))
                .and_then(|()| pusher.push_tags(&out, &desc, &tags))
                .with_context(|| format!("pushing the rebased image to {}", repo.name()))?
        }
        _ => Vec::new(),
    };
    drop(scratch);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.platforms {
            eprintln!(
                "{}: {} -> {} (base {} -> {})",
                p.platform, p.from, p.to, p.base_from, p.base_to
            );
        }
        eprintln!(
            "rebased onto {}: {} document(s) attached again, tags {}",
            report.base,
            report.referrers,
            report.tags.join(", ")
        );
        // As `galley build` prints its images: pushed, by digest; else the layout's tag.
        match pushed.first() {
            Some(_) => println!("{}@{}", remote.as_ref().expect("pushed").name(), report.to),
            None => println!("oci:{}:{}", out.root().display(), tags[0]),
        }
    }
    Ok(())
}
