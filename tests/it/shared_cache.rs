//! The stage cache's remote tier on a real registry (Debian's docker-registry): host A builds
//! tiny and uploads its entries; host B (another directory, CARGO_HOME, target dir and local
//! cache) builds the same inputs without starting cargo, to the same digest, and the report
//! says `remote`. An entry whose signature or bytes were changed in the registry is refused,
//! reported, and its stage runs; without a key nothing is read unless the user opts in; an
//! unreachable cache registry leaves a build that succeeds uncached, with a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::real_registry::{Auth, RealRegistry};
use crate::support::{build, copy_fixture, heavy, require, run_ok, scratch, variant};

/// One host: its own project copy, CARGO_HOME, local cache and a `cargo` that logs each run.
struct Host {
    project: PathBuf,
    cache: PathBuf,
    cargo_home: Option<PathBuf>,
    cargo_log: PathBuf,
    path: String,
}

impl Host {
    fn new(dir: &Path, name: &str, own_cargo_home: bool) -> Host {
        let root = dir.join(name);
        let project = root.join("src/tiny");
        copy_fixture("tiny", &project);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = run_ok(Command::new("which").arg("cargo"));
        let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
        let cargo_log = root.join("cargo.log");
        let wrapper = bin.join("cargo");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n",
                cargo_log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cargo_home = own_cargo_home.then(|| {
            let h = root.join("cargo-home");
            std::fs::create_dir_all(&h).unwrap();
            h
        });
        Host {
            project,
            cache: root.join("galley-cache"),
            cargo_home,
            cargo_log,
            path: format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        }
    }

    /// Builds tiny's sqlite variant with the cache repository; returns the report.
    fn build(&self, out: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--variants", "sqlite", "--version", "1.0.0"];
        args.extend_from_slice(extra);
        let cache = self.cache.to_str().unwrap();
        let mut env = vec![("GALLEY_CACHE_DIR", cache), ("PATH", self.path.as_str())];
        if let Some(h) = &self.cargo_home {
            env.push(("CARGO_HOME", h.to_str().unwrap()));
        }
        let output = self.project.parent().unwrap().parent().unwrap().join(out);
        let (o, report) = build(&self.project, &output, &args, &env);
        assert!(
            o.status.success(),
            "galley build failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        report.unwrap()
    }

    /// Times cargo compiled or listed crates (`cargo metadata`, which reads the manifests
    /// when a build is resolved, is not counted).
    fn cargo_runs(&self) -> usize {
        std::fs::read_to_string(&self.cargo_log)
            .map(|t| t.lines().filter(|l| !l.starts_with("metadata")).count())
            .unwrap_or(0)
    }
}

/// `stage -> cached|remote|ran`.
fn uses(report: &Value) -> Vec<(String, String)> {
    variant(report, "sqlite")["platforms"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some((s["stage"].as_str()?.into(), s["cache"].as_str()?.into())))
        .collect()
}

fn used(report: &Value, stage: &str) -> String {
    uses(report)
        .into_iter()
        .find(|(s, _)| s == stage)
        .map(|(_, u)| u)
        .unwrap_or_else(|| panic!("{stage} says how it used the cache: {:?}", uses(report)))
}

fn key_of(report: &Value, stage: &str) -> String {
    variant(report, "sqlite")["platforms"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| s["cache_key"].as_str())
        .unwrap()
        .to_string()
}

fn digest(report: &Value) -> String {
    variant(report, "sqlite")["digest"].as_str().unwrap().into()
}

fn warnings(report: &Value) -> String {
    report["remote_cache"]["warnings"].to_string()
}

/// The manifest of a cache entry's tag, as the registry serves it.
fn entry_manifest(registry: &RealRegistry, tag: &str) -> Value {
    let out = run_ok(Command::new("curl").args([
        "-sf",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!(
            "http://{}/v2/team/galley-cache/manifests/{tag}",
            registry.host()
        ),
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_second_host_builds_from_the_registry_cache_and_a_changed_entry_is_refused() {
    let _g = heavy();
    require("curl");
    let registry = RealRegistry::start(Auth::Anonymous);
    let dir = scratch("shared-cache");
    let key = dir.join("cache.key");
    std::fs::write(&key, "a key every worker of the team shares\n").unwrap();
    let repo = format!("{}/team/galley-cache", registry.host());
    let shared = [
        "--cache-repo",
        repo.as_str(),
        "--cache-key-file",
        key.to_str().unwrap(),
    ];

    // Host A: everything runs, and every entry is uploaded.
    let a = Host::new(&dir, "host-a", false);
    let first = a.build("out-a", &shared);
    assert!(a.cargo_runs() > 0, "host A compiles");
    assert!(
        uses(&first).iter().all(|(_, u)| u == "ran"),
        "{:?}",
        uses(&first)
    );
    let rc = &first["remote_cache"];
    assert_eq!(rc["reads"], "verified", "{rc}");
    assert!(
        rc["uploaded"].as_u64().unwrap() >= 4,
        "compile, compress, layer, attest: {rc}"
    );
    assert_eq!(rc["upload_failures"], 0, "{rc}");
    let compile_tag = format!("compile-{}", key_of(&first, "compile"));
    let m = entry_manifest(&registry, &compile_tag);
    assert_eq!(
        m["artifactType"],
        "application/vnd.galley.stage-cache.v1+json"
    );
    assert!(m["annotations"]["dev.galley.stage-cache.hmac-sha256"].is_string());

    // Host B: another directory, CARGO_HOME, target dir and an empty local cache.
    let b = Host::new(&dir, "host-b", true);
    let second = b.build("out-b", &shared);
    assert_eq!(b.cargo_runs(), 0, "cargo does not start on host B");
    assert_eq!(digest(&second), digest(&first), "the same image");
    for stage in ["compile", "compress", "layer", "attest"] {
        assert_eq!(used(&second, stage), "remote", "{stage}");
        assert_eq!(
            key_of(&second, stage),
            key_of(&first, stage),
            "{stage}'s key"
        );
    }
    assert!(second["remote_cache"]["hits"].as_u64().unwrap() >= 4);
    // The hits were written to B's local tier: the next build does not ask the registry.
    let third = b.build("out-b2", &shared);
    assert_eq!(used(&third, "compile"), "cached");
    assert_eq!(digest(&third), digest(&first));

    // Without a key nothing remote is read (and the report says why), unless the user opts in.
    let c = Host::new(&dir, "host-c", true);
    let unkeyed = c.build("out-c", &["--cache-repo", repo.as_str()]);
    assert_eq!(used(&unkeyed, "compile"), "ran");
    assert_eq!(unkeyed["remote_cache"]["reads"], "refused");
    assert!(
        warnings(&unkeyed).contains("cache_key_file"),
        "{}",
        warnings(&unkeyed)
    );
    let opted = Host::new(&dir, "host-d", true);
    let unsigned = opted.build(
        "out-d",
        &["--cache-repo", repo.as_str(), "--cache-unsigned"],
    );
    assert_eq!(used(&unsigned, "compile"), "remote");
    assert_eq!(opted.cargo_runs(), 0);

    // Change the compress entry's signature and the compile entry's binary in the registry.
    let compress_tag = format!("compress-{}", key_of(&first, "compress"));
    let mut forged = entry_manifest(&registry, &compress_tag);
    forged["annotations"]["dev.galley.stage-cache.hmac-sha256"] = "00".repeat(32).into();
    run_ok(Command::new("curl").args([
        "-sf",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &forged.to_string(),
        &format!(
            "http://{}/v2/team/galley-cache/manifests/{compress_tag}",
            registry.host()
        ),
    ]));
    let raw = m["layers"][1]["digest"].as_str().unwrap();
    let hex = raw.trim_start_matches("sha256:");
    let data = registry.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let e = Host::new(&dir, "host-e", true);
    let refused = e.build("out-e", &shared);
    assert_eq!(
        used(&refused, "compile"),
        "ran",
        "a changed binary is not used"
    );
    assert!(e.cargo_runs() > 0);
    assert_eq!(
        used(&refused, "compress"),
        "ran",
        "a forged signature is not trusted"
    );
    assert_eq!(
        used(&refused, "layer"),
        "remote",
        "an intact entry still is"
    );
    assert_eq!(
        refused["remote_cache"]["refused"], 2,
        "{}",
        refused["remote_cache"]
    );
    let w = warnings(&refused);
    assert!(w.contains(&compile_tag) && w.contains(&compress_tag), "{w}");
    assert!(w.contains("signature does not verify"), "{w}");
    assert_eq!(
        digest(&refused),
        digest(&first),
        "and the image is the same"
    );

    // The cache registry unreachable: the build succeeds uncached, with a warning.
    let gone = [
        "--cache-repo",
        "127.0.0.1:1/team/galley-cache",
        "--cache-key-file",
        key.to_str().unwrap(),
    ];
    let f = Host::new(&dir, "host-f", false);
    let down = f.build("out-f", &gone);
    assert_eq!(used(&down, "compile"), "ran");
    assert_eq!(digest(&down), digest(&first));
    let w = warnings(&down);
    assert!(w.contains("unavailable"), "{w}");
    assert!(down["remote_cache"]["upload_failures"].as_u64().unwrap() > 0);
    assert!(w.contains("not uploaded"), "{w}");
}

#[test]
fn a_cache_key_file_that_cannot_be_used_stops_the_build_before_it_compiles() {
    let dir = scratch("shared-cache-key");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let short = dir.join("short.key");
    std::fs::write(&short, "short").unwrap();
    let (o, _) = build(
        &project,
        &dir.join("out"),
        &[
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--cache-repo",
            "127.0.0.1:1/cache",
            "--cache-key-file",
            short.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cache_key_file") && err.contains("at least 16"),
        "{err}"
    );
    assert!(!dir.join("out").exists(), "nothing written");
    assert!(!project.join("target").exists(), "nothing compiled");
    let (o, _) = build(
        &project,
        &dir.join("out2"),
        &[
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--cache-repo",
            "not a repo",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cache_repository"));
}
