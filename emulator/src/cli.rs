//! Running the emulator alone: its command-line options and [`serve`].

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{ClientIds, Emulator, parse_write_limit};

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

    /// Answer 429 beyond N writes (POST/PATCH/DELETE) per sliding window, such as
    /// 50/5s; there is no limit when unset.
    #[arg(long, env = "EMULATOR_WRITE_LIMIT", value_parser = parse_write_limit)]
    pub write_limit: Option<(u32, Duration)>,

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
    emulator.set_write_limit(args.write_limit);
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
