//! What peers report on their session: sizes learnt from upstream, verified
//! pieces, completions, evictions and bad parents.
//!
//! Each report is checked whole before it changes anything: a batch with one
//! bad piece index changes nothing.

use std::time::Instant;

use shoal_proto::{Digest, PieceSet, TaskShape};

use super::{CoreError, ErrorKind, PeerId, PieceDone, Scheduler, Task};

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
    pub fn report_pieces(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
        pieces: &[PieceDone],
    ) -> Result<(), CoreError> {
        self.live_peer(id)?;
        let task = self.task_of(id, &digest)?;
        let Some(shape) = task.shape else {
            return Err(CoreError::precondition(format!(
                "task {digest} has no known size yet; the back-to-source peer sends TaskStarted first"
            )));
        };
        let is_source = task.sources.contains(id);
        for p in pieces {
            shape
                .check_index(p.index)
                .map_err(|e| CoreError::invalid(format!("task {digest}: {e}")))?;
            let known = task.hashes[p.index as usize];
            match (p.hash, known) {
                (Some(_), _) if !is_source => {
                    return Err(CoreError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "peer {id} reported a hash for piece {} of {digest} but never fetched it from upstream",
                            p.index
                        ),
                    ));
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
                _ => {}
            }
        }
        let task = self.tasks.get_mut(&digest).expect("checked");
        let holding = task.holdings.get_mut(id).expect("checked by task_of");
        let was_empty = holding.pieces.is_empty();
        let mut grew = false;
        for p in pieces {
            if holding.pieces.insert(p.index) {
                grew = true;
                task.piece_gains[p.index as usize] += 1;
            }
            if let Some(h) = p.hash
                && task.hashes[p.index as usize].is_none()
            {
                task.hashes[p.index as usize] = Some(h);
                task.known_hashes += 1;
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
        self.touch(now, id)
    }

    /// The peer holds the whole task, verified against its digest. Its
    /// back-to-source duty (if any) ends and its parents are released.
    pub fn task_complete(
        &mut self,
        now: Instant,
        id: &PeerId,
        digest: Digest,
    ) -> Result<(), CoreError> {
        self.live_peer(id)?;
        let task = self.task_of(id, &digest)?;
        let Some(shape) = task.shape else {
            return Err(CoreError::precondition(format!(
                "task {digest} has no known size; it cannot be complete"
            )));
        };
        if task.known_hashes < shape.piece_count() && !task.sources.contains(id) {
            return Err(CoreError::precondition(format!(
                "task {digest} cannot be complete on peer {id}: not every piece hash is known yet"
            )));
        }
        let task = self.tasks.get_mut(&digest).expect("checked");
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
        self.touch(now, id)
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
    /// never offered for this task again, and after reports from
    /// `bad_parent_limit` distinct children, for no task at all.
    pub fn bad_parent(
        &mut self,
        now: Instant,
        child: &PeerId,
        digest: Digest,
        parent: &PeerId,
    ) -> Result<(), CoreError> {
        self.live_peer(child)?;
        self.task_of(child, &digest)?;
        if child == parent {
            return Err(CoreError::invalid(
                "a peer cannot report itself as a bad parent",
            ));
        }
        if !self.peers.contains_key(parent) {
            return Err(CoreError::not_found(format!(
                "parent {parent} is not a known peer"
            )));
        }
        self.touch(now, child)?;
        let peer = self.peers.get_mut(parent).expect("checked");
        let was_quarantined = peer.quarantined(&self.config);
        peer.bad_reports.insert(child.clone());
        let quarantined = peer.quarantined(&self.config);
        let task = self.tasks.get_mut(&digest).expect("checked");
        task.bad.insert(parent.clone());
        self.stats.bad_parent_reports += 1;
        self.drop_from_task(now, &digest, parent);
        if quarantined && !was_quarantined {
            // Offered for no task from now on: plans of other tasks lose it.
            self.withdraw_parent(now, parent);
        }
        Ok(())
    }

    /// The task, if it exists and `id` takes part in it.
    fn task_of(&self, id: &PeerId, digest: &Digest) -> Result<&Task, CoreError> {
        let task = self.tasks.get(digest).ok_or_else(|| {
            CoreError::not_found(format!("task {digest} is unknown to the scheduler"))
        })?;
        if task.bad.contains(id) {
            return Err(CoreError::precondition(format!(
                "peer {id} was reported bad for task {digest}; its reports are ignored"
            )));
        }
        if !task.holdings.contains_key(id) {
            return Err(CoreError::precondition(format!(
                "peer {id} reports on task {digest}, which it was never told to fetch (open a plan first)"
            )));
        }
        Ok(task)
    }
}
