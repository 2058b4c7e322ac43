//! What peers report on their session: sizes learnt from upstream, verified
//! pieces, completions, evictions and bad parents.
//!
//! Each report is checked whole before it changes anything: a batch with one
//! bad piece index changes nothing.

use std::time::Instant;

use shoal_proto::{Digest, PieceSet, TaskShape};

use super::{CoreError, ErrorKind, Ignored, PeerId, PieceDone, Scheduler, Task};

impl Scheduler {
    /// The back-to-source peer learnt the task's size from upstream.
    pub fn task_started(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
        size: u64,
    ) -> Result<(), CoreError> {
        self.live_peer(id)?;
        let shape = TaskShape::for_size(size)
            .map_err(|e| CoreError::invalid(format!("task {digest}: {e}")))?;
        let task = self.task_of(id, &digest)?;
        if !task.sources.contains(id) {
            return Err(CoreError::new(
                ErrorKind::PermissionDenied,
                format!("peer {id} was not told to fetch task {digest} from upstream"),
            ));
        }
        match task.shape {
            Some(known) if known.size() != size => Err(CoreError::precondition(format!(
                "upstream size {size} of task {digest} differs from the {} bytes the swarm knows",
                known.size()
            ))),
            Some(_) => self.touch(now, id),
            None => {
                let task = self.tasks.get_mut(&digest).expect("checked");
                task.set_shape(shape);
                if let Some(since) = task.back_to_source.get_mut(id) {
                    *since = now;
                }
                self.touch(now, id)
            }
        }
    }

    /// Pieces a peer verified and stored. A piece carries its hash when the
    /// peer fetched it from upstream; otherwise the scheduler must already
    /// know the hash (the peer verified against it).
    ///
    /// Hashes are believed only from a peer elected to fetch the task from
    /// upstream (the task's `sources`). A hash from any other peer is not an
    /// error: a piece whose hash agrees with the known one counts as verified
    /// against it, any other such piece is left out, and the report answers
    /// [`Ignored::HashesNotElected`].
    pub fn report_pieces(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
        pieces: &[PieceDone],
    ) -> Result<Option<Ignored>, CoreError> {
        self.live_peer(id)?;
        let task = self.task_of(id, &digest)?;
        if task.bad.contains(id) {
            return self.ignore_bad_reporter(now, id);
        }
        let Some(shape) = task.shape else {
            return Err(CoreError::precondition(format!(
                "task {digest} has no known size yet; the back-to-source peer sends TaskStarted first"
            )));
        };
        let elected = task.sources.contains(id);
        // (index, hash to learn, fetched from upstream) of each piece believed.
        let mut accepted: Vec<(u32, Option<[u8; 32]>, bool)> = Vec::with_capacity(pieces.len());
        let mut ignored = false;
        for p in pieces {
            shape
                .check_index(p.index)
                .map_err(|e| CoreError::invalid(format!("task {digest}: {e}")))?;
            let known = task.hashes.get(&p.index).copied();
            match (p.hash, known) {
                (Some(h), k) if !elected => {
                    if k == Some(h) {
                        accepted.push((p.index, None, true));
                    } else {
                        ignored = true;
                    }
                }
                (Some(h), Some(k)) if h != k => {
                    return Err(CoreError::precondition(format!(
                        "piece {} of {digest}: reported hash differs from the known one (upstream content changed?)",
                        p.index
                    )));
                }
                (None, None) => {
                    return Err(CoreError::precondition(format!(
                        "piece {} of {digest} reported without a hash, but no hash is known to verify it against",
                        p.index
                    )));
                }
                (hash, _) => accepted.push((p.index, hash, hash.is_some())),
            }
        }
        let task = self.tasks.get_mut(&digest).expect("checked");
        let holding = task.holdings.get_mut(id).expect("checked by task_of");
        let was_empty = holding.pieces.is_empty();
        let mut grew = false;
        for (index, hash, from_upstream) in accepted {
            if holding.pieces.insert(index) {
                grew = true;
                *task.piece_gains.entry(index).or_default() += 1;
                if from_upstream {
                    task.upstream_bytes += u64::from(shape.piece_len(index).unwrap_or(0));
                }
            }
            if let Some(h) = hash
                && !task.hashes.contains_key(&index)
            {
                task.hashes.insert(index, h);
                task.hash_reporters.insert(id.clone());
            }
        }
        if was_empty && grew {
            task.holder_epoch += 1;
        }
        if grew {
            task.dirty = true;
            if let Some(since) = task.back_to_source.get_mut(id) {
                *since = now;
            }
        }
        self.stats.pieces_reported += pieces.len() as u64;
        if ignored {
            self.stats.hashes_ignored += 1;
        }
        self.touch(now, id)?;
        Ok(ignored.then_some(Ignored::HashesNotElected))
    }

    /// The peer holds the whole task, verified against its digest. Its
    /// back-to-source duty (if any) ends and its parents are released.
    ///
    /// A completion from a peer that reported none of the task's hashes
    /// confirms them: the blob they describe matched its digest. One from a
    /// peer bad for the task is answered [`Ignored::ReporterBadForTask`].
    pub fn task_complete(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
    ) -> Result<Option<Ignored>, CoreError> {
        self.live_peer(id)?;
        let task = self.task_of(id, &digest)?;
        if task.bad.contains(id) {
            return self.ignore_bad_reporter(now, id);
        }
        let Some(shape) = task.shape else {
            return Err(CoreError::precondition(format!(
                "task {digest} has no known size; it cannot be complete"
            )));
        };
        if task.known_hashes() < shape.piece_count() && !task.sources.contains(id) {
            return Err(CoreError::precondition(format!(
                "task {digest} cannot be complete on peer {id}: not every piece hash is known yet"
            )));
        }
        let task = self.tasks.get_mut(&digest).expect("checked");
        if !task.hash_reporters.contains(id) && task.known_hashes() == shape.piece_count() {
            task.hashes_confirmed = true;
        }
        let holding = task.holdings.get_mut(id).expect("checked");
        if !holding.complete {
            holding.complete = true;
            holding.pieces = PieceSet::full(shape.piece_count());
            task.holder_epoch += 1;
            task.complete_epoch += 1;
            self.stats.completions += 1;
        }
        task.back_to_source.remove(id);
        task.dirty = true;
        let parents = task
            .downloads
            .get_mut(id)
            .map(|d| std::mem::take(&mut d.parents));
        if let Some(d) = task.downloads.get_mut(id) {
            d.sent_counts.clear();
        }
        if let Some(parents) = parents {
            self.release_parents(&parents);
        }
        self.touch(now, id)?;
        Ok(None)
    }

    /// The peer assembled the task from pieces that matched the scheduler's
    /// hashes, and the whole blob failed its digest: the hashes are wrong.
    ///
    /// While the hashes are provisional they are discarded: the peers that
    /// reported them are treated as bad for the task (dropped from it), every
    /// download's plan is closed (its pieces were checked against wrong
    /// hashes; the peer opens a new plan), holders that are not complete
    /// lose their pieces, and back-to-source is elected afresh. Once a peer
    /// that reported none of them has completed the task, the hashes are
    /// confirmed and the report is answered with
    /// [`Ignored::MismatchAfterConfirmed`]. A peer that reported the hashes
    /// itself (the source whose upstream sent wrong bytes) retracts them this
    /// way: they are discarded the same, and it leaves the task without being
    /// counted bad for it.
    ///
    /// On the wire: the session event `DigestMismatch`.
    pub fn digest_mismatch(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
    ) -> Result<Option<Ignored>, CoreError> {
        self.live_peer(id)?;
        let task = self.task_of(id, &digest)?;
        if task.bad.contains(id) {
            return self.ignore_bad_reporter(now, id);
        }
        // A reporter of the hashes retracts them (its upstream sent wrong bytes):
        // they are discarded the same way, and it is dropped from the task (it
        // deleted its copy) but not counted bad for it.
        let retracting = task.hash_reporters.contains(id);
        if task.hashes_confirmed {
            self.touch(now, id)?;
            return Ok(Some(Ignored::MismatchAfterConfirmed));
        }
        self.touch(now, id)?;
        self.stats.hashes_discarded += 1;
        let task = self.tasks.get_mut(&digest).expect("checked");
        let mut culprits: Vec<PeerId> = task.hash_reporters.drain().filter(|p| p != id).collect();
        culprits.sort();
        task.hashes.clear();
        task.piece_gains.clear();
        task.sources.clear();
        task.stalled.clear();
        task.back_to_source.clear();
        task.bad.extend(culprits.iter().cloned());
        // The task is forgotten below once nobody holds it; its bad peers are not.
        self.bad_memory
            .remember(now, digest, culprits.iter().cloned());
        // Everyone whose pieces were checked against the wrong hashes.
        let mut partial: Vec<PeerId> = task
            .holdings
            .iter()
            .filter(|(_, h)| !h.complete)
            .map(|(p, _)| p.clone())
            .collect();
        partial.sort();
        task.holder_epoch += 1;
        task.dirty = true;
        for peer in culprits.iter().chain(&partial) {
            self.drop_from_task(now, &digest, peer);
        }
        if retracting {
            self.drop_from_task(now, &digest, id);
        }
        // Only the peers elected from here on may report hashes again.
        if let Some(task) = self.tasks.get_mut(&digest) {
            let current = &task.back_to_source;
            task.sources.retain(|p| current.contains_key(p));
        }
        self.forget_if_unused(&digest);
        Ok(None)
    }

    /// The peer dropped the task from its store.
    pub fn task_evicted(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
    ) -> Result<(), CoreError> {
        self.live_peer(id)?;
        self.task_of(id, &digest)?;
        self.drop_from_task(now, &digest, id);
        self.stats.evictions += 1;
        self.touch(now, id)
    }

    /// `child` received a bad piece of `digest` from `parent`. The parent is
    /// never offered to `child` for this task again, and after reports from
    /// `bad_parent_limit` distinct children it is quarantined: offered for no
    /// task at all. One child's word alone takes no parent away from anyone
    /// else.
    ///
    /// Only a parent that was offered to `child` for this task counts
    /// ([`Ignored::BadParentNotOffered`]; also for an unknown or departed
    /// parent, so an honest report never ends a session). A child that names
    /// more than `max_bad_parents_reported` distinct parents, offered or not,
    /// is suspected itself: this and its later reports are ignored
    /// ([`Ignored::BadParentReporterSuspected`]), and its earlier reports stop
    /// counting towards quarantine.
    pub fn bad_parent(
        &mut self,
        now: Instant,
        child: &PeerId,
        digest: Digest,
        parent: &PeerId,
    ) -> Result<Option<Ignored>, CoreError> {
        self.live_peer(child)?;
        let task = self.task_of(child, &digest)?;
        if task.bad.contains(child) {
            return self.ignore_bad_reporter(now, child);
        }
        if child == parent {
            return Err(CoreError::invalid(
                "a peer cannot report itself as a bad parent",
            ));
        }
        let offered = self.peers.contains_key(parent)
            && task
                .holdings
                .get(child)
                .is_some_and(|h| h.offered.contains(parent));
        self.touch(now, child)?;
        let reporter = self.peers.get_mut(child).expect("live");
        if reporter.suspected {
            return Ok(Some(Ignored::BadParentReporterSuspected));
        }
        reporter.reported_bad.insert(parent.clone());
        if reporter.reported_bad.len() as u32 > self.config.max_bad_parents_reported {
            reporter.suspected = true;
            self.stats.suspected_reporters += 1;
            let named: Vec<PeerId> = reporter.reported_bad.iter().cloned().collect();
            for p in named {
                self.retract_bad_report(child, &p);
            }
            return Ok(Some(Ignored::BadParentReporterSuspected));
        }
        if !offered {
            return Ok(Some(Ignored::BadParentNotOffered));
        }
        self.stats.bad_parent_reports += 1;
        let task = self.tasks.get_mut(&digest).expect("checked");
        if let Some(h) = task.holdings.get_mut(child) {
            h.refused.insert(parent.clone());
        }
        if task.unparent_for(child, parent) {
            self.release_slot(parent, 1);
        }
        let peer = self.peers.get_mut(parent).expect("checked");
        let was_quarantined = peer.quarantined(&self.config);
        peer.bad_reports.insert(child.clone());
        if peer.quarantined(&self.config) && !was_quarantined {
            // Offered for no task from now on: plans of other tasks lose it.
            self.withdraw_parent(now, parent);
        }
        self.flush_task(&digest);
        Ok(None)
    }

    /// A suspected reporter's word against `parent` no longer counts towards
    /// its quarantine (it stays out of the reporter's own downloads).
    fn retract_bad_report(&mut self, reporter: &PeerId, parent: &PeerId) {
        let Some(peer) = self.peers.get_mut(parent) else {
            return;
        };
        let was = peer.quarantined(&self.config);
        peer.bad_reports.remove(reporter);
        if was && !peer.quarantined(&self.config) {
            self.parent_returns(parent);
        }
    }

    /// Answers a report from a peer bad for its task: believed in nothing, but
    /// the session goes on (the peer may still download the task as a child).
    fn ignore_bad_reporter(
        &mut self,
        now: Instant,
        id: &PeerId,
    ) -> Result<Option<Ignored>, CoreError> {
        self.touch(now, id)?;
        Ok(Some(Ignored::ReporterBadForTask))
    }

    /// The task, if it exists and `id` takes part in it.
    fn task_of(&self, id: &PeerId, digest: &Digest) -> Result<&Task, CoreError> {
        let task = self.tasks.get(digest).ok_or_else(|| {
            CoreError::not_found(format!("task {digest} is unknown to the scheduler"))
        })?;
        if !task.holdings.contains_key(id) {
            return Err(CoreError::precondition(format!(
                "peer {id} reports on task {digest}, which it was never told to fetch (open a plan first)"
            )));
        }
        Ok(task)
    }
}

#[cfg(test)]
mod tests;
