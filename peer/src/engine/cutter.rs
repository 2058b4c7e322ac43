//! Cuts an upstream byte stream into pieces: pure, no I/O.
//!
//! Upstream answers a ranged GET from a piece boundary (or, when it ignores the
//! range, from an earlier offset: the extra bytes are skipped). [`PieceCutter`]
//! takes the body's chunks as they come and hands out whole pieces in order.

use bytes::{Bytes, BytesMut};
use shoal_proto::TaskShape;

/// Why the bytes do not fit the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutError {
    /// The body starts after the offset asked for, or the offset is past the end.
    #[error("asked for bytes from {asked}, got from {start}")]
    BadStart {
        /// The offset asked for.
        asked: u64,
        /// Where the body starts.
        start: u64,
    },
    /// More bytes than the blob holds.
    #[error("bytes past the blob's end")]
    PastEnd,
    /// The body ended inside a piece.
    #[error("body ended in piece {index} of {count}")]
    Short {
        /// The piece being filled.
        index: u32,
        /// The task's pieces.
        count: u32,
    },
}

/// Cuts the bytes of one body, from `from` (a piece boundary) on, into pieces.
#[derive(Debug)]
pub struct PieceCutter {
    shape: TaskShape,
    /// Bytes still to drop before `from`.
    skip: u64,
    /// The piece being filled (`piece_count` when every piece is out).
    index: u32,
    want: usize,
    buf: BytesMut,
}

impl PieceCutter {
    /// A cutter for a body starting at byte `start` of a task of `shape`, whose
    /// first wanted byte is `from` (a piece boundary, `start <= from <= size`).
    pub fn new(shape: TaskShape, from: u64, start: u64) -> Result<Self, CutError> {
        if start > from || from > shape.size() {
            return Err(CutError::BadStart { asked: from, start });
        }
        let index = shape.piece_at(from).unwrap_or(shape.piece_count());
        let mut c = PieceCutter {
            shape,
            skip: from - start,
            index,
            want: 0,
            buf: BytesMut::new(),
        };
        c.want = c.piece_len(index);
        c.buf.reserve(c.want);
        Ok(c)
    }

    fn piece_len(&self, index: u32) -> usize {
        self.shape.piece_len(index).map_or(0, |l| l as usize)
    }

    /// True when every piece from `from` on has been handed out.
    pub fn is_done(&self) -> bool {
        self.index >= self.shape.piece_count()
    }

    /// Takes one chunk of the body; returns the pieces it completed, in order.
    pub fn push(&mut self, mut chunk: Bytes) -> Result<Vec<(u32, Bytes)>, CutError> {
        if self.skip > 0 {
            let n = (self.skip.min(chunk.len() as u64)) as usize;
            let _ = chunk.split_to(n);
            self.skip -= n as u64;
        }
        let mut out = Vec::new();
        while !chunk.is_empty() {
            if self.is_done() {
                return Err(CutError::PastEnd);
            }
            let n = (self.want - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk.split_to(n));
            if self.buf.len() == self.want {
                let piece = std::mem::take(&mut self.buf).freeze();
                out.push((self.index, piece));
                self.index += 1;
                self.want = self.piece_len(self.index);
                self.buf.reserve(self.want);
            }
        }
        Ok(out)
    }

    /// The body ended: an error unless every piece was handed out.
    pub fn finish(&self) -> Result<(), CutError> {
        if self.is_done() {
            Ok(())
        } else {
            Err(CutError::Short {
                index: self.index,
                count: self.shape.piece_count(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn body(size: u64) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn cuts_any_chunking_into_the_same_pieces() {
        let size = 9 * MIB + 17;
        let shape = TaskShape::for_size(size).unwrap();
        let all = body(size);
        for chunk in [1usize << 12, 1 << 20, 3 * (1 << 20) + 1, all.len()] {
            let mut c = PieceCutter::new(shape, 0, 0).unwrap();
            let mut got = Vec::new();
            for part in all.chunks(chunk) {
                got.extend(c.push(Bytes::copy_from_slice(part)).unwrap());
            }
            c.finish().unwrap();
            assert_eq!(got.len() as u32, shape.piece_count());
            for (i, p) in &got {
                let r = shape.piece_range(*i).unwrap();
                assert_eq!(&p[..], &all[r.start as usize..r.end as usize]);
            }
        }
    }

    #[test]
    fn skips_bytes_before_the_offset_asked_for() {
        let size = 12 * MIB;
        let shape = TaskShape::for_size(size).unwrap();
        let all = body(size);
        let from = shape.piece_range(1).unwrap().start;
        // Upstream ignored the range: the body starts at 0.
        let mut c = PieceCutter::new(shape, from, 0).unwrap();
        let got = c.push(Bytes::from(all.clone())).unwrap();
        c.finish().unwrap();
        assert_eq!(got[0].0, 1);
        assert_eq!(
            &got[0].1[..],
            &all[from as usize..(from + shape.piece_size() as u64) as usize]
        );
    }

    #[test]
    fn refuses_bad_starts_extra_bytes_and_short_bodies() {
        let piece = shoal_proto::piece::MIN_PIECE_SIZE as u64;
        let shape = TaskShape::for_size(2 * piece).unwrap();
        assert!(matches!(
            PieceCutter::new(shape, 0, 5),
            Err(CutError::BadStart { .. })
        ));
        assert!(PieceCutter::new(shape, 3 * piece, 0).is_err());
        let mut c = PieceCutter::new(shape, 0, 0).unwrap();
        assert_eq!(
            c.push(Bytes::from(vec![0u8; 2 * piece as usize + 1])),
            Err(CutError::PastEnd)
        );
        let mut c = PieceCutter::new(shape, 0, 0).unwrap();
        c.push(Bytes::from(vec![0u8; (piece + piece / 4) as usize]))
            .unwrap();
        assert!(matches!(c.finish(), Err(CutError::Short { index: 1, .. })));
    }

    #[test]
    fn an_empty_blob_is_done_at_once() {
        let shape = TaskShape::for_size(0).unwrap();
        let c = PieceCutter::new(shape, 0, 0).unwrap();
        assert!(c.is_done());
        c.finish().unwrap();
    }
}
