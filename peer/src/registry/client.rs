//! [`RegistryClient`]: one registry's endpoints, tried in order with retries.
//!
//! For each request the endpoints that may serve it are kept (`pull` for blobs and
//! manifests by digest, `resolve` for manifests by tag) and tried in `hosts.toml` order,
//! the server last. On one endpoint, connect errors and 5xx answers are retried up to
//! `attempts` times with exponential backoff and jitter ([`backoff`]); other transport
//! errors and a response-header timeout move on to the next endpoint at once. A 404 from
//! a mirror entry that is not the last endpoint also moves on (containerd does the same:
//! a mirror need not hold everything). Any other answer, 4xx included, is returned.
//!
//! Logged: registry, endpoint (no user info), attempt, status, error text. Never header
//! values: `Authorization` and `[header]` values are marked sensitive.
//!
//! Not here: endpoint construction and TLS (`endpoint.rs`), response bodies (streamed by
//! the caller), auth beyond forwarding.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RANGE};
use tracing::{Instrument, debug, info_span, warn};

use super::challenge::BearerChallenge;
use super::endpoint::{Endpoint, chain};
use super::hosts_toml::{EndpointSpec, Role};
use super::{
    BlobUpstream, CredentialPool, Object, RegistriesConfig, RegistryError, UpstreamRequest,
};

/// The first retry's backoff; each further retry doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pause before retry number `retry` (1-based): `100 ms · 2^(retry-1)`, at most 5 s,
/// scaled into its upper half by `jitter` in `[0, 1)` ("equal jitter").
pub(super) fn backoff(retry: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    exp.min(BACKOFF_MAX)
        .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// One registry's client: its endpoints in order, each with its own HTTP client.
pub struct RegistryClient {
    registry: String,
    origin: PathBuf,
    endpoints: Vec<Endpoint>,
    attempts: u32,
    request_timeout: Duration,
    idle_timeout: Duration,
    credentials: CredentialPool,
    /// Resolved through the `_default` directory (set by `Registries`).
    pub(super) catch_all: bool,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("origin", &self.origin)
            .field("endpoints", &self.endpoints())
            .finish_non_exhaustive()
    }
}

/// How one attempt failed.
enum Failure {
    /// Worth another attempt on the same endpoint (connect error, 5xx).
    Retry(String),
    /// Not worth retrying here; try the next endpoint.
    Next(String),
}

impl RegistryClient {
    pub(super) fn build(
        registry: &str,
        origin: &Path,
        specs: Vec<EndpointSpec>,
        config: &RegistriesConfig,
    ) -> Result<RegistryClient, RegistryError> {
        let policy = *config.policy_for(registry);
        let endpoints = specs
            .into_iter()
            .map(|s| Endpoint::build(s, registry, origin, &policy))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RegistryClient {
            registry: registry.to_owned(),
            origin: origin.to_owned(),
            endpoints,
            attempts: policy.attempts.max(1),
            request_timeout: policy.request_timeout,
            idle_timeout: policy.idle_timeout,
            credentials: CredentialPool::default(),
            catch_all: false,
        })
    }

    /// The longest wait for the next chunk of a blob body
    /// ([`UpstreamPolicy::idle_timeout`](super::UpstreamPolicy::idle_timeout)).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Credentials this registry recently authorised, per repository (in memory; lost
    /// when the client is rebuilt after a `hosts.toml` change).
    pub fn credentials(&self) -> &CredentialPool {
        &self.credentials
    }

    /// Whether this registry has no directory of its own under the hosts dir and was
    /// resolved through `_default`: any `ns` a caller names reaches it, so its answers
    /// prove nothing about who may read a blob held here (a registry a caller runs
    /// itself can claim any digest). The mirror serves its blobs from upstream only.
    pub fn catch_all(&self) -> bool {
        self.catch_all
    }

    /// The registry's name, e.g. `docker.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The endpoints in the order they are tried (`scheme://host[:port]/path`), own
    /// mirror entries already removed.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.label.clone()).collect()
    }

    /// Sends `req` to `/v2/<repo>/{blobs|manifests}/<ref>`, trying the endpoints that may
    /// serve it in order (see the module doc). Returns the first answer that is not a
    /// connect error or 5xx (a 4xx is returned, not retried, not an `Err`); the body is
    /// not read. `Err(Unreachable)` when every endpoint failed.
    pub async fn send(&self, req: &UpstreamRequest) -> Result<reqwest::Response, RegistryError> {
        let span = info_span!(
            "upstream",
            upstream.registry = %self.registry,
            oci.repo = %req.repo,
            oci.object = %req.object,
        );
        self.send_inner(req).instrument(span).await
    }

    async fn send_inner(&self, req: &UpstreamRequest) -> Result<reqwest::Response, RegistryError> {
        let tag = req.object.is_tag();
        let candidates: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.spec.may_serve(&req.object))
            .collect();
        if candidates.is_empty() {
            let why = if self.endpoints.is_empty() {
                "every endpoint is this peer's own mirror".to_owned()
            } else {
                let capability = if tag { "resolve" } else { "pull" };
                format!("no endpoint has the {capability:?} capability")
            };
            return Err(RegistryError::Unreachable {
                registry: self.registry.clone(),
                last_error: format!("{why} (configured in {})", self.origin.display()),
            });
        }
        let path = match &req.object {
            Object::Blob(d) => format!("/{}/blobs/{d}", req.repo),
            Object::Manifest(r) => format!("/{}/manifests/{r}", req.repo),
        };
        let mut last_error = String::new();
        for (i, endpoint) in candidates.iter().enumerate() {
            let last = i + 1 == candidates.len();
            let attempts = if endpoint.spec.tls_probe {
                1
            } else {
                self.attempts
            };
            for attempt in 1..=attempts {
                if attempt > 1 {
                    tokio::time::sleep(backoff(attempt - 1, rand::random::<f64>())).await;
                }
                match self.attempt(endpoint, &path, req).await {
                    Ok(response)
                        if response.status() == StatusCode::NOT_FOUND
                            && endpoint.spec.role == Role::Mirror
                            && !last =>
                    {
                        debug!(
                            upstream.endpoint = %endpoint.label,
                            http.status = 404,
                            "mirror does not have it; trying the next endpoint"
                        );
                        last_error = format!("{} answered 404", endpoint.label);
                        break;
                    }
                    Ok(response) => {
                        debug!(
                            upstream.endpoint = %endpoint.label,
                            upstream.attempt = attempt,
                            http.status = response.status().as_u16(),
                            "upstream answered"
                        );
                        return Ok(response);
                    }
                    Err(Failure::Retry(e) | Failure::Next(e)) if endpoint.spec.tls_probe => {
                        debug!(
                            upstream.endpoint = %endpoint.label,
                            error = %e,
                            "TLS refused by an insecure registry; trying plain HTTP"
                        );
                        last_error = e;
                        break;
                    }
                    Err(Failure::Retry(e)) if attempt < attempts => {
                        debug!(
                            upstream.endpoint = %endpoint.label,
                            upstream.attempt = attempt,
                            error = %e,
                            "upstream attempt failed; retrying"
                        );
                        last_error = e;
                    }
                    Err(Failure::Retry(e)) => {
                        warn!(
                            upstream.endpoint = %endpoint.label,
                            upstream.attempt = attempt,
                            error = %e,
                            "upstream endpoint failed after its retries"
                        );
                        last_error = e;
                    }
                    Err(Failure::Next(e)) => {
                        warn!(
                            upstream.endpoint = %endpoint.label,
                            upstream.attempt = attempt,
                            error = %e,
                            "upstream endpoint failed; not retrying it"
                        );
                        last_error = e;
                        break;
                    }
                }
            }
        }
        Err(RegistryError::Unreachable {
            registry: self.registry.clone(),
            last_error,
        })
    }

    /// One request to one endpoint; a 5xx is a [`Failure::Retry`].
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        path: &str,
        req: &UpstreamRequest,
    ) -> Result<reqwest::Response, Failure> {
        let url = endpoint.url(path, &self.registry).map_err(Failure::Next)?;
        let mut headers = endpoint.headers.clone();
        let accept: Vec<&str> = req
            .accept
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty() && HeaderValue::from_str(a).is_ok())
            .collect();
        if !accept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&accept.join(", "))
        {
            headers.insert(ACCEPT, v);
        }
        if let Some(auth) = &req.authorization {
            let mut auth = auth.clone();
            auth.set_sensitive(true);
            headers.insert(AUTHORIZATION, auth);
        }
        if let Some(from) = req.range_from {
            let v = HeaderValue::from_str(&format!("bytes={from}-")).expect("ascii");
            headers.insert(RANGE, v);
        }
        let request = endpoint
            .http
            .request(req.method.clone(), url)
            .headers(headers)
            .send();
        match tokio::time::timeout(self.request_timeout, request).await {
            Err(_) => Err(Failure::Next(format!(
                "{}: no response headers within {:?}",
                endpoint.label, self.request_timeout
            ))),
            Ok(Err(e)) if e.is_connect() => Err(Failure::Retry(chain(&e))),
            Ok(Err(e)) => Err(Failure::Next(chain(&e))),
            Ok(Ok(response)) if response.status().is_server_error() => Err(Failure::Retry(
                format!("{} answered {}", endpoint.label, response.status()),
            )),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// A token fetched from `challenge`'s realm *without credentials* (what containerd
    /// does for a public image), through the first endpoint's HTTP client (its TLS
    /// settings), within the request timeout; `None` when the realm refuses or answers
    /// something else. Bodies over 64 KiB are refused.
    pub async fn anonymous_token(&self, challenge: &BearerChallenge) -> Option<String> {
        self.token(challenge, None).await
    }

    /// A token from `challenge`'s realm, asked with `authorization` (a preheat job's
    /// own credential, marked sensitive, never logged) or without any; otherwise as
    /// [`anonymous_token`](Self::anonymous_token).
    pub async fn token(
        &self,
        challenge: &BearerChallenge,
        authorization: Option<HeaderValue>,
    ) -> Option<String> {
        let endpoint = self.endpoints.first()?;
        let url = challenge.token_url()?;
        let fetch = async {
            let mut request = endpoint.http.get(url);
            if let Some(mut auth) = authorization {
                auth.set_sensitive(true);
                request = request.header(AUTHORIZATION, auth);
            }
            let resp = request.send().await.ok()?;
            if !resp.status().is_success() || resp.content_length().unwrap_or(0) > 64 << 10 {
                return None;
            }
            let body = resp.bytes().await.ok()?;
            if body.len() > 64 << 10 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            v["token"]
                .as_str()
                .or(v["access_token"].as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        tokio::time::timeout(self.request_timeout, fetch)
            .await
            .ok()
            .flatten()
    }

    /// The download engine's view of blobs of `repo`, sent with `authorization`.
    pub fn blob_upstream(
        self: &Arc<Self>,
        repo: String,
        authorization: Option<HeaderValue>,
    ) -> BlobUpstream {
        BlobUpstream::new(self.clone(), repo, authorization, false)
    }

    /// The engine's upstream for manifests of `repo` by digest, with containerd's
    /// `Authorization`.
    pub fn manifest_upstream(
        self: &Arc<Self>,
        repo: String,
        authorization: Option<HeaderValue>,
    ) -> BlobUpstream {
        BlobUpstream::new(self.clone(), repo, authorization, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(30, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.5), BACKOFF_MAX.mul_f64(0.75));
        for j in [0.0, 0.3, 0.99] {
            let d = backoff(2, j);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
    }
}
