//! Errors as the API answers them: a status and a JSON body that says what was wrong, which
//! field, and what to do. Internal details (SQL, paths) stay in the service's log.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Request bodies larger than this are refused with 413 before they are parsed.
pub const MAX_BODY: usize = 64 << 10;

/// What the API answers when something is wrong.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `invalid_json`, `invalid_field`, `unknown_field`, `body_too_large`,
    /// `unauthorized`, `not_found`, `conflict`, `queue_full`, `idempotency_conflict`, ...
    pub code: String,
    pub message: String,
    /// The field of the request that is wrong (`variants[1]`, `version`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                field: None,
                hint: None,
            },
            retry_after: None,
        }
    }

    /// A 422 for one field of the request.
    pub fn field(field: &str, message: impl Into<String>, hint: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        e.detail.field = Some(field.to_string());
        e.detail.hint = Some(hint.into());
        e
    }

    pub fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.detail.hint = Some(hint.into());
        self
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// An internal failure: logged in full, answered without details.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed to answer; its log says why",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(ErrorBody { error: self.detail })).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"galley\""),
            );
        }
        resp
    }
}

/// Puts an error the framework answered in plain text (a path segment that is not a number, a
/// query that does not parse, a method a route does not take) into the JSON error envelope,
/// so every rejection reads the same. Other responses pass untouched.
pub async fn envelope(resp: Response) -> Response {
    let status = resp.status();
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, hint) = match status {
        StatusCode::BAD_REQUEST => (
            "invalid_request",
            "a build id is a positive integer; see /api/v1/openapi.json for each parameter",
        ),
        StatusCode::NOT_FOUND => ("not_found", "see /api/v1/openapi.json"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "see /api/v1/openapi.json for the methods of each route",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_request", "see /api/v1/openapi.json"),
        _ => ("error", "see /api/v1/openapi.json"),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, message)
        .hint(hint)
        .into_response();
    // Keep what the framework said besides the body (Allow on a 405).
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().entry(k).or_insert(v.clone());
        }
    }
    out
}

/// A JSON body: size-limited, `application/json`, unknown fields refused, and every problem
/// answered with the field it is about.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = json_bytes(req).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// The body of an action that takes no fields (cancel, rebuild, repro): `{}` or nothing, always
/// as `Content-Type: application/json`, which a cross-site form cannot send.
pub struct NoFields;

/// What [`NoFields`] accepts: an object without fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

impl<S: Send + Sync> FromRequest<S> for NoFields {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = json_bytes(req).await?;
        // Clients written before the body was documented send none.
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            parse::<Empty>(&bytes)?;
        }
        Ok(NoFields)
    }
}

/// The bytes of a request body that says it is JSON, at most [`MAX_BODY`] of them.
async fn json_bytes(req: Request) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over {MAX_BODY} bytes"),
        )
        .hint("a build request is a small JSON object: send only its fields")
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be JSON, not {content_type:?}"),
        )
        .hint("send Content-Type: application/json, also on a POST without a body (cancel, rebuild, repro)"));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| too_large())
}

/// Parses a JSON body, naming the field of any problem.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                // serde names the field in the message for these two; the path is the
                // enclosing object's.
                let named = |prefix: &str| {
                    message
                        .strip_prefix(prefix)
                        .and_then(|r| r.split('`').next())
                        .map(str::to_string)
                };
                let unknown = named("unknown field `");
                let missing = named("missing field `");
                // An unknown field is in the path already; a missing one is not.
                let field = match (&missing, path.as_str()) {
                    (Some(m), "." | "") => m.clone(),
                    (Some(m), p) => format!("{p}.{m}"),
                    (None, "." | "") => unknown.clone().unwrap_or_default(),
                    (None, p) => p.to_string(),
                };
                let mut e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    if unknown.is_some() {
                        "unknown_field"
                    } else {
                        "invalid_field"
                    },
                    message,
                );
                e.detail.field = (!field.is_empty() && field != ".").then_some(field);
                e.hint("see /api/v1/openapi.json for the request's fields")
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {message}"),
            )
            .hint(
                "send one JSON object, e.g. {\"variants\": [\"sqlite\"], \"version\": \"1.4.2\"}",
            ),
        }
    })
}
