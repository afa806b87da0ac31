//! The command line, with environment fallbacks. Read once at startup.

use std::{fmt, str::FromStr};

use clap::{Args, Parser, Subcommand, ValueEnum};

mod duration;
mod serve;

pub use duration::{MAX_RETENTION, parse_duration, parse_up_to};
pub use serve::*;

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

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal(message)
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Self {
        Refusal(message.to_owned())
    }
}

impl Refusal {
    /// Wraps a refusal message as an error for startup to return.
    pub fn error(message: impl fmt::Display) -> anyhow::Error {
        Refusal(message.to_string()).into()
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
            Some(Command::Serve(args)) => args.graph.emulator,
            Some(Command::Healthcheck(_)) => false,
            None => self.serve.graph.emulator,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_bind_loopback() {
        let a = ServeArgs::from_args(Vec::<String>::new()).unwrap();
        assert!(a.listener.listen.ip().is_loopback());
        assert_eq!(a.listener.listen.port(), 50051);
        assert_eq!(a.graph.graph_url, "https://graph.microsoft.com/beta");
    }

    #[test]
    fn secrets_are_redacted() {
        let a = ServeArgs::from_args(["--graph-token", "s3cr3t"]).unwrap();
        assert_eq!(
            a.auth.graph_token.as_ref().map(Secret::expose),
            Some("s3cr3t")
        );
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "",
            "s",
            "0s",
            "2d",
            "1w",
            "-1s",
            "1.5s",
            "25h",
            "99999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_state_store_outage_defaults_to_serving_locally() {
        use crate::state::StoreOutage;
        let a = ServeArgs::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(a.state.state_store_outage, StoreOutage::ServeLocal);
        let a = ServeArgs::from_args(["--state-store-outage", "refuse"]).unwrap();
        assert_eq!(a.state.state_store_outage, StoreOutage::Refuse);
        let a = ServeArgs::from_args(["--state-store-outage", "serve-local"]).unwrap();
        assert_eq!(a.state.state_store_outage, StoreOutage::ServeLocal);
        assert!(ServeArgs::from_args(["--state-store-outage", "never"]).is_err());
    }

    #[test]
    fn server_limits_have_defaults_and_ranges() {
        let a = ServeArgs::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(a.limits.max_streams_per_connection, 100);
        assert_eq!(a.limits.max_connections, 1024);
        assert_eq!(a.limits.request_read_timeout, Duration::from_secs(5));
        assert_eq!(a.limits.handshake_timeout, Duration::from_secs(5));
        assert_eq!(a.calls.shutdown_grace, Duration::from_secs(10));
        assert_eq!(a.limits.connection_send_budget, 4 << 20);
        assert!(a.admin.admin_listen.is_none());
        assert_eq!(a.limits.max_streaming_calls, 1024);
        assert_eq!(a.limits.stream_idle_timeout, Duration::from_secs(30));
        assert_eq!(a.limits.idle_connection_timeout, Duration::from_secs(120));
        assert_eq!(a.admin.admin_max_connections, 64);
        assert_eq!(a.admin.admin_header_read_timeout, Duration::from_secs(5));
        assert_eq!(a.admin.admin_idle_timeout, Duration::from_secs(30));
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
        assert_eq!(ok.graph.graph_connections, 64);
        assert_eq!(ok.limits.max_request_bytes, 64 << 20);
        assert_eq!(ok.limits.max_concurrent_requests, 1_000_000);
        assert_eq!(ok.graph.graph_max_retries, 0);
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
        assert_eq!(
            (a.calls.stream_max_in_flight, a.calls.batch_concurrency),
            (64, 4)
        );
        assert!(a.calls.page_token_key.is_none());
        let a = ServeArgs::from_args([
            "--stream-max-in-flight",
            "8",
            "--batch-concurrency",
            "2",
            "--page-token-key",
            "k3y-s3cr3t",
        ])
        .unwrap();
        assert_eq!(
            (a.calls.stream_max_in_flight, a.calls.batch_concurrency),
            (8, 2)
        );
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
        assert!(cli.command.is_none() && cli.serve.graph.emulator);
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
        assert!(matches!(cli.command, Some(Command::Serve(a)) if a.listener.listen.port() == 7));
    }
}
