//! What a plan says, in the engine's own terms: the task's shape, piece hashes,
//! the parents to fetch from, and whether this peer is back-to-source.
//!
//! The wire form (`v1::PlanUpdate`) is converted at the edge, in
//! `crate::scheduler_link`, and checked there: a shape whose piece size or count
//! disagrees with its size, an index out of range or a hash that is not 32 bytes
//! is a [`PlannerError`]. Nothing under `engine/` sees the wire types.

use std::net::SocketAddr;

use shoal_proto::{PieceError, PieceSet, TaskShape};

/// One message on a plan stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanUpdate {
    /// The task's shape, once the scheduler knows it.
    pub shape: Option<TaskShape>,
    /// Piece hashes this stream has not carried yet (index, SHA-256).
    pub hashes: Vec<(u32, [u8; 32])>,
    /// Parents, best first; replaces the previous set.
    pub parents: Vec<PlanParent>,
    /// Fetch from upstream (and report hashes) when true.
    pub back_to_source: bool,
    /// With `back_to_source`: the first piece to fetch from upstream; the pieces
    /// before it are fetched from parents (this peer took over from a slower
    /// source). 0: from the first piece this peer lacks.
    pub upstream_from_piece: u32,
    /// This peer was the back-to-source peer and a faster one took over: stop
    /// the upstream download, fetch the rest from parents.
    pub hand_over: bool,
}

/// A parent offered by the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanParent {
    /// Who it is and where to reach it.
    pub r: ParentRef,
    /// The pieces it holds; `None` when it holds every piece.
    pub pieces: Option<PieceSet>,
}

/// A parent as the planner knows it from the latest plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent's peer id.
    pub id: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

/// Why a plan update could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlannerError {
    /// The plan's task shape is invalid or differs from the one already known.
    #[error("plan has a bad task shape: {0}")]
    Shape(String),
    /// A piece index in the plan is out of range.
    #[error(transparent)]
    Piece(#[from] PieceError),
    /// A piece hash is not 32 bytes.
    #[error("piece {0} hash is not 32 bytes")]
    HashLength(u32),
}
