//! The [`Store`] contract, checked against each store: every scenario takes
//! a [`Backend`], and the `stores!` list at the end runs it on the embedded
//! redb file and on a private PostgreSQL server (skipped, with a note, where
//! PostgreSQL is not installed unless `REQUIRE_POSTGRES=1`).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use super::postgres::{PgStore, PgUrl};
use super::redb::{OpenError, RedbStore};
use super::store::*;
use super::test_postgres::PgServer;

/// Where a scenario's store lives; [`Backend::open`] opens it (again: a
/// second open is a restart, or another replica for PostgreSQL).
enum Backend {
    Redb(PathBuf),
    Postgres(PgServer),
}

impl Backend {
    fn redb() -> Option<Self> {
        Some(Backend::Redb(
            std::env::temp_dir().join(format!("runstate-redb-{}", uuid::Uuid::new_v4())),
        ))
    }

    fn postgres() -> Option<Self> {
        PgServer::start().map(Backend::Postgres)
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Redb(dir) => {
                // Once the previous store's writer let the file go.
                for _ in 0..100 {
                    match RedbStore::open(&dir.join("o.redb")) {
                        Ok(s) => return Arc::new(s),
                        Err(OpenError::Busy { .. }) => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                panic!("the file stayed busy");
            }
            Backend::Postgres(server) => Arc::new(pg(server).await),
        }
    }
}

async fn pg(server: &PgServer) -> PgStore {
    let url: PgUrl = server.url().parse().unwrap();
    PgStore::open(&url).await.unwrap()
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Redb(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn writes(n: u32) -> Vec<NewWrite> {
    (0..n)
        .map(|i| NewWrite {
            request_id: uuid::Uuid::from_u128(u128::from(i) + 1),
            kind: WriteKind::Create,
            entity: format!("s/deviceRunStates/{i}"),
            fingerprint: u64::from(i),
            payload: Bytes::from(vec![i as u8; 10]),
        })
        .collect()
}

fn submission(n: u32) -> Submission {
    Submission {
        caller: "c".into(),
        tenant: "t".into(),
        writes: writes(n),
        now: SystemTime::now(),
    }
}

const LIMITS: Limits = Limits {
    max_writes: 100,
    max_bytes: 1 << 20,
};

const TTL: Duration = Duration::from_secs(1);

/// Takes tenant `t`'s lease (waiting, up to 15 s, for another holder's to
/// expire).
async fn lease(store: &dyn Store) -> Lease {
    for _ in 0..150 {
        if let Some(lease) = store.lease("t", TTL).await.unwrap() {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the lease never came");
}

/// Takes tenant `t`'s lease and claims up to `max` of its writes.
async fn lease_and_claim(store: &dyn Store, max: usize) -> (Lease, Vec<Claimed>) {
    let lease = lease(store).await;
    let claimed = store
        .claim(&lease, &Callers::Any, max, SystemTime::now())
        .await
        .unwrap();
    (lease, claimed)
}

fn delivered(claimed: &[Claimed]) -> Vec<Finished> {
    claimed
        .iter()
        .map(|c| Finished {
            op: c.op,
            index: c.index,
            seq: c.seq,
            finish: Finish::Done(Outcome::Delivered {
                name: c.entity.clone(),
            }),
        })
        .collect()
}

/// Records every claimed write as delivered.
async fn deliver(store: &dyn Store, lease: &Lease, claimed: &[Claimed]) {
    store
        .finish(lease, delivered(claimed), SystemTime::now())
        .await
        .unwrap();
}

async fn claimed_writes_read_as_in_flight_after_a_restart(backend: Backend) {
    let store = backend.open().await;
    let op = store.submit(submission(3), LIMITS).await.unwrap().unwrap();
    assert_eq!(op.queued_ahead, 3);
    let (_, claimed) = lease_and_claim(&*store, 2).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| !c.was_in_flight));
    drop(store);
    // A new process: the two come back first, flagged; the third as new.
    let store = backend.open().await;
    let (lease, again) = lease_and_claim(&*store, 20).await;
    let flags: Vec<bool> = again.iter().map(|c| c.was_in_flight).collect();
    assert_eq!(flags, vec![true, true, false]);
    deliver(&*store, &lease, &again).await;
    let got = store.get("c", op.id).await.unwrap().unwrap();
    assert!(got.done());
    assert_eq!(got.counts.delivered, 3);
    assert_eq!(got.queued_ahead, 0);
    assert!(store.get("someone else", op.id).await.unwrap().is_none());
    assert!(store.tenants().await.unwrap().is_empty());
    let results = store.results("c", op.id).await.unwrap().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[1],
        WriteResult {
            request_id: uuid::Uuid::from_u128(2),
            outcome: Some(Outcome::Delivered {
                name: "s/deviceRunStates/1".into()
            }),
        }
    );
    // Retention: gone with its request ids, which may then come again.
    let removed = store
        .purge(SystemTime::now() + Duration::from_secs(1), 10)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(store.get("c", op.id).await.unwrap().is_none());
    let again = store.submit(submission(3), LIMITS).await.unwrap().unwrap();
    assert_eq!(again.counts.pending(), 3);
}

async fn limits_and_reused_ids_store_nothing(backend: Backend) {
    let store = backend.open().await;
    let small = Limits {
        max_writes: 4,
        max_bytes: 1 << 20,
    };
    store.submit(submission(3), small).await.unwrap().unwrap();
    let mut more = submission(5);
    more.writes.drain(..3);
    // 3 pending + 2 new > 4.
    assert!(matches!(
        store.submit(more, small).await.unwrap(),
        Err(Refused::Full {
            pending_writes: 3,
            ..
        })
    ));
    let mut reused = submission(1);
    reused.writes[0].fingerprint = 99;
    assert_eq!(
        store.submit(reused, small).await.unwrap(),
        Err(Refused::Reused { index: 0 })
    );
    let queues = store.tenants().await.unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].pending_writes, 3);
    assert_eq!(queues[0].pending_bytes, 30);
    assert!(queues[0].oldest.is_some());
}

async fn concurrent_submissions_all_land(backend: Backend) {
    let store = backend.open().await;
    let tasks: Vec<_> = (0..20u32)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut s = submission(1);
                s.writes[0].request_id = uuid::Uuid::from_u128(1000 + u128::from(i));
                store.submit(s, LIMITS).await
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_ok());
    }
    let page = store
        .list(
            "c",
            ListQuery {
                page_size: 15,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.operations.len(), 15);
    let rest = store
        .list(
            "c",
            ListQuery {
                page_size: 15,
                after: page.next,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.operations.len(), 5);
    assert!(rest.next.is_none());
    let undone = store
        .list(
            "c",
            ListQuery {
                page_size: 50,
                done: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(undone.operations.is_empty());
}

async fn a_repeated_id_follows_its_first_write(backend: Backend) {
    let store = backend.open().await;
    let first = store.submit(submission(1), LIMITS).await.unwrap().unwrap();
    // Again, with a new write and a repeat of the new one inside.
    let mut again = submission(2);
    again.writes.push(again.writes[1].clone());
    let second = store.submit(again, LIMITS).await.unwrap().unwrap();
    assert_eq!(second.counts.total, 3);
    let queues = store.tenants().await.unwrap();
    assert_eq!(queues[0].pending_writes, 2, "only the new write is queued");
    let (lease, claimed) = lease_and_claim(&*store, 20).await;
    assert_eq!(claimed.len(), 2);
    let mut ends = delivered(&claimed);
    ends[1].finish = Finish::Done(Outcome::Failed {
        status: Bytes::from_static(b"status"),
    });
    store.finish(&lease, ends, SystemTime::now()).await.unwrap();
    assert!(store.get("c", first.id).await.unwrap().unwrap().done());
    let second_now = store.get("c", second.id).await.unwrap().unwrap();
    assert!(second_now.done());
    assert_eq!(
        (second_now.counts.delivered, second_now.counts.failed),
        (1, 2)
    );
    let results: Vec<_> = store
        .results("c", second.id)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.outcome.unwrap())
        .collect();
    let failed = Outcome::Failed {
        status: Bytes::from_static(b"status"),
    };
    assert_eq!(
        results,
        vec![
            Outcome::Delivered {
                name: "s/deviceRunStates/0".into()
            },
            failed.clone(),
            failed
        ]
    );
    // Once ended, a repeat takes the outcome at once.
    let third = store.submit(submission(1), LIMITS).await.unwrap().unwrap();
    assert!(third.done());
    assert_eq!(third.counts.delivered, 1);
}

async fn cancel_ends_only_pending_writes(backend: Backend) {
    let store = backend.open().await;
    let op = store.submit(submission(4), LIMITS).await.unwrap().unwrap();
    let (lease, claimed) = lease_and_claim(&*store, 1).await;
    assert_eq!(claimed.len(), 1);
    let after = store
        .cancel("c", op.id, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.counts.cancelled, 3);
    assert!(!after.done(), "the write in flight goes on");
    assert!(
        store
            .cancel("bob", op.id, SystemTime::now())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.delete("c", op.id).await.unwrap(), Deleted::NotDone);
    deliver(&*store, &lease, &claimed).await;
    let done = store.get("c", op.id).await.unwrap().unwrap();
    assert!(done.done());
    assert_eq!((done.counts.delivered, done.counts.cancelled), (1, 3));
    assert!(store.tenants().await.unwrap().is_empty());
    assert_eq!(store.delete("bob", op.id).await.unwrap(), Deleted::NotFound);
    assert_eq!(store.delete("c", op.id).await.unwrap(), Deleted::Deleted);
    assert!(store.get("c", op.id).await.unwrap().is_none());
}

async fn in_flight_writes_block_their_entity(backend: Backend) {
    let store = backend.open().await;
    let mut sub = submission(3);
    // Writes 0 and 2 go to one entity.
    sub.writes[2].entity = sub.writes[0].entity.clone();
    sub.writes[2].kind = WriteKind::Update;
    store.submit(sub, LIMITS).await.unwrap().unwrap();
    let (lease, first) = lease_and_claim(&*store, 1).await;
    assert_eq!(first.len(), 1);
    // The next group skips the write in flight and stops at its entity.
    let second = store
        .claim(&lease, &Callers::Any, 20, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(second.iter().map(|c| c.index).collect::<Vec<_>>(), vec![1]);
    // A requeued write is claimed again, in its place.
    let requeue = first
        .iter()
        .map(|c| Finished {
            op: c.op,
            index: c.index,
            seq: c.seq,
            finish: Finish::Requeue,
        })
        .collect();
    store
        .finish(&lease, requeue, SystemTime::now())
        .await
        .unwrap();
    let third = store
        .claim(
            &lease,
            &Callers::Only(vec!["c".into()]),
            20,
            SystemTime::now(),
        )
        .await
        .unwrap();
    assert_eq!(third.iter().map(|c| c.index).collect::<Vec<_>>(), vec![0]);
    assert!(!third[0].was_in_flight);
    let nobody = store
        .claim(&lease, &Callers::Only(vec![]), 20, SystemTime::now())
        .await
        .unwrap();
    assert!(nobody.is_empty());
}

macro_rules! stores {
    ($($scenario:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Backend::redb().unwrap()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    if let Some(backend) = super::Backend::postgres() {
                        super::$scenario(backend).await
                    }
                }
            )*
        }
    };
}

stores!(
    claimed_writes_read_as_in_flight_after_a_restart,
    limits_and_reused_ids_store_nothing,
    concurrent_submissions_all_land,
    a_repeated_id_follows_its_first_write,
    cancel_ends_only_pending_writes,
    in_flight_writes_block_their_entity,
);

/// Two replicas on one database: one holds the lease; the other takes it
/// with a new epoch once the first releases it (a graceful shutdown) or
/// once it expires, and the first is fenced off; the write it had in flight
/// reads as such.
async fn lease_passes_on_and_fences_the_old_holder(released: bool) {
    let Some(server) = PgServer::start() else {
        return;
    };
    let (a, b) = (pg(&server).await, pg(&server).await);
    a.submit(submission(2), LIMITS).await.unwrap().unwrap();
    let (lease_a, claimed) = lease_and_claim(&a, 1).await;
    assert_eq!(claimed.len(), 1);
    assert!(
        b.lease("t", TTL).await.unwrap().is_none(),
        "a live holder has it"
    );
    let lease_b = if released {
        a.release().await.unwrap();
        b.lease("t", TTL).await.unwrap().expect("free at once")
    } else {
        // A renews while alive, keeping its epoch.
        assert_eq!(a.lease("t", TTL).await.unwrap(), Some(lease_a.clone()));
        lease(&b).await
    };
    assert!(lease_b.epoch > lease_a.epoch);
    assert!(matches!(
        a.finish(&lease_a, delivered(&claimed), SystemTime::now())
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        a.claim(&lease_a, &Callers::Any, 20, SystemTime::now())
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(a.lease("t", TTL).await.unwrap().is_none());
    let again = b
        .claim(&lease_b, &Callers::Any, 20, SystemTime::now())
        .await
        .unwrap();
    let flags: Vec<(u32, bool)> = again.iter().map(|c| (c.index, c.was_in_flight)).collect();
    assert_eq!(flags, vec![(0, true), (1, false)]);
    deliver(&b, &lease_b, &again).await;
    assert!(b.tenants().await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_an_expired_lease_passes_on() {
    lease_passes_on_and_fences_the_old_holder(false).await;
}

#[tokio::test]
async fn postgres_a_released_lease_passes_on_at_once() {
    lease_passes_on_and_fences_the_old_holder(true).await;
}

/// Replicas submitting at once never pass the tenant's limits together,
/// and one request id submitted by both is stored once.
#[tokio::test]
async fn postgres_replicas_share_the_limits_and_request_ids() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let stores: Vec<Arc<PgStore>> = vec![Arc::new(pg(&server).await), Arc::new(pg(&server).await)];
    let limits = Limits {
        max_writes: 5,
        max_bytes: 1 << 20,
    };
    let tasks: Vec<_> = (0..16u32)
        .map(|i| {
            let store = Arc::clone(&stores[i as usize % 2]);
            tokio::spawn(async move {
                let mut s = submission(1);
                s.writes[0].request_id = uuid::Uuid::from_u128(500 + u128::from(i));
                store.submit(s, limits).await.unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5);
    let same: Vec<_> = (0..2)
        .map(|i| {
            let store = Arc::clone(&stores[i]);
            tokio::spawn(async move {
                let mut s = submission(1);
                s.writes[0].request_id = uuid::Uuid::from_u128(9999);
                store.submit(s, LIMITS).await.unwrap().unwrap()
            })
        })
        .collect();
    for t in same {
        t.await.unwrap();
    }
    let queues = stores[0].tenants().await.unwrap();
    assert_eq!(
        queues[0].pending_writes, 6,
        "the shared request id is queued once"
    );
}

/// Replicas starting together create the schema once; a second start
/// finds it in place.
#[tokio::test]
async fn postgres_schema_is_created_once_by_replicas_starting_together() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url: PgUrl = server.url().parse().unwrap();
    let (a, b) = tokio::join!(PgStore::open(&url), PgStore::open(&url));
    a.unwrap();
    b.unwrap();
    pg(&server).await;
    assert_eq!(
        server.psql("SELECT string_agg(version::text, ',') FROM runstate_outbox_schema"),
        "1"
    );
}

/// A server that does not answer fails the open with its host and no
/// password; a store whose server went away answers UNAVAILABLE and reads
/// as unreachable until it is back.
#[tokio::test]
async fn postgres_outage_is_reported_not_waited_on() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let store = pg(&server).await;
    store.submit(submission(1), LIMITS).await.unwrap().unwrap();
    let reachable = store.reachable();
    server.stop();
    let err = store.tenants().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!store.probe().await);
    assert!(!reachable.load(std::sync::atomic::Ordering::Relaxed));
    let secret: PgUrl = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/postgres?sslmode=disable",
        server.port
    )
    .parse()
    .unwrap();
    let refused = PgStore::open(&secret).await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!("127.0.0.1:{}", server.port)),
        "{refused}"
    );
    assert!(!refused.contains("hunter2"), "{refused}");
    server.restart();
    assert!(store.probe().await);
    assert_eq!(store.tenants().await.unwrap()[0].pending_writes, 1);
}

#[test]
fn postgres_urls_never_show_their_password() {
    let url: PgUrl = "postgresql://gw:s3cret@db.internal:6432/outbox?sslmode=require"
        .parse()
        .unwrap();
    assert_eq!(url.shown(), "postgres://gw@db.internal:6432/outbox");
    assert!(!format!("{url:?}").contains("s3cret"));
    let bad = "postgres://gw:s3cret@db/x?nonsense=1"
        .parse::<PgUrl>()
        .unwrap_err();
    assert!(!bad.contains("s3cret"), "{bad}");
    assert!("mysql://x".parse::<PgUrl>().is_err());
}
