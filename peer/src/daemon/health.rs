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

use crate::engine::Engine;
use crate::mirror::MirrorStats;
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
    /// The download engine (download and piece counters).
    pub engine: Engine,
    /// Mirror counters.
    pub mirror: Arc<MirrorStats>,
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
    let e = h.engine.stats();
    for (name, help, v) in [
        (
            "shoal_peer_bytes_from_upstream_total",
            "Blob bytes fetched from upstream registries.",
            &e.bytes_from_upstream,
        ),
        (
            "shoal_peer_bytes_from_peers_total",
            "Verified blob bytes fetched from other peers.",
            &e.bytes_from_peers,
        ),
        (
            "shoal_peer_pieces_verified_total",
            "Pieces that matched their hash.",
            &e.pieces_verified,
        ),
        (
            "shoal_peer_pieces_rejected_total",
            "Pieces from peers that did not match their hash (discarded; the parent was reported).",
            &e.pieces_rejected,
        ),
        (
            "shoal_peer_downloads_started_total",
            "Downloads started (one per blob, shared by concurrent requests).",
            &e.downloads_started,
        ),
        (
            "shoal_peer_downloads_completed_total",
            "Downloads verified against their digest.",
            &e.downloads_completed,
        ),
        (
            "shoal_peer_downloads_failed_total",
            "Downloads that failed.",
            &e.downloads_failed,
        ),
    ] {
        metric(&mut out, name, "counter", help, load(v));
    }
    metric(
        &mut out,
        "shoal_peer_active_downloads",
        "gauge",
        "Downloads in flight.",
        h.engine.active() as u64,
    );
    let m = &h.mirror;
    for (name, help, v) in [
        (
            "shoal_mirror_blob_requests_total",
            "Blob requests to the mirror (GET and HEAD).",
            &m.blob_requests,
        ),
        (
            "shoal_mirror_manifest_requests_total",
            "Manifest requests to the mirror (GET and HEAD).",
            &m.manifest_requests,
        ),
        (
            "shoal_mirror_blob_bytes_served_total",
            "Blob bytes sent to containerd.",
            &m.blob_bytes_served,
        ),
        (
            "shoal_mirror_blob_bytes_from_cache_total",
            "Blob bytes sent to containerd from blobs already complete on this node.",
            &m.blob_bytes_from_cache,
        ),
        (
            "shoal_mirror_refused_total",
            "Mirror requests refused as bad input (4xx other than 401).",
            &m.refused,
        ),
        (
            "shoal_mirror_failed_total",
            "Mirror requests nothing could serve (5xx).",
            &m.failed,
        ),
    ] {
        metric(&mut out, name, "counter", help, load(v));
    }
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
