//! The scheduler link against several real scheduler replicas (in this process, real
//! gRPC on real loopback sockets): each task's holdings reach its owner (rendezvous
//! hashing), a replica that stops gives its tasks to the others, a replica that joins
//! the DNS answer takes only its share, and an open plan stays with the replica it
//! was opened with until that replica goes away.
//!
//! Membership from DNS is driven through the link's test resolver (a hosts file it
//! reads again at every resolution, `--dev-scheduler-hosts-file` on the daemon):
//! the replicas listen on 127.0.0.2, .3, .4 on one port, as a headless Service's
//! pods would on their own IPs. What is asserted is who knows what, through each
//! replica's operator API; waits only bound a hang.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_peer::engine::PlanOpening;
use shoal_peer::scheduler_link::{Inventory, LinkConfig, Report, SchedulerLink};
use shoal_proto::{Digest, rendezvous, v1};
use shoal_tests::scheduler::InProcessScheduler;

const SIZE: u64 = shoal_proto::piece::MIN_PIECE_SIZE as u64 * 5 / 4; // 2 pieces
const TASKS: u8 = 60;
const WAIT: Duration = Duration::from_secs(30);

struct Held(Vec<v1::HeldTask>);

impl Inventory for Held {
    fn held(&self) -> Vec<v1::HeldTask> {
        self.0.clone()
    }
}

fn digest(n: u8) -> Digest {
    let mut b = [n; 32];
    b[1] = n.wrapping_mul(71);
    Digest::from_sha256(b)
}

fn held(n: u8) -> v1::HeldTask {
    v1::HeldTask {
        digest: digest(n).to_string(),
        size: SIZE,
        piece_hashes: vec![vec![1; 32], vec![2; 32]],
    }
}

fn peer(id: &str, n: u8) -> v1::PeerInfo {
    v1::PeerInfo {
        peer_id: id.into(),
        hostname: id.into(),
        quic_addr: format!("127.0.1.{n}:7651"),
        zone: String::new(),
        rack: String::new(),
        upload_slots: 0,
        piece_rule: shoal_proto::piece::PIECE_RULE,
        link_mbps: 0,
    }
}

fn link(schedulers: Vec<String>, hosts: Option<&Path>, id: &str, n: u8) -> SchedulerLink {
    let mut config = LinkConfig::new(schedulers, peer(id, n));
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    config.resolve_interval = Duration::from_millis(100);
    config.hosts_file = hosts.map(Path::to_path_buf);
    let inventory = Held((0..TASKS).map(held).collect());
    SchedulerLink::spawn(config, Arc::new(inventory), std::future::pending())
}

/// A replica and the key peers hash it under (`IP:PORT`).
struct Replica {
    key: String,
    sched: InProcessScheduler,
}

async fn replica(addr: &str) -> Replica {
    let sched = InProcessScheduler::start_with(&["--grpc-listen", addr]).await;
    Replica {
        key: sched.grpc_addr.to_string(),
        sched,
    }
}

/// Whether each replica of `set` knows exactly the tasks it owns among `set`'s keys
/// (those it owned before a move may linger on a replica: `strict` false only
/// checks that every owner knows its tasks).
async fn owners_know(set: &[&Replica], strict: bool) -> bool {
    let keys: Vec<&str> = set.iter().map(|r| r.key.as_str()).collect();
    for r in set {
        let known = held_tasks(r).await;
        for n in 0..TASKS {
            let d = digest(n).to_string();
            let owner = rendezvous::owner(keys.iter().copied(), &digest(n)).unwrap();
            if r.key == owner && !known.contains(&d) {
                return false;
            }
            if strict && r.key != owner && known.contains(&d) {
                return false;
            }
        }
    }
    true
}

/// The digests a replica knows a complete holder of (`GET /api/v1/tasks`).
async fn held_tasks(r: &Replica) -> Vec<String> {
    let (_, body) = r.sched.get("/api/v1/tasks").await;
    body["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["complete_holders"].as_u64() >= Some(1))
        .filter_map(|t| t["digest"].as_str().map(str::to_string))
        .collect()
}

async fn eventually_owned(what: &str, set: &[&Replica], strict: bool) {
    let start = std::time::Instant::now();
    while !owners_know(set, strict).await {
        assert!(start.elapsed() < WAIT, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{what}: {:?}", start.elapsed());
}

#[tokio::test]
async fn static_replicas_each_know_their_share_and_a_stopped_ones_tasks_move() {
    let a = replica("127.0.0.1:0").await;
    let b = replica("127.0.0.1:0").await;
    let c = replica("127.0.0.1:0").await;
    let urls = vec![
        a.sched.grpc_url.clone(),
        b.sched.grpc_url.clone(),
        c.sched.grpc_url.clone(),
    ];
    let p = link(urls.clone(), None, "p", 1);
    let q = link(urls, None, "q", 2);
    assert!(p.wait_replicas(3, WAIT).await && q.wait_replicas(3, WAIT).await);
    // Each replica knows exactly its share, and each share is a fair one.
    eventually_owned("each replica knows its share", &[&a, &b, &c], true).await;
    for r in [&a, &b, &c] {
        let n = held_tasks(r).await.len();
        assert!(n > 0 && n < TASKS as usize, "{}: {n} tasks", r.key);
        assert_eq!(
            r.sched.peers().await.len(),
            2,
            "every peer joins every replica"
        );
    }

    // Reports go to the owner alone.
    let d = digest(200);
    let owner = p.owner(&d).unwrap();
    let mut plan = q.plan(&d, SIZE, PlanOpening::default()).await.unwrap();
    assert!(plan.next().await.unwrap().unwrap().back_to_source);
    q.report(Report::Started {
        digest: d,
        size: SIZE,
    });
    q.report(Report::Pieces {
        digest: d,
        pieces: vec![(0, Some([1; 32])), (1, Some([2; 32]))],
    });
    q.report(Report::Complete(d));
    for r in [&a, &b, &c] {
        if r.key == owner {
            r.sched
                .wait_for("the owner knows q holds the task", || async {
                    r.sched.complete_holders(&d.to_string()).await == 1
                })
                .await;
        }
    }
    for r in [&a, &b, &c] {
        if r.key != owner {
            assert!(r.sched.task(&d.to_string()).await.is_none(), "{}", r.key);
        }
    }

    // shoalctl asks every replica: each answer under its replica, and a task's
    // detail from its owner alone.
    // (tokio's process: the replicas answer on this test's runtime.)
    let ctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(shoal_tests::swarm::workspace_bin("shoalctl"));
        cmd.args(["--scheduler", &a.sched.http_url])
            .args([
                "--replica",
                &b.sched.http_url,
                "--replica",
                &c.sched.http_url,
            ])
            .args(["-o", "json"])
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
    let rows = all["replicas"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let listed: usize = rows
        .iter()
        .map(|r| r["answer"]["tasks"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        listed,
        TASKS as usize + 1,
        "each task listed once, by its owner"
    );
    let one = ctl(&["task", &d.to_string()]).await;
    let rows = one["replicas"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["replica"].as_str().unwrap().trim_end_matches('/'),
        [&a, &b, &c]
            .iter()
            .find(|r| r.key == owner)
            .unwrap()
            .sched
            .http_url
    );

    // Stop b: its tasks are announced to their next owner; a's and c's stay put.
    b.sched.stop().await;
    eventually_owned("b's tasks moved to a and c", &[&a, &c], false).await;
    assert_eq!(p.replicas(), {
        let mut v = vec![a.key.clone(), c.key.clone()];
        v.sort();
        v
    });
}

/// Rewrites the hosts file the peers' test resolver reads (in place, as a DNS
/// answer would change).
fn publish(hosts: &PathBuf, replicas: &[&Replica]) {
    let text: String = replicas
        .iter()
        .map(|r| {
            let ip = r.key.rsplit_once(':').unwrap().0;
            format!("{ip} shoal-scheduler-headless.test\n")
        })
        .collect();
    std::fs::write(hosts, text).unwrap();
}

#[tokio::test]
async fn replicas_from_dns_follow_the_answer_and_plans_stay_until_their_replica_goes() {
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = replica(&format!("127.0.0.2:{port}")).await;
    let b = replica(&format!("127.0.0.3:{port}")).await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    publish(&hosts, &[&a, &b]);
    let url = format!("dns+http://shoal-scheduler-headless.test:{port}");
    let p = link(vec![url.clone()], Some(&hosts), "p", 1);
    assert!(p.wait_replicas(2, WAIT).await);
    eventually_owned("two replicas from DNS", &[&a, &b], true).await;

    // A third replica appears in DNS: it takes only its share. A plan open for a
    // task it takes stays with the replica it was opened with (a download in flight
    // does not move to a replica that joins); a new plan goes to the new owner.
    let c = replica(&format!("127.0.0.4:{port}")).await;
    let keys3 = [a.key.as_str(), b.key.as_str(), c.key.as_str()];
    let moving = (100..=255)
        .map(digest)
        .find(|d| rendezvous::owner(keys3, d) == Some(c.key.as_str()))
        .unwrap();
    let staying = (100..=255)
        .map(digest)
        .find(|d| rendezvous::owner(keys3, d) != Some(c.key.as_str()))
        .unwrap();
    let mut moving_plan = p.plan(&moving, SIZE, PlanOpening::default()).await.unwrap();
    let mut staying_plan = p
        .plan(&staying, SIZE, PlanOpening::default())
        .await
        .unwrap();
    assert!(moving_plan.next().await.unwrap().is_ok());
    assert!(staying_plan.next().await.unwrap().is_ok());
    publish(&hosts, &[&a, &b, &c]);
    assert!(
        p.wait_replicas(3, WAIT).await,
        "the peer followed the answer"
    );
    eventually_owned("c took its share", &[&a, &b, &c], false).await;
    let c_tasks = held_tasks(&c).await.len();
    let c_share = (0..TASKS)
        .filter(|n| rendezvous::owner(keys3, &digest(*n)) == Some(c.key.as_str()))
        .count();
    assert_eq!(
        c_tasks, c_share,
        "the new replica got its share and no more"
    );
    assert_eq!(p.owner(&moving).as_deref(), Some(c.key.as_str()));
    let moving_was = rendezvous::owner([a.key.as_str(), b.key.as_str()], &moving).unwrap();
    let staying_at = rendezvous::owner(keys3, &staying).unwrap();
    for plan in [&mut moving_plan, &mut staying_plan] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), plan.next())
                .await
                .is_err(),
            "a plan open before the join is still open"
        );
    }
    let new_plan = p.plan(&moving, SIZE, PlanOpening::default()).await.unwrap();
    drop(new_plan);
    let [ra, rb] = [&a, &b];
    let at = |key: &str| if key == ra.key { ra } else { rb };
    at(moving_was)
        .sched
        .wait_for("the replica of the open plan knows it", || async {
            at(moving_was)
                .sched
                .task(&moving.to_string())
                .await
                .is_some()
        })
        .await;

    // a leaves the answer: the peer drops its session and a's tasks move to b and c;
    // the plans opened with a end (the engine would re-open them with the new owner),
    // the others stay open.
    publish(&hosts, &[&b, &c]);
    let start = std::time::Instant::now();
    while p.replicas().len() != 2 {
        assert!(start.elapsed() < WAIT, "a never left the set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually_owned("a's tasks moved to b and c", &[&b, &c], false).await;
    for (plan, at) in [
        (&mut moving_plan, moving_was),
        (&mut staying_plan, staying_at),
    ] {
        let next = tokio::time::timeout(Duration::from_millis(500), plan.next()).await;
        if at == a.key {
            assert!(
                matches!(next, Ok(None)),
                "a plan opened with the replica that left ends"
            );
        } else {
            assert!(
                next.is_err(),
                "a plan opened with a replica that stays is open"
            );
        }
    }
}
