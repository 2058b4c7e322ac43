//! The status page an operator opens in a browser: `GET /` on the operator
//! API's port serves one self-contained HTML page (`assets/status.html`: inline
//! CSS and JavaScript, no external asset), and `GET /api/v1/overview` the
//! snapshot it polls every 2 s ([`Overview`]: peers, the tasks that matter now
//! with who holds how much, who fetches from upstream, upstream egress).
//!
//! Both are read-only and open, like the rest of the API's reads. The page
//! writes what it shows as text, never as HTML (hostnames come from peers),
//! and is served with a Content-Security-Policy that lets it reach only this
//! origin. Its preheat section reads a job list when the scheduler has one and
//! says "no jobs" otherwise.
//!
//! Not here: the routes of the rest of the API ([`crate::http`]), anything
//! that changes state.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::core::Overview;
use crate::state::SchedulerState;

/// The page (`scheduler/assets/status.html`).
pub const PAGE: &str = include_str!("../assets/status.html");

/// What the page may load: itself, its inline script and style, and JSON
/// from this origin. No frame may embed it.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// `GET /` (the page) and `GET /api/v1/overview` (its data) over `state`,
/// to be merged into the operator API's router (any router state).
pub fn routes<S>(state: Arc<SchedulerState>) -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/api/v1/overview", get(overview))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

async fn overview(State(state): State<Arc<SchedulerState>>) -> Json<Overview> {
    Json(state.with_core(|core, now| core.overview(now)))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::core::{CoreConfig, Scheduler};

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(!PAGE.contains(external), "the page names {external}");
        }
        assert!(PAGE.contains("/api/v1/overview"));
        // Text from peers is written as text only.
        assert!(!PAGE.contains("innerHTML"));
    }

    #[test]
    fn openapi_names_the_page_and_its_data() {
        let doc: serde_json::Value = serde_json::from_str(crate::http::OPENAPI).unwrap();
        for path in ["/", "/api/v1/overview"] {
            assert!(
                doc["paths"].get(path).is_some(),
                "openapi.json lacks {path}"
            );
        }
        assert!(doc["components"]["schemas"].get("Overview").is_some());
    }

    #[tokio::test]
    async fn serves_the_page_and_the_overview() {
        let state = SchedulerState::new(Scheduler::new(CoreConfig::default()));
        let app: Router = routes(state);
        let r = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let r = app
            .oneshot(
                Request::get("/api/v1/overview")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["peers"], serde_json::json!([]));
        assert_eq!(v["tasks_total"], 0);
    }
}
