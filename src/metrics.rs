//! Prometheus metrics: names, the process-wide recorder, bounded labels.
//!
//! Every module emits through the `metrics` facade; [`install`] puts the
//! Prometheus recorder behind it once per process, and the admin server
//! renders it. Label values are bounded: methods and route templates come
//! from the code, never from a raw path or caller text.

use std::{
    collections::HashMap,
    sync::{OnceLock, PoisonError, RwLock},
};

use http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// RPCs handled, by `method` and gRPC `code`.
pub const RPC_REQUESTS: &str = "runstate_rpc_requests_total";
/// RPC latency, by `method` and `code`.
pub const RPC_DURATION: &str = "runstate_rpc_duration_seconds";
/// RPCs being handled now.
pub const RPC_IN_FLIGHT: &str = "runstate_rpc_in_flight";
/// RPCs refused before reaching a handler, by `reason`.
pub const RPC_SHED: &str = "runstate_rpc_shed_total";
/// Requests sent to Graph, by `method`, `route` and HTTP `status`.
pub const GRAPH_REQUESTS: &str = "runstate_graph_requests_total";
/// Graph request latency, by `method`, `route` and `status`.
pub const GRAPH_DURATION: &str = "runstate_graph_request_duration_seconds";
/// Graph requests retried, by `reason`.
pub const GRAPH_RETRIES: &str = "runstate_graph_retries_total";
/// Time spent waiting after Graph throttled a request (429).
pub const GRAPH_THROTTLE_WAIT: &str = "runstate_graph_throttle_wait_seconds";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "runstate_connections_open";
/// Client connections closed by the gateway, by `reason`.
pub const CONNECTIONS_REFUSED: &str = "runstate_connections_refused_total";
/// Token requests to the identity platform, by `result`.
pub const TOKEN_FETCHES: &str = "runstate_token_fetches_total";
/// Token request latency.
pub const TOKEN_FETCH_DURATION: &str = "runstate_token_fetch_seconds";

/// Creates answered again from a request-id record.
pub const REQUEST_ID_REPLAYS: &str = "runstate_request_id_replays_total";
/// Time writes waited for a slot of the write budget.
pub const WRITE_BUDGET_WAIT: &str = "runstate_write_budget_wait_seconds";
/// Writes refused because no budget slot came before their deadline.
pub const WRITE_BUDGET_REJECTED: &str = "runstate_write_budget_rejected_total";
/// Time requests waited for a slot of the read budget.
pub const READ_BUDGET_WAIT: &str = "runstate_read_budget_wait_seconds";
/// Requests refused because no read-budget slot came before their deadline.
pub const READ_BUDGET_REJECTED: &str = "runstate_read_budget_rejected_total";
/// Failed calls to the shared state store, by `store`.
pub const STATE_STORE_ERRORS: &str = "runstate_state_store_errors_total";
/// Commands sent again on a new connection after a dropped one, by `store`.
pub const STATE_STORE_RECONNECTS: &str = "runstate_state_store_reconnects_total";
/// Log lines dropped because stderr did not keep up.
pub const LOG_LINES_DROPPED: &str = "runstate_log_lines_dropped_total";

/// Writes accepted into the outbox.
pub const OUTBOX_ACCEPTED: &str = "runstate_outbox_accepted_total";
/// Outbox writes Graph applied.
pub const OUTBOX_DELIVERED: &str = "runstate_outbox_delivered_total";
/// Outbox writes that failed (OUTCOME_UNKNOWN included).
pub const OUTBOX_FAILED: &str = "runstate_outbox_failed_total";
/// Outbox updates merged into another update's PATCH.
pub const OUTBOX_COALESCED: &str = "runstate_outbox_coalesced_total";
/// Outbox writes cancelled before they were sent.
pub const OUTBOX_CANCELLED: &str = "runstate_outbox_cancelled_total";
/// Outbox writes pending or in flight, by `tenant` (the busiest ones, the
/// rest as `other`).
pub const OUTBOX_PENDING: &str = "runstate_outbox_pending_writes";
/// Age of the oldest pending outbox write, by `tenant` (as above).
pub const OUTBOX_OLDEST: &str = "runstate_outbox_oldest_pending_seconds";

/// Latency buckets, in seconds: 1 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; None when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram samples into their buckets every [`UPKEEP_EVERY`],
/// until dropped. The recorder keeps each sample until a render or an
/// upkeep: with nobody scraping `/metrics`, memory grew by about 40 bytes a
/// call (540 MB in the 10-minute soak).
pub async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// What each metric is: its kind and its help text (every histogram is in seconds).
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (
        RPC_REQUESTS,
        Kind::Counter,
        "RPCs handled, by method and gRPC code.",
    ),
    (
        RPC_DURATION,
        Kind::Histogram,
        "RPC latency, by method and gRPC code.",
    ),
    (RPC_IN_FLIGHT, Kind::Gauge, "RPCs being handled now."),
    (
        RPC_SHED,
        Kind::Counter,
        "RPCs refused before reaching a handler, by reason.",
    ),
    (
        GRAPH_REQUESTS,
        Kind::Counter,
        "Requests sent to Graph, by method, route and HTTP status.",
    ),
    (
        GRAPH_DURATION,
        Kind::Histogram,
        "Graph request latency, by method, route and HTTP status.",
    ),
    (
        GRAPH_RETRIES,
        Kind::Counter,
        "Graph requests sent again, by reason.",
    ),
    (
        GRAPH_THROTTLE_WAIT,
        Kind::Histogram,
        "Waits after Graph throttled a request (429).",
    ),
    (
        CONNECTIONS_OPEN,
        Kind::Gauge,
        "Client connections open now.",
    ),
    (
        REQUEST_ID_REPLAYS,
        Kind::Counter,
        "Creates answered again from a request-id record, without writing.",
    ),
    (
        WRITE_BUDGET_WAIT,
        Kind::Histogram,
        "Time writes waited for a slot of the write budget.",
    ),
    (
        WRITE_BUDGET_REJECTED,
        Kind::Counter,
        "Writes refused (RESOURCE_EXHAUSTED) because no budget slot came before their deadline.",
    ),
    (
        STATE_STORE_ERRORS,
        Kind::Counter,
        "Failed calls to the shared state store (the local store stood in), by store.",
    ),
    (
        CONNECTIONS_REFUSED,
        Kind::Counter,
        "Client connections closed by the gateway, by reason.",
    ),
    (
        TOKEN_FETCHES,
        Kind::Counter,
        "Token requests to the identity platform, by result (ok, rejected, unavailable, timeout, error).",
    ),
    (
        TOKEN_FETCH_DURATION,
        Kind::Histogram,
        "Token request latency.",
    ),
    (
        LOG_LINES_DROPPED,
        Kind::Counter,
        "Log lines dropped because stderr was not read fast enough (the queue to it was full).",
    ),
    (
        STATE_STORE_RECONNECTS,
        Kind::Counter,
        "State store commands sent again on a new connection after the old one dropped, by store.",
    ),
    (
        READ_BUDGET_WAIT,
        Kind::Histogram,
        "Time requests waited for a slot of the read budget.",
    ),
    (
        READ_BUDGET_REJECTED,
        Kind::Counter,
        "Requests refused (RESOURCE_EXHAUSTED) because no read-budget slot came before their deadline.",
    ),
    (
        OUTBOX_ACCEPTED,
        Kind::Counter,
        "Writes accepted into the outbox.",
    ),
    (
        OUTBOX_DELIVERED,
        Kind::Counter,
        "Outbox writes Graph applied.",
    ),
    (
        OUTBOX_FAILED,
        Kind::Counter,
        "Outbox writes that failed (OUTCOME_UNKNOWN included).",
    ),
    (
        OUTBOX_COALESCED,
        Kind::Counter,
        "Outbox updates merged into the PATCH of an earlier update of the same state.",
    ),
    (
        OUTBOX_CANCELLED,
        Kind::Counter,
        "Outbox writes cancelled before they were sent.",
    ),
    (
        OUTBOX_PENDING,
        Kind::Gauge,
        "Outbox writes pending or in flight, by tenant (the busiest tenants; the rest as other).",
    ),
    (
        OUTBOX_OLDEST,
        Kind::Gauge,
        "Age of the oldest pending outbox write, by tenant (the busiest tenants; the rest as other).",
    ),
];

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for (name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(*name, *help),
            Kind::Gauge => describe_gauge!(*name, *help),
            Kind::Histogram => describe_histogram!(*name, Unit::Seconds, *help),
        }
    }
}

/// Brings the values kept outside the recorder up to date; run before each
/// render.
pub fn refresh() {
    metrics::counter!(LOG_LINES_DROPPED).absolute(crate::telemetry::dropped_lines());
}

/// The `status` label of a Graph answer: the statuses Graph is known to
/// send as themselves, any other by its class (`1xx`...`5xx`), `error` when
/// there was no answer. A Graph (or proxy) answering arbitrary codes cannot
/// grow the number of series.
pub fn status_label(status: Option<StatusCode>) -> &'static str {
    let Some(status) = status else {
        return "error";
    };
    match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        412 => "412",
        413 => "413",
        429 => "429",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        n => match n / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
    }
}

/// A Graph path with its ids replaced: `deviceManagementScripts/{id}/userRunStates/{id}`.
///
/// Segments alternate collection and id; a collection segment that is not a
/// plain word becomes `other`, so the label set stays small whatever the path.
pub fn route_template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(path.len() + 16);
    for (i, segment) in path
        .split('/')
        .filter(|s| !s.is_empty())
        .enumerate()
        .take(8)
    {
        if i > 0 {
            out.push('/');
        }
        if i % 2 == 1 {
            out.push_str("{id}");
        } else if !segment.is_empty()
            && segment.len() <= 64
            && segment.bytes().all(|b| b.is_ascii_alphabetic())
        {
            out.push_str(segment);
        } else {
            out.push_str("other");
        }
    }
    out
}

/// The counter and histogram of one Graph method, route and status.
type GraphPair = (metrics::Counter, metrics::Histogram);
/// The handles of one route, by method and status label.
type RouteHandles = Vec<(Method, &'static str, GraphPair)>;

/// Handles of the Graph request metrics, made once per method, route and
/// status (None: no answer) and then reused: building the labels and
/// looking them up in the recorder for every request cost ~6k instructions.
/// Bounded as the labels are: routes are templates, methods come from the
/// code, statuses from [`status_label`].
#[derive(Default)]
pub struct GraphRequests {
    by_route: RwLock<HashMap<String, RouteHandles>>,
}

impl std::fmt::Debug for GraphRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphRequests").finish_non_exhaustive()
    }
}

impl GraphRequests {
    /// Counts one request and its latency.
    pub fn record(&self, method: &Method, route: &str, status: Option<StatusCode>, seconds: f64) {
        let status = status_label(status);
        let find = |list: &[(Method, &'static str, GraphPair)]| {
            list.iter()
                .find(|(m, s, _)| m == method && *s == status)
                .map(|(_, _, pair)| pair.clone())
        };
        let cached = {
            let map = self.by_route.read().unwrap_or_else(PoisonError::into_inner);
            map.get(route).and_then(|list| find(list))
        };
        let (count, duration) = cached.unwrap_or_else(|| {
            let mut map = self
                .by_route
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let list = map.entry(route.to_owned()).or_default();
            find(list).unwrap_or_else(|| {
                let labels = [
                    ("method", method.as_str().to_owned()),
                    ("route", route.to_owned()),
                    ("status", status.to_owned()),
                ];
                let pair = (
                    metrics::counter!(GRAPH_REQUESTS, &labels),
                    metrics::histogram!(GRAPH_DURATION, &labels),
                );
                list.push((method.clone(), status, pair.clone()));
                pair
            })
        });
        count.increment(1);
        duration.record(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_hide_ids_and_stay_bounded() {
        assert_eq!(
            route_template("deviceManagementScripts/abc-1/userRunStates/u%2F1"),
            "deviceManagementScripts/{id}/userRunStates/{id}"
        );
        assert_eq!(
            route_template("deviceShellScripts/s/deviceRunStates"),
            "deviceShellScripts/{id}/deviceRunStates"
        );
        assert_eq!(route_template("evil\nname/x/y"), "other/{id}/y");
        assert!(route_template(&"a/b/".repeat(100)).split('/').count() <= 8);
    }

    #[test]
    fn unknown_statuses_are_labelled_by_class() {
        let label = |n: u16| status_label(Some(StatusCode::from_u16(n).unwrap()));
        assert_eq!(label(201), "201");
        assert_eq!(label(429), "429");
        assert_eq!(label(504), "504");
        assert_eq!(label(431), "4xx");
        assert_eq!(label(599), "5xx");
        assert_eq!(label(302), "3xx");
        assert_eq!(label(999), "other");
        assert_eq!(status_label(None), "error");
        let labels: std::collections::HashSet<_> = (100..1000).map(label).collect();
        assert!(labels.len() <= 25, "{labels:?}");
    }
}
