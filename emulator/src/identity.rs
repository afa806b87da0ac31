//! The identity endpoints the gateway's credential modes use, and the check
//! that Graph calls carry a token issued here that has not expired.
//!
//! - `POST /{tenant}/oauth2/v2.0/token`: client credentials with a secret, a
//!   certificate-signed assertion (shape, audience, expiry, `x5t#S256` and
//!   signature checked) or a federated token (audience
//!   `api://AzureADTokenExchange`, expiry), and the on-behalf-of grant (the
//!   user token's audience is the app). Errors are Entra-shaped
//!   (`invalid_client`, `AADSTS7000215`, …).
//! - `GET /metadata/identity/oauth2/token` (IMDS: `Metadata: true`,
//!   `expires_in` as a string) and `GET /msi/token` (App Service:
//!   `X-IDENTITY-HEADER`, only `expires_on`).
//!
//! With no app registered, any client id and non-empty secret is accepted
//! (for trying the gateway); once one is, only registered credentials are.

// Handlers answer errors as ready responses; their size does not matter here.
#![allow(clippy::result_large_err)]

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Emulator, lock};

/// Audience of Kubernetes federated tokens exchanged with Entra ID.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";
/// How many token requests are kept for [`Emulator::token_grants`].
const GRANT_LOG_LIMIT: usize = 1000;
/// Most live tokens kept (expired ones are pruned first).
const ISSUED_LIMIT: usize = 100_000;

/// Identity state, in the emulator's `State`.
#[derive(Default)]
pub struct Identity {
    inner: Mutex<Inner>,
    requests: AtomicU64,
    require_issued: AtomicBool,
    rejected_graph_calls: AtomicU64,
}

#[derive(Default)]
struct Inner {
    apps: HashMap<String, App>,
    issued: HashMap<String, Issued>,
    lifetime: Option<Duration>,
    latency: Duration,
    outage: Option<u16>,
    identity_header: Option<String>,
    grants: VecDeque<Grant>,
}

#[derive(Default, Clone)]
struct App {
    secrets: Vec<String>,
    /// DER certificates, by `x5t#S256`.
    certificates: HashMap<String, Vec<u8>>,
    federated: bool,
}

/// A token issued by the emulator.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `client_credentials`, `on_behalf_of`, `managed_identity`.
    pub grant: String,
    pub client_id: Option<String>,
    /// The user (`sub`/`oid` of the assertion) for on-behalf-of.
    pub user: Option<String>,
    pub expires_at: SystemTime,
}

/// A token request the emulator answered (no secrets).
#[derive(Debug, Clone)]
pub struct Grant {
    /// `secret`, `certificate`, `federated`, `on_behalf_of`, `imds`, `app_service`.
    pub kind: String,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    /// The scope (or managed identity resource).
    pub scope: Option<String>,
    /// Whether a token was issued.
    pub issued: bool,
    /// The federated token's `sub`, or the on-behalf-of user.
    pub subject: Option<String>,
}

/// Default token lifetime: short, so refreshes happen.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

impl Emulator {
    fn identity(&self) -> &Identity {
        &self.state.identity
    }

    /// Registers an app's client secret (once any app is registered, only
    /// registered credentials are accepted).
    pub fn add_client_secret(&self, client_id: &str, secret: &str) {
        let mut i = lock(&self.identity().inner);
        i.apps
            .entry(client_id.to_owned())
            .or_default()
            .secrets
            .push(secret.to_owned());
    }

    /// Registers an app's certificate (DER) for signed client assertions.
    pub fn add_client_certificate(&self, client_id: &str, der: &[u8]) {
        let thumb = URL_SAFE_NO_PAD.encode(Sha256::digest(der));
        let mut i = lock(&self.identity().inner);
        i.apps
            .entry(client_id.to_owned())
            .or_default()
            .certificates
            .insert(thumb, der.to_owned());
    }

    /// Lets an app exchange federated (workload identity) tokens.
    pub fn allow_federated(&self, client_id: &str) {
        lock(&self.identity().inner)
            .apps
            .entry(client_id.to_owned())
            .or_default()
            .federated = true;
    }

    /// Lifetime of the tokens issued from now on (default 300 s).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.identity().inner).lifetime = Some(lifetime);
    }

    /// Delays every token answer.
    pub fn set_identity_latency(&self, latency: Duration) {
        lock(&self.identity().inner).latency = latency;
    }

    /// Answers every token request with this 5xx status (an outage), or not.
    pub fn set_identity_outage(&self, status: Option<u16>) {
        lock(&self.identity().inner).outage = status;
    }

    /// The `X-IDENTITY-HEADER` value App Service's endpoint expects.
    pub fn set_identity_header(&self, value: &str) {
        lock(&self.identity().inner).identity_header = Some(value.to_owned());
    }

    /// Refuse Graph calls whose bearer token was not issued here or has expired.
    pub fn require_issued_tokens(&self, on: bool) {
        self.identity().require_issued.store(on, Ordering::Relaxed);
    }

    /// Token requests received (all endpoints).
    pub fn token_requests(&self) -> u64 {
        self.identity().requests.load(Ordering::Relaxed)
    }

    /// The last token requests, oldest first.
    pub fn token_grants(&self) -> Vec<Grant> {
        lock(&self.identity().inner)
            .grants
            .iter()
            .cloned()
            .collect()
    }

    /// What the emulator knows of a token it issued.
    pub fn issued_token(&self, token: &str) -> Option<Issued> {
        lock(&self.identity().inner).issued.get(token).cloned()
    }

    /// Graph calls refused for their token.
    pub fn rejected_graph_calls(&self) -> u64 {
        self.identity().rejected_graph_calls.load(Ordering::Relaxed)
    }

    /// The app a Graph token belongs to, for the per-app limits: the client
    /// id of a token issued here, else the `appid` (v1) or `azp` (v2) claim
    /// of a JWT (its first [`MAX_APP_ID`] bytes); any other token counts as
    /// the one app [`STATIC_APP`].
    pub fn app_of(&self, token: &str) -> String {
        if let Some(issued) = self.issued_token(token) {
            return issued.client_id.unwrap_or(issued.grant);
        }
        let claims = jwt_claims(token);
        let app = ["appid", "azp"]
            .iter()
            .find_map(|c| claims.as_ref()?[*c].as_str().filter(|a| !a.is_empty()));
        match app {
            Some(app) => {
                let mut end = app.len().min(MAX_APP_ID);
                while !app.is_char_boundary(end) {
                    end -= 1;
                }
                app[..end].to_owned()
            }
            None => STATIC_APP.to_owned(),
        }
    }
}

/// The app of tokens that name none (a static token).
pub const STATIC_APP: &str = "static";
/// The longest app id kept from a token.
const MAX_APP_ID: usize = 128;

/// A JWT's claims, signed or not.
fn jwt_claims(token: &str) -> Option<Value> {
    let claims = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
}

/// The identity routes, merged into the emulator's router.
pub fn routes() -> Router<Emulator> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/metadata/identity/oauth2/token", get(imds))
        .route("/msi/token", get(app_service))
}

/// Middleware: with [`Emulator::require_issued_tokens`], Graph calls must
/// carry a live token issued here.
pub async fn check_graph_token(
    State(e): State<Emulator>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let graph = path.starts_with("/beta/") || path.starts_with("/deviceManagement/");
    if !graph || !e.identity().require_issued.load(Ordering::Relaxed) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let message = match e.issued_token(token) {
        Some(t) if t.expires_at > SystemTime::now() => return next.run(request).await,
        Some(_) => "Lifetime validation failed, the token is expired.",
        None if token.is_empty() => "Access token is empty.",
        None => "Access token validation failure. Invalid audience.",
    };
    e.identity()
        .rejected_graph_calls
        .fetch_add(1, Ordering::Relaxed);
    let body = json!({"error": {
        "code": "InvalidAuthenticationToken",
        "message": message,
        "innerError": {"request-id": uuid::Uuid::new_v4().to_string()},
    }});
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"\", error=\"invalid_token\""),
    );
    response
}

/// An Entra-shaped error.
fn entra_error(status: u16, error: &str, code: u32, description: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation}"),
        "error_codes": [code],
        "timestamp": unix_now().to_string(),
        "trace_id": trace.to_string(),
        "correlation_id": correlation.to_string(),
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(body)).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// A JWT's header and claims (no signature check).
fn jwt_parts(token: &str) -> Option<(Value, Value, String, Vec<u8>)> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some((header, claims, format!("{h}.{c}"), signature))
}

fn audience_matches(claims: &Value, want: impl Fn(&str) -> bool) -> bool {
    match &claims["aud"] {
        Value::String(a) => want(a),
        Value::Array(list) => list.iter().filter_map(Value::as_str).any(want),
        _ => false,
    }
}

/// Checks `exp` (and `nbf`), with a minute of skew: Err is the AADSTS answer.
fn check_times(claims: &Value) -> Result<(), Response> {
    let now = unix_now();
    let Some(exp) = claims["exp"].as_u64() else {
        return Err(entra_error(
            400,
            "invalid_client",
            50027,
            "JWT token is invalid or malformed: no exp claim.",
        ));
    };
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if exp + 60 < now || nbf > now + 60 {
        return Err(entra_error(
            400,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

/// Verifies an RS256 signature with a certificate's public key.
fn signature_valid(cert_der: &[u8], signed: &str, signature: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let public_key = &cert.public_key().subject_public_key.data;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == rustls::SignatureScheme::RSA_PKCS1_SHA256)
        .and_then(|(_, algs)| algs.first())
        .is_some_and(|alg| {
            alg.verify_signature(public_key, signed.as_bytes(), signature)
                .is_ok()
        })
}

impl Identity {
    fn record(&self, grant: Grant) {
        let mut i = lock(&self.inner);
        if i.grants.len() >= GRANT_LOG_LIMIT {
            i.grants.pop_front();
        }
        i.grants.push_back(grant);
    }

    /// Issues a token; returns it and its lifetime.
    fn issue(&self, grant: &str, client_id: Option<String>, user: Option<String>) -> (String, u64) {
        let mut i = lock(&self.inner);
        let lifetime = i.lifetime.unwrap_or(DEFAULT_LIFETIME);
        let now = SystemTime::now();
        if i.issued.len() >= ISSUED_LIMIT {
            i.issued.retain(|_, t| t.expires_at > now);
            if i.issued.len() >= ISSUED_LIMIT {
                i.issued.clear();
            }
        }
        let token = format!(
            "emu.{}.{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        i.issued.insert(
            token.clone(),
            Issued {
                grant: grant.to_owned(),
                client_id,
                user,
                expires_at: now + lifetime,
            },
        );
        (token, lifetime.as_secs().max(1))
    }

    /// Waits the configured latency; answers the outage if one is set.
    async fn before_answer(&self) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (latency, outage) = {
            let i = lock(&self.inner);
            (i.latency, i.outage)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        outage.map(|status| {
            entra_error(
                status,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            )
        })
    }
}

/// How a client authenticated, or the error answer.
fn authenticate(
    e: &Emulator,
    client_id: &str,
    form: &HashMap<String, String>,
    token_url_path: &str,
) -> Result<(&'static str, Option<String>), Response> {
    let apps = lock(&e.identity().inner).apps.clone();
    let open = apps.is_empty();
    let app = apps.get(client_id);
    if !open && app.is_none() {
        return Err(entra_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory 'emulator'."
            ),
        ));
    }
    if let Some(secret) = form.get("client_secret") {
        let ok = match app {
            Some(app) => app.secrets.iter().any(|s| s == secret),
            None => !secret.is_empty(),
        };
        return if ok {
            Ok(("secret", None))
        } else {
            Err(entra_error(
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            ))
        };
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Err(entra_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err(entra_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_assertion_type'.",
        ));
    }
    let Some((head, claims, signed, signature)) = jwt_parts(assertion) else {
        return Err(entra_error(
            400,
            "invalid_client",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    check_times(&claims)?;
    if let Some(thumb) = head["x5t#S256"].as_str() {
        if head["alg"] != "RS256" {
            return Err(entra_error(
                400,
                "invalid_client",
                5002738,
                "Invalid JWT token. 'RS256' is the only supported algorithm.",
            ));
        }
        if !audience_matches(&claims, |a| a.ends_with(token_url_path)) {
            return Err(entra_error(
                400,
                "invalid_client",
                700212,
                "The audience of the client assertion is not the token endpoint.",
            ));
        }
        if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
            return Err(entra_error(
                400,
                "invalid_client",
                700023,
                "Client assertion audience claim does not match Realm issuer.",
            ));
        }
        let known = app.and_then(|a| a.certificates.get(thumb));
        let ok = match known {
            Some(der) => signature_valid(der, &signed, &signature),
            None => open,
        };
        return if ok {
            Ok(("certificate", None))
        } else {
            Err(entra_error(
                401,
                "invalid_client",
                700027,
                &format!(
                    "The certificate with identifier used to sign the client assertion is not registered on application '{client_id}'."
                ),
            ))
        };
    }
    if !audience_matches(&claims, |a| a == FEDERATED_AUDIENCE) {
        return Err(entra_error(
            400,
            "invalid_client",
            700212,
            &format!(
                "No matching federated identity record found for presented assertion audience. The audience must be '{FEDERATED_AUDIENCE}'."
            ),
        ));
    }
    if claims["iss"].as_str().is_none_or(str::is_empty)
        || claims["sub"].as_str().is_none_or(str::is_empty)
    {
        return Err(entra_error(
            400,
            "invalid_client",
            700211,
            "No matching federated identity record found for presented assertion issuer.",
        ));
    }
    if open || app.is_some_and(|a| a.federated) {
        Ok(("federated", claims["sub"].as_str().map(str::to_owned)))
    } else {
        Err(entra_error(
            400,
            "invalid_client",
            70021,
            "No matching federated identity record found for presented assertion.",
        ))
    }
}

async fn token(
    State(e): State<Emulator>,
    Path(tenant): Path<String>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    if let Some(r) = e.identity().before_answer().await {
        return r;
    }
    let form = parse_form(&body);
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let scope = form.get("scope").cloned();
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let mut grant = Grant {
        kind: String::new(),
        tenant: Some(tenant.clone()),
        client_id: Some(client_id.clone()).filter(|c| !c.is_empty()),
        scope: scope.clone(),
        issued: false,
        subject: None,
    };
    let answer = (|| {
        if client_id.is_empty() {
            return Err(entra_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            ));
        }
        if scope.as_deref().is_none_or(|s| !s.ends_with("/.default")) {
            return Err(entra_error(
                400,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
            ));
        }
        let (how, subject) = authenticate(&e, &client_id, &form, uri.path())?;
        grant.kind = how.to_owned();
        grant.subject = subject;
        let user = match grant_type.as_str() {
            "client_credentials" => None,
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                grant.kind = "on_behalf_of".into();
                if form.get("requested_token_use").map(String::as_str) != Some("on_behalf_of") {
                    return Err(entra_error(
                        400,
                        "invalid_request",
                        900144,
                        "The request body must contain the following parameter: 'requested_token_use'.",
                    ));
                }
                let Some((_, claims, _, _)) = form.get("assertion").and_then(|a| jwt_parts(a))
                else {
                    return Err(entra_error(
                        400,
                        "invalid_grant",
                        50027,
                        "JWT token is invalid or malformed.",
                    ));
                };
                if claims["exp"].as_u64().is_none_or(|exp| exp < unix_now()) {
                    return Err(entra_error(
                        400,
                        "invalid_grant",
                        500133,
                        "Assertion is not within its valid time range.",
                    ));
                }
                let app_uri = format!("api://{client_id}");
                if !audience_matches(&claims, |a| a == client_id || a == app_uri) {
                    return Err(entra_error(
                        400,
                        "invalid_grant",
                        50013,
                        "Assertion failed signature validation. [Reason - The audience of the assertion is not this application.]",
                    ));
                }
                let user = claims["oid"]
                    .as_str()
                    .or(claims["sub"].as_str())
                    .unwrap_or_default();
                if user.is_empty() {
                    return Err(entra_error(
                        400,
                        "invalid_grant",
                        50013,
                        "Assertion names no user (no oid or sub claim).",
                    ));
                }
                grant.subject = Some(user.to_owned());
                Some(user.to_owned())
            }
            other => {
                return Err(entra_error(
                    400,
                    "unsupported_grant_type",
                    70003,
                    &format!("The app requested an unsupported grant type '{other}'."),
                ));
            }
        };
        let grant_name = if user.is_some() {
            "on_behalf_of"
        } else {
            "client_credentials"
        };
        let (token, lifetime) = e
            .identity()
            .issue(grant_name, Some(client_id.clone()), user);
        Ok(Json(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }))
        .into_response())
    })();
    grant.issued = answer.is_ok();
    e.identity().record(grant);
    answer.unwrap_or_else(|r| r)
}

fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    parse_form(uri.query().unwrap_or_default().as_bytes())
}

fn managed_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn imds(State(e): State<Emulator>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if let Some(r) = e.identity().before_answer().await {
        return r;
    }
    let q = query(&uri);
    let mut grant = Grant {
        kind: "imds".into(),
        tenant: None,
        client_id: q.get("client_id").cloned(),
        scope: q.get("resource").cloned(),
        issued: false,
        subject: None,
    };
    let answer = if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        Err(managed_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        ))
    } else if q.get("resource").is_none_or(String::is_empty) {
        Err(managed_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found.",
        ))
    } else {
        let (token, lifetime) =
            e.identity()
                .issue("managed_identity", grant.client_id.clone(), None);
        Ok(Json(json!({
            "access_token": token,
            "client_id": grant.client_id.clone().unwrap_or_else(|| "system-assigned".into()),
            "expires_in": lifetime.to_string(),
            "expires_on": (unix_now() + lifetime).to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": unix_now().to_string(),
            "resource": q.get("resource"),
            "token_type": "Bearer",
        }))
        .into_response())
    };
    grant.issued = answer.is_ok();
    e.identity().record(grant);
    answer.unwrap_or_else(|r| r)
}

async fn app_service(
    State(e): State<Emulator>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Some(r) = e.identity().before_answer().await {
        return r;
    }
    let q = query(&uri);
    let expected = lock(&e.identity().inner).identity_header.clone();
    let sent = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    let mut grant = Grant {
        kind: "app_service".into(),
        tenant: None,
        client_id: q.get("client_id").cloned(),
        scope: q.get("resource").cloned(),
        issued: false,
        subject: None,
    };
    let answer = if sent.is_none() || expected.as_deref().is_some_and(|x| Some(x) != sent) {
        Err(managed_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "The X-IDENTITY-HEADER is missing or wrong.",
        ))
    } else if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        Err(managed_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "api-version 2019-08-01 is required.",
        ))
    } else if q.get("resource").is_none_or(String::is_empty) {
        Err(managed_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "The resource is required.",
        ))
    } else {
        let (token, lifetime) =
            e.identity()
                .issue("managed_identity", grant.client_id.clone(), None);
        Ok(Json(json!({
            "access_token": token,
            "expires_on": (unix_now() + lifetime).to_string(),
            "resource": q.get("resource"),
            "token_type": "Bearer",
            "client_id": grant.client_id.clone().unwrap_or_else(|| "system-assigned".into()),
        }))
        .into_response())
    };
    grant.issued = answer.is_ok();
    e.identity().record(grant);
    answer.unwrap_or_else(|r| r)
}
