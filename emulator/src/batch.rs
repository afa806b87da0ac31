//! `POST /$batch` with Graph's rules: 1-20 requests, each with a unique `id`,
//! a `method`, a `url` relative to the version, optional `headers` and `body`
//! (a body needs a `Content-Type` header), and `dependsOn` naming other items.
//! Items run in dependency order, each through the same path as a plain
//! request (write limit, faults matched on the item's method and url,
//! `client_ids`); an item whose dependency failed gets 424. Responses come back
//! in reverse order, so a client that assumes request order is caught.
//!
//! The envelope itself takes only faults whose `path_contains` matches its
//! path (e.g. `"$batch"`; with `after_apply` the items run first), and does
//! not count against the write limit.

use serde_json::{Map, Value, json};

use super::{
    Emulator,
    routes::{self, Call, Ids, Reply},
};

/// Graph's limit of requests per batch.
pub const MAX_ITEMS: usize = 20;
const METHODS: [&str; 5] = ["GET", "POST", "PATCH", "PUT", "DELETE"];

/// `/beta/$batch` or `/$batch` (`$` may come percent-encoded).
pub fn is_batch(path: &str) -> bool {
    let path = path.replace("%24", "$");
    path == "/beta/$batch" || path == "/$batch"
}

/// One checked request of the batch.
struct Item {
    id: String,
    method: String,
    path: String,
    query: String,
    body: Option<Vec<u8>>,
    client_request_id: Option<String>,
    depends_on: Vec<usize>,
}

pub fn answer(e: &Emulator, call: &Call, ids: &Ids) -> Reply {
    // A fault `after_apply` runs the items, then answers in place of the
    // envelope (a batch whose answer was lost).
    let fault = e.take_envelope_fault(call.method, call.path);
    if let Some(f) = fault.as_ref().filter(|f| !f.after_apply) {
        return ids.fault(f);
    }
    if call.method != "POST" {
        return ids.error(
            405,
            "MethodNotAllowed",
            &format!(
                "The HTTP method '{}' is not allowed on $batch.",
                call.method
            ),
        );
    }
    let items = match parse(call.body) {
        Ok(items) => items,
        Err(message) => return ids.error(400, "BadRequest", &message),
    };
    let order = match dependency_order(&items) {
        Ok(order) => order,
        Err(message) => return ids.error(400, "BadRequest", &message),
    };
    let mut statuses: Vec<Option<u16>> = vec![None; items.len()];
    let mut replies: Vec<Option<Reply>> = vec![None; items.len()];
    for at in order {
        let item = &items[at];
        let item_ids = Ids::new(item.client_request_id.as_deref());
        let failed = item
            .depends_on
            .iter()
            .any(|d| !statuses[*d].is_some_and(|s| (200..300).contains(&s)));
        let reply = if failed {
            item_ids.error(
                424,
                "FailedDependency",
                "The request depends on a request that failed.",
            )
        } else {
            let body = item.body.as_deref().unwrap_or_default();
            routes::answer(
                e,
                &Call {
                    method: &item.method,
                    path: &item.path,
                    query: &item.query,
                    body,
                    origin: call.origin,
                    app: call.app,
                },
                &item_ids,
            )
        };
        e.count_answer(reply.status);
        statuses[at] = Some(reply.status);
        replies[at] = Some(reply);
    }
    let mut responses: Vec<Value> = items
        .iter()
        .zip(replies)
        .filter_map(|(item, reply)| reply.map(|r| response(&item.id, r)))
        .collect();
    responses.reverse();
    if let Some(f) = fault {
        return ids.fault(&f);
    }
    Reply {
        status: 200,
        content_type: Some("application/json".into()),
        retry_after: None,
        body: json!({ "responses": responses }).to_string(),
    }
}

fn response(id: &str, reply: Reply) -> Value {
    let mut headers = Map::new();
    if let Some(t) = &reply.content_type {
        headers.insert("Content-Type".into(), t.clone().into());
    }
    if let Some(r) = &reply.retry_after {
        headers.insert("Retry-After".into(), r.clone().into());
    }
    let mut out = json!({"id": id, "status": reply.status, "headers": headers});
    if !reply.body.is_empty() {
        let body = if reply.is_json() {
            serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body))
        } else {
            Value::String(reply.body)
        };
        out["body"] = body;
    }
    out
}

fn parse(body: &[u8]) -> Result<Vec<Item>, String> {
    let envelope: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid batch payload: {e}"))?;
    let requests = envelope
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("Invalid batch payload: a 'requests' array is required.")?;
    if requests.is_empty() || requests.len() > MAX_ITEMS {
        return Err(format!(
            "Invalid batch payload: the number of requests must be between 1 and {MAX_ITEMS}, not {}.",
            requests.len()
        ));
    }
    let mut ids: Vec<&str> = Vec::new();
    for r in requests {
        let id = r
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or("Invalid batch payload: every request needs a non-empty string 'id'.")?;
        if ids.contains(&id) {
            return Err(format!(
                "Invalid batch payload: the request id '{id}' is used more than once."
            ));
        }
        ids.push(id);
    }
    requests
        .iter()
        .zip(&ids)
        .map(|(r, id)| item(r, id, &ids))
        .collect()
}

fn item(r: &Value, id: &str, ids: &[&str]) -> Result<Item, String> {
    let method = r
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .filter(|m| METHODS.contains(&m.as_str()))
        .ok_or_else(|| format!("Request '{id}': 'method' must be one of {METHODS:?}."))?;
    let url = r
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("Request '{id}': a relative 'url' is required."))?;
    if url.contains("://") || url.starts_with("//") {
        return Err(format!(
            "Request '{id}': the url must be relative to the version, e.g. /deviceManagement/..."
        ));
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut client_request_id = None;
    let mut content_type = false;
    match r.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(headers)) => {
            for (name, value) in headers {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("Request '{id}': header '{name}' must be a string."))?;
                if name.eq_ignore_ascii_case("content-type") {
                    content_type = true;
                }
                if name.eq_ignore_ascii_case("client-request-id") {
                    client_request_id = Some(value.to_owned());
                }
            }
        }
        Some(_) => return Err(format!("Request '{id}': 'headers' must be an object.")),
    }
    let body = match r.get("body") {
        None | Some(Value::Null) => None,
        Some(body) if content_type => Some(serde_json::to_vec(body).unwrap_or_default()),
        Some(_) => {
            return Err(format!(
                "Request '{id}': a Content-Type header is required when a body is present."
            ));
        }
    };
    let depends_on = match r.get("dependsOn") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|d| {
                d.as_str()
                    .and_then(|d| ids.iter().position(|i| *i == d))
                    .filter(|at| ids[*at] != id)
                    .ok_or_else(|| {
                        format!("Request '{id}': dependsOn names {d}, which is not another request of the batch.")
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("Request '{id}': 'dependsOn' must be an array.")),
    };
    Ok(Item {
        id: id.to_owned(),
        method,
        path: format!("/beta/{}", path.trim_start_matches('/')),
        query: query.to_owned(),
        body,
        client_request_id,
        depends_on,
    })
}

/// Item indexes with every dependency before its dependants; an error for a cycle.
fn dependency_order(items: &[Item]) -> Result<Vec<usize>, String> {
    let mut order = Vec::with_capacity(items.len());
    let mut done = vec![false; items.len()];
    while order.len() < items.len() {
        let ready: Vec<usize> = (0..items.len())
            .filter(|i| !done[*i] && items[*i].depends_on.iter().all(|d| done[*d]))
            .collect();
        if ready.is_empty() {
            return Err("Invalid batch payload: dependsOn forms a cycle.".into());
        }
        for i in ready {
            done[i] = true;
            order.push(i);
        }
    }
    Ok(order)
}
