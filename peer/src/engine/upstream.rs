//! The upstream registry as the download engine sees it: a blob by digest, from a byte
//! offset on, as a stream of bytes.
//!
//! [`HttpUpstream`] is the plain HTTP implementation: `GET {base}/v2/{repo}/blobs/{digest}`
//! with `Range: bytes=N-`. Not here yet: TLS settings and headers from `hosts.toml`,
//! auth (tokens), retries with backoff, manifests.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use shoal_proto::Digest;

/// Why upstream could not serve a blob.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request failed or the body was cut.
    #[error("upstream request failed: {0}")]
    Http(String),
    /// Upstream answered with an unexpected status.
    #[error("upstream answered {0}")]
    Status(u16),
    /// Upstream's answer does not make sense (no size, bad Content-Range).
    #[error("bad upstream response: {0}")]
    Malformed(String),
}

/// A blob body from upstream.
pub struct UpstreamBody {
    /// The blob's total size in bytes.
    pub total: u64,
    /// Offset of the first byte of `body` (may be below the offset asked for when
    /// upstream ignored the range; the caller skips the extra bytes).
    pub start: u64,
    /// The bytes from `start` to the end of the blob.
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("total", &self.total)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// Where blobs come from when no peer has them.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// The blob `digest` from byte `range_start` to its end.
    async fn fetch(&self, digest: &Digest, range_start: u64)
    -> Result<UpstreamBody, UpstreamError>;
}

/// A registry over plain HTTP, one repository.
#[derive(Debug, Clone)]
pub struct HttpUpstream {
    client: reqwest::Client,
    base: String,
    repo: String,
}

impl HttpUpstream {
    /// Blobs of `repo` (e.g. `library/nginx`) at `base` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base: impl Into<String>, repo: impl Into<String>) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| UpstreamError::Http(e.to_string()))?;
        Ok(HttpUpstream {
            client,
            base: base.into().trim_end_matches('/').to_owned(),
            repo: repo.into(),
        })
    }
}

#[async_trait::async_trait]
impl Upstream for HttpUpstream {
    async fn fetch(
        &self,
        digest: &Digest,
        range_start: u64,
    ) -> Result<UpstreamBody, UpstreamError> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repo, digest);
        let mut request = self.client.get(&url);
        if range_start > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={range_start}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| UpstreamError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let (total, start) = match status {
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
            s => return Err(UpstreamError::Status(s)),
        };
        let body = futures::stream::unfold(response, |mut r| async move {
            match r.chunk().await {
                Ok(Some(b)) => Some((Ok(b), r)),
                Ok(None) => None,
                Err(e) => Some((Err(UpstreamError::Http(e.to_string())), r)),
            }
        });
        Ok(UpstreamBody {
            total,
            start,
            body: Box::pin(body),
        })
    }
}

/// `bytes START-END/TOTAL` → (total, start).
fn parse_content_range(v: &str) -> Result<(u64, u64), UpstreamError> {
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
