//! What operators ask of the swarm (through the operator API): take a peer
//! out as a parent and put it back, and tell every holder of a task to drop
//! it.
//!
//! Quarantine is the one bad-parent reports already lead to
//! ([`Peer::quarantined`](super::Peer)), with the reason `"operator"`: the
//! peer is offered for no task, the plans that offer it now lose it at once
//! (and their downloads are re-ranked), and its back-to-source duties go to
//! other peers. Its own downloads go on. Like all of the scheduler's state it
//! is soft: it lasts while the peer stays in the swarm, and a restarted
//! scheduler has forgotten it.

use std::time::Instant;

use shoal_proto::Digest;

use super::{Command, CoreError, Effect, PeerId, Scheduler};

/// What [`Scheduler::drop_task`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropOrder {
    /// Holders with an open session: the command went to them.
    pub commanded: Vec<PeerId>,
    /// Holders without an open session now: the command was queued for them
    /// too, but nobody will read it; they keep the task.
    pub not_connected: Vec<PeerId>,
}

impl Scheduler {
    /// Quarantines (`on`) or releases a peer on an operator's word. Returns
    /// the reasons it is quarantined for afterwards (a peer released by the
    /// operator stays quarantined if children reported it bad).
    pub fn set_operator_quarantine(
        &mut self,
        now: Instant,
        id: &PeerId,
        on: bool,
    ) -> Result<Vec<&'static str>, CoreError> {
        let peer = self
            .peers
            .get_mut(id)
            .ok_or_else(|| CoreError::not_found(format!("peer {id} is not in the swarm")))?;
        let was = peer.quarantined(&self.config);
        if on && !peer.operator_quarantine {
            self.stats.operator_quarantines += 1;
        }
        peer.operator_quarantine = on;
        let is = peer.quarantined(&self.config);
        if is && !was {
            self.withdraw_parent(now, id);
        } else if was && !is {
            self.parent_returns(id);
        }
        Ok(self.peers[id].quarantine_reasons(&self.config))
    }

    /// A peer just became quarantined: every plan that offers it loses it
    /// (and is re-ranked at once), and another peer takes over its
    /// back-to-source duties.
    pub(crate) fn withdraw_parent(&mut self, now: Instant, id: &PeerId) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        let mut tasks: Vec<Digest> = peer.tasks.iter().copied().collect();
        tasks.sort();
        for digest in &tasks {
            let Some(task) = self.tasks.get_mut(digest) else {
                continue;
            };
            let released = task.unparent(id);
            if task.back_to_source.remove(id).is_some() {
                task.stalled.insert(id.clone());
                if let Some(d) = task.downloads.get_mut(id) {
                    d.rerank = true;
                }
            }
            task.dirty = true;
            self.release_slot(id, released);
            self.ensure_back_to_source(now, digest);
            self.flush_task(digest);
        }
    }

    /// A peer's quarantine ended: the downloads of its tasks look at it
    /// again (starved ones through the slot epoch, those short of parents
    /// through the holder epoch).
    pub(crate) fn parent_returns(&mut self, id: &PeerId) {
        self.slot_epoch += 1;
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        for digest in &peer.tasks {
            if let Some(task) = self.tasks.get_mut(digest) {
                task.holder_epoch += 1;
                task.dirty = true;
            }
        }
    }

    /// Tells every peer holding pieces of `digest` to drop it from its store
    /// (a `DropTask` command on its session). Changes nothing here: peers
    /// that obey report the eviction.
    pub fn drop_task(&mut self, digest: &Digest) -> Result<DropOrder, CoreError> {
        let task = self
            .tasks
            .get(digest)
            .ok_or_else(|| CoreError::not_found(format!("no peer holds or downloads {digest}")))?;
        let mut holders: Vec<PeerId> = task
            .holdings
            .iter()
            .filter(|(_, h)| h.complete || !h.pieces.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        holders.sort();
        let mut order = DropOrder {
            commanded: Vec::new(),
            not_connected: Vec::new(),
        };
        for id in holders {
            let connected = self.peers.get(&id).is_some_and(|p| p.session_open);
            self.effects.push(Effect::Command {
                peer: id.clone(),
                command: Command::Drop(*digest),
            });
            if connected {
                order.commanded.push(id);
            } else {
                order.not_connected.push(id);
            }
        }
        self.stats.drop_orders += 1;
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_proto::Digest;

    use crate::core::test_support::{SIZE, id, info, parents_sent_to};
    use crate::core::{Command, CoreConfig, Effect, HeldTask, PeerId, PieceDone, Scheduler};

    #[test]
    fn quarantine_withdraws_a_parent_at_once_and_release_brings_it_back() {
        let d = Digest::from_sha256([1; 32]);
        let mut core = Scheduler::new(CoreConfig::default());
        let now = Instant::now();
        let held = HeldTask {
            digest: d,
            size: SIZE,
            piece_hashes: vec![[9; 32]; 2],
        };
        core.join(now, info(0), vec![held]).unwrap();
        core.join(now, info(1), vec![]).unwrap();
        core.open_plan(now, &id(1), d, SIZE).unwrap();
        assert_eq!(
            parents_sent_to(&core.drain_effects(), &id(1)),
            Some(vec![id(0)])
        );

        let reasons = core.set_operator_quarantine(now, &id(0), true).unwrap();
        assert_eq!(reasons, vec!["operator"]);
        let effects = core.drain_effects();
        assert_eq!(parents_sent_to(&effects, &id(1)), Some(vec![]));
        assert_eq!(core.children_of(&id(0)), Some(0));
        // Nobody offerable holds the task: the downloader fetches upstream.
        assert_eq!(core.back_to_source_of(&d), vec![id(1)]);
        // Idempotent.
        core.set_operator_quarantine(now, &id(0), true).unwrap();

        // Released: p1 fetches upstream now, so it keeps that duty; a new
        // downloader is offered p0 again.
        assert!(
            core.set_operator_quarantine(now, &id(0), false)
                .unwrap()
                .is_empty()
        );
        core.join(now, info(2), vec![]).unwrap();
        core.open_plan(now, &id(2), d, SIZE).unwrap();
        let effects = core.drain_effects();
        assert!(parents_sent_to(&effects, &id(2)).unwrap().contains(&id(0)));

        let unknown = core.set_operator_quarantine(now, &id(9), true).unwrap_err();
        assert_eq!(unknown.kind, crate::core::ErrorKind::NotFound);
    }

    #[test]
    fn drop_commands_every_holder_with_pieces() {
        let d = Digest::from_sha256([1; 32]);
        let mut core = Scheduler::new(CoreConfig::default());
        let now = Instant::now();
        let held = HeldTask {
            digest: d,
            size: SIZE,
            piece_hashes: vec![[9; 32]; 2],
        };
        core.join(now, info(0), vec![held]).unwrap();
        core.session_opened(now, &id(0)).unwrap();
        core.join(now, info(1), vec![]).unwrap();
        core.join(now, info(2), vec![]).unwrap();
        core.open_plan(now, &id(1), d, SIZE).unwrap();
        core.report_pieces(
            now,
            &id(1),
            d,
            &[PieceDone {
                index: 0,
                hash: None,
            }],
        )
        .unwrap();
        core.open_plan(now, &id(2), d, SIZE).unwrap();
        core.drain_effects();

        let order = core.drop_task(&d).unwrap();
        assert_eq!(order.commanded, vec![id(0)]);
        assert_eq!(order.not_connected, vec![id(1)], "p2 holds nothing yet");
        let commanded: Vec<PeerId> = core
            .drain_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Command {
                    peer,
                    command: Command::Drop(x),
                } if x == d => Some(peer),
                _ => None,
            })
            .collect();
        assert_eq!(commanded, vec![id(0), id(1)]);
        assert!(core.drop_task(&Digest::from_sha256([5; 32])).is_err());
    }
}
