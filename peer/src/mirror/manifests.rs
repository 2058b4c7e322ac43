//! `GET|HEAD /v2/<name>/manifests/<reference>`: relayed from upstream.
//!
//! Every `Accept` value containerd sent is forwarded (several header lines are kept
//! as they are), with its `Authorization`; the status, `Content-Type`,
//! `Docker-Content-Digest` and body come back unchanged, a 401 with its
//! `WWW-Authenticate` included. Manifests are small and tags move, so they are not
//! cached or fetched from peers (yet: manifests by digest could be).

use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, header};
use axum::response::Response;
use reqwest::Method;

use super::error::OciError;
use super::{Mirror, Target, relay};
use crate::registry::{Object, UpstreamRequest};

pub(super) async fn serve(
    m: &Mirror,
    head: bool,
    target: &Target,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    m.stats.manifest_requests.fetch_add(1, Ordering::Relaxed);
    let client = m.upstream(target).await?;
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let req = UpstreamRequest {
        method: if head { Method::HEAD } else { Method::GET },
        repo: name.to_owned(),
        object: Object::Manifest(reference.to_owned()),
        accept,
        authorization: headers.get(header::AUTHORIZATION).cloned(),
        range_from: None,
    };
    match client.send(&req).await {
        Ok(resp) => Ok(relay::response(resp, head, client.idle_timeout())),
        Err(e) => Err(OciError::unavailable(format!(
            "manifest {name}:{reference}: {e}"
        ))),
    }
}
