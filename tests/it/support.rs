//! Test harness: paths, fixtures, the base image, tools, and a lock for heavy work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty scratch directory under target/galley-tests.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target").join("galley-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles, UPX runs and chroots take both cores: only one test does them at a time.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails with an actionable message when a tool the tests need is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed: run scripts/setup.sh first");
}

/// Runs a command and asserts it succeeded, showing its output otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The galley binary under test.
///
/// Each command gets a cache directory of its own (stage cache and base blobs), so no test finds
/// another test's compile in the cache; a test that wants a cache across commands sets
/// `GALLEY_CACHE_DIR` itself. zig's cache stays shared: it only holds musl and compiler-rt.
pub fn galley() -> Command {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    static CLEAN: OnceLock<()> = OnceLock::new();
    let caches = repo().join("target/galley-tests/caches");
    // Earlier runs' caches go once per test run.
    CLEAN.get_or_init(|| {
        let _ = std::fs::remove_dir_all(&caches);
    });
    let cache = caches.join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_galley"));
    cmd.env("GALLEY_CACHE_DIR", cache)
        .env("ZIG_GLOBAL_CACHE_DIR", shared_zig_cache());
    cmd
}

/// The zig cache every test shares: `$ZIG_GLOBAL_CACHE_DIR`, else `~/.cache/zig`.
pub fn shared_zig_cache() -> PathBuf {
    std::env::var_os("ZIG_GLOBAL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/zig")
        })
}

/// The base image layout (busybox-static, built once per test run by fixtures/base/make-base.sh).
pub fn base_layout() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        require("umoci");
        let dir = scratch("base").join("busybox");
        run_ok(
            Command::new("bash")
                .arg(repo().join("fixtures/base/make-base.sh"))
                .arg(&dir)
                .arg("3.20"),
        );
        dir
    })
}

/// `--base` for the shared base layout.
pub fn base_arg() -> String {
    format!("oci:{}:3.20", base_layout().display())
}

/// Copies a fixture project (without its target/) to `dest`.
pub fn copy_fixture(name: &str, dest: &Path) {
    copy_dir(&repo().join("fixtures").join(name), dest);
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let to = dst.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Copies the tiny fixture to `dest` with one more variant, `broken`: its feature `db_broken`
/// exists, but the code it enables does not compile (a variant whose compile fails).
pub fn tiny_with_a_broken_variant(dest: &Path) {
    copy_fixture("tiny", dest);
    let manifest = dest.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("db_mysql = []", "db_mysql = []\ndb_broken = []"),
    )
    .unwrap();
    let main = dest.join("src/main.rs");
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        format!("{code}\n#[cfg(feature = \"db_broken\")]\ncompile_error!(\"the broken variant does not build (db_broken)\");\n"),
    )
    .unwrap();
}

/// The epoch every test build uses.
pub const EPOCH: &str = "1700000000";

/// Runs `galley build --json` and returns the process output and the parsed report (if any).
pub fn build(
    project: &Path,
    output: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, Option<serde_json::Value>) {
    require("cargo-zigbuild");
    let mut cmd = galley();
    cmd.arg("build")
        .arg("--project")
        .arg(project)
        .arg("--output")
        .arg(output)
        .arg("--json");
    if !args.contains(&"--base") {
        cmd.arg("--base").arg(base_arg());
    }
    cmd.args(args).env("SOURCE_DATE_EPOCH", EPOCH);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).ok();
    (out, report)
}

/// Like `build`, asserting success.
pub fn build_ok(
    project: &Path,
    output: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let (out, report) = build(project, output, args, env);
    assert!(
        out.status.success(),
        "galley build failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    report.expect("galley build --json prints the report")
}

/// The tiny fixture copied to `dir/tiny` and its sqlite variant built (version 1.0.0, no UPX)
/// into `dir/out`: the project, the layout and the report.
pub fn tiny_sqlite_built(dir: &Path) -> (PathBuf, PathBuf, serde_json::Value) {
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
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
    (project, out, report)
}

/// The report entry of one variant.
pub fn variant<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variant"] == name)
        .unwrap_or_else(|| panic!("no variant {name} in {report}"))
}

/// Unpacks `layout:tag` with umoci and returns the bundle directory.
pub fn unpack(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    require("umoci");
    let bundle = into.join(format!("bundle-{tag}"));
    let _ = std::fs::remove_dir_all(&bundle);
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle),
    );
    bundle
}

/// Runs a program inside an unpacked image's rootfs with chroot; returns stdout.
pub fn chroot_run(bundle: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("/usr/sbin/chroot")
            .arg(bundle.join("rootfs"))
            .args(args)
            .env_clear()
            .env("PATH", "/bin:/usr/bin"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `skopeo inspect oci:DIR:TAG` as JSON.
pub fn skopeo_inspect(layout: &Path, tag: &str, raw: bool) -> serde_json::Value {
    require("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect");
    if raw {
        cmd.arg("--raw");
    }
    let out = run_ok(cmd.arg(format!("oci:{}:{tag}", layout.display())));
    serde_json::from_slice(&out.stdout).unwrap()
}
