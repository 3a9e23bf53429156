//! An in-process fake OCI distribution registry with fault injection, for registry client tests.
//!
//! Plain HTTP/1.1 on a `std::net::TcpListener`: one accepting thread, one thread per connection,
//! one request per connection (every response says `Connection: close`). Content lives in memory.
//! A malformed request gets a 400; nothing a client sends can take the server down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

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

enum Route {
    Base,
    Token,
    Tags(String),
    UploadStart(String),
    Session(String, String),
    Blob(String, String),
    Manifest(String, String),
    BadName(String),
    NotFound,
}

fn route(path: &str) -> Route {
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    if path == "/token" {
        return Route::Token;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::NotFound;
    };
    let split = |sep: &str| {
        rest.rsplit_once(sep)
            .filter(|(_, tail)| !tail.contains('/'))
    };
    let (repo, route) = if let Some(repo) = rest
        .strip_suffix("/blobs/uploads/")
        .or(rest.strip_suffix("/blobs/uploads"))
    {
        (repo, Route::UploadStart(repo.into()))
    } else if let Some(repo) = rest.strip_suffix("/tags/list") {
        (repo, Route::Tags(repo.into()))
    } else if let Some((repo, uuid)) = split("/blobs/uploads/") {
        (repo, Route::Session(repo.into(), uuid.into()))
    } else if let Some((repo, digest)) = split("/blobs/") {
        (repo, Route::Blob(repo.into(), digest.into()))
    } else if let Some((repo, reference)) = split("/manifests/") {
        (repo, Route::Manifest(repo.into(), reference.into()))
    } else {
        return Route::NotFound;
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if repo.split('/').all(component_ok) {
        route
    } else {
        Route::BadName(repo.into())
    }
}

impl Route {
    fn repo(&self) -> Option<&str> {
        match self {
            Route::Tags(r)
            | Route::UploadStart(r)
            | Route::Session(r, _)
            | Route::Blob(r, _)
            | Route::Manifest(r, _) => Some(r),
            _ => None,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one connection: one request, one response (or a reset), then close.
    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(stream);
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return, // connected and closed without a byte
            Err(why) => {
                let resp = error(400, "UNSUPPORTED", format!("malformed request: {why}"));
                self.log(&Head::default(), 400, 0);
                return finish(reader.into_inner(), &resp, false);
            }
        };
        if head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            let _ = reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let route = route(&head.path);
        let auth = self.authorize(&head, &route);
        if auth.is_none() && head.method == "PUT" && self.fire_reset(&head, &route) {
            return self.reset(&head, reader);
        }
        let body = match read_body(&mut reader, &head) {
            Ok(body) => body,
            Err(why) => {
                self.log(&head, 400, 0);
                let resp = error(400, "UNSUPPORTED", format!("malformed body: {why}"));
                return finish(reader.into_inner(), &resp, false);
            }
        };
        let resp = match auth {
            Some(challenge) => error(401, "UNAUTHORIZED", "authentication required")
                .header("WWW-Authenticate", challenge),
            None => self.handle(&head, route, &body),
        };
        self.log(&head, resp.status, body.len());
        finish(reader.into_inner(), &resp, head.method == "HEAD");
    }

    fn log(&self, head: &Head, status: u16, body_len: usize) {
        let entry = RequestLog {
            method: head.method.clone(),
            path: head.path.clone(),
            query: head.query.clone(),
            status,
            authorization: head.header("authorization").map(str::to_string),
            body_len,
        };
        self.lock().log.push(entry);
    }

    /// None when the request may proceed, else the WWW-Authenticate challenge for a 401.
    fn authorize(&self, head: &Head, route: &Route) -> Option<String> {
        let f = &self.faults;
        let given = head.header("authorization").unwrap_or("");
        if matches!(route, Route::Token) {
            return match &f.basic_auth {
                Some((user, pass)) if f.bearer && !basic_matches(given, user, pass) => {
                    Some(r#"Basic realm="fake-registry""#.into())
                }
                _ => None,
            };
        }
        if f.bearer {
            let token = given.strip_prefix("Bearer ").unwrap_or("").trim();
            let mut st = self.lock();
            match st.tokens.get_mut(token) {
                Some(Some(0)) | None => {}
                Some(Some(left)) => {
                    *left -= 1;
                    return None;
                }
                Some(None) => return None,
            }
            let mut challenge = format!(
                r#"Bearer realm="http://{}/token",service="fake-registry""#,
                self.addr
            );
            if let Some(repo) = route.repo() {
                challenge.push_str(&format!(r#",scope="repository:{repo}:pull,push""#));
            }
            return Some(challenge);
        }
        match &f.basic_auth {
            Some((user, pass)) if !basic_matches(given, user, pass) => {
                Some(r#"Basic realm="fake-registry""#.into())
            }
            _ => None,
        }
    }

    /// Whether this PUT completes a valid upload session and the reset fault fires on it now.
    fn fire_reset(&self, head: &Head, route: &Route) -> bool {
        let Route::Session(repo, uuid) = route else {
            return false;
        };
        let mut st = self.lock();
        let valid = st
            .uploads
            .get(uuid)
            .is_some_and(|u| &u.repo == repo && head.param("_state").as_ref() == Some(&u.state));
        valid && self.faults.reset_first_blob_put && st.fired.insert("reset_first_blob_put")
    }

    /// Reads about half of the body, then drops the connection without an answer.
    fn reset(&self, head: &Head, mut reader: BufReader<TcpStream>) {
        let mut half = Vec::new();
        match head
            .header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
        {
            Some(len) => {
                let _ = (&mut reader).take(len / 2).read_to_end(&mut half);
            }
            None => {
                let _ = reader.read_until(b'\n', &mut half); // chunked: the first chunk-size line
            }
        }
        self.log(head, 0, half.len());
        let _ = reader.get_ref().shutdown(Shutdown::Both);
    }

    fn location(&self, path: &str) -> String {
        if self.faults.relative_location {
            path.to_string()
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    fn handle(&self, head: &Head, route: Route, body: &[u8]) -> Response {
        let m = head.method.as_str();
        match (m, route) {
            ("GET" | "HEAD", Route::Base) => Response::new(200).json(json!({})),
            ("GET", Route::Token) if self.faults.bearer => {
                let token = random_hex();
                let mut st = self.lock();
                st.tokens
                    .insert(token.clone(), self.faults.token_valid_for_requests);
                st.tokens_issued += 1;
                Response::new(200)
                    .json(json!({"token": token, "access_token": token, "expires_in": 300}))
            }
            ("GET", Route::Tags(repo)) => {
                let st = self.lock();
                let known = st.links.iter().any(|(r, _)| *r == repo)
                    || st.manifests.keys().any(|(r, _)| *r == repo);
                if !known {
                    return error(404, "NAME_UNKNOWN", format!("repository {repo} not known"));
                }
                Response::new(200).json(json!({"name": repo, "tags": st.tags_of(&repo)}))
            }
            ("POST", Route::UploadStart(repo)) => self.start_upload(head, &repo, body),
            (_, Route::Session(repo, uuid)) => self.session(head, &repo, &uuid, body),
            ("GET" | "HEAD", Route::Blob(repo, digest)) => {
                if !is_digest(&digest) {
                    return error(400, "DIGEST_INVALID", format!("invalid digest {digest}"));
                }
                let st = self.lock();
                match st
                    .blobs
                    .get(&digest)
                    .filter(|_| st.has_blob(&repo, &digest))
                {
                    Some(bytes) => Response::with_body(200, bytes.clone())
                        .header("Content-Type", "application/octet-stream")
                        .header("Docker-Content-Digest", digest),
                    None => error(404, "BLOB_UNKNOWN", format!("{digest} not in {repo}")),
                }
            }
            ("GET" | "HEAD", Route::Manifest(repo, reference)) => {
                match self.lock().resolve(&repo, &reference) {
                    Some((media_type, bytes)) => {
                        let digest = sha256(&bytes);
                        Response::with_body(200, bytes)
                            .header("Content-Type", media_type)
                            .header("Docker-Content-Digest", digest)
                    }
                    None => error(
                        404,
                        "MANIFEST_UNKNOWN",
                        format!("{reference} not in {repo}"),
                    ),
                }
            }
            ("PUT", Route::Manifest(repo, reference)) => {
                self.put_manifest(head, &repo, &reference, body)
            }
            (_, Route::BadName(repo)) => error(400, "NAME_INVALID", format!("bad name {repo:?}")),
            (_, Route::NotFound) | ("GET", Route::Token) => {
                error(404, "NOT_FOUND", format!("no route for {}", head.path))
            }
            _ => error(
                405,
                "UNSUPPORTED",
                format!("{m} {} not supported", head.path),
            ),
        }
    }

    fn new_session(&self, repo: &str) -> Response {
        let (uuid, state) = (random_hex(), random_hex());
        let upload = Upload {
            repo: repo.into(),
            data: Vec::new(),
            state: state.clone(),
        };
        self.lock().uploads.insert(uuid.clone(), upload);
        Response::new(202)
            .header(
                "Location",
                self.location(&format!("/v2/{repo}/blobs/uploads/{uuid}?_state={state}")),
            )
            .header("Docker-Upload-UUID", uuid)
            .header("Range", "0-0")
    }

    fn blob_created(&self, repo: &str, digest: &str) -> Response {
        Response::new(201)
            .header(
                "Location",
                self.location(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .header("Docker-Content-Digest", digest)
    }

    fn start_upload(&self, head: &Head, repo: &str, body: &[u8]) -> Response {
        if let Some(digest) = head.param("mount") {
            let from = head.param("from").unwrap_or_default();
            let mut st = self.lock();
            if !self.faults.mount_returns_202 && st.has_blob(&from, &digest) {
                st.links.insert((repo.into(), digest.clone()));
                return self.blob_created(repo, &digest);
            }
            drop(st);
            return self.new_session(repo);
        }
        if self.faults.rate_limit_first_upload_post
            && self.lock().fired.insert("rate_limit_first_upload_post")
        {
            return error(429, "TOOMANYREQUESTS", "too many requests").header("Retry-After", "1");
        }
        if let Some(secs) = self.faults.rate_limit_upload_posts {
            return error(429, "TOOMANYREQUESTS", "too many requests")
                .header("Retry-After", secs.to_string());
        }
        match head.param("digest") {
            None => self.new_session(repo),
            Some(digest) if sha256(body) == digest => {
                self.lock().store_blob(repo, &digest, body.to_vec());
                self.blob_created(repo, &digest)
            }
            Some(digest) => error(400, "DIGEST_INVALID", format!("body is not {digest}")),
        }
    }

    fn session(&self, head: &Head, repo: &str, uuid: &str, body: &[u8]) -> Response {
        let mut st = self.lock();
        let Some(upload) = st.uploads.get_mut(uuid).filter(|u| u.repo == repo) else {
            return error(404, "BLOB_UPLOAD_UNKNOWN", format!("upload {uuid} unknown"));
        };
        let range = format!("0-{}", upload.data.len().max(1) - 1);
        let state_ok = head.param("_state").as_ref() == Some(&upload.state);
        match head.method.as_str() {
            "GET" => Response::new(204)
                .header("Range", range)
                .header("Docker-Upload-UUID", uuid),
            "DELETE" => {
                st.uploads.remove(uuid);
                Response::new(204)
            }
            "PATCH" | "PUT" if !state_ok => error(
                400,
                "BLOB_UPLOAD_INVALID",
                "missing or stale _state: use the latest Location",
            ),
            "PATCH" => {
                upload.data.extend_from_slice(body);
                upload.state = random_hex();
                let location = format!("/v2/{repo}/blobs/uploads/{uuid}?_state={}", upload.state);
                Response::new(202)
                    .header("Location", self.location(&location))
                    .header("Range", format!("0-{}", upload.data.len().max(1) - 1))
                    .header("Docker-Upload-UUID", uuid)
            }
            "PUT" if self.faults.stall_blob_puts => {
                drop(st);
                while !self.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                error(500, "UNKNOWN", "stopped")
            }
            "PUT" => {
                let mut data = upload.data.clone();
                data.extend_from_slice(body);
                if self.faults.fail_first_blob_put && st.fired.insert("fail_first_blob_put") {
                    return error(500, "UNKNOWN", "injected failure: nothing stored");
                }
                let Some(digest) = head.param("digest").filter(|d| is_digest(d)) else {
                    return error(400, "DIGEST_INVALID", "missing or invalid digest parameter");
                };
                if sha256(&data) != digest {
                    return error(400, "DIGEST_INVALID", format!("content is not {digest}"));
                }
                st.uploads.remove(uuid);
                st.store_blob(repo, &digest, data);
                drop(st);
                self.blob_created(repo, &digest)
            }
            m => error(405, "UNSUPPORTED", format!("{m} on an upload")),
        }
    }

    fn put_manifest(&self, head: &Head, repo: &str, reference: &str, body: &[u8]) -> Response {
        let invalid = |msg: String| error(400, "MANIFEST_INVALID", msg);
        if self.faults.refuse_manifest_put {
            return invalid("injected refusal".into());
        }
        if !is_digest_ref(reference) {
            if let Some(path) = &self.faults.tag_put_witness {
                let seen = std::fs::read_to_string(path).ok();
                self.lock().witnessed.push(seen);
            }
            if self.faults.refuse_tag_put {
                return invalid(format!("injected refusal of tag {reference}"));
            }
        }
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
            return invalid("manifest is not a JSON object".into());
        };
        let content_type = head
            .header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
        let media_type = match (doc.get("mediaType").and_then(Value::as_str), content_type) {
            (Some(json), Some(ct)) if json != ct => {
                return invalid(format!("Content-Type {ct} differs from mediaType {json}"))
            }
            (Some(json), _) => json.to_string(),
            (None, Some(ct)) if !ct.is_empty() => ct,
            _ => return invalid("no Content-Type and no mediaType".into()),
        };
        let digest = sha256(body);
        if is_digest_ref(reference) && reference != digest {
            return error(400, "DIGEST_INVALID", format!("body is {digest}"));
        }
        if !is_digest_ref(reference) && !is_tag(reference) {
            return error(400, "TAG_INVALID", format!("invalid tag {reference:?}"));
        }
        let digests_of = |v: Option<&Value>| -> Vec<String> {
            let items = v.and_then(Value::as_array).cloned().unwrap_or_default();
            let digest = |d: &Value| d["digest"].as_str().unwrap_or("").to_string();
            items.iter().map(digest).collect()
        };
        let mut st = self.lock();
        let missing = if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
            let mut needed = digests_of(doc.get("layers"));
            needed.insert(
                0,
                doc["config"]["digest"].as_str().unwrap_or("").to_string(),
            );
            needed.into_iter().find(|d| !st.has_blob(repo, d))
        } else if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            digests_of(doc.get("manifests"))
                .into_iter()
                .find(|d| !st.manifests.contains_key(&(repo.to_string(), d.clone())))
        } else {
            None
        };
        if let Some(d) = missing {
            return error(400, "MANIFEST_BLOB_UNKNOWN", format!("unknown blob {d:?}"));
        }
        st.manifests
            .insert((repo.into(), digest.clone()), (media_type, body.to_vec()));
        if !is_digest_ref(reference) {
            st.tags
                .insert((repo.into(), reference.into()), digest.clone());
        }
        drop(st);
        let created = Response::new(201)
            .header(
                "Location",
                self.location(&format!("/v2/{repo}/manifests/{digest}")),
            )
            .header("Docker-Content-Digest", digest);
        // An OCI 1.1 registry with the referrers API says it indexed the manifest's subject.
        match doc
            .get("subject")
            .and_then(|s| s.get("digest"))
            .and_then(Value::as_str)
        {
            Some(subject) => created.header("OCI-Subject", subject.to_string()),
            None => created,
        }
    }
}

impl State {
    fn has_blob(&self, repo: &str, digest: &str) -> bool {
        self.blobs.contains_key(digest)
            && self.links.contains(&(repo.to_string(), digest.to_string()))
    }
    fn store_blob(&mut self, repo: &str, digest: &str, bytes: Vec<u8>) {
        self.blobs.insert(digest.into(), bytes);
        self.links.insert((repo.into(), digest.into()));
    }
    fn resolve(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let digest = if is_digest_ref(reference) {
            reference.to_string()
        } else {
            self.tags.get(&(repo.into(), reference.into()))?.clone()
        };
        self.manifests.get(&(repo.into(), digest)).cloned()
    }
    fn tags_of(&self, repo: &str) -> Vec<String> {
        self.tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

/// Reads the request line and headers. Ok(None): the peer closed without sending anything.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Option<Head>, String> {
    let first = reader.fill_buf().map_err(|e| e.to_string())?;
    if first.is_empty() {
        return Ok(None);
    }
    // A TLS ClientHello (or other binary) waits for us: refuse at once instead of reading lines.
    if !first[0].is_ascii_uppercase() {
        return Err("not an HTTP/1.1 request".into());
    }
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let line = read_line(reader)?;
        total += line.len();
        if total > 256 * 1024 {
            return Err("oversized header".into());
        }
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let request_line = lines.first().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.")
        || !target.starts_with('/')
        || !method.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(format!("bad request line {request_line:?}"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some(Head {
        method: method.into(),
        path: percent_decode(path),
        query: query.into(),
        headers,
    }))
}

/// Reads one CRLF (or LF) terminated line of at most 16 KiB, without its terminator.
fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let limit = 16 * 1024;
    let read = reader.by_ref().take(limit).read_until(b'\n', &mut line);
    read.map_err(|e| e.to_string())?;
    if !line.ends_with(b"\n") {
        return Err("truncated or oversized line".into());
    }
    let line = String::from_utf8(line).map_err(|_| "line is not UTF-8")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads the body framed by Content-Length or `Transfer-Encoding: chunked` (none: empty).
fn read_body(reader: &mut BufReader<TcpStream>, head: &Head) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    if head
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let line = read_line(reader)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {} // trailers, up to the empty line
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err("body too large".into());
            }
            let start = body.len();
            reader
                .by_ref()
                .take(size as u64)
                .read_to_end(&mut body)
                .map_err(io)?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).map_err(io)?;
            if body.len() - start != size || &crlf != b"\r\n" {
                return Err("truncated chunk".into());
            }
        }
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if len > MAX_BODY {
            return Err("body too large".into());
        }
        reader
            .by_ref()
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(io)?;
        if body.len() != len {
            return Err("body shorter than Content-Length".into());
        }
    }
    Ok(body)
}

/// Writes the response, closes our side, and drains what the client still sends so the close
/// is graceful (a close with unread data would reset the connection before the client reads).
fn finish(mut stream: TcpStream, resp: &Response, head_only: bool) {
    let reason = match resp.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", resp.status);
    for (name, value) in &resp.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n", resp.body.len()));
    let mut out = out.into_bytes();
    if !head_only && resp.status != 204 {
        out.extend_from_slice(&resp.body);
    }
    if stream.write_all(&out).and_then(|_| stream.flush()).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = std::io::copy(&mut (&stream).take(64 << 20), &mut std::io::sink());
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

// ---------------------------------------------------------------------------------------------
// Tests: a tiny raw HTTP client, then skopeo as an independent client.

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The first distribution error code of the body.
    fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
    /// The Location header as a request target (absolute URLs lose their scheme and host).
    fn location(&self) -> String {
        let loc = self.header("location").expect("a Location header");
        loc.strip_prefix("http://")
            .map(|l| &l[l.find('/').unwrap()..])
            .unwrap_or(loc)
            .to_string()
    }
}

/// One request on a fresh connection; Err when the connection breaks before a full response.
fn send(
    reg: &FakeRegistry,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut stream = TcpStream::connect(reg.addr()).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        reg.host(),
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).map_err(|e| e.to_string())?;
    raw_reply(stream)
}

fn raw_reply(mut stream: TcpStream) -> Result<Reply, String> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// Asserts a distribution error reply.
#[track_caller]
fn assert_error(reply: &Reply, status: u16, code: &str) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (status, code),
        "{body}"
    );
}

fn req(reg: &FakeRegistry, method: &str, target: &str, body: &[u8]) -> Reply {
    send(reg, method, target, &[], body).unwrap()
}

/// POST + PUT with the digest: a two-request monolithic upload.
fn push_blob(reg: &FakeRegistry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let post = req(reg, "POST", &format!("/v2/{repo}/blobs/uploads/"), b"");
    assert_eq!(post.status, 202);
    let put = req(
        reg,
        "PUT",
        &format!("{}&digest={digest}", post.location()),
        bytes,
    );
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    digest
}

fn image_manifest(config: &str, layers: &[&str]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|d| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1})).collect();
    let config = json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1});
    serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}),
    )
    .unwrap()
}

#[test]
fn monolithic_push_then_head() {
    let reg = FakeRegistry::start(Faults::default());
    assert_eq!(req(&reg, "GET", "/v2/", b"").status, 200);
    let post = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    assert_eq!(post.status, 202);
    assert!(post
        .header("location")
        .unwrap()
        .starts_with(&format!("http://{}/v2/team/app/blobs/uploads/", reg.host())));
    assert!(post.location().contains("?_state="));
    assert_eq!(post.header("range"), Some("0-0"));
    assert!(post.header("docker-upload-uuid").is_some());

    let digest = sha256(b"hello layer");
    let put = req(
        &reg,
        "PUT",
        &format!("{}&digest={}", post.location(), digest.replace(':', "%3A")),
        b"hello layer",
    );
    assert_eq!(put.status, 201);
    assert_eq!(put.header("docker-content-digest"), Some(digest.as_str()));

    let head = req(&reg, "HEAD", &format!("/v2/team/app/blobs/{digest}"), b"");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("11"))
    );
    assert!(head.body.is_empty());
    assert_eq!(
        req(&reg, "GET", &format!("/v2/team/app/blobs/{digest}"), b"").body,
        b"hello layer"
    );
    let other = req(&reg, "HEAD", &format!("/v2/team/other/blobs/{digest}"), b"");
    assert_eq!(
        other.status, 404,
        "blobs are served only from the repositories they are linked into"
    );
    assert!(reg.repo_has_blob("team/app", &digest) && !reg.repo_has_blob("team/other", &digest));
    assert_eq!(reg.blob(&digest).unwrap(), b"hello layer");

    // Single-request monolithic upload, and a digest mismatch.
    let one = sha256(b"one shot");
    assert_eq!(
        req(
            &reg,
            "POST",
            &format!("/v2/team/app/blobs/uploads/?digest={one}"),
            b"one shot"
        )
        .status,
        201
    );
    let bad = req(
        &reg,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={one}"),
        b"other bytes",
    );
    assert_error(&bad, 400, "DIGEST_INVALID");
    let log = reg.requests();
    assert_eq!(
        (log[2].method.as_str(), log[2].body_len, log[2].status),
        ("PUT", 11, 201)
    );
    assert!(
        log[2].query.contains("_state=") && log[2].path.starts_with("/v2/team/app/blobs/uploads/")
    );
}

#[test]
fn chunked_patch_upload_and_session_errors() {
    let reg = FakeRegistry::start(Faults {
        relative_location: true,
        ..Faults::default()
    });
    let post = req(&reg, "POST", "/v2/library/busybox/blobs/uploads/", b"");
    assert!(post
        .header("location")
        .unwrap()
        .starts_with("/v2/library/busybox/blobs/uploads/"));
    let first = post.location();

    // A chunked PATCH, written by hand.
    let mut stream = TcpStream::connect(reg.addr()).unwrap();
    let patch = format!("PATCH {first} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
    stream.write_all(patch.as_bytes()).unwrap();
    let patched = raw_reply(stream).unwrap();
    assert_eq!(
        (patched.status, patched.header("range")),
        (202, Some("0-10"))
    );
    let second = patched.location();
    assert_ne!(first, second, "each PATCH hands out a new _state");

    let digest = sha256(b"hello world!");
    let dropped = req(
        &reg,
        "PUT",
        &format!("{}?digest={digest}", second.split('?').next().unwrap()),
        b"!",
    );
    assert_error(&dropped, 400, "BLOB_UPLOAD_INVALID");
    let stale = req(&reg, "PUT", &format!("{first}&digest={digest}"), b"!");
    assert_error(&stale, 400, "BLOB_UPLOAD_INVALID");
    let unknown = req(
        &reg,
        "PUT",
        &format!("/v2/library/busybox/blobs/uploads/nope?_state=x&digest={digest}"),
        b"!",
    );
    assert_error(&unknown, 404, "BLOB_UPLOAD_UNKNOWN");
    let wrong = req(
        &reg,
        "PUT",
        &format!("{second}&digest={}", sha256(b"x")),
        b"!",
    );
    assert_error(&wrong, 400, "DIGEST_INVALID");
    let done = req(&reg, "PUT", &format!("{second}&digest={digest}"), b"!");
    assert_eq!(done.status, 201);
    assert_eq!(
        done.header("location"),
        Some(format!("/v2/library/busybox/blobs/{digest}").as_str())
    );
    assert_eq!(reg.blob(&digest).unwrap(), b"hello world!");
}

#[test]
fn mount_from_another_repo() {
    let reg = FakeRegistry::start(Faults::default());
    let digest = reg.put_blob("library/base", b"base layer");
    let mount = req(
        &reg,
        "POST",
        &format!(
            "/v2/team/app/blobs/uploads/?mount={}&from=library%2Fbase",
            digest.replace(':', "%3A")
        ),
        b"",
    );
    assert_eq!(
        (mount.status, mount.header("docker-content-digest")),
        (201, Some(digest.as_str()))
    );
    assert!(mount
        .location()
        .ends_with(&format!("/v2/team/app/blobs/{digest}")));
    assert!(reg.repo_has_blob("team/app", &digest));
    // Mounting from a repository that does not have the blob starts an upload instead.
    let miss = req(
        &reg,
        "POST",
        &format!("/v2/team/b/blobs/uploads/?mount={digest}&from=team/nothing"),
        b"",
    );
    assert_eq!(miss.status, 202);

    let refusing = FakeRegistry::start(Faults {
        mount_returns_202: true,
        ..Faults::default()
    });
    let digest = refusing.put_blob("library/base", b"base layer");
    let mount = req(
        &refusing,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?mount={digest}&from=library/base"),
        b"",
    );
    assert_eq!(mount.status, 202);
    assert!(
        mount.location().contains("/v2/team/app/blobs/uploads/")
            && mount.location().contains("_state=")
    );
    assert!(!refusing.repo_has_blob("team/app", &digest));
}

#[test]
fn manifests_need_their_blobs_and_round_trip() {
    let reg = FakeRegistry::start(Faults::default());
    let config = push_blob(&reg, "team/app", b"{}");
    let layer = push_blob(&reg, "team/app", b"layer");
    let absent = sha256(b"absent");
    let ct = [("Content-Type", OCI_MANIFEST)];

    let missing = send(
        &reg,
        "PUT",
        "/v2/team/app/manifests/1",
        &ct,
        &image_manifest(&config, &[&layer, &absent]),
    )
    .unwrap();
    assert_error(&missing, 400, "MANIFEST_BLOB_UNKNOWN");
    assert!(String::from_utf8_lossy(&missing.body).contains(&absent));
    let mismatch = send(
        &reg,
        "PUT",
        "/v2/team/app/manifests/1",
        &[("Content-Type", OCI_INDEX)],
        &image_manifest(&config, &[]),
    )
    .unwrap();
    assert_error(&mismatch, 400, "MANIFEST_INVALID");
    let not_json = send(&reg, "PUT", "/v2/team/app/manifests/1", &ct, b"{nope").unwrap();
    assert_eq!(not_json.status, 400);

    let bytes = image_manifest(&config, &[&layer]);
    let digest = sha256(&bytes);
    let wrong_digest = send(
        &reg,
        "PUT",
        &format!("/v2/team/app/manifests/{}", sha256(b"x")),
        &ct,
        &bytes,
    )
    .unwrap();
    assert_error(&wrong_digest, 400, "DIGEST_INVALID");
    let put = send(&reg, "PUT", "/v2/team/app/manifests/1", &ct, &bytes).unwrap();
    assert_eq!(
        (put.status, put.header("docker-content-digest")),
        (201, Some(digest.as_str()))
    );
    for reference in ["1", digest.as_str()] {
        let got = req(
            &reg,
            "GET",
            &format!("/v2/team/app/manifests/{reference}"),
            b"",
        );
        assert_eq!(
            (got.status, got.header("content-type")),
            (200, Some(OCI_MANIFEST))
        );
        assert_eq!(
            (got.body.as_slice(), got.header("docker-content-digest")),
            (bytes.as_slice(), Some(digest.as_str()))
        );
    }
    let head = req(&reg, "HEAD", "/v2/team/app/manifests/1", b"");
    assert_eq!(
        (head.status, head.header("content-length").unwrap()),
        (200, bytes.len().to_string().as_str())
    );
    assert_eq!(
        req(&reg, "GET", "/v2/team/app/manifests/2", b"").code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        reg.manifest("team/app", "1").unwrap(),
        (OCI_MANIFEST.to_string(), bytes.clone())
    );
    assert_eq!(reg.tags("team/app"), ["1"]);
    let tags: Value =
        serde_json::from_slice(&req(&reg, "GET", "/v2/team/app/tags/list", b"").body).unwrap();
    assert_eq!(tags, json!({"name": "team/app", "tags": ["1"]}));

    // An index needs its children in the repository.
    let index = |child: &str| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1}]}))
        .unwrap()
    };
    let ict = [("Content-Type", OCI_INDEX)];
    let orphan = send(
        &reg,
        "PUT",
        "/v2/team/app/manifests/multi",
        &ict,
        &index(&absent),
    )
    .unwrap();
    assert_error(&orphan, 400, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        send(
            &reg,
            "PUT",
            "/v2/team/app/manifests/multi",
            &ict,
            &index(&digest)
        )
        .unwrap()
        .status,
        201
    );
    assert_eq!(reg.tags("team/app"), ["1", "multi"]);
    // Seeded manifests are served like pushed ones.
    let seeded = reg.put_manifest("team/app", "seeded", OCI_INDEX, &index(&digest));
    let got = req(&reg, "GET", "/v2/team/app/manifests/seeded", b"");
    assert_eq!(
        (got.header("docker-content-digest"), got.body.as_slice()),
        (Some(seeded.as_str()), index(&digest).as_slice())
    );

    let refusing = FakeRegistry::start(Faults {
        refuse_manifest_put: true,
        ..Faults::default()
    });
    let config = refusing.put_blob("a", b"{}");
    let refused = send(
        &refusing,
        "PUT",
        "/v2/a/manifests/1",
        &ct,
        &image_manifest(&config, &[]),
    )
    .unwrap();
    assert_error(&refused, 400, "MANIFEST_INVALID");
}

#[test]
fn bearer_tokens_challenge_and_expire() {
    let reg = FakeRegistry::start(Faults {
        bearer: true,
        token_valid_for_requests: Some(2),
        ..Faults::default()
    });
    let base = req(&reg, "GET", "/v2/", b"");
    let realm = format!(
        r#"Bearer realm="http://{}/token",service="fake-registry""#,
        reg.host()
    );
    assert_eq!(
        (base.status, base.header("www-authenticate")),
        (401, Some(realm.as_str()))
    );
    let blob = req(
        &reg,
        "HEAD",
        &format!("/v2/team/app/blobs/{}", sha256(b"x")),
        b"",
    );
    let scoped = format!(r#"{realm},scope="repository:team/app:pull,push""#);
    assert_eq!(
        (blob.status, blob.header("www-authenticate")),
        (401, Some(scoped.as_str()))
    );

    let token: Value = serde_json::from_slice(
        &req(
            &reg,
            "GET",
            "/token?service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull%2Cpush",
            b"",
        )
        .body,
    )
    .unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");
    let with = |path: &str| {
        send(&reg, "GET", path, &[("Authorization", &auth)], b"")
            .unwrap()
            .status
    };
    assert_eq!(with("/v2/"), 200);
    assert_eq!(
        with("/v2/team/app/tags/list"),
        404,
        "authorized, then NAME_UNKNOWN"
    );
    assert_eq!(with("/v2/"), 401, "the token is spent after 2 requests");
    assert_eq!(
        send(
            &reg,
            "GET",
            "/v2/",
            &[("Authorization", "Bearer forged")],
            b""
        )
        .unwrap()
        .status,
        401
    );
    assert_eq!(reg.tokens_issued(), 1);
    assert_eq!(
        reg.requests()[3].authorization.as_deref(),
        Some(auth.as_str())
    );

    // Credentials: checked by the token endpoint in bearer mode, on every request otherwise.
    let creds = Some(("alice".to_string(), "s3cret".to_string()));
    let good = format!("Basic {}", base64(b"alice:s3cret"));
    let bearer = FakeRegistry::start(Faults {
        bearer: true,
        basic_auth: creds.clone(),
        ..Faults::default()
    });
    let anon = req(&bearer, "GET", "/token?service=fake-registry", b"");
    assert_eq!(
        (anon.status, anon.header("www-authenticate")),
        (401, Some(r#"Basic realm="fake-registry""#))
    );
    assert_eq!(
        send(
            &bearer,
            "GET",
            "/token?service=fake-registry",
            &[("Authorization", &good)],
            b""
        )
        .unwrap()
        .status,
        200
    );
    let basic = FakeRegistry::start(Faults {
        basic_auth: creds,
        ..Faults::default()
    });
    assert_eq!(
        req(&basic, "GET", "/v2/", b"").header("www-authenticate"),
        Some(r#"Basic realm="fake-registry""#)
    );
    assert_eq!(
        send(
            &basic,
            "GET",
            "/v2/",
            &[("Authorization", "Basic YWxpY2U6d3Jvbmc=")],
            b""
        )
        .unwrap()
        .status,
        401
    );
    assert_eq!(
        send(&basic, "GET", "/v2/", &[("Authorization", &good)], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(basic.tokens_issued(), 0);
}

#[test]
fn first_upload_post_is_rate_limited_once() {
    let reg = FakeRegistry::start(Faults {
        rate_limit_first_upload_post: true,
        ..Faults::default()
    });
    let limited = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    assert_eq!(
        (
            limited.status,
            limited.header("retry-after"),
            limited.code().as_str()
        ),
        (429, Some("1"), "TOOMANYREQUESTS")
    );
    assert_eq!(
        req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"").status,
        202
    );
}

#[test]
fn first_blob_put_fails_once() {
    let reg = FakeRegistry::start(Faults {
        fail_first_blob_put: true,
        ..Faults::default()
    });
    let post = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    let target = format!("{}&digest={}", post.location(), sha256(b"data"));
    let failed = req(&reg, "PUT", &target, b"data");
    assert_error(&failed, 500, "UNKNOWN");
    assert!(reg.blob(&sha256(b"data")).is_none());
    assert_eq!(
        req(&reg, "PUT", &target, b"data").status,
        201,
        "the session survives the failure"
    );
}

#[test]
fn first_blob_put_resets_the_connection() {
    let reg = FakeRegistry::start(Faults {
        reset_first_blob_put: true,
        ..Faults::default()
    });
    let body = vec![7u8; 200_000];
    let post = req(&reg, "POST", "/v2/team/app/blobs/uploads/", b"");
    let target = format!("{}&digest={}", post.location(), sha256(&body));
    assert!(
        send(&reg, "PUT", &target, &[], &body).is_err(),
        "no response after a reset"
    );
    let reset = reg.requests().pop().unwrap();
    assert_eq!((reset.method.as_str(), reset.status), ("PUT", 0));
    assert!(reset.body_len > 0 && reset.body_len < body.len());
    assert!(reg.blob(&sha256(&body)).is_none());
    assert_eq!(req(&reg, "PUT", &target, &body).status, 201);
}

#[test]
fn malformed_requests_get_400_and_the_server_lives_on() {
    let reg = FakeRegistry::start(Faults::default());
    let garbage: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nno colon here\r\n\r\n",
        b"PUT /v2/a/blobs/uploads/ HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for bytes in garbage {
        let mut stream = TcpStream::connect(reg.addr()).unwrap();
        stream.write_all(bytes).unwrap();
        assert_eq!(
            raw_reply(stream).unwrap().status,
            400,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    drop(TcpStream::connect(reg.addr()).unwrap()); // connect and leave
    assert_eq!(
        req(&reg, "GET", "/v2/Team/App/manifests/1", b"").code(),
        "NAME_INVALID"
    );
    assert_eq!(req(&reg, "GET", "/nowhere", b"").status, 404);
    assert_eq!(req(&reg, "DELETE", "/v2/a/manifests/1", b"").status, 405);
    assert_eq!(req(&reg, "GET", "/v2/", b"").status, 200);
}

#[test]
fn skopeo_pushes_and_inspects() {
    for tool in ["skopeo", "umoci"] {
        super::support::require(tool);
    }
    let reg = FakeRegistry::start(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layout = layout.to_str().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello from the fake registry\n").unwrap();
    let run = |args: &[&str]| {
        super::support::run_ok(
            std::process::Command::new(args[0])
                .args(&args[1..])
                .current_dir(dir.path()),
        )
    };
    run(&["umoci", "init", "--layout", layout]);
    run(&["umoci", "new", "--image", &format!("{layout}:1")]);
    run(&[
        "umoci",
        "insert",
        "--rootless",
        "--image",
        &format!("{layout}:1"),
        "hello",
        "/hello",
    ]);

    let dest = format!("docker://{}/team/x:1", reg.host());
    run(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{layout}:1"),
        &dest,
    ]);
    let (media_type, bytes) = reg
        .manifest("team/x", "1")
        .expect("skopeo pushed a manifest");
    assert_eq!(media_type, OCI_MANIFEST);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(reg.repo_has_blob("team/x", manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert!(
        reg.requests().iter().any(|r| r.method == "PATCH"),
        "skopeo uploads with PATCH"
    );

    let out = run(&["skopeo", "inspect", "--tls-verify=false", &dest]);
    let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Digest"].as_str(), Some(sha256(&bytes).as_str()));
    assert_eq!(inspect["RepoTags"], json!(["1"]));
    let failures: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.status >= 500 || r.status == 0)
        .collect();
    assert!(failures.is_empty(), "{failures:?}");

    // The challenge, the token endpoint (with credentials) and relative Locations work for skopeo too.
    let creds = Some(("alice".to_string(), "s3cret".to_string()));
    let faults = Faults {
        bearer: true,
        relative_location: true,
        basic_auth: creds,
        ..Faults::default()
    };
    let authed = FakeRegistry::start(faults);
    let dest = format!("docker://{}/team/x:1", authed.host());
    run(&[
        "skopeo",
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &format!("oci:{layout}:1"),
        &dest,
    ]);
    assert_eq!(authed.manifest("team/x", "1").unwrap().1, bytes);
    assert!(authed.tokens_issued() >= 1);
}
