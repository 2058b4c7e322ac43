//! Mutual TLS for the piece protocol, and the QUIC endpoint that uses it.
//!
//! Every peer presents a certificate issued by the cluster CA and accepts only peers
//! that do, in both directions: the server requires a client certificate chained to the
//! CA ([`rustls::server::WebPkiClientVerifier`]), the client verifies the server against
//! the same CA. ALPN is [`ALPN`] (`shoal-piece/3`), TLS 1.3 only (QUIC), ring crypto.
//!
//! Server names: peers are addressed by IP, and pod IPs are not known when certificates
//! are issued. So every peer certificate carries the fixed DNS name [`SERVER_NAME`]
//! (`shoal-peer`) and clients connect with that name; what authenticates a peer is the
//! chain to the cluster CA.
//!
//! Identity: a *node certificate* ([`Leaf::node`], `shoal-peer tls issue --node NAME`)
//! names its node in the subject's common name; the peer then uses that name as its peer
//! id, and the scheduler accepts messages about that id only over a connection that
//! presented this certificate. The *shared certificate* of `shoal-peer tls init` has the
//! common name `shoal-peer` and names no node ([`node_identity`] is `None`): a scheduler
//! accepts it only when told to (`--allow-shared-identity`). The scheduler's serving
//! certificate ([`Leaf::scheduler`]) is for server authentication only.
//!
//! Files ([`init_dir`], [`issue_dir`], [`load_dir`]): `ca.crt`, `ca.key` (only needed to
//! issue), `tls.crt`, `tls.key`, PEM. Key material is never logged.
//!
//! Non-goals: revocation (certificates are short-lived where it matters: see
//! docs/security.md), hostname-based authorisation.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The ALPN protocol of the piece protocol. Its version is the piece rule
/// ([`shoal_proto::piece::PIECE_RULE`]): a piece index means other bytes under
/// another rule, so peers of two rules fail the handshake instead of trading
/// pieces that would not verify.
pub const ALPN: &[u8] = b"shoal-piece/3";
const _: () = assert!(
    shoal_proto::piece::PIECE_RULE == 3,
    "the ALPN names the piece rule: bump both"
);

/// The DNS name in every peer certificate, and the server name clients connect with.
pub const SERVER_NAME: &str = "shoal-peer";

/// Receive window of one stream: one 16 MiB piece in flight without stalling.
const STREAM_WINDOW: u32 = 16 << 20;
/// Receive (and send) window of one connection: several pieces in flight.
const CONNECTION_WINDOW: u32 = 64 << 20;

/// The largest UDP payload of a QUIC packet between peers. quinn's path-MTU search
/// (RFC 8899 probes, [`quinn::MtuDiscoveryConfig`]) climbs from 1,200 bytes to it: on a
/// node network of 1,500-byte frames it settles just under them, on one with jumbo frames
/// (9,000, as many clouds' node networks) at this bound, where a piece costs about 1 %
/// of headers instead of 5.5 % (`docs/benchmarks.md`, "Framing"). quinn's own default
/// stops at 1,452 whatever the network. Not more than this: quinn hands the kernel up
/// to 10 packets in one GSO send, which must fit one 64 KiB UDP datagram (a send that
/// does not is dropped whole, and the transfer crawls on retransmissions).
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Why TLS material could not be made, read or used.
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
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file (or PEM text) holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Parse {
        /// The file, or what the PEM text was.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of `ca.crt` and `ca.key` exists; refusing to replace the CA.
    #[error("{0} exists without its pair; refusing to create a new CA over it")]
    PartialCa(PathBuf),
    /// A certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls or quinn refused the configuration.
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// PEM texts of a cluster CA and a peer certificate it issued.
pub struct Pki {
    /// The CA certificate (`ca.crt`).
    pub ca_cert_pem: String,
    /// The CA key (`ca.key`).
    pub ca_key_pem: String,
    /// The peer certificate (`tls.crt`).
    pub cert_pem: String,
    /// The peer key (`tls.key`).
    pub key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pki { .. }") // never print key material
    }
}

/// What a leaf certificate issued by the cluster CA is for.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The subject's common name: the node's name for a node certificate.
    pub common_name: String,
    /// DNS names (and IP addresses, written as text) the certificate is valid for.
    pub names: Vec<String>,
    /// May authenticate a client (peers: yes; the scheduler: no).
    pub client_auth: bool,
    /// Valid from this time (default: a day ago, for clock skew).
    pub not_before: SystemTime,
    /// Valid until this time.
    pub not_after: SystemTime,
}

impl Leaf {
    /// The shared peer certificate: names no node. Valid for 5 years.
    pub fn shared() -> Leaf {
        Leaf::node(SERVER_NAME, Duration::from_secs(5 * 365 * 86_400))
    }

    /// A node certificate naming `node`, valid for `lifetime`; also valid for
    /// [`SERVER_NAME`], the name peers dial each other with.
    pub fn node(node: &str, lifetime: Duration) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            common_name: node.to_owned(),
            names: vec![SERVER_NAME.to_owned()],
            client_auth: true,
            not_before: now - Duration::from_secs(86_400),
            not_after: now + lifetime,
        }
    }

    /// The scheduler's serving certificate for `names` (DNS names or IPs).
    pub fn scheduler(names: Vec<String>, lifetime: Duration) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            common_name: "shoal-scheduler".to_owned(),
            names,
            client_auth: false,
            not_before: now - Duration::from_secs(86_400),
            not_after: now + lifetime,
        }
    }

    /// Signs this leaf with the CA (certificate and key PEM); returns the
    /// certificate and key PEM.
    pub fn sign(&self, ca_cert_pem: &str, ca_key_pem: &str) -> Result<(String, String), TlsError> {
        let ca_key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, &ca_key)?;
        let key = KeyPair::generate()?;
        // An IPv6 address given as a URL writes it (`[fd00::1]`) is the address.
        let names = self.names.iter().map(|n| {
            n.strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .filter(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
                .unwrap_or(n)
                .to_owned()
        });
        let mut params = CertificateParams::new(names.collect::<Vec<_>>())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.common_name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if self.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The node a certificate (PEM, first certificate) names, or `None` for the shared
/// peer certificate (common name [`SERVER_NAME`]) and certificates without a common
/// name.
pub fn node_identity(cert_pem: &[u8]) -> Result<Option<String>, TlsError> {
    let certs = parse_certs(cert_pem, "certificate")?;
    node_of(&certs[0])
}

/// [`node_identity`] of a DER certificate, such as the one a QUIC caller presented
/// (the server uses it to name who is asking).
pub fn node_of(der: &[u8]) -> Result<Option<String>, TlsError> {
    let parse = |reason: String| TlsError::Parse {
        what: "certificate".into(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .map(|cn| cn.as_str().map(str::to_owned))
        .transpose()
        .map_err(|e| parse(e.to_string()))?;
    Ok(cn.filter(|cn| cn != SERVER_NAME && !cn.is_empty()))
}

/// The node the other side of `conn` is, by its certificate; `shared` for the
/// shared certificate (and for a certificate that cannot be read, which the
/// handshake would not have accepted).
pub fn caller_node(conn: &quinn::Connection) -> String {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|c| node_of(c).ok()))
        .flatten()
        .unwrap_or_else(|| "shared".to_owned())
}

impl Pki {
    /// A new CA and a peer certificate, or (given `ca` as certificate and key PEM) a new
    /// peer certificate from an existing CA.
    pub fn issue(ca: Option<(&str, &str)>) -> Result<Pki, TlsError> {
        let year = current_year();
        let (ca_cert_pem, ca_key) = match ca {
            Some((cert, key)) => (cert.to_owned(), KeyPair::from_pem(key)?),
            None => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                params.distinguished_name = rcgen::DistinguishedName::new();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "Shoal cluster CA");
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
                params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
                (params.self_signed(&key)?.pem(), key)
            }
        };
        let ca_key_pem = ca_key.serialize_pem();
        let (cert_pem, key_pem) = Leaf::shared().sign(&ca_cert_pem, &ca_key_pem)?;
        Ok(Pki {
            ca_cert_pem,
            ca_key_pem,
            cert_pem,
            key_pem,
        })
    }
}

/// Client and server QUIC configurations for mutual TLS within one cluster CA.
#[derive(Clone)]
pub struct PeerTls {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { .. }")
    }
}

impl PeerTls {
    /// Builds both configurations from PEM texts: the CA certificate(s) to trust, this
    /// peer's certificate chain and its private key.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<PeerTls, TlsError> {
        build(
            parse_certs(ca_pem, "CA certificate")?,
            parse_certs(cert_pem, "certificate")?,
            parse_key(key_pem, "key")?,
        )
    }

    /// The server configuration: requires a client certificate from the CA.
    pub fn server_config(&self) -> quinn::ServerConfig {
        self.server.clone()
    }

    /// The client configuration: presents this peer's certificate, verifies the server.
    pub fn client_config(&self) -> quinn::ClientConfig {
        self.client.clone()
    }
}

/// Writes a new cluster CA (`ca.crt`, `ca.key`) into `dir` unless both exist, then a
/// peer certificate and key signed by it (`tls.crt`, `tls.key`). Keys are mode 0600.
pub fn init_dir(dir: &Path) -> Result<Pki, TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let pki = match (ca_crt.exists(), ca_key.exists()) {
        (true, true) => {
            let cert = read_string(&ca_crt)?;
            let key = read_string(&ca_key)?;
            // Check each file first so that an error names the one that is wrong.
            parse_certs(cert.as_bytes(), &ca_crt.display().to_string())?;
            KeyPair::from_pem(&key).map_err(|e| TlsError::Parse {
                what: ca_key.display().to_string(),
                reason: e.to_string(),
            })?;
            Pki::issue(Some((&cert, &key)))?
        }
        (false, false) => {
            let pki = Pki::issue(None)?;
            write(&ca_key, &pki.ca_key_pem, true)?;
            write(&ca_crt, &pki.ca_cert_pem, false)?;
            pki
        }
        (true, false) => return Err(TlsError::PartialCa(ca_crt)),
        (false, true) => return Err(TlsError::PartialCa(ca_key)),
    };
    write(&dir.join("tls.key"), &pki.key_pem, true)?;
    write(&dir.join("tls.crt"), &pki.cert_pem, false)?;
    Ok(pki)
}

/// Issues `leaf` from the CA in `ca_dir` (`ca.crt`, `ca.key`) into `out` (created):
/// `tls.crt`, `tls.key` (mode 0600) and a copy of `ca.crt`. The key is made here and
/// never leaves `out`.
pub fn issue_dir(ca_dir: &Path, out: &Path, leaf: &Leaf) -> Result<(), TlsError> {
    let ca_crt = read_string(&ca_dir.join("ca.crt"))?;
    let ca_key = read_string(&ca_dir.join("ca.key"))?;
    let (cert, key) = leaf.sign(&ca_crt, &ca_key)?;
    fs::create_dir_all(out).map_err(|source| TlsError::Write {
        path: out.to_owned(),
        source,
    })?;
    write(&out.join("tls.key"), &key, true)?;
    write(&out.join("tls.crt"), &cert, false)?;
    write(&out.join("ca.crt"), &ca_crt, false)
}

/// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir`; errors name the file.
pub fn load_dir(dir: &Path) -> Result<PeerTls, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path)
            .map(|bytes| (bytes, path.display().to_string()))
            .map_err(|source| TlsError::Read { path, source })
    };
    let (ca, ca_name) = read("ca.crt")?;
    let (cert, cert_name) = read("tls.crt")?;
    let (key, key_name) = read("tls.key")?;
    build(
        parse_certs(&ca, &ca_name)?,
        parse_certs(&cert, &cert_name)?,
        parse_key(&key, &key_name)?,
    )
}

/// A fresh CA and peer certificate in memory, for tests and local runs.
pub fn ephemeral() -> Result<PeerTls, TlsError> {
    let pki = Pki::issue(None)?;
    PeerTls::from_pem(
        pki.ca_cert_pem.as_bytes(),
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
    )
}

/// A QUIC endpoint bound to `listen` that serves with `tls` and connects with it.
pub fn endpoint(listen: SocketAddr, tls: &PeerTls) -> io::Result<Endpoint> {
    endpoint_on(std::net::UdpSocket::bind(listen)?, tls)
}

/// As [`endpoint`], on a UDP socket already bound (a node started with its sockets,
/// [`crate::daemon::Node::start`]). Needs a tokio runtime.
pub fn endpoint_on(socket: std::net::UdpSocket, tls: &PeerTls) -> io::Result<Endpoint> {
    socket.set_nonblocking(true)?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut endpoint = Endpoint::new(
        config,
        Some(tls.server_config()),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(tls.client_config());
    Ok(endpoint)
}

/// `tls` for a gRPC connection to `url`, with the server name an IP-literal URL needs:
/// tonic takes it from the URL's host, which keeps an IPv6 literal's brackets
/// (`[fd00::1]`), and that is no valid name; the address itself is set instead, so the
/// server's certificate must carry it as an IP SAN.
pub fn grpc_tls_for(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
) -> tonic::transport::ClientTlsConfig {
    match shoal_proto::net::url_ip_host(url) {
        Some(ip) => tls.domain_name(ip.to_string()),
        None => tls,
    }
}

/// Transport settings for bulk transfer on a LAN: windows large enough that a 16 MiB
/// piece, and several at once, flow without waiting for window updates, and packets as
/// large as the path carries, up to [`MAX_UDP_PAYLOAD`].
fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.max_concurrent_bidi_streams(VarInt::from_u32(256));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_idle_timeout(Some(VarInt::from_u32(30_000).into()));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

fn build(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<PeerTls, TlsError> {
    let config = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| config(&e))?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| config(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config(&e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| config(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| config(&e))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config(&e))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| config(&e))?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let transport = transport();
    let server = QuicServerConfig::try_from(server).map_err(|e| config(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    let client = QuicClientConfig::try_from(client).map_err(|e| config(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok(PeerTls { server, client })
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let parse = |reason: String| TlsError::Parse {
        what: what.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse("no PEM certificate".into()));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The error type describes the PEM structure only, never the key bytes.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Parse {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// The current UTC year, close enough for certificate validity bounds.
fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    1970 + (secs / 31_556_952) as i32
}
