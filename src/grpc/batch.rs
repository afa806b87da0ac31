//! Bulk creates (AIP-233, not atomic): the Batch RPCs validate every item
//! as a single create is validated (same `Create` shape and translation),
//! then hand them to the write engine, which sends them through Graph's
//! `$batch` in groups of 20; the stream RPC (see `stream`) creates item by
//! item with the same validation.

use std::collections::HashMap;

use prost::Message;
use tonic::{Status, metadata::MetadataMap};

use super::{
    RunStateApi,
    list::check,
    ops::{Create, fingerprint, new_state},
    status,
};
use crate::convert::{
    FieldViolation, Invalid, invalid,
    mask::Selection,
    names::{Id, Parent},
    resources::Resource,
};
use crate::write::{NewState, Via};

/// Most creates in one Batch request.
pub const MAX_BATCH_REQUESTS: usize = 1000;

/// Validates one create as `CreateX` does; violations are named under `prefix`.
pub(crate) fn prepare<P: Parent, R: Resource>(
    c: Create<'_, P, R>,
    prefix: &str,
    errors: &mut Vec<FieldViolation>,
) -> Option<NewState<R>> {
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
            super::ops::request_id(c.request_id),
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
    Some(new_state(parent?, body?, id, request_id, c.fingerprint))
}

/// A `google.rpc.Status` for a per-item result, keeping the rich details.
pub(crate) fn rpc_status(s: &Status) -> tonic_types::pb::Status {
    let mut out = tonic_types::pb::Status::decode(s.details()).unwrap_or_default();
    out.code = s.code() as i32;
    out.message = s.message().to_owned();
    out
}

/// The fields of one Batch item the gateway reads.
pub(super) struct ItemFields<'a, R> {
    pub parent: &'a mut String,
    pub request_id: &'a str,
    pub id: &'a str,
    pub resource: &'a mut Option<R>,
}

/// Each item's fingerprint as the single create of it would compute (its
/// parent filled in from the batch's), so the two replay each other.
fn item_prints<M: Message + Clone, R>(
    common: &str,
    items: &[M],
    fields: fn(&mut M) -> ItemFields<'_, R>,
) -> Vec<u64> {
    items
        .iter()
        .map(|item| {
            let mut own = item.clone();
            let f = fields(&mut own);
            if f.request_id.is_empty() {
                return 0;
            }
            let request_id = f.request_id.to_owned();
            if f.parent.is_empty() {
                common.clone_into(f.parent);
            }
            fingerprint(&own, &request_id)
        })
        .collect()
}

/// The common parent of a batch applied to one item's parent text.
fn item_parent<'a>(common: &'a str, own: &'a str) -> Result<&'a str, Invalid> {
    match (common.is_empty(), own.is_empty()) {
        (false, true) => Ok(common),
        (false, false) if own != common => Err(invalid!(
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
        parse: fn(&str) -> Result<P, Invalid>,
        creates: impl ExactSizeIterator<Item = Create<'a, P, R>>,
    ) -> Result<Vec<NewState<R>>, Status> {
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
            if let Some(id) = &p.wish
                && let Some(first) = ids.insert(format!("{}{id}", p.name_prefix), i)
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

    /// A Batch RPC: validates every item (nothing is sent while one is
    /// malformed), then creates them through `$batch`; results in item order.
    pub(super) async fn batch_create<P: Parent, R: Resource, M: Message + Clone>(
        &self,
        metadata: MetadataMap,
        common: &str,
        mut requests: Vec<M>,
        parse: fn(&str) -> Result<P, Invalid>,
        fields: fn(&mut M) -> ItemFields<'_, R>,
        id_field: &'static str,
    ) -> Result<Vec<Result<R, Status>>, Status> {
        let prints = item_prints(common, &requests, fields);
        let resources: Vec<Option<R>> = requests
            .iter_mut()
            .map(|r| fields(r).resource.take())
            .collect();
        let creates =
            requests
                .iter_mut()
                .zip(resources)
                .zip(prints)
                .map(|((r, resource), fingerprint)| {
                    let f = fields(r);
                    let parent: &str = f.parent;
                    Create {
                        parent: item_parent(common, parent).and_then(parse),
                        resource,
                        id_field,
                        id: f.id,
                        request_id: f.request_id,
                        fingerprint,
                    }
                });
        let items = self.prepare_batch(common, parse, creates)?;
        let authorization = self.authorize(&metadata).await?;
        let deadline = self.deadline(&metadata);
        let results = self
            .engine
            .create(items, Via::Batch, &authorization, deadline)
            .await;
        Ok(results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.map(|(resource, _)| resource).map_err(|e| {
                    self.create_status(
                        e,
                        &format!("requests[{i}].request_id"),
                        &format!("requests[{i}].{}", R::FIELD),
                    )
                })
            })
            .collect())
    }
}
