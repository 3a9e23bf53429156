//! `galley rebase`: the tiny fixture built on base A, moved onto base B (a second busybox base
//! with a layer and an environment variable of its own), without compiling. skopeo shows B's
//! layers under galley's unchanged layer, umoci unpacks it and the binary runs under chroot, the
//! SBOM's and provenance's subject is the new digest, and moving it back to A gives the original
//! digest. Bad input: exit 2, a reason, nothing written.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

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
            vec![
                "docker.io/library/alpine:3.20".into(),
                "--base".into(),
                b.clone(),
            ],
            "oci:DIR:TAG",
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
