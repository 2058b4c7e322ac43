//! Tracing setup: text or JSON lines on stderr, filtered by `SHOAL_LOG` (else
//! `RUST_LOG`, else `info`).
//!
//! The same set-up as `shoal-peer`'s `main.rs` (`logging`), kept in step by hand: the
//! only crate both binaries share is `shoal-proto`, which holds the protocol's vocabulary
//! and nothing else, and a crate of its own for these lines would cost more (a workspace
//! member, an entry in both binaries' dependencies) than the copy does.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SHOAL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
