//! The operator API over a real core state (three peers, two tasks), driven
//! in-process with `oneshot`, then served on `127.0.0.1:0` and asked by the
//! real `shoalctl` binary.
//!
//! Not here: the gRPC side (it only fills the state these tests build by
//! calling the core directly).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use shoal_proto::Digest;
use shoal_scheduler::core::{CoreConfig, HeldTask, PeerId, PeerInfo, PieceDone, Scheduler};
use shoal_scheduler::http::{router, serve};
use shoal_scheduler::metrics::Metrics;
use shoal_scheduler::state::SchedulerState;
use tower::ServiceExt;

/// 3 pieces of 4 MiB, the last one short.
const SIZE: u64 = (8 << 20) + 12345;

fn id(p: u8) -> PeerId {
    PeerId::parse(&format!("peer-{p}")).unwrap()
}

fn info(p: u8) -> PeerInfo {
    PeerInfo {
        id: id(p),
        hostname: format!("node-{p}"),
        addr: format!("10.0.0.{}:7651", p + 1).parse().unwrap(),
        zone: "zone-a".into(),
        rack: String::new(),
        upload_slots: 0,
    }
}

/// `held`: peer-0 holds it complete since it joined.
fn held() -> Digest {
    Digest::from_sha256([0x11; 32])
}

/// `fresh`: peer-1 fetches it from upstream (one piece so far), peer-2
/// downloads it from peer-1.
fn fresh() -> Digest {
    Digest::from_sha256([0x22; 32])
}

/// A scheduler with three peers and two tasks in different states.
fn swarm() -> (Arc<SchedulerState>, Arc<Metrics>) {
    let state = SchedulerState::new(Scheduler::new(CoreConfig::default()));
    state.with_core(|core, now| {
        let task = HeldTask {
            digest: held(),
            size: SIZE,
            piece_hashes: vec![],
        };
        core.join(now, info(0), vec![task]).unwrap();
        core.join(now, info(1), vec![]).unwrap();
        core.join(now, info(2), vec![]).unwrap();
        core.open_plan(now, &id(1), fresh(), 0).unwrap();
        assert_eq!(
            core.back_to_source_of(&fresh()),
            vec![id(1)],
            "first requester fetches upstream"
        );
        core.task_started(now, &id(1), fresh(), SIZE).unwrap();
        let piece = PieceDone {
            index: 0,
            hash: Some([7; 32]),
        };
        core.report_pieces(now, &id(1), fresh(), &[piece]).unwrap();
        core.open_plan(now, &id(2), fresh(), SIZE).unwrap();
        core.flush();
    });
    (state, Arc::new(Metrics::new()))
}

async fn call(app: &Router, method: Method, uri: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, content_type, body.to_vec())
}

async fn get_json(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, content_type, body) = call(app, Method::GET, uri).await;
    assert_eq!(content_type.as_deref(), Some("application/json"), "{uri}");
    (
        status,
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}")),
    )
}

fn error_code(body: &Value) -> &str {
    let message = body["error"]["message"].as_str().expect("error.message");
    assert!(!message.is_empty());
    body["error"]["code"].as_str().expect("error.code")
}

#[tokio::test]
async fn lists_peers_and_tasks_in_objects() {
    let (state, metrics) = swarm();
    let app = router(state, metrics);

    let (status, body) = get_json(&app, "/api/v1/peers").await;
    assert_eq!(status, StatusCode::OK);
    let peers = body["peers"].as_array().expect("peers array");
    let ids: Vec<&str> = peers.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["peer-0", "peer-1", "peer-2"]);
    assert_eq!(peers[0]["hostname"], "node-0");
    assert_eq!(peers[0]["addr"], "10.0.0.1:7651");
    assert_eq!(peers[0]["tasks"], 1);
    assert_eq!(peers[2]["tasks"], 1);

    let (status, body) = get_json(&app, "/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    let tasks = body["tasks"].as_array().expect("tasks array");
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["digest"], held().to_string());
    assert_eq!(tasks[0]["size"], SIZE);
    assert_eq!(tasks[0]["pieces"], 3);
    assert_eq!(tasks[0]["complete_holders"], 1);
    assert_eq!(tasks[1]["digest"], fresh().to_string());
    assert_eq!(tasks[1]["downloading"], 2);
    assert_eq!(tasks[1]["back_to_source"], serde_json::json!(["peer-1"]));
}

#[tokio::test]
async fn shows_a_task_with_holders_and_progress() {
    let (state, metrics) = swarm();
    let app = router(state, metrics);

    let (status, body) = get_json(&app, &format!("/api/v1/tasks/{}", fresh())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["digest"], fresh().to_string());
    assert_eq!(body["pieces"], 3);
    assert_eq!(body["known_hashes"], 1);
    let holders = body["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0]["peer"], "peer-1");
    assert_eq!(holders[0]["pieces"], 1);
    assert_eq!(holders[0]["back_to_source"], true);
    assert_eq!(holders[1]["peer"], "peer-2");
    assert_eq!(holders[1]["pieces"], 0);
    assert_eq!(holders[1]["downloading"], true);
    assert_eq!(holders[1]["parents"], serde_json::json!(["peer-1"]));

    // Percent-encoded ':' reads the same.
    let encoded = fresh().to_string().replace(':', "%3A");
    let (status, again) = get_json(&app, &format!("/api/v1/tasks/{encoded}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["digest"], body["digest"]);
}

#[tokio::test]
async fn rejects_bad_digests_unknown_tasks_routes_and_methods_with_json() {
    let (state, metrics) = swarm();
    let app = router(state, metrics);

    let upper = format!("sha256:{}", "AB".repeat(32));
    for path in [
        "sha256:xyz",
        "../etc",
        "..%2Fetc",
        "sha512:00",
        upper.as_str(),
        "sha256:%FF",
    ] {
        let (status, body) = get_json(&app, &format!("/api/v1/tasks/{path}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(error_code(&body), "DIGEST_INVALID", "{path}");
    }
    let (_, body) = get_json(&app, "/api/v1/tasks/sha256:xyz").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 hex characters"),
        "{body}"
    );

    let unknown = Digest::from_sha256([0x33; 32]);
    let (status, body) = get_json(&app, &format!("/api/v1/tasks/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "TASK_UNKNOWN");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&unknown.to_string())
    );

    for path in ["/", "/api/v1/nope", "/api/v2/peers", "/api/v1/tasks/"] {
        let (status, body) = get_json(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&body), "NOT_FOUND", "{path}");
    }

    let (status, _, body) = call(&app, Method::POST, "/api/v1/peers").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error_code(&body), "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn health_and_readiness() {
    let (state, metrics) = swarm();
    let app = router(state.clone(), metrics);

    let (status, body) = get_json(&app, "/healthz").await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &Value::from("ok"))
    );

    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(
        (status, &body["ready"]),
        (StatusCode::SERVICE_UNAVAILABLE, &Value::from(false))
    );
    state.set_ready(true);
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(
        (status, &body["ready"]),
        (StatusCode::OK, &Value::from(true))
    );
    // Liveness does not depend on readiness.
    state.set_ready(false);
    assert_eq!(get_json(&app, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_reflect_the_core_and_grpc_requests() {
    let (state, metrics) = swarm();
    metrics.grpc_request("Join", tonic::Code::Ok);
    metrics.grpc_request("Plan", tonic::Code::InvalidArgument);
    let app = router(state.clone(), metrics);

    let (status, content_type, body) = call(&app, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(body).unwrap();
    for line in [
        "shoal_scheduler_peer_joins_total 3",
        "shoal_scheduler_pieces_reported_total 1",
        "shoal_scheduler_back_to_source_elections_total 1",
        "shoal_scheduler_peers 3",
        "shoal_scheduler_tasks 2",
        "shoal_scheduler_open_plans 2",
        "shoal_scheduler_ready 0",
        r#"shoal_scheduler_grpc_requests_total{method="Join",code="OK"} 1"#,
        r#"shoal_scheduler_grpc_requests_total{method="Plan",code="INVALID_ARGUMENT"} 1"#,
        "# TYPE shoal_scheduler_peer_joins counter",
        "# HELP shoal_scheduler_peer_joins Peer joins accepted",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in\n{text}"
        );
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("shoal_"), "unprefixed: {line}");
    }

    // Counters are read at scrape time: the next join shows up.
    state.with_core(|core, now| core.join(now, info(3), vec![]).unwrap());
    let (_, _, body) = call(&app, Method::GET, "/metrics").await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "shoal_scheduler_peer_joins_total 4"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "shoal_scheduler_peers 4"),
        "{text}"
    );
}

#[tokio::test]
async fn serves_the_openapi_document() {
    let (state, metrics) = swarm();
    let app = router(state, metrics);
    let (status, doc) = get_json(&app, "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/tasks/{digest}"]["get"].is_object());
}

mod shoalctl {
    //! The real binary against a served router.

    use super::*;
    use std::process::Output;

    async fn shoalctl(url: &str, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shoalctl"))
            .env_remove("SHOAL_SCHEDULER")
            .arg("--scheduler")
            .arg(url)
            .args(args)
            .output()
            .await
            .expect("run shoalctl")
    }

    fn stdout(out: &Output) -> String {
        assert!(
            out.status.success(),
            "shoalctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout.clone()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prints_tables_and_json_and_clear_errors() {
        let (state, metrics) = swarm();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(state, metrics), async {
            let _ = stopped.await;
        }));

        let peers = stdout(&shoalctl(&url, &["peers"]).await);
        let mut lines = peers.lines();
        let header = lines.next().unwrap();
        assert!(
            header.starts_with("ID ") && header.contains("HOSTNAME") && header.contains("LEASE"),
            "{peers}"
        );
        for p in 0..3 {
            assert!(peers.contains(&format!("peer-{p}   node-{p}")), "{peers}");
        }
        // Columns line up: every row starts its HOSTNAME where the header does.
        let col = header.find("HOSTNAME").unwrap();
        assert!(lines.all(|l| l[col..].starts_with("node-")), "{peers}");

        let json: Value =
            serde_json::from_str(&stdout(&shoalctl(&url, &["peers", "-o", "json"]).await)).unwrap();
        assert_eq!(json["peers"].as_array().unwrap().len(), 3);
        assert_eq!(json["peers"][1]["id"], "peer-1");

        let tasks = stdout(&shoalctl(&url, &["tasks"]).await);
        assert!(tasks.starts_with("DIGEST "), "{tasks}");
        assert!(tasks.contains("sha256:111111111111… "), "{tasks}");
        assert!(tasks.contains("8.0 MiB"), "{tasks}");
        assert!(
            !tasks.contains(&held().to_string()),
            "list view shortens digests: {tasks}"
        );
        let json: Value =
            serde_json::from_str(&stdout(&shoalctl(&url, &["-o", "json", "tasks"]).await)).unwrap();
        assert_eq!(json["tasks"][1]["digest"], fresh().to_string());

        let digest = fresh().to_string();
        let task = stdout(&shoalctl(&url, &["task", &digest]).await);
        assert!(
            task.contains(&format!("Digest:          {digest}\n")),
            "{task}"
        );
        assert!(task.contains("Back-to-source:  peer-1\n"), "{task}");
        let holders: Vec<&str> = task
            .lines()
            .skip_while(|l| !l.starts_with("PEER"))
            .collect();
        assert_eq!(holders.len(), 3, "{task}");
        assert!(
            holders[1].starts_with("peer-1") && holders[1].contains("1/3"),
            "{task}"
        );
        assert!(
            holders[2].starts_with("peer-2") && holders[2].ends_with("   peer-1"),
            "{task}"
        );
        let json: Value = serde_json::from_str(&stdout(
            &shoalctl(&url, &["task", &digest, "-o", "json"]).await,
        ))
        .unwrap();
        assert_eq!(json["holders"][1]["parents"][0], "peer-1");

        // SHOAL_SCHEDULER stands in for --scheduler.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoalctl"))
            .env("SHOAL_SCHEDULER", &url)
            .args(["-o", "json", "peers"])
            .output()
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&stdout(&out)).unwrap()["peers"][0]["id"],
            "peer-0"
        );

        // Malformed digest: a usage error before any request.
        let out = shoalctl(&url, &["task", "sha256:bad"]).await;
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("sha256:bad") && err.contains("64 hex characters"),
            "{err}"
        );

        // Unknown task: the API's message.
        let unknown = Digest::from_sha256([0x33; 32]).to_string();
        let out = shoalctl(&url, &["task", &unknown]).await;
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err,
            format!("error: no peer holds or downloads {unknown}\n")
        );
        assert!(out.stdout.is_empty());

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();

        // Nobody listens there any more: the error names the URL.
        let out = shoalctl(&url, &["peers"]).await;
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "error: could not reach the scheduler at {url}/api/v1/peers: "
            )),
            "{err}"
        );
    }
}
