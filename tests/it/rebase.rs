//! `galley rebase`: the tiny fixture built on base A, moved onto base B (a second busybox base
//! with a layer and an environment variable of its own), without compiling. skopeo shows B's
//! layers under galley's unchanged layer, umoci unpacks it and the binary runs under chroot, the
//! SBOM's and provenance's subject is the new digest, and moving it back to A gives the original
//! digest. Bad input: exit 2, a reason, nothing written.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::real_registry::{Auth, RealRegistry};
use crate::service::Service;
use crate::support::{
    base_arg, base_layout, chroot_run, galley, heavy, repo, require, run_ok, scratch,
    skopeo_inspect, tiny_sqlite_built, unpack,
};

/// Base B: busybox again, plus a layer with /etc/base-b and `BASE=b` in its environment.
fn base_b(dir: &Path) -> String {
    require("umoci");
    let b = dir.join("bases/b");
    run_ok(
        Command::new("bash")
            .arg(repo().join("fixtures/base/make-base.sh"))
            .arg(&b)
            .arg("3.21"),
    );
    let script = r#"set -e
b=$1; work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
umoci unpack --image "$b:3.21" "$work/bundle" >/dev/null
echo b > "$work/bundle/rootfs/etc/base-b"
umoci repack --image "$b:3.21" "$work/bundle" >/dev/null
umoci config --image "$b:3.21" --config.env BASE=b >/dev/null
umoci gc --layout "$b""#;
    run_ok(Command::new("bash").arg("-c").arg(script).arg("-").arg(&b));
    format!("oci:{}:3.21", b.display())
}

/// The tiny fixture in `dir/tiny`, an anonymous registry with base A at
/// `HOST/library/busybox:3.20`, and base B as a layout: (project, registry, host, B).
fn tiny_on_a_registry(dir: &Path) -> (std::path::PathBuf, RealRegistry, String, String) {
    let project = dir.join("tiny");
    crate::support::copy_fixture("tiny", &project);
    let registry = RealRegistry::start(Auth::Anonymous);
    let host = registry.host();
    crate::registry_e2e::seed_base(&host, None);
    (project, registry, host, base_b(dir))
}

fn rebase(args: &[&str]) -> std::process::Output {
    galley().arg("rebase").args(args).output().unwrap()
}

fn rebase_ok(args: &[&str]) -> Value {
    let out = rebase(&[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "galley rebase {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rebase_swaps_the_base_keeps_galleys_layer_and_comes_back_to_the_same_digest() {
    let _heavy = heavy();
    require("skopeo");
    let dir = scratch("rebase");
    let (_, out, _) = tiny_sqlite_built(&dir);
    let tag = "sqlite-1.0.0";
    let image = format!("oci:{}:{tag}", out.display());
    let before = skopeo_inspect(&out, tag, false);
    let raw_before = skopeo_inspect(&out, tag, true);
    let galley_layer = raw_before["layers"].as_array().unwrap().last().unwrap()["digest"].clone();
    let (a, b) = (base_arg(), base_b(&dir));

    let moved = rebase_ok(&[&image, "--base", &b, "--from-base", &a]);
    let after = skopeo_inspect(&out, tag, false);
    assert_eq!(after["Digest"], moved["to"], "{moved}");
    assert_ne!(after["Digest"], before["Digest"]);
    // B's two layers, then galley's, unchanged.
    let b_layers = skopeo_inspect(&dir.join("bases/b"), "3.21", false)["Layers"].clone();
    let layers = after["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{after}");
    assert_eq!(&layers[..2], b_layers.as_array().unwrap().as_slice());
    assert_eq!(layers[2], galley_layer);
    let raw = skopeo_inspect(&out, tag, true);
    let b_digest = skopeo_inspect(&dir.join("bases/b"), "3.21", false)["Digest"].clone();
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.digest"],
        b_digest
    );
    // galley's settings on B's: B's BASE=b beside the fixture's TINY_MODE.
    let env = after["Env"].as_array().unwrap();
    assert!(
        env.contains(&Value::from("BASE=b")) && env.contains(&Value::from("TINY_MODE=fixture")),
        "{after}"
    );
    // It runs, with B's file.
    let bundle = unpack(&out, tag, &dir);
    assert!(chroot_run(&bundle, &["/app/tiny", "--version"]).contains("tiny"));
    assert_eq!(chroot_run(&bundle, &["/bin/cat", "/etc/base-b"]), "b");
    // The SBOM and provenance are about the new image; the provenance says what it came from.
    let new_hex = after["Digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let sbom = run_ok(galley().arg("sbom").arg(&image)).stdout;
    let sbom: Value = serde_json::from_slice(&sbom).unwrap();
    assert!(
        sbom["documentNamespace"]
            .as_str()
            .unwrap()
            .contains(&new_hex),
        "{sbom}"
    );
    let prov = run_ok(galley().args(["sbom", "--provenance"]).arg(&image)).stdout;
    let prov: Value = serde_json::from_slice(&prov).unwrap();
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        Value::from(new_hex.clone())
    );
    assert_eq!(
        prov["predicate"]["buildDefinition"]["internalParameters"]["rebasedFrom"]["image"],
        before["Digest"]
    );

    // Onto B again: the same image.
    let again = rebase_ok(&[&image, "--base", &b, "--from-base", &b]);
    assert_eq!(again["to"], moved["to"]);
    // Back onto A: the original digest.
    let back = rebase_ok(&[&image, "--base", &a, "--from-base", &b]);
    assert_eq!(back["to"], before["Digest"], "{back}");
    assert_eq!(skopeo_inspect(&out, tag, false)["Digest"], before["Digest"]);

    // Bad input: exit 2 with a reason, nothing written.
    let index = std::fs::read(out.join("index.json")).unwrap();
    let base_index = std::fs::read(base_layout().join("index.json")).unwrap();
    for (args, says) in [
        (
            vec![a.clone(), "--base".into(), b.clone()],
            "not built by galley",
        ),
        (
            vec![
                format!("oci:{}:nope", out.display()),
                "--base".into(),
                b.clone(),
            ],
            "nope",
        ),
        (
            vec![image.clone(), "--base".into(), b.clone()],
            "--from-base",
        ),
        (
            vec![
                image.clone(),
                "--base".into(),
                b.clone(),
                "--from-base".into(),
                b.clone(),
            ],
            "was built on",
        ),
        (
            // A repository without a tag names no image.
            vec!["127.0.0.1:1/team/x".into(), "--base".into(), b.clone()],
            "host/repo:tag",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = rebase(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        index,
        "no tag moved"
    );
    assert_eq!(
        std::fs::read(base_layout().join("index.json")).unwrap(),
        base_index
    );
}

/// `POST /api/v1/builds/{id}/rebase` on a real `galley serve`: a build on base A, then the
/// project's base changed to B (the service restarted with it): the rebase is a build of its
/// own that compiles nothing, whose layout holds B's layers under the same galley layer.
#[test]
fn a_service_rebase_moves_a_builds_images_onto_the_projects_base_as_it_is_now() {
    let _heavy = heavy();
    require("skopeo");
    let dir = scratch("rebase-serve");
    let project = dir.join("tiny");
    crate::support::copy_fixture("tiny", &project);
    let (a, b) = (base_arg(), base_b(&dir));
    let registry = RealRegistry::start(Auth::Anonymous);
    let repo = format!("{}/team/tiny", registry.host());
    let config = |base: &str| {
        format!(
            "[projects.tiny]\npath = \"{}\"\nbase = \"{base}\"\npush = \"{repo}\"\n",
            project.display()
        )
    };
    let svc_dir = dir.join("svc");
    let mut svc = Service::start(&svc_dir, &config(&a), None, &[]);
    let id =
        svc.submit(serde_json::json!({"variants": ["sqlite"], "version": "1.0.0", "push": true}));
    let built = svc.wait_final(id, Duration::from_secs(600));
    assert_eq!(built["status"], "succeeded", "{built}");
    svc.terminate();
    let svc = Service::start(&svc_dir, &config(&b), None, &[]);
    let (status, _, accepted) = svc.post(&format!("/api/v1/builds/{id}/rebase"), None, &[]);
    assert_eq!(status, 202, "{accepted}");
    let rid = accepted["id"].as_i64().unwrap();
    let rebased = svc.wait_final(rid, Duration::from_secs(120));
    assert_eq!(rebased["status"], "succeeded", "{rebased}");
    let (before, after) = (
        built["variants"][0]["digest"].clone(),
        rebased["variants"][0]["digest"].clone(),
    );
    assert!(after.is_string() && after != before, "{before} -> {after}");
    let out = svc_dir
        .join("data/builds")
        .join(rid.to_string())
        .join("out");
    let inspect = skopeo_inspect(&out, "sqlite-1.0.0", false);
    assert_eq!(inspect["Digest"], after);
    let layers = inspect["Layers"].as_array().unwrap();
    let old = skopeo_inspect(
        &svc_dir.join("data/builds").join(id.to_string()).join("out"),
        "sqlite-1.0.0",
        false,
    );
    assert_eq!(layers.len(), 3, "{inspect}");
    assert_eq!(layers.last(), old["Layers"].as_array().unwrap().last());
    // Pushed again, the tag moved to the rebased image.
    let remote = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{repo}:sqlite-1.0.0")),
    );
    let remote: Value = serde_json::from_slice(&remote.stdout).unwrap();
    assert_eq!(remote["Digest"], after, "{remote}");
    assert_eq!(
        rebased["variants"][0]["references"][0],
        Value::from(format!("{repo}:sqlite-1.0.0@{}", after.as_str().unwrap())),
        "{rebased}"
    );
    let (_, log) = svc.text(&format!("/api/v1/builds/{rid}/log"));
    assert!(log.contains("without compiling"), "{log}");
    assert!(!log.contains("Compiling"), "{log}");
    // Nothing to rebase: 404 for no build, 409 for a build that is not finished with images.
    let (status, _, _) = svc.post("/api/v1/builds/999/rebase", None, &[]);
    assert_eq!(status, 404);
}

/// `watch_base`: a build on `HOST/library/busybox:3.20` pushed to the registry; the test moves
/// that tag to base B; within a few watch periods the service has rebased the build (started by
/// the base watch, once) and pushed it: the registry's tag is the rebased image.
#[test]
fn a_base_watch_rebases_and_pushes_once_when_the_base_tag_moves() {
    let _heavy = heavy();
    require("skopeo");
    let dir = scratch("rebase-watch");
    // The registry lives as long as the test.
    let (project, _registry, host, b) = tiny_on_a_registry(&dir);
    let repo = format!("{host}/team/tiny");
    let svc = Service::start(
        &dir.join("svc"),
        &format!(
            "[projects.tiny]\npath = \"{}\"\nbase = \"{host}/library/busybox:3.20\"\npush = \"{repo}\"\nwatch_base = \"1s\"\n",
            project.display()
        ),
        None,
        &[],
    );
    let id =
        svc.submit(serde_json::json!({"variants": ["sqlite"], "version": "1.0.0", "push": true}));
    let built = svc.wait_final(id, Duration::from_secs(600));
    assert_eq!(built["status"], "succeeded", "{built}");
    let rebases = || -> Vec<Value> {
        let (_, list) = svc.get("/api/v1/builds?limit=50");
        list["builds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["inputs"]["rebase_of"] == id)
            .cloned()
            .collect()
    };
    // While the tag stays where it is, nothing is queued.
    std::thread::sleep(Duration::from_secs(3));
    assert!(rebases().is_empty(), "{:?}", rebases());
    // The base tag moves.
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(&b)
            .arg(format!("docker://{host}/library/busybox:3.20")),
    );
    let started = std::time::Instant::now();
    let rid = loop {
        if let Some(r) = rebases().first() {
            break r["id"].as_i64().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no rebase was queued"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let rebased = svc.wait_final(rid, Duration::from_secs(120));
    assert_eq!(rebased["status"], "succeeded", "{rebased}");
    assert_eq!(rebased["started_by"], "base-watch", "{rebased}");
    let after = rebased["variants"][0]["digest"].clone();
    assert_ne!(after, built["variants"][0]["digest"]);
    let remote = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{repo}:sqlite-1.0.0")),
    );
    let remote: Value = serde_json::from_slice(&remote.stdout).unwrap();
    assert_eq!(remote["Digest"], after, "{remote}");
    // Once: the rebased build is now the latest, on the base as it is.
    std::thread::sleep(Duration::from_secs(3));
    let (_, list) = svc.get("/api/v1/builds?limit=50");
    assert_eq!(list["builds"].as_array().unwrap().len(), 2, "{list}");
}

/// `galley rebase host/repo:tag`: an image galley pushed, rebased in place: pulled with its
/// SBOM and provenance, moved onto base B (in the same registry), pushed back with its tag.
#[test]
fn rebase_of_a_registry_image_pushes_it_back_with_its_documents() {
    let _heavy = heavy();
    require("skopeo");
    let dir = scratch("rebase-registry");
    // The registry lives as long as the test.
    let (project, _registry, host, b) = tiny_on_a_registry(&dir);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(&b)
            .arg(format!("docker://{host}/library/busybox-b:3.21")),
    );
    let repo = format!("{host}/team/tiny");
    let base_a = format!("{host}/library/busybox:3.20");
    let (out, report) = crate::support::build(
        &project,
        &dir.join("out"),
        &[
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--no-compress",
            "--base",
            &base_a,
            "--push",
            &repo,
        ],
        &[("DOCKER_CONFIG", "/nonexistent-galley-rebase")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = report.unwrap()["variants"][0]["digest"].clone();
    let image = format!("{repo}:sqlite-1.0.0");
    let moved = galley()
        .args([
            "rebase",
            &image,
            "--base",
            &format!("{host}/library/busybox-b:3.21"),
            "--json",
        ])
        .env("DOCKER_CONFIG", "/nonexistent-galley-rebase")
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let moved: Value = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!(moved["from"], before);
    let inspect = |reference: &str, raw: bool| -> Value {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false"]);
        if raw {
            cmd.arg("--raw");
        }
        serde_json::from_slice(&run_ok(cmd.arg(format!("docker://{reference}"))).stdout).unwrap()
    };
    let remote = inspect(&image, false);
    assert_eq!(remote["Digest"], moved["to"], "{remote}");
    assert_eq!(remote["Layers"].as_array().unwrap().len(), 3, "{remote}");
    // The documents followed: the referrers tag of the new digest lists the SBOM and provenance.
    let hex = moved["to"].as_str().unwrap().trim_start_matches("sha256:");
    let referrers = inspect(&format!("{repo}:sha256-{hex}"), true);
    let kinds: Vec<&str> = referrers["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{referrers}");
    assert!(kinds.contains(&"application/spdx+json"), "{referrers}");
}
