//! A whole scheduler in this process, started through its one entry point
//! (`shoal_scheduler::server::run`) with plain-text gRPC on 127.0.0.1, and
//! looked at through its operator API as an operator would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_scheduler::config::Settings;
use shoal_scheduler::server::{self, Listeners};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`InProcessScheduler::wait_for`] waits before it fails the test.
const WAIT: Duration = Duration::from_secs(60);

/// A running scheduler; stopped (without waiting) when dropped.
#[derive(Debug)]
pub struct InProcessScheduler {
    /// The gRPC address peers dial.
    pub grpc_addr: SocketAddr,
    /// `http://` + [`InProcessScheduler::grpc_addr`].
    pub grpc_url: String,
    /// The operator API's base URL (`http://127.0.0.1:port`).
    pub http_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessScheduler {
    /// Starts one on free loopback ports with a 20 ms plan interval.
    pub async fn start() -> InProcessScheduler {
        InProcessScheduler::start_with(&[]).await
    }

    /// Starts one with these extra `shoal-scheduler` flags (e.g.
    /// `["--peer-ttl", "2s"]`, or `--grpc-listen` to reuse an address); the
    /// loopback listen addresses and the 20 ms plan interval apply unless
    /// `flags` sets them.
    pub async fn start_with(flags: &[&str]) -> InProcessScheduler {
        let mut words = vec!["shoal-scheduler", "--insecure-plaintext"];
        for (flag, default) in [
            ("--grpc-listen", "127.0.0.1:0"),
            ("--http-listen", "127.0.0.1:0"),
            ("--plan-interval", "20ms"),
        ] {
            if !flags.contains(&flag) {
                words.extend([flag, default]);
            }
        }
        words.extend_from_slice(flags);
        let settings = Settings::from_args(words.clone())
            .unwrap_or_else(|e| panic!("scheduler flags {words:?}: {}", e.join("; ")));
        let listeners = Listeners::bind(&settings).await.unwrap();
        let grpc_addr = listeners.grpc.local_addr().unwrap();
        let http_addr = listeners.http.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listeners, settings, async move {
            let _ = stopped.await;
        }));
        InProcessScheduler {
            grpc_addr,
            grpc_url: format!("http://{grpc_addr}"),
            http_url: format!("http://{http_addr}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits until the scheduler has stopped (its
    /// listeners are closed, so the address can be bound again).
    pub async fn stop(mut self) {
        drop(self.stop.take());
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("scheduler did not stop")
            .unwrap()
            .unwrap();
    }

    /// `GET` of an operator API path (e.g. `/api/v1/peers`): its status and
    /// JSON body (`Null` when the body is not JSON).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("{}{path}", self.http_url))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// The task's detail (`GET /api/v1/tasks/{digest}`), `None` when unknown.
    pub async fn task(&self, digest: &str) -> Option<serde_json::Value> {
        match self.get(&format!("/api/v1/tasks/{digest}")).await {
            (200, body) => Some(body),
            (404, _) => None,
            (status, body) => panic!("GET task {digest}: {status} {body}"),
        }
    }

    /// How many peers hold `digest` complete (0 when the task is unknown).
    pub async fn complete_holders(&self, digest: &str) -> u64 {
        self.task(digest)
            .await
            .and_then(|t| t["complete_holders"].as_u64())
            .unwrap_or(0)
    }

    /// The peers it knows (`GET /api/v1/peers`).
    pub async fn peers(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.get("/api/v1/peers").await;
        assert_eq!(status, 200, "GET peers: {body}");
        body["peers"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `check` until it is true; fails the test after a minute, naming
    /// `what`. Bounds a hang; asserts nothing about speed.
    pub async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            assert!(
                start.elapsed() < WAIT,
                "never happened within {WAIT:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for InProcessScheduler {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}
