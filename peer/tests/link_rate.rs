//! Back-to-source elections by link rate, with real processes on 127.0.0.1: a
//! `shoal-scheduler` and three `shoal-peer run` processes declaring their rates
//! with `--link-rate` (two at 1 Gbit/s, one at 10 Gbit/s). A slow node asks for the
//! blob first; the fast one asks once the scheduler has the slow one's plan. The
//! fast one must fetch the blob from upstream (the whole swarm receives at most at
//! its source's rate), once, and every copy must hash to the digest.
//!
//! `--faster-source-wait 10s` makes the test independent of how fast this machine
//! starts the second pull: the wait ends as soon as the fast node asks.
//!
//! The second test is the hand-over: a slow node pulls alone, is elected and
//! streams from a slow upstream; a node ten times as fast asks only then, takes
//! the rest of the blob over from the first piece the slow one lacks, and the slow
//! one stops its upstream stream. Both end with the right bytes, and upstream sent
//! about one copy.

use std::time::Duration;

use shoal_tests::blob;
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob};
use shoal_tests::upstream::CountingUpstream;

const SIZE: usize = 16 << 20;
const REPO: &str = "rates/blob";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_declaring_the_fastest_link_fetches_from_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (data, digest) = blob(SIZE, 17);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start_with(
        dir.path(),
        &tls,
        &["--faster-source-wait".into(), "10s".into()],
    )
    .await
    .unwrap();
    let declared = [
        ("slow-0", "1gbit"),
        ("slow-1", "1000mbit"),
        ("fast", "10gbit"),
    ];
    let peers = start_peers(dir.path(), &sched, &upstream, &tls, &declared).await;
    let mut rates: Vec<(String, u64)> = sched
        .peers()
        .await
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["link_mbps"].as_u64().unwrap(),
            )
        })
        .collect();
    rates.sort();
    assert_eq!(
        rates,
        [
            ("fast".into(), 10_000),
            ("slow-0".into(), 1000),
            ("slow-1".into(), 1000)
        ]
    );

    // A slow node asks first, and the scheduler holds its plan with no source.
    let pull = |i: usize| tokio::spawn(pull_blob_owned(peers[i].mirror_url(), digest.clone()));
    let first = pull(0);
    let mut waited = false;
    for _ in 0..600 {
        if let Some(t) = sched.task(&digest).await
            && t["downloading"].as_u64() == Some(1)
        {
            assert_eq!(t["back_to_source"], serde_json::json!([]), "{t}");
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waited, "the slow node's plan never reached the scheduler");
    let rest = [pull(2), pull(1)];
    every_pull_matches(std::iter::once(first).chain(rest), &digest).await;

    let task = sched.task(&digest).await.unwrap();
    assert_eq!(sources(&task), ["fast"], "{task}");
    assert_eq!(task["elections"], 1, "{task}");
    assert_eq!(upstream.bytes(), SIZE as u64, "one upstream copy");
    let fetched = peers[2]
        .metric("shoal_peer_bytes_from_upstream_total")
        .await;
    assert_eq!(fetched, SIZE as f64, "the fast node fetched the blob");
    for p in &peers[..2] {
        assert_eq!(p.metric("shoal_peer_bytes_from_upstream_total").await, 0.0);
    }
    let m = sched.metrics().await.unwrap();
    assert_eq!(
        m.get("shoal_scheduler_elections_waited_for_faster_total"),
        Some(&1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_hands_the_rest_over_to_a_faster_node_that_asks_later() {
    let dir = tempfile::tempdir().unwrap();
    let (data, digest) = blob(SIZE, 18);
    // About 5 MB/s: the slow node is still streaming when the fast one asks.
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::from_millis(50))
        .await
        .unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start_with(dir.path(), &tls, &[])
        .await
        .unwrap();
    let declared = [("slow", "1gbit"), ("fast", "10gbit")];
    let peers = start_peers(dir.path(), &sched, &upstream, &tls, &declared).await;

    let first = tokio::spawn(pull_blob_owned(peers[0].mirror_url(), digest.clone()));
    // The slow node is elected (after the faster-source wait) and has some
    // pieces, well short of the whole blob.
    let mut streaming = false;
    for _ in 0..600 {
        if let Some(t) = sched.task(&digest).await
            && let Some(h) = t["holders"]
                .as_array()
                .and_then(|hs| hs.iter().find(|h| h["peer"] == "slow"))
            && h["back_to_source"] == true
            && h["pieces"].as_u64().is_some_and(|n| n >= 2)
        {
            streaming = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(streaming, "the slow node never streamed from upstream");
    let second = tokio::spawn(pull_blob_owned(peers[1].mirror_url(), digest.clone()));
    every_pull_matches([first, second], &digest).await;

    let task = sched.task(&digest).await.unwrap();
    assert_eq!(
        sources(&task),
        ["fast", "slow"],
        "both fetched from upstream: {task}"
    );
    let m = sched.metrics().await.unwrap();
    assert_eq!(
        m.get("shoal_scheduler_sources_handed_over_total"),
        Some(&1.0)
    );
    let handed = |i: usize| peers[i].metric("shoal_peer_upstream_handed_over_total");
    assert_eq!((handed(0).await, handed(1).await), (1.0, 0.0));
    let from = |i: usize| peers[i].metric("shoal_peer_bytes_from_upstream_total");
    let (slow, fast) = (from(0).await, from(1).await);
    let size = SIZE as f64;
    assert!(slow > 0.0 && slow < size, "the slow node stopped: {slow}");
    assert!(
        fast > 0.0 && fast < size,
        "the fast one took the rest: {fast}"
    );
    assert!(slow + fast >= size, "{slow} + {fast}");
    // The overlap: what the slow node fetched between its last report the
    // scheduler saw and its stop, plus what sat in socket buffers.
    let sent = upstream.bytes();
    eprintln!("upstream bytes: slow node {slow}, fast node {fast}, upstream sent {sent}");
    assert!(sent as f64 <= size * 1.25, "upstream sent {sent} bytes");
}

/// One `shoal-peer run` per (name, `--link-rate`), joined to `sched`.
async fn start_peers(
    dir: &std::path::Path,
    sched: &SchedulerProcess,
    upstream: &CountingUpstream,
    tls: &std::path::Path,
    rates: &[(&str, &str)],
) -> Vec<PeerProcess> {
    let mut peers = Vec::new();
    for (name, rate) in rates {
        let opts = PeerOptions {
            scheduler: Some(sched.grpc_url()),
            default_upstream: Some(upstream.url()),
            hosts_dir: None,
            tls_dir: tls.to_path_buf(),
            extra: vec!["--link-rate".into(), (*rate).into()],
        };
        peers.push(PeerProcess::start(dir, name, &opts).await.unwrap());
    }
    sched.wait_for_peers(rates.len()).await.unwrap();
    peers
}

type Pull = tokio::task::JoinHandle<Result<(String, u64), String>>;

/// Every pull ends with the whole blob, matching its digest.
async fn every_pull_matches(pulls: impl IntoIterator<Item = Pull>, digest: &str) {
    for (k, p) in pulls.into_iter().enumerate() {
        let (d, n) = p
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("pull {k} failed: {e}"));
        assert_eq!((d.as_str(), n), (digest, SIZE as u64), "pull {k}");
    }
}

/// The task's holders ever elected to fetch it from upstream, sorted.
fn sources(task: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = task["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["source"] == true)
        .map(|h| h["peer"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn pull_blob_owned(mirror: String, digest: String) -> Result<(String, u64), String> {
    pull_blob(&mirror, REPO, &digest).await
}
