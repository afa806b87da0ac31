//! HTTP routes of the emulator.
//!
//! - `/beta/deviceManagement/...`: the Graph API.
//! - `POST /_emulator/faults` (a [`Fault`] as JSON), `DELETE /_emulator/faults`,
//!   `GET /_emulator/requests`, `PUT /_emulator/settings`
//!   (`{"patch_no_content": bool, "latency_ms": n, "record": bool, "store": bool,
//!   "client_ids": "honour"|"ignore"|"reject", "write_limit": {"writes": n, "seconds": s} | "off"}`),
//!   `GET /_emulator/settings` (the settings and the count of 429s from the write limit):
//!   controls.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get, post, put},
};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    ClientIds, Emulator, Fault,
    entities::{Entity, GraphFailure, Kind},
    lock,
};
use crate::convert::{datetime, names::ScriptKind};

const ROOT: &str = "/beta/deviceManagement/";
const CONTEXT_ROOT: &str = "https://graph.microsoft.com/beta/$metadata#deviceManagement/";
const MAX_BODY: usize = 1 << 20;

pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/_emulator/faults", post(add_fault).delete(clear_faults))
        .route("/_emulator/requests", get(list_requests))
        .route("/_emulator/settings", put(settings).get(current_settings))
        .route("/beta/deviceManagement/{*rest}", any(graph))
        .route("/deviceManagement/{*rest}", any(graph))
        .fallback(any(graph))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(emulator)
}

async fn add_fault(State(e): State<Emulator>, Json(fault): Json<Fault>) -> StatusCode {
    e.inject(fault);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(e): State<Emulator>) -> StatusCode {
    e.clear_faults();
    StatusCode::NO_CONTENT
}

/// The record, with tokens redacted: any local process can ask for it.
async fn list_requests(State(e): State<Emulator>) -> Json<Vec<super::Recorded>> {
    Json(e.requests().iter().map(super::Recorded::redacted).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    patch_no_content: Option<bool>,
    latency_ms: Option<u64>,
    record: Option<bool>,
    store: Option<bool>,
    client_ids: Option<ClientIds>,
    /// `{"writes": 50, "seconds": 5}`, or `"off"`.
    write_limit: Option<WriteLimitSetting>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WriteLimitSetting {
    Limit { writes: u32, seconds: f64 },
    Off(Off),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Off {
    Off,
}

/// The current settings and counters.
async fn current_settings(State(e): State<Emulator>) -> Json<serde_json::Value> {
    Json(json!({
        "client_ids": e.client_ids(),
        "write_limit": e.write_limit().map_or(json!("off"), |(writes, window)| {
            json!({"writes": writes, "seconds": window.as_secs_f64()})
        }),
        "throttled": e.throttled_count(),
        "requests": e.request_count(),
    }))
}

async fn settings(State(e): State<Emulator>, Json(s): Json<Settings>) -> Response {
    match s.write_limit {
        Some(WriteLimitSetting::Limit { writes, seconds }) => {
            if writes == 0 || !(seconds > 0.0 && seconds <= 86_400.0) {
                return (
                    StatusCode::BAD_REQUEST,
                    "write_limit needs writes above 0 and seconds in (0, 86400]",
                )
                    .into_response();
            }
            e.set_write_limit(Some((writes, std::time::Duration::from_secs_f64(seconds))));
        }
        Some(WriteLimitSetting::Off(Off::Off)) => e.set_write_limit(None),
        None => {}
    }
    if let Some(mode) = s.client_ids {
        e.set_client_ids(mode);
    }
    if let Some(on) = s.patch_no_content {
        e.set_patch_no_content(on);
    }
    if let Some(ms) = s.latency_ms {
        e.set_latency(std::time::Duration::from_millis(ms));
    }
    if let Some(on) = s.record {
        e.set_recording(on);
    }
    if let Some(on) = s.store {
        e.set_store(on);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// What a Graph path names.
#[derive(Debug)]
enum Target {
    Collection {
        kind: Kind,
        path: String,
        parent: Option<String>,
    },
    Item {
        path: String,
        collection: String,
    },
}

/// Response headers Graph sends on every answer.
struct Ids {
    request_id: String,
    client_request_id: Option<HeaderValue>,
}

impl Ids {
    fn apply(&self, mut response: Response) -> Response {
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert("request-id", v);
        }
        if let Some(v) = &self.client_request_id {
            h.insert("client-request-id", v.clone());
        }
        h.insert(
            "x-ms-ags-diagnostic",
            HeaderValue::from_static(r#"{"ServerInfo":{"DataCenter":"Emulator","Slice":"E","Ring":"0","ScaleUnit":"0","RoleInstance":"emulator"}}"#),
        );
        response
    }

    fn error(&self, f: &GraphFailure) -> Response {
        self.error_parts(f.status, f.code, &f.message)
    }

    fn error_parts(&self, status: u16, code: &str, message: &str) -> Response {
        let now = datetime::format_utc(now());
        let body = json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": &now[..19],
                "request-id": self.request_id,
                "client-request-id": self.client_request_id.as_ref().and_then(|v| v.to_str().ok()),
            }
        }});
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.apply((status, Json(body)).into_response())
    }

    fn fault(&self, fault: &Fault) -> Response {
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = match &fault.raw_body {
            Some(raw) => (status, raw.clone()).into_response(),
            None => self.error_parts(fault.status, &fault.code, &fault.message),
        };
        let h = response.headers_mut();
        if let Some(ct) = fault
            .content_type
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            h.insert(header::CONTENT_TYPE, ct);
        }
        if let Some(ra) = fault
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            h.insert(header::RETRY_AFTER, ra);
        }
        self.apply(response)
    }
}

fn now() -> datetime::Instant {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    datetime::Instant {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

async fn graph(
    State(e): State<Emulator>,
    method: Method,
    version: axum::http::Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    e.record(method.as_str(), version, path_and_query, &headers, &body);
    let ids = Ids {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id: headers.get("client-request-id").cloned(),
    };
    if let Some(latency) = e.latency() {
        tokio::time::sleep(latency).await;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    if !bearer {
        return ids.error(&GraphFailure {
            status: 401,
            code: "InvalidAuthenticationToken",
            message: "Access token is empty.".into(),
        });
    }
    if let Err(seconds) = e.admit_write(method.as_str()) {
        let mut response = ids.error_parts(
            429,
            "TooManyRequests",
            "Too many requests: the emulator's write limit is reached.",
        );
        if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let fault = e.take_fault(method.as_str(), uri.path());
    if let Some(f) = fault.as_ref().filter(|f| !f.after_apply) {
        return ids.fault(f);
    }
    let response = match parse_target(uri.path()) {
        Ok(target) => handle(&e, &method, target, &body, &ids),
        Err(f) => ids.error(&f),
    };
    match fault {
        Some(f) => ids.fault(&f),
        None => response,
    }
}

fn handle(e: &Emulator, method: &Method, target: Target, body: &[u8], ids: &Ids) -> Response {
    let mut store = lock(&e.state.store);
    let result = match (method, target) {
        (&Method::POST, Target::Collection { kind, path, parent }) => {
            if let Some(parent) = parent.filter(|p| !store.contains(p)) {
                Err(GraphFailure::not_found(format!(
                    "The parent entity '{parent}' does not exist."
                )))
            } else {
                Entity::create(kind, body, e.client_ids()).and_then(|entity| {
                    let item = format!("{path}/{}", entity.id());
                    if store.contains(&item) {
                        return Err(GraphFailure {
                            status: 409,
                            code: "Conflict",
                            message: format!(
                                "An entity with the key '{}' already exists.",
                                entity.id()
                            ),
                        });
                    }
                    let answer = entity_json(&path, &entity);
                    if e.stores() {
                        store.insert(item, entity);
                    }
                    Ok((StatusCode::CREATED, answer).into_response())
                })
            }
        }
        (&Method::GET, Target::Collection { path, parent, .. }) => {
            if let Some(parent) = parent.filter(|p| !store.contains(p)) {
                Err(GraphFailure::not_found(format!(
                    "The parent entity '{parent}' does not exist."
                )))
            } else {
                let value: Vec<_> = store.list(&path).into_iter().map(Typed::new).collect();
                Ok(Json(json!({"@odata.context": format!("{CONTEXT_ROOT}{}", context_path(&path)), "value": value})).into_response())
            }
        }
        (
            &Method::GET,
            Target::Item {
                path, collection, ..
            },
        ) => store
            .get(&path)
            .map(|entity| entity_json(&collection, entity).into_response())
            .ok_or_else(|| missing(&path)),
        (
            &Method::PATCH,
            Target::Item {
                path, collection, ..
            },
        ) => match store.get_mut(&path) {
            None => Err(missing(&path)),
            Some(entity) => entity.patch(body).map(|()| {
                if e.state
                    .patch_no_content
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    StatusCode::NO_CONTENT.into_response()
                } else {
                    entity_json(&collection, entity).into_response()
                }
            }),
        },
        (&Method::DELETE, Target::Item { path, .. }) => {
            if store.remove(&path) {
                Ok(StatusCode::NO_CONTENT.into_response())
            } else {
                Err(missing(&path))
            }
        }
        (m, _) => Err(GraphFailure {
            status: 405,
            code: "MethodNotAllowed",
            message: format!("The HTTP method '{m}' is not allowed on this resource."),
        }),
    };
    drop(store);
    match result {
        Ok(r) => ids.apply(r),
        Err(f) => ids.error(&f),
    }
}

fn missing(path: &str) -> GraphFailure {
    GraphFailure::not_found(format!("Resource '{path}' not found."))
}

/// An entity with its `@odata.type` (and `@odata.context` when alone).
#[derive(Serialize)]
struct Typed<'a> {
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    #[serde(flatten)]
    entity: &'a Entity,
}

impl<'a> Typed<'a> {
    fn new(entity: &'a Entity) -> Self {
        Typed {
            context: None,
            odata_type: entity.kind().odata_type(),
            entity,
        }
    }
}

/// A 200/201 body: `@odata.context`, `@odata.type`, then the entity.
fn entity_json(
    collection: &str,
    entity: &Entity,
) -> ([(header::HeaderName, HeaderValue); 1], String) {
    let typed = Typed {
        context: Some(format!(
            "{CONTEXT_ROOT}{}/$entity",
            context_path(collection)
        )),
        ..Typed::new(entity)
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(
                "application/json;odata.metadata=minimal;odata.streaming=true",
            ),
        )],
        serde_json::to_string(&typed).unwrap_or_default(),
    )
}

/// `deviceShellScripts/s/userRunStates` → `deviceShellScripts('s')/userRunStates`.
fn context_path(collection: &str) -> String {
    let segments: Vec<&str> = collection.split('/').collect();
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("('{s}')"));
        } else {
            if i > 0 {
                out.push('/');
            }
            out.push_str(s);
        }
    }
    out
}

fn parse_target(path: &str) -> Result<Target, GraphFailure> {
    // Served with or without the version segment.
    let Some(rest) = path
        .strip_prefix(ROOT)
        .or_else(|| path.strip_prefix("/deviceManagement/"))
    else {
        return Err(GraphFailure::bad_request(format!(
            "Invalid request: the emulator serves {ROOT}... only."
        )));
    };
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let s = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| GraphFailure::bad_request("The request URI is not valid UTF-8."))?;
        if s.is_empty() || s == "." || s == ".." || s.contains('/') {
            return Err(GraphFailure::bad_request("The request URI is not valid."));
        }
        if s.starts_with('$') {
            return Err(GraphFailure::bad_request(format!(
                "Resource not found for the segment '{s}'."
            )));
        }
        segments.push(s.into_owned());
    }
    let unknown =
        |s: &str| GraphFailure::bad_request(format!("Resource not found for the segment '{s}'."));
    let kind = ScriptKind::from_collection(&segments[0]).ok_or_else(|| unknown(&segments[0]))?;
    let compliance = kind == ScriptKind::Compliance;
    if segments.len() < 3 {
        return Err(GraphFailure::not_found(
            "The emulator serves run states, not scripts.",
        ));
    }
    let state_kind = |word: &str| match word {
        "userRunStates" if !compliance => Ok(Kind::User),
        "deviceRunStates" if compliance => Ok(Kind::Compliance),
        "deviceRunStates" => Ok(Kind::Device),
        other => Err(unknown(other)),
    };
    let join = |n: usize| segments[..n].join("/");
    let kind3 = state_kind(&segments[2])?;
    match segments.len() {
        3 => Ok(Target::Collection {
            kind: kind3,
            path: join(3),
            parent: None,
        }),
        4 => Ok(Target::Item {
            path: join(4),
            collection: join(3),
        }),
        5 | 6 if kind3 == Kind::User && segments[4] == "deviceRunStates" => {
            if segments.len() == 5 {
                Ok(Target::Collection {
                    kind: Kind::Device,
                    path: join(5),
                    parent: Some(join(4)),
                })
            } else {
                Ok(Target::Item {
                    path: join(6),
                    collection: join(5),
                })
            }
        }
        _ => Err(unknown(segments.get(4).map_or("", String::as_str))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_served_path() {
        let ok = [
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates",
            "/beta/deviceManagement/deviceShellScripts/s/userRunStates/u",
            "/beta/deviceManagement/deviceCustomAttributeShellScripts/s/deviceRunStates",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/d%40x",
            "/beta/deviceManagement/deviceComplianceScripts/s/deviceRunStates/d",
        ];
        for p in ok {
            assert!(parse_target(p).is_ok(), "{p}");
        }
        let bad = [
            "/beta/deviceManagement/deviceComplianceScripts/s/userRunStates",
            "/beta/deviceManagement/deviceHealthScripts/s/deviceRunStates",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/$ref",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/d/x",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/%2E%2E",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/a%2Fb",
            "/v1.0/deviceManagement/deviceManagementScripts/s/userRunStates",
        ];
        assert!(parse_target("/deviceManagement/deviceShellScripts/s/userRunStates").is_ok());
        for p in bad {
            assert!(parse_target(p).is_err(), "{p}");
        }
    }

    #[test]
    fn builds_odata_context_paths() {
        assert_eq!(
            context_path("deviceShellScripts/s/userRunStates/u/deviceRunStates"),
            "deviceShellScripts('s')/userRunStates('u')/deviceRunStates"
        );
    }
}
