//! The only place that knows stage order: compile, verify, strip, compress, layer, assemble,
//! report. One compile runs at a time; the later stages of a variant run on a worker thread
//! while the next variant compiles.

pub mod assemble;
pub mod base;
pub mod compress;
pub mod report;
pub mod strip;
pub mod verify;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use crate::oci::layout::{Layout, LayoutError};
use crate::oci::Descriptor;
use crate::registry::push::{PushStats, Pusher};
use crate::registry::RegistryError;
use crate::spec::{BuildSpec, VariantSpec};
use crate::target::Target;
use crate::toolchain::{CompileRequest, Toolchain};
use base::{BaseError, BaseImage};
use report::{
    BaseReport, PlatformReport, PushReport, Report, Sizes, StageTiming, Status, VariantReport,
};

/// A line of build log, tagged with where it comes from.
#[derive(Debug, Clone)]
pub struct LogLine<'a> {
    pub variant: &'a str,
    pub target: Target,
    pub stage: &'static str,
    pub message: &'a str,
}

/// Where log lines go (the CLI prints them; the service will stream them).
pub type LogSink<'a> = &'a (dyn Fn(&LogLine<'_>) + Sync);

/// Failures that stop the whole build before any variant runs.
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
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the whole build and writes `report.json` into the output layout.
pub fn run(
    spec: &BuildSpec,
    toolchain: &dyn Toolchain,
    log: LogSink<'_>,
) -> Result<Report, PipelineError> {
    let started = Instant::now();
    // The base first: a missing or corrupt base must not leave an output directory behind.
    let (base, base_layout) = base::resolve(
        &spec.base,
        &spec.targets,
        &spec.registry,
        &spec.cache_dir,
        spec.refresh_base,
    )?;
    // Credentials are looked up now, so a missing helper fails before anything compiles.
    let pusher = match &spec.push {
        Some(target) => {
            let mount = base.reference.as_ref().map(|r| {
                let digests = base
                    .platforms
                    .iter()
                    .flat_map(|p| p.manifest.layers.iter().map(|l| l.digest.clone()))
                    .collect();
                (r, digests)
            });
            Some(
                Pusher::new(target, &spec.registry, mount)
                    .map_err(|e| PipelineError::Registry(Box::new(e)))?,
            )
        }
        None => None,
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

    let results: Vec<(usize, PlatformReport, Option<Descriptor>)> = thread::scope(|scope| {
        let mut workers = Vec::new();
        for (vi, variant) in spec.variants.iter().enumerate() {
            for &target in &spec.targets {
                let dir = work.join(format!("{}-{}", variant.name, target.triple()));
                let mut report = PlatformReport {
                    target: target.triple().to_string(),
                    platform: platform_name(target),
                    manifest_digest: None,
                    config_digest: None,
                    layer_digest: None,
                    sizes: Sizes::default(),
                    strip: None,
                    compression: None,
                    elf: None,
                    binary_digests: Vec::new(),
                    stages: Vec::new(),
                    error: None,
                    warnings: Vec::new(),
                    push: None,
                };
                // Compiling happens here, on this thread: one cargo at a time.
                let raw = match compile(spec, toolchain, variant, target, &dir, &mut report, log) {
                    Ok(raw) => raw,
                    Err(e) => {
                        report.error = Some(e);
                        workers.push(scope.spawn(move || (vi, report, None)));
                        continue;
                    }
                };
                let (out, base, pusher) = (&out, &base, pusher.as_ref());
                workers.push(scope.spawn(move || {
                    let desc = package(
                        spec,
                        out,
                        base,
                        pusher,
                        variant,
                        target,
                        &raw,
                        &dir,
                        &mut report,
                        log,
                    );
                    match desc {
                        Ok(d) => (vi, report, Some(d)),
                        Err(e) => {
                            report.error = Some(e);
                            (vi, report, None)
                        }
                    }
                }));
            }
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("a packaging thread panicked"))
            .collect()
    });

    let mut variants = Vec::new();
    let mut tagged: Vec<(String, Descriptor)> = Vec::new();
    for (vi, variant) in spec.variants.iter().enumerate() {
        let mine: Vec<&(usize, PlatformReport, Option<Descriptor>)> =
            results.iter().filter(|r| r.0 == vi).collect();
        let platforms: Vec<PlatformReport> = mine.iter().map(|r| r.1.clone()).collect();
        let descs: Option<Vec<Descriptor>> = mine.iter().map(|r| r.2.clone()).collect();
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
        match descs {
            Some(descs) => {
                let top = if descs.len() == 1 {
                    Ok(descs[0].clone())
                } else {
                    assemble::index(spec, &out, &base.name, descs).map_err(|e| e.to_string())
                };
                match top {
                    Ok(top) => {
                        vr.status = Status::Succeeded;
                        vr.digest = Some(top.digest.clone());
                        vr.media_type = Some(top.media_type.clone());
                        vr.tags = variant.tags.clone();
                        for t in &variant.tags {
                            tagged.push((t.clone(), top.clone()));
                        }
                        if let Some(pusher) = &pusher {
                            let pushed = push_variant(pusher, &out, &top, variant, &vr.platforms);
                            if let Some(e) = &pushed.error {
                                vr.status = Status::Failed;
                                vr.error = Some(format!("push: {e}"));
                            }
                            vr.push = Some(pushed);
                        }
                    }
                    Err(e) => vr.error = Some(e),
                }
            }
            None => {
                let errors: Vec<String> = vr
                    .platforms
                    .iter()
                    .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.platform)))
                    .collect();
                vr.error = Some(errors.join("; "));
            }
        }
        variants.push(vr);
    }

    // Tags last, in one write, after every blob they reach exists.
    let tag_error = out.set_tags(&tagged).err();
    if let Some(e) = &tag_error {
        for v in variants
            .iter_mut()
            .filter(|v| v.status == Status::Succeeded)
        {
            v.status = Status::Failed;
            v.error = Some(format!("cannot write the tags: {e}"));
            v.tags.clear();
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    let report = Report {
        galley_version: env!("CARGO_PKG_VERSION"),
        project: spec.project.display().to_string(),
        binary: spec.binary.clone(),
        version: spec.version.clone(),
        source_date_epoch: spec.source_date_epoch,
        created: spec.created.clone(),
        revision: spec.revision.clone(),
        base: BaseReport {
            name: base.name.clone(),
            blobs_downloaded: base.blobs_downloaded,
            digest: base.digest.clone(),
        },
        output: output.display().to_string(),
        toolchain: toolchain.describe(),
        succeeded: variants.iter().all(|v| v.status == Status::Succeeded),
        variants,
        total_ms: started.elapsed().as_millis() as u64,
    };
    let path = output.join("report.json");
    let json = serde_json::to_vec_pretty(&report).expect("the report serializes");
    std::fs::write(&path, json).map_err(|source| PipelineError::Report { path, source })?;
    Ok(report)
}

fn platform_name(target: Target) -> String {
    crate::oci::PlatformSpec::from(target.platform()).to_string()
}

fn timed<T>(report: &mut PlatformReport, stage: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    report.stages.push(StageTiming {
        stage,
        ms: t.elapsed().as_millis() as u64,
    });
    r
}

/// Compiles and copies the binary into the variant's work directory (the next compile overwrites
/// cargo's copy).
fn compile(
    spec: &BuildSpec,
    toolchain: &dyn Toolchain,
    variant: &VariantSpec,
    target: Target,
    dir: &Path,
    report: &mut PlatformReport,
    log: LogSink<'_>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let req = CompileRequest {
        project: &spec.project,
        target,
        features: &variant.features,
        binary: &spec.binary,
        source_date_epoch: spec.source_date_epoch,
    };
    let say = |message: &str| {
        log(&LogLine {
            variant: &variant.name,
            target,
            stage: "compile",
            message,
        })
    };
    say(&format!(
        "cargo zigbuild --release --locked --target {} --no-default-features --features {}",
        target,
        variant.features.join(",")
    ));
    let compiled = timed(report, "compile", || toolchain.compile(&req, &say))
        .map_err(|e| format!("compile: {e}"))?;
    let raw = dir.join(format!("{}.raw", spec.binary));
    std::fs::copy(&compiled.path, &raw)
        .map_err(|e| format!("compile: cannot copy {}: {e}", compiled.path.display()))?;
    Ok(raw)
}

/// Pushes a variant's top descriptor (the index, when there are several platforms) and then its
/// tags; the platform images were pushed by their workers.
fn push_variant(
    pusher: &Pusher,
    out: &Layout,
    top: &Descriptor,
    variant: &VariantSpec,
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
    let mut result = if platforms.len() > 1 {
        pusher.push_manifest(out, top, &mut stats)
    } else {
        Ok(())
    };
    let mut references = Vec::new();
    if result.is_ok() {
        match pusher.push_tags(out, top, &variant.tags) {
            Ok(r) => references = r,
            Err(e) => result = Err(e),
        }
    }
    PushReport {
        repository: pusher.target().name(),
        digest: top.digest.clone(),
        references,
        blobs: stats,
        ms: started.elapsed().as_millis() as u64,
        error: result.err().map(|e| e.to_string()),
    }
}

/// Every stage after compiling, for one variant and target.
#[allow(clippy::too_many_arguments)]
fn package(
    spec: &BuildSpec,
    out: &Layout,
    base: &BaseImage,
    pusher: Option<&Pusher>,
    variant: &VariantSpec,
    target: Target,
    raw: &Path,
    dir: &Path,
    report: &mut PlatformReport,
    log: LogSink<'_>,
) -> Result<Descriptor, String> {
    let say = |stage: &'static str, message: &str| {
        log(&LogLine {
            variant: &variant.name,
            target,
            stage,
            message,
        })
    };

    let verified = timed(report, "verify", || verify::verify(raw, target))
        .map_err(|e| format!("verify: {e}"))?;
    report.sizes.raw = Some(verified.size());
    report.elf = Some(verified.facts().clone());
    report
        .binary_digests
        .push(("raw".into(), verified.digest().clone()));
    say(
        "verify",
        &format!(
            "ok: {} {}, static, libc: {}",
            verified.facts().machine,
            verified.facts().file_type,
            verified.facts().libc
        ),
    );

    let stripped_path = dir.join(&spec.binary);
    let (stripped, outcome) = timed(report, "strip", || strip::strip(&verified, &stripped_path))
        .map_err(|e| format!("strip: {e}"))?;
    report.sizes.stripped = Some(stripped.size());
    report.strip = Some(outcome);
    report
        .binary_digests
        .push(("stripped".into(), stripped.digest().clone()));
    say(
        "strip",
        &format!(
            "{outcome:?}: {} -> {} bytes",
            verified.size(),
            stripped.size()
        ),
    );

    let packed_path = dir.join(format!("{}.upx", spec.binary));
    let compressed = timed(report, "compress", || {
        compress::compress(&stripped, &packed_path, &spec.compress)
    });
    let shipped = if compressed.packed {
        let packed = verify::verify(&packed_path, target)
            .map_err(|e| format!("compress: the packed binary failed verification: {e}"))?;
        report.sizes.compressed = Some(packed.size());
        report
            .binary_digests
            .push(("compressed".into(), packed.digest().clone()));
        say(
            "compress",
            &format!("upx: {} -> {} bytes", stripped.size(), packed.size()),
        );
        packed
    } else {
        stripped
    };
    if let Some(w) = compressed.warning {
        say("compress", &format!("warning: {w}"));
        report.warnings.push(w);
    }
    report.compression = Some(compressed.compression);

    let layer = timed(report, "layer", || assemble::layer(&shipped, spec, out))
        .map_err(|e| format!("layer: {e}"))?;
    report.sizes.layer = Some(layer.size);
    report.sizes.layer_tar = Some(layer.tar_size);
    report.layer_digest = Some(layer.digest.clone());

    let platform_base = base
        .for_target(target)
        .ok_or_else(|| format!("no base image for {target}"))?;
    let assembled = timed(report, "assemble", || {
        assemble::assemble(spec, out, platform_base, &base.name, &layer)
    })
    .map_err(|e| format!("assemble: {e}"))?;
    report.sizes.image = Some(assembled.image_size);
    report.sizes.base_layers = Some(assembled.base_layers_size);
    report.manifest_digest = Some(assembled.manifest.digest.clone());
    report.config_digest = Some(assembled.config.digest.clone());
    say(
        "assemble",
        &format!("manifest {}", assembled.manifest.digest),
    );
    if let Some(pusher) = pusher {
        let mut stats = PushStats::default();
        let pushed = timed(report, "push", || {
            pusher.push_content(out, &assembled.manifest, &mut stats)
        });
        report.push = Some(stats);
        pushed.map_err(|e| format!("push: {e}"))?;
        say(
            "push",
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
