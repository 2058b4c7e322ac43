//! The real `shoal-peer` binary: `tls init`, then `run` as a process with a
//! data dir seeded with one complete blob. It joins a scheduler (served
//! in-process on a real socket) announcing that blob, serves its pieces over
//! QUIC to a client holding the cluster certificate and refuses one from
//! another CA, answers health and metrics, reports every configuration error
//! at once (a bad config file named with its line), and stops on SIGTERM.
//! Its mirror's counters mean what they say: a cache hit is not a download, and an
//! upstream 404 relayed is counted by its code, not as the mirror's own refusal.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shoal_peer::store::{DiskStore, PieceStore, StoreConfig};
use shoal_peer::tls;
use shoal_peer::transfer::{FetchError, PieceClient};
use shoal_proto::{Digest, TaskShape};
use shoal_tests::scheduler::InProcessScheduler;
use shoal_tests::swarm::{PeerOptions, PeerProcess, pull_blob};
use shoal_tests::upstream::CountingUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_shoal-peer");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    shoal_tests::free_udp_port().unwrap()
}

fn free_tcp() -> std::net::SocketAddr {
    ([127, 0, 0, 1], shoal_tests::free_port().unwrap()).into()
}

/// Writes a complete blob of 2 pieces (the second half as long) into a fresh
/// store in `dir`.
fn seed(dir: &Path) -> (Digest, Vec<u8>) {
    let len = shoal_proto::piece::MIN_PIECE_SIZE * 3 / 2;
    let blob: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let digest = Digest::from_sha256(Sha256::digest(&blob).into());
    let shape = TaskShape::for_size(blob.len() as u64).unwrap();
    let store = DiskStore::open(dir, StoreConfig::with_cache_size(1 << 30)).unwrap();
    store.open(digest, shape).unwrap();
    let mut hashes = Vec::new();
    for i in 0..shape.piece_count() {
        let r = shape.piece_range(i).unwrap();
        let piece = &blob[r.start as usize..r.end as usize];
        hashes.push((i, Sha256::digest(piece).into()));
        store.write_piece(&digest, i, piece).unwrap();
    }
    store.set_hashes(&digest, &hashes).unwrap();
    store.mark_complete(&digest).unwrap();
    (digest, blob)
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    (code, out)
}

#[tokio::test]
async fn runs_joins_serves_pieces_over_mtls_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls_dir, data_dir) = (tmp.path().join("tls"), tmp.path().join("data"));
    let out = Command::new(BIN)
        .args(["tls", "init"])
        .arg(&tls_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(tls_dir.join(f).exists(), "{f} missing");
    }
    let (digest, blob) = seed(&data_dir);

    // A scheduler on a real socket.
    let scheduler = InProcessScheduler::start().await;
    let sched = scheduler.grpc_url.clone();

    let quic = format!("127.0.0.1:{}", free_port());
    let http = free_tcp();
    let mut child = Proc(
        Command::new(BIN)
            .arg("run")
            .args([
                "--scheduler",
                &sched,
                "--quic-listen",
                &quic,
                "--http-listen",
                &http.to_string(),
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--peer-tls-dir")
            .arg(&tls_dir)
            .args(["--mirror-listen", &free_tcp().to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // It joins and announces the blob it holds.
    let mut known = None;
    for _ in 0..200 {
        known = scheduler.task(&digest.to_string()).await;
        if known.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let task = known.expect("the peer never announced its blob");
    assert_eq!(task["complete_holders"], 1);
    assert_eq!(task["known_hashes"], 2);
    let peers = scheduler.peers().await;
    assert_eq!(peers[0]["addr"], quic.as_str());

    // Health and metrics.
    let (code, _) = http_get(http, "/readyz").await;
    assert_eq!(code, 200);
    // The sample, not the HELP text (which says "1 while …"); the session opens just
    // after the join the scheduler saw.
    let connected = "\nshoal_peer_scheduler_connected 1\n";
    let mut body = String::new();
    for _ in 0..100 {
        let (code, b) = http_get(http, "/metrics").await;
        assert_eq!(code, 200);
        body = b;
        if body.contains(connected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains(connected), "{body}");
    assert_every_known_metric_is_served(&body);

    // A peer with the cluster certificate gets the pieces, byte for byte.
    let shape = TaskShape::for_size(blob.len() as u64).unwrap();
    let ours = tls::load_dir(&tls_dir).unwrap();
    let client = PieceClient::new(tls::endpoint("127.0.0.1:0".parse().unwrap(), &ours).unwrap());
    for i in 0..shape.piece_count() {
        let r = shape.piece_range(i).unwrap();
        let got = client
            .fetch(
                quic.parse().unwrap(),
                &digest,
                i,
                shape.piece_len(i).unwrap(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(&got[..], &blob[r.start as usize..r.end as usize]);
    }
    // The server counts a piece once its stream is finished, which may be just after
    // the client has read it.
    let want = format!("shoal_peer_served_bytes_total {}", blob.len());
    let mut body = String::new();
    for _ in 0..100 {
        let (code, b) = http_get(http, "/metrics").await;
        assert_eq!(code, 200);
        body = b;
        if body.contains(&want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains(&want), "{body}");

    // One from another CA is refused.
    let foreign = PieceClient::new(
        tls::endpoint("127.0.0.1:0".parse().unwrap(), &tls::ephemeral().unwrap()).unwrap(),
    );
    let refused = foreign
        .fetch(
            quic.parse().unwrap(),
            &digest,
            0,
            shape.piece_len(0).unwrap(),
            Duration::from_secs(10),
        )
        .await;
    assert!(refused.is_err(), "a peer from another CA got a piece");
    assert!(!matches!(refused, Err(FetchError::NotFound)));

    // SIGTERM: a clean stop.
    let status = shoal_tests::terminate(&mut child.0, Duration::from_secs(10)).await;
    let status = status.expect("did not stop within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Waits until `peer`'s counter `name` reads `want`; fails after 30 s (a hang).
async fn counter_reaches(peer: &PeerProcess, name: &str, want: f64) {
    for _ in 0..300 {
        if peer.metric(name).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} is {}, not {want}:\n{:?}",
        peer.metric(name).await,
        peer.metrics().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_and_relayed_upstream_answers_have_their_own_counters() {
    const REPO: &str = "counted/blob";
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest) = shoal_tests::blob(3 << 20, 7);
    let upstream = CountingUpstream::start(REPO, &digest, data.clone(), Duration::ZERO)
        .await
        .unwrap();
    let tls = tmp.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let peer = PeerProcess::start(
        tmp.path(),
        "peer",
        &PeerOptions {
            scheduler: None,
            default_upstream: Some(upstream.url()),
            hosts_dir: None,
            tls_dir: tls,
            extra: Vec::new(),
        },
    )
    .await
    .unwrap();
    let mirror = peer.mirror_url();

    // The first pull downloads the blob.
    let got = pull_blob(&mirror, REPO, &digest).await.unwrap();
    assert_eq!(got, (digest.clone(), data.len() as u64));
    // Its download is over (and gone from the engine) once it is counted complete.
    counter_reaches(&peer, "shoal_peer_downloads_completed_total", 1.0).await;
    // The next two are served from the store: cache hits, not downloads.
    for _ in 0..2 {
        let got = pull_blob(&mirror, REPO, &digest).await.unwrap();
        assert_eq!(got, (digest.clone(), data.len() as u64));
    }
    counter_reaches(&peer, "shoal_peer_cache_hits_total", 2.0).await;
    assert_eq!(peer.metric("shoal_peer_downloads_started_total").await, 1.0);
    assert_eq!(
        peer.metric("shoal_peer_downloads_completed_total").await,
        1.0
    );
    assert_eq!(
        upstream
            .served()
            .gets
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // Upstream's 404s (a manifest it does not have, a blob it does not have) are
    // relayed and counted by code; the mirror's own refusal (a bad name) apart.
    let client = reqwest::Client::new();
    let missing = format!("sha256:{}", "0".repeat(64));
    for (path, want) in [
        (format!("/v2/{REPO}/manifests/latest"), 404),
        (format!("/v2/{REPO}/blobs/{missing}"), 404),
        (format!("/v2/UPPER/blobs/{digest}"), 400),
    ] {
        let r = client.get(format!("{mirror}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
    let upstream_404 = "shoal_mirror_upstream_responses_total{code=\"404\"}";
    counter_reaches(&peer, upstream_404, 2.0).await;
    assert_eq!(peer.metric("shoal_mirror_refused_total").await, 1.0);
    assert_eq!(peer.metric("shoal_mirror_failed_total").await, 0.0);
    // The blobs themselves were the mirror's own answers, not relays.
    assert_eq!(
        peer.metric("shoal_mirror_upstream_responses_total{code=\"200\"}")
            .await,
        0.0
    );
}

#[test]
fn reports_every_configuration_error_at_once() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--scheduler",
            "sched:7600",
            "--cache-size",
            "lots",
            "--log-format",
            "xml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for words in [
        "--scheduler",
        "--cache-size",
        "--log-format",
        "--peer-tls-dir is required",
    ] {
        assert!(err.contains(words), "missing {words}: {err}");
    }
}

#[test]
fn a_bad_config_file_is_named_with_its_line_and_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("peer.toml");
    std::fs::write(&file, "zone = \"a\"\nmirror_listn = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--log-format", "xml"])
        .env("SHOAL_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for words in [
        file.to_str().unwrap(),
        "line 2",
        "mirror_listn",
        "--log-format",
    ] {
        assert!(err.contains(words), "missing {words}: {err}");
    }
}

/// Every metric name the docs (`docs/peer.md`) and the chart's Grafana dashboard use is
/// a sample in the `/metrics` answer `response`, every sample is named `shoal_peer_*`,
/// `shoal_mirror_*` or a standard `process_*`, and the text is OpenMetrics.
fn assert_every_known_metric_is_served(response: &str) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut known = std::collections::BTreeSet::new();
    for file in ["docs/peer.md", "charts/shoal/files/dashboard.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for (i, _) in text.match_indices("shoal_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let prefix_only = name.ends_with('_');
            if (name.starts_with("shoal_peer_") || name.starts_with("shoal_mirror_"))
                && !prefix_only
            {
                known.insert(name);
            }
        }
    }
    assert!(known.len() >= 20, "too few names found: {known:?}");
    let samples: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(name, _)| name))
        // A labelled sample: `name{label="value"}`.
        .map(|name| name.split_once('{').map_or(name, |(name, _)| name))
        .collect();
    for name in &known {
        assert!(
            samples.contains(&name.as_str()),
            "{name} is not served:\n{body}"
        );
    }
    for name in &samples {
        assert!(
            name.starts_with("shoal_peer_")
                || name.starts_with("shoal_mirror_")
                || name.starts_with("process_"),
            "unprefixed metric {name}"
        );
    }
    // The process's own cost, under the standard names dashboards know.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(samples.contains(&name), "{name} is not served:\n{body}");
    }
    assert!(body.ends_with("# EOF\n"), "{body}");
}
