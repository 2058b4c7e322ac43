//! The download engine: gets a task (blob) onto this node from parents and upstream,
//! verifies it, stores it, reports it, and streams it to readers while it arrives.
//!
//! Layout — a pure core, thin adapters:
//! - [`planner`]: which piece from which parent, timeouts, bad parents, starvation;
//!   no I/O, `now` and an RNG passed in.
//! - [`core`]: [`DownloadCore`], the planner plus the rules around it (reporting,
//!   back-to-source, re-opening a lost plan, upstream retries), returning
//!   [`Action`]s; pure too.
//! - [`cutter`]: cuts an upstream byte stream into pieces; pure.
//! - [`plan`]: a plan in the engine's terms ([`PlanUpdate`]); the wire form is
//!   converted at the edge (`crate::scheduler_link`).
//! - [`download`]: [`Download`], the handle every request for a task shares.
//! - `driver`: the async loop that carries out the core's actions.
//! - the boundaries: [`scheduler`] ([`SchedulerClient`]), [`fetcher`]
//!   ([`PieceFetcher`]), [`upstream`] ([`Upstream`]); their in-memory twins are in
//!   [`twins`].
//! - [`reader`]: [`Download::reader`], the verified bytes from an offset, in order.
//!
//! [`Engine::fetch`] shares one download among all concurrent requests for a digest.
//! The scheduler is optional: without a plan the whole task comes from upstream and the
//! caller sees no error. A store that fails (disk full) does not fail the download: the
//! pieces are kept in memory for the readers.
//!
//! Not here: the registry mirror's HTTP surface, tag resolution, TLS and auth towards
//! upstream, garbage collection, serving pieces to other peers (`crate::transfer`).

pub mod core;
pub mod cutter;
pub mod download;
mod driver;
pub mod fetcher;
pub mod plan;
pub mod planner;
pub mod reader;
pub mod scheduler;
pub mod twins;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use shoal_proto::Digest;

use crate::metrics::{self, Sample};
use crate::store::{PieceStore, StoreError};
use crate::transfer::Seeding;

pub use self::core::{Action, DownloadCore, Origin, Verdict};
pub use download::{Download, DownloadState, DownloadStats, Progress};
pub use fetcher::PieceFetcher;
pub use plan::{ParentRef, PlanParent, PlanUpdate, PlannerError};
pub use planner::{Planner, PlannerConfig};
pub use scheduler::{PlanOpenError, PlanOpening, PlanStream, SchedulerClient};
pub use upstream::{Upstream, UpstreamBody, UpstreamError};

/// Why a download failed, or a read of it.
///
/// A failed download hands the same error to every reader (it is cheap to clone), so
/// the mirror can answer an upstream refusal found before the first byte as upstream
/// did ([`UpstreamError::Status`]). [`EngineError::is_local_fault`] tells whether the
/// fault is this node's own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Upstream could not serve the blob.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// The piece store failed where the download cannot do without it: a write refused
    /// for a reason other than a local fault (those keep the pieces in memory), or
    /// reading a piece back.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The plan from the scheduler is unusable.
    #[error("plan: {0}")]
    Plan(#[from] PlannerError),
    /// The assembled blob does not match its digest.
    #[error("blob does not match digest {0}")]
    DigestMismatch(Digest),
    /// A piece from upstream does not match the hash the swarm knows for it.
    #[error("upstream piece {0} does not match its known hash")]
    UpstreamPieceMismatch(u32),
    /// A reader asked for an offset past the end of the blob.
    #[error("offset {offset} is past the end of the {size}-byte blob")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Blob size.
        size: u64,
    },
    /// A piece verified earlier is no longer in the store.
    #[error("verified piece {0} is gone from the store")]
    PieceGone(u32),
    /// A blocking task of the download (hashing, storing, reading) panicked or was
    /// cancelled.
    #[error("{0} task panicked or was cancelled")]
    TaskAborted(&'static str),
    /// The download ended without an outcome (its runtime shut down).
    #[error("download dropped before it ended")]
    Dropped,
    /// The store cannot take the blob (disk full, or the blob is larger than the
    /// cache) and its pieces have no hash to check them against before the whole
    /// blob is here: they could be neither kept nor verified as they stream.
    #[error(
        "the store cannot take this blob and its pieces cannot be verified before all of it is here"
    )]
    NoRoom,
}

impl EngineError {
    /// True when the fault is this node's own (its store's disk, file system or
    /// database, a lost piece, a panicked task) rather than upstream's, a parent's or the
    /// plan's: asking upstream again will not help; the operator has to look.
    pub fn is_local_fault(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_local_fault(),
            EngineError::PieceGone(_) | EngineError::TaskAborted(_) | EngineError::NoRoom => true,
            _ => false,
        }
    }
}

/// Node-wide download counters (exported by [`Engine::register_metrics`]).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Verified bytes received from other peers.
    pub bytes_from_peers: AtomicU64,
    /// Bytes received from upstream (kept in a verified piece).
    pub bytes_from_upstream: AtomicU64,
    /// Pieces that matched their hash (from peers or upstream).
    pub pieces_verified: AtomicU64,
    /// Pieces from peers that did not match their hash (discarded, parent reported).
    pub pieces_rejected: AtomicU64,
    /// Downloads started (a shared download counts once): blobs not complete in the
    /// store, fetched (or resumed) from peers or upstream. Cache hits are not.
    pub downloads_started: AtomicU64,
    /// Downloads that ended verified against their digest.
    pub downloads_completed: AtomicU64,
    /// Downloads that failed (after they started, or while the store's copy was
    /// being checked).
    pub downloads_failed: AtomicU64,
    /// Blobs asked for that were complete in the store and served from it after
    /// their pieces checked out: no download.
    pub cache_hits: AtomicU64,
    /// Upstream streams stopped because the scheduler handed the rest of the blob
    /// over to a peer with a faster link.
    pub upstream_handed_over: AtomicU64,
}

/// The engine's knobs.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Piece scheduling (window, in-flight caps, timeouts).
    pub planner: PlannerConfig,
}

/// Shared by the engine handle and its download tasks.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn PieceStore>,
    pub(crate) link: Arc<dyn SchedulerClient>,
    pub(crate) client: Arc<dyn PieceFetcher>,
    pub(crate) config: EngineConfig,
    pub(crate) stats: EngineStats,
    pub(crate) downloads: Mutex<HashMap<Digest, Arc<Download>>>,
    /// The blobs streaming from upstream now, for the upload server.
    pub(crate) seeding: Arc<Seeding>,
}

/// The download engine of one peer. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine with the default configuration: pieces from `store`, plans from
    /// `link` (a `SchedulerLink`, or a twin), pieces of parents through `client` (a
    /// `PieceClient`, or a twin).
    pub fn new(
        store: Arc<dyn PieceStore>,
        link: impl SchedulerClient,
        client: impl PieceFetcher,
    ) -> Self {
        Engine::with_config(store, link, client, EngineConfig::default())
    }

    /// An engine with this configuration.
    pub fn with_config(
        store: Arc<dyn PieceStore>,
        link: impl SchedulerClient,
        client: impl PieceFetcher,
        config: EngineConfig,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                store,
                link: Arc::new(link),
                client: Arc::new(client),
                config,
                stats: EngineStats::default(),
                downloads: Mutex::new(HashMap::new()),
                seeding: Seeding::new(),
            }),
        }
    }

    /// The download of `digest`: the one in flight if there is one, else a new one
    /// started in the background that falls back to `upstream` (the first request's
    /// upstream serves a shared download). `size_hint` is the blob's size when known,
    /// else 0. Must be called within a tokio runtime.
    pub fn fetch(
        &self,
        digest: Digest,
        size_hint: u64,
        upstream: Arc<dyn Upstream>,
    ) -> Arc<Download> {
        let mut map = self
            .inner
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&digest) {
            return d.clone();
        }
        let d = Arc::new(Download::new(digest, self.inner.store.clone(), upstream));
        map.insert(digest, d.clone());
        drop(map);
        tokio::spawn(driver::run(self.inner.clone(), d.clone(), size_hint));
        d
    }

    /// The blobs this engine is fetching from upstream now: hand it to the upload
    /// server ([`crate::transfer::serve`]), which sends each of their pieces to one
    /// child ([`crate::transfer::seeding`]).
    pub fn seeding(&self) -> Arc<Seeding> {
        self.inner.seeding.clone()
    }

    /// Node-wide counters of every download so far.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// The store downloads write to.
    pub fn store(&self) -> &Arc<dyn PieceStore> {
        &self.inner.store
    }

    /// Registers the engine's metrics in `registry` (names without a prefix: the
    /// daemon's registry adds `shoal_peer_`): its counters and the downloads in flight,
    /// read at every scrape.
    pub fn register_metrics(&self, registry: &mut Registry) {
        metrics::register(registry, self.clone(), |engine| {
            let s = engine.stats();
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            vec![
                Sample::Counter(
                    "bytes_from_upstream",
                    "Blob bytes fetched from upstream registries.",
                    load(&s.bytes_from_upstream),
                ),
                Sample::Counter(
                    "bytes_from_peers",
                    "Verified blob bytes fetched from other peers.",
                    load(&s.bytes_from_peers),
                ),
                Sample::Counter(
                    "pieces_verified",
                    "Pieces that matched their hash.",
                    load(&s.pieces_verified),
                ),
                Sample::Counter(
                    "pieces_rejected",
                    "Pieces from peers that did not match their hash (discarded; the parent was reported).",
                    load(&s.pieces_rejected),
                ),
                Sample::Counter(
                    "downloads_started",
                    "Downloads started from peers or upstream (one per blob, shared by concurrent requests; cache hits are not downloads).",
                    load(&s.downloads_started),
                ),
                Sample::Counter(
                    "cache_hits",
                    "Blobs asked for that were complete in the store and served from it (no download).",
                    load(&s.cache_hits),
                ),
                Sample::Counter(
                    "downloads_completed",
                    "Downloads verified against their digest.",
                    load(&s.downloads_completed),
                ),
                Sample::Counter(
                    "upstream_handed_over",
                    "Upstream streams stopped because a peer with a faster link took the rest of the blob over.",
                    load(&s.upstream_handed_over),
                ),
                Sample::Counter(
                    "downloads_failed",
                    "Downloads that failed.",
                    load(&s.downloads_failed),
                ),
                Sample::Gauge(
                    "active_downloads",
                    "Downloads in flight.",
                    engine.active() as i64,
                ),
            ]
        });
    }

    /// Downloads in flight.
    pub fn active(&self) -> usize {
        self.inner
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}
