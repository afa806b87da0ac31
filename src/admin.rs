//! The admin HTTP server (`--admin-listen`): `/metrics` in the Prometheus
//! text format, `/livez`, and `/readyz` (503 while draining). It can bind
//! the pod address while the gRPC port stays on loopback, so probes and
//! scrapers reach it without reaching the write API.
//!
//! It speaks HTTP/1.1 with limits of its own, so it cannot take the file
//! descriptors the gRPC listener needs: `--admin-max-connections` open at
//! once (the excess is closed as soon as it is accepted), a request's
//! headers within `--admin-header-read-timeout` (also the longest wait for
//! the next request on a kept-alive connection), and no more than
//! `--admin-idle-timeout` without a byte read or written.

use std::{
    convert::Infallible,
    io,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
    time::{Instant, Sleep, sleep, timeout},
};

use crate::server;

/// The admin listener's limits (see SECURITY.md).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

struct Admin {
    metrics: Option<PrometheusHandle>,
    state: Arc<server::State>,
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

impl Admin {
    /// The answer to one request: GET (or HEAD) of a route, else 404 or 405.
    fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let route = request.uri().path();
        if !matches!(route, "/metrics" | "/livez" | "/readyz") {
            return text(StatusCode::NOT_FOUND, TEXT, "");
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, TEXT, "");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET,HEAD"));
            return response;
        }
        match route {
            "/metrics" => match &self.metrics {
                Some(handle) => {
                    crate::metrics::refresh();
                    text(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        handle.render(),
                    )
                }
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "another metrics recorder is installed in this process\n",
                ),
            },
            "/livez" => text(StatusCode::OK, TEXT, "ok\n"),
            _ => match self.state.unready() {
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, TEXT, why),
                None => text(StatusCode::OK, TEXT, "ready\n"),
            },
        }
    }
}

/// Serves the admin routes until `stop` completes; keeps the metrics
/// recorder's histograms trimmed meanwhile.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    state: Arc<server::State>,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let upkeep = metrics.clone().map(|handle| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    });
    let admin = Arc::new(Admin { metrics, state });
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        std::future::ready(Ok::<_, Infallible>(admin.answer(&request)))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut stop = pin!(stop);
    while let Some((stream, _, slot)) = server::accept(
        &listener,
        &slots,
        &mut tasks,
        &mut stop,
        "admin_max_connections",
    )
    .await
    {
        let io = TokioIo::new(IdleIo::new(stream, limits.idle_timeout));
        let conn = builder.serve_connection(io, service.clone());
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut conn = pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "admin connection closed");
                    }
                    return;
                }
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Answers in progress finish; the rest are dropped with the set.
    let _ = timeout(Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    Ok(())
}

/// A connection that fails with `TimedOut` once no byte has been read or
/// written for `idle`.
struct IdleIo {
    inner: TcpStream,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl IdleIo {
    fn new(inner: TcpStream, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(sleep(idle)),
        }
    }

    /// Restarts the timer after progress; on no progress, fails once it fired.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                let deadline = Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(result)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no byte read or written within --admin-idle-timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.check(cx, polled)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
