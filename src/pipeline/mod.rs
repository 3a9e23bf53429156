//! The only place that knows stage order: compile, verify, strip, compress, layer, assemble,
//! push, then tags and the report. One compile runs at a time; the later stages of a variant run
//! on a worker thread while the next variant compiles.
//!
//! A `Context` carries what the caller provides: the toolchain (in the service wrapped in
//! `toolchain::Limited`, so builds share compile slots), where events go, and the cancel handle
//! that stops every child process, wait and retry.

pub mod assemble;
pub mod attach;
pub mod base;
pub mod cached;
pub mod compress;
pub mod events;
pub mod rebase;
pub mod release;
pub mod report;
pub mod strip;
pub mod verify;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Instant, SystemTime};

use crate::cache::{self, Kind, StageCache};
use crate::cancel::{Cancel, Cancelled};
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::time::rfc3339_millis;
use crate::oci::Descriptor;
use crate::registry::push::{PushStats, Pusher};
use crate::registry::{RegistryError, RegistryOptions};
use crate::spec::{BuildSpec, VariantSpec};
use crate::target::Target;
use crate::toolchain::{CompileRequest, ToolVersions, Toolchain};
use base::{BaseError, BaseImage};
use cached::{cached, Answer, Keep, Keyed, Tiers};
pub use events::{EventSink, LogLine, Stage, StageEvent, StageStatus, Stream};
use report::{BaseReport, PlatformReport, PushReport, Report, StageTiming, Status, VariantReport};

/// What the caller gives a build besides its spec.
pub struct Context<'a> {
    /// The compiler; the service wraps it in `toolchain::Limited` so its builds share
    /// `compile_slots` (this build's own compiles run one at a time anyway).
    pub toolchain: &'a dyn Toolchain,
    pub events: &'a dyn EventSink,
    pub cancel: &'a Cancel,
}

/// Failures that stop the whole build before any variant runs, or a cancel.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot prepare the output layout {dir}: {source}")]
    Output { dir: PathBuf, source: LayoutError },
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("{0}")]
    RemoteCache(String),
    #[error("cannot create the work directory {dir}: {source}")]
    Work {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Report { path: PathBuf, source: LayoutError },
    #[error("the build was {0}")]
    Cancelled(#[from] Cancelled),
}

/// Runs the whole build and writes `report.json` into the output layout (before any tag moves).
///
/// When the build is cancelled, every child has been stopped when this returns
/// `Err(PipelineError::Cancelled)`; the work directory is gone, no tag moved, and an output
/// directory this build created is removed again.
pub fn run(spec: &BuildSpec, ctx: &Context<'_>) -> Result<Report, PipelineError> {
    let created_output = !spec.output.exists();
    let result = run_inner(spec, ctx);
    if let Err(c) = ctx.cancel.check() {
        // Whatever failed on the way, the cause is the cancel.
        if created_output {
            let _ = std::fs::remove_dir_all(&spec.output);
        }
        return Err(PipelineError::Cancelled(c));
    }
    result
}

fn run_inner(spec: &BuildSpec, ctx: &Context<'_>) -> Result<Report, PipelineError> {
    let started = Instant::now();
    ctx.cancel.check()?;
    let registry = RegistryOptions {
        cancel: ctx.cancel.clone(),
        ..spec.registry.clone()
    };
    // The base first: a missing or corrupt base must not leave an output directory behind.
    let (base, base_layout) = base::resolve(spec, &registry)?;
    // Credentials are looked up now, so a missing helper fails before anything compiles.
    let pushers = pushers(spec, &base, &registry)?;
    let stage_cache = match spec.stage_cache {
        None => None,
        Some(max) => match StageCache::open(&spec.cache_dir, max) {
            Ok(c) => Some(c),
            Err(e) => {
                // A cache that cannot be used makes the build slower, never wrong.
                tracing::warn!("stage cache off: {e}");
                None
            }
        },
    };
    // The remote tier: a key file that is configured and unusable stops the build here,
    // before anything compiles; a registry that does not answer later only makes it slower.
    let remote = match (&stage_cache, &spec.cache_remote) {
        (Some(local), Some(r)) => Some(
            crate::cache::remote::Remote::open(r, local, &registry)
                .map_err(|e| PipelineError::RemoteCache(e.to_string()))?,
        ),
        _ => None,
    };
    let out = Layout::create(&spec.output).map_err(|source| PipelineError::Output {
        dir: spec.output.clone(),
        source,
    })?;
    let output = out
        .root()
        .canonicalize()
        .map_err(|source| PipelineError::Work {
            dir: spec.output.clone(),
            source,
        })?;
    let out = Layout::open(&output).map_err(|source| PipelineError::Output {
        dir: output.clone(),
        source,
    })?;
    base.copy_layers(&base_layout, &out)?;
    let work = output.join(".galley-work");
    std::fs::create_dir_all(&work).map_err(|source| PipelineError::Work {
        dir: work.clone(),
        source,
    })?;
    let tools = ctx.toolchain.versions(&spec.project);
    let b = Build {
        spec,
        ctx,
        out: &out,
        base: &base,
        pushers: &pushers,
        tools: &tools,
        cache: stage_cache.as_ref().map(|local| Tiers {
            local,
            remote: remote.as_ref(),
        }),
    };
    let built = build_variants(&b, &work);
    let _ = std::fs::remove_dir_all(&work);
    // A cancel stops the uploads too (they share the build's cancel); dropping `remote` on the
    // way out waits for its thread.
    ctx.cancel.check()?;

    let collected = collect_variants(&b, built);
    if let Some(c) = &stage_cache {
        match c.evict() {
            Ok(e) if e.entries > 0 => tracing::info!(
                "stage cache: {} entries and {} bytes evicted (least recently used first)",
                e.entries,
                e.bytes
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("stage cache eviction: {e}"),
        }
    }
    let descriptors: Vec<Option<Descriptor>> = collected.iter().map(|(_, d)| d.clone()).collect();
    let mut variants: Vec<VariantReport> = collected.into_iter().map(|(v, _)| v).collect();
    let mut report = report_of(spec, &base, &tools, &output, &variants);

    let all_built = release::withhold(&mut variants, !pushers.is_empty(), spec.partial);
    report.variants = variants.clone();
    report.succeeded = all_built;
    report.total_ms = started.elapsed().as_millis() as u64;
    // The report is on disk before any tag moves: a tag never points at an image without one.
    let path = output.join("report.json");
    write_report(&out, &path, &report)?;

    for ((v, desc), vs) in variants.iter_mut().zip(&descriptors).zip(&spec.variants) {
        if let (Some(desc), Some(pusher)) = (desc, pusher_of(&pushers, vs)) {
            release::move_registry_tags(
                v,
                pusher,
                &out,
                desc,
                &vs.tags,
                ctx.events,
                spec.targets[0],
            );
        }
    }
    release::move_local_tags(&out, &mut variants, &descriptors);
    report.succeeded = variants.iter().all(|v| v.status == Status::Succeeded);
    report.variants = variants;
    report.tags_moved = true;
    // The uploads ran beside the later stages and the pushes; what is left finishes now, after
    // the tags moved: a slow or failing cache repository never holds up or fails a release.
    if let Some(r) = &remote {
        let summary = r.finish();
        for w in &summary.warnings {
            tracing::warn!("{w}");
        }
        report.remote_cache = Some(summary);
    }
    report.total_ms = started.elapsed().as_millis() as u64;
    write_report(&out, &path, &report)?;
    Ok(report)
}

/// One pusher per repository (a variant may have its own), each offered the base's layers to
/// mount from the base's repository.
fn pushers(
    spec: &BuildSpec,
    base: &BaseImage,
    registry: &RegistryOptions,
) -> Result<Pushers, PipelineError> {
    let mut pushers = Pushers::new();
    for target in spec.variants.iter().filter_map(|v| v.push.as_ref()) {
        if pushers.contains_key(&target.name()) {
            continue;
        }
        let mount = base.reference.as_ref().map(|r| {
            let digests = base
                .platforms
                .iter()
                .flat_map(|p| p.manifest.layers.iter().map(|l| l.digest.clone()))
                .collect();
            (r, digests)
        });
        let pusher = Pusher::new(target, registry, mount)
            .map_err(|e| PipelineError::Registry(Box::new(e)))?;
        pushers.insert(target.name(), pusher);
    }
    Ok(pushers)
}

/// The report before the tags move: everything but the variants' outcomes.
fn report_of(
    spec: &BuildSpec,
    base: &BaseImage,
    tools: &ToolVersions,
    output: &Path,
    variants: &[VariantReport],
) -> Report {
    Report {
        schema_version: report::REPORT_SCHEMA_VERSION,
        galley_version: env!("CARGO_PKG_VERSION").to_string(),
        project: spec.project.display().to_string(),
        binary: spec.binary.clone(),
        version: spec.version.clone(),
        source_date_epoch: spec.source_date_epoch,
        epoch_source: spec.epoch_source,
        created: spec.created.clone(),
        revision: spec.revision.clone(),
        dirty: spec.dirty,
        base: BaseReport {
            name: base.name.clone(),
            blobs_downloaded: base.blobs_downloaded,
            digest: base.digest.clone(),
            resolution: base.resolution,
            resolved_at: base.resolved_at.map(rfc3339_millis),
            resolution_age_secs: base.resolved_at.map(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .unwrap_or_default()
                    .as_secs()
            }),
        },
        inputs: Some(spec.inputs.clone()),
        output: output.display().to_string(),
        toolchain: tools.one_line(),
        tools: tools.clone().with_upx(variants.iter().find_map(|v| {
            v.platforms
                .iter()
                .find_map(|p| p.compression.as_ref()?.tool.clone())
        })),
        succeeded: false,
        tags_moved: false,
        variants: Vec::new(),
        total_ms: 0,
        remote_cache: None,
    }
}

fn write_report(out: &Layout, path: &Path, report: &Report) -> Result<(), PipelineError> {
    let json = serde_json::to_vec_pretty(report).expect("the report serializes");
    out.write_file_atomic(path, &json)
        .map_err(|source| PipelineError::Report {
            path: path.to_path_buf(),
            source,
        })
}

/// The pushers of a build, by repository name.
type Pushers = std::collections::BTreeMap<String, Pusher>;

/// The pusher of a variant's repository, if it is pushed.
fn pusher_of<'a>(pushers: &'a Pushers, variant: &VariantSpec) -> Option<&'a Pusher> {
    variant.push.as_ref().and_then(|r| pushers.get(&r.name()))
}

/// What every stage of a build shares.
struct Build<'a> {
    spec: &'a BuildSpec,
    ctx: &'a Context<'a>,
    out: &'a Layout,
    base: &'a BaseImage,
    pushers: &'a Pushers,
    tools: &'a ToolVersions,
    /// The stage cache's tiers, unless it is off.
    cache: Option<Tiers<'a>>,
}

/// One platform image of one variant, as its worker returns it.
struct Built {
    variant: usize,
    report: PlatformReport,
    manifest: Option<Descriptor>,
}

/// Compiles every variant for every target on this thread (one cargo at a time), packaging
/// each on a worker thread while the next compiles.
fn build_variants(b: &Build<'_>, work: &Path) -> Vec<Built> {
    let (spec, ctx) = (b.spec, b.ctx);
    thread::scope(|scope| {
        let mut workers = Vec::new();
        'variants: for (vi, variant) in spec.variants.iter().enumerate() {
            for &target in &spec.targets {
                let dir = work.join(format!("{}-{}", variant.name, target.triple()));
                let pusher = pusher_of(b.pushers, variant);
                let attest = spec.sbom || spec.provenance;
                let mut unit = Unit::new(ctx, variant, target, pusher.is_some(), attest);
                let compiled = compile(b, &mut unit, &dir);
                let cancelled = ctx.cancel.is_cancelled();
                match compiled {
                    Ok(raw) => workers.push(scope.spawn(move || {
                        let manifest = match package(b, pusher, &mut unit, &raw, &dir) {
                            Ok(d) => Some(d),
                            Err(e) => {
                                unit.fail(e);
                                None
                            }
                        };
                        unit.finish();
                        Built {
                            variant: vi,
                            report: unit.report,
                            manifest,
                        }
                    })),
                    Err(e) => {
                        unit.fail(e);
                        unit.finish();
                        let report = unit.report;
                        workers.push(scope.spawn(move || Built {
                            variant: vi,
                            report,
                            manifest: None,
                        }));
                    }
                }
                // A cancel stops scheduling; the workers notice it at their next step.
                if cancelled {
                    break 'variants;
                }
            }
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("a packaging thread panicked"))
            .collect()
    })
}

/// Turns the platform results into variant reports: an index over several platforms, the
/// index pushed (its platform images were pushed by their workers).
fn collect_variants(b: &Build<'_>, built: Vec<Built>) -> Vec<(VariantReport, Option<Descriptor>)> {
    let (spec, out, base, pushers) = (b.spec, b.out, b.base, b.pushers);
    let mut variants = Vec::new();
    for (vi, variant) in spec.variants.iter().enumerate() {
        let mine: Vec<&Built> = built.iter().filter(|b| b.variant == vi).collect();
        let platforms: Vec<PlatformReport> = mine.iter().map(|b| b.report.clone()).collect();
        let descs: Option<Vec<Descriptor>> = mine.iter().map(|b| b.manifest.clone()).collect();
        let warnings: Vec<String> = platforms
            .iter()
            .flat_map(|p| {
                p.warnings
                    .iter()
                    .map(move |w| format!("{}: {w}", p.platform))
            })
            .collect();
        let mut vr = VariantReport {
            variant: variant.name.clone(),
            features: variant.features.clone(),
            status: Status::Failed,
            error: None,
            digest: None,
            media_type: None,
            tags: Vec::new(),
            platforms,
            warnings,
            push: None,
        };
        let mut top_desc = None;
        match descs {
            Some(descs) if !descs.is_empty() => {
                let top = if descs.len() == 1 {
                    Ok(descs[0].clone())
                } else {
                    assemble::index(spec, out, &base.name, descs).map_err(|e| e.to_string())
                };
                match top {
                    Ok(top) => {
                        vr.status = Status::Succeeded;
                        vr.digest = Some(top.digest.clone());
                        vr.media_type = Some(top.media_type.clone());
                        vr.tags = variant.tags.clone();
                        if let Some(pusher) = pusher_of(pushers, variant) {
                            let pushed = push_variant(pusher, out, &top, &vr.platforms);
                            if let Some(e) = &pushed.error {
                                vr.status = Status::Failed;
                                vr.error = Some(format!("push: {e}"));
                            }
                            vr.push = Some(pushed);
                        }
                        top_desc = Some(top);
                    }
                    Err(e) => vr.error = Some(e),
                }
            }
            _ => {
                let errors: Vec<String> = vr
                    .platforms
                    .iter()
                    .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.platform)))
                    .collect();
                vr.error = Some(if errors.is_empty() {
                    "not built".to_string()
                } else {
                    errors.join("; ")
                });
            }
        }
        variants.push((vr, top_desc));
    }
    variants
}

fn platform_name(target: Target) -> String {
    crate::oci::PlatformSpec::from(target.platform()).to_string()
}

/// One variant for one target on its way through the stages: its report, and the events it
/// sends.
struct Unit<'a> {
    ctx: &'a Context<'a>,
    variant: &'a VariantSpec,
    target: Target,
    report: PlatformReport,
    /// Stages not reached yet, reported as skipped (or cancelled) when the unit ends early.
    pending: Vec<Stage>,
    /// Set by a stage that looked in the cache: whether it answered, and the key.
    cache_note: Option<CacheNote>,
}

/// How a stage used the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheNote {
    /// Which tier answered (the work was not done), or `Ran`.
    pub used: report::CacheUse,
    pub key: String,
}

impl<'a> Unit<'a> {
    fn new(
        ctx: &'a Context<'a>,
        variant: &'a VariantSpec,
        target: Target,
        push: bool,
        attest: bool,
    ) -> Self {
        let pending = Stage::ALL
            .iter()
            .copied()
            .filter(|s| (push || *s != Stage::Push) && (attest || *s != Stage::Attest))
            .collect();
        Unit {
            ctx,
            variant,
            target,
            report: PlatformReport::new(target.triple(), platform_name(target)),
            pending,
            cache_note: None,
        }
    }

    fn say(&self, stage: Stage, message: &str) {
        self.ctx.events.log(&LogLine {
            variant: &self.variant.name,
            target: self.target,
            stage,
            stream: Stream::Galley,
            message,
        });
    }

    fn event(&self, stage: Stage, status: StageStatus, ms: Option<u64>, detail: Option<&str>) {
        self.ctx.events.stage(&StageEvent {
            variant: &self.variant.name,
            target: self.target,
            stage,
            status,
            ms,
            detail,
            cache: self.cache_note.as_ref(),
        });
    }

    /// Runs one stage: announces it, times it, records how it ended. Errors come back as
    /// `"<stage>: <error>"`.
    fn stage<T, E: std::fmt::Display>(
        &mut self,
        stage: Stage,
        f: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, String> {
        self.pending.retain(|s| *s != stage);
        self.cache_note = None;
        let started_at = rfc3339_millis(SystemTime::now());
        self.event(stage, StageStatus::Running, None, None);
        let t = Instant::now();
        let result = f(self);
        let ms = t.elapsed().as_millis() as u64;
        let (status, error) = match &result {
            Ok(_) => (StageStatus::Succeeded, None),
            Err(_) if self.ctx.cancel.is_cancelled() => (StageStatus::Cancelled, None),
            Err(e) => (StageStatus::Failed, Some(format!("{stage}: {e}"))),
        };
        self.report.stages.push(StageTiming {
            stage,
            status,
            started_at,
            ms,
            cache: self.cache_note.as_ref().map(|n| n.used),
            cache_key: self.cache_note.as_ref().map(|n| n.key.clone()),
        });
        self.event(stage, status, Some(ms), error.as_deref());
        self.cache_note = None;
        result.map_err(|e| format!("{stage}: {e}"))
    }

    fn fail(&mut self, error: String) {
        if !self.ctx.cancel.is_cancelled() {
            self.report.error = Some(error);
        } else {
            self.report.error = Some("cancelled".into());
        }
    }

    /// Takes a cached stage's value: notes how the cache was used (the report and the stage
    /// event say `cached` or `ran` with the key) and warns when the outputs could not be kept.
    fn take_answer<T>(&mut self, stage: Stage, keyed: Option<&Keyed<'_>>, a: Answer<T>) -> T {
        if let Some(k) = keyed {
            self.cache_note = Some(CacheNote {
                used: a.used,
                key: k.key.clone(),
            });
        }
        if let Some(e) = a.remote_note {
            self.say(stage, &format!("warning: {e}: running the stage"));
        }
        if let Some(e) = a.not_kept {
            self.say(stage, &format!("warning: not cached: {e}"));
        }
        a.value
    }

    /// Reports the stages never reached.
    fn finish(&mut self) {
        let status = if self.ctx.cancel.is_cancelled() {
            StageStatus::Cancelled
        } else {
            StageStatus::Skipped
        };
        for stage in std::mem::take(&mut self.pending) {
            self.event(stage, status, None, None);
        }
    }
}

/// Compiles and copies the binary into the variant's work directory (the next compile
/// overwrites cargo's copy). When the stage cache holds a compile of exactly these inputs, cargo
/// is not started at all.
fn compile(b: &Build<'_>, unit: &mut Unit<'_>, dir: &Path) -> Result<PathBuf, String> {
    let spec = b.spec;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (ctx, variant, target) = (unit.ctx, unit.variant, unit.target);
    let zig_cache = spec.cache_dir.join("zig");
    let req = CompileRequest {
        project: &spec.project,
        target,
        features: &variant.features,
        default_features: variant.default_features,
        package: variant.package.as_deref(),
        binary: &variant.binary,
        profile: &spec.profile,
        rustflags: spec.rustflags_for(target),
        env_passthrough: &spec.env_passthrough,
        external_sources: &spec.external_sources,
        zig_cache: Some(&zig_cache),
        source_date_epoch: spec.source_date_epoch,
        sccache: spec.sccache.as_ref(),
    };
    let raw = dir.join(format!("{}.raw", variant.binary));
    let keyed = b
        .cache
        .and_then(|c| match ctx.toolchain.fingerprint(&req, b.tools) {
            Ok(inputs) => Keyed::new(Some(c), Kind::Compile, inputs),
            Err(why) => {
                unit.say(Stage::Compile, &format!("compile cache not used: {why}"));
                None
            }
        });
    unit.stage(Stage::Compile, |u| {
        let answer = cached(
            keyed.as_ref(),
            |c, outputs| {
                let digest: crate::oci::Digest = outputs["raw"].as_str()?.parse().ok()?;
                match c.restore(&digest, &raw) {
                    Ok(()) => Some(None),
                    // A corrupt entry is rebuilt, never used.
                    Err(e) => {
                        u.say(Stage::Compile, &format!("{e}; compiling"));
                        None
                    }
                }
            },
            || {
                u.say(Stage::Compile, &req.describe());
                let log = |message: &str| {
                    u.ctx.events.log(&LogLine {
                        variant: &variant.name,
                        target,
                        stage: Stage::Compile,
                        stream: Stream::Stderr,
                        message,
                    })
                };
                let compiled = u
                    .ctx
                    .toolchain
                    .compile(&req, u.ctx.cancel, &log)
                    .map_err(|e| e.to_string())?;
                std::fs::copy(&compiled.path, &raw)
                    .map_err(|e| format!("cannot copy {}: {e}", compiled.path.display()))?;
                let keep = Keep {
                    outputs: serde_json::json!({}),
                    files: vec![("raw", raw.clone())],
                };
                Ok::<_, String>((compiled.sccache, Some(keep)))
            },
        )?;
        if answer.cached() {
            let tier = if answer.used == report::CacheUse::Remote {
                "remote"
            } else {
                "cached"
            };
            u.say(
                Stage::Compile,
                &format!(
                    "{tier}: {} (inputs unchanged, cargo not started)",
                    req.describe()
                ),
            );
        }
        if let Some(used) = u.take_answer(Stage::Compile, keyed.as_ref(), answer) {
            sccache_said(u, used);
        }
        Ok::<_, String>(())
    })?;
    Ok(raw)
}

/// Says what sccache did in a compile: in the log (the events and the kitchen show it), in the
/// report, and its warning when the compile went on without it.
fn sccache_said(u: &mut Unit<'_>, used: crate::toolchain::SccacheUse) {
    if let Some(s) = used.stats {
        u.say(
            Stage::Compile,
            &format!(
                "sccache: {} hits, {} misses, {} not cacheable (hit rate {:.0}%){}",
                s.hits,
                s.misses,
                s.not_cacheable,
                s.hit_rate(),
                if s.fixed_paths {
                    ""
                } else {
                    ", at this host's paths"
                }
            ),
        );
        u.report.sccache = Some(s);
    }
    if let Some(w) = used.warning {
        u.say(Stage::Compile, &format!("warning: {w}"));
        u.report.warnings.push(w);
    }
}

/// The layer stage, answered by the stage cache when the binary, the files and every layer
/// setting are the ones of an earlier layer.
fn layer_stage(
    b: &Build<'_>,
    unit: &mut Unit<'_>,
    shipped: &verify::VerifiedBinary,
) -> Result<crate::oci::layer::LayerBlob, String> {
    let (spec, out, variant) = (b.spec, b.out, unit.variant);
    let keyed = match b.cache {
        Some(c) => {
            let mut files = Vec::new();
            for f in &spec.files {
                let d = cache::file_digest(&f.src).map_err(|e| format!("layer: {e}"))?;
                files.push(serde_json::json!({"dst": f.dst, "mode": f.mode, "digest": d}));
            }
            let inputs = serde_json::json!({
                "binary": shipped.digest(),
                "binary_name": variant.binary,
                "workdir": variant.image.workdir,
                "files": files,
                "epoch": spec.source_date_epoch,
                "gzip_level": crate::oci::layer::GZIP_LEVEL,
            });
            Keyed::new(Some(c), Kind::Layer, inputs)
        }
        None => None,
    };
    unit.stage(Stage::Layer, |u| {
        let answer = cached(
            keyed.as_ref(),
            |c, outputs| {
                let blob: crate::oci::layer::LayerBlob = serde_json::from_value(outputs).ok()?;
                let reader = c.open_object(&blob.digest).ok()?;
                match out.put_blob_from_reader(reader, &blob.digest) {
                    Ok(_) => Some(blob),
                    Err(e) => {
                        c.forget_object(&blob.digest);
                        u.say(
                            Stage::Layer,
                            &format!("cache entry refused ({e}): writing the layer"),
                        );
                        None
                    }
                }
            },
            || {
                let blob =
                    assemble::layer(shipped, spec, variant, out).map_err(|e| e.to_string())?;
                let keep = Keep {
                    outputs: serde_json::to_value(&blob).expect("a layer serializes"),
                    files: vec![("digest", out.blob_path(&blob.digest))],
                };
                Ok::<_, String>((blob, Some(keep)))
            },
        )?;
        Ok::<_, String>(u.take_answer(Stage::Layer, keyed.as_ref(), answer))
    })
}

/// Pushes a variant's top descriptor (the index, when there are several platforms); the platform
/// images were pushed by their workers. Tags move later, once every variant is known.
fn push_variant(
    pusher: &Pusher,
    out: &Layout,
    top: &Descriptor,
    platforms: &[PlatformReport],
) -> PushReport {
    let started = Instant::now();
    let mut stats = PushStats::default();
    for p in platforms {
        if let Some(s) = p.push {
            stats += s;
        }
    }
    // The platform images are in the repository already: only the index itself is left.
    let result = if platforms.len() > 1 {
        pusher.push_manifest(out, top, &mut stats)
    } else {
        Ok(())
    };
    PushReport {
        repository: pusher.target().name(),
        digest: top.digest.clone(),
        references: Vec::new(),
        withheld: None,
        blobs: stats,
        ms: started.elapsed().as_millis() as u64,
        error: result.err().map(|e| e.to_string()),
    }
}

/// The verify and strip stages: the compiler's binary checked, then stripped (and checked again).
fn verify_and_strip(
    unit: &mut Unit<'_>,
    raw: &Path,
    dir: &Path,
) -> Result<verify::VerifiedBinary, String> {
    let target = unit.target;
    let cancel = unit.ctx.cancel;
    let verified = unit.stage(Stage::Verify, |_| verify::verify(raw, target))?;
    unit.report.sizes.raw = Some(verified.size());
    unit.report.elf = Some(verified.facts().clone());
    unit.report
        .binary_digests
        .push(("raw".into(), verified.digest().clone()));
    unit.say(
        Stage::Verify,
        &format!(
            "ok: {} {}, static, libc: {}",
            verified.facts().machine,
            verified.facts().file_type,
            verified.facts().libc
        ),
    );

    cancel.check().map_err(|c| c.to_string())?;
    let variant = unit.variant;
    let stripped_path = dir.join(&variant.binary);
    let (stripped, outcome) =
        unit.stage(Stage::Strip, |_| strip::strip(&verified, &stripped_path))?;
    unit.report.sizes.stripped = Some(stripped.size());
    unit.report.strip = Some(outcome);
    unit.report
        .binary_digests
        .push(("stripped".into(), stripped.digest().clone()));
    unit.say(
        Stage::Strip,
        &format!(
            "{outcome:?}: {} -> {} bytes",
            verified.size(),
            stripped.size()
        ),
    );

    Ok(stripped)
}

/// The compress stage: UPX (or the cache's packed binary), the packed binary verified; the
/// stripped binary when UPX is off, missing or failed (with the warning). Returns what ships
/// and the UPX version that ran.
fn compress_stage(
    b: &Build<'_>,
    unit: &mut Unit<'_>,
    stripped: &verify::VerifiedBinary,
    dir: &Path,
) -> Result<(verify::VerifiedBinary, Option<String>), String> {
    let (spec, target, variant, cancel) = (b.spec, unit.target, unit.variant, unit.ctx.cancel);
    let packed_path = dir.join(format!("{}.upx", variant.binary));
    let upx = if spec.compress.enabled {
        compress::upx_version(&spec.compress.upx, cancel)
    } else {
        None
    };
    // The compress cache: the stripped binary, UPX's version and flags and the smoke run.
    let keyed = upx.as_ref().and_then(|version| {
        let inputs = serde_json::json!({
            "stripped": stripped.digest(),
            "upx": version,
            "flags": spec.compress.flags,
            "smoke_args": spec.compress.smoke_args,
            "smoke_runs": target.runs_on_host(),
        });
        Keyed::new(b.cache, Kind::Compress, inputs)
    });
    let shipped = unit.stage(Stage::Compress, |u| {
        // The packed binary is verified whether UPX ran now or the cache kept it.
        let check = |compressed: &compress::Compressed| {
            compressed
                .packed
                .then(|| verify::verify(&packed_path, target))
                .transpose()
                .map_err(|e| format!("the packed binary failed verification: {e}"))
        };
        let answer = cached(
            keyed.as_ref(),
            |c, outputs| {
                let digest: crate::oci::Digest = outputs["packed"].as_str()?.parse().ok()?;
                let compressed = compress::Compressed {
                    packed: true,
                    compression: serde_json::from_value(outputs["compression"].clone()).ok()?,
                    warning: outputs["warning"].as_str().map(str::to_string),
                };
                if let Err(e) = c.restore(&digest, &packed_path) {
                    u.say(Stage::Compress, &format!("{e}"));
                    return None;
                }
                let packed = check(&compressed).ok()?;
                Some((compressed, packed))
            },
            || {
                let compressed =
                    compress::compress(stripped, &packed_path, &spec.compress, upx.clone(), cancel);
                cancel.check().map_err(|c| c.to_string())?;
                let packed = check(&compressed)?;
                // Only a packed binary is worth keeping: without UPX there is nothing to save.
                let keep = packed.as_ref().map(|p| Keep {
                    outputs: serde_json::json!({
                        "compression": compressed.compression,
                        "warning": compressed.warning,
                    }),
                    files: vec![("packed", p.path().to_path_buf())],
                });
                Ok::<_, String>(((compressed, packed), keep))
            },
        )?;
        let cached = answer.cached();
        let (compressed, packed) = u.take_answer(Stage::Compress, keyed.as_ref(), answer);
        let shipped = match packed {
            Some(packed) => {
                u.report.sizes.compressed = Some(packed.size());
                u.report
                    .binary_digests
                    .push(("compressed".into(), packed.digest().clone()));
                u.say(
                    Stage::Compress,
                    &format!(
                        "upx: {} -> {} bytes{}",
                        stripped.size(),
                        packed.size(),
                        if cached {
                            " (cached: packed and checked before)"
                        } else {
                            ""
                        }
                    ),
                );
                packed
            }
            None => stripped.clone(),
        };
        if let Some(w) = compressed.warning {
            u.say(Stage::Compress, &format!("warning: {w}"));
            u.report.warnings.push(w);
        }
        u.report.compression = Some(compressed.compression);
        Ok::<_, String>(shipped)
    })?;
    Ok((shipped, upx))
}

/// Every stage after compiling, for one variant and target.
fn package(
    b: &Build<'_>,
    pusher: Option<&Pusher>,
    unit: &mut Unit<'_>,
    raw: &Path,
    dir: &Path,
) -> Result<Descriptor, String> {
    let (spec, out, base) = (b.spec, b.out, b.base);
    let (target, variant, cancel) = (unit.target, unit.variant, unit.ctx.cancel);
    let stripped = verify_and_strip(unit, raw, dir)?;
    cancel.check().map_err(|c| c.to_string())?;
    let (shipped, upx) = compress_stage(b, unit, &stripped, dir)?;

    cancel.check().map_err(|c| c.to_string())?;
    let layer = layer_stage(b, unit, &shipped)?;
    unit.report.sizes.layer = Some(layer.size);
    unit.report.sizes.layer_tar = Some(layer.tar_size);
    unit.report.layer_digest = Some(layer.digest.clone());

    let platform_base = base
        .for_target(target)
        .ok_or_else(|| format!("no base image for {target}"))?;
    let assembled = unit.stage(Stage::Assemble, |_| {
        assemble::assemble(spec, variant, out, platform_base, &base.name, &layer)
    })?;
    unit.report.sizes.image = Some(assembled.image_size);
    unit.report.sizes.base_layers = Some(assembled.base_layers_size);
    unit.report.manifest_digest = Some(assembled.manifest.digest.clone());
    unit.report.config_digest = Some(assembled.config.digest.clone());
    unit.say(
        Stage::Assemble,
        &format!("manifest {}", assembled.manifest.digest),
    );

    cancel.check().map_err(|c| c.to_string())?;
    let referrers = if spec.sbom || spec.provenance {
        let subject_name = match pusher {
            Some(p) => p.target().name(),
            None => variant.binary.clone(),
        };
        let referrers = unit.stage(Stage::Attest, |u| {
            attest_stage(b, u, &assembled.manifest, &subject_name, upx.clone())
        })?;
        unit.report.referrers = referrers
            .iter()
            .map(|d| report::ReferrerReport {
                artifact_type: d.artifact_type.clone().unwrap_or_default(),
                digest: d.digest.clone(),
                size: d.size,
            })
            .collect();
        referrers
    } else {
        Vec::new()
    };

    if let Some(pusher) = pusher {
        let mut stats = PushStats::default();
        // The attached documents' blobs and manifests are counted apart from the image's.
        let mut attached = PushStats::default();
        let pushed = unit.stage(Stage::Push, |_| {
            pusher.push_content(out, &assembled.manifest, &mut stats)?;
            for r in &referrers {
                pusher.push_referrer(out, r, &assembled.manifest.digest, &mut attached)?;
            }
            Ok::<(), RegistryError>(())
        });
        unit.report.push = Some(stats);
        if !referrers.is_empty() {
            unit.report.referrers_push = Some(attached);
        }
        pushed?;
        unit.say(
            Stage::Push,
            &format!(
                "{}@{}: {} uploaded, {} skipped, {} mounted",
                pusher.target().name(),
                assembled.manifest.digest,
                stats.uploaded,
                stats.skipped,
                stats.mounted
            ),
        );
    }
    Ok(assembled.manifest)
}

/// The attest stage: the SBOM of the crates in the binary and the provenance of the build,
/// attached to the image manifest `subject` as referrers. The crate list comes from
/// `cargo tree`; the stage cache keeps it under the compile's key (same sources, lock file,
/// features and target: same crates), so an unchanged variant does not start cargo.
fn attest_stage(
    b: &Build<'_>,
    unit: &mut Unit<'_>,
    subject: &Descriptor,
    subject_name: &str,
    upx: Option<String>,
) -> Result<Vec<Descriptor>, String> {
    use crate::attest::{self, BuildFacts, Crate, SbomRequest, Subject};
    let (spec, out, variant, target) = (b.spec, b.out, unit.variant, unit.target);
    let cancel = unit.ctx.cancel;
    let subj = Subject {
        name: subject_name,
        digest: &subject.digest,
        created: &spec.created,
        vendor: spec
            .image
            .labels
            .get("org.opencontainers.image.vendor")
            .map(String::as_str),
    };
    let package = variant.package.as_deref().unwrap_or(&variant.binary);
    let mut docs = Vec::new();
    if spec.sbom {
        let compile_key = unit
            .report
            .stages
            .iter()
            .find(|s| s.stage == Stage::Compile)
            .and_then(|s| s.cache_key.clone());
        // Same sources, lock file, features and target as the compile: the same crates.
        let keyed = compile_key.and_then(|compile| {
            let inputs = serde_json::json!({
                "compile": compile,
                "package": package,
                "galley": env!("CARGO_PKG_VERSION"),
                // 2: path crates carry their authors (the SBOM's supplier).
                "crates": 2,
            });
            Keyed::new(b.cache, Kind::Attest, inputs)
        });
        let answer = cached(
            keyed.as_ref(),
            |_, outputs| serde_json::from_value::<Vec<Crate>>(outputs["crates"].clone()).ok(),
            || {
                let req = SbomRequest {
                    project: &spec.project,
                    package,
                    features: &variant.features,
                    default_features: variant.default_features,
                    target: target.triple(),
                };
                let crates = attest::crates(&req, cancel).map_err(|e| {
                    format!("{e} (set `sbom = false` in galley.toml to build without an SBOM)")
                })?;
                let keep = Keep::outputs(serde_json::json!({ "crates": crates }));
                Ok::<_, String>((crates, Some(keep)))
            },
        )?;
        let crates = unit.take_answer(Stage::Attest, keyed.as_ref(), answer);
        unit.say(
            Stage::Attest,
            &format!(
                "sbom: {} crate{} linked into {}",
                crates.len(),
                if crates.len() == 1 { "" } else { "s" },
                variant.binary
            ),
        );
        docs.push(attach::Document {
            artifact_type: attest::SPDX_MEDIA_TYPE,
            title: "sbom.spdx.json",
            annotations: Default::default(),
            value: attest::spdx(&subj, &variant.binary, &crates),
        });
    }
    if spec.provenance {
        let rustflags = spec.rustflags_for(target);
        let lock = cache::file_digest(&spec.project.join("Cargo.lock")).ok();
        let tools = b.tools.clone().with_upx(upx);
        let facts = BuildFacts {
            variant: &variant.name,
            package,
            binary: &variant.binary,
            features: &variant.features,
            default_features: variant.default_features,
            target: target.triple(),
            version: &spec.version,
            profile: &spec.profile,
            rustflags,
            source_date_epoch: spec.source_date_epoch,
            source: spec.source.as_deref(),
            revision: spec.revision.as_deref(),
            cargo_lock: lock.as_ref(),
            base_name: &b.base.name,
            base_digest: &b.base.digest,
            tools: &tools,
        };
        docs.push(attach::Document {
            artifact_type: attest::IN_TOTO_MEDIA_TYPE,
            title: "provenance.intoto.json",
            annotations: [(
                "in-toto.io/predicate-type".to_string(),
                "https://slsa.dev/provenance/v1".to_string(),
            )]
            .into(),
            value: attest::provenance(&subj, &facts),
        });
    }
    cancel.check().map_err(|c| c.to_string())?;
    let referrers =
        attach::attach(out, subject, &spec.created, &docs).map_err(|e| e.to_string())?;
    for r in &referrers {
        unit.say(
            Stage::Attest,
            &format!(
                "{} {}",
                r.artifact_type.as_deref().unwrap_or("artifact"),
                r.digest
            ),
        );
    }
    Ok(referrers)
}

#[cfg(test)]
mod tests;
