//! The bare HTTP client on the Graph hot path: hyper-util's pooled client
//! over rustls, without redirect, retry or URL-parsing layers (the retry
//! policy lives in `client.rs`; Graph never redirects these calls).

use crate::config::Refusal;
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_pki_types::CertificateDer;

/// A request body: the JSON bytes, never copied.
pub type Body = Full<Bytes>;

/// One connection pool.
pub type Pool = Client<HttpsConnector<HttpConnector>, Body>;

/// How long a TCP connect (and TLS handshake) may take; such a failure is
/// never sent, so it is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings of every Graph connection and token request: the Mozilla roots compiled
/// into the binary (no file system read at startup) plus `extra_roots`
/// (`--graph-ca-file`: a private CA or a TLS-inspecting proxy).
pub fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, Refusal> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pool speaking HTTP/1.1 or HTTP/2 (ALPN) over TLS, HTTP/1.1 over plain
/// http, or HTTP/2 with prior knowledge everywhere when `h2c`.
pub fn pool(tls: rustls::ClientConfig, h2c: bool) -> Pool {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(h2c);
    builder.build(connector)
}
