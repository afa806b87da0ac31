//! gRPC message framing checked before tonic reads it, so broken framing
//! gets INVALID_ARGUMENT (UNIMPLEMENTED for a compression the gateway does
//! not take) with a plain message, never tonic's INTERNAL.
//!
//! A message is a 1-byte compression flag, a 4-byte big-endian length and
//! that many bytes. The gateway takes no compression: the flag must be 0
//! and `grpc-encoding`, when sent, must be `identity`.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, SizeHint};
use tonic::{Status, metadata::MetadataValue};

use crate::convert::FieldViolation;
use crate::grpc::status::invalid_argument;

/// Length of a message's prefix: the flag and the length.
const PREFIX: usize = 5;

/// UNIMPLEMENTED unless the call's messages are uncompressed.
pub(super) fn check_encoding(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding") {
        None => Ok(()),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => Ok(()),
        Some(_) => {
            let mut status = Status::unimplemented(
                "compressed request messages are not accepted: send them uncompressed (grpc-encoding identity)",
            );
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                MetadataValue::from_static("identity"),
            );
            Err(status)
        }
    }
}

/// Checks that a unary request body is exactly one uncompressed message.
pub(super) fn check_unary(body: &[u8]) -> Result<(), Status> {
    if body.is_empty() {
        return Err(broken("holds no message: the request body is empty"));
    }
    let length = check_prefix(body)?;
    let arrived = body.len() - PREFIX;
    if length != arrived {
        return Err(broken(format!(
            "is not one gRPC message: its prefix announces {length} bytes, but {arrived} follow it"
        )));
    }
    Ok(())
}

/// The length a message prefix announces, once its flag is checked.
fn check_prefix(bytes: &[u8]) -> Result<usize, Status> {
    if bytes.len() < PREFIX {
        return Err(broken(format!(
            "is not a gRPC message: its 5-byte prefix is cut short after {} bytes",
            bytes.len()
        )));
    }
    check_flag(bytes[0])?;
    Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize)
}

fn check_flag(flag: u8) -> Result<(), Status> {
    match flag {
        0 => Ok(()),
        1 => Err(broken(
            "is marked compressed, but the call names no compression (grpc-encoding): send it uncompressed with flag 0",
        )),
        f => Err(broken(format!(
            "has compression flag {f}; gRPC allows 0 (uncompressed) or 1, and this gateway takes 0"
        ))),
    }
}

fn broken(why: impl Into<String>) -> Status {
    invalid_argument(vec![FieldViolation::new("request", why)])
}

/// A streaming request body whose framing is checked as it passes: a broken
/// prefix, a message over `max` bytes, or a body ending inside a message
/// ends the stream with that status.
pub(super) struct Checked<B> {
    inner: B,
    max: usize,
    /// The prefix bytes of the next message read so far.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    left: usize,
    failed: bool,
}

impl<B> Checked<B> {
    pub(super) fn new(inner: B, max: usize) -> Self {
        Self {
            inner,
            max,
            prefix: [0; PREFIX],
            prefix_len: 0,
            left: 0,
            failed: false,
        }
    }

    /// Follows the framing through one chunk of the body.
    fn follow(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (PREFIX - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == PREFIX {
                let length = check_prefix(&self.prefix)?;
                if length > self.max {
                    return Err(Status::resource_exhausted(format!(
                        "a request message is {length} bytes, over the limit of {} (--max-request-bytes)",
                        self.max
                    )));
                }
                self.left = length;
                self.prefix_len = 0;
            }
        }
        Ok(())
    }

    /// At the end of the body: an error when it ended inside a message.
    fn finish(&self) -> Result<(), Status> {
        if self.prefix_len > 0 {
            return Err(broken(format!(
                "ended inside a message: its 5-byte prefix is cut short after {} bytes",
                self.prefix_len
            )));
        }
        if self.left > 0 {
            return Err(broken(format!(
                "ended inside a message: {} of its announced bytes never came",
                self.left
            )));
        }
        Ok(())
    }
}

impl<B> HttpBody for Checked<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> super::Polled {
        if self.failed {
            return Poll::Ready(None);
        }
        let next = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let checked = match next {
            Some(Ok(frame)) => {
                let followed = match frame.data_ref() {
                    Some(data) => self.follow(data),
                    None => Ok(()),
                };
                followed.map(|()| frame)
            }
            // The client's reset or a broken connection, as tonic reads it.
            Some(Err(e)) => Err(Status::from_error(e.into())),
            None => match self.finish() {
                Ok(()) => return Poll::Ready(None),
                Err(status) => Err(status),
            },
        };
        if checked.is_err() {
            self.failed = true;
        }
        Poll::Ready(Some(checked))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.inner.is_end_stream() && self.finish().is_ok())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn framed(flag: u8, length: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn unary_bodies_must_be_one_uncompressed_message() {
        assert!(check_unary(&framed(0, 2, b"ab")).is_ok());
        assert!(check_unary(&framed(0, 0, b"")).is_ok());
        for (body, text) in [
            (Vec::new(), "empty"),
            (vec![0, 0, 0], "cut short after 3 bytes"),
            (framed(0, 9, b"ab"), "announces 9 bytes, but 2 follow"),
            (framed(0, 1, b"ab"), "announces 1 bytes, but 2 follow"),
            (framed(1, 2, b"ab"), "marked compressed"),
            (framed(7, 2, b"ab"), "compression flag 7"),
        ] {
            let status = check_unary(&body).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{text}");
            assert!(status.message().starts_with("request: "), "{status:?}");
            assert!(status.message().contains(text), "{status:?}");
        }
    }

    #[test]
    fn only_identity_encoding_is_taken() {
        let mut h = HeaderMap::new();
        assert!(check_encoding(&h).is_ok());
        h.insert("grpc-encoding", HeaderValue::from_static("identity"));
        assert!(check_encoding(&h).is_ok());
        h.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let status = check_encoding(&h).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.metadata().get("grpc-accept-encoding").unwrap(),
            "identity"
        );
    }

    #[test]
    fn streams_are_followed_across_chunks() {
        let mut c = Checked::new((), 100);
        let two = [framed(0, 3, b"abc"), framed(0, 1, b"d")].concat();
        for chunk in two.chunks(2) {
            c.follow(chunk).unwrap();
        }
        assert!(c.finish().is_ok());
        for (sent, why) in [
            (framed(0, 4, b"ab"), "2 of its announced bytes"),
            (vec![0, 0], "cut short after 2"),
        ] {
            let mut c = Checked::new((), 100);
            c.follow(&sent).unwrap();
            let err = c.finish().unwrap_err();
            assert!(err.message().contains(why), "{err:?}");
        }
        let mut c = Checked::new((), 100);
        let err = c.follow(&framed(7, 1, b"a")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let mut c = Checked::new((), 100);
        let err = c.follow(&framed(0, 101, b"")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
