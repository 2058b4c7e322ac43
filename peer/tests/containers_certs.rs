//! A CRI-O node's upstream with client certificates: a real `docker-registry` over TLS
//! that requires a client certificate, listed in `registries.conf` (prefix and location
//! `127.0.0.1:PORT`, not insecure), with its CA and client pair in containers/image's
//! layout (`/etc/containers/certs.d/<host:port>/{ca.crt,client.cert,client.key}`); a real
//! `shoal-peer run --containers-registries-conf` asked for a blob the way CRI-O asks a
//! mirror set up by `shoal-peer containers configure`: no `ns`, the registry as the
//! path's first component (`/v2/127.0.0.1__PORT/<repo>/blobs/<digest>`).
//!
//! With the certificates the peer serves the right bytes; without them (a node whose
//! certs.d lacks the directory) the pull fails with an OCI error and the registry served
//! nothing. A first component that is not a configured registry goes the old way (no
//! default upstream here: a 400). Traffic stays on 127.0.0.1.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Registry, RegistryOptions, RegistryTls};
use shoal_tests::swarm::{PeerOptions, PeerProcess};
use shoal_tests::tls::TestPki;

const REPO: &str = "crio/app";

/// GETs `path` on `mirror`: status, SHA-256 and length of the body, the body as text
/// when it is not a 200.
async fn get(mirror: &str, path: &str) -> (u16, String, u64, String) {
    let resp = reqwest::get(format!("{mirror}{path}")).await.unwrap();
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

/// `etc/containers` under `node`: registries.conf naming `registry`, and, when `pki` is
/// given, its certificates in certs.d.
fn node(node: &Path, registry: &str, pki: Option<&TestPki>) {
    let etc = node.join("etc/containers");
    std::fs::create_dir_all(etc.join("registries.conf.d")).unwrap();
    std::fs::write(
        etc.join("registries.conf"),
        format!("[[registry]]\nprefix = \"{registry}\"\nlocation = \"{registry}\"\n"),
    )
    .unwrap();
    if let Some(pki) = pki {
        let dir = etc.join("certs.d").join(registry);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&pki.ca_cert, dir.join("ca.crt")).unwrap();
        std::fs::copy(&pki.client_cert, dir.join("client.cert")).unwrap();
        std::fs::copy(&pki.client_key, dir.join("client.key")).unwrap();
    }
}

#[tokio::test]
async fn certs_d_client_certificates_reach_a_registry_named_in_the_path() {
    const TEST: &str = "containers_certs";
    if !shoal_tests::require_tools(TEST, &["docker-registry", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let image = OciImage::build(
        &work.join("image"),
        "v1",
        &[("data.bin", &random_bytes(2 << 20, 23))],
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
    let host = registry.addr().to_string();
    let path = format!("/v2/{}/{REPO}/blobs/{layer}", host.replace(':', "__"));
    let peer_tls = work.join("peer-tls");
    PeerProcess::tls_init(&peer_tls).unwrap();
    let start = |name: &'static str| {
        let etc = work.join(name).join("etc/containers");
        let opts = PeerOptions {
            scheduler: None,
            default_upstream: None,
            hosts_dir: None,
            tls_dir: peer_tls.clone(),
            extra: vec![
                "--access-check".into(),
                "off".into(),
                "--containers-registries-conf".into(),
                etc.join("registries.conf").display().to_string(),
                "--containers-certs-dir".into(),
                etc.join("certs.d").display().to_string(),
            ],
        };
        async move {
            PeerProcess::start(&work.join(name), name, &opts)
                .await
                .unwrap()
        }
    };
    let from_shoal = || {
        registry
            .access_log()
            .iter()
            .filter(|a| a.from_shoal() && a.is_blob_get(&layer))
            .map(|a| a.status)
            .collect::<Vec<_>>()
    };

    node(&work.join("with"), &host, Some(&pki));
    let peer = start("with").await;
    let (status, digest, len, body) = get(&peer.mirror_url(), &path).await;
    assert_eq!(status, 200, "{body}\npeer log:\n{}", peer.log());
    assert_eq!(digest, layer);
    let size = image.blobs.iter().find(|b| b.digest == layer).unwrap().size;
    assert_eq!(len, size);
    assert_eq!(from_shoal(), [200], "the registry served the peer once");
    // A first component that is no configured registry: not mapped (no default upstream).
    let (status, _, _, body) = get(&peer.mirror_url(), &format!("/v2/{REPO}/blobs/{layer}")).await;
    assert_eq!(status, 400, "{body}");
    drop(peer);

    // The same node without certs.d: the TLS handshake fails (no client certificate, an
    // unknown CA), the pull answers an OCI error, and the registry served nothing more.
    node(&work.join("without"), &host, None);
    let peer = start("without").await;
    let (status, _, _, body) = get(&peer.mirror_url(), &path).await;
    assert!(
        (500..600).contains(&status) && body.contains("\"errors\""),
        "expected an OCI 5xx, got {status}: {body}"
    );
    assert_eq!(from_shoal(), [200], "nothing more reached the registry");
    eprintln!("{TEST}: without certs.d the pull fails with {status}: {body}");
}
