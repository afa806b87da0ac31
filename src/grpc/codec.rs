//! The protobuf codec of the generated service, with small buffers.
//!
//! tonic's default codec gives every call an 8 KiB encode and an 8 KiB decode
//! buffer; run-state messages are a few hundred bytes, and a sidecar may hold
//! a thousand calls in flight. Buffers still grow for larger messages.
//!
//! A message that does not decode is the caller's fault: INVALID_ARGUMENT
//! naming the field, where tonic's own decoder answers INTERNAL naming the
//! message type.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::convert::FieldViolation;
use crate::grpc::status::invalid_argument;

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
    type Decoder = LeanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanDecoder(PhantomData)
    }
}

/// Decodes protobuf messages; an undecodable one is INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct LeanDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for LeanDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| malformed(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFER, YIELD_THRESHOLD)
    }
}

/// INVALID_ARGUMENT for a message that does not decode, naming the field
/// (in proto terms) without the internal message type names.
pub(crate) fn malformed(error: &prost::DecodeError) -> Status {
    // prost writes "failed to decode Protobuf message: Inner.field: Outer.field: why".
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields = Vec::new();
    let mut why = text;
    while let Some((head, rest)) = why.split_once(": ") {
        match head.split_once('.') {
            Some((message, field))
                if !message.is_empty()
                    && message
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && field
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                fields.push(field);
                why = rest;
            }
            _ => break,
        }
    }
    fields.reverse();
    let why = if why.contains("UTF-8") {
        "is not valid UTF-8".to_owned()
    } else {
        format!("is not valid protobuf ({why})")
    };
    let field = if fields.is_empty() {
        "request".to_owned()
    } else {
        fields.join(".")
    };
    invalid_argument(vec![FieldViolation::new(field, why)])
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::pb;

    #[test]
    fn malformed_messages_name_the_field_not_the_type() {
        // parent (field 1, length-delimited) holding invalid UTF-8.
        let bytes = [0x0a, 0x02, 0xff, 0xfe];
        let err = pb::CreateScriptUserStateRequest::decode(&bytes[..]).unwrap_err();
        let status = malformed(&err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "parent: is not valid UTF-8");
        assert!(
            !status.message().contains("Request"),
            "{}",
            status.message()
        );
        let err = pb::GetScriptUserStateRequest::decode(&[0x0a, 0x09][..]).unwrap_err();
        let status = malformed(&err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            !status.message().contains("GetScript"),
            "{}",
            status.message()
        );
    }
}
