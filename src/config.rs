//! The command line, with environment fallbacks. Read once at startup.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// gRPC gateway that records Intune script run states in Microsoft Graph (beta).
#[derive(Debug, Parser)]
#[command(
    name = "runstate-gateway",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, which runs when no command is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run the Graph emulator alone.
    Emulator(EmulatorArgs),
}

/// Options of the gateway.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "RUNSTATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Graph base URL (with the API version).
    #[arg(
        long,
        env = "GRAPH_URL",
        default_value = "https://graph.microsoft.com/beta"
    )]
    pub graph_url: String,

    /// Static Graph token, used when a caller sends no `authorization` metadata.
    #[arg(long, env = "GRAPH_TOKEN", hide_env_values = true)]
    pub graph_token: Option<Secret>,

    /// Also start the embedded Graph emulator on a loopback port and use it as Graph.
    #[arg(long)]
    pub emulator: bool,

    /// Speak HTTP/2 without TLS to an http:// Graph URL (on with --emulator).
    #[arg(long, env = "GRAPH_H2C")]
    pub graph_h2c: bool,

    /// Independent upstream connection pools used in turn (1-64); with HTTP/2,
    /// each connection carries up to the server's stream limit.
    #[arg(long, env = "GRAPH_CONNECTIONS", default_value_t = 8)]
    pub graph_connections: usize,

    /// Deadline for calls that send no `grpc-timeout` (e.g. 30s, 500ms).
    #[arg(long, env = "RUNSTATE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Retries of a throttled or unavailable Graph call, within the deadline.
    #[arg(long, env = "GRAPH_MAX_RETRIES", default_value_t = 3)]
    pub graph_max_retries: u32,

    /// Largest accepted gRPC request message, in bytes.
    #[arg(long, env = "RUNSTATE_MAX_REQUEST_BYTES", default_value_t = 256 * 1024)]
    pub max_request_bytes: usize,

    /// Most RPCs in flight at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "RUNSTATE_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Log format.
    #[arg(long, env = "RUNSTATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

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

    /// `$batch` requests of one Batch RPC in flight at once (1-64).
    #[arg(long, env = "RUNSTATE_BATCH_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch_concurrency: u32,
}

/// Options of the standalone emulator.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Address the emulator listens on; Graph's base URL is then `http://ADDR/beta`.
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// What to do with an `id` in a POST body: store it (a repeat is 409),
    /// ignore it (assign a GUID) or reject the create (400).
    #[arg(long, env = "EMULATOR_CLIENT_IDS", value_enum, default_value_t = crate::emulator::ClientIds::Ignore)]
    pub client_ids: crate::emulator::ClientIds,

    /// Answer 429 beyond N writes (POST/PATCH/DELETE) per window, e.g. `50/5s`
    /// (sliding); none when unset.
    #[arg(long, env = "EMULATOR_WRITE_LIMIT", value_parser = crate::emulator::parse_write_limit)]
    pub write_limit: Option<(u32, Duration)>,

    /// Log format.
    #[arg(long, env = "RUNSTATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
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
    fn subcommands_parse() {
        let cli = Cli::try_parse_from(["runstate-gateway", "--emulator"]).unwrap();
        assert!(cli.command.is_none() && cli.serve.emulator);
        let cli = Cli::try_parse_from(["runstate-gateway", "emulator", "--listen", "127.0.0.1:9"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::Emulator(a)) if a.listen.port() == 9));
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
            if a.client_ids == crate::emulator::ClientIds::Honour
                && a.write_limit == Some((50, Duration::from_secs(5)))));
        let cli = Cli::try_parse_from(["runstate-gateway", "emulator"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Emulator(a))
            if a.client_ids == crate::emulator::ClientIds::Ignore && a.write_limit.is_none()));
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
