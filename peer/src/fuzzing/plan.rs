//! The scheduler's `PlanUpdate` as the peer reads it off the plan stream
//! ([`scheduler_link::plan_update`]): arbitrary bytes decoded as the protobuf message,
//! then converted for the download engine.

use prost::Message;
use shoal_proto::v1;

use crate::engine::PlanUpdate;
use crate::scheduler_link;

/// Decodes the input as a `v1::PlanUpdate` and converts it; a converted update:
/// - has hashes only with a shape, every index a piece of it, none of the message's
///   hashes dropped;
/// - has a start piece for upstream only with a shape, and in it;
/// - has a piece set only for a parent that is not complete, sized for the shape;
/// - has no more parents than the message;
/// - written back to the wire the way the scheduler writes it, converts to itself.
pub fn plan_update(data: &[u8]) {
    let Ok(wire) = v1::PlanUpdate::decode(data) else {
        return;
    };
    let hashes_sent = wire.piece_hashes.len();
    let parents_sent = wire.parents.len();
    let Ok(update) = scheduler_link::plan_update(wire) else {
        return;
    };
    match update.shape {
        Some(shape) => {
            assert_eq!(update.hashes.len(), hashes_sent, "a hash was dropped");
            for (index, _) in &update.hashes {
                assert!(shape.check_index(*index).is_ok(), "{update:?}");
            }
        }
        None => assert!(update.hashes.is_empty(), "{update:?}"),
    }
    if update.upstream_from_piece > 0 {
        let shape = update.shape.expect("a start piece needs a shape");
        assert!(shape.check_index(update.upstream_from_piece).is_ok());
    }
    assert!(update.parents.len() <= parents_sent);
    for p in &update.parents {
        if let Some(pieces) = &p.pieces {
            let shape = update.shape.expect("a piece set needs a shape");
            assert_eq!(pieces.len(), shape.piece_count());
        }
    }
    let again = scheduler_link::plan_update(to_wire(&update))
        .unwrap_or_else(|e| panic!("{update:?} written back is refused: {e}"));
    assert_eq!(again, update);
}

/// The message the scheduler sends for `u` (`scheduler/src/convert.rs`).
fn to_wire(u: &PlanUpdate) -> v1::PlanUpdate {
    v1::PlanUpdate {
        task: u.shape.map(|s| v1::TaskShape {
            size: s.size(),
            piece_size: s.piece_size(),
            piece_count: s.piece_count(),
        }),
        piece_hashes: u
            .hashes
            .iter()
            .map(|(index, h)| v1::PieceHash {
                index: *index,
                hash: h.to_vec(),
            })
            .collect(),
        parents: u
            .parents
            .iter()
            .map(|p| v1::Parent {
                peer_id: p.r.id.clone(),
                quic_addr: p.r.addr.to_string(),
                zone: String::new(),
                complete: p.pieces.is_none(),
                pieces: p.pieces.as_ref().map(|s| s.to_bytes()).unwrap_or_default(),
            })
            .collect(),
        back_to_source: u.back_to_source,
        reason: String::new(),
        upstream_from_piece: u.upstream_from_piece,
        hand_over: u.hand_over,
    }
}
