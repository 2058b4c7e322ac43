//! `shoalctl`, the operator CLI: asks the scheduler's operator API (see
//! [`crate::http`]) about peers and tasks and prints a table or the API's
//! JSON, and steers the swarm through its write endpoints (`quarantine`,
//! `unquarantine`, `drop`, `preheat`, `job --cancel`, with the operator token
//! of `--token-file`). The
//! binary (`src/bin/shoalctl.rs`) only parses and calls [`run`].
//!
//! Layout:
//! - this file: arguments, the HTTP client, errors;
//! - `ctl/render.rs`: what the API returns, as the CLI reads it, and how
//!   each answer is printed as a table;
//! - `ctl/table.rs`: a small aligned-column formatter and human units;
//! - `ctl/replicas.rs`: one command against several scheduler replicas
//!   (`--replica`), each answer under the replica that gave it;
//! - `ctl/preheat.rs`: `preheat` (with `--wait`'s progress bar), `jobs`
//!   (merged over the replicas), `job`.
//!
//! Not here (yet): watch mode, TLS
//! client certificates (the API is cluster-internal plain HTTP).

mod preheat;
mod render;
mod replicas;
mod table;

pub use preheat::PreheatArgs;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::Url;
use serde::Deserialize;
use shoal_proto::Digest;

use crate::auth::OperatorToken;
use crate::core::PeerId;

/// Where the scheduler's operator API is when nobody says.
pub const DEFAULT_SCHEDULER: &str = "http://127.0.0.1:7680";

/// `shoalctl`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "shoalctl",
    version,
    about = "Inspect a Shoal scheduler: its peers and tasks"
)]
pub struct Cli {
    /// Base URL of the scheduler's operator API.
    #[arg(long, env = "SHOAL_SCHEDULER", default_value = DEFAULT_SCHEDULER, global = true, value_parser = parse_base_url, hide_env_values = true)]
    pub scheduler: Url,
    /// The operator API of another scheduler replica (repeatable). Each replica
    /// answers for the tasks it owns: the command asks `--scheduler` and every
    /// `--replica`, and shows each answer under the replica that gave it; a write
    /// (quarantine, unquarantine, drop) reaches every one.
    #[arg(long = "replica", env = "SHOAL_REPLICAS", value_delimiter = ',', global = true, value_parser = parse_base_url, hide_env_values = true)]
    pub replicas: Vec<Url>,
    /// With `--replica`, when the replicas are reached at their pod IPs: the port
    /// peers dial them on (the chart's 7600). Each task's owner is then named, as
    /// the peers compute it (rendezvous hashing over `HOST:PORT` of the replicas'
    /// URLs): `tasks` counts the entries a replica lists for tasks another one owns
    /// now (left from before a move), and `task` says which replica owns it.
    #[arg(long, env = "SHOAL_GRPC_PORT", global = true)]
    pub grpc_port: Option<u16>,
    /// Output format: aligned table for people, or the API's JSON.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 10, global = true, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// File holding the operator token (the scheduler's --operator-token-file);
    /// needed by quarantine, unquarantine, drop, preheat and job --cancel.
    #[arg(long, env = "SHOAL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an `https://` scheduler URL (the
    /// scheduler's --http-tls-dir), besides the system's roots.
    #[arg(long, env = "SHOAL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// What to show.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `-o` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns with headers; sizes in KiB/MiB/GiB, digests shortened in lists.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// `shoalctl`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List the peers in the swarm.
    Peers,
    /// List the tasks (blobs) the scheduler knows.
    Tasks,
    /// Show one task and every peer taking part, with its progress.
    Task {
        /// The blob's digest, sha256:<64 lowercase hex>.
        #[arg(value_parser = parse_digest)]
        digest: Digest,
    },
    /// Stop offering a peer as a parent, for every task (needs --token-file).
    Quarantine {
        /// The peer's id.
        #[arg(value_parser = parse_peer)]
        peer: PeerId,
    },
    /// Offer a peer as a parent again (needs --token-file).
    Unquarantine {
        /// The peer's id.
        #[arg(value_parser = parse_peer)]
        peer: PeerId,
    },
    /// Tell every peer holding a task to drop it from its store (needs --token-file).
    Drop {
        /// The blob's digest, sha256:<64 lowercase hex>.
        #[arg(value_parser = parse_digest)]
        digest: Digest,
    },
    /// Warm peers with an image before it is needed (needs --token-file).
    Preheat(PreheatArgs),
    /// List the preheat jobs (of every replica, with --replica).
    Jobs,
    /// Show one preheat job and each peer's part; --cancel stops it (needs
    /// --token-file).
    Job {
        /// The job's id (from `preheat` or `jobs`).
        #[arg(value_parser = parse_job_id)]
        id: String,
        /// Cancel the job: its peers stop and it ends `cancelled`.
        #[arg(long)]
        cancel: bool,
    },
}

impl CtlCommand {
    /// The HTTP method and path (under the base URL) of this command.
    fn request(&self) -> (reqwest::Method, String) {
        use reqwest::Method;
        match self {
            CtlCommand::Peers => (Method::GET, "api/v1/peers".to_owned()),
            CtlCommand::Tasks => (Method::GET, "api/v1/tasks".to_owned()),
            CtlCommand::Task { digest } => (Method::GET, format!("api/v1/tasks/{digest}")),
            CtlCommand::Quarantine { peer } => {
                (Method::POST, format!("api/v1/peers/{peer}/quarantine"))
            }
            CtlCommand::Unquarantine { peer } => {
                (Method::DELETE, format!("api/v1/peers/{peer}/quarantine"))
            }
            CtlCommand::Drop { digest } => (Method::POST, format!("api/v1/tasks/{digest}/drop")),
            CtlCommand::Preheat(_) => (Method::POST, "api/v1/preheat".to_owned()),
            CtlCommand::Jobs => (Method::GET, "api/v1/preheat".to_owned()),
            CtlCommand::Job { id, cancel: false } => (Method::GET, format!("api/v1/preheat/{id}")),
            CtlCommand::Job { id, cancel: true } => {
                (Method::DELETE, format!("api/v1/preheat/{id}"))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            CtlCommand::Peers => "peers",
            CtlCommand::Tasks => "tasks",
            CtlCommand::Task { .. } => "task",
            CtlCommand::Quarantine { .. } => "quarantine",
            CtlCommand::Unquarantine { .. } => "unquarantine",
            CtlCommand::Drop { .. } => "drop",
            CtlCommand::Preheat(_) => "preheat",
            CtlCommand::Jobs => "jobs",
            CtlCommand::Job { cancel: false, .. } => "job",
            CtlCommand::Job { cancel: true, .. } => "job --cancel",
        }
    }

    fn writes(&self) -> bool {
        matches!(
            self,
            CtlCommand::Quarantine { .. }
                | CtlCommand::Unquarantine { .. }
                | CtlCommand::Drop { .. }
                | CtlCommand::Preheat(_)
                | CtlCommand::Job { cancel: true, .. }
        )
    }
}

fn parse_peer(s: &str) -> Result<PeerId, String> {
    PeerId::parse(s).map_err(str::to_owned)
}

fn parse_job_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a job id is 1 to 64 characters of [A-Za-z0-9._-]".into())
    }
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    s.parse::<Digest>().map_err(|e| e.to_string())
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url =
        Url::parse(s).map_err(|e| format!("not a URL ({e}); expected e.g. {DEFAULT_SCHEDULER}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme must be http or https, got {:?}",
            url.scheme()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the scheduler URL may not carry a query or fragment".into());
    }
    Ok(url)
}

/// Why a `shoalctl` command failed. Printed as `error: <this>`.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No HTTP answer: connection refused, DNS, timeout, TLS.
    #[error("could not reach the scheduler at {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The innermost cause.
        reason: String,
    },
    /// The API answered with an error; `message` is its own.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code (`TASK_UNKNOWN`, …) when it sent one.
        code: Option<String>,
        /// The API's message, or a description of the answer.
        message: String,
    },
    /// The answer was not what this version of `shoalctl` understands.
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// The URL asked.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// A write command without `--token-file` (exit code 2, like clap's).
    #[error(
        "{0} changes the swarm and needs the operator token: pass --token-file FILE (or set SHOAL_TOKEN_FILE)"
    )]
    TokenMissing(&'static str),
    /// The token file cannot be used; the message names the file, never
    /// its content.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The API's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(cli.timeout.min(5)))
        .timeout(Duration::from_secs(cli.timeout))
        .user_agent(concat!("shoalctl/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cli.ca_file {
        let ca_error = |reason: String| CtlError::Unreachable {
            url: redact(cli.scheduler.as_str()),
            reason: format!("--ca-file {}: {reason}", path.display()),
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(innermost(&e)))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder.build().map_err(|e| CtlError::Unreachable {
        url: redact(cli.scheduler.as_str()),
        reason: innermost(&e),
    })?;
    let token = if cli.command.writes() {
        let path = cli
            .token_file
            .as_ref()
            .ok_or(CtlError::TokenMissing(cli.command.name()))?;
        let token = OperatorToken::from_file(path).map_err(|e| CtlError::Token {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Some(token)
    } else {
        None
    };
    let bases: Vec<&Url> = std::iter::once(&cli.scheduler)
        .chain(cli.replicas.iter())
        .collect();
    match &cli.command {
        CtlCommand::Preheat(args) => {
            let token = token.as_ref().expect("preheat writes: its token was read");
            return preheat::preheat(cli, args, &client, token, out).await;
        }
        CtlCommand::Jobs => return preheat::jobs(cli, &client, &bases, out).await,
        CtlCommand::Job { id, cancel } => {
            return preheat::job(cli, &client, token.as_ref(), &bases, id, *cancel, out).await;
        }
        _ => {}
    }
    if !cli.replicas.is_empty() {
        return replicas::run(cli, &client, token.as_ref(), out).await;
    }
    let (value, url) = ask(cli, &client, token.as_ref(), &cli.scheduler).await?;
    let text = render(cli, value, &url)?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Sends the command to the operator API at `base`; its JSON answer and the
/// (redacted) URL asked.
async fn ask(
    cli: &Cli,
    client: &reqwest::Client,
    token: Option<&OperatorToken>,
    base: &Url,
) -> Result<(serde_json::Value, String), CtlError> {
    let (method, path) = cli.command.request();
    let url = format!("{}/{path}", base.as_str().trim_end_matches('/'));
    let mut request = client.request(method, &url);
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let value = send_json(request, &url, cli.timeout).await?;
    Ok((value, redact(&url)))
}

/// One answer as `-o` asks: pretty JSON, or the command's table.
fn render(cli: &Cli, value: serde_json::Value, url: &str) -> Result<String, CtlError> {
    Ok(match cli.output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&value).expect("a JSON value serialises");
            s.push('\n');
            s
        }
        Output::Table => {
            let decode = |e: serde_json::Error| CtlError::Decode {
                url: url.to_owned(),
                reason: e.to_string(),
            };
            match &cli.command {
                CtlCommand::Peers => render::peers(&serde_json::from_value(value).map_err(decode)?),
                CtlCommand::Tasks => render::tasks(&serde_json::from_value(value).map_err(decode)?),
                CtlCommand::Task { .. } => {
                    render::task(&serde_json::from_value(value).map_err(decode)?)
                }
                CtlCommand::Quarantine { .. } | CtlCommand::Unquarantine { .. } => {
                    render::quarantine(&serde_json::from_value(value).map_err(decode)?)
                }
                CtlCommand::Drop { .. } => {
                    render::dropped(&serde_json::from_value(value).map_err(decode)?)
                }
                // Answered by `preheat.rs` before this is reached.
                CtlCommand::Preheat(_) | CtlCommand::Jobs | CtlCommand::Job { .. } => {
                    let mut s = serde_json::to_string_pretty(&value).expect("JSON serialises");
                    s.push('\n');
                    s
                }
            }
        }
    })
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<invalid URL>".to_owned(),
    }
}

/// Sends `request` (to `url`) and parses its JSON, turning every failure
/// into a [`CtlError`] (whose messages never show the URL's password nor
/// the token).
async fn send_json(
    request: reqwest::RequestBuilder,
    url: &str,
    timeout: u64,
) -> Result<serde_json::Value, CtlError> {
    let shown = redact(url);
    let unreachable = |e: reqwest::Error| CtlError::Unreachable {
        url: shown.clone(),
        reason: if e.is_timeout() {
            format!("no answer within {timeout}s")
        } else {
            innermost(&e)
        },
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => CtlError::Api {
                status: status.as_u16(),
                code: Some(b.error.code),
                // From the network, to a terminal: no escape sequences.
                message: table::sanitize(&b.error.message),
            },
            Err(_) => CtlError::Api {
                status: status.as_u16(),
                code: None,
                message: format!("{shown} answered {status} (is this a Shoal scheduler?)"),
            },
        });
    }
    serde_json::from_slice(&body).map_err(|e| CtlError::Decode {
        url: shown.clone(),
        reason: format!("not JSON ({e}); is this a Shoal scheduler?"),
    })
}

/// The deepest cause of an error: "Connection refused (os error 111)" rather
/// than reqwest's "error sending request for url (…)".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_global_flags_anywhere() {
        let cli = Cli::try_parse_from([
            "shoalctl",
            "peers",
            "-o",
            "json",
            "--scheduler",
            "http://s:1/",
        ])
        .unwrap();
        assert!(matches!(cli.command, CtlCommand::Peers));
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.scheduler.as_str(), "http://s:1/");
        let d = format!("sha256:{}", "ab".repeat(32));
        let cli = Cli::try_parse_from(["shoalctl", "task", &d]).unwrap();
        assert!(matches!(cli.command, CtlCommand::Task { digest } if digest.to_string() == d));
        assert_eq!(cli.output, Output::Table);
    }

    #[test]
    fn rejects_bad_digests_and_urls_as_usage_errors() {
        let e = Cli::try_parse_from(["shoalctl", "task", "sha256:bad"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("64 hex characters"), "{e}");
        for url in ["ftp://x", "not a url", "http://x/?a=b"] {
            let e = Cli::try_parse_from(["shoalctl", "--scheduler", url, "peers"]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{url}");
        }
        assert!(Cli::try_parse_from(["shoalctl"]).is_err());
    }

    #[test]
    fn messages_never_show_a_password() {
        assert_eq!(
            redact("http://ops:s3cret@s:7680/api/v1/peers"),
            "http://ops:***@s:7680/api/v1/peers"
        );
        assert_eq!(
            redact("http://s:7680/api/v1/peers"),
            "http://s:7680/api/v1/peers"
        );
    }
}
