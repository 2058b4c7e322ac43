//! Preheat on the peer: the scheduler's `PreheatImage` order carried out — the
//! image's manifest resolved through this node's own upstream configuration
//! (`hosts.toml`, the registry client the mirror uses), its blobs fetched
//! through the download engine into the store — and `PreheatProgress` sent back
//! on the session of the replica that gave the order.
//!
//! Layout:
//! - this file: [`Preheater`], the jobs of this node (start, cancel, their latest
//!   progress, kept a while after they end so that a session that re-opens
//!   re-sends it);
//! - [`manifest`]: manifests and indexes, platforms (pure);
//! - `run.rs`: one job (auth dance, manifests, blobs, progress).
//!
//! The credential of a job is in memory only while the job runs (the order and
//! the job's downloads hold it), never logged, never in an error. A preheated
//! blob is in the store like any other: the mirror still checks a caller's
//! access before serving it (`crate::mirror::access`), nothing here changes that.
//!
//! Not here: cancelling a blob download already under way (it is shared with
//! any mirror reader of the same blob; it finishes), persistence of jobs across
//! a restart.

pub mod manifest;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal_proto::v1;
use shoal_proto::v1::scheduler_command::Command;
use tokio::sync::{broadcast, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::engine::Engine;
use crate::registry::Registries;
use crate::scheduler_link::PreheatHandler;

/// Jobs running at once on one node; an order past that fails at once.
pub const MAX_RUNNING: usize = 8;
/// How long a finished job's last progress is kept (re-sent to a session that
/// re-opens).
const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// Jobs remembered at most (running and finished).
const MAX_KEPT: usize = 256;

struct Entry {
    /// The replica that gave the order.
    replica: String,
    latest: v1::PreheatProgress,
    /// Set to true to cancel; `None` once the job ended.
    cancel: Option<watch::Sender<bool>>,
    finished: Option<Instant>,
}

struct Inner {
    registries: Registries,
    engine: OnceLock<Engine>,
    jobs: Mutex<HashMap<String, Entry>>,
    progress: broadcast::Sender<(String, v1::PreheatProgress)>,
}

/// This node's preheat jobs. Cheap to clone.
#[derive(Clone)]
pub struct Preheater {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Preheater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preheater").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn progress(job_id: &str, state: v1::PreheatState) -> v1::PreheatProgress {
    v1::PreheatProgress {
        job_id: job_id.to_owned(),
        state: state as i32,
        ..Default::default()
    }
}

impl Preheater {
    /// A preheater resolving registries with `registries`; it runs jobs once
    /// [`set_engine`](Self::set_engine) gave it the engine (the engine needs the
    /// scheduler link, which needs this).
    pub fn new(registries: Registries) -> Self {
        Preheater {
            inner: Arc::new(Inner {
                registries,
                engine: OnceLock::new(),
                jobs: Mutex::new(HashMap::new()),
                progress: broadcast::channel(256).0,
            }),
        }
    }

    /// The engine blobs are fetched with.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.inner.engine.set(engine);
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        lock(&self.inner.jobs)
            .values()
            .filter(|e| e.finished.is_none())
            .count()
    }

    fn publish(&self, job_id: &str, p: v1::PreheatProgress, finished: bool) {
        let mut jobs = lock(&self.inner.jobs);
        let Some(e) = jobs.get_mut(job_id) else {
            return;
        };
        e.latest = p.clone();
        if finished {
            e.finished = Some(Instant::now());
            e.cancel = None;
        }
        let _ = self.inner.progress.send((e.replica.clone(), p));
    }

    fn start(&self, replica: &str, order: v1::PreheatImage) {
        let id = order.job_id.clone();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            warn!("preheat order with a bad job id ignored");
            return;
        }
        // The scheduler checked the order; so does this node, as the mirror checks
        // a request, before any of it reaches a URL or a log line.
        let reference_ok = if order.reference.contains(':') {
            order.reference.parse::<shoal_proto::Digest>().is_ok()
        } else {
            crate::mirror::route::check_tag(&order.reference).is_ok()
        };
        if !crate::registry::names::is_registry_host(&order.registry)
            || crate::mirror::route::check_name(&order.repository).is_err()
            || !reference_ok
        {
            warn!(preheat.job = %id, "preheat order with a bad image reference refused");
            let mut p = progress(&id, v1::PreheatState::Failed);
            p.error = "the order's image reference is not valid".into();
            let _ = self.inner.progress.send((replica.to_owned(), p));
            return;
        }
        let image = format!(
            "{}/{}:{}",
            order.registry, order.repository, order.reference
        );
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let refusal = {
            let mut jobs = lock(&self.inner.jobs);
            let now = Instant::now();
            jobs.retain(|_, e| {
                e.finished
                    .is_none_or(|f| now.duration_since(f) < KEEP_FINISHED)
            });
            if jobs.contains_key(&id) {
                // The same order again (a re-sent command): the job goes on.
                return;
            }
            let running = jobs.values().filter(|e| e.finished.is_none()).count();
            let refusal = if running >= MAX_RUNNING {
                Some(format!(
                    "{running} preheat jobs are running on this node, the limit"
                ))
            } else if self.inner.engine.get().is_none() {
                Some("the node is still starting".to_owned())
            } else {
                None
            };
            if jobs.len() >= MAX_KEPT
                && let Some(oldest) = jobs
                    .iter()
                    .filter_map(|(k, e)| e.finished.map(|f| (f, k.clone())))
                    .min()
            {
                jobs.remove(&oldest.1);
            }
            jobs.insert(
                id.clone(),
                Entry {
                    replica: replica.to_owned(),
                    latest: progress(&id, v1::PreheatState::Running),
                    cancel: Some(cancel_tx),
                    finished: None,
                },
            );
            refusal
        };
        if let Some(why) = refusal {
            warn!(preheat.job = %id, preheat.image = %image, error = %why, "preheat refused");
            let mut p = progress(&id, v1::PreheatState::Failed);
            p.error = why;
            self.publish(&id, p, true);
            return;
        }
        let this = self.clone();
        let engine = self.inner.engine.get().expect("checked").clone();
        let span = info_span!("preheat", preheat.job = %id, preheat.image = %image);
        tokio::spawn(
            async move {
                info!(platforms = ?order.platforms, private = order.credential.is_some(), "preheat started");
                let client = match this.inner.registries.resolve(Some(&order.registry)).await {
                    Ok(c) => c,
                    Err(e) => {
                        let mut p = progress(&id, v1::PreheatState::Failed);
                        p.error = format!("registry {}: {e}", order.registry);
                        warn!(error = %p.error, "preheat failed");
                        this.publish(&id, p, true);
                        return;
                    }
                };
                let job = run::Job {
                    order,
                    engine,
                    client,
                };
                let reporter = this.clone();
                let job_id = id.clone();
                let last = Arc::new(Mutex::new(run::Counts::default()));
                let seen = last.clone();
                let outcome = run::run(job, cancel_rx, move |c| {
                    *lock(&seen) = c;
                    let p = v1::PreheatProgress {
                        job_id: job_id.clone(),
                        state: v1::PreheatState::Running as i32,
                        blobs_done: c.blobs_done,
                        blobs_total: c.blobs_total,
                        bytes_done: c.bytes_done,
                        bytes_total: c.bytes_total,
                        error: String::new(),
                    };
                    reporter.publish(&job_id, p, false);
                })
                .await;
                let c = *lock(&last);
                let mut p = v1::PreheatProgress {
                    job_id: id.clone(),
                    state: 0,
                    blobs_done: c.blobs_done,
                    blobs_total: c.blobs_total,
                    bytes_done: c.bytes_done,
                    bytes_total: c.bytes_total,
                    error: String::new(),
                };
                match outcome {
                    run::Outcome::Done => {
                        p.state = v1::PreheatState::Succeeded as i32;
                        info!(blobs = c.blobs_total, bytes = c.bytes_total, "preheat succeeded");
                    }
                    run::Outcome::Failed(e) => {
                        p.state = v1::PreheatState::Failed as i32;
                        warn!(error = %e, "preheat failed");
                        p.error = e;
                    }
                    run::Outcome::Cancelled => {
                        p.state = v1::PreheatState::Cancelled as i32;
                        info!(blobs_done = c.blobs_done, "preheat cancelled");
                    }
                }
                this.publish(&id, p, true);
            }
            .instrument(span),
        );
    }

    fn cancel(&self, job_id: &str) {
        let jobs = lock(&self.inner.jobs);
        match jobs.get(job_id).and_then(|e| e.cancel.as_ref()) {
            Some(tx) => {
                info!(preheat.job = %job_id, "preheat cancel ordered");
                let _ = tx.send(true);
            }
            None => info!(preheat.job = %job_id, "cancel ordered for no running preheat job"),
        }
    }
}

impl PreheatHandler for Preheater {
    fn command(&self, replica: &str, command: Command) {
        match command {
            Command::PreheatImage(order) => self.start(replica, order),
            Command::CancelPreheat(c) => self.cancel(&c.job_id),
            _ => {}
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<(String, v1::PreheatProgress)> {
        self.inner.progress.subscribe()
    }

    fn latest(&self, replica: &str) -> Vec<v1::PreheatProgress> {
        lock(&self.inner.jobs)
            .values()
            .filter(|e| e.replica == replica)
            .map(|e| e.latest.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistriesConfig;

    fn preheater() -> Preheater {
        Preheater::new(Registries::new(RegistriesConfig::new(
            "/nonexistent/shoal-preheat-hosts".into(),
        )))
    }

    fn order(repository: &str, reference: &str) -> Command {
        Command::PreheatImage(v1::PreheatImage {
            job_id: "job-1".into(),
            registry: "reg.example:5000".into(),
            repository: repository.into(),
            reference: reference.into(),
            platforms: vec![],
            credential: Some(v1::PreheatCredential {
                username: "u".into(),
                password: "pw-never-shown".into(),
                token: String::new(),
            }),
        })
    }

    #[test]
    fn refused_orders_fail_at_once_on_the_ordering_replica() {
        let p = preheater();
        let mut rx = p.subscribe();
        for (repo, reference) in [("UPPER/case", "v1"), ("team/app", "../x"), ("a//b", "v1")] {
            p.command("replica-a", order(repo, reference));
            let (replica, progress) = rx.try_recv().expect("a report");
            assert_eq!(replica, "replica-a");
            assert_eq!(
                progress.state,
                v1::PreheatState::Failed as i32,
                "{repo} {reference}"
            );
            assert!(!progress.error.contains("pw-never-shown"));
        }
        // A valid order on a node whose engine is not there yet.
        p.command("replica-a", order("team/app", "v1"));
        let (_, progress) = rx.try_recv().unwrap();
        assert_eq!(progress.state, v1::PreheatState::Failed as i32);
        assert!(progress.error.contains("starting"), "{}", progress.error);
        assert_eq!(
            p.latest("replica-a").len(),
            1,
            "kept for a session that re-opens"
        );
        assert!(p.latest("replica-b").is_empty());
        assert_eq!(p.running(), 0);
        // Cancelling an unknown job changes nothing.
        p.command(
            "replica-a",
            Command::CancelPreheat(v1::CancelPreheat {
                job_id: "nope".into(),
            }),
        );
        assert!(rx.try_recv().is_err());
    }
}
