//! `google.longrunning.Operations` over the outbox: Get, List (filter on
//! `done`), Wait (with `timeout`), Cancel and Delete. Operations are keyed
//! by their caller (as request-id records are): another caller's operation
//! is NOT_FOUND.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use prost::Message;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::{
    RunStateApi, status,
    submit::{no_outbox, store_status},
};
use crate::convert::FieldViolation;
use crate::outbox::{
    Outbox,
    store::{Cursor, Deleted, ListQuery, Operation, OperationId, Outcome, Store, WriteResult},
};
use crate::pb::{
    self,
    longrunning::{self as lro, operations_server::Operations},
};
use crate::state::identity;

/// Operations of one List page, at most.
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 50;
/// Encoded bytes of one List page past which no more operations are added.
const PAGE_BYTES: usize = 2 << 20;

const TYPE_PREFIX: &str = "type.googleapis.com/intune.runstates.v1.";

fn any<M: Message>(name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{TYPE_PREFIX}{name}"),
        value: message.encode_to_vec(),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The operation as `google.longrunning.Operation`; `results` (when done)
/// fill its response.
pub(crate) fn to_proto(
    outbox: &Outbox,
    op: &Operation,
    results: Option<Vec<WriteResult>>,
) -> lro::Operation {
    let c = op.counts;
    let eta = (!op.done())
        .then(|| timestamp(SystemTime::now() + crate::outbox::eta(outbox.budget, op.queued_ahead)));
    let metadata = pb::SubmitRunStatesMetadata {
        total_count: c.total as i64,
        delivered_count: c.delivered as i64,
        failed_count: c.failed as i64,
        pending_count: c.pending() as i64,
        cancelled_count: c.cancelled as i64,
        create_time: Some(timestamp(op.create_time)),
        update_time: Some(timestamp(op.update_time)),
        estimated_completion_time: eta,
    };
    let result = results.filter(|_| op.done()).map(|results| {
        let response = pb::SubmitRunStatesResponse {
            results: results.into_iter().map(result_proto).collect(),
        };
        lro::operation::Result::Response(any("SubmitRunStatesResponse", &response))
    });
    lro::Operation {
        name: format!("operations/{}", op.id.hyphenated()),
        metadata: Some(any("SubmitRunStatesMetadata", &metadata)),
        done: op.done(),
        result,
    }
}

fn result_proto(r: WriteResult) -> pb::RunStateWriteResult {
    use pb::run_state_write_result::Result as R;
    let result = match r.outcome {
        Some(Outcome::Delivered { name }) => Some(R::Name(name)),
        Some(Outcome::Failed { status }) => Some(R::Status(
            tonic_types::pb::Status::decode(status).unwrap_or_else(|_| tonic_types::pb::Status {
                code: tonic::Code::Internal as i32,
                message: "the stored status cannot be read".into(),
                details: Vec::new(),
            }),
        )),
        Some(Outcome::Cancelled) => Some(R::Status(tonic_types::pb::Status {
            code: tonic::Code::Cancelled as i32,
            message: "the operation was cancelled before this write was sent".into(),
            details: Vec::new(),
        })),
        None => None,
    };
    pb::RunStateWriteResult {
        request_id: r.request_id.hyphenated().to_string(),
        result,
    }
}

/// `operations/{uuid}` → the id.
fn parse_name(name: &str) -> Result<OperationId, Status> {
    name.strip_prefix("operations/")
        .and_then(|id| uuid::Uuid::try_parse(id).ok())
        .ok_or_else(|| {
            status::invalid_argument(vec![FieldViolation::new(
                "name",
                "must be operations/{id}, as SubmitRunStates returned it",
            )])
        })
}

/// The outbox's store, UNAVAILABLE while it is not open.
fn store(outbox: &Outbox) -> Result<&std::sync::Arc<dyn Store>, Status> {
    outbox.store().map_err(store_status)
}

/// The caller's operation `id`; NOT_FOUND for anyone else's.
async fn find(outbox: &Outbox, caller: &str, id: OperationId) -> Result<Operation, Status> {
    store(outbox)?
        .get(caller, id)
        .await
        .map_err(store_status)?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: OperationId) -> Status {
    Status::not_found(format!("operations/{} does not exist", id.hyphenated()))
}

/// `done=true`, `done = false` (AIP-160), or empty.
fn parse_filter(filter: &str) -> Result<Option<bool>, Status> {
    let compact: String = filter.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.as_str() {
        "" => Ok(None),
        "done=true" | "done:true" => Ok(Some(true)),
        "done=false" | "done:false" => Ok(Some(false)),
        _ => Err(status::invalid_argument(vec![FieldViolation::new(
            "filter",
            "supports only `done = true` or `done = false`",
        )])),
    }
}

fn encode_cursor(c: Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        c.create_ms,
        c.id.hyphenated()
    ))
}

fn decode_cursor(token: &str) -> Result<Cursor, Status> {
    let bad = || {
        status::invalid_argument(vec![FieldViolation::new(
            "page_token",
            "is not a page token this List returned",
        )])
    };
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (ms, id) = text.split_once(':').ok_or_else(bad)?;
    Ok(Cursor {
        create_ms: ms.parse().map_err(|_| bad())?,
        id: uuid::Uuid::try_parse(id).map_err(|_| bad())?,
    })
}

/// A request naming one operation.
trait Named {
    fn name(&self) -> &str;
}

macro_rules! named {
    ($($request:ty),*) => {$(
        impl Named for $request {
            fn name(&self) -> &str {
                &self.name
            }
        }
    )*};
}

named!(
    lro::GetOperationRequest,
    lro::DeleteOperationRequest,
    lro::CancelOperationRequest
);

struct OnOne {
    outbox: std::sync::Arc<Outbox>,
    caller: String,
    id: OperationId,
}

impl RunStateApi {
    /// The outbox and the caller of an Operations call (whose token then
    /// serves the drain of its writes).
    async fn operations_caller(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(std::sync::Arc<Outbox>, String), Status> {
        let Some(outbox) = self.outbox.clone() else {
            return Err(no_outbox());
        };
        let authorization = self.authorize(metadata).await?;
        let caller = identity::caller(&authorization);
        outbox.tokens.remember(&caller, &authorization);
        outbox.wake.notify_one();
        Ok((outbox, caller))
    }

    /// A call on one operation: its parsed name, then the outbox and the
    /// caller.
    async fn on_one<R: Named>(&self, request: Request<R>) -> Result<OnOne, Status> {
        let (metadata, _, req) = request.into_parts();
        let id = parse_name(req.name())?;
        let (outbox, caller) = self.operations_caller(&metadata).await?;
        Ok(OnOne { outbox, caller, id })
    }

    /// The operation with its results when done.
    async fn load(
        outbox: &Outbox,
        caller: &str,
        id: OperationId,
    ) -> Result<lro::Operation, Status> {
        let op = find(outbox, caller, id).await?;
        let results = if op.done() {
            store(outbox)?
                .results(caller, id)
                .await
                .map_err(store_status)?
        } else {
            None
        };
        Ok(to_proto(outbox, &op, results))
    }
}

#[tonic::async_trait]
impl Operations for RunStateApi {
    async fn list_operations(
        &self,
        request: Request<lro::ListOperationsRequest>,
    ) -> Result<Response<lro::ListOperationsResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let done = parse_filter(&req.filter)?;
        if !req.name.is_empty() && req.name != "operations" {
            return Err(status::invalid_argument(vec![FieldViolation::new(
                "name",
                "must be empty or `operations`",
            )]));
        }
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n < 0 => {
                return Err(status::invalid_argument(vec![FieldViolation::new(
                    "page_size",
                    "must not be negative",
                )]));
            }
            n => (n as usize).min(MAX_PAGE),
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(decode_cursor(&req.page_token)?)
        };
        let (outbox, caller) = self.operations_caller(&metadata).await?;
        let page = store(&outbox)?
            .list(
                &caller,
                ListQuery {
                    done,
                    page_size,
                    after,
                },
            )
            .await
            .map_err(store_status)?;
        let mut operations = Vec::with_capacity(page.operations.len());
        let mut bytes = 0;
        let mut last = None;
        let n = page.operations.len();
        for op in page.operations {
            let results = if op.done() {
                store(&outbox)?
                    .results(&caller, op.id)
                    .await
                    .map_err(store_status)?
            } else {
                None
            };
            let proto = to_proto(&outbox, &op, results);
            bytes += proto.encoded_len();
            last = Some(Cursor {
                create_ms: op
                    .create_time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                id: op.id,
            });
            operations.push(proto);
            if bytes >= PAGE_BYTES {
                break;
            }
        }
        let cut = operations.len() < n;
        let next_page_token = match (page.next.is_some() || cut, last) {
            (true, Some(c)) => encode_cursor(c),
            _ => String::new(),
        };
        Ok(Response::new(lro::ListOperationsResponse {
            operations,
            next_page_token,
            unreachable: Vec::new(),
        }))
    }

    async fn get_operation(
        &self,
        request: Request<lro::GetOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let OnOne { outbox, caller, id } = self.on_one(request).await?;
        Ok(Response::new(Self::load(&outbox, &caller, id).await?))
    }

    async fn delete_operation(
        &self,
        request: Request<lro::DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let OnOne { outbox, caller, id } = self.on_one(request).await?;
        match store(&outbox)?
            .delete(&caller, id)
            .await
            .map_err(store_status)?
        {
            Deleted::Deleted => Ok(Response::new(())),
            Deleted::NotFound => Err(not_found(id)),
            Deleted::NotDone => Err(Status::failed_precondition(format!(
                "operations/{} still has writes pending: cancel it (CancelOperation) or wait for it before deleting it",
                id.hyphenated()
            ))),
        }
    }

    async fn cancel_operation(
        &self,
        request: Request<lro::CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let OnOne { outbox, caller, id } = self.on_one(request).await?;
        let before = find(&outbox, &caller, id).await?;
        let after = store(&outbox)?
            .cancel(&caller, id, SystemTime::now())
            .await
            .map_err(store_status)?
            .ok_or_else(|| not_found(id))?;
        let cancelled = after
            .counts
            .cancelled
            .saturating_sub(before.counts.cancelled);
        metrics::counter!(crate::metrics::OUTBOX_CANCELLED).increment(cancelled);
        outbox.progress.notify_waiters();
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<lro::WaitOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let (metadata, _, req) = request.into_parts();
        let id = parse_name(&req.name)?;
        let wait = match req.timeout {
            Some(t) if t.seconds < 0 || t.nanos < 0 => {
                return Err(status::invalid_argument(vec![FieldViolation::new(
                    "timeout",
                    "must not be negative",
                )]));
            }
            Some(t) => Some(Duration::new(
                t.seconds as u64,
                t.nanos.clamp(0, 999_999_999) as u32,
            )),
            None => None,
        };
        let deadline = self.deadline(&metadata);
        let until = match wait {
            Some(w) => deadline.min(tokio::time::Instant::now() + w),
            None => deadline,
        };
        let (outbox, caller) = self.operations_caller(&metadata).await?;
        loop {
            let progress = outbox.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let op = Self::load(&outbox, &caller, id).await?;
            if op.done || tokio::time::Instant::now() >= until {
                return Ok(Response::new(op));
            }
            // Progress wakes it; the timer is a floor for missed wakes.
            let tick = (tokio::time::Instant::now() + Duration::from_secs(1)).min(until);
            tokio::select! {
                _ = progress => {}
                _ = tokio::time::sleep_until(tick) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_filters_and_cursors() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(parse_name(&format!("operations/{id}")).unwrap(), id);
        for bad in ["", "operations/", "operations/x", &id.to_string(), "ops/1"] {
            assert_eq!(
                parse_name(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
        assert_eq!(parse_filter("").unwrap(), None);
        assert_eq!(parse_filter("done = true").unwrap(), Some(true));
        assert_eq!(parse_filter("done=false").unwrap(), Some(false));
        assert!(parse_filter("name = x").is_err());
        let c = Cursor { create_ms: 42, id };
        assert_eq!(decode_cursor(&encode_cursor(c)).unwrap(), c);
        assert!(decode_cursor("!!").is_err());
    }
}
