//! Which blobs this peer is fetching from upstream right now.
//!
//! While a peer fetches a blob from upstream (it is the swarm's back-to-source peer, or
//! it went back to source on its own), each piece it gets is new to the swarm: nobody
//! else holds it yet. Its uplink is the one way new pieces enter the swarm, so the
//! upload server sends each such piece to one child and then leaves the piece to that
//! child to spread ([`super::server::SEED_HOLD`]), the way a BitTorrent initial seeder
//! "super-seeds". Without it, every child of a large swarm streaming in order asks this
//! peer for the newest piece, and it uploads the blob nearly twice at 1,000 peers
//! (measured in the simulator, `docs/benchmarks.md`, "The source sends each new piece
//! once").
//!
//! The engine's driver marks a blob with [`Seeding::start`] for as long as its upstream
//! stream runs; the upload server asks [`Seeding::contains`] when an upload ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_proto::Digest;

/// The blobs this peer is fetching from upstream now (a count per blob: a stream may
/// be restarted while the previous one winds down). Cheap to share.
#[derive(Debug, Default)]
pub struct Seeding(Mutex<HashMap<Digest, usize>>);

/// Marks its blob as fetched from upstream until dropped.
#[derive(Debug)]
pub struct SeedingGuard {
    seeding: Arc<Seeding>,
    digest: Digest,
}

impl Seeding {
    /// Nothing being fetched from upstream.
    pub fn new() -> Arc<Self> {
        Arc::new(Seeding::default())
    }

    /// Marks `digest` as fetched from upstream until the guard is dropped.
    pub fn start(self: &Arc<Self>, digest: Digest) -> SeedingGuard {
        *self.lock().entry(digest).or_insert(0) += 1;
        SeedingGuard {
            seeding: self.clone(),
            digest,
        }
    }

    /// True while some upstream stream of `digest` runs.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().contains_key(digest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SeedingGuard {
    fn drop(&mut self) {
        let mut map = self.seeding.lock();
        if let Some(n) = map.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_seeding_while_any_of_its_upstream_streams_runs() {
        let s = Seeding::new();
        let d = Digest::from_sha256([1; 32]);
        let other = Digest::from_sha256([2; 32]);
        assert!(!s.contains(&d));
        let first = s.start(d);
        let second = s.start(d);
        assert!(s.contains(&d));
        assert!(!s.contains(&other));
        drop(first);
        assert!(s.contains(&d), "the second stream still runs");
        drop(second);
        assert!(!s.contains(&d));
    }
}
