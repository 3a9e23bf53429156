//! When tags move: registry tags only after every variant succeeded (unless `--partial`),
//! report.json on disk before any tag moves, index.json rewritten under a lock, and a base tag's
//! digest trusted for a TTL rather than forever. Regression tests for review defects.

use std::path::Path;
use std::time::Duration;

use galley::oci::layout::Layout;
use galley::oci::{Descriptor, Digest, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST};
use galley::registry::pull::{pull, BlobCache, Resolution};
use galley::registry::{Reference, RegistryOptions, RetryPolicy};
use galley::target::Target;

use crate::fake_registry::{FakeRegistry, Faults};
use crate::support::{build, heavy, scratch, variant};

/// `galley build` of tiny with `variants`, pushing to the fake registry.
fn build_push(
    dir: &Path,
    fake: &FakeRegistry,
    variants: &str,
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let project = dir.join("tiny");
    if !project.exists() {
        crate::support::tiny_with_a_broken_variant(&project);
    }
    let push = format!("{}/team/tiny", fake.host());
    let mut args = vec![
        "--variants",
        variants,
        "--version",
        "1.0.0",
        "--no-compress",
        "--push",
        &push,
    ];
    args.extend_from_slice(extra);
    let (out, report) = build(
        &project,
        &dir.join("out"),
        &args,
        &[("DOCKER_CONFIG", dir.join("none").to_str().unwrap())],
    );
    let report = report.unwrap_or_else(|| {
        panic!(
            "no report ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

/// Regression: tags of a multi-variant push moved one by one as variants finished, so a failed
/// variant left the others released.
#[test]
fn multi_variant_push_moves_no_registry_tag_when_a_variant_fails_unless_partial() {
    let _heavy = heavy();
    let dir = scratch("release-partial");
    let fake = FakeRegistry::start(Faults::default());
    let (out, report) = build_push(&dir, &fake, "sqlite,broken", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        fake.tags("team/tiny").is_empty(),
        "{:?}",
        fake.tags("team/tiny")
    );
    let sqlite = variant(&report, "sqlite");
    assert_eq!(sqlite["status"], "succeeded");
    let withheld = sqlite["push"]["withheld"].as_str().unwrap();
    assert!(
        withheld.contains("broken failed") && withheld.contains("--partial"),
        "{withheld}"
    );
    assert_eq!(sqlite["push"]["references"], serde_json::json!([]));
    // The image itself was pushed (by digest), so --partial only has to move the tag.
    let digest = sqlite["digest"].as_str().unwrap();
    assert!(fake.manifest("team/tiny", digest).is_some());
    // So were its SBOM and provenance: this registry has the referrers API (it answers
    // `OCI-Subject`), so no `sha256-<hex>` tag was needed.
    let reported: Vec<(String, String)> = sqlite["platforms"][0]["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["artifact_type"].as_str().unwrap().to_string(),
                r["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reported.len(), 2, "{sqlite}");
    assert_eq!(fake.referrers("team/tiny", digest), reported);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("registry tags not moved"), "{stderr}");

    let (out, report) = build_push(&dir, &fake, "sqlite,broken", &["--partial"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fake.tags("team/tiny"), ["sqlite-1.0.0"]);
    let sqlite = variant(&report, "sqlite");
    assert!(sqlite["push"].get("withheld").is_none(), "{sqlite}");
    assert_eq!(
        sqlite["push"]["references"][0],
        format!("{}/team/tiny:sqlite-1.0.0@{digest}", fake.host())
    );
}

/// Regression: report.json was written after the tags moved, with a plain write.
#[test]
fn report_json_is_written_atomically_before_the_tags_move() {
    let _heavy = heavy();
    let dir = scratch("release-report-first");
    let out_dir = dir.join("out");
    let fake = FakeRegistry::start(Faults {
        tag_put_witness: Some(out_dir.join("report.json")),
        ..Default::default()
    });
    let (out, report) = build_push(&dir, &fake, "sqlite,postgres", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = fake.witnessed();
    assert_eq!(seen.len(), 2, "one tag PUT per variant");
    for s in &seen {
        let at_tag_time: serde_json::Value =
            serde_json::from_str(s.as_deref().expect("report.json existed")).unwrap();
        assert_eq!(at_tag_time["tags_moved"], false);
        assert_eq!(at_tag_time["version"], "1.0.0");
    }
    assert_eq!(report["tags_moved"], true);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["tags_moved"], true);
    // Written through a temporary file and a rename: nothing temporary is left.
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A tag the registry refuses: the variant fails and the report on disk says so.
    let fake = FakeRegistry::start(Faults {
        refuse_tag_put: true,
        ..Default::default()
    });
    let (out, report) = build_push(&dir, &fake, "sqlite", &[]);
    assert_eq!(out.status.code(), Some(1));
    let sqlite = variant(&report, "sqlite");
    assert_eq!(sqlite["status"], "failed");
    assert!(
        sqlite["push"]["error"]
            .as_str()
            .unwrap()
            .contains("injected refusal"),
        "{sqlite}"
    );
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["succeeded"], false);
}

/// Regression: two galley processes writing one output layout raced on index.json and lost tags.
#[test]
fn index_json_race_between_two_writers_loses_no_tag() {
    let dir = scratch("release-index-lock");
    let root = dir.join("out");
    Layout::create(&root).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                // Each writer opens the layout itself, as a separate process would.
                let layout = Layout::open(&root).unwrap();
                for i in 0..10 {
                    let d = Descriptor::new(
                        MEDIA_MANIFEST,
                        Digest::of(format!("{t}-{i}").as_bytes()),
                        1,
                    );
                    layout.set_tags(&[(format!("w{t}-{i}"), d)]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let index = Layout::open(&root).unwrap().index().unwrap();
    assert_eq!(index.manifests.len(), 80, "tags were lost");
}

/// Regression: the base tag's digest was cached forever unless --refresh-base.
#[test]
fn base_tag_digest_is_trusted_for_its_ttl_not_forever() {
    let dir = scratch("release-base-ttl");
    let fake = FakeRegistry::start(Faults::default());
    let image = |marker: &str| {
        let layer = fake.put_blob("library/base", marker.as_bytes());
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.clone()]}})
        .to_string();
        let config_digest = fake.put_blob("library/base", config.as_bytes());
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer, "size": marker.len()}]})
        .to_string();
        fake.put_manifest("library/base", "3.20", MEDIA_MANIFEST, manifest.as_bytes())
    };
    let first = image("first");
    let reference = Reference::parse(&format!("{}/library/base:3.20", fake.host())).unwrap();
    let options = RegistryOptions {
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(1),
        },
        ..Default::default()
    };
    let cache = BlobCache::open(&dir.join("cache")).unwrap();
    let day = Duration::from_secs(86_400);
    let get = |ttl: Duration| {
        pull(
            &reference,
            &[Target::X86_64Musl],
            &options,
            &cache,
            false,
            ttl,
        )
        .map_err(|e| e.to_string())
    };

    let p = get(day).unwrap();
    assert_eq!(
        (p.digest.as_str(), p.resolution),
        (first.as_str(), Resolution::Registry)
    );
    let p = get(day).unwrap();
    assert_eq!(
        (p.digest.as_str(), p.resolution),
        (first.as_str(), Resolution::Cached)
    );
    assert!(p.resolved_at.is_some());

    // The tag moves in the registry: within the TTL the known digest is used, after it the new.
    let second = image("second");
    assert_eq!(get(day).unwrap().digest.as_str(), first);
    let p = get(Duration::ZERO).unwrap();
    assert_eq!(
        (p.digest.as_str(), p.resolution),
        (second.as_str(), Resolution::Registry)
    );

    // Past the TTL with the registry gone: the cached digest is used and marked stale.
    let host = fake.host();
    drop(fake);
    let p = get(Duration::ZERO).unwrap();
    assert_eq!(
        (p.digest.as_str(), p.resolution),
        (second.as_str(), Resolution::Stale)
    );
    assert!(host.starts_with("127.0.0.1:"));
}
