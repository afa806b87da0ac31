//! The Microsoft Graph client and Graph's JSON model. Nothing here knows about
//! protobuf or gRPC.

mod batch;
mod client;
mod error;
mod http;
pub mod ids;
mod lifecycle;
pub mod model;
mod retry;
pub mod trace;

pub use batch::{BatchItem, BatchReply, ItemReply, MAX_BATCH};
pub use client::{Call, GraphClient, MAX_REQUEST_BODY_BYTES, NewEntity, Options, Reply};
pub use error::{GraphError, StatusError};
pub use http::tls_config;
pub use ids::ClientIds;
pub use lifecycle::Page;
pub use retry::RetryPolicy;
