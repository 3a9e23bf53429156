//! `galley rebase`.

use std::time::Duration;

use anyhow::Context as _;

use super::RebaseArgs;
use crate::oci::layout::Layout;
use crate::pipeline::base::Lookup;
use crate::pipeline::rebase::{rebase, RebaseRequest};
use crate::registry::pull::BlobCache;
use crate::registry::reference::is_tag;
use crate::spec::BaseRef;

/// Rebases the image and prints the new reference (the report with --json).
pub fn run(args: RebaseArgs) -> anyhow::Result<()> {
    let (dir, tag) = match BaseRef::parse(&args.image) {
        Ok(BaseRef::Layout { dir, tag }) if args.image.starts_with("oci:") => (dir, tag),
        _ => anyhow::bail!(
            "{} is not an image layout's tag: give oci:DIR:TAG (a registry image: copy it into a layout first, e.g. skopeo copy docker://REF oci:DIR:TAG)",
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
    let options = args.registry.options()?;
    let cache_dir = BlobCache::default_dir();
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
        // As `galley build` prints a layout's image.
        println!("oci:{}:{}", out.root().display(), tags[0]);
    }
    Ok(())
}
