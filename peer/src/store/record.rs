//! The byte forms of the store's metadata records in sled.
//!
//! Trees (all keyed by the 32 raw digest bytes unless said otherwise):
//! - `tasks`: [`Header`]. Its presence is what makes a task exist; it is
//!   written last when a task is created and deleted first when it is removed,
//!   so a crash in between leaves only orphans that recovery deletes.
//! - `pieces`: the bitmap of present pieces, [`PieceSet::to_bytes`] form.
//! - `hashes`: key `digest ++ index (u32 big-endian)`, value the 32-byte SHA-256.
//! - `access`: `secs (u64 BE) ++ seq (u64 BE)`: last access and a sequence
//!   number ordering accesses within a second.

use shoal_proto::digest::Digest;

const VERSION: u8 = 1;
const COMPLETE: u8 = 1;
const HAS_MEDIA_TYPE: u8 = 2;

/// A task's fixed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) size: u64,
    /// The piece size the task was stored with; recovery drops the pieces of
    /// an in-progress task whose piece size no longer matches the rule.
    pub(super) piece_size: u32,
    pub(super) complete: bool,
    pub(super) media_type: Option<String>,
}

impl Header {
    pub(super) fn encode(&self) -> Vec<u8> {
        let media = self.media_type.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(16 + media.len());
        out.push(VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.piece_size.to_le_bytes());
        let mut flags = 0;
        if self.complete {
            flags |= COMPLETE;
        }
        if self.media_type.is_some() {
            flags |= HAS_MEDIA_TYPE;
        }
        out.push(flags);
        out.push(media.len() as u8);
        out.extend_from_slice(media.as_bytes());
        out
    }

    /// Parses a header; `Err` names what is wrong.
    pub(super) fn decode(bytes: &[u8]) -> Result<Header, String> {
        let fixed = 1 + 8 + 4 + 1 + 1;
        if bytes.len() < fixed {
            return Err(format!("task header is {} bytes long", bytes.len()));
        }
        if bytes[0] != VERSION {
            return Err(format!("unknown task header version {}", bytes[0]));
        }
        let size = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let piece_size = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes"));
        let flags = bytes[13];
        let media_len = bytes[14] as usize;
        let media = &bytes[fixed..];
        if media.len() != media_len || flags & !(COMPLETE | HAS_MEDIA_TYPE) != 0 {
            return Err("malformed task header".to_owned());
        }
        let media_type = if flags & HAS_MEDIA_TYPE != 0 {
            let s = std::str::from_utf8(media).map_err(|_| "media type is not UTF-8")?;
            Some(s.to_owned())
        } else {
            None
        };
        Ok(Header {
            size,
            piece_size,
            complete: flags & COMPLETE != 0,
            media_type,
        })
    }
}

/// Key of piece `index`'s hash in the `hashes` tree.
pub(super) fn hash_key(digest: &Digest, index: u32) -> [u8; 36] {
    let mut key = [0; 36];
    key[..32].copy_from_slice(digest.as_bytes());
    key[32..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Splits a `hashes` key into digest and index.
pub(super) fn split_hash_key(key: &[u8]) -> Option<(Digest, u32)> {
    let digest: [u8; 32] = key.get(..32)?.try_into().ok()?;
    let index: [u8; 4] = key.get(32..)?.try_into().ok()?;
    Some((Digest::from_sha256(digest), u32::from_be_bytes(index)))
}

/// Parses a 32-byte key into a digest.
pub(super) fn digest_key(key: &[u8]) -> Option<Digest> {
    Some(Digest::from_sha256(key.try_into().ok()?))
}

pub(super) fn encode_access(secs: u64, seq: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&secs.to_be_bytes());
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// `(secs, seq)`; `(0, 0)` for a malformed value (evicted first, harmless).
pub(super) fn decode_access(bytes: &[u8]) -> (u64, u64) {
    match <[u8; 16]>::try_from(bytes) {
        Ok(b) => (
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
        ),
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        for h in [
            Header {
                size: 0,
                piece_size: 4 << 20,
                complete: false,
                media_type: None,
            },
            Header {
                size: u64::MAX,
                piece_size: 16 << 20,
                complete: true,
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            },
        ] {
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn bad_headers_are_rejected() {
        let good = Header {
            size: 5,
            piece_size: 4 << 20,
            complete: false,
            media_type: Some("x".into()),
        }
        .encode();
        assert!(Header::decode(&good[..good.len() - 1]).is_err());
        assert!(Header::decode(&[]).is_err());
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(Header::decode(&v2).is_err());
        let mut flags = good;
        flags[13] = 0x80;
        assert!(Header::decode(&flags).is_err());
    }

    #[test]
    fn keys_round_trip() {
        let d = Digest::from_sha256([7; 32]);
        assert_eq!(split_hash_key(&hash_key(&d, 513)), Some((d, 513)));
        assert_eq!(digest_key(d.as_bytes()), Some(d));
        assert_eq!(decode_access(&encode_access(9, 3)), (9, 3));
        assert_eq!(decode_access(b"short"), (0, 0));
    }
}
