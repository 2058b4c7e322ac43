//! The checks behind the fuzz targets in `fuzz/`: one function per target that takes
//! arbitrary bytes, feeds them to a parser of untrusted input and asserts what must hold
//! of the answer (round trips, bounds, idempotence), panicking when it does not.
//!
//! The same functions run in two places: under libFuzzer (`scripts/fuzz TARGET`) and,
//! on stable, in `peer/tests/fuzz_corpus.rs`, which replays every committed input under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`. A crash found by the fuzzer
//! is kept as a regression input there, so it is checked on every CI run.
//!
//! Layout: [`hosts`] (`hosts.toml` as the upstream client reads it; containerd's
//! `config.toml` and `hosts.toml` as `configure` plans them), [`codec`] (the QUIC piece
//! codec), [`mirror`] (mirror paths, `ns`, `Range`), [`plan`] (the scheduler's
//! `PlanUpdate` as the peer reads it), and [`store_record`] (the store's metadata
//! records, checked in `store/fuzz.rs` because the record codec is private to the
//! store). The scheduler's side of the wire is `shoal_scheduler::fuzzing`.
//!
//! Not here: anything that touches a socket or a file. Every check is a pure function
//! of its input, so a crash reproduces from the input file alone.

pub mod codec;
pub mod hosts;
pub mod mirror;
pub mod plan;

/// The store's metadata records: a task header, its piece bitmap, hash and access
/// records, decoded the way restart recovery decodes them (`store/fuzz.rs`).
pub fn store_record(data: &[u8]) {
    crate::store::fuzz::check_record(data);
}

/// A fuzz target's check: panics when the input breaks a property.
pub type Check = fn(&[u8]);

/// The peer's fuzz targets by name, as in `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Check)] = &[
    ("hosts_toml", hosts::hosts_toml),
    ("containerd_plan", hosts::containerd_plan),
    ("codec", codec::codec),
    ("mirror_request", mirror::mirror_request),
    ("plan_update", plan::plan_update),
    ("store_record", store_record),
];

/// `data` as text, or `None` when it is not UTF-8 (every text parser here takes `&str`,
/// so other bytes cannot reach it).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
