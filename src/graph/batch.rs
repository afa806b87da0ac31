//! JSON batching: `POST {base}/$batch` with up to 20 requests.
//!
//! Graph answers 200 with one response per request, in any order, matched by
//! `id`; each has its own status, headers and body (a 429 inside a batch
//! throttles that item alone). This module sends one batch, retrying the
//! batch POST itself per the retry policy; what to do with each item is the
//! caller's business.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    Call, GraphClient, GraphError, Reply, StatusError,
    client::{decode, encode},
    retry::Retry,
};

/// Graph's limit of requests in one batch.
pub const MAX_BATCH: usize = 20;

/// One request of a batch: a POST of `body` to a collection.
#[derive(Debug, Serialize)]
pub struct BatchItem<'a, B> {
    /// Unique within the batch.
    pub id: String,
    pub method: &'static str,
    /// Relative to the API version, e.g. `/deviceManagement/.../deviceRunStates`.
    pub url: String,
    pub headers: HashMap<&'static str, String>,
    pub body: &'a B,
}

impl<'a, B> BatchItem<'a, B> {
    /// A create: POST `body` to `collection` (relative to `/deviceManagement/`).
    pub fn post(id: String, collection: &str, body: &'a B) -> Self {
        let headers = HashMap::from([
            ("Content-Type", "application/json".to_owned()),
            ("client-request-id", uuid::Uuid::new_v4().to_string()),
        ]);
        Self {
            id,
            method: "POST",
            url: format!("/deviceManagement/{collection}"),
            headers,
            body,
        }
    }
}

#[derive(Serialize)]
struct BatchBody<'r, 'a, B> {
    requests: &'r [BatchItem<'a, B>],
}

/// Graph's answer to a batch.
#[derive(Debug, Deserialize)]
pub struct BatchReply {
    #[serde(default)]
    pub responses: Vec<ItemReply>,
}

/// The answer to one request of a batch.
#[derive(Debug, Deserialize)]
pub struct ItemReply {
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub headers: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

impl ItemReply {
    /// The item's headers as an HTTP header map (unusable ones dropped).
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(&text),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// The item's failure, read as a Graph error answer.
    pub fn error(&self, host: &str, client_request_id: String) -> StatusError {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = self
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        StatusError::from_response(
            Method::POST,
            status,
            &self.header_map(),
            &body,
            client_request_id,
            host,
        )
    }
}

impl GraphClient {
    /// `POST {base}/$batch`. Each item first takes a slot of the write
    /// budget. The batch POST is retried when Graph throttles or refuses it
    /// as a whole, or no connection was made; never after an answer that
    /// leaves it unknown whether the batch was applied.
    pub async fn batch<B: Serialize>(
        &self,
        items: &[BatchItem<'_, B>],
        call: &Call<'_>,
    ) -> Result<Reply<BatchReply>, GraphError> {
        let base = self
            .root
            .strip_suffix("deviceManagement/")
            .unwrap_or(&self.root);
        let url = format!("{base}$batch");
        let body = encode(&BatchBody { requests: items })?;
        let method = Method::POST;
        let tenant = self
            .budget()
            .map(|_| crate::state::identity::tenant(call.authorization));
        for attempt in 0.. {
            if let (Some(budget), Some(tenant)) = (self.budget(), &tenant) {
                for _ in items {
                    budget
                        .acquire(tenant, call.deadline)
                        .await
                        .map_err(|retry_after| GraphError::WriteBudget { retry_after })?;
                }
            }
            let sent = self.attempt(&method, &url, Some(body.clone()), call, attempt, "$batch");
            let error = match sent.await {
                Ok(raw) => return decode(raw),
                Err(e) => e,
            };
            // A batch whose answer was lost may have been applied.
            let lost = |e: GraphError| {
                if super::retry::ambiguous(&e) {
                    GraphError::OutcomeUnknown(Box::new(e))
                } else {
                    e
                }
            };
            let delay = match self.retry.decide(attempt, &method, &error) {
                Some(Retry::Safe(d)) => d,
                None => return Err(lost(error)),
            };
            if Instant::now() + delay >= call.deadline {
                return Err(lost(error));
            }
            tracing::debug!(attempt, ?delay, %error, "retrying a Graph batch");
            tokio::time::sleep(delay).await;
        }
        unreachable!("the retry loop returns")
    }

    /// Holds every write of the caller's tenant for `delay` (Graph throttled).
    pub async fn pause_writes(&self, call: &Call<'_>, delay: std::time::Duration) {
        if let Some(budget) = self.budget() {
            let tenant = crate::state::identity::tenant(call.authorization);
            budget.pause(&tenant, delay).await;
        }
    }
}
