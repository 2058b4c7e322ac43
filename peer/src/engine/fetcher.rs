//! Other peers as the download engine sees them: one piece of a task from one
//! parent, within a timeout.
//!
//! Only the boundary: the implementation is `crate::transfer::PieceClient` (QUIC,
//! mutual TLS); the in-memory twin is [`super::twins::TwinFetcher`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use shoal_proto::Digest;

use crate::transfer::FetchError;

/// Fetches pieces from parents.
#[async_trait::async_trait]
pub trait PieceFetcher: Send + Sync + 'static {
    /// Piece `index` of `digest` from the parent at `parent`: exactly `len` bytes,
    /// not yet verified.
    async fn fetch(
        &self,
        parent: SocketAddr,
        digest: &Digest,
        index: u32,
        len: u32,
        timeout: Duration,
    ) -> Result<Bytes, FetchError>;
}

#[async_trait::async_trait]
impl PieceFetcher for crate::transfer::PieceClient {
    async fn fetch(
        &self,
        parent: SocketAddr,
        digest: &Digest,
        index: u32,
        len: u32,
        timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        crate::transfer::PieceClient::fetch(self, parent, digest, index, len, timeout).await
    }
}
