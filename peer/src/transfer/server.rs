//! The upload side: answers piece requests on an already bound QUIC endpoint.
//!
//! One task per connection, one task per bidirectional stream. A stream carries one
//! request frame (the client finishes its send side after it) and one response:
//! `OK` + the piece bytes, `NOT_FOUND`, `BUSY` when every upload slot is taken (slots
//! are a semaphore taken with `try_acquire`, so nothing queues) or `BAD_REQUEST`. A slot
//! is held until the client has acknowledged the whole piece, so slots count real
//! uploads. One piece is uploaded to one child at a time: a request for a piece that is
//! on its way to another child is answered `BUSY` too (the child asks for another piece,
//! or for this one from a holder that is free). An upload holds its piece that way
//! while it moves, and for at most [`EXCLUSIVE_FOR`] without moving; an upload as a
//! whole is given up (its stream
//! reset, its slot freed) after [`UPLOAD_TIMEOUT`]: a child that went silent mid-upload
//! (a partition, a dead node) costs the others a couple of seconds on that piece, not
//! the QUIC idle timeout. While this peer streams the blob from upstream ([`Seeding`]),
//! a piece a child took in full stays with that child for [`SEED_HOLD`] after: nobody
//! else has it yet, and this uplink is better spent on the next new piece than on a
//! second copy of this one, so it carries each new piece about once while the children
//! spread it among themselves (the scheduler tells them who has it within a plan
//! interval). Without this every child streaming in order asks the back-to-source peer
//! for the newest piece, and that peer's uplink, the one way new pieces enter the swarm,
//! carries it many times (measured: `docs/benchmarks.md`). Other pieces are free for
//! the next child as soon as an upload ends. On shutdown the server stops accepting (it removes the endpoint's server
//! configuration, so new handshakes are refused), lets in-flight uploads finish (at most
//! [`DRAIN_TIMEOUT`]) and closes the connections it accepted; it leaves the endpoint open
//! because the same endpoint carries this peer's downloads.
//!
//! Non-goals: no metrics registry (plain atomics in [`TransferStats`]), no TLS setup
//! ([`crate::tls`]), no piece storage ([`PieceSource`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::registry::Registry;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use shoal_proto::Digest;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span, warn};

use super::PieceSource;
use super::codec::{self, CodecError, LEN_PREFIX, MAX_HEADER_LEN, Request, Response};
use super::rate::RateLimiter;
use super::seeding::Seeding;
use crate::metrics::{self, Sample};

/// How long shutdown waits for in-flight uploads before closing their connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// After a piece this peer is fetching from upstream (see [`Seeding`]) was uploaded to
/// one child in full, how long requests for it from others are answered `BUSY`: the
/// piece is new to the swarm, and the child that has it spreads it while this uplink
/// carries the next new one. Bounded, so that the piece comes back here if that child
/// is gone before passing it on. Measured in the simulator (`docs/benchmarks.md`, "The
/// source sends each new piece once").
pub const SEED_HOLD: Duration = Duration::from_secs(10);

/// How long an upload in progress keeps a piece to its child without progress: past
/// this, other children asking for it are served too (the first child may be stalled or
/// gone). Progress is at least [`PROGRESS_BYTES`] more sent on the connection to that
/// child; an upload that keeps moving keeps its piece however long it takes (a parent
/// uploading to several children at once on a slow uplink takes several seconds a
/// piece, and serving the piece again meanwhile spends its uplink on a second copy).
pub const EXCLUSIVE_FOR: Duration = Duration::from_secs(2);

/// Bytes sent to a child (on its connection) within [`EXCLUSIVE_FOR`] that count as
/// its upload moving: far more than the loss probes a silent peer is sent.
pub const PROGRESS_BYTES: u64 = 64 * 1024;

/// An upload not acknowledged in full within this long is given up: its stream is
/// reset and its slot freed (a child's own request timeout is 10 s by default).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(12);

/// How long a client may take to send its request frame after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the writes when a rate limit applies (each waits for its tokens).
const RATE_CHUNK: usize = 64 * 1024;

/// What protects this node's own workload from its uploads.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Concurrent uploads; a request beyond them is answered `BUSY`. Default 8.
    pub upload_slots: usize,
    /// Upload rate of all uploads together, in bytes/s; `None` (the default) is unlimited.
    pub rate_limit: Option<NonZeroU64>,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            upload_slots: 8,
            rate_limit: None,
        }
    }
}

/// Counters of the upload side; read them with `load(Ordering::Relaxed)`, export them
/// with [`TransferStats::register_metrics`].
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Piece bytes acknowledged by clients.
    pub uploaded_bytes: AtomicU64,
    /// Pieces uploaded completely.
    pub pieces_served: AtomicU64,
    /// Requests answered `BUSY`.
    pub busy: AtomicU64,
    /// Requests answered `NOT_FOUND` (including piece store errors).
    pub not_found: AtomicU64,
    /// Requests answered `BAD_REQUEST`.
    pub bad_requests: AtomicU64,
    /// Uploads given up after [`UPLOAD_TIMEOUT`] (the child stalled or went silent).
    pub upload_timeouts: AtomicU64,
    /// Connections whose handshake succeeded.
    pub connections: AtomicU64,
    /// Connections whose handshake failed (e.g. a certificate from another CA).
    pub handshakes_failed: AtomicU64,
    /// The path MTU (largest UDP payload) of the connection the last complete upload
    /// went over (0 before the first): whether jumbo frames are in use.
    pub upload_path_mtu: AtomicU64,
}

impl TransferStats {
    /// Registers the upload counters in `registry` (names without a prefix: the
    /// daemon's registry adds `shoal_peer_`), read at every scrape.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        metrics::register(registry, self.clone(), |t| {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            vec![
                Sample::Counter(
                    "served_bytes",
                    "Bytes uploaded to other peers.",
                    load(&t.uploaded_bytes),
                ),
                Sample::Counter(
                    "served_pieces",
                    "Pieces uploaded to other peers.",
                    load(&t.pieces_served),
                ),
                Sample::Counter(
                    "upload_busy",
                    "Piece requests refused because every upload slot was taken.",
                    load(&t.busy),
                ),
                Sample::Counter(
                    "upload_not_found",
                    "Piece requests for pieces this peer does not hold.",
                    load(&t.not_found),
                ),
                Sample::Counter(
                    "upload_timeouts",
                    "Uploads given up because the child did not take the piece in time.",
                    load(&t.upload_timeouts),
                ),
                Sample::Counter(
                    "quic_handshakes_failed",
                    "QUIC connections refused (no or foreign certificate).",
                    load(&t.handshakes_failed),
                ),
                Sample::Gauge(
                    "upload_path_mtu_bytes",
                    "Largest UDP payload of the QUIC path of the last piece uploaded to a peer \
                     (about 1,450 on 1,500-byte frames, up to 6,500 with jumbo frames; 0 before the first).",
                    i64::try_from(load(&t.upload_path_mtu)).unwrap_or(i64::MAX),
                ),
            ]
        });
    }
}

/// Why one stream failed; logged, never sent.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("reading request: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("request not sent within {REQUEST_TIMEOUT:?}")]
    RequestTimeout,
    #[error("writing response: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("piece of {0} bytes does not fit the u32 length field")]
    TooLarge(usize),
    #[error("child did not take the piece within {UPLOAD_TIMEOUT:?}")]
    UploadTimeout,
}

struct Shared {
    source: Arc<dyn PieceSource>,
    slots: Arc<Semaphore>,
    rate: Option<RateLimiter>,
    stats: Arc<TransferStats>,
    /// Pieces being uploaded now (`until` `None`) or held back after an upload until
    /// an instant (see [`SEED_HOLD`]), with the child it went to.
    uploading: Mutex<HashMap<(Digest, u32), Hold>>,
    /// The blobs fetched from upstream now, whose pieces are held for [`SEED_HOLD`].
    seeding: Arc<Seeding>,
}

/// Who a piece went to, and until when others are refused it (`None`: still going,
/// exclusive while it moves, see [`EXCLUSIVE_FOR`]).
#[derive(Debug, Clone)]
struct Hold {
    child: SocketAddr,
    until: Option<Instant>,
    /// The connection to the child, and when and at which count of bytes sent on it
    /// the upload was last seen moving.
    conn: Connection,
    moved_at: Instant,
    sent: u64,
}

impl Hold {
    /// True when `child` asking for the piece at `now` must be answered `BUSY`.
    fn refuses(&mut self, child: SocketAddr, now: Instant) -> bool {
        if self.child == child {
            return false;
        }
        match self.until {
            Some(until) => until > now,
            None => {
                let sent = self.conn.stats().udp_tx.bytes;
                if sent >= self.sent.saturating_add(PROGRESS_BYTES) {
                    self.sent = sent;
                    self.moved_at = now;
                }
                now.saturating_duration_since(self.moved_at) < EXCLUSIVE_FOR
            }
        }
    }
}

/// A piece marked as being uploaded; free for others when dropped, or held back for
/// [`SEED_HOLD`] when the child took it all and this peer is fetching its blob from
/// upstream.
struct Uploading<'a> {
    shared: &'a Shared,
    piece: (Digest, u32),
    child: SocketAddr,
    delivered: bool,
}

impl<'a> Uploading<'a> {
    /// Marks `piece` as going to the child at the other end of `conn`, or `None` when
    /// it is on its way to another child (and that upload moved within
    /// [`EXCLUSIVE_FOR`]), or is held for the child it went to ([`SEED_HOLD`]). The
    /// same child asking again (its copy was lost or bad) is served.
    fn start(
        shared: &'a Shared,
        piece: (Digest, u32),
        conn: &Connection,
        now: Instant,
    ) -> Option<Self> {
        let child = conn.remote_address();
        let mut map = shared.uploading.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, h| h.until.is_none_or(|t| t > now));
        if map.get_mut(&piece).is_some_and(|h| h.refuses(child, now)) {
            return None;
        }
        map.insert(
            piece,
            Hold {
                child,
                until: None,
                conn: conn.clone(),
                moved_at: now,
                sent: conn.stats().udp_tx.bytes,
            },
        );
        drop(map);
        Some(Uploading {
            shared,
            piece,
            child,
            delivered: false,
        })
    }
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        let seed = self.delivered && self.shared.seeding.contains(&self.piece.0);
        let mut map = self
            .shared
            .uploading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only the upload that holds the piece now releases it (another child may
        // have taken it over after EXCLUSIVE_FOR).
        if let Some(h) = map.get_mut(&self.piece)
            && h.child == self.child
        {
            if seed {
                h.until = Some(Instant::now() + SEED_HOLD);
            } else {
                map.remove(&self.piece);
            }
        }
    }
}

/// Serves piece requests on `endpoint` until `shutdown` completes, then drains.
///
/// `endpoint` must have a server configuration (see [`crate::tls::endpoint`]); `stats`
/// is updated as requests are answered; `seeding` names the blobs this peer is
/// fetching from upstream (the engine's [`crate::engine::Engine::seeding`]).
pub async fn serve(
    endpoint: Endpoint,
    source: Arc<dyn PieceSource>,
    limits: UploadLimits,
    stats: Arc<TransferStats>,
    seeding: Arc<Seeding>,
    shutdown: impl Future,
) {
    let shared = Arc::new(Shared {
        source,
        slots: Arc::new(Semaphore::new(limits.upload_slots)),
        rate: limits
            .rate_limit
            .map(|r| RateLimiter::new(r.get(), RATE_CHUNK as u64)),
        stats,
        uploading: Mutex::new(HashMap::new()),
        seeding,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    connections.spawn(connection(incoming, shared.clone(), stop_rx.clone()));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    debug!(connections = connections.len(), "upload server draining");
    endpoint.set_server_config(None);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        warn!(
            connections = connections.len(),
            "uploads still running after drain timeout"
        );
        connections.abort_all();
    }
}

async fn connection(incoming: Incoming, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let addr = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            shared
                .stats
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer.addr = %addr, error = %e, "handshake failed");
            return;
        }
    };
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    // Who is asking: the node its certificate names ("shared" for the shared
    // certificate), for the logs of everything this connection asks.
    let node = crate::tls::caller_node(&conn);
    debug!(peer.addr = %addr, peer.node = %node, "peer connected");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let span = debug_span!("upload", peer.addr = %addr, peer.node = %node, stream.id = %send.id());
                    streams.spawn(answer(send, recv, shared.clone(), conn.clone()).instrument(span));
                }
                Err(e) => {
                    debug!(peer.addr = %addr, error = %e, "peer disconnected");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    close(&conn);
}

fn close(conn: &Connection) {
    conn.close(VarInt::from_u32(0), b"shutdown");
}

async fn answer(mut send: SendStream, mut recv: RecvStream, shared: Arc<Shared>, conn: Connection) {
    if let Err(e) = try_answer(&mut send, &mut recv, &shared, &conn).await {
        debug!(error = %e, "upload failed");
    }
}

async fn try_answer(
    send: &mut SendStream,
    recv: &mut RecvStream,
    shared: &Shared,
    conn: &Connection,
) -> Result<(), StreamError> {
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        recv.read_to_end(LEN_PREFIX + MAX_HEADER_LEN),
    );
    let request = match read.await {
        Err(_) => return Err(StreamError::RequestTimeout),
        Ok(Err(quinn::ReadToEndError::TooLong)) => Err("request longer than a header".into()),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(buf)) => match codec::decode_request(&buf) {
            Ok((request, used)) if used == buf.len() => Ok(request),
            Ok(_) => Err("bytes after the request frame".into()),
            Err(CodecError::Incomplete) => Err("truncated request frame".into()),
            Err(CodecError::Malformed(reason)) => Err(reason),
        },
    };
    let Request { digest, index } = match request {
        Ok(request) => request,
        Err(reason) => {
            debug!(reason = %reason, "bad request");
            shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return reply(send, &Response::BadRequest(reason)).await;
        }
    };
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        debug!(task = %digest, piece = index, "busy");
        shared.stats.busy.fetch_add(1, Ordering::Relaxed);
        return reply(send, &Response::Busy).await;
    };
    let Some(mut uploading) = Uploading::start(shared, (digest, index), conn, Instant::now())
    else {
        debug!(task = %digest, piece = index, "piece uploading or just uploaded; busy");
        shared.stats.busy.fetch_add(1, Ordering::Relaxed);
        return reply(send, &Response::Busy).await;
    };
    let bytes = match shared.source.piece(&digest, index).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            debug!(task = %digest, piece = index, "piece not found");
            shared.stats.not_found.fetch_add(1, Ordering::Relaxed);
            return reply(send, &Response::NotFound).await;
        }
        Err(e) => {
            warn!(task = %digest, piece = index, error = %e, "reading piece failed");
            shared.stats.not_found.fetch_add(1, Ordering::Relaxed);
            return reply(send, &Response::NotFound).await;
        }
    };
    let length = u32::try_from(bytes.len()).map_err(|_| StreamError::TooLarge(bytes.len()))?;
    debug!(task = %digest, piece = index, bytes = length, "serving");
    let upload = async {
        send.write_chunk(codec::encode_response_header(&Response::Ok { length }))
            .await?;
        write_body(send, bytes, shared.rate.as_ref()).await?;
        send.finish()?;
        // Hold the slot until the client has everything (or gave up).
        Ok::<_, StreamError>(matches!(send.stopped().await, Ok(None)))
    };
    match tokio::time::timeout(UPLOAD_TIMEOUT, upload).await {
        Ok(Ok(true)) => {
            uploading.delivered = true;
            shared
                .stats
                .uploaded_bytes
                .fetch_add(u64::from(length), Ordering::Relaxed);
            shared
                .stats
                .upload_path_mtu
                .store(u64::from(conn.stats().path.current_mtu), Ordering::Relaxed);
            shared.stats.pieces_served.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Ok(false)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            shared.stats.upload_timeouts.fetch_add(1, Ordering::Relaxed);
            let _ = send.reset(VarInt::from_u32(0));
            Err(StreamError::UploadTimeout)
        }
    }
}

async fn write_body(
    send: &mut SendStream,
    mut bytes: Bytes,
    rate: Option<&RateLimiter>,
) -> Result<(), StreamError> {
    let Some(rate) = rate else {
        send.write_chunk(bytes).await?;
        return Ok(());
    };
    while !bytes.is_empty() {
        let chunk = bytes.split_to(bytes.len().min(RATE_CHUNK));
        rate.acquire(chunk.len() as u64).await;
        send.write_chunk(chunk).await?;
    }
    Ok(())
}

async fn reply(send: &mut SendStream, response: &Response) -> Result<(), StreamError> {
    send.write_chunk(codec::encode_response_header(response))
        .await?;
    send.finish()?;
    let _ = send.stopped().await;
    Ok(())
}
