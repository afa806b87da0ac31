//! runstate-gateway: a gRPC gateway that records Intune script run states in
//! Microsoft Graph (beta).
//!
//! # Layout
//!
//! A gRPC call enters in `server`, which serves HTTP/2 itself: it accepts
//! connections (connection cap, handshake and idle timeouts, stream limits,
//! send budget), and its gate checks each call's framing, reads its message,
//! sheds excess calls and writes the call's log line and `metrics`;
//! `admin` serves the metrics and the probes on a port of its own.
//!
//! `grpc` holds thin adapters: `grpc::kinds` declares the three resource
//! kinds once and writes their RPCs from shared shapes; each checks the
//! caller's token (`auth`) and deadline. [`convert`] validates resource
//! names and translates the proto resource into Graph's JSON model (enums,
//! timestamps, update masks, nulls); it is the only module that knows both
//! sides. `grpc::status` turns a Graph error into a gRPC status with rich
//! details.
//!
//! [`outbox`] accepts many writes at once (`SubmitRunStates`), keeps them
//! on disk and delivers them through the write engine, behind
//! `google.longrunning` operations (`grpc::operations`).
//!
//! Every Graph request goes through `write`, the write engine: the one
//! place where a write is decided (exactly-once creates, request-id records,
//! client-id worlds, 409 and lost answers), retried (one send loop, one
//! retry policy, for single requests and `$batch` items alike) and budgeted
//! (budget permits, the tenant pause on a 429). `graph` is the plain Graph
//! HTTP client under it: one request, sent once. `state` holds what
//! replicas share (Redis) and who the caller and tenant are.
//!
//! The Graph emulator, an in-memory stand-in for Graph, is a crate of its own
//! (`emulator/`, `runstate-emulator`) that depends on no gateway code; the
//! gateway embeds it behind the default cargo feature `emulator` for
//! `--emulator` and the `emulator` command, and the tests steer it directly.
//! [`config`] holds the command line (one clap group per subsystem, each
//! subsystem built from its own), [`startup`] wires the server together
//! (the embedded emulator included), [`telemetry`] sets up logging (never
//! blocking a call), `memory` hands freed memory back to the system.
//! [`healthcheck`] is the `healthcheck` subcommand, a gRPC health client for
//! container probes. [`tls`] protects the listener. [`pb`] is the code
//! generated from `proto/` by `build.rs`.

pub(crate) mod admin;
pub(crate) mod auth;
pub mod config;
pub mod convert;
pub(crate) mod graph;
pub(crate) mod grpc;
pub mod healthcheck;
pub(crate) mod memory;
pub(crate) mod metrics;
pub mod outbox;
pub(crate) mod server;
pub mod startup;
pub(crate) mod state;
pub mod telemetry;
pub mod tls;
mod write;

/// Code generated from `proto/intune/runstates/v1` (and the
/// `google.longrunning` service it returns operations of).
pub mod pb {
    pub mod intune {
        pub mod runstates {
            pub mod v1 {
                tonic::include_proto!("intune.runstates.v1");
            }
        }
    }
    pub mod google {
        pub mod longrunning {
            tonic::include_proto!("google.longrunning");
        }
    }
    pub use google::longrunning;
    pub use intune::runstates::v1::*;

    /// The encoded descriptor set of `proto/` (with imports), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/runstates_descriptor.bin"));
}
