//! The simulated cluster: which tasks exist and how big they are, what each
//! peer holds when it joins, and which task a new download asks for.
//!
//! Everything is a function of the seed, so two runs with the same flags ask
//! the scheduler the same questions (only the timing differs).
//!
//! The ratios (see also `docs/benchmarks.md`, "Scheduler at scale"):
//! - half the tasks are **old** (layers of images already on nodes), half are
//!   **new** (a release nobody has pulled yet: the first download of each is
//!   elected to fetch it from upstream);
//! - **40 %** of peers join with inventory: 1 to 10 old tasks each, picked by
//!   popularity (Zipf, s = 1), announced with every piece hash;
//! - **80 %** of downloads ask for a new task, 20 % for an old one the peer
//!   lacks, each by Zipf popularity (s = 1), so the most popular new task gets
//!   about 15 % of all downloads: a rollout to many nodes at once;
//! - task sizes: 50 % 4–32 MiB, 35 % 32–256 MiB, 15 % 256 MiB–1 GiB
//!   (pieces of 512 KiB up to 512 MiB, then 1,024 pieces: 8 to 1,024 pieces
//!   per task);
//! - half the plan requests carry the blob's size (the peer learnt it from
//!   the manifest), half do not (the back-to-source peer then sends
//!   `TaskStarted`).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shoal_proto::v1;
use shoal_proto::{Digest, TaskShape};

/// Share of peers that join with inventory.
const INVENTORY_SHARE: f64 = 0.4;
/// Most old tasks one peer announces at join.
const MAX_HELD: u32 = 10;
/// Share of downloads that ask for a new task.
const NEW_SHARE: f64 = 0.8;
/// Zipf exponent of task popularity.
const ZIPF_S: f64 = 1.0;

/// One task (blob).
pub(crate) struct TaskSpec {
    pub(crate) digest: String,
    pub(crate) size: u64,
    pub(crate) pieces: u32,
}

/// Popularity: a Zipf distribution over `0..n` as a cumulative table.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u32) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n.max(1))
            .map(|k| {
                acc += 1.0 / f64::from(k).powf(ZIPF_S);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> u32 {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u32
    }

    /// Share of samples that land on the most popular item.
    fn top_share(&self) -> f64 {
        self.cdf[0]
    }
}

/// The tasks and the popularity model.
pub(crate) struct Workload {
    pub(crate) tasks: Vec<TaskSpec>,
    /// Tasks `0..old` are old, `old..` new.
    pub(crate) old: u32,
    old_pop: Zipf,
    new_pop: Zipf,
    seed: u64,
}

impl Workload {
    pub(crate) fn new(tasks: u32, seed: u64) -> Workload {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7A5C);
        let specs = (0..tasks)
            .map(|t| {
                let class: f64 = rng.random();
                let mib: u64 = if class < 0.5 {
                    rng.random_range(4..32)
                } else if class < 0.85 {
                    rng.random_range(32..256)
                } else {
                    rng.random_range(256..1024)
                };
                let size = (mib << 20) + rng.random_range(0..1 << 20);
                let pieces = TaskShape::for_size(size)
                    .expect("size in range")
                    .piece_count();
                TaskSpec {
                    digest: digest(t).to_string(),
                    size,
                    pieces,
                }
            })
            .collect();
        let old = tasks / 2;
        Workload {
            tasks: specs,
            old,
            old_pop: Zipf::new(old),
            new_pop: Zipf::new(tasks - old),
            seed,
        }
    }

    /// The old tasks peer `i` announces at join (empty for most peers).
    pub(crate) fn inventory(&self, i: u32) -> Vec<u32> {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ (u64::from(i) << 20) ^ 0x1417);
        if self.old == 0 || rng.random::<f64>() >= INVENTORY_SHARE {
            return Vec::new();
        }
        let want = rng.random_range(1..=MAX_HELD.min(self.old));
        let mut held = Vec::new();
        for _ in 0..want * 4 {
            let t = self.old_pop.sample(&mut rng);
            if !held.contains(&t) {
                held.push(t);
            }
            if held.len() as u32 == want {
                break;
            }
        }
        held
    }

    /// The task a new download asks for.
    pub(crate) fn pick_task(&self, rng: &mut impl Rng) -> u32 {
        if self.old == 0 || rng.random::<f64>() < NEW_SHARE {
            self.old + self.new_pop.sample(rng)
        } else {
            self.old_pop.sample(rng)
        }
    }

    /// Share of downloads that go to the most popular new task.
    pub(crate) fn top_new_share(&self) -> f64 {
        let new = if self.old == 0 { 1.0 } else { NEW_SHARE };
        new * self.new_pop.top_share()
    }

    /// The `HeldTask` announcing task `t` complete.
    pub(crate) fn held_task(&self, t: u32) -> v1::HeldTask {
        let spec = &self.tasks[t as usize];
        v1::HeldTask {
            digest: spec.digest.clone(),
            size: spec.size,
            piece_hashes: (0..spec.pieces)
                .map(|i| piece_hash(t, i).to_vec())
                .collect(),
        }
    }
}

/// The task's digest (a made-up but well-formed one).
fn digest(t: u32) -> Digest {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&t.to_be_bytes());
    b[31] = 0xB5;
    Digest::from_sha256(b)
}

/// The "content" of a piece: its hash is a function of task and index.
pub(crate) fn piece_hash(task: u32, index: u32) -> [u8; 32] {
    let mut h = [0x5Au8; 32];
    h[..4].copy_from_slice(&task.to_be_bytes());
    h[4..8].copy_from_slice(&index.to_be_bytes());
    h
}

/// Peer `i`'s id.
pub(crate) fn peer_id(i: u32) -> String {
    format!("bench-{i:05}")
}

/// The index back from an id made by [`peer_id`].
pub(crate) fn peer_index(id: &str) -> Option<u32> {
    id.strip_prefix("bench-")?.parse().ok()
}

/// Peer `i` as it describes itself: three zones, forty racks.
pub(crate) fn peer_info(i: u32) -> v1::PeerInfo {
    v1::PeerInfo {
        peer_id: peer_id(i),
        hostname: format!("node-{i}.bench.local"),
        quic_addr: format!("10.{}.{}.{}:7651", 1 + (i >> 16), (i >> 8) & 0xff, i & 0xff),
        zone: format!("zone-{}", i % 3),
        rack: format!("rack-{}", i % 40),
        upload_slots: 0,
        piece_rule: shoal_proto::piece::PIECE_RULE,
        link_mbps: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_a_distribution() {
        let z = Zipf::new(500);
        assert!((z.cdf[499] - 1.0).abs() < 1e-9);
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| z.sample(&mut rng) < 500));
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(peer_index(&peer_id(42)), Some(42));
    }
}
