//! The Shoal peer daemon and node setup.
