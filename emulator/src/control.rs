//! The emulator's HTTP routes: the Graph API, and its controls under
//! `/_emulator/`, which are for development only (no authentication: anyone
//! who reaches the port can steer the emulator).
//!
//! - `POST /_emulator/faults`: a [`Fault`] as JSON. It needs a status in
//!   100-599 and a matcher (`method` or `path_contains`), or `"any": true`;
//!   at most [`MAX_FAULTS`], each at most [`MAX_FAULT_BYTES`]. `DELETE` clears them.
//! - `GET /_emulator/requests`: the record, tokens redacted.
//! - `GET /_emulator/health`: `ok` while it serves.
//! - `PUT /_emulator/settings`: `{"patch_no_content": bool, "latency_ms": n (at
//!   most 60000), "record": bool, "store": bool, "client_ids":
//!   "honour"|"ignore"|"reject", "write_limit" | "tenant_write_limit" |
//!   "read_limit" | "tenant_read_limit": {"writes" (or "requests"): n,
//!   "seconds": s} | "off", "retry_after": "seconds"|"decimal"|"zero"|"none"}`;
//!   `GET` shows them with the count of 429s each limit answered.

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get, post, put},
};
use serde::Deserialize;
use serde_json::json;

use super::{ClientIds, Emulator, Fault, Limit, MAX_LATENCY, Recorded, RetryAfter, Scope, routes};

/// The most faults held at once (over HTTP).
pub const MAX_FAULTS: usize = 100;
/// The largest fault, as JSON.
pub const MAX_FAULT_BYTES: usize = 64 * 1024;
/// The largest Graph request body.
const MAX_BODY: usize = 1 << 20;

pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route(
            "/_emulator/faults",
            post(add_fault)
                .delete(clear_faults)
                .layer(DefaultBodyLimit::max(MAX_FAULT_BYTES)),
        )
        .route("/_emulator/health", get(health))
        .route("/_emulator/requests", get(list_requests))
        .route("/_emulator/settings", put(settings).get(current_settings))
        .merge(super::identity::routes())
        .fallback(any(routes::graph))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            emulator.clone(),
            super::identity::check_graph_token,
        ))
        .with_state(emulator)
}

/// `GET /_emulator/health`: 200 while the emulator serves, for container health checks
/// (`runstate-gateway healthcheck --http http://HOST:PORT/_emulator/health`).
async fn health() -> &'static str {
    "ok"
}

fn refuse(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.into()})),
    )
        .into_response()
}

async fn add_fault(State(e): State<Emulator>, body: Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(err) => return refuse(format!("not a fault: {err}")),
    };
    match e.try_inject(fault) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => refuse(message),
    }
}

async fn clear_faults(State(e): State<Emulator>) -> StatusCode {
    e.clear_faults();
    StatusCode::NO_CONTENT
}

/// The record, with tokens redacted: any local process can ask for it.
async fn list_requests(State(e): State<Emulator>) -> Json<Vec<Recorded>> {
    Json(e.requests().iter().map(Recorded::redacted).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    patch_no_content: Option<bool>,
    latency_ms: Option<u64>,
    record: Option<bool>,
    store: Option<bool>,
    client_ids: Option<ClientIds>,
    /// Each `{"writes": 50, "seconds": 5}` (or `"requests"`), or `"off"`.
    write_limit: Option<LimitSetting>,
    tenant_write_limit: Option<LimitSetting>,
    read_limit: Option<LimitSetting>,
    tenant_read_limit: Option<LimitSetting>,
    retry_after: Option<RetryAfter>,
}

impl Settings {
    fn limit(&self, scope: Scope) -> Option<&LimitSetting> {
        match scope {
            Scope::AppWrites => self.write_limit.as_ref(),
            Scope::TenantWrites => self.tenant_write_limit.as_ref(),
            Scope::AppRequests => self.read_limit.as_ref(),
            Scope::TenantRequests => self.tenant_read_limit.as_ref(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LimitSetting {
    Limit {
        #[serde(alias = "requests")]
        writes: u32,
        seconds: f64,
    },
    Off(Off),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Off {
    Off,
}

/// The current settings and counters.
async fn current_settings(State(e): State<Emulator>) -> Json<serde_json::Value> {
    let limits = e.limits();
    let mut shown = json!({
        "client_ids": e.client_ids(),
        "retry_after": e.retry_after(),
        "throttled": e.throttled_count(),
        "throttled_by": {},
        "answered_429": e.answered(429),
        "requests": e.request_count(),
        "recorded_bytes": e.recorded_bytes(),
    });
    for scope in Scope::ALL {
        let unit = match scope {
            Scope::AppWrites | Scope::TenantWrites => "writes",
            Scope::AppRequests | Scope::TenantRequests => "requests",
        };
        shown[scope.key()] = limits.get(scope).map_or(
            json!("off"),
            |(n, window)| json!({unit: n, "seconds": window.as_secs_f64()}),
        );
        shown["throttled_by"][scope.key()] = json!(e.throttled_by(scope));
    }
    Json(shown)
}

async fn settings(State(e): State<Emulator>, body: Bytes) -> Response {
    let s: Settings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(err) => return refuse(format!("not settings: {err}")),
    };
    // Check everything before changing anything.
    let latency = match s.latency_ms.map(Duration::from_millis) {
        Some(l) if l > MAX_LATENCY => {
            return refuse(format!(
                "latency_ms must be at most {}",
                MAX_LATENCY.as_millis()
            ));
        }
        l => l,
    };
    let mut limits = e.limits();
    let mut changed = false;
    for scope in Scope::ALL {
        let limit: Option<Limit> = match s.limit(scope) {
            Some(LimitSetting::Limit { writes, seconds }) => {
                let writes_ok = (1..=super::limit::MAX_WRITES).contains(writes);
                if !(writes_ok && *seconds > 0.0 && *seconds <= 86_400.0) {
                    return refuse(format!(
                        "{} needs writes (or requests) in 1-100000 and seconds in (0, 86400]",
                        scope.key()
                    ));
                }
                Some((*writes, Duration::from_secs_f64(*seconds)))
            }
            Some(LimitSetting::Off(Off::Off)) => None,
            None => continue,
        };
        limits.set(scope, limit);
        changed = true;
    }
    if changed {
        e.set_limits(limits);
    }
    if let Some(form) = s.retry_after {
        e.set_retry_after(form);
    }
    if let Some(latency) = latency {
        e.set_latency(latency);
    }
    if let Some(mode) = s.client_ids {
        e.set_client_ids(mode);
    }
    if let Some(on) = s.patch_no_content {
        e.set_patch_no_content(on);
    }
    if let Some(on) = s.record {
        e.set_recording(on);
    }
    if let Some(on) = s.store {
        e.set_store(on);
    }
    StatusCode::NO_CONTENT.into_response()
}
