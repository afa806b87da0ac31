//! The gate every API call passes before its handler, and the one place
//! that observes calls (metrics, the per-call log line).
//!
//! In order: refuse while draining or while the connection has too many
//! unread response bytes; refuse compressed messages; read the whole request
//! message within `--request-read-timeout` and `--max-request-bytes`; check
//! its framing and that it decodes (a plain INVALID_ARGUMENT otherwise);
//! take a `--max-concurrent-requests` slot or shed the call. A unary call
//! gives its slot back when its handler answers, a streaming call when it
//! ends. Health and reflection skip the gate, so probes are answered under
//! any load.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::{sync::OwnedSemaphorePermit, time::timeout};
use tonic::{Code, Status, body::Body};
use tower::Service;

use super::{Routes, Shared, framing};
use crate::graph::trace::Trace;
use crate::grpc::codec::malformed;
use crate::grpc::kinds::{OPERATIONS, STREAMING, UNARY};
use crate::grpc::status::CLIENT_REQUEST_ID;
use crate::metrics as m;
use crate::pb::run_state_service_server::RunStateServiceServer;

/// The API service, called by the gate directly (not through the router).
pub(crate) type Api = RunStateServiceServer<crate::grpc::RunStateApi>;

/// The service's path prefix.
const API_PREFIX: &str = "/intune.runstates.v1.RunStateService/";
/// The outbox's operations service (its RPCs are in [`RPCS`] too).
const OPERATIONS_PREFIX: &str = "/google.longrunning.Operations/";

/// Largest response chunk handed to HTTP/2 at once: a slow reader's unread
/// responses stay in the gate, where the send budget counts them.
const CHUNK: usize = 16 << 10;

/// Longest resource name written to a log line.
const MAX_LOGGED_NAME: usize = 256;

/// Per-connection state.
#[derive(Debug, Default)]
struct Conn {
    /// Response bytes produced but not yet taken by the HTTP/2 layer.
    unsent: AtomicUsize,
}

/// The tower service hyper calls for each stream of one connection.
#[derive(Clone)]
pub(super) struct Gate {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    routes: Routes,
    api: Api,
}

impl Gate {
    pub(super) fn new(shared: Arc<Shared>, routes: Routes, api: Api) -> Self {
        Self {
            shared,
            conn: Arc::default(),
            routes,
            api,
        }
    }
}

type GateFuture = Pin<Box<dyn Future<Output = Result<Response<GateBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Gate {
    type Response = Response<GateBody>;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> GateFuture {
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
            let answer = self.routes.call(request);
            return Box::pin(async move {
                let Ok(response) = answer.await;
                Ok(response.map(GateBody::plain))
            });
        }
        if STREAMING.contains(&RPCS[rpc_index(path)]) {
            return Box::pin(self.clone().stream_call(request));
        }
        Box::pin(self.clone().api_call(request.map(Inbound::Unary)))
    }
}

/// A request's body as the gate gets it.
enum Inbound {
    Unary(Incoming),
    /// A streaming call that has waited for its first bytes.
    Stream(Result<(Body, super::streams::Watch), Status>),
}

impl Gate {
    /// A streaming call waits for its first bytes here, holding little (no
    /// call state yet), then goes on as any call.
    fn stream_call(
        self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<GateBody>, Infallible>> + Send {
        use futures_util::FutureExt;
        let (parts, body) = request.into_parts();
        self.shared.streams.open(body).then(move |opened| {
            let request = Request::from_parts(parts, Inbound::Stream(opened));
            Box::pin(self.api_call(request))
        })
    }

    async fn api_call(
        mut self,
        request: Request<Inbound>,
    ) -> Result<Response<GateBody>, Infallible> {
        let path = request.uri().path();
        let rpc = rpc_index(path);
        let ours = path.starts_with(API_PREFIX);
        let trace = Trace::new(client_request_id(request.headers()));
        let mut call = Observed::new(rpc, Arc::clone(&trace), &self);
        // Boxed: reading the message (its timer, the body) is short, while
        // the rest of this future lives as long as the call.
        let admitted = Box::pin(self.admit(request, &mut call)).await;
        let response = match admitted {
            Err(status) => status.into_http::<Body>(),
            // The service's own paths go to it straight, without the
            // router's matching and its layers of futures.
            Ok(request) if ours => {
                let answer = self.api.call(request);
                let Ok(response) = trace.scope(answer).await;
                response
            }
            // Boxed: the router's future is large and rarely needed.
            Ok(request) => {
                let answer = self.routes.call(request);
                let Ok(response) = Box::pin(trace.scope(answer)).await;
                response
            }
        };
        // A unary call is done once its handler answered; a streaming
        // call keeps its slot until its response ends.
        if !STREAMING.contains(&call.method) {
            call.slot = None;
        }
        let response = match call.stream.take() {
            Some(watch) => watch.wrap(response),
            None => response,
        };
        Ok(Box::pin(call.respond(response)).await)
    }

    /// Checks the call and reads its message; puts its slot in `call`.
    async fn admit(
        &self,
        request: Request<Inbound>,
        call: &mut Observed,
    ) -> Result<Request<Body>, Status> {
        let limits = &self.shared.limits;
        if self.shared.state.draining() {
            shed("draining");
            return Err(Status::unavailable(
                "the gateway is shutting down; retry on another instance",
            ));
        }
        let unsent = self.conn.unsent.load(Ordering::Relaxed);
        if unsent >= limits.connection_send_budget {
            shed("send_budget");
            return Err(Status::resource_exhausted(format!(
                "this connection has {unsent} bytes of responses it has not read; read them before starting more calls"
            )));
        }
        let (mut parts, body) = request.into_parts();
        framing::check_encoding(&parts.headers)?;
        let body = match body {
            Inbound::Unary(body) => body,
            // A stream is a long feed: its messages are not read up front
            // (their framing and size are checked as they pass, and the
            // handler applies backpressure); it has a streaming slot and
            // takes a concurrency slot.
            Inbound::Stream(opened) => {
                let (body, watch) = opened?;
                call.stream = Some(watch);
                call.slot = Some(self.permit()?);
                let body = framing::Checked::new(body, limits.max_request_bytes);
                return Ok(Request::from_parts(parts, Body::new(body)));
            }
        };
        let read = timeout(
            limits.request_read_timeout,
            read_message(body, limits.max_request_bytes),
        );
        let message = read.await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "the request message did not arrive within {} ms (--request-read-timeout)",
                limits.request_read_timeout.as_millis()
            ))
        })??;
        // A path no RPC serves is answered UNIMPLEMENTED, whatever its body.
        if call.rpc != RPCS.len() - 1 {
            framing::check_unary(&message)?;
        }
        call.resource = check_message(call.rpc, &message)?;
        // The handler measures the caller's deadline from when it starts:
        // take off the time spent reading the message.
        let headers = &mut parts.headers;
        let metadata = tonic::metadata::MetadataMap::from_headers(std::mem::take(headers));
        let timeout = crate::grpc::context::grpc_timeout(&metadata);
        *headers = metadata.into_headers();
        if let Some(timeout) = timeout {
            let left = timeout.saturating_sub(call.started.elapsed());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "the deadline passed while the request was being received",
                ));
            }
            if let Ok(value) = HeaderValue::from_str(&grpc_timeout_text(left)) {
                headers.insert("grpc-timeout", value);
            }
        }
        call.slot = Some(self.permit()?);
        Ok(Request::from_parts(parts, Body::new(Full::new(message))))
    }

    /// A `--max-concurrent-requests` slot, or the call is shed.
    fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.shared.permits)
            .try_acquire_owned()
            .map_err(|_| {
                shed("concurrency");
                Status::resource_exhausted(format!(
                    "the gateway is handling its limit of {} calls (--max-concurrent-requests); retry later",
                    self.shared.limits.max_concurrent_requests
                ))
            })
    }
}

/// A `grpc-timeout` value (at most 8 digits and a unit).
fn grpc_timeout_text(d: std::time::Duration) -> String {
    const MAX: u128 = 99_999_999;
    if d.as_micros() <= MAX {
        format!("{}u", d.as_micros())
    } else if d.as_millis() <= MAX {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", d.as_secs().min(MAX as u64))
    }
}

fn shed(reason: &'static str) {
    metrics::counter!(m::RPC_SHED, "reason" => reason).increment(1);
}

/// Reads a whole unary request body, refusing one over `max` message bytes
/// as soon as its gRPC length prefix announces it.
async fn read_message(mut body: Incoming, max: usize) -> Result<Bytes, Status> {
    let too_large = |n: usize| {
        Status::resource_exhausted(format!(
            "the request message is {n} bytes, over the limit of {max} (--max-request-bytes)"
        ))
    };
    // The first DATA frame is kept as it came (usually the whole message);
    // only a message split over frames is copied into one buffer.
    let mut first = Bytes::new();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| Status::cancelled("the client stopped sending the request"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if first.is_empty() && buf.is_empty() {
            first = data;
        } else {
            if buf.is_empty() {
                buf.reserve(first.len() + data.len());
                buf.extend_from_slice(&std::mem::take(&mut first));
            }
            buf.extend_from_slice(&data);
        }
        let got: &[u8] = if buf.is_empty() { &first } else { &buf };
        if got.len() >= 5 {
            let announced = u32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize;
            if announced > max {
                return Err(too_large(announced));
            }
        }
        if got.len() > max.saturating_add(5) {
            return Err(too_large(got.len() - 5));
        }
    }
    Ok(if buf.is_empty() { first } else { buf.freeze() })
}

/// The RPCs' short names (bounded metric labels): the service's unary ones
/// in the order of [`UNARY`], its streaming ones, the operations service's
/// in the order of [`OPERATIONS`], `unknown` last.
static RPCS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    UNARY
        .iter()
        .map(|r| r.name)
        .chain(STREAMING.iter().copied())
        .chain(OPERATIONS.iter().map(|r| r.name))
        .chain(["unknown"])
        .collect()
});

/// The index in [`RPCS`] of the RPC a path names (`unknown` when none).
fn rpc_index(path: &str) -> usize {
    let unknown = RPCS.len() - 1;
    let operations = unknown - OPERATIONS.len();
    let (name, range) = if let Some(name) = path.strip_prefix(API_PREFIX) {
        (name, 0..operations)
    } else if let Some(name) = path.strip_prefix(OPERATIONS_PREFIX) {
        (name, operations..unknown)
    } else {
        return unknown;
    };
    RPCS[range.clone()]
        .iter()
        .position(|r| *r == name)
        .map_or(unknown, |i| i + range.start)
}

/// The RPC's short name, from a fixed list (a bounded metric label).
#[cfg(test)]
fn rpc_name(path: &str) -> &'static str {
    RPCS[rpc_index(path)]
}

/// Number of gRPC codes (0 OK to 16 UNAUTHENTICATED).
const CODES: usize = 17;

/// The per-call metric handles, registered once per method and code and
/// kept: looking a labelled metric up by its name and labels costs more
/// than the rest of the gate's work on a call.
pub(super) struct RpcMetrics {
    in_flight: metrics::Gauge,
    by_call: Box<[OnceLock<(metrics::Counter, metrics::Histogram)>]>,
}

impl RpcMetrics {
    /// Handles on the recorder installed now.
    pub(super) fn new() -> Self {
        Self {
            in_flight: metrics::gauge!(m::RPC_IN_FLIGHT),
            by_call: (0..RPCS.len() * CODES).map(|_| OnceLock::new()).collect(),
        }
    }

    fn ended(&self, rpc: usize, code: Code, elapsed: f64) {
        let code_index = (code as usize).min(CODES - 1);
        let (count, duration) = self.by_call[rpc * CODES + code_index].get_or_init(|| {
            let labels = [("method", RPCS[rpc]), ("code", code_name(code))];
            (
                metrics::counter!(m::RPC_REQUESTS, &labels),
                metrics::histogram!(m::RPC_DURATION, &labels),
            )
        });
        count.increment(1);
        duration.record(elapsed);
    }
}

/// Decodes the message of the RPC at `rpc` in [`RPCS`]; returns the
/// resource it names (the parent of a create). Its framing was checked before.
fn check_message(rpc: usize, framed: &[u8]) -> Result<String, Status> {
    let operations = RPCS.len() - 1 - OPERATIONS.len();
    let unary = match rpc.checked_sub(operations) {
        Some(i) => OPERATIONS.get(i),
        None => UNARY.get(rpc),
    };
    match (unary, framed.get(5..)) {
        (Some(r), Some(b)) => (r.resource)(b).map_err(|e| malformed(&e)),
        _ => Ok(String::new()),
    }
}

/// The `client-request-id` for Graph: the caller's `x-request-id` or
/// `client-request-id` when it is a GUID, else a new one.
fn client_request_id(headers: &HeaderMap) -> String {
    ["x-request-id", "client-request-id"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .find_map(|v| uuid::Uuid::try_parse(v.trim()).ok())
        .unwrap_or_else(uuid::Uuid::new_v4)
        .hyphenated()
        .to_string()
}

/// One API call being observed; it reports (metrics, log line) when dropped:
/// when its response ends, or when the call is cancelled.
struct Observed {
    /// Index in [`RPCS`].
    rpc: usize,
    method: &'static str,
    started: Instant,
    trace: Arc<Trace>,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    resource: String,
    code: Option<Code>,
    message: String,
    /// The call's `--max-concurrent-requests` slot, while it holds one.
    slot: Option<OwnedSemaphorePermit>,
    /// A streaming call's slot and idle timer.
    stream: Option<super::streams::Watch>,
}

impl Observed {
    fn new(rpc: usize, trace: Arc<Trace>, gate: &Gate) -> Self {
        gate.shared.call_started();
        gate.shared.rpc_metrics.in_flight.increment(1);
        Self {
            rpc,
            method: RPCS[rpc],
            started: Instant::now(),
            trace,
            shared: Arc::clone(&gate.shared),
            conn: Arc::clone(&gate.conn),
            resource: String::new(),
            code: None,
            message: String::new(),
            slot: None,
            stream: None,
        }
    }

    /// Reads a status from headers or trailers.
    fn read_status(&mut self, headers: &HeaderMap) {
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        {
            self.code = Some(Code::from_i32(code));
            self.message = headers
                .get("grpc-message")
                .map(|v| {
                    percent_encoding::percent_decode(v.as_bytes())
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
        }
    }

    /// Takes the response: adds `client-request-id`, and counts the message
    /// against the connection's send budget until HTTP/2 takes it.
    async fn respond(mut self, response: Response<Body>) -> Response<GateBody> {
        let (mut parts, mut body) = response.into_parts();
        self.read_status(&parts.headers);
        if let Ok(mut value) = HeaderValue::from_str(self.trace.client_request_id()) {
            // Unique per call: never indexed, so HPACK skips its table.
            value.set_sensitive(true);
            parts.headers.insert(CLIENT_REQUEST_ID, value);
        }
        let mut pending = Bytes::new();
        let mut after = None;
        if self.code.is_none() {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => pending = data,
                    Err(frame) => after = Some(Ok(frame)),
                },
                Some(Err(status)) => after = Some(Err(status)),
                None => {}
            }
        }
        self.conn.unsent.fetch_add(pending.len(), Ordering::Relaxed);
        Response::from_parts(
            parts,
            GateBody {
                inner: body,
                pending,
                after,
                observed: Some(self),
            },
        )
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let code_name = code_name(code);
        let elapsed = self.started.elapsed();
        let metrics = &self.shared.rpc_metrics;
        metrics.in_flight.decrement(1);
        metrics.ended(self.rpc, code, elapsed.as_secs_f64());
        let trace = &self.trace;
        // The first MAX_LOGGED_NAME characters, without a copy.
        let end = self
            .resource
            .char_indices()
            .nth(MAX_LOGGED_NAME)
            .map_or(self.resource.len(), |(i, _)| i);
        let resource = &self.resource[..end];
        let error = (code != Code::Ok).then_some(self.message.as_str());
        tracing::info!(
            target: "runstate_gateway::rpc",
            rpc = self.method,
            resource,
            code = code_name,
            graph_status = trace.last_status(),
            graph_request_id = trace.request_id().as_deref(),
            client_request_id = trace.client_request_id(),
            attempts = trace.attempts(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            error,
            "rpc"
        );
        self.shared.call_ended();
    }
}

/// The canonical name of a gRPC code, as in `grpc-status` documentation.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A response body: the message in chunks, then the rest of tonic's body.
pub(super) struct GateBody {
    inner: Body,
    /// Message bytes not yet handed to HTTP/2 (counted in `Conn::unsent`).
    pending: Bytes,
    /// A frame read ahead after the message.
    after: Option<Result<Frame<Bytes>, Status>>,
    observed: Option<Observed>,
}

impl GateBody {
    fn plain(inner: Body) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            after: None,
            observed: None,
        }
    }

    fn release(&mut self, n: usize) {
        if let Some(o) = &self.observed {
            o.conn.unsent.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Drop for GateBody {
    fn drop(&mut self) {
        let n = self.pending.len();
        self.release(n);
    }
}

impl HttpBody for GateBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> super::Polled {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(CHUNK);
            let chunk = self.pending.split_to(n);
            self.release(n);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let next = match self.after.take() {
            Some(frame) => Some(frame),
            None => std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)),
        };
        match &next {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(o)) = (frame.trailers_ref(), self.observed.as_mut()) {
                    o.read_status(trailers);
                }
            }
            Some(Err(status)) => {
                if let Some(o) = self.observed.as_mut() {
                    o.code = Some(status.code());
                    o.message = status.message().to_owned();
                }
            }
            None => {}
        }
        if next.is_none() || self.is_end_stream() {
            // The call is over: report it now rather than when hyper drops the body.
            self.observed.take();
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.after.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let extra = self.pending.len() as u64;
        hint.set_lower(hint.lower() + extra);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_request_ids_are_used_only_when_they_are_guids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "not a guid".parse().unwrap());
        let fresh = client_request_id(&h);
        assert!(uuid::Uuid::try_parse(&fresh).is_ok());
        h.insert(
            "client-request-id",
            "3F1C2A9E-5B7D-4C1E-9A2B-8D4E6F0A1B2C".parse().unwrap(),
        );
        assert_eq!(
            client_request_id(&h),
            "3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c"
        );
    }

    #[test]
    fn grpc_timeouts_fit_eight_digits() {
        use std::time::Duration;
        assert_eq!(grpc_timeout_text(Duration::from_millis(280)), "280000u");
        assert_eq!(grpc_timeout_text(Duration::from_secs(3600)), "3600000m");
        assert_eq!(grpc_timeout_text(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn rpc_names_are_bounded() {
        assert_eq!(
            rpc_name("/intune.runstates.v1.RunStateService/GetScriptUserState"),
            "GetScriptUserState"
        );
        assert_eq!(
            rpc_name("/intune.runstates.v1.RunStateService/Evil\n"),
            "unknown"
        );
        assert_eq!(rpc_name("/x/y"), "unknown");
        assert_eq!(
            rpc_name("/google.longrunning.Operations/WaitOperation"),
            "WaitOperation"
        );
        assert_eq!(
            rpc_name("/intune.runstates.v1.RunStateService/SubmitRunStates"),
            "SubmitRunStates"
        );
        assert_eq!(
            rpc_name("/intune.runstates.v1.RunStateService/GetOperation"),
            "unknown"
        );
        assert_eq!(
            rpc_name("/google.longrunning.Operations/SubmitRunStates"),
            "unknown"
        );
        assert_eq!(
            rpc_name("/intune.runstates.v1.RunStateService/StreamCreateScriptDeviceStates"),
            "StreamCreateScriptDeviceStates"
        );
    }

    #[test]
    fn the_gate_knows_every_rpc_of_the_service_and_no_other() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut served: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "RunStateService" || s.name() == "Operations")
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_owned())
            .collect();
        served.sort();
        let mut known: Vec<String> = RPCS[..RPCS.len() - 1]
            .iter()
            .map(|s| s.to_string())
            .collect();
        known.sort();
        assert_eq!(known, served);
        for (i, rpc) in UNARY.iter().enumerate() {
            assert_eq!(rpc_index(&format!("{API_PREFIX}{}", rpc.name)), i);
        }
    }
}
