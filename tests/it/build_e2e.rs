//! A real cargo-zigbuild build of the tiny fixture into an OCI layout, checked by independent
//! tools: skopeo reads the layout, umoci unpacks it, and the binary runs under chroot.

use std::path::Path;

use crate::support::{
    build_ok, chroot_run, copy_fixture, galley, heavy, require, run_ok, scratch, skopeo_inspect,
    unpack, variant,
};

#[test]
fn builds_three_variants_that_skopeo_umoci_and_chroot_accept() {
    let _heavy = heavy();
    let dir = scratch("e2e");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let report = build_ok(
        &project,
        &out,
        &["--variants", "sqlite,postgres,mysql", "--version", "1.4.2"],
        &[],
    );

    assert_eq!(report["succeeded"], true);
    assert_eq!(report["created"], "2023-11-14T22:13:20Z");
    // report.json in the layout is the same report.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["variants"], report["variants"]);

    for (name, backend) in [
        ("sqlite", "sqlite"),
        ("postgres", "postgres"),
        ("mysql", "mysql"),
    ] {
        let v = variant(&report, name);
        let tag = format!("{name}-1.4.2");
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["tags"], serde_json::json!([tag]));
        let p = &v["platforms"][0];
        assert_eq!(p["platform"], "linux/amd64");
        let stages: Vec<&str> = p["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(
            stages,
            ["compile", "verify", "strip", "compress", "layer", "assemble", "attest"]
        );
        let sizes = &p["sizes"];
        for key in [
            "raw",
            "stripped",
            "compressed",
            "layer",
            "layer_tar",
            "image",
        ] {
            assert!(sizes[key].as_u64().unwrap() > 0, "{key} missing: {sizes}");
        }
        assert!(
            sizes["compressed"].as_u64() < sizes["stripped"].as_u64(),
            "{sizes}"
        );
        assert_eq!(p["compression"]["applied"], true, "{p}");
        assert!(
            p["compression"]["checked"]
                .as_str()
                .unwrap()
                .contains("run `--version`"),
            "{p}"
        );

        // skopeo, reading the layout on its own, sees the digest galley reported and our config.
        let inspect = skopeo_inspect(&out, &tag, false);
        assert_eq!(inspect["Digest"], v["digest"]);
        assert_eq!(inspect["Architecture"], "amd64");
        assert_eq!(inspect["Created"], "2023-11-14T22:13:20Z");
        assert_eq!(inspect["Labels"]["org.example.team"], "galley-tests");
        assert!(
            inspect["Env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "TINY_MODE=fixture"),
            "{inspect}"
        );
        let manifest = skopeo_inspect(&out, &tag, true);
        let ann = &manifest["annotations"];
        assert_eq!(ann["org.opencontainers.image.version"], "1.4.2");
        assert_eq!(
            ann["org.opencontainers.image.created"],
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            ann["org.opencontainers.image.base.name"],
            "oci:busybox:3.20"
        );
        assert!(ann["org.opencontainers.image.base.digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);

        // umoci unpacks it; the packed binary runs in the image's own root file system.
        let bundle = unpack(&out, &tag, &dir);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["process"]["args"], serde_json::json!(["/app/tiny"]));
        assert_eq!(config["process"]["cwd"], "/app");
        let meta = std::fs::metadata(bundle.join("rootfs/app/tiny")).unwrap();
        assert_eq!(meta.len(), sizes["compressed"].as_u64().unwrap());
        assert_eq!(
            chroot_run(&bundle, &["/app/tiny", "--version"]),
            format!("tiny 0.1.0 ({backend})")
        );
        // The base image's shell is there too: the binary sits on top of the base.
        assert_eq!(
            chroot_run(&bundle, &["/bin/sh", "-c", "cd /app && ls"]),
            "tiny"
        );
    }
}

#[test]
fn rebuilding_into_the_same_layout_keeps_one_entry_per_tag() {
    let _heavy = heavy();
    let dir = scratch("e2e-rebuild");
    let (project, out, first) = crate::support::tiny_sqlite_built(&dir);
    let second = build_ok(
        &project,
        &out,
        &[
            "--variants",
            "sqlite,mysql",
            "--version",
            "1.0.0",
            "--no-compress",
        ],
        &[],
    );
    assert_eq!(
        variant(&first, "sqlite")["digest"],
        variant(&second, "sqlite")["digest"]
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let tags: Vec<&str> = entries
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(tags, ["mysql-1.0.0", "sqlite-1.0.0"]);
    // Besides the tags: each image's SBOM and provenance, once each (the rebuilt sqlite image
    // is the same image with the same documents).
    let subjects: Vec<&str> = entries
        .iter()
        .filter_map(|m| m["annotations"]["dev.galley.subject"].as_str())
        .collect();
    assert_eq!(subjects.len(), 4, "{index}");
    for name in ["sqlite", "mysql"] {
        let d = variant(&second, name)["digest"].as_str().unwrap();
        assert_eq!(subjects.iter().filter(|s| **s == d).count(), 2, "{index}");
    }
    let p = &variant(&second, "sqlite")["platforms"][0];
    assert_eq!(p["compression"]["applied"], false);
    assert_eq!(p["compression"]["note"], "compression off (--no-compress)");
    assert!(p["sizes"]["compressed"].is_null());
    assert!(variant(&second, "sqlite")["warnings"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn sbom_and_provenance_can_be_turned_off() {
    let _heavy = heavy();
    let dir = scratch("e2e-no-attest");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let config = project.join("galley.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("sbom = false\nprovenance = false\n{text}")).unwrap();
    let out = dir.join("out");
    let report = build_ok(
        &project,
        &out,
        &[
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--no-compress",
        ],
        &[],
    );
    let p = &variant(&report, "sqlite")["platforms"][0];
    assert!(p["referrers"].is_null(), "{p}");
    let stages: Vec<&str> = p["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["compile", "verify", "strip", "compress", "layer", "assemble"]
    );
    let index = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(!index.contains("dev.galley.subject"), "{index}");
    // Asking for the SBOM says why there is none and what to do.
    let asked = galley()
        .args(["sbom"])
        .arg(&out)
        .arg("sqlite-1.0.0")
        .output()
        .unwrap();
    assert_eq!(asked.status.code(), Some(2));
    let err = String::from_utf8_lossy(&asked.stderr);
    assert!(
        err.contains("no SBOM is attached") && err.contains("sbom = false"),
        "{err}"
    );
}

/// `--output oci-archive:FILE` and `docker-archive:FILE`: one file with every tag of the build,
/// read by skopeo with the layout's digests, the same bytes when built again, the binary running
/// from what skopeo copies out of it; a docker-archive of two platforms is refused before
/// anything is built, and no scratch layout is left beside the file.
#[test]
fn archives_hold_the_layouts_images_with_its_digests() {
    let _heavy = heavy();
    require("skopeo");
    let dir = scratch("e2e-archives");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let args = [
        "--variants",
        "sqlite,postgres",
        "--version",
        "1.0.0",
        "--no-compress",
    ];
    let layout = dir.join("out");
    let report = build_ok(&project, &layout, &args, &[]);
    let platform = |r: &serde_json::Value, v: &str| variant(r, v)["platforms"][0].clone();
    let inspect = |reference: &str, flag: Option<&str>| -> serde_json::Value {
        let mut cmd = std::process::Command::new("skopeo");
        cmd.arg("inspect").args(flag).arg(reference);
        serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap()
    };

    let oci = dir.join("images.tar");
    let archived = build_ok(
        &project,
        Path::new(&format!("oci-archive:{}", oci.display())),
        &args,
        &[],
    );
    assert_eq!(
        archived["output"],
        format!("oci-archive:{}", oci.display()),
        "{archived}"
    );
    for v in ["sqlite", "postgres"] {
        let got = inspect(&format!("oci-archive:{}:{v}-1.0.0", oci.display()), None);
        assert_eq!(
            got["Digest"],
            platform(&report, v)["manifest_digest"],
            "{v}"
        );
    }
    let again = dir.join("images-again.tar");
    build_ok(
        &project,
        Path::new(&format!("oci-archive:{}", again.display())),
        &args,
        &[],
    );
    assert!(
        std::fs::read(&oci).unwrap() == std::fs::read(&again).unwrap(),
        "the same build gives the same archive, byte for byte"
    );

    let docker = dir.join("images-docker.tar");
    build_ok(
        &project,
        Path::new(&format!("docker-archive:{}", docker.display())),
        &args,
        &[],
    );
    let reference = format!("docker-archive:{}:tiny:sqlite-1.0.0", docker.display());
    let raw = inspect(&reference, Some("--raw"));
    let sqlite = platform(&report, "sqlite");
    assert_eq!(raw["config"]["digest"], sqlite["config_digest"], "{raw}");
    // skopeo lists a docker-archive's layers by their uncompressed digests: the config's.
    let layout_config = inspect(
        &format!("oci:{}:sqlite-1.0.0", layout.display()),
        Some("--config"),
    );
    let diff_ids = &layout_config["rootfs"]["diff_ids"];
    assert!(
        diff_ids.as_array().is_some_and(|d| d.len() == 2),
        "{layout_config}"
    );
    assert_eq!(&inspect(&reference, None)["Layers"], diff_ids);
    // What skopeo copies out of the docker-archive runs.
    let copied = dir.join("from-docker");
    run_ok(
        std::process::Command::new("skopeo")
            .arg("copy")
            .arg(&reference)
            .arg(format!("oci:{}:sqlite", copied.display())),
    );
    let bundle = unpack(&copied, "sqlite", &dir);
    assert!(chroot_run(&bundle, &["/app/tiny", "--version"]).contains("tiny"));

    // Two platforms in a docker-archive: refused before any compile, nothing written.
    let refused = dir.join("two.tar");
    let (out, _) = crate::support::build(
        &project,
        Path::new(&format!("docker-archive:{}", refused.display())),
        &[
            "--variants",
            "sqlite",
            "--target",
            "x86_64-unknown-linux-musl",
            "--target",
            "aarch64-unknown-linux-musl",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("single-platform"), "{stderr}");
    assert!(
        !stderr.contains("Compiling"),
        "refused before compiling: {stderr}"
    );
    assert!(!refused.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".galley"))
        .collect();
    assert!(
        left.is_empty(),
        "scratch left beside the archives: {left:?}"
    );
}
