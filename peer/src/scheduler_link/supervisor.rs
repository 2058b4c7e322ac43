//! Sessions follow the replica set, and moved tasks follow their owner.
//!
//! Two loops: one starts a session for each replica that enters the set and ends
//! the session of one that leaves it; the other watches the live set and, after
//! each change, announces this peer's complete tasks to the replicas that became
//! their owner ([`super::shard::moves`]) in Join pages. Nothing is taken back from
//! a replica that loses a task: its entry is soft state, never used while peers
//! agree on the owner, and gone when the replica restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_proto::Digest;
use shoal_proto::v1;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::membership::{self, HostsFileResolver, Replica, Resolve, Source, SystemResolver};
use super::shard::{self, Epochs};
use super::wire::join_pages;
use super::{Inventory, LinkConfig, LinkStats, Live, Load, session};

/// How long the live set must stay still before moves are computed: sessions
/// that open together (a peer's start) are announced to once.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs the link until dropped.
pub(super) async fn run(
    config: LinkConfig,
    inventory: Arc<dyn Inventory>,
    live: watch::Sender<Live>,
    load: Arc<Load>,
    stats: Arc<LinkStats>,
) {
    if config.schedulers.is_empty() {
        info!("no scheduler configured: every download goes to upstream");
        return std::future::pending().await;
    }
    let mut sources = Vec::new();
    for s in &config.schedulers {
        match Source::parse(s) {
            Ok(s) => sources.push(s),
            // The daemon validates its flags; a library caller may not have.
            Err(e) => warn!(error = %e, "scheduler entry ignored"),
        }
    }
    let resolver: Arc<dyn Resolve> = match &config.hosts_file {
        Some(f) => Arc::new(HostsFileResolver(f.clone())),
        None => Arc::new(SystemResolver),
    };
    let replicas = membership::watch_replicas(sources, resolver, config.resolve_interval);
    let config = Arc::new(config);
    let movers = tokio::spawn(announce_moves(
        config.clone(),
        inventory.clone(),
        live.subscribe(),
        stats,
    ));
    let _abort_movers = AbortOnDrop(movers);
    follow(config, inventory, replicas, live, load).await;
}

/// Aborts a task when dropped (the link's tasks end with the link).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one session task per replica of the set.
async fn follow(
    config: Arc<LinkConfig>,
    inventory: Arc<dyn Inventory>,
    mut replicas: watch::Receiver<Vec<Replica>>,
    live: watch::Sender<Live>,
    load: Arc<Load>,
) {
    let mut sessions: BTreeMap<String, AbortOnDrop> = BTreeMap::new();
    loop {
        let set = replicas.borrow_and_update().clone();
        let gone: Vec<String> = sessions
            .keys()
            .filter(|k| !set.iter().any(|r| &r.key == *k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut task) = sessions.remove(&key) {
                task.0.abort();
                let _ = (&mut task.0).await;
            }
            live.send_if_modified(|l| l.remove(&key).is_some());
            info!(scheduler.replica = %key, "scheduler replica left the set");
        }
        for r in set {
            if sessions.contains_key(&r.key) {
                continue;
            }
            debug!(scheduler.replica = %r.key, scheduler.url = %r.url, "scheduler replica joined the set");
            let key = r.key.clone();
            let task = tokio::spawn(session::keep(
                config.clone(),
                r,
                inventory.clone(),
                live.clone(),
                replicas.clone(),
                load.clone(),
            ));
            sessions.insert(key, AbortOnDrop(task));
        }
        if replicas.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// After each change of the live set, announces the complete tasks whose owner
/// changed (or restarted) to that owner.
async fn announce_moves(
    config: Arc<LinkConfig>,
    inventory: Arc<dyn Inventory>,
    mut live: watch::Receiver<Live>,
    stats: Arc<LinkStats>,
) {
    let mut seen = Epochs::new();
    loop {
        if live.changed().await.is_err() {
            return;
        }
        // Let a burst of changes settle.
        loop {
            tokio::time::sleep(SETTLE).await;
            if !live.has_changed().unwrap_or(false) {
                break;
            }
            live.borrow_and_update();
        }
        let now: Epochs = live
            .borrow_and_update()
            .iter()
            .map(|(k, c)| (k.clone(), c.epoch))
            .collect();
        if now == seen || now.is_empty() {
            seen = now;
            continue;
        }
        // Listing the store reads every task's metadata: off the async workers.
        let inv = inventory.clone();
        let held = match tokio::task::spawn_blocking(move || inv.held()).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "listing the store for moved tasks failed");
                continue;
            }
        };
        let (digests, held): (Vec<Digest>, Vec<v1::HeldTask>) = held
            .into_iter()
            .filter_map(|t| Some((t.digest.parse::<Digest>().ok()?, t)))
            .unzip();
        let carried: BTreeMap<String, Arc<std::collections::HashSet<Digest>>> = live
            .borrow()
            .iter()
            .map(|(k, c)| (k.clone(), c.carried.clone()))
            .collect();
        let moves = shard::moves(&seen, &now, &digests, |k, d| {
            carried.get(k).is_some_and(|c| c.contains(d))
        });
        seen = now;
        let mut held: Vec<Option<v1::HeldTask>> = held.into_iter().map(Some).collect();
        for (key, idx) in moves {
            let tasks: Vec<v1::HeldTask> = idx.iter().filter_map(|&i| held[i].take()).collect();
            let Some(conn) = live.borrow().get(&key).cloned() else {
                continue;
            };
            let mut client = conn.client;
            let n = tasks.len();
            stats.tasks_moved.fetch_add(n as u64, Ordering::Relaxed);
            for page in join_pages(tasks) {
                let request = v1::JoinRequest {
                    peer: Some(config.peer.clone()),
                    tasks: page,
                };
                if let Err(s) = client.join(request).await {
                    warn!(scheduler.replica = %key, error = %s.message(), "announcing moved tasks failed");
                    break;
                }
            }
            info!(scheduler.replica = %key, tasks = n, "announced tasks to their owner");
        }
    }
}
