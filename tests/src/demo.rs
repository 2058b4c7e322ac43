//! The main job (`scripts/demo`, binary `shoal-demo`): a local swarm pulls a real
//! image through Shoal with a real containerd on every node, and shows where the bytes
//! came from.
//!
//! What runs: a [`Lab`] (one network namespace per host, a bridge between them, links
//! shaped with `tc tbf`), Debian's `docker-registry` on the `registry` host holding a
//! generated three-layer image, `shoal-scheduler` on the `scheduler` host, and on every
//! node host a `shoal-peer run` and its own containerd 1.6. Each node's `hosts.toml`
//! names the registry (`server`), and `shoal-peer containerd configure` puts the
//! node's mirror in front of it, as the chart's init container does.
//!
//! Rounds: every node pulls the image at the same moment (`ctr image pull
//! --hosts-dir`); then the first node forgets the image and pulls it again, which its
//! own cache serves. Per pull: time, and bytes from upstream, from peers and from the
//! node's own cache (the peer's `/metrics`); then the registry's egress ÷ the image.
//!
//! Everything it starts is stopped and removed at the end, on error and on Ctrl-C
//! (the lab's namespaces and every process in them, containerd included).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::containerd::{Containerd, upstream_hosts_toml, write_hosts_toml};
use crate::image::{OciImage, random_bytes};
use crate::netns::{Cleaner, Host, Lab, LinkRate};
use crate::netswarm::{LabPeer, LabScheduler, MIRROR_PORT};
use crate::registry::{NetnsListen, Registry, RegistryOptions};
use crate::swarm::{PeerOptions, PeerProcess, workspace_bin};

const REGISTRY_PORT: u16 = 5000;
const REPO: &str = "demo/app";
const MIB: f64 = (1 << 20) as f64;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Nodes (each a peer and a containerd).
    pub nodes: usize,
    /// Every link's rate.
    pub rate: LinkRate,
    /// MiB of the image's big layer (random, so incompressible).
    pub big_layer_mib: usize,
    /// Namespace-name prefix.
    pub prefix: String,
    /// Where everything lives while it runs (short: containerd's socket path).
    pub work_dir: PathBuf,
}

/// One pull on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRow {
    /// The node.
    pub node: String,
    /// Which round (`at once`, `again`).
    pub round: &'static str,
    /// Seconds `ctr image pull` took.
    pub secs: f64,
    /// Bytes the node's peer fetched from the registry during the pull.
    pub from_upstream: u64,
    /// Bytes it fetched from other peers.
    pub from_peers: u64,
    /// Bytes its mirror served from the node's own cache.
    pub from_cache: u64,
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// Every pull, in order.
    pub pulls: Vec<PullRow>,
    /// Bytes of the image (manifest, config and layers).
    pub image_bytes: u64,
    /// Blob bytes the registry served in all.
    pub upstream_bytes: u64,
    /// The scheduler's view at the end (`shoalctl tasks`).
    pub scheduler_view: String,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

/// The report as the demo prints it.
pub fn render(r: &DemoReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<8} {:>7} {:>14} {:>14} {:>15}",
        "node", "round", "pull s", "from upstream", "from peers", "from own cache"
    );
    for p in &r.pulls {
        let _ = writeln!(
            out,
            "{:<6} {:<8} {:>7.2} {:>14} {:>14} {:>15}",
            p.node,
            p.round,
            p.secs,
            mib(p.from_upstream),
            mib(p.from_peers),
            mib(p.from_cache)
        );
    }
    let _ = writeln!(
        out,
        "\nupstream egress: {} for a {} image = {:.2} x the image",
        mib(r.upstream_bytes),
        mib(r.image_bytes),
        r.upstream_bytes as f64 / r.image_bytes as f64
    );
    out
}

struct Node {
    host: Host,
    peer: LabPeer,
    containerd: Containerd,
    hosts_dir: PathBuf,
}

impl Node {
    fn counters(&self, lab: &Lab) -> anyhow::Result<[u64; 3]> {
        let m = self.peer.metrics(lab)?;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
        Ok([
            get("shoal_peer_bytes_from_upstream_total"),
            get("shoal_peer_bytes_from_peers_total"),
            get("shoal_mirror_blob_bytes_from_cache_total"),
        ])
    }
}

/// Runs the demo; `on_lab` gets a handle that removes the lab (for a signal handler).
pub fn run(opts: &DemoOptions, on_lab: impl FnOnce(Cleaner)) -> anyhow::Result<DemoReport> {
    anyhow::ensure!((1..=20).contains(&opts.nodes), "--nodes must be 1 to 20");
    let work = &opts.work_dir;
    std::fs::create_dir_all(work)?;
    say(&format!(
        "building a 3-layer image ({} MiB, 8 MiB, 1 MiB of random data)",
        opts.big_layer_mib
    ));
    let image = build_image(&work.join("image"), opts.big_layer_mib)?;
    let storage = work.join("registry-storage");
    Registry::stage(&image, REPO, "v1", &work.join("staging"), &storage)?;

    let mut lab = Lab::new(&opts.prefix, opts.rate.clone())?;
    on_lab(lab.cleaner());
    let registry_host = lab.add_host("registry")?;
    let scheduler_host = lab.add_host("scheduler")?;
    let mut node_hosts = Vec::new();
    for i in 1..=opts.nodes {
        node_hosts.push(lab.add_host(&format!("n{i}"))?);
    }
    let registry_addr = registry_host.addr(REGISTRY_PORT);
    say(&format!(
        "network: {} hosts on a bridge, every link {}; registry on {registry_addr}, scheduler on {}",
        lab.hosts().len(),
        opts.rate.tc,
        scheduler_host.ip
    ));
    let registry = Registry::start_with(
        &work.join("registry"),
        &RegistryOptions {
            storage: Some(storage),
            netns: Some(NetnsListen {
                ns: registry_host.ns.clone(),
                listen: registry_addr,
            }),
            ..RegistryOptions::default()
        },
    )?;
    let tls_dir = work.join("peer-tls");
    PeerProcess::tls_init(&tls_dir)?;
    let scheduler = LabScheduler::start(
        &lab,
        &scheduler_host,
        &work.join("scheduler"),
        &tls_dir,
        &[],
    )?;

    let registry_name = registry_addr.to_string();
    let mut nodes = Vec::new();
    for host in &node_hosts {
        nodes.push(start_node(
            &lab,
            host,
            &work.join(&host.role),
            &registry_name,
            &scheduler,
            &tls_dir,
        )?);
    }
    scheduler.wait_for_peers(&lab, nodes.len())?;
    say(&format!(
        "{} nodes up: each a shoal-peer (mirror on its own 127.0.0.1:{MIRROR_PORT}) and a containerd",
        nodes.len()
    ));

    let reference = format!("{registry_name}/{REPO}:v1");
    say(&format!("every node pulls {reference} at the same time"));
    let mut pulls = pull_round(&lab, &nodes, "at once", &reference, &image)?;
    say("n1 forgets the image and pulls it again");
    nodes[0].containerd.remove_image(&reference)?;
    pulls.extend(pull_round(&lab, &nodes[..1], "again", &reference, &image)?);

    let upstream_bytes = registry
        .access_log()
        .iter()
        .filter(|a| a.method == "GET" && a.path.contains("/blobs/sha256:"))
        .map(|a| a.bytes)
        .sum();
    let scheduler_view =
        shoalctl(&lab, &scheduler, &["tasks"]).unwrap_or_else(|e| format!("({e})"));
    Ok(DemoReport {
        pulls,
        image_bytes: image.size(),
        upstream_bytes,
        scheduler_view,
    })
}

fn say(what: &str) {
    eprintln!("demo: {what}");
}

fn build_image(dir: &Path, big_mib: usize) -> anyhow::Result<OciImage> {
    let big = random_bytes(big_mib << 20, 1);
    let mid = random_bytes(8 << 20, 2);
    let small = random_bytes(1 << 20, 3);
    OciImage::build_layers(
        dir,
        "v1",
        &[
            &[("opt/app/data.bin", &big)],
            &[("opt/app/assets.bin", &mid)],
            &[
                ("opt/app/small.bin", &small),
                ("etc/motd", b"pulled through Shoal\n"),
            ],
        ],
    )
}

/// The node's hosts dir (the registry's `server`, then the mirror in front, as the
/// chart's init container writes it), its peer and its containerd.
fn start_node(
    lab: &Lab,
    host: &Host,
    dir: &Path,
    registry: &str,
    scheduler: &LabScheduler,
    tls_dir: &Path,
) -> anyhow::Result<Node> {
    let hosts_dir = dir.join("certs.d");
    write_hosts_toml(
        &hosts_dir,
        registry,
        &upstream_hosts_toml(&format!("http://{registry}"), None),
    )?;
    let peer = LabPeer::start(
        lab,
        host,
        dir,
        &PeerOptions {
            scheduler: Some(scheduler.grpc_url()),
            default_upstream: None,
            hosts_dir: Some(hosts_dir.clone()),
            tls_dir: tls_dir.to_path_buf(),
            extra: Vec::new(),
        },
    )?;
    let out = Command::new(workspace_bin("shoal-peer"))
        .args(["containerd", "configure", "--no-default-host"])
        .arg("--hosts-dir")
        .arg(&hosts_dir)
        .arg("--mirror-url")
        .arg(peer.mirror_url())
        .arg("--registry")
        .arg(registry)
        .output()
        .context("running shoal-peer containerd configure")?;
    anyhow::ensure!(
        out.status.success(),
        "shoal-peer containerd configure on {}: {}",
        host.role,
        String::from_utf8_lossy(&out.stderr)
    );
    let containerd = Containerd::start_in(&dir.join("ctd"), Some(&host.ns))
        .with_context(|| format!("starting containerd on {}", host.role))?;
    Ok(Node {
        host: host.clone(),
        peer,
        containerd,
        hosts_dir,
    })
}

/// `nodes` pull `reference` at once; fails unless each pull succeeded and the image
/// is complete and unpacked.
fn pull_round(
    lab: &Lab,
    nodes: &[Node],
    round: &'static str,
    reference: &str,
    image: &OciImage,
) -> anyhow::Result<Vec<PullRow>> {
    let before: Vec<[u64; 3]> = nodes
        .iter()
        .map(|n| n.counters(lab))
        .collect::<anyhow::Result<_>>()?;
    // One thread per pull, so that each is timed on its own.
    let outputs: Vec<(std::io::Result<std::process::Output>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let start = Instant::now();
                    let out = n.containerd.pull_command(&n.hosts_dir, reference).output();
                    (out, start.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pull thread"))
            .collect()
    });
    let mut rows = Vec::new();
    for ((n, (out, secs)), before) in nodes.iter().zip(outputs).zip(before) {
        let out = out.context("running ctr image pull")?;
        anyhow::ensure!(
            out.status.success(),
            "ctr image pull on {} failed: {}\npeer log:\n{}",
            n.host.role,
            String::from_utf8_lossy(&out.stderr),
            n.peer.process.log()
        );
        let check = n.containerd.image_check(reference)?;
        anyhow::ensure!(
            check.complete && check.unpacked,
            "{}: the image is not complete and unpacked: {}",
            n.host.role,
            check.line
        );
        let digests = n.containerd.content_digests()?;
        for b in &image.blobs {
            anyhow::ensure!(
                digests.contains(&b.digest),
                "{}: containerd has no {}",
                n.host.role,
                b.digest
            );
        }
        let after = n.counters(lab)?;
        rows.push(PullRow {
            node: n.host.role.clone(),
            round,
            secs,
            from_upstream: after[0] - before[0],
            from_peers: after[1] - before[1],
            from_cache: after[2] - before[2],
        });
    }
    Ok(rows)
}

/// `shoalctl ARGS…` run on the scheduler's host.
fn shoalctl(lab: &Lab, scheduler: &LabScheduler, args: &[&str]) -> anyhow::Result<String> {
    let out = lab
        .command(&scheduler.host, &workspace_bin("shoalctl"))
        .arg("--scheduler")
        .arg(scheduler.http_url())
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "shoalctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_pull_and_the_egress_ratio() {
        let r = DemoReport {
            pulls: vec![
                PullRow {
                    node: "n1".into(),
                    round: "at once",
                    secs: 1.5,
                    from_upstream: 73 << 20,
                    from_peers: 0,
                    from_cache: 0,
                },
                PullRow {
                    node: "n1".into(),
                    round: "again",
                    secs: 0.25,
                    from_upstream: 0,
                    from_peers: 0,
                    from_cache: 73 << 20,
                },
            ],
            image_bytes: 73 << 20,
            upstream_bytes: 73 << 20,
            scheduler_view: String::new(),
        };
        let t = render(&r);
        assert!(t.lines().next().unwrap().contains("from own cache"));
        assert!(
            t.contains("n1     at once     1.50       73.0 MiB        0.0 MiB         0.0 MiB"),
            "{t}"
        );
        assert!(
            t.contains("n1     again       0.25        0.0 MiB        0.0 MiB        73.0 MiB"),
            "{t}"
        );
        assert!(t.contains("= 1.00 x the image"), "{t}");
    }
}
