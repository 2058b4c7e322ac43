//! A private containerd: its own root, state, gRPC and ttrpc sockets under a directory
//! the test owns, the CRI plugin disabled, so it never touches the machine's containerd.
//! Needs root. `ctr` pulls through it (in containerd 1.6 the `ctr` process itself does the
//! fetching and reads `--hosts-dir`). Stopped when dropped.
//!
//! Not here: the CRI plugin, running containers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Starts containerd with everything under `dir` and waits until `ctr version`
    /// answers. `dir` must be short: a Unix socket path has at most 107 bytes.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{ttrpc}\"\n\
                 [debug]\n  address = \"\"\n\
                 [metrics]\n  address = \"\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                ttrpc = dir.join("t.sock").display(),
            ),
        )?;
        let log = dir.join("containerd.log");
        let out = File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting containerd")?;
        let containerd = Containerd { child, socket, log };
        crate::wait_until("containerd", Duration::from_secs(30), || {
            containerd
                .ctr(&["version"])
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| format!("containerd log:\n{}", crate::read_log(&containerd.log)))?;
        Ok(containerd)
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `ctr -a SOCKET ARGS…`.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")
    }

    /// `ctr image pull --hosts-dir DIR REFERENCE`.
    pub fn pull(&self, hosts_dir: &Path, reference: &str) -> anyhow::Result<Output> {
        let dir = hosts_dir.to_string_lossy();
        self.ctr(&["image", "pull", "--hosts-dir", &dir, reference])
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
