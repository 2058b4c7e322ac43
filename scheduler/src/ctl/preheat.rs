//! `shoalctl preheat`, `jobs` and `job`: preheat jobs through the operator API.
//!
//! - `preheat IMAGE [--platform P]… [--zone Z | --count N | --percent P |
//!   --nodes a,b] [--username U --password-file F | --registry-token-file F]
//!   [--wait]` posts a job to `--scheduler` (a job lives on the replica that
//!   accepted it). With `--wait` it follows the job: a live progress bar on
//!   stderr when that is a terminal, a plain line per change otherwise, then
//!   the summary table; it fails unless the job succeeded.
//! - `jobs` lists the jobs; with `--replica`, of every replica in one table
//!   (a REPLICA column; `-o json`: each job gets a `replica` field).
//! - `job ID` shows one job (the replica that knows it), `job ID --cancel`
//!   cancels it.
//!
//! Secrets are read from files, never taken as flag values (a command line is
//! visible to every user of the machine), and never printed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use reqwest::{Method, Url};
use serde::Deserialize;

use super::table::{Align, Table, human_duration, human_size, sanitize};
use super::{Cli, CtlError, Output, redact, send_json};
use crate::auth::OperatorToken;

/// How often `--wait` asks.
const POLL: Duration = Duration::from_millis(500);

/// `shoalctl preheat`'s arguments.
#[derive(Debug, Args)]
pub struct PreheatArgs {
    /// The image: `[registry/]repository[:tag][@digest]`.
    pub image: String,
    /// A platform to fetch from an index, os/arch[/variant] (repeatable;
    /// default: each node's own).
    #[arg(long = "platform")]
    pub platforms: Vec<String>,
    /// Only the peers of this zone.
    #[arg(long, group = "scope")]
    pub zone: Option<String>,
    /// This many peers, chosen at random.
    #[arg(long, group = "scope", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// This share of the peers (1-100), rounded up.
    #[arg(long, group = "scope", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub percent: Option<u64>,
    /// These peers, by peer id or hostname (comma-separated).
    #[arg(long, group = "scope", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// User name for a private image (with --password-file).
    #[arg(long, requires = "password_file")]
    pub username: Option<String>,
    /// File holding the password for --username.
    #[arg(
        long,
        env = "SHOAL_REGISTRY_PASSWORD_FILE",
        requires = "username",
        hide_env_values = true
    )]
    pub password_file: Option<PathBuf>,
    /// File holding a registry bearer token for a private image.
    #[arg(long, conflicts_with = "username")]
    pub registry_token_file: Option<PathBuf>,
    /// Follow the job until it ends: progress, then a summary table.
    #[arg(long)]
    pub wait: bool,
}

/// A job as the CLI reads it (leniently).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct Job {
    id: String,
    image: String,
    scope: String,
    state: String,
    age_secs: u64,
    duration_secs: Option<f64>,
    summary: Summary,
    peers: Vec<Part>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct Summary {
    peers: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    bytes_done: u64,
    bytes_total: u64,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct Part {
    peer: String,
    state: String,
    blobs_done: u32,
    blobs_total: u32,
    bytes_done: u64,
    bytes_total: u64,
    error: Option<String>,
}

fn read_secret(path: &PathBuf, what: &str) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path).map_err(|e| CtlError::Token {
        path: path.display().to_string(),
        reason: format!("cannot read the {what}: {e}"),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

fn url(base: &Url, path: &str) -> String {
    format!("{}/{path}", base.as_str().trim_end_matches('/'))
}

/// Runs `preheat`.
pub(super) async fn preheat(
    cli: &Cli,
    args: &PreheatArgs,
    client: &reqwest::Client,
    token: &OperatorToken,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let scope = if let Some(z) = &args.zone {
        serde_json::json!({ "zone": z })
    } else if let Some(n) = args.count {
        serde_json::json!({ "count": n })
    } else if let Some(p) = args.percent {
        serde_json::json!({ "percent": p })
    } else if !args.nodes.is_empty() {
        serde_json::json!({ "nodes": args.nodes })
    } else {
        serde_json::json!("all")
    };
    let mut body = serde_json::json!({
        "image": args.image,
        "platforms": args.platforms,
        "scope": scope,
    });
    if let (Some(user), Some(file)) = (&args.username, &args.password_file) {
        body["credential"] =
            serde_json::json!({ "username": user, "password": read_secret(file, "password")? });
    } else if let Some(file) = &args.registry_token_file {
        body["credential"] = serde_json::json!({ "token": read_secret(file, "registry token")? });
    }
    let target = url(&cli.scheduler, "api/v1/preheat");
    let request = client.post(&target).bearer_auth(token.expose()).json(&body);
    let created = send_json(request, &target, cli.timeout).await?;
    drop(body);
    if !args.wait {
        return print_job(cli, created, &target, out);
    }
    let job: Job = decode(created, &target)?;
    let target = url(&cli.scheduler, &format!("api/v1/preheat/{}", job.id));
    let tty = std::io::stderr().is_terminal();
    let mut shown = String::new();
    let last = loop {
        let value = send_json(client.get(&target), &target, cli.timeout).await?;
        let job: Job = decode(value.clone(), &target)?;
        let line = progress_line(&job);
        if line != shown {
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
            shown = line;
        }
        if job.state != "running" {
            if tty {
                eprintln!();
            }
            break value;
        }
        tokio::time::sleep(POLL).await;
    };
    let job: Job = decode(last.clone(), &target)?;
    print_job(cli, last, &target, out)?;
    if job.state == "succeeded" {
        Ok(())
    } else {
        Err(CtlError::Api {
            status: 200,
            code: Some("JOB_NOT_SUCCEEDED".into()),
            message: format!(
                "preheat job {} ended {}: {} of {} peers succeeded",
                job.id, job.state, job.summary.succeeded, job.summary.peers
            ),
        })
    }
}

fn decode(value: serde_json::Value, url: &str) -> Result<Job, CtlError> {
    serde_json::from_value(value).map_err(|e| CtlError::Decode {
        url: redact(url),
        reason: e.to_string(),
    })
}

/// `[#######-------]  45%  2/3 peers  12.0 MiB / 26.7 MiB  running`.
fn progress_line(job: &Job) -> String {
    const WIDTH: usize = 30;
    let s = &job.summary;
    let share = if s.bytes_total > 0 {
        s.bytes_done as f64 / s.bytes_total as f64
    } else if job.state == "running" {
        0.0
    } else {
        1.0
    };
    let filled = ((share * WIDTH as f64) as usize).min(WIDTH);
    format!(
        "[{}{}] {:>3.0}%  {}/{} peers done  {} / {}  {}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        share * 100.0,
        s.succeeded + s.failed + s.cancelled,
        s.peers,
        human_size(s.bytes_done),
        human_size(s.bytes_total),
        sanitize(&job.state),
    )
}

/// A job: JSON, or its summary and a table of its peers.
fn print_job(
    cli: &Cli,
    value: serde_json::Value,
    url: &str,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let text = match cli.output {
        Output::Json => pretty(&value),
        Output::Table => job_table(&decode(value, url)?),
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a JSON value serialises");
    s.push('\n');
    s
}

fn job_table(job: &Job) -> String {
    let mut s = format!(
        "job {}  image {}  scope {}  state {}  ({} of {} peers succeeded{})\n",
        sanitize(&job.id),
        sanitize(&job.image),
        sanitize(&job.scope),
        sanitize(&job.state),
        job.summary.succeeded,
        job.summary.peers,
        job.duration_secs
            .map(|d| format!(", took {d:.1}s"))
            .unwrap_or_default(),
    );
    let mut t = Table::new(&[
        ("PEER", Align::Left),
        ("STATE", Align::Left),
        ("BLOBS", Align::Right),
        ("BYTES", Align::Right),
        ("ERROR", Align::Left),
    ]);
    for p in &job.peers {
        t.row(vec![
            p.peer.clone(),
            p.state.clone(),
            format!("{}/{}", p.blobs_done, p.blobs_total),
            format!("{}/{}", human_size(p.bytes_done), human_size(p.bytes_total)),
            p.error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    s.push_str(&t.render());
    s
}

/// Runs `jobs` against `bases` (the scheduler and every replica), merged.
pub(super) async fn jobs(
    cli: &Cli,
    client: &reqwest::Client,
    bases: &[&Url],
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let answers = futures::future::join_all(bases.iter().map(|b| async move {
        let target = url(b, "api/v1/preheat");
        send_json(client.get(&target), &target, cli.timeout)
            .await
            .map(|v| (redact(b.as_str()), v, target))
    }))
    .await;
    let mut rows: Vec<(String, serde_json::Value)> = Vec::new();
    let mut first_error = None;
    for a in answers {
        match a {
            Ok((replica, v, _)) => {
                for j in v["jobs"].as_array().cloned().unwrap_or_default() {
                    rows.push((replica.clone(), j));
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    let several = bases.len() > 1;
    let text = match cli.output {
        Output::Json => {
            let jobs: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(r, mut j)| {
                    if several {
                        j["replica"] = serde_json::Value::String(r);
                    }
                    j
                })
                .collect();
            pretty(&serde_json::json!({ "jobs": jobs }))
        }
        Output::Table => {
            let mut headers = vec![
                ("ID", Align::Left),
                ("IMAGE", Align::Left),
                ("SCOPE", Align::Left),
                ("STATE", Align::Left),
                ("PEERS OK/ALL", Align::Right),
                ("BYTES", Align::Right),
                ("AGE", Align::Right),
            ];
            if several {
                headers.push(("REPLICA", Align::Left));
            }
            let mut t = Table::new(&headers);
            for (replica, j) in rows {
                let j: Job = serde_json::from_value(j).unwrap_or_default();
                t.row(vec![
                    j.id,
                    j.image,
                    j.scope,
                    j.state,
                    format!("{}/{}", j.summary.succeeded, j.summary.peers),
                    format!(
                        "{}/{}",
                        human_size(j.summary.bytes_done),
                        human_size(j.summary.bytes_total)
                    ),
                    human_duration(j.age_secs),
                    replica,
                ]);
            }
            t.render()
        }
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    first_error.map_or(Ok(()), Err)
}

/// Runs `job ID [--cancel]` against `bases`: the replica that knows the job.
pub(super) async fn job(
    cli: &Cli,
    client: &reqwest::Client,
    token: Option<&OperatorToken>,
    bases: &[&Url],
    id: &str,
    cancel: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let path = format!("api/v1/preheat/{id}");
    let mut unknown = None;
    for base in bases {
        let target = url(base, &path);
        let mut request =
            client.request(if cancel { Method::DELETE } else { Method::GET }, &target);
        if let Some(t) = token {
            request = request.bearer_auth(t.expose());
        }
        match send_json(request, &target, cli.timeout).await {
            Ok(v) => return print_job(cli, v, &target, out),
            Err(e @ CtlError::Api { code: Some(_), .. }) if matches!(&e, CtlError::Api { code: Some(c), .. } if c == "JOB_UNKNOWN") =>
            {
                unknown = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(unknown.expect("at least one base"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_and_table_show_the_job() {
        let job = Job {
            id: "abc".into(),
            image: "r/a:v1".into(),
            scope: "count=2".into(),
            state: "running".into(),
            summary: Summary {
                peers: 2,
                succeeded: 1,
                bytes_done: 3 << 20,
                bytes_total: 6 << 20,
                ..Summary::default()
            },
            peers: vec![Part {
                peer: "node-1".into(),
                state: "failed".into(),
                error: Some("boom\x1b[31m".into()),
                ..Part::default()
            }],
            ..Job::default()
        };
        let line = progress_line(&job);
        assert!(
            line.starts_with("[###############---------------]  50%  1/2 peers done"),
            "{line}"
        );
        let t = job_table(&job);
        assert!(t.contains("node-1") && t.contains("boom"), "{t}");
        assert!(
            !t.contains('\x1b'),
            "no escape sequence reaches the terminal"
        );
    }
}
