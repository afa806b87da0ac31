//! One page of a Graph collection.

use serde::{Deserialize, de::DeserializeOwned};

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
