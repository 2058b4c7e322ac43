//! The download planner: which piece to ask which parent for, and when to give up.
//!
//! Pure: no I/O, no clock, no global RNG. The core ([`super::core`]) feeds it
//! inputs (`on_*`: plan updates, pieces stored, fetch failures, bad pieces, the
//! reader's position) and polls it for decisions ([`Planner::next_requests`],
//! [`Planner::timed_out`], [`Planner::wants_upstream`]), passing `now` and an RNG.
//!
//! Policy: the reader's next piece first, then the rest of a window ahead of the reader
//! rarest first (held by the fewest parents, ties at random), then the rest (in order
//! from the reader, then the ones behind it); at most `max_in_flight` requests at once
//! (`max_in_flight_at_frontier` while fewer than `frontier_pieces` could be fetched or
//! are on their way: near the swarm's frontier, fewer at once arrive sooner),
//! `max_per_parent` per complete parent and `max_per_downloading_parent` per parent
//! still downloading; each piece to the least advanced holder (the
//! fewest pieces held, so the peers furthest ahead keep their uplink for the pieces
//! only they have), then the fewest requests in flight (random tie-break), preferring
//! parents it has not failed at; a parent that answered `BUSY` for a piece is asked for
//! it again only after a short backoff, and is not counted as failing; a
//! piece is only requested when its hash is known (so it can be verified) and the
//! parent holds it per the latest plan. A parent that sent a bad piece is never asked
//! again for this task; one that keeps failing or stalls is avoided for a while.
//!
//! Not here: fetching, verifying or storing pieces, talking to the scheduler.

mod config;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rand::Rng;
use shoal_proto::{PieceSet, TaskShape};

use super::plan::PlanUpdate;
pub use super::plan::{ParentRef, PlannerError};
pub use config::PlannerConfig;

#[derive(Debug, Clone)]
struct Parent {
    r: ParentRef,
    /// `None`: holds every piece.
    pieces: Option<PieceSet>,
    /// Complete, but seen downloading earlier in this download: it finished
    /// the task the same time we fetch it (the back-to-source peer above all),
    /// so every other child wants its uplink too.
    just_completed: bool,
}

impl Parent {
    fn holds(&self, index: u32) -> bool {
        self.pieces.as_ref().is_none_or(|p| p.contains(index))
    }

    /// How many of the task's `n` pieces it holds.
    fn held(&self, n: u32) -> u32 {
        self.pieces.as_ref().map_or(n, PieceSet::count)
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    parent: String,
    started: Instant,
}

/// The planner of one download.
#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    shape: Option<TaskShape>,
    hashes: Vec<Option<[u8; 32]>>,
    have: PieceSet,
    parents: Vec<Parent>,
    back_to_source: bool,
    in_flight: HashMap<u32, InFlight>,
    /// Parents that sent a bad piece: never asked again.
    excluded: HashSet<String>,
    /// Parents avoided until the instant.
    avoided: HashMap<String, Instant>,
    /// Consecutive failures per parent.
    failures: HashMap<String, u32>,
    /// Consecutive silences per parent (reset by a piece from it).
    silences: HashMap<String, u32>,
    /// Parents each piece failed at.
    failed_at: HashMap<u32, HashSet<String>>,
    /// (piece, parent) pairs that answered `BUSY`, not asked again until the instant.
    /// Keyed by parent, then piece (looked up per candidate without allocating).
    busy: HashMap<String, HashMap<u32, Instant>>,
    reader: u32,
    /// Parents seen still downloading in some plan update of this download.
    seen_downloading: HashSet<String>,
    starved_since: Option<Instant>,
    /// A fetch failed in a way no parent can fix (`retry_elsewhere` false).
    broken: bool,
    /// Only pieces within the window ahead of the reader are asked for (see
    /// [`Planner::confine_to_window`]).
    confined: bool,
}

impl Planner {
    /// A planner that knows nothing yet.
    pub fn new(config: PlannerConfig) -> Self {
        Planner {
            config,
            shape: None,
            hashes: Vec::new(),
            have: PieceSet::new(0),
            parents: Vec::new(),
            back_to_source: false,
            in_flight: HashMap::new(),
            excluded: HashSet::new(),
            avoided: HashMap::new(),
            failures: HashMap::new(),
            silences: HashMap::new(),
            failed_at: HashMap::new(),
            busy: HashMap::new(),
            reader: 0,
            seen_downloading: HashSet::new(),
            starved_since: None,
            broken: false,
            confined: false,
        }
    }

    /// Sets the task's shape (from the plan, upstream or the store). A second call with
    /// the same shape is a no-op; a different one is an error.
    pub fn set_shape(&mut self, shape: TaskShape) -> Result<(), PlannerError> {
        match self.shape {
            Some(s) if s == shape => Ok(()),
            Some(s) => Err(PlannerError::Shape(format!(
                "task is {} bytes, plan says {}",
                s.size(),
                shape.size()
            ))),
            None => {
                self.shape = Some(shape);
                let n = shape.piece_count();
                self.hashes = vec![None; n as usize];
                self.have = PieceSet::new(n);
                Ok(())
            }
        }
    }

    /// Applies a plan update (checked at the edge): shape, new piece hashes, the
    /// parent set (replaced), and the back-to-source order. Parents whose bitmap does
    /// not fit the task are skipped.
    pub fn on_plan(&mut self, update: &PlanUpdate) -> Result<(), PlannerError> {
        if let Some(shape) = update.shape {
            self.set_shape(shape)?;
        }
        self.back_to_source = update.back_to_source;
        self.starved_since = None;
        let Some(shape) = self.shape else {
            self.parents.clear();
            return Ok(());
        };
        for (index, hash) in &update.hashes {
            shape.check_index(*index)?;
            self.hashes[*index as usize] = Some(*hash);
        }
        let n = shape.piece_count();
        for p in &update.parents {
            if p.pieces.is_some() {
                self.seen_downloading.insert(p.r.id.clone());
            }
        }
        self.parents = update
            .parents
            .iter()
            .filter(|p| p.pieces.as_ref().is_none_or(|s| s.len() == n))
            .map(|p| Parent {
                r: p.r.clone(),
                pieces: p.pieces.clone(),
                just_completed: p.pieces.is_none() && self.seen_downloading.contains(&p.r.id),
            })
            .collect();
        Ok(())
    }

    /// Records a hash learnt elsewhere (the store). Ignored when out of range.
    pub fn set_hash(&mut self, index: u32, hash: [u8; 32]) {
        if let Some(slot) = self.hashes.get_mut(index as usize) {
            *slot = Some(hash);
        }
    }

    /// The reader is at byte `offset`: the window starts at its piece.
    pub fn on_reader(&mut self, offset: u64) {
        if let Some(i) = self.shape.and_then(|s| s.piece_at(offset)) {
            self.reader = i;
        }
    }

    /// Piece `index` is verified and held (from a parent, upstream or the store).
    pub fn on_piece_stored(&mut self, index: u32) {
        if let Some(f) = self.in_flight.remove(&index) {
            self.failures.remove(&f.parent);
            self.silences.remove(&f.parent);
        }
        self.failed_at.remove(&index);
        if index < self.have.len() {
            self.have.insert(index);
        }
    }

    /// A fetch of `index` from `parent` failed. The piece is retried elsewhere; the
    /// parent is avoided after repeated failures. `retry_elsewhere` false means no
    /// parent can help ([`Planner::wants_upstream`] turns true).
    pub fn on_fetch_failed(
        &mut self,
        index: u32,
        parent: &str,
        retry_elsewhere: bool,
        now: Instant,
    ) {
        self.finish(index, parent);
        self.failed_at
            .entry(index)
            .or_default()
            .insert(parent.to_owned());
        let n = self.failures.entry(parent.to_owned()).or_insert(0);
        *n += 1;
        if *n >= self.config.max_failures {
            self.failures.remove(parent);
            self.avoided
                .insert(parent.to_owned(), now + self.config.avoid_for);
        }
        if !retry_elsewhere {
            self.broken = true;
        }
    }

    /// A fetch of `index` from `parent` failed because the parent looks unreachable
    /// (it said nothing for seconds): the piece is retried elsewhere and the parent
    /// avoided at once, for [`PlannerConfig::silent_avoid_for`] doubled per silence
    /// in a row (at most [`PlannerConfig::avoid_for`]).
    pub fn on_parent_silent(&mut self, index: u32, parent: &str, now: Instant) {
        self.finish(index, parent);
        self.failed_at
            .entry(index)
            .or_default()
            .insert(parent.to_owned());
        self.failures.remove(parent);
        let n = self.silences.entry(parent.to_owned()).or_insert(0);
        let avoid = self
            .config
            .silent_avoid_for
            .saturating_mul(1 << (*n).min(16))
            .min(self.config.avoid_for);
        *n += 1;
        self.avoided.insert(parent.to_owned(), now + avoid);
    }

    /// `parent` answered `BUSY` for `index`: the piece is asked elsewhere (or of this
    /// parent again after [`PlannerConfig::busy_backoff`]); the parent is not counted
    /// as failing.
    pub fn on_busy(&mut self, index: u32, parent: &str, now: Instant) {
        self.finish(index, parent);
        self.busy
            .entry(parent.to_owned())
            .or_default()
            .insert(index, now + self.config.busy_backoff);
    }

    /// The earliest instant a `BUSY` pair may be asked again, if any is waiting (the
    /// driver wakes then rather than at its next tick).
    pub fn busy_until(&self) -> Option<Instant> {
        self.busy.values().flat_map(HashMap::values).min().copied()
    }

    /// `parent` sent a piece that does not match its hash: it is excluded from this
    /// download. Returns the parent's id for the bad-parent report.
    pub fn on_bad_piece(&mut self, index: u32, parent: &str) -> String {
        self.finish(index, parent);
        self.excluded.insert(parent.to_owned());
        parent.to_owned()
    }

    fn finish(&mut self, index: u32, parent: &str) {
        if self
            .in_flight
            .get(&index)
            .is_some_and(|f| f.parent == parent)
        {
            self.in_flight.remove(&index);
        }
    }

    /// Requests that have waited past the timeout: given up (so the piece can be asked
    /// elsewhere) and their parents avoided for a while.
    pub fn timed_out(&mut self, now: Instant) -> Vec<(u32, String)> {
        let limit = self.config.request_timeout;
        let mut out: Vec<(u32, String)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.started) >= limit)
            .map(|(i, f)| (*i, f.parent.clone()))
            .collect();
        out.sort();
        for (i, p) in &out {
            self.in_flight.remove(i);
            self.failed_at.entry(*i).or_default().insert(p.clone());
            self.avoided.insert(p.clone(), now + self.config.avoid_for);
        }
        out
    }

    /// The order in which missing pieces are considered: the reader's next piece first
    /// (the reader never waits for a piece a parent holds while others are asked for),
    /// then the rest of the window ahead of the reader rarest first (held by the fewest
    /// parents; ties in order), then the pieces after the window in order, then the
    /// ones behind the reader. Also returns how many of the window's pieces a parent
    /// could serve now (not excluded; busy or avoided ones count).
    ///
    /// Rarest first spreads the newest pieces: every child streaming in order would
    /// otherwise ask for the oldest piece it lacks, which the peers ahead of it hold,
    /// and only the child furthest ahead would ever ask the back-to-source peer for a
    /// new piece, so that one child received every piece from it and had to pass each
    /// on to all the others (measured in the simulator: `docs/benchmarks.md`).
    fn request_order(&self, reader: u32, n: u32, rng: &mut impl Rng) -> (Vec<u32>, usize) {
        let wanted = |i: &u32| {
            !self.have.contains(*i)
                && !self.in_flight.contains_key(i)
                && self.hashes[*i as usize].is_some()
        };
        let window_end = reader.saturating_add(self.config.window).min(n);
        let mut order: Vec<u32> = Vec::with_capacity(n as usize);
        let mut window: Vec<(usize, u32, u32)> = Vec::new();
        let mut first = true;
        let mut available = 0;
        for i in (reader..window_end).filter(wanted) {
            let rarity = self
                .parents
                .iter()
                .filter(|p| p.holds(i) && !self.excluded.contains(&p.r.id))
                .count();
            if rarity > 0 {
                available += 1;
            }
            if first {
                order.push(i);
                first = false;
                continue;
            }
            window.push((rarity, rng.random(), i));
        }
        // Pieces no parent holds sort last (the caller skips them anyway); equally
        // rare pieces in random order, so that children seeing the same parents do
        // not all ask for the same piece (a parent sends a piece to one child at a
        // time and answers the others BUSY).
        window.sort_unstable_by_key(|&(rarity, tie, _)| (rarity == 0, rarity, tie));
        order.extend(window.into_iter().map(|(_, _, i)| i));
        if !self.confined {
            order.extend((window_end..n).chain(0..reader).filter(wanted));
        }
        (order, available)
    }

    /// From now on only the `window` pieces ahead of the reader are asked for: the
    /// store cannot take pieces, so every piece fetched ahead of the reader waits in
    /// memory until it reads it (and pieces behind it are not needed any more).
    pub fn confine_to_window(&mut self, window: u32) {
        self.config.window = self.config.window.min(window);
        self.confined = true;
    }

    /// The next requests to send, recorded as in flight from `now`.
    pub fn next_requests(&mut self, now: Instant, rng: &mut impl Rng) -> Vec<(u32, ParentRef)> {
        self.avoided.retain(|_, until| *until > now);
        self.busy.retain(|_, pieces| {
            pieces.retain(|_, until| *until > now);
            !pieces.is_empty()
        });
        let Some(shape) = self.shape else {
            return Vec::new();
        };
        let n = shape.piece_count();
        let mut out = Vec::new();
        let mut load: HashMap<&str, usize> = HashMap::new();
        for f in self.in_flight.values() {
            *load.entry(f.parent.as_str()).or_default() += 1;
        }
        let mut in_flight = self.in_flight.len();
        let reader = self.reader.min(n);
        let (order, available) = self.request_order(reader, n, rng);
        // A parent that held the whole blob from the start (a cache, a preheated
        // node) can serve everything that is missing: no frontier then.
        let cache = self
            .parents
            .iter()
            .any(|p| p.pieces.is_none() && !p.just_completed);
        let cap = if !cache && available + in_flight < self.config.frontier_pieces {
            self.config
                .max_in_flight
                .min(self.config.max_in_flight_at_frontier)
        } else {
            self.config.max_in_flight
        };
        for index in order {
            if in_flight >= cap {
                break;
            }
            if self.have.contains(index)
                || self.in_flight.contains_key(&index)
                || self.hashes[index as usize].is_none()
            {
                continue;
            }
            let failed = self.failed_at.get(&index);
            let holders: Vec<&Parent> = self
                .parents
                .iter()
                .filter(|p| {
                    p.holds(index)
                        && !self.excluded.contains(&p.r.id)
                        && !self.avoided.contains_key(&p.r.id)
                })
                .collect();
            // The most advanced holders still downloading (the back-to-source peer
            // above all) are kept for the pieces only they have: asked for this one
            // only when no less advanced holder has it, even if those are busy for
            // now. A complete holder has nothing left to fetch and is used freely,
            // unless it completed during this download: then it is the source that
            // just finished (or a peer as far along), every other child wants it
            // too, and the last pieces only it has would queue behind pieces the
            // others could have served (docs/benchmarks.md, "the endgame").
            let most = holders.iter().map(|p| p.held(n)).max().unwrap_or(0);
            let kept = |p: &Parent| p.held(n) == most && (most < n || p.just_completed);
            let reserve = holders.iter().any(|p| p.held(n) < most);
            let usable: Vec<&Parent> = holders
                .into_iter()
                .filter(|p| {
                    let reserved = reserve && kept(p);
                    !reserved
                        && !self
                            .busy
                            .get(p.r.id.as_str())
                            .is_some_and(|b| b.contains_key(&index))
                        && load.get(p.r.id.as_str()).copied().unwrap_or(0)
                            < if p.pieces.is_some() {
                                self.config.max_per_downloading_parent
                            } else {
                                self.config.max_per_parent
                            }
                })
                .collect();
            // Prefer parents this piece has not failed at; fall back to them.
            let fresh: Vec<&Parent> = usable
                .iter()
                .copied()
                .filter(|p| failed.is_none_or(|f| !f.contains(&p.r.id)))
                .collect();
            let pool = if fresh.is_empty() { usable } else { fresh };
            // The least advanced holder first: the peers furthest ahead (the
            // back-to-source peer above all) are the only ones that can serve the
            // newest pieces, so their uplink is kept for those.
            let key = |p: &Parent| (p.held(n), load.get(p.r.id.as_str()).copied().unwrap_or(0));
            let Some(min) = pool.iter().map(|p| key(p)).min() else {
                continue;
            };
            let best: Vec<&Parent> = pool.into_iter().filter(|p| key(p) == min).collect();
            let chosen = best[rng.random_range(0..best.len())];
            *load.entry(chosen.r.id.as_str()).or_default() += 1;
            in_flight += 1;
            out.push((index, chosen.r.clone()));
        }
        for (index, parent) in &out {
            self.in_flight.insert(
                *index,
                InFlight {
                    parent: parent.id.clone(),
                    started: now,
                },
            );
        }
        if self.in_flight.is_empty() && !self.is_complete() {
            self.starved_since.get_or_insert(now);
        } else {
            self.starved_since = None;
        }
        out
    }

    /// True when the missing pieces should come from upstream: no parent could serve
    /// for `starve_timeout` while the plan did not change, or a fetch failed in a way
    /// no parent can fix. The caller asks only while no upstream stream runs: a
    /// back-to-source peer that took over from a slower one fetches the pieces before
    /// its start from parents, and from upstream too when those starve.
    pub fn wants_upstream(&self, now: Instant) -> bool {
        if self.is_complete() {
            return false;
        }
        self.broken
            || self
                .starved_since
                .is_some_and(|s| now.saturating_duration_since(s) >= self.config.starve_timeout)
    }

    /// The task's shape, once known.
    pub fn shape(&self) -> Option<TaskShape> {
        self.shape
    }

    /// The hash of piece `index`, when known.
    pub fn hash(&self, index: u32) -> Option<[u8; 32]> {
        self.hashes.get(index as usize).copied().flatten()
    }

    /// True when the latest plan tells this peer to fetch from upstream.
    pub fn back_to_source(&self) -> bool {
        self.back_to_source
    }

    /// Pieces held.
    pub fn have(&self) -> &PieceSet {
        &self.have
    }

    /// True once the shape is known and every piece is held.
    pub fn is_complete(&self) -> bool {
        self.shape.is_some() && self.have.is_full()
    }

    /// Requests in flight: (piece, parent id).
    pub fn in_flight(&self) -> Vec<(u32, String)> {
        let mut v: Vec<_> = self
            .in_flight
            .iter()
            .map(|(i, f)| (*i, f.parent.clone()))
            .collect();
        v.sort();
        v
    }

    /// True when `parent` sent a bad piece and is no longer asked.
    pub fn is_excluded(&self, parent: &str) -> bool {
        self.excluded.contains(parent)
    }
}

#[cfg(test)]
mod tests;
