//! The download core's upstream stream: when it starts and from where, what its
//! end means, and the hand-over orders of a plan (stop, or start mid-blob).

use shoal_proto::TaskShape;
use tracing::{info, warn};

use super::{Action, DownloadCore, EngineError, MAX_UPSTREAM_FAILURES, PlanUpdate, UpstreamError};

impl DownloadCore {
    /// Upstream told the blob's size.
    pub fn on_upstream_size(&mut self, total: u64) -> Result<(), EngineError> {
        let shape = TaskShape::for_size(total)
            .map_err(|e| UpstreamError::Malformed(format!("blob size {total}: {e}")))?;
        self.shape_known(shape)
    }

    /// The upstream stream ended: `Ok` at the blob's end. A failure is retried (from
    /// the first missing piece) up to [`MAX_UPSTREAM_FAILURES`] times; the download
    /// fails with it after that, or at once when nothing else could finish it (no
    /// plan and no shape).
    pub fn on_upstream_done(&mut self, result: Result<(), EngineError>) -> Result<(), EngineError> {
        if !self.upstream_running {
            // A stream stopped by a hand-over that ended on its own first.
            return Ok(());
        }
        self.upstream_running = false;
        match result {
            Err(e) => {
                self.upstream_failures += 1;
                warn!(error = %e, failures = self.upstream_failures, "upstream failed");
                if self.upstream_failures >= MAX_UPSTREAM_FAILURES
                    || (!self.reporting && self.planner.shape().is_none())
                {
                    return Err(e);
                }
                if !self.reporting || self.source {
                    self.start_upstream();
                }
                Ok(())
            }
            // Took over from a slower source: the pieces before the start come
            // from parents (and from upstream again if they starve).
            Ok(())
                if self
                    .planner
                    .have()
                    .missing_from(self.upstream_from)
                    .is_none() =>
            {
                Ok(())
            }
            Ok(()) if !self.planner.is_complete() => {
                Err(UpstreamError::Http("upstream body ended before the last piece".into()).into())
            }
            Ok(()) => Ok(()),
        }
    }

    /// What a plan update says about upstream: stop the stream (a faster peer
    /// took over), or start it (from the plan's start piece, when this peer takes
    /// over from a slower one).
    pub(super) fn follow_upstream_orders(&mut self, update: &PlanUpdate) {
        if update.hand_over && !update.back_to_source && self.upstream_running {
            info!("a faster peer took over the upstream download; fetching the rest from parents");
            self.upstream_running = false;
            self.actions.push(Action::StopUpstream);
        }
        if update.back_to_source && !self.upstream_running {
            self.upstream_from = update.upstream_from_piece;
            if self.upstream_from > 0 {
                info!(
                    piece = self.upstream_from,
                    "took over the upstream download from a slower peer"
                );
            } else {
                info!("told to fetch from upstream");
            }
            self.start_upstream();
        }
    }

    /// Streams the missing pieces from upstream, from the first missing one on.
    pub(super) fn start_upstream(&mut self) {
        let from = match self.planner.shape() {
            // Taking over from a slower source: from the first piece missing at
            // or after the start; nothing when the stream already covered them.
            Some(shape) => match if self.upstream_from > 0 {
                self.planner.have().missing_from(self.upstream_from)
            } else {
                self.planner.have().first_missing()
            } {
                Some(i) => shape.piece_range(i).map_or(0, |r| r.start),
                None => return,
            },
            None => 0,
        };
        self.upstream_running = true;
        self.actions.push(Action::StartUpstream { from });
    }
}
