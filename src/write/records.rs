//! Request ids (AIP-155): a create retried with the same `request_id` gets
//! the first answer instead of writing again.
//!
//! A record is keyed by the caller (from the token's claims), the parent and
//! the request id, and holds a hash of the request (a reuse for another
//! request is refused) and the answer: the created resource (its encoded form
//! when small, else only its name, read back on replay) or "outcome unknown".
//! The first call claims the key; duplicates wait for it. A call that fails
//! in a way that applied nothing releases the claim, so it can be retried.
//!
//! Memory is bounded in bytes: finished records live for [`TTL`], and past
//! [`MAX_BYTES`] (or [`MAX_RECORDS`]) the oldest go first. Claims still
//! running are kept apart, so a slow call never holds up eviction.
//!
//! With Redis (`--state-store redis://…`) a claim is `SET NX` with an expiry,
//! the answer replaces it, and duplicates on other replicas poll it. An
//! answer or a release that Redis missed is written again in the background
//! until Redis takes it. While Redis is unreachable the local records stand
//! in, or, with [`StoreOutage::Refuse`], a create that would claim an id is
//! refused; there a claim lives as long as a record (not just the call's
//! deadline), so an outage longer than a deadline cannot free an id whose
//! create was sent, and a duplicate that finds a claim whose owner's deadline
//! has long passed answers "outcome unknown" instead of writing again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::{sync::Notify, time::Instant};

use crate::state::{
    StoreOutage,
    redis::{Failure, Redis},
};

pub const TTL: Duration = Duration::from_secs(600);
/// Total bytes of finished records kept in memory.
pub const MAX_BYTES: usize = 32 << 20;
/// Most finished records kept in memory.
pub const MAX_RECORDS: usize = 100_000;
/// Largest encoded response kept in a record; a larger one is read back.
pub const MAX_STORED_RESPONSE: usize = 4096;
/// How often a duplicate checks on a claim held elsewhere.
const POLL: Duration = Duration::from_millis(50);
/// How long a claim outlives its call's deadline (clocks of replicas may
/// differ a little).
const CLAIM_GRACE: Duration = Duration::from_secs(5);
/// How often an answer or release that Redis missed is tried again.
const REWRITE_EVERY: Duration = Duration::from_millis(250);
/// Most answers and releases waiting for Redis at once.
const MAX_REWRITES: usize = 10_000;

/// What the first call answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The resource was created: its name, its encoded form when small, and
    /// Graph's request id.
    Created {
        name: String,
        #[serde(with = "b64")]
        response: Option<Bytes>,
        graph_request_id: Option<String>,
    },
    /// The write may or may not have been applied; the message says so.
    Unknown { message: String },
}

impl Outcome {
    fn bytes(&self) -> usize {
        match self {
            Outcome::Created {
                name,
                response,
                graph_request_id,
            } => {
                name.len()
                    + response.as_ref().map_or(0, Bytes::len)
                    + graph_request_id.as_ref().map_or(0, String::len)
            }
            Outcome::Unknown { message } => message.len(),
        }
    }
}

mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// Whose request id, for which parent: the record's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey(String);

impl RecordKey {
    /// `caller` comes from [`crate::state::identity::caller`]; `parent` is
    /// the validated parent name (batch items use their own parent).
    pub fn new(caller: &str, parent: &str, request_id: uuid::Uuid) -> Self {
        RecordKey(format!("{caller}|{parent}|{}", request_id.hyphenated()))
    }
}

/// The reasons a request id cannot be used now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The id was used before with a different request.
    Reused,
    /// A duplicate waited for the first call past its deadline.
    Deadline,
    /// The shared store is unreachable and `--state-store-outage refuse`.
    StoreUnavailable,
    /// The first call's claim outlived its deadline without an answer (its
    /// replica stopped, or lost the store): it may have been applied.
    Abandoned,
}

/// What [`RequestIds::begin`] found.
pub enum Begin {
    /// The request id was answered before: answer the same.
    Replay(Outcome),
    /// This call does the work and must [`Claim::finish`] (or drop the claim
    /// to release it when nothing was applied).
    Owner(Claim),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Wire {
    /// Claimed by `owner`, still running until `until` (Unix ms; 0 from
    /// replicas that did not say).
    Pending {
        fingerprint: u64,
        owner: String,
        #[serde(default)]
        until: u64,
    },
    Done {
        fingerprint: u64,
        outcome: Outcome,
    },
}

struct Done {
    fingerprint: u64,
    outcome: Outcome,
    at: Instant,
    seq: u64,
}

struct Pending {
    fingerprint: u64,
    released: Arc<Notify>,
}

#[derive(Default)]
struct Local {
    done: HashMap<RecordKey, Done>,
    order: VecDeque<(RecordKey, u64)>,
    bytes: usize,
    seq: u64,
    pending: HashMap<RecordKey, Pending>,
}

impl Local {
    fn evict(&mut self, now: Instant) {
        while let Some((key, seq)) = self.order.front() {
            let Some(d) = self.done.get(key).filter(|d| d.seq == *seq) else {
                self.order.pop_front();
                continue;
            };
            let full = self.bytes > MAX_BYTES || self.done.len() > MAX_RECORDS;
            if !full && now.duration_since(d.at) <= TTL {
                break;
            }
            let size = record_bytes(key, &d.outcome);
            self.bytes -= size;
            self.done.remove(key);
            self.order.pop_front();
        }
    }

    fn store(&mut self, key: RecordKey, fingerprint: u64, outcome: Outcome) {
        let now = Instant::now();
        if let Some(old) = self.done.remove(&key) {
            self.bytes -= record_bytes(&key, &old.outcome);
        }
        self.seq += 1;
        self.bytes += record_bytes(&key, &outcome);
        self.order.push_back((key.clone(), self.seq));
        self.done.insert(
            key,
            Done {
                fingerprint,
                outcome,
                at: now,
                seq: self.seq,
            },
        );
        self.evict(now);
    }
}

fn record_bytes(key: &RecordKey, outcome: &Outcome) -> usize {
    // Key twice (map and order), the outcome, and the fixed parts.
    2 * key.0.len() + outcome.bytes() + 128
}

/// The request-id records of the gateway.
#[derive(Default)]
pub struct RequestIds {
    local: Arc<Mutex<Local>>,
    redis: Option<Arc<Redis>>,
    outage: StoreOutage,
}

/// The right to answer a request id first. Dropped without
/// [`finish`](Claim::finish), it releases the id.
pub struct Claim {
    key: RecordKey,
    fingerprint: u64,
    local: Arc<Mutex<Local>>,
    /// The Redis claim (its exact value), when one is held there.
    redis: Option<(Arc<Redis>, String)>,
    finished: bool,
}

fn redis_key(key: &RecordKey) -> String {
    format!("runstate:rid:{}", key.0)
}

/// Deletes a Redis claim only while it is still ours (ARGV[1] is its value).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RequestIds {
    pub fn new(redis: Option<Arc<Redis>>, outage: StoreOutage) -> Self {
        Self {
            local: Arc::default(),
            redis,
            outage,
        }
    }

    /// Claims `key` for a request with this `fingerprint`, or returns the
    /// earlier answer. A duplicate of a call still running waits for it
    /// (until `deadline`).
    pub async fn begin(
        &self,
        key: &RecordKey,
        fingerprint: u64,
        deadline: Instant,
    ) -> Result<Begin, Refused> {
        // One process: duplicates wait on the local claim.
        loop {
            let released = {
                let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
                local.evict(Instant::now());
                if let Some(d) = local.done.get(key) {
                    if d.fingerprint != fingerprint {
                        return Err(Refused::Reused);
                    }
                    metrics::counter!(crate::metrics::REQUEST_ID_REPLAYS).increment(1);
                    return Ok(Begin::Replay(d.outcome.clone()));
                }
                match local.pending.get(key) {
                    Some(p) if p.fingerprint != fingerprint => return Err(Refused::Reused),
                    Some(p) => p.released.clone(),
                    None => {
                        local.pending.insert(
                            key.clone(),
                            Pending {
                                fingerprint,
                                released: Arc::new(Notify::new()),
                            },
                        );
                        break;
                    }
                }
            };
            // Woken when the owner finishes or releases; polled as a backstop.
            let wake = (deadline).min(Instant::now() + POLL);
            let _ = tokio::time::timeout_at(wake, released.notified()).await;
            if Instant::now() >= deadline {
                return Err(Refused::Deadline);
            }
        }
        let mut claim = Claim {
            key: key.clone(),
            fingerprint,
            local: self.local.clone(),
            redis: None,
            finished: false,
        };
        // Many replicas: the claim in Redis decides.
        if let Some(redis) = &self.redis {
            match self.claim_shared(redis, key, fingerprint, deadline).await {
                Shared::Owner(value) => claim.redis = Some((redis.clone(), value)),
                // Dropping the claim releases the local one.
                Shared::Unavailable if self.outage == StoreOutage::Refuse => {
                    return Err(Refused::StoreUnavailable);
                }
                Shared::Unavailable => {}
                Shared::Replay(outcome) => {
                    // Keep it locally too (and release the local claim).
                    claim.finish_local(outcome.clone());
                    metrics::counter!(crate::metrics::REQUEST_ID_REPLAYS).increment(1);
                    return Ok(Begin::Replay(outcome));
                }
                Shared::Refused(why) => return Err(why),
            }
        }
        Ok(Begin::Owner(claim))
    }

    async fn claim_shared(
        &self,
        redis: &Arc<Redis>,
        key: &RecordKey,
        fingerprint: u64,
        deadline: Instant,
    ) -> Shared {
        let rkey = redis_key(key);
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let left = deadline.saturating_duration_since(Instant::now());
        let pending = serde_json::to_string(&Wire::Pending {
            fingerprint,
            owner: owner.clone(),
            until: unix_ms(left),
        })
        .unwrap_or_default();
        // Serving locally, the claim outlives the call's deadline a little,
        // then expires so a crashed replica's claim does not block the id for
        // long. Refusing, it lives as long as a record: expiring while the
        // answer waits for Redis to return would let a retry write again.
        let claim_ttl = match self.outage {
            StoreOutage::ServeLocal => left + CLAIM_GRACE,
            StoreOutage::Refuse => TTL,
        };
        loop {
            let claimed: Result<Option<String>, Failure> = redis
                .try_run("claim request id", |mut c| {
                    let (rkey, pending) = (rkey.clone(), pending.clone());
                    async move {
                        redis::cmd("SET")
                            .arg(&rkey)
                            .arg(&pending)
                            .arg("NX")
                            .arg("PX")
                            .arg(claim_ttl.as_millis() as u64)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await;
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(Failure::Skipped) => return Shared::Unavailable,
                Err(Failure::Failed) => {
                    // The claim may have been set: take it back once Redis
                    // answers, or it would hold the id with nobody working.
                    release_later(redis.clone(), rkey, pending);
                    return Shared::Unavailable;
                }
            };
            if claimed.is_some() {
                return Shared::Owner(pending);
            }
            let current: Option<Option<String>> = redis
                .run("read request id", |mut c| {
                    let rkey = rkey.clone();
                    async move { redis::cmd("GET").arg(&rkey).query_async(&mut c).await }
                })
                .await;
            let Some(current) = current else {
                return Shared::Unavailable;
            };
            match current.and_then(|text| serde_json::from_str::<Wire>(&text).ok()) {
                // Expired or released in between: claim again.
                None => continue,
                Some(Wire::Done {
                    fingerprint: f,
                    outcome,
                }) => {
                    return if f == fingerprint {
                        Shared::Replay(outcome)
                    } else {
                        Shared::Refused(Refused::Reused)
                    };
                }
                Some(Wire::Pending { fingerprint: f, .. }) if f != fingerprint => {
                    return Shared::Refused(Refused::Reused);
                }
                // Our own claim, whose answer was lost before a resend.
                Some(Wire::Pending { owner: o, .. }) if o == owner => {
                    return Shared::Owner(pending);
                }
                Some(Wire::Pending { until, .. })
                    if self.outage == StoreOutage::Refuse
                        && until != 0
                        && until.saturating_add(CLAIM_GRACE.as_millis() as u64)
                            < unix_ms(Duration::ZERO) =>
                {
                    return Shared::Refused(Refused::Abandoned);
                }
                Some(Wire::Pending { .. }) => {
                    if Instant::now() + POLL >= deadline {
                        return Shared::Refused(Refused::Deadline);
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

enum Shared {
    /// Claimed: the claim's value.
    Owner(String),
    Replay(Outcome),
    Refused(Refused),
    Unavailable,
}

impl Claim {
    /// Records the answer for later calls with the same request id.
    pub async fn finish(mut self, outcome: Outcome) {
        if let Some((redis, _claim)) = self.redis.take() {
            let rkey = redis_key(&self.key);
            let value = serde_json::to_string(&Wire::Done {
                fingerprint: self.fingerprint,
                outcome: outcome.clone(),
            })
            .unwrap_or_default();
            let store = move |mut c: redis::aio::ConnectionManager| {
                let (rkey, value) = (rkey.clone(), value.clone());
                async move {
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(&value)
                        .arg("PX")
                        .arg(TTL.as_millis() as u64)
                        .query_async::<()>(&mut c)
                        .await
                }
            };
            if redis.run("store request id", &store).await.is_none() {
                rewrite_later(redis, "store request id", store);
            }
        }
        self.finish_local(outcome);
    }

    fn finish_local(&mut self, outcome: Outcome) {
        self.finished = true;
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = local.pending.remove(&self.key) {
            p.released.notify_waiters();
        }
        local.store(self.key.clone(), self.fingerprint, outcome);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = local.pending.remove(&self.key) {
                p.released.notify_waiters();
            }
        }
        if let Some((redis, value)) = self.redis.take() {
            release_later(redis, redis_key(&self.key), value);
        }
    }
}

/// Deletes the claim `value` of `rkey` in the background, if it is still
/// there.
fn release_later(redis: Arc<Redis>, rkey: String, value: String) {
    let release = move |mut c: redis::aio::ConnectionManager| {
        let (rkey, value) = (rkey.clone(), value.clone());
        async move {
            redis::Script::new(RELEASE)
                .key(rkey)
                .arg(value)
                .invoke_async::<i64>(&mut c)
                .await
        }
    };
    rewrite_later(redis, "release request id", release);
}

/// Runs `op` on Redis in the background until Redis takes it (every
/// [`REWRITE_EVERY`], for at most a record's [`TTL`]): an answer or a
/// release that Redis missed must reach it, or another replica could write
/// again or wait on a claim nobody holds. Only calls whose Redis command
/// failed while being sent get here; at most [`MAX_REWRITES`] wait at once
/// (past that the claim is left to expire, and a warning says so).
fn rewrite_later<T, F, Fut>(redis: Arc<Redis>, what: &'static str, op: F)
where
    T: Send + 'static,
    F: Fn(redis::aio::ConnectionManager) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if REWRITES.fetch_add(1, Ordering::Relaxed) >= MAX_REWRITES {
        REWRITES.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(
            op = what,
            "too many request-id records wait for Redis to return; this one is left to expire"
        );
        return;
    }
    handle.spawn(async move {
        let give_up = Instant::now() + TTL;
        while redis.run(what, &op).await.is_none() && Instant::now() < give_up {
            tokio::time::sleep(REWRITE_EVERY).await;
        }
        REWRITES.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Background rewrites waiting for Redis now.
static REWRITES: AtomicUsize = AtomicUsize::new(0);

/// Unix time in milliseconds, `ahead` from now.
fn unix_ms(ahead: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + ahead).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(n: u8) -> Outcome {
        Outcome::Created {
            name: format!("s/{n}"),
            response: Some(Bytes::from(vec![n])),
            graph_request_id: None,
        }
    }

    fn key(n: u128) -> RecordKey {
        RecordKey::new("c", "p", uuid::Uuid::from_u128(n))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    async fn owner(ids: &RequestIds, k: &RecordKey, fp: u64) -> Claim {
        match ids.begin(k, fp, far()).await {
            Ok(Begin::Owner(c)) => c,
            _ => panic!("expected to own {k:?}"),
        }
    }

    #[tokio::test]
    async fn the_first_answer_is_replayed_and_duplicates_wait() {
        let ids = Arc::new(RequestIds::default());
        let k = key(1);
        let claim = owner(&ids, &k, 7).await;
        let waiter = {
            let (ids, k) = (ids.clone(), k.clone());
            tokio::spawn(async move { ids.begin(&k, 7, far()).await })
        };
        tokio::task::yield_now().await;
        claim.finish(created(1)).await;
        match waiter.await.unwrap() {
            Ok(Begin::Replay(o)) => assert_eq!(o, created(1)),
            _ => panic!("the duplicate gets the first answer"),
        }
        assert!(matches!(
            ids.begin(&k, 8, far()).await,
            Err(Refused::Reused)
        ));
    }

    #[tokio::test]
    async fn a_released_claim_can_be_taken_again() {
        let ids = RequestIds::default();
        let k = key(2);
        drop(owner(&ids, &k, 1).await);
        let again = owner(&ids, &k, 1).await;
        again
            .finish(Outcome::Unknown {
                message: "m".into(),
            })
            .await;
        assert!(matches!(
            ids.begin(&k, 1, far()).await,
            Ok(Begin::Replay(Outcome::Unknown { .. }))
        ));
    }

    #[tokio::test]
    async fn a_duplicate_gives_up_at_its_deadline() {
        let ids = RequestIds::default();
        let k = key(3);
        let _claim = owner(&ids, &k, 1).await;
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(matches!(
            ids.begin(&k, 1, soon).await,
            Err(Refused::Deadline)
        ));
    }

    #[tokio::test]
    async fn memory_is_bounded_in_bytes_even_with_a_call_running() {
        let ids = RequestIds::default();
        // A slow call holds its claim throughout.
        let _slow = owner(&ids, &key(u128::MAX), 0).await;
        let big = Bytes::from(vec![0u8; MAX_STORED_RESPONSE]);
        for n in 0..20_000u128 {
            let c = owner(&ids, &key(n), 0).await;
            c.finish(Outcome::Created {
                name: "x".repeat(200),
                response: Some(big.clone()),
                graph_request_id: Some("r".repeat(36)),
            })
            .await;
        }
        let local = ids.local.lock().unwrap();
        assert!(local.bytes <= MAX_BYTES, "{}", local.bytes);
        assert!(local.done.len() < 20_000, "old records were evicted");
        assert!(local.order.len() <= local.done.len() + 1);
        assert_eq!(local.pending.len(), 1);
    }

    #[test]
    fn records_survive_a_round_trip_through_their_wire_form() {
        let w = Wire::Done {
            fingerprint: 5,
            outcome: created(3),
        };
        let text = serde_json::to_string(&w).unwrap();
        match serde_json::from_str::<Wire>(&text).unwrap() {
            Wire::Done {
                fingerprint,
                outcome,
            } => {
                assert_eq!(fingerprint, 5);
                assert_eq!(outcome, created(3));
            }
            _ => panic!("wrong variant"),
        }
    }
}
