//! Plan streams: opening and closing them, and flushing plan updates (the
//! back-to-source elections they trigger are in `election.rs`).
//!
//! Updates are coalesced: inputs mark tasks dirty, [`Scheduler::flush`] turns
//! the changes into at most one update per plan stream. A download is
//! re-ranked when its parents changed (departure, bad report, completion) or
//! when it is starved (no parent holds the piece it needs next); otherwise it
//! only gets its parents' grown bitmaps.

use std::time::Instant;

use shoal_proto::{Digest, TaskShape};

use super::rank::RankCache;
use super::{
    CoreError, Download, Effect, Holding, ParentOffer, PeerId, PlanId, PlanUpdate, Scheduler, Task,
};

pub use shoal_proto::PlanOpening;

/// A flush in progress (see [`Scheduler::begin_flush`]): the tasks still to flush and
/// the downloads of the one being flushed.
#[derive(Debug)]
pub struct FlushCursor {
    tasks: Vec<Digest>,
    current: Option<(Digest, Vec<PeerId>)>,
}

impl Scheduler {
    /// A peer wants a task: opens a plan stream. The first update is queued
    /// at once. `size` is 0 when the peer does not know it.
    pub fn open_plan(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
        size: u64,
    ) -> Result<PlanId, CoreError> {
        self.open_plan_with(now, id, digest, size, PlanOpening::default())
    }

    /// [`Scheduler::open_plan`], saying how the download comes: one that re-opens a
    /// lost plan while streaming from upstream is counted as a back-to-source peer
    /// (while the task has fewer than the limit), and a task that first reaches
    /// this replica through a re-opened plan elects nobody for
    /// [`CoreConfig::resume_grace`](super::CoreConfig::resume_grace), unless such
    /// a peer comes first.
    pub fn open_plan_with(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
        size: u64,
        opening: PlanOpening,
    ) -> Result<PlanId, CoreError> {
        self.live_peer(id)?;
        let shape = match size {
            0 => None,
            s => Some(
                TaskShape::for_size(s)
                    .map_err(|e| CoreError::invalid(format!("task {digest}: {e}")))?,
            ),
        };
        if let (Some(task), Some(shape)) = (self.tasks.get(&digest), shape)
            && let Some(known) = task.shape
            && known.size() != shape.size()
        {
            return Err(CoreError::invalid(format!(
                "task {digest} requested with size {}, the swarm knows it as {} bytes",
                shape.size(),
                known.size()
            )));
        }
        self.check_task_caps(id, [digest])?;
        self.touch(now, id)?;
        let plan = PlanId(self.next_plan);
        self.next_plan += 1;
        let task = self
            .tasks
            .entry(digest)
            .or_insert_with(|| Task::new(now, self.bad_memory.recall(now, &digest)));
        if task.shape.is_none()
            && let Some(shape) = shape
        {
            task.set_shape(shape);
        }
        if opening.resumed
            && task.downloads.is_empty()
            && task.back_to_source.is_empty()
            && !task.bad.contains(id)
        {
            // Nobody here runs the task: its downloads are moving over from a
            // replica that left. Wait for the one streaming from upstream (not
            // for a peer bad for the task: it will not be counted as its source).
            task.elect_after = Some(now + self.config.resume_grace);
            self.stats.elections_deferred += 1;
        }
        let empty = task.empty_set();
        task.holdings
            .entry(id.clone())
            .or_insert_with(|| Holding::new(empty.clone(), false));
        let old = task.downloads.insert(
            id.clone(),
            Download {
                plan,
                parents: Vec::new(),
                sent_counts: Vec::new(),
                hashes_sent: empty,
                shape_sent: false,
                back_to_source_sent: false,
                upstream_from_piece: 0,
                hand_over_pending: false,
                fresh: true,
                rerank: true,
                ranked_epoch: 0,
                rank_mark: None,
            },
        );
        task.dirty = true;
        if let Some(old) = old {
            self.release_parents(&old.parents);
            self.plans.remove(&old.plan);
            self.effects.push(Effect::ClosePlan {
                plan: old.plan,
                reason: "superseded by a newer plan for the same task",
            });
        }
        self.plans.insert(plan, (id.clone(), digest));
        if let Some(p) = self.peers.get_mut(id) {
            p.tasks.insert(digest);
        }
        if opening.from_upstream {
            self.resume_source(now, &digest, id);
        }
        self.ensure_back_to_source(now, &digest);
        self.first_update(&digest, id);
        Ok(plan)
    }

    /// Queues a new download's first update at once. The task's other downloads
    /// get theirs at the next flush (the task is dirty), and the ranking is shared
    /// with the other plans opened for this task until then: a rollout's burst of
    /// plans for one task costs one ranking pass per flush, not a pass over every
    /// download per plan.
    fn first_update(&mut self, digest: &Digest, child: &PeerId) {
        let Some(epoch) = self.tasks.get(digest).map(|t| t.holder_epoch) else {
            return;
        };
        let mut cache = self
            .burst_ranks
            .remove(digest)
            .filter(|(built, _)| *built == epoch)
            .map(|(_, cache)| cache);
        self.update_download(digest, child, &mut cache);
        if let Some(cache) = cache {
            self.burst_ranks.insert(*digest, (epoch, cache));
        }
    }

    /// A plan stream ended (the download finished or was cancelled). What the
    /// peer holds stays offered.
    pub fn close_plan(&mut self, now: Instant, plan: PlanId) {
        let Some((id, digest)) = self.plans.remove(&plan) else {
            return;
        };
        // Parent slots are freed below: a shared ranking would not see them.
        self.burst_ranks.remove(&digest);
        let Some(task) = self.tasks.get_mut(&digest) else {
            return;
        };
        if task.downloads.get(&id).is_some_and(|d| d.plan == plan) {
            let d = task.downloads.remove(&id).expect("checked");
            let was_source = task.back_to_source.remove(&id).is_some();
            // A cancelled download that got nothing leaves nothing behind: not
            // its holding, and not its place among other downloads' parents
            // (it was offered as one that would have pieces soon).
            if task
                .holdings
                .get(&id)
                .is_some_and(|h| h.pieces.is_empty() && !h.complete)
            {
                task.holdings.remove(&id);
                let released = task.unparent(&id);
                if let Some(p) = self.peers.get_mut(&id) {
                    p.tasks.remove(&digest);
                }
                self.release_slot(&id, released);
            }
            self.release_parents(&d.parents);
            if was_source {
                self.ensure_back_to_source(now, &digest);
            }
        }
        self.forget_if_unused(&digest);
    }

    /// Queues the updates that the changes since the last flush call for.
    pub fn flush(&mut self) {
        let mut cursor = self.begin_flush();
        while self.flush_step(&mut cursor, usize::MAX) {}
    }

    /// Starts a flush that [`Scheduler::flush_step`] carries out in steps, so that the
    /// caller can let go of the core between them: a flush of a task a rollout is
    /// pulling visits every one of its (up to thousands of) downloads, and a plan
    /// opened meanwhile would wait for all of them.
    pub fn begin_flush(&mut self) -> FlushCursor {
        self.burst_ranks.clear();
        let mut dirty: Vec<Digest> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(d, _)| *d)
            .collect();
        // Popped from the end: in digest order.
        dirty.sort_unstable_by(|a, b| b.cmp(a));
        FlushCursor {
            tasks: dirty,
            current: None,
        }
    }

    /// Queues updates for the downloads of one task, at once.
    pub(crate) fn flush_task(&mut self, digest: &Digest) {
        let mut cursor = FlushCursor {
            tasks: vec![*digest],
            current: None,
        };
        while self.flush_step(&mut cursor, usize::MAX) {}
    }

    /// Looks at up to `max` downloads of the flush `cursor` stands for; true while
    /// some are left. A task changed between two steps is flushed again at the next
    /// flush (its dirty mark is set again); a download that ended meanwhile is skipped.
    pub fn flush_step(&mut self, cursor: &mut FlushCursor, max: usize) -> bool {
        let mut left = max.max(1);
        // Built at the first re-ranking of a step, shared by the others of that step
        // (it is only valid while nothing else changes the core).
        let mut cache = None;
        while left > 0 {
            if cursor.current.is_none() {
                let Some(digest) = cursor.tasks.pop() else {
                    break;
                };
                let Some(task) = self.tasks.get_mut(&digest) else {
                    continue;
                };
                task.dirty = false;
                self.burst_ranks.remove(&digest);
                let mut children: Vec<PeerId> = task.downloads.keys().cloned().collect();
                // Popped from the end: in id order.
                children.sort_unstable_by(|a, b| b.cmp(a));
                cursor.current = Some((digest, children));
                cache = None;
            }
            let Some((digest, children)) = cursor.current.as_mut() else {
                break;
            };
            let digest = *digest;
            match children.pop() {
                Some(child) => {
                    self.update_download(&digest, &child, &mut cache);
                    left -= 1;
                }
                None => {
                    cursor.current = None;
                    cache = None;
                }
            }
        }
        !(cursor.tasks.is_empty() && cursor.current.is_none())
    }

    /// Decrements the child count of each parent.
    pub(crate) fn release_parents(&mut self, parents: &[PeerId]) {
        for p in parents {
            self.release_slot(p, 1);
        }
    }

    /// Frees `n` child slots of parent `p`; a parent leaving its cap bumps
    /// the slot epoch so that starved downloads look again.
    ///
    /// The tasks the parent takes part in are marked dirty then: a download
    /// starved because this parent was full may be in any of them, and only
    /// dirty tasks are flushed.
    pub(crate) fn release_slot(&mut self, p: &PeerId, n: u32) {
        let cap = self.config.max_children_per_parent;
        if let Some(peer) = self.peers.get_mut(p) {
            if n > 0 && peer.children >= cap {
                self.slot_epoch += 1;
                for digest in &peer.tasks {
                    if let Some(task) = self.tasks.get_mut(digest) {
                        task.dirty = true;
                    }
                }
            }
            peer.children = peer.children.saturating_sub(n);
        }
    }

    /// What a download waits for now; a starved download is re-ranked only
    /// when this differs from the mark of its last ranking.
    fn starvation_mark(&self, task: &Task, child: &PeerId) -> Option<super::StarvationMark> {
        let next = task.holdings.get(child)?.pieces.first_missing()?;
        let gains = task.piece_gains.get(&next).copied().unwrap_or(0);
        Some((next, gains, task.complete_epoch, self.slot_epoch))
    }

    /// Removes `id` from a task (departure, eviction or bad report), re-plans
    /// its children and re-elects its back-to-source duty.
    pub(crate) fn drop_from_task(&mut self, now: Instant, digest: &Digest, id: &PeerId) {
        // A ranking shared since the last flush may list the peer as a candidate: it
        // must not be offered from there (nor, if the same id joins again before the
        // flush, take a child slot for a task it no longer takes part in).
        self.burst_ranks.remove(digest);
        let Some(task) = self.tasks.get_mut(digest) else {
            return;
        };
        task.holdings.remove(id);
        task.back_to_source.remove(id);
        let own = task.downloads.remove(id);
        let released = task.unparent(id);
        // The peer may stay in the swarm (eviction, bad report): its slots
        // for this task's children are free again.
        self.release_slot(id, released);
        if let Some(d) = own {
            self.plans.remove(&d.plan);
            self.release_parents(&d.parents);
            self.effects.push(Effect::ClosePlan {
                plan: d.plan,
                reason: "the peer left the task",
            });
        }
        if let Some(p) = self.peers.get_mut(id) {
            p.tasks.remove(digest);
        }
        self.ensure_back_to_source(now, digest);
        self.forget_if_unused(digest);
    }

    /// A task nobody holds or wants is forgotten.
    pub(crate) fn forget_if_unused(&mut self, digest: &Digest) {
        if self.tasks.get(digest).is_some_and(|t| {
            t.downloads.is_empty()
                && t.holdings
                    .values()
                    .all(|h| h.pieces.is_empty() && !h.complete)
        }) {
            let task = self.tasks.remove(digest).expect("checked");
            self.burst_ranks.remove(digest);
            for id in task.holdings.keys() {
                if let Some(p) = self.peers.get_mut(id) {
                    p.tasks.remove(digest);
                }
            }
        }
    }

    /// Re-ranks (when needed) and sends one download's plan if it changed.
    fn update_download(&mut self, digest: &Digest, child: &PeerId, cache: &mut Option<RankCache>) {
        // Inconsistent state is skipped, never indexed into (a panic here
        // would poison the core's lock).
        let Some(task) = self.tasks.get(digest) else {
            return;
        };
        let (Some(d), Some(holding)) = (task.downloads.get(child), task.holdings.get(child)) else {
            return;
        };
        let is_source = task.back_to_source.contains_key(child);
        let done = holding.complete || (!holding.pieces.is_empty() && holding.pieces.is_full());
        let starved = !is_source && !done && task.shape.is_some() && {
            let next = holding.pieces.first_missing();
            !d.parents.iter().any(|p| {
                task.holdings
                    .get(p)
                    .is_some_and(|h| h.complete || next.is_some_and(|n| h.pieces.contains(n)))
            })
        };
        // Starved and nothing it waits for changed since its last ranking:
        // ranking again would give the same answer.
        let mark = self.starvation_mark(task, child);
        let starved = starved && d.rank_mark != mark;
        let more_wanted =
            d.parents.len() < self.config.max_parents && d.ranked_epoch != task.holder_epoch;
        // A source taking over from a slower one fetches the pieces before its
        // start from parents; so does one whose pieces have a hole (it took
        // over, then re-opened its plan here after its replica left).
        let streams_all = is_source
            && d.upstream_from_piece == 0
            && holding
                .pieces
                .first_missing()
                .is_none_or(|m| holding.pieces.count() <= m);
        // A source that needs parents and has none yet ranks at every flush
        // of its task (there is one per task).
        let rerank = d.rerank
            || starved
            || more_wanted
            || (is_source && !streams_all && d.parents.is_empty());
        let new_parents = if streams_all || done {
            Vec::new()
        } else if rerank {
            self.stats.plan_decisions += 1;
            cache
                .get_or_insert_with(|| RankCache::new(&self.config, &self.peers, task))
                .rank(
                    &self.config,
                    &self.peers,
                    task,
                    child,
                    &d.parents,
                    &mut self.rng,
                )
        } else {
            d.parents.clone()
        };

        // Release/acquire child slots for the new parent set.
        let old_parents = d.parents.clone();
        for p in old_parents.iter().filter(|p| !new_parents.contains(p)) {
            self.release_slot(p, 1);
        }
        for p in new_parents.iter().filter(|p| !old_parents.contains(p)) {
            if let Some(peer) = self.peers.get_mut(p) {
                if peer.children >= self.config.max_children_per_parent {
                    self.stats.offers_past_cap += 1;
                }
                peer.children += 1;
            }
        }

        let task = self.tasks.get_mut(digest).expect("present");
        let counts: Vec<u32> = new_parents
            .iter()
            .map(|p| task.holdings.get(p).map_or(0, |h| h.pieces.count()))
            .collect();
        let d = task.downloads.get_mut(child).expect("present");
        let mut hashes = Vec::new();
        if let Some(shape) = task.shape {
            if d.hashes_sent.len() != shape.piece_count() {
                d.hashes_sent = shoal_proto::PieceSet::new(shape.piece_count());
            }
            if d.hashes_sent.count() < task.hashes.len() as u32 {
                for (&i, h) in &task.hashes {
                    if d.hashes_sent.insert(i) {
                        hashes.push((i, *h));
                    }
                }
            }
        }
        let changed = d.fresh
            || new_parents != d.parents
            || counts != d.sent_counts
            || !hashes.is_empty()
            || d.back_to_source_sent != is_source
            || d.hand_over_pending
            || (task.shape.is_some() && !d.shape_sent);
        if rerank {
            d.rank_mark = mark;
        }
        d.rerank = false;
        d.ranked_epoch = task.holder_epoch;
        if !changed {
            return;
        }
        d.fresh = false;
        if let Some(h) = task.holdings.get_mut(child) {
            h.offered.extend(new_parents.iter().cloned());
        }
        let d = task.downloads.get_mut(child).expect("present");
        d.parents = new_parents;
        d.sent_counts = counts;
        d.back_to_source_sent = is_source;
        let hand_over = std::mem::take(&mut d.hand_over_pending) && !is_source;
        d.shape_sent = task.shape.is_some();
        let reason = if is_source {
            "fetch from upstream"
        } else if done {
            "task complete"
        } else if d.parents.is_empty() {
            "waiting for parents"
        } else {
            "download from parents"
        };
        let parents = d
            .parents
            .iter()
            .filter_map(|p| {
                let h = task.holdings.get(p)?;
                let info = &self.peers.get(p)?.info;
                Some(ParentOffer {
                    id: p.clone(),
                    addr: info.addr,
                    zone: info.zone.clone(),
                    complete: h.complete,
                    pieces: h.pieces.clone(),
                })
            })
            .collect();
        let update = PlanUpdate {
            shape: task.shape,
            piece_hashes: hashes,
            parents,
            back_to_source: is_source,
            upstream_from_piece: if is_source { d.upstream_from_piece } else { 0 },
            hand_over,
            reason,
        };
        self.stats.plan_updates += 1;
        self.effects.push(Effect::Plan {
            plan: d.plan,
            peer: child.clone(),
            digest: *digest,
            update,
        });
    }
}

#[cfg(test)]
mod tests;
