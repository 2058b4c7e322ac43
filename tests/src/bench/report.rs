//! What the swarm benchmark reports, as pure functions over the measurements: the
//! ratios to the line-rate limit and to the blob's size, the markdown table and the
//! machine-readable lines. No I/O here; `chart.rs` draws the same figures.

use std::fmt::Write as _;

use crate::netns::UplinkQueue;

/// How the nodes get the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every node pulls from the registry.
    Direct,
    /// Every node pulls from a pull-through cache (`docker-registry` with
    /// `proxy.remoteurl`) on its own host.
    Cache,
    /// Every node pulls through its own Shoal peer.
    Shoal,
}

impl Mode {
    /// Every mode, in the order they run.
    pub const ALL: [Mode; 3] = [Mode::Direct, Mode::Cache, Mode::Shoal];

    /// Its name in the table and the machine-readable line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Cache => "cache",
            Mode::Shoal => "shoal",
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
}

impl Setup {
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
}

impl ModeRun {
    /// The figures of this run.
    pub fn figures(&self, setup: &Setup) -> Figures {
        let secs: Vec<f64> = self.pulls.iter().map(|p| p.secs).collect();
        let p50 = quantile(&secs, 0.5).unwrap_or(f64::NAN);
        let max = quantile(&secs, 1.0).unwrap_or(f64::NAN);
        let line = setup.line_rate_secs();
        Figures {
            p50_secs: p50,
            max_secs: max,
            p50_ratio: p50 / line,
            max_ratio: max / line,
            egress_ratio: self.upstream_bytes as f64 / setup.size as f64,
            all_bytes_ok: self.pulls.len() == setup.nodes
                && self
                    .pulls
                    .iter()
                    .all(|p| p.digest_ok && p.bytes == setup.size),
        }
    }

    /// `mode=<m> nodes=<n> size=<bytes> p50_ratio=<x> max_ratio=<x> egress_ratio=<x>`.
    pub fn machine_line(&self, setup: &Setup) -> String {
        let f = self.figures(setup);
        format!(
            "mode={} nodes={} size={} p50_ratio={:.3} max_ratio={:.3} egress_ratio={:.3}",
            self.mode.name(),
            setup.nodes,
            setup.size,
            f.p50_ratio,
            f.max_ratio,
            f.egress_ratio
        )
    }
}

/// The results as a markdown table, with the set-up above it.
pub fn markdown(setup: &Setup, runs: &[ModeRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} nodes, a {:.0} MiB blob, every link {}, {} (line-rate limit {:.1} s)\n",
        setup.nodes,
        setup.size as f64 / f64::from(1 << 20),
        setup.rate_text,
        setup.uplink.describe(),
        setup.line_rate_secs()
    );
    out.push_str(
        "| mode | p50 s | max s | p50 ÷ line rate | max ÷ line rate | upstream egress ÷ blob | bytes |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let f = r.figures(setup);
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
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
            }
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
        assert_eq!(
            r.machine_line(&s),
            "mode=shoal nodes=4 size=104857600 p50_ratio=1.200 max_ratio=2.000 egress_ratio=1.050"
        );
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
        assert!(t.contains("| direct | 8.0 | 8.0 | 0.95 | 0.95 | 4.00 | all digests match |"));
        assert!(t.contains("| cache | 9.0 | 9.0 | 1.07 | 1.07 | 0.01 | MISMATCH |"));
        assert_eq!(Mode::parse("shoal"), Some(Mode::Shoal));
        assert_eq!(Mode::parse("torrent"), None);
    }
}
