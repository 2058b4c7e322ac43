//! The swarm as it runs in production, on 127.0.0.1: a `shoal-scheduler` process and
//! four `shoal-peer run` processes (mutual TLS from `shoal-peer tls init`, disk
//! stores), each asked for one 64 MiB blob through its registry mirror, the way
//! containerd asks. The upstream is a plain HTTP registry that counts what it serves.
//!
//! What is asserted is behaviour: every copy hashes to the digest, how many copies
//! upstream served, who the scheduler knows. No duration is asserted; waits only bound
//! a hang.

use std::path::Path;
use std::time::Duration;

use shoal_tests::blob;
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob};
use shoal_tests::upstream::CountingUpstream;

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const REPO: &str = "e2e/blob";
const PEERS: usize = 4;

struct Swarm {
    _dir: tempfile::TempDir,
    sched: SchedulerProcess,
    peers: Vec<PeerProcess>,
    upstream: CountingUpstream,
    digest: String,
}

async fn swarm(seed: u64, pause: Duration) -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let (data, digest) = blob(SIZE, seed);
    let upstream = CountingUpstream::start(REPO, &digest, data, pause)
        .await
        .unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir.path(), &tls).await.unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: Some(upstream.url()),
        hosts_dir: None,
        tls_dir: tls,
        extra: Vec::new(),
    };
    let mut peers = Vec::new();
    for i in 0..PEERS {
        peers.push(
            PeerProcess::start(dir.path(), &format!("peer-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    // Every peer has joined before the test starts.
    wait("all peers joined", || async {
        let r = reqwest::get(format!("{}/api/v1/peers", sched.http_url())).await;
        match r {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["peers"].as_array().is_some_and(|a| a.len() == PEERS)),
            Err(_) => false,
        }
    })
    .await;
    Swarm {
        _dir: dir,
        sched,
        peers,
        upstream,
        digest,
    }
}

/// Polls `check` every 100 ms; panics after 3 minutes (a hang, not a timing).
async fn wait<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1800 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not after 3 minutes");
}

/// GETs the blob through `mirror` and returns the sha256 digest of the body and its
/// length, or the error that cut it.
async fn pull(mirror: String, digest: String) -> Result<(String, u64), String> {
    pull_blob(&mirror, REPO, &digest).await
}

fn pull_all(
    s: &Swarm,
    which: &[usize],
) -> Vec<tokio::task::JoinHandle<Result<(String, u64), String>>> {
    which
        .iter()
        .map(|i| tokio::spawn(pull(s.peers[*i].mirror_url(), s.digest.clone())))
        .collect()
}

async fn check_all(s: &Swarm, pulls: Vec<tokio::task::JoinHandle<Result<(String, u64), String>>>) {
    for (i, p) in pulls.into_iter().enumerate() {
        let (d, n) = p
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("pull {i} failed: {e}\nlog:\n{}", s.peers[i].log()));
        assert_eq!(n, SIZE as u64, "pull {i} length");
        assert_eq!(d, s.digest, "pull {i} digest");
    }
}

async fn figures(test: &str, s: &Swarm) {
    let mut line = format!(
        "{test}: upstream GETs {}, {:.2} copies;",
        s.upstream
            .served()
            .gets
            .load(std::sync::atomic::Ordering::SeqCst),
        s.upstream.bytes() as f64 / SIZE as f64
    );
    for p in &s.peers {
        let m = p.metrics().await.unwrap_or_default();
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0) / MIB as f64;
        line += &format!(
            " {}: upstream {:.0} MiB, peers {:.0} MiB, served {:.0} MiB, rejected {};",
            p.name,
            g("shoal_peer_bytes_from_upstream_total"),
            g("shoal_peer_bytes_from_peers_total"),
            g("shoal_peer_served_bytes_total"),
            m.get("shoal_peer_pieces_rejected_total")
                .copied()
                .unwrap_or(0.0),
        );
    }
    eprintln!("{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_pull_at_once_and_upstream_serves_one_copy() {
    let s = swarm(1, Duration::from_millis(2)).await;
    let pulls = pull_all(&s, &[0, 1, 2, 3]);
    check_all(&s, pulls).await;
    figures("four_at_once", &s).await;
    assert_eq!(
        s.upstream.bytes(),
        SIZE as u64,
        "upstream served exactly one copy"
    );
    let mut from_peers = 0.0;
    for p in &s.peers {
        from_peers += p.metric("shoal_peer_bytes_from_peers_total").await;
    }
    assert_eq!(
        from_peers as usize,
        3 * SIZE,
        "three copies went peer to peer"
    );
    // A second pull on a node is served from its cache: upstream sees nothing new.
    let (d, _) = pull(s.peers[2].mirror_url(), s.digest.clone())
        .await
        .unwrap();
    assert_eq!(d, s.digest);
    assert_eq!(s.upstream.bytes(), SIZE as u64);
    assert_eq!(
        s.peers[2]
            .metric("shoal_mirror_blob_bytes_from_cache_total")
            .await as usize,
        SIZE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_back_to_source_peer_mid_transfer_the_others_complete() {
    let mut s = swarm(2, Duration::from_millis(20)).await;
    let pulls = pull_all(&s, &[0, 1, 2, 3]);
    let mut source = None;
    for _ in 0..1800 {
        for (i, p) in s.peers.iter().enumerate() {
            if p.metric("shoal_peer_bytes_from_upstream_total").await > 0.0 {
                source = Some(i);
            }
        }
        if source.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let source = source.expect("no peer fetched from upstream in 3 minutes");
    s.peers[source].kill();
    eprintln!(
        "killed the back-to-source peer {source} after {} bytes from upstream",
        s.upstream.bytes()
    );
    for (i, p) in pulls.into_iter().enumerate() {
        let r = p.await.unwrap();
        if i == source {
            continue;
        }
        let (d, n) = r.unwrap_or_else(|e| panic!("pull {i} failed: {e}\n{}", s.peers[i].log()));
        assert_eq!(
            (d.as_str(), n),
            (s.digest.as_str(), SIZE as u64),
            "pull {i}"
        );
    }
    figures("kill_source", &s).await;
    assert!(
        s.upstream.bytes() <= 2 * SIZE as u64,
        "upstream served {} bytes, more than 2 copies",
        s.upstream.bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_corrupt_blob_on_disk_is_detected_and_the_others_get_correct_bytes() {
    let s = swarm(3, Duration::ZERO).await;
    // peer-0 gets the blob, then its disk rots: one byte in every piece flips.
    let (d, _) = pull(s.peers[0].mirror_url(), s.digest.clone())
        .await
        .unwrap();
    assert_eq!(d, s.digest);
    corrupt(&s.peers[0].data_dir(), &s.digest);
    let pulls = pull_all(&s, &[1, 2, 3]);
    for (k, p) in pulls.into_iter().enumerate() {
        let (d, n) = p
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("pull {}: {e}", k + 1));
        assert_eq!((d.as_str(), n), (s.digest.as_str(), SIZE as u64));
    }
    figures("corrupt_disk", &s).await;
    let mut rejected = 0.0;
    for p in &s.peers[1..] {
        rejected += p.metric("shoal_peer_pieces_rejected_total").await;
    }
    assert!(rejected >= 1.0, "the corrupt pieces were detected");
    let peers: serde_json::Value = reqwest::get(format!("{}/api/v1/peers", s.sched.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reported: u64 = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bad_reports"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(
        reported >= 1,
        "the scheduler heard about the bad parent: {peers}"
    );
}

/// Flips one byte in each 4 MiB of the blob file under `data`.
fn corrupt(data: &Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = data.join("blobs").join("sha256").join(hex);
    let mut bytes = std::fs::read(&path).unwrap();
    for i in (0..bytes.len()).step_by(4 * MIB) {
        bytes[i + 7] ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_scheduler_mid_download_every_peer_completes_and_it_knows_every_holder() {
    let mut s = swarm(4, Duration::from_millis(20)).await;
    let pulls = pull_all(&s, &[0, 1, 2, 3]);
    wait("upstream is serving", || {
        let b = s.upstream.bytes();
        async move { b > 0 }
    })
    .await;
    s.sched.restart().await.unwrap();
    eprintln!(
        "scheduler restarted after {} bytes from upstream",
        s.upstream.bytes()
    );
    check_all(&s, pulls).await;
    figures("scheduler_restart", &s).await;
    let (sched, digest) = (&s.sched, &s.digest);
    wait("the new scheduler knows all four holders", || async move {
        sched
            .task(digest)
            .await
            .is_some_and(|t| t["complete_holders"].as_u64() == Some(PEERS as u64))
    })
    .await;
}
