//! The gRPC codec of every Shoal service: prost messages, as tonic's own
//! `ProstCodec`, with smaller per-stream buffers.
//!
//! tonic gives every call an encode buffer and a decode buffer of 8 KiB each,
//! allocated when the call starts and kept for its life. A scheduler holds a
//! session stream for every peer (heartbeats of a few bytes, piece reports of
//! a few hundred) and a plan stream for every download: at 10,000 peers the
//! default buffers alone are about 160 MiB. A buffer here starts at
//! [`START_BUFFER`] and grows like any `BytesMut` when a message needs more
//! (a plan's first update, with a blob's piece hashes, is tens of KiB).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// What a call's encode and decode buffers start at (tonic: 8 KiB).
pub const START_BUFFER: usize = 512;

/// Encoded bytes gathered before a stream's encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`START_BUFFER`]-sized buffers; the generated clients
/// and servers use it (`proto/build.rs`, `codec_path`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
