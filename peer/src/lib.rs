//! The Shoal peer daemon and node setup.
//!
//! Layout:
//! - [`containerd`]: `shoal-peer containerd configure | check | restore`, which points
//!   containerd's `hosts.toml` at the mirror on this node and undoes it.

pub mod containerd;
pub mod scheduler_link;
pub mod store;
pub mod tls;
pub mod transfer;
