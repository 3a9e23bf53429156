//! Projects shaped like real ones: a virtual workspace with one binary per backend, the project's
//! own rustflags, files shipped next to the binary; a base whose config holds a tab and a
//! newline; and a published crate from the crate registry that compiles C code through cc.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::{
    base_layout, build, build_ok, chroot_run, copy_fixture, heavy, require, run_ok, scratch,
    skopeo_inspect, unpack, variant,
};

fn config_of(layout: &Path, tag: &str) -> serde_json::Value {
    let out = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:{tag}", layout.display())),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_workspace_member_builds_one_binary_per_backend_with_the_projects_flags_and_files() {
    let _heavy = heavy();
    let dir = scratch("projects-workspace");
    let project = dir.join("workspace");
    copy_fixture("workspace", &project);
    let out = dir.join("out");
    // No --version: it comes from the workspace (`version.workspace = true`).
    let report = build_ok(
        &project,
        &out,
        &["--variants", "sqlite,postgres", "--no-compress"],
        &[("RUSTFLAGS", "--cfg galley_env_flag")],
    );
    assert_eq!(report["version"], "2.1.0");
    for (name, binary, backend) in [
        ("sqlite", "sso_sqlite", "sqlite"),
        ("postgres", "sso_psql", "psql"),
    ] {
        let tag = format!("{name}-2.1.0");
        assert_eq!(variant(&report, name)["tags"], serde_json::json!([tag]));
        let bundle = unpack(&out, &tag, &dir);
        let rootfs = bundle.join("rootfs");
        // The binary lives in the working directory; both rustflags reached rustc.
        let said = chroot_run(&bundle, &[&format!("/srv/{binary}"), "--version"]);
        assert_eq!(
            said,
            format!("{binary} 2.1.0 backend={backend} config_flag=yes env_flag=yes")
        );
        let config = config_of(&out, &tag);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([format!("/srv/{binary}")])
        );
        assert_eq!(config["config"]["WorkingDir"], "/srv");
        // The files, with their content and modes.
        for (path, src, mode) in [
            ("etc/sso/sso.toml", "config/sso.toml", 0o644),
            (
                "srv/migrations/001_init.sql",
                "migrations/001_init.sql",
                0o644,
            ),
            (
                "srv/migrations/002_email.sql",
                "migrations/002_email.sql",
                0o644,
            ),
            (
                "usr/local/bin/docker-entrypoint.sh",
                "docker-entrypoint.sh",
                0o755,
            ),
        ] {
            let shipped = rootfs.join(path);
            assert_eq!(
                std::fs::read(&shipped).unwrap(),
                std::fs::read(project.join(src)).unwrap(),
                "{path}"
            );
            let m = std::fs::metadata(&shipped).unwrap().permissions().mode() & 0o7777;
            assert_eq!(m, mode, "{path}: {m:o}");
        }
    }
    // The other binary of the member is not in either image.
    let bundle = unpack(&out, "sqlite-2.1.0", &dir.join("again"));
    assert!(!bundle.join("rootfs/srv/sso_psql").exists());
}

#[test]
fn a_binary_in_two_members_or_a_file_outside_the_project_is_refused() {
    let dir = scratch("projects-refusals");
    let project = dir.join("workspace");
    copy_fixture("workspace", &project);
    // A second member with a binary of the same name.
    let twin = project.join("twin");
    std::fs::create_dir_all(twin.join("src/bin")).unwrap();
    std::fs::write(
        twin.join("Cargo.toml"),
        "[package]\nname = \"twin\"\nversion.workspace = true\nedition.workspace = true\n\n[[bin]]\nname = \"sso_sqlite\"\npath = \"src/bin/sso_sqlite.rs\"\n",
    )
    .unwrap();
    std::fs::write(twin.join("src/bin/sso_sqlite.rs"), "fn main() {}\n").unwrap();
    let manifest = project.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "members = [\"core\", \"sso\"]",
            "members = [\"core\", \"sso\", \"twin\"]",
        ),
    )
    .unwrap();
    // The new member goes into Cargo.lock (galley builds with --locked).
    run_ok(
        Command::new("cargo")
            .args(["generate-lockfile", "--offline"])
            .current_dir(&project),
    );
    let (out, _) = build(&project, &dir.join("out"), &["--variants", "sqlite"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("binary \"sso_sqlite\" is in packages sso, twin: set `package = \"NAME\"` in galley.toml"),
        "{stderr}"
    );
    // Naming the package settles it.
    let config = project.join("galley.toml");
    let galley_toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("package = \"sso\"\n{galley_toml}")).unwrap();
    let (out, report) = build(
        &project,
        &dir.join("out"),
        &["--variants", "sqlite", "--no-compress"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        variant(report.as_ref().unwrap(), "sqlite")["status"],
        "succeeded"
    );

    // A symlink among the files, then a path that leaves the project: refused, nothing written.
    std::os::unix::fs::symlink("/etc/passwd", project.join("migrations/003_link.sql")).unwrap();
    let (out, _) = build(&project, &dir.join("out2"), &["--variants", "sqlite"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("003_link.sql is a symlink"), "{stderr}");
    std::fs::remove_file(project.join("migrations/003_link.sql")).unwrap();
    std::fs::write(
        &config,
        format!("package = \"sso\"\n{galley_toml}\n[[image.files]]\nsrc = \"../secrets\"\ndst = \"/etc/secrets\"\n"),
    )
    .unwrap();
    let (out, _) = build(&project, &dir.join("out2"), &["--variants", "sqlite"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("src must be a path inside the project"),
        "{stderr}"
    );
    assert!(!dir.join("out2").exists());
}

#[test]
fn a_base_with_a_tab_in_its_history_and_a_newline_in_an_env_value_gives_valid_json() {
    require("umoci");
    let _heavy = heavy();
    let dir = scratch("projects-odd-base");
    let base = dir.join("base");
    crate::support::copy_dir(base_layout(), &base);
    // What several official images have: a tab in created_by, a newline in a value.
    run_ok(
        Command::new("umoci")
            .args(["config", "--image"])
            .arg(format!("{}:3.20", base.display()))
            .args(["--tag", "odd", "--config.env", "MOTD=line one\nline two"])
            .args([
                "--history.created_by",
                "/bin/sh -c #(nop)\tCMD [\"/bin/sh\"]",
            ]),
    );
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let base_arg = format!("oci:{}:odd", base.display());
    let report = build_ok(
        &project,
        &out,
        &[
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--no-compress",
            "--base",
            &base_arg,
        ],
        &[],
    );
    assert_eq!(variant(&report, "sqlite")["status"], "succeeded");
    // skopeo (Go's JSON) reads it, and so does Python's json.tool, from the blob itself.
    let inspected = skopeo_inspect(&out, "sqlite-1.0.0", false);
    assert_eq!(inspected["Digest"], variant(&report, "sqlite")["digest"]);
    let config = config_of(&out, "sqlite-1.0.0");
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"MOTD=line one\nline two"), "{env:?}");
    let history = config["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["created_by"]
        .as_str()
        .unwrap_or("")
        .contains("#(nop)\tCMD")));
    let digest = config_digest(&out, "sqlite-1.0.0");
    run_ok(
        Command::new("python3")
            .args(["-m", "json.tool"])
            .arg(out.join("blobs/sha256").join(digest)),
    );
}

/// The hex digest of an image's config blob in a layout.
fn config_digest(layout: &Path, tag: &str) -> String {
    let manifest = skopeo_inspect(layout, tag, true);
    manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

/// b3sum 1.8.7 as published on the crate registry (its sha256 pinned), written by the BLAKE3 team.
const B3SUM_URL: &str = "https://static.crates.io/crates/b3sum/b3sum-1.8.7.crate";
const B3SUM_SHA256: &str = "d12cbf49ea673482c08f7a2cbede6388e698bdae001e9e1536c314cf2741ea5d";

#[test]
fn a_published_crate_with_c_code_builds_into_two_variants_that_do_their_job() {
    require("curl");
    let _heavy = heavy();
    let dir = scratch("projects-b3sum");
    let crate_file = dir.join("b3sum-1.8.7.crate");
    run_ok(
        Command::new("curl")
            .args(["-sSfL", "--retry", "3", "-o"])
            .arg(&crate_file)
            .arg(B3SUM_URL),
    );
    let sum = run_ok(Command::new("sha256sum").arg(&crate_file));
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(B3SUM_SHA256),
        "the download is not the pinned crate"
    );
    run_ok(
        Command::new("tar")
            .arg("xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(&dir),
    );
    let project = dir.join("b3sum-1.8.7");
    // The galley.toml a user would write: blake3's SIMD code (C and assembly, compiled by cc
    // through zig) or pure Rust.
    std::fs::write(
        project.join("galley.toml"),
        "[variants.simd]\nfeatures = []\n\n[variants.pure]\nfeatures = [\"pure\"]\n\n[image]\nsmoke_args = [\"--version\"]\n",
    )
    .unwrap();
    let out = dir.join("out");
    let report = build_ok(&project, &out, &["--variants", "simd,pure"], &[]);
    assert_eq!(report["version"], "1.8.7");
    // cc compiled blake3's assembly for the simd variant.
    let objects: Vec<String> =
        walk(&project.join("target/x86_64-unknown-linux-musl/release/build"))
            .into_iter()
            .filter(|p| p.ends_with(".o") && p.contains("blake3_avx2"))
            .collect();
    assert!(!objects.is_empty(), "blake3's C/assembly was not compiled");
    let (simd, pure) = (variant(&report, "simd"), variant(&report, "pure"));
    assert_ne!(
        simd["platforms"][0]["binary_digests"][0][1],
        pure["platforms"][0]["binary_digests"][0][1]
    );
    // Both hash correctly under chroot (BLAKE3 test vectors: "" and "abc").
    for name in ["simd", "pure"] {
        let bundle = unpack(&out, &format!("{name}-1.8.7"), &dir);
        std::fs::write(bundle.join("rootfs/tmp/empty"), b"").unwrap();
        std::fs::write(bundle.join("rootfs/tmp/abc"), b"abc").unwrap();
        let said = chroot_run(&bundle, &["/app/b3sum", "/tmp/empty", "/tmp/abc"]);
        assert_eq!(
            said,
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262  /tmp/empty\n\
             6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85  /tmp/abc",
            "{name}"
        );
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
