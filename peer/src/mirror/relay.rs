//! An upstream registry's response as the mirror's response: status, the headers
//! containerd needs (`Content-Type`, `Docker-Content-Digest`, `Content-Length`,
//! `WWW-Authenticate` for the token dance, `ETag`, `Location` is not relayed: the
//! mirror follows redirects itself), and the body streamed through.
//!
//! Every answer whose status upstream gave carries the [`Relayed`] mark, so that the
//! mirror counts it by status code (`upstream_responses_total{code}`) apart from its
//! own refusals and failures.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt;

use crate::registry::idle_limited;

/// Headers copied from upstream.
const RELAYED: [&str; 8] = [
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "docker-content-digest",
    "www-authenticate",
    "etag",
    "docker-distribution-api-version",
];

/// The mark (a response extension) of an answer whose status upstream gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Relayed;

/// Relays `resp`; its body too unless `head`, cut when upstream sends no byte for
/// `idle`.
pub(super) fn response(resp: reqwest::Response, head: bool, idle: Duration) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut b = Response::builder().status(status).extension(Relayed);
    for name in RELAYED {
        for v in resp.headers().get_all(name) {
            b = b.header(HeaderName::from_static(name), v.as_bytes());
        }
    }
    if head {
        return b.body(Body::empty()).expect("valid response");
    }
    let body = idle_limited(resp, idle).map_err(std::io::Error::other);
    b.body(Body::from_stream(body)).unwrap_or_else(|_| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r.headers_mut().remove(header::CONTENT_LENGTH);
        r
    })
}

/// An upstream refusal of a `HEAD` (no body) as an answer to the client's request:
/// the status and `WWW-Authenticate`, with an OCI error body unless the client sent
/// `HEAD` too.
pub(super) fn refusal(resp: &reqwest::Response, digest: &str, head: bool) -> Response {
    let challenges = resp.headers().get_all(header::WWW_AUTHENTICATE).iter();
    refused(resp.status().as_u16(), challenges.cloned(), digest, head)
}

/// An upstream refusal with `status` (401, 403, 404, 429, …) answered as upstream did:
/// the status, the OCI code the spec gives it, and each `WWW-Authenticate` challenge;
/// no body when the client sent `HEAD`. For the refusal of a `HEAD` ([`refusal`]) and of
/// the download's `GET` before its first byte.
pub(super) fn refused(
    status: u16,
    challenges: impl IntoIterator<Item = HeaderValue>,
    digest: &str,
    head: bool,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let code = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        StatusCode::NOT_FOUND => "BLOB_UNKNOWN",
        StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    let err = super::OciError {
        status,
        code,
        message: format!("upstream answered {} for {digest}", status.as_u16()),
    };
    let mut r = if head {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = status;
        r
    } else {
        axum::response::IntoResponse::into_response(err)
    };
    for v in challenges {
        r.headers_mut().append(header::WWW_AUTHENTICATE, v);
    }
    r.extensions_mut().insert(Relayed);
    r
}
