//! The download side: fetches one piece from one parent.
//!
//! [`PieceClient`] keeps one QUIC connection per parent address and opens one
//! bidirectional stream per piece; concurrent fetches to the same parent share the
//! connection (and wait for the same handshake). A connection that has closed is
//! replaced on the next fetch, and a fetch that finds its pooled connection just died
//! retries once on a fresh one.
//!
//! Besides the caller's timeout for the whole fetch, a parent that says nothing for
//! [`SILENCE_TIMEOUT`] (no handshake, no response header, no body bytes) fails the
//! fetch with [`FetchError::Silent`]: a parent cut off by a partition, or dead, costs
//! seconds, not the whole fetch timeout. Its pooled connection is then dropped from
//! the pool, so that the next fetch (after the partition heals) connects afresh rather
//! than waiting on a connection whose probes have backed off.
//!
//! Address families: a parent of the family of the endpoint given to
//! [`PieceClient::new`] (the node's QUIC server socket) is dialled from it; a parent of
//! the other family from a client-only endpoint of that family (`0.0.0.0:0` or
//! `[::]:0`), made at the first such dial with the configuration set in [`ClientTls`]
//! (so an IPv4-bound server still reaches IPv6 parents, and the reverse).
//!
//! Non-goals: no hash verification (the download engine does it; here only the length
//! is checked), no retries on other parents (the caller asks
//! [`FetchError::retry_elsewhere`]), no parent choice.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, VarInt};
use shoal_proto::Digest;
use tokio::sync::OnceCell;
use tracing::{Instrument, debug, debug_span};

use super::codec::{self, CodecError, LEN_PREFIX, MAX_HEADER_LEN, Request, Response};
use crate::tls::SERVER_NAME;

/// How long a parent may stay silent (handshake, response header, between body
/// chunks) before the fetch fails with [`FetchError::Silent`]. A parent answers the
/// header as soon as it has read the piece, and `BUSY` at once, so seconds of silence
/// mean it is unreachable or stuck.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(4);

/// Stream error code sent when the client abandons a response it does not want.
const REJECT: VarInt = VarInt::from_u32(1);

/// Why a piece could not be fetched from a parent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The parent does not hold the piece.
    #[error("parent does not hold the piece")]
    NotFound,
    /// All upload slots of the parent are taken.
    #[error("parent is busy")]
    Busy,
    /// The fetch did not complete within its timeout.
    #[error("timed out")]
    Timeout,
    /// The parent sent nothing for [`SILENCE_TIMEOUT`].
    #[error("parent silent for {SILENCE_TIMEOUT:?}")]
    Silent,
    /// The TLS handshake failed: one side's certificate is not from the cluster CA.
    #[error("refused by TLS: {0}")]
    Refused(String),
    /// The parent broke the protocol (bad header, wrong length, extra bytes).
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The parent answered that our request is malformed.
    #[error("parent rejected the request: {0}")]
    BadRequest(String),
    /// The connection or stream failed.
    #[error("connection failed: {0}")]
    Io(String),
    /// This side cannot connect at all (endpoint closed, unusable address).
    #[error("cannot connect: {0}")]
    Local(String),
}

impl FetchError {
    /// Whether asking another parent for the same piece makes sense.
    ///
    /// `false` only when every parent would fail the same way: our request is rejected
    /// as malformed, or this side cannot connect anywhere.
    pub fn retry_elsewhere(&self) -> bool {
        !matches!(self, FetchError::BadRequest(_) | FetchError::Local(_))
    }

    /// Whether the parent looks unreachable (silent, or the connection timed out):
    /// worth avoiding at once rather than after repeated failures.
    pub fn unresponsive(&self) -> bool {
        matches!(self, FetchError::Silent | FetchError::Timeout)
    }

    fn from_connection(e: ConnectionError) -> Self {
        let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
        match &e {
            ConnectionError::TransportError(t) if crypto(t.code) => {
                FetchError::Refused(e.to_string())
            }
            ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
                FetchError::Refused(e.to_string())
            }
            ConnectionError::TimedOut => FetchError::Timeout,
            ConnectionError::LocallyClosed => FetchError::Local(e.to_string()),
            _ => FetchError::Io(e.to_string()),
        }
    }
}

type Slot = Arc<OnceCell<Connection>>;

/// Fetches pieces from parents, one pooled connection per parent.
#[derive(Debug)]
pub struct PieceClient {
    endpoint: Endpoint,
    /// The client-only endpoint for parents of the other family than `endpoint`'s.
    other_family: OnceLock<Endpoint>,
    pool: Mutex<HashMap<SocketAddr, Slot>>,
    tls: ClientTls,
}

/// The client configuration new connections use in place of the endpoint's
/// default once set: how a renewed certificate or rotated CA reaches a
/// [`PieceClient`] (`daemon/tls_reload.rs`). Pooled connections keep theirs.
#[derive(Clone, Default)]
pub struct ClientTls(Arc<Mutex<Option<quinn::ClientConfig>>>);

impl ClientTls {
    /// New connections use `config` from now on.
    pub fn set(&self, config: quinn::ClientConfig) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(config);
    }

    fn get(&self) -> Option<quinn::ClientConfig> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { .. }")
    }
}

impl PieceClient {
    /// A client connecting from `endpoint`, which must have a default client
    /// configuration (see [`crate::tls::endpoint`]).
    pub fn new(endpoint: Endpoint) -> Self {
        PieceClient {
            endpoint,
            other_family: OnceLock::new(),
            pool: Mutex::new(HashMap::new()),
            tls: ClientTls::default(),
        }
    }

    /// Where to put a new client configuration (see [`ClientTls`]).
    pub fn tls(&self) -> ClientTls {
        self.tls.clone()
    }

    /// Number of parents with a live pooled connection.
    pub fn pooled(&self) -> usize {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.values()
            .filter(|slot| slot.get().is_some_and(|c| c.close_reason().is_none()))
            .count()
    }

    /// Fetches piece `index` of `digest` from `parent`; the body must be exactly
    /// `expected_len` bytes. The whole fetch, handshake included, is bounded by `timeout`.
    pub async fn fetch(
        &self,
        parent: SocketAddr,
        digest: &Digest,
        index: u32,
        expected_len: u32,
        timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        let request = Request {
            digest: *digest,
            index,
        };
        let span = debug_span!("fetch", peer.addr = %parent, task = %digest, piece = index);
        let fetch = async {
            let (conn, reused) = self.connection(parent).await?;
            match exchange(&conn, &request, expected_len).await {
                Err(Retry::Stale(e)) if reused => {
                    debug!(error = %e, "pooled connection was stale, reconnecting");
                    let (conn, _) = self.connection(parent).await?;
                    exchange(&conn, &request, expected_len)
                        .await
                        .map_err(Retry::into_inner)
                }
                other => other.map_err(Retry::into_inner),
            }
        };
        let result = tokio::time::timeout(timeout, fetch)
            .instrument(span)
            .await
            .unwrap_or(Err(FetchError::Timeout));
        if let Err(e) = &result {
            debug!(peer.addr = %parent, piece = index, error = %e, "fetch failed");
            if e.unresponsive() {
                // The pooled connection may be dead without knowing it yet (a
                // partition: QUIC's idle timeout is 30 s and its probes back off):
                // the next fetch connects afresh. Streams still open on it go on.
                self.pool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&parent);
            }
        }
        result
    }

    /// The pooled connection to `parent` (connecting if there is none or it closed),
    /// and whether it was already open before this call.
    async fn connection(&self, parent: SocketAddr) -> Result<(Connection, bool), FetchError> {
        let slot = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let slot = pool.entry(parent).or_default();
            if slot.get().is_some_and(|c| c.close_reason().is_some()) {
                *slot = Slot::default();
            }
            slot.clone()
        };
        if let Some(conn) = slot.get() {
            return Ok((conn.clone(), true));
        }
        let conn = slot
            .get_or_try_init(|| async {
                debug!(peer.addr = %parent, "connecting");
                let endpoint = self.endpoint_for(parent)?;
                let connecting = match self.tls.get() {
                    Some(config) => endpoint.connect_with(config, parent, SERVER_NAME),
                    None => endpoint.connect(parent, SERVER_NAME),
                }
                .map_err(|e| FetchError::Local(e.to_string()))?;
                quiet(connecting)
                    .await?
                    .map_err(FetchError::from_connection)
            })
            .await?;
        Ok((conn.clone(), false))
    }
}

impl PieceClient {
    /// The endpoint to dial `parent` from: the given one when its family matches,
    /// else a client-only endpoint of `parent`'s family (bound at the first need).
    fn endpoint_for(&self, parent: SocketAddr) -> Result<&Endpoint, FetchError> {
        let local = self
            .endpoint
            .local_addr()
            .map_err(|e| FetchError::Local(e.to_string()))?;
        if local.is_ipv4() == parent.is_ipv4() {
            return Ok(&self.endpoint);
        }
        if let Some(e) = self.other_family.get() {
            return Ok(e);
        }
        if self.tls.get().is_none() {
            return Err(FetchError::Local(format!(
                "no client configuration for a second endpoint to reach {parent} (this endpoint is on {local})"
            )));
        }
        let any: SocketAddr = if parent.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // Only parents of this family are out of reach (no IPv6 here, say): others may
        // still serve the piece.
        let endpoint = Endpoint::client(any)
            .map_err(|e| FetchError::Io(format!("cannot bind {any} to reach {parent}: {e}")))?;
        debug!(local.addr = %any, peer.addr = %parent, "client endpoint for the other address family");
        // Two first dials at once may both bind: one endpoint is kept, the other dropped.
        Ok(self.other_family.get_or_init(|| endpoint))
    }
}

/// A fetch failure, or a sign that the pooled connection was dead before we used it.
enum Retry {
    Stale(FetchError),
    Fail(FetchError),
}

impl Retry {
    fn into_inner(self) -> FetchError {
        match self {
            Retry::Stale(e) | Retry::Fail(e) => e,
        }
    }
}

/// One request/response over a new stream of `conn`.
async fn exchange(conn: &Connection, request: &Request, expected_len: u32) -> Result<Bytes, Retry> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Retry::Stale(FetchError::from_connection(e)))?;
    let fail = |e: FetchError| Retry::Fail(e);
    send.write_chunk(codec::encode_request(request))
        .await
        .map_err(|e| fail(write_error(e)))?;
    send.finish()
        .map_err(|e| fail(FetchError::Io(e.to_string())))?;
    let (response, mut body) = quiet(read_header(&mut recv))
        .await
        .and_then(|r| r)
        .map_err(fail)?;
    let length = match response {
        Response::Ok { length } => length,
        Response::NotFound => return Err(fail(FetchError::NotFound)),
        Response::Busy => return Err(fail(FetchError::Busy)),
        Response::BadRequest(m) => return Err(fail(FetchError::BadRequest(m))),
    };
    if length != expected_len {
        let _ = recv.stop(REJECT);
        return Err(fail(FetchError::Malformed(format!(
            "piece is {length} bytes, expected {expected_len}"
        ))));
    }
    let length = length as usize;
    if body.len() > length {
        return Err(fail(FetchError::Malformed("bytes after the piece".into())));
    }
    body.reserve(length - body.len());
    while body.len() < length {
        match quiet(recv.read_chunk(length - body.len(), true))
            .await
            .map_err(fail)?
        {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(fail(FetchError::Malformed(format!(
                    "stream ended after {} of {length} bytes",
                    body.len()
                ))));
            }
            Err(e) => return Err(fail(read_error(e))),
        }
    }
    match recv.read_chunk(1, true).await {
        Ok(None) => Ok(body.freeze()),
        Ok(Some(_)) => {
            let _ = recv.stop(REJECT);
            Err(fail(FetchError::Malformed("bytes after the piece".into())))
        }
        Err(e) => Err(fail(read_error(e))),
    }
}

/// `step`, failed with [`FetchError::Silent`] when it takes [`SILENCE_TIMEOUT`].
async fn quiet<T>(step: impl std::future::Future<Output = T>) -> Result<T, FetchError> {
    tokio::time::timeout(SILENCE_TIMEOUT, step)
        .await
        .map_err(|_| FetchError::Silent)
}

/// Reads up to the end of the response header; returns it and the body bytes that
/// arrived with it.
async fn read_header(recv: &mut RecvStream) -> Result<(Response, BytesMut), FetchError> {
    let mut buf = BytesMut::new();
    loop {
        match codec::decode_response_header(&buf) {
            Ok((response, used)) => {
                let body = buf.split_off(used);
                return Ok((response, body));
            }
            Err(CodecError::Malformed(reason)) => return Err(FetchError::Malformed(reason)),
            Err(CodecError::Incomplete) => {}
        }
        // Never read past the largest possible header (the body may be large).
        let want = LEN_PREFIX + MAX_HEADER_LEN - buf.len();
        match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(FetchError::Malformed(
                    "stream ended inside the header".into(),
                ));
            }
            Err(e) => return Err(read_error(e)),
        }
    }
}

fn read_error(e: quinn::ReadError) -> FetchError {
    match e {
        quinn::ReadError::ConnectionLost(c) => FetchError::from_connection(c),
        other => FetchError::Io(other.to_string()),
    }
}

fn write_error(e: quinn::WriteError) -> FetchError {
    match e {
        quinn::WriteError::ConnectionLost(c) => FetchError::from_connection(c),
        other => FetchError::Io(other.to_string()),
    }
}
