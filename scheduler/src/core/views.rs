//! Read-only snapshots of the core for the operator API, `shoalctl` and
//! metrics. Plain serialisable data; nothing here changes state.

use std::time::Instant;

use serde::Serialize;
use shoal_proto::Digest;

use super::{Holding, PeerId, Scheduler};

/// Counters the core keeps (the adapter exports them as metrics).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CoreStats {
    /// Joins accepted.
    pub joins: u64,
    /// Peers that left (said so, or their lease expired).
    pub departures: u64,
    /// Of those, the ones whose lease expired.
    pub expired: u64,
    /// Parent rankings computed.
    pub plan_decisions: u64,
    /// Plan updates queued.
    pub plan_updates: u64,
    /// Back-to-source elections (first ones and re-elections).
    pub back_to_source_elections: u64,
    /// Back-to-source peers replaced for stalling.
    pub back_to_source_stalls: u64,
    /// Downloads that re-opened a plan while streaming from upstream and were
    /// counted as the task's back-to-source peer (no election needed).
    pub sources_resumed: u64,
    /// Tasks whose back-to-source election waited out a resume grace (they
    /// reached this replica through re-opened plans).
    pub elections_deferred: u64,
    /// Tasks whose first back-to-source election waited for a downloader as
    /// fast as the fastest joined peer (see
    /// [`CoreConfig::faster_source_wait`](super::CoreConfig::faster_source_wait)).
    pub elections_waited_for_faster: u64,
    /// Back-to-source peers that handed the rest of a task over to a faster
    /// downloader (see
    /// [`CoreConfig::hand_over_ratio`](super::CoreConfig::hand_over_ratio)).
    pub sources_handed_over: u64,
    /// Parents offered to a download short of parents while at or past their
    /// child cap (see [`CHILD_CAP_OVERFLOW`](super::CHILD_CAP_OVERFLOW)).
    pub offers_past_cap: u64,
    /// Pieces reported.
    pub pieces_reported: u64,
    /// Tasks completed on a peer.
    pub completions: u64,
    /// Tasks evicted from a peer.
    pub evictions: u64,
    /// Bad-parent reports.
    pub bad_parent_reports: u64,
    /// Peers an operator quarantined.
    pub operator_quarantines: u64,
    /// Drop orders an operator sent (one per task, whatever its holders).
    pub drop_orders: u64,
    /// Piece reports whose hashes were not believed (the reporter was not
    /// elected to fetch the task from upstream).
    pub hashes_ignored: u64,
    /// Times a task's provisional hashes were discarded after a
    /// digest-mismatch report.
    pub hashes_discarded: u64,
    /// Peers suspected for reporting more than `max_bad_parents_reported`
    /// distinct bad parents (their reports are ignored).
    pub suspected_reporters: u64,
}

/// One peer, as the operator API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Stable id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// QUIC address.
    pub addr: String,
    /// Zone label.
    pub zone: String,
    /// Declared link rate in Mbit/s (0: unknown).
    pub link_mbps: u32,
    /// Whether its session stream is open now.
    pub session_open: bool,
    /// Seconds since it joined.
    pub joined_secs: u64,
    /// Seconds until its lease runs out.
    pub lease_secs: u64,
    /// Uploads in flight (last heartbeat).
    pub active_uploads: u32,
    /// Downloads in flight (last heartbeat).
    pub active_downloads: u32,
    /// Downloads it is currently offered to as a parent.
    pub children: u32,
    /// Tasks it holds or downloads.
    pub tasks: usize,
    /// Of those, the tasks it holds complete.
    pub complete_tasks: usize,
    /// Bytes of the verified pieces it holds, over all its tasks.
    pub held_bytes: u64,
    /// Distinct peers that reported bad pieces from it.
    pub bad_reports: usize,
    /// Whether it is offered as a parent for no task.
    pub quarantined: bool,
    /// Why: `"operator"`, `"bad_parent_reports"` (empty when not quarantined).
    pub quarantine_reasons: Vec<&'static str>,
    /// It reported too many distinct parents bad: its reports are ignored.
    pub suspected: bool,
}

/// One task, as the operator API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    /// The task's digest.
    pub digest: Digest,
    /// Size in bytes, once known.
    pub size: Option<u64>,
    /// Piece count, once known.
    pub pieces: Option<u32>,
    /// Peers holding the whole task.
    pub complete_holders: usize,
    /// Peers downloading it now: with a plan stream open and not yet
    /// complete (a peer keeps its plan open a few seconds after it completed,
    /// so that its completion report arrives first; it is not counted here).
    pub downloading: usize,
    /// Peers fetching it from upstream now.
    pub back_to_source: Vec<String>,
    /// Back-to-source elections so far (hand-overs to a faster peer included).
    pub elections: u32,
    /// Bytes peers reported fetching from upstream (pieces they reported
    /// with a hash, counted once per piece and peer): the task's upstream
    /// egress. Divided by `size`, the number of upstream copies.
    pub upstream_bytes: u64,
    /// Seconds since the scheduler first saw it.
    pub age_secs: u64,
}

/// One peer's progress in one task.
#[derive(Debug, Clone, Serialize)]
pub struct HolderView {
    /// The peer.
    pub peer: String,
    /// Pieces it holds.
    pub pieces: u32,
    /// Whether it verified the whole task.
    pub complete: bool,
    /// Whether it is downloading now (a plan stream open, not complete).
    pub downloading: bool,
    /// Whether it fetches from upstream now.
    pub back_to_source: bool,
    /// Whether it was ever elected to fetch this task from upstream (since
    /// the task's hashes were last discarded): its piece hashes are believed.
    pub source: bool,
    /// Parents it is offered now.
    pub parents: Vec<String>,
}

/// A task with its holders.
#[derive(Debug, Clone, Serialize)]
pub struct TaskDetail {
    /// The summary line.
    #[serde(flatten)]
    pub summary: TaskSummary,
    /// Piece hashes known.
    pub known_hashes: u32,
    /// Every peer taking part, sorted by id.
    pub holders: Vec<HolderView>,
    /// Peers whose piece hashes for the task a digest mismatch disproved,
    /// sorted: never elected or offered for it, their reports ignored.
    pub bad_peers: Vec<String>,
}

impl Scheduler {
    /// Every peer, sorted by id.
    pub fn peers(&self, now: Instant) -> Vec<PeerView> {
        let mut out: Vec<PeerView> = self
            .peers
            .values()
            .map(|p| PeerView {
                id: p.info.id.to_string(),
                hostname: p.info.hostname.clone(),
                addr: p.info.addr.to_string(),
                zone: p.info.zone.clone(),
                link_mbps: p.info.link_mbps,
                session_open: p.session_open,
                joined_secs: now.saturating_duration_since(p.joined_at).as_secs(),
                lease_secs: p.lease_until.saturating_duration_since(now).as_secs(),
                active_uploads: p.load.active_uploads,
                active_downloads: p.load.active_downloads,
                children: p.children,
                tasks: p.tasks.len(),
                complete_tasks: p
                    .tasks
                    .iter()
                    .filter(|d| self.holding(&p.info.id, d).is_some_and(|h| h.complete))
                    .count(),
                held_bytes: p.tasks.iter().map(|d| self.held_bytes(&p.info.id, d)).sum(),
                bad_reports: p.bad_reports.len(),
                quarantined: p.quarantined(&self.config),
                quarantine_reasons: p.quarantine_reasons(&self.config),
                suspected: p.suspected,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every task, sorted by digest.
    pub fn tasks(&self, now: Instant) -> Vec<TaskSummary> {
        let mut out: Vec<TaskSummary> = self
            .tasks
            .keys()
            .filter_map(|d| self.summary(now, d))
            .collect();
        out.sort_by_key(|t| t.digest);
        out
    }

    /// One task with its holders, if known.
    pub fn task(&self, now: Instant, digest: &Digest) -> Option<TaskDetail> {
        let summary = self.summary(now, digest)?;
        let task = &self.tasks[digest];
        let mut holders: Vec<HolderView> = task
            .holdings
            .iter()
            .map(|(id, h)| HolderView {
                peer: id.to_string(),
                pieces: h.pieces.count(),
                complete: h.complete,
                downloading: task.is_downloading(id),
                back_to_source: task.back_to_source.contains_key(id),
                source: task.sources.contains(id),
                parents: task
                    .downloads
                    .get(id)
                    .map(|d| d.parents.iter().map(PeerId::to_string).collect())
                    .unwrap_or_default(),
            })
            .collect();
        holders.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut bad_peers: Vec<String> = task.bad.iter().map(PeerId::to_string).collect();
        bad_peers.sort();
        Some(TaskDetail {
            summary,
            known_hashes: task.known_hashes(),
            holders,
            bad_peers,
        })
    }

    fn holding(&self, id: &PeerId, digest: &Digest) -> Option<&Holding> {
        self.tasks.get(digest)?.holdings.get(id)
    }

    /// Bytes of the verified pieces `id` holds of `digest` (0 while the size
    /// is unknown).
    fn held_bytes(&self, id: &PeerId, digest: &Digest) -> u64 {
        let (Some(task), Some(h)) = (self.tasks.get(digest), self.holding(id, digest)) else {
            return 0;
        };
        let Some(shape) = task.shape else {
            return 0;
        };
        if h.complete {
            return shape.size();
        }
        // Every piece is full-sized but the last one.
        let n = u64::from(h.pieces.count());
        let last = shape.piece_count().saturating_sub(1);
        let mut bytes = n * u64::from(shape.piece_size());
        if n > 0 && h.pieces.contains(last) {
            bytes -= u64::from(shape.piece_size() - shape.piece_len(last).unwrap_or(0));
        }
        bytes
    }

    fn summary(&self, now: Instant, digest: &Digest) -> Option<TaskSummary> {
        let t = self.tasks.get(digest)?;
        let mut b2s: Vec<String> = t.back_to_source.keys().map(PeerId::to_string).collect();
        b2s.sort();
        Some(TaskSummary {
            digest: *digest,
            size: t.shape.map(|s| s.size()),
            pieces: t.shape.map(|s| s.piece_count()),
            complete_holders: t.holdings.values().filter(|h| h.complete).count(),
            downloading: t.downloads.keys().filter(|p| t.is_downloading(p)).count(),
            back_to_source: b2s,
            elections: t.elections,
            upstream_bytes: t.upstream_bytes,
            age_secs: now.saturating_duration_since(t.created_at).as_secs(),
        })
    }

    /// Counters since start.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Number of peers, tasks and open plan streams.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.peers.len(), self.tasks.len(), self.plans.len())
    }

    /// Downloads in progress: plan streams of peers that have not completed
    /// their task (a plan kept open after completion is not one).
    pub fn downloads_in_progress(&self) -> usize {
        self.tasks
            .values()
            .map(|t| t.downloads.keys().filter(|p| t.is_downloading(p)).count())
            .sum()
    }

    /// Peers quarantined now (for any reason).
    pub fn quarantined_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.quarantined(&self.config))
            .count()
    }

    /// Children currently assigned to a parent (for tests and metrics).
    pub fn children_of(&self, id: &PeerId) -> Option<u32> {
        self.peers.get(id).map(|p| p.children)
    }

    /// Downloads that currently list `id` as a parent, counted from the
    /// plans themselves (for checking the `children_of` accounting).
    pub fn offered_as_parent(&self, id: &PeerId) -> u32 {
        self.tasks
            .values()
            .flat_map(|t| t.downloads.values())
            .filter(|d| d.parents.contains(id))
            .count() as u32
    }

    /// Back-to-source peers of a task right now.
    pub fn back_to_source_of(&self, digest: &Digest) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .tasks
            .get(digest)
            .map(|t| t.back_to_source.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether `id` is a live, unquarantined peer (for invariant checks).
    pub fn is_offerable(&self, id: &PeerId, digest: &Digest) -> bool {
        self.peers
            .get(id)
            .is_some_and(|p| !p.quarantined(&self.config))
            && self.tasks.get(digest).is_some_and(|t| !t.bad.contains(id))
    }

    /// Whether `id` is bad for `digest`: a digest mismatch disproved its piece
    /// hashes (for invariant checks: it is never elected, nor offered).
    pub fn is_bad_for(&self, id: &PeerId, digest: &Digest) -> bool {
        self.tasks.get(digest).is_some_and(|t| t.bad.contains(id))
    }

    /// Whether `child` reported `parent` bad for `digest` (for invariant
    /// checks: such a parent is never offered to it again).
    pub fn reported_by(&self, child: &PeerId, parent: &PeerId, digest: &Digest) -> bool {
        self.tasks
            .get(digest)
            .and_then(|t| t.holdings.get(child))
            .is_some_and(|h| h.refused.contains(parent))
    }

    /// The pieces `id` holds of `digest`, if it takes part.
    pub fn pieces_of(&self, id: &PeerId, digest: &Digest) -> Option<shoal_proto::PieceSet> {
        self.tasks
            .get(digest)?
            .holdings
            .get(id)
            .map(|h| h.pieces.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use shoal_proto::Digest;

    use crate::core::test_support::{SIZE, id, info};
    use crate::core::{CoreConfig, PieceDone, Scheduler};

    /// A peer keeps its plan stream open a few seconds after it completed a
    /// task (so that its completion report arrives first): in that time it
    /// is shown complete, not also downloading (`shoalctl tasks` once showed
    /// `COMPLETE 3` and `DOWNLOADING 3` for three peers).
    #[test]
    fn a_complete_peer_with_its_plan_still_open_is_not_downloading() {
        let d = Digest::from_sha256([3; 32]);
        let mut core = Scheduler::new(CoreConfig::default());
        let now = Instant::now();
        for p in 0..2 {
            core.join(now, info(p), vec![]).unwrap();
        }
        core.open_plan(now, &id(0), d, SIZE).unwrap();
        core.open_plan(now, &id(1), d, SIZE).unwrap();
        core.task_started(now, &id(0), d, SIZE).unwrap();
        let all = [0, 1].map(|index| PieceDone {
            index,
            hash: Some([index as u8; 32]),
        });
        core.report_pieces(now, &id(0), d, &all).unwrap();
        core.task_complete(now, &id(0), d).unwrap();

        let t = core.task(now, &d).unwrap();
        assert_eq!(t.summary.complete_holders, 1);
        assert_eq!(t.summary.downloading, 1, "only p1 downloads");
        let p0 = &t.holders[0];
        assert!(p0.complete && !p0.downloading && !p0.back_to_source && p0.source);
        assert!(t.holders[1].downloading && !t.holders[1].complete);
        assert_eq!(t.summary.upstream_bytes, SIZE);

        // p1 completes too: nobody downloads, though both plans are open.
        let from_peers = [0, 1].map(|index| PieceDone { index, hash: None });
        core.report_pieces(now, &id(1), d, &from_peers).unwrap();
        core.task_complete(now, &id(1), d).unwrap();
        let s = &core.tasks(now)[0];
        assert_eq!((s.complete_holders, s.downloading), (2, 0));
        assert_eq!(core.downloads_in_progress(), 0);
        assert_eq!(core.sizes().2, 2, "both plans are still open");
        // Pieces from peers are not upstream egress.
        assert_eq!(s.upstream_bytes, SIZE);
        let peers = core.peers(now);
        assert_eq!(peers[1].complete_tasks, 1);
        assert_eq!(peers[1].held_bytes, SIZE);
    }
}
