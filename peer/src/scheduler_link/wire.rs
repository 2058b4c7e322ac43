//! Conversions between the link and the wire: plan updates checked into the
//! engine's [`PlanUpdate`], inventories paged into Joins, report batches merged
//! into session events. Pure functions over messages.

use prost::Message;
use shoal_proto::limits::{JOIN_PAGE, MAX_MESSAGE};
use shoal_proto::piece::PIECE_RULE;
use shoal_proto::v1::{self, peer_event::Event};
use shoal_proto::{PieceSet, TaskShape};

use super::Report;
use crate::engine::{ParentRef, PlanParent, PlanUpdate, PlannerError};

/// Encoded bytes of held tasks per Join page at most (well under
/// [`MAX_MESSAGE`]).
const JOIN_PAGE_BYTES: usize = MAX_MESSAGE / 2;

/// `Ok` when a scheduler's join answer names this peer's piece rule (absent is
/// rule 1); otherwise the error the session ends with, naming both rules.
pub fn same_piece_rule(answered: u32) -> Result<(), tonic::Status> {
    let theirs = shoal_proto::piece::rule_sent(answered);
    if theirs == PIECE_RULE {
        return Ok(());
    }
    Err(tonic::Status::failed_precondition(format!(
        "the scheduler cuts blobs by piece rule {theirs}, this peer by rule {PIECE_RULE}: \
         a piece index would mean different bytes; run one Shoal version on the scheduler and the peers"
    )))
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
    // Where to start from upstream is an index like a hash's: without a shape
    // it cannot be placed.
    let upstream_from_piece = match (u.upstream_from_piece, shape) {
        (0, _) => 0,
        (i, Some(s)) => {
            s.check_index(i)?;
            i
        }
        (i, None) => {
            return Err(PlannerError::Shape(format!(
                "upstream from piece {i} of a task of unknown size"
            )));
        }
    };
    Ok(PlanUpdate {
        shape,
        hashes,
        parents,
        back_to_source: u.back_to_source,
        upstream_from_piece,
        hand_over: u.hand_over,
    })
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
pub(super) fn ev(e: Event) -> v1::PeerEvent {
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
    use shoal_proto::Digest;

    #[test]
    fn a_scheduler_of_another_piece_rule_is_left() {
        assert!(same_piece_rule(PIECE_RULE).is_ok());
        // An older scheduler sends no rule: rule 1, 4 MiB pieces.
        let e = same_piece_rule(0).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("piece rule 1"), "{e:?}");
        assert!(same_piece_rule(PIECE_RULE + 1).is_err());
    }

    /// A plan's upstream start piece outside the task, or without a shape to
    /// place it in, refuses the whole update (a broken scheduler); 0 and an
    /// index in range pass, with the hand-over flag as sent.
    #[test]
    fn an_upstream_start_piece_must_lie_in_the_task() {
        let shape = shoal_proto::TaskShape::for_size(4 << 20).unwrap();
        let update = |task: bool, from: u32| v1::PlanUpdate {
            task: task.then(|| v1::TaskShape {
                size: shape.size(),
                piece_size: shape.piece_size(),
                piece_count: shape.piece_count(),
            }),
            back_to_source: true,
            upstream_from_piece: from,
            hand_over: true,
            ..v1::PlanUpdate::default()
        };
        let last = shape.piece_count() - 1;
        let ok = plan_update(update(true, last)).unwrap();
        assert_eq!((ok.upstream_from_piece, ok.hand_over), (last, true));
        assert_eq!(
            plan_update(update(false, 0)).unwrap().upstream_from_piece,
            0
        );
        assert!(matches!(
            plan_update(update(true, last + 1)),
            Err(PlannerError::Piece(_))
        ));
        assert!(matches!(
            plan_update(update(false, 1)),
            Err(PlannerError::Shape(_))
        ));
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
