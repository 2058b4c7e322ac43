//! What the swarm benchmark reports, as pure functions over the measurements: the
//! ratios to the line-rate limit and to the blob's size, the markdown table and the
//! machine-readable lines. No I/O here; `chart.rs` draws the same figures.

use std::fmt::Write as _;

use crate::netns::UplinkQueue;

/// How the nodes get the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One node pulls from the registry, the others idle: the time one node needs
    /// alone, measured (what every mode's `p50 ÷ alone` divides by).
    Alone,
    /// Every node pulls from the registry.
    Direct,
    /// Every node pulls from a pull-through cache (`docker-registry` with
    /// `proxy.remoteurl`) on its own host.
    Cache,
    /// Every node pulls through its own Shoal peer.
    Shoal,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Alone, Mode::Direct, Mode::Cache, Mode::Shoal];

    /// The modes run without `--modes`, in this order.
    pub const DEFAULT: [Mode; 3] = [Mode::Direct, Mode::Cache, Mode::Shoal];

    /// Its name in the table and the machine-readable line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Alone => "alone",
            Mode::Direct => "direct",
            Mode::Cache => "cache",
            Mode::Shoal => "shoal",
        }
    }

    /// How many of the set-up's nodes pull in this mode.
    pub fn pulling(self, setup: &Setup) -> usize {
        match self {
            Mode::Alone => 1,
            _ => setup.nodes,
        }
    }

    /// Parses a name as [`Mode::name`] writes it.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// The benchmark's set-up, shared by every mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// Nodes pulling.
    pub nodes: usize,
    /// The blob's size in bytes.
    pub size: u64,
    /// Every link's rate, bits per second.
    pub rate_bits: u64,
    /// The rate as given (`100mbit`).
    pub rate_text: String,
    /// How the hosts' uplinks queue.
    pub uplink: UplinkQueue,
    /// Every link's MTU, when not the kernel's 1500 (`--mtu`).
    pub mtu: Option<u32>,
    /// The hosts' TCP congestion control (`bbr`, `cubic`): the registry's TCP runs it,
    /// and how it fills a queue changes what shares the queue with it (measured:
    /// `docs/benchmarks.md`, session 21).
    pub tcp_congestion: String,
}

impl Setup {
    /// The links as the table's and the chart's captions name them: `100mbit`, or
    /// `100mbit, MTU 9000`.
    pub fn link_text(&self) -> String {
        match self.mtu {
            Some(mtu) => format!("{}, MTU {mtu}", self.rate_text),
            None => self.rate_text.clone(),
        }
    }

    /// Seconds one node needs to receive the blob at line rate: the fastest any mode
    /// can be (each node's downlink carries the whole blob once).
    pub fn line_rate_secs(&self) -> f64 {
        self.size as f64 * 8.0 / self.rate_bits as f64
    }
}

/// One node's pull.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePull {
    /// The node's name.
    pub node: String,
    /// Seconds from the common start to the last byte.
    pub secs: f64,
    /// Bytes received.
    pub bytes: u64,
    /// Whether those bytes hash to the blob's digest.
    pub digest_ok: bool,
}

/// One mode's run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeRun {
    /// The mode.
    pub mode: Mode,
    /// Every node's pull.
    pub pulls: Vec<NodePull>,
    /// Blob bytes the origin registry served (its access log).
    pub upstream_bytes: u64,
    /// The CPU the pulls took.
    pub cpu: CpuUse,
}

/// CPU used while the nodes pulled. Every host shares this machine's cores, so at high
/// link rates the CPU, not the links, can set the pace: this says how close it came.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuUse {
    /// The machine's cores.
    pub cores: u32,
    /// Seconds from the pulls' start to the last one's end.
    pub wall_secs: f64,
    /// Core-seconds the whole machine was busy in that time (`/proc/stat`: everything
    /// but idle and iowait; every process, the kernel's network and disk work too).
    pub busy_secs: f64,
    /// Core-seconds the Shoal peers used (their `process_cpu_seconds_total`, from
    /// their start; shoal mode only).
    pub peers_secs: Option<f64>,
}

/// The machine's CPU counters at one instant: the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTimes {
    /// Ticks (`USER_HZ`, 100 a second) busy: user, nice, system, irq, softirq.
    pub busy_ticks: u64,
    /// Ticks in every state (idle, iowait and steal too).
    pub all_ticks: u64,
}

impl CpuTimes {
    /// Parses `/proc/stat`'s text.
    pub fn parse(proc_stat: &str) -> Option<CpuTimes> {
        let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]: guest
        // time is counted in user already.
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        if v.len() < 4 {
            return None;
        }
        Some(CpuTimes {
            busy_ticks: at(0) + at(1) + at(2) + at(5) + at(6),
            all_ticks: (0..8).map(at).sum(),
        })
    }

    /// Busy core-seconds from `self` to `later`.
    pub fn busy_secs_until(&self, later: &CpuTimes) -> f64 {
        later.busy_ticks.saturating_sub(self.busy_ticks) as f64 / 100.0
    }
}

impl CpuUse {
    /// Busy core-seconds ÷ the cores' seconds in the window (0..=1).
    pub fn busy_share(&self) -> f64 {
        if self.cores == 0 || self.wall_secs <= 0.0 {
            return f64::NAN;
        }
        self.busy_secs / (f64::from(self.cores) * self.wall_secs)
    }
}

/// The `q` quantile (0..=1) of `values` by nearest rank: the smallest value that at
/// least `q` of them do not exceed. `None` for no values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// A mode's figures, derived from its run and the set-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Median completion time, seconds.
    pub p50_secs: f64,
    /// Slowest completion time, seconds.
    pub max_secs: f64,
    /// `p50_secs` ÷ the line-rate limit.
    pub p50_ratio: f64,
    /// `max_secs` ÷ the line-rate limit.
    pub max_ratio: f64,
    /// Upstream bytes ÷ the blob's size.
    pub egress_ratio: f64,
    /// Whether every node received exactly the blob (size and digest).
    pub all_bytes_ok: bool,
    /// The machine's cores busy while the nodes pulled, as a share (0..=1).
    pub cpu_busy: f64,
    /// The machine's busy core-seconds per GiB the nodes received.
    pub cpu_secs_per_gib: f64,
    /// The peers' core-seconds per GiB the nodes received (shoal mode).
    pub peer_cpu_secs_per_gib: Option<f64>,
}

impl ModeRun {
    /// The figures of this run.
    pub fn figures(&self, setup: &Setup) -> Figures {
        let secs: Vec<f64> = self.pulls.iter().map(|p| p.secs).collect();
        let p50 = quantile(&secs, 0.5).unwrap_or(f64::NAN);
        let max = quantile(&secs, 1.0).unwrap_or(f64::NAN);
        let line = setup.line_rate_secs();
        let pulling = self.mode.pulling(setup);
        let gib = (pulling as f64 * setup.size as f64) / f64::from(1 << 30);
        Figures {
            p50_secs: p50,
            max_secs: max,
            p50_ratio: p50 / line,
            max_ratio: max / line,
            egress_ratio: self.upstream_bytes as f64 / setup.size as f64,
            all_bytes_ok: self.pulls.len() == pulling
                && self
                    .pulls
                    .iter()
                    .all(|p| p.digest_ok && p.bytes == setup.size),
            cpu_busy: self.cpu.busy_share(),
            cpu_secs_per_gib: self.cpu.busy_secs / gib,
            peer_cpu_secs_per_gib: self.cpu.peers_secs.map(|s| s / gib),
        }
    }

    /// `mode=<m> nodes=<n> size=<bytes> p50_ratio=<x> max_ratio=<x> egress_ratio=<x>
    /// cpu_busy=<x>`, `peer_cpu_s_per_gib=<x>` in shoal mode, and
    /// `p50_alone_ratio=<x>` (p50 ÷ `alone`'s time) when `runs` has an `alone` run.
    pub fn machine_line(&self, setup: &Setup, runs: &[ModeRun]) -> String {
        let f = self.figures(setup);
        let mut line = format!(
            "mode={} nodes={} size={} p50_ratio={:.3} max_ratio={:.3} egress_ratio={:.3} cpu_busy={:.2}",
            self.mode.name(),
            self.mode.pulling(setup),
            setup.size,
            f.p50_ratio,
            f.max_ratio,
            f.egress_ratio,
            f.cpu_busy,
        );
        if let Some(p) = f.peer_cpu_secs_per_gib {
            let _ = write!(line, " peer_cpu_s_per_gib={p:.2}");
        }
        if let Some(alone) = alone_secs(setup, runs) {
            let _ = write!(line, " p50_alone_ratio={:.3}", f.p50_secs / alone);
        }
        line
    }
}

/// The `alone` run's time (one node pulling from the registry by itself), if the
/// runs have one.
pub fn alone_secs(setup: &Setup, runs: &[ModeRun]) -> Option<f64> {
    runs.iter()
        .find(|r| r.mode == Mode::Alone)
        .map(|r| r.figures(setup).p50_secs)
}

/// The results as a markdown table, with the set-up above it.
pub fn markdown(setup: &Setup, runs: &[ModeRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} nodes, a {:.0} MiB blob, every link {}, {}, TCP congestion control {} (line-rate limit {:.1} s)\n",
        setup.nodes,
        setup.size as f64 / f64::from(1 << 20),
        setup.link_text(),
        setup.uplink.describe(),
        setup.tcp_congestion,
        setup.line_rate_secs()
    );
    let alone = alone_secs(setup, runs);
    let (alone_head, alone_rule) = if alone.is_some() {
        (" p50 ÷ alone |", "---:|")
    } else {
        ("", "")
    };
    let _ = write!(
        out,
        "| mode | p50 s | max s | p50 ÷ line rate | max ÷ line rate |{alone_head} upstream egress ÷ blob | bytes | CPU busy | CPU s per GiB pulled (peers) |\n\
         |---|---:|---:|---:|---:|{alone_rule}---:|---|---:|---:|\n",
    );
    for r in runs {
        let f = r.figures(setup);
        let peers = f
            .peer_cpu_secs_per_gib
            .map_or(String::new(), |p| format!(" ({p:.2})"));
        let by_alone = alone.map_or(String::new(), |a| format!(" {:.2} |", f.p50_secs / a));
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} |{by_alone} {:.2} | {} | {:.0} % of {} | {:.2}{peers} |",
            r.mode.name(),
            f.p50_secs,
            f.max_secs,
            f.p50_ratio,
            f.max_ratio,
            f.egress_ratio,
            if f.all_bytes_ok {
                "all digests match"
            } else {
                "MISMATCH"
            },
            f.cpu_busy * 100.0,
            r.cpu.cores,
            f.cpu_secs_per_gib,
        );
    }
    out.push_str(
        "\nCPU: the whole machine's (every host shares its cores), while the nodes pulled; \
         per GiB the nodes received. In brackets, the Shoal peers' own.\n",
    );
    if alone.is_some() {
        out.push_str(
            "`alone`: one node pulling from the registry by itself, the time one node \
             needs alone as measured (the line-rate limit is the raw link's).\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            nodes: 4,
            size: 100 << 20,
            rate_bits: 100_000_000,
            rate_text: "100mbit".into(),
            uplink: UplinkQueue::Fair,
            mtu: None,
            tcp_congestion: "bbr".into(),
        }
    }

    fn run(mode: Mode, secs: &[f64], upstream: u64) -> ModeRun {
        ModeRun {
            mode,
            pulls: secs
                .iter()
                .enumerate()
                .map(|(i, &s)| NodePull {
                    node: format!("n{i}"),
                    secs: s,
                    bytes: 100 << 20,
                    digest_ok: true,
                })
                .collect(),
            upstream_bytes: upstream,
            cpu: CpuUse {
                cores: 2,
                wall_secs: 10.0,
                busy_secs: 15.0,
                peers_secs: (mode == Mode::Shoal).then_some(4.0),
            },
        }
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0, 5.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[4.0, 1.0, 3.0], 1.0), Some(4.0));
    }

    #[test]
    fn ratios_are_to_the_line_rate_and_the_blob() {
        let s = setup();
        // 100 MiB at 100 Mbit/s: 8.388608 s.
        assert!((s.line_rate_secs() - 8.388_608).abs() < 1e-9);
        let line = s.line_rate_secs();
        let r = run(
            Mode::Shoal,
            &[line, 2.0 * line, 1.5 * line, 1.2 * line],
            105 << 20,
        );
        let f = r.figures(&s);
        assert!((f.p50_ratio - 1.2).abs() < 1e-9);
        assert!((f.max_ratio - 2.0).abs() < 1e-9);
        assert!((f.egress_ratio - 1.05).abs() < 1e-9);
        assert!(f.all_bytes_ok);
        // 4 nodes × 100 MiB = 0.390625 GiB; 15 busy core-seconds of 20.
        assert!((f.cpu_busy - 0.75).abs() < 1e-9);
        assert!((f.cpu_secs_per_gib - 38.4).abs() < 1e-9);
        assert_eq!(f.peer_cpu_secs_per_gib, Some(10.24));
        assert_eq!(
            r.machine_line(&s, &[]),
            "mode=shoal nodes=4 size=104857600 p50_ratio=1.200 max_ratio=2.000 egress_ratio=1.050 cpu_busy=0.75 peer_cpu_s_per_gib=10.24"
        );
        let direct = run(Mode::Direct, &[line; 4], 4 * (100 << 20));
        assert!(
            direct
                .machine_line(&s, &[])
                .ends_with("egress_ratio=4.000 cpu_busy=0.75")
        );
        assert!(direct.figures(&s).peer_cpu_secs_per_gib.is_none());
        let no_time = CpuUse::default();
        assert!(no_time.busy_share().is_nan());
    }

    #[test]
    fn machine_cpu_is_busy_ticks_between_two_readings() {
        let a = CpuTimes::parse("cpu  100 5 50 1000 7 3 2 9 0 0\ncpu0 50 2 25 500 3 1 1 4 0 0\n")
            .unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy_ticks: 160,
                all_ticks: 1176
            }
        );
        let b = CpuTimes::parse("cpu  250 5 100 1100 7 3 12 9 0 0\n").unwrap();
        assert!((a.busy_secs_until(&b) - 2.1).abs() < 1e-9);
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn a_wrong_digest_a_short_copy_or_a_missing_node_is_not_ok() {
        let s = setup();
        let mut r = run(Mode::Direct, &[1.0; 4], 4 * (100 << 20));
        assert!(r.figures(&s).all_bytes_ok);
        r.pulls[1].digest_ok = false;
        assert!(!r.figures(&s).all_bytes_ok);
        let mut r = run(Mode::Direct, &[1.0; 4], 0);
        r.pulls[2].bytes -= 1;
        assert!(!r.figures(&s).all_bytes_ok);
        let r = run(Mode::Direct, &[1.0; 3], 0);
        assert!(!r.figures(&s).all_bytes_ok);
    }

    #[test]
    fn the_table_has_a_row_per_mode_and_flags_a_mismatch() {
        let s = setup();
        let mut bad = run(Mode::Cache, &[9.0; 4], 1 << 20);
        bad.pulls[0].digest_ok = false;
        let t = markdown(&s, &[run(Mode::Direct, &[8.0; 4], 400 << 20), bad]);
        assert!(t.starts_with("4 nodes, a 100 MiB blob, every link 100mbit"));
        assert!(t.contains(
            "| direct | 8.0 | 8.0 | 0.95 | 0.95 | 4.00 | all digests match | 75 % of 2 | 38.40 |"
        ));
        assert!(
            t.contains("| cache | 9.0 | 9.0 | 1.07 | 1.07 | 0.01 | MISMATCH | 75 % of 2 | 38.40 |")
        );
        let t = markdown(&s, &[run(Mode::Shoal, &[8.0; 4], 100 << 20)]);
        assert!(t.contains("| 75 % of 2 | 38.40 (10.24) |"), "{t}");
        assert_eq!(Mode::parse("shoal"), Some(Mode::Shoal));
        assert_eq!(Mode::parse("alone"), Some(Mode::Alone));
        assert_eq!(Mode::parse("torrent"), None);
    }

    #[test]
    fn every_mode_is_also_divided_by_the_time_one_node_needs_alone() {
        let s = setup();
        let line = s.line_rate_secs();
        // One node alone at 1.05 × the raw link; the swarm's median at 1.12.
        let alone = run(Mode::Alone, &[1.05 * line], 100 << 20);
        let f = alone.figures(&s);
        assert!(f.all_bytes_ok, "one pull is all alone needs");
        assert!(
            (f.cpu_secs_per_gib - 153.6).abs() < 1e-9,
            "per GiB one node got"
        );
        let shoal = run(Mode::Shoal, &[1.12 * line; 4], 100 << 20);
        let runs = [alone.clone(), shoal.clone()];
        let m = shoal.machine_line(&s, &runs);
        assert!(m.ends_with(" p50_alone_ratio=1.067"), "{m}");
        assert!(
            alone
                .machine_line(&s, &runs)
                .starts_with("mode=alone nodes=1 ")
        );
        let t = markdown(&s, &runs);
        assert!(t.contains("| max ÷ line rate | p50 ÷ alone |"), "{t}");
        assert!(t.contains("| 1.12 | 1.12 | 1.07 | 1.00 |"), "{t}");
        assert!(t.contains("| 1.05 | 1.05 | 1.00 | 1.00 |"), "{t}");
        assert!(!markdown(&s, &[shoal]).contains("alone"));
    }
}
