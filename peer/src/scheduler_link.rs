//! The peer's link to the scheduler: join with inventory, one session stream
//! (heartbeats, batched reports), plan streams on demand, and reconnection
//! with exponential backoff and jitter.
//!
//! The peer has no hard dependency on the scheduler: while the link is down,
//! [`SchedulerLink::plan`] fails at once with [`LinkError::Unavailable`] and the
//! caller fetches from upstream; reports made while disconnected are dropped
//! (the download engine re-reports what it holds when it re-opens a plan, and
//! complete tasks are re-announced in the next join).
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use rand::Rng;
use shoal_proto::limits::{JOIN_PAGE, MAX_MESSAGE};
use shoal_proto::v1::{self, peer_event::Event, scheduler_client::SchedulerClient};
use shoal_proto::{Digest, PieceSet, TaskShape};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::engine::{ParentRef, PlanParent, PlanStream, PlanUpdate, PlannerError};

/// Reports queued at most; past that new reports are dropped (and re-sent by
/// the engine on its next plan).
const QUEUE: usize = 4096;
/// Reports merged into one session message at most.
const BATCH: usize = 256;
/// Encoded bytes of held tasks per Join page at most (well under
/// [`MAX_MESSAGE`]).
const JOIN_PAGE_BYTES: usize = MAX_MESSAGE / 2;

/// What the link needs to know about this peer.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Scheduler gRPC URLs, e.g. `https://shoal-scheduler.shoal.svc:7600`; tried
    /// in turn.
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
        }
    }
}

/// Tasks this peer holds complete, announced at every join.
pub trait Inventory: Send + Sync + 'static {
    /// The complete tasks, with their piece hashes. Blocking (called on a
    /// blocking thread).
    fn held(&self) -> Vec<v1::HeldTask>;

    /// The operator dropped `digest` (the scheduler's `drop` command): delete it
    /// unless it is in use. True when it was deleted. Blocking.
    fn drop_task(&self, digest: &Digest) -> bool {
        let _ = digest;
        false
    }
}

/// What the engine tells the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// This peer (back-to-source) learnt the task's size from upstream.
    Started {
        /// The task.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Pieces verified and stored: (index, hash when fetched from upstream).
    Pieces {
        /// The task.
        digest: Digest,
        /// The pieces.
        pieces: Vec<(u32, Option<[u8; 32]>)>,
    },
    /// The whole task is verified against its digest.
    Complete(Digest),
    /// The task was dropped from the store.
    Evicted(Digest),
    /// The task, assembled from pieces that matched the hashes the scheduler
    /// handed out (or this peer reported as back-to-source), did not match its
    /// digest (and was deleted): the hashes are wrong, or retracted.
    DigestMismatch(Digest),
    /// A parent sent a bad piece.
    BadParent {
        /// The task.
        digest: Digest,
        /// The parent's peer id.
        parent: String,
        /// The piece.
        index: u32,
        /// What was wrong.
        reason: String,
    },
}

pub use crate::engine::PlanOpenError as LinkError;

/// Load counters the heartbeat carries.
#[derive(Debug, Default)]
pub struct Load {
    /// Piece uploads in flight.
    pub active_uploads: AtomicU32,
    /// Downloads in flight.
    pub active_downloads: AtomicU32,
}

/// A handle on the background link. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerLink {
    reports: mpsc::Sender<Report>,
    client: watch::Receiver<Option<SchedulerClient<Channel>>>,
    peer_id: String,
    peer: v1::PeerInfo,
    /// Load reported in heartbeats.
    pub load: Arc<Load>,
}

impl SchedulerLink {
    /// Starts the link in the background; it runs until `shutdown` resolves.
    pub fn spawn(
        config: LinkConfig,
        inventory: Arc<dyn Inventory>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> SchedulerLink {
        let (reports, rx) = mpsc::channel(QUEUE);
        let (client_tx, client) = watch::channel(None);
        let load = Arc::new(Load::default());
        let peer_id = config.peer.peer_id.clone();
        let peer = config.peer.clone();
        let task = run(config, inventory, rx, client_tx, load.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = shutdown => {}
            }
        });
        SchedulerLink {
            reports,
            client,
            peer_id,
            peer,
            load,
        }
    }

    /// True while a session with a scheduler is open.
    pub fn is_connected(&self) -> bool {
        self.client.borrow().is_some()
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.client.clone();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Queues a report for the session. Never blocks; dropped when the queue
    /// is full or no scheduler is connected.
    pub fn report(&self, report: Report) {
        if self.is_connected() && self.reports.try_send(report).is_err() {
            debug!("report queue full; report dropped");
        }
    }

    /// Announces one complete task the way a join does (a join adds to what the
    /// scheduler knows of this peer; it removes nothing). For a task completed
    /// without a plan, e.g. while the scheduler was restarting. Needs every piece
    /// hash; does nothing when one is missing or no scheduler is connected.
    pub fn announce(&self, digest: Digest, size: u64, hashes: Vec<Option<[u8; 32]>>) {
        let Some(hashes) = hashes.into_iter().collect::<Option<Vec<_>>>() else {
            debug!(task.digest = %digest, "not announced: piece hashes missing");
            return;
        };
        let Some(mut client) = self.client.borrow().clone() else {
            return;
        };
        let request = v1::JoinRequest {
            peer: Some(self.peer.clone()),
            tasks: vec![v1::HeldTask {
                digest: digest.to_string(),
                size,
                piece_hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
            }],
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

    /// Opens a plan stream for `digest` (`size` 0 when unknown). Each wire
    /// message is converted and checked ([`plan_update`]); the stream ends when
    /// the scheduler ends it or the connection fails.
    pub async fn plan(&self, digest: &Digest, size: u64) -> Result<PlanStream, LinkError> {
        let Some(mut client) = self.client.borrow().clone() else {
            return Err(LinkError::Unavailable);
        };
        let request = v1::PlanRequest {
            peer_id: self.peer_id.clone(),
            digest: digest.to_string(),
            size,
        };
        match client.plan(request).await {
            Ok(r) => Ok(r
                .into_inner()
                .take_while(|m| std::future::ready(m.is_ok()))
                .filter_map(|m| std::future::ready(m.ok().map(plan_update)))
                .boxed()),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                Err(LinkError::Unavailable)
            }
            Err(s) => Err(LinkError::Refused(s.message().to_string())),
        }
    }
}

#[async_trait::async_trait]
impl crate::engine::SchedulerClient for SchedulerLink {
    fn is_connected(&self) -> bool {
        SchedulerLink::is_connected(self)
    }

    async fn plan(&self, digest: &Digest, size: u64) -> Result<PlanStream, LinkError> {
        SchedulerLink::plan(self, digest, size).await
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
}

/// Converts a wire plan update into the engine's [`PlanUpdate`], checking it: the
/// shape's piece size and count must follow from its size, every hash index must
/// be in range and every hash 32 bytes. Parents with an unusable address, or a
/// bitmap that does not fit the task, are skipped (the rest of the plan is still
/// good); without a shape only complete parents are kept.
pub fn plan_update(u: v1::PlanUpdate) -> Result<PlanUpdate, PlannerError> {
    let shape = match &u.task {
        Some(t) => {
            let shape = TaskShape::for_size(t.size)?;
            if shape.piece_size() != t.piece_size || shape.piece_count() != t.piece_count {
                return Err(PlannerError::Shape(format!(
                    "size {} does not give piece size {} and count {}",
                    t.size, t.piece_size, t.piece_count
                )));
            }
            Some(shape)
        }
        None => None,
    };
    let mut hashes = Vec::with_capacity(u.piece_hashes.len());
    for h in u.piece_hashes {
        let hash: [u8; 32] = h
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| PlannerError::HashLength(h.index))?;
        // Hashes without a shape cannot be placed; the planner never saw them.
        if let Some(s) = shape {
            s.check_index(h.index)?;
            hashes.push((h.index, hash));
        }
    }
    let parents = u
        .parents
        .into_iter()
        .filter_map(|p| {
            let addr = p.quic_addr.parse().ok()?;
            let pieces = if p.complete {
                None
            } else {
                Some(PieceSet::from_bytes(&p.pieces, shape?.piece_count()).ok()?)
            };
            Some(PlanParent {
                r: ParentRef {
                    id: p.peer_id,
                    addr,
                },
                pieces,
            })
        })
        .collect();
    Ok(PlanUpdate {
        shape,
        hashes,
        parents,
        back_to_source: u.back_to_source,
    })
}

/// Delay before reconnect attempt `attempt` (0-based): exponential, with
/// "equal jitter" (half fixed, half random) so a fleet does not reconnect in
/// lockstep after a scheduler restart.
pub fn backoff(attempt: u32, min: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let exp = min
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(rng.random::<f64>())
}

async fn run(
    config: LinkConfig,
    inventory: Arc<dyn Inventory>,
    mut reports: mpsc::Receiver<Report>,
    client_tx: watch::Sender<Option<SchedulerClient<Channel>>>,
    load: Arc<Load>,
) {
    if config.schedulers.is_empty() {
        info!("no scheduler configured: every download goes to upstream");
        return std::future::pending().await;
    }
    let mut attempt: u32 = 0;
    let mut next = 0usize;
    loop {
        let url = &config.schedulers[next % config.schedulers.len().max(1)];
        next += 1;
        match session(&config, url, &inventory, &mut reports, &client_tx, &load).await {
            Ok(()) => attempt = 0,
            Err(e) => warn!(scheduler.url = %url, error = %e, attempt, "scheduler link down"),
        }
        client_tx.send_replace(None);
        let delay = backoff(
            attempt,
            config.backoff_min,
            config.backoff_max,
            &mut rand::rng(),
        );
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One connection: join, open the session, pump reports and heartbeats until
/// the session ends.
async fn session(
    config: &LinkConfig,
    url: &str,
    inventory: &Arc<dyn Inventory>,
    reports: &mut mpsc::Receiver<Report>,
    client_tx: &watch::Sender<Option<SchedulerClient<Channel>>>,
    load: &Load,
) -> Result<(), tonic::Status> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| tonic::Status::invalid_argument(format!("bad scheduler URL {url}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let Some(dir) = &config.tls_dir else {
            return Err(tonic::Status::failed_precondition(
                "an https:// scheduler needs the node's TLS directory (--peer-tls-dir)",
            ));
        };
        endpoint = endpoint
            .tls_config(crate::tls::grpc_tls_for(url, client_tls(dir)?))
            .map_err(|e| tonic::Status::invalid_argument(format!("scheduler TLS: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e:?}")))?;
    let mut client = SchedulerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // Listing the store reads every task's metadata: off the async workers.
    let inv = inventory.clone();
    let tasks = tokio::task::spawn_blocking(move || inv.held())
        .await
        .map_err(|e| tonic::Status::internal(format!("listing the store: {e}")))?;
    let n = tasks.len();
    let mut pages = join_pages(tasks).into_iter();
    let first = pages.next().unwrap_or_default();
    let joined = client
        .join(v1::JoinRequest {
            peer: Some(config.peer.clone()),
            tasks: first,
        })
        .await?
        .into_inner();
    for page in pages {
        client
            .join(v1::JoinRequest {
                peer: Some(config.peer.clone()),
                tasks: page,
            })
            .await?;
    }
    let heartbeat = Duration::from_millis(joined.heartbeat_interval_ms.clamp(100, 60_000));

    let (out, out_rx) = mpsc::channel::<v1::PeerEvent>(64);
    let open = Event::Open(v1::SessionOpen {
        peer_id: config.peer.peer_id.clone(),
    });
    out.send(ev(open)).await.expect("receiver alive");
    let mut inbound = client
        .session(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    // Reports queued before this session belong to the old one.
    while reports.try_recv().is_ok() {}
    client_tx.send_replace(Some(client));
    info!(scheduler.url = %url, tasks = n, "joined scheduler");

    let mut ticker = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let hb = v1::Heartbeat {
                    active_uploads: load.active_uploads.load(Ordering::Relaxed),
                    active_downloads: load.active_downloads.load(Ordering::Relaxed),
                };
                if out.send(ev(Event::Heartbeat(hb))).await.is_err() {
                    return Err(tonic::Status::unavailable("session closed"));
                }
            }
            Some(first) = reports.recv() => {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match reports.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                for e in merge(batch) {
                    if out.send(e).await.is_err() {
                        return Err(tonic::Status::unavailable("session closed"));
                    }
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(cmd)) => {
                    if let Some(e) = command(inventory, cmd).await
                        && out.send(ev(e)).await.is_err()
                    {
                        return Err(tonic::Status::unavailable("session closed"));
                    }
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(s),
            },
        }
    }
}

/// The client side of mutual TLS with the scheduler, from `dir` (read now, so a
/// rotated certificate is used from the next connection on).
fn client_tls(dir: &Path) -> Result<ClientTlsConfig, tonic::Status> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            tonic::Status::failed_precondition(format!("reading {}: {e}", path.display()))
        })
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")?))
        .identity(Identity::from_pem(read("tls.crt")?, read("tls.key")?)))
}

/// Splits an inventory into Join pages of at most [`JOIN_PAGE`] tasks and
/// `JOIN_PAGE_BYTES` (half the message limit) encoded bytes (a task larger
/// than that alone is sent alone; the scheduler refuses it if it exceeds the
/// message limit). Always at least one page, possibly empty.
pub fn join_pages(tasks: Vec<v1::HeldTask>) -> Vec<Vec<v1::HeldTask>> {
    let mut pages = vec![Vec::new()];
    let mut bytes = 0;
    for t in tasks {
        let len = t.encoded_len();
        let page = pages.last_mut().expect("never empty");
        if !page.is_empty() && (page.len() >= JOIN_PAGE || bytes + len > JOIN_PAGE_BYTES) {
            pages.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        pages.last_mut().expect("never empty").push(t);
    }
    pages
}

/// Carries out a scheduler command; returns the event that answers it.
async fn command(inventory: &Arc<dyn Inventory>, cmd: v1::SchedulerCommand) -> Option<Event> {
    use v1::scheduler_command::Command;
    match cmd.command {
        Some(Command::Drop(d)) => {
            let Ok(digest) = d.digest.parse::<Digest>() else {
                warn!(task.digest = %d.digest, "drop command with a bad digest ignored");
                return None;
            };
            let inv = inventory.clone();
            let dropped = tokio::task::spawn_blocking(move || inv.drop_task(&digest))
                .await
                .unwrap_or(false);
            if dropped {
                info!(task.digest = %digest, "task dropped on the scheduler's order");
                Some(Event::Evicted(v1::TaskEvicted {
                    digest: digest.to_string(),
                }))
            } else {
                info!(task.digest = %digest, "drop ordered for a task not held or in use; kept");
                None
            }
        }
        other => {
            debug!(command = ?other, "scheduler command not acted on");
            None
        }
    }
}

fn ev(e: Event) -> v1::PeerEvent {
    v1::PeerEvent { event: Some(e) }
}

/// Turns a batch of reports into session messages, merging consecutive piece
/// reports of one task into one message (order between tasks is kept).
pub fn merge(batch: Vec<Report>) -> Vec<v1::PeerEvent> {
    let mut out: Vec<v1::PeerEvent> = Vec::new();
    for r in batch {
        let e = match r {
            Report::Pieces { digest, pieces } => {
                let d = digest.to_string();
                let done = pieces.into_iter().map(|(index, hash)| v1::PieceDone {
                    index,
                    hash: hash.map(|h| h.to_vec()).unwrap_or_default(),
                });
                if let Some(v1::PeerEvent {
                    event: Some(Event::Pieces(last)),
                }) = out.last_mut()
                    && last.digest == d
                {
                    last.pieces.extend(done);
                    continue;
                }
                Event::Pieces(v1::PieceReport {
                    digest: d,
                    pieces: done.collect(),
                })
            }
            Report::Started { digest, size } => Event::Started(v1::TaskStarted {
                digest: digest.to_string(),
                size,
            }),
            Report::Complete(d) => Event::Complete(v1::TaskComplete {
                digest: d.to_string(),
            }),
            Report::Evicted(d) => Event::Evicted(v1::TaskEvicted {
                digest: d.to_string(),
            }),
            Report::DigestMismatch(d) => Event::DigestMismatch(v1::DigestMismatch {
                digest: d.to_string(),
            }),
            Report::BadParent {
                digest,
                parent,
                index,
                reason,
            } => Event::BadParent(v1::BadParent {
                digest: digest.to_string(),
                parent_id: parent,
                piece_index: index,
                reason,
            }),
        };
        out.push(ev(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max, &mut rng);
            let ceiling = min.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(40, min, max, &mut rng) >= max / 2);
    }

    #[test]
    fn join_pages_bound_count_and_bytes() {
        let task = |i: u32, pieces: usize| v1::HeldTask {
            digest: Digest::from_sha256([i as u8; 32]).to_string(),
            size: 1 << 20,
            piece_hashes: vec![vec![7; 32]; pieces],
        };
        assert_eq!(join_pages(Vec::new()), vec![Vec::<v1::HeldTask>::new()]);
        let pages = join_pages((0..1200).map(|i| task(i, 1)).collect());
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [JOIN_PAGE, JOIN_PAGE, 1200 - 2 * JOIN_PAGE]
        );
        // Big tasks: pages end by size, every page fits the message limit.
        let pages = join_pages((0..40).map(|i| task(i, 8192)).collect());
        assert!(pages.len() > 1);
        assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 40);
        for p in &pages {
            let req = v1::JoinRequest {
                peer: None,
                tasks: p.clone(),
            };
            assert!(req.encoded_len() <= MAX_MESSAGE, "{}", req.encoded_len());
        }
    }

    #[test]
    fn merges_consecutive_piece_reports_of_one_task() {
        let a = Digest::from_sha256([1; 32]);
        let b = Digest::from_sha256([2; 32]);
        let batch = vec![
            Report::Pieces {
                digest: a,
                pieces: vec![(0, Some([9; 32]))],
            },
            Report::Pieces {
                digest: a,
                pieces: vec![(1, None)],
            },
            Report::Pieces {
                digest: b,
                pieces: vec![(0, None)],
            },
            Report::Complete(b),
            Report::Pieces {
                digest: a,
                pieces: vec![(2, None)],
            },
        ];
        let out = merge(batch);
        assert_eq!(out.len(), 4);
        let Some(Event::Pieces(p)) = &out[0].event else {
            panic!()
        };
        assert_eq!(p.pieces.len(), 2);
        assert_eq!(p.pieces[0].hash, vec![9; 32]);
        assert!(p.pieces[1].hash.is_empty());
        assert!(matches!(&out[3].event, Some(Event::Pieces(p)) if p.pieces[0].index == 2));
    }
}
