//! The registry mirror containerd talks to on `127.0.0.1`: the pull side of the OCI
//! distribution API (`GET /v2/`, `GET|HEAD` blobs and manifests).
//!
//! Blobs come through the download engine (peers first, upstream when the scheduler
//! says so or nobody can serve) and stream to containerd in order as their pieces are
//! verified. Manifests by tag are relayed from upstream with their headers unchanged
//! (and, with `--stale-tag-window`, answered from their last known digest while upstream
//! is unavailable); manifests by digest are tasks like blobs.
//! containerd's `Authorization` goes upstream and upstream's 401 comes back, so
//! containerd does its own token dance; credentials are never logged.
//!
//! No byte from the node's cache or a peer reaches a caller before upstream said this
//! caller may read that blob ([`access`]); while upstream is unreachable only public
//! repositories and fresh grants are served.
//!
//! Layout: [`route`] (pure: path, name, reference and `ns` grammar), [`range`] (pure:
//! the `Range` header), [`access`] (who may read a blob: remembered upstream decisions),
//! `gate.rs` (the access check of one blob or manifest, with its upstream `HEAD`),
//! [`tags`] (tags' last known digests), [`error`] (OCI error bodies), `blobs.rs`,
//! [`manifests`],
//! `relay.rs` (an upstream response as a mirror response), this file (router, state,
//! counters). Not here: the upstream client and `hosts.toml` ([`crate::registry`]).

pub mod access;
mod blobs;
pub mod error;
mod gate;
pub mod manifests;
pub mod range;
mod relay;
pub mod route;
pub mod tags;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tracing::{debug, info};

use crate::engine::Engine;
use crate::metrics::{self, Sample};
use crate::registry::{Registries, RegistryClient, RegistryError};
pub use access::{Access, AccessConfig};
pub use error::OciError;
use route::Object;
use shoal_proto::Digest;
pub use tags::TagMemory;

/// How long a blob request waits for the blob's size (from a plan, upstream or the
/// store) before it answers 503 so containerd tries its next host.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Mirror counters (exported by [`MirrorStats::register_metrics`]).
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Blob requests (GET and HEAD).
    pub blob_requests: AtomicU64,
    /// Manifest requests (GET and HEAD).
    pub manifest_requests: AtomicU64,
    /// Blob bytes sent to clients.
    pub blob_bytes_served: AtomicU64,
    /// Of those, bytes of blobs that were complete on this node before the request.
    pub blob_bytes_from_cache: AtomicU64,
    /// Requests the mirror itself answered 4xx (bad input, unsupported path or
    /// method, unsatisfiable range). Upstream's answers relayed are not counted here.
    pub refused: AtomicU64,
    /// Requests the mirror itself answered 5xx (nothing could serve). Upstream's
    /// answers relayed are not counted here.
    pub failed: AtomicU64,
    /// Answers whose status upstream gave, relayed to the client, by status code.
    pub upstream_responses: UpstreamResponses,
    /// Manifests by digest served through the engine (from this node, peers, or
    /// upstream once for the swarm).
    pub manifests_shared: AtomicU64,
    /// Tags answered from their last known digest while upstream was unavailable.
    pub stale_tag_answers: AtomicU64,
}

/// Answers relayed from upstream, counted by status code: each code of
/// [`UpstreamResponses::CODES`] on its own, any other as `other` (so that an upstream
/// cannot grow the label set).
#[derive(Debug, Default)]
pub struct UpstreamResponses([AtomicU64; UpstreamResponses::CODES.len() + 1]);

impl UpstreamResponses {
    /// The codes counted one by one.
    pub const CODES: [&'static str; 13] = [
        "200", "206", "304", "400", "401", "403", "404", "416", "429", "500", "502", "503", "504",
    ];

    /// Counts one answer with `status`.
    pub fn count(&self, status: u16) {
        let code = status.to_string();
        let i = Self::CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(Self::CODES.len());
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Answers so far with `code` (one of [`Self::CODES`], or `"other"`).
    pub fn get(&self, code: &str) -> u64 {
        let i = Self::CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(Self::CODES.len());
        self.0[i].load(Ordering::Relaxed)
    }

    fn samples(&self) -> Vec<(&'static str, u64)> {
        Self::CODES
            .iter()
            .copied()
            .chain(["other"])
            .zip(&self.0)
            .map(|(code, n)| (code, n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl MirrorStats {
    /// Registers the mirror's counters in `registry`, read at every scrape (names
    /// without a prefix: the daemon's registry adds `shoal_mirror_`, the names dashboards
    /// and docs know).
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        metrics::register(registry, self.clone(), |m| {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            vec![
                Sample::Counter(
                    "blob_requests",
                    "Blob requests to the mirror (GET and HEAD).",
                    load(&m.blob_requests),
                ),
                Sample::Counter(
                    "manifest_requests",
                    "Manifest requests to the mirror (GET and HEAD).",
                    load(&m.manifest_requests),
                ),
                Sample::Counter(
                    "blob_bytes_served",
                    "Blob bytes sent to containerd.",
                    load(&m.blob_bytes_served),
                ),
                Sample::Counter(
                    "blob_bytes_from_cache",
                    "Blob bytes sent to containerd from blobs already complete on this node.",
                    load(&m.blob_bytes_from_cache),
                ),
                Sample::Counter(
                    "refused",
                    "Mirror requests the mirror itself refused (4xx: bad input); upstream's answers are in upstream_responses_total.",
                    load(&m.refused),
                ),
                Sample::Counter(
                    "failed",
                    "Mirror requests nothing could serve (the mirror's own 5xx); upstream's answers are in upstream_responses_total.",
                    load(&m.failed),
                ),
                Sample::Counter(
                    "manifests_shared",
                    "Manifests by digest served through the download engine (this node, peers, or upstream once for the swarm).",
                    load(&m.manifests_shared),
                ),
                Sample::Counter(
                    "stale_tag_answers",
                    "Tags answered from their last known digest while upstream was unavailable (--stale-tag-window).",
                    load(&m.stale_tag_answers),
                ),
                Sample::LabeledCounters(
                    "upstream_responses",
                    "Answers relayed from upstream with upstream's status, by code (other: any code not listed).",
                    "code",
                    m.upstream_responses.samples(),
                ),
            ]
        });
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct Mirror {
    /// The download engine.
    pub engine: Engine,
    /// Upstream registries from `hosts.toml`.
    pub registries: Registries,
    /// Counters.
    pub stats: Arc<MirrorStats>,
    /// The access check and its remembered decisions.
    pub access: Arc<Access>,
    /// Tags' last known digests (`--stale-tag-window`; off by default).
    pub tags: Arc<TagMemory>,
}

impl Mirror {
    /// A mirror over this engine and these registries, the access check on with its
    /// defaults.
    pub fn new(engine: Engine, registries: Registries) -> Self {
        Self::with_access(engine, registries, AccessConfig::default())
    }

    /// A mirror with these access check settings.
    pub fn with_access(engine: Engine, registries: Registries, access: AccessConfig) -> Self {
        Mirror {
            engine,
            registries,
            stats: Arc::new(MirrorStats::default()),
            access: Arc::new(Access::new(access)),
            tags: Arc::new(TagMemory::new(Duration::ZERO)),
        }
    }

    /// Answers tags from their last known digest within `window` while upstream is
    /// unavailable (zero: never, the default).
    pub fn with_stale_tag_window(mut self, window: Duration) -> Self {
        self.tags = Arc::new(TagMemory::new(window));
        self
    }

    /// The size of `digest` when it is complete on this node.
    async fn complete_size(&self, digest: &Digest) -> Result<Option<u64>, OciError> {
        let (s, d) = (self.engine.store().clone(), *digest);
        Ok(tokio::task::spawn_blocking(move || s.meta(&d))
            .await
            .map_err(|e| OciError::internal(e.to_string()))?
            .ok()
            .flatten()
            .filter(|t| t.complete)
            .map(|t| t.shape.size()))
    }

    /// The upstream of a request: the registry containers-registries.conf names by the
    /// first path component (CRI-O, Podman; `target` already holds it), else containerd's
    /// `ns`, else the default upstream.
    async fn upstream(&self, target: &Target) -> Result<Arc<RegistryClient>, OciError> {
        let ns = match target {
            Target::Resolved(client) => return Ok(client.clone()),
            Target::Ns(ns) => ns.as_deref().map(route::check_ns).transpose()?,
        };
        self.registries.resolve(ns).await.map_err(upstream_error)
    }
}

/// Which upstream a request is for.
pub(crate) enum Target {
    /// containerd's `ns` (`None`: the default upstream).
    Ns(Option<String>),
    /// Found from the path's first component (containers-registries.conf).
    Resolved(Arc<RegistryClient>),
}

/// A registry that cannot be resolved, as an OCI error.
fn upstream_error(e: RegistryError) -> OciError {
    match e {
        RegistryError::UnknownRegistry(r) => OciError::bad_ns(format!(
            "this mirror does not serve registry {:?} (no directory for it in any containerd hosts dir)",
            route::truncate(&r)
        )),
        RegistryError::NoDefault => {
            OciError::bad_ns("no ns parameter and no --default-upstream: which registry is meant?")
        }
        RegistryError::Config { .. } => OciError::internal(e.to_string()),
        RegistryError::Unreachable { .. } => OciError::unavailable(e.to_string()),
    }
}

/// The mirror's routes.
pub fn router(mirror: Mirror) -> Router {
    Router::new()
        .route("/v2", get(version_check))
        .route("/v2/", get(version_check))
        .route("/v2/{*rest}", get(dispatch).head(dispatch))
        .fallback(not_found)
        .method_not_allowed_fallback(read_only)
        .layer(middleware::from_fn_with_state(mirror.clone(), access_log))
        .with_state(mirror)
}

async fn version_check() -> impl IntoResponse {
    (
        [(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static("registry/2.0"),
        )],
        "{}",
    )
}

async fn not_found() -> OciError {
    OciError::unsupported("not a registry API path; the mirror serves /v2/ pulls only")
}

async fn read_only() -> OciError {
    OciError::method_not_allowed("the mirror is read-only: GET and HEAD only")
}

async fn dispatch(
    State(m): State<Mirror>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    axum::extract::Path(rest): axum::extract::Path<String>,
) -> Response {
    let r = match route::parse(&rest) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let ns = query.get("ns").cloned();
    let (target, name) = match ns {
        Some(ns) => (Target::Ns(Some(ns)), r.name),
        // CRI-O and Podman send no ns: the registry is the path's first component.
        None => match m.registries.resolve_namespaced(&r.name).await {
            Ok(Some((client, repo))) => (Target::Resolved(client), repo),
            Ok(None) => (Target::Ns(None), r.name),
            Err(e) => return upstream_error(e).into_response(),
        },
    };
    let head = method == Method::HEAD;
    match r.object {
        Object::Blob(digest) => blobs::serve(&m, head, &target, &name, digest, &headers)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Object::ManifestTag(tag) => manifests::serve_tag(&m, head, &target, &name, &tag, &headers)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Object::ManifestDigest(d) => manifests::serve_digest(&m, head, &target, &name, d, &headers)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    }
}

/// One line per request: method, path (no query: it may carry tokens), status,
/// time to headers. Never headers.
async fn access_log(State(m): State<Mirror>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if resp.extensions().get::<relay::Relayed>().is_some() {
        m.stats.upstream_responses.count(status.as_u16());
    } else if status.is_client_error() {
        m.stats.refused.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        m.stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if status.is_server_error() || (status.is_client_error() && status != StatusCode::NOT_FOUND) {
        info!(http.method = %method, http.path = %route::truncate(&path), http.status = status.as_u16(), ms, "mirror request");
    } else {
        debug!(http.method = %method, http.path = %route::truncate(&path), http.status = status.as_u16(), ms, "mirror request");
    }
    resp
}

/// Serves the mirror on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mirror: Mirror,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(mirror))
        .with_graceful_shutdown(shutdown)
        .await
}
