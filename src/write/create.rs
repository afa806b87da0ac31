//! Creates, exactly once as far as Graph allows, whether they travel alone
//! or in a `$batch` (for this module a batch is only a transport):
//!
//! - a request id is claimed first; a later create with the same id gets
//!   the first answer (see [`super::records`]);
//! - the id the gateway would like Graph to keep (the caller's, else the
//!   request id) is sent only where Graph is not known to ignore or refuse
//!   it, and the id Graph returns teaches the world ([`super::ids`]);
//! - a 400 refusing the `id` property is sent again once without it;
//! - a 409 is the caller's own entity only if the stored entity holds what
//!   this create would write (else it stays 409);
//! - a lost answer is resolved by reading the id back where Graph honours
//!   ids and a request id protects the create (sent again only when
//!   certainly absent); otherwise it is [`GraphError::OutcomeUnknown`],
//!   never sent again.

use bytes::Bytes;
use http::{Method, StatusCode, header::HeaderValue};
use tokio::time::Instant;

use super::{
    Engine,
    ids::{Worlds, refuses_id},
    records::{Begin, Claim, MAX_STORED_RESPONSE, Outcome, RecordKey, Refused},
    retry::ambiguous,
    send::{Request, Sent, Via},
};
use crate::convert::{names::Id, resources::Resource};
use crate::graph::{Call, GraphError, Reply, decode, encode};
use crate::state::identity;

/// A validated create.
pub(crate) struct NewState<R: Resource> {
    /// The encoded collection path, relative to `/deviceManagement/`.
    pub collection: String,
    /// `{parent}/{children}/`: the created state's name is this plus its id.
    pub name_prefix: String,
    /// The Graph body, without `id`.
    pub body: R::Graph,
    /// The id the gateway would like Graph to keep: the caller's, else the
    /// request id.
    pub wish: Option<Id>,
    pub request_id: Option<uuid::Uuid>,
    /// A hash of the request, to spot a request id reused for another one.
    pub fingerprint: u64,
}

/// A created (or replayed) state and Graph's request id.
pub(crate) type Created<R> = (R, Option<String>);

/// Why a create failed.
#[derive(Debug)]
pub(crate) enum CreateError {
    Graph(GraphError),
    /// The request id was used before with a different request.
    RequestIdReused,
    /// The request id's first create ended with an unknown outcome.
    RecordedUnknown(String),
    /// The shared state store is unreachable and `--state-store-outage
    /// refuse`: nothing was sent.
    StoreUnavailable,
}

impl From<GraphError> for CreateError {
    fn from(e: GraphError) -> Self {
        CreateError::Graph(e)
    }
}

/// Why a duplicate answers "outcome unknown" for a claim nobody finished.
const ABANDONED: &str = "the first create with this request_id did not record its answer before its deadline (its replica may have stopped)";

/// One create's progress.
struct Progress {
    /// The id sent with it, if any.
    id: Option<Id>,
    resent_without_id: bool,
    resent_after_read: bool,
}

/// What one answer means for a create.
enum Next<T> {
    Done(Result<Reply<T>, GraphError>),
    /// Send it again (without the id, or after a read-back found nothing).
    Again,
    /// Read the id back: a 409 (`lost` false) or a lost answer.
    ReadBack {
        cause: GraphError,
        lost: bool,
    },
}

impl Engine {
    /// Creates every state, each exactly once as far as Graph allows;
    /// results in the items' order. Creates with a request id run in a task
    /// of their own, so their answers are recorded even when the caller
    /// goes away.
    pub(crate) async fn create<R: Resource>(
        &self,
        items: Vec<NewState<R>>,
        via: Via,
        authorization: &HeaderValue,
        deadline: Instant,
    ) -> Vec<Result<Created<R>, CreateError>> {
        let call = Call {
            authorization,
            deadline,
        };
        if items.iter().all(|i| i.request_id.is_none()) {
            let refs: Vec<&NewState<R>> = items.iter().collect();
            let results = self.run(&refs, via, &call).await;
            return items
                .into_iter()
                .zip(results)
                .map(|(item, r)| Ok(named(&item, r?)?))
                .collect();
        }
        // Boxed: the request-id path holds much more than a plain create.
        Box::pin(self.create_recorded(items, via, authorization.clone(), deadline)).await
    }

    async fn create_recorded<R: Resource>(
        &self,
        items: Vec<NewState<R>>,
        via: Via,
        authorization: HeaderValue,
        deadline: Instant,
    ) -> Vec<Result<Created<R>, CreateError>> {
        let call = Call {
            authorization: &authorization,
            deadline,
        };
        let caller = identity::caller(&authorization);
        let mut results: Vec<Option<Result<Created<R>, CreateError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut claims: Vec<Option<Claim>> = (0..items.len()).map(|_| None).collect();
        for (i, item) in items.iter().enumerate() {
            let Some(rid) = item.request_id else { continue };
            // Keyed by the new state's collection (its parent plus the kind
            // of child), so a user state and a device state under one
            // script differ.
            let key = RecordKey::new(&caller, &item.name_prefix, rid);
            match self.records.begin(&key, item.fingerprint, deadline).await {
                Err(Refused::Reused) => results[i] = Some(Err(CreateError::RequestIdReused)),
                Err(Refused::Deadline) => results[i] = Some(Err(GraphError::Timeout.into())),
                Err(Refused::StoreUnavailable) => {
                    results[i] = Some(Err(CreateError::StoreUnavailable))
                }
                Err(Refused::Abandoned) => {
                    results[i] = Some(Err(CreateError::RecordedUnknown(ABANDONED.into())))
                }
                Ok(Begin::Replay(outcome)) => {
                    results[i] = Some(self.replay(item, outcome, &call).await)
                }
                Ok(Begin::Owner(claim)) => claims[i] = Some(claim),
            }
        }
        let todo: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none()).collect();
        if todo.is_empty() {
            return results.into_iter().flatten().collect();
        }
        // The work and its records run in a task of their own; the RPC's
        // trace (client-request-id, attempts) follows it there.
        let n = items.len();
        let engine = self.clone();
        let trace = crate::graph::trace::Trace::current();
        let task = tokio::spawn(async move {
            let call = Call {
                authorization: &authorization,
                deadline,
            };
            let some: Vec<&NewState<R>> = todo.iter().map(|&i| &items[i]).collect();
            let work = engine.run(&some, via, &call);
            let done = match trace {
                Some(trace) => trace.scope(work).await,
                None => work.await,
            };
            for (i, result) in todo.iter().copied().zip(done) {
                let claim = claims[i].take();
                let result = result.and_then(|r| named(&items[i], r));
                if let Some(claim) = claim {
                    record(claim, &result).await;
                }
                results[i] = Some(result.map_err(CreateError::Graph));
            }
            results
        });
        match task.await {
            Ok(results) => results
                .into_iter()
                .map(|r| r.unwrap_or(Err(GraphError::Unsent.into())))
                .collect(),
            Err(_) => (0..n)
                .map(|_| Err(GraphError::InvalidResponse("the create task failed".into()).into()))
                .collect(),
        }
    }

    /// Sends the creates, in rounds: a round sends every create still
    /// pending, then reads back the ids a 409 or a lost answer asks about.
    async fn run<R: Resource>(
        &self,
        items: &[&NewState<R>],
        via: Via,
        call: &Call<'_>,
    ) -> Vec<Result<Reply<R::Graph>, GraphError>> {
        let n = items.len();
        let mut out: Vec<Option<Result<Reply<R::Graph>, GraphError>>> =
            (0..n).map(|_| None).collect();
        let bodies: Vec<serde_json::Map<String, serde_json::Value>> = items
            .iter()
            .map(|item| match serde_json::to_value(&item.body) {
                Ok(serde_json::Value::Object(mut map)) => {
                    map.remove("id");
                    map
                }
                _ => serde_json::Map::new(),
            })
            .collect();
        let mut progress: Vec<Progress> = items
            .iter()
            .map(|item| Progress {
                id: item
                    .wish
                    .clone()
                    .filter(|_| self.worlds.send_id(&Worlds::kind(&item.collection))),
                resent_without_id: false,
                resent_after_read: false,
            })
            .collect();
        let mut pending: Vec<usize> = (0..n).collect();
        while !pending.is_empty() {
            let mut requests = Vec::with_capacity(pending.len());
            let mut sending = Vec::with_capacity(pending.len());
            for &i in &pending {
                match create_body(&bodies[i], progress[i].id.as_ref()) {
                    Ok(body) => {
                        requests.push(Request {
                            method: Method::POST,
                            path: items[i].collection.clone(),
                            body: Some(body),
                        });
                        sending.push(i);
                    }
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
            let answers = self.send_all(requests, via, call).await;
            let mut again = Vec::new();
            let mut reads = Vec::new();
            for (i, answer) in sending.into_iter().zip(answers) {
                match self.judge::<R>(items[i], &mut progress[i], answer) {
                    Next::Done(r) => out[i] = Some(r),
                    Next::Again => again.push(i),
                    Next::ReadBack { cause, lost } => reads.push((i, cause, lost)),
                }
            }
            let gets = reads
                .iter()
                .filter_map(|(i, _, _)| {
                    let id = progress[*i].id.as_ref()?;
                    Some(Request::get(format!(
                        "{}/{}",
                        items[*i].collection,
                        id.encoded()
                    )))
                })
                .collect();
            let got = self.send_all(gets, Via::Alone, call).await;
            for ((i, cause, lost), stored) in reads.into_iter().zip(got) {
                let fail = |cause| {
                    if lost {
                        GraphError::OutcomeUnknown(Box::new(cause))
                    } else {
                        cause
                    }
                };
                match stored.result {
                    Ok(raw) => {
                        let stored: Result<Reply<serde_json::Value>, _> = decode(raw);
                        out[i] = Some(match stored {
                            Ok(s) if same_fields(&bodies[i], &s.value) => typed(s),
                            _ => Err(fail(cause)),
                        });
                    }
                    Err(GraphError::Status(e))
                        if lost
                            && e.status == StatusCode::NOT_FOUND
                            && !progress[i].resent_after_read =>
                    {
                        // Certainly not applied: send it again, once.
                        progress[i].resent_after_read = true;
                        again.push(i);
                    }
                    Err(_) => out[i] = Some(Err(fail(cause))),
                }
            }
            again.sort_unstable();
            pending = again;
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(GraphError::Unsent)))
            .collect()
    }

    /// What an answer means for one create.
    fn judge<R: Resource>(
        &self,
        item: &NewState<R>,
        progress: &mut Progress,
        answer: Sent,
    ) -> Next<R::Graph> {
        let kind = Worlds::kind(&item.collection);
        let error = match answer.result {
            Ok(raw) => {
                let reply: Result<Reply<R::Graph>, _> = decode(raw);
                if let (Ok(reply), Some(sent)) = (&reply, &progress.id) {
                    self.worlds
                        .learn_from_answer(&kind, sent.as_str(), R::graph_id(&reply.value));
                }
                return Next::Done(reply);
            }
            Err(e) => e,
        };
        let lost = answer.sent && ambiguous(&error);
        if progress.id.is_none() {
            return Next::Done(Err(if lost {
                GraphError::OutcomeUnknown(Box::new(error))
            } else {
                error
            }));
        }
        match &error {
            GraphError::Status(e)
                if e.status == StatusCode::BAD_REQUEST
                    && !progress.resent_without_id
                    && refuses_id(&e.code, &e.message) =>
            {
                // A 400 applied nothing: send again without the id.
                self.worlds.learn_rejected(&kind);
                tracing::warn!(kind = %kind, "Graph refuses client ids on create; sending without them from now on");
                progress.resent_without_id = true;
                progress.id = None;
                Next::Again
            }
            GraphError::Status(e) if e.status == StatusCode::CONFLICT => {
                // Graph keeps ids (it knows this one): read it back.
                self.worlds.learn_honoured(&kind);
                Next::ReadBack {
                    cause: error,
                    lost: false,
                }
            }
            _ if lost => {
                if item.request_id.is_some()
                    && self.worlds.honoured(&kind)
                    && !progress.resent_after_read
                {
                    Next::ReadBack { cause: error, lost }
                } else {
                    Next::Done(Err(GraphError::OutcomeUnknown(Box::new(error))))
                }
            }
            _ => Next::Done(Err(error)),
        }
    }

    /// The answer recorded for a request id, again.
    async fn replay<R: Resource>(
        &self,
        item: &NewState<R>,
        outcome: Outcome,
        call: &Call<'_>,
    ) -> Result<Created<R>, CreateError> {
        match outcome {
            Outcome::Unknown { message } => Err(CreateError::RecordedUnknown(message)),
            Outcome::Created {
                response: Some(bytes),
                graph_request_id,
                ..
            } => {
                let resource = R::decode(bytes).map_err(|e| {
                    GraphError::InvalidResponse(format!("the recorded response: {e}"))
                })?;
                Ok((resource, graph_request_id))
            }
            // Too large to keep: read it back.
            Outcome::Created { name, .. } => {
                let id = name.rsplit('/').next().unwrap_or_default();
                let id = Id::parse(id)
                    .map_err(|e| GraphError::InvalidResponse(format!("the recorded name: {e}")))?;
                let path = format!("{}/{}", item.collection, id.encoded());
                let got = self.get::<R::Graph>(path, call).await?;
                Ok((R::from_graph(got.value, name), got.request_id))
            }
        }
    }
}

/// The JSON body of a create, with `id` when one is sent.
fn create_body(
    body: &serde_json::Map<String, serde_json::Value>,
    id: Option<&Id>,
) -> Result<Bytes, GraphError> {
    match id {
        None => encode(body),
        Some(id) => {
            let mut body = body.clone();
            body.insert("id".into(), id.as_str().into());
            encode(&body)
        }
    }
}

/// The created state, named under its parent.
fn named<R: Resource>(
    item: &NewState<R>,
    reply: Reply<R::Graph>,
) -> Result<Created<R>, GraphError> {
    let mut value = reply.value;
    let id = match (R::graph_id(&value), &item.wish) {
        (Some(id), _) => Id::parse(id).map_err(|why| {
            GraphError::InvalidResponse(format!("Graph returned an id that {why}"))
        })?,
        (None, Some(id)) => {
            R::set_graph_id(&mut value, id.as_str().to_owned());
            id.clone()
        }
        (None, None) => {
            return Err(GraphError::InvalidResponse(
                "the created entity has no id".into(),
            ));
        }
    };
    let name = format!("{}{}", item.name_prefix, id.as_str());
    Ok((R::from_graph(value, name), reply.request_id))
}

/// Records a create's answer for its request id; a create that applied
/// nothing releases the id instead, so it can be retried.
async fn record<R: Resource>(claim: Claim, result: &Result<Created<R>, GraphError>) {
    match result {
        Ok((resource, graph_request_id)) => {
            let encoded = resource.encode_to_vec();
            let outcome = Outcome::Created {
                name: resource.name().to_owned(),
                response: (encoded.len() <= MAX_STORED_RESPONSE).then(|| Bytes::from(encoded)),
                graph_request_id: graph_request_id.clone(),
            };
            claim.finish(outcome).await;
        }
        Err(e @ GraphError::OutcomeUnknown(_)) => {
            claim
                .finish(Outcome::Unknown {
                    message: e.to_string(),
                })
                .await;
        }
        Err(e) => {
            tracing::debug!(error = %e, "create failed; request id released");
            drop(claim)
        }
    }
}

/// A stored entity read back as JSON, as `T`.
fn typed<T: serde::de::DeserializeOwned>(
    stored: Reply<serde_json::Value>,
) -> Result<Reply<T>, GraphError> {
    Ok(Reply {
        value: serde_json::from_value(stored.value)
            .map_err(|e| GraphError::InvalidResponse(e.to_string()))?,
        request_id: stored.request_id,
    })
}

/// Whether a stored entity holds every field this create would write (so a
/// 409 or a read-back found the caller's own write, not someone else's).
pub(crate) fn same_fields(
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
