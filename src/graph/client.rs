//! The Graph HTTP client: one pooled `reqwest` client for the whole process.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;

use super::{GraphError, RetryPolicy, StatusError, retry::Retry};

/// Largest Graph response body read; run-state entities are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// How the Graph client connects.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub retry: RetryPolicy,
    /// HTTP/2 without TLS (prior knowledge) to an http URL.
    pub h2c: bool,
    /// Independent connection pools (1..=64), used in turn.
    pub connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
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
    http: Arc<[reqwest::Client]>,
    next: Arc<AtomicUsize>,
    /// Base URL plus `/deviceManagement/`.
    pub(super) root: String,
    host: String,
    pub(super) retry: RetryPolicy,
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

/// A raw success.
pub(super) struct Raw {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    pub(super) request_id: Option<String>,
}

impl GraphClient {
    /// Builds the client. `base_url` must be an http or https URL. With
    /// `h2c`, an http URL is spoken to in HTTP/2 without TLS (prior knowledge),
    /// which multiplexes calls over a few connections.
    pub fn new(base_url: &str, options: Options) -> Result<Self, String> {
        let Options {
            retry,
            h2c,
            connections,
        } = options;
        if !(1..=64).contains(&connections) {
            return Err(format!("{connections} connections: use 1 to 64"));
        }
        let url =
            reqwest::Url::parse(base_url).map_err(|e| format!("{base_url:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(format!("{base_url:?} must be an http or https URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{base_url:?} must not have a query or fragment"));
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if h2c && url.scheme() != "http" {
            return Err(format!(
                "{base_url:?}: HTTP/2 prior knowledge needs an http URL"
            ));
        }
        let build = || {
            let mut builder = reqwest::Client::builder();
            if h2c {
                builder = builder.http2_prior_knowledge();
            }
            builder
                .user_agent(concat!("runstate-gateway/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        let http = (0..connections)
            .map(|_| build())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            http: http.into(),
            next: Arc::default(),
            root: format!("{}/deviceManagement/", base_url.trim_end_matches('/')),
            host,
            retry,
        })
    }

    /// The Graph host, e.g. `graph.microsoft.com` (the `ErrorInfo` domain).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// POSTs `body` to a collection and reads the created entity (201).
    ///
    /// `replayable` says the body carries its own `id`, so a retry after an
    /// ambiguous failure cannot create a duplicate.
    pub async fn create<B: Serialize, R: DeserializeOwned>(
        &self,
        collection: &str,
        body: &B,
        call: &Call<'_>,
        replayable: bool,
    ) -> Result<Reply<R>, GraphError> {
        let raw = self
            .send(
                Method::POST,
                collection,
                Some(encode(body)?),
                call,
                replayable,
            )
            .await?;
        decode(raw)
    }

    /// PATCHes an entity. `None` when Graph answers 204 without a body.
    pub async fn update<B: Serialize, R: DeserializeOwned>(
        &self,
        item: &str,
        body: &B,
        call: &Call<'_>,
    ) -> Result<Reply<Option<R>>, GraphError> {
        let raw = self
            .send(Method::PATCH, item, Some(encode(body)?), call, true)
            .await?;
        if raw.status == StatusCode::NO_CONTENT || raw.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Reply {
                value: None,
                request_id: raw.request_id,
            });
        }
        let Reply { value, request_id } = decode(raw)?;
        Ok(Reply {
            value: Some(value),
            request_id,
        })
    }

    /// GETs an entity.
    pub async fn get<R: DeserializeOwned>(
        &self,
        item: &str,
        call: &Call<'_>,
    ) -> Result<Reply<R>, GraphError> {
        let raw = self.send(Method::GET, item, None, call, true).await?;
        decode(raw)
    }

    /// Sends one request, retrying per the policy within the deadline.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        call: &Call<'_>,
        replayable: bool,
    ) -> Result<Raw, GraphError> {
        let url = format!("{}{path}", self.root);
        let mut ambiguous = false;
        for attempt in 0.. {
            let error = match self.attempt(&method, &url, body.clone(), call).await {
                Ok(raw) => return Ok(raw),
                Err(GraphError::Status(mut e)) => {
                    e.after_ambiguous_retry = ambiguous;
                    GraphError::Status(e)
                }
                Err(e) => e,
            };
            let delay = match self.retry.decide(attempt, &method, replayable, &error) {
                Some(Retry::Safe(d)) => d,
                Some(Retry::Ambiguous(d)) => {
                    ambiguous = true;
                    d
                }
                None => return Err(error),
            };
            if Instant::now() + delay >= call.deadline {
                return Err(error);
            }
            tracing::debug!(%method, attempt, ?delay, %error, "retrying Graph call");
            tokio::time::sleep(delay).await;
        }
        unreachable!("the retry loop returns")
    }

    pub(super) async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<Bytes>,
        call: &Call<'_>,
    ) -> Result<Raw, GraphError> {
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(GraphError::Timeout);
        }
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.http.len();
        let mut request = self.http[turn]
            .request(method.clone(), url)
            .timeout(remaining)
            .header(header::AUTHORIZATION, call.authorization.clone())
            .header("client-request-id", &client_request_id)
            .header(header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        // Boxed: reqwest's future is large, and every enclosing future would
        // otherwise carry (and move) it.
        let mut response = Box::pin(request.send())
            .await
            .map_err(|e| transport_error(e, call.deadline))?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let body = read_body(response, call.deadline).await?;
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

async fn read_body(
    mut response: reqwest::Response,
    deadline: Instant,
) -> Result<Bytes, GraphError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(GraphError::InvalidResponse(
            "the body is larger than 1 MiB".into(),
        ));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, deadline))?
    {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(GraphError::InvalidResponse(
                "the body is larger than 1 MiB".into(),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn transport_error(e: reqwest::Error, deadline: Instant) -> GraphError {
    // A connect timeout is also a timeout to reqwest: it is a connection
    // failure (never sent, so retried), unless the caller's deadline passed.
    if Instant::now() >= deadline || (e.is_timeout() && !e.is_connect()) {
        return GraphError::Timeout;
    }
    let maybe_sent = !e.is_connect();
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    GraphError::Unavailable {
        message,
        maybe_sent,
    }
}

pub(super) fn encode<B: Serialize>(body: &B) -> Result<Bytes, GraphError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| GraphError::InvalidResponse(format!("cannot encode the request: {e}")))
}

pub(super) fn decode<R: DeserializeOwned>(raw: Raw) -> Result<Reply<R>, GraphError> {
    let value = serde_json::from_slice(&raw.body)
        .map_err(|e| GraphError::InvalidResponse(e.to_string()))?;
    Ok(Reply {
        value,
        request_id: raw.request_id,
    })
}
