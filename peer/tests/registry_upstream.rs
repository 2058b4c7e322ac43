//! The upstream registry client (`shoal_peer::registry`) against a real registry
//! (`docker-registry`, Debian's package) over plain HTTP and over TLS with a required
//! client certificate, configured through real `hosts.toml` files and Docker's
//! certificate layout; images pushed with skopeo.
//!
//! Also: retries and their limits against `Recorder` (a listener that answers one fixed
//! status), a body that stalls after its first bytes (the idle timeout), and what
//! reqwest does with `Authorization` on redirects against a small recording HTTP server
//! (no registry redirects blobs without object storage).
//!
//! Needs `docker-registry` and `skopeo` for most tests: they skip with a printed reason
//! when missing, and fail when `CI=true`. Traffic stays on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::HeaderValue;
use sha2::{Digest as _, Sha256};
use shoal_peer::engine::{Upstream, UpstreamError};
use shoal_peer::registry::{
    Object, Registries, RegistriesConfig, RegistryClient, RegistryError, UpstreamPolicy,
    UpstreamRequest,
};
use shoal_proto::Digest;
use shoal_tests::Recorder;
use shoal_tests::image::OciImage;
use shoal_tests::registry::{Registry, RegistryOptions, RegistryTls};
use shoal_tests::tls::TestPki;

const NAME: &str = "registry_upstream";
const REPO: &str = "demo/hello";
const TAG: &str = "v1";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn tools() -> bool {
    shoal_tests::require_tools(NAME, &["docker-registry", "skopeo"])
}

/// A plain HTTP registry holding one pushed image whose layer is about 1 MiB.
struct Pushed {
    tmp: tempfile::TempDir,
    registry: Registry,
    image: OciImage,
    layer: Vec<u8>,
}

fn pushed() -> Pushed {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(&tmp.path().join("registry")).unwrap();
    // Incompressible content, so the layer is large enough to arrive in many chunks.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let image = OciImage::build(
        &tmp.path().join("image"),
        TAG,
        &[("noise.bin", &noise), ("hello.txt", b"hello\n")],
    )
    .unwrap();
    image.push(&registry.addr().to_string(), REPO, TAG).unwrap();
    let layer = std::fs::read(
        image
            .dir
            .join("blobs/sha256")
            .join(&image.layer_digest["sha256:".len()..]),
    )
    .unwrap();
    Pushed {
        tmp,
        registry,
        image,
        layer,
    }
}

fn config(hosts: &Path) -> RegistriesConfig {
    let mut c = RegistriesConfig::new(hosts.to_owned());
    c.own_mirrors = vec!["http://127.0.0.1:7650".into()];
    c
}

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

fn get(object: Object) -> UpstreamRequest {
    UpstreamRequest {
        method: reqwest::Method::GET,
        repo: REPO.into(),
        object,
        accept: Vec::new(),
        authorization: None,
        range_from: None,
    }
}

/// The blob from `range_start` on through the engine's view, as (total, start, bytes).
async fn fetch(client: &Arc<RegistryClient>, d: &Digest, range_start: u64) -> (u64, u64, Vec<u8>) {
    let upstream = client.blob_upstream(REPO.into(), None);
    let mut body = upstream.fetch(d, range_start).await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.body.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    (body.total, body.start, bytes)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

#[tokio::test]
async fn plain_http_blob_whole_and_from_an_offset() {
    if !tools() {
        return;
    }
    let p = pushed();
    let mut c = config(&p.tmp.path().join("no-hosts-dir"));
    c.default_upstream = Some(p.registry.url());
    let client = Registries::new(c).resolve(None).await.unwrap();
    assert_eq!(client.registry(), p.registry.addr().to_string());
    let layer_digest = digest(&p.image.layer_digest);

    let (total, start, bytes) = fetch(&client, &layer_digest, 0).await;
    assert_eq!((total, start), (p.layer.len() as u64, 0));
    assert_eq!(bytes.len(), p.layer.len());
    assert_eq!(sha256(&bytes), p.image.layer_digest);

    let offset = 300_001u64;
    let (total, start, bytes) = fetch(&client, &layer_digest, offset).await;
    assert_eq!((total, start), (p.layer.len() as u64, offset));
    assert_eq!(bytes, p.layer[offset as usize..]);
}

#[tokio::test]
async fn manifest_by_tag_returns_upstream_content_type_and_digest() {
    if !tools() {
        return;
    }
    let p = pushed();
    let mut c = config(&p.tmp.path().join("no-hosts-dir"));
    c.default_upstream = Some(p.registry.url());
    let client = Registries::new(c).resolve(None).await.unwrap();
    let mut req = get(Object::Manifest(TAG.into()));
    req.accept = vec![OCI_MANIFEST.into(), DOCKER_MANIFEST.into()];
    let response = client.send(&req).await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some(OCI_MANIFEST));
    assert_eq!(
        header("docker-content-digest").as_deref(),
        Some(p.image.manifest_digest.as_str())
    );
    let body = response.bytes().await.unwrap();
    assert_eq!(sha256(&body), p.image.manifest_digest);

    // HEAD by digest: same headers, no body.
    let mut head = get(Object::Manifest(p.image.manifest_digest.clone()));
    head.method = reqwest::Method::HEAD;
    head.accept = vec![OCI_MANIFEST.into()];
    let response = client.send(&head).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-content-digest"],
        p.image.manifest_digest.as_str()
    );
}

#[tokio::test]
async fn a_404_is_returned_once_not_retried() {
    if !tools() {
        return;
    }
    let p = pushed();
    let mut c = config(&p.tmp.path().join("no-hosts-dir"));
    c.default_upstream = Some(p.registry.url());
    let client = Registries::new(c).resolve(None).await.unwrap();
    let unknown = Digest::from_sha256([7; 32]);
    let response = client.send(&get(Object::Blob(unknown))).await.unwrap();
    assert_eq!(response.status(), 404);
    // send() has returned, so no further attempt can come; wait for the log line only.
    let asked = || {
        p.registry
            .requests()
            .iter()
            .filter(|l| l.contains(&unknown.hex()))
            .count()
    };
    shoal_tests::wait_until("the access log line", Duration::from_secs(10), || {
        asked() >= 1
    })
    .unwrap();
    assert_eq!(asked(), 1, "{:?}", p.registry.requests());
}

#[tokio::test]
async fn a_stopped_registry_is_unreachable_after_the_retries() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(&tmp.path().join("registry")).unwrap();
    let url = registry.url();
    let name = registry.addr().to_string();
    drop(registry);
    let mut c = config(&tmp.path().join("no-hosts-dir"));
    c.default_upstream = Some(url);
    let client = Registries::new(c).resolve(None).await.unwrap();
    match client
        .send(&get(Object::Blob(Digest::from_sha256([1; 32]))))
        .await
    {
        Err(RegistryError::Unreachable {
            registry,
            last_error,
        }) => {
            assert_eq!(registry, name);
            assert!(
                last_error.to_lowercase().contains("connect"),
                "{last_error}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_5xx_is_retried_attempts_times_then_unreachable() {
    let upstream = Recorder::start(503).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.default_upstream = Some(format!("http://{}", upstream.addr()));
    c.policy.attempts = 3;
    let client = Registries::new(c).resolve(None).await.unwrap();
    let err = client
        .send(&get(Object::Blob(Digest::from_sha256([2; 32]))))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Unreachable { last_error, .. } if last_error.contains("503")),
        "{err:?}"
    );
    assert_eq!(upstream.requests().len(), 3, "{:?}", upstream.requests());
}

#[tokio::test]
async fn a_registry_s_own_attempts_replace_the_default() {
    let upstream = Recorder::start(503).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.default_upstream = Some(format!("http://{}", upstream.addr()));
    c.policy.attempts = 3;
    let own = UpstreamPolicy {
        attempts: 1,
        ..UpstreamPolicy::default()
    };
    c.per_registry.insert(upstream.addr().to_string(), own);
    let client = Registries::new(c).resolve(None).await.unwrap();
    let err = client
        .send(&get(Object::Blob(Digest::from_sha256([2; 32]))))
        .await
        .unwrap_err();
    assert!(matches!(&err, RegistryError::Unreachable { .. }), "{err:?}");
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
}

#[tokio::test]
async fn hosts_toml_order_capabilities_own_mirror_and_mirror_404() {
    if !tools() {
        return;
    }
    let p = pushed();
    let own = Recorder::start(500).unwrap();
    let mirror = Recorder::start(404).unwrap();
    let ns = p.registry.addr().to_string();
    let hosts = p.tmp.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(&ns)).unwrap();
    std::fs::write(
        hosts.join(&ns).join("hosts.toml"),
        format!(
            "server = \"{}\"\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            p.registry.url(),
            own.addr(),
            mirror.addr(),
        ),
    )
    .unwrap();
    let mut c = config(&hosts);
    c.own_mirrors = vec![format!("http://localhost:{}", own.addr().port())];
    let client = Registries::new(c).resolve(Some(&ns)).await.unwrap();
    assert_eq!(
        client.endpoints(),
        [
            format!("http://{}/v2", mirror.addr()),
            format!("{}/v2", p.registry.url())
        ]
    );

    // The mirror has nothing (404): the server serves the blob.
    let (_, _, bytes) = fetch(&client, &digest(&p.image.layer_digest), 0).await;
    assert_eq!(sha256(&bytes), p.image.layer_digest);
    let asked = mirror.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    // Encoded as containerd's Go code does (url.Values.Encode).
    let ns_query = format!("?ns={}", ns.replace(':', "%3A"));
    assert!(asked[0].contains(&ns_query), "{asked:?}");

    // A tag is resolved only by hosts with "resolve": the mirror is not asked.
    let mut by_tag = get(Object::Manifest(TAG.into()));
    by_tag.accept = vec![OCI_MANIFEST.into()];
    let response = client.send(&by_tag).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mirror.requests().len(), 1);
    assert!(own.requests().is_empty(), "{:?}", own.requests());
}

/// The pushed image served again by a TLS registry that requires a client certificate.
fn tls_registry(p: &Pushed) -> (Registry, TestPki) {
    let pki = TestPki::generate(&p.tmp.path().join("pki")).unwrap();
    let tls = Registry::start_with(
        &p.tmp.path().join("tls-registry"),
        &RegistryOptions {
            tls: Some(RegistryTls {
                certificate: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_cas: vec![pki.ca_cert.clone()],
            }),
            storage: Some(p.registry.data_dir().to_owned()),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    (tls, pki)
}

/// Writes `<hosts>/<ns>/hosts.toml` with `body`, the client pair copied next to it.
fn hosts_toml(hosts: &Path, ns: &str, pki: &TestPki, body: &str) {
    let dir = hosts.join(ns);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&pki.client_cert, dir.join("me.cert")).unwrap();
    std::fs::copy(&pki.client_key, dir.join("me.key")).unwrap();
    std::fs::write(dir.join("hosts.toml"), body).unwrap();
}

#[tokio::test]
async fn tls_with_ca_and_client_certificate_from_hosts_toml() {
    if !tools() {
        return;
    }
    let p = pushed();
    let (tls, pki) = tls_registry(&p);
    let ns = tls.addr().to_string();
    let layer = digest(&p.image.layer_digest);
    let blob = get(Object::Blob(layer));
    let ca = pki.ca_cert.display().to_string();

    // ca + client (relative paths): fetched.
    let hosts = p.tmp.path().join("hosts-ok");
    hosts_toml(
        &hosts,
        &ns,
        &pki,
        &format!(
            "server = \"{}\"\nca = {ca:?}\nclient = [[\"me.cert\", \"me.key\"]]\n",
            tls.url()
        ),
    );
    let client = Registries::new(config(&hosts))
        .resolve(Some(&ns))
        .await
        .unwrap();
    assert_eq!(client.endpoints(), [format!("https://{ns}/v2")]);
    let (total, _, bytes) = fetch(&client, &layer, 0).await;
    assert_eq!(total, p.layer.len() as u64);
    assert_eq!(sha256(&bytes), p.image.layer_digest);

    // The same settings on a [host] entry, the server unreachable: fetched from the host.
    let hosts = p.tmp.path().join("hosts-entry");
    hosts_toml(
        &hosts,
        &ns,
        &pki,
        &format!(
            "server = \"https://127.0.0.1:1\"\n[host.\"{}\"]\n  ca = [{ca:?}]\n  client = [[\"me.cert\", \"me.key\"]]\n",
            tls.url()
        ),
    );
    let client = Registries::new(config(&hosts))
        .resolve(Some(&ns))
        .await
        .unwrap();
    let response = client.send(&blob).await.unwrap();
    assert_eq!(response.status(), 200);

    // Without `client`: the registry refuses the TLS session.
    let hosts = p.tmp.path().join("hosts-no-client");
    hosts_toml(
        &hosts,
        &ns,
        &pki,
        &format!("server = \"{}\"\nca = {ca:?}\n", tls.url()),
    );
    let client = Registries::new(config(&hosts))
        .resolve(Some(&ns))
        .await
        .unwrap();
    match client.send(&blob).await {
        Err(RegistryError::Unreachable { last_error, .. }) => {
            // The server's TLS alert (bad_certificate / certificate_required).
            let e = last_error.to_lowercase();
            assert!(
                e.contains("alert") && e.contains("certificate"),
                "{last_error}"
            );
        }
        other => panic!("expected the registry to refuse, got {other:?}"),
    }

    // Without `ca`: the registry's certificate is not trusted.
    let hosts = p.tmp.path().join("hosts-no-ca");
    hosts_toml(
        &hosts,
        &ns,
        &pki,
        &format!(
            "server = \"{}\"\nclient = [[\"me.cert\", \"me.key\"]]\n",
            tls.url()
        ),
    );
    let client = Registries::new(config(&hosts))
        .resolve(Some(&ns))
        .await
        .unwrap();
    match client.send(&blob).await {
        Err(RegistryError::Unreachable { last_error, .. }) => {
            assert!(
                last_error.contains("invalid peer certificate"),
                "{last_error}"
            );
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }

    // skip_verify instead of `ca`: accepted.
    let hosts = p.tmp.path().join("hosts-skip-verify");
    hosts_toml(
        &hosts,
        &ns,
        &pki,
        &format!(
            "server = \"{}\"\nskip_verify = true\nclient = [[\"me.cert\", \"me.key\"]]\n",
            tls.url()
        ),
    );
    let client = Registries::new(config(&hosts))
        .resolve(Some(&ns))
        .await
        .unwrap();
    assert_eq!(client.send(&blob).await.unwrap().status(), 200);
}

#[tokio::test]
async fn tls_with_dockers_certificate_layout_and_no_hosts_toml() {
    if !tools() {
        return;
    }
    let p = pushed();
    let (tls, pki) = tls_registry(&p);
    let ns = tls.addr().to_string();
    let hosts = p.tmp.path().join("certs.d");
    // containerd looks for `host_port_` before `host:port`.
    let dir = hosts.join(ns.replace(':', "_") + "_");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&pki.ca_cert, dir.join("ca.crt")).unwrap();
    std::fs::copy(&pki.client_cert, dir.join("client.cert")).unwrap();
    std::fs::copy(&pki.client_key, dir.join("client.key")).unwrap();
    let client = Registries::new(config(&hosts))
        .resolve(Some(&ns))
        .await
        .unwrap();
    let (_, _, bytes) = fetch(&client, &digest(&p.image.layer_digest), 0).await;
    assert_eq!(sha256(&bytes), p.image.layer_digest);
}

/// An HTTP/1.1 server that answers each request with `respond(head)` and keeps every
/// request head (request line and headers) it received.
struct HeadRecorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl HeadRecorder {
    fn start(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> HeadRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let answer = respond(&head);
                recorded.lock().unwrap().push(head);
                let _ = (&stream).write_all(answer.as_bytes());
            }
        });
        HeadRecorder { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

#[tokio::test]
async fn authorization_is_dropped_on_cross_host_redirects_only() {
    let storage = HeadRecorder::start(|_| OK.to_owned());
    let storage_url = format!("http://{}/bucket/blob", storage.addr);
    let registry = HeadRecorder::start(move |head| {
        if head.contains("/blobs/") && head.contains(&"01".repeat(32)) {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {storage_url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        } else if head.contains("/blobs/") {
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /same-host/blob\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        } else {
            OK.to_owned()
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let ns = registry.addr.to_string();
    std::fs::create_dir_all(tmp.path().join(&ns)).unwrap();
    std::fs::write(
        tmp.path().join(&ns).join("hosts.toml"),
        format!("server = \"http://{ns}\"\n[header]\n  x-shoal-test = \"from-hosts-toml\"\n"),
    )
    .unwrap();
    let client = Registries::new(config(tmp.path()))
        .resolve(Some(&ns))
        .await
        .unwrap();
    let mut req = get(Object::Blob(Digest::from_sha256([1; 32])));
    req.authorization = Some(HeaderValue::from_static("Bearer not-for-storage"));

    // To another host:port: Authorization dropped, the rest kept.
    let response = client.send(&req).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "hello");
    let first = &registry.heads()[0];
    assert!(has_header(first, "authorization"), "{first}");
    assert!(first.contains("x-shoal-test: from-hosts-toml"), "{first}");
    let at_storage = &storage.heads()[0];
    assert!(at_storage.starts_with("GET /bucket/blob "), "{at_storage}");
    assert!(!has_header(at_storage, "authorization"), "{at_storage}");

    // To the same host: kept.
    req.object = Object::Blob(Digest::from_sha256([2; 32]));
    let response = client.send(&req).await.unwrap();
    assert_eq!(response.status(), 200);
    let heads = registry.heads();
    let same = heads.last().unwrap();
    assert!(same.starts_with("GET /same-host/blob "), "{same}");
    assert!(has_header(same, "authorization"), "{same}");
}

/// An upstream that answers every request with `200`, a `Content-Length` of 1 MiB and
/// the first 1000 bytes of the body, then holds the connection open and sends nothing
/// more (a connection dropped silently by a NAT). Loopback only.
async fn stalling_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&[7u8; 1000]).await;
                // Stall: keep the connection open, send nothing more.
                tokio::time::sleep(Duration::from_secs(600)).await;
                drop(conn);
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_body_that_stalls_fails_after_the_idle_timeout() {
    let addr = stalling_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.default_upstream = Some(format!("http://{addr}"));
    let quick = UpstreamPolicy {
        idle_timeout: Duration::from_millis(300),
        ..UpstreamPolicy::default()
    };
    c.per_registry.insert(addr.to_string(), quick);
    let client = Registries::new(c).resolve(None).await.unwrap();
    let upstream = client.blob_upstream(REPO.into(), None);
    let mut body = upstream
        .fetch(&Digest::from_sha256([3; 32]), 0)
        .await
        .unwrap();
    assert_eq!(body.total, 1 << 20);
    // Bounds a hang only (the idle timeout is 300 ms); no duration is asserted.
    let read = async {
        let mut got = 0;
        loop {
            match body.body.next().await {
                Some(Ok(chunk)) => got += chunk.len(),
                Some(Err(e)) => return (got, Some(e)),
                None => return (got, None),
            }
        }
    };
    let (got, err) = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stalled body never failed");
    assert_eq!(got, 1000, "the bytes before the stall arrive");
    let err = err.expect("the stalled body ended without an error");
    assert!(
        matches!(&err, UpstreamError::Http(m) if m.contains("idle timeout")),
        "{err:?}"
    );
    assert!(
        body.body.next().await.is_none(),
        "the stream ends after its error"
    );
}
