//! `galley doctor`: what a push to a repository will meet, found out before anything compiles.
//! Which credentials are used and whether they work, pull and push rights (an upload session
//! opened and cancelled, so nothing is left), a cross-repository mount from the base's
//! repository, the referrers API or the tag fallback galley will use, and the clock against the
//! registry's `Date`. One line per check, each failure with what to do.

use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, DATE, LOCATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Serialize;

use super::client::{read_bounded, Client, Step};
use super::credentials;
use super::{Reference, RegistryOptions};

/// Past this, tokens may be refused as expired or not yet valid.
const SKEW_FAIL: Duration = Duration::from_secs(300);
const SKEW_WARN: Duration = Duration::from_secs(30);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not as well as it could (galley falls back).
    Warn,
    /// A push would fail here.
    Fail,
    /// Not checked (an earlier check failed, or nothing to check).
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One check's line.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// reach, auth, pull, push, mount, referrers or clock.
    #[schema(value_type = String)]
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Every check for one repository.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Diagnosis {
    pub repository: String,
    /// Where the credentials come from (never the secret).
    pub credentials: String,
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// Whether a push would fail.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// One line per check, then its hint.
    pub fn human(&self) -> String {
        let mut out = format!("{}\n  credentials: {}\n", self.repository, self.credentials);
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<4}  {:<9} {}\n",
                c.status.as_str(),
                c.name,
                c.detail
            ));
            if let Some(h) = &c.hint {
                out.push_str(&format!("        {:<9} → {h}\n", ""));
            }
        }
        out
    }
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        hint: None,
    }
}

impl Check {
    fn hint(mut self, hint: impl Into<String>) -> Check {
        self.hint = Some(hint.into());
        self
    }
}

/// Where the credentials for `registry` come from.
fn credential_source(registry: &str, options: &RegistryOptions) -> String {
    if options.credential.is_some() {
        return "--username and --password-stdin".into();
    }
    match credentials::lookup(registry) {
        Ok(Some((_, found))) => match &found.helper {
            Some(h) => format!(
                "{} ({}), credential helper docker-credential-{h}",
                found.file.path.display(),
                found.entry
            ),
            None => format!("{} ({})", found.file.path.display(), found.entry),
        },
        Ok(None) => "none found: anonymous".into(),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// Checks `repo` (and a mount from `base` when it is on the same registry) as a push would meet
/// them. Every request is tried once: a doctor reports, it does not wait out an outage.
pub fn diagnose(
    repo: &Reference,
    base: Option<&Reference>,
    options: &RegistryOptions,
) -> Diagnosis {
    let mut d = Diagnosis {
        repository: repo.name(),
        credentials: credential_source(&repo.registry, options),
        checks: Vec::new(),
    };
    let skip_rest = |d: &mut Diagnosis, from: &[&'static str], why: &str| {
        for name in from {
            d.checks.push(check(name, Status::Skip, why));
        }
    };
    const AFTER_REACH: [&str; 6] = ["auth", "pull", "push", "mount", "referrers", "clock"];
    let credential = match options.credential_for(&repo.registry) {
        Ok(c) => c,
        Err(e) => {
            d.checks.push(
                check("auth", Status::Fail, e.to_string())
                    .hint("fix the credentials file, or pass --username with --password-stdin"),
            );
            return d;
        }
    };
    let mount_from =
        base.filter(|b| b.registry == repo.registry && b.repository != repo.repository);
    let mut scopes = vec![format!("repository:{}:push,pull", repo.repository)];
    if let Some(b) = mount_from {
        scopes.push(format!("repository:{}:pull", b.repository));
    }
    // Cancelling an upload is a DELETE, which token servers grant as its own `delete` action:
    // asked for apart, so a server that refuses it still grants the push token.
    let clients = Client::new(
        &repo.registry,
        repo.api_host(),
        scopes,
        options,
        credential.clone(),
    )
    .and_then(|c| {
        let delete = vec![format!("repository:{}:delete", repo.repository)];
        Ok((
            c,
            Client::new(&repo.registry, repo.api_host(), delete, options, credential)?,
        ))
    });
    let (client, canceller) = match clients {
        Ok(c) => c,
        Err(e) => {
            d.checks.push(check("reach", Status::Fail, e.to_string()));
            return d;
        }
    };
    let step = |what: &str| Step {
        repository: &repo.repository,
        what: what.into(),
    };

    // reach: /v2/ without credentials, as any client first meets it.
    let ping = client.url("/v2/");
    let answered = client
        .http()
        .get(ping.clone())
        .timeout(Duration::from_secs(10))
        .send();
    let resp = match answered {
        Ok(r) => r,
        Err(e) => {
            let why = client.redact(&super::client::error_chain(&e));
            d.checks.push(
                check("reach", Status::Fail, format!("{ping} cannot be reached: {why}")).hint(
                    "check the host and port; a registry on plain HTTP needs --insecure-registry HOST, a private CA --ca-bundle",
                ),
            );
            skip_rest(&mut d, &AFTER_REACH, "the registry cannot be reached");
            return d;
        }
    };
    let date = resp
        .headers()
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let challenge = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_whitespace().next())
        .collect::<Vec<_>>()
        .join(", ");
    d.checks.push(match resp.status() {
        StatusCode::OK => check(
            "reach",
            Status::Ok,
            format!("{ping} answers without credentials"),
        ),
        StatusCode::UNAUTHORIZED => check(
            "reach",
            Status::Ok,
            format!(
                "{ping} asks for credentials ({})",
                if challenge.is_empty() {
                    "no challenge"
                } else {
                    &challenge
                }
            ),
        ),
        s => check(
            "reach",
            Status::Fail,
            format!(
                "{ping} answers HTTP {}: not the distribution API",
                s.as_u16()
            ),
        )
        .hint("check the host: galley speaks the OCI distribution API at /v2/"),
    });
    if d.checks.last().is_some_and(|c| c.status == Status::Fail) {
        skip_rest(
            &mut d,
            &AFTER_REACH,
            "the registry does not speak the distribution API",
        );
        return d;
    }

    // auth: the same request with the credentials (a token for the repository's scopes).
    let refused_hint = format!(
        "check the user and password for {} (docker login {0}, or --username with --password-stdin)",
        repo.registry
    );
    match client.send_tries(&step("authenticate"), 1, &|http| Ok(http.get(ping.clone()))) {
        Ok(r) if r.status().is_success() => d.checks.push(check(
            "auth",
            Status::Ok,
            if challenge.is_empty() {
                "no credentials needed".to_string()
            } else {
                format!("accepted ({challenge})")
            },
        )),
        Ok(r) => d.checks.push(
            check(
                "auth",
                Status::Fail,
                format!("refused: HTTP {}", r.status().as_u16()),
            )
            .hint(refused_hint.clone()),
        ),
        Err(e) => {
            d.checks
                .push(check("auth", Status::Fail, e.to_string()).hint(refused_hint.clone()));
            skip_rest(&mut d, &AFTER_REACH[1..5], "the credentials are refused");
            d.checks.push(clock(date));
            return d;
        }
    }

    // pull: the tag list (404: the repository does not exist yet; the first push makes it).
    let tags = client.url(&format!("/v2/{}/tags/list?n=1000", repo.repository));
    d.checks.push(
        match client.send_tries(&step("list tags"), 1, &|http| Ok(http.get(tags.clone()))) {
            Ok(r) if r.status().is_success() => {
                let body = read_bounded(r, 16 << 20);
                let n = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["tags"].as_array().map(Vec::len))
                    .unwrap_or(0);
                check(
                    "pull",
                    Status::Ok,
                    format!("can read {}: {n} tags listed", repo.repository),
                )
            }
            Ok(r) if r.status() == StatusCode::NOT_FOUND => check(
                "pull",
                Status::Ok,
                format!(
                    "{} does not exist yet: the first push creates it",
                    repo.repository
                ),
            ),
            Ok(r) => denied("pull", "read", repo, r.status()),
            Err(e) => check("pull", Status::Fail, e.to_string()),
        },
    );

    // push: open an upload session, then cancel it.
    let uploads = client.url(&format!("/v2/{}/blobs/uploads/", repo.repository));
    d.checks.push(
        match client.send_tries(&step("start an upload"), 1, &|http| {
            Ok(http.post(uploads.clone()))
        }) {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                cancel_upload(&canceller, &step("cancel the upload"), &r)
            }
            Ok(r) => denied("push", "push to", repo, r.status()),
            Err(e) => check("push", Status::Fail, e.to_string()),
        },
    );

    // mount: the base's smallest blob (its config) mounted from its repository.
    d.checks.push(match mount_from {
        None => check(
            "mount",
            Status::Skip,
            match base {
                Some(b) if b.registry != repo.registry => {
                    format!(
                        "the base is on {}, another registry: its layers are uploaded",
                        b.registry
                    )
                }
                Some(_) => "the base is in this repository".to_string(),
                None => "no --base given".to_string(),
            },
        ),
        Some(b) => mount(&client, &canceller, repo, b),
    });

    // referrers: the API, or the tag schema galley falls back to.
    let zero = format!("sha256:{}", "0".repeat(64));
    let referrers = client.url(&format!("/v2/{}/referrers/{zero}", repo.repository));
    d.checks.push(match client.send_tries(&step("ask for referrers"), 1, &|http| Ok(http.get(referrers.clone()))) {
        Ok(r)
            if r.status().is_success()
                && r.headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.starts_with(crate::oci::MEDIA_INDEX)) =>
        {
            check("referrers", Status::Ok, "the referrers API: the registry indexes SBOMs and provenance")
        }
        Ok(_) => check(
            "referrers",
            Status::Ok,
            "no referrers API: galley keeps the tag sha256-<digest> listing them (the distribution spec's fallback)",
        ),
        Err(e) => check("referrers", Status::Warn, e.to_string()),
    });
    d.checks.push(clock(date));
    d
}

/// A refused pull or push, with what to do.
fn denied(name: &'static str, verb: &str, repo: &Reference, status: StatusCode) -> Check {
    let s = status.as_u16();
    let c = check(
        name,
        Status::Fail,
        format!("cannot {verb} {}: HTTP {s}", repo.repository),
    );
    match s {
        401 | 403 => c.hint(format!(
            "the credentials lack {name} rights on {}: use ones that have them (a read-only token cannot push)",
            repo.repository
        )),
        _ => c,
    }
}

/// Cancels the upload session a 202 opened: nothing is left in the registry.
fn cancel_upload(client: &Client, step: &Step<'_>, opened: &reqwest::blocking::Response) -> Check {
    let location = opened
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(at) = location.and_then(|l| client.resolve_location(opened.url(), &l).ok()) else {
        return check("push", Status::Warn, "can push, but the upload session has no Location to cancel it at: the registry expires it");
    };
    match client.send_tries(step, 1, &|http| Ok(http.delete(at.clone()))) {
        Ok(r) if r.status().is_success() => check(
            "push",
            Status::Ok,
            "can push: an upload session was opened and cancelled",
        ),
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => check(
            "push",
            Status::Ok,
            "can push; the test upload could not be cancelled (no delete right, which galley never needs): the registry expires it",
        ),
        Ok(r) => check(
            "push",
            Status::Warn,
            format!(
                "can push; cancelling the test upload answered HTTP {}: the registry expires it",
                r.status().as_u16()
            ),
        ),
        Err(e) => check(
            "push",
            Status::Warn,
            format!("can push; cancelling the test upload failed: {e}"),
        ),
    }
}

/// Mounts the base's config blob into `repo` from the base's repository.
fn mount(client: &Client, canceller: &Client, repo: &Reference, base: &Reference) -> Check {
    let step = Step {
        repository: &base.repository,
        what: "read the base".into(),
    };
    let at = base
        .digest
        .as_ref()
        .map(|d| d.to_string())
        .or_else(|| base.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let accept = [
        crate::oci::MEDIA_MANIFEST,
        crate::oci::MEDIA_INDEX,
        crate::oci::DOCKER_MANIFEST,
        crate::oci::DOCKER_MANIFEST_LIST,
    ]
    .join(", ");
    let manifest = |reference: &str| -> Result<serde_json::Value, String> {
        let url = client.url(&format!("/v2/{}/manifests/{reference}", base.repository));
        let r = client
            .send_tries(&step, 1, &|http| {
                Ok(http.get(url.clone()).header(ACCEPT, accept.clone()))
            })
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!(
                "reading {}:{reference} answered HTTP {}",
                base.name(),
                r.status().as_u16()
            ));
        }
        serde_json::from_slice(&read_bounded(r, 8 << 20))
            .map_err(|_| "the base's manifest is not JSON".to_string())
    };
    let mut m = match manifest(&at) {
        Ok(m) => m,
        Err(e) => {
            return check("mount", Status::Warn, e).hint("check --base: galley pulls it from there")
        }
    };
    if let Some(first) = m["manifests"][0]["digest"].as_str().map(str::to_string) {
        m = match manifest(&first) {
            Ok(m) => m,
            Err(e) => return check("mount", Status::Warn, e),
        };
    }
    let Some(digest) = m["config"]["digest"].as_str() else {
        return check("mount", Status::Warn, "the base's manifest names no config");
    };
    let url = client.url(&format!(
        "/v2/{}/blobs/uploads/?mount={digest}&from={}",
        repo.repository, base.repository
    ));
    let step = Step {
        repository: &repo.repository,
        what: "mount a blob".into(),
    };
    match client.send_tries(&step, 1, &|http| Ok(http.post(url.clone()))) {
        Ok(r) if r.status() == StatusCode::CREATED => check(
            "mount",
            Status::Ok,
            format!(
                "blobs mount from {}: the base's layers are not uploaded again",
                base.repository
            ),
        ),
        // The registry opened an upload instead: no mount; cancel it.
        Ok(r) if r.status() == StatusCode::ACCEPTED => {
            let _ = cancel_upload(canceller, &step, &r);
            check(
                "mount",
                Status::Warn,
                format!(
                    "the registry does not mount from {}: the base's layers are uploaded (slower)",
                    base.repository
                ),
            )
            .hint(format!(
                "give the credentials pull rights on {}",
                base.repository
            ))
        }
        Ok(r) => check(
            "mount",
            Status::Warn,
            format!("a mount answered HTTP {}", r.status().as_u16()),
        ),
        Err(e) => check("mount", Status::Warn, e.to_string()),
    }
}

/// The local clock against the registry's `Date`.
fn clock(date: Option<SystemTime>) -> Check {
    let Some(date) = date else {
        return check("clock", Status::Skip, "the registry sent no Date");
    };
    let now = SystemTime::now();
    let (skew, ahead) = match now.duration_since(date) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let detail = format!(
        "{} s {} the registry's",
        skew.as_secs(),
        if ahead { "ahead of" } else { "behind" }
    );
    if skew >= SKEW_FAIL {
        check("clock", Status::Fail, detail)
            .hint("sync this host's clock (NTP): tokens are refused as expired or not yet valid")
    } else if skew >= SKEW_WARN {
        check("clock", Status::Warn, detail).hint("sync this host's clock (NTP)")
    } else {
        check("clock", Status::Ok, detail)
    }
}
