//! JSON batching: `POST {base}/$batch` with up to 20 requests.
//!
//! Graph answers 200 with one response per request, in any order, matched by
//! `id`; each has its own status, headers and body (a 429 inside a batch
//! throttles that item alone). This module sends one batch once; retries
//! and what to do with each item are the write engine's.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    Call, GraphClient, GraphError, StatusError,
    client::{Raw, decode, encode},
};

/// Graph's limit of requests in one batch.
pub const MAX_BATCH: usize = 20;

/// One request of a batch.
#[derive(Debug, Serialize)]
pub struct BatchItem<'a> {
    /// Unique within the batch.
    pub id: String,
    pub method: &'a str,
    /// Relative to the API version, e.g. `/deviceManagement/.../deviceRunStates`.
    pub url: String,
    pub headers: HashMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a RawValue>,
}

impl<'a> BatchItem<'a> {
    /// `method` on `path` (relative to `/deviceManagement/`), with a JSON body.
    pub fn new(id: String, method: &'a Method, path: &str, body: Option<&'a RawValue>) -> Self {
        let mut headers = HashMap::from([("client-request-id", uuid::Uuid::new_v4().to_string())]);
        if body.is_some() {
            headers.insert("Content-Type", "application/json".to_owned());
        }
        Self {
            id,
            method: method.as_str(),
            url: format!("/deviceManagement/{path}"),
            headers,
            body,
        }
    }
}

#[derive(Serialize)]
struct BatchBody<'r, 'a> {
    requests: &'r [BatchItem<'a>],
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

    /// The item's answer as a single request's: a success, or its failure
    /// read as a Graph error answer.
    pub fn into_result(self, host: &str, client_request_id: String) -> Result<Raw, GraphError> {
        if (200..300).contains(&self.status) {
            let request_id = self
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("request-id"))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned);
            let body = self
                .body
                .as_ref()
                .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
                .unwrap_or_default();
            return Ok(Raw {
                status: StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK),
                body,
                request_id,
            });
        }
        Err(GraphError::Status(Box::new(
            self.error(host, client_request_id),
        )))
    }

    /// The item's failure, read as a Graph error answer.
    pub(super) fn error(&self, host: &str, client_request_id: String) -> StatusError {
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
    /// `POST {base}/$batch` once (no retry). The answers come back in the
    /// items' order: an item Graph left out of its answer gets `None`.
    pub async fn batch_once(
        &self,
        items: &[BatchItem<'_>],
        call: &Call<'_>,
        attempt: u32,
    ) -> Result<Vec<Option<ItemReply>>, GraphError> {
        let base = self
            .root
            .strip_suffix("deviceManagement/")
            .unwrap_or(&self.root);
        let url = format!("{base}$batch");
        let body = encode(&BatchBody { requests: items })?;
        let raw = self
            .attempt(&Method::POST, &url, Some(body), call, attempt, "$batch")
            .await?;
        let reply: BatchReply = decode(raw)?.value;
        let mut answers: HashMap<String, ItemReply> = HashMap::with_capacity(items.len());
        for r in reply.responses {
            answers.entry(r.id.clone()).or_insert(r);
        }
        Ok(items.iter().map(|i| answers.remove(&i.id)).collect())
    }
}
