//! An upstream registry of a few blobs over plain HTTP on 127.0.0.1 that counts what
//! it serves: `HEAD` and `GET /v2/<repo>/blobs/<digest>` (with `Range: bytes=N-`),
//! every other path 404. It can pause after every 256 KiB so a transfer takes long enough
//! to disturb it mid-way (kill a peer, restart the scheduler).
//!
//! Used where the assertion is about bytes served ("upstream served one copy"); tests
//! about registry behaviour use the real `docker-registry` ([`crate::registry`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counters of a [`CountingUpstream`].
#[derive(Debug, Default)]
pub struct Served {
    /// `GET`s of the blob.
    pub gets: AtomicU64,
    /// `HEAD`s of the blob.
    pub heads: AtomicU64,
    /// Body bytes sent.
    pub bytes: AtomicU64,
    /// `GET`s of the blob refused (see [`CountingUpstream::refuse_gets`]).
    pub refused: AtomicU64,
    /// Body bytes sent, by digest.
    pub by_digest: Mutex<HashMap<String, u64>>,
}

/// How a [`CountingUpstream`] answers the `GET`s it refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status, e.g. 404 or 401.
    pub status: u16,
    /// A `WWW-Authenticate` challenge to send with it.
    pub www_authenticate: Option<String>,
}

/// The refusal in force, shared with the connection tasks.
type Refusals = Arc<Mutex<Option<Refusal>>>;

/// A running counting upstream; stops with the runtime that started it.
#[derive(Debug, Clone)]
pub struct CountingUpstream {
    addr: SocketAddr,
    served: Arc<Served>,
    refusal: Refusals,
}

impl CountingUpstream {
    /// Serves `data` as `/v2/<repo>/blobs/<digest>`, pausing `pause` after every
    /// 256 KiB of a body (zero: full speed). Must be called within a tokio runtime.
    pub async fn start(
        repo: &str,
        digest: &str,
        data: Arc<Vec<u8>>,
        pause: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_blobs(repo, vec![(data, digest.to_owned())], pause).await
    }

    /// [`start`](Self::start) with several blobs of `repo`, as `(data, digest)` (the
    /// layers of an image); the counters add them all up ([`Served::by_digest`] keeps
    /// each blob's bytes).
    pub async fn start_blobs(
        repo: &str,
        blobs: Vec<(Arc<Vec<u8>>, String)>,
        pause: Duration,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(Served::default());
        let refusal = Refusals::default();
        let blobs: Arc<HashMap<String, Blob>> = Arc::new(
            blobs
                .into_iter()
                .map(|(data, digest)| (format!("/v2/{repo}/blobs/{digest}"), Blob { digest, data }))
                .collect(),
        );
        let (s, r) = (served.clone(), refusal.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (blobs, s, r) = (blobs.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = answer(sock, &blobs, &s, &r, pause).await;
                });
            }
        });
        Ok(CountingUpstream {
            addr,
            served,
            refusal,
        })
    }

    /// From now on every `GET` of the blob is answered with `refusal` (no body but an
    /// OCI error), `HEAD`s still with the blob's headers; `None` serves the blob again.
    pub fn refuse_gets(&self, refusal: Option<Refusal>) {
        *self.refusal.lock().expect("refusal lock") = refusal;
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counters.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// Body bytes sent so far.
    pub fn bytes(&self) -> u64 {
        self.served.bytes.load(Ordering::SeqCst)
    }
}

/// One blob a [`CountingUpstream`] serves (by its path).
struct Blob {
    digest: String,
    data: Arc<Vec<u8>>,
}

async fn answer(
    mut sock: TcpStream,
    blobs: &HashMap<String, Blob>,
    served: &Served,
    refusal: &Mutex<Option<Refusal>>,
    pause: Duration,
) -> std::io::Result<()> {
    loop {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await? {
                0 => return Ok(()),
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let mut first = text.lines().next().unwrap_or("").split(' ');
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let blob = blobs.get(target.split('?').next().unwrap_or(""));
        let Some(blob) = blob.filter(|_| method == "GET" || method == "HEAD") else {
            sock.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        };
        let (digest, data) = (blob.digest.as_str(), &blob.data[..]);
        let refused = refusal.lock().expect("refusal lock").clone();
        if let (Some(r), "GET") = (refused, method) {
            served.refused.fetch_add(1, Ordering::SeqCst);
            let body = format!(
                r#"{{"errors":[{{"code":"REFUSED","message":"counting upstream refuses GETs with {}"}}]}}"#,
                r.status
            );
            let challenge = r
                .www_authenticate
                .map(|c| format!("www-authenticate: {c}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 {} Refused\r\ncontent-type: application/json\r\n{challenge}content-length: {}\r\n\r\n",
                r.status,
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(body.as_bytes()).await?;
            continue;
        }
        let start: usize = text
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("range: bytes=")
                    .and_then(|r| r.trim().trim_end_matches('-').parse().ok())
            })
            .unwrap_or(0)
            .min(data.len());
        let total = data.len();
        let status = if start > 0 {
            format!(
                "206 Partial Content\r\ncontent-range: bytes {start}-{}/{total}",
                total.saturating_sub(1)
            )
        } else {
            "200 OK".into()
        };
        let header = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ndocker-content-digest: {digest}\r\n\
             content-type: application/octet-stream\r\n\r\n",
            total - start
        );
        sock.write_all(header.as_bytes()).await?;
        if method == "HEAD" {
            served.heads.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        served.gets.fetch_add(1, Ordering::SeqCst);
        for chunk in data[start..].chunks(256 << 10) {
            sock.write_all(chunk).await?;
            served.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            *served
                .by_digest
                .lock()
                .expect("counter lock")
                .entry(digest.to_owned())
                .or_default() += chunk.len() as u64;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}
