//! Stop-gap main job until the peer daemon lands: starts the real scheduler
//! (gRPC + operator API) on loopback, lets three peers join it over gRPC and
//! ask for the same 64 MiB blob, and moves pieces the way the plans say. The
//! bytes are not real yet (the QUIC data plane and the registry mirror are
//! the next issues), but every plan, election and report is the real
//! protocol. Prints where each peer's pieces came from and the scheduler's
//! own view of the task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1::{self, peer_event::Event, scheduler_client::SchedulerClient};
use shoal_proto::{PieceSet, TaskShape};
use shoal_scheduler::core::{CoreConfig, Scheduler};
use shoal_scheduler::metrics::Metrics;
use shoal_scheduler::state::SchedulerState;
use shoal_scheduler::{grpc, http};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SIZE: u64 = 64 << 20;
const DIGEST: &str = "sha256:5a0a15a0a15a0a15a0a15a0a15a0a15a0a15a0a15a0a15a0a15a0a15a0a15a0a";

fn piece_hash(i: u32) -> Vec<u8> {
    let mut h = vec![0x5a; 32];
    h[..4].copy_from_slice(&i.to_be_bytes());
    h
}

/// One peer: joins, opens its session and a plan, follows the plan.
async fn peer(addr: String, id: &'static str, n: u8) -> BTreeMap<String, u32> {
    let mut client = SchedulerClient::connect(addr).await.expect("connect");
    client
        .join(v1::JoinRequest {
            peer: Some(v1::PeerInfo {
                peer_id: id.into(),
                hostname: id.into(),
                quic_addr: format!("127.0.0.{n}:7651"),
                zone: "demo".into(),
                rack: String::new(),
                upload_slots: 4,
            }),
            tasks: vec![],
        })
        .await
        .expect("join");
    let (tx, rx) = mpsc::channel(64);
    tx.send(ev(Event::Open(v1::SessionOpen { peer_id: id.into() })))
        .await
        .unwrap();
    let _commands = client
        .session(ReceiverStream::new(rx))
        .await
        .expect("session");
    let mut plan = client
        .plan(v1::PlanRequest {
            peer_id: id.into(),
            digest: DIGEST.into(),
            size: 0,
        })
        .await
        .expect("plan")
        .into_inner();

    let mut sources: BTreeMap<String, u32> = BTreeMap::new();
    let mut mine = PieceSet::new(0);
    let mut shape: Option<TaskShape> = None;
    let mut hashes = PieceSet::new(0);
    let mut back_to_source = false;
    let mut parents: Vec<v1::Parent> = Vec::new();
    loop {
        // Take every update that is waiting, then move one piece.
        while let Ok(Some(u)) = tokio::time::timeout(Duration::from_millis(5), plan.message())
            .await
            .unwrap_or(Ok(None))
        {
            if let (None, Some(t)) = (shape, u.task) {
                let s = TaskShape::for_size(t.size).unwrap();
                shape = Some(s);
                mine = PieceSet::new(s.piece_count());
                hashes = PieceSet::new(s.piece_count());
            }
            for h in u.piece_hashes {
                hashes.insert(h.index);
            }
            back_to_source = u.back_to_source;
            parents = u.parents;
        }
        if back_to_source && shape.is_none() {
            tx.send(ev(Event::Started(v1::TaskStarted {
                digest: DIGEST.into(),
                size: SIZE,
            })))
            .await
            .unwrap();
            let s = TaskShape::for_size(SIZE).unwrap();
            shape = Some(s);
            mine = PieceSet::new(s.piece_count());
            hashes = PieceSet::new(s.piece_count());
        }
        let Some(s) = shape else { continue };
        let Some(next) = mine.first_missing() else {
            break;
        };
        let got = if back_to_source {
            tokio::time::sleep(Duration::from_millis(40)).await; // "upstream"
            Some(("upstream".to_string(), piece_hash(next)))
        } else {
            let from = parents.iter().find(|p| {
                p.complete
                    || shoal_proto::PieceSet::from_bytes(&p.pieces, s.piece_count())
                        .is_ok_and(|b| b.contains(next))
            });
            match from {
                Some(p) if hashes.contains(next) => {
                    tokio::time::sleep(Duration::from_millis(10)).await; // "a peer, over QUIC"
                    Some((p.peer_id.clone(), Vec::new()))
                }
                _ => None,
            }
        };
        if let Some((source, hash)) = got {
            mine.insert(next);
            *sources.entry(source).or_default() += 1;
            tx.send(ev(Event::Pieces(v1::PieceReport {
                digest: DIGEST.into(),
                pieces: vec![v1::PieceDone { index: next, hash }],
            })))
            .await
            .unwrap();
        }
    }
    tx.send(ev(Event::Complete(v1::TaskComplete {
        digest: DIGEST.into(),
    })))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sources
}

fn ev(e: Event) -> v1::PeerEvent {
    v1::PeerEvent { event: Some(e) }
}

#[tokio::main]
async fn main() {
    let state = SchedulerState::new(Scheduler::new(CoreConfig::default()));
    let metrics = Arc::new(Metrics::new());
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = format!("http://{}", grpc_listener.local_addr().unwrap());
    let http_addr = http_listener.local_addr().unwrap();
    tokio::spawn(grpc::serve(
        grpc_listener,
        state.clone(),
        metrics.clone(),
        std::future::pending(),
    ));
    tokio::spawn(http::serve(
        http_listener,
        http::router(state.clone(), metrics),
        std::future::pending(),
    ));
    tokio::spawn(grpc::run_ticker(
        state.clone(),
        Duration::from_millis(20),
        std::future::pending::<()>(),
    ));
    println!("scheduler: gRPC {grpc_addr}, operator API http://{http_addr}");
    println!(
        "three peers want the same {} MiB blob ({} pieces)...\n",
        SIZE >> 20,
        TaskShape::for_size(SIZE).unwrap().piece_count()
    );

    let peers = [("node-a", 1), ("node-b", 2), ("node-c", 3)];
    let mut handles = Vec::new();
    for (i, (id, n)) in peers.into_iter().enumerate() {
        let addr = grpc_addr.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
            (id, peer(addr, id, n).await)
        }));
    }
    println!(
        "{:<8} {:>10} {:>10}  from peers",
        "node", "pieces", "upstream"
    );
    let mut upstream = 0;
    for h in handles {
        let (id, sources) = h.await.unwrap();
        let total: u32 = sources.values().sum();
        let up = sources.get("upstream").copied().unwrap_or(0);
        upstream += up;
        let from_peers: Vec<String> = sources
            .iter()
            .filter(|(k, _)| *k != "upstream")
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        println!("{id:<8} {total:>10} {up:>10}  {}", from_peers.join(" "));
    }
    let pieces = TaskShape::for_size(SIZE).unwrap().piece_count();
    println!(
        "\nupstream egress: {upstream} of {pieces} pieces = {:.2} x the blob",
        upstream as f64 / pieces as f64
    );
    let detail = state.with_core(|core, now| core.task(now, &DIGEST.parse().unwrap()));
    println!("\nthe scheduler's view (GET /api/v1/tasks/{DIGEST}):");
    println!("{}", serde_json::to_string_pretty(&detail).unwrap());
    println!(
        "\nnot built yet: the peer daemon's QUIC data plane and registry mirror (so no containerd pull goes through Shoal yet)."
    );
}
