//! Benchmark of the scheduler core (`shoal_scheduler::core`) at cluster
//! scale: 10,000 peers and 1,000 tasks held in one [`Scheduler`].
//!
//! The state: every peer joins; every task is a 64 MiB blob (16 pieces) held
//! complete by 10 random peers (announced on `join` with piece hashes) and
//! downloaded by 5 other random peers, each part way through (see `FULL`).
//!
//! Measured, in this order:
//! 1. criterion, `open_plan+close_plan`: a new (peer, task) download opens a
//!    plan (the core ranks parents at once and queues the first update), then
//!    closes it. One parent ranking (`CoreStats::plan_decisions`) per
//!    iteration, so criterion's elements/s is decisions/s.
//! 2. criterion, `report_pieces+flush`: a random download reports its next
//!    piece and the core flushes; a download that reaches its last piece
//!    completes and is replaced by a new one on the same task. Elements are
//!    operations; how many decisions they cause is printed by the plain loop.
//! 3. A plain timed loop of each, recording every operation's latency, which
//!    prints p50/p99/max and decisions/s.
//! 4. Bytes of state per (peer, task) holding and per download: the state is
//!    built in child processes of this binary with H and 2H holders per task
//!    (and D and 3D downloads), and the resident-set differences are divided
//!    by the extra holdings. (A counting allocator would need `unsafe`, which
//!    the workspace forbids.)
//! 5. Diagnostics of problems found in the core (docs/benchmarks.md): child
//!    slots counted against parents offered, cancelled downloads left
//!    without eviction, and one popular task with 100 to 1,000 downloads.
//!
//! The last line is a summary to quote, e.g.
//! `scheduler-core: peers=10000 tasks=1000 decisions_per_sec=… p50_us=… p99_us=… bytes_per_holding=…`.
//! Targets to compare against (not asserted: benchmarks are not tests):
//! ≥ 50,000 decisions/s on one core, p99 < 1 ms, ≤ 1 KiB per (peer, task).
//!
//! Every iteration drains the core's effects, so memory stays flat (a closed
//! plan whose peer received no piece leaves nothing behind in the core).
//!
//! Run with `cargo bench -p shoal-scheduler --bench core` (about two
//! minutes). Under `cargo test --benches` everything runs briefly at a small
//! scale (`SMOKE`), as a smoke test.

use std::collections::HashSet;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shoal_proto::{Digest, PieceSet, TaskShape};
use shoal_scheduler::core::{
    CoreConfig, Effect, HeldTask, Load, PeerId, PeerInfo, PieceDone, PlanId, PlanUpdate, Scheduler,
};

/// 64 MiB: 16 pieces of 4 MiB.
const TASK_SIZE: u64 = 64 << 20;
/// Set in a child process: build the state with `holders:downloads` per task,
/// print its resident-set growth and exit.
const RSS_CHILD_ENV: &str = "SHOAL_BENCH_CORE_RSS";

/// How big a state to build and how long to run the plain loops.
#[derive(Debug, Clone, Copy)]
struct Scale {
    peers: u32,
    tasks: u32,
    /// Complete holders per task.
    holders: u32,
    /// In-progress downloads per task.
    downloads: u32,
    /// Operations per plain timed loop.
    ops: usize,
}

const FULL: Scale = Scale {
    peers: 10_000,
    tasks: 1_000,
    holders: 10,
    downloads: 5,
    ops: 200_000,
};

/// `cargo test --benches`: a smoke test, not a measurement.
const SMOKE: Scale = Scale {
    peers: 500,
    tasks: 50,
    holders: 10,
    downloads: 5,
    ops: 500,
};

/// The "content" of a piece: its hash is a function of task and index.
fn piece_hash(task: u32, piece: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&task.to_be_bytes());
    h[4..8].copy_from_slice(&piece.to_be_bytes());
    h[31] = 0x5A;
    h
}

fn digest_of(task: u32) -> Digest {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&task.to_be_bytes());
    b[31] = 0xD1;
    Digest::from_sha256(b)
}

fn peer_info(i: u32) -> PeerInfo {
    PeerInfo {
        id: PeerId::parse(&format!("peer-{i:05}")).expect("valid id"),
        hostname: format!("node-{i}.cluster.local"),
        addr: format!("10.{}.{}.{}:7651", 1 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
            .parse()
            .expect("valid addr"),
        zone: format!("zone-{}", i % 3),
        rack: format!("rack-{}", i % 40),
        upload_slots: 0,
        link_mbps: 0,
    }
}

/// One in-progress download the bench drives.
struct Active {
    peer: u32,
    task: u32,
    plan: PlanId,
    /// Pieces reported so far (always the prefix `0..reported`).
    reported: u32,
}

/// The core plus the bench's own book-keeping of who takes part where.
struct Swarm {
    core: Scheduler,
    now: Instant,
    scale: Scale,
    pieces: u32,
    ids: Vec<PeerId>,
    digests: Vec<Digest>,
    /// (peer, task) pairs that hold or download, so new downloads go to
    /// peers not yet in the task.
    members: HashSet<(u32, u32)>,
    active: Vec<Active>,
    rng: SmallRng,
}

impl Swarm {
    fn build(scale: Scale) -> Swarm {
        let pieces = TaskShape::for_size(TASK_SIZE)
            .expect("valid size")
            .piece_count();
        let mut rng = SmallRng::seed_from_u64(0x5EED);
        let now = Instant::now();
        let mut swarm = Swarm {
            core: Scheduler::new(CoreConfig::default()),
            now,
            scale,
            pieces,
            ids: (0..scale.peers).map(|i| peer_info(i).id).collect(),
            digests: (0..scale.tasks).map(digest_of).collect(),
            members: HashSet::new(),
            active: Vec::new(),
            rng: SmallRng::seed_from_u64(0xBE7C),
        };

        // Complete holders, announced on join.
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); scale.peers as usize];
        for t in 0..scale.tasks {
            for p in
                rand::seq::index::sample(&mut rng, scale.peers as usize, scale.holders as usize)
            {
                held[p].push(t);
                swarm.members.insert((p as u32, t));
            }
        }
        for (p, tasks) in held.into_iter().enumerate() {
            let held = tasks
                .into_iter()
                .map(|t| HeldTask {
                    digest: digest_of(t),
                    size: TASK_SIZE,
                    piece_hashes: (0..pieces).map(|i| piece_hash(t, i)).collect(),
                })
                .collect();
            swarm
                .core
                .join(now, peer_info(p as u32), held)
                .expect("join");
            let load = Load {
                active_uploads: rng.random_range(0..8),
                active_downloads: rng.random_range(0..4),
            };
            swarm
                .core
                .heartbeat(now, &swarm.ids[p], load)
                .expect("heartbeat");
        }

        // Downloads part way through: open every plan, then report a prefix.
        for t in 0..scale.tasks {
            for _ in 0..scale.downloads {
                swarm.open_download(t);
                swarm.core.drain_effects();
            }
        }
        for i in 0..swarm.active.len() {
            let k = rng.random_range(0..pieces);
            for _ in 0..k {
                swarm.report_next(i);
            }
            swarm.core.flush();
            swarm.core.drain_effects();
        }
        swarm.core.flush();
        swarm.core.drain_effects();
        swarm
    }

    /// A random peer that takes no part in `task` yet.
    fn free_peer(&mut self, task: u32) -> u32 {
        loop {
            let p = self.rng.random_range(0..self.scale.peers);
            if !self.members.contains(&(p, task)) {
                return p;
            }
        }
    }

    /// Opens a plan for a new download of `task`; returns its index.
    fn open_download(&mut self, task: u32) -> usize {
        let peer = self.free_peer(task);
        let plan = self
            .core
            .open_plan(
                self.now,
                &self.ids[peer as usize],
                self.digests[task as usize],
                TASK_SIZE,
            )
            .expect("open_plan");
        self.members.insert((peer, task));
        self.active.push(Active {
            peer,
            task,
            plan,
            reported: 0,
        });
        self.active.len() - 1
    }

    /// Download `i` reports its next piece (the hash is known from the
    /// holders' join, so none is sent).
    fn report_next(&mut self, i: usize) {
        let a = &mut self.active[i];
        let piece = PieceDone {
            index: a.reported,
            hash: None,
        };
        a.reported += 1;
        self.core
            .report_pieces(
                self.now,
                &self.ids[a.peer as usize],
                self.digests[a.task as usize],
                &[piece],
            )
            .expect("report_pieces");
    }

    /// Workload 1: a new download of a random task opens a plan (ranked at
    /// once), then closes it. Returns the `open_plan` latency.
    fn open_close(&mut self) -> Duration {
        let task = self.rng.random_range(0..self.scale.tasks);
        let peer = self.free_peer(task);
        let (id, digest) = (&self.ids[peer as usize], self.digests[task as usize]);
        let start = Instant::now();
        let plan = self
            .core
            .open_plan(self.now, id, digest, TASK_SIZE)
            .expect("open_plan");
        black_box(self.core.drain_effects());
        let latency = start.elapsed();
        // A cancelled download with no pieces leaves nothing behind.
        self.core.close_plan(self.now, plan);
        black_box(self.core.drain_effects());
        latency
    }

    /// Workload 2: a random download reports its next piece and the core
    /// flushes. A download that got its last piece completes, leaves the task
    /// and is replaced by a new one on the same task (whose plan is ranked at
    /// once), so there are always `downloads` per task.
    fn report_flush(&mut self) {
        let i = self.rng.random_range(0..self.active.len());
        self.report_next(i);
        let a = &self.active[i];
        if a.reported == self.pieces {
            let (peer, task, plan) = (a.peer, a.task, a.plan);
            let (id, digest) = (&self.ids[peer as usize], self.digests[task as usize]);
            self.core
                .task_complete(self.now, id, digest)
                .expect("task_complete");
            self.core.close_plan(self.now, plan);
            self.core
                .task_evicted(self.now, id, digest)
                .expect("task_evicted");
            self.members.remove(&(peer, task));
            self.active.swap_remove(i);
            self.open_download(task);
        }
        self.core.flush();
        black_box(self.core.drain_effects());
    }

    fn decisions(&self) -> u64 {
        self.core.stats().plan_decisions
    }
}

/// Latencies of one plain loop, in nanoseconds.
struct Latencies {
    name: &'static str,
    ns: Vec<u64>,
    total: Duration,
    decisions: u64,
}

impl Latencies {
    fn percentile_us(&self, p: f64) -> f64 {
        let mut v = self.ns.clone();
        v.sort_unstable();
        let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx] as f64 / 1_000.0
    }

    fn ops(&self) -> usize {
        self.ns.len()
    }

    fn decisions_per_sec(&self) -> f64 {
        self.decisions as f64 / self.total.as_secs_f64()
    }

    fn print(&self) {
        self.print_with("");
    }

    fn print_with(&self, extra: &str) {
        println!(
            "{}: {extra} ops={} decisions={} decisions_per_op={:.3} ops_per_sec={:.0} decisions_per_sec={:.0} \
             p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
            self.name,
            self.ops(),
            self.decisions,
            self.decisions as f64 / self.ops() as f64,
            self.ops() as f64 / self.total.as_secs_f64(),
            self.decisions_per_sec(),
            self.percentile_us(0.50),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.percentile_us(1.0),
        );
    }
}

/// Plain loop of workload 1. The latency recorded is `open_plan` plus the
/// drain of its effects (the decision); the rate counts the whole loop,
/// close and eviction included.
fn plain_open_close(swarm: &mut Swarm) -> Latencies {
    let n = swarm.scale.ops;
    let mut ns = Vec::with_capacity(n);
    let before = swarm.decisions();
    let start = Instant::now();
    for _ in 0..n {
        ns.push(swarm.open_close().as_nanos() as u64);
    }
    Latencies {
        name: "open_plan+close_plan",
        ns,
        total: start.elapsed(),
        decisions: swarm.decisions() - before,
    }
}

/// Plain loop of workload 2; the latency is the whole operation.
fn plain_report_flush(swarm: &mut Swarm) -> Latencies {
    let n = swarm.scale.ops;
    let mut ns = Vec::with_capacity(n);
    let before = swarm.decisions();
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        swarm.report_flush();
        ns.push(t.elapsed().as_nanos() as u64);
    }
    Latencies {
        name: "report_pieces+flush",
        ns,
        total: start.elapsed(),
        decisions: swarm.decisions() - before,
    }
}

/// Workload 1 without the eviction: every cancelled download leaves an empty
/// holding behind. Prints how the latency and the RSS move as they pile up.
fn stale_holdings(swarm: &mut Swarm) {
    let n = swarm.scale.ops;
    let mut ns = Vec::with_capacity(n);
    let rss_before = rss_bytes().unwrap_or(0);
    for _ in 0..n {
        let task = swarm.rng.random_range(0..swarm.scale.tasks);
        let peer = swarm.free_peer(task);
        let (id, digest) = (&swarm.ids[peer as usize], swarm.digests[task as usize]);
        let start = Instant::now();
        let plan = swarm
            .core
            .open_plan(swarm.now, id, digest, TASK_SIZE)
            .expect("open_plan");
        black_box(swarm.core.drain_effects());
        ns.push(start.elapsed().as_nanos() as u64);
        swarm.core.close_plan(swarm.now, plan);
        black_box(swarm.core.drain_effects());
    }
    let rss_growth = rss_bytes().unwrap_or(0).saturating_sub(rss_before);
    let tenth = (n / 10).max(1);
    let p50 = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1_000.0
    };
    println!(
        "open_plan+close_plan without eviction: ops={n} empty_holdings_left~{n} (~{} per task) \
         open_plan_p50_us first_tenth={:.1} last_tenth={:.1} rss_growth={} B ({:.0} B per op)",
        n / swarm.scale.tasks as usize,
        p50(&ns[..tenth]),
        p50(&ns[n - tenth..]),
        rss_growth,
        rss_growth as f64 / n as f64,
    );
}

/// `flush` with nothing dirty: the floor every flush pays.
fn idle_flush_us(swarm: &mut Swarm) -> f64 {
    swarm.core.flush();
    swarm.core.drain_effects();
    let n = 1_000;
    let start = Instant::now();
    for _ in 0..n {
        swarm.core.flush();
    }
    black_box(swarm.core.drain_effects());
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Child slots the core counts (`children_of`, summed over peers) against
/// parents actually offered (summed over every download's parent set), and
/// peers at the child cap. The first two should be equal.
fn child_slots(swarm: &Swarm) -> (u64, u64, usize) {
    let counted: Vec<u32> = swarm
        .ids
        .iter()
        .map(|id| swarm.core.children_of(id).unwrap_or(0))
        .collect();
    let offered: usize = swarm
        .core
        .tasks(swarm.now)
        .iter()
        .filter_map(|t| swarm.core.task(swarm.now, &t.digest))
        .map(|d| d.holders.iter().map(|h| h.parents.len()).sum::<usize>())
        .sum();
    let cap = swarm.core.config().max_children_per_parent;
    (
        counted.iter().map(|&c| u64::from(c)).sum(),
        offered as u64,
        counted.iter().filter(|&&c| c >= cap).count(),
    )
}

fn print_child_slots(swarm: &Swarm, when: &str) {
    let (counted, offered, at_cap) = child_slots(swarm);
    println!("child slots {when}: counted={counted} offered={offered} peers_at_cap={at_cap}");
}

/// What the operator view shows of a task's downloads: how many there are,
/// how many have a full parent set, and how many are starved (no parent is
/// complete or holds the piece the child needs next; in this bench every
/// peer holds a prefix of the pieces, so "next" is its piece count).
fn starvation(swarm: &Swarm, task: u32) -> (usize, usize, usize) {
    let detail = swarm
        .core
        .task(swarm.now, &swarm.digests[task as usize])
        .expect("task");
    let by_peer: std::collections::HashMap<&str, (u32, bool)> = detail
        .holders
        .iter()
        .map(|h| (h.peer.as_str(), (h.pieces, h.complete)))
        .collect();
    let downloads: Vec<_> = detail.holders.iter().filter(|h| h.downloading).collect();
    let full = downloads.iter().filter(|h| h.parents.len() == 4).count();
    let starved = downloads
        .iter()
        .filter(|h| {
            !h.parents.iter().any(|p| {
                by_peer
                    .get(p.as_str())
                    .is_some_and(|&(pieces, complete)| complete || pieces > h.pieces)
            })
        })
        .count();
    (downloads.len(), full, starved)
}

/// One popular task on top of the state: `holders` complete holders and
/// `downloads` downloads at once (an image rolled out to part of the
/// cluster). Prints the `open_plan` latency while it fills up and the piece
/// report + flush latency once it is full, then removes the task again.
fn hot_task(swarm: &mut Swarm, downloads: u32, reports: usize) {
    let task = swarm.digests.len() as u32;
    swarm.digests.push(digest_of(task));
    let digest = swarm.digests[task as usize];
    let pieces = swarm.pieces;
    let mut holders = Vec::new();
    for _ in 0..swarm.scale.holders {
        let p = swarm.free_peer(task);
        let held = HeldTask {
            digest,
            size: TASK_SIZE,
            piece_hashes: (0..pieces).map(|i| piece_hash(task, i)).collect(),
        };
        // A re-join from the same address keeps what the peer had.
        swarm
            .core
            .join(swarm.now, peer_info(p), vec![held])
            .expect("re-join");
        swarm.members.insert((p, task));
        holders.push(p);
    }
    let before = swarm.decisions();
    let start = Instant::now();
    let mut ns = Vec::new();
    let mut hot = Vec::new();
    for _ in 0..downloads {
        let t = Instant::now();
        hot.push(swarm.open_download(task));
        black_box(swarm.core.drain_effects());
        ns.push(t.elapsed().as_nanos() as u64);
    }
    Latencies {
        name: "hot task open_plan (filling up)",
        ns,
        total: start.elapsed(),
        decisions: swarm.decisions() - before,
    }
    .print_with(&format!("downloads={downloads}"));

    let n = reports.min(hot.len() * (pieces as usize - 1) / 2);
    let mut ns = Vec::with_capacity(n);
    let before = swarm.decisions();
    let start = Instant::now();
    while ns.len() < n {
        let i = hot[swarm.rng.random_range(0..hot.len())];
        if swarm.active[i].reported + 1 >= pieces {
            continue;
        }
        let t = Instant::now();
        swarm.report_next(i);
        swarm.core.flush();
        black_box(swarm.core.drain_effects());
        ns.push(t.elapsed().as_nanos() as u64);
    }
    let (open, full, starved) = starvation(swarm, task);
    Latencies {
        name: "hot task report_pieces+flush",
        ns,
        total: start.elapsed(),
        decisions: swarm.decisions() - before,
    }
    .print_with(&format!(
        "downloads={open} with_4_parents={full} starved={starved}"
    ));

    // Remove the task again so the next one starts from the same state.
    for i in hot.into_iter().rev() {
        let a = swarm.active.swap_remove(i);
        swarm.core.close_plan(swarm.now, a.plan);
        // Refused when the download got no piece: close_plan already forgot it.
        let _ = swarm
            .core
            .task_evicted(swarm.now, &swarm.ids[a.peer as usize], digest);
        swarm.members.remove(&(a.peer, task));
    }
    for p in holders {
        swarm
            .core
            .task_evicted(swarm.now, &swarm.ids[p as usize], digest)
            .expect("evict");
        swarm.members.remove(&(p, task));
    }
    swarm.core.drain_effects();
}

fn criterion_benches(c: &mut Criterion, swarm: &mut Swarm) {
    let mut group = c.benchmark_group("scheduler_core");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(1));
    group.bench_function("open_plan+close_plan", |b| {
        b.iter(|| swarm.open_close());
    });
    group.bench_function("report_pieces+flush", |b| {
        b.iter(|| swarm.report_flush());
    });
    group.finish();
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// In a child process: builds the state and prints how much it grew the RSS.
fn rss_child(spec: &str, base: Scale) {
    let (h, d) = spec.split_once(':').expect("holders:downloads");
    let scale = Scale {
        holders: h.parse().expect("holders"),
        downloads: d.parse().expect("downloads"),
        ..base
    };
    let before = rss_bytes().expect("VmRSS");
    let swarm = Swarm::build(scale);
    let after = rss_bytes().expect("VmRSS");
    black_box(&swarm);
    println!("rss_growth={}", after.saturating_sub(before));
}

/// Runs this binary as a child that builds the state with `holders` and
/// `downloads` per task; returns its RSS growth in bytes.
fn rss_of(holders: u32, downloads: u32) -> Option<i64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .env(RSS_CHILD_ENV, format!("{holders}:{downloads}"))
        .args(std::env::args().skip(1))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("rss_growth=")?.parse().ok())
}

struct Memory {
    bytes_per_holding: f64,
    bytes_per_download: f64,
}

fn measure_memory(scale: Scale) -> Option<Memory> {
    let (h, d) = (scale.holders, scale.downloads);
    let base = rss_of(h, d)?;
    let more_holders = rss_of(2 * h, d)?;
    let more_downloads = rss_of(h, 3 * d)?;
    let tasks = scale.tasks as f64;
    println!(
        "rss: state(holders={h},downloads={d})={base} B, (holders={},downloads={d})={more_holders} B, \
         (holders={h},downloads={})={more_downloads} B",
        2 * h,
        3 * d
    );
    Some(Memory {
        bytes_per_holding: (more_holders - base) as f64 / (h as f64 * tasks),
        bytes_per_download: (more_downloads - base) as f64 / (2.0 * d as f64 * tasks),
    })
}

fn print_sizes() {
    println!(
        "size_of: PeerId={} Digest={} PieceSet={} (+{} B heap for 16 pieces) PieceDone={} PlanUpdate={} Effect={} PeerInfo={}",
        size_of::<PeerId>(),
        size_of::<Digest>(),
        size_of::<PieceSet>(),
        PieceSet::new(16).heap_bytes(),
        size_of::<PieceDone>(),
        size_of::<PlanUpdate>(),
        size_of::<Effect>(),
        size_of::<PeerInfo>(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The same rule criterion uses: without `--bench` (or with `--test`) this
    // is `cargo test --benches`, so only smoke-test.
    let smoke = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
    let scale = if smoke { SMOKE } else { FULL };
    if let Ok(spec) = std::env::var(RSS_CHILD_ENV) {
        rss_child(&spec, scale);
        return;
    }

    let start = Instant::now();
    let mut swarm = Swarm::build(scale);
    let (peers, tasks, plans) = swarm.core.sizes();
    println!(
        "scheduler-core: built peers={peers} tasks={tasks} open_plans={plans} holders_per_task={} in {:.2} s",
        scale.holders,
        start.elapsed().as_secs_f64()
    );

    print_child_slots(&swarm, "after build");
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &mut swarm);
    c.final_summary();
    print_child_slots(&swarm, "after criterion");
    assert_eq!(swarm.core.sizes(), (peers, tasks, plans), "state drifted");

    // Each plain loop and the popular tasks start from a fresh state, so that
    // none inherits the child slots the previous one leaked (see the docs).
    let mut swarm = Swarm::build(scale);
    let open = plain_open_close(&mut swarm);
    open.print();
    print_child_slots(&swarm, "after open_plan+close_plan");
    let mut swarm = Swarm::build(scale);
    let report = plain_report_flush(&mut swarm);
    report.print();
    print_child_slots(&swarm, "after report_pieces+flush");
    println!("flush (nothing dirty): {:.1} us", idle_flush_us(&mut swarm));
    let mut swarm = Swarm::build(scale);
    stale_holdings(&mut swarm);
    let mut swarm = Swarm::build(scale);
    for downloads in [scale.peers / 100, scale.peers / 30, scale.peers / 10] {
        hot_task(&mut swarm, downloads, if smoke { 50 } else { 300 });
    }
    print_child_slots(&swarm, "after the popular tasks");
    print_sizes();
    let memory = measure_memory(scale);
    match &memory {
        Some(m) => println!(
            "memory: bytes_per_holding={:.0} bytes_per_download={:.0}",
            m.bytes_per_holding, m.bytes_per_download
        ),
        None => println!("memory: not measured (no /proc/self/status?)"),
    }
    println!(
        "scheduler-core: peers={peers} tasks={tasks} decisions_per_sec={:.0} p50_us={:.1} p99_us={:.1} max_us={:.1} \
         report_flush_p99_us={:.1} bytes_per_holding={} bytes_per_download={}",
        open.decisions_per_sec(),
        open.percentile_us(0.50),
        open.percentile_us(0.99),
        open.percentile_us(1.0),
        report.percentile_us(0.99),
        memory
            .as_ref()
            .map_or("n/a".to_string(), |m| format!("{:.0}", m.bytes_per_holding)),
        memory.as_ref().map_or("n/a".to_string(), |m| format!(
            "{:.0}",
            m.bytes_per_download
        )),
    );
}
