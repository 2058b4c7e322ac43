//! Shoal's own processes for end-to-end tests, benchmarks and the demo: a
//! `shoal-scheduler` and `shoal-peer run` daemons on 127.0.0.1, each on its own free
//! ports and data dir, stopped (SIGKILL) when dropped.
//!
//! The binaries are the ones cargo built next to the running test (`cargo test
//! --workspace` builds every binary of the workspace before running any test).
//! Not here: assertions, third-party components (`registry`, `containerd`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// `target/<profile>/<name>`, next to the running test binary.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is not built; run the suite with `cargo test --workspace` (scripts/test) or \
         `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// Issues a certificate with `shoal-peer tls issue` from the cluster CA in `ca_dir`
/// (`ca.crt`, `ca.key`, as `shoal-peer tls init` wrote them) into `out`; `what` is
/// `["--node", NAME]` or `["--scheduler", "--name", N, …]`.
pub fn tls_issue(ca_dir: &Path, out: &Path, what: &[&str]) -> anyhow::Result<()> {
    let result = Command::new(workspace_bin("shoal-peer"))
        .args(["tls", "issue", "--ca-dir"])
        .arg(ca_dir)
        .arg("--out")
        .arg(out)
        .args(what)
        .output()?;
    anyhow::ensure!(
        result.status.success(),
        "shoal-peer tls issue {what:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    Ok(())
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn http_ok(url: &str) -> bool {
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn wait_http(what: &str, url: &str, log: &Path) -> anyhow::Result<()> {
    for _ in 0..600 {
        if http_ok(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{what} not ready at {url}; log:\n{}", crate::read_log(log))
}

/// Prometheus text as sample → value (`name` or `name{labels}`, as written).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// `VmRSS` and `VmHWM` of process `pid`, in KiB.
pub fn proc_rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {name}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: {line}"))?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// GETs blob `digest` of `repo` through the registry mirror at `mirror`
/// (`http://…`), the way containerd asks; the SHA-256 (`sha256:…`) and length
/// of what came back, or the status and body of a refusal.
pub async fn pull_blob(mirror: &str, repo: &str, digest: &str) -> Result<(String, u64), String> {
    use futures::StreamExt;
    use sha2::Digest as _;
    let url = format!("{mirror}/v2/{repo}/blobs/{digest}");
    let resp = reqwest::get(&url).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        let s = resp.status();
        return Err(format!("{s}: {}", resp.text().await.unwrap_or_default()));
    }
    let mut hasher = sha2::Sha256::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((format!("sha256:{:x}", hasher.finalize()), n))
}

/// A `shoal-scheduler` process serving gRPC over mutual TLS.
#[derive(Debug)]
pub struct SchedulerProcess {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
    restarts: u32,
    extra: Vec<String>,
}

impl SchedulerProcess {
    /// Starts one with its log in `dir` and a serving certificate for 127.0.0.1 issued
    /// from the cluster CA in `cluster_tls` (`shoal-peer tls init`'s directory), and
    /// waits until it is ready. Peers need node certificates from the same CA
    /// ([`PeerOptions::run_args`] issues them).
    pub async fn start(dir: &Path, cluster_tls: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, cluster_tls, &[]).await
    }

    /// [`start`](Self::start) with more flags.
    pub async fn start_with(
        dir: &Path,
        cluster_tls: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let grpc: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
        Self::start_on(dir, cluster_tls, grpc, &[], extra).await
    }

    /// [`start_with`](Self::start_with) with gRPC on `grpc` (e.g. one replica of
    /// several on `127.0.0.N:PORT`, as pods behind a headless Service) and a serving
    /// certificate also valid for `names` (e.g. the Service's name).
    pub async fn start_on(
        dir: &Path,
        cluster_tls: &Path,
        grpc: SocketAddr,
        names: &[&str],
        extra: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let tls = dir.join("scheduler-tls");
        let ip = grpc.ip().to_string();
        let mut what = vec!["--scheduler", "--name", "127.0.0.1", "--name", "localhost"];
        for n in names.iter().copied().chain([ip.as_str()]) {
            if !what.contains(&n) {
                what.extend(["--name", n]);
            }
        }
        tls_issue(cluster_tls, &tls, &what)?;
        let mut extra = extra.to_vec();
        extra.extend(["--tls-dir".into(), tls.display().to_string()]);
        // The operator API on the same address, as a pod's.
        let http: SocketAddr = format!("{}:{}", grpc.ip(), crate::free_port()?).parse()?;
        let log = dir.join("scheduler-0.log");
        let child = Self::spawn(grpc, http, &log, &extra)?;
        let s = SchedulerProcess {
            child,
            grpc,
            http,
            log,
            dir: dir.to_path_buf(),
            restarts: 0,
            extra,
        };
        wait_http(
            "shoal-scheduler",
            &format!("{}/readyz", s.http_url()),
            &s.log,
        )
        .await?;
        Ok(s)
    }

    fn spawn(
        grpc: SocketAddr,
        http: SocketAddr,
        log: &Path,
        extra: &[String],
    ) -> anyhow::Result<Child> {
        let mut args = vec![
            "--grpc-listen".into(),
            grpc.to_string(),
            "--http-listen".into(),
            http.to_string(),
            "--plan-interval".into(),
            "50ms".into(),
        ];
        args.extend(extra.iter().cloned());
        spawn(&workspace_bin("shoal-scheduler"), &args, log)
    }

    /// Waits for the process to exit by itself, at most `limit`; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it like a crashed pod (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it like a pod Kubernetes terminates (SIGTERM, then SIGKILL after 10 s)
    /// and reaps it; its status when it exited by itself.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let status = crate::terminate(&mut self.child, Duration::from_secs(10)).await;
        self.kill();
        status
    }

    /// Its resident set size now and at its peak, in KiB (`VmRSS`, `VmHWM` of
    /// `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        proc_rss_kib(self.pid())
    }

    /// `GET /metrics`, parsed ([`parse_metrics`]).
    pub async fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let text = reqwest::get(format!("{}/metrics", self.http_url()))
            .await?
            .text()
            .await?;
        Ok(parse_metrics(&text))
    }

    /// The directory with its serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("scheduler-tls")
    }

    /// Its gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// Kills it and starts a fresh one (empty state) on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.restarts += 1;
        self.log = self.dir.join(format!("scheduler-{}.log", self.restarts));
        self.child = Self::spawn(self.grpc, self.http, &self.log, &self.extra)?;
        wait_http(
            "shoal-scheduler",
            &format!("{}/readyz", self.http_url()),
            &self.log,
        )
        .await
    }

    /// `https://127.0.0.1:PORT` of the gRPC service.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// `http://127.0.0.1:PORT` of the operator API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `GET /api/v1/tasks/<digest>`, or None when the scheduler does not know it.
    pub async fn task(&self, digest: &str) -> Option<serde_json::Value> {
        let r = reqwest::get(format!("{}/api/v1/tasks/{digest}", self.http_url()))
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }

    /// The digests of the tasks `GET /api/v1/tasks` lists (None when it does not
    /// answer).
    pub async fn task_digests(&self) -> Option<Vec<String>> {
        let r = reqwest::get(format!("{}/api/v1/tasks", self.http_url()))
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        let tasks = v["tasks"].as_array()?;
        Some(
            tasks
                .iter()
                .filter_map(|t| t["digest"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// The peers `GET /api/v1/peers` lists (None when it does not answer).
    pub async fn peers(&self) -> Option<Vec<serde_json::Value>> {
        let r = reqwest::get(format!("{}/api/v1/peers", self.http_url()))
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["peers"].as_array().cloned()
    }

    /// How many peers `GET /api/v1/peers` lists (None when it does not answer).
    pub async fn peer_count(&self) -> Option<usize> {
        self.peers().await.map(|p| p.len())
    }

    /// Waits until `n` peers have joined; fails after 60 s (a hang, not a timing).
    pub async fn wait_for_peers(&self, n: usize) -> anyhow::Result<()> {
        for _ in 0..600 {
            if self.peer_count().await == Some(n) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "{n} peers did not join within 60 s (the scheduler lists {:?}); log:\n{}",
            self.peer_count().await,
            self.log()
        )
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a peer's upstream and scheduler are.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Scheduler gRPC URL (none: the peer runs alone).
    pub scheduler: Option<String>,
    /// `--default-upstream`.
    pub default_upstream: Option<String>,
    /// `--containerd-hosts-dir` (default: an empty dir of the peer's own).
    pub hosts_dir: Option<PathBuf>,
    /// The directory `shoal-peer tls init` wrote (shared by the swarm). When it holds
    /// the CA's key, each peer gets its own node certificate issued from it
    /// ([`PeerOptions::run_args`]); otherwise the peers use its shared certificate.
    pub tls_dir: PathBuf,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl PeerOptions {
    /// `shoal-peer run`'s arguments for node `name` with these options and addresses;
    /// the hosts dir is `default_hosts` (created empty) unless the options name one.
    /// Issues `name`'s node certificate (into `node-tls` beside `data_dir`) when the
    /// cluster CA's key is at hand.
    pub fn run_args(
        &self,
        name: &str,
        quic: &str,
        http: &str,
        mirror: &str,
        data_dir: &Path,
        default_hosts: &Path,
    ) -> anyhow::Result<Vec<String>> {
        let hosts = match &self.hosts_dir {
            Some(h) => h.clone(),
            None => {
                std::fs::create_dir_all(default_hosts)?;
                default_hosts.to_path_buf()
            }
        };
        let tls_dir = if self.tls_dir.join("ca.key").is_file() {
            let node_tls = data_dir
                .parent()
                .unwrap_or(data_dir)
                .join(format!("node-tls-{name}"));
            tls_issue(&self.tls_dir, &node_tls, &["--node", name])?;
            node_tls
        } else {
            self.tls_dir.clone()
        };
        let mut args: Vec<String> = vec![
            "run".into(),
            "--quic-listen".into(),
            quic.into(),
            "--http-listen".into(),
            http.into(),
            "--mirror-listen".into(),
            mirror.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--peer-tls-dir".into(),
            tls_dir.display().to_string(),
            "--containerd-hosts-dir".into(),
            hosts.display().to_string(),
        ];
        if let Some(s) = &self.scheduler {
            args.extend(["--scheduler".into(), s.clone()]);
        }
        if let Some(u) = &self.default_upstream {
            args.extend(["--default-upstream".into(), u.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        Ok(args)
    }
}

/// A `shoal-peer run` process.
#[derive(Debug)]
pub struct PeerProcess {
    child: Option<Child>,
    /// Its name in logs and reports.
    pub name: String,
    mirror: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    data: PathBuf,
}

impl PeerProcess {
    /// Writes a cluster CA and a peer certificate into `dir` (`shoal-peer tls init`).
    pub fn tls_init(dir: &Path) -> anyhow::Result<()> {
        let out = Command::new(workspace_bin("shoal-peer"))
            .arg("tls")
            .arg("init")
            .arg(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "shoal-peer tls init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts `name` with its data dir and log under `dir`, and waits until ready.
    /// The ports are picked free just before the peer binds them, so another
    /// process may take one in between: a peer that could not bind is started
    /// again on new ports (three attempts).
    pub async fn start(dir: &Path, name: &str, o: &PeerOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, name, o).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_once(dir: &Path, name: &str, o: &PeerOptions) -> anyhow::Result<Self> {
        let data = dir.join(name);
        std::fs::create_dir_all(&data)?;
        let mirror: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
        let http: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
        let quic = format!("127.0.0.1:{}", crate::free_udp_port()?);
        let args = o.run_args(
            name,
            &quic,
            &http.to_string(),
            &mirror.to_string(),
            &data.join("data"),
            &data.join("certs.d"),
        )?;
        let log = dir.join(format!("{name}.log"));
        let child = spawn(&workspace_bin("shoal-peer"), &args, &log)?;
        let p = PeerProcess {
            child: Some(child),
            name: name.into(),
            mirror,
            http,
            log,
            data,
        };
        wait_http(name, &format!("http://{}/readyz", p.http), &p.log).await?;
        Ok(p)
    }

    /// `http://127.0.0.1:PORT`: the registry mirror.
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.mirror)
    }

    /// The mirror's address.
    pub fn mirror_addr(&self) -> SocketAddr {
        self.mirror
    }

    /// The peer's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.data.join("data")
    }

    /// `/metrics` as name → value (unlabelled samples only).
    pub async fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await?
            .text()
            .await?;
        Ok(parse_metrics(&text))
    }

    /// One counter from `/metrics` (0 when absent or unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(0.0)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:PORT`: `/metrics`, `/healthz`, `/readyz`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Node setup the way the chart's init container does it: `shoal-peer containerd
    /// configure` merges this peer's mirror into `<hosts_dir>/<registry>/hosts.toml`
    /// (mirror first, the file's `server` and TLS settings kept; no `_default` entry).
    pub fn configure_containerd(&self, hosts_dir: &Path, registry: &str) -> anyhow::Result<()> {
        let out = Command::new(workspace_bin("shoal-peer"))
            .args(["containerd", "configure", "--no-default-host"])
            .arg("--hosts-dir")
            .arg(hosts_dir)
            .arg("--mirror-url")
            .arg(self.mirror_url())
            .arg("--registry")
            .arg(registry)
            .env("SHOAL_LOG", "warn")
            .output()
            .context("running shoal-peer containerd configure")?;
        anyhow::ensure!(
            out.status.success(),
            "shoal-peer containerd configure: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Whether the process is still running (false once killed or exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it like a crashed node (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
