//! The swarm: N nodes that all start pulling one blob at the same instant (or a
//! slow one first: `Config::slow_first_by`), each a
//! real [`DownloadCore`] driven as `peer/src/engine/driver.rs` drives it, against
//! the real [`Scheduler`] flushed every plan interval; bytes move over [`Links`].
//!
//! Modelled: per-node uplink and downlink rates (a fraction of the nodes slower),
//! the registry's uplink, a one-way latency on every message (requests, `BUSY`,
//! `NOT_FOUND`, a piece's last byte, the child's acknowledgement that frees the
//! parent's slot, the first byte from upstream); the parent's upload rules
//! ([`crate::server`]); the planner's limits (requests in flight per download and
//! per parent, the `BUSY` backoff, the rarest-first window), the driver's 200 ms tick
//! and its wake-up when a `BUSY` backoff ends or a piece or plan arrives; the
//! scheduler's plan interval. The reader (containerd) reads every piece as soon as
//! it is contiguous.
//!
//! Not modelled: CPU (hashing, TLS, copies), disk, congestion control (slow start,
//! loss, Cubic's sawtooth: a flow gets its fair share at once), QUIC flow-control
//! windows, the latency between peers and the scheduler (reports and plans reach
//! the other side within the step), the time between time steps: flows start and
//! end on step boundaries, so a flow that ends within a step leaves its share of the
//! links unused for the rest of it, a cost of up to a step per piece that a finer
//! step removes (`docs/benchmarks.md`, "The model's time step"). The messages a
//! step's polls send, and the polls their answers wake, are handled within the step,
//! as a latency far below it allows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use shoal_peer::engine::{Action, DownloadCore};
use shoal_proto::{Digest, PieceSet, TaskShape};
use shoal_scheduler::core::{CoreConfig, Effect, PeerId, PlanId, PlanOpening, Scheduler};

pub use crate::config::Config;
use crate::link::Links;
pub use crate::outcome::{NodeResult, Outcome};
use crate::server::{Request, Server};
use crate::wiring;

mod progress;
mod transfer;

/// The driver's tick (`peer/src/engine/driver.rs`, `TICK`).
pub const DRIVER_TICK: Duration = Duration::from_millis(200);
/// At most this many rounds of messages and polls within one step (a bound on a
/// chain of `BUSY` answers and requests elsewhere).
const IN_STEP_ROUNDS: usize = 16;
/// How often a node heartbeats the scheduler here (well within its peer TTL).
const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Msg {
    /// A piece request reaches the parent.
    Request { parent: usize, req: Request },
    /// The parent's answer (`BUSY`, `NOT_FOUND`) reaches the child.
    Refused {
        child: usize,
        parent: usize,
        index: u32,
        busy: bool,
    },
    /// A piece's last byte reaches the child.
    Piece {
        child: usize,
        parent: usize,
        index: u32,
    },
    /// The child's acknowledgement reaches the parent: its slot is free.
    Acked { parent: usize, req: Request },
    /// Upstream's first byte reaches the node.
    UpstreamStart { node: usize, piece: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Flow {
    Piece {
        parent: usize,
        child: usize,
        index: u32,
        left: f64,
    },
    Upstream {
        node: usize,
        index: u32,
        left: f64,
    },
}

impl Flow {
    fn left(&mut self) -> &mut f64 {
        match self {
            Flow::Piece { left, .. } | Flow::Upstream { left, .. } => left,
        }
    }
}

struct Node {
    id: PeerId,
    down: f64,
    core: DownloadCore,
    plan: Option<PlanId>,
    stored: PieceSet,
    server: Server,
    next_poll: Duration,
    wake: bool,
    /// Tells upstream's size before the first piece.
    upstream_sized: bool,
    source: bool,
    /// When it opened its plan (`None`: not yet; it does nothing before).
    opened_at: Option<Duration>,
    /// Its upstream stream runs (the real driver's `Seeding` mark).
    seeding: bool,
    done_at: Option<Duration>,
}

/// The simulation.
pub struct Swarm {
    cfg: Config,
    sched: Scheduler,
    start: Instant,
    t: Duration,
    digest: Digest,
    shape: TaskShape,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    by_id: HashMap<PeerId, usize>,
    links: Links,
    flows: Vec<Flow>,
    msgs: BTreeMap<(Duration, u64), Msg>,
    seq: u64,
    upstream_bytes: u64,
    refused_reports: u64,
    /// Nodes whose plans open at `later_at` (`Config::slow_first_by`).
    later: Vec<usize>,
    later_at: Duration,
    /// Variant `Config::push`: pieces pushed that have not arrived, (child, index),
    /// and the next child in the round.
    pushed: HashSet<(usize, u32)>,
    push_next: usize,
}

/// The true hash of piece `i` (the simulation's content).
fn piece_hash(i: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&i.to_be_bytes());
    h[31] = 0x5A;
    h
}

impl Swarm {
    /// A swarm as `cfg` says; nothing has happened yet.
    pub fn new(cfg: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(cfg.peers >= 1, "at least one peer");
        anyhow::ensure!(
            cfg.rate > 0.0 && cfg.registry_rate > 0.0,
            "rates must be positive"
        );
        anyhow::ensure!(
            (1.0..=2.0).contains(&cfg.peer_framing) && (1.0..=2.0).contains(&cfg.upstream_framing),
            "framing must be between 1.0 (none) and 2.0 link bytes per payload byte"
        );
        anyhow::ensure!(!cfg.step.is_zero(), "the time step must be positive");
        let shape = TaskShape::for_size(cfg.size)?;
        anyhow::ensure!(shape.piece_count() > 0, "the blob is empty");
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..cfg.peers).collect();
        order.shuffle(&mut rng);
        // The slow nodes: drawn apart from the order the plans open in (so the
        // first to open is slow as often as any other).
        let mut by_rate: Vec<usize> = (0..cfg.peers).collect();
        by_rate.shuffle(&mut rng);
        let slow = (cfg.slow_fraction * cfg.peers as f64).round() as usize;
        let mut rates = vec![cfg.rate; cfg.peers];
        for &n in &by_rate[..slow.min(cfg.peers)] {
            rates[n] = cfg.rate * cfg.slow_factor;
        }
        let start = Instant::now();
        let digest = Digest::from_sha256([7; 32]);
        let mut nodes = Vec::with_capacity(cfg.peers);
        let mut by_addr = HashMap::new();
        let mut by_id = HashMap::new();
        // Links: uplinks 0..n, downlinks n..2n, the registry's uplink 2n.
        let mut capacity = rates.clone();
        capacity.extend(&rates);
        capacity.push(cfg.registry_rate);
        for (n, &rate) in rates.iter().enumerate() {
            let id = PeerId::parse(&format!("node-{n:05}")).map_err(anyhow::Error::msg)?;
            by_addr.insert(wiring::node_addr(n), n);
            by_id.insert(id.clone(), n);
            nodes.push(Node {
                id,
                down: rate,
                core: DownloadCore::new(
                    digest,
                    cfg.planner.clone(),
                    cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n as u64,
                    start,
                ),
                plan: None,
                stored: PieceSet::new(0),
                server: Server::new(cfg.policy, cfg.upload_slots),
                next_poll: Duration::ZERO,
                wake: true,
                upstream_sized: false,
                source: false,
                opened_at: None,
                seeding: false,
                done_at: None,
            });
        }
        let mut swarm = Swarm {
            sched: Scheduler::new(CoreConfig {
                seed: cfg.seed,
                max_parents: cfg.max_parents,
                max_children_per_parent: cfg.max_children,
                hand_over_ratio: cfg.hand_over_ratio,
                ..CoreConfig::default()
            }),
            cfg,
            start,
            t: Duration::ZERO,
            digest,
            shape,
            nodes,
            by_addr,
            by_id,
            links: Links::new(capacity),
            flows: Vec::new(),
            msgs: BTreeMap::new(),
            seq: 0,
            upstream_bytes: 0,
            refused_reports: 0,
            later: Vec::new(),
            later_at: Duration::ZERO,
            pushed: HashSet::new(),
            push_next: 0,
        };
        // Every node joins (the DaemonSet's peers are up before a rollout), then
        // every node opens its plan at the same instant, in random order (or, with
        // `slow_first_by`, a slow node alone and the others that much later).
        let now = swarm.now();
        for n in order.iter().copied() {
            let node = &swarm.nodes[n];
            let mbps = if swarm.cfg.undeclared_rates {
                0
            } else {
                (rates[n] * 8.0 / 1e6).round() as u32
            };
            let info = wiring::peer_info(&node.id, n, wiring::node_addr(n), mbps);
            swarm.sched.join(now, info, vec![])?;
            swarm.sched.session_opened(now, &node.id)?;
        }
        let mut first = order;
        if let Some(by) = swarm.cfg.slow_first_by {
            let slow = first
                .iter()
                .position(|&n| rates[n] < swarm.cfg.rate)
                .ok_or_else(|| anyhow::anyhow!("a slow node first needs --slow-fraction"))?;
            let node = first.remove(slow);
            swarm.later = std::mem::replace(&mut first, vec![node]);
            swarm.later_at = by;
        }
        swarm.open_plans(&first)?;
        Ok(swarm)
    }

    /// Opens the plans of `nodes`, in that order, now.
    fn open_plans(&mut self, nodes: &[usize]) -> anyhow::Result<()> {
        let now = self.now();
        for &n in nodes {
            let id = self.nodes[n].id.clone();
            let plan = self.sched.open_plan(now, &id, self.digest, 0)?;
            let node = &mut self.nodes[n];
            node.plan = Some(plan);
            node.opened_at = Some(self.t);
            node.core.plan_opened();
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        self.start + self.t
    }

    fn send(&mut self, at: Duration, msg: Msg) {
        self.seq += 1;
        self.msgs.insert((at, self.seq), msg);
    }

    /// Runs until every node holds the blob or `max_time` passed.
    pub fn run(mut self) -> Outcome {
        let mut next_flush = Duration::ZERO;
        let mut next_heartbeat = HEARTBEAT;
        let mut left = self.nodes.len();
        while left > 0 && self.t < self.cfg.max_time {
            if !self.later.is_empty() && self.t >= self.later_at {
                let later = std::mem::take(&mut self.later);
                if self.open_plans(&later).is_err() {
                    self.refused_reports += 1;
                }
            }
            self.handle_messages(self.t);
            if self.t >= next_heartbeat {
                next_heartbeat += HEARTBEAT;
                let now = self.now();
                for i in 0..self.nodes.len() {
                    let load = shoal_scheduler::core::Load {
                        active_uploads: self.nodes[i].server.active() as u32,
                        active_downloads: u32::from(self.nodes[i].done_at.is_none()),
                    };
                    let id = self.nodes[i].id.clone();
                    let _ = self.sched.heartbeat(now, &id, load);
                }
            }
            if self.t >= next_flush {
                next_flush += self.cfg.plan_interval;
                let now = self.now();
                self.sched.tick(now);
                self.sched.flush();
                self.deliver();
            }
            self.poll_due();
            // What the polls set off within the step: a request reaches its parent,
            // which serves it or answers `BUSY`, and the child asks elsewhere. With
            // a latency far below the step these exchanges take no step of their
            // own (before, each took one: see "The model's time step" in
            // docs/benchmarks.md).
            for _ in 0..IN_STEP_ROUNDS {
                if !self.handle_messages(self.t + self.cfg.step - Duration::from_nanos(1)) {
                    break;
                }
                self.poll_due();
            }
            self.advance_flows();
            self.t += self.cfg.step;
            left = self.nodes.iter().filter(|n| n.done_at.is_none()).count();
            if self.cfg.progress && self.t.as_millis() % 10_000 < self.cfg.step.as_millis() {
                eprintln!("{}", self.progress_line(left));
            }
        }
        Outcome {
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeResult {
                    down: n.down,
                    opened_at: n.opened_at.unwrap_or_default(),
                    done_at: n.done_at,
                    source: n.source,
                    served: n.server.served,
                    busy_answers: n.server.busy_answers,
                })
                .collect(),
            upstream_bytes: self.upstream_bytes,
            elapsed: self.t,
            refused_reports: self.refused_reports,
            pieces: self.shape.piece_count(),
        }
    }

    /// Polls every node that is due: woken, or its next poll has come.
    fn poll_due(&mut self) {
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            if node.done_at.is_none()
                && node.opened_at.is_some()
                && (node.wake || self.t >= node.next_poll)
            {
                self.poll(n);
            }
        }
    }

    /// The driver's loop body: look at the clock, carry out what the core decided.
    fn poll(&mut self, n: usize) {
        let now = self.now();
        let node = &mut self.nodes[n];
        node.wake = false;
        let reader = match node.core.have().first_missing() {
            Some(i) if node.core.shape().is_some() => {
                self.shape.piece_range(i).map_or(0, |r| r.start)
            }
            _ => 0,
        };
        node.core.poll(now, reader, true);
        self.act(n);
        let node = &mut self.nodes[n];
        let mut next = self.t + DRIVER_TICK;
        if let Some(busy) = node.core.busy_until() {
            let busy = busy.saturating_duration_since(self.start);
            next = next.min(busy.max(self.t + self.cfg.step));
        }
        node.next_poll = next;
    }

    /// Carries out node `n`'s core's actions, as the driver would.
    fn act(&mut self, n: usize) {
        let lat = self.cfg.latency;
        loop {
            let actions = self.nodes[n].core.take_actions();
            if actions.is_empty() {
                return;
            }
            let now = self.now();
            for a in actions {
                match a {
                    Action::Fetch { index, parent, .. } => {
                        let p = self.by_addr[&parent.addr];
                        let req = Request { child: n, index };
                        self.send(self.t + lat, Msg::Request { parent: p, req });
                    }
                    Action::StartUpstream { from } => {
                        let piece = self.shape.piece_at(from).unwrap_or(0);
                        self.nodes[n].source = true;
                        self.nodes[n].seeding = true;
                        self.send(self.t + lat * 2, Msg::UpstreamStart { node: n, piece });
                    }
                    Action::StopUpstream => {
                        self.nodes[n].seeding = false;
                        if let Some(i) = self
                            .flows
                            .iter()
                            .position(|f| matches!(*f, Flow::Upstream { node, .. } if node == n))
                        {
                            self.flows.swap_remove(i);
                            self.links.remove(i);
                        }
                    }
                    Action::OpenPlan {
                        size,
                        from_upstream,
                    } => {
                        let id = self.nodes[n].id.clone();
                        let opening = PlanOpening::reopen(from_upstream);
                        let r = self
                            .sched
                            .open_plan_with(now, &id, self.digest, size, opening);
                        let node = &mut self.nodes[n];
                        match r {
                            Ok(plan) => {
                                node.plan = Some(plan);
                                node.core.plan_opened();
                            }
                            Err(_) => node.core.plan_refused(now),
                        }
                    }
                    Action::ShapeKnown(shape) => {
                        let node = &mut self.nodes[n];
                        if node.stored.len() != shape.piece_count() {
                            node.stored = PieceSet::new(shape.piece_count());
                        }
                    }
                    Action::Report(r) => {
                        let id = self.nodes[n].id.clone();
                        match wiring::apply_report(&mut self.sched, now, &id, r) {
                            Ok(a) if a.ignored.is_none() => {}
                            _ => self.refused_reports += 1,
                        }
                    }
                    Action::Announce { .. } => self.refused_reports += 1,
                }
            }
        }
    }

    /// Delivers the scheduler's effects to the cores.
    fn deliver(&mut self) {
        let now = self.now();
        for effect in self.sched.drain_effects() {
            match effect {
                Effect::Plan {
                    plan, peer, update, ..
                } => {
                    let n = self.by_id[&peer];
                    let node = &mut self.nodes[n];
                    if node.plan != Some(plan) {
                        continue;
                    }
                    if node.core.on_plan(&wiring::convert(update)).is_err() {
                        self.refused_reports += 1;
                    }
                    node.wake = true;
                    self.act(n);
                }
                Effect::ClosePlan { plan, .. } => {
                    for node in self.nodes.iter_mut().filter(|x| x.plan == Some(plan)) {
                        node.plan = None;
                        if node.done_at.is_none() {
                            node.core.plan_lost(now);
                        }
                    }
                }
                Effect::Command { .. } => {}
            }
        }
    }
}
