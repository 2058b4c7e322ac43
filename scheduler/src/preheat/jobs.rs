//! [`Jobs`]: every preheat job this replica accepted, as a pure state
//! machine. Inputs carry `now`; the peers that may be ordered are passed in
//! ([`Candidate`]); what must be sent to peers is returned ([`Order`]).
//!
//! A job orders its peers once, at creation. Each peer's part then moves
//! `pending` → `running` → `succeeded` | `failed` | `cancelled` as its
//! reports arrive (a final state is never left). The job is `running` until
//! every part is final, then `succeeded` (all succeeded), `failed` (any
//! failed) or `cancelled`. A part whose peer left the swarm fails; a job
//! still running after [`JobsConfig::timeout`] fails its unfinished parts.
//! Finished jobs are kept [`JobsConfig::retention`], at most
//! [`JobsConfig::max_kept`] of them, then forgotten, oldest first.
//!
//! Bounded: [`JobsConfig::max_running`] jobs at once,
//! [`JobsConfig::max_peers_per_job`] peers in one.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{Candidate, JobSpec, PreheatOrder, Scope};

/// Tunables.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Jobs running at once (default 32); one more is refused.
    pub max_running: usize,
    /// Finished jobs kept (default 256); past that the oldest is forgotten.
    pub max_kept: usize,
    /// How long a finished job is kept (default 1 h).
    pub retention: Duration,
    /// Peers one job may order (default 10,000); a scope that selects more
    /// is refused: narrow it.
    pub max_peers_per_job: usize,
    /// A job still running this long after its creation fails its
    /// unfinished parts (default 6 h).
    pub timeout: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_running: 32,
            max_kept: 256,
            retention: Duration::from_secs(3600),
            max_peers_per_job: 10_000,
            timeout: Duration::from_secs(6 * 3600),
        }
    }
}

/// Why a job request or a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The scope selects no peer with a session open to this scheduler.
    #[error("the scope {0} matches no peer connected to this scheduler")]
    ScopeEmpty(String),
    /// The scope selects more peers than one job may order.
    #[error("the scope selects {0} peers, more than {1}: narrow it (zone, count, nodes)")]
    TooManyPeers(usize, usize),
    /// Too many jobs running.
    #[error("{0} preheat jobs are running, the limit: wait for one to end or cancel one")]
    TooManyJobs(usize),
    /// No such job (never, or forgotten).
    #[error("no preheat job {0}")]
    Unknown(String),
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Some part is not final.
    Running,
    /// Every part succeeded.
    Succeeded,
    /// Every part is final and one failed.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl JobState {
    /// Every state, for metrics.
    pub const ALL: [JobState; 4] = [
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Its name in the API and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// One peer's part of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerJobState {
    /// Ordered; no report yet.
    Pending,
    /// Fetching.
    Running,
    /// Every blob is on the node.
    Succeeded,
    /// It failed (see the error).
    Failed,
    /// Cancelled before it ended.
    Cancelled,
}

impl PeerJobState {
    /// Whether this state is final.
    pub fn is_final(self) -> bool {
        !matches!(self, PeerJobState::Pending | PeerJobState::Running)
    }
}

/// A peer's report on its part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where it stands.
    pub state: PeerJobState,
    /// Blobs on the node, of all.
    pub blobs_done: u32,
    /// All blobs of the image(s).
    pub blobs_total: u32,
    /// Verified bytes on the node.
    pub bytes_done: u64,
    /// All bytes.
    pub bytes_total: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// What the adapter must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Preheat, to this peer.
    Preheat {
        /// The peer.
        peer: String,
        /// What to do.
        order: Box<PreheatOrder>,
    },
    /// Stop the job, on this peer.
    Cancel {
        /// The peer.
        peer: String,
        /// The job.
        job_id: String,
    },
}

/// One peer's part, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPart {
    /// Peer id (or the name asked for, when no such peer was connected).
    pub peer: String,
    /// Where it stands.
    pub state: PeerJobState,
    /// Blobs on the node.
    pub blobs_done: u32,
    /// All blobs.
    pub blobs_total: u32,
    /// Verified bytes on the node.
    pub bytes_done: u64,
    /// All bytes.
    pub bytes_total: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// The image reference, normalised (`registry/repository:tag`).
    pub image: String,
    /// Platforms asked for (empty: each node's own).
    pub platforms: Vec<String>,
    /// The scope, e.g. `count=3`.
    pub scope: String,
    /// Whether a credential came with it (never the credential).
    pub private: bool,
    /// Where it stands.
    pub state: JobState,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Seconds it ran, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Peer parts by state, and bytes over all of them.
    pub summary: Summary,
    /// Every peer's part.
    pub peers: Vec<PeerPart>,
}

/// Counts over a job's parts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Parts.
    pub peers: usize,
    /// Pending ones.
    pub pending: usize,
    /// Running ones.
    pub running: usize,
    /// Succeeded ones.
    pub succeeded: usize,
    /// Failed ones.
    pub failed: usize,
    /// Cancelled ones.
    pub cancelled: usize,
    /// Verified bytes over all parts.
    pub bytes_done: u64,
    /// All bytes over the parts that know their total.
    pub bytes_total: u64,
}

struct Job {
    spec: JobSpec,
    created: Instant,
    finished: Option<Instant>,
    state: JobState,
    peers: BTreeMap<String, Report>,
    /// Creation order, for listing.
    seq: u64,
}

/// Every job of this replica. See the module doc.
pub struct Jobs {
    config: JobsConfig,
    jobs: BTreeMap<String, Job>,
    rng: rand::rngs::SmallRng,
    seq: u64,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

fn report(state: PeerJobState, error: Option<String>) -> Report {
    Report {
        state,
        blobs_done: 0,
        blobs_total: 0,
        bytes_done: 0,
        bytes_total: 0,
        error,
    }
}

impl Jobs {
    /// No jobs; ids and random picks come from `seed`.
    pub fn new(config: JobsConfig, seed: u64) -> Self {
        Jobs {
            config,
            jobs: BTreeMap::new(),
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    /// Creates a job over `candidates` (the peers this replica can order
    /// now); the job as created and the orders to send. Named nodes that are
    /// not among the candidates are parts that failed at once.
    pub fn create(
        &mut self,
        now: Instant,
        spec: JobSpec,
        candidates: &[Candidate],
    ) -> Result<(JobView, Vec<Order>), JobError> {
        self.tick(now, None);
        let running = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .count();
        if running >= self.config.max_running {
            return Err(JobError::TooManyJobs(running));
        }
        let mut chosen: Vec<&Candidate> = match &spec.scope {
            Scope::All => candidates.iter().collect(),
            Scope::Zone(z) => candidates.iter().filter(|c| &c.zone == z).collect(),
            Scope::Count(_) | Scope::Percent(_) => {
                let mut all: Vec<&Candidate> = candidates.iter().collect();
                all.sort_by(|a, b| a.id.cmp(&b.id));
                all.shuffle(&mut self.rng);
                let n = match spec.scope {
                    Scope::Count(n) => n as usize,
                    Scope::Percent(p) => (all.len() * p as usize).div_ceil(100),
                    _ => unreachable!(),
                };
                all.truncate(n);
                all
            }
            Scope::Nodes(names) => candidates
                .iter()
                .filter(|c| names.iter().any(|n| n == &c.id || n == &c.hostname))
                .collect(),
        };
        chosen.sort_by(|a, b| a.id.cmp(&b.id));
        chosen.dedup_by(|a, b| a.id == b.id);
        if chosen.is_empty() {
            return Err(JobError::ScopeEmpty(spec.scope.to_string()));
        }
        if chosen.len() > self.config.max_peers_per_job {
            return Err(JobError::TooManyPeers(
                chosen.len(),
                self.config.max_peers_per_job,
            ));
        }
        let id = loop {
            let id = format!("{:016x}", self.rng.random::<u64>());
            if !self.jobs.contains_key(&id) {
                break id;
            }
        };
        let mut peers: BTreeMap<String, Report> = chosen
            .iter()
            .map(|c| (c.id.clone(), report(PeerJobState::Pending, None)))
            .collect();
        if let Scope::Nodes(names) = &spec.scope {
            for n in names {
                if !chosen.iter().any(|c| &c.id == n || &c.hostname == n) {
                    peers.insert(
                        n.clone(),
                        report(
                            PeerJobState::Failed,
                            Some("no such peer connected to this scheduler".into()),
                        ),
                    );
                }
            }
        }
        let orders = chosen
            .iter()
            .map(|c| Order::Preheat {
                peer: c.id.clone(),
                order: Box::new(PreheatOrder {
                    job_id: id.clone(),
                    image: spec.image.clone(),
                    platforms: spec.platforms.clone(),
                    credential: spec.credential.clone(),
                }),
            })
            .collect();
        self.seq += 1;
        let private = spec.credential.is_some();
        let mut spec = spec;
        // Held only until the orders are sent (they carry it).
        spec.credential = None;
        self.jobs.insert(
            id.clone(),
            Job {
                spec,
                created: now,
                finished: None,
                state: JobState::Running,
                peers,
                seq: self.seq,
            },
        );
        let mut view = self.view(now, &id).expect("just inserted");
        view.private = private;
        Ok((view, orders))
    }

    /// Applies `peer`'s report on `job_id`. False when it is about no job
    /// part (an unknown or forgotten job, a peer not in it, a part already
    /// final): ignored.
    pub fn report(&mut self, now: Instant, peer: &str, job_id: &str, r: Report) -> bool {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return false;
        };
        let Some(part) = job.peers.get_mut(peer) else {
            return false;
        };
        if part.state.is_final() || job.state != JobState::Running {
            return false;
        }
        let mut r = r;
        if r.state == PeerJobState::Pending {
            r.state = PeerJobState::Running;
        }
        if r.state != PeerJobState::Failed {
            r.error = None;
        }
        *part = r;
        settle(job, now);
        true
    }

    /// Cancels a running job: its unfinished parts are cancelled and their
    /// peers told to stop. A finished job is returned as it is.
    pub fn cancel(&mut self, now: Instant, id: &str) -> Result<(JobView, Vec<Order>), JobError> {
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::Unknown(id.to_owned()))?;
        let mut orders = Vec::new();
        if job.state == JobState::Running {
            for (peer, part) in job.peers.iter_mut() {
                if !part.state.is_final() {
                    part.state = PeerJobState::Cancelled;
                    orders.push(Order::Cancel {
                        peer: peer.clone(),
                        job_id: id.to_owned(),
                    });
                }
            }
            job.state = JobState::Cancelled;
            job.finished = Some(now);
        }
        Ok((self.view(now, id).expect("present"), orders))
    }

    /// Advances time: with `present` (the peers in the swarm now), parts of
    /// peers that left fail; jobs past their timeout fail their unfinished
    /// parts; old finished jobs are forgotten.
    pub fn tick(&mut self, now: Instant, present: Option<&HashSet<String>>) {
        let timeout = self.config.timeout;
        for job in self.jobs.values_mut() {
            if job.state != JobState::Running {
                continue;
            }
            let late = now.saturating_duration_since(job.created) >= timeout;
            for (peer, part) in job.peers.iter_mut() {
                if part.state.is_final() {
                    continue;
                }
                if late {
                    part.state = PeerJobState::Failed;
                    part.error = Some(format!("not done within the job timeout ({timeout:?})"));
                } else if present.is_some_and(|p| !p.contains(peer)) {
                    part.state = PeerJobState::Failed;
                    part.error = Some("the peer left the swarm".into());
                }
            }
            settle(job, now);
        }
        let retention = self.config.retention;
        self.jobs.retain(|_, j| {
            j.finished
                .is_none_or(|f| now.saturating_duration_since(f) < retention)
        });
        let mut finished: Vec<(Instant, String)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.finished.map(|f| (f, id.clone())))
            .collect();
        if finished.len() > self.config.max_kept {
            finished.sort();
            let excess = finished.len() - self.config.max_kept;
            for (_, id) in finished.into_iter().take(excess) {
                self.jobs.remove(&id);
            }
        }
    }

    /// One job.
    pub fn view(&self, now: Instant, id: &str) -> Option<JobView> {
        let job = self.jobs.get(id)?;
        let peers: Vec<PeerPart> = job
            .peers
            .iter()
            .map(|(peer, r)| PeerPart {
                peer: peer.clone(),
                state: r.state,
                blobs_done: r.blobs_done,
                blobs_total: r.blobs_total,
                bytes_done: r.bytes_done,
                bytes_total: r.bytes_total,
                error: r.error.clone(),
            })
            .collect();
        let mut summary = Summary {
            peers: peers.len(),
            ..Summary::default()
        };
        for p in &peers {
            match p.state {
                PeerJobState::Pending => summary.pending += 1,
                PeerJobState::Running => summary.running += 1,
                PeerJobState::Succeeded => summary.succeeded += 1,
                PeerJobState::Failed => summary.failed += 1,
                PeerJobState::Cancelled => summary.cancelled += 1,
            }
            summary.bytes_done += p.bytes_done;
            summary.bytes_total += p.bytes_total;
        }
        Some(JobView {
            id: id.to_owned(),
            image: job.spec.image.to_string(),
            platforms: job.spec.platforms.clone(),
            scope: job.spec.scope.to_string(),
            private: false,
            state: job.state,
            age_secs: now.saturating_duration_since(job.created).as_secs(),
            duration_secs: job
                .finished
                .map(|f| f.saturating_duration_since(job.created).as_secs_f64()),
            summary,
            peers,
        })
    }

    /// Every job, newest first.
    pub fn list(&self, now: Instant) -> Vec<JobView> {
        let mut ids: Vec<(u64, &String)> = self.jobs.iter().map(|(id, j)| (j.seq, id)).collect();
        ids.sort_by_key(|b| std::cmp::Reverse(b.0));
        ids.into_iter()
            .filter_map(|(_, id)| self.view(now, id))
            .collect()
    }

    /// Jobs by state (for metrics).
    pub fn counts(&self) -> [(JobState, usize); 4] {
        JobState::ALL.map(|s| (s, self.jobs.values().filter(|j| j.state == s).count()))
    }
}

/// Ends a job whose parts are all final.
fn settle(job: &mut Job, now: Instant) {
    if job.state != JobState::Running || !job.peers.values().all(|p| p.state.is_final()) {
        return;
    }
    job.state = if job
        .peers
        .values()
        .all(|p| p.state == PeerJobState::Succeeded)
    {
        JobState::Succeeded
    } else if job.peers.values().any(|p| p.state == PeerJobState::Failed) {
        JobState::Failed
    } else {
        JobState::Cancelled
    };
    job.finished = Some(now);
}

#[cfg(test)]
mod tests;
