//! The three shapes every RPC takes (create, update, get), written once for
//! all resources.

use std::{
    borrow::Borrow,
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderValue;
use prost_types::FieldMask;
use tokio::time::timeout_at;
use tonic::{
    Response, Status,
    metadata::{MetadataMap, MetadataValue},
};

use super::{
    RunStateApi, context,
    idempotency::{Begin, MAX_STORED_RESPONSE, Outcome, RecordKey, Refused},
    status,
};
use crate::convert::{
    FieldViolation,
    mask::{self, Selection},
    names::{Id, Parent, ResourcePath},
    resources::Resource,
};
use crate::graph::{Call, GraphClient, GraphError, NewEntity};
use crate::state::identity;

/// The fields of a create request, before validation.
pub(super) struct Create<'a, P, R> {
    pub rpc: &'static str,
    pub parent: Result<P, String>,
    pub resource: Option<R>,
    /// The name of the request's `*_id` field.
    pub id_field: &'static str,
    pub id: &'a str,
    pub request_id: &'a str,
    /// A hash of the whole request, to spot a reused request id.
    pub fingerprint: u64,
}

/// Hashes a request message, to spot a request id reused for another
/// request; 0 (and no work) when the request has no id.
pub(super) fn fingerprint(message: &impl prost::Message, request_id: &str) -> u64 {
    if request_id.is_empty() {
        return 0;
    }
    let mut h = DefaultHasher::new();
    message.encode_to_vec().hash(&mut h);
    h.finish()
}

/// The longest deadline honoured (a day); longer ones are cut to it.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Tells the caller that Graph applied the write although the read-back failed.
fn applied_but_unread(status: Status, what: &str) -> Status {
    Status::with_details_and_metadata(
        status.code(),
        format!(
            "{what}, but reading it back from Graph failed: {}",
            status.message()
        ),
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
}

/// Everything a create needs, owned, so it can run in a task of its own.
struct CreateWork<R: Resource> {
    graph: GraphClient,
    collection: String,
    /// `{parent}/{children}/`: the new resource's name is this plus its id.
    name_prefix: String,
    /// The JSON body sent (without `id`); moved into the request.
    body: serde_json::Map<String, serde_json::Value>,
    /// The same body, typed: what a stored entity is compared with in the
    /// rare case that asks (a JSON copy is made only then).
    typed: R::Graph,
    wish: Option<String>,
    request_id: bool,
    authorization: HeaderValue,
    deadline: tokio::time::Instant,
}

/// Extra time past the deadline for the Graph client to report how a
/// create ended (it stops at the deadline itself).
const CREATE_GRACE: Duration = Duration::from_secs(2);

impl<R: Resource> CreateWork<R> {
    async fn run(self) -> Result<(R, Option<String>), GraphError> {
        let call = Call {
            authorization: &self.authorization,
            deadline: self.deadline,
        };
        let new = NewEntity {
            collection: &self.collection,
            body: self.body,
            id: self.wish.as_deref(),
            request_id: self.request_id,
        };
        let typed = &self.typed;
        let matches = move |stored: &serde_json::Value| match serde_json::to_value(typed) {
            Ok(serde_json::Value::Object(body)) => same_fields(&body, stored),
            _ => false,
        };
        let reply = timeout_at(
            self.deadline + CREATE_GRACE,
            self.graph
                .create_entity::<R::Graph>(new, &matches, R::graph_id, &call),
        )
        .await
        .unwrap_or_else(|_| Err(GraphError::OutcomeUnknown(Box::new(GraphError::Timeout))))?;
        let value = reply.value;
        let id = R::graph_id(&value)
            .ok_or_else(|| GraphError::InvalidResponse("the created entity has no id".into()))?;
        let id = Id::parse(id).map_err(|why| {
            GraphError::InvalidResponse(format!("Graph returned an id that {why}"))
        })?;
        let name = format!("{}{}", self.name_prefix, id.as_str());
        Ok((R::from_graph(value, name), reply.request_id))
    }
}

/// Whether a stored entity holds every field this create would write (so a
/// 409 or a read-back found the caller's own write, not someone else's).
pub(super) fn same_fields(
    body: &serde_json::Map<String, serde_json::Value>,
    stored: &serde_json::Value,
) -> bool {
    use serde_json::Value;
    body.iter()
        .filter(|(k, _)| *k != "id" && !k.starts_with('@'))
        .all(|(k, want)| {
            let got = stored.get(k).unwrap_or(&Value::Null);
            match (want, got) {
                (Value::String(a), Value::String(b)) if a != b => {
                    // Graph may write a timestamp in another form.
                    matches!(
                        (crate::convert::datetime::parse(a), crate::convert::datetime::parse(b)),
                        (Ok(x), Ok(y)) if x == y
                    )
                }
                _ => want == got,
            }
        })
}

/// Collects field violations; nothing reaches Graph while there is one.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result
            .map_err(|why| self.0.push(FieldViolation::new(field, why)))
            .ok()
    }

    fn extend<T>(&mut self, result: Result<T, Vec<FieldViolation>>) -> Option<T> {
        result.map_err(|errs| self.0.extend(errs)).ok()
    }

    fn required<R>(&mut self, field: &str, value: Option<R>) -> Option<R> {
        if value.is_none() {
            self.0.push(FieldViolation::new(field, "is required"));
        }
        value
    }

    fn request_id(&mut self, text: &str) -> Option<uuid::Uuid> {
        if text.is_empty() {
            return None;
        }
        self.check(
            "request_id",
            uuid::Uuid::try_parse(text).map_err(|_| {
                "must be a UUID, e.g. 3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c".to_owned()
            }),
        )
    }

    fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(status::invalid_argument(self.0))
        }
    }
}

/// A response carrying Graph's request id in `graph-request-id` metadata.
pub(super) fn respond<T>(message: T, graph_request_id: Option<String>) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(mut value) = graph_request_id.and_then(|id| id.parse::<MetadataValue<_>>().ok()) {
        // Unique per call: never indexed, so HPACK skips its table.
        value.set_sensitive(true);
        response
            .metadata_mut()
            .insert(status::GRAPH_REQUEST_ID, value);
    }
    response
}

fn internal(message: impl Into<String>) -> Status {
    Status::internal(message)
}

impl RunStateApi {
    /// The caller's deadline, a little early so the gateway answers
    /// DEADLINE_EXCEEDED with details before tonic's own timer cancels the call.
    pub(super) fn deadline(&self, metadata: &MetadataMap) -> tokio::time::Instant {
        let timeout = match context::grpc_timeout(metadata) {
            Some(t) => t.saturating_sub((t / 10).min(Duration::from_millis(20))),
            None => self.default_timeout,
        };
        tokio::time::Instant::now() + timeout.min(MAX_DEADLINE)
    }

    pub(super) fn graph_status(&self, error: GraphError) -> Status {
        status::from_graph(error, self.graph.host())
    }

    /// DEADLINE_EXCEEDED, for work cut off by `tokio::time::timeout_at`.
    ///
    /// (The timeout is applied at each call site, not in a helper `async fn`,
    /// which would hold the large work future twice.)
    pub(super) fn deadline_exceeded(&self) -> Status {
        self.graph_status(GraphError::Timeout)
    }

    /// POST `{parent}/{children}`; returns the created resource.
    ///
    /// With a `request_id`, the first call claims the id and the create runs
    /// in a task of its own, so its answer is recorded even when the caller
    /// goes away; later calls with the id get that answer.
    ///
    /// `metadata` may be owned: it is dropped once the token and deadline
    /// are read, so a call waiting on Graph does not keep its headers.
    pub(super) async fn create<P: Parent, R: Resource>(
        &self,
        metadata: impl Borrow<MetadataMap>,
        c: Create<'_, P, R>,
    ) -> Result<Response<R>, Status> {
        let mut v = Violations::default();
        let parent = v.check("parent", c.parent);
        let id = if c.id.is_empty() {
            None
        } else {
            v.check(c.id_field, Id::parse(c.id))
        };
        let request_id = v.request_id(c.request_id);
        let resource = v.required(R::FIELD, c.resource);
        let body = resource.and_then(|r| v.extend(r.to_graph(&Selection::Create)));
        v.finish()?;
        let (Some(parent), Some(body)) = (parent, body) else {
            return Err(internal("validation left no value"));
        };
        let authorization = self.authorize(metadata.borrow()).await?;
        let deadline = self.deadline(metadata.borrow());
        drop(metadata);
        let typed = body;
        let mut body = match serde_json::to_value(&typed) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(internal("the Graph body is not a JSON object")),
        };
        body.remove("id");
        // The id the gateway would like Graph to keep: the caller's wish, else
        // the request id (where Graph keeps ids, a replay then meets its own
        // first copy). Graph may ignore it; the answer carries Graph's id.
        let wish = id
            .map(|i| i.as_str().to_owned())
            .or_else(|| request_id.map(|u| u.hyphenated().to_string()));
        let work = CreateWork {
            graph: self.graph.clone(),
            collection: parent.collection_path(),
            name_prefix: format!("{parent}/{}/", P::CHILDREN),
            body,
            typed,
            wish,
            request_id: request_id.is_some(),
            authorization,
            deadline,
        };
        let Some(rid) = request_id else {
            // Boxed: the create future is large, and every call in flight
            // holds the handler's future.
            let (resource, graph_request_id) = Box::pin(work.run())
                .await
                .map_err(|e| status::from_graph(e, self.graph.host()))?;
            return Ok(respond(resource, graph_request_id));
        };

        // Boxed: the request-id path holds much more than a plain create,
        // and every call in flight would otherwise carry room for it.
        Box::pin(self.create_with_request_id(work, rid, parent, c.fingerprint, c.rpc)).await
    }

    /// A create protected by a request id: claimed, run in a task of its own
    /// and recorded (see [`RunStateApi::create`]).
    async fn create_with_request_id<P: Parent, R: Resource>(
        &self,
        work: CreateWork<R>,
        rid: uuid::Uuid,
        parent: P,
        fingerprint: u64,
        rpc: &'static str,
    ) -> Result<Response<R>, Status> {
        let deadline = work.deadline;
        // Keyed by the new resource's collection (its parent plus the kind of
        // child), so a user state and a device state under one script differ.
        let key = RecordKey::new(
            &identity::caller(&work.authorization),
            &work.name_prefix,
            rid,
        );
        let claim = match Box::pin(self.request_ids.begin(&key, fingerprint, deadline)).await {
            Err(Refused::Reused) => {
                return Err(status::invalid_argument(vec![FieldViolation::new(
                    "request_id",
                    "was already used with a different request",
                )]));
            }
            Err(Refused::Deadline) => return Err(self.deadline_exceeded()),
            Ok(Begin::Replay(outcome)) => {
                let call = Call {
                    authorization: &work.authorization,
                    deadline: work.deadline,
                };
                return Box::pin(self.replay::<P, R>(outcome, &parent, &call)).await;
            }
            Ok(Begin::Owner(claim)) => claim,
        };
        let host = self.graph.host().to_owned();
        // The RPC's trace (client-request-id, attempts) follows the create
        // into its task.
        let trace = crate::graph::trace::Trace::current();
        let task = tokio::spawn(async move {
            let result = match trace {
                Some(trace) => trace.scope(work.run()).await,
                None => work.run().await,
            };
            match &result {
                Ok((resource, graph_request_id)) => {
                    let encoded = resource.encode_to_vec();
                    let outcome = Outcome::Created {
                        name: resource.name().to_owned(),
                        response: (encoded.len() <= MAX_STORED_RESPONSE)
                            .then(|| Bytes::from(encoded)),
                        graph_request_id: graph_request_id.clone(),
                    };
                    claim.finish(outcome).await;
                }
                Err(GraphError::OutcomeUnknown(_)) => {
                    let message = result
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    claim.finish(Outcome::Unknown { message }).await;
                }
                // Nothing was applied: release the id for a retry.
                Err(e) => {
                    tracing::debug!(rpc, error = %e, "create failed; request id released");
                    drop(claim)
                }
            }
            result
        });
        let (resource, graph_request_id) = task
            .await
            .map_err(|_| internal("the create task failed"))?
            .map_err(|e| status::from_graph(e, &host))?;
        Ok(respond(resource, graph_request_id))
    }

    /// The answer recorded for a request id, again.
    pub(super) async fn replay<P: Parent, R: Resource>(
        &self,
        outcome: Outcome,
        parent: &P,
        call: &Call<'_>,
    ) -> Result<Response<R>, Status> {
        match outcome {
            Outcome::Unknown { message } => Err(status::outcome_unknown(
                message.trim_start_matches("the create may have been applied: "),
                self.graph.host(),
            )),
            Outcome::Created {
                response: Some(bytes),
                graph_request_id,
                ..
            } => {
                let resource =
                    R::decode(bytes).map_err(|e| internal(format!("recorded response: {e}")))?;
                Ok(respond(resource, graph_request_id))
            }
            // Too large to keep: read it back.
            Outcome::Created { name, .. } => {
                let id = name.rsplit('/').next().unwrap_or_default();
                let id = Id::parse(id).map_err(|e| internal(format!("recorded name: {e}")))?;
                let got = timeout_at(
                    call.deadline,
                    self.graph.get::<R::Graph>(&parent.child_path(&id), call),
                )
                .await
                .unwrap_or(Err(GraphError::Timeout))
                .map_err(|e| self.graph_status(e))?;
                Ok(respond(R::from_graph(got.value, name), got.request_id))
            }
        }
    }

    /// PATCH `{name}` with the masked fields; returns the stored resource.
    pub(super) async fn update<N: ResourcePath, R: Resource>(
        &self,
        metadata: impl Borrow<MetadataMap>,
        resource: Option<R>,
        parse: fn(&str) -> Result<N, String>,
        update_mask: Option<FieldMask>,
    ) -> Result<Response<R>, Status> {
        let mut v = Violations::default();
        let Some(resource) = v.required(R::FIELD, resource) else {
            return Err(v.finish().err().unwrap_or_else(|| internal("no resource")));
        };
        let name = v.check(&format!("{}.name", R::FIELD), parse(resource.name()));
        let selection = v.extend(mask::resolve(update_mask.as_ref(), R::WRITABLE, |f| {
            resource.is_populated(f)
        }));
        let body = selection.and_then(|s| v.extend(resource.to_graph(&s)));
        v.finish()?;
        let (Some(name), Some(body)) = (name, body) else {
            return Err(internal("validation left no value"));
        };
        let authorization = self.authorize(metadata.borrow()).await?;
        let call = Call {
            authorization: &authorization,
            deadline: self.deadline(metadata.borrow()),
        };
        drop(metadata);

        timeout_at(call.deadline, async {
            let path = name.graph_path();
            let patched = self
                .graph
                .update::<_, R::Graph>(&path, &body, &call)
                .await
                .map_err(|e| self.graph_status(e))?;
            let (value, request_id) = match patched.value {
                Some(value) => (value, patched.request_id),
                // 204: Graph stored it but sent nothing back, so read it.
                None => {
                    let got = self
                        .graph
                        .get::<R::Graph>(&path, &call)
                        .await
                        .map_err(|e| {
                            applied_but_unread(self.graph_status(e), "the update was applied")
                        })?;
                    (got.value, patched.request_id.or(got.request_id))
                }
            };
            Ok(respond(R::from_graph(value, name.to_string()), request_id))
        })
        .await
        .unwrap_or_else(|_| Err(self.deadline_exceeded()))
    }

    /// GET `{name}`.
    pub(super) async fn get<N: ResourcePath, R: Resource>(
        &self,
        metadata: impl Borrow<MetadataMap>,
        name: &str,
        parse: fn(&str) -> Result<N, String>,
    ) -> Result<Response<R>, Status> {
        let mut v = Violations::default();
        let name = v.check("name", parse(name));
        v.finish()?;
        let Some(name) = name else {
            return Err(internal("validation left no value"));
        };
        let authorization = self.authorize(metadata.borrow()).await?;
        let call = Call {
            authorization: &authorization,
            deadline: self.deadline(metadata.borrow()),
        };
        drop(metadata);
        timeout_at(call.deadline, async {
            let got = self
                .graph
                .get::<R::Graph>(&name.graph_path(), &call)
                .await
                .map_err(|e| self.graph_status(e))?;
            Ok(respond(
                R::from_graph(got.value, name.to_string()),
                got.request_id,
            ))
        })
        .await
        .unwrap_or_else(|_| Err(self.deadline_exceeded()))
    }
}
