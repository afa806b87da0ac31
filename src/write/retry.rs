//! When a failed Graph call is tried again, and after how long.
//!
//! - 429 and 503 mean Graph did not apply the request: every method is
//!   retried (POST included), honouring `Retry-After`, within the deadline.
//! - 504 and broken connections are retried for GET, PATCH and DELETE. For a
//!   POST they are ambiguous (it may have been applied): it is never sent
//!   blindly again; the create path resolves the outcome itself.
//! - A connection that was never opened is retried for every method.
//! - `Retry-After` is honoured as a floor; without it the delay grows
//!   exponentially with jitter. The caller never sleeps past its deadline.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::graph::GraphError;

/// How many times and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt (throttling gets at least
    /// [`MIN_THROTTLE_RETRIES`], within the deadline, unless this is 0).
    pub max_retries: u32,
    /// Delay before the first retry when Graph gives no `Retry-After`.
    pub base_delay: Duration,
    /// Longest backoff delay (a `Retry-After` may be longer).
    pub max_delay: Duration,
}

/// Throttled calls are retried this often at least: only the deadline ends them.
pub const MIN_THROTTLE_RETRIES: u32 = 20;

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
pub(crate) enum Retry {
    /// The request was not applied (429, 503, or no connection), or it is
    /// idempotent.
    Safe(Duration),
}

/// Whether a failed POST may have been applied.
pub(crate) fn ambiguous(error: &GraphError) -> bool {
    match error {
        GraphError::Status(e) => e.leaves_outcome_unknown(),
        GraphError::Unavailable { maybe_sent, .. } => *maybe_sent,
        GraphError::Timeout => true,
        _ => false,
    }
}

impl RetryPolicy {
    /// Whether and when to retry after `error` on attempt `attempt` (0-based).
    pub(crate) fn decide(
        &self,
        attempt: u32,
        method: &Method,
        error: &GraphError,
    ) -> Option<Retry> {
        if self.max_retries == 0 {
            return None;
        }
        let idempotent = *method != Method::POST;
        let backoff = self.backoff(attempt);
        let throttled = |e: &crate::graph::StatusError| {
            matches!(
                e.status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            )
        };
        match error {
            GraphError::Status(e) if throttled(e) => {
                if attempt >= self.max_retries.max(MIN_THROTTLE_RETRIES) {
                    return None;
                }
                Some(Retry::Safe(
                    e.retry_after.map_or(backoff, |r| r.max(backoff / 2)),
                ))
            }
            _ if attempt >= self.max_retries => None,
            GraphError::Status(e) if e.status == StatusCode::GATEWAY_TIMEOUT && idempotent => {
                Some(Retry::Safe(e.retry_after.unwrap_or(backoff)))
            }
            GraphError::Unavailable {
                maybe_sent: false, ..
            } => Some(Retry::Safe(backoff)),
            GraphError::Unavailable {
                maybe_sent: true, ..
            } if idempotent => Some(Retry::Safe(backoff)),
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
        for m in [Method::POST, Method::PATCH, Method::GET, Method::DELETE] {
            for code in [429, 503] {
                assert_eq!(
                    p.decide(0, &m, &status(code, Some(3))),
                    Some(Retry::Safe(Duration::from_secs(3)))
                );
                assert!(matches!(
                    p.decide(0, &m, &status(code, None)),
                    Some(Retry::Safe(_))
                ));
                // Throttling outlasts max_retries (the deadline ends it).
                assert!(p.decide(5, &m, &status(code, None)).is_some());
                assert!(
                    p.decide(MIN_THROTTLE_RETRIES, &m, &status(code, None))
                        .is_none()
                );
            }
        }
        let none = RetryPolicy {
            max_retries: 0,
            ..Default::default()
        };
        assert_eq!(none.decide(0, &Method::GET, &status(429, None)), None);
    }

    #[test]
    fn a_post_is_never_resent_after_an_ambiguous_failure() {
        let p = RetryPolicy::default();
        for e in [status(504, None), unavailable(true), GraphError::Timeout] {
            assert!(ambiguous(&e));
            assert_eq!(p.decide(0, &Method::POST, &e), None);
        }
        for e in [status(504, None), unavailable(true)] {
            assert!(matches!(
                p.decide(0, &Method::PATCH, &e),
                Some(Retry::Safe(_))
            ));
        }
        assert!(!ambiguous(&unavailable(false)));
        assert!(!ambiguous(&status(503, None)));
        assert!(matches!(
            p.decide(0, &Method::POST, &unavailable(false)),
            Some(Retry::Safe(_))
        ));
    }

    #[test]
    fn never_retries_other_errors_or_past_the_limit() {
        let p = RetryPolicy::default();
        for code in [400, 401, 403, 404, 409, 412, 500, 502] {
            assert_eq!(
                p.decide(0, &Method::GET, &status(code, None)),
                None,
                "{code}"
            );
        }
        assert_eq!(p.decide(0, &Method::GET, &GraphError::Timeout), None);
        assert_eq!(p.decide(3, &Method::GET, &status(504, None)), None);
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
