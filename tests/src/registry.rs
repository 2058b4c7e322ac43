//! A real CNCF distribution registry (`docker-registry serve`, Debian's package) on
//! 127.0.0.1, with its storage and access log in a directory the test owns. Stopped when
//! dropped.
//!
//! Plain HTTP by default ([`Registry::start`]); [`Registry::start_with`] adds TLS
//! (`http.tls.certificate`/`key`) and, with client CAs, requires a client certificate
//! (`http.tls.clientcas`), requires credentials ([`RegistryAuth`]: `htpasswd` Basic, or
//! bearer tokens from [`crate::token_auth::TokenService`]), and can share another
//! registry's storage so that what was pushed without TLS or auth (with
//! [`Registry::stage`]) is served with them too.
//!
//! [`Registry::access_log`] parses its access log (method, path, status, bytes, user
//! agent), which is how tests count what upstream served and to whom.
//!
//! Not here: generating certificates (see [`crate::tls`]), pushing images (see
//! [`crate::image`]).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running `docker-registry`.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    data: PathBuf,
    tls: bool,
}

/// One request in the registry's access log (Apache's combined format:
/// `127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 200 1234 "" "containerd/1.6.20"`). The
/// registry writes the line when it has finished answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// The request target, e.g. `/v2/demo/app/blobs/sha256:…` (with its query, if any).
    pub path: String,
    /// The response status.
    pub status: u16,
    /// Body bytes written to the client (for a cut download: what got out).
    pub bytes: u64,
    /// The client's `User-Agent` (`shoal-peer/…`, `containerd/…`, `skopeo/…`).
    pub user_agent: String,
}

impl Access {
    /// Parses one line of the combined format; `None` for other lines (the registry's
    /// own logrus lines share the file).
    pub fn parse(line: &str) -> Option<Access> {
        // host ident user [date] "request" status bytes "referer" "agent"
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut request = request.split(' ');
        let method = request.next()?.to_owned();
        let path = request.next()?.to_owned();
        let mut fields = rest.trim_start().splitn(3, ' ');
        let status = fields.next()?.parse().ok()?;
        let bytes = fields.next()?.parse().unwrap_or(0);
        let quoted: Vec<&str> = fields.next()?.split('"').collect();
        let user_agent = quoted.get(3).copied().unwrap_or_default().to_owned();
        Some(Access {
            method,
            path,
            status,
            bytes,
            user_agent,
        })
    }

    /// Whether this is a `GET` of the blob `digest` (`sha256:…`), in any repository.
    pub fn is_blob_get(&self, digest: &str) -> bool {
        self.method == "GET"
            && self
                .path
                .split('?')
                .next()
                .is_some_and(|p| p.ends_with(&format!("/blobs/{digest}")))
    }

    /// Whether this is a `GET` of the manifest `reference` (tag or digest), in any
    /// repository.
    pub fn is_manifest_get(&self, reference: &str) -> bool {
        self.method == "GET"
            && self
                .path
                .split('?')
                .next()
                .is_some_and(|p| p.ends_with(&format!("/manifests/{reference}")))
    }

    /// Whether the client was a Shoal peer (its upstream client's `User-Agent`).
    pub fn from_shoal(&self) -> bool {
        self.user_agent.starts_with("shoal-peer/")
    }
}

/// TLS settings of a registry (PEM files).
#[derive(Debug, Clone)]
pub struct RegistryTls {
    /// The server certificate (`http.tls.certificate`).
    pub certificate: PathBuf,
    /// Its key (`http.tls.key`).
    pub key: PathBuf,
    /// CAs of accepted client certificates (`http.tls.clientcas`); when not empty, a
    /// client certificate from one of them is required.
    pub client_cas: Vec<PathBuf>,
}

/// How to start a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with these settings instead of plain HTTP.
    pub tls: Option<RegistryTls>,
    /// Store under this directory instead of `<dir>/data` (e.g. another registry's
    /// [`Registry::data_dir`], to serve what was pushed there).
    pub storage: Option<PathBuf>,
    /// A pull-through cache of this upstream URL (`proxy.remoteurl`).
    pub proxy_remote: Option<String>,
    /// Run inside this network namespace (`ip netns exec`), listening on `listen`.
    pub netns: Option<NetnsListen>,
    /// Require credentials (`auth:`).
    pub auth: Option<RegistryAuth>,
}

/// How a registry authenticates its clients.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// `auth: htpasswd`: HTTP Basic against this file of bcrypt lines (see
    /// [`crate::token_auth::htpasswd_line`]). Every request needs a valid user.
    Htpasswd {
        /// The htpasswd file.
        path: PathBuf,
    },
    /// `auth: token`: bearer JWTs from a token service (see
    /// [`crate::token_auth::TokenService`]); a request without one gets a 401 naming
    /// `realm`, [`SERVICE`](crate::token_auth::SERVICE) and the scope.
    Token {
        /// The token endpoint's URL.
        realm: String,
        /// The PEM certificate(s) whose keys sign the tokens (`rootcertbundle`).
        root_cert_bundle: PathBuf,
    },
}

impl RegistryAuth {
    fn yaml(&self) -> String {
        match self {
            RegistryAuth::Htpasswd { path } => format!(
                "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                path.display()
            ),
            RegistryAuth::Token {
                realm,
                root_cert_bundle,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                crate::token_auth::SERVICE,
                crate::token_auth::ISSUER,
                root_cert_bundle.display()
            ),
        }
    }
}

/// Where a registry in a network namespace listens.
#[derive(Debug, Clone)]
pub struct NetnsListen {
    /// The namespace (a [`crate::netns::Host`]'s `ns`).
    pub ns: String,
    /// The address inside it.
    pub listen: SocketAddr,
}

impl Registry {
    /// Starts a plain HTTP registry storing under `dir` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &RegistryOptions::default())
    }

    /// Starts a registry with `options`, its config and log under `dir`, and waits until
    /// it accepts connections.
    ///
    /// On 127.0.0.1 a registry that exits before it listens (its port, free when it
    /// was chosen, taken by another process since) is started again on another port,
    /// up to three times.
    pub fn start_with(dir: &Path, options: &RegistryOptions) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr: SocketAddr = match &options.netns {
                Some(n) => n.listen,
                None => format!("127.0.0.1:{}", crate::free_port()?).parse()?,
            };
            match Self::start_on(dir, options, addr)? {
                Some(registry) => return Ok(registry),
                None if options.netns.is_none() && attempt < 3 => continue,
                None => anyhow::bail!(
                    "docker-registry exited before it listened on {addr}; log:\n{}",
                    crate::read_log(&dir.join("registry.log"))
                ),
            }
        }
    }

    /// [`start_with`](Self::start_with) on `addr`; `None` when the registry exited
    /// before it listened.
    fn start_on(
        dir: &Path,
        options: &RegistryOptions,
        addr: SocketAddr,
    ) -> anyhow::Result<Option<Self>> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.yml");
        let data = options.storage.clone().unwrap_or_else(|| dir.join("data"));
        // Quoted: an IPv6 address ([fd00::2]:5000) would read as a YAML list.
        let mut http = format!("http:\n  addr: \"{addr}\"\n");
        if let Some(tls) = &options.tls {
            http.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.certificate.display(),
                tls.key.display()
            ));
            if !tls.client_cas.is_empty() {
                http.push_str("    clientcas:\n");
                for ca in &tls.client_cas {
                    http.push_str(&format!("      - {}\n", ca.display()));
                }
            }
        }
        if let Some(remote) = &options.proxy_remote {
            http.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        }
        if let Some(auth) = &options.auth {
            http.push_str(&auth.yaml());
        }
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 {http}",
                data.display()
            ),
        )?;
        let log = dir.join("registry.log");
        let out = File::create(&log)?;
        let netns = options.netns.as_ref().map(|n| n.ns.as_str());
        let child = crate::netns::command_in(netns, "docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting docker-registry")?;
        let mut registry = Registry {
            child,
            addr,
            log,
            data,
            tls: options.tls.is_some(),
        };
        // Its log says when it listens; a connection alone could reach another
        // process that took the port. A registry in a namespace cannot be reached
        // from here at all.
        let in_netns = options.netns.is_some();
        let mut exited = false;
        crate::wait_until("docker-registry", Duration::from_secs(30), || {
            if registry.child.try_wait().ok().flatten().is_some() {
                exited = true;
                return true;
            }
            crate::read_log(&registry.log).contains("listening on")
                && (in_netns || crate::accepts(addr))
        })
        .with_context(|| format!("registry log:\n{}", crate::read_log(&registry.log)))?;
        Ok((!exited).then_some(registry))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Where it stores blobs and manifests.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Its log (access log and errors), as written so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }

    /// The access log's request lines (`HEAD /v2/… HTTP/1.1`), in order.
    pub fn requests(&self) -> Vec<String> {
        crate::read_log(&self.log)
            .lines()
            .filter_map(|l| {
                let start = l.find("\"GET ").or_else(|| l.find("\"HEAD "))?;
                let rest = &l[start + 1..];
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    }
}

impl Registry {
    /// Pushes `image` as `repo:tag` into registry storage at `storage` through a
    /// throw-away registry on loopback (its config and log in `work`), so that a
    /// registry started later with that storage (in a lab host, say) serves it.
    pub fn stage(
        image: &crate::image::OciImage,
        repo: &str,
        tag: &str,
        work: &Path,
        storage: &Path,
    ) -> anyhow::Result<()> {
        let staging = Registry::start_with(
            work,
            &RegistryOptions {
                storage: Some(storage.to_path_buf()),
                ..RegistryOptions::default()
            },
        )?;
        image.push(&staging.addr().to_string(), repo, tag)
    }

    /// The access log so far, in order (see [`Access`]).
    pub fn access_log(&self) -> Vec<Access> {
        crate::read_log(&self.log)
            .lines()
            .filter_map(Access::parse)
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::Access;

    #[test]
    fn parses_combined_log_lines_and_skips_others() {
        let line = r#"127.0.0.1 - - [22/Nov/2026:07:22:43 +0000] "GET /v2/a/b/blobs/sha256:ab?ns=x HTTP/1.1" 206 1048576 "" "containerd/1.6.20~ds1""#;
        let a = Access::parse(line).unwrap();
        assert_eq!(a.method, "GET");
        assert_eq!(a.path, "/v2/a/b/blobs/sha256:ab?ns=x");
        assert_eq!((a.status, a.bytes), (206, 1_048_576));
        assert_eq!(a.user_agent, "containerd/1.6.20~ds1");
        assert!(a.is_blob_get("sha256:ab"));
        assert!(!a.is_blob_get("sha256:a"));
        assert!(!a.from_shoal());
        let head = r#"127.0.0.1 - - [22/Nov/2026:07:22:43 +0000] "HEAD /v2/x/blobs/sha256:ab HTTP/1.1" 200 0 "" "shoal-peer/0.1.0""#;
        let h = Access::parse(head).unwrap();
        assert!(!h.is_blob_get("sha256:ab"));
        assert!(h.from_shoal());
        let logrus = r#"time="2026-11-22T07:22:43Z" level=info msg="response completed" http.request.method=GET"#;
        assert_eq!(Access::parse(logrus), None);
    }
}
