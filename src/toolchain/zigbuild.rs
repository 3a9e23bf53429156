//! `cargo zigbuild`, run as argv with an allow-listed environment, its binary found in cargo's
//! JSON artifact messages.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::sccache::{FixedRoot, Server};
use super::{CompileError, CompileRequest, Compiled, SccacheUse, ToolVersions, Toolchain};
use crate::cancel::Cancel;
use crate::proc;

/// The real toolchain: `cargo zigbuild --release --locked --target T --no-default-features --features F`.
#[derive(Debug, Clone, Default)]
pub struct CargoZigbuild {
    /// `--target-dir`; default `<project>/target`.
    pub target_dir: Option<PathBuf>,
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Environment cargo, build scripts and C compilers commonly need, beyond `proc`'s allow-list:
/// names, and prefixes ending in `*`. Registry credentials of galley itself are never in it.
pub const BUILD_ENV: &[&str] = &[
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "CARGO_REGISTRIES_*",
    "CARGO_REGISTRY_*",
    "CARGO_NET_GIT_FETCH_WITH_CLI",
    "CARGO_NET_RETRY",
    "CARGO_HTTP_*",
    "CC",
    "CXX",
    "AR",
    "CFLAGS",
    "CXXFLAGS",
    "CC_*",
    "CXX_*",
    "AR_*",
    "CFLAGS_*",
    "CXXFLAGS_*",
    "TARGET_CC",
    "TARGET_CFLAGS",
    "PROTOC",
    "PROTOC_INCLUDE",
    "PKG_CONFIG_*",
    "LIBCLANG_PATH",
    "BINDGEN_EXTRA_CLANG_ARGS*",
];

/// Whether `key` matches a name or a `PREFIX*` pattern.
pub fn env_matches(patterns: &[impl AsRef<str>], key: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.as_ref();
        match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == p,
        }
    })
}

/// What a compile adds to `proc`'s environment: `BUILD_ENV` and the project's passthrough.
fn build_env(req: &CompileRequest<'_>) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| env_matches(BUILD_ENV, k) || env_matches(req.env_passthrough, k))
        .collect()
}

/// Variables whose value is only where something lives (remapped, or a socket) or how to reach
/// the network: they do not change what cargo builds, and counting them would give every host
/// its own keys (the remote tier shares keys across hosts). The tools on PATH count by their
/// versions.
const NOT_INPUTS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "TMPDIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "ZIG_GLOBAL_CACHE_DIR",
    "ZIG_LOCAL_CACHE_DIR",
    "PYENV_ROOT",
    "SSH_AUTH_SOCK",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CARGO_HTTP_CAINFO",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Whether a variable is a compile input: not in `NOT_INPUTS`, and not a credential (a
/// registry token changes who may download, not what is built; and entries travel to the
/// remote tier, where no secret may go).
fn is_input(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    !NOT_INPUTS.contains(&name)
        && !["TOKEN", "PASSWORD", "SECRET", "CREDENTIAL"]
            .iter()
            .any(|s| upper.contains(s))
}

/// The cargo configuration files cargo reads from outside the project (its parents and
/// `$CARGO_HOME`), and rust-toolchain files of the parents: their contents are inputs.
fn outer_config_files(project: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in project.ancestors().skip(1) {
        for name in [
            ".cargo/config.toml",
            ".cargo/config",
            "rust-toolchain.toml",
            "rust-toolchain",
        ] {
            let f = dir.join(name);
            if f.is_file() {
                out.push(f);
            }
        }
    }
    if let Some(home) = cargo_home() {
        for name in ["config.toml", "config"] {
            let f = home.join(name);
            if f.is_file() && !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out
}

impl CargoZigbuild {
    /// The rustc flags that make output independent of where the project and cargo's caches live.
    fn remap_flags(cargo_home: Option<&Path>, project: &Path, target_dir: &Path) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(home) = cargo_home {
            flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
        }
        flags.push(format!("--remap-path-prefix={}=/build", project.display()));
        // Later flags win in rustc, so the target dir (often inside the project) comes last.
        flags.push(format!(
            "--remap-path-prefix={}=/target",
            target_dir.display()
        ));
        flags
    }
}

/// Whether this host can give compiles a private mount namespace: asked once per process.
fn fixed_root() -> Result<(), String> {
    static WORKS: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    WORKS.get_or_init(super::sccache::fixed_root_works).clone()
}

/// sccache's server for one compile, when configured and reachable, and the fixed build root
/// when this host can give one. What went wrong is a warning: the compile goes on without.
fn start_sccache(
    req: &CompileRequest<'_>,
    target_dir: &Path,
    cancel: &Cancel,
) -> (Option<Server>, Option<FixedRoot>, SccacheUse) {
    let mut used = SccacheUse::default();
    let Some(spec) = req.sccache else {
        return (None, None, used);
    };
    let root = match (cargo_home(), fixed_root()) {
        (Some(cargo_home), Ok(())) => Some(FixedRoot {
            project: req.project.to_path_buf(),
            cargo_home,
            target_dir: target_dir.to_path_buf(),
        }),
        (None, _) => {
            used.warning = Some("sccache runs at this host's paths (no CARGO_HOME or HOME): other hosts' entries will miss".into());
            None
        }
        (_, Err(why)) => {
            used.warning = Some(format!(
                "sccache runs at this host's paths ({why}): other hosts' entries will miss"
            ));
            None
        }
    };
    match Server::start(spec, root.as_ref(), cancel) {
        Ok(server) => (Some(server), root, used),
        Err(why) => {
            used.warning = Some(format!(
                "sccache off for this compile: {why}; compiling uncached"
            ));
            (None, None, used)
        }
    }
}

impl Toolchain for CargoZigbuild {
    fn compile(
        &self,
        req: &CompileRequest<'_>,
        cancel: &Cancel,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<Compiled, CompileError> {
        let target_dir = self
            .target_dir
            .clone()
            .unwrap_or_else(|| req.project.join("target"));
        let (server, root, mut sccache) = start_sccache(req, &target_dir, cancel);
        // At the fixed build root cargo sees the project, CARGO_HOME and the target dir at the
        // same paths on every host; elsewhere, at this host's own.
        let home = cargo_home();
        let (project, home, target_in) = match &root {
            Some(_) => (
                FixedRoot::src(),
                Some(FixedRoot::cargo()),
                FixedRoot::target(),
            ),
            None => (req.project.to_path_buf(), home, target_dir.clone()),
        };
        let mut cmd = proc::command("cargo");
        cmd.current_dir(req.project).arg("zigbuild");
        if req.profile == "release" {
            cmd.arg("--release");
        } else {
            cmd.arg("--profile").arg(req.profile);
        }
        cmd.args(["--locked", "--target", req.target.triple()]);
        if let Some(p) = req.package {
            cmd.arg("-p").arg(p);
        }
        if !req.default_features {
            cmd.arg("--no-default-features");
        }
        if !req.features.is_empty() {
            cmd.arg("--features").arg(req.features.join(","));
        }
        // The project's own rustflags first, galley's remapping after: both reach rustc.
        let mut flags = req.rustflags.to_vec();
        flags.extend(Self::remap_flags(home.as_deref(), &project, &target_in));
        cmd.arg("--bin")
            .arg(req.binary)
            .arg("--target-dir")
            .arg(&target_in)
            .arg("--message-format=json-render-diagnostics")
            .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
            .env("SOURCE_DATE_EPOCH", req.source_date_epoch.to_string())
            .env("CARGO_TERM_COLOR", "never");
        for (k, v) in build_env(req) {
            cmd.env(k, v);
        }
        if let (Some(zig), None) = (req.zig_cache, std::env::var_os("ZIG_GLOBAL_CACHE_DIR")) {
            cmd.env("ZIG_GLOBAL_CACHE_DIR", zig);
        }
        if let Some(server) = &server {
            for (k, v) in server.client_env() {
                cmd.env(k, v);
            }
        }
        if let Some(r) = &root {
            cmd.env("CARGO_HOME", FixedRoot::cargo());
            if let Err(why) = r.apply(&mut cmd) {
                return Err(CompileError::Failed {
                    status: "not started".into(),
                    tail: why,
                });
            }
        }

        let executables: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
        let tail: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let status = proc::run_streaming(
            &mut cmd,
            cancel,
            |line| {
                let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                    return;
                };
                if msg["reason"] != "compiler-artifact" {
                    return;
                }
                let is_bin = msg["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|v| v == "bin"));
                if let (true, Some(name), Some(exe)) = (
                    is_bin,
                    msg["target"]["name"].as_str(),
                    msg["executable"].as_str(),
                ) {
                    executables
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name.to_string(), PathBuf::from(exe)));
                }
            },
            |line| {
                log(line);
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.push(proc::quoted(line).into_owned());
                if t.len() > 12 {
                    t.remove(0);
                }
            },
        );
        if let Some(server) = &server {
            match server.stats(cancel) {
                Ok(mut stats) => {
                    stats.fixed_paths = root.is_some();
                    sccache.stats = Some(stats);
                }
                Err(why) => sccache.warning = Some(format!("sccache's statistics: {why}")),
            }
        }
        drop(server);
        let status = status?;

        let tail = tail.into_inner().unwrap_or_else(|e| e.into_inner());
        if !status.success() {
            let useful: Vec<&String> = tail
                .iter()
                .filter(|l| l.starts_with("error") || l.contains("error:"))
                .collect();
            let text = if useful.is_empty() {
                tail.join(" | ")
            } else {
                useful
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            return Err(CompileError::Failed {
                status: status.to_string(),
                tail: text,
            });
        }
        let executables = executables.into_inner().unwrap_or_else(|e| e.into_inner());
        match executables.iter().find(|(name, _)| name == req.binary) {
            Some((_, path)) => Ok(Compiled {
                path: match &root {
                    Some(r) => r.outside(path),
                    None => path.clone(),
                },
                sccache: req.sccache.map(|_| sccache),
            }),
            None => Err(CompileError::NoBinary {
                binary: req.binary.to_string(),
                built: if executables.is_empty() {
                    "none".into()
                } else {
                    executables
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    fn fingerprint(
        &self,
        req: &CompileRequest<'_>,
        tools: &ToolVersions,
    ) -> Result<serde_json::Value, String> {
        let target_dir = self
            .target_dir
            .clone()
            .unwrap_or_else(|| req.project.join("target"));
        let skip = [req.project.join("target"), target_dir];
        let (sources, files) =
            crate::cache::tree_digest(req.project, &skip).map_err(|e| e.to_string())?;
        let mut external = Vec::new();
        for dir in req.external_sources {
            let (d, n) =
                crate::cache::tree_digest(dir, &[dir.join("target")]).map_err(|e| e.to_string())?;
            external.push(serde_json::json!({"digest": d, "files": n}));
        }
        let mut outer = Vec::new();
        for f in outer_config_files(req.project) {
            let d = crate::cache::file_digest(&f).map_err(|e| e.to_string())?;
            outer.push(serde_json::json!({"file": f.file_name().map(|n| n.to_string_lossy().into_owned()), "digest": d}));
        }
        let env: std::collections::BTreeMap<String, String> = proc::inherited_env()
            .into_iter()
            .chain(build_env(req))
            .filter(|(k, _)| is_input(k))
            .collect();
        Ok(serde_json::json!({
            "tools": {"rustc": tools.rustc, "cargo_zigbuild": tools.cargo_zigbuild, "zig": tools.zig},
            "target": req.target.triple(),
            "profile": req.profile,
            "package": req.package,
            "binary": req.binary,
            "features": req.features,
            "default_features": req.default_features,
            "rustflags": req.rustflags,
            "source_date_epoch": req.source_date_epoch,
            "sources": {"digest": sources, "files": files},
            "external_sources": external,
            "outer_config": outer,
            "env": env,
        }))
    }

    fn versions(&self, project: &Path) -> ToolVersions {
        let cancel = Cancel::default();
        let version = |program: &str, args: &[&str]| -> String {
            let mut cmd = proc::command(program);
            cmd.current_dir(project).args(args);
            match proc::run_captured(&mut cmd, Duration::from_secs(30), &cancel) {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
                _ => format!("{program}: unavailable"),
            }
        };
        ToolVersions {
            rustc: version("rustc", &["--version"]),
            cargo_zigbuild: version("cargo-zigbuild", &["--version"]),
            zig: version("python3", &["-m", "ziglang", "version"]),
            upx: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_credentials_are_not_compile_inputs() {
        for name in [
            "PATH",
            "CARGO_HOME",
            "https_proxy",
            "CARGO_REGISTRY_TOKEN",
            "CARGO_REGISTRIES_CORP_TOKEN",
            "MY_PASSWORD",
        ] {
            assert!(!is_input(name), "{name}");
        }
        for name in [
            "RUSTUP_TOOLCHAIN",
            "CC",
            "CFLAGS_x86_64_unknown_linux_musl",
            "LANG",
        ] {
            assert!(is_input(name), "{name}");
        }
    }

    #[test]
    fn build_environment_patterns_match_names_and_prefixes() {
        assert!(env_matches(BUILD_ENV, "CC_x86_64_unknown_linux_musl"));
        assert!(env_matches(BUILD_ENV, "CARGO_REGISTRIES_CORP_INDEX"));
        assert!(env_matches(BUILD_ENV, "SSH_AUTH_SOCK"));
        assert!(
            !env_matches(BUILD_ENV, "CCACHE_DIR"),
            "CC is a name, not a prefix"
        );
        assert!(!env_matches(BUILD_ENV, "GALLEY_API_TOKEN"));
        assert!(!env_matches(BUILD_ENV, "DOCKER_CONFIG"));
        assert!(env_matches(&["VENDOR_*", "MY_VAR"], "VENDOR_SDK"));
        assert!(!env_matches(&["MY_VAR"], "MY_VAR_2"));
    }
}
