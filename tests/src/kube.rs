//! A stand-in for kube-apiserver, for the scheduler's certificate issuer.
//!
//! **This is the one stand-in Shoal's tests allow** (issue 13): no Kubernetes API server
//! can run on these machines, and the issuer needs one to review tokens. Everything else
//! in the issuer's tests is real: the `shoal-scheduler` and `shoal-peer` processes, the
//! CSR, the signing, the renewal, mutual TLS and the identity binding.
//!
//! It speaks the real wire format over HTTPS (HTTP/1.1, a certificate for 127.0.0.1 from
//! its own CA): `POST /apis/authentication.k8s.io/v1/tokenreviews` answers a
//! `TokenReview` as kube-apiserver 1.30 does for bound ServiceAccount tokens (status 201,
//! the spec echoed, `status.authenticated`, `status.audiences` = the audiences asked that
//! the token is for, `status.user.username`, `groups` and `extra` with the pod's name and
//! UID and, unless told otherwise, the node's name, as Kubernetes < 1.30 omits it), and
//! `GET /api/v1/namespaces/{ns}/pods/{name}` answers a `Pod` (`metadata.uid`,
//! `ownerReferences`, `spec.nodeName`) or a `Status` 404. Every request must carry the
//! caller's bearer token (the scheduler's own, [`FakeKubeApi::token_file`]); others get a
//! `Status` 401, as the real server does.
//!
//! Tokens are plain strings registered with [`FakeKubeApi::add_token`] (no JWTs: what the
//! issuer reads is the review, not the token). Requests are recorded without tokens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::tls::TestPki;

/// What a registered token is, as the API server knows it.
#[derive(Debug, Clone)]
pub struct BoundToken {
    /// e.g. `system:serviceaccount:shoal:shoal-peer`.
    pub username: String,
    /// The audiences it was issued for.
    pub audiences: Vec<String>,
    /// The pod it is bound to: name and UID (`None`: a legacy, unbound token).
    pub pod: Option<(String, String)>,
    /// The node in `extra` (`None`: as Kubernetes < 1.30, which does not say).
    pub node: Option<String>,
}

/// A pod the stand-in knows.
#[derive(Debug, Clone)]
pub struct FakePod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// `spec.nodeName`.
    pub node: String,
    /// The controlling owner, `(kind, name)` (e.g. `("DaemonSet", "shoal-peer")`).
    pub owner: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashMap<String, BoundToken>,
    pods: HashMap<(String, String), FakePod>,
    requests: Vec<String>,
    review_audiences: Vec<Vec<String>>,
}

/// A running stand-in; serves until the runtime that started it ends.
#[derive(Debug, Clone)]
pub struct FakeKubeApi {
    addr: SocketAddr,
    ca_file: PathBuf,
    token_file: PathBuf,
    state: Arc<Mutex<State>>,
}

/// The bearer token the stand-in expects from its caller.
const CALLER_TOKEN: &str = "scheduler-sa-token-0123456789";

impl FakeKubeApi {
    /// Starts one on 127.0.0.1 with its certificates and the caller's token file in
    /// `dir`. Must be called within a tokio runtime.
    pub async fn start(dir: &Path) -> anyhow::Result<FakeKubeApi> {
        let pki = TestPki::generate(&dir.join("kube-pki"))?;
        let token_file = dir.join("kube-caller-token");
        std::fs::write(&token_file, format!("{CALLER_TOKEN}\n"))?;
        let certs =
            CertificateDer::pem_file_iter(&pki.server_cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&pki.server_key)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, &s).await;
                    }
                });
            }
        });
        Ok(FakeKubeApi {
            addr,
            ca_file: pki.ca_cert,
            token_file,
            state,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA of its serving certificate (`--kube-ca-file`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The caller's own token (`--kube-token-file`).
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// Registers `token`.
    pub fn add_token(&self, token: &str, t: BoundToken) {
        self.lock().tokens.insert(token.to_owned(), t);
    }

    /// Registers a pod.
    pub fn add_pod(&self, pod: FakePod) {
        self.lock()
            .pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
    }

    /// Every request so far, `METHOD PATH STATUS`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The `spec.audiences` of every TokenReview so far.
    pub fn review_audiences(&self) -> Vec<Vec<String>> {
        self.lock().review_audiences.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake kube-apiserver lock")
    }
}

/// Answers the requests on one connection (HTTP/1.1, one request, then close).
async fn serve<S>(stream: S, state: &Mutex<State>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let (mut length, mut bearer) = (0usize, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Ok(());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0).min(1 << 20);
            } else if name.eq_ignore_ascii_case("authorization") {
                bearer = value.strip_prefix("Bearer ").map(str::to_owned);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    let (code, answer) = if bearer.as_deref() != Some(CALLER_TOKEN) {
        status(401, "Unauthorized", "Unauthorized", None)
    } else {
        route(&method, &path, &body, state)
    };
    state
        .lock()
        .expect("fake kube-apiserver lock")
        .requests
        .push(format!("{method} {path} {code}"));
    let text = answer.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    let mut stream = reader.into_inner();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

/// A `Status` object, as the API server answers errors.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> (u16, Value) {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    (code, v)
}

fn route(method: &str, path: &str, body: &[u8], state: &Mutex<State>) -> (u16, Value) {
    if method == "POST" && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return token_review(body, state);
    }
    let pod = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|rest| rest.split_once("/pods/"));
    if let (Some((ns, name)), "GET") = (pod, method) {
        let state = state.lock().expect("fake kube-apiserver lock");
        return match state.pods.get(&(ns.to_owned(), name.to_owned())) {
            Some(p) => (200, pod_json(p)),
            None => status(
                404,
                "NotFound",
                &format!("pods \"{name}\" not found"),
                Some(json!({"name": name, "kind": "pods"})),
            ),
        };
    }
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
        None,
    )
}

fn token_review(body: &[u8], state: &Mutex<State>) -> (u16, Value) {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON", None);
    };
    if review["apiVersion"] != "authentication.k8s.io/v1" || review["kind"] != "TokenReview" {
        return status(
            400,
            "BadRequest",
            "not an authentication.k8s.io/v1 TokenReview",
            None,
        );
    }
    let Some(token) = review["spec"]["token"].as_str() else {
        return status(400, "BadRequest", "spec.token: Required value", None);
    };
    let asked: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut st = state.lock().expect("fake kube-apiserver lock");
    st.review_audiences.push(asked.clone());
    // Without audiences, the API server's own.
    let target = if asked.is_empty() {
        vec!["https://kubernetes.default.svc.cluster.local".to_owned()]
    } else {
        asked.clone()
    };
    let status_json = match st.tokens.get(token) {
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
        Some(t) => {
            let common: Vec<String> = target
                .iter()
                .filter(|a| t.audiences.contains(a))
                .cloned()
                .collect();
            if common.is_empty() {
                json!({"user": {}, "error": format!(
                    "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                    t.audiences, target
                )})
            } else {
                let ns = t.username.split(':').nth(2).unwrap_or_default();
                let mut extra =
                    json!({"authentication.kubernetes.io/credential-id": ["JTI=4c1e2f7a"]});
                if let Some((name, uid)) = &t.pod {
                    extra["authentication.kubernetes.io/pod-name"] = json!([name]);
                    extra["authentication.kubernetes.io/pod-uid"] = json!([uid]);
                }
                if let Some(node) = &t.node {
                    extra["authentication.kubernetes.io/node-name"] = json!([node]);
                    extra["authentication.kubernetes.io/node-uid"] = json!(["7d1c0a55"]);
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": t.username,
                        "uid": "5b8f0e3c",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        "extra": extra,
                    },
                    "audiences": common,
                })
            }
        }
    };
    (
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status_json,
        }),
    )
}

fn pod_json(p: &FakePod) -> Value {
    let owners = match &p.owner {
        Some((kind, name)) => json!([{
            "apiVersion": "apps/v1", "kind": kind, "name": name,
            "uid": "0f0e0d0c", "controller": true, "blockOwnerDeletion": true,
        }]),
        None => json!([]),
    };
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": p.name, "namespace": p.namespace, "uid": p.uid,
            "ownerReferences": owners,
        },
        "spec": {"nodeName": p.node, "serviceAccountName": "shoal-peer", "containers": []},
        "status": {"phase": "Running"},
    })
}
