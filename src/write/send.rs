//! The one send loop: every Graph request, alone or carried in a `$batch`,
//! is sent, retried and budgeted here.
//!
//! - Each write takes a permit of the write budget, and each request (read
//!   or write) one of the read budget, before it is sent, and holds them
//!   until its answer is back (a `$batch` takes them per item).
//! - Each request keeps its own attempt count, and [`RetryPolicy::decide`]
//!   decides for it, whether it went alone or inside a `$batch`.
//! - A 429 anywhere (a request, a `$batch`, an item inside one) pauses the
//!   tenant for its `Retry-After`: every write after a write's 429, every
//!   request after a read's (only the request limit throttles reads).
//! - A request never sent before the deadline ends as
//!   [`GraphError::Unsent`]: only requests that left the gateway can have an
//!   unknown outcome.
//! - Each request's own JSON body is held to Graph's size limit (when it is
//!   encoded), never the envelope: a `$batch` takes requests while the
//!   envelope stays under the limit, and a request too large to share one
//!   goes alone.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Method, StatusCode};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{Engine, budget::Counts, retry::Retry};
use crate::graph::{BatchItem, Call, GraphError, MAX_BATCH, MAX_REQUEST_BODY_BYTES, Raw};
use crate::metrics as m;
use crate::state::identity;

/// One Graph request: `method` on `path` (relative to `/deviceManagement/`).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
}

impl Request {
    pub fn get(path: String) -> Self {
        Self {
            method: Method::GET,
            path,
            body: None,
        }
    }

    fn is_write(&self) -> bool {
        self.method != Method::GET && self.method != Method::HEAD
    }
}

/// How requests travel: each alone, or in `$batch` envelopes of up to 20.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Alone,
    Batch,
}

/// What became of one request: its last answer, and whether any attempt
/// left the gateway.
#[derive(Debug)]
pub(crate) struct Sent {
    pub result: Result<Raw, GraphError>,
    pub sent: bool,
}

impl Engine {
    /// Sends one request, retrying per the policy within the deadline.
    pub(crate) async fn send(&self, request: Request, call: &Call<'_>) -> Sent {
        let mut out = self.send_all(vec![request], Via::Alone, call).await;
        out.pop().unwrap_or(Sent {
            result: Err(GraphError::Unsent),
            sent: false,
        })
    }

    /// Sends every request, retrying each per the policy within the
    /// deadline; answers in the requests' order.
    pub(crate) async fn send_all(
        &self,
        requests: Vec<Request>,
        via: Via,
        call: &Call<'_>,
    ) -> Vec<Sent> {
        let n = requests.len();
        let mut attempts = vec![0u32; n];
        let mut sent = vec![false; n];
        let mut out: Vec<Option<Result<Raw, GraphError>>> = (0..n).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..n).collect();
        let tenant = self
            .budgets
            .any()
            .then(|| identity::tenant(call.authorization));
        while !pending.is_empty() {
            let groups: Vec<(Vec<usize>, Via)> = match via {
                Via::Alone => pending.iter().map(|&i| (vec![i], Via::Alone)).collect(),
                Via::Batch => envelopes(&requests, &pending),
            };
            let requests = &requests;
            let attempts_now = &attempts;
            let tenant = tenant.as_deref();
            let answers: Vec<(usize, Result<Raw, GraphError>, bool)> = if groups.len() == 1 {
                let (group, via) = groups.into_iter().next().unwrap_or((Vec::new(), via));
                self.exchange(requests, group, via, attempts_now, tenant, call)
                    .await
            } else {
                stream::iter(groups)
                    .map(|(group, via)| {
                        self.exchange(requests, group, via, attempts_now, tenant, call)
                    })
                    .buffer_unordered(self.batch_concurrency)
                    .flat_map(stream::iter)
                    .collect()
                    .await
            };
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            for (i, result, left) in answers {
                sent[i] |= left;
                let error = match result {
                    Ok(raw) => {
                        out[i] = Some(Ok(raw));
                        continue;
                    }
                    Err(e) => e,
                };
                let method = &requests[i].method;
                let delay = match self.retry.decide(attempts[i], method, &error) {
                    Some(Retry::Safe(d)) => d,
                    None => {
                        out[i] = Some(Err(error));
                        continue;
                    }
                };
                if let (Some(tenant), GraphError::Status(e)) = (tenant, &error)
                    && e.status == StatusCode::TOO_MANY_REQUESTS
                {
                    self.pause(tenant, delay, requests[i].is_write()).await;
                }
                if Instant::now() + delay >= call.deadline {
                    out[i] = Some(Err(error));
                    continue;
                }
                log_retry(method, &requests[i].path, attempts[i], delay, &error);
                attempts[i] += 1;
                wait = wait.max(delay);
                again.push(i);
            }
            if !again.is_empty() {
                tokio::time::sleep(wait).await;
            }
            again.sort_unstable();
            pending = again;
        }
        out.into_iter()
            .zip(sent)
            .map(|(result, sent)| Sent {
                result: result.unwrap_or(Err(GraphError::Unsent)),
                sent,
            })
            .collect()
    }

    /// Sends one group once: alone, or as one `$batch`. Its requests hold
    /// budget permits until the answer is back. Each answer says whether
    /// the request left the gateway.
    async fn exchange(
        &self,
        requests: &[Request],
        group: Vec<usize>,
        via: Via,
        attempts: &[u32],
        tenant: Option<&str>,
        call: &Call<'_>,
    ) -> Vec<(usize, Result<Raw, GraphError>, bool)> {
        let all = |group: Vec<usize>, e: &dyn Fn() -> GraphError, left: bool| {
            group.into_iter().map(|i| (i, Err(e()), left)).collect()
        };
        let writes = group.iter().filter(|&&i| requests[i].is_write()).count();
        let takes = [
            (&self.budgets.writes, writes),
            (&self.budgets.requests, group.len()),
        ];
        let mut permits = Vec::with_capacity(writes + group.len());
        for (budget, n) in takes {
            let (Some(budget), Some(tenant)) = (budget, tenant) else {
                continue;
            };
            // A batch's permits come together (one slot with room for all).
            match budget.acquire_many(tenant, n, call.deadline).await {
                Ok(taken) => permits.extend(taken),
                Err(retry_after) => {
                    let refused = || match budget.counts() {
                        Counts::Writes => GraphError::WriteBudget { retry_after },
                        Counts::Requests => GraphError::ReadBudget { retry_after },
                    };
                    return all(group, &refused, false);
                }
            }
        }
        if Instant::now() >= call.deadline {
            return all(group, &|| GraphError::Unsent, false);
        }
        let answers = if via == Via::Alone {
            let i = group[0];
            let r = &requests[i];
            let result = self
                .graph
                .send_once(&r.method, &r.path, r.body.clone(), call, attempts[i])
                .await;
            vec![(i, left_the_gateway(&result), result)]
        } else {
            self.batch(requests, &group, attempts, call).await
        };
        drop(permits);
        answers
            .into_iter()
            .map(|(i, left, result)| (i, result, left))
            .collect()
    }

    /// One `$batch` of the group's requests; an envelope failure is each
    /// item's failure.
    async fn batch(
        &self,
        requests: &[Request],
        group: &[usize],
        attempts: &[u32],
        call: &Call<'_>,
    ) -> Vec<(usize, bool, Result<Raw, GraphError>)> {
        let bodies: Vec<Option<&RawValue>> = group
            .iter()
            .map(|&i| {
                requests[i]
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
            })
            .collect();
        let items: Vec<BatchItem> = group
            .iter()
            .zip(&bodies)
            .map(|(&i, body)| {
                let r = &requests[i];
                BatchItem::new(i.to_string(), &r.method, &r.path, *body)
            })
            .collect();
        let attempt = group.iter().map(|&i| attempts[i]).max().unwrap_or(0);
        match self.graph.batch_once(&items, call, attempt).await {
            Ok(answers) => group
                .iter()
                .zip(items.iter().zip(answers))
                .map(|(&i, (item, answer))| {
                    let client_request_id = item
                        .headers
                        .get("client-request-id")
                        .cloned()
                        .unwrap_or_default();
                    let result = match answer {
                        Some(a) => a.into_result(self.graph.host(), client_request_id),
                        None => Err(GraphError::Unavailable {
                            message: "Graph's $batch answer left this request out".into(),
                            maybe_sent: true,
                        }),
                    };
                    (i, true, result)
                })
                .collect(),
            Err(e) => {
                let left = left_the_gateway::<Raw>(&Err(e.clone()));
                group.iter().map(|&i| (i, left, Err(e.clone()))).collect()
            }
        }
    }

    /// Holds the writes of `tenant` for `delay` after Graph throttled a
    /// write; every request after it throttled a read.
    pub(crate) async fn pause(&self, tenant: &str, delay: Duration, write: bool) {
        if let Some(budget) = &self.budgets.writes {
            budget.pause(tenant, delay).await;
        }
        if let Some(budget) = self.budgets.requests.as_ref().filter(|_| !write) {
            budget.pause(tenant, delay).await;
        }
    }
}

/// Bytes of an envelope besides its items, and of an item besides its body
/// and path (id, method, headers), with room to spare.
const ENVELOPE_BYTES: usize = 64;
const ITEM_BYTES: usize = 512;

/// The `pending` requests in `$batch` envelopes of at most [`MAX_BATCH`]
/// requests and [`MAX_REQUEST_BODY_BYTES`], in order; a request too large to
/// fit an envelope even alone goes alone (its body is within the limit).
fn envelopes(requests: &[Request], pending: &[usize]) -> Vec<(Vec<usize>, Via)> {
    let size = |i: usize| {
        let r = &requests[i];
        r.body.as_ref().map_or(0, Bytes::len) + r.path.len() + ITEM_BYTES
    };
    let mut groups: Vec<(Vec<usize>, Via)> = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut bytes = ENVELOPE_BYTES;
    for &i in pending {
        if !group.is_empty()
            && (group.len() == MAX_BATCH || bytes + size(i) > MAX_REQUEST_BODY_BYTES)
        {
            groups.push((std::mem::take(&mut group), Via::Batch));
            bytes = ENVELOPE_BYTES;
        }
        group.push(i);
        bytes += size(i);
    }
    if !group.is_empty() {
        groups.push((group, Via::Batch));
    }
    for (group, via) in &mut groups {
        if group.len() == 1 && ENVELOPE_BYTES + size(group[0]) > MAX_REQUEST_BODY_BYTES {
            *via = Via::Alone;
        }
    }
    groups
}

/// Whether a request's attempt left the gateway: anything but a connection
/// that was never made.
fn left_the_gateway<T>(result: &Result<T, GraphError>) -> bool {
    !matches!(
        result,
        Err(GraphError::Unavailable {
            maybe_sent: false,
            ..
        } | GraphError::Unsent
            | GraphError::BodyTooLarge { .. }
            | GraphError::WriteBudget { .. }
            | GraphError::ReadBudget { .. })
    )
}

fn log_retry(method: &Method, path: &str, attempt: u32, delay: Duration, error: &GraphError) {
    let reason = retry_reason(error);
    let route = m::route_template(path);
    metrics::counter!(m::GRAPH_RETRIES, "reason" => reason).increment(1);
    if reason == "throttled" {
        metrics::histogram!(m::GRAPH_THROTTLE_WAIT).record(delay.as_secs_f64());
        tracing::warn!(%method, route, attempt, delay_ms = delay.as_millis() as u64, error = %error, "Graph throttled the request; retrying");
    } else {
        tracing::info!(%method, route, attempt, delay_ms = delay.as_millis() as u64, reason, error = %error, "retrying Graph call");
    }
}

/// The `reason` label of a retry.
fn retry_reason(error: &GraphError) -> &'static str {
    match error {
        GraphError::Status(e) if e.status == StatusCode::TOO_MANY_REQUESTS => "throttled",
        GraphError::Status(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        GraphError::Status(e) if e.status == StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
        GraphError::Status(_) => "status",
        GraphError::Unavailable {
            maybe_sent: false, ..
        } => "connect",
        GraphError::Unavailable { .. } => "connection_lost",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body_bytes: usize) -> Request {
        Request {
            method: Method::POST,
            path: "deviceManagementScripts/s/deviceRunStates".into(),
            body: Some(Bytes::from(vec![b'x'; body_bytes])),
        }
    }

    #[test]
    fn envelopes_hold_twenty_and_stay_under_the_size_limit() {
        let small: Vec<Request> = (0..45).map(|_| post(100)).collect();
        let all: Vec<usize> = (0..45).collect();
        let sizes: Vec<usize> = envelopes(&small, &all).iter().map(|g| g.0.len()).collect();
        assert_eq!(sizes, [20, 20, 5]);

        // 600 KB each: two do not fit one envelope; 1 MiB less a little
        // fits none, and goes alone; order is kept.
        let big = vec![
            post(600_000),
            post(600_000),
            post(MAX_REQUEST_BODY_BYTES - 10),
            post(100),
        ];
        let groups = envelopes(&big, &[0, 1, 2, 3]);
        assert_eq!(
            groups,
            [
                (vec![0], Via::Batch),
                (vec![1], Via::Batch),
                (vec![2], Via::Alone),
                (vec![3], Via::Batch),
            ]
        );
    }
}
