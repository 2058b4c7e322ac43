//! [`BlobUpstream`]: the download engine's [`Upstream`] for one repository of one
//! registry, with containerd's `Authorization`; and [`blob_body`], the parsing of a blob
//! response into an [`UpstreamBody`] (total size and first offset from `Content-Range`
//! or `Content-Length`): the peer's one `Content-Range` parser.
//!
//! Not here: the idle timeout of the body (`body.rs`), retries and endpoint choice ([`RegistryClient::send`]), checking the bytes
//! against the digest (the engine does, piece by piece).

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use reqwest::header::HeaderValue;
use shoal_proto::Digest;

use super::body::idle_limited;
use super::{Object, RegistryClient, UpstreamRequest};
use crate::engine::{Upstream, UpstreamBody, UpstreamError};

/// Blobs of one repository from one registry, as the engine fetches them: `GET` with
/// `Range: bytes=N-` when resuming. Made by [`RegistryClient::blob_upstream`].
pub struct BlobUpstream {
    client: Arc<RegistryClient>,
    repo: String,
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for BlobUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobUpstream")
            .field("registry", &self.client.registry())
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

impl BlobUpstream {
    pub(super) fn new(
        client: Arc<RegistryClient>,
        repo: String,
        authorization: Option<HeaderValue>,
    ) -> BlobUpstream {
        BlobUpstream {
            client,
            repo,
            authorization,
        }
    }
}

#[async_trait::async_trait]
impl Upstream for BlobUpstream {
    async fn fetch(
        &self,
        digest: &Digest,
        range_start: u64,
    ) -> Result<UpstreamBody, UpstreamError> {
        let request = UpstreamRequest {
            method: reqwest::Method::GET,
            repo: self.repo.clone(),
            object: Object::Blob(*digest),
            accept: Vec::new(),
            authorization: self.authorization.clone(),
            range_from: (range_start > 0).then_some(range_start),
        };
        let response = self
            .client
            .send(&request)
            .await
            .map_err(|e| UpstreamError::Http(e.to_string()))?;
        blob_body(response, self.client.idle_timeout())
    }
}

/// A blob response as an [`UpstreamBody`]: 200 → the whole blob (`Content-Length` is
/// its size), 206 → from the `Content-Range` start; any other status is
/// [`UpstreamError::Status`] (with upstream's `WWW-Authenticate`). The body is streamed,
/// not read here; no byte for `idle` fails it with [`UpstreamError::Http`], as a cut
/// connection does (the engine resumes from its first missing piece).
pub(crate) fn blob_body(
    response: reqwest::Response,
    idle: Duration,
) -> Result<UpstreamBody, UpstreamError> {
    let (total, start) = match response.status().as_u16() {
        200 => {
            let total = response
                .content_length()
                .ok_or_else(|| UpstreamError::Malformed("no Content-Length".into()))?;
            (total, 0)
        }
        206 => {
            let header = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| UpstreamError::Malformed("206 without Content-Range".into()))?;
            parse_content_range(header)?
        }
        status => {
            let www_authenticate = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Err(UpstreamError::Status {
                status,
                www_authenticate,
            });
        }
    };
    let body = idle_limited(response, idle).map_err(|e| UpstreamError::Http(e.to_string()));
    Ok(UpstreamBody {
        total,
        start,
        body: Box::pin(body),
    })
}

/// `bytes START-END/TOTAL` → (total, start).
pub(crate) fn parse_content_range(v: &str) -> Result<(u64, u64), UpstreamError> {
    let bad = || UpstreamError::Malformed(format!("bad Content-Range {v:?}"));
    let rest = v.strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (start, _) = range.split_once('-').ok_or_else(bad)?;
    let total: u64 = total.trim().parse().map_err(|_| bad())?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    if start > total {
        return Err(bad());
    }
    Ok((total, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 5-9/10").unwrap(), (10, 5));
        assert!(parse_content_range("bytes */10").is_err());
        assert!(parse_content_range("bytes 11-12/10").is_err());
        assert!(parse_content_range("items 1-2/3").is_err());
    }
}
