//! The driver's piece path: hashing a piece off the async workers, the core's verdict,
//! storing what it keeps (or holding it in memory when the store failed), feeding the
//! whole-blob digest in order, and completing the task once the blob matches.
//!
//! Not here: the event loop and the actions (`driver.rs`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::super::EngineError;
use super::super::core::{Origin, Verdict};
use super::super::download::DownloadState;
use super::{Driver, MEMORY_BACKLOG};

impl Driver<'_> {
    /// Hashes one piece, lets the core judge it, and stores it when kept.
    pub(super) async fn accept(
        &mut self,
        index: u32,
        bytes: Bytes,
        origin: Origin<'_>,
    ) -> Result<(), EngineError> {
        if self.core.have().contains(index) {
            self.core.on_piece(index, [0; 32], origin)?;
            return Ok(());
        }
        let hash = {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || -> [u8; 32] { Sha256::digest(&b).into() })
                .await
                .map_err(|_| EngineError::TaskAborted("hash"))?
        };
        let checked = match self.core.on_piece(index, hash, origin)? {
            Verdict::Duplicate => return Ok(()),
            Verdict::Bad => {
                self.dl.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .stats
                    .pieces_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Verdict::Keep { checked } => checked,
        };
        let s = &self.inner.stats;
        match origin {
            Origin::Parent(_) => {
                self.dl
                    .stats
                    .pieces_from_parents
                    .fetch_add(1, Ordering::Relaxed);
                s.bytes_from_peers
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Origin::Upstream => {
                self.dl
                    .stats
                    .pieces_from_upstream
                    .fetch_add(1, Ordering::Relaxed);
                s.bytes_from_upstream
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        if checked {
            s.pieces_verified.fetch_add(1, Ordering::Relaxed);
        }
        let stored = self.store(index, &bytes, hash).await?;
        if !stored {
            if !checked {
                // Neither kept nor verifiable until the whole blob is here: holding it
                // would hold the whole blob in memory.
                return Err(EngineError::NoRoom);
            }
            self.dl
                .memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index, bytes.clone());
        }
        self.core.on_piece_kept(index, hash, stored);
        // A piece checked against nothing but itself is readable only once the
        // whole blob matched its digest.
        if checked {
            self.dl.mark_have(index);
        } else {
            self.unchecked.push(index);
        }
        self.feed_digest(Some((index, bytes))).await?;
        self.trim_memory();
        Ok(())
    }

    /// Feeds the pieces now contiguous from `hashed` on into the blob's digest.
    /// `fresh` is the piece just kept: when it is the next one (pieces mostly come
    /// in order) its bytes are used as they are, not read back.
    pub(super) async fn feed_digest(
        &mut self,
        fresh: Option<(u32, Bytes)>,
    ) -> Result<(), EngineError> {
        let Some(shape) = self.core.shape() else {
            return Ok(());
        };
        let from = self.hashed;
        let mut to = from;
        while to < shape.piece_count() && self.core.have().contains(to) {
            to += 1;
        }
        if to == from {
            return Ok(());
        }
        let mut hasher = self.hasher.take().expect("hasher is home");
        let dl = self.dl.clone();
        let (hasher, r) = tokio::task::spawn_blocking(move || {
            for i in from..to {
                if let Some((f, b)) = &fresh
                    && *f == i
                {
                    hasher.update(b);
                    continue;
                }
                match dl.read_piece(i) {
                    Ok(Some(p)) => hasher.update(&p),
                    Ok(None) => return (hasher, Err(EngineError::PieceGone(i))),
                    Err(e) => return (hasher, Err(e)),
                }
            }
            (hasher, Ok(()))
        })
        .await
        .map_err(|_| EngineError::TaskAborted("digest"))?;
        self.hasher = Some(hasher);
        r?;
        self.hashed = to;
        Ok(())
    }

    /// Drops the memory-only pieces both the digest and the reader are past.
    pub(super) fn trim_memory(&mut self) {
        let Some(shape) = self.core.shape() else {
            return;
        };
        let reader = shape
            .piece_at(self.dl.reader_offset.load(Ordering::Relaxed))
            .unwrap_or(shape.piece_count());
        let done = reader.min(self.hashed);
        self.dl
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|i, _| *i >= done);
    }

    /// True when the memory-only pieces waiting only for the reader reached
    /// [`MEMORY_BACKLOG`]: no more pieces are taken until it reads on.
    pub(super) fn backlog_full(&mut self) -> bool {
        if self.core.store_ok() {
            return false;
        }
        self.trim_memory();
        let hashed = self.hashed;
        let memory = self.dl.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.keys().filter(|i| **i < hashed).count() >= MEMORY_BACKLOG
    }

    /// Writes a verified piece with its hash (so that a restart can check it and
    /// announce the task); false when it stays in memory only.
    pub(super) async fn store(
        &mut self,
        index: u32,
        bytes: &Bytes,
        hash: [u8; 32],
    ) -> Result<bool, EngineError> {
        if !self.core.store_ok() {
            return Ok(false);
        }
        let store = self.inner.store.clone();
        let digest = self.dl.digest;
        let b = bytes.clone();
        let r = tokio::task::spawn_blocking(move || {
            store.set_hashes(&digest, &[(index, hash)])?;
            store.write_piece(&digest, index, &b)
        })
        .await
        .map_err(|_| EngineError::TaskAborted("store"))?;
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.is_local_fault() => {
                warn!(error = %e, store.path = ?e.path(), "store failed; keeping pieces in memory");
                self.core.store_failed();
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every piece is here: verify the blob, mark it complete, report.
    pub(super) async fn complete(&mut self) -> Result<(), EngineError> {
        let digest = self.dl.digest;
        // Every piece is held: the digest was fed up to the end as they came.
        self.feed_digest(None).await?;
        let shape = self.core.shape().expect("complete implies a shape");
        if self.hashed != shape.piece_count() {
            return Err(EngineError::PieceGone(self.hashed));
        }
        let got: [u8; 32] = self
            .hasher
            .replace(Sha256::new())
            .expect("hasher is home")
            .finalize()
            .into();
        if got != *digest.as_bytes() {
            // Pieces that each matched their hash make up the wrong blob: the hashes
            // (from upstream, or from the swarm) were wrong. Nothing of it is kept, so
            // the next request starts afresh; the scheduler learns of it.
            let store = self.inner.store.clone();
            let removed = tokio::task::spawn_blocking(move || store.remove(&digest))
                .await
                .map_err(|_| EngineError::TaskAborted("remove"))?;
            if let Err(e) = removed {
                warn!(error = %e, "could not delete the mismatching blob");
            }
            self.dl
                .memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.core.on_digest_mismatch();
            self.act().await?;
            return Err(EngineError::DigestMismatch(digest));
        }
        for i in std::mem::take(&mut self.unchecked) {
            self.dl.mark_have(i);
        }
        // Verified: readers may have the last piece now. Marking the store
        // complete syncs the whole blob to disk (hundreds of ms for a large blob,
        // more when every node of a swarm finishes at once) and is for the next
        // start, not for these readers.
        self.dl.finish(DownloadState::Complete);
        debug!("blob verified; its readers have every piece");
        let synced = std::time::Instant::now();
        // Off the runtime's threads: the sync blocks for as long as the disk takes.
        let marked = self.core.store_ok() && {
            let store = self.inner.store.clone();
            match tokio::task::spawn_blocking(move || store.mark_complete(&digest)).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    warn!(error = %e, "could not mark the task complete in the store");
                    false
                }
                Err(_) => return Err(EngineError::TaskAborted("mark complete")),
            }
        };
        debug!(
            store.ms = synced.elapsed().as_millis() as u64,
            "marked complete in the store"
        );
        self.core.on_complete(marked);
        self.act().await
    }
}
