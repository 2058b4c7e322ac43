//! Node certificates issued by the scheduler (issue 13, item 2a), end to end: a real
//! `shoal-scheduler` process with its certificate issuer on (`--issuer-ca-dir`), real
//! `shoal-peer run` processes with `--identity token-review`, and a stand-in
//! kube-apiserver (`shoal_tests::kube`, the one stand-in allowed: it answers TokenReview
//! and Pod GET in the real JSON over HTTPS). The CSR, the signing, the files, the
//! renewal, mutual TLS and the identity binding are all real.
//!
//! What is asserted:
//! - a peer with a valid token gets a certificate (its key made on the node, mode 0600),
//!   joins under its node name, and pulls from another such peer (one upstream copy);
//!   the review asked for the issuer's audience and the scheduler's log never shows a
//!   token;
//! - refused, with a status that names why, counted by reason, nothing issued: an
//!   unknown token, a token for another audience, another ServiceAccount's token, a
//!   token whose node is not the one asked for, a pod not of the peer DaemonSet, a pod
//!   on another node (Kubernetes < 1.30, where the token names no node), and oversized
//!   or malformed input;
//! - a CSR for another node cannot join as that node: the peer that asks is refused and
//!   exits, and a certificate issued for node B cannot join as node A;
//! - a short-lived certificate (24 s) is renewed before it expires, the QUIC side uses
//!   the new one (a pull after the first certificate expired), and the scheduler
//!   session is not dropped (no re-join, no session ended).
//!
//! No duration is asserted; waits only bound a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use shoal_peer::daemon::issuance;
use shoal_proto::v1;
use shoal_proto::v1::certificate_issuer_client::CertificateIssuerClient;
use shoal_proto::v1::scheduler_client::SchedulerClient;
use shoal_tests::kube::{BoundToken, FakeKubeApi, FakePod};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob, workspace_bin};
use shoal_tests::upstream::CountingUpstream;
use shoal_tests::{blob, free_port};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const NS: &str = "shoal";
const SA: &str = "shoal-peer";
const DAEMONSET: &str = "shoal-peer";
const AUDIENCE: &str = "shoal-issuer";
const REPO: &str = "identity/blob";

/// A scheduler with its issuer on, the stand-in API server, and the cluster CA.
struct Cluster {
    dir: tempfile::TempDir,
    kube: FakeKubeApi,
    sched: SchedulerProcess,
    tls: PathBuf,
    issuer_url: String,
}

impl Cluster {
    async fn start(lifetime: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let kube = FakeKubeApi::start(dir.path()).await.unwrap();
        let tls = dir.path().join("tls");
        PeerProcess::tls_init(&tls).unwrap();
        let issuer = format!("127.0.0.1:{}", free_port().unwrap());
        let flags: Vec<String> = [
            "--issuer-ca-dir",
            tls.to_str().unwrap(),
            "--issuer-listen",
            &issuer,
            "--issuer-cert-lifetime",
            lifetime,
            "--issuer-audience",
            AUDIENCE,
            "--issuer-service-account",
            &format!("{NS}/{SA}"),
            "--issuer-daemonset",
            DAEMONSET,
            "--kube-api-url",
            &kube.url(),
            "--kube-token-file",
            kube.token_file().to_str().unwrap(),
            "--kube-ca-file",
            kube.ca_file().to_str().unwrap(),
            "--peer-ttl",
            "10s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sched = SchedulerProcess::start_with(dir.path(), &tls, &flags)
            .await
            .unwrap();
        Cluster {
            dir,
            kube,
            sched,
            tls,
            issuer_url: format!("https://{issuer}"),
        }
    }

    /// A peer pod of the DaemonSet on `node`, and its token; `token_node` is what the
    /// token's `extra` says (`None`: Kubernetes < 1.30).
    fn peer_pod(&self, node: &str, token_node: Option<&str>) -> String {
        let pod = format!("shoal-peer-{node}");
        self.kube.add_pod(FakePod {
            namespace: NS.into(),
            name: pod.clone(),
            uid: format!("uid-{pod}"),
            node: node.into(),
            owner: Some(("DaemonSet".into(), DAEMONSET.into())),
        });
        let token = format!("token-{node}-{}", rand_suffix());
        self.kube.add_token(
            &token,
            BoundToken {
                username: format!("system:serviceaccount:{NS}:{SA}"),
                audiences: vec![AUDIENCE.into()],
                pod: Some((pod.clone(), format!("uid-{pod}"))),
                node: token_node.map(str::to_owned),
            },
        );
        token
    }

    /// Writes `token` where a peer reads it (the projected volume).
    fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("token-{name}"));
        std::fs::write(&path, token).unwrap();
        path
    }

    /// Options of a `--identity token-review` peer on `node`; its TLS dir starts empty.
    fn peer_options(&self, node: &str, token: &str, upstream: Option<String>) -> PeerOptions {
        let tls_dir = self.node_tls(node);
        std::fs::create_dir_all(&tls_dir).unwrap();
        PeerOptions {
            scheduler: Some(self.sched.grpc_url()),
            default_upstream: upstream,
            hosts_dir: None,
            tls_dir,
            extra: vec![
                "--identity".into(),
                "token-review".into(),
                "--node-name".into(),
                node.into(),
                "--sa-token-file".into(),
                self.token_file(node, token).display().to_string(),
                "--issuer-url".into(),
                self.issuer_url.clone(),
                "--issuer-ca-file".into(),
                self.tls.join("ca.crt").display().to_string(),
            ],
        }
    }

    fn node_tls(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("issued-{node}"))
    }

    /// A gRPC client of the issuer, as a node without a certificate.
    async fn issuer(&self) -> CertificateIssuerClient<tonic::transport::Channel> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            std::fs::read(self.tls.join("ca.crt")).unwrap(),
        ));
        let channel = Endpoint::from_shared(self.issuer_url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        CertificateIssuerClient::new(channel)
    }

    async fn metric(&self, key: &str) -> f64 {
        self.sched
            .metrics()
            .await
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0.0)
    }
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

/// A CSR for `cn` (none when `None`) and its key.
fn csr(cn: Option<&str>) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    (p.serialize_request(&key).unwrap().der().to_vec(), key)
}

async fn ask(
    c: &mut CertificateIssuerClient<tonic::transport::Channel>,
    node: &str,
    csr_der: Vec<u8>,
    token: &str,
) -> Result<v1::IssueResponse, tonic::Status> {
    c.issue(v1::IssueRequest {
        csr_der,
        node_name: node.into(),
        token: token.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn expect_refused(
    what: &str,
    r: Result<v1::IssueResponse, tonic::Status>,
    code: Code,
    names: &str,
) {
    match r {
        Ok(_) => panic!("{what}: a certificate was issued"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(
                s.message().contains(names),
                "{what}: the status should name {names:?}: {s:?}"
            );
        }
    }
}

fn common_name(cert_pem: &[u8]) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_valid_token_gets_a_certificate_joins_and_pulls() {
    let c = Cluster::start("24h").await;
    let (data, digest) = blob(8 << 20, 21);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    // node-a: a token naming its node (Kubernetes ≥ 1.30); node-b: one that does not,
    // so its pod's spec.nodeName decides.
    let token_a = c.peer_pod("node-a", Some("node-a"));
    let token_b = c.peer_pod("node-b", None);
    let a = PeerProcess::start(
        c.dir.path(),
        "node-a",
        &c.peer_options("node-a", &token_a, Some(upstream.url())),
    )
    .await
    .unwrap();
    let b = PeerProcess::start(
        c.dir.path(),
        "node-b",
        &c.peer_options("node-b", &token_b, Some(upstream.url())),
    )
    .await
    .unwrap();
    c.sched.wait_for_peers(2).await.unwrap();

    for node in ["node-a", "node-b"] {
        let dir = c.node_tls(node);
        let cert = std::fs::read(dir.join("tls.crt")).unwrap();
        assert_eq!(common_name(&cert), node);
        assert!(
            issuance::current(&dir, node).is_some(),
            "{node}: key and certificate match"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("tls.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{node}: tls.key is private");
        assert_eq!(
            std::fs::read(dir.join("ca.crt")).unwrap(),
            std::fs::read(c.tls.join("ca.crt")).unwrap()
        );
    }
    let (_, peers) = {
        let r = reqwest::get(format!("{}/api/v1/peers", c.sched.http_url()))
            .await
            .unwrap();
        ((), r.json::<serde_json::Value>().await.unwrap())
    };
    let mut ids: Vec<String> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["node-a", "node-b"],
        "peer ids are the node names: {peers}"
    );

    // a pulls from upstream, b from a, over QUIC with the issued certificates.
    assert_eq!(
        pull_blob(&a.mirror_url(), REPO, &digest).await.unwrap().0,
        digest
    );
    assert_eq!(
        pull_blob(&b.mirror_url(), REPO, &digest).await.unwrap().0,
        digest
    );
    let copies = upstream.bytes() as f64 / (8 << 20) as f64;
    assert!(copies < 1.5, "upstream served {copies:.2} copies");

    assert_eq!(
        c.metric("shoal_scheduler_certificates_issued_total").await,
        2.0
    );
    assert!(
        c.kube
            .review_audiences()
            .iter()
            .all(|a| a == &vec![AUDIENCE.to_owned()]),
        "{:?}",
        c.kube.review_audiences()
    );
    let log = c.sched.log();
    for t in [&token_a, &token_b] {
        assert!(!log.contains(t.as_str()), "the scheduler logged a token");
        assert!(!a.log().contains(t.as_str()) && !b.log().contains(t.as_str()));
    }
    assert!(
        !log.contains("scheduler-sa-token"),
        "the scheduler logged its own token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_name_why_and_issue_nothing() {
    let c = Cluster::start("24h").await;
    let mut issuer = c.issuer().await;
    let good = c.peer_pod("node-a", Some("node-a"));

    expect_refused(
        "an unknown token",
        ask(&mut issuer, "node-a", csr(Some("node-a")).0, "forged").await,
        Code::Unauthenticated,
        "not authenticated",
    );
    c.kube.add_token(
        "other-audience",
        BoundToken {
            username: format!("system:serviceaccount:{NS}:{SA}"),
            audiences: vec!["https://kubernetes.default.svc".into()],
            pod: Some(("shoal-peer-node-a".into(), "uid-shoal-peer-node-a".into())),
            node: Some("node-a".into()),
        },
    );
    expect_refused(
        "a token for another audience",
        ask(
            &mut issuer,
            "node-a",
            csr(Some("node-a")).0,
            "other-audience",
        )
        .await,
        Code::Unauthenticated,
        AUDIENCE,
    );
    c.kube.add_token(
        "builder",
        BoundToken {
            username: "system:serviceaccount:ci:builder".into(),
            audiences: vec![AUDIENCE.into()],
            pod: Some(("builder-0".into(), "uid-builder-0".into())),
            node: Some("node-a".into()),
        },
    );
    expect_refused(
        "another service account's token",
        ask(&mut issuer, "node-a", csr(Some("node-a")).0, "builder").await,
        Code::PermissionDenied,
        "system:serviceaccount:ci:builder",
    );
    // The token says node-b; the request asks for node-a.
    let token_b = c.peer_pod("node-b", Some("node-b"));
    expect_refused(
        "a token of node-b asking for node-a",
        ask(&mut issuer, "node-a", csr(Some("node-a")).0, &token_b).await,
        Code::PermissionDenied,
        "node-b",
    );
    // A pod of the peer ServiceAccount, not of the DaemonSet.
    c.kube.add_pod(FakePod {
        namespace: NS.into(),
        name: "debug-pod".into(),
        uid: "uid-debug".into(),
        node: "node-c".into(),
        owner: Some(("Deployment".into(), "debugger".into())),
    });
    c.kube.add_token(
        "debug",
        BoundToken {
            username: format!("system:serviceaccount:{NS}:{SA}"),
            audiences: vec![AUDIENCE.into()],
            pod: Some(("debug-pod".into(), "uid-debug".into())),
            node: Some("node-c".into()),
        },
    );
    expect_refused(
        "a pod not of the DaemonSet",
        ask(&mut issuer, "node-c", csr(Some("node-c")).0, "debug").await,
        Code::PermissionDenied,
        "not owned by DaemonSet",
    );
    // Before Kubernetes 1.30 the token names no node: the pod's spec.nodeName decides.
    let token_d = c.peer_pod("node-d", None);
    expect_refused(
        "a pod on node-d asking for node-e",
        ask(&mut issuer, "node-e", csr(Some("node-e")).0, &token_d).await,
        Code::PermissionDenied,
        "node-d",
    );
    // Bounded and checked input.
    expect_refused(
        "a CSR of 17 KiB",
        ask(&mut issuer, "node-a", vec![0; 17 << 10], &good).await,
        Code::InvalidArgument,
        "16384",
    );
    expect_refused(
        "a token of 17 KiB",
        ask(
            &mut issuer,
            "node-a",
            csr(Some("node-a")).0,
            &"x".repeat(17 << 10),
        )
        .await,
        Code::InvalidArgument,
        "16384",
    );
    expect_refused(
        "a node name that cannot be a peer id",
        ask(&mut issuer, "node a/..", csr(None).0, &good).await,
        Code::InvalidArgument,
        "peer id",
    );
    expect_refused(
        "a CSR naming another node",
        ask(&mut issuer, "node-a", csr(Some("node-z")).0, &good).await,
        Code::InvalidArgument,
        "node-z",
    );
    expect_refused(
        "garbage for a CSR",
        ask(&mut issuer, "node-a", b"not a csr".to_vec(), &good).await,
        Code::InvalidArgument,
        "certificate signing request",
    );
    // A message over the issuer's 64 KiB bound is refused by the transport.
    let big = ask(&mut issuer, "node-a", vec![0; 100 << 10], &good).await;
    assert_eq!(big.unwrap_err().code(), Code::OutOfRange);

    assert_eq!(
        c.metric("shoal_scheduler_certificates_issued_total").await,
        0.0
    );
    for (reason, n) in [
        ("issuer_unauthenticated", 2.0),
        ("issuer_service_account", 1.0),
        ("issuer_node_mismatch", 2.0),
        ("issuer_not_daemonset", 1.0),
        ("issuer_input", 5.0),
    ] {
        let key = format!("shoal_scheduler_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(c.metric(&key).await, n, "{key}");
    }
    // The stand-in was asked with the scheduler's own token every time.
    assert!(
        c.kube.requests().iter().all(|r| !r.ends_with(" 401")),
        "{:?}",
        c.kube.requests()
    );

    // And the honest request goes through, with the CSR's key.
    let (der, key) = csr(Some("node-a"));
    let ok = ask(&mut issuer, "node-a", der, &good).await.unwrap();
    assert_eq!(common_name(ok.certificate_chain_pem.as_bytes()), "node-a");
    let out = c.dir.path().join("direct");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("tls.crt"), &ok.certificate_chain_pem).unwrap();
    std::fs::write(out.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(out.join("ca.crt"), &ok.ca_pem).unwrap();
    assert!(issuance::current(&out, "node-a").is_some());
    assert_eq!(
        c.metric("shoal_scheduler_certificates_issued_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_for_another_node_cannot_join_as_that_node() {
    let c = Cluster::start("24h").await;
    // A peer on node-b (so says its token) that claims to be node-a.
    let token_b = c.peer_pod("node-b", Some("node-b"));
    let opts = c.peer_options("node-a", &token_b, None);
    let data = c.dir.path().join("liar");
    std::fs::create_dir_all(&data).unwrap();
    let args = opts
        .run_args(
            "node-a",
            &format!("127.0.0.1:{}", shoal_tests::free_udp_port().unwrap()),
            &format!("127.0.0.1:{}", free_port().unwrap()),
            &format!("127.0.0.1:{}", free_port().unwrap()),
            &data.join("data"),
            &data.join("certs.d"),
        )
        .unwrap();
    let log = c.dir.path().join("liar.log");
    let mut child = Command::new(workspace_bin("shoal-peer"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(c.dir.path().join("liar.err")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the peer did not give up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = shoal_tests::read_log(&log) + &shoal_tests::read_log(&c.dir.path().join("liar.err"));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("PermissionDenied"),
        "the peer says it was refused: {out}"
    );
    assert!(
        out.contains("node-b"),
        "the refusal names the token's node: {out}"
    );
    assert!(
        !c.node_tls("node-a").join("tls.crt").exists(),
        "no certificate was written"
    );
    assert_eq!(c.sched.peer_count().await, Some(0));
    assert_eq!(
        c.metric("shoal_scheduler_refused_total{reason=\"issuer_node_mismatch\"}")
            .await,
        1.0
    );

    // node-b's own certificate, issued honestly, cannot speak for node-a.
    let mut issuer = c.issuer().await;
    let (der, key) = csr(Some("node-b"));
    let ok = ask(&mut issuer, "node-b", der, &token_b).await.unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ok.ca_pem.clone()))
        .identity(Identity::from_pem(
            ok.certificate_chain_pem.clone(),
            key.serialize_pem(),
        ))
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(c.sched.grpc_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sched = SchedulerClient::new(channel);
    let join = |id: &str| v1::JoinRequest {
        peer: Some(v1::PeerInfo {
            peer_id: id.into(),
            hostname: id.into(),
            quic_addr: "127.0.0.1:9".into(),
            piece_rule: shoal_proto::piece::PIECE_RULE,
            ..Default::default()
        }),
        tasks: Vec::new(),
    };
    let refused = sched.join(join("node-a")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("node-b"), "{refused:?}");
    sched.join(join("node-b")).await.unwrap();
}

/// The validity of `dir`'s certificate (read again while a renewal is between its
/// key's rename and its certificate's).
fn validity(dir: &Path, node: &str) -> issuance::Validity {
    for _ in 0..100 {
        if let Some(v) = issuance::current(dir, node) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{}: no usable certificate", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_without_dropping_the_session() {
    let c = Cluster::start("24s").await;
    let (data, digest) = blob(4 << 20, 22);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    let token_a = c.peer_pod("node-a", Some("node-a"));
    let token_b = c.peer_pod("node-b", Some("node-b"));
    let a = PeerProcess::start(
        c.dir.path(),
        "node-a",
        &c.peer_options("node-a", &token_a, Some(upstream.url())),
    )
    .await
    .unwrap();
    let b = PeerProcess::start(
        c.dir.path(),
        "node-b",
        &c.peer_options("node-b", &token_b, Some(upstream.url())),
    )
    .await
    .unwrap();
    c.sched.wait_for_peers(2).await.unwrap();
    let first_a = validity(&c.node_tls("node-a"), "node-a");
    let first_b = validity(&c.node_tls("node-b"), "node-b");
    let joins = c.metric("shoal_scheduler_peer_joins_total").await;
    // Sessions are counted when they open (OK) and when one ends with an error.
    let sessions = |m: &std::collections::HashMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.contains("method=\"Session\""))
            .map(|(_, v)| v)
            .sum()
    };
    let opened = sessions(&c.sched.metrics().await.unwrap());
    assert_eq!(opened, 2.0);

    // Wait past the first certificates' expiry; each must have been renewed before it.
    let deadline = first_a.not_after.max(first_b.not_after) + Duration::from_secs(2);
    while SystemTime::now() < deadline {
        for (node, first) in [("node-a", first_a), ("node-b", first_b)] {
            let now = validity(&c.node_tls(node), node);
            if SystemTime::now() < first.not_after {
                continue;
            }
            assert!(
                now.not_after > first.not_after,
                "{node}: the certificate expired without a renewal"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (node, first) in [("node-a", first_a), ("node-b", first_b)] {
        let now = validity(&c.node_tls(node), node);
        assert!(now.not_after > first.not_after, "{node} was not renewed");
    }
    assert!(c.metric("shoal_scheduler_certificates_issued_total").await >= 4.0);

    // Both sessions stayed open: no re-join, no session opened again or ended with an
    // error, both peers listed with their session open.
    assert_eq!(c.metric("shoal_scheduler_peer_joins_total").await, joins);
    let m = c.sched.metrics().await.unwrap();
    assert_eq!(
        sessions(&m),
        opened,
        "a session was re-opened or ended: {m:?}"
    );
    let peers: serde_json::Value = reqwest::get(format!("{}/api/v1/peers", c.sched.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let open = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["session_open"] == true)
        .count();
    assert_eq!(open, 2, "{peers}");
    assert!(a.log().contains("node certificate issued"));

    // The QUIC side uses the renewed certificates: b pulls from a after the first
    // certificates expired, and upstream served one copy.
    assert_eq!(
        pull_blob(&a.mirror_url(), REPO, &digest).await.unwrap().0,
        digest
    );
    assert_eq!(
        pull_blob(&b.mirror_url(), REPO, &digest).await.unwrap().0,
        digest
    );
    let copies = upstream.bytes() as f64 / (4 << 20) as f64;
    assert!(copies < 1.5, "upstream served {copies:.2} copies");
    assert_eq!(c.metric("shoal_scheduler_peer_joins_total").await, joins);
}
