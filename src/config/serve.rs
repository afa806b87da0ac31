//! The gateway's options, one group per subsystem. Each group is a clap
//! `Args` struct flattened into [`ServeArgs`], so the flags keep their flat
//! names and `--help` shows them under one heading per group.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};

use super::{AuthMode, Cloud, LogFormat, Secret, parse_duration};

/// Largest value of `--max-request-bytes` (64 MiB).
pub const MAX_REQUEST_BYTES_CAP: u64 = 64 << 20;
/// Largest value of `--max-concurrent-requests`.
pub const MAX_CONCURRENT_REQUESTS_CAP: u64 = 1_000_000;
/// Largest value of `--graph-max-retries`.
pub const MAX_RETRIES_CAP: u32 = 10;

/// Options of the gateway, one group per subsystem (flags keep their flat names).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    pub calls: CallArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub outbox: OutboxArgs,
    #[command(flatten)]
    pub logs: LogArgs,
}

/// The outbox behind SubmitRunStates.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Outbox")]
pub struct OutboxArgs {
    /// Where SubmitRunStates keeps accepted writes until they are delivered: the path of an
    /// embedded database file (created if missing; one process), or a postgres:// URL
    /// (PostgreSQL, shared by replicas; the gateway creates its tables; prefer the env
    /// variable when the URL holds a password). Without it SubmitRunStates answers
    /// FAILED_PRECONDITION, except with --emulator, which uses a file in a temporary directory.
    #[arg(
        long,
        env = "RUNSTATE_OUTBOX",
        value_name = "PATH|URL",
        hide_env_values = true
    )]
    pub outbox: Option<crate::outbox::OutboxSpec>,

    /// Most writes and payload bytes one tenant may have waiting in the outbox, as
    /// WRITES,BYTES (bytes take KiB, MiB or GiB); a submission past either is refused whole
    /// with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "RUNSTATE_OUTBOX_MAX_PENDING",
        default_value = "100000,256MiB",
        value_name = "WRITES,BYTES"
    )]
    pub outbox_max_pending: crate::outbox::MaxPending,

    /// How long finished operations and their results are kept before they are removed
    /// (e.g. 7d, 12h; at most 3650d).
    #[arg(long, env = "RUNSTATE_OPERATION_RETENTION", default_value = "7d",
        value_parser = |t: &str| super::parse_up_to(t, super::MAX_RETENTION, "3650d"))]
    pub operation_retention: Duration,
}

/// The gRPC listener: its address and TLS.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listener")]
pub struct ListenerArgs {
    /// Address the gRPC server listens on; the loopback default keeps it private to the host
    /// or pod, and port 0 picks a free port.
    #[arg(long, env = "RUNSTATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Serve TLS with this PEM certificate chain; reloaded when the file changes.
    #[arg(long, env = "RUNSTATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert; reloaded when the file changes.
    #[arg(long, env = "RUNSTATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by a CA in this PEM file (mutual TLS).
    #[arg(long, env = "RUNSTATE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// A client certificate subject CN or SAN that may call (repeatable; with
    /// --tls-client-ca). Other clients are refused at the handshake.
    #[arg(
        long = "allow-client",
        env = "RUNSTATE_ALLOW_CLIENT",
        value_delimiter = ',',
        requires = "tls_client_ca"
    )]
    pub allow_client: Vec<String>,

    /// Allow a plaintext (no TLS) listener on an address other than loopback.
    #[arg(long, env = "RUNSTATE_ALLOW_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_plaintext: bool,
}

/// How calls are served: deadlines, page tokens, batches and streams.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Calls")]
pub struct CallArgs {
    /// Deadline of calls that send no `grpc-timeout`, such as 30s or 500ms (at most 24h).
    #[arg(long, env = "RUNSTATE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Secret that keys the List RPCs' page tokens (HMAC-SHA256). Give every
    /// replica behind one load balancer the same one; when unset, a random
    /// per-process key is used and tokens die with the process.
    #[arg(long, env = "RUNSTATE_PAGE_TOKEN_KEY", hide_env_values = true)]
    pub page_token_key: Option<Secret>,

    /// Items of one StreamCreateScriptDeviceStates call held at once (1-10000);
    /// a faster sender is slowed down.
    #[arg(long, env = "RUNSTATE_STREAM_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stream_max_in_flight: u32,

    /// Graph `$batch` requests of one Batch RPC in flight at once (1-64).
    #[arg(long, env = "RUNSTATE_BATCH_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch_concurrency: u32,

    /// How long in-flight calls may run after SIGTERM or SIGINT before they are cancelled (e.g. 10s).
    #[arg(long, env = "RUNSTATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// What one client may hold: connections, streams, bytes and time.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Largest gRPC request message accepted, in bytes, from 1 to 67108864 (64 MiB); larger
    /// messages are refused with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "RUNSTATE_MAX_REQUEST_BYTES",
        default_value_t = 256 * 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_REQUEST_BYTES_CAP)
    )]
    pub max_request_bytes: usize,

    /// Largest number of RPCs in flight at once, from 1 to 1000000 (a streaming call counts
    /// until it ends); calls beyond it are refused at once with RESOURCE_EXHAUSTED rather
    /// than queued.
    #[arg(
        long,
        env = "RUNSTATE_MAX_CONCURRENT_REQUESTS",
        default_value_t = 4096,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
            .range(1..=MAX_CONCURRENT_REQUESTS_CAP)
    )]
    pub max_concurrent_requests: usize,

    /// Most client connections open at once; connections past it are closed as soon as they are accepted (1-1000000).
    #[arg(long, env = "RUNSTATE_MAX_CONNECTIONS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most concurrent HTTP/2 streams one client connection may open (1-10000).
    #[arg(long, env = "RUNSTATE_MAX_STREAMS_PER_CONNECTION", default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Most StreamCreateScriptDeviceStates calls open at once (1-1000000); a stream past it is
    /// refused at once with RESOURCE_EXHAUSTED, and unary calls are not affected.
    #[arg(long, env = "RUNSTATE_MAX_STREAMING_CALLS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streaming_calls: u32,

    /// Bytes of responses a connection may leave unread before its new calls are refused with RESOURCE_EXHAUSTED (65536-1073741824).
    #[arg(long, env = "RUNSTATE_CONNECTION_SEND_BUDGET", default_value_t = 4 << 20,
        value_parser = clap::value_parser!(u64).range(65_536..=1 << 30))]
    pub connection_send_budget: u64,

    /// Time a client has to send a whole request message once its call has started (e.g. 5s).
    #[arg(long, env = "RUNSTATE_REQUEST_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,

    /// Time a new connection has to complete its TLS and HTTP/2 handshake before it is closed (e.g. 5s).
    #[arg(long, env = "RUNSTATE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time a streaming call may go without sending a whole message while none of its items
    /// is waiting for an answer; it is then ended with DEADLINE_EXCEEDED (e.g. 30s).
    #[arg(long, env = "RUNSTATE_STREAM_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,

    /// Time a client connection may stay open with no call on it; it then gets GOAWAY and
    /// is closed, and gRPC clients reconnect on their next call (e.g. 2m).
    #[arg(long, env = "RUNSTATE_IDLE_CONNECTION_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub idle_connection_timeout: Duration,
}

/// Where Graph is and how it is reached.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Graph")]
pub struct GraphArgs {
    /// Base URL of Microsoft Graph, including the API version, to which calls are sent.
    #[arg(
        long,
        env = "GRAPH_URL",
        default_value = "https://graph.microsoft.com/beta"
    )]
    pub graph_url: String,

    /// National cloud: sets Graph's URL and the token authority unless
    /// --graph-url or --authority-host say otherwise.
    #[arg(long, env = "GRAPH_CLOUD", value_enum, default_value_t = Cloud::Global)]
    pub cloud: Cloud,

    /// Also start the embedded Graph emulator on a loopback port and send every call to it
    /// instead of Graph, for trying the gateway without a tenant.
    #[arg(long, env = "RUNSTATE_EMULATOR")]
    pub emulator: bool,

    /// Speak HTTP/2 without TLS (prior knowledge) to an http:// Graph URL; always on with
    /// --emulator.
    #[arg(long, env = "GRAPH_H2C")]
    pub graph_h2c: bool,

    /// Number of independent upstream connection pools, from 1 to 64, filled in order: with
    /// HTTP/2 each carries one connection, and the next is used once 100 calls are in flight.
    /// Plain `http` without `--graph-h2c` (HTTP/1.1) always uses one pool.
    #[arg(
        long,
        env = "GRAPH_CONNECTIONS",
        default_value_t = 8,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64)
    )]
    pub graph_connections: usize,

    /// PEM file of extra CA certificates trusted for Graph and the token endpoints, besides
    /// the public roots built in (a private CA, or a TLS-inspecting proxy).
    #[arg(long, env = "GRAPH_CA_FILE", value_name = "PATH")]
    pub graph_ca_file: Option<std::path::PathBuf>,

    /// Allow http:// Graph and authority URLs on hosts other than loopback
    /// (tokens then travel in clear text; for docker compose with the emulator).
    #[arg(long, env = "RUNSTATE_ALLOW_HTTP_UPSTREAM", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_http_upstream: bool,

    /// Number of times a throttled or unavailable Graph call is retried within its deadline,
    /// from 0 to 10.
    #[arg(
        long,
        env = "GRAPH_MAX_RETRIES",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(0..=MAX_RETRIES_CAP as i64)
    )]
    pub graph_max_retries: u32,

    /// Whether Graph keeps a client-chosen `id` on create: `auto` learns it
    /// per collection kind from Graph's answers; `honour` or `ignore` tell it.
    #[arg(long, env = "GRAPH_CLIENT_IDS", default_value = "auto")]
    pub graph_client_ids: crate::write::ids::ClientIds,
}

/// Where Graph tokens come from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Credentials")]
pub struct AuthArgs {
    /// How the gateway gets Graph tokens. Without it, the caller's token is used
    /// if sent, else the static token, else the call fails with UNAUTHENTICATED.
    #[arg(long = "auth", env = "GRAPH_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// Static Graph access token, sent to Graph when a caller sends no `authorization`
    /// metadata; its value is never logged or shown.
    #[arg(long, env = "GRAPH_TOKEN", hide_env_values = true)]
    pub graph_token: Option<Secret>,

    /// File holding the static Graph token; re-read when it changes (a mounted secret).
    #[arg(long, env = "GRAPH_TOKEN_FILE", conflicts_with = "graph_token")]
    pub graph_token_file: Option<PathBuf>,

    /// Use the gateway's own credential even when a caller sends `authorization` metadata.
    #[arg(long, env = "GRAPH_IGNORE_CALLER_TOKEN", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub ignore_caller_token: bool,

    /// Directory (tenant) id of the app registration, for the Entra ID modes.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,

    /// Application (client) id; with managed-identity, the user-assigned identity to use.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,

    /// File holding the client secret, re-read for every token request. The
    /// secret itself is only read from the AZURE_CLIENT_SECRET environment variable.
    #[arg(long, env = "AZURE_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// PEM file with the app's certificate and its RSA private key, for
    /// client-certificate (and on-behalf-of with a certificate).
    #[arg(long, env = "AZURE_CLIENT_CERTIFICATE_PATH")]
    pub client_certificate_path: Option<PathBuf>,

    /// Kubernetes projected service account token, re-read for every token request.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// Entra ID authority, e.g. https://login.microsoftonline.com (default: the cloud's).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub authority_host: Option<String>,

    /// App Service managed identity endpoint; its secret header comes from IDENTITY_HEADER.
    #[arg(long, env = "IDENTITY_ENDPOINT")]
    pub identity_endpoint: Option<String>,

    /// Base URL of the instance metadata service used by managed-identity.
    #[arg(
        long,
        env = "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: String,

    /// Longest time one token request to the identity platform may take; a
    /// call waits for it at most until its own deadline.
    #[arg(long, env = "GRAPH_TOKEN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub token_timeout: Duration,

    /// Most users whose on-behalf-of tokens are cached (1-1000000).
    #[arg(long, env = "GRAPH_OBO_CACHE_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub obo_cache_size: u32,
}

/// How many writes per tenant reach Graph.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Write budget")]
pub struct BudgetArgs {
    /// Most writes to Graph per tenant in any window, e.g. `200/20s`
    /// (Intune's limit), or `off`. Writes wait in order for a slot.
    #[arg(long, env = "GRAPH_WRITE_BUDGET", default_value = "200/20s")]
    pub write_budget: crate::write::budget::BudgetFlag,

    /// Most requests of any kind (reads and writes) to Graph per tenant in any
    /// window, e.g. `2000/20s` (Intune's per-app request limit), or `off`. Gets
    /// and Lists wait in order for a slot, as writes do for --write-budget.
    #[arg(long, env = "GRAPH_READ_BUDGET", default_value = "off")]
    pub read_budget: crate::write::budget::BudgetFlag,

    /// Replicas sharing the state store: while Redis is unreachable each
    /// keeps 1/N of the budgets.
    #[arg(long, env = "RUNSTATE_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub replicas: u32,
}

/// What replicas share.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "State")]
pub struct StateArgs {
    /// Where request-id records and the budgets live: `memory`, or
    /// `redis://HOST:PORT/DB` to share them between replicas.
    #[arg(
        long,
        env = "RUNSTATE_STATE_STORE",
        default_value = "memory",
        hide_env_values = true
    )]
    pub state_store: crate::state::StoreSpec,

    /// What a create with a request_id does while the Redis state store is
    /// unreachable: `serve-local` serves from this replica's own records (a
    /// retry on another replica can then write twice where Graph ignores
    /// ids); `refuse` answers UNAVAILABLE, retryable, and sends nothing.
    #[arg(
        long,
        env = "RUNSTATE_STATE_STORE_OUTAGE",
        value_enum,
        default_value_t = crate::state::StoreOutage::ServeLocal
    )]
    pub state_store_outage: crate::state::StoreOutage,
}

/// The admin HTTP port: metrics and probes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Admin port")]
pub struct AdminArgs {
    /// Address of the admin HTTP server (/metrics, /livez, /readyz); off unless set.
    #[arg(long, env = "RUNSTATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Most connections open at once to --admin-listen; connections past it are closed as
    /// soon as they are accepted (1-10000).
    #[arg(long, env = "RUNSTATE_ADMIN_MAX_CONNECTIONS", default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub admin_max_connections: u32,

    /// Time an admin connection has to send a request's headers, from when it opens or its
    /// previous response ends; it is closed otherwise (e.g. 5s).
    #[arg(long, env = "RUNSTATE_ADMIN_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub admin_header_read_timeout: Duration,

    /// Time an admin connection may go without a byte read or written (a stalled request or
    /// an unread response) before it is closed (e.g. 30s).
    #[arg(long, env = "RUNSTATE_ADMIN_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub admin_idle_timeout: Duration,
}

/// Log lines on stderr.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs")]
pub struct LogArgs {
    /// Format of the log lines written to stderr: text for people, json (one object per
    /// line) for log collectors; RUST_LOG chooses what is logged.
    #[arg(long, env = "RUNSTATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log lines queued for stderr at most (16-1000000). When whatever reads stderr falls
    /// behind and the queue is full, new lines are dropped and counted
    /// (runstate_log_lines_dropped_total): calls never wait for the log.
    #[arg(long, env = "RUNSTATE_LOG_BUFFER_LINES", default_value_t = crate::telemetry::DEFAULT_BUFFER_LINES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1_000_000))]
    pub log_buffer_lines: usize,
}

impl ServeArgs {
    /// Parses gateway options from arguments (no program name), with env fallbacks.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("runstate-gateway"))
            .chain(args.into_iter().map(Into::into));
        Only::try_parse_from(argv).map(|o| o.serve)
    }
}
