//! What the service can build and with what: projects and their variants, the next version,
//! the registry credentials it found (never the secret).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{blocking, ApiError, AppState};
use crate::config::serve::{Project, Source};
use crate::registry::{credentials, Credential, RegistryOptions};
use crate::runner::source::offer;
use crate::runner::{bump, version_in_tag, Bump};

/// A variant and the cargo features it builds with.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VariantInfo {
    pub name: String,
    pub features: Vec<String>,
}

/// A project the service builds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProjectInfo {
    pub name: String,
    /// `path` (built as it is) or `git` (built at a ref).
    pub kind: String,
    pub source: String,
    /// From galley.toml's `[variants.*]` and the crate's `db_*` features.
    pub variants: Vec<VariantInfo>,
    /// The repository pushes go to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<String>,
    /// The crate's version in Cargo.toml.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why the project's files could not be read, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn project_info(data_dir: &std::path::Path, p: &Project) -> ProjectInfo {
    let (kind, source) = match &p.source {
        Source::Path(d) => ("path", d.display().to_string()),
        Source::Git(u) => ("git", u.clone()),
    };
    let (variants, version, error) = match offer(data_dir, p, None) {
        Ok(o) => (
            o.variants
                .into_iter()
                .map(|(name, features)| VariantInfo { name, features })
                .collect(),
            o.version,
            None,
        ),
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    ProjectInfo {
        name: p.name.clone(),
        kind: kind.into(),
        source,
        variants,
        push: p.push.as_ref().map(|r| r.name()),
        version,
        error,
    }
}

/// The projects, their variants and push repositories.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    tag = "projects",
    responses((status = 200, description = "Every configured project", body = Vec<ProjectInfo>))
)]
pub async fn projects(State(state): State<AppState>) -> Result<Json<Vec<ProjectInfo>>, ApiError> {
    let runner = state.runner.clone();
    blocking(move || {
        let config = runner.config();
        Ok(Json(
            config
                .projects
                .values()
                .map(|p| project_info(&config.data_dir, p))
                .collect(),
        ))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NextQuery {
    /// The project (may be left out when there is only one).
    pub project: Option<String>,
    /// patch (default), minor or major.
    pub bump: Option<Bump>,
}

/// A commit that decided the suggested bump.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DecidingCommit {
    pub commit: String,
    pub subject: String,
    pub bump: Bump,
}

/// The next versions of a project.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NextVersion {
    pub project: String,
    /// The bump `next` applies: the one asked for, else the suggested one.
    pub bump: Bump,
    /// The highest version published so far; with nothing published, the crate's version.
    pub current: String,
    /// The version to build now: `current` bumped by `bump` (with nothing published and no
    /// bump asked for, the crate's version itself: its first release).
    pub next: String,
    /// What each bump of `current` gives.
    pub patch: String,
    pub minor: String,
    pub major: String,
    /// The bump the commits since `current` ask for (Conventional Commits: fix → patch, feat →
    /// minor, `!` or BREAKING CHANGE → major; patch when none says).
    pub suggested: Bump,
    /// The commits that decided `suggested` (those of its kind, newest first, at most 20).
    pub decided_by: Vec<DecidingCommit>,
    /// Where `current` came from: `registry tags`, `history` (succeeded builds), `git tags`
    /// (`vX.Y.Z`) or `Cargo.toml` (nothing published yet).
    pub from: String,
    /// The same, as a code: `registry`, `history`, `git` or `cargo`.
    pub source: String,
    /// Why the registry was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn pick_project<'a>(state: &'a AppState, name: &Option<String>) -> Result<&'a Project, ApiError> {
    let config = state.runner.config();
    let list = || {
        config
            .projects
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => state.runner.project(n).ok_or_else(|| {
            ApiError::field(
                "project",
                format!("no project {n:?}"),
                format!("one of: {}", list()),
            )
        }),
        None if config.projects.len() == 1 => Ok(config.projects.values().next().expect("one")),
        None => Err(ApiError::field(
            "project",
            "the service builds several projects: say which",
            format!("one of: {}", list()),
        )),
    }
}

/// Options for a registry question asked while a client waits: short timeouts and two tries,
/// so a registry that never answers costs the caller seconds, not an hour.
fn registry_options(p: &Project) -> RegistryOptions {
    RegistryOptions {
        insecure: p.insecure.clone(),
        ca_bundle: p.ca_bundle.clone(),
        timeouts: crate::registry::Timeouts::interactive(),
        retry: crate::registry::retry::RetryPolicy {
            attempts: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The next version: from the highest version published (the push repository's tags, where
/// `sqlite-1.4.2` counts as 1.4.2; succeeded builds; git tags `v1.4.2`), else the crate's own,
/// with the bump the commits since then ask for (Conventional Commits) and the commits that
/// decided it.
#[utoipa::path(
    get,
    path = "/api/v1/versions/next",
    tag = "projects",
    params(NextQuery),
    responses(
        (status = 200, description = "The suggestion, and what each bump gives", body = NextVersion),
        (status = 422, description = "Unknown project or bump", body = super::error::ErrorBody),
    )
)]
pub async fn next_version(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
) -> Result<Json<NextVersion>, ApiError> {
    let project = pick_project(&state, &q.project)?.clone();
    let runner = state.runner.clone();
    blocking(move || {
        let mut warning = None;
        // Every published version, with where it was seen; the highest wins, the registry
        // first on a tie.
        let mut published: Vec<(semver::Version, &str)> = Vec::new();
        if let Some(repo) = &project.push {
            match crate::registry::tags::list_tags(repo, &registry_options(&project)) {
                Ok(tags) => published.extend(
                    tags.iter()
                        .filter_map(|t| version_in_tag(t))
                        .map(|v| (v, "registry")),
                ),
                Err(e) => warning = Some(format!("cannot list the tags of {}: {e}", repo.name())),
            }
        }
        let released = runner
            .store()
            .released_versions(&project.name)
            .map_err(ApiError::internal)?;
        published.extend(
            released
                .iter()
                .filter_map(|v| semver::Version::parse(v).ok())
                .map(|v| (v, "history")),
        );
        let data_dir = runner.config().data_dir.clone();
        let mut latest: Option<(semver::Version, &str)> = None;
        let git = crate::runner::source::release_history(&data_dir, &project, |tags| {
            let mut all = published.clone();
            all.extend(tags.iter().cloned().map(|v| (v, "git")));
            all.sort_by(|a, b| a.0.cmp(&b.0).then(rank(b.1).cmp(&rank(a.1))));
            latest = all.pop();
            // The commits since the tag of the latest version, when git has that tag.
            latest
                .as_ref()
                .map(|(v, _)| v.clone())
                .filter(|v| tags.contains(v))
        });
        if git.is_none() {
            published.sort_by(|a, b| a.0.cmp(&b.0).then(rank(b.1).cmp(&rank(a.1))));
            latest = published.pop();
        }
        let crate_version = offer(&data_dir, &project, None)
            .ok()
            .and_then(|o| o.version)
            .and_then(|v| semver::Version::parse(&v).ok())
            .unwrap_or_else(|| semver::Version::new(0, 1, 0));
        let (current, source) = match &latest {
            Some((v, s)) => (v.clone(), *s),
            None => (crate_version, "cargo"),
        };
        let mut deciding: Vec<DecidingCommit> = git
            .map(|(_, commits)| commits)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                crate::runner::commit_bump(&c.subject, &c.body).map(|bump| DecidingCommit {
                    commit: c.id,
                    subject: c.subject,
                    bump,
                })
            })
            .collect();
        let suggested = deciding.iter().map(|c| c.bump).max().unwrap_or(Bump::Patch);
        deciding.retain(|c| c.bump == suggested);
        deciding.truncate(20);
        let how = q.bump.unwrap_or(suggested);
        let next = if latest.is_none() && q.bump.is_none() {
            current.to_string()
        } else {
            bump(&current, how).to_string()
        };
        Ok(Json(NextVersion {
            project: project.name.clone(),
            bump: how,
            next,
            patch: bump(&current, Bump::Patch).to_string(),
            minor: bump(&current, Bump::Minor).to_string(),
            major: bump(&current, Bump::Major).to_string(),
            current: current.to_string(),
            suggested,
            decided_by: deciding,
            from: match source {
                "registry" => "registry tags",
                "history" => "history",
                "git" => "git tags",
                _ => "Cargo.toml",
            }
            .into(),
            source: source.into(),
            warning,
        }))
    })
    .await
}

/// Which source wins a tie between equal versions (lower first).
fn rank(source: &str) -> u8 {
    match source {
        "registry" => 0,
        "history" => 1,
        _ => 2,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RegistryQuery {
    pub project: Option<String>,
}

/// The credentials galley would use for a project's registry, and where it found them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistryInfo {
    pub project: String,
    /// The push repository (`host/repo`); absent when the project pushes nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Whether credentials were found (else pushes are anonymous).
    pub found: bool,
    /// The file that holds them and what points at it (`REGISTRY_AUTH_FILE`, containers
    /// auth.json, `DOCKER_CONFIG` or ~/.docker/config.json).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `auths`, `credHelpers` or `credsStore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    /// `basic` or `identity_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Every file looked at, in order.
    pub searched: Vec<String>,
    /// Why the lookup failed (a missing helper, an unreadable file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which credentials galley found for a project's registry (the username, never the secret).
#[utoipa::path(
    get,
    path = "/api/v1/registry",
    tag = "projects",
    params(RegistryQuery),
    responses(
        (status = 200, description = "What was found and where", body = RegistryInfo),
        (status = 422, description = "Unknown project", body = super::error::ErrorBody),
    )
)]
pub async fn registry(
    State(state): State<AppState>,
    Query(q): Query<RegistryQuery>,
) -> Result<Json<RegistryInfo>, ApiError> {
    let project = pick_project(&state, &q.project)?.clone();
    blocking(move || {
        let searched = credentials::auth_files()
            .iter()
            .map(|f| format!("{} ({})", f.path.display(), f.origin))
            .collect();
        let mut info = RegistryInfo {
            project: project.name.clone(),
            repository: project.push.as_ref().map(|r| r.name()),
            registry: project.push.as_ref().map(|r| r.registry.clone()),
            found: false,
            file: None,
            origin: None,
            entry: None,
            helper: None,
            kind: None,
            username: None,
            searched,
            error: None,
        };
        let Some(repo) = &project.push else {
            return Ok(Json(info));
        };
        match credentials::lookup(&repo.registry) {
            Ok(Some((credential, found))) => {
                info.found = true;
                info.file = Some(found.file.path.display().to_string());
                info.origin = Some(found.file.origin.to_string());
                info.entry = Some(found.entry.to_string());
                info.helper = found.helper;
                match credential {
                    Credential::Basic { username, .. } => {
                        info.kind = Some("basic".into());
                        info.username = Some(username);
                    }
                    Credential::IdentityToken(_) => info.kind = Some("identity_token".into()),
                }
            }
            Ok(None) => {}
            Err(e) => info.error = Some(e.to_string()),
        }
        Ok(Json(info))
    })
    .await
}

/// `galley doctor` on a project's push repository (and a mount from its base when that is on
/// the same registry), with the credentials the service would use: what a push will meet,
/// before anything compiles. Each check is tried once.
#[utoipa::path(
    get,
    path = "/api/v1/registry/check",
    tag = "projects",
    params(RegistryQuery),
    responses(
        (status = 200, description = "Every check; `failed` when a push would fail", body = RegistryCheck),
        (status = 409, description = "The project has no push repository", body = super::error::ErrorBody),
        (status = 422, description = "Unknown project", body = super::error::ErrorBody),
    )
)]
pub async fn registry_check(
    State(state): State<AppState>,
    Query(q): Query<RegistryQuery>,
) -> Result<Json<RegistryCheck>, ApiError> {
    let project = pick_project(&state, &q.project)?.clone();
    let Some(repo) = project.push.clone() else {
        // The request is well formed; the project's configuration is what does not allow it.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_push_repository",
            format!("project {} has no push repository to check", project.name),
        )
        .hint(format!(
            "set push = \"host/repo\" under [projects.{}] in the service's config",
            project.name
        )));
    };
    blocking(move || {
        let base = project
            .base
            .as_deref()
            .filter(|b| !b.starts_with("oci:"))
            .and_then(|b| crate::registry::Reference::parse(b).ok());
        let options = crate::registry::RegistryOptions {
            insecure: project.insecure.clone(),
            ca_bundle: project.ca_bundle.clone(),
            ..Default::default()
        };
        let diagnosis = crate::registry::doctor::diagnose(&repo, base.as_ref(), &options);
        Ok(Json(RegistryCheck {
            project: project.name.clone(),
            failed: diagnosis.failed(),
            diagnosis,
        }))
    })
    .await
}

/// What a project's base resolves to now, to tell whether a build's base has moved.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BaseNow {
    pub project: String,
    /// The base as configured (the project's, else the default).
    pub base: String,
    /// What its tag resolves to now (an index or a manifest), asked fresh.
    #[schema(value_type = String)]
    pub digest: crate::oci::Digest,
}

/// What a project's base tag resolves to now (one manifest read, no layer): a build whose
/// report names another base digest can be rebased (`POST /api/v1/builds/{id}/rebase`).
#[utoipa::path(
    get,
    path = "/api/v1/registry/base",
    tag = "projects",
    params(RegistryQuery),
    responses(
        (status = 200, description = "The base and its digest now", body = BaseNow),
        (status = 422, description = "Unknown project", body = super::error::ErrorBody),
        (status = 502, description = "The base's registry or layout cannot be read", body = super::error::ErrorBody),
    )
)]
pub async fn base_now(
    State(state): State<AppState>,
    Query(q): Query<RegistryQuery>,
) -> Result<Json<BaseNow>, ApiError> {
    let project = pick_project(&state, &q.project)?.clone();
    let cache_dir = state
        .runner
        .config()
        .cache_dir
        .clone()
        .unwrap_or_else(crate::registry::pull::BlobCache::default_dir);
    blocking(move || {
        let base = project
            .base
            .clone()
            .unwrap_or_else(|| crate::spec::DEFAULT_BASE.to_string());
        let unreadable = |e: String| {
            ApiError::new(StatusCode::BAD_GATEWAY, "base_unreadable", e)
                .hint("check the project's base and its registry (galley doctor)")
        };
        let digest =
            match crate::spec::BaseRef::parse(&base).map_err(|e| unreadable(e.to_string()))? {
                crate::spec::BaseRef::Layout { dir, tag } => crate::oci::layout::Layout::open(&dir)
                    .and_then(|l| l.resolve(&tag))
                    .map(|d| d.digest)
                    .map_err(|e| unreadable(e.to_string()))?,
                crate::spec::BaseRef::Registry(r) => {
                    let options = RegistryOptions {
                        insecure: project.insecure.clone(),
                        ca_bundle: project.ca_bundle.clone(),
                        ..Default::default()
                    };
                    let cache = crate::registry::pull::BlobCache::open(&cache_dir)
                        .map_err(|e| unreadable(e.to_string()))?;
                    crate::registry::pull::current_digest(&r, &options, &cache)
                        .map_err(|e| unreadable(e.to_string()))?
                }
            };
        Ok(Json(BaseNow {
            project: project.name.clone(),
            base,
            digest,
        }))
    })
    .await
}

/// The checks of one project's push repository.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistryCheck {
    pub project: String,
    /// Whether a push would fail (some check failed).
    pub failed: bool,
    #[serde(flatten)]
    pub diagnosis: crate::registry::doctor::Diagnosis,
}

/// A worker of the fleet (every `galley serve` on the same store).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// `worker_name` (the host name by default).
    pub name: String,
    /// The galley version it runs.
    pub version: String,
    pub started_at: String,
    /// Its last heartbeat.
    pub last_seen: String,
    /// Whether it was seen within one lease (a worker not seen for longer is gone: its
    /// builds are marked interrupted).
    pub alive: bool,
    /// Whether it is the instance that answers this request.
    pub this: bool,
    /// Ids of the builds it runs now.
    pub running: Vec<i64>,
    /// Projects it built successfully, most recent first (its target directories are warm:
    /// queued builds of these prefer it).
    pub warm_projects: Vec<String>,
}

/// The fleet's workers, by name.
#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "fleet",
    responses((status = 200, description = "Every worker the store knows", body = Vec<WorkerInfo>))
)]
pub async fn workers(State(state): State<AppState>) -> Result<Json<Vec<WorkerInfo>>, ApiError> {
    let runner = state.runner.clone();
    blocking(move || {
        let me = runner.worker_name().to_string();
        let time = crate::oci::time::rfc3339_from_ms;
        let workers = runner.workers().map_err(ApiError::internal)?;
        Ok(Json(
            workers
                .into_iter()
                .map(|(w, alive)| WorkerInfo {
                    this: w.name == me,
                    started_at: time(w.started_at),
                    last_seen: time(w.last_seen),
                    alive,
                    running: w.running,
                    warm_projects: w.warm,
                    version: w.version,
                    name: w.name,
                })
                .collect(),
        ))
    })
    .await
}
