//! The peer's HTTP endpoint on the node IP: `/metrics` (the node's one registry,
//! [`registry`], in the OpenMetrics text format), `/healthz` (the process runs) and
//! `/readyz` (the peer serves; it does not depend on the scheduler being reachable,
//! which `/metrics` reports as `shoal_peer_scheduler_connected`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::engine::Engine;
use crate::metrics::{self, Sample};
use crate::mirror::MirrorStats;
use crate::mirror::access::AccessStats;
use crate::scheduler_link::SchedulerLink;
use crate::store::PieceStore;
use crate::transfer::TransferStats;

/// What the endpoint reads.
#[derive(Clone)]
pub struct Health {
    /// Every metric of the node ([`registry`]).
    pub metrics: Arc<Registry>,
    /// The scheduler session, shown by `/readyz`.
    pub link: SchedulerLink,
    /// True while the mirror serves (cleared when it stops and at shutdown).
    pub ready: Arc<AtomicBool>,
}

/// The routes.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Ready while the store is open and the mirror serves (the flag turns false
/// when the mirror stops, and at shutdown). The scheduler link is shown, not
/// required: without a scheduler the mirror still serves from upstream.
async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let link = if h.link.is_connected() {
        "connected"
    } else {
        "disconnected"
    };
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready\nscheduler: {link}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the mirror is not serving (stopping?)\nscheduler: {link}\n"),
        )
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(&h.metrics),
    )
}

/// The node's one registry: every component registers its own metrics, under
/// `shoal_peer_` (engine, store, transfer, the scheduler link, the mirror's access check) and `shoal_mirror_` (the
/// mirror, the names its dashboards and docs know); the process's own CPU and memory
/// under the standard unprefixed `process_*` names.
pub fn registry(
    engine: &Engine,
    mirror: &Arc<MirrorStats>,
    access: &Arc<AccessStats>,
    transfer: &Arc<TransferStats>,
    store: &Arc<dyn PieceStore>,
    link: &SchedulerLink,
) -> Registry {
    let mut root = Registry::default();
    root.register_collector(Box::new(shoal_proto::process::ProcessCollector));
    let registry = root.sub_registry_with_prefix("shoal");
    let peer = registry.sub_registry_with_prefix("peer");
    engine.register_metrics(peer);
    crate::store::register_metrics(store, peer);
    transfer.register_metrics(peer);
    register_link_metrics(link, peer);
    access.register_metrics(peer);
    mirror.register_metrics(registry.sub_registry_with_prefix("mirror"));
    root
}

/// The scheduler link's metrics: whether a session is open, with how many replicas,
/// and what moved between replicas. (Here rather than a `register_metrics` beside
/// the link: they read the link's public signals and counters.)
fn register_link_metrics(link: &SchedulerLink, registry: &mut Registry) {
    metrics::register(registry, Link(link.clone()), |l| {
        let s = &l.0.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            Sample::Gauge(
                "scheduler_connected",
                "1 while a scheduler session is open.",
                i64::from(l.0.is_connected()),
            ),
            Sample::Gauge(
                "scheduler_replicas",
                "Scheduler replicas with an open session (the live set tasks are sharded over).",
                l.0.replicas().len() as i64,
            ),
            Sample::Counter(
                "scheduler_task_moves",
                "Complete tasks announced to a scheduler replica that became their owner after a change of the live set.",
                load(&s.tasks_moved),
            ),
            Sample::Counter(
                "scheduler_plan_moves",
                "Plans ended because their scheduler replica went away, re-opened with the task's new owner.",
                load(&s.plans_moved),
            ),
            Sample::Counter(
                "scheduler_completions_handed_over",
                "Downloads completed on a replica that no longer owned the task, announced to the owner too.",
                load(&s.completions_handed_over),
            ),
        ]
    });
}

/// The link as its metrics collector sees it.
struct Link(SchedulerLink);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Link").finish_non_exhaustive()
    }
}
