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
//!
//! With `--grpc-port`, each task's owner is named as the peers compute it
//! (rendezvous hashing over the replicas' `HOST:PORT`, the replica URLs' hosts
//! with that port): `task` says which replica owns the task, `tasks` how many of
//! the tasks a replica lists another one owns now (entries left from before a
//! move). In JSON each row gets `"key"` and `"owner"` (for `task`) or
//! `"not_owned"` (for `tasks`, the digests).

use std::io::Write;

use reqwest::Url;
use shoal_proto::{Digest, rendezvous};

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
    let keys: Option<Vec<String>> = cli
        .grpc_port
        .map(|port| bases.iter().map(|b| peer_key(b, port)).collect());
    let answers = futures::future::join_all(bases.iter().map(|b| ask(cli, client, token, b))).await;
    let mut shown = Vec::new();
    let mut first_error = None;
    for (base, answer) in bases.iter().zip(answers) {
        let replica = redact(base.as_str());
        let key = cli.grpc_port.map(|p| peer_key(base, p));
        match answer {
            Err(CtlError::Api { code: Some(c), .. })
                if c == "TASK_UNKNOWN" && matches!(cli.command, CtlCommand::Task { .. }) => {}
            Err(e) => {
                shown.push((replica, Err(e.to_string())));
                first_error.get_or_insert(e);
            }
            Ok((value, url)) => {
                let owner = match (&keys, &key) {
                    (Some(keys), Some(key)) => Some(Ownership::of(&value, keys, key)),
                    _ => None,
                };
                shown.push((replica, Ok((value, url, owner))));
            }
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
                    Ok((value, _, Some(o))) => {
                        let mut row = serde_json::json!({ "replica": replica, "key": o.key, "answer": value });
                        match o.kind {
                            OwnershipKind::Task(owner) => row["owner"] = owner.into(),
                            OwnershipKind::Tasks(not_owned) => row["not_owned"] = not_owned.into(),
                        }
                        row
                    }
                    Ok((value, _, None)) => serde_json::json!({ "replica": replica, "answer": value }),
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
                    Ok((value, url, owner)) => {
                        s.push_str(&render(cli, value, &url)?);
                        if let Some(o) = owner {
                            s.push_str(&o.line());
                        }
                    }
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

/// `HOST:PORT` of a replica as peers hash it: its URL's host with the peers' port.
fn peer_key(base: &Url, port: u16) -> String {
    // An IPv6 host comes in brackets, as a socket address shows it.
    format!("{}:{port}", base.host_str().unwrap_or_default())
}

/// Which replica owns what one answer lists.
struct Ownership {
    /// The answering replica's key.
    key: String,
    kind: OwnershipKind,
}

enum OwnershipKind {
    /// `task DIGEST`: the owner's key.
    Task(String),
    /// `tasks`: the digests listed here that another replica owns.
    Tasks(Vec<String>),
}

impl Ownership {
    /// Reads a `task` or `tasks` answer (`value`) of the replica `key` among `keys`.
    fn of(value: &serde_json::Value, keys: &[String], key: &str) -> Ownership {
        let owner = |d: &str| -> Option<String> {
            let d: Digest = d.parse().ok()?;
            rendezvous::owner(keys.iter().map(String::as_str), &d).map(str::to_owned)
        };
        let kind = match value["tasks"].as_array() {
            Some(tasks) => OwnershipKind::Tasks(
                tasks
                    .iter()
                    .filter_map(|t| t["digest"].as_str())
                    .filter(|d| owner(d).is_some_and(|o| o != key))
                    .map(str::to_owned)
                    .collect(),
            ),
            None => {
                OwnershipKind::Task(value["digest"].as_str().and_then(owner).unwrap_or_default())
            }
        };
        Ownership {
            key: key.to_owned(),
            kind,
        }
    }

    /// The line shown under the replica's section.
    fn line(&self) -> String {
        match &self.kind {
            OwnershipKind::Task(o) if *o == self.key => {
                format!("owner: this replica ({})\n", self.key)
            }
            OwnershipKind::Task(o) => format!(
                "owner: {o} (this replica, {}, knows the task from before a move)\n",
                self.key
            ),
            OwnershipKind::Tasks(n) if n.is_empty() => {
                format!("this replica ({}) owns every task it lists\n", self.key)
            }
            OwnershipKind::Tasks(n) => format!(
                "{} of these tasks another replica owns now (entries from before a move; this replica is {})\n",
                n.len(),
                self.key
            ),
        }
    }
}
