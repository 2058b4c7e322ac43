//! Several scheduler replicas and a swarm of peers on loopback, as the chart runs
//! them: each `shoal-scheduler` replica listens on its own address `127.0.0.N` on one
//! shared port (like pods behind a headless Service), and every `shoal-peer run` finds
//! them through `dns+https://shoal-scheduler-headless.test:PORT` (mutual TLS, each
//! replica's certificate valid for the Service's name while it is dialled by IP).
//!
//! The name is resolved by the daemons' test resolver
//! (`--dev-scheduler-hosts-file`): a hosts file they read again every 5 s through
//! the same re-resolve loop as DNS. [`ReplicaSwarm`] rewrites it as Kubernetes
//! rewrites the Service: a replica is published while it runs and dropped when it is
//! stopped; one killed with SIGKILL stays published (a crashed pod leaves the
//! Service only when Kubernetes notices).
//!
//! Also here: blobs chosen by which replica owns them ([`layers_owned_by`]), so that
//! a test's layers shard over the replicas as it needs. Not here: assertions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{Digest, rendezvous};

use crate::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob};

/// The headless Service's name the peers resolve.
pub const SERVICE: &str = "shoal-scheduler-headless.test";

/// Bound on every wait of these tests (a hang, not a timing).
pub const WAIT: Duration = Duration::from_secs(180);

/// Polls `check` every 100 ms; panics after [`WAIT`], naming `what`.
pub async fn wait<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The owner of `digest` (`sha256:…`) among the replica keys `keys`.
pub fn owner<'a>(keys: impl IntoIterator<Item = &'a str>, digest: &str) -> String {
    let d: Digest = digest.parse().expect("a digest");
    rendezvous::owner(keys, &d)
        .expect("at least one replica")
        .to_owned()
}

/// Layers of `size` bytes chosen so that `want[i]` of them are owned by
/// `owners[i]` among `keys` (blobs made from seeds `seed`, `seed + 2`, …, skipping
/// those whose owner is not wanted any more): `(data, digest)` each, in the order of
/// `owners`.
pub fn layers_owned_by(
    keys: &[String],
    owners: &[&str],
    want: &[usize],
    size: usize,
    seed: u64,
) -> Vec<(Arc<Vec<u8>>, String)> {
    let mut got: Vec<Vec<(Arc<Vec<u8>>, String)>> = vec![Vec::new(); owners.len()];
    let mut seed = seed;
    while got.iter().zip(want).any(|(g, w)| g.len() < *w) {
        let (data, digest) = crate::blob(size, seed);
        // `blob` makes the same bytes from seeds 2k and 2k + 1.
        seed += 2;
        let o = owner(keys.iter().map(String::as_str), &digest);
        if let Some(i) = owners.iter().position(|w| *w == o)
            && got[i].len() < want[i]
        {
            got[i].push((data, digest));
        }
    }
    got.into_iter().flatten().collect()
}

/// Replicas (by IP) and peers of one test, under one directory.
#[derive(Debug)]
pub struct ReplicaSwarm {
    dir: PathBuf,
    tls: PathBuf,
    port: u16,
    hosts: PathBuf,
    /// The replicas that run, by IP.
    pub replicas: BTreeMap<String, SchedulerProcess>,
    /// Replicas killed with SIGKILL, still published.
    killed: Vec<String>,
    /// The peers, in start order (`peer-0`, `peer-1`, …).
    pub peers: Vec<PeerProcess>,
    opts: PeerOptions,
}

impl ReplicaSwarm {
    /// A cluster CA in `dir`, a port free on `ips[0]`, and one replica on each of
    /// `ips` (published); peers are added with [`add_peers`](Self::add_peers), once
    /// [`set_upstream`](Self::set_upstream) named their default upstream.
    pub async fn start(dir: &Path, ips: &[&str]) -> anyhow::Result<Self> {
        let tls = dir.join("tls");
        PeerProcess::tls_init(&tls)?;
        let port = std::net::TcpListener::bind(format!("{}:0", ips[0]))?
            .local_addr()?
            .port();
        let hosts = dir.join("hosts");
        let opts = PeerOptions {
            scheduler: Some(format!("dns+https://{SERVICE}:{port}")),
            default_upstream: None,
            hosts_dir: None,
            tls_dir: tls.clone(),
            extra: vec![
                "--dev-scheduler-hosts-file".into(),
                hosts.display().to_string(),
            ],
        };
        let mut swarm = ReplicaSwarm {
            dir: dir.to_path_buf(),
            tls,
            port,
            hosts,
            replicas: BTreeMap::new(),
            killed: Vec::new(),
            peers: Vec::new(),
            opts,
        };
        for ip in ips {
            swarm.start_replica(ip).await?;
        }
        Ok(swarm)
    }

    /// The default upstream of the peers started from now on.
    pub fn set_upstream(&mut self, url: &str) {
        self.opts.default_upstream = Some(url.to_owned());
    }

    /// The key peers hash replica `ip` under (`IP:PORT`).
    pub fn key(&self, ip: &str) -> String {
        format!("{ip}:{}", self.port)
    }

    /// The keys of the replicas that run, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.replicas.keys().map(|ip| self.key(ip)).collect()
    }

    /// The replica on `ip`.
    pub fn replica(&self, ip: &str) -> &SchedulerProcess {
        &self.replicas[ip]
    }

    /// The replica whose key is `key`.
    pub fn by_key(&self, key: &str) -> &SchedulerProcess {
        self.replica(key.rsplit_once(':').map_or(key, |(ip, _)| ip))
    }

    /// Writes the hosts file: every replica that runs, and those killed.
    fn publish(&self) -> anyhow::Result<()> {
        let text: String = self
            .replicas
            .keys()
            .chain(&self.killed)
            .map(|ip| format!("{ip} {SERVICE}\n"))
            .collect();
        // Written aside and renamed: a reader never sees half a file.
        let tmp = self.hosts.with_extension("new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.hosts)?;
        Ok(())
    }

    /// Starts a replica on `ip` (a fresh process, empty state) and publishes it.
    pub async fn start_replica(&mut self, ip: &str) -> anyhow::Result<()> {
        let addr: SocketAddr = self.key(ip).parse()?;
        let n = self.replicas.len() + self.killed.len();
        let r = SchedulerProcess::start_on(
            &self.dir.join(format!("replica-{ip}-{n}")),
            &self.tls,
            addr,
            &[SERVICE],
            &[],
        )
        .await?;
        self.replicas.insert(ip.to_owned(), r);
        self.publish()
    }

    /// Stops the replica on `ip` as Kubernetes does in a rolling update: it leaves the
    /// Service and gets SIGTERM.
    pub async fn stop_replica(&mut self, ip: &str) -> anyhow::Result<()> {
        let mut r = self
            .replicas
            .remove(ip)
            .ok_or_else(|| anyhow::anyhow!("no replica on {ip}"))?;
        self.publish()?;
        r.terminate().await;
        Ok(())
    }

    /// Kills the replica on `ip` with SIGKILL (a crash); it stays published.
    pub fn kill_replica(&mut self, ip: &str) {
        if let Some(mut r) = self.replicas.remove(ip) {
            r.kill();
            self.killed.push(ip.to_owned());
        }
    }

    /// Starts `n` more peers (`peer-<i>`), each once it is ready.
    pub async fn add_peers(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            let name = format!("peer-{}", self.peers.len());
            let p = PeerProcess::start(&self.dir, &name, &self.opts).await?;
            self.peers.push(p);
        }
        Ok(())
    }

    /// Waits until the replica on `ip` lists every peer: the peers found it and
    /// joined it ("live" for all of them).
    pub async fn wait_live(&self, ip: &str) {
        let (r, n) = (self.replica(ip), self.peers.len());
        wait(&format!("{n} peers joined the replica on {ip}"), || async {
            r.peer_count().await == Some(n)
        })
        .await;
    }

    /// Peers `range` pull every layer of `digests` (from `repo`) through their
    /// mirror, all at once; each pull's handle yields `(digest, length)` of what came
    /// back.
    pub fn pull(&self, range: std::ops::Range<usize>, repo: &str, digests: &[String]) -> Vec<Pull> {
        let mut out = Vec::new();
        for i in range {
            for d in digests {
                let (m, d, r) = (self.peers[i].mirror_url(), d.clone(), repo.to_owned());
                out.push(Pull {
                    peer: i,
                    digest: d.clone(),
                    handle: tokio::spawn(async move { pull_blob(&m, &r, &d).await }),
                });
            }
        }
        out
    }
}

/// One blob pulled through one peer's mirror.
#[derive(Debug)]
pub struct Pull {
    /// The peer's index.
    pub peer: usize,
    /// The blob asked for.
    pub digest: String,
    /// What came back: the SHA-256 and length of the body, or why it failed.
    pub handle: tokio::task::JoinHandle<Result<(String, u64), String>>,
}
