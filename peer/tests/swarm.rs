//! Swarms of four peers on 127.0.0.1 fetching one 64 MiB blob: a real scheduler
//! (gRPC), real QUIC piece transfer, `MemStore`s and a counting HTTP upstream
//! (`CountingUpstream`, reached through the registry client). Each peer runs on its own
//! tokio runtime so that it can be killed like a crashed node (its runtime is shut
//! down: engine, QUIC server, scheduler link all vanish at once).
//! No test asserts a duration; waits only fail when something never happens.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_peer::daemon::{StoreInventory, StoreSource};
use shoal_peer::engine::{Download, Engine, Upstream};
use shoal_peer::scheduler_link::{LinkConfig, SchedulerLink};
use shoal_peer::store::{MemStore, PieceStore};
use shoal_peer::tls::{self, PeerTls};
use shoal_peer::transfer::{PieceClient, PieceSource, TransferStats, UploadLimits, serve};
use shoal_proto::{Digest, TaskShape, v1};
use shoal_tests::scheduler::InProcessScheduler;
use shoal_tests::upstream::CountingUpstream;
use shoal_tests::{blob, eventually};

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const REPO: &str = "test/blob";
const WAIT: Duration = Duration::from_secs(60);

/// `SIZE` test bytes, their digest, and a counting upstream serving them that pauses
/// `pause` after every 256 KiB so a transfer takes a while.
async fn upstream(seed: u64, pause: Duration) -> (Digest, CountingUpstream) {
    let (data, digest) = blob(SIZE, seed);
    let up = CountingUpstream::start(REPO, &digest, data, pause)
        .await
        .unwrap();
    (digest.parse().unwrap(), up)
}

/// Blob `GET`s upstream answered.
fn gets(up: &CountingUpstream) -> u64 {
    up.served().gets.load(Ordering::SeqCst)
}

/// Stops `sched` and starts a new one (fresh state) on the same gRPC address.
async fn restart(sched: InProcessScheduler) -> InProcessScheduler {
    let addr = sched.grpc_addr.to_string();
    sched.stop().await;
    InProcessScheduler::start_with(&["--grpc-listen", &addr]).await
}

/// Whether the scheduler knows `n` peers holding `digest` complete.
async fn holders_are(sched: &InProcessScheduler, digest: &Digest, n: u64) -> bool {
    sched.complete_holders(&digest.to_string()).await == n
}

/// Serves pieces from a piece store with their first byte flipped.
struct CorruptSource(Arc<MemStore>);

#[async_trait::async_trait]
impl PieceSource for CorruptSource {
    async fn piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, std::io::Error> {
        let piece = StoreSource(self.0.clone() as Arc<dyn PieceStore>)
            .piece(digest, index)
            .await?;
        Ok(piece.map(|p| {
            let mut evil = p.to_vec();
            if let Some(b) = evil.first_mut() {
                *b ^= 0xff;
            }
            evil.into()
        }))
    }
}

/// A peer on its own runtime: store, QUIC server, scheduler link and engine.
struct Node {
    id: String,
    rt: Option<tokio::runtime::Runtime>,
    engine: Engine,
    store: Arc<MemStore>,
    link: SchedulerLink,
    endpoint: quinn::Endpoint,
    upstream: Arc<dyn Upstream>,
}

impl Node {
    fn start(tls: &PeerTls, url: &str, id: &str, up: &CountingUpstream, corrupt: bool) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let guard = rt.enter();
        let store = Arc::new(MemStore::default());
        let source: Arc<dyn PieceSource> = if corrupt {
            Arc::new(CorruptSource(store.clone()))
        } else {
            Arc::new(StoreSource(store.clone() as Arc<dyn PieceStore>))
        };
        let endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), tls).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let info = v1::PeerInfo {
            peer_id: id.into(),
            hostname: id.into(),
            quic_addr: addr.to_string(),
            zone: String::new(),
            rack: String::new(),
            upload_slots: 0,
            piece_rule: shoal_proto::piece::PIECE_RULE,
            link_mbps: 0,
        };
        let mut config = LinkConfig::new(vec![url.to_string()], info);
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(400);
        let link = SchedulerLink::spawn(
            config,
            Arc::new(StoreInventory(store.clone() as Arc<dyn PieceStore>)),
            std::future::pending(),
        );
        let engine = Engine::new(
            store.clone(),
            link.clone(),
            PieceClient::new(endpoint.clone()),
        );
        tokio::spawn(serve(
            endpoint.clone(),
            source,
            UploadLimits::default(),
            Arc::new(TransferStats::default()),
            engine.seeding(),
            std::future::pending::<()>(),
        ));
        let upstream = common::blob_upstream(&up.url(), REPO);
        drop(guard);
        Node {
            id: id.into(),
            rt: Some(rt),
            engine,
            store,
            link,
            endpoint,
            upstream,
        }
    }

    fn fetch(&self, digest: Digest) -> Arc<Download> {
        let _guard = self.rt.as_ref().expect("node is dead").enter();
        self.engine.fetch(digest, 0, self.upstream.clone())
    }

    /// Vanishes like a crashed node: QUIC connections closed, then every task of the
    /// peer (download, piece server, scheduler link) dropped with its runtime.
    async fn kill(&mut self) {
        self.endpoint.close(0u32.into(), b"killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn swarm(
    tls: &PeerTls,
    url: &str,
    up: &CountingUpstream,
    corrupt: Option<usize>,
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..4 {
        let id = format!("peer-{i}");
        nodes.push(Node::start(tls, url, &id, up, corrupt == Some(i)));
    }
    for n in &nodes {
        assert!(
            n.link.wait_connected(WAIT).await,
            "{} never connected",
            n.id
        );
    }
    nodes
}

async fn read_all(dl: &Arc<Download>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = std::pin::pin!(dl.reader(0));
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Waits for the download and for the driver to be done with it (the store
/// marked complete), since the checks below look at the store.
async fn done(dl: &Arc<Download>) {
    tokio::time::timeout(WAIT, dl.wait())
        .await
        .expect("download did not finish")
        .expect("download failed");
    tokio::time::timeout(WAIT, dl.settled())
        .await
        .expect("download did not settle");
}

/// Waits for the download, then checks its bytes (reader and store) hash to `digest`.
async fn check_bytes(node: &Node, dl: &Arc<Download>, digest: &Digest) {
    done(dl).await;
    let got = read_all(dl).await;
    assert_eq!(got.len(), SIZE, "{}: wrong length", node.id);
    assert_eq!(
        Sha256::digest(&got).as_slice(),
        digest.as_bytes(),
        "{}: wrong bytes",
        node.id
    );
    let meta = node.store.meta(digest).unwrap().expect("not in the store");
    assert!(meta.complete, "{}: store not complete", node.id);
    let mut h = Sha256::new();
    for i in 0..meta.shape.piece_count() {
        h.update(
            node.store
                .read_piece(digest, i)
                .unwrap()
                .expect("piece missing"),
        );
    }
    assert_eq!(
        h.finalize().as_slice(),
        digest.as_bytes(),
        "{}: store bytes",
        node.id
    );
}

fn figures(test: &str, up: &CountingUpstream, nodes: &[(&Node, &Arc<Download>)]) {
    let per: Vec<String> = nodes
        .iter()
        .map(|(n, d)| {
            let s = d.stats();
            format!(
                "{}: parents {} upstream {} bad {}",
                n.id,
                s.pieces_from_parents.load(Ordering::Relaxed),
                s.pieces_from_upstream.load(Ordering::Relaxed),
                s.bad_pieces.load(Ordering::Relaxed)
            )
        })
        .collect();
    eprintln!(
        "{test}: upstream {} requests, {} / {} bytes ({:.2} copies); {}",
        gets(up),
        up.bytes(),
        SIZE,
        up.bytes() as f64 / SIZE as f64,
        per.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_at_once_upstream_serves_one_copy() {
    let (digest, up) = upstream(11, Duration::ZERO).await;
    let sched = InProcessScheduler::start().await;
    let tls = tls::ephemeral().unwrap();
    let nodes = swarm(&tls, &sched.grpc_url, &up, None).await;

    let dls: Vec<_> = nodes.iter().map(|n| n.fetch(digest)).collect();
    for (n, d) in nodes.iter().zip(&dls) {
        check_bytes(n, d, &digest).await;
    }
    let pairs: Vec<_> = nodes.iter().zip(&dls).collect();
    figures("four_peers_at_once", &up, &pairs);
    assert_eq!(gets(&up), 1);
    assert_eq!(up.bytes(), SIZE as u64);
    sched
        .wait_for("all four are complete holders", || {
            holders_are(&sched, &digest, 4)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_back_to_source_peer_mid_transfer_the_others_complete() {
    // About 2.6 s per copy, so the back-to-source peer is caught mid-transfer.
    let (digest, up) = upstream(12, Duration::from_millis(10)).await;
    let sched =
        InProcessScheduler::start_with(&["--peer-ttl", "2s", "--back-to-source-stall", "2s"]).await;
    let tls = tls::ephemeral().unwrap();
    let mut nodes = swarm(&tls, &sched.grpc_url, &up, None).await;

    let dls: Vec<_> = nodes.iter().map(|n| n.fetch(digest)).collect();
    let elected = || async {
        sched
            .task(&digest.to_string())
            .await
            .and_then(|t| t["back_to_source"].as_array().cloned())
            .unwrap_or_default()
    };
    sched
        .wait_for("a peer is elected back-to-source", || async {
            !elected().await.is_empty()
        })
        .await;
    let elected = elected().await;
    let victim = nodes
        .iter()
        .position(|n| elected.iter().any(|e| *e == n.id.as_str()))
        .expect("elected peer is one of ours");
    // Its upstream pieces are held back from its own readers until the digest
    // matched (no hash was known for them), so progress is counted from the stats.
    let from_upstream = || {
        dls[victim]
            .stats()
            .pieces_from_upstream
            .load(Ordering::Relaxed)
    };
    tokio::time::timeout(WAIT, async {
        while from_upstream() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("back-to-source peer never got a piece");
    let have = from_upstream() as u32;
    let total = TaskShape::for_size(SIZE as u64).unwrap().piece_count();
    assert!(have < total, "victim finished before it could be killed");
    nodes[victim].kill().await;
    eprintln!("killed {} holding {have}/{total} pieces", nodes[victim].id);

    for (i, (n, d)) in nodes.iter().zip(&dls).enumerate() {
        if i != victim {
            check_bytes(n, d, &digest).await;
        }
    }
    let pairs: Vec<_> = nodes
        .iter()
        .zip(&dls)
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p)
        .collect();
    figures("kill_back_to_source", &up, &pairs);
    assert!(
        up.bytes() <= 2 * SIZE as u64,
        "upstream served {} bytes",
        up.bytes()
    );
    sched
        .wait_for("the three survivors are complete holders", || {
            holders_are(&sched, &digest, 3)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_detected_and_dropped() {
    let (digest, up) = upstream(13, Duration::ZERO).await;
    let sched = InProcessScheduler::start().await;
    let tls = tls::ephemeral().unwrap();
    let nodes = swarm(&tls, &sched.grpc_url, &up, Some(0)).await;
    let evil = &nodes[0];

    // The corrupt peer gets the blob first (from upstream, correctly) and is then the
    // only holder the scheduler can offer the three others.
    let de = evil.fetch(digest);
    check_bytes(evil, &de, &digest).await;
    sched
        .wait_for("the corrupt peer is a complete holder", || {
            holders_are(&sched, &digest, 1)
        })
        .await;
    let dls: Vec<_> = nodes[1..].iter().map(|n| n.fetch(digest)).collect();
    for (n, d) in nodes[1..].iter().zip(&dls) {
        check_bytes(n, d, &digest).await;
    }
    let mut pairs = vec![(evil, &de)];
    pairs.extend(nodes[1..].iter().zip(&dls));
    figures("corrupt_peer", &up, &pairs);
    let bad: u64 = dls
        .iter()
        .map(|d| d.stats().bad_pieces.load(Ordering::Relaxed))
        .sum();
    assert!(bad >= 1, "nobody saw a corrupt piece");
    // A bad-parent report takes the parent out of the reporter's downloads for
    // good; once `bad_parent_limit` (3) distinct children reported it, it is
    // quarantined and offered to nobody. Every child here met it.
    sched
        .wait_for(
            "the scheduler no longer offers the corrupt peer",
            || async {
                let quarantined = sched.peers().await.iter().any(|p| {
                    p["id"] == evil.id.as_str()
                        && p["bad_reports"].as_u64() == Some(3)
                        && p["quarantined"] == true
                });
                let offered = sched.task(&digest.to_string()).await.is_none_or(|t| {
                    t["holders"].as_array().is_none_or(|h| {
                        h.iter().any(|h| {
                            h["parents"]
                                .as_array()
                                .is_some_and(|ps| ps.iter().any(|p| p == evil.id.as_str()))
                        })
                    })
                });
                quarantined && !offered
            },
        )
        .await;
}

/// The scheduler restarts mid-download: every download completes (the peers go on
/// with the parents they know, re-open their plans on the new scheduler and re-report
/// what they hold), and the new scheduler ends up knowing every holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_restart_mid_download_completes_and_new_scheduler_knows_every_holder() {
    let (digest, up) = upstream(14, Duration::from_millis(10)).await;
    let sched = InProcessScheduler::start().await;
    let tls = tls::ephemeral().unwrap();
    let nodes = swarm(&tls, &sched.grpc_url, &up, None).await;

    let dls: Vec<_> = nodes.iter().map(|n| n.fetch(digest)).collect();
    let mut rx: Vec<_> = dls.iter().map(|d| d.progress()).collect();
    eventually("some peer has a piece", || {
        rx.iter_mut()
            .any(|r| r.borrow_and_update().have.count() >= 1)
    })
    .await;
    let before: u32 = rx.iter_mut().map(|r| r.borrow().have.count()).sum();
    let sched = restart(sched).await;
    eprintln!("scheduler restarted with {before} pieces held across the swarm");

    for (n, d) in nodes.iter().zip(&dls) {
        check_bytes(n, d, &digest).await;
    }
    let pairs: Vec<_> = nodes.iter().zip(&dls).collect();
    figures("scheduler_restart", &up, &pairs);
    eprintln!(
        "scheduler_restart: new scheduler knows {} complete holders",
        sched.complete_holders(&digest.to_string()).await
    );
    sched
        .wait_for("the new scheduler knows all four holders", || {
            holders_are(&sched, &digest, 4)
        })
        .await;
}
