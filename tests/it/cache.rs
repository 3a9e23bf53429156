//! The stage cache: an unchanged build answers compile, compress and layer from the cache; every
//! kind of input change makes cargo run again; a corrupt entry is rebuilt, never used; two
//! galley processes share one cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{build, copy_fixture, heavy, require, run_ok, scratch, variant};

/// Builds the project's `sqlite` variant with a private stage cache; returns the report.
fn build_with(
    project: &Path,
    out: &Path,
    cache: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut args = vec!["--variants", "sqlite", "--version", "1.0.0"];
    args.extend_from_slice(extra);
    let cache_env = cache.to_str().unwrap();
    let mut all_env = vec![("GALLEY_CACHE_DIR", cache_env)];
    all_env.extend_from_slice(env);
    let (o, report) = build(project, out, &args, &all_env);
    assert!(
        o.status.success(),
        "galley build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    report.unwrap()
}

/// `(stage, cached|ran)` for the stages the cache covers.
fn cache_use(report: &serde_json::Value) -> Vec<(String, String)> {
    variant(report, "sqlite")["platforms"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            Some((
                s["stage"].as_str()?.to_string(),
                s["cache"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn compile_use(report: &serde_json::Value) -> String {
    cache_use(report)
        .into_iter()
        .find(|(s, _)| s == "compile")
        .map(|(_, u)| u)
        .expect("the compile stage says how it used the cache")
}

fn digest(report: &serde_json::Value) -> String {
    variant(report, "sqlite")["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, f(text)).unwrap();
}

/// A `cargo-zigbuild` in front of the real one whose `--version` says what `version` holds: a
/// toolchain that changes while PATH does not.
fn wrapped_zigbuild(dir: &Path) -> (PathBuf, PathBuf) {
    let real = run_ok(Command::new("which").arg("cargo-zigbuild"));
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let bin = dir.join("wrap");
    std::fs::create_dir_all(&bin).unwrap();
    let version = dir.join("zigbuild-version");
    std::fs::write(&version, "1").unwrap();
    let script = bin.join("cargo-zigbuild");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo \"cargo-zigbuild 0.24.0 (test build $(cat {}))\"; exit 0; fi\nexec {real} \"$@\"\n",
            version.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (bin, version)
}

#[test]
fn every_kind_of_input_change_makes_cargo_run_and_nothing_else_does() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("cache-invalidation");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let cache = dir.join("cache");
    let out = dir.join("out");
    let (wrap, zigbuild_version) = wrapped_zigbuild(&dir);
    let path = format!("{}:{}", wrap.display(), std::env::var("PATH").unwrap());
    let env = [("PATH", path.as_str())];

    let first = build_with(&project, &out, &cache, &[], &env);
    assert_eq!(
        cache_use(&first),
        [
            ("compile", "ran"),
            ("compress", "ran"),
            ("layer", "ran"),
            ("attest", "ran")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let again = build_with(&project, &out, &cache, &[], &env);
    assert_eq!(
        cache_use(&again),
        [
            ("compile", "cached"),
            ("compress", "cached"),
            ("layer", "cached"),
            ("attest", "cached")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "nothing changed"
    );
    assert_eq!(digest(&again), digest(&first));
    let key = &variant(&again, "sqlite")["platforms"][0]["stages"][0]["cache_key"];
    assert_eq!(key.as_str().unwrap().len(), 64, "the key is reported");

    // Each change, then the same build again: cargo runs once, then the cache answers.
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<(&'a str, &'a str)>);
    let changes: Vec<Change> = vec![
        (
            "a source file",
            Box::new(|| edit(&project.join("src/main.rs"), |t| t + "\n// changed\n")),
            vec![],
        ),
        (
            "build.rs",
            Box::new(|| std::fs::write(project.join("build.rs"), "fn main() {}\n").unwrap()),
            vec![],
        ),
        (
            "Cargo.lock",
            Box::new(|| edit(&project.join("Cargo.lock"), |t| t + "\n")),
            vec![],
        ),
        (
            "a feature list",
            Box::new(|| {
                edit(&project.join("galley.toml"), |t| {
                    t.replace(
                        "features = [\"db_sqlite\"]",
                        "features = [\"db_sqlite\", \"db_psql\"]",
                    )
                })
            }),
            vec![],
        ),
        (
            ".cargo/config.toml",
            Box::new(|| {
                std::fs::create_dir_all(project.join(".cargo")).unwrap();
                std::fs::write(
                    project.join(".cargo/config.toml"),
                    "[build]\nrustflags = [\"--cfg\", \"x\"]\n",
                )
                .unwrap()
            }),
            vec![],
        ),
        (
            "RUSTFLAGS",
            Box::new(|| {}),
            vec![("RUSTFLAGS", "--cfg galley_cache_test")],
        ),
        (
            "the toolchain",
            Box::new(|| std::fs::write(&zigbuild_version, "2").unwrap()),
            vec![("RUSTFLAGS", "--cfg galley_cache_test")],
        ),
    ];
    for (what, change, extra_env) in changes {
        change();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.extend(extra_env);
        let changed = build_with(&project, &out, &cache, &[], &env);
        assert_eq!(
            compile_use(&changed),
            "ran",
            "{what} changed, but cargo did not run"
        );
        let same = build_with(&project, &out, &cache, &[], &env);
        assert_eq!(compile_use(&same), "cached", "nothing changed after {what}");
        assert_eq!(digest(&same), digest(&changed), "{what}");
    }

    // --no-cache: every stage runs, and nothing says cached.
    let env: Vec<(&str, &str)> = vec![
        ("PATH", path.as_str()),
        ("RUSTFLAGS", "--cfg galley_cache_test"),
    ];
    let off = build_with(&project, &out, &cache, &["--no-cache"], &env);
    assert!(cache_use(&off).is_empty(), "{:?}", cache_use(&off));
}

#[test]
fn a_corrupt_entry_is_rebuilt_and_two_processes_share_the_cache() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("cache-corrupt-concurrent");
    let cache = dir.join("cache");
    let (a, b) = (dir.join("a/tiny"), dir.join("b/tiny"));
    copy_fixture("tiny", &a);
    copy_fixture("tiny", &b);
    // Two galley processes at once, one cache (each its own project copy and output).
    let spawn = |project: &Path, out: &Path| {
        crate::support::galley()
            .arg("build")
            .arg("--project")
            .arg(project)
            .arg("--output")
            .arg(out)
            .arg("--base")
            .arg(crate::support::base_arg())
            .args(["--variants", "sqlite", "--version", "1.0.0", "--json"])
            .env("SOURCE_DATE_EPOCH", crate::support::EPOCH)
            .env("GALLEY_CACHE_DIR", &cache)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let pa = spawn(&a, &dir.join("out-a"));
    let pb = spawn(&b, &dir.join("out-b"));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    for o in [&oa, &ob] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ra: serde_json::Value = serde_json::from_slice(&oa.stdout).unwrap();
    let rb: serde_json::Value = serde_json::from_slice(&ob.stdout).unwrap();
    assert_eq!(
        digest(&ra),
        digest(&rb),
        "the same inputs from two places give the same image"
    );

    // Now the cache answers; then every object is corrupted: each stage runs again, same image.
    let cached = build_with(&a, &dir.join("out-c"), &cache, &[], &[]);
    assert_eq!(compile_use(&cached), "cached");
    for e in std::fs::read_dir(cache.join("stages/objects/sha256")).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    }
    let rebuilt = build_with(&a, &dir.join("out-d"), &cache, &[], &[]);
    // The crate list of the SBOM is kept in the entry itself (no object), so it still answers.
    assert_eq!(
        cache_use(&rebuilt),
        [
            ("compile", "ran"),
            ("compress", "ran"),
            ("layer", "ran"),
            ("attest", "cached")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(digest(&rebuilt), digest(&ra));
    // And the cache is whole again.
    let again = build_with(&a, &dir.join("out-e"), &cache, &[], &[]);
    assert_eq!(compile_use(&again), "cached");
    assert_eq!(digest(&again), digest(&ra));
}
