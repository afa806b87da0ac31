//! The outbox: writes accepted at once (`SubmitRunStates`), kept on disk
//! and delivered by the gateway within Graph's budget, behind long-running
//! operations (`google.longrunning.Operations`).
//!
//! - [`store`]: the store abstraction every backend implements (what is
//!   durable when, and how writes are claimed and finished); [`redb`] is
//!   the embedded one, [`postgres`] the one replicas share.
//! - [`drain`]: per tenant, claims the oldest writes and sends them through
//!   the write engine (budget, 429 pause, exactly-once creates), then
//!   records each outcome; [`coalesce`] merges updates of one entity.
//! - `grpc::submit` validates and stores submissions; `grpc::operations`
//!   serves the operations.

pub(crate) mod coalesce;
pub(crate) mod drain;
pub mod postgres;
pub mod redb;
pub mod store;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
#[path = "../../tests/support/postgres.rs"]
mod test_postgres;

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::HeaderValue;

use crate::write::budget::BudgetSpec;
use store::{Limits, Store};

/// `--outbox`: where accepted writes are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum OutboxSpec {
    /// An embedded redb file.
    File(PathBuf),
    /// A PostgreSQL database, shared by replicas.
    Postgres(Box<postgres::PgUrl>),
}

/// Shows a PostgreSQL URL without its password.
impl fmt::Debug for OutboxSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxSpec::File(path) => write!(f, "{}", path.display()),
            OutboxSpec::Postgres(url) => write!(f, "{}", url.shown()),
        }
    }
}

impl FromStr for OutboxSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("give the path of the outbox file or a postgres:// URL".into());
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return s.parse().map(|url| OutboxSpec::Postgres(Box::new(url)));
        }
        if s.contains("://") {
            return Err(format!(
                "{:?}: give the path of a file (the embedded store) or a postgres:// URL (PostgreSQL)",
                s.split("://").next().unwrap_or_default()
            ));
        }
        Ok(OutboxSpec::File(PathBuf::from(s)))
    }
}

/// `--outbox-max-pending`: `WRITES,BYTES` per tenant, e.g. `100000,256MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPending(pub Limits);

impl FromStr for MaxPending {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?}: use WRITES,BYTES, e.g. 100000,256MiB");
        let (writes, bytes) = s.trim().split_once(',').ok_or_else(usage)?;
        let max_writes: u64 = writes.trim().parse().map_err(|_| usage())?;
        let max_bytes = parse_bytes(bytes.trim()).ok_or_else(usage)?;
        if max_writes == 0 || max_bytes == 0 {
            return Err(format!("{s:?}: both limits must be above zero"));
        }
        Ok(MaxPending(Limits {
            max_writes,
            max_bytes,
        }))
    }
}

/// `64MiB`, `1GiB`, `500KiB`, `1000` (bytes).
fn parse_bytes(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Graph tokens of the callers with writes in the outbox, in memory only
/// (never stored): each call a caller makes refreshes its token, and the
/// drain sends a caller's writes with it. Bounded: past [`MAX_TOKENS`] the
/// map is cleared (callers then refresh it with their next call).
#[derive(Default)]
pub struct Tokens(Mutex<HashMap<String, HeaderValue>>);

/// Callers whose tokens are kept at most.
pub const MAX_TOKENS: usize = 10_000;

impl Tokens {
    pub fn remember(&self, caller: &str, authorization: &HeaderValue) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TOKENS && !map.contains_key(caller) {
            map.clear();
        }
        map.insert(caller.to_owned(), authorization.clone());
    }

    pub fn get(&self, caller: &str) -> Option<HeaderValue> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(caller).cloned()
    }

    pub fn forget(&self, caller: &str, authorization: &HeaderValue) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(caller) == Some(authorization) {
            map.remove(caller);
        }
    }

    pub fn callers(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }
}

/// The outbox a gateway runs: its store (once open), limits and drain.
pub struct Outbox {
    store: std::sync::OnceLock<Arc<dyn Store>>,
    pub limits: Limits,
    pub retention: Duration,
    /// The write budget, for estimated completion times.
    pub budget: Option<BudgetSpec>,
    pub tokens: Tokens,
    /// Wakes the drain when writes arrive.
    pub wake: tokio::sync::Notify,
    /// Wakes WaitOperation calls when writes end.
    pub progress: tokio::sync::Notify,
    /// Where the store is, for logs and refusals (a file's path, or a
    /// URL without its password).
    pub place: String,
    /// Whether a store on a server answers (always, for a file).
    reachable: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>>,
}

impl Outbox {
    pub fn new(
        limits: Limits,
        retention: Duration,
        budget: Option<BudgetSpec>,
        place: String,
    ) -> Self {
        Self {
            store: std::sync::OnceLock::new(),
            limits,
            retention,
            budget,
            tokens: Tokens::default(),
            wake: tokio::sync::Notify::new(),
            progress: tokio::sync::Notify::new(),
            place,
            reachable: std::sync::OnceLock::new(),
        }
    }

    /// Serves from `store` from now on (the first store given stays).
    pub fn open_with(&self, store: Arc<dyn Store>) {
        let _ = self.store.set(store);
        self.wake.notify_one();
    }

    /// Follows a store server's reachability (`/readyz` reads it).
    pub fn watch(&self, reachable: Arc<std::sync::atomic::AtomicBool>) {
        let _ = self.reachable.set(reachable);
    }

    /// Whether the store is open and, on a server, answering (`/readyz`
    /// waits for it).
    pub fn is_open(&self) -> bool {
        self.store.get().is_some()
            && self
                .reachable
                .get()
                .is_none_or(|r| r.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The store, or UNAVAILABLE while it cannot be opened.
    pub fn store(&self) -> Result<&Arc<dyn Store>, store::StoreError> {
        self.store.get().ok_or_else(|| {
            store::StoreError::Unavailable(format!("{} is not open yet", self.place))
        })
    }
}

/// How long until `ahead` queued writes have been sent at the budget's pace.
pub fn eta(budget: Option<BudgetSpec>, ahead: u64) -> Duration {
    match budget {
        Some(b) if b.limit > 0 && ahead > 0 => {
            // The first `limit` writes go at once; each further `limit`
            // waits one more window.
            let windows = (ahead - 1) / u64::from(b.limit);
            b.window
                .saturating_mul(windows.min(u64::from(u32::MAX)) as u32)
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MAX_RETENTION, parse_up_to};

    fn parse_retention(text: &str) -> Result<Duration, String> {
        parse_up_to(text, MAX_RETENTION, "3650d")
    }

    #[test]
    fn outbox_flags_parse() {
        assert_eq!(
            "/var/lib/x.redb".parse::<OutboxSpec>(),
            Ok(OutboxSpec::File("/var/lib/x.redb".into()))
        );
        let pg = "postgresql://u:pw@h:5433/db".parse::<OutboxSpec>().unwrap();
        assert!(matches!(pg, OutboxSpec::Postgres(_)));
        assert_eq!(format!("{pg:?}"), "postgres://u@h:5433/db");
        let bad = "postgres://u:pw@h/db?bogus=1"
            .parse::<OutboxSpec>()
            .unwrap_err();
        assert!(bad.contains("PostgreSQL") && !bad.contains("pw"), "{bad}");
        assert!("mysql://u@h/db".parse::<OutboxSpec>().is_err());
        assert!("".parse::<OutboxSpec>().is_err());
        assert_eq!(
            "100000,64MiB".parse::<MaxPending>(),
            Ok(MaxPending(Limits {
                max_writes: 100_000,
                max_bytes: 64 << 20
            }))
        );
        assert!("100000".parse::<MaxPending>().is_err());
        assert!("0,1MiB".parse::<MaxPending>().is_err());
        assert!("10,5TB".parse::<MaxPending>().is_err());
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("7w").is_err());
    }

    #[test]
    fn estimates_follow_the_budget() {
        let spec = BudgetSpec {
            limit: 200,
            window: Duration::from_secs(20),
        };
        assert_eq!(eta(Some(spec), 0), Duration::ZERO);
        assert_eq!(eta(Some(spec), 1), Duration::ZERO);
        assert_eq!(eta(Some(spec), 201), Duration::from_secs(20));
        assert_eq!(eta(Some(spec), 1000), Duration::from_secs(80));
        assert_eq!(eta(None, 1000), Duration::ZERO);
    }
}
