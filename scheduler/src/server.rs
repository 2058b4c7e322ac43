//! One way to run the scheduler: [`run`] takes listeners already bound and a
//! shutdown signal, and serves gRPC (mutual TLS, or plain text behind the
//! development switch), the operator API, the certificate issuer (when on) and
//! the planning ticker until the signal. The binary calls it; so does every
//! test that needs a whole scheduler.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::config::{GrpcSecurity, Settings};
use crate::core::Scheduler;
use crate::grpc::{self, Identity, Limits, SchedulerService};
use crate::http;
use crate::metrics::Metrics;
use crate::state::SchedulerState;
use crate::tls::{ClientAuth, TlsFiles, TlsListener};

/// How long open connections get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);

/// The scheduler's listening sockets, bound by the caller (tests bind
/// `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// Peers' gRPC.
    pub grpc: TcpListener,
    /// The operator API, metrics and health.
    pub http: TcpListener,
    /// The certificate issuer, when `settings.issuer` turns it on.
    pub issuer: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `settings` (`[::]` dual-stack where the OS allows, else
    /// `0.0.0.0`: [`shoal_proto::net`]); errors name the address.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let grpc = bind_tcp(settings.grpc_listen, "gRPC")?;
        let http = bind_tcp(settings.http_listen, "the operator API")?;
        let issuer = match &settings.issuer {
            Some(i) => Some(bind_tcp(i.listen, "the certificate issuer")?),
            None => None,
        };
        Ok(Listeners { grpc, http, issuer })
    }
}

/// One listener for `what` on `addr`; says so when `[::]` could not be dual-stack.
fn bind_tcp(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    use shoal_proto::net::{self, Stack};
    let context = || format!("cannot listen for {what} on {addr}");
    let (listener, stack) = net::bind_tcp(addr).with_context(context)?;
    match stack {
        Stack::AsGiven | Stack::DualStack => {}
        Stack::Ipv6Only => tracing::warn!(
            listen.addr = %addr, listen.what = what,
            "dual-stack refused by the OS: listening on IPv6 only"
        ),
        Stack::Ipv4Fallback => tracing::warn!(
            listen.addr = %addr, listen.what = what,
            "IPv6 is unavailable here: listening on 0.0.0.0 instead"
        ),
    }
    TcpListener::from_std(listener).with_context(context)
}

/// Makes any panic, in any task, end the process (after the default hook has
/// printed it), as `panic = "abort"` does in release builds: a scheduler with a
/// poisoned core or a dead ticker must not live on answering health checks.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

/// Runs the scheduler on `listeners` until `shutdown` resolves, then drains.
/// Fails at once when the TLS material cannot be used.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        issuer: issuer_listener,
    } = listeners;
    let tls = match &settings.grpc_security {
        GrpcSecurity::MutualTls(dir) => Some(Arc::new(
            TlsFiles::load(dir).context("cannot use the gRPC TLS material")?,
        )),
        GrpcSecurity::InsecurePlaintext => {
            warn!(
                "gRPC serves PLAIN TEXT with no client authentication (--insecure-plaintext): \
                 anyone who reaches the port can speak for any peer. Development only."
            );
            None
        }
    };
    if tls.is_some() && settings.allow_shared_identity {
        warn!(
            "the shared peer certificate is accepted for any peer id (--allow-shared-identity): \
             a holder of its key can speak for every node"
        );
    }
    let http_tls = match &settings.http_tls_dir {
        Some(dir) => Some(Arc::new(
            TlsFiles::load_for(dir, ClientAuth::None).with_context(|| {
                format!(
                    "cannot use the operator API's TLS material (--http-tls-dir {})",
                    dir.display()
                )
            })?,
        )),
        None => None,
    };
    let issuer = match (&settings.issuer, issuer_listener, &settings.grpc_security) {
        (Some(i), Some(listener), GrpcSecurity::MutualTls(dir)) => {
            // Fail at start, naming the file, rather than at the first request.
            crate::issuer::sign::Ca::load(&i.ca_dir)
                .context("cannot use the certificate issuer's CA (--issuer-ca-dir)")?;
            let files = TlsFiles::load_for(dir, ClientAuth::None)
                .context("cannot use the TLS material for the certificate issuer")?;
            info!(
                issuer.addr = %listener.local_addr()?,
                issuer.lifetime = ?i.lifetime,
                issuer.service_account = %i.policy.username(),
                issuer.daemonset = %i.policy.daemonset,
                issuer.kube_api = %i.kube.url,
                "certificate issuer on"
            );
            Some((i.clone(), listener, Arc::new(files)))
        }
        (Some(_), None, _) => anyhow::bail!("the certificate issuer is on but has no listener"),
        _ => None,
    };
    info!(
        grpc.addr = %grpc_listener.local_addr()?,
        grpc.tls = tls.is_some(),
        http.addr = %http_listener.local_addr()?,
        http.tls = http_tls.is_some(),
        peer_ttl = ?settings.core.peer_ttl,
        // Whether write endpoints are on; the token itself is never logged.
        http.writes = settings.operator_token.is_some(),
        "shoal-scheduler starting"
    );
    let mut core = Scheduler::new(settings.core.clone());
    if let Some(id) = settings.test_panic_on_join.clone() {
        core.set_test_panic_on_join(id);
    }
    let state = SchedulerState::new(core);
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let identity = match tls {
        Some(_) => Identity::Bound {
            allow_shared: settings.allow_shared_identity,
        },
        None => Identity::Unchecked,
    };
    let service =
        SchedulerService::with_policy(state.clone(), metrics.clone(), identity, Limits::default());
    let grpc = match tls {
        Some(files) => {
            let m = metrics.clone();
            let incoming = crate::tls::incoming(
                grpc_listener,
                files,
                Arc::new(move || m.refused("tls_handshake")),
            );
            tokio::spawn(grpc::serve_with(incoming, service, stopped()))
        }
        None => tokio::spawn(grpc::serve_with(
            TcpListenerStream::new(grpc_listener),
            service,
            stopped(),
        )),
    };
    let router = http::router(
        state.clone(),
        metrics.clone(),
        settings.operator_token.clone(),
    );
    let http = match http_tls {
        Some(files) => {
            let m = metrics.clone();
            let listener = TlsListener::new(
                http_listener,
                files,
                Arc::new(move || m.refused("http_tls_handshake")),
            )?;
            tokio::spawn(http::serve(listener, router, stopped()))
        }
        None => tokio::spawn(http::serve(http_listener, router, stopped())),
    };
    let issuer = issuer.map(|(settings, listener, files)| {
        let service = crate::issuer::IssuerService::new(&settings, metrics.clone());
        tokio::spawn(crate::issuer::serve(
            listener,
            files,
            service,
            metrics.clone(),
            stopped(),
        ))
    });
    let ticker = tokio::spawn(grpc::run_ticker(
        state.clone(),
        settings.plan_interval,
        stopped(),
    ));

    shutdown.await;
    info!("shutting down");
    state.set_ready(false);
    let _ = stop_tx.send(true);
    // Open streams get a GOAWAY and DRAIN to finish; a peer that keeps its
    // connection open past that does not hold the process.
    let drained = tokio::time::timeout(DRAIN, async {
        grpc.await?.context("gRPC server")?;
        http.await?.context("operator API")?;
        if let Some(issuer) = issuer {
            issuer.await?.context("certificate issuer")?;
        }
        ticker.await?;
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(r) => r?,
        Err(_) => {
            warn!(drain = ?DRAIN, "connections still open after the drain period; exiting anyway")
        }
    }
    info!("stopped");
    Ok(())
}
