//! Where the gateway's Graph tokens come from (`--auth`): the caller's own
//! token, a static one (flag or rotating file), or a credential of its own
//! (client secret, certificate, workload identity, managed identity,
//! on-behalf-of), with our [`cache`] in front.
//!
//! The token requests are written on `reqwest` rather than `azure_identity`:
//! see [`entra`] for why.

pub mod cache;
pub mod entra;
pub mod file;
pub mod managed;

use crate::config::Refusal;
use std::{fmt, sync::Arc, time::Duration};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::{AuthArgs, AuthMode, Cloud, GraphArgs, Secret};
use cache::{Fetched, TokenCache};
use rustls_pki_types::CertificateDer;

pub use crate::grpc::context::bearer;

/// Why no token could be had. Never holds a secret or a token.
#[derive(Debug, Clone)]
pub enum TokenError {
    /// The identity platform refused the request (a 4xx with an OAuth error).
    Rejected {
        /// The host that refused, e.g. `login.microsoftonline.com`.
        authority: String,
        status: u16,
        /// The OAuth error, e.g. `invalid_client`.
        error: String,
        /// The Entra code, e.g. `AADSTS7000215`, when given.
        code: Option<String>,
        description: String,
    },
    /// The identity endpoint is down, unreachable or overloaded.
    Unavailable { authority: String, detail: String },
    /// No answer within the token timeout.
    Timeout(Duration),
    /// The caller's deadline passed while waiting for a token.
    Deadline,
    /// The local credential is unusable (a missing file, a bad key).
    Credential(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Rejected {
                authority,
                status,
                error,
                description,
                ..
            } => write!(
                f,
                "{authority} refused the token request (HTTP {status}, {error}): {description}"
            ),
            TokenError::Unavailable { authority, detail } => {
                write!(
                    f,
                    "the identity endpoint {authority} is unavailable: {detail}"
                )
            }
            TokenError::Timeout(t) => {
                write!(f, "the identity endpoint did not answer within {t:?}")
            }
            TokenError::Deadline => {
                f.write_str("the call's deadline passed while waiting for a Graph token")
            }
            TokenError::Credential(why) => write!(f, "the gateway's credential is unusable: {why}"),
        }
    }
}

/// The `ErrorInfo` domain of token failures raised by the gateway itself.
const DOMAIN: &str = "runstate-gateway";

impl TokenError {
    /// The gRPC status for a call that got no token.
    pub fn to_status(&self) -> Status {
        let message = format!("cannot get a Graph token: {self}");
        let (code, reason, domain, mut metadata) = match self {
            TokenError::Rejected {
                authority,
                status,
                error,
                code,
                ..
            } => {
                let mut m = std::collections::HashMap::new();
                m.insert("http_status".to_owned(), status.to_string());
                if let Some(c) = code {
                    m.insert("aadsts".to_owned(), c.clone());
                }
                let code = if *status >= 500 || *status == 429 {
                    Code::Unavailable
                } else {
                    Code::Unauthenticated
                };
                (code, error.clone(), authority.clone(), m)
            }
            TokenError::Unavailable { authority, .. } => (
                Code::Unavailable,
                "IDENTITY_ENDPOINT_UNAVAILABLE".to_owned(),
                authority.clone(),
                Default::default(),
            ),
            TokenError::Timeout(_) => (
                Code::Unavailable,
                "TOKEN_REQUEST_TIMEOUT".to_owned(),
                DOMAIN.to_owned(),
                Default::default(),
            ),
            TokenError::Deadline => (
                Code::DeadlineExceeded,
                "TOKEN_DEADLINE_EXCEEDED".to_owned(),
                DOMAIN.to_owned(),
                Default::default(),
            ),
            TokenError::Credential(_) => (
                Code::Unauthenticated,
                "CREDENTIAL_UNAVAILABLE".to_owned(),
                DOMAIN.to_owned(),
                Default::default(),
            ),
        };
        metadata.insert("source".to_owned(), "token".to_owned());
        Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(reason, domain, metadata),
        )
    }
}

/// A fixed token: given once, or read from a file that may rotate.
enum Fixed {
    Value(HeaderValue),
    File(file::TokenFile),
}

impl Fixed {
    fn header(&self) -> Result<HeaderValue, Status> {
        match self {
            Fixed::Value(v) => Ok(v.clone()),
            Fixed::File(f) => f.current().map_err(|e| e.to_status()),
        }
    }
}

/// A credential of the gateway's own.
enum Provider {
    Entra(entra::Entra),
    Managed(managed::Managed),
}

impl Provider {
    async fn fetch(self: Arc<Self>, user: Option<Arc<str>>) -> Result<Fetched, TokenError> {
        match &*self {
            Provider::Entra(e) => e.fetch(user.as_deref()).await,
            Provider::Managed(m) => m.fetch().await,
        }
    }
}

/// Decides the `Authorization` value sent to Graph for each call.
pub struct Authorizer {
    mode: Option<AuthMode>,
    ignore_caller: bool,
    fixed: Option<Fixed>,
    provider: Option<Arc<Provider>>,
    /// App tokens (one key) or, with on-behalf-of, one key per user.
    cache: Arc<TokenCache<Option<[u8; 32]>>>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("mode", &self.mode)
            .field("ignore_caller", &self.ignore_caller)
            .finish_non_exhaustive()
    }
}

/// The settings an [`Authorizer`] is built from, resolved from the command line.
pub struct Settings {
    pub mode: Option<AuthMode>,
    pub ignore_caller: bool,
    pub static_token: Option<Secret>,
    pub token_file: Option<std::path::PathBuf>,
    /// Extra trust anchors for the token endpoints (`--graph-ca-file`, as
    /// read once at startup for Graph too).
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<std::path::PathBuf>,
    pub certificate_path: Option<std::path::PathBuf>,
    pub certificate_password: Option<Secret>,
    pub federated_token_file: Option<std::path::PathBuf>,
    /// e.g. `https://login.microsoftonline.com`.
    pub authority: String,
    /// Graph's root, e.g. `https://graph.microsoft.com`: the token's resource.
    pub resource: String,
    pub identity_endpoint: Option<String>,
    pub identity_header: Option<Secret>,
    pub imds_endpoint: String,
    pub token_timeout: Duration,
    pub obo_cache_size: usize,
}

impl Settings {
    /// From the command line, the secrets from the environment
    /// (`AZURE_CLIENT_SECRET`, `AZURE_CLIENT_CERTIFICATE_PASSWORD`, `IDENTITY_HEADER`).
    pub fn from_args(
        args: &AuthArgs,
        cloud: Cloud,
        graph_url: &str,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, Refusal> {
        let env_secret = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| Secret::new(v.trim()))
        };
        let resource = origin(graph_url)?;
        let authority = match &args.authority_host {
            Some(a) => a.trim_end_matches('/').to_owned(),
            None => cloud.authority().to_owned(),
        };
        Ok(Self {
            mode: args.auth,
            ignore_caller: args.ignore_caller_token,
            static_token: args.graph_token.clone(),
            token_file: args.graph_token_file.clone(),
            extra_roots: extra_roots.to_vec(),
            tenant_id: args.tenant_id.clone(),
            client_id: args.client_id.clone(),
            client_secret: env_secret("AZURE_CLIENT_SECRET"),
            client_secret_file: args.client_secret_file.clone(),
            certificate_path: args.client_certificate_path.clone(),
            certificate_password: env_secret("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            federated_token_file: args.federated_token_file.clone(),
            authority,
            resource,
            identity_endpoint: args.identity_endpoint.clone(),
            identity_header: env_secret("IDENTITY_HEADER"),
            imds_endpoint: args.imds_endpoint.clone(),
            token_timeout: args.token_timeout,
            obo_cache_size: args.obo_cache_size as usize,
        })
    }
}

/// The default instance metadata service address.
const IMDS: &str = "http://169.254.169.254";

/// The [`Settings`] for the command line, Graph being at `graph_url`.
/// `local_identity`, the base URL of a local stand-in for Entra ID and IMDS
/// (the embedded emulator), replaces the cloud's authority (unless
/// --authority-host names one) and the default IMDS address.
pub fn settings(
    args: &AuthArgs,
    graph: &GraphArgs,
    graph_url: &str,
    local_identity: Option<&str>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Settings, Refusal> {
    check_upstream("--graph-url", graph_url, graph.allow_http_upstream)?;
    let mut s = Settings::from_args(args, graph.cloud, graph_url, extra_roots)?;
    if !graph_url.starts_with("https://") {
        // The emulator or a local proxy: ask for the cloud's Graph scope.
        s.resource = graph.cloud.graph_host().to_owned();
    }
    if let Some(base) = local_identity {
        if args.authority_host.is_none() {
            s.authority = base.to_owned();
        }
        if s.imds_endpoint == IMDS {
            s.imds_endpoint = base.to_owned();
        }
    }
    Ok(s)
}

/// Builds the [`Authorizer`]; a plain-http authority must be loopback unless
/// `allow_http`.
pub fn authorizer(s: Settings, allow_http: bool) -> Result<Arc<Authorizer>, Refusal> {
    if s.own_credential() && s.mode != Some(AuthMode::ManagedIdentity) {
        check_upstream("--authority-host", &s.authority, allow_http)?;
    }
    Authorizer::new(s).map(Arc::new)
}

impl Settings {
    /// Whether Graph tokens come from a credential of the gateway's own.
    pub fn own_credential(&self) -> bool {
        !matches!(
            self.mode,
            None | Some(AuthMode::Passthrough) | Some(AuthMode::Static)
        )
    }
}

/// `scheme://host[:port]` of a URL.
pub fn origin(url: &str) -> Result<String, Refusal> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    Ok(u.origin().ascii_serialization())
}

/// The Graph base URL (with `/beta`) of a cloud.
pub fn cloud_graph_url(cloud: Cloud) -> String {
    format!("{}/beta", cloud.graph_host())
}

/// Refuses an `http://` URL on a host other than loopback unless allowed:
/// tokens must not travel in clear text by accident.
pub fn check_upstream(what: &str, url: &str, allow_http: bool) -> Result<(), Refusal> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{what} {url:?} is not a URL: {e}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback(&u) => Ok(()),
        "http" => Err(format!(
            "{what} {url:?} is plain http on a host other than loopback, so tokens would travel in clear text; use https, or pass --allow-http-upstream (RUNSTATE_ALLOW_HTTP_UPSTREAM) to accept it"
        ).into()),
        other => Err(format!(
            "{what} {url:?}: unsupported scheme {other:?} (use https)"
        ).into()),
    }
}

fn is_loopback(u: &reqwest::Url) -> bool {
    let Some(host) = u.host_str() else {
        return false;
    };
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn required(value: &Option<String>, what: &str) -> Result<String, Refusal> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("--auth needs {what}").into())
}

impl Authorizer {
    /// Checks the settings and builds the credential; fails with a message
    /// naming the missing or wrong setting.
    pub fn new(s: Settings) -> Result<Self, Refusal> {
        let fixed = match (&s.static_token, &s.token_file) {
            (Some(t), _) => Some(Fixed::Value(
                bearer(t.expose()).map_err(|_| "--graph-token: not a valid header value")?,
            )),
            (None, Some(path)) => Some(Fixed::File(file::TokenFile::open(path)?)),
            (None, None) => None,
        };
        let http = || {
            let builder = reqwest::Client::builder()
                .user_agent(concat!("runstate-gateway/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none());
            // The same trust as Graph calls: the roots built into the binary
            // plus --graph-ca-file (reqwest's own default would read the
            // system store, so a CA there would work for tokens and not for
            // Graph, and reading it costs milliseconds at startup).
            let tls = crate::graph::tls_config(&s.extra_roots)
                .map_err(|e| format!("--graph-ca-file: {e}"))?;
            builder
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| format!("cannot build the token HTTP client: {e}"))
        };
        let scope = format!("{}/.default", s.resource);
        let entra_app = |credential: entra::ClientCredential| -> Result<Provider, Refusal> {
            Ok(Provider::Entra(entra::Entra::new(
                http()?,
                &s.authority,
                &required(&s.tenant_id, "a tenant: AZURE_TENANT_ID or --tenant-id")?,
                &required(&s.client_id, "a client id: AZURE_CLIENT_ID or --client-id")?,
                credential,
                scope.clone(),
            )?))
        };
        let secret_or_certificate = || -> Result<entra::ClientCredential, Refusal> {
            if let Some(path) = &s.certificate_path {
                return Ok(entra::ClientCredential::Certificate(Arc::new(
                    entra::Certificate::load(path, s.certificate_password.as_ref())?,
                )));
            }
            match (&s.client_secret, &s.client_secret_file) {
                (Some(secret), _) => Ok(entra::ClientCredential::Secret(secret.clone())),
                (None, Some(path)) => Ok(entra::ClientCredential::SecretFile(path.clone())),
                (None, None) => Err("--auth needs a client secret: AZURE_CLIENT_SECRET or AZURE_CLIENT_SECRET_FILE (or a certificate: AZURE_CLIENT_CERTIFICATE_PATH)".into()),
            }
        };
        let provider = match s.mode {
            None | Some(AuthMode::Passthrough) => None,
            Some(AuthMode::Static) => {
                if fixed.is_none() {
                    return Err("--auth static needs --graph-token (GRAPH_TOKEN) or --graph-token-file (GRAPH_TOKEN_FILE)".into());
                }
                None
            }
            Some(AuthMode::ClientSecret) => {
                let credential = match (&s.client_secret, &s.client_secret_file) {
                    (Some(secret), _) => entra::ClientCredential::Secret(secret.clone()),
                    (None, Some(path)) => entra::ClientCredential::SecretFile(path.clone()),
                    (None, None) => {
                        return Err("--auth client-secret needs AZURE_CLIENT_SECRET or AZURE_CLIENT_SECRET_FILE (the secret is never a flag)".into());
                    }
                };
                Some(entra_app(credential)?)
            }
            Some(AuthMode::ClientCertificate) => {
                let path = s.certificate_path.as_ref().ok_or(
                    "--auth client-certificate needs AZURE_CLIENT_CERTIFICATE_PATH (--client-certificate-path)",
                )?;
                let cert = entra::Certificate::load(path, s.certificate_password.as_ref())?;
                Some(entra_app(entra::ClientCredential::Certificate(Arc::new(
                    cert,
                )))?)
            }
            Some(AuthMode::WorkloadIdentity) => {
                let path = s.federated_token_file.as_ref().ok_or(
                    "--auth workload-identity needs AZURE_FEDERATED_TOKEN_FILE (--federated-token-file)",
                )?;
                Some(entra_app(entra::ClientCredential::Federated(path.clone()))?)
            }
            Some(AuthMode::OnBehalfOf) => Some(entra_app(secret_or_certificate()?)?),
            Some(AuthMode::ManagedIdentity) => Some(Provider::Managed(managed::Managed::new(
                http()?,
                s.identity_endpoint.as_deref(),
                s.identity_header.clone(),
                &s.imds_endpoint,
                &s.resource,
                s.client_id.clone(),
            )?)),
        };
        let capacity = if s.mode == Some(AuthMode::OnBehalfOf) {
            s.obo_cache_size
        } else {
            1
        };
        Ok(Self {
            mode: s.mode,
            ignore_caller: s.ignore_caller,
            fixed,
            provider: provider.map(Arc::new),
            cache: TokenCache::new(capacity, s.token_timeout),
        })
    }

    /// The mode, for the startup log.
    pub fn mode(&self) -> Option<AuthMode> {
        self.mode
    }

    /// The `Authorization` value for a call, which waits at most until `deadline`.
    pub async fn authorization(
        &self,
        metadata: &MetadataMap,
        deadline: Instant,
    ) -> Result<HeaderValue, Status> {
        let caller = match metadata.get("authorization") {
            Some(_) => Some(crate::grpc::context::authorization(metadata, None)?),
            None => None,
        };
        match self.mode {
            None => match (caller, &self.fixed) {
                (Some(c), _) => Ok(c),
                (None, Some(f)) => f.header(),
                (None, None) => Err(Status::unauthenticated(
                    "no Graph token: send `authorization: Bearer <token>` metadata, or start the gateway with --graph-token (GRAPH_TOKEN), --graph-token-file or an --auth credential mode",
                )),
            },
            Some(AuthMode::Passthrough) => caller.ok_or_else(|| {
                Status::unauthenticated(
                    "--auth passthrough: send the Graph token as `authorization: Bearer <token>` metadata",
                )
            }),
            Some(AuthMode::OnBehalfOf) => {
                let Some(caller) = caller else {
                    return Err(Status::unauthenticated(
                        "--auth on-behalf-of: send the user's token (audience: this gateway's app) as `authorization: Bearer <token>` metadata",
                    ));
                };
                let assertion = caller
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' ').map(|(_, t)| t.trim()))
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| Status::unauthenticated("the authorization metadata holds no bearer token"))?;
                let key: [u8; 32] = Sha256::digest(assertion.as_bytes()).into();
                let user: Arc<str> = Arc::from(assertion);
                self.cached(Some(key), Some(user), deadline).await
            }
            Some(_) if !self.ignore_caller && caller.is_some() => {
                caller.ok_or_else(|| Status::internal("no caller token"))
            }
            Some(AuthMode::Static) => match &self.fixed {
                Some(f) => f.header(),
                None => Err(Status::internal("no static token configured")),
            },
            Some(_) => self.cached(None, None, deadline).await,
        }
    }

    async fn cached(
        &self,
        key: Option<[u8; 32]>,
        user: Option<Arc<str>>,
        deadline: Instant,
    ) -> Result<HeaderValue, Status> {
        let Some(provider) = &self.provider else {
            return Err(Status::internal("no credential configured"));
        };
        let provider = Arc::clone(provider);
        let token = Box::pin(self.cache.get(key, deadline, move || provider.fetch(user)))
            .await
            .map_err(|e| e.to_status())?;
        Ok(token.header.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_upstreams_need_loopback_or_the_opt_in() {
        assert!(check_upstream("--graph-url", "https://graph.microsoft.com/beta", false).is_ok());
        assert!(check_upstream("--graph-url", "http://127.0.0.1:8080/beta", false).is_ok());
        assert!(check_upstream("--graph-url", "http://[::1]:8080/beta", false).is_ok());
        assert!(check_upstream("--graph-url", "http://localhost:8080/beta", false).is_ok());
        let err = check_upstream("--authority-host", "http://emulator:8080", false).unwrap_err();
        assert!(err.0.contains("--allow-http-upstream"), "{err}");
        assert!(check_upstream("--authority-host", "http://emulator:8080", true).is_ok());
        assert!(check_upstream("--graph-url", "ftp://x/beta", true).is_err());
    }

    #[test]
    fn rejections_carry_the_entra_code_without_secrets() {
        let e = TokenError::Rejected {
            authority: "login.microsoftonline.com".into(),
            status: 401,
            error: "invalid_client".into(),
            code: Some("AADSTS7000215".into()),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        };
        let s = e.to_status();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("AADSTS7000215"), "{}", s.message());
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "invalid_client");
        assert_eq!(info.metadata["aadsts"], "AADSTS7000215");
    }
}
