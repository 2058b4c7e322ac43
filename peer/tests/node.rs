//! Whole peer nodes in-process through their one entry point, [`Node::start`], on
//! sockets bound to `127.0.0.1:0`: disk stores, mutual TLS from one `tls init`
//! directory, a real scheduler (gRPC) and a counting HTTP upstream. Two nodes pull one
//! blob through their registry mirrors, one after the other: upstream serves it once,
//! the second node gets it from the first, both copies hash to the digest, and both
//! nodes stop when told. No duration is asserted; waits only bound a hang.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_peer::daemon::{Node, Settings, Sockets};
use shoal_tests::blob;
use shoal_tests::scheduler::InProcessScheduler;
use shoal_tests::swarm::pull_blob;
use shoal_tests::upstream::CountingUpstream;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const MIB: usize = 1 << 20;
const REPO: &str = "test/node";
const WAIT: Duration = Duration::from_secs(60);

/// Sockets on 127.0.0.1, every port chosen by the kernel.
async fn loopback_sockets() -> Sockets {
    Sockets {
        quic: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        mirror: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

/// A node on its own data dir under `dir`, and the sender that stops it.
async fn node(
    dir: &std::path::Path,
    name: &str,
    scheduler: &str,
    upstream: &str,
) -> (Node, oneshot::Sender<()>) {
    let data = dir.join(name);
    let hosts = dir.join("hosts.d");
    std::fs::create_dir_all(&hosts).unwrap();
    let settings = Settings::from_args([
        "shoal-peer",
        "--scheduler",
        scheduler,
        "--quic-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--peer-tls-dir",
        dir.join("tls").to_str().unwrap(),
        "--containerd-hosts-dir",
        hosts.to_str().unwrap(),
        "--default-upstream",
        upstream,
        "--cache-size",
        "1GiB",
    ])
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let node = Node::start(loopback_sockets().await, settings, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    (node, stop)
}

async fn metric(node: &Node, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", node.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_started_in_process_share_one_upstream_copy_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    shoal_peer::tls::init_dir(&tmp.path().join("tls")).unwrap();
    let (data, digest) = blob(12 * MIB, 21);
    let up = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    let sched = InProcessScheduler::start().await;

    let (a, stop_a) = node(tmp.path(), "a", &sched.grpc_url, &up.url()).await;
    let (b, stop_b) = node(tmp.path(), "b", &sched.grpc_url, &up.url()).await;
    assert_ne!(a.peer_id, b.peer_id);
    assert_eq!(
        a.advertise, a.quic_addr,
        "the bound QUIC port is advertised"
    );
    assert_ne!(a.quic_addr.port(), 0);
    let ready = reqwest::get(format!("http://{}/readyz", a.http_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    sched
        .wait_for("both nodes joined", || async {
            sched.peers().await.len() == 2
        })
        .await;

    let mirror = |n: &Node| format!("http://{}", n.mirror_addr);
    let pulled = tokio::time::timeout(WAIT, pull_blob(&mirror(&a), REPO, &digest))
        .await
        .expect("the pull through a hung")
        .unwrap();
    assert_eq!(pulled, (digest.clone(), 12 * MIB as u64));
    sched
        .wait_for("a is a complete holder", || async {
            sched.complete_holders(&digest).await == 1
        })
        .await;
    let pulled = tokio::time::timeout(WAIT, pull_blob(&mirror(&b), REPO, &digest))
        .await
        .expect("the pull through b hung")
        .unwrap();
    assert_eq!(pulled, (digest.clone(), 12 * MIB as u64));
    assert_eq!(
        up.served().gets.load(Ordering::SeqCst),
        1,
        "one upstream copy"
    );
    assert_eq!(
        metric(&b, "shoal_peer_bytes_from_peers_total").await,
        (12 * MIB) as f64
    );
    sched
        .wait_for("both are complete holders", || async {
            sched.complete_holders(&digest).await == 2
        })
        .await;

    for (node, stop) in [(a, stop_a), (b, stop_b)] {
        stop.send(()).unwrap();
        tokio::time::timeout(WAIT, node.wait())
            .await
            .expect("the node did not stop")
            .unwrap();
    }
}
