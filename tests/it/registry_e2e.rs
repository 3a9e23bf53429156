//! Pull and push against the real Debian docker-registry (CNCF distribution), anonymous, with
//! htpasswd basic auth and with token auth. The base image is pushed there first (by skopeo), so
//! galley's pull path is real; what galley pushed is checked with skopeo, umoci and chroot.

use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::real_registry::{Auth, RealRegistry};
use crate::support::{
    base_layout, chroot_run, copy_fixture, galley, heavy, require, run_ok, scratch, variant, EPOCH,
};

/// Pushes the busybox base fixture to `host/library/busybox:3.20` with skopeo.
pub fn seed_base(host: &str, creds: Option<&str>) {
    require("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.arg("--dest-creds").arg(c);
    }
    run_ok(
        cmd.arg(format!("oci:{}:3.20", base_layout().display()))
            .arg(format!("docker://{host}/library/busybox:3.20")),
    );
}

/// Runs `galley build --push` of the tiny fixture against `host`.
fn build_push(
    dir: &Path,
    host: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Output, Option<serde_json::Value>) {
    let project = dir.join("tiny");
    if !project.exists() {
        copy_fixture("tiny", &project);
    }
    let mut cmd = galley();
    cmd.arg("build")
        .arg("--project")
        .arg(&project)
        .arg("--output")
        .arg(dir.join("out"));
    cmd.args([
        "--variants",
        "sqlite,postgres",
        "--version",
        "1.4.2",
        "--json",
    ]);
    cmd.arg("--base")
        .arg(format!("{host}/library/busybox:3.20"));
    cmd.arg("--push").arg(format!("{host}/team/tiny"));
    cmd.args(extra)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("GALLEY_CACHE_DIR", dir.join("cache"));
    // No ambient Docker config: each test says where credentials come from.
    cmd.env("DOCKER_CONFIG", dir.join("no-docker-config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).ok();
    (out, report)
}

fn ok(out: &std::process::Output, report: Option<serde_json::Value>) -> serde_json::Value {
    assert!(
        out.status.success(),
        "galley failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    report.expect("a JSON report")
}

fn docker_config(dir: &Path, host: &str, entry: serde_json::Value) -> String {
    let cfg = dir.join("docker-config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.json"),
        serde_json::json!({ "auths": { host: entry } }).to_string(),
    )
    .unwrap();
    cfg.display().to_string()
}

#[test]
fn anonymous_pull_and_push_checked_by_skopeo_umoci_and_chroot() {
    let _heavy = heavy();
    let registry = RealRegistry::start(Auth::Anonymous);
    let host = registry.host();
    seed_base(&host, None);
    let dir = scratch("registry-anon");

    let (out, report) = build_push(&dir, &host, &[], &[]);
    let report = ok(&out, report);
    assert_eq!(
        report["base"]["name"],
        format!("{host}/library/busybox:3.20")
    );
    assert!(
        report["base"]["blobs_downloaded"].as_u64().unwrap() >= 3,
        "manifest, config and layer: {}",
        report["base"]
    );
    let sqlite = variant(&report, "sqlite");
    let push = &sqlite["push"];
    let digest = sqlite["digest"].as_str().unwrap();
    assert_eq!(push["digest"], digest);
    assert_eq!(
        push["references"],
        serde_json::json!([format!("{host}/team/tiny:sqlite-1.4.2@{digest}")])
    );
    // The base layer was mounted from library/busybox, our layer and config uploaded.
    assert_eq!(push["blobs"]["mounted"], 1, "{push}");
    assert_eq!(push["blobs"]["uploaded"], 2, "{push}");
    // The second variant shares the base layer, which is now in team/tiny.
    assert_eq!(variant(&report, "postgres")["push"]["blobs"]["skipped"], 1);

    // An independent client sees what galley reported, and the image runs.
    let inspect = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{host}/team/tiny:sqlite-1.4.2")),
    );
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Digest"], digest);
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/team/tiny:sqlite-1.4.2")),
    );
    assert_eq!(
        galley::oci::Digest::of(&raw.stdout).as_str(),
        digest,
        "the registry stores the exact bytes galley hashed"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.name"],
        format!("{host}/library/busybox:3.20")
    );
    // The SBOM and provenance went along as referrers; this registry (distribution 2.8) has no
    // referrers API, so they are listed under the referrers tag schema, as OCI 1.1 clients expect.
    assert_attached(&host, "team/tiny", "sqlite-1.4.2", digest, sqlite);
    let copied = dir.join("copied");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/team/tiny:postgres-1.4.2"))
            .arg(format!("oci:{}:postgres", copied.display())),
    );
    let bundle = crate::support::unpack(&copied, "postgres", &dir);
    assert_eq!(
        chroot_run(&bundle, &["/app/tiny", "--version"]),
        "tiny 0.1.0 (postgres)"
    );

    // Unchanged rebuild: the base comes from the cache and no blob is uploaded.
    let (out, again) = build_push(&dir, &host, &[], &[]);
    let again = ok(&out, again);
    assert_eq!(
        again["base"]["blobs_downloaded"], 0,
        "a warm build downloads nothing: {}",
        again["base"]
    );
    for name in ["sqlite", "postgres"] {
        let v = variant(&again, name);
        assert_eq!(v["digest"], variant(&report, name)["digest"]);
        let blobs = &v["push"]["blobs"];
        assert_eq!(
            (
                blobs["uploaded"].as_u64(),
                blobs["mounted"].as_u64(),
                blobs["skipped"].as_u64()
            ),
            (Some(0), Some(0), Some(3)),
            "{name}: {blobs}"
        );
    }
    // --refresh-base asks the registry for the tag again (one manifest), layers stay cached.
    let (out, refreshed) = build_push(&dir, &host, &["--refresh-base"], &[]);
    assert_eq!(ok(&out, refreshed)["base"]["blobs_downloaded"], 1);

    // `galley push` of the layout to another repository mounts nothing (no base link) but works.
    let out = run_ok(
        galley()
            .arg("push")
            .arg(dir.join("out"))
            .arg(format!("{host}/team/copy"))
            .arg("--json")
            .env("DOCKER_CONFIG", dir.join("none")),
    );
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pushed.as_array().unwrap().len(), 2);
    let inspect = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{host}/team/copy:sqlite-1.4.2")),
    );
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Digest"], digest);
    assert_attached(&host, "team/copy", "sqlite-1.4.2", digest, sqlite);
}

/// Reads the referrers of `host/repo@digest` with skopeo (the `sha256-<hex>` tag) and checks they
/// are the SBOM and provenance galley reported, each an artifact manifest whose subject is the
/// image.
fn assert_attached(host: &str, repo: &str, tag: &str, digest: &str, variant: &serde_json::Value) {
    let schema_tag = digest.replace(':', "-");
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/{repo}:{schema_tag}")),
    );
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(index["mediaType"], galley::oci::MEDIA_INDEX, "{index}");
    let mut listed: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["artifactType"].as_str().unwrap().to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut reported: Vec<(String, String)> = variant["platforms"][0]["referrers"]
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
    reported.sort();
    assert_eq!(listed, reported, "{index}");
    assert_eq!(listed.len(), 2, "an SBOM and a provenance: {index}");
    // The same through plain HTTP: this registry has no referrers API (404), the schema tag
    // answers, and the image's tag still names the image's own digest: referrers point at the
    // image, adding them changed nothing in it.
    let curl = |path: &str, accept: &str| {
        let out = run_ok(Command::new("curl").args([
            "-s",
            "-H",
            &format!("Accept: {accept}"),
            "-w",
            "\n%{http_code}",
            &format!("http://{host}/v2/{repo}/{path}"),
        ]));
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (body.to_string(), code.to_string())
    };
    let (_, code) = curl(&format!("referrers/{digest}"), galley::oci::MEDIA_INDEX);
    assert_eq!(code, "404", "distribution 2.8 has no referrers API");
    let (body, code) = curl(&format!("manifests/{schema_tag}"), galley::oci::MEDIA_INDEX);
    assert_eq!(code, "200");
    assert_eq!(
        body.as_bytes(),
        &raw.stdout[..],
        "curl and skopeo read one index"
    );
    let (body, code) = curl(&format!("manifests/{tag}"), galley::oci::MEDIA_MANIFEST);
    assert_eq!(code, "200");
    assert_eq!(galley::oci::Digest::of(body.as_bytes()).as_str(), digest);
    for (artifact_type, d) in &listed {
        let m = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{host}/{repo}@{d}")),
        );
        let m: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
        assert_eq!(m["subject"]["digest"], digest, "{m}");
        assert_eq!(&m["artifactType"], artifact_type.as_str(), "{m}");
    }
}

const SENTINEL: &str = "sentinel-Pa55word-7f3a";

fn assert_no_sentinel(out: &std::process::Output, dir: &Path) {
    for (what, text) in [
        ("stdout", String::from_utf8_lossy(&out.stdout)),
        ("stderr", String::from_utf8_lossy(&out.stderr)),
    ] {
        assert!(
            !text.contains(SENTINEL),
            "the password leaked into {what}: {text}"
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("alice:{SENTINEL}"));
        assert!(!text.contains(&b64), "the basic header leaked into {what}");
    }
    if let Ok(report) = std::fs::read_to_string(dir.join("out/report.json")) {
        assert!(
            !report.contains(SENTINEL),
            "the password leaked into report.json"
        );
    }
}

#[test]
fn basic_auth_from_docker_config_and_stdin_never_leaks_the_password() {
    let _heavy = heavy();
    let registry = RealRegistry::start(Auth::Basic {
        user: "alice".into(),
        password: SENTINEL.into(),
    });
    let host = registry.host();
    seed_base(&host, Some(&format!("alice:{SENTINEL}")));
    let dir = scratch("registry-basic");

    // No credentials: a clear error, before anything is built.
    let (out, _) = build_push(&dir, &host, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&host) && err.contains("needs credentials"),
        "{err}"
    );
    assert!(
        !dir.join("out").exists(),
        "nothing may be written when the base cannot be pulled"
    );

    // Wrong password in config.json: the registry's answer, named, and no secret printed.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:wrong-{SENTINEL}"));
    let cfg = docker_config(&dir, &host, serde_json::json!({ "auth": auth }));
    let (out, _) = build_push(&dir, &host, &[], &[("DOCKER_CONFIG", &cfg)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNAUTHORIZED") || err.contains("401"), "{err}");
    assert!(!err.contains(&format!("wrong-{SENTINEL}")), "{err}");

    // Right password in config.json.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{SENTINEL}"));
    let cfg = docker_config(&dir, &host, serde_json::json!({ "auth": auth }));
    let (out, report) = build_push(&dir, &host, &[], &[("DOCKER_CONFIG", &cfg)]);
    assert_no_sentinel(&out, &dir);
    let report = ok(&out, report);
    assert_eq!(variant(&report, "sqlite")["push"]["blobs"]["mounted"], 1);

    // --username with --password-stdin for `galley push`.
    let mut child = galley()
        .arg("push")
        .arg(dir.join("out"))
        .arg(format!("{host}/team/from-stdin"))
        .args(["--username", "alice", "--password-stdin"])
        .env("DOCKER_CONFIG", dir.join("none"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SENTINEL}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_sentinel(&out, &dir);
    assert!(String::from_utf8_lossy(&out.stderr).contains("team/from-stdin:sqlite-1.4.2@sha256:"));

    // A credential helper that is not installed is an error, never a silent anonymous push.
    let helper_cfg = dir.join("helper-config");
    std::fs::create_dir_all(&helper_cfg).unwrap();
    std::fs::write(
        helper_cfg.join("config.json"),
        serde_json::json!({ "credHelpers": { &host: "galley-missing" } }).to_string(),
    )
    .unwrap();
    let (out, _) = build_push(
        &dir,
        &host,
        &[],
        &[("DOCKER_CONFIG", helper_cfg.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("docker-credential-galley-missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A credsStore helper that answers: galley runs `docker-credential-<name> get` with the
    // server on stdin and uses what it prints.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-galleytest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{SENTINEL}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        helper_cfg.join("config.json"),
        r#"{"credsStore": "galleytest"}"#,
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let (out, report) = build_push(
        &dir,
        &host,
        &[],
        &[
            ("DOCKER_CONFIG", helper_cfg.to_str().unwrap()),
            ("PATH", &path),
        ],
    );
    assert_no_sentinel(&out, &dir);
    let report = ok(&out, report);
    assert_eq!(report["succeeded"], true);
}

#[test]
fn token_auth_through_the_registry_challenge() {
    let _heavy = heavy();
    let registry = RealRegistry::start(Auth::Token {
        user: "alice".into(),
        password: SENTINEL.into(),
        expires_in: 300,
    });
    let host = registry.host();
    seed_base(&host, Some(&format!("alice:{SENTINEL}")));
    let before = registry.tokens_issued();
    let dir = scratch("registry-token");
    let cfg = docker_config(
        &dir,
        &host,
        serde_json::json!({ "username": "alice", "password": SENTINEL }),
    );
    let (out, report) = build_push(&dir, &host, &[], &[("DOCKER_CONFIG", &cfg)]);
    assert_no_sentinel(&out, &dir);
    let report = ok(&out, report);
    assert_eq!(
        variant(&report, "sqlite")["push"]["blobs"]["mounted"],
        1,
        "mount needs pull on the source repository in the token scope"
    );
    assert!(registry.tokens_issued() > before);
    let scopes: Vec<String> = registry
        .token_requests()
        .into_iter()
        .filter(|(_, good)| *good)
        .flat_map(|(s, _)| s)
        .collect();
    assert!(
        scopes.iter().any(|s| s == "repository:team/tiny:push,pull"),
        "{scopes:?}"
    );
    assert!(
        scopes
            .iter()
            .any(|s| s == "repository:library/busybox:pull"),
        "{scopes:?}"
    );
    let inspect = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds"])
            .arg(format!("alice:{SENTINEL}"))
            .arg(format!("docker://{host}/team/tiny:sqlite-1.4.2")),
    );
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Digest"], variant(&report, "sqlite")["digest"]);
}

#[test]
fn a_tls_registry_is_reached_with_a_ca_bundle() {
    let _heavy = heavy();
    let (registry, cert) = RealRegistry::start_tls();
    let host = registry.host();
    let dir = scratch("registry-tls");
    // A layout to push: the base fixture itself.
    let push = |extra: &[&str]| {
        galley()
            .arg("push")
            .arg(base_layout())
            .arg(format!("{host}/library/busybox"))
            .args(extra)
            .env("DOCKER_CONFIG", dir.join("none"))
            .env_remove("GALLEY_CA_BUNDLE")
            .output()
            .unwrap()
    };
    // Without the CA, nothing is sent over a connection galley cannot trust.
    let out = push(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&host) && err.to_ascii_lowercase().contains("certificate"),
        "{err}"
    );
    let out = push(&["--ca-bundle", cert.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // skopeo reads CA certificates as *.crt files of a directory.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&cert, certs.join("ca.crt")).unwrap();
    let inspect = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--cert-dir"])
            .arg(&certs)
            .arg(format!("docker://{host}/library/busybox:3.20")),
    );
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("\"Architecture\": \"amd64\""));
}
