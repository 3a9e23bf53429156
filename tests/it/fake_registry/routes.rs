//! Routing and the handlers of the distribution API (blobs, uploads, manifests, tags, tokens),
//! faults injected where the `Faults` say.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use super::*;

pub(super) enum Route {
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

pub(super) fn route(path: &str) -> Route {
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
    pub(super) fn repo(&self) -> Option<&str> {
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
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one connection: one request, one response (or a reset), then close.
    pub(super) fn serve(&self, stream: TcpStream) {
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

    pub(super) fn log(&self, head: &Head, status: u16, body_len: usize) {
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
    pub(super) fn authorize(&self, head: &Head, route: &Route) -> Option<String> {
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
    pub(super) fn fire_reset(&self, head: &Head, route: &Route) -> bool {
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
    pub(super) fn reset(&self, head: &Head, mut reader: BufReader<TcpStream>) {
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

    pub(super) fn location(&self, path: &str) -> String {
        if self.faults.relative_location {
            path.to_string()
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    pub(super) fn handle(&self, head: &Head, route: Route, body: &[u8]) -> Response {
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

    pub(super) fn new_session(&self, repo: &str) -> Response {
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

    pub(super) fn blob_created(&self, repo: &str, digest: &str) -> Response {
        Response::new(201)
            .header(
                "Location",
                self.location(&format!("/v2/{repo}/blobs/{digest}")),
            )
            .header("Docker-Content-Digest", digest)
    }

    pub(super) fn start_upload(&self, head: &Head, repo: &str, body: &[u8]) -> Response {
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
        if self.faults.rate_limit_first_upload_post_until_date
            && self
                .lock()
                .fired
                .insert("rate_limit_first_upload_post_until_date")
        {
            // An HTTP date has whole seconds: two from now is at least one from now.
            let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
            return error(429, "TOOMANYREQUESTS", "too many requests").header("Retry-After", when);
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

    pub(super) fn session(&self, head: &Head, repo: &str, uuid: &str, body: &[u8]) -> Response {
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

    pub(super) fn put_manifest(
        &self,
        head: &Head,
        repo: &str,
        reference: &str,
        body: &[u8],
    ) -> Response {
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
    pub(super) fn has_blob(&self, repo: &str, digest: &str) -> bool {
        self.blobs.contains_key(digest)
            && self.links.contains(&(repo.to_string(), digest.to_string()))
    }
    pub(super) fn store_blob(&mut self, repo: &str, digest: &str, bytes: Vec<u8>) {
        self.blobs.insert(digest.into(), bytes);
        self.links.insert((repo.into(), digest.into()));
    }
    pub(super) fn resolve(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let digest = if is_digest_ref(reference) {
            reference.to_string()
        } else {
            self.tags.get(&(repo.into(), reference.into()))?.clone()
        };
        self.manifests.get(&(repo.into(), digest)).cloned()
    }
    pub(super) fn tags_of(&self, repo: &str) -> Vec<String> {
        self.tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.clone())
            .collect()
    }
}
