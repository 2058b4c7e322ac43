//! What the download engine tells the scheduler about a task: its size, pieces
//! stored, completion, eviction, a digest mismatch, a bad parent.

use shoal_proto::Digest;

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

impl Report {
    /// The task the report is about (it goes to that task's owner).
    pub fn digest(&self) -> &Digest {
        match self {
            Report::Started { digest, .. }
            | Report::Pieces { digest, .. }
            | Report::BadParent { digest, .. } => digest,
            Report::Complete(d) | Report::Evicted(d) | Report::DigestMismatch(d) => d,
        }
    }
}
