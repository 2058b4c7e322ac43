//! Shared by the preheat tests (`preheat.rs`, `preheat_more.rs`): a scheduler with
//! an operator token and peers with their own `hosts.toml`, the operator API's preheat
//! routes, and what the registry served.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::Registry;
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};

pub(crate) const TOKEN: &str = "preheat-test-operator-token-0123456789";
pub(crate) const REPO: &str = "team/app";
/// Bound on every wait (a hang, not a timing).
pub(crate) const WAIT: Duration = Duration::from_secs(120);

pub(crate) fn tools_present(test: &str, more: &[&str]) -> bool {
    let mut tools = vec!["docker-registry", "skopeo"];
    tools.extend(more);
    shoal_tests::require_tools(test, &tools)
}

pub(crate) struct Cluster {
    pub(crate) sched: SchedulerProcess,
    pub(crate) peers: Vec<PeerProcess>,
    pub(crate) token_file: PathBuf,
}

/// A scheduler with the operator token and `n` peers with `hosts`.
pub(crate) async fn cluster(dir: &Path, hosts: PathBuf, n: usize) -> Cluster {
    let tls = dir.join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let token_file = dir.join("operator-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let sched = SchedulerProcess::start_with(
        &dir.join("scheduler"),
        &tls,
        &[
            "--operator-token-file".into(),
            token_file.display().to_string(),
        ],
    )
    .await
    .unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: vec![],
    };
    let mut peers = Vec::new();
    for i in 0..n {
        peers.push(
            PeerProcess::start(dir, &format!("node-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    wait_sessions(&sched, n).await;
    Cluster {
        sched,
        peers,
        token_file,
    }
}

/// Waits until `n` peers have joined `sched` with their session open (a job orders
/// only those).
pub(crate) async fn wait_sessions(sched: &SchedulerProcess, n: usize) {
    sched.wait_for_peers(n).await.unwrap();
    let start = Instant::now();
    loop {
        let peers = sched.peers().await.unwrap_or_default();
        if peers.len() == n && peers.iter().all(|p| p["session_open"] == true) {
            return;
        }
        assert!(start.elapsed() < WAIT, "sessions never opened: {peers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `hosts.toml` for each `ns`: plain HTTP to it.
pub(crate) fn hosts_dir(dir: &Path, ns: &[&str]) -> PathBuf {
    let hosts = dir.join("certs.d");
    for ns in ns {
        std::fs::create_dir_all(hosts.join(ns)).unwrap();
        std::fs::write(
            hosts.join(ns).join("hosts.toml"),
            format!("server = \"http://{ns}\"\n"),
        )
        .unwrap();
    }
    hosts
}

/// A request to the operator API: status and JSON body.
pub(crate) async fn api(
    sched: &SchedulerProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", sched.http_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn post_job(sched: &SchedulerProcess, body: Value) -> Value {
    let (status, job) = api(
        sched,
        "POST",
        "/api/v1/preheat",
        Some(TOKEN),
        Some(body.to_string()),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    job
}

/// Polls the job until it is no longer running; its last view.
pub(crate) async fn finished(sched: &SchedulerProcess, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, job) = api(sched, "GET", &format!("/api/v1/preheat/{id}"), None, None).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(
            start.elapsed() < WAIT,
            "job {id} never ended: {job}\n{}",
            sched.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn part_states(job: &Value) -> Vec<(String, String)> {
    job["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["peer"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Blob GETs (200/206) the registry served for `digest`.
pub(crate) fn gets(reg: &Registry, digest: &str) -> usize {
    reg.access_log()
        .iter()
        .filter(|a| a.is_blob_get(digest) && (a.status == 200 || a.status == 206))
        .count()
}

/// A 3-layer image: 3 MiB and 1 MiB of incompressible bytes and a small file.
pub(crate) fn image(dir: &Path, seed: u64) -> OciImage {
    let big = random_bytes(3 << 20, seed);
    let mid = random_bytes(1 << 20, seed + 1);
    OciImage::build_layers(
        &dir.join(format!("oci-{seed}")),
        "v1",
        &[
            &[("big.bin", &big)],
            &[("mid.bin", &mid)],
            &[("etc/hello", b"hello\n")],
        ],
    )
    .unwrap()
}

/// The ids of the peers that hold `digest` complete, as the scheduler lists them.
pub(crate) async fn holders(sched: &SchedulerProcess, digest: &str) -> Vec<String> {
    let mut h: Vec<String> = sched
        .task(digest)
        .await
        .map(|t| {
            t["holders"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["complete"] == true)
                .map(|h| h["peer"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    h.sort();
    h
}

/// The peer ids, by asking the scheduler which peer has which mirror is not
/// possible: peers are named `node-i` by their node certificates.
pub(crate) fn peer_id(i: usize) -> String {
    format!("node-{i}")
}
