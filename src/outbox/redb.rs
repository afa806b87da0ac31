//! The embedded store: one redb file, for one gateway process.
//!
//! Every change runs on one writer thread, which takes whatever changes are
//! waiting and commits them in one transaction with `Durability::Immediate`
//! (an fsync): concurrent submissions share one commit, and none is
//! answered before its commit returns. Reads use read transactions on the
//! blocking pool. Nothing is cached in memory beyond redb's page cache
//! (bounded by [`CACHE_BYTES`]).
//!
//! Tables (rows are small protobuf messages, so the format can grow):
//! - `operations`: op id → [`OpRow`]
//! - `writes`: (op id, index) → [`WriteRow`]
//! - `queue`: (tenant, seq) → [`QueueRow`], the pending and in-flight writes
//! - `tenants`: tenant → [`TenantRow`], counters and the next seq
//! - `request_ids`: (caller, request id) → [`RidRow`], the first write of it
//! - `followers`: (op, index, follower op, follower index): duplicates
//!   waiting for the first write's outcome
//! - `by_caller`: (caller, create ms, op) for List; `finished`: (done ms,
//!   op) for retention
//! - `meta`: the drain epoch, bumped at each open.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use prost::Message;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::store::{
    Callers, Claimed, Counts, Cursor, Deleted, Finish, Finished, Lease, Limits, ListQuery,
    Operation, OperationId, Outcome, Page, Refused, Store, StoreError, Submission, TenantQueue,
    WriteKind, WriteResult, group_len,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OPS: TableDefinition<u128, &[u8]> = TableDefinition::new("operations");
const WRITES: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("writes");
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
const REQUEST_IDS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("request_ids");
const FOLLOWERS: TableDefinition<(u128, u32, u128, u32), ()> = TableDefinition::new("followers");
const BY_CALLER: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("by_caller");
const FINISHED: TableDefinition<(u64, u128), ()> = TableDefinition::new("finished");

/// redb's page cache: the most memory the store holds, whatever the queue.
pub const CACHE_BYTES: usize = 8 << 20;
/// Changes committed together at most.
const MAX_BATCH: usize = 512;
/// Queue rows one claim looks at, at most.
const MAX_SCAN: usize = 5000;

#[derive(Clone, PartialEq, Message)]
struct OpRow {
    #[prost(string, tag = "1")]
    caller: String,
    #[prost(string, tag = "2")]
    tenant: String,
    #[prost(uint64, tag = "3")]
    create_ms: u64,
    #[prost(uint64, tag = "4")]
    update_ms: u64,
    /// 0 while unfinished.
    #[prost(uint64, tag = "5")]
    done_ms: u64,
    #[prost(uint64, tag = "6")]
    total: u64,
    #[prost(uint64, tag = "7")]
    delivered: u64,
    #[prost(uint64, tag = "8")]
    failed: u64,
    #[prost(uint64, tag = "9")]
    cancelled: u64,
    /// The seq of its last queued write (0: none).
    #[prost(uint64, tag = "10")]
    last_seq: u64,
}

/// A write's state in [`WriteRow::state`].
const QUEUED: u32 = 0;
const FOLLOWING: u32 = 1;
const ENDED: u32 = 2;

/// An outcome's kind in [`WriteRow::outcome`].
const DELIVERED: u32 = 1;
const FAILED: u32 = 2;
const CANCELLED: u32 = 3;

#[derive(Clone, PartialEq, Message)]
struct WriteRow {
    #[prost(bytes = "vec", tag = "1")]
    request_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    state: u32,
    /// Its queue seq while [`QUEUED`].
    #[prost(uint64, tag = "3")]
    seq: u64,
    #[prost(uint32, tag = "4")]
    outcome: u32,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(bytes = "vec", tag = "6")]
    status: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct QueueRow {
    #[prost(bytes = "vec", tag = "1")]
    op: Vec<u8>,
    #[prost(uint32, tag = "2")]
    index: u32,
    #[prost(string, tag = "3")]
    caller: String,
    #[prost(uint32, tag = "4")]
    kind: u32,
    #[prost(string, tag = "5")]
    entity: String,
    #[prost(bytes = "vec", tag = "6")]
    payload: Vec<u8>,
    #[prost(uint64, tag = "7")]
    enqueued_ms: u64,
    /// The epoch it was claimed under; 0 while pending.
    #[prost(uint64, tag = "8")]
    epoch: u64,
    #[prost(bytes = "vec", tag = "9")]
    request_id: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TenantRow {
    #[prost(uint64, tag = "1")]
    next_seq: u64,
    #[prost(uint64, tag = "2")]
    pending_writes: u64,
    #[prost(uint64, tag = "3")]
    pending_bytes: u64,
}

#[derive(Clone, PartialEq, Message)]
struct RidRow {
    #[prost(bytes = "vec", tag = "1")]
    op: Vec<u8>,
    #[prost(uint32, tag = "2")]
    index: u32,
    #[prost(uint64, tag = "3")]
    fingerprint: u64,
}

fn err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(why) => StoreError::Corrupt(why),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("a {what} row: {e}")))
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn uuid_of(bytes: &[u8]) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::from_slice(bytes).map_err(|_| StoreError::Corrupt("an id is not 16 bytes".into()))
}

/// A change for the writer thread: it runs in the batch's transaction and
/// returns how to answer once the commit is known.
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Result<(), StoreError>, Reply) + Send>;
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The redb store. Cheap to share: `Arc` it.
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    jobs: mpsc::UnboundedSender<Job>,
    /// This process's drain epoch.
    epoch: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// Why the store file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the file.
    #[error("{path}: another process has the outbox file open")]
    Busy { path: String },
    /// The file is unreadable or corrupt.
    #[error("{path}: {why}")]
    Unreadable { path: String, why: String },
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, bumps its epoch and starts
    /// the writer thread.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let unreadable = |why: String| OpenError::Unreadable {
            path: shown.clone(),
            why,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unreadable(format!("cannot create its directory: {e}")))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Busy {
                    path: shown.clone(),
                },
                other => unreadable(other.to_string()),
            })?;
        let epoch = (|| -> Result<u64, StoreError> {
            let mut txn = db.begin_write().map_err(err)?;
            txn.set_durability(Durability::Immediate).map_err(err)?;
            let epoch = {
                let mut meta = txn.open_table(META).map_err(err)?;
                let epoch = meta.get("epoch").map_err(err)?.map_or(0, |v| v.value()) + 1;
                meta.insert("epoch", epoch).map_err(err)?;
                epoch
            };
            txn.open_table(OPS).map_err(err)?;
            txn.open_table(WRITES).map_err(err)?;
            txn.open_table(QUEUE).map_err(err)?;
            txn.open_table(TENANTS).map_err(err)?;
            txn.open_table(REQUEST_IDS).map_err(err)?;
            txn.open_table(FOLLOWERS).map_err(err)?;
            txn.open_table(BY_CALLER).map_err(err)?;
            txn.open_table(FINISHED).map_err(err)?;
            txn.commit().map_err(err)?;
            Ok(epoch)
        })()
        .map_err(|e| unreadable(e.to_string()))?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::unbounded_channel();
        let writer = Arc::clone(&db);
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || write_loop(&writer, rx))
            .map_err(|e| unreadable(format!("cannot start its writer thread: {e}")))?;
        Ok(Self {
            db,
            path: path.to_owned(),
            jobs,
            epoch,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `change` in the next batch's transaction; answers after commit.
    async fn change<R: Send + 'static>(
        &self,
        change: impl FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| match change(txn) {
            Ok(value) => (
                Ok(()),
                Box::new(move |commit: Result<(), StoreError>| {
                    let _ = tx.send(commit.map(|()| value));
                }),
            ),
            Err(e) => (
                Err(e.clone()),
                Box::new(move |_| {
                    let _ = tx.send(Err(e));
                }),
            ),
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the outbox writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the outbox writer stopped".into()))?
    }

    /// Runs `read` in a read transaction on the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(err)?;
            read(&txn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a store read failed: {e}")))?
    }

    /// Runs `read` on the caller's operation `id`; `None` when it does not
    /// exist or is another caller's.
    async fn read_own<R: Send + 'static>(
        &self,
        caller: &str,
        id: OperationId,
        read: impl FnOnce(&ReadTransaction, OpRow) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<Option<R>, StoreError> {
        let caller = caller.to_owned();
        self.read(move |txn| {
            let ops = txn.open_table(OPS).map_err(err)?;
            match load_own(&ops, id, &caller)? {
                Some(op) => read(txn, op).map(Some),
                None => Ok(None),
            }
        })
        .await
    }
}

fn write_loop(db: &Database, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let txn = db.begin_write().map_err(err).and_then(|mut txn| {
            txn.set_durability(Durability::Immediate).map_err(err)?;
            Ok(txn)
        });
        let txn = match txn {
            Ok(txn) => txn,
            Err(e) => {
                tracing::error!(error = %e, "the outbox store cannot start a transaction");
                // The jobs are dropped unanswered: their callers see the
                // writer's error.
                continue;
            }
        };
        let mut replies = Vec::with_capacity(jobs.len());
        let mut failed = None;
        for job in jobs {
            let (result, reply) = job(&txn);
            if let Err(e) = result {
                failed = Some(e);
            }
            replies.push(reply);
        }
        let commit = match failed {
            Some(e) => {
                let _ = txn.abort();
                Err(e)
            }
            None => txn.commit().map_err(err),
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "an outbox store commit failed");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// The state of an operation for its caller.
fn view(id: OperationId, op: &OpRow, queue_head: Option<u64>, tenant_pending: u64) -> Operation {
    let counts = Counts {
        total: op.total,
        delivered: op.delivered,
        failed: op.failed,
        cancelled: op.cancelled,
    };
    let queued_ahead = match queue_head {
        Some(head) if counts.pending() > 0 && op.last_seq >= head => {
            (op.last_seq - head + 1).min(tenant_pending)
        }
        _ => 0,
    };
    Operation {
        id,
        tenant: op.tenant.clone(),
        create_time: time(op.create_ms),
        update_time: time(op.update_ms),
        counts,
        done_time: (op.done_ms != 0).then(|| time(op.done_ms)),
        queued_ahead,
    }
}

/// The first seq of a tenant's queue and its pending count.
fn queue_head(
    queue: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    tenants: &impl ReadableTable<&'static str, &'static [u8]>,
    tenant: &str,
) -> Result<(Option<u64>, u64), StoreError> {
    let head = queue
        .range((tenant, 0)..=(tenant, u64::MAX))
        .map_err(err)?
        .next()
        .transpose()
        .map_err(err)?
        .map(|(k, _)| k.value().1);
    let pending = match tenants.get(tenant).map_err(err)? {
        Some(v) => decode::<TenantRow>(v.value(), "tenant")?.pending_writes,
        None => 0,
    };
    Ok((head, pending))
}

fn load_op(
    ops: &impl ReadableTable<u128, &'static [u8]>,
    id: OperationId,
) -> Result<Option<OpRow>, StoreError> {
    match ops.get(id.as_u128()).map_err(err)? {
        Some(v) => Ok(Some(decode(v.value(), "operation")?)),
        None => Ok(None),
    }
}

/// The operation `id` if `caller` submitted it (no one else sees it).
fn load_own(
    ops: &impl ReadableTable<u128, &'static [u8]>,
    id: OperationId,
    caller: &str,
) -> Result<Option<OpRow>, StoreError> {
    Ok(load_op(ops, id)?.filter(|op| op.caller == caller))
}

/// The tables a change works on, opened once per change.
struct Tables<'t> {
    ops: redb::Table<'t, u128, &'static [u8]>,
    writes: redb::Table<'t, (u128, u32), &'static [u8]>,
    queue: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    tenants: redb::Table<'t, &'static str, &'static [u8]>,
    rids: redb::Table<'t, (&'static str, u128), &'static [u8]>,
    followers: redb::Table<'t, (u128, u32, u128, u32), ()>,
    by_caller: redb::Table<'t, (&'static str, u64, u128), ()>,
    finished: redb::Table<'t, (u64, u128), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            ops: txn.open_table(OPS).map_err(err)?,
            writes: txn.open_table(WRITES).map_err(err)?,
            queue: txn.open_table(QUEUE).map_err(err)?,
            tenants: txn.open_table(TENANTS).map_err(err)?,
            rids: txn.open_table(REQUEST_IDS).map_err(err)?,
            followers: txn.open_table(FOLLOWERS).map_err(err)?,
            by_caller: txn.open_table(BY_CALLER).map_err(err)?,
            finished: txn.open_table(FINISHED).map_err(err)?,
        })
    }

    fn tenant(&self, tenant: &str) -> Result<TenantRow, StoreError> {
        match self.tenants.get(tenant).map_err(err)? {
            Some(v) => decode(v.value(), "tenant"),
            None => Ok(TenantRow {
                next_seq: 1,
                ..Default::default()
            }),
        }
    }

    fn put_tenant(&mut self, tenant: &str, row: &TenantRow) -> Result<(), StoreError> {
        self.tenants
            .insert(tenant, row.encode_to_vec().as_slice())
            .map_err(err)?;
        Ok(())
    }

    fn op(&self, id: u128) -> Result<OpRow, StoreError> {
        match self.ops.get(id).map_err(err)? {
            Some(v) => decode(v.value(), "operation"),
            None => Err(StoreError::Corrupt(format!(
                "operation {} is missing",
                uuid::Uuid::from_u128(id)
            ))),
        }
    }

    fn put_op(&mut self, id: u128, row: &OpRow) -> Result<(), StoreError> {
        self.ops
            .insert(id, row.encode_to_vec().as_slice())
            .map_err(err)?;
        Ok(())
    }

    fn write(&self, key: (u128, u32)) -> Result<WriteRow, StoreError> {
        match self.writes.get(key).map_err(err)? {
            Some(v) => decode(v.value(), "write"),
            None => Err(StoreError::Corrupt("a write row is missing".into())),
        }
    }

    fn put_write(&mut self, key: (u128, u32), row: &WriteRow) -> Result<(), StoreError> {
        self.writes
            .insert(key, row.encode_to_vec().as_slice())
            .map_err(err)?;
        Ok(())
    }

    /// Gives a write its outcome and counts it in its operation (done once
    /// nothing is pending); then the same for every write following it.
    fn end(&mut self, key: (u128, u32), outcome: &Outcome, now_ms: u64) -> Result<(), StoreError> {
        let mut row = self.write(key)?;
        if row.state == ENDED {
            return Ok(());
        }
        row.state = ENDED;
        row.seq = 0;
        match outcome {
            Outcome::Delivered { name } => {
                row.outcome = DELIVERED;
                row.name = name.clone();
            }
            Outcome::Failed { status } => {
                row.outcome = FAILED;
                row.status = status.to_vec();
            }
            Outcome::Cancelled => row.outcome = CANCELLED,
        }
        self.put_write(key, &row)?;
        let mut op = self.op(key.0)?;
        match outcome {
            Outcome::Delivered { .. } => op.delivered += 1,
            Outcome::Failed { .. } => op.failed += 1,
            Outcome::Cancelled => op.cancelled += 1,
        }
        op.update_ms = now_ms;
        self.settle(key.0, &mut op, now_ms)?;
        self.put_op(key.0, &op)?;
        let followers: Vec<(u128, u32)> = self
            .followers
            .range((key.0, key.1, 0, 0)..=(key.0, key.1, u128::MAX, u32::MAX))
            .map_err(err)?
            .map(|r| r.map(|(k, _)| (k.value().2, k.value().3)))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        for f in followers {
            self.followers
                .remove((key.0, key.1, f.0, f.1))
                .map_err(err)?;
            self.end(f, outcome, now_ms)?;
        }
        Ok(())
    }

    /// Marks the operation done when no write is pending.
    fn settle(&mut self, id: u128, op: &mut OpRow, now_ms: u64) -> Result<(), StoreError> {
        let ended = op.delivered + op.failed + op.cancelled;
        if op.done_ms == 0 && ended >= op.total {
            op.done_ms = now_ms.max(1);
            op.last_seq = 0;
            self.finished.insert((op.done_ms, id), ()).map_err(err)?;
        }
        Ok(())
    }

    /// Takes a queued write out of its tenant's queue (and counters).
    fn dequeue(&mut self, tenant: &str, seq: u64) -> Result<Option<QueueRow>, StoreError> {
        let Some(removed) = self.queue.remove((tenant, seq)).map_err(err)? else {
            return Ok(None);
        };
        let row: QueueRow = decode(removed.value(), "queue")?;
        drop(removed);
        let mut t = self.tenant(tenant)?;
        t.pending_writes = t.pending_writes.saturating_sub(1);
        t.pending_bytes = t.pending_bytes.saturating_sub(row.payload.len() as u64);
        self.put_tenant(tenant, &t)?;
        Ok(Some(row))
    }

    /// Removes a finished operation with its writes and request ids.
    fn remove_op(&mut self, id: u128, op: &OpRow) -> Result<(), StoreError> {
        for index in 0..op.total as u32 {
            let Some(removed) = self.writes.remove((id, index)).map_err(err)? else {
                continue;
            };
            let row: WriteRow = decode(removed.value(), "write")?;
            drop(removed);
            let rid = uuid_of(&row.request_id)?.as_u128();
            let owned = match self.rids.get((op.caller.as_str(), rid)).map_err(err)? {
                Some(v) => {
                    let r: RidRow = decode(v.value(), "request id")?;
                    uuid_of(&r.op)?.as_u128() == id && r.index == index
                }
                None => false,
            };
            if owned {
                self.rids.remove((op.caller.as_str(), rid)).map_err(err)?;
            }
        }
        self.ops.remove(id).map_err(err)?;
        self.by_caller
            .remove((op.caller.as_str(), op.create_ms, id))
            .map_err(err)?;
        if op.done_ms != 0 {
            self.finished.remove((op.done_ms, id)).map_err(err)?;
        }
        Ok(())
    }
}

fn submit(
    txn: &WriteTransaction,
    sub: Submission,
    limits: Limits,
) -> Result<Result<Operation, Refused>, StoreError> {
    let mut t = Tables::open(txn)?;
    let now = ms(sub.now);
    let caller = sub.caller.as_str();
    let tenant = sub.tenant.as_str();
    // Checks first: a refusal changes nothing.
    let mut firsts: Vec<Option<(u128, u32)>> = Vec::with_capacity(sub.writes.len());
    let (mut n, mut bytes) = (0u64, 0u64);
    for (i, w) in sub.writes.iter().enumerate() {
        let found = match t.rids.get((caller, w.request_id.as_u128())).map_err(err)? {
            Some(v) => Some(decode::<RidRow>(v.value(), "request id")?),
            None => None,
        };
        match found {
            Some(r) if r.fingerprint != w.fingerprint => {
                return Ok(Err(Refused::Reused { index: i }));
            }
            Some(r) => firsts.push(Some((uuid_of(&r.op)?.as_u128(), r.index))),
            None => {
                let earlier = sub.writes[..i]
                    .iter()
                    .position(|e| e.request_id == w.request_id);
                match earlier {
                    Some(j) if sub.writes[j].fingerprint != w.fingerprint => {
                        return Ok(Err(Refused::Reused { index: i }));
                    }
                    Some(_) => firsts.push(None),
                    None => {
                        n += 1;
                        bytes += w.payload.len() as u64;
                        firsts.push(None);
                    }
                }
            }
        }
    }
    let mut tenant_row = t.tenant(tenant)?;
    if n > 0
        && (tenant_row.pending_writes + n > limits.max_writes
            || tenant_row.pending_bytes + bytes > limits.max_bytes)
    {
        return Ok(Err(Refused::Full {
            pending_writes: tenant_row.pending_writes,
            pending_bytes: tenant_row.pending_bytes,
        }));
    }
    let id = uuid::Uuid::new_v4();
    let key = id.as_u128();
    let mut op = OpRow {
        caller: sub.caller.clone(),
        tenant: sub.tenant.clone(),
        create_ms: now,
        update_ms: now,
        total: sub.writes.len() as u64,
        ..Default::default()
    };
    let mut ended: Vec<(u32, Outcome)> = Vec::new();
    for (i, (w, first)) in sub.writes.iter().zip(firsts).enumerate() {
        let index = i as u32;
        let rid = w.request_id.as_u128();
        let first = first.or_else(|| {
            // A repeat inside this submission follows its first copy.
            sub.writes[..i]
                .iter()
                .position(|e| e.request_id == w.request_id)
                .map(|j| (key, j as u32))
        });
        let mut row = WriteRow {
            request_id: w.request_id.as_bytes().to_vec(),
            ..Default::default()
        };
        if let Some(first) = first {
            let original = if first.0 == key {
                None
            } else {
                Some(t.write(first)?)
            };
            match original {
                Some(o) if o.state == ENDED => {
                    row.state = FOLLOWING;
                    ended.push((index, outcome_of(&o)));
                }
                _ => {
                    row.state = FOLLOWING;
                    t.followers
                        .insert((first.0, first.1, key, index), ())
                        .map_err(err)?;
                }
            }
            t.put_write((key, index), &row)?;
            continue;
        }
        let seq = tenant_row.next_seq;
        tenant_row.next_seq += 1;
        tenant_row.pending_writes += 1;
        tenant_row.pending_bytes += w.payload.len() as u64;
        op.last_seq = seq;
        row.state = QUEUED;
        row.seq = seq;
        t.put_write((key, index), &row)?;
        let queued = QueueRow {
            op: id.as_bytes().to_vec(),
            index,
            caller: sub.caller.clone(),
            kind: u32::from(w.kind.code()),
            entity: w.entity.clone(),
            payload: w.payload.to_vec(),
            enqueued_ms: now,
            epoch: 0,
            request_id: w.request_id.as_bytes().to_vec(),
        };
        t.queue
            .insert((tenant, seq), queued.encode_to_vec().as_slice())
            .map_err(err)?;
        let rid_row = RidRow {
            op: id.as_bytes().to_vec(),
            index,
            fingerprint: w.fingerprint,
        };
        t.rids
            .insert((caller, rid), rid_row.encode_to_vec().as_slice())
            .map_err(err)?;
    }
    t.put_tenant(tenant, &tenant_row)?;
    t.by_caller.insert((caller, now, key), ()).map_err(err)?;
    t.put_op(key, &op)?;
    for (index, outcome) in ended {
        t.end((key, index), &outcome, now)?;
    }
    let op = t.op(key)?;
    if op.total == 0 {
        let mut op = op;
        t.settle(key, &mut op, now)?;
        t.put_op(key, &op)?;
    }
    let op = t.op(key)?;
    let (head, pending) = queue_head(&t.queue, &t.tenants, tenant)?;
    Ok(Ok(view(id, &op, head, pending)))
}

fn outcome_of(row: &WriteRow) -> Outcome {
    match row.outcome {
        DELIVERED => Outcome::Delivered {
            name: row.name.clone(),
        },
        CANCELLED => Outcome::Cancelled,
        _ => Outcome::Failed {
            status: Bytes::from(row.status.clone()),
        },
    }
}

fn claim(
    txn: &WriteTransaction,
    lease: &Lease,
    callers: &Callers,
    max_requests: usize,
) -> Result<Vec<Claimed>, StoreError> {
    let mut t = Tables::open(txn)?;
    let tenant = lease.tenant.as_str();
    let mut picked: Vec<(u64, QueueRow)> = Vec::new();
    {
        let mut blocked = std::collections::HashSet::new();
        let mut scanned = 0;
        for entry in t
            .queue
            .range((tenant, 0)..=(tenant, u64::MAX))
            .map_err(err)?
        {
            let (k, v) = entry.map_err(err)?;
            scanned += 1;
            if scanned > MAX_SCAN || picked.len() >= super::store::MAX_GROUP_WRITES {
                break;
            }
            let row: QueueRow = decode(v.value(), "queue")?;
            if row.epoch == lease.epoch {
                // Being sent by this drainer already.
                blocked.insert(row.entity);
                continue;
            }
            if blocked.contains(&row.entity) {
                break;
            }
            if !callers.admits(&row.caller) {
                blocked.insert(row.entity);
                continue;
            }
            picked.push((k.value().1, row));
        }
    }
    let n = group_len(
        picked.iter().map(|(_, r)| {
            (
                WriteKind::from_code(r.kind as u8).unwrap_or(WriteKind::Create),
                r.entity.as_str(),
            )
        }),
        max_requests,
    );
    picked.truncate(n);
    let mut out = Vec::with_capacity(picked.len());
    for (seq, mut row) in picked {
        let was_in_flight = row.epoch != 0;
        row.epoch = lease.epoch;
        t.queue
            .insert((tenant, seq), row.encode_to_vec().as_slice())
            .map_err(err)?;
        out.push(Claimed {
            op: uuid_of(&row.op)?,
            index: row.index,
            seq,
            caller: row.caller,
            request_id: uuid_of(&row.request_id)?,
            kind: WriteKind::from_code(row.kind as u8)
                .ok_or_else(|| StoreError::Corrupt("an unknown write kind".into()))?,
            entity: row.entity,
            payload: Bytes::from(row.payload),
            was_in_flight,
        });
    }
    Ok(out)
}

fn finish(
    txn: &WriteTransaction,
    lease: &Lease,
    results: Vec<Finished>,
    now: u64,
) -> Result<(), StoreError> {
    let mut t = Tables::open(txn)?;
    let tenant = lease.tenant.as_str();
    for f in results {
        let row: QueueRow = match t.queue.get((tenant, f.seq)).map_err(err)? {
            Some(v) => decode(v.value(), "queue")?,
            None => continue,
        };
        if row.epoch != lease.epoch || uuid_of(&row.op)? != f.op || row.index != f.index {
            continue;
        }
        match f.finish {
            Finish::Requeue => {
                let row = QueueRow { epoch: 0, ..row };
                t.queue
                    .insert((tenant, f.seq), row.encode_to_vec().as_slice())
                    .map_err(err)?;
            }
            Finish::Done(outcome) => {
                t.dequeue(tenant, f.seq)?;
                t.end((f.op.as_u128(), f.index), &outcome, now)?;
            }
        }
    }
    Ok(())
}

fn cancel(
    txn: &WriteTransaction,
    caller: &str,
    id: OperationId,
    now: u64,
) -> Result<Option<Operation>, StoreError> {
    let mut t = Tables::open(txn)?;
    let key = id.as_u128();
    let Some(op) = load_own(&t.ops, id, caller)? else {
        return Ok(None);
    };
    if op.done_ms == 0 {
        for index in 0..op.total as u32 {
            let row = t.write((key, index))?;
            if row.state != QUEUED {
                continue;
            }
            let in_flight = match t.queue.get((op.tenant.as_str(), row.seq)).map_err(err)? {
                Some(v) => decode::<QueueRow>(v.value(), "queue")?.epoch != 0,
                None => false,
            };
            if in_flight {
                continue;
            }
            t.dequeue(&op.tenant, row.seq)?;
            t.end((key, index), &Outcome::Cancelled, now)?;
        }
    }
    let op = t.op(key)?;
    let (head, pending) = queue_head(&t.queue, &t.tenants, &op.tenant)?;
    Ok(Some(view(id, &op, head, pending)))
}

fn delete(txn: &WriteTransaction, caller: &str, id: OperationId) -> Result<Deleted, StoreError> {
    let mut t = Tables::open(txn)?;
    let Some(op) = load_own(&t.ops, id, caller)? else {
        return Ok(Deleted::NotFound);
    };
    if op.done_ms == 0 {
        return Ok(Deleted::NotDone);
    }
    t.remove_op(id.as_u128(), &op)?;
    Ok(Deleted::Deleted)
}

fn purge(txn: &WriteTransaction, before: u64, max: usize) -> Result<usize, StoreError> {
    let mut t = Tables::open(txn)?;
    let old: Vec<u128> = t
        .finished
        .range((0, 0)..(before, 0))
        .map_err(err)?
        .take(max)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    for id in &old {
        let op = t.op(*id)?;
        t.remove_op(*id, &op)?;
    }
    Ok(old.len())
}

#[tonic::async_trait]
impl Store for RedbStore {
    async fn submit(
        &self,
        submission: Submission,
        limits: Limits,
    ) -> Result<Result<Operation, Refused>, StoreError> {
        self.change(move |txn| submit(txn, submission, limits))
            .await
    }

    async fn lease(&self, tenant: &str, _ttl: Duration) -> Result<Option<Lease>, StoreError> {
        Ok(Some(Lease {
            tenant: tenant.to_owned(),
            epoch: self.epoch,
        }))
    }

    /// One process has the file: there is no one to hand over to.
    async fn release(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn claim(
        &self,
        lease: &Lease,
        callers: &Callers,
        max_requests: usize,
        _now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        if lease.epoch != self.epoch {
            return Err(StoreError::LeaseLost);
        }
        let (lease, callers) = (lease.clone(), callers.clone());
        self.change(move |txn| claim(txn, &lease, &callers, max_requests))
            .await
    }

    async fn finish(
        &self,
        lease: &Lease,
        results: Vec<Finished>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        if lease.epoch != self.epoch {
            return Err(StoreError::LeaseLost);
        }
        let lease = lease.clone();
        self.change(move |txn| finish(txn, &lease, results, ms(now)))
            .await
    }

    async fn cancel(
        &self,
        caller: &str,
        id: OperationId,
        now: SystemTime,
    ) -> Result<Option<Operation>, StoreError> {
        let caller = caller.to_owned();
        self.change(move |txn| cancel(txn, &caller, id, ms(now)))
            .await
    }

    async fn get(&self, caller: &str, id: OperationId) -> Result<Option<Operation>, StoreError> {
        self.read_own(caller, id, move |txn, op| {
            let queue = txn.open_table(QUEUE).map_err(err)?;
            let tenants = txn.open_table(TENANTS).map_err(err)?;
            let (head, pending) = queue_head(&queue, &tenants, &op.tenant)?;
            Ok(view(id, &op, head, pending))
        })
        .await
    }

    async fn results(
        &self,
        caller: &str,
        id: OperationId,
    ) -> Result<Option<Vec<WriteResult>>, StoreError> {
        self.read_own(caller, id, move |txn, op| {
            let writes = txn.open_table(WRITES).map_err(err)?;
            let key = id.as_u128();
            let mut out = Vec::with_capacity(op.total as usize);
            for entry in writes.range((key, 0)..=(key, u32::MAX)).map_err(err)? {
                let (_, v) = entry.map_err(err)?;
                let row: WriteRow = decode(v.value(), "write")?;
                out.push(WriteResult {
                    request_id: uuid_of(&row.request_id)?,
                    outcome: (row.state == ENDED).then(|| outcome_of(&row)),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self, caller: &str, query: ListQuery) -> Result<Page, StoreError> {
        let caller = caller.to_owned();
        self.read(move |txn| {
            let by_caller = txn.open_table(BY_CALLER).map_err(err)?;
            let ops = txn.open_table(OPS).map_err(err)?;
            let queue = txn.open_table(QUEUE).map_err(err)?;
            let tenants = txn.open_table(TENANTS).map_err(err)?;
            let c = caller.as_str();
            let range = match query.after {
                Some(after) => by_caller.range((c, 0, 0)..(c, after.create_ms, after.id.as_u128())),
                None => by_caller.range((c, 0, 0)..=(c, u64::MAX, u128::MAX)),
            }
            .map_err(err)?;
            let size = query.page_size.max(1);
            let mut operations = Vec::new();
            let mut more = false;
            for entry in range.rev() {
                let (k, _) = entry.map_err(err)?;
                let id = uuid::Uuid::from_u128(k.value().2);
                let Some(op) = load_op(&ops, id)? else {
                    continue;
                };
                if query.done.is_some_and(|done| (op.done_ms != 0) != done) {
                    continue;
                }
                if operations.len() == size {
                    more = true;
                    break;
                }
                let (head, pending) = queue_head(&queue, &tenants, &op.tenant)?;
                operations.push((op.create_ms, view(id, &op, head, pending)));
            }
            let next = operations
                .last()
                .filter(|_| more)
                .map(|(create_ms, op)| Cursor {
                    create_ms: *create_ms,
                    id: op.id,
                });
            Ok(Page {
                operations: operations.into_iter().map(|(_, op)| op).collect(),
                next,
            })
        })
        .await
    }

    async fn delete(&self, caller: &str, id: OperationId) -> Result<Deleted, StoreError> {
        let caller = caller.to_owned();
        self.change(move |txn| delete(txn, &caller, id)).await
    }

    async fn purge(&self, before: SystemTime, max: usize) -> Result<usize, StoreError> {
        self.change(move |txn| purge(txn, ms(before), max)).await
    }

    async fn tenants(&self) -> Result<Vec<TenantQueue>, StoreError> {
        self.read(|txn| {
            let tenants = txn.open_table(TENANTS).map_err(err)?;
            let queue = txn.open_table(QUEUE).map_err(err)?;
            let mut out = Vec::new();
            for entry in tenants.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let row: TenantRow = decode(v.value(), "tenant")?;
                if row.pending_writes == 0 {
                    continue;
                }
                let tenant = k.value().to_owned();
                let oldest = queue
                    .range((tenant.as_str(), 0)..=(tenant.as_str(), u64::MAX))
                    .map_err(err)?
                    .next()
                    .transpose()
                    .map_err(err)?
                    .map(|(_, v)| decode::<QueueRow>(v.value(), "queue"))
                    .transpose()?
                    .map(|r| time(r.enqueued_ms));
                out.push(TenantQueue {
                    tenant,
                    pending_writes: row.pending_writes,
                    pending_bytes: row.pending_bytes,
                    oldest,
                });
            }
            Ok(out)
        })
        .await
    }
}
