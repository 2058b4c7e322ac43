//! `GET|HEAD /v2/<name>/manifests/<reference>`.
//!
//! - **By tag**: resolved upstream, as containerd expects. Every `Accept` value
//!   containerd sent is forwarded (several header lines are kept as they are), with its
//!   `Authorization`; the status, `Content-Type`, `Docker-Content-Digest` and body come
//!   back unchanged, a 401 with its `WWW-Authenticate` included. With
//!   `--stale-tag-window`, the answer is remembered ([`super::tags`]), and while upstream
//!   is unreachable or answers 429 a tag resolved within the window is answered from its
//!   last known digest, with a `Shoal-Stale-Tag` header giving the answer's age in
//!   seconds.
//! - **By digest**: a task like a blob (one piece: manifests are small), through the
//!   access gate (`gate.rs`) and the download engine, so that it comes from this
//!   node or its peers and upstream serves it once for the swarm. It is verified against
//!   its digest before it is served. Its `Content-Type` is upstream's (from the gate's
//!   `HEAD`) or, when no `HEAD` was needed, the manifest's own `mediaType` (or what its
//!   fields say it is). A manifest larger than [`MAX_MANIFEST`] is relayed from upstream.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use reqwest::Method;
use shoal_proto::Digest;
use tracing::{debug, info};

use super::error::OciError;
use super::tags::Resolved;
use super::{Mirror, Target, blobs, gate, relay};
use crate::registry::{Object, RegistryClient, UpstreamRequest};

/// Manifests up to this size are shared through the swarm (the distribution registry
/// refuses larger ones); larger ones are relayed.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// The response header marking a tag answered from its last known digest.
pub const STALE_TAG_HEADER: &str = "shoal-stale-tag";

/// A manifest by tag.
pub(super) async fn serve_tag(
    m: &Mirror,
    head: bool,
    target: &Target,
    name: &str,
    tag: &str,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    m.stats.manifest_requests.fetch_add(1, Ordering::Relaxed);
    let client = m.upstream(target).await?;
    let accept = accept_values(headers);
    let req = UpstreamRequest {
        method: if head { Method::HEAD } else { Method::GET },
        repo: name.to_owned(),
        object: Object::Manifest(tag.to_owned()),
        accept: accept.clone(),
        authorization: headers.get(header::AUTHORIZATION).cloned(),
        range_from: None,
    };
    let why = match client.send(&req).await {
        Ok(resp) if resp.status().as_u16() != 429 => {
            if resp.status().is_success() {
                remember(m, &client, name, tag, resp.headers());
            }
            return Ok(relay::response(resp, head, client.idle_timeout()));
        }
        Ok(resp) => {
            // Rate-limited: answered from the last known digest when there is one.
            if let Some(r) = stale(m, &client, name, tag, &accept) {
                let why = format!("upstream answered {}", resp.status().as_u16());
                let s = Stale {
                    tag,
                    resolved: r,
                    why,
                };
                return serve_stale(m, head, &client, name, s, headers).await;
            }
            return Ok(relay::response(resp, head, client.idle_timeout()));
        }
        Err(e) => e,
    };
    match stale(m, &client, name, tag, &accept) {
        Some(r) => {
            let s = Stale {
                tag,
                resolved: r,
                why: why.to_string(),
            };
            serve_stale(m, head, &client, name, s, headers).await
        }
        None => Err(OciError::unavailable(format!(
            "manifest {name}:{tag}: {why}"
        ))),
    }
}

/// A manifest by digest.
pub(super) async fn serve_digest(
    m: &Mirror,
    head: bool,
    target: &Target,
    name: &str,
    digest: Digest,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    m.stats.manifest_requests.fetch_add(1, Ordering::Relaxed);
    let client = m.upstream(target).await?;
    by_digest(m, head, &client, name, digest, headers, None).await
}

async fn by_digest(
    m: &Mirror,
    head: bool,
    client: &std::sync::Arc<RegistryClient>,
    name: &str,
    digest: Digest,
    headers: &HeaderMap,
    upstream_down: Option<String>,
) -> Result<Response, OciError> {
    let accept = accept_values(headers);
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    if m.access.enabled() && client.catch_all() {
        // A registry reached through `_default` is whatever the caller names: its
        // answers open neither the cache nor the peers (see `blobs.rs`).
        m.access
            .stats
            .relayed_untrusted
            .fetch_add(1, Ordering::Relaxed);
        return relay_from_upstream(client, head, name, &digest, accept, authorization).await;
    }
    let store = m.engine.store().clone();
    let pin = store.pin(&digest);
    let cached = m.complete_size(&digest).await?;
    let pass = gate::check(
        m,
        gate::Ask {
            client,
            repo: name,
            digest,
            manifest: true,
            accept: accept.clone(),
            authorization: authorization.as_ref(),
            cached,
            head,
            upstream_down,
        },
    )
    .await;
    let pass = match pass {
        Ok(p) => p,
        Err(answer) => return Ok(answer),
    };
    let upstream_type = pass
        .upstream_headers
        .as_ref()
        .and_then(|h| h.get(header::CONTENT_TYPE))
        .cloned();
    if pass.size.is_some_and(|s| s > MAX_MANIFEST) {
        return relay_from_upstream(client, head, name, &digest, accept, authorization).await;
    }
    if head
        && cached.is_none()
        && let (Some(size), Some(t)) = (pass.size, &upstream_type)
    {
        // Upstream's `HEAD` answered it all.
        return Ok(manifest_headers(&digest, t.clone(), size)
            .extension(relay::Relayed)
            .body(Body::empty())
            .expect("valid response"));
    }
    let upstream = std::sync::Arc::new(client.manifest_upstream(name.to_owned(), authorization));
    let dl = m.engine.fetch(digest, pass.size.unwrap_or(0), upstream);
    let size = match blobs::wait_for_size(&dl, head).await {
        Ok(size) => size,
        Err(answer) => return Ok(answer),
    };
    if size > MAX_MANIFEST {
        return Err(OciError::unavailable(format!(
            "manifest {digest} is {size} bytes, over the {MAX_MANIFEST}-byte limit"
        )));
    }
    // Read whole (it is small), every byte verified: the last piece only once the whole
    // manifest matched its digest.
    let mut bytes = Vec::with_capacity(size as usize);
    let mut reader = Box::pin(dl.reader(0));
    while (bytes.len() as u64) < size {
        match reader.next().await {
            Some(Ok(b)) => bytes.extend_from_slice(&b),
            Some(Err(why)) => return Ok(blobs::failed(&dl, why, head)),
            None => break,
        }
    }
    drop(pin);
    bytes.truncate(size as usize);
    let media_type = upstream_type
        .or_else(|| HeaderValue::from_str(&media_type_of(&bytes)).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    m.stats.manifests_shared.fetch_add(1, Ordering::Relaxed);
    debug!(oci.repo = %name, task.digest = %digest, size, from_cache = cached.is_some(), "manifest by digest served through the engine");
    let b = manifest_headers(&digest, media_type, size);
    Ok(if head {
        b.body(Body::empty())
    } else {
        b.body(Body::from(bytes))
    }
    .expect("valid response"))
}

/// A tag to answer from its last known digest, and why upstream could not answer it.
struct Stale<'a> {
    tag: &'a str,
    resolved: Resolved,
    why: String,
}

/// The tag answered from its last known digest: the manifest by digest, marked stale.
/// The access gate is told upstream is unavailable, so it does not wait on it again.
async fn serve_stale(
    m: &Mirror,
    head: bool,
    client: &std::sync::Arc<RegistryClient>,
    name: &str,
    Stale {
        tag,
        resolved: r,
        why,
    }: Stale<'_>,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    let age = Instant::now().saturating_duration_since(r.at).as_secs();
    info!(
        upstream.registry = client.registry(),
        oci.repo = %name,
        oci.tag = %tag,
        task.digest = %r.digest,
        age_s = age,
        error = %why,
        "upstream unavailable: tag answered from its last known digest"
    );
    let mut resp = by_digest(m, head, client, name, r.digest, headers, Some(why)).await?;
    if resp.status() == StatusCode::OK {
        m.stats.stale_tag_answers.fetch_add(1, Ordering::Relaxed);
        resp.headers_mut().insert(
            header::HeaderName::from_static(STALE_TAG_HEADER),
            HeaderValue::from(age),
        );
        // Not upstream's answer, whatever path served the digest.
        resp.extensions_mut().remove::<relay::Relayed>();
    }
    Ok(resp)
}

fn stale(
    m: &Mirror,
    client: &RegistryClient,
    name: &str,
    tag: &str,
    accept: &[String],
) -> Option<Resolved> {
    if client.catch_all() && m.access.enabled() {
        return None;
    }
    m.tags
        .recall(client.registry(), name, tag, accept, Instant::now())
}

fn remember(
    m: &Mirror,
    client: &RegistryClient,
    name: &str,
    tag: &str,
    h: &reqwest::header::HeaderMap,
) {
    if !m.tags.enabled() {
        return;
    }
    let digest = h
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    let media_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    if let (Some(digest), Some(media_type)) = (digest, media_type) {
        m.tags.remember(
            client.registry(),
            name,
            tag,
            Resolved {
                digest,
                media_type,
                at: Instant::now(),
            },
        );
    }
}

async fn relay_from_upstream(
    client: &RegistryClient,
    head: bool,
    name: &str,
    digest: &Digest,
    accept: Vec<String>,
    authorization: Option<HeaderValue>,
) -> Result<Response, OciError> {
    let req = UpstreamRequest {
        method: if head { Method::HEAD } else { Method::GET },
        repo: name.to_owned(),
        object: Object::Manifest(digest.to_string()),
        accept,
        authorization,
        range_from: None,
    };
    match client.send(&req).await {
        Ok(resp) => Ok(relay::response(resp, head, client.idle_timeout())),
        Err(e) => Err(OciError::unavailable(format!(
            "manifest {name}@{digest}: {e}"
        ))),
    }
}

fn accept_values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

fn manifest_headers(
    digest: &Digest,
    media_type: HeaderValue,
    len: u64,
) -> axum::http::response::Builder {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, len)
        .header("Docker-Content-Digest", digest.to_string())
}

/// A manifest's media type from its bytes: its `mediaType` field, or else an OCI index
/// when it lists `manifests`, an OCI image manifest otherwise.
pub fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) if !t.is_empty() && t.len() < 256 => t,
        Ok(Probe {
            manifests: Some(_), ..
        }) => "application/vnd.oci.image.index.v1+json".into(),
        _ => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_from_the_manifest_itself() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#;
        assert_eq!(
            media_type_of(docker),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type_of(index),
            "application/vnd.oci.image.index.v1+json"
        );
        let image = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            media_type_of(image),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            media_type_of(b"not json"),
            "application/vnd.oci.image.manifest.v1+json"
        );
    }
}
