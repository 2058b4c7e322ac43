//! The operator API's preheat routes: check, call [`SchedulerState`]'s job
//! methods, serialise. The token is checked before the body is read.
//!
//! - `POST /api/v1/preheat` → 201 and the job ([`JobView`]);
//! - `GET /api/v1/preheat` → `{"jobs": [JobView…]}`, newest first;
//! - `GET /api/v1/preheat/{id}` → the job;
//! - `DELETE /api/v1/preheat/{id}` → cancels it; the job.
//!
//! [`SchedulerState`]: crate::state::SchedulerState

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::info;

use super::spec::PreheatRequest;
use super::{JobError, JobView};
use crate::http::{Api, ApiError, answered, authorize, echo};

/// Largest request body (bytes): room for thousands of node names.
pub(super) const MAX_BODY: usize = 256 << 10;

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::ScopeEmpty(_) => ApiError::ScopeEmpty(e.to_string()),
            JobError::TooManyPeers(..) | JobError::TooManyJobs(_) => {
                ApiError::TooManyJobs(e.to_string())
            }
            JobError::Unknown(id) => ApiError::JobUnknown(id),
        }
    }
}

/// The job list.
#[derive(Serialize)]
struct JobList {
    jobs: Vec<JobView>,
}

fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::PathInvalid(e.body_text()))?;
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::JobIdInvalid(echo(&raw)))
    }
}

/// `POST /api/v1/preheat`.
pub(crate) async fn create(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let r = (|| {
        authorize(&api, &headers)?;
        if body.len() > MAX_BODY {
            return Err(ApiError::BodyTooLarge(MAX_BODY));
        }
        let request: PreheatRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::PreheatInvalid(format!(
                "the body must be JSON like {{\"image\": \"reg.example/app:v1\", \"scope\": {{\"count\": 3}}}}: {e}"
            ))
        })?;
        let spec = request.check().map_err(ApiError::PreheatInvalid)?;
        let (image, scope) = (spec.image.to_string(), spec.scope.to_string());
        let view = api.state.create_job(spec)?;
        info!(
            preheat.job = %view.id,
            preheat.image = %image,
            preheat.scope = %scope,
            preheat.private = view.private,
            peers = view.summary.peers,
            "preheat job created"
        );
        Ok(view)
    })();
    let mut response = answered(&api, "preheat", r);
    if response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::CREATED;
    }
    response
}

/// `GET /api/v1/preheat`.
pub(crate) async fn list(State(api): State<Api>) -> Json<impl Serialize> {
    Json(JobList {
        jobs: api.state.jobs(),
    })
}

/// `GET /api/v1/preheat/{id}`.
pub(crate) async fn get(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(path)?;
    api.state.job(&id).map(Json).ok_or(ApiError::JobUnknown(id))
}

/// `DELETE /api/v1/preheat/{id}`.
pub(crate) async fn cancel(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let r = (|| {
        authorize(&api, &headers)?;
        let id = job_id(path)?;
        let view = api.state.cancel_job(&id)?;
        info!(preheat.job = %view.id, "preheat job cancelled");
        Ok(view)
    })();
    answered(&api, "preheat_cancel", r).into_response()
}
