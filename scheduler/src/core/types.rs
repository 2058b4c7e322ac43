//! The core's vocabulary: peer ids, what a peer says about itself, plan
//! updates and the effects the core asks its adapter to carry out.
//!
//! These are plain data; the gRPC adapter converts them to and from the wire.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use shoal_proto::{Digest, PieceSet, TaskShape};

/// A peer's stable id (1–128 characters of `[A-Za-z0-9._-]`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Arc<str>);

impl PeerId {
    /// Longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// Checks the id's grammar.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err("peer id must be 1 to 128 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("peer id may only contain A-Z, a-z, 0-9, '.', '_' and '-'");
        }
        Ok(PeerId(s.into()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What a peer says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Stable id.
    pub id: PeerId,
    /// Node hostname, for operators.
    pub hostname: String,
    /// Where other peers reach its QUIC piece server.
    pub addr: SocketAddr,
    /// Topology zone ("" when unknown).
    pub zone: String,
    /// Topology rack ("" when unknown).
    pub rack: String,
    /// Pieces it uploads at once (0: the scheduler's default).
    pub upload_slots: u32,
    /// Its link rate in Mbit/s (0: unknown). Back-to-source elections prefer
    /// the fastest downloader (see [`CoreConfig::faster_source_wait`](super::CoreConfig::faster_source_wait)).
    pub link_mbps: u32,
}

/// A task a joining peer holds complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTask {
    /// The task.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Every piece's SHA-256, or empty when the peer does not send them.
    pub piece_hashes: Vec<[u8; 32]>,
}

/// A piece a peer has verified and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceDone {
    /// Piece index.
    pub index: u32,
    /// Its SHA-256 when the peer fetched it from upstream.
    pub hash: Option<[u8; 32]>,
}

/// Load a peer reports with each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Piece uploads in flight.
    pub active_uploads: u32,
    /// Downloads in flight.
    pub active_downloads: u32,
}

/// Names one plan stream (one download of one task by one peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanId(pub u64);

/// A parent as a plan presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentOffer {
    /// The parent.
    pub id: PeerId,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its zone.
    pub zone: String,
    /// True when it holds the whole task.
    pub complete: bool,
    /// The pieces it held when the plan was made.
    pub pieces: PieceSet,
}

/// One message on a plan stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanUpdate {
    /// The task's shape, once known.
    pub shape: Option<TaskShape>,
    /// Piece hashes this stream has not carried yet.
    pub piece_hashes: Vec<(u32, [u8; 32])>,
    /// Parents, best first; replaces the previous set.
    pub parents: Vec<ParentOffer>,
    /// Fetch from upstream (and report hashes) when true.
    pub back_to_source: bool,
    /// With `back_to_source`: the first piece to fetch from upstream (a faster
    /// peer taking over from a slower source; the pieces before it are held by
    /// peers). 0: from the first piece the peer lacks.
    pub upstream_from_piece: u32,
    /// This peer was the back-to-source peer and a faster one took over: stop
    /// the upstream download (sent once, with `back_to_source` false).
    pub hand_over: bool,
    /// Why the plan looks as it does.
    pub reason: &'static str,
}

/// A command for a peer's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Drop this task from the store.
    Drop(Digest),
    /// Preheat an image (a job of [`crate::preheat`]; sent by the adapter,
    /// never by the core).
    Preheat(Box<crate::preheat::PreheatOrder>),
    /// Stop the preheat job of this id.
    CancelPreheat(String),
}

/// What the core asks its adapter to do. Drained with
/// [`Scheduler::drain_effects`](super::Scheduler::drain_effects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this update on a plan stream.
    Plan {
        /// The stream.
        plan: PlanId,
        /// Its peer.
        peer: PeerId,
        /// Its task.
        digest: Digest,
        /// The update.
        update: PlanUpdate,
    },
    /// End a plan stream (its peer left, or opened a newer one).
    ClosePlan {
        /// The stream.
        plan: PlanId,
        /// Why, for the peer's log.
        reason: &'static str,
    },
    /// Send a command on a peer's session.
    Command {
        /// The peer.
        peer: PeerId,
        /// The command.
        command: Command,
    },
}

/// Part of an accepted report the core did not believe. The report is not an
/// error (the session goes on); the adapter counts each as a refusal, under
/// [`Ignored::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Piece hashes from a peer not elected to fetch the task from upstream.
    HashesNotElected,
    /// A bad-parent report naming a parent the reporter was never offered
    /// for that task.
    BadParentNotOffered,
    /// A bad-parent report from a peer that already reported more than
    /// `max_bad_parents_reported` distinct parents (it is suspected itself).
    BadParentReporterSuspected,
    /// A digest-mismatch report for a task whose hashes are confirmed.
    MismatchAfterConfirmed,
    /// A report on a task from a peer whose piece hashes for it were disproved
    /// (a digest mismatch): it may still download the task from the swarm, but
    /// what it says of the task is not believed.
    ReporterBadForTask,
}

impl Ignored {
    /// The reason label, e.g. `hashes_not_elected`.
    pub fn reason(self) -> &'static str {
        match self {
            Ignored::HashesNotElected => "hashes_not_elected",
            Ignored::BadParentNotOffered => "bad_parent_not_offered",
            Ignored::BadParentReporterSuspected => "bad_parent_reporter_suspected",
            Ignored::MismatchAfterConfirmed => "mismatch_after_confirmed",
            Ignored::ReporterBadForTask => "reporter_bad_for_task",
        }
    }
}
