//! A run's figures, as `scripts/bench-swarm` reports them: completion time ÷ the
//! node's line-rate limit (the blob ÷ its downlink rate), p50 (nearest rank) and max,
//! and upstream egress ÷ the blob.

use std::fmt::Write as _;

use crate::swarm::Outcome;

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Nodes.
    pub nodes: usize,
    /// Blob size in bytes.
    pub size: u64,
    /// Nodes that completed.
    pub completed: usize,
    /// Median of completion ÷ line-rate limit.
    pub p50_ratio: f64,
    /// Largest completion ÷ line-rate limit (infinite if a node never completed).
    pub max_ratio: f64,
    /// The back-to-source nodes' ratio (the largest, if several).
    pub source_ratio: f64,
    /// The back-to-source node's downlink ÷ the fastest node's.
    pub source_rate: f64,
    /// Upstream bytes ÷ blob.
    pub egress_ratio: f64,
    /// Pieces uploaded by the busiest node, in copies of the blob.
    pub max_upload_copies: f64,
    /// The back-to-source node's uploads, in copies of the blob.
    pub source_upload_copies: f64,
    /// `BUSY` answers in all.
    pub busy_answers: u64,
}

/// The `n` nodes slowest against their own link (completion ÷ line-rate limit),
/// one line each.
pub fn slowest(o: &Outcome, size: u64, n: usize) -> Vec<String> {
    let mut v: Vec<(f64, usize, &crate::swarm::NodeResult)> = o
        .nodes
        .iter()
        .enumerate()
        .map(|(i, r)| (ratio(r, size), i, r))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    v.into_iter()
        .take(n)
        .map(|(q, i, r)| {
            format!(
                "node {i}: {q:.3} × line rate, link {:.0} Mbit/s, opened at {:.1} s, done at {}, {}served {} pieces",
                r.down * 8.0 / 1e6,
                r.opened_at.as_secs_f64(),
                r.done_at.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                if r.source { "fetched from upstream, " } else { "" },
                r.served
            )
        })
        .collect()
}

/// A node's completion ÷ its line-rate limit, from when it opened its plan
/// (infinite if it never completed).
fn ratio(n: &crate::swarm::NodeResult, size: u64) -> f64 {
    n.done_at.map_or(f64::INFINITY, |d| {
        (d - n.opened_at).as_secs_f64() / (size as f64 / n.down)
    })
}

/// Nearest-rank quantile (as `tests/src/bench/report.rs`).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl Figures {
    /// The figures of `o`, a run of a `size`-byte blob.
    pub fn of(o: &Outcome, size: u64) -> Self {
        let ratio = |n: &crate::swarm::NodeResult| ratio(n, size);
        let ratios: Vec<f64> = o.nodes.iter().map(ratio).collect();
        Figures {
            nodes: o.nodes.len(),
            size,
            completed: o.nodes.iter().filter(|n| n.done_at.is_some()).count(),
            p50_ratio: quantile(&ratios, 0.5),
            max_ratio: ratios.iter().copied().fold(0.0, f64::max),
            source_ratio: o
                .nodes
                .iter()
                .filter(|n| n.source)
                .map(ratio)
                .fold(0.0, f64::max),
            source_rate: o
                .nodes
                .iter()
                .filter(|n| n.source)
                .map(|n| n.down)
                .fold(0.0, f64::max)
                / o.nodes
                    .iter()
                    .map(|n| n.down)
                    .fold(f64::MIN_POSITIVE, f64::max),
            egress_ratio: o.upstream_bytes as f64 / size as f64,
            max_upload_copies: o.nodes.iter().map(|n| n.served).max().unwrap_or(0) as f64
                / f64::from(o.pieces.max(1)),
            source_upload_copies: o
                .nodes
                .iter()
                .filter(|n| n.source)
                .map(|n| n.served)
                .max()
                .unwrap_or(0) as f64
                / f64::from(o.pieces.max(1)),
            busy_answers: o.nodes.iter().map(|n| n.busy_answers).sum(),
        }
    }

    /// The machine-readable line of `scripts/bench-swarm`, mode `sim`.
    pub fn line(&self) -> String {
        format!(
            "mode=sim nodes={} size={} p50_ratio={:.3} max_ratio={:.3} egress_ratio={:.3}",
            self.nodes, self.size, self.p50_ratio, self.max_ratio, self.egress_ratio
        )
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} of {} nodes complete; p50 {:.3} × line rate, max {:.3}; back-to-source {:.3} (its link at {:.2} × the fastest)",
            self.completed,
            self.nodes,
            self.p50_ratio,
            self.max_ratio,
            self.source_ratio,
            self.source_rate
        );
        let _ = write!(
            s,
            "upstream {:.3} copies; busiest uploader {:.2} copies, back-to-source {:.2}; {} BUSY answers",
            self.egress_ratio, self.max_upload_copies, self.source_upload_copies, self.busy_answers
        );
        s
    }
}
