//! Peer-to-peer piece transfer over QUIC (ALPN `shoal-piece/3`).
//!
//! Layout:
//! - [`codec`]: the wire format as pure functions over bytes (`Incomplete` apart from
//!   `Malformed`).
//! - [`server`]: [`serve`] answers piece requests from a [`PieceSource`], one
//!   bidirectional stream per piece, with upload slots and an optional rate limit.
//! - [`client`]: [`PieceClient`] fetches one piece from a parent over a pooled connection.
//! - [`rate`]: the token bucket behind the upload rate limit.
//! - [`seeding`]: [`Seeding`], the blobs this peer fetches from upstream now, whose new
//!   pieces the server sends to one child each.
//!
//! Mutual TLS and the endpoint come from [`crate::tls`].
//!
//! Non-goals: no hash verification (the download engine checks every piece against
//! the task's piece hashes), no choice of parent (the scheduler's plan), no storage.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use shoal_proto::Digest;

pub mod client;
pub mod codec;
pub mod rate;
pub mod seeding;
pub mod server;

pub use client::{ClientTls, FetchError, PieceClient};
pub use seeding::{Seeding, SeedingGuard};
pub use server::{TransferStats, UploadLimits, serve};

/// Where the server finds the pieces it uploads: the peer's piece store.
#[async_trait::async_trait]
pub trait PieceSource: Send + Sync + 'static {
    /// The piece's bytes if this peer holds it (verified), else `None`.
    async fn piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, std::io::Error>;
}

/// An in-memory [`PieceSource`], the twin of the piece store for tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemorySource {
    pieces: RwLock<HashMap<(Digest, u32), Bytes>>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a piece.
    pub fn insert(&self, digest: Digest, index: u32, bytes: Bytes) {
        self.pieces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((digest, index), bytes);
    }
}

#[async_trait::async_trait]
impl PieceSource for MemorySource {
    async fn piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, std::io::Error> {
        Ok(self
            .pieces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(*digest, index))
            .cloned())
    }
}
