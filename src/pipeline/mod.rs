//! The only place that knows stage order: compile, verify, strip, compress, layer, assemble,
//! push, then tags and the report. One compile runs at a time; the later stages of a variant run
//! on a worker thread while the next variant compiles.
//!
//! A `Context` carries what the caller provides: the toolchain, where events go, the cancel
//! handle that stops every child process, wait and retry, and (in the service) the compile slots
//! shared between builds.

pub mod assemble;
pub mod attach;
pub mod base;
pub mod compress;
pub mod events;
pub mod report;
pub mod strip;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

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
pub use events::{EventSink, LogLine, Stage, StageEvent, StageStatus, Stream};
use report::{BaseReport, PlatformReport, PushReport, Report, StageTiming, Status, VariantReport};

/// What the caller gives a build besides its spec.
pub struct Context<'a> {
    pub toolchain: &'a dyn Toolchain,
    pub events: &'a dyn EventSink,
    pub cancel: &'a Cancel,
    /// Compiles allowed at once across every build sharing these slots (the service's
    /// `compile_slots`); `None`: this build's own compiles, one at a time, are the only ones.
    pub compile_slots: Option<&'a CompileSlots>,
}

/// A counting semaphore for compiles, shared by the builds of a service. Waiting for a slot
/// ends when the build is cancelled.
#[derive(Debug)]
pub struct CompileSlots {
    free: Mutex<usize>,
    cv: Condvar,
}

/// A compile slot, given back when dropped.
pub struct CompileSlot<'a> {
    slots: &'a CompileSlots,
}

impl CompileSlots {
    pub fn new(slots: usize) -> CompileSlots {
        CompileSlots {
            free: Mutex::new(slots.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Takes a slot, waiting for one; `Err` when the build is cancelled while waiting.
    pub fn acquire(&self, cancel: &Cancel) -> Result<CompileSlot<'_>, Cancelled> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            cancel.check()?;
            if *free > 0 {
                *free -= 1;
                return Ok(CompileSlot { slots: self });
            }
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Slots free now (for metrics and tests).
    pub fn available(&self) -> usize {
        *self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for CompileSlot<'_> {
    fn drop(&mut self) {
        *self.slots.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.slots.cv.notify_one();
    }
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
    // One pusher per repository (a variant may have its own).
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
        let pusher = Pusher::new(target, &registry, mount)
            .map_err(|e| PipelineError::Registry(Box::new(e)))?;
        pushers.insert(target.name(), pusher);
    }
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
    let b = Build {
        spec,
        ctx,
        out: &out,
        base: &base,
        pushers: &pushers,
        tools: &tools,
        cache: stage_cache.as_ref(),
    };
    let built = build_variants(&b, &work);
    let _ = std::fs::remove_dir_all(&work);
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
    let mut report = Report {
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
        tools: tools.with_upx(variants.iter().find_map(|v| {
            v.platforms
                .iter()
                .find_map(|p| p.compression.as_ref()?.tool.clone())
        })),
        succeeded: false,
        tags_moved: false,
        variants: Vec::new(),
        total_ms: 0,
    };

    // Registry tags move only when every variant succeeded (or --partial): a failed variant
    // must not leave the others half-released.
    let all_built = variants.iter().all(|v| v.status == Status::Succeeded);
    if !pushers.is_empty() && !all_built && !spec.partial {
        {
            let failed: Vec<&str> = variants
                .iter()
                .filter(|v| v.status != Status::Succeeded)
                .map(|v| v.variant.as_str())
                .collect();
            let why = format!(
                "registry tags not moved because {} failed; pass --partial to release the variants that succeeded",
                failed.join(", ")
            );
            for v in variants
                .iter_mut()
                .filter(|v| v.status == Status::Succeeded)
            {
                if let Some(p) = &mut v.push {
                    p.withheld = Some(why.clone());
                }
            }
        }
    }
    report.variants = variants.clone();
    report.succeeded = all_built;
    report.total_ms = started.elapsed().as_millis() as u64;
    // The report is on disk before any tag moves: a tag never points at an image without one.
    let path = output.join("report.json");
    write_report(&out, &path, &report)?;

    {
        for ((v, desc), vs) in variants.iter_mut().zip(&descriptors).zip(&spec.variants) {
            let (Some(push), Some(desc), Some(pusher)) =
                (&mut v.push, desc, pusher_of(&pushers, vs))
            else {
                continue;
            };
            if v.status != Status::Succeeded || push.withheld.is_some() {
                continue;
            }
            match pusher.push_tags(&out, desc, &vs.tags) {
                Ok(refs) => {
                    for r in &refs {
                        ctx.events.log(&LogLine {
                            variant: &v.variant,
                            target: spec.targets[0],
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
    }
    // Local tags: every variant that built, in one index.json write.
    let tagged: Vec<(String, Descriptor)> = variants
        .iter()
        .zip(&descriptors)
        .filter_map(|(v, d)| Some((v, d.as_ref()?)))
        .flat_map(|(v, d)| v.tags.iter().map(move |t| (t.clone(), d.clone())))
        .collect();
    if let Err(e) = out.set_tags(&tagged) {
        for v in variants.iter_mut().filter(|v| !v.tags.is_empty()) {
            v.status = Status::Failed;
            v.error = Some(format!("cannot write the tags: {e}"));
            v.tags.clear();
        }
    }
    report.succeeded = variants.iter().all(|v| v.status == Status::Succeeded);
    report.variants = variants;
    report.tags_moved = true;
    report.total_ms = started.elapsed().as_millis() as u64;
    write_report(&out, &path, &report)?;
    Ok(report)
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
    /// The stage cache, unless it is off.
    cache: Option<&'a StageCache>,
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
    /// The output came from the cache (the work was not done).
    pub cached: bool,
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
            cache: self
                .cache_note
                .as_ref()
                .map(|n| report::CacheUse::of(n.cached)),
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
    let ctx = unit.ctx;
    let variant = unit.variant;
    let target = unit.target;
    let rustflags: &[String] = spec
        .rustflags
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, f)| f.as_slice())
        .unwrap_or(&[]);
    let zig_cache = spec.cache_dir.join("zig");
    let req = CompileRequest {
        project: &spec.project,
        target,
        features: &variant.features,
        default_features: variant.default_features,
        package: variant.package.as_deref(),
        binary: &variant.binary,
        profile: &spec.profile,
        rustflags,
        env_passthrough: &spec.env_passthrough,
        external_sources: &spec.external_sources,
        zig_cache: Some(&zig_cache),
        source_date_epoch: spec.source_date_epoch,
    };
    let raw = dir.join(format!("{}.raw", variant.binary));

    // The cache first: a hit needs no compile slot.
    let keyed = b
        .cache
        .and_then(|c| match ctx.toolchain.fingerprint(&req, b.tools) {
            Ok(inputs) => Some((c, StageCache::key(Kind::Compile, &inputs), inputs)),
            Err(why) => {
                unit.say(Stage::Compile, &format!("compile cache not used: {why}"));
                None
            }
        });
    if let Some((c, key, _)) = &keyed {
        let hit = c.get(Kind::Compile, key).and_then(|h| {
            let d: crate::oci::Digest = h.outputs["raw"].as_str()?.parse().ok()?;
            Some(d)
        });
        if let Some(digest) = hit {
            match c.restore(&digest, &raw) {
                Ok(()) => {
                    unit.stage(Stage::Compile, |u| {
                        u.cache_note = Some(CacheNote {
                            cached: true,
                            key: key.clone(),
                        });
                        Ok::<(), String>(())
                    })?;
                    unit.say(
                        Stage::Compile,
                        &format!(
                            "cached: {} (inputs unchanged, cargo not started)",
                            req.describe()
                        ),
                    );
                    return Ok(raw);
                }
                // A corrupt entry is rebuilt, never used.
                Err(e) => unit.say(Stage::Compile, &format!("{e}; compiling")),
            }
        }
    }

    let _slot = match ctx.compile_slots {
        Some(slots) => {
            if slots.available() == 0 {
                unit.say(Stage::Compile, "waiting for a compile slot");
            }
            Some(
                slots
                    .acquire(ctx.cancel)
                    .map_err(|c| format!("compile: {c}"))?,
            )
        }
        None => None,
    };
    unit.say(Stage::Compile, &req.describe());
    let compiled = unit.stage(Stage::Compile, |u| {
        if let Some((_, key, _)) = &keyed {
            u.cache_note = Some(CacheNote {
                cached: false,
                key: key.clone(),
            });
        }
        let log = |message: &str| {
            u.ctx.events.log(&LogLine {
                variant: &variant.name,
                target,
                stage: Stage::Compile,
                stream: Stream::Stderr,
                message,
            })
        };
        u.ctx.toolchain.compile(&req, u.ctx.cancel, &log)
    })?;
    std::fs::copy(&compiled.path, &raw)
        .map_err(|e| format!("compile: cannot copy {}: {e}", compiled.path.display()))?;
    if let Some((c, key, inputs)) = &keyed {
        let stored = c.store(&raw).and_then(|d| {
            c.put(
                Kind::Compile,
                key,
                inputs,
                &serde_json::json!({"raw": d.to_string()}),
                &[&d],
            )
        });
        if let Err(e) = stored {
            unit.say(Stage::Compile, &format!("warning: not cached: {e}"));
        }
    }
    Ok(raw)
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
            Some((c, StageCache::key(Kind::Layer, &inputs), inputs))
        }
        None => None,
    };
    let hit = keyed.as_ref().and_then(|(c, key, _)| {
        let h = c.get(Kind::Layer, key)?;
        let blob: crate::oci::layer::LayerBlob = serde_json::from_value(h.outputs).ok()?;
        let reader = c.open_object(&blob.digest).ok()?;
        match out.put_blob_from_reader(reader, &blob.digest) {
            Ok(_) => Some(blob),
            Err(e) => {
                c.forget_object(&blob.digest);
                unit.say(
                    Stage::Layer,
                    &format!("cache entry refused ({e}): writing the layer"),
                );
                None
            }
        }
    });
    unit.stage(Stage::Layer, |u| {
        if let Some((_, key, _)) = &keyed {
            u.cache_note = Some(CacheNote {
                cached: hit.is_some(),
                key: key.clone(),
            });
        }
        if let Some(blob) = hit {
            return Ok(blob);
        }
        let blob = assemble::layer(shipped, spec, variant, out).map_err(|e| e.to_string())?;
        if let Some((c, key, inputs)) = &keyed {
            let outputs = serde_json::to_value(&blob).expect("a layer serializes");
            let stored = c
                .store(&out.blob_path(&blob.digest))
                .and_then(|d| c.put(Kind::Layer, key, inputs, &outputs, &[&d]));
            if let Err(e) = stored {
                u.say(Stage::Layer, &format!("warning: not cached: {e}"));
            }
        }
        Ok::<_, String>(blob)
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

/// Every stage after compiling, for one variant and target.
fn package(
    b: &Build<'_>,
    pusher: Option<&Pusher>,
    unit: &mut Unit<'_>,
    raw: &Path,
    dir: &Path,
) -> Result<Descriptor, String> {
    let (spec, out, base) = (b.spec, b.out, b.base);
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

    let packed_path = dir.join(format!("{}.upx", variant.binary));
    let upx = if spec.compress.enabled {
        compress::upx_version(&spec.compress.upx, cancel)
    } else {
        None
    };
    // The compress cache: the stripped binary, UPX's version and flags and the smoke run.
    let keyed = match (b.cache, &upx) {
        (Some(c), Some(version)) => {
            let inputs = serde_json::json!({
                "stripped": stripped.digest(),
                "upx": version,
                "flags": spec.compress.flags,
                "smoke_args": spec.compress.smoke_args,
                "smoke_runs": target.runs_on_host(),
            });
            Some((c, StageCache::key(Kind::Compress, &inputs), inputs))
        }
        _ => None,
    };
    let hit = keyed.as_ref().and_then(|(c, key, _)| {
        let h = c.get(Kind::Compress, key)?;
        let digest: crate::oci::Digest = h.outputs["packed"].as_str()?.parse().ok()?;
        let compression: compress::Compression =
            serde_json::from_value(h.outputs["compression"].clone()).ok()?;
        let warning = h.outputs["warning"].as_str().map(str::to_string);
        match c.restore(&digest, &packed_path) {
            Ok(()) => Some(compress::Compressed {
                packed: true,
                compression,
                warning,
            }),
            Err(e) => {
                unit.say(Stage::Compress, &format!("{e}"));
                None
            }
        }
    });
    let shipped = unit.stage(Stage::Compress, |u| {
        let cached = hit.is_some();
        if let Some((_, key, _)) = &keyed {
            u.cache_note = Some(CacheNote {
                cached,
                key: key.clone(),
            });
        }
        let compressed = match hit {
            Some(c) => c,
            None => {
                compress::compress(&stripped, &packed_path, &spec.compress, upx.clone(), cancel)
            }
        };
        cancel.check().map_err(|c| c.to_string())?;
        let shipped = if compressed.packed {
            let packed = verify::verify(&packed_path, target)
                .map_err(|e| format!("the packed binary failed verification: {e}"))?;
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
            if let (Some((c, key, inputs)), false) = (&keyed, cached) {
                let outputs = serde_json::json!({
                    "packed": packed.digest().to_string(),
                    "compression": compressed.compression,
                    "warning": compressed.warning,
                });
                // The object first: an entry never names a missing object.
                let stored = c
                    .store(packed.path())
                    .and_then(|d| c.put(Kind::Compress, key, inputs, &outputs, &[&d]));
                if let Err(e) = stored {
                    u.say(Stage::Compress, &format!("warning: not cached: {e}"));
                }
            }
            packed
        } else {
            stripped.clone()
        };
        if let Some(w) = compressed.warning {
            u.say(Stage::Compress, &format!("warning: {w}"));
            u.report.warnings.push(w);
        }
        u.report.compression = Some(compressed.compression);
        Ok::<_, String>(shipped)
    })?;

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
        let keyed = b.cache.zip(compile_key).map(|(c, compile)| {
            let inputs = serde_json::json!({
                "compile": compile,
                "package": package,
                "galley": env!("CARGO_PKG_VERSION"),
            });
            (c, StageCache::key(Kind::Attest, &inputs), inputs)
        });
        let hit: Option<Vec<Crate>> = keyed.as_ref().and_then(|(c, key, _)| {
            let h = c.get(Kind::Attest, key)?;
            serde_json::from_value(h.outputs["crates"].clone()).ok()
        });
        if let Some((_, key, _)) = &keyed {
            unit.cache_note = Some(CacheNote {
                cached: hit.is_some(),
                key: key.clone(),
            });
        }
        let crates = match hit {
            Some(crates) => crates,
            None => {
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
                if let Some((c, key, inputs)) = &keyed {
                    let outputs = serde_json::json!({ "crates": crates });
                    if let Err(e) = c.put(Kind::Attest, key, inputs, &outputs, &[]) {
                        unit.say(Stage::Attest, &format!("warning: not cached: {e}"));
                    }
                }
                crates
            }
        };
        unit.say(
            Stage::Attest,
            &format!(
                "sbom: {} crates linked into {}",
                crates.len(),
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
        let rustflags: &[String] = spec
            .rustflags
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, f)| f.as_slice())
            .unwrap_or(&[]);
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
