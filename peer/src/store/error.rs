//! [`StoreError`]: everything the piece store can fail with.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_proto::digest::Digest;
use shoal_proto::piece::PieceError;

/// Why a piece store operation failed.
///
/// [`StoreError::is_local_fault`] tells the caller whether the fault is the
/// store's own (disk full, I/O, metadata database): the download engine then
/// keeps serving the request from memory or upstream instead of failing it.
///
/// Cheap to clone (the underlying errors are shared), so that one failure can be handed
/// to every reader of a shared download.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed (disk full, permissions, I/O error).
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        /// What the store was doing ("write piece to", "open", …).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The metadata database failed.
    #[error("metadata database {} failed: {source}", path.display())]
    Database {
        /// The database directory.
        path: PathBuf,
        /// The underlying error (kept opaque so database types stay private).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A stored record or file could not be understood.
    #[error("corrupt store data at {}: {detail}", path.display())]
    Corrupt {
        /// The file or database holding the bad data.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The configuration is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The task has no record (never opened, removed or evicted).
    #[error("task {0} is not in the store")]
    UnknownTask(Digest),
    /// `open` was called with a size other than the stored one.
    #[error("task {digest} is stored with size {stored} bytes, not {requested} bytes")]
    SizeMismatch {
        /// The task.
        digest: Digest,
        /// Size in the store.
        stored: u64,
        /// Size asked for.
        requested: u64,
    },
    /// The piece index is not a piece of the task.
    #[error(transparent)]
    Piece(#[from] PieceError),
    /// The bytes handed to `write_piece` are not the piece's length.
    #[error("piece {index} of task {digest} is {want} bytes long, got {got} bytes")]
    PieceLength {
        /// The task.
        digest: Digest,
        /// The piece.
        index: u32,
        /// Bytes handed in.
        got: usize,
        /// The piece's length.
        want: u32,
    },
    /// A different hash is already recorded for the piece.
    #[error("piece {index} of task {digest} already has a different hash")]
    HashConflict {
        /// The task.
        digest: Digest,
        /// The piece.
        index: u32,
    },
    /// `mark_complete` was called before every piece was stored.
    #[error("task {digest} has {present} of {count} pieces stored; it cannot be complete")]
    Incomplete {
        /// The task.
        digest: Digest,
        /// Pieces stored.
        present: u32,
        /// Pieces the task has.
        count: u32,
    },
    /// A stored piece no longer matches its hash (or its hash is unknown): it was
    /// damaged at rest. The store dropped it (the task is no longer complete); it
    /// has to be fetched again.
    #[error("piece {index} of task {digest} does not match its hash; dropped from the store")]
    PieceDamaged {
        /// The task.
        digest: Digest,
        /// The piece.
        index: u32,
    },
    /// The media type is too long or not printable ASCII.
    #[error("invalid media type for task {0}: at most 255 printable ASCII characters")]
    InvalidMediaType(Digest),
    /// The peer id file holds something that is not a valid peer id.
    #[error("invalid peer id in {}: must match [A-Za-z0-9._-]{{1,128}}", path.display())]
    InvalidPeerId {
        /// The peer id file.
        path: PathBuf,
    },
}

impl StoreError {
    /// True when the failure is the store's own (disk, file system, database)
    /// rather than a caller's mistake: the caller should carry on without the
    /// store (stream from memory or upstream) rather than fail the request.
    pub fn is_local_fault(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. } | StoreError::Database { .. } | StoreError::Corrupt { .. }
        )
    }

    /// The path an I/O or database error is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Database { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::InvalidPeerId { path } => Some(path),
            _ => None,
        }
    }
}
