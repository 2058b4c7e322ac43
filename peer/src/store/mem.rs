//! [`MemStore`]: the in-memory twin of [`super::DiskStore`], for unit tests of
//! the download engine, the mirror and the QUIC server.
//!
//! Same behaviour as the disk store (errors, idempotence, pins, garbage
//! collection by watermarks), minus persistence. [`MemStore::fail_writes`]
//! makes piece writes fail like a full disk, to test the fallback paths.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shoal_proto::digest::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};

use super::{
    Candidate, PieceStore, PinGuard, Pins, StoreConfig, StoreError, TaskMeta, lock, merge_hashes,
    now_secs, valid_media_type,
};

/// The in-memory piece store.
#[derive(Debug)]
pub struct MemStore {
    config: StoreConfig,
    tasks: Mutex<HashMap<Digest, MemTask>>,
    pins: Arc<Pins>,
    seq: AtomicU64,
    usage: AtomicU64,
    fail_writes: AtomicBool,
}

#[derive(Debug)]
struct MemTask {
    meta: TaskMeta,
    seq: u64,
    data: HashMap<u32, Bytes>,
}

impl MemStore {
    /// An empty store with this quota.
    ///
    /// # Panics
    /// When the watermarks are invalid (see [`StoreConfig::validate`]).
    pub fn new(config: StoreConfig) -> MemStore {
        config.validate().expect("valid store config");
        MemStore {
            config,
            tasks: Mutex::default(),
            pins: Arc::default(),
            seq: AtomicU64::new(0),
            usage: AtomicU64::new(0),
            fail_writes: AtomicBool::new(false),
        }
    }

    /// From now on `write_piece` fails with a disk-full I/O error (`true`)
    /// or works again (`false`).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    fn with_task<R>(
        &self,
        digest: &Digest,
        f: impl FnOnce(&mut MemTask) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut tasks = lock(&self.tasks);
        let task = tasks
            .get_mut(digest)
            .ok_or(StoreError::UnknownTask(*digest))?;
        f(task)
    }

    fn touch(&self, task: &mut MemTask) {
        task.meta.last_access = now_secs();
        task.seq = self.seq.fetch_add(1, Ordering::Relaxed);
    }

    fn remove_task(&self, digest: &Digest) -> bool {
        match lock(&self.tasks).remove(digest) {
            Some(t) => {
                self.usage.fetch_sub(t.meta.shape.size(), Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new(StoreConfig::default())
    }
}

impl PieceStore for MemStore {
    fn open(&self, digest: Digest, shape: TaskShape) -> Result<TaskMeta, StoreError> {
        let mut tasks = lock(&self.tasks);
        let task = match tasks.entry(digest) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let stored = o.get().meta.shape.size();
                if stored != shape.size() {
                    return Err(StoreError::SizeMismatch {
                        digest,
                        stored,
                        requested: shape.size(),
                    });
                }
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                self.usage.fetch_add(shape.size(), Ordering::SeqCst);
                let count = shape.piece_count();
                v.insert(MemTask {
                    meta: TaskMeta {
                        digest,
                        shape,
                        hashes: vec![None; count as usize],
                        pieces: PieceSet::new(count),
                        complete: false,
                        media_type: None,
                        last_access: 0,
                    },
                    seq: 0,
                    data: HashMap::new(),
                })
            }
        };
        self.touch(task);
        Ok(task.meta.clone())
    }

    fn meta(&self, digest: &Digest) -> Result<Option<TaskMeta>, StoreError> {
        Ok(lock(&self.tasks).get(digest).map(|t| t.meta.clone()))
    }

    fn set_hashes(&self, digest: &Digest, hashes: &[(u32, [u8; 32])]) -> Result<(), StoreError> {
        self.with_task(digest, |t| {
            let shape = t.meta.shape;
            merge_hashes(digest, &shape, &mut t.meta.hashes, hashes)
        })
    }

    fn set_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError> {
        if !valid_media_type(media_type) {
            return Err(StoreError::InvalidMediaType(*digest));
        }
        self.with_task(digest, |t| {
            t.meta.media_type = Some(media_type.to_owned());
            Ok(())
        })
    }

    fn write_piece(&self, digest: &Digest, index: u32, bytes: &[u8]) -> Result<(), StoreError> {
        self.with_task(digest, |t| {
            let want = t.meta.shape.piece_len(index)?;
            if bytes.len() != want as usize {
                return Err(StoreError::PieceLength {
                    digest: *digest,
                    index,
                    got: bytes.len(),
                    want,
                });
            }
            if t.meta.pieces.contains(index) {
                return Ok(());
            }
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(StoreError::Io {
                    op: "write piece to",
                    path: PathBuf::from(format!("memory/{}", digest.hex())),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull).into(),
                });
            }
            t.data.insert(index, Bytes::copy_from_slice(bytes));
            t.meta.pieces.insert(index);
            Ok(())
        })
    }

    fn read_piece(&self, digest: &Digest, index: u32) -> Result<Option<Bytes>, StoreError> {
        let mut tasks = lock(&self.tasks);
        let Some(t) = tasks.get_mut(digest) else {
            return Ok(None);
        };
        t.meta.shape.check_index(index)?;
        let Some(bytes) = t.data.get(&index).cloned() else {
            return Ok(None);
        };
        self.touch(t);
        Ok(Some(bytes))
    }

    fn mark_complete(&self, digest: &Digest) -> Result<(), StoreError> {
        self.with_task(digest, |t| {
            let p = &t.meta.pieces;
            if !p.is_full() {
                return Err(StoreError::Incomplete {
                    digest: *digest,
                    present: p.count(),
                    count: p.len(),
                });
            }
            t.meta.complete = true;
            self.touch(t);
            Ok(())
        })
    }

    fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        self.remove_task(digest);
        Ok(())
    }

    fn list(&self) -> Result<Vec<TaskMeta>, StoreError> {
        Ok(lock(&self.tasks).values().map(|t| t.meta.clone()).collect())
    }

    fn pin(&self, digest: &Digest) -> PinGuard {
        self.pins.pin(digest)
    }

    fn is_pinned(&self, digest: &Digest) -> bool {
        self.pins.lock().contains_key(digest)
    }

    fn collect_garbage(&self) -> Result<Vec<Digest>, StoreError> {
        let (candidates, incomplete): (Vec<_>, Vec<_>) = lock(&self.tasks)
            .values()
            .map(|t| {
                let c = Candidate {
                    digest: t.meta.digest,
                    access: (t.meta.last_access, t.seq),
                };
                (t.meta.complete, c)
            })
            .partition(|(complete, _)| *complete);
        let strip = |v: Vec<(bool, Candidate)>| v.into_iter().map(|(_, c)| c).collect();
        super::collect_stale(
            &self.config,
            &self.pins,
            super::now_secs(),
            strip(incomplete),
            |d| Ok(self.remove_task(d)),
        )?;
        let candidates = strip(candidates);
        super::collect(
            &self.config,
            &self.pins,
            || self.usage_bytes(),
            candidates,
            |d| Ok(self.remove_task(d)),
        )
    }

    fn usage_bytes(&self) -> u64 {
        self.usage.load(Ordering::SeqCst)
    }

    fn capacity(&self) -> u64 {
        self.config.cache_size
    }
}
