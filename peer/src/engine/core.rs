//! The pure core of one download: the [`Planner`] plus the rules around it that
//! used to live in the async driver — what may be reported to the scheduler and
//! when, when to stream from upstream (back-to-source, starvation, a lost plan),
//! how upstream failures are retried, and when a lost plan is re-opened.
//!
//! No I/O, no clock, no global RNG: every input takes `now`, the RNG is seeded by
//! the caller, and decisions come out as [`Action`]s, drained with
//! [`DownloadCore::take_actions`] and carried out by the driver
//! (`driver.rs`), which feeds the outcomes back in. The swarm simulation in
//! `sim/tests/engine_sim.rs` drives many cores against the real scheduler core.
//!
//! Reporting rules (the scheduler ends a session on a report it refuses): nothing
//! is reported without an open plan; hashes only while back-to-source; a piece
//! without a hash only when the scheduler handed out its hash; a piece kept only
//! in memory never (other peers could not read it); `Complete` only when every
//! hash came from the scheduler or this peer is back-to-source — otherwise the
//! complete task is announced the way a join does.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use shoal_proto::{Digest, PieceSet, TaskShape};
use tracing::{debug, info, warn};

use super::EngineError;
use super::plan::{ParentRef, PlanUpdate};
use super::planner::{Planner, PlannerConfig};
use super::upstream::UpstreamError;
use crate::scheduler_link::Report;

/// Upstream failures after which the download fails.
pub const MAX_UPSTREAM_FAILURES: u32 = 3;
/// After the plan stream is lost (scheduler restart), how long the download goes on
/// with the parents it knows before it also streams from upstream.
pub const REPLAN_GRACE: Duration = Duration::from_secs(3);
/// First delay between attempts to re-open a lost plan; doubles up to [`REPLAN_MAX`].
pub const REPLAN_MIN: Duration = Duration::from_millis(250);
/// Longest delay between attempts to re-open a lost plan.
pub const REPLAN_MAX: Duration = Duration::from_secs(8);
/// After the plan stream is lost, how long a download that is *not* streaming from
/// upstream waits before it re-opens the plan, so that the peers that are (the
/// back-to-source peers) reach the task's new scheduler replica first and are the
/// ones it elects: a new owner knows nothing of the task, and elects the first peer
/// that asks. Well within [`REPLAN_GRACE`].
pub const REPLAN_DEFER: Duration = Duration::from_secs(1);

/// The planner's window once the store failed (see [`DownloadCore::store_failed`]):
/// pieces fetched ahead of the reader then wait in memory, so only this many ahead of
/// it are asked for.
pub const MEMORY_ONLY_WINDOW: u32 = 16;

/// What the core asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `parent` for piece `index`, `len` bytes.
    Fetch {
        /// The piece.
        index: u32,
        /// Whom to ask.
        parent: ParentRef,
        /// Its length.
        len: u32,
    },
    /// Stream the blob from upstream from byte `from` (a piece boundary) to its end.
    StartUpstream {
        /// First byte wanted.
        from: u64,
    },
    /// Stop the upstream stream started last (a faster peer took over). Its
    /// [`DownloadCore::on_upstream_done`], should it end on its own first, is
    /// ignored.
    StopUpstream,
    /// Try to re-open the lost plan for a task of `size` bytes (0: unknown); answer
    /// with [`DownloadCore::plan_opened`] or [`DownloadCore::plan_refused`].
    OpenPlan {
        /// The task's size when known.
        size: u64,
        /// Whether this download streams from upstream now (the new owner then
        /// counts it as the task's back-to-source peer).
        from_upstream: bool,
    },
    /// The task's shape is known (once): tell the readers, open the task in the
    /// store (answer a local fault with [`DownloadCore::store_failed`]).
    ShapeKnown(TaskShape),
    /// Send this report to the scheduler.
    Report(Report),
    /// Announce the complete task with every piece hash (no plan, or the scheduler
    /// lacks hashes).
    Announce {
        /// The task's size.
        size: u64,
        /// Every piece's hash.
        hashes: Vec<Option<[u8; 32]>>,
    },
}

/// Where a piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A parent, by peer id.
    Parent(&'a str),
    /// The upstream registry.
    Upstream,
}

/// What to do with a piece whose hash the driver computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Already held: dropped.
    Duplicate,
    /// From a parent, and wrong: dropped, the parent excluded and reported.
    Bad,
    /// Keep it: store it (with its hash), then call
    /// [`DownloadCore::on_piece_kept`]. `checked` is true when it matched a known
    /// hash (false for an upstream piece whose hash nobody knew: its hash is learnt
    /// from it, and the whole blob's digest is the check).
    Keep {
        /// It matched a known hash.
        checked: bool,
    },
}

/// One download's decisions.
#[derive(Debug)]
pub struct DownloadCore {
    digest: Digest,
    planner: Planner,
    rng: SmallRng,
    actions: Vec<Action>,
    /// A plan stream is open: reports may be sent.
    reporting: bool,
    /// This peer was told to fetch from upstream (sticky: the scheduler keeps it a
    /// source).
    source: bool,
    started_reported: bool,
    shape_published: bool,
    upstream_running: bool,
    /// Fetch from upstream from this piece on (the pieces before it from
    /// parents): set by a plan that hands a slower source's task over to this
    /// peer. 0: from the first piece missing.
    upstream_from: u32,
    upstream_failures: u32,
    /// The store takes pieces; false after a local fault.
    store_ok: bool,
    /// Pieces held only in memory (the store could not take them).
    unstored: PieceSet,
    /// Pieces whose hash the current scheduler knows (handed out in the plan, or
    /// reported by this peer as back-to-source).
    sched_knows: PieceSet,
    /// Pieces reported to the current scheduler.
    reported: PieceSet,
    /// The plan stream was lost at this instant and not re-opened yet.
    plan_lost: Option<Instant>,
    /// When to try re-opening the plan next, and the delay after that.
    replan_at: Instant,
    replan_delay: Duration,
}

impl DownloadCore {
    /// The core of a new download of `digest`; `seed` seeds its RNG.
    pub fn new(digest: Digest, config: PlannerConfig, seed: u64, now: Instant) -> Self {
        DownloadCore {
            digest,
            planner: Planner::new(config),
            rng: SmallRng::seed_from_u64(seed),
            actions: Vec::new(),
            reporting: false,
            source: false,
            started_reported: false,
            shape_published: false,
            upstream_running: false,
            upstream_from: 0,
            upstream_failures: 0,
            store_ok: true,
            unstored: PieceSet::new(0),
            sched_knows: PieceSet::new(0),
            reported: PieceSet::new(0),
            plan_lost: None,
            replan_at: now,
            replan_delay: REPLAN_MIN,
        }
    }

    /// The actions decided since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Resumes from the store: the task's shape, the hashes and the pieces it holds
    /// (already verified by the caller).
    pub fn resume(
        &mut self,
        shape: TaskShape,
        hashes: &[Option<[u8; 32]>],
        pieces: &PieceSet,
    ) -> Result<(), EngineError> {
        self.shape_known(shape)?;
        for (i, h) in hashes.iter().enumerate() {
            if let Some(h) = h {
                self.planner.set_hash(i as u32, *h);
            }
        }
        for i in pieces.iter() {
            self.planner.on_piece_stored(i);
        }
        Ok(())
    }

    /// The first plan was opened.
    pub fn plan_opened(&mut self) {
        if self.plan_lost.take().is_some() {
            info!("plan re-opened");
        }
        self.reporting = true;
    }

    /// No plan at the start (no scheduler, or it refused): everything comes from
    /// upstream.
    pub fn no_plan(&mut self) {
        self.start_upstream();
    }

    /// Re-opening the lost plan failed: try again later, with backoff.
    pub fn plan_refused(&mut self, now: Instant) {
        self.replan_at = now + self.replan_delay;
        self.replan_delay = (self.replan_delay * 2).min(REPLAN_MAX);
    }

    /// The plan stream ended (the scheduler restarted or dropped it). Reports stop:
    /// a new scheduler refuses reports for a task it has not planned. The known
    /// parents stay in use; the plan is re-opened from [`DownloadCore::poll`].
    pub fn plan_lost(&mut self, now: Instant) {
        self.reporting = false;
        self.source = false;
        self.started_reported = false;
        self.sched_knows = PieceSet::new(self.sched_knows.len());
        self.reported = PieceSet::new(self.reported.len());
        self.plan_lost = Some(now);
        self.replan_at = if self.upstream_running {
            now
        } else {
            now + REPLAN_DEFER
        };
        self.replan_delay = REPLAN_MIN;
    }

    /// A plan update arrived.
    pub fn on_plan(&mut self, update: &PlanUpdate) -> Result<(), EngineError> {
        self.planner.on_plan(update)?;
        if update.back_to_source {
            self.source = true;
        }
        if let Some(shape) = self.planner.shape() {
            self.shape_known(shape)?;
        }
        for (index, _) in &update.hashes {
            if *index < self.sched_knows.len() {
                self.sched_knows.insert(*index);
            }
        }
        self.report_pending();
        self.follow_upstream_orders(update);
        Ok(())
    }

    /// Looks at the clock: stalled requests, starvation, a lost plan, and the next
    /// piece requests. `reader` is the latest reader's byte offset; `connected`
    /// whether a scheduler is connected.
    pub fn poll(&mut self, now: Instant, reader: u64, connected: bool) {
        self.planner.on_reader(reader);
        for (index, parent) in self.planner.timed_out(now) {
            debug!(piece = index, parent.id = %parent, "piece request stalled");
        }
        if !self.upstream_running && self.planner.wants_upstream(now) {
            info!("parents cannot serve; fetching the missing pieces from upstream");
            self.upstream_from = 0;
            self.start_upstream();
        }
        if let Some(lost) = self.plan_lost {
            if !self.upstream_running
                && now.saturating_duration_since(lost) >= REPLAN_GRACE
                && !self.planner.is_complete()
            {
                info!(
                    "no plan since the scheduler went away; fetching the missing pieces from upstream"
                );
                self.start_upstream();
            }
            if now >= self.replan_at && connected {
                let size = self.planner.shape().map_or(0, |s| s.size());
                self.actions.push(Action::OpenPlan {
                    size,
                    from_upstream: self.upstream_running,
                });
            }
        }
        let Some(shape) = self.planner.shape() else {
            return;
        };
        for (index, parent) in self.planner.next_requests(now, &mut self.rng) {
            let Ok(len) = shape.piece_len(index) else {
                continue;
            };
            debug!(piece = index, parent.id = %parent.id, "piece requested");
            self.actions.push(Action::Fetch { index, parent, len });
        }
    }

    /// The earliest instant a parent that answered `BUSY` may be asked again.
    pub fn busy_until(&self) -> Option<Instant> {
        self.planner.busy_until()
    }

    /// A parent answered `BUSY` for `index`.
    pub fn on_busy(&mut self, index: u32, parent: &str, now: Instant) {
        self.planner.on_busy(index, parent, now);
    }

    /// A fetch from a parent failed.
    pub fn on_fetch_failed(
        &mut self,
        index: u32,
        parent: &str,
        retry_elsewhere: bool,
        now: Instant,
    ) {
        self.planner
            .on_fetch_failed(index, parent, retry_elsewhere, now);
    }

    /// A fetch from `parent` failed because it looks unreachable (silent): it is
    /// avoided at once, as after a request timeout.
    pub fn on_parent_silent(&mut self, index: u32, parent: &str, now: Instant) {
        self.planner.on_parent_silent(index, parent, now);
    }

    /// A piece arrived and its SHA-256 is `hash`: what to do with it. A wrong piece
    /// from a parent excludes the parent and reports it (once per download); a wrong piece from upstream
    /// (its hash known from the swarm) fails this upstream attempt.
    pub fn on_piece(
        &mut self,
        index: u32,
        hash: [u8; 32],
        origin: Origin<'_>,
    ) -> Result<Verdict, EngineError> {
        if self.planner.have().contains(index) {
            if let Origin::Parent(p) = origin {
                self.planner.on_piece_stored(index);
                debug!(piece = index, parent.id = %p, "duplicate piece dropped");
            }
            return Ok(Verdict::Duplicate);
        }
        let known = self.planner.hash(index);
        match origin {
            Origin::Parent(parent) if known != Some(hash) => {
                warn!(piece = index, parent.id = %parent, "bad piece from parent");
                // Reported once per download: a second bad piece that was already
                // in flight says nothing new.
                let first = !self.planner.is_excluded(parent);
                let parent = self.planner.on_bad_piece(index, parent);
                if first {
                    self.report(Report::BadParent {
                        digest: self.digest,
                        parent,
                        index,
                        reason: "piece does not match its hash".into(),
                    });
                }
                Ok(Verdict::Bad)
            }
            Origin::Upstream if known.is_some_and(|k| k != hash) => {
                Err(EngineError::UpstreamPieceMismatch(index))
            }
            Origin::Parent(_) => Ok(Verdict::Keep { checked: true }),
            Origin::Upstream => Ok(Verdict::Keep {
                checked: known.is_some(),
            }),
        }
    }

    /// A kept piece is held: in the store (`stored`) or only in memory.
    pub fn on_piece_kept(&mut self, index: u32, hash: [u8; 32], stored: bool) {
        if self.planner.hash(index).is_none() {
            self.planner.set_hash(index, hash);
        }
        self.planner.on_piece_stored(index);
        if !stored && index < self.unstored.len() {
            self.unstored.insert(index);
        }
        if stored {
            self.report_piece(index);
        }
    }

    /// The store failed with a local fault (disk full, I/O error): from now on
    /// pieces stay in memory, and only [`MEMORY_ONLY_WINDOW`] pieces ahead of the
    /// reader are fetched.
    pub fn store_failed(&mut self) {
        self.store_ok = false;
        self.planner.confine_to_window(MEMORY_ONLY_WINDOW);
    }

    /// True while the store takes pieces.
    pub fn store_ok(&self) -> bool {
        self.store_ok
    }

    /// Every piece is held and the blob matched its digest. `marked` is true when the
    /// store recorded the task as complete (false: nothing is reported).
    pub fn on_complete(&mut self, marked: bool) {
        let Some(shape) = self.planner.shape() else {
            return;
        };
        if !self.store_ok || !marked {
            return;
        }
        if self.reporting && self.sched_knows.is_full() {
            self.report_pending();
            self.report(Report::Complete(self.digest));
        } else {
            let hashes = (0..shape.piece_count())
                .map(|i| self.planner.hash(i))
                .collect();
            self.actions.push(Action::Announce {
                size: shape.size(),
                hashes,
            });
        }
    }

    /// Every piece matched its hash and the blob did not match its digest: the
    /// hashes were wrong, and the driver deleted what it had. The scheduler is told
    /// (`DigestMismatch`): from a peer that got the hashes from it, they are wrong;
    /// from the back-to-source peer that reported them, they are retracted. Either
    /// way the scheduler discards them and elects a source again.
    pub fn on_digest_mismatch(&mut self) {
        if self.source || !self.sched_knows.is_empty() {
            self.report(Report::DigestMismatch(self.digest));
        }
    }

    /// True once the shape is known and every piece is held.
    pub fn is_complete(&self) -> bool {
        self.planner.is_complete()
    }

    /// The task's shape, once known.
    pub fn shape(&self) -> Option<TaskShape> {
        self.planner.shape()
    }

    /// The hash of piece `index`, when known.
    pub fn hash(&self, index: u32) -> Option<[u8; 32]> {
        self.planner.hash(index)
    }

    /// Pieces held.
    pub fn have(&self) -> &PieceSet {
        self.planner.have()
    }

    /// The planner (read-only), for tests and the simulation.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// True while an upstream stream runs.
    pub fn upstream_running(&self) -> bool {
        self.upstream_running
    }

    /// True while a plan is open (reports are sent).
    pub fn is_reporting(&self) -> bool {
        self.reporting
    }

    fn report(&mut self, r: Report) {
        if self.reporting {
            self.actions.push(Action::Report(r));
        }
    }

    /// The task's shape is known: tell the planner, and (once) the driver.
    fn shape_known(&mut self, shape: TaskShape) -> Result<(), EngineError> {
        self.planner.set_shape(shape)?;
        let n = shape.piece_count();
        if self.sched_knows.len() != n {
            self.sched_knows = PieceSet::new(n);
            self.reported = PieceSet::new(n);
            self.unstored = PieceSet::new(n);
        }
        if !self.shape_published {
            self.shape_published = true;
            self.actions.push(Action::ShapeKnown(shape));
        }
        if self.source && !self.started_reported {
            self.started_reported = true;
            self.report(Report::Started {
                digest: self.digest,
                size: shape.size(),
            });
        }
        Ok(())
    }

    /// Reports piece `index` to the current scheduler if it may be reported and was
    /// not yet: with its hash when this peer is back-to-source and the scheduler does
    /// not know the hash, without one when the scheduler handed the hash out; never
    /// otherwise.
    fn report_piece(&mut self, index: u32) {
        if !self.reporting || self.reported.contains(index) || self.unstored.contains(index) {
            return;
        }
        let hash = if self.sched_knows.contains(index) {
            None
        } else if self.source
            && let Some(h) = self.planner.hash(index)
        {
            self.sched_knows.insert(index);
            Some(h)
        } else {
            return;
        };
        self.reported.insert(index);
        self.report(Report::Pieces {
            digest: self.digest,
            pieces: vec![(index, hash)],
        });
    }

    /// Reports every held piece that may be reported now (after a plan update:
    /// pieces resumed from the store, fetched before a scheduler restart, or whose
    /// hash just became known).
    fn report_pending(&mut self) {
        let pending: Vec<u32> = self
            .planner
            .have()
            .iter()
            .filter(|i| !self.reported.contains(*i))
            .collect();
        for i in pending {
            self.report_piece(i);
        }
    }
}

mod upstream;

#[cfg(test)]
mod tests;
