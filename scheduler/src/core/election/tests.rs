//! Unit tests of back-to-source elections by link rate.

use std::time::{Duration, Instant};

use shoal_proto::Digest;

use crate::core::test_support::{SIZE, id, info};
use crate::core::{CoreConfig, Effect, PeerId, PeerInfo, Scheduler};

/// Peer `p`, declaring `mbps`.
fn at(p: u8, mbps: u32) -> PeerInfo {
    PeerInfo {
        link_mbps: mbps,
        ..info(p)
    }
}

/// A scheduler where peers of these rates joined (peer `i` at `rates[i]`).
fn joined(t0: Instant, rates: &[u32], config: CoreConfig) -> Scheduler {
    let mut core = Scheduler::new(config);
    for (p, mbps) in rates.iter().enumerate() {
        core.join(t0, at(p as u8, *mbps), vec![]).unwrap();
    }
    core
}

fn wait() -> Duration {
    CoreConfig::default().faster_source_wait
}

/// The plan updates flushed now, by peer.
fn updates(core: &mut Scheduler) -> Vec<(PeerId, crate::core::PlanUpdate)> {
    core.flush();
    core.drain_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Plan { peer, update, .. } => Some((peer, update)),
            _ => None,
        })
        .collect()
}

/// The peers the flushed plan updates tell to fetch from upstream.
fn told_to_fetch(core: &mut Scheduler) -> Vec<PeerId> {
    updates(core)
        .into_iter()
        .filter(|(_, u)| u.back_to_source)
        .map(|(peer, _)| peer)
        .collect()
}

/// A rollout where a 1 Gbit/s node opens first: the 10 Gbit/s node that opens
/// 50 ms later is elected, not the first one; the end of the wait elects nobody
/// else.
#[test]
fn a_slow_first_opener_waits_and_the_faster_downloader_is_elected() {
    let digest = Digest::from_sha256([1; 32]);
    let t0 = Instant::now();
    let mut core = joined(t0, &[1000, 1000, 10_000], CoreConfig::default());
    core.open_plan(t0, &id(0), digest, SIZE).unwrap();
    assert!(core.back_to_source_of(&digest).is_empty(), "no wait");
    assert_eq!(told_to_fetch(&mut core), Vec::<PeerId>::new());
    let t1 = t0 + Duration::from_millis(50);
    core.open_plan(t1, &id(1), digest, SIZE).unwrap();
    assert!(core.back_to_source_of(&digest).is_empty());
    core.open_plan(t1, &id(2), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(2)]);
    assert_eq!(told_to_fetch(&mut core), vec![id(2)]);
    core.tick(t0 + wait() * 2);
    assert_eq!(core.back_to_source_of(&digest), vec![id(2)]);
    let stats = core.stats();
    assert_eq!(
        (
            stats.back_to_source_elections,
            stats.elections_waited_for_faster
        ),
        (1, 1)
    );
}

/// No faster node pulls: the fastest downloader so far is elected at the first
/// tick after the wait.
#[test]
fn without_a_faster_downloader_the_fastest_so_far_is_elected_when_the_wait_ends() {
    let digest = Digest::from_sha256([2; 32]);
    let t0 = Instant::now();
    let mut core = joined(t0, &[100, 1000, 10_000], CoreConfig::default());
    core.open_plan(t0, &id(0), digest, SIZE).unwrap();
    core.open_plan(t0 + Duration::from_millis(10), &id(1), digest, SIZE)
        .unwrap();
    core.tick(t0 + wait() - Duration::from_millis(1));
    assert!(core.back_to_source_of(&digest).is_empty());
    core.tick(t0 + wait());
    assert_eq!(
        core.back_to_source_of(&digest),
        vec![id(1)],
        "the faster one"
    );
    assert_eq!(told_to_fetch(&mut core), vec![id(1)]);
}

/// Peers of unknown rate, a first opener as fast as the fastest, and a wait
/// of zero are all elected at once; so is a slow peer once the fast one left.
#[test]
fn elections_that_need_no_wait_are_held_at_once() {
    let t0 = Instant::now();
    let cases: [(&[u32], Duration); 4] = [
        (&[0, 10_000], wait()),
        (&[10_000, 10_000, 1000], wait()),
        (&[1000, 10_000], Duration::ZERO),
        (&[0, 0], wait()),
    ];
    for (n, (rates, faster_source_wait)) in cases.into_iter().enumerate() {
        let digest = Digest::from_sha256([10 + n as u8; 32]);
        let config = CoreConfig {
            faster_source_wait,
            ..CoreConfig::default()
        };
        let mut core = joined(t0, rates, config);
        core.open_plan(t0, &id(0), digest, SIZE).unwrap();
        assert_eq!(core.back_to_source_of(&digest), vec![id(0)], "{rates:?}");
        assert_eq!(core.stats().elections_waited_for_faster, 0);
    }
    let digest = Digest::from_sha256([20; 32]);
    let mut core = joined(t0, &[1000, 10_000], CoreConfig::default());
    core.leave(t0, &id(1));
    core.open_plan(t0, &id(0), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    // A fast peer that re-joins declaring a slower link no longer counts as fast.
    let digest = Digest::from_sha256([21; 32]);
    let mut core = joined(t0, &[1000, 10_000], CoreConfig::default());
    core.join(t0, at(1, 1000), vec![]).unwrap();
    core.open_plan(t0, &id(0), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
}

/// A source that stalls is replaced by the fastest other downloader at once,
/// with no wait (the swarm is already stalled).
#[test]
fn a_stalled_source_is_replaced_by_the_fastest_downloader_without_waiting() {
    let digest = Digest::from_sha256([3; 32]);
    let t0 = Instant::now();
    let config = CoreConfig {
        peer_ttl: Duration::from_secs(3600),
        ..CoreConfig::default()
    };
    let stall = config.back_to_source_stall;
    let mut core = joined(t0, &[10_000, 100, 1000, 100], config);
    core.open_plan(t0, &id(0), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    for p in 1..4 {
        core.open_plan(t0, &id(p), digest, SIZE).unwrap();
    }
    core.tick(t0 + stall);
    assert_eq!(core.back_to_source_of(&digest), vec![id(2)]);
    assert_eq!(core.stats().elections_waited_for_faster, 0);
}

/// A rate above 10 Tbit/s is refused with a clear error, and the peer does
/// not join.
#[test]
fn a_link_rate_above_ten_tbit_is_refused() {
    let mut core = Scheduler::new(CoreConfig::default());
    let now = Instant::now();
    let err = core
        .join(now, at(0, crate::core::MAX_LINK_MBPS + 1), vec![])
        .unwrap_err();
    assert!(err.to_string().contains("link rate"), "{err}");
    assert!(core.peers(now).is_empty());
    core.join(now, at(0, crate::core::MAX_LINK_MBPS), vec![])
        .unwrap();
    assert_eq!(core.peers(now)[0].link_mbps, crate::core::MAX_LINK_MBPS);
}

/// A 1 Gbit/s node pulled first, alone; a 10 Gbit/s node opens its plan
/// seconds later: it takes over from the first piece the slow source lacks, the
/// slow one is told once to stop, and the fast one is offered parents for the
/// pieces before its start.
#[test]
fn a_slow_source_hands_the_rest_over_to_a_much_faster_downloader() {
    use crate::core::{HAND_OVER_MIN_PIECES, PieceDone};
    let digest = Digest::from_sha256([30; 32]);
    let t0 = Instant::now();
    let size = 40 * u64::from(shoal_proto::piece::MIN_PIECE_SIZE);
    let mut core = joined(t0, &[1000, 1000, 10_000, 1500], CoreConfig::default());
    core.open_plan(t0, &id(0), digest, size).unwrap();
    core.tick(t0 + wait());
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    core.task_started(t0 + wait(), &id(0), digest, size)
        .unwrap();
    let held: Vec<PieceDone> = (0..10)
        .map(|index| PieceDone {
            index,
            hash: Some([index as u8; 32]),
        })
        .collect();
    core.report_pieces(t0 + wait(), &id(0), digest, &held)
        .unwrap();
    updates(&mut core);
    let t1 = t0 + Duration::from_secs(3);
    // Not fast enough (1.5 × at the default ratio of 2): no hand-over.
    core.open_plan(t1, &id(3), digest, size).unwrap();
    core.tick(t1);
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    core.open_plan(t1, &id(1), digest, size).unwrap();
    core.open_plan(t1, &id(2), digest, size).unwrap();
    core.tick(t1);
    assert_eq!(core.back_to_source_of(&digest), vec![id(2)]);
    assert_eq!(core.stats().sources_handed_over, 1);
    let ups = updates(&mut core);
    let of = |p: u8| {
        ups.iter()
            .filter(|(peer, _)| *peer == id(p))
            .map(|(_, u)| u.clone())
            .collect::<Vec<_>>()
    };
    let fast = of(2);
    assert!(
        fast.iter()
            .any(|u| u.back_to_source && u.upstream_from_piece == 10),
        "{fast:?}"
    );
    assert!(
        fast.iter().any(|u| u.parents.iter().any(|p| p.id == id(0))),
        "the fast one is offered the slow one's pieces: {fast:?}"
    );
    let slow = of(0);
    assert!(
        slow.iter().any(|u| u.hand_over && !u.back_to_source),
        "{slow:?}"
    );
    assert!(of(1).iter().all(|u| !u.hand_over && !u.back_to_source));
    // Told once; no hand-over back, none further.
    core.tick(t1 + Duration::from_secs(1));
    assert!(updates(&mut core).iter().all(|(_, u)| !u.hand_over));
    assert_eq!(core.back_to_source_of(&digest), vec![id(2)]);
    assert_eq!(core.stats().sources_handed_over, 1);

    // With too few pieces left, or the hand-over turned off, the slow one
    // keeps the task.
    let left_few = CoreConfig::default();
    let off = CoreConfig {
        hand_over_ratio: 0.0,
        ..CoreConfig::default()
    };
    for (n, (config, held)) in [(left_few, 40 - HAND_OVER_MIN_PIECES + 1), (off, 10)]
        .into_iter()
        .enumerate()
    {
        let digest = Digest::from_sha256([31 + n as u8; 32]);
        let mut core = joined(t0, &[1000, 10_000], config);
        core.open_plan(t0, &id(0), digest, size).unwrap();
        core.tick(t0 + wait());
        core.task_started(t0 + wait(), &id(0), digest, size)
            .unwrap();
        let pieces: Vec<PieceDone> = (0..held)
            .map(|index| PieceDone {
                index,
                hash: Some([index as u8; 32]),
            })
            .collect();
        core.report_pieces(t0 + wait(), &id(0), digest, &pieces)
            .unwrap();
        core.open_plan(t1, &id(1), digest, size).unwrap();
        core.tick(t1);
        assert_eq!(core.back_to_source_of(&digest), vec![id(0)], "case {n}");
        assert_eq!(core.stats().sources_handed_over, 0);
    }
}

/// Peers of unknown rate neither hand over nor take over.
#[test]
fn unknown_rates_never_hand_over() {
    let t0 = Instant::now();
    let size = 40 * u64::from(shoal_proto::piece::MIN_PIECE_SIZE);
    for (n, rates) in [[0, 10_000], [1000, 0]].into_iter().enumerate() {
        let digest = Digest::from_sha256([40 + n as u8; 32]);
        let mut core = joined(t0, &rates, CoreConfig::default());
        core.open_plan(t0, &id(0), digest, size).unwrap();
        core.tick(t0 + wait());
        assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
        core.task_started(t0 + wait(), &id(0), digest, size)
            .unwrap();
        let t1 = t0 + Duration::from_secs(3);
        core.open_plan(t1, &id(1), digest, size).unwrap();
        core.tick(t1);
        assert_eq!(core.back_to_source_of(&digest), vec![id(0)], "{rates:?}");
    }
}

/// A source that took over from a slower one, re-opening its plan on another
/// replica (which knows nothing of the hand-over), is still offered parents for
/// the pieces before its start: its pieces have a hole.
#[test]
fn a_source_with_a_hole_in_its_pieces_is_offered_parents() {
    use crate::core::{HeldTask, PieceDone, PlanOpening};
    let digest = Digest::from_sha256([50; 32]);
    let t0 = Instant::now();
    let pieces: u32 = 40;
    let size = u64::from(pieces) * u64::from(shoal_proto::piece::MIN_PIECE_SIZE);
    let mut core = joined(t0, &[10_000], CoreConfig::default());
    let held = HeldTask {
        digest,
        size,
        piece_hashes: (0..pieces).map(|i| [i as u8; 32]).collect(),
    };
    core.join(t0, at(1, 1000), vec![held]).unwrap();
    core.open_plan_with(t0, &id(0), digest, size, PlanOpening::reopen(true))
        .unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    let offered = |core: &mut Scheduler| {
        updates(core)
            .into_iter()
            .filter(|(p, _)| *p == id(0))
            .flat_map(|(_, u)| u.parents)
            .map(|p| p.id)
            .collect::<Vec<_>>()
    };
    // Streaming from the first piece: no parents.
    let prefix: Vec<PieceDone> = (0..4)
        .map(|index| PieceDone {
            index,
            hash: Some([index as u8; 32]),
        })
        .collect();
    core.report_pieces(t0, &id(0), digest, &prefix).unwrap();
    assert_eq!(offered(&mut core), Vec::<PeerId>::new());
    // A hole: pieces from 20 on, none of 4..20.
    let later: Vec<PieceDone> = (20..24)
        .map(|index| PieceDone {
            index,
            hash: Some([index as u8; 32]),
        })
        .collect();
    core.report_pieces(t0, &id(0), digest, &later).unwrap();
    core.tick(t0 + Duration::from_millis(100));
    assert_eq!(offered(&mut core), vec![id(1)]);
}
