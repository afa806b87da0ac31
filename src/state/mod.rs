//! State shared by the replicas of a gateway: request-id records and the
//! write budget. `memory` keeps it in the process; `redis://HOST:PORT/DB`
//! shares it through Redis. While Redis is unreachable the local store
//! stands in, or ([`StoreOutage::Refuse`]) creates with a request id are
//! refused.

pub mod identity;
pub mod redis;

use std::{fmt, str::FromStr, sync::Arc};

/// Where shared state lives (`--state-store`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Memory,
    /// A `redis://` URL.
    Redis(String),
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            // The URL may hold a password: show only where it points.
            StoreSpec::Redis(url) => write!(f, "redis://{}", redis::redacted(url)),
        }
    }
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            ::redis::Client::open(s).map_err(|e| format!("not a Redis URL: {e}"))?;
            return Ok(StoreSpec::Redis(s.to_owned()));
        }
        Err("use `memory` or `redis://HOST:PORT/DB`".into())
    }
}

/// What a create with a request id does while the shared store is
/// unreachable (`--state-store-outage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreOutage {
    /// Serve from the replica's own records: always available, but a retry
    /// on another replica can write twice where Graph ignores ids.
    #[default]
    ServeLocal,
    /// Answer UNAVAILABLE (retryable) and send nothing to Graph.
    Refuse,
}

impl StoreSpec {
    /// Opens the store; Redis is connected lazily, so an unreachable Redis
    /// does not stop the gateway from starting.
    pub fn open(&self) -> Result<Option<Arc<redis::Redis>>, crate::config::Refusal> {
        match self {
            StoreSpec::Memory => Ok(None),
            StoreSpec::Redis(url) => redis::Redis::open(url).map(Arc::new).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_specs_and_hides_passwords() {
        assert_eq!("memory".parse::<StoreSpec>(), Ok(StoreSpec::Memory));
        let r: StoreSpec = "redis://:s3cret@127.0.0.1:6379/0".parse().unwrap();
        assert!(matches!(r, StoreSpec::Redis(_)));
        assert!(!format!("{r:?}").contains("s3cret"), "{r:?}");
        assert!("postgres://x".parse::<StoreSpec>().is_err());
        assert!("".parse::<StoreSpec>().is_err());
    }
}
