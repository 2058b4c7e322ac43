//! `shoal-peer`: parses the command line, sets up logging, and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_peer::containerd::cli::ContainerdCommand;
use tracing_subscriber::EnvFilter;

/// Shoal's node daemon and node setup.
#[derive(Debug, Parser)]
#[command(name = "shoal-peer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configure containerd to use the Shoal mirror (configure | check | restore).
    Containerd(ContainerdCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Containerd(cmd) => cmd.run(),
    }
}
