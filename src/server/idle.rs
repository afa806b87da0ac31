//! Open streams per connection, for `--idle-connection-timeout`: hyper has
//! no idle timeout for HTTP/2, so the service counts the streams it serves
//! (from the call until hyper drops the response body) and the connection
//! is shut down once none has been open for the timeout.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::{sync::Notify, time::sleep};
use tower::Service;

/// The streams of one connection.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    open: AtomicUsize,
    /// Streams opened since the connection started.
    opened: AtomicU64,
    none_open: Notify,
}

impl Tracker {
    fn start(self: &Arc<Self>) -> Open {
        self.opened.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(Arc::clone(self))
    }

    /// Completes once no stream has been open for `limit`.
    pub(super) async fn idle_for(&self, limit: Duration) {
        loop {
            loop {
                let notified = self.none_open.notified();
                if self.open.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
            let seen = self.opened.load(Ordering::Acquire);
            sleep(limit).await;
            if self.open.load(Ordering::Acquire) == 0 && self.opened.load(Ordering::Acquire) == seen
            {
                return;
            }
        }
    }
}

/// One open stream; counted until dropped.
#[derive(Debug)]
struct Open(Arc<Tracker>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_open.notify_waiters();
        }
    }
}

/// A connection's service, counting its streams.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, tracker: Arc<Tracker>) -> Self {
        Self { inner, tracker }
    }
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            open: Some(self.tracker.start()),
            inner: self.inner.call(request),
        }
    }
}

/// The service's answer; the stream stays counted in its body.
pub(super) struct TrackedFuture<F> {
    open: Option<Open>,
    inner: F,
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(response) = ready!(Pin::new(&mut self.inner).poll(cx));
        let open = self.open.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _open: open })))
    }
}

/// A response body that keeps its stream counted.
pub(super) struct TrackedBody<B> {
    inner: B,
    _open: Option<Open>,
}

impl<B: HttpBody + Unpin> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
