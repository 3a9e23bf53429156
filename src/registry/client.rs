//! The HTTP side of the distribution API: one registry, its auth challenges (Basic, Bearer with
//! token refresh), retries with backoff and jitter honouring `Retry-After`, bounded error bodies,
//! and redaction of every secret from messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use super::credentials::{Credential, Secret};
use super::retry::{is_transient, parse_retry_after, Attempt, RetryPolicy, Try};
use super::{RegistryError, RegistryOptions};
use crate::cancel::{Cancel, Cancelled};

/// Error bodies are read up to this many bytes.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Token responses are read up to this many bytes.
const MAX_TOKEN_BODY: u64 = 1 << 20;

/// A Bearer challenge: where to get a token, for which service.
#[derive(Debug, Clone)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

#[derive(Debug, Clone)]
enum AuthState {
    None,
    Basic,
    Bearer { token: Secret },
}

/// A client for one registry, for a fixed set of token scopes.
pub struct Client {
    http: reqwest::blocking::Client,
    base: Url,
    /// `host[:port]` as the user named it, for messages.
    pub registry: String,
    host: String,
    credential: Option<Credential>,
    scopes: Vec<String>,
    auth: Mutex<AuthState>,
    retry: RetryPolicy,
    timeouts: super::Timeouts,
    secrets: Mutex<Vec<String>>,
    cancel: Cancel,
}

/// What a request is doing, for error messages: the repository and the step.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub repository: &'a str,
    pub what: String,
}

impl Client {
    /// A client for `registry` (the API host), asking tokens for `scopes`
    /// (`repository:team/app:push,pull`, push first: some registries read only the first).
    pub fn new(
        registry: &str,
        api_host: &str,
        scopes: Vec<String>,
        options: &RegistryOptions,
        credential: Option<Credential>,
    ) -> Result<Client, RegistryError> {
        let insecure = options.is_insecure(registry) || options.is_insecure(api_host);
        let mut builder = reqwest::blocking::Client::builder()
            .user_agent(concat!("galley/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.timeouts.connect)
            // Every request sets its own total (metadata, or a blob's by its size); this is
            // only for one that would not.
            .timeout(options.timeouts.metadata)
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(path) = &options.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Config(format!("cannot read the CA bundle {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Config(format!("{} is not a PEM CA bundle: {e}", path.display()))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Config(format!("cannot set up HTTP: {e}")))?;
        // Registries allowed plain HTTP still get HTTPS when they speak it (a local registry with
        // TLS): one probe at setup. A certificate error means TLS is spoken but not trusted: stay
        // on HTTPS so the user sees that error (and passes --ca-bundle) instead of a confusing
        // plain-HTTP failure.
        let https = !insecure
            || match http
                .get(format!("https://{api_host}/v2/"))
                .timeout(Duration::from_secs(5))
                .send()
            {
                Ok(_) => true,
                Err(e) => {
                    let chain = error_chain(&e);
                    tracing::debug!(registry, "HTTPS probe failed: {chain}");
                    chain.to_ascii_lowercase().contains("certificate")
                }
            };
        let scheme = if https { "https" } else { "http" };
        let base = Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|_| RegistryError::Config(format!("invalid registry host {api_host:?}")))?;
        let secrets = credential.as_ref().map(|c| c.secrets()).unwrap_or_default();
        Ok(Client {
            http,
            base,
            registry: registry.to_string(),
            host: api_host.to_string(),
            credential,
            scopes,
            auth: Mutex::new(AuthState::None),
            retry: options.retry.clone(),
            timeouts: options.timeouts.clone(),
            secrets: Mutex::new(secrets),
            cancel: options.cancel.clone(),
        })
    }

    /// The longest a blob of `size` bytes may take to move: the metadata timeout plus the
    /// time it takes at the slowest rate still called progress.
    pub fn blob_timeout(&self, size: u64) -> Duration {
        self.timeouts.metadata + Duration::from_secs(size / self.timeouts.min_rate.max(1))
    }

    /// The build's cancel handle (uploads wrap their bodies in it).
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    fn cancelled(&self, step: &Step<'_>, c: Cancelled) -> RegistryError {
        RegistryError::Cancelled {
            registry: self.registry.clone(),
            step: step.what.clone(),
            reason: c.reason,
        }
    }

    /// Sleeps before a retry; a cancel ends the wait at once.
    pub fn wait(&self, step: &Step<'_>, d: Duration) -> Result<(), RegistryError> {
        self.cancel.sleep(d).map_err(|c| self.cancelled(step, c))
    }

    /// Executes a request on a helper thread and waits for its answer, watching the cancel
    /// handle: a registry that stops answering cannot hold a cancelled build. (An abandoned
    /// request ends on its own, at its timeout at the latest.)
    fn execute(
        &self,
        step: &Step<'_>,
        request: reqwest::blocking::Request,
    ) -> Result<reqwest::Result<Response>, RegistryError> {
        self.cancel.check().map_err(|c| self.cancelled(step, c))?;
        let http = self.http.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(http.execute(request));
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(result) => return Ok(result),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.cancel.check().map_err(|c| self.cancelled(step, c))?
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RegistryError::Transport {
                        registry: self.registry.clone(),
                        repository: step.repository.to_string(),
                        step: step.what.clone(),
                        attempts: 1,
                        detail: "the HTTP request thread stopped".into(),
                    })
                }
            }
        }
    }

    /// A URL on this registry from a path (`/v2/...`).
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(path.trim_start_matches('/'))
            .expect("paths built by galley are valid")
    }

    /// Resolves a `Location` header against the URL it answered, as the spec says (relative or
    /// absolute, query kept). Only http(s) is accepted.
    pub fn resolve_location(&self, answered: &Url, location: &str) -> Result<Url, String> {
        let url = answered.join(location).map_err(|_| {
            format!(
                "the registry sent an invalid Location ({})",
                self.redact(location)
            )
        })?;
        match url.scheme() {
            "http" | "https" => Ok(url),
            other => Err(format!(
                "the registry sent a Location with scheme {other:?}"
            )),
        }
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// Replaces every known secret (password, basic header, tokens) in a text by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out = out.replace(s.as_str(), "***");
        }
        out
    }

    fn remember_secret(&self, s: &str) {
        if s.len() >= 3 {
            self.secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s.to_string());
        }
    }

    fn authorization(&self, url: &Url) -> Option<String> {
        // Credentials only ever go to the registry host itself (never to a storage redirect).
        if url.host_str().map(|h| match url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        }) != Some(self.host.clone())
        {
            return None;
        }
        match &*self.auth.lock().unwrap_or_else(|e| e.into_inner()) {
            AuthState::None => None,
            AuthState::Basic => match &self.credential {
                Some(Credential::Basic { username, password }) => {
                    Some(basic_header(username, password))
                }
                _ => None,
            },
            AuthState::Bearer { token } => Some(format!("Bearer {}", token.expose())),
        }
    }

    /// Sends a request built by `build` (called again for every try, so bodies are replayable),
    /// answering auth challenges and retrying transient failures. Returns the final response,
    /// whatever its status; transport failures become errors after the last try.
    pub fn send(
        &self,
        step: &Step<'_>,
        build: &dyn Fn(&reqwest::blocking::Client) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        self.send_tries(step, self.retry.attempts, build)
    }

    /// Like `send`, with at most `tries` tries (1: answer auth challenges but never retry; used
    /// where a retry must start further back, as an upload restarts from its POST).
    pub fn send_tries(
        &self,
        step: &Step<'_>,
        tries: u32,
        build: &dyn Fn(&reqwest::blocking::Client) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        let mut reauthed = false;
        self.retry.run(
            tries,
            |d| self.wait(step, d),
            |attempt| {
                self.try_send(step, attempt, &mut reauthed, build)
                    .unwrap_or_else(|e| Try::Done(Err(e)))
            },
        )
    }

    /// One try of `send_tries`: a 401 is answered once per request (not counted as a try).
    fn try_send(
        &self,
        step: &Step<'_>,
        attempt: Attempt,
        reauthed: &mut bool,
        build: &dyn Fn(&reqwest::blocking::Client) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Try<Response, RegistryError>, RegistryError> {
        let mut request = build(&self.http)?
            .build()
            .map_err(|e| self.transport(step, attempt.number + 1, &e))?;
        // A request that did not size its own timeout (a blob transfer does) is metadata.
        request.timeout_mut().get_or_insert(self.timeouts.metadata);
        if let Some(auth) = self.authorization(request.url()) {
            request.headers_mut().insert(
                AUTHORIZATION,
                auth.parse().map_err(|_| {
                    RegistryError::Config(
                        "credentials contain characters HTTP headers cannot carry".into(),
                    )
                })?,
            );
        }
        Ok(match self.execute(step, request)? {
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !*reauthed => {
                *reauthed = true;
                let challenge = pick_challenge(parse_challenges(
                    resp.headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                ));
                drain(resp);
                let Some(challenge) = challenge else {
                    return Err(RegistryError::Auth {
                        registry: self.registry.clone(),
                        detail: format!("{}: 401 without a WWW-Authenticate challenge", step.what),
                    });
                };
                self.answer_challenge(&challenge, step)?;
                Try::Reauthed
            }
            Ok(resp) if is_transient(resp.status().as_u16()) && !attempt.last => {
                let retry_after = retry_after(resp.headers());
                tracing::warn!(registry = %self.registry, step = %step.what, status = %resp.status(), "retrying (asked to wait {retry_after:?})");
                Try::Again {
                    answer: Err(self.status_error(step, resp)),
                    retry_after,
                }
            }
            Ok(resp) => Try::Done(Ok(resp)),
            Err(e) if is_transient_error(&e) => {
                tracing::warn!(registry = %self.registry, step = %step.what, "transport error: {}", self.redact(&strip_query(&error_chain(&e))));
                Try::Again {
                    answer: Err(self.transport(step, attempt.number + 1, &e)),
                    retry_after: None,
                }
            }
            Err(e) => Try::Done(Err(self.transport(step, attempt.number + 1, &e))),
        })
    }

    fn transport(&self, step: &Step<'_>, attempts: u32, e: &reqwest::Error) -> RegistryError {
        let detail = error_chain(e);
        RegistryError::Transport {
            registry: self.registry.clone(),
            repository: step.repository.to_string(),
            step: step.what.clone(),
            attempts,
            detail: self.redact(&strip_query(&detail)),
        }
    }

    fn answer_challenge(
        &self,
        challenge: &Challenge,
        step: &Step<'_>,
    ) -> Result<(), RegistryError> {
        let params = &challenge.params;
        match challenge.scheme.to_ascii_lowercase().as_str() {
            "basic" => match &self.credential {
                Some(Credential::Basic { .. }) => {
                    *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = AuthState::Basic;
                    Ok(())
                }
                _ => Err(RegistryError::Auth { registry: self.registry.clone(), detail: format!("{} needs credentials: run `docker login {}` or pass --username and --password-stdin", step.what, self.registry) }),
            },
            "bearer" => {
                let realm = params.get("realm").cloned().ok_or_else(|| RegistryError::Auth { registry: self.registry.clone(), detail: "Bearer challenge without a realm".into() })?;
                let challenge = BearerChallenge { realm, service: params.get("service").cloned() };
                let token = self.fetch_token(&challenge, step)?;
                *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = AuthState::Bearer { token };
                Ok(())
            }
            other => Err(RegistryError::Auth { registry: self.registry.clone(), detail: format!("unsupported auth scheme {other:?}") }),
        }
    }

    fn fetch_token(
        &self,
        challenge: &BearerChallenge,
        step: &Step<'_>,
    ) -> Result<Secret, RegistryError> {
        let auth_err = |detail: String| RegistryError::Auth {
            registry: self.registry.clone(),
            detail,
        };
        let mut realm = Url::parse(&challenge.realm).map_err(|_| {
            auth_err(format!(
                "the token realm {:?} is not a URL",
                challenge.realm
            ))
        })?;
        // Credentials go to the realm only over TLS, unless the registry itself is plain HTTP here.
        if realm.scheme() != "https" && !(realm.scheme() == "http" && self.base.scheme() == "http")
        {
            return Err(auth_err(format!(
                "the token realm {realm} is not https: refusing to send credentials"
            )));
        }
        {
            let mut q = realm.query_pairs_mut();
            if let Some(s) = &challenge.service {
                q.append_pair("service", s);
            }
            for s in &self.scopes {
                q.append_pair("scope", s);
            }
        }
        let what = Step {
            repository: step.repository,
            what: "get a token".into(),
        };
        let resp = self.retry.run(
            self.retry.attempts,
            |d| self.wait(&what, d),
            |attempt| {
                let rb = match &self.credential {
                    Some(Credential::IdentityToken(refresh)) => {
                        let mut form = vec![
                            ("grant_type", "refresh_token".to_string()),
                            ("refresh_token", refresh.expose().to_string()),
                            ("client_id", "galley".to_string()),
                        ];
                        if let Some(s) = &challenge.service {
                            form.push(("service", s.clone()));
                        }
                        form.push(("scope", self.scopes.join(" ")));
                        let body = form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                            .finish();
                        self.http
                            .post(realm.as_str().split('?').next().unwrap_or_default())
                            .header("Content-Type", "application/x-www-form-urlencoded")
                            .body(body)
                    }
                    Some(Credential::Basic { username, password }) => self
                        .http
                        .get(realm.clone())
                        .header(AUTHORIZATION, basic_header(username, password)),
                    None => self.http.get(realm.clone()),
                };
                let request = match rb.build() {
                    Ok(r) => r,
                    Err(e) => return Try::Done(Err(self.transport(&what, attempt.number + 1, &e))),
                };
                match self.execute(&what, request) {
                    Err(e) => Try::Done(Err(e)),
                    Ok(Ok(r)) if is_transient(r.status().as_u16()) && !attempt.last => Try::Again {
                        retry_after: retry_after(r.headers()),
                        answer: Err(self.status_error(&what, r)),
                    },
                    Ok(Ok(r)) => Try::Done(Ok(r)),
                    // An untrusted certificate stays untrusted: not worth another try.
                    Ok(Err(e)) if is_transient_error(&e) => Try::Again {
                        answer: Err(self.transport(&what, attempt.number + 1, &e)),
                        retry_after: None,
                    },
                    Ok(Err(e)) => Try::Done(Err(self.transport(&what, attempt.number + 1, &e))),
                }
            },
        )?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_bounded(resp, MAX_ERROR_BODY);
            let (code, message) = error_code(&body);
            let hint = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                ": check the credentials (docker login, or --username and --password-stdin)"
            } else {
                ""
            };
            return Err(auth_err(self.redact(&format!(
                "the token service answered {status} ({code}: {message}){hint}"
            ))));
        }
        let body = read_bounded(resp, MAX_TOKEN_BODY);
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            auth_err("the token service answered something that is not JSON".into())
        })?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty());
        let token =
            token.ok_or_else(|| auth_err("the token service answered without a token".into()))?;
        self.remember_secret(token);
        Ok(Secret::new(token))
    }

    /// Turns a failed response into an error naming the registry, repository, step and the
    /// registry's error code.
    pub fn status_error(&self, step: &Step<'_>, resp: Response) -> RegistryError {
        let status = resp.status();
        let body = read_bounded(resp, MAX_ERROR_BODY);
        let (code, message) = error_code(&body);
        RegistryError::Status {
            registry: self.registry.clone(),
            repository: step.repository.to_string(),
            step: step.what.clone(),
            status: status.as_u16(),
            code,
            message: self.redact(&message),
        }
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
}

/// The wait a response's `Retry-After` asks for.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

/// An error and its sources, joined: reqwest's top-level message alone hides the cause.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut detail = e.to_string();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    detail
}

fn basic_header(username: &str, password: &Secret) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{username}:{}", password.expose()))
    )
}

/// Whether a transport error may go away on a retry: not a bad request, a redirect loop or an
/// untrusted certificate.
fn is_transient_error(e: &reqwest::Error) -> bool {
    !e.is_builder()
        && !e.is_redirect()
        && !error_chain(e).to_ascii_lowercase().contains("certificate")
}

/// Reads and discards what is left of a response (so the connection can be reused).
fn drain(resp: Response) {
    let _ = read_bounded(resp, MAX_ERROR_BODY);
}

/// Reads at most `limit` bytes of a body.
pub fn read_bounded(resp: Response, limit: u64) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = resp.take(limit).read_to_end(&mut out);
    out
}

/// The first error code and message of a distribution error body.
fn error_code(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let first = &v["errors"][0];
    let code = first["code"]
        .as_str()
        .unwrap_or("no error code")
        .to_string();
    // Counted in characters, not bytes: a registry's message may be in any language.
    let message: String = match first["message"].as_str() {
        Some(m) => m.chars().take(300).collect(),
        None => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    (code, message.trim().to_string())
}

/// Removes query strings from URLs in a text: upload URLs carry state and signatures.
fn strip_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_query = false;
    for c in text.chars() {
        if c == '?' {
            in_query = true;
            out.push_str("?…");
            continue;
        }
        if in_query && (c.is_whitespace() || c == ')' || c == '"') {
            in_query = false;
        }
        if !in_query {
            out.push(c);
        }
    }
    out
}

/// One authentication challenge: its scheme and parameters (names lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

/// Every challenge of every `WWW-Authenticate` value (RFC 9110, 11.6.1): a value may hold
/// several challenges (`Basic realm="r", Bearer realm="t",service="s"`) and a response several
/// values. A name followed by `=` is a parameter of the challenge before it; any other name
/// starts a challenge. Quoted strings may hold commas, spaces and escaped quotes.
fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for v in values {
        let b = v.as_bytes();
        let mut i = 0;
        let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        let skip = |i: &mut usize, also_commas: bool| {
            while *i < b.len()
                && (b[*i] == b' ' || b[*i] == b'\t' || (also_commas && b[*i] == b','))
            {
                *i += 1;
            }
        };
        let token = |i: &mut usize| {
            let start = *i;
            while *i < b.len() && is_tchar(b[*i]) {
                *i += 1;
            }
            (*i > start).then(|| v[start..*i].to_string())
        };
        let mut current: Option<Challenge> = None;
        loop {
            skip(&mut i, true);
            if i >= b.len() {
                break;
            }
            let Some(name) = token(&mut i) else {
                // Not a token: skip the character (a malformed header must not loop).
                i += 1;
                continue;
            };
            let mut j = i;
            skip(&mut j, false);
            let is_param = j < b.len() && b[j] == b'=' && current.is_some();
            if !is_param {
                out.extend(current.take());
                current = Some(Challenge {
                    scheme: name,
                    params: HashMap::new(),
                });
                // A token68 (`Negotiate abc==`) is not a parameter: skip it.
                continue;
            }
            i = j + 1;
            skip(&mut i, false);
            let mut value = String::new();
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut chars = v[i..].char_indices();
                let mut end = v.len() - i;
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = k + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                i += end;
            } else {
                let start = i;
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                value = v[start..i].trim().to_string();
            }
            if let Some(c) = current.as_mut() {
                c.params.insert(name.to_ascii_lowercase(), value);
            }
        }
        out.extend(current);
    }
    out
}

/// The challenge galley answers among those offered: Bearer (a token scoped to the repository)
/// before Basic, whatever their order; else the first.
fn pick_challenge(challenges: Vec<Challenge>) -> Option<Challenge> {
    let rank = |c: &Challenge| match c.scheme.to_ascii_lowercase().as_str() {
        "bearer" => 0,
        "basic" => 1,
        _ => 2,
    };
    challenges.into_iter().min_by_key(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(c.len(), 1);
        let (s, p) = (&c[0].scheme, &c[0].params);
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["service"], "registry.example.com");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let c = parse_challenges([r#"Basic realm="x""#]);
        assert_eq!(
            (c[0].scheme.as_str(), c[0].params["realm"].as_str()),
            ("Basic", "x")
        );
    }

    /// The defect: only the first WWW-Authenticate value was read, split at its first space,
    /// so `Basic ..., Bearer ...` in one value, or Basic and Bearer in two, answered the wrong
    /// challenge (or none).
    #[test]
    fn www_authenticate_with_several_challenges_or_values_picks_bearer() {
        let bearer = |c: Option<Challenge>| {
            let c = c.expect("a challenge");
            (
                c.scheme.to_ascii_lowercase(),
                c.params.get("realm").cloned(),
            )
        };
        let want = ("bearer".to_string(), Some("https://auth/t".to_string()));
        // One value, two challenges, Basic first.
        assert_eq!(
            bearer(pick_challenge(parse_challenges([
                r#"Basic realm="reg, with a comma", Bearer realm="https://auth/t",service="s""#
            ]))),
            want
        );
        // Two values.
        assert_eq!(
            bearer(pick_challenge(parse_challenges([
                r#"Basic realm="reg""#,
                r#"Bearer realm="https://auth/t", scope="repository:a:pull""#
            ]))),
            want
        );
        // Spaces around '=', a tab, an escaped quote, a token68 challenge before.
        let c = parse_challenges([
            "Negotiate abc==, bearer  realm = \"https://auth/t\",\tservice=\"a \\\"b\\\"\"",
        ]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[1].params["realm"], "https://auth/t");
        assert_eq!(c[1].params["service"], "a \"b\"");
        assert_eq!(bearer(pick_challenge(c)), want);
        // Garbage does not loop or panic.
        assert!(parse_challenges(["=,,\"\"=", ""]).len() <= 1);
    }

    #[test]
    fn strips_queries_from_messages() {
        assert_eq!(
            strip_query(
                "error sending request for url (http://h/v2/x?_state=abc&X-Amz-Signature=s)"
            ),
            "error sending request for url (http://h/v2/x?…)"
        );
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        let (c, m) = error_code(br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#);
        assert_eq!(
            (c.as_str(), m.as_str()),
            ("DENIED", "requested access to the resource is denied")
        );
        let (c, _) = error_code(b"<html>");
        assert_eq!(c, "no error code");
    }

    /// Regression: `message.truncate(300)` panicked when byte 300 fell inside a multi-byte
    /// character of a registry's (non-ASCII) error message.
    #[test]
    fn message_truncate_300_does_not_panic_inside_a_multibyte_character() {
        // 'é' is 2 bytes: byte 300 is in the middle of the 151st character after one ASCII byte.
        let long = format!("x{}", "é".repeat(400));
        let body = serde_json::json!({"errors": [{"code": "DENIED", "message": long}]});
        let (code, message) = error_code(body.to_string().as_bytes());
        assert_eq!(code, "DENIED");
        assert_eq!(message.chars().count(), 300);
        assert!(message.starts_with("xé"));
        // And a non-JSON body cut inside a character.
        let raw = "ü".repeat(500);
        let (_, message) = error_code(&raw.as_bytes()[..301]);
        assert_eq!(message.chars().filter(|c| *c == 'ü').count(), 150);
    }
}
