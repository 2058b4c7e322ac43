//! The gRPC adapter over a real socket: a tonic client talks to the served
//! `shoal.v1.Scheduler` on 127.0.0.1. Covers the protocol's happy path
//! (back-to-source order, plans that grow as parents gain pieces, departure)
//! and every kind of bad input: each gets a status that says why, and the
//! scheduler's state is the same afterwards.

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1::{self, peer_event::Event, scheduler_client::SchedulerClient};
use shoal_scheduler::core::{CoreConfig, Scheduler};
use shoal_scheduler::grpc;
use shoal_scheduler::metrics::Metrics;
use shoal_scheduler::state::SchedulerState;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const SIZE: u64 = 2 * shoal_proto::piece::MIN_PIECE_SIZE as u64 + 100; // 3 pieces

struct Server {
    addr: std::net::SocketAddr,
    state: Arc<SchedulerState>,
    metrics: Arc<Metrics>,
    _stop: oneshot::Sender<()>,
}

async fn start(ttl: Duration) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = SchedulerState::new(Scheduler::new(CoreConfig {
        peer_ttl: ttl,
        ..CoreConfig::default()
    }));
    let (stop, stopped) = oneshot::channel::<()>();
    let (tick_stop, tick_stopped) = oneshot::channel::<()>();
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(grpc::serve(
        listener,
        state.clone(),
        metrics.clone(),
        async move {
            let _ = stopped.await;
            let _ = tick_stop.send(());
        },
    ));
    tokio::spawn(grpc::run_ticker(
        state.clone(),
        Duration::from_millis(20),
        async move {
            let _ = tick_stopped.await;
        },
    ));
    Server {
        addr,
        state,
        metrics,
        _stop: stop,
    }
}

async fn client(addr: std::net::SocketAddr) -> SchedulerClient<Channel> {
    SchedulerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn peer(id: &str, n: u8) -> v1::PeerInfo {
    v1::PeerInfo {
        peer_id: id.into(),
        hostname: format!("node-{n}"),
        quic_addr: format!("127.0.0.{n}:7651"),
        zone: "z1".into(),
        rack: String::new(),
        upload_slots: 0,
        piece_rule: shoal_proto::piece::PIECE_RULE,
        link_mbps: 0,
    }
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn hash(i: u32) -> Vec<u8> {
    vec![i as u8 + 1; 32]
}

struct Session {
    tx: mpsc::Sender<v1::PeerEvent>,
    rx: Streaming<v1::SchedulerCommand>,
}

impl Session {
    async fn open(c: &mut SchedulerClient<Channel>, id: &str) -> Result<Session, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(ev(Event::Open(v1::SessionOpen { peer_id: id.into() })))
            .await
            .unwrap();
        let rx = c.session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Session { tx, rx })
    }

    async fn send(&self, e: Event) {
        self.tx.send(ev(e)).await.unwrap();
    }

    /// The status the scheduler ended the session with.
    async fn closed_with(mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("session did not end")
        {
            Err(s) => s,
            Ok(m) => panic!("expected the session to end with an error, got {m:?}"),
        }
    }
}

fn ev(e: Event) -> v1::PeerEvent {
    v1::PeerEvent { event: Some(e) }
}

async fn join(c: &mut SchedulerClient<Channel>, id: &str, n: u8) {
    let joined = c
        .join(v1::JoinRequest {
            peer: Some(peer(id, n)),
            tasks: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    // The scheduler names its piece rule, so a peer of another rule can leave.
    assert_eq!(joined.piece_rule, shoal_proto::piece::PIECE_RULE);
}

async fn next_update(s: &mut Streaming<v1::PlanUpdate>) -> v1::PlanUpdate {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("no plan update within 5 s")
        .unwrap()
        .expect("plan stream ended")
}

fn plan(id: &str, d: &str, size: u64) -> v1::PlanRequest {
    v1::PlanRequest {
        peer_id: id.into(),
        digest: d.into(),
        size,
        ..Default::default()
    }
}

#[tokio::test]
async fn source_then_parents_with_pieces_then_departure() {
    let server = start(Duration::from_secs(1)).await;
    let mut c = client(server.addr).await;
    join(&mut c, "a", 1).await;
    join(&mut c, "b", 2).await;
    let sa = Session::open(&mut c, "a").await.unwrap();
    let sb = Session::open(&mut c, "b").await.unwrap();
    // b stays alive the way a peer does: heartbeats well within its lease.
    let heartbeats = sb.tx.clone();
    tokio::spawn(async move {
        while heartbeats
            .send(ev(Event::Heartbeat(v1::Heartbeat::default())))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let d = digest(1);

    // The first requester is told to fetch from upstream.
    let mut pa = c.plan(plan("a", &d, 0)).await.unwrap().into_inner();
    let first = next_update(&mut pa).await;
    assert!(first.back_to_source);
    assert!(first.task.is_none(), "size is not known yet");

    // The second waits; once the source reports pieces, b is offered a with them.
    let mut pb = c.plan(plan("b", &d, 0)).await.unwrap().into_inner();
    let waiting = next_update(&mut pb).await;
    assert!(!waiting.back_to_source);
    sa.send(Event::Started(v1::TaskStarted {
        digest: d.clone(),
        size: SIZE,
    }))
    .await;
    sa.send(Event::Pieces(v1::PieceReport {
        digest: d.clone(),
        pieces: vec![
            v1::PieceDone {
                index: 0,
                hash: hash(0),
            },
            v1::PieceDone {
                index: 1,
                hash: hash(1),
            },
        ],
    }))
    .await;
    let mut update = next_update(&mut pb).await;
    while update
        .parents
        .first()
        .is_none_or(|p| p.pieces != vec![0b011])
    {
        update = next_update(&mut pb).await;
    }
    let shape = update.task.expect("shape known");
    assert_eq!((shape.size, shape.piece_count), (SIZE, 3));
    assert_eq!(update.parents.len(), 1);
    assert_eq!(update.parents[0].peer_id, "a");
    assert_eq!(update.parents[0].quic_addr, "127.0.0.1:7651");
    let mut hashes: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut u = Some(update);
    // Hashes arrive once each, possibly spread over updates.
    while hashes.len() < 2 {
        let up = match u.take() {
            Some(up) => up,
            None => next_update(&mut pb).await,
        };
        hashes.extend(up.piece_hashes.into_iter().map(|h| (h.index, h.hash)));
    }
    hashes.sort();
    assert_eq!(hashes, vec![(0, hash(0)), (1, hash(1))]);

    // The source goes away without a word: its plan stream ends, so b is told
    // to fetch from upstream itself; after its lease (1 s) a leaves the swarm.
    drop(sa);
    drop(pa);
    let mut became_source = false;
    for _ in 0..50 {
        let u = next_update(&mut pb).await;
        if u.back_to_source {
            assert!(u.parents.is_empty());
            became_source = true;
            break;
        }
    }
    assert!(became_source, "b was never elected after a left");
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids = server
            .state
            .with_core(|core, now| core.peers(now))
            .into_iter()
            .map(|p| p.id)
            .collect();
        if ids == ["b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids, vec!["b"], "a's lease did not expire");
    let task = server
        .state
        .with_core(|core, now| core.task(now, &d.parse().unwrap()))
        .unwrap();
    assert_eq!(
        task.holders
            .iter()
            .map(|h| h.peer.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
}

/// The link rates peers declare at join reach the election over the wire: the
/// slower peer opens its plan first and waits, the faster one opening next is
/// told to fetch from upstream. A rate above 10 Tbit/s is refused.
#[tokio::test]
async fn the_faster_of_two_downloaders_is_elected_by_declared_link_rate() {
    let server = start(Duration::from_secs(30)).await;
    let mut c = client(server.addr).await;
    for (id, n, mbps) in [("slow", 1, 1000), ("fast", 2, 10_000)] {
        c.join(v1::JoinRequest {
            peer: Some(v1::PeerInfo {
                link_mbps: mbps,
                ..peer(id, n)
            }),
            tasks: vec![],
        })
        .await
        .unwrap();
    }
    let rates: Vec<(String, u32)> = server
        .state
        .with_core(|core, now| core.peers(now))
        .into_iter()
        .map(|p| (p.id, p.link_mbps))
        .collect();
    assert_eq!(rates, [("fast".into(), 10_000), ("slow".into(), 1000)]);
    let d = digest(3);
    let mut slow = c.plan(plan("slow", &d, 0)).await.unwrap().into_inner();
    assert!(!next_update(&mut slow).await.back_to_source);
    let mut fast = c.plan(plan("fast", &d, 0)).await.unwrap().into_inner();
    assert!(next_update(&mut fast).await.back_to_source);
    let task = server
        .state
        .with_core(|core, now| core.task(now, &d.parse().unwrap()))
        .unwrap();
    assert_eq!(task.summary.back_to_source, ["fast"]);

    let refused = c
        .join(v1::JoinRequest {
            peer: Some(v1::PeerInfo {
                link_mbps: shoal_scheduler::core::MAX_LINK_MBPS + 1,
                ..peer("absurd", 4)
            }),
            tasks: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("link rate"), "{refused:?}");
}

/// A fingerprint of the state that a refused input must leave alone.
/// The operator's view of plan latency: each stream's first update is timed
/// once, from the request's arrival to the update leaving for the wire.
#[tokio::test]
async fn a_plan_streams_first_update_is_timed_in_the_metrics() {
    let server = start(Duration::from_secs(30)).await;
    let count = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("shoal_scheduler_plan_first_update_seconds_count "))
            .map(|v| v.trim().parse::<u64>().unwrap())
    };
    assert_eq!(count(&server.metrics.encode(&server.state)), Some(0));
    let mut c = client(server.addr).await;
    join(&mut c, "a", 1).await;
    join(&mut c, "b", 2).await;
    let sa = Session::open(&mut c, "a").await.unwrap();
    let _sb = Session::open(&mut c, "b").await.unwrap();
    let mut pa = c
        .plan(plan("a", &digest(1), SIZE))
        .await
        .unwrap()
        .into_inner();
    assert!(next_update(&mut pa).await.back_to_source);
    let mut pb = c
        .plan(plan("b", &digest(1), SIZE))
        .await
        .unwrap()
        .into_inner();
    next_update(&mut pb).await;
    // A second update on a stream is not a first one: a's source reports a piece,
    // b's plan changes, and the count stays at two.
    sa.send(Event::Pieces(v1::PieceReport {
        digest: digest(1),
        pieces: vec![v1::PieceDone {
            index: 0,
            hash: hash(0),
        }],
    }))
    .await;
    next_update(&mut pb).await;
    let text = server.metrics.encode(&server.state);
    assert_eq!(count(&text), Some(2), "{text}");
    assert!(
        text.contains("shoal_scheduler_plan_first_update_seconds_bucket{le=\"0.005\"}"),
        "{text}"
    );
}

fn fingerprint(state: &SchedulerState) -> String {
    state.with_core(|core, now| {
        let tasks = core.tasks(now);
        let details: Vec<_> = tasks.iter().map(|t| core.task(now, &t.digest)).collect();
        let peers: Vec<_> = core
            .peers(now)
            .into_iter()
            .map(|p| (p.id, p.addr, p.tasks, p.children))
            .collect();
        format!("{peers:?}\n{details:?}")
    })
}

#[tokio::test]
async fn bad_input_gets_a_status_that_says_why_and_changes_nothing() {
    let server = start(Duration::from_secs(30)).await;
    let mut c = client(server.addr).await;
    join(&mut c, "a", 1).await;
    join(&mut c, "b", 2).await;
    let d = digest(2);
    let mut pa = c.plan(plan("a", &d, SIZE)).await.unwrap().into_inner();
    assert!(next_update(&mut pa).await.back_to_source);
    let sa = Session::open(&mut c, "a").await.unwrap();
    sa.send(Event::Pieces(v1::PieceReport {
        digest: d.clone(),
        pieces: vec![v1::PieceDone {
            index: 0,
            hash: hash(0),
        }],
    }))
    .await;
    // Wait until the report is in.
    for _ in 0..100 {
        if server
            .state
            .with_core(|core, _| core.stats().pieces_reported)
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = fingerprint(&server.state);

    let expect = |r: Result<(), tonic::Status>, code: Code, words: &str| {
        let s = r.expect_err("input should be refused");
        assert_eq!(s.code(), code, "{s:?}");
        assert!(
            s.message().contains(words),
            "{:?} does not mention {words:?}",
            s.message()
        );
    };

    // Unary and plan calls.
    expect(
        c.plan(plan("a", "sha256:xyz", 0)).await.map(|_| ()),
        Code::InvalidArgument,
        "invalid digest",
    );
    expect(
        c.plan(plan("a", &digest(3), u64::MAX)).await.map(|_| ()),
        Code::InvalidArgument,
        "exceeds the limit",
    );
    expect(
        c.plan(plan("a", &d, SIZE + 1)).await.map(|_| ()),
        Code::InvalidArgument,
        "swarm knows it",
    );
    expect(
        c.plan(plan("nobody", &d, 0)).await.map(|_| ()),
        Code::FailedPrecondition,
        "join first",
    );
    let bad_id = v1::JoinRequest {
        peer: Some(peer("../x", 5)),
        tasks: vec![],
    };
    expect(
        c.join(bad_id).await.map(|_| ()),
        Code::InvalidArgument,
        "peer id",
    );
    // A peer of an older Shoal, whose pieces are cut by another rule (its join
    // carries no rule: rule 1, 4 MiB pieces).
    let old_rule = v1::JoinRequest {
        peer: Some(v1::PeerInfo {
            piece_rule: 0,
            ..peer("c", 3)
        }),
        tasks: vec![],
    };
    expect(
        c.join(old_rule).await.map(|_| ()),
        Code::FailedPrecondition,
        "piece rule 1",
    );
    let elsewhere = v1::JoinRequest {
        peer: Some(peer("a", 9)),
        tasks: vec![],
    };
    expect(
        c.join(elsewhere).await.map(|_| ()),
        Code::AlreadyExists,
        "in use",
    );
    let absurd = v1::JoinRequest {
        peer: Some(peer("c", 3)),
        tasks: vec![v1::HeldTask {
            digest: digest(4),
            size: u64::MAX,
            piece_hashes: vec![],
        }],
    };
    expect(
        c.join(absurd).await.map(|_| ()),
        Code::InvalidArgument,
        "exceeds the limit",
    );
    let short_hash = v1::JoinRequest {
        peer: Some(peer("c", 3)),
        tasks: vec![v1::HeldTask {
            digest: digest(4),
            size: 10,
            piece_hashes: vec![vec![1, 2, 3]],
        }],
    };
    expect(
        c.join(short_hash).await.map(|_| ()),
        Code::InvalidArgument,
        "32 bytes",
    );

    // Session events: each refused event ends that session with its status.
    let cases: Vec<(&str, Event, Code, &str)> = vec![
        (
            "a",
            Event::Pieces(v1::PieceReport {
                digest: d.clone(),
                pieces: vec![v1::PieceDone {
                    index: 7,
                    hash: hash(7),
                }],
            }),
            Code::InvalidArgument,
            "out of range",
        ),
        (
            "a",
            Event::Pieces(v1::PieceReport {
                digest: digest(9),
                pieces: vec![v1::PieceDone {
                    index: 0,
                    hash: hash(0),
                }],
            }),
            Code::NotFound,
            "unknown",
        ),
        (
            "b",
            Event::Pieces(v1::PieceReport {
                digest: d.clone(),
                pieces: vec![v1::PieceDone {
                    index: 0,
                    hash: vec![],
                }],
            }),
            Code::FailedPrecondition,
            "never told to fetch",
        ),
        (
            "a",
            Event::Pieces(v1::PieceReport {
                digest: d.clone(),
                pieces: vec![v1::PieceDone {
                    index: 0,
                    hash: hash(5),
                }],
            }),
            Code::FailedPrecondition,
            "differs",
        ),
        (
            "a",
            Event::Pieces(v1::PieceReport {
                digest: "sha256:ZZ".into(),
                pieces: vec![],
            }),
            Code::InvalidArgument,
            "invalid digest",
        ),
        (
            "a",
            Event::Started(v1::TaskStarted {
                digest: d.clone(),
                size: 1 << 50,
            }),
            Code::InvalidArgument,
            "exceeds the limit",
        ),
        (
            "a",
            Event::Open(v1::SessionOpen {
                peer_id: "a".into(),
            }),
            Code::InvalidArgument,
            "twice",
        ),
    ];
    for (who, event, code, words) in cases {
        let s = Session::open(&mut c, who).await.unwrap();
        s.send(event).await;
        let status = s.closed_with().await;
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(words),
            "{:?} does not mention {words:?}",
            status.message()
        );
    }
    // A session must start with SessionOpen, from a peer that joined.
    let (tx, rx) = mpsc::channel(1);
    tx.send(ev(Event::Heartbeat(v1::Heartbeat::default())))
        .await
        .unwrap();
    let r = c.session(ReceiverStream::new(rx)).await.map(|_| ());
    expect(r, Code::InvalidArgument, "SessionOpen");
    let r = Session::open(&mut c, "stranger").await.map(|_| ());
    expect(r, Code::FailedPrecondition, "join first");

    assert_eq!(
        before,
        fingerprint(&server.state),
        "a refused input changed the state"
    );
    drop(sa);
}

#[tokio::test]
async fn restarted_scheduler_rebuilds_holders_from_joins() {
    let server = start(Duration::from_secs(30)).await;
    let mut c = client(server.addr).await;
    let d = digest(6);
    // Two peers re-join a fresh scheduler announcing the task they hold.
    for (id, n) in [("a", 1), ("b", 2)] {
        c.join(v1::JoinRequest {
            peer: Some(peer(id, n)),
            tasks: vec![v1::HeldTask {
                digest: d.clone(),
                size: SIZE,
                piece_hashes: (0..3).map(hash).collect(),
            }],
        })
        .await
        .unwrap();
    }
    join(&mut c, "c", 3).await;
    let mut pc = c.plan(plan("c", &d, 0)).await.unwrap().into_inner();
    let u = next_update(&mut pc).await;
    assert!(!u.back_to_source, "holders exist: nobody goes to upstream");
    let mut ids: Vec<_> = u.parents.iter().map(|p| p.peer_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(u.parents.iter().all(|p| p.complete));
    assert_eq!(u.piece_hashes.len(), 3);
}
