//! The upstream of a CRI-O / Podman request, from containers-registries.conf: which files
//! to read ([`ContainersFiles`]), the entries in force after reading them, and the
//! endpoints of one entry (its other mirrors, then its `location`), each with the
//! certificates containers/image would use (`<certs-dir>/<host:port>/`: `*.crt` CAs,
//! `*.cert` + `*.key` client pairs, the Docker layout that [`hosts_toml::from_cert_files`]
//! already reads for containerd).
//!
//! `insecure = true` (plain HTTP and unverified TLS allowed) gives two endpoints, HTTPS
//! without verification then plain HTTP, as containers/image tries them. A `location`
//! with a path (`registry.example.com/dockerhub`) puts the path after `/v2`, as
//! containers/image rewrites the repository. `docker.io` is reached at
//! `registry-1.docker.io`.
//!
//! Also here: [`Registries::resolve_namespaced`], which turns such a request's first path
//! component into the registry's client (cached, rebuilt when a file changes).
//!
//! Not here: the mirror's route, the format itself ([`registries_conf`]).

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::Url;
use tracing::info;

use super::hosts_toml::{self, Capabilities, EndpointSpec, Role};
use super::registries_conf::{self, ConfEntry, PullFromMirror};
use super::{
    Cached, FileStamp, Registries, RegistryClient, RegistryError, Source, Stamps, cert_stamps,
    names,
};

/// Where a CRI-O / Podman node keeps its registry configuration (host paths as this
/// process sees them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainersFiles {
    /// The main `registries.conf`; a missing file counts as empty.
    pub registries_conf: PathBuf,
    /// The drop-in directory (`*.conf`, read in lexical order after the main file).
    pub drop_in_dir: PathBuf,
    /// Certificate directories, in order; the first with a directory for a host wins.
    pub certs_dirs: Vec<PathBuf>,
}

impl ContainersFiles {
    /// The files read, in load order, with their stamps; the drop-in directory itself is
    /// included so that a new drop-in is noticed.
    pub(super) fn stamps(&self) -> Vec<(PathBuf, Option<FileStamp>)> {
        let mut out = vec![
            (
                self.registries_conf.clone(),
                FileStamp::read(&self.registries_conf),
            ),
            (self.drop_in_dir.clone(), FileStamp::read(&self.drop_in_dir)),
        ];
        for path in self.drop_ins() {
            let stamp = FileStamp::read(&path);
            out.push((path, stamp));
        }
        out
    }

    fn drop_ins(&self) -> Vec<PathBuf> {
        let mut names: Vec<String> = fs::read_dir(&self.drop_in_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".conf"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .map(|n| self.drop_in_dir.join(n))
            .collect()
    }

    /// Reads and merges every file: the entries in force.
    pub(super) fn entries(&self) -> Result<Vec<ConfEntry>, RegistryError> {
        let mut files = Vec::new();
        for path in std::iter::once(self.registries_conf.clone()).chain(self.drop_ins()) {
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(RegistryError::Config {
                        path,
                        line: None,
                        message: e.to_string(),
                    });
                }
            };
            files.push(registries_conf::parse(&text, &path).map_err(|e| {
                RegistryError::Config {
                    path: e.path,
                    line: Some(e.line),
                    message: e.message,
                }
            })?);
        }
        Ok(registries_conf::effective(files))
    }

    /// The certificate directory of `host` (`host[:port]`): the first that exists.
    fn cert_dir(&self, host: &str) -> Option<PathBuf> {
        self.certs_dirs
            .iter()
            .map(|d| d.join(host))
            .find(|d| d.is_dir())
    }

    /// The certificate directories looked at for `host`, for change detection.
    pub(super) fn cert_dir_candidates(&self, host: &str) -> Vec<PathBuf> {
        self.certs_dirs.iter().map(|d| d.join(host)).collect()
    }
}

/// The endpoints of `entry` for `registry`, in the order they are tried: the entry's
/// mirrors (this peer's own among them is dropped later), then its location.
pub(super) fn endpoint_specs(
    entry: &ConfEntry,
    registry: &str,
    files: &ContainersFiles,
) -> Result<Vec<EndpointSpec>, RegistryError> {
    let mut out = Vec::new();
    for m in &entry.mirrors {
        let pull = match (m.pull_from_mirror, entry.mirror_by_digest_only) {
            (Some(PullFromMirror::DigestOnly), _) | (None, true) => (true, false),
            (Some(PullFromMirror::TagOnly), _) => (false, true),
            _ => (true, true),
        };
        let caps = Capabilities {
            pull: pull.0,
            resolve: pull.1,
            push: false,
        };
        out.extend(specs_for(
            &m.location,
            m.insecure,
            Role::Mirror,
            caps,
            entry,
            files,
        )?);
    }
    let location = if entry.prefix.starts_with('*') && entry.location.is_empty() {
        registry
    } else {
        entry.location_or_prefix()
    };
    out.extend(specs_for(
        location,
        entry.insecure,
        Role::Server,
        Capabilities::ALL,
        entry,
        files,
    )?);
    Ok(out)
}

fn specs_for(
    location: &str,
    insecure: bool,
    role: Role,
    capabilities: Capabilities,
    entry: &ConfEntry,
    files: &ContainersFiles,
) -> Result<Vec<EndpointSpec>, RegistryError> {
    let (host, path) = registries_conf::split_location(location);
    let api_host = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    let api_path = if path.is_empty() {
        "/v2".to_owned()
    } else {
        format!("/v2/{path}")
    };
    let bad = |message: String| RegistryError::Config {
        path: entry.file.clone(),
        line: Some(entry.line),
        message,
    };
    let url = |scheme: &str| {
        Url::parse(&format!("{scheme}://{api_host}{api_path}"))
            .ok()
            .filter(Url::has_host)
            .ok_or_else(|| bad(format!("location {location:?} is not host[:port][/path]")))
    };
    let server = format!("https://{api_host}");
    let mut tls = match files.cert_dir(host) {
        Some(dir) => {
            let names: Vec<String> = fs::read_dir(&dir)
                .map_err(|e| RegistryError::Config {
                    path: dir.clone(),
                    line: None,
                    message: e.to_string(),
                })?
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            hosts_toml::from_cert_files(&dir, &names, &server)?
        }
        None => hosts_toml::implicit(&server, &entry.file)?,
    };
    tls.url = url("https")?;
    tls.role = role;
    tls.capabilities = capabilities;
    tls.skip_verify = insecure;
    tls.tls_probe = insecure;
    let mut out = vec![tls];
    if insecure {
        let mut plain = hosts_toml::implicit(&server, &entry.file)?;
        plain.url = url("http")?;
        plain.role = role;
        plain.capabilities = capabilities;
        out.push(plain);
    }
    Ok(out)
}

/// `<dir>/<host>` for every endpoint host of `entry`, for change detection: a
/// certificate directory that appears or goes away rebuilds the client.
pub(super) fn cert_dirs_of(
    entry: &ConfEntry,
    registry: &str,
    files: &ContainersFiles,
) -> Vec<PathBuf> {
    let mut hosts: Vec<&str> = entry
        .mirrors
        .iter()
        .map(|m| registries_conf::split_location(&m.location).0)
        .collect();
    hosts.push(
        if entry.prefix.starts_with('*') && entry.location.is_empty() {
            registry
        } else {
            registries_conf::split_location(entry.location_or_prefix()).0
        },
    );
    hosts
        .into_iter()
        .flat_map(|h| files.cert_dir_candidates(h))
        .collect()
}

impl Registries {
    /// For a request without `ns` (CRI-O, Podman): when the first component of `name`
    /// names a registry that containers-registries.conf configures
    /// ([`RegistriesConfig::containers`](super::RegistriesConfig::containers); the component is written by
    /// [`names::mirror_namespace`]), that registry's client and the repository below
    /// the component. `Ok(None)`: not such a request (no containers config, or the
    /// component is not a configured registry): the caller goes on as without `ns`.
    pub async fn resolve_namespaced(
        &self,
        name: &str,
    ) -> Result<Option<(Arc<RegistryClient>, String)>, RegistryError> {
        if self.inner.config.containers.is_none() {
            return Ok(None);
        }
        let (this, name) = (self.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || this.resolve_namespaced_blocking(&name))
            .await
            .unwrap_or_else(|e| {
                Err(RegistryError::Config {
                    path: PathBuf::new(),
                    line: None,
                    message: format!("resolving the registry failed: {e}"),
                })
            })
    }

    /// [`Self::resolve_namespaced`], blocking on the file system. The client is cached
    /// per registry and rebuilt when a registries.conf file, the drop-in directory, a
    /// certificate directory or a certificate changes.
    pub fn resolve_namespaced_blocking(
        &self,
        name: &str,
    ) -> Result<Option<(Arc<RegistryClient>, String)>, RegistryError> {
        let Some(files) = &self.inner.config.containers else {
            return Ok(None);
        };
        let Some((first, repo)) = name.split_once('/') else {
            return Ok(None);
        };
        let Some(registry) = names::registry_of_namespace(first) else {
            return Ok(None);
        };
        let key = format!("containers:{registry}");
        let stamps = files.stamps();
        {
            let cache = self.inner.cache.lock().expect("registry cache lock");
            if let Some(c) = cache.get(&key)
                && matches!(&c.source, Source::Containers(s) if *s == stamps)
                && c.files.iter().all(|(p, s)| FileStamp::read(p) == *s)
            {
                return Ok(Some((c.client.clone(), repo.to_owned())));
            }
        }
        let entries = files.entries()?;
        let Some(entry) = registries_conf::entry_for(&entries, &registry) else {
            return Ok(None);
        };
        let specs = endpoint_specs(entry, &registry, files)?;
        let (specs, _) = hosts_toml::without_own_mirrors(specs, &self.inner.own);
        let mut watched: Stamps = cert_dirs_of(entry, &registry, files)
            .into_iter()
            .map(|d| {
                let s = FileStamp::read(&d);
                (d, s)
            })
            .collect();
        watched.extend(cert_stamps(&specs));
        let client = Arc::new(RegistryClient::build(
            &registry,
            &entry.file,
            specs,
            &self.inner.config,
        )?);
        info!(
            upstream.registry = %registry,
            config.path = %entry.file.display(),
            upstream.endpoints = ?client.endpoints(),
            "upstream registry configured from registries.conf"
        );
        self.inner
            .cache
            .lock()
            .expect("registry cache lock")
            .insert(
                key,
                Cached {
                    source: Source::Containers(stamps),
                    files: watched,
                    client: client.clone(),
                },
            );
        Ok(Some((client, repo.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn entry(text: &str) -> ConfEntry {
        registries_conf::parse(text, Path::new("/r.conf"))
            .unwrap()
            .remove(0)
    }

    fn files(certs: &Path) -> ContainersFiles {
        ContainersFiles {
            registries_conf: "/nonexistent/registries.conf".into(),
            drop_in_dir: "/nonexistent/registries.conf.d".into(),
            certs_dirs: vec![certs.join("a"), certs.join("b")],
        }
    }

    #[test]
    fn mirrors_then_location_with_namespaces_and_insecure_twins() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:7650/docker.io\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"cache.example/hub\"\npull-from-mirror = \"tag-only\"\n",
        );
        let specs = endpoint_specs(&e, "docker.io", &files(dir.path())).unwrap();
        let urls: Vec<(&str, Role, bool, bool)> = specs
            .iter()
            .map(|s| {
                (
                    s.url.as_str(),
                    s.role,
                    s.capabilities.pull,
                    s.capabilities.resolve,
                )
            })
            .collect();
        assert_eq!(
            urls,
            vec![
                (
                    "https://127.0.0.1:7650/v2/docker.io",
                    Role::Mirror,
                    true,
                    false
                ),
                (
                    "http://127.0.0.1:7650/v2/docker.io",
                    Role::Mirror,
                    true,
                    false
                ),
                ("https://cache.example/v2/hub", Role::Mirror, false, true),
                ("https://registry-1.docker.io/v2", Role::Server, true, true),
            ]
        );
        assert!(specs[0].tls_probe && specs[0].skip_verify);
        assert!(!specs[1].tls_probe && !specs[3].skip_verify);
    }

    #[test]
    fn certificates_come_from_the_first_certs_dir_with_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("b/r.example:5000");
        std::fs::create_dir_all(&host).unwrap();
        for f in ["ca.crt", "client.cert", "client.key"] {
            std::fs::write(host.join(f), "x").unwrap();
        }
        let e = entry("[[registry]]\nlocation = \"r.example:5000\"\n");
        let specs = endpoint_specs(&e, "r.example:5000", &files(dir.path())).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].url.as_str(), "https://r.example:5000/v2");
        assert_eq!(specs[0].ca[0].path, host.join("ca.crt"));
        assert_eq!(specs[0].client[0].cert.path, host.join("client.cert"));
        assert_eq!(
            specs[0].client[0].key.as_ref().unwrap().path,
            host.join("client.key")
        );
    }

    #[test]
    fn registries_resolve_the_path_namespace_and_follow_file_changes() {
        use crate::registry::{Registries, RegistriesConfig};
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            "[[registry]]\nlocation = \"r.example:5000\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:7650/r.example__5000\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"m.example/x\"\n",
        )
        .unwrap();
        let mut config = RegistriesConfig::new("/nonexistent/hosts".into());
        config.own_mirrors = vec!["http://127.0.0.1:7650".into()];
        config.containers = Some(ContainersFiles {
            registries_conf: conf.clone(),
            drop_in_dir: dir.path().join("registries.conf.d"),
            certs_dirs: vec![dir.path().join("certs.d")],
        });
        let registries = Registries::new(config);
        let (client, repo) = registries
            .resolve_namespaced_blocking("r.example__5000/team/app")
            .unwrap()
            .unwrap();
        assert_eq!(repo, "team/app");
        assert_eq!(client.registry(), "r.example:5000");
        // The own mirror is gone; the insecure location is HTTPS then plain HTTP.
        assert_eq!(
            client.endpoints(),
            [
                "https://m.example/v2/x",
                "https://r.example:5000/v2",
                "http://r.example:5000/v2"
            ]
        );
        // Not a configured registry: the caller goes on as without ns.
        for name in ["library/nginx", "other.example/x/y", "r.example__5000"] {
            assert!(
                registries
                    .resolve_namespaced_blocking(name)
                    .unwrap()
                    .is_none(),
                "{name}"
            );
        }
        // A new drop-in replaces the entry: the client is rebuilt.
        std::fs::create_dir_all(dir.path().join("registries.conf.d")).unwrap();
        std::fs::write(
            dir.path().join("registries.conf.d/50-move.conf"),
            "[[registry]]\nprefix = \"r.example:5000\"\nlocation = \"new.example\"\n",
        )
        .unwrap();
        let (client, _) = registries
            .resolve_namespaced_blocking("r.example__5000/team/app")
            .unwrap()
            .unwrap();
        assert_eq!(client.endpoints(), ["https://new.example/v2"]);
        // A broken file is an error naming it.
        std::fs::write(&conf, "[[registry]\n").unwrap();
        let err = registries
            .resolve_namespaced_blocking("r.example__5000/team/app")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:1:", conf.display())),
            "{err}"
        );
    }
}
