//! Inbound TLS: a rustls acceptor built from `--tls-cert` / `--tls-key`
//! (reloaded when the files change), optional mutual TLS (`--tls-client-ca`)
//! with an `--allow-client` list of subject CNs or SANs (anyone else is
//! refused at the handshake), and the guard against a plaintext listener
//! on a non-loopback address.
//!
//! Use: [`TlsSource::from_args`] at build time, then
//! [`TlsSource::handshake`] is the server's per-connection handshake.

use crate::config::Refusal;
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerArgs;
use crate::server::{BoxIo, Handshake};

/// How often the certificate files are looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Refuses a plaintext listener on an address other than loopback unless
/// `--allow-plaintext` is given.
/// The CA certificates of a PEM file (`--graph-ca-file`); a file that cannot
/// be read or holds no certificate is an error naming it.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Refusal> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("--graph-ca-file {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--graph-ca-file {shown}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "--graph-ca-file {shown}: no certificate (expected PEM blocks \"BEGIN CERTIFICATE\")"
        )
        .into());
    }
    Ok(certs)
}

pub fn check_plaintext(args: &ListenerArgs) -> Result<(), Refusal> {
    if args.tls_cert.is_some() || args.listen.ip().is_loopback() || args.allow_plaintext {
        return Ok(());
    }
    Err(format!(
        "refusing to serve plaintext gRPC on {}, which is not a loopback address: serve TLS with --tls-cert and --tls-key (and --tls-client-ca for mutual TLS), or pass --allow-plaintext (RUNSTATE_ALLOW_PLAINTEXT) when something else protects the port",
        args.listen
    ).into())
}

/// The files a TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// Subject CNs or SANs allowed to call (empty: any client the CA signed).
    pub allow: Vec<String>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Builds the rustls configuration (HTTP/2 only).
    pub fn build(&self) -> Result<ServerConfig, Refusal> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("--tls-cert {}: no certificate", self.cert.display()).into());
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("--tls-key {}: {e}", self.key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?
                {
                    let cert =
                        cert.map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                }
                let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                let verifier: Arc<dyn ClientCertVerifier> = if self.allow.is_empty() {
                    webpki
                } else {
                    Arc::new(AllowList {
                        inner: webpki,
                        allowed: self
                            .allow
                            .iter()
                            .map(|a| a.trim().to_ascii_lowercase())
                            .collect(),
                    })
                };
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The current TLS configuration, swapped when the files change.
#[derive(Clone)]
pub struct TlsSource {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsSource {
    /// From `--tls-cert`, `--tls-key`, `--tls-client-ca` and `--allow-client`;
    /// `None` without `--tls-cert`.
    pub fn from_args(args: &ListenerArgs) -> Result<Option<Self>, Refusal> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            if args.tls_cert.is_some() || args.tls_key.is_some() || args.tls_client_ca.is_some() {
                return Err("TLS needs both --tls-cert and --tls-key".into());
            }
            return Ok(None);
        };
        if !args.allow_client.is_empty() && args.tls_client_ca.is_none() {
            return Err("--allow-client needs --tls-client-ca (mutual TLS)".into());
        }
        Self::new(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            allow: args.allow_client.clone(),
        })
        .map(Some)
    }

    pub fn new(files: TlsFiles) -> Result<Self, Refusal> {
        let config = files.build()?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Watches the files and swaps the configuration when they change (a
    /// broken new set is logged and the old one kept). Stops when `self`'s
    /// last clone is dropped.
    pub fn spawn_reloader(&self) {
        let weak = Arc::downgrade(&self.current);
        let files = self.files.clone();
        tokio::spawn(async move {
            let mut stamps = files.stamps();
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                let now = files.stamps();
                if now == stamps {
                    continue;
                }
                match files.build() {
                    Ok(config) => {
                        *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                        stamps = now;
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reload the TLS certificate; keeping the previous one")
                    }
                }
            }
        });
    }
}

impl TlsSource {
    /// The server's per-connection handshake (see [`crate::server::Handshake`],
    /// which bounds it in time), and starts watching the files.
    pub fn handshake(&self) -> Handshake {
        self.spawn_reloader();
        let source = self.clone();
        Arc::new(move |tcp: TcpStream| {
            let acceptor = source.acceptor();
            Box::pin(async move {
                let _ = tcp.set_nodelay(true);
                let stream = acceptor.accept(tcp).await?;
                Ok(Box::new(stream) as BoxIo)
            })
        })
    }
}

/// A client verifier that also requires one of the allowed names.
#[derive(Debug)]
struct AllowList {
    inner: Arc<dyn ClientCertVerifier>,
    /// Lower case.
    allowed: Vec<String>,
}

/// The subject CNs and SANs (DNS, email, URI, IP) of a certificate.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push((*s).to_owned())
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    names
}

impl ClientCertVerifier for AllowList {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = certificate_names(end_entity);
        if names
            .iter()
            .any(|n| self.allowed.contains(&n.to_ascii_lowercase()))
        {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::info!(?names, "client certificate not in --allow-client");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
