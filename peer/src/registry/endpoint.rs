//! One endpoint of a registry, ready to send: its [`EndpointSpec`] and the
//! `reqwest::Client` built for it (rustls; extra CA roots, a client certificate,
//! `skip_verify`, a proxy, the connect timeout, TCP keepalive), plus its `[header]` values as a
//! `HeaderMap` marked sensitive.
//!
//! Without `proxy`, the usual environment variables (`HTTPS_PROXY`, `NO_PROXY`, …) apply,
//! as they do for containerd. Trusted roots: the system's store (`/etc/ssl/certs`, as containerd
//! uses it: a corporate CA installed on the node works here too), the built-in webpki
//! roots, and with `ca` the extra roots `hosts.toml` names (containerd adds them to the
//! system pool). Only the first `client` pair
//! is presented (containerd offers them all and Go picks one).
//!
//! This is where certificate files are read; an error names the `hosts.toml` line that
//! named the file, or the file itself in Docker's certificate layout.
//!
//! Not here: choosing or retrying endpoints (`client.rs`).

use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use super::hosts_toml::{EndpointSpec, NamedFile};
use super::{RegistryError, UpstreamPolicy, names};

/// `User-Agent` of every upstream request.
const USER_AGENT: &str = concat!("shoal-peer/", env!("CARGO_PKG_VERSION"));

/// TCP keepalive probes on every upstream connection start after this much silence, so
/// the kernel notices a peer that vanished (a body stall is caught sooner by the
/// registry's idle timeout; keepalive also covers pooled idle connections).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Redirects followed (registries redirect blobs to object storage).
const MAX_REDIRECTS: usize = 10;

/// A configured endpoint with its HTTP client.
pub(super) struct Endpoint {
    pub(super) spec: EndpointSpec,
    /// `scheme://host[:port]/path` for logs: no user info, no query.
    pub(super) label: String,
    /// `[header]` values from `hosts.toml`, marked sensitive.
    pub(super) headers: HeaderMap,
    /// Whether requests carry `?ns=<registry>` (the host is a mirror, not the registry).
    pub(super) add_ns: bool,
    pub(super) http: reqwest::Client,
}

impl Endpoint {
    /// Builds the client for `spec`. `origin` is the `hosts.toml` (or directory) the spec
    /// came from, named in errors.
    pub(super) fn build(
        spec: EndpointSpec,
        registry: &str,
        origin: &Path,
        policy: &UpstreamPolicy,
    ) -> Result<Endpoint, RegistryError> {
        let label = label(&spec.url);
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(spec.dial_timeout.unwrap_or(policy.connect_timeout))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(TCP_KEEPALIVE)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS));
        for ca in &spec.ca {
            let pem = read(ca, origin, "CA certificate")?;
            let roots = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(ca, origin, format!("CA certificate: {e}")))?;
            if roots.is_empty() {
                return Err(file_error(ca, origin, "no PEM certificate in it".into()));
            }
            for root in roots {
                let cert = reqwest::Certificate::from_der(&root)
                    .map_err(|e| file_error(ca, origin, format!("CA certificate: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pair) = spec.client.first() {
            if spec.client.len() > 1 {
                warn!(
                    upstream.registry = %registry,
                    upstream.endpoint = %label,
                    "several client certificates configured; presenting the first"
                );
            }
            let cert_pem = read(&pair.cert, origin, "client certificate")?;
            let certs = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(&pair.cert, origin, format!("client certificate: {e}")))?;
            if certs.is_empty() {
                return Err(file_error(
                    &pair.cert,
                    origin,
                    "no PEM certificate in it".into(),
                ));
            }
            let (key_file, key_pem) = match &pair.key {
                Some(k) => (k, read(k, origin, "client key")?),
                None => (&pair.cert, cert_pem.clone()),
            };
            // The error describes the PEM structure only, never the key bytes.
            PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| file_error(key_file, origin, format!("client key: {e}")))?;
            let mut identity_pem = cert_pem;
            if pair.key.is_some() {
                identity_pem.push(b'\n');
                identity_pem.extend_from_slice(&key_pem);
            }
            let identity = reqwest::Identity::from_pem(&identity_pem).map_err(|e| {
                file_error(
                    &pair.cert,
                    origin,
                    format!("client certificate and key: {e}"),
                )
            })?;
            builder = builder.identity(identity);
        }
        if spec.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(proxy) = &spec.proxy {
            let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|e| RegistryError::Config {
                path: origin.to_owned(),
                line: None,
                message: format!("proxy of {label}: {e}"),
            })?;
            builder = builder.proxy(proxy);
        }
        let http = builder.build().map_err(|e| RegistryError::Config {
            path: origin.to_owned(),
            line: None,
            message: format!("building the HTTP client for {label}: {}", chain(&e)),
        })?;
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            // Both were checked by the parser.
            if let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                v.set_sensitive(true);
                headers.append(n, v);
            }
        }
        Ok(Endpoint {
            add_ns: names::needs_ns(&spec.url, registry),
            label,
            headers,
            http,
            spec,
        })
    }

    /// The URL of `path` (`/<repo>/blobs/<digest>`) on this endpoint.
    pub(super) fn url(&self, path: &str, registry: &str) -> Result<Url, String> {
        let mut url = Url::parse(&format!("{}{path}", self.spec.api_root()))
            .map_err(|e| format!("{}{path}: {e}", self.label))?;
        if self.add_ns {
            url.query_pairs_mut().append_pair("ns", registry);
        }
        Ok(url)
    }
}

fn label(url: &Url) -> String {
    format!(
        "{}{}",
        url.origin().ascii_serialization(),
        url.path().trim_end_matches('/')
    )
}

fn read(file: &NamedFile, origin: &Path, what: &str) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(&file.path).map_err(|e| file_error(file, origin, format!("{what}: {e}")))
}

/// An error about `file`: located at the `hosts.toml` line that named it, or at the file
/// itself when it was found in the directory.
fn file_error(file: &NamedFile, origin: &Path, message: String) -> RegistryError {
    match file.line {
        Some(line) => RegistryError::Config {
            path: origin.to_owned(),
            line: Some(line),
            message: format!("{}: {message}", file.path.display()),
        },
        None => RegistryError::Config {
            path: file.path.clone(),
            line: None,
            message,
        },
    }
}

/// An error and its sources, `: `-joined (reqwest's own message hides the cause).
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}
