//! The scheduler as the cluster's certificate issuer (`shoal.v1.CertificateIssuer`):
//! a peer sends a CSR for its node with its pod's projected ServiceAccount token, and
//! gets a short-lived node certificate from the cluster CA.
//!
//! Layout:
//! - this file: [`IssuerService`] (the tonic adapter: bounds, then review, then sign),
//!   [`IssueError`] (every refusal, its gRPC status and its metric reason), [`serve`];
//! - [`config`]: the `--issuer-*` and `--kube-*` flags, validated into [`IssuerSettings`];
//! - [`review`]: the TokenReview and Pod checks (pure) and the Kubernetes API client;
//! - [`sign`]: checking the CSR and signing with rcgen.
//!
//! The issuer listens on its own port (`--issuer-listen`, 7601) with server-only TLS (the
//! scheduler's serving certificate from `--tls-dir`): a new node has no client
//! certificate yet, so the main gRPC port, which requires one, cannot serve it.
//!
//! Bounds ([`IssuerLimits`]): a CSR and a token of at most 16 KiB each, messages of at
//! most 64 KiB, a token bucket over all callers (20 requests per second, burst 100), at
//! most 16 requests in review at once. Every refusal is a gRPC status naming why,
//! counted in `shoal_scheduler_refused_total{reason="issuer_…"}`; each certificate signed
//! is counted in `shoal_scheduler_certificates_issued_total`.
//!
//! Non-goals: revocation (certificates are short-lived), issuing anything but node
//! certificates, tokens of anything but the peers' ServiceAccount.

pub mod config;
pub mod review;
pub mod sign;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_proto::limits::{MAX_CSR, MAX_ISSUER_MESSAGE, MAX_TOKEN};
use shoal_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::core::PeerId;
use crate::metrics::Metrics;
use crate::tls::TlsFiles;
pub use config::{IssuerArgs, IssuerSettings};
use review::{KubeApi, ReviewPolicy, check_pod, check_review};

/// Why a certificate was not issued. Each variant is one gRPC status and one metric
/// reason; messages name the limit or the identity, never a token.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request itself is unusable (size, node name, CSR).
    #[error("{0}")]
    Input(String),
    /// Too many requests in review at once.
    #[error("the issuer is busy ({0} requests in review); retry later")]
    Busy(usize),
    /// The request rate is above the issuer's limit.
    #[error("the issuer's rate limit ({0} requests per second) is reached; retry later")]
    Rate(u32),
    /// The API server did not authenticate the token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is not for the issuer's audience.
    #[error("the token is not for audience {want:?} (it is for {got:?})")]
    Audience {
        /// The issuer's audience.
        want: String,
        /// The audiences the token was accepted for.
        got: Vec<String>,
    },
    /// The token is another ServiceAccount's.
    #[error("the token is {got:?}, not the peers' service account {want:?}")]
    ServiceAccount {
        /// The peers' ServiceAccount user.
        want: String,
        /// The token's user.
        got: String,
    },
    /// The token is not bound to a pod (a legacy Secret token, or another kind).
    #[error("the token is not bound to a pod: use the pod's projected ServiceAccount token")]
    NotBound,
    /// The node the request names is not the token's.
    #[error("node {asked:?} was asked for, but {by} is on node {actual:?}")]
    NodeMismatch {
        /// The node in the request.
        asked: String,
        /// The node the token (or its pod) is on.
        actual: String,
        /// `the token` or `the token's pod`.
        by: &'static str,
    },
    /// The token's pod is not the peer DaemonSet's.
    #[error("pod {pod:?} is not owned by DaemonSet {want:?} (owners: {owners:?})")]
    NotDaemonSet {
        /// The pod.
        pod: String,
        /// The peer DaemonSet.
        want: String,
        /// Its owners, `Kind/name`.
        owners: Vec<String>,
    },
    /// The token's pod no longer exists (or is another pod of the same name).
    #[error("the token's pod {0:?} no longer exists")]
    PodGone(String),
    /// The Kubernetes API could not be asked (worth retrying).
    #[error("cannot review the token: {0}")]
    Api(String),
    /// The signing CA cannot be used.
    #[error("the issuer's CA cannot be used: {0}")]
    Ca(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IssueError {
    /// The `reason` label of `shoal_scheduler_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::Input(_) => "issuer_input",
            IssueError::Busy(_) => "issuer_busy",
            IssueError::Rate(_) => "issuer_rate",
            IssueError::Unauthenticated(_) => "issuer_unauthenticated",
            IssueError::Audience { .. } => "issuer_audience",
            IssueError::ServiceAccount { .. } => "issuer_service_account",
            IssueError::NotBound => "issuer_not_bound",
            IssueError::NodeMismatch { .. } => "issuer_node_mismatch",
            IssueError::NotDaemonSet { .. } => "issuer_not_daemonset",
            IssueError::PodGone(_) => "issuer_pod_gone",
            IssueError::Api(_) => "issuer_kube_api",
            IssueError::Ca(_) => "issuer_ca",
            IssueError::Internal(_) => "issuer_internal",
        }
    }

    /// The gRPC status: `UNAUTHENTICATED` for the token, `PERMISSION_DENIED` for who it
    /// is, `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED` (retry later), `UNAVAILABLE` (retry).
    pub fn status(&self) -> Status {
        let msg = self.to_string();
        match self {
            IssueError::Input(_) => Status::invalid_argument(msg),
            IssueError::Busy(_) | IssueError::Rate(_) => Status::resource_exhausted(msg),
            IssueError::Unauthenticated(_) | IssueError::Audience { .. } => {
                Status::unauthenticated(msg)
            }
            IssueError::ServiceAccount { .. }
            | IssueError::NotBound
            | IssueError::NodeMismatch { .. }
            | IssueError::NotDaemonSet { .. }
            | IssueError::PodGone(_) => Status::permission_denied(msg),
            IssueError::Api(_) | IssueError::Ca(_) => Status::unavailable(msg),
            IssueError::Internal(_) => Status::internal(msg),
        }
    }
}

/// Bounds on what callers may ask of the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerLimits {
    /// Requests per second over all callers, sustained (default 20); past it
    /// `RESOURCE_EXHAUSTED`.
    pub per_second: u32,
    /// Burst of requests (default 100): a cluster's nodes starting at once.
    pub burst: u32,
    /// Requests in review (API calls, signing) at once (default 16); past it
    /// `RESOURCE_EXHAUSTED`.
    pub concurrent: usize,
}

impl Default for IssuerLimits {
    fn default() -> Self {
        IssuerLimits {
            per_second: 20,
            burst: 100,
            concurrent: 16,
        }
    }
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `CertificateIssuer` service.
#[derive(Clone)]
pub struct IssuerService {
    inner: Arc<Inner>,
}

struct Inner {
    ca_dir: PathBuf,
    lifetime: Duration,
    policy: ReviewPolicy,
    kube: KubeApi,
    limits: IssuerLimits,
    metrics: Arc<Metrics>,
    in_review: Arc<Semaphore>,
    bucket: Mutex<TokenBucket>,
}

impl std::fmt::Debug for IssuerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerService")
            .field("ca_dir", &self.inner.ca_dir)
            .field("policy", &self.inner.policy)
            .finish()
    }
}

impl IssuerService {
    /// A service signing with the CA in `settings.ca_dir`, counting into `metrics`.
    pub fn new(settings: &IssuerSettings, metrics: Arc<Metrics>) -> IssuerService {
        IssuerService {
            inner: Arc::new(Inner {
                ca_dir: settings.ca_dir.clone(),
                lifetime: settings.lifetime,
                policy: settings.policy.clone(),
                kube: KubeApi::new(settings.kube.clone()),
                limits: settings.limits,
                metrics,
                in_review: Arc::new(Semaphore::new(settings.limits.concurrent)),
                bucket: Mutex::new(TokenBucket::new(
                    settings.limits.per_second,
                    settings.limits.burst,
                    Instant::now(),
                )),
            }),
        }
    }
}

impl Inner {
    async fn issue(&self, req: &v1::IssueRequest) -> Result<v1::IssueResponse, IssueError> {
        let taken = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        if !taken {
            return Err(IssueError::Rate(self.limits.per_second));
        }
        let node = req.node_name.as_str();
        PeerId::parse(node).map_err(|e| {
            IssueError::Input(format!("node name {node:?} cannot be a peer id: {e}"))
        })?;
        if req.csr_der.is_empty() || req.csr_der.len() > MAX_CSR {
            return Err(IssueError::Input(format!(
                "the certificate signing request is {} bytes; 1 to {MAX_CSR} are accepted",
                req.csr_der.len()
            )));
        }
        if req.token.is_empty() || req.token.len() > MAX_TOKEN {
            return Err(IssueError::Input(format!(
                "the token is {} bytes; 1 to {MAX_TOKEN} are accepted",
                req.token.len()
            )));
        }
        let _permit = self
            .in_review
            .clone()
            .try_acquire_owned()
            .map_err(|_| IssueError::Busy(self.limits.concurrent))?;

        let review = self.kube.review(&req.token, &self.policy.audience).await?;
        let bound = check_review(&review, &self.policy, node)?;
        let pod = self
            .kube
            .pod(&self.policy.namespace, &bound.name)
            .await?
            .ok_or_else(|| IssueError::PodGone(bound.name.clone()))?;
        check_pod(&pod, &bound, &self.policy, node)?;

        let (dir, csr, name, lifetime) = (
            self.ca_dir.clone(),
            req.csr_der.clone(),
            node.to_owned(),
            self.lifetime,
        );
        let (signed, ca_pem) = tokio::task::spawn_blocking(move || {
            let ca = sign::Ca::load(&dir)?;
            let signed = sign::sign(&csr, &name, lifetime, SystemTime::now(), &ca, &dir)?;
            Ok::<_, IssueError>((signed, ca.cert_pem))
        })
        .await
        .map_err(|e| IssueError::Internal(e.to_string()))??;
        let not_after = signed
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        info!(
            node = %node,
            pod = %bound.name,
            not_after = not_after,
            "node certificate issued"
        );
        Ok(v1::IssueResponse {
            certificate_chain_pem: signed.cert_pem,
            ca_pem,
            not_after_unix: i64::try_from(not_after).unwrap_or(i64::MAX),
        })
    }
}

#[tonic::async_trait]
impl v1::certificate_issuer_server::CertificateIssuer for IssuerService {
    async fn issue(
        &self,
        request: Request<v1::IssueRequest>,
    ) -> Result<Response<v1::IssueResponse>, Status> {
        let addr = request.remote_addr();
        let req = request.into_inner();
        let inner = &self.inner;
        match inner.issue(&req).await {
            Ok(response) => {
                inner.metrics.certificate_issued();
                inner.metrics.grpc_request("Issue", tonic::Code::Ok);
                Ok(Response::new(response))
            }
            Err(e) => {
                let status = e.status();
                inner.metrics.refused(e.reason());
                inner.metrics.grpc_request("Issue", status.code());
                // The node name as asked (bounded by the message size), never the token.
                warn!(
                    node = %req.node_name.chars().take(256).collect::<String>(),
                    peer.addr = ?addr,
                    reason = e.reason(),
                    error = %e,
                    "certificate refused"
                );
                Err(status)
            }
        }
    }
}

/// Serves `service` on `listener` over server-only TLS with `files` (the scheduler's
/// serving certificate) until `shutdown`; refused handshakes are counted as
/// `issuer_tls_handshake`.
pub async fn serve(
    listener: TcpListener,
    files: Arc<TlsFiles>,
    service: IssuerService,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = crate::tls::incoming(
        listener,
        files,
        Arc::new(move || metrics.refused("issuer_tls_handshake")),
    );
    let service = v1::certificate_issuer_server::CertificateIssuerServer::new(service)
        .max_decoding_message_size(MAX_ISSUER_MESSAGE)
        .max_encoding_message_size(MAX_ISSUER_MESSAGE);
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20, 100, t0);
        assert_eq!((0..150).filter(|_| b.take(t0)).count(), 100);
        assert!(!b.take(t0));
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| b.take(later)).count(), 10);
    }

    #[test]
    fn every_refusal_has_a_status_and_a_distinct_reason() {
        let all = [
            IssueError::Input(String::new()),
            IssueError::Busy(1),
            IssueError::Rate(1),
            IssueError::Unauthenticated(String::new()),
            IssueError::Audience {
                want: String::new(),
                got: Vec::new(),
            },
            IssueError::ServiceAccount {
                want: String::new(),
                got: String::new(),
            },
            IssueError::NotBound,
            IssueError::NodeMismatch {
                asked: String::new(),
                actual: String::new(),
                by: "the token",
            },
            IssueError::NotDaemonSet {
                pod: String::new(),
                want: String::new(),
                owners: Vec::new(),
            },
            IssueError::PodGone(String::new()),
            IssueError::Api(String::new()),
            IssueError::Ca(String::new()),
            IssueError::Internal(String::new()),
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(IssueError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(all.iter().all(|e| e.reason().starts_with("issuer_")));
        assert_eq!(
            IssueError::NotBound.status().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            IssueError::Rate(1).status().code(),
            tonic::Code::ResourceExhausted
        );
    }
}
