//! The upstream registry as the download engine sees it: a blob by digest, from a byte
//! offset on, as a stream of bytes.
//!
//! Only the boundary: the implementation is `crate::registry::BlobUpstream` (endpoints
//! from `hosts.toml`, TLS, retries, containerd's `Authorization`, the `Content-Range`
//! parsing); tests use it against a real HTTP server.

use bytes::Bytes;
use futures::stream::BoxStream;
use shoal_proto::Digest;

/// Why upstream could not serve a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The request failed (no endpoint answered, after the retries) or the body was cut.
    #[error("upstream request failed: {0}")]
    Http(String),
    /// Upstream answered with a status other than 200 or 206: a refusal (401, 403, 404,
    /// 429, …), which the mirror answers as upstream did.
    #[error("upstream answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Upstream's `WWW-Authenticate` challenge, when it sent one (with a 401), for
        /// the client's token exchange.
        www_authenticate: Option<String>,
    },
    /// Upstream's answer does not make sense (no size, bad Content-Range, bytes past
    /// the blob's end).
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
