//! Unit tests of the session reports (`reports.rs`).

use std::time::Instant;

use shoal_proto::Digest;

use crate::core::test_support::{SIZE, id, info, parents_sent_to};
use crate::core::{
    CoreConfig, ErrorKind, HeldTask, Ignored, PeerId, PieceDone, PlanOpening, Scheduler,
};

fn piece(index: u32, hash: u8) -> PieceDone {
    PieceDone {
        index,
        hash: Some([hash; 32]),
    }
}

/// p0 is elected for the task (size known), p1 downloads.
fn swarm() -> (Scheduler, Instant, Digest) {
    let digest = Digest::from_sha256([5; 32]);
    let mut core = Scheduler::new(CoreConfig::default());
    let now = Instant::now();
    for p in 0..3 {
        core.join(now, info(p), vec![]).unwrap();
    }
    core.open_plan(now, &id(0), digest, 0).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    core.task_started(now, &id(0), digest, SIZE).unwrap();
    core.open_plan(now, &id(1), digest, SIZE).unwrap();
    (core, now, digest)
}

#[test]
fn hashes_from_a_peer_not_elected_are_ignored_not_fatal() {
    let (mut core, now, digest) = swarm();
    let out = core
        .report_pieces(now, &id(1), digest, &[piece(0, 66)])
        .unwrap();
    assert_eq!(out, Some(Ignored::HashesNotElected));
    assert_eq!(core.task(now, &digest).unwrap().known_hashes, 0);
    assert_eq!(core.stats().hashes_ignored, 1);
    // The elected peer's hashes are believed, and a matching hash from
    // another peer then counts as a verified piece.
    assert_eq!(
        core.report_pieces(now, &id(0), digest, &[piece(0, 7)])
            .unwrap(),
        None
    );
    assert_eq!(
        core.report_pieces(now, &id(1), digest, &[piece(0, 7)])
            .unwrap(),
        None
    );
    let detail = core.task(now, &digest).unwrap();
    assert_eq!(detail.known_hashes, 1);
    let p1 = detail.holders.iter().find(|h| h.peer == "p1").unwrap();
    assert_eq!(p1.pieces, 1);
}

#[test]
fn a_digest_mismatch_discards_provisional_hashes_and_re_elects() {
    let (mut core, now, digest) = swarm();
    core.report_pieces(now, &id(0), digest, &[piece(0, 7), piece(1, 8)])
        .unwrap();
    core.report_pieces(
        now,
        &id(1),
        digest,
        &[
            PieceDone {
                index: 0,
                hash: None,
            },
            PieceDone {
                index: 1,
                hash: None,
            },
        ],
    )
    .unwrap();
    core.drain_effects();
    assert_eq!(core.digest_mismatch(now, &id(1), digest).unwrap(), None);
    assert_eq!(core.stats().hashes_discarded, 1);
    // p0 reported the hashes: it is bad for the task and cannot come back
    // as its source; p1's plan was closed.
    assert!(core.task(now, &digest).is_none(), "nobody holds anything");
    assert!(
        core.drain_effects()
            .iter()
            .any(|e| matches!(e, crate::core::Effect::ClosePlan { .. }))
    );
    core.open_plan(now, &id(1), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(1)]);
    assert_eq!(core.task(now, &digest).unwrap().known_hashes, 0);
}

/// The swarm, after p0 (its source) reported piece hashes that p1's assembled
/// blob disproved: p0 is bad for the task, and the task is forgotten.
fn caught_lying() -> (Scheduler, Instant, Digest) {
    let (mut core, now, digest) = swarm();
    core.report_pieces(now, &id(0), digest, &[piece(0, 7), piece(1, 8)])
        .unwrap();
    assert_eq!(core.digest_mismatch(now, &id(1), digest).unwrap(), None);
    (core, now, digest)
}

/// The task is forgotten after a mismatch (nobody holds anything), but the
/// source whose hashes were disproved stays bad for it: opening the next plan
/// first, or re-opening one claiming to stream from upstream, does not make it
/// the source again, and it is offered to nobody as a parent.
#[test]
fn a_source_whose_hashes_were_disproved_is_not_elected_when_the_task_comes_back() {
    let (mut core, now, digest) = caught_lying();
    assert!(core.task(now, &digest).is_none(), "the task is forgotten");
    core.open_plan(now, &id(0), digest, SIZE).unwrap();
    assert_eq!(core.task(now, &digest).unwrap().bad_peers, vec!["p0"]);
    assert!(
        core.back_to_source_of(&digest).is_empty(),
        "the culprit was elected again"
    );
    core.open_plan_with(now, &id(0), digest, SIZE, PlanOpening::reopen(true))
        .unwrap();
    assert!(
        core.back_to_source_of(&digest).is_empty(),
        "the culprit was counted as the source again"
    );
    core.open_plan(now, &id(1), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(1)]);
    // It may download the task, but what it says of it is not believed (and
    // its session goes on: no error), and nobody is offered it as a parent.
    for report in [
        core.report_pieces(now, &id(0), digest, &[piece(0, 7)]),
        core.task_complete(now, &id(0), digest),
        core.bad_parent(now, &id(0), digest, &id(1)),
        core.digest_mismatch(now, &id(0), digest),
    ] {
        assert_eq!(report.unwrap(), Some(Ignored::ReporterBadForTask));
    }
    assert_eq!(core.task(now, &digest).unwrap().known_hashes, 0);
    assert_eq!(core.back_to_source_of(&digest), vec![id(1)]);
    core.open_plan(now, &id(2), digest, SIZE).unwrap();
    core.flush();
    core.drain_effects();
    core.report_pieces(now, &id(1), digest, &[piece(0, 17)])
        .unwrap();
    core.flush();
    let effects = core.drain_effects();
    let offered_to_2 = parents_sent_to(&effects, &id(2)).expect("p2 planned");
    assert!(offered_to_2.contains(&id(1)), "{offered_to_2:?}");
    assert!(!offered_to_2.contains(&id(0)), "p2 was offered the culprit");
    assert_eq!(core.bad_memory.len(), 1);
}

/// Re-opening first as if its replica had left does not put off the election
/// either (the resume grace waits for an old source; the culprit cannot be one).
#[test]
fn a_source_whose_hashes_were_disproved_cannot_put_off_the_election() {
    let (mut core, now, digest) = caught_lying();
    core.open_plan_with(now, &id(0), digest, SIZE, PlanOpening::reopen(true))
        .unwrap();
    core.open_plan(now, &id(1), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(1)]);
    assert_eq!(core.stats().elections_deferred, 0);
}

/// Nor does the culprit come back as a holder of the task, with its hashes, by
/// re-joining with it (a peer that left and came back).
#[test]
fn a_source_whose_hashes_were_disproved_cannot_re_join_as_a_holder() {
    let (mut core, now, digest) = caught_lying();
    core.leave(now, &id(0));
    let held = HeldTask {
        digest,
        size: SIZE,
        piece_hashes: vec![[7; 32], [8; 32]],
    };
    core.join(now, info(0), vec![held]).unwrap();
    assert!(core.task(now, &digest).is_none(), "p0 holds the task again");
    core.open_plan(now, &id(1), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(1)]);
    assert_eq!(core.task(now, &digest).unwrap().known_hashes, 0);
}

#[test]
fn a_completion_by_another_peer_confirms_the_hashes() {
    let (mut core, now, digest) = swarm();
    core.report_pieces(now, &id(0), digest, &[piece(0, 7), piece(1, 8)])
        .unwrap();
    core.task_complete(now, &id(0), digest).unwrap();
    core.open_plan(now, &id(2), digest, SIZE).unwrap();
    // The source's own completion confirms nothing.
    core.task_complete(now, &id(1), digest).unwrap();
    assert_eq!(
        core.digest_mismatch(now, &id(2), digest).unwrap(),
        Some(Ignored::MismatchAfterConfirmed)
    );
    assert_eq!(core.task(now, &digest).unwrap().known_hashes, 2);
    // Once confirmed, the reporter cannot retract them either.
    assert_eq!(
        core.digest_mismatch(now, &id(0), digest).unwrap(),
        Some(Ignored::MismatchAfterConfirmed)
    );
}

#[test]
fn the_source_retracts_its_own_hashes_and_may_be_elected_again() {
    let (mut core, now, digest) = swarm();
    core.report_pieces(now, &id(0), digest, &[piece(0, 7), piece(1, 8)])
        .unwrap();
    core.drain_effects();
    assert_eq!(core.digest_mismatch(now, &id(0), digest).unwrap(), None);
    assert_eq!(core.stats().hashes_discarded, 1);
    // Not bad for the task: it may open a plan and be elected again.
    core.open_plan(now, &id(0), digest, SIZE).unwrap();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    assert_eq!(core.task(now, &digest).unwrap().known_hashes, 0);
}

/// `n` peers p1..=pn hold `digest` complete; p0 opens a plan for it.
fn holders(config: CoreConfig, n: u8) -> (Scheduler, Instant, Digest) {
    let digest = Digest::from_sha256([9; 32]);
    let mut core = Scheduler::new(config);
    let now = Instant::now();
    core.join(now, info(0), vec![]).unwrap();
    for p in 1..=n {
        let held = HeldTask {
            digest,
            size: SIZE,
            piece_hashes: vec![],
        };
        core.join(now, info(p), vec![held]).unwrap();
    }
    core.open_plan(now, &id(0), digest, SIZE).unwrap();
    core.flush();
    (core, now, digest)
}

fn offered_now(core: &mut Scheduler) -> Vec<PeerId> {
    core.flush();
    parents_sent_to(&core.drain_effects(), &id(0)).unwrap_or_default()
}

#[test]
fn a_bad_parent_never_offered_is_ignored() {
    let (mut core, now, digest) = holders(CoreConfig::default(), 2);
    core.join(now, info(7), vec![]).unwrap();
    let offered = offered_now(&mut core);
    assert!(!offered.is_empty() && !offered.contains(&id(7)));
    assert_eq!(
        core.bad_parent(now, &id(0), digest, &id(7)).unwrap(),
        Some(Ignored::BadParentNotOffered)
    );
    assert_eq!(core.stats().bad_parent_reports, 0);
    assert_eq!(
        core.bad_parent(now, &id(0), digest, &offered[0]).unwrap(),
        None
    );
    assert_eq!(core.stats().bad_parent_reports, 1);
    let view = core.peers(now);
    let reported = view.iter().find(|p| p.id == offered[0].as_str()).unwrap();
    assert_eq!(reported.bad_reports, 1);
    assert!(!reported.quarantined);
    // Never offered to p0 again, but still to another child: one node's
    // word takes a parent from nobody else.
    assert!(!offered_now(&mut core).contains(&offered[0]));
    core.open_plan(now, &id(8), digest, SIZE).unwrap_err();
    core.join(now, info(8), vec![]).unwrap();
    core.open_plan(now, &id(8), digest, SIZE).unwrap();
    core.flush();
    let to_p8 = parents_sent_to(&core.drain_effects(), &id(8)).unwrap();
    assert!(to_p8.contains(&offered[0]), "{to_p8:?}");
}

#[test]
fn one_reporter_of_many_parents_is_suspected_and_quarantines_nobody() {
    // One report would quarantine a parent everywhere.
    let config = CoreConfig {
        bad_parent_limit: 1,
        ..CoreConfig::default()
    };
    let limit = config.max_bad_parents_reported as usize;
    let (mut core, now, digest) = holders(config, 12);
    let mut reported = Vec::new();
    while reported.len() < limit {
        let parent = offered_now(&mut core)
            .into_iter()
            .find(|p| !reported.contains(p))
            .expect("a parent not reported yet");
        assert_eq!(core.bad_parent(now, &id(0), digest, &parent).unwrap(), None);
        reported.push(parent);
    }
    let quarantined = |core: &Scheduler| {
        core.peers(now)
            .into_iter()
            .filter(|p| p.quarantined)
            .count()
    };
    assert_eq!(quarantined(&core), limit);
    // One more distinct parent: the reporter is suspected, and its word
    // no longer quarantines anyone.
    let parent = offered_now(&mut core)
        .into_iter()
        .find(|p| !reported.contains(p))
        .unwrap();
    assert_eq!(
        core.bad_parent(now, &id(0), digest, &parent).unwrap(),
        Some(Ignored::BadParentReporterSuspected)
    );
    assert_eq!(quarantined(&core), 0);
    assert!(core.peers(now).iter().any(|p| p.id == "p0" && p.suspected));
    assert_eq!(core.stats().suspected_reporters, 1);
    // Later reports are ignored too, and change nothing.
    let other = offered_now(&mut core)
        .into_iter()
        .find(|p| p != &parent)
        .unwrap_or(parent);
    assert_eq!(
        core.bad_parent(now, &id(0), digest, &other).unwrap(),
        Some(Ignored::BadParentReporterSuspected)
    );
    assert_eq!(core.stats().bad_parent_reports, limit as u64);
}

#[test]
fn task_caps_refuse_without_changing_anything() {
    let config = CoreConfig {
        max_tasks: 2,
        max_tasks_per_peer: 1,
        ..CoreConfig::default()
    };
    let mut core = Scheduler::new(config);
    let now = Instant::now();
    let d = |n: u8| Digest::from_sha256([n; 32]);
    let held = |n: u8| HeldTask {
        digest: d(n),
        size: SIZE,
        piece_hashes: vec![],
    };
    // Two held tasks for one peer: over its own cap.
    let e = core.join(now, info(0), vec![held(1), held(2)]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    assert!(e.message.contains("max_tasks_per_peer"), "{e}");
    assert!(core.peers(now).is_empty());
    core.join(now, info(0), vec![held(1)]).unwrap();
    core.join(now, info(1), vec![]).unwrap();
    core.join(now, info(2), vec![]).unwrap();
    // p0 is at its cap for a new task, but may fetch the one it has.
    let e = core.open_plan(now, &id(0), d(2), SIZE).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    core.open_plan(now, &id(0), d(1), SIZE).unwrap();
    core.open_plan(now, &id(1), d(2), SIZE).unwrap();
    // Two tasks in all: a third is refused for everyone.
    let e = core.open_plan(now, &id(2), d(3), SIZE).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    assert!(e.message.contains("max_tasks"), "{e}");
    assert_eq!(core.tasks(now).len(), 2);
    core.open_plan(now, &id(2), d(2), SIZE).unwrap();
}
