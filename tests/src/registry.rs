//! A real CNCF distribution registry (`docker-registry serve`, Debian's package) on
//! 127.0.0.1, with its storage and access log in a directory the test owns. Stopped when
//! dropped.
//!
//! Plain HTTP by default ([`Registry::start`]); [`Registry::start_with`] adds TLS
//! (`http.tls.certificate`/`key`) and, with client CAs, requires a client certificate
//! (`http.tls.clientcas`), and can share another registry's storage so that what was
//! pushed over plain HTTP is served over TLS too.
//!
//! Not here: generating certificates (see [`crate::tls`]), pushing images (see
//! [`crate::image`]).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
}

impl Registry {
    /// Starts a plain HTTP registry storing under `dir` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &RegistryOptions::default())
    }

    /// Starts a registry with `options`, its config and log under `dir`, and waits until
    /// it accepts connections.
    pub fn start_with(dir: &Path, options: &RegistryOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let config = dir.join("config.yml");
        let data = options.storage.clone().unwrap_or_else(|| dir.join("data"));
        let mut http = format!("http:\n  addr: {addr}\n");
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
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting docker-registry")?;
        let registry = Registry {
            child,
            addr,
            log,
            data,
            tls: options.tls.is_some(),
        };
        crate::wait_until("docker-registry", Duration::from_secs(30), || {
            crate::accepts(addr)
        })
        .with_context(|| format!("registry log:\n{}", crate::read_log(&registry.log)))?;
        Ok(registry)
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

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
