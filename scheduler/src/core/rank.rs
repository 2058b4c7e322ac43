//! Parent ranking: which peers a downloading peer (the child) should fetch
//! from. A pure function of one task's state, the peer table and an RNG.
//!
//! Order, best first:
//! 1. what the parent holds: the child's next missing piece > a piece in the
//!    window after it > any piece the child lacks > nothing yet (a peer still
//!    downloading, which will have pieces soon);
//! 2. same zone as the child;
//! 3. complete before in-progress;
//! 4. lower upload load (reported uploads ÷ upload slots);
//! 5. random among candidates equal in all of the above, to spread load.
//!
//! Never offered: the child itself, departed or quarantined peers, peers
//! reported bad for this task, parents at their child cap (unless already a
//! parent of this child, or the child is short of parents: then up to
//! [`CHILD_CAP_OVERFLOW`] past it), and anyone when the task's size is unknown.
//!
//! # Cost
//!
//! One flush of a popular task may re-rank hundreds of downloads (every
//! starved download waiting for the piece that just gained a holder, every
//! download short of parents when a new holder appears). Ranking each from
//! scratch visits every holding: O(D · H) for D downloads and H holders.
//! Instead a [`RankCache`] lives for one flush of one task:
//! - built once: the task's candidates with everything about them that does
//!   not depend on the child, sorted (O(H log H));
//! - per (next piece, zone) that a re-ranked download has: the candidates in
//!   rank order, as runs of equal rank (O(H), once per flush);
//! - per download: walk that list from the top and take the first
//!   `max_parents` that are eligible: O(k) plus what it skips. A candidate
//!   found at its child cap is dropped from the list for the rest of the
//!   flush, so every skip of a full parent is paid once per list, not once per
//!   download. Ties (a run) are broken by starting the walk of each run at a
//!   random offset.
//!
//! So a flush costs O(H log H + G · H + D · k) where G is the number of
//! distinct (next piece, zone) among the downloads it re-ranks (at most the
//! task's piece count times the zones).
//!
//! The list of a group is ordered by the first piece at or after `next` a
//! candidate holds, which is exact for a child holding the prefix
//! `0..next` (the common case: readers stream in order). A child that also
//! holds later pieces may find a candidate less useful than its place says
//! (it holds only pieces the child has): such a candidate's rank can only
//! get worse, so it is set aside with its true rank and taken when the walk
//! reaches that rank. The result is the same as sorting every candidate by
//! its true rank.

use std::collections::HashMap;

use rand::Rng;
use shoal_proto::PieceSet;

use super::{CoreConfig, Peer, PeerId, Task};

/// How many children past `max_children_per_parent` a parent may be offered to a
/// download that is short of parents (fewer than half of `max_parents` eligible
/// under the cap). With the default caps a swarm's child slots are exactly as many
/// as its downloads want, so the last downloads ranked in a burst find only the
/// leftovers: in a 1,000-node simulation one download got 2 parents for its whole
/// run and finished at 1.7 × line rate (`docs/benchmarks.md`, "A download short of
/// parents"). A peer fetching the task from upstream is never taken past its cap.
pub const CHILD_CAP_OVERFLOW: u32 = 2;

/// Rank of a candidate for one child, smallest first: (tier, other zone,
/// in progress, load percent). Candidates with equal keys are ties.
type RankKey = (u8, bool, bool, u32);

/// What a flush knows about one candidate parent.
#[derive(Debug)]
struct Candidate {
    id: PeerId,
    complete: bool,
    /// Downloading or fetching from upstream: it will have pieces soon.
    active: bool,
    /// Fetching the task from upstream: never offered past its cap (its uplink is
    /// where new pieces enter the swarm).
    source: bool,
    /// Interned zone.
    zone: u32,
    /// Reported uploads per hundred upload slots.
    load: u32,
    pieces: PieceSet,
}

/// A run of candidates of equal rank, indices into `RankCache::candidates`.
#[derive(Debug)]
struct Run {
    key: RankKey,
    members: Vec<u32>,
}

/// The ranking state of one task for the duration of one flush. See the
/// module docs. Valid only while the task's holdings, the peers' loads and
/// the bad/quarantine marks stay as they were when it was built (a flush
/// changes none of them; child counts are read live).
#[derive(Debug)]
pub(crate) struct RankCache {
    candidates: Vec<Candidate>,
    index: HashMap<PeerId, u32>,
    zones: HashMap<String, u32>,
    piece_count: u32,
    /// Rank-ordered runs per (next piece, child's zone).
    groups: HashMap<(u32, u32), Vec<Run>>,
}

fn load_percent(config: &CoreConfig, peer: &Peer) -> u32 {
    peer.load.active_uploads.saturating_mul(100) / peer.upload_slots(config).max(1)
}

/// The tier of `c` for a child whose pieces are `mine` and whose next missing
/// piece is `next` (`None`: `c` holds nothing the child lacks and is not
/// downloading, so it cannot help).
fn true_tier(c: &Candidate, mine: &PieceSet, next: Option<u32>, window_end: u32) -> Option<u8> {
    if c.complete {
        return Some(0);
    }
    match c.pieces.first_not_in(mine) {
        Some(i) if Some(i) == next => Some(0),
        Some(i) if i < window_end => Some(1),
        Some(_) => Some(2),
        None if c.active => Some(3),
        None => None,
    }
}

impl RankCache {
    /// Collects the candidates of `task`.
    pub(crate) fn new(config: &CoreConfig, peers: &HashMap<PeerId, Peer>, task: &Task) -> Self {
        let piece_count = task.shape.map_or(0, |s| s.piece_count());
        let mut zones: HashMap<String, u32> = HashMap::new();
        let mut keyed: Vec<((bool, u32, u64), Candidate)> = Vec::with_capacity(task.holdings.len());
        for (id, h) in &task.holdings {
            if task.bad.contains(id) {
                continue;
            }
            let Some(peer) = peers.get(id) else { continue };
            if peer.quarantined(config) {
                continue;
            }
            let complete = h.complete || (piece_count > 0 && h.pieces.is_full());
            let active = task.downloads.contains_key(id) || task.back_to_source.contains_key(id);
            if !complete && !active && h.pieces.is_empty() {
                continue;
            }
            let zone = match zones.get(peer.info.zone.as_str()) {
                Some(&z) => z,
                None => {
                    let z = zones.len() as u32;
                    zones.insert(peer.info.zone.clone(), z);
                    z
                }
            };
            let load = load_percent(config, peer);
            keyed.push((
                (!complete, load, peer.id_hash),
                Candidate {
                    id: id.clone(),
                    complete,
                    active,
                    source: task.back_to_source.contains_key(id),
                    zone,
                    load,
                    pieces: h.pieces.clone(),
                },
            ));
        }
        // The order within a run must not depend on the hash maps' iteration
        // order, so that a seed gives the same plans on every run.
        keyed.sort_unstable_by(|(a, ca), (b, cb)| a.cmp(b).then_with(|| ca.id.cmp(&cb.id)));
        let candidates: Vec<Candidate> = keyed.into_iter().map(|(_, c)| c).collect();
        let index = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i as u32))
            .collect();
        RankCache {
            candidates,
            index,
            zones,
            piece_count,
            groups: HashMap::new(),
        }
    }

    /// The rank-ordered runs for children whose next missing piece is `from`
    /// (the piece count when they miss none) in zone `zone`, assuming they
    /// hold exactly `0..from`.
    fn group(&self, from: u32, zone: u32, window: u32) -> Vec<Run> {
        let mut prefix = PieceSet::new(self.piece_count);
        for i in 0..from.min(self.piece_count) {
            prefix.insert(i);
        }
        let next = (from < self.piece_count).then_some(from);
        let window_end = next.map_or(0, |n| n.saturating_add(window));
        // Eight buckets, (tier, other zone) in rank order; the candidates are
        // already sorted by (in progress, load) within each.
        let mut buckets: [Vec<u32>; 8] = Default::default();
        for (i, c) in self.candidates.iter().enumerate() {
            if let Some(tier) = true_tier(c, &prefix, next, window_end) {
                buckets[usize::from(tier) * 2 + usize::from(c.zone != zone)].push(i as u32);
            }
        }
        let mut runs: Vec<Run> = Vec::new();
        for (b, members) in buckets.into_iter().enumerate() {
            let (tier, other_zone) = ((b / 2) as u8, b % 2 == 1);
            for &i in &members {
                let c = &self.candidates[i as usize];
                let key = (tier, other_zone, !c.complete, c.load);
                match runs.last_mut() {
                    Some(run) if run.key == key => run.members.push(i),
                    _ => runs.push(Run {
                        key,
                        members: vec![i],
                    }),
                }
            }
        }
        runs
    }

    /// Ranks candidate parents for `child` (whose parents now are `current`)
    /// and returns the best `config.max_parents`.
    pub(crate) fn rank(
        &mut self,
        config: &CoreConfig,
        peers: &HashMap<PeerId, Peer>,
        task: &Task,
        child: &PeerId,
        current: &[PeerId],
        rng: &mut impl Rng,
    ) -> Vec<PeerId> {
        let k = config.max_parents;
        if task.shape.is_none() || k == 0 {
            return Vec::new();
        }
        let Some(mine) = task.holdings.get(child) else {
            return Vec::new();
        };
        let Some(child_peer) = peers.get(child) else {
            return Vec::new();
        };
        let refused = &mine.refused;
        let mine = &mine.pieces;
        let next = mine.first_missing();
        let from = next.unwrap_or(self.piece_count);
        let window_end = next.map_or(0, |n| n.saturating_add(config.window));
        let zone = self
            .zones
            .get(child_peer.info.zone.as_str())
            .copied()
            .unwrap_or(u32::MAX);
        let key_of = |c: &Candidate, tier: u8| (tier, c.zone != zone, !c.complete, c.load);

        // Set aside, by true rank: current parents (they stay eligible at the
        // cap, so the walk skips them) and candidates whose true rank turned
        // out worse than their place in the list.
        let mut aside: Vec<(RankKey, u32)> = Vec::new();
        let put_aside = |aside: &mut Vec<(RankKey, u32)>, key: RankKey, i: u32| {
            let at = aside.partition_point(|(k2, _)| *k2 <= key);
            aside.insert(at, (key, i));
        };
        for p in current {
            if p == child || refused.contains(p) {
                continue;
            }
            if let Some(&i) = self.index.get(p) {
                let c = &self.candidates[i as usize];
                if let Some(tier) = true_tier(c, mine, next, window_end) {
                    put_aside(&mut aside, key_of(c, tier), i);
                }
            }
        }

        if !self.groups.contains_key(&(from, zone)) {
            let runs = self.group(from, zone, config.window);
            self.groups.insert((from, zone), runs);
        }
        let runs = self.groups.get_mut(&(from, zone)).expect("just built");
        let cap = config.max_children_per_parent;
        let mut picked: Vec<u32> = Vec::with_capacity(k);
        let take_aside_below =
            |picked: &mut Vec<u32>, aside: &mut Vec<(RankKey, u32)>, below: Option<RankKey>| {
                let n = aside
                    .iter()
                    .take_while(|(key, _)| below.is_none_or(|b| *key < b))
                    .count()
                    .min(k - picked.len());
                picked.extend(aside.drain(..n).map(|(_, i)| i));
            };
        for run in runs.iter_mut() {
            take_aside_below(&mut picked, &mut aside, Some(run.key));
            if picked.len() >= k {
                break;
            }
            let r = run.members.len();
            if r == 0 {
                continue;
            }
            let offset = if r > 1 { rng.random_range(0..r) } else { 0 };
            let mut full = Vec::new();
            for j in 0..r {
                let pos = (offset + j) % r;
                let i = run.members[pos];
                let c = &self.candidates[i as usize];
                if &c.id == child || current.contains(&c.id) || refused.contains(&c.id) {
                    continue;
                }
                if peers.get(&c.id).is_none_or(|p| p.children >= cap) {
                    full.push(pos);
                    continue;
                }
                match true_tier(c, mine, next, window_end) {
                    None => {}
                    Some(tier) if tier == run.key.0 => {
                        picked.push(i);
                        if picked.len() >= k {
                            break;
                        }
                    }
                    Some(tier) => put_aside(&mut aside, key_of(c, tier), i),
                }
            }
            // Full now, and no later download of this flush can use them
            // (unless a slot frees during the flush; the slot epoch then
            // re-ranks starved downloads at the next flush).
            full.sort_unstable_by(|a, b| b.cmp(a));
            for pos in full {
                run.members.swap_remove(pos);
            }
            if picked.len() >= k {
                break;
            }
        }
        if picked.len() < k {
            take_aside_below(&mut picked, &mut aside, None);
        }
        if picked.len() < k.div_ceil(2) {
            let true_key = |c: &Candidate| {
                if &c.id == child || refused.contains(&c.id) {
                    return None;
                }
                Some(key_of(c, true_tier(c, mine, next, window_end)?))
            };
            self.past_the_cap(config, peers, current, &mut picked, true_key);
        }
        picked
            .into_iter()
            .map(|i| self.candidates[i as usize].id.clone())
            .collect()
    }

    /// Fills `picked` up to `max_parents` for a child short of parents (fewer than
    /// half of them eligible under the cap) from candidates up to
    /// [`CHILD_CAP_OVERFLOW`] past their child cap, best true rank first
    /// (`true_key`: `None` for a candidate the child cannot use), the task's
    /// back-to-source peers excepted. O(H), for the few downloads this happens to.
    fn past_the_cap(
        &self,
        config: &CoreConfig,
        peers: &HashMap<PeerId, Peer>,
        current: &[PeerId],
        picked: &mut Vec<u32>,
        true_key: impl Fn(&Candidate) -> Option<RankKey>,
    ) {
        let limit = config
            .max_children_per_parent
            .saturating_add(CHILD_CAP_OVERFLOW);
        let mut over: Vec<(RankKey, u32)> = self
            .candidates
            .iter()
            .zip(0u32..)
            .filter(|(c, i)| {
                !c.source
                    && !current.contains(&c.id)
                    && !picked.contains(i)
                    && peers.get(&c.id).is_some_and(|p| p.children < limit)
            })
            .filter_map(|(c, i)| Some((true_key(c)?, i)))
            .collect();
        over.sort_unstable();
        let room = config.max_parents.saturating_sub(picked.len());
        picked.extend(over.into_iter().take(room).map(|(_, i)| i));
    }
}

#[cfg(test)]
mod tests;
