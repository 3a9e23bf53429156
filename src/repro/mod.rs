//! `galley repro`: builds a recorded build again from its recorded inputs, in a fresh directory
//! at another path with its own target directory and no stage cache, and compares every digest:
//! index, manifests, configs, layers, binaries before and after UPX, SBOM and provenance. Where
//! digests differ it says where: which JSON keys, which files of a layer and which of their
//! fields.
//!
//! The sources: a project in git is cloned at the recorded commit (and, when the recorded tree
//! had uncommitted changes, the directory's files are laid over it); a project outside git is
//! copied as it is now. Either way `target/` and `.git` stay behind.

pub mod diff;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cancel::{Cancel, Cancelled};
use crate::oci::layout::Layout;
use crate::oci::{Digest, Manifest};
use crate::pipeline::report::{PlatformReport, Report, VariantReport};
use crate::pipeline::{self, Context, EventSink, PipelineError};
use crate::spec::{is_commit, BuildRequest, BuildSpec, SpecError};
use crate::toolchain::CompileSlots;
use crate::toolchain::{CargoZigbuild, Limited, Toolchain};

/// Why a repro could not compare anything.
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    #[error("cannot read the report {path}: {source}")]
    ReadReport {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a galley report: {source}")]
    BadReport {
        path: PathBuf,
        source: crate::pipeline::report::ReportError,
    },
    #[error("{path} records no build inputs (it was written by a galley before 0.1 repro support): build again with this galley, then repro that report")]
    NoInputs { path: PathBuf },
    #[error("the recorded build has no variant that succeeded: there is nothing to compare")]
    NothingBuilt,
    #[error("the project {0} is gone: repro needs its sources (git repository or directory)")]
    NoProject(PathBuf),
    #[error("the recorded revision {0:?} is not a git commit id")]
    BadRevision(String),
    #[error("git {what} failed: {detail}")]
    Git { what: String, detail: String },
    #[error("preparing the sources in {dir}: {source}")]
    Work {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the rebuild's inputs are refused: {0}")]
    Spec(#[from] SpecError),
    #[error("the rebuild failed: {0}")]
    Build(#[source] Box<PipelineError>),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// What to reproduce and how.
#[derive(Debug, Clone, Default)]
pub struct ReproRequest {
    /// The report of the build (`out/report.json`).
    pub report: PathBuf,
    /// Build with this `SOURCE_DATE_EPOCH` instead of the recorded one.
    pub source_date_epoch: Option<String>,
    /// Where the fresh directory goes (default: the system's temporary directory).
    pub work_parent: Option<PathBuf>,
    /// Keep the fresh directory (sources, target dir, rebuilt layout) afterwards.
    pub keep: bool,
    /// Keep only the rebuilt layout (`out/`) when the comparison ran; sources and target dir go.
    pub keep_output: bool,
    /// The UPX program (default `upx` on PATH).
    pub upx: Option<PathBuf>,
    /// Where pulled base images are cached (default as for builds).
    pub cache_dir: Option<PathBuf>,
    /// Registries of the base spoken to over plain HTTP (loopback always is).
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates for a private TLS registry holding the base.
    pub ca_bundle: Option<PathBuf>,
    /// Sources the caller laid out already at the recorded commit (the service's worktree of
    /// its mirror), with how to describe them: built in place instead of cloned or copied.
    pub sources: Option<(PathBuf, String)>,
}

/// A tool's recorded version against the one here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCheck {
    pub tool: String,
    pub recorded: Option<String>,
    pub current: Option<String>,
    /// `same`, `differs`, `not recorded` (the report lacks it) or `missing` (not installed here).
    pub status: String,
}

impl ToolCheck {
    /// `zig: not recorded (recorded -, here 0.14.1)`: what a log says before the rebuild.
    pub fn line(&self) -> String {
        format!(
            "{}: {} (recorded {}, here {})",
            self.tool,
            self.status,
            self.recorded.as_deref().unwrap_or("-"),
            self.current.as_deref().unwrap_or("-")
        )
    }
}

/// One place where the rebuild differs from the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Difference {
    /// `index`, `manifest`, `config`, `layer`, `binary (raw)`, `binary (stripped)`, `binary
    /// (compressed)`, `sbom`, `provenance` or `build`.
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub recorded: Option<String>,
    pub rebuilt: Option<String>,
    /// For JSON documents: the keys whose values differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<diff::KeyDiff>,
    /// For layers: the files that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<diff::FileDiff>,
    /// What else is known (only the compression differs; the recorded blob is gone; ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One variant's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantVerdict {
    pub variant: String,
    pub identical: bool,
    pub recorded: Option<Digest>,
    pub rebuilt: Option<Digest>,
    pub differences: Vec<Difference>,
}

/// The answer of `galley repro`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// Every digest of every variant matches.
    pub identical: bool,
    pub report: String,
    /// How the sources were laid out for the rebuild.
    pub sources: String,
    /// Where the rebuild ran (removed afterwards unless kept).
    pub rebuilt_in: String,
    /// Tool versions, checked before the comparison: a differing tool explains most differences.
    pub tools: Vec<ToolCheck>,
    /// Inputs that differ on purpose or by necessity (an overridden epoch, a dirty tree, ...).
    pub notes: Vec<String>,
    pub variants: Vec<VariantVerdict>,
    /// The rebuild's own report (the service records it as the repro build's report).
    #[serde(skip)]
    pub rebuilt_report: Option<Box<crate::pipeline::report::Report>>,
}

/// A directory removed when dropped, unless kept (whole, or its `out/` only).
struct WorkDir {
    path: PathBuf,
    keep: bool,
    keep_output: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.keep_output {
            let _ = std::fs::remove_dir_all(self.path.join("src"));
            let _ = std::fs::remove_dir_all(self.path.join("target"));
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A repro ready to build: the record read, the sources laid out, the tools checked.
pub struct Plan {
    report_path: PathBuf,
    recorded: Report,
    recorded_layout: Option<Layout>,
    work: WorkDir,
    project: PathBuf,
    sources: String,
    notes: Vec<String>,
    /// Checked before anything is built; print these first.
    pub tools: Vec<ToolCheck>,
    epoch: String,
    req: ReproRequest,
}

/// Runs `git -C dir ARGS...` as argv; returns its trimmed stdout.
fn git<S: AsRef<std::ffi::OsStr>>(
    dir: &Path,
    args: &[S],
    cancel: &Cancel,
) -> Result<String, ReproError> {
    crate::git::run(dir, args, Duration::from_secs(600), cancel).map_err(|e| match e {
        crate::git::GitError::Failed { what, detail } => ReproError::Git { what, detail },
        crate::git::GitError::Cancelled(c) => ReproError::Cancelled(c),
    })
}

/// Copies `src` into `dst` (created), files with their modes, symlinks as symlinks, leaving
/// `target/` and `.git` of the top directory behind.
fn copy_tree(src: &Path, dst: &Path, top: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name == ".git" || (top && name == "target") {
            continue;
        }
        let (from, to) = (e.path(), dst.join(&name));
        let kind = e.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(&from, &to, false)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Empties `dir` except its `.git`.
fn clear_except_git(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Reads the report, lays the sources out in a fresh directory and checks the tools.
pub fn prepare(req: &ReproRequest, cancel: &Cancel) -> Result<Plan, ReproError> {
    let text = std::fs::read(&req.report).map_err(|source| ReproError::ReadReport {
        path: req.report.clone(),
        source,
    })?;
    let recorded = Report::parse(&text).map_err(|source| ReproError::BadReport {
        path: req.report.clone(),
        source,
    })?;
    if recorded.inputs.is_none() {
        return Err(ReproError::NoInputs {
            path: req.report.clone(),
        });
    }
    if recorded.succeeded_variants().next().is_none() {
        return Err(ReproError::NothingBuilt);
    }
    let recorded_project = PathBuf::from(&recorded.project);
    if req.sources.is_none() && !recorded_project.join("Cargo.toml").is_file() {
        return Err(ReproError::NoProject(recorded_project));
    }
    // The layout beside the report (out/report.json lives in out/), else where it was written.
    let recorded_layout = req
        .report
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .and_then(|p| Layout::open(p).ok())
        .or_else(|| Layout::open(Path::new(&recorded.output)).ok());

    let parent = req.work_parent.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(|source| ReproError::Work {
        dir: parent.clone(),
        source,
    })?;
    // Absolute: git runs from inside the repository.
    let parent = parent.canonicalize().map_err(|source| ReproError::Work {
        dir: parent.clone(),
        source,
    })?;
    // A new directory of our own (create_dir fails rather than reuse one).
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = parent.join(format!("galley-repro-{}-{stamp:x}", std::process::id()));
    std::fs::create_dir(&path).map_err(|source| ReproError::Work {
        dir: path.clone(),
        source,
    })?;
    let work = WorkDir {
        path,
        keep: req.keep,
        // Set once the comparison ran: a failed or cancelled repro leaves nothing.
        keep_output: false,
    };
    let src = work.path.join("src");
    let mut notes = Vec::new();
    let werr = |source| ReproError::Work {
        dir: src.clone(),
        source,
    };
    let (project, sources) = match (&req.sources, &recorded.revision) {
        (Some((dir, how)), _) => {
            if !dir.join("Cargo.toml").is_file() {
                return Err(ReproError::NoProject(dir.clone()));
            }
            (dir.clone(), how.clone())
        }
        (None, Some(rev)) => {
            let commit = rev.trim_end_matches("-dirty");
            if !is_commit(commit) {
                return Err(ReproError::BadRevision(rev.clone()));
            }
            let top = git(&recorded_project, &["rev-parse", "--show-toplevel"], cancel)?;
            let prefix = git(&recorded_project, &["rev-parse", "--show-prefix"], cancel)?;
            // From inside the repository: clone "." into the (absolute) fresh directory.
            let clone: [&std::ffi::OsStr; 7] = [
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--no-checkout".as_ref(),
                "--no-hardlinks".as_ref(),
                "--".as_ref(),
                ".".as_ref(),
                src.as_os_str(),
            ];
            git(Path::new(&top), &clone, cancel)?;
            git(&src, &["checkout", "--quiet", "--detach", commit], cancel).map_err(
                |e| match e {
                    ReproError::Git { detail, .. } => ReproError::Git {
                        what: "checkout".into(),
                        detail: format!(
                            "commit {commit} of {top} (was it amended or deleted since?): {detail}"
                        ),
                    },
                    other => other,
                },
            )?;
            let project = src.join(&prefix);
            if recorded.dirty == Some(true) || rev.ends_with("-dirty") {
                clear_except_git(&project).map_err(werr)?;
                copy_tree(&recorded_project, &project, true).map_err(werr)?;
                notes.push(format!(
                    "the recorded build was of commit {commit} with uncommitted changes: rebuilt \
                     from that commit with {}'s files as they are now",
                    recorded_project.display()
                ));
                (
                    project,
                    format!("git commit {commit} of {top}, uncommitted files laid over it"),
                )
            } else {
                (project, format!("git commit {commit} of {top}"))
            }
        }
        (None, None) => {
            let name = recorded_project
                .file_name()
                .map(|n| n.to_owned())
                .unwrap_or_else(|| "project".into());
            let project = src.join(name);
            copy_tree(&recorded_project, &project, true).map_err(werr)?;
            notes.push(format!(
                "the project is not in git: rebuilt from {} as it is now",
                recorded_project.display()
            ));
            (project, format!("a copy of {}", recorded_project.display()))
        }
    };
    let epoch = match &req.source_date_epoch {
        Some(e) => {
            notes.push(format!(
                "SOURCE_DATE_EPOCH {e} instead of the recorded {}",
                recorded.source_date_epoch
            ));
            e.clone()
        }
        None => recorded.source_date_epoch.to_string(),
    };
    let tools = check_tools(&recorded, &project, req, cancel);
    Ok(Plan {
        report_path: req.report.clone(),
        recorded,
        recorded_layout,
        work,
        project,
        sources,
        notes,
        tools,
        epoch,
        req: req.clone(),
    })
}

/// Compares the recorded tool versions with the ones that will run here.
fn check_tools(
    recorded: &Report,
    project: &Path,
    req: &ReproRequest,
    cancel: &Cancel,
) -> Vec<ToolCheck> {
    let here = CargoZigbuild::default().versions(project);
    let packed = recorded.variants.iter().any(|v| {
        v.platforms
            .iter()
            .any(|p| p.binary_digests.iter().any(|(k, _)| k == "compressed"))
    });
    let upx = req.upx.clone().unwrap_or_else(|| PathBuf::from("upx"));
    let mut current: Vec<(&str, Option<String>)> = vec![
        ("rustc", Some(here.rustc)),
        ("cargo_zigbuild", Some(here.cargo_zigbuild)),
        ("zig", Some(here.zig)),
    ];
    if packed || recorded.tools.upx.is_some() {
        current.push(("upx", pipeline::compress::upx_version(&upx, cancel)));
    }
    current
        .into_iter()
        .map(|(tool, now)| {
            let now = now.filter(|v| !v.ends_with(": unavailable"));
            let was = recorded
                .tools
                .get(tool)
                .map(str::to_string)
                .filter(|v| !v.is_empty());
            let status = match (&was, &now) {
                (None, _) => "not recorded",
                (Some(_), None) => "missing",
                (Some(a), Some(b)) if a == b => "same",
                _ => "differs",
            };
            ToolCheck {
                tool: tool.replace('_', "-"),
                recorded: was,
                current: now,
                status: status.to_string(),
            }
        })
        .collect()
}

/// Builds the recorded inputs in the plan's fresh directory and compares every digest.
pub fn rebuild(
    mut plan: Plan,
    events: &dyn EventSink,
    cancel: &Cancel,
    compile_slots: Option<&CompileSlots>,
) -> Result<Verdict, ReproError> {
    let inputs = plan.recorded.inputs.clone().unwrap_or_default();
    let out_dir = plan.work.path.join("out");
    let request = BuildRequest {
        version: Some(plan.recorded.version.clone()),
        source_date_epoch: Some(plan.epoch.clone()),
        upx: plan.req.upx.clone(),
        // Every stage runs: a cached compile would compare the cache with itself.
        no_cache: true,
        cache_dir: plan.req.cache_dir.clone(),
        base_pin: Some(plan.recorded.base.digest.clone()),
        insecure_registries: plan.req.insecure_registries.clone(),
        ca_bundle: plan.req.ca_bundle.clone(),
        ..BuildRequest::replay(&inputs, plan.project.clone(), out_dir.clone())
    };
    let spec = BuildSpec::resolve(&request)?;
    let zigbuild = CargoZigbuild {
        target_dir: Some(plan.work.path.join("target")),
    };
    let limited = compile_slots.map(|slots| Limited {
        inner: &zigbuild,
        slots,
    });
    let ctx = Context {
        toolchain: match &limited {
            Some(l) => l,
            None => &zigbuild,
        },
        events,
        cancel,
    };
    let report = pipeline::run(&spec, &ctx).map_err(|e| match e {
        PipelineError::Cancelled(c) => ReproError::Cancelled(c),
        e => ReproError::Build(Box::new(e)),
    })?;
    let rebuilt_layout = Layout::open(&out_dir).ok();
    let mut variants = Vec::new();
    for v in plan.recorded.succeeded_variants() {
        let r = report.variants.iter().find(|r| r.variant == v.variant);
        variants.push(compare_variant(
            v,
            r,
            plan.recorded_layout.as_ref(),
            rebuilt_layout.as_ref(),
        ));
    }
    plan.work.keep_output = plan.req.keep_output;
    let mut notes = plan.notes.clone();
    for v in plan
        .recorded
        .variants
        .iter()
        .filter(|v| !v.status.succeeded())
    {
        notes.push(format!(
            "{} failed in the recorded build{}: not compared",
            v.variant,
            v.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    if plan.recorded_layout.is_none() {
        notes.push(format!(
            "the recorded layout ({}) is gone: digests compared, contents not",
            plan.recorded.output
        ));
    }
    Ok(Verdict {
        identical: variants.iter().all(|v| v.identical),
        report: plan.report_path.display().to_string(),
        sources: plan.sources.clone(),
        rebuilt_in: plan.work.path.display().to_string(),
        tools: plan.tools.clone(),
        notes,
        variants,
        rebuilt_report: Some(Box::new(report)),
    })
}

fn compare_variant(
    rec: &VariantReport,
    new: Option<&VariantReport>,
    rec_layout: Option<&Layout>,
    new_layout: Option<&Layout>,
) -> VariantVerdict {
    let mut differences = Vec::new();
    let Some(new) = new.filter(|n| n.status.succeeded()) else {
        differences.push(Difference {
            what: "build".into(),
            platform: None,
            recorded: Some("succeeded".into()),
            rebuilt: Some("failed".into()),
            keys: Vec::new(),
            files: Vec::new(),
            note: new.and_then(|n| n.error.clone()),
        });
        return VariantVerdict {
            variant: rec.variant.clone(),
            identical: false,
            recorded: rec.digest.clone(),
            rebuilt: None,
            differences,
        };
    };
    let blobs = Blobs {
        rec: rec_layout,
        new: new_layout,
    };
    let is_index = rec.media_type.as_deref().is_some_and(crate::oci::is_index);
    if is_index && rec.digest != new.digest {
        differences.push(blobs.json_difference("index", None, &rec.digest, &new.digest));
    }
    for p in &rec.platforms {
        let np = new.platforms.iter().find(|x| x.target == p.target);
        let plat = Some(p.platform.clone());
        let Some(np) = np else {
            differences.push(Difference {
                what: "platform".into(),
                platform: plat,
                recorded: p.manifest_digest.as_ref().map(|d| d.to_string()),
                rebuilt: None,
                keys: Vec::new(),
                files: Vec::new(),
                note: Some("the rebuild has no image for this platform".into()),
            });
            continue;
        };
        for (what, a, b) in [
            ("manifest", &p.manifest_digest, &np.manifest_digest),
            ("config", &p.config_digest, &np.config_digest),
        ] {
            if a != b {
                differences.push(blobs.json_difference(what, plat.clone(), a, b));
            }
        }
        if p.layer_digest != np.layer_digest {
            differences.push(blobs.layer_difference(
                plat.clone(),
                &p.layer_digest,
                &np.layer_digest,
            ));
        }
        for stage in ["raw", "stripped", "compressed"] {
            let get = |x: &PlatformReport| {
                x.binary_digests
                    .iter()
                    .find(|(k, _)| k == stage)
                    .map(|(_, d)| d.clone())
            };
            let (a, b) = (get(p), get(np));
            if a != b {
                differences.push(Difference {
                    what: format!("binary ({stage})"),
                    platform: plat.clone(),
                    recorded: a.map(|d| d.to_string()),
                    rebuilt: b.map(|d| d.to_string()),
                    keys: Vec::new(),
                    files: Vec::new(),
                    note: Some(match stage {
                        "raw" => "cargo produced other bytes: the sources, the flags or the toolchain differ".into(),
                        "stripped" => "stripping gave other bytes".into(),
                        _ => "UPX gave other bytes (or ran in one build only)".into(),
                    }),
                });
            }
        }
        for (kind, what) in [
            (crate::attest::SPDX_MEDIA_TYPE, "sbom"),
            (crate::attest::IN_TOTO_MEDIA_TYPE, "provenance"),
        ] {
            let get = |x: &PlatformReport| {
                x.referrers
                    .iter()
                    .find(|r| r.artifact_type == kind)
                    .map(|r| r.digest.clone())
            };
            let (a, b) = (get(p), get(np));
            if a != b {
                differences.push(blobs.document_difference(what, plat.clone(), &a, &b));
            }
        }
    }
    VariantVerdict {
        variant: rec.variant.clone(),
        identical: differences.is_empty(),
        recorded: rec.digest.clone(),
        rebuilt: new.digest.clone(),
        differences,
    }
}

/// Reads blobs from the recorded and the rebuilt layouts.
struct Blobs<'a> {
    rec: Option<&'a Layout>,
    new: Option<&'a Layout>,
}

impl Blobs<'_> {
    fn read(layout: Option<&Layout>, d: &Option<Digest>) -> Option<Vec<u8>> {
        let (layout, d) = (layout?, d.as_ref()?);
        let bytes = std::fs::read(layout.blob_path(d)).ok()?;
        (Digest::of(&bytes) == *d).then_some(bytes)
    }

    fn pair(&self, a: &Option<Digest>, b: &Option<Digest>) -> Result<(Vec<u8>, Vec<u8>), String> {
        match (Self::read(self.rec, a), Self::read(self.new, b)) {
            (Some(x), Some(y)) => Ok((x, y)),
            (None, _) => Err(
                "the recorded blob is not in the recorded layout any more: digests compared only"
                    .into(),
            ),
            (_, None) => Err("the rebuilt blob is missing".into()),
        }
    }

    fn base(
        what: &str,
        platform: Option<String>,
        a: &Option<Digest>,
        b: &Option<Digest>,
    ) -> Difference {
        Difference {
            what: what.into(),
            platform,
            recorded: a.as_ref().map(|d| d.to_string()),
            rebuilt: b.as_ref().map(|d| d.to_string()),
            keys: Vec::new(),
            files: Vec::new(),
            note: None,
        }
    }

    fn json_difference(
        &self,
        what: &str,
        platform: Option<String>,
        a: &Option<Digest>,
        b: &Option<Digest>,
    ) -> Difference {
        let mut d = Self::base(what, platform, a, b);
        match self.pair(a, b) {
            Ok((x, y)) => match (
                serde_json::from_slice::<serde_json::Value>(&x),
                serde_json::from_slice::<serde_json::Value>(&y),
            ) {
                (Ok(x), Ok(y)) => {
                    d.keys = diff::json(&x, &y);
                    if d.keys.is_empty() {
                        d.note = Some("the same JSON, serialized differently".into());
                    }
                }
                _ => d.note = Some("not JSON".into()),
            },
            Err(e) => d.note = Some(e),
        }
        d
    }

    fn layer_difference(
        &self,
        platform: Option<String>,
        a: &Option<Digest>,
        b: &Option<Digest>,
    ) -> Difference {
        let mut d = Self::base("layer", platform, a, b);
        match self.pair(a, b) {
            Ok((x, y)) => match diff::layer(&x, &y) {
                Ok(l) => {
                    d.note = if l.tar_identical {
                        Some(
                            "the tar streams are identical: only the gzip compression differs"
                                .into(),
                        )
                    } else if l.order {
                        Some("the same entries in another order".into())
                    } else if l.files.is_empty() {
                        Some("the entries agree in type, size, mode, owner, mtime, link and content; other tar header fields differ".into())
                    } else {
                        None
                    };
                    d.files = l.files;
                }
                Err(e) => d.note = Some(e.to_string()),
            },
            Err(e) => d.note = Some(e),
        }
        d
    }

    /// An SBOM or provenance: the artifact manifests point at the documents; compare those.
    fn document_difference(
        &self,
        what: &str,
        platform: Option<String>,
        a: &Option<Digest>,
        b: &Option<Digest>,
    ) -> Difference {
        let doc = |layout: Option<&Layout>, d: &Option<Digest>| -> Option<Digest> {
            let bytes = Self::read(layout, d)?;
            let m: Manifest = serde_json::from_slice(&bytes).ok()?;
            m.layers.first().map(|l| l.digest.clone())
        };
        let (da, db) = (doc(self.rec, a), doc(self.new, b));
        let mut d = if da.is_some() && db.is_some() && da != db {
            self.json_difference(what, platform, &da, &db)
        } else {
            Self::base(what, platform, &da, &db)
        };
        if d.recorded.is_none() || d.rebuilt.is_none() {
            d.note = Some(format!(
                "attached in {} only",
                if d.recorded.is_some() {
                    "the recorded build"
                } else {
                    "the rebuild"
                }
            ));
        }
        d.recorded = a.as_ref().map(|d| d.to_string());
        d.rebuilt = b.as_ref().map(|d| d.to_string());
        d
    }
}

impl Verdict {
    /// The verdict for people: tools first (they explain most differences), then each
    /// variant, down to the key or the file.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "repro of {} ({})", self.report, self.sources);
        for t in &self.tools {
            let line = match t.status.as_str() {
                "same" => format!(
                    "  {}: {} (as recorded)",
                    t.tool,
                    t.current.as_deref().unwrap_or("")
                ),
                "not recorded" => format!(
                    "  {}: NOT RECORDED in the report; here {}",
                    t.tool,
                    t.current.as_deref().unwrap_or("missing too")
                ),
                "missing" => format!(
                    "  {}: MISSING here; recorded {}",
                    t.tool,
                    t.recorded.as_deref().unwrap_or("")
                ),
                _ => format!(
                    "  {}: DIFFERS: recorded {}, here {}",
                    t.tool,
                    t.recorded.as_deref().unwrap_or(""),
                    t.current.as_deref().unwrap_or("")
                ),
            };
            let _ = writeln!(s, "{line}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        for v in &self.variants {
            if v.identical {
                let _ = writeln!(
                    s,
                    "{}: identical {}",
                    v.variant,
                    v.rebuilt.as_ref().map(|d| d.as_str()).unwrap_or("")
                );
                continue;
            }
            let _ = writeln!(
                s,
                "{}: DIFFERENT: recorded {}, rebuilt {}",
                v.variant,
                v.recorded.as_ref().map(|d| d.as_str()).unwrap_or("-"),
                v.rebuilt.as_ref().map(|d| d.as_str()).unwrap_or("-")
            );
            for d in &v.differences {
                let _ = writeln!(
                    s,
                    "  {}{}: {} -> {}",
                    d.what,
                    d.platform
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default(),
                    d.recorded.as_deref().unwrap_or("-"),
                    d.rebuilt.as_deref().unwrap_or("-")
                );
                for k in &d.keys {
                    let _ = writeln!(
                        s,
                        "    key {}: {} -> {}",
                        k.key,
                        k.recorded.as_deref().unwrap_or("(absent)"),
                        k.rebuilt.as_deref().unwrap_or("(absent)")
                    );
                }
                for f in &d.files {
                    let _ = writeln!(s, "    file {} {}", f.path, f.change);
                    for k in &f.fields {
                        let _ = writeln!(
                            s,
                            "      {}: {} -> {}",
                            k.key,
                            k.recorded.as_deref().unwrap_or("-"),
                            k.rebuilt.as_deref().unwrap_or("-")
                        );
                    }
                }
                if let Some(n) = &d.note {
                    let _ = writeln!(s, "    ({n})");
                }
            }
        }
        let differing = self.variants.iter().filter(|v| !v.identical).count();
        let plural = if self.variants.len() == 1 { "" } else { "s" };
        let _ = writeln!(
            s,
            "{}",
            if differing == 0 {
                format!(
                    "verdict: identical ({} variant{}, every digest matches)",
                    self.variants.len(),
                    plural
                )
            } else {
                format!(
                    "verdict: DIFFERENT ({differing} of {} variant{})",
                    self.variants.len(),
                    plural
                )
            }
        );
        s
    }
}
