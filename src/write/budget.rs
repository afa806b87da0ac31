//! The budgets: at most N requests to Graph in any window of S seconds, per
//! tenant, as a sliding window over send times. The write budget
//! (`--write-budget 200/20s`) counts writes; the read budget (`--read-budget
//! 2000/20s`) counts requests of any kind, as Intune's request limit does.
//!
//! Every request reserves the earliest slot that keeps the window within the
//! limit, in arrival order (FIFO), and sleeps until it. A slot past the
//! caller's deadline is refused at once, with the wait it would have needed.
//! A 429 from Graph pauses the tenant's budget for its `Retry-After`.
//! With Redis the send times live in one sorted set per tenant and budget,
//! updated by one atomic script, so every replica draws from the same budget;
//! while Redis is unreachable each replica keeps 1/`replicas` of it locally.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    str::FromStr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::state::redis::Redis;

/// N requests per S seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpec {
    pub limit: u32,
    pub window: Duration,
}

/// `--write-budget` or `--read-budget`: a budget, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFlag(pub Option<BudgetSpec>);

impl Default for BudgetFlag {
    /// Intune's documented write limit per app and tenant.
    fn default() -> Self {
        BudgetFlag(Some(BudgetSpec {
            limit: 200,
            window: Duration::from_secs(20),
        }))
    }
}

impl fmt::Display for BudgetFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(s) => write!(f, "{}/{}ms", s.limit, s.window.as_millis()),
        }
    }
}

impl FromStr for BudgetFlag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "off" {
            return Ok(BudgetFlag(None));
        }
        let (n, window) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: use N/DURATION like 200/20s, or off"))?;
        let limit: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a whole number of requests"))?;
        if !(1..=1_000_000).contains(&limit) {
            return Err("the number of requests must be 1 to 1000000".into());
        }
        let window = crate::config::parse_duration(window)?;
        Ok(BudgetFlag(Some(BudgetSpec { limit, window })))
    }
}

/// Kept between sends so that jitter on the way to Graph cannot squeeze N+1
/// sends into a window as Graph measures it.
fn margin(window: Duration) -> Duration {
    (window / 20).min(Duration::from_millis(500))
}

/// One tenant's writes in reservation order: (sequence, time). The time is
/// the reserved send slot, moved to the moment the answer came back once it
/// did (Graph counts a write somewhere in between, so the later is safe).
#[derive(Default)]
struct Window {
    writes: VecDeque<(u64, Instant)>,
    next_seq: u64,
    paused_until: Option<Instant>,
}

/// The earliest time a write may go, given the times of the writes reserved
/// before it: the `limit`-th latest of them plus the window.
fn earliest(times: impl Iterator<Item = Instant>, limit: usize, span: Duration) -> Option<Instant> {
    let mut times: Vec<Instant> = times.collect();
    if times.len() < limit {
        return None;
    }
    times.sort_unstable_by(|a, b| b.cmp(a));
    Some(times[limit - 1] + span)
}

impl Window {
    fn trim(&mut self, now: Instant, span: Duration) {
        while self.writes.front().is_some_and(|(_, t)| *t + span <= now) {
            self.writes.pop_front();
        }
    }

    /// Reserves the earliest slot at or after `now`, as (sequence, slot);
    /// `Err(slot)` when it would be later than `latest`.
    fn reserve(
        &mut self,
        now: Instant,
        latest: Instant,
        limit: u32,
        window: Duration,
    ) -> Result<(u64, Instant), Instant> {
        let span = window + margin(window);
        self.trim(now, span);
        let mut slot = now;
        if let Some(last) = self.writes.iter().map(|(_, t)| *t).max() {
            slot = slot.max(last);
        }
        if let Some(at) = earliest(self.writes.iter().map(|(_, t)| *t), limit as usize, span) {
            slot = slot.max(at);
        }
        if let Some(p) = self.paused_until {
            slot = slot.max(p);
        }
        if slot > latest {
            return Err(slot);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.writes.push_back((seq, slot));
        Ok((seq, slot))
    }

    /// Reserves `n` writes that go together (one `$batch`): all at the
    /// earliest slot where the window has room for every one of them, so a
    /// batch never holds a slot of one window while it waits for the next.
    /// Returns their sequences and the slot; `Err(slot)` as for
    /// [`Window::reserve`]. `n` is at most `limit`.
    fn reserve_many(
        &mut self,
        now: Instant,
        latest: Instant,
        limit: u32,
        window: Duration,
        n: usize,
    ) -> Result<(Vec<u64>, Instant), Instant> {
        let span = window + margin(window);
        self.trim(now, span);
        let mut slot = now;
        if let Some(last) = self.writes.iter().map(|(_, t)| *t).max() {
            slot = slot.max(last);
        }
        // The last of them may go once at most `limit - n` earlier writes
        // are left in its window.
        let room = (limit as usize).saturating_sub(n) + 1;
        if let Some(at) = earliest(self.writes.iter().map(|(_, t)| *t), room, span) {
            slot = slot.max(at);
        }
        if let Some(p) = self.paused_until {
            slot = slot.max(p);
        }
        if slot > latest {
            return Err(slot);
        }
        let seqs: Vec<u64> = (0..n as u64).map(|i| self.next_seq + i).collect();
        self.next_seq += n as u64;
        self.writes.extend(seqs.iter().map(|&seq| (seq, slot)));
        Ok((seqs, slot))
    }

    /// When write `seq` may go now that earlier writes may have finished
    /// later than planned.
    fn recheck(&mut self, seq: u64, now: Instant, limit: u32, window: Duration) -> Instant {
        let span = window + margin(window);
        self.trim(now, span);
        let before = self
            .writes
            .iter()
            .filter(|(s, t)| *s < seq && *t + span > now)
            .map(|(_, t)| *t);
        let mut at = earliest(before, limit as usize, span).unwrap_or(now);
        if let Some(p) = self.paused_until {
            at = at.max(p);
        }
        at
    }

    /// Write `seq` got its answer at `now`.
    fn finished(&mut self, seq: u64, now: Instant) {
        if let Some((_, t)) = self.writes.iter_mut().find(|(s, _)| *s == seq) {
            *t = (*t).max(now);
        }
    }

    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.writes.iter().all(|(_, t)| *t + window * 2 <= now)
            && self.paused_until.is_none_or(|p| p <= now)
    }
}

/// Most tenants tracked locally; idle ones are dropped past it.
const MAX_TENANTS: usize = 10_000;

/// The budgets the engine draws from; either may be off.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    /// `--write-budget`: writes take a slot.
    pub writes: Option<Arc<Budget>>,
    /// `--read-budget`: every request, read or write, takes a slot.
    pub requests: Option<Arc<Budget>>,
}

impl Budgets {
    pub fn any(&self) -> bool {
        self.writes.is_some() || self.requests.is_some()
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// Writes (`--write-budget`).
    Writes,
    /// Requests of any kind, reads and writes (`--read-budget`).
    Requests,
}

impl Counts {
    /// The start of its Redis keys.
    fn key_prefix(self) -> &'static str {
        match self {
            Counts::Writes => "runstate:",
            Counts::Requests => "runstate:read",
        }
    }

    /// Its name in logs.
    fn label(self) -> &'static str {
        match self {
            Counts::Writes => "write budget",
            Counts::Requests => "read budget",
        }
    }

    fn wait_metric(self) -> &'static str {
        match self {
            Counts::Writes => crate::metrics::WRITE_BUDGET_WAIT,
            Counts::Requests => crate::metrics::READ_BUDGET_WAIT,
        }
    }

    fn rejected_metric(self) -> &'static str {
        match self {
            Counts::Writes => crate::metrics::WRITE_BUDGET_REJECTED,
            Counts::Requests => crate::metrics::READ_BUDGET_REJECTED,
        }
    }
}

/// The budget of all tenants, for writes or for requests of any kind.
pub struct Budget {
    counts: Counts,
    spec: BudgetSpec,
    /// The share of the budget used while Redis is unreachable.
    local_limit: u32,
    local: Mutex<HashMap<String, Window>>,
    redis: Option<Arc<Redis>>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("counts", &self.counts)
            .field("spec", &self.spec)
            .field("shared", &self.redis.is_some())
            .finish()
    }
}

/// A request's place in the budget. Hold it until the request's answer is
/// back (or it failed): dropping it records that moment.
pub struct Permit {
    budget: Arc<Budget>,
    tenant: String,
    place: Place,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant)
            .finish()
    }
}

enum Place {
    Local(u64),
    Shared(String),
}

impl Drop for Permit {
    fn drop(&mut self) {
        match &self.place {
            Place::Local(seq) => {
                let mut windows = self.budget.local.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(w) = windows.get_mut(&self.tenant) {
                    w.finished(*seq, Instant::now());
                }
            }
            Place::Shared(member) => {
                let (budget, tenant, member) =
                    (self.budget.clone(), self.tenant.clone(), member.clone());
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move { budget.finish_shared(&tenant, member).await });
                }
            }
        }
    }
}

/// A budget script: `now` (ms on the Redis clock) is set before `$body`.
macro_rules! script {
    ($body:literal) => {
        LazyLock::new(|| {
            redis::Script::new(concat!(
                "local t = redis.call('TIME')\n",
                "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)",
                $body
            ))
        })
    };
}

/// The sliding window over a tenant's sorted set of writes (score: time in
/// ms on the Redis clock; member: a zero-padded sequence number, then a
/// unique suffix). Returns {1, wait_ms, member} for a reserved slot, {0,
/// wait_ms} when the wait would exceed ARGV[3].
static RESERVE: LazyLock<redis::Script> = script!(
    r"
local span = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local slot = now
local n = redis.call('ZCARD', KEYS[1])
if n > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  slot = math.max(slot, tonumber(last[2]))
end
if n >= limit then
  local e = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  slot = math.max(slot, tonumber(e[2]) + span)
end
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then slot = math.max(slot, pause) end
local wait = slot - now
if wait > max_wait then return {0, wait} end
local seq = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], span * 2 + wait)
local member = string.format('%020d', seq) .. ARGV[4]
redis.call('ZADD', KEYS[1], slot, member)
redis.call('PEXPIRE', KEYS[1], span * 2 + wait)
return {1, wait, member}
"
);

/// How long write ARGV[1] must still wait: the writes reserved before it
/// (smaller members) may have finished later than planned.
static RECHECK: LazyLock<redis::Script> = script!(
    r"
local span = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local e = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - span), '+inf', 'WITHSCORES')
local times = {}
for i = 1, #e, 2 do
  if e[i] < ARGV[1] then table.insert(times, tonumber(e[i + 1])) end
end
local at = now
if #times >= limit then
  table.sort(times, function(a, b) return a > b end)
  at = times[limit] + span
end
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > at then at = pause end
return at - now
"
);

/// Write ARGV[1] got its answer now: move its time there.
static FINISH: LazyLock<redis::Script> = script!(
    r"
redis.call('ZADD', KEYS[1], 'XX', 'GT', now, ARGV[1])
return 1
"
);

/// Sets the pause to now + ARGV[1] ms unless a later one is set.
static PAUSE: LazyLock<redis::Script> = script!(
    r"
local until_ms = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if until_ms > cur then
  redis.call('SET', KEYS[2], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return 1
"
);

/// The sorted set, pause and sequence keys of a tenant's budget: KEYS[1],
/// KEYS[2] and KEYS[3] of every script above.
fn keys(counts: Counts, tenant: &str) -> [String; 3] {
    let prefix = counts.key_prefix();
    [
        format!("{prefix}budget:{tenant}"),
        format!("{prefix}pause:{tenant}"),
        format!("{prefix}budgetseq:{tenant}"),
    ]
}

impl Budget {
    /// A budget; with Redis, shared with the other replicas (`replicas` of
    /// them, for the local share while Redis is down).
    pub fn new(counts: Counts, spec: BudgetSpec, redis: Option<Arc<Redis>>, replicas: u32) -> Self {
        let local_limit = if redis.is_some() {
            (spec.limit / replicas.max(1)).max(1)
        } else {
            spec.limit
        };
        Self {
            counts,
            spec,
            local_limit,
            local: Mutex::default(),
            redis,
        }
    }

    fn span(&self) -> Duration {
        self.spec.window + margin(self.spec.window)
    }

    /// What it counts.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Waits for a slot of `tenant` and returns the permit to hold while the
    /// request is under way. `Err(wait)` at once when the slot would come
    /// after `deadline`: the caller answers RESOURCE_EXHAUSTED with that wait
    /// as `RetryInfo`.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        deadline: Instant,
    ) -> Result<Permit, Duration> {
        let started = Instant::now();
        let reserved = match self.reserve_shared(tenant, deadline).await {
            Some(result) => result,
            None => self.reserve_local(tenant, deadline),
        };
        let (place, at) = match reserved {
            Ok(r) => r,
            Err(wait) => {
                metrics::counter!(self.counts.rejected_metric()).increment(1);
                return Err(wait);
            }
        };
        let permit = Permit {
            budget: self.clone(),
            tenant: tenant.to_owned(),
            place,
        };
        tokio::time::sleep_until(at).await;
        self.recheck_until(tenant, &permit.place, deadline).await?;
        metrics::histogram!(self.counts.wait_metric()).record(started.elapsed().as_secs_f64());
        Ok(permit)
    }

    /// Waits on until the window really has room for the request reserved
    /// at `place`: requests before it may have come back later than planned
    /// (a few rounds at most). `Err(wait)` once that would pass `deadline`.
    async fn recheck_until(
        &self,
        tenant: &str,
        place: &Place,
        deadline: Instant,
    ) -> Result<(), Duration> {
        for _ in 0..8 {
            let at = match place {
                Place::Local(seq) => self.with_window(tenant, |w, now| {
                    w.recheck(*seq, now, self.local_limit, self.spec.window)
                }),
                Place::Shared(member) => match self.recheck_shared(tenant, member).await {
                    Some(at) => at,
                    None => break,
                },
            };
            if at <= Instant::now() {
                break;
            }
            if at > deadline {
                metrics::counter!(self.counts.rejected_metric()).increment(1);
                return Err(at - Instant::now());
            }
            tokio::time::sleep_until(at).await;
        }
        Ok(())
    }

    /// Permits for `n` requests that go together (one `$batch`): they wait
    /// for one slot with room for all of them, so a batch never takes a
    /// slot in one window and goes in the next. With Redis (or more than
    /// the limit at once) they are taken one by one.
    pub async fn acquire_many(
        self: &Arc<Self>,
        tenant: &str,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<Permit>, Duration> {
        if n <= 1 || self.redis.is_some() || n > self.local_limit as usize {
            let mut permits = Vec::with_capacity(n);
            for _ in 0..n {
                permits.push(self.acquire(tenant, deadline).await?);
            }
            return Ok(permits);
        }
        let started = Instant::now();
        let reserved = self.with_window(tenant, |w, now| {
            w.reserve_many(now, deadline, self.local_limit, self.spec.window, n)
                .map_err(|slot| slot - now)
        });
        let (seqs, at) = match reserved {
            Ok(r) => r,
            Err(wait) => {
                metrics::counter!(self.counts.rejected_metric()).increment(1);
                return Err(wait);
            }
        };
        let last = seqs.last().copied().unwrap_or_default();
        let permits: Vec<Permit> = seqs
            .into_iter()
            .map(|seq| Permit {
                budget: self.clone(),
                tenant: tenant.to_owned(),
                place: Place::Local(seq),
            })
            .collect();
        tokio::time::sleep_until(at).await;
        // The last of them has every other one before it.
        self.recheck_until(tenant, &Place::Local(last), deadline)
            .await?;
        let waited = started.elapsed().as_secs_f64();
        for _ in 0..n {
            metrics::histogram!(self.counts.wait_metric()).record(waited);
        }
        Ok(permits)
    }

    fn reserve_local(&self, tenant: &str, deadline: Instant) -> Result<(Place, Instant), Duration> {
        self.with_window(tenant, |w, now| {
            w.reserve(now, deadline, self.local_limit, self.spec.window)
                .map(|(seq, at)| (Place::Local(seq), at))
                .map_err(|slot| slot - now)
        })
    }

    /// Runs `f` on the tenant's local window, now; past [`MAX_TENANTS`]
    /// windows, idle ones are dropped first.
    fn with_window<R>(&self, tenant: &str, f: impl FnOnce(&mut Window, Instant) -> R) -> R {
        let now = Instant::now();
        let mut windows = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TENANTS && !windows.contains_key(tenant) {
            windows.retain(|_, w| !w.idle(now, self.spec.window));
        }
        f(windows.entry(tenant.to_owned()).or_default(), now)
    }

    /// The slot from Redis; `None` when Redis cannot be used.
    async fn reserve_shared(
        &self,
        tenant: &str,
        deadline: Instant,
    ) -> Option<Result<(Place, Instant), Duration>> {
        let max_wait = deadline.saturating_duration_since(Instant::now());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let (granted, wait_ms, member): (i64, i64, Option<String>) = self
            .shared(tenant, &RESERVE, |call| {
                call.arg(self.span().as_millis() as u64)
                    .arg(self.spec.limit)
                    .arg(max_wait.as_millis() as u64)
                    .arg(suffix);
            })
            .await?;
        let wait = Duration::from_millis(wait_ms.max(0) as u64);
        Some(match (granted, member) {
            (1, Some(member)) => Ok((Place::Shared(member), Instant::now() + wait)),
            _ => Err(wait),
        })
    }

    async fn recheck_shared(&self, tenant: &str, member: &str) -> Option<Instant> {
        let wait_ms: i64 = self
            .shared(tenant, &RECHECK, |call| {
                call.arg(member)
                    .arg(self.span().as_millis() as u64)
                    .arg(self.spec.limit);
            })
            .await?;
        Some(Instant::now() + Duration::from_millis(wait_ms.max(0) as u64))
    }

    async fn finish_shared(&self, tenant: &str, member: String) {
        self.shared::<i64>(tenant, &FINISH, |call| {
            call.arg(member);
        })
        .await;
    }

    /// Runs one of the scripts above on the tenant's keys; `None` when
    /// Redis is not configured or cannot be used.
    async fn shared<T: redis::FromRedisValue>(
        &self,
        tenant: &str,
        script: &redis::Script,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Option<T> {
        let redis = self.redis.as_ref()?;
        let mut call = script.prepare_invoke();
        for key in keys(self.counts, tenant) {
            call.key(key);
        }
        args(&mut call);
        redis.script(self.counts.label(), &call).await
    }

    /// Pauses every request of `tenant` this budget counts for `delay`
    /// (after a 429 from Graph).
    pub async fn pause(&self, tenant: &str, delay: Duration) {
        let until = Instant::now() + delay;
        {
            let mut windows = self.local.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.entry(tenant.to_owned()).or_default();
            w.paused_until = Some(w.paused_until.map_or(until, |p| p.max(until)));
        }
        self.shared::<i64>(tenant, &PAUSE, |call| {
            call.arg(delay.as_millis() as u64);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32, secs: u64) -> BudgetSpec {
        BudgetSpec {
            limit,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn parses_the_flag() {
        assert_eq!(
            "200/20s".parse::<BudgetFlag>(),
            Ok(BudgetFlag(Some(spec(200, 20))))
        );
        assert_eq!("off".parse::<BudgetFlag>(), Ok(BudgetFlag(None)));
        assert_eq!(BudgetFlag::default(), BudgetFlag(Some(spec(200, 20))));
        for bad in ["", "200", "0/20s", "x/20s", "200/0s", "200/20x", "-1/1s"] {
            assert!(bad.parse::<BudgetFlag>().is_err(), "{bad}");
        }
    }

    /// Checks that no window of `window` (plus nothing) holds more than `limit`.
    fn max_in_any_window(times: &[Instant], window: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t < times[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn never_more_than_n_in_any_window_and_fifo() {
        let now = Instant::now();
        let mut w = Window::default();
        let window = Duration::from_secs(5);
        let far = now + Duration::from_secs(3600);
        let mut slots = Vec::new();
        // 170 writes arriving in bursts at various times.
        for i in 0..170u64 {
            let arrive = now + Duration::from_millis((i / 20) * 700);
            slots.push(w.reserve(arrive, far, 50, window).unwrap().1);
        }
        assert!(slots.windows(2).all(|p| p[0] <= p[1]), "slots in order");
        assert_eq!(max_in_any_window(&slots, window), 50);
        // The first 50 go at once.
        assert!(
            slots[..50]
                .iter()
                .all(|s| *s - now < Duration::from_secs(3))
        );
    }

    #[test]
    fn a_batch_waits_for_a_window_with_room_for_all_of_it() {
        let now = Instant::now();
        let mut w = Window::default();
        let window = Duration::from_secs(5);
        let span = window + margin(window);
        let far = now + Duration::from_secs(3600);
        // 30 of 50 taken: one batch of 20 fits now, the next one waits for
        // the window to pass rather than taking the 0 left and 20 later.
        for _ in 0..30 {
            w.reserve(now, far, 50, window).unwrap();
        }
        let (first, at) = w.reserve_many(now, far, 50, window, 20).unwrap();
        assert_eq!((first.len(), at), (20, now));
        let (second, at) = w.reserve_many(now, far, 50, window, 20).unwrap();
        assert_eq!((second.len(), at), (20, now + span));
        // Every write is counted once, at the time it goes.
        let times: Vec<Instant> = w.writes.iter().map(|(_, t)| *t).collect();
        assert_eq!(max_in_any_window(&times, span), 50);
        assert_eq!(times.iter().filter(|t| **t == now + span).count(), 20);
        // Too late for the deadline: refused, nothing reserved.
        let err = w
            .reserve_many(now, now + Duration::from_secs(1), 50, window, 20)
            .unwrap_err();
        assert!(err > now + Duration::from_secs(1));
        assert_eq!(w.writes.len(), 70);
    }

    #[test]
    fn a_slot_past_the_deadline_is_refused_without_reserving() {
        let now = Instant::now();
        let mut w = Window::default();
        let window = Duration::from_secs(10);
        for _ in 0..3 {
            w.reserve(now, now, 3, window).unwrap();
        }
        let err = w
            .reserve(now, now + Duration::from_secs(1), 3, window)
            .unwrap_err();
        assert!(err - now >= window);
        assert_eq!(w.writes.len(), 3);
    }

    #[test]
    fn a_pause_delays_every_later_slot() {
        let now = Instant::now();
        let mut w = Window {
            paused_until: Some(now + Duration::from_secs(7)),
            ..Default::default()
        };
        let far = now + Duration::from_secs(60);
        let (_, slot) = w.reserve(now, far, 100, Duration::from_secs(1)).unwrap();
        assert_eq!(slot, now + Duration::from_secs(7));
    }

    #[test]
    fn a_write_that_came_back_late_holds_later_ones() {
        let now = Instant::now();
        let window = Duration::from_secs(5);
        let far = now + Duration::from_secs(3600);
        let mut w = Window::default();
        let (a, _) = w.reserve(now, far, 1, window).unwrap();
        let (b, planned) = w.reserve(now, far, 1, window).unwrap();
        assert!(planned > now + window);
        // On time, the second goes as planned.
        assert_eq!(
            w.recheck(b, planned - Duration::from_millis(1), 1, window),
            planned
        );
        // The first write's answer came back 2 s late: the second waits for it.
        w.finished(a, now + Duration::from_secs(2));
        let at = w.recheck(b, planned, 1, window);
        assert_eq!(at, planned + Duration::from_secs(2));
    }

    #[test]
    fn the_read_budget_keeps_keys_of_its_own() {
        assert_eq!(
            keys(Counts::Writes, "t"),
            [
                "runstate:budget:t",
                "runstate:pause:t",
                "runstate:budgetseq:t"
            ]
        );
        assert_eq!(
            keys(Counts::Requests, "t"),
            [
                "runstate:readbudget:t",
                "runstate:readpause:t",
                "runstate:readbudgetseq:t"
            ]
        );
    }

    #[tokio::test]
    async fn acquire_waits_then_refuses_past_the_deadline() {
        let window = Duration::from_millis(300);
        let b = Arc::new(Budget::new(
            Counts::Writes,
            BudgetSpec { limit: 2, window },
            None,
            1,
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = Instant::now();
        b.acquire("t", deadline).await.unwrap();
        b.acquire("t", deadline).await.unwrap();
        // Another tenant has its own budget.
        b.acquire("u", deadline).await.unwrap();
        b.acquire("t", deadline).await.unwrap();
        // A third write waited for the first to leave the window (measured
        // from before the first: the machine may be slow between calls).
        assert!(Instant::now() - first >= window);
        // A slot past the deadline is refused with the wait it needs.
        let slow = Arc::new(Budget::new(Counts::Writes, spec(1, 60), None, 1));
        slow.acquire("t", deadline).await.unwrap();
        let wait = slow.acquire("t", deadline).await.unwrap_err();
        assert!(wait > Duration::from_secs(50), "{wait:?}");
    }
}
