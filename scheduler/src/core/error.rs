//! [`CoreError`]: why the scheduler core refused an input.
//!
//! Every refusal leaves the state as it was. The kind tells the adapter which
//! gRPC status to answer with.

/// Which class of refusal (maps to a gRPC code in the adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or out of range.
    InvalidArgument,
    /// The peer or task is unknown.
    NotFound,
    /// The input is well-formed but does not fit the current state.
    FailedPrecondition,
    /// Another live peer already uses this id.
    AlreadyExists,
    /// The peer may not do this (e.g. report a hash without being a source).
    PermissionDenied,
    /// A limit would be exceeded (tasks in total or per peer).
    ResourceExhausted,
}

/// A refused input, with a message that says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CoreError {
    /// The class of refusal.
    pub kind: ErrorKind,
    /// What was wrong, for the caller.
    pub message: String,
}

impl CoreError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub(crate) fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub(crate) fn exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }
}
