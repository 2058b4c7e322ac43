//! The Shoal scheduler: knows which peer holds which piece of which task and
//! hands out download plans.
//!
//! Layout:
//! - [`core`]: the pure state machine (peers, tasks, leases, back-to-source
//!   election, parent ranking). No I/O; `now` is passed in.
//!
//! Non-goals: persistence. The state is soft and rebuilt from peers' joins.

pub mod core;
pub mod state;
