//! An in-process fake OCI distribution registry with fault injection, for registry client tests.
//!
//! Plain HTTP/1.1 on a `std::net::TcpListener`: one accepting thread, one thread per connection,
//! one request per connection (every response says `Connection: close`). Content lives in memory.
//! A malformed request gets a 400; nothing a client sends can take the server down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

mod routes;
mod server;
mod tests;

use server::{finish, read_body, read_head};

/// Faults to inject. `Faults::default()` is a well-behaved registry without authentication.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other> answers 202 + Location of a new upload session instead of mounting (a registry that does not support mount).
    pub mount_returns_202: bool,
    /// Location headers are relative ("/v2/<repo>/blobs/uploads/<uuid>?_state=<opaque>") instead of absolute ("http://127.0.0.1:PORT/v2/...").
    pub relative_location: bool,
    /// Require Bearer tokens: requests without a valid token get 401 with
    /// `WWW-Authenticate: Bearer realm="http://127.0.0.1:PORT/token",service="fake-registry",scope="repository:<repo>:pull,push"` (for /v2/ itself no scope).
    pub bearer: bool,
    /// In bearer mode: each issued token is accepted for this many requests, then rejected with 401 (forces a token refresh mid-push).
    pub token_valid_for_requests: Option<u32>,
    /// The first POST .../blobs/uploads/ (a new upload, not a mount) answers 429 with `Retry-After: 1` and error code TOOMANYREQUESTS.
    pub rate_limit_first_upload_post: bool,
    /// Like `rate_limit_first_upload_post`, with `Retry-After` as an HTTP date two seconds ahead.
    pub rate_limit_first_upload_post_until_date: bool,
    /// The first PUT that completes an upload answers 500 (error code UNKNOWN) without storing anything.
    pub fail_first_blob_put: bool,
    /// The first PUT that completes an upload reads about half of the body, then closes the connection without answering.
    /// std cannot set SO_LINGER, but closing a socket with unread data makes the kernel send a RST anyway.
    pub reset_first_blob_put: bool,
    /// Every PUT /v2/<repo>/manifests/<ref> answers 400 with error code MANIFEST_INVALID.
    pub refuse_manifest_put: bool,
    /// Every POST .../blobs/uploads/ (not a mount) answers 429 with `Retry-After: <secs>`.
    pub rate_limit_upload_posts: Option<u64>,
    /// A PUT that completes a blob upload is read, then never answered (a stalled registry).
    pub stall_blob_puts: bool,
    /// Every PUT of a manifest by tag answers 400 MANIFEST_INVALID (pushes by digest work).
    pub refuse_tag_put: bool,
    /// On every PUT of a manifest by tag, this file is read and its content (or `None` when
    /// it does not exist) recorded: a witness of what existed when a tag moved.
    pub tag_put_witness: Option<std::path::PathBuf>,
    /// Require HTTP Basic with these credentials on every /v2/ request (401 with `WWW-Authenticate: Basic realm="fake-registry"` otherwise). In bearer mode the token endpoint checks them instead (when Some).
    pub basic_auth: Option<(String, String)>,
}

/// One request the registry received, as it saw it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The HTTP method ("" for a request too malformed to have one).
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The status answered; 0 when the connection was reset instead.
    pub status: u16,
    /// The Authorization header as received, if any.
    pub authorization: Option<String>,
    /// Body bytes received.
    pub body_len: usize,
}

/// A running fake registry on 127.0.0.1; stops accepting connections when dropped.
pub struct FakeRegistry {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MAX_BODY: usize = 1 << 30;

struct Upload {
    repo: String,
    data: Vec<u8>,
    state: String,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    /// (repo, digest) pairs: which blobs each repository may serve.
    links: HashSet<(String, String)>,
    /// (repo, digest) -> (media type, bytes).
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    /// (repo, tag) -> digest.
    tags: BTreeMap<(String, String), String>,
    uploads: HashMap<String, Upload>,
    /// token -> requests it may still authorize (None: unlimited).
    tokens: HashMap<String, Option<u32>>,
    tokens_issued: usize,
    log: Vec<RequestLog>,
    /// The "first ..." faults that already fired.
    fired: HashSet<&'static str>,
    /// What `tag_put_witness` held at each tag PUT, in order.
    witnessed: Vec<Option<String>>,
}

struct Shared {
    faults: Faults,
    addr: SocketAddr,
    stop: AtomicBool,
    state: Mutex<State>,
}

impl FakeRegistry {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub fn start(faults: Faults) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            faults,
            addr,
            stop: AtomicBool::new(false),
            state: Mutex::default(),
        });
        let sh = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || sh.serve(stream));
            }
        });
        FakeRegistry {
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// "127.0.0.1:PORT", for image references.
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    /// The address the registry listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Every request so far, in order (token endpoint and malformed requests included).
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().log.clone()
    }

    /// The blob with this digest, whatever repositories it is linked into.
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        self.shared.lock().blobs.get(digest).cloned()
    }

    /// Whether `repo` can serve the blob `digest`.
    pub fn repo_has_blob(&self, repo: &str, digest: &str) -> bool {
        self.shared.lock().has_blob(repo, digest)
    }

    /// The (media type, exact bytes) of a manifest, by tag or digest.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        self.shared.lock().resolve(repo, reference)
    }

    /// What the referrers API would list for `subject` in `repo`: (artifactType, digest) of
    /// each stored manifest whose `subject` is it, sorted.
    pub fn referrers(&self, repo: &str, subject: &str) -> Vec<(String, String)> {
        let st = self.shared.lock();
        let mut found: Vec<(String, String)> = st
            .manifests
            .iter()
            .filter(|((r, _), _)| r == repo)
            .filter_map(|((_, digest), (_, bytes))| {
                let doc: Value = serde_json::from_slice(bytes).ok()?;
                (doc["subject"]["digest"] == subject).then(|| {
                    (
                        doc["artifactType"].as_str().unwrap_or("").to_string(),
                        digest.clone(),
                    )
                })
            })
            .collect();
        found.sort();
        found
    }

    /// The tags of `repo`, sorted.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.shared.lock().tags_of(repo)
    }

    /// What `Faults::tag_put_witness` held at each tag PUT, in order.
    pub fn witnessed(&self) -> Vec<Option<String>> {
        self.shared.lock().witnessed.clone()
    }

    /// How many tokens the token endpoint handed out.
    pub fn tokens_issued(&self) -> usize {
        self.shared.lock().tokens_issued
    }

    /// Seed content: stores a blob linked into `repo`, returns its digest "sha256:<hex>".
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        self.shared.lock().store_blob(repo, &digest, bytes.to_vec());
        digest
    }

    /// Seed a manifest under `reference` (tag or digest) and its digest; returns the digest.
    /// A digest `reference` that differs from the bytes' digest is stored as given, which serves
    /// content that does not match its digest (to test client verification).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256(bytes);
        let mut st = self.shared.lock();
        let entry = (media_type.to_string(), bytes.to_vec());
        st.manifests
            .insert((repo.into(), digest.clone()), entry.clone());
        if is_digest_ref(reference) {
            st.manifests.insert((repo.into(), reference.into()), entry);
        } else {
            st.tags
                .insert((repo.into(), reference.into()), digest.clone());
        }
        digest
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.shared.addr); // unblocks accept()
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A parsed request line and headers.
#[derive(Default)]
struct Head {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response::with_body(status, Vec::new())
    }
    fn with_body(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
        }
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
    fn json(self, value: Value) -> Response {
        Response {
            body: value.to_string().into_bytes(),
            ..self.header("Content-Type", "application/json")
        }
    }
}

/// A distribution error: `{"errors":[{"code":..,"message":..,"detail":null}]}`.
fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    Response::new(status)
        .json(json!({"errors": [{"code": code, "message": message.into(), "detail": null}]}))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// References with a ':' are digests (tags cannot contain one).
fn is_digest_ref(reference: &str) -> bool {
    reference.contains(':')
}

fn is_tag(t: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-';
    !t.is_empty() && t.len() <= 128 && !t.starts_with(['.', '-']) && t.bytes().all(ok)
}

/// An unpredictable 128-bit hex string (std's RandomState keys are seeded from the OS).
fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let keyed = std::collections::hash_map::RandomState::new().hash_one((n, nanos));
    hex::encode(&Sha256::digest(format!("{n}-{nanos}-{keyed}").as_bytes())[..16])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            let c = if i <= chunk.len() {
                ABC[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            };
            out.push(c);
        }
    }
    out
}

fn basic_matches(header: &str, user: &str, pass: &str) -> bool {
    let given = header
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("basic "))
        .map(|_| header[6..].trim());
    given == Some(base64(format!("{user}:{pass}").as_bytes()).as_str())
}
