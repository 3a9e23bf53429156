//! sccache on a real Redis (Debian's redis-server, started here on a loopback port): host A
//! compiles the withdeps fixture and fills Redis; host B (another directory, CARGO_HOME, target
//! dir and local stage cache) compiles it cold and its dependency crates are hits, to the same
//! digest. Redis down: the build succeeds uncached, with a warning, and no sccache is left.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{build, copy_fixture, heavy, require, scratch, variant};

/// A redis-server of one test: no persistence, killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        require("redis-server");
        let dir = tempfile::TempDir::new().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CARGO_HOME of its own holding only what withdeps needs: the registry index and its five
/// crates (cargo unpacks them).
fn own_cargo_home(dir: &Path) -> PathBuf {
    let home = PathBuf::from(std::env::var_os("CARGO_HOME").unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap())
            .join(".cargo")
            .into_os_string()
    }));
    let ours = dir.join("cargo-home");
    let registry = home.join("registry");
    crate::support::copy_dir(&registry.join("index"), &ours.join("registry/index"));
    for index in std::fs::read_dir(registry.join("cache")).unwrap() {
        let index = index.unwrap();
        let to = ours.join("registry/cache").join(index.file_name());
        std::fs::create_dir_all(&to).unwrap();
        for c in std::fs::read_dir(index.path()).unwrap() {
            let c = c.unwrap();
            let name = c.file_name().to_string_lossy().into_owned();
            if ["itoa-", "ryu-", "memchr-", "semver-", "smallvec-"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                std::fs::copy(c.path(), to.join(&name)).unwrap();
            }
        }
    }
    ours
}

fn build_withdeps(dir: &Path, sccache: &str, env: &[(&str, &str)]) -> Value {
    let project = dir.join("src/withdeps");
    if !project.exists() {
        copy_fixture("withdeps", &project);
    }
    let cache = dir.join("galley-cache");
    let mut all = vec![("GALLEY_CACHE_DIR", cache.to_str().unwrap())];
    all.extend_from_slice(env);
    let (o, report) = build(
        &project,
        &dir.join("out"),
        &[
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--no-compress",
            "--sccache",
            sccache,
        ],
        &all,
    );
    assert!(
        o.status.success(),
        "galley build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    report.unwrap()
}

fn sccache_of(report: &Value) -> &Value {
    &variant(report, "sqlite")["platforms"][0]["sccache"]
}

/// Processes named sccache now.
fn sccache_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "sccache")
        })
        .count()
}

#[test]
fn a_second_host_gets_its_dependency_crates_from_sccache() {
    let _g = heavy();
    require("sccache");
    let redis = Redis::start();
    let dir = scratch("sccache");

    let a = build_withdeps(&dir.join("host-a"), &redis.url(), &[]);
    let sa = sccache_of(&a);
    assert_eq!(sa["fixed_paths"], true, "{sa}");
    assert!(
        sa["misses"].as_u64().unwrap() >= 5,
        "five dependency crates stored: {sa}"
    );
    assert_eq!(sa["hits"], 0, "{sa}");

    let b_dir = dir.join("host-b");
    let home = own_cargo_home(&b_dir);
    let b = build_withdeps(
        &b_dir,
        &redis.url(),
        // No CARGO_NET_OFFLINE: sccache keys hold every CARGO_* variable, so it would make
        // every crate a miss. The lock file and the copied crates are all cargo needs.
        &[("CARGO_HOME", home.to_str().unwrap())],
    );
    let sb = sccache_of(&b);
    assert!(
        sb["hits"].as_u64().unwrap() >= 5,
        "the dependency crates are hits: {sb}"
    );
    assert_eq!(sb["misses"], 0, "{sb}");
    assert!(
        sb["not_cacheable"].as_u64().unwrap() > 0,
        "the binary links: never cached"
    );
    assert_eq!(
        variant(&b, "sqlite")["digest"],
        variant(&a, "sqlite")["digest"]
    );
    assert_eq!(sccache_processes(), 0, "every sccache server stopped");

    // Redis down: the build goes on uncached, with a warning.
    let port = redis.port;
    drop(redis);
    let down = build_withdeps(
        &dir.join("host-c"),
        &format!("redis://127.0.0.1:{port}"),
        &[],
    );
    assert!(sccache_of(&down).is_null());
    let w = variant(&down, "sqlite")["platforms"][0]["warnings"].to_string();
    assert!(
        w.contains("sccache off") && w.contains("does not answer"),
        "{w}"
    );
    assert_eq!(
        variant(&down, "sqlite")["digest"],
        variant(&a, "sqlite")["digest"]
    );
    assert_eq!(sccache_processes(), 0);
}

/// Ctrl-C during a compile through sccache: cargo, the build script, its child and the sccache
/// server (in their mount namespaces) all stop, and nothing is left in the output directory.
#[test]
fn ctrl_c_stops_the_sccache_server_with_the_compile() {
    use crate::cancel::{comm, interrupt, slow_build, slow_project, survivors, wait_for_tree};
    require("sccache");
    let _g = heavy();
    let redis = Redis::start();
    let dir = scratch("sccache-cancel");
    let project = slow_project(&dir);
    let out = dir.join("out");
    let mut child = slow_build(&project, &out, &["--sccache", &redis.url()]);
    let tag = format!("galley-cli-{}", child.id());
    let tree = wait_for_tree(&tag, Duration::from_secs(300));
    let names: Vec<String> = tree.iter().map(|(p, _)| comm(*p)).collect();
    assert!(
        names.iter().any(|n| n == "sccache") && names.iter().any(|n| n == "cargo"),
        "the server and cargo run: {names:?}"
    );
    let (status, _, stderr) = interrupt(&mut child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    let left = survivors(&tree);
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    assert!(galley::cancel::tagged(&tag).is_empty());
    assert_eq!(sccache_processes(), 0);
    assert!(!out.exists(), "{} left behind", out.display());
}
