//! Back-to-source elections: who fetches a task from upstream. A task gets one
//! (up to `max_back_to_source`) while some piece is held by no peer and someone
//! downloads it; a source that stalls is replaced; a download that re-opens its
//! plan while streaming from upstream (its replica left) is counted as one; and a
//! task that reaches a replica through re-opened plans elects nobody for the
//! resume grace, so that its old source can come back first. The fastest
//! downloader (by declared link rate) is preferred, and a task's first election
//! waits a little for one as fast as the fastest joined peer.

use std::cmp::Reverse;
use std::time::Instant;

use rand::seq::IteratorRandom;
use shoal_proto::Digest;

use super::{PeerId, Scheduler};

/// A source hands over to a faster downloader only while at least this many of
/// the task's pieces are left to fetch from upstream: for the last few, the
/// start of a second upstream download and the old source's overlap cost more
/// than the faster link saves.
pub const HAND_OVER_MIN_PIECES: u32 = 8;

impl Scheduler {
    /// Counts `id`, which re-opened its plan while streaming the task from
    /// upstream, as a back-to-source peer, while the task has fewer than the limit
    /// and has not found `id` bad. Its hashes are believed as an elected source's
    /// are (and verified against the digest the same way). Ends a resume grace.
    pub(crate) fn resume_source(&mut self, now: Instant, digest: &Digest, id: &PeerId) {
        let limit = self.config.max_back_to_source;
        let Some(task) = self.tasks.get_mut(digest) else {
            return;
        };
        if task.back_to_source.len() >= limit
            || task.back_to_source.contains_key(id)
            || task.bad.contains(id)
        {
            return;
        }
        task.back_to_source.insert(id.clone(), now);
        task.sources.insert(id.clone());
        task.elect_after = None;
        task.dirty = true;
        if let Some(d) = task.downloads.get_mut(id) {
            d.rerank = true;
        }
        self.stats.sources_resumed += 1;
    }

    /// Holds the back-to-source elections whose resume grace ended (see
    /// [`PlanOpening`](shoal_proto::PlanOpening)) or whose wait for a faster
    /// downloader ended.
    pub(crate) fn elect_deferred(&mut self, now: Instant) {
        let mut due: Vec<Digest> = Vec::new();
        for (digest, task) in self.tasks.iter_mut() {
            if task.elect_after.is_some_and(|t| t <= now) {
                task.elect_after = None;
                due.push(*digest);
            } else if task.never_had_a_source()
                && task.faster_wait_until.is_some_and(|t| t <= now)
                && task.back_to_source.is_empty()
                && !task.downloads.is_empty()
            {
                due.push(*digest);
            }
        }
        due.sort();
        for digest in due {
            self.ensure_back_to_source(now, &digest);
        }
    }

    /// Elects back-to-source peers while the task has fewer than the limit,
    /// some piece is held by no peer, and someone is downloading it. Not during a
    /// resume grace (see [`PlanOpening`](shoal_proto::PlanOpening)), and a task's
    /// first election waits up to [`CoreConfig::faster_source_wait`] for a
    /// downloader as fast as the fastest joined peer.
    ///
    /// [`CoreConfig::faster_source_wait`]: super::CoreConfig::faster_source_wait
    pub(crate) fn ensure_back_to_source(&mut self, now: Instant, digest: &Digest) {
        let limit = self.config.max_back_to_source;
        let fastest = self.link_rates.fastest();
        let Some(task) = self.tasks.get_mut(digest) else {
            return;
        };
        if task.elect_after.is_some_and(|t| now < t) {
            return;
        }
        let (peers, config) = (&self.peers, &self.config);
        let offerable = |id: &PeerId| peers.get(id).is_some_and(|p| !p.quarantined(config));
        let rate = |id: &PeerId| peers.get(id).map_or(0, |p| p.info.link_mbps);
        while task.back_to_source.len() < limit && !task.swarm_holds_everything(offerable) {
            // Sorted, so that a seed gives the same choice on every run.
            let mut candidates: Vec<&PeerId> = task
                .downloads
                .keys()
                .filter(|id| {
                    !task.back_to_source.contains_key(*id)
                        && !task.bad.contains(*id)
                        && self.peers.contains_key(*id)
                })
                .collect();
            candidates.sort();
            let candidates = candidates.into_iter();
            // Prefer peers that did not stall on this task (and are not
            // quarantined), then the fastest links (the swarm receives at
            // most at its source's rate), then those holding the most pieces
            // (they fetch least from upstream), then random.
            type Key = (bool, Reverse<u32>, Reverse<u32>);
            let best = candidates
                .map(|id| {
                    // A quarantined peer serves nobody: last resort too.
                    let stalled = task.stalled.contains(id) || !offerable(id);
                    let held = task.holdings.get(id).map_or(0, |h| h.pieces.count());
                    ((stalled, Reverse(rate(id)), Reverse(held)), id)
                })
                .fold(None::<(Key, Vec<&PeerId>)>, |acc, (key, id)| match acc {
                    Some((k, mut ids)) if k == key => {
                        ids.push(id);
                        Some((k, ids))
                    }
                    Some((k, ids)) if k < key => Some((k, ids)),
                    _ => Some((key, vec![id])),
                });
            let Some(((_, Reverse(best_rate), _), ids)) = best else {
                break;
            };
            // The first election waits a little for a faster downloader: in a
            // rollout the first plan opened is often not the fastest node's.
            if task.never_had_a_source() && best_rate > 0 && best_rate < fastest {
                let until = match task.faster_wait_until {
                    Some(until) => until,
                    None => {
                        // The first time it has to: counted once per task.
                        let until = now + config.faster_source_wait;
                        task.faster_wait_until = Some(until);
                        if now < until {
                            self.stats.elections_waited_for_faster += 1;
                        }
                        until
                    }
                };
                if now < until {
                    break;
                }
            }
            let chosen = ids
                .into_iter()
                .choose(&mut self.rng)
                .expect("non-empty")
                .clone();
            task.back_to_source.insert(chosen.clone(), now);
            task.sources.insert(chosen.clone());
            task.elections += 1;
            task.dirty = true;
            if let Some(d) = task.downloads.get_mut(&chosen) {
                d.rerank = true;
                d.upstream_from_piece = 0;
            }
            self.stats.back_to_source_elections += 1;
        }
    }

    /// Hands the rest of a task over from a back-to-source peer to a downloader
    /// at least [`CoreConfig::hand_over_ratio`] times as fast (by declared link
    /// rate), while at least [`HAND_OVER_MIN_PIECES`] pieces are left: the new
    /// source fetches from upstream from the first piece the old one lacks (the
    /// pieces before it from parents); the old one is told to stop its upstream
    /// download. Peers of unknown rate neither hand over nor take over.
    ///
    /// [`CoreConfig::hand_over_ratio`]: super::CoreConfig::hand_over_ratio
    pub(crate) fn hand_over_to_faster(&mut self, now: Instant) {
        let ratio = self.config.hand_over_ratio;
        let fastest = f64::from(self.link_rates.fastest());
        if ratio <= 0.0 || fastest <= 0.0 {
            return;
        }
        let (peers, config) = (&self.peers, &self.config);
        let offerable = |id: &PeerId| peers.get(id).is_some_and(|p| !p.quarantined(config));
        let rate = |id: &PeerId| peers.get(id).map_or(0, |p| p.info.link_mbps);
        let mut handed = 0;
        for task in self.tasks.values_mut() {
            let Some(shape) = task.shape else {
                continue;
            };
            // The slowest source that some peer in the cluster is fast enough
            // to take over from.
            let Some((old_rate, old)) = task
                .back_to_source
                .keys()
                .map(|id| (rate(id), id))
                .filter(|&(r, _)| r > 0 && f64::from(r) * ratio <= fastest)
                .min()
            else {
                continue;
            };
            let old = old.clone();
            // The fastest candidate; among equals the smallest id (a seed
            // gives the same choice on every run).
            let Some((_, Reverse(new))) = task
                .downloads
                .keys()
                .filter(|id| {
                    !task.back_to_source.contains_key(*id)
                        && !task.bad.contains(*id)
                        && !task.stalled.contains(*id)
                        && offerable(id)
                        && task.holdings.get(*id).is_none_or(|h| !h.complete)
                })
                .map(|id| (rate(id), Reverse(id)))
                .filter(|&(r, _)| f64::from(r) >= ratio * f64::from(old_rate))
                .max()
            else {
                continue;
            };
            let new = new.clone();
            // Where the old source is: the first piece it lacks from where it
            // started fetching from upstream (scanned only with a candidate).
            let start = task
                .downloads
                .get(&old)
                .map_or(0, |d| d.upstream_from_piece);
            let Some(from) = task
                .holdings
                .get(&old)
                .filter(|h| !h.complete)
                .and_then(|h| h.pieces.missing_from(start))
            else {
                continue;
            };
            if shape.piece_count() - from < HAND_OVER_MIN_PIECES {
                continue;
            }
            task.back_to_source.remove(&old);
            if let Some(d) = task.downloads.get_mut(&old) {
                d.hand_over_pending = true;
                d.rerank = true;
            }
            task.back_to_source.insert(new.clone(), now);
            task.sources.insert(new.clone());
            task.elections += 1;
            if let Some(d) = task.downloads.get_mut(&new) {
                d.upstream_from_piece = from;
                d.rerank = true;
            }
            task.dirty = true;
            handed += 1;
        }
        self.stats.sources_handed_over += handed;
    }

    /// Replaces back-to-source peers that made no progress for too long.
    pub(crate) fn replace_stalled_sources(&mut self, now: Instant) {
        let stall = self.config.back_to_source_stall;
        let mut touched = Vec::new();
        for (digest, task) in self.tasks.iter_mut() {
            let stalled: Vec<PeerId> = task
                .back_to_source
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= stall)
                .map(|(id, _)| id.clone())
                .collect();
            for id in stalled {
                task.back_to_source.remove(&id);
                task.stalled.insert(id.clone());
                if let Some(d) = task.downloads.get_mut(&id) {
                    d.rerank = true;
                }
                task.dirty = true;
                touched.push(*digest);
            }
        }
        touched.sort();
        for digest in touched {
            self.stats.back_to_source_stalls += 1;
            self.ensure_back_to_source(now, &digest);
        }
    }
}

#[cfg(test)]
mod tests;
