//! The planner's knobs and their defaults (the policy they tune is described in
//! [`super`]).

use std::time::Duration;

use shoal_proto::piece::MAX_FINE_PIECES;

/// The planner's knobs.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Pieces ahead of the reader fetched rarest first (after the reader's next
    /// piece), before the rest in order. Default [`MAX_FINE_PIECES`] (2,048): the whole
    /// blob up to 32 GiB, which the piece rule cuts into at most that many pieces. The
    /// larger, the better the swarm spreads its pieces (simulated, 1,000 peers × 1 GiB,
    /// p50 / max ÷ line rate: 2.95 at 16, 2.13 at 64, 1.97 at 256 before other
    /// changes; 1.187 / 1.405 at 256, 1.152 / 1.333 at 1,024 after them;
    /// `docs/benchmarks.md`), and the reader's next piece is asked for first whatever
    /// its size. Bounded because the planner ranks the window on every poll.
    pub window: u32,
    /// Requests in flight at once for one download. Default 8.
    pub max_in_flight: usize,
    /// A download for which fewer than this many pieces are on their way or could be
    /// asked for now (held by a parent, hash known) is near the swarm's frontier: it
    /// keeps at most [`PlannerConfig::max_in_flight_at_frontier`] requests in flight.
    /// Not while a parent holds the whole blob since this download began (a cache, a
    /// preheated node): then a small blob's few pieces are fetched as before, at
    /// `max_in_flight`. Default 16.
    pub frontier_pieces: usize,
    /// Requests in flight at once near the frontier. Default 4. A download's requests
    /// share its downlink fairly, so with k at once each piece takes k piece-times to
    /// arrive; near the frontier the pieces it fetches are the newest, which it passes
    /// on to other children, so fewer at once move every new piece through the swarm
    /// sooner. A download further behind keeps `max_in_flight`, to fill its link from
    /// parents that are slow or busy (simulated, 8 × 100 Mbit/s: p50 1.113 → 1.104 ×
    /// line rate; `docs/benchmarks.md`, "Fewer requests near the frontier").
    pub max_in_flight_at_frontier: usize,
    /// Requests in flight to one complete parent at once. Default 2.
    pub max_per_parent: usize,
    /// Requests in flight to one parent that is still downloading. Default 1: such a
    /// parent (the back-to-source peer above all) has new pieces that only it holds,
    /// and a child asking it for two at a time takes the next new one before the
    /// others can, so one child receives every new piece and must pass each on to
    /// all the others (measured in the simulator, `docs/benchmarks.md`).
    pub max_per_downloading_parent: usize,
    /// A request not answered within this long is given up and its parent avoided.
    /// Default 10 s.
    pub request_timeout: Duration,
    /// How long a stalled or repeatedly failing parent is avoided. Default 30 s.
    pub avoid_for: Duration,
    /// How long a parent that went silent (see [`Planner::on_parent_silent`](super::Planner::on_parent_silent)) is
    /// avoided the first time; doubled for every further silence in a row, up to
    /// `avoid_for`. Short, so that a partition that heals (on either side) costs
    /// seconds. Default 2 s.
    pub silent_avoid_for: Duration,
    /// Consecutive failures after which a parent is avoided. Default 3.
    pub max_failures: u32,
    /// Missing pieces that no parent could serve for this long (with nothing in
    /// flight) make [`Planner::wants_upstream`](super::Planner::wants_upstream) true. Default 30 s.
    pub starve_timeout: Duration,
    /// After a parent answered `BUSY` for a piece (every upload slot taken, or the
    /// piece already on its way to another child), how long before that parent is
    /// asked for that piece again. Not a failure: the parent is not avoided.
    /// Default 100 ms.
    pub busy_backoff: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            window: MAX_FINE_PIECES as u32,
            max_in_flight: 8,
            frontier_pieces: 16,
            max_in_flight_at_frontier: 4,
            max_per_parent: 2,
            max_per_downloading_parent: 1,
            request_timeout: Duration::from_secs(10),
            avoid_for: Duration::from_secs(30),
            silent_avoid_for: Duration::from_secs(2),
            max_failures: 3,
            starve_timeout: Duration::from_secs(30),
            busy_backoff: Duration::from_millis(100),
        }
    }
}
