//! The piece wire format as pure functions over bytes.
//!
//! Every frame is `u32 big-endian header length | prost header`. A request frame is
//! only that ([`PieceRequest`]); a response frame ([`PieceResponseHeader`]) with status
//! `OK` is followed by exactly `length` raw bytes, which this module does not touch: the
//! caller reads them off the stream. Decoders take whatever bytes have arrived and answer
//! [`CodecError::Incomplete`] (read more) apart from [`CodecError::Malformed`] (give up).
//!
//! Non-goals: no sockets, no buffering, no hashing of piece bytes.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use shoal_proto::Digest;
use shoal_proto::v1::{PieceRequest, PieceResponseHeader, PieceStatus};

/// Largest header either side accepts, in bytes (the length prefix excluded).
pub const MAX_HEADER_LEN: usize = 4096;

/// Size of the big-endian length prefix.
pub const LEN_PREFIX: usize = 4;

/// Smallest header that can hold a valid request: the digest field alone is a tag byte,
/// a length byte and the 71 characters of `sha256:<64 hex>`.
const MIN_REQUEST_HEADER_LEN: usize = 2 + 71;

/// Smallest header that can hold a valid response: a tag byte and the status.
const MIN_RESPONSE_HEADER_LEN: usize = 2;

/// Longest `message` an encoder puts in a response, so headers stay under the cap.
const MAX_MESSAGE_LEN: usize = 1024;

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes are a prefix of a frame that may still be valid: read more.
    #[error("incomplete frame")]
    Incomplete,
    /// The bytes can never become a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A validated piece request: which piece of which task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The task (blob) the piece belongs to.
    pub digest: Digest,
    /// The piece index within the task.
    pub index: u32,
}

/// A validated response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The piece follows: exactly `length` raw bytes.
    Ok {
        /// Number of raw bytes after the header.
        length: u32,
    },
    /// The peer does not hold the piece (yet).
    NotFound,
    /// All upload slots of the peer are taken.
    Busy,
    /// The peer could not parse the request.
    BadRequest(String),
}

/// Encodes a request frame.
pub fn encode_request(request: &Request) -> Bytes {
    frame(&PieceRequest {
        digest: request.digest.to_string(),
        index: request.index,
    })
}

/// Encodes a response header frame (the piece bytes, if any, are sent after it).
pub fn encode_response_header(response: &Response) -> Bytes {
    let (status, length, message) = match response {
        Response::Ok { length } => (PieceStatus::Ok, *length, String::new()),
        Response::NotFound => (PieceStatus::NotFound, 0, String::new()),
        Response::Busy => (PieceStatus::Busy, 0, String::new()),
        Response::BadRequest(message) => {
            let mut end = message.len().min(MAX_MESSAGE_LEN);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            (PieceStatus::BadRequest, 0, message[..end].to_owned())
        }
    };
    frame(&PieceResponseHeader {
        status: status as i32,
        length,
        message,
    })
}

/// Decodes a request frame from the start of `buf`; returns it and the bytes consumed.
pub fn decode_request(buf: &[u8]) -> Result<(Request, usize), CodecError> {
    let (header, used) = split_frame(buf, MIN_REQUEST_HEADER_LEN)?;
    let msg = PieceRequest::decode(header)
        .map_err(|e| CodecError::Malformed(format!("request header: {e}")))?;
    let digest = msg
        .digest
        .parse::<Digest>()
        .map_err(|e| CodecError::Malformed(format!("request digest: {e}")))?;
    Ok((
        Request {
            digest,
            index: msg.index,
        },
        used,
    ))
}

/// Decodes a response header frame from the start of `buf`; returns it and the bytes
/// consumed (the piece bytes, if any, start there).
pub fn decode_response_header(buf: &[u8]) -> Result<(Response, usize), CodecError> {
    let (header, used) = split_frame(buf, MIN_RESPONSE_HEADER_LEN)?;
    let msg = PieceResponseHeader::decode(header)
        .map_err(|e| CodecError::Malformed(format!("response header: {e}")))?;
    let status = PieceStatus::try_from(msg.status)
        .map_err(|_| CodecError::Malformed(format!("unknown status {}", msg.status)))?;
    let response = match status {
        PieceStatus::Ok => Response::Ok { length: msg.length },
        PieceStatus::NotFound => Response::NotFound,
        PieceStatus::Busy => Response::Busy,
        PieceStatus::BadRequest => Response::BadRequest(msg.message),
        PieceStatus::Unspecified => {
            return Err(CodecError::Malformed("status unspecified".into()));
        }
    };
    if msg.length != 0 && !matches!(response, Response::Ok { .. }) {
        return Err(CodecError::Malformed(format!(
            "length {} without status OK",
            msg.length
        )));
    }
    Ok((response, used))
}

fn frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    debug_assert!(len <= MAX_HEADER_LEN, "encoders keep headers under the cap");
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + len);
    buf.put_u32(len as u32);
    msg.encode(&mut buf)
        .expect("BytesMut was sized for the message");
    buf.freeze()
}

/// The header bytes of the frame at the start of `buf` and the frame's total length.
fn split_frame(buf: &[u8], min_len: usize) -> Result<(&[u8], usize), CodecError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Err(CodecError::Incomplete);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > MAX_HEADER_LEN {
        return Err(CodecError::Malformed(format!(
            "header length {len} over {MAX_HEADER_LEN}"
        )));
    }
    if len < min_len {
        return Err(CodecError::Malformed(format!(
            "header length {len} under {min_len}"
        )));
    }
    let end = LEN_PREFIX + len;
    match buf.get(LEN_PREFIX..end) {
        Some(header) => Ok((header, end)),
        None => Err(CodecError::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(bytes: [u8; 32], index: u32) -> Request {
        Request {
            digest: Digest::from_sha256(bytes),
            index,
        }
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            any::<u32>().prop_map(|length| Response::Ok { length }),
            Just(Response::NotFound),
            Just(Response::Busy),
            ".{0,40}".prop_map(Response::BadRequest),
        ]
    }

    /// `Incomplete` only while the bytes can still grow into a frame: fewer than four
    /// bytes, or a plausible declared length not yet all there.
    fn could_grow(buf: &[u8], min_len: usize) -> bool {
        match buf.first_chunk::<4>() {
            None => true,
            Some(p) => {
                let len = u32::from_be_bytes(*p) as usize;
                (min_len..=MAX_HEADER_LEN).contains(&len) && buf.len() < LEN_PREFIX + len
            }
        }
    }

    #[test]
    fn rejects_bad_digest_and_oversized_header() {
        let mut bad = encode_request(&request([7; 32], 1)).to_vec();
        bad[LEN_PREFIX + 2] = b'S'; // "Sha256:..."
        assert!(matches!(
            decode_request(&bad),
            Err(CodecError::Malformed(_))
        ));

        let mut huge = vec![0, 0, 0x10, 0x01];
        huge.resize(8, 0);
        assert!(matches!(
            decode_request(&huge),
            Err(CodecError::Malformed(_))
        ));
        // The cap trips on the prefix alone, before the header arrives.
        assert!(matches!(
            decode_response_header(&huge[..4]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_unspecified_status_and_stray_length() {
        let unspecified = frame(&PieceResponseHeader {
            status: 0,
            length: 0,
            message: "x".into(),
        });
        assert!(matches!(
            decode_response_header(&unspecified),
            Err(CodecError::Malformed(_))
        ));
        let stray = frame(&PieceResponseHeader {
            status: PieceStatus::Busy as i32,
            length: 5,
            message: String::new(),
        });
        assert!(matches!(
            decode_response_header(&stray),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn long_messages_are_truncated_under_the_cap() {
        let long = "é".repeat(5000);
        let bytes = encode_response_header(&Response::BadRequest(long));
        let (Response::BadRequest(m), used) = decode_response_header(&bytes).unwrap() else {
            panic!("not a bad request");
        };
        assert_eq!(used, bytes.len());
        assert!(m.len() <= MAX_MESSAGE_LEN);
    }

    proptest! {
        #[test]
        fn request_round_trips_through_every_prefix(
            bytes in proptest::array::uniform32(any::<u8>()),
            index in any::<u32>(),
            trailing in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let req = request(bytes, index);
            let frame = encode_request(&req);
            for k in 0..frame.len() {
                prop_assert_eq!(decode_request(&frame[..k]), Err(CodecError::Incomplete));
            }
            let mut longer = frame.to_vec();
            longer.extend_from_slice(&trailing);
            prop_assert_eq!(decode_request(&longer), Ok((req, frame.len())));
        }

        #[test]
        fn response_round_trips_through_every_prefix(resp in response()) {
            let frame = encode_response_header(&resp);
            for k in 0..frame.len() {
                prop_assert_eq!(decode_response_header(&frame[..k]), Err(CodecError::Incomplete));
            }
            prop_assert_eq!(decode_response_header(&frame), Ok((resp, frame.len())));
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            match decode_request(&buf) {
                Err(CodecError::Incomplete) => prop_assert!(could_grow(&buf, MIN_REQUEST_HEADER_LEN)),
                Ok((_, used)) => prop_assert!(used <= buf.len()),
                Err(CodecError::Malformed(_)) => {}
            }
            match decode_response_header(&buf) {
                Err(CodecError::Incomplete) => prop_assert!(could_grow(&buf, MIN_RESPONSE_HEADER_LEN)),
                Ok((_, used)) => prop_assert!(used <= buf.len()),
                Err(CodecError::Malformed(_)) => {}
            }
        }

        #[test]
        fn plausible_prefixes_with_arbitrary_headers_never_panic(
            len in 0u32..5000,
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = len.to_be_bytes().to_vec();
            buf.extend_from_slice(&body);
            let _ = decode_request(&buf);
            let _ = decode_response_header(&buf);
        }
    }
}
