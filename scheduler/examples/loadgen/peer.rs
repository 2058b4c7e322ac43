//! Simulated peers: each one joins, keeps a session (heartbeats, batched
//! piece reports, completions, evictions) and runs downloads that follow
//! their plan stream the way a real peer does: fetch from upstream when told,
//! otherwise only pieces a parent in the plan holds and whose hash the plan
//! carried, in order. No bytes move: a piece "arrives" one `--piece-ms` after
//! it was asked for, and parents have no upload limit.
//!
//! With several scheduler replicas (`--replicas`) each peer joins and keeps a
//! session with every replica, and sends a task's Join entries, reports and plan
//! requests to its owner among the live replicas (rendezvous hashing, as the
//! real peer does). When a replica is killed, every peer notices at once: the
//! plans it held re-open with the task's new owner (back-to-source downloads at
//! once, the others 1 s later, as the real peer's `REPLAN_DEFER`), and the
//! complete tasks it owned are announced to their new owners.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal_proto::v1::{self, peer_event::Event, scheduler_client::SchedulerClient};
use shoal_proto::{Digest, PieceSet, TaskShape, rendezvous};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::stats::Stats;
use crate::workload::{Workload, peer_id, peer_index, peer_info, piece_hash};

/// Events a session's outbound stream buffers.
const SESSION_BUFFER: usize = 256;
/// A report batch is sent early once it holds this many pieces.
const BATCH_MAX: usize = 16;
/// A plan stream the scheduler ends is re-opened at most this many times.
const MAX_REOPEN: u32 = 5;
/// How long a download that is not fetching from upstream waits before it
/// re-opens a plan whose replica went away (the real peer's `REPLAN_DEFER`).
const REPLAN_DEFER: Duration = Duration::from_secs(1);
/// One in this many completed downloads is evicted again later.
const EVICT_ONE_IN: u64 = 20;
/// How long after its completion an evicted task stays.
const EVICT_AFTER: Duration = Duration::from_secs(5);
/// How long a plan stream stays open after `TaskComplete` was sent, as the
/// real peer does (`peer/src/engine/download.rs`, `LINGER`): the session and
/// the plan are separate HTTP/2 streams, so closing the plan at once may
/// reach the scheduler before the last report, which it would then refuse
/// (and end the session).
const LINGER: Duration = Duration::from_secs(5);

impl Timing {
    /// How long after the previous one each piece of a task of `size` bytes
    /// arrives (at least 1 ms).
    fn piece_every(&self, size: u64) -> Duration {
        let piece = TaskShape::for_size(size).map_or(1 << 20, |s| s.piece_size());
        Duration::from_secs_f64(f64::from(piece) / self.bytes_per_sec).max(Duration::from_millis(1))
    }
}

/// Timings of the simulated data plane.
pub(crate) struct Timing {
    /// Bytes a second one download receives.
    pub(crate) bytes_per_sec: f64,
    /// Pending piece reports are sent at least this often.
    pub(crate) report: Duration,
    /// A download that has not completed after this long gives up.
    pub(crate) timeout: Duration,
}

/// What one peer holds and fetches (the load generator's truth).
#[derive(Default)]
pub(crate) struct PeerState {
    pub(crate) held: HashSet<u32>,
    pub(crate) downloading: HashSet<u32>,
}

/// One simulated peer.
pub(crate) struct PeerSlot {
    pub(crate) state: Mutex<PeerState>,
    /// Its sessions' outbound events (one per replica), once open.
    pub(crate) sessions: Vec<OnceLock<mpsc::Sender<v1::PeerEvent>>>,
}

impl PeerSlot {
    fn new(replicas: usize) -> PeerSlot {
        PeerSlot {
            state: Mutex::default(),
            sessions: (0..replicas).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Its session with replica `r`, once open.
    pub(crate) fn session(&self, r: usize) -> Option<mpsc::Sender<v1::PeerEvent>> {
        self.sessions[r].get().cloned()
    }
}

/// What every simulated peer shares.
pub(crate) struct Ctx {
    /// Per replica, its connections.
    pub(crate) channels: Vec<Vec<Channel>>,
    /// The replicas' keys (their gRPC addresses), as peers hash them.
    pub(crate) keys: Vec<String>,
    /// Replicas killed.
    pub(crate) dead: Vec<AtomicBool>,
    /// When the last one was killed.
    pub(crate) died_at: Mutex<Option<Instant>>,
    /// The rollout's task (its back-to-source elections are counted apart).
    pub(crate) rollout_task: std::sync::atomic::AtomicU32,
    /// Each task's digest, parsed.
    digests: Vec<Digest>,
    pub(crate) workload: Workload,
    pub(crate) peers: Vec<PeerSlot>,
    pub(crate) stats: Stats,
    pub(crate) timing: Timing,
    /// When each (peer, task, piece) report was sent.
    reports: Mutex<HashMap<(u32, u32, u32), Instant>>,
}

fn ev(e: Event) -> v1::PeerEvent {
    v1::PeerEvent { event: Some(e) }
}

impl Ctx {
    pub(crate) fn new(
        channels: Vec<Vec<Channel>>,
        keys: Vec<String>,
        workload: Workload,
        peers: u32,
        timing: Timing,
    ) -> Ctx {
        let replicas = keys.len();
        Ctx {
            channels,
            dead: (0..replicas).map(|_| AtomicBool::new(false)).collect(),
            died_at: Mutex::new(None),
            rollout_task: std::sync::atomic::AtomicU32::new(u32::MAX),
            keys,
            digests: workload
                .tasks
                .iter()
                .map(|t| t.digest.parse().expect("a workload digest"))
                .collect(),
            workload,
            peers: (0..peers).map(|_| PeerSlot::new(replicas)).collect(),
            stats: Stats::default(),
            timing,
            reports: Mutex::new(HashMap::new()),
        }
    }

    /// Peer `i`'s client of replica `r`: peers are spread over its connections
    /// round-robin.
    pub(crate) fn client(&self, i: u32, r: usize) -> SchedulerClient<Channel> {
        let c = &self.channels[r];
        SchedulerClient::new(c[i as usize % c.len()].clone())
    }

    /// The live replica that owns `task` (rendezvous hashing over the live keys).
    pub(crate) fn owner(&self, task: u32) -> usize {
        self.owner_among(task, |r| !self.dead[r].load(Ordering::Relaxed))
    }

    /// The owner of `task` among the replicas `live` says are live.
    pub(crate) fn owner_among(&self, task: u32, live: impl Fn(usize) -> bool) -> usize {
        let keys = (0..self.keys.len())
            .filter(|&r| live(r))
            .map(|r| self.keys[r].as_str());
        let key = rendezvous::owner(keys, &self.digests[task as usize]).unwrap_or(&self.keys[0]);
        self.keys.iter().position(|k| k == key).unwrap_or(0)
    }

    /// Peer `i` joins every replica with the tasks of its inventory that replica
    /// owns; returns the heartbeat interval.
    pub(crate) async fn join(&self, i: u32) -> Option<Duration> {
        let held = self.workload.inventory(i);
        let mut heartbeat = None;
        for r in 0..self.keys.len() {
            let request = v1::JoinRequest {
                peer: Some(peer_info(i)),
                tasks: held
                    .iter()
                    .filter(|&&t| self.owner(t) == r)
                    .map(|&t| self.workload.held_task(t))
                    .collect(),
            };
            let started = Instant::now();
            match self.client(i, r).join(request).await {
                Ok(resp) => {
                    self.stats.join.record(started.elapsed());
                    heartbeat = Some(Duration::from_millis(
                        resp.into_inner().heartbeat_interval_ms.max(100),
                    ));
                }
                Err(s) => {
                    self.stats.join_errors.inc();
                    eprintln!("join of {} refused: {s}", peer_id(i));
                    return None;
                }
            }
        }
        self.peers[i as usize]
            .state
            .lock()
            .expect("peer lock")
            .held
            .extend(held);
        heartbeat
    }

    /// Replica `dead` went away: every peer announces the complete tasks it
    /// owned to their new owners (one Join per new owner per peer).
    pub(crate) async fn announce_moves(self: &Arc<Self>, dead: usize, concurrency: usize) {
        use futures::StreamExt;
        futures::stream::iter(0..self.peers.len() as u32)
            .map(|i| {
                let ctx = self.clone();
                async move {
                    let held: Vec<u32> = ctx.peers[i as usize]
                        .state
                        .lock()
                        .expect("peer lock")
                        .held
                        .iter()
                        .copied()
                        .collect();
                    let before = |r: usize| r == dead || !ctx.dead[r].load(Ordering::Relaxed);
                    let mut by_owner: HashMap<usize, Vec<v1::HeldTask>> = HashMap::new();
                    for t in held {
                        if ctx.owner_among(t, before) == dead {
                            by_owner
                                .entry(ctx.owner(t))
                                .or_default()
                                .push(ctx.workload.held_task(t));
                        }
                    }
                    for (r, tasks) in by_owner {
                        let n = tasks.len() as u64;
                        let request = v1::JoinRequest {
                            peer: Some(peer_info(i)),
                            tasks,
                        };
                        if ctx.client(i, r).join(request).await.is_ok() {
                            ctx.stats.tasks_moved.add(n);
                        }
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
    }

    /// Opens peer `i`'s session with every replica; the returned future then
    /// runs them until they end.
    pub(crate) async fn open_sessions(
        self: &Arc<Self>,
        i: u32,
        heartbeat: Duration,
    ) -> Option<impl Future<Output = ()> + use<>> {
        let mut sessions = Vec::new();
        for r in 0..self.keys.len() {
            sessions.push(self.open_session(i, heartbeat, r).await?);
        }
        Some(async move {
            futures::future::join_all(sessions).await;
        })
    }

    /// Opens peer `i`'s session with replica `r`; the returned future then runs
    /// it (heartbeats every `heartbeat`, reading commands) until it ends.
    async fn open_session(
        self: &Arc<Self>,
        i: u32,
        heartbeat: Duration,
        r: usize,
    ) -> Option<impl Future<Output = ()> + use<>> {
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let open = ev(Event::Open(v1::SessionOpen {
            peer_id: peer_id(i),
        }));
        tx.send(open).await.ok()?;
        let started = Instant::now();
        let mut commands = match self.client(i, r).session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.stats.session_errors.inc();
                eprintln!("session of {} refused: {s}", peer_id(i));
                return None;
            }
        };
        self.stats.session_open.record(started.elapsed());
        let _ = self.peers[i as usize].sessions[r].set(tx.clone());
        let ctx = self.clone();
        Some(async move {
            // Heartbeats spread evenly over the interval, not in lockstep.
            let phase = heartbeat.mul_f64(f64::from(i % 1000) / 1000.0);
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + phase, heartbeat);
            beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        let downloads = ctx.peers[i as usize].state.lock().expect("peer lock").downloading.len();
                        let hb = ev(Event::Heartbeat(v1::Heartbeat {
                            active_uploads: 0,
                            active_downloads: downloads as u32,
                        }));
                        if tx.send(hb).await.is_err() {
                            return;
                        }
                        ctx.stats.heartbeats.inc();
                    }
                    cmd = commands.message() => match cmd {
                        Ok(Some(_)) => ctx.stats.commands.inc(),
                        Ok(None) => return,
                        Err(s) => {
                            if ctx.dead[r].load(Ordering::Relaxed) {
                                return;
                            }
                            ctx.stats.sessions_ended.inc();
                            if s.code() != tonic::Code::Unavailable {
                                eprintln!("session of {} ended: {s}", peer_id(i));
                            }
                            return;
                        }
                    },
                }
            }
        })
    }

    /// A peer that neither holds nor fetches `task`, marked as fetching it.
    pub(crate) fn claim_peer(&self, task: u32, rng: &mut impl rand::Rng) -> Option<u32> {
        for _ in 0..16 {
            let i = rng.random_range(0..self.peers.len() as u32);
            let slot = &self.peers[i as usize];
            if slot.sessions.iter().any(|s| s.get().is_none()) {
                continue;
            }
            let mut s = slot.state.lock().expect("peer lock");
            if !s.held.contains(&task) && s.downloading.insert(task) {
                return Some(i);
            }
        }
        None
    }

    fn send_time(&self, parent: u32, task: u32, piece: u32) -> Option<Instant> {
        self.reports
            .lock()
            .expect("reports lock")
            .get(&(parent, task, piece))
            .copied()
    }
}

/// How a download ended.
pub(crate) enum Outcome {
    Done,
    TimedOut,
    Failed,
}

/// A parent as the last plan update described it.
struct ParentView {
    peer: u32,
    pieces: PieceSet,
}

/// One download's view of its plan and of its own pieces.
struct Download {
    peer: u32,
    task: u32,
    /// Known once a plan update carried the shape (or we fetch from upstream).
    pieces: Option<PieceSet>,
    hashes: Option<PieceSet>,
    back_to_source: bool,
    parents: Vec<ParentView>,
    /// Fetched, not reported yet: (index, hash when from upstream).
    pending: Vec<(u32, Option<[u8; 32]>)>,
}

impl Download {
    fn shape(&mut self, count: u32) {
        if self.pieces.is_none() {
            self.pieces = Some(PieceSet::new(count));
            self.hashes = Some(PieceSet::new(count));
        }
    }

    /// Applies an update; returns the report → update latencies it shows.
    fn apply(&mut self, ctx: &Ctx, u: v1::PlanUpdate, first: bool) -> Vec<Duration> {
        let now = Instant::now();
        if let Some(t) = &u.task {
            self.shape(t.piece_count);
        }
        if let Some(h) = &mut self.hashes {
            for ph in &u.piece_hashes {
                if ph.index < h.len() {
                    h.insert(ph.index);
                }
            }
        }
        self.back_to_source = u.back_to_source;
        let Some(count) = self.pieces.as_ref().map(PieceSet::len) else {
            self.parents.clear();
            return Vec::new();
        };
        let mut samples = Vec::new();
        let mut parents = Vec::with_capacity(u.parents.len());
        for p in u.parents {
            let Some(peer) = peer_index(&p.peer_id) else {
                continue;
            };
            let pieces = if p.complete {
                PieceSet::full(count)
            } else {
                match PieceSet::from_bytes(&p.pieces, count) {
                    Ok(s) => s,
                    Err(_) => continue,
                }
            };
            // Growth of a parent this stream already had: those pieces were
            // reported since the last update.
            if !first && let Some(prev) = self.parents.iter().find(|q| q.peer == peer) {
                for i in pieces.iter().filter(|&i| !prev.pieces.contains(i)) {
                    if let Some(sent) = ctx.send_time(peer, self.task, i) {
                        samples.push(now.saturating_duration_since(sent));
                    }
                }
            }
            parents.push(ParentView { peer, pieces });
        }
        self.parents = parents;
        samples
    }

    /// One piece arrives (from upstream, or from a parent that holds it),
    /// if any can. May queue a `TaskStarted` first.
    fn fetch(&mut self, ctx: &Ctx, events: &mut Vec<Event>) {
        let spec = &ctx.workload.tasks[self.task as usize];
        if self.back_to_source && self.pieces.is_none() {
            events.push(Event::Started(v1::TaskStarted {
                digest: spec.digest.clone(),
                size: spec.size,
            }));
            ctx.stats.started.inc();
            self.shape(spec.pieces);
        }
        let (Some(mine), Some(hashes)) = (&mut self.pieces, &self.hashes) else {
            return;
        };
        if self.back_to_source {
            if let Some(i) = mine.first_missing() {
                mine.insert(i);
                self.pending.push((i, Some(piece_hash(self.task, i))));
                ctx.stats.upstream_pieces.inc();
            }
            return;
        }
        // The next few missing pieces, in order, that a parent holds and
        // whose hash the plan carried (a real peer verifies every piece).
        let mut from = 0;
        for _ in 0..8 {
            let Some(i) = mine.missing_from(from) else {
                return;
            };
            if hashes.contains(i) && self.parents.iter().any(|p| p.pieces.contains(i)) {
                mine.insert(i);
                self.pending.push((i, None));
                return;
            }
            from = i + 1;
        }
    }

    fn done(&self) -> bool {
        self.pieces.as_ref().is_some_and(PieceSet::is_full)
    }

    /// Sends the pending pieces as one report.
    async fn report(&mut self, ctx: &Ctx, tx: &mpsc::Sender<v1::PeerEvent>) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let pieces: Vec<v1::PieceDone> = self
            .pending
            .iter()
            .map(|(i, h)| v1::PieceDone {
                index: *i,
                hash: h.map(|h| h.to_vec()).unwrap_or_default(),
            })
            .collect();
        let report = ev(Event::Pieces(v1::PieceReport {
            digest: ctx.workload.tasks[self.task as usize].digest.clone(),
            pieces,
        }));
        let now = Instant::now();
        {
            let mut reports = ctx.reports.lock().expect("reports lock");
            for (i, _) in &self.pending {
                reports.insert((self.peer, self.task, *i), now);
            }
        }
        ctx.stats.report_batches.inc();
        ctx.stats.pieces_reported.add(self.pending.len() as u64);
        self.pending.clear();
        tx.send(report).await.is_ok()
    }
}

/// Peer `peer` downloads `task` (it was claimed by [`Ctx::claim_peer`]);
/// `rollout` says it is part of the rollout (timed apart).
pub(crate) async fn download(ctx: Arc<Ctx>, peer: u32, task: u32, rollout: bool) -> Outcome {
    ctx.stats.download_started();
    let outcome = run_download(&ctx, peer, task, rollout).await;
    ctx.stats.download_ended();
    let mut s = ctx.peers[peer as usize].state.lock().expect("peer lock");
    s.downloading.remove(&task);
    match outcome {
        Outcome::Done => {
            s.held.insert(task);
            ctx.stats.downloads_done.inc();
            if (u64::from(peer) * 31 + u64::from(task)) % EVICT_ONE_IN == 0 {
                drop(s);
                tokio::spawn(evict_later(ctx.clone(), peer, task));
            }
        }
        Outcome::TimedOut => ctx.stats.downloads_timed_out.inc(),
        Outcome::Failed => ctx.stats.downloads_failed.inc(),
    }
    outcome
}

async fn run_download(ctx: &Ctx, peer: u32, task: u32, rollout: bool) -> Outcome {
    // As the real peer: a first plan waits out REPLAN_DEFER after a replica
    // went away, so that back-to-source peers re-open theirs first.
    let died = *ctx.died_at.lock().expect("died lock");
    if let Some(wait) = died.map(|t| (t + REPLAN_DEFER).saturating_duration_since(Instant::now())) {
        tokio::time::sleep(wait).await;
    }
    let mut owner = ctx.owner(task);
    let Some(mut tx) = ctx.peers[peer as usize].session(owner) else {
        return Outcome::Failed;
    };
    let spec = &ctx.workload.tasks[task as usize];
    let size = if (peer ^ task) & 1 == 0 { spec.size } else { 0 };
    let mut request = v1::PlanRequest {
        peer_id: peer_id(peer),
        digest: spec.digest.clone(),
        size,
        ..Default::default()
    };
    let mut dl = Download {
        peer,
        task,
        pieces: None,
        hashes: None,
        back_to_source: false,
        parents: Vec::new(),
        pending: Vec::new(),
    };
    let began = Instant::now();
    let deadline = tokio::time::sleep(ctx.timing.timeout);
    tokio::pin!(deadline);
    let mut client = ctx.client(peer, owner);
    let mut reopened = 0;
    let mut elected = false;
    // A back-to-source download re-opening its plan with a new owner.
    let mut restarted = false;
    'stream: loop {
        let opened = Instant::now();
        let mut stream = match client.plan(request.clone()).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                ctx.stats.plan_errors.inc();
                eprintln!("plan of {} for task {task} refused: {s}", peer_id(peer));
                return Outcome::Failed;
            }
        };
        ctx.stats.plans_opened.inc();
        if std::mem::take(&mut restarted) {
            let started = ev(Event::Started(v1::TaskStarted {
                digest: spec.digest.clone(),
                size: spec.size,
            }));
            if tx.send(started).await.is_err() {
                return Outcome::Failed;
            }
        }
        let mut first = true;
        let mut piece = tokio::time::interval(ctx.timing.piece_every(spec.size));
        piece.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = tokio::time::interval(ctx.timing.report);
        batch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A send to a killed replica's session fails: like the plan stream's
        // end, the task moves.
        let dead = |owner: usize| ctx.dead[owner].load(Ordering::Relaxed);
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(u)) => {
                        if first {
                            ctx.stats.plan_first.record(opened.elapsed());
                            if rollout {
                                ctx.stats.plan_first_rollout.record(opened.elapsed());
                            }
                        }
                        ctx.stats.plan_updates.inc();
                        if u.back_to_source && !elected {
                            elected = true;
                            ctx.stats.back_to_source.inc();
                            if task == ctx.rollout_task.load(Ordering::Relaxed) {
                                ctx.stats.back_to_source_rollout.inc();
                            }
                        }
                        let samples = dl.apply(ctx, u, first);
                        first = false;
                        ctx.stats.report_to_update.record_many(samples);
                    }
                    // Superseded or lagging: a real peer re-opens and gets a
                    // full plan.
                    Ok(None) | Err(_) => break,
                },
                _ = piece.tick() => {
                    let mut events = Vec::new();
                    dl.fetch(ctx, &mut events);
                    let mut sent = true;
                    for e in events {
                        sent = sent && tx.send(ev(e)).await.is_ok();
                    }
                    if dl.pending.len() >= BATCH_MAX {
                        sent = sent && dl.report(ctx, &tx).await;
                    }
                    if !sent {
                        if dead(owner) { break; }
                        return Outcome::Failed;
                    }
                }
                _ = batch.tick() => {
                    if !dl.report(ctx, &tx).await {
                        if dead(owner) { break; }
                        return Outcome::Failed;
                    }
                }
                _ = &mut deadline => return Outcome::TimedOut,
            }
            if dl.done() {
                let complete = ev(Event::Complete(v1::TaskComplete {
                    digest: spec.digest.clone(),
                }));
                if !dl.report(ctx, &tx).await || tx.send(complete).await.is_err() {
                    if dead(owner) {
                        break;
                    }
                    return Outcome::Failed;
                }
                ctx.stats.completes.inc();
                ctx.stats.download.record(began.elapsed());
                if rollout {
                    ctx.stats.download_rollout.record(began.elapsed());
                }
                // Dropping the stream closes the plan; later.
                tokio::spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    drop(stream);
                });
                return Outcome::Done;
            }
        }
        ctx.stats.plan_streams_ended.inc();
        if dead(owner) {
            // The replica went away: re-open with the new owner, the
            // back-to-source peer first.
            ctx.stats.plans_moved.inc();
            if !dl.back_to_source {
                tokio::time::sleep(REPLAN_DEFER).await;
            }
            owner = ctx.owner(task);
            client = ctx.client(peer, owner);
            let Some(t) = ctx.peers[peer as usize].session(owner) else {
                return Outcome::Failed;
            };
            tx = t;
            // A real peer knows the size by now, says it re-opens (and whether
            // it streams from upstream), and the back-to-source peer tells the
            // new owner first.
            request.size = spec.size;
            request.resumed = true;
            request.from_upstream = dl.back_to_source;
            // Its TaskStarted goes once the new owner has opened the plan (as
            // the real peer's does): sent before, it can reach the owner before
            // the plan and end the session ("task unknown").
            restarted = dl.back_to_source;
            // The new owner knows nothing of this download yet: its pieces
            // again, with their hashes (a real peer has them all from its plan
            // or from upstream).
            let held: Vec<u32> = dl.pieces.iter().flat_map(|p| p.iter()).collect();
            dl.pending = held
                .into_iter()
                .map(|i| (i, Some(piece_hash(task, i))))
                .collect();
            continue 'stream;
        }
        reopened += 1;
        if reopened > MAX_REOPEN || !dl.report(ctx, &tx).await {
            return Outcome::Failed;
        }
    }
}

/// Disk pressure: the peer drops a task it completed a while ago.
async fn evict_later(ctx: Arc<Ctx>, peer: u32, task: u32) {
    tokio::time::sleep(EVICT_AFTER).await;
    let slot = &ctx.peers[peer as usize];
    {
        // Marked as fetching until the eviction is sent, so that no new
        // download of it starts on this peer before the scheduler hears.
        let mut s = slot.state.lock().expect("peer lock");
        if s.downloading.contains(&task) || !s.held.remove(&task) {
            return;
        }
        s.downloading.insert(task);
    }
    if let Some(tx) = slot.session(ctx.owner(task)) {
        let evicted = ev(Event::Evicted(v1::TaskEvicted {
            digest: ctx.workload.tasks[task as usize].digest.clone(),
        }));
        if tx.send(evicted).await.is_ok() {
            ctx.stats.evictions.inc();
        }
    }
    slot.state
        .lock()
        .expect("peer lock")
        .downloading
        .remove(&task);
}

/// The probe: a peer of its own, on its own OS thread, runtime and
/// connection, that opens a plan for a task some peer holds every `every`,
/// times the first update and closes the plan again (it fetches nothing, so
/// it leaves nothing behind). Its latencies are what one peer sees while the
/// swarm runs, without the queueing of the load generator's own runtime
/// behind thousands of simulated peers. Runs until `stop` is set.
pub(crate) fn probe(
    endpoint: tonic::transport::Endpoint,
    tasks: Vec<(String, u64)>,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    into: Arc<crate::stats::Latency>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("probe runtime");
        rt.block_on(async move {
            let mut client = match endpoint.connect().await {
                Ok(c) => SchedulerClient::new(c),
                Err(e) => {
                    eprintln!("probe: cannot connect: {e}");
                    return;
                }
            };
            let mut info = peer_info(0);
            info.peer_id = crate::PROBE_ID.into();
            info.quic_addr = "10.255.255.254:7651".into();
            let join = v1::JoinRequest {
                peer: Some(info),
                tasks: vec![],
            };
            if let Err(s) = client.join(join).await {
                eprintln!("probe: join refused: {s}");
                return;
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut k = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                k += 1;
                let (digest, size) = tasks[k % tasks.len()].clone();
                let request = v1::PlanRequest {
                    peer_id: crate::PROBE_ID.into(),
                    digest,
                    size,
                    ..Default::default()
                };
                let started = Instant::now();
                match client.plan(request).await {
                    Ok(r) => {
                        let mut stream = r.into_inner();
                        if let Ok(Some(_)) = stream.message().await {
                            into.record(started.elapsed());
                        }
                    }
                    Err(s) => eprintln!("probe: plan refused: {s}"),
                }
            }
        });
    })
}
