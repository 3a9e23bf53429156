//! A harness around the real CNCF distribution registry (Debian's `docker-registry`), in three auth
//! modes, plus a tiny token issuer for distribution's bearer-token auth. The tests at the bottom
//! prove the harness with independent clients (skopeo, curl).
//!
//! What distribution 2.8.2 checks in a token (found by probing it; see `issue_token`):
//! - header `alg` RS256 and an `x5c` chain (standard base64 DER, padded) whose first certificate
//!   verifies against `rootcertbundle`; a self-signed leaf that is itself in the bundle is accepted
//!   (no separate CA needed). No `x5c` (nor `jwk`): "unable to get token signing key"; a cert not in
//!   the bundle: "x509: certificate signed by unknown authority";
//! - `iss` equal to `issuer`, `aud` a string (an array is a parse error) equal to `service`;
//! - `exp` required (missing counts as 1970), `nbf` optional, both with 60 s leeway;
//! - `access` entries `{type, name, actions}` covering the request, otherwise 401;
//! - `sub`, `iat`, `jti` and the header's `typ` are not checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{require, run_ok};

const SERVICE: &str = "galley-test";
const ISSUER: &str = "galley-test-issuer";

/// How the registry authenticates clients.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No authentication at all.
    Anonymous,
    /// htpasswd basic auth with one user (bcrypt hash made by `htpasswd -Bbn`).
    Basic { user: String, password: String },
    /// distribution's token auth: the registry answers 401 with a Bearer challenge pointing at our issuer,
    /// which checks these credentials (HTTP Basic on the token request) and signs JWTs.
    Token {
        user: String,
        password: String,
        expires_in: u64,
    },
    /// Token auth whose issuer grants only `pull`, whatever is asked for (a read-only token).
    TokenReadOnly { user: String, password: String },
}

/// A running `docker-registry serve` on 127.0.0.1, with its temp dir and optional token issuer.
pub struct RealRegistry {
    child: Child,
    port: u16,
    issuer: Option<Issuer>,
    dir: tempfile::TempDir,
}

/// The token issuer thread and what it has seen.
struct Issuer {
    port: u16,
    stop: Arc<AtomicBool>,
    state: Arc<IssuerState>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct IssuerState {
    issued: AtomicUsize,
    requests: Mutex<Vec<(Vec<String>, bool)>>,
}

impl RealRegistry {
    /// Starts the registry (and issuer); waits until GET /v2/ answers (200 or 401), at most 20 s; panics with the registry's stderr otherwise.
    pub fn start(auth: Auth) -> RealRegistry {
        require("docker-registry");
        let dir = tempfile::TempDir::new().unwrap();
        let tmp = dir.path();
        let (auth_yaml, issuer) = match &auth {
            Auth::Anonymous => (String::new(), None),
            Auth::Basic { user, password } => {
                require("htpasswd");
                let out = run_ok(Command::new("htpasswd").args(["-Bbn", user, password]));
                let path = tmp.join("htpasswd");
                std::fs::write(&path, &out.stdout).unwrap();
                let realm = "auth:\n  htpasswd:\n    realm: galley-test\n";
                (format!("{realm}    path: {}\n", path.display()), None)
            }
            Auth::Token { .. } | Auth::TokenReadOnly { .. } => {
                let (user, password, expires_in, read_only) = match &auth {
                    Auth::Token {
                        user,
                        password,
                        expires_in,
                    } => (user, password, *expires_in, false),
                    Auth::TokenReadOnly { user, password } => (user, password, 300, true),
                    _ => unreachable!("matched above"),
                };
                require("openssl");
                let req =
                    "req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 3650";
                let subj = ["-subj", "/CN=galley-test-issuer"];
                run_ok(
                    Command::new("openssl")
                        .current_dir(tmp)
                        .args(req.split(' '))
                        .args(subj),
                );
                let der = run_ok(
                    Command::new("openssl")
                        .current_dir(tmp)
                        .args(["x509", "-in", "cert.pem", "-outform", "DER"]),
                )
                .stdout;
                let issuer = Issuer::start(Signer {
                    user: user.clone(),
                    password: password.clone(),
                    expires_in,
                    read_only,
                    cert_der: der,
                    key: tmp.join("key.pem"),
                });
                let yaml = format!(
                    "auth:\n  token:\n    realm: \"http://127.0.0.1:{}/token\"\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    issuer.port,
                    tmp.join("cert.pem").display()
                );
                (yaml, Some(issuer))
            }
        };

        let (child, port) = launch(tmp, &auth_yaml);
        RealRegistry {
            child,
            port,
            issuer,
            dir,
        }
    }

    /// Starts an anonymous registry serving HTTPS with a fresh self-signed certificate for
    /// 127.0.0.1; returns it with the certificate's PEM path (a CA bundle for clients).
    pub fn start_tls() -> (RealRegistry, std::path::PathBuf) {
        require("docker-registry");
        require("openssl");
        let dir = tempfile::TempDir::new().unwrap();
        let tmp = dir.path();
        run_ok(Command::new("openssl").current_dir(tmp).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.pem",
            "-days",
            "30",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // rustls refuses a CA certificate as a server's own certificate.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ]));
        // Appended right after the `http:` section's last key, so it lands inside it.
        let yaml = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            tmp.join("tls.pem").display(),
            tmp.join("tls.key").display()
        );
        let (child, port) = launch(tmp, &yaml);
        let cert = tmp.join("tls.pem");
        (
            RealRegistry {
                child,
                port,
                issuer: None,
                dir,
            },
            cert,
        )
    }

    /// "127.0.0.1:PORT"
    /// The registry's storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Token requests the issuer answered with a token (0 unless Auth::Token).
    pub fn tokens_issued(&self) -> usize {
        self.issuer
            .as_ref()
            .map_or(0, |i| i.state.issued.load(Ordering::SeqCst))
    }

    /// Every token request the issuer saw: (scope query values, whether credentials were right).
    pub fn token_requests(&self) -> Vec<(Vec<String>, bool)> {
        self.issuer
            .as_ref()
            .map_or_else(Vec::new, |i| i.state.requests.lock().unwrap().clone())
    }

    /// The registry's combined stdout/stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for RealRegistry {
    /// Kills the registry; the issuer stops and the temp dir goes when the fields drop, in that order.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the config, spawns the registry on a free port and waits for it; retries when the port
/// was taken in between. Returns the child and its port.
fn launch(tmp: &Path, auth_yaml: &str) -> (Child, u16) {
    let log_path = tmp.join("registry.log");
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = tmp.join("config.yml");
        let data = tmp.join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: galley-test-secret\n{auth_yaml}",
                data.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config).stdin(Stdio::null());
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        // REGISTRY_* variables override the config file: keep the test's config authoritative.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("cannot run docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if child.try_wait().unwrap().is_some() {
                let log = log();
                if log.contains("address already in use") {
                    break; // someone took the port: try another one
                }
                panic!("docker-registry exited; its log:\n{log}");
            }
            // A TLS registry answers a plain HTTP probe with 400: it is up.
            let tls = auth_yaml.starts_with("  tls:");
            if matches!(probe(port), Some(200 | 401)) || (tls && probe(port) == Some(400)) {
                return (child, port);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("docker-registry not ready after 20 s; its log:\n{}", log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("docker-registry could not bind a free port in 5 attempts");
}

/// GET /v2/ on the port: the status, if a distribution registry answered.
fn probe(port: u16) -> Option<u16> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    if resp.contains("Client sent an HTTP request to an HTTPS server") {
        return Some(400);
    }
    if !resp
        .to_ascii_lowercase()
        .contains("docker-distribution-api-version: registry/2.0")
    {
        return None;
    }
    resp.split_whitespace().nth(1)?.parse().ok()
}

/// What the issuer needs to check credentials and sign tokens.
struct Signer {
    user: String,
    password: String,
    expires_in: u64,
    /// Grant only `pull`.
    read_only: bool,
    cert_der: Vec<u8>,
    key: std::path::PathBuf,
}

impl Issuer {
    fn start(signer: Signer) -> Issuer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(IssuerState::default());
        let (stop2, state2) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve_token(conn, &signer, &state2);
                }
            }
        });
        Issuer {
            port,
            stop,
            state,
            thread: Some(thread),
        }
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes up accept()
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one HTTP request: `GET /token?service=..&scope=..` with HTTP Basic credentials.
fn serve_token(mut conn: TcpStream, signer: &Signer, state: &IssuerState) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = value.trim().to_string();
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" || method != "GET" {
        return respond(&mut conn, "404 Not Found", "", r#"{"error":"not found"}"#);
    }
    // Other parameters (service, account, client_id, offline_token) are accepted and ignored.
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .map(|(_, v)| percent_decode(v))
        .collect();
    let expected = b64(
        format!("{}:{}", signer.user, signer.password).as_bytes(),
        false,
    );
    let ok = matches!(authorization.split_once(' '),
        Some((scheme, cred)) if scheme.eq_ignore_ascii_case("basic") && cred.trim() == expected);
    state.requests.lock().unwrap().push((scopes.clone(), ok));
    if !ok {
        return respond(
            &mut conn,
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"galley-test-issuer\"\r\n",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
        );
    }
    match issue_token(signer, &scopes) {
        Ok(body) => {
            state.issued.fetch_add(1, Ordering::SeqCst);
            respond(&mut conn, "200 OK", "", &body)
        }
        Err(e) => respond(
            &mut conn,
            "500 Internal Server Error",
            "",
            &json!({ "error": e.to_string() }).to_string(),
        ),
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The token response body: a JWT signed with RS256 through `openssl dgst`, granting every
/// requested scope (`type:name:actions`, several per value when separated by spaces).
fn issue_token(signer: &Signer, scopes: &[String]) -> std::io::Result<String> {
    let now = unix_now().as_secs();
    let access: Vec<_> = scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter_map(|scope| {
            let (rest, actions) = scope.rsplit_once(':')?;
            let (kind, name) = rest.split_once(':')?;
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| !a.is_empty() && (!signer.read_only || *a == "pull"))
                .collect();
            Some(json!({ "type": kind, "name": name, "actions": actions }))
        })
        .collect();
    let header = json!({ "alg": "RS256", "typ": "JWT", "x5c": [b64(&signer.cert_der, false)] });
    let claims = json!({
        "iss": ISSUER, "sub": signer.user, "aud": SERVICE,
        "exp": now + signer.expires_in, "nbf": now - 5, "iat": now, "jti": jti(),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), true),
        b64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&signer.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(signing_input.as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(std::io::Error::other(format!("openssl dgst: {err}")));
    }
    let jwt = format!("{signing_input}.{}", b64(&out.stdout, true));
    Ok(json!({
        "token": jwt, "access_token": jwt, "expires_in": signer.expires_in,
        "issued_at": rfc3339(now),
    })
    .to_string())
}

/// Base64: standard alphabet with padding, or base64url without padding (JWT).
fn b64(data: &[u8], url: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (b[i], hex) {
            (b'%', Some(h)) => {
                out.push(u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap());
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (d, m) = (
        doy - (153 * mp + 2) / 5 + 1,
        if mp < 10 { mp + 3 } else { mp - 9 },
    );
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// A unique token id: hash of the time, the process and a counter.
fn jti() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let seed = format!("{:?}-{}-{n}", unix_now(), std::process::id());
    hex::encode(&Sha256::digest(seed.as_bytes())[..16])
}

// ---- Tests: the harness checked with independent clients (skopeo, curl). ----

/// A tiny OCI layout made by umoci; returns the skopeo reference `oci:DIR:1`.
fn tiny_layout(dir: &Path) -> String {
    require("umoci");
    let layout = dir.join("layout");
    run_ok(
        Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout),
    );
    run_ok(
        Command::new("umoci")
            .arg("new")
            .arg("--image")
            .arg(format!("{}:1", layout.display())),
    );
    format!("oci:{}:1", layout.display())
}

/// `skopeo copy SRC docker://HOST/team/x:1`, or `skopeo inspect` of it when `src` is None,
/// with optional `user:pass` credentials.
fn skopeo(reg: &RealRegistry, src: Option<&str>, creds: Option<&str>) -> std::process::Output {
    require("skopeo");
    let (verb, tls, creds_flag) = match src {
        Some(_) => ("copy", "--dest-tls-verify=false", "--dest-creds"),
        None => ("inspect", "--tls-verify=false", "--creds"),
    };
    let mut cmd = Command::new("skopeo");
    cmd.args([verb, tls]);
    if let Some(c) = creds {
        cmd.args([creds_flag, c]);
    }
    cmd.args(src)
        .arg(format!("docker://{}/team/x:1", reg.host()));
    cmd.output().unwrap()
}

#[track_caller]
fn assert_ok(out: &std::process::Output, reg: &RealRegistry) {
    assert!(
        out.status.success(),
        "skopeo failed: {}\nregistry log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        reg.log()
    );
}

#[test]
fn anonymous_registry_accepts_skopeo_push_and_inspect() {
    let tmp = tempfile::TempDir::new().unwrap();
    let src = tiny_layout(tmp.path());
    let reg = RealRegistry::start(Auth::Anonymous);
    assert_ok(&skopeo(&reg, Some(&src), None), &reg);
    let out = skopeo(&reg, None, None);
    assert_ok(&out, &reg);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Name"], format!("{}/team/x", reg.host()));
    assert_eq!((reg.tokens_issued(), reg.token_requests().len()), (0, 0));
}

#[test]
fn basic_auth_registry_checks_the_password() {
    let tmp = tempfile::TempDir::new().unwrap();
    let src = tiny_layout(tmp.path());
    let (user, password) = ("alice".to_string(), "s3cret".to_string());
    let reg = RealRegistry::start(Auth::Basic { user, password });
    let push = |creds| skopeo(&reg, Some(&src), creds);
    assert!(
        !push(Some("alice:wrong")).status.success(),
        "wrong password accepted"
    );
    assert!(!push(None).status.success(), "anonymous push accepted");
    assert_ok(&push(Some("alice:s3cret")), &reg);
    assert_ok(&skopeo(&reg, None, Some("alice:s3cret")), &reg);
    assert!(
        !skopeo(&reg, None, None).status.success(),
        "anonymous inspect accepted"
    );
}

#[test]
fn token_auth_registry_uses_our_issuer() {
    let tmp = tempfile::TempDir::new().unwrap();
    let src = tiny_layout(tmp.path());
    let (user, password) = ("alice".to_string(), "s3cret".to_string());
    let reg = RealRegistry::start(Auth::Token {
        user,
        password,
        expires_in: 300,
    });
    let push = |creds| skopeo(&reg, Some(&src), creds);

    // The challenge points at our issuer.
    let out = run_ok(Command::new("curl").args(["-si", &format!("http://{}/v2/", reg.host())]));
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    let realm = format!(
        "http://127.0.0.1:{}/token",
        reg.issuer.as_ref().unwrap().port
    );
    let challenge = format!("www-authenticate: bearer realm=\"{realm}\",service=\"galley-test\"");
    assert!(text.contains(&challenge), "{text}");

    // Wrong password: the issuer refuses, so the push fails.
    assert!(
        !push(Some("alice:wrong")).status.success(),
        "wrong password accepted"
    );
    assert_eq!(reg.tokens_issued(), 0);
    assert!(reg.token_requests().iter().any(|(_, ok)| !ok));

    assert_ok(&push(Some("alice:s3cret")), &reg);
    assert!(reg.tokens_issued() > 0);
    let requests = reg.token_requests();
    let push_scope = "repository:team/x:pull,push".to_string();
    let granted = |(scopes, ok): &(Vec<String>, bool)| *ok && scopes.contains(&push_scope);
    assert!(requests.iter().any(granted), "{requests:?}");
    assert_ok(&skopeo(&reg, None, Some("alice:s3cret")), &reg);
}

#[test]
fn encoders_match_known_values() {
    assert_eq!(b64(b"foob", false), "Zm9vYg==");
    assert_eq!(b64(b"fooba", false), "Zm9vYmE=");
    assert_eq!(b64(b"foobar", false), "Zm9vYmFy");
    assert_eq!(b64(&[0xfb, 0xff], true), "-_8");
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_825_599), "2000-02-29T11:59:59Z");
    let scope = "repository%3Ateam%2Fx%3Apull%2Cpush";
    assert_eq!(percent_decode(scope), "repository:team/x:pull,push");
}
