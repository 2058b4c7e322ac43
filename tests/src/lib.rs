//! Helpers for Shoal's end-to-end tests: real third-party components started as child
//! processes on 127.0.0.1, each stopped when its handle is dropped.
//!
//! Layout:
//! - [`registry`]: a CNCF distribution registry (`docker-registry`), plain HTTP, TLS,
//!   Basic or token auth.
//! - [`token_auth`]: a token service for the registry's `auth: token`, `htpasswd`
//!   lines, and a client doing the registry auth dance as containerd does.
//! - [`upstream`]: a one-blob HTTP upstream that counts what it serves.
//! - [`relay`]: a fault-injecting relay between a peer and its upstream (stalls,
//!   resets, wrong bytes, 5xx, a slow link), and a client that says how a pull ended.
//! - [`scheduler`]: a whole scheduler in this process, through `server::run`.
//! - [`kube`]: a stand-in kube-apiserver (TokenReview and Pod GET over HTTPS) for the
//!   certificate issuer, the one stand-in the tests allow.
//! - [`swarm`]: Shoal's own processes (`shoal-scheduler`, `shoal-peer run`).
//! - [`image`]: a tiny OCI image built by hand (tar, gzip, sha256) and pushed with skopeo.
//! - [`netns`], [`netswarm`]: network namespaces as hosts, and Shoal's processes on them.
//! - [`replica_swarm`]: several scheduler replicas behind a headless Service name (a
//!   hosts file the peers re-read) and a swarm of peers finding them through it.
//! - [`bench`](mod@bench): the swarm benchmark (direct, pull-through cache, shoal).
//! - [`demo`]: the main job: a swarm of nodes pulling an image with containerd.
//! - [`containerd`]: a private containerd (own root, state and socket), with the CRI
//!   plugin off (`ctr` pulls through it) or on (its registry `config_path` a hosts dir).
//! - [`cri`]: a client of the CRI image service (`runtime.v1.ImageService`) over
//!   containerd's socket, as the kubelet pulls.
//! - [`htpasswd`]: a `docker-registry` that requires Basic auth (one user).
//! - [`status_page`]: the scheduler's status page in headless Chromium, and a live
//!   swarm (scheduler, peers in two zones, a registry with an image) for it to show.
//! - [`Recorder`] (here): an HTTP listener that records request lines and answers every
//!   request with one fixed status, to stand in for a mirror that has nothing.
//! - [`require_tools`] (here): skip a test when a tool is missing, fail under `CI=true`.
//! - [`eventually`], [`wait_until`] (here): wait for a condition, bounded against a hang.
//! - [`blob`] (here): reproducible incompressible test bytes and their digest.
//!
//! Not here: assertions about Shoal's behaviour ([`eventually`] only bounds a hang).

pub mod bench;
pub mod containerd;
pub mod cri;
pub mod demo;
pub mod htpasswd;
pub mod image;
pub mod kube;
pub mod netns;
pub mod netswarm;
pub mod registry;
pub mod relay;
pub mod replica_swarm;
pub mod scheduler;
pub mod status_page;
pub mod swarm;
pub mod tls;
pub mod token_auth;
pub mod upstream;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// Whether every tool in `tools` is on `PATH`. When one is missing: under `CI=true` this
/// panics (CI must install them), elsewhere it prints why the test is skipped and returns
/// false.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: missing {} (Debian packages: containerd, docker-registry, skopeo, apache2-utils, podman; scripts/install-deps)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {msg}");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Whether this process runs as root; when not: under `CI=true` this panics (CI runs
/// as root), elsewhere it prints why the test is skipped (`why`: what needs root).
pub fn require_root(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!("{test}: {why} needs root");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg}; CI=true, so this is a failure, not a skip"
    );
    eprintln!("SKIPPED {msg}");
    false
}

/// Whether this process runs as root (containerd needs it).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (free when this returns; the caller binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    unhanded(|| Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))
}

/// A free UDP port on 127.0.0.1 (free when this returns; the caller binds it next).
pub fn free_udp_port() -> anyhow::Result<u16> {
    unhanded(|| {
        Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    })
}

/// A port from `probe` that this process has not handed out before. The kernel may
/// give the same ephemeral port to two probes in a row once the first socket is closed
/// (CI once saw a scheduler's gRPC and HTTP ports come out equal), so every port handed
/// out is remembered for the life of the test process.
fn unhanded(mut probe: impl FnMut() -> anyhow::Result<u16>) -> anyhow::Result<u16> {
    static HANDED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = probe()?;
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) {
            handed.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no port this process has not handed out already, after 1000 probes")
}

/// Polls `ready` until it returns true; fails after `limit` (a bound on a hang, not a
/// timing assertion).
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            anyhow::bail!("{what} not ready after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// How long [`eventually`] waits before it gives up: a bound on a hang, not a timing
/// assertion.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// Polls `check` every 10 ms (without blocking the async runtime) until it returns true;
/// panics with `what` if it has not after [`EVENTUALLY`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < EVENTUALLY,
            "never happened within {EVENTUALLY:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `len` reproducible, incompressible bytes (xorshift64 from `seed`) and their digest
/// (`sha256:<hex>`). Fast enough for a GiB (8 bytes per step).
pub fn blob(len: usize, seed: u64) -> (Arc<Vec<u8>>, String) {
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&data));
    (Arc::new(data), digest)
}

/// Whether something accepts TCP connections on `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// An HTTP/1.1 listener on 127.0.0.1 that records each request line (`HEAD /v2/… HTTP/1.1`)
/// and answers every request with `status` and an OCI error body. Runs until dropped
/// with the test process.
#[derive(Debug, Clone)]
pub struct Recorder {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// Starts listening; `status` is e.g. 404 or 500.
    pub fn start(status: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let recorded = lines.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let recorded = recorded.clone();
                std::thread::spawn(move || serve(stream, status, &recorded));
            }
        });
        Ok(Recorder { addr, lines })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request lines received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.lines.lock().expect("recorder lock").clone()
    }
}

fn serve(stream: TcpStream, status: u16, recorded: &Mutex<Vec<String>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let head = request_line.starts_with("HEAD ");
        recorded
            .lock()
            .expect("recorder lock")
            .push(request_line.trim_end().to_string());
        let body = br#"{"errors":[{"code":"UNKNOWN","message":"recorder has nothing"}]}"#;
        let response = format!(
            "HTTP/1.1 {status} Recorded\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err()
            || (!head && writer.write_all(body).is_err())
        {
            return;
        }
    }
}

/// Reads a file that a child process writes, empty when it does not exist yet.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Sends SIGTERM to `child` and waits (without blocking the async runtime)
/// up to `timeout` for it to exit; `None` if it is still running then.
pub async fn terminate(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "could not send SIGTERM to {pid}");
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}
