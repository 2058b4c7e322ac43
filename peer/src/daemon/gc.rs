//! The eviction loop: every [`INTERVAL`] the store collects garbage by its
//! watermarks (least recently used complete tasks, never a pinned one: being read
//! or written) and each evicted task is reported to the scheduler, so it stops
//! offering this peer as a parent for it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::scheduler_link::{Report, SchedulerLink};
use crate::store::PieceStore;

/// How often the cache is checked against its high watermark.
pub(super) const INTERVAL: Duration = Duration::from_secs(10);

pub(super) async fn run(
    store: Arc<dyn PieceStore>,
    link: SchedulerLink,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.collect_garbage()).await {
            Ok(Ok(evicted)) => {
                failing = false;
                for digest in evicted {
                    info!(task.digest = %digest, "evicted from the cache");
                    link.report(Report::Evicted(digest));
                }
            }
            Ok(Err(e)) => {
                // Logged once until it recovers: the loop runs every few seconds.
                if !failing {
                    warn!(error = %e, "garbage collection failed");
                }
                failing = true;
            }
            Err(e) => warn!(error = %e, "garbage collection task panicked"),
        }
    }
}
