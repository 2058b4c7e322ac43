//! The download engine end to end on 127.0.0.1: a real scheduler (gRPC), real QUIC
//! piece transfer between peers, `MemStore`s, and an HTTP upstream that counts what it
//! serves (`CountingUpstream`, reached through the registry client). Two peers fetch
//! one blob with upstream serving it once; no scheduler
//! means upstream directly; a corrupt parent is detected and worked around; concurrent
//! fetches share one download; readers get exact bytes from any offset; a full disk
//! does not fail the download. No test asserts a duration.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_peer::daemon::StoreSource;
use shoal_peer::engine::twins::{self, TwinFetcher, TwinParent, TwinScheduler};
use shoal_peer::engine::{
    Download, Engine, EngineConfig, EngineError, ParentRef, PlanOpening, PlanParent, PlanUpdate,
    Upstream, UpstreamError,
};
use shoal_peer::scheduler_link::{Inventory, LinkConfig, Report, SchedulerLink};
use shoal_peer::store::{MemStore, PieceStore, PinGuard, StoreError, TaskMeta};
use shoal_peer::tls::{self, PeerTls};
use shoal_peer::transfer::{
    MemorySource, PieceClient, PieceSource, Seeding, TransferStats, UploadLimits, serve,
};
use shoal_proto::{Digest, TaskShape, v1};
use shoal_tests::blob;
use shoal_tests::scheduler::InProcessScheduler;
use shoal_tests::upstream::{CountingUpstream, Refusal};

const MIB: usize = 1 << 20;
const REPO: &str = "test/blob";
const WAIT: Duration = Duration::from_secs(60);

/// `len` test bytes, their digest, and a counting upstream serving them.
async fn upstream(len: usize, seed: u64) -> (Arc<Vec<u8>>, Digest, CountingUpstream) {
    let (data, digest) = blob(len, seed);
    let up = CountingUpstream::start(REPO, &digest, data.clone(), Duration::ZERO)
        .await
        .unwrap();
    (data, digest.parse().unwrap(), up)
}

/// Blob `GET`s upstream answered.
fn gets(up: &CountingUpstream) -> u64 {
    up.served().gets.load(Ordering::SeqCst)
}

/// A scheduler on 127.0.0.1 (through its entry point, with its ticker); returns
/// its gRPC URL and the handle that keeps it running.
async fn scheduler() -> (String, InProcessScheduler) {
    let sched = InProcessScheduler::start().await;
    (sched.grpc_url.clone(), sched)
}

struct Held(Vec<v1::HeldTask>);

impl Inventory for Held {
    fn held(&self) -> Vec<v1::HeldTask> {
        self.0.clone()
    }
}

/// A QUIC endpoint serving `source`; returns the endpoint and its address.
fn quic(tls: &PeerTls, source: Arc<dyn PieceSource>) -> (quinn::Endpoint, SocketAddr) {
    let endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), tls).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(
        endpoint.clone(),
        source,
        UploadLimits::default(),
        Arc::new(TransferStats::default()),
        Seeding::new(),
        std::future::pending::<()>(),
    ));
    (endpoint, addr)
}

fn link(url: String, id: &str, addr: SocketAddr, held: Vec<v1::HeldTask>) -> SchedulerLink {
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
    let mut config = LinkConfig::new(vec![url], info);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    SchedulerLink::spawn(config, Arc::new(Held(held)), std::future::pending())
}

/// A peer with a download engine.
struct Node<L = SchedulerLink> {
    engine: Engine,
    store: Arc<MemStore>,
    link: L,
    upstream: Arc<dyn Upstream>,
}

impl<L> Node<L> {
    fn fetch(&self, digest: Digest) -> Arc<Download> {
        self.engine.fetch(digest, 0, self.upstream.clone())
    }
}

fn node(tls: &PeerTls, url: String, id: &str, up: &CountingUpstream) -> Node {
    let store = Arc::new(MemStore::default());
    let (endpoint, addr) = quic(
        tls,
        Arc::new(StoreSource(store.clone() as Arc<dyn PieceStore>)),
    );
    let link = link(url, id, addr, Vec::new());
    let engine = Engine::new(store.clone(), link.clone(), PieceClient::new(endpoint));
    Node {
        engine,
        store,
        link,
        upstream: common::blob_upstream(&up.url(), REPO),
    }
}

/// A peer with no scheduler (an unreachable twin) and no parents: everything
/// comes from upstream.
fn lone(up: &CountingUpstream) -> Node<TwinScheduler> {
    let store = Arc::new(MemStore::default());
    let link = TwinScheduler::unavailable();
    Node {
        engine: Engine::new(store.clone(), link.clone(), TwinFetcher::default()),
        store,
        link,
        upstream: common::blob_upstream(&up.url(), REPO),
    }
}

async fn read_all(dl: &Arc<Download>, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = std::pin::pin!(dl.reader(offset));
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Waits for the download and for the driver to be done with it (the store's
/// bookkeeping included, so that tests may look at the store).
async fn done(dl: &Arc<Download>) {
    tokio::time::timeout(WAIT, dl.wait())
        .await
        .expect("download did not finish")
        .expect("download failed");
    tokio::time::timeout(WAIT, dl.settled())
        .await
        .expect("download did not settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_fetch_one_blob_and_upstream_serves_it_once() {
    let (data, digest, up) = upstream(16 * MIB, 1).await;
    let (url, sched) = scheduler().await;
    let tls = tls::ephemeral().unwrap();
    let a = node(&tls, url.clone(), "peer-a", &up);
    let b = node(&tls, url, "peer-b", &up);
    assert!(a.link.wait_connected(WAIT).await);
    assert!(b.link.wait_connected(WAIT).await);

    let da = a.fetch(digest);
    // The second peer asks once the first one is elected back-to-source.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let db = b.fetch(digest);
    done(&da).await;
    done(&db).await;

    assert_eq!(gets(&up), 1);
    assert_eq!(up.bytes(), data.len() as u64);
    for dl in [&da, &db] {
        let got = read_all(dl, 0).await;
        assert_eq!(Sha256::digest(&got).as_slice(), digest.as_bytes());
    }
    let from_parents = da.stats().pieces_from_parents.load(Ordering::Relaxed)
        + db.stats().pieces_from_parents.load(Ordering::Relaxed);
    assert_eq!(
        from_parents,
        u64::from(
            TaskShape::for_size(data.len() as u64)
                .unwrap()
                .piece_count()
        ),
        "one peer fetched every piece from the other"
    );
    for n in [&a, &b] {
        assert!(n.store.meta(&digest).unwrap().unwrap().complete);
    }
    // Every report was accepted: the scheduler knows both peers hold it complete.
    sched
        .wait_for("both peers are complete holders", || async {
            sched.complete_holders(&digest.to_string()).await == 2
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_scheduler_the_blob_comes_from_upstream() {
    let (data, digest, up) = upstream(9 * MIB + 7, 2).await;
    let n = lone(&up);
    let dl = n.fetch(digest);
    done(&dl).await;
    assert_eq!(read_all(&dl, 0).await, *data);
    assert_eq!(gets(&up), 1);
    assert!(n.store.meta(&digest).unwrap().unwrap().complete);
    // A later fetch is served from the store.
    let again = n.fetch(digest);
    done(&again).await;
    assert_eq!(read_all(&again, 0).await, *data);
    assert_eq!(gets(&up), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_download() {
    let (data, digest, up) = upstream(6 * MIB, 3).await;
    let n = lone(&up);
    let one = n.fetch(digest);
    let two = n.fetch(digest);
    assert!(Arc::ptr_eq(&one, &two));
    let (x, y) = tokio::join!(read_all(&one, 0), read_all(&two, 0));
    assert_eq!(x, *data);
    assert_eq!(y, *data);
    assert_eq!(gets(&up), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_yields_the_blob_from_an_offset() {
    let (data, digest, up) = upstream(13 * MIB + 5, 4).await;
    let n = lone(&up);
    let dl = n.fetch(digest);
    for offset in [5 * MIB + 123, 0, 4 * MIB, data.len() - 1, data.len()] {
        let got = read_all(&dl, offset as u64).await;
        assert!(got == data[offset..], "bytes from {offset} differ");
    }
    let mut past = std::pin::pin!(dl.reader(data.len() as u64 + 1));
    assert!(past.next().await.unwrap().is_err());
}

/// A full disk and no hash known for the pieces (no scheduler): they could be
/// neither kept nor verified as they stream, so the download fails cleanly (a
/// local fault) instead of holding the whole blob in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_no_known_hashes_fails_cleanly() {
    let (_data, digest, up) = upstream(5 * MIB, 5).await;
    let n = lone(&up);
    n.store.fail_writes(true);
    let dl = n.fetch(digest);
    let err = tokio::time::timeout(WAIT, dl.wait())
        .await
        .expect("download did not finish")
        .unwrap_err();
    assert!(matches!(err, EngineError::NoRoom), "{err}");
    assert!(err.is_local_fault());
    assert!(!n.store.meta(&digest).unwrap().is_some_and(|m| m.complete));
}

/// A full disk with the hashes known from the plan: the pieces stream through,
/// each verified, and memory holds only a small backlog ahead of a slow reader
/// (the driver stops taking pieces until the reader reads on), never the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_streams_verified_pieces_through_bounded_memory() {
    let (data, digest, up) = upstream(32 * 4 * MIB, 14).await;
    let shape = TaskShape::for_size(data.len() as u64).unwrap();
    let addr: SocketAddr = "10.9.0.3:7651".parse().unwrap();
    let parents = TwinFetcher::default();
    let mut hashes = Vec::new();
    for i in 0..shape.piece_count() {
        let r = shape.piece_range(i).unwrap();
        let piece = Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
        hashes.push((i, <[u8; 32]>::from(Sha256::digest(&piece))));
        parents.insert(addr, digest, i, piece);
    }
    let link = TwinScheduler::connected();
    let store = Arc::new(MemStore::default());
    store.fail_writes(true);
    let mut config = EngineConfig::default();
    config.planner.max_in_flight = 2;
    let engine = Engine::with_config(store.clone(), link.clone(), parents, config);
    let dl = engine.fetch(digest, 0, common::blob_upstream(&up.url(), REPO));
    let writer = loop {
        if let Some(w) = link.writer(&digest) {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    writer
        .send(Ok(PlanUpdate {
            shape: Some(shape),
            hashes,
            parents: vec![PlanParent {
                r: ParentRef {
                    id: "p".into(),
                    addr,
                },
                pieces: None,
            }],
            back_to_source: false,
            ..PlanUpdate::default()
        }))
        .unwrap();
    let (mut got, mut most) = (Vec::new(), 0);
    let mut reader = std::pin::pin!(dl.reader(0));
    while let Some(chunk) = reader.next().await {
        got.extend_from_slice(&chunk.unwrap());
        most = most.max(dl.memory_pieces());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(got == *data, "bytes differ");
    done(&dl).await;
    assert_eq!(gets(&up), 0);
    // The backlog (8) plus what was in flight (2) plus the piece being taken.
    assert!(most <= 11, "{most} pieces held in memory at once");
    assert!(!store.meta(&digest).unwrap().is_some_and(|m| m.complete));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_parent_is_detected_reported_and_worked_around() {
    let (data, digest, up) = upstream(16 * MIB, 6).await;
    let (url, _sched) = scheduler().await;
    let tls = tls::ephemeral().unwrap();
    let shape = TaskShape::for_size(data.len() as u64).unwrap();
    let good = Arc::new(MemorySource::new());
    let bad = Arc::new(MemorySource::new());
    let mut hashes = Vec::new();
    for i in 0..shape.piece_count() {
        let r = shape.piece_range(i).unwrap();
        let piece = Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
        hashes.push(Sha256::digest(&piece).to_vec());
        good.insert(digest, i, piece.clone());
        let mut evil = piece.to_vec();
        evil[0] ^= 0xff;
        bad.insert(digest, i, evil.into());
    }
    let held = vec![v1::HeldTask {
        digest: digest.to_string(),
        size: data.len() as u64,
        piece_hashes: hashes,
    }];
    let (_ge, gaddr) = quic(&tls, good);
    let (_be, baddr) = quic(&tls, bad);
    let g = link(url.clone(), "good", gaddr, held.clone());
    let b = link(url.clone(), "bad", baddr, held);
    assert!(g.wait_connected(WAIT).await);
    assert!(b.wait_connected(WAIT).await);

    let c = node(&tls, url, "child", &up);
    assert!(c.link.wait_connected(WAIT).await);
    let dl = c.fetch(digest);
    done(&dl).await;
    assert_eq!(read_all(&dl, 0).await, *data);
    assert!(dl.stats().bad_pieces.load(Ordering::Relaxed) >= 1);
    assert_eq!(gets(&up), 0);
    // The scheduler heard about it: "bad" is no longer offered for this task.
    let mut plan = c
        .link
        .plan(&digest, data.len() as u64, PlanOpening::default())
        .await
        .unwrap();
    let update: shoal_peer::engine::PlanUpdate = plan.next().await.unwrap().unwrap();
    assert!(update.parents.iter().all(|p| p.r.id != "bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_that_cannot_serve_mean_upstream_for_the_missing_pieces() {
    let (data, digest, up) = upstream(10 * MIB, 7).await;
    let (url, sched) = scheduler().await;
    let tls = tls::ephemeral().unwrap();
    let shape = TaskShape::for_size(data.len() as u64).unwrap();
    let hashes = (0..shape.piece_count())
        .map(|i| {
            let r = shape.piece_range(i).unwrap();
            Sha256::digest(&data[r.start as usize..r.end as usize]).to_vec()
        })
        .collect();
    // A parent that claims the task but serves nothing (NOT_FOUND for every piece).
    let held = vec![v1::HeldTask {
        digest: digest.to_string(),
        size: data.len() as u64,
        piece_hashes: hashes,
    }];
    let (_ee, eaddr) = quic(&tls, Arc::new(MemorySource::new()));
    let ghost = link(url.clone(), "ghost", eaddr, held);
    assert!(ghost.wait_connected(WAIT).await);

    let store = Arc::new(MemStore::default());
    let (endpoint, addr) = quic(
        &tls,
        Arc::new(StoreSource(store.clone() as Arc<dyn PieceStore>)),
    );
    let child = link(url, "child", addr, Vec::new());
    assert!(child.wait_connected(WAIT).await);
    let mut config = EngineConfig::default();
    config.planner.starve_timeout = Duration::from_millis(300);
    let engine = Engine::with_config(store.clone(), child, PieceClient::new(endpoint), config);
    let dl = engine.fetch(digest, 0, common::blob_upstream(&up.url(), REPO));
    done(&dl).await;
    assert_eq!(read_all(&dl, 0).await, *data);
    assert!(dl.stats().fetch_failures.load(Ordering::Relaxed) >= 1);
    assert_eq!(gets(&up), 1);
    assert!(store.meta(&digest).unwrap().unwrap().complete);
    sched
        .wait_for("the child is a complete holder", || async {
            sched.complete_holders(&digest.to_string()).await == 2
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusal_reaches_every_reader_as_such() {
    let (_data, digest, up) = upstream(3 * MIB, 8).await;
    let challenge = r#"Bearer realm="http://127.0.0.1:9/token",service="test""#;
    up.refuse_gets(Some(Refusal {
        status: 401,
        www_authenticate: Some(challenge.into()),
    }));
    let n = lone(&up);
    let dl = n.fetch(digest);
    let refusal = |e: &EngineError| match e {
        EngineError::Upstream(UpstreamError::Status {
            status,
            www_authenticate,
        }) => Some((*status, www_authenticate.clone())),
        _ => None,
    };
    let want = Some((401, Some(challenge.to_owned())));
    let err = tokio::time::timeout(WAIT, dl.wait())
        .await
        .expect("download did not finish")
        .unwrap_err();
    assert_eq!(refusal(&err), want, "{err}");
    assert!(!err.is_local_fault());
    let mut reader = std::pin::pin!(dl.reader(0));
    let err = reader.next().await.unwrap().unwrap_err();
    assert_eq!(refusal(&err), want, "{err}");
    // Without a plan and before the size is known, the first refusal ends the download.
    assert_eq!(up.served().refused.load(Ordering::SeqCst), 1);
    assert_eq!(gets(&up), 0);
}

/// The driver over the in-memory twins: a plan offering a corrupt parent and an
/// honest one. Every piece is verified; the corrupt parent is reported once and
/// never asked again; the blob comes from parents only; the task is reported
/// complete on the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_twins_a_corrupt_parent_is_reported_and_the_honest_one_serves() {
    let (data, digest, up) = upstream(16 * MIB + 3, 9).await;
    let shape = TaskShape::for_size(data.len() as u64).unwrap();
    let (good, bad): (SocketAddr, SocketAddr) = (
        "10.9.0.1:7651".parse().unwrap(),
        "10.9.0.2:7651".parse().unwrap(),
    );
    let parents = TwinFetcher::default();
    let mut hashes = Vec::new();
    for i in 0..shape.piece_count() {
        let r = shape.piece_range(i).unwrap();
        let piece = Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]);
        hashes.push((i, <[u8; 32]>::from(Sha256::digest(&piece))));
        parents.insert(good, digest, i, piece.clone());
        parents.insert(bad, digest, i, piece);
    }
    parents.set(bad, TwinParent::Corrupt);
    let link = TwinScheduler::connected();
    let store = Arc::new(MemStore::default());
    let engine = Engine::new(store.clone(), link.clone(), parents.clone());
    let dl = engine.fetch(digest, 0, common::blob_upstream(&up.url(), REPO));
    let writer = loop {
        if let Some(w) = link.writer(&digest) {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let parent = |id: &str, addr| PlanParent {
        r: ParentRef {
            id: id.into(),
            addr,
        },
        pieces: None,
    };
    writer
        .send(Ok(PlanUpdate {
            shape: Some(shape),
            hashes,
            parents: vec![parent("bad", bad), parent("good", good)],
            back_to_source: false,
            ..PlanUpdate::default()
        }))
        .unwrap();
    done(&dl).await;
    assert_eq!(read_all(&dl, 0).await, *data);
    assert_eq!(gets(&up), 0, "parents served it all");
    let reports = link.reports();
    let bad_reports = reports
        .iter()
        .filter(|r| matches!(r, Report::BadParent { parent, .. } if parent == "bad"))
        .count();
    assert_eq!(bad_reports, 1, "{reports:?}");
    assert!(
        parents.served(bad) <= 2,
        "the corrupt parent was asked again"
    );
    assert!(reports.contains(&Report::Complete(digest)), "{reports:?}");
    let mut reported = std::collections::HashSet::new();
    for r in &reports {
        if let Report::Pieces { pieces, .. } = r {
            for (i, hash) in pieces {
                assert!(hash.is_none(), "a child reported a hash");
                assert!(reported.insert(*i), "piece {i} reported twice");
            }
        }
    }
    assert_eq!(reported.len() as u32, shape.piece_count());
}

/// The back-to-source download whose plan is lost (its scheduler replica left)
/// re-opens it at once, saying it re-opens and that it streams from upstream (the
/// new owner then counts it as the source), keeps streaming from upstream, and
/// completes with one upstream copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_to_source_download_re_opens_its_lost_plan_saying_it_streams_from_upstream() {
    let (data, digest) = blob(16 * MIB + 5, 11);
    // 64 pauses of 40 ms: the stream lasts at least 2.6 s.
    let up = CountingUpstream::start(REPO, &digest, data.clone(), Duration::from_millis(40))
        .await
        .unwrap();
    let digest: Digest = digest.parse().unwrap();
    let shape = TaskShape::for_size(data.len() as u64).unwrap();
    let link = TwinScheduler::connected();
    let engine = Engine::new(
        Arc::new(MemStore::default()),
        link.clone(),
        TwinFetcher::default(),
    );
    let dl = engine.fetch(digest, 0, common::blob_upstream(&up.url(), REPO));
    let writer = |n: usize| {
        let link = link.clone();
        async move {
            loop {
                if link.openings().len() >= n
                    && let Some(w) = link.writer(&digest)
                {
                    break w;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let source = |w: &twins::PlanWriter| {
        w.send(Ok(PlanUpdate {
            shape: Some(shape),
            hashes: Vec::new(),
            parents: Vec::new(),
            back_to_source: true,
            ..PlanUpdate::default()
        }))
        .unwrap()
    };
    source(&writer(1).await);
    tokio::time::timeout(WAIT, async {
        while up.bytes() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("upstream streaming");
    // The replica goes away: every plan stream ends.
    link.end_plans();
    let reopened = tokio::time::timeout(WAIT, writer(2))
        .await
        .expect("re-opened");
    assert!(
        up.bytes() < data.len() as u64,
        "re-opened after the blob was in"
    );
    assert_eq!(
        link.openings(),
        vec![
            (digest, PlanOpening::default()),
            (digest, PlanOpening::reopen(true))
        ]
    );
    source(&reopened);
    done(&dl).await;
    assert_eq!(read_all(&dl, 0).await, *data);
    assert_eq!(gets(&up), 1, "one upstream copy");
}

/// A zero-size blob gets the same digest check as any other: its empty stream ends
/// cleanly only when the empty bytes are what the digest names, and fails (rather
/// than ending as if complete) when upstream sends nothing for a non-empty digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_size_blob_is_checked_against_its_digest() {
    let empty: Digest = format!("sha256:{}", hex_sha(b"")).parse().unwrap();
    let up = CountingUpstream::start(
        REPO,
        &empty.to_string(),
        Arc::new(Vec::new()),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let n = lone(&up);
    let dl = n.fetch(empty);
    done(&dl).await;
    assert!(read_all(&dl, 0).await.is_empty());

    // Upstream answers a non-empty digest with zero bytes.
    let (_data, liar) = blob(1024, 12);
    let up = CountingUpstream::start(REPO, &liar, Arc::new(Vec::new()), Duration::ZERO)
        .await
        .unwrap();
    let n = lone(&up);
    let dl = n.fetch(liar.parse().unwrap());
    let err = tokio::time::timeout(WAIT, dl.wait())
        .await
        .expect("download did not finish")
        .unwrap_err();
    assert!(matches!(err, EngineError::DigestMismatch(_)), "{err}");
    let mut reader = std::pin::pin!(dl.reader(0));
    assert!(
        reader.next().await.unwrap().is_err(),
        "an empty body ended as if right"
    );
}

fn hex_sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A store whose `mark_complete` (the sync of the whole blob to disk, on a real
/// store) waits until the test lets it go.
struct SlowSyncStore {
    inner: MemStore,
    syncing: std::sync::atomic::AtomicBool,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl PieceStore for SlowSyncStore {
    fn open(&self, d: Digest, s: TaskShape) -> Result<TaskMeta, StoreError> {
        self.inner.open(d, s)
    }
    fn meta(&self, d: &Digest) -> Result<Option<TaskMeta>, StoreError> {
        self.inner.meta(d)
    }
    fn set_hashes(&self, d: &Digest, h: &[(u32, [u8; 32])]) -> Result<(), StoreError> {
        self.inner.set_hashes(d, h)
    }
    fn set_media_type(&self, d: &Digest, m: &str) -> Result<(), StoreError> {
        self.inner.set_media_type(d, m)
    }
    fn write_piece(&self, d: &Digest, i: u32, b: &[u8]) -> Result<(), StoreError> {
        self.inner.write_piece(d, i, b)
    }
    fn read_piece(&self, d: &Digest, i: u32) -> Result<Option<Bytes>, StoreError> {
        self.inner.read_piece(d, i)
    }
    fn mark_complete(&self, d: &Digest) -> Result<(), StoreError> {
        self.syncing.store(true, Ordering::SeqCst);
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        self.inner.mark_complete(d)
    }
    fn remove(&self, d: &Digest) -> Result<(), StoreError> {
        self.inner.remove(d)
    }
    fn list(&self) -> Result<Vec<TaskMeta>, StoreError> {
        self.inner.list()
    }
    fn pin(&self, d: &Digest) -> PinGuard {
        self.inner.pin(d)
    }
    fn is_pinned(&self, d: &Digest) -> bool {
        self.inner.is_pinned(d)
    }
    fn collect_garbage(&self) -> Result<Vec<Digest>, StoreError> {
        self.inner.collect_garbage()
    }
    fn usage_bytes(&self) -> u64 {
        self.inner.usage_bytes()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
}

/// Readers get the whole verified blob without waiting for the store to sync it
/// (on a real disk the sync of a large blob takes hundreds of milliseconds, more
/// when every node of a swarm finishes at once); the store is marked complete
/// after, and the download ends only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_have_the_verified_blob_before_the_store_has_synced_it() {
    let (data, digest, up) = upstream(3 * MIB + 11, 9).await;
    let (tx, rx) = std::sync::mpsc::channel();
    let store = Arc::new(SlowSyncStore {
        inner: MemStore::default(),
        syncing: Default::default(),
        release: std::sync::Mutex::new(rx),
    });
    let engine = Engine::new(
        store.clone(),
        TwinScheduler::unavailable(),
        TwinFetcher::default(),
    );
    let dl = engine.fetch(digest, 0, common::blob_upstream(&up.url(), REPO));
    let got = tokio::time::timeout(WAIT, read_all(&dl, 0))
        .await
        .expect("the reader waited for the store's sync");
    assert_eq!(got, *data, "every byte, verified");
    assert!(
        store.syncing.load(Ordering::SeqCst),
        "the blob was read while its sync had not been let go"
    );
    assert!(!store.meta(&digest).unwrap().unwrap().complete);
    tx.send(()).unwrap();
    done(&dl).await;
    assert!(
        store.meta(&digest).unwrap().unwrap().complete,
        "marked complete once the sync was let go"
    );
}
