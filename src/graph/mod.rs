//! The Microsoft Graph client and Graph's JSON model. Nothing here knows about
//! protobuf or gRPC.

mod client;
mod error;
pub mod ids;
pub mod model;
mod retry;
pub mod trace;

pub use client::{Call, GraphClient, MAX_REQUEST_BODY_BYTES, NewEntity, Options, Reply};
pub use error::{GraphError, StatusError};
pub use ids::ClientIds;
pub use retry::RetryPolicy;
