//! The peer's link to the scheduler replicas: a session with every replica
//! (join, heartbeats, batched reports), plan streams on demand, each task's
//! reports and plans sent to the replica that owns it, and reconnection with
//! exponential backoff and jitter.
//!
//! Layout:
//! - [`membership`]: the replica set, from a static list or a headless
//!   Service's DNS name resolved again periodically;
//! - `shard`: which live replica owns a task (rendezvous hashing) and what moves
//!   when the live set changes;
//! - `session`: one replica's session (connect, join, pump);
//! - `supervisor`: sessions follow the set; moved tasks are announced to their new
//!   owner;
//! - [`wire`]: conversions to and from the wire (plan updates, Join pages,
//!   report batches).
//!
//! With one scheduler, everything goes to it, as before. With several, a task's
//! owner is the live replica of highest rendezvous weight; when the live set
//! changes, this peer announces the complete tasks that moved to their new owner.
//! A plan stays with the replica session it was opened with, and so do the
//! task's reports, until that session ends (the replica died, or left the set):
//! the stream ends and the engine re-opens it with the new owner (a download
//! never fails for it). A replica that *joins* takes no download in flight: the
//! peers notice a join at different times (each re-resolves on its own clock),
//! and a plan moved to it by one peer before the back-to-source peer gets there
//! would make it elect a second one. A download that completes on a replica that
//! is no longer the owner is announced to the owner as well.
//!
//! The peer has no hard dependency on the scheduler: while no replica is
//! connected, [`SchedulerLink::plan`] fails at once with
//! [`LinkError::Unavailable`] and the caller fetches from upstream; reports made
//! while the task's owner is unreachable are dropped (the download engine
//! re-reports what it holds when it re-opens a plan, and complete tasks are
//! announced again to an owner with a new session).
//!
//! Transport: `https://` scheduler URLs use mutual TLS with the node's certificate
//! ([`LinkConfig::tls_dir`]: `ca.crt`, `tls.crt`, `tls.key`, re-read at every
//! connect so that a rotated certificate is picked up on the next reconnect);
//! `http://` is for development against a scheduler run with
//! `--insecure-plaintext`. Messages are bounded by
//! [`shoal_proto::limits::MAX_MESSAGE`] both ways, and the inventory is sent
//! in Join pages of at most [`shoal_proto::limits::JOIN_PAGE`] tasks.
//!
//! Not here: what to do with a plan (the download engine), the data plane.

pub mod membership;
mod report;
mod session;
mod shard;
mod supervisor;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shoal_proto::Digest;
use shoal_proto::v1::{self, scheduler_client::SchedulerClient};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::engine::{PlanOpening, PlanStream};

pub use session::backoff;
pub use wire::{join_pages, merge, plan_update};

/// How long a plan request whose owner just failed waits for the live set to
/// change (the dead session to be noticed) before it tries the new owner.
const OWNER_SETTLE: Duration = Duration::from_secs(2);

/// What the link needs to know about this peer.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Scheduler replicas ([`membership::Source`]): `https://HOST:PORT` each, or
    /// `dns+https://NAME:PORT` for every address of a headless Service. The link
    /// keeps a session with every replica.
    pub schedulers: Vec<String>,
    /// `ca.crt`, `tls.crt`, `tls.key` for `https://` schedulers: the CA the
    /// scheduler's certificate must chain to, and this node's client identity.
    pub tls_dir: Option<PathBuf>,
    /// This peer as it introduces itself.
    pub peer: v1::PeerInfo,
    /// First reconnect delay (default 200 ms); doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 30 s).
    pub backoff_max: Duration,
    /// Give up connecting to one scheduler after this long (default 3 s).
    pub connect_timeout: Duration,
    /// How often `dns+` scheduler names are resolved again (default 5 s).
    pub resolve_interval: Duration,
    /// **Test and development only**: resolve `dns+` names from this file in
    /// `/etc/hosts` form instead of the system resolver
    /// ([`membership::HostsFileResolver`]).
    pub hosts_file: Option<PathBuf>,
    /// Where preheat orders go (the daemon's `crate::preheat::Preheater`); `None`:
    /// they are ignored.
    pub preheat: Option<PreheatPort>,
}

impl LinkConfig {
    /// Defaults for everything but the schedulers and the peer.
    pub fn new(schedulers: Vec<String>, peer: v1::PeerInfo) -> Self {
        LinkConfig {
            schedulers,
            tls_dir: None,
            peer,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            resolve_interval: Duration::from_secs(5),
            hosts_file: None,
            preheat: None,
        }
    }
}

/// What the link hands preheat orders to, and reads their progress from.
pub trait PreheatHandler: Send + Sync + 'static {
    /// A `PreheatImage` or `CancelPreheat` from `replica`'s session; returns at
    /// once (the job runs in the background).
    fn command(&self, replica: &str, command: v1::scheduler_command::Command);
    /// Progress of every job, with the replica that ordered it.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(String, v1::PreheatProgress)>;
    /// The latest progress of each job `replica` ordered (re-sent when a session
    /// with it opens: a report lost with the old session arrives).
    fn latest(&self, replica: &str) -> Vec<v1::PreheatProgress>;
}

/// A [`PreheatHandler`] in a [`LinkConfig`].
#[derive(Clone)]
pub struct PreheatPort(pub Arc<dyn PreheatHandler>);

impl std::fmt::Debug for PreheatPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreheatPort")
    }
}

/// Tasks this peer holds complete, announced at every join.
pub trait Inventory: Send + Sync + 'static {
    /// The complete tasks, with their piece hashes. Blocking (called on a
    /// blocking thread).
    fn held(&self) -> Vec<v1::HeldTask>;

    /// One complete task, if held (by default looked up in [`held`](Self::held)).
    /// Blocking.
    fn held_task(&self, digest: &Digest) -> Option<v1::HeldTask> {
        let d = digest.to_string();
        self.held().into_iter().find(|t| t.digest == d)
    }

    /// The operator dropped `digest` (the scheduler's `drop` command): delete it
    /// unless it is in use. True when it was deleted. Blocking.
    fn drop_task(&self, digest: &Digest) -> bool {
        let _ = digest;
        false
    }
}

pub use crate::engine::PlanOpenError as LinkError;
pub use report::Report;

/// Load counters the heartbeat carries.
#[derive(Debug, Default)]
pub struct Load {
    /// Piece uploads in flight.
    pub active_uploads: AtomicU32,
    /// Downloads in flight.
    pub active_downloads: AtomicU32,
}

/// An open session with one replica, as the handle uses it.
#[derive(Clone)]
pub(crate) struct Conn {
    client: SchedulerClient<Channel>,
    reports: mpsc::Sender<Report>,
    /// Never reused: a new session with the same replica has a new epoch.
    epoch: u64,
    /// The tasks this session's Join carried (listed when it connected: a task
    /// completed since is not among them, and is announced as a move).
    carried: Arc<std::collections::HashSet<Digest>>,
}

/// The live replicas (open sessions) by key.
pub(crate) type Live = BTreeMap<String, Conn>;

/// Counters of the link (read by the daemon's `/metrics`).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Complete tasks announced to a replica that became their owner (or their
    /// owner again, restarted) after a change of the live set.
    pub tasks_moved: AtomicU64,
    /// Plan streams ended because the replica session they were opened with ended;
    /// the engine re-opens each with the task's new owner.
    pub plans_moved: AtomicU64,
    /// Completions announced to a task's owner besides the replica that planned
    /// the download (it joined while the download was in flight).
    pub completions_handed_over: AtomicU64,
}

/// Open plans by task: the replica key and session epoch each was opened with.
type OpenPlans = Arc<Mutex<HashMap<Digest, (String, u64)>>>;

/// Forgets an open plan when its stream is dropped.
struct PlanEntry {
    plans: OpenPlans,
    digest: Digest,
    session: (String, u64),
}

impl Drop for PlanEntry {
    fn drop(&mut self) {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.get(&self.digest) == Some(&self.session) {
            plans.remove(&self.digest);
        }
    }
}

/// A handle on the background link. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerLink {
    live: watch::Receiver<Live>,
    peer_id: String,
    peer: v1::PeerInfo,
    /// Load reported in heartbeats.
    pub load: Arc<Load>,
    /// Counters.
    pub stats: Arc<LinkStats>,
    plans: OpenPlans,
    inventory: Arc<dyn Inventory>,
    /// When a session last left the live set (a replica went away or restarted).
    departed: Arc<Mutex<Option<std::time::Instant>>>,
}

impl SchedulerLink {
    /// Starts the link in the background; it runs until `shutdown` resolves.
    pub fn spawn(
        config: LinkConfig,
        inventory: Arc<dyn Inventory>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> SchedulerLink {
        let (live_tx, live) = watch::channel(Live::new());
        let load = Arc::new(Load::default());
        let peer_id = config.peer.peer_id.clone();
        let peer = config.peer.clone();
        let stats = Arc::new(LinkStats::default());
        let task = supervisor::run(
            config,
            inventory.clone(),
            live_tx,
            load.clone(),
            stats.clone(),
        );
        let departed = Arc::new(Mutex::new(None));
        let watch_departures = note_departures(live.clone(), departed.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = watch_departures => {}
                _ = shutdown => {}
            }
        });
        SchedulerLink {
            live,
            peer_id,
            peer,
            load,
            stats,
            plans: OpenPlans::default(),
            inventory,
            departed,
        }
    }

    /// What is left of [`REPLAN_DEFER`](crate::engine::core::REPLAN_DEFER) since a
    /// session last left the live set: a download opening its first plan waits that
    /// long, so that the back-to-source peers of the tasks that moved reach their new
    /// owner first.
    pub fn open_delay(&self) -> Duration {
        let departed = *self.departed.lock().unwrap_or_else(|e| e.into_inner());
        departed.map_or(Duration::ZERO, |t| {
            (t + crate::engine::core::REPLAN_DEFER)
                .saturating_duration_since(std::time::Instant::now())
        })
    }

    /// True while a session with at least one scheduler replica is open.
    pub fn is_connected(&self) -> bool {
        !self.live.borrow().is_empty()
    }

    /// The replicas with an open session (their keys, sorted).
    pub fn replicas(&self) -> Vec<String> {
        self.live.borrow().keys().cloned().collect()
    }

    /// The live replica that owns `digest` now (`None` when none is connected).
    pub fn owner(&self, digest: &Digest) -> Option<String> {
        shard::owner(&self.live.borrow(), digest).map(str::to_string)
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_replicas(1, timeout).await
    }

    /// Waits until sessions with at least `n` replicas are open, at most `timeout`;
    /// returns whether they are.
    pub async fn wait_replicas(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.live.clone();
        tokio::time::timeout(timeout, rx.wait_for(|l| l.len() >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The owner's session, cloned out of the live set.
    fn owner_conn(&self, digest: &Digest) -> Option<(String, Conn)> {
        let live = self.live.borrow();
        let key = shard::owner(&live, digest)?;
        Some((key.to_string(), live[key].clone()))
    }

    /// The session an open plan of `digest` was opened with, while it lives.
    fn plan_conn(&self, digest: &Digest) -> Option<(String, Conn)> {
        let (key, epoch) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()?;
        let live = self.live.borrow();
        let conn = live.get(&key).filter(|c| c.epoch == epoch)?;
        Some((key, conn.clone()))
    }

    /// Queues a report for the session the task's plan is open with, or else its
    /// owner's. Never blocks; dropped when the queue is full or no replica is
    /// connected. A completion reported to a replica that no longer owns the task
    /// is announced to the owner too.
    pub fn report(&self, report: Report) {
        let digest = *report.digest();
        let planned = self.plan_conn(&digest);
        let owner = self.owner_conn(&digest).map(|(k, _)| k);
        let Some((key, conn)) = planned.or_else(|| self.owner_conn(&digest)) else {
            return;
        };
        let complete = matches!(report, Report::Complete(_));
        if conn.reports.try_send(report).is_err() {
            debug!("report queue full; report dropped");
        }
        if complete && owner.as_ref().is_some_and(|o| *o != key) {
            self.stats
                .completions_handed_over
                .fetch_add(1, Ordering::Relaxed);
            self.announce_held(digest);
        }
    }

    /// Announces a complete task of the store to its owner (looked up off the async
    /// workers).
    fn announce_held(&self, digest: Digest) {
        let (link, inventory) = (self.clone(), self.inventory.clone());
        tokio::spawn(async move {
            let held = tokio::task::spawn_blocking(move || inventory.held_task(&digest)).await;
            match held {
                Ok(Some(task)) => link.announce_task(task),
                _ => debug!(task.digest = %digest, "not announced: not in the store"),
            }
        });
    }

    /// Announces one complete task to its owner the way a join does (a join adds
    /// to what the scheduler knows of this peer; it removes nothing). For a task
    /// completed without a plan, e.g. while the scheduler was restarting. Needs
    /// every piece hash; does nothing when one is missing or no scheduler is
    /// connected.
    pub fn announce(&self, digest: Digest, size: u64, hashes: Vec<Option<[u8; 32]>>) {
        let Some(hashes) = hashes.into_iter().collect::<Option<Vec<_>>>() else {
            debug!(task.digest = %digest, "not announced: piece hashes missing");
            return;
        };
        self.announce_task(v1::HeldTask {
            digest: digest.to_string(),
            size,
            piece_hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        });
    }

    /// Sends one held task to its owner in a Join.
    fn announce_task(&self, task: v1::HeldTask) {
        let Ok(digest) = task.digest.parse::<Digest>() else {
            return;
        };
        let Some((_, conn)) = self.owner_conn(&digest) else {
            return;
        };
        let mut client = conn.client;
        let request = v1::JoinRequest {
            peer: Some(self.peer.clone()),
            tasks: vec![task],
        };
        tokio::spawn(async move {
            match client.join(request).await {
                Ok(_) => debug!(task.digest = %digest, "task announced"),
                Err(s) => {
                    warn!(task.digest = %digest, error = %s.message(), "task announcement refused")
                }
            }
        });
    }

    /// Opens a plan stream for `digest` (`size` 0 when unknown) with the replica
    /// that owns it. Each wire message is converted and checked ([`plan_update`]);
    /// the stream ends when the replica ends it, the connection fails, or the
    /// session it was opened with ends (the engine then re-opens it, with the new
    /// owner). The task's reports go to that session while the stream is open.
    /// When the owner cannot be reached the request waits for the dead session to
    /// be noticed (at most 2 s) and goes to the next owner;
    /// [`LinkError::Unavailable`] only when no replica answers.
    pub async fn plan(
        &self,
        digest: &Digest,
        size: u64,
        opening: PlanOpening,
    ) -> Result<PlanStream, LinkError> {
        let request = v1::PlanRequest {
            peer_id: self.peer_id.clone(),
            digest: digest.to_string(),
            size,
            resumed: opening.resumed,
            from_upstream: opening.from_upstream,
        };
        let mut tried = Vec::new();
        loop {
            let Some((key, conn)) = self.owner_conn(digest) else {
                return Err(LinkError::Unavailable);
            };
            if tried.contains(&(key.clone(), conn.epoch)) {
                // The dead session is still listed: wait for it to go.
                let mut rx = self.live.clone();
                let gone = rx.wait_for(|l| {
                    shard::owner(l, digest) != Some(key.as_str())
                        || l.get(&key).map(|c| c.epoch) != Some(conn.epoch)
                });
                match tokio::time::timeout(OWNER_SETTLE, gone).await {
                    Ok(Ok(_)) => continue,
                    _ => return Err(LinkError::Unavailable),
                }
            }
            let mut client = conn.client.clone();
            match client.plan(request.clone()).await {
                Ok(r) => {
                    let stream = r
                        .into_inner()
                        .take_while(|m| std::future::ready(m.is_ok()))
                        .filter_map(|m| std::future::ready(m.ok().map(plan_update)));
                    let session = (key.clone(), conn.epoch);
                    self.plans
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(*digest, session.clone());
                    let entry = PlanEntry {
                        plans: self.plans.clone(),
                        digest: *digest,
                        session,
                    };
                    let gone = self.session_gone(*digest, key, conn.epoch);
                    return Ok(stream
                        .take_until(gone)
                        .map(move |u| {
                            let _ = &entry;
                            u
                        })
                        .boxed());
                }
                Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                    debug!(scheduler.replica = %key, error = %s.message(), "plan owner unavailable");
                    tried.push((key, conn.epoch));
                }
                Err(s) => return Err(LinkError::Refused(s.message().to_string())),
            }
        }
    }

    /// Resolves when `key`'s session `epoch` ends (the plan of `digest` moves).
    fn session_gone(
        &self,
        digest: Digest,
        key: String,
        epoch: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.live.clone();
        let stats = self.stats.clone();
        async move {
            let r = rx
                .wait_for(|l| l.get(&key).map(|c| c.epoch) != Some(epoch))
                .await;
            if r.is_ok() {
                stats.plans_moved.fetch_add(1, Ordering::Relaxed);
                info!(task.digest = %digest, scheduler.replica = %key, "the plan's scheduler replica went away; plan ends");
            }
        }
    }
}

/// Records in `departed` when a session leaves the live set.
async fn note_departures(
    mut live: watch::Receiver<Live>,
    departed: Arc<Mutex<Option<std::time::Instant>>>,
) {
    let mut before = shard::Epochs::new();
    while live.changed().await.is_ok() {
        let now: shard::Epochs = live
            .borrow_and_update()
            .iter()
            .map(|(k, c)| (k.clone(), c.epoch))
            .collect();
        if before.iter().any(|(k, e)| now.get(k) != Some(e)) {
            *departed.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        }
        before = now;
    }
    std::future::pending().await
}

#[async_trait::async_trait]
impl crate::engine::SchedulerClient for SchedulerLink {
    fn is_connected(&self) -> bool {
        SchedulerLink::is_connected(self)
    }

    async fn plan(
        &self,
        digest: &Digest,
        size: u64,
        opening: PlanOpening,
    ) -> Result<PlanStream, LinkError> {
        SchedulerLink::plan(self, digest, size, opening).await
    }

    fn report(&self, report: Report) {
        SchedulerLink::report(self, report)
    }

    fn announce(&self, digest: Digest, size: u64, hashes: Vec<Option<[u8; 32]>>) {
        SchedulerLink::announce(self, digest, size, hashes)
    }

    fn load(&self) -> &Load {
        &self.load
    }

    fn open_delay(&self) -> Duration {
        SchedulerLink::open_delay(self)
    }
}
