//! A deterministic simulation of a Shoal swarm past what one machine can run: the
//! real scheduler core ([`shoal_scheduler::core::Scheduler`]) and one real peer
//! download core per node ([`shoal_peer::engine::DownloadCore`], with the real
//! planner), driven in fixed time steps over a modelled network, with no I/O, no
//! clock and no threads. Same configuration and seed, same output.
//!
//! Layout:
//! - [`config`]: what to simulate.
//! - [`link`]: per-node uplinks and downlinks shared max-min fairly by the flows.
//! - [`server`]: a node's upload side (slots, `BUSY`, the per-piece hold), with
//!   the real constants; and a queueing variant (a prediction, labelled as such).
//! - [`wiring`]: plan updates and reports between the cores, as the links do it.
//! - [`swarm`]: the simulation itself.
//! - [`outcome`]: what a run produced, per node and in total.
//! - [`report`]: its figures, as `scripts/bench-swarm` prints them.
//!
//! What is modelled and what is not: see `docs/benchmarks.md`, "Simulating large
//! swarms", and [`swarm`].

pub mod config;
pub mod link;
pub mod outcome;
pub mod report;
pub mod server;
pub mod swarm;
pub mod wiring;
