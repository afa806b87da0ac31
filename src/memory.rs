//! Hands memory freed by a burst (thousands of streams or connections
//! closing) back to the system. mimalloc keeps freed pages in each thread's
//! heap until that thread collects, and returns them to the system only
//! after its purge delay (1 s) and at a later collection; idle worker
//! threads never collect by themselves.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

/// How often a thread collects at most.
const EVERY: Duration = Duration::from_secs(1);

/// Runs when a tokio worker goes idle: collects this thread's heap, at most
/// once a second.
pub fn on_park() {
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    if LAST.get().is_some_and(|t| now.duration_since(t) < EVERY) {
        return;
    }
    LAST.set(Some(now));
    collect();
}

/// Wakes a worker every second, so freed memory whose purge delay has
/// passed is returned even when no call arrives.
pub async fn trim() {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect();
    }
}

fn collect() {
    // SAFETY: mi_collect takes no pointers; it frees the calling thread's
    // empty pages and purges memory the allocator no longer uses.
    unsafe { libmimalloc_sys::mi_collect(false) };
}
