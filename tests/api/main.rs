//! Integration tests: each starts the real gateway on port 0 against its own
//! in-process Graph emulator and calls it with the generated tonic client.

mod auth;
mod budget;
mod bulk;
mod cli;
mod compliance_states;
mod device_states;
mod engine;
mod errors;
mod healthcheck;
mod helpers;
mod idempotency;
mod lifecycle;
mod outbox;
#[allow(dead_code)]
#[path = "../support/postgres.rs"]
mod pg_server;
mod readme;
mod replicas;
mod retries;
mod server;
mod store_outage;
mod throttling;
mod timestamps;
mod upstream_tls;
mod user_states;
mod validation;
mod worlds;
