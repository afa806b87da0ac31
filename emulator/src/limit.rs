//! Intune's throttling: writes per app and per tenant, and requests of any
//! kind per app and per tenant, each a sliding window over the arrival times
//! of the requests it accepted; and the form of `Retry-After` on its 429s.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The most requests a limit may allow per window.
pub const MAX_WRITES: u32 = 100_000;
/// Apps tracked at once; past it idle ones are forgotten, and if none is,
/// new apps share one window.
const MAX_APPS: usize = 10_000;
/// The window new apps share when [`MAX_APPS`] are tracked.
const OTHER_APPS: &str = "(other apps)";

/// At most N requests in any window of this length.
pub type Limit = (u32, Duration);

/// Intune's limits in one tenant; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Writes (POST/PATCH/PUT/DELETE) per app: Intune's 200/20s.
    pub app_writes: Option<Limit>,
    /// Writes of all apps together: Intune's 400/20s.
    pub tenant_writes: Option<Limit>,
    /// Requests of any kind per app: Intune's 2000/20s.
    pub app_requests: Option<Limit>,
    /// Requests of any kind of all apps together: Intune's 4000/20s.
    pub tenant_requests: Option<Limit>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    AppWrites,
    TenantWrites,
    AppRequests,
    TenantRequests,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::AppWrites,
        Scope::TenantWrites,
        Scope::AppRequests,
        Scope::TenantRequests,
    ];

    /// Its name in the control API's settings.
    pub fn key(self) -> &'static str {
        match self {
            Scope::AppWrites => "write_limit",
            Scope::TenantWrites => "tenant_write_limit",
            Scope::AppRequests => "read_limit",
            Scope::TenantRequests => "tenant_read_limit",
        }
    }

    /// How a 429 names it.
    pub fn describe(self) -> &'static str {
        match self {
            Scope::AppWrites => "the application's write limit",
            Scope::TenantWrites => "the tenant's write limit for all applications",
            Scope::AppRequests => "the application's request limit",
            Scope::TenantRequests => "the tenant's request limit for all applications",
        }
    }

    fn counts(self, write: bool) -> bool {
        write || matches!(self, Scope::AppRequests | Scope::TenantRequests)
    }

    fn per_app(self) -> bool {
        matches!(self, Scope::AppWrites | Scope::AppRequests)
    }
}

impl Limits {
    pub fn get(&self, scope: Scope) -> Option<Limit> {
        match scope {
            Scope::AppWrites => self.app_writes,
            Scope::TenantWrites => self.tenant_writes,
            Scope::AppRequests => self.app_requests,
            Scope::TenantRequests => self.tenant_requests,
        }
    }

    pub fn set(&mut self, scope: Scope, limit: Option<Limit>) {
        let limit = limit.filter(|(n, w)| *n > 0 && !w.is_zero());
        match scope {
            Scope::AppWrites => self.app_writes = limit,
            Scope::TenantWrites => self.tenant_writes = limit,
            Scope::AppRequests => self.app_requests = limit,
            Scope::TenantRequests => self.tenant_requests = limit,
        }
    }
}

/// The `Retry-After` of a 429 from the limits. Intune often sends none, and
/// clients meet decimal and zero values too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RetryAfter {
    /// Whole seconds until a request would be accepted, rounded up (at least 1).
    #[default]
    Seconds,
    /// Seconds with one decimal, rounded up (at least 0.1), e.g. `1.5`.
    Decimal,
    /// Always `0`.
    Zero,
    /// No `Retry-After` header.
    None,
}

impl RetryAfter {
    /// The header's value for a wait, if any.
    pub fn value(self, wait: Duration) -> Option<String> {
        let ms = wait.as_millis() as u64;
        match self {
            RetryAfter::Seconds => Some(ms.div_ceil(1000).max(1).to_string()),
            RetryAfter::Decimal => {
                let tenths = ms.div_ceil(100).max(1);
                Some(format!("{}.{}", tenths / 10, tenths % 10))
            }
            RetryAfter::Zero => Some("0".into()),
            RetryAfter::None => None,
        }
    }
}

/// Arrival times of the requests a limit accepted, oldest first.
#[derive(Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// How long until one more request fits, or `None` if it fits now.
    fn wait(&mut self, now: Instant, (n, window): Limit) -> Option<Duration> {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.0.pop_front();
        }
        if self.0.len() < n as usize {
            return None;
        }
        let oldest = self.0.front().copied().unwrap_or(now);
        Some(window.saturating_sub(now.duration_since(oldest)))
    }
}

/// The limits and the windows they count in.
#[derive(Default)]
pub struct Limiter {
    limits: Limits,
    pub retry_after: RetryAfter,
    tenant: [Window; 2],
    /// Per-app windows by app id: writes, then requests.
    apps: HashMap<String, [Window; 2]>,
}

impl Limiter {
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// New limits; every window starts empty.
    pub fn set(&mut self, limits: Limits) {
        self.limits = limits;
        self.tenant = Default::default();
        self.apps.clear();
    }

    /// Counts a request of `app` in every limit it falls under, or, when a
    /// limit is full, counts it nowhere and says which limit waits longest
    /// and how long until the request would fit.
    pub fn admit(&mut self, app: &str, write: bool, now: Instant) -> Result<(), (Scope, Duration)> {
        let applies: Vec<(Scope, Limit)> = Scope::ALL
            .into_iter()
            .filter(|s| s.counts(write))
            .filter_map(|s| Some((s, self.limits.get(s)?)))
            .collect();
        if applies.is_empty() {
            return Ok(());
        }
        let app = self.app_key(app, now);
        let mut longest: Option<(Scope, Duration)> = None;
        for &(scope, limit) in &applies {
            if let Some(wait) = self.window(scope, &app).wait(now, limit)
                && longest.is_none_or(|(_, w)| wait > w)
            {
                longest = Some((scope, wait));
            }
        }
        if let Some(refused) = longest {
            return Err(refused);
        }
        for (scope, _) in applies {
            self.window(scope, &app).0.push_back(now);
        }
        Ok(())
    }

    fn window(&mut self, scope: Scope, app: &str) -> &mut Window {
        let index = usize::from(matches!(scope, Scope::AppRequests | Scope::TenantRequests));
        if scope.per_app() {
            &mut self.apps.entry(app.to_owned()).or_default()[index]
        } else {
            &mut self.tenant[index]
        }
    }

    /// The key of `app`'s windows, keeping at most [`MAX_APPS`] of them.
    fn app_key(&mut self, app: &str, now: Instant) -> String {
        if self.apps.contains_key(app) || self.apps.len() < MAX_APPS {
            return app.to_owned();
        }
        let limits = self.limits;
        self.apps.retain(|_, [writes, requests]| {
            let busy = |w: &mut Window, limit: Option<Limit>| {
                limit.is_some_and(|l| {
                    w.wait(now, l);
                    !w.0.is_empty()
                })
            };
            busy(writes, limits.app_writes) || busy(requests, limits.app_requests)
        });
        if self.apps.len() < MAX_APPS {
            app.to_owned()
        } else {
            OTHER_APPS.to_owned()
        }
    }
}

/// The longest window.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Parses a limit such as `50/5s`: requests per window, the window in
/// humantime's units (`500ms`, `5s`, `2m`, `1h`), above zero and at most 24h.
pub fn parse_write_limit(text: &str) -> Result<(u32, Duration), String> {
    let (n, window) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a limit like 50/5s"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: the number of requests must be a whole number"))?;
    if !(1..=MAX_WRITES).contains(&n) {
        return Err(format!("the number of requests must be 1 to {MAX_WRITES}"));
    }
    let window = humantime::parse_duration(window.trim())
        .map_err(|e| format!("{window:?} is not a window like 5s or 500ms: {e}"))?;
    if window.is_zero() || window > MAX_WINDOW {
        return Err("the window must be above zero and at most 24h".into());
    }
    Ok((n, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limiter(limits: Limits) -> Limiter {
        let mut l = Limiter::default();
        l.set(limits);
        l
    }

    #[test]
    fn the_tenant_write_limit_counts_every_app() {
        let mut l = limiter(Limits {
            app_writes: Some((2, MINUTE)),
            tenant_writes: Some((3, MINUTE)),
            ..Default::default()
        });
        let now = Instant::now();
        assert!(l.admit("a", true, now).is_ok());
        assert!(l.admit("a", true, now).is_ok());
        assert_eq!(l.admit("a", true, now).unwrap_err().0, Scope::AppWrites);
        assert!(l.admit("b", true, now).is_ok());
        // The tenant is full: app c has written nothing and is refused.
        let (scope, wait) = l.admit("c", true, now).unwrap_err();
        assert_eq!(scope, Scope::TenantWrites);
        assert_eq!(wait, MINUTE);
        // Reads are not writes.
        assert!(l.admit("c", false, now).is_ok());
        // The windows slide.
        assert!(l.admit("c", true, now + MINUTE).is_ok());
    }

    #[test]
    fn the_request_limits_count_reads_and_writes() {
        let mut l = limiter(Limits {
            app_requests: Some((2, MINUTE)),
            tenant_requests: Some((3, MINUTE)),
            ..Default::default()
        });
        let now = Instant::now();
        assert!(l.admit("a", false, now).is_ok());
        assert!(l.admit("a", true, now).is_ok());
        assert_eq!(l.admit("a", false, now).unwrap_err().0, Scope::AppRequests);
        assert!(l.admit("b", false, now).is_ok());
        assert_eq!(
            l.admit("b", true, now).unwrap_err().0,
            Scope::TenantRequests
        );
    }

    #[test]
    fn a_refused_request_counts_nowhere_and_the_longest_wait_is_given() {
        let mut l = limiter(Limits {
            app_writes: Some((1, Duration::from_secs(10))),
            app_requests: Some((5, MINUTE)),
            tenant_requests: Some((2, Duration::from_secs(30))),
            ..Default::default()
        });
        let now = Instant::now();
        assert!(l.admit("a", true, now).is_ok());
        let later = now + Duration::from_secs(1);
        // Both the app's writes (9 s) and the tenant's requests (not yet) are
        // checked; only the first is full.
        assert_eq!(
            l.admit("a", true, later),
            Err((Scope::AppWrites, Duration::from_secs(9)))
        );
        assert!(l.admit("b", false, later).is_ok());
        // Now both are full: the tenant's 29 s is the longer wait.
        assert_eq!(
            l.admit("a", true, later),
            Err((Scope::TenantRequests, Duration::from_secs(29)))
        );
        // Refusals took no place: after 30 s both windows are empty again.
        assert!(l.admit("a", true, now + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn the_window_slides() {
        let mut l = limiter(Limits {
            app_writes: Some((2, Duration::from_secs(10))),
            ..Default::default()
        });
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let wait = |s: u64| Err((Scope::AppWrites, Duration::from_secs(s)));
        assert!(l.admit("a", true, at(0)).is_ok());
        assert!(l.admit("a", true, at(6)).is_ok());
        assert_eq!(l.admit("a", true, at(9)), wait(1));
        assert!(
            l.admit("a", true, at(10)).is_ok(),
            "the first left the window"
        );
        assert_eq!(l.admit("a", true, at(15)), wait(1));
        assert!(l.admit("a", true, at(16)).is_ok());
    }

    #[test]
    fn apps_are_bounded() {
        let mut l = limiter(Limits {
            app_writes: Some((1, Duration::from_secs(1))),
            ..Default::default()
        });
        let now = Instant::now();
        for n in 0..MAX_APPS {
            assert!(l.admit(&n.to_string(), true, now).is_ok());
        }
        // All busy: new apps share one window.
        assert!(l.admit("new-1", true, now).is_ok());
        assert!(l.admit("new-2", true, now).is_err());
        assert!(l.apps.len() <= MAX_APPS + 1);
        // Once idle, they are forgotten to make room.
        let later = now + Duration::from_secs(2);
        assert!(l.admit("new-3", true, later).is_ok());
        assert!(l.apps.len() <= 2, "{}", l.apps.len());
    }

    #[test]
    fn retry_after_forms() {
        let wait = Duration::from_millis(1420);
        assert_eq!(RetryAfter::Seconds.value(wait).as_deref(), Some("2"));
        assert_eq!(RetryAfter::Decimal.value(wait).as_deref(), Some("1.5"));
        assert_eq!(RetryAfter::Zero.value(wait).as_deref(), Some("0"));
        assert_eq!(RetryAfter::None.value(wait), None);
        assert_eq!(
            RetryAfter::Seconds.value(Duration::ZERO).as_deref(),
            Some("1")
        );
        assert_eq!(
            RetryAfter::Decimal
                .value(Duration::from_millis(1))
                .as_deref(),
            Some("0.1")
        );
        assert_eq!(
            RetryAfter::Decimal.value(Duration::from_secs(3)).as_deref(),
            Some("3.0")
        );
    }
}
