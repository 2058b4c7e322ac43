//! Node certificates from the scheduler's issuer (`--identity token-review`).
//!
//! At start ([`ensure`]), unless `--peer-tls-dir` already holds a certificate for this
//! node, with its key, that has at least a third of its life left, the peer makes a new
//! key here (it never leaves the node), sends a CSR for its node name with the pod's
//! projected ServiceAccount token (`--sa-token-file`, read at every request: kubelet
//! rotates it) to the issuer (`--issuer-url`, server-only TLS verified with
//! `--issuer-ca-file`), and writes `tls.key` (mode 0600), `tls.crt` and `ca.crt` into the
//! directory, each as a temporary file renamed over the old one. A refusal (the token,
//! the node) ends the start with the issuer's status; an unreachable issuer is retried
//! with backoff until it answers or the node is stopped.
//!
//! Then [`renew`] runs in the background: at two thirds of the certificate's life it
//! requests a new one the same way (retrying, whatever the error, while the current one
//! is still valid) and nudges the TLS watch (`tls_reload.rs`), which swaps the QUIC
//! configurations; the scheduler link reads the files at its next (re)connection, and
//! the session it has open stays open.
//!
//! Never logged: the token, the key.
//!
//! Non-goals: talking to the Kubernetes API (the scheduler does), certificates for
//! anything but this node.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use shoal_proto::limits::MAX_ISSUER_MESSAGE;
use shoal_proto::v1;
use shoal_proto::v1::certificate_issuer_client::CertificateIssuerClient;
use tokio::sync::Notify;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::{info, warn};

use super::config::Issuance;

/// First retry delay after a failed request; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("{0} holds no token")]
    NoToken(PathBuf),
    /// The issuer could not be reached (retried).
    #[error("cannot reach the certificate issuer at {url}: {reason}")]
    Connect {
        /// `--issuer-url`.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The issuer answered with an error status.
    #[error("the certificate issuer refused: {:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    /// The certificate issued is not for this node's key (or is unreadable).
    #[error("the certificate issued is unusable: {0}")]
    Answer(String),
    /// The key or CSR could not be made.
    #[error("making the key or the CSR: {0}")]
    Key(#[from] rcgen::Error),
}

impl IssuanceError {
    /// Whether trying again later may succeed: the issuer was unreachable, busy or could
    /// not ask the Kubernetes API. A refusal of the token or the node is final.
    pub fn retry(&self) -> bool {
        use tonic::Code::*;
        match self {
            IssuanceError::Connect { .. } | IssuanceError::Read { .. } => true,
            IssuanceError::NoToken(_) => true,
            IssuanceError::Refused(s) => matches!(
                s.code(),
                Unavailable | ResourceExhausted | DeadlineExceeded | Unknown | Internal | Cancelled
            ),
            IssuanceError::Write { .. } | IssuanceError::Answer(_) | IssuanceError::Key(_) => false,
        }
    }
}

/// A certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not before.
    pub not_before: SystemTime,
    /// Not after.
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew: two thirds into the certificate's life.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// The validity of the certificate in `dir` if it is usable for `node`: `tls.crt` names
/// `node`, `tls.key` is its key, `ca.crt` is there. Blocking.
pub fn current(dir: &Path, node: &str) -> Option<Validity> {
    let cert = std::fs::read(dir.join("tls.crt")).ok()?;
    let key = std::fs::read_to_string(dir.join("tls.key")).ok()?;
    std::fs::metadata(dir.join("ca.crt")).ok()?;
    let der = CertificateDer::pem_slice_iter(&cert).next()?.ok()?;
    let key = KeyPair::from_pem(&key).ok()?;
    check_certificate(&der, node, &key).ok()
}

/// Checks that `der` names `node` and is for `key`; its validity.
fn check_certificate(der: &[u8], node: &str, key: &KeyPair) -> Result<Validity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    if cn != node {
        return Err(format!("it names {cn:?}, not this node {node:?}"));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("it is not for this node's key".into());
    }
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok(Validity {
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
    })
}

/// Makes a key, asks the issuer for a certificate, and writes the three files into `dir`.
pub async fn request(issuance: &Issuance, dir: &Path) -> Result<Validity, IssuanceError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| IssuanceError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let token = String::from_utf8_lossy(&read(&issuance.token_file)?)
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(IssuanceError::NoToken(issuance.token_file.clone()));
    }
    let ca = read(&issuance.issuer_ca_file)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, issuance.node_name.as_str());
    let csr = params.serialize_request(&key)?;

    let connect = |reason: String| IssuanceError::Connect {
        url: issuance.issuer_url.clone(),
        reason,
    };
    let tls = crate::tls::grpc_tls_for(
        &issuance.issuer_url,
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
    );
    let channel = Endpoint::from_shared(issuance.issuer_url.clone())
        .map_err(|e| connect(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| connect(format!("{e:?}")))?;
    let mut client = CertificateIssuerClient::new(channel)
        .max_decoding_message_size(MAX_ISSUER_MESSAGE)
        .max_encoding_message_size(MAX_ISSUER_MESSAGE);
    let answer = client
        .issue(v1::IssueRequest {
            csr_der: csr.der().to_vec(),
            node_name: issuance.node_name.clone(),
            token,
        })
        .await
        .map_err(IssuanceError::Refused)?
        .into_inner();

    let answer_error = |e: String| IssuanceError::Answer(e);
    let der = CertificateDer::pem_slice_iter(answer.certificate_chain_pem.as_bytes())
        .next()
        .ok_or_else(|| answer_error("no certificate".into()))?
        .map_err(|e| answer_error(e.to_string()))?;
    let validity = check_certificate(&der, &issuance.node_name, &key).map_err(answer_error)?;
    let cas = CertificateDer::pem_slice_iter(answer.ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| answer_error(format!("its CA: {e}")))?;
    if cas.is_empty() {
        return Err(answer_error("no CA certificate".into()));
    }

    let (dir, key_pem, cert_pem, ca_pem) = (
        dir.to_owned(),
        key.serialize_pem(),
        answer.certificate_chain_pem,
        answer.ca_pem,
    );
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|source| IssuanceError::Write {
            path: dir.clone(),
            source,
        })?;
        // The key first: a reader that sees the new certificate finds its key.
        write_atomic(&dir.join("tls.key"), &key_pem, true)?;
        write_atomic(&dir.join("tls.crt"), &cert_pem, false)?;
        write_atomic(&dir.join("ca.crt"), &ca_pem, false)
    })
    .await
    .map_err(|e| answer_error(e.to_string()))??;
    Ok(validity)
}

/// Writes `contents` to a temporary file beside `path` (mode 0600 when `secret`), syncs
/// it and renames it over `path`.
fn write_atomic(path: &Path, contents: &str, secret: bool) -> Result<(), IssuanceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let err = |source| IssuanceError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// At start: returns once `dir` holds a certificate for this node with a third of its
/// life left, requesting one when it does not. Fails on a final refusal; retries the
/// rest until `shutdown` resolves (then fails).
pub async fn ensure(
    issuance: &Issuance,
    dir: &Path,
    shutdown: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    let (d, node) = (dir.to_owned(), issuance.node_name.clone());
    let have = tokio::task::spawn_blocking(move || current(&d, &node)).await?;
    if let Some(v) = have
        && SystemTime::now() < v.renew_at()
    {
        info!(node = %issuance.node_name, "node certificate in the TLS directory is still good");
        return Ok(());
    }
    let mut backoff = BACKOFF_MIN;
    loop {
        match request(issuance, dir).await {
            Ok(v) => {
                log_issued(issuance, &v);
                return Ok(());
            }
            Err(e) if e.retry() => {
                warn!(error = %e, retry_in = ?backoff, "no node certificate yet");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot get a node certificate for {:?} from {}",
                    issuance.node_name, issuance.issuer_url
                )));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.as_mut() => anyhow::bail!("stopped before a node certificate was issued"),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn log_issued(issuance: &Issuance, v: &Validity) {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    info!(
        node = %issuance.node_name,
        not_after = secs(v.not_after),
        renew_at = secs(v.renew_at()),
        "node certificate issued"
    );
}

/// Renews the certificate in `dir` at two thirds of its life, for as long as the node
/// runs; after each renewal wakes `nudge` (the TLS watch). Failures are retried with
/// backoff while the current certificate lasts, and after.
pub async fn renew(
    issuance: Issuance,
    dir: PathBuf,
    nudge: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (d, node) = (dir.clone(), issuance.node_name.clone());
        let have = tokio::task::spawn_blocking(move || current(&d, &node))
            .await
            .ok()
            .flatten();
        if let Some(v) = have {
            let wait = v
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            match request(&issuance, &dir).await {
                Ok(v) => {
                    log_issued(&issuance, &v);
                    nudge.notify_one();
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "renewing the node certificate failed")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut stop => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_life() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_000);
        let v = Validity {
            not_before: nb,
            not_after: nb + Duration::from_secs(30),
        };
        assert_eq!(v.renew_at(), nb + Duration::from_secs(20));
    }

    #[test]
    fn a_certificate_is_current_only_for_this_node_and_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        crate::tls::init_dir(&ca).unwrap();
        let out = dir.path().join("node");
        // `Leaf::node` backdates a day: 30 days of life leave two thirds ahead.
        crate::tls::issue_dir(
            &ca,
            &out,
            &crate::tls::Leaf::node("node-a", Duration::from_secs(30 * 86_400)),
        )
        .unwrap();
        let v = current(&out, "node-a").unwrap();
        assert!(v.renew_at() > SystemTime::now());
        assert!(current(&out, "node-b").is_none());
        // Another key beside the certificate: not usable.
        std::fs::write(
            out.join("tls.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert!(current(&out, "node-a").is_none());
        assert!(current(&dir.path().join("missing"), "node-a").is_none());
    }

    #[test]
    fn files_are_replaced_whole_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("tls.key");
        std::fs::write(&key, "old").unwrap();
        write_atomic(&key, "new", true).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "new");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
