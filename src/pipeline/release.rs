//! The release policy, in one place: when registry tags move, and the tags themselves. Images
//! and indexes are pushed by then; what is left is naming them.
//!
//! - Registry tags move only when every variant succeeded, or with `--partial`: a failed variant
//!   must not leave the others half-released. Withheld pushes say why in the report.
//! - A variant whose tag push fails is failed.
//! - Local tags: every variant that built, in one `index.json` write; a failed write fails every
//!   variant it would have tagged.

use super::events::{EventSink, LogLine, Stage, Stream};
use super::report::{Status, VariantReport};
use crate::oci::layout::Layout;
use crate::oci::Descriptor;
use crate::registry::push::Pusher;
use crate::target::Target;

/// Marks the pushes of the variants that succeeded as withheld when another variant failed
/// (and the build pushes, without `partial`). Returns whether every variant succeeded.
pub fn withhold(variants: &mut [VariantReport], pushing: bool, partial: bool) -> bool {
    let failed: Vec<&str> = variants
        .iter()
        .filter(|v| !v.status.succeeded())
        .map(|v| v.variant.as_str())
        .collect();
    if failed.is_empty() {
        return true;
    }
    if pushing && !partial {
        let why = format!(
            "registry tags not moved because {} failed; pass --partial to release the variants that succeeded",
            failed.join(", ")
        );
        for v in variants.iter_mut().filter(|v| v.status.succeeded()) {
            if let Some(p) = &mut v.push {
                p.withheld = Some(why.clone());
            }
        }
    }
    false
}

/// Moves a pushed variant's registry tags, unless it failed or its push was withheld.
pub fn move_registry_tags(
    v: &mut VariantReport,
    pusher: &Pusher,
    out: &Layout,
    desc: &Descriptor,
    tags: &[String],
    events: &dyn EventSink,
    target: Target,
) {
    let Some(push) = &mut v.push else { return };
    if !v.status.succeeded() || push.withheld.is_some() {
        return;
    }
    match pusher.push_tags(out, desc, tags) {
        Ok(refs) => {
            for r in &refs {
                events.log(&LogLine {
                    variant: &v.variant,
                    target,
                    stage: Stage::Push,
                    stream: Stream::Galley,
                    message: &format!("tag moved: {r}"),
                });
            }
            push.references = refs;
        }
        Err(e) => {
            push.error = Some(e.to_string());
            v.status = Status::Failed;
            v.error = Some(format!("push: {e}"));
        }
    }
}

/// Tags every variant that built in the layout, in one write.
pub fn move_local_tags(
    out: &Layout,
    variants: &mut [VariantReport],
    descriptors: &[Option<Descriptor>],
) {
    let tagged = local_tags(variants, descriptors);
    if let Err(e) = out.set_tags(&tagged) {
        for v in variants.iter_mut().filter(|v| !v.tags.is_empty()) {
            v.status = Status::Failed;
            v.error = Some(format!("cannot write the tags: {e}"));
            v.tags.clear();
        }
    }
}

/// The local tags: each variant's tags on its image (a variant without one gets none).
fn local_tags(
    variants: &[VariantReport],
    descriptors: &[Option<Descriptor>],
) -> Vec<(String, Descriptor)> {
    variants
        .iter()
        .zip(descriptors)
        .filter_map(|(v, d)| Some((v, d.as_ref()?)))
        .flat_map(|(v, d)| v.tags.iter().map(move |t| (t.clone(), d.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::report::PushReport;
    use crate::registry::push::PushStats;

    fn variant(name: &str, status: Status, pushed: bool) -> VariantReport {
        VariantReport {
            variant: name.into(),
            features: vec![],
            status,
            error: None,
            digest: None,
            media_type: None,
            tags: vec![format!("{name}-1.0.0")],
            platforms: vec![],
            warnings: vec![],
            push: pushed.then(|| PushReport {
                repository: "registry.example/team/svc".into(),
                digest: crate::oci::Digest::of(name.as_bytes()),
                references: vec![],
                withheld: None,
                blobs: PushStats::default(),
                ms: 0,
                error: None,
            }),
        }
    }

    #[test]
    fn a_failed_variant_withholds_the_registry_tags_of_the_others() {
        let mut vs = vec![
            variant("sqlite", Status::Succeeded, true),
            variant("mysql", Status::Failed, false),
        ];
        assert!(!withhold(&mut vs, true, false));
        let why = vs[0].push.as_ref().unwrap().withheld.as_deref().unwrap();
        assert!(why.contains("because mysql failed"), "{why}");
        assert!(why.contains("--partial"), "{why}");
    }

    #[test]
    fn partial_or_no_push_or_all_built_withholds_nothing() {
        for (statuses, pushing, partial, all) in [
            ([Status::Succeeded, Status::Failed], true, true, false),
            ([Status::Succeeded, Status::Failed], false, false, false),
            ([Status::Succeeded, Status::Succeeded], true, false, true),
        ] {
            let mut vs = vec![
                variant("a", statuses[0], true),
                variant("b", statuses[1], true),
            ];
            assert_eq!(withhold(&mut vs, pushing, partial), all);
            assert!(vs
                .iter()
                .all(|v| v.push.as_ref().unwrap().withheld.is_none()));
        }
    }

    #[test]
    fn only_variants_with_an_image_get_local_tags() {
        let vs = vec![
            variant("sqlite", Status::Succeeded, false),
            variant("mysql", Status::Failed, false),
        ];
        let d = Descriptor::new(crate::oci::MEDIA_MANIFEST, crate::oci::Digest::of(b"m"), 1);
        let tags = local_tags(&vs, &[Some(d.clone()), None]);
        assert_eq!(tags, vec![("sqlite-1.0.0".to_string(), d)]);
    }
}
