//! The embedded Graph emulator (cargo feature `emulator`): started for
//! `--emulator` and told about the gateway's own credential.

use crate::config::Refusal;
use std::net::SocketAddr;

use anyhow::Context;
use runstate_emulator::{Emulator, RunningEmulator};
use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::Upstream;
use crate::auth::{Settings, entra};
use crate::config::{Secret, ServeArgs};

/// The token the gateway sends to its embedded emulator when given none.
const EMULATOR_TOKEN: &str = "emulator-token";

/// With `--emulator`, starts an emulator on a free loopback port and points
/// `upstream` at it: h2c, a token unless one is configured, and its identity
/// endpoints.
pub(super) async fn embed(
    args: &ServeArgs,
    upstream: Upstream,
) -> anyhow::Result<(Upstream, Option<RunningEmulator>)> {
    if !args.graph.emulator {
        return Ok((upstream, None));
    }
    let running = Emulator::new()
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the embedded Graph emulator")?;
    tracing::info!(url = %running.base_url(), "embedded Graph emulator started");
    let token = match args.auth.graph_token_file {
        Some(_) => upstream.token,
        None => upstream.token.or_else(|| Some(Secret::new(EMULATOR_TOKEN))),
    };
    let embedded = Upstream {
        url: running.base_url(),
        token,
        h2c: true,
        identity: Some(format!("http://{}", running.addr())),
    };
    Ok((embedded, Some(running)))
}

/// Tells the emulator about the gateway's own credential, after which it
/// accepts only the Graph tokens it issued.
pub(super) fn register(running: &RunningEmulator, s: &Settings) -> Result<(), Refusal> {
    if !s.own_credential() {
        return Ok(());
    }
    let e = running.emulator();
    let client_id = s.client_id.clone().unwrap_or_default();
    if let Some(secret) = &s.client_secret {
        e.add_client_secret(&client_id, secret.expose());
    }
    if let Some(path) = &s.client_secret_file {
        let secret =
            entra::read_trimmed(path, "AZURE_CLIENT_SECRET_FILE").map_err(|e| e.to_string())?;
        e.add_client_secret(&client_id, &secret);
    }
    if let Some(path) = &s.certificate_path {
        let bytes = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
        if let Some(Ok(der)) = CertificateDer::pem_slice_iter(&bytes).next() {
            e.add_client_certificate(&client_id, &der);
        }
    }
    if s.federated_token_file.is_some() {
        e.allow_federated(&client_id);
    }
    if let Some(header) = &s.identity_header {
        e.set_identity_header(header.expose());
    }
    e.require_issued_tokens(true);
    Ok(())
}
