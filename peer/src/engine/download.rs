//! [`Download`]: one task being fetched (or already held), shared by every request
//! for it: its progress for the readers, its counters, and the pieces kept in
//! memory when the store cannot take them.
//!
//! Not here: the driver loop that fetches it (`driver.rs`), the decisions
//! ([`super::core`]), the byte stream for readers ([`super::reader`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shoal_proto::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};
use tokio::sync::watch;

use super::EngineError;
use super::upstream::Upstream;
use crate::store::PieceStore;

/// Where a download stands.
#[derive(Debug, Clone)]
pub enum DownloadState {
    /// Still fetching.
    Running,
    /// Every piece is verified and the blob matches its digest.
    Complete,
    /// Failed for good: why (what every reader gets).
    Failed(EngineError),
}

impl DownloadState {
    /// Still fetching.
    pub fn is_running(&self) -> bool {
        matches!(self, DownloadState::Running)
    }
}

/// What readers watch.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The task's shape once known.
    pub shape: Option<TaskShape>,
    /// Verified pieces readable now.
    pub have: PieceSet,
    /// Where the download stands.
    pub state: DownloadState,
    /// The driver is done with it, the store's bookkeeping included (readers
    /// need only `state`: a blob is `Complete` for them before the store has
    /// synced it).
    pub settled: bool,
}

/// Counters of one download.
#[derive(Debug, Default)]
pub struct DownloadStats {
    /// Pieces received from parents and verified.
    pub pieces_from_parents: AtomicU64,
    /// Pieces received from upstream.
    pub pieces_from_upstream: AtomicU64,
    /// Pieces from parents that did not match their hash.
    pub bad_pieces: AtomicU64,
    /// Piece fetches from parents that failed.
    pub fetch_failures: AtomicU64,
}

/// One task being fetched (or already held), shared by every request for it.
pub struct Download {
    pub(super) digest: Digest,
    store: Arc<dyn PieceStore>,
    /// Where missing pieces come from when no parent serves them.
    pub(super) upstream: Arc<dyn Upstream>,
    pub(super) progress: watch::Sender<Progress>,
    /// Pieces the store could not take (disk full), kept for the readers.
    pub(super) memory: Mutex<HashMap<u32, Bytes>>,
    /// Where the latest reader is, for the planner's window.
    pub(crate) reader_offset: AtomicU64,
    /// Woken when a reader moves on (a driver waiting for the reader to catch up
    /// takes pieces again at once).
    pub(crate) reader_moved: tokio::sync::Notify,
    pub(super) stats: DownloadStats,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("digest", &self.digest)
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

impl Download {
    pub(crate) fn new(
        digest: Digest,
        store: Arc<dyn PieceStore>,
        upstream: Arc<dyn Upstream>,
    ) -> Self {
        let (progress, _) = watch::channel(Progress {
            shape: None,
            have: PieceSet::new(0),
            state: DownloadState::Running,
            settled: false,
        });
        Download {
            digest,
            store,
            upstream,
            progress,
            memory: Mutex::new(HashMap::new()),
            reader_offset: AtomicU64::new(0),
            reader_moved: tokio::sync::Notify::new(),
            stats: DownloadStats::default(),
        }
    }

    /// The task.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// A receiver of progress updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The counters.
    pub fn stats(&self) -> &DownloadStats {
        &self.stats
    }

    /// Pieces held only in memory right now (the store could not take them); at
    /// most a small backlog ahead of the slowest reader, whatever the blob's size.
    pub fn memory_pieces(&self) -> usize {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until the download is complete (`Ok`) or failed.
    pub async fn wait(&self) -> Result<(), EngineError> {
        let mut rx = self.progress.subscribe();
        let p = rx
            .wait_for(|p| !p.state.is_running())
            .await
            .map_err(|_| EngineError::Dropped)?;
        match &p.state {
            DownloadState::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Waits until the driver is done with the download: after [`Download::wait`],
    /// and after the store was marked complete (or failed to be).
    pub async fn settled(&self) {
        let mut rx = self.progress.subscribe();
        let _ = rx.wait_for(|p| p.settled).await;
    }

    /// A verified piece: from memory when the store could not take it, else the store.
    pub fn read_piece(&self, index: u32) -> Result<Option<Bytes>, EngineError> {
        if let Some(b) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
        {
            return Ok(Some(b.clone()));
        }
        Ok(self.store.read_piece(&self.digest, index)?)
    }

    pub(super) fn set_shape(&self, shape: TaskShape) {
        self.progress.send_modify(|p| {
            if p.shape.is_none() {
                p.shape = Some(shape);
                p.have = PieceSet::new(shape.piece_count());
            }
        });
    }

    pub(super) fn mark_have(&self, index: u32) {
        self.progress.send_modify(|p| {
            if index < p.have.len() {
                p.have.insert(index);
            }
        });
    }

    pub(super) fn finish(&self, state: DownloadState) {
        self.progress.send_modify(|p| p.state = state);
    }

    pub(super) fn settle(&self) {
        self.progress.send_modify(|p| p.settled = true);
    }
}
