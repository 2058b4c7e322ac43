//! Conversions between the wire (`shoal_proto::v1`) and the core's types, and
//! from [`CoreError`] to [`tonic::Status`]. Every wire value is checked here;
//! the core sees only well-formed data.

use shoal_proto::piece::PIECE_RULE;
use shoal_proto::{Digest, v1};
use tonic::Status;

use crate::core::{self, CoreError, ErrorKind, PeerId, PieceDone, PlanUpdate};

/// Maps a core refusal to the gRPC status the caller sees.
pub(crate) fn status(e: CoreError) -> Status {
    let code = match e.kind {
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
    };
    Status::new(code, e.message)
}

pub(crate) fn peer_id(s: &str) -> Result<PeerId, Status> {
    PeerId::parse(s).map_err(|e| Status::invalid_argument(format!("invalid peer id {s:?}: {e}")))
}

pub(crate) fn digest(s: &str) -> Result<Digest, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("invalid digest {s:?}: {e}")))
}

fn hash(bytes: &[u8], what: impl std::fmt::Display) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "{what}: a piece hash is 32 bytes, got {}",
            bytes.len()
        ))
    })
}

pub(crate) fn peer_info(p: Option<v1::PeerInfo>) -> Result<core::PeerInfo, Status> {
    let p = p.ok_or_else(|| Status::invalid_argument("join request without peer info"))?;
    let rule = shoal_proto::piece::rule_sent(p.piece_rule);
    if rule != PIECE_RULE {
        return Err(Status::failed_precondition(format!(
            "peer {:?} cuts blobs by piece rule {rule}, this scheduler by rule {PIECE_RULE}: \
             a piece index would mean different bytes; run one Shoal version on the scheduler and the peers",
            p.peer_id
        )));
    }
    let addr = p.quic_addr.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "quic_addr {:?} is not an ip:port address",
            p.quic_addr
        ))
    })?;
    Ok(core::PeerInfo {
        id: peer_id(&p.peer_id)?,
        hostname: p.hostname,
        addr,
        zone: p.zone,
        rack: p.rack,
        upload_slots: p.upload_slots,
        link_mbps: p.link_mbps,
    })
}

pub(crate) fn held_tasks(tasks: Vec<v1::HeldTask>) -> Result<Vec<core::HeldTask>, Status> {
    tasks
        .into_iter()
        .map(|t| {
            let digest = digest(&t.digest)?;
            let piece_hashes = t
                .piece_hashes
                .iter()
                .enumerate()
                .map(|(i, h)| hash(h, format_args!("held task {digest} piece {i}")))
                .collect::<Result<_, _>>()?;
            Ok(core::HeldTask {
                digest,
                size: t.size,
                piece_hashes,
            })
        })
        .collect()
}

pub(crate) fn pieces(digest: &Digest, pieces: &[v1::PieceDone]) -> Result<Vec<PieceDone>, Status> {
    pieces
        .iter()
        .map(|p| {
            let hash = match p.hash.len() {
                0 => None,
                _ => Some(hash(
                    &p.hash,
                    format_args!("task {digest} piece {}", p.index),
                )?),
            };
            Ok(PieceDone {
                index: p.index,
                hash,
            })
        })
        .collect()
}

pub(crate) fn plan_update(u: PlanUpdate) -> v1::PlanUpdate {
    v1::PlanUpdate {
        task: u.shape.map(|s| v1::TaskShape {
            size: s.size(),
            piece_size: s.piece_size(),
            piece_count: s.piece_count(),
        }),
        piece_hashes: u
            .piece_hashes
            .into_iter()
            .map(|(index, h)| v1::PieceHash {
                index,
                hash: h.to_vec(),
            })
            .collect(),
        parents: u
            .parents
            .into_iter()
            .map(|p| v1::Parent {
                peer_id: p.id.to_string(),
                quic_addr: p.addr.to_string(),
                zone: p.zone,
                complete: p.complete,
                pieces: if p.complete {
                    Vec::new()
                } else {
                    p.pieces.to_bytes()
                },
            })
            .collect(),
        back_to_source: u.back_to_source,
        reason: u.reason.to_string(),
        upstream_from_piece: u.upstream_from_piece,
        hand_over: u.hand_over,
    }
}

pub(crate) fn command(c: core::Command) -> v1::SchedulerCommand {
    match c {
        core::Command::Drop(d) => v1::SchedulerCommand {
            command: Some(v1::scheduler_command::Command::Drop(v1::DropTask {
                digest: d.to_string(),
            })),
        },
        core::Command::Preheat(o) => {
            use crate::preheat::Credential;
            let credential = o.credential.map(|c| match c {
                Credential::Basic { username, password } => v1::PreheatCredential {
                    username,
                    password,
                    token: String::new(),
                },
                Credential::Token(token) => v1::PreheatCredential {
                    token,
                    ..Default::default()
                },
            });
            v1::SchedulerCommand {
                command: Some(v1::scheduler_command::Command::PreheatImage(
                    v1::PreheatImage {
                        job_id: o.job_id,
                        registry: o.image.registry,
                        repository: o.image.repository,
                        reference: o.image.reference,
                        platforms: o.platforms,
                        credential,
                    },
                )),
            }
        }
        core::Command::CancelPreheat(job_id) => v1::SchedulerCommand {
            command: Some(v1::scheduler_command::Command::CancelPreheat(
                v1::CancelPreheat { job_id },
            )),
        },
    }
}

/// A peer's preheat progress report, checked: `(job id, report)`.
pub(crate) fn preheat_report(
    p: v1::PreheatProgress,
) -> Result<(String, crate::preheat::Report), Status> {
    use crate::preheat::{PeerJobState, Report};
    if p.job_id.is_empty() || p.job_id.len() > 64 {
        return Err(Status::invalid_argument("preheat progress: bad job id"));
    }
    let state = match v1::PreheatState::try_from(p.state) {
        Ok(v1::PreheatState::Running) => PeerJobState::Running,
        Ok(v1::PreheatState::Succeeded) => PeerJobState::Succeeded,
        Ok(v1::PreheatState::Failed) => PeerJobState::Failed,
        Ok(v1::PreheatState::Cancelled) => PeerJobState::Cancelled,
        _ => return Err(Status::invalid_argument("preheat progress: bad state")),
    };
    let mut error: String = p.error.chars().take(512).collect();
    error.retain(|c| !c.is_control());
    Ok((
        p.job_id,
        Report {
            state,
            blobs_done: p.blobs_done.min(p.blobs_total),
            blobs_total: p.blobs_total,
            bytes_done: p.bytes_done.min(p.bytes_total),
            bytes_total: p.bytes_total,
            error: (!error.is_empty()).then_some(error),
        },
    ))
}
