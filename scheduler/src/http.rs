//! The scheduler's operator API: read-only HTTP/JSON over the core's views,
//! Prometheus metrics, health and readiness. `shoalctl` is its client.
//!
//! Routes (also described by `GET /api/v1/openapi.json`):
//! - `GET /api/v1/peers` → `{"peers": [PeerView…]}`
//! - `GET /api/v1/tasks` → `{"tasks": [TaskSummary…]}`
//! - `GET /api/v1/tasks/{digest}` → `TaskDetail` (holders, per-peer progress)
//! - `GET /metrics` → OpenMetrics text, every name prefixed `shoal_`
//! - `GET /healthz` → 200 while the process runs
//! - `GET /readyz` → 200 once the gRPC server serves, 503 before
//!
//! Errors are JSON, `{"error": {"code": "…", "message": "…"}}`, with a stable
//! upper-case code per kind ([`ApiError`]).
//!
//! Handlers only lock, call a view and serialise: every decision is the
//! core's. Not here: writes (preheat is future work and will need a bearer
//! token), authentication, TLS (the Service is cluster-internal), CORS.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use shoal_proto::{Digest, DigestError};
use tracing::Instrument;

use crate::core::{PeerView, TaskDetail, TaskSummary};
use crate::metrics::{self, Metrics};
use crate::state::SchedulerState;

/// The OpenAPI 3 document of this API (hand-written, kept beside this file).
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
#[derive(Clone)]
struct Api {
    state: Arc<SchedulerState>,
    metrics: Arc<Metrics>,
}

/// The operator API's routes over `state`, with `metrics` served at `/metrics`.
pub fn router(state: Arc<SchedulerState>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/tasks", get(tasks))
        // A wildcard, so that anything after `tasks/` (`../etc`, a digest
        // with a stray `/`) is reported as a bad digest rather than a
        // missing route.
        .route("/api/v1/tasks/{*digest}", get(task))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(trace_request))
        .with_state(Api { state, metrics })
}

/// One span per request; its status and duration logged at debug when it
/// is answered. The query string is left out of the span.
async fn trace_request(request: Request, next: Next) -> Response {
    let span = tracing::debug_span!(
        "http.request",
        http.method = %request.method(),
        http.path = %request.uri().path(),
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            http.status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request answered"
        );
    });
    response
}

/// Serves `router` on an already bound `listener` until `shutdown` resolves,
/// then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error the operator API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The path's digest is not `sha256:<64 lowercase hex>` (400).
    #[error("invalid digest {input:?}: {source}")]
    DigestInvalid {
        /// What the client sent (truncated).
        input: String,
        /// Why it is not a digest.
        source: DigestError,
    },
    /// The path is not a digest at all (bad percent-encoding) (400).
    #[error("invalid digest in path: {0}")]
    PathInvalid(String),
    /// No peer holds, downloads or asked for this task (404).
    #[error("no peer holds or downloads {0}")]
    TaskUnknown(Digest),
    /// No such route (404).
    #[error("no route for {0}; see /api/v1/openapi.json")]
    NotFound(String),
    /// The route exists but not with this method; the API is read-only (405).
    #[error("method {0} not allowed here; this API is read-only (GET)")]
    MethodNotAllowed(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::DigestInvalid { .. } | ApiError::PathInvalid(_) => "DIGEST_INVALID",
            ApiError::TaskUnknown(_) => "TASK_UNKNOWN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::DigestInvalid { .. } | ApiError::PathInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::TaskUnknown(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// The body of every error: `{"error": {"code", "message"}}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(error.code = self.code(), error.message = %self, "operator api error");
        let body = ErrorBody {
            error: ErrorInner {
                code: self.code(),
                message: self.to_string(),
            },
        };
        (self.status(), Json(body)).into_response()
    }
}

/// Client input echoed in a message, cut so that a huge path stays a short line.
fn echo(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[derive(Serialize)]
struct PeerList {
    peers: Vec<PeerView>,
}

#[derive(Serialize)]
struct TaskList {
    tasks: Vec<TaskSummary>,
}

async fn peers(State(api): State<Api>) -> Json<PeerList> {
    let peers = api.state.with_core(|core, now| core.peers(now));
    Json(PeerList { peers })
}

async fn tasks(State(api): State<Api>) -> Json<TaskList> {
    let tasks = api.state.with_core(|core, now| core.tasks(now));
    Json(TaskList { tasks })
}

async fn task(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TaskDetail>, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::PathInvalid(e.body_text()))?;
    let digest: Digest = raw.parse().map_err(|source| ApiError::DigestInvalid {
        input: echo(&raw),
        source,
    })?;
    api.state
        .with_core(|core, now| core.task(now, &digest))
        .map(Json)
        .ok_or(ApiError::TaskUnknown(digest))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn prometheus(State(api): State<Api>) -> impl IntoResponse {
    let text = api.metrics.encode(&api.state);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    uptime_secs: u64,
}

async fn healthz(State(api): State<Api>) -> Json<Health> {
    Json(Health {
        status: "ok",
        uptime_secs: api.state.uptime().as_secs(),
    })
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
}

async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Ready>) {
    let ready = api.state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Ready { ready }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(echo(uri.path()))
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/api/v1/peers",
            "/api/v1/tasks",
            "/api/v1/tasks/{digest}",
            "/api/v1/openapi.json",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(
                doc["paths"].get(path).is_some(),
                "openapi.json lacks {path}"
            );
        }
    }

    #[test]
    fn echo_cuts_long_input_on_a_char_boundary() {
        assert_eq!(echo("short"), "short");
        let long = "é".repeat(100);
        let cut = echo(&long);
        assert_eq!(cut.chars().count(), 81);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn every_error_has_a_code_and_status() {
        let bad = ApiError::DigestInvalid {
            input: "x".into(),
            source: DigestError::Algorithm,
        };
        assert_eq!(
            (bad.code(), bad.status()),
            ("DIGEST_INVALID", StatusCode::BAD_REQUEST)
        );
        let unknown = ApiError::TaskUnknown(Digest::from_sha256([0; 32]));
        assert_eq!(
            (unknown.code(), unknown.status()),
            ("TASK_UNKNOWN", StatusCode::NOT_FOUND)
        );
        let route = ApiError::NotFound("/x".into());
        assert_eq!(
            (route.code(), route.status()),
            ("NOT_FOUND", StatusCode::NOT_FOUND)
        );
    }
}
