//! Graph errors and bad requests → gRPC statuses with rich details.
//!
//! The one table from Graph HTTP statuses to gRPC codes is [`code_for`]; the
//! README's error table is this function in prose.

use std::{collections::HashMap, time::Duration};

use http::{Method, StatusCode};
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

use crate::convert::FieldViolation;
use crate::graph::{GraphError, StatusError};

/// Response metadata key holding Graph's `request-id`.
pub const GRAPH_REQUEST_ID: &str = "graph-request-id";

/// Response metadata key holding the `client-request-id` sent to Graph.
pub const CLIENT_REQUEST_ID: &str = "client-request-id";

/// Graph's error code for a route it lists in metadata but does not serve.
const UNSERVED_ROUTE: &str = "No method match route template";

/// Suggested wait after a 429 that came without `Retry-After`.
const DEFAULT_THROTTLE_DELAY: Duration = Duration::from_secs(2);

/// The gRPC code for a Graph HTTP error status. Statuses Graph is known to
/// send map one by one; any other maps by its class:
/// - another 4xx is FAILED_PRECONDITION: the gateway checked the request's
///   arguments before sending it, so Graph refuses it for a state of its own
///   (gone, locked, a failed dependency...), which retrying will not change;
/// - another 5xx is UNAVAILABLE (a create it leaves in doubt is
///   OUTCOME_UNKNOWN before it gets here: see `StatusError::leaves_outcome_unknown`);
/// - anything else (an unexpected 1xx or 3xx) is UNKNOWN.
pub fn code_for(status: StatusCode, method: &Method) -> Code {
    match status.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        408 => Code::DeadlineExceeded,
        409 if *method == Method::POST => Code::AlreadyExists,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        // Payload or headers too large: the request's content is at fault.
        413 | 431 => Code::InvalidArgument,
        429 => Code::ResourceExhausted,
        500 => Code::Internal,
        502..=504 => Code::Unavailable,
        // Insufficient storage: Graph has no room for what was sent.
        507 => Code::ResourceExhausted,
        n => match n / 100 {
            4 => Code::FailedPrecondition,
            5 => Code::Unavailable,
            _ => Code::Unknown,
        },
    }
}

/// Most violations reported in one status (a hostile request can make many).
const MAX_VIOLATIONS: usize = 20;

/// INVALID_ARGUMENT with a `BadRequest` listing the violations (each once,
/// at most [`MAX_VIOLATIONS`]).
pub fn invalid_argument(mut violations: Vec<FieldViolation>) -> Status {
    let mut seen = std::collections::HashSet::new();
    violations.retain(|v| seen.insert((v.field.clone(), v.description.clone())));
    violations.truncate(MAX_VIOLATIONS);
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The status for a failed write of the request's field `resource`: a
/// body over Graph's limit names the field within it.
pub fn from_write(error: GraphError, resource: &str, host: &str) -> Status {
    match error {
        GraphError::BodyTooLarge { field, size } => body_too_large(resource, &field, size),
        e => from_graph(e, host),
    }
}

/// The status for a failed Graph call.
pub fn from_graph(error: GraphError, host: &str) -> Status {
    match error {
        GraphError::Status(e) => from_status_error(*e),
        GraphError::Unavailable { message, .. } => {
            let details = ErrorDetails::with_error_info("GRAPH_UNREACHABLE", host, HashMap::new());
            Status::with_error_details(
                Code::Unavailable,
                format!("could not reach Graph: {message}"),
                details,
            )
        }
        GraphError::Timeout => {
            let details = ErrorDetails::with_error_info("GRAPH_TIMEOUT", host, HashMap::new());
            Status::with_error_details(
                Code::DeadlineExceeded,
                "Graph did not answer before the deadline",
                details,
            )
        }
        GraphError::Unsent => {
            let details = ErrorDetails::with_error_info("NOT_SENT", host, HashMap::new());
            Status::with_error_details(
                Code::DeadlineExceeded,
                "the deadline passed before this write was sent to Graph; nothing was sent, so it is safe to retry",
                details,
            )
        }
        GraphError::BodyTooLarge { field, size } => body_too_large("", &field, size),
        GraphError::OutcomeUnknown(cause) => outcome_unknown(&cause.to_string(), host),
        GraphError::WriteBudget { retry_after } => {
            budget_exhausted("WRITE_BUDGET_EXHAUSTED", "write", retry_after, host)
        }
        GraphError::ReadBudget { retry_after } => {
            budget_exhausted("READ_BUDGET_EXHAUSTED", "read", retry_after, host)
        }
        GraphError::InvalidResponse(why) => {
            let details =
                ErrorDetails::with_error_info("INVALID_GRAPH_RESPONSE", host, HashMap::new());
            Status::with_error_details(
                Code::Internal,
                format!("Graph sent a response the gateway cannot read: {why}"),
                details,
            )
        }
    }
}

/// ErrorInfo reason of a create refused while the shared state store is
/// unreachable (`--state-store-outage refuse`).
pub const STATE_STORE_UNAVAILABLE: &str = "STATE_STORE_UNAVAILABLE";

/// UNAVAILABLE with `RetryInfo`: a create with a request id, refused before
/// anything was sent because its record cannot be shared now.
pub fn state_store_unavailable(host: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(STATE_STORE_UNAVAILABLE, host, HashMap::new());
    details.set_retry_info(Some(crate::state::redis::RETRY_AFTER_FAILURE));
    Status::with_error_details(
        Code::Unavailable,
        "the shared state store is unreachable, so this request_id cannot be kept exactly once (--state-store-outage refuse); nothing was sent to Graph: retry later",
        details,
    )
}

/// INVALID_ARGUMENT for a body over Graph's limit, blaming `field` (Graph's
/// JSON name; empty for the whole body) of the request's field `resource`
/// (empty when unknown).
pub fn body_too_large(resource: &str, field: &str, size: usize) -> Status {
    let path = [resource.to_owned(), snake_case(field)]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    invalid_argument(vec![FieldViolation::new(
        path,
        format!(
            "makes the request {size} bytes once encoded as JSON for Graph, over the {} byte limit",
            crate::graph::MAX_REQUEST_BODY_BYTES
        ),
    )])
}

/// `resultMessage` → `result_message`.
pub fn snake_case(json_name: &str) -> String {
    let mut out = String::with_capacity(json_name.len() + 4);
    for c in json_name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// ErrorInfo reason of a write whose outcome is unknown.
pub const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";

/// UNKNOWN with reason OUTCOME_UNKNOWN: the write may have been applied.
/// The cause is also in the `ErrorInfo` metadata (`cause`).
pub fn outcome_unknown(cause: &str, host: &str) -> Status {
    let metadata = HashMap::from([("cause".to_owned(), cause.to_owned())]);
    let details = ErrorDetails::with_error_info(OUTCOME_UNKNOWN, host, metadata);
    Status::with_error_details(
        Code::Unknown,
        format!(
            "the create may have been applied: Graph's answer was lost ({cause}). Sending it again could create a duplicate; check (e.g. list the parent) before creating again"
        ),
        details,
    )
}

fn from_status_error(e: StatusError) -> Status {
    let unserved = e.code.trim().eq_ignore_ascii_case(UNSERVED_ROUTE);
    let code = if unserved {
        Code::Unimplemented
    } else {
        code_for(e.status, &e.method)
    };
    let message = if unserved {
        format!(
            "Graph does not serve this route ({} {}): {}",
            e.method,
            e.status.as_u16(),
            e.message
        )
    } else if e.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        format!(
            "Graph refused the request's headers as too large (HTTP 431); the largest header sent is authorization, the bearer token: {}",
            e.message
        )
    } else {
        e.message
    };
    let reason = if e.code.is_empty() {
        format!("HTTP_{}", e.status.as_u16())
    } else {
        e.code
    };

    let mut info = HashMap::from([
        ("http_status".to_owned(), e.status.as_u16().to_string()),
        ("client_request_id".to_owned(), e.client_request_id.clone()),
    ]);
    if let Some(id) = &e.request_id {
        info.insert("request_id".to_owned(), id.clone());
    }
    let mut details = ErrorDetails::with_error_info(reason, e.host, info);
    details.set_request_info(
        e.request_id
            .clone()
            .unwrap_or_else(|| e.client_request_id.clone()),
        format!("client-request-id={}", e.client_request_id),
    );
    if e.status == StatusCode::TOO_MANY_REQUESTS {
        details.set_retry_info(Some(e.retry_after.unwrap_or(DEFAULT_THROTTLE_DELAY)));
    } else if let Some(delay) = e.retry_after {
        details.set_retry_info(Some(delay));
    }

    let mut metadata = MetadataMap::new();
    if let Some(value) = e.request_id.as_deref().and_then(|id| id.parse().ok()) {
        metadata.insert(GRAPH_REQUEST_ID, value);
    }
    Status::with_error_details_and_metadata(code, message, details, metadata)
}

/// RESOURCE_EXHAUSTED for a call that got no slot of one of the gateway's
/// budgets before its deadline, with the wait as RetryInfo.
fn budget_exhausted(reason: &str, which: &str, retry_after: Duration, host: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, host, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "the gateway's {which} budget for this tenant has no slot before the deadline (next in {} ms); retry later",
            retry_after.as_millis()
        ),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_unknown_carries_its_cause() {
        let s = outcome_unknown("Emulated error 504", "graph.microsoft.com");
        let info = s.get_details_error_info().unwrap();
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(info.reason, OUTCOME_UNKNOWN);
        assert_eq!(
            info.metadata.get("cause").map(String::as_str),
            Some("Emulated error 504")
        );
        assert!(
            s.message().contains("(Emulated error 504)"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn maps_every_status_of_the_table() {
        let table = [
            (400, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (405, Code::Unimplemented),
            (501, Code::Unimplemented),
            (412, Code::FailedPrecondition),
            (413, Code::InvalidArgument),
            (429, Code::ResourceExhausted),
            (500, Code::Internal),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (431, Code::InvalidArgument),
            (507, Code::ResourceExhausted),
            (418, Code::FailedPrecondition),
            (410, Code::FailedPrecondition),
            (505, Code::Unavailable),
            (599, Code::Unavailable),
            (302, Code::Unknown),
        ];
        for (status, code) in table {
            assert_eq!(
                code_for(StatusCode::from_u16(status).unwrap(), &Method::PATCH),
                code,
                "{status}"
            );
        }
        assert_eq!(
            code_for(StatusCode::CONFLICT, &Method::POST),
            Code::AlreadyExists
        );
        assert_eq!(
            code_for(StatusCode::CONFLICT, &Method::PATCH),
            Code::Aborted
        );
    }

    fn error(status: u16, code: &str, retry_after: Option<u64>) -> StatusError {
        StatusError {
            method: Method::POST,
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            message: "Graph said no".into(),
            request_id: Some("req-1".into()),
            client_request_id: "client-1".into(),
            retry_after: retry_after.map(Duration::from_secs),
            host: "graph.microsoft.com".into(),
            after_ambiguous_retry: false,
        }
    }

    #[test]
    fn carries_error_info_request_info_and_retry_info() {
        let status = from_status_error(error(429, "", None));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "Graph said no");
        assert_eq!(status.metadata().get(GRAPH_REQUEST_ID).unwrap(), "req-1");
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "HTTP_429");
        assert_eq!(info.domain, "graph.microsoft.com");
        assert_eq!(info.metadata["http_status"], "429");
        assert_eq!(info.metadata["request_id"], "req-1");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(DEFAULT_THROTTLE_DELAY)
        );
        assert_eq!(details.request_info().unwrap().request_id, "req-1");

        let status = from_status_error(error(429, "TooManyRequests", Some(9)));
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "TooManyRequests");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(9))
        );
        assert!(
            from_status_error(error(404, "x", None))
                .get_error_details()
                .retry_info()
                .is_none()
        );
    }

    #[test]
    fn unserved_routes_are_unimplemented() {
        let status = from_status_error(error(400, "No method match route template", None));
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(
            status
                .message()
                .starts_with("Graph does not serve this route"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn violations_are_deduplicated_and_capped() {
        let many: Vec<_> = (0..1000)
            .map(|n| FieldViolation::new("update_mask", format!("bad {}", n % 50)))
            .collect();
        let status = invalid_argument(many);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS);
        assert!(status.message().len() < 1000);
    }

    #[test]
    fn bad_requests_list_every_violation() {
        let status = invalid_argument(vec![
            FieldViolation::new("parent", "is required"),
            FieldViolation::new("request_id", "must be a UUID"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "parent: is required; request_id: must be a UUID"
        );
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "request_id");
    }
}
