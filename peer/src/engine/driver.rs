//! The driver of one download: the thin async shell around [`DownloadCore`].
//!
//! It opens the plan stream, carries out the core's [`Action`]s (piece fetches
//! from parents, the upstream stream, reports, re-opening a lost plan), hashes
//! every piece off the async workers and hands the hash to the core, stores the
//! pieces it keeps, checks the whole blob against its digest, and publishes
//! progress for the readers. Every decision is the core's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use super::core::{Action, DownloadCore, Origin};
use super::cutter::PieceCutter;
use super::download::{Download, DownloadState};
use super::scheduler::PlanOpening;
use super::scheduler::PlanStream;
use super::upstream::{Upstream, UpstreamError};
use super::{EngineError, Inner};
use crate::scheduler_link::Report;
use crate::transfer::FetchError;

mod pieces;

/// How often the driver looks at timeouts and starvation without other input.
const TICK: Duration = Duration::from_millis(200);
/// How long the plan stream stays open after completion, so the `Complete` report
/// reaches the scheduler before the plan is closed.
const LINGER: Duration = Duration::from_secs(5);
/// Events (each may carry a piece) queued from fetches and upstream to the driver.
const EVENT_QUEUE: usize = 1;
/// When the store cannot take the blob, verified pieces waiting only for the reader
/// are kept in memory up to this many; past it the driver stops taking new pieces
/// until the reader catches up (so memory stays bounded, whatever the blob's size).
const MEMORY_BACKLOG: usize = 8;

/// Runs one download to its end and removes it from the engine's map.
pub(crate) async fn run(inner: Arc<Inner>, dl: Arc<Download>, size_hint: u64) {
    let span = info_span!("download", task.digest = %dl.digest);
    let load = inner.link.load();
    load.active_downloads.fetch_add(1, Ordering::Relaxed);
    let result = drive(&inner, dl.clone(), size_hint)
        .instrument(span.clone())
        .await;
    load.active_downloads.fetch_sub(1, Ordering::Relaxed);
    {
        let mut map = inner.downloads.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&dl.digest).is_some_and(|d| Arc::ptr_eq(d, &dl)) {
            map.remove(&dl.digest);
        }
    }
    let _e = span.enter();
    let verified = matches!(dl.progress().borrow().state, DownloadState::Complete);
    let counter = match &result {
        Ok(Served::FromStore) => &inner.stats.cache_hits,
        Ok(Served::Downloaded) => &inner.stats.downloads_completed,
        Err(_) if verified => &inner.stats.downloads_completed,
        Err(_) => &inner.stats.downloads_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(Served::FromStore) => {
            debug!("served from the store");
            dl.finish(DownloadState::Complete);
        }
        Ok(Served::Downloaded) => {
            info!("download complete");
            dl.finish(DownloadState::Complete);
        }
        // Verified already (readers were let go at that point): what failed
        // after it (reporting, the store's bookkeeping) does not take the blob
        // back from them.
        Err(e) if verified => {
            warn!(error = %e, "download verified, then its bookkeeping failed");
        }
        Err(e) => {
            warn!(error = %e, "download failed");
            dl.finish(DownloadState::Failed(e));
        }
    }
    dl.settle();
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

struct Driver<'a> {
    inner: &'a Inner,
    dl: Arc<Download>,
    core: DownloadCore,
    tx: mpsc::Sender<Event>,
    plan: Option<PlanStream>,
    opened: bool,
    /// Pieces kept without a hash to check them against (held back from readers
    /// until the digest matched).
    unchecked: Vec<u32>,
    /// The blob's digest, computed in piece order as the pieces arrive: over
    /// pieces `0..hashed` (`None` only while a blocking task holds it).
    hasher: Option<Sha256>,
    hashed: u32,
    /// The upstream stream's task, while one may run (aborted when a faster
    /// peer takes over).
    upstream: Option<tokio::task::AbortHandle>,
}

/// How a blob asked for came to be complete.
enum Served {
    /// It was complete in the store and its pieces checked out: a cache hit.
    FromStore,
    /// It was fetched (or its missing pieces were) from peers or upstream.
    Downloaded,
}

async fn drive(inner: &Inner, dl: Arc<Download>, size_hint: u64) -> Result<Served, EngineError> {
    let digest = dl.digest;
    let _pin = inner.store.pin(&digest);
    let meta = match inner.store.meta(&digest) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "store metadata unreadable; downloading anyway");
            None
        }
    };
    // What the store holds is checked before it is served: a piece not verified
    // in this process's life is hashed against its recorded hash (readers get each
    // piece as soon as it passed), and one damaged at rest is dropped and fetched
    // again below.
    let meta = match meta {
        Some(mut m) => {
            dl.set_shape(m.shape);
            let held = m.pieces.clone();
            // One blocking task walks the pieces in order; readers get each one as
            // soon as it passed (only the first read in this life hashes).
            let (store, d, dl2, pieces) = (inner.store.clone(), digest, dl.clone(), held.clone());
            let failed = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, EngineError> {
                let mut failed = Vec::new();
                for i in pieces.iter() {
                    if store.verify_piece(&d, i)? {
                        dl2.mark_have(i);
                    } else {
                        failed.push(i);
                    }
                }
                Ok(failed)
            })
            .await
            .map_err(|_| EngineError::TaskAborted("verify"))??;
            for i in failed {
                m.pieces.remove(i);
                m.complete = false;
            }
            if m.complete {
                debug!("task already complete in the store");
                return Ok(Served::FromStore);
            }
            if m.pieces != held {
                warn!(
                    pieces.damaged = held.count() - m.pieces.count(),
                    "pieces damaged at rest were dropped; fetching them again"
                );
                // The scheduler counts this node a holder of what it lost.
                if held.is_full() {
                    inner.link.report(Report::Evicted(digest));
                }
            }
            Some(m)
        }
        None => None,
    };
    // Not complete in the store: from here on this is a download.
    inner
        .stats
        .downloads_started
        .fetch_add(1, Ordering::Relaxed);
    // Small on purpose: every queued event may hold a piece (up to 16 MiB), and an
    // upstream faster than the disk would otherwise fill the queue. Fetches from
    // parents are bounded by the planner's in-flight cap anyway.
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let mut d = Driver {
        inner,
        dl: dl.clone(),
        core: DownloadCore::new(
            digest,
            inner.config.planner.clone(),
            rand::random(),
            Instant::now(),
        ),
        tx,
        plan: None,
        opened: false,
        unchecked: Vec::new(),
        hasher: Some(Sha256::new()),
        hashed: 0,
        upstream: None,
    };
    if let Some(m) = meta {
        d.core.resume(m.shape, &m.hashes, &m.pieces)?;
        for i in m.pieces.iter() {
            dl.mark_have(i);
        }
        d.act().await?;
    }
    let delay = inner.link.open_delay();
    if !delay.is_zero() {
        debug!(
            ?delay,
            "a scheduler replica just went away; the plan opens after its back-to-source peers re-open theirs"
        );
        tokio::time::sleep(delay).await;
    }
    match inner
        .link
        .plan(&digest, size_hint, PlanOpening::default())
        .await
    {
        Ok(s) => {
            d.plan = Some(s);
            d.core.plan_opened();
        }
        Err(e) => {
            info!(error = %e, "no plan; fetching from upstream");
            d.core.no_plan();
        }
    }
    d.act().await?;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !d.core.is_complete() {
        d.core.poll(
            Instant::now(),
            dl.reader_offset.load(Ordering::Relaxed),
            inner.link.is_connected(),
        );
        d.act().await?;
        let mut plan = d.plan.take();
        let next_plan = async {
            match plan.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        let busy_until = d.core.busy_until();
        let backlog_full = d.backlog_full();
        tokio::select! {
            msg = next_plan => match msg {
                Some(update) => d.core.on_plan(&update?)?,
                None => {
                    info!("plan stream ended; going on with the known parents and re-opening it");
                    plan = None;
                    d.core.plan_lost(Instant::now());
                }
            },
            // Not while the reader has to catch up (memory-only pieces) …
            Some(ev) = rx.recv(), if !backlog_full => d.on_event(ev).await?,
            // … which it says when it reads on.
            _ = dl.reader_moved.notified(), if backlog_full => {}
            _ = ticker.tick() => {}
            // A parent that answered BUSY may be asked again.
            _ = sleep_until(busy_until) => {}
        }
        d.plan = plan;
        d.act().await?;
    }
    d.complete().await?;
    if let Some(plan) = d.plan.take() {
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            drop(plan);
        });
    }
    Ok(Served::Downloaded)
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver<'_> {
    /// Carries out the core's actions until it has none left (an action's outcome
    /// may lead to more).
    async fn act(&mut self) -> Result<(), EngineError> {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return Ok(());
            }
            for a in actions {
                self.carry_out(a).await?;
            }
        }
    }

    async fn carry_out(&mut self, action: Action) -> Result<(), EngineError> {
        match action {
            Action::Fetch { index, parent, len } => {
                let timeout = self.inner.config.planner.request_timeout;
                let client = self.inner.client.clone();
                let tx = self.tx.clone();
                let digest = self.dl.digest;
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = client
                        .fetch(parent.addr, &digest, index, len, timeout)
                        .await;
                    debug!(
                        piece = index,
                        parent.id = %parent.id,
                        ms = started.elapsed().as_millis() as u64,
                        outcome = match &result {
                            Ok(_) => "ok",
                            Err(FetchError::Busy) => "busy",
                            Err(_) => "failed",
                        },
                        "fetch done"
                    );
                    let _ = tx
                        .send(Event::Fetched {
                            index,
                            parent: parent.id,
                            result,
                        })
                        .await;
                });
            }
            Action::StartUpstream { from } => {
                let upstream = self.dl.upstream.clone();
                let tx = self.tx.clone();
                let digest = self.dl.digest;
                let seeding = self.inner.seeding.start(digest);
                let task = tokio::spawn(
                    async move {
                        let r = stream_upstream(&*upstream, digest, from, &tx).await;
                        drop(seeding);
                        let _ = tx.send(Event::UpstreamDone(r)).await;
                    }
                    .in_current_span(),
                );
                self.upstream = Some(task.abort_handle());
            }
            Action::StopUpstream => {
                // Dropping the stream closes the registry connection; the
                // pieces already queued are still kept.
                if let Some(task) = self.upstream.take() {
                    task.abort();
                }
                self.inner
                    .stats
                    .upstream_handed_over
                    .fetch_add(1, Ordering::Relaxed);
            }
            Action::OpenPlan {
                size,
                from_upstream,
            } => {
                let opening = PlanOpening::reopen(from_upstream);
                match self.inner.link.plan(&self.dl.digest, size, opening).await {
                    Ok(stream) => {
                        self.plan = Some(stream);
                        self.core.plan_opened();
                    }
                    Err(e) => {
                        debug!(error = %e, "plan not re-opened yet");
                        self.core.plan_refused(Instant::now());
                    }
                }
            }
            Action::ShapeKnown(shape) => {
                self.dl.set_shape(shape);
                if !self.opened && shape.size() > self.inner.store.capacity() {
                    self.opened = true;
                    info!(
                        task.size = shape.size(),
                        store.capacity = self.inner.store.capacity(),
                        "blob larger than the cache: streamed through, verified, not stored"
                    );
                    self.core.store_failed();
                }
                if !self.opened {
                    self.opened = true;
                    if let Err(e) = self.inner.store.open(self.dl.digest, shape) {
                        if !e.is_local_fault() {
                            return Err(e.into());
                        }
                        warn!(error = %e, store.path = ?e.path(), "store unusable; keeping pieces in memory");
                        self.core.store_failed();
                    }
                }
            }
            Action::Report(r) => self.inner.link.report(r),
            Action::Announce { size, hashes } => {
                self.inner.link.announce(self.dl.digest, size, hashes)
            }
        }
        Ok(())
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
                    self.core.on_busy(index, &parent, Instant::now());
                }
                Err(e) => {
                    self.dl.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(piece = index, parent.id = %parent, error = %e, "piece fetch failed");
                    if e.unresponsive() {
                        self.core.on_parent_silent(index, &parent, Instant::now());
                    } else {
                        self.core.on_fetch_failed(
                            index,
                            &parent,
                            e.retry_elsewhere(),
                            Instant::now(),
                        );
                    }
                }
            },
            Event::UpstreamSize(total) => self.core.on_upstream_size(total)?,
            Event::UpstreamPiece(index, bytes) => {
                self.accept(index, bytes, Origin::Upstream).await?;
            }
            Event::UpstreamDone(r) => self.core.on_upstream_done(r)?,
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
    let shape = shoal_proto::TaskShape::for_size(body.total)
        .map_err(|e| UpstreamError::Malformed(format!("blob size {}: {e}", body.total)))?;
    if tx.send(Event::UpstreamSize(body.total)).await.is_err() {
        return Ok(());
    }
    let malformed = |e: super::cutter::CutError| UpstreamError::Malformed(e.to_string());
    let mut cutter = PieceCutter::new(shape, from, body.start).map_err(malformed)?;
    while let Some(chunk) = body.body.next().await {
        for (index, piece) in cutter.push(chunk?).map_err(malformed)? {
            if tx.send(Event::UpstreamPiece(index, piece)).await.is_err() {
                return Ok(());
            }
        }
    }
    cutter
        .finish()
        .map_err(|e| UpstreamError::Http(e.to_string()))?;
    Ok(())
}
