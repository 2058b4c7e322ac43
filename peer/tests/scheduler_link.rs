//! The peer's scheduler link against the real scheduler service on a real
//! socket: it joins with its inventory, reports over its session, survives a
//! scheduler that is not there yet, and re-joins a restarted scheduler, which
//! then knows every holder again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_peer::engine::PlanOpening;
use shoal_peer::scheduler_link::{Inventory, LinkConfig, LinkError, Report, SchedulerLink};
use shoal_proto::{Digest, v1};
use shoal_tests::eventually;
use shoal_tests::scheduler::InProcessScheduler;

struct Held(Vec<v1::HeldTask>);

impl Inventory for Held {
    fn held(&self) -> Vec<v1::HeldTask> {
        self.0.clone()
    }
}

const SIZE: u64 = shoal_proto::piece::MIN_PIECE_SIZE as u64 * 5 / 4; // 2 pieces

fn digest(n: u8) -> Digest {
    Digest::from_sha256([n; 32])
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
        quic_addr: format!("127.0.0.{n}:7651"),
        zone: String::new(),
        rack: String::new(),
        upload_slots: 0,
        piece_rule: shoal_proto::piece::PIECE_RULE,
        link_mbps: 0,
    }
}

/// Whether the scheduler knows `n` peers holding `digest(d)` complete.
async fn holders_are(sched: &InProcessScheduler, d: u8, n: u64) -> bool {
    sched.complete_holders(&digest(d).to_string()).await == n
}

fn link(url: String, id: &str, n: u8, inventory: Vec<v1::HeldTask>) -> SchedulerLink {
    let mut config = LinkConfig::new(vec![url], peer(id, n));
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    SchedulerLink::spawn(config, Arc::new(Held(inventory)), std::future::pending())
}

#[tokio::test]
async fn joins_with_inventory_and_reports_over_the_session() {
    let sched = InProcessScheduler::start().await;
    let url = sched.grpc_url.clone();
    let a = link(url.clone(), "a", 1, vec![held(1)]);
    let b = link(url, "b", 2, vec![]);
    assert!(a.wait_connected(Duration::from_secs(5)).await);
    assert!(b.wait_connected(Duration::from_secs(5)).await);
    let t = sched
        .task(&digest(1).to_string())
        .await
        .expect("task announced");
    assert_eq!(t["complete_holders"], 1);

    // b downloads task 1 from a: its plan offers a; its reports reach the core.
    let mut plan = b
        .plan(&digest(1), SIZE, PlanOpening::default())
        .await
        .unwrap();
    let u = plan.next().await.unwrap().unwrap();
    assert_eq!(u.parents.len(), 1);
    assert_eq!(u.parents[0].r.id, "a");
    b.report(Report::Pieces {
        digest: digest(1),
        pieces: vec![(0, None), (1, None)],
    });
    b.report(Report::Complete(digest(1)));
    sched
        .wait_for("b is a complete holder", || holders_are(&sched, 1, 2))
        .await;
}

#[tokio::test]
async fn no_scheduler_means_upstream_at_once_then_connects_when_it_appears() {
    // Reserve a port with nobody serving on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let a = link(format!("http://{addr}"), "a", 1, vec![held(3)]);
    let started = std::time::Instant::now();
    assert!(matches!(
        a.plan(&digest(3), 0, PlanOpening::default()).await,
        Err(LinkError::Unavailable)
    ));
    assert!(!a.is_connected());
    // Reports while disconnected are dropped, not queued for a later session.
    a.report(Report::Complete(digest(9)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "plan() must not wait for a scheduler"
    );

    let sched = InProcessScheduler::start_with(&["--grpc-listen", &addr.to_string()]).await;
    assert!(
        a.wait_connected(Duration::from_secs(10)).await,
        "link did not reconnect"
    );
    let t = sched
        .task(&digest(3).to_string())
        .await
        .expect("inventory re-announced");
    assert_eq!(t["holders"][0]["peer"], "a");
}

#[tokio::test]
async fn a_restarted_scheduler_knows_every_holder_after_the_peers_rejoin() {
    let sched = InProcessScheduler::start().await;
    let (addr, url) = (sched.grpc_addr, sched.grpc_url.clone());
    let peers: Vec<SchedulerLink> = (1..=3)
        .map(|n| link(url.clone(), &format!("p{n}"), n, vec![held(5)]))
        .collect();
    for p in &peers {
        assert!(p.wait_connected(Duration::from_secs(5)).await);
    }
    sched.stop().await;
    eventually("the links notice", || {
        peers.iter().all(|p| !p.is_connected())
    })
    .await;

    let sched = InProcessScheduler::start_with(&["--grpc-listen", &addr.to_string()]).await;
    sched
        .wait_for("all peers re-joined", || holders_are(&sched, 5, 3))
        .await;
}
