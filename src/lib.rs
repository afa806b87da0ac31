//! runstate-gateway: a gRPC gateway that records Intune script run states in
//! Microsoft Graph (beta).
//!
//! # Layout
//!
//! A gRPC call enters in [`grpc`], whose handlers (one file per resource) check
//! the caller's token and deadline. [`convert`] validates resource names and
//! translates the proto resource into Graph's JSON model (enums, timestamps,
//! update masks, nulls); it is the only module that knows both sides. The call
//! goes out through [`graph`], the Graph client (retries, errors, request ids),
//! which knows nothing of protobuf. Graph's answer comes back the same way, and
//! [`grpc::status`] turns a Graph error into a gRPC status with rich details.
//!
//! Under the handlers, [`server`] serves HTTP/2 itself: it accepts connections
//! (connection cap, handshake timeout, stream limit, send budget), and its gate
//! reads each request message, sheds excess calls, and writes the call's log
//! line and [`metrics`]; [`admin`] serves the metrics and the probes.
//!
//! Writes wait for a slot of the [`budget`] (the write budget); request-id
//! records and the budget live in [`state`] (in memory, or Redis for many
//! replicas).
//!
//! The Graph emulator, an in-memory stand-in for Graph, is a crate of its own
//! (`emulator/`, `runstate-emulator`) that depends on no gateway code; the
//! gateway embeds it behind the default cargo feature `emulator` for
//! `--emulator` and the `emulator` command, and the tests steer it directly.
//! [`config`] holds the command line, [`startup`] wires the server together
//! (the embedded emulator included), [`telemetry`] sets up logging.
//! [`healthcheck`] is the `healthcheck` subcommand, a gRPC health client for
//! container probes.
//! [`auth`] decides which Graph token a call carries (the caller's, a static
//! one, or the gateway's own credential); [`tls`] protects the listener.
//! [`pb`] is the code generated from `proto/` by `build.rs`.

pub mod admin;
pub mod auth;
pub mod budget;
pub mod config;
pub mod convert;
pub mod graph;
pub mod grpc;
pub mod healthcheck;
pub mod metrics;
pub mod server;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/intune/runstates/v1`.
pub mod pb {
    tonic::include_proto!("intune.runstates.v1");

    /// The encoded descriptor set of `proto/` (with imports), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/runstates_descriptor.bin"));
}
