//! Several scheduler replicas as they run in production, on loopback
//! ([`shoal_tests::replica_swarm`]): `shoal-scheduler` processes on 127.0.0.2, .3, …
//! (one port, like pods behind a headless Service) and `shoal-peer run` processes that
//! find them through `dns+https://shoal-scheduler-headless.test:PORT` (mutual TLS),
//! the name resolved from a hosts file the daemons read again every 5 s, rewritten
//! as Kubernetes rewrites the Service.
//!
//! What is asserted is behaviour: every pull's bytes hash to the digest, how many
//! copies upstream served, and which replica knows which task's holders (its operator
//! API). No duration is asserted; waits only bound a hang, and timings are printed.
//!
//! The tests run one at a time (each starts up to 15 processes): [`SERIAL`].

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shoal_tests::replica_swarm::{Pull, ReplicaSwarm, layers_owned_by, owner, wait};
use shoal_tests::upstream::CountingUpstream;

const MIB: usize = 1 << 20;
const REPO: &str = "replicas/blob";
/// The replicas' addresses at the start.
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Where the replicas of a rolling update come up (a replaced pod has a new IP).
const NEW_IPS: [&str; 3] = ["127.0.0.5", "127.0.0.6", "127.0.0.7"];
/// Layers of the rollouts: 2 pieces each.
const LAYER: usize = 8 * MIB;

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Complete holders of `digest` a replica lists (0 when it does not know the task
/// or does not answer).
async fn holders(r: &shoal_tests::swarm::SchedulerProcess, digest: &str) -> u64 {
    r.task(digest)
        .await
        .and_then(|t| t["complete_holders"].as_u64())
        .unwrap_or(0)
}

/// Awaits every pull: each must succeed with the right bytes.
async fn all_right(swarm: &ReplicaSwarm, pulls: Vec<Pull>, size: usize) {
    for p in pulls {
        let (d, n) = p.handle.await.unwrap().unwrap_or_else(|e| {
            panic!(
                "peer-{} pull of {} failed: {e}\nlog:\n{}",
                p.peer,
                p.digest,
                swarm.peers[p.peer].log()
            )
        });
        assert_eq!((&d, n), (&p.digest, size as u64), "peer-{}", p.peer);
    }
}

/// Waits until each layer's owner among the running replicas lists every peer as a
/// complete holder.
async fn owners_know_every_holder(swarm: &ReplicaSwarm, digests: &[String]) {
    let keys = swarm.keys();
    let n = swarm.peers.len() as u64;
    for d in digests {
        let o = owner(keys.iter().map(String::as_str), d);
        let r = swarm.by_key(&o);
        wait(&format!("{o} knows the {n} holders of {d}"), || async {
            holders(r, d).await == n
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_six_peers_the_owner_of_the_task_killed_mid_swarm() {
    const SIZE: usize = 64 * MIB;
    const PEERS: usize = 6;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut swarm = ReplicaSwarm::start(dir.path(), &IPS).await.unwrap();
    let keys = swarm.keys();
    // A blob whose task the first replica owns: that is the one killed.
    let (data, digest) = layers_owned_by(&keys, &[&keys[0]], &[1], SIZE, 1).remove(0);
    let heir = owner(keys[1..].iter().map(String::as_str), &digest);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::from_millis(20))
        .await
        .unwrap();
    swarm.set_upstream(&upstream.url());
    swarm.add_peers(PEERS).await.unwrap();
    for ip in IPS {
        swarm.wait_live(ip).await;
    }

    let pulls = swarm.pull(0..PEERS, REPO, std::slice::from_ref(&digest));
    // Mid-swarm: half a copy has come from upstream.
    wait("half a copy from upstream", || async {
        upstream.bytes() >= SIZE as u64 / 2
    })
    .await;
    assert!(
        swarm.replica(IPS[0]).task(&digest).await.is_some(),
        "the owner plans the task"
    );
    swarm.kill_replica(IPS[0]);
    let killed = Instant::now();
    eprintln!(
        "killed the owner {} after {:.2} copies from upstream",
        keys[0],
        upstream.bytes() as f64 / SIZE as f64
    );
    // The task's next owner takes it over: the peers re-open their plans with it.
    let h = swarm.by_key(&heir);
    wait("the heir plans the task", || async {
        h.task(&digest).await.is_some()
    })
    .await;
    let taken_over = killed.elapsed();

    all_right(&swarm, pulls, SIZE).await;
    // The task's next owner knows every holder. (The third replica may have heard of
    // it from a peer that briefly saw another live set: allowed, and printed.)
    wait("the heir knows every holder", || async {
        holders(h, &digest).await == PEERS as u64
    })
    .await;
    let owned_after = killed.elapsed();
    let other = keys[1..].iter().find(|k| **k != heir).unwrap();
    let other_knows = swarm.by_key(other).task(&digest).await.is_some();
    let copies = upstream.bytes() as f64 / SIZE as f64;
    let elections = h
        .task(&digest)
        .await
        .and_then(|t| t["elections"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "replicas: upstream {copies:.2} copies ({} GETs); the heir {heir} planned the task \
         {taken_over:.1?} after the kill and knew all {PEERS} holders {owned_after:.1?} after it \
         (when the pulls had ended); back-to-source elections at the heir: {elections}; \
         the third replica heard of the task: {other_knows}",
        upstream.served().gets.load(Ordering::SeqCst),
    );
    assert!(copies <= 1.5, "upstream served {copies:.2} copies");
    for r in swarm.replicas.values() {
        assert_eq!(r.peer_count().await, Some(PEERS), "peers stay joined");
    }
}

/// The scheduler Deployment's rolling update as the chart sets it (`maxSurge: 1`,
/// `maxUnavailable: 0`), one replica at a time: the replacement comes up on a new IP
/// and joins the Service, and once every peer has joined it the old pod leaves the
/// Service and gets SIGTERM; then the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_all_three_replicas_during_a_12_node_swarm() {
    const PEERS: usize = 12;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut swarm = ReplicaSwarm::start(dir.path(), &IPS).await.unwrap();
    let keys = swarm.keys();
    let owners: Vec<&str> = keys.iter().map(String::as_str).collect();
    // Six layers, two owned by each replica: every stop moves tasks in flight.
    let layers = layers_owned_by(&keys, &owners, &[2, 2, 2], LAYER, 1);
    let digests: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let total = (LAYER * layers.len()) as f64;
    // A slow upstream (about 2 MiB/s a layer): the swarm lasts through the update.
    let upstream = CountingUpstream::start_blobs(REPO, layers, Duration::from_millis(120))
        .await
        .unwrap();
    swarm.set_upstream(&upstream.url());
    swarm.add_peers(PEERS).await.unwrap();
    for ip in IPS {
        swarm.wait_live(ip).await;
    }

    let pulls = swarm.pull(0..PEERS, REPO, &digests);
    let start = Instant::now();
    wait("the swarm under way", || async { upstream.bytes() > 0 }).await;
    for (old, new) in IPS.iter().zip(NEW_IPS) {
        swarm.start_replica(new).await.unwrap();
        swarm.wait_live(new).await;
        let in_flight = pulls.iter().filter(|p| !p.handle.is_finished()).count();
        let copies = upstream.bytes() as f64 / total;
        swarm.stop_replica(old).await.unwrap();
        eprintln!(
            "{:.1?}: replaced {old} by {new} (pulls in flight at the stop: {in_flight}, \
             upstream {copies:.2} copies then)",
            start.elapsed()
        );
    }
    all_right(&swarm, pulls, LAYER).await;
    let copies = upstream.bytes() as f64 / total;
    eprintln!(
        "rolling restart: {PEERS} peers × {} layers pulled in {:.1?}, upstream {copies:.2} copies \
         ({} GETs)",
        digests.len(),
        start.elapsed(),
        upstream.served().gets.load(Ordering::SeqCst)
    );
    // The new replicas own every task and know every holder: later pulls share.
    owners_know_every_holder(&swarm, &digests).await;
    // The peers' metrics: three live replicas, and what moved.
    for p in &swarm.peers {
        wait(&format!("{} sees 3 replicas", p.name), || async {
            p.metric("shoal_peer_scheduler_replicas").await == 3.0
        })
        .await;
    }
    let mut moved = [0.0; 3];
    let names = [
        "shoal_peer_scheduler_task_moves_total",
        "shoal_peer_scheduler_plan_moves_total",
        "shoal_peer_scheduler_completions_handed_over_total",
    ];
    for p in &swarm.peers {
        for (m, name) in moved.iter_mut().zip(names) {
            *m += p.metric(name).await;
        }
    }
    eprintln!(
        "rolling restart, the peers' metrics summed: {} task moves, {} plan moves, {} \
         completions handed over",
        moved[0], moved[1], moved[2]
    );
    assert!(copies <= 1.2, "upstream served {copies:.2} copies");
}

/// A replica appears in the Service mid-rollout (a scale-up): the tasks that change
/// owner are exactly those rendezvous hashing gives it, and the swarm keeps sharing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_during_a_rollout_takes_only_its_share() {
    const PEERS: usize = 12;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut swarm = ReplicaSwarm::start(dir.path(), &IPS[..2]).await.unwrap();
    let keys3: Vec<String> = IPS.iter().map(|ip| swarm.key(ip)).collect();
    let owners: Vec<&str> = keys3.iter().map(String::as_str).collect();
    // Among the three, two layers go to the new replica, two stay with each other one
    // (with two replicas, their owner was one of those two: rendezvous hashing).
    let layers = layers_owned_by(&keys3, &owners, &[2, 2, 2], LAYER, 100);
    let digests: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let moving: BTreeSet<String> = digests
        .iter()
        .filter(|d| owner(owners.iter().copied(), d) == keys3[2])
        .cloned()
        .collect();
    let total = (LAYER * layers.len()) as f64;
    let upstream = CountingUpstream::start_blobs(REPO, layers, Duration::from_millis(60))
        .await
        .unwrap();
    swarm.set_upstream(&upstream.url());
    swarm.add_peers(PEERS).await.unwrap();
    for ip in &IPS[..2] {
        swarm.wait_live(ip).await;
    }

    let pulls = swarm.pull(0..PEERS, REPO, &digests);
    let start = Instant::now();
    wait("a quarter of a copy from upstream", || async {
        upstream.bytes() as f64 >= total / 4.0
    })
    .await;
    let in_flight = pulls.iter().filter(|p| !p.handle.is_finished()).count();
    swarm.start_replica(IPS[2]).await.unwrap();
    swarm.wait_live(IPS[2]).await;
    eprintln!(
        "{:.1?}: {} joined (pulls in flight when it started: {in_flight})",
        start.elapsed(),
        keys3[2]
    );
    all_right(&swarm, pulls, LAYER).await;
    let copies = upstream.bytes() as f64 / total;
    owners_know_every_holder(&swarm, &digests).await;
    // The new replica knows its share of the tasks, and nothing else: no other task
    // moved.
    let known: BTreeSet<String> = swarm
        .replica(IPS[2])
        .task_digests()
        .await
        .unwrap()
        .into_iter()
        .collect();
    eprintln!(
        "replica added: upstream {copies:.2} copies ({} GETs); the new replica took {} of {} \
         tasks",
        upstream.served().gets.load(Ordering::SeqCst),
        known.len(),
        digests.len()
    );
    assert_eq!(known, moving, "the tasks that moved to the new replica");
    assert!(copies <= 1.2, "upstream served {copies:.2} copies");

    // shoalctl names each task's owner: the new replica owns all it lists, and
    // what the others list of the moved tasks is from before the move.
    let port = keys3[0].rsplit_once(':').unwrap().1;
    let ctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(shoal_tests::swarm::workspace_bin("shoalctl"));
        cmd.args(["--scheduler", &swarm.replica(IPS[0]).http_url()])
            .args(["--replica", &swarm.replica(IPS[1]).http_url()])
            .args(["--replica", &swarm.replica(IPS[2]).http_url()])
            .args(["--grpc-port", port, "-o", "json"])
            .args(args);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    let all = ctl(&["tasks"]).await;
    for row in all["replicas"].as_array().unwrap() {
        let not_owned: BTreeSet<String> = row["not_owned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        if row["key"] == keys3[2].as_str() {
            assert!(not_owned.is_empty(), "{row}");
        } else {
            assert!(not_owned.is_subset(&moving), "{row}");
        }
    }
    let d = moving.iter().next().unwrap();
    for row in ctl(&["task", d]).await["replicas"].as_array().unwrap() {
        assert_eq!(row["owner"], keys3[2].as_str(), "{row}");
    }
}

/// Nodes join mid-rollout (a scale-out): they pull from the peers that have, or are
/// fetching, every layer, and nothing from upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_added_during_a_rollout_fetch_nothing_from_upstream() {
    const FIRST: usize = 8;
    const ADDED: usize = 4;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut swarm = ReplicaSwarm::start(dir.path(), &IPS).await.unwrap();
    let keys = swarm.keys();
    let owners: Vec<&str> = keys.iter().map(String::as_str).collect();
    let layers = layers_owned_by(&keys, &owners, &[2, 2, 2], LAYER, 200);
    let digests: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let total = (LAYER * layers.len()) as f64;
    let upstream = CountingUpstream::start_blobs(REPO, layers, Duration::from_millis(200))
        .await
        .unwrap();
    swarm.set_upstream(&upstream.url());
    swarm.add_peers(FIRST).await.unwrap();
    for ip in IPS {
        swarm.wait_live(ip).await;
    }

    let mut pulls = swarm.pull(0..FIRST, REPO, &digests);
    // A slow upstream (1.25 MiB/s a layer): the added nodes start while it serves.
    wait("a quarter of a copy from upstream", || async {
        upstream.bytes() as f64 >= total / 4.0
    })
    .await;
    swarm.add_peers(ADDED).await.unwrap();
    for ip in IPS {
        swarm.wait_live(ip).await;
    }
    let copies_then = upstream.bytes() as f64 / total;
    pulls.extend(swarm.pull(FIRST..FIRST + ADDED, REPO, &digests));
    all_right(&swarm, pulls, LAYER).await;
    let copies = upstream.bytes() as f64 / total;
    let mut from_upstream = Vec::new();
    for p in &swarm.peers[FIRST..] {
        from_upstream.push(p.metric("shoal_peer_bytes_from_upstream_total").await);
    }
    eprintln!(
        "scale-out: {ADDED} nodes added at {copies_then:.2} copies from upstream; upstream \
         {copies:.2} copies at the end; the added nodes fetched {from_upstream:?} bytes from \
         upstream"
    );
    owners_know_every_holder(&swarm, &digests).await;
    assert!(
        from_upstream.iter().all(|b| *b == 0.0),
        "the added nodes fetched from upstream: {from_upstream:?}"
    );
    assert!(copies <= 1.2, "upstream served {copies:.2} copies");
}
