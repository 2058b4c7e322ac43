//! The `Range` header of a blob request (RFC 9110 §14), as the mirror supports it:
//! one range, `bytes=N-M`, `bytes=N-` (containerd resumes a cut download this way)
//! or a suffix `bytes=-N`.
//!
//! Pure: header text and blob size in, a [`Span`] decision out. Not here: the 206/416
//! responses themselves (`blobs.rs`).

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The whole blob (no `Range`, or one this mirror ignores as the RFC allows).
    Full,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the range exists (416).
    Unsatisfiable,
}

/// Why a `Range` header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `bytes=…`, not numbers, or last before first (e.g. `bytes=5-2`).
    #[error("malformed Range header {0:?}; expected bytes=FIRST-[LAST] or bytes=-SUFFIX")]
    Malformed(String),
    /// Several ranges (multipart answers are not supported).
    #[error("multiple ranges are not supported: {0:?}")]
    Multiple(String),
}

/// Decides what `range` (the header's value, if any) asks of a `size`-byte blob.
pub fn decide(range: Option<&str>, size: u64) -> Result<Span, RangeError> {
    let Some(raw) = range else {
        return Ok(Span::Full);
    };
    let malformed = || RangeError::Malformed(raw.chars().take(80).collect());
    let spec = raw
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(malformed)?
        .trim();
    if spec.contains(',') {
        return Err(RangeError::Multiple(raw.chars().take(80).collect()));
    }
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    let num = |s: &str| -> Result<u64, RangeError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    if first.trim().is_empty() {
        // Suffix: the last N bytes.
        let n = num(last)?;
        if n == 0 || size == 0 {
            return Ok(Span::Unsatisfiable);
        }
        return Ok(Span::Partial {
            start: size.saturating_sub(n),
            end: size - 1,
        });
    }
    let start = num(first)?;
    let end = if last.trim().is_empty() {
        None
    } else {
        Some(num(last)?)
    };
    if let Some(e) = end
        && e < start
    {
        return Err(malformed());
    }
    if start >= size {
        return Ok(Span::Unsatisfiable);
    }
    let end = end.map_or(size - 1, |e| e.min(size - 1));
    Ok(Span::Partial { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_containerd_and_clients_send() {
        assert_eq!(decide(None, 10), Ok(Span::Full));
        assert_eq!(
            decide(Some("bytes=0-"), 10),
            Ok(Span::Partial { start: 0, end: 9 })
        );
        assert_eq!(
            decide(Some("bytes=4-"), 10),
            Ok(Span::Partial { start: 4, end: 9 })
        );
        assert_eq!(
            decide(Some("bytes=2-5"), 10),
            Ok(Span::Partial { start: 2, end: 5 })
        );
        assert_eq!(
            decide(Some("bytes=2-500"), 10),
            Ok(Span::Partial { start: 2, end: 9 })
        );
        assert_eq!(
            decide(Some("bytes=-3"), 10),
            Ok(Span::Partial { start: 7, end: 9 })
        );
        assert_eq!(
            decide(Some("bytes=-30"), 10),
            Ok(Span::Partial { start: 0, end: 9 })
        );
        assert_eq!(decide(Some("bytes=10-"), 10), Ok(Span::Unsatisfiable));
        assert_eq!(decide(Some("bytes=99-100"), 10), Ok(Span::Unsatisfiable));
        assert_eq!(decide(Some("bytes=-0"), 10), Ok(Span::Unsatisfiable));
    }

    #[test]
    fn refuses_malformed_and_multiple() {
        for bad in [
            "bytes=5-2",
            "bytes=",
            "bytes=-",
            "items=0-1",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert!(
                matches!(decide(Some(bad), 10), Err(RangeError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            decide(Some("bytes=0-1,3-4"), 10),
            Err(RangeError::Multiple(_))
        ));
    }

    proptest! {
        #[test]
        fn a_partial_span_is_inside_the_blob(s in "\\PC{0,24}", size in 0u64..1000) {
            if let Ok(Span::Partial { start, end }) = decide(Some(&s), size) {
                prop_assert!(start <= end && end < size);
            }
        }

        #[test]
        fn open_ended_ranges_cover_to_the_end(start in 0u64..2000, size in 1u64..1000) {
            let span = decide(Some(&format!("bytes={start}-")), size).unwrap();
            if start < size {
                prop_assert_eq!(span, Span::Partial { start, end: size - 1 });
            } else {
                prop_assert_eq!(span, Span::Unsatisfiable);
            }
        }
    }
}
