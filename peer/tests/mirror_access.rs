//! Private images stay private through the mirror (issue 15): real `docker-registry`
//! upstreams that require credentials, a real scheduler and three real `shoal-peer`
//! processes, and clients that do the registry auth dance as containerd does
//! ([`AuthClient`]: ask, read the 401's challenge, retry with Basic or with a token
//! from the realm).
//!
//! Two upstreams, one test each: `htpasswd` (Basic; such a registry has no anonymous
//! access at all, so the public image is on a second registry without auth) and
//! `auth: token` (bearer JWTs from [`TokenService`]; one repository public to anonymous
//! callers, one private). For each:
//!
//! 1. node 1 pulls the private image with credentials;
//! 2. node 2 without credentials, with wrong ones and with a forged token: refused (401),
//!    and node 2 sends no blob byte at all (from its cache, peers or upstream);
//! 3. node 1's own cache refuses a caller without credentials, and one with wrong ones;
//! 4. node 3 with credentials gets it, and upstream served each private blob once in
//!    total;
//! 5. the public image pulls anonymously on every node;
//! 6. upstream stopped: the cached public image (its manifest by digest and its blobs;
//!    the tag needs upstream without `--stale-tag-window`) still pulls anonymously on every node;
//!    the private one is refused with a 503 and an OCI error body before any byte, to
//!    callers with and without credentials (their grants expired), on the node that
//!    holds it and on one that could fetch it from peers.
//!
//! And a shared download whose own token expired goes on with another authorised
//! caller's ([`a_download_whose_token_expired_goes_on_with_another_callers`]).
//!
//! Asserted: bytes (digests), statuses, counts of registry GETs and of bytes the mirror
//! sent. No duration.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_peer::registry::{Registries, RegistriesConfig};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Registry, RegistryAuth, RegistryOptions};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};
use shoal_tests::token_auth::{
    AuthClient, Fetched, TokenPolicy, TokenService, basic, htpasswd_line,
};

const PRIVATE: &str = "team/private";
const PUBLIC: &str = "library/public";
const USER: (&str, &str) = ("alice", "s3cret-pw");
/// Short, so that step 6 can wait out the grants of steps 1–5.
const TTL_SECS: u64 = 3;

fn tools_present(test: &str) -> bool {
    shoal_tests::require_tools(test, &["docker-registry", "skopeo", "htpasswd"])
}

/// A private image (a 3 MiB incompressible layer and a small one) and a public one.
fn images(dir: &Path) -> (OciImage, OciImage) {
    let big = random_bytes(3 << 20, 15);
    let private = OciImage::build_layers(
        &dir.join("private-oci"),
        "v1",
        &[&[("secret.bin", &big)], &[("etc/secret", b"top secret\n")]],
    )
    .unwrap();
    let public = OciImage::build(&dir.join("public-oci"), "v1", &[("hello", b"hello\n")]).unwrap();
    (private, public)
}

/// The upstream side of one case.
struct Upstream {
    /// `ns` of the private repository's registry.
    private_ns: String,
    /// `ns` of the public repository's registry.
    public_ns: String,
    /// Every registry (dropping them stops upstream).
    registries: Vec<Registry>,
    /// The token service, for the token case.
    tokens: Option<TokenService>,
}

impl Upstream {
    /// GETs (200/206) of `digest` the registries served.
    fn blob_gets(&self, digest: &str) -> usize {
        self.registries
            .iter()
            .flat_map(|r| r.access_log())
            .filter(|a| a.is_blob_get(digest) && (a.status == 200 || a.status == 206))
            .count()
    }
}

fn ns_of(r: &Registry) -> String {
    r.addr().to_string()
}

/// Basic: the private image behind `htpasswd`, the public one on a registry without auth.
fn basic_upstream(dir: &Path, private: &OciImage, public: &OciImage) -> Upstream {
    let storage = dir.join("private-storage");
    Registry::stage(private, PRIVATE, "v1", &dir.join("stage-private"), &storage).unwrap();
    let public_storage = dir.join("public-storage");
    Registry::stage(
        public,
        PUBLIC,
        "v1",
        &dir.join("stage-public"),
        &public_storage,
    )
    .unwrap();
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line(USER.0, USER.1).unwrap() + "\n").unwrap();
    let private_reg = Registry::start_with(
        &dir.join("registry-basic"),
        &RegistryOptions {
            storage: Some(storage),
            auth: Some(RegistryAuth::Htpasswd { path: htpasswd }),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    let public_reg = Registry::start_with(
        &dir.join("registry-public"),
        &RegistryOptions {
            storage: Some(public_storage),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    Upstream {
        private_ns: ns_of(&private_reg),
        public_ns: ns_of(&public_reg),
        registries: vec![private_reg, public_reg],
        tokens: None,
    }
}

/// Token: one registry, `PUBLIC` readable anonymously, `PRIVATE` by `USER` only.
async fn token_upstream(dir: &Path, private: &OciImage, public: &OciImage) -> Upstream {
    let storage = dir.join("token-storage");
    Registry::stage(private, PRIVATE, "v1", &dir.join("stage-private"), &storage).unwrap();
    Registry::stage(public, PUBLIC, "v1", &dir.join("stage-public"), &storage).unwrap();
    let tokens = TokenService::start(
        &dir.join("token-service"),
        TokenPolicy {
            users: vec![(USER.0.into(), USER.1.into())],
            public: vec![PUBLIC.into()],
            lifetime_secs: 300,
        },
    )
    .await
    .unwrap();
    let reg = Registry::start_with(
        &dir.join("registry-token"),
        &RegistryOptions {
            storage: Some(storage),
            auth: Some(RegistryAuth::Token {
                realm: tokens.realm(),
                root_cert_bundle: tokens.cert().to_path_buf(),
            }),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    let ns = ns_of(&reg);
    Upstream {
        private_ns: ns.clone(),
        public_ns: ns,
        registries: vec![reg],
        tokens: Some(tokens),
    }
}

/// `hosts.toml` per registry: plain HTTP servers on loopback.
fn hosts_dir(dir: &Path, up: &Upstream) -> std::path::PathBuf {
    let hosts = dir.join("certs.d");
    for ns in [&up.private_ns, &up.public_ns] {
        std::fs::create_dir_all(hosts.join(ns)).unwrap();
        std::fs::write(
            hosts.join(ns).join("hosts.toml"),
            format!("server = \"http://{ns}\"\n"),
        )
        .unwrap();
    }
    hosts
}

struct Swarm {
    sched: SchedulerProcess,
    nodes: Vec<PeerProcess>,
}

async fn swarm(dir: &Path, hosts: std::path::PathBuf) -> Swarm {
    let tls = dir.join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir, &tls).await.unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: vec!["--access-cache-ttl".into(), format!("{TTL_SECS}s")],
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
    Swarm { sched, nodes }
}

/// A whole pull through `node`'s mirror as containerd makes it: `HEAD` of the manifest
/// by tag, `GET` of it by digest, then every blob. Each request does its own auth dance.
async fn pull(
    node: &PeerProcess,
    ns: &str,
    repo: &str,
    image: &OciImage,
    client: &AuthClient,
) -> Vec<(String, Fetched)> {
    let base = format!("{}/v2/{repo}", node.mirror_url());
    let mut out = Vec::new();
    let head = client
        .get("HEAD", &format!("{base}/manifests/v1?ns={ns}"))
        .await
        .unwrap();
    out.push(("manifest tag".to_owned(), head));
    let m = client
        .get(
            "GET",
            &format!("{base}/manifests/{}?ns={ns}", image.manifest_digest),
        )
        .await
        .unwrap();
    out.push((image.manifest_digest.clone(), m));
    for b in &image.blobs {
        let f = client
            .get("GET", &format!("{base}/blobs/{}?ns={ns}", b.digest))
            .await
            .unwrap();
        out.push((b.digest.clone(), f));
    }
    out
}

/// Every request of a pull answered 200 and every body is the right one.
fn assert_pulled(what: &str, got: &[(String, Fetched)]) {
    for (name, f) in got {
        assert_eq!(f.status, 200, "{what}: {name}: {f:?}");
        if name.starts_with("sha256:") {
            assert_eq!(&f.digest, name, "{what}: {name}: wrong bytes");
        }
    }
}

/// Every blob request of a pull refused with `status` and an OCI error body (never a
/// byte of the blob).
fn assert_refused(what: &str, got: &[(String, Fetched)], status: u16) {
    let blobs: Vec<_> = got
        .iter()
        .filter(|(n, _)| n.starts_with("sha256:"))
        .collect();
    for (name, f) in blobs {
        assert_eq!(f.status, status, "{what}: {name}: {f:?}");
        assert_ne!(
            &f.digest, name,
            "{what}: {name}: the blob's bytes were served"
        );
        assert!(f.len < 4096, "{what}: {name}: a {}-byte body", f.len);
    }
}

/// A bearer token the registry never issued: signed by another service's key.
async fn forged_token(dir: &Path) -> String {
    let other = TokenService::start(&dir.join("forger"), TokenPolicy::default())
        .await
        .unwrap();
    other.mint(USER.0, &[PRIVATE], 300)
}

async fn bytes_served(node: &PeerProcess) -> f64 {
    node.metric("shoal_mirror_blob_bytes_served_total").await
}

/// GET of `url` with `authorization`, no auth dance.
async fn raw_get(url: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ct, resp.text().await.unwrap_or_default())
}

async fn the_access_model(
    case: &str,
    dir: &Path,
    up: Upstream,
    private: OciImage,
    public: OciImage,
) {
    let hosts = hosts_dir(dir, &up);
    let s = swarm(dir, hosts).await;
    let (n1, n2, n3) = (&s.nodes[0], &s.nodes[1], &s.nodes[2]);
    let alice = AuthClient::new(Some(USER));
    let anonymous = AuthClient::new(None);
    let wrong = AuthClient::new(Some((USER.0, "wrong-password")));
    let (pns, qns) = (up.private_ns.as_str(), up.public_ns.as_str());

    // 1. Node 1 pulls the private image with credentials.
    assert_pulled(
        &format!("{case} node 1 alice"),
        &pull(n1, pns, PRIVATE, &private, &alice).await,
    );
    for b in &private.blobs {
        let mut tries = 0;
        loop {
            let known = s.sched.task(&b.digest).await;
            if known.is_some_and(|t| t["complete_holders"].as_u64().unwrap_or(0) >= 1) {
                break;
            }
            tries += 1;
            assert!(
                tries < 600,
                "{case}: the scheduler never knew node 1 holds {}",
                b.digest
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // 2. Node 2 without credentials, with wrong ones, with a forged token: refused,
    //    and not one blob byte leaves node 2.
    let got = pull(n2, pns, PRIVATE, &private, &anonymous).await;
    assert_refused(&format!("{case} node 2 anonymous"), &got, 401);
    // The manifests too: relayed from upstream, which refuses them.
    assert_eq!(got[0].1.status, 401, "{case}: anonymous manifest HEAD");
    let got = pull(n2, pns, PRIVATE, &private, &wrong).await;
    assert_refused(&format!("{case} node 2 wrong password"), &got, 401);
    // The first answer carries upstream's challenge, as containerd needs it for the dance.
    let url = format!(
        "{}/v2/{PRIVATE}/blobs/{}?ns={pns}",
        n2.mirror_url(),
        private.blobs[1].digest
    );
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "{case}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let scheme = if case == "basic" {
        "Basic realm="
    } else {
        "Bearer realm="
    };
    assert!(
        challenge.starts_with(scheme),
        "{case}: challenge {challenge:?}"
    );
    let forged = forged_token(dir).await;
    for b in &private.blobs {
        let url = format!(
            "{}/v2/{PRIVATE}/blobs/{}?ns={pns}",
            n2.mirror_url(),
            b.digest
        );
        for auth in [
            format!("Bearer {forged}"),
            "Basic YWxpY2U6bm90LWl0".to_owned(),
        ] {
            let (status, _, body) = raw_get(&url, Some(&auth)).await;
            assert_eq!(status, 401, "{case}: node 2 {auth:.12}…: {body}");
        }
    }
    assert_eq!(
        bytes_served(n2).await,
        0.0,
        "{case}: node 2 sent blob bytes"
    );

    // 3. Node 1's own cache refuses callers without (valid) credentials.
    let before = bytes_served(n1).await;
    assert_refused(
        &format!("{case} node 1 cache, anonymous"),
        &pull(n1, pns, PRIVATE, &private, &anonymous).await,
        401,
    );
    assert_refused(
        &format!("{case} node 1 cache, wrong password"),
        &pull(n1, pns, PRIVATE, &private, &wrong).await,
        401,
    );
    assert_eq!(
        bytes_served(n1).await,
        before,
        "{case}: node 1's cache served bytes"
    );

    // 4. Node 3 with credentials: from peers; upstream served each blob once in all.
    assert_pulled(
        &format!("{case} node 3 alice"),
        &pull(n3, pns, PRIVATE, &private, &alice).await,
    );
    for b in &private.blobs {
        assert_eq!(
            up.blob_gets(&b.digest),
            1,
            "{case}: upstream served {} {} times",
            b.digest,
            up.blob_gets(&b.digest)
        );
    }
    assert!(
        n3.metric("shoal_peer_bytes_from_peers_total").await > 0.0,
        "{case}: node 3 got nothing from peers"
    );

    // 5. The public image pulls anonymously on every node.
    for n in &s.nodes {
        assert_pulled(
            &format!("{case} {} public anonymous", n.name),
            &pull(n, qns, PUBLIC, &public, &anonymous).await,
        );
    }
    for n in &s.nodes {
        let m = n.metrics().await.unwrap();
        let refused = |r: &str| {
            m.get(&format!(
                "shoal_peer_access_refused_total{{reason=\"{r}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        assert!(m["shoal_peer_access_checks_total"] > 0.0, "{case}: {m:?}");
        assert_eq!(refused("upstream_unreachable"), 0.0, "{case}: {}", n.name);
        if n.name != "node-3" {
            assert!(refused("unauthorized") > 0.0, "{case}: {}: {m:?}", n.name);
        }
    }

    // 6. Upstream stops. The grants of steps 1–5 expire (TTL_SECS).
    let Upstream { registries, .. } = up;
    drop(registries);
    tokio::time::sleep(Duration::from_secs(TTL_SECS) + Duration::from_millis(500)).await;
    for n in &s.nodes {
        let got = pull(n, qns, PUBLIC, &public, &anonymous).await;
        // The tag needs upstream (503 now: --stale-tag-window is off by default); the
        // manifest by digest and the blobs come from the cache.
        let (tag, by_digest): (Vec<_>, Vec<_>) =
            got.into_iter().partition(|(d, _)| d == "manifest tag");
        assert_eq!(tag[0].1.status, 503, "{case}: {:?}", tag[0].1);
        assert_eq!(by_digest.len(), public.blobs.len() + 1);
        assert_pulled(
            &format!("{case} {} public, upstream down", n.name),
            &by_digest,
        );
    }
    for (n, who) in [(n1, None), (n1, Some(USER)), (n2, Some(USER)), (n3, None)] {
        let objects = private
            .blobs
            .iter()
            .map(|b| format!("blobs/{}", b.digest))
            .chain([format!("manifests/{}", private.manifest_digest)]);
        for object in objects {
            let url = format!("{}/v2/{PRIVATE}/{object}?ns={pns}", n.mirror_url());
            let auth = who.map(|(u, p)| basic(u, p));
            let before = bytes_served(n).await;
            let (status, ct, body) = raw_get(&url, auth.as_deref()).await;
            assert_eq!(
                status, 503,
                "{case}: {} {who:?} upstream down: {body}",
                n.name
            );
            assert_eq!(ct, "application/json", "{case}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["errors"][0]["code"], "UNAVAILABLE", "{case}: {body}");
            assert_eq!(
                bytes_served(n).await,
                before,
                "{case}: {} served bytes",
                n.name
            );
        }
        let refused = n
            .metric("shoal_peer_access_refused_total{reason=\"upstream_unreachable\"}")
            .await;
        assert!(refused > 0.0, "{case}: {} counted no refusal", n.name);
    }
    assert!(
        n1.log().contains("access refused: upstream unreachable"),
        "{case}: no log line"
    );
    for n in &s.nodes {
        let log = n.log();
        assert!(
            !log.contains(USER.1),
            "{case}: {} logged the password",
            n.name
        );
        assert!(
            !log.contains("YWxpY2U6"),
            "{case}: {} logged a Basic header",
            n.name
        );
        assert!(!log.contains("eyJ"), "{case}: {} logged a token", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_auth_registry_private_stays_private() {
    if !tools_present("basic_auth_registry_private_stays_private") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = images(dir.path());
    let up = basic_upstream(dir.path(), &private, &public);
    the_access_model("basic", dir.path(), up, private, public).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_auth_registry_private_stays_private() {
    if !tools_present("token_auth_registry_private_stays_private") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = images(dir.path());
    let up = token_upstream(dir.path(), &private, &public).await;
    let tokens = up.tokens.clone().unwrap();
    the_access_model("token", dir.path(), up, private, public).await;
    assert!(tokens.issued() > 0, "the Bearer flow was not exercised");
}

/// The engine's upstream for a download started with a token that has expired since:
/// refused alone; with another caller's credential that upstream authorised for the
/// repository, it goes on and the bytes are right. Credentials of another repository
/// are not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_token_expired_goes_on_with_another_callers() {
    if !tools_present("a_download_whose_token_expired_goes_on_with_another_callers") {
        return;
    }
    use futures::StreamExt;
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = images(dir.path());
    let up = token_upstream(dir.path(), &private, &public).await;
    let tokens = up.tokens.clone().unwrap();
    let mut config = RegistriesConfig::new(dir.path().join("no-hosts"));
    config.default_upstream = Some(format!("http://{}", up.private_ns));
    let client = Registries::new(config).resolve_blocking(None).unwrap();
    let bearer =
        |t: String| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
    let expired = bearer(tokens.mint(USER.0, &[PRIVATE], -3600));
    let valid = bearer(tokens.mint("bob", &[PRIVATE], 300));
    let layer = &private.blobs[1];
    let digest: shoal_proto::Digest = layer.digest.parse().unwrap();
    let fetch = |c: &Arc<shoal_peer::registry::RegistryClient>| {
        let upstream = c.blob_upstream(PRIVATE.to_owned(), Some(expired.clone()));
        async move { shoal_peer::engine::Upstream::fetch(&upstream, &digest, 0).await }
    };
    // Alone: upstream's 401.
    match fetch(&client).await {
        Err(shoal_peer::engine::UpstreamError::Status { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected a 401, got {:?}", other.map(|b| b.total)),
    }
    // Another repository's credential is not tried.
    client
        .credentials()
        .remember(PUBLIC, &valid, std::time::Instant::now());
    assert!(fetch(&client).await.is_err());
    // Bob was authorised for this repository: the download goes on with his token.
    client
        .credentials()
        .remember(PRIVATE, &valid, std::time::Instant::now());
    let body = fetch(&client).await.expect("fetched with bob's token");
    assert_eq!(body.total, layer.size);
    let mut hasher = sha2::Sha256::new();
    let mut stream = body.body;
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.unwrap());
    }
    assert_eq!(format!("sha256:{:x}", hasher.finalize()), layer.digest);
}

/// A registry reached through `_default` (any `ns` a caller names; here one that claims
/// to hold a private digest and serves other bytes under it) never opens the cache: its
/// blobs are relayed from it, and the private bytes on the node are not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_reached_through_default_cannot_open_the_cache() {
    use sha2::Digest as _;
    use shoal_tests::upstream::CountingUpstream;
    let dir = tempfile::tempdir().unwrap();
    let (data, digest) = shoal_tests::blob(1 << 20, 77);
    let legit = CountingUpstream::start(PRIVATE, &digest, data.clone(), Duration::ZERO)
        .await
        .unwrap();
    let other = Arc::new(vec![0x5a_u8; 1 << 20]);
    let evil = CountingUpstream::start("any/repo", &digest, other.clone(), Duration::ZERO)
        .await
        .unwrap();
    let hosts = dir.path().join("certs.d");
    let legit_ns = legit.url().trim_start_matches("http://").to_owned();
    for (d, server) in [(legit_ns.as_str(), legit.url()), ("_default", evil.url())] {
        std::fs::create_dir_all(hosts.join(d)).unwrap();
        std::fs::write(
            hosts.join(d).join("hosts.toml"),
            format!("server = \"{server}\"\n"),
        )
        .unwrap();
    }
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let peer = PeerProcess::start(
        dir.path(),
        "node",
        &PeerOptions {
            scheduler: None,
            default_upstream: None,
            hosts_dir: Some(hosts),
            tls_dir: tls,
            extra: Vec::new(),
        },
    )
    .await
    .unwrap();
    let sha = |b: &[u8]| format!("sha256:{:x}", sha2::Sha256::digest(b));
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    };
    let url = format!(
        "{}/v2/{PRIVATE}/blobs/{digest}?ns={legit_ns}",
        peer.mirror_url()
    );
    let (status, body) = get(url).await;
    assert_eq!((status, sha(&body)), (200, digest.clone()));
    let from_cache = peer
        .metric("shoal_mirror_blob_bytes_from_cache_total")
        .await;
    let url = format!(
        "{}/v2/any/repo/blobs/{digest}?ns=evil.example",
        peer.mirror_url()
    );
    let (status, body) = get(url).await;
    assert_eq!(status, 200);
    assert_eq!(
        &body[..],
        &other[..],
        "not relayed from the claiming registry"
    );
    assert_ne!(sha(&body), digest, "the private bytes were served");
    assert_eq!(
        peer.metric("shoal_mirror_blob_bytes_from_cache_total")
            .await,
        from_cache
    );
    assert_eq!(
        peer.metric("shoal_peer_access_relayed_untrusted_total")
            .await,
        1.0
    );
    assert_eq!(
        evil.served().gets.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
