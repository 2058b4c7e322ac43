//! Several hosts dirs, as EKS lists them (`config_path =
//! "/etc/containerd/certs.d:/etc/docker/certs.d"`): a real `docker-registry` over TLS
//! that requires a client certificate, whose CA and client pair live only in the second
//! dir (Docker's layout, `/etc/docker/certs.d/<host:port>/{ca.crt,client.cert,client.key}`),
//! and a real `shoal-peer run` asked for a blob through its mirror with containerd's
//! `ns`. Given both dirs, the peer reaches the registry with that certificate and serves
//! the right bytes; given only the first, the pull fails cleanly (an OCI error naming
//! the registry, and not a byte from upstream).
//!
//! Needs `docker-registry` and `skopeo`: skips with a printed reason when missing, fails
//! when `CI=true`. Traffic stays on 127.0.0.1.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Registry, RegistryOptions, RegistryTls};
use shoal_tests::swarm::{PeerOptions, PeerProcess};
use shoal_tests::tls::TestPki;

const REPO: &str = "eks/app";

/// GETs the blob through `mirror` with `?ns=ns`: status, and SHA-256 and length of the
/// body (the body itself when it is not a 200).
async fn pull(mirror: &str, ns: &str, digest: &str) -> (u16, String, u64, String) {
    let url = format!("{mirror}/v2/{REPO}/blobs/{digest}?ns={ns}");
    let resp = reqwest::get(&url).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    let text = if status == 200 {
        String::new()
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    (
        status,
        format!("sha256:{:x}", Sha256::digest(&body)),
        body.len() as u64,
        text,
    )
}

/// Docker's certificate layout for `ns` under `root`: the CA and the client pair.
fn docker_certs(root: &Path, ns: &str, pki: &TestPki) {
    let dir = root.join(ns);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&pki.ca_cert, dir.join("ca.crt")).unwrap();
    std::fs::copy(&pki.client_cert, dir.join("client.cert")).unwrap();
    std::fs::copy(&pki.client_key, dir.join("client.key")).unwrap();
}

#[tokio::test]
async fn a_client_certificate_only_in_the_second_hosts_dir_is_used() {
    const TEST: &str = "hosts_dirs";
    if !shoal_tests::require_tools(TEST, &["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let image = OciImage::build(
        &work.join("image"),
        "v1",
        &[("data.bin", &random_bytes(2 << 20, 19))],
    )
    .unwrap();
    let layer = image.layer_digest.clone();
    let storage = work.join("storage");
    Registry::stage(&image, REPO, "v1", &work.join("staging"), &storage).unwrap();
    let pki = TestPki::generate(&work.join("pki")).unwrap();
    let registry = Registry::start_with(
        &work.join("registry"),
        &RegistryOptions {
            tls: Some(RegistryTls {
                certificate: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_cas: vec![pki.ca_cert.clone()],
            }),
            storage: Some(storage),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    let ns = registry.addr().to_string();

    // /etc/containerd/certs.d has another registry's directory; /etc/docker/certs.d
    // has this one's certificates.
    let containerd_dir = work.join("etc/containerd/certs.d");
    let docker_dir = work.join("etc/docker/certs.d");
    std::fs::create_dir_all(containerd_dir.join("docker.io")).unwrap();
    std::fs::write(
        containerd_dir.join("docker.io/hosts.toml"),
        "server = \"https://registry-1.docker.io\"\n",
    )
    .unwrap();
    docker_certs(&docker_dir, &ns, &pki);

    let peer_tls = work.join("peer-tls");
    PeerProcess::tls_init(&peer_tls).unwrap();
    let options = |hosts: String| PeerOptions {
        scheduler: None,
        default_upstream: None,
        hosts_dir: Some(hosts.into()),
        tls_dir: peer_tls.clone(),
        extra: vec!["--access-check".into(), "off".into()],
    };
    let from_shoal = || {
        registry
            .access_log()
            .iter()
            .filter(|a| a.from_shoal() && a.is_blob_get(&layer))
            .map(|a| a.status)
            .collect::<Vec<_>>()
    };

    // Both dirs, in containerd's order: the peer presents the client certificate.
    let both = format!("{}:{}", containerd_dir.display(), docker_dir.display());
    let peer = PeerProcess::start(&work.join("both"), "both", &options(both))
        .await
        .unwrap();
    let (status, digest, len, body) = pull(&peer.mirror_url(), &ns, &layer).await;
    assert_eq!(status, 200, "{body}\npeer log:\n{}", peer.log());
    assert_eq!(digest, layer);
    let size = image.blobs.iter().find(|b| b.digest == layer).unwrap().size;
    assert_eq!(len, size);
    assert_eq!(from_shoal(), [200], "the registry served the peer once");
    drop(peer);

    // Only the first dir: the registry is unknown to the peer, which says so at once
    // and sends nothing upstream.
    let first = containerd_dir.display().to_string();
    let peer = PeerProcess::start(&work.join("first"), "first", &options(first))
        .await
        .unwrap();
    let (status, _, _, body) = pull(&peer.mirror_url(), &ns, &layer).await;
    assert!(
        (400..600).contains(&status) && body.contains("\"errors\"") && body.contains(&ns),
        "expected an OCI error naming {ns}, got {status}: {body}"
    );
    assert_eq!(from_shoal(), [200], "nothing more reached the registry");
    eprintln!("{TEST}: with one dir the pull fails with {status}: {body}");
}
