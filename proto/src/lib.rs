//! Shoal's wire definitions and the small vocabulary both sides share.
//!
//! Layout:
//! - [`v1`]: generated prost messages and the tonic `Scheduler` service
//!   (`proto/shoal/v1/scheduler.proto`) plus the QUIC piece headers
//!   (`proto/shoal/v1/piece.proto`) and the scheduler's `CertificateIssuer`
//!   (`proto/shoal/v1/issuer.proto`).
//! - [`digest`]: [`Digest`], the name of a task (`sha256:` + 64 lowercase hex).
//! - [`piece`]: piece arithmetic (piece size from blob size, counts, ranges) and
//!   [`PieceSet`], the bitmap of pieces a peer holds.
//! - [`net`]: how both binaries bind their listeners (`[::]` dual-stack, `0.0.0.0`
//!   when IPv6 is unavailable) and read an IP literal out of a URL.
//! - [`rendezvous`]: which scheduler replica owns a task (rendezvous hashing over
//!   the replica set), the same answer on every peer and replica.
//! - [`process`]: the process's own CPU, memory and descriptors as Prometheus's
//!   standard `process_*` metrics, for both daemons' `/metrics`.
//!
//! Non-goals: no I/O beyond [`net`]'s `bind` and [`process`]'s reads of `/proc/self`, no policy. What to do with a piece is the scheduler's and
//! the peer's business.

pub mod codec;
pub mod digest;
pub mod net;
pub mod piece;
pub mod plan;
pub mod process;
pub mod rendezvous;

pub use digest::{Digest, DigestError};
pub use piece::{PieceError, PieceSet, TaskShape};
pub use plan::PlanOpening;

/// Generated code for `package shoal.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");

    /// Never prints the secret: a command that carries one may be logged.
    impl std::fmt::Debug for PreheatCredential {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PreheatCredential")
                .field(
                    "username",
                    &(!self.username.is_empty()).then_some("<redacted>"),
                )
                .field(
                    "password",
                    &(!self.password.is_empty()).then_some("<redacted>"),
                )
                .field("token", &(!self.token.is_empty()).then_some("<redacted>"))
                .finish()
        }
    }
}

/// Limits of the scheduler protocol that both sides enforce.
pub mod limits {
    /// Largest gRPC message either side sends or accepts (4 MiB). A Join page of
    /// [`JOIN_PAGE`] tasks fits well within it.
    pub const MAX_MESSAGE: usize = 4 << 20;
    /// Held tasks one `JoinRequest` may carry. A peer with more sends them in
    /// several Joins (a Join adds to what the scheduler knows of the peer).
    pub const JOIN_PAGE: usize = 512;
    /// Largest certificate signing request the issuer accepts (DER bytes).
    pub const MAX_CSR: usize = 16 << 10;
    /// Largest ServiceAccount token the issuer accepts (bytes).
    pub const MAX_TOKEN: usize = 16 << 10;
    /// Largest message of the `CertificateIssuer` service, either way.
    pub const MAX_ISSUER_MESSAGE: usize = 64 << 10;
}
