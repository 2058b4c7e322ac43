//! The access gate in front of every object served from this node's store or from
//! peers (blobs, and manifests by digest): upstream decides whether this caller may
//! read it, or a decision [`Access`] remembers does.
//!
//! The gate makes the `HEAD` of the object in the requested repository with the
//! caller's `Authorization` (a 401/403/404 is relayed as is; a 2xx also gives the size
//! and, for a manifest, its `Content-Type`), unless a fresh grant for this caller,
//! repository and digest already says yes and the object is complete on this node.
//! When upstream cannot be reached (or answers 429: rate-limited), only a caller a
//! fresh grant or a public repository allows passes; anyone else gets a 503 before any
//! byte. A request that already found upstream unavailable (a tag answered from its
//! last known digest) does not wait on it a second time. The anonymous probe that learns whether a repository is public starts here
//! too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use reqwest::Method;
use shoal_proto::Digest;
use tracing::{debug, info, warn};

use super::access::{Access, Refusal};
use super::error::OciError;
use super::{Mirror, relay};
use crate::registry::challenge::BearerChallenge;
use crate::registry::{Object, RegistryClient, UpstreamRequest};

/// One object to pass through the gate.
pub(super) struct Ask<'a> {
    /// The upstream of the request's registry.
    pub client: &'a Arc<RegistryClient>,
    /// The repository.
    pub repo: &'a str,
    /// The blob or manifest digest.
    pub digest: Digest,
    /// Whether it is a manifest (asked at `/manifests/`, not `/blobs/`).
    pub manifest: bool,
    /// The caller's `Accept` values (manifests), forwarded with the `HEAD`.
    pub accept: Vec<String>,
    /// The caller's credential.
    pub authorization: Option<&'a HeaderValue>,
    /// The object's size when it is complete on this node.
    pub cached: Option<u64>,
    /// Whether the caller sent `HEAD` (for the body of a refusal).
    pub head: bool,
    /// Upstream was already found unavailable while serving this request (why): the
    /// gate goes straight to what it remembers instead of waiting on upstream again.
    pub upstream_down: Option<String>,
}

impl Ask<'_> {
    fn object(&self) -> Object {
        if self.manifest {
            Object::Manifest(self.digest.to_string())
        } else {
            Object::Blob(self.digest)
        }
    }
}

/// The caller may read the object.
#[derive(Debug, Default)]
pub(super) struct Pass {
    /// Its size, when upstream's `HEAD` or the store gave it.
    pub size: Option<u64>,
    /// Upstream's answer to the `HEAD`, when one was made now: its headers
    /// (`Content-Type`, `Docker-Content-Digest`, `Content-Length`).
    pub upstream_headers: Option<HeaderMap>,
}

/// Whether the caller may read the object: `Ok` with what the gate learnt, or `Err`
/// with the answer to give (upstream's refusal, or a 503 while upstream is unreachable
/// and nothing remembered allows the caller).
pub(super) async fn check(m: &Mirror, ask: Ask<'_>) -> Result<Pass, Response> {
    let access = &m.access;
    let (registry, now) = (ask.client.registry(), Instant::now());
    let fp = access.fingerprint(ask.authorization);
    if !access.enabled() && ask.cached.is_some() {
        // The check is off: what is on the node is served to anyone.
        return Ok(Pass {
            size: ask.cached,
            upstream_headers: None,
        });
    }
    if access.enabled() {
        access.stats.checks.fetch_add(1, Ordering::Relaxed);
        // An object on this node whose reader a remembered grant allows: no upstream
        // request.
        if let Some(size) = ask.cached
            && access.allows(registry, ask.repo, &ask.digest, fp, now)
        {
            access.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            remember_credential(ask.client, ask.repo, ask.authorization, now);
            return Ok(Pass {
                size: Some(size),
                upstream_headers: None,
            });
        }
        if ask.upstream_down.is_none() {
            access.stats.upstream_checks.fetch_add(1, Ordering::Relaxed);
        }
    }
    let why_offline = match &ask.upstream_down {
        Some(why) => why.clone(),
        None => match ask_upstream(m, &ask, fp, now).await {
            Ok(pass) => return pass,
            Err(why) => why,
        },
    };
    if !access.enabled() {
        warn!(registry, error = %why_offline, "upstream unreachable; trying peers (access check off)");
        return Ok(Pass {
            size: ask.cached,
            upstream_headers: None,
        });
    }
    match access.allows_offline(registry, ask.repo, &ask.digest, fp, now) {
        Some(why) => {
            access.stats.allowed_offline.fetch_add(1, Ordering::Relaxed);
            info!(
                registry,
                oci.repo = %ask.repo,
                task.digest = %ask.digest,
                access.allowed = ?why,
                error = %why_offline,
                "upstream unreachable; serving an object this caller may read"
            );
            Ok(Pass {
                size: ask.cached,
                upstream_headers: None,
            })
        }
        None => {
            access.stats.refused(Refusal::UpstreamUnreachable);
            warn!(
                registry,
                oci.repo = %ask.repo,
                task.digest = %ask.digest,
                caller.anonymous = fp.is_none(),
                error = %why_offline,
                "access refused: upstream unreachable, cannot check this caller may read the object"
            );
            Err(refuse_unchecked(registry, ask.repo, &ask.digest, ask.head))
        }
    }
}

/// The gate's `HEAD` upstream: `Ok` with the gate's answer when upstream answered (a
/// pass, or its refusal relayed), `Err` with why when it is unavailable (unreachable,
/// or 429 with the check on).
async fn ask_upstream(
    m: &Mirror,
    ask: &Ask<'_>,
    fp: super::access::Fingerprint,
    now: Instant,
) -> Result<Result<Pass, Response>, String> {
    let access = &m.access;
    let registry = ask.client.registry();
    let req = UpstreamRequest {
        method: Method::HEAD,
        repo: ask.repo.to_owned(),
        object: ask.object(),
        accept: ask.accept.clone(),
        authorization: ask.authorization.cloned(),
        range_from: None,
    };
    match ask.client.send(&req).await {
        Ok(resp) if resp.status().as_u16() != 429 || !access.enabled() => {
            let status = resp.status().as_u16();
            access.learn(registry, ask.repo, &ask.digest, fp, status, Instant::now());
            if !resp.status().is_success() {
                // 401 (containerd fetches a token and retries), 403, 404, …
                if access.enabled() {
                    access.stats.refused(Refusal::of_status(status));
                }
                return Ok(Err(relay::refusal(
                    &resp,
                    &ask.digest.to_string(),
                    ask.head,
                )));
            }
            remember_credential(ask.client, ask.repo, ask.authorization, now);
            if access.enabled() && fp.is_some() && access.should_probe(registry, ask.repo, now) {
                tokio::spawn(probe_public(
                    ask.client.clone(),
                    access.clone(),
                    ask.repo.to_owned(),
                    ask.object(),
                    ask.digest,
                ));
            }
            // The header itself: reqwest's `content_length()` is 0 for the (empty)
            // body of a HEAD answer.
            let size = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Ok(Ok(Pass {
                size: ask.cached.or(size),
                upstream_headers: Some(resp.headers().clone()),
            }))
        }
        Ok(resp) => Err(format!("upstream answered {}", resp.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}

/// Upstream authorised `authorization` for `repo` (just now, or a grant still fresh): a
/// shared download of this repository may go on with it ([`crate::registry::CredentialPool`]).
fn remember_credential(
    client: &RegistryClient,
    repo: &str,
    authorization: Option<&HeaderValue>,
    now: Instant,
) {
    if let Some(a) = authorization {
        client.credentials().remember(repo, a, now);
    }
}

/// Whether `repo` is public, asked as an anonymous caller would: a `HEAD` of `object`
/// without credentials, and when a token registry answers that with a `Bearer`
/// challenge, again with a token fetched from its realm without credentials. What
/// upstream answers is learnt as an anonymous caller's answer (2xx: public; 401/403: not).
async fn probe_public(
    client: Arc<RegistryClient>,
    access: Arc<Access>,
    repo: String,
    object: Object,
    digest: Digest,
) {
    let mut req = UpstreamRequest {
        method: Method::HEAD,
        repo: repo.clone(),
        object,
        accept: crate::registry::MANIFEST_MEDIA_TYPES
            .map(str::to_owned)
            .to_vec(),
        authorization: None,
        range_from: None,
    };
    access.stats.upstream_checks.fetch_add(1, Ordering::Relaxed);
    let Ok(resp) = client.send(&req).await else {
        return;
    };
    let mut status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(BearerChallenge::parse);
    if status == 401
        && let Some(challenge) = challenge
        && let Some(token) = client.anonymous_token(&challenge).await
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        req.authorization = Some(v);
        access.stats.upstream_checks.fetch_add(1, Ordering::Relaxed);
        match client.send(&req).await {
            Ok(resp) => status = resp.status().as_u16(),
            Err(_) => return,
        }
    }
    debug!(
        upstream.registry = client.registry(),
        oci.repo = %repo,
        http.status = status,
        "anonymous probe: is the repository public"
    );
    access.learn(
        client.registry(),
        &repo,
        &digest,
        None,
        status,
        Instant::now(),
    );
}

/// 503 `UNAVAILABLE` (no body for a `HEAD`): upstream cannot say whether this caller may
/// read the object, so nothing is served; containerd goes on to its next host.
fn refuse_unchecked(registry: &str, repo: &str, digest: &Digest, head: bool) -> Response {
    let err = OciError::unavailable(format!(
        "upstream {registry} is unreachable and this caller is not known to be allowed to \
         read {digest} of {repo}: nothing served (the mirror fails closed on access)"
    ));
    if head {
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = err.status;
        return r;
    }
    axum::response::IntoResponse::into_response(err)
}
