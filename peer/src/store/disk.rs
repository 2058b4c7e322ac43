//! [`DiskStore`]: blob files on disk, metadata in sled.
//!
//! Layout under the data dir: `meta/` (sled), `blobs/sha256/<hex>` (one file
//! per task, preallocated sparse to the task's size, pieces written at their
//! offsets), `peer-id` (see [`super::load_or_create_peer_id`]). File names are
//! built only from a validated [`Digest`]'s hex.
//!
//! Crash safety: a piece's bytes are written before its bit is set; a task is
//! marked complete only after its file is synced, and the metadata is flushed
//! then. On open, [`recover`](DiskStore::open) re-hashes every piece an
//! in-progress task records as present and clears those that do not match
//! (or whose hash is unknown).
//!
//! Damage at rest: the store remembers which pieces were verified in this
//! process's life (written after the engine verified them, or re-hashed). Any
//! other piece — every piece of a task completed before a restart — is hashed
//! on its first read and checked against its recorded hash; a piece that fails
//! is dropped and the task is no longer complete, so it is fetched again. No
//! byte leaves the store unverified in this process's life.
//!
//! Files: this one (opening, the [`PieceStore`] implementation, verified-piece
//! bookkeeping), `records.rs` (entries, sled records, logged errors), `recover.rs`
//! (what opening finds after a crash).
//!
//! Concurrency: one small entry per task in a map (its file handle and a lock
//! that serialises that task's metadata updates); piece I/O runs with no lock
//! held, and no lock is ever held across I/O of two tasks.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shoal_proto::digest::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};

use super::record::{self, Header};
use super::{
    Candidate, PieceStore, PinGuard, Pins, StoreConfig, StoreError, TaskMeta, lock, merge_hashes,
    now_secs, valid_media_type,
};

mod records;
mod recover;

pub use recover::Recovery;

/// Task entries kept in memory (each may hold an open file) before idle ones
/// are dropped.
const MAX_ENTRIES: usize = 256;

/// Bytes of sled's page cache.
const SLED_CACHE: u64 = 8 << 20;
/// How long opening waits for another handle to release the metadata's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The on-disk piece store. See the module docs.
pub struct DiskStore {
    dir: PathBuf,
    blob_dir: PathBuf,
    meta_path: PathBuf,
    config: StoreConfig,
    db: sled::Db,
    tasks: sled::Tree,
    pieces: sled::Tree,
    hashes: sled::Tree,
    access: sled::Tree,
    entries: Mutex<HashMap<Digest, Arc<Entry>>>,
    pins: Arc<Pins>,
    usage: AtomicU64,
    seq: AtomicU64,
    /// Paths whose failure was already logged.
    logged: Mutex<HashSet<PathBuf>>,
    recovery: Recovery,
    /// Pieces verified in this process's life, per task.
    verified: Mutex<HashMap<Digest, PieceSet>>,
    /// Pieces found damaged at rest and dropped.
    damaged: AtomicU64,
}

/// One task's in-memory handle.
#[derive(Default)]
struct Entry {
    /// Set (under `file`'s lock) when the task is removed; an operation that
    /// finds it set works on a stale entry and starts again or gives up.
    removed: AtomicBool,
    /// The open blob file; the lock also serialises metadata updates.
    file: Mutex<Option<Arc<File>>>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`, recovering from whatever state a
    /// previous run left: complete tasks are kept, in-progress tasks keep only
    /// the pieces that still match their hashes, orphans are deleted.
    ///
    /// Blocking, and it re-hashes every piece of every in-progress task: call
    /// it before serving, or from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<DiskStore, StoreError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let blob_dir = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blob_dir).map_err(|source| StoreError::Io {
            op: "create",
            path: blob_dir.clone(),
            source: source.into(),
        })?;
        let meta_path = dir.join("meta");
        let db_err = |e: sled::Error| StoreError::Database {
            path: meta_path.clone(),
            source: Arc::new(e),
        };
        // sled's page cache defaults to 1 GiB; the metadata is tiny (a record and a
        // bitmap per task), so a small cache keeps the daemon's footprint small.
        let config_db = sled::Config::new()
            .path(&meta_path)
            .cache_capacity(SLED_CACHE);
        // sled releases its file lock only when its background flusher has let go of
        // the database, a moment after the last handle is dropped: a store reopened
        // at once (a restart within one process) or a process that is still exiting
        // can hold it briefly. Wait for it rather than fail, up to LOCK_WAIT.
        let started = std::time::Instant::now();
        let db = loop {
            match config_db.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other.map_err(db_err)?,
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(db_err);
        let (tasks, pieces, hashes, access) = (
            tree("tasks")?,
            tree("pieces")?,
            tree("hashes")?,
            tree("access")?,
        );
        let mut store = DiskStore {
            dir,
            blob_dir,
            meta_path,
            config,
            db,
            tasks,
            pieces,
            hashes,
            access,
            entries: Mutex::default(),
            pins: Arc::default(),
            usage: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            logged: Mutex::default(),
            recovery: Recovery::default(),
            verified: Mutex::default(),
            damaged: AtomicU64::new(0),
        };
        store.recovery = store.recover()?;
        Ok(store)
    }

    /// Records piece `index` of a task of `count` pieces as verified in this life.
    fn mark_verified(&self, digest: &Digest, index: u32, count: u32) {
        let mut map = lock(&self.verified);
        let set = map.entry(*digest).or_insert_with(|| PieceSet::new(count));
        if set.len() != count {
            *set = PieceSet::new(count);
        }
        set.insert(index);
    }

    fn is_verified(&self, digest: &Digest, index: u32) -> bool {
        lock(&self.verified)
            .get(digest)
            .is_some_and(|s| s.contains(index))
    }

    /// Checks a piece read for the first time in this life against its recorded
    /// hash; drops it when it does not match (or has no hash).
    fn check_first_read(
        &self,
        digest: &Digest,
        shape: &TaskShape,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        use sha2::{Digest as _, Sha256};
        let want = self
            .hashes
            .get(record::hash_key(digest, index))
            .map_err(|e| self.db_err(e))?
            .and_then(|v| <[u8; 32]>::try_from(&*v).ok());
        if want.is_some_and(|w| Sha256::digest(bytes).as_slice() == w) {
            self.mark_verified(digest, index, shape.piece_count());
            return Ok(());
        }
        tracing::warn!(task.digest = %digest, piece.index = index, "stored piece does not match its hash; dropping it");
        self.damaged.fetch_add(1, Ordering::Relaxed);
        self.drop_piece(digest, shape, index)?;
        Err(StoreError::PieceDamaged {
            digest: *digest,
            index,
        })
    }

    /// Forgets piece `index`: it is no longer present and the task no longer
    /// complete.
    fn drop_piece(&self, digest: &Digest, shape: &TaskShape, index: u32) -> Result<(), StoreError> {
        self.with_entry(digest, |_, _| {
            let Some(mut header) = self.header(digest)? else {
                return Ok(());
            };
            let mut pieces = self.bitmap(digest, shape)?;
            pieces.remove(index);
            self.put_bitmap(digest, &pieces)?;
            if header.complete {
                header.complete = false;
                self.tasks
                    .insert(digest.as_bytes(), header.encode())
                    .map_err(|e| self.db_err(e))?;
            }
            if let Some(v) = lock(&self.verified).get_mut(digest) {
                v.remove(index);
            }
            self.flush()
        })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The quota and watermarks.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// What opening the store found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The blob file of a task: `dir/blobs/sha256/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir.join(digest.hex())
    }

    /// Flushes the metadata to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|e| self.db_err(e))
    }
}

impl PieceStore for DiskStore {
    fn open(&self, digest: Digest, shape: TaskShape) -> Result<TaskMeta, StoreError> {
        let header = self.with_entry(&digest, |_, file| {
            if let Some(h) = self.header(&digest)? {
                if h.size != shape.size() {
                    return Err(StoreError::SizeMismatch {
                        digest,
                        stored: h.size,
                        requested: shape.size(),
                    });
                }
                return Ok(h);
            }
            let path = self.blob_path(&digest);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| self.io_err("create", path.clone(), e))?;
            if let Err(e) = f.set_len(shape.size()) {
                let _ = std::fs::remove_file(&path);
                return Err(self.io_err("allocate", path, e));
            }
            // Records a crash left between a removal's steps.
            self.delete_records(&digest)?;
            let header = Header {
                size: shape.size(),
                piece_size: shape.piece_size(),
                complete: false,
                media_type: None,
            };
            self.tasks
                .insert(digest.as_bytes(), header.encode())
                .map_err(|e| self.db_err(e))?;
            self.usage.fetch_add(shape.size(), Ordering::SeqCst);
            *file = Some(Arc::new(f));
            Ok(header)
        })?;
        self.touch(&digest)?;
        self.build_meta(&digest, header)
    }

    fn meta(&self, digest: &Digest) -> Result<Option<TaskMeta>, StoreError> {
        match self.header(digest)? {
            Some(h) => self.build_meta(digest, h).map(Some),
            None => Ok(None),
        }
    }

    fn set_hashes(&self, digest: &Digest, hashes: &[(u32, [u8; 32])]) -> Result<(), StoreError> {
        self.with_entry(digest, |_, _| {
            let header = self
                .header(digest)?
                .ok_or(StoreError::UnknownTask(*digest))?;
            let shape = self.shape(digest, &header)?;
            let mut known = self.known_hashes(digest, &shape)?;
            merge_hashes(digest, &shape, &mut known, hashes)?;
            let mut batch = sled::Batch::default();
            for (index, hash) in hashes {
                batch.insert(&record::hash_key(digest, *index)[..], &hash[..]);
            }
            self.hashes.apply_batch(batch).map_err(|e| self.db_err(e))
        })
    }

    fn set_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError> {
        if !valid_media_type(media_type) {
            return Err(StoreError::InvalidMediaType(*digest));
        }
        self.with_entry(digest, |_, _| {
            let mut header = self
                .header(digest)?
                .ok_or(StoreError::UnknownTask(*digest))?;
            header.media_type = Some(media_type.to_owned());
            self.tasks
                .insert(digest.as_bytes(), header.encode())
                .map(drop)
                .map_err(|e| self.db_err(e))
        })
    }

    fn write_piece(&self, digest: &Digest, index: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let header = self
            .header(digest)?
            .ok_or(StoreError::UnknownTask(*digest))?;
        let shape = self.shape(digest, &header)?;
        let range = shape.piece_range(index)?;
        let want = (range.end - range.start) as u32;
        if bytes.len() != want as usize {
            return Err(StoreError::PieceLength {
                digest: *digest,
                index,
                got: bytes.len(),
                want,
            });
        }
        if header.complete || self.bitmap(digest, &shape)?.contains(index) {
            return Ok(());
        }
        let entry = self.entry(digest);
        let file = self.file(digest, &entry)?;
        // The bytes go to disk first, with no lock held ...
        file.write_all_at(bytes, range.start)
            .map_err(|e| self.io_err("write piece to", self.blob_path(digest), e))?;
        // ... and only then is the piece recorded, if the task is still there.
        let _guard = lock(&entry.file);
        if entry.removed.load(Ordering::SeqCst) || self.header(digest)?.is_none() {
            return Err(StoreError::UnknownTask(*digest));
        }
        let mut pieces = self.bitmap(digest, &shape)?;
        pieces.insert(index);
        self.mark_verified(digest, index, shape.piece_count());
        self.pieces
            .insert(digest.as_bytes(), pieces.to_bytes())
            .map(drop)
            .map_err(|e| self.db_err(e))
    }

    fn read_piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, StoreError> {
        let Some(header) = self.header(digest)? else {
            return Ok(None);
        };
        let shape = self.shape(digest, &header)?;
        let range = shape.piece_range(index)?;
        let entry = self.entry(digest);
        if !self.bitmap(digest, &shape)?.contains(index) {
            return Ok(None);
        }
        let file = self.file(digest, &entry)?;
        let mut buf = vec![0; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start)
            .map_err(|e| self.io_err("read piece from", self.blob_path(digest), e))?;
        // Removed (and perhaps recreated) while we read: the bitmap we saw may
        // not describe the file we read.
        if entry.removed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if !self.is_verified(digest, index) {
            self.check_first_read(digest, &shape, index, &buf)?;
        }
        // Last access only orders garbage collection: the bytes are verified, so a
        // metadata database that cannot take the write (a full disk: sled then
        // refuses every write until restart) does not fail the read. The failure
        // is logged once per store by `db_err`.
        let _ = self.touch(digest);
        Ok(Some(Bytes::from(buf)))
    }

    fn verify_piece(&self, digest: &Digest, index: u32) -> Result<bool, StoreError> {
        // Verified pieces leave the set when they are dropped or their task removed:
        // no metadata read for the common case (a blob already served this life).
        if self.is_verified(digest, index) {
            return Ok(true);
        }
        match self.read_piece(digest, index) {
            Ok(p) => Ok(p.is_some()),
            Err(StoreError::PieceDamaged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn mark_complete(&self, digest: &Digest) -> Result<(), StoreError> {
        let header = self
            .header(digest)?
            .ok_or(StoreError::UnknownTask(*digest))?;
        if !header.complete {
            let shape = self.shape(digest, &header)?;
            let pieces = self.bitmap(digest, &shape)?;
            if !pieces.is_full() {
                return Err(StoreError::Incomplete {
                    digest: *digest,
                    present: pieces.count(),
                    count: pieces.len(),
                });
            }
            let entry = self.entry(digest);
            let file = self.file(digest, &entry)?;
            file.sync_data()
                .map_err(|e| self.io_err("sync", self.blob_path(digest), e))?;
            let _guard = lock(&entry.file);
            let mut header = match self.header(digest)? {
                Some(h) if !entry.removed.load(Ordering::SeqCst) => h,
                _ => return Err(StoreError::UnknownTask(*digest)),
            };
            header.complete = true;
            self.tasks
                .insert(digest.as_bytes(), header.encode())
                .map_err(|e| self.db_err(e))?;
        }
        self.touch(digest)?;
        self.flush()
    }

    fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        self.remove_task(digest).map(drop)
    }

    fn list(&self) -> Result<Vec<TaskMeta>, StoreError> {
        let mut out = Vec::new();
        for k in self.tasks.iter().keys() {
            let k = k.map_err(|e| self.db_err(e))?;
            if let Some(digest) = record::digest_key(&k)
                && let Some(meta) = self.meta(&digest)?
            {
                out.push(meta);
            }
        }
        Ok(out)
    }

    fn pin(&self, digest: &Digest) -> PinGuard {
        self.pins.pin(digest)
    }

    fn is_pinned(&self, digest: &Digest) -> bool {
        self.pins.lock().contains_key(digest)
    }

    fn collect_garbage(&self) -> Result<Vec<Digest>, StoreError> {
        let (mut candidates, mut incomplete) = (Vec::new(), Vec::new());
        for kv in self.tasks.iter() {
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            let (Some(digest), Ok(header)) = (record::digest_key(&k), Header::decode(&v)) else {
                continue;
            };
            let access = match self.access.get(&k).map_err(|e| self.db_err(e))? {
                Some(v) => record::decode_access(&v),
                None => (0, 0),
            };
            let c = Candidate { digest, access };
            if header.complete {
                candidates.push(c);
            } else {
                incomplete.push(c);
            }
        }
        super::collect_stale(&self.config, &self.pins, now_secs(), incomplete, |d| {
            self.remove_task(d)
        })?;
        super::collect(
            &self.config,
            &self.pins,
            || self.usage_bytes(),
            candidates,
            |d| self.remove_task(d),
        )
    }

    fn usage_bytes(&self) -> u64 {
        self.usage.load(Ordering::SeqCst)
    }

    fn capacity(&self) -> u64 {
        self.config.cache_size
    }

    fn damaged_pieces(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!(store.path = %self.meta_path.display(), error = %e, "could not flush the store's metadata");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failing_path_is_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), StoreConfig::default()).unwrap();
        let path = store.blob_path(&Digest::from_sha256([1; 32]));
        for _ in 0..3 {
            let e = store.io_err(
                "write piece to",
                path.clone(),
                std::io::Error::other("full"),
            );
            assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        }
        assert_eq!(lock(&store.logged).len(), 1);
    }

    #[test]
    fn idle_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), StoreConfig::default()).unwrap();
        for n in 0..=MAX_ENTRIES {
            let mut bytes = [0; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
            let d = Digest::from_sha256(bytes);
            store.open(d, TaskShape::for_size(1).unwrap()).unwrap();
        }
        assert!(lock(&store.entries).len() <= MAX_ENTRIES);
        assert_eq!(store.list().unwrap().len(), MAX_ENTRIES + 1);
    }
}
