//! The scheduler core: a pure state machine over peers, tasks and plans.
//!
//! No I/O, no clock, no global RNG: every input carries `now`, randomness comes
//! from a seeded RNG the core owns, and every decision the adapter must carry
//! out is queued as an [`Effect`] and drained with [`Scheduler::drain_effects`]
//! (the `handle_*` / `poll_*` split of quinn-proto). That is what lets
//! `tests/simulation.rs` drive hundreds of peers deterministically.
//!
//! Layout:
//! - [`types`]: ids, inputs, plan updates, effects.
//! - `membership.rs`: join, sessions, leases, departures.
//! - `reports.rs`: piece reports, task started/complete, evictions, bad parents,
//!   digest mismatches. Piece hashes are believed only from a task's elected
//!   sources (others are [`Ignored`], not refused) and stay provisional until
//!   a peer that reported none of them completes the task.
//! - `operator.rs`: what operators ask for: quarantine a peer, drop a task.
//! - `planning.rs`: plan streams, back-to-source election, flushing updates.
//! - `rank.rs`: parent ranking (a pure function of one task's state).
//! - `views.rs`: read-only snapshots for the operator API and metrics;
//!   `overview.rs`: the bounded whole-swarm snapshot the status page polls.
//!
//! Non-goals: persistence (the state is soft: peers re-join and re-announce),
//! transport, authentication (the adapter binds each caller to its
//! certificate; the core trusts that a report comes from the peer it names,
//! and no further).

mod bad_memory;
mod election;
mod error;
mod link_rates;
mod membership;
mod operator;
mod overview;
mod planning;
mod rank;
mod reports;
#[cfg(test)]
mod test_support;
pub mod types;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use shoal_proto::{Digest, PieceSet, TaskShape};

pub use bad_memory::REMEMBER_FOR as BAD_PEER_MEMORY;
pub use election::HAND_OVER_MIN_PIECES;
pub use error::{CoreError, ErrorKind};
pub use membership::MAX_LINK_MBPS;
pub use operator::DropOrder;
pub use overview::{OVERVIEW_HOLDERS, OVERVIEW_TASKS, Overview, TaskOverview};
pub use planning::{FlushCursor, PlanOpening};
pub use rank::CHILD_CAP_OVERFLOW;
pub use types::*;
pub use views::{CoreStats, HolderView, PeerView, TaskDetail, TaskSummary};

/// Tunables of the core. Defaults suit a cluster of a few thousand nodes.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long a peer stays after its last message (default 30 s). Past that
    /// it leaves the swarm: its pieces are no longer offered and its
    /// back-to-source duty goes to another peer.
    pub peer_ttl: Duration,
    /// Peers fetching one task from upstream at once (default 1).
    pub max_back_to_source: usize,
    /// A back-to-source peer that reports no piece for this long is replaced
    /// (default 20 s).
    pub back_to_source_stall: Duration,
    /// Parents offered per plan (default 8: with fewer, children often do not see
    /// the peer that just got a piece and ask the back-to-source peer again; see
    /// docs/benchmarks.md, "Swarm").
    pub max_parents: usize,
    /// Downloads one peer serves as a parent at once, across tasks
    /// (default 8). A full parent is not offered, except to a download short of
    /// parents, and then at most [`CHILD_CAP_OVERFLOW`] past this (never a peer
    /// fetching the task from upstream).
    pub max_children_per_parent: u32,
    /// Pieces ahead of the reader that count as "needed next" (default 8).
    pub window: u32,
    /// Upload slots assumed for a peer that does not say (default 8).
    pub default_upload_slots: u32,
    /// Bad-piece reports (from distinct children) after which a peer is
    /// offered for no task at all (default 3). One report already excludes it
    /// from the task it was reported for.
    pub bad_parent_limit: u32,
    /// Distinct parents one peer may report bad (default 5). A peer that
    /// reports more is suspected itself (bad memory, or a hostile node): its
    /// later reports are ignored and its earlier ones no longer count towards
    /// anyone's quarantine, so no single node can quarantine the swarm.
    pub max_bad_parents_reported: u32,
    /// Tasks the scheduler tracks at once (default 100,000). A plan or a
    /// `Join` that would create more is refused (`RESOURCE_EXHAUSTED`); the
    /// peer then fetches from upstream.
    pub max_tasks: usize,
    /// Tasks one peer may hold or download at once (default 20,000: a node
    /// with 500 GiB in 10,000 blobs joins with room to spare).
    pub max_tasks_per_peer: usize,
    /// How long a replica that first hears of a task from downloads re-opening
    /// their plans (their replica left) waits before electing a back-to-source
    /// peer (default 2 s). The peer that was streaming the task from upstream
    /// re-opens at once and is counted as the source when it comes; the others
    /// wait 1 s before they re-open. Without the wait, a source that re-opened
    /// late (a loaded node) met a second source elected in its place: one more
    /// upstream copy of the rest of the blob.
    pub resume_grace: Duration,
    /// How long a task's first back-to-source election waits for a faster
    /// downloader, when every downloader so far declared a link rate below the
    /// fastest one a joined peer declared (default 250 ms; zero: never). The
    /// whole swarm receives at most at its source's rate: a half-rate source
    /// doubles every node's pull. A faster downloader opening its plan within
    /// the wait is elected at once; without one, the fastest downloader is
    /// elected when the wait ends. Peers of unknown rate never wait.
    pub faster_source_wait: Duration,
    /// A task's back-to-source peer hands the rest of the blob over to a
    /// downloader whose declared link rate is at least this many times its own
    /// (default 2.0; 0: never). The new source fetches from upstream from the
    /// first piece the old one lacks, the old one stops its upstream download
    /// and fetches the rest from peers. The wait above covers a rollout whose
    /// plans open together; this covers a slow node that pulled first, seconds
    /// before the fast ones. Not with fewer than [`HAND_OVER_MIN_PIECES`] left.
    pub hand_over_ratio: f64,
    /// Seed of the RNG used for tie-breaks.
    pub seed: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            peer_ttl: Duration::from_secs(30),
            max_back_to_source: 1,
            back_to_source_stall: Duration::from_secs(20),
            max_parents: 8,
            max_children_per_parent: 8,
            window: 8,
            default_upload_slots: 8,
            bad_parent_limit: 3,
            max_bad_parents_reported: 5,
            max_tasks: 100_000,
            max_tasks_per_peer: 20_000,
            resume_grace: Duration::from_secs(2),
            faster_source_wait: Duration::from_millis(250),
            hand_over_ratio: 2.0,
            seed: 0x0005_40A1,
        }
    }
}

/// What the core knows about one peer.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) info: PeerInfo,
    /// The peer leaves when `now` passes this.
    pub(crate) lease_until: Instant,
    pub(crate) joined_at: Instant,
    pub(crate) session_open: bool,
    pub(crate) load: Load,
    /// Downloads this peer is currently offered to as a parent.
    pub(crate) children: u32,
    /// Tasks in which this peer holds pieces or downloads.
    pub(crate) tasks: HashSet<Digest>,
    /// Distinct children that reported a bad piece from this peer.
    pub(crate) bad_reports: HashSet<PeerId>,
    /// Distinct parents this peer reported bad (counted up to one past
    /// `max_bad_parents_reported`).
    pub(crate) reported_bad: HashSet<PeerId>,
    /// It reported more than `max_bad_parents_reported` distinct parents:
    /// its bad-parent reports are ignored.
    pub(crate) suspected: bool,
    /// An operator took it out of the swarm as a parent
    /// ([`Scheduler::quarantine`]).
    pub(crate) operator_quarantine: bool,
    /// A hash of the id, for order-independent tie-breaks.
    pub(crate) id_hash: u64,
}

/// Quarantine reason: an operator quarantined the peer.
pub const QUARANTINE_OPERATOR: &str = "operator";
/// Quarantine reason: `bad_parent_limit` distinct children reported bad pieces.
pub const QUARANTINE_BAD_REPORTS: &str = "bad_parent_reports";

/// (next missing piece, its gains, task complete epoch, scheduler slot epoch).
pub(crate) type StarvationMark = (u32, u32, u64, u64);

impl Peer {
    pub(crate) fn upload_slots(&self, config: &CoreConfig) -> u32 {
        if self.info.upload_slots == 0 {
            config.default_upload_slots
        } else {
            self.info.upload_slots
        }
    }

    /// Offered as a parent for no task (an operator said so, or too many
    /// children reported bad pieces from it).
    pub(crate) fn quarantined(&self, config: &CoreConfig) -> bool {
        self.operator_quarantine || self.bad_reports.len() as u32 >= config.bad_parent_limit
    }

    /// Why it is quarantined (empty when it is not).
    pub(crate) fn quarantine_reasons(&self, config: &CoreConfig) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.operator_quarantine {
            reasons.push(QUARANTINE_OPERATOR);
        }
        if self.bad_reports.len() as u32 >= config.bad_parent_limit {
            reasons.push(QUARANTINE_BAD_REPORTS);
        }
        reasons
    }
}

/// One peer's pieces of one task.
#[derive(Debug)]
pub(crate) struct Holding {
    /// Verified pieces (an empty set of 0 pieces until the shape is known).
    pub(crate) pieces: PieceSet,
    /// The peer verified the whole blob against its digest.
    pub(crate) complete: bool,
    /// Every parent offered to this peer for this task (its bad-parent
    /// reports may name only these).
    pub(crate) offered: HashSet<PeerId>,
    /// Parents this peer reported bad for this task: never offered to it
    /// again.
    pub(crate) refused: HashSet<PeerId>,
}

impl Holding {
    pub(crate) fn new(pieces: PieceSet, complete: bool) -> Self {
        Holding {
            pieces,
            complete,
            offered: HashSet::new(),
            refused: HashSet::new(),
        }
    }
}

/// One open plan stream.
#[derive(Debug)]
pub(crate) struct Download {
    pub(crate) plan: PlanId,
    /// Parents currently offered (each counted in its `Peer::children`).
    pub(crate) parents: Vec<PeerId>,
    /// Piece counts of those parents when last sent, to skip unchanged updates.
    pub(crate) sent_counts: Vec<u32>,
    /// Hashes already carried on this stream.
    pub(crate) hashes_sent: PieceSet,
    pub(crate) shape_sent: bool,
    pub(crate) back_to_source_sent: bool,
    /// Elected to take over from a slower source: the first piece to fetch
    /// from upstream (0: from the first piece it lacks).
    pub(crate) upstream_from_piece: u32,
    /// Was the source and a faster peer took over: tell it once to stop.
    pub(crate) hand_over_pending: bool,
    /// Send at the next flush even if the ranking gives what `parents` says:
    /// nothing sent yet, or a parent was withdrawn from `parents` (the child
    /// must hear that it is gone).
    pub(crate) fresh: bool,
    /// Re-rank at the next flush.
    pub(crate) rerank: bool,
    /// `Task::holder_epoch` when last ranked.
    pub(crate) ranked_epoch: u64,
    /// What the download waited for when last ranked (see
    /// [`Scheduler::starvation_mark`]): a starved download is re-ranked only
    /// when this changes.
    pub(crate) rank_mark: Option<StarvationMark>,
}

/// What the core knows about one task.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) shape: Option<TaskShape>,
    /// Known piece hashes by index: only pieces somebody reported, never
    /// sized from the declared size. Provisional until `hashes_confirmed`.
    pub(crate) hashes: BTreeMap<u32, [u8; 32]>,
    /// Peers whose hashes are in `hashes` (a source's reports, a joiner's
    /// held-task hashes).
    pub(crate) hash_reporters: HashSet<PeerId>,
    /// A peer that reported none of the hashes verified the whole blob against
    /// its digest with them: a later digest-mismatch report does not discard
    /// them.
    pub(crate) hashes_confirmed: bool,
    pub(crate) holdings: HashMap<PeerId, Holding>,
    pub(crate) downloads: HashMap<PeerId, Download>,
    /// Peers fetching from upstream now, with the time of their last progress.
    pub(crate) back_to_source: HashMap<PeerId, Instant>,
    /// Every peer told to fetch from upstream since the task's hashes were
    /// last discarded: the only peers whose piece hashes are believed.
    pub(crate) sources: HashSet<PeerId>,
    /// Peers replaced for stalling; elected again only when nobody else can be.
    pub(crate) stalled: HashSet<PeerId>,
    /// Peers whose piece hashes the blob's digest disproved: never elected,
    /// never offered as parents, their reports ignored (they may still
    /// download the task as children). Starts from the
    /// scheduler's [`bad_memory`](bad_memory::BadMemory) when the task is
    /// created again after being forgotten.
    pub(crate) bad: HashSet<PeerId>,
    /// Back-to-source elections so far.
    pub(crate) elections: u32,
    /// Bytes of the pieces peers reported with a hash (fetched from upstream),
    /// once per piece and peer.
    pub(crate) upstream_bytes: u64,
    /// Per piece that some holder gained: how many times (absent: never).
    pub(crate) piece_gains: BTreeMap<u32, u32>,
    /// Bumped when a holder becomes complete.
    pub(crate) complete_epoch: u64,
    /// Bumped when a peer becomes a possible parent (joins the task, or
    /// reports its first piece): downloads short of parents re-rank then.
    pub(crate) holder_epoch: u64,
    pub(crate) created_at: Instant,
    /// No back-to-source election before this time: the task reached this
    /// replica through re-opened plans (see [`CoreConfig::resume_grace`]).
    pub(crate) elect_after: Option<Instant>,
    /// The first election waits for a faster downloader until then (set when
    /// it first had to; see [`CoreConfig::faster_source_wait`]).
    pub(crate) faster_wait_until: Option<Instant>,
    /// Something changed: the next flush looks at this task's downloads.
    pub(crate) dirty: bool,
}

impl Task {
    /// No peer was ever elected (or resumed as) back-to-source for it: its first
    /// election is still to come.
    pub(crate) fn never_had_a_source(&self) -> bool {
        self.elections == 0 && self.sources.is_empty()
    }

    fn new(now: Instant, bad: HashSet<PeerId>) -> Self {
        Task {
            shape: None,
            hashes: BTreeMap::new(),
            hash_reporters: HashSet::new(),
            hashes_confirmed: false,
            holdings: HashMap::new(),
            downloads: HashMap::new(),
            back_to_source: HashMap::new(),
            sources: HashSet::new(),
            stalled: HashSet::new(),
            bad,
            elections: 0,
            upstream_bytes: 0,
            holder_epoch: 0,
            piece_gains: BTreeMap::new(),
            complete_epoch: 0,
            created_at: now,
            elect_after: None,
            faster_wait_until: None,
            dirty: false,
        }
    }

    /// Whether `id` downloads the task now: its plan stream is open and it
    /// has not completed it. A peer keeps its plan open for a few seconds
    /// after completion (so that the report reaches the scheduler first);
    /// that lingering plan is not a download.
    pub(crate) fn is_downloading(&self, id: &PeerId) -> bool {
        self.downloads.contains_key(id) && !self.holdings.get(id).is_some_and(|h| h.complete)
    }

    /// Sets the shape once and sizes every holding's bitmap. The per-piece
    /// tables (`hashes`, `piece_gains`) stay keyed by piece index and grow
    /// only with pieces actually reported.
    pub(crate) fn set_shape(&mut self, shape: TaskShape) {
        debug_assert!(self.shape.is_none());
        let n = shape.piece_count();
        self.shape = Some(shape);
        for h in self.holdings.values_mut() {
            h.pieces = if h.complete {
                PieceSet::full(n)
            } else {
                PieceSet::new(n)
            };
        }
        for d in self.downloads.values_mut() {
            d.hashes_sent = PieceSet::new(n);
        }
        self.dirty = true;
    }

    /// Removes `id` from every download's parents (each re-ranked at the next
    /// flush) and marks the task dirty; returns how many child slots of `id`
    /// that frees.
    pub(crate) fn unparent(&mut self, id: &PeerId) -> u32 {
        let mut released = 0;
        for d in self.downloads.values_mut() {
            if let Some(pos) = d.parents.iter().position(|p| p == id) {
                d.parents.remove(pos);
                d.sent_counts.remove(pos);
                d.rerank = true;
                d.fresh = true;
                released += 1;
            }
        }
        self.dirty = true;
        released
    }

    /// Takes `parent` out of `child`'s download (re-ranked at the next
    /// flush); true when it was offered there (a child slot to release).
    pub(crate) fn unparent_for(&mut self, child: &PeerId, parent: &PeerId) -> bool {
        self.dirty = true;
        let Some(d) = self.downloads.get_mut(child) else {
            return false;
        };
        d.rerank = true;
        let Some(pos) = d.parents.iter().position(|p| p == parent) else {
            return false;
        };
        d.parents.remove(pos);
        if pos < d.sent_counts.len() {
            d.sent_counts.remove(pos);
        }
        d.fresh = true;
        true
    }

    /// True when some holder that may be offered (`offerable`) has every
    /// piece.
    pub(crate) fn has_complete_holder(&self, offerable: impl Fn(&PeerId) -> bool) -> bool {
        self.holdings.iter().any(|(id, h)| {
            (h.complete || (!h.pieces.is_empty() && h.pieces.is_full())) && offerable(id)
        })
    }

    /// True when the peers taking part that may be offered as parents
    /// (`offerable`: not quarantined) hold every piece between them, so no
    /// one needs to go to upstream.
    pub(crate) fn swarm_holds_everything(&self, offerable: impl Fn(&PeerId) -> bool) -> bool {
        if self.has_complete_holder(&offerable) {
            return true;
        }
        let Some(shape) = self.shape else {
            return false;
        };
        let mut union = PieceSet::new(shape.piece_count());
        for (id, h) in &self.holdings {
            if !h.pieces.is_empty() && offerable(id) {
                union.union_with(&h.pieces);
            }
        }
        union.is_full() && !union.is_empty()
    }

    /// Piece hashes known (provisional or confirmed).
    pub(crate) fn known_hashes(&self) -> u32 {
        self.hashes.len() as u32
    }

    fn empty_set(&self) -> PieceSet {
        PieceSet::new(self.shape.map_or(0, |s| s.piece_count()))
    }
}

/// The scheduler's whole state. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) config: CoreConfig,
    pub(crate) peers: HashMap<PeerId, Peer>,
    pub(crate) tasks: HashMap<Digest, Task>,
    pub(crate) plans: HashMap<PlanId, (PeerId, Digest)>,
    pub(crate) next_plan: u64,
    pub(crate) effects: Vec<Effect>,
    pub(crate) rng: SmallRng,
    pub(crate) stats: CoreStats,
    /// Bumped when a parent becomes available again: one at its child cap
    /// frees a slot, or an operator lifts its quarantine. Part of every
    /// starved download's mark, so they look again.
    pub(crate) slot_epoch: u64,
    /// Rankings shared by the plans opened for a task between two flushes (a
    /// rollout's burst), with the task's `holder_epoch` they were built at;
    /// emptied by every flush.
    pub(crate) burst_ranks: HashMap<Digest, (u64, rank::RankCache)>,
    /// Peers found bad for a task, kept after the task is forgotten.
    pub(crate) bad_memory: bad_memory::BadMemory,
    /// The link rates joined peers declared.
    pub(crate) link_rates: link_rates::LinkRates,
    /// Test hook ([`Scheduler::set_test_panic_on_join`]).
    pub(crate) test_panic_on_join: Option<String>,
}

impl Scheduler {
    /// Refuses (changing nothing) when taking part in `digests` would give
    /// the scheduler more than `max_tasks` tasks, or peer `id` more than
    /// `max_tasks_per_peer`.
    pub(crate) fn check_task_caps(
        &self,
        id: &PeerId,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Result<(), CoreError> {
        let mine = self.peers.get(id).map(|p| &p.tasks);
        let (mut new_tasks, mut new_for_peer) = (0usize, 0usize);
        for d in digests {
            if !self.tasks.contains_key(&d) {
                new_tasks += 1;
            }
            if !mine.is_some_and(|t| t.contains(&d)) {
                new_for_peer += 1;
            }
        }
        let peer_total = mine.map_or(0, HashSet::len) + new_for_peer;
        if peer_total > self.config.max_tasks_per_peer {
            return Err(CoreError::exhausted(format!(
                "peer {id} would take part in {peer_total} tasks; the limit per peer is {} (max_tasks_per_peer)",
                self.config.max_tasks_per_peer
            )));
        }
        let total = self.tasks.len() + new_tasks;
        if new_tasks > 0 && total > self.config.max_tasks {
            return Err(CoreError::exhausted(format!(
                "the scheduler tracks {} tasks; {new_tasks} more would pass its limit of {} (max_tasks)",
                self.tasks.len(),
                self.config.max_tasks
            )));
        }
        Ok(())
    }
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: CoreConfig) -> Self {
        let rng = SmallRng::seed_from_u64(config.seed);
        Scheduler {
            config,
            peers: HashMap::new(),
            tasks: HashMap::new(),
            plans: HashMap::new(),
            next_plan: 1,
            effects: Vec::new(),
            burst_ranks: HashMap::new(),
            bad_memory: bad_memory::BadMemory::default(),
            link_rates: link_rates::LinkRates::default(),
            rng,
            stats: CoreStats::default(),
            slot_epoch: 0,
            test_panic_on_join: None,
        }
    }

    /// Test hook: panic when peer `id` joins, as a bug would (the fault tests
    /// check that the process does not live on as a zombie).
    pub fn set_test_panic_on_join(&mut self, id: String) {
        self.test_panic_on_join = Some(id);
    }

    /// The configuration in force.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Takes the effects queued since the last call, in order.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Looks a peer up, or says it must join first.
    pub(crate) fn live_peer(&self, id: &PeerId) -> Result<&Peer, CoreError> {
        self.peers.get(id).ok_or_else(|| {
            CoreError::precondition(format!(
                "peer {id} has not joined (or its lease expired); join first"
            ))
        })
    }
}
