//! `shoalctl`: the operator CLI for a Shoal scheduler. Thin: parse the
//! command line, call [`shoal_scheduler::ctl::run`], print the error.
//!
//! Exit codes: 0 success, 1 the command failed (scheduler unreachable, API
//! error, unreadable token file), 2 usage (bad flag, malformed digest or
//! peer id, a write command without `--token-file`; clap prints the
//! message).

use std::process::ExitCode;

use clap::Parser;
use shoal_scheduler::ctl::{Cli, CtlError, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match run(&cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        // `shoalctl peers | head`: the reader had enough.
        Err(CtlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e @ CtlError::TokenMissing(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
