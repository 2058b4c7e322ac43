//! Shoal's processes on the hosts of a [`Lab`]: a `shoal-scheduler` on one host, a
//! `shoal-peer run` on each node host, the way the chart runs them on a cluster (the
//! scheduler on its own address, each peer's QUIC server on its node's address, its
//! registry mirror on the node's own `127.0.0.1`, or `::1` in an IPv6-only lab).
//!
//! The lab's addresses are reachable only from inside its namespaces, so readiness is
//! probed from there too ([`probe`], `curl` run with `ip netns exec`).
//!
//! Used by the swarm benchmark (`shoal-bench-swarm`) and the demo (`shoal-demo`). Not
//! here: what is pulled, or how it is measured.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::{Family, Host, Lab, NsProcess};
use crate::swarm::{PeerOptions, workspace_bin};

/// The scheduler's gRPC port on its host.
pub const SCHEDULER_GRPC_PORT: u16 = 7600;
/// The scheduler's operator API port on its host.
pub const SCHEDULER_HTTP_PORT: u16 = 7680;
/// A peer's mirror port, on its node's 127.0.0.1.
pub const MIRROR_PORT: u16 = 7650;
/// A peer's metrics and health port, on its node's address.
pub const PEER_HTTP_PORT: u16 = 7652;
/// A peer's QUIC port, on its node's address.
pub const QUIC_PORT: u16 = 7651;

/// `curl` inside `host`'s namespace: the body of `url` when it answers 2xx within
/// 2 s, else `None`.
pub fn probe(lab: &Lab, host: &Host, url: &str) -> Option<String> {
    let out = lab
        .command(host, Path::new("curl"))
        // -g: no globbing, so `[v6]` hosts are taken as they are.
        .args(["-sfg", "--max-time", "2", url])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Probes `url` from `host` until it answers; fails after `limit` with `process`'s log
/// (a bound on a hang, not a timing).
pub fn wait_ready(
    lab: &Lab,
    host: &Host,
    url: &str,
    process: &NsProcess,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while probe(lab, host, url).is_none() {
        anyhow::ensure!(
            start.elapsed() < limit,
            "{url} did not answer from {} within {limit:?}; log:\n{}",
            host.role,
            process.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// What a server on `host` listens on: the host's address in an IPv4 lab; in an
/// IPv6-only lab `[::]`, the default of Shoal's listeners (dual-stack where the OS
/// allows), so that the lab runs them as a cluster would.
fn listen(lab: &Lab, host: &Host, port: u16) -> SocketAddr {
    match lab.family() {
        Family::V4 => host.addr(port),
        Family::V6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    }
}

/// A scheduler running on a lab host.
#[derive(Debug)]
pub struct LabScheduler {
    /// The process (killed when dropped).
    pub process: NsProcess,
    /// Its host.
    pub host: Host,
}

impl LabScheduler {
    /// Starts `shoal-scheduler` on `host` with `extra` flags, logging into `dir`, with a
    /// serving certificate for the host's IP issued from the cluster CA in
    /// `cluster_tls` (`shoal-peer tls init`'s directory), and waits until ready.
    pub fn start(
        lab: &Lab,
        host: &Host,
        dir: &Path,
        cluster_tls: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let tls = dir.join("tls");
        crate::swarm::tls_issue(
            cluster_tls,
            &tls,
            &["--scheduler", "--name", &host.ip.to_string()],
        )?;
        let mut args = vec![
            "--tls-dir".to_string(),
            tls.display().to_string(),
            "--grpc-listen".into(),
            listen(lab, host, SCHEDULER_GRPC_PORT).to_string(),
            "--http-listen".into(),
            listen(lab, host, SCHEDULER_HTTP_PORT).to_string(),
        ];
        // The lab's plan interval, unless `extra` sets its own.
        if !extra.iter().any(|a| a.starts_with("--plan-interval")) {
            args.extend(["--plan-interval".into(), "50ms".into()]);
        }
        args.extend(extra.iter().cloned());
        let process = lab.spawn(
            host,
            &workspace_bin("shoal-scheduler"),
            &args,
            &dir.join("scheduler.log"),
        )?;
        let s = LabScheduler {
            process,
            host: host.clone(),
        };
        wait_ready(
            lab,
            host,
            &format!("{}/readyz", s.http_url()),
            &s.process,
            Duration::from_secs(30),
        )?;
        Ok(s)
    }

    /// Its gRPC URL, for peers.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.host.addr(SCHEDULER_GRPC_PORT))
    }

    /// Its operator API URL (reachable from the lab's hosts only).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.host.addr(SCHEDULER_HTTP_PORT))
    }

    /// How many peers it lists, asked from `from` (None when it does not answer).
    pub fn peer_count(&self, lab: &Lab, from: &Host) -> Option<usize> {
        let body = probe(lab, from, &format!("{}/api/v1/peers", self.http_url()))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["peers"].as_array().map(Vec::len)
    }

    /// Waits until `n` peers have joined; fails after 60 s.
    pub fn wait_for_peers(&self, lab: &Lab, n: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let got = self.peer_count(lab, &self.host);
            if got == Some(n) {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "{n} peers did not join within 60 s (the scheduler lists {got:?}); log:\n{}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A peer running on a lab host.
#[derive(Debug)]
pub struct LabPeer {
    /// The process (killed when dropped).
    pub process: NsProcess,
    /// Its node.
    pub host: Host,
    /// Its data dir (blobs and metadata).
    pub data_dir: PathBuf,
    /// Where its mirror listens, on the node's own loopback.
    pub mirror: SocketAddr,
}

impl LabPeer {
    /// Starts `shoal-peer run` on `host` with its data dir and log under `dir`, and
    /// waits until its mirror is ready.
    pub fn start(lab: &Lab, host: &Host, dir: &Path, o: &PeerOptions) -> anyhow::Result<Self> {
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let mirror = SocketAddr::new(host.loopback(), MIRROR_PORT);
        let args = o.run_args(
            &host.role,
            &listen(lab, host, QUIC_PORT).to_string(),
            &listen(lab, host, PEER_HTTP_PORT).to_string(),
            &mirror.to_string(),
            &data_dir,
            &dir.join("certs.d"),
        )?;
        let process = lab
            .spawn(
                host,
                &workspace_bin("shoal-peer"),
                &args,
                &dir.join("peer.log"),
            )
            .with_context(|| format!("starting shoal-peer on {}", host.role))?;
        let p = LabPeer {
            process,
            host: host.clone(),
            data_dir,
            mirror,
        };
        wait_ready(
            lab,
            host,
            &format!("http://{}/readyz", host.addr(PEER_HTTP_PORT)),
            &p.process,
            Duration::from_secs(30),
        )?;
        Ok(p)
    }

    /// The mirror's URL on the node's own loopback (as containerd there uses it).
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.mirror)
    }

    /// Its `/metrics` as sample → value (see [`crate::swarm::parse_metrics`]).
    pub fn metrics(&self, lab: &Lab) -> anyhow::Result<std::collections::HashMap<String, f64>> {
        let url = format!("http://{}/metrics", self.host.addr(PEER_HTTP_PORT));
        let body = probe(lab, &self.host, &url)
            .with_context(|| format!("{url} did not answer from {}", self.host.role))?;
        Ok(crate::swarm::parse_metrics(&body))
    }
}
