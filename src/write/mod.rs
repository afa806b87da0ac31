//! The write engine: where every write to Graph is decided, retried and
//! budgeted. Single creates, `$batch` items and streams all come here; for
//! the engine a batch is only a transport.
//!
//! - [`send`]: the one send loop with one retry policy ([`retry`]), budget
//!   permits held until the answer ([`budget`]: writes take one of the write
//!   budget, every request one of the read budget), and the tenant pause on
//!   any 429. Reads go through it too.
//! - [`create`]: exactly-once creates: request-id records ([`records`]),
//!   client-id worlds ([`ids`]), 400/409 and lost-answer handling.
//! - Updates, deletes, gets and lists are below: one request each.

pub(crate) mod budget;
mod create;
pub(crate) mod ids;
pub(crate) mod records;
pub(crate) mod retry;
mod send;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

pub(crate) use create::{CreateError, NewState};
pub(crate) use send::Via;

use crate::graph::{Call, GraphClient, GraphError, Page, Reply, decode, encode};
use budget::Budgets;
use ids::{ClientIds, Worlds};
use records::RequestIds;
use retry::RetryPolicy;
use send::Request;

/// How the engine retries and sends.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub retry: RetryPolicy,
    /// What Graph does with client ids (`--graph-client-ids`).
    pub client_ids: ClientIds,
    /// `$batch` requests of one call in flight at once.
    pub batch_concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            client_ids: ClientIds::Auto,
            batch_concurrency: 4,
        }
    }
}

/// The write engine (cheap to clone: every handle shares its state).
#[derive(Clone)]
pub(crate) struct Engine {
    graph: GraphClient,
    retry: RetryPolicy,
    batch_concurrency: usize,
    budgets: Budgets,
    worlds: Arc<Worlds>,
    records: Arc<RequestIds>,
}

impl Engine {
    pub fn new(
        graph: GraphClient,
        settings: Settings,
        budgets: Budgets,
        records: Arc<RequestIds>,
    ) -> Self {
        Self {
            graph,
            retry: settings.retry,
            batch_concurrency: settings.batch_concurrency.max(1),
            budgets,
            worlds: Arc::new(Worlds::new(settings.client_ids)),
            records,
        }
    }

    /// The Graph host (the `ErrorInfo` domain).
    pub fn host(&self) -> &str {
        self.graph.host()
    }

    /// `{base}/deviceManagement/`: every URL the engine fetches starts with it.
    pub fn root(&self) -> &str {
        self.graph.root()
    }

    /// GETs an entity.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: String,
        call: &Call<'_>,
    ) -> Result<Reply<T>, GraphError> {
        decode(self.send(Request::get(path), call).await.result?)
    }

    /// GETs one page of a collection; `query` is already encoded (no `?`).
    pub async fn list<T: DeserializeOwned>(
        &self,
        collection: &str,
        query: &str,
        call: &Call<'_>,
    ) -> Result<Reply<Page<T>>, GraphError> {
        let path = if query.is_empty() {
            collection.to_owned()
        } else {
            format!("{collection}?{query}")
        };
        self.get(path, call).await
    }

    /// DELETEs an entity (Graph answers 204); returns Graph's request id.
    pub async fn delete(
        &self,
        path: String,
        call: &Call<'_>,
    ) -> Result<Option<String>, GraphError> {
        let request = Request {
            method: Method::DELETE,
            path,
            body: None,
        };
        Ok(self.send(request, call).await.result?.request_id)
    }

    /// Sends PATCHes and DELETEs (`body` `None`) through the one send loop,
    /// alone or in `$batch` envelopes; answers in order with Graph's
    /// request id. Each holds a budget permit and is retried as a single
    /// update or delete is.
    pub async fn change_all(
        &self,
        changes: Vec<(String, Option<Bytes>)>,
        via: Via,
        call: &Call<'_>,
    ) -> Vec<Result<Option<String>, GraphError>> {
        let requests = changes
            .into_iter()
            .map(|(path, body)| Request {
                method: if body.is_some() {
                    Method::PATCH
                } else {
                    Method::DELETE
                },
                path,
                body,
            })
            .collect();
        self.send_all(requests, via, call)
            .await
            .into_iter()
            .map(|sent| sent.result.map(|raw| raw.request_id))
            .collect()
    }

    /// Whether Graph is known to keep the client ids sent to this
    /// collection (so a create may be sent again with its id: a copy that
    /// got through answers 409 and is read back).
    pub fn keeps_client_ids(&self, collection: &str) -> bool {
        self.worlds.honoured(&Worlds::kind(collection))
    }

    /// PATCHes an entity. `None` when Graph answers 204 without a body.
    pub async fn update<B: Serialize, T: DeserializeOwned>(
        &self,
        path: String,
        body: &B,
        call: &Call<'_>,
    ) -> Result<Reply<Option<T>>, GraphError> {
        let request = Request {
            method: Method::PATCH,
            path,
            body: Some(encode(body)?),
        };
        let raw = self.send(request, call).await.result?;
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
}
