//! `galley serve` settings: a TOML file (unknown keys are errors), flags on top, API tokens from
//! the environment or a token file (never from the TOML itself).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::units::parse_duration;

/// The listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// The build history's store: `postgres://USER:PASSWORD@HOST/DB` (or `GALLEY_STORE`);
    /// unset, SQLite in the data directory.
    pub store: Option<String>,
    /// Builds waiting at most; one more is answered 429.
    pub max_queued: Option<usize>,
    /// Builds running at once (their compiles still take turns for `compile_slots`).
    pub max_running: Option<usize>,
    /// Compiles at once across the service (default 1: zig's cache and 2 cores do not like more).
    pub compile_slots: Option<usize>,
    /// A file of API tokens, one per line: `NAME TOKEN`, or just `TOKEN` (named "default").
    pub token_file: Option<PathBuf>,
    /// SIGTERM to SIGKILL when a build is cancelled (default 10s).
    pub cancel_grace: Option<String>,
    /// A build's stored log is capped at this many bytes: the head and the tail are kept.
    pub log_cap_bytes: Option<u64>,
    /// Seconds between heartbeat comments on idle event streams (default 15s).
    pub heartbeat: Option<String>,
    /// This instance's name in the fleet (default: the host name).
    pub worker_name: Option<String>,
    /// How long a claim holds without a heartbeat before another worker takes over (default 15s).
    pub lease: Option<String>,
    /// How long a queued build waits for the worker that built its project last (default 10s).
    pub sticky_delay: Option<String>,
    /// Queue a build again, once, when its worker died (default false: marked interrupted).
    pub retry_interrupted: Option<bool>,
    /// On SIGTERM, let running builds finish for this long before cancelling them (default 0s:
    /// cancel at once).
    pub drain: Option<String>,
    /// Where base images and stage outputs are cached (default: galley's cache directory,
    /// shared with the CLI).
    pub cache_dir: Option<PathBuf>,
    /// The stage cache's size limit in bytes (default 2 GiB).
    pub cache_max_bytes: Option<u64>,
    #[serde(default)]
    pub retention: RetentionFile,
    #[serde(default)]
    pub http: HttpFile,
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Finished builds kept at most (default 500).
    pub max_builds: Option<usize>,
    /// Finished builds older than this are removed (default 30d).
    pub max_age: Option<String>,
}

/// `[http]`: what one client may hold, and which names the service answers to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Host names (or `host:port`) the service answers to besides its listen address and
    /// loopback names; `"*"` answers to any (behind a proxy that checks them itself).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The longest a client may take to send a request's headers (default 10s).
    pub header_timeout: Option<String>,
    /// A connection with no byte read or written for this long is closed (default 60s; event
    /// streams stay open through their heartbeats).
    pub idle_timeout: Option<String>,
    /// Connections open at once (default 512, and below the descriptor limit).
    pub max_connections: Option<usize>,
    /// Event streams open at once (default 256).
    pub max_streams: Option<usize>,
    /// Event streams open at once per token (default 128: a dashboard and a fleet of followers).
    pub max_streams_per_token: Option<usize>,
}

/// The HTTP limits, validated.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Lowercase host names (without port) the service answers to, besides its listen
    /// address and loopback; `None` answers to any.
    pub allowed_hosts: Option<Vec<String>>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_streams: usize,
    pub max_streams_per_token: usize,
}

impl HttpLimits {
    /// Checks `[http]`; the idle timeout must outlast the heartbeat, or idle event streams
    /// would be cut between two heartbeats.
    fn from_file(f: &HttpFile, heartbeat: Duration) -> Result<HttpLimits, ServeConfigError> {
        let duration = |field: &str, v: &Option<String>, default: u64| match v {
            None => Ok(Duration::from_secs(default)),
            Some(t) => match parse_duration(t) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(invalid(
                    format!("http.{field}"),
                    format!("{t:?} is not a duration of at least 1s (e.g. 10s, 2m)"),
                )),
            },
        };
        let header_timeout = duration("header_timeout", &f.header_timeout, 10)?;
        let idle_timeout = duration("idle_timeout", &f.idle_timeout, 60)?;
        if idle_timeout <= heartbeat {
            return Err(invalid(
                "http.idle_timeout",
                format!(
                    "must be longer than heartbeat ({}s), or idle event streams are cut",
                    heartbeat.as_secs()
                ),
            ));
        }
        let count = |field: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(invalid(format!("http.{field}"), "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_connections = count("max_connections", f.max_connections, 512)?;
        let max_streams = count("max_streams", f.max_streams, 256)?;
        let max_streams_per_token = count("max_streams_per_token", f.max_streams_per_token, 128)?;
        if max_streams >= max_connections {
            return Err(invalid(
                "http.max_streams",
                format!("must be below max_connections ({max_connections}), or streams leave no connection for other requests"),
            ));
        }
        let mut hosts = Vec::new();
        for h in &f.allowed_hosts {
            if h == "*" {
                return Ok(HttpLimits {
                    allowed_hosts: None,
                    header_timeout,
                    idle_timeout,
                    max_connections,
                    max_streams,
                    max_streams_per_token,
                });
            }
            let name = host_name(h);
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !ok {
                return Err(invalid(
                    "http.allowed_hosts",
                    format!("{h:?} is not a host name (e.g. galley.example.com), or \"*\""),
                ));
            }
            hosts.push(name);
        }
        Ok(HttpLimits {
            allowed_hosts: Some(hosts),
            header_timeout,
            idle_timeout,
            max_connections,
            max_streams,
            max_streams_per_token,
        })
    }
}

/// The host part of a `Host` header value or an allowed name, lowercase, without the port
/// (`[::1]:8700` -> `[::1]`, `Example.com:80` -> `example.com`).
pub fn host_name(value: &str) -> String {
    let v = value.trim();
    let host = if v.starts_with('[') {
        match v.find(']') {
            Some(i) => &v[..=i],
            None => v,
        }
    } else {
        v.rsplit_once(':').map_or(v, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// A directory, built as it is (dirty or not).
    pub path: Option<PathBuf>,
    /// A git repository (path or URL): builds take a `ref` and use a clean worktree.
    pub git: Option<String>,
    /// The repository images are pushed to (`host/repo`) when a build asks for a push.
    pub push: Option<String>,
    /// Base image, instead of the project's galley.toml setting.
    pub base: Option<String>,
    /// How often the base's tag is asked again; when its digest moved, the project's latest
    /// succeeded build is rebased (and pushed when it pushed). Absent: never.
    pub watch_base: Option<String>,
    /// The stage cache's remote tier for this project's builds (`host/repo`), instead of its
    /// galley.toml's `cache_repository`.
    pub cache_repository: Option<String>,
    /// The key the hosts share for that tier, instead of galley.toml's `cache_key_file`.
    pub cache_key_file: Option<PathBuf>,
    /// sccache's Redis endpoint for this project's compiles, instead of galley.toml's `sccache`.
    pub sccache: Option<String>,
    #[serde(default)]
    pub registry: RegistryFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    pub ca_bundle: Option<PathBuf>,
}

/// Where a project's sources come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    /// A repository path or URL, as given.
    Git(String),
}

/// A project the service builds.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    pub source: Source,
    pub push: Option<crate::registry::Reference>,
    pub base: Option<String>,
    /// `watch_base`: how often the base's tag is asked again.
    pub watch_base: Option<Duration>,
    /// The stage cache's remote tier (validated when a build resolves).
    pub cache_repository: Option<String>,
    pub cache_key_file: Option<PathBuf>,
    pub sccache: Option<String>,
    pub insecure: Vec<String>,
    pub ca_bundle: Option<PathBuf>,
}

/// A store URL with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            let tail = redact_query(tail);
            format!("{scheme}://{shown}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{}", redact_query(tail)),
    }
}

/// `?password=...` in a query string, redacted too.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// A store URL: its password is never shown (`Debug` and `shown()` redact it).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn shown(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.shown())
    }
}

/// An API token: who it is, and the sha256 of the secret (the secret itself is not kept).
#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({}, ***)", self.name)
    }
}

/// How this instance takes part in a fleet (every instance on one store is a worker).
#[derive(Debug, Clone)]
pub struct Fleet {
    pub worker_name: String,
    pub lease: Duration,
    pub sticky_delay: Duration,
    pub retry_interrupted: bool,
}

/// A worker name: letters, digits, `.`, `_` and `-`, at most 64 (a host name fits).
pub fn is_worker_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The machine's host name, as the default worker name.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| is_worker_name(s))
        .unwrap_or_else(|| "galley".to_string())
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// PostgreSQL, when set; SQLite in `data_dir` otherwise.
    pub store: Option<StoreUrl>,
    pub max_queued: usize,
    pub max_running: usize,
    pub compile_slots: usize,
    pub tokens: Vec<ApiToken>,
    pub cancel_grace: Duration,
    pub log_cap_bytes: u64,
    pub heartbeat: Duration,
    /// The fleet: this worker's name, its lease, the sticky delay, whether a dead worker's
    /// builds are queued again.
    pub fleet: Fleet,
    /// How long running builds may finish after SIGTERM (zero: cancelled at once).
    pub drain: Duration,
    pub cache_dir: Option<PathBuf>,
    pub cache_max_bytes: Option<u64>,
    pub max_builds: usize,
    pub max_age: Duration,
    pub http: HttpLimits,
    pub projects: BTreeMap<String, Project>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    #[error("no API token is set and the service would listen on {0}, which is not loopback: set GALLEY_API_TOKEN or token_file, or listen on 127.0.0.1")]
    OpenListen(SocketAddr),
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> ServeConfigError {
    ServeConfigError::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// Flags given to `galley serve`, applied over the file.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `NAME=PATH`, repeatable.
    pub projects: Vec<String>,
    /// `GALLEY_STORE` (an environment variable, never a flag: a password does not belong in argv).
    pub store: Option<String>,
}

/// A project name: lowercase letters, digits, `_` and `-`, starting with a letter or digit.
pub fn is_project_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

impl ServeConfig {
    /// Reads the file (if any), applies the flags, reads the tokens (`token_env` is the value of
    /// `GALLEY_API_TOKEN`), and validates everything.
    pub fn load(
        flags: &ServeFlags,
        token_env: Option<&str>,
    ) -> Result<ServeConfig, ServeConfigError> {
        let (file, base_dir) = match &flags.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ServeConfigError::Read {
                        path: path.clone(),
                        source,
                    })?;
                let file: ServeFile =
                    toml::from_str(&text).map_err(|e| ServeConfigError::Parse {
                        path: path.clone(),
                        message: e.to_string().trim().to_string(),
                    })?;
                let dir = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (file, dir)
            }
            None => (ServeFile::default(), PathBuf::from(".")),
        };
        Self::from_parts(file, &base_dir, flags, token_env)
    }

    /// Validates a parsed file with flags (paths in the file are relative to `base_dir`).
    pub fn from_parts(
        mut file: ServeFile,
        base_dir: &Path,
        flags: &ServeFlags,
        token_env: Option<&str>,
    ) -> Result<ServeConfig, ServeConfigError> {
        let rel = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        for spec in &flags.projects {
            let (name, path) = spec.split_once('=').ok_or_else(|| {
                invalid(
                    "--project",
                    format!("{spec:?} is not NAME=PATH (e.g. --project authd=fixtures/authd)"),
                )
            })?;
            // Flag paths are relative to the current directory, not the config file.
            let path = std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| PathBuf::from(path));
            let entry = file.projects.entry(name.to_string()).or_default();
            entry.path = Some(path);
            entry.git = None;
        }
        let listen_text = flags
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an address and port (e.g. 127.0.0.1:8700)"),
            )
        })?;
        let data_dir = match (&flags.data_dir, &file.data_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => rel(d),
            (None, None) => {
                return Err(invalid(
                    "data_dir",
                    "not set: give data_dir in the config file or --data-dir",
                ))
            }
        };
        let duration = |field: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => parse_duration(t).ok_or_else(|| {
                invalid(
                    field,
                    format!("{t:?} is not a duration (e.g. 10s, 5m, 30d)"),
                )
            }),
        };
        let cancel_grace = duration(
            "cancel_grace",
            &file.cancel_grace,
            crate::cancel::DEFAULT_GRACE,
        )?;
        let heartbeat = duration("heartbeat", &file.heartbeat, Duration::from_secs(15))?;
        if heartbeat.is_zero() {
            return Err(invalid("heartbeat", "must be at least 1s"));
        }
        let http = HttpLimits::from_file(&file.http, heartbeat)?;
        let drain = duration("drain", &file.drain, Duration::ZERO)?;
        let lease = duration("lease", &file.lease, Duration::from_secs(15))?;
        if lease < Duration::from_secs(3) {
            return Err(invalid(
                "lease",
                "must be at least 3s (a worker renews it every second)",
            ));
        }
        let fleet = Fleet {
            worker_name: match &file.worker_name {
                Some(n) if is_worker_name(n) => n.clone(),
                Some(n) => {
                    return Err(invalid(
                        "worker_name",
                        format!(
                        "{n:?} is not a worker name: letters, digits, '.', '_' and '-', at most 64"
                    ),
                    ))
                }
                None => machine_name(),
            },
            lease,
            sticky_delay: duration("sticky_delay", &file.sticky_delay, Duration::from_secs(10))?,
            retry_interrupted: file.retry_interrupted.unwrap_or(false),
        };
        let store = store_url(flags.store.as_deref(), file.store.as_deref())?;
        let max_age = duration(
            "retention.max_age",
            &file.retention.max_age,
            Duration::from_secs(30 * 86_400),
        )?;
        let positive = |field: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(invalid(field, "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_queued = positive("max_queued", file.max_queued, 20)?;
        let max_running = positive("max_running", file.max_running, 2)?;
        let compile_slots = positive("compile_slots", file.compile_slots, 1)?;
        let max_builds = positive("retention.max_builds", file.retention.max_builds, 500)?;
        let log_cap_bytes = match file.log_cap_bytes {
            Some(n) if n < 4096 => return Err(invalid("log_cap_bytes", "must be at least 4096")),
            Some(n) => n,
            None => 8 << 20,
        };

        let mut tokens = Vec::new();
        if let Some(t) = token_env.filter(|t| !t.is_empty()) {
            tokens.push(token("GALLEY_API_TOKEN", "api", t)?);
        }
        if let Some(path) = &file.token_file {
            let path = rel(path);
            let text = std::fs::read_to_string(&path).map_err(|source| ServeConfigError::Read {
                path: path.clone(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let field = format!("{} line {}", path.display(), n + 1);
                let (name, secret) = match line.split_once(char::is_whitespace) {
                    Some((name, secret)) => (name, secret.trim()),
                    None => ("default", line),
                };
                tokens.push(token(&field, name, secret)?);
            }
            if tokens.is_empty() {
                return Err(invalid(
                    "token_file",
                    format!("{} holds no token", path.display()),
                ));
            }
        }
        if tokens.is_empty() && !listen.ip().is_loopback() {
            return Err(ServeConfigError::OpenListen(listen));
        }

        let mut projects = BTreeMap::new();
        for (name, p) in file.projects {
            let project = project(name.clone(), &p, &rel)?;
            projects.insert(name, project);
        }
        if projects.is_empty() {
            return Err(invalid(
                "projects",
                "no project to build: add a [projects.NAME] table or --project NAME=PATH",
            ));
        }
        Ok(ServeConfig {
            listen,
            data_dir,
            store,
            max_queued,
            max_running,
            compile_slots,
            tokens,
            cancel_grace,
            log_cap_bytes,
            heartbeat,
            fleet,
            drain,
            cache_dir: file.cache_dir.as_deref().map(rel),
            cache_max_bytes: file.cache_max_bytes,
            max_builds,
            max_age,
            http,
            projects,
        })
    }
}

/// The store: `GALLEY_STORE` over the file's `store`; only PostgreSQL URLs.
fn store_url(env: Option<&str>, file: Option<&str>) -> Result<Option<StoreUrl>, ServeConfigError> {
    let Some(url) = env.filter(|s| !s.is_empty()).or(file) else {
        return Ok(None);
    };
    let shown = redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(
            "store",
            format!("{shown:?} is not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB); leave store unset for SQLite in data_dir"),
        ));
    }
    Ok(Some(StoreUrl(url.to_string())))
}

/// One `[projects.NAME]` table, checked: a directory with a Cargo.toml or a git repository,
/// a push repository without tag, a base reference galley can read.
fn project(
    name: String,
    p: &ProjectFile,
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Result<Project, ServeConfigError> {
    let field = format!("projects.{name}");
    if !is_project_name(&name) {
        return Err(invalid(
            &field,
            "project names use lowercase letters, digits, `_` and `-`",
        ));
    }
    let source = match (&p.path, &p.git) {
        (Some(path), None) => {
            let path = rel(path);
            let path = path.canonicalize().map_err(|_| {
                invalid(
                    format!("{field}.path"),
                    format!("{} does not exist", path.display()),
                )
            })?;
            if !path.join("Cargo.toml").is_file() {
                return Err(invalid(
                    format!("{field}.path"),
                    format!("{} has no Cargo.toml", path.display()),
                ));
            }
            Source::Path(path)
        }
        (None, Some(git)) => {
            if git.is_empty() || git.starts_with('-') {
                return Err(invalid(
                    format!("{field}.git"),
                    "give a repository path or URL",
                ));
            }
            // A local repository path is made absolute; URLs are kept as written.
            let local = rel(Path::new(git));
            if !git.contains("://") && !git.contains('@') && local.exists() {
                Source::Git(local.display().to_string())
            } else {
                Source::Git(git.clone())
            }
        }
        _ => {
            return Err(invalid(
                &field,
                "give exactly one of `path` (a directory) or `git` (a repository)",
            ))
        }
    };
    let push = match &p.push {
        None => None,
        Some(r) => match crate::registry::Reference::parse(r) {
            Ok(r) if r.tag.is_none() && r.digest.is_none() => Some(r),
            _ => {
                return Err(invalid(
                    format!("{field}.push"),
                    format!("{r:?} is not a repository (host/repo, no tag)"),
                ))
            }
        },
    };
    if let Some(url) = &p.sccache {
        crate::toolchain::sccache::SccacheSpec::parse(url)
            .map_err(|why| invalid(format!("{field}.sccache"), why))?;
    }
    if let Some(r) = &p.cache_repository {
        match crate::registry::Reference::parse(r) {
            Ok(r) if r.tag.is_none() && r.digest.is_none() => {}
            _ => {
                return Err(invalid(
                    format!("{field}.cache_repository"),
                    format!("{r:?} is not a repository (host/repo, no tag)"),
                ))
            }
        }
    }
    if let Some(b) = &p.base {
        crate::registry::reference::BaseRef::parse(b)
            .map_err(|e| invalid(format!("{field}.base"), e.to_string()))?;
    }
    let watch_base = match &p.watch_base {
        None => None,
        Some(t) => match parse_duration(t) {
            Some(d) if d >= Duration::from_secs(1) => Some(d),
            _ => {
                return Err(invalid(
                    format!("{field}.watch_base"),
                    format!("{t:?} is not a duration of a second or more (e.g. 6h, 30m)"),
                ))
            }
        },
    };
    Ok(Project {
        name,
        source,
        push,
        base: p.base.clone(),
        watch_base,
        cache_repository: p.cache_repository.clone(),
        cache_key_file: p.cache_key_file.as_deref().map(rel),
        sccache: p.sccache.clone(),
        insecure: p.registry.insecure.clone(),
        ca_bundle: p.registry.ca_bundle.as_deref().map(rel),
    })
}

fn token(field: &str, name: &str, secret: &str) -> Result<ApiToken, ServeConfigError> {
    if !is_project_name(name) {
        return Err(invalid(
            field,
            "token names use lowercase letters, digits, `_` and `-`",
        ));
    }
    if secret.len() < 16 || secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            "a token must be at least 16 characters without spaces (e.g. `openssl rand -hex 24`)",
        ));
    }
    Ok(ApiToken {
        name: name.to_string(),
        sha256: sha256(secret.as_bytes()),
    })
}

/// sha256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str, flags: &ServeFlags, token: Option<&str>) -> Result<ServeConfig, String> {
        let file: ServeFile = toml::from_str(toml).map_err(|e| e.to_string())?;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        ServeConfig::from_parts(file, &fixtures, flags, token).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_full_file_with_defaults() {
        let c = parse(
            "data_dir = \"/tmp/g\"\n[projects.tiny]\npath = \"tiny\"\npush = \"127.0.0.1:5000/team/tiny\"\n",
            &ServeFlags::default(),
            None,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!((c.max_queued, c.compile_slots), (20, 1));
        assert!(
            matches!(&c.projects["tiny"].source, Source::Path(p) if p.ends_with("fixtures/tiny"))
        );
        assert_eq!(
            c.projects["tiny"].push.as_ref().unwrap().repository,
            "team/tiny"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let flags = ServeFlags::default();
        for (toml, want) in [
            ("data_dir = \"/x\"\nlisen = \"1\"", "lisen"),
            (
                "data_dir = \"/x\"\n[projects.t]\npath = \"tiny\"\ngit = \"x\"",
                "exactly one",
            ),
            (
                "data_dir = \"/x\"\n[projects.T]\npath = \"tiny\"",
                "lowercase",
            ),
            (
                "data_dir = \"/x\"\ncompile_slots = 0\n[projects.t]\npath = \"tiny\"",
                "at least 1",
            ),
            (
                "data_dir = \"/x\"\n[projects.t]\npath = \"nope\"",
                "does not exist",
            ),
            ("[projects.t]\npath = \"tiny\"", "data_dir"),
            ("data_dir = \"/x\"", "no project"),
            ("data_dir = \"/x\"\napi_token = \"secret\"", "api_token"),
        ] {
            let err = parse(toml, &flags, None).unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[test]
    fn refuses_to_listen_openly_without_a_token() {
        let flags = ServeFlags {
            listen: Some("0.0.0.0:8700".into()),
            projects: vec![format!("t={}/fixtures/tiny", env!("CARGO_MANIFEST_DIR"))],
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let err = parse("", &flags, None).unwrap_err();
        assert!(err.contains("not loopback"), "{err}");
        let c = parse("", &flags, Some("a-long-enough-token-123")).unwrap();
        assert_eq!(c.tokens[0].name, "api");
        assert!(!format!("{:?}", c.tokens).contains("a-long-enough"));
        assert!(parse("", &flags, Some("short"))
            .unwrap_err()
            .contains("16 characters"));
    }
}
