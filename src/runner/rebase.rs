//! A rebase build: the images of an earlier build moved onto the project's base as it is now
//! (its tag asked again), without compiling, into this build's layout; pushed with their tags
//! (all together, last) when the earlier build pushed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::config::serve::Project;
use crate::oci::layout::Layout;
use crate::pipeline::base::{resolve_ref, Lookup};
use crate::pipeline::rebase::{rebase, RebaseRequest};
use crate::pipeline::report::{PushReport, Report, Status};
use crate::registry::pull::{BlobCache, DEFAULT_BASE_TTL};
use crate::registry::push::{PushStats, Pusher};
use crate::registry::RegistryOptions;
use crate::spec::{BaseRef, DEFAULT_BASE};
use crate::store::{BuildStatus, ListFilter};
use crate::target::Target;

use super::events::BuildLog;
use super::{failed_ran, ran_of, BuildInput, Inner, Ran};

/// Who a rebase the base watch queued was started by.
pub const BASE_WATCH: &str = "base-watch";

impl Inner {
    /// Rebases build `of` (see the module). Every variant rebased (and pushed): succeeded;
    /// otherwise failed, each variant's error in the report, no registry tag moved.
    pub(super) fn run_rebase(
        &self,
        id: i64,
        of: i64,
        project: &Project,
        push: bool,
        cancel: &Cancel,
        log: &BuildLog,
    ) -> Ran {
        let failed = failed_ran;
        let src_dir = self.build_dir(of).join("out");
        let old = std::fs::read(src_dir.join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .and_then(|v| Report::from_value(v).ok());
        let Some(old) = old else {
            return failed(format!(
                "build {of}'s output layout is gone (deleted or past retention): nothing to rebase"
            ));
        };
        let base_text = project.base.as_deref().unwrap_or(DEFAULT_BASE);
        let base = match BaseRef::parse(base_text) {
            Ok(b) => b,
            Err(e) => return failed(format!("the project's base: {e}")),
        };
        // The base the images were built on, as the build named it (a layout's full path).
        let from_base = old
            .inputs
            .as_ref()
            .and_then(|i| BaseRef::parse(&i.base).ok());
        let (src, out) = match (
            Layout::open(&src_dir),
            Layout::create(&self.build_dir(id).join("out")),
        ) {
            (Ok(s), Ok(o)) => (s, o),
            (Err(e), _) | (_, Err(e)) => return failed(e.to_string()),
        };
        let (cache_dir, options) = self.base_access(project, cancel);
        let lookup = fresh(&cache_dir);
        log.say(
            "rebase",
            &format!("rebasing build {of}'s images onto {base_text}, without compiling"),
        );
        let mut report = old;
        report.output = out.root().display().to_string();
        report.tags_moved = false;
        let mut rebased = Vec::new();
        for v in report.variants.iter_mut().filter(|v| v.status.succeeded()) {
            let Some(tag) = v.tags.first().cloned() else {
                continue;
            };
            let req = RebaseRequest {
                layout: &src,
                tag: &tag,
                new_base: &base,
                from_base: from_base.as_ref(),
                out: &out,
                tags: &v.tags,
                lookup: &lookup,
                options: &options,
            };
            match rebase(&req) {
                Ok(r) => {
                    for p in &r.platforms {
                        log.say(
                            "rebase",
                            &format!(
                                "[{} {}] {} -> {} (base {} -> {})",
                                v.variant, p.platform, p.from, p.to, p.base_from, p.base_to
                            ),
                        );
                    }
                    report.base.name = r.base.clone();
                    report.base.digest = r.base_digest.clone();
                    // A repro of this build builds it on the new base.
                    if let Some(i) = report.inputs.as_mut() {
                        i.base = base_text.to_string();
                    }
                    v.digest = Some(r.to.clone());
                    for (p, rp) in v.platforms.iter_mut().zip(&r.platforms) {
                        p.manifest_digest = Some(rp.to.clone());
                        p.config_digest = Some(rp.config.clone());
                        // What the earlier build's stages did is its record, not this one's.
                        p.stages.clear();
                        p.push = None;
                        p.referrers_push = None;
                    }
                    v.push = None;
                    rebased.push((v.variant.clone(), r.to));
                }
                Err(e) => {
                    log.say("rebase", &format!("[{}] {e}", v.variant));
                    v.status = Status::Failed;
                    v.error = Some(format!("rebase: {e}"));
                }
            }
        }
        let all = report.variants.iter().all(|v| v.status.succeeded());
        if all && push {
            if let Err(e) = self.push_rebased(project, &options, &out, &mut report, log) {
                log.say("push", &e);
            }
        }
        report.succeeded = report.variants.iter().all(|v| v.status.succeeded());
        report.tags_moved = true;
        let written = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|j| {
                out.write_file_atomic(&out.root().join("report.json"), &j)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            return failed(format!("cannot write the report: {e}"));
        }
        ran_of(report)
    }

    /// The blob cache and the registry options a project's base is read with.
    fn base_access(&self, p: &Project, cancel: &Cancel) -> (std::path::PathBuf, RegistryOptions) {
        let cache_dir = self
            .config
            .cache_dir
            .clone()
            .unwrap_or_else(BlobCache::default_dir);
        let options = RegistryOptions {
            insecure: p.insecure.clone(),
            ca_bundle: p.ca_bundle.clone(),
            cancel: cancel.clone(),
            ..Default::default()
        };
        (cache_dir, options)
    }

    /// Pushes every rebased image and its documents, then every tag: a failed image moves no tag.
    fn push_rebased(
        &self,
        project: &Project,
        options: &RegistryOptions,
        out: &Layout,
        report: &mut Report,
        log: &BuildLog,
    ) -> Result<(), String> {
        let Some(repo) = &project.push else {
            return Err(format!("project {} has no push repository", project.name));
        };
        let fail = |report: &mut Report, e: String| {
            for v in report.variants.iter_mut() {
                v.status = Status::Failed;
                v.error = Some(format!("push: {e}"));
            }
            e
        };
        let pusher = match Pusher::new(repo, options, None) {
            Ok(p) => p,
            Err(e) => return Err(fail(report, e.to_string())),
        };
        let mut pushed = Vec::new();
        for v in &report.variants {
            let Some(tag) = v.tags.first() else { continue };
            let desc = match out.resolve(tag) {
                Ok(d) => d,
                Err(e) => return Err(fail(report, e.to_string())),
            };
            let mut stats = PushStats::default();
            let started = std::time::Instant::now();
            let sent = pusher
                .push_content(out, &desc, &mut stats)
                .and_then(|()| pusher.push_referrers_of(out, &desc, &mut stats));
            if let Err(e) = sent {
                return Err(fail(report, e.to_string()));
            }
            pushed.push((v.variant.clone(), desc, stats, started.elapsed()));
        }
        // Every image is there: now the tags.
        for (variant, desc, stats, took) in pushed {
            let v = report
                .variants
                .iter_mut()
                .find(|v| v.variant == variant)
                .expect("pushed from the report");
            let refs = match pusher.push_tags(out, &desc, &v.tags) {
                Ok(r) => r,
                Err(e) => {
                    v.status = Status::Failed;
                    v.error = Some(format!("push: {e}"));
                    return Err(e.to_string());
                }
            };
            for r in &refs {
                log.say("push", &format!("[{variant}] tag moved: {r}"));
            }
            v.push = Some(PushReport {
                repository: repo.name(),
                digest: desc.digest.clone(),
                references: refs,
                withheld: None,
                blobs: stats,
                ms: took.as_millis() as u64,
                error: None,
            });
        }
        Ok(())
    }

    /// The base watch: each project with `watch_base` has its base's tag asked again every
    /// period; when it resolves to another digest than the project's latest succeeded build was
    /// built on, that build is rebased (one rebase per build and base digest: the request's
    /// Idempotency-Key). Only the worker holding the build's layout queues it. Runs until the
    /// runner stops.
    pub(super) fn watch_bases(self: Arc<Self>) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        while !self.fleet_done.load(Ordering::SeqCst) {
            for p in self.config.projects.values() {
                let Some(every) = p.watch_base else { continue };
                let now = Instant::now();
                if due.get(&p.name).is_some_and(|t| now < *t) {
                    continue;
                }
                due.insert(p.name.clone(), now + every);
                if let Err(e) = self.check_base(p) {
                    tracing::warn!(project = %p.name, "base watch: {e}");
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One look at a project's base (see `watch_bases`).
    fn check_base(&self, p: &Project) -> Result<(), String> {
        let rows = self
            .store
            .list_builds(&ListFilter {
                limit: 50,
                before: None,
                project: Some(p.name.clone()),
                status: Some(BuildStatus::Succeeded),
            })
            .map_err(|e| e.to_string())?;
        let me = &self.config.fleet.worker_name;
        let latest = rows.into_iter().find_map(|row| {
            let input = row.input().ok()?;
            let report = Report::from_value(row.report.clone()?).ok()?;
            (input.repro_of.is_none() && row.worker.as_deref().is_none_or(|w| w == me))
                .then_some((row.id, input, report))
        });
        let Some((id, input, report)) = latest else {
            return Ok(());
        };
        let targets: Vec<Target> = report
            .inputs
            .as_ref()
            .map(|i| i.targets.iter().filter_map(|t| t.parse().ok()).collect())
            .unwrap_or_default();
        if targets.is_empty() {
            return Ok(());
        }
        let base_text = p.base.as_deref().unwrap_or(DEFAULT_BASE);
        let base = BaseRef::parse(base_text).map_err(|e| e.to_string())?;
        let (cache_dir, options) = self.base_access(p, &Cancel::default());
        let lookup = fresh(&cache_dir);
        let (now, _) =
            resolve_ref(&base, &targets, &lookup, &options).map_err(|e| e.to_string())?;
        if now.digest == report.base.digest {
            return Ok(());
        }
        tracing::info!(
            project = %p.name,
            build = id,
            "base watch: {base_text} moved from {} to {}: rebasing build {id}",
            report.base.digest,
            now.digest
        );
        let rebase = BuildInput {
            repro_of: None,
            retry_of: None,
            rebase_of: Some(id),
            ..input
        };
        // One rebase of this build onto this digest, however often the watch looks.
        let key = format!("base-watch-{id}-{}", now.digest.hex());
        self.submit(&rebase, BASE_WATCH, Some(&key))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A lookup that asks a base's tag again: the point of a rebase, and of the watch, is a base
/// that moved.
fn fresh(cache_dir: &std::path::Path) -> Lookup<'_> {
    Lookup {
        cache_dir,
        pin: None,
        refresh: true,
        ttl: DEFAULT_BASE_TTL,
    }
}
