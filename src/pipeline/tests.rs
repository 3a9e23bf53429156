//! The pipeline on the fake toolchain: stage order, the stage cache, cancel between stages and
//! tags on a failed variant, in milliseconds and without cargo. The real compiler, UPX and
//! registries are the integration tests' business (tests/it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::oci::image::ImageSettings;
use crate::oci::layer::{write_layer, Entry};
use crate::oci::{Manifest, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST};
use crate::pipeline::report::CacheUse;
use crate::spec::{BaseRef, CompressSpec, EpochSource, Inputs};
use crate::toolchain::fake::FakeToolchain;

/// A one-layer linux/amd64 base image in an OCI layout, tagged `base`.
fn base_layout(dir: &Path) -> PathBuf {
    let root = dir.join("base");
    let layout = Layout::create(&root).unwrap();
    let layer = write_layer(&[Entry::dir("etc", 0o755)], 0, &layout.blob_dir()).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created_by": "test base"}],
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = layout.put_blob(&config).unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: Descriptor::new(MEDIA_CONFIG, config_digest, config.len() as u64),
        layers: vec![Descriptor::new(MEDIA_LAYER_GZIP, layer.digest, layer.size)],
        annotations: Default::default(),
    };
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = layout.put_blob(&manifest).unwrap();
    let desc = Descriptor::new(MEDIA_MANIFEST, digest, manifest.len() as u64);
    layout.set_tags(&[("base".into(), desc)]).unwrap();
    root
}

/// A build of `variants` (name, feature) on the test base, with the stage cache in `dir`.
fn spec(dir: &Path, variants: &[(&str, &str)]) -> BuildSpec {
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let image = ImageSettings {
        workdir: "/app".into(),
        entrypoint: vec!["/app/svc".into()],
        ..Default::default()
    };
    BuildSpec {
        project,
        binary: "svc".into(),
        profile: "release".into(),
        rustflags: Vec::new(),
        env_passthrough: Vec::new(),
        files: Vec::new(),
        external_sources: Vec::new(),
        stage_cache: Some(1 << 30),
        cache_remote: None,
        sccache: None,
        sbom: false,
        provenance: true,
        version: "1.0.0".into(),
        variants: variants
            .iter()
            .map(|(name, feature)| VariantSpec {
                name: name.to_string(),
                features: vec![feature.to_string()],
                default_features: false,
                package: None,
                binary: "svc".into(),
                tags: vec![format!("{name}-1.0.0")],
                push: None,
                image: image.clone(),
            })
            .collect(),
        targets: vec![Target::X86_64Musl],
        base: BaseRef::Layout {
            dir: base_layout(dir),
            tag: "base".into(),
        },
        output: dir.join("out"),
        image,
        source_date_epoch: 0,
        created: "1970-01-01T00:00:00Z".into(),
        revision: None,
        dirty: None,
        epoch_source: EpochSource::Zero,
        source: None,
        compress: CompressSpec {
            enabled: false,
            flags: Vec::new(),
            upx: "upx".into(),
            smoke_args: None,
            smoke_timeout: Duration::from_secs(5),
        },
        push: None,
        registry: Default::default(),
        refresh_base: false,
        base_ttl: Duration::from_secs(3600),
        cache_dir: dir.join("cache"),
        partial: false,
        inputs: Inputs::default(),
        base_pin: None,
    }
}

/// Stage events as `variant stage status`, in order; optionally cancels when it sees one.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    cancel_on: Option<(String, Cancel)>,
}

impl EventSink for Recorder {
    fn log(&self, _line: &LogLine<'_>) {}

    fn stage(&self, e: &StageEvent<'_>) {
        let status = serde_json::to_value(e.status).unwrap();
        let line = format!("{} {} {}", e.variant, e.stage, status.as_str().unwrap());
        if let Some((when, cancel)) = &self.cancel_on {
            if *when == line {
                cancel.cancel("cancelled by the test");
            }
        }
        self.seen.lock().unwrap().push(line);
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn cancel() -> Cancel {
    Cancel::new("galley-pipeline-test", Duration::from_secs(1))
}

fn run_with(
    spec: &BuildSpec,
    toolchain: &dyn Toolchain,
    events: &Recorder,
    cancel: &Cancel,
) -> Result<Report, PipelineError> {
    run(
        spec,
        &Context {
            toolchain,
            events,
            cancel,
        },
    )
}

/// The stages of one variant run in the order of `Stage::ALL` (push and attest only when asked
/// for), each running then succeeded, and the report lists them in that order.
#[test]
fn stages_run_in_order_and_the_image_is_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), &[("sqlite", "db_sqlite")]);
    let fake = FakeToolchain::new(&dir.path().join("bin"));
    let events = Recorder::default();
    let report = run_with(&spec, &fake, &events, &cancel()).unwrap();
    let order = [
        "compile", "verify", "strip", "compress", "layer", "assemble", "attest",
    ];
    let want: Vec<String> = order
        .iter()
        .flat_map(|s| {
            [
                format!("sqlite {s} running"),
                format!("sqlite {s} succeeded"),
            ]
        })
        .collect();
    assert_eq!(events.lines(), want);
    let stages: Vec<String> = report.variants[0].platforms[0]
        .stages
        .iter()
        .map(|s| s.stage.to_string())
        .collect();
    assert_eq!(stages, order);
    assert!(report.succeeded && report.tags_moved);
    let tagged = Layout::open(&spec.output)
        .unwrap()
        .resolve("sqlite-1.0.0")
        .unwrap();
    assert_eq!(Some(tagged.digest), report.variants[0].digest);
    assert_eq!(fake.compiles(), ["db_sqlite@x86_64-unknown-linux-musl"]);
}

/// A second build of the same inputs is answered by the cache (compile and layer say cached
/// with the same keys, the fake is not called again) and gives the same digest; a changed
/// feature misses.
#[test]
fn the_stage_cache_answers_unchanged_inputs_and_misses_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), &[("sqlite", "db_sqlite")]);
    let fake = FakeToolchain::new(&dir.path().join("bin"));
    let first = run_with(&spec, &fake, &Recorder::default(), &cancel()).unwrap();
    std::fs::remove_dir_all(&spec.output).unwrap();
    let second = run_with(&spec, &fake, &Recorder::default(), &cancel()).unwrap();
    assert_eq!(fake.compiles().len(), 1, "{:?}", fake.compiles());
    assert_eq!(first.variants[0].digest, second.variants[0].digest);
    let uses = |r: &Report| -> Vec<(String, Option<CacheUse>, Option<String>)> {
        r.variants[0].platforms[0]
            .stages
            .iter()
            .filter(|s| matches!(s.stage, Stage::Compile | Stage::Layer))
            .map(|s| (s.stage.to_string(), s.cache, s.cache_key.clone()))
            .collect()
    };
    let (a, b) = (uses(&first), uses(&second));
    assert_eq!(a.len(), 2);
    for ((stage, was, key), (_, now, key2)) in a.iter().zip(&b) {
        assert_eq!(*was, Some(CacheUse::Ran), "{stage}");
        assert_eq!(*now, Some(CacheUse::Cached), "{stage}");
        assert!(key.is_some() && key == key2, "{stage}");
    }

    let mut other = spec.clone();
    other.variants[0].features = vec!["db_psql".into()];
    std::fs::remove_dir_all(&spec.output).unwrap();
    let third = run_with(&other, &fake, &Recorder::default(), &cancel()).unwrap();
    assert_eq!(fake.compiles().len(), 2);
    assert_eq!(uses(&third)[0].1, Some(CacheUse::Ran));
    assert_ne!(third.variants[0].digest, first.variants[0].digest);
}

/// A cancel between stages: the stage after it never starts, the rest are reported cancelled,
/// the build ends cancelled and the output directory it created is gone.
#[test]
fn a_cancel_between_stages_stops_the_next_stage_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), &[("sqlite", "db_sqlite")]);
    let fake = FakeToolchain::new(&dir.path().join("bin"));
    let cancel = cancel();
    let events = Recorder {
        cancel_on: Some(("sqlite verify succeeded".into(), cancel.clone())),
        ..Default::default()
    };
    let err = run_with(&spec, &fake, &events, &cancel).unwrap_err();
    assert!(matches!(err, PipelineError::Cancelled(_)), "{err}");
    let lines = events.lines();
    let after: Vec<&String> = lines
        .iter()
        .skip_while(|l| *l != "sqlite verify succeeded")
        .skip(1)
        .collect();
    assert!(!after.is_empty(), "{lines:?}");
    assert!(after.iter().all(|l| l.ends_with(" cancelled")), "{lines:?}");
    assert!(!spec.output.exists());
}

/// A variant that fails to compile gets no tag and says why; the other is built and tagged,
/// and the build has failed.
#[test]
fn a_failed_variant_gets_no_tag_and_the_others_do() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        &[("sqlite", "db_sqlite"), ("mysql", "db_mysql")],
    );
    let fake = FakeToolchain::new(&dir.path().join("bin")).failing("db_mysql", "error[E0432]");
    let events = Recorder::default();
    let report = run_with(&spec, &fake, &events, &cancel()).unwrap();
    assert!(!report.succeeded);
    let (sqlite, mysql) = (&report.variants[0], &report.variants[1]);
    assert_eq!(sqlite.status, Status::Succeeded);
    assert_eq!(mysql.status, Status::Failed);
    assert!(mysql.tags.is_empty());
    assert!(
        mysql.error.as_deref().unwrap_or("").contains("E0432"),
        "{:?}",
        mysql.error
    );
    assert!(events.lines().contains(&"mysql verify skipped".to_string()));
    let layout = Layout::open(&spec.output).unwrap();
    assert!(layout.resolve("sqlite-1.0.0").is_ok());
    assert!(layout.resolve("mysql-1.0.0").is_err());
}

/// A build that cancels from inside the compile (as Ctrl-C would) stops at once.
#[test]
fn a_cancel_during_a_compile_ends_the_build_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        &[("sqlite", "db_sqlite"), ("mysql", "db_mysql")],
    );
    let cancel = cancel();
    let c = cancel.clone();
    let fake = FakeToolchain::new(&dir.path().join("bin")).on_compile(move |features| {
        if features.iter().any(|f| f == "db_mysql") {
            c.cancel("Ctrl-C");
        }
    });
    let seen = Arc::new(Recorder::default());
    let err = run_with(&spec, &fake, &seen, &cancel).unwrap_err();
    assert!(matches!(err, PipelineError::Cancelled(_)), "{err}");
    assert!(seen
        .lines()
        .contains(&"mysql compile cancelled".to_string()));
    assert!(!spec.output.exists());
}
