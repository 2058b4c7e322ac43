//! Peers joining, staying (leases renewed by any message) and leaving.
//!
//! A peer that joins again from the same address keeps what it had and adds
//! what it announces (this is how a restarted scheduler rebuilds its state);
//! the same id from another address is refused while the first one's lease
//! runs.

use std::collections::HashSet;
use std::time::Instant;

use shoal_proto::{PieceSet, TaskShape};

use super::{
    CoreError, ErrorKind, HeldTask, Holding, Load, Peer, PeerId, PeerInfo, Scheduler, Task,
};

/// The highest link rate a peer may declare, in Mbit/s (10 Tbit/s).
pub const MAX_LINK_MBPS: u32 = 10_000_000;

impl Scheduler {
    /// A peer (re)announces itself and every task it holds complete.
    ///
    /// Everything is validated before anything changes.
    pub fn join(
        &mut self,
        now: Instant,
        info: PeerInfo,
        held: Vec<HeldTask>,
    ) -> Result<(), CoreError> {
        if self.test_panic_on_join.as_deref() == Some(info.id.as_str()) {
            panic!("test hook: panic on join of {}", info.id);
        }
        if info.hostname.len() > 253 {
            return Err(CoreError::invalid("hostname longer than 253 characters"));
        }
        if info.zone.len() > 128 || info.rack.len() > 128 {
            return Err(CoreError::invalid(
                "zone and rack labels may be at most 128 characters",
            ));
        }
        if info.link_mbps > MAX_LINK_MBPS {
            return Err(CoreError::invalid(format!(
                "link rate {} Mbit/s is above {MAX_LINK_MBPS} (10 Tbit/s); send 0 when unknown",
                info.link_mbps
            )));
        }
        if info.addr.port() == 0 || info.addr.ip().is_unspecified() {
            return Err(CoreError::invalid(format!(
                "quic address {} is not reachable by other peers (unspecified IP or port 0)",
                info.addr
            )));
        }
        if let Some(existing) = self.peers.get(&info.id)
            && existing.info.addr != info.addr
            && existing.lease_until > now
        {
            return Err(CoreError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "peer id {} is in use by a live peer at {}; ids must be unique per node",
                    info.id, existing.info.addr
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, t) in held.iter().enumerate() {
            if !seen.insert(t.digest) {
                return Err(CoreError::invalid(format!(
                    "task {} announced twice",
                    t.digest
                )));
            }
            let shape = TaskShape::for_size(t.size)
                .map_err(|e| CoreError::invalid(format!("held task #{i} ({}): {e}", t.digest)))?;
            let n = shape.piece_count() as usize;
            if !t.piece_hashes.is_empty() && t.piece_hashes.len() != n {
                return Err(CoreError::invalid(format!(
                    "held task {} has {} piece hashes, its size needs {n}",
                    t.digest,
                    t.piece_hashes.len()
                )));
            }
            if let Some(task) = self.tasks.get(&t.digest) {
                if let Some(known) = task.shape
                    && known.size() != t.size
                {
                    return Err(CoreError::invalid(format!(
                        "held task {} announced with size {}, the swarm knows it as {} bytes",
                        t.digest,
                        t.size,
                        known.size()
                    )));
                }
                for (idx, h) in t.piece_hashes.iter().enumerate() {
                    if let Some(k) = task.hashes.get(&(idx as u32))
                        && k != h
                    {
                        return Err(CoreError::precondition(format!(
                            "held task {} piece {idx} hash differs from the one the swarm knows",
                            t.digest
                        )));
                    }
                }
            }
        }

        self.check_task_caps(&info.id, held.iter().map(|t| t.digest))?;

        // A different address whose lease ran out: the old peer is gone.
        if self
            .peers
            .get(&info.id)
            .is_some_and(|p| p.info.addr != info.addr)
        {
            self.remove_peer(now, &info.id);
        }
        let ttl = self.config.peer_ttl;
        let id = info.id.clone();
        match self.peers.get(&id).map(|p| p.info.link_mbps) {
            None => self.link_rates.add(info.link_mbps),
            Some(old) if old != info.link_mbps => {
                self.link_rates.remove(old);
                self.link_rates.add(info.link_mbps);
            }
            Some(_) => {}
        }
        let peer = self.peers.entry(id.clone()).or_insert_with(|| Peer {
            info: info.clone(),
            lease_until: now + ttl,
            joined_at: now,
            session_open: false,
            load: Load::default(),
            children: 0,
            tasks: HashSet::new(),
            bad_reports: HashSet::new(),
            reported_bad: HashSet::new(),
            suspected: false,
            operator_quarantine: false,
            id_hash: {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                id.as_str().hash(&mut h);
                h.finish()
            },
        });
        peer.info = info;
        peer.lease_until = now + ttl;
        for t in held {
            // A peer whose hashes for the task were disproved does not come back
            // as its holder (nor bring its hashes) by re-joining.
            if self.bad_memory.contains(now, &t.digest, &id)
                || self
                    .tasks
                    .get(&t.digest)
                    .is_some_and(|task| task.bad.contains(&id))
            {
                continue;
            }
            peer.tasks.insert(t.digest);
            let task = self
                .tasks
                .entry(t.digest)
                .or_insert_with(|| Task::new(now, self.bad_memory.recall(now, &t.digest)));
            if task.shape.is_none() {
                task.set_shape(TaskShape::for_size(t.size).expect("validated above"));
            }
            if !t.piece_hashes.is_empty() {
                task.hash_reporters.insert(id.clone());
            }
            for (idx, h) in t.piece_hashes.into_iter().enumerate() {
                task.hashes.entry(idx as u32).or_insert(h);
            }
            let n = task.shape.map_or(0, |s| s.piece_count());
            task.holdings
                .insert(id.clone(), Holding::new(PieceSet::full(n), true));
            task.back_to_source.remove(&id);
            task.complete_epoch += 1;
            task.holder_epoch += 1;
            task.dirty = true;
        }
        self.stats.joins += 1;
        Ok(())
    }

    /// A peer's session stream opened.
    pub fn session_opened(&mut self, now: Instant, id: &PeerId) -> Result<(), CoreError> {
        self.touch(now, id)?;
        if let Some(p) = self.peers.get_mut(id) {
            p.session_open = true;
        }
        Ok(())
    }

    /// A heartbeat: renews the lease and records the load.
    pub fn heartbeat(&mut self, now: Instant, id: &PeerId, load: Load) -> Result<(), CoreError> {
        self.touch(now, id)?;
        if let Some(p) = self.peers.get_mut(id) {
            p.load = load;
        }
        Ok(())
    }

    /// A peer's session stream ended. The peer stays until its lease runs out,
    /// so a reconnect within the grace period loses nothing.
    pub fn session_closed(&mut self, id: &PeerId) {
        if let Some(p) = self.peers.get_mut(id) {
            p.session_open = false;
        }
    }

    /// Renews a peer's lease.
    pub(crate) fn touch(&mut self, now: Instant, id: &PeerId) -> Result<(), CoreError> {
        let ttl = self.config.peer_ttl;
        match self.peers.get_mut(id) {
            Some(p) => {
                p.lease_until = now + ttl;
                Ok(())
            }
            None => Err(self.live_peer(id).unwrap_err()),
        }
    }

    /// A peer leaves now (e.g. it said goodbye, or an operator removed it).
    pub fn leave(&mut self, now: Instant, id: &PeerId) {
        if self.remove_peer(now, id) {
            self.stats.departures += 1;
        }
    }

    /// Advances time: peers whose lease ran out leave; back-to-source peers
    /// that stalled are replaced; elections put off by a resume grace are held
    /// once it ends. Call it about once a second.
    pub fn tick(&mut self, now: Instant) {
        let mut expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.lease_until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired.sort();
        for id in expired {
            self.leave(now, &id);
            self.stats.expired += 1;
        }
        self.replace_stalled_sources(now);
        self.elect_deferred(now);
        self.hand_over_to_faster(now);
    }

    /// Removes a peer from every task; its children are re-planned.
    fn remove_peer(&mut self, now: Instant, id: &PeerId) -> bool {
        let Some(peer) = self.peers.remove(id) else {
            return false;
        };
        self.link_rates.remove(peer.info.link_mbps);
        let mut tasks: Vec<_> = peer.tasks.into_iter().collect();
        tasks.sort();
        for digest in tasks {
            self.drop_from_task(now, &digest, id);
        }
        true
    }
}
