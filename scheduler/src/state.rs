//! [`SchedulerState`]: the core behind a lock, plus the channels its effects
//! are routed to. Shared by the gRPC adapter, the operator API and the
//! background ticker.
//!
//! Every call into the core goes through [`SchedulerState::with_core`], which
//! reads the clock, runs the closure under the lock, then routes the queued
//! effects to plan streams and sessions without awaiting (a full channel
//! closes that stream: the peer re-opens it and gets a fresh full plan).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::core::{Command, Effect, PeerId, PlanId, PlanUpdate, Scheduler};
use crate::preheat::jobs::Order;
use crate::preheat::{
    Candidate, JobError, JobSpec, JobState, JobView, Jobs, JobsConfig, PeerJobState, Report,
};

/// What a plan stream receives. Boxed, as are a session's commands
/// (`grpc.rs`): a channel allocates room for 32 messages when it is made, so
/// every open stream pays for 32 of its message type (96 bytes unboxed).
pub type PlanMessage = Result<Box<PlanUpdate>, (tonic::Code, String)>;

/// Capacity of each plan stream's channel.
pub const PLAN_CHANNEL: usize = 64;
/// Capacity of each session's command channel.
pub const SESSION_CHANNEL: usize = 64;

/// The scheduler's shared state.
pub struct SchedulerState {
    core: Mutex<Scheduler>,
    plans: Mutex<HashMap<PlanId, mpsc::Sender<PlanMessage>>>,
    sessions: Mutex<HashMap<PeerId, mpsc::Sender<Command>>>,
    /// Plan streams open per peer (for the per-peer limit).
    open_plans: Mutex<HashMap<PeerId, usize>>,
    /// Milliseconds since `started` of the ticker's last tick (0: none yet).
    last_tick_ms: AtomicU64,
    tick_interval_ms: AtomicU64,
    started: Instant,
    ready: AtomicBool,
    closing: tokio::sync::watch::Sender<bool>,
    /// Preheat jobs. Locked after the core's lock is released, never while
    /// holding it.
    jobs: Mutex<Jobs>,
}

impl SchedulerState {
    /// Wraps a core.
    pub fn new(core: Scheduler) -> Arc<Self> {
        Arc::new(SchedulerState {
            core: Mutex::new(core),
            plans: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            open_plans: Mutex::new(HashMap::new()),
            last_tick_ms: AtomicU64::new(0),
            tick_interval_ms: AtomicU64::new(0),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            closing: tokio::sync::watch::channel(false).0,
            jobs: Mutex::new(Jobs::new(JobsConfig::default(), rand::random())),
        })
    }

    /// Creates a preheat job over the peers whose session with this replica
    /// is open, and sends its orders. A peer whose order cannot be sent (its
    /// session just closed, or its command queue is full) has its part fail.
    pub fn create_job(&self, spec: JobSpec) -> Result<JobView, JobError> {
        let (now, candidates) = self.with_core(|core, now| {
            let c: Vec<Candidate> = core
                .peers(now)
                .into_iter()
                .filter(|p| p.session_open)
                .map(|p| Candidate {
                    id: p.id,
                    hostname: p.hostname,
                    zone: p.zone,
                })
                .collect();
            (now, c)
        });
        let mut jobs = lock(&self.jobs);
        let (view, orders) = jobs.create(now, spec, &candidates)?;
        let unsent = self.send_orders(orders);
        if unsent.is_empty() {
            return Ok(view);
        }
        for peer in unsent {
            jobs.report(
                now,
                &peer,
                &view.id,
                Report {
                    state: PeerJobState::Failed,
                    blobs_done: 0,
                    blobs_total: 0,
                    bytes_done: 0,
                    bytes_total: 0,
                    error: Some(
                        "the order could not be sent: the peer's session is closed or busy".into(),
                    ),
                },
            );
        }
        let private = view.private;
        let mut view = jobs.view(now, &view.id).expect("just created");
        view.private = private;
        Ok(view)
    }

    /// Cancels a job and tells its unfinished peers to stop.
    pub fn cancel_job(&self, id: &str) -> Result<JobView, JobError> {
        let now = Instant::now();
        let (view, orders) = lock(&self.jobs).cancel(now, id)?;
        self.send_orders(orders);
        Ok(view)
    }

    /// A peer's report on its part of a job; false when it was ignored.
    pub fn job_report(&self, peer: &PeerId, job_id: &str, report: Report) -> bool {
        lock(&self.jobs).report(Instant::now(), peer.as_str(), job_id, report)
    }

    /// One job.
    pub fn job(&self, id: &str) -> Option<JobView> {
        lock(&self.jobs).view(Instant::now(), id)
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Vec<JobView> {
        lock(&self.jobs).list(Instant::now())
    }

    /// Jobs by state.
    pub fn job_counts(&self) -> [(JobState, usize); 4] {
        lock(&self.jobs).counts()
    }

    /// Advances the jobs' clock: parts of peers that left the swarm fail,
    /// late jobs fail, old ones are forgotten. Called by the ticker.
    pub fn tick_jobs(&self) {
        let counts = lock(&self.jobs).counts();
        if counts.iter().all(|(_, n)| *n == 0) {
            return;
        }
        // Who is in the swarm matters only to running jobs.
        if counts
            .iter()
            .any(|(s, n)| *s == JobState::Running && *n > 0)
        {
            let (now, present) = self.with_core(|core, now| {
                let p: std::collections::HashSet<String> =
                    core.peers(now).into_iter().map(|p| p.id).collect();
                (now, p)
            });
            lock(&self.jobs).tick(now, Some(&present));
        } else {
            lock(&self.jobs).tick(Instant::now(), None);
        }
    }

    /// Sends orders over the sessions; the peers whose order was not sent.
    fn send_orders(&self, orders: Vec<Order>) -> Vec<String> {
        let sessions = lock(&self.sessions);
        let mut unsent = Vec::new();
        for order in orders {
            let (peer, command) = match order {
                Order::Preheat { peer, order } => (peer, Command::Preheat(order)),
                Order::Cancel { peer, job_id } => (peer, Command::CancelPreheat(job_id)),
            };
            let sent = PeerId::parse(&peer)
                .ok()
                .and_then(|id| sessions.get(&id))
                .is_some_and(|tx| tx.try_send(command).is_ok());
            if !sent {
                unsent.push(peer);
            }
        }
        unsent
    }

    /// Runs `f` on the core with the current time, then routes its effects.
    /// Effects are routed under the core's lock so that every stream sees
    /// updates in the order the core made them.
    pub fn with_core<T>(&self, f: impl FnOnce(&mut Scheduler, Instant) -> T) -> T {
        let mut core = self.core.lock().expect("scheduler core lock poisoned");
        let out = f(&mut core, Instant::now());
        self.route(&mut core);
        out
    }

    /// Registers the channel of a plan stream `peer` just opened.
    pub fn attach_plan(&self, plan: PlanId, peer: &PeerId, tx: mpsc::Sender<PlanMessage>) {
        lock(&self.plans).insert(plan, tx);
        *lock(&self.open_plans).entry(peer.clone()).or_default() += 1;
    }

    /// Plan streams `peer` holds open (attached and not yet dropped).
    pub fn open_plans(&self, peer: &PeerId) -> usize {
        lock(&self.open_plans).get(peer).copied().unwrap_or(0)
    }

    /// Registers a peer's session command channel (replacing an older one).
    pub fn attach_session(&self, peer: PeerId, tx: mpsc::Sender<Command>) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(peer, tx);
    }

    /// Forgets a session channel, if it is still the registered one.
    pub fn detach_session(&self, peer: &PeerId, tx: &mpsc::Sender<Command>) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.get(peer).is_some_and(|t| t.same_channel(tx)) {
            sessions.remove(peer);
        }
    }

    /// Marks the gRPC server as serving (or not); `/readyz` reports it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the gRPC server is serving.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Ends every session and plan stream (the scheduler is shutting down):
    /// sessions end with `UNAVAILABLE` so peers reconnect, to another replica
    /// or to this one after its restart.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
        self.plans.lock().expect("plans lock").clear();
    }

    /// Resolves once [`close_streams`](Self::close_streams) was called.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Time since the process started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn route(&self, core: &mut Scheduler) {
        loop {
            let effects = core.drain_effects();
            if effects.is_empty() {
                return;
            }
            let mut plans = self.plans.lock().expect("plans lock");
            let mut lagging = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Plan { plan, update, .. } => {
                        if let Some(tx) = plans.get(&plan)
                            && tx.try_send(Ok(Box::new(update))).is_err()
                        {
                            lagging.push(plan);
                        }
                    }
                    Effect::ClosePlan { plan, reason } => {
                        if let Some(tx) = plans.remove(&plan) {
                            let _ = tx.try_send(Err((tonic::Code::Aborted, reason.to_string())));
                        }
                    }
                    Effect::Command { peer, command } => {
                        let sessions = self.sessions.lock().expect("sessions lock");
                        if let Some(tx) = sessions.get(&peer) {
                            let _ = tx.try_send(command);
                        }
                    }
                }
            }
            // A stream that cannot keep up (or whose peer went away) is
            // closed; the peer re-opens it and gets a full plan. Closing may
            // queue more effects (a re-election): loop.
            let now = Instant::now();
            for plan in lagging {
                if let Some(tx) = plans.remove(&plan) {
                    let _ = tx.try_send(Err((
                        tonic::Code::ResourceExhausted,
                        "plan stream lagging; re-open it".into(),
                    )));
                }
                core.close_plan(now, plan);
            }
        }
    }

    /// Called when `peer`'s plan stream went away (the peer closed it).
    pub fn plan_closed(&self, plan: PlanId, peer: &PeerId) {
        lock(&self.plans).remove(&plan);
        {
            let mut open = lock(&self.open_plans);
            if let Some(n) = open.get_mut(peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(peer);
                }
            }
        }
        self.with_core(|core, now| core.close_plan(now, plan));
    }

    /// The ticker calls this at every tick of its `interval`.
    pub fn ticked(&self, interval: Duration) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_tick_ms.store(ms.max(1), Ordering::Relaxed);
        self.tick_interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the process can still do its work: the core's lock is not
    /// poisoned (a panic under it), and the ticker, once started, ticked within
    /// the last 10 s or 10 of its intervals, whichever is longer. `/healthz`
    /// fails otherwise, so that Kubernetes restarts the process.
    pub fn health(&self) -> Result<(), String> {
        let interval = self.tick_interval_ms.load(Ordering::Relaxed);
        let max_silence = Duration::from_millis((interval * 10).max(10_000));
        if self.core.is_poisoned() {
            return Err("the scheduler core panicked (its lock is poisoned)".into());
        }
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        if last > 0 && now.saturating_sub(last) > max_silence.as_millis() as u64 {
            return Err(format!(
                "the planning ticker has not ticked for {} ms",
                now - last
            ));
        }
        Ok(())
    }
}

/// Locks a mutex of routing tables. They hold no invariant a panic could
/// break halfway, so a poisoned one is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
