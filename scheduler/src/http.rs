//! The scheduler's operator API: HTTP/JSON over the core's views, a few
//! write endpoints for operators steering the swarm, Prometheus metrics,
//! health and readiness. `shoalctl` is its client.
//!
//! Routes (also described by `GET /api/v1/openapi.json`):
//! - `GET /` → the status page, and `GET /api/v1/overview` → its data
//!   ([`crate::status_page`])
//! - `GET /api/v1/peers` → `{"peers": [PeerView…]}`
//! - `GET /api/v1/tasks` → `{"tasks": [TaskSummary…]}`
//! - `GET /api/v1/tasks/{digest}` → `TaskDetail` (holders, per-peer progress)
//! - `POST`/`DELETE /api/v1/peers/{id}/quarantine` → quarantine a peer (offer
//!   it as a parent for no task) or lift that
//! - `POST /api/v1/tasks/{digest}/drop` → tell every holder to drop the task
//! - `POST /api/v1/preheat` → a preheat job; `GET /api/v1/preheat` → every
//!   job; `GET`/`DELETE /api/v1/preheat/{id}` → one job / cancel it
//!   ([`crate::preheat`])
//! - `GET /metrics` → OpenMetrics text, every name prefixed `shoal_`
//! - `GET /healthz` → 200 while the process can work; 503 when the core
//!   panicked (its lock is poisoned) or the planning ticker stopped
//! - `GET /readyz` → 200 once the gRPC server serves and while healthy, 503
//!   otherwise
//!
//! Write endpoints need `Authorization: Bearer <token>`, the token of
//! `--operator-token-file` ([`OperatorToken`]): 401 without it or with
//! another one, 403 when the scheduler has no token (writes disabled). The
//! token is checked before anything else about the request. Reads are open.
//!
//! Errors are JSON, `{"error": {"code": "…", "message": "…"}}`, with a stable
//! upper-case code per kind ([`ApiError`]).
//!
//! Handlers only check, lock, call the core and serialise: every decision is
//! the core's (or the preheat jobs'). Not here: TLS (the Service is
//! cluster-internal), CORS.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use shoal_proto::{Digest, DigestError};
use tracing::{Instrument, info};

use crate::auth::OperatorToken;
use crate::core::{PeerId, PeerView, TaskDetail, TaskSummary};
use crate::metrics::{self, Metrics};
use crate::state::SchedulerState;

/// The OpenAPI 3 document of this API (hand-written, kept beside this file).
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) state: Arc<SchedulerState>,
    pub(crate) metrics: Arc<Metrics>,
    /// `None`: write endpoints are disabled.
    token: Option<Arc<OperatorToken>>,
}

/// The operator API's routes over `state`, with `metrics` served at
/// `/metrics`. Write endpoints require `token`; without one they answer 403.
pub fn router(
    state: Arc<SchedulerState>,
    metrics: Arc<Metrics>,
    token: Option<OperatorToken>,
) -> Router {
    Router::new()
        .route("/api/v1/peers", get(peers))
        .route(
            "/api/v1/peers/{id}/quarantine",
            post(quarantine).delete(unquarantine),
        )
        .route("/api/v1/tasks", get(tasks))
        // A wildcard, so that anything after `tasks/` (`../etc`, a digest
        // with a stray `/`) is reported as a bad digest rather than a
        // missing route. `POST …/{digest}/drop` shares it.
        .route("/api/v1/tasks/{*digest}", get(task).post(task_action))
        .route(
            "/api/v1/preheat",
            get(crate::preheat::list).post(crate::preheat::create),
        )
        .route(
            "/api/v1/preheat/{*id}",
            get(crate::preheat::get).delete(crate::preheat::cancel),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::status_page::routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(trace_request))
        .with_state(Api {
            state,
            metrics,
            token: token.map(Arc::new),
        })
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
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
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
    /// The path's peer id is not 1–128 characters of `[A-Za-z0-9._-]` (400).
    #[error("invalid peer id {input:?}: {reason}")]
    PeerIdInvalid {
        /// What the client sent (truncated).
        input: String,
        /// Why it is not a peer id.
        reason: &'static str,
    },
    /// No such peer in the swarm (404).
    #[error("peer {0} is not in the swarm")]
    PeerUnknown(String),
    /// No such route (404).
    #[error("no route for {0}; see /api/v1/openapi.json")]
    NotFound(String),
    /// The route exists but not with this method (405).
    #[error("method {0} not allowed here; see /api/v1/openapi.json")]
    MethodNotAllowed(String),
    /// A write endpoint without the right bearer token (401). The message
    /// says what was wrong, never what was sent.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A write endpoint while the scheduler has no token (403).
    #[error("write endpoints disabled: no --operator-token-file")]
    WritesDisabled,
    /// A preheat request that is not what the API takes (400).
    #[error("{0}")]
    PreheatInvalid(String),
    /// A preheat request larger than the API takes (413).
    #[error("a preheat request is at most {0} bytes")]
    BodyTooLarge(usize),
    /// The scope of a preheat request matches no connected peer (400).
    #[error("{0}")]
    ScopeEmpty(String),
    /// Too many preheat jobs are running, or a scope selects too many peers (429).
    #[error("{0}")]
    TooManyJobs(String),
    /// The path's job id is not 1–64 characters of `[A-Za-z0-9._-]` (400).
    #[error("invalid job id {0:?}: 1 to 64 characters of [A-Za-z0-9._-]")]
    JobIdInvalid(String),
    /// No such job (404): never created here, or forgotten.
    #[error("no preheat job {0} on this scheduler (a job lives on the replica that accepted it)")]
    JobUnknown(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::DigestInvalid { .. } | ApiError::PathInvalid(_) => "DIGEST_INVALID",
            ApiError::TaskUnknown(_) => "TASK_UNKNOWN",
            ApiError::PeerIdInvalid { .. } => "PEER_ID_INVALID",
            ApiError::PeerUnknown(_) => "PEER_UNKNOWN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::WritesDisabled => "WRITES_DISABLED",
            ApiError::PreheatInvalid(_) => "PREHEAT_INVALID",
            ApiError::BodyTooLarge(_) => "BODY_TOO_LARGE",
            ApiError::ScopeEmpty(_) => "SCOPE_EMPTY",
            ApiError::TooManyJobs(_) => "TOO_MANY_JOBS",
            ApiError::JobIdInvalid(_) => "JOB_ID_INVALID",
            ApiError::JobUnknown(_) => "JOB_UNKNOWN",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::DigestInvalid { .. }
            | ApiError::PathInvalid(_)
            | ApiError::PeerIdInvalid { .. }
            | ApiError::PreheatInvalid(_)
            | ApiError::ScopeEmpty(_)
            | ApiError::JobIdInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::TaskUnknown(_)
            | ApiError::PeerUnknown(_)
            | ApiError::NotFound(_)
            | ApiError::JobUnknown(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyJobs(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::WritesDisabled => StatusCode::FORBIDDEN,
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
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(r#"Bearer realm="shoal-scheduler""#),
            );
        }
        response
    }
}

/// Client input echoed in a message, cut so that a huge path stays a short line.
pub(crate) fn echo(s: &str) -> String {
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

/// Lets a write request through when it carries the configured token.
pub(crate) fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &api.token else {
        return Err(ApiError::WritesDisabled);
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "this endpoint needs an Authorization: Bearer <token> header",
        ));
    };
    let value = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110, 11.1).
    let presented = match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
        _ => {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be Bearer <token>",
            ));
        }
    };
    if token.matches(presented) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the bearer token is not the operator token",
        ))
    }
}

/// Answers a write request and counts it by action and status.
pub(crate) fn answered<T: Serialize>(
    api: &Api,
    action: &'static str,
    r: Result<T, ApiError>,
) -> Response {
    let response = match r {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    };
    api.metrics
        .operator_request(action, response.status().as_u16());
    response
}

fn peer_id(raw: &str) -> Result<PeerId, ApiError> {
    PeerId::parse(raw).map_err(|reason| ApiError::PeerIdInvalid {
        input: echo(raw),
        reason,
    })
}

/// The answer of the quarantine endpoints.
#[derive(Serialize)]
struct QuarantineState {
    peer: String,
    quarantined: bool,
    quarantine_reasons: Vec<&'static str>,
}

async fn set_quarantine(
    api: &Api,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    on: bool,
) -> Result<QuarantineState, ApiError> {
    authorize(api, headers)?;
    let Path(raw) = path.map_err(|e| ApiError::PathInvalid(e.body_text()))?;
    let id = peer_id(&raw)?;
    let reasons = api
        .state
        .with_core(|core, now| core.set_operator_quarantine(now, &id, on))
        .map_err(|_| ApiError::PeerUnknown(id.to_string()))?;
    info!(peer.id = %id, quarantined = on, reasons = ?reasons, "operator changed a peer's quarantine");
    Ok(QuarantineState {
        peer: id.to_string(),
        quarantined: !reasons.is_empty(),
        quarantine_reasons: reasons,
    })
}

async fn quarantine(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let r = set_quarantine(&api, path, &headers, true).await;
    answered(&api, "quarantine", r)
}

async fn unquarantine(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let r = set_quarantine(&api, path, &headers, false).await;
    answered(&api, "unquarantine", r)
}

/// The answer of `POST /api/v1/tasks/{digest}/drop`.
#[derive(Serialize)]
struct DropAnswer {
    digest: Digest,
    /// Holders with an open session, sent the command.
    commanded: Vec<String>,
    /// Holders without an open session now (they keep the task).
    not_connected: Vec<String>,
}

/// `POST /api/v1/tasks/{digest}/drop`; any other POST under `tasks/` is 405.
async fn task_action(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let raw = match &path {
        Ok(Path(raw)) => raw,
        Err(e) => return ApiError::PathInvalid(e.body_text()).into_response(),
    };
    let Some(raw) = raw.strip_suffix("/drop") else {
        return ApiError::MethodNotAllowed("POST".into()).into_response();
    };
    let r = (|| {
        authorize(&api, &headers)?;
        let digest: Digest = raw.parse().map_err(|source| ApiError::DigestInvalid {
            input: echo(raw),
            source,
        })?;
        let order = api
            .state
            .with_core(|core, _| core.drop_task(&digest))
            .map_err(|_| ApiError::TaskUnknown(digest))?;
        info!(
            task.digest = %digest,
            commanded = order.commanded.len(),
            not_connected = order.not_connected.len(),
            "operator told every holder to drop a task"
        );
        Ok(DropAnswer {
            digest,
            commanded: order.commanded.iter().map(PeerId::to_string).collect(),
            not_connected: order.not_connected.iter().map(PeerId::to_string).collect(),
        })
    })();
    answered(&api, "drop", r)
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
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    uptime_secs: u64,
}

async fn healthz(State(api): State<Api>) -> (StatusCode, Json<Health>) {
    let (status, problem) = match api.state.health() {
        Ok(()) => (StatusCode::OK, None),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Some(e)),
    };
    (
        status,
        Json(Health {
            status: if problem.is_none() { "ok" } else { "failing" },
            problem,
            uptime_secs: api.state.uptime().as_secs(),
        }),
    )
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
}

async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Ready>) {
    let ready = api.state.is_ready() && api.state.health().is_ok();
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
            "/api/v1/tasks/{digest}/drop",
            "/api/v1/peers/{id}/quarantine",
            "/api/v1/openapi.json",
            "/api/v1/preheat",
            "/api/v1/preheat/{id}",
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
