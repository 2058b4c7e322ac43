//! The fault suite (issue 14, "bytes that heal"): one real `shoal-peer run` process
//! (no scheduler: every byte comes from upstream) whose upstream, a registry on
//! 127.0.0.1 that counts what it serves, sits behind a fault-injecting relay
//! ([`shoal_tests::relay`]). Each case injects one fault on the data path and pulls the
//! blob through the peer's registry mirror, the way containerd asks.
//!
//! The promise under test: whatever the disk, the network or the upstream does, the
//! mirror either serves the right bytes or fails cleanly, with an error status before
//! the first body byte (so containerd moves on to the next host); and it repairs
//! itself: a transient fault costs at most a refusal or two, then the pull completes.
//! So every attempt must be either the complete blob with the right digest or a
//! non-2xx status; a 2xx whose body is wrong, breaks after body bytes, or does not end
//! within [`ATTEMPT_LIMIT`] fails the case, and so does no right pull within
//! [`ATTEMPTS`].
//!
//! [`ATTEMPT_LIMIT`] is 30 s: the issue asks that a silently dropping upstream cost
//! seconds, not 30 s. The stall case uses the peer's default upstream settings (an
//! idle-read timeout of 10 s per body chunk; `idle_timeout` per registry in the
//! config file): the stalled download resumes with a `Range` from its first missing
//! piece.
//!
//! Cases: a stall mid-body; a reset mid-body; wrong bytes in one piece; wrong bytes for
//! the whole blob once; a burst of 5xx; a slow upstream (1 MB/s); a complete blob whose
//! file is corrupted while the peer is stopped, then requested after a restart; a
//! `kill -9` mid-download, then a restart on the same data dir (upstream serves at most
//! 1.2 copies in all).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_tests::blob;
use shoal_tests::relay::{Fault, Pull, Relay, pull};
use shoal_tests::swarm::{PeerOptions, PeerProcess};
use shoal_tests::upstream::CountingUpstream;

const MIB: u64 = 1 << 20;
const REPO: &str = "faults/blob";
const NAME: &str = "peer";
/// How long one pull may take before it counts as hung.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);
/// Pulls allowed until the right bytes come (the ones before must be clean refusals).
const ATTEMPTS: usize = 3;
/// Pause between attempts, as a client backs off.
const BACKOFF: Duration = Duration::from_millis(500);

/// One peer, its upstream and the relay between them, holding one random blob.
struct Case {
    dir: tempfile::TempDir,
    opts: PeerOptions,
    peer: PeerProcess,
    relay: Relay,
    upstream: CountingUpstream,
    data: Arc<Vec<u8>>,
    digest: String,
    restarts: u32,
}

impl Case {
    async fn start(size: u64, seed: u64) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let (data, digest) = blob(size as usize, seed);
        let upstream = CountingUpstream::start(REPO, &digest, data.clone(), Duration::ZERO)
            .await
            .unwrap();
        let relay = Relay::start(&upstream.url()).await.unwrap();
        let tls = dir.path().join("tls");
        PeerProcess::tls_init(&tls).unwrap();
        let opts = PeerOptions {
            scheduler: None,
            default_upstream: Some(relay.url()),
            hosts_dir: None,
            tls_dir: tls,
            extra: Vec::new(),
        };
        let peer = PeerProcess::start(dir.path(), NAME, &opts).await.unwrap();
        Case {
            dir,
            opts,
            peer,
            relay,
            upstream,
            data,
            digest,
            restarts: 0,
        }
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn url(&self) -> String {
        format!("{}/v2/{REPO}/blobs/{}", self.peer.mirror_url(), self.digest)
    }

    /// What a failure message shows: the relay's exchanges and the peer's log tail.
    fn evidence(&self) -> String {
        let log = plain(&self.peer.log());
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "relay ({} blob GETs, {} body bytes; upstream sent {}):\n{}peer log (last 40 lines):\n{tail}",
            self.relay.blob_gets(),
            self.relay.body_bytes(),
            self.upstream.bytes(),
            self.relay.describe()
        )
    }

    /// Pulls until the right bytes come: every attempt must be the right blob or a
    /// clean refusal, and one of at most [`ATTEMPTS`] must be right. The outcomes.
    async fn pull_until_right(&self, case: &str) -> Vec<Pull> {
        let mut outcomes = Vec::new();
        for attempt in 1..=ATTEMPTS {
            let started = Instant::now();
            let p = pull(&self.url(), ATTEMPT_LIMIT).await;
            eprintln!(
                "{case}: attempt {attempt} after {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                show(&p, &self.data)
            );
            let right = p.is_right(&self.digest, self.size());
            assert!(
                right || p.is_clean_refusal(),
                "{case}: attempt {attempt} was neither the right blob nor a clean refusal \
                 before the first body byte: {}\n{}",
                show(&p, &self.data),
                self.evidence()
            );
            outcomes.push(p);
            if right {
                return outcomes;
            }
            tokio::time::sleep(BACKOFF).await;
        }
        panic!(
            "{case}: no right pull in {ATTEMPTS} attempts (each refused cleanly): {:?}\n{}",
            outcomes
                .iter()
                .map(|p| show(p, &self.data))
                .collect::<Vec<_>>(),
            self.evidence()
        );
    }

    /// Starts the peer again on the same data dir (the earlier log kept aside).
    async fn restart(&mut self) {
        self.peer.kill();
        self.restarts += 1;
        let log = self.dir.path().join(format!("{NAME}.log"));
        let kept = self
            .dir
            .path()
            .join(format!("{NAME}-before-restart-{}.log", self.restarts));
        std::fs::rename(&log, &kept).unwrap();
        self.peer = PeerProcess::start(self.dir.path(), NAME, &self.opts)
            .await
            .unwrap();
    }

    fn summary(&self, case: &str, outcomes: &[Pull]) {
        eprintln!(
            "{case}: {} attempt(s), relay: {} blob GETs, {:.2} copies of the blob sent",
            outcomes.len(),
            self.relay.blob_gets(),
            self.relay.body_bytes() as f64 / self.size() as f64
        );
    }
}

/// A pull's outcome in one line (digests shortened); for a body that broke or hung,
/// whether the bytes received were right (the first bytes of `data`).
fn show(p: &Pull, data: &[u8]) -> String {
    let right = match p.prefix_right(data) {
        Some(true) => ", all of them right",
        Some(false) => ", NOT the blob's bytes (wrong bytes were served)",
        None => "",
    };
    match p {
        Pull::Complete {
            status,
            digest,
            len,
        } => format!("{status}, complete body of {len} bytes, {}", &digest[..19]),
        Pull::Refused { status, body } => format!("refused {status}: {}", body.trim()),
        Pull::Broken {
            status,
            received,
            error,
            ..
        } => format!("{status}, body broke after {received} bytes{right}: {error}"),
        Pull::Hung {
            status, received, ..
        } => format!(
            "hung: status {status:?}, {received} body bytes within {ATTEMPT_LIMIT:?}{right}"
        ),
        Pull::NoResponse { error } => format!("no response: {error}"),
    }
}

/// `text` without terminal colour codes (the peer's log has them).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_ends_in_the_right_bytes() {
    let c = Case::start(24 * MIB, 142).await;
    c.relay.set_fault_times(
        Fault::Reset {
            after_bytes: 10 * MIB + 777,
        },
        1,
    );
    let outcomes = c.pull_until_right("reset").await;
    c.summary("reset", &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_5xx_ends_in_the_right_bytes() {
    let c = Case::start(24 * MIB, 145).await;
    c.relay.set_fault(Fault::Status5xx { count: 5 });
    let outcomes = c.pull_until_right("5xx_burst").await;
    c.summary("5xx_burst", &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_at_1_mb_per_s_serves_the_right_bytes() {
    let c = Case::start(4 * MIB, 146).await;
    c.relay.set_fault(Fault::Slow {
        bytes_per_sec: 1_000_000,
    });
    let outcomes = c.pull_until_right("slow").await;
    c.summary("slow", &outcomes);
    assert_eq!(outcomes.len(), 1, "a slow upstream is not a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_download_then_restart_resumes_and_upstream_serves_at_most_1_2_copies() {
    let mut c = Case::start(48 * MIB, 148).await;
    // 8 MiB/s: slow enough that little sits in socket buffers when the peer dies.
    c.relay.set_fault(Fault::Slow {
        bytes_per_sec: 8 * MIB,
    });
    let url = c.url();
    let doomed = tokio::spawn(async move { pull(&url, ATTEMPT_LIMIT).await });
    let half = c.size() / 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.relay.body_bytes() < half {
        assert!(
            Instant::now() < deadline,
            "kill_9: upstream did not send half the blob within 30 s\n{}",
            c.evidence()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.peer.kill();
    let at_kill = c.relay.body_bytes();
    eprintln!("kill_9: SIGKILL after {at_kill} bytes from upstream");
    let _ = doomed.await;
    c.relay.set_fault(Fault::None);
    c.restart().await;
    let outcomes = c.pull_until_right("kill_9: after restart").await;
    c.summary("kill_9", &outcomes);
    let sent = c.relay.body_bytes();
    assert!(
        sent as f64 <= 1.2 * c.size() as f64,
        "kill_9: upstream sent {sent} bytes ({:.2} copies; {at_kill} before the kill), \
         more than 1.2 copies: the download did not resume\n{}",
        sent as f64 / c.size() as f64,
        c.evidence()
    );
}

/// The piece size the peer cuts the blob into.
fn piece_size(c: &Case) -> u64 {
    shoal_proto::piece::piece_size_for(c.size()) as u64
}

impl Case {
    /// Stops the peer with SIGTERM (as a node shutdown does) and waits for it to exit.
    async fn stop(&mut self) {
        let pid = self.peer.pid().expect("peer running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not send SIGTERM to {pid}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !exited(pid) {
            assert!(
                Instant::now() < deadline,
                "the peer did not exit within 20 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Reaps it.
        self.peer.kill();
    }
}

/// Whether process `pid` has exited (gone, or a zombie waiting to be reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Flips `len` bytes at `offset` of the blob file under the data dir `data`.
fn corrupt_at_rest(data: &std::path::Path, digest: &str, offset: u64, len: usize) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = data.join("blobs").join("sha256").join(hex);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[offset as usize..offset as usize + len] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_mid_body_costs_seconds_then_the_right_bytes() {
    let c = Case::start(24 * MIB, 141).await;
    c.relay.set_fault_times(
        Fault::Stall {
            after_bytes: 6 * MIB + 12_345,
        },
        1,
    );
    let outcomes = c.pull_until_right("stall").await;
    c.summary("stall", &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_in_one_piece_are_never_served() {
    let c = Case::start(24 * MIB, 143).await;
    let offset = 2 * piece_size(&c) + 1000;
    c.relay
        .set_fault_times(Fault::CorruptPiece { offset, len: 64 }, 1);
    let outcomes = c.pull_until_right("corrupt_piece").await;
    c.summary("corrupt_piece", &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_for_the_whole_blob_once_then_right_bytes() {
    let c = Case::start(24 * MIB, 144).await;
    c.relay.set_fault(Fault::CorruptOnce);
    let outcomes = c.pull_until_right("corrupt_once").await;
    c.summary("corrupt_once", &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_blob_corrupted_at_rest_is_never_served_and_is_repaired() {
    let mut c = Case::start(24 * MIB, 147).await;
    let first = c.pull_until_right("at_rest: first pull").await;
    assert_eq!(first.len(), 1);
    c.stop().await;
    // The disk rots while the node is down: a few bytes of the third piece flip.
    let offset = 2 * piece_size(&c) + 4321;
    corrupt_at_rest(&c.peer.data_dir(), &c.digest, offset, 8);
    c.restart().await;
    let outcomes = c.pull_until_right("at_rest: after restart").await;
    // Repaired: the next pull is right too.
    let again = pull(&c.url(), ATTEMPT_LIMIT).await;
    assert!(
        again.is_right(&c.digest, c.size()),
        "at_rest: the pull after the repair: {}\n{}",
        show(&again, &c.data),
        c.evidence()
    );
    c.summary("at_rest", &outcomes);
}

/// A real ENOSPC: the data dir of one node is a 16 MiB tmpfs, and it pulls a
/// 64 MiB blob another node already holds. The store fills and fails; the pieces
/// (verified against the plan's hashes) stream through a bounded memory backlog;
/// the pull is right, its peak RSS stays under a stated bound (256 MiB; the
/// figure is printed), upstream served one copy in all, and the node serves the
/// blob again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_streams_the_blob_through_with_bounded_memory() {
    use shoal_tests::swarm::{SchedulerProcess, proc_rss_kib, pull_blob};

    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        assert!(
            std::env::var("CI").is_err(),
            "the ENOSPC case mounts a tmpfs and needs root; CI runs as root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB as usize;
    let (data, digest) = blob(size, 161);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir.path(), &tls).await.unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: Some(upstream.url()),
        hosts_dir: None,
        tls_dir: tls,
        extra: vec!["--scrub-rate".into(), "0".into()],
    };
    let roomy = PeerProcess::start(dir.path(), "roomy", &opts)
        .await
        .unwrap();
    let small = dir.path().join("cramped").join("data");
    std::fs::create_dir_all(&small).unwrap();
    let _mount = Tmpfs::mount(&small, "16m");
    let cramped = PeerProcess::start(dir.path(), "cramped", &opts)
        .await
        .unwrap();
    wait_joined(&sched, 2).await;

    let t = Instant::now();
    let (got, n) = pull_blob(&roomy.mirror_url(), REPO, &digest).await.unwrap();
    assert_eq!((got.as_str(), n), (digest.as_str(), size as u64));
    eprintln!(
        "full disk: the roomy node pulled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let (got, n) = pull_blob(&cramped.mirror_url(), REPO, &digest)
        .await
        .unwrap();
    eprintln!(
        "full disk: the cramped node pulled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        (got.as_str(), n),
        (digest.as_str(), size as u64),
        "through the full disk"
    );
    let (rss, hwm) = proc_rss_kib(cramped.pid().unwrap()).unwrap();
    eprintln!(
        "full disk: a {} MiB blob through a 16 MiB store; peer RSS {} MiB, peak (VmHWM) {} MiB",
        size >> 20,
        rss >> 10,
        hwm >> 10
    );
    assert!(hwm < 256 << 10, "peak RSS {} MiB", hwm >> 10);
    assert_eq!(upstream.bytes(), size as u64, "upstream served one copy");
    // Still serving: the same blob again (not cached: it streams through again).
    let (got, _) = pull_blob(&cramped.mirror_url(), REPO, &digest)
        .await
        .unwrap_or_else(|e| panic!("second pull: {e}\ncramped log:\n{}", cramped.log()));
    assert_eq!(got, digest);
}

/// A tmpfs mounted for the test, lazily unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount -t tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A poisoned swarm: three nodes with a scheduler pull one blob at once, and the
/// elected source's upstream sends wrong bytes in one piece, once. The source
/// learns its piece hashes from those bytes and hands them to the swarm; the blob
/// does not match its digest; the source deletes it (`Evicted`) and the children
/// report `DigestMismatch`, so the scheduler discards the hashes and elects again.
/// No node ever serves a whole wrong blob, and every node's pull completes with
/// the right digest within a few retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_swarm_recovers_and_every_pull_ends_right() {
    use shoal_tests::swarm::{SchedulerProcess, pull_blob};

    let dir = tempfile::tempdir().unwrap();
    let size = 24 * MIB as usize;
    let (data, digest) = blob(size, 171);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    let relay = Relay::start(&upstream.url()).await.unwrap();
    relay.set_fault_times(
        Fault::CorruptPiece {
            offset: 4 * MIB + 777,
            len: 64,
        },
        1,
    );
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir.path(), &tls).await.unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: Some(relay.url()),
        hosts_dir: None,
        tls_dir: tls,
        extra: vec!["--scrub-rate".into(), "0".into()],
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            PeerProcess::start(dir.path(), &format!("node-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    wait_joined(&sched, 3).await;
    let pulls = nodes.iter().map(|n| {
        let (mirror, digest) = (n.mirror_url(), digest.clone());
        async move {
            let mut failures = Vec::new();
            for _ in 0..6 {
                match tokio::time::timeout(ATTEMPT_LIMIT, pull_blob(&mirror, REPO, &digest)).await {
                    Ok(Ok((got, n))) => {
                        assert_eq!(got, digest, "a node served a whole wrong blob ({n} bytes)");
                        return failures;
                    }
                    Ok(Err(e)) => failures.push(e),
                    Err(_) => failures.push("hung".to_string()),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            panic!("no right pull in 6 attempts: {failures:?}");
        }
    });
    let failures = futures::future::join_all(pulls).await;
    eprintln!(
        "poisoned swarm: failed attempts per node {:?}; relay sent {} blob GETs; upstream sent {:.2} copies",
        failures.iter().map(Vec::len).collect::<Vec<_>>(),
        relay.blob_gets(),
        upstream.bytes() as f64 / size as f64
    );
    assert!(
        relay.blob_gets() >= 2,
        "the poisoned copy was the only one fetched"
    );
}

/// Waits (up to a minute, a hang bound) until `n` peers have joined `sched`.
async fn wait_joined(sched: &shoal_tests::swarm::SchedulerProcess, n: usize) {
    let peers = format!("{}/api/v1/peers", sched.http_url());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let joined = match reqwest::get(&peers).await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["peers"].as_array().map(Vec::len)),
            Err(_) => None,
        };
        if joined == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "peers did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
