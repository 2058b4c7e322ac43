//! The scan of containerd's content store (`--containerd-content-dir`): at start and
//! every [`RESCAN`], blobs containerd committed since are verified and adopted
//! ([`ContentLayer::scan`]) and announced to the scheduler; adoptions lost (containerd
//! deleted the blob, or it was damaged) are reported evicted unless the own store
//! still holds the blob.
//!
//! Hashing is paced at `--scrub-rate` bytes per second (0: unpaced), so that a node
//! with many images does not spend its disk on it at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::metrics::{self, Sample};
use crate::scheduler_link::{Report, SchedulerLink};
use crate::store::content::ContentStats;
use crate::store::{ContentLayer, PieceStore};

/// How often containerd's content store is looked at again.
pub const RESCAN: Duration = Duration::from_secs(15);

/// Scans until `shutdown`.
pub async fn run(
    layer: Arc<ContentLayer>,
    link: SchedulerLink,
    rate: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        let l = layer.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut read = 0u64;
            l.scan(|n| {
                read += n;
                if rate > 0 {
                    let due = Duration::from_secs_f64(read as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .await;
        match scanned {
            Ok(Ok(r)) => {
                if first || !r.adopted.is_empty() || !r.deduplicated.is_empty() {
                    let (blobs, bytes) = layer.adopted_count();
                    info!(
                        content.dir = %layer.dir().display(),
                        adopted = r.adopted.len(),
                        deduplicated = r.deduplicated.len(),
                        rejected = r.rejected.len(),
                        blobs,
                        bytes,
                        "containerd's content store scanned"
                    );
                }
                if first && !r.adopted.is_empty() {
                    // A join made from now on lists them; one already made does not:
                    // announced once the link is up (a join is then behind us).
                    link.wait_connected(Duration::from_secs(30)).await;
                }
                for (digest, size, hashes) in r.adopted {
                    link.announce(digest, size, hashes.into_iter().map(Some).collect());
                }
            }
            Ok(Err(e)) => {
                warn!(content.dir = %layer.dir().display(), error = %e, "cannot read containerd's content store")
            }
            Err(e) => warn!(error = %e, "content store scan failed"),
        }
        first = false;
        for digest in layer.take_lost() {
            let own = layer
                .meta(&digest)
                .ok()
                .flatten()
                .is_some_and(|m| m.complete);
            if !own {
                link.report(Report::Evicted(digest));
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// Registers the layer's counters (names without a prefix; the daemon's registry adds
/// `shoal_peer_`); zeros without a layer (`--containerd-content-dir` unset), so that
/// the set of metrics does not depend on the flags.
pub fn register_metrics(layer: Option<Arc<ContentLayer>>, registry: &mut Registry) {
    metrics::register(registry, layer, |l| {
        let (blobs, bytes) = l.as_ref().map_or((0, 0), |l| l.adopted_count());
        let none = ContentStats::default();
        let s = l.as_ref().map_or(&none, |l| &*l.stats);
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Sample::Gauge(
                "content_store_blobs",
                "Blobs served from containerd's content store (adopted, verified).",
                blobs as i64,
            ),
            Sample::Gauge(
                "content_store_bytes",
                "Bytes of the blobs served from containerd's content store.",
                bytes as i64,
            ),
            Sample::Counter(
                "content_store_adopted",
                "containerd blobs verified against their digest and adopted.",
                load(&s.adopted),
            ),
            Sample::Counter(
                "content_store_rejected",
                "containerd blobs that did not match their digest (never served).",
                load(&s.rejected),
            ),
            Sample::Counter(
                "content_store_own_copies_dropped",
                "Own copies deleted because containerd holds the blob (one copy on disk).",
                load(&s.own_copies_dropped),
            ),
            Sample::Counter(
                "content_store_lost",
                "Adopted blobs no longer served: deleted by containerd, or a piece changed.",
                load(&s.lost),
            ),
            Sample::Counter(
                "content_store_bytes_served",
                "Piece bytes read (and verified) from containerd's content store.",
                load(&s.bytes_served),
            ),
        ]
    });
}
