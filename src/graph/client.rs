//! The Graph client: one request, sent once, over the bare hyper pools of
//! [`super::http`]. Retries, the write budget and client ids are the write
//! engine's (`crate::write`).

use crate::config::Refusal;
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use rustls_pki_types::CertificateDer;
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;

use super::{
    GraphError, StatusError,
    http::{self as transport, Pool},
    trace::Trace,
};
use crate::metrics as m;

/// Largest Graph response body read; run-state entities are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Largest JSON body sent to Graph. Graph answers 413 to bodies it finds too
/// large; the gateway refuses them first (escaping can make a string six
/// times longer in JSON than in protobuf).
pub const MAX_REQUEST_BODY_BYTES: usize = 1 << 20;

/// How the Graph client connects.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// HTTP/2 without TLS (prior knowledge) to an http URL.
    pub h2c: bool,
    /// Independent connection pools (1..=64), used in turn.
    pub connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            h2c: false,
            connections: 8,
        }
    }
}

/// A Graph client bound to one base URL such as `https://graph.microsoft.com/beta`.
#[derive(Debug, Clone)]
pub struct GraphClient {
    /// Independent clients, used in turn: each keeps its own connections, so
    /// one HTTP/2 connection's stream limit does not cap the calls in flight.
    http: Arc<[Pool]>,
    /// Calls in flight on each pool.
    load: Arc<[AtomicUsize]>,
    /// Metric handles of Graph requests.
    requests: Arc<m::GraphRequests>,
    /// Base URL plus `/deviceManagement/`.
    pub(super) root: String,
    host: String,
}

/// Per-call inputs: whose token, and until when.
#[derive(Debug)]
pub struct Call<'a> {
    /// The `Authorization` value sent to Graph (marked sensitive).
    pub authorization: &'a HeaderValue,
    /// The caller's deadline; no attempt or retry sleep runs past it.
    pub deadline: Instant,
}

/// A successful Graph answer and Graph's `request-id`.
#[derive(Debug)]
pub struct Reply<T> {
    pub value: T,
    pub request_id: Option<String>,
}

/// A raw success: status, body and Graph's `request-id`.
#[derive(Debug)]
pub struct Raw {
    pub status: StatusCode,
    pub body: Bytes,
    pub request_id: Option<String>,
}

impl GraphClient {
    /// Builds the client. `base_url` must be an http or https URL. With
    /// `h2c`, an http URL is spoken to in HTTP/2 without TLS (prior knowledge),
    /// which multiplexes calls over a few connections.
    #[cfg(test)]
    pub fn new(base_url: &str, options: Options) -> Result<Self, Refusal> {
        Self::with_roots(base_url, options, &[])
    }

    /// [`GraphClient::new`], also trusting `extra_roots` for https.
    pub fn with_roots(
        base_url: &str,
        options: Options,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, Refusal> {
        let Options { h2c, connections } = options;
        if !(1..=64).contains(&connections) {
            return Err(format!("{connections} connections: use 1 to 64").into());
        }
        let url =
            reqwest::Url::parse(base_url).map_err(|e| format!("{base_url:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(format!("{base_url:?} must be an http or https URL").into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{base_url:?} must not have a query or fragment").into());
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if h2c && url.scheme() != "http" {
            return Err(format!("{base_url:?}: HTTP/2 prior knowledge needs an http URL").into());
        }
        // Plain HTTP/1.1 carries one call per connection, and one pool lets
        // every call reuse any idle connection: separate pools each opened
        // their own (1,280 connections for 1,000 calls in flight).
        let connections = if h2c || url.scheme() == "https" {
            connections
        } else {
            1
        };
        let tls = transport::tls_config(extra_roots)?;
        let http: Vec<Pool> = (0..connections)
            .map(|_| transport::pool(tls.clone(), h2c))
            .collect();
        Ok(Self {
            http: http.into(),
            load: (0..connections).map(|_| AtomicUsize::new(0)).collect(),
            requests: Arc::default(),
            root: format!("{}/deviceManagement/", base_url.trim_end_matches('/')),
            host,
        })
    }

    /// The Graph host, e.g. `graph.microsoft.com` (the `ErrorInfo` domain).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `{base}/deviceManagement/`: every URL this client fetches starts with it.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Sends one request to `{root}{path}` once (no retry), within the
    /// call's deadline. `attempt` counts earlier tries (`Retry-Attempt`).
    pub async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
        call: &Call<'_>,
        attempt: u32,
    ) -> Result<Raw, GraphError> {
        let url = format!("{}{path}", self.root);
        let route = m::route_template(path);
        self.attempt(method, &url, body, call, attempt, &route)
            .await
    }

    pub(super) async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<Bytes>,
        call: &Call<'_>,
        attempt: u32,
        route: &str,
    ) -> Result<Raw, GraphError> {
        let trace = Trace::current();
        let trace = trace.as_deref();
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(GraphError::Timeout);
        }
        // One id for every attempt of an RPC (the caller's, when it sent one).
        let client_request_id = trace.map_or_else(
            || uuid::Uuid::new_v4().to_string(),
            |t| t.client_request_id().to_owned(),
        );
        let turn = Turn::take(&self.load);
        let uri = Uri::try_from(url).map_err(|e| {
            GraphError::InvalidResponse(format!("cannot build the request URL: {e}"))
        })?;
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::USER_AGENT, USER_AGENT.clone())
            .header(header::AUTHORIZATION, call.authorization.clone())
            .header("client-request-id", unique_value(&client_request_id)?)
            .header(header::ACCEPT, APPLICATION_JSON.clone());
        if attempt > 0 {
            request = request.header("Retry-Attempt", attempt);
        }
        if let Some(t) = trace {
            t.attempt();
        }
        let started = std::time::Instant::now();
        let record = |status: Option<StatusCode>| {
            let seconds = started.elapsed().as_secs_f64();
            self.requests.record(method, route, status, seconds);
        };
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, APPLICATION_JSON.clone());
                transport::Body::new(body)
            }
            None => transport::Body::default(),
        };
        let request = request
            .body(body)
            .map_err(|e| GraphError::InvalidResponse(format!("cannot build the request: {e}")))?;
        // The whole exchange, answer body included, within the deadline.
        let exchange = async {
            let response = self.http[turn.0].request(request).await.map_err(|e| {
                record(None);
                transport_error(&e, e.is_connect())
            })?;
            let (parts, body) = response.into_parts();
            record(Some(parts.status));
            if let Some(t) = trace {
                let id = parts
                    .headers
                    .get("request-id")
                    .and_then(|v| v.to_str().ok());
                t.answered(parts.status.as_u16(), id);
            }
            let body = read_body(body, &parts.headers).await?;
            Ok::<_, GraphError>((parts.status, parts.headers, body))
        };
        // Boxed: the client's future is large, and every enclosing future
        // would otherwise carry (and move) it.
        let (status, headers, body) =
            match tokio::time::timeout(remaining, Box::pin(exchange)).await {
                Ok(result) => result?,
                Err(_) => return Err(GraphError::Timeout),
            };
        if status.is_success() {
            let request_id = headers
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(Raw {
                status,
                body,
                request_id,
            });
        }
        Err(GraphError::Status(Box::new(StatusError::from_response(
            method.clone(),
            status,
            &headers,
            &body,
            client_request_id,
            &self.host,
        ))))
    }
}

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("runstate-gateway/", env!("CARGO_PKG_VERSION")));
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Streams a pool carries before the next pool is used: filling pools in
/// order keeps calls together on few HTTP/2 connections (fewer, larger
/// writes). 100 is the smallest stream limit RFC 9113 (6.5.2) recommends a
/// server allow; calls over a lower limit wait in h2 for a free stream.
const STREAMS_PER_POOL: usize = 100;

/// A call's place in a pool, given back when dropped.
struct Turn<'a>(usize, &'a [AtomicUsize]);

impl<'a> Turn<'a> {
    /// The first pool with room, else the least loaded one.
    fn take(load: &'a [AtomicUsize]) -> Self {
        let mut best = 0;
        let mut least = usize::MAX;
        for (i, n) in load.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n < STREAMS_PER_POOL {
                best = i;
                break;
            }
            if n < least {
                least = n;
                best = i;
            }
        }
        load[best].fetch_add(1, Ordering::Relaxed);
        Turn(best, load)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.1[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A header value unique to one call, marked never-indexed: HPACK then
/// skips its dynamic table (no insert, eviction or search for a value that
/// never repeats).
fn unique_value(text: &str) -> Result<HeaderValue, GraphError> {
    let mut value = HeaderValue::try_from(text)
        .map_err(|_| GraphError::InvalidResponse("unusable client-request-id".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads an answer's body, refusing one over [`MAX_RESPONSE_BYTES`].
async fn read_body(
    body: hyper::body::Incoming,
    headers: &http::HeaderMap,
) -> Result<Bytes, GraphError> {
    let too_large = || GraphError::InvalidResponse("the body is larger than 1 MiB".into());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        // The request was sent: the answer broke off.
        Err(e) => Err(transport_error(&*e, false)),
    }
}

/// A transport failure; `connect` when nothing was sent (the connection or
/// its TLS handshake failed), so a retry cannot write twice.
fn transport_error(e: &(dyn std::error::Error + 'static), connect: bool) -> GraphError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    GraphError::Unavailable {
        message,
        maybe_sent: !connect,
    }
}

pub fn encode<B: Serialize>(body: &B) -> Result<Bytes, GraphError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| GraphError::InvalidResponse(format!("cannot encode the request: {e}")))?;
    if bytes.len() > MAX_REQUEST_BODY_BYTES {
        return Err(GraphError::BodyTooLarge {
            field: largest_field(body),
            size: bytes.len(),
        });
    }
    Ok(Bytes::from(bytes))
}

/// The JSON member with the longest encoded value (the one to blame for a
/// body over the limit).
fn largest_field<B: Serialize>(body: &B) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(body) else {
        return String::new();
    };
    map.iter()
        .max_by_key(|(_, v)| v.to_string().len())
        .map(|(k, _)| k.clone())
        .unwrap_or_default()
}

pub fn decode<R: DeserializeOwned>(raw: Raw) -> Result<Reply<R>, GraphError> {
    let value = serde_json::from_slice(&raw.body)
        .map_err(|e| GraphError::InvalidResponse(e.to_string()))?;
    Ok(Reply {
        value,
        request_id: raw.request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_fill_in_order_then_spread() {
        let load: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let first: Vec<Turn> = (0..STREAMS_PER_POOL).map(|_| Turn::take(&load)).collect();
        assert!(first.iter().all(|t| t.0 == 0));
        let next = Turn::take(&load);
        assert_eq!(next.0, 1);
        drop(first);
        assert_eq!(load[0].load(Ordering::Relaxed), 0);
        assert_eq!(Turn::take(&load).0, 0, "a drained pool is used first again");
        let all: Vec<Turn> = (0..3 * STREAMS_PER_POOL)
            .map(|_| Turn::take(&load))
            .collect();
        let over = Turn::take(&load);
        assert!(over.0 < 3, "full pools take the least loaded");
        drop((all, next));
    }

    #[test]
    fn plain_http1_uses_one_pool_http2_and_tls_use_many() {
        let pools = |url: &str, h2c: bool| {
            let options = Options {
                h2c,
                connections: 8,
            };
            GraphClient::new(url, options).unwrap().http.len()
        };
        assert_eq!(pools("http://127.0.0.1:1/beta", false), 1);
        assert_eq!(pools("http://127.0.0.1:1/beta", true), 8);
        assert_eq!(pools("https://graph.microsoft.com/beta", false), 8);
    }
}
