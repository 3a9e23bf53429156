//! Malformed requests get a clear error and exit code 2, and nothing is written.

use crate::support::{base_arg, copy_fixture, galley, heavy, scratch};

fn refused(name: &str, args: &[&str], env: &[(&str, &str)], says: &str) {
    let dir = scratch(name);
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let mut cmd = galley();
    cmd.arg("build")
        .arg("--project")
        .arg(&project)
        .arg("--output")
        .arg(&out);
    if !args.contains(&"--base") {
        cmd.arg("--base").arg(base_arg());
    }
    cmd.args(args).env("SOURCE_DATE_EPOCH", "1700000000");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {err:?} lacks {says:?}");
    assert!(
        !out.exists(),
        "{args:?}: the output layout was created for a refused request"
    );
    assert!(!dir.join("pwned").exists(), "a payload ran");
}

#[test]
fn refuses_malformed_requests_before_doing_anything() {
    let pwned = scratch("bad-input-canary").join("pwned");
    let pwned = pwned.to_str().unwrap();
    refused(
        "bad-variant",
        &["--variants", &format!("sqlite;touch {pwned}")],
        &[],
        "variant name \"sqlite;touch",
    );
    refused(
        "bad-variant-dollar",
        &["--variants", "$(id)"],
        &[],
        "is not allowed",
    );
    refused(
        "bad-version",
        &["--variants", "sqlite", "--version", "1.0 && id"],
        &[],
        "version \"1.0 && id\" is not allowed",
    );
    refused(
        "bad-target",
        &[
            "--variants",
            "sqlite",
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
        &[],
        "unsupported target",
    );
    refused(
        "bad-tag",
        &["--variants", "sqlite", "--tag", "{variant}:latest"],
        &[],
        "not a valid tag",
    );
    refused(
        "bad-epoch",
        &["--variants", "sqlite"],
        &[("SOURCE_DATE_EPOCH", "yesterday")],
        "SOURCE_DATE_EPOCH=\"yesterday\" is not a number",
    );
    refused(
        "bad-epoch-neg",
        &["--variants", "sqlite"],
        &[("SOURCE_DATE_EPOCH", "-1")],
        "SOURCE_DATE_EPOCH=\"-1\"",
    );
    refused(
        "bad-base",
        &["--variants", "sqlite", "--base", "oci:"],
        &[],
        "is not a valid reference",
    );
    assert!(!std::path::Path::new(pwned).exists());
}

#[test]
fn missing_base_and_missing_project_are_explained() {
    refused(
        "no-base",
        &[
            "--variants",
            "sqlite",
            "--base",
            "oci:/nonexistent/layout:1",
        ],
        &[],
        "is not an OCI image layout",
    );
    let o = galley()
        .args([
            "build",
            "--project",
            "/nonexistent/project",
            "--variants",
            "sqlite",
        ])
        .env("SOURCE_DATE_EPOCH", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("project directory /nonexistent/project does not exist"));
}

#[test]
fn a_compile_error_fails_the_variant_and_moves_no_tag() {
    let _heavy = heavy();
    let dir = scratch("compile-error");
    let project = dir.join("tiny");
    crate::support::tiny_with_a_broken_variant(&project);
    let out = dir.join("out");
    let o = galley()
        .arg("build")
        .arg("--project")
        .arg(&project)
        .arg("--output")
        .arg(&out)
        .arg("--base")
        .arg(base_arg())
        .args([
            "--variants",
            "sqlite,broken",
            "--version",
            "1.0.0",
            "--no-compress",
            "--json",
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["succeeded"], false);
    let bad = crate::support::variant(&report, "broken");
    assert_eq!(bad["status"], "failed");
    assert!(
        bad["error"].as_str().unwrap().contains("db_broken"),
        "{bad}"
    );
    assert!(bad["tags"].as_array().unwrap().is_empty());
    assert_eq!(
        crate::support::variant(&report, "sqlite")["status"],
        "succeeded"
    );
    let index = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(
        index.contains("sqlite-1.0.0") && !index.contains("broken"),
        "{index}"
    );
}

/// A variant whose feature the crate does not have is refused before anything runs, and the
/// message lists the crate's features.
#[test]
fn an_unknown_feature_is_refused_with_the_crates_features() {
    let dir = scratch("unknown-feature");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let o = galley()
        .arg("build")
        .arg("--project")
        .arg(&project)
        .arg("--output")
        .arg(&out)
        .arg("--base")
        .arg(base_arg())
        .args(["--variants", "sqlite,nonexistent", "--version", "1.0.0"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("variant \"nonexistent\": \"db_nonexistent\" is not a feature of package tiny (its features: db_mysql, db_psql, db_sqlite, default)"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing may be written");
}
