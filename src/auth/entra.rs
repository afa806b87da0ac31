//! Entra ID's token endpoint (`POST {authority}/{tenant}/oauth2/v2.0/token`):
//! client credentials with a secret, a certificate-signed assertion or a
//! Kubernetes federated token, and the on-behalf-of grant.
//!
//! Written on `reqwest` (the client Graph calls use) rather than with
//! `azure_identity` 1.0: that crate refuses an http authority (the emulator),
//! re-reads the federated token file only every 600 s (it must be read for
//! every request), needs OpenSSL for certificates, has no on-behalf-of
//! credential and caches tokens itself behind one lock, which our cache
//! replaces. What is left for it is this one form POST.

use crate::config::Refusal;
use std::{path::PathBuf, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::{SignatureScheme, sign::SigningKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{TokenError, cache::Fetched};
use crate::config::Secret;

/// Largest token response read.
const MAX_BODY: usize = 64 * 1024;
/// Lifetime of our signed client assertions.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// How the app proves who it is.
pub enum ClientCredential {
    Secret(Secret),
    /// A file holding the secret, read for every request (a rotating mount).
    SecretFile(PathBuf),
    Certificate(Arc<Certificate>),
    /// A Kubernetes projected token, read for every request.
    Federated(PathBuf),
}

/// An app registration's certificate and RSA key, for signed assertions.
pub struct Certificate {
    key: Arc<dyn SigningKey>,
    /// base64url(SHA-256(DER)): the `x5t#S256` header.
    thumbprint: String,
}

impl Certificate {
    /// Loads a PEM file holding the certificate and its RSA private key.
    pub fn load(path: &std::path::Path, password: Option<&Secret>) -> Result<Self, Refusal> {
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| format!("AZURE_CLIENT_CERTIFICATE_PATH {shown}: {e}"))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!(
                "AZURE_CLIENT_CERTIFICATE_PATH {shown}: not PEM; PKCS#12 files are not supported, convert one with `openssl pkcs12 -in app.pfx -out app.pem -nodes`{}",
                if password.is_some() {
                    " (AZURE_CLIENT_CERTIFICATE_PASSWORD is then not needed)"
                } else {
                    ""
                }
            ).into());
        }
        let cert = CertificateDer::pem_slice_iter(&bytes)
            .next()
            .ok_or_else(|| format!("AZURE_CLIENT_CERTIFICATE_PATH {shown}: no CERTIFICATE block"))?
            .map_err(|e| format!("AZURE_CLIENT_CERTIFICATE_PATH {shown}: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            format!("AZURE_CLIENT_CERTIFICATE_PATH {shown}: no usable private key ({e})")
        })?;
        Self::from_der(&cert, &key)
            .map_err(|e| format!("AZURE_CLIENT_CERTIFICATE_PATH {shown}: {e}").into())
    }

    pub fn from_der(cert: &[u8], key: &PrivateKeyDer<'_>) -> Result<Self, Refusal> {
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
            .map_err(|e| format!("unusable private key: {e}"))?;
        if key.algorithm() != rustls::SignatureAlgorithm::RSA {
            return Err("Entra ID needs an RSA key for client assertions".into());
        }
        Ok(Self {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(cert)),
        })
    }

    /// A signed client assertion for `audience` (the token URL).
    fn assertion(&self, client_id: &str, audience: &str) -> Result<String, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t#S256": self.thumbprint});
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .ok_or_else(|| TokenError::Credential("the key cannot sign RS256".into()))?;
        let signature = signer
            .sign(signing_input.as_bytes())
            .map_err(|e| TokenError::Credential(format!("cannot sign the assertion: {e}")))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// One app registration at one authority.
pub struct Entra {
    http: reqwest::Client,
    token_url: String,
    /// The authority's host, for messages.
    host: String,
    client_id: String,
    credential: ClientCredential,
    scope: String,
}

impl Entra {
    pub fn new(
        http: reqwest::Client,
        authority: &str,
        tenant: &str,
        client_id: &str,
        credential: ClientCredential,
        scope: String,
    ) -> Result<Self, Refusal> {
        let valid_id = |v: &str| {
            !v.is_empty()
                && v.len() <= 256
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !valid_id(tenant) {
            return Err(format!("AZURE_TENANT_ID {tenant:?} is not a tenant id or domain").into());
        }
        if !valid_id(client_id) {
            return Err(format!("AZURE_CLIENT_ID {client_id:?} is not a client id").into());
        }
        let url = reqwest::Url::parse(authority)
            .map_err(|e| format!("--authority-host {authority:?} is not a URL: {e}"))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        Ok(Self {
            http,
            token_url: format!(
                "{}/{tenant}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ),
            host,
            client_id: client_id.to_owned(),
            credential,
            scope,
        })
    }

    /// Asks for a token: app-only, or for `user` (the caller's token) with on-behalf-of.
    pub async fn fetch(&self, user: Option<&str>) -> Result<Fetched, TokenError> {
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match user {
            None => form.push(("grant_type", "client_credentials".into())),
            Some(assertion) => {
                form.push((
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ));
                form.push(("requested_token_use", "on_behalf_of".into()));
                form.push(("assertion", assertion.to_owned()));
            }
        }
        let assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
        match &self.credential {
            ClientCredential::Secret(s) => form.push(("client_secret", s.expose().to_owned())),
            ClientCredential::SecretFile(path) => form.push((
                "client_secret",
                read_trimmed(path, "AZURE_CLIENT_SECRET_FILE")?,
            )),
            ClientCredential::Certificate(cert) => {
                form.push(("client_assertion_type", assertion_type.into()));
                form.push((
                    "client_assertion",
                    cert.assertion(&self.client_id, &self.token_url)?,
                ));
            }
            ClientCredential::Federated(path) => {
                form.push(("client_assertion_type", assertion_type.into()));
                form.push((
                    "client_assertion",
                    read_trimmed(path, "AZURE_FEDERATED_TOKEN_FILE")?,
                ));
            }
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(&self.token_url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(&self.host, &e))?;
        let secrets: Vec<&str> = form
            .iter()
            .filter(|(k, _)| matches!(*k, "client_secret" | "client_assertion" | "assertion"))
            .map(|(_, v)| v.as_str())
            .collect();
        token_response(&self.host, response, &secrets).await
    }
}

/// Reads a secret or token file, trimmed.
pub(crate) fn read_trimmed(path: &std::path::Path, what: &str) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TokenError::Credential(format!("{what} {}: {e}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(TokenError::Credential(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(text.to_owned())
}

pub(super) fn unavailable(host: &str, e: &reqwest::Error) -> TokenError {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "the request failed"
    };
    TokenError::Unavailable {
        authority: host.to_owned(),
        detail: kind.to_owned(),
    }
}

/// A number, or a number in a string (IMDS and App Service send strings).
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    N(u64),
    S(String),
}

impl Number {
    fn get(&self) -> Option<u64> {
        match self {
            Number::N(n) => Some(*n),
            Number::S(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct Success {
    access_token: String,
    expires_in: Option<Number>,
    /// Seconds since the epoch (App Service sends only this).
    expires_on: Option<Number>,
}

#[derive(Deserialize)]
struct Failure {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
    /// App Service and some IMDS versions nest `{"error": {"code", "message"}}`.
    #[serde(default)]
    message: Option<String>,
}

/// Reads a token endpoint's answer: a token, or an OAuth error. `secrets` are
/// scrubbed from any description echoed back.
pub(super) async fn token_response(
    host: &str,
    response: reqwest::Response,
    secrets: &[&str],
) -> Result<Fetched, TokenError> {
    let status = response.status();
    let body = read_limited(response)
        .await
        .map_err(|e| unavailable(host, &e))?;
    if status.is_success() {
        let ok: Success = serde_json::from_slice(&body).map_err(|_| TokenError::Unavailable {
            authority: host.to_owned(),
            detail: "the token response is not the expected JSON".into(),
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let expires_in = ok
            .expires_in
            .and_then(|n| n.get())
            .or_else(|| {
                ok.expires_on
                    .and_then(|n| n.get())
                    .map(|on| on.saturating_sub(now))
            })
            .unwrap_or(0);
        if ok.access_token.trim().is_empty() || expires_in == 0 {
            return Err(TokenError::Unavailable {
                authority: host.to_owned(),
                detail: "the token response has no token or no lifetime".into(),
            });
        }
        return Ok(Fetched {
            access_token: ok.access_token,
            expires_in: Duration::from_secs(expires_in),
        });
    }
    let failure: Option<Failure> = serde_json::from_slice(&body).ok();
    let (error, description, codes) = match failure {
        Some(f) => (f.error, f.error_description.or(f.message), f.error_codes),
        None => (None, None, Vec::new()),
    };
    if status.is_server_error()
        || status.as_u16() == 429
        || error.is_none() && !status.is_client_error()
    {
        return Err(TokenError::Unavailable {
            authority: host.to_owned(),
            detail: format!(
                "HTTP {}{}",
                status.as_u16(),
                error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        });
    }
    let mut description = description.unwrap_or_else(|| format!("HTTP {status}"));
    // Entra appends trace and correlation ids on new lines: keep the first.
    if let Some(first) = description.lines().next() {
        description = first.trim().to_owned();
    }
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        description = description.replace(s, "***");
    }
    let mut cut = description.len().min(512);
    while !description.is_char_boundary(cut) {
        cut -= 1;
    }
    description.truncate(cut);
    let code = codes.first().map(|c| format!("AADSTS{c}")).or_else(|| {
        description
            .split(':')
            .next()
            .filter(|p| p.starts_with("AADSTS"))
            .map(str::to_owned)
    });
    Err(TokenError::Rejected {
        authority: host.to_owned(),
        status: status.as_u16(),
        error: error.unwrap_or_else(|| "invalid_request".into()),
        code,
        description,
    })
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
