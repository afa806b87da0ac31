//! The command line, with environment fallbacks. Read once at startup.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// gRPC gateway that records Intune script run states in Microsoft Graph (beta).
#[derive(Debug, Parser)]
#[command(
    name = "runstate-gateway",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = LOGGING_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, which runs when no command is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Shown after every `--help`: logging is set by the environment, not by flags.
pub const LOGGING_HELP: &str = "Logging: RUST_LOG sets what is logged, in tracing's filter \
syntax (e.g. RUST_LOG=info or RUST_LOG=warn,runstate_gateway=debug); it defaults to info, and an \
invalid RUST_LOG stops startup with an error naming it. Every flag can also be set by the \
environment variable shown in its [env: ...] note.";

/// (Parsed once at startup: the size of `ServeArgs` does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    #[command(after_help = LOGGING_HELP)]
    Serve(ServeArgs),
    /// Run the Graph emulator alone, for trying the gateway without a tenant.
    #[command(after_help = LOGGING_HELP)]
    Emulator(EmulatorArgs),
    /// Ask a running gateway's gRPC health service whether it serves (or, with --http, probe
    /// a URL); exit 0 when healthy and 1 otherwise, printing one line that says why.
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

/// Largest value of `--max-request-bytes` (64 MiB).
pub const MAX_REQUEST_BYTES_CAP: u64 = 64 << 20;
/// Largest value of `--max-concurrent-requests`.
pub const MAX_CONCURRENT_REQUESTS_CAP: u64 = 1_000_000;
/// Largest value of `--graph-max-retries`.
pub const MAX_RETRIES_CAP: u32 = 10;

/// Options of the gateway.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on; the loopback default keeps it private to the host
    /// or pod, and port 0 picks a free port.
    #[arg(long, env = "RUNSTATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Base URL of Microsoft Graph, including the API version, to which calls are sent.
    #[arg(
        long,
        env = "GRAPH_URL",
        default_value = "https://graph.microsoft.com/beta"
    )]
    pub graph_url: String,

    /// Static Graph access token, sent to Graph when a caller sends no `authorization`
    /// metadata; its value is never logged or shown.
    #[arg(long, env = "GRAPH_TOKEN", hide_env_values = true)]
    pub graph_token: Option<Secret>,

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

    /// Deadline of calls that send no `grpc-timeout`, such as 30s or 500ms (at most 24h).
    #[arg(long, env = "RUNSTATE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Number of times a throttled or unavailable Graph call is retried within its deadline,
    /// from 0 to 10.
    #[arg(
        long,
        env = "GRAPH_MAX_RETRIES",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(0..=MAX_RETRIES_CAP as i64)
    )]
    pub graph_max_retries: u32,

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

    /// Address of the admin HTTP server (/metrics, /livez, /readyz); off unless set.
    #[arg(long, env = "RUNSTATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Most concurrent HTTP/2 streams one client connection may open (1-10000).
    #[arg(long, env = "RUNSTATE_MAX_STREAMS_PER_CONNECTION", default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Time a client has to send a whole request message once its call has started (e.g. 5s).
    #[arg(long, env = "RUNSTATE_REQUEST_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,

    /// Time a new connection has to complete its TLS and HTTP/2 handshake before it is closed (e.g. 5s).
    #[arg(long, env = "RUNSTATE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Most client connections open at once; connections past it are closed as soon as they are accepted (1-1000000).
    #[arg(long, env = "RUNSTATE_MAX_CONNECTIONS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Bytes of responses a connection may leave unread before its new calls are refused with RESOURCE_EXHAUSTED (65536-1073741824).
    #[arg(long, env = "RUNSTATE_CONNECTION_SEND_BUDGET", default_value_t = 4 << 20,
        value_parser = clap::value_parser!(u64).range(65_536..=1 << 30))]
    pub connection_send_budget: u64,

    /// Most StreamCreateScriptDeviceStates calls open at once (1-1000000); a stream past it is
    /// refused at once with RESOURCE_EXHAUSTED, and unary calls are not affected.
    #[arg(long, env = "RUNSTATE_MAX_STREAMING_CALLS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streaming_calls: u32,

    /// Time a streaming call may go without sending a whole message while none of its items
    /// is waiting for an answer; it is then ended with DEADLINE_EXCEEDED (e.g. 30s).
    #[arg(long, env = "RUNSTATE_STREAM_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,

    /// Time a client connection may stay open with no call on it; it then gets GOAWAY and
    /// is closed, and gRPC clients reconnect on their next call (e.g. 2m).
    #[arg(long, env = "RUNSTATE_IDLE_CONNECTION_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub idle_connection_timeout: Duration,

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
    /// Whether Graph keeps a client-chosen `id` on create: `auto` learns it
    /// per collection kind from Graph's answers; `honour` or `ignore` tell it.
    #[arg(long, env = "GRAPH_CLIENT_IDS", default_value = "auto")]
    pub graph_client_ids: crate::write::ids::ClientIds,

    /// Most writes to Graph per tenant in any window, e.g. `200/20s`
    /// (Intune's limit), or `off`. Writes wait in order for a slot.
    #[arg(long, env = "GRAPH_WRITE_BUDGET", default_value = "200/20s")]
    pub write_budget: crate::write::budget::BudgetFlag,

    /// Where request-id records and the write budget live: `memory`, or
    /// `redis://HOST:PORT/DB` to share them between replicas.
    #[arg(
        long,
        env = "RUNSTATE_STATE_STORE",
        default_value = "memory",
        hide_env_values = true
    )]
    pub state_store: crate::state::StoreSpec,

    /// Where SubmitRunStates keeps accepted writes until they are delivered: the path of an
    /// embedded database file (created if missing). Without it SubmitRunStates answers
    /// FAILED_PRECONDITION, except with --emulator, which uses a file in a temporary directory.
    #[arg(long, env = "RUNSTATE_OUTBOX", value_name = "PATH")]
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
    /// (e.g. 7d, 12h; from 1s to 3650d).
    #[arg(long, env = "RUNSTATE_OPERATION_RETENTION", default_value = "7d",
        value_parser = crate::outbox::parse_retention)]
    pub operation_retention: Duration,

    /// Replicas sharing the state store: while Redis is unreachable each
    /// keeps 1/N of the write budget.
    #[arg(long, env = "RUNSTATE_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub replicas: u32,

    /// How the gateway gets Graph tokens. Without it, the caller's token is used
    /// if sent, else the static token, else the call fails with UNAUTHENTICATED.
    #[arg(long = "auth", env = "GRAPH_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// File holding the static Graph token; re-read when it changes (a mounted secret).
    #[arg(long, env = "GRAPH_TOKEN_FILE", conflicts_with = "graph_token")]
    pub graph_token_file: Option<PathBuf>,

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

    /// Use the gateway's own credential even when a caller sends `authorization` metadata.
    #[arg(long, env = "GRAPH_IGNORE_CALLER_TOKEN", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub ignore_caller_token: bool,

    /// National cloud: sets Graph's URL and the token authority unless
    /// --graph-url or --authority-host say otherwise.
    #[arg(long, env = "GRAPH_CLOUD", value_enum, default_value_t = Cloud::Global)]
    pub cloud: Cloud,

    /// Allow http:// Graph and authority URLs on hosts other than loopback
    /// (tokens then travel in clear text; for docker compose with the emulator).
    #[arg(long, env = "RUNSTATE_ALLOW_HTTP_UPSTREAM", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_http_upstream: bool,

    /// Allow a plaintext (no TLS) listener on an address other than loopback.
    #[arg(long, env = "RUNSTATE_ALLOW_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_plaintext: bool,

    /// Longest time one token request to the identity platform may take; a
    /// call waits for it at most until its own deadline.
    #[arg(long, env = "GRAPH_TOKEN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub token_timeout: Duration,

    /// Most users whose on-behalf-of tokens are cached (1-1000000).
    #[arg(long, env = "GRAPH_OBO_CACHE_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub obo_cache_size: u32,

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
}

/// Where Graph tokens come from (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Forward the caller's `authorization` metadata; calls without it fail.
    Passthrough,
    /// A fixed token from --graph-token or --graph-token-file.
    Static,
    /// App-only tokens with a client secret (AZURE_CLIENT_SECRET or AZURE_CLIENT_SECRET_FILE).
    ClientSecret,
    /// App-only tokens with a certificate-signed assertion (AZURE_CLIENT_CERTIFICATE_PATH).
    ClientCertificate,
    /// Kubernetes workload identity (AZURE_FEDERATED_TOKEN_FILE).
    WorkloadIdentity,
    /// Azure managed identity: App Service (IDENTITY_ENDPOINT) or IMDS.
    ManagedIdentity,
    /// Exchange the caller's user token for a delegated Graph token.
    OnBehalfOf,
}

/// A national cloud (`--cloud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    /// graph.microsoft.com, login.microsoftonline.com.
    Global,
    /// US Government L4: graph.microsoft.us, login.microsoftonline.us.
    Usgov,
    /// US Government L5 (DoD): dod-graph.microsoft.us, login.microsoftonline.us.
    UsgovDod,
    /// China (21Vianet): microsoftgraph.chinacloudapi.cn, login.chinacloudapi.cn.
    China,
}

impl Cloud {
    /// Graph's root URL (no version), which is also the token scope's resource.
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }
}

/// Options of the `emulator` command: the emulator's own, then logging.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    #[cfg(feature = "emulator")]
    #[command(flatten)]
    pub emulator: runstate_emulator::Args,

    /// Whatever follows `emulator` in a build without the emulator, which
    /// refuses to run it ([`Cli::check_features`]).
    #[cfg(not(feature = "emulator"))]
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub ignored: Vec<String>,

    /// Format of the log lines written to stderr: text for people, json (one object per
    /// line) for log collectors; RUST_LOG chooses what is logged.
    #[arg(long, env = "RUNSTATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A configuration the gateway refuses to start with. The process exits 2,
/// as for a flag clap refuses, printing this one-line message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Refusal {
    /// Wraps a refusal message as an error for startup to return.
    pub fn error(message: impl Into<String>) -> anyhow::Error {
        Refusal(message.into()).into()
    }
}

/// Why a build without the `emulator` feature refuses `--emulator` and the
/// `emulator` command.
pub const NO_EMULATOR: &str = "this runstate-gateway was built without the Graph emulator \
(cargo feature `emulator`, on by default): --emulator and the `emulator` command need a build \
with it, e.g. `cargo build --release`";

impl Cli {
    /// Refuses what this build leaves out: with the `emulator` feature off,
    /// `--emulator` and the `emulator` command are a usage error (exit 2)
    /// naming the feature.
    pub fn check_features(&self) -> Result<(), clap::Error> {
        let wants_emulator = match &self.command {
            Some(Command::Emulator(_)) => true,
            Some(Command::Serve(args)) => args.emulator,
            Some(Command::Healthcheck(_)) => false,
            None => self.serve.emulator,
        };
        if wants_emulator && !cfg!(feature = "emulator") {
            use clap::CommandFactory;
            return Err(Cli::command().error(clap::error::ErrorKind::InvalidValue, NO_EMULATOR));
        }
        Ok(())
    }
}

/// Format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A value that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the token is empty".into());
        }
        Ok(Secret(s.to_owned()))
    }
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

/// Parses `30s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    if d > Duration::from_secs(24 * 3600) {
        return Err("the duration must be at most 24h".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback() {
        let a = ServeArgs::from_args(Vec::<String>::new()).unwrap();
        assert!(a.listen.ip().is_loopback());
        assert_eq!(a.listen.port(), 50051);
        assert_eq!(a.graph_url, "https://graph.microsoft.com/beta");
    }

    #[test]
    fn secrets_are_redacted() {
        let a = ServeArgs::from_args(["--graph-token", "s3cr3t"]).unwrap();
        assert_eq!(a.graph_token.as_ref().map(Secret::expose), Some("s3cr3t"));
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in [
            "",
            "s",
            "0s",
            "1d",
            "-1s",
            "1.5s",
            "25h",
            "99999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_limits_have_defaults_and_ranges() {
        let a = ServeArgs::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(a.max_streams_per_connection, 100);
        assert_eq!(a.max_connections, 1024);
        assert_eq!(a.request_read_timeout, Duration::from_secs(5));
        assert_eq!(a.handshake_timeout, Duration::from_secs(5));
        assert_eq!(a.shutdown_grace, Duration::from_secs(10));
        assert_eq!(a.connection_send_budget, 4 << 20);
        assert!(a.admin_listen.is_none());
        assert_eq!(a.max_streaming_calls, 1024);
        assert_eq!(a.stream_idle_timeout, Duration::from_secs(30));
        assert_eq!(a.idle_connection_timeout, Duration::from_secs(120));
        assert_eq!(a.admin_max_connections, 64);
        assert_eq!(a.admin_header_read_timeout, Duration::from_secs(5));
        assert_eq!(a.admin_idle_timeout, Duration::from_secs(30));
        for bad in [
            ["--max-streaming-calls", "0"],
            ["--stream-idle-timeout", "0s"],
            ["--idle-connection-timeout", "0s"],
            ["--admin-max-connections", "0"],
            ["--admin-max-connections", "10001"],
            ["--admin-header-read-timeout", "0s"],
            ["--admin-idle-timeout", "25h"],
            ["--max-streams-per-connection", "0"],
            ["--max-streams-per-connection", "10001"],
            ["--max-connections", "0"],
            ["--connection-send-budget", "1024"],
            ["--request-read-timeout", "0s"],
            ["--handshake-timeout", "0s"],
            ["--shutdown-grace", "0s"],
            ["--admin-listen", "not-an-address"],
        ] {
            assert!(ServeArgs::from_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        for flag in [
            "--max-concurrent-requests",
            "--max-request-bytes",
            "--graph-connections",
        ] {
            let err = ServeArgs::from_args([flag, "0"]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag}"
            );
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn ranges_are_checked() {
        let ok = ServeArgs::from_args([
            "--graph-connections",
            "64",
            "--max-request-bytes",
            "67108864",
            "--max-concurrent-requests",
            "1000000",
            "--graph-max-retries",
            "0",
        ])
        .unwrap();
        assert_eq!(ok.graph_connections, 64);
        assert_eq!(ok.max_request_bytes, 64 << 20);
        assert_eq!(ok.max_concurrent_requests, 1_000_000);
        assert_eq!(ok.graph_max_retries, 0);
        for (flag, bad) in [
            ("--graph-connections", "65"),
            ("--max-request-bytes", "67108865"),
            ("--max-concurrent-requests", "1000001"),
            ("--graph-max-retries", "11"),
            ("--max-request-bytes", "-1"),
            ("--request-timeout", "0s"),
        ] {
            assert!(ServeArgs::from_args([flag, bad]).is_err(), "{flag} {bad}");
        }
    }

    /// Every option of every command has an env twin and a help sentence.
    #[test]
    fn every_flag_has_an_env_twin_and_help() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut commands = vec![&cli];
        commands.extend(cli.get_subcommands());
        let mut checked = 0;
        for command in commands {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                assert!(
                    arg.get_env().is_some(),
                    "{} --{id} has no env twin",
                    command.get_name()
                );
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    help.split_whitespace().count() >= 5
                        && help.starts_with(|c: char| c.is_ascii_uppercase()),
                    "{} --{id}: help is not a sentence: {help:?}",
                    command.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} flags seen");
    }

    #[test]
    fn help_mentions_rust_log() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("RUST_LOG"), "{help}");
        assert!(help.contains("RUNSTATE_EMULATOR"), "{help}");
    }

    #[test]
    fn healthcheck_parses() {
        let cli = Cli::try_parse_from([
            "runstate-gateway",
            "healthcheck",
            "--addr",
            "127.0.0.1:9",
            "--service",
            "intune.runstates.v1.RunStateService",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Healthcheck(a)) if a.addr.as_deref() == Some("127.0.0.1:9")
                && a.service == "intune.runstates.v1.RunStateService"
        ));
    }

    #[test]
    fn bulk_and_page_token_flags_parse_and_are_bounded() {
        let a = ServeArgs::from_args(Vec::<String>::new()).unwrap();
        assert_eq!((a.stream_max_in_flight, a.batch_concurrency), (64, 4));
        assert!(a.page_token_key.is_none());
        let a = ServeArgs::from_args([
            "--stream-max-in-flight",
            "8",
            "--batch-concurrency",
            "2",
            "--page-token-key",
            "k3y-s3cr3t",
        ])
        .unwrap();
        assert_eq!((a.stream_max_in_flight, a.batch_concurrency), (8, 2));
        assert!(!format!("{a:?}").contains("k3y-s3cr3t"));
        for bad in [
            ["--stream-max-in-flight", "0"],
            ["--batch-concurrency", "65"],
        ] {
            assert!(ServeArgs::from_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emulator_options_need_the_emulator_feature() {
        let uses: [&[&str]; 3] = [
            &["runstate-gateway", "--emulator"],
            &["runstate-gateway", "serve", "--emulator"],
            &["runstate-gateway", "emulator", "--listen", "127.0.0.1:9"],
        ];
        for argv in uses {
            let checked = Cli::try_parse_from(argv).unwrap().check_features();
            if cfg!(feature = "emulator") {
                assert!(checked.is_ok(), "{argv:?}");
            } else {
                let e = checked.unwrap_err();
                assert_eq!(e.exit_code(), 2, "{argv:?}");
                assert!(e.to_string().contains("feature `emulator`"), "{e}");
            }
        }
        for argv in [
            &["runstate-gateway"][..],
            &["runstate-gateway", "healthcheck"],
        ] {
            assert!(Cli::try_parse_from(argv).unwrap().check_features().is_ok());
        }
    }

    #[cfg(feature = "emulator")]
    #[test]
    fn subcommands_parse() {
        use runstate_emulator::ClientIds;
        let cli = Cli::try_parse_from(["runstate-gateway", "--emulator"]).unwrap();
        assert!(cli.command.is_none() && cli.serve.emulator);
        let cli = Cli::try_parse_from(["runstate-gateway", "emulator", "--listen", "127.0.0.1:9"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::Emulator(a)) if a.emulator.listen.port() == 9));
        let cli = Cli::try_parse_from([
            "runstate-gateway",
            "emulator",
            "--client-ids",
            "honour",
            "--write-limit",
            "50/5s",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Emulator(a))
            if a.emulator.client_ids == ClientIds::Honour
                && a.emulator.write_limit == Some((50, Duration::from_secs(5)))));
        let cli = Cli::try_parse_from(["runstate-gateway", "emulator"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Emulator(a))
            if a.emulator.client_ids == ClientIds::Ignore && a.emulator.write_limit.is_none()));
        for bad in [
            ["--client-ids", "maybe"],
            ["--write-limit", "0/5s"],
            ["--write-limit", "50"],
        ] {
            let mut argv = vec!["runstate-gateway", "emulator"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let cli =
            Cli::try_parse_from(["runstate-gateway", "serve", "--listen", "127.0.0.1:7"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(a)) if a.listen.port() == 7));
    }
}
