//! The Graph side of the emulator: one request in, one [`Reply`] out. The
//! HTTP handler and `$batch` items both go through [`answer`].

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{
    Emulator, Fault, Scope,
    dates::Instant,
    lock,
    model::{Entity, GraphFailure},
    paths::{self, Target},
    query::Query,
};

const ENTITY_CONTENT_TYPE: &str = "application/json;odata.metadata=minimal;odata.streaming=true";
const DIAGNOSTIC: &str = r#"{"ServerInfo":{"DataCenter":"Emulator","Slice":"E","Ring":"0","ScaleUnit":"0","RoleInstance":"emulator"}}"#;

/// An answer before it becomes an HTTP response or a `$batch` item.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    /// Empty for no body.
    pub body: String,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: Some(ENTITY_CONTENT_TYPE.into()),
            retry_after: None,
            body,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            content_type: None,
            retry_after: None,
            body: String::new(),
        }
    }

    /// Whether the body is JSON (so a `$batch` item can carry it as JSON).
    pub fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json"))
    }

    pub fn into_response(self, ids: &Ids) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        let h = response.headers_mut();
        h.remove(header::CONTENT_TYPE);
        let mut set = |name: header::HeaderName, value: Option<&str>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(name, v);
            }
        };
        set(header::CONTENT_TYPE, self.content_type.as_deref());
        set(header::RETRY_AFTER, self.retry_after.as_deref());
        set(
            header::HeaderName::from_static("request-id"),
            Some(&ids.request_id),
        );
        set(
            header::HeaderName::from_static("client-request-id"),
            ids.client_request_id.as_deref(),
        );
        set(
            header::HeaderName::from_static("x-ms-ags-diagnostic"),
            Some(DIAGNOSTIC),
        );
        response
    }
}

/// The ids Graph puts in every answer's headers and error bodies.
pub struct Ids {
    pub request_id: String,
    pub client_request_id: Option<String>,
}

impl Ids {
    pub fn new(client_request_id: Option<&str>) -> Ids {
        Ids {
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: client_request_id.map(str::to_owned),
        }
    }

    pub fn error(&self, status: u16, code: &str, message: &str) -> Reply {
        let now = Instant::now().to_graph();
        let body = json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": &now[..19],
                "request-id": self.request_id,
                "client-request-id": self.client_request_id,
            }
        }});
        Reply {
            status,
            content_type: Some("application/json".into()),
            retry_after: None,
            body: body.to_string(),
        }
    }

    pub fn failure(&self, f: &GraphFailure) -> Reply {
        self.error(f.status, f.code, &f.message)
    }

    pub fn fault(&self, fault: &Fault) -> Reply {
        let mut reply = match &fault.raw_body {
            Some(raw) => Reply {
                status: fault.status,
                content_type: Some("text/plain; charset=utf-8".into()),
                retry_after: None,
                body: raw.clone(),
            },
            None => self.error(fault.status, &fault.code, &fault.message),
        };
        if fault.content_type.is_some() {
            reply.content_type = fault.content_type.clone();
        }
        reply.retry_after = fault.retry_after.clone();
        reply
    }

    /// The 429 of a limit.
    pub fn throttled(&self, scope: Scope, retry_after: Option<String>) -> Reply {
        let mut reply = self.error(
            429,
            "TooManyRequests",
            &format!("Too many requests: {} is reached.", scope.describe()),
        );
        reply.retry_after = retry_after;
        reply
    }
}

/// One Graph request, from HTTP or from a `$batch` item.
pub struct Call<'a> {
    pub method: &'a str,
    /// The decoded-later path, e.g. `/beta/deviceManagement/...`.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: &'a str,
    pub body: &'a [u8],
    /// `scheme://host` of the emulator as the caller reached it, for `@odata.nextLink`.
    pub origin: &'a str,
    /// The app the token belongs to, for the per-app limits.
    pub app: &'a str,
}

/// Answers one request: the limits, then faults, then the store.
pub fn answer(e: &Emulator, call: &Call, ids: &Ids) -> Reply {
    if let Err((scope, retry_after)) = e.admit(call.app, call.method) {
        return ids.throttled(scope, retry_after);
    }
    let fault = e.take_fault(call.method, call.path);
    if let Some(f) = fault.as_ref().filter(|f| !f.after_apply) {
        return ids.fault(f);
    }
    let reply = match paths::parse_target(call.path) {
        Ok(target) => handle(e, call, target).unwrap_or_else(|f| ids.failure(&f)),
        Err(f) => ids.failure(&f),
    };
    match fault {
        Some(f) => ids.fault(&f),
        None => reply,
    }
}

/// The HTTP handler for everything that is not a control route.
pub async fn graph(
    State(e): State<Emulator>,
    method: Method,
    version: axum::http::Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ids = Ids::new(
        headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok()),
    );
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        e.count_answer(401);
        return ids
            .error(401, "InvalidAuthenticationToken", "Access token is empty.")
            .into_response(&ids);
    };
    let app = e.app_of(token);
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    e.record(method.as_str(), version, path_and_query, &headers, &body);
    if let Some(latency) = e.latency() {
        tokio::time::sleep(latency).await;
    }
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into());
    let origin = format!("http://{host}");
    let call = Call {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        body: &body,
        origin: &origin,
        app: &app,
    };
    let reply = if super::batch::is_batch(call.path) {
        super::batch::answer(&e, &call, &ids)
    } else {
        answer(&e, &call, &ids)
    };
    e.count_answer(reply.status);
    reply.into_response(&ids)
}

fn handle(e: &Emulator, call: &Call, target: Target) -> Result<Reply, GraphFailure> {
    let mut store = lock(&e.state.store);
    let parent_missing = |parent: &str| {
        GraphFailure::not_found(format!("The parent entity '{parent}' does not exist."))
    };
    match (call.method, target) {
        ("POST", Target::Collection { kind, path, parent }) => {
            if let Some(parent) = parent.filter(|p| !store.contains(p)) {
                return Err(parent_missing(&parent));
            }
            let entity = Entity::create(kind, call.body, e.client_ids())?;
            let item = format!("{path}/{}", entity.id());
            if store.contains(&item) {
                return Err(GraphFailure {
                    status: 409,
                    code: "Conflict",
                    message: format!("An entity with the key '{}' already exists.", entity.id()),
                });
            }
            let answer = entity_body(&path, &entity);
            if e.stores() {
                store.insert(item, entity);
            }
            Ok(Reply::json(201, answer))
        }
        ("GET", Target::Collection { kind, path, parent }) => {
            if let Some(parent) = parent.filter(|p| !store.contains(p)) {
                return Err(parent_missing(&parent));
            }
            let query = Query::parse(call.query, kind)?;
            Ok(Reply::json(
                200,
                query.page(&store, &path, call.origin, call.path, call.query),
            ))
        }
        ("GET", Target::Item { path, collection }) => {
            let entity = store.get(&path).ok_or_else(|| missing(&path))?;
            let query = Query::parse(call.query, entity.kind())?;
            Ok(Reply::json(
                200,
                serde_json::to_string(&entity.to_json(
                    Some(&format!("{}/$entity", paths::context(&collection))),
                    query.select.as_deref(),
                ))
                .unwrap_or_default(),
            ))
        }
        ("PATCH", Target::Item { path, collection }) => {
            let entity = store.get_mut(&path).ok_or_else(|| missing(&path))?;
            entity.patch(call.body)?;
            if e.state
                .patch_no_content
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                Ok(Reply::empty(204))
            } else {
                Ok(Reply::json(200, entity_body(&collection, entity)))
            }
        }
        ("DELETE", Target::Item { path, .. }) => {
            if store.remove(&path) {
                Ok(Reply::empty(204))
            } else {
                Err(missing(&path))
            }
        }
        (m, _) => Err(GraphFailure {
            status: 405,
            code: "MethodNotAllowed",
            message: format!("The HTTP method '{m}' is not allowed on this resource."),
        }),
    }
}

fn missing(path: &str) -> GraphFailure {
    GraphFailure::not_found(format!("Resource '{path}' not found."))
}

/// A 200/201 body: `@odata.context`, `@odata.type`, then the entity.
fn entity_body(collection: &str, entity: &Entity) -> String {
    let context = format!("{}/$entity", paths::context(collection));
    serde_json::to_string(&entity.to_json(Some(&context), None)).unwrap_or_default()
}
