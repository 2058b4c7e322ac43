//! Piece arithmetic and [`PieceSet`].
//!
//! A task (blob) of `size` bytes is cut into pieces of `piece_size` bytes; the
//! last piece is short. The piece size is a power of two chosen from the size
//! alone, so every peer and the scheduler agree on it without asking:
//! 256 KiB up to 512 MiB blobs (at most 2,048 pieces), then the smallest power of
//! two that keeps a task at 1,024 pieces (1 MiB at 1 GiB, 4 MiB at 4 GiB) up to
//! 16 MiB, so a task has at most a few thousand pieces up to 64 GiB.
//!
//! That choice is the **piece rule** ([`PIECE_RULE`]). A piece index means
//! nothing between parties of different rules, so peers and the scheduler
//! exchange their rule at join and refuse a mismatch, and the peer protocol's
//! ALPN names the rule. Rule 1 (Shoal up to 0.1, sent as 0 or absent) had a
//! 4 MiB minimum; rule 2 lowered it to 512 KiB, so a 256 MiB layer is cut into
//! 512 pieces instead of 64 and each piece is passed on sooner; rule 3 halved the
//! pieces of blobs up to 512 MiB again (256 KiB): a child of a swarm needs a buffer
//! of about thirty pieces on their way or to be had to keep its link busy, and
//! halving the piece halves the time that buffer costs it. Larger blobs keep rule
//! 2's pieces: twice their pieces cost the scheduler more than its targets allow
//! (`docs/benchmarks.md`, "Smaller pieces again").

use std::ops::Range;

/// The rule [`piece_size_for`] follows. Bump it whenever that function changes.
pub const PIECE_RULE: u32 = 3;
/// The piece rule a peer or scheduler sent: 0 (absent, an older Shoal) is rule 1.
pub fn rule_sent(sent: u32) -> u32 {
    sent.max(1)
}
/// Smallest piece size (256 KiB).
pub const MIN_PIECE_SIZE: u32 = 256 << 10;
/// Largest piece size (16 MiB).
pub const MAX_PIECE_SIZE: u32 = 16 << 20;
/// Blobs up to this size (512 MiB) are cut into [`MIN_PIECE_SIZE`] pieces: at most
/// [`MAX_FINE_PIECES`].
pub const FINE_PIECES_UP_TO: u64 = 512 << 20;
/// The most pieces a blob of at most [`FINE_PIECES_UP_TO`] has (2,048).
pub const MAX_FINE_PIECES: u64 = FINE_PIECES_UP_TO / MIN_PIECE_SIZE as u64;
/// Pieces per task the size choice aims to stay under above [`FINE_PIECES_UP_TO`].
pub const TARGET_PIECES: u64 = 1024;
/// Largest task Shoal accepts (1 TiB); anything bigger is treated as bad input.
pub const MAX_TASK_SIZE: u64 = 1 << 40;

/// Why a task shape or piece index is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The size is larger than [`MAX_TASK_SIZE`].
    #[error("task size {0} bytes exceeds the limit of {MAX_TASK_SIZE} bytes")]
    TooLarge(u64),
    /// The piece index is not below the piece count.
    #[error("piece index {index} is out of range: the task has {count} pieces")]
    IndexOutOfRange {
        /// The index asked for.
        index: u32,
        /// How many pieces the task has.
        count: u32,
    },
    /// A bitmap's length does not match the piece count.
    #[error("piece bitmap has {got} bytes, expected {want} for {count} pieces")]
    BitmapLength {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
        /// Pieces of the task.
        count: u32,
    },
}

/// The piece size Shoal uses for a blob of `size` bytes.
pub fn piece_size_for(size: u64) -> u32 {
    if size <= FINE_PIECES_UP_TO {
        return MIN_PIECE_SIZE;
    }
    let wanted = size.div_ceil(TARGET_PIECES).next_power_of_two();
    wanted.clamp(MIN_PIECE_SIZE as u64, MAX_PIECE_SIZE as u64) as u32
}

/// The size of a task and how it is cut into pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskShape {
    size: u64,
    piece_size: u32,
}

impl TaskShape {
    /// The shape of a task of `size` bytes, with the piece size from
    /// [`piece_size_for`].
    pub fn for_size(size: u64) -> Result<Self, PieceError> {
        if size > MAX_TASK_SIZE {
            return Err(PieceError::TooLarge(size));
        }
        Ok(TaskShape {
            size,
            piece_size: piece_size_for(size),
        })
    }

    /// Size of the task in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size of every piece but the last, in bytes.
    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    /// Number of pieces (0 for an empty blob).
    pub fn piece_count(&self) -> u32 {
        self.size.div_ceil(self.piece_size as u64) as u32
    }

    /// Byte range of piece `index` within the task.
    pub fn piece_range(&self, index: u32) -> Result<Range<u64>, PieceError> {
        self.check_index(index)?;
        let start = index as u64 * self.piece_size as u64;
        let end = (start + self.piece_size as u64).min(self.size);
        Ok(start..end)
    }

    /// Length of piece `index` in bytes.
    pub fn piece_len(&self, index: u32) -> Result<u32, PieceError> {
        self.piece_range(index).map(|r| (r.end - r.start) as u32)
    }

    /// The piece that holds byte `offset`, or `None` past the end.
    pub fn piece_at(&self, offset: u64) -> Option<u32> {
        (offset < self.size).then(|| (offset / self.piece_size as u64) as u32)
    }

    /// `Ok` when `index` names a piece of this task.
    pub fn check_index(&self, index: u32) -> Result<(), PieceError> {
        let count = self.piece_count();
        if index < count {
            Ok(())
        } else {
            Err(PieceError::IndexOutOfRange { index, count })
        }
    }
}

/// A set of piece indexes below a fixed count, as a bitmap.
///
/// On the wire (`Parent.pieces`) bit `i % 8` of byte `i / 8` is piece `i`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PieceSet {
    words: Box<[u64]>,
    count: u32,
    len: u32,
}

impl std::fmt::Debug for PieceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PieceSet({}/{})", self.count, self.len)
    }
}

impl PieceSet {
    /// An empty set for a task of `len` pieces.
    pub fn new(len: u32) -> Self {
        PieceSet {
            words: vec![0; (len as usize).div_ceil(64)].into_boxed_slice(),
            count: 0,
            len,
        }
    }

    /// The set holding every piece of a task of `len` pieces.
    pub fn full(len: u32) -> Self {
        let mut s = PieceSet::new(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    /// Number of pieces the task has (the universe, not the members).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when no piece is in the set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when every piece is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// True when piece `i` is in the set (false for indexes out of range).
    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds piece `i`; returns true when it was not there before.
    ///
    /// # Panics
    /// When `i` is out of range; callers check indexes with
    /// [`TaskShape::check_index`] first.
    pub fn insert(&mut self, i: u32) -> bool {
        assert!(i < self.len, "piece {i} out of range {}", self.len);
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.count += new as u32;
        new
    }

    /// Removes piece `i` (no-op when out of range); returns true when it was there.
    pub fn remove(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        let had = *w & bit != 0;
        *w &= !bit;
        self.count -= had as u32;
        had
    }

    /// The lowest piece not in the set, if any.
    pub fn first_missing(&self) -> Option<u32> {
        self.missing_from(0)
    }

    /// The lowest piece `>= from` not in the set, if any.
    pub fn missing_from(&self, from: u32) -> Option<u32> {
        (from..self.len).find(|&i| !self.contains(i))
    }

    /// The lowest piece in `self` that is not in `other` (`None` when `self` is
    /// a subset of `other`, or the universes differ).
    pub fn first_not_in(&self, other: &PieceSet) -> Option<u32> {
        if self.len != other.len {
            return None;
        }
        for (w, (a, b)) in self.words.iter().zip(other.words.iter()).enumerate() {
            let diff = a & !b;
            if diff != 0 {
                return Some(w as u32 * 64 + diff.trailing_zeros());
            }
        }
        None
    }

    /// Adds every member of `other` (same universe; otherwise nothing).
    pub fn union_with(&mut self, other: &PieceSet) {
        if self.len != other.len {
            return;
        }
        let mut count = 0;
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= b;
            count += a.count_ones();
        }
        self.count = count;
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }

    /// True when every member of `self` is in `other`.
    pub fn is_subset(&self, other: &PieceSet) -> bool {
        self.len == other.len
            && self
                .words
                .iter()
                .zip(other.words.iter())
                .all(|(a, b)| a & !b == 0)
    }

    /// Bytes of memory the bitmap holds.
    pub fn heap_bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// The wire form: `len.div_ceil(8)` bytes, LSB first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = (self.len as usize).div_ceil(8);
        let mut out = Vec::with_capacity(n);
        for w in self.words.iter() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Parses the wire form for a task of `len` pieces. Bits past `len` must be 0.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, PieceError> {
        let want = (len as usize).div_ceil(8);
        if bytes.len() != want {
            return Err(PieceError::BitmapLength {
                got: bytes.len(),
                want,
                count: len,
            });
        }
        let mut s = PieceSet::new(len);
        for (i, byte) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let idx = (i * 8 + bit) as u32;
                    if idx >= len {
                        return Err(PieceError::IndexOutOfRange {
                            index: idx,
                            count: len,
                        });
                    }
                    s.insert(idx);
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn piece_sizes() {
        assert_eq!(piece_size_for(0), MIN_PIECE_SIZE);
        assert_eq!(piece_size_for(1), MIN_PIECE_SIZE);
        // Rule 3: 256 KiB up to 512 MiB (2,048 pieces at most), then 1,024 pieces
        // a task up to 16 MiB pieces, as rule 2.
        assert_eq!(MIN_PIECE_SIZE, 256 << 10);
        assert_eq!(MAX_FINE_PIECES, 2048);
        assert_eq!(piece_size_for(256 << 20), MIN_PIECE_SIZE);
        assert_eq!(piece_size_for((256 << 20) + 43_839), MIN_PIECE_SIZE);
        assert_eq!(piece_size_for(512 << 20), MIN_PIECE_SIZE);
        assert_eq!(piece_size_for((512 << 20) + 1), 1 << 20);
        assert_eq!(piece_size_for(1 << 30), 1 << 20);
        assert_eq!(piece_size_for(2 << 30), 2 << 20);
        assert_eq!(piece_size_for(8 << 30), 8 << 20);
        assert_eq!(piece_size_for(500 << 30), MAX_PIECE_SIZE);
        assert_eq!(TaskShape::for_size(512 << 20).unwrap().piece_count(), 2048);
        assert_eq!(TaskShape::for_size(1 << 30).unwrap().piece_count(), 1024);
        let s = TaskShape::for_size(5 << 17).unwrap();
        assert_eq!(s.piece_count(), 3);
        assert_eq!(s.piece_range(2).unwrap(), (4 << 17)..(5 << 17));
        assert_eq!(s.piece_len(2).unwrap(), 1 << 17);
        assert!(matches!(
            s.piece_range(3),
            Err(PieceError::IndexOutOfRange { index: 3, count: 3 })
        ));
        assert_eq!(s.piece_at((4 << 17) + 1), Some(2));
        assert_eq!(s.piece_at(5 << 17), None);
        assert_eq!(TaskShape::for_size(0).unwrap().piece_count(), 0);
        assert!(TaskShape::for_size(MAX_TASK_SIZE + 1).is_err());
    }

    #[test]
    fn remove_clears_one_piece_and_counts() {
        let mut s = PieceSet::full(70);
        assert!(s.remove(65));
        assert!(!s.remove(65));
        assert!(!s.remove(70));
        assert_eq!(s.count(), 69);
        assert!(!s.contains(65) && s.contains(64) && s.contains(66));
        assert_eq!(s.first_missing(), Some(65));
    }

    #[test]
    fn bitmap_rejects_bits_past_the_end() {
        assert!(PieceSet::from_bytes(&[0b1000_0000], 7).is_err());
        assert!(PieceSet::from_bytes(&[0, 0], 7).is_err());
        assert_eq!(
            PieceSet::from_bytes(&[0b0100_0001], 7)
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            vec![0, 6]
        );
    }

    proptest! {
        #[test]
        fn pieces_tile_the_task(size in 0u64..(40u64 << 30)) {
            let s = TaskShape::for_size(size).unwrap();
            let n = s.piece_count();
            prop_assert!(n as u64 <= 4 * TARGET_PIECES);
            if n > 0 {
                prop_assert_eq!(s.piece_range(0).unwrap().start, 0);
                prop_assert_eq!(s.piece_range(n - 1).unwrap().end, size);
                prop_assert!(s.piece_len(n - 1).unwrap() > 0);
                let mid = size / 2;
                let p = s.piece_at(mid).unwrap();
                prop_assert!(s.piece_range(p).unwrap().contains(&mid));
            }
        }

        #[test]
        fn bitmap_round_trips(len in 0u32..3000, picks in proptest::collection::vec(any::<u32>(), 0..200)) {
            let mut s = PieceSet::new(len);
            for p in picks {
                if len > 0 { s.insert(p % len); }
            }
            let back = PieceSet::from_bytes(&s.to_bytes(), len).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.count() as usize, s.iter().count());
            prop_assert!(s.is_subset(&PieceSet::full(len)));
            let mut u = PieceSet::new(len);
            u.union_with(&s);
            prop_assert_eq!(&u, &s);
            let full = PieceSet::full(len);
            u.union_with(&full);
            prop_assert_eq!(&u, &full);
            prop_assert_eq!(full.first_not_in(&s), s.first_missing());
            prop_assert_eq!(s.first_not_in(&full), None);
        }

        #[test]
        fn from_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), len in 0u32..600) {
            let _ = PieceSet::from_bytes(&bytes, len);
        }
    }
}
