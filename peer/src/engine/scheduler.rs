//! The scheduler as the download engine sees it: plan streams of [`PlanUpdate`]s,
//! reports, announcements, and the load counters heartbeats carry.
//!
//! Only the boundary: the implementation is `crate::scheduler_link::SchedulerLink`
//! (gRPC, mutual TLS, reconnects, the wire conversion); the in-memory twin is
//! [`super::twins::TwinScheduler`].

use futures::stream::BoxStream;
use shoal_proto::Digest;

use super::plan::{PlanUpdate, PlannerError};
use crate::scheduler_link::{Load, Report};

pub use shoal_proto::PlanOpening;

/// A plan stream: updates until the scheduler ends it (or goes away). An item that
/// is an error is a plan the engine cannot use; the download fails with it.
pub type PlanStream = BoxStream<'static, Result<PlanUpdate, PlannerError>>;

/// Why a plan could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanOpenError {
    /// No scheduler is reachable right now; fetch from upstream.
    #[error("no scheduler is reachable")]
    Unavailable,
    /// The scheduler refused the request.
    #[error("scheduler refused: {0}")]
    Refused(String),
}

/// The scheduler, from the engine's side.
#[async_trait::async_trait]
pub trait SchedulerClient: Send + Sync + 'static {
    /// True while a scheduler is connected (a plan may be opened).
    fn is_connected(&self) -> bool;

    /// Opens a plan stream for `digest` (`size` 0 when unknown).
    async fn plan(
        &self,
        digest: &Digest,
        size: u64,
        opening: PlanOpening,
    ) -> Result<PlanStream, PlanOpenError>;

    /// Queues a report. Never blocks; may be dropped when nothing is connected.
    fn report(&self, report: Report);

    /// Announces one complete task the way a join does, with every piece hash (for a
    /// task completed without a plan). Does nothing when a hash is missing.
    fn announce(&self, digest: Digest, size: u64, hashes: Vec<Option<[u8; 32]>>);

    /// Load counters the engine keeps up to date (downloads in flight).
    fn load(&self) -> &Load;

    /// How long a download should wait before it opens its first plan: a scheduler
    /// replica just went away, and the back-to-source peers of its tasks must reach
    /// the tasks' new owner first (see [`super::core::REPLAN_DEFER`]). Zero by default.
    fn open_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
