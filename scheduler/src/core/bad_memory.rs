//! Peers found bad for a task, remembered after the task is forgotten.
//!
//! A digest mismatch disproves the piece hashes a task's sources reported, and
//! the core drops everyone who checked pieces against them, so the task is then
//! held by nobody and forgotten at once. Its list of bad peers went with it: the
//! source that reported the wrong hashes could open the next plan for the digest
//! and be elected its source again. This memory keeps that list per digest, and a
//! task created again for the digest starts from it.
//!
//! Soft state like the rest of the core (a restarted scheduler starts empty),
//! bounded in digests and in peers per digest, and each entry forgotten
//! [`REMEMBER_FOR`] after its last mismatch.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use shoal_proto::Digest;

use super::PeerId;

/// How long a peer stays bad for a task after the mismatch that found it.
pub const REMEMBER_FOR: Duration = Duration::from_secs(3600);
/// Digests remembered at most; the one closest to expiry makes room.
pub(crate) const MAX_DIGESTS: usize = 4096;
/// Bad peers remembered per digest at most (later ones are not added).
pub(crate) const MAX_PEERS_PER_DIGEST: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct BadMemory {
    digests: HashMap<Digest, Remembered>,
}

#[derive(Debug)]
struct Remembered {
    peers: HashSet<PeerId>,
    until: Instant,
}

impl BadMemory {
    /// `peers` were found bad for `digest` at `now`.
    pub(crate) fn remember(
        &mut self,
        now: Instant,
        digest: Digest,
        peers: impl IntoIterator<Item = PeerId>,
    ) {
        let mut peers = peers.into_iter().peekable();
        if peers.peek().is_none() {
            return;
        }
        self.forget_expired(now);
        if !self.digests.contains_key(&digest) && self.digests.len() >= MAX_DIGESTS {
            let oldest = self
                .digests
                .iter()
                .min_by_key(|(d, r)| (r.until, **d))
                .map(|(d, _)| *d);
            if let Some(d) = oldest {
                self.digests.remove(&d);
            }
        }
        let entry = self.digests.entry(digest).or_insert_with(|| Remembered {
            peers: HashSet::new(),
            until: now,
        });
        entry.until = now + REMEMBER_FOR;
        for p in peers {
            if entry.peers.len() >= MAX_PEERS_PER_DIGEST {
                break;
            }
            entry.peers.insert(p);
        }
    }

    /// The peers bad for `digest` now (empty when none are remembered).
    pub(crate) fn recall(&self, now: Instant, digest: &Digest) -> HashSet<PeerId> {
        self.digests
            .get(digest)
            .filter(|r| now < r.until)
            .map(|r| r.peers.clone())
            .unwrap_or_default()
    }

    /// Whether `peer` is remembered as bad for `digest` now.
    pub(crate) fn contains(&self, now: Instant, digest: &Digest, peer: &PeerId) -> bool {
        self.digests
            .get(digest)
            .is_some_and(|r| now < r.until && r.peers.contains(peer))
    }

    /// Digests remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.digests.len()
    }

    fn forget_expired(&mut self, now: Instant) {
        self.digests.retain(|_, r| now < r.until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u32) -> PeerId {
        PeerId::parse(&format!("p{n}")).unwrap()
    }

    #[test]
    fn a_remembered_peer_is_recalled_until_it_expires() {
        let digest = Digest::from_sha256([1; 32]);
        let mut memory = BadMemory::default();
        let t0 = Instant::now();
        memory.remember(t0, digest, [peer(1)]);
        assert_eq!(memory.recall(t0, &digest), HashSet::from([peer(1)]));
        assert!(memory.contains(t0, &digest, &peer(1)));
        assert!(!memory.contains(t0, &digest, &peer(2)));
        assert!(memory.recall(t0, &Digest::from_sha256([2; 32])).is_empty());
        assert!(memory.recall(t0 + REMEMBER_FOR, &digest).is_empty());
        // A later mismatch adds to the list and restarts its time.
        let t1 = t0 + REMEMBER_FOR / 2;
        memory.remember(t1, digest, [peer(2)]);
        assert_eq!(
            memory.recall(t0 + REMEMBER_FOR, &digest),
            HashSet::from([peer(1), peer(2)])
        );
        // Nobody found bad: nothing is kept.
        memory.remember(t1, Digest::from_sha256([3; 32]), []);
        assert_eq!(memory.len(), 1);
    }

    #[test]
    fn the_memory_is_bounded_in_digests_and_in_peers() {
        let mut memory = BadMemory::default();
        let t0 = Instant::now();
        for i in 0..MAX_DIGESTS as u32 + 10 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            memory.remember(
                t0 + Duration::from_millis(i.into()),
                Digest::from_sha256(d),
                [peer(i)],
            );
        }
        assert_eq!(memory.len(), MAX_DIGESTS);
        // The oldest made room; the newest are kept.
        let mut first = [0u8; 32];
        first[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(memory.recall(t0, &Digest::from_sha256(first)).is_empty());
        let digest = Digest::from_sha256([9; 32]);
        memory.remember(t0, digest, (0..1000).map(peer));
        assert_eq!(memory.recall(t0, &digest).len(), MAX_PEERS_PER_DIGEST);
    }
}
