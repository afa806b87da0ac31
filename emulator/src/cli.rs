//! Running the emulator alone: its command-line options and [`serve`].

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{ClientIds, Emulator, Limits, RetryAfter, parse_write_limit};

/// Options of the standalone emulator.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address the emulator listens on; the gateway's Graph URL is then http://ADDR/beta.
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// What the emulator does with an `id` in a POST body: store it (a repeat is 409),
    /// ignore it (assign a GUID) or reject the create (400).
    #[arg(long, env = "EMULATOR_CLIENT_IDS", value_enum, default_value_t = ClientIds::Ignore)]
    pub client_ids: ClientIds,

    /// Answer 429 beyond N writes (POST/PATCH/PUT/DELETE) per sliding window from
    /// one app, such as 50/5s; given bare, Intune's 200/20s. Apps are told apart by
    /// the token's app id (`appid` or `azp` claim, or the client a token issued here
    /// went to); tokens that name none count as one app. No limit when unset.
    /// `$batch` items count one by one: those over a limit get their own 429, with
    /// their own Retry-After, inside the batch's 200 answer.
    #[arg(long, env = "EMULATOR_WRITE_LIMIT", value_name = "N/WINDOW", value_parser = parse_write_limit,
          num_args = 0..=1, default_missing_value = "200/20s")]
    pub write_limit: Option<(u32, Duration)>,

    /// Answer 429 beyond N writes per sliding window from all apps together (the
    /// tenant-wide limit); given bare, Intune's 400/20s. No limit when unset.
    #[arg(long, env = "EMULATOR_TENANT_WRITE_LIMIT", value_name = "N/WINDOW", value_parser = parse_write_limit,
          num_args = 0..=1, default_missing_value = "400/20s")]
    pub tenant_write_limit: Option<(u32, Duration)>,

    /// Answer 429 beyond N requests of any kind (reads and writes) per sliding
    /// window from one app; given bare, Intune's 2000/20s. No limit when unset.
    #[arg(long, env = "EMULATOR_READ_LIMIT", value_name = "N/WINDOW", value_parser = parse_write_limit,
          num_args = 0..=1, default_missing_value = "2000/20s")]
    pub read_limit: Option<(u32, Duration)>,

    /// Answer 429 beyond N requests of any kind per sliding window from all apps
    /// together; given bare, Intune's 4000/20s. No limit when unset.
    #[arg(long, env = "EMULATOR_TENANT_READ_LIMIT", value_name = "N/WINDOW", value_parser = parse_write_limit,
          num_args = 0..=1, default_missing_value = "4000/20s")]
    pub tenant_read_limit: Option<(u32, Duration)>,

    /// The Retry-After of the limits' 429s: seconds (whole, rounded up), decimal
    /// (one decimal, rounded up, e.g. 1.5), zero (always 0) or none (no header, as
    /// Intune often does). A fault (POST /_emulator/faults) sets its own
    /// "retry_after", or none.
    #[arg(long, env = "EMULATOR_RETRY_AFTER", value_enum, default_value_t = RetryAfter::Seconds)]
    pub retry_after: RetryAfter,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with a certificate for localhost,
    /// 127.0.0.1 and ::1 signed by a CA made at startup, and write that CA (PEM) to
    /// this file before listening: give it to the gateway as --graph-ca-file.
    #[arg(long, env = "EMULATOR_TLS_CA_OUT", value_name = "PATH")]
    pub tls_ca_out: Option<PathBuf>,
}

/// Serves an emulator set up by `args` until `shutdown` completes.
pub async fn serve(args: &Args, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let emulator = Emulator::new();
    emulator.set_client_ids(args.client_ids);
    emulator.set_limits(Limits {
        app_writes: args.write_limit,
        tenant_writes: args.tenant_write_limit,
        app_requests: args.read_limit,
        tenant_requests: args.tenant_read_limit,
    });
    emulator.set_retry_after(args.retry_after);
    let running = match &args.tls_ca_out {
        Some(ca_out) => emulator.spawn_tls(args.listen, ca_out).await,
        None => emulator.spawn(args.listen).await,
    }
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve the emulator on {}: {e}", args.listen),
        )
    })?;
    tracing::info!(url = %running.base_url(), "Graph emulator listening");
    shutdown.await;
    running.stop().await;
    Ok(())
}
