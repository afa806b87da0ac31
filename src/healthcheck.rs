//! `runstate-gateway healthcheck`: asks a running gateway's `grpc.health.v1`
//! service whether it serves (or, with `--http`, whether a URL such as the
//! emulator's `/_emulator/health` answers 2xx), for container `HEALTHCHECK`s
//! in images without a shell or curl. Exit code 0 when healthy, 1 otherwise,
//! with one line on stdout saying why.

use std::{error::Error as _, path::PathBuf, time::Duration};

use clap::Args;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::config::{Refusal, parse_duration};

/// The gateway's default listen address, checked when nothing else is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// Options of `healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Address of the gateway to check, as HOST:PORT. When unset, the gateway's own
    /// RUNSTATE_LISTEN is used (an unspecified address such as 0.0.0.0 is reached on
    /// loopback), else 127.0.0.1:50051.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_ADDR", value_name = "HOST:PORT")]
    pub addr: Option<String>,

    /// Service whose status is asked for, such as intune.runstates.v1.RunStateService;
    /// when empty, the status of the gateway as a whole is asked for.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_SERVICE", default_value = "")]
    pub service: String,

    /// Check this http:// or https:// URL instead of the gRPC health service: healthy
    /// when it answers with a 2xx status (e.g. http://127.0.0.1:8080/_emulator/health
    /// for the emulator). --addr, --service and the TLS options are then ignored.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_HTTP", value_name = "URL")]
    pub http: Option<String>,

    /// Time allowed for connecting and getting the answer, such as 2s or 500ms.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// PEM file of the CA certificate that signed the gateway's certificate; setting it
    /// makes the check connect with TLS.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to a gateway that requires mutual TLS; needs
    /// --tls-key and --tls-ca.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_TLS_KEY", value_name = "FILE", requires_all = ["tls_cert"])]
    pub tls_key: Option<PathBuf>,

    /// Name the gateway's certificate must carry, when it differs from the host in
    /// --addr (e.g. the certificate names gateway.example but --addr is 127.0.0.1:50051).
    #[arg(long, env = "RUNSTATE_HEALTHCHECK_TLS_SERVER_NAME", value_name = "NAME", requires_all = ["tls_ca"])]
    pub tls_server_name: Option<String>,
}

/// The verdict and the line that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub healthy: bool,
    pub line: String,
}

impl Outcome {
    fn healthy(line: String) -> Self {
        Self {
            healthy: true,
            line,
        }
    }

    fn unhealthy(line: String) -> Self {
        Self {
            healthy: false,
            line,
        }
    }

    /// The process exit code: 0 when healthy, else 1.
    pub fn exit_code(&self) -> i32 {
        if self.healthy { 0 } else { 1 }
    }
}

/// Runs the check, prints its line and returns the exit code.
pub async fn run(args: &HealthcheckArgs) -> i32 {
    let outcome = check(args).await;
    println!("{}", outcome.line);
    outcome.exit_code()
}

/// Runs the check described by `args`.
pub async fn check(args: &HealthcheckArgs) -> Outcome {
    if let Some(url) = &args.http {
        return check_http(url, args.timeout).await;
    }
    let listen = std::env::var("RUNSTATE_LISTEN").ok();
    let addr = target(args.addr.as_deref(), listen.as_deref());
    // One deadline over connecting, the TLS handshake and the answer.
    match tokio::time::timeout(args.timeout, check_grpc(&addr, args)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::unhealthy(format!(
            "unhealthy: no answer from {addr} within {:?}",
            args.timeout
        )),
    }
}

/// The address to check: `--addr`, else the gateway's listen address
/// (unspecified IPs become loopback), else the default.
pub fn target(addr: Option<&str>, listen: Option<&str>) -> String {
    if let Some(addr) = addr.map(str::trim).filter(|a| !a.is_empty()) {
        return addr.to_owned();
    }
    match listen.and_then(|l| l.trim().parse::<std::net::SocketAddr>().ok()) {
        Some(mut listen) => {
            if listen.ip().is_unspecified() {
                listen.set_ip(match listen {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            listen.to_string()
        }
        None => DEFAULT_ADDR.to_owned(),
    }
}

async fn check_grpc(addr: &str, args: &HealthcheckArgs) -> Outcome {
    let channel = match connect(addr, args).await {
        Ok(channel) => channel,
        Err(why) => return Outcome::unhealthy(format!("unhealthy: {why}")),
    };
    let what = if args.service.is_empty() {
        "the gateway".to_owned()
    } else {
        format!("service {:?}", args.service)
    };
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(answer) => match answer.into_inner().status() {
            ServingStatus::Serving => Outcome::healthy(format!("SERVING: {what} at {addr}")),
            other => Outcome::unhealthy(format!(
                "unhealthy: {addr} reports {what} as {}",
                other.as_str_name()
            )),
        },
        Err(status) if status.code() == Code::NotFound => Outcome::unhealthy(format!(
            "unhealthy: {addr} does not know {what} (NOT_FOUND)"
        )),
        Err(status) => Outcome::unhealthy(format!(
            "unhealthy: the health check of {addr} failed: {:?}: {}{}",
            status.code(),
            one_line(status.message()),
            status
                .source()
                .map(|s| format!(" ({})", chain(s)))
                .unwrap_or_default()
        )),
    }
}

async fn connect(addr: &str, args: &HealthcheckArgs) -> Result<Channel, Refusal> {
    let tls = args.tls_ca.is_some();
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|_| format!("{addr:?} is not a HOST:PORT address"))?;
    if tls {
        endpoint = endpoint
            .tls_config(tls_config(args)?)
            .map_err(|e| format!("TLS options: {}", chain(&e)))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| Refusal(format!("cannot connect to {addr}: {}", chain(&e))))
}

fn tls_config(args: &HealthcheckArgs) -> Result<ClientTlsConfig, Refusal> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &args.tls_ca {
        config = config.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
    }
    if let Some(name) = &args.tls_server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

async fn check_http(url: &str, timeout: Duration) -> Outcome {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Outcome::unhealthy(format!(
            "unhealthy: --http {url:?} is not an http:// or https:// URL"
        ));
    }
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => return Outcome::unhealthy(format!("unhealthy: {}", chain(&e))),
    };
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => {
            Outcome::healthy(format!("OK: {url} answered {}", response.status()))
        }
        Ok(response) => {
            Outcome::unhealthy(format!("unhealthy: {url} answered {}", response.status()))
        }
        Err(e) if e.is_timeout() => Outcome::unhealthy(format!(
            "unhealthy: no answer from {url} within {timeout:?}"
        )),
        Err(e) => Outcome::unhealthy(format!("unhealthy: cannot reach {url}: {}", chain(&e))),
    }
}

/// An error and its sources on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    one_line(&text)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        args: HealthcheckArgs,
    }

    fn parse(args: &[&str]) -> Result<HealthcheckArgs, clap::Error> {
        Only::try_parse_from(std::iter::once("healthcheck").chain(args.iter().copied()))
            .map(|o| o.args)
    }

    #[test]
    fn target_prefers_addr_then_listen_then_default() {
        assert_eq!(target(Some("gw:1"), Some("127.0.0.1:2")), "gw:1");
        assert_eq!(target(None, Some("127.0.0.1:2")), "127.0.0.1:2");
        assert_eq!(target(None, Some("0.0.0.0:50051")), "127.0.0.1:50051");
        assert_eq!(target(None, Some("[::]:7")), "[::1]:7");
        assert_eq!(target(Some(" "), Some("not an address")), DEFAULT_ADDR);
        assert_eq!(target(None, None), DEFAULT_ADDR);
    }

    #[test]
    fn defaults_are_short_and_overall() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert_eq!(a.service, "");
        assert!(a.addr.is_none() && a.http.is_none() && a.tls_ca.is_none());
    }

    #[test]
    fn tls_options_need_their_partners() {
        assert!(parse(&["--tls-cert", "c.pem", "--tls-ca", "ca.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        assert!(parse(&["--tls-server-name", "gw"]).is_err());
        assert!(parse(&["--timeout", "0s"]).is_err());
        let a = parse(&[
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-server-name",
            "gw",
        ])
        .unwrap();
        assert_eq!(a.tls_server_name.as_deref(), Some("gw"));
    }

    #[test]
    fn lines_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\n  c"), "a b c");
    }

    #[tokio::test]
    async fn an_unreadable_ca_is_unhealthy_and_named() {
        let a = parse(&[
            "--addr",
            "127.0.0.1:1",
            "--tls-ca",
            "/nonexistent/ca.pem",
            "--timeout",
            "5s",
        ])
        .unwrap();
        let o = check(&a).await;
        assert!(!o.healthy);
        assert!(
            o.line.contains("--tls-ca /nonexistent/ca.pem"),
            "{}",
            o.line
        );
    }

    #[tokio::test]
    async fn a_non_http_url_is_refused() {
        let a = parse(&["--http", "ftp://127.0.0.1/"]).unwrap();
        let o = check(&a).await;
        assert_eq!(o.exit_code(), 1);
        assert!(o.line.contains("not an http"), "{}", o.line);
    }
}
