//! Registry faults, injected by the in-process fake registry: each is survived or reported
//! clearly, and no tag ever points at an incomplete image.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use galley::oci::image::{derive_config, manifest, AddedLayer, ImageSettings};
use galley::oci::layer::{write_layer, Entry};
use galley::oci::layout::Layout;
use galley::oci::{
    Descriptor, Digest, PlatformSpec, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST,
};
use galley::registry::push::{PushStats, Pusher};
use galley::registry::{Credential, Reference, RegistryOptions, RetryPolicy, Secret};

use crate::fake_registry::{FakeRegistry, Faults};
use crate::support::scratch;

/// A two-layer image in a fresh layout: a "base" layer and an "app" layer. Returns the layout,
/// the manifest descriptor and the base layer's bytes.
fn image(name: &str) -> (Layout, Descriptor, Vec<u8>) {
    let dir = scratch(name);
    let layout = Layout::create(&dir.join("out")).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, content) in [
        b"base layer contents".repeat(5000),
        b"app binary".repeat(9000),
    ]
    .iter()
    .enumerate()
    {
        let src = dir.join(format!("file{i}"));
        std::fs::write(&src, content).unwrap();
        let blob = write_layer(
            &[Entry::file(&format!("layer{i}/file"), 0o644, &src)],
            1_700_000_000,
            &layout.blob_dir(),
        )
        .unwrap();
        layers.push(Descriptor::new(
            MEDIA_LAYER_GZIP,
            blob.digest.clone(),
            blob.size,
        ));
        diff_ids.push(blob.diff_id.to_string());
    }
    let base_config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_ids[0]]}}).to_string();
    let diff = Digest::try_from(diff_ids[1].clone()).unwrap();
    let platform = PlatformSpec {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    };
    let settings = ImageSettings {
        workdir: "/app".into(),
        entrypoint: vec!["/app/x".into()],
        ..Default::default()
    };
    let config = derive_config(
        base_config.as_bytes(),
        1,
        &platform,
        &settings,
        &AddedLayer {
            diff_id: &diff,
            created_by: "x".into(),
        },
        "2023-11-14T22:13:20Z",
    )
    .unwrap();
    let config_digest = layout.put_blob(&config).unwrap();
    let (_, bytes) = manifest(
        Descriptor::new(MEDIA_CONFIG, config_digest, config.len() as u64),
        layers.clone(),
        Default::default(),
    )
    .unwrap();
    let digest = layout.put_blob(&bytes).unwrap();
    let base_bytes = std::fs::read(layout.blob_path(&layers[0].digest)).unwrap();
    (
        layout,
        Descriptor::new(MEDIA_MANIFEST, digest, bytes.len() as u64),
        base_bytes,
    )
}

fn fast_retries() -> RegistryOptions {
    RegistryOptions {
        retry: RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(5),
        },
        ..Default::default()
    }
}

/// Pushes the image and the tag `v1`; returns the stats or the error text.
fn push(
    fake: &FakeRegistry,
    options: &RegistryOptions,
    layout: &Layout,
    desc: &Descriptor,
    mount: Option<(&str, Digest)>,
) -> Result<PushStats, String> {
    let target = Reference::parse(&format!("{}/team/app", fake.host())).unwrap();
    let source = mount
        .as_ref()
        .map(|(repo, _)| Reference::parse(&format!("{}/{repo}", fake.host())).unwrap());
    let mount = source
        .as_ref()
        .zip(mount.as_ref())
        .map(|(r, (_, d))| (r, HashSet::from([d.clone()])));
    let pusher = Pusher::new(&target, options, mount).map_err(|e| e.to_string())?;
    let mut stats = PushStats::default();
    pusher
        .push_content(layout, desc, &mut stats)
        .map_err(|e| e.to_string())?;
    pusher
        .push_tags(layout, desc, &["v1".to_string()])
        .map_err(|e| e.to_string())?;
    Ok(stats)
}

/// The pushed image is complete: the tag holds the exact manifest bytes, every blob is linked.
fn assert_complete(fake: &FakeRegistry, layout: &Layout, desc: &Descriptor) {
    let (media_type, bytes) = fake.manifest("team/app", "v1").expect("tag v1 pushed");
    assert_eq!(media_type, MEDIA_MANIFEST);
    assert_eq!(Digest::of(&bytes), desc.digest);
    let m: galley::oci::Manifest = serde_json::from_slice(&bytes).unwrap();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        assert!(
            fake.repo_has_blob("team/app", d.digest.as_str()),
            "{} missing",
            d.digest
        );
        assert_eq!(
            fake.blob(d.digest.as_str()).unwrap(),
            std::fs::read(layout.blob_path(&d.digest)).unwrap()
        );
    }
}

#[test]
fn mounts_from_the_base_repository_and_skips_on_a_second_push() {
    let fake = FakeRegistry::start(Faults::default());
    let (layout, desc, base) = image("faults-mount");
    let base_digest = Digest::try_from(fake.put_blob("library/base", &base)).unwrap();
    let stats = push(
        &fake,
        &fast_retries(),
        &layout,
        &desc,
        Some(("library/base", base_digest.clone())),
    )
    .unwrap();
    assert_eq!((stats.mounted, stats.uploaded, stats.skipped), (1, 2, 0));
    assert_complete(&fake, &layout, &desc);
    let again = push(
        &fake,
        &fast_retries(),
        &layout,
        &desc,
        Some(("library/base", base_digest)),
    )
    .unwrap();
    assert_eq!((again.mounted, again.uploaded, again.skipped), (0, 0, 3));
}

#[test]
fn an_expired_token_is_refreshed_mid_push_and_never_leaks() {
    let password = "sentinel-token-pw-91c2";
    let fake = FakeRegistry::start(Faults {
        bearer: true,
        token_valid_for_requests: Some(3),
        basic_auth: Some(("alice".into(), password.into())),
        ..Default::default()
    });
    let (layout, desc, _) = image("faults-token");
    let mut options = fast_retries();
    options.credential = Some(Credential::Basic {
        username: "alice".into(),
        password: Secret::new(password),
    });
    push(&fake, &options, &layout, &desc, None).unwrap();
    assert_complete(&fake, &layout, &desc);
    assert!(
        fake.tokens_issued() >= 3,
        "tokens issued: {}",
        fake.tokens_issued()
    );
    for r in fake.requests() {
        if r.path.starts_with("/v2/") {
            // Registry requests carry only the token; the password goes to the token endpoint.
            assert!(
                r.authorization
                    .as_deref()
                    .is_none_or(|a| a.starts_with("Bearer ")),
                "{r:?}"
            );
        }
    }
    // With a wrong password the error names the registry and says what to do, without the secret.
    options.credential = Some(Credential::Basic {
        username: "alice".into(),
        password: Secret::new("wrong-sentinel-55"),
    });
    let err = push(&fake, &options, &layout, &desc, None).unwrap_err();
    assert!(
        err.contains(&fake.host()) && err.contains("check the credentials"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-sentinel-55") && !err.contains(password),
        "{err}"
    );
}

/// A fault the push survives: the registry's misbehaviour, and what the request log must show.
struct Survived {
    name: &'static str,
    faults: Faults,
    /// Offer the base layer for a mount from `library/base`.
    mount: bool,
    check: fn(&FakeRegistry, &PushStats, Duration),
}

/// Every fault a push must survive, one table: each push completes (every blob there, the
/// manifest's bytes, tag `v1`) and the log shows the fault was met the way it should be.
#[test]
fn pushes_survive_registry_faults() {
    let cases = [
        Survived {
            name: "a 202 answer to a mount uploads into that session",
            faults: Faults {
                mount_returns_202: true,
                ..Default::default()
            },
            mount: true,
            check: |fake, stats, _| {
                assert_eq!((stats.mounted, stats.uploaded), (0, 3));
                let log = fake.requests();
                let mount = log
                    .iter()
                    .position(|r| r.method == "POST" && r.query.contains("mount="))
                    .expect("a mount was tried");
                assert_eq!(log[mount].status, 202);
                // The next request is the PUT into the session the 202 opened, not a new POST.
                assert_eq!(log[mount + 1].method, "PUT", "{:?}", &log[mount..]);
                assert_eq!(log[mount + 1].status, 201);
            },
        },
        Survived {
            name: "relative locations are resolved and their query kept",
            faults: Faults {
                relative_location: true,
                ..Default::default()
            },
            mount: false,
            check: |fake, _, _| {
                let puts: Vec<_> = fake
                    .requests()
                    .into_iter()
                    .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
                    .collect();
                assert_eq!(puts.len(), 3);
                for p in puts {
                    assert!(
                        p.query.contains("_state=") && p.query.contains("digest=sha256"),
                        "{p:?}"
                    );
                    assert_eq!(p.status, 201);
                }
            },
        },
        Survived {
            name: "a 429 waits for Retry-After in seconds",
            faults: Faults {
                rate_limit_first_upload_post: true,
                ..Default::default()
            },
            mount: false,
            check: |fake, _, took| assert_waited_after_a_429(fake, took),
        },
        Survived {
            name: "a 429 waits for Retry-After as an HTTP date",
            faults: Faults {
                rate_limit_first_upload_post_until_date: true,
                ..Default::default()
            },
            mount: false,
            check: |fake, _, took| assert_waited_after_a_429(fake, took),
        },
        Survived {
            name: "a 500 then success is survived",
            faults: Faults {
                fail_first_blob_put: true,
                ..Default::default()
            },
            mount: false,
            check: |fake, _, _| {
                let puts: Vec<u16> = fake
                    .requests()
                    .iter()
                    .filter(|r| r.method == "PUT" && r.path.contains("/uploads/"))
                    .map(|r| r.status)
                    .collect();
                assert_eq!(puts[0], 500);
                assert!(puts[1..].iter().all(|s| *s == 201), "{puts:?}");
            },
        },
        Survived {
            name: "a connection reset mid upload restarts the upload from its POST",
            faults: Faults {
                reset_first_blob_put: true,
                ..Default::default()
            },
            mount: false,
            check: |fake, _, _| {
                let log = fake.requests();
                let reset = log
                    .iter()
                    .position(|r| r.method == "PUT" && r.status == 0)
                    .expect("the reset happened");
                assert_eq!(
                    (log[reset + 1].method.as_str(), log[reset + 1].status),
                    ("POST", 202),
                    "{:?}",
                    &log[reset..]
                );
            },
        },
    ];
    for case in cases {
        // Printed first, so a failing check says which case it was.
        eprintln!("case: {}", case.name);
        let fake = FakeRegistry::start(case.faults);
        let (layout, desc, base) = image(&format!("faults-{}", case.name.replace(' ', "-")));
        let mount = case.mount.then(|| {
            let d = Digest::try_from(fake.put_blob("library/base", &base)).unwrap();
            ("library/base", d)
        });
        let started = Instant::now();
        let stats = push(&fake, &fast_retries(), &layout, &desc, mount)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let took = started.elapsed();
        assert_complete(&fake, &layout, &desc);
        (case.check)(&fake, &stats, took);
    }
}

/// The first upload POST met a 429, the push waited at least the second it was asked to, and
/// the next POST went through.
fn assert_waited_after_a_429(fake: &FakeRegistry, took: Duration) {
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After was not honoured ({took:?})"
    );
    let statuses: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses[..2], [429, 202], "{statuses:?}");
}

#[test]
fn a_refused_manifest_fails_clearly_and_moves_no_tag() {
    let fake = FakeRegistry::start(Faults {
        refuse_manifest_put: true,
        ..Default::default()
    });
    let (layout, desc, _) = image("faults-manifest");
    let err = push(&fake, &fast_retries(), &layout, &desc, None).unwrap_err();
    assert!(err.contains(&format!("{}/team/app", fake.host())), "{err}");
    assert!(
        err.contains("put manifest")
            && err.contains("HTTP 400")
            && err.contains("MANIFEST_INVALID"),
        "{err}"
    );
    assert!(
        fake.tags("team/app").is_empty(),
        "a tag moved to an image whose manifest was refused"
    );
    // One manifest PUT only: a 400 is not retried.
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
            .count(),
        1
    );
}

/// Pushes on a thread with a cancel handle, cancels once the registry has seen `trigger`
/// requests matching `is_trigger`, and returns the push's error and how long it took to stop.
fn push_then_cancel(
    fake: &FakeRegistry,
    name: &str,
    is_trigger: impl Fn(&crate::fake_registry::RequestLog) -> bool,
) -> (String, Duration) {
    let (layout, desc, _) = image(name);
    let cancel = galley::cancel::Cancel::new(name, Duration::from_secs(5));
    let mut options = fast_retries();
    options.retry.max_retry_after = Duration::from_secs(600);
    options.cancel = cancel.clone();
    let target = Reference::parse(&format!("{}/team/app", fake.host())).unwrap();
    let pusher = Pusher::new(&target, &options, None).unwrap();
    let worker = std::thread::spawn(move || {
        let mut stats = PushStats::default();
        pusher
            .push_content(&layout, &desc, &mut stats)
            .map_err(|e| e.to_string())
    });
    let started = Instant::now();
    while !fake.requests().iter().any(&is_trigger) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never triggered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the client settle into its wait.
    std::thread::sleep(Duration::from_millis(300));
    let cancelled_at = Instant::now();
    cancel.cancel("test cancel");
    let err = worker.join().unwrap().unwrap_err();
    (err, cancelled_at.elapsed())
}

#[test]
fn a_cancel_ends_a_retry_after_wait_at_once() {
    let fake = FakeRegistry::start(Faults {
        rate_limit_upload_posts: Some(120),
        ..Default::default()
    });
    let (err, took) = push_then_cancel(&fake, "faults-cancel-429", |r| r.status == 429);
    assert!(err.contains("test cancel"), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "the wait went on for {took:?}"
    );
}

#[test]
fn a_cancel_stops_a_push_to_a_registry_that_stopped_answering() {
    let fake = FakeRegistry::start(Faults {
        stall_blob_puts: true,
        ..Default::default()
    });
    // The stalled PUT is logged only once answered: trigger on the POST that precedes it.
    let (err, took) = push_then_cancel(&fake, "faults-cancel-stall", |r| {
        r.method == "POST" && r.status == 202
    });
    assert!(err.contains("test cancel"), "{err}");
    assert!(
        took < Duration::from_secs(2),
        "the push went on for {took:?}"
    );
}
