//! What a simulated run produced: per node, when it completed and what it served, and
//! the swarm's totals. `report.rs` turns it into figures.

use std::time::Duration;

/// One node's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResult {
    /// Its downlink rate, bytes/s.
    pub down: f64,
    /// When it opened its plan.
    pub opened_at: Duration,
    /// When it held every piece (`None`: never).
    pub done_at: Option<Duration>,
    /// It streamed from upstream.
    pub source: bool,
    /// Pieces it uploaded.
    pub served: u64,
    /// Requests it answered `BUSY`.
    pub busy_answers: u64,
}

/// A run's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Per node, in node order.
    pub nodes: Vec<NodeResult>,
    /// Bytes upstream sent.
    pub upstream_bytes: u64,
    /// Simulated time at the end.
    pub elapsed: Duration,
    /// Reports the scheduler refused (a real session would end): should be 0.
    pub refused_reports: u64,
    /// Pieces the blob has.
    pub pieces: u32,
}
