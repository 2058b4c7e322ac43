//! Unit tests of the download core: the reporting, back-to-source, re-plan and
//! upstream-retry rules, driven with a fixed clock and seed.

use std::time::{Duration, Instant};

use shoal_proto::{Digest, TaskShape};

use super::*;
use crate::engine::plan::{ParentRef, PlanParent};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 12 * MIB;

fn digest() -> Digest {
    Digest::from_sha256([7; 32])
}

fn core(now: Instant) -> DownloadCore {
    DownloadCore::new(digest(), PlannerConfig::default(), 1, now)
}

fn shape() -> TaskShape {
    TaskShape::for_size(SIZE).unwrap()
}

fn hashes() -> Vec<(u32, [u8; 32])> {
    (0..shape().piece_count())
        .map(|i| (i, [i as u8; 32]))
        .collect()
}

fn parent(id: &str) -> PlanParent {
    PlanParent {
        r: ParentRef {
            id: id.into(),
            addr: "127.0.0.1:9".parse().unwrap(),
        },
        pieces: None,
    }
}

fn source_plan() -> PlanUpdate {
    PlanUpdate {
        shape: None,
        hashes: vec![],
        parents: vec![],
        back_to_source: true,
        ..PlanUpdate::default()
    }
}

fn reports(actions: &[Action]) -> Vec<&Report> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn no_plan_streams_everything_from_upstream_and_reports_nothing() {
    let now = Instant::now();
    let mut c = core(now);
    c.no_plan();
    assert_eq!(c.take_actions(), vec![Action::StartUpstream { from: 0 }]);
    c.on_upstream_size(SIZE).unwrap();
    assert_eq!(c.take_actions(), vec![Action::ShapeKnown(shape())]);
    for i in 0..shape().piece_count() {
        assert_eq!(
            c.on_piece(i, [i as u8; 32], Origin::Upstream).unwrap(),
            Verdict::Keep { checked: false }
        );
        c.on_piece_kept(i, [i as u8; 32], true);
    }
    assert!(c.is_complete());
    assert!(reports(&c.take_actions()).is_empty());
    c.on_complete(true);
    // Without a plan the complete task is announced with every hash.
    assert!(matches!(
        c.take_actions().as_slice(),
        [Action::Announce { size: SIZE, hashes }] if hashes.iter().all(Option::is_some)
    ));
}

#[test]
fn back_to_source_reports_started_then_pieces_with_hashes_then_complete() {
    let now = Instant::now();
    let mut c = core(now);
    c.plan_opened();
    c.on_plan(&source_plan()).unwrap();
    assert_eq!(c.take_actions(), vec![Action::StartUpstream { from: 0 }]);
    c.on_upstream_size(SIZE).unwrap();
    let a = c.take_actions();
    assert_eq!(a[0], Action::ShapeKnown(shape()));
    assert_eq!(
        reports(&a),
        vec![&Report::Started {
            digest: digest(),
            size: SIZE
        }]
    );
    for i in 0..shape().piece_count() {
        c.on_piece(i, [i as u8; 32], Origin::Upstream).unwrap();
        c.on_piece_kept(i, [i as u8; 32], true);
        assert_eq!(
            reports(&c.take_actions()),
            vec![&Report::Pieces {
                digest: digest(),
                pieces: vec![(i, Some([i as u8; 32]))]
            }]
        );
    }
    c.on_complete(true);
    assert_eq!(
        reports(&c.take_actions()),
        vec![&Report::Complete(digest())]
    );
}

#[test]
fn a_child_reports_pieces_without_hashes_and_never_a_piece_it_keeps_in_memory() {
    let now = Instant::now();
    let mut c = core(now);
    c.plan_opened();
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes(),
        parents: vec![parent("p")],
        back_to_source: false,
        ..PlanUpdate::default()
    })
    .unwrap();
    assert_eq!(c.take_actions(), vec![Action::ShapeKnown(shape())]);
    c.poll(now, 0, true);
    let fetches = c
        .take_actions()
        .into_iter()
        .filter(|a| matches!(a, Action::Fetch { .. }))
        .count();
    assert!(fetches > 0);
    assert_eq!(
        c.on_piece(0, [0; 32], Origin::Parent("p")).unwrap(),
        Verdict::Keep { checked: true }
    );
    c.on_piece_kept(0, [0; 32], true);
    assert_eq!(
        reports(&c.take_actions()),
        vec![&Report::Pieces {
            digest: digest(),
            pieces: vec![(0, None)]
        }]
    );
    // The disk is full: piece 1 stays in memory and is not reported.
    c.store_failed();
    c.on_piece(1, [1; 32], Origin::Parent("p")).unwrap();
    c.on_piece_kept(1, [1; 32], false);
    assert!(reports(&c.take_actions()).is_empty());
    // Nor is the task reported complete or announced: others could not read it.
    c.on_piece(2, [2; 32], Origin::Parent("p")).unwrap();
    c.on_piece_kept(2, [2; 32], false);
    c.on_complete(true);
    assert!(c.take_actions().is_empty());
}

#[test]
fn a_bad_piece_excludes_and_reports_the_parent_only_while_a_plan_is_open() {
    let now = Instant::now();
    let mut c = core(now);
    c.plan_opened();
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes(),
        parents: vec![parent("p")],
        back_to_source: false,
        ..PlanUpdate::default()
    })
    .unwrap();
    c.take_actions();
    assert_eq!(
        c.on_piece(0, [9; 32], Origin::Parent("p")).unwrap(),
        Verdict::Bad
    );
    assert!(matches!(
        reports(&c.take_actions()).as_slice(),
        [Report::BadParent { parent, index: 0, .. }] if parent == "p"
    ));
    assert!(c.planner().is_excluded("p"));
    c.plan_lost(now);
    assert_eq!(
        c.on_piece(1, [9; 32], Origin::Parent("q")).unwrap(),
        Verdict::Bad
    );
    assert!(reports(&c.take_actions()).is_empty());
}

#[test]
fn a_wrong_upstream_piece_with_a_known_hash_fails_the_attempt() {
    let now = Instant::now();
    let mut c = core(now);
    c.plan_opened();
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes(),
        parents: vec![],
        back_to_source: true,
        ..PlanUpdate::default()
    })
    .unwrap();
    assert!(matches!(
        c.on_piece(0, [9; 32], Origin::Upstream),
        Err(EngineError::UpstreamPieceMismatch(0))
    ));
}

#[test]
fn upstream_failures_resume_from_the_first_missing_piece_then_give_up() {
    let now = Instant::now();
    let mut c = core(now);
    c.no_plan();
    c.on_upstream_size(SIZE).unwrap();
    c.on_piece(0, [0; 32], Origin::Upstream).unwrap();
    c.on_piece_kept(0, [0; 32], true);
    c.take_actions();
    let cut = || Err(EngineError::Upstream(UpstreamError::Http("reset".into())));
    for _ in 1..MAX_UPSTREAM_FAILURES {
        c.on_upstream_done(cut()).unwrap();
        let from = shape().piece_range(1).unwrap().start;
        assert_eq!(c.take_actions(), vec![Action::StartUpstream { from }]);
    }
    assert!(c.on_upstream_done(cut()).is_err());
}

#[test]
fn without_plan_or_shape_the_first_upstream_failure_is_final() {
    let mut c = core(Instant::now());
    c.no_plan();
    c.take_actions();
    let e = EngineError::Upstream(UpstreamError::Status {
        status: 404,
        www_authenticate: None,
    });
    assert_eq!(
        c.on_upstream_done(Err(e)).unwrap_err().to_string(),
        "upstream: upstream answered 404"
    );
}

#[test]
fn a_lost_plan_is_reopened_with_backoff_and_upstream_takes_over_after_the_grace() {
    let t0 = Instant::now();
    let mut c = core(t0);
    c.plan_opened();
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes(),
        parents: vec![],
        back_to_source: false,
        ..PlanUpdate::default()
    })
    .unwrap();
    c.take_actions();
    c.plan_lost(t0);
    // Not streaming from upstream: the back-to-source peers re-open first.
    c.poll(t0, 0, true);
    assert!(c.take_actions().is_empty(), "deferred");
    let t1 = t0 + REPLAN_DEFER;
    // Not connected: nothing to re-open.
    c.poll(t1, 0, false);
    assert!(c.take_actions().is_empty());
    c.poll(t1, 0, true);
    let reopen = |from_upstream| Action::OpenPlan {
        size: SIZE,
        from_upstream,
    };
    assert_eq!(c.take_actions(), vec![reopen(false)]);
    c.plan_refused(t1);
    c.poll(t1 + Duration::from_millis(100), 0, true);
    assert!(c.take_actions().is_empty(), "backing off");
    c.poll(t1 + REPLAN_MIN, 0, true);
    assert_eq!(c.take_actions(), vec![reopen(false)]);
    c.plan_refused(t1 + REPLAN_MIN);
    let a = {
        c.poll(t0 + REPLAN_GRACE, 0, false);
        c.take_actions()
    };
    assert_eq!(a, vec![Action::StartUpstream { from: 0 }]);
    // Streaming from upstream now: the next attempt says so, and the new owner
    // counts this download as the task's back-to-source peer.
    c.poll(t0 + REPLAN_GRACE + REPLAN_MAX, 0, true);
    assert_eq!(c.take_actions(), vec![reopen(true)]);
    // Reports wait for the plan; once re-opened, held pieces are reported again.
    c.on_piece(0, [0; 32], Origin::Upstream).unwrap();
    c.on_piece_kept(0, [0; 32], true);
    assert!(reports(&c.take_actions()).is_empty());
    c.plan_opened();
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes(),
        parents: vec![],
        back_to_source: false,
        ..PlanUpdate::default()
    })
    .unwrap();
    assert_eq!(
        reports(&c.take_actions()),
        vec![&Report::Pieces {
            digest: digest(),
            pieces: vec![(0, None)]
        }]
    );
}

#[test]
fn a_back_to_source_download_reopens_a_lost_plan_at_once() {
    let t0 = Instant::now();
    let mut c = core(t0);
    c.plan_opened();
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: Vec::new(),
        parents: vec![],
        back_to_source: true,
        ..PlanUpdate::default()
    })
    .unwrap();
    c.take_actions();
    assert!(c.upstream_running());
    c.plan_lost(t0);
    c.poll(t0, 0, true);
    assert_eq!(
        c.take_actions(),
        vec![Action::OpenPlan {
            size: SIZE,
            from_upstream: true
        }]
    );
}

#[test]
fn resumed_pieces_are_not_fetched_again() {
    let now = Instant::now();
    let mut c = core(now);
    let mut have = shoal_proto::PieceSet::new(shape().piece_count());
    have.insert(0);
    have.insert(1);
    let hs: Vec<Option<[u8; 32]>> = hashes().into_iter().map(|(_, h)| Some(h)).collect();
    c.resume(shape(), &hs, &have).unwrap();
    c.take_actions();
    c.no_plan();
    let from = shape().piece_range(2).unwrap().start;
    assert_eq!(c.take_actions(), vec![Action::StartUpstream { from }]);
}

#[test]
fn a_source_handed_over_stops_its_upstream_and_fetches_the_rest_from_parents() {
    let now = Instant::now();
    let mut c = core(now);
    c.plan_opened();
    c.on_plan(&source_plan()).unwrap();
    c.on_upstream_size(SIZE).unwrap();
    for i in 0..3 {
        c.on_piece(i, [i as u8; 32], Origin::Upstream).unwrap();
        c.on_piece_kept(i, [i as u8; 32], true);
    }
    c.take_actions();
    // A faster peer took over: the stream stops, and the rest comes from it.
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes(),
        parents: vec![parent("fast")],
        hand_over: true,
        ..PlanUpdate::default()
    })
    .unwrap();
    assert!(c.take_actions().contains(&Action::StopUpstream));
    assert!(!c.upstream_running());
    // The stopped stream's end, if it still comes, changes nothing.
    c.on_upstream_done(Ok(())).unwrap();
    c.poll(now, 3 * shape().piece_size() as u64, true);
    let fetched: Vec<u32> = c
        .take_actions()
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { index, parent, .. } if parent.id == "fast" => Some(*index),
            Action::StartUpstream { .. } => panic!("upstream again"),
            _ => None,
        })
        .collect();
    assert!(fetched.contains(&3), "{fetched:?}");
    assert!(fetched.iter().all(|&i| i >= 3), "{fetched:?}");
    // Without the flag, a plan that no longer names it back-to-source (a
    // replica's view, say) does not stop the stream.
    let mut c = core(now);
    c.plan_opened();
    c.on_plan(&source_plan()).unwrap();
    c.take_actions();
    c.on_plan(&PlanUpdate::default()).unwrap();
    assert!(c.upstream_running());
    assert!(!c.take_actions().contains(&Action::StopUpstream));
}

#[test]
fn a_peer_taking_over_streams_from_its_start_and_the_pieces_before_from_parents() {
    let now = Instant::now();
    let mut c = core(now);
    c.plan_opened();
    let start = 5;
    c.on_plan(&PlanUpdate {
        shape: Some(shape()),
        hashes: hashes()[..start as usize].to_vec(),
        parents: vec![parent("slow")],
        back_to_source: true,
        upstream_from_piece: start,
        ..PlanUpdate::default()
    })
    .unwrap();
    let from = shape().piece_range(start).unwrap().start;
    let a = c.take_actions();
    assert!(a.contains(&Action::StartUpstream { from }), "{a:?}");
    c.poll(now, 0, true);
    let asked: Vec<u32> = c
        .take_actions()
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert!(
        asked.contains(&0) && asked.iter().all(|&i| i < start),
        "{asked:?}"
    );
    // The stream ends at the blob's end: not an error while the pieces before
    // its start are still on their way from parents.
    for i in start..shape().piece_count() {
        c.on_piece(i, [i as u8; 32], Origin::Upstream).unwrap();
        c.on_piece_kept(i, [i as u8; 32], true);
    }
    c.on_upstream_done(Ok(())).unwrap();
    assert!(!c.is_complete());
    // If they starve, upstream again from the first missing piece.
    c.take_actions();
    let starve = PlannerConfig::default().starve_timeout;
    for (index, parent) in c.planner().in_flight() {
        c.on_fetch_failed(index, &parent, true, now);
    }
    let later = now + starve * 2;
    // A plan update meanwhile does not start the stream again.
    c.on_plan(&PlanUpdate {
        back_to_source: true,
        upstream_from_piece: start,
        ..PlanUpdate::default()
    })
    .unwrap();
    let a = c.take_actions();
    assert!(
        !a.iter().any(|a| matches!(a, Action::StartUpstream { .. })),
        "{a:?}"
    );
    c.poll(later, 0, true);
    c.poll(later + starve, 0, true);
    assert!(
        c.take_actions()
            .contains(&Action::StartUpstream { from: 0 }),
        "upstream again from piece 0"
    );
}
