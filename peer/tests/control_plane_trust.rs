//! The control plane under attack (issue 13): a real `shoal-scheduler` process serving
//! gRPC over mutual TLS, four honest `shoal-peer run` processes pulling one blob through
//! their mirrors, and a hostile client (this test, speaking the real gRPC API with a
//! valid certificate for node `mallory`) trying what a pod on the cluster network with a
//! stolen or issued certificate would try.
//!
//! What is asserted: each attempt is refused with a status that names why, the
//! scheduler's counters and the honest peers' holdings do not change, its RSS stays
//! within a stated bound, and the honest swarm completes with one upstream copy.
//! Clients without a certificate, with one from another CA, with an expired one or
//! speaking plain text are refused at the handshake. A panic in the scheduler ends its
//! process; the peers keep serving from upstream and re-join the restarted scheduler.
//! A rotated CA and serving certificate take effect without a restart. A source
//! caught lying about a task's piece hashes is not elected for it again, even after
//! the scheduler forgot the task.
//! No duration is asserted; waits only bound a hang.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use shoal_peer::tls::{Leaf, issue_dir};
use shoal_proto::limits::{JOIN_PAGE, MAX_MESSAGE};
use shoal_proto::v1;
use shoal_proto::v1::scheduler_client::SchedulerClient;
use shoal_tests::blob;
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob};
use shoal_tests::upstream::CountingUpstream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const MIB: usize = 1 << 20;
const SIZE: usize = 32 * MIB;
const REPO: &str = "trust/blob";
const TIB: u64 = 1 << 40;
/// The scheduler's peak RSS bound under the hostile load (measured: 15 MiB with the
/// honest load alone, 20 MiB with the hostile load added).
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// A gRPC channel to the scheduler as the holder of the certificate in `identity`
/// (a directory with `tls.crt` and `tls.key`), trusting the CA in `ca`.
async fn dial(
    sched: &SchedulerProcess,
    ca: &Path,
    identity: Option<&Path>,
) -> Result<SchedulerClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(ca.join("ca.crt")).unwrap(),
        ))
        .domain_name("127.0.0.1");
    if let Some(dir) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("tls.crt")).unwrap(),
            std::fs::read(dir.join("tls.key")).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(sched.grpc_url())
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(SchedulerClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB))
}

/// A cluster CA in `dir/tls` and a scheduler serving with it.
async fn scheduler(dir: &Path) -> (PathBuf, SchedulerProcess) {
    let tls = dir.join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let sched = SchedulerProcess::start(dir, &tls).await.unwrap();
    (tls, sched)
}

/// Issues a node certificate for `node` from the CA in `ca` into `dir/<node>`.
fn node_cert(ca: &Path, dir: &Path, node: &str, leaf: Option<Leaf>) -> PathBuf {
    let out = dir.join(format!("client-{node}"));
    let leaf = leaf.unwrap_or_else(|| Leaf::node(node, Duration::from_secs(86_400)));
    issue_dir(ca, &out, &leaf).unwrap();
    out
}

fn peer_info(id: &str) -> v1::PeerInfo {
    v1::PeerInfo {
        peer_id: id.into(),
        hostname: id.into(),
        quic_addr: "127.0.0.1:9".into(),
        upload_slots: 4,
        piece_rule: shoal_proto::piece::PIECE_RULE,
        ..Default::default()
    }
}

fn held(i: usize, size: u64) -> v1::HeldTask {
    v1::HeldTask {
        digest: format!("sha256:{i:064x}"),
        size,
        piece_hashes: Vec::new(),
    }
}

async fn join(
    c: &mut SchedulerClient<Channel>,
    id: &str,
    tasks: Vec<v1::HeldTask>,
) -> Result<(), Status> {
    c.join(v1::JoinRequest {
        peer: Some(peer_info(id)),
        tasks,
    })
    .await
    .map(|_| ())
}

/// Opens a session that sends `events` after `SessionOpen` as `id`; the status the
/// scheduler ends it with (or `Ok` if it is still open after the events).
async fn session(
    c: &mut SchedulerClient<Channel>,
    id: &str,
    events: Vec<v1::peer_event::Event>,
) -> Result<(), Status> {
    let mut all = vec![v1::PeerEvent {
        event: Some(v1::peer_event::Event::Open(v1::SessionOpen {
            peer_id: id.into(),
        })),
    }];
    all.extend(events.into_iter().map(|e| v1::PeerEvent { event: Some(e) }));
    let (tx, rx) = tokio::sync::mpsc::channel(all.len() + 1);
    for e in all {
        tx.send(e).await.unwrap();
    }
    let mut commands = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // A refusal ends the stream with its status; an accepted session stays open.
    match tokio::time::timeout(Duration::from_secs(2), commands.message()).await {
        Ok(Err(status)) => Err(status),
        _ => Ok(()),
    }
}

async fn plan(c: &mut SchedulerClient<Channel>, id: &str, digest: &str) -> Result<(), Status> {
    plan_sized(c, id, digest, 4 * MIB as u64).await
}

async fn plan_sized(
    c: &mut SchedulerClient<Channel>,
    id: &str,
    digest: &str,
    size: u64,
) -> Result<(), Status> {
    let mut updates = c
        .plan(v1::PlanRequest {
            peer_id: id.into(),
            digest: digest.into(),
            size,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The first update (or the refusal) arrives at once.
    match updates.message().await {
        Ok(_) => {
            // Keep the stream open, as a client hoarding plans would.
            tokio::spawn(async move { while let Ok(Some(_)) = updates.message().await {} });
            Ok(())
        }
        Err(s) => Err(s),
    }
}

fn expect_refused(what: &str, r: Result<(), Status>, code: Code, names: &str) {
    match r {
        Ok(()) => panic!("{what}: accepted"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(
                s.message().contains(names),
                "{what}: the status should name {names:?}: {s:?}"
            );
        }
    }
}

/// Keeps a session open as `id` with a heartbeat every second (so its lease lasts),
/// until the returned task is aborted.
fn keep_alive(mut c: SchedulerClient<Channel>, id: &str) -> tokio::task::JoinHandle<()> {
    let id = id.to_owned();
    tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let open = v1::peer_event::Event::Open(v1::SessionOpen { peer_id: id });
        tx.send(v1::PeerEvent { event: Some(open) }).await.unwrap();
        let mut commands = c
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = commands.message().await {} });
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let beat = v1::peer_event::Event::Heartbeat(v1::Heartbeat::default());
            if tx.send(v1::PeerEvent { event: Some(beat) }).await.is_err() {
                return;
            }
        }
    })
}

/// The holders of `digest` the scheduler lists.
async fn holders(sched: &SchedulerProcess, digest: &str) -> Vec<String> {
    let Some(task) = sched.task(digest).await else {
        return Vec::new();
    };
    let mut ids: Vec<String> = task["holders"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h["complete"] == true)
                .filter_map(|h| h["peer"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Polls `get` every 100 ms until it returns `want`; panics after 60 s (a hang).
async fn wait_for<T, F, Fut>(what: &str, mut get: F, want: T)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut last = None;
    for _ in 0..600 {
        let got = get().await;
        if got == want {
            return;
        }
        last = Some(got);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: still {last:?}, want {want:?}");
}

fn metric(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_node_is_refused_and_changes_nothing_while_an_honest_swarm_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let (data, digest) = blob(SIZE, 13);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::from_millis(20))
        .await
        .unwrap();
    let (tls, sched) = scheduler(dir.path()).await;
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: Some(upstream.url()),
        hosts_dir: None,
        tls_dir: tls.clone(),
        extra: Vec::new(),
    };
    let mut peers = Vec::new();
    for i in 0..4 {
        peers.push(
            PeerProcess::start(dir.path(), &format!("peer-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    sched.wait_for_peers(4).await.unwrap();
    let (_, honest_hwm) = sched.rss_kib().unwrap();

    // The honest swarm pulls while the attack runs.
    let pulls: Vec<_> = peers
        .iter()
        .map(|p| {
            let (m, d) = (p.mirror_url(), digest.clone());
            tokio::spawn(async move { pull_blob(&m, REPO, &d).await })
        })
        .collect();

    let mallory_cert = node_cert(&tls, dir.path(), "mallory", None);
    let mut mallory = dial(&sched, &tls, Some(&mallory_cert)).await.unwrap();

    // Claiming another node's identity: refused, whatever the call.
    expect_refused(
        "Join as peer-1",
        join(&mut mallory, "peer-1", vec![held(1, 1 << 20)]).await,
        Code::PermissionDenied,
        "mallory",
    );
    expect_refused(
        "Session as peer-1",
        session(&mut mallory, "peer-1", Vec::new()).await,
        Code::PermissionDenied,
        "mallory",
    );
    expect_refused(
        "Plan for peer-1",
        plan(&mut mallory, "peer-1", &format!("sha256:{:064x}", 7)).await,
        Code::PermissionDenied,
        "mallory",
    );

    // Oversized joins: more tasks than a page, and 100,000 blobs of 1 TiB.
    let page_plus_one = (0..=JOIN_PAGE).map(|i| held(i, TIB)).collect();
    expect_refused(
        "Join with a page too many",
        join(&mut mallory, "mallory", page_plus_one).await,
        Code::ResourceExhausted,
        &JOIN_PAGE.to_string(),
    );
    let huge = (0..100_000).map(|i| held(i, TIB)).collect();
    let r = join(&mut mallory, "mallory", huge).await;
    let s = r.expect_err("a Join of 100,000 blobs is refused");
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{s:?}"
    );
    assert!(
        s.message().contains(&MAX_MESSAGE.to_string()) || s.message().contains("message"),
        "the status names the message limit: {s:?}"
    );

    // Mallory may join as itself, with a bounded inventory.
    join(&mut mallory, "mallory", vec![held(1, 1 << 20)])
        .await
        .expect("mallory joins as itself");

    // "Evicting" peer-0's blob: events are always mallory's own, so this can only
    // ever be about mallory's holding, and mallory holds no such task.
    let evict = v1::peer_event::Event::Evicted(v1::TaskEvicted {
        digest: digest.clone(),
    });
    let s = session(&mut mallory, "mallory", vec![evict])
        .await
        .expect_err("evicting a task mallory does not hold");
    assert!(
        matches!(s.code(), Code::FailedPrecondition | Code::NotFound),
        "{s:?}"
    );
    assert!(s.message().contains(&digest), "{s:?}");

    // Mallory takes part in the honest task once its source is elected, then lies
    // about it: piece hashes it was not elected for, and 100 distinct bad parents
    // (the four honest peers, then invented ones). Both are ignored, not fatal:
    // the session stays open, and nobody is quarantined.
    let alive = keep_alive(mallory.clone(), "mallory");
    wait_for(
        "the honest task has its source",
        || async {
            sched.task(&digest).await.is_some_and(|t| {
                t["complete_holders"].as_u64() > Some(0)
                    || t["back_to_source"]
                        .as_array()
                        .is_some_and(|b| !b.is_empty())
            })
        },
        true,
    )
    .await;
    plan_sized(&mut mallory, "mallory", &digest, SIZE as u64)
        .await
        .expect("mallory may download the blob like anyone");
    let mut lies = vec![v1::peer_event::Event::Pieces(v1::PieceReport {
        digest: digest.clone(),
        pieces: (0..4)
            .map(|index| v1::PieceDone {
                index,
                hash: vec![0xEE; 32],
            })
            .collect(),
    })];
    lies.extend((0..100).map(|i| {
        let parent_id = if i < 4 {
            format!("peer-{i}")
        } else {
            format!("ghost-{i}")
        };
        v1::peer_event::Event::BadParent(v1::BadParent {
            digest: digest.clone(),
            parent_id,
            piece_index: 0,
            reason: "piece hash mismatch".into(),
        })
    }));
    session(&mut mallory, "mallory", lies)
        .await
        .expect("ignored reports do not end the session");
    for p in &sched.peers().await.expect("the operator API answers") {
        let id = p["id"].as_str().unwrap();
        assert_eq!(p["quarantined"], false, "{id} quarantined by mallory: {p}");
        assert_eq!(p["suspected"], id == "mallory", "{id}: {p}");
    }

    // 10,000 plan streams, 64 at a time: at most the per-peer cap open, the rest
    // refused. A session keeps mallory's lease alive meanwhile.
    let before = sched.metrics().await.unwrap();
    let results: Vec<Result<(), Status>> = futures::stream::iter(0..10_000u64)
        .map(|i| {
            let mut c = mallory.clone();
            async move { plan(&mut c, "mallory", &format!("sha256:{:064x}", 1_000_000 + i)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    alive.abort();
    let mut opened = 0;
    let mut refused = 0;
    for r in results {
        match r {
            Ok(()) => opened += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("plan streams open"), "{s:?}");
                refused += 1;
            }
        }
    }
    assert!(opened <= 256, "{opened} plans opened");
    assert_eq!(opened + refused, 10_000);
    let after = sched.metrics().await.unwrap();
    let tasks_added =
        metric(&after, "shoal_scheduler_tasks") - metric(&before, "shoal_scheduler_tasks");
    assert!(
        tasks_added <= opened as f64,
        "refused plans created tasks: {tasks_added} tasks for {opened} open plans"
    );

    // The honest swarm completed, with one upstream copy, and every peer holds it.
    for (i, p) in pulls.into_iter().enumerate() {
        let (d, n) = p
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("pull {i}: {e}\n{}", peers[i].log()));
        assert_eq!((d.as_str(), n), (digest.as_str(), SIZE as u64), "pull {i}");
    }
    let copies = upstream.bytes() as f64 / SIZE as f64;
    assert!(copies < 1.5, "upstream served {copies:.2} copies");
    let want: Vec<String> = (0..4).map(|i| format!("peer-{i}")).collect();
    wait_for(
        "every honest peer is a holder",
        || holders(&sched, &digest),
        want,
    )
    .await;

    // The refusals were counted, by reason.
    let m = sched.metrics().await.unwrap();
    for reason in [
        "identity",
        "join_tasks",
        "plans_per_peer",
        "hashes_not_elected",
        "bad_parent_not_offered",
        "bad_parent_reporter_suspected",
    ] {
        assert!(
            metric(
                &m,
                &format!("shoal_scheduler_refused_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "no refusal counted for {reason}: {m:?}"
        );
    }
    let (rss, hwm) = sched.rss_kib().unwrap();
    eprintln!(
        "scheduler RSS: honest load {} MiB, after the hostile load {} MiB (peak {} MiB); \
         plans opened {opened}, refused {refused}; upstream copies {copies:.2}",
        honest_hwm / 1024,
        rss / 1024,
        hwm / 1024
    );
    assert!(hwm <= RSS_BOUND_KIB, "scheduler peak RSS {hwm} KiB");
}

/// A node elected source that lies about a task's piece hashes: an honest node
/// assembles the blob, the digest disproves them (`DigestMismatch`), and the
/// scheduler drops everyone from the task, so it forgets the task. The liar then
/// opens the next plan first, claiming to stream from upstream: it is not made the
/// source again, the honest node is elected, and the liar's further reports on the
/// task are ignored without ending its session (it may still download the task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_caught_lying_about_hashes_is_not_elected_again() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, sched) = scheduler(dir.path()).await;
    let digest = format!("sha256:{:064x}", 0x5eed_u64);
    let size = 4 * MIB as u64;
    let pieces = shoal_proto::TaskShape::for_size(size)
        .unwrap()
        .piece_count();
    let mut clients = Vec::new();
    for node in ["mallory", "honest"] {
        let cert = node_cert(&tls, dir.path(), node, None);
        let mut c = dial(&sched, &tls, Some(&cert)).await.unwrap();
        join(&mut c, node, Vec::new()).await.unwrap();
        clients.push(c);
    }
    let (mut mallory, mut honest) = (clients.remove(0), clients.remove(0));
    let back_to_source = || {
        let (sched, digest) = (&sched, digest.clone());
        async move {
            sched
                .task(&digest)
                .await
                .map(|t| t["back_to_source"].clone())
        }
    };
    let lies = || {
        vec![
            v1::peer_event::Event::Started(v1::TaskStarted {
                digest: digest.clone(),
                size,
            }),
            v1::peer_event::Event::Pieces(v1::PieceReport {
                digest: digest.clone(),
                pieces: (0..pieces)
                    .map(|index| v1::PieceDone {
                        index,
                        hash: vec![0xEE; 32],
                    })
                    .collect(),
            }),
        ]
    };

    // Mallory asks first, is elected, and reports made-up hashes.
    plan_sized(&mut mallory, "mallory", &digest, size)
        .await
        .unwrap();
    assert_eq!(back_to_source().await, Some(serde_json::json!(["mallory"])));
    session(&mut mallory, "mallory", lies()).await.unwrap();
    wait_for(
        "the scheduler knows mallory's hashes",
        || async {
            sched
                .task(&digest)
                .await
                .map(|t| t["known_hashes"].as_u64())
        },
        Some(Some(u64::from(pieces))),
    )
    .await;

    // The honest node assembles the blob from them and it fails its digest.
    plan_sized(&mut honest, "honest", &digest, size)
        .await
        .unwrap();
    let mismatch = v1::peer_event::Event::DigestMismatch(v1::DigestMismatch {
        digest: digest.clone(),
    });
    session(&mut honest, "honest", vec![mismatch])
        .await
        .unwrap();
    wait_for("the task is forgotten", back_to_source, None).await;

    // Mallory re-opens first, claiming to stream from upstream: not the source.
    let mut updates = mallory
        .plan(v1::PlanRequest {
            peer_id: "mallory".into(),
            digest: digest.clone(),
            size,
            resumed: true,
            from_upstream: true,
        })
        .await
        .expect("mallory may still download the blob")
        .into_inner();
    let first = updates.message().await.unwrap().expect("a first update");
    assert!(!first.back_to_source, "mallory told to fetch from upstream");
    tokio::spawn(async move { while let Ok(Some(_)) = updates.message().await {} });
    assert_eq!(back_to_source().await, Some(serde_json::json!([])));
    plan_sized(&mut honest, "honest", &digest, size)
        .await
        .unwrap();
    // At once: mallory's re-open did not start a resume grace (which waits for an
    // old source to come back; mallory cannot be one).
    assert_eq!(back_to_source().await, Some(serde_json::json!(["honest"])));

    // Its lies are ignored now, and its session goes on.
    let before = sched.metrics().await.unwrap();
    let pieces_again = lies().split_off(1);
    session(&mut mallory, "mallory", pieces_again)
        .await
        .expect("ignored reports do not end the session");
    let task = sched.task(&digest).await.expect("the task");
    assert_eq!(task["known_hashes"], 0, "{task}");
    assert_eq!(task["bad_peers"], serde_json::json!(["mallory"]), "{task}");
    assert_eq!(
        task["back_to_source"],
        serde_json::json!(["honest"]),
        "{task}"
    );
    let key = "shoal_scheduler_refused_total{reason=\"reporter_bad_for_task\"}";
    let after = sched.metrics().await.unwrap();
    assert!(
        metric(&after, key) > metric(&before, key),
        "the ignored reports were not counted: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, sched) = scheduler(dir.path()).await;

    // Handshake refusals surface at connect or at the first call, depending on the
    // TLS version's message order: either way nothing gets through.
    async fn attempt(
        sched: &SchedulerProcess,
        ca: &Path,
        identity: Option<&Path>,
        id: &str,
    ) -> Result<(), String> {
        let mut c = dial(sched, ca, identity)
            .await
            .map_err(|e| format!("{e:?}"))?;
        join(&mut c, id, Vec::new())
            .await
            .map_err(|s| format!("{s:?}"))
    }

    // No client certificate.
    attempt(&sched, &tls, None, "anon")
        .await
        .expect_err("no client certificate");
    // A certificate from another CA.
    let other = dir.path().join("other-ca");
    PeerProcess::tls_init(&other).unwrap();
    let stranger = node_cert(&other, dir.path(), "stranger", None);
    attempt(&sched, &tls, Some(&stranger), "stranger")
        .await
        .expect_err("a certificate from another CA");
    // A certificate past its expiry.
    let now = SystemTime::now();
    let mut expired = Leaf::node("late", Duration::from_secs(1));
    expired.not_before = now - Duration::from_secs(7 * 86_400);
    expired.not_after = now - Duration::from_secs(86_400);
    let late = node_cert(&tls, dir.path(), "late", Some(expired));
    attempt(&sched, &tls, Some(&late), "late")
        .await
        .expect_err("an expired certificate");
    // Node B's key with node A's certificate.
    let a = node_cert(&tls, dir.path(), "node-a", None);
    let b = node_cert(&tls, dir.path(), "node-b", None);
    let mixed = dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(a.join("tls.crt"), mixed.join("tls.crt")).unwrap();
    std::fs::copy(b.join("tls.key"), mixed.join("tls.key")).unwrap();
    attempt(&sched, &tls, Some(&mixed), "node-a")
        .await
        .expect_err("node B's key cannot act as node A");
    // Plain text.
    let plain = async {
        let ch = Endpoint::from_shared(format!("http://{}", sched.grpc_addr()))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        join(&mut SchedulerClient::new(ch), "plain", Vec::new())
            .await
            .map_err(|s| s.to_string())
    };
    plain.await.expect_err("plain text");

    // The shared peer certificate, without --allow-shared-identity: the handshake
    // succeeds (it chains to the CA) but it names no node, so it may not act.
    let mut shared = dial(&sched, &tls, Some(&tls)).await.unwrap();
    expect_refused(
        "shared identity",
        join(&mut shared, "node-a", Vec::new()).await,
        Code::PermissionDenied,
        "shared",
    );

    // A valid node certificate works, so the refusals above were about the caller.
    let mut good = dial(&sched, &tls, Some(&a)).await.unwrap();
    join(&mut good, "node-a", Vec::new()).await.unwrap();
    assert_eq!(sched.peer_count().await, Some(1));
    let m = sched.metrics().await.unwrap();
    assert!(
        metric(
            &m,
            "shoal_scheduler_refused_total{reason=\"tls_handshake\"}"
        ) >= 4.0,
        "handshake refusals counted: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_the_scheduler_and_peers_serve_from_upstream_then_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let (data, digest) = blob(4 * MIB, 31);
    let upstream = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
        .await
        .unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let mut sched = SchedulerProcess::start_with(
        dir.path(),
        &tls,
        &["--test-panic-on-join".into(), "boom".into()],
    )
    .await
    .unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: Some(upstream.url()),
        hosts_dir: None,
        tls_dir: tls.clone(),
        extra: Vec::new(),
    };
    let peer = PeerProcess::start(dir.path(), "peer-0", &opts)
        .await
        .unwrap();
    sched.wait_for_peers(1).await.unwrap();

    let boom = node_cert(&tls, dir.path(), "boom", None);
    let mut c = dial(&sched, &tls, Some(&boom)).await.unwrap();
    let _ = join(&mut c, "boom", Vec::new()).await;
    let status = sched
        .wait_exit(Duration::from_secs(30))
        .expect("the scheduler exits after a panic");
    assert!(!status.success(), "exit status {status:?}");
    assert!(sched.log().contains("panicked"), "{}", sched.log());

    // The peer's mirror fails open: the blob comes from upstream.
    let (d, n) = pull_blob(&peer.mirror_url(), REPO, &digest).await.unwrap();
    assert_eq!((d.as_str(), n), (digest.as_str(), 4 * MIB as u64));

    // A fresh scheduler on the same address: the peer re-joins and announces it.
    sched.restart().await.unwrap();
    sched.wait_for_peers(1).await.unwrap();
    wait_for(
        "the re-joined peer announces what it holds",
        || holders(&sched, &digest),
        vec!["peer-0".to_owned()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_and_certificate_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = dir.path().join("tls");
    PeerProcess::tls_init(&old_ca).unwrap();
    let sched = SchedulerProcess::start(dir.path(), &old_ca).await.unwrap();
    let old_node = node_cert(&old_ca, dir.path(), "node-a", None);
    let mut c = dial(&sched, &old_ca, Some(&old_node)).await.unwrap();
    join(&mut c, "node-a", Vec::new()).await.unwrap();

    // The Secret is rotated to a new CA: the scheduler's directory gets the new CA,
    // serving certificate and key, as the kubelet would write them.
    let new_ca = dir.path().join("tls-new");
    PeerProcess::tls_init(&new_ca).unwrap();
    let staged = dir.path().join("staged");
    issue_dir(
        &new_ca,
        &staged,
        &Leaf::scheduler(vec!["127.0.0.1".into()], Duration::from_secs(86_400)),
    )
    .unwrap();
    for f in ["tls.key", "tls.crt", "ca.crt"] {
        std::fs::copy(staged.join(f), sched.tls_dir().join(f)).unwrap();
    }
    let new_node = node_cert(&new_ca, dir.path(), "node-b", None);
    wait_for(
        "a node certificate from the new CA is accepted",
        || async {
            match dial(&sched, &new_ca, Some(&new_node)).await {
                Ok(mut c) => join(&mut c, "node-b", Vec::new()).await.is_ok(),
                Err(_) => false,
            }
        },
        true,
    )
    .await;
    // New connections with the old CA's certificate are refused now.
    let old = async {
        let mut c = dial(&sched, &new_ca, Some(&old_node))
            .await
            .map_err(|e| e.to_string())?;
        join(&mut c, "node-a", Vec::new())
            .await
            .map_err(|s| s.to_string())
    };
    old.await
        .expect_err("a certificate of the retired CA is refused");
    assert!(sched.log().contains("reloaded"), "{}", sched.log());
}
