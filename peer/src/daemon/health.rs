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
/// mirror, the names its dashboards and docs know).
pub fn registry(
    engine: &Engine,
    mirror: &Arc<MirrorStats>,
    access: &Arc<AccessStats>,
    transfer: &Arc<TransferStats>,
    store: &Arc<dyn PieceStore>,
    link: &SchedulerLink,
) -> Registry {
    let mut registry = Registry::with_prefix("shoal");
    let peer = registry.sub_registry_with_prefix("peer");
    engine.register_metrics(peer);
    crate::store::register_metrics(store, peer);
    transfer.register_metrics(peer);
    register_link_metrics(link, peer);
    access.register_metrics(peer);
    mirror.register_metrics(registry.sub_registry_with_prefix("mirror"));
    registry
}

/// The scheduler link's metric: whether a session is open. (Here rather than a
/// `register_metrics` beside the link, which has none yet: it reads the link's one
/// public signal.)
fn register_link_metrics(link: &SchedulerLink, registry: &mut Registry) {
    metrics::register(registry, Link(link.clone()), |l| {
        vec![Sample::Gauge(
            "scheduler_connected",
            "1 while a scheduler session is open.",
            i64::from(l.0.is_connected()),
        )]
    });
}

/// The link as its metrics collector sees it.
struct Link(SchedulerLink);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Link").finish_non_exhaustive()
    }
}
