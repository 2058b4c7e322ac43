//! The whole swarm in one snapshot, for the status page (`GET /`, which polls
//! `GET /api/v1/overview`): every peer, and the tasks that matter most now
//! with the peers taking part in each, bounded so that one answer stays small
//! in a cluster of thousands of nodes.
//!
//! Which tasks and holders make the cut is decided here (pure, tested); the
//! HTTP handler only serialises. Not here: anything the page draws.

use std::cmp::Reverse;
use std::time::Instant;

use serde::Serialize;

use super::{CoreStats, HolderView, PeerView, Scheduler, TaskSummary};

/// Tasks an overview lists at most.
pub const OVERVIEW_TASKS: usize = 100;
/// Holders listed per task at most.
pub const OVERVIEW_HOLDERS: usize = 64;

/// One task with the peers taking part, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOverview {
    /// The summary line.
    #[serde(flatten)]
    pub summary: TaskSummary,
    /// Piece hashes known.
    pub known_hashes: u32,
    /// Peers taking part, at most [`OVERVIEW_HOLDERS`]: those fetching from
    /// upstream first, then those downloading (most pieces first), then the
    /// complete ones, then the rest; by id within each.
    pub holders: Vec<HolderView>,
    /// Peers taking part in all (`holders` may list fewer).
    pub holders_total: usize,
}

/// Everything the status page shows, taken under one lock.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Every peer, sorted by id.
    pub peers: Vec<PeerView>,
    /// At most [`OVERVIEW_TASKS`] tasks: those with a download or an upstream
    /// fetch in progress first, then the newest; by digest within each.
    pub tasks: Vec<TaskOverview>,
    /// Tasks the scheduler tracks in all (`tasks` may list fewer).
    pub tasks_total: usize,
    /// Plan streams open now.
    pub open_plans: usize,
    /// The core's counters since start.
    pub stats: CoreStats,
}

impl Scheduler {
    /// The swarm as the status page shows it.
    pub fn overview(&self, now: Instant) -> Overview {
        let mut tasks: Vec<TaskSummary> = self.tasks(now);
        let tasks_total = tasks.len();
        // Active ones first, then the newest; `tasks` came sorted by digest
        // and the sort is stable.
        tasks.sort_by_key(|t| {
            let active = t.downloading > 0 || !t.back_to_source.is_empty();
            (Reverse(active), t.age_secs)
        });
        tasks.truncate(OVERVIEW_TASKS);
        let tasks = tasks
            .into_iter()
            .filter_map(|t| self.task(now, &t.digest))
            .map(|detail| {
                let mut holders = detail.holders;
                let holders_total = holders.len();
                holders.sort_by(|a, b| {
                    rank(a)
                        .cmp(&rank(b))
                        .then(b.pieces.cmp(&a.pieces))
                        .then_with(|| a.peer.cmp(&b.peer))
                });
                holders.truncate(OVERVIEW_HOLDERS);
                TaskOverview {
                    summary: detail.summary,
                    known_hashes: detail.known_hashes,
                    holders,
                    holders_total,
                }
            })
            .collect();
        Overview {
            peers: self.peers(now),
            tasks,
            tasks_total,
            open_plans: self.plans.len(),
            stats: self.stats.clone(),
        }
    }
}

/// Where a holder goes in a task's list: upstream fetchers, downloaders,
/// complete holders, the rest.
fn rank(h: &HolderView) -> u8 {
    match (h.back_to_source, h.downloading, h.complete) {
        (true, _, _) => 0,
        (false, true, _) => 1,
        (false, false, true) => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shoal_proto::Digest;

    use super::*;
    use crate::core::test_support::{SIZE, id, info};
    use crate::core::{CoreConfig, HeldTask, PieceDone};

    fn held(d: Digest) -> HeldTask {
        HeldTask {
            digest: d,
            size: SIZE,
            piece_hashes: vec![[9; 32]; 2],
        }
    }

    #[test]
    fn active_tasks_come_first_then_the_newest_and_the_list_is_capped() {
        let mut core = Scheduler::new(CoreConfig::default());
        let t0 = Instant::now();
        // Many idle tasks held complete by p0, the oldest first.
        let idle: Vec<Digest> = (0..OVERVIEW_TASKS as u8 + 5)
            .map(|i| Digest::from_sha256([i; 32]))
            .collect();
        core.join(t0, info(0), idle.iter().map(|d| held(*d)).collect())
            .unwrap();
        // One task being downloaded, seen first (so the oldest of all).
        let busy = Digest::from_sha256([0xee; 32]);
        core.join(t0, info(1), vec![]).unwrap();
        let later = t0 + Duration::from_secs(10);
        core.open_plan(t0, &id(1), busy, SIZE).unwrap();
        let newest = Digest::from_sha256([0xdd; 32]);
        core.join(later, info(2), vec![held(newest)]).unwrap();

        let o = core.overview(later);
        assert_eq!(o.tasks_total, OVERVIEW_TASKS + 7);
        assert_eq!(o.tasks.len(), OVERVIEW_TASKS);
        assert_eq!(o.tasks[0].summary.digest, busy);
        assert_eq!(o.tasks[1].summary.digest, newest);
        assert_eq!(o.peers.len(), 3);
        assert_eq!(o.peers[0].complete_tasks, OVERVIEW_TASKS + 5);
        assert_eq!(o.peers[0].held_bytes, (OVERVIEW_TASKS as u64 + 5) * SIZE);
        assert_eq!(o.open_plans, 1);
    }

    #[test]
    fn holders_list_the_source_then_downloaders_then_complete_ones() {
        let d = Digest::from_sha256([7; 32]);
        let mut core = Scheduler::new(CoreConfig::default());
        let now = Instant::now();
        for p in 0..4 {
            core.join(now, info(p), vec![]).unwrap();
        }
        // p3 asks first and is elected to fetch from upstream.
        core.open_plan(now, &id(3), d, SIZE).unwrap();
        assert_eq!(core.back_to_source_of(&d), vec![id(3)]);
        core.task_started(now, &id(3), d, SIZE).unwrap();
        core.open_plan(now, &id(1), d, SIZE).unwrap();
        core.open_plan(now, &id(2), d, SIZE).unwrap();
        let piece = |index| PieceDone {
            index,
            hash: Some([index as u8; 32]),
        };
        core.report_pieces(now, &id(3), d, &[piece(0)]).unwrap();
        core.report_pieces(
            now,
            &id(2),
            d,
            &[PieceDone {
                index: 0,
                hash: None,
            }],
        )
        .unwrap();

        let o = core.overview(now);
        let t = &o.tasks[0];
        let order: Vec<&str> = t.holders.iter().map(|h| h.peer.as_str()).collect();
        // The source, then the downloader with a piece, then the one without.
        assert_eq!(order, ["p3", "p2", "p1"]);
        assert_eq!(t.holders_total, 3);
        assert!(t.holders[0].back_to_source && t.holders[0].source);
        // One piece (of two) came from upstream.
        assert_eq!(t.summary.upstream_bytes, SIZE / 2);
        assert_eq!(o.peers[3].held_bytes, SIZE / 2);
    }
}
