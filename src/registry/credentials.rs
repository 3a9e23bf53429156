//! Registry credentials: given on the command line, or read from Docker's config.json (`auths`,
//! `credHelpers`, `credsStore` through `docker-credential-<name> get`). Secrets never print.

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;

use crate::proc;

/// A secret string. `Debug` and `Display` show `***`, so it cannot leak through formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What galley authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: Secret,
    },
    /// An OAuth2 refresh token (`identitytoken` in config.json), exchanged at the token realm.
    IdentityToken(Secret),
}

impl Credential {
    /// Every string whose appearance in an error or log would leak this credential.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            Credential::Basic { username, password } => {
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()));
                vec![password.expose().to_string(), b64]
            }
            Credential::IdentityToken(t) => vec![t.expose().to_string()],
        }
        .into_iter()
        .filter(|s| s.len() >= 3)
        .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON for a Docker config ({detail}): fix or remove it")]
    Malformed { path: PathBuf, detail: String },
    #[error("the auth entry for {registry} in {path} is not base64 of user:password")]
    BadAuth { registry: String, path: PathBuf },
    #[error("credential helper docker-credential-{helper} (configured for {registry} in {path}) is not installed: install it or remove it from the config")]
    HelperMissing {
        helper: String,
        registry: String,
        path: PathBuf,
    },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {detail}")]
    HelperFailed {
        helper: String,
        registry: String,
        detail: String,
    },
    #[error("credential helper name {0:?} in the Docker config is not allowed")]
    BadHelperName(String),
}

/// Where Docker keeps its config: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// An auth file galley reads, and what points at it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuthFile {
    pub path: PathBuf,
    /// `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `~/.config/containers/auth.json`, `DOCKER_CONFIG` or `~/.docker/config.json`.
    pub origin: &'static str,
    /// Only Docker's config has a `credsStore` that applies to every registry.
    #[serde(skip)]
    docker: bool,
}

/// The auth files, in the order podman, skopeo and buildah read them (containers-auth.json(5)),
/// then Docker's config.
pub fn auth_files() -> Vec<AuthFile> {
    let mut out = Vec::new();
    let file = |path: PathBuf, origin: &'static str, docker: bool| AuthFile {
        path,
        origin,
        docker,
    };
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(file(PathBuf::from(p), "REGISTRY_AUTH_FILE", false));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(file(
            PathBuf::from(d).join("containers/auth.json"),
            "$XDG_RUNTIME_DIR/containers/auth.json",
            false,
        ));
    }
    if let Some(h) = std::env::var_os("HOME") {
        out.push(file(
            PathBuf::from(h).join(".config/containers/auth.json"),
            "~/.config/containers/auth.json",
            false,
        ));
    }
    if let Some(p) = docker_config_path() {
        let origin = if std::env::var_os("DOCKER_CONFIG").is_some() {
            "DOCKER_CONFIG"
        } else {
            "~/.docker/config.json"
        };
        out.push(file(p, origin, true));
    }
    out
}

/// Where a credential was found: the file, the part of it, and the helper that answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    pub file: AuthFile,
    /// `auths`, `credHelpers` or `credsStore`.
    pub entry: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
}

/// The keys a Docker config may use for a registry.
fn config_keys(registry: &str) -> Vec<String> {
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        return [
            "https://index.docker.io/v1/",
            "https://index.docker.io/v1",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ]
        .map(String::from)
        .to_vec();
    }
    vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ]
}

/// Strips scheme and path from a config key: `https://host/v1/` → `host`.
fn key_host(key: &str) -> &str {
    let k = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Looks a registry up in the auth files, in order. `Ok(None)` means anonymous (no file has an
/// entry for it).
pub fn lookup(registry: &str) -> Result<Option<(Credential, Found)>, CredentialError> {
    for file in auth_files() {
        if let Some(found) = from_file(&file, registry)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The credential for a registry from the auth files, without where it came from.
pub fn from_docker_config(registry: &str) -> Result<Option<Credential>, CredentialError> {
    Ok(lookup(registry)?.map(|(c, _)| c))
}

fn from_file(
    file: &AuthFile,
    registry: &str,
) -> Result<Option<(Credential, Found)>, CredentialError> {
    let path = file.path.clone();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CredentialError::Read { path, source }),
    };
    // The parse error text could quote the file, which may hold secrets: keep only its position.
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CredentialError::Malformed {
            path: path.clone(),
            detail: format!("line {}, column {}", e.line(), e.column()),
        })?;
    let found = |entry: &'static str, helper: Option<&str>| Found {
        file: file.clone(),
        entry,
        helper: helper.map(str::to_string),
    };
    let keys = config_keys(registry);
    let find = |table: &str| -> Option<&serde_json::Value> {
        let map = config.get(table)?.as_object()?;
        keys.iter().find_map(|k| map.get(k)).or_else(|| {
            map.iter()
                .find(|(k, _)| key_host(k) == key_host(&keys[0]))
                .map(|(_, v)| v)
        })
    };
    if let Some(helper) = find("credHelpers").and_then(|v| v.as_str()) {
        return Ok(
            run_helper(helper, registry, &path)?.map(|c| (c, found("credHelpers", Some(helper))))
        );
    }
    if file.docker {
        if let Some(helper) = config.get("credsStore").and_then(|v| v.as_str()) {
            if let Some(c) = run_helper(helper, registry, &path)? {
                return Ok(Some((c, found("credsStore", Some(helper)))));
            }
        }
    }
    let Some(entry) = find("auths") else {
        return Ok(None);
    };
    let auths = |c: Credential| Some((c, found("auths", None)));
    if let Some(token) = entry
        .get("identitytoken")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
    {
        return Ok(auths(Credential::IdentityToken(Secret::new(token))));
    }
    if let Some(auth) = entry
        .get("auth")
        .and_then(|v| v.as_str())
        .filter(|a| !a.is_empty())
    {
        let bad = || CredentialError::BadAuth {
            registry: registry.to_string(),
            path: path.clone(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(auths(Credential::Basic {
            username: user.to_string(),
            password: Secret::new(pass),
        }));
    }
    match (
        entry.get("username").and_then(|v| v.as_str()),
        entry.get("password").and_then(|v| v.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(auths(Credential::Basic {
            username: u.to_string(),
            password: Secret::new(p),
        })),
        _ => Ok(None),
    }
}

/// Environment credential helpers may read, by prefix: AWS (ecr-login), Google (gcloud, gcr),
/// Azure (acr-env), D-Bus and the secret service (secretservice, pass), gpg.
const HELPER_ENV_PREFIXES: &[&str] = &[
    "AWS_",
    "GOOGLE_",
    "CLOUDSDK_",
    "AZURE_",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "PASSWORD_STORE_",
    "GNUPGHOME",
    "GPG_AGENT_INFO",
];

/// Runs `docker-credential-<helper> get` with the server on stdin.
fn run_helper(
    helper: &str,
    registry: &str,
    path: &std::path::Path,
) -> Result<Option<Credential>, CredentialError> {
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
    {
        return Err(CredentialError::BadHelperName(helper.to_string()));
    }
    let program = format!("docker-credential-{helper}");
    let server = if config_keys(registry)[0].starts_with("https://index.docker.io") {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    let failed = |detail: String| CredentialError::HelperFailed {
        helper: helper.to_string(),
        registry: registry.to_string(),
        detail,
    };
    let mut cmd = proc::command(&program);
    // Helpers need their cloud's or keyring's settings; compilers never get these.
    for (k, v) in std::env::vars_os() {
        let key = k.to_string_lossy();
        if HELPER_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env(&k, v);
        }
    }
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::HelperMissing {
                helper: helper.to_string(),
                registry: registry.to_string(),
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let started = std::time::Instant::now();
    while child
        .try_wait()
        .map_err(|e| failed(e.to_string()))?
        .is_none()
    {
        if started.elapsed() > Duration::from_secs(30) {
            proc::kill_group(&mut child);
            return Err(failed("did not answer within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains("credentials not found") {
            return Ok(None);
        }
        // Only the exit status: a helper's output may contain secrets.
        return Err(failed(format!("exited with {}", out.status)));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| failed("printed something that is not JSON".into()))?;
    let user = v
        .get("Username")
        .and_then(|u| u.as_str())
        .unwrap_or_default();
    let secret = v.get("Secret").and_then(|s| s.as_str()).unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    if user == "<token>" {
        return Ok(Some(Credential::IdentityToken(Secret::new(secret))));
    }
    Ok(Some(Credential::Basic {
        username: user.to_string(),
        password: Secret::new(secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_format() {
        let c = Credential::Basic {
            username: "u".into(),
            password: Secret::new("sentinel-pw"),
        };
        assert!(!format!("{c:?}").contains("sentinel-pw"));
        assert!(c.secrets().contains(&"sentinel-pw".to_string()));
    }

    #[test]
    fn config_keys_normalize_docker_hub() {
        assert_eq!(config_keys("docker.io")[0], "https://index.docker.io/v1/");
        assert_eq!(key_host("https://ghcr.io/v2/"), "ghcr.io");
    }
}
