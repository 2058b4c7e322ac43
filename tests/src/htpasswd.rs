//! A `docker-registry` that requires HTTP Basic auth (`auth: htpasswd`) for every
//! request, serving a storage directory that images were pushed into beforehand
//! (e.g. with [`crate::registry::Registry::stage`]): skopeo pushes without
//! credentials, and this registry serves what it pushed to callers with them.
//!
//! One user, [`USER`] with [`PASSWORD`]. The registry reads only bcrypt entries from
//! its htpasswd file; the hash below is of [`PASSWORD`] at cost 5 (the registry checks
//! a password on every request, so a low cost keeps pulls fast), made once with
//! glibc's `crypt(3)` and a random `$2b$05$` salt. A test that pulls with the right
//! password is what shows it matches.
//!
//! Kept apart from [`crate::registry`] on purpose (small, to be folded into
//! `RegistryOptions` later). Not here: the token flow (`auth: token`).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::registry::Access;

/// The one user the registry knows.
pub const USER: &str = "cri-user";
/// Its password.
pub const PASSWORD: &str = "shoal-cri-secret";
/// bcrypt (`$2b$`, cost 5) of [`PASSWORD`].
const PASSWORD_BCRYPT: &str = "$2b$05$glya4waqrcXkRl1ljii4O.2VKFpasR50zTiP0AFN/dEVetkcCWDLW";
/// The realm of its `WWW-Authenticate: Basic realm="…"`.
pub const REALM: &str = "shoal-tests";

/// Writes `<dir>/htpasswd` and `<dir>/config.yml` for a registry on `addr` that
/// serves `storage` to [`USER`] only (plain HTTP, access log on); the config's path.
pub fn write_config(dir: &Path, addr: SocketAddr, storage: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n"))?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n\
             auth:\n  htpasswd:\n    realm: {REALM}\n    path: {htpasswd}\n\
             http:\n  addr: {addr}\n",
            storage = storage.display(),
            htpasswd = htpasswd.display(),
        ),
    )?;
    Ok(config)
}

/// A running `docker-registry` with Basic auth on 127.0.0.1. Stopped when dropped.
#[derive(Debug)]
pub struct BasicAuthRegistry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl BasicAuthRegistry {
    /// Starts one serving `storage` (config, htpasswd and log under `dir`) and waits
    /// until it accepts connections.
    pub fn start(dir: &Path, storage: &Path) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
        let config = write_config(dir, addr, storage)?;
        let log = dir.join("registry.log");
        let out = File::create(&log)?;
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting docker-registry")?;
        let registry = BasicAuthRegistry { child, addr, log };
        crate::wait_until("docker-registry", Duration::from_secs(30), || {
            crate::accepts(addr)
        })
        .with_context(|| format!("registry log:\n{}", registry.log()))?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`: the registry's name in references, `ns` and the hosts dir.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log (access log and errors) so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }

    /// The access log so far, in order (see [`Access`]).
    pub fn access_log(&self) -> Vec<Access> {
        self.log().lines().filter_map(Access::parse).collect()
    }
}

impl Drop for BasicAuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
