//! The HTTP/2 server under the gRPC services: accepts connections, applies
//! the per-connection limits, and drains on shutdown.
//!
//! tonic's own `Server` cannot cap connections, time out a silent handshake
//! or bound a connection's send buffers, so the gRPC services ([`Routes`])
//! are served here with hyper directly. Each accepted TCP stream goes through an
//! optional async `Handshake` (TLS) and must send the HTTP/2 preface, all
//! within `--handshake-timeout`; past `--max-connections` a stream is
//! closed as soon as it is accepted. A connection with no open stream for
//! `--idle-connection-timeout` gets GOAWAY and is closed.

mod framing;
mod gate;
mod idle;
mod io;
mod routes;
mod streams;

use std::{
    io as stdio,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
pub use io::BoxIo;
pub use routes::Routes;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, watch},
    task::JoinSet,
    time::{Instant, sleep, timeout, timeout_at},
};

use crate::metrics as m;

/// The next connection that has a slot, or `None` once `stop` is ready;
/// reaps the finished connection tasks in `tasks` first. A failed accept (out of descriptors, usually) backs off instead of
/// spinning; a connection past the limit is closed at once and counted
/// under `reason`.
pub(crate) async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
    reason: &'static str,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    while tasks.try_join_next().is_some() {}
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.as_mut() => return None,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match Arc::clone(slots).try_acquire_owned() {
            Ok(slot) => return Some((stream, peer, slot)),
            Err(_) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
                tracing::debug!(%peer, reason, "connection refused: no slot left");
            }
        }
    }
}

/// Wraps an accepted TCP stream, e.g. in TLS; runs within the handshake timeout.
/// What a gRPC body of this server yields when polled: a frame, or the
/// status that ends the call.
pub(crate) type Polled =
    std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>>;

pub type Handshake = Arc<
    dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = stdio::Result<BoxIo>> + Send>> + Send + Sync,
>;

/// The limits of the server (see SECURITY.md).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub handshake_timeout: Duration,
    pub request_read_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
    pub connection_send_budget: usize,
    pub shutdown_grace: Duration,
    pub max_streaming_calls: usize,
    pub stream_idle_timeout: Duration,
    pub idle_connection_timeout: Duration,
}

/// What the server and the admin endpoint share: the drain flag, and the
/// outbox whose store must be open for the gateway to be ready.
#[derive(Default)]
pub struct State {
    draining: AtomicBool,
    pub outbox: std::sync::OnceLock<Arc<crate::outbox::Outbox>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("draining", &self.draining())
            .finish_non_exhaustive()
    }
}

impl State {
    /// True once shutdown has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Why the gateway is not ready, if it is not.
    pub fn unready(&self) -> Option<&'static str> {
        if self.draining() {
            return Some("draining\n");
        }
        match self.outbox.get() {
            Some(o) if !o.is_open() => Some("the outbox store is not open or does not answer\n"),
            _ => None,
        }
    }
}

/// Per-process serving state shared by every connection.
struct Shared {
    limits: Limits,
    state: Arc<State>,
    /// One permit per API call in its handler (the concurrency limit).
    permits: Arc<Semaphore>,
    /// API calls from their first byte to their last response byte.
    in_flight: AtomicUsize,
    idle: Notify,
    /// The per-call metric handles.
    rpc_metrics: gate::RpcMetrics,
    /// The open streaming calls.
    streams: streams::Streams,
}

impl Shared {
    fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn call_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Completes when no API call is in flight.
    async fn calls_done(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The client connection preface every HTTP/2 connection starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest header block accepted from a client.
const MAX_HEADER_LIST_BYTES: u32 = 32 << 10;
/// Per-stream bytes hyper may buffer ahead of the client's window.
const MAX_SEND_BUF_BYTES: usize = 64 << 10;
/// Request bytes a client may send on one stream ahead of the handler
/// (hyper's default is 1 MiB): what a stream in backpressure holds.
const STREAM_WINDOW_BYTES: u32 = 64 << 10;

/// Serves `routes` on `listener` until `shutdown` completes, then drains:
/// `on_drain` runs (health turns NOT_SERVING), the listener closes, calls in
/// flight get up to `shutdown_grace` to finish, and the rest are cancelled.
/// Calls to the API service go to `api` directly (it must also be in
/// `routes`, which serve everything else).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    api: gate::Api,
    limits: Limits,
    state: Arc<State>,
    handshake: Option<Handshake>,
    shutdown: impl Future<Output = ()> + Send,
    on_drain: impl Future<Output = ()> + Send,
) {
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        streams: streams::Streams::new(limits.max_streaming_calls, limits.stream_idle_timeout),
        limits,
        state,
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
        rpc_metrics: gate::RpcMetrics::new(),
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.limits.max_streams_per_connection)
        .max_send_buf_size(MAX_SEND_BUF_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(shared.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let mut shutdown = pin!(shutdown);
    while let Some((stream, peer, permit)) = accept(
        &listener,
        &connections,
        &mut tasks,
        &mut shutdown,
        "max_connections",
    )
    .await
    {
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            shared: Arc::clone(&shared),
            builder: Arc::clone(&builder),
            routes: routes.clone(),
            api: api.clone(),
            handshake: handshake.clone(),
            stop: stop_rx.clone(),
            peer,
        };
        tasks.spawn(async move {
            let _permit = permit;
            metrics::gauge!(m::CONNECTIONS_OPEN).increment(1);
            conn.run(stream).await;
            metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1);
        });
    }

    // Drain.
    let deadline = Instant::now() + shared.limits.shutdown_grace;
    shared.state.draining.store(true, Ordering::Relaxed);
    on_drain.await;
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(
        in_flight = shared.in_flight.load(Ordering::Relaxed),
        grace_ms = shared.limits.shutdown_grace.as_millis() as u64,
        "draining: no new connections or calls; waiting for calls in flight"
    );
    if timeout_at(deadline, shared.calls_done()).await.is_err() {
        tracing::warn!(
            in_flight = shared.in_flight.load(Ordering::Relaxed),
            "shutdown grace over: cancelling the calls still in flight"
        );
    }
    // Let finished responses flush and connections close; long-lived
    // streams (health Watch, reflection) end here.
    let flush = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_millis(500));
    let _ = timeout(flush, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.shutdown().await;
}

/// One accepted connection.
struct Connection {
    shared: Arc<Shared>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    routes: Routes,
    api: gate::Api,
    handshake: Option<Handshake>,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let handshake = self.handshake.take();
        let opened = timeout(self.shared.limits.handshake_timeout, async {
            let io: BoxIo = match handshake {
                Some(h) => h(stream).await?,
                None => Box::new(stream),
            };
            io::read_preface(io, PREFACE).await
        })
        .await;
        let io = match opened {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "handshake").increment(1);
                tracing::debug!(peer = %self.peer, error = %e, "connection closed: bad handshake");
                return;
            }
            Err(_) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "handshake_timeout")
                    .increment(1);
                tracing::debug!(peer = %self.peer, "connection closed: no HTTP/2 preface in time");
                return;
            }
        };
        let tracker = Arc::new(idle::Tracker::default());
        let service = idle::Tracked::new(
            gate::Gate::new(Arc::clone(&self.shared), self.routes, self.api),
            Arc::clone(&tracker),
        );
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let mut conn = pin!(conn);
        if *self.stop.borrow() {
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = self.stop.changed() => conn.as_mut().graceful_shutdown(),
            _ = tracker.idle_for(self.shared.limits.idle_connection_timeout) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "idle").increment(1);
                tracing::debug!(peer = %self.peer, "connection closed: idle (--idle-connection-timeout)");
                conn.as_mut().graceful_shutdown();
            }
        }
        let _ = conn.await;
    }
}
