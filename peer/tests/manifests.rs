//! Manifests through the swarm, and pulls that survive a registry outage (issue 18,
//! part 3): a real `docker-registry`, a real scheduler and three real `shoal-peer`
//! processes started with `--stale-tag-window 1h`; requests made as containerd makes
//! them (`HEAD` of the tag, `GET` of the manifest by digest, `GET` of each blob).
//!
//! 1. Nodes 1 and 2 pull: every tag request reaches upstream, the manifest by digest is
//!    fetched from upstream once for the swarm and comes back with upstream's
//!    `Content-Type`, each blob once.
//! 2. The registry stops. Nodes 1 and 2 pull again: the tag is answered from its last
//!    known digest (`Shoal-Stale-Tag`), the manifest and the blobs from the node; the
//!    bytes match their digests.
//! 3. Node 3 never resolved the tag: it answers 503 with an OCI error body (the mirror
//!    does not guess), so containerd goes to its next host.
//!
//! Asserted: statuses, headers, digests of bodies, the registry's access log, counters.
//! No duration.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Access, Registry};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};

const REPO: &str = "team/app";
const TAG: &str = "v1";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One answer: status, the headers a pull reads, the body's digest.
#[derive(Debug)]
struct Got {
    status: u16,
    content_type: String,
    digest_header: String,
    stale: Option<String>,
    body_digest: String,
    body: String,
}

async fn request(method: &str, url: &str) -> Got {
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .header("accept", OCI_MANIFEST)
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, digest_header, stale) = (
        h("content-type").unwrap_or_default(),
        h("docker-content-digest").unwrap_or_default(),
        h("shoal-stale-tag"),
    );
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    Got {
        status,
        content_type,
        digest_header,
        stale,
        body_digest: format!("sha256:{:x}", Sha256::digest(&body)),
        body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}

/// A pull as containerd makes it, checked: the tag resolves to the image's manifest,
/// the manifest and every blob come back whole. Returns the tag's answer.
async fn pull(node: &PeerProcess, ns: &str, image: &OciImage, what: &str) -> Got {
    let base = format!("{}/v2/{REPO}", node.mirror_url());
    let tag = request("HEAD", &format!("{base}/manifests/{TAG}?ns={ns}")).await;
    assert_eq!(tag.status, 200, "{what}: tag: {tag:?}");
    assert_eq!(tag.digest_header, image.manifest_digest, "{what}: tag");
    assert_eq!(tag.content_type, OCI_MANIFEST, "{what}: tag");
    let m = request(
        "GET",
        &format!("{base}/manifests/{}?ns={ns}", image.manifest_digest),
    )
    .await;
    assert_eq!(m.status, 200, "{what}: manifest: {m:?}");
    assert_eq!(
        m.body_digest, image.manifest_digest,
        "{what}: manifest bytes"
    );
    assert_eq!(m.content_type, OCI_MANIFEST, "{what}: manifest type");
    assert_eq!(m.digest_header, image.manifest_digest, "{what}: manifest");
    for b in &image.blobs {
        let got = request("GET", &format!("{base}/blobs/{}?ns={ns}", b.digest)).await;
        assert_eq!(got.status, 200, "{what}: {}: {got:?}", b.digest);
        assert_eq!(got.body_digest, b.digest, "{what}: blob bytes");
    }
    tag
}

fn manifest_gets(log: &[Access], reference: &str) -> usize {
    log.iter()
        .filter(|a| a.is_manifest_get(reference) && a.status == 200)
        .count()
}

fn tag_requests(log: &[Access]) -> usize {
    log.iter()
        .filter(|a| {
            a.path
                .split('?')
                .next()
                .is_some_and(|p| p.ends_with(&format!("/manifests/{TAG}")))
        })
        .count()
}

fn image(dir: &Path) -> OciImage {
    OciImage::build_layers(
        &dir.join("oci"),
        TAG,
        &[
            &[("app.bin", &random_bytes(2 << 20, 18))],
            &[("etc/app.conf", b"answer = 42\n")],
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_are_shared_and_tags_survive_an_outage() {
    if !shoal_tests::require_tools(
        "manifests_are_shared_and_tags_survive_an_outage",
        &["docker-registry", "skopeo"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let image = image(dir);
    let storage = dir.join("storage");
    Registry::stage(&image, REPO, TAG, &dir.join("stage"), &storage).unwrap();
    let registry = Registry::start_with(
        &dir.join("registry"),
        &shoal_tests::registry::RegistryOptions {
            storage: Some(storage),
            ..Default::default()
        },
    )
    .unwrap();
    let ns = registry.addr().to_string();
    let hosts = dir.join("certs.d");
    std::fs::create_dir_all(hosts.join(&ns)).unwrap();
    std::fs::write(
        hosts.join(&ns).join("hosts.toml"),
        format!("server = \"http://{ns}\"\n"),
    )
    .unwrap();
    let tls = dir.join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir, &tls).await.unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: vec!["--stale-tag-window".into(), "1h".into()],
    };
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(
            PeerProcess::start(dir, &format!("node-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    sched.wait_for_peers(3).await.unwrap();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // 1. Upstream up: tags go upstream every time; the manifest by digest is fetched
    //    once for the swarm.
    let fresh = pull(n1, &ns, &image, "node-1").await;
    assert_eq!(
        fresh.stale, None,
        "a tag answered from memory while upstream is up"
    );
    let fresh = pull(n2, &ns, &image, "node-2").await;
    assert_eq!(fresh.stale, None);
    let log = registry.access_log();
    assert_eq!(tag_requests(&log), 2, "every tag request goes upstream");
    assert_eq!(
        manifest_gets(&log, &image.manifest_digest),
        1,
        "the manifest by digest is fetched from upstream once for the swarm"
    );
    for b in &image.blobs {
        let gets = log
            .iter()
            .filter(|a| a.is_blob_get(&b.digest) && a.status == 200)
            .count();
        assert_eq!(gets, 1, "blob {} fetched {gets} times", b.digest);
    }
    for n in [n1, n2] {
        assert!(n.metric("shoal_mirror_manifests_shared_total").await >= 1.0);
        assert_eq!(n.metric("shoal_mirror_stale_tag_answers_total").await, 0.0);
    }

    // 2. Upstream stops: the nodes that resolved the tag answer it from its last
    //    known digest, and serve the manifest and blobs themselves.
    drop(registry);
    for n in [n1, n2] {
        let what = format!("{} upstream down", n.name);
        let stale = pull(n, &ns, &image, &what).await;
        let age: u64 = stale
            .stale
            .as_deref()
            .expect("the stale answer is marked")
            .parse()
            .unwrap();
        assert!(age < 3600, "{what}: age {age}");
        let by_tag = request(
            "GET",
            &format!("{}/v2/{REPO}/manifests/{TAG}?ns={ns}", n.mirror_url()),
        )
        .await;
        assert_eq!(by_tag.status, 200, "{what}: {by_tag:?}");
        assert_eq!(by_tag.body_digest, image.manifest_digest, "{what}");
        assert!(
            by_tag.stale.is_some(),
            "{what}: GET by tag not marked stale"
        );
        assert!(n.metric("shoal_mirror_stale_tag_answers_total").await >= 2.0);
        assert!(
            n.log().contains("tag answered from its last known digest"),
            "{what}: no log line"
        );
    }

    // 3. A node that never resolved the tag does not guess.
    let unknown = request(
        "GET",
        &format!("{}/v2/{REPO}/manifests/{TAG}?ns={ns}", n3.mirror_url()),
    )
    .await;
    assert_eq!(unknown.status, 503, "{unknown:?}");
    let v: serde_json::Value = serde_json::from_str(&unknown.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{unknown:?}");
}
