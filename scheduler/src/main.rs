//! `shoal-scheduler`: parse the configuration, start the gRPC service, the
//! operator API and the ticker, and stop them all on SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use shoal_scheduler::config::{Args, Settings};
use shoal_scheduler::core::Scheduler;
use shoal_scheduler::metrics::Metrics;
use shoal_scheduler::state::SchedulerState;
use shoal_scheduler::{grpc, http, logging};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How long open connections get to finish after SIGTERM.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    let settings = match Settings::resolve(Args::parse()) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("shoal-scheduler: invalid configuration:");
            for e in errors {
                eprintln!("  - {e}");
            }
            return ExitCode::from(2);
        }
    };
    logging::init(settings.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "scheduler failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", settings.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the operator API on {}",
                settings.http_listen
            )
        })?;
    info!(
        grpc.addr = %grpc_listener.local_addr()?,
        http.addr = %http_listener.local_addr()?,
        peer_ttl = ?settings.core.peer_ttl,
        // Whether write endpoints are on; the token itself is never logged.
        http.writes = settings.operator_token.is_some(),
        "shoal-scheduler starting"
    );
    let state = SchedulerState::new(Scheduler::new(settings.core.clone()));
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let grpc = tokio::spawn(grpc::serve(
        grpc_listener,
        state.clone(),
        metrics.clone(),
        stopped(),
    ));
    let router = http::router(
        state.clone(),
        metrics.clone(),
        settings.operator_token.clone(),
    );
    let http = tokio::spawn(http::serve(http_listener, router, stopped()));
    let ticker = tokio::spawn(grpc::run_ticker(
        state.clone(),
        settings.plan_interval,
        stopped(),
    ));

    shutdown_signal().await;
    info!("shutting down");
    state.set_ready(false);
    let _ = stop_tx.send(true);
    // Open streams get a GOAWAY and DRAIN to finish; a peer that keeps its
    // connection open past that does not hold the process.
    let drained = tokio::time::timeout(DRAIN, async {
        grpc.await?.context("gRPC server")?;
        http.await?.context("operator API")?;
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
