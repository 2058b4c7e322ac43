//! The Shoal peer daemon and node setup.
//!
//! Layout:
//! - [`daemon`]: `shoal-peer run`: wiring, configuration, health and metrics.
//! - [`metrics`]: how each component puts its counters into the daemon's one
//!   prometheus-client registry.
//! - [`store`]: the piece store (blob files + sled metadata, GC, peer id).
//! - [`transfer`]: the QUIC piece protocol (pure codec, server, pooled client).
//! - [`tls`]: the cluster CA and peer certificates for mutual TLS.
//! - [`scheduler_link`]: join, session and plan streams, with reconnection.
//! - [`engine`]: the download engine (planner, driver, reader).
//! - [`mirror`]: the registry mirror containerd pulls through (axum, OCI pull API).
//! - [`registry`]: upstream registries as containerd's `hosts.toml` configures them.
//! - [`containerd`]: `shoal-peer containerd configure | check | restore`, which points
//!   containerd's `hosts.toml` at the mirror on this node and undoes it.
//! - [`containers`]: `shoal-peer containers configure | check | restore`, the same for
//!   CRI-O and Podman (a `registries.conf.d` drop-in).
//! - [`fuzzing`]: the checks behind the fuzz targets in `fuzz/`, also replayed as tests.

pub mod containerd;
pub mod containers;
pub mod daemon;
pub mod engine;
pub mod fuzzing;
pub mod metrics;
pub mod mirror;
pub mod preheat;
pub mod registry;
pub mod scheduler_link;
pub mod store;
pub mod tls;
pub mod transfer;
