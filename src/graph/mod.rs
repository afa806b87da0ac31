//! The Microsoft Graph client and Graph's JSON model. Nothing here knows about
//! protobuf or gRPC.

mod client;
mod error;
pub mod model;
mod retry;
pub mod trace;

pub use client::{Call, GraphClient, MAX_REQUEST_BODY_BYTES, Options, Reply};
pub use error::{GraphError, StatusError};
pub use retry::RetryPolicy;
