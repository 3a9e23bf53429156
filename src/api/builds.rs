//! `/api/v1/builds`: submit, history, one record, its log, cancel, rebuild, delete.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::NoFields;
use super::{blocking, ApiError, ApiJson, AppState, Principal};
use crate::oci::Digest;
use crate::pipeline::report::{PlatformReport, Report, Status};
use crate::pipeline::{Stage, StageStatus};
use crate::repro::Verdict;
use crate::runner::event::{BuildEvent, StageChange};
use crate::runner::source::{is_ref, offer};
use crate::runner::{BuildInput, CancelReply, RunnerError, Submitted};
use crate::store::{BuildRow, BuildStatus, ListFilter, Store};

/// A build request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBuild {
    /// The project to build; may be left out when the service has only one.
    pub project: Option<String>,
    /// Variants to build (default: every variant the project offers).
    pub variants: Option<Vec<String>>,
    /// The version for tags and annotations: semver, e.g. `1.4.2`.
    pub version: String,
    /// Push to the project's repository (default false).
    pub push: Option<bool>,
    /// The git ref (branch, tag or commit) to build: git projects only (default the
    /// repository's HEAD).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

/// Where to find a build.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BuildUrls {
    #[serde(rename = "self")]
    pub record: String,
    pub events: String,
    pub log: String,
    pub cancel: String,
    pub rebuild: String,
    pub repro: String,
}

impl BuildUrls {
    fn of(id: i64) -> BuildUrls {
        let base = format!("/api/v1/builds/{id}");
        BuildUrls {
            events: format!("{base}/events"),
            log: format!("{base}/log"),
            cancel: format!("{base}/cancel"),
            rebuild: format!("{base}/rebuild"),
            repro: format!("{base}/repro"),
            record: base,
        }
    }
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: i64,
    pub status: BuildStatus,
    pub urls: BuildUrls,
}

/// One stage of one variant on one target.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StageRecord {
    pub target: String,
    #[schema(value_type = String)]
    pub stage: Stage,
    #[schema(value_type = String)]
    pub status: StageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One variant of a build.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VariantRecord {
    pub name: String,
    /// `succeeded` or `failed` once the build has a report.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub digest: Option<Digest>,
    pub tags: Vec<String>,
    /// `host/repo:tag@digest` for every tag pushed.
    pub references: Vec<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Stage by stage, as they ran (live while the build runs).
    pub stages: Vec<StageRecord>,
    /// Per platform: sizes, digests, ELF facts, compression (from the report).
    #[schema(value_type = Vec<Object>)]
    pub platforms: Vec<PlatformReport>,
}

/// How much of the log was dropped past its cap.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogDropped {
    pub lines: i64,
    pub bytes: i64,
}

/// A build as recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BuildRecord {
    pub id: i64,
    pub project: String,
    pub status: BuildStatus,
    /// What was asked for.
    pub inputs: BuildInput,
    /// The commit the sources were at (absent outside git).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether a path project had uncommitted changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    /// The name of the token that started it.
    pub started_by: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// rustc, cargo-zigbuild, zig and UPX versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tools: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// Whether stopping the build needed SIGKILL after the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced_kill: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_dropped: Option<LogDropped>,
    /// The `GALLEY_BUILD_TAG` every process of this build carries in its environment.
    pub process_tag: String,
    /// The worker that ran (or runs) it; absent while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Where its OCI layout is: on the worker that built it (`worker: path`). Pushed images are
    /// in the registry for everyone; a layout is only on that worker's disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub variants: Vec<VariantRecord>,
    /// The full report once the build ended with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    /// For a repro (`inputs.repro_of` set): the verdict, once it ran: `identical`, `tools`
    /// (checked first), `notes`, and per variant the `differences` down to the key or file.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub verdict: Option<Verdict>,
    /// The newest repro of this build, if one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reproduced: Option<ReproLink>,
    pub urls: BuildUrls,
}

/// A repro of a build, as its build view links it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReproLink {
    /// The repro build's id.
    pub id: i64,
    pub status: BuildStatus,
    /// Whether every digest matched (absent while it runs or when it could not compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identical: Option<bool>,
}

/// A page of history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BuildList {
    pub builds: Vec<BuildRecord>,
    /// Pass as `before` for the next page (absent on the last page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

fn time(ms: Option<i64>) -> Option<String> {
    ms.map(crate::oci::time::rfc3339_from_ms)
}

/// A stage event, folded into its variant's list of stages.
fn apply_stage(variants: &mut [VariantRecord], c: StageChange) {
    let Some(v) = variants.iter_mut().find(|v| c.variant == v.name) else {
        return;
    };
    match v
        .stages
        .iter_mut()
        .find(|s| s.target == c.target && s.stage == c.stage)
    {
        Some(s) => {
            s.status = c.status;
            s.ms = c.ms;
            s.detail = c.detail;
        }
        None => v.stages.push(StageRecord {
            started_at: (c.status == StageStatus::Running).then_some(c.ts),
            target: c.target,
            stage: c.stage,
            status: c.status,
            ms: c.ms,
            detail: c.detail,
        }),
    }
}

/// Each variant's outcome, as the report says.
fn fill_from_report(variants: &mut [VariantRecord], report: Report) {
    for rv in report.variants {
        let Some(v) = variants.iter_mut().find(|v| rv.variant == v.name) else {
            continue;
        };
        v.status = Some(rv.status);
        v.digest = rv.digest;
        v.tags = rv.tags;
        v.warnings = rv.warnings;
        if let Some(push) = rv.push {
            v.references = push.references;
            v.warnings.extend(push.withheld);
        }
        v.error = rv.error;
        v.platforms = rv.platforms;
    }
}

/// The plain-text log's line for an event (nothing for events that are not log lines).
fn log_line(out: &mut String, e: BuildEvent) {
    use std::fmt::Write as _;
    let _ = match e {
        BuildEvent::Log(l) => {
            let who = match (l.variant, l.target) {
                (Some(v), Some(t)) => format!("[{v} {t}] "),
                _ => String::new(),
            };
            writeln!(out, "{} {who}{}: {}", l.ts, l.stage, l.line)
        }
        BuildEvent::Dropped(d) => writeln!(out, "{}", d.message),
        BuildEvent::End(end) => writeln!(
            out,
            "{} build {}{}",
            end.ts,
            end.status.as_str(),
            end.error.map(|e| format!(": {e}")).unwrap_or_default()
        ),
        _ => Ok(()),
    };
}

/// A build's newest verdict, if it is a repro that got one.
fn last_verdict(store: &dyn Store, id: i64) -> Result<Option<Verdict>, ApiError> {
    let data = store
        .last_event(id, BuildEvent::VERDICT)
        .map_err(ApiError::internal)?;
    Ok(
        match data.map(|d| BuildEvent::decode(BuildEvent::VERDICT, &d)) {
            Some(Ok(BuildEvent::Verdict(v))) => Some(*v),
            Some(Err(e)) => {
                tracing::warn!(build = id, "unreadable verdict: {e}");
                None
            }
            _ => None,
        },
    )
}

/// Assembles a build's record from its row, its stage events and its report.
pub fn record(
    store: &dyn Store,
    row: BuildRow,
    with_stages: bool,
) -> Result<BuildRecord, ApiError> {
    let inputs = row.input().map_err(ApiError::internal)?;
    let mut variants: Vec<VariantRecord> = inputs
        .variants
        .iter()
        .map(|v| VariantRecord {
            name: v.clone(),
            status: None,
            digest: None,
            tags: Vec::new(),
            references: Vec::new(),
            warnings: Vec::new(),
            error: None,
            stages: Vec::new(),
            platforms: Vec::new(),
        })
        .collect();
    if with_stages {
        for e in store.stage_events(row.id).map_err(ApiError::internal)? {
            match BuildEvent::from_stored(&e) {
                Ok(BuildEvent::Stage(c)) => apply_stage(&mut variants, c),
                Ok(_) => {}
                Err(err) => tracing::warn!(build = row.id, "{err}"),
            }
        }
    }
    if let Some(report) = &row.report {
        // A report this galley cannot read leaves the variants as the inputs name them.
        match Report::from_value(report.clone()) {
            Ok(report) => fill_from_report(&mut variants, report),
            Err(e) => tracing::warn!(build = row.id, "the stored report is unreadable: {e}"),
        }
    }
    let id = row.id;
    // The verdict and the repro link cost two queries: only for a single build's view.
    let (verdict, reproduced) = if with_stages {
        let verdict = last_verdict(store, id)?;
        let reproduced = match store.latest_repro(id).map_err(ApiError::internal)? {
            Some(r) => Some(ReproLink {
                id: r.id,
                status: r.status,
                identical: last_verdict(store, r.id)?.map(|v| v.identical),
            }),
            None => None,
        };
        (verdict, reproduced)
    } else {
        (None, None)
    };
    Ok(BuildRecord {
        id,
        project: row.project,
        status: row.status,
        inputs,
        commit: row.commit,
        dirty: row.dirty,
        started_by: row.started_by,
        created_at: time(Some(row.created_at)).unwrap_or_default(),
        started_at: time(row.started_at),
        finished_at: time(row.finished_at),
        queue_wait_ms: row.started_at.map(|s| s - row.created_at),
        duration_ms: row.started_at.zip(row.finished_at).map(|(s, f)| f - s),
        tools: row.tools,
        error: row.error,
        cancelled_by: row.cancelled_by,
        forced_kill: row.forced_kill,
        log_dropped: (row.dropped_lines > 0).then_some(LogDropped {
            lines: row.dropped_lines,
            bytes: row.dropped_bytes,
        }),
        process_tag: row.process_tag,
        output: row
            .output_dir
            .as_ref()
            .zip(row.worker.as_ref())
            .map(|(dir, w)| format!("{w}: {dir}")),
        worker: row.worker,
        variants,
        report: row.report,
        verdict,
        reproduced,
        urls: BuildUrls::of(id),
    })
}

/// A build's record, or 404.
pub async fn load(state: &AppState, id: i64) -> Result<BuildRecord, ApiError> {
    let store = state.runner.store().clone();
    blocking(move || {
        let row = store
            .get_build(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
        record(store.as_ref(), row, true)
    })
    .await
}

fn runner_error(e: RunnerError) -> ApiError {
    match e {
        RunnerError::NotFound(id) => ApiError::not_found(format!("no build {id}")),
        e @ (RunnerError::Finished { .. } | RunnerError::NotFinished { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        e @ RunnerError::NotReproducible { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_reproducible", e.to_string())
                .hint("reproduce a finished build that has images (its own, not a repro)")
        }
        e @ RunnerError::NotRebasable { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "not_rebasable",
            e.to_string(),
        )
        .hint("rebase a finished build that has images (not a repro), on the worker that built it"),
        e @ RunnerError::QueueFull(_) => {
            let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
                .hint("try again later, or raise max_queued in the service's config");
            err.retry_after = Some(30);
            err
        }
        RunnerError::KeyConflict => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_conflict",
            "this Idempotency-Key was used before with a different request body",
        )
        .hint("use a new Idempotency-Key for a new request"),
        e @ RunnerError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        ),
        other => ApiError::internal(other),
    }
}

/// Validates a request against the project's configuration and files.
fn validate(state: &AppState, req: CreateBuild) -> Result<BuildInput, ApiError> {
    let config = state.runner.config();
    let name = match (&req.project, config.projects.len()) {
        (Some(p), _) => p.clone(),
        (None, 1) => config.projects.keys().next().expect("one").clone(),
        (None, _) => {
            return Err(ApiError::field(
                "project",
                "the service builds several projects: say which",
                format!(
                    "one of: {}",
                    config
                        .projects
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    };
    let Some(project) = state.runner.project(&name) else {
        return Err(ApiError::field(
            "project",
            format!("no project {name:?}"),
            format!(
                "one of: {}",
                config
                    .projects
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };

    if req.version.len() > super::contract::MAX_VERSION_LEN {
        return Err(ApiError::field(
            "version",
            format!(
                "the version has {} characters, more than {}",
                req.version.len(),
                super::contract::MAX_VERSION_LEN
            ),
            "the tags made from it must fit in 128 characters: use a shorter pre-release",
        ));
    }
    let version = semver::Version::parse(&req.version).map_err(|e| {
        ApiError::field(
            "version",
            format!("{:?} is not a semantic version: {e}", req.version),
            "use MAJOR.MINOR.PATCH, e.g. 1.4.2 or 2.0.0-rc.1",
        )
    })?;
    if !version.build.is_empty() || !crate::registry::reference::is_tag(&req.version) {
        return Err(ApiError::field(
            "version",
            format!("{:?} cannot be part of an image tag", req.version),
            "leave out build metadata (+...): tags allow letters, digits, '.', '_' and '-'",
        ));
    }

    match (&req.git_ref, &project.source) {
        (Some(r), crate::config::serve::Source::Git(_)) if !is_ref(r) => {
            return Err(ApiError::field(
                "ref",
                format!("{r:?} is not a branch, tag or commit name galley accepts"),
                "use letters, digits, '.', '_', '/' and '-', starting with a letter or digit",
            ))
        }
        (Some(_), crate::config::serve::Source::Path(_)) => {
            return Err(ApiError::field(
                "ref",
                format!("project {name} is a directory, built as it is: it has no refs"),
                "leave out ref, or configure the project with `git = ...`",
            ))
        }
        _ => {}
    }
    let push = req.push.unwrap_or(false);
    if push && project.push.is_none() {
        return Err(ApiError::field(
            "push",
            format!("project {name} has no push repository"),
            format!("set push = \"host/repo\" under [projects.{name}] in the service's config"),
        ));
    }

    let offered = offer(&config.data_dir, project, req.git_ref.as_deref()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "project_unreadable",
            e.to_string(),
        )
    })?;
    let names: Vec<&str> = offered.variants.iter().map(|(n, _)| n.as_str()).collect();
    let variants = match req.variants {
        None => names.iter().map(|s| s.to_string()).collect(),
        Some(v) => v,
    };
    check_variants(&name, &names, &variants)?;
    // The worker's own rules, on the galley.toml of the ref asked for: a build that would fail
    // on its tags is refused here.
    let mut owners = Default::default();
    for v in &variants {
        crate::spec::variant_tags(&offered.config, &[], v, &req.version, &mut owners).map_err(
            |e| {
                ApiError::field(
                    "version",
                    e.to_string(),
                    "fix the tag templates in the project's galley.toml, or pick another version",
                )
            },
        )?;
    }
    Ok(BuildInput {
        project: name,
        variants,
        version: req.version,
        push,
        git_ref: req.git_ref,
        repro_of: None,
        retry_of: None,
        rebase_of: None,
    })
}

/// The variants asked for: at least one, at most 32, each one the project offers, each once.
fn check_variants(project: &str, names: &[&str], variants: &[String]) -> Result<(), ApiError> {
    if variants.is_empty() {
        return Err(ApiError::field(
            "variants",
            "no variant to build",
            format!("name at least one of: {}", names.join(", ")),
        ));
    }
    if variants.len() > 32 {
        return Err(ApiError::field(
            "variants",
            "more than 32 variants",
            "split the build",
        ));
    }
    for (i, v) in variants.iter().enumerate() {
        if !names.contains(&v.as_str()) {
            return Err(ApiError::field(
                &format!("variants[{i}]"),
                format!("project {project} has no variant {v:?}"),
                format!("one of: {}", names.join(", ")),
            ));
        }
        if variants[..i].contains(v) {
            return Err(ApiError::field(
                &format!("variants[{i}]"),
                format!("variant {v:?} is listed twice"),
                "list each variant once",
            ));
        }
    }
    Ok(())
}

/// The `Idempotency-Key` of a request: 1 to 255 visible ASCII characters other than `"`, bare
/// or quoted as a structured-field string (`"key"`, as the IETF draft writes it).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let raw = v.to_str().unwrap_or("\"").trim();
    let key = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
    {
        return Ok(Some(key.to_string()));
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        "Idempotency-Key must be 1 to 255 visible ASCII characters other than '\"', bare or in quotes",
    )
    .hint("use a UUID"))
}

/// Queue a build.
#[utoipa::path(
    post,
    path = "/api/v1/builds",
    tag = "builds",
    request_body = CreateBuild,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the same build; same key, other body: 422")),
    responses(
        (status = 202, description = "Queued (or the build an earlier request with this Idempotency-Key queued)", body = Accepted),
        (status = 400, description = "Not JSON, or a bad Idempotency-Key", body = super::error::ErrorBody),
        (status = 401, description = "No or wrong token", body = super::error::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "Not application/json", body = super::error::ErrorBody),
        (status = 422, description = "A field is wrong: `field` says which, `hint` how to fix it", body = super::error::ErrorBody),
        (status = 429, description = "The queue is full (see Retry-After)", body = super::error::ErrorBody),
        (status = 503, description = "Shutting down", body = super::error::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateBuild>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let st = state.clone();
    let (submitted, status) = blocking(move || {
        let input = validate(&st, req)?;
        let submitted = st
            .runner
            .submit(&input, &who.0, key.as_deref())
            .map_err(runner_error)?;
        let id = match submitted {
            Submitted::New(id) | Submitted::Replayed(id) => id,
        };
        let status = st
            .runner
            .store()
            .get_build(id)
            .map_err(ApiError::internal)?
            .map(|r| r.status)
            .unwrap_or(BuildStatus::Queued);
        Ok((submitted, status))
    })
    .await?;
    Ok(accepted(submitted, status))
}

/// The 202 answer to a submission: the build, where to find it, and whether an earlier request
/// with the same Idempotency-Key queued it.
fn accepted(submitted: Submitted, status: BuildStatus) -> Response {
    let (id, replayed) = match submitted {
        Submitted::New(id) => (id, false),
        Submitted::Replayed(id) => (id, true),
    };
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id,
            status,
            urls: BuildUrls::of(id),
        }),
    )
        .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/builds/{id}")) {
        h.insert(header::LOCATION, v);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// History filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many builds (1 to 200, default 50).
    pub limit: Option<usize>,
    /// Only builds with a smaller id (the `next_before` of the previous page).
    pub before: Option<i64>,
    pub project: Option<String>,
    /// queued, running, succeeded, failed, cancelled or interrupted.
    pub status: Option<String>,
}

/// Build history, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/builds",
    tag = "builds",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of builds, newest first", body = BuildList),
        (status = 422, description = "A bad filter", body = super::error::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<BuildList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            "limit must be 1 to 200",
            "e.g. limit=50",
        ));
    }
    let status = match &q.status {
        None => None,
        Some(s) => Some(BuildStatus::parse(s).ok_or_else(|| {
            ApiError::field(
                "status",
                format!("no status {s:?}"),
                "one of queued, running, succeeded, failed, cancelled, interrupted",
            )
        })?),
    };
    let filter = ListFilter {
        limit: limit + 1,
        before: q.before,
        project: q.project.clone(),
        status,
    };
    let store = state.runner.store().clone();
    blocking(move || {
        let mut rows = store.list_builds(&filter).map_err(ApiError::internal)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_before = if more {
            rows.last().map(|r| r.id)
        } else {
            None
        };
        let builds = rows
            .into_iter()
            .map(|r| record(store.as_ref(), r, false))
            .collect::<Result<_, _>>()?;
        Ok(Json(BuildList {
            builds,
            next_before,
        }))
    })
    .await
}

/// One build: inputs, who started it, tool versions, and per variant and stage the status,
/// timing, sizes, digests, warnings and errors.
#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}",
    tag = "builds",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 200, description = "The build's record", body = BuildRecord),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
    )
)]
pub async fn get_build(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<BuildRecord>, ApiError> {
    Ok(Json(load(&state, id).await?))
}

/// Remove a finished build's record, log and output.
#[utoipa::path(
    delete,
    path = "/api/v1/builds/{id}",
    tag = "builds",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
        (status = 409, description = "The build has not ended", body = super::error::ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let runner = state.runner.clone();
    blocking(move || runner.delete(id).map_err(runner_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel a build: SIGTERM to its whole process tree, SIGKILL after the grace period; registry
/// waits stop too. Answers once it has stopped (200), or 202 if it is still stopping.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/cancel",
    tag = "builds",
    request_body(content = super::error::Empty, content_type = "application/json", description = "No fields: `{}` (an empty body is also taken)"),
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 200, description = "Cancelled (also when it was cancelled before)", body = BuildRecord),
        (status = 202, description = "Cancel sent; still stopping", body = BuildRecord),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
        (status = 409, description = "The build has already ended otherwise", body = super::error::ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    _: NoFields,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let reply = blocking(move || runner.cancel(id, &who.0).map_err(runner_error)).await?;
    if let CancelReply::Stopping(_) = reply {
        let limit = state.runner.config().cancel_grace + Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        while started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let rec = load(&state, id).await?;
            if rec.status.is_final() {
                let code = if rec.status == BuildStatus::Cancelled {
                    StatusCode::OK
                } else {
                    // It ended on its own before the cancel reached it.
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        format!("build {id} has already {}", rec.status),
                    ));
                };
                return Ok((code, Json(rec)).into_response());
            }
        }
        return Ok((StatusCode::ACCEPTED, Json(load(&state, id).await?)).into_response());
    }
    Ok((StatusCode::OK, Json(load(&state, id).await?)).into_response())
}

/// Queue the same inputs again as a new build.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/rebuild",
    tag = "builds",
    request_body(content = super::error::Empty, content_type = "application/json", description = "No fields: `{}` (an empty body is also taken)"),
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 202, description = "Queued", body = Accepted),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
        (status = 429, description = "The queue is full", body = super::error::ErrorBody),
    )
)]
pub async fn rebuild(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    _: NoFields,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let submitted = blocking(move || runner.rebuild(id, &who.0).map_err(runner_error)).await?;
    Ok(accepted(submitted, BuildStatus::Queued))
}

/// Build the recorded inputs of a finished build again, at another path and without the stage
/// cache, and compare every digest. The repro is a build of its own (202 with its id); its
/// record carries the `verdict`, and it succeeds only when every digest matches.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/repro",
    tag = "builds",
    request_body(content = super::error::Empty, content_type = "application/json", description = "No fields: `{}` (an empty body is also taken)"),
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 202, description = "The repro is queued", body = Accepted),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
        (status = 409, description = "The build is not finished, has no image, or is a repro", body = super::error::ErrorBody),
        (status = 429, description = "The queue is full", body = super::error::ErrorBody),
    )
)]
pub async fn repro(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    _: NoFields,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let submitted = blocking(move || runner.repro(id, &who.0).map_err(runner_error)).await?;
    Ok(accepted(submitted, BuildStatus::Queued))
}

/// Move a finished build's images onto the project's base as it is now (its tag asked again),
/// without compiling: galley's layers kept, the config derived again, the SBOM and provenance
/// attached again; pushed, tags last, when the build pushed. The rebase is a build of its own
/// (202 with its id), whose report has the new digests.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/rebase",
    tag = "builds",
    request_body(content = super::error::Empty, content_type = "application/json", description = "No fields: `{}` (an empty body is also taken)"),
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 202, description = "The rebase is queued", body = Accepted),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
        (status = 409, description = "The build is not finished, has no image, is a repro, or its layout is elsewhere", body = super::error::ErrorBody),
        (status = 429, description = "The queue is full", body = super::error::ErrorBody),
    )
)]
pub async fn rebase(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    _: NoFields,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let submitted = blocking(move || runner.rebase(id, &who.0).map_err(runner_error)).await?;
    Ok(accepted(submitted, BuildStatus::Queued))
}

/// The whole log as text: one line per log event, the dropped middle of a capped log marked.
#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/log",
    tag = "builds",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 200, description = "The log", body = String, content_type = "text/plain"),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
    )
)]
pub async fn log(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let store = state.runner.store().clone();
    let text = blocking(move || {
        store
            .get_build(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
        let mut out = String::new();
        let mut after = 0;
        loop {
            let batch = store
                .events_after(id, after, 2000)
                .map_err(ApiError::internal)?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                if let Ok(e) = BuildEvent::from_stored(e) {
                    log_line(&mut out, e);
                }
            }
        }
        Ok(out)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
