//! What the Graph client did for one RPC, for its log line and metrics.
//!
//! The server's RPC layer opens a [`Trace`] around each call (a task-local,
//! so the handlers need not pass it along); the Graph client takes its
//! `client-request-id` from it and records each attempt in it.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU16, AtomicU32, Ordering},
};

tokio::task_local! {
    static CURRENT: Arc<Trace>;
}

/// One RPC's Graph activity.
#[derive(Debug)]
pub struct Trace {
    client_request_id: String,
    attempts: AtomicU32,
    last_status: AtomicU16,
    request_id: Mutex<Option<String>>,
}

impl Trace {
    /// A trace whose Graph requests all carry `client_request_id`.
    pub fn new(client_request_id: String) -> Arc<Self> {
        Arc::new(Self {
            client_request_id,
            attempts: AtomicU32::new(0),
            last_status: AtomicU16::new(0),
            request_id: Mutex::new(None),
        })
    }

    /// Runs `work` with this trace as the current one.
    pub async fn scope<F: Future>(self: Arc<Self>, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The trace of the RPC running on this task, if any.
    pub fn current() -> Option<Arc<Self>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    pub fn client_request_id(&self) -> &str {
        &self.client_request_id
    }

    /// Requests sent to Graph so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The HTTP status of the last Graph answer (None before any answer).
    pub fn last_status(&self) -> Option<u16> {
        Some(self.last_status.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }

    /// Graph's `request-id` of the last answer that carried one.
    pub fn request_id(&self) -> Option<String> {
        self.request_id.lock().ok()?.clone()
    }

    /// Counts a request about to be sent.
    pub(super) fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Records Graph's answer.
    pub(super) fn answered(&self, status: u16, request_id: Option<&str>) {
        self.last_status.store(status, Ordering::Relaxed);
        if let (Some(id), Ok(mut slot)) = (request_id, self.request_id.lock()) {
            *slot = Some(id.to_owned());
        }
    }
}
