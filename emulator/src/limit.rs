//! The write limit: a sliding window over the writes the emulator accepted.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The most writes a limit may allow per window.
pub const MAX_WRITES: u32 = 100_000;

/// At most `writes` POST/PATCH/DELETE requests in any window of `window`
/// (a sliding window over the accepted writes' arrival times).
#[derive(Default)]
pub struct WriteLimiter {
    pub limit: Option<(u32, Duration)>,
    pub accepted: VecDeque<Instant>,
}

impl WriteLimiter {
    /// Counts a write, or says how long until one would be accepted.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        let Some((writes, window)) = self.limit else {
            return Ok(());
        };
        while self
            .accepted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.accepted.pop_front();
        }
        if self.accepted.len() < writes as usize {
            self.accepted.push_back(now);
            return Ok(());
        }
        let oldest = self.accepted.front().copied().unwrap_or(now);
        Err(window.saturating_sub(now.duration_since(oldest)))
    }
}

/// The longest window.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Parses a write limit such as `50/5s`: writes per window, the window in
/// humantime's units (`500ms`, `5s`, `2m`, `1h`), above zero and at most 24h.
pub fn parse_write_limit(text: &str) -> Result<(u32, Duration), String> {
    let (n, window) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a limit like 50/5s"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: the number of writes must be a whole number"))?;
    if !(1..=MAX_WRITES).contains(&n) {
        return Err(format!("the number of writes must be 1 to {MAX_WRITES}"));
    }
    let window = humantime::parse_duration(window.trim())
        .map_err(|e| format!("{window:?} is not a window like 5s or 500ms: {e}"))?;
    if window.is_zero() || window > MAX_WINDOW {
        return Err("the window must be above zero and at most 24h".into());
    }
    Ok((n, window))
}
