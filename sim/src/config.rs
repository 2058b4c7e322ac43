//! What a simulation run is: the swarm's size, the blob, the links and the knobs of
//! the real cores it drives.

use std::time::Duration;

use shoal_peer::engine::PlannerConfig;
use shoal_scheduler::core::CoreConfig;

use crate::server::Policy;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes.
    pub peers: usize,
    /// Blob size in bytes.
    pub size: u64,
    /// Line rate of a full-rate node, bytes/s, up and down.
    pub rate: f64,
    /// Fraction of the nodes whose links run at `slow_factor` × `rate`.
    pub slow_fraction: f64,
    /// Rate factor of the slow nodes.
    pub slow_factor: f64,
    /// The registry's uplink, bytes/s.
    pub registry_rate: f64,
    /// Link bytes per payload byte of a piece between peers (QUIC: packet headers,
    /// the AEAD tag, frame headers, and the acknowledgements folded in); 1.0 leaves
    /// framing out. Measured on `shoal-bench-swarm`'s links: 1.061.
    pub peer_framing: f64,
    /// The same for the blob's body from the registry (HTTP over TCP); measured:
    /// 1.046 alone, 1.053 at a back-to-source peer that also uploads.
    pub upstream_framing: f64,
    /// One-way latency of every message.
    pub latency: Duration,
    /// Time step.
    pub step: Duration,
    /// The scheduler's plan interval (its flush).
    pub plan_interval: Duration,
    /// How a parent answers what it cannot serve at once.
    pub policy: Policy,
    /// Upload slots per node.
    pub upload_slots: usize,
    /// The planner's knobs (the peer's defaults).
    pub planner: PlannerConfig,
    /// Parents per plan (the scheduler's `max_parents`, default 8).
    pub max_parents: usize,
    /// Downloads one peer serves at once (the scheduler's `max_children_per_parent`,
    /// default 8).
    pub max_children: u32,
    /// Seed of everything random (join order, slow nodes, the cores' and the
    /// scheduler's tie-breaks).
    pub seed: u64,
    /// Simulated time after which the run gives up.
    pub max_time: Duration,
    /// Print a progress line to stderr every 10 simulated seconds.
    pub progress: bool,
    /// The nodes declare no link rate (`--link-rate unknown`): the scheduler then
    /// elects the first node to open its plan back-to-source, slow or not. By
    /// default each declares its own rate, as `--link-rate auto` does.
    pub undeclared_rates: bool,
    /// A slow node opens its plan first, alone, and the others this much later
    /// (the pull a faster-source wait cannot cover: the scheduler elects the slow
    /// node, then hands over to a fast one). `None`: all at one instant.
    pub slow_first_by: Option<Duration>,
    /// The scheduler's `hand_over_ratio` (0: never hand over).
    pub hand_over_ratio: f64,
    /// Model variant (not what the code does): while it streams from upstream, the
    /// back-to-source peer pushes each new piece to one child (round robin) as soon
    /// as it has it, with no request, and answers every request `BUSY`: its uplink
    /// carries first copies only, each at once (`docs/benchmarks.md`, "The source
    /// pushes each new piece").
    pub push: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            peers: 8,
            size: 256 << 20,
            rate: 100e6 / 8.0,
            slow_fraction: 0.0,
            slow_factor: 0.5,
            registry_rate: 100e6 / 8.0,
            peer_framing: 1.0,
            upstream_framing: 1.0,
            latency: Duration::from_micros(200),
            step: Duration::from_millis(5),
            plan_interval: Duration::from_millis(100),
            policy: Policy::Busy,
            upload_slots: 8,
            planner: PlannerConfig::default(),
            max_parents: CoreConfig::default().max_parents,
            max_children: CoreConfig::default().max_children_per_parent,
            seed: 1,
            max_time: Duration::from_secs(3600),
            progress: false,
            undeclared_rates: false,
            slow_first_by: None,
            hand_over_ratio: CoreConfig::default().hand_over_ratio,
            push: false,
        }
    }
}
