//! [`BlobUpstream`]: the download engine's [`Upstream`] for one repository of one
//! registry, with containerd's `Authorization` (and, when upstream refuses it with a 401
//! or 403, the credentials other callers were recently authorised with for the same
//! repository, from the client's [`CredentialPool`](super::CredentialPool)); and [`blob_body`], the parsing of a blob
//! response into an [`UpstreamBody`] (total size and first offset from `Content-Range`
//! or `Content-Length`): the peer's one `Content-Range` parser.
//!
//! Not here: the idle timeout of the body (`body.rs`), retries and endpoint choice ([`RegistryClient::send`]), checking the bytes
//! against the digest (the engine does, piece by piece).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use reqwest::header::HeaderValue;
use shoal_proto::Digest;
use tracing::debug;

use super::body::idle_limited;
use super::{Object, RegistryClient, UpstreamRequest};
use crate::engine::{Upstream, UpstreamBody, UpstreamError};

/// Blobs of one repository from one registry, as the engine fetches them: `GET` with
/// `Range: bytes=N-` when resuming. Made by [`RegistryClient::blob_upstream`], or by
/// [`RegistryClient::manifest_upstream`] for manifests by digest (the same, at
/// `/manifests/<digest>` with every manifest media type accepted).
pub struct BlobUpstream {
    client: Arc<RegistryClient>,
    repo: String,
    authorization: Option<HeaderValue>,
    manifest: bool,
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
        manifest: bool,
    ) -> BlobUpstream {
        BlobUpstream {
            client,
            repo,
            authorization,
            manifest,
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
        let mut request = UpstreamRequest {
            method: reqwest::Method::GET,
            repo: self.repo.clone(),
            object: if self.manifest {
                Object::Manifest(digest.to_string())
            } else {
                Object::Blob(*digest)
            },
            accept: if self.manifest {
                super::MANIFEST_MEDIA_TYPES.map(str::to_owned).to_vec()
            } else {
                Vec::new()
            },
            authorization: self.authorization.clone(),
            range_from: (range_start > 0).then_some(range_start),
        };
        let send = |r: &UpstreamRequest| {
            let r = r.clone();
            let client = self.client.clone();
            async move {
                client
                    .send(&r)
                    .await
                    .map_err(|e| UpstreamError::Http(e.to_string()))
            }
        };
        let mut response = send(&request).await?;
        if matches!(response.status().as_u16(), 401 | 403) {
            // The download's own credential (a token that expired mid-blob, say) no
            // longer works: go on with another caller's that upstream authorised for
            // this repository, newest first.
            let pool = self.client.credentials();
            if let Some(own) = &self.authorization {
                pool.forget(&self.repo, own);
            }
            let others = pool.others(&self.repo, self.authorization.as_ref(), Instant::now());
            for (i, other) in others.into_iter().enumerate() {
                request.authorization = Some(other.clone());
                let retry = send(&request).await?;
                let status = retry.status().as_u16();
                debug!(
                    upstream.registry = self.client.registry(),
                    oci.repo = %self.repo,
                    task.digest = %digest,
                    credential.index = i,
                    http.status = status,
                    "refused with the download's credential; retried with another authorised caller's"
                );
                if matches!(status, 401 | 403) {
                    pool.forget(&self.repo, &other);
                    continue;
                }
                response = retry;
                break;
            }
        }
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
