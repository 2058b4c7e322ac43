//! The Shoal scheduler: knows which peer holds which piece of which task and
//! hands out download plans.
//!
//! Layout:
//! - [`core`]: the pure state machine (peers, tasks, leases, back-to-source
//!   election, parent ranking). No I/O; `now` is passed in.
//! - [`http`]: the operator API (axum, JSON, read-only), `/metrics`, health.
//! - [`metrics`]: the Prometheus registry and metric families.
//! - [`ctl`]: `shoalctl`, the operator CLI over the operator API.
//!
//! Non-goals: persistence. The state is soft and rebuilt from peers' joins.

pub mod config;
mod convert;
pub mod core;
pub mod ctl;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod state;
