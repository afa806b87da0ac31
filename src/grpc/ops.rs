//! The three shapes every RPC takes (create, update, get), written once for
//! all resources.

use std::{
    borrow::Borrow,
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use futures_util::FutureExt;
use prost_types::FieldMask;
use tokio::time::timeout_at;
use tonic::{
    Response, Status,
    metadata::{MetadataMap, MetadataValue},
};

use super::{RunStateApi, context, status};
use crate::convert::{
    FieldViolation, Invalid,
    mask::{self, Selection},
    names::{Id, Parent, ResourcePath},
    resources::Resource,
};
use crate::graph::{Call, GraphError};
use crate::write::{CreateError, NewState, Via};

/// The fields of a create request, before validation.
pub(crate) struct Create<'a, P, R> {
    pub parent: Result<P, Invalid>,
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
pub(crate) fn fingerprint(message: &impl prost::Message, request_id: &str) -> u64 {
    if request_id.is_empty() {
        return 0;
    }
    let mut h = DefaultHasher::new();
    message.encode_to_vec().hash(&mut h);
    h.finish()
}

/// A caller whose token is checked, and its deadline.
pub(super) struct Caller {
    authorization: http::HeaderValue,
    pub deadline: tokio::time::Instant,
}

impl Caller {
    pub fn call(&self) -> Call<'_> {
        Call {
            authorization: &self.authorization,
            deadline: self.deadline,
        }
    }
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

/// Collects field violations; nothing reaches Graph while there is one.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn check<T>(&mut self, field: &str, result: Result<T, Invalid>) -> Option<T> {
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
        self.check("request_id", request_id(text))
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

    /// Checks the caller's token and reads its deadline: what a Graph call
    /// needs from the caller.
    pub(super) async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let authorization = self.authorize(metadata).await?;
        Ok(Caller {
            authorization,
            deadline: self.deadline(metadata),
        })
    }

    /// Runs `work` until the caller's deadline; DEADLINE_EXCEEDED after it.
    /// (A plain combinator, not an `async fn`: it adds no state of its own
    /// to the handler's future.)
    pub(super) fn within<'a, T>(
        &'a self,
        deadline: tokio::time::Instant,
        work: impl Future<Output = Result<T, Status>> + 'a,
    ) -> impl Future<Output = Result<T, Status>> + 'a {
        timeout_at(deadline, work).map(move |r| r.unwrap_or_else(|_| Err(self.deadline_exceeded())))
    }

    pub(super) fn graph_status(&self, error: GraphError) -> Status {
        status::from_graph(error, self.engine.host())
    }

    /// DEADLINE_EXCEEDED, for work cut off by `tokio::time::timeout_at`.
    ///
    /// (The timeout is applied at each call site, not in a helper `async fn`,
    /// which would hold the large work future twice.)
    pub(super) fn deadline_exceeded(&self) -> Status {
        self.graph_status(GraphError::Timeout)
    }

    /// POST `{parent}/{children}`; returns the created resource. The write
    /// engine makes it exactly-once (request ids, client ids, lost answers).
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
        let item = new_state(parent, body, id, request_id, c.fingerprint);
        // Boxed: the create future is large, and every call in flight
        // holds the handler's future.
        let mut results =
            Box::pin(
                self.engine
                    .create(vec![item], Via::Alone, &authorization, deadline),
            )
            .await;
        match results.pop() {
            Some(Ok((resource, graph_request_id))) => Ok(respond(resource, graph_request_id)),
            Some(Err(e)) => Err(self.create_status(e, "request_id", R::FIELD)),
            None => Err(internal("the create has no result")),
        }
    }

    /// The status of a failed create; `request_id_field` names the field
    /// of a reused request id, `resource_field` the field holding the state.
    pub(super) fn create_status(
        &self,
        error: CreateError,
        request_id_field: &str,
        resource_field: &str,
    ) -> Status {
        create_status(error, request_id_field, resource_field, self.engine.host())
    }

    /// PATCH `{name}` with the masked fields; returns the stored resource.
    pub(super) async fn update<N: ResourcePath, R: Resource>(
        &self,
        metadata: impl Borrow<MetadataMap>,
        resource: Option<R>,
        parse: fn(&str) -> Result<N, Invalid>,
        update_mask: Option<FieldMask>,
    ) -> Result<Response<R>, Status> {
        let (name, body) =
            prepare_update(resource, parse, update_mask).map_err(status::invalid_argument)?;
        let caller = self.caller(metadata.borrow()).await?;
        let call = caller.call();
        drop(metadata);
        self.within(call.deadline, async {
            let path = name.graph_path();
            let patched = self
                .engine
                .update::<_, R::Graph>(path.clone(), &body, &call)
                .await
                .map_err(|e| status::from_write(e, R::FIELD, self.engine.host()))?;
            let (value, request_id) = match patched.value {
                Some(value) => (value, patched.request_id),
                // 204: Graph stored it but sent nothing back, so read it.
                None => {
                    let got = self
                        .engine
                        .get::<R::Graph>(path, &call)
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
    }

    /// GET `{name}`.
    pub(super) async fn get<N: ResourcePath, R: Resource>(
        &self,
        metadata: impl Borrow<MetadataMap>,
        name: &str,
        parse: fn(&str) -> Result<N, Invalid>,
    ) -> Result<Response<R>, Status> {
        let mut v = Violations::default();
        let name = v.check("name", parse(name));
        v.finish()?;
        let Some(name) = name else {
            return Err(internal("validation left no value"));
        };
        let caller = self.caller(metadata.borrow()).await?;
        let call = caller.call();
        drop(metadata);
        self.within(call.deadline, async {
            let got = self
                .engine
                .get::<R::Graph>(name.graph_path(), &call)
                .await
                .map_err(|e| self.graph_status(e))?;
            Ok(respond(
                R::from_graph(got.value, name.to_string()),
                got.request_id,
            ))
        })
        .await
    }
}

/// A `request_id`: a UUID.
pub(super) fn request_id(text: &str) -> Result<uuid::Uuid, Invalid> {
    uuid::Uuid::try_parse(text)
        .map_err(|_| "must be a UUID, e.g. 3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c".into())
}

/// The status of a failed create (see [`RunStateApi::create_status`]).
pub(crate) fn create_status(
    error: CreateError,
    request_id_field: &str,
    resource_field: &str,
    host: &str,
) -> Status {
    match error {
        CreateError::Graph(e) => status::from_write(e, resource_field, host),
        CreateError::RequestIdReused => status::invalid_argument(vec![FieldViolation::new(
            request_id_field,
            "was already used with a different request",
        )]),
        CreateError::RecordedUnknown(message) => status::outcome_unknown(
            message.trim_start_matches("the create may have been applied: "),
            host,
        ),
        CreateError::StoreUnavailable => status::state_store_unavailable(host),
    }
}

/// Validates an update as the Update RPCs do: the state's name and the
/// masked fields, translated into Graph's body.
pub(crate) fn prepare_update<N: ResourcePath, R: Resource>(
    resource: Option<R>,
    parse: fn(&str) -> Result<N, Invalid>,
    update_mask: Option<FieldMask>,
) -> Result<(N, R::Graph), Vec<FieldViolation>> {
    let mut v = Violations::default();
    let Some(resource) = v.required(R::FIELD, resource) else {
        return Err(v.0);
    };
    let name = v.check(&format!("{}.name", R::FIELD), parse(resource.name()));
    let selection = v.extend(mask::resolve(update_mask.as_ref(), R::WRITABLE, |f| {
        resource.is_populated(f)
    }));
    let body = selection.and_then(|s| v.extend(resource.to_graph(&s)));
    match (name, body) {
        (Some(name), Some(body)) if v.0.is_empty() => Ok((name, body)),
        _ if v.0.is_empty() => Err(vec![FieldViolation::new(R::FIELD, "is not valid")]),
        _ => Err(v.0),
    }
}

/// A validated create for the write engine. The id the gateway would like
/// Graph to keep is the caller's, else the request id (where Graph keeps
/// ids, a replay then meets its own first copy).
pub(crate) fn new_state<P: Parent, R: Resource>(
    parent: P,
    body: R::Graph,
    id: Option<Id>,
    request_id: Option<uuid::Uuid>,
    fingerprint: u64,
) -> NewState<R> {
    let wish = id.or_else(|| request_id.and_then(|u| Id::parse(&u.hyphenated().to_string()).ok()));
    NewState {
        collection: parent.collection_path(),
        name_prefix: format!("{parent}/{}/", P::CHILDREN),
        body,
        wish,
        request_id,
        fingerprint,
    }
}
