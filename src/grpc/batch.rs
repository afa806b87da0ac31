//! Bulk creates (AIP-233, not atomic): the Batch RPCs send the items to
//! Graph's `$batch` in groups of 20, several groups in flight; the stream
//! RPC (see `stream`) creates item by item with the same validation.
//!
//! Each item is validated as a single create is (same `Create` shape and
//! translation) and, like a single create, takes its `request_id` as its
//! Graph id when it has no chosen id, so re-sending it cannot duplicate it:
//! Graph refuses the second copy (409) and the gateway reads the first back.
//! Items Graph throttles (a 429 inside the batch) go again in a later batch
//! after their `Retry-After`; items that fail for good keep their status.

use std::{collections::HashMap, time::Duration};

use futures_util::{StreamExt, stream};
use prost::Message;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};

use super::{
    RunStateApi,
    idempotency::{Begin, Claim, MAX_STORED_RESPONSE, Outcome as Recorded, RecordKey, Refused},
    list::check,
    ops::{Create, fingerprint, same_fields},
    status,
};
use crate::convert::{
    FieldViolation,
    mask::Selection,
    names::{ComplianceScriptName, DeviceStateParent, Id, Parent},
    resources::Resource,
};
use crate::graph::{
    BatchItem, Call, GraphClient, GraphError, MAX_BATCH,
    ids::{Worlds, refuses_id},
};
use crate::pb;
use crate::state::identity;

/// Most creates in one Batch request.
pub const MAX_BATCH_REQUESTS: usize = 1000;
/// Times a throttled item is sent again before its 429 is final.
const MAX_THROTTLED_RESENDS: u32 = 6;
/// Wait before re-sending a throttled item that came without `Retry-After`.
const THROTTLE_BACKOFF: Duration = Duration::from_millis(500);

/// Limits of the bulk RPCs.
#[derive(Debug, Clone, Copy)]
pub struct BulkLimits {
    /// `$batch` requests of one Batch RPC in flight at once.
    pub batch_concurrency: usize,
    /// Items of one stream held at once (being created or awaiting sending).
    pub stream_window: usize,
}

impl Default for BulkLimits {
    fn default() -> Self {
        Self {
            batch_concurrency: 4,
            stream_window: 64,
        }
    }
}

/// A validated create, ready for Graph.
pub(super) struct Prepared<P, R: Resource> {
    pub parent: P,
    pub body: R::Graph,
    /// The id to send in the body (chosen, or the request id), where Graph
    /// is not known to ignore or refuse client ids.
    pub id: Option<Id>,
    /// The id came from a request id: a 409 is this request's own first copy.
    pub replay: bool,
    pub request_id: Option<uuid::Uuid>,
    /// As a single create's, to spot a request id reused for another request.
    pub fingerprint: u64,
}

/// Validates one create as `CreateX` does; violations are named under `prefix`.
pub(super) fn prepare<P: Parent, R: Resource>(
    c: Create<'_, P, R>,
    prefix: &str,
    errors: &mut Vec<FieldViolation>,
) -> Option<Prepared<P, R>> {
    let before = errors.len();
    let parent = check(errors, &format!("{prefix}parent"), c.parent);
    let id = if c.id.is_empty() {
        None
    } else {
        check(errors, &format!("{prefix}{}", c.id_field), Id::parse(c.id))
    };
    let request_id = if c.request_id.is_empty() {
        None
    } else {
        check(
            errors,
            &format!("{prefix}request_id"),
            uuid::Uuid::try_parse(c.request_id).map_err(|_| {
                "must be a UUID, e.g. 3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c".to_owned()
            }),
        )
    };
    let body =
        match c.resource {
            None => {
                errors.push(FieldViolation::new(
                    format!("{prefix}{}", R::FIELD),
                    "is required",
                ));
                None
            }
            Some(r) => match r.to_graph(&Selection::Create) {
                Ok(body) => Some(body),
                Err(list) => {
                    errors.extend(list.into_iter().map(|v| {
                        FieldViolation::new(format!("{prefix}{}", v.field), v.description)
                    }));
                    None
                }
            },
        };
    if errors.len() > before {
        return None;
    }
    let (parent, body) = (parent?, body?);
    let replay = id.is_none() && request_id.is_some();
    let id = id.or_else(|| request_id.and_then(|u| Id::parse(&u.hyphenated().to_string()).ok()));
    Some(Prepared {
        parent,
        body,
        id,
        replay,
        request_id,
        fingerprint: c.fingerprint,
    })
}

/// A `google.rpc.Status` for a per-item result, keeping the rich details.
pub(super) fn rpc_status(s: &Status) -> tonic_types::pb::Status {
    let mut out = tonic_types::pb::Status::decode(s.details()).unwrap_or_default();
    out.code = s.code() as i32;
    out.message = s.message().to_owned();
    out
}

/// The resource Graph created, named under its parent.
fn created<P: Parent, R: Resource>(
    item: &Prepared<P, R>,
    mut value: R::Graph,
) -> Result<R, Status> {
    let id = match (R::graph_id(&value), &item.id) {
        (Some(id), _) => Id::parse(id)
            .map_err(|why| Status::internal(format!("Graph returned an id that {why}")))?,
        (None, Some(id)) => {
            R::set_graph_id(&mut value, id.as_str().to_owned());
            id.clone()
        }
        (None, None) => return Err(Status::internal("Graph's answer to the create has no id")),
    };
    Ok(R::from_graph(value, item.parent.child_name(id.as_str())))
}

/// Reads back an item whose create met its own first copy (409).
async fn read_back<P: Parent, R: Resource>(
    graph: &GraphClient,
    item: &Prepared<P, R>,
    call: &Call<'_>,
) -> Result<R, Status> {
    let Some(id) = &item.id else {
        return Err(Status::internal("no id to read back"));
    };
    let got = graph
        .get::<serde_json::Value>(&item.parent.child_path(id), call)
        .await
        .map_err(|e| {
            let s = status::from_graph(e, graph.host());
            Status::new(
                s.code(),
                format!(
                    "the state exists, but reading it back from Graph failed: {}",
                    s.message()
                ),
            )
        })?;
    let mine = match serde_json::to_value(&item.body) {
        Ok(serde_json::Value::Object(body)) => same_fields(&body, &got.value),
        _ => false,
    };
    if !mine {
        return Err(Status::already_exists(format!(
            "`{}` already exists and holds other values",
            item.parent.child_name(id.as_str())
        )));
    }
    let value: R::Graph = serde_json::from_value(got.value).map_err(|e| {
        status::from_graph(GraphError::InvalidResponse(e.to_string()), graph.host())
    })?;
    Ok(R::from_graph(value, item.parent.child_name(id.as_str())))
}

/// What became of one item in one batch.
enum Outcome<R> {
    Done(Result<R, Status>),
    /// Throttled: send again after this long.
    Again(Duration, Status),
    /// Met its own first copy: read it back.
    ReadBack,
}

/// Sends one group (at most 20 items) as one `$batch`.
async fn send_group<P: Parent, R: Resource>(
    graph: &GraphClient,
    items: &[Prepared<P, R>],
    group: Vec<usize>,
    call: &Call<'_>,
) -> Vec<(usize, Outcome<R>)> {
    // Where Graph is known to ignore or refuse client ids, items go without.
    let bodies: Vec<_> = group
        .iter()
        .map(|&i| {
            let item = &items[i];
            let kind = Worlds::kind(&item.parent.collection_path());
            let mut body = serde_json::to_value(&item.body).unwrap_or_default();
            match (&item.id, body.as_object_mut()) {
                (Some(id), Some(map)) if graph.worlds().send_id(&kind) => {
                    map.insert("id".into(), id.as_str().into());
                    (body, Some(id.clone()))
                }
                _ => (body, None),
            }
        })
        .collect();
    let requests: Vec<_> = group
        .iter()
        .zip(&bodies)
        .map(|(&i, (body, _))| {
            BatchItem::post(i.to_string(), &items[i].parent.collection_path(), body)
        })
        .collect();
    let reply = match graph.batch(&requests, call).await {
        Ok(reply) => reply.value,
        Err(e) => {
            let s = status::from_graph(e, graph.host());
            return group
                .iter()
                .map(|&i| (i, Outcome::Done(Err(s.clone()))))
                .collect();
        }
    };
    let mut answers: HashMap<String, _> = HashMap::with_capacity(reply.responses.len());
    for r in reply.responses {
        answers.entry(r.id.clone()).or_insert(r);
    }
    let sent_ids: Vec<Option<Id>> = bodies.iter().map(|(_, id)| id.clone()).collect();
    group
        .iter()
        .zip(requests.iter())
        .enumerate()
        .map(|(pos, (&i, request))| {
            let item = &items[i];
            let Some(answer) = answers.remove(&request.id) else {
                let s = Status::unavailable(
                    "Graph's batch answer left this item out; it may or may not have been created",
                );
                return if sent_ids[pos].is_some() {
                    (i, Outcome::Again(Duration::ZERO, s))
                } else {
                    let s = status::outcome_unknown(
                        "Graph's batch answer left this item out",
                        graph.host(),
                    );
                    (i, Outcome::Done(Err(s)))
                };
            };
            let outcome = match answer.status {
                200..=299 => {
                    let value = answer
                        .body
                        .map(serde_json::from_value::<R::Graph>)
                        .transpose();
                    match value {
                        Ok(Some(v)) => {
                            if let Some(sent) = &sent_ids[pos] {
                                let kind = Worlds::kind(&item.parent.collection_path());
                                graph.worlds().learn_from_answer(
                                    &kind,
                                    sent.as_str(),
                                    R::graph_id(&v),
                                );
                            }
                            Outcome::Done(created(item, v))
                        }
                        Ok(None) => Outcome::Done(Err(Status::internal(
                            "Graph's answer to the create has no body",
                        ))),
                        Err(e) => Outcome::Done(Err(status::from_graph(
                            GraphError::InvalidResponse(e.to_string()),
                            graph.host(),
                        ))),
                    }
                }
                409 if item.replay && sent_ids[pos].is_some() => Outcome::ReadBack,
                status_code => {
                    let client_request_id = request
                        .headers
                        .get("client-request-id")
                        .cloned()
                        .unwrap_or_default();
                    let e = answer.error(graph.host(), client_request_id);
                    if status_code == 400
                        && sent_ids[pos].is_some()
                        && refuses_id(&e.code, &e.message)
                    {
                        // As a single create: this kind refuses ids; send it without.
                        let kind = Worlds::kind(&item.parent.collection_path());
                        graph.worlds().learn_rejected(&kind);
                        let s = status::from_graph(GraphError::Status(Box::new(e)), graph.host());
                        return (i, Outcome::Again(Duration::ZERO, s));
                    }
                    let wait = e.retry_after;
                    let s = status::from_graph(GraphError::Status(Box::new(e)), graph.host());
                    if status_code == 429 {
                        Outcome::Again(wait.unwrap_or(THROTTLE_BACKOFF), s)
                    } else {
                        Outcome::Done(Err(s))
                    }
                }
            };
            (i, outcome)
        })
        .collect()
}

/// Creates every item through `$batch`; results in item order.
pub(super) async fn create_all<P: Parent, R: Resource>(
    graph: &GraphClient,
    items: &[Prepared<P, R>],
    call: &Call<'_>,
    concurrency: usize,
    mut pending: Vec<usize>,
) -> Vec<Option<Result<R, Status>>> {
    let mut results: Vec<Option<Result<R, Status>>> = (0..items.len()).map(|_| None).collect();
    let mut unanswered = pending.clone();
    let mut last: HashMap<usize, Status> = HashMap::new();
    for round in 0..=MAX_THROTTLED_RESENDS {
        if pending.is_empty() {
            break;
        }
        let groups: Vec<Vec<usize>> = pending.chunks(MAX_BATCH).map(<[usize]>::to_vec).collect();
        let outcomes: Vec<_> = stream::iter(groups)
            .map(|group| send_group(graph, items, group, call))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut again = Vec::new();
        let mut wait = Duration::ZERO;
        let mut read_backs = Vec::new();
        for (i, outcome) in outcomes.into_iter().flatten() {
            match outcome {
                Outcome::Done(r) => results[i] = Some(r),
                Outcome::ReadBack => read_backs.push(i),
                Outcome::Again(delay, s) => {
                    wait = wait.max(delay);
                    again.push(i);
                    last.insert(i, s);
                }
            }
        }
        let read: Vec<_> = stream::iter(read_backs)
            .map(|i| async move { (i, read_back(graph, &items[i], call).await) })
            .buffer_unordered(concurrency.max(1) * MAX_BATCH)
            .collect()
            .await;
        for (i, r) in read {
            results[i] = Some(r);
        }
        again.sort_unstable();
        pending = again;
        if pending.is_empty() || round == MAX_THROTTLED_RESENDS {
            break;
        }
        if Instant::now() + wait >= call.deadline {
            break;
        }
        tracing::debug!(
            items = pending.len(),
            ?wait,
            "re-sending throttled batch items"
        );
        tokio::time::sleep(wait).await;
    }
    unanswered.retain(|&i| results[i].is_none());
    for i in unanswered {
        results[i] = Some(Err(last.remove(&i).unwrap_or_else(|| {
            Status::new(Code::ResourceExhausted, "Graph kept throttling this item")
        })));
    }
    results
}

/// What to record for a request id once its item is done; `None` when
/// nothing was applied (the id is released).
fn record<R: Resource>(result: &Result<R, Status>) -> Option<Recorded> {
    match result {
        Ok(resource) => {
            let encoded = resource.encode_to_vec();
            Some(Recorded::Created {
                name: resource.name().to_owned(),
                response: (encoded.len() <= MAX_STORED_RESPONSE)
                    .then(|| bytes::Bytes::from(encoded)),
                graph_request_id: None,
            })
        }
        // Kept as a single create keeps it, so a replay answers the same.
        Err(s) if status::is_outcome_unknown(s) => Some(Recorded::Unknown {
            message: format!(
                "the create may have been applied: {}",
                status::outcome_unknown_cause(s)
                    .unwrap_or_else(|| "the $batch answer was lost".to_owned())
            ),
        }),
        Err(_) => None,
    }
}

/// Each item's fingerprint as the single create of it would compute (its
/// parent filled in from the batch's), so the two replay each other.
fn item_prints<M: prost::Message + Clone>(
    common: &str,
    items: &[M],
    fields: fn(&mut M) -> (&mut String, &String),
) -> Vec<u64> {
    items
        .iter()
        .map(|item| {
            let mut own = item.clone();
            let (parent, request_id) = fields(&mut own);
            if request_id.is_empty() {
                return 0;
            }
            if parent.is_empty() {
                common.clone_into(parent);
            }
            let request_id = request_id.clone();
            fingerprint(&own, &request_id)
        })
        .collect()
}

/// The common parent of a batch applied to one item's parent text.
fn item_parent<'a>(common: &'a str, own: &'a str) -> Result<&'a str, String> {
    match (common.is_empty(), own.is_empty()) {
        (false, true) => Ok(common),
        (false, false) if own != common => Err(format!(
            "must be empty or equal to the batch's parent `{common}`"
        )),
        _ => Ok(own),
    }
}

impl RunStateApi {
    /// Validates a whole batch: nothing is sent while any item is malformed.
    fn prepare_batch<'a, P: Parent, R: Resource>(
        &self,
        common_parent: &str,
        parse: fn(&str) -> Result<P, String>,
        creates: impl ExactSizeIterator<Item = Create<'a, P, R>>,
    ) -> Result<Vec<Prepared<P, R>>, Status> {
        let mut errors = Vec::new();
        if !common_parent.is_empty()
            && let Err(why) = parse(common_parent)
        {
            errors.push(FieldViolation::new("parent", why));
        }
        let n = creates.len();
        if n == 0 {
            errors.push(FieldViolation::new(
                "requests",
                "must hold at least one create",
            ));
        }
        if n > MAX_BATCH_REQUESTS {
            errors.push(FieldViolation::new(
                "requests",
                format!("holds {n} creates; at most {MAX_BATCH_REQUESTS} are allowed"),
            ));
        }
        if !errors.is_empty() {
            return Err(status::invalid_argument(errors));
        }
        let mut prepared = Vec::with_capacity(n);
        let mut seen = HashMap::new();
        for (i, c) in creates.enumerate() {
            let prefix = format!("requests[{i}].");
            if !c.request_id.is_empty()
                && let Some(first) = seen.insert(c.request_id.to_owned(), i)
            {
                errors.push(FieldViolation::new(
                    format!("{prefix}request_id"),
                    format!("repeats the request_id of requests[{first}]"),
                ));
            }
            if let Some(p) = prepare(c, &prefix, &mut errors) {
                prepared.push(p);
            }
            if errors.len() >= 20 {
                break;
            }
        }
        if !errors.is_empty() {
            return Err(status::invalid_argument(errors));
        }
        // Two items with one chosen id would be one state: refuse it.
        let mut ids = HashMap::new();
        for (i, p) in prepared.iter().enumerate() {
            if let Some(id) = &p.id
                && let Some(first) = ids.insert(p.parent.child_name(id.as_str()), i)
            {
                errors.push(FieldViolation::new(
                    format!("requests[{i}]"),
                    format!("creates the same state as requests[{first}]"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(status::invalid_argument(errors));
        }
        Ok(prepared)
    }

    async fn batch_create<P: Parent, R: Resource>(
        &self,
        metadata: &MetadataMap,
        prepared: Vec<Prepared<P, R>>,
    ) -> Result<Vec<Result<R, Status>>, Status> {
        let authorization = self.authorize(metadata).await?;
        let call = Call {
            authorization: &authorization,
            deadline: self.deadline(metadata),
        };
        let caller = identity::caller(&authorization);
        let mut results: Vec<Option<Result<R, Status>>> =
            (0..prepared.len()).map(|_| None).collect();
        let mut claims: Vec<Option<Claim>> = (0..prepared.len()).map(|_| None).collect();
        let mut pending = Vec::with_capacity(prepared.len());
        for (i, item) in prepared.iter().enumerate() {
            let Some(rid) = item.request_id else {
                pending.push(i);
                continue;
            };
            // Same key and fingerprint as the single create, so either
            // replays the other.
            let prefix = format!("{}/{}/", item.parent, P::CHILDREN);
            let key = RecordKey::new(&caller, &prefix, rid);
            match Box::pin(
                self.request_ids
                    .begin(&key, item.fingerprint, call.deadline),
            )
            .await
            {
                Err(Refused::Reused) => {
                    results[i] = Some(Err(status::invalid_argument(vec![FieldViolation::new(
                        format!("requests[{i}].request_id"),
                        "was already used with a different request",
                    )])));
                }
                Err(Refused::Deadline) => results[i] = Some(Err(self.deadline_exceeded())),
                Ok(Begin::Replay(outcome)) => {
                    let r = Box::pin(self.replay::<P, R>(outcome, &item.parent, &call)).await;
                    results[i] = Some(r.map(Response::into_inner));
                }
                Ok(Begin::Owner(claim)) => {
                    claims[i] = Some(claim);
                    pending.push(i);
                }
            }
        }
        let sent = create_all(
            &self.graph,
            &prepared,
            &call,
            self.bulk.batch_concurrency,
            pending,
        )
        .await;
        for (i, r) in sent.into_iter().enumerate() {
            if let Some(r) = r {
                results[i] = Some(r);
            }
        }
        let results: Vec<Result<R, Status>> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::internal("the item was not sent"))))
            .collect();
        for (claim, result) in claims.into_iter().zip(&results) {
            if let Some(claim) = claim {
                match record(result) {
                    Some(outcome) => claim.finish(outcome).await,
                    None => drop(claim),
                }
            }
        }
        Ok(results)
    }

    pub(super) async fn batch_create_device_states(
        &self,
        request: Request<pb::BatchCreateScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::BatchCreateScriptDeviceStatesResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        let prints = item_prints(&req.parent, &req.requests, |r| {
            (&mut r.parent, &r.request_id)
        });
        let resources: Vec<_> = req
            .requests
            .iter_mut()
            .map(|r| r.script_device_state.take())
            .collect();
        let common = req.parent.as_str();
        let creates =
            req.requests
                .iter()
                .zip(resources)
                .zip(prints)
                .map(|((r, resource), fingerprint)| Create {
                    rpc: "BatchCreateScriptDeviceStates",
                    parent: item_parent(common, &r.parent).and_then(DeviceStateParent::parse),
                    resource,
                    id_field: "script_device_state_id",
                    id: &r.script_device_state_id,
                    request_id: &r.request_id,
                    fingerprint,
                });
        let prepared = self.prepare_batch(common, DeviceStateParent::parse, creates)?;
        let results = self.batch_create(&metadata, prepared).await?;
        use pb::script_device_state_result::Result as Item;
        Ok(Response::new(pb::BatchCreateScriptDeviceStatesResponse {
            results: results
                .into_iter()
                .map(|r| pb::ScriptDeviceStateResult {
                    result: Some(match r {
                        Ok(state) => Item::ScriptDeviceState(state),
                        Err(s) => Item::Status(rpc_status(&s)),
                    }),
                })
                .collect(),
        }))
    }

    pub(super) async fn batch_create_compliance_states(
        &self,
        request: Request<pb::BatchCreateComplianceScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::BatchCreateComplianceScriptDeviceStatesResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        let prints = item_prints(&req.parent, &req.requests, |r| {
            (&mut r.parent, &r.request_id)
        });
        let resources: Vec<_> = req
            .requests
            .iter_mut()
            .map(|r| r.compliance_script_device_state.take())
            .collect();
        let common = req.parent.as_str();
        let creates =
            req.requests
                .iter()
                .zip(resources)
                .zip(prints)
                .map(|((r, resource), fingerprint)| Create {
                    rpc: "BatchCreateComplianceScriptDeviceStates",
                    parent: item_parent(common, &r.parent).and_then(ComplianceScriptName::parse),
                    resource,
                    id_field: "compliance_script_device_state_id",
                    id: &r.compliance_script_device_state_id,
                    request_id: &r.request_id,
                    fingerprint,
                });
        let prepared = self.prepare_batch(common, ComplianceScriptName::parse, creates)?;
        let results = self.batch_create(&metadata, prepared).await?;
        use pb::compliance_script_device_state_result::Result as Item;
        Ok(Response::new(
            pb::BatchCreateComplianceScriptDeviceStatesResponse {
                results: results
                    .into_iter()
                    .map(|r| pb::ComplianceScriptDeviceStateResult {
                        result: Some(match r {
                            Ok(state) => Item::ComplianceScriptDeviceState(state),
                            Err(s) => Item::Status(rpc_status(&s)),
                        }),
                    })
                    .collect(),
            },
        ))
    }
}
