//! A plain Microsoft Graph HTTP client and Graph's JSON model: one request,
//! sent once. Nothing here knows about protobuf, gRPC, retries or budgets.

mod batch;
mod client;
mod error;
mod http;
pub mod model;
mod page;
pub mod trace;

pub use batch::{BatchItem, MAX_BATCH};
pub use client::{Call, GraphClient, MAX_REQUEST_BODY_BYTES, Options, Raw, Reply, decode, encode};
pub use error::{GraphError, StatusError};
pub use http::tls_config;
pub use page::Page;
