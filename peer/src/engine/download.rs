//! [`Download`]: one task being fetched, and the driver loop behind it.
//!
//! The driver is the thin async shell around the [`Planner`]: it opens the plan
//! stream, spawns piece fetches the planner asks for, streams from upstream when
//! told to (back-to-source) or when parents cannot serve, verifies every piece
//! (SHA-256 against its hash) and the whole blob (against its digest), stores,
//! reports, and publishes progress for the readers.
//!
//! Reporting rules (the scheduler closes a session on a report it refuses): nothing
//! is reported without a plan stream; hashes only while back-to-source; a piece
//! without a hash only when the scheduler handed out its hash; `Complete` only when
//! every hash came from the scheduler or this peer is back-to-source.
//!
//! Not here: decisions ([`super::planner`]), the byte stream for readers
//! ([`super::reader`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use sha2::{Digest as _, Sha256};
use shoal_proto::piece::{PieceSet, TaskShape};
use shoal_proto::{Digest, v1};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::planner::Planner;
use super::upstream::{Upstream, UpstreamError};
use super::{EngineError, Inner};
use crate::scheduler_link::Report;
use crate::store::PieceStore;
use crate::transfer::FetchError;

/// How often the driver looks at timeouts and starvation without other input.
const TICK: Duration = Duration::from_millis(200);
/// How long the plan stream stays open after completion, so the `Complete` report
/// reaches the scheduler before the plan is closed.
const LINGER: Duration = Duration::from_secs(5);
/// Upstream failures after which the download fails.
const MAX_UPSTREAM_FAILURES: u32 = 3;
/// Events (each may carry a piece) queued from fetches and upstream to the driver.
const EVENT_QUEUE: usize = 1;
/// After the plan stream is lost (scheduler restart), how long the download goes on
/// with the parents it knows before it also streams from upstream.
const REPLAN_GRACE: Duration = Duration::from_secs(3);
/// First delay between attempts to re-open a lost plan; doubles up to [`REPLAN_MAX`].
const REPLAN_MIN: Duration = Duration::from_millis(250);
const REPLAN_MAX: Duration = Duration::from_secs(8);

/// Where a download stands.
#[derive(Debug, Clone)]
pub enum DownloadState {
    /// Still fetching.
    Running,
    /// Every piece is verified and the blob matches its digest.
    Complete,
    /// Failed for good: why (what every reader gets).
    Failed(EngineError),
}

impl DownloadState {
    /// Still fetching.
    pub fn is_running(&self) -> bool {
        matches!(self, DownloadState::Running)
    }
}

/// What readers watch.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The task's shape once known.
    pub shape: Option<TaskShape>,
    /// Verified pieces readable now.
    pub have: PieceSet,
    /// Where the download stands.
    pub state: DownloadState,
}

/// Counters of one download.
#[derive(Debug, Default)]
pub struct DownloadStats {
    /// Pieces received from parents and verified.
    pub pieces_from_parents: AtomicU64,
    /// Pieces received from upstream.
    pub pieces_from_upstream: AtomicU64,
    /// Pieces from parents that did not match their hash.
    pub bad_pieces: AtomicU64,
    /// Piece fetches from parents that failed.
    pub fetch_failures: AtomicU64,
}

/// One task being fetched (or already held), shared by every request for it.
pub struct Download {
    digest: Digest,
    store: Arc<dyn PieceStore>,
    /// Where missing pieces come from when no parent serves them.
    upstream: Arc<dyn Upstream>,
    progress: watch::Sender<Progress>,
    /// Pieces the store could not take (disk full), kept for the readers.
    memory: Mutex<HashMap<u32, Bytes>>,
    /// Where the latest reader is, for the planner's window.
    pub(crate) reader_offset: AtomicU64,
    stats: DownloadStats,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("digest", &self.digest)
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

impl Download {
    pub(crate) fn new(
        digest: Digest,
        store: Arc<dyn PieceStore>,
        upstream: Arc<dyn Upstream>,
    ) -> Self {
        let (progress, _) = watch::channel(Progress {
            shape: None,
            have: PieceSet::new(0),
            state: DownloadState::Running,
        });
        Download {
            digest,
            store,
            upstream,
            progress,
            memory: Mutex::new(HashMap::new()),
            reader_offset: AtomicU64::new(0),
            stats: DownloadStats::default(),
        }
    }

    /// The task.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// A receiver of progress updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The counters.
    pub fn stats(&self) -> &DownloadStats {
        &self.stats
    }

    /// Waits until the download is complete (`Ok`) or failed.
    pub async fn wait(&self) -> Result<(), EngineError> {
        let mut rx = self.progress.subscribe();
        let p = rx
            .wait_for(|p| !p.state.is_running())
            .await
            .map_err(|_| EngineError::Dropped)?;
        match &p.state {
            DownloadState::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// A verified piece: from memory when the store could not take it, else the store.
    pub fn read_piece(&self, index: u32) -> Result<Option<Bytes>, EngineError> {
        if let Some(b) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
        {
            return Ok(Some(b.clone()));
        }
        Ok(self.store.read_piece(&self.digest, index)?)
    }

    /// True when piece `index` is held only in memory (the store could not take it).
    fn in_memory_only(&self, index: u32) -> bool {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&index)
    }

    fn set_shape(&self, shape: TaskShape) {
        self.progress.send_modify(|p| {
            if p.shape.is_none() {
                p.shape = Some(shape);
                p.have = PieceSet::new(shape.piece_count());
            }
        });
    }

    fn mark_have(&self, index: u32) {
        self.progress.send_modify(|p| {
            if index < p.have.len() {
                p.have.insert(index);
            }
        });
    }

    fn finish(&self, state: DownloadState) {
        self.progress.send_modify(|p| p.state = state);
    }
}

/// Runs one download to its end and removes it from the engine's map.
pub(crate) async fn run(inner: Arc<Inner>, dl: Arc<Download>, size_hint: u64) {
    let span = info_span!("download", task.digest = %dl.digest);
    inner
        .stats
        .downloads_started
        .fetch_add(1, Ordering::Relaxed);
    inner
        .link
        .load
        .active_downloads
        .fetch_add(1, Ordering::Relaxed);
    let result = drive(&inner, dl.clone(), size_hint)
        .instrument(span.clone())
        .await;
    inner
        .link
        .load
        .active_downloads
        .fetch_sub(1, Ordering::Relaxed);
    {
        let mut map = inner.downloads.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&dl.digest).is_some_and(|d| Arc::ptr_eq(d, &dl)) {
            map.remove(&dl.digest);
        }
    }
    let _e = span.enter();
    let counter = match &result {
        Ok(()) => &inner.stats.downloads_completed,
        Err(_) => &inner.stats.downloads_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) => {
            info!("download complete");
            dl.finish(DownloadState::Complete);
        }
        Err(e) => {
            warn!(error = %e, "download failed");
            dl.finish(DownloadState::Failed(e));
        }
    }
}

/// What the spawned fetches and the upstream stream tell the driver.
enum Event {
    Fetched {
        index: u32,
        parent: String,
        result: Result<Bytes, FetchError>,
    },
    UpstreamSize(u64),
    UpstreamPiece(u32, Bytes),
    UpstreamDone(Result<(), EngineError>),
}

/// Where a piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin<'a> {
    Parent(&'a str),
    Upstream,
}

struct Driver<'a> {
    inner: &'a Inner,
    dl: Arc<Download>,
    planner: Planner,
    rng: SmallRng,
    tx: mpsc::Sender<Event>,
    /// A plan stream was opened: reports may be sent.
    reporting: bool,
    /// This peer was told to fetch from upstream (sticky: the scheduler keeps it a source).
    source: bool,
    started_reported: bool,
    upstream_running: bool,
    upstream_failures: u32,
    /// The store takes pieces; false after a local fault (logged once).
    store_ok: bool,
    opened: bool,
    /// Pieces whose hash the current scheduler knows (handed out in the plan, or
    /// reported by this peer as back-to-source).
    sched_knows: PieceSet,
    /// Pieces reported to the current scheduler.
    reported: PieceSet,
    /// The plan stream was lost at this instant and not re-opened yet.
    plan_lost: Option<Instant>,
    /// When to try re-opening the plan next, and the delay after that.
    replan_at: Instant,
    replan_delay: Duration,
}

async fn drive(inner: &Inner, dl: Arc<Download>, size_hint: u64) -> Result<(), EngineError> {
    let digest = dl.digest;
    let _pin = inner.store.pin(&digest);
    let meta = match inner.store.meta(&digest) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "store metadata unreadable; downloading anyway");
            None
        }
    };
    if let Some(m) = &meta
        && m.complete
    {
        dl.set_shape(m.shape);
        dl.progress.send_modify(|p| p.have = m.pieces.clone());
        debug!("task already complete in the store");
        return Ok(());
    }
    // Small on purpose: every queued event may hold a piece (up to 16 MiB), and an
    // upstream faster than the disk would otherwise fill the queue. Fetches from
    // parents are bounded by the planner's in-flight cap anyway.
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let mut d = Driver {
        inner,
        dl: dl.clone(),
        planner: Planner::new(inner.config.planner.clone()),
        rng: SmallRng::from_rng(&mut rand::rng()),
        tx,
        reporting: false,
        source: false,
        started_reported: false,
        upstream_running: false,
        upstream_failures: 0,
        store_ok: true,
        opened: false,
        sched_knows: PieceSet::new(0),
        reported: PieceSet::new(0),
        plan_lost: None,
        replan_at: Instant::now(),
        replan_delay: REPLAN_MIN,
    };
    if let Some(m) = meta {
        d.shape_known(m.shape)?;
        for (i, h) in m.hashes.iter().enumerate() {
            if let Some(h) = h {
                d.planner.set_hash(i as u32, *h);
            }
        }
        for i in m.pieces.iter() {
            d.planner.on_piece_stored(i);
            dl.mark_have(i);
        }
    }
    let mut plan = match inner.link.plan(&digest, size_hint).await {
        Ok(s) => {
            d.reporting = true;
            Some(s)
        }
        Err(e) => {
            info!(error = %e, "no plan; fetching from upstream");
            d.start_upstream();
            None
        }
    };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !d.planner.is_complete() {
        let now = Instant::now();
        d.planner
            .on_reader(dl.reader_offset.load(Ordering::Relaxed));
        for (index, parent) in d.planner.timed_out(now) {
            debug!(piece = index, parent.id = %parent, "piece request stalled");
        }
        if !d.upstream_running && d.planner.wants_upstream(now) {
            info!("parents cannot serve; fetching the missing pieces from upstream");
            d.start_upstream();
        }
        if plan.is_none() && d.plan_lost.is_some() {
            plan = d.replan(now, size_hint).await;
        }
        d.request_pieces(now);
        let next_plan = async {
            match plan.as_mut() {
                Some(s) => s.message().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = next_plan => match msg {
                Ok(Some(update)) => d.on_plan(&update)?,
                Ok(None) | Err(_) => {
                    info!("plan stream ended; going on with the known parents and re-opening it");
                    plan = None;
                    d.plan_lost(Instant::now());
                }
            },
            Some(ev) = rx.recv() => d.on_event(ev).await?,
            _ = ticker.tick() => {}
            // A parent that answered BUSY may be asked again.
            _ = sleep_until(d.planner.busy_until()) => {}
        }
    }
    d.complete().await?;
    if let Some(plan) = plan {
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            drop(plan);
        });
    }
    Ok(())
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver<'_> {
    fn report(&self, r: Report) {
        if self.reporting {
            self.inner.link.report(r);
        }
    }

    /// The plan stream ended (the scheduler restarted or dropped it). Reports stop:
    /// a new scheduler refuses reports for a task it has not planned. The known
    /// parents stay in use; the plan is re-opened by [`Driver::replan`].
    fn plan_lost(&mut self, now: Instant) {
        self.reporting = false;
        self.source = false;
        self.started_reported = false;
        self.sched_knows = PieceSet::new(self.sched_knows.len());
        self.reported = PieceSet::new(self.reported.len());
        self.plan_lost = Some(now);
        self.replan_at = now;
        self.replan_delay = REPLAN_MIN;
    }

    /// Tries to re-open a lost plan (with backoff while it fails), and streams from
    /// upstream when no plan came back within [`REPLAN_GRACE`].
    async fn replan(
        &mut self,
        now: Instant,
        size_hint: u64,
    ) -> Option<tonic::Streaming<v1::PlanUpdate>> {
        let lost = self.plan_lost?;
        if !self.upstream_running
            && now.saturating_duration_since(lost) >= REPLAN_GRACE
            && !self.planner.is_complete()
        {
            info!(
                "no plan since the scheduler went away; fetching the missing pieces from upstream"
            );
            self.start_upstream();
        }
        if now < self.replan_at || !self.inner.link.is_connected() {
            return None;
        }
        let size = self.planner.shape().map_or(size_hint, |s| s.size());
        match self.inner.link.plan(&self.dl.digest, size).await {
            Ok(stream) => {
                info!("plan re-opened");
                self.plan_lost = None;
                self.reporting = true;
                Some(stream)
            }
            Err(e) => {
                debug!(error = %e, "plan not re-opened yet");
                self.replan_at = now + self.replan_delay;
                self.replan_delay = (self.replan_delay * 2).min(REPLAN_MAX);
                None
            }
        }
    }

    /// Reports piece `index` to the current scheduler if it may be reported and was
    /// not yet: with its hash when this peer is back-to-source and the scheduler does
    /// not know the hash, without one when the scheduler handed the hash out; never
    /// otherwise (the scheduler refuses such reports). Pieces kept only in memory are
    /// not reported: other peers could not read them from the store.
    fn report_piece(&mut self, index: u32) {
        if !self.reporting || self.reported.contains(index) || self.dl.in_memory_only(index) {
            return;
        }
        let hash = if self.sched_knows.contains(index) {
            None
        } else if self.source
            && let Some(h) = self.planner.hash(index)
        {
            self.sched_knows.insert(index);
            Some(h)
        } else {
            return;
        };
        self.reported.insert(index);
        self.report(Report::Pieces {
            digest: self.dl.digest,
            pieces: vec![(index, hash)],
        });
    }

    /// Reports every held piece that may be reported now (after a plan update: pieces
    /// resumed from the store, fetched before a scheduler restart, or whose hash just
    /// became known).
    fn report_pending(&mut self) {
        let pending: Vec<u32> = self
            .planner
            .have()
            .iter()
            .filter(|i| !self.reported.contains(*i))
            .collect();
        for i in pending {
            self.report_piece(i);
        }
    }

    /// The task's shape is known: tell the planner, the readers and the store.
    fn shape_known(&mut self, shape: TaskShape) -> Result<(), EngineError> {
        self.planner.set_shape(shape)?;
        self.dl.set_shape(shape);
        if self.sched_knows.len() != shape.piece_count() {
            self.sched_knows = PieceSet::new(shape.piece_count());
            self.reported = PieceSet::new(shape.piece_count());
        }
        if !self.opened {
            self.opened = true;
            if let Err(e) = self.inner.store.open(self.dl.digest, shape) {
                if !e.is_local_fault() {
                    return Err(e.into());
                }
                warn!(error = %e, store.path = ?e.path(), "store unusable; keeping pieces in memory");
                self.store_ok = false;
            }
        }
        if self.source && !self.started_reported {
            self.started_reported = true;
            self.report(Report::Started {
                digest: self.dl.digest,
                size: shape.size(),
            });
        }
        Ok(())
    }

    fn on_plan(&mut self, update: &v1::PlanUpdate) -> Result<(), EngineError> {
        self.planner.on_plan(update)?;
        if update.back_to_source {
            self.source = true;
        }
        if let Some(shape) = self.planner.shape() {
            self.shape_known(shape)?;
        }
        for h in &update.piece_hashes {
            if h.index < self.sched_knows.len() {
                self.sched_knows.insert(h.index);
            }
        }
        self.report_pending();
        if update.back_to_source && !self.upstream_running {
            info!("told to fetch from upstream");
            self.start_upstream();
        }
        Ok(())
    }

    fn request_pieces(&mut self, now: Instant) {
        let Some(shape) = self.planner.shape() else {
            return;
        };
        let timeout = self.inner.config.planner.request_timeout;
        for (index, parent) in self.planner.next_requests(now, &mut self.rng) {
            let Ok(len) = shape.piece_len(index) else {
                continue;
            };
            debug!(piece = index, parent.id = %parent.id, "piece requested");
            let client = self.inner.client.clone();
            let tx = self.tx.clone();
            let digest = self.dl.digest;
            tokio::spawn(async move {
                let result = client
                    .fetch(parent.addr, &digest, index, len, timeout)
                    .await;
                let _ = tx
                    .send(Event::Fetched {
                        index,
                        parent: parent.id,
                        result,
                    })
                    .await;
            });
        }
    }

    /// Streams the missing pieces from upstream, from the first missing one on.
    fn start_upstream(&mut self) {
        let from = match self.planner.shape() {
            Some(shape) => match self.planner.have().first_missing() {
                Some(i) => shape.piece_range(i).map_or(0, |r| r.start),
                None => return,
            },
            None => 0,
        };
        self.upstream_running = true;
        let upstream = self.dl.upstream.clone();
        let tx = self.tx.clone();
        let digest = self.dl.digest;
        tokio::spawn(
            async move {
                let r = stream_upstream(&*upstream, digest, from, &tx).await;
                let _ = tx.send(Event::UpstreamDone(r)).await;
            }
            .in_current_span(),
        );
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), EngineError> {
        match ev {
            Event::Fetched {
                index,
                parent,
                result,
            } => match result {
                Ok(bytes) => self.accept(index, bytes, Origin::Parent(&parent)).await?,
                Err(FetchError::Busy) => {
                    debug!(piece = index, parent.id = %parent, "parent busy");
                    self.planner.on_busy(index, &parent, Instant::now());
                }
                Err(e) => {
                    self.dl.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(piece = index, parent.id = %parent, error = %e, "piece fetch failed");
                    self.planner.on_fetch_failed(
                        index,
                        &parent,
                        e.retry_elsewhere(),
                        Instant::now(),
                    );
                }
            },
            Event::UpstreamSize(total) => self.shape_known(
                TaskShape::for_size(total)
                    .map_err(|e| UpstreamError::Malformed(format!("blob size {total}: {e}")))?,
            )?,
            Event::UpstreamPiece(index, bytes) => {
                self.accept(index, bytes, Origin::Upstream).await?;
            }
            Event::UpstreamDone(r) => {
                self.upstream_running = false;
                if let Err(e) = r {
                    self.upstream_failures += 1;
                    warn!(error = %e, failures = self.upstream_failures, "upstream failed");
                    if self.upstream_failures >= MAX_UPSTREAM_FAILURES
                        || (!self.reporting && self.planner.shape().is_none())
                    {
                        return Err(e);
                    }
                    if !self.reporting || self.source {
                        self.start_upstream();
                    }
                } else if !self.planner.is_complete() {
                    return Err(UpstreamError::Http(
                        "upstream body ended before the last piece".into(),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Verifies, stores and reports one piece.
    async fn accept(
        &mut self,
        index: u32,
        bytes: Bytes,
        origin: Origin<'_>,
    ) -> Result<(), EngineError> {
        if self.planner.have().contains(index) {
            if let Origin::Parent(p) = origin {
                self.planner.on_piece_stored(index);
                debug!(piece = index, parent.id = %p, "duplicate piece dropped");
            }
            return Ok(());
        }
        let known = self.planner.hash(index);
        let hash = {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || -> [u8; 32] { Sha256::digest(&b).into() })
                .await
                .map_err(|_| EngineError::TaskAborted("hash"))?
        };
        match origin {
            Origin::Parent(parent) if known != Some(hash) => {
                self.dl.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .stats
                    .pieces_rejected
                    .fetch_add(1, Ordering::Relaxed);
                warn!(piece = index, parent.id = %parent, "bad piece from parent");
                let parent = self.planner.on_bad_piece(index, parent);
                self.report(Report::BadParent {
                    digest: self.dl.digest,
                    parent,
                    index,
                    reason: "piece does not match its hash".into(),
                });
                return Ok(());
            }
            Origin::Upstream if known.is_some_and(|k| k != hash) => {
                return Err(EngineError::UpstreamPieceMismatch(index));
            }
            Origin::Parent(_) => {
                self.dl
                    .stats
                    .pieces_from_parents
                    .fetch_add(1, Ordering::Relaxed);
                let s = &self.inner.stats;
                s.bytes_from_peers
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                s.pieces_verified.fetch_add(1, Ordering::Relaxed);
            }
            Origin::Upstream => {
                self.dl
                    .stats
                    .pieces_from_upstream
                    .fetch_add(1, Ordering::Relaxed);
                let s = &self.inner.stats;
                s.bytes_from_upstream
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if known.is_some() {
                    s.pieces_verified.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let stored = self
            .store(index, &bytes, origin == Origin::Upstream, hash)
            .await?;
        if !stored {
            self.dl
                .memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index, bytes);
        }
        if known.is_none() {
            self.planner.set_hash(index, hash);
        }
        self.planner.on_piece_stored(index);
        self.dl.mark_have(index);
        if stored {
            self.report_piece(index);
        }
        Ok(())
    }

    /// Writes a verified piece; false when it stays in memory only.
    async fn store(
        &mut self,
        index: u32,
        bytes: &Bytes,
        set_hash: bool,
        hash: [u8; 32],
    ) -> Result<bool, EngineError> {
        if !self.store_ok {
            return Ok(false);
        }
        let store = self.inner.store.clone();
        let digest = self.dl.digest;
        let b = bytes.clone();
        let r = tokio::task::spawn_blocking(move || {
            if set_hash {
                store.set_hashes(&digest, &[(index, hash)])?;
            }
            store.write_piece(&digest, index, &b)
        })
        .await
        .map_err(|_| EngineError::TaskAborted("store"))?;
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.is_local_fault() => {
                warn!(error = %e, store.path = ?e.path(), "store failed; keeping pieces in memory");
                self.store_ok = false;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every piece is here: verify the blob, mark it complete, report.
    async fn complete(&mut self) -> Result<(), EngineError> {
        let shape = self.planner.shape().expect("complete implies a shape");
        let digest = self.dl.digest;
        let dl = self.dl.clone();
        let got = tokio::task::spawn_blocking(move || -> Result<[u8; 32], EngineError> {
            let mut hasher = Sha256::new();
            for i in 0..shape.piece_count() {
                let piece = dl.read_piece(i)?.ok_or(EngineError::PieceGone(i))?;
                hasher.update(&piece);
            }
            Ok(hasher.finalize().into())
        })
        .await
        .map_err(|_| EngineError::TaskAborted("digest"))??;
        if got != *digest.as_bytes() {
            return Err(EngineError::DigestMismatch(digest));
        }
        if self.store_ok {
            if let Err(e) = self.inner.store.mark_complete(&digest) {
                warn!(error = %e, "could not mark the task complete in the store");
                return Ok(());
            }
            if self.reporting && self.sched_knows.is_full() {
                self.report_pending();
                self.report(Report::Complete(digest));
            } else {
                // No plan (or the scheduler lacks some hashes): announce the task the
                // way a re-join does, with every piece hash.
                let hashes = (0..shape.piece_count())
                    .map(|i| self.planner.hash(i))
                    .collect();
                self.inner.link.announce(digest, shape.size(), hashes);
            }
        }
        Ok(())
    }
}

/// Streams `digest` from `from` (a piece boundary) to the end, cut into pieces.
async fn stream_upstream(
    upstream: &dyn Upstream,
    digest: Digest,
    from: u64,
    tx: &mpsc::Sender<Event>,
) -> Result<(), EngineError> {
    let mut body = upstream.fetch(&digest, from).await?;
    let shape = TaskShape::for_size(body.total)
        .map_err(|e| UpstreamError::Malformed(format!("blob size {}: {e}", body.total)))?;
    if tx.send(Event::UpstreamSize(body.total)).await.is_err() {
        return Ok(());
    }
    if body.start > from || from > body.total {
        return Err(UpstreamError::Malformed(format!(
            "asked for bytes from {from}, got from {}",
            body.start
        ))
        .into());
    }
    let mut skip = (from - body.start) as usize;
    let Some(mut index) = shape.piece_at(from) else {
        return Ok(());
    };
    let mut want = shape
        .piece_len(index)
        .map_err(|e| UpstreamError::Malformed(e.to_string()))? as usize;
    let mut buf = BytesMut::with_capacity(want);
    while let Some(chunk) = body.body.next().await {
        let mut chunk = chunk?;
        if skip > 0 {
            let n = skip.min(chunk.len());
            let _ = chunk.split_to(n);
            skip -= n;
        }
        while !chunk.is_empty() {
            if index >= shape.piece_count() {
                return Err(UpstreamError::Malformed("bytes past the blob's end".into()).into());
            }
            let n = (want - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk.split_to(n));
            if buf.len() == want {
                let piece = std::mem::replace(&mut buf, BytesMut::new()).freeze();
                if tx.send(Event::UpstreamPiece(index, piece)).await.is_err() {
                    return Ok(());
                }
                index += 1;
                if index < shape.piece_count() {
                    want = shape
                        .piece_len(index)
                        .map_err(|e| UpstreamError::Malformed(e.to_string()))?
                        as usize;
                    buf.reserve(want);
                }
            }
        }
    }
    if index < shape.piece_count() {
        return Err(UpstreamError::Http(format!(
            "body ended in piece {index} of {}",
            shape.piece_count()
        ))
        .into());
    }
    Ok(())
}
