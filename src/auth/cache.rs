//! Our token cache, in front of every credential: one fetch at a time per key
//! (failures included, for a short while), refresh in the background well
//! before expiry while the current token keeps serving, and a bounded number
//! of keys (one per user with on-behalf-of).

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::HeaderValue;
use tokio::{
    sync::watch,
    time::{Instant, timeout_at},
};

use super::TokenError;

/// A token as the identity platform returned it.
pub struct Fetched {
    pub access_token: String,
    pub expires_in: Duration,
}

/// A cached token, ready to send.
#[derive(Debug)]
pub struct Token {
    /// `Bearer …`, marked sensitive.
    pub header: HeaderValue,
    /// From here on, a call starts a background refresh.
    refresh_at: Instant,
    /// From here on, the token is not handed out (a margin for clock skew
    /// and the time the Graph call takes).
    usable_until: Instant,
}

impl Token {
    fn new(header: HeaderValue, lifetime: Duration, now: Instant) -> Self {
        let refresh_before = (lifetime / 2).min(Duration::from_secs(300));
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        Self {
            header,
            refresh_at: now + lifetime - refresh_before,
            usable_until: now + lifetime - margin,
        }
    }
}

pub type Outcome = Result<Arc<Token>, TokenError>;

/// How long a failed fetch is answered from the cache: a refusal (a wrong
/// secret) needs an operator, an outage may pass sooner.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
pub const REFUSAL_TTL: Duration = Duration::from_secs(15);

struct Entry {
    token: Option<Arc<Token>>,
    /// The last failure and until when it is served.
    failure: Option<(TokenError, Instant)>,
    /// The fetch in flight, if any.
    flight: Option<watch::Receiver<Option<Outcome>>>,
    /// No background refresh before this (after a failed one).
    refresh_paused_until: Option<Instant>,
    last_used: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            token: None,
            failure: None,
            flight: None,
            refresh_paused_until: None,
            last_used: now,
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.flight.is_none()
            && self.token.as_ref().is_none_or(|t| now >= t.usable_until)
            && self.failure.as_ref().is_none_or(|(_, until)| now >= *until)
    }
}

/// Tokens per key `K`, with single-flight fetches.
pub struct TokenCache<K> {
    entries: Mutex<HashMap<K, Entry>>,
    capacity: usize,
    fetch_timeout: Duration,
}

impl<K: Hash + Eq + Clone + Send + 'static> TokenCache<K> {
    /// A cache holding at most `capacity` keys, giving each fetch `fetch_timeout`.
    pub fn new(capacity: usize, fetch_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            fetch_timeout,
        })
    }

    /// How many keys are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// The token for `key`: cached, or fetched with `fetch` (one fetch per key
    /// at a time, shared by every caller). Waits at most until `deadline`;
    /// the fetch itself carries on (for the others and the cache) up to the
    /// fetch timeout.
    pub async fn get<F, Fut>(self: &Arc<Self>, key: K, deadline: Instant, fetch: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, TokenError>> + Send + 'static,
    {
        let mut rx = {
            let mut entries = lock(&self.entries);
            let now = Instant::now();
            if !entries.contains_key(&key) && entries.len() >= self.capacity {
                evict(&mut entries, now, self.capacity);
            }
            let entry = entries
                .entry(key.clone())
                .or_insert_with(|| Entry::new(now));
            entry.last_used = now;
            if let Some(token) = entry.token.clone().filter(|t| now < t.usable_until) {
                let paused = entry.refresh_paused_until.is_some_and(|u| now < u);
                if now >= token.refresh_at && entry.flight.is_none() && !paused {
                    tracing::debug!("refreshing the Graph token in the background");
                    entry.flight = Some(self.start(key, fetch()));
                }
                return Ok(token);
            }
            if let Some((error, until)) = &entry.failure
                && now < *until
            {
                return Err(error.clone());
            }
            match &entry.flight {
                Some(rx) => rx.clone(),
                None => {
                    let rx = self.start(key, fetch());
                    entry.flight = Some(rx.clone());
                    rx
                }
            }
        };
        match timeout_at(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome
                .clone()
                .unwrap_or_else(|| Err(TokenError::Credential("no token".into()))),
            Ok(Err(_)) => Err(TokenError::Credential(
                "the token request stopped unexpectedly".into(),
            )),
            Err(_) => Err(TokenError::Deadline),
        }
    }

    /// Runs one fetch in its own task and settles the cache with its outcome.
    fn start(
        self: &Arc<Self>,
        key: K,
        fetch: impl Future<Output = Result<Fetched, TokenError>> + Send + 'static,
    ) -> watch::Receiver<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        let cache = Arc::clone(self);
        let timeout = self.fetch_timeout;
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, fetch).await {
                Ok(result) => result,
                Err(_) => Err(TokenError::Timeout(timeout)),
            };
            let label = match &result {
                Ok(_) => "ok",
                Err(TokenError::Rejected { .. }) => "rejected",
                Err(TokenError::Timeout(_)) => "timeout",
                Err(TokenError::Unavailable { .. }) => "unavailable",
                Err(_) => "error",
            };
            metrics::counter!(crate::metrics::TOKEN_FETCHES, "result" => label).increment(1);
            metrics::histogram!(crate::metrics::TOKEN_FETCH_DURATION)
                .record(started.elapsed().as_secs_f64());
            match &result {
                Ok(f) => {
                    tracing::debug!(expires_in_s = f.expires_in.as_secs(), "got a Graph token")
                }
                Err(e) => tracing::warn!(error = %e, "cannot get a Graph token"),
            }
            let outcome = cache.settle(&key, result);
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    fn settle(&self, key: &K, result: Result<Fetched, TokenError>) -> Outcome {
        let now = Instant::now();
        let outcome = result.and_then(|f| {
            let header = super::bearer(&f.access_token).map_err(|_| {
                TokenError::Credential("the identity platform returned an unusable token".into())
            })?;
            Ok(Arc::new(Token::new(header, f.expires_in, now)))
        });
        let mut entries = lock(&self.entries);
        let entry = entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now));
        entry.flight = None;
        match &outcome {
            Ok(token) => {
                entry.token = Some(Arc::clone(token));
                entry.failure = None;
                entry.refresh_paused_until = None;
            }
            Err(error) => {
                let ttl = match error {
                    TokenError::Rejected { .. } => REFUSAL_TTL,
                    _ => NEGATIVE_TTL,
                };
                entry.failure = Some((error.clone(), now + ttl));
                entry.refresh_paused_until = Some(now + NEGATIVE_TTL);
            }
        }
        outcome
    }
}

/// Makes room for one more key: drops idle entries, then the least recently
/// used ones not being fetched.
fn evict<K: Hash + Eq + Clone>(entries: &mut HashMap<K, Entry>, now: Instant, capacity: usize) {
    entries.retain(|_, e| !e.idle(now));
    while entries.len() >= capacity {
        let oldest = entries
            .iter()
            .filter(|(_, e)| e.flight.is_none())
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                entries.remove(&k);
            }
            None => break,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fetched(lifetime: u64) -> Fetched {
        Fetched {
            access_token: "t".into(),
            expires_in: Duration::from_secs(lifetime),
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_also_when_it_fails() {
        for fail in [false, true] {
            let cache = TokenCache::<()>::new(1, Duration::from_secs(10));
            let calls = Arc::new(AtomicUsize::new(0));
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let (cache, calls) = (cache.clone(), calls.clone());
                tasks.push(tokio::spawn(async move {
                    cache
                        .get((), deadline, || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if fail {
                                Err(TokenError::Credential("no".into()))
                            } else {
                                Ok(fetched(3600))
                            }
                        })
                        .await
                        .is_ok()
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), !fail);
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "fail={fail}");
        }
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_its_capacity() {
        let cache = TokenCache::<u32>::new(3, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(30);
        for user in 0..10 {
            cache
                .get(user, deadline, || async { Ok(fetched(3600)) })
                .await
                .unwrap();
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn refresh_comes_well_before_expiry() {
        let now = Instant::now();
        for (lifetime, refresh, usable) in [(3600, 3300, 3570), (10, 5, 9)] {
            let t = Token::new(
                HeaderValue::from_static("Bearer x"),
                Duration::from_secs(lifetime),
                now,
            );
            assert_eq!(t.refresh_at - now, Duration::from_secs(refresh));
            assert_eq!(t.usable_until - now, Duration::from_secs(usable));
        }
    }
}
