//! [`Download::reader`]: the blob's bytes from an offset, in order, each piece as soon
//! as it is verified. This is what the registry mirror streams to containerd.
//!
//! The last piece is held back until the whole blob matched its digest, and so is
//! every piece whose hash nobody knew before it arrived (an upstream piece with no
//! hash from the swarm: its only check is the digest). [`Download::first_ready`]
//! lets the mirror send its headers only once the first byte can follow.
//! The reader waits on the download's progress (a `watch` channel) and tells the
//! driver where it is, so the planner's window follows it. Not here: HTTP ranges and
//! headers (the mirror), verification (the driver only publishes verified pieces).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

use super::EngineError;
use super::download::{Download, DownloadState, Progress};

/// What the reader needs next.
enum Next {
    /// Piece `index` is readable.
    Piece(u32),
    /// Past the end: the stream is over.
    End,
    /// Not yet: wait for progress.
    Wait,
    /// The download failed (its error), or the offset is out of range.
    Fail(EngineError),
}

fn next(p: &Progress, offset: u64) -> Next {
    if let DownloadState::Failed(e) = &p.state {
        return Next::Fail(e.clone());
    }
    let Some(shape) = p.shape else {
        return Next::Wait;
    };
    if offset > shape.size() {
        return Next::Fail(EngineError::OutOfRange {
            offset,
            size: shape.size(),
        });
    }
    match shape.piece_at(offset) {
        // At the end (a zero-size blob, or every byte read): the stream ends only once
        // the blob matched its digest, so an empty body is checked like any other.
        None if matches!(p.state, DownloadState::Complete) => Next::End,
        None => Next::Wait,
        // The last piece waits for the whole blob to match its digest: a reader never
        // gets every byte of a blob that turns out wrong.
        Some(i) if i + 1 == shape.piece_count() && !matches!(p.state, DownloadState::Complete) => {
            Next::Wait
        }
        Some(i) if p.have.contains(i) => Next::Piece(i),
        // Complete, yet the piece is not readable: it will not come (it was lost
        // after the download ended). End the body; the client resumes with a Range.
        Some(i) if matches!(p.state, DownloadState::Complete) => {
            Next::Fail(EngineError::PieceGone(i))
        }
        Some(_) => Next::Wait,
    }
}

struct ReadState {
    dl: Arc<Download>,
    offset: u64,
    rx: watch::Receiver<Progress>,
    done: bool,
}

impl Download {
    /// Waits until the byte at `offset` can be read (or the blob ends there), so
    /// that a response is started only when its first body byte can follow. `Err`
    /// when the download failed first: the caller answers with a clean error.
    pub async fn first_ready(&self, offset: u64) -> Result<(), EngineError> {
        self.reader_offset.store(offset, Ordering::Relaxed);
        let mut rx = self.progress();
        loop {
            match next(&rx.borrow_and_update(), offset) {
                Next::Piece(_) | Next::End => return Ok(()),
                Next::Fail(e) => return Err(e),
                Next::Wait => {}
            }
            if rx.changed().await.is_err() {
                return Err(EngineError::Dropped);
            }
        }
    }

    /// The blob's bytes from `offset` to the end, in order, yielded as soon as the
    /// pieces covering them are verified. Ends with an error if the download fails
    /// (or `offset` is past the end).
    pub fn reader(
        self: &Arc<Self>,
        offset: u64,
    ) -> impl Stream<Item = Result<Bytes, EngineError>> + Send + use<> {
        self.reader_offset.store(offset, Ordering::Relaxed);
        let state = ReadState {
            dl: self.clone(),
            offset,
            rx: self.progress(),
            done: false,
        };
        futures::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                let step = next(&s.rx.borrow_and_update(), s.offset);
                match step {
                    Next::End => return None,
                    Next::Fail(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                    Next::Wait => {
                        if s.rx.changed().await.is_err() {
                            s.done = true;
                            return Some((Err(EngineError::Dropped), s));
                        }
                    }
                    Next::Piece(i) => {
                        let dl = s.dl.clone();
                        let read = tokio::task::spawn_blocking(move || dl.read_piece(i)).await;
                        let piece = match read {
                            Ok(Ok(Some(b))) => b,
                            Ok(Ok(None)) => {
                                s.done = true;
                                return Some((Err(EngineError::PieceGone(i)), s));
                            }
                            Ok(Err(e)) => {
                                s.done = true;
                                return Some((Err(e), s));
                            }
                            Err(_) => {
                                s.done = true;
                                return Some((Err(EngineError::TaskAborted("read")), s));
                            }
                        };
                        let shape = s.rx.borrow().shape.expect("a piece implies a shape");
                        let start = shape.piece_range(i).map_or(0, |r| r.start);
                        let skip = (s.offset - start) as usize;
                        let bytes = piece.slice(skip.min(piece.len())..);
                        s.offset = start + piece.len() as u64;
                        s.dl.reader_offset.store(s.offset, Ordering::Relaxed);
                        s.dl.reader_moved.notify_one();
                        return Some((Ok(bytes), s));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::{PieceSet, TaskShape};

    use super::*;

    fn progress(state: DownloadState, have: &[u32]) -> Progress {
        let shape = TaskShape::for_size(8 << 20).unwrap();
        let mut set = PieceSet::new(shape.piece_count());
        for &i in have {
            set.insert(i);
        }
        Progress {
            shape: Some(shape),
            have: set,
            state,
            settled: false,
        }
    }

    /// A reader never waits for a piece a complete download does not have: it
    /// would wait for ever (the driver is done). Found in CI: a complete blob one
    /// of whose pieces was dropped at that moment for damage at rest.
    #[test]
    fn a_piece_missing_from_a_complete_download_fails_the_reader_instead_of_waiting() {
        let shape = TaskShape::for_size(8 << 20).unwrap();
        let third = shape.piece_range(2).unwrap().start;
        let p = progress(DownloadState::Complete, &[0, 1]);
        assert!(matches!(next(&p, 0), Next::Piece(0)));
        assert!(matches!(
            next(&p, third),
            Next::Fail(EngineError::PieceGone(2))
        ));
        // While the download runs, a missing piece is waited for.
        let p = progress(DownloadState::Running, &[0, 1]);
        assert!(matches!(next(&p, third), Next::Wait));
    }
}
