//! The piece store: where a peer keeps the blobs (tasks) it has fetched.
//!
//! A task is stored as one file, each piece written at its offset as soon as
//! it has been verified, with its metadata (size, piece size, piece hashes,
//! bitmap of stored pieces, state, last access, media type) beside it.
//!
//! Layout:
//! - [`PieceStore`]: the boundary the download engine, the mirror and the
//!   QUIC server use. Sync: async callers use `spawn_blocking`.
//! - [`DiskStore`] (`disk.rs`, `record.rs`): the real store, blob files under
//!   `dir/blobs/sha256/<hex>` and metadata in sled under `dir/meta`.
//! - [`MemStore`] (`mem.rs`): the in-memory twin with the same behaviour, for
//!   unit tests of the layers above, with fault injection.
//! - [`ContentLayer`] (`content.rs`): containerd's content store, read-only, in front
//!   of the own store (`--containerd-content-dir`): blobs containerd committed are
//!   served from its files, verified, and not stored twice.
//! - [`load_or_create_peer_id`] (`peer_id.rs`): the stable peer id in `dir/peer-id`.
//! - Garbage collection by watermarks, shared by both stores (`plan` below).
//!
//! Not here: verifying pieces (callers verify before [`PieceStore::write_piece`]
//! and check the whole blob's digest before [`PieceStore::mark_complete`]), and
//! talking to the scheduler (callers report what [`PieceStore::collect_garbage`]
//! evicted).

pub mod content;
mod disk;
mod error;
pub(crate) mod fuzz;
mod mem;
mod peer_id;
mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::registry::Registry;
use shoal_proto::digest::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};

use crate::metrics::{self, Sample};

pub use content::ContentLayer;
pub use disk::{DiskStore, Recovery};
pub use error::StoreError;
pub use mem::MemStore;
pub use peer_id::{is_valid_peer_id, load_or_create_peer_id};

/// What the store knows about one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMeta {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size and how it is cut into pieces.
    pub shape: TaskShape,
    /// SHA-256 of each piece, `None` until learnt (one entry per piece).
    pub hashes: Vec<Option<[u8; 32]>>,
    /// Pieces stored and verified; only these are ever read back.
    pub pieces: PieceSet,
    /// True once the whole blob was stored and its digest verified.
    pub complete: bool,
    /// The blob's media type, when known.
    pub media_type: Option<String>,
    /// Last time the task was opened, read or completed (unix seconds).
    pub last_access: u64,
}

/// The piece store as the rest of the peer sees it.
///
/// Every method is safe to call from many threads at once. Methods that take
/// a digest of a task that is not stored return [`StoreError::UnknownTask`],
/// except [`PieceStore::meta`] and [`PieceStore::read_piece`], which return
/// `None`-like answers, and [`PieceStore::remove`], which is a no-op.
pub trait PieceStore: Send + Sync + 'static {
    /// Creates the task's record (or returns the existing one; a size mismatch is an error).
    fn open(&self, digest: Digest, shape: TaskShape) -> Result<TaskMeta, StoreError>;
    /// The task's record, if it is stored. Does not count as an access.
    fn meta(&self, digest: &Digest) -> Result<Option<TaskMeta>, StoreError>;
    /// Records hashes learnt from the scheduler or computed from upstream.
    ///
    /// A hash already known may be set again; a different one for the same
    /// piece is a [`StoreError::HashConflict`] and nothing is changed.
    fn set_hashes(&self, digest: &Digest, hashes: &[(u32, [u8; 32])]) -> Result<(), StoreError>;
    /// Records the blob's media type (at most 255 printable ASCII characters).
    fn set_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError>;
    /// Writes a piece the caller has ALREADY verified against its hash; marks it
    /// present only after the bytes are written.
    ///
    /// Writing a piece that is already present is a no-op. `bytes` must be the
    /// piece's full length ([`StoreError::PieceLength`] otherwise).
    fn write_piece(&self, digest: &Digest, index: u32, bytes: &[u8]) -> Result<(), StoreError>;
    /// Reads a present piece (None if not present or the task is not stored).
    /// Updates last access.
    ///
    /// Never returns bytes that were not verified in this process's life: a piece
    /// read for the first time since the store was opened is hashed and checked
    /// against its recorded hash; one that fails is dropped (the task is no longer
    /// complete) and the read fails with [`StoreError::PieceDamaged`].
    fn read_piece(&self, digest: &Digest, index: u32) -> Result<Option<bytes::Bytes>, StoreError>;
    /// True when piece `index` is present and verified in this process's life
    /// (checking it now, as [`PieceStore::read_piece`] would, if it was not);
    /// false when it is not present or failed the check (and was dropped).
    fn verify_piece(&self, digest: &Digest, index: u32) -> Result<bool, StoreError> {
        match self.read_piece(digest, index) {
            Ok(p) => Ok(p.is_some()),
            Err(StoreError::PieceDamaged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Marks the task complete (caller verified the whole blob's digest).
    ///
    /// Every piece must be present ([`StoreError::Incomplete`] otherwise). The
    /// blob's bytes and the metadata are flushed to disk before it returns.
    fn mark_complete(&self, digest: &Digest) -> Result<(), StoreError>;
    /// Deletes the task, pinned or not (pins only hold off garbage collection).
    fn remove(&self, digest: &Digest) -> Result<(), StoreError>;
    /// Every complete task (for the scheduler join), every in-progress task.
    fn list(&self) -> Result<Vec<TaskMeta>, StoreError>;
    /// Pins a task against eviction while it is read or written (RAII guard; count-based).
    fn pin(&self, digest: &Digest) -> PinGuard;
    /// True while a guard from [`PieceStore::pin`] holds the task (it is being read
    /// or written).
    fn is_pinned(&self, digest: &Digest) -> bool;
    /// Runs GC if usage > high watermark: evicts least-recently-used unpinned
    /// complete tasks until usage <= low watermark; returns the evicted digests
    /// (the caller reports them to the scheduler).
    fn collect_garbage(&self) -> Result<Vec<Digest>, StoreError>;
    /// Bytes the stored tasks take (the sum of their sizes, complete or not).
    fn usage_bytes(&self) -> u64;
    /// The quota (`cache_size`): a blob larger than this is never stored.
    fn capacity(&self) -> u64;
    /// Pieces found damaged at rest (and dropped) since the store was opened.
    fn damaged_pieces(&self) -> u64 {
        0
    }
}

/// Registers the store's metrics in `registry` (names without a prefix: the daemon's
/// registry adds `shoal_peer_`): the bytes it holds and the pieces found damaged at
/// rest, read at every scrape.
pub fn register_metrics(store: &Arc<dyn PieceStore>, registry: &mut Registry) {
    metrics::register(registry, Usage(store.clone()), |u| {
        vec![
            Sample::Gauge(
                "cache_bytes",
                "Bytes of blobs held in the piece store.",
                i64::try_from(u.0.usage_bytes()).unwrap_or(i64::MAX),
            ),
            Sample::Counter(
                "store_pieces_damaged",
                "Stored pieces that failed their hash on first read (damaged at rest); dropped and fetched again.",
                u.0.damaged_pieces(),
            ),
        ]
    });
}

/// A store as its metrics collector sees it.
struct Usage(Arc<dyn PieceStore>);

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Usage").finish_non_exhaustive()
    }
}

/// Disk quota and garbage collection watermarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreConfig {
    /// Bytes the store may use. Garbage collection starts above
    /// `cache_size * high_watermark` and evicts down to `cache_size * low_watermark`.
    pub cache_size: u64,
    /// Fraction of `cache_size` above which [`PieceStore::collect_garbage`]
    /// evicts. Default 0.9.
    pub high_watermark: f64,
    /// Fraction of `cache_size` eviction stops at. Default 0.75; must not be
    /// above `high_watermark`.
    pub low_watermark: f64,
    /// An unfinished task nobody read or wrote for this long is deleted at the next
    /// collection, whatever the watermarks (its download was abandoned: a crash,
    /// a cancelled pull). Default 1 h.
    pub incomplete_ttl: std::time::Duration,
}

impl StoreConfig {
    /// A quota of `cache_size` bytes with the default watermarks.
    pub fn with_cache_size(cache_size: u64) -> Self {
        StoreConfig {
            cache_size,
            ..StoreConfig::default()
        }
    }

    /// Checks `0 < low_watermark <= high_watermark <= 1` and a non-zero
    /// `incomplete_ttl`.
    pub fn validate(&self) -> Result<(), StoreError> {
        let (lo, hi) = (self.low_watermark, self.high_watermark);
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(StoreError::Config(format!(
                "watermarks must satisfy 0 < low ({lo}) <= high ({hi}) <= 1"
            )));
        }
        if self.incomplete_ttl.is_zero() {
            return Err(StoreError::Config(
                "the time after which an unfinished task is collected must be above zero".into(),
            ));
        }
        Ok(())
    }

    fn high_bytes(&self) -> u64 {
        (self.cache_size as f64 * self.high_watermark) as u64
    }

    fn low_bytes(&self) -> u64 {
        (self.cache_size as f64 * self.low_watermark) as u64
    }
}

impl Default for StoreConfig {
    /// 10 GiB, watermarks 0.9 and 0.75, unfinished tasks collected after 1 h.
    fn default() -> Self {
        StoreConfig {
            cache_size: 10 << 30,
            high_watermark: 0.9,
            low_watermark: 0.75,
            incomplete_ttl: std::time::Duration::from_secs(3600),
        }
    }
}

/// Keeps a task from being evicted while it lives. Pins count: a task is
/// evictable again once every guard for it is dropped.
#[must_use = "the task is unpinned as soon as the guard is dropped"]
#[derive(Debug)]
pub struct PinGuard {
    pins: Arc<Pins>,
    digest: Digest,
}

impl PinGuard {
    /// The pinned task.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut map = self.pins.lock();
        if let Some(n) = map.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

/// Pin counts per task, shared by a store and its guards.
#[derive(Debug, Default)]
struct Pins(Mutex<HashMap<Digest, usize>>);

impl Pins {
    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, usize>> {
        lock(&self.0)
    }

    fn pin(self: &Arc<Self>, digest: &Digest) -> PinGuard {
        *self.lock().entry(*digest).or_insert(0) += 1;
        PinGuard {
            pins: Arc::clone(self),
            digest: *digest,
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section in the store
/// leaves its data consistent at each step, so a panic elsewhere does not
/// invalidate it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A task garbage collection may evict, with what orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    digest: Digest,
    /// (unix seconds, sequence number): the sequence breaks ties within a second.
    access: (u64, u64),
}

/// Garbage collection's decision, pure: the complete tasks to try to evict, in
/// order, or nothing when usage is not above the high watermark.
fn plan(config: &StoreConfig, usage: u64, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
    if usage <= config.high_bytes() {
        return Vec::new();
    }
    candidates.sort_by_key(|c| (c.access, c.digest));
    candidates
}

/// Runs garbage collection: walks `plan`'s order and evicts each task not
/// pinned, until usage is at most the low watermark. `evict` removes a task
/// and is called with the pin table locked, so a task cannot be pinned between
/// the check and its removal; it returns false when the task was already gone.
fn collect(
    config: &StoreConfig,
    pins: &Pins,
    usage: impl Fn() -> u64,
    candidates: Vec<Candidate>,
    mut evict: impl FnMut(&Digest) -> Result<bool, StoreError>,
) -> Result<Vec<Digest>, StoreError> {
    let mut evicted = Vec::new();
    for c in plan(config, usage(), candidates) {
        if usage() <= config.low_bytes() {
            break;
        }
        let pinned = pins.lock();
        if pinned.contains_key(&c.digest) {
            continue;
        }
        if evict(&c.digest)? {
            evicted.push(c.digest);
        }
        drop(pinned);
    }
    if !evicted.is_empty() {
        tracing::info!(
            store.evicted = evicted.len(),
            store.usage_bytes = usage(),
            "evicted tasks"
        );
    }
    Ok(evicted)
}

/// Deletes the unfinished tasks untouched for `config.incomplete_ttl` (as of `now`,
/// unix seconds) that nobody pins; `evict` is called with the pin table locked.
/// Not reported to the scheduler (it offers only what a peer reported holding,
/// and a plan for an abandoned download is closed already). The deleted tasks.
fn collect_stale(
    config: &StoreConfig,
    pins: &Pins,
    now: u64,
    incomplete: Vec<Candidate>,
    mut evict: impl FnMut(&Digest) -> Result<bool, StoreError>,
) -> Result<Vec<Digest>, StoreError> {
    let ttl = config.incomplete_ttl.as_secs();
    let mut deleted = Vec::new();
    for c in incomplete {
        if now.saturating_sub(c.access.0) < ttl {
            continue;
        }
        let pinned = pins.lock();
        if pinned.contains_key(&c.digest) {
            continue;
        }
        if evict(&c.digest)? {
            tracing::info!(task.digest = %c.digest, "deleted an unfinished task nobody touched for {ttl} s");
            deleted.push(c.digest);
        }
        drop(pinned);
    }
    Ok(deleted)
}

/// Now, in unix seconds.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// True when `s` is an acceptable media type: 1–255 printable ASCII characters.
fn valid_media_type(s: &str) -> bool {
    (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// Checks `hashes` against `known` (one slot per piece) and fills them in;
/// all-or-nothing.
fn merge_hashes(
    digest: &Digest,
    shape: &TaskShape,
    known: &mut [Option<[u8; 32]>],
    hashes: &[(u32, [u8; 32])],
) -> Result<(), StoreError> {
    for (index, hash) in hashes {
        shape.check_index(*index)?;
        if known[*index as usize].is_some_and(|k| k != *hash) {
            return Err(StoreError::HashConflict {
                digest: *digest,
                index: *index,
            });
        }
    }
    for (index, hash) in hashes {
        known[*index as usize] = Some(*hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_sha256([n; 32])
    }

    fn cand(n: u8, secs: u64, seq: u64) -> Candidate {
        Candidate {
            digest: d(n),
            access: (secs, seq),
        }
    }

    #[test]
    fn plan_is_empty_under_the_high_watermark() {
        let config = StoreConfig::with_cache_size(100);
        assert!(plan(&config, 90, vec![cand(1, 0, 0)]).is_empty());
        assert_eq!(plan(&config, 91, vec![cand(1, 0, 0)]).len(), 1);
    }

    #[test]
    fn plan_orders_least_recently_used_first() {
        let config = StoreConfig::with_cache_size(100);
        let order: Vec<_> = plan(
            &config,
            100,
            vec![cand(1, 5, 0), cand(2, 3, 9), cand(3, 3, 2)],
        )
        .into_iter()
        .map(|c| c.digest)
        .collect();
        assert_eq!(order, vec![d(3), d(2), d(1)]);
    }

    #[test]
    fn collect_stops_at_the_low_watermark_and_skips_pins() {
        let config = StoreConfig::with_cache_size(100);
        let pins = Arc::new(Pins::default());
        let usage = std::cell::Cell::new(100u64);
        let cands = vec![cand(1, 1, 0), cand(2, 2, 0), cand(3, 3, 0), cand(4, 4, 0)];
        let _guard = pins.pin(&d(1));
        let evicted = collect(
            &config,
            &pins,
            || usage.get(),
            cands,
            |digest| {
                assert_ne!(*digest, d(1));
                usage.set(usage.get() - 10);
                Ok(true)
            },
        )
        .unwrap();
        // 100 -> 90 -> 80 -> 70 <= 75.
        assert_eq!(evicted, vec![d(2), d(3), d(4)]);
    }

    #[test]
    fn pins_count() {
        let pins = Arc::new(Pins::default());
        let a = pins.pin(&d(1));
        let b = pins.pin(&d(1));
        drop(a);
        assert_eq!(pins.lock().get(&d(1)), Some(&1));
        drop(b);
        assert!(pins.lock().is_empty());
    }

    #[test]
    fn stale_unfinished_tasks_are_collected_unless_pinned() {
        let config = StoreConfig {
            incomplete_ttl: std::time::Duration::from_secs(60),
            ..StoreConfig::with_cache_size(100)
        };
        let pins = Arc::new(Pins::default());
        let _guard = pins.pin(&d(2));
        let cands = vec![cand(1, 1000, 0), cand(2, 1000, 1), cand(3, 1050, 2)];
        let mut seen = Vec::new();
        let deleted = collect_stale(&config, &pins, 1100, cands, |d| {
            seen.push(*d);
            Ok(true)
        })
        .unwrap();
        assert_eq!(deleted, vec![d(1)], "fresh and pinned tasks stay");
        assert_eq!(seen, vec![d(1)]);
    }

    #[test]
    fn config_validation() {
        assert!(StoreConfig::default().validate().is_ok());
        let bad = StoreConfig {
            low_watermark: 0.95,
            ..StoreConfig::default()
        };
        assert!(bad.validate().is_err());
        let nan = StoreConfig {
            high_watermark: f64::NAN,
            ..StoreConfig::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn media_types() {
        assert!(valid_media_type(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(!valid_media_type(""));
        assert!(!valid_media_type("a\nb"));
        assert!(!valid_media_type(&"a".repeat(256)));
    }
}
