//! The scheduler's Prometheus metrics, served by the operator API at
//! `/metrics` in the OpenMetrics text format. Every name starts with
//! `shoal_scheduler_`, but the standard `process_*` metrics (CPU, memory,
//! descriptors: [`shoal_proto::process`]).
//!
//! Two kinds of metric live here:
//! - the core's own counters ([`CoreStats`]) and sizes (peers, tasks, open
//!   plans). The core stays free of metric types (it returns plain stats);
//!   [`Metrics::encode`] takes one snapshot of them under the core's lock and a
//!   [`Collector`] writes that snapshot out, so all of them are read at the
//!   same instant and the counters are exactly the core's (monotonic for the
//!   life of the process).
//! - counters the adapters bump as things happen: gRPC requests by method and
//!   status code ([`Metrics::grpc_request`]), operator write requests by
//!   action and HTTP status ([`Metrics::operator_request`]).
//!
//! - one histogram: how long a plan stream's first update took to leave
//!   ([`Metrics::plan_first_update`]).
//!
//! Not here: the peer's metrics
//! (the peer builds its own registry: `shoal_peer::daemon::health::registry`), any
//! global/static registry.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::CoreStats;
use crate::state::SchedulerState;

/// Upper bounds (seconds) of `shoal_scheduler_plan_first_update_seconds`:
/// 5 ms, the rollout target of `scripts/bench-scheduler`, is one of them.
const PLAN_FIRST_UPDATE_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Labels of `shoal_scheduler_grpc_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GrpcLabels {
    /// The RPC, e.g. `Join`.
    method: &'static str,
    /// The status code it ended with, gRPC's canonical name (`OK`, `NOT_FOUND`, …).
    code: &'static str,
}

/// Labels of `shoal_scheduler_operator_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperatorLabels {
    /// `quarantine`, `unquarantine` or `drop`.
    action: &'static str,
    /// The HTTP status answered, e.g. `200`, `401`.
    code: u16,
}

/// Labels of `shoal_scheduler_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    /// Which check refused: `identity`, `join_tasks`, `plans_per_peer`,
    /// `session_events`, `tls_handshake`, a core limit, or one of the certificate
    /// issuer's (`issuer_…`: `issuer_unauthenticated`, `issuer_audience`,
    /// `issuer_service_account`, `issuer_node_mismatch`, `issuer_not_daemonset`,
    /// `issuer_input`, `issuer_rate`, `issuer_busy`, `issuer_tls_handshake`, …).
    reason: &'static str,
}

/// Labels of `shoal_scheduler_preheat_jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    /// `running`, `succeeded`, `failed` or `cancelled`.
    state: &'static str,
}

/// The scheduler's metric registry and the families the adapters update.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    preheat_jobs: Family<JobLabels, prometheus_client::metrics::gauge::Gauge>,
    grpc_requests: Family<GrpcLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    operator_requests: Family<OperatorLabels, Counter>,
    certificates_issued: Counter,
    plan_first_update: Histogram,
    /// Where [`Metrics::encode`] puts the core's snapshot for [`CoreCollector`].
    snapshot: Arc<Mutex<Snapshot>>,
    /// Serialises scrapes, so that each one prints the snapshot it took.
    scrape: Mutex<()>,
}

/// The core's numbers at one instant.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    stats: CoreStats,
    peers: usize,
    tasks: usize,
    open_plans: usize,
    downloads: usize,
    quarantined: usize,
    ready: bool,
    uptime_secs: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every scheduler metric in it (prefix `shoal_scheduler`), and
    /// the process's own CPU and memory under the standard `process_*` names.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(shoal_proto::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("shoal_scheduler");
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC requests the scheduler finished, by method and status code (streams count once, when they end)",
            grpc_requests.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "refused",
            "Requests and connections refused by an identity check or an input limit, by reason; a refusal changes no state",
            refused.clone(),
        );
        let operator_requests = Family::<OperatorLabels, Counter>::default();
        registry.register(
            "operator_requests",
            "Operator write requests (quarantine, unquarantine, drop, preheat, preheat_cancel), by action and HTTP status (401: no or wrong token, 403: writes disabled)",
            operator_requests.clone(),
        );
        let certificates_issued = Counter::default();
        registry.register(
            "certificates_issued",
            "Node certificates the issuer signed (first ones and renewals)",
            certificates_issued.clone(),
        );
        let preheat_jobs = Family::<JobLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "preheat_jobs",
            "Preheat jobs this replica holds now (running, or finished and not yet forgotten), by state",
            preheat_jobs.clone(),
        );
        let plan_first_update = Histogram::new(PLAN_FIRST_UPDATE_BUCKETS);
        registry.register_with_unit(
            "plan_first_update",
            "Time from a Plan request reaching the scheduler to its stream's first update leaving for the wire: the core's lock, planning, and the stream's channel (not the network)",
            prometheus_client::registry::Unit::Seconds,
            plan_first_update.clone(),
        );
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(CoreCollector(snapshot.clone())));
        Metrics {
            registry: root,
            preheat_jobs,
            grpc_requests,
            refused,
            operator_requests,
            certificates_issued,
            plan_first_update,
            snapshot,
            scrape: Mutex::new(()),
        }
    }

    /// Times one plan stream's first update (see the metric's help).
    pub fn plan_first_update(&self, d: std::time::Duration) {
        self.plan_first_update.observe(d.as_secs_f64());
    }

    /// Counts one finished gRPC request (`method` as in the proto, e.g. `"Join"`).
    pub fn grpc_request(&self, method: &'static str, code: tonic::Code) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Counts one refusal by an identity check or a limit.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    /// Counts one node certificate signed by the issuer.
    pub fn certificate_issued(&self) {
        self.certificates_issued.inc();
    }

    /// Counts one operator write request (`action`: `quarantine`,
    /// `unquarantine`, `drop`) answered with `status`.
    pub fn operator_request(&self, action: &'static str, status: u16) {
        self.operator_requests
            .get_or_create(&OperatorLabels {
                action,
                code: status,
            })
            .inc();
    }

    /// Renders every metric in the OpenMetrics text format, reading the core
    /// (under its lock, briefly) for its counters and sizes.
    pub fn encode(&self, state: &SchedulerState) -> String {
        let _scrape = self.scrape.lock().expect("metrics scrape lock");
        let (stats, (peers, tasks, open_plans), downloads, quarantined) =
            state.with_core(|core, _| {
                (
                    core.stats().clone(),
                    core.sizes(),
                    core.downloads_in_progress(),
                    core.quarantined_peers(),
                )
            });
        *self.snapshot.lock().expect("metrics snapshot lock") = Snapshot {
            stats,
            peers,
            tasks,
            open_plans,
            downloads,
            quarantined,
            ready: state.is_ready(),
            uptime_secs: state.uptime().as_secs(),
        };
        for (job_state, n) in state.job_counts() {
            self.preheat_jobs
                .get_or_create(&JobLabels {
                    state: job_state.name(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing metrics to a String cannot fail");
        out
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Writes the last [`Snapshot`] at each scrape.
#[derive(Debug)]
struct CoreCollector(Arc<Mutex<Snapshot>>);

/// `(name without prefix and _total, help, value)` of each core counter.
fn counters(s: &CoreStats) -> [(&'static str, &'static str, u64); 21] {
    [
        (
            "peer_joins",
            "Peer joins accepted (first joins and re-joins)",
            s.joins,
        ),
        (
            "peer_departures",
            "Peers that left the swarm (said so, or their lease expired)",
            s.departures,
        ),
        (
            "peer_lease_expirations",
            "Peers that left because their lease expired",
            s.expired,
        ),
        (
            "plan_decisions",
            "Parent rankings computed for plan streams",
            s.plan_decisions,
        ),
        (
            "plan_updates",
            "Plan updates queued for plan streams",
            s.plan_updates,
        ),
        (
            "back_to_source_elections",
            "Back-to-source elections (a peer told to fetch a task from upstream), first ones and re-elections",
            s.back_to_source_elections,
        ),
        (
            "back_to_source_stalls",
            "Back-to-source peers replaced because they reported no piece in time",
            s.back_to_source_stalls,
        ),
        (
            "sources_resumed",
            "Plans re-opened by a peer streaming from upstream and counted as the task's back-to-source peer",
            s.sources_resumed,
        ),
        (
            "elections_deferred",
            "Tasks whose back-to-source election waited out the resume grace (first heard of through re-opened plans)",
            s.elections_deferred,
        ),
        (
            "elections_waited_for_faster",
            "Tasks whose first back-to-source election waited for a downloader as fast as the fastest joined peer",
            s.elections_waited_for_faster,
        ),
        (
            "sources_handed_over",
            "Back-to-source peers that handed the rest of a task over to a downloader with a faster declared link",
            s.sources_handed_over,
        ),
        (
            "offers_past_cap",
            "Parents offered to a download short of parents while already at their child cap",
            s.offers_past_cap,
        ),
        (
            "pieces_reported",
            "Pieces peers reported as verified and stored",
            s.pieces_reported,
        ),
        (
            "task_completions",
            "Tasks a peer reported complete (whole blob verified)",
            s.completions,
        ),
        (
            "task_evictions",
            "Tasks a peer reported evicted from its store",
            s.evictions,
        ),
        (
            "bad_parent_reports",
            "Reports of a parent that sent a piece failing its hash",
            s.bad_parent_reports,
        ),
        (
            "hashes_ignored",
            "Piece reports whose hashes were not believed (the reporter was not elected back-to-source)",
            s.hashes_ignored,
        ),
        (
            "hashes_discarded",
            "Times a task's provisional piece hashes were discarded after a digest-mismatch report",
            s.hashes_discarded,
        ),
        (
            "bad_parent_reporters_suspected",
            "Peers that reported more distinct bad parents than allowed (their reports are ignored)",
            s.suspected_reporters,
        ),
        (
            "operator_quarantines",
            "Peers an operator quarantined (taken out as parents)",
            s.operator_quarantines,
        ),
        (
            "drop_orders",
            "Tasks an operator told every holder to drop",
            s.drop_orders,
        ),
    ]
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().expect("metrics snapshot lock").clone();
        for (name, help, value) in counters(&s.stats) {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let gauges: [(&str, &str, i64); 7] = [
            (
                "peers",
                "Peers in the swarm now (joined, lease not expired)",
                s.peers as i64,
            ),
            (
                "tasks",
                "Tasks (blobs) the scheduler knows now",
                s.tasks as i64,
            ),
            (
                "open_plans",
                "Plan streams open now (a peer keeps its plan open a few seconds after it completed the task)",
                s.open_plans as i64,
            ),
            (
                "downloads",
                "Downloads in progress now: plan streams of peers that have not completed their task",
                s.downloads as i64,
            ),
            (
                "quarantined_peers",
                "Peers offered as a parent for no task now (operator or bad-parent reports)",
                s.quarantined as i64,
            ),
            (
                "ready",
                "1 when the gRPC server is serving, else 0",
                i64::from(s.ready),
            ),
            (
                "uptime_seconds",
                "Seconds since the scheduler process started",
                s.uptime_secs as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// gRPC's canonical name of a status code (as in `grpc/doc/statuscodes.md`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CoreConfig, Scheduler};

    #[test]
    fn encodes_core_counters_gauges_and_grpc_requests() {
        let state = SchedulerState::new(Scheduler::new(CoreConfig::default()));
        let metrics = Metrics::new();
        metrics.grpc_request("Join", tonic::Code::Ok);
        metrics.grpc_request("Join", tonic::Code::Ok);
        metrics.grpc_request("Plan", tonic::Code::NotFound);
        let text = metrics.encode(&state);
        assert!(
            text.contains("# TYPE shoal_scheduler_peer_joins counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nshoal_scheduler_peer_joins_total 0\n"),
            "{text}"
        );
        assert!(text.contains("\nshoal_scheduler_peers 0\n"), "{text}");
        assert!(text.contains("\nshoal_scheduler_ready 0\n"), "{text}");
        assert!(
            text.contains(r#"shoal_scheduler_grpc_requests_total{method="Join",code="OK"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"shoal_scheduler_grpc_requests_total{method="Plan",code="NOT_FOUND"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        // Ours carry the prefix; the process's own are the standard names.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("shoal_scheduler_") || line.starts_with("process_"),
                "unprefixed metric: {line}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("process_cpu_seconds_total ")),
            "{text}"
        );
        for (_, help, _) in counters(&CoreStats::default()) {
            assert!(text.contains(help), "missing HELP {help}");
        }
    }

    #[test]
    fn every_code_has_a_distinct_name() {
        let names: std::collections::HashSet<_> = (0..17)
            .map(|i| code_name(tonic::Code::from_i32(i)))
            .collect();
        assert_eq!(names.len(), 17);
    }
}
