//! [`SchedulerState`]: the core behind a lock, plus the channels its effects
//! are routed to. Shared by the gRPC adapter, the operator API and the
//! background ticker.
//!
//! Every call into the core goes through [`SchedulerState::with_core`], which
//! reads the clock, runs the closure under the lock, then routes the queued
//! effects to plan streams and sessions without awaiting (a full channel
//! closes that stream: the peer re-opens it and gets a fresh full plan).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::core::{Command, Effect, PeerId, PlanId, PlanUpdate, Scheduler};

/// What a plan stream receives.
pub type PlanMessage = Result<PlanUpdate, (tonic::Code, String)>;

/// Capacity of each plan stream's channel.
pub const PLAN_CHANNEL: usize = 64;
/// Capacity of each session's command channel.
pub const SESSION_CHANNEL: usize = 64;

/// The scheduler's shared state.
pub struct SchedulerState {
    core: Mutex<Scheduler>,
    plans: Mutex<HashMap<PlanId, mpsc::Sender<PlanMessage>>>,
    sessions: Mutex<HashMap<PeerId, mpsc::Sender<Command>>>,
    started: Instant,
    ready: AtomicBool,
    closing: tokio::sync::watch::Sender<bool>,
}

impl SchedulerState {
    /// Wraps a core.
    pub fn new(core: Scheduler) -> Arc<Self> {
        Arc::new(SchedulerState {
            core: Mutex::new(core),
            plans: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            closing: tokio::sync::watch::channel(false).0,
        })
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

    /// Registers the channel of a plan stream the core just opened.
    pub fn attach_plan(&self, plan: PlanId, tx: mpsc::Sender<PlanMessage>) {
        self.plans.lock().expect("plans lock").insert(plan, tx);
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
                            && tx.try_send(Ok(update)).is_err()
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

    /// Called when a plan stream's receiver went away (the peer closed it).
    pub fn plan_closed(&self, plan: PlanId) {
        self.plans.lock().expect("plans lock").remove(&plan);
        self.with_core(|core, now| core.close_plan(now, plan));
    }
}
