//! `shoal-scheduler`: parse the configuration, set up logging, and call
//! [`shoal_scheduler::server::run`] until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use shoal_scheduler::config::{Args, Settings};
use shoal_scheduler::logging;
use shoal_scheduler::server::{self, Listeners};
use tracing::error;

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
    server::abort_on_panic();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-scheduler: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = runtime.block_on(async {
        let listeners = Listeners::bind(&settings).await?;
        server::run(listeners, settings, shutdown_signal()).await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "scheduler failed");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
