//! The real `shoal-scheduler` binary: started as a process with flags and
//! `SHOAL_*` variables, reached over real sockets by a gRPC client and by the
//! real `shoalctl`, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_proto::v1::{self, scheduler_client::SchedulerClient};

struct Proc {
    child: Child,
    grpc: String,
    http: String,
    /// Every log line after the first.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The operator token file it was started with.
    token_file: std::path::PathBuf,
}

const TOKEN: &str = "binary-test-token-0123456789";

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// Starts the scheduler on ephemeral loopback ports, with an operator token
/// (`SHOAL_OPERATOR_TOKEN_FILE`), and reads the addresses it bound from its
/// JSON start-up log line.
fn start() -> Proc {
    let token_file =
        std::env::temp_dir().join(format!("shoal-binary-token-{}", std::process::id()));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-scheduler"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        // This test is about flags, variables and the operator API; mutual TLS has
        // its own tests (peer/tests/control_plane_trust.rs).
        .env("SHOAL_INSECURE_PLAINTEXT", "true")
        .env("SHOAL_LOG_FORMAT", "json")
        .env("SHOAL_PEER_TTL", "10s")
        .env("SHOAL_OPERATOR_TOKEN_FILE", &token_file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal-scheduler");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // The development switch is announced first, as a warning.
    let line = lines.next().expect("a warning line").unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(line.contains("PLAIN TEXT"), "{line}");
    let line = lines.next().expect("a start-up line").unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["message"], "shoal-scheduler starting", "{line}");
    assert_eq!(v["grpc.tls"], false, "{line}");
    assert_eq!(v["http.writes"], true, "{line}");
    assert!(!line.contains(TOKEN), "the token was logged: {line}");
    let grpc = v["grpc.addr"].as_str().unwrap().to_string();
    let http = v["http.addr"].as_str().unwrap().to_string();
    // Keep draining stderr so the process never blocks on a full pipe.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    Proc {
        child,
        grpc,
        http,
        log,
        token_file,
    }
}

fn shoalctl(http: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoalctl"))
        .arg("--scheduler")
        .arg(format!("http://{http}"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn serves_grpc_and_the_operator_api_and_stops_on_sigterm() {
    let mut proc = start();
    let mut client = SchedulerClient::connect(format!("http://{}", proc.grpc))
        .await
        .unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    for (id, n) in [("node-a", 1), ("node-b", 2)] {
        client
            .join(v1::JoinRequest {
                peer: Some(v1::PeerInfo {
                    peer_id: id.into(),
                    hostname: id.into(),
                    quic_addr: format!("127.0.0.{n}:7651"),
                    zone: "z".into(),
                    rack: String::new(),
                    upload_slots: 4,
                    piece_rule: shoal_proto::piece::PIECE_RULE,
                    link_mbps: 0,
                }),
                tasks: vec![v1::HeldTask {
                    digest: digest.clone(),
                    size: shoal_proto::piece::MIN_PIECE_SIZE as u64 * 5 / 4,
                    piece_hashes: vec![vec![1; 32], vec![2; 32]],
                }],
            })
            .await
            .unwrap();
    }

    // The gRPC health service says the scheduler serves.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", proc.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "shoal.v1.Scheduler".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let (ok, out, err) = shoalctl(&proc.http, &["peers"]);
    assert!(ok, "{err}");
    assert!(out.contains("node-a") && out.contains("node-b"), "{out}");
    let (ok, out, err) = shoalctl(&proc.http, &["-o", "json", "task", &digest]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["complete_holders"], 2);
    assert_eq!(v["holders"].as_array().unwrap().len(), 2);
    let (ok, _, err) = shoalctl(
        &proc.http,
        &["task", &format!("sha256:{}", "cd".repeat(32))],
    );
    assert!(!ok);
    assert!(err.contains("error:"), "{err}");

    // The write endpoints take the token from the file it was started with.
    let token_file = proc.token_file.to_str().unwrap().to_owned();
    let (ok, out, err) = shoalctl(
        &proc.http,
        &["quarantine", "node-a", "--token-file", &token_file],
    );
    assert!(ok, "{err}");
    assert!(out.contains("quarantined (operator)"), "{out}");
    let (ok, out, _) = shoalctl(&proc.http, &["-o", "json", "peers"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["peers"][0]["quarantine_reasons"],
        serde_json::json!(["operator"])
    );
    let status = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/peers/node-b/quarantine",
            proc.http
        ))
        .bearer_auth("not-the-token-0123456789")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);

    // SIGTERM: a clean stop.
    let status = shoal_tests::terminate(&mut proc.child, Duration::from_secs(10)).await;
    let status = status.expect("did not stop within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let log = proc.log.lock().unwrap().join("\n");
    assert!(
        log.contains("operator changed a peer's quarantine"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token was logged");
    let _ = std::fs::remove_file(&proc.token_file);
}

#[test]
fn reports_every_configuration_error_at_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-scheduler"))
        .args(["--grpc-listen", "localhost", "--peer-ttl", "soon"])
        .env("SHOAL_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for words in ["--grpc-listen", "--peer-ttl", "--log-format"] {
        assert!(err.contains(words), "missing {words}: {err}");
    }
}

#[test]
fn names_the_address_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-scheduler"))
        .args(["--grpc-listen", &addr, "--http-listen", "127.0.0.1:0"])
        .arg("--insecure-plaintext")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&addr), "{err}");
}

#[test]
fn serves_the_operator_api_over_tls_with_http_tls_dir() {
    let dir = std::env::temp_dir().join(format!("shoal-binary-http-tls-{}", std::process::id()));
    let pki = shoal_tests::tls::TestPki::generate(&dir.join("pki")).unwrap();
    let tls = dir.join("http-tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::copy(&pki.ca_cert, tls.join("ca.crt")).unwrap();
    std::fs::copy(&pki.server_cert, tls.join("tls.crt")).unwrap();
    std::fs::copy(&pki.server_key, tls.join("tls.key")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shoal-scheduler"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--http-tls-dir")
        .arg(&tls)
        .env("SHOAL_INSECURE_PLAINTEXT", "true")
        .env("SHOAL_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal-scheduler");
    let mut proc = Proc {
        child,
        grpc: String::new(),
        http: String::new(),
        log: Default::default(),
        token_file: dir.join("no-token"),
    };
    let stderr = proc.child.stderr.take().unwrap();
    let started = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("shoal-scheduler starting"))
        .expect("a start-up line");
    let v: serde_json::Value = serde_json::from_str(&started).unwrap();
    assert_eq!(v["http.tls"], true, "{started}");
    proc.http = v["http.addr"].as_str().unwrap().to_string();
    let ctl = |url: String, extra: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shoalctl"))
            .arg("--scheduler")
            .arg(url)
            .args(extra)
            .arg("peers")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let https = format!("https://{}", proc.http);
    // Trusting the CA: the API answers over TLS.
    let (ok, err) = ctl(
        https.clone(),
        &["--ca-file".as_ref(), pki.ca_cert.as_os_str()],
    );
    assert!(ok, "{err}");
    // Without the CA the certificate is not trusted; plain HTTP gets no answer.
    let (ok, err) = ctl(https, &[]);
    assert!(!ok && err.contains("could not reach"), "{err}");
    let (ok, err) = ctl(format!("http://{}", proc.http), &[]);
    assert!(!ok, "plain HTTP to a TLS port: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
