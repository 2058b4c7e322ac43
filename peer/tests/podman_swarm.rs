//! CRI-O / Podman nodes, for real: three nodes on 127.0.0.1, each a `shoal-peer run`
//! process (one `shoal-scheduler` for all) and a rootful Podman 4.3 (containers/image,
//! the library CRI-O pulls with) whose `registries.conf` was set up by
//! `shoal-peer containers configure`. Each node pulls the same three-layer image from a
//! plain-HTTP `docker-registry` through its own mirror, one after the other.
//!
//! Asserted: `check` shows the change before (exit 1) and none after (exit 0); every
//! Podman gets the image with the registry's manifest digest; the registry served each
//! blob once, and only to Shoal (a Podman that fell back to the registry itself would
//! show up with its own User-Agent); `restore` leaves each node's `/etc/containers`
//! byte-identical. Nothing is timed.
//!
//! Podman never sees the machine's `/etc/containers`: it runs in a private mount
//! namespace (`unshare -m`) with the node's directory bound over `/etc/containers`, its
//! storage (`vfs`) and run dirs under the test's temp dir, and `HOME` there too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::Registry;
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess, workspace_bin};
use shoal_tests::{require_root, require_tools};

const NODES: usize = 3;
const REPO: &str = "shoal/podman";
const TAG: &str = "v1";

/// One node's files: `etc/containers` (bound over `/etc/containers` for Podman), Podman's
/// storage and home.
struct Node {
    dir: PathBuf,
}

impl Node {
    fn etc(&self) -> PathBuf {
        self.dir.join("etc/containers")
    }

    fn setup(dir: PathBuf, registry: &str) -> Node {
        let node = Node { dir };
        let etc = node.etc();
        std::fs::create_dir_all(etc.join("registries.conf.d")).unwrap();
        std::fs::create_dir_all(node.dir.join("home")).unwrap();
        std::fs::write(
            etc.join("policy.json"),
            "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}\n",
        )
        .unwrap();
        // The node's own settings: the registry is plain HTTP (insecure), search and
        // short names are set, and a drop-in configures another registry.
        std::fs::write(
            etc.join("registries.conf"),
            format!(
                "# site registries\nunqualified-search-registries = [\"{registry}\"]\nshort-name-mode = \"permissive\"\n\n\
                 [[registry]]\nprefix = \"{registry}\"\nlocation = \"{registry}\"\ninsecure = true\n"
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("registries.conf.d/10-site.conf"),
            "[[registry]]\r\nprefix = \"quay.io\"\r\nlocation = \"quay.io\"\r\n",
        )
        .unwrap();
        node
    }

    /// `shoal-peer containers ACTION` on this node's files.
    fn containers(&self, action: &str, mirror: &str, registry: &str) -> Output {
        Command::new(workspace_bin("shoal-peer"))
            .args(["containers", action, "--registries-conf"])
            .arg(self.etc().join("registries.conf"))
            .arg("--registries-conf-dir")
            .arg(self.etc().join("registries.conf.d"))
            .args(["--mirror-url", mirror, "--registry", registry])
            .env("SHOAL_LOG", "warn")
            .output()
            .unwrap()
    }

    /// `podman ARGS…` as root, with this node's `/etc/containers` and storage.
    fn podman(&self, args: &[&str]) -> Output {
        let d = &self.dir;
        let script = format!(
            "mount --bind '{etc}' /etc/containers && exec podman --root '{d}/storage' \
             --runroot '{d}/run' --tmpdir '{d}/tmp' --storage-driver vfs \
             --cgroup-manager cgroupfs --events-backend none \"$@\"",
            etc = self.etc().display(),
            d = d.display()
        );
        Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "podman",
            ])
            .args(args)
            .env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("XDG_CONFIG_HOME", d.join("home/.config"))
            .env_remove("CONTAINERS_REGISTRIES_CONF")
            .env_remove("REGISTRIES_CONFIG_PATH")
            .output()
            .unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `root` with its bytes, and every directory.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podman_nodes_pull_each_layer_from_upstream_once() {
    if !require_tools(
        "podman_swarm",
        &["podman", "docker-registry", "skopeo", "unshare", "mount"],
    ) || !require_root(
        "podman_swarm",
        "rootful podman in a private mount namespace",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let registry = Registry::start(&dir.join("registry")).unwrap();
    let upstream = registry.addr().to_string();
    let layers: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes((1 + i) << 20, 190 + i as u64))
        .collect();
    let files: Vec<[(&str, &[u8]); 1]> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| [(["a.bin", "b.bin", "c.bin"][i], l.as_slice())])
        .collect();
    let layer_refs: Vec<&[(&str, &[u8])]> = files.iter().map(|f| &f[..]).collect();
    let image = OciImage::build_layers(&dir.join("image"), TAG, &layer_refs).unwrap();
    image.push(&upstream, REPO, TAG).unwrap();
    let pushed = registry.access_log().len();

    let tls = dir.join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir, &tls).await.unwrap();
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for i in 0..NODES {
        let node = Node::setup(dir.join(format!("node-{i}")), &upstream);
        let opts = PeerOptions {
            scheduler: Some(sched.grpc_url()),
            default_upstream: None,
            hosts_dir: None,
            tls_dir: tls.clone(),
            extra: vec![
                "--containers-registries-conf".into(),
                node.etc().join("registries.conf").display().to_string(),
                "--containers-certs-dir".into(),
                node.etc().join("certs.d").display().to_string(),
            ],
        };
        peers.push(
            PeerProcess::start(dir, &format!("peer-{i}"), &opts)
                .await
                .unwrap(),
        );
        nodes.push(node);
    }
    sched.wait_for_peers(NODES).await.unwrap();

    let reference = format!("{upstream}/{REPO}:{TAG}");
    let mut before = Vec::new();
    for (node, peer) in nodes.iter().zip(&peers) {
        before.push(tree(&node.etc()));
        let mirror = peer.mirror_url();
        let out = node.containers("check", &mirror, &upstream);
        assert_eq!(out.status.code(), Some(1), "check before: {}", text(&out));
        let diff = String::from_utf8_lossy(&out.stdout).into_owned();
        let ns = upstream.replace(':', "__");
        assert!(
            diff.contains(&format!(
                "+location = \"{}/{ns}\"",
                &mirror["http://".len()..]
            )),
            "{diff}"
        );
        let out = node.containers("configure", &mirror, &upstream);
        assert!(out.status.success(), "configure: {}", text(&out));
        let out = node.containers("check", &mirror, &upstream);
        assert_eq!(out.status.code(), Some(0), "check after: {}", text(&out));
    }

    for (i, (node, peer)) in nodes.iter().zip(&peers).enumerate() {
        let out = node.podman(&["pull", "--quiet", &reference]);
        assert!(
            out.status.success(),
            "node {i}: podman pull: {}\npeer log:\n{}",
            text(&out),
            peer.log()
        );
        let out = node.podman(&["image", "inspect", "--format", "{{.Digest}}", &reference]);
        assert!(out.status.success(), "node {i}: inspect: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            image.manifest_digest,
            "node {i}: the image's digest"
        );
    }

    let log = registry.access_log();
    let pulls = &log[pushed..];
    let mut egress = 0;
    for blob in &image.blobs {
        let gets: Vec<_> = pulls
            .iter()
            .filter(|a| a.is_blob_get(&blob.digest))
            .collect();
        assert_eq!(gets.len(), 1, "upstream GETs of {}: {gets:?}", blob.digest);
        assert!(
            gets[0].from_shoal(),
            "{:?} was not fetched by Shoal",
            gets[0]
        );
        egress += gets[0].bytes;
    }
    let from_podman: Vec<_> = pulls.iter().filter(|a| !a.from_shoal()).collect();
    assert!(
        from_podman.is_empty(),
        "Podman reached the registry itself: {from_podman:?}"
    );
    let blobs: u64 = image.blobs.iter().map(|b| b.size).sum();
    println!(
        "podman_swarm: {NODES} nodes, image {} bytes in {} blobs; upstream blob egress {egress} bytes = {:.2} copies",
        blobs,
        image.blobs.len(),
        egress as f64 / blobs as f64
    );

    for (i, (node, peer)) in nodes.iter().zip(&peers).enumerate() {
        let out = node.containers("restore", &peer.mirror_url(), &upstream);
        assert!(out.status.success(), "restore: {}", text(&out));
        assert!(
            tree(&node.etc()) == before[i],
            "node {i}: /etc/containers differs after restore"
        );
    }
}
