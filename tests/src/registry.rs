//! A real CNCF distribution registry (`docker-registry serve`, Debian's package) on
//! 127.0.0.1 over plain HTTP, with its storage and access log in a directory the test
//! owns. Stopped when dropped.
//!
//! Not here: TLS or client certificates (a later test can add `http.tls` to the config),
//! pushing images (see [`crate::image`]).

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
}

impl Registry {
    /// Starts a registry storing under `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
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
        let registry = Registry { child, addr, log };
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
