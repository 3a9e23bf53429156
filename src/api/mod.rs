//! The HTTP API of `galley serve` (axum on hyper): routes, bearer-token auth, wire types, SSE.
//! Handlers validate requests, then ask the runner; blocking work (SQLite, git) runs on
//! tokio's blocking pool. The OpenAPI document is generated from the handlers themselves and
//! completed, when it is served, with what the configuration says (`contract`).

pub mod builds;
pub mod contract;
pub mod error;
pub mod guard;
pub mod info;
pub mod sse;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::serve::{sha256, ApiToken};
use crate::runner::Runner;
pub use error::{ApiError, ApiJson};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub runner: Runner,
    pub tokens: Arc<Vec<ApiToken>>,
    /// The names the service answers to (`guard`).
    pub hosts: Arc<guard::Hosts>,
    /// Open event streams, in all and per token (`sse`).
    pub streams: Arc<sse::StreamCount>,
}

/// Who is calling: the token's name, or `anonymous` when the service has no token.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "galley",
        description = "Build Rust services into minimal, reproducible OCI images: queue builds, follow their logs, read their history, cancel them.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "builds", description = "Builds: submit, follow, cancel, history"),
        (name = "projects", description = "What the service can build"),
        (name = "fleet", description = "The workers that share this service's store"),
        (name = "service", description = "Health and metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110, 11.1), so `bearer` and `BEARER` are the same scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks `Authorization: Bearer <token>` against every configured token in constant time.
async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let name = if state.tokens.is_empty() {
        "anonymous".to_string()
    } else {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(|t| sha256(t.as_bytes()));
        let Some(given) = given else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this service needs a token",
            )
            .hint("send Authorization: Bearer <token>"));
        };
        // Every token is compared, so the time taken does not say which one nearly matched.
        let mut found: Option<&str> = None;
        for t in state.tokens.iter() {
            if bool::from(t.sha256.ct_eq(&given)) {
                found = Some(&t.name);
            }
        }
        match found {
            Some(n) => n.to_string(),
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the token is not valid",
                )
                .hint("check the token; ask whoever runs the service for one"))
            }
        }
    };
    req.extensions_mut().insert(Principal(name.clone()));
    let mut resp = next.run(req).await;
    // For the access log, which runs outside.
    resp.extensions_mut().insert(Principal(name));
    Ok(resp)
}

/// The access log and the request metrics: method, route (the pattern, not the path: no ids,
/// no query), status, duration and the token's name (never the token), for every request.
/// Probes and scrapes (`/healthz`, `/readyz`, `/metrics`) are logged at debug.
async fn access(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let who = resp
        .extensions()
        .get::<Principal>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| "-".into());
    state
        .runner
        .metrics()
        .http_request(method.as_str(), &route, status, took.as_secs_f64());
    let ms = took.as_secs_f64() * 1000.0;
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        tracing::debug!(target: "galley::access", %method, %route, status, ms, token = %who, "request");
    } else {
        tracing::info!(target: "galley::access", %method, %route, status, ms, token = %who, "request");
    }
    resp
}

/// `GET /healthz`: 200 while the service runs (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "service", security(()), responses((status = 200, description = "The service is up", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the service takes builds; 503 while it shuts down or when its build
/// database refuses writes (a full disk), with the reason (no token needed).
#[utoipa::path(get, path = "/readyz", tag = "service", security(()), responses(
    (status = 200, description = "The service takes builds", body = String),
    (status = 503, description = "Not ready, and why", body = error::ErrorBody),
))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let runner = state.runner.clone();
    match blocking(move || Ok(runner.not_ready())).await? {
        None => Ok("ready\n"),
        Some(why) => {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why)
                .hint("the service's log says more; builds wait until it is ready again");
            e.retry_after = Some(5);
            Err(e)
        }
    }
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, description = "OpenMetrics text exposition", body = String, content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let m = state.runner.metrics();
    m.open_streams.set(state.streams.open() as i64);
    let text = m.render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The router and the OpenAPI document it serves.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(builds::create, builds::list))
        .routes(routes!(builds::get_build, builds::delete))
        .routes(routes!(builds::cancel))
        .routes(routes!(builds::rebuild))
        .routes(routes!(builds::repro))
        .routes(routes!(builds::rebase))
        .routes(routes!(builds::log))
        .routes(routes!(sse::events))
        .routes(routes!(info::projects))
        .routes(routes!(info::next_version))
        .routes(routes!(info::registry))
        .routes(routes!(info::registry_check))
        .routes(routes!(info::base_now))
        .routes(routes!(info::workers))
        .routes(routes!(metrics));
    let public = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz));
    let (protected, mut doc) = protected.split_for_parts();
    let (public, public_doc) = public.split_for_parts();
    doc.merge(public_doc);
    let base = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    let protected = protected.route(
        "/api/v1/openapi.json",
        get(move |State(state): State<AppState>| {
            let mut doc = base.clone();
            async move {
                // Read per request: the projects' galley.toml may have changed.
                let runner = state.runner.clone();
                let facts = blocking(move || Ok(contract::Facts::of(runner.config()))).await?;
                contract::complete(&mut doc, &facts);
                Ok::<_, ApiError>(axum::Json(doc))
            }
        }),
    );
    let protected = protected.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        authenticate,
    ));
    let app = Router::new()
        .merge(protected)
        .merge(public)
        .merge(crate::web::router())
        .fallback(|| async { ApiError::not_found("no such endpoint: see /api/v1/openapi.json") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .layer(axum::middleware::map_response(error::envelope))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access))
        .with_state(state);
    (app, doc)
}

/// Runs `f` on the blocking pool (SQLite, git), turning a panic or join failure into a 500.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}
