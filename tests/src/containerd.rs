//! A private containerd: its own root, state, gRPC and ttrpc sockets under a directory
//! the test owns, so it never touches the machine's containerd. Needs root. Stopped
//! when dropped (whatever it left mounted under its directory is unmounted).
//!
//! Two kinds:
//! - [`Containerd::start`]: the CRI plugin disabled; `ctr` pulls through it (in
//!   containerd 1.6 the `ctr` process itself does the fetching and reads `--hosts-dir`).
//! - [`Containerd::start_cri`]: the CRI plugin on, with its registry `config_path` set
//!   to a hosts dir the test controls, as on a Kubernetes node: the daemon itself pulls
//!   for `runtime.v1.ImageService` calls (see [`crate::cri`]) and reads `hosts.toml`
//!   from there. No CNI configuration: the plugin logs that it has none (it matters
//!   only for pod networks), and its image service works without.
//!
//! Also here: what a test asks containerd after a pull ([`Containerd::image_check`],
//! [`Containerd::content_digests`]), forgetting an image ([`Containerd::remove_image`]),
//! and writing a registry's `hosts.toml` the way an operator would
//! ([`upstream_hosts_toml`], [`write_hosts_toml`]).
//!
//! Not here: running pods or containers.

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
    dir: PathBuf,
    /// The network namespace it and its `ctr` commands run in (a lab node's).
    netns: Option<String>,
    /// The CRI plugin's hosts dir, when it is on.
    cri_hosts: Option<PathBuf>,
}

/// What `ctr image check` says about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCheck {
    /// Every blob the image needs is in the content store (`complete (n/n)`).
    pub complete: bool,
    /// Its layers are unpacked into the default snapshotter.
    pub unpacked: bool,
    /// The line `ctr` printed, for messages.
    pub line: String,
}

/// TLS settings of an upstream registry in `hosts.toml` (absolute paths).
#[derive(Debug, Clone)]
pub struct HostsTls {
    /// `ca`: the CA that issued the registry's certificate.
    pub ca: PathBuf,
    /// `client = [[cert, key]]`: the client certificate and its key, when the registry
    /// requires one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The `hosts.toml` an operator writes for the registry at `server`
/// (`http://127.0.0.1:5000` or `https://…`): the server, and with `tls` its `ca` and
/// `client` pair as top-level keys (containerd applies those to `server`).
pub fn upstream_hosts_toml(server: &str, tls: Option<&HostsTls>) -> String {
    let mut text = format!("# the upstream registry\nserver = \"{server}\"\n");
    if let Some(tls) = tls {
        text.push_str(&format!("ca = \"{}\"\n", tls.ca.display()));
        if let Some((cert, key)) = &tls.client {
            text.push_str(&format!(
                "client = [[\"{}\", \"{}\"]]\n",
                cert.display(),
                key.display()
            ));
        }
    }
    text
}

/// Writes `<hosts_dir>/<registry>/hosts.toml` (directories created); returns its path.
pub fn write_hosts_toml(hosts_dir: &Path, registry: &str, text: &str) -> anyhow::Result<PathBuf> {
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("hosts.toml");
    std::fs::write(&file, text)?;
    Ok(file)
}

impl Containerd {
    /// Starts containerd with everything under `dir` and waits until `ctr version`
    /// answers. `dir` must be short: a Unix socket path has at most 107 bytes.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_in(dir, None)
    }

    /// [`Containerd::start`] inside network namespace `netns` (a
    /// [`crate::netns::Host`]'s), where its `ctr` commands run too: in containerd 1.6
    /// `ctr` does the fetching, so the node's own `127.0.0.1` mirror is what it reaches.
    pub fn start_in(dir: &Path, netns: Option<&str>) -> anyhow::Result<Self> {
        Self::launch(dir, netns, None)
    }

    /// Starts containerd with its CRI plugin on, everything under `dir` (root, state,
    /// sockets, the plugin's empty CNI directories) and the plugin's registry
    /// `config_path` set to `hosts_dir`, the way a node's
    /// `[plugins."io.containerd.grpc.v1.cri".registry]` names `/etc/containerd/certs.d`.
    /// Waits until `ctr version` answers; [`crate::cri::CriClient::connect`] then checks
    /// that the image service is there. Snapshotter: the plugin's default, overlayfs.
    /// The sandbox image is never pulled (no pod is run). `dir` must be short: a Unix
    /// socket path has at most 107 bytes.
    pub fn start_cri(dir: &Path, hosts_dir: &Path) -> anyhow::Result<Self> {
        Self::launch(dir, None, Some(hosts_dir))
    }

    fn launch(dir: &Path, netns: Option<&str>, cri_hosts: Option<&Path>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        // A top-level key (before the first table), and the CRI plugin's tables (last).
        let (disabled, cri) = match cri_hosts {
            None => (
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
                String::new(),
            ),
            Some(hosts) => {
                let cni = dir.join("cni");
                std::fs::create_dir_all(cni.join("bin"))?;
                std::fs::create_dir_all(cni.join("conf"))?;
                let tables = format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
                     \x20 sandbox_image = \"registry.invalid/pause:never-pulled\"\n\
                     \x20 stream_server_address = \"127.0.0.1\"\n\
                     \x20 stream_server_port = \"0\"\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                     \x20 bin_dir = \"{bin}\"\n\
                     \x20 conf_dir = \"{conf}\"\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
                     \x20 config_path = \"{hosts}\"\n",
                    bin = cni.join("bin").display(),
                    conf = cni.join("conf").display(),
                    hosts = hosts.display(),
                );
                ("", tables)
            }
        };
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 {disabled}\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{ttrpc}\"\n\
                 [debug]\n  address = \"\"\n\
                 [metrics]\n  address = \"\"\n\
                 {cri}",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                ttrpc = dir.join("t.sock").display(),
            ),
        )?;
        let log = dir.join("containerd.log");
        let out = File::create(&log)?;
        let child = crate::netns::command_in(netns, "containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting containerd")?;
        let containerd = Containerd {
            child,
            socket,
            log,
            dir: dir.to_path_buf(),
            netns: netns.map(str::to_owned),
            cri_hosts: cri_hosts.map(Path::to_path_buf),
        };
        crate::wait_until("containerd", Duration::from_secs(30), || {
            containerd
                .ctr(&["version"])
                .is_ok_and(|o| o.status.success())
        })
        .with_context(|| format!("containerd log:\n{}", crate::read_log(&containerd.log)))?;
        Ok(containerd)
    }

    /// Its content store (`<root>/io.containerd.content.v1.content`), where committed
    /// blobs are `blobs/sha256/<hex>`.
    pub fn content_dir(&self) -> PathBuf {
        self.dir
            .join("root")
            .join("io.containerd.content.v1.content")
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `ctr -a SOCKET ARGS…`.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.ctr_command(args).output().context("running ctr")
    }

    /// `ctr -a SOCKET ARGS…`, not started (e.g. to run it with `tokio::process`).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = crate::netns::command_in(self.netns.as_deref(), "ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `ctr image pull --hosts-dir DIR REFERENCE`, not started.
    pub fn pull_command(&self, hosts_dir: &Path, reference: &str) -> Command {
        let dir = hosts_dir.to_string_lossy();
        self.ctr_command(&["image", "pull", "--hosts-dir", &dir, reference])
    }

    /// `ctr image check` for `reference`: whether all its content is there and unpacked.
    pub fn image_check(&self, reference: &str) -> anyhow::Result<ImageCheck> {
        let out = self.ctr(&["image", "check"])?;
        anyhow::ensure!(
            out.status.success(),
            "ctr image check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .with_context(|| format!("ctr image check does not list {reference}:\n{text}"))?;
        Ok(ImageCheck {
            complete: line.contains(" complete ("),
            unpacked: line.split_whitespace().last() == Some("true"),
            line: line.to_owned(),
        })
    }

    /// The digests in the content store (`ctr content ls -q`). containerd checks each
    /// blob against its digest before it commits it.
    pub fn content_digests(&self) -> anyhow::Result<Vec<String>> {
        let out = self.ctr(&["content", "ls", "-q"])?;
        anyhow::ensure!(
            out.status.success(),
            "ctr content ls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Forgets `reference` and, once garbage collection ran, its content and snapshots
    /// (`ctr image rm --sync`), so that the next pull fetches every blob again.
    pub fn remove_image(&self, reference: &str) -> anyhow::Result<()> {
        let out = self.ctr(&["image", "rm", "--sync", reference])?;
        anyhow::ensure!(
            out.status.success(),
            "ctr image rm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `ctr image pull --hosts-dir DIR REFERENCE`.
    pub fn pull(&self, hosts_dir: &Path, reference: &str) -> anyhow::Result<Output> {
        let dir = hosts_dir.to_string_lossy();
        self.ctr(&["image", "pull", "--hosts-dir", &dir, reference])
    }

    /// Kills containerd with SIGKILL (as a crash or an OOM kill would), then starts it
    /// again on the same root, state and sockets, and waits until `ctr version`
    /// answers. What it had in flight (ingests of a pull) stays on disk. The earlier
    /// log is kept as `containerd-before-restart.log`.
    pub fn kill_9_and_restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::rename(&self.log, self.dir.join("containerd-before-restart.log"));
        let again = Self::launch(&self.dir, self.netns.as_deref(), self.cri_hosts.as_deref())?;
        // `again` takes the place of the dead one (whose Drop must not run: it would
        // unmount under the shared directory while the new one runs).
        let old = std::mem::replace(self, again);
        std::mem::forget(old);
        Ok(())
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
        unmount_under(&self.dir);
    }
}

/// Lazily unmounts whatever a killed containerd left mounted under `dir` (a snapshot
/// mounted while a layer was being unpacked), so that the directory can be removed.
/// Only mount points inside `dir` are touched.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    // Innermost first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
