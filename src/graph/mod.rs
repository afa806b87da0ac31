//! The Microsoft Graph client and Graph's JSON model. Nothing here knows about
//! protobuf or gRPC.

mod batch;
mod client;
mod error;
mod lifecycle;
pub mod model;
mod retry;

pub use batch::{BatchItem, BatchReply, ItemReply, MAX_BATCH};
pub use client::{Call, GraphClient, Options, Reply};
pub use error::{GraphError, StatusError};
pub use lifecycle::Page;
pub use retry::RetryPolicy;
