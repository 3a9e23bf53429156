//! `galley build`.

use std::io::Write;
use std::sync::Mutex;

use anyhow::Context as _;

use super::BuildArgs;
use crate::cancel::{Cancel, DEFAULT_GRACE};
use crate::oci::archive::{Archive, Format};
use crate::pipeline::report::CacheUse;
use crate::pipeline::{self, Context, EventSink, LogLine, PipelineError, StageEvent};
use crate::spec::{BuildRequest, BuildSpec};
use crate::toolchain::CargoZigbuild;

/// What `galley build` ended with.
pub enum Outcome {
    /// The report was written; whether every variant succeeded.
    Finished(bool),
    /// Ctrl-C or SIGTERM: every child was stopped, nothing half-written is left.
    Interrupted,
}

/// How much goes to stderr while a build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Errors only (`-q`).
    Quiet,
    /// Log lines and the summary.
    #[default]
    Normal,
    /// Also every stage as it starts and ends (`-v`).
    Verbose,
}

/// Prints log lines on stderr as `[variant arch] stage: line`.
pub(super) struct Printer {
    pub(super) stderr: Mutex<std::io::Stderr>,
    pub(super) verbosity: Verbosity,
}

impl EventSink for Printer {
    fn log(&self, line: &LogLine<'_>) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let mut err = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            err,
            "[{} {}] {}: {}",
            line.variant,
            line.target.platform().architecture,
            line.stage,
            line.message
        );
    }

    fn stage(&self, e: &StageEvent<'_>) {
        // Stage timings are in the report; the log lines say what happens. `-v` shows them.
        if self.verbosity != Verbosity::Verbose {
            return;
        }
        let mut err = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let ms = e.ms.map(|ms| format!(" in {ms} ms")).unwrap_or_default();
        let cache = e
            .cache
            .map(|c| match c.used {
                CacheUse::Cached => " (cached)",
                CacheUse::Remote => " (remote)",
                CacheUse::Ran => "",
            })
            .unwrap_or_default();
        let _ = writeln!(
            err,
            "[{} {}] {} {:?}{ms}{cache}",
            e.variant,
            e.target.platform().architecture,
            e.stage,
            e.status
        );
    }
}

/// Turns SIGINT and SIGTERM into a cancel: the first stops the build gracefully (SIGTERM to
/// every child group, SIGKILL after the grace period), a second kills at once.
pub(super) fn cancel_on_signals(cancel: &Cancel) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install the Ctrl-C handler")?;
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        for (n, sig) in signals.forever().enumerate() {
            let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
            if n == 0 {
                eprintln!("galley: {name}: stopping the build (again to kill at once)");
                cancel.cancel(&format!("interrupted by {name}"));
            } else {
                cancel.force(&format!("interrupted by {name}"));
            }
        }
    });
    Ok(())
}

/// The targets of `--platform` values (`linux/amd64`, `linux/arm64`, `linux/arm64/v8`).
fn platform_targets(platforms: &[String]) -> anyhow::Result<Vec<String>> {
    platforms
        .iter()
        .map(|p| {
            crate::target::Target::ALL
                .into_iter()
                .find(|t| {
                    let pf = t.platform();
                    let short = format!("{}/{}", pf.os, pf.architecture);
                    p == &short || pf.variant.is_some_and(|v| p == &format!("{short}/{v}"))
                })
                .map(|t| t.triple().to_string())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--platform {p:?} is not one galley builds: use linux/amd64 or linux/arm64"
                    )
                })
        })
        .collect()
}

/// The repository of `--push`: its value, or GALLEY_REPO when it has none.
fn push_repository(push: Option<String>) -> anyhow::Result<Option<String>> {
    match push.as_deref() {
        Some("") => match std::env::var("GALLEY_REPO") {
            Ok(r) if !r.trim().is_empty() => Ok(Some(r.trim().to_string())),
            _ => anyhow::bail!(
                "--push has no repository and GALLEY_REPO is not set: give --push host/repo or export GALLEY_REPO=host/repo"
            ),
        },
        _ => Ok(push),
    }
}

/// The directory, beside the archive, of the layout an archive is made from (removed on drop).
/// Checked before anything is built: the directory exists, and a docker-archive holds one
/// platform per image.
fn scratch_layout(a: &Archive, platforms: usize) -> anyhow::Result<tempfile::TempDir> {
    if a.format == Format::Docker && platforms > 1 {
        anyhow::bail!(
            "a docker-archive holds single-platform images and {platforms} targets were asked for: build one --target/--platform, or write --output oci-archive:{}",
            a.path.display()
        );
    }
    if a.path.as_os_str().is_empty() {
        anyhow::bail!(
            "--output {}: needs a file name: e.g. {}:images.tar",
            a.transport(),
            a.transport()
        );
    }
    if a.path.is_dir() {
        anyhow::bail!(
            "--output {}:{} is a directory: name a file in it, e.g. {}:{}",
            a.transport(),
            a.path.display(),
            a.transport(),
            a.path.join("images.tar").display()
        );
    }
    let dir = match a.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "the directory of --output {}:{} does not exist: create {} first",
            a.transport(),
            a.path.display(),
            dir.display()
        );
    }
    tempfile::Builder::new()
        .prefix(".galley-layout-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot make a scratch layout in {}", dir.display()))
}

/// Runs a build.
pub fn run(args: BuildArgs) -> anyhow::Result<Outcome> {
    let mut targets = args.targets;
    for t in platform_targets(&args.platforms)? {
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let verbosity = if args.quiet {
        Verbosity::Quiet
    } else if args.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    // An archive is written from a layout galley builds beside it and removes afterwards.
    let archive = args.output.to_str().and_then(Archive::parse);
    let scratch = match &archive {
        None => None,
        Some(a) => Some(scratch_layout(a, targets.len().max(1))?),
    };
    let output = match &scratch {
        Some(dir) => dir.path().join("layout"),
        None => args.output.clone(),
    };
    let req = BuildRequest {
        project: args
            .project_dir
            .or(args.project)
            .unwrap_or_else(|| ".".into()),
        variants: args.variants,
        version: args.version,
        base: args.base,
        output,
        targets,
        tags: args.tags,
        no_compress: args.no_compress,
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        upx: args.upx,
        credential: super::credential(&args.registry)?,
        push: push_repository(args.push)?,
        insecure_registries: args.registry.insecure_registries,
        ca_bundle: args.registry.ca_bundle,
        refresh_base: args.refresh_base,
        cache_dir: None,
        base_ttl: args.base_ttl,
        partial: args.partial,
        rustflags: std::env::var("RUSTFLAGS").ok(),
        encoded_rustflags: std::env::var("CARGO_ENCODED_RUSTFLAGS").ok(),
        no_cache: args.no_cache,
        cache_max_bytes: match &args.cache_max {
            None => None,
            Some(s) => Some(crate::config::units::parse_size(s).ok_or_else(|| {
                anyhow::anyhow!("--cache-max {s:?} is not a size: use bytes or a number with KiB, MiB or GiB (e.g. 2GiB)")
            })?),
        },
        base_pin: None,
        cache_repo: args.cache_repo,
        cache_key_file: args.cache_key_file,
        cache_unsigned: args.cache_unsigned.then_some(true),
        sccache: args.sccache,
    };
    let spec = BuildSpec::resolve(&req)?;
    let cancel = Cancel::new(&format!("galley-cli-{}", std::process::id()), DEFAULT_GRACE);
    cancel_on_signals(&cancel)?;
    let printer = Printer {
        stderr: Mutex::new(std::io::stderr()),
        verbosity,
    };
    let toolchain = CargoZigbuild::default();
    let ctx = Context {
        toolchain: &toolchain,
        events: &printer,
        cancel: &cancel,
    };
    let mut report = match pipeline::run(&spec, &ctx) {
        Ok(r) => r,
        Err(PipelineError::Cancelled(c)) => {
            cancel.wait_settled(DEFAULT_GRACE + std::time::Duration::from_secs(5));
            eprintln!(
                "galley: {}; every child process stopped{}, no tag moved",
                c,
                if cancel.forced() {
                    " (SIGKILL was needed)"
                } else {
                    ""
                }
            );
            return Ok(Outcome::Interrupted);
        }
        Err(e) => return Err(e.into()),
    };
    let refs = match (&archive, &scratch) {
        (Some(a), Some(dir)) if report.succeeded_variants().next().is_some() => {
            let name = spec
                .push
                .as_ref()
                .map(|r| r.name())
                .unwrap_or_else(|| crate::oci::archive::repository_name(&report.binary));
            let layout = crate::oci::layout::Layout::open(&dir.path().join("layout"))?;
            a.write(&layout, &name, report.source_date_epoch)
                .with_context(|| format!("writing {}", a.path.display()))?;
            report.output = format!("{}:{}", a.transport(), a.path.display());
            report.image_refs_with(|tag| a.reference(&name, tag))
        }
        _ => report.image_refs(),
    };
    if verbosity != Verbosity::Quiet {
        eprint!("{}", report.human());
    }
    if let Some(path) = &args.image_refs {
        let text: String = refs.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, text)
            .with_context(|| format!("cannot write --image-refs {}", path.display()))?;
    }
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        println!("{json}");
    } else {
        // What a script captures (IMG=$(galley build ...)), as `ko build` prints it.
        let mut out = std::io::stdout().lock();
        for r in &refs {
            writeln!(out, "{r}").context("writing the image references")?;
        }
    }
    Ok(Outcome::Finished(report.succeeded))
}
