//! The kubelet's path, end to end: pulls through containerd's CRI plugin
//! (`runtime.v1.ImageService.PullImage` over containerd's socket, credentials from an
//! `imagePullSecret` in `PullImageRequest.auth`), not through `ctr`.
//!
//! Real components only: Debian's `docker-registry` requiring HTTP Basic auth
//! (htpasswd) for a private repository, a `shoal-scheduler`, and per node a
//! `shoal-peer` and its own containerd 1.6 with the CRI plugin on and its registry
//! `config_path` set to the node's hosts dir. Each hosts dir is written the way an
//! operator and the chart's init container would: `hosts.toml` with `server`, then
//! `shoal-peer containerd configure` puts the node's mirror in front. The peer reads the
//! same directory. In containerd 1.6 the daemon itself does a CRI pull (unlike `ctr`,
//! where the `ctr` process fetches), so this is the code path of a real node: CRI
//! resolver, `hosts.toml` from `config_path`, credentials offered to the mirror when it
//! relays the registry's `401` and `WWW-Authenticate: Basic`.
//!
//! What upstream served is read from the registry's access log (method, path, status,
//! `User-Agent`): a blob counts when a `GET …/blobs/<digest>` line names it.
//!
//! Pulls without (or with wrong) credentials fail here because the registry refuses the
//! manifest, which the mirror relays (and containerd then gets the same refusal from
//! `server`). That no byte of a private blob is served to such a caller even when it
//! asks the mirror for a blob directly is the fail-closed check's business (issue 15,
//! item 1) and is asserted by its own tests, not here.
//!
//! Needs root (containerd) and the Debian packages containerd, docker-registry and
//! skopeo: skips with a printed reason outside CI, fails under `CI=true`. Traffic stays
//! on 127.0.0.1. No duration is asserted; waits only bound a hang.

use std::path::Path;
use std::time::Duration;

use shoal_tests::containerd::{Containerd, upstream_hosts_toml, write_hosts_toml};
use shoal_tests::cri::{AuthConfig, CriClient, basic_auth, docker_config_auth};
use shoal_tests::htpasswd::{BasicAuthRegistry, PASSWORD, USER};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Access, Registry};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};
use shoal_tests::{require_root, require_tools, wait_until};

const MIB: usize = 1 << 20;
const NODES: usize = 3;
const REPO: &str = "private/app";
const TAG: &str = "v1";

fn available(test: &str) -> bool {
    if !require_tools(test, &["containerd", "ctr", "docker-registry", "skopeo"]) {
        return false;
    }
    require_root(test, "containerd")
}

/// A node: a peer and its own containerd with the CRI plugin, both reading `hosts`.
struct Node {
    peer: PeerProcess,
    // Kept for its lifetime (stopped and its mounts undone when dropped) and its log.
    containerd: Containerd,
    cri: CriClient,
}

impl Node {
    async fn start(dir: &Path, i: usize, up: &BasicAuthRegistry, options: &PeerOptions) -> Node {
        let hosts = dir.join(format!("hosts-{i}"));
        write_hosts_toml(&hosts, &up.name(), &upstream_hosts_toml(&up.url(), None)).unwrap();
        let options = PeerOptions {
            hosts_dir: Some(hosts.clone()),
            ..options.clone()
        };
        let peer = PeerProcess::start(dir, &format!("node-{i}"), &options)
            .await
            .unwrap();
        peer.configure_containerd(&hosts, &up.name()).unwrap();
        let containerd = Containerd::start_cri(&dir.join(format!("c{i}")), &hosts).unwrap();
        let cri = match CriClient::connect(containerd.socket()).await {
            Ok(c) => c,
            Err(e) => panic!("{e:#}\ncontainerd log:\n{}", containerd.log()),
        };
        Node {
            peer,
            containerd,
            cri,
        }
    }

    /// `PullImage` with `auth`; panics with the logs when it fails.
    async fn pull(&mut self, reference: &str, auth: AuthConfig) -> String {
        match self.cri.pull_image(reference, Some(auth)).await {
            Ok(image_ref) => image_ref,
            Err(status) => panic!(
                "{}: CRI PullImage of {reference} failed: {status}\npeer log:\n{}\ncontainerd log:\n{}",
                self.peer.name,
                self.peer.log(),
                self.containerd.log()
            ),
        }
    }

    /// `PullImage` with `auth` (or none) must fail with the registry's refusal; no blob
    /// was asked of the mirror, and containerd has no such image afterwards.
    async fn assert_refused(&mut self, reference: &str, auth: Option<AuthConfig>, case: &str) {
        let blob_requests = self.peer.metric("shoal_mirror_blob_requests_total").await;
        let status = self
            .cri
            .pull_image(reference, auth)
            .await
            .expect_err(&format!("{}: a pull {case} must fail", self.peer.name));
        let message = status.message().to_ascii_lowercase();
        eprintln!(
            "{}: pull {case} refused: {}",
            self.peer.name,
            status.message()
        );
        assert!(
            message.contains("401") || message.contains("authoriz"),
            "{}: the pull {case} failed for want of authorisation, not something else: {status}",
            self.peer.name
        );
        assert_eq!(
            self.peer.metric("shoal_mirror_blob_requests_total").await,
            blob_requests,
            "{}: containerd never got as far as asking the mirror for a blob",
            self.peer.name
        );
        assert_eq!(self.cri.image_status(reference).await.unwrap(), None);
    }

    /// The image is known to containerd's CRI by its tag and by the manifest digest
    /// the registry has, with the config digest as its ID, and `ListImages` lists it.
    async fn assert_has(&mut self, reference: &str, registry: &str, image: &OciImage) {
        let by_digest = format!("{registry}/{REPO}@{}", image.manifest_digest);
        let status = self
            .cri
            .image_status(reference)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: ImageStatus knows no {reference}", self.peer.name));
        assert_eq!(status.id, image.config_digest, "{status:?}");
        assert!(
            status.repo_tags.iter().any(|t| t == reference),
            "{status:?}"
        );
        assert_eq!(status.repo_digests, vec![by_digest.clone()], "{status:?}");
        assert!(status.size > 0, "{status:?}");
        let by_digest_status = self.cri.image_status(&by_digest).await.unwrap();
        assert_eq!(
            by_digest_status.map(|i| i.id),
            Some(image.config_digest.clone())
        );
        let listed = self.cri.list_images().await.unwrap();
        assert!(
            listed.iter().any(|i| i.id == image.config_digest),
            "{}: ListImages: {listed:?}",
            self.peer.name
        );
    }
}

/// An image of two layers, 8 MiB and 1 MiB of random bytes.
fn image(dir: &Path) -> OciImage {
    let big = random_bytes(8 * MIB, 61);
    let small = random_bytes(MIB, 62);
    OciImage::build_layers(
        dir,
        TAG,
        &[
            &[("big.bin", &big)],
            &[("small.bin", &small), ("note.txt", b"private\n")],
        ],
    )
    .unwrap()
}

/// The access log from line `since` on, once every blob of `image` has a successful
/// GET line (the registry writes a line after it answered; this bounds a hang, 20 s).
fn log_once_served(up: &BasicAuthRegistry, since: usize, image: &OciImage) -> Vec<Access> {
    let all_served = |log: &[Access]| {
        image.blobs.iter().all(|b| {
            log.iter()
                .any(|a| a.is_blob_get(&b.digest) && a.status < 300)
        })
    };
    let _ = wait_until("the registry's access log", Duration::from_secs(20), || {
        all_served(&up.access_log()[since..])
    });
    up.access_log()[since..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_with_image_pull_secret_goes_through_the_mirror_and_without_is_refused() {
    const NAME: &str = "cri_pull";
    if !available(NAME) {
        return;
    }
    // Short path: containerd's socket path must fit in 107 bytes.
    let tmp = tempfile::Builder::new()
        .prefix("shoal")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    let image = image(&dir.join("image"));
    // skopeo pushes without credentials into storage that the Basic-auth registry then
    // serves.
    let storage = dir.join("storage");
    Registry::stage(&image, REPO, TAG, &dir.join("staging"), &storage).unwrap();
    let up = BasicAuthRegistry::start(&dir.join("registry"), &storage).unwrap();
    let registry = up.name();
    let reference = format!("{registry}/{REPO}:{TAG}");

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
        extra: Vec::new(),
    };
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(Node::start(dir, i, &up, &options).await);
    }
    sched.wait_for_peers(NODES).await.unwrap();
    let secret = basic_auth(USER, PASSWORD);

    // No imagePullSecret, then a wrong one: refused.
    let since = up.access_log().len();
    nodes[0]
        .assert_refused(&reference, None, "without credentials")
        .await;
    nodes[0]
        .assert_refused(
            &reference,
            Some(basic_auth(USER, "not-the-password")),
            "with a wrong password",
        )
        .await;
    // The mirror was asked and relayed the registry's refusal (containerd then got the
    // same from `server`); the registry served no blob.
    let log = up.access_log()[since..].to_vec();
    assert!(
        log.iter().any(|a| a.from_shoal() && a.status == 401),
        "the mirror relayed the manifest request and its 401: {log:?}"
    );
    assert!(
        log.iter()
            .any(|a| a.user_agent.starts_with("containerd/") && a.status == 401),
        "containerd went on to `server` and was refused there too: {log:?}"
    );
    assert!(
        !log.iter().any(|a| a.path.contains("/blobs/")),
        "no blob was asked of the registry by a refused pull: {log:?}"
    );

    // Node 0 with the secret: through its mirror, from upstream.
    let since = up.access_log().len();
    let image_ref = nodes[0].pull(&reference, secret.clone()).await;
    assert_eq!(image_ref, image.config_digest);
    nodes[0].assert_has(&reference, &registry, &image).await;

    // Node 1 without credentials while node 0 holds every blob: still refused.
    nodes[1]
        .assert_refused(&reference, None, "without credentials")
        .await;

    // Node 1 with the secret as username and password, node 2 with it as a Docker
    // config's `auth`: from peers.
    for (i, auth) in [(1, secret.clone()), (2, docker_config_auth(USER, PASSWORD))] {
        let image_ref = nodes[i].pull(&reference, auth).await;
        assert_eq!(image_ref, image.config_digest);
        nodes[i].assert_has(&reference, &registry, &image).await;
    }

    // Upstream served each blob once in total, to a Shoal peer, and nothing reached it
    // around the mirror with success.
    let log = log_once_served(&up, since, &image);
    for blob in &image.blobs {
        let gets: Vec<&Access> = log.iter().filter(|a| a.is_blob_get(&blob.digest)).collect();
        assert_eq!(
            gets.len(),
            1,
            "blob {} ({} bytes) was GET {} times from upstream: {gets:?}",
            blob.digest,
            blob.size,
            gets.len()
        );
        // A 200 from a registry that refuses every request without the user's
        // password: the credentials containerd took from `PullImageRequest.auth`
        // reached upstream through the mirror.
        assert!(gets[0].from_shoal() && gets[0].status == 200, "{gets:?}");
    }
    let around: Vec<&Access> = log
        .iter()
        .filter(|a| !a.from_shoal() && a.status < 400)
        .collect();
    assert!(
        around.is_empty(),
        "containerd reached the registry itself: {around:?}"
    );
    // Every blob reached containerd through its node's mirror; nodes 1 and 2 got
    // theirs from peers.
    let blob_bytes: u64 = image.blobs.iter().map(|b| b.size).sum();
    let layer_bytes: u64 = image
        .blobs
        .iter()
        .filter(|b| b.digest != image.config_digest)
        .map(|b| b.size)
        .sum();
    for (i, n) in nodes.iter().enumerate() {
        let m = n.peer.metrics().await.unwrap();
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
        eprintln!(
            "{}: mirror served {} bytes; upstream {}, peers {}",
            n.peer.name,
            g("shoal_mirror_blob_bytes_served_total"),
            g("shoal_peer_bytes_from_upstream_total"),
            g("shoal_peer_bytes_from_peers_total"),
        );
        assert_eq!(
            g("shoal_mirror_blob_bytes_served_total"),
            blob_bytes,
            "{}",
            n.peer.name
        );
        if i > 0 {
            assert_eq!(
                g("shoal_peer_bytes_from_upstream_total"),
                0,
                "{}",
                n.peer.name
            );
            assert!(
                g("shoal_peer_bytes_from_peers_total") >= layer_bytes,
                "{}: its layers came from peers",
                n.peer.name
            );
        }
    }

    // RemoveImage as the kubelet's image GC does it; then node 0 holds the blobs in its
    // mirror's cache only: a caller without credentials is refused (the manifest), one
    // with the secret pulls again from that cache and upstream serves no blob.
    nodes[0].cri.remove_image(&reference).await.unwrap();
    assert_eq!(nodes[0].cri.image_status(&reference).await.unwrap(), None);
    let listed = nodes[0].cri.list_images().await.unwrap();
    assert!(
        !listed.iter().any(|i| i.id == image.config_digest),
        "{listed:?}"
    );
    nodes[0].cri.remove_image(&reference).await.unwrap();
    let since = up.access_log().len();
    nodes[0]
        .assert_refused(&reference, None, "without credentials after RemoveImage")
        .await;
    let from_cache = |m: &std::collections::HashMap<String, f64>| {
        m.get("shoal_mirror_blob_bytes_from_cache_total")
            .copied()
            .unwrap_or(0.0) as u64
    };
    let before = from_cache(&nodes[0].peer.metrics().await.unwrap());
    let image_ref = nodes[0].pull(&reference, secret).await;
    assert_eq!(image_ref, image.config_digest);
    nodes[0].assert_has(&reference, &registry, &image).await;
    // RemoveImage deleted containerd's content too (synchronously, for the last
    // reference), so containerd fetched every blob again: from the mirror's cache.
    assert_eq!(
        from_cache(&nodes[0].peer.metrics().await.unwrap()) - before,
        blob_bytes,
        "node-0's mirror served the second pull from its cache"
    );
    let log = up.access_log()[since..].to_vec();
    assert!(
        !log.iter()
            .any(|a| a.method == "GET" && a.path.contains("/blobs/")),
        "neither the refused pull nor the second pull on node 0 took a blob from upstream: {log:?}"
    );
}
