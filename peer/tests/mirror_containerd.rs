//! End to end with real components only: Debian's `docker-registry` as upstream (plain
//! HTTP, and TLS requiring a client certificate), a `shoal-scheduler` and `shoal-peer`
//! processes, one private containerd 1.6 per node pulling with `ctr image pull
//! --hosts-dir`, and skopeo through a `registries.conf` mirror.
//!
//! Every node is one peer and its own containerd (own root, state and socket): three
//! containerds rather than one whose content store is cleared between pulls, because
//! pulls that run at the same time in one containerd share its ingests (the second
//! waits on the first's lock and never asks the mirror), which would hide exactly the
//! concurrency under test. Each node's hosts dir is written the way an operator and the
//! chart's init container would: `hosts.toml` with `server` (and `ca` / `client`), then
//! `shoal-peer containerd configure` puts the node's mirror in front. The peer reads the
//! same directory and skips its own mirror entry.
//!
//! How upstream traffic is counted: the registry's access log (one line per answered
//! request, with method, path, status, bytes and `User-Agent`). A blob counts when a
//! `GET …/blobs/<digest>` line names it, whatever its status or client; `HEAD`s (the
//! mirror asks for a blob's size with one) and manifests do not count. The
//! `User-Agent` tells a peer (`shoal-peer/…`) from containerd (`containerd/…`), which
//! shows whether containerd ever went around the mirror.
//!
//! Needs root (containerd) and the Debian packages containerd, docker-registry and
//! skopeo: skips with a printed reason outside CI, fails under `CI=true`. Traffic stays
//! on 127.0.0.1. No duration is asserted; waits only bound a hang.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shoal_tests::containerd::{Containerd, HostsTls, upstream_hosts_toml, write_hosts_toml};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Access, Registry, RegistryOptions, RegistryTls};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};
use shoal_tests::tls::TestPki;
use shoal_tests::{require_root, require_tools, wait_until};

const MIB: usize = 1 << 20;
/// The big layer: random, so incompressible; ≥ 50 MiB as the issue asks.
const BIG: usize = 50 * MIB;
const NODES: usize = 3;
const REPO: &str = "e2e/app";

fn available(test: &str) -> bool {
    if !require_tools(test, &["containerd", "ctr", "docker-registry", "skopeo"]) {
        return false;
    }
    require_root(test, "containerd")
}

/// A temp dir with a short path: containerd's socket path must fit in 107 bytes.
fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shoal")
        .tempdir_in("/tmp")
        .unwrap()
}

/// An image of two layers: `big` random bytes in one, 1 MiB in the other; `seed`
/// makes every blob distinct from other images'.
fn image(dir: &Path, seed: u64, big: usize) -> OciImage {
    let big_file = random_bytes(big, seed);
    let small_file = random_bytes(MIB, seed + 1);
    let note = format!("image {seed}\n");
    OciImage::build_layers(
        dir,
        "v1",
        &[
            &[("big.bin", &big_file)],
            &[("small.bin", &small_file), ("note.txt", note.as_bytes())],
        ],
    )
    .unwrap()
}

/// The upstream registry and how to reach it.
struct Upstream {
    registry: Registry,
    /// `127.0.0.1:PORT`: containerd's `ns`, the reference's host, the hosts dir entry.
    name: String,
    /// The PKI of the TLS registry (its dir holds `ca.crt`, `client.cert`, `client.key`).
    pki: Option<(PathBuf, TestPki)>,
}

impl Upstream {
    fn start(dir: &Path, tls: bool) -> Upstream {
        let pki = tls.then(|| {
            let d = dir.join("pki");
            (d.clone(), TestPki::generate(&d).unwrap())
        });
        let options = RegistryOptions {
            tls: pki.as_ref().map(|(_, p)| RegistryTls {
                certificate: p.server_cert.clone(),
                key: p.server_key.clone(),
                client_cas: vec![p.ca_cert.clone()],
            }),
            ..RegistryOptions::default()
        };
        let registry = Registry::start_with(&dir.join("registry"), &options).unwrap();
        Upstream {
            name: registry.addr().to_string(),
            registry,
            pki,
        }
    }

    fn push(&self, image: &OciImage) {
        let cert_dir = self.pki.as_ref().map(|(d, _)| d.as_path());
        image
            .push_with(&self.name, REPO, &image.tag, cert_dir)
            .unwrap();
    }

    fn reference(&self, image: &OciImage) -> String {
        format!("{}/{REPO}:{}", self.name, image.tag)
    }

    /// The operator's `hosts.toml` for this registry; `with_client: false` leaves the
    /// client certificate out.
    fn hosts_toml(&self, with_client: bool) -> String {
        let tls = self.pki.as_ref().map(|(_, p)| HostsTls {
            ca: p.ca_cert.clone(),
            client: with_client.then(|| (p.client_cert.clone(), p.client_key.clone())),
        });
        upstream_hosts_toml(&self.registry.url(), tls.as_ref())
    }

    /// The access log from line `since` on, once every blob of `image` has a GET line
    /// (the registry writes a line after it answered; this bounds a hang, 20 s).
    fn log_once_served(&self, since: usize, image: &OciImage) -> Vec<Access> {
        let all_served = |log: &[Access]| {
            image
                .blobs
                .iter()
                .all(|b| log.iter().any(|a| a.is_blob_get(&b.digest)))
        };
        let _ = wait_until("the registry's access log", Duration::from_secs(20), || {
            all_served(&self.registry.access_log()[since..])
        });
        self.registry.access_log()[since..].to_vec()
    }
}

/// A node: a peer and its own containerd, with the hosts dir both read.
struct Node {
    peer: PeerProcess,
    containerd: Containerd,
    hosts: PathBuf,
}

impl Node {
    async fn start(dir: &Path, i: usize, up: &Upstream, options: &PeerOptions) -> Node {
        let name = format!("node-{i}");
        let hosts = dir.join(format!("hosts-{i}"));
        write_hosts_toml(&hosts, &up.name, &up.hosts_toml(true)).unwrap();
        let options = PeerOptions {
            hosts_dir: Some(hosts.clone()),
            ..options.clone()
        };
        let peer = PeerProcess::start(dir, &name, &options).await.unwrap();
        peer.configure_containerd(&hosts, &up.name).unwrap();
        let containerd = Containerd::start(&dir.join(format!("c{i}"))).unwrap();
        Node {
            peer,
            containerd,
            hosts,
        }
    }

    fn pull(&self, reference: &str) -> Output {
        self.containerd.pull(&self.hosts, reference).unwrap()
    }

    /// Asserts that the pull succeeded and the image is complete, unpacked, and every
    /// blob (checked against its digest by containerd) is in the content store.
    fn assert_pulled(&self, out: &Output, reference: &str, image: &OciImage) {
        assert!(
            out.status.success(),
            "{}: pull of {reference} failed: {}\n{}\npeer log:\n{}\ncontainerd log:\n{}",
            self.peer.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.peer.log(),
            self.containerd.log()
        );
        let check = self.containerd.image_check(reference).unwrap();
        assert!(
            check.complete && check.unpacked,
            "{}: {}",
            self.peer.name,
            check.line
        );
        let content = self.containerd.content_digests().unwrap();
        for digest in image
            .blobs
            .iter()
            .map(|b| &b.digest)
            .chain([&image.manifest_digest])
        {
            assert!(
                content.contains(digest),
                "{}: {digest} not in the content store: {content:?}",
                self.peer.name
            );
        }
    }
}

/// Each blob of `image` was fetched from the registry exactly once, and by a Shoal peer:
/// containerd never went around the mirror.
fn assert_each_blob_served_once(log: &[Access], image: &OciImage, round: &str) {
    for blob in &image.blobs {
        let gets: Vec<&Access> = log.iter().filter(|a| a.is_blob_get(&blob.digest)).collect();
        assert_eq!(
            gets.len(),
            1,
            "{round}: blob {} ({} bytes) was GET {} times from upstream: {gets:?}",
            blob.digest,
            blob.size,
            gets.len()
        );
    }
    let around: Vec<&Access> = log.iter().filter(|a| !a.from_shoal()).collect();
    assert!(
        around.is_empty(),
        "{round}: requests reached the registry without Shoal: {around:?}"
    );
}

async fn figures(round: &str, nodes: &[Node], log: &[Access]) {
    let egress: u64 = log
        .iter()
        .filter(|a| a.method == "GET")
        .map(|a| a.bytes)
        .sum();
    let mut line = format!(
        "{round}: upstream egress {:.1} MiB;",
        egress as f64 / MIB as f64
    );
    for n in nodes {
        let m = n.peer.metrics().await.unwrap_or_default();
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0) / MIB as f64;
        line += &format!(
            " {}: upstream {:.1} MiB, peers {:.1} MiB, cache {:.1} MiB;",
            n.peer.name,
            g("shoal_peer_bytes_from_upstream_total"),
            g("shoal_peer_bytes_from_peers_total"),
            g("shoal_mirror_blob_bytes_from_cache_total"),
        );
    }
    eprintln!("{line}");
}

/// Three nodes pull one image one after another, then a fresh image all at the same
/// time; with `tls`, the registry requires a client certificate, which only the
/// peers present (hosts.toml's `client`), and a node whose peer lacks it shows that.
async fn three_nodes_pull_through_shoal(tls: bool) {
    let tmp = short_tempdir();
    let dir = tmp.path();
    let up = Upstream::start(dir, tls);
    let tls_dir = dir.join("peer-tls");
    PeerProcess::tls_init(&tls_dir).unwrap();
    let sched = SchedulerProcess::start(&dir.join("scheduler"), &tls_dir)
        .await
        .unwrap();
    let options = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: None,
        tls_dir: tls_dir.clone(),
        extra: Vec::new(),
    };
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(Node::start(dir, i, &up, &options).await);
    }
    let configured =
        std::fs::read_to_string(nodes[0].hosts.join(&up.name).join("hosts.toml")).unwrap();
    assert!(
        configured.contains(&format!("[host.\"{}\"]", nodes[0].peer.mirror_url()))
            && configured.contains(&format!("server = \"{}\"", up.registry.url())),
        "configure put the mirror in front of the server:\n{configured}"
    );
    if tls {
        assert!(configured.contains("client = [["), "{configured}");
    }
    sched.wait_for_peers(NODES).await.unwrap();

    // One after another: the first node's peer fetches from upstream, the others from it.
    let a = image(&dir.join("image-a"), 10, BIG);
    up.push(&a);
    let reference = up.reference(&a);
    let since = up.registry.access_log().len();
    for n in &nodes {
        let out = n.pull(&reference);
        n.assert_pulled(&out, &reference, &a);
    }
    let log = up.log_once_served(since, &a);
    figures("one after another", &nodes, &log).await;
    assert_each_blob_served_once(&log, &a, "one after another");

    // All at once, a fresh image: the scheduler elects one peer to fetch from upstream.
    let b = image(&dir.join("image-b"), 20, BIG);
    up.push(&b);
    let reference = up.reference(&b);
    let since = up.registry.access_log().len();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let pulls: Vec<_> = nodes
            .iter()
            .map(|n| s.spawn(|| n.pull(&reference)))
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (n, out) in nodes.iter().zip(&outs) {
        n.assert_pulled(out, &reference, &b);
    }
    let log = up.log_once_served(since, &b);
    figures("all at once", &nodes, &log).await;
    assert_each_blob_served_once(&log, &b, "all at once");

    if tls {
        // Whatever reached the registry above came from a peer (asserted), over a
        // connection the registry only accepts with a client certificate: the peers
        // presented hosts.toml's `client`. Now a peer whose hosts.toml lacks it, in
        // front of a containerd whose hosts.toml has it.
        peer_without_client_certificate(dir, &up, &options, &nodes[0].containerd).await;
    }
}

/// The negative case: the only difference from the nodes above is that this peer's
/// `hosts.toml` has no `client` line. containerd's own `hosts.toml` still has it, so
/// containerd can reach the registry itself once the mirror fails. The pull succeeds,
/// but every blob came from containerd directly, none through the peer: the peer was
/// refused for want of a certificate.
async fn peer_without_client_certificate(
    dir: &Path,
    up: &Upstream,
    options: &PeerOptions,
    containerd: &Containerd,
) {
    let peer_hosts = dir.join("hosts-neg-peer");
    write_hosts_toml(&peer_hosts, &up.name, &up.hosts_toml(false)).unwrap();
    let options = PeerOptions {
        scheduler: None,
        hosts_dir: Some(peer_hosts.clone()),
        ..options.clone()
    };
    let peer = PeerProcess::start(dir, "node-neg", &options).await.unwrap();
    peer.configure_containerd(&peer_hosts, &up.name).unwrap();
    let containerd_hosts = dir.join("hosts-neg-containerd");
    write_hosts_toml(&containerd_hosts, &up.name, &up.hosts_toml(true)).unwrap();
    peer.configure_containerd(&containerd_hosts, &up.name)
        .unwrap();

    let c = image(&dir.join("image-c"), 30, MIB);
    up.push(&c);
    let reference = up.reference(&c);
    let since = up.registry.access_log().len();
    let out = containerd.pull(&containerd_hosts, &reference).unwrap();
    assert!(
        out.status.success(),
        "containerd falls back to the registry with its own client certificate: {}\npeer log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        peer.log()
    );
    let log = up.log_once_served(since, &c);
    for blob in &c.blobs {
        let by_shoal = log
            .iter()
            .filter(|a| a.is_blob_get(&blob.digest) && a.from_shoal() && a.status < 300)
            .count();
        let by_containerd = log
            .iter()
            .filter(|a| a.is_blob_get(&blob.digest) && a.user_agent.starts_with("containerd/"))
            .count();
        assert_eq!(
            (by_shoal, by_containerd),
            (0, 1),
            "blob {}: without `client` the peer gets nothing and containerd fetches it itself: {log:?}",
            blob.digest
        );
    }
    assert_eq!(
        peer.metric("shoal_peer_bytes_from_upstream_total").await,
        0.0
    );
    assert!(
        peer.metric("shoal_mirror_failed_total").await >= 1.0,
        "the mirror answered 5xx so containerd moved on"
    );
    let registry_log = up.registry.log();
    assert!(
        registry_log.contains("client didn't provide a certificate"),
        "the registry refused a TLS handshake without a client certificate:\n{registry_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_registry_three_nodes_one_after_another_then_at_once() {
    if !available("plain_http_registry_three_nodes") {
        return;
    }
    three_nodes_pull_through_shoal(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_client_certificates_three_nodes_and_a_peer_without_one() {
    if !available("tls_registry_with_client_certificates") {
        return;
    }
    three_nodes_pull_through_shoal(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_through_a_registries_conf_mirror_and_digests_match() {
    if !available("skopeo_through_registries_conf") {
        return;
    }
    let tmp = short_tempdir();
    let dir = tmp.path();
    let up = Upstream::start(dir, false);
    let image = image(&dir.join("image"), 40, 8 * MIB);
    up.push(&image);
    let tls_dir = dir.join("peer-tls");
    PeerProcess::tls_init(&tls_dir).unwrap();
    // skopeo sends no `ns`: the peer's default upstream names the registry.
    let peer = PeerProcess::start(
        dir,
        "node-0",
        &PeerOptions {
            scheduler: None,
            default_upstream: Some(up.registry.url()),
            hosts_dir: None,
            tls_dir,
            extra: Vec::new(),
        },
    )
    .await
    .unwrap();
    let conf = dir.join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            up.name,
            peer.mirror_addr()
        ),
    )
    .unwrap();
    let out_dir = dir.join("copied");
    let since = up.registry.access_log().len();
    // `--registries-conf`, not the CONTAINERS_REGISTRIES_CONF variable: skopeo 1.9
    // (Debian 12) ignores the variable.
    let out = std::process::Command::new("skopeo")
        .arg("--registries-conf")
        .arg(&conf)
        .args(["copy", "--insecure-policy"])
        .arg(format!("docker://{}", up.reference(&image)))
        .arg(format!("oci:{}:v1", out_dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}\npeer log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        peer.log()
    );

    // The copy is the image, digest for digest.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(image.manifest_digest.as_str()),
        "{index}"
    );
    let mut expected: Vec<String> = image.blobs.iter().map(|b| b.digest.clone()).collect();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(out_dir.join("blobs").join("sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = format!("sha256:{}", entry.file_name().to_string_lossy());
        let bytes = std::fs::read(entry.path()).unwrap();
        let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
        assert_eq!(actual, name, "a copied blob does not match its name");
        copied.push(name);
    }
    copied.sort();
    assert_eq!(copied, expected);

    // And it came through the mirror: each blob once, every request from the peer.
    let log = up.log_once_served(since, &image);
    assert_each_blob_served_once(&log, &image, "skopeo");
    let blob_bytes: u64 = image.blobs.iter().map(|b| b.size).sum();
    assert_eq!(
        peer.metric("shoal_mirror_blob_bytes_served_total").await as u64,
        blob_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mirror_mid_blob_containerd_falls_back_to_the_registry() {
    if !available("killing_the_mirror_mid_blob") {
        return;
    }
    let tmp = short_tempdir();
    let dir = tmp.path();
    let up = Upstream::start(dir, false);
    let image = image(&dir.join("image"), 50, BIG);
    up.push(&image);
    let big = image.blobs.iter().max_by_key(|b| b.size).unwrap().clone();
    let blob_bytes: u64 = image.blobs.iter().map(|b| b.size).sum();
    let tls_dir = dir.join("peer-tls");
    PeerProcess::tls_init(&tls_dir).unwrap();
    let sched = SchedulerProcess::start(&dir.join("scheduler"), &tls_dir)
        .await
        .unwrap();
    // The source holds the image and uploads slowly, so that the victim's mirror is
    // still streaming the big blob to containerd when it is killed.
    let source = PeerProcess::start(
        dir,
        "source",
        &PeerOptions {
            scheduler: Some(sched.grpc_url()),
            default_upstream: Some(up.registry.url()),
            hosts_dir: None,
            tls_dir: tls_dir.clone(),
            extra: vec!["--upload-rate-limit".into(), "8MiB".into()],
        },
    )
    .await
    .unwrap();
    let options = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: None,
        tls_dir,
        extra: Vec::new(),
    };
    let mut victim = Node::start(dir, 1, &up, &options).await;
    sched.wait_for_peers(2).await.unwrap();
    for blob in &image.blobs {
        let url = format!("{}/v2/{REPO}/blobs/{}", source.mirror_url(), blob.digest);
        let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        assert_eq!(format!("sha256:{:x}", Sha256::digest(&bytes)), blob.digest);
    }
    for _ in 0..600 {
        if sched
            .task(&big.digest)
            .await
            .is_some_and(|t| t["complete_holders"].as_u64() >= Some(1))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let reference = up.reference(&image);
    let since = up.registry.access_log().len();
    let pull = victim
        .containerd
        .pull_command(&victim.hosts, &reference)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Everything but the big blob together is smaller than this: past it, the big blob
    // is being streamed.
    let threshold = (blob_bytes - big.size + 8 * MIB as u64) as f64;
    let mut served = 0.0;
    for _ in 0..1200 {
        served = victim
            .peer
            .metric("shoal_mirror_blob_bytes_served_total")
            .await;
        if served >= threshold {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.peer.kill();
    let out = pull.wait_with_output().unwrap();
    eprintln!(
        "killed the victim's peer after its mirror served {:.1} of {:.1} MiB",
        served / MIB as f64,
        blob_bytes as f64 / MIB as f64
    );
    assert!(
        served > (blob_bytes - big.size) as f64 && served < blob_bytes as f64,
        "the kill came in the middle of the big blob ({served} of {blob_bytes} bytes served)"
    );
    assert!(!victim.peer.is_running());
    victim.assert_pulled(&out, &reference, &image);
    // containerd fetched the rest of the big blob from the registry itself.
    let by_containerd =
        |a: &Access| a.is_blob_get(&big.digest) && a.user_agent.starts_with("containerd/");
    let _ = wait_until("the registry's access log", Duration::from_secs(20), || {
        up.registry.access_log()[since..].iter().any(by_containerd)
    });
    let log = up.registry.access_log()[since..].to_vec();
    let fallback: Vec<&Access> = log.iter().filter(|a| by_containerd(a)).collect();
    assert!(
        !fallback.is_empty(),
        "containerd fetched the big blob from the registry after the kill: {log:?}"
    );
    eprintln!("fallback requests: {fallback:?}");
}

/// A registry outage (issue 18): two nodes pull an image through Shoal with
/// `--stale-tag-window`; the registry stops; node 1's containerd forgets the image (its
/// content garbage-collected) and pulls it again by tag. The pull succeeds through the
/// mirror alone: the tag from its last known digest, the manifest and blobs from the
/// node's store. Node 2, whose containerd still has the image, pulls too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_pulls_again_while_the_registry_is_down() {
    if !available("a_pulled_image_pulls_again_while_the_registry_is_down") {
        return;
    }
    let tmp = short_tempdir();
    let dir = tmp.path();
    let up = Upstream::start(dir, false);
    let image = image(&dir.join("image"), 60, 4 * MIB);
    up.push(&image);
    let tls_dir = dir.join("peer-tls");
    PeerProcess::tls_init(&tls_dir).unwrap();
    let sched = SchedulerProcess::start(&dir.join("scheduler"), &tls_dir)
        .await
        .unwrap();
    let options = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: None,
        tls_dir,
        extra: vec!["--stale-tag-window".into(), "1h".into()],
    };
    let nodes = [
        Node::start(dir, 1, &up, &options).await,
        Node::start(dir, 2, &up, &options).await,
    ];
    sched.wait_for_peers(2).await.unwrap();
    let reference = up.reference(&image);
    let since = up.registry.access_log().len();
    for n in &nodes {
        let out = n.pull(&reference);
        n.assert_pulled(&out, &reference, &image);
    }
    let log = up.log_once_served(since, &image);
    assert_each_blob_served_once(&log, &image, "before the outage");

    let Upstream { registry, .. } = up;
    drop(registry);
    nodes[0].containerd.remove_image(&reference).unwrap();
    let left = nodes[0].containerd.content_digests().unwrap();
    assert!(
        image.blobs.iter().all(|b| !left.contains(&b.digest)),
        "containerd kept the image's blobs: {left:?}"
    );
    for n in &nodes {
        let out = n.pull(&reference);
        n.assert_pulled(&out, &reference, &image);
        let stale = n.peer.metric("shoal_mirror_stale_tag_answers_total").await;
        assert!(
            stale >= 1.0,
            "{}: the tag was not answered stale",
            n.peer.name
        );
    }
}
