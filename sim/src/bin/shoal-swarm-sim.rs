//! `shoal-swarm-sim`: simulates one swarm pulling one blob (see the `shoal_sim`
//! crate and `docs/benchmarks.md`, "Simulating large swarms") and prints its
//! figures, then one line in the format of `scripts/bench-swarm`:
//! `mode=sim nodes=… size=… p50_ratio=… max_ratio=… egress_ratio=…`.
//!
//! ```text
//! shoal-swarm-sim [--peers 8] [--size 256MiB] [--rate 100mbit] [--slow-fraction 0]
//!                 [--slow-factor 0.5] [--registry-rate RATE] [--latency 200us]
//!                 [--step 5ms] [--plan-interval 100ms] [--queue N] [--keep-hold] [--slots 8] [--window 256]
//!                 [--busy-backoff 100ms] [--max-per-parent 2] [--max-per-downloading-parent 1] [--max-parents 8] [--max-children 8]
//!                 [--max-in-flight 8] [--max-in-flight-at-frontier 4] [--frontier-pieces 16]
//!                 [--slow-first-by 2s] [--hand-over-ratio 2] [--show-slowest N] [--seed 1]
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shoal_peer::engine::PlannerConfig;
use shoal_sim::report::Figures;
use shoal_sim::server::Policy;
use shoal_sim::swarm::{Config, Swarm};

/// Simulates a Shoal swarm (real scheduler and peer cores, modelled links).
#[derive(Debug, Parser)]
#[command(name = "shoal-swarm-sim")]
struct Args {
    /// Nodes pulling the blob, all at the same instant.
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Blob size (B, KiB, MiB, GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    size: u64,
    /// Line rate of a node, up and down (`100mbit`, `1gbit`, `12500000` bytes/s… as bits: kbit, mbit, gbit).
    #[arg(long, default_value = "100mbit", value_parser = parse_rate)]
    rate: f64,
    /// Fraction of the nodes whose links are slower (by --slow-factor).
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// Rate factor of the slow nodes.
    #[arg(long, default_value_t = 0.5)]
    slow_factor: f64,
    /// The registry's uplink (default: --rate).
    #[arg(long, value_parser = parse_rate)]
    registry_rate: Option<f64>,
    /// Link bytes per payload byte between peers (QUIC's headers and acknowledgements;
    /// 1.0: none). `shoal-bench-swarm`'s links measure 1.061 at 1,500-byte frames.
    #[arg(long, default_value_t = 1.0)]
    peer_framing: f64,
    /// Link bytes per payload byte from the registry (HTTP over TCP; 1.0: none).
    /// Measured: 1.046 alone, 1.053 at a back-to-source peer that also uploads.
    #[arg(long, default_value_t = 1.0)]
    upstream_framing: f64,
    /// One-way latency of every message (`200us`, `1ms`).
    #[arg(long, default_value = "200us", value_parser = parse_duration)]
    latency: Duration,
    /// Time step of the simulation.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    step: Duration,
    /// The scheduler's plan interval.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    plan_interval: Duration,
    /// Model variant (a prediction, not what the code does): parents queue up to N
    /// requests instead of answering BUSY, without the per-piece hold (issue 17, item 1).
    #[arg(long)]
    queue: Option<usize>,
    /// With --queue: keep the per-piece hold (BUSY for a piece on its way to another
    /// child); only requests that lack a slot queue.
    #[arg(long)]
    keep_hold: bool,
    /// Upload slots per node (the peer's default is 8).
    #[arg(long, default_value_t = 8)]
    slots: usize,
    /// The planner's rarest-first window (the peer's default).
    #[arg(long, default_value_t = PlannerConfig::default().window)]
    window: u32,
    /// The planner's BUSY backoff (the peer's default is 100 ms).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    busy_backoff: Duration,
    /// The planner's requests in flight to one complete parent (the peer's default is 2).
    #[arg(long, default_value_t = 2)]
    max_per_parent: usize,
    /// The planner's requests in flight for one download (the peer's default).
    #[arg(long, default_value_t = PlannerConfig::default().max_in_flight)]
    max_in_flight: usize,
    /// The planner's requests in flight near the swarm's frontier (the peer's
    /// default; the value of --max-in-flight turns the frontier limit off).
    #[arg(long, default_value_t = PlannerConfig::default().max_in_flight_at_frontier)]
    max_in_flight_at_frontier: usize,
    /// The planner's frontier: fewer than this many pieces on their way or to be had
    /// (the peer's default).
    #[arg(long, default_value_t = PlannerConfig::default().frontier_pieces)]
    frontier_pieces: usize,
    /// The planner's requests in flight to one parent still downloading (the peer's
    /// default is 1).
    #[arg(long, default_value_t = 1)]
    max_per_downloading_parent: usize,
    /// Parents per plan (the scheduler's default is 8).
    #[arg(long, default_value_t = 8)]
    max_parents: usize,
    /// Downloads one peer serves at once (the scheduler's default is 8).
    #[arg(long, default_value_t = 8)]
    max_children: u32,
    /// Print progress to stderr every 10 simulated seconds: nodes complete, flows, how
    /// busy the uplinks are, and the pieces the source and the others hold.
    #[arg(long)]
    progress: bool,
    /// The nodes declare no link rate (as `--link-rate unknown`): the first node
    /// to open its plan is elected back-to-source, slow or not.
    #[arg(long)]
    undeclared_rates: bool,
    /// A slow node opens its plan first, alone, and the others this much later
    /// (`2s`): the scheduler elects the slow node, then hands the blob over to a
    /// fast one. Needs --slow-fraction.
    #[arg(long, value_parser = parse_duration)]
    slow_first_by: Option<Duration>,
    /// The scheduler's --hand-over-ratio (0: never hand over).
    #[arg(long, default_value_t = shoal_scheduler::core::CoreConfig::default().hand_over_ratio)]
    hand_over_ratio: f64,
    /// Model variant (a prediction, not what the code does): while it streams from
    /// upstream, the back-to-source peer pushes each new piece to one child, round
    /// robin, as soon as it has it, and answers every request `BUSY`.
    #[arg(long)]
    push: bool,
    /// Print the N nodes slowest against their own link (when each opened and
    /// finished, its rate, whether it fetched from upstream, what it served).
    #[arg(long, default_value_t = 0)]
    show_slowest: usize,
    /// Seed: same seed and flags, same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a size like 256MiB"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => bail!("{s:?}: the unit must be B, KiB, MiB or GiB"),
    };
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .with_context(|| format!("{s:?} is out of range"))
}

/// A rate in bits/s (`kbit`, `mbit`, `gbit`, or none: bits/s) → bytes/s.
fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a rate like 100mbit"))?;
    let mult = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => bail!("{s:?}: the unit must be bit, kbit, mbit or gbit"),
    };
    let bytes = n * mult / 8.0;
    if !(bytes.is_finite() && bytes > 0.0) {
        bail!("{s:?}: the rate must be positive");
    }
    Ok(bytes)
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 5ms"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => bail!("{s:?}: the unit must be us, ms or s"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("{s:?} is out of range"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-swarm-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> anyhow::Result<()> {
    let factor_ok = a.slow_factor > 0.0 && a.slow_factor <= 1.0;
    if !(0.0..=1.0).contains(&a.slow_fraction) || !factor_ok {
        bail!("--slow-fraction must be in [0, 1] and --slow-factor in (0, 1]");
    }
    let cfg = Config {
        peers: a.peers,
        size: a.size,
        rate: a.rate,
        slow_fraction: a.slow_fraction,
        slow_factor: a.slow_factor,
        registry_rate: a.registry_rate.unwrap_or(a.rate),
        peer_framing: a.peer_framing,
        upstream_framing: a.upstream_framing,
        latency: a.latency,
        step: a.step,
        plan_interval: a.plan_interval,
        policy: match (a.queue, a.keep_hold) {
            (None, _) => Policy::Busy,
            (Some(n), false) => Policy::Queue(n),
            (Some(n), true) => Policy::QueueKeepHold(n),
        },
        upload_slots: a.slots,
        progress: a.progress,
        undeclared_rates: a.undeclared_rates,
        slow_first_by: a.slow_first_by,
        hand_over_ratio: a.hand_over_ratio,
        push: a.push,
        planner: PlannerConfig {
            window: a.window,
            busy_backoff: a.busy_backoff,
            max_per_parent: a.max_per_parent,
            max_in_flight: a.max_in_flight,
            max_in_flight_at_frontier: a.max_in_flight_at_frontier,
            frontier_pieces: a.frontier_pieces,
            max_per_downloading_parent: a.max_per_downloading_parent,
            ..PlannerConfig::default()
        },
        max_parents: a.max_parents,
        max_children: a.max_children,
        seed: a.seed,
        ..Config::default()
    };
    println!("{cfg:?}");
    if cfg.undeclared_rates {
        println!("the nodes declare no link rate: the first to open its plan is the source");
    }
    if cfg.policy != Policy::Busy {
        println!(
            "MODEL VARIANT (a prediction, not what the code does): {:?}",
            cfg.policy
        );
    }
    let wall = Instant::now();
    let cpu = cpu_secs();
    let outcome = Swarm::new(cfg)?.run();
    let figures = Figures::of(&outcome, a.size);
    println!(
        "simulated {:.1} s in {:.1} s wall, {:.1} s CPU",
        outcome.elapsed.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        cpu_secs() - cpu
    );
    if outcome.refused_reports > 0 {
        println!(
            "warning: {} reports or plans were refused",
            outcome.refused_reports
        );
    }
    println!("{}", figures.summary());
    for line in shoal_sim::report::slowest(&outcome, a.size, a.show_slowest) {
        println!("{line}");
    }
    println!("{}", figures.line());
    if figures.completed < figures.nodes {
        bail!(
            "{} nodes did not complete",
            figures.nodes - figures.completed
        );
    }
    Ok(())
}

/// CPU seconds this process used (user + system), from /proc; 0 where unknown.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
