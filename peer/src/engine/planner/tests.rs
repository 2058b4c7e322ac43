//! Unit and property tests of the planner.

use super::*;
use crate::engine::plan::PlanParent;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::time::Duration;

/// The smallest piece: the size of every piece of these tests' blobs.
const PIECE: u64 = shoal_proto::piece::MIN_PIECE_SIZE as u64;

fn parent(id: &str, port: u16, pieces: Option<&[u32]>, count: u32) -> PlanParent {
    let pieces = pieces.map(|ps| {
        let mut s = PieceSet::new(count);
        for p in ps {
            s.insert(*p);
        }
        s
    });
    PlanParent {
        r: ParentRef {
            id: id.into(),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        },
        pieces,
    }
}

fn hashes(count: u32) -> Vec<(u32, [u8; 32])> {
    (0..count).map(|i| (i, [i as u8; 32])).collect()
}

fn plan(size: u64, parents: Vec<PlanParent>) -> PlanUpdate {
    let shape = TaskShape::for_size(size).unwrap();
    PlanUpdate {
        shape: Some(shape),
        hashes: hashes(shape.piece_count()),
        parents,
        back_to_source: false,
        ..PlanUpdate::default()
    }
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

#[test]
fn window_first_caps_and_spread() {
    let size = 100 * PIECE; // 100 pieces
    let mut p = Planner::new(PlannerConfig::default());
    let parents = (0..3).map(|i| parent(&format!("p{i}"), 7000 + i, None, 100));
    p.on_plan(&plan(size, parents.collect())).unwrap();
    p.on_reader(40 * PIECE + 5);
    let now = Instant::now();
    let reqs = p.next_requests(now, &mut rng());
    // 3 complete parents x 2 per parent = 6 < 8 in flight.
    assert_eq!(reqs.len(), 6);
    let idx: Vec<u32> = reqs.iter().map(|(i, _)| *i).collect();
    // The reader's next piece first, the rest from the window after it (every piece
    // in it equally rare here: in random order).
    assert_eq!(idx[0], 40);
    assert!(idx.iter().all(|i| (40..100).contains(i)), "{idx:?}");
    let distinct: HashSet<u32> = idx.iter().copied().collect();
    assert_eq!(distinct.len(), 6);
    let mut per: HashMap<String, usize> = HashMap::new();
    for (_, r) in &reqs {
        *per.entry(r.id.clone()).or_default() += 1;
    }
    assert!(per.values().all(|&n| n == 2));
    // Nothing more until something finishes.
    assert!(p.next_requests(now, &mut rng()).is_empty());
    p.on_piece_stored(40);
    let more = p.next_requests(now, &mut rng());
    assert_eq!(more.len(), 1);
    // The reader's next missing piece, if not already asked for.
    let next = (41..100).find(|i| !distinct.contains(i)).unwrap();
    assert_eq!(more[0].0, next);
}

#[test]
fn the_window_is_fetched_rarest_first_after_the_readers_next_piece() {
    let size = 40 * PIECE; // 40 pieces
    let mut p = Planner::new(PlannerConfig::default());
    // Three complete parents hold everything; "src" (downloading) alone holds 20..22.
    let mut parents: Vec<PlanParent> = (0..3)
        .map(|i| {
            parent(
                &format!("c{i}"),
                7000 + i,
                Some(&(0..20).collect::<Vec<_>>()),
                40,
            )
        })
        .collect();
    parents.push(parent("src", 7100, Some(&(0..23).collect::<Vec<_>>()), 40));
    p.on_plan(&plan(size, parents)).unwrap();
    p.on_reader(10 * PIECE);
    let reqs = p.next_requests(Instant::now(), &mut rng());
    let idx: Vec<u32> = reqs.iter().map(|(i, _)| *i).collect();
    // Piece 10 first (the reader waits for it), then one of the pieces only src holds
    // (src is still downloading: one request at a time), then the common ones.
    assert_eq!(idx[0], 10, "{reqs:?}");
    assert!((20..23).contains(&idx[1]), "{reqs:?}");
    assert_eq!(reqs[1].1.id, "src");
    assert!(idx[2..].iter().all(|i| (11..20).contains(i)), "{reqs:?}");
    // Every parent is still downloading: one request each.
    assert_eq!(reqs.len(), 4);
}

#[test]
fn a_parent_still_downloading_gets_one_request_at_a_time() {
    let size = 20 * PIECE;
    let mut p = Planner::new(PlannerConfig::default());
    let all: Vec<u32> = (0..19).collect();
    p.on_plan(&plan(size, vec![parent("src", 7000, Some(&all), 20)]))
        .unwrap();
    let now = Instant::now();
    let reqs = p.next_requests(now, &mut rng());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].0, 0);
    assert!(p.next_requests(now, &mut rng()).is_empty());
    // Complete now: two at a time.
    p.on_plan(&plan(size, vec![parent("src", 7000, None, 20)]))
        .unwrap();
    assert_eq!(p.next_requests(now, &mut rng()).len(), 1);
}

#[test]
fn only_pieces_with_hash_and_holder() {
    let size = 10 * PIECE;
    let mut p = Planner::new(PlannerConfig::default());
    let mut u = plan(size, vec![parent("a", 1, Some(&[0, 1, 2, 5]), 10)]);
    u.hashes.retain(|h| h.0 != 1);
    p.on_plan(&u).unwrap();
    let reqs = p.next_requests(Instant::now(), &mut rng());
    let idx: Vec<u32> = reqs.iter().map(|(i, _)| *i).collect();
    // "a" is still downloading: one request at a time, the reader's next piece.
    assert_eq!(idx, vec![0]);
    let mut u = plan(size, vec![parent("a", 1, Some(&[0, 1, 2, 5]), 10)]);
    u.hashes.retain(|h| h.0 != 1);
    u.parents.push(parent("b", 2, Some(&[0, 1, 2, 5]), 10));
    u.parents.push(parent("c", 3, Some(&[0, 1, 2, 5]), 10));
    u.parents.push(parent("d", 4, Some(&[0, 1, 2, 5]), 10));
    let mut p = Planner::new(PlannerConfig::default());
    p.on_plan(&u).unwrap();
    let reqs = p.next_requests(Instant::now(), &mut rng());
    let mut idx: Vec<u32> = reqs.iter().map(|(i, _)| *i).collect();
    idx.sort();
    // Never 1 (no hash), nor 3, 4, 6.. (no holder).
    assert_eq!(idx, vec![0, 2, 5]);
}

#[test]
fn failed_piece_goes_elsewhere_and_bad_parent_is_excluded() {
    let size = 4 * PIECE;
    let mut p = Planner::new(PlannerConfig {
        max_per_parent: 1,
        ..PlannerConfig::default()
    });
    p.on_plan(&plan(
        size,
        vec![parent("a", 1, None, 4), parent("b", 2, None, 4)],
    ))
    .unwrap();
    let now = Instant::now();
    let reqs = p.next_requests(now, &mut rng());
    assert_eq!(reqs.len(), 2);
    let (i, first) = reqs.iter().find(|(i, _)| *i == 0).unwrap().clone();
    let other = reqs.iter().find(|(i, _)| *i == 1).unwrap().1.clone();
    // Free the other parent too, then fail piece 0 at its parent: it goes to the other.
    p.on_piece_stored(1);
    p.on_fetch_failed(i, &first.id, true, now);
    let again = p.next_requests(now, &mut rng());
    let retry = again.iter().find(|(j, _)| *j == 0).unwrap();
    assert_eq!(retry.1.id, other.id);
    // A bad piece from `other` excludes it for good.
    assert_eq!(p.on_bad_piece(0, &other.id), other.id);
    assert!(p.is_excluded(&other.id));
    for (_, r) in p.next_requests(now, &mut rng()) {
        assert_ne!(r.id, other.id);
    }
}

#[test]
fn stalled_requests_time_out_and_parent_is_avoided() {
    let size = 4 * PIECE;
    let config = PlannerConfig::default();
    let timeout = config.request_timeout;
    let avoid = config.avoid_for;
    let mut p = Planner::new(config);
    p.on_plan(&plan(size, vec![parent("a", 1, None, 4)]))
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(p.next_requests(t0, &mut rng()).len(), 2);
    assert!(p.timed_out(t0 + timeout / 2).is_empty());
    let gone = p.timed_out(t0 + timeout);
    assert_eq!(gone, vec![(0, "a".into()), (1, "a".into())]);
    assert!(p.next_requests(t0 + timeout, &mut rng()).is_empty());
    // Avoided parent only and nothing in flight: starving, then upstream.
    let starve = PlannerConfig::default().starve_timeout;
    assert!(!p.wants_upstream(t0 + timeout));
    assert!(p.wants_upstream(t0 + timeout + starve));
    // After the avoidance the parent is asked again.
    assert!(!p.next_requests(t0 + timeout + avoid, &mut rng()).is_empty());
}

#[test]
fn a_silent_parent_is_avoided_briefly_then_longer_and_forgiven_by_a_piece() {
    let size = 4 * PIECE;
    let config = PlannerConfig::default();
    let short = config.silent_avoid_for;
    let mut p = Planner::new(config);
    p.on_plan(&plan(size, vec![parent("a", 1, None, 4)]))
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(p.next_requests(t0, &mut rng()).len(), 2);
    // First silence: avoided for `short` only (a partition that heals costs seconds).
    p.on_parent_silent(0, "a", t0);
    assert!(p.next_requests(t0 + short / 2, &mut rng()).is_empty());
    let t1 = t0 + short;
    let again = p.next_requests(t1, &mut rng());
    assert_eq!(again.len(), 1, "asked again once the short avoidance ended");
    // A second silence in a row doubles the avoidance.
    let (i, _) = again[0].clone();
    p.on_parent_silent(i, "a", t1);
    assert!(p.next_requests(t1 + short, &mut rng()).is_empty());
    let t2 = t1 + 2 * short;
    let back = p.next_requests(t2, &mut rng());
    assert!(!back.is_empty());
    // A piece from it resets the count: the next silence is short again.
    p.on_piece_stored(back[0].0);
    let (j, _) = p.in_flight()[0].clone();
    p.on_parent_silent(j, "a", t2);
    assert!(!p.next_requests(t2 + short, &mut rng()).is_empty());
}

#[test]
fn back_to_source_starving_wants_upstream_like_any_download() {
    // The core asks only while no upstream stream runs: for a source, when it took
    // over from a slower one and the pieces before its start starve.
    let mut p = Planner::new(PlannerConfig::default());
    let mut u = plan(2 * PIECE, vec![]);
    u.back_to_source = true;
    p.on_plan(&u).unwrap();
    let t0 = Instant::now();
    assert!(p.next_requests(t0, &mut rng()).is_empty());
    let starve = PlannerConfig::default().starve_timeout;
    assert!(!p.wants_upstream(t0 + starve / 2));
    assert!(p.wants_upstream(t0 + starve));
}

#[test]
fn not_retryable_failure_wants_upstream() {
    let mut p = Planner::new(PlannerConfig::default());
    p.on_plan(&plan(2 * PIECE, vec![parent("a", 1, None, 2)]))
        .unwrap();
    let t0 = Instant::now();
    let reqs = p.next_requests(t0, &mut rng());
    p.on_fetch_failed(reqs[0].0, "a", false, t0);
    assert!(p.wants_upstream(t0));
}

#[test]
fn rejects_a_changed_shape_and_out_of_range_hashes() {
    let mut p = Planner::new(PlannerConfig::default());
    p.on_plan(&plan(2 * PIECE, vec![])).unwrap();
    assert!(matches!(
        p.on_plan(&plan(2 * PIECE + 1, vec![])),
        Err(PlannerError::Shape(_))
    ));
    let mut u = plan(2 * PIECE, vec![]);
    u.hashes.push((2, [0; 32]));
    assert!(matches!(p.on_plan(&u), Err(PlannerError::Piece(_))));
}

#[derive(Debug, Clone)]
enum Op {
    Plan(Vec<(u8, Option<Vec<bool>>)>, Vec<bool>),
    Next,
    Stored(u8),
    Failed(u8, bool),
    Bad(u8),
    Reader(u8),
    Tick(u16),
}

const PIECES: u32 = 12;

fn op() -> impl Strategy<Value = Op> {
    let bitmap = proptest::option::of(proptest::collection::vec(any::<bool>(), PIECES as usize));
    prop_oneof![
        (
            proptest::collection::vec((0u8..6, bitmap), 0..6),
            proptest::collection::vec(any::<bool>(), PIECES as usize)
        )
            .prop_map(|(p, h)| Op::Plan(p, h)),
        Just(Op::Next),
        Just(Op::Next),
        (0u8..PIECES as u8).prop_map(Op::Stored),
        ((0u8..PIECES as u8), any::<bool>()).prop_map(|(i, r)| Op::Failed(i, r)),
        (0u8..PIECES as u8).prop_map(Op::Bad),
        (0u8..PIECES as u8).prop_map(Op::Reader),
        (0u16..20_000).prop_map(Op::Tick),
    ]
}

proptest! {
    #[test]
    fn planner_invariants(ops in proptest::collection::vec(op(), 1..80), seed in any::<u64>()) {
        let size = PIECES as u64 * PIECE;
        let config = PlannerConfig { max_in_flight: 5, ..PlannerConfig::default() };
        let mut p = Planner::new(config.clone());
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut now = Instant::now();
        // Latest plan: parent id -> held pieces (None = complete); excluded parents.
        let mut latest: HashMap<String, Option<Vec<bool>>> = HashMap::new();
        let mut excluded: HashSet<String> = HashSet::new();
        for op in ops {
            match op {
                Op::Plan(parents, known) => {
                    let mut u = plan(size, Vec::new());
                    u.hashes.retain(|h| known[h.0 as usize]);
                    latest.clear();
                    for (id, bits) in parents {
                        let id = format!("p{id}");
                        if latest.contains_key(&id) { continue; }
                        let held: Option<Vec<u32>> = bits.as_ref().map(|b| {
                            (0..PIECES).filter(|i| b[*i as usize]).collect()
                        });
                        u.parents.push(parent(&id, 1000, held.as_deref(), PIECES));
                        latest.insert(id, bits);
                    }
                    p.on_plan(&u).unwrap();
                }
                Op::Next => {
                    let before: HashSet<u32> = p.in_flight().iter().map(|(i, _)| *i).collect();
                    let reqs = p.next_requests(now, &mut rng);
                    let mut seen = HashSet::new();
                    for (i, r) in &reqs {
                        let held = latest.get(&r.id);
                        prop_assert!(held.is_some(), "parent {} not in the latest plan", r.id);
                        if let Some(Some(bits)) = held {
                            prop_assert!(bits[*i as usize], "{} does not hold {}", r.id, i);
                        }
                        prop_assert!(!excluded.contains(&r.id));
                        prop_assert!(!before.contains(i) && seen.insert(*i), "piece {} twice", i);
                        prop_assert!(!p.have().contains(*i));
                        prop_assert!(p.hash(*i).is_some());
                    }
                    let inf = p.in_flight();
                    prop_assert!(inf.len() <= config.max_in_flight);
                    let mut per: HashMap<&str, usize> = HashMap::new();
                    for (_, parent) in &inf {
                        *per.entry(parent.as_str()).or_default() += 1;
                    }
                    prop_assert!(per.values().all(|&n| n <= config.max_per_parent));
                }
                Op::Stored(i) => p.on_piece_stored(i as u32),
                Op::Failed(i, retry) => {
                    if let Some((_, parent)) = p.in_flight().into_iter().find(|(j, _)| *j == i as u32) {
                        p.on_fetch_failed(i as u32, &parent, retry, now);
                    }
                }
                Op::Bad(i) => {
                    if let Some((_, parent)) = p.in_flight().into_iter().find(|(j, _)| *j == i as u32) {
                        excluded.insert(p.on_bad_piece(i as u32, &parent));
                    }
                }
                Op::Reader(i) => p.on_reader(i as u64 * PIECE),
                Op::Tick(ms) => {
                    now += Duration::from_millis(ms as u64);
                    p.timed_out(now);
                }
            }
        }
    }
}

#[test]
fn busy_is_not_a_failure_and_the_pair_waits_out_the_backoff() {
    let size = 4 * PIECE; // 4 pieces
    let mut p = Planner::new(PlannerConfig {
        max_in_flight: 1,
        ..PlannerConfig::default()
    });
    p.on_plan(&plan(size, vec![parent("a", 7000, None, 4)]))
        .unwrap();
    let t0 = Instant::now();
    let r = p.next_requests(t0, &mut rng());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0);
    // Far more BUSY answers than max_failures: the parent is never avoided.
    let mut now = t0;
    for _ in 0..5 {
        p.on_busy(0, "a", now);
        assert_eq!(p.busy_until(), Some(now + p.config.busy_backoff));
        // Within the backoff piece 0 is not asked of "a"; the next piece is.
        let r = p.next_requests(now, &mut rng());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 1, "piece 0 asked again within the backoff");
        p.on_busy(1, "a", now);
        assert!(p.next_requests(now, &mut rng()).iter().all(|(i, _)| *i > 1));
        p.in_flight.clear();
        now += p.config.busy_backoff;
        // After the backoff piece 0 (first in order) is asked again.
        let r = p.next_requests(now, &mut rng());
        assert_eq!(r[0].0, 0);
    }
    assert!(p.avoided.is_empty(), "BUSY made the parent avoided");
    assert!(p.failures.is_empty(), "BUSY counted as a failure");
}

#[test]
fn the_most_advanced_downloading_holder_is_kept_for_what_only_it_has() {
    let size = 8 * PIECE; // 8 pieces
    let mut p = Planner::new(PlannerConfig::default());
    // "src" is downloading and ahead (pieces 0..6); "a" is behind (0..3).
    p.on_plan(&plan(
        size,
        vec![
            parent("src", 7000, Some(&[0, 1, 2, 3, 4, 5]), 8),
            parent("a", 7001, Some(&[0, 1, 2]), 8),
        ],
    ))
    .unwrap();
    let reqs = p.next_requests(Instant::now(), &mut rng());
    for (i, r) in &reqs {
        if *i <= 2 {
            assert_eq!(r.id, "a", "piece {i} taken from the source though a has it");
        } else {
            assert_eq!(r.id, "src", "piece {i} only src has");
        }
    }
    // Both still downloading, one request each: piece 0 (the reader's) from a, and
    // one of the pieces only src holds from src.
    let got: Vec<u32> = reqs.iter().map(|(i, _)| *i).collect();
    assert_eq!(got.len(), 2, "{reqs:?}");
    assert_eq!(got[0], 0);
    assert!((3..6).contains(&got[1]), "{reqs:?}");

    // Once "src" is complete it has nothing left to fetch: used for anything.
    let mut p = Planner::new(PlannerConfig::default());
    p.on_plan(&plan(
        size,
        vec![
            parent("src", 7000, None, 8),
            parent("a", 7001, Some(&[0, 1, 2]), 8),
        ],
    ))
    .unwrap();
    let reqs = p.next_requests(Instant::now(), &mut rng());
    // a (downloading) one request, the reader's piece 0; src, complete, two, of the
    // pieces only it has (the rarest first).
    let from = |id: &str| -> Vec<u32> {
        reqs.iter()
            .filter(|(_, r)| r.id == id)
            .map(|(i, _)| *i)
            .collect()
    };
    assert_eq!(from("a"), vec![0], "{reqs:?}");
    let src = from("src");
    assert_eq!(src.len(), 2, "{reqs:?}");
    assert!(src.iter().all(|i| (3..8).contains(i)), "{reqs:?}");
}

/// A parent seen downloading earlier in this download that is now complete (the
/// back-to-source peer that just finished) stays kept for what only it has: its
/// uplink is what every other child wants for the last pieces. A parent that was
/// complete from the first plan (a cache) is still used freely (test above).
#[test]
fn a_parent_that_completed_during_the_download_stays_kept_for_what_only_it_has() {
    let size = 8 * PIECE; // 8 pieces
    let plans = |src_pieces: Option<&[u32]>| {
        plan(
            size,
            vec![
                parent("src", 7000, src_pieces, 8),
                parent("a", 7001, Some(&[0, 1, 2, 3, 4, 5, 6]), 8),
            ],
        )
    };
    // src is seen downloading, then complete; a holds every piece but the last.
    let mut p = Planner::new(PlannerConfig::default());
    p.on_plan(&plans(Some(&[0, 1, 2, 3, 4, 5, 6]))).unwrap();
    p.on_plan(&plans(None)).unwrap();
    let reqs = p.next_requests(Instant::now(), &mut rng());
    // The reader's piece from a (one request: a is downloading), the piece only src
    // has from src, and nothing else from src though it has a slot left.
    let from = |reqs: &[(u32, ParentRef)], id: &str| -> Vec<u32> {
        reqs.iter()
            .filter(|(_, r)| r.id == id)
            .map(|(i, _)| *i)
            .collect()
    };
    assert_eq!(from(&reqs, "a"), vec![0], "{reqs:?}");
    assert_eq!(from(&reqs, "src"), vec![7], "{reqs:?}");

    // The same plan with src complete from the start (a cache): used freely, so
    // its second slot takes a piece a also has.
    let mut p = Planner::new(PlannerConfig::default());
    p.on_plan(&plans(None)).unwrap();
    let reqs = p.next_requests(Instant::now(), &mut rng());
    assert_eq!(from(&reqs, "src").len(), 2, "{reqs:?}");
}

#[test]
fn confined_to_its_window_it_asks_for_nothing_beyond_or_behind_it() {
    let size = 100 * PIECE;
    let mut p = Planner::new(PlannerConfig {
        max_in_flight: 64,
        ..PlannerConfig::default()
    });
    let parents = (0..8).map(|i| parent(&format!("p{i}"), 7000 + i, None, 100));
    p.on_plan(&plan(size, parents.collect())).unwrap();
    p.on_reader(40 * PIECE);
    p.confine_to_window(4);
    let now = Instant::now();
    let mut idx: Vec<u32> = p
        .next_requests(now, &mut rng())
        .iter()
        .map(|(i, _)| *i)
        .collect();
    idx.sort();
    assert_eq!(idx, vec![40, 41, 42, 43]);
    // Unconfined, the same planner would ask for up to 16 (8 parents x 2).
    let mut q = Planner::new(PlannerConfig {
        max_in_flight: 64,
        ..PlannerConfig::default()
    });
    let parents = (0..8).map(|i| parent(&format!("p{i}"), 7000 + i, None, 100));
    q.on_plan(&plan(size, parents.collect())).unwrap();
    q.on_reader(40 * PIECE);
    assert_eq!(q.next_requests(now, &mut rng()).len(), 16);
}

#[test]
fn near_the_frontier_fewer_requests_are_in_flight() {
    // 8 parents still downloading, one request each at most: 8 could be in flight.
    let size = 100 * PIECE;
    let config = PlannerConfig::default();
    let plan_holding = |held: &[u32]| {
        let parents = (0..8).map(|i| parent(&format!("p{i}"), 7000 + i, Some(held), 100));
        plan(size, parents.collect())
    };
    // Behind: 40 pieces to be had, so the full `max_in_flight`.
    let behind: Vec<u32> = (0..40).collect();
    let mut p = Planner::new(config.clone());
    p.on_plan(&plan_holding(&behind)).unwrap();
    let now = Instant::now();
    assert_eq!(p.next_requests(now, &mut rng()).len(), config.max_in_flight);
    // Near the frontier: 10 pieces to be had (< 16), so at most 4 at once.
    let near: Vec<u32> = (0..10).collect();
    let mut q = Planner::new(config.clone());
    q.on_plan(&plan_holding(&near)).unwrap();
    let reqs = q.next_requests(now, &mut rng());
    assert_eq!(reqs.len(), config.max_in_flight_at_frontier, "{reqs:?}");
    // The reader's next piece is still the first asked for.
    assert_eq!(reqs[0].0, 0);
    // As pieces arrive the cap holds: one stored, one more asked for.
    q.on_piece_stored(reqs[0].0);
    assert_eq!(q.next_requests(now, &mut rng()).len(), 1);
    assert_eq!(q.in_flight().len(), config.max_in_flight_at_frontier);
    // 17 pieces to be had (>= 16): the full 8 again.
    let mid: Vec<u32> = (0..17).collect();
    let mut r = Planner::new(config.clone());
    r.on_plan(&plan_holding(&mid)).unwrap();
    assert_eq!(r.next_requests(now, &mut rng()).len(), config.max_in_flight);
    // With the frontier limit as large as `max_in_flight`, as before it.
    let mut s = Planner::new(PlannerConfig {
        max_in_flight_at_frontier: config.max_in_flight,
        ..config.clone()
    });
    s.on_plan(&plan_holding(&near)).unwrap();
    assert_eq!(s.next_requests(now, &mut rng()).len(), config.max_in_flight);
}

#[test]
fn a_small_blob_from_caches_is_not_held_to_the_frontier_limit() {
    // 10 pieces, all held by 4 complete parents (caches) from the start: 2 per
    // complete parent, 8 in flight, although fewer than 16 pieces are to be had.
    let size = 10 * PIECE;
    let config = PlannerConfig::default();
    let mut p = Planner::new(config.clone());
    let parents = (0..4).map(|i| parent(&format!("c{i}"), 7000 + i, None, 10));
    p.on_plan(&plan(size, parents.collect())).unwrap();
    assert_eq!(p.next_requests(Instant::now(), &mut rng()).len(), 8);
    // The same pieces from parents still downloading them: the frontier limit.
    let held: Vec<u32> = (0..10).collect();
    let mut q = Planner::new(config.clone());
    let parents = (0..8).map(|i| parent(&format!("d{i}"), 7000 + i, Some(&held), 10));
    q.on_plan(&plan(size, parents.collect())).unwrap();
    assert_eq!(
        q.next_requests(Instant::now(), &mut rng()).len(),
        config.max_in_flight_at_frontier
    );
}
