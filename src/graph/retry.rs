//! When a failed Graph call is tried again, and after how long.
//!
//! - 429 is always retried: Graph did not apply the request.
//! - 503, 504 and broken connections are retried for GET and PATCH, and for a
//!   POST only when it is replayable (it carries its own `id`, so a second copy
//!   is refused with 409 instead of creating a duplicate).
//! - A connection that was never opened is retried for every method.
//! - `Retry-After` is honoured as a floor; without it the delay grows
//!   exponentially with jitter. The caller never sleeps past its deadline.

use std::time::Duration;

use http::{Method, StatusCode};

use super::GraphError;

/// How many times and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry when Graph gives no `Retry-After`.
    pub base_delay: Duration,
    /// Longest backoff delay (a `Retry-After` may be longer).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Why a retry is needed, when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// The request was not applied (429, or no connection).
    Safe(Duration),
    /// The request may have been applied (a replayable POST).
    Ambiguous(Duration),
}

impl RetryPolicy {
    /// Whether and when to retry after `error` on attempt `attempt` (0-based).
    pub(super) fn decide(
        &self,
        attempt: u32,
        method: &Method,
        replayable: bool,
        error: &GraphError,
    ) -> Option<Retry> {
        if attempt >= self.max_retries {
            return None;
        }
        let idempotent = *method != Method::POST;
        let backoff = self.backoff(attempt);
        match error {
            GraphError::Status(e) if e.status == StatusCode::TOO_MANY_REQUESTS => Some(
                Retry::Safe(e.retry_after.map_or(backoff, |r| r.max(backoff / 2))),
            ),
            GraphError::Status(e)
                if matches!(
                    e.status,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                ) =>
            {
                let delay = e.retry_after.unwrap_or(backoff);
                if idempotent {
                    Some(Retry::Safe(delay))
                } else if replayable {
                    Some(Retry::Ambiguous(delay))
                } else {
                    None
                }
            }
            GraphError::Unavailable {
                maybe_sent: false, ..
            } => Some(Retry::Safe(backoff)),
            GraphError::Unavailable {
                maybe_sent: true, ..
            } if idempotent => Some(Retry::Safe(backoff)),
            GraphError::Unavailable {
                maybe_sent: true, ..
            } if replayable => Some(Retry::Ambiguous(backoff)),
            _ => None,
        }
    }

    /// Exponential backoff with jitter: a random delay in [d/2, d], where
    /// d = base · 2^attempt, capped at `max_delay`.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::StatusError;

    fn status(code: u16, retry_after: Option<u64>) -> GraphError {
        GraphError::Status(Box::new(StatusError {
            method: Method::POST,
            status: StatusCode::from_u16(code).unwrap(),
            code: String::new(),
            message: String::new(),
            request_id: None,
            client_request_id: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
            host: String::new(),
            after_ambiguous_retry: false,
        }))
    }

    fn unavailable(maybe_sent: bool) -> GraphError {
        GraphError::Unavailable {
            message: String::new(),
            maybe_sent,
        }
    }

    #[test]
    fn retries_throttling_for_every_method_honouring_retry_after() {
        let p = RetryPolicy::default();
        for m in [Method::POST, Method::PATCH, Method::GET] {
            assert_eq!(
                p.decide(0, &m, false, &status(429, Some(3))),
                Some(Retry::Safe(Duration::from_secs(3)))
            );
            assert!(matches!(
                p.decide(0, &m, false, &status(429, None)),
                Some(Retry::Safe(_))
            ));
        }
    }

    #[test]
    fn post_is_retried_after_ambiguous_failures_only_when_replayable() {
        let p = RetryPolicy::default();
        for e in [status(503, None), status(504, None), unavailable(true)] {
            assert_eq!(p.decide(0, &Method::POST, false, &e), None);
            assert!(matches!(
                p.decide(0, &Method::POST, true, &e),
                Some(Retry::Ambiguous(_))
            ));
            assert!(matches!(
                p.decide(0, &Method::PATCH, false, &e),
                Some(Retry::Safe(_))
            ));
        }
        assert!(matches!(
            p.decide(0, &Method::POST, false, &unavailable(false)),
            Some(Retry::Safe(_))
        ));
    }

    #[test]
    fn never_retries_other_errors_or_past_the_limit() {
        let p = RetryPolicy::default();
        for code in [400, 401, 403, 404, 409, 412, 500, 502] {
            assert_eq!(
                p.decide(0, &Method::GET, true, &status(code, None)),
                None,
                "{code}"
            );
        }
        assert_eq!(p.decide(0, &Method::GET, true, &GraphError::Timeout), None);
        assert_eq!(p.decide(3, &Method::GET, true, &status(429, None)), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            let d = p.backoff(attempt);
            let full = (p.base_delay * (1 << attempt.min(16))).min(p.max_delay);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
