//! Mutual TLS on the scheduler's gRPC port, and who the caller is.
//!
//! - [`TlsFiles`]: the scheduler's serving certificate (`tls.crt`, `tls.key`) and the
//!   cluster CA (`ca.crt`) that every client certificate must chain to, read from one
//!   directory. The files are checked at every new connection and re-read when one of
//!   them changed on disk (a rotated Secret), without a restart; a broken new set is
//!   logged and the last good one stays in force.
//! - [`incoming`]: accepted TCP connections, TLS handshakes run concurrently with a
//!   deadline and a cap on handshakes in flight, yielding authenticated streams for
//!   tonic (which then exposes the client's certificates on every request).
//! - [`Caller`]: the identity in a client certificate. A node certificate names its
//!   node in the subject's common name; the shared peer certificate (common name
//!   `shoal-peer`) names none.
//!
//! Non-goals: revocation lists, certificate issuance (`shoal-peer tls issue`, or
//! cert-manager).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

/// Common name of the shared peer certificate, which names no node.
pub const SHARED_COMMON_NAME: &str = "shoal-peer";

/// A TLS handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in flight at most; past that, new connections wait in the
/// kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("building the TLS configuration from {dir}: {reason}")]
    Config {
        /// The directory.
        dir: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// When each file was last changed, to notice rotation.
type Stamp = Vec<(SystemTime, u64)>;

/// The serving certificate, key and client CA in one directory, reloaded when
/// they change.
pub struct TlsFiles {
    dir: PathBuf,
    clients: ClientAuth,
    current: Mutex<(Stamp, Arc<rustls::ServerConfig>)>,
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// One chaining to `ca.crt` (the gRPC port); ALPN `h2`.
    Required,
    /// None (the operator API, whose writes need a token); ALPN `h2`, `http/1.1`.
    None,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("dir", &self.dir).finish()
    }
}

const FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

impl TlsFiles {
    /// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir`; errors name the file.
    /// Clients must present a certificate from `ca.crt`.
    pub fn load(dir: &Path) -> Result<TlsFiles, TlsError> {
        Self::load_for(dir, ClientAuth::Required)
    }

    /// [`load`](Self::load), with `clients` saying whether clients need a certificate.
    pub fn load_for(dir: &Path, clients: ClientAuth) -> Result<TlsFiles, TlsError> {
        let stamp = stamp(dir);
        let config = build(dir, clients)?;
        Ok(TlsFiles {
            dir: dir.to_owned(),
            clients,
            current: Mutex::new((stamp, config)),
        })
    }

    /// The configuration in force, re-read first if a file changed.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let now = stamp(&self.dir);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != now {
            match build(&self.dir, self.clients) {
                Ok(config) => {
                    info!(tls.dir = %self.dir.display(), "TLS certificate or CA changed on disk; reloaded");
                    *current = (now, config);
                }
                Err(e) => {
                    // Keep serving with the last good set; try again next time.
                    warn!(error = %e, "TLS files changed but cannot be used; keeping the previous ones");
                }
            }
        }
        current.1.clone()
    }
}

fn stamp(dir: &Path) -> Stamp {
    FILES
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                .unwrap_or((SystemTime::UNIX_EPOCH, 0))
        })
        .collect()
}

fn build(dir: &Path, clients: ClientAuth) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path)
            .map(|b| (b, path.clone()))
            .map_err(|source| TlsError::Read { path, source })
    };
    let (ca, ca_path) = read("ca.crt")?;
    let (cert, cert_path) = read("tls.crt")?;
    let (key, key_path) = read("tls.key")?;
    let certs = |pem: &[u8], path: PathBuf| {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Parse {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Parse {
                path,
                reason: "no PEM certificate".into(),
            });
        }
        Ok(certs)
    };
    let ca = certs(&ca, ca_path)?;
    let chain = certs(&cert, cert_path)?;
    // The error describes the PEM structure only, never the key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Parse {
        path: key_path,
        reason: e.to_string(),
    })?;
    let config = |e: &dyn std::fmt::Display| TlsError::Config {
        dir: dir.to_owned(),
        reason: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| config(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| config(&e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config(&e))?;
    let mut server = match clients {
        ClientAuth::Required => builder.with_client_cert_verifier(verifier),
        ClientAuth::None => builder.with_no_client_auth(),
    }
    .with_single_cert(chain, key)
    .map_err(|e| config(&e))?;
    server.alpn_protocols = match clients {
        ClientAuth::Required => vec![b"h2".to_vec()],
        ClientAuth::None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(server))
}

/// Authenticated connections from `listener`: each accepted connection's
/// handshake runs in its own task (a slow client holds up nobody), with
/// a 10 s limit (`HANDSHAKE_TIMEOUT`) and at most 256 at once
/// (`MAX_HANDSHAKES`). A failed
/// handshake (no certificate, another CA, an expired certificate, plain text)
/// is dropped and counted by `on_refused`.
pub fn incoming(
    listener: TcpListener,
    files: Arc<TlsFiles>,
    on_refused: Arc<dyn Fn() + Send + Sync>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    use tokio_stream::StreamExt as _;
    ReceiverStream::new(accept(listener, files, on_refused)).map(|(stream, _)| Ok(stream))
}

/// The connections of [`incoming`] with their addresses, as a channel.
fn accept(
    listener: TcpListener,
    files: Arc<TlsFiles>,
    on_refused: Arc<dyn Fn() + Send + Sync>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: back off briefly, keep serving.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(files.config());
            let (tx, on_refused) = (tx.clone(), on_refused.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, addr)).await;
                    }
                    Ok(Err(e)) => {
                        on_refused();
                        debug!(peer.addr = %addr, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        on_refused();
                        debug!(peer.addr = %addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// A TLS listener for `axum::serve` (the operator API over TLS): the
/// connections of [`incoming`], handshakes done.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local", &self.local)
            .finish()
    }
}

impl TlsListener {
    /// Serves TLS with `files` on `listener`; refused handshakes call `on_refused`.
    pub fn new(
        listener: TcpListener,
        files: Arc<TlsFiles>,
        on_refused: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            connections: accept(listener, files, on_refused),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(c) => c,
            // The accept loop ended (it does not, while we hold the receiver).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Who is calling, as far as the transport can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plain text (development switch): anyone.
    Anonymous,
    /// The shared peer certificate: some peer of the cluster, not which one.
    SharedPeer,
    /// A node certificate naming this node.
    Node(String),
}

impl Caller {
    /// The caller presenting `certs` (end-entity first), already verified
    /// against the cluster CA by the handshake.
    pub fn from_certs(certs: &[CertificateDer<'_>]) -> Result<Caller, String> {
        let first = certs
            .first()
            .ok_or_else(|| "no client certificate".to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(first)
            .map_err(|e| format!("unreadable client certificate: {e}"))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        Ok(match cn {
            "" => return Err("the client certificate has no common name".into()),
            SHARED_COMMON_NAME => Caller::SharedPeer,
            name => Caller::Node(name.to_owned()),
        })
    }
}
