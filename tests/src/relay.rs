//! A fault-injecting HTTP/1.1 relay between a peer and its upstream registry, and a
//! client that says exactly how a blob pull ended.
//!
//! [`Relay`] listens on 127.0.0.1, forwards every request to the upstream (headers,
//! `Range` and `Authorization` included; redirects passed back, not followed) and
//! answers with upstream's status, headers and body. Blob `GET`s (a path containing
//! `/blobs/sha256:`) go through the [`Fault`] in force, which the test changes at run
//! time; every other request passes untouched. It counts blob `GET`s and the body
//! bytes it sent for them, and records every exchange ([`Exchange`]).
//!
//! The relay is written on raw sockets so that a fault is what it says on the wire: a
//! stall keeps the connection open and sends nothing more, a reset is a TCP RST
//! (`SO_LINGER` 0), corrupt bytes keep the length and the headers.
//!
//! [`pull`] GETs a URL and classifies the outcome ([`Pull`]): complete (with the body's
//! digest), refused before any body byte, broken after body bytes, or hung.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does to a blob `GET`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the body passes as upstream sends it.
    None,
    /// Send the headers and the first `after_bytes` body bytes, then nothing more,
    /// keeping the connection open (until the client closes it).
    Stall {
        /// Body bytes sent before the silence.
        after_bytes: u64,
    },
    /// Send the headers and the first `after_bytes` body bytes, then reset the
    /// connection (TCP RST).
    Reset {
        /// Body bytes sent before the reset.
        after_bytes: u64,
    },
    /// Flip every bit of the blob bytes `offset .. offset + len` (blob coordinates: a
    /// ranged answer is corrupted where it overlaps the range); length and headers
    /// stay right.
    CorruptPiece {
        /// First corrupted byte of the blob.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// Flip every bit of the whole body, once: the next blob `GET` gets wrong bytes
    /// (right length and headers), the ones after it right bytes.
    CorruptOnce,
    /// The next `count` blob `GET`s are answered `503 Service Unavailable` (an OCI
    /// error body, upstream not asked), the ones after them normally.
    Status5xx {
        /// How many `GET`s get a 503.
        count: u32,
    },
    /// Send the body at `bytes_per_sec`.
    Slow {
        /// The rate.
        bytes_per_sec: u64,
    },
}

impl Fault {
    /// How many blob `GET`s the fault applies to before the relay passes bytes through
    /// again, when the fault says so itself (`CorruptOnce`, `Status5xx`).
    fn own_budget(self) -> Option<u32> {
        match self {
            Fault::CorruptOnce => Some(1),
            Fault::Status5xx { count } => Some(count),
            _ => None,
        }
    }
}

/// One request the relay answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// The status the relay answered (502 when upstream could not be reached).
    pub status: u16,
    /// Body bytes the relay sent.
    pub body_bytes: u64,
    /// The fault applied to it.
    pub fault: Fault,
    /// Whether the body was cut short (stall, reset, or upstream's body broke).
    pub cut: bool,
}

/// The fault in force and how many more blob `GET`s it applies to (`None`: all).
#[derive(Debug, Clone, Copy)]
struct Armed {
    fault: Fault,
    left: Option<u32>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    armed: Mutex<Armed>,
    blob_gets: AtomicU64,
    body_bytes: AtomicU64,
    exchanges: Mutex<Vec<Exchange>>,
}

impl Shared {
    /// The fault for the next blob `GET`, counting it against the budget.
    fn take_fault(&self) -> Fault {
        let mut armed = self.armed.lock().expect("relay lock");
        let fault = armed.fault;
        if let Some(left) = armed.left.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                *armed = Armed {
                    fault: Fault::None,
                    left: None,
                };
            }
        }
        fault
    }

    fn record(&self, e: Exchange) {
        self.exchanges.lock().expect("relay lock").push(e);
    }
}

/// A running relay; it stops with the tokio runtime that started it.
#[derive(Debug, Clone)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts relaying to `upstream` (`http://host:port`), with no fault. Must be
    /// called within a tokio runtime.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            armed: Mutex::new(Armed {
                fault: Fault::None,
                left: None,
            }),
            blob_gets: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            exchanges: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, &s).await;
                });
            }
        });
        Ok(Relay { addr, shared })
    }

    /// `http://127.0.0.1:PORT`: what the peer takes as its upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From the next blob `GET` on, `fault` applies: to every `GET` until changed, or
    /// to as many as the fault names itself (`CorruptOnce`: one, `Status5xx`: `count`).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.armed.lock().expect("relay lock") = Armed {
            fault,
            left: fault.own_budget(),
        };
    }

    /// `fault` applies to the next `times` blob `GET`s, then the relay passes bytes
    /// through again (`times` 0: from now on no fault).
    pub fn set_fault_times(&self, fault: Fault, times: u32) {
        *self.shared.armed.lock().expect("relay lock") = if times == 0 {
            Armed {
                fault: Fault::None,
                left: None,
            }
        } else {
            Armed {
                fault,
                left: Some(times),
            }
        };
    }

    /// The fault the next blob `GET` gets.
    pub fn fault(&self) -> Fault {
        self.shared.armed.lock().expect("relay lock").fault
    }

    /// Blob `GET`s received so far (refused ones included).
    pub fn blob_gets(&self) -> u64 {
        self.shared.blob_gets.load(Ordering::SeqCst)
    }

    /// Blob body bytes sent so far (what upstream cost, as seen by the peer).
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }

    /// Every exchange so far, in the order they ended (a stalled one when it stalled).
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.exchanges.lock().expect("relay lock").clone()
    }

    /// The exchanges, one line each, for a failure message.
    pub fn describe(&self) -> String {
        self.exchanges()
            .iter()
            .map(|e| {
                format!(
                    "  {} {} range={} -> {} body={} fault={:?}{}\n",
                    e.method,
                    e.target,
                    e.range.as_deref().unwrap_or("-"),
                    e.status,
                    e.body_bytes,
                    e.fault,
                    if e.cut { " (cut)" } else { "" }
                )
            })
            .collect()
    }
}

/// Request headers not forwarded (hop by hop, or set by the client itself).
const REQUEST_SKIP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Response headers not forwarded (the relay frames the body itself).
const RESPONSE_SKIP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "content-length",
];

/// One parsed request head.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head from `sock` (bytes already read in `buf`); `None` at EOF.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await? {
            0 => return Ok(None),
            n => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 << 10 {
            return Err(std::io::Error::other("request head over 64 KiB"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("/").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let req = Request {
        method,
        target,
        headers,
    };
    // A request body (none expected from a pulling peer) is read and dropped.
    let body_len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < body_len {
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await? {
            0 => return Ok(None),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..body_len);
    Ok(Some(req))
}

/// Serves one client connection, request after request.
async fn serve(mut sock: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await? {
        let blob_get = req.method == "GET" && req.target.contains("/blobs/sha256:");
        let fault = if blob_get {
            shared.blob_gets.fetch_add(1, Ordering::SeqCst);
            shared.take_fault()
        } else {
            Fault::None
        };
        let mut exchange = Exchange {
            method: req.method.clone(),
            target: req.target.clone(),
            range: req.header("range").map(str::to_owned),
            status: 0,
            body_bytes: 0,
            fault,
            cut: false,
        };
        if let Fault::Status5xx { .. } = fault {
            let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"relay: injected 503"}]}"#;
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(body).await?;
            exchange.status = 503;
            shared.record(exchange);
            continue;
        }
        let keep = relay_one(&mut sock, shared, &req, fault, blob_get, &mut exchange).await;
        shared.record(exchange);
        match keep? {
            Next::KeepAlive => {}
            Next::Close => return sock.shutdown().await,
            Next::Stall => {
                // Silent until the client gives up; whatever it sends is ignored.
                let mut sink = [0u8; 4096];
                while sock.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            Next::Reset => {
                // Let the bytes already written leave first: a reset discards the
                // send queue.
                tokio::time::sleep(Duration::from_millis(200)).await;
                sock.set_zero_linger()?;
                drop(sock);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What becomes of the connection after an answer.
enum Next {
    KeepAlive,
    Close,
    Stall,
    Reset,
}

/// Forwards `req` upstream and writes the answer to `sock` through `fault`.
async fn relay_one(
    sock: &mut TcpStream,
    shared: &Shared,
    req: &Request,
    fault: Fault,
    blob_get: bool,
    exchange: &mut Exchange,
) -> std::io::Result<Next> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut upstream = shared
        .client
        .request(method, format!("{}{}", shared.upstream, req.target));
    for (name, value) in &req.headers {
        if !REQUEST_SKIP.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            upstream = upstream.header(name.as_str(), value.as_str());
        }
    }
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            let body = format!(
                r#"{{"errors":[{{"code":"UNAVAILABLE","message":"relay: upstream unreachable: {}"}}]}}"#,
                e.to_string().replace('"', "'")
            );
            let head = format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(body.as_bytes()).await?;
            exchange.status = 502;
            return Ok(Next::KeepAlive);
        }
    };
    let status = resp.status();
    exchange.status = status.as_u16();
    let length: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // Where the body starts in the blob (a 206 says so in Content-Range).
    let start: u64 = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Relayed")
    );
    for (name, value) in resp.headers() {
        if RESPONSE_SKIP
            .iter()
            .any(|s| name.as_str().eq_ignore_ascii_case(s))
        {
            continue;
        }
        head += &format!(
            "{}: {}\r\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    let bodyless = req.method == "HEAD" || status.as_u16() == 204 || status.as_u16() == 304;
    let close = length.is_none() && !bodyless;
    if let Some(n) = length {
        head += &format!("content-length: {n}\r\n");
    }
    if close {
        head += "connection: close\r\n";
    }
    head += "\r\n";
    sock.write_all(head.as_bytes()).await?;
    if bodyless {
        return Ok(Next::KeepAlive);
    }
    let counted = |n: u64, exchange: &mut Exchange| {
        exchange.body_bytes += n;
        if blob_get {
            shared.body_bytes.fetch_add(n, Ordering::SeqCst);
        }
    };
    let began = Instant::now();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            exchange.cut = true;
            return Ok(Next::Close);
        };
        let mut chunk = chunk.to_vec();
        let at = start + exchange.body_bytes;
        match fault {
            Fault::CorruptOnce => chunk.iter_mut().for_each(|b| *b ^= 0xff),
            Fault::CorruptPiece { offset, len } => {
                let (lo, hi) = (offset.max(at), (offset + len).min(at + chunk.len() as u64));
                for i in lo..hi {
                    chunk[(i - at) as usize] ^= 0xff;
                }
            }
            Fault::Stall { after_bytes } | Fault::Reset { after_bytes } => {
                let room = after_bytes.saturating_sub(exchange.body_bytes);
                if (chunk.len() as u64) >= room {
                    let n = room as usize;
                    sock.write_all(&chunk[..n]).await?;
                    sock.flush().await?;
                    counted(n as u64, exchange);
                    exchange.cut = true;
                    return Ok(if matches!(fault, Fault::Stall { .. }) {
                        Next::Stall
                    } else {
                        Next::Reset
                    });
                }
            }
            _ => {}
        }
        if let Fault::Slow { bytes_per_sec } = fault {
            let step = (bytes_per_sec / 20).clamp(1024, 64 << 10) as usize;
            for part in chunk.chunks(step) {
                sock.write_all(part).await?;
                counted(part.len() as u64, exchange);
                let due = Duration::from_secs_f64(
                    exchange.body_bytes as f64 / bytes_per_sec.max(1) as f64,
                );
                tokio::time::sleep_until((began + due).into()).await;
            }
        } else {
            sock.write_all(&chunk).await?;
            counted(chunk.len() as u64, exchange);
        }
    }
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// How one `GET` of a blob ended, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    /// A 2xx and a body that ended normally: its SHA-256 (`sha256:<hex>`) and length.
    Complete {
        /// The status.
        status: u16,
        /// SHA-256 of the body.
        digest: String,
        /// Body length.
        len: u64,
    },
    /// A status other than 2xx: a refusal before any body byte.
    Refused {
        /// The status.
        status: u16,
        /// The error body.
        body: String,
    },
    /// A 2xx whose body broke after `received` bytes.
    Broken {
        /// The status.
        status: u16,
        /// Body bytes received before the break.
        received: u64,
        /// SHA-256 of those bytes (`sha256:<hex>`), to tell whether they were right.
        prefix: String,
        /// The error.
        error: String,
    },
    /// No answer, or no end of the body, within the limit.
    Hung {
        /// The status, if headers came.
        status: Option<u16>,
        /// Body bytes received by then.
        received: u64,
        /// SHA-256 of those bytes (`sha256:<hex>`).
        prefix: String,
    },
    /// The request failed before any status (connection refused or closed).
    NoResponse {
        /// The error.
        error: String,
    },
}

impl Pull {
    /// Whether this is the complete blob `digest` of `len` bytes.
    pub fn is_right(&self, digest: &str, len: u64) -> bool {
        matches!(self, Pull::Complete { digest: d, len: n, .. } if d == digest && *n == len)
    }

    /// Whether this is a clean failure: an error status before any body byte.
    pub fn is_clean_refusal(&self) -> bool {
        matches!(self, Pull::Refused { .. })
    }

    /// For a body that broke or hung: whether the bytes received before were the
    /// first bytes of `data` (None for other outcomes).
    pub fn prefix_right(&self, data: &[u8]) -> Option<bool> {
        let (received, prefix) = match self {
            Pull::Broken {
                received, prefix, ..
            }
            | Pull::Hung {
                received, prefix, ..
            } => (*received, prefix),
            _ => return None,
        };
        let n = usize::try_from(received).ok()?;
        Some(n <= data.len() && *prefix == sha256_hex(&data[..n]))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// GETs `url` and says how it ended ([`Pull`]); the whole exchange gets `limit`.
pub async fn pull(url: &str, limit: Duration) -> Pull {
    let received = AtomicU64::new(0);
    let status = Mutex::new(None::<u16>);
    let hasher = Mutex::new(sha2::Sha256::new());
    let prefix = |h: &Mutex<sha2::Sha256>| {
        format!(
            "sha256:{:x}",
            h.lock().expect("pull lock").clone().finalize()
        )
    };
    let attempt = async {
        let resp = match reqwest::Client::new().get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                return Pull::NoResponse {
                    error: format!("{e:#}"),
                };
            }
        };
        let code = resp.status().as_u16();
        *status.lock().expect("pull lock") = Some(code);
        if !resp.status().is_success() {
            return Pull::Refused {
                status: code,
                body: resp.text().await.unwrap_or_default(),
            };
        }
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    hasher.lock().expect("pull lock").update(&c);
                    received.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
                Err(e) => {
                    return Pull::Broken {
                        status: code,
                        received: received.load(Ordering::SeqCst),
                        prefix: prefix(&hasher),
                        error: format!("{e:?}"),
                    };
                }
            }
        }
        Pull::Complete {
            status: code,
            digest: prefix(&hasher),
            len: received.load(Ordering::SeqCst),
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(p) => p,
        Err(_) => Pull::Hung {
            status: *status.lock().expect("pull lock"),
            received: received.load(Ordering::SeqCst),
            prefix: prefix(&hasher),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::CountingUpstream;

    const REPO: &str = "relay/blob";
    const SIZE: usize = 3 << 20;

    async fn setup() -> (Relay, CountingUpstream, Arc<Vec<u8>>, String) {
        let (data, digest) = crate::blob(SIZE, 77);
        let up = CountingUpstream::start(REPO, &digest, data.clone(), Duration::ZERO)
            .await
            .unwrap();
        let relay = Relay::start(&up.url()).await.unwrap();
        (relay, up, data, digest)
    }

    fn blob_url(relay: &Relay, digest: &str) -> String {
        format!("{}/v2/{REPO}/blobs/{digest}", relay.url())
    }

    /// The body, or where it broke.
    async fn get_bytes(url: &str, range: Option<&str>) -> (u16, Vec<u8>, Option<String>) {
        let mut req = reqwest::Client::new().get(url);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let mut out = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(c) = body.next().await {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => return (status, out, Some(format!("{e:?}"))),
            }
        }
        (status, out, None)
    }

    #[tokio::test]
    async fn passes_blobs_heads_and_ranges_through_and_counts() {
        let (relay, up, data, digest) = setup().await;
        let url = blob_url(&relay, &digest);
        assert!(
            pull(&url, Duration::from_secs(10))
                .await
                .is_right(&digest, SIZE as u64)
        );
        let head = reqwest::Client::new().head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            SIZE.to_string()
        );
        let (status, bytes, err) = get_bytes(&url, Some("bytes=1000-")).await;
        assert_eq!((status, err), (206, None));
        assert_eq!(bytes, data[1000..]);
        let missing = reqwest::get(format!("{}/v2/{REPO}/blobs/sha256:00", relay.url()))
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(relay.blob_gets(), 3);
        assert_eq!(relay.body_bytes(), (2 * SIZE - 1000) as u64);
        assert_eq!(up.bytes(), relay.body_bytes());
        let ex = relay.exchanges();
        assert_eq!(ex[2].range.as_deref(), Some("bytes=1000-"));
    }

    #[tokio::test]
    async fn corrupt_piece_flips_exactly_the_range_in_blob_coordinates() {
        let (relay, _up, data, digest) = setup().await;
        let url = blob_url(&relay, &digest);
        relay.set_fault(Fault::CorruptPiece {
            offset: 1 << 20,
            len: 100,
        });
        let (status, bytes, err) = get_bytes(&url, None).await;
        assert_eq!((status, err, bytes.len()), (200, None, SIZE));
        let diff: Vec<usize> = (0..SIZE).filter(|&i| bytes[i] != data[i]).collect();
        assert_eq!(diff, ((1 << 20)..(1 << 20) + 100).collect::<Vec<_>>());
        // A ranged answer starting inside the range is corrupted from its first byte.
        let (status, bytes, _) = get_bytes(&url, Some(&format!("bytes={}-", (1 << 20) + 50))).await;
        assert_eq!(status, 206);
        let base = (1 << 20) + 50;
        let diff: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i] != data[base + i])
            .collect();
        assert_eq!(diff, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn corrupt_once_then_right_and_5xx_burst_then_right() {
        let (relay, _up, data, digest) = setup().await;
        let url = blob_url(&relay, &digest);
        relay.set_fault(Fault::CorruptOnce);
        let (_, bytes, _) = get_bytes(&url, None).await;
        assert_eq!(bytes.len(), SIZE);
        assert!(bytes.iter().zip(data.iter()).all(|(a, b)| a != b));
        assert!(
            pull(&url, Duration::from_secs(10))
                .await
                .is_right(&digest, SIZE as u64)
        );
        assert_eq!(relay.fault(), Fault::None);

        relay.set_fault(Fault::Status5xx { count: 2 });
        for _ in 0..2 {
            let p = pull(&url, Duration::from_secs(10)).await;
            assert!(matches!(p, Pull::Refused { status: 503, .. }), "{p:?}");
        }
        // HEADs are never faulted.
        relay.set_fault(Fault::Status5xx { count: 1 });
        let head = reqwest::Client::new().head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert!(pull(&url, Duration::from_secs(10)).await.is_clean_refusal());
        assert!(
            pull(&url, Duration::from_secs(10))
                .await
                .is_right(&digest, SIZE as u64)
        );
    }

    #[tokio::test]
    async fn stall_goes_silent_with_the_socket_open_and_reset_breaks_the_body() {
        let (relay, _up, data, digest) = setup().await;
        let url = blob_url(&relay, &digest);
        relay.set_fault_times(
            Fault::Stall {
                after_bytes: 100_000,
            },
            1,
        );
        let p = pull(&url, Duration::from_secs(1)).await;
        assert!(
            matches!(
                p,
                Pull::Hung {
                    status: Some(200),
                    received: 100_000,
                    ..
                }
            ),
            "{p:?}"
        );
        assert_eq!(p.prefix_right(&data), Some(true));
        relay.set_fault(Fault::Reset {
            after_bytes: 200_000,
        });
        let p = pull(&url, Duration::from_secs(10)).await;
        assert!(
            matches!(
                p,
                Pull::Broken {
                    status: 200,
                    received: 200_000,
                    ..
                }
            ),
            "{p:?}"
        );
        assert_eq!(p.prefix_right(&data), Some(true));
        assert_eq!(relay.body_bytes(), 300_000);
        relay.set_fault(Fault::None);
        assert!(
            pull(&url, Duration::from_secs(10))
                .await
                .is_right(&digest, SIZE as u64)
        );
    }

    #[tokio::test]
    async fn slow_sends_at_the_rate() {
        let (relay, _up, _data, digest) = setup().await;
        relay.set_fault(Fault::Slow {
            bytes_per_sec: 4 << 20,
        });
        let started = Instant::now();
        let p = pull(&blob_url(&relay, &digest), Duration::from_secs(10)).await;
        assert!(p.is_right(&digest, SIZE as u64), "{p:?}");
        let took = started.elapsed();
        // 3 MiB at 4 MiB/s: 0.75 s.
        assert!(took >= Duration::from_millis(700), "{took:?}");
    }
}
