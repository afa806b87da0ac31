//! Request ids (AIP-155): a create retried with the same `request_id` returns
//! the first result instead of writing again.
//!
//! Concurrent calls with one id wait for the first; a failed call is not
//! remembered, so it can be retried. Entries live for [`TTL`], and at most
//! [`CAPACITY`] are kept (the oldest go first).

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

#[derive(Default)]
pub struct RequestIds {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<(&'static str, uuid::Uuid), Slot>,
    order: VecDeque<(&'static str, uuid::Uuid)>,
}

impl RequestIds {
    /// Runs `work` once per `(rpc, id)`; later calls get the first success.
    pub async fn run<E, F, Fut>(
        &self,
        rpc: &'static str,
        id: uuid::Uuid,
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
            let key = (rpc, id);
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
            let expired = self
                .slots
                .get(key)
                .is_none_or(|s| now.duration_since(s.created) > TTL || self.slots.len() > CAPACITY);
            if !expired {
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
        let (a, b) = tokio::join!(ids.run("r", id, 1, work), ids.run("r", id, 1, work));
        assert_eq!(a.unwrap().unwrap().0[0], 7);
        assert_eq!(b.unwrap().unwrap().0[0], 7);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_remembered_and_reuse_is_refused() {
        let ids = RequestIds::default();
        let id = uuid::Uuid::new_v4();
        let failed = ids
            .run("r", id, 1, || async { Err::<Outcome, _>("boom") })
            .await;
        assert_eq!(failed.unwrap().unwrap_err(), "boom");
        assert_eq!(
            ids.run("r", id, 1, || async { ok(1) })
                .await
                .unwrap()
                .unwrap()
                .0[0],
            1
        );
        assert_eq!(
            ids.run("r", id, 2, || async { ok(2) }).await.unwrap_err(),
            Refused::Reused
        );
        // Another RPC has its own ids.
        assert_eq!(
            ids.run("other", id, 2, || async { ok(3) })
                .await
                .unwrap()
                .unwrap()
                .0[0],
            3
        );
    }

    #[tokio::test]
    async fn keeps_at_most_capacity_entries() {
        let ids = RequestIds::default();
        for n in 0..CAPACITY + 50 {
            let id = uuid::Uuid::from_u128(n as u128);
            ids.run("r", id, 0, || async { ok(0) })
                .await
                .unwrap()
                .unwrap();
        }
        let len = ids.inner.lock().unwrap().slots.len();
        assert!(len <= CAPACITY + 1, "{len}");
    }
}
