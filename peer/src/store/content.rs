//! containerd's content store as a source of blobs: [`ContentLayer`] puts the blobs
//! containerd has committed (`<dir>/blobs/sha256/<hex>`) in front of the peer's own
//! store, read-only, so that a layer sits on the node's disk once and images that were
//! on the node before Shoal are shared too.
//!
//! - **Adoption** ([`ContentLayer::scan`]): a blob file is read whole once, every piece
//!   hashed and the whole file checked against its digest. Only then is it adopted:
//!   listed as a complete task with those piece hashes (announced to the scheduler by
//!   the caller), served to peers and to the mirror. A file that does not match its
//!   digest is never adopted (counted, logged, skipped until it changes size).
//! - **One copy**: when containerd has committed a blob this peer also holds complete in
//!   its own store, the own copy is deleted once the containerd file is adopted (unless
//!   a reader has it pinned; the next scan tries again).
//! - **Every read is verified**: containerd's files are not ours, so each piece read
//!   from them is hashed and compared with the hash taken at adoption. A mismatch drops
//!   the adoption ([`StoreError::PieceDamaged`]), and a file containerd deleted drops it
//!   too (the read answers "not present"): either way the task is no longer complete
//!   here, and [`ContentLayer::take_lost`] gives the caller the digests to report.
//! - **Never written**: nothing here opens containerd's files for writing, deletes or
//!   renames them; garbage collection only ever sees the own store. An operator's drop
//!   forgets the adoption (and keeps it forgotten while the file stays).
//!
//! Writes for a task that is not adopted, pins, garbage collection and usage go to the
//! own store unchanged.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};
use shoal_proto::digest::Digest;
use shoal_proto::piece::{PieceSet, TaskShape};
use tracing::{debug, info, warn};

use super::{PieceStore, PinGuard, StoreError, TaskMeta};

/// One adopted blob: where it is and what its pieces hash to.
#[derive(Debug, Clone)]
struct Adopted {
    shape: TaskShape,
    hashes: Vec<[u8; 32]>,
}

/// Counters of the layer.
#[derive(Debug, Default)]
pub struct ContentStats {
    /// Blobs adopted since start.
    pub adopted: AtomicU64,
    /// Files that did not match their digest (never adopted).
    pub rejected: AtomicU64,
    /// Own copies deleted because containerd holds the blob.
    pub own_copies_dropped: AtomicU64,
    /// Adoptions dropped: the file was deleted, or a piece no longer matched.
    pub lost: AtomicU64,
    /// Bytes read from containerd's files to serve pieces.
    pub bytes_served: AtomicU64,
}

/// What one scan did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Newly adopted blobs this peer did not hold before: (digest, size, piece hashes),
    /// to announce.
    pub adopted: Vec<(Digest, u64, Vec<[u8; 32]>)>,
    /// Newly adopted blobs whose own copy was deleted (already announced).
    pub deduplicated: Vec<Digest>,
    /// Files that failed their digest.
    pub rejected: Vec<Digest>,
    /// Bytes read to hash.
    pub bytes_read: u64,
}

/// The own store with containerd's committed blobs in front of it.
pub struct ContentLayer {
    own: Arc<dyn PieceStore>,
    dir: PathBuf,
    adopted: Mutex<HashMap<Digest, Adopted>>,
    /// Files not to adopt, with the size they had: rejected (until they change) or
    /// dropped by an operator.
    skipped: Mutex<HashMap<Digest, u64>>,
    /// Adoptions lost since the last [`ContentLayer::take_lost`].
    lost: Mutex<HashSet<Digest>>,
    /// Counters.
    pub stats: Arc<ContentStats>,
}

impl std::fmt::Debug for ContentLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentLayer")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ContentLayer {
    /// The layer over `own`, reading containerd's content store at `dir` (e.g.
    /// `/var/lib/containerd/io.containerd.content.v1.content`). Nothing is adopted
    /// before the first [`ContentLayer::scan`].
    pub fn new(own: Arc<dyn PieceStore>, dir: PathBuf) -> ContentLayer {
        ContentLayer {
            own,
            dir,
            adopted: Mutex::new(HashMap::new()),
            skipped: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            stats: Arc::default(),
        }
    }

    /// The content store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let s = digest.to_string();
        let (algo, hex) = s.split_once(':').unwrap_or(("sha256", &s));
        self.dir.join("blobs").join(algo).join(hex)
    }

    /// Blobs adopted now and their total size.
    pub fn adopted_count(&self) -> (usize, u64) {
        let a = lock(&self.adopted);
        (a.len(), a.values().map(|b| b.shape.size()).sum())
    }

    /// Whether `digest` is served from containerd's file.
    pub fn is_adopted(&self, digest: &Digest) -> bool {
        lock(&self.adopted).contains_key(digest)
    }

    /// The digests whose adoption was lost since the last call (the file deleted, or
    /// damaged), to report evicted unless the own store still holds them complete.
    pub fn take_lost(&self) -> Vec<Digest> {
        lock(&self.lost).drain().collect()
    }

    /// Looks at containerd's committed blobs: adopts the new ones (reading each whole,
    /// `pace` called with the bytes read after every piece so the caller can bound the
    /// rate), deletes own copies of adopted blobs, forgets adoptions whose file is gone.
    /// Blocking.
    pub fn scan(&self, mut pace: impl FnMut(u64)) -> std::io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let files = list_blobs(&self.dir.join("blobs").join("sha256"))?;
        let present: HashSet<Digest> = files.iter().map(|(d, _)| *d).collect();
        // Files containerd deleted.
        let gone: Vec<Digest> = lock(&self.adopted)
            .keys()
            .filter(|d| !present.contains(d))
            .copied()
            .collect();
        for d in gone {
            self.lose(&d, "containerd deleted the blob");
        }
        for (digest, size) in files {
            if self.is_adopted(&digest) || lock(&self.skipped).get(&digest) == Some(&size) {
                continue;
            }
            let Ok(shape) = TaskShape::for_size(size) else {
                continue;
            };
            match hash_file(&self.path(&digest), shape, &digest, &mut pace) {
                Ok(Some(hashes)) => {
                    report.bytes_read += size;
                    self.adopt(digest, shape, hashes, &mut report);
                }
                Ok(None) => {
                    report.bytes_read += size;
                    warn!(task.digest = %digest, path = %self.path(&digest).display(), "containerd's blob does not match its digest: not served");
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    lock(&self.skipped).insert(digest, size);
                    report.rejected.push(digest);
                }
                // Deleted or unreadable meanwhile: the next scan looks again.
                Err(e) => debug!(task.digest = %digest, error = %e, "containerd's blob unreadable"),
            }
        }
        Ok(report)
    }

    fn adopt(
        &self,
        digest: Digest,
        shape: TaskShape,
        hashes: Vec<[u8; 32]>,
        report: &mut ScanReport,
    ) {
        let own = self.own.meta(&digest).ok().flatten();
        lock(&self.adopted).insert(
            digest,
            Adopted {
                shape,
                hashes: hashes.clone(),
            },
        );
        self.stats.adopted.fetch_add(1, Ordering::Relaxed);
        match own {
            Some(m) if m.complete => {
                // A blob lives on disk once: containerd's copy from now on.
                if !self.own.is_pinned(&digest) && self.own.remove(&digest).is_ok() {
                    self.stats
                        .own_copies_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    info!(task.digest = %digest, "containerd holds the blob: own copy deleted, serving containerd's");
                }
                report.deduplicated.push(digest);
            }
            _ => {
                if own.is_some() && !self.own.is_pinned(&digest) {
                    // An unfinished own download nobody is using: containerd's copy
                    // wins. (One in use is left alone; its writes and completion are
                    // no-ops from now on, and garbage collection takes it later.)
                    let _ = self.own.remove(&digest);
                }
                debug!(task.digest = %digest, size = shape.size(), "containerd's blob adopted");
                report.adopted.push((digest, shape.size(), hashes));
            }
        }
    }

    fn lose(&self, digest: &Digest, why: &str) {
        if lock(&self.adopted).remove(digest).is_some() {
            warn!(task.digest = %digest, reason = why, "containerd's blob no longer served");
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            lock(&self.lost).insert(*digest);
        }
    }

    fn adopted(&self, digest: &Digest) -> Option<Adopted> {
        lock(&self.adopted).get(digest).cloned()
    }

    fn meta_of(digest: Digest, a: &Adopted) -> TaskMeta {
        TaskMeta {
            digest,
            shape: a.shape,
            hashes: a.hashes.iter().map(|h| Some(*h)).collect(),
            pieces: PieceSet::full(a.shape.piece_count()),
            complete: true,
            media_type: None,
            last_access: 0,
        }
    }

    fn read_adopted(
        &self,
        digest: &Digest,
        index: u32,
        a: &Adopted,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        let range = a.shape.piece_range(index)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let read =
            File::open(self.path(digest)).and_then(|f| f.read_exact_at(&mut buf, range.start));
        if let Err(e) = read {
            // Deleted by containerd (or cut short): cleanly not here any more.
            self.lose(digest, &format!("read failed: {e}"));
            return Ok(None);
        }
        let hash: [u8; 32] = Sha256::digest(&buf).into();
        if a.hashes.get(index as usize) != Some(&hash) {
            self.lose(digest, "a piece no longer matches its hash");
            return Err(StoreError::PieceDamaged {
                digest: *digest,
                index,
            });
        }
        self.stats
            .bytes_served
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(Some(buf.into()))
    }
}

/// `(digest, size)` of every regular file named by a SHA-256 hex digest in `dir`.
fn list_blobs(dir: &Path) -> std::io::Result<Vec<(Digest, u64)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some(digest) = name
            .to_str()
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
        else {
            continue;
        };
        out.push((digest, meta.len()));
    }
    out.sort();
    Ok(out)
}

/// Every piece's hash of the file at `path`, if the whole file matches `digest`.
fn hash_file(
    path: &Path,
    shape: TaskShape,
    digest: &Digest,
    pace: &mut impl FnMut(u64),
) -> std::io::Result<Option<Vec<[u8; 32]>>> {
    let mut f = File::open(path)?;
    let mut whole = Sha256::new();
    let mut hashes = Vec::with_capacity(shape.piece_count() as usize);
    let mut buf = vec![0u8; shape.piece_size() as usize];
    for i in 0..shape.piece_count() {
        let len = shape.piece_len(i).map_err(std::io::Error::other)? as usize;
        f.read_exact(&mut buf[..len])?;
        whole.update(&buf[..len]);
        hashes.push(Sha256::digest(&buf[..len]).into());
        pace(len as u64);
    }
    let mut rest = [0u8; 1];
    if f.read(&mut rest)? != 0 {
        return Ok(None);
    }
    let got = format!("sha256:{:x}", whole.finalize());
    Ok((got == digest.to_string()).then_some(hashes))
}

impl PieceStore for ContentLayer {
    fn open(&self, digest: Digest, shape: TaskShape) -> Result<TaskMeta, StoreError> {
        match self.adopted(&digest) {
            Some(a) if a.shape.size() == shape.size() => Ok(Self::meta_of(digest, &a)),
            Some(a) => Err(StoreError::SizeMismatch {
                digest,
                stored: a.shape.size(),
                requested: shape.size(),
            }),
            None => self.own.open(digest, shape),
        }
    }

    fn meta(&self, digest: &Digest) -> Result<Option<TaskMeta>, StoreError> {
        match self.adopted(digest) {
            Some(a) => Ok(Some(Self::meta_of(*digest, &a))),
            None => self.own.meta(digest),
        }
    }

    fn set_hashes(&self, digest: &Digest, hashes: &[(u32, [u8; 32])]) -> Result<(), StoreError> {
        match self.adopted(digest) {
            Some(a) => {
                for (i, h) in hashes {
                    if a.hashes.get(*i as usize).is_some_and(|k| k != h) {
                        return Err(StoreError::HashConflict {
                            digest: *digest,
                            index: *i,
                        });
                    }
                }
                Ok(())
            }
            None => self.own.set_hashes(digest, hashes),
        }
    }

    fn set_media_type(&self, digest: &Digest, media_type: &str) -> Result<(), StoreError> {
        if self.is_adopted(digest) {
            return Ok(());
        }
        self.own.set_media_type(digest, media_type)
    }

    fn write_piece(&self, digest: &Digest, index: u32, bytes: &[u8]) -> Result<(), StoreError> {
        if self.is_adopted(digest) {
            return Ok(());
        }
        self.own.write_piece(digest, index, bytes)
    }

    fn read_piece(&self, digest: &Digest, index: u32) -> Result<Option<bytes::Bytes>, StoreError> {
        match self.adopted(digest) {
            Some(a) => self.read_adopted(digest, index, &a),
            None => self.own.read_piece(digest, index),
        }
    }

    fn mark_complete(&self, digest: &Digest) -> Result<(), StoreError> {
        if self.is_adopted(digest) {
            return Ok(());
        }
        self.own.mark_complete(digest)
    }

    fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        if let Some(a) = lock(&self.adopted).remove(digest) {
            // Forgotten, never deleted: the file is containerd's.
            lock(&self.skipped).insert(*digest, a.shape.size());
        }
        self.own.remove(digest)
    }

    fn list(&self) -> Result<Vec<TaskMeta>, StoreError> {
        let adopted: Vec<TaskMeta> = lock(&self.adopted)
            .iter()
            .map(|(d, a)| Self::meta_of(*d, a))
            .collect();
        let mut own = self.own.list()?;
        own.retain(|m| !adopted.iter().any(|a| a.digest == m.digest));
        own.extend(adopted);
        Ok(own)
    }

    fn pin(&self, digest: &Digest) -> PinGuard {
        self.own.pin(digest)
    }

    fn is_pinned(&self, digest: &Digest) -> bool {
        self.own.is_pinned(digest)
    }

    fn collect_garbage(&self) -> Result<Vec<Digest>, StoreError> {
        // Only the own store: containerd's files are containerd's to collect.
        self.own.collect_garbage()
    }

    fn usage_bytes(&self) -> u64 {
        self.own.usage_bytes()
    }

    fn capacity(&self) -> u64 {
        self.own.capacity()
    }

    fn damaged_pieces(&self) -> u64 {
        self.own.damaged_pieces()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn digest_of(b: &[u8]) -> Digest {
        format!("sha256:{:x}", Sha256::digest(b)).parse().unwrap()
    }

    fn content_dir(blobs: &[&[u8]]) -> (tempfile::TempDir, Vec<Digest>) {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&b).unwrap();
        let mut ds = Vec::new();
        for blob in blobs {
            let d = digest_of(blob);
            let hex = d.to_string()[7..].to_owned();
            std::fs::write(b.join(hex), blob).unwrap();
            ds.push(d);
        }
        (dir, ds)
    }

    fn file(dir: &Path, d: &Digest) -> PathBuf {
        dir.join("blobs/sha256").join(&d.to_string()[7..])
    }

    #[test]
    fn adopts_matching_blobs_and_serves_verified_pieces() {
        let good = vec![7u8; 5 << 20];
        let (dir, ds) = content_dir(&[&good, b"small"]);
        let layer = ContentLayer::new(Arc::new(MemStore::default()), dir.path().into());
        assert!(layer.meta(&ds[0]).unwrap().is_none());
        let r = layer.scan(|_| {}).unwrap();
        assert_eq!(r.adopted.len(), 2);
        let m = layer.meta(&ds[0]).unwrap().unwrap();
        assert!(m.complete && m.shape.size() == good.len() as u64);
        let n = m.shape.piece_count();
        let mut back = Vec::new();
        for i in 0..n {
            back.extend_from_slice(&layer.read_piece(&ds[0], i).unwrap().unwrap());
        }
        assert_eq!(back, good);
        assert_eq!(layer.list().unwrap().len(), 2);
        // A second scan reads nothing again.
        assert_eq!(layer.scan(|_| {}).unwrap(), ScanReport::default());
    }

    #[test]
    fn a_file_that_does_not_match_its_digest_is_never_adopted() {
        let (dir, ds) = content_dir(&[b"right bytes"]);
        std::fs::write(file(dir.path(), &ds[0]), b"wrong bytes").unwrap();
        let layer = ContentLayer::new(Arc::new(MemStore::default()), dir.path().into());
        let r = layer.scan(|_| {}).unwrap();
        assert_eq!(r.rejected, vec![ds[0]]);
        assert!(layer.meta(&ds[0]).unwrap().is_none());
        assert_eq!(layer.read_piece(&ds[0], 0).unwrap(), None);
        // Not hashed again while it stays the same size.
        assert_eq!(layer.scan(|_| {}).unwrap().bytes_read, 0);
    }

    #[test]
    fn damage_or_deletion_after_adoption_is_never_served() {
        let (dir, ds) = content_dir(&[b"first blob", b"second blob"]);
        let layer = ContentLayer::new(Arc::new(MemStore::default()), dir.path().into());
        layer.scan(|_| {}).unwrap();
        std::fs::write(file(dir.path(), &ds[0]), b"first BLOB").unwrap();
        assert!(matches!(
            layer.read_piece(&ds[0], 0),
            Err(StoreError::PieceDamaged { .. })
        ));
        assert!(layer.meta(&ds[0]).unwrap().is_none());
        std::fs::remove_file(file(dir.path(), &ds[1])).unwrap();
        assert_eq!(layer.read_piece(&ds[1], 0).unwrap(), None);
        assert!(layer.meta(&ds[1]).unwrap().is_none());
        let mut lost = layer.take_lost();
        lost.sort();
        let mut want = ds.clone();
        want.sort();
        assert_eq!(lost, want);
        // The damaged file was never deleted or rewritten by the layer.
        assert_eq!(
            std::fs::read(file(dir.path(), &ds[0])).unwrap(),
            b"first BLOB"
        );
    }

    #[test]
    fn an_own_complete_copy_is_deleted_once_containerd_holds_the_blob() {
        let blob = b"layer bytes".to_vec();
        let d = digest_of(&blob);
        let own: Arc<dyn PieceStore> = Arc::new(MemStore::default());
        let shape = TaskShape::for_size(blob.len() as u64).unwrap();
        own.open(d, shape).unwrap();
        own.set_hashes(&d, &[(0, Sha256::digest(&blob).into())])
            .unwrap();
        own.write_piece(&d, 0, &blob).unwrap();
        own.mark_complete(&d).unwrap();
        let (dir, _) = content_dir(&[&blob]);
        let layer = ContentLayer::new(own.clone(), dir.path().into());
        let r = layer.scan(|_| {}).unwrap();
        assert_eq!(r.deduplicated, vec![d]);
        assert!(r.adopted.is_empty(), "already announced");
        assert!(own.meta(&d).unwrap().is_none(), "own copy kept");
        assert_eq!(layer.read_piece(&d, 0).unwrap().unwrap(), blob);
        // Garbage collection never sees containerd's blob; a drop forgets it.
        assert_eq!(layer.usage_bytes(), 0);
        layer.remove(&d).unwrap();
        assert!(layer.meta(&d).unwrap().is_none());
        assert!(file(dir.path(), &d).exists());
        assert!(layer.scan(|_| {}).unwrap().adopted.is_empty());
    }
}
