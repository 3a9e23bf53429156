//! A real cargo-zigbuild build of the tiny fixture into an OCI layout, checked by independent
//! tools: skopeo reads the layout, umoci unpacks it, and the binary runs under chroot.

use crate::support::{
    build_ok, chroot_run, copy_fixture, galley, heavy, scratch, skopeo_inspect, unpack, variant,
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
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let first = build_ok(
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
