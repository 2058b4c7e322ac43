//! `shoal-peer run`: the node daemon. Opens the piece store, serves pieces to
//! other peers over QUIC with mutual TLS, keeps the scheduler link, runs the
//! download engine behind the registry mirror containerd pulls through, collects
//! garbage by the cache watermarks, and serves health and metrics; stops cleanly
//! on SIGTERM or SIGINT.
//!
//! Layout: `config.rs` (flags and config file → validated [`Settings`]), `node.rs`
//! ([`Node::start`]: a node on bound [`Sockets`], the wiring), `health.rs` (`/metrics`,
//! `/healthz`, `/readyz`), `gc.rs` (the eviction loop), `tls_reload.rs` (renewed
//! certificates and rotated CAs for QUIC), `issuance.rs` (the node certificate from the
//! scheduler's issuer, `--identity token-review`, and its renewal), `content_scan.rs`
//! (adopting containerd's content store, `--containerd-content-dir`), this file (the store's views for the QUIC
//! server and the scheduler link, [`run`]).

pub mod config;
pub mod content_scan;
mod gc;
pub mod health;
pub mod issuance;
pub mod link_rate;
mod node;
pub mod scrub;
mod tls_reload;

use std::sync::Arc;

use bytes::Bytes;
use shoal_proto::{Digest, v1};

use crate::scheduler_link::Inventory;
use crate::store::PieceStore;
use crate::transfer::PieceSource;
pub use config::{Issuance, RunArgs, Settings, TlsSource};
pub use node::{Node, Sockets};

/// Serves the store's verified pieces to other peers (the QUIC server's
/// [`PieceSource`]).
pub struct StoreSource(pub Arc<dyn PieceStore>);

#[async_trait::async_trait]
impl PieceSource for StoreSource {
    async fn piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, std::io::Error> {
        let (store, digest) = (self.0.clone(), *digest);
        tokio::task::spawn_blocking(move || store.read_piece(&digest, index))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)
    }
}

/// Announces the store's complete tasks, with their piece hashes, at every
/// join (the scheduler link's [`Inventory`]).
pub struct StoreInventory(pub Arc<dyn PieceStore>);

impl Inventory for StoreInventory {
    fn held(&self) -> Vec<v1::HeldTask> {
        let tasks = match self.0.list() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the piece store; joining with no tasks");
                return Vec::new();
            }
        };
        tasks
            .into_iter()
            .filter(|t| t.complete)
            .map(|t| v1::HeldTask {
                digest: t.digest.to_string(),
                size: t.shape.size(),
                piece_hashes: t
                    .hashes
                    .iter()
                    .map(|h| h.map(|h| h.to_vec()).unwrap_or_default())
                    .collect(),
            })
            .filter(|t| t.piece_hashes.iter().all(|h| h.len() == 32))
            .collect()
    }

    fn held_task(&self, digest: &Digest) -> Option<v1::HeldTask> {
        let t = self.0.meta(digest).ok().flatten().filter(|t| t.complete)?;
        let piece_hashes = t
            .hashes
            .iter()
            .map(|h| h.map(|h| h.to_vec()))
            .collect::<Option<Vec<_>>>()?;
        Some(v1::HeldTask {
            digest: t.digest.to_string(),
            size: t.shape.size(),
            piece_hashes,
        })
    }

    fn drop_task(&self, digest: &Digest) -> bool {
        if self.0.is_pinned(digest) {
            return false;
        }
        match self.0.meta(digest) {
            Ok(Some(_)) => match self.0.remove(digest) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(task.digest = %digest, error = %e, "could not drop the task");
                    false
                }
            },
            _ => false,
        }
    }
}

/// Makes any panic, in any task, end the process after the default hook printed
/// it (as `panic = "abort"` does in release builds): the DaemonSet restarts it,
/// and containerd uses the next host meanwhile.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

/// Runs the daemon until `shutdown` resolves: binds the addresses in `settings`
/// ([`Sockets::bind`]), then [`Node::start`] and [`Node::wait`].
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sockets = Sockets::bind(&settings).await?;
    Node::start(sockets, settings, shutdown).await?.wait().await
}
