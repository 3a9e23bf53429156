//! One variant, two platforms: an image index with linux/amd64 and linux/arm64/v8 manifests,
//! built on a multi-platform base.

use std::process::Command;

use galley::oci::layout::Layout;
use galley::oci::{Index, PlatformSpec};

use crate::real_registry::{Auth, RealRegistry};
use crate::support::{
    base_layout, build, chroot_run, copy_fixture, galley, heavy, require, run_ok, scratch,
    skopeo_inspect, unpack, variant,
};

/// A base layout whose tag `multi` is an index: the busybox amd64 image and a small arm64 image.
fn multi_platform_base(dir: &std::path::Path) -> std::path::PathBuf {
    require("umoci");
    let layout_dir = dir.join("base");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(base_layout())
            .arg(&layout_dir),
    );
    let tag = |t: &str| format!("{}:{t}", layout_dir.display());
    run_ok(
        Command::new("umoci")
            .args(["new", "--image"])
            .arg(tag("arm64")),
    );
    let bundle = dir.join("arm64-bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(tag("arm64"))
            .arg(&bundle),
    );
    std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
    std::fs::write(bundle.join("rootfs/etc/os-release"), "ID=arm64-fixture\n").unwrap();
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image"])
            .arg(tag("arm64"))
            .arg(&bundle),
    );
    run_ok(
        Command::new("umoci")
            .args(["config", "--image"])
            .arg(tag("arm64"))
            .args(["--os", "linux", "--architecture", "arm64"]),
    );

    let layout = Layout::open(&layout_dir).unwrap();
    let mut amd64 = layout.resolve("3.20").unwrap();
    let mut arm64 = layout.resolve("arm64").unwrap();
    amd64.annotations.clear();
    arm64.annotations.clear();
    amd64.platform = Some(PlatformSpec {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    });
    arm64.platform = Some(PlatformSpec {
        architecture: "arm64".into(),
        os: "linux".into(),
        variant: Some("v8".into()),
    });
    let mut index = Index::empty();
    index.manifests = vec![amd64, arm64];
    let bytes = galley::oci::json::canonical("index", &index).unwrap();
    let digest = layout.put_blob(&bytes).unwrap();
    let desc = galley::oci::Descriptor::new(galley::oci::MEDIA_INDEX, digest, bytes.len() as u64);
    layout.set_tags(&[("multi".to_string(), desc)]).unwrap();
    layout_dir
}

#[test]
fn two_targets_give_an_image_index_per_variant() {
    let _heavy = heavy();
    let dir = scratch("multi-platform");
    let base = multi_platform_base(&dir);
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let base_arg = format!("oci:{}:multi", base.display());
    let registry = RealRegistry::start(Auth::Anonymous);
    let push = format!("{}/team/multi", registry.host());
    let (o, report) = build(
        &project,
        &out,
        &[
            "--push",
            &push,
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--base",
            &base_arg,
            "--target",
            "x86_64-unknown-linux-musl",
            "--target",
            "aarch64-unknown-linux-musl",
        ],
        &[("DOCKER_CONFIG", dir.join("none").to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = report.unwrap();
    let v = variant(&report, "sqlite");
    assert_eq!(v["media_type"], galley::oci::MEDIA_INDEX);
    let platforms: Vec<&str> = v["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    let arm = &v["platforms"][1];
    assert_eq!(arm["elf"]["machine"], "aarch64");
    // The arm64 binary cannot run here: it was packed and checked by `upx -t` only, and says so.
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cannot run on this host"),
        "{v}"
    );

    let index = skopeo_inspect(&out, "sqlite-1.0.0", true);
    assert_eq!(index["mediaType"], galley::oci::MEDIA_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[1]["platform"],
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    );
    let arm_inspect = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--override-arch", "arm64"])
            .arg(format!("oci:{}:sqlite-1.0.0", out.display())),
    );
    let arm_inspect: serde_json::Value = serde_json::from_slice(&arm_inspect.stdout).unwrap();
    assert_eq!(arm_inspect["Architecture"], "arm64");
    // skopeo reports the digest of what the tag names (the index) and the arm64 image's layers.
    assert_eq!(arm_inspect["Digest"], v["digest"]);
    assert!(
        arm_inspect["Layers"]
            .as_array()
            .unwrap()
            .contains(&arm["layer_digest"]),
        "{arm_inspect}"
    );
    // The index was pushed after its two platform images, each manifest once, then the tag.
    let pushed = &v["push"];
    assert_eq!(
        pushed["references"],
        serde_json::json!([format!(
            "{push}:sqlite-1.0.0@{}",
            v["digest"].as_str().unwrap()
        )])
    );
    assert_eq!(pushed["blobs"]["manifests"], 3, "{pushed}");
    let remote = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{push}:sqlite-1.0.0")),
    );
    assert_eq!(
        galley::oci::Digest::of(&remote.stdout).as_str(),
        v["digest"].as_str().unwrap()
    );
    // The amd64 image of the index runs (umoci 0.4 reads no index: skopeo picks the platform).
    let single = dir.join("amd64");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--override-arch", "amd64"])
            .arg(format!("oci:{}:sqlite-1.0.0", out.display()))
            .arg(format!("oci:{}:amd64", single.display())),
    );
    let bundle = unpack(&single, "amd64", &dir);
    assert_eq!(
        chroot_run(&bundle, &["/app/tiny", "--version"]),
        "tiny 0.1.0 (sqlite)"
    );

    // galley rebase of the index: onto its own base, the same index; onto a base without arm64,
    // refused (exit 2) with nothing written.
    let image = format!("oci:{}:sqlite-1.0.0", out.display());
    let same = run_ok(galley().args([
        "rebase",
        &image,
        "--base",
        &base_arg,
        "--from-base",
        &base_arg,
        "--json",
    ]));
    let same: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(same["to"], v["digest"], "{same}");
    assert_eq!(same["platforms"].as_array().unwrap().len(), 2, "{same}");
    let index_json = std::fs::read(out.join("index.json")).unwrap();
    let single_base = crate::support::base_arg();
    let refused = galley()
        .args([
            "rebase",
            &image,
            "--base",
            &single_base,
            "--from-base",
            &base_arg,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("linux/arm64"), "{stderr}");
    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        index_json,
        "no tag moved"
    );
}
