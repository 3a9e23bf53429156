//! UPX is optional: missing, refusing or producing a broken binary leaves a warning in the report
//! and a working image with the uncompressed binary. Never silently.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::{build_ok, chroot_run, copy_fixture, heavy, scratch, unpack, variant};

/// A stand-in `upx` for fault injection: answers `--version` and `-t`, and packs as `mode` says.
fn fake_upx(dir: &Path, mode: &str) -> PathBuf {
    let pack = match mode {
        "refuse" => "echo 'upx: tiny: CantPackException: fake refusal' >&2; exit 1",
        // Writes a truncated copy that `-t` accepts but that cannot run.
        "corrupt" => "head -c 4096 \"$in\" > \"$out\"; chmod 755 \"$out\"; exit 0",
        other => panic!("unknown mode {other}"),
    };
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) echo 'upx 9.9.9-fake'; exit 0;; -t) exit 0;; esac\n\
         out=''; in=''\nwhile [ $# -gt 0 ]; do case \"$1\" in -o) out=\"$2\"; shift 2;; -*) shift;; *) in=\"$1\"; shift;; esac; done\n{pack}\n"
    );
    let path = dir.join(format!("upx-{mode}"));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Builds the sqlite variant with extra args; checks the warning and that the image works uncompressed.
fn check_uncompressed_with_warning(
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    warning_says: &[&str],
    prepare: impl FnOnce(&Path),
) {
    let _heavy = heavy();
    let dir = scratch(name);
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    prepare(&project);
    let out = dir.join("out");
    let mut args = vec!["--variants", "sqlite", "--version", "1.0.0"];
    args.extend_from_slice(extra);
    let report = build_ok(&project, &out, &args, env);
    let v = variant(&report, "sqlite");
    assert_eq!(v["status"], "succeeded", "{v}");
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    let w = warnings[0].as_str().unwrap();
    for s in warning_says {
        assert!(w.contains(s), "warning {w:?} lacks {s:?}");
    }
    assert!(w.contains("the image holds the uncompressed binary"), "{w}");
    let p = &v["platforms"][0];
    assert_eq!(p["compression"]["applied"], false);
    assert!(p["sizes"]["compressed"].is_null());
    let bundle = unpack(&out, "sqlite-1.0.0", &dir);
    let size = std::fs::metadata(bundle.join("rootfs/app/tiny"))
        .unwrap()
        .len();
    assert_eq!(size, p["sizes"]["stripped"].as_u64().unwrap());
    assert_eq!(
        chroot_run(&bundle, &["/app/tiny", "--version"]),
        "tiny 0.1.0 (sqlite)"
    );
}

#[test]
fn missing_upx_warns_and_ships_uncompressed() {
    check_uncompressed_with_warning(
        "upx-missing",
        &["--upx", "/nonexistent/upx"],
        &[],
        &["UPX not available", "/nonexistent/upx"],
        |_| {},
    );
}

#[test]
fn upx_from_the_environment_is_honoured() {
    check_uncompressed_with_warning(
        "upx-env",
        &[],
        &[("GALLEY_UPX", "/nonexistent/upx-env")],
        &["/nonexistent/upx-env"],
        |_| {},
    );
}

#[test]
fn refusing_upx_warns_with_its_reason() {
    let dir = scratch("upx-refuse-tool");
    let upx = fake_upx(&dir, "refuse");
    check_uncompressed_with_warning(
        "upx-refuse",
        &["--upx", upx.to_str().unwrap()],
        &[],
        &["UPX refused the binary", "CantPackException: fake refusal"],
        |_| {},
    );
}

#[test]
fn a_packed_binary_that_does_not_run_is_not_shipped() {
    let dir = scratch("upx-corrupt-tool");
    let upx = fake_upx(&dir, "corrupt");
    check_uncompressed_with_warning(
        "upx-corrupt",
        &["--upx", upx.to_str().unwrap()],
        &[],
        &["the packed binary", "when run with `--version`"],
        |_| {},
    );
}

#[test]
fn smoke_args_that_fail_unpacked_keep_the_binary_uncompressed() {
    check_uncompressed_with_warning(
        "upx-smoke-args",
        &[],
        &[],
        &[
            "cannot prove the packed binary works",
            "set image.smoke_args",
        ],
        |project| {
            let cfg = std::fs::read_to_string(project.join("galley.toml")).unwrap();
            std::fs::write(
                project.join("galley.toml"),
                cfg.replace(
                    "smoke_args = [\"--version\"]",
                    "smoke_args = [\"--no-such-flag\"]",
                ),
            )
            .unwrap();
        },
    );
}
