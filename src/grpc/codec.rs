//! The protobuf codec of the generated service, with small buffers.
//!
//! tonic's default codec gives every call an 8 KiB encode and an 8 KiB decode
//! buffer; run-state messages are a few hundred bytes, and a sidecar may hold
//! a thousand calls in flight. Buffers still grow for larger messages.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial buffer size per call.
const BUFFER: usize = 1024;
/// tonic's default: yield to the runtime after this many bytes.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with 1 KiB initial buffers (set in `build.rs` as the codec of
/// every generated server and client).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
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
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
