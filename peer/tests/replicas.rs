//! Several scheduler replicas as they run in production, on loopback: three
//! `shoal-scheduler` processes on 127.0.0.2, .3 and .4 (one port, like pods behind a
//! headless Service), six `shoal-peer run` processes that find them through
//! `dns+https://shoal-scheduler-headless.test:PORT` (mutual TLS, each replica's
//! certificate verified for the Service name while it is dialled by IP). The name is
//! resolved by the daemon's test resolver, a hosts file it reads again every 5 s
//! (`--dev-scheduler-hosts-file`), through the same re-resolve loop as DNS.
//!
//! What is asserted is behaviour: every pull's bytes hash to the digest, how many
//! copies upstream served, and which replica knows the task's holders (its operator
//! API). No duration is asserted; waits only bound a hang, and the time the new owner
//! took to know every holder is printed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shoal_proto::{Digest, rendezvous};
use shoal_tests::blob;
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob};
use shoal_tests::upstream::CountingUpstream;

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const REPO: &str = "replicas/blob";
const PEERS: usize = 6;
const NAME: &str = "shoal-scheduler-headless.test";
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Bound on every wait (a hang, not a timing).
const WAIT: Duration = Duration::from_secs(180);

/// Polls `check` every 100 ms; panics after [`WAIT`], naming `what`.
async fn wait<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Complete holders of `digest` a replica lists (0 when it does not know the task
/// or does not answer).
async fn holders(r: &SchedulerProcess, digest: &str) -> u64 {
    r.task(digest)
        .await
        .and_then(|t| t["complete_holders"].as_u64())
        .unwrap_or(0)
}

fn hosts_file(path: &Path) {
    let text: String = IPS.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_six_peers_the_owner_of_the_task_killed_mid_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let port = std::net::TcpListener::bind(format!("{}:0", IPS[0]))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys: Vec<String> = IPS.iter().map(|ip| format!("{ip}:{port}")).collect();
    // A blob whose task the first replica owns: that is the one killed.
    let (data, digest) = (1..)
        .map(|seed| blob(SIZE, seed))
        .find(|(_, d)| {
            let d: Digest = d.parse().unwrap();
            rendezvous::owner(keys.iter().map(String::as_str), &d) == Some(keys[0].as_str())
        })
        .unwrap();
    let parsed: Digest = digest.parse().unwrap();
    let heir = rendezvous::owner(keys[1..].iter().map(String::as_str), &parsed).unwrap();
    let heir = keys.iter().position(|k| k == heir).unwrap();

    let mut replicas = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let addr: SocketAddr = key.parse().unwrap();
        let r = SchedulerProcess::start_on(
            &dir.path().join(format!("replica-{i}")),
            &tls,
            addr,
            &[NAME],
            &[],
        )
        .await
        .unwrap();
        replicas.push(r);
    }
    let hosts = dir.path().join("hosts");
    hosts_file(&hosts);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::from_millis(20))
        .await
        .unwrap();
    let opts = PeerOptions {
        scheduler: Some(format!("dns+https://{NAME}:{port}")),
        default_upstream: Some(upstream.url()),
        hosts_dir: None,
        tls_dir: tls,
        extra: vec![
            "--dev-scheduler-hosts-file".into(),
            hosts.display().to_string(),
        ],
    };
    let mut peers = Vec::new();
    for i in 0..PEERS {
        peers.push(
            PeerProcess::start(dir.path(), &format!("peer-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    for r in &replicas {
        r.wait_for_peers(PEERS).await.unwrap();
    }

    let pulls: Vec<_> = peers
        .iter()
        .map(|p| {
            let (m, d) = (p.mirror_url(), digest.clone());
            tokio::spawn(async move { pull_blob(&m, REPO, &d).await })
        })
        .collect();
    // Mid-swarm: half a copy has come from upstream.
    wait("half a copy from upstream", || async {
        upstream.bytes() >= SIZE as u64 / 2
    })
    .await;
    assert!(
        replicas[0].task(&digest).await.is_some(),
        "the owner plans the task"
    );
    replicas[0].kill();
    let killed = Instant::now();
    eprintln!(
        "killed the owner {} after {:.2} copies from upstream",
        keys[0],
        upstream.bytes() as f64 / SIZE as f64
    );
    // The task's next owner takes it over: the peers re-open their plans with it.
    wait("the heir plans the task", || async {
        replicas[heir].task(&digest).await.is_some()
    })
    .await;
    let taken_over = killed.elapsed();

    for (i, p) in pulls.into_iter().enumerate() {
        let (d, n) = p
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("pull {i} failed: {e}\nlog:\n{}", peers[i].log()));
        assert_eq!((d.as_str(), n), (digest.as_str(), SIZE as u64), "pull {i}");
    }
    // The task's next owner knows every holder. (The third replica may have heard of
    // it from a peer that briefly saw another live set: allowed, and printed.)
    wait("the heir knows every holder", || async {
        holders(&replicas[heir], &digest).await == PEERS as u64
    })
    .await;
    let owned_after = killed.elapsed();
    let other = 3 - heir;
    let other_knows = replicas[other].task(&digest).await.is_some();
    let copies = upstream.bytes() as f64 / SIZE as f64;
    let elections = replicas[heir]
        .task(&digest)
        .await
        .and_then(|t| t["elections"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "replicas: upstream {copies:.2} copies ({} GETs); the heir {} planned the task \
         {taken_over:.1?} after the kill and knew all {PEERS} holders {owned_after:.1?} after it \
         (when the pulls had ended); back-to-source elections at the heir: {elections}; \
         the third replica heard of the task: {other_knows}",
        upstream.served().gets.load(Ordering::SeqCst),
        keys[heir]
    );
    assert!(copies <= 1.5, "upstream served {copies:.2} copies");
    for r in &replicas[1..] {
        assert_eq!(r.peer_count().await, Some(PEERS), "peers stay joined");
    }
}
