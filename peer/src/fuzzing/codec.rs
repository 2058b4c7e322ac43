//! The QUIC piece codec ([`crate::transfer::codec`]): arbitrary bytes as a request and
//! as a response header, and the same bytes read as a request and a response to encode.

use shoal_proto::Digest;

use crate::transfer::codec::{
    CodecError, LEN_PREFIX, MAX_HEADER_LEN, Request, Response, decode_request,
    decode_response_header, encode_request, encode_response_header,
};

/// Longest `BadRequest` message the encoder keeps (`codec.rs`' `MAX_MESSAGE_LEN`).
const MAX_MESSAGE_LEN: usize = 1024;

/// Decodes `data` both ways and checks every answer:
/// - `Ok` consumed at most the input, decodes the same from exactly the consumed bytes,
///   and re-encodes to a frame that decodes to the same value;
/// - `Incomplete` only while the length prefix is missing or declares a plausible
///   header that has not all arrived;
/// - a request and a response built from the input bytes encode to a frame that decodes
///   to the same value and whose every proper prefix is `Incomplete`.
pub fn codec(data: &[u8]) {
    decoded_request(data);
    decoded_response(data);
    built_request(data);
    built_response(data);
}

fn decoded_request(data: &[u8]) {
    match decode_request(data) {
        Ok((req, used)) => {
            assert!(
                used <= data.len(),
                "consumed {used} of {} bytes",
                data.len()
            );
            assert_eq!(decode_request(&data[..used]), Ok((req, used)));
            let again = encode_request(&req);
            assert_eq!(decode_request(&again), Ok((req, again.len())));
        }
        Err(CodecError::Incomplete) => assert!(could_grow(data), "Incomplete for {data:?}"),
        Err(CodecError::Malformed(_)) => {}
    }
}

fn decoded_response(data: &[u8]) {
    match decode_response_header(data) {
        Ok((resp, used)) => {
            assert!(
                used <= data.len(),
                "consumed {used} of {} bytes",
                data.len()
            );
            assert_eq!(
                decode_response_header(&data[..used]),
                Ok((resp.clone(), used))
            );
            let again = encode_response_header(&resp);
            let (back, n) = decode_response_header(&again).expect("an encoded response decodes");
            assert_eq!(n, again.len());
            match (&resp, &back) {
                (Response::BadRequest(long), Response::BadRequest(short))
                    if long.len() > MAX_MESSAGE_LEN =>
                {
                    assert!(short.len() <= MAX_MESSAGE_LEN && long.starts_with(short.as_str()));
                }
                _ => assert_eq!(back, resp),
            }
        }
        Err(CodecError::Incomplete) => assert!(could_grow(data), "Incomplete for {data:?}"),
        Err(CodecError::Malformed(_)) => {}
    }
}

/// `Incomplete` is right only when more bytes could still make a frame.
fn could_grow(buf: &[u8]) -> bool {
    match buf.first_chunk::<LEN_PREFIX>() {
        None => true,
        Some(p) => {
            let len = u32::from_be_bytes(*p) as usize;
            len <= MAX_HEADER_LEN && buf.len() < LEN_PREFIX + len
        }
    }
}

fn built_request(data: &[u8]) {
    let Some((digest, rest)) = data.split_first_chunk::<32>() else {
        return;
    };
    let index = rest
        .first_chunk::<4>()
        .map_or(0, |b| u32::from_be_bytes(*b));
    let req = Request {
        digest: Digest::from_sha256(*digest),
        index,
    };
    let frame = encode_request(&req);
    assert!(frame.len() <= LEN_PREFIX + MAX_HEADER_LEN);
    for k in 0..frame.len() {
        assert_eq!(decode_request(&frame[..k]), Err(CodecError::Incomplete));
    }
    let mut longer = frame.to_vec();
    longer.extend_from_slice(data);
    assert_eq!(decode_request(&longer), Ok((req, frame.len())));
}

fn built_response(data: &[u8]) {
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    let resp = match tag % 4 {
        0 => Response::Ok {
            length: rest
                .first_chunk::<4>()
                .map_or(0, |b| u32::from_le_bytes(*b)),
        },
        1 => Response::NotFound,
        2 => Response::Busy,
        _ => Response::BadRequest(String::from_utf8_lossy(rest).into_owned()),
    };
    let frame = encode_response_header(&resp);
    assert!(frame.len() <= LEN_PREFIX + MAX_HEADER_LEN);
    for k in 0..frame.len() {
        assert_eq!(
            decode_response_header(&frame[..k]),
            Err(CodecError::Incomplete)
        );
    }
    let (back, used) = decode_response_header(&frame).expect("an encoded response decodes");
    assert_eq!(used, frame.len());
    match (&resp, &back) {
        (Response::BadRequest(long), Response::BadRequest(short)) => {
            assert!(short.len() <= MAX_MESSAGE_LEN && long.starts_with(short.as_str()));
            if long.len() <= MAX_MESSAGE_LEN {
                assert_eq!(short, long);
            }
        }
        _ => assert_eq!(back, resp),
    }
}
