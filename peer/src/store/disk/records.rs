//! The [`DiskStore`]'s access to its records: errors logged once per path, task
//! entries (file handles and per-task locks), the sled records (header, bitmap, piece
//! hashes, last access) and a task's [`TaskMeta`] built from them.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_proto::digest::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};

use super::super::record::{self, Header};
use super::super::{StoreError, TaskMeta, lock, now_secs};
use super::{DiskStore, Entry, MAX_ENTRIES};

impl DiskStore {
    /// An I/O error, logged the first time this path fails.
    pub(super) fn io_err(
        &self,
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    ) -> StoreError {
        if lock(&self.logged).insert(path.clone()) {
            tracing::warn!(store.path = %path.display(), error = %source, store.op = op, "store I/O failed");
        }
        StoreError::Io {
            op,
            path,
            source: source.into(),
        }
    }

    /// A database error, logged the first time.
    pub(super) fn db_err(&self, e: sled::Error) -> StoreError {
        if lock(&self.logged).insert(self.meta_path.clone()) {
            tracing::warn!(store.path = %self.meta_path.display(), error = %e, "store database failed");
        }
        StoreError::Database {
            path: self.meta_path.clone(),
            source: Arc::new(e),
        }
    }

    pub(super) fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.meta_path.clone(),
            detail,
        }
    }

    /// The task's entry, created if needed.
    pub(super) fn entry(&self, digest: &Digest) -> Arc<Entry> {
        let mut map = lock(&self.entries);
        if let Some(e) = map.get(digest) {
            return Arc::clone(e);
        }
        if map.len() >= MAX_ENTRIES {
            // Only the map holds these, and nobody can clone them while we
            // hold its lock: dropping them loses nothing but an open file.
            map.retain(|_, e| Arc::strong_count(e) > 1);
        }
        Arc::clone(map.entry(*digest).or_default())
    }

    /// Runs `f` with the task's live entry locked (retrying past an entry a
    /// concurrent `remove` retired).
    pub(super) fn with_entry<R>(
        &self,
        digest: &Digest,
        f: impl FnOnce(&Entry, &mut Option<Arc<File>>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        loop {
            let entry = self.entry(digest);
            let mut file = lock(&entry.file);
            if entry.removed.load(Ordering::SeqCst) {
                continue;
            }
            return f(&entry, &mut file);
        }
    }

    /// The entry's open file, opened on first use.
    pub(super) fn file(&self, digest: &Digest, entry: &Entry) -> Result<Arc<File>, StoreError> {
        let mut slot = lock(&entry.file);
        if let Some(f) = &*slot {
            return Ok(Arc::clone(f));
        }
        let path = self.blob_path(digest);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.io_err("open", path, e))?;
        let f = Arc::new(f);
        *slot = Some(Arc::clone(&f));
        Ok(f)
    }

    pub(super) fn header(&self, digest: &Digest) -> Result<Option<Header>, StoreError> {
        match self
            .tasks
            .get(digest.as_bytes())
            .map_err(|e| self.db_err(e))?
        {
            None => Ok(None),
            Some(v) => Header::decode(&v)
                .map(Some)
                .map_err(|d| self.corrupt(format!("task {digest}: {d}"))),
        }
    }

    pub(super) fn shape(&self, digest: &Digest, header: &Header) -> Result<TaskShape, StoreError> {
        TaskShape::for_size(header.size).map_err(|e| self.corrupt(format!("task {digest}: {e}")))
    }

    pub(super) fn bitmap(
        &self,
        digest: &Digest,
        shape: &TaskShape,
    ) -> Result<PieceSet, StoreError> {
        match self
            .pieces
            .get(digest.as_bytes())
            .map_err(|e| self.db_err(e))?
        {
            None => Ok(PieceSet::new(shape.piece_count())),
            Some(v) => PieceSet::from_bytes(&v, shape.piece_count())
                .map_err(|e| self.corrupt(format!("task {digest}: {e}"))),
        }
    }

    pub(super) fn known_hashes(
        &self,
        digest: &Digest,
        shape: &TaskShape,
    ) -> Result<Vec<Option<[u8; 32]>>, StoreError> {
        let mut out = vec![None; shape.piece_count() as usize];
        for kv in self.hashes.scan_prefix(digest.as_bytes()) {
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            if let (Some((_, i)), Ok(h)) = (record::split_hash_key(&k), <[u8; 32]>::try_from(&*v))
                && let Some(slot) = out.get_mut(i as usize)
            {
                *slot = Some(h);
            }
        }
        Ok(out)
    }

    pub(super) fn touch(&self, digest: &Digest) -> Result<(), StoreError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.access
            .insert(digest.as_bytes(), &record::encode_access(now_secs(), seq))
            .map(drop)
            .map_err(|e| self.db_err(e))
    }

    /// Deletes every metadata record of a task but its header.
    pub(super) fn delete_records(&self, digest: &Digest) -> Result<(), StoreError> {
        self.pieces
            .remove(digest.as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.access
            .remove(digest.as_bytes())
            .map_err(|e| self.db_err(e))?;
        let mut batch = sled::Batch::default();
        for k in self.hashes.scan_prefix(digest.as_bytes()).keys() {
            batch.remove(k.map_err(|e| self.db_err(e))?);
        }
        self.hashes.apply_batch(batch).map_err(|e| self.db_err(e))
    }

    /// Removes a task; false when it was not stored.
    pub(super) fn remove_task(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.with_entry(digest, |entry, file| {
            let Some(header) = self.header(digest)? else {
                return Ok(false);
            };
            // Retire the entry first, so that whatever fails below, later
            // operations start from a fresh one.
            entry.removed.store(true, Ordering::SeqCst);
            *file = None;
            lock(&self.entries).remove(digest);
            lock(&self.verified).remove(digest);
            self.tasks
                .remove(digest.as_bytes())
                .map_err(|e| self.db_err(e))?;
            self.usage.fetch_sub(header.size, Ordering::SeqCst);
            // Leftovers from here on are orphans the next open deletes.
            if let Err(e) = self.delete_records(digest) {
                tracing::debug!(task.digest = %digest, error = %e, "task records left behind");
            }
            let path = self.blob_path(digest);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => drop(self.io_err("delete", path, e)),
            }
            Ok(true)
        })
    }

    pub(super) fn build_meta(
        &self,
        digest: &Digest,
        header: Header,
    ) -> Result<TaskMeta, StoreError> {
        let shape = self.shape(digest, &header)?;
        let last_access = match self
            .access
            .get(digest.as_bytes())
            .map_err(|e| self.db_err(e))?
        {
            Some(v) => record::decode_access(&v).0,
            None => 0,
        };
        let pieces = self.bitmap(digest, &shape)?;
        Ok(TaskMeta {
            digest: *digest,
            shape,
            hashes: self.known_hashes(digest, &shape)?,
            // The header and the bitmap are two records: a piece dropped at this
            // moment (damaged at rest, found by another reader or the scrub) may be
            // out of the bitmap while the header still says complete. Complete is
            // never claimed with a piece missing (a download that believed it
            // served the blob from the store, and its reader waited for that
            // piece for ever: seen once in CI).
            complete: header.complete && pieces.is_full(),
            pieces,
            media_type: header.media_type,
            last_access,
        })
    }
}
