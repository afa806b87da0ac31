//! SubmitRunStates: validates every write exactly as its synchronous RPC
//! would (all or nothing), then stores them in the outbox and answers with
//! a long-running operation. [`plan`] is also how the drain reads a stored
//! write back.

use std::{collections::HashMap, time::SystemTime};

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{
    RunStateApi,
    batch::prepare,
    ops::{Create, fingerprint, prepare_update},
    status,
};
use crate::convert::{
    FieldViolation, Invalid,
    names::{
        ComplianceScriptName, ComplianceStateName, DeviceStateName, DeviceStateParent,
        ResourcePath, ScriptName, UserStateName,
    },
    resources::Resource,
};
use crate::outbox::store::{NewWrite, Refused, StoreError, Submission, WriteKind};
use crate::pb::{self, longrunning, run_state_write::Write};
use crate::state::identity;
use crate::write::NewState;

/// Most writes in one submission.
pub const MAX_WRITES: usize = 10_000;

/// The `ErrorInfo` domain of the outbox's own refusals.
const DOMAIN: &str = "runstate-gateway";

/// A PATCH or DELETE of a named state.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The state's name.
    pub name: String,
    /// Its Graph path, relative to `/deviceManagement/`.
    pub path: String,
    /// The PATCH body (an update) or `None` (a delete).
    pub body: Option<serde_json::Map<String, serde_json::Value>>,
    /// A delete of a missing state is OK.
    pub allow_missing: bool,
}

/// A validated write, ready for the write engine.
pub(crate) enum Plan {
    CreateUser(NewState<pb::ScriptUserState>),
    CreateDevice(NewState<pb::ScriptDeviceState>),
    CreateCompliance(NewState<pb::ComplianceScriptDeviceState>),
    Update(Change),
    Delete(Change),
}

impl Plan {
    pub fn kind(&self) -> WriteKind {
        match self {
            Plan::CreateUser(_) | Plan::CreateDevice(_) | Plan::CreateCompliance(_) => {
                WriteKind::Create
            }
            Plan::Update(_) => WriteKind::Update,
            Plan::Delete(_) => WriteKind::Delete,
        }
    }

    /// The state it writes (a create: the name it asks Graph to keep).
    pub fn entity(&self) -> String {
        fn created<R: Resource>(n: &NewState<R>) -> String {
            let id = n.wish.as_ref().map(|w| w.as_str()).unwrap_or_default();
            format!("{}{id}", n.name_prefix)
        }
        match self {
            Plan::CreateUser(n) => created(n),
            Plan::CreateDevice(n) => created(n),
            Plan::CreateCompliance(n) => created(n),
            Plan::Update(c) | Plan::Delete(c) => c.name.clone(),
        }
    }
}

/// The violations of a create's own `request_id`, which must be empty or
/// equal to the write's.
fn own_request_id(own: &mut String, write: &str, field: &str, errors: &mut Vec<FieldViolation>) {
    if own.is_empty() {
        write.clone_into(own);
    } else if own != write {
        errors.push(FieldViolation::new(
            field,
            "must be empty or equal to the write's request_id",
        ));
    }
}

/// A create's plan: validated by the create RPCs' own code, its request id
/// the write's, its fingerprint the one the synchronous create computes
/// (so the two replay each other).
macro_rules! create_plan {
    ($req:expr, $rid:expr, $prefix:expr, $errors:expr, $field:literal, $P:ty, $res:ident, $id:ident, $variant:ident) => {{
        let mut req = $req;
        own_request_id(
            &mut req.request_id,
            $rid,
            &format!("{}{}.request_id", $prefix, $field),
            $errors,
        );
        let print = fingerprint(&req, &req.request_id);
        let create = Create {
            parent: <$P>::parse(&req.parent),
            resource: req.$res.take(),
            id_field: stringify!($id),
            id: &req.$id,
            request_id: &req.request_id,
            fingerprint: print,
        };
        prepare(create, &format!("{}{}.", $prefix, $field), $errors).map(Plan::$variant)
    }};
}

fn update_plan<N: ResourcePath, R: Resource>(
    resource: Option<R>,
    parse: fn(&str) -> Result<N, Invalid>,
    mask: Option<prost_types::FieldMask>,
    prefix: &str,
    errors: &mut Vec<FieldViolation>,
) -> Option<Plan> {
    match prepare_update(resource, parse, mask) {
        Ok((name, body)) => match serde_json::to_value(&body) {
            Ok(serde_json::Value::Object(body)) => Some(Plan::Update(Change {
                name: name.to_string(),
                path: name.graph_path(),
                body: Some(body),
                allow_missing: false,
            })),
            _ => {
                errors.push(FieldViolation::new(
                    prefix.trim_end_matches('.'),
                    "cannot be written as a JSON object",
                ));
                None
            }
        },
        Err(list) => {
            errors.extend(
                list.into_iter()
                    .map(|v| FieldViolation::new(format!("{prefix}{}", v.field), v.description)),
            );
            None
        }
    }
}

fn delete_plan<N: ResourcePath>(
    name: &str,
    parse: fn(&str) -> Result<N, Invalid>,
    allow_missing: bool,
    prefix: &str,
    errors: &mut Vec<FieldViolation>,
) -> Option<Plan> {
    match parse(name) {
        Ok(name) => Some(Plan::Delete(Change {
            name: name.to_string(),
            path: name.graph_path(),
            body: None,
            allow_missing,
        })),
        Err(why) => {
            errors.push(FieldViolation::new(format!("{prefix}name"), why));
            None
        }
    }
}

/// Validates one write; violations are named under `prefix` (e.g.
/// `writes[3].`). Returns the plan and the request id.
pub(crate) fn plan(
    write: pb::RunStateWrite,
    prefix: &str,
    errors: &mut Vec<FieldViolation>,
) -> Option<(Plan, uuid::Uuid)> {
    let before = errors.len();
    let request_id = if write.request_id.is_empty() {
        errors.push(FieldViolation::new(
            format!("{prefix}request_id"),
            "is required (a UUID)",
        ));
        None
    } else {
        uuid::Uuid::try_parse(&write.request_id)
            .map_err(|_| {
                errors.push(FieldViolation::new(
                    format!("{prefix}request_id"),
                    "must be a UUID, e.g. 3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c",
                ))
            })
            .ok()
    };
    // The canonical text, so a create's own id compares equal.
    let rid = request_id
        .map(|u| u.hyphenated().to_string())
        .unwrap_or_default();
    let rid = if write.request_id.eq_ignore_ascii_case(&rid) {
        write.request_id.as_str()
    } else {
        rid.as_str()
    };
    let plan = match write.write.clone() {
        None => {
            errors.push(FieldViolation::new(
                format!("{prefix}write"),
                "is required: set one of the create_*, update_* or delete_* requests",
            ));
            None
        }
        Some(Write::CreateScriptUserState(req)) => create_plan!(
            req,
            rid,
            prefix,
            errors,
            "create_script_user_state",
            ScriptName,
            script_user_state,
            script_user_state_id,
            CreateUser
        ),
        Some(Write::CreateScriptDeviceState(req)) => create_plan!(
            req,
            rid,
            prefix,
            errors,
            "create_script_device_state",
            DeviceStateParent,
            script_device_state,
            script_device_state_id,
            CreateDevice
        ),
        Some(Write::CreateComplianceScriptDeviceState(req)) => create_plan!(
            req,
            rid,
            prefix,
            errors,
            "create_compliance_script_device_state",
            ComplianceScriptName,
            compliance_script_device_state,
            compliance_script_device_state_id,
            CreateCompliance
        ),
        Some(Write::UpdateScriptUserState(req)) => update_plan(
            req.script_user_state,
            UserStateName::parse,
            req.update_mask,
            &format!("{prefix}update_script_user_state."),
            errors,
        ),
        Some(Write::UpdateScriptDeviceState(req)) => update_plan(
            req.script_device_state,
            DeviceStateName::parse,
            req.update_mask,
            &format!("{prefix}update_script_device_state."),
            errors,
        ),
        Some(Write::UpdateComplianceScriptDeviceState(req)) => update_plan(
            req.compliance_script_device_state,
            ComplianceStateName::parse,
            req.update_mask,
            &format!("{prefix}update_compliance_script_device_state."),
            errors,
        ),
        Some(Write::DeleteScriptUserState(req)) => delete_plan(
            &req.name,
            UserStateName::parse,
            req.allow_missing,
            &format!("{prefix}delete_script_user_state."),
            errors,
        ),
        Some(Write::DeleteScriptDeviceState(req)) => delete_plan(
            &req.name,
            DeviceStateName::parse,
            req.allow_missing,
            &format!("{prefix}delete_script_device_state."),
            errors,
        ),
        Some(Write::DeleteComplianceScriptDeviceState(req)) => delete_plan(
            &req.name,
            ComplianceStateName::parse,
            req.allow_missing,
            &format!("{prefix}delete_compliance_script_device_state."),
            errors,
        ),
    };
    if errors.len() > before {
        return None;
    }
    Some((plan?, request_id?))
}

/// A stable hash of a write (its encoded form, the create's own request id
/// filled in), kept with it to spot a request id reused for another write.
fn write_print(write: &pb::RunStateWrite) -> u64 {
    let mut w = write.clone();
    match &mut w.write {
        Some(Write::CreateScriptUserState(r)) => r.request_id.clone_from(&w.request_id),
        Some(Write::CreateScriptDeviceState(r)) => r.request_id.clone_from(&w.request_id),
        Some(Write::CreateComplianceScriptDeviceState(r)) => r.request_id.clone_from(&w.request_id),
        _ => {}
    }
    let digest = Sha256::digest(w.encode_to_vec());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Validates a whole submission: nothing is stored while a write is malformed.
fn validate(writes: Vec<pb::RunStateWrite>) -> Result<Vec<NewWrite>, Status> {
    let n = writes.len();
    if n == 0 || n > MAX_WRITES {
        return Err(status::invalid_argument(vec![FieldViolation::new(
            "writes",
            format!("holds {n} writes; give 1 to {MAX_WRITES}"),
        )]));
    }
    let mut errors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    for (i, write) in writes.into_iter().enumerate() {
        let prefix = format!("writes[{i}].");
        let before = errors.len();
        let print = write_print(&write);
        let payload = bytes::Bytes::from(write.encode_to_vec());
        let Some((plan, request_id)) = plan(write, &prefix, &mut errors) else {
            if errors.len() >= 20 {
                break;
            }
            continue;
        };
        if let Some(first) = seen.insert(request_id.hyphenated().to_string(), i) {
            errors.push(FieldViolation::new(
                format!("{prefix}request_id"),
                format!("repeats the request_id of writes[{first}]"),
            ));
        }
        if errors.len() > before {
            continue;
        }
        out.push(NewWrite {
            request_id,
            kind: plan.kind(),
            entity: plan.entity(),
            fingerprint: print,
            payload,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(status::invalid_argument(errors))
    }
}

/// FAILED_PRECONDITION: the gateway runs without an outbox.
pub(super) fn no_outbox() -> Status {
    Status::with_error_details(
        tonic::Code::FailedPrecondition,
        "this gateway has no outbox: start it with --outbox PATH (RUNSTATE_OUTBOX) to accept SubmitRunStates and serve operations",
        ErrorDetails::with_error_info("OUTBOX_DISABLED", DOMAIN, HashMap::new()),
    )
}

/// UNAVAILABLE: the store cannot be read or written now.
pub(super) fn store_status(e: StoreError) -> Status {
    tracing::warn!(error = %e, "outbox store call failed");
    Status::with_error_details(
        tonic::Code::Unavailable,
        format!("{e}; retry later"),
        ErrorDetails::with_error_info("OUTBOX_UNAVAILABLE", DOMAIN, HashMap::new()),
    )
}

impl RunStateApi {
    pub(super) async fn submit_run_states(
        &self,
        request: Request<pb::SubmitRunStatesRequest>,
    ) -> Result<Response<longrunning::Operation>, Status> {
        let (metadata, _, req) = request.into_parts();
        let Some(outbox) = self.outbox.clone() else {
            return Err(no_outbox());
        };
        let writes = validate(req.writes)?;
        let authorization = self.authorize(&metadata).await?;
        let caller = identity::caller(&authorization);
        let tenant = identity::tenant(&authorization);
        outbox.tokens.remember(&caller, &authorization);
        let submission = Submission {
            caller,
            tenant,
            writes,
            now: SystemTime::now(),
        };
        let stored = outbox
            .store()
            .map_err(store_status)?
            .submit(submission, outbox.limits)
            .await
            .map_err(store_status)?;
        match stored {
            Ok(op) => {
                outbox.wake.notify_one();
                metrics::counter!(crate::metrics::OUTBOX_ACCEPTED).increment(op.counts.total);
                Ok(Response::new(super::operations::to_proto(
                    &outbox, &op, None,
                )))
            }
            Err(Refused::Reused { index }) => {
                Err(status::invalid_argument(vec![FieldViolation::new(
                    format!("writes[{index}].request_id"),
                    "was submitted before with a different write",
                )]))
            }
            Err(Refused::Full {
                pending_writes,
                pending_bytes,
            }) => {
                let limits = outbox.limits;
                let wait =
                    crate::outbox::eta(outbox.budget, 1).max(std::time::Duration::from_secs(1));
                let mut details = ErrorDetails::with_error_info(
                    "OUTBOX_FULL",
                    DOMAIN,
                    HashMap::from([
                        ("pending_writes".to_owned(), pending_writes.to_string()),
                        ("pending_bytes".to_owned(), pending_bytes.to_string()),
                    ]),
                );
                details.set_retry_info(Some(wait));
                Err(Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "the outbox of this tenant holds {pending_writes} writes ({pending_bytes} bytes) and would pass its limit of {} writes or {} bytes (--outbox-max-pending); nothing was stored: retry later",
                        limits.max_writes, limits.max_bytes
                    ),
                    details,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_create(rid: &str, own: &str) -> pb::RunStateWrite {
        pb::RunStateWrite {
            request_id: rid.into(),
            write: Some(Write::CreateScriptUserState(
                pb::CreateScriptUserStateRequest {
                    parent: "deviceManagementScripts/s1".into(),
                    script_user_state: Some(pb::ScriptUserState {
                        user_principal_name: Some("a@b.c".into()),
                        ..Default::default()
                    }),
                    request_id: own.into(),
                    ..Default::default()
                },
            )),
        }
    }

    const RID: &str = "3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c";

    #[test]
    fn a_create_takes_the_write_request_id() {
        let mut errors = Vec::new();
        let (plan, rid) = plan(user_create(RID, ""), "writes[0].", &mut errors).unwrap();
        assert!(errors.is_empty());
        assert_eq!(rid.to_string(), RID);
        let Plan::CreateUser(n) = &plan else { panic!() };
        assert_eq!(n.request_id, Some(rid));
        assert_eq!(
            plan.entity(),
            format!("deviceManagementScripts/s1/userRunStates/{RID}")
        );
        // Equal own id: the same plan and fingerprint.
        assert_eq!(
            write_print(&user_create(RID, "")),
            write_print(&user_create(RID, RID))
        );
    }

    #[test]
    fn violations_are_named_under_the_write() {
        let mut errors = Vec::new();
        let other = "11111111-2222-4333-8444-555555555555";
        assert!(plan(user_create(RID, other), "writes[2].", &mut errors).is_none());
        assert_eq!(
            errors[0].field,
            "writes[2].create_script_user_state.request_id"
        );
        errors.clear();
        assert!(plan(user_create("", ""), "writes[0].", &mut errors).is_none());
        assert_eq!(errors[0].field, "writes[0].request_id");
        errors.clear();
        let none = pb::RunStateWrite {
            request_id: RID.into(),
            write: None,
        };
        assert!(plan(none, "writes[1].", &mut errors).is_none());
        assert_eq!(errors[0].field, "writes[1].write");
        let err = validate(vec![user_create(RID, ""), user_create(RID, "")]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("writes[1].request_id"),
            "{}",
            err.message()
        );
    }
}
