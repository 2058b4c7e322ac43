//! The scrub at start: re-verifies every piece of every complete blob against its
//! recorded hash, in the background and at a bounded rate, so that damage at rest
//! is found (and the piece dropped, the blob fetched again on its next request)
//! before anyone asks for it, and later first reads need not hash again.
//!
//! Rate-limited (`--scrub-rate`, bytes per second; 0 turns it off) so that it
//! never competes with containerd's pulls for the disk. Each piece is checked with
//! [`PieceStore::verify_piece`], the same check a first read makes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::scheduler_link::{Report, SchedulerLink};
use crate::store::PieceStore;

/// What one scrub found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Complete blobs checked.
    pub blobs: u64,
    /// Pieces that matched their hash.
    pub pieces_ok: u64,
    /// Pieces damaged at rest (dropped).
    pub pieces_damaged: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Scrubs the store's complete blobs at most `rate` bytes per second, stopping
/// early at `shutdown`. A blob that lost a piece is reported evicted (the
/// scheduler stops offering this node for it).
pub async fn run(
    store: Arc<dyn PieceStore>,
    link: SchedulerLink,
    rate: u64,
    shutdown: impl std::future::Future<Output = ()>,
) -> ScrubReport {
    let mut report = ScrubReport::default();
    if rate == 0 {
        return report;
    }
    tokio::pin!(shutdown);
    let s = store.clone();
    let tasks = match tokio::task::spawn_blocking(move || s.list()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn!(error = %e, "scrub: cannot list the store");
            return report;
        }
        Err(_) => return report,
    };
    let started = Instant::now();
    for meta in tasks.into_iter().filter(|m| m.complete) {
        report.blobs += 1;
        let mut lost = false;
        for i in meta.pieces.iter() {
            let len = meta.shape.piece_len(i).map_or(0, u64::from);
            // Paced: the bytes read so far may not run ahead of `rate`.
            let due = started + Duration::from_secs_f64((report.bytes + len) as f64 / rate as f64);
            tokio::select! {
                _ = &mut shutdown => return report,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            let (s, d) = (store.clone(), meta.digest);
            match tokio::task::spawn_blocking(move || s.verify_piece(&d, i)).await {
                Ok(Ok(true)) => report.pieces_ok += 1,
                Ok(Ok(false)) => {
                    // Gone (evicted or dropped meanwhile) is not damage.
                    let (s, d) = (store.clone(), meta.digest);
                    let still = tokio::task::spawn_blocking(move || s.meta(&d))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                        .is_some();
                    if !still {
                        break;
                    }
                    report.pieces_damaged += 1;
                    lost = true;
                }
                Ok(Err(e)) => {
                    warn!(task.digest = %meta.digest, piece.index = i, error = %e, "scrub: cannot check the piece")
                }
                Err(_) => return report,
            }
            report.bytes += len;
        }
        if lost {
            link.report(Report::Evicted(meta.digest));
        }
    }
    info!(
        scrub.blobs = report.blobs,
        scrub.pieces_ok = report.pieces_ok,
        scrub.pieces_damaged = report.pieces_damaged,
        scrub.seconds = started.elapsed().as_secs(),
        "scrub of complete blobs done"
    );
    report
}
