//! `shoal-peer run`: the node daemon. Opens the piece store, serves pieces to
//! other peers over QUIC with mutual TLS, keeps the scheduler link, runs the
//! download engine behind the registry mirror containerd pulls through, collects
//! garbage by the cache watermarks, and serves health and metrics; stops cleanly
//! on SIGTERM or SIGINT.
//!
//! Layout: `config.rs` (flags → validated [`Settings`]), `health.rs`
//! (`/metrics`, `/healthz`, `/readyz`), `gc.rs` (the eviction loop), `tls_reload.rs`
//! (renewed certificates and rotated CAs for QUIC), this file
//! (wiring).

pub mod config;
mod gc;
pub mod health;
mod tls_reload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Makes any panic, in any task, end the process after the default hook printed
/// it (as `panic = "abort"` does in release builds): the DaemonSet restarts it,
/// and containerd uses the next host meanwhile.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
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
    let tls = match &settings.tls {
        TlsSource::Dir(d) => tls::load_dir(d)?,
        TlsSource::Ephemeral => tls::ephemeral()?,
    };
    // A node certificate names this node: that name is the peer id, the only
    // one the scheduler accepts from this certificate. The shared certificate
    // names no node: the id is the one kept in the data dir.
    let node_identity = match &settings.tls {
        TlsSource::Dir(d) => {
            let path = d.join("tls.crt");
            let pem =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            tls::node_identity(&pem).with_context(|| format!("{}", path.display()))?
        }
        TlsSource::Ephemeral => None,
    };
    let peer_id = match node_identity {
        Some(name) => name,
        None => load_or_create_peer_id(&settings.data_dir)?,
    };
    let endpoint = tls::endpoint(settings.quic_listen, &tls)
        .with_context(|| format!("cannot listen for QUIC on {}", settings.quic_listen))?;
    let mirror_listener = tokio::net::TcpListener::bind(settings.mirror_listen)
        .await
        .with_context(|| format!("cannot listen for the mirror on {}", settings.mirror_listen))?;
    // Only with --mirror-allow-remote: Settings refuses it otherwise.
    if !settings.mirror_listen.ip().is_loopback() {
        tracing::warn!(
            mirror.addr = %settings.mirror_listen,
            "the mirror listens beyond loopback (--mirror-allow-remote): anyone who reaches it can pull through this node's upstream credentials"
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
    let mut link_config = LinkConfig::new(settings.schedulers.clone(), me);
    if let TlsSource::Dir(d) = &settings.tls {
        link_config.tls_dir = Some(d.clone());
    }
    let link = SchedulerLink::spawn(
        link_config,
        Arc::new(StoreInventory(store.clone())),
        stopped(),
    );
    let client = PieceClient::new(endpoint.clone());
    if let TlsSource::Dir(dir) = &settings.tls {
        tokio::spawn(tls_reload::watch(
            dir.clone(),
            endpoint.clone(),
            client.tls(),
            Duration::from_secs(10),
            stopped(),
        ));
    }
    let engine = Engine::new(store.clone(), link.clone(), client);
    let mirror_port = mirror_listener.local_addr()?.port();
    let mut registries = RegistriesConfig::new(settings.containerd_hosts_dir.clone());
    registries.default_upstream = settings.default_upstream.clone();
    registries.policy = settings.upstream;
    registries.per_registry = settings.registry_policies.clone();
    registries.own_mirrors = [
        format!("http://{}", settings.mirror_listen),
        format!("http://127.0.0.1:{mirror_port}"),
        format!("http://localhost:{mirror_port}"),
        format!("http://[::1]:{mirror_port}"),
    ]
    .into();
    let mirror = Mirror::new(engine.clone(), Registries::new(registries));
    // Ready while the mirror serves: it turns false when the mirror's server
    // ends (an error, or shutdown), before anything else stops.
    let ready = Arc::new(AtomicBool::new(true));
    let mirror_server = tokio::spawn({
        let (ready, stop) = (ready.clone(), stopped());
        let serve = crate::mirror::serve(mirror_listener, mirror.clone(), stop);
        async move {
            let r = serve.await;
            ready.store(false, Ordering::Relaxed);
            if let Err(e) = &r {
                tracing::error!(error = %e, "the mirror stopped serving");
            }
            r
        }
    });
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
    let metrics = health::registry(&engine, &mirror.stats, &stats, &store, &link);
    let health = health::Health {
        metrics: Arc::new(metrics),
        link,
        ready: ready.clone(),
    };
    // Health and metrics stop last, so that /readyz says "stopping" while the
    // mirror drains.
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_server = tokio::spawn(async move {
        axum::serve(http, health::router(health))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .await
    });

    shutdown.await;
    info!("shutting down");
    ready.store(false, Ordering::Relaxed);
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
    let _ = http_stop.send(());
    http_server.await??;
    info!("stopped");
    Ok(())
}
