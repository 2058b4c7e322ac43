//! One session with one scheduler replica: connect (mutual TLS, the replica's
//! name verified), join, open the session stream, then pump reports, heartbeats
//! and commands until it ends. While it is open the replica is live
//! ([`super::Live`]): the handle routes reports and plans of the tasks it owns
//! to it.
//!
//! Not here: which replicas to talk to (`super::membership`), what moves when
//! one comes or goes (`super::supervisor`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use shoal_proto::Digest;
use shoal_proto::limits::MAX_MESSAGE;
use shoal_proto::v1::{self, peer_event::Event, scheduler_client::SchedulerClient};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use super::membership::Replica;
use super::shard::{self, Epochs};
use super::wire::{ev, join_pages, merge, same_piece_rule};
use super::{Conn, Inventory, LinkConfig, Live, Load};

/// Reports queued per session at most; past that new reports are dropped (and
/// re-sent by the engine on its next plan).
const QUEUE: usize = 4096;
/// Reports merged into one session message at most.
const BATCH: usize = 256;

/// Source of session epochs: never reused within the process.
static EPOCH: AtomicU64 = AtomicU64::new(1);

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
/// What a session shares with the rest of the link.
struct Link<'a> {
    config: &'a LinkConfig,
    inventory: &'a Arc<dyn Inventory>,
    live: &'a watch::Sender<Live>,
    /// The replica set (the link's membership), live or not.
    members: &'a watch::Receiver<Vec<Replica>>,
    load: &'a Load,
}

/// Keeps a session with `replica` until the task is dropped: reconnects with
/// backoff, and takes the replica out of `live` whenever its session ends.
pub(super) async fn keep(
    config: Arc<LinkConfig>,
    replica: Replica,
    inventory: Arc<dyn Inventory>,
    live: watch::Sender<Live>,
    members: watch::Receiver<Vec<Replica>>,
    load: Arc<Load>,
) {
    let mut attempt: u32 = 0;
    loop {
        let mut opened = false;
        let link = Link {
            config: &config,
            inventory: &inventory,
            live: &live,
            members: &members,
            load: &load,
        };
        match session(link, &replica, &mut opened).await {
            Ok(()) => info!(scheduler.replica = %replica.key, "scheduler session ended"),
            Err(e) => {
                warn!(scheduler.replica = %replica.key, error = %e, attempt, "scheduler link down")
            }
        }
        live.send_if_modified(|l| l.remove(&replica.key).is_some());
        if opened {
            attempt = 0;
        }
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
/// the session ends. `opened` turns true once the replica is live.
async fn session(
    link: Link<'_>,
    replica: &Replica,
    opened: &mut bool,
) -> Result<(), tonic::Status> {
    let Link {
        config,
        inventory,
        live,
        members,
        load,
    } = link;
    let url = &replica.url;
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
        // An IP-literal URL needs its address as the server name; a replica found
        // in DNS is verified for the Service's name instead.
        let mut tls = crate::tls::grpc_tls_for(url, client_tls(dir)?);
        if let Some(name) = &replica.tls_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| tonic::Status::invalid_argument(format!("scheduler TLS: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e:?}")))?;
    let mut client = SchedulerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // The Join carries the tasks this replica owns among the replicas of the
    // set (live or not yet: at a peer's start they all connect at once); what
    // that leaves out, or moves to it later, the supervisor announces.
    let epoch = EPOCH.fetch_add(1, Ordering::Relaxed);
    let mut joined_with: Epochs = live
        .borrow()
        .iter()
        .map(|(k, c)| (k.clone(), c.epoch))
        .collect();
    for r in members.borrow().iter() {
        joined_with.entry(r.key.clone()).or_insert(0);
    }
    joined_with.insert(replica.key.clone(), epoch);
    // Listing the store reads every task's metadata: off the async workers.
    let inv = inventory.clone();
    let tasks = tokio::task::spawn_blocking(move || inv.held())
        .await
        .map_err(|e| tonic::Status::internal(format!("listing the store: {e}")))?;
    let tasks: Vec<v1::HeldTask> = tasks
        .into_iter()
        .filter(|t| {
            t.digest
                .parse::<Digest>()
                .is_ok_and(|d| shard::owner(&joined_with, &d) == Some(replica.key.as_str()))
        })
        .collect();
    let n = tasks.len();
    let carried: std::collections::HashSet<Digest> =
        tasks.iter().filter_map(|t| t.digest.parse().ok()).collect();
    let mut pages = join_pages(tasks).into_iter();
    let first = pages.next().unwrap_or_default();
    let joined = client
        .join(v1::JoinRequest {
            peer: Some(config.peer.clone()),
            tasks: first,
        })
        .await?
        .into_inner();
    same_piece_rule(joined.piece_rule)?;
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
    let (reports_tx, mut reports) = mpsc::channel(QUEUE);
    live.send_modify(|l| {
        l.insert(
            replica.key.clone(),
            Conn {
                client,
                reports: reports_tx,
                epoch,
                carried: Arc::new(carried),
            },
        );
    });
    *opened = true;
    info!(scheduler.replica = %replica.key, scheduler.url = %url, tasks = n, "joined scheduler");

    // Preheat progress of the jobs this replica ordered: what is known now
    // first (a report lost with an earlier session), then as it comes.
    let mut progress = config.preheat.as_ref().map(|p| p.0.subscribe());
    if let Some(p) = &config.preheat {
        for latest in p.0.latest(&replica.key) {
            if out.send(ev(Event::PreheatProgress(latest))).await.is_err() {
                return Err(tonic::Status::unavailable("session closed"));
            }
        }
    }
    let mut ticker = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            note = next_progress(&mut progress, config, &replica.key) => {
                for p in note {
                    if out.send(ev(Event::PreheatProgress(p))).await.is_err() {
                        return Err(tonic::Status::unavailable("session closed"));
                    }
                }
            }
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
                    use v1::scheduler_command::Command;
                    if let Some(c @ (Command::PreheatImage(_) | Command::CancelPreheat(_))) = cmd.command {
                        match &config.preheat {
                            Some(p) => p.0.command(&replica.key, c),
                            None => debug!("preheat order ignored: this peer does not preheat"),
                        }
                        continue;
                    }
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

/// The next preheat progress for `replica` (several after a lag: the latest of
/// every job it ordered); pending forever without a preheater.
async fn next_progress(
    rx: &mut Option<tokio::sync::broadcast::Receiver<(String, v1::PreheatProgress)>>,
    config: &LinkConfig,
    replica: &str,
) -> Vec<v1::PreheatProgress> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    loop {
        match r.recv().await {
            Ok((key, p)) if key == replica => return vec![p],
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                return config
                    .preheat
                    .as_ref()
                    .map(|p| p.0.latest(replica))
                    .unwrap_or_default();
            }
            Err(RecvError::Closed) => return std::future::pending().await,
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
}
