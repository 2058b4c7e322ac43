//! The swarm benchmark (`shoal-bench-swarm`, run by `scripts/bench-swarm`): N nodes
//! pull the same blob at the same moment over shaped links, three ways in one run —
//! **direct** from the registry, through a **cache** (`docker-registry` in pull-through
//! mode on its own host, what many clusters run today), and through **shoal** (a
//! scheduler on its own host, a peer on every node) — and it reports, per mode, p50
//! and max completion time as ratios to the line-rate limit and upstream egress as a
//! ratio to the blob.
//!
//! The network is a [`Lab`]: one namespace per host, joined by a bridge in its own
//! namespace, every link (the registry's uplink too) shaped in both directions: the
//! downlinks with a `tbf` FIFO, as a switch port, and the uplinks fair-queued per
//! destination host, as a Linux host's `fq_codel` would (`--uplink fifo` for a FIFO
//! there too; see [`UplinkQueue`]). Each node's pull is this binary again (`fetch`,
//! see [`fetch`]) run in the node's namespace, hashing what it receives. Traffic stays
//! inside the lab; the lab and its processes are removed at the end, on error, and on
//! Ctrl-C.
//!
//! Layout: [`report`] (pure: figures, table, machine-readable lines), [`chart`] (PNG),
//! [`fetch`] (one node's pull), this file (the lab, the modes, the run).

pub mod chart;
pub mod fetch;
pub mod report;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::image::{OciImage, random_bytes};
use crate::netns::{Cleaner, Family, Host, Lab, LinkBytes, LinkRate, UplinkQueue};
use crate::netswarm::{LabPeer, LabScheduler};
use crate::registry::{NetnsListen, Registry, RegistryOptions};
use crate::swarm::{PeerOptions, PeerProcess};
use report::{CpuTimes, CpuUse, Mode, ModeRun, NodePull, Setup};

/// The registry's port on its host (origin and cache alike).
const REGISTRY_PORT: u16 = 5000;
/// The repository the blob is pushed to.
const REPO: &str = "bench/blob";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes pulling.
    pub nodes: usize,
    /// Bytes of random data in the blob (the blob is a gzip'd tar of it, a little
    /// bigger).
    pub size: u64,
    /// Every link's rate.
    pub rate: LinkRate,
    /// The modes, in order.
    pub modes: Vec<Mode>,
    /// Namespace-name prefix (unique per concurrent run).
    pub prefix: String,
    /// Where the blob, logs and data dirs go (removed afterwards unless `keep`).
    pub work_dir: PathBuf,
    /// Keep `work_dir` (logs) afterwards.
    pub keep: bool,
    /// Upper bound on one mode's pulls (a hang, not a timing).
    pub pull_limit: Duration,
    /// Extra flags for every `shoal-peer run` (to try tunables).
    pub peer_flags: Vec<String>,
    /// Extra flags for `shoal-scheduler`.
    pub scheduler_flags: Vec<String>,
    /// The lab's addresses ([`Family::V6`]: IPv6 only, see [`crate::netns`]). In an
    /// IPv6 lab the peers learn the registry from a `hosts.toml` under its IPv6 name and
    /// the nodes ask with `ns=[addr]:port`, as containerd does, instead of through
    /// `--default-upstream`.
    pub family: Family,
    /// How every host's uplink queues ([`UplinkQueue::Fair`]: per destination host, as
    /// a Linux host's `fq_codel` would; see [`crate::netns`]).
    pub uplink: UplinkQueue,
    /// Every link's MTU (`None`: the kernel's 1500).
    pub mtu: Option<u32>,
    /// Sample every node's downlink during the pulls and print where each one idled
    /// (see [`timeline`]).
    pub timeline: bool,
}

/// What serves the nodes in one mode.
#[derive(Default)]
struct Servers {
    cache: Option<Registry>,
    scheduler: Option<LabScheduler>,
    peers: Vec<LabPeer>,
}

/// A lab with the origin registry and the blob in it.
struct Bench<'a> {
    opts: &'a Options,
    lab: Lab,
    origin: Registry,
    registry_host: Host,
    nodes: Vec<Host>,
    digest: String,
    setup: Setup,
}

/// Runs the benchmark; `on_lab` gets a handle that removes the lab (for a signal
/// handler). Fails when a node's bytes do not match the digest.
pub fn run(opts: &Options, on_lab: impl FnOnce(Cleaner)) -> anyhow::Result<(Setup, Vec<ModeRun>)> {
    anyhow::ensure!(opts.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(opts.nodes <= 200, "--nodes must be at most 200");
    anyhow::ensure!(!opts.modes.is_empty(), "no mode to run");
    std::fs::create_dir_all(&opts.work_dir)?;
    let bench = Bench::prepare(opts, on_lab)?;
    let mut runs = Vec::new();
    for &mode in &opts.modes {
        eprintln!("bench: {} mode, {} nodes", mode.name(), opts.nodes);
        let run = bench
            .run_mode(mode)
            .with_context(|| format!("{} mode", mode.name()))?;
        let f = run.figures(&bench.setup);
        eprintln!(
            "bench: {}: p50 {:.1} s, max {:.1} s, upstream egress {:.2} x",
            mode.name(),
            f.p50_secs,
            f.max_secs,
            f.egress_ratio
        );
        runs.push(run);
    }
    bench.lab.cleanup();
    Ok((bench.setup, runs))
}

impl<'a> Bench<'a> {
    /// Builds the blob, pushes it to a loopback registry, and serves that storage
    /// from the lab's registry host.
    fn prepare(opts: &'a Options, on_lab: impl FnOnce(Cleaner)) -> anyhow::Result<Self> {
        let work = &opts.work_dir;
        eprintln!(
            "bench: building a {} MiB blob",
            opts.size as f64 / f64::from(1 << 20)
        );
        let data = random_bytes(usize::try_from(opts.size)?, 0x5EED);
        let image = OciImage::build(&work.join("image"), "v1", &[("blob.bin", &data)])?;
        drop(data);
        let blob = image
            .blobs
            .iter()
            .find(|b| b.digest == image.layer_digest)
            .context("the image has no layer")?
            .clone();
        let storage = work.join("origin-storage");
        Registry::stage(&image, REPO, "v1", &work.join("staging"), &storage)?;
        std::fs::remove_dir_all(work.join("image")).ok();

        let mut lab = Lab::with_family(&opts.prefix, opts.rate.clone(), opts.family)?
            .with_uplink_queue(opts.uplink)
            .with_mtu(opts.mtu);
        on_lab(lab.cleaner());
        let registry_host = lab.add_host("registry")?;
        let origin = Registry::start_with(
            &work.join("origin"),
            &RegistryOptions {
                storage: Some(storage),
                netns: Some(NetnsListen {
                    ns: registry_host.ns.clone(),
                    listen: registry_host.addr(REGISTRY_PORT),
                }),
                ..RegistryOptions::default()
            },
        )?;
        for role in extra_roles(&opts.modes) {
            lab.add_host(role)?;
        }
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            nodes.push(lab.add_host(&format!("n{i}"))?);
        }
        let tcp_congestion = lab.tcp_congestion_control(&registry_host)?;
        let setup = Setup {
            tcp_congestion,
            nodes: opts.nodes,
            size: blob.size,
            rate_bits: opts.rate.bits_per_sec,
            rate_text: opts.rate.tc.clone(),
            uplink: opts.uplink,
            mtu: opts.mtu,
        };
        Ok(Bench {
            opts,
            lab,
            origin,
            registry_host,
            nodes,
            digest: blob.digest,
            setup,
        })
    }

    fn origin_url(&self) -> String {
        format!("http://{}", self.registry_host.addr(REGISTRY_PORT))
    }

    fn blob_path(&self) -> String {
        format!("/v2/{REPO}/blobs/{}", self.digest)
    }

    /// Blob bytes the origin has served so far (its access log).
    fn origin_bytes(&self) -> u64 {
        self.origin
            .access_log()
            .iter()
            .filter(|a| a.is_blob_get(&self.digest))
            .map(|a| a.bytes)
            .sum()
    }

    /// Starts what `mode` needs, pulls on every node at once, stops it again.
    fn run_mode(&self, mode: Mode) -> anyhow::Result<ModeRun> {
        let dir = self.opts.work_dir.join(mode.name());
        std::fs::create_dir_all(&dir)?;
        let before = self.origin_bytes();
        // What serves the nodes in this mode; stopped (dropped) at the end.
        let mut servers = Servers::default();
        let urls: Vec<String> = match mode {
            Mode::Alone => vec![format!("{}{}", self.origin_url(), self.blob_path())],
            Mode::Direct => {
                vec![format!("{}{}", self.origin_url(), self.blob_path()); self.nodes.len()]
            }
            Mode::Cache => {
                let host = self.host_for("cache")?;
                servers.cache = Some(Registry::start_with(
                    &dir.join("cache"),
                    &RegistryOptions {
                        proxy_remote: Some(self.origin_url()),
                        netns: Some(NetnsListen {
                            ns: host.ns.clone(),
                            listen: host.addr(REGISTRY_PORT),
                        }),
                        ..RegistryOptions::default()
                    },
                )?);
                let url = format!("http://{}{}", host.addr(REGISTRY_PORT), self.blob_path());
                vec![url; self.nodes.len()]
            }
            Mode::Shoal => {
                let host = self.host_for("scheduler")?;
                let tls_dir = dir.join("peer-tls");
                PeerProcess::tls_init(&tls_dir)?;
                let scheduler = LabScheduler::start(
                    &self.lab,
                    &host,
                    &dir.join("scheduler"),
                    &tls_dir,
                    &self.opts.scheduler_flags,
                )?;
                let mut options = PeerOptions {
                    scheduler: Some(scheduler.grpc_url()),
                    default_upstream: Some(self.origin_url()),
                    hosts_dir: None,
                    tls_dir,
                    extra: self.opts.peer_flags.clone(),
                };
                let mut query = String::new();
                if self.opts.family == Family::V6 {
                    // The registry by its IPv6 name, as a node's containerd config has it.
                    let ns = self.registry_host.addr(REGISTRY_PORT).to_string();
                    let hosts = dir.join("certs.d");
                    std::fs::create_dir_all(hosts.join(&ns))?;
                    std::fs::write(
                        hosts.join(&ns).join("hosts.toml"),
                        format!("server = {:?}\n", self.origin_url()),
                    )?;
                    options.default_upstream = None;
                    options.hosts_dir = Some(hosts);
                    // containerd percent-encodes the brackets and colons.
                    query = format!(
                        "?ns={}",
                        ns.replace('[', "%5B")
                            .replace(']', "%5D")
                            .replace(':', "%3A")
                    );
                }
                let mut urls = Vec::new();
                for node in &self.nodes {
                    let peer = LabPeer::start(&self.lab, node, &dir.join(&node.role), &options)?;
                    urls.push(format!("{}{}{query}", peer.mirror_url(), self.blob_path()));
                    servers.peers.push(peer);
                }
                scheduler.wait_for_peers(&self.lab, self.nodes.len())?;
                servers.scheduler = Some(scheduler);
                urls
            }
        };
        let links_before = self.link_bytes()?;
        let started = std::time::Instant::now();
        let cpu_before = machine_cpu()?;
        let start_at = fetch::unix_ms() + 1500;
        let pulls = if self.opts.timeline {
            let stop = AtomicBool::new(false);
            let (pulls, samples) = std::thread::scope(|s| {
                let sampler = s.spawn(|| timeline::sample(&self.lab, start_at, &stop));
                let pulls = self.pull_all(&urls, start_at);
                stop.store(true, Ordering::Relaxed);
                let samples = sampler.join().expect("the timeline sampler panicked");
                (pulls, samples)
            });
            let (pulls, samples) = (pulls?, samples?);
            self.print_idle(&samples, &pulls);
            std::fs::write(dir.join("timeline.csv"), timeline::csv(&samples))?;
            pulls
        } else {
            self.pull_all(&urls, start_at)?
        };
        let cpu_after = machine_cpu()?;
        self.print_link_use(&links_before, &pulls)?;
        let wall_secs = started.elapsed().as_secs_f64();
        let upstream_bytes = self.origin_bytes() - before;
        let mut peers_secs = None;
        for (peer, pull) in servers.peers.iter().zip(&pulls) {
            let cpu = self.print_peer_counters(peer, pull.secs);
            *peers_secs.get_or_insert(0.0) += cpu.unwrap_or(f64::NAN);
        }
        drop(servers);
        Ok(ModeRun {
            mode,
            pulls,
            upstream_bytes,
            cpu: CpuUse {
                cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
                wall_secs,
                busy_secs: cpu_before.busy_secs_until(&cpu_after),
                peers_secs,
            },
        })
    }

    /// Every node's link counters now.
    fn link_bytes(&self) -> anyhow::Result<Vec<LinkBytes>> {
        self.nodes.iter().map(|n| self.lab.link_bytes(n)).collect()
    }

    /// One line per node on stderr: what its link carried during the pull, as a
    /// multiple of the blob (the framing and acknowledgements above 1.00, and in shoal
    /// mode what it passed on) and as a share of its link's capacity over its own pull.
    fn print_link_use(&self, before: &[LinkBytes], pulls: &[NodePull]) -> anyhow::Result<()> {
        let after = self.link_bytes()?;
        let blob = self.setup.size as f64;
        let capacity = |secs: f64| self.opts.rate.bits_per_sec as f64 / 8.0 * secs;
        for ((b, a), pull) in before.iter().zip(&after).zip(pulls) {
            let used = a.since(*b);
            eprintln!(
                "bench:   {:<4} link: received {:.3} x the blob ({:.1} % of its downlink over its pull), sent {:.3} x",
                pull.node,
                used.rx as f64 / blob,
                100.0 * used.rx as f64 / capacity(pull.secs),
                used.tx as f64 / blob,
            );
        }
        Ok(())
    }

    /// One line per peer on stderr: where its bytes came from, what it served and the
    /// CPU it used; returns the CPU (core-seconds since it started).
    fn print_peer_counters(&self, peer: &LabPeer, secs: f64) -> Option<f64> {
        let m = peer.metrics(&self.lab).ok()?;
        let mib = |k: &str| m.get(k).copied().unwrap_or(0.0) / f64::from(1 << 20);
        let n = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let cpu = m.get("process_cpu_seconds_total").copied();
        eprintln!(
            "bench:   {:<4} {secs:>6.1} s, from upstream {:>6.1} MiB, from peers {:>6.1} MiB, served to peers {:>6.1} MiB, busy answers {:>4}, pieces rejected {}, CPU {:.1} s",
            peer.host.role,
            mib("shoal_peer_bytes_from_upstream_total"),
            mib("shoal_peer_bytes_from_peers_total"),
            mib("shoal_peer_served_bytes_total"),
            n("shoal_peer_upload_busy_total"),
            n("shoal_peer_pieces_rejected_total"),
            cpu.unwrap_or(f64::NAN),
        );
        cpu
    }

    /// The host `role`, added to the lab the first time it is asked for.
    fn host_for(&self, role: &str) -> anyhow::Result<Host> {
        self.lab
            .hosts()
            .iter()
            .find(|h| h.role == role)
            .cloned()
            .with_context(|| format!("the lab has no {role} host (added in prepare)"))
    }

    /// One line per node on stderr: how long its downlink idled during its pull, and
    /// when (see [`timeline::idle`]).
    fn print_idle(&self, samples: &[timeline::Sample], pulls: &[NodePull]) {
        let rate = self.opts.rate.bits_per_sec as f64 / 8.0;
        for pull in pulls {
            let done_ms = (pull.secs * 1000.0) as i64;
            match timeline::idle(samples, &pull.node, rate, done_ms) {
                Some(idle) => eprintln!(
                    "bench:   {:<4} downlink idle {:.2} s of its {:.1} s: {:.2} s before its first bytes, {:.2} s in the second after them, {:.2} s later",
                    pull.node,
                    idle.total(),
                    pull.secs,
                    idle.before_first_bytes,
                    idle.first_second,
                    idle.after,
                ),
                None => eprintln!("bench:   {:<4} downlink: no bytes sampled", pull.node),
            }
        }
    }

    /// Every node fetches its URL, all starting at `start_at` (Unix ms).
    fn pull_all(&self, urls: &[String], start_at: u64) -> anyhow::Result<Vec<NodePull>> {
        let me = std::env::current_exe()?;
        let limit = self.opts.pull_limit.as_secs().to_string();
        let mut children: Vec<(Host, Child)> = Vec::new();
        for (node, url) in self.nodes.iter().zip(urls) {
            let child = self
                .lab
                .command(node, &me)
                .args(["fetch", url, &start_at.to_string(), &limit])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting the fetch on {}", node.role))?;
            children.push((node.clone(), child));
        }
        let mut pulls = Vec::new();
        for (node, child) in children {
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let f = fetch::Fetched::from_json(&text).with_context(|| {
                format!("the fetch on {} printed no result: {text:?}", node.role)
            })?;
            if let Some(e) = &f.error {
                anyhow::bail!("the pull on {} failed: {e}", node.role);
            }
            pulls.push(NodePull {
                node: node.role.clone(),
                secs: f.secs,
                bytes: f.bytes,
                digest_ok: f.digest == self.digest,
            });
        }
        Ok(pulls)
    }
}

/// The machine's CPU counters now.
fn machine_cpu() -> anyhow::Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    CpuTimes::parse(&text).context("/proc/stat has no `cpu` line")
}

/// The hosts `modes` need besides the registry and the nodes.
fn extra_roles(modes: &[Mode]) -> Vec<&'static str> {
    let mut roles = Vec::new();
    if modes.contains(&Mode::Cache) {
        roles.push("cache");
    }
    if modes.contains(&Mode::Shoal) {
        roles.push("scheduler");
    }
    roles
}

/// The tools the benchmark runs, and the Debian package of each.
pub const TOOLS: [(&str, &str); 5] = [
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("tc", "iproute2"),
];

/// Fails unless `shoal-peer` and `shoal-scheduler` are built next to this executable.
pub fn check_binaries() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for b in ["shoal-peer", "shoal-scheduler"] {
        anyhow::ensure!(
            dir.join(b).is_file(),
            "{b} is not built next to this benchmark ({}); run `cargo build --release --bins`",
            dir.display()
        );
    }
    Ok(())
}
