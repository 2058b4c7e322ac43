//! `shoal-peer`: parses the command line, sets up logging, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_peer::containerd::cli::ContainerdCommand;
use shoal_peer::containers::cli::ContainersCommand;
use shoal_peer::daemon::{self, RunArgs, Settings};
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
    /// Run the node daemon: the registry mirror for containerd, P2P piece transfer over
    /// QUIC, the scheduler link, metrics and health.
    Run(Box<RunArgs>),
    /// Configure containerd to use the Shoal mirror (configure | check | restore).
    Containerd(ContainerdCommand),
    /// Configure CRI-O and Podman to use the Shoal mirror: a registries.conf.d drop-in
    /// (configure | check | restore).
    Containers(ContainersCommand),
    /// Peer certificates for mutual TLS.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Write a cluster CA (unless DIR has one) and a peer certificate into DIR:
    /// ca.crt, ca.key, tls.crt, tls.key.
    Init {
        /// Target directory (created if missing).
        dir: PathBuf,
    },
    /// Issue a certificate from the CA in --ca-dir into --out (tls.crt, tls.key and a
    /// copy of ca.crt): a node certificate (--node NAME: the peer's identity and id),
    /// or the scheduler's serving certificate (--scheduler, with its --name list).
    Issue {
        /// Directory with ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Target directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A node certificate naming this node.
        #[arg(
            long,
            conflicts_with = "scheduler",
            required_unless_present = "scheduler"
        )]
        node: Option<String>,
        /// The scheduler's serving certificate.
        #[arg(long)]
        scheduler: bool,
        /// DNS names or IPs the scheduler certificate is valid for (repeatable).
        #[arg(long = "name", requires = "scheduler")]
        names: Vec<String>,
        /// Lifetime in days [default: 365].
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

/// Tracing on stderr, text or JSON lines, filtered by `SHOAL_LOG` (else `RUST_LOG`, else
/// `info`). The same set-up as the scheduler's `logging.rs`, kept in step by hand (see
/// there why it is not shared).
fn logging(json: bool) {
    let filter = EnvFilter::try_from_env("SHOAL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Containerd(cmd) => {
            logging(false);
            cmd.run()
        }
        Command::Containers(cmd) => {
            logging(false);
            cmd.run()
        }
        Command::Tls(TlsCommand::Init { dir }) => match shoal_peer::tls::init_dir(&dir) {
            Ok(_) => {
                println!("wrote ca.crt, tls.crt and tls.key to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoal-peer tls init: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Tls(TlsCommand::Issue {
            ca_dir,
            out,
            node,
            scheduler,
            names,
            days,
        }) => {
            let lifetime = std::time::Duration::from_secs(days.max(1) * 86_400);
            let leaf = match (node, scheduler) {
                (Some(node), _) => shoal_peer::tls::Leaf::node(&node, lifetime),
                (None, true) if !names.is_empty() => {
                    shoal_peer::tls::Leaf::scheduler(names, lifetime)
                }
                _ => {
                    eprintln!("shoal-peer tls issue: --scheduler needs at least one --name");
                    return ExitCode::from(2);
                }
            };
            match shoal_peer::tls::issue_dir(&ca_dir, &out, &leaf) {
                Ok(()) => {
                    println!(
                        "wrote ca.crt, tls.crt and tls.key for {} to {}",
                        leaf.common_name,
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shoal-peer tls issue: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let settings = match Settings::resolve(*args) {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("shoal-peer run: invalid configuration:");
                    for e in errors {
                        eprintln!("  - {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            logging(settings.json_logs);
            daemon::abort_on_panic();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(daemon::run(settings, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "shoal-peer failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
