//! The glue between a peer's [`DownloadCore`](shoal_peer::engine::DownloadCore) and the scheduler core, as the peer's
//! scheduler link and the scheduler's gRPC service do it, without the wire: plan
//! updates converted to the peer's form, reports applied to the scheduler.

use std::net::SocketAddr;
use std::time::Instant;

use shoal_peer::engine::{ParentRef, PlanParent, PlanUpdate};
use shoal_peer::scheduler_link::Report;
use shoal_scheduler::core::{
    self as sched, CoreError, ErrorKind, PeerId, PeerInfo, PieceDone, Scheduler,
};

/// The peer info a simulated node joins with (default upload slots), declaring
/// `link_mbps`.
pub fn peer_info(id: &PeerId, n: usize, addr: SocketAddr, link_mbps: u32) -> PeerInfo {
    PeerInfo {
        id: id.clone(),
        hostname: format!("node-{n}"),
        addr,
        zone: String::new(),
        rack: String::new(),
        upload_slots: 0,
        link_mbps,
    }
}

/// A distinct address for node `n` (IPv4, 10.x.y.z).
pub fn node_addr(n: usize) -> SocketAddr {
    let n = n as u32 + 1;
    SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7651))
}

/// The scheduler's plan update, as the peer's link converts it.
pub fn convert(update: sched::PlanUpdate) -> PlanUpdate {
    PlanUpdate {
        shape: update.shape,
        hashes: update.piece_hashes,
        parents: update
            .parents
            .into_iter()
            .map(|o| PlanParent {
                r: ParentRef {
                    id: o.id.as_str().to_string(),
                    addr: o.addr,
                },
                pieces: (!o.complete).then_some(o.pieces),
            })
            .collect(),
        back_to_source: update.back_to_source,
        upstream_from_piece: update.upstream_from_piece,
        hand_over: update.hand_over,
    }
}

/// What applying a report did, beyond the scheduler's answer.
#[derive(Debug, Default)]
pub struct Applied {
    /// Part of a piece report the scheduler ignored (`report_pieces`' answer).
    pub ignored: Option<String>,
    /// A bad-parent report: the parent named.
    pub bad_parent: Option<PeerId>,
}

/// Applies `r`, sent by `id`, to the scheduler as its gRPC service would.
pub fn apply_report(
    sched: &mut Scheduler,
    now: Instant,
    id: &PeerId,
    r: Report,
) -> Result<Applied, CoreError> {
    let mut applied = Applied::default();
    match r {
        Report::Started { digest, size } => sched.task_started(now, id, digest, size)?,
        Report::Pieces { digest, pieces } => {
            let done: Vec<PieceDone> = pieces
                .into_iter()
                .map(|(index, hash)| PieceDone { index, hash })
                .collect();
            applied.ignored = sched
                .report_pieces(now, id, digest, &done)?
                .map(|i| format!("{i:?}"));
        }
        Report::Complete(digest) => {
            applied.ignored = sched
                .task_complete(now, id, digest)?
                .map(|i| format!("{i:?}"));
        }
        Report::BadParent { digest, parent, .. } => {
            let parent = PeerId::parse(&parent).map_err(|e| CoreError {
                kind: ErrorKind::InvalidArgument,
                message: e.to_string(),
            })?;
            applied.ignored = sched
                .bad_parent(now, id, digest, &parent)?
                .map(|i| format!("{i:?}"));
            applied.bad_parent = Some(parent);
        }
        Report::Evicted(digest) => sched.task_evicted(now, id, digest)?,
        Report::DigestMismatch(digest) => {
            sched.digest_mismatch(now, id, digest)?;
        }
    }
    Ok(applied)
}
