//! The real `shoalctl` binary against the operator API served on
//! `127.0.0.1:0`: tables, JSON, the env vars, the write commands with their
//! token file, and its error messages and exit codes.

mod common;

use std::process::Output;

use common::{fresh, held, swarm};
use serde_json::Value;
use shoal_proto::Digest;
use shoal_scheduler::auth::OperatorToken;
use shoal_scheduler::http::{router, serve};

async fn shoalctl(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_shoalctl"))
        .env_remove("SHOAL_SCHEDULER")
        .env_remove("SHOAL_TOKEN_FILE")
        .arg("--scheduler")
        .arg(url)
        .args(args)
        .output()
        .await
        .expect("run shoalctl")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "shoalctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_tables_and_json_and_clear_errors() {
    let (state, metrics) = swarm();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router(state, metrics, None), async {
        let _ = stopped.await;
    }));

    let peers = stdout(&shoalctl(&url, &["peers"]).await);
    let mut lines = peers.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID ") && header.contains("HOSTNAME") && header.contains("LEASE"),
        "{peers}"
    );
    for p in 0..3 {
        assert!(peers.contains(&format!("peer-{p}   node-{p}")), "{peers}");
    }
    // Columns line up: every row starts its HOSTNAME where the header does.
    let col = header.find("HOSTNAME").unwrap();
    assert!(lines.all(|l| l[col..].starts_with("node-")), "{peers}");

    let json: Value =
        serde_json::from_str(&stdout(&shoalctl(&url, &["peers", "-o", "json"]).await)).unwrap();
    assert_eq!(json["peers"].as_array().unwrap().len(), 3);
    assert_eq!(json["peers"][1]["id"], "peer-1");

    let tasks = stdout(&shoalctl(&url, &["tasks"]).await);
    assert!(tasks.starts_with("DIGEST "), "{tasks}");
    assert!(tasks.contains("sha256:111111111111… "), "{tasks}");
    // SIZE: two 256 KiB pieces and a short third.
    assert!(tasks.contains("524.1 KiB"), "{tasks}");
    assert!(
        !tasks.contains(&held().to_string()),
        "list view shortens digests: {tasks}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&shoalctl(&url, &["-o", "json", "tasks"]).await)).unwrap();
    assert_eq!(json["tasks"][1]["digest"], fresh().to_string());

    let digest = fresh().to_string();
    let task = stdout(&shoalctl(&url, &["task", &digest]).await);
    assert!(
        task.contains(&format!("Digest:          {digest}\n")),
        "{task}"
    );
    assert!(task.contains("Back-to-source:  peer-1\n"), "{task}");
    let holders: Vec<&str> = task
        .lines()
        .skip_while(|l| !l.starts_with("PEER"))
        .collect();
    assert_eq!(holders.len(), 3, "{task}");
    assert!(
        holders[1].starts_with("peer-1") && holders[1].contains("1/3"),
        "{task}"
    );
    assert!(
        holders[2].starts_with("peer-2") && holders[2].ends_with("   peer-1"),
        "{task}"
    );
    let json: Value = serde_json::from_str(&stdout(
        &shoalctl(&url, &["task", &digest, "-o", "json"]).await,
    ))
    .unwrap();
    assert_eq!(json["holders"][1]["parents"][0], "peer-1");

    // SHOAL_SCHEDULER stands in for --scheduler.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoalctl"))
        .env("SHOAL_SCHEDULER", &url)
        .args(["-o", "json", "peers"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()["peers"][0]["id"],
        "peer-0"
    );

    // Malformed digest: a usage error before any request.
    let out = shoalctl(&url, &["task", "sha256:bad"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sha256:bad") && err.contains("64 hex characters"),
        "{err}"
    );

    // Unknown task: the API's message.
    let unknown = Digest::from_sha256([0x33; 32]).to_string();
    let out = shoalctl(&url, &["task", &unknown]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!("error: no peer holds or downloads {unknown}\n")
    );
    assert!(out.stdout.is_empty());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // Nobody listens there any more: the error names the URL.
    let out = shoalctl(&url, &["peers"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: could not reach the scheduler at {url}/api/v1/peers: "
        )),
        "{err}"
    );
}

const TOKEN: &str = "cli-token-0123456789abcdef";

/// Serves the test swarm's operator API with `token`; returns its URL and
/// a stop handle.
async fn serve_swarm(
    token: Option<&str>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (state, metrics) = swarm();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let token = token.map(|t| OperatorToken::parse(t).unwrap());
    let server = tokio::spawn(serve(listener, router(state, metrics, token), async {
        let _ = stopped.await;
    }));
    (url, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_commands_use_the_token_file_and_say_what_changed() {
    let dir = std::env::temp_dir().join(format!("shoalctl-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let wrong_file = dir.join("wrong");
    std::fs::write(&wrong_file, "not-the-operator-token-at-all").unwrap();
    let token_path = token_file.to_str().unwrap();
    let (url, stop, server) = serve_swarm(Some(TOKEN)).await;

    let out = shoalctl(&url, &["quarantine", "peer-1", "--token-file", token_path]).await;
    assert_eq!(
        stdout(&out),
        "peer peer-1 is quarantined (operator): offered as a parent for no task\n"
    );
    let peers = stdout(&shoalctl(&url, &["peers"]).await);
    assert!(
        peers.lines().next().unwrap().ends_with("QUARANTINE"),
        "{peers}"
    );
    let row = peers.lines().find(|l| l.starts_with("peer-1")).unwrap();
    assert!(row.ends_with("operator"), "{peers}");
    assert!(
        peers
            .lines()
            .find(|l| l.starts_with("peer-0"))
            .unwrap()
            .ends_with('-')
    );

    // SHOAL_TOKEN_FILE stands in for --token-file; -o json prints the API's answer.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoalctl"))
        .env("SHOAL_SCHEDULER", &url)
        .env("SHOAL_TOKEN_FILE", &token_file)
        .args(["unquarantine", "peer-1", "-o", "json"])
        .output()
        .await
        .unwrap();
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["quarantined"], false);

    let digest = held().to_string();
    let out = shoalctl(&url, &["drop", &digest, "--token-file", token_path]).await;
    assert_eq!(
        stdout(&out),
        format!("drop of {digest} sent to 0 peers: -\nnot connected (they keep it): peer-0\n")
    );

    // No token file: a usage error, before any request.
    let out = shoalctl(&url, &["quarantine", "peer-1"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("SHOAL_TOKEN_FILE"),
        "{err}"
    );
    // A peer id that cannot be one: usage error too.
    let out = shoalctl(&url, &["quarantine", "bad id", "--token-file", token_path]).await;
    assert_eq!(out.status.code(), Some(2));

    // The wrong token: the API's 401, and neither token is printed.
    let out = shoalctl(
        &url,
        &[
            "drop",
            &digest,
            "--token-file",
            wrong_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err, "error: the bearer token is not the operator token\n");
    // A token file that is not there names the file.
    let missing = dir.join("missing");
    let out = shoalctl(
        &url,
        &["drop", &digest, "--token-file", missing.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: token file {}: cannot read it",
            missing.display()
        )),
        "{err}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // A scheduler without a token: writes are disabled, reads work.
    let (url, stop, server) = serve_swarm(None).await;
    let out = shoalctl(&url, &["quarantine", "peer-1", "--token-file", token_path]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "error: write endpoints disabled: no --operator-token-file\n"
    );
    assert!(!err.contains(TOKEN));
    stdout(&shoalctl(&url, &["peers"]).await);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
