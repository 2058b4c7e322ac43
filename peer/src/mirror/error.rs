//! OCI error responses: `{"errors":[{"code":…,"message":…}]}` with the status the
//! distribution spec gives each code. Every refusal of the mirror is one of these, so
//! containerd logs a reason and moves on to its next host.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One OCI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    /// HTTP status.
    pub status: StatusCode,
    /// The spec's code, e.g. `NAME_INVALID`.
    pub code: &'static str,
    /// What was wrong, for a human (never contains credentials).
    pub message: String,
}

impl OciError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `NAME_INVALID`.
    pub fn name_invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", m)
    }

    /// 400 `DIGEST_INVALID`.
    pub fn digest_invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", m)
    }

    /// 400 `TAG_INVALID`.
    pub fn tag_invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "TAG_INVALID", m)
    }

    /// 400 `UNSUPPORTED`: a well-formed request the mirror does not serve.
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", m)
    }

    /// 400: the `ns` parameter names no registry this mirror serves.
    pub fn bad_ns(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", m)
    }

    /// 400: a malformed `Range` header.
    pub fn range_invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "RANGE_INVALID", m)
    }

    /// 405: the mirror is read-only.
    pub fn method_not_allowed(m: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", m)
    }

    /// 404 `BLOB_UNKNOWN`.
    pub fn blob_unknown(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", m)
    }

    /// 502: upstream answered something unusable.
    pub fn bad_gateway(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "UNKNOWN", m)
    }

    /// 503: neither peers nor upstream can serve now (containerd tries its next host).
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m)
    }

    /// 500: a local fault (store).
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", m)
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message }]
        })
        .to_string()
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.body()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}
