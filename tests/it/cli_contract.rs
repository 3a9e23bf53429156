//! The CLI as scripts use it (what a ko or crane user expects): `IMG=$(galley build ...)` gets
//! the image references on stdout, one per variant (`skopeo inspect docker://$IMG` reads it), and `--image-refs FILE` the same; the project
//! as a positional argument; `--platform`; `--push` without a value takes `GALLEY_REPO`; `-q`
//! leaves stderr to errors; `galley push` moves no tag unless every image's content is there.

use std::process::Output;

use serde_json::Value;

use crate::fake_registry::{FakeRegistry, Faults};
use crate::support::{base_arg, copy_fixture, galley, heavy, require, run_ok, scratch, EPOCH};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn build_prints_image_refs_takes_galley_repo_and_push_moves_tags_last() {
    require("cargo-zigbuild");
    require("skopeo");
    let _heavy = heavy();
    let dir = scratch("cli-contract");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let refs_file = dir.join("refs.txt");
    let base = base_arg();
    let build = galley()
        .arg("build")
        .arg(&project)
        .args(["--variants", "sqlite,postgres", "--version", "1.2.3"])
        .args([
            "--platform",
            "linux/amd64",
            "-q",
            "--base",
            &base,
            "--output",
        ])
        .arg(&out)
        .arg("--image-refs")
        .arg(&refs_file)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    ok(&build);
    let stderr = text(&build.stderr);
    assert!(
        !stderr.contains("] compile:") && !stderr.contains("variant"),
        "-q prints no log and no summary: {stderr}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let mut want = Vec::new();
    let mut digests = Vec::new();
    for v in report["variants"].as_array().unwrap() {
        let tag = v["tags"][0].as_str().unwrap();
        want.push(format!("oci:{}:{tag}", out.display()));
        digests.push(v["digest"].as_str().unwrap().to_string());
    }
    assert!(want.len() >= 2, "{report}");
    let stdout = text(&build.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want);
    assert_eq!(std::fs::read_to_string(&refs_file).unwrap(), stdout);
    // Each line is a reference another tool reads as it is, naming the variant's image.
    for (line, digest) in want.iter().zip(&digests) {
        let raw = run_ok(std::process::Command::new("skopeo").args(["inspect", "--raw", line]));
        let d = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw.stdout))
        );
        assert_eq!(&d, digest, "{line}");
    }

    // Bad input: a platform galley does not build, a bare --push without GALLEY_REPO.
    let bad = galley()
        .arg("build")
        .arg(&project)
        .args(["--platform", "linux/s390x", "--output"])
        .arg(dir.join("never"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("linux/amd64 or linux/arm64"),
        "{}",
        text(&bad.stderr)
    );
    let bare = galley()
        .arg("build")
        .arg(&project)
        .args(["--output"])
        .arg(dir.join("never"))
        .arg("--push")
        .env_remove("GALLEY_REPO")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        text(&bare.stderr).contains("GALLEY_REPO"),
        "{}",
        text(&bare.stderr)
    );
    assert!(!dir.join("never").exists(), "nothing written");

    // --push without a value: GALLEY_REPO; stdout holds host/repo@digest, which skopeo reads.
    let fake = FakeRegistry::start(Faults::default());
    let repo = format!("{}/team/tiny", fake.host());
    let pushed = galley()
        .arg("build")
        .arg(&project)
        .args([
            "--variants",
            "sqlite,postgres",
            "--version",
            "1.2.3",
            "--base",
            &base,
        ])
        .arg("--output")
        .arg(dir.join("out-pushed"))
        .arg("--push")
        .env("GALLEY_REPO", &repo)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    ok(&pushed);
    let lines: Vec<String> = text(&pushed.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), want.len(), "{lines:?}");
    for (line, digest) in lines.iter().zip(&digests) {
        assert_eq!(line, &format!("{repo}@{digest}"));
        let inspect = run_ok(std::process::Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{line}"),
        ]));
        let d = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&inspect.stdout))
        );
        assert_eq!(&d, digest, "{line}");
    }

    // galley push: when one image cannot be pushed, no image's tag moves (the one pushed first
    // is not left released). The image whose digest sorts last loses its config blob.
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let mut images: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"]["org.opencontainers.image.ref.name"].is_string())
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    images.sort();
    images.dedup();
    assert!(images.len() >= 2, "{index}");
    let blob = |d: &str| {
        out.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let last: Value =
        serde_json::from_slice(&std::fs::read(blob(images.last().unwrap())).unwrap()).unwrap();
    std::fs::remove_file(blob(last["config"]["digest"].as_str().unwrap())).unwrap();
    let before = fake.requests().len();
    let push = galley()
        .arg("push")
        .arg(&out)
        .arg(format!("{}/team/other", fake.host()))
        .output()
        .unwrap();
    assert_eq!(push.status.code(), Some(1), "{}", text(&push.stderr));
    assert!(
        text(&push.stderr).contains("no tag moved"),
        "{}",
        text(&push.stderr)
    );
    assert!(text(&push.stdout).is_empty(), "no reference printed");
    let tag_puts: Vec<String> = fake.requests()[before..]
        .iter()
        .filter(|r| {
            r.method == "PUT"
                && r.path.contains("/manifests/")
                && !r.path.contains("/manifests/sha256:")
        })
        .map(|r| r.path.clone())
        .collect();
    assert!(tag_puts.is_empty(), "tags moved: {tag_puts:?}");
}

#[test]
fn completions_and_man_pages_come_from_the_commands() {
    let out = galley().args(["completions", "bash"]).output().unwrap();
    ok(&out);
    let script = text(&out.stdout);
    assert!(
        script.contains("_galley()") && script.contains("--image-refs"),
        "{script}"
    );
    let dir = scratch("man-pages");
    let _ = std::fs::remove_dir_all(&dir);
    ok(&galley().arg("man").arg(&dir).output().unwrap());
    let page = std::fs::read_to_string(dir.join("galley-build.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("image\\-refs"), "{page}");
    for name in [
        "galley.1",
        "galley-serve.1",
        "galley-push.1",
        "galley-repro.1",
    ] {
        assert!(dir.join(name).is_file(), "{name}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_outlasts_the_shutdown_it_waits_for() {
    require("systemd-analyze");
    let unit = std::fs::read_to_string(crate::support::repo().join("dist/galley.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("User"), "galley", "a dedicated user");
    assert_eq!(
        value("StateDirectory"),
        "galley",
        "the data dir under /var/lib"
    );
    // galley waits cancel_grace (10 s by default) plus 10 s for its builds, then drains.
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    let grace = galley::cancel::DEFAULT_GRACE.as_secs();
    assert!(stop > grace + 10, "TimeoutStopSec={stop}");
    // As installed, but with this build's binary and a user this machine has, and the man page
    // its Documentation= names where man finds it.
    let dir = scratch("systemd-unit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let me = text(
        &std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let local = unit
        .replace("/usr/local/bin/galley", env!("CARGO_BIN_EXE_galley"))
        .replace("User=galley", &format!("User={me}"))
        .replace("Group=galley", "Group=");
    std::fs::write(dir.join("galley.service"), local).unwrap();
    ok(&galley()
        .arg("man")
        .arg(dir.join("man/man1"))
        .output()
        .unwrap());
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("galley.service"))
        .env("MANPATH", dir.join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
