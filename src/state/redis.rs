//! The Redis connection: one multiplexed connection that reconnects by
//! itself, short timeouts, and a circuit that skips Redis for a moment after
//! a failure so that callers fall back to the local store at once.
//!
//! A command that fails on a dropped connection (e.g. Redis restarted since
//! the last command) is sent once more on a new connection, within the same
//! timeout, before Redis counts as down.

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::config::Refusal;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

/// Longest wait for one Redis command before falling back.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis is skipped after a failure before it is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Why [`Redis::try_run`] has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Redis is skipped after a recent failure: nothing was sent.
    Skipped,
    /// The command failed or timed out: it may have been applied.
    Failed,
}

pub struct Redis {
    conn: ConnectionManager,
    /// Redis is skipped until then, after a failure.
    down_until: Mutex<Option<Instant>>,
    /// Whether the outage was logged (once per outage).
    down: AtomicBool,
}

/// Host and port of a Redis URL, without credentials.
pub fn redacted(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.to_owned()
}

impl Redis {
    pub fn open(url: &str) -> Result<Self, Refusal> {
        let client =
            redis::Client::open(url).map_err(|e| Refusal(format!("not a Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Refusal(format!("cannot set up Redis: {e}")))?;
        Ok(Self {
            conn,
            down_until: Mutex::new(None),
            down: AtomicBool::new(false),
        })
    }

    /// Runs `op` on Redis; `None` when Redis is unreachable (or was a moment
    /// ago) or answers an error, and the caller uses its local store. `op`
    /// runs a second time when the first failed on a dropped connection.
    pub async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.try_run(what, op).await.ok()
    }

    /// Runs a Lua script invocation (its keys and arguments set), as
    /// [`run`](Self::run) runs any command.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        call: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        self.run(what, |mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    /// [`run`](Self::run), telling a command never sent (Redis was skipped)
    /// from one that failed (and may have been applied).
    pub async fn try_run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Failure>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.skipped() {
            return Err(Failure::Skipped);
        }
        let deadline = Instant::now() + OP_TIMEOUT;
        let mut result = tokio::time::timeout_at(deadline, op(self.conn.clone())).await;
        if let Ok(Err(e)) = &result
            && reconnects(e)
        {
            // The manager is reconnecting: the second try waits for it.
            metrics::counter!(crate::metrics::STATE_STORE_RECONNECTS, "store" => "redis")
                .increment(1);
            result = tokio::time::timeout_at(deadline, op(self.conn.clone())).await;
        }
        let error = match result {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!("Redis state store reachable again; shared state resumed");
                }
                return Ok(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        metrics::counter!(crate::metrics::STATE_STORE_ERRORS, "store" => "redis").increment(1);
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + RETRY_AFTER_FAILURE);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                op = what,
                error = %error.escape_debug(),
                "Redis state store unreachable; serving from the local store (or refusing, per --state-store-outage) and a local share of the write budget until it returns"
            );
        }
        Err(Failure::Failed)
    }

    /// Whether Redis is skipped now, after a recent failure.
    fn skipped(&self) -> bool {
        let until = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|u| Instant::now() < u)
    }

    /// Whether the last Redis call failed.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

/// Whether an error came from the connection rather than from Redis (a
/// stale connection after a restart, a reset): worth one try on a new one.
/// A timeout is not: Redis may be stalled, and the budget is spent.
fn reconnects(e: &redis::RedisError) -> bool {
    (e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redacted("redis://u:p@h:1/0"), "h:1/0");
        assert_eq!(redacted("redis://h:1/2"), "h:1/2");
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_at_once() {
        // Port 1 on loopback: nothing listens there.
        let r = Redis::open("redis://127.0.0.1:1/0").unwrap();
        let got: Option<String> = r
            .run("get", |mut c| async move {
                redis::cmd("GET").arg("k").query_async(&mut c).await
            })
            .await;
        assert_eq!(got, None);
        assert!(r.is_down());
        // Within the retry pause Redis is not even tried.
        let again: Option<String> = r
            .run("get", |_c| async { unreachable!("skipped while down") })
            .await;
        assert_eq!(again, None);
    }
}
