//! Piece transfer over real quinn endpoints on 127.0.0.1 (and `::1`: a client dials
//! parents of the other address family from an endpoint of that family): fetches, every status, upload
//! slots, malformed requests, mutual TLS refusals, the connection pool, and the TLS
//! directory helpers. No test asserts a duration (the rate limit is tested as a pure
//! token bucket in `transfer::rate`).

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use shoal_peer::tls::{self, PeerTls, Pki};
use shoal_peer::transfer::client::SILENCE_TIMEOUT;
use shoal_peer::transfer::codec::{self, Response};
use shoal_peer::transfer::server::{EXCLUSIVE_FOR, SEED_HOLD};
use shoal_peer::transfer::{
    FetchError, MemorySource, PieceClient, PieceSource, Seeding, TransferStats, UploadLimits, serve,
};
use shoal_proto::Digest;
use shoal_tests::eventually;
use tokio::sync::{Notify, oneshot};

const TIMEOUT: Duration = Duration::from_secs(20);
const LOCALHOST: &str = "127.0.0.1:0";

fn digest(n: u8) -> Digest {
    Digest::from_sha256([n; 32])
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

/// A running upload server.
struct Server {
    addr: SocketAddr,
    stats: Arc<TransferStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    endpoint: quinn::Endpoint,
}

impl Server {
    fn start(tls: &PeerTls, source: Arc<dyn PieceSource>, limits: UploadLimits) -> Server {
        Server::start_on(LOCALHOST, tls, source, limits)
    }

    fn start_on(
        listen: &str,
        tls: &PeerTls,
        source: Arc<dyn PieceSource>,
        limits: UploadLimits,
    ) -> Server {
        let endpoint = tls::endpoint(listen.parse().unwrap(), tls).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let stats = Arc::new(TransferStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            endpoint.clone(),
            source,
            limits,
            stats.clone(),
            Seeding::new(),
            stopped,
        ));
        Server {
            addr,
            stats,
            stop: Some(stop),
            task,
            endpoint,
        }
    }

    async fn shutdown(mut self) -> quinn::Endpoint {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
        self.endpoint
    }
}

fn client(tls: &PeerTls) -> PieceClient {
    PieceClient::new(tls::endpoint(LOCALHOST.parse().unwrap(), tls).unwrap())
}

/// A QUIC connection to `addr` from a fresh endpoint, for speaking the piece protocol
/// by hand (the endpoint lives as long as the connection).
async fn raw_connection(tls: &PeerTls, addr: SocketAddr) -> quinn::Connection {
    let endpoint = tls::endpoint(LOCALHOST.parse().unwrap(), tls).unwrap();
    endpoint
        .connect(addr, tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_client_on_one_family_fetches_from_parents_of_the_other() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "IPv6 loopback is unavailable (CI=true)"
        );
        eprintln!("transfer: skipped: no IPv6 loopback here");
        return;
    }
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    let piece = pattern(1 << 20, 9);
    source.insert(digest(9), 0, piece.clone());
    let v6 = Server::start_on("[::1]:0", &tls, source.clone(), UploadLimits::default());
    let v4 = Server::start_on(LOCALHOST, &tls, source, UploadLimits::default());
    // The node's server socket is IPv4 here, as with --quic-listen 0.0.0.0; the daemon
    // hands the client its configuration this way too.
    let client4 = client(&tls);
    client4.tls().set(tls.client_config());
    let got = client4
        .fetch(v6.addr, &digest(9), 0, 1 << 20, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, piece);
    // And the other way round: an IPv6 server socket reaching an IPv4 parent.
    let client6 = PieceClient::new(tls::endpoint("[::1]:0".parse().unwrap(), &tls).unwrap());
    client6.tls().set(tls.client_config());
    let got = client6
        .fetch(v4.addr, &digest(9), 0, 1 << 20, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, piece);
    // Without a configuration for a second endpoint the dial fails cleanly, at once.
    let bare = client(&tls);
    let e = bare
        .fetch(v6.addr, &digest(9), 0, 1 << 20, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Local(_)), "{e:?}");
    assert_eq!(client4.pooled(), 1);
}

#[tokio::test]
async fn fetches_pieces_byte_for_byte() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    let big = pattern(16 << 20, 1);
    let short = pattern(1000, 2);
    source.insert(digest(1), 0, big.clone());
    source.insert(digest(1), 7, short.clone());
    source.insert(digest(2), 0, Bytes::new());
    let server = Server::start(&tls, source, UploadLimits::default());
    let client = client(&tls);

    let got = client
        .fetch(server.addr, &digest(1), 0, 16 << 20, TIMEOUT)
        .await
        .unwrap();
    assert!(got == big, "16 MiB piece differs");
    let got = client
        .fetch(server.addr, &digest(1), 7, 1000, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, short);
    let got = client
        .fetch(server.addr, &digest(2), 0, 0, TIMEOUT)
        .await
        .unwrap();
    assert!(got.is_empty());

    eventually("three pieces counted", || {
        load(&server.stats.pieces_served) == 3
    })
    .await;
    assert_eq!(load(&server.stats.uploaded_bytes), (16 << 20) + 1000);
    assert_eq!(load(&server.stats.connections), 1);
}

#[tokio::test]
async fn missing_piece_is_not_found_and_wrong_length_is_malformed() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    source.insert(digest(1), 0, pattern(4096, 0));
    let server = Server::start(&tls, source, UploadLimits::default());
    let client = client(&tls);

    let err = client
        .fetch(server.addr, &digest(1), 1, 4096, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::NotFound);
    assert!(err.retry_elsewhere());
    assert_eq!(load(&server.stats.not_found), 1);

    let err = client
        .fetch(server.addr, &digest(1), 0, 4095, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Malformed(_)), "{err:?}");
    assert!(err.retry_elsewhere());
    // The connection survives both.
    let got = client
        .fetch(server.addr, &digest(1), 0, 4096, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got.len(), 4096);
}

/// Holds every request until released; counts the requests waiting.
struct Gate {
    waiting: AtomicUsize,
    open: Notify,
}

#[async_trait::async_trait]
impl PieceSource for Gate {
    async fn piece(&self, _: &Digest, index: u32) -> Result<Option<Bytes>, std::io::Error> {
        let opened = self.open.notified();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        opened.await;
        Ok(Some(pattern(100, index as u8)))
    }
}

#[tokio::test]
async fn busy_when_every_upload_slot_is_taken() {
    let tls = tls::ephemeral().unwrap();
    let gate = Arc::new(Gate {
        waiting: AtomicUsize::new(0),
        open: Notify::new(),
    });
    let limits = UploadLimits {
        upload_slots: 2,
        rate_limit: None,
    };
    let server = Server::start(&tls, gate.clone(), limits);
    let client = Arc::new(client(&tls));

    let held: Vec<_> = (0..2)
        .map(|i| {
            let (client, addr) = (client.clone(), server.addr);
            tokio::spawn(async move { client.fetch(addr, &digest(1), i, 100, TIMEOUT).await })
        })
        .collect();
    eventually("both slots taken", || {
        gate.waiting.load(Ordering::SeqCst) == 2
    })
    .await;

    let err = client
        .fetch(server.addr, &digest(1), 9, 100, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Busy);
    assert!(err.retry_elsewhere());
    assert_eq!(load(&server.stats.busy), 1);

    gate.open.notify_waiters();
    for (i, task) in held.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), pattern(100, i as u8));
    }
}

#[tokio::test]
async fn malformed_request_gets_bad_request_and_others_are_still_served() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    source.insert(digest(3), 0, pattern(10, 3));
    let server = Server::start(&tls, source, UploadLimits::default());
    let conn = raw_connection(&tls, server.addr).await;

    let bad_digest = {
        let mut frame = codec::encode_request(&codec::Request {
            digest: digest(3),
            index: 0,
        })
        .to_vec();
        let at = frame.len() - 10;
        frame[at] = b'Z';
        frame
    };
    let garbage = b"\x00\x00\x00\x05hello".to_vec();
    let oversized = vec![0xff; 10_000];
    for request in [bad_digest, garbage, oversized, Vec::new()] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&request).await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(64 * 1024).await.unwrap();
        let (response, _) = codec::decode_response_header(&reply).unwrap();
        assert!(matches!(response, Response::BadRequest(_)), "{response:?}");
    }
    assert_eq!(load(&server.stats.bad_requests), 4);

    let client = client(&tls);
    let got = client
        .fetch(server.addr, &digest(3), 0, 10, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, pattern(10, 3));
}

#[tokio::test]
async fn peers_of_another_ca_are_refused_both_ways() {
    let ours = Pki::issue(None).unwrap();
    let theirs = Pki::issue(None).unwrap();
    let tls_of = |ca: &Pki, id: &Pki| {
        PeerTls::from_pem(
            ca.ca_cert_pem.as_bytes(),
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
        )
        .unwrap()
    };
    let our_tls = tls_of(&ours, &ours);
    let source = Arc::new(MemorySource::new());
    source.insert(digest(1), 0, pattern(10, 1));
    let server = Server::start(&our_tls, source.clone(), UploadLimits::default());

    // A foreign peer connecting to us: it already refuses our server certificate.
    let foreign = client(&tls_of(&theirs, &theirs));
    let err = foreign
        .fetch(server.addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused(_)), "{err:?}");

    // One that trusts our CA but presents a foreign certificate: our server refuses it.
    let impostor = client(&tls_of(&ours, &theirs));
    let err = impostor
        .fetch(server.addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused(_)), "{err:?}");
    eventually("handshake refused", || {
        load(&server.stats.handshakes_failed) >= 1
    })
    .await;

    // Our client connecting to a foreign server.
    let foreign_server = Server::start(&tls_of(&theirs, &theirs), source, UploadLimits::default());
    let err = client(&our_tls)
        .fetch(foreign_server.addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused(_)), "{err:?}");
    assert_eq!(load(&server.stats.pieces_served), 0);
    assert_eq!(load(&foreign_server.stats.pieces_served), 0);
}

#[tokio::test]
async fn a_client_without_certificate_is_refused() {
    let pki = Pki::issue(None).unwrap();
    let tls = PeerTls::from_pem(
        pki.ca_cert_pem.as_bytes(),
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
    )
    .unwrap();
    let source = Arc::new(MemorySource::new());
    source.insert(digest(1), 0, pattern(10, 1));
    let server = Server::start(&tls, source, UploadLimits::default());

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let mut endpoint = quinn::Endpoint::client(LOCALHOST.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);

    let err = PieceClient::new(endpoint)
        .fetch(server.addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused(_)), "{err:?}");
    eventually("handshake refused", || {
        load(&server.stats.handshakes_failed) == 1
    })
    .await;
    assert_eq!(load(&server.stats.pieces_served), 0);
}

#[tokio::test]
async fn concurrent_fetches_share_one_pooled_connection() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    for i in 0..64 {
        source.insert(digest(5), i, pattern(256 * 1024, i as u8));
    }
    let limits = UploadLimits {
        upload_slots: 64,
        rate_limit: NonZeroU64::new(1 << 40),
    };
    let server = Server::start(&tls, source, limits);
    let client = Arc::new(client(&tls));

    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (client, addr) = (client.clone(), server.addr);
            tokio::spawn(
                async move { client.fetch(addr, &digest(5), i, 256 * 1024, TIMEOUT).await },
            )
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), pattern(256 * 1024, i as u8));
    }
    assert_eq!(client.pooled(), 1);
    assert_eq!(load(&server.stats.connections), 1);
}

#[tokio::test]
async fn reconnects_after_the_parent_closed_the_connection() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    source.insert(digest(1), 0, pattern(10, 1));
    let server = Server::start(&tls, source.clone(), UploadLimits::default());
    let addr = server.addr;
    let client = client(&tls);
    client
        .fetch(addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(client.pooled(), 1);

    // Shutdown closes the connections it accepted; serve again on the same endpoint.
    let endpoint = server.shutdown().await;
    eventually("pooled connection closed", || client.pooled() == 0).await;
    endpoint.set_server_config(Some(tls.server_config()));
    let stats = Arc::new(TransferStats::default());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(
        endpoint,
        source,
        UploadLimits::default(),
        stats.clone(),
        Seeding::new(),
        stopped,
    ));

    client
        .fetch(addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(load(&stats.connections), 1);
}

#[tokio::test]
async fn init_dir_keeps_the_ca_and_issues_peers_that_trust_each_other() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = tls::init_dir(dir.path()).unwrap();
    let tls_a = tls::load_dir(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = tls::init_dir(dir.path()).unwrap();
    assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
    assert_ne!(second.cert_pem, first.cert_pem);
    let tls_b = tls::load_dir(dir.path()).unwrap();

    let source = Arc::new(MemorySource::new());
    source.insert(digest(1), 0, pattern(10, 1));
    let server = Server::start(&tls_a, source, UploadLimits::default());
    let got = client(&tls_b)
        .fetch(server.addr, &digest(1), 0, 10, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, pattern(10, 1));
}

#[test]
fn load_dir_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tls::init_dir(dir.path()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let err = tls::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tls.crt"), "{err}");
    std::fs::remove_file(dir.path().join("tls.key")).unwrap();
    let err = tls::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tls.crt") || err.contains("tls.key"), "{err}");

    std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
    let err = tls::init_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("ca.key"), "{err}");

    let partial = tempfile::tempdir().unwrap();
    std::fs::write(partial.path().join("ca.crt"), "x").unwrap();
    let err = tls::init_dir(partial.path()).unwrap_err().to_string();
    assert!(err.contains("ca.crt"), "{err}");
}

/// A piece goes to one child at a time; another piece is not held up; once the upload
/// ended, the piece is free for the next child at once (a blob not streaming from
/// upstream: no hold after).
#[tokio::test]
async fn a_piece_goes_to_one_child_at_a_time() {
    let tls = tls::ephemeral().unwrap();
    let gate = Arc::new(Gate {
        waiting: AtomicUsize::new(0),
        open: Notify::new(),
    });
    let server = Server::start(&tls, gate.clone(), UploadLimits::default());
    let (a, b) = (Arc::new(client(&tls)), client(&tls));

    // A's upload of piece 3 is under way (held at the gate).
    let held = {
        let (a, addr) = (a.clone(), server.addr);
        tokio::spawn(async move { a.fetch(addr, &digest(1), 3, 100, TIMEOUT).await })
    };
    eventually("A's upload started", || {
        gate.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    // B asking for the same piece now is told BUSY; another piece is not refused.
    let err = b
        .fetch(server.addr, &digest(1), 3, 100, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Busy);
    assert_eq!(load(&server.stats.busy), 1);
    let other = {
        let (b, addr) = (Arc::new(b), server.addr);
        let b2 = b.clone();
        (
            tokio::spawn(async move { b2.fetch(addr, &digest(1), 4, 100, TIMEOUT).await }),
            b,
        )
    };
    eventually("B's upload of piece 4 started", || {
        gate.waiting.load(Ordering::SeqCst) == 2
    })
    .await;
    gate.open.notify_waiters();
    assert_eq!(held.await.unwrap().unwrap(), pattern(100, 3));
    assert_eq!(other.0.await.unwrap().unwrap(), pattern(100, 4));
    let b = other.1;
    eventually("both uploads counted", || {
        load(&server.stats.pieces_served) == 2
    })
    .await;
    // The server lets the piece go as it counts the upload; give it that instant.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Uploaded to A: B gets it now.
    let got = {
        let addr = server.addr;
        let t = tokio::spawn(async move { b.fetch(addr, &digest(1), 3, 100, TIMEOUT).await });
        eventually("B's upload started", || {
            gate.waiting.load(Ordering::SeqCst) == 3
        })
        .await;
        gate.open.notify_waiters();
        t.await.unwrap().unwrap()
    };
    assert_eq!(got, pattern(100, 3));
    assert_eq!(load(&server.stats.busy), 1);
}

/// While this peer streams a blob from upstream, each of its pieces goes to one child and
/// then stays with that child for [`SEED_HOLD`] (it is new to the swarm: the child spreads
/// it); a piece of a blob not streaming from upstream is free once its upload ended.
#[tokio::test]
async fn a_piece_fresh_from_upstream_goes_to_one_child_for_the_seed_hold() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    let (fresh, cached) = (digest(1), digest(2));
    for d in [fresh, cached] {
        source.insert(d, 0, pattern(4096, 0));
    }
    let seeding = Seeding::new();
    let upstream = seeding.start(fresh);
    let endpoint = tls::endpoint(LOCALHOST.parse().unwrap(), &tls).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let stats = Arc::new(TransferStats::default());
    tokio::spawn(serve(
        endpoint,
        source,
        UploadLimits::default(),
        stats.clone(),
        seeding.clone(),
        std::future::pending::<()>(),
    ));
    let (a, b) = (client(&tls), client(&tls));
    for d in [fresh, cached] {
        assert_eq!(
            a.fetch(addr, &d, 0, 4096, TIMEOUT).await.unwrap(),
            pattern(4096, 0)
        );
    }
    eventually("both uploads counted", || load(&stats.pieces_served) == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        b.fetch(addr, &cached, 0, 4096, TIMEOUT).await.unwrap(),
        pattern(4096, 0),
        "a blob not streaming from upstream: no hold"
    );
    assert_eq!(
        b.fetch(addr, &fresh, 0, 4096, TIMEOUT).await.unwrap_err(),
        FetchError::Busy,
        "a piece fresh from upstream stays with the child it went to"
    );
    assert_eq!(
        a.fetch(addr, &fresh, 0, 4096, TIMEOUT).await.unwrap(),
        pattern(4096, 0),
        "the child it went to is served again"
    );
    // The upstream stream ended; the hold of the pieces already sent runs out.
    drop(upstream);
    tokio::time::sleep(SEED_HOLD).await;
    assert_eq!(
        b.fetch(addr, &fresh, 0, 4096, TIMEOUT).await.unwrap(),
        pattern(4096, 0)
    );
    assert_eq!(load(&stats.busy), 1);
}

/// An upload that does not move (here the parent's read of the piece is stuck, as
/// when its child went silent) keeps its piece from other children only for
/// [`EXCLUSIVE_FOR`]: then another child is served it too. And a fetch from a parent
/// that says nothing fails as `Silent` (after [`SILENCE_TIMEOUT`]), well before its
/// own timeout.
#[tokio::test]
async fn a_stuck_upload_holds_its_piece_only_briefly_and_a_silent_parent_fails_as_silent() {
    const LONG: Duration = Duration::from_secs(60);
    assert!(SILENCE_TIMEOUT < LONG);
    let tls = tls::ephemeral().unwrap();
    let gate = Arc::new(Gate {
        waiting: AtomicUsize::new(0),
        open: Notify::new(),
    });
    let server = Server::start(&tls, gate.clone(), UploadLimits::default());
    let (a, b) = (Arc::new(client(&tls)), Arc::new(client(&tls)));
    let stuck = {
        let (a, addr) = (a.clone(), server.addr);
        tokio::spawn(async move { a.fetch(addr, &digest(2), 3, 100, LONG).await })
    };
    eventually("A's upload started", || {
        gate.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    let err = b
        .fetch(server.addr, &digest(2), 3, 100, LONG)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Busy, "exclusive while A's upload is young");
    tokio::time::sleep(EXCLUSIVE_FOR + Duration::from_millis(100)).await;
    let served = {
        let (b, addr) = (b.clone(), server.addr);
        tokio::spawn(async move { b.fetch(addr, &digest(2), 3, 100, LONG).await })
    };
    eventually("B's upload of the same piece started", || {
        gate.waiting.load(Ordering::SeqCst) == 2
    })
    .await;
    // A's parent said nothing (no header): the fetch fails as silent.
    assert_eq!(stuck.await.unwrap().unwrap_err(), FetchError::Silent);
    gate.open.notify_waiters();
    assert_eq!(served.await.unwrap().unwrap(), pattern(100, 3));
    assert_eq!(load(&server.stats.busy), 1);
}

/// An upload that keeps moving keeps its piece however long it takes: here a 1 MiB
/// piece at 256 KiB/s (the parent's upload rate limit) takes about 4 s, twice
/// [`EXCLUSIVE_FOR`], and another child asking for it after [`EXCLUSIVE_FOR`] is still
/// told `BUSY` (serving it a second copy would halve the first child's share of the
/// uplink). Once the upload ended, it is served, byte for byte.
#[tokio::test]
async fn a_moving_upload_keeps_its_piece_past_the_exclusive_time() {
    const LEN: usize = 1 << 20;
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    source.insert(digest(4), 0, pattern(LEN, 4));
    let limits = UploadLimits {
        rate_limit: NonZeroU64::new(256 * 1024),
        ..UploadLimits::default()
    };
    let server = Server::start(&tls, source, limits);
    let (a, b) = (Arc::new(client(&tls)), client(&tls));
    let slow = {
        let (a, addr) = (a.clone(), server.addr);
        tokio::spawn(async move { a.fetch(addr, &digest(4), 0, LEN as u32, TIMEOUT).await })
    };
    tokio::time::sleep(EXCLUSIVE_FOR + Duration::from_millis(300)).await;
    assert!(
        !slow.is_finished(),
        "the rate limit makes A's upload take ~4 s"
    );
    let err = b
        .fetch(server.addr, &digest(4), 0, LEN as u32, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Busy, "A's upload is still moving");
    assert_eq!(slow.await.unwrap().unwrap(), pattern(LEN, 4));
    eventually("A's upload counted", || {
        load(&server.stats.pieces_served) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = b
        .fetch(server.addr, &digest(4), 0, LEN as u32, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, pattern(LEN, 4));
    assert_eq!(load(&server.stats.busy), 1);
    eventually("both uploads counted", || {
        load(&server.stats.pieces_served) == 2
    })
    .await;
}

/// On a link with jumbo frames (loopback's MTU is 65,536) the path-MTU search takes a
/// connection's packets past quinn's own 1,452-byte ceiling, up to
/// [`tls::MAX_UDP_PAYLOAD`]: a 16 MiB piece arrives whole in datagrams several times
/// as large, so it pays a fraction of the headers.
#[tokio::test]
async fn on_a_link_with_jumbo_frames_pieces_travel_in_larger_packets() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    let piece = pattern(16 << 20, 9);
    source.insert(digest(9), 0, piece.clone());
    let server = Server::start(&tls, source, UploadLimits::default());
    let conn = raw_connection(&tls, server.addr).await;
    let request = codec::encode_request(&codec::Request {
        digest: digest(9),
        index: 0,
    });
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(17 << 20).await.unwrap();
    let (response, header_len) = codec::decode_response_header(&reply).unwrap();
    assert!(matches!(response, Response::Ok { .. }), "{response:?}");
    assert!(reply[header_len..] == piece[..], "the piece differs");

    let stats = conn.stats();
    let average = stats.udp_rx.bytes as f64 / stats.udp_rx.datagrams as f64;
    assert!(
        average > 3000.0,
        "the piece came in datagrams of {average:.0} bytes on average ({} datagrams)",
        stats.udp_rx.datagrams
    );
    // This side's own search too (its probes; it sends little else).
    let mtu = stats.path.current_mtu;
    assert!(
        mtu > 1452 && mtu <= tls::MAX_UDP_PAYLOAD,
        "path MTU {mtu} after the transfer"
    );
    // The parent reports its path's size (`shoal_peer_upload_path_mtu_bytes`).
    eventually("the upload counted", || {
        load(&server.stats.pieces_served) == 1
    })
    .await;
    let reported = load(&server.stats.upload_path_mtu);
    assert!(
        reported > 1452 && reported <= u64::from(tls::MAX_UDP_PAYLOAD),
        "the parent reported a path MTU of {reported}"
    );
}

/// A hostile sender on the network blasts the QUIC port with datagrams that are not
/// QUIC, of every size up to far past [`tls::MAX_UDP_PAYLOAD`] (the largest the
/// endpoint accepts): none becomes a connection or an upload, and a real peer is
/// served byte for byte right after.
#[tokio::test]
async fn garbage_datagrams_of_any_size_change_nothing() {
    let tls = tls::ephemeral().unwrap();
    let source = Arc::new(MemorySource::new());
    let piece = pattern(1 << 20, 4);
    source.insert(digest(4), 0, piece.clone());
    let server = Server::start(&tls, source, UploadLimits::default());
    let hostile = tokio::net::UdpSocket::bind(LOCALHOST).await.unwrap();
    let max = usize::from(tls::MAX_UDP_PAYLOAD);
    for len in [1, 20, 1200, 1500, max, max + 1, 9000, 60_000] {
        for fill in [0x00u8, 0xc3, 0xff] {
            // 0xc3: a long-header Initial's first byte, the rest not QUIC.
            hostile
                .send_to(&vec![fill; len], server.addr)
                .await
                .unwrap();
        }
    }
    let got = client(&tls)
        .fetch(server.addr, &digest(4), 0, 1 << 20, TIMEOUT)
        .await
        .unwrap();
    assert!(got == piece, "the piece differs after the garbage");
    eventually("the real fetch counted", || {
        load(&server.stats.pieces_served) == 1
    })
    .await;
    assert_eq!(
        load(&server.stats.connections),
        1,
        "only the real peer connected"
    );
    assert_eq!(load(&server.stats.handshakes_failed), 0);
}
