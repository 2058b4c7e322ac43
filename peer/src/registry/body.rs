//! [`idle_limited`]: an upstream response body as a stream of chunks that fails when
//! no byte arrives for the registry's idle timeout, so a connection a NAT or a load
//! balancer dropped without a word costs seconds, not a download hung for good.
//!
//! Not here: what the caller does about it (the engine resumes with `Range` from its
//! first missing piece; the mirror's manifest relay ends the response).

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use super::endpoint::chain;

/// Why a body stream ended early.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    /// No byte for this long: the connection is taken as dead and dropped.
    #[error("no body byte from upstream for {0:?} (idle timeout)")]
    Idle(Duration),
    /// The connection failed or the body was cut.
    #[error("reading the upstream body: {0}")]
    Read(String),
}

/// The chunks of `response`'s body; an error (at most one) ends the stream, and the
/// connection is dropped with it.
pub fn idle_limited(
    response: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    futures::stream::unfold(Some(response), move |response| async move {
        let mut response = response?;
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(response))),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some((Err(BodyError::Read(chain(&e))), None)),
            Err(_) => Some((Err(BodyError::Idle(idle)), None)),
        }
    })
}
