//! [`RegistriesConfig`]: where the registries are configured and how hard to try them
//! ([`UpstreamPolicy`], per registry), with its defaults and validation; and the default upstream, parsed.
//!
//! Not here: reading `hosts.toml` (`hosts_toml.rs`), the cache (`mod.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::names::{self, Authority};

/// Where the upstream registries are configured, and how hard to try them.
#[derive(Debug, Clone)]
pub struct RegistriesConfig {
    /// containerd's hosts directories (`config_path`, `:`-separated there), in the order
    /// containerd searches them, e.g. `/etc/containerd/certs.d` then
    /// `/etc/docker/certs.d` on EKS. A registry's configuration comes from the first one
    /// that has a directory for it (`host_port_`, `host:port`, or `_default`), as
    /// containerd's `hostDirFromRoots` does; later ones are not merged in. A missing
    /// directory is not an error: every registry is then unknown except the default
    /// upstream.
    pub hosts_dirs: Vec<PathBuf>,
    /// CRI-O / Podman: containers-registries.conf and its certificate directories. When
    /// set, a request without `ns` whose first path component names a registry with an
    /// entry there (`/v2/docker.io/library/nginx/…`, as `shoal-peer containers configure`
    /// sets the mirror up) goes to that entry's mirrors and location. Default: none.
    pub containers: Option<super::ContainersFiles>,
    /// The registry used when containerd sends no `ns`: a host (`ghcr.io`,
    /// `127.0.0.1:5000`) or a URL (`http://127.0.0.1:5000`, whose scheme is kept).
    /// Default: none (requests without `ns` get [`RegistryError::NoDefault`](super::RegistryError::NoDefault)).
    pub default_upstream: Option<String>,
    /// URLs of this peer's own mirror (e.g. `http://127.0.0.1:7650`): `hosts.toml`
    /// entries with the same host and port (loopback names count as one) are skipped, so
    /// the mirror never asks itself. Default: none.
    pub own_mirrors: Vec<String>,
    /// How hard to try a registry that has no entry in `per_registry`. Default:
    /// [`UpstreamPolicy::default`].
    pub policy: UpstreamPolicy,
    /// Per registry, by its name as containerd's `ns` gives it (`docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`): replaces `policy` for that registry. Default: empty.
    pub per_registry: BTreeMap<String, UpstreamPolicy>,
}

/// How hard to try one registry: timeouts and attempts. The daemon reads them from
/// `[registries._default]` and `[registries."HOST"]` in its config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// Time to establish a connection (TCP and TLS) to one endpoint; a host's
    /// `dial_timeout` in `hosts.toml` replaces it for that host. Default 5 s. Tripping it
    /// counts as a connect error (retried).
    pub connect_timeout: Duration,
    /// Time from sending a request to its response headers. Default 30 s. Bodies are
    /// streamed and not bounded by it. Tripping it moves on to the next endpoint without
    /// retrying this one.
    pub request_timeout: Duration,
    /// Longest wait for the next chunk of a blob body. Default 10 s. Tripping it fails
    /// the body stream with [`UpstreamError::Http`](crate::engine::UpstreamError::Http),
    /// so the download resumes with `Range` from its first missing piece (a connection
    /// that a NAT or load balancer dropped silently costs this long, not forever).
    pub idle_timeout: Duration,
    /// Tries per endpoint, at least 1. Default 3. Only connect errors and 5xx answers are
    /// retried, after an exponential backoff from 100 ms with jitter; never a 4xx.
    pub attempts: u32,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            attempts: 3,
        }
    }
}

impl UpstreamPolicy {
    /// Every problem at once, each prefixed with `what` (zero timeouts or attempts).
    pub fn problems(&self, what: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, d) in [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
            ("idle timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                problems.push(format!("{what}{name} must be above zero"));
            }
        }
        if self.attempts == 0 {
            problems.push(format!("{what}attempts must be at least 1"));
        }
        problems
    }
}

impl RegistriesConfig {
    /// The defaults, reading `hosts.toml` files under the one directory `hosts_dir`.
    pub fn new(hosts_dir: PathBuf) -> Self {
        Self::with_hosts_dirs(vec![hosts_dir])
    }

    /// The defaults, reading `hosts.toml` files under `hosts_dirs`, searched in order.
    pub fn with_hosts_dirs(hosts_dirs: Vec<PathBuf>) -> Self {
        RegistriesConfig {
            hosts_dirs,
            containers: None,
            default_upstream: None,
            own_mirrors: Vec::new(),
            policy: UpstreamPolicy::default(),
            per_registry: BTreeMap::new(),
        }
    }

    /// The policy for `registry`: its own entry, else [`Self::policy`].
    pub fn policy_for(&self, registry: &str) -> &UpstreamPolicy {
        self.per_registry.get(registry).unwrap_or(&self.policy)
    }

    /// Every problem with the settings at once (a default upstream or own mirror that
    /// does not parse, zero timeouts or attempts, a per-registry key that is not a
    /// registry host). [`Registries::new`](super::Registries::new) does not refuse them;
    /// call this when loading the daemon's configuration.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(d) = &self.default_upstream
            && DefaultUpstream::parse(d).is_none()
        {
            problems.push(format!(
                "default upstream {d:?} is neither a registry host nor an http(s) URL"
            ));
        }
        for m in &self.own_mirrors {
            if Authority::parse(m).is_none() {
                problems.push(format!("own mirror {m:?} is not a URL"));
            }
        }
        problems.extend(self.policy.problems(""));
        for (registry, policy) in &self.per_registry {
            if !names::is_registry_host(registry) {
                problems.push(format!("{registry:?} is not a registry host"));
            }
            problems.extend(policy.problems(&format!("{registry}: ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The default upstream, parsed.
#[derive(Debug, Clone)]
pub(super) struct DefaultUpstream {
    /// Its registry name (`127.0.0.1:5000`).
    pub(super) registry: String,
    /// Its server URL when given as a URL (scheme kept), else the implicit server.
    pub(super) server: String,
}

impl DefaultUpstream {
    pub(super) fn parse(s: &str) -> Option<DefaultUpstream> {
        if s.contains("://") {
            let url = Url::parse(s)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))?;
            let registry = names::registry_of(&url)?;
            Some(DefaultUpstream {
                registry,
                server: s.trim_end_matches('/').to_owned(),
            })
        } else {
            names::is_registry_host(s).then(|| DefaultUpstream {
                registry: s.to_owned(),
                server: names::implicit_server(s),
            })
        }
    }
}
