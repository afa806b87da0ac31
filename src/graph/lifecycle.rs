//! Listing (one page of a collection) and deleting.

use http::Method;
use serde::{Deserialize, de::DeserializeOwned};

use super::{Call, GraphClient, GraphError, Reply, client::decode};

/// One page of a Graph collection.
#[derive(Debug, Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
pub struct Page<T> {
    #[serde(default)]
    pub value: Vec<T>,
    /// The URL of the next page; absent on the last one.
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

impl GraphClient {
    /// `{base}/deviceManagement/`: every URL this client fetches starts with it.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// GETs one page of a collection. `query` is already encoded (no `?`).
    pub async fn list<R: DeserializeOwned>(
        &self,
        collection: &str,
        query: &str,
        call: &Call<'_>,
    ) -> Result<Reply<Page<R>>, GraphError> {
        let path = if query.is_empty() {
            collection.to_owned()
        } else {
            format!("{collection}?{query}")
        };
        let raw = self.send(Method::GET, &path, None, call, true).await?;
        decode(raw)
    }

    /// DELETEs an entity (Graph answers 204); returns Graph's request id.
    pub async fn delete(&self, item: &str, call: &Call<'_>) -> Result<Option<String>, GraphError> {
        let raw = self.send(Method::DELETE, item, None, call, true).await?;
        Ok(raw.request_id)
    }
}
