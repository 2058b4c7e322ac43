//! Helpers for Shoal's end-to-end tests.
