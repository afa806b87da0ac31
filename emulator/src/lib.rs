//! An in-memory stand-in for the Graph beta run-state API, for trying the
//! gateway with no tenant and for tests: the gateway's test oracle, so it
//! shares none of the gateway's translation code (its own entity model, dates
//! and paths). It is a crate of its own that depends on no gateway crate, so
//! the compiler keeps it that way.
//!
//! It serves the four script collections' `userRunStates`, `deviceRunStates`
//! and nested device states with POST, GET (paged, `$filter`, `$select`),
//! PATCH and DELETE, and `POST /$batch`, behaving like Graph per
//! `graph-notes.md`: GUID ids, 201 with `@odata.context`, strict bodies
//! (unknown properties, wrong types, bad enum names and dates are Graph-shaped
//! 400s), timestamps stored as instants and returned in UTC with 7 digits,
//! bearer token required. Tests steer it through [`Emulator`]: what it does
//! with a client-chosen id ([`ClientIds`]), Intune's throttling ([`Limits`]:
//! writes and requests per app and per tenant, with the [`RetryAfter`] form
//! of its 429s), chosen error answers
//! ([`Fault`]), PATCH answered 204, added latency, and a bounded record of the
//! requests it saw. The same controls are served over HTTP under `/_emulator/`
//! (see [`control`]); they are for development only: anyone who can reach the
//! port can use them. [`Args`] and [`serve`] run it alone (the gateway's
//! `emulator` command).

mod batch;
mod cli;
pub mod control;
mod dates;
mod fault;
mod identity;
mod limit;
mod model;
mod paths;
mod query;
mod record;
mod routes;
mod tls;

pub use cli::{Args, serve};
pub use fault::Fault;
pub use identity::{Grant, Issued};
pub use limit::{Limit, Limits, RetryAfter, Scope, parse_write_limit};
pub use record::Recorded;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// How many requests are kept for [`Emulator::requests`].
const RECORD_LIMIT: usize = 10_000;
/// Bytes kept of one recorded body, and of one request's path and of its headers.
pub const RECORD_BODY_BYTES: usize = 8 * 1024;
/// Bytes kept of all recorded requests; the oldest go first.
pub const RECORD_TOTAL_BYTES: usize = 4 * 1024 * 1024;
/// The longest added latency.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// A handle on an emulator's state; cheap to clone.
#[derive(Clone, Default)]
pub struct Emulator {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    store: Mutex<model::Store>,
    faults: Mutex<Vec<Fault>>,
    recorded: Mutex<record::Record>,
    count: AtomicU64,
    patch_no_content: AtomicBool,
    latency_us: AtomicU64,
    record_bodies: AtomicBool,
    /// Answer creates without keeping them (long benchmarks).
    forget_creates: AtomicBool,
    /// A [`ClientIds`] as its index.
    client_ids: AtomicU8,
    limits: Mutex<limit::Limiter>,
    /// 429s answered by each limit, in [`Scope::ALL`]'s order.
    throttled: [AtomicU64; 4],
    /// Answers by status, `$batch` items included.
    answered: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Entra ID and managed identity endpoints ([`identity`]).
    identity: identity::Identity,
}

/// What the emulator does with an `id` in a POST body: the three plausible
/// behaviours of Graph, which is documented to treat `id` as read-only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientIds {
    /// Store it; a second POST with the same id is 409 Conflict.
    Honour,
    /// Drop it and assign a GUID (what public evidence says Intune does).
    #[default]
    Ignore,
    /// Refuse the create: 400 naming the `id` property.
    Reject,
}

impl ClientIds {
    /// Stored as an index in this order, so that zero is the default.
    const ALL: [ClientIds; 3] = [ClientIds::Ignore, ClientIds::Honour, ClientIds::Reject];
}

/// An emulator serving on a socket.
pub struct RunningEmulator {
    addr: SocketAddr,
    emulator: Emulator,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Serving HTTPS ([`Emulator::spawn_tls`]).
    tls: bool,
}

impl RunningEmulator {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Graph base URL to give the gateway, e.g. `http://127.0.0.1:PORT/beta`,
    /// or `https://localhost:PORT/beta` when serving TLS.
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}/beta", self.addr.port())
        } else {
            format!("http://{}/beta", self.addr)
        }
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `addr` with a deep accept queue: a client opening a thousand
/// HTTP/1.1 connections at once (as a gateway under load does) would
/// otherwise overflow tokio's default of 1024 and wait a second for a SYN
/// retransmit, which real Graph never makes it do.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

impl Emulator {
    pub fn new() -> Self {
        let e = Self::default();
        e.state.record_bodies.store(true, Ordering::Relaxed);
        e
    }

    /// The HTTP routes, for serving or for calling in-process.
    pub fn router(&self) -> axum::Router {
        control::router(self.clone())
    }

    /// Serves on `addr` (use port 0 for any free port) until stopped or dropped.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<RunningEmulator> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = self.router();
        // No Nagle delay on answers (as the TLS listener and real Graph).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the Graph emulator stopped");
            }
        });
        Ok(RunningEmulator {
            addr,
            emulator: self.clone(),
            shutdown: Some(tx),
            task,
            tls: false,
        })
    }

    /// Serves HTTPS on `addr` (ALPN `h2` and `http/1.1`) with a certificate
    /// for `localhost`, `127.0.0.1` and `::1` signed by a CA made here; the
    /// CA's PEM is written to `ca_out` before the port is bound, so whoever
    /// sees the port open can read it. [`RunningEmulator::base_url`] is then
    /// `https://localhost:PORT/beta`.
    pub async fn spawn_tls(
        &self,
        addr: SocketAddr,
        ca_out: &std::path::Path,
    ) -> std::io::Result<RunningEmulator> {
        let generated = tls::generate().map_err(std::io::Error::other)?;
        tls::write_ca(ca_out, &generated.ca_pem).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot write {}: {e}", ca_out.display()))
        })?;
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(generated.config);
        let service = hyper_util::service::TowerToHyperService::new(self.router());
        let task = tokio::spawn(async move {
            // Dropped when serving stops, which ends every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let tcp = tokio::select! {
                    _ = &mut rx => break,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            tracing::warn!(error = %e, "the Graph emulator cannot accept");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let service = service.clone();
                connections.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(io, service)
                    .await;
                });
            }
        });
        Ok(RunningEmulator {
            addr,
            emulator: self.clone(),
            shutdown: Some(tx),
            task,
            tls: true,
        })
    }

    /// Adds a fault; the first matching fault answers. In-process callers are
    /// trusted: a fault with no matcher matches every request.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state.faults).push(fault);
    }

    /// Adds a fault from an untrusted source (the HTTP control API): it must
    /// pass [`Fault::validate`], and at most [`control::MAX_FAULTS`] are held.
    pub fn try_inject(&self, fault: Fault) -> Result<(), String> {
        fault.validate()?;
        let mut faults = lock(&self.state.faults);
        if faults.len() >= control::MAX_FAULTS {
            return Err(format!(
                "{} faults are held already; DELETE /_emulator/faults first",
                control::MAX_FAULTS
            ));
        }
        faults.push(fault);
        Ok(())
    }

    /// How many faults are held.
    pub fn fault_count(&self) -> usize {
        lock(&self.state.faults).len()
    }

    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Answer PATCH with 204 and no body (as the live service often does).
    pub fn set_patch_no_content(&self, on: bool) {
        self.state.patch_no_content.store(on, Ordering::Relaxed);
    }

    /// Delay every answer (a slow upstream), at most [`MAX_LATENCY`].
    pub fn set_latency(&self, latency: Duration) {
        self.state.latency_us.store(
            latency.min(MAX_LATENCY).as_micros() as u64,
            Ordering::Relaxed,
        );
    }

    /// Keep request bodies and headers in the record (on by default; off for
    /// benchmarks, where only the count is kept).
    pub fn set_recording(&self, on: bool) {
        self.state.record_bodies.store(on, Ordering::Relaxed);
    }

    /// Keep created entities (on by default). Off, a POST is checked and
    /// answered but not stored, so long benchmarks do not grow the emulator.
    pub fn set_store(&self, on: bool) {
        self.state.forget_creates.store(!on, Ordering::Relaxed);
    }

    fn stores(&self) -> bool {
        !self.state.forget_creates.load(Ordering::Relaxed)
    }

    /// What to do with an `id` in a POST body (default [`ClientIds::Ignore`]).
    pub fn set_client_ids(&self, mode: ClientIds) {
        let index = ClientIds::ALL.iter().position(|m| *m == mode).unwrap_or(0);
        self.state.client_ids.store(index as u8, Ordering::Relaxed);
    }

    pub fn client_ids(&self) -> ClientIds {
        ClientIds::ALL[self.state.client_ids.load(Ordering::Relaxed) as usize % 3]
    }

    /// At most `writes` POST/PATCH/PUT/DELETE requests per `window`
    /// (sliding) from each app, 429 beyond; `None` (the default) for no
    /// limit. The other limits stay as they are; every window starts empty.
    pub fn set_write_limit(&self, limit: Option<Limit>) {
        let mut limits = self.limits();
        limits.set(Scope::AppWrites, limit);
        self.set_limits(limits);
    }

    pub fn write_limit(&self) -> Option<Limit> {
        self.limits().app_writes
    }

    /// Intune's limits: writes and requests of any kind, per app (told
    /// apart by the token's app id) and for the whole tenant. All are off by
    /// default; every window starts empty.
    pub fn set_limits(&self, limits: Limits) {
        let mut clean = Limits::default();
        for scope in Scope::ALL {
            clean.set(scope, limits.get(scope));
        }
        lock(&self.state.limits).set(clean);
    }

    pub fn limits(&self) -> Limits {
        lock(&self.state.limits).limits()
    }

    /// The `Retry-After` of the limits' 429s (default: whole seconds).
    pub fn set_retry_after(&self, form: RetryAfter) {
        lock(&self.state.limits).retry_after = form;
    }

    pub fn retry_after(&self) -> RetryAfter {
        lock(&self.state.limits).retry_after
    }

    /// How many requests the limits answered with 429.
    pub fn throttled_count(&self) -> u64 {
        Scope::ALL.into_iter().map(|s| self.throttled_by(s)).sum()
    }

    /// How many requests this limit answered with 429.
    pub fn throttled_by(&self, scope: Scope) -> u64 {
        let at = Scope::ALL.iter().position(|s| *s == scope).unwrap_or(0);
        self.state.throttled[at].load(Ordering::Relaxed)
    }

    /// How many answers had this status, from any cause (the limits,
    /// faults, the store), counting each `$batch` item and each envelope;
    /// e.g. `answered(429) == 0` for "never throttled".
    pub fn answered(&self, status: u16) -> u64 {
        lock(&self.state.answered)
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    fn count_answer(&self, status: u16) {
        *lock(&self.state.answered).entry(status).or_default() += 1;
    }

    /// Counts a request of `app` against the limits; `Err` holds the limit
    /// that refused it and the `Retry-After` to send, if any.
    fn admit(&self, app: &str, method: &str) -> Result<(), (Scope, Option<String>)> {
        let write = matches!(method, "POST" | "PATCH" | "DELETE" | "PUT");
        let mut limiter = lock(&self.state.limits);
        let form = limiter.retry_after;
        limiter
            .admit(app, write, Instant::now())
            .map_err(|(scope, wait)| {
                let at = Scope::ALL.iter().position(|s| *s == scope).unwrap_or(0);
                self.state.throttled[at].fetch_add(1, Ordering::Relaxed);
                (scope, form.value(wait))
            })
    }

    /// The requests received, oldest first (the last 10 000, within
    /// [`RECORD_TOTAL_BYTES`]).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.recorded).entries().cloned().collect()
    }

    /// The bytes the record holds now (at most [`RECORD_TOTAL_BYTES`]).
    pub fn recorded_bytes(&self) -> usize {
        lock(&self.state.recorded).bytes()
    }

    /// How many requests were received in all (control routes excluded).
    pub fn request_count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Forgets recorded requests and the count.
    pub fn clear_requests(&self) {
        *lock(&self.state.recorded) = record::Record::default();
        self.state.count.store(0, Ordering::Relaxed);
    }

    fn record(
        &self,
        method: &str,
        version: http::Version,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) {
        self.state.count.fetch_add(1, Ordering::Relaxed);
        if !self.state.record_bodies.load(Ordering::Relaxed) {
            return;
        }
        let entry = Recorded::new(method, version, path, headers, body);
        lock(&self.state.recorded).push(entry);
    }

    /// The first matching fault, counting it down.
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        self.take_fault_where(|f| f.matches(method, path))
    }

    /// The first fault for a `$batch` envelope: one whose `path_contains`
    /// matches its path (faults without a path are for the items).
    fn take_envelope_fault(&self, method: &str, path: &str) -> Option<Fault> {
        self.take_fault_where(|f| {
            f.path_contains.as_deref().is_some_and(|p| !p.is_empty()) && f.matches(method, path)
        })
    }

    fn take_fault_where(&self, test: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut faults = lock(&self.state.faults);
        let at = faults.iter().position(test)?;
        let fault = faults[at].clone();
        if let Some(n) = &mut faults[at].times {
            *n = n.saturating_sub(1);
            if *n == 0 {
                faults.remove(at);
            }
        }
        Some(fault)
    }

    fn latency(&self) -> Option<Duration> {
        match self.state.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// Locks a mutex, recovering from a poisoned one (the data stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod metadata;
#[cfg(test)]
mod tests;
