//! The peer's HTTP endpoint on the node IP: `/metrics` (Prometheus text),
//! `/healthz` (the process runs) and `/readyz` (the peer serves; it does not
//! depend on the scheduler being reachable, which `/metrics` reports as
//! `shoal_peer_scheduler_connected`).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::scheduler_link::SchedulerLink;
use crate::store::PieceStore;
use crate::transfer::TransferStats;

/// What the endpoint reads.
#[derive(Clone)]
pub struct Health {
    /// The piece store.
    pub store: Arc<dyn PieceStore>,
    /// Upload counters of the QUIC server.
    pub transfer: Arc<TransferStats>,
    /// The scheduler link.
    pub link: SchedulerLink,
    /// Set once the piece server runs.
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

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    let t = &h.transfer;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    metric(
        &mut out,
        "shoal_peer_served_bytes_total",
        "counter",
        "Bytes uploaded to other peers.",
        load(&t.uploaded_bytes),
    );
    metric(
        &mut out,
        "shoal_peer_served_pieces_total",
        "counter",
        "Pieces uploaded to other peers.",
        load(&t.pieces_served),
    );
    metric(
        &mut out,
        "shoal_peer_upload_busy_total",
        "counter",
        "Piece requests refused because every upload slot was taken.",
        load(&t.busy),
    );
    metric(
        &mut out,
        "shoal_peer_upload_not_found_total",
        "counter",
        "Piece requests for pieces this peer does not hold.",
        load(&t.not_found),
    );
    metric(
        &mut out,
        "shoal_peer_quic_handshakes_failed_total",
        "counter",
        "QUIC connections refused (no or foreign certificate).",
        load(&t.handshakes_failed),
    );
    metric(
        &mut out,
        "shoal_peer_cache_bytes",
        "gauge",
        "Bytes of blobs held in the piece store.",
        h.store.usage_bytes(),
    );
    let connected = u64::from(h.link.is_connected());
    metric(
        &mut out,
        "shoal_peer_scheduler_connected",
        "gauge",
        "1 while a scheduler session is open.",
        connected,
    );
    out.push_str("# EOF\n");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
