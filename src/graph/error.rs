//! What can go wrong when calling Graph.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use super::model::ErrorBody;

/// A failed Graph call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// Graph (or a proxy in front of it) answered with an error status.
    #[error("{}", .0.message)]
    Status(Box<StatusError>),
    /// Graph could not be reached, or the connection failed mid-call.
    #[error("could not reach Graph: {message}")]
    Unavailable {
        message: String,
        /// Whether the request may have reached Graph.
        maybe_sent: bool,
    },
    /// The caller's deadline passed before Graph answered.
    #[error("Graph did not answer before the deadline")]
    Timeout,
    /// The caller's deadline came before the request could be sent: nothing
    /// was sent, so it is safe to retry.
    #[error(
        "the deadline passed before the request was sent to Graph; nothing was sent, so it is safe to retry"
    )]
    Unsent,
    /// Graph answered success with a body the gateway cannot read.
    #[error("Graph sent a response the gateway cannot read: {0}")]
    InvalidResponse(String),
    /// The JSON body would be over the upstream limit; never sent.
    #[error("the request body is {size} bytes in JSON, over Graph's limit")]
    BodyTooLarge {
        /// The JSON member with the longest value.
        field: String,
        size: usize,
    },
    /// A create was sent but its answer was lost (504, a timeout or a reset
    /// after sending): it may or may not have been applied.
    #[error("the create may have been applied: {0}")]
    OutcomeUnknown(Box<GraphError>),
    /// The write budget has no slot before the caller's deadline.
    #[error("the write budget has no slot before the deadline")]
    WriteBudget { retry_after: Duration },
    /// The read budget has no slot before the caller's deadline.
    #[error("the read budget has no slot before the deadline")]
    ReadBudget { retry_after: Duration },
}

/// An error status from Graph, with what Graph said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusError {
    pub method: Method,
    pub status: StatusCode,
    /// Graph's error code; may be empty.
    pub code: String,
    pub message: String,
    /// Graph's `request-id` (header, else `innerError`).
    pub request_id: Option<String>,
    /// The `client-request-id` the gateway sent.
    pub client_request_id: String,
    /// `Retry-After`, rounded up to whole seconds; `None` when Graph gave
    /// none, `0`, or something unreadable (then the caller's backoff applies).
    pub retry_after: Option<Duration>,
    /// The Graph host, e.g. `graph.microsoft.com`.
    pub host: String,
    /// A POST was sent again after an answer that left it unknown whether the
    /// first one was applied (so a 409 may be our own first write).
    pub after_ambiguous_retry: bool,
}

/// Longest `Retry-After` taken at face value.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl StatusError {
    /// Reads an error response. Never fails: a body that is not Graph's JSON
    /// (an HTML page from a proxy, say) gives a message built from the status.
    pub fn from_response(
        method: Method,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        client_request_id: String,
        host: &str,
    ) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let reason = status.canonical_reason().unwrap_or("");
        let (code, message, inner_request_id) = match parsed {
            Some(ErrorBody { error }) => (
                error.code.unwrap_or_default(),
                error.message.filter(|m| !m.is_empty()),
                error.inner_error.request_id,
            ),
            None => {
                let kind = header("content-type").unwrap_or_else(|| "no content type".into());
                let what = if body.is_empty() {
                    "an empty body".to_owned()
                } else {
                    format!("a non-JSON body ({kind})")
                };
                (
                    String::new(),
                    Some(format!(
                        "Graph answered HTTP {} {reason} with {what}",
                        status.as_u16()
                    )),
                    None,
                )
            }
        };
        let mut message =
            message.unwrap_or_else(|| format!("Graph answered HTTP {} {reason}", status.as_u16()));
        truncate(&mut message, MAX_MESSAGE);
        StatusError {
            method,
            status,
            code,
            message,
            request_id: header("request-id").or(inner_request_id),
            client_request_id,
            retry_after: header("retry-after").as_deref().and_then(parse_retry_after),
            host: host.to_owned(),
            after_ambiguous_retry: false,
        }
    }
}

impl StatusError {
    /// Whether this answer leaves it unknown whether a POST was applied: a
    /// 504 (the answer was lost behind a gateway), or a server error Graph is
    /// not known to send, which says nothing either way. 500, 502 and 503
    /// say the request failed; 501 and 507 that it was refused.
    pub fn leaves_outcome_unknown(&self) -> bool {
        let status = self.status.as_u16();
        status / 100 == 5 && !matches!(status, 500..=503 | 507)
    }
}

/// Longest Graph message passed on (it becomes a gRPC header).
const MAX_MESSAGE: usize = 2048;

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// `Retry-After` in seconds, the form Graph sends. A decimal (`1.5`) is
/// rounded up to whole seconds, the unit of the header and of Graph's
/// throttling windows, so the wait is never shorter than asked. `0` (or
/// `0.0`) is no guidance: retrying at once while throttled prolongs the
/// throttling, so it reads as absent and the caller's own backoff applies, as
/// it does for an HTTP date or anything else unreadable.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let max = MAX_RETRY_AFTER.as_secs();
    let seconds = whole
        .parse::<u64>()
        .unwrap_or(max)
        .saturating_add(u64::from(fraction.bytes().any(|b| b != b'0')));
    (seconds > 0).then(|| Duration::from_secs(seconds.min(max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(status: u16, headers: &[(&'static str, &str)], body: &str) -> StatusError {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        StatusError::from_response(
            Method::POST,
            StatusCode::from_u16(status).unwrap(),
            &map,
            body.as_bytes(),
            "c".into(),
            "graph.microsoft.com",
        )
    }

    #[test]
    fn reads_graph_error_bodies() {
        let e = read(
            404,
            &[("request-id", "hdr")],
            r#"{"error":{"code":"ResourceNotFound","message":"gone","innerError":{"request-id":"inner","date":"2026-11-22T10:00:00"}}}"#,
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("ResourceNotFound", "gone")
        );
        assert_eq!(e.request_id.as_deref(), Some("hdr"));
        let e = read(
            400,
            &[],
            r#"{"error":{"code":"","message":"","innerError":{"request-id":"inner"}}}"#,
        );
        assert_eq!(e.code, "");
        assert_eq!(e.message, "Graph answered HTTP 400 Bad Request");
        assert_eq!(e.request_id.as_deref(), Some("inner"));
    }

    #[test]
    fn survives_non_json_bodies() {
        let e = read(
            502,
            &[("content-type", "text/html")],
            "<html><body>Bad gateway</body></html>",
        );
        assert_eq!(e.code, "");
        assert_eq!(
            e.message,
            "Graph answered HTTP 502 Bad Gateway with a non-JSON body (text/html)"
        );
        let e = read(503, &[], "");
        assert!(e.message.contains("an empty body"));
        let e = read(500, &[], r#"{"error": "a string"}"#);
        assert!(e.message.contains("non-JSON"), "{}", e.message);
    }

    #[test]
    fn long_messages_are_cut() {
        let body = format!(
            r#"{{"error":{{"code":"x","message":"{}"}}}}"#,
            "é".repeat(5000)
        );
        let e = read(400, &[], &body);
        assert!(e.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn unknown_server_errors_leave_a_create_in_doubt() {
        for (status, unknown) in [
            (504, true),
            (505, true),
            (599, true),
            (500, false),
            (502, false),
            (503, false),
            (507, false),
            (431, false),
            (404, false),
        ] {
            assert_eq!(
                read(status, &[], "").leaves_outcome_unknown(),
                unknown,
                "{status}"
            );
        }
    }

    #[test]
    fn rounds_a_decimal_retry_after_up_to_whole_seconds() {
        for (header, seconds) in [
            ("1.5", 2),
            ("0.2", 1),
            ("2.0", 2),
            ("2.", 2),
            (" 3.001 ", 4),
        ] {
            assert_eq!(
                read(429, &[("retry-after", header)], "").retry_after,
                Some(Duration::from_secs(seconds)),
                "{header:?}"
            );
        }
    }

    #[test]
    fn a_zero_retry_after_leaves_the_wait_to_the_backoff() {
        for header in ["0", "0.0", "00"] {
            assert_eq!(
                read(429, &[("retry-after", header)], "").retry_after,
                None,
                "{header:?}"
            );
        }
    }

    #[test]
    fn unreadable_retry_after_is_absent() {
        for header in [
            "", "-1", "+1", "1e3", "inf", "NaN", ".5", "1.5.0", "1,5", "1 s", "0x10",
        ] {
            assert_eq!(
                read(503, &[("retry-after", header)], "").retry_after,
                None,
                "{header:?}"
            );
        }
        assert_eq!(
            read(429, &[("retry-after", "99999999999999999999999.5")], "").retry_after,
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn batch_items_read_retry_after_from_their_headers() {
        let item = |headers: serde_json::Value| {
            serde_json::from_value::<super::super::batch::ItemReply>(serde_json::json!({
                "id": "1", "status": 429, "headers": headers,
                "body": {"error": {"code": "TooManyRequests", "message": "slow down"}}
            }))
            .unwrap()
            .error("graph.microsoft.com", "c".into())
            .retry_after
        };
        assert_eq!(
            item(serde_json::json!({"Retry-After": "1.5"})),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            item(serde_json::json!({"Retry-After": 1.5})),
            Some(Duration::from_secs(2))
        );
        assert_eq!(item(serde_json::json!({"Retry-After": "0"})), None);
        assert_eq!(item(serde_json::json!({})), None);
    }

    #[test]
    fn reads_retry_after_seconds_only() {
        assert_eq!(
            read(429, &[("retry-after", "7")], "").retry_after,
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            read(429, &[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")], "").retry_after,
            None
        );
        assert_eq!(
            read(429, &[("retry-after", "99999999")], "").retry_after,
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(read(429, &[], "").retry_after, None);
    }
}
