//! The upstream registry client: how the peer reaches the real registry when no peer can
//! serve, with that registry's own TLS settings and mirrors read from containerd's
//! `hosts.toml` files.
//!
//! [`Registries::resolve`] turns containerd's `ns` into a [`RegistryClient`] (on tokio's
//! blocking pool: it touches the disk): it finds
//! `<hosts_dir>/<ns>/hosts.toml` the way containerd does (`host_port_`, `host:port`,
//! then `_default`, in each hosts dir in turn until one has a directory for it), parses it, drops the entries that point at this peer's own mirror,
//! builds one `reqwest::Client` per endpoint (rustls; `ca`, `client`, `skip_verify`,
//! `proxy`, `dial_timeout`; TCP keepalive; the registry's [`UpstreamPolicy`]) and caches the result until the file (or a certificate it
//! names) changes. [`RegistryClient::send`] tries the endpoints in order with retries;
//! [`RegistryClient::blob_upstream`] is the download engine's view of one blob.
//!
//! Layout:
//! - `config.rs`: [`RegistriesConfig`] and [`UpstreamPolicy`] (defaults, validation) and
//!   the default upstream.
//! - [`hosts_toml`]: the pure parser (text and directory in, endpoints out).
//! - [`names`]: the `ns` grammar, directory candidates, implicit servers, loop detection,
//!   the registry-as-path-component form CRI-O and Podman requests carry.
//! - [`registries_conf`]: containers-registries.conf, parsed and merged (pure); shared
//!   with node setup (`shoal-peer containers`).
//! - `containers.rs`: CRI-O and Podman requests (no `ns`, the registry in the path):
//!   [`Registries::resolve_namespaced`] and the endpoints of a registries.conf entry.
//! - `endpoint.rs`: one configured endpoint and its HTTP client (reads certificates).
//! - `client.rs`: [`RegistryClient`], the try-in-order-with-retries loop.
//! - `blob.rs`: [`BlobUpstream`] and the blob response parsing shared with the engine.
//! - [`challenge`]: a `Bearer` challenge, for the anonymous token that tells whether a
//!   repository of a token registry is public.
//! - `body.rs`: [`idle_limited`], a response body that fails when upstream goes quiet.
//! - `credentials.rs`: [`CredentialPool`], credentials upstream recently authorised per
//!   repository, which a shared download falls back on when its own expires.
//!
//! Not here: the mirror's HTTP surface and its OCI error bodies, the token dance (a 401
//! and its `WWW-Authenticate` are returned to the caller, who relays them to containerd),
//! credentials beyond forwarding containerd's `Authorization` (and keeping recently
//! authorised ones in memory for shared downloads), pushing,
//! containerd's HTTP fallback for `http://` hosts that also have TLS settings.

mod blob;
mod body;
pub mod challenge;
mod client;
mod config;
mod containers;
mod credentials;
mod endpoint;
pub mod hosts_toml;
pub mod names;
pub mod registries_conf;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use reqwest::Url;
use reqwest::header::HeaderValue;
use shoal_proto::Digest;
use tracing::{debug, info};

pub use blob::BlobUpstream;
pub use body::{BodyError, idle_limited};
pub use client::RegistryClient;
pub use config::{RegistriesConfig, UpstreamPolicy};
pub use containers::ContainersFiles;
pub use credentials::CredentialPool;

use config::DefaultUpstream;
use hosts_toml::EndpointSpec;
use names::Authority;

/// Why a registry could not be resolved or reached.
///
/// For the mirror: [`UnknownRegistry`](Self::UnknownRegistry) and
/// [`NoDefault`](Self::NoDefault) are the request's fault (400);
/// [`Config`](Self::Config) is this node's (log it; answer 5xx so containerd moves on);
/// [`Unreachable`](Self::Unreachable) is upstream's (answer 5xx quickly for the same
/// reason). None of them is worth retrying at once against the same registry: the retries
/// were already made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// `ns` is not a registry host (`host[:port]`), or no directory under the hosts dir
    /// configures it (neither its own nor `_default`) and it is not the default upstream.
    #[error("unknown registry {0:?}: not a registry host, or no hosts.toml configures it")]
    UnknownRegistry(String),
    /// The request names no registry and there is no default upstream.
    #[error("the request names no registry (no ns) and no default upstream is configured")]
    NoDefault,
    /// A `hosts.toml` (or a certificate it names) is broken.
    #[error("{}{}: {message}", .path.display(), line_suffix(*.line))]
    Config {
        /// The `hosts.toml`, or the certificate file when no `hosts.toml` names it.
        path: PathBuf,
        /// 1-based line in `path`, when known.
        line: Option<usize>,
        /// What is wrong (never a header value or key material).
        message: String,
    },
    /// Every endpoint failed: connect errors or 5xx answers after the retries, or no
    /// endpoint may serve the request (capabilities).
    #[error("registry {registry} unreachable: {last_error}")]
    Unreachable {
        /// The registry (`docker.io`).
        registry: String,
        /// What the last endpoint tried said.
        last_error: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// The manifest media types the peer asks for when it fetches a manifest by digest
/// itself (through the swarm, or to probe a repository): every type containerd
/// accepts, so that upstream answers what containerd would have been given.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What to fetch from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `/v2/<repo>/blobs/<digest>`.
    Blob(Digest),
    /// `/v2/<repo>/manifests/<reference>`; a reference with `:` is a digest (needs the
    /// `pull` capability), anything else a tag (needs `resolve`).
    Manifest(String),
}

impl Object {
    /// Whether this is a manifest by tag (only hosts with `resolve` may answer).
    pub fn is_tag(&self) -> bool {
        matches!(self, Object::Manifest(r) if !r.contains(':'))
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Blob(d) => write!(f, "blobs/{d}"),
            Object::Manifest(r) => write!(f, "manifests/{r}"),
        }
    }
}

/// One request to upstream.
#[derive(Clone)]
pub struct UpstreamRequest {
    /// GET or HEAD.
    pub method: reqwest::Method,
    /// The repository (`library/nginx`), already validated by the mirror.
    pub repo: String,
    /// The blob or manifest.
    pub object: Object,
    /// Every `Accept` value, forwarded as one comma-joined header (values that are not
    /// valid header text are dropped).
    pub accept: Vec<String>,
    /// containerd's `Authorization`, forwarded verbatim, marked sensitive, never logged.
    /// It replaces any `Authorization` a `hosts.toml` `[header]` sets. reqwest drops it
    /// on redirects to another host or port.
    pub authorization: Option<HeaderValue>,
    /// Adds `Range: bytes=N-`.
    pub range_from: Option<u64>,
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("repo", &self.repo)
            .field("object", &self.object)
            .field("accept", &self.accept)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("range_from", &self.range_from)
            .finish()
    }
}

/// Every upstream registry this peer may fetch from, each resolved on first use and
/// cached until its `hosts.toml` changes. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Registries {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistriesConfig,
    own: Vec<Authority>,
    default: Option<DefaultUpstream>,
    cache: Mutex<HashMap<String, Cached>>,
}

/// Certificate files and their stamps (`None`: missing).
type Stamps = Vec<(PathBuf, Option<FileStamp>)>;

struct Cached {
    source: Source,
    files: Stamps,
    client: Arc<RegistryClient>,
}

/// Where a registry's configuration comes from, with the stamp of the file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `<dir>/hosts.toml`, non-empty.
    HostsToml(PathBuf, FileStamp),
    /// A registry directory without `hosts.toml`: Docker's certificate layout.
    CertDir(PathBuf, FileStamp),
    /// No directory: the default upstream's implicit configuration.
    Implicit,
    /// containers-registries.conf: its files and the certificate directories looked at.
    Containers(Stamps),
}

/// What changes when a file is rewritten (in place or by rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    mtime: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(m: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            mtime: m.modified().ok(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    fn read(path: &Path) -> Option<FileStamp> {
        fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries")
            .field("hosts_dirs", &self.inner.config.hosts_dirs)
            .field("default_upstream", &self.inner.config.default_upstream)
            .finish_non_exhaustive()
    }
}

impl Registries {
    /// Registries configured by `config`; nothing is read until [`Self::resolve`].
    pub fn new(config: RegistriesConfig) -> Self {
        let own = config
            .own_mirrors
            .iter()
            .filter_map(|m| Authority::parse(m))
            .collect();
        let default = config
            .default_upstream
            .as_deref()
            .and_then(DefaultUpstream::parse);
        Registries {
            inner: Arc::new(Inner {
                config,
                own,
                default,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The client for containerd's `ns` (`None`: the default upstream), as
    /// [`Self::resolve_blocking`] finds it, on tokio's blocking pool: checking the files'
    /// stamps, and on a change reading and parsing `hosts.toml` and the certificates,
    /// touch the disk, and must not hold up an async worker (mirror bodies and QUIC
    /// uploads run there).
    pub async fn resolve(&self, ns: Option<&str>) -> Result<Arc<RegistryClient>, RegistryError> {
        let (this, ns) = (self.clone(), ns.map(str::to_owned));
        tokio::task::spawn_blocking(move || this.resolve_blocking(ns.as_deref()))
            .await
            .unwrap_or_else(|e| {
                Err(RegistryError::Config {
                    path: self
                        .inner
                        .config
                        .hosts_dirs
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                    line: None,
                    message: format!("resolving the registry failed: {e}"),
                })
            })
    }

    /// The client for containerd's `ns` (`None`: the default upstream); blocks on the
    /// file system (use [`Self::resolve`] from async code).
    ///
    /// Reads `<hosts_dir>/<ns>/hosts.toml` (or `<host>_<port>_/`, or `_default/` when the
    /// registry has no directory, as containerd does), from the first hosts dir that has
    /// one of these directories; a directory without `hosts.toml`
    /// means Docker's layout (`*.crt` CAs, `*.cert`/`*.key` client pairs). The client is
    /// cached per registry and rebuilt when the file, the directory (certificate layout)
    /// or a certificate file changes. Errors are not cached: the next call reads again.
    pub fn resolve_blocking(&self, ns: Option<&str>) -> Result<Arc<RegistryClient>, RegistryError> {
        let registry = match ns {
            Some(ns) if names::is_registry_host(ns) => ns.to_owned(),
            Some(ns) => return Err(RegistryError::UnknownRegistry(ns.to_owned())),
            None => match (&self.inner.default, &self.inner.config.default_upstream) {
                (Some(d), _) => d.registry.clone(),
                (None, Some(raw)) => return Err(RegistryError::UnknownRegistry(raw.clone())),
                (None, None) => return Err(RegistryError::NoDefault),
            },
        };
        let source = self.source(&registry)?;
        {
            let cache = self.inner.cache.lock().expect("registry cache lock");
            if let Some(c) = cache.get(&registry)
                && c.source == source
                && c.files.iter().all(|(p, s)| FileStamp::read(p) == *s)
            {
                return Ok(c.client.clone());
            }
        }
        let (mut client, files) = self.load(&registry, &source)?;
        let in_default_dir = |dir: Option<&Path>| {
            dir.and_then(Path::file_name)
                .is_some_and(|n| n == names::DEFAULT_DIR)
        };
        client.catch_all = match &source {
            Source::HostsToml(file, _) => in_default_dir(file.parent()),
            Source::CertDir(dir, _) => in_default_dir(Some(dir)),
            Source::Implicit | Source::Containers(_) => false,
        };
        let client = Arc::new(client);
        self.inner
            .cache
            .lock()
            .expect("registry cache lock")
            .insert(
                registry,
                Cached {
                    source,
                    files,
                    client: client.clone(),
                },
            );
        Ok(client)
    }

    /// Finds the registry's directory, as containerd does: in each hosts dir in order,
    /// the first candidate (`host_port_`, `host:port`, `_default`) that exists; the first
    /// hosts dir with one wins (containerd's `hostDirFromRoots`), so a `_default` in an
    /// earlier dir hides the registry's own directory in a later one.
    fn source(&self, registry: &str) -> Result<Source, RegistryError> {
        for root in &self.inner.config.hosts_dirs {
            if let Some(source) = Self::source_in(root, registry)? {
                return Ok(source);
            }
        }
        match &self.inner.default {
            Some(d) if d.registry == registry => Ok(Source::Implicit),
            _ => Err(RegistryError::UnknownRegistry(registry.to_owned())),
        }
    }

    /// The registry's directory under one hosts dir, if it has one.
    fn source_in(root: &Path, registry: &str) -> Result<Option<Source>, RegistryError> {
        let config_error = |path: PathBuf, e: std::io::Error| RegistryError::Config {
            path,
            line: None,
            message: e.to_string(),
        };
        for candidate in names::dir_candidates(registry) {
            let dir = root.join(candidate);
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {
                    let file = dir.join("hosts.toml");
                    return match fs::metadata(&file) {
                        Ok(f) if f.len() > 0 => {
                            Ok(Some(Source::HostsToml(file, FileStamp::of(&f))))
                        }
                        Ok(_) => Ok(Some(Source::CertDir(dir, FileStamp::of(&m)))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            Ok(Some(Source::CertDir(dir, FileStamp::of(&m))))
                        }
                        Err(e) => Err(config_error(file, e)),
                    };
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(config_error(dir, e)),
            }
        }
        Ok(None)
    }

    /// The server used when the configuration names none.
    fn implicit_server(&self, registry: &str) -> String {
        match &self.inner.default {
            Some(d) if d.registry == registry => d.server.clone(),
            _ => names::implicit_server(registry),
        }
    }

    /// Reads and builds a registry's client; also returns the certificate files read,
    /// with their stamps taken before reading them.
    fn load(
        &self,
        registry: &str,
        source: &Source,
    ) -> Result<(RegistryClient, Stamps), RegistryError> {
        let config = &self.inner.config;
        let implicit = self.implicit_server(registry);
        let (specs, origin): (Vec<EndpointSpec>, PathBuf) = match source {
            Source::HostsToml(path, _) => {
                let text = fs::read_to_string(path).map_err(|e| RegistryError::Config {
                    path: path.clone(),
                    line: None,
                    message: e.to_string(),
                })?;
                let parsed = hosts_toml::parse(&text, path, &implicit)?;
                if !parsed.ignored.is_empty() {
                    info!(
                        upstream.registry = %registry,
                        config.path = %path.display(),
                        config.ignored = ?parsed.ignored,
                        "hosts.toml keys ignored"
                    );
                }
                (parsed.endpoints, path.clone())
            }
            Source::CertDir(dir, _) => {
                let names = fs::read_dir(dir)
                    .and_then(|entries| {
                        entries
                            .map(|e| {
                                let e = e?;
                                Ok((e.file_type()?.is_dir(), e.file_name()))
                            })
                            .collect::<Result<Vec<_>, std::io::Error>>()
                    })
                    .map_err(|e| RegistryError::Config {
                        path: dir.clone(),
                        line: None,
                        message: e.to_string(),
                    })?
                    .into_iter()
                    .filter(|(is_dir, _)| !is_dir)
                    .filter_map(|(_, n)| n.into_string().ok())
                    .collect::<Vec<_>>();
                let spec = hosts_toml::from_cert_files(dir, &names, &implicit)?;
                (vec![spec], dir.clone())
            }
            Source::Containers(_) => {
                return Err(RegistryError::Config {
                    path: config.hosts_dirs.first().cloned().unwrap_or_default(),
                    line: None,
                    message: "registries.conf sources are resolved by resolve_namespaced".into(),
                });
            }
            Source::Implicit => {
                let origin = config.hosts_dirs.first().cloned().unwrap_or_default();
                (vec![hosts_toml::implicit(&implicit, &origin)?], origin)
            }
        };
        let (specs, skipped) = hosts_toml::without_own_mirrors(specs, &self.inner.own);
        if !skipped.is_empty() {
            debug!(
                upstream.registry = %registry,
                upstream.skipped = ?skipped.iter().map(Url::as_str).collect::<Vec<_>>(),
                "own mirror entries skipped"
            );
        }
        let files = cert_stamps(&specs);
        let client = RegistryClient::build(registry, &origin, specs, config)?;
        info!(
            upstream.registry = %registry,
            config.path = %origin.display(),
            upstream.endpoints = ?client.endpoints(),
            "upstream registry configured"
        );
        Ok((client, files))
    }
}

/// The certificate files `specs` name, with their stamps taken before they are read.
fn cert_stamps(specs: &[EndpointSpec]) -> Stamps {
    specs
        .iter()
        .flat_map(|s| {
            s.ca.iter().chain(
                s.client
                    .iter()
                    .flat_map(|c| std::iter::once(&c.cert).chain(&c.key)),
            )
        })
        .map(|f| (f.path.clone(), FileStamp::read(&f.path)))
        .collect()
}

#[cfg(test)]
mod tests;
