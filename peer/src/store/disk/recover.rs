//! What [`DiskStore::open`] does with the state a previous run left.
//!
//! - A complete task is kept if its blob file is still there at its full size
//!   (it was synced before it was marked complete); otherwise it is dropped.
//! - An in-progress task keeps only the pieces that still hash to their known
//!   hash; a piece whose hash is unknown, or that cannot be read, is cleared.
//!   A missing or wrongly sized blob file is recreated empty.
//! - A task stored under another piece rule (`shoal_proto::piece::PIECE_RULE`,
//!   an older Shoal) loses its piece records: complete, it is cut again and kept
//!   if it still hashes to its digest; in progress, it starts over.
//! - Records without a task and blob files without a record are deleted.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};
use shoal_proto::digest::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};

use super::DiskStore;
use crate::store::StoreError;
use crate::store::record::{self, Header};

/// What opening a [`DiskStore`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Complete tasks kept.
    pub complete: usize,
    /// Of those, tasks stored under another piece rule (an older Shoal) and
    /// cut again by this one.
    pub recut: usize,
    /// In-progress tasks resumed.
    pub in_progress: usize,
    /// Pieces re-hashed and kept.
    pub pieces_verified: usize,
    /// Pieces recorded as present that were cleared (bad or unknown hash,
    /// unreadable, or their file was gone).
    pub pieces_cleared: usize,
    /// Tasks dropped because their record or blob file was unusable.
    pub tasks_dropped: usize,
    /// Orphan records and blob files deleted.
    pub orphans_deleted: usize,
}

impl DiskStore {
    pub(super) fn recover(&self) -> Result<Recovery, StoreError> {
        let mut r = Recovery::default();
        let mut live = HashSet::new();
        let mut usage = 0;
        for kv in self.tasks.iter() {
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            let digest = record::digest_key(&k);
            let kept = match &digest {
                Some(d) => self.recover_task(d, &v, &mut r)?,
                None => None,
            };
            match (digest, kept) {
                (Some(d), Some(size)) => {
                    live.insert(d);
                    usage += size;
                }
                (digest, _) => {
                    tracing::warn!(task.digest = ?digest, "dropping unusable task");
                    self.tasks.remove(&k).map_err(|e| self.db_err(e))?;
                    r.tasks_dropped += 1;
                    if let Some(d) = digest {
                        self.delete_records(&d)?;
                        let _ = std::fs::remove_file(self.blob_path(&d));
                    }
                }
            }
        }
        r.orphans_deleted += self.delete_orphan_records(&live)?;
        r.orphans_deleted += self.delete_orphan_files(&live);
        let mut max_seq = 0;
        for v in self.access.iter().values() {
            let v = v.map_err(|e| self.db_err(e))?;
            max_seq = max_seq.max(record::decode_access(&v).1);
        }
        self.seq.store(max_seq + 1, Ordering::SeqCst);
        self.usage.store(usage, Ordering::SeqCst);
        self.flush()?;
        tracing::info!(
            store.path = %self.dir.display(),
            store.complete = r.complete,
            store.recut = r.recut,
            store.in_progress = r.in_progress,
            store.pieces_cleared = r.pieces_cleared,
            store.tasks_dropped = r.tasks_dropped,
            store.usage_bytes = usage,
            "piece store opened"
        );
        Ok(r)
    }

    /// Checks one task; `Some(size)` when it is kept.
    fn recover_task(
        &self,
        digest: &Digest,
        value: &[u8],
        r: &mut Recovery,
    ) -> Result<Option<u64>, StoreError> {
        let Ok(mut header) = Header::decode(value) else {
            return Ok(None);
        };
        let Ok(shape) = TaskShape::for_size(header.size) else {
            return Ok(None);
        };
        let path = self.blob_path(digest);
        let file_len = std::fs::metadata(&path).ok().map(|m| m.len());
        let count = shape.piece_count();
        // Stored under another piece rule (an older Shoal): the bitmap and hashes
        // mean nothing now. A complete blob's bytes are still good: it is cut
        // again below, and kept if it still hashes to its digest.
        let resized = header.piece_size != shape.piece_size();
        if resized {
            header.piece_size = shape.piece_size();
            self.delete_records(digest)?;
            self.tasks
                .insert(digest.as_bytes(), header.encode())
                .map_err(|e| self.db_err(e))?;
        }
        if header.complete {
            if file_len != Some(header.size) {
                return Ok(None);
            }
            if resized {
                if !self.recut(digest, &shape, &path)? {
                    tracing::warn!(task.digest = %digest, "complete blob of an older piece rule does not match its digest; dropping it");
                    return Ok(None);
                }
                r.recut += 1;
            }
            if !self.bitmap(digest, &shape).is_ok_and(|p| p.is_full()) {
                self.put_bitmap(digest, &PieceSet::full(count))?;
            }
            r.complete += 1;
            return Ok(Some(header.size));
        }
        let mut reset = resized;
        if file_len != Some(header.size) {
            let made = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .and_then(|f| f.set_len(header.size));
            if let Err(e) = made {
                drop(self.io_err("recreate", path, e));
                return Ok(None);
            }
            reset = true;
        }
        let recorded = match self.bitmap(digest, &shape) {
            Ok(p) => p,
            Err(_) => {
                reset = true;
                PieceSet::new(count)
            }
        };
        let mut kept = PieceSet::new(count);
        if !reset && !recorded.is_empty() {
            let hashes = self.known_hashes(digest, &shape)?;
            let file = OpenOptions::new().read(true).open(&path);
            for i in recorded.iter() {
                let good = match (&file, hashes[i as usize]) {
                    (Ok(f), Some(want)) => piece_matches(f, &shape, i, &want),
                    _ => false,
                };
                if good {
                    kept.insert(i);
                    self.mark_verified(digest, i, count);
                } else {
                    tracing::warn!(task.digest = %digest, piece.index = i, "clearing piece that failed verification");
                }
            }
        }
        r.pieces_verified += kept.count() as usize;
        r.pieces_cleared += (recorded.count() - kept.count()) as usize;
        if kept != recorded {
            self.put_bitmap(digest, &kept)?;
        }
        r.in_progress += 1;
        Ok(Some(header.size))
    }

    /// Cuts a complete blob stored under another piece rule by this one: reads
    /// it once, records every piece's hash and marks them verified, if the
    /// whole still hashes to its digest (`false`: it does not, or cannot be
    /// read). Costs one read of the blob, once, at the first start after an
    /// upgrade.
    fn recut(&self, digest: &Digest, shape: &TaskShape, path: &Path) -> Result<bool, StoreError> {
        let Ok(file) = std::fs::File::open(path) else {
            return Ok(false);
        };
        let mut whole = Sha256::new();
        let mut batch = sled::Batch::default();
        let mut buf = vec![0; shape.piece_size() as usize];
        for i in 0..shape.piece_count() {
            let range = shape.piece_range(i)?;
            let piece = &mut buf[..(range.end - range.start) as usize];
            if file.read_exact_at(piece, range.start).is_err() {
                return Ok(false);
            }
            whole.update(&*piece);
            batch.insert(
                &record::hash_key(digest, i)[..],
                Sha256::digest(&*piece).as_slice(),
            );
        }
        if whole.finalize().as_slice() != digest.as_bytes() {
            return Ok(false);
        }
        self.hashes.apply_batch(batch).map_err(|e| self.db_err(e))?;
        for i in 0..shape.piece_count() {
            self.mark_verified(digest, i, shape.piece_count());
        }
        Ok(true)
    }

    pub(super) fn put_bitmap(&self, digest: &Digest, pieces: &PieceSet) -> Result<(), StoreError> {
        self.pieces
            .insert(digest.as_bytes(), pieces.to_bytes())
            .map(drop)
            .map_err(|e| self.db_err(e))
    }

    fn delete_orphan_records(&self, live: &HashSet<Digest>) -> Result<usize, StoreError> {
        let mut n = 0;
        for tree in [&self.pieces, &self.access] {
            for k in tree.iter().keys() {
                let k = k.map_err(|e| self.db_err(e))?;
                if !record::digest_key(&k).is_some_and(|d| live.contains(&d)) {
                    tree.remove(&k).map_err(|e| self.db_err(e))?;
                    n += 1;
                }
            }
        }
        for k in self.hashes.iter().keys() {
            let k = k.map_err(|e| self.db_err(e))?;
            if !record::split_hash_key(&k).is_some_and(|(d, _)| live.contains(&d)) {
                self.hashes.remove(&k).map_err(|e| self.db_err(e))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes blob files named by a digest that has no task. Other names are
    /// left alone: the store never made them.
    fn delete_orphan_files(&self, live: &HashSet<Digest>) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.blob_dir) else {
            return 0;
        };
        let mut n = 0;
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|s| format!("sha256:{s}").parse::<Digest>().ok())
            else {
                continue;
            };
            if !live.contains(&digest) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => n += 1,
                    Err(e) => drop(self.io_err("delete", entry.path(), e)),
                }
            }
        }
        n
    }
}

/// True when piece `i` of the file hashes to `want`.
fn piece_matches(file: &std::fs::File, shape: &TaskShape, i: u32, want: &[u8; 32]) -> bool {
    let Ok(range) = shape.piece_range(i) else {
        return false;
    };
    let mut buf = vec![0; (range.end - range.start) as usize];
    if file.read_exact_at(&mut buf, range.start).is_err() {
        return false;
    }
    Sha256::digest(&buf).as_slice() == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PieceStore, StoreConfig};

    /// A store written by an older Shoal (piece rule 1, 4 MiB pieces) opens
    /// under this rule: the complete blob is cut again and every piece reads
    /// back verified; the half-fetched one starts over; nothing else is lost.
    #[test]
    fn a_store_of_an_older_piece_rule_keeps_its_complete_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let size = 5 * u64::from(shoal_proto::piece::MIN_PIECE_SIZE) / 2;
        let blob = |seed: u8| -> (Digest, Vec<u8>) {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ seed).collect();
            (Digest::from_sha256(Sha256::digest(&data).into()), data)
        };
        let ((done, done_data), (half, half_data)) = (blob(1), blob(2));
        let shape = TaskShape::for_size(size).unwrap();
        let piece = |data: &[u8], i: u32| {
            let r = shape.piece_range(i).unwrap();
            data[r.start as usize..r.end as usize].to_vec()
        };
        {
            let store = DiskStore::open(dir.path(), StoreConfig::default()).unwrap();
            for (d, data, n) in [(done, &done_data, 3), (half, &half_data, 2)] {
                store.open(d, shape).unwrap();
                let hashes: Vec<_> = (0..3)
                    .map(|i| (i, Sha256::digest(piece(data, i)).into()))
                    .collect();
                store.set_hashes(&d, &hashes).unwrap();
                for i in 0..n {
                    store.write_piece(&d, i, &piece(data, i)).unwrap();
                }
            }
            store.mark_complete(&done).unwrap();
            // As rule 1 recorded them: one 4 MiB piece each.
            for d in [done, half] {
                let mut h = store.header(&d).unwrap().unwrap();
                h.piece_size = 4 << 20;
                store.tasks.insert(d.as_bytes(), h.encode()).unwrap();
            }
            store.flush().unwrap();
        }
        let store = DiskStore::open(dir.path(), StoreConfig::default()).unwrap();
        let r = store.recovery().clone();
        assert_eq!((r.complete, r.recut, r.in_progress), (1, 1, 1), "{r:?}");
        assert!(store.meta(&done).unwrap().unwrap().complete);
        for i in 0..3 {
            let got = store.read_piece(&done, i).unwrap().unwrap();
            assert_eq!(&got[..], &piece(&done_data, i)[..], "piece {i}");
        }
        assert_eq!(store.damaged_pieces(), 0);
        let m = store.meta(&half).unwrap().unwrap();
        assert!(!m.complete && m.pieces.is_empty());
    }
}
