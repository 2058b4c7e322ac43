//! Who is asking for a certificate, as the Kubernetes API tells it.
//!
//! - [`KubeApi`]: the thin HTTPS client. `POST /apis/authentication.k8s.io/v1/tokenreviews`
//!   with the caller's token and the issuer's audience, and `GET` of the token's pod, each
//!   authenticated with the scheduler's own ServiceAccount token (re-read at every call, as
//!   kubelet rotates it) and verified against the in-cluster CA file.
//! - [`check_review`] and [`check_pod`]: the decisions, pure functions over what the API
//!   answered. A certificate for node N is signed only when the token is authenticated for
//!   the issuer's audience, belongs to the peers' ServiceAccount, is bound to a pod, that
//!   pod is owned by the peer DaemonSet and runs on N, and (Kubernetes ≥ 1.30) the node
//!   the token itself names is N.
//!
//! Never logged, never in an error: the caller's token and the scheduler's.
//!
//! Non-goals: caching reviews (one review per node per renewal is little), watching pods.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::IssueError;

/// `user.extra` key of the pod a bound token belongs to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `user.extra` key of that pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// `user.extra` key of the node the pod runs on (Kubernetes ≥ 1.30).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// Largest API response read (a TokenReview or a Pod).
const MAX_RESPONSE: usize = 1 << 20;

/// What a certificate's requester must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewPolicy {
    /// The audience the peers' projected tokens are bound to.
    pub audience: String,
    /// Namespace of the peers' ServiceAccount and pods.
    pub namespace: String,
    /// The peers' ServiceAccount.
    pub service_account: String,
    /// The peer DaemonSet, which must own the token's pod.
    pub daemonset: String,
}

impl ReviewPolicy {
    /// The username a token of the peers' ServiceAccount authenticates as.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// The `status` of a TokenReview (the parts read here).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReviewStatus {
    /// Whether the token is valid (for one of the audiences asked).
    #[serde(default)]
    pub authenticated: bool,
    /// Who the token is.
    #[serde(default)]
    pub user: UserInfo,
    /// The audiences the token was accepted for (a subset of those asked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Why it is not authenticated.
    #[serde(default)]
    pub error: String,
}

/// `status.user` of a TokenReview.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    /// `system:serviceaccount:<namespace>:<name>` for a ServiceAccount token.
    #[serde(default)]
    pub username: String,
    /// Pod name, pod UID and node name of a bound token.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Debug, Deserialize)]
struct TokenReview {
    #[serde(default)]
    status: ReviewStatus,
}

/// A Pod (the parts read here).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    /// Name, UID, owners.
    #[serde(default)]
    pub metadata: PodMeta,
    /// Where it runs.
    #[serde(default)]
    pub spec: PodSpec,
}

/// A Pod's metadata.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodMeta {
    /// The pod's name.
    #[serde(default)]
    pub name: String,
    /// The pod's UID.
    #[serde(default)]
    pub uid: String,
    /// Its owners; a DaemonSet's pod has the DaemonSet as its controller.
    #[serde(default, rename = "ownerReferences")]
    pub owner_references: Vec<OwnerReference>,
}

/// One owner of a Pod.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OwnerReference {
    /// e.g. `apps/v1`.
    #[serde(default, rename = "apiVersion")]
    pub api_version: String,
    /// e.g. `DaemonSet`.
    #[serde(default)]
    pub kind: String,
    /// The owner's name.
    #[serde(default)]
    pub name: String,
    /// Whether this owner is the managing controller.
    #[serde(default)]
    pub controller: Option<bool>,
}

/// A Pod's spec.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodSpec {
    /// The node it was scheduled to.
    #[serde(default, rename = "nodeName")]
    pub node_name: String,
}

/// The pod a reviewed token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    /// Its name.
    pub name: String,
    /// Its UID, when the token names it.
    pub uid: Option<String>,
}

/// Checks what the TokenReview said against `policy` and the node the request names:
/// authenticated for the audience, the peers' ServiceAccount, bound to a pod, and (when
/// the token names its node) that node. Returns the pod to look up.
pub fn check_review(
    status: &ReviewStatus,
    policy: &ReviewPolicy,
    node: &str,
) -> Result<BoundPod, IssueError> {
    if !status.authenticated {
        // The API server's own words (they never contain the token).
        let why = if status.error.is_empty() {
            "the token is not authenticated".to_owned()
        } else {
            format!("the token is not authenticated: {}", status.error)
        };
        return Err(IssueError::Unauthenticated(why));
    }
    if !status.audiences.iter().any(|a| a == &policy.audience) {
        return Err(IssueError::Audience {
            want: policy.audience.clone(),
            got: status.audiences.clone(),
        });
    }
    let want = policy.username();
    if status.user.username != want {
        return Err(IssueError::ServiceAccount {
            want,
            got: status.user.username.clone(),
        });
    }
    if let Some(token_node) = status.user.extra(EXTRA_NODE_NAME)
        && token_node != node
    {
        return Err(IssueError::NodeMismatch {
            asked: node.to_owned(),
            actual: token_node.to_owned(),
            by: "the token",
        });
    }
    let Some(name) = status.user.extra(EXTRA_POD_NAME) else {
        return Err(IssueError::NotBound);
    };
    Ok(BoundPod {
        name: name.to_owned(),
        uid: status.user.extra(EXTRA_POD_UID).map(str::to_owned),
    })
}

/// Checks the token's pod: the same pod (UID), owned by the peer DaemonSet, scheduled to
/// `node`.
pub fn check_pod(
    pod: &Pod,
    bound: &BoundPod,
    policy: &ReviewPolicy,
    node: &str,
) -> Result<(), IssueError> {
    if let Some(uid) = &bound.uid
        && &pod.metadata.uid != uid
    {
        return Err(IssueError::PodGone(bound.name.clone()));
    }
    let owned = pod.metadata.owner_references.iter().any(|o| {
        o.kind == "DaemonSet"
            && o.api_version.starts_with("apps/")
            && o.name == policy.daemonset
            && o.controller != Some(false)
    });
    if !owned {
        let owners = pod
            .metadata
            .owner_references
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        return Err(IssueError::NotDaemonSet {
            pod: bound.name.clone(),
            want: policy.daemonset.clone(),
            owners,
        });
    }
    if pod.spec.node_name != node {
        return Err(IssueError::NodeMismatch {
            asked: node.to_owned(),
            actual: pod.spec.node_name.clone(),
            by: "the token's pod",
        });
    }
    Ok(())
}

/// Where the Kubernetes API is and how the scheduler authenticates to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeApiConfig {
    /// `https://host:port` of the API server (default: from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`).
    pub url: String,
    /// The scheduler's own ServiceAccount token, re-read at every call (default:
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`).
    pub token_file: PathBuf,
    /// The CA the API server's certificate chains to, read at every call (default:
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    pub ca_file: PathBuf,
    /// Per request (default 10 s).
    pub timeout: Duration,
}

/// The thin HTTPS client over [`KubeApiConfig`].
#[derive(Debug, Clone)]
pub struct KubeApi {
    config: KubeApiConfig,
}

impl KubeApi {
    /// A client for `config`; nothing is read or dialled yet.
    pub fn new(config: KubeApiConfig) -> KubeApi {
        KubeApi { config }
    }

    /// Reviews `token` for `audience`.
    pub async fn review(&self, token: &str, audience: &str) -> Result<ReviewStatus, IssueError> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": [audience] },
        });
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.config.url.trim_end_matches('/')
        );
        let request = self.client().await?.post(&url).json(&body);
        let (status, bytes) = self.send(request, "TokenReview").await?;
        if !status.is_success() {
            return Err(api_error("TokenReview", status, &bytes));
        }
        let review: TokenReview = serde_json::from_slice(&bytes)
            .map_err(|e| IssueError::Api(format!("TokenReview: unreadable answer: {e}")))?;
        Ok(review.status)
    }

    /// The pod `name` in `namespace`, `None` when it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, IssueError> {
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/pods/{name}",
            self.config.url.trim_end_matches('/')
        );
        let request = self.client().await?.get(&url);
        let (status, bytes) = self.send(request, "GET pod").await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(api_error("GET pod", status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IssueError::Api(format!("GET pod: unreadable answer: {e}")))
    }

    /// A client trusting the CA file, with the scheduler's bearer token as a default
    /// header (marked sensitive). Files are read on the blocking pool.
    async fn client(&self) -> Result<reqwest::Client, IssueError> {
        let (ca_file, token_file) = (self.config.ca_file.clone(), self.config.token_file.clone());
        let (ca, token) = tokio::task::spawn_blocking(move || {
            let read = |p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| IssueError::Api(format!("cannot read {}: {e}", p.display())))
            };
            Ok::<_, IssueError>((read(&ca_file)?, read(&token_file)?))
        })
        .await
        .map_err(|e| IssueError::Api(e.to_string()))??;
        let ca = reqwest::Certificate::from_pem_bundle(&ca)
            .map_err(|e| IssueError::Api(format!("{}: {e}", self.config.ca_file.display())))?;
        let token = String::from_utf8(token).unwrap_or_default();
        let mut bearer =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(
                |_| {
                    IssueError::Api(format!(
                        "{} does not hold a token",
                        self.config.token_file.display()
                    ))
                },
            )?;
        bearer.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .timeout(self.config.timeout)
            .default_headers(headers);
        for c in ca {
            builder = builder.add_root_certificate(c);
        }
        builder
            .build()
            .map_err(|e| IssueError::Api(format!("building the Kubernetes API client: {e}")))
    }

    /// Sends `request`; the status and at most [`MAX_RESPONSE`] bytes of body.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), IssueError> {
        let unavailable = |e: reqwest::Error| {
            // reqwest's message names the URL, never a header.
            IssueError::Api(format!("{what}: {}", e.without_url()))
        };
        let mut response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(IssueError::Api(format!(
                    "{what}: the answer is larger than {MAX_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// An error answer of the API server: its status and its `Status.message`.
fn api_error(what: &str, status: reqwest::StatusCode, body: &[u8]) -> IssueError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    IssueError::Api(format!(
        "{what}: the Kubernetes API answered {status} {message}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReviewPolicy {
        ReviewPolicy {
            audience: "shoal-issuer".into(),
            namespace: "shoal".into(),
            service_account: "shoal-peer".into(),
            daemonset: "shoal-peer".into(),
        }
    }

    fn review(json: serde_json::Value) -> ReviewStatus {
        serde_json::from_value::<TokenReview>(json).unwrap().status
    }

    /// A TokenReview answer as kube-apiserver 1.30 writes it for a bound token.
    fn bound(node: Option<&str>, username: &str, audiences: &[&str]) -> ReviewStatus {
        let mut extra = serde_json::json!({
            "authentication.kubernetes.io/credential-id": ["JTI=0b6f"],
            "authentication.kubernetes.io/pod-name": ["shoal-peer-x7k2p"],
            "authentication.kubernetes.io/pod-uid": ["1a2b"],
        });
        if let Some(n) = node {
            extra[EXTRA_NODE_NAME] = serde_json::json!([n]);
        }
        review(serde_json::json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": "t", "audiences": ["shoal-issuer"]},
            "status": {
                "authenticated": true,
                "user": {"username": username, "uid": "u", "groups": ["system:serviceaccounts"], "extra": extra},
                "audiences": audiences,
            }
        }))
    }

    const PEER: &str = "system:serviceaccount:shoal:shoal-peer";

    #[test]
    fn a_bound_peer_token_names_its_pod() {
        let pod = check_review(
            &bound(Some("node-a"), PEER, &["shoal-issuer"]),
            &policy(),
            "node-a",
        )
        .unwrap();
        assert_eq!(pod.name, "shoal-peer-x7k2p");
        assert_eq!(pod.uid.as_deref(), Some("1a2b"));
        // Before 1.30 the token names no node: the pod's nodeName decides.
        check_review(&bound(None, PEER, &["shoal-issuer"]), &policy(), "node-a").unwrap();
    }

    #[test]
    fn refusals_name_why() {
        let unauth = review(serde_json::json!({
            "status": {"user": {}, "error": "[invalid bearer token, token has been invalidated]"}
        }));
        let e = check_review(&unauth, &policy(), "node-a").unwrap_err();
        assert_eq!(e.reason(), "issuer_unauthenticated");
        assert!(e.to_string().contains("invalidated"), "{e}");

        let e = check_review(
            &bound(Some("node-a"), PEER, &["other"]),
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_audience");
        assert!(e.to_string().contains("shoal-issuer"), "{e}");

        let other = "system:serviceaccount:default:builder";
        let e = check_review(
            &bound(Some("node-a"), other, &["shoal-issuer"]),
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_service_account");
        assert!(e.to_string().contains(other), "{e}");

        let e = check_review(
            &bound(Some("node-b"), PEER, &["shoal-issuer"]),
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_node_mismatch");
        assert!(e.to_string().contains("node-b"), "{e}");

        let mut unbound = bound(Some("node-a"), PEER, &["shoal-issuer"]);
        unbound.user.extra.remove(EXTRA_POD_NAME);
        let e = check_review(&unbound, &policy(), "node-a").unwrap_err();
        assert_eq!(e.reason(), "issuer_not_bound");
    }

    fn pod(owner_kind: &str, owner: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "shoal-peer-x7k2p", "namespace": "shoal", "uid": "1a2b",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner,
                    "uid": "9", "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {"nodeName": node, "serviceAccountName": "shoal-peer"},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_must_be_the_daemonsets_and_on_the_node() {
        let b = BoundPod {
            name: "shoal-peer-x7k2p".into(),
            uid: Some("1a2b".into()),
        };
        check_pod(
            &pod("DaemonSet", "shoal-peer", "node-a"),
            &b,
            &policy(),
            "node-a",
        )
        .unwrap();
        let e = check_pod(
            &pod("DaemonSet", "shoal-peer", "node-b"),
            &b,
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_node_mismatch");
        let e = check_pod(
            &pod("DaemonSet", "impostor", "node-a"),
            &b,
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_not_daemonset");
        assert!(e.to_string().contains("DaemonSet/impostor"), "{e}");
        let e = check_pod(
            &pod("ReplicaSet", "shoal-peer", "node-a"),
            &b,
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_not_daemonset");
        let other_uid = BoundPod {
            uid: Some("ffff".into()),
            ..b
        };
        let e = check_pod(
            &pod("DaemonSet", "shoal-peer", "node-a"),
            &other_uid,
            &policy(),
            "node-a",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "issuer_pod_gone");
    }
}
