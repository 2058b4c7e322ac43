//! [`Node::start`]: one peer node on sockets already bound ([`Sockets`]), the one way
//! to start it: the `shoal-peer run` binary ([`super::run`]: bind, then start) and the
//! tests that need a whole node (they bind `127.0.0.1:0`).
//!
//! A node is the piece store (opened from `data_dir`), the QUIC piece server, the
//! scheduler link, the download engine, the registry mirror, the preheater, garbage collection, the
//! TLS watch (and, with `--identity token-review`, the node certificate's issuance
//! before anything starts and its renewal after), and health and metrics. [`Node::wait`] returns once `shutdown` resolved and
//! everything stopped in order: the mirror leaves `/readyz` first, open blob streams get
//! 5 s, health and metrics stop last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use shoal_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::{Settings, StoreInventory, StoreSource, TlsSource, gc, health, issuance, tls_reload};
use crate::engine::Engine;
use crate::mirror::Mirror;
use crate::preheat::Preheater;
use crate::registry::{Registries, RegistriesConfig};
use crate::scheduler_link::{LinkConfig, PreheatPort, SchedulerLink};
use crate::store::{ContentLayer, DiskStore, PieceStore, load_or_create_peer_id};
use crate::tls;
use crate::transfer::{PieceClient, TransferStats, UploadLimits};

/// How long open mirror streams get at shutdown; containerd resumes them elsewhere.
const MIRROR_DRAIN: Duration = Duration::from_secs(5);

/// What a node listens on, bound before it starts.
#[derive(Debug)]
pub struct Sockets {
    /// The QUIC piece server (UDP).
    pub quic: std::net::UdpSocket,
    /// The registry mirror containerd pulls through.
    pub mirror: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: TcpListener,
}

impl Sockets {
    /// Binds `settings`' `quic_listen`, `mirror_listen` and `http_listen` (`[::]`
    /// dual-stack where the OS allows, else `0.0.0.0`: [`shoal_proto::net`]); an error
    /// names the address.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Sockets> {
        use shoal_proto::net;
        let (quic, stack) = net::bind_udp(settings.quic_listen)
            .with_context(|| format!("cannot listen for QUIC on {}", settings.quic_listen))?;
        log_stack("quic", settings.quic_listen, stack);
        let tcp = |addr: SocketAddr, what: &str| {
            let (l, stack) = net::bind_tcp(addr)
                .with_context(|| format!("cannot listen for {what} on {addr}"))?;
            log_stack(what, addr, stack);
            TcpListener::from_std(l).with_context(|| format!("cannot listen for {what} on {addr}"))
        };
        let mirror = tcp(settings.mirror_listen, "the mirror")?;
        let http = tcp(settings.http_listen, "metrics and health")?;
        Ok(Sockets { quic, mirror, http })
    }
}

/// Says how a `[::]` listener was bound when it is not dual-stack.
fn log_stack(what: &str, asked: SocketAddr, stack: shoal_proto::net::Stack) {
    use shoal_proto::net::Stack;
    match stack {
        Stack::AsGiven | Stack::DualStack => {}
        Stack::Ipv6Only => tracing::warn!(
            listen.addr = %asked, listen.what = what,
            "dual-stack refused by the OS: listening on IPv6 only"
        ),
        Stack::Ipv4Fallback => tracing::warn!(
            listen.addr = %asked, listen.what = what,
            "IPv6 is unavailable here: listening on 0.0.0.0 instead"
        ),
    }
}

/// A running node: its identity and addresses, and its end.
#[derive(Debug)]
pub struct Node {
    /// The peer id the node joined with (its certificate's node name, else the id
    /// kept in the data dir).
    pub peer_id: String,
    /// Where the QUIC piece server listens.
    pub quic_addr: SocketAddr,
    /// What other peers dial: `settings.advertise`'s IP with the bound QUIC port.
    pub advertise: SocketAddr,
    /// Where the registry mirror listens.
    pub mirror_addr: SocketAddr,
    /// Where health and metrics are served.
    pub http_addr: SocketAddr,
    done: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Opens the store in `settings.data_dir`, loads the peer certificate, and starts
    /// every part of the node on `sockets`; returns once they all run. They stop when
    /// `shutdown` resolves ([`Node::wait`] tells when they have). Errors (store, TLS
    /// files, the QUIC socket) name what failed; nothing keeps running after one.
    pub async fn start(
        sockets: Sockets,
        settings: Settings,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Node> {
        let (dir, cache) = (settings.data_dir.clone(), settings.cache);
        let own: Arc<dyn PieceStore> = Arc::new(
            tokio::task::spawn_blocking(move || DiskStore::open(&dir, cache))
                .await?
                .with_context(|| {
                    format!(
                        "cannot open the piece store in {}",
                        settings.data_dir.display()
                    )
                })?,
        );
        // containerd's content store in front of the own store: its blobs are served
        // from there, read-only, once verified.
        let content = settings
            .containerd_content_dir
            .clone()
            .map(|d| Arc::new(ContentLayer::new(own.clone(), d)));
        let store: Arc<dyn PieceStore> = match &content {
            Some(layer) => layer.clone(),
            None => own,
        };
        // A stop during the wait for a first certificate ends the start.
        let mut shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            Box::pin(shutdown);
        let issuance = match (&settings.issuance, &settings.tls) {
            (Some(i), TlsSource::Dir(dir)) => {
                issuance::ensure(i, dir, &mut shutdown).await?;
                Some((i.clone(), dir.clone()))
            }
            _ => None,
        };
        let (tls, peer_id, hostname) = {
            let (source, data_dir) = (settings.tls.clone(), settings.data_dir.clone());
            tokio::task::spawn_blocking(move || identity(&source, &data_dir)).await??
        };
        let quic_addr = sockets.quic.local_addr()?;
        let endpoint = tls::endpoint_on(sockets.quic, &tls)
            .with_context(|| format!("cannot serve QUIC on {quic_addr}"))?;
        let mirror_addr = sockets.mirror.local_addr()?;
        let http_addr = sockets.http.local_addr()?;
        let advertise = SocketAddr::new(settings.advertise.ip(), quic_addr.port());
        // Only with --mirror-allow-remote: Settings refuses it otherwise.
        if !mirror_addr.ip().is_loopback() {
            tracing::warn!(
                mirror.addr = %mirror_addr,
                "the mirror listens beyond loopback (--mirror-allow-remote): anyone who reaches it can pull through this node's upstream credentials"
            );
        }
        let link_mbps = settings.link_rate.resolve(advertise.ip());
        info!(
            peer.id = %peer_id,
            link.mbps = link_mbps,
            quic.addr = %quic_addr,
            advertise.addr = %advertise,
            http.addr = %http_addr,
            mirror.addr = %mirror_addr,
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
        let me = v1::PeerInfo {
            peer_id: peer_id.clone(),
            hostname,
            quic_addr: advertise.to_string(),
            zone: settings.zone.clone(),
            rack: String::new(),
            upload_slots: settings.upload_slots as u32,
            piece_rule: shoal_proto::piece::PIECE_RULE,
            link_mbps,
        };
        let mut registries =
            RegistriesConfig::with_hosts_dirs(settings.containerd_hosts_dirs.clone());
        registries.default_upstream = settings.default_upstream.clone();
        registries.containers = settings.containers.clone();
        registries.policy = settings.upstream;
        registries.per_registry = settings.registry_policies.clone();
        let port = mirror_addr.port();
        registries.own_mirrors = [
            format!("http://{mirror_addr}"),
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
            format!("http://[::1]:{port}"),
        ]
        .into();
        let registries = Registries::new(registries);
        let preheater = Preheater::new(registries.clone());
        let mut link_config = LinkConfig::new(settings.schedulers.clone(), me);
        link_config.preheat = Some(PreheatPort(Arc::new(preheater.clone())));
        link_config.hosts_file = settings.scheduler_hosts_file.clone();
        if let TlsSource::Dir(d) = &settings.tls {
            link_config.tls_dir = Some(d.clone());
        }
        let link = SchedulerLink::spawn(
            link_config,
            Arc::new(StoreInventory(store.clone())),
            stopped(),
        );
        let client = PieceClient::new(endpoint.clone());
        // Also what a client-only endpoint for the other address family dials with.
        client.tls().set(tls.client_config());
        if let TlsSource::Dir(dir) = &settings.tls {
            // Renewals wake the watch at once; other changes are seen within 10 s.
            let nudge = Arc::new(tokio::sync::Notify::new());
            if let Some((issuance, dir)) = issuance {
                tokio::spawn(issuance::renew(issuance, dir, nudge.clone(), stopped()));
            }
            tokio::spawn(tls_reload::watch(
                dir.clone(),
                endpoint.clone(),
                client.tls(),
                Duration::from_secs(10),
                nudge,
                stopped(),
            ));
        }
        let engine = Engine::new(store.clone(), link.clone(), client);
        preheater.set_engine(engine.clone());
        let mirror = Mirror::with_access(engine.clone(), registries, settings.access)
            .with_stale_tag_window(settings.stale_tag_window);
        // Ready while the mirror serves: it turns false when the mirror's server
        // ends (an error, or shutdown), before anything else stops.
        let ready = Arc::new(AtomicBool::new(true));
        let mirror_server = tokio::spawn({
            let (ready, stop) = (ready.clone(), stopped());
            let serve = crate::mirror::serve(sockets.mirror, mirror.clone(), stop);
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
        tokio::spawn(super::scrub::run(
            store.clone(),
            link.clone(),
            settings.scrub_rate,
            stopped(),
        ));
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
            engine.seeding(),
            stopped(),
        ));
        let mut metrics = health::registry(
            &engine,
            &mirror.stats,
            &mirror.access.stats,
            &stats,
            &store,
            &link,
        );
        super::content_scan::register_metrics(
            content.clone(),
            // Beside the other `shoal_peer_` metrics (the root itself is unprefixed).
            metrics.sub_registry_with_prefix("shoal_peer"),
        );
        if let Some(layer) = &content {
            tokio::spawn(super::content_scan::run(
                layer.clone(),
                link.clone(),
                settings.scrub_rate,
                stopped(),
            ));
        }
        let health = health::Health {
            metrics: Arc::new(metrics),
            link,
            ready: ready.clone(),
        };
        // Health and metrics stop last, so that /readyz says "stopping" while the
        // mirror drains.
        let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http_server = tokio::spawn(async move {
            axum::serve(sockets.http, health::router(health))
                .with_graceful_shutdown(async move {
                    let _ = http_stopped.await;
                })
                .await
        });

        let done = tokio::spawn(async move {
            shutdown.await;
            info!("shutting down");
            ready.store(false, Ordering::Relaxed);
            let _ = stop_tx.send(true);
            server.await?;
            gc.await?;
            if tokio::time::timeout(MIRROR_DRAIN, mirror_server)
                .await
                .is_err()
            {
                info!("mirror streams still open after 5 s; closing them");
            }
            let _ = http_stop.send(());
            http_server.await??;
            info!("stopped");
            Ok(())
        });
        Ok(Node {
            peer_id,
            quic_addr,
            advertise,
            mirror_addr,
            http_addr,
            done,
        })
    }

    /// Waits until the node has stopped (after `shutdown` resolved); an error is one a
    /// part of the node ended with.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await?
    }
}

/// The peer certificate, the peer id and the host name. A node certificate names this
/// node: that name is the peer id, the only one the scheduler accepts from this
/// certificate. The shared certificate names no node: the id is the one kept in the
/// data dir. Reads files: call it on the blocking pool.
fn identity(
    source: &TlsSource,
    data_dir: &std::path::Path,
) -> anyhow::Result<(tls::PeerTls, String, String)> {
    let tls = match source {
        TlsSource::Dir(d) => tls::load_dir(d)?,
        TlsSource::Ephemeral => tls::ephemeral()?,
    };
    let node_identity = match source {
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
        None => load_or_create_peer_id(data_dir)?,
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Ok((tls, peer_id, hostname))
}
