//! Swarms of four peers on 127.0.0.1 fetching one 64 MiB blob: a real scheduler
//! (gRPC), real QUIC piece transfer, `MemStore`s and a counting HTTP upstream. Each
//! peer runs on its own tokio runtime so that it can be killed like a crashed node
//! (its runtime is shut down: engine, QUIC server, scheduler link all vanish at once).
//! No test asserts a duration; waits only fail when something never happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_peer::daemon::{StoreInventory, StoreSource};
use shoal_peer::engine::{Download, Engine, HttpUpstream};
use shoal_peer::scheduler_link::{LinkConfig, SchedulerLink};
use shoal_peer::store::{MemStore, PieceStore};
use shoal_peer::tls::{self, PeerTls};
use shoal_peer::transfer::{PieceClient, PieceSource, TransferStats, UploadLimits, serve};
use shoal_proto::{Digest, v1};
use shoal_scheduler::core::{CoreConfig, PeerId, Scheduler};
use shoal_scheduler::grpc;
use shoal_scheduler::state::SchedulerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const REPO: &str = "test/blob";
const WAIT: Duration = Duration::from_secs(60);

fn blob(len: usize, seed: u64) -> (Bytes, Digest) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let d = Digest::from_sha256(Sha256::digest(&data).into());
    (data.into(), d)
}

/// A one-blob HTTP registry on 127.0.0.1 that counts requests and body bytes; it
/// pauses `delay` after every 256 KiB so a transfer takes a while.
struct Registry {
    base: String,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Registry {
    async fn start(data: Bytes, digest: Digest, delay: Duration) -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (data, r, b) = (data.clone(), r.clone(), b.clone());
                tokio::spawn(answer(sock, data, digest, r, b, delay));
            }
        });
        Registry {
            base,
            requests,
            bytes,
        }
    }

    fn upstream(&self) -> Arc<HttpUpstream> {
        Arc::new(HttpUpstream::new(self.base.clone(), REPO).unwrap())
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

async fn answer(
    mut sock: tokio::net::TcpStream,
    data: Bytes,
    digest: Digest,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    delay: Duration,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let path = format!("get /v2/{REPO}/blobs/{digest} ");
    if !head.starts_with(&path) {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let start: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("range: bytes="))
        .and_then(|r| r.trim().trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let len = data.len();
    let header = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{len}\r\nconnection: close\r\n\r\n",
            len - start,
            len - 1
        )
    } else {
        format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
    };
    if sock.write_all(header.as_bytes()).await.is_err() {
        return;
    }
    for chunk in data[start..].chunks(256 * 1024) {
        if sock.write_all(chunk).await.is_err() {
            return;
        }
        bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// A scheduler on 127.0.0.1 with its ticker, stoppable and restartable on its address.
struct Sched {
    addr: SocketAddr,
    url: String,
    state: Arc<SchedulerState>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Sched {
    async fn start(config: CoreConfig) -> Sched {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Sched::serve(listener, config)
    }

    fn serve(listener: TcpListener, config: CoreConfig) -> Sched {
        let addr = listener.local_addr().unwrap();
        let state = SchedulerState::new(Scheduler::new(config));
        let (stop, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(grpc::serve(
            listener,
            state.clone(),
            Arc::new(()),
            until(rx.clone()),
        ));
        tokio::spawn(grpc::run_ticker(
            state.clone(),
            Duration::from_millis(20),
            until(rx),
        ));
        Sched {
            addr,
            url: format!("http://{addr}"),
            state,
            stop,
            server,
        }
    }

    /// Stops this scheduler and serves a new one (fresh state) on the same address.
    async fn restart(self, config: CoreConfig) -> Sched {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("scheduler did not stop")
            .unwrap()
            .unwrap();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        Sched::serve(listener, config)
    }

    fn complete_holders(&self, digest: &Digest) -> usize {
        self.state
            .with_core(|c, now| c.task(now, digest))
            .map_or(0, |t| t.summary.complete_holders)
    }
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
    upstream: Arc<HttpUpstream>,
}

impl Node {
    fn start(tls: &PeerTls, url: &str, id: &str, registry: &Registry, corrupt: bool) -> Node {
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
        tokio::spawn(serve(
            endpoint.clone(),
            source,
            UploadLimits::default(),
            Arc::new(TransferStats::default()),
            std::future::pending::<()>(),
        ));
        let info = v1::PeerInfo {
            peer_id: id.into(),
            hostname: id.into(),
            quic_addr: addr.to_string(),
            zone: String::new(),
            rack: String::new(),
            upload_slots: 0,
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
        drop(guard);
        Node {
            id: id.into(),
            rt: Some(rt),
            engine,
            store,
            link,
            endpoint,
            upstream: registry.upstream(),
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

async fn swarm(tls: &PeerTls, url: &str, registry: &Registry, corrupt: Option<usize>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..4 {
        let id = format!("peer-{i}");
        nodes.push(Node::start(tls, url, &id, registry, corrupt == Some(i)));
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

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never happened: {what}");
}

async fn read_all(dl: &Arc<Download>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = std::pin::pin!(dl.reader(0));
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn done(dl: &Arc<Download>) {
    tokio::time::timeout(WAIT, dl.wait())
        .await
        .expect("download did not finish")
        .expect("download failed");
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

fn figures(test: &str, registry: &Registry, nodes: &[(&Node, &Arc<Download>)]) {
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
        registry.requests(),
        registry.bytes(),
        SIZE,
        registry.bytes() as f64 / SIZE as f64,
        per.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_at_once_upstream_serves_one_copy() {
    let (data, digest) = blob(SIZE, 11);
    let registry = Registry::start(data, digest, Duration::ZERO).await;
    let sched = Sched::start(CoreConfig::default()).await;
    let tls = tls::ephemeral().unwrap();
    let nodes = swarm(&tls, &sched.url, &registry, None).await;

    let dls: Vec<_> = nodes.iter().map(|n| n.fetch(digest)).collect();
    for (n, d) in nodes.iter().zip(&dls) {
        check_bytes(n, d, &digest).await;
    }
    let pairs: Vec<_> = nodes.iter().zip(&dls).collect();
    figures("four_peers_at_once", &registry, &pairs);
    assert_eq!(registry.requests(), 1);
    assert_eq!(registry.bytes(), SIZE as u64);
    eventually("all four are complete holders", || {
        sched.complete_holders(&digest) == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_back_to_source_peer_mid_transfer_the_others_complete() {
    let (data, digest) = blob(SIZE, 12);
    // About 2.6 s per copy, so the back-to-source peer is caught mid-transfer.
    let registry = Registry::start(data, digest, Duration::from_millis(10)).await;
    let config = CoreConfig {
        peer_ttl: Duration::from_secs(2),
        back_to_source_stall: Duration::from_secs(2),
        ..CoreConfig::default()
    };
    let sched = Sched::start(config).await;
    let tls = tls::ephemeral().unwrap();
    let mut nodes = swarm(&tls, &sched.url, &registry, None).await;

    let dls: Vec<_> = nodes.iter().map(|n| n.fetch(digest)).collect();
    let mut elected = Vec::new();
    eventually("a peer is elected back-to-source", || {
        elected = sched.state.with_core(|c, _| c.back_to_source_of(&digest));
        !elected.is_empty()
    })
    .await;
    let victim = nodes
        .iter()
        .position(|n| elected.iter().any(|e| e.to_string() == n.id))
        .expect("elected peer is one of ours");
    let mut progress = dls[victim].progress();
    tokio::time::timeout(WAIT, progress.wait_for(|p| p.have.count() >= 1))
        .await
        .expect("back-to-source peer never got a piece")
        .unwrap();
    let (have, total) = {
        let p = progress.borrow();
        (p.have.count(), p.have.len())
    };
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
    figures("kill_back_to_source", &registry, &pairs);
    assert!(
        registry.bytes() <= 2 * SIZE as u64,
        "upstream served {} bytes",
        registry.bytes()
    );
    eventually("the three survivors are complete holders", || {
        sched.complete_holders(&digest) == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_detected_and_dropped() {
    let (data, digest) = blob(SIZE, 13);
    let registry = Registry::start(data, digest, Duration::ZERO).await;
    let sched = Sched::start(CoreConfig::default()).await;
    let tls = tls::ephemeral().unwrap();
    let nodes = swarm(&tls, &sched.url, &registry, Some(0)).await;
    let evil = &nodes[0];

    // The corrupt peer gets the blob first (from upstream, correctly) and is then the
    // only holder the scheduler can offer the three others.
    let de = evil.fetch(digest);
    check_bytes(evil, &de, &digest).await;
    eventually("the corrupt peer is a complete holder", || {
        sched.complete_holders(&digest) == 1
    })
    .await;
    let dls: Vec<_> = nodes[1..].iter().map(|n| n.fetch(digest)).collect();
    for (n, d) in nodes[1..].iter().zip(&dls) {
        check_bytes(n, d, &digest).await;
    }
    let mut pairs = vec![(evil, &de)];
    pairs.extend(nodes[1..].iter().zip(&dls));
    figures("corrupt_peer", &registry, &pairs);
    let bad: u64 = dls
        .iter()
        .map(|d| d.stats().bad_pieces.load(Ordering::Relaxed))
        .sum();
    assert!(bad >= 1, "nobody saw a corrupt piece");
    eventually("the scheduler no longer offers the corrupt peer", || {
        sched.state.with_core(|c, now| {
            let reported = c
                .peers(now)
                .iter()
                .any(|p| p.id == evil.id && p.bad_reports >= 1);
            reported && !c.is_offerable(&PeerId::parse(&evil.id).unwrap(), &digest)
        })
    })
    .await;
}

/// The scheduler restarts mid-download: every download completes (the peers go on
/// with the parents they know, re-open their plans on the new scheduler and re-report
/// what they hold), and the new scheduler ends up knowing every holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_restart_mid_download_completes_and_new_scheduler_knows_every_holder() {
    let (data, digest) = blob(SIZE, 14);
    let registry = Registry::start(data, digest, Duration::from_millis(10)).await;
    let sched = Sched::start(CoreConfig::default()).await;
    let tls = tls::ephemeral().unwrap();
    let nodes = swarm(&tls, &sched.url, &registry, None).await;

    let dls: Vec<_> = nodes.iter().map(|n| n.fetch(digest)).collect();
    let mut rx: Vec<_> = dls.iter().map(|d| d.progress()).collect();
    eventually("some peer has a piece", || {
        rx.iter_mut()
            .any(|r| r.borrow_and_update().have.count() >= 1)
    })
    .await;
    let before: u32 = rx.iter_mut().map(|r| r.borrow().have.count()).sum();
    let sched = sched.restart(CoreConfig::default()).await;
    eprintln!("scheduler restarted with {before} pieces held across the swarm");

    for (n, d) in nodes.iter().zip(&dls) {
        check_bytes(n, d, &digest).await;
    }
    let pairs: Vec<_> = nodes.iter().zip(&dls).collect();
    figures("scheduler_restart", &registry, &pairs);
    eprintln!(
        "scheduler_restart: new scheduler knows {} complete holders",
        sched.complete_holders(&digest)
    );
    eventually("the new scheduler knows all four holders", || {
        sched.complete_holders(&digest) == 4
    })
    .await;
}
