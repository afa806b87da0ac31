//! The limits of streaming calls: `--max-streaming-calls` open at once, and
//! `--stream-idle-timeout`.
//!
//! A streaming call takes a slot when it starts and keeps it until its
//! response ends. Its handler is called only once the first request bytes
//! arrive, so a stream that sends nothing costs no handler state (decode
//! and encode buffers, a task, a channel). Once running, the call is ended
//! with DEADLINE_EXCEEDED when no whole message has arrived for the idle
//! timeout and every message received has been answered; the timer lives in
//! the response body, so it fires whether or not the handler is reading.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep, sleep, sleep_until},
};
use tonic::{Status, body::Body};

use crate::metrics as m;

/// The open streaming calls.
pub(super) struct Streams {
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
}

impl Streams {
    pub(super) fn new(max: usize, idle: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            idle,
        }
    }

    /// Takes a slot for a new streaming call and waits (at most the idle
    /// timeout) for its first request bytes; returns the body to hand to
    /// the handler and the watch that ends the call when it goes idle.
    pub(super) fn open(&self, body: Incoming) -> Opening {
        Opening {
            slot: Arc::clone(&self.slots).try_acquire_owned().ok(),
            max: self.max,
            body: Some(body),
            timer: Box::pin(sleep(self.idle)),
            idle: self.idle,
        }
    }
}

/// A stream waiting for its first bytes: all an idle stream holds, so it
/// is written out (small) rather than an `async` block.
pub(super) struct Opening {
    /// None past the limit.
    slot: Option<OwnedSemaphorePermit>,
    max: usize,
    /// None once done.
    body: Option<Incoming>,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
}

impl Future for Opening {
    type Output = Result<(Body, Watch), Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(Err(Status::cancelled("the stream has ended")));
        };
        if this.slot.is_none() {
            this.body = None;
            metrics::counter!(m::RPC_SHED, "reason" => "max_streaming_calls").increment(1);
            return Poll::Ready(Err(Status::resource_exhausted(format!(
                "the gateway has its limit of {} streaming calls open (--max-streaming-calls); retry later",
                this.max
            ))));
        }
        let first = match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Some(frame),
            Poll::Ready(Some(Err(_))) => {
                this.body = None;
                return Poll::Ready(Err(Status::cancelled("the client reset the stream")));
            }
            Poll::Ready(None) => None,
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                this.body = None;
                return Poll::Ready(Err(idle_status(this.idle)));
            }
        };
        match (this.slot.take(), this.body.take()) {
            (Some(slot), Some(body)) => Poll::Ready(Ok(started(slot, body, first, this.idle))),
            _ => Poll::Ready(Err(Status::cancelled("the stream has ended"))),
        }
    }
}

/// The body and watch of a stream whose first bytes came.
fn started(
    slot: OwnedSemaphorePermit,
    body: Incoming,
    first: Option<Frame<Bytes>>,
    idle: Duration,
) -> (Body, Watch) {
    let activity = Arc::new(Activity {
        started: Instant::now(),
        received: AtomicU64::new(0),
        last_message_ms: AtomicU64::new(0),
    });
    let mut counted = Counted {
        first: None,
        inner: body,
        framing: Framing::default(),
        activity: Arc::clone(&activity),
    };
    if let Some(frame) = first {
        counted.count(&frame);
        counted.first = Some(frame);
    }
    let watch = Watch {
        _slot: slot,
        activity,
        idle,
    };
    (Body::new(counted), watch)
}

fn idle_status(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the stream sent no message for {} ms (--stream-idle-timeout) and was ended; open a new stream to send more",
        idle.as_millis()
    ))
}

/// What the request side of a stream reports to its response side.
struct Activity {
    started: Instant,
    /// Whole request messages received.
    received: AtomicU64,
    /// When the last whole message arrived, in ms after `started`.
    last_message_ms: AtomicU64,
}

/// The request body of a streaming call, counting whole messages.
struct Counted {
    /// The first frame, read before the handler was called.
    first: Option<Frame<Bytes>>,
    inner: Incoming,
    framing: Framing,
    activity: Arc<Activity>,
}

impl Counted {
    fn count(&mut self, frame: &Frame<Bytes>) {
        let Some(data) = frame.data_ref() else {
            return;
        };
        let whole = self.framing.feed(data);
        if whole > 0 {
            let a = &self.activity;
            a.received.fetch_add(whole, Ordering::Relaxed);
            let ms = a.started.elapsed().as_millis() as u64;
            a.last_message_ms.store(ms, Ordering::Relaxed);
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let next = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &next {
            self.count(frame);
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A running streaming call: its slot, and what its idle timer reads.
pub(super) struct Watch {
    _slot: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle: Duration,
}

impl Watch {
    /// The handler's response, ended when the call goes idle; the slot is
    /// freed when the response ends.
    pub(super) fn wrap(self, response: http::Response<Body>) -> http::Response<Body> {
        let deadline = self.activity.started + self.idle;
        response.map(|inner| {
            Body::new(Watched {
                inner: Some(inner),
                timer: Box::pin(sleep_until(deadline)),
                framing: Framing::default(),
                answered: 0,
                last_answer: self.activity.started,
                watch: self,
            })
        })
    }
}

/// A streaming call's response body, with its idle timer.
struct Watched {
    /// None once the call was ended for idling.
    inner: Option<Body>,
    timer: Pin<Box<Sleep>>,
    framing: Framing,
    /// Whole response messages sent.
    answered: u64,
    last_answer: Instant,
    watch: Watch,
}

impl Watched {
    /// True when the call has been idle for the timeout; otherwise the
    /// timer is set for the next time it may be.
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let a = &self.watch.activity;
            let now = Instant::now();
            let next = if a.received.load(Ordering::Relaxed) > self.answered {
                // Items are being created: not idle while they are.
                now + self.watch.idle
            } else {
                let last_message =
                    a.started + Duration::from_millis(a.last_message_ms.load(Ordering::Relaxed));
                last_message.max(self.last_answer) + self.watch.idle
            };
            if next <= now {
                return true;
            }
            self.timer.as_mut().reset(next);
        }
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> super::Polled {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(next) = Pin::new(inner).poll_frame(cx) {
            if let Some(Ok(frame)) = &next
                && let Some(data) = frame.data_ref()
            {
                let whole = self.framing.feed(data);
                if whole > 0 {
                    self.answered += whole;
                    self.last_answer = Instant::now();
                }
            }
            return Poll::Ready(next);
        }
        if !self.idle(cx) {
            return Poll::Pending;
        }
        // Dropping the handler's response ends its work on the stream.
        self.inner = None;
        let mut trailers = HeaderMap::new();
        let _ = idle_status(self.watch.idle).add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Finds whole gRPC messages (a 5-byte prefix, then the length it names)
/// in a run of DATA frames.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; 5],
    /// Prefix bytes seen of the current message.
    have: usize,
    /// Message bytes still to come once the prefix is whole.
    left: u64,
}

impl Framing {
    /// Takes the next bytes; returns the number of messages they complete.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut whole = 0;
        while !data.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(data.len());
                self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < 5 {
                    break;
                }
                let p = self.prefix;
                self.left = u32::from_be_bytes([p[1], p[2], p[3], p[4]]).into();
            } else {
                let n = (self.left).min(data.len() as u64);
                self.left -= n;
                data = &data[n as usize..];
            }
            if self.left == 0 {
                whole += 1;
                self.have = 0;
            }
        }
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::Framing;

    #[test]
    fn messages_are_counted_across_frames() {
        let mut f = Framing::default();
        // Two messages in one frame: 3 bytes, then an empty one.
        assert_eq!(f.feed(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0]), 2);
        // One message split inside its prefix and its body.
        assert_eq!(f.feed(&[0, 0, 0]), 0);
        assert_eq!(f.feed(&[0, 4, 9]), 0);
        assert_eq!(f.feed(&[9, 9]), 0);
        assert_eq!(f.feed(&[9, 0, 0]), 1);
        assert_eq!(f.feed(&[0, 0, 1, 7]), 1);
        assert_eq!(f.feed(&[]), 0);
    }
}
