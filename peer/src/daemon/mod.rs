//! `shoal-peer run`: the node daemon. Opens the piece store, serves pieces to
//! other peers over QUIC with mutual TLS, keeps the scheduler link, runs the
//! download engine behind the registry mirror containerd pulls through, collects
//! garbage by the cache watermarks, and serves health and metrics; stops cleanly
//! on SIGTERM or SIGINT.
//!
//! Layout: `config.rs` (flags → validated [`Settings`]), `health.rs`
//! (`/metrics`, `/healthz`, `/readyz`), `gc.rs` (the eviction loop), this file
//! (wiring).

pub mod config;
mod gc;
pub mod health;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use shoal_proto::{Digest, v1};
use tokio::sync::watch;
use tracing::info;

use crate::engine::Engine;
use crate::mirror::Mirror;
use crate::registry::{Registries, RegistriesConfig};
use crate::scheduler_link::{Inventory, LinkConfig, SchedulerLink};
use crate::store::{DiskStore, PieceStore, load_or_create_peer_id};
use crate::tls;
use crate::transfer::{PieceClient, PieceSource, TransferStats, UploadLimits};
pub use config::{RunArgs, Settings, TlsSource};

/// Serves the store's verified pieces to other peers (the QUIC server's
/// [`PieceSource`]).
pub struct StoreSource(pub Arc<dyn PieceStore>);

#[async_trait::async_trait]
impl PieceSource for StoreSource {
    async fn piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, std::io::Error> {
        let (store, digest) = (self.0.clone(), *digest);
        tokio::task::spawn_blocking(move || store.read_piece(&digest, index))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)
    }
}

/// Announces the store's complete tasks, with their piece hashes, at every
/// join (the scheduler link's [`Inventory`]).
pub struct StoreInventory(pub Arc<dyn PieceStore>);

impl Inventory for StoreInventory {
    fn held(&self) -> Vec<v1::HeldTask> {
        let tasks = match self.0.list() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the piece store; joining with no tasks");
                return Vec::new();
            }
        };
        tasks
            .into_iter()
            .filter(|t| t.complete)
            .map(|t| v1::HeldTask {
                digest: t.digest.to_string(),
                size: t.shape.size(),
                piece_hashes: t
                    .hashes
                    .iter()
                    .map(|h| h.map(|h| h.to_vec()).unwrap_or_default())
                    .collect(),
            })
            .filter(|t| t.piece_hashes.iter().all(|h| h.len() == 32))
            .collect()
    }
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = settings.data_dir.clone();
    let cache = settings.cache;
    let store: Arc<dyn PieceStore> = Arc::new(
        tokio::task::spawn_blocking(move || DiskStore::open(&dir, cache))
            .await?
            .with_context(|| {
                format!(
                    "cannot open the piece store in {}",
                    settings.data_dir.display()
                )
            })?,
    );
    let peer_id = load_or_create_peer_id(&settings.data_dir)?;
    let tls = match &settings.tls {
        TlsSource::Dir(d) => tls::load_dir(d)?,
        TlsSource::Ephemeral => tls::ephemeral()?,
    };
    let endpoint = tls::endpoint(settings.quic_listen, &tls)
        .with_context(|| format!("cannot listen for QUIC on {}", settings.quic_listen))?;
    let mirror_listener = tokio::net::TcpListener::bind(settings.mirror_listen)
        .await
        .with_context(|| format!("cannot listen for the mirror on {}", settings.mirror_listen))?;
    if !settings.mirror_listen.ip().is_loopback() {
        tracing::warn!(
            mirror.addr = %settings.mirror_listen,
            "the mirror listens beyond loopback: anyone who reaches it can pull through this node's upstream credentials"
        );
    }
    let http = tokio::net::TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for metrics and health on {}",
                settings.http_listen
            )
        })?;
    info!(
        peer.id = %peer_id,
        quic.addr = %endpoint.local_addr()?,
        advertise.addr = %settings.advertise,
        http.addr = %http.local_addr()?,
        mirror.addr = %mirror_listener.local_addr()?,
        schedulers = settings.schedulers.len(),
        "shoal-peer starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let me = v1::PeerInfo {
        peer_id: peer_id.clone(),
        hostname,
        quic_addr: settings.advertise.to_string(),
        zone: settings.zone.clone(),
        rack: String::new(),
        upload_slots: settings.upload_slots as u32,
    };
    let link = SchedulerLink::spawn(
        LinkConfig::new(settings.schedulers.clone(), me),
        Arc::new(StoreInventory(store.clone())),
        stopped(),
    );
    let client = PieceClient::new(endpoint.clone());
    let engine = Engine::new(store.clone(), link.clone(), client);
    let mirror_port = mirror_listener.local_addr()?.port();
    let mut registries = RegistriesConfig::new(settings.containerd_hosts_dir.clone());
    registries.default_upstream = settings.default_upstream.clone();
    registries.own_mirrors = [
        format!("http://{}", settings.mirror_listen),
        format!("http://127.0.0.1:{mirror_port}"),
        format!("http://localhost:{mirror_port}"),
        format!("http://[::1]:{mirror_port}"),
    ]
    .into();
    let mirror = Mirror::new(engine.clone(), Registries::new(registries));
    let mirror_server = tokio::spawn(crate::mirror::serve(
        mirror_listener,
        mirror.clone(),
        stopped(),
    ));
    let gc = tokio::spawn(gc::run(store.clone(), link.clone(), stopped()));
    let stats = Arc::new(TransferStats::default());
    let limits = UploadLimits {
        upload_slots: settings.upload_slots,
        rate_limit: settings.upload_rate_limit,
    };
    let server = tokio::spawn(crate::transfer::serve(
        endpoint,
        Arc::new(StoreSource(store.clone())),
        limits,
        stats.clone(),
        stopped(),
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let metrics = health::registry(&engine, &mirror.stats, &stats, &store, &link);
    let health = health::Health {
        metrics: Arc::new(metrics),
        ready,
    };
    let http_server = tokio::spawn({
        let stop = stopped();
        async move {
            axum::serve(http, health::router(health))
                .with_graceful_shutdown(stop)
                .await
        }
    });

    shutdown.await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    server.await?;
    gc.await?;
    // Blob streams still open get a few seconds; containerd resumes them elsewhere.
    if tokio::time::timeout(Duration::from_secs(5), mirror_server)
        .await
        .is_err()
    {
        info!("mirror streams still open after 5 s; closing them");
    }
    http_server.await??;
    info!("stopped");
    Ok(())
}
