//! The operator API over a real core state (three peers, two tasks), driven
//! in-process with `oneshot` (axum's testing example). `tests/shoalctl_cli.rs`
//! serves the same state on a socket and asks the real CLI.
//!
//! The write endpoints (quarantine, drop) are tested here too: with and
//! without a configured operator token, with a missing, wrong or right one.
//!
//! Not here: the gRPC side (it only fills the state these tests build by
//! calling the core directly).

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{SIZE, fresh, held, id, info, swarm};
use serde_json::Value;
use shoal_proto::Digest;
use shoal_scheduler::auth::OperatorToken;
use shoal_scheduler::core::Command;
use shoal_scheduler::http::router;
use tower::ServiceExt;

async fn call(app: &Router, method: Method, uri: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let (status, _, content_type, body) = call_as(app, method, uri, None).await;
    (status, content_type, body)
}

/// A request with an `Authorization` header (when given); also returns the
/// `WWW-Authenticate` header of the answer.
async fn call_as(
    app: &Router,
    method: Method,
    uri: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, Option<String>, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(a) = authorization {
        request = request.header(header::AUTHORIZATION, a);
    }
    let request = request.body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, challenge, content_type, body.to_vec())
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
    let app = router(state, metrics, None);

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
    let app = router(state, metrics, None);

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
    let app = router(state, metrics, None);

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

    for path in ["/api/v1/nope", "/api/v2/peers", "/api/v1/tasks/", "/status"] {
        let (status, body) = get_json(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&body), "NOT_FOUND", "{path}");
    }
    // `/` is the status page (scheduler/src/status_page.rs).
    let (status, content_type, _) = call(&app, Method::GET, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));

    let (status, _, body) = call(&app, Method::POST, "/api/v1/peers").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error_code(&body), "METHOD_NOT_ALLOWED");
    // The API is read-only, but HEAD works wherever GET does.
    let (status, _, body) = call(&app, Method::HEAD, "/api/v1/peers").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
}

#[tokio::test]
async fn health_and_readiness() {
    let (state, metrics) = swarm();
    let app = router(state.clone(), metrics, None);

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
    let app = router(state.clone(), metrics, None);

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
        "shoal_scheduler_downloads 2",
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
    // Ours carry the prefix; the process's own cost is under the standard names.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("shoal_") || line.starts_with("process_"),
            "unprefixed: {line}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("process_resident_memory_bytes ")),
        "{text}"
    );

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
    let app = router(state, metrics, None);
    let (status, doc) = get_json(&app, "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/tasks/{digest}"]["get"].is_object());
    assert!(doc["paths"]["/api/v1/preheat"]["post"].is_object());
}

const TOKEN: &str = "op-token-0123456789abcdef";

fn token() -> Option<OperatorToken> {
    Some(OperatorToken::parse(TOKEN).unwrap())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Every write endpoint, as (method, path).
fn writes() -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/api/v1/peers/peer-0/quarantine".to_owned()),
        (Method::DELETE, "/api/v1/peers/peer-0/quarantine".to_owned()),
        (Method::POST, format!("/api/v1/tasks/{}/drop", held())),
        (Method::POST, "/api/v1/preheat".to_owned()),
        (
            Method::DELETE,
            "/api/v1/preheat/0123456789abcdef".to_owned(),
        ),
        // The token is checked before the id.
        (Method::DELETE, "/api/v1/preheat/bad%20id".to_owned()),
    ]
}

fn peer_json<'a>(peers: &'a Value, id: &str) -> &'a Value {
    peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()
}

#[tokio::test]
async fn write_endpoints_answer_403_without_a_configured_token_and_reads_stay_open() {
    let (state, metrics) = swarm();
    let app = router(state, metrics, None);
    for (method, path) in writes() {
        for auth in [None, Some(bearer())] {
            let (status, _, _, body) = call_as(&app, method.clone(), &path, auth.as_deref()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(error_code(&body), "WRITES_DISABLED");
            assert_eq!(
                body["error"]["message"],
                "write endpoints disabled: no --operator-token-file"
            );
        }
    }
    let (status, peers) = get_json(&app, "/api/v1/peers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(peer_json(&peers, "peer-0")["quarantined"], false);
}

#[tokio::test]
async fn write_endpoints_answer_401_without_the_right_bearer_token_and_change_nothing() {
    let (state, metrics) = swarm();
    let app = router(state.clone(), metrics, token());
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for (method, path) in writes() {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(basic.as_str()),
            Some("Bearer "),
        ] {
            let (status, challenge, _, body) = call_as(&app, method.clone(), &path, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
            assert_eq!(
                challenge.as_deref(),
                Some(r#"Bearer realm="shoal-scheduler""#)
            );
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(error_code(&body), "UNAUTHORIZED");
            assert!(
                !body.to_string().contains(TOKEN),
                "the answer echoes the token: {body}"
            );
        }
    }
    // The token is checked before the path: a bad digest is still a 401.
    let (status, _, _, _) =
        call_as(&app, Method::POST, "/api/v1/tasks/sha256:bad/drop", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, peers) = get_json(&app, "/api/v1/peers").await;
    assert_eq!(peer_json(&peers, "peer-0")["quarantined"], false);
    // The scheme is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    let (status, _, _, _) = call_as(
        &app,
        Method::DELETE,
        "/api/v1/peers/peer-0/quarantine",
        Some(&lower),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn quarantine_takes_a_peer_out_as_a_parent_until_it_is_lifted() {
    let (state, metrics) = swarm();
    let app = router(state.clone(), metrics, token());
    let auth = bearer();

    // peer-1 fetches `fresh` from upstream and is peer-2's parent.
    let (_, before) = get_json(&app, &format!("/api/v1/tasks/{}", fresh())).await;
    assert_eq!(
        before["holders"][1]["parents"],
        serde_json::json!(["peer-1"])
    );

    let (status, _, _, body) = call_as(
        &app,
        Method::POST,
        "/api/v1/peers/peer-1/quarantine",
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"peer": "peer-1", "quarantined": true, "quarantine_reasons": ["operator"]})
    );
    let (_, peers) = get_json(&app, "/api/v1/peers").await;
    let p1 = peer_json(&peers, "peer-1");
    assert_eq!(p1["quarantined"], true);
    assert_eq!(p1["quarantine_reasons"], serde_json::json!(["operator"]));
    assert_eq!(p1["children"], 0);
    assert_eq!(peer_json(&peers, "peer-0")["quarantined"], false);
    // Its plans lost it at once, and its upstream duty went to peer-2.
    let (_, after) = get_json(&app, &format!("/api/v1/tasks/{}", fresh())).await;
    assert_eq!(after["holders"][1]["parents"], serde_json::json!([]));
    assert_eq!(after["back_to_source"], serde_json::json!(["peer-2"]));

    // Again: the same answer (idempotent).
    let (status, _, _, _) = call_as(
        &app,
        Method::POST,
        "/api/v1/peers/peer-1/quarantine",
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, _, body) = call_as(
        &app,
        Method::DELETE,
        "/api/v1/peers/peer-1/quarantine",
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["quarantined"], false);
    assert_eq!(body["quarantine_reasons"], serde_json::json!([]));
    let (_, peers) = get_json(&app, "/api/v1/peers").await;
    assert_eq!(peer_json(&peers, "peer-1")["quarantined"], false);

    for (path, status, code) in [
        (
            "/api/v1/peers/peer-9/quarantine",
            StatusCode::NOT_FOUND,
            "PEER_UNKNOWN",
        ),
        (
            "/api/v1/peers/bad%20id/quarantine",
            StatusCode::BAD_REQUEST,
            "PEER_ID_INVALID",
        ),
    ] {
        let (got, _, _, body) = call_as(&app, Method::POST, path, Some(&auth)).await;
        assert_eq!(got, status, "{path}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error_code(&body), code, "{path}");
    }
}

#[tokio::test]
async fn drop_sends_the_command_to_every_holder_with_a_session() {
    let (state, metrics) = swarm();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    state.attach_session(id(0), tx);
    state.with_core(|core, now| core.session_opened(now, &id(0)).unwrap());
    let app = router(state.clone(), metrics.clone(), token());
    let auth = bearer();

    let (status, _, _, body) = call_as(
        &app,
        Method::POST,
        &format!("/api/v1/tasks/{}/drop", held()),
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"digest": held().to_string(), "commanded": ["peer-0"], "not_connected": []})
    );
    assert_eq!(rx.try_recv().unwrap(), Command::Drop(held()));

    // peer-1 holds a piece of `fresh` but has no session.
    let (_, _, _, body) = call_as(
        &app,
        Method::POST,
        &format!("/api/v1/tasks/{}/drop", fresh()),
        Some(&auth),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["commanded"], serde_json::json!([]));
    assert_eq!(body["not_connected"], serde_json::json!(["peer-1"]));

    let unknown = Digest::from_sha256([0x33; 32]);
    for (path, status, code) in [
        (
            format!("/api/v1/tasks/{unknown}/drop"),
            StatusCode::NOT_FOUND,
            "TASK_UNKNOWN",
        ),
        (
            "/api/v1/tasks/sha256:xyz/drop".to_owned(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("/api/v1/tasks/{}", held()),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
    ] {
        let (got, _, _, body) = call_as(&app, Method::POST, &path, Some(&auth)).await;
        assert_eq!(got, status, "{path}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error_code(&body), code, "{path}");
    }

    // Counted by action and status, and the quarantine gauge follows.
    let _ = call_as(&app, Method::POST, "/api/v1/peers/peer-2/quarantine", None).await;
    let _ = call_as(
        &app,
        Method::POST,
        "/api/v1/peers/peer-2/quarantine",
        Some(&auth),
    )
    .await;
    let (_, _, text) = call(&app, Method::GET, "/metrics").await;
    let text = String::from_utf8(text).unwrap();
    for line in [
        r#"shoal_scheduler_operator_requests_total{action="drop",code="200"} 2"#,
        r#"shoal_scheduler_operator_requests_total{action="drop",code="404"} 1"#,
        r#"shoal_scheduler_operator_requests_total{action="quarantine",code="401"} 1"#,
        r#"shoal_scheduler_operator_requests_total{action="quarantine",code="200"} 1"#,
        "shoal_scheduler_quarantined_peers 1",
        "shoal_scheduler_operator_quarantines_total 1",
        "shoal_scheduler_drop_orders_total 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
