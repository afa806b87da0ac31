//! Request ids (AIP-155): a create retried with the same `request_id` returns
//! the first result instead of writing again.
//!
//! Ids are per caller (a hash of its token). Concurrent calls with one id wait
//! for the first; a failed call is not remembered, so it can be retried.
//! Finished entries live for [`TTL`]; past [`CAPACITY`] the oldest finished
//! ones go first (a call still running is never forgotten).

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::OnceCell;

pub const TTL: Duration = Duration::from_secs(600);
pub const CAPACITY: usize = 10_000;

/// A finished create: the encoded response and Graph's request id.
pub type Outcome = (Bytes, Option<String>);

#[derive(Clone)]
struct Slot {
    fingerprint: u64,
    created: Instant,
    cell: Arc<OnceCell<Outcome>>,
}

/// The reasons a request id cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The id was used before with a different request.
    Reused,
}

/// The RPC, the caller and the request id.
type Key = (&'static str, u64, uuid::Uuid);

#[derive(Default)]
pub struct RequestIds {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    order: VecDeque<Key>,
}

impl RequestIds {
    /// Runs `work` once per `(rpc, caller, id)`; later calls get the first success.
    pub async fn run<E, F, Fut>(
        &self,
        rpc: &'static str,
        id: uuid::Uuid,
        caller: u64,
        fingerprint: u64,
        work: F,
    ) -> Result<Result<Outcome, E>, Refused>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Outcome, E>>,
    {
        let cell = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.evict(Instant::now());
            let key = (rpc, caller, id);
            if let Some(slot) = inner.slots.get(&key) {
                if slot.fingerprint != fingerprint {
                    return Err(Refused::Reused);
                }
                slot.cell.clone()
            } else {
                let cell = Arc::new(OnceCell::new());
                inner.slots.insert(
                    key,
                    Slot {
                        fingerprint,
                        created: Instant::now(),
                        cell: cell.clone(),
                    },
                );
                inner.order.push_back(key);
                cell
            }
        };
        Ok(cell.get_or_try_init(work).await.cloned())
    }
}

impl Inner {
    fn evict(&mut self, now: Instant) {
        while let Some(key) = self.order.front() {
            let evict = self.slots.get(key).is_none_or(|s| {
                let finished = s.cell.initialized() || Arc::strong_count(&s.cell) == 1;
                finished && (now.duration_since(s.created) > TTL || self.slots.len() > CAPACITY)
            });
            if !evict {
                break;
            }
            self.slots.remove(key);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ok(n: u8) -> Result<Outcome, ()> {
        Ok((Bytes::from(vec![n]), None))
    }

    #[tokio::test]
    async fn same_id_same_request_runs_once() {
        let ids = RequestIds::default();
        let id = uuid::Uuid::new_v4();
        let runs = AtomicUsize::new(0);
        let work = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            ok(7)
        };
        let (a, b) = tokio::join!(ids.run("r", id, 0, 1, work), ids.run("r", id, 0, 1, work));
        assert_eq!(a.unwrap().unwrap().0[0], 7);
        assert_eq!(b.unwrap().unwrap().0[0], 7);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_remembered_and_reuse_is_refused() {
        let ids = RequestIds::default();
        let id = uuid::Uuid::new_v4();
        let failed = ids
            .run("r", id, 0, 1, || async { Err::<Outcome, _>("boom") })
            .await;
        assert_eq!(failed.unwrap().unwrap_err(), "boom");
        assert_eq!(
            ids.run("r", id, 0, 1, || async { ok(1) })
                .await
                .unwrap()
                .unwrap()
                .0[0],
            1
        );
        assert_eq!(
            ids.run("r", id, 0, 2, || async { ok(2) })
                .await
                .unwrap_err(),
            Refused::Reused
        );
        // Another RPC, or another caller, has its own ids.
        let other_rpc = ids.run("other", id, 0, 2, || async { ok(3) }).await;
        assert_eq!(other_rpc.unwrap().unwrap().0[0], 3);
        let other_caller = ids.run("r", id, 9, 2, || async { ok(4) }).await;
        assert_eq!(other_caller.unwrap().unwrap().0[0], 4);
    }

    #[tokio::test]
    async fn keeps_at_most_capacity_entries() {
        let ids = RequestIds::default();
        for n in 0..CAPACITY + 50 {
            let id = uuid::Uuid::from_u128(n as u128);
            ids.run("r", id, 0, 0, || async { ok(0) })
                .await
                .unwrap()
                .unwrap();
        }
        let len = ids.inner.lock().unwrap().slots.len();
        assert!(len <= CAPACITY + 1, "{len}");
    }

    #[tokio::test]
    async fn a_running_call_is_never_evicted() {
        let ids = Arc::new(RequestIds::default());
        let first = uuid::Uuid::new_v4();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let running = {
            let ids = ids.clone();
            tokio::spawn(async move {
                ids.run("r", first, 0, 0, || async {
                    let _ = wait.await;
                    ok(1)
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        for n in 0..CAPACITY + 10 {
            ids.run("r", uuid::Uuid::from_u128(n as u128 + 1), 0, 0, || async {
                ok(0)
            })
            .await
            .unwrap()
            .unwrap();
        }
        assert!(
            ids.inner
                .lock()
                .unwrap()
                .slots
                .contains_key(&("r", 0, first))
        );
        release.send(()).unwrap();
        running.await.unwrap().unwrap().unwrap();
    }
}
