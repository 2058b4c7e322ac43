//! The Shoal scheduler: knows which peer holds which piece of which task and
//! hands out download plans.
//!
//! Layout:
//! - [`core`]: the pure state machine (peers, tasks, leases, back-to-source
//!   election, parent ranking). No I/O; `now` is passed in.
//! - [`http`]: the operator API (axum, JSON), `/metrics`, health; its write
//!   endpoints need the bearer token of [`auth`].
//! - [`preheat`]: preheat jobs (warm chosen peers with an image), their
//!   pure state machine and their routes.
//! - [`status_page`]: `GET /`, the live status page, and the overview it polls.
//! - [`metrics`]: the Prometheus registry and metric families.
//! - [`ctl`]: `shoalctl`, the operator CLI over the operator API.
//! - [`grpc`]: the tonic adapter, with identity checks and input limits;
//!   [`tls`]: mutual TLS on its port and who the caller is.
//! - [`issuer`]: the certificate issuer (`shoal.v1.CertificateIssuer`): node
//!   certificates for CSRs whose ServiceAccount token the TokenReview API vouches for.
//! - [`server`]: [`server::run`], the one way to start a whole scheduler.
//! - [`fuzzing`]: the check behind the `scheduler_wire` fuzz target in `fuzz/`.
//!
//! Non-goals: persistence. The state is soft and rebuilt from peers' joins.

pub mod auth;
pub mod config;
mod convert;
pub mod core;
pub mod ctl;
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod issuer;
pub mod logging;
pub mod metrics;
pub mod preheat;
pub mod server;
pub mod state;
pub mod status_page;
pub mod tls;
