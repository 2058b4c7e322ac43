//! One `shoalctl` command against several scheduler replicas (`--scheduler` and
//! each `--replica`). Each replica answers for the tasks it owns, so every answer
//! is shown under the replica that gave it: with `-o table` one section per
//! replica, with `-o json` `{"replicas": [{"replica": URL, "answer": …}]}` (or
//! `"error"` for a replica that failed). A write goes to every replica.
//!
//! `task DIGEST` shows the replicas that know the task (`TASK_UNKNOWN` from the
//! others is left out; from all of them it is the error). Any other failure of a
//! replica is shown in its place, and the command fails after every replica was
//! asked.

use std::io::Write;

use reqwest::Url;

use super::{Cli, CtlCommand, CtlError, Output, ask, redact, render};
use crate::auth::OperatorToken;

/// Runs `cli`'s command against `--scheduler` and every `--replica`.
pub(super) async fn run(
    cli: &Cli,
    client: &reqwest::Client,
    token: Option<&OperatorToken>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let bases: Vec<&Url> = std::iter::once(&cli.scheduler)
        .chain(cli.replicas.iter())
        .collect();
    let answers = futures::future::join_all(bases.iter().map(|b| ask(cli, client, token, b))).await;
    let mut shown = Vec::new();
    let mut first_error = None;
    for (base, answer) in bases.iter().zip(answers) {
        let replica = redact(base.as_str());
        match answer {
            Err(CtlError::Api { code: Some(c), .. })
                if c == "TASK_UNKNOWN" && matches!(cli.command, CtlCommand::Task { .. }) => {}
            Err(e) => {
                shown.push((replica, Err(e.to_string())));
                first_error.get_or_insert(e);
            }
            Ok((value, url)) => shown.push((replica, Ok((value, url)))),
        }
    }
    if shown.is_empty() {
        // Every replica said TASK_UNKNOWN: ask one again for its own error.
        return ask(cli, client, token, &cli.scheduler).await.map(|_| ());
    }
    let text = match cli.output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = shown
                .into_iter()
                .map(|(replica, a)| match a {
                    Ok((value, _)) => serde_json::json!({ "replica": replica, "answer": value }),
                    Err(e) => serde_json::json!({ "replica": replica, "error": e }),
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&serde_json::json!({ "replicas": rows }))
                .expect("a JSON value serialises");
            s.push('\n');
            s
        }
        Output::Table => {
            let mut s = String::new();
            for (replica, a) in shown {
                s.push_str(&format!("== replica {replica}\n"));
                match a {
                    Ok((value, url)) => s.push_str(&render(cli, value, &url)?),
                    Err(e) => s.push_str(&format!("error: {e}\n")),
                }
            }
            s
        }
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
