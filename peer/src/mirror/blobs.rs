//! `GET|HEAD /v2/<name>/blobs/<digest>`: a blob through the download engine.
//!
//! Before any byte from this node's cache or from a peer, the access gate
//! ([`super::gate`]: upstream's `HEAD` with the caller's credential, or a remembered
//! decision). The bytes then come from the store, peers or upstream as the scheduler
//! plans. An upstream refusal of the
//! download's own `GET` (the blob deleted, a token expired since the `HEAD`) found before
//! the first byte is answered as upstream did too. Bytes leave only once their piece is
//! verified, and the last piece only once the whole blob matched its digest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use reqwest::Method;
use shoal_proto::Digest;
use tracing::{debug, warn};

use super::error::OciError;
use super::range::{self, Span};
use super::{FIRST_BYTE_TIMEOUT, Mirror, Target, gate, relay};
use crate::engine::{Download, DownloadState, EngineError, UpstreamError};
use crate::registry::{Object, UpstreamRequest};

pub(super) async fn serve(
    m: &Mirror,
    head: bool,
    target: &Target,
    name: &str,
    digest: Digest,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    m.stats.blob_requests.fetch_add(1, Ordering::Relaxed);
    let client = m.upstream(target).await?;
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| OciError::range_invalid("Range header is not ASCII"))?,
        ),
    };
    // A malformed or multiple range is refused before anything is fetched.
    range::decide(range, u64::MAX).map_err(|e| OciError::range_invalid(e.to_string()))?;
    let store = m.engine.store().clone();
    let pin = store.pin(&digest);
    let cached = m.complete_size(&digest).await?;
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let access = &m.access;
    if access.enabled() && client.catch_all() {
        // Any ns reaches a `_default` registry, including one the caller runs itself
        // that claims any digest: its yes opens neither the cache nor the peers. Its
        // blobs are relayed from it, as manifests are.
        access
            .stats
            .relayed_untrusted
            .fetch_add(1, Ordering::Relaxed);
        let from = match range::decide(range, u64::MAX) {
            Ok(Span::Partial { start, .. }) if start > 0 => Some(start),
            _ => None,
        };
        let req = UpstreamRequest {
            method: if head { Method::HEAD } else { Method::GET },
            repo: name.to_owned(),
            object: Object::Blob(digest),
            accept: Vec::new(),
            authorization,
            range_from: from,
        };
        return match client.send(&req).await {
            Ok(resp) => Ok(relay::response(resp, head, client.idle_timeout())),
            Err(e) => Err(OciError::unavailable(format!("blob {name}@{digest}: {e}"))),
        };
    }
    let pass = gate::check(
        m,
        gate::Ask {
            client: &client,
            repo: name,
            digest,
            manifest: false,
            accept: Vec::new(),
            authorization: authorization.as_ref(),
            cached,
            head,
            upstream_down: None,
        },
    )
    .await;
    let size_hint = match pass {
        Err(answer) => return Ok(answer),
        // A HEAD of a blob not on the node: upstream's size is the answer.
        Ok(gate::Pass {
            size: Some(size),
            upstream_headers: Some(_),
        }) if head && cached.is_none() => {
            return Ok(blob_headers(StatusCode::OK, &digest, size, None)
                .body(Body::empty())
                .expect("valid response"));
        }
        Ok(pass) => pass.size.unwrap_or(0),
    };
    // A range past the end of a blob of known size is refused before it is fetched.
    if size_hint > 0 && range::decide(range, size_hint) == Ok(Span::Unsatisfiable) {
        return Ok(unsatisfiable(range, size_hint));
    }
    let upstream = Arc::new(client.blob_upstream(name.to_owned(), authorization));
    let dl = m.engine.fetch(digest, size_hint, upstream);
    let size = match wait_for_size(&dl, head).await {
        Ok(size) => size,
        Err(answer) => return Ok(answer),
    };
    let span = range::decide(range, size).map_err(|e| OciError::range_invalid(e.to_string()))?;
    let (status, start, len, content_range) = match span {
        Span::Full => (StatusCode::OK, 0, size, None),
        Span::Partial { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        Span::Unsatisfiable => return Ok(unsatisfiable(range, size)),
    };
    let builder = blob_headers(status, &digest, len, content_range);
    if head {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    // The status goes out only once the first body byte is verified: a download
    // that fails before that is answered with a clean error, and containerd
    // moves on to its next host.
    if let Err(why) = dl.first_ready(start).await {
        return Ok(failed(&dl, why, head));
    }
    let served = m.stats.clone();
    let from_cache = cached.is_some();
    let body = limited(dl.clone(), start, len).map(move |chunk| {
        if let Ok(b) = &chunk {
            let n = b.len() as u64;
            served.blob_bytes_served.fetch_add(n, Ordering::Relaxed);
            if from_cache {
                served.blob_bytes_from_cache.fetch_add(n, Ordering::Relaxed);
            }
        }
        // Keeps the blob from being evicted while it streams.
        let _ = &pin;
        chunk
    });
    Ok(builder
        .body(Body::from_stream(body))
        .expect("valid response"))
}

/// 416 with `Content-Range: bytes */SIZE`.
fn unsatisfiable(range: Option<&str>, size: u64) -> Response {
    let mut r = OciError {
        status: StatusCode::RANGE_NOT_SATISFIABLE,
        code: "RANGE_INVALID",
        message: format!(
            "range {:?} is outside the {size}-byte blob",
            range.unwrap_or("")
        ),
    }
    .into_response();
    r.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
    );
    r
}

fn blob_headers(
    status: StatusCode,
    digest: &Digest,
    len: u64,
    content_range: Option<String>,
) -> axum::http::response::Builder {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.to_string());
    if let Some(cr) = content_range {
        b = b.header(header::CONTENT_RANGE, cr);
    }
    b
}

/// Waits until the download knows the blob's size; else the answer to give: upstream's
/// refusal (4xx) as upstream gave it, 503 for any other failure or when nothing started
/// in time.
pub(super) async fn wait_for_size(dl: &Arc<Download>, head: bool) -> Result<u64, Response> {
    let mut rx = dl.progress();
    let waited = tokio::time::timeout(
        FIRST_BYTE_TIMEOUT,
        rx.wait_for(|p| p.shape.is_some() || !p.state.is_running()),
    )
    .await;
    let p = match waited {
        Err(_) => {
            return Err(OciError::unavailable(format!(
                "no peer or upstream could start {} within {}s",
                dl.digest(),
                FIRST_BYTE_TIMEOUT.as_secs()
            ))
            .into_response());
        }
        Ok(Err(_)) => return Err(OciError::internal("download dropped").into_response()),
        Ok(Ok(p)) => p.clone(),
    };
    match (p.shape, p.state) {
        (Some(shape), DownloadState::Running | DownloadState::Complete) => Ok(shape.size()),
        (_, DownloadState::Failed(why)) => Err(failed(dl, why, head)),
        (None, _) => Err(OciError::internal("download ended without a size").into_response()),
    }
}

/// The answer to a download that failed before the first body byte: an upstream
/// refusal (4xx) as upstream gave it, anything else as 503.
pub(super) fn failed(dl: &Download, why: EngineError, head: bool) -> Response {
    debug!(task.digest = %dl.digest(), error = %why, "blob download failed before the first byte");
    if let EngineError::Upstream(UpstreamError::Status {
        status,
        www_authenticate,
    }) = &why
        && (400..500).contains(status)
    {
        let challenge = www_authenticate
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok());
        return relay::refused(*status, challenge, &dl.digest().to_string(), head);
    }
    OciError::unavailable(format!("cannot fetch {}: {why}", dl.digest())).into_response()
}

/// `len` bytes from `start`, cut from the download's verified stream. An error ends
/// the body early: the client sees a short read and resumes with a `Range`.
fn limited(
    dl: Arc<Download>,
    start: u64,
    len: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let left = Arc::new(AtomicU64::new(len));
    let digest = *dl.digest();
    dl.reader(start)
        .map(move |r| {
            r.map_err(|e| {
                warn!(task.digest = %digest, error = %e, "blob body ended early: the client resumes with a Range");
                std::io::Error::other(e)
            })
        })
        .take_while({
            let left = left.clone();
            move |_| {
                let more = left.load(Ordering::Relaxed) > 0;
                async move { more }
            }
        })
        .map(move |r| {
            r.map(|mut b| {
                let l = left.load(Ordering::Relaxed);
                if (b.len() as u64) > l {
                    b.truncate(l as usize);
                }
                left.fetch_sub(b.len() as u64, Ordering::Relaxed);
                b
            })
        })
}
