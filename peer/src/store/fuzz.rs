//! The fuzz check of the store's metadata records (`record.rs`), here because the
//! record codec is private to the store; [`crate::fuzzing::store_record`] calls it.

use shoal_proto::piece::{PieceSet, TaskShape};

use super::record::{self, Header};

/// Checks what restart recovery does with damaged records, on arbitrary bytes:
/// - a task header that decodes re-encodes (in no more bytes) to one that decodes the
///   same, and a header built from the bytes round-trips;
/// - read as `[n][n header bytes][bitmap]`, a decodable header's shape gives a piece
///   bitmap that, if accepted, names only pieces of the task and re-encodes to the same
///   bytes;
/// - hash, task and access keys and values decode only from their exact forms.
pub(crate) fn check_record(data: &[u8]) {
    decoded_header(data);
    built_header(data);
    bitmap(data);
    keys(data);
}

fn decoded_header(data: &[u8]) {
    let Ok(h) = Header::decode(data) else {
        return;
    };
    let again = h.encode();
    assert!(again.len() <= data.len(), "{h:?}");
    assert_eq!(Header::decode(&again).as_ref(), Ok(&h));
}

fn built_header(data: &[u8]) {
    let Some((fixed, rest)) = data.split_first_chunk::<13>() else {
        return;
    };
    let media_type = match fixed[12] & 3 {
        0 | 1 => None,
        _ => match std::str::from_utf8(rest) {
            // The store keeps media types of 1 to 255 bytes (`valid_media_type`).
            Ok(s) if s.len() <= 255 => Some(s.to_owned()),
            _ => return,
        },
    };
    let h = Header {
        size: u64::from_le_bytes(fixed[..8].try_into().expect("8 bytes")),
        piece_size: u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes")),
        complete: fixed[12] & 1 != 0,
        media_type,
    };
    assert_eq!(Header::decode(&h.encode()).as_ref(), Ok(&h));
}

fn bitmap(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Some((header, bitmap)) = rest.split_at_checked(n as usize) else {
        return;
    };
    let Ok(h) = Header::decode(header) else {
        return;
    };
    let Ok(shape) = TaskShape::for_size(h.size) else {
        return;
    };
    let count = shape.piece_count();
    if let Ok(set) = PieceSet::from_bytes(bitmap, count) {
        assert_eq!(set.len(), count);
        assert!(set.iter().all(|i| i < count));
        assert_eq!(set.to_bytes(), bitmap);
    }
}

fn keys(data: &[u8]) {
    if let Some((digest, index)) = record::split_hash_key(data) {
        assert_eq!(record::hash_key(&digest, index)[..], *data);
    } else {
        assert_ne!(data.len(), 36);
    }
    match record::digest_key(data) {
        Some(d) => assert_eq!(d.as_bytes()[..], *data),
        None => assert_ne!(data.len(), 32),
    }
    let (secs, seq) = record::decode_access(data);
    if data.len() == 16 {
        assert_eq!(record::encode_access(secs, seq)[..], *data);
    } else {
        assert_eq!((secs, seq), (0, 0));
    }
}
