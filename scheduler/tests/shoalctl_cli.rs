//! The real `shoalctl` binary against the operator API served on
//! `127.0.0.1:0`: tables, JSON, the env var, and its error messages and
//! exit codes.

mod common;

use std::process::Output;

use common::{fresh, held, swarm};
use serde_json::Value;
use shoal_proto::Digest;
use shoal_scheduler::http::{router, serve};

async fn shoalctl(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_shoalctl"))
        .env_remove("SHOAL_SCHEDULER")
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
    let server = tokio::spawn(serve(listener, router(state, metrics), async {
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
    assert!(tasks.contains("8.0 MiB"), "{tasks}");
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
