//! The store shared between replicas: PostgreSQL.
//!
//! The schema is the gateway's own (tables `runstate_outbox_*`), created and
//! migrated at startup in one transaction under an advisory lock, so
//! replicas starting together are safe. Every mutation runs in one
//! transaction that first locks its tenant's row (`runstate_outbox_tenants`):
//! submissions, claims, finishes and cancels of one tenant are serialised
//! across replicas, which keeps the pending limits exact and the queue's
//! order. A transaction that meets a serialisation failure, a deadlock or a
//! concurrent insert of the same request id is run again.
//!
//! Clocks: the drain lease's expiry is the database's clock (`now()`), the
//! one clock all replicas share; operation times (create, update, done) are
//! the callers' `now`, as in the embedded store.
//!
//! Nothing waits on a database that is down: connecting has a timeout,
//! each statement has `statement_timeout`, and each store call as a whole
//! has [`CALL_TIMEOUT`], after which it fails with
//! [`StoreError::Unavailable`]. [`PgStore::reachable`] follows the last
//! call or probe, for `/readyz`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{GenericClient, error::SqlState, types::ToSql};
use uuid::Uuid;

use super::store::{
    Callers, Claimed, Counts, Cursor, Deleted, Finish, Finished, Lease, Limits, ListQuery,
    MAX_GROUP_WRITES, Operation, OperationId, Outcome, Page, Refused, Store, StoreError,
    Submission, TenantQueue, WriteKind, WriteResult, group_len,
};

/// How long connecting to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may run on the server.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one store call may take, retries included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections kept at most.
const POOL_SIZE: usize = 8;
/// Times a transaction is run again after a conflict.
const RETRIES: u32 = 5;
/// Queue rows one claim looks at, at most.
const MAX_SCAN: i64 = 5000;
/// The advisory lock key that serialises migrations ("runstate" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_75_6e_73_74_61_74_65;

/// Schema versions, applied in order; each runs once.
const MIGRATIONS: &[&str] = &[r#"
CREATE SEQUENCE runstate_outbox_epochs;
CREATE TABLE runstate_outbox_tenants (
    tenant text PRIMARY KEY,
    next_seq bigint NOT NULL DEFAULT 1,
    pending_writes bigint NOT NULL DEFAULT 0,
    pending_bytes bigint NOT NULL DEFAULT 0
);
CREATE TABLE runstate_outbox_leases (
    tenant text PRIMARY KEY,
    holder uuid NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE runstate_outbox_operations (
    id uuid PRIMARY KEY,
    caller text NOT NULL,
    tenant text NOT NULL,
    create_ms bigint NOT NULL,
    update_ms bigint NOT NULL,
    done_ms bigint,
    total bigint NOT NULL,
    delivered bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    last_seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX runstate_outbox_operations_by_caller
    ON runstate_outbox_operations (caller, create_ms, id);
CREATE INDEX runstate_outbox_operations_finished
    ON runstate_outbox_operations (done_ms) WHERE done_ms IS NOT NULL;
CREATE TABLE runstate_outbox_writes (
    op uuid NOT NULL REFERENCES runstate_outbox_operations (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    request_id uuid NOT NULL,
    state smallint NOT NULL,
    outcome smallint NOT NULL DEFAULT 0,
    name text,
    status bytea,
    first_op uuid,
    first_idx integer,
    PRIMARY KEY (op, idx)
);
CREATE INDEX runstate_outbox_writes_followers
    ON runstate_outbox_writes (first_op, first_idx) WHERE state = 1;
CREATE TABLE runstate_outbox_queue (
    tenant text NOT NULL,
    seq bigint NOT NULL,
    op uuid NOT NULL,
    idx integer NOT NULL,
    caller text NOT NULL,
    kind smallint NOT NULL,
    entity text NOT NULL,
    payload bytea NOT NULL,
    enqueued_ms bigint NOT NULL,
    epoch bigint NOT NULL DEFAULT 0,
    request_id uuid NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX runstate_outbox_queue_by_op ON runstate_outbox_queue (op);
CREATE TABLE runstate_outbox_request_ids (
    caller text NOT NULL,
    request_id uuid NOT NULL,
    op uuid NOT NULL,
    idx integer NOT NULL,
    fingerprint bigint NOT NULL,
    PRIMARY KEY (caller, request_id)
);
CREATE INDEX runstate_outbox_request_ids_by_op ON runstate_outbox_request_ids (op);
"#];

/// A write's state (`runstate_outbox_writes.state`).
const QUEUED: i16 = 0;
const FOLLOWING: i16 = 1;
const ENDED: i16 = 2;

/// An outcome's kind (`runstate_outbox_writes.outcome`).
const DELIVERED: i16 = 1;
const FAILED: i16 = 2;
const CANCELLED: i16 = 3;

/// `--outbox postgres://…`: the URL, kept whole (it may hold a password)
/// but shown only without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    shown: String,
}

impl PgUrl {
    /// Where the store is, without credentials: `postgres://user@host:port/db`.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl FromStr for PgUrl {
    type Err = String;

    /// A `postgres://` or `postgresql://` URL; errors never repeat it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err("a PostgreSQL URL starts with postgres:// or postgresql://".into());
        }
        let config = tokio_postgres::Config::from_str(s)
            .map_err(|e| format!("not a usable PostgreSQL URL: {e}"))?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            })
            .collect();
        if hosts.is_empty() {
            return Err("a PostgreSQL URL names its host: postgres://user@host/db".into());
        }
        let user = config
            .get_user()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let db = config.get_dbname().unwrap_or_default();
        let shown = format!("postgres://{user}{}/{db}", hosts.join(","));
        Ok(PgUrl { config, shown })
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// A database error inside a call: retried, or reported.
enum Fail {
    Db(tokio_postgres::Error),
    Pool(String),
    Store(StoreError),
    /// A row read earlier in the transaction went away meanwhile: run it
    /// again.
    Conflict,
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl Fail {
    fn retryable(&self) -> bool {
        match self {
            Fail::Conflict => true,
            Fail::Db(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION
            }),
            _ => false,
        }
    }
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// The PostgreSQL store. Cheap to share: `Arc` it.
pub struct PgStore {
    pool: Pool,
    /// This process's identity as a lease holder.
    holder: Uuid,
    shown: String,
    reachable: Arc<AtomicBool>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgStore({}, holder {})", self.shown, self.holder)
    }
}

/// Runs `$body` (an expression using the connection `$c`) until it succeeds,
/// fails for good or [`CALL_TIMEOUT`] passes.
macro_rules! call {
    ($self:ident, |$c:ident| $body:expr) => {{
        let attempt = async {
            let mut tries = 0;
            loop {
                #[allow(unused_mut)]
                let mut $c = match $self.pool.get().await {
                    Ok(c) => c,
                    Err(e) => break Err(Fail::Pool(pool_error(&e))),
                };
                let result: Result<_, Fail> = $body.await;
                match result {
                    Err(e) if e.retryable() && tries < RETRIES => tries += 1,
                    other => break other,
                }
            }
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Fail::Pool(format!(
                "no answer within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        $self.settle(result)
    }};
}

/// Why the store could not be opened at startup.
#[derive(Debug, thiserror::Error)]
#[error("{shown}: {why}")]
pub struct OpenError {
    pub shown: String,
    pub why: String,
}

impl PgStore {
    /// Connects, creates or migrates the schema, and returns the store.
    pub async fn open(url: &PgUrl) -> Result<Self, OpenError> {
        let fail = |why: String| OpenError {
            shown: url.shown.clone(),
            why,
        };
        let mut config = url.config.clone();
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let mut options = config.get_options().unwrap_or_default().to_owned();
        options.push_str(&format!(
            " -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            CALL_TIMEOUT.as_millis()
        ));
        config.options(options.trim());
        if config.get_application_name().is_none() {
            config.application_name("runstate-gateway");
        }
        let tls = tls().map_err(fail)?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let store = PgStore {
            pool,
            holder: Uuid::new_v4(),
            shown: url.shown.clone(),
            reachable: Arc::new(AtomicBool::new(true)),
        };
        let migrated = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut c = store
                .pool
                .get()
                .await
                .map_err(|e| format!("cannot connect: {}", pool_error(&e)))?;
            migrate(&mut c)
                .await
                .map_err(|e| format!("cannot create or migrate the outbox schema: {e}"))
        })
        .await
        .map_err(|_| format!("no answer within {}s", CALL_TIMEOUT.as_secs()))
        .and_then(|r| r);
        migrated.map_err(fail)?;
        Ok(store)
    }

    /// Where the store is, without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// False since a call or probe found the server unreachable, until one
    /// reaches it again.
    pub fn reachable(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reachable)
    }

    /// Asks the server whether it answers, and records the answer.
    pub async fn probe(&self) -> bool {
        let up = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let c = self.pool.get().await.ok()?;
            c.simple_query("SELECT 1").await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        self.reachable.store(up, Ordering::Relaxed);
        up
    }

    /// Turns a call's result into the store's, noting reachability.
    fn settle<R>(&self, result: Result<R, Fail>) -> Result<R, StoreError> {
        match result {
            Ok(v) => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(Fail::Store(e)) => {
                self.reachable.store(true, Ordering::Relaxed);
                Err(e)
            }
            Err(Fail::Conflict) => Err(StoreError::Unavailable(format!(
                "{}: concurrent changes kept conflicting",
                self.shown
            ))),
            Err(Fail::Pool(why)) => {
                self.reachable.store(false, Ordering::Relaxed);
                Err(StoreError::Unavailable(format!("{}: {why}", self.shown)))
            }
            Err(Fail::Db(e)) => {
                if e.is_closed() || e.code().is_none() {
                    self.reachable.store(false, Ordering::Relaxed);
                }
                let why = match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None => chain(&e),
                };
                Err(StoreError::Unavailable(format!("{}: {why}", self.shown)))
            }
        }
    }
}

/// A pool error with its causes ("error connecting to server: Connection
/// refused"); a server's error by its message.
fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => chain(e),
        },
        other => chain(other),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// TLS for `sslmode=prefer|require`: rustls with the roots compiled in.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let config = crate::graph::tls_config(&[]).map_err(|e| e.0)?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

async fn migrate(c: &mut deadpool_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS runstate_outbox_schema (version integer PRIMARY KEY)",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM runstate_outbox_schema",
            &[],
        )
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO runstate_outbox_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await
}

/// The row of an operation.
struct OpRow {
    id: Uuid,
    tenant: String,
    create_ms: i64,
    update_ms: i64,
    done_ms: Option<i64>,
    total: i64,
    delivered: i64,
    failed: i64,
    cancelled: i64,
    last_seq: i64,
}

const OP_COLUMNS: &str =
    "id, tenant, create_ms, update_ms, done_ms, total, delivered, failed, cancelled, last_seq";

impl OpRow {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        OpRow {
            id: r.get(0),
            tenant: r.get(1),
            create_ms: r.get(2),
            update_ms: r.get(3),
            done_ms: r.get(4),
            total: r.get(5),
            delivered: r.get(6),
            failed: r.get(7),
            cancelled: r.get(8),
            last_seq: r.get(9),
        }
    }

    /// The operation as its caller sees it, given its tenant's queue head
    /// and pending count.
    fn view(&self, head: Option<i64>, tenant_pending: i64) -> Operation {
        let counts = Counts {
            total: self.total as u64,
            delivered: self.delivered as u64,
            failed: self.failed as u64,
            cancelled: self.cancelled as u64,
        };
        let queued_ahead = match head {
            Some(head) if counts.pending() > 0 && self.last_seq >= head => {
                ((self.last_seq - head + 1).min(tenant_pending)).max(0) as u64
            }
            _ => 0,
        };
        Operation {
            id: self.id,
            tenant: self.tenant.clone(),
            create_time: time(self.create_ms),
            update_time: time(self.update_ms),
            counts,
            done_time: self.done_ms.map(time),
            queued_ahead,
        }
    }
}

/// The first seq of a tenant's queue and its pending count.
async fn queue_head(
    c: &impl GenericClient,
    tenant: &str,
) -> Result<(Option<i64>, i64), tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT (SELECT min(seq) FROM runstate_outbox_queue WHERE tenant = $1),
                    coalesce((SELECT pending_writes FROM runstate_outbox_tenants WHERE tenant = $1), 0)",
            &[&tenant],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn view_of(c: &impl GenericClient, op: &OpRow) -> Result<Operation, Fail> {
    let (head, pending) = queue_head(c, &op.tenant).await?;
    Ok(op.view(head, pending))
}

/// Commits `tx`, which changed the operation `id`; returns its view as
/// committed.
async fn commit_view(tx: Tx<'_>, id: OperationId) -> Result<Operation, Fail> {
    let op = load_op(&*tx, id).await?;
    let view = view_of(&*tx, &op).await?;
    tx.commit().await?;
    Ok(view)
}

/// The operation `id` if `caller` submitted it (no one else sees it).
async fn load_own(
    c: &impl GenericClient,
    caller: &str,
    id: OperationId,
    lock: bool,
) -> Result<Option<OpRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {OP_COLUMNS} FROM runstate_outbox_operations WHERE id = $1 AND caller = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(c.query_opt(&sql, &[&id, &caller])
        .await?
        .map(|r| OpRow::from_row(&r)))
}

async fn load_op(c: &impl GenericClient, id: Uuid) -> Result<OpRow, Fail> {
    let sql = format!("SELECT {OP_COLUMNS} FROM runstate_outbox_operations WHERE id = $1");
    match c.query_opt(&sql, &[&id]).await? {
        Some(r) => Ok(OpRow::from_row(&r)),
        None => Err(StoreError::Corrupt(format!("operation {id} is missing")).into()),
    }
}

/// Locks the tenant's row (creating it), serialising its mutations; returns
/// `(next_seq, pending_writes, pending_bytes)`.
async fn lock_tenant(tx: &Tx<'_>, tenant: &str) -> Result<(i64, i64, i64), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO runstate_outbox_tenants (tenant) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&tenant],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT next_seq, pending_writes, pending_bytes FROM runstate_outbox_tenants
             WHERE tenant = $1 FOR UPDATE",
            &[&tenant],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Fails with [`StoreError::LeaseLost`] unless `lease` is still this
/// holder's; holds the lease row until the transaction ends, so no one
/// takes it over meanwhile.
async fn check_lease(tx: &Tx<'_>, lease: &Lease, holder: Uuid) -> Result<(), Fail> {
    let row = tx
        .query_opt(
            "SELECT epoch FROM runstate_outbox_leases WHERE tenant = $1 AND holder = $2 FOR SHARE",
            &[&lease.tenant, &holder],
        )
        .await?;
    match row {
        Some(r) if r.get::<_, i64>(0) as u64 == lease.epoch => Ok(()),
        _ => Err(StoreError::LeaseLost.into()),
    }
}

fn encode_outcome(outcome: &Outcome) -> (i16, Option<&str>, Option<&[u8]>) {
    match outcome {
        Outcome::Delivered { name } => (DELIVERED, Some(name.as_str()), None),
        Outcome::Failed { status } => (FAILED, None, Some(status.as_ref())),
        Outcome::Cancelled => (CANCELLED, None, None),
    }
}

fn decode_outcome(kind: i16, name: Option<String>, status: Option<Vec<u8>>) -> Outcome {
    match kind {
        DELIVERED => Outcome::Delivered {
            name: name.unwrap_or_default(),
        },
        CANCELLED => Outcome::Cancelled,
        _ => Outcome::Failed {
            status: Bytes::from(status.unwrap_or_default()),
        },
    }
}

/// Gives writes their outcomes and counts them in their operations (done
/// once nothing is pending); then the same for every write following one.
async fn end(tx: &Tx<'_>, mut batch: Vec<(Uuid, i32, Outcome)>, now: i64) -> Result<(), Fail> {
    while !batch.is_empty() {
        let ops: Vec<Uuid> = batch.iter().map(|b| b.0).collect();
        let idxs: Vec<i32> = batch.iter().map(|b| b.1).collect();
        let encoded: Vec<_> = batch.iter().map(|b| encode_outcome(&b.2)).collect();
        let kinds: Vec<i16> = encoded.iter().map(|e| e.0).collect();
        let names: Vec<Option<&str>> = encoded.iter().map(|e| e.1).collect();
        let statuses: Vec<Option<&[u8]>> = encoded.iter().map(|e| e.2).collect();
        let ended = tx
            .query(
                "UPDATE runstate_outbox_writes w
                 SET state = 2, outcome = e.kind, name = e.name, status = e.status,
                     first_op = NULL, first_idx = NULL
                 FROM unnest($1::uuid[], $2::int[], $3::smallint[], $4::text[], $5::bytea[])
                      AS e(op, idx, kind, name, status)
                 WHERE w.op = e.op AND w.idx = e.idx AND w.state <> 2
                 RETURNING w.op, w.idx, e.kind",
                &[&ops, &idxs, &kinds, &names, &statuses],
            )
            .await?;
        let mut per_op: HashMap<Uuid, [i64; 3]> = HashMap::new();
        let mut ended_keys: HashSet<(Uuid, i32)> = HashSet::new();
        for r in &ended {
            let counts = per_op.entry(r.get(0)).or_default();
            match r.get::<_, i16>(2) {
                DELIVERED => counts[0] += 1,
                CANCELLED => counts[2] += 1,
                _ => counts[1] += 1,
            }
            ended_keys.insert((r.get(0), r.get(1)));
        }
        if ended.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = per_op.keys().copied().collect();
        let col = |i: usize| -> Vec<i64> { ids.iter().map(|id| per_op[id][i]).collect() };
        tx.execute(
            "UPDATE runstate_outbox_operations o
             SET delivered = o.delivered + d.dl, failed = o.failed + d.fl,
                 cancelled = o.cancelled + d.cl, update_ms = $5::bigint,
                 done_ms = CASE WHEN o.done_ms IS NULL
                     AND o.delivered + d.dl + o.failed + d.fl + o.cancelled + d.cl >= o.total
                     THEN greatest($5::bigint, 1) ELSE o.done_ms END,
                 last_seq = CASE WHEN o.delivered + d.dl + o.failed + d.fl + o.cancelled + d.cl >= o.total
                     THEN 0 ELSE o.last_seq END
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[]) AS d(id, dl, fl, cl)
             WHERE o.id = d.id",
            &[&ids, &col(0), &col(1), &col(2), &now],
        )
        .await?;
        // Their followers end the same way.
        let outcome_of: HashMap<(Uuid, i32), Outcome> = batch
            .into_iter()
            .filter(|b| ended_keys.contains(&(b.0, b.1)))
            .map(|b| ((b.0, b.1), b.2))
            .collect();
        let (e_ops, e_idxs): (Vec<Uuid>, Vec<i32>) = outcome_of.keys().copied().unzip();
        let followers = tx
            .query(
                "SELECT w.op, w.idx, w.first_op, w.first_idx FROM runstate_outbox_writes w
                 JOIN unnest($1::uuid[], $2::int[]) AS e(op, idx)
                   ON w.first_op = e.op AND w.first_idx = e.idx
                 WHERE w.state = 1",
                &[&e_ops, &e_idxs],
            )
            .await?;
        batch = followers
            .iter()
            .filter_map(|r| {
                let first: (Uuid, i32) = (r.get(2), r.get(3));
                Some((r.get(0), r.get(1), outcome_of.get(&first)?.clone()))
            })
            .collect();
    }
    Ok(())
}

async fn submit_once(
    c: &mut deadpool_postgres::Client,
    sub: &Submission,
    limits: Limits,
) -> Result<Result<Operation, Refused>, Fail> {
    let tx = c.transaction().await?;
    let now = ms(sub.now);
    let caller = sub.caller.as_str();
    let tenant = sub.tenant.as_str();
    let (mut next_seq, pending_writes, pending_bytes) = lock_tenant(&tx, tenant).await?;
    // Request ids this caller submitted before.
    let rids: Vec<Uuid> = sub.writes.iter().map(|w| w.request_id).collect();
    let known: HashMap<Uuid, (Uuid, i32, i64)> = tx
        .query(
            "SELECT request_id, op, idx, fingerprint FROM runstate_outbox_request_ids
             WHERE caller = $1 AND request_id = ANY($2)",
            &[&caller, &rids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    // Checks first: a refusal changes nothing.
    let mut firsts: Vec<Option<(Uuid, i32)>> = Vec::with_capacity(sub.writes.len());
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let (mut n, mut bytes) = (0i64, 0i64);
    for (i, w) in sub.writes.iter().enumerate() {
        let fingerprint = w.fingerprint as i64;
        match known.get(&w.request_id) {
            Some(&(_, _, f)) if f != fingerprint => return Ok(Err(Refused::Reused { index: i })),
            Some(&(op, idx, _)) => firsts.push(Some((op, idx))),
            None => match seen.get(&w.request_id) {
                Some(&j) if sub.writes[j].fingerprint != w.fingerprint => {
                    return Ok(Err(Refused::Reused { index: i }));
                }
                Some(_) => firsts.push(None),
                None => {
                    seen.insert(w.request_id, i);
                    n += 1;
                    bytes += w.payload.len() as i64;
                    firsts.push(None);
                }
            },
        }
    }
    if n > 0
        && (pending_writes + n > limits.max_writes as i64
            || pending_bytes + bytes > limits.max_bytes as i64)
    {
        return Ok(Err(Refused::Full {
            pending_writes: pending_writes.max(0) as u64,
            pending_bytes: pending_bytes.max(0) as u64,
        }));
    }
    // The earlier writes followed: their outcome if they ended. Locked, so
    // one ending meanwhile sees this operation's followers.
    let (f_ops, f_idxs): (Vec<Uuid>, Vec<i32>) = firsts.iter().flatten().copied().unzip();
    let first_ends: HashMap<(Uuid, i32), Option<Outcome>> = tx
        .query(
            "SELECT w.op, w.idx, w.state, w.outcome, w.name, w.status
             FROM runstate_outbox_writes w
             JOIN unnest($1::uuid[], $2::int[]) AS f(op, idx) ON w.op = f.op AND w.idx = f.idx
             FOR SHARE OF w",
            &[&f_ops, &f_idxs],
        )
        .await?
        .into_iter()
        .map(|r| {
            let ended =
                (r.get::<_, i16>(2) == ENDED).then(|| decode_outcome(r.get(3), r.get(4), r.get(5)));
            ((r.get(0), r.get(1)), ended)
        })
        .collect();
    let id = Uuid::new_v4();
    let total = sub.writes.len();
    // Columns of the rows to insert.
    let mut w_idx = Vec::with_capacity(total);
    let mut w_rid = Vec::with_capacity(total);
    let mut w_state = Vec::with_capacity(total);
    let mut w_kind = Vec::with_capacity(total);
    let mut w_name: Vec<Option<String>> = Vec::with_capacity(total);
    let mut w_status: Vec<Option<Vec<u8>>> = Vec::with_capacity(total);
    let mut w_first_op: Vec<Option<Uuid>> = Vec::with_capacity(total);
    let mut w_first_idx: Vec<Option<i32>> = Vec::with_capacity(total);
    let mut q_seq = Vec::new();
    let mut q_idx = Vec::new();
    let mut q_kind = Vec::new();
    let mut q_entity = Vec::new();
    let mut q_payload: Vec<&[u8]> = Vec::new();
    let mut q_rid = Vec::new();
    let mut q_fingerprint = Vec::new();
    let mut counts = [0i64; 3];
    let mut last_seq = 0;
    for (i, (w, first)) in sub.writes.iter().zip(&firsts).enumerate() {
        let index = i as i32;
        w_idx.push(index);
        w_rid.push(w.request_id);
        // A repeat inside this submission follows its first copy.
        let first = first.or_else(|| {
            seen.get(&w.request_id)
                .filter(|&&j| j != i)
                .map(|&j| (id, j as i32))
        });
        if let Some(first) = first {
            match first_ends.get(&first) {
                Some(Some(outcome)) => {
                    let (kind, name, status) = encode_outcome(outcome);
                    match kind {
                        DELIVERED => counts[0] += 1,
                        CANCELLED => counts[2] += 1,
                        _ => counts[1] += 1,
                    }
                    w_state.push(ENDED);
                    w_kind.push(kind);
                    w_name.push(name.map(str::to_owned));
                    w_status.push(status.map(<[u8]>::to_vec));
                    w_first_op.push(None);
                    w_first_idx.push(None);
                }
                // Following: a write of an earlier operation still under
                // way, or an earlier copy in this submission.
                Some(None) | None if (first.0 == id) != first_ends.contains_key(&first) => {
                    w_state.push(FOLLOWING);
                    w_kind.push(0);
                    w_name.push(None);
                    w_status.push(None);
                    w_first_op.push(Some(first.0));
                    w_first_idx.push(Some(first.1));
                }
                // Its operation was removed (retention) after the request
                // id was read: run again, when the id is free.
                _ => return Err(Fail::Conflict),
            }
            continue;
        }
        let seq = next_seq;
        next_seq += 1;
        last_seq = seq;
        w_state.push(QUEUED);
        w_kind.push(0);
        w_name.push(None);
        w_status.push(None);
        w_first_op.push(None);
        w_first_idx.push(None);
        q_seq.push(seq);
        q_idx.push(index);
        q_kind.push(i16::from(w.kind.code()));
        q_entity.push(w.entity.as_str());
        q_payload.push(w.payload.as_ref());
        q_rid.push(w.request_id);
        q_fingerprint.push(w.fingerprint as i64);
    }
    let ended = counts.iter().sum::<i64>();
    let done_ms = (ended >= total as i64).then_some(now.max(1));
    tx.execute(
        "INSERT INTO runstate_outbox_operations
         (id, caller, tenant, create_ms, update_ms, done_ms, total, delivered, failed, cancelled, last_seq)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &id,
            &caller,
            &tenant,
            &now,
            &done_ms,
            &(total as i64),
            &counts[0],
            &counts[1],
            &counts[2],
            &if done_ms.is_some() { 0 } else { last_seq },
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO runstate_outbox_writes
         (op, idx, request_id, state, outcome, name, status, first_op, first_idx)
         SELECT $1, * FROM unnest($2::int[], $3::uuid[], $4::smallint[], $5::smallint[],
                                  $6::text[], $7::bytea[], $8::uuid[], $9::int[])",
        &[
            &id,
            &w_idx,
            &w_rid,
            &w_state,
            &w_kind,
            &w_name,
            &w_status,
            &w_first_op,
            &w_first_idx,
        ],
    )
    .await?;
    if !q_seq.is_empty() {
        tx.execute(
            "INSERT INTO runstate_outbox_queue
             (tenant, seq, op, idx, caller, kind, entity, payload, enqueued_ms, epoch, request_id)
             SELECT $1, q.seq, $2, q.idx, $3, q.kind, q.entity, q.payload, $4, 0, q.rid
             FROM unnest($5::bigint[], $6::int[], $7::smallint[], $8::text[], $9::bytea[], $10::uuid[])
                  AS q(seq, idx, kind, entity, payload, rid)",
            &[
                &tenant,
                &id,
                &caller,
                &now,
                &q_seq,
                &q_idx,
                &q_kind,
                &q_entity,
                &q_payload,
                &q_rid,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO runstate_outbox_request_ids (caller, request_id, op, idx, fingerprint)
             SELECT $1, r.rid, $2, r.idx, r.fingerprint
             FROM unnest($3::uuid[], $4::int[], $5::bigint[]) AS r(rid, idx, fingerprint)",
            &[&caller, &id, &q_rid, &q_idx, &q_fingerprint],
        )
        .await?;
        tx.execute(
            "UPDATE runstate_outbox_tenants
             SET next_seq = $2, pending_writes = pending_writes + $3, pending_bytes = pending_bytes + $4
             WHERE tenant = $1",
            &[&tenant, &next_seq, &n, &bytes],
        )
        .await?;
    }
    Ok(Ok(commit_view(tx, id).await?))
}

async fn lease_once(
    c: &mut deadpool_postgres::Client,
    tenant: &str,
    holder: Uuid,
    ttl: Duration,
) -> Result<Option<Lease>, Fail> {
    let row = c
        .query_opt(
            "INSERT INTO runstate_outbox_leases AS l (tenant, holder, epoch, expires_at)
             VALUES ($1, $2, nextval('runstate_outbox_epochs'), now() + make_interval(secs => $3))
             ON CONFLICT (tenant) DO UPDATE SET
                 epoch = CASE WHEN l.holder = EXCLUDED.holder THEN l.epoch ELSE EXCLUDED.epoch END,
                 holder = EXCLUDED.holder,
                 expires_at = EXCLUDED.expires_at
             WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
             RETURNING epoch",
            &[&tenant, &holder, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(row.map(|r| Lease {
        tenant: tenant.to_owned(),
        epoch: r.get::<_, i64>(0) as u64,
    }))
}

async fn claim_once(
    c: &mut deadpool_postgres::Client,
    lease: &Lease,
    holder: Uuid,
    callers: &Callers,
    max_requests: usize,
) -> Result<Vec<Claimed>, Fail> {
    let tx = c.transaction().await?;
    let tenant = lease.tenant.as_str();
    lock_tenant(&tx, tenant).await?;
    check_lease(&tx, lease, holder).await?;
    let epoch = lease.epoch as i64;
    let rows = tx
        .query(
            "SELECT seq, caller, kind, entity, epoch FROM runstate_outbox_queue
             WHERE tenant = $1 ORDER BY seq LIMIT $2",
            &[&tenant, &MAX_SCAN],
        )
        .await?;
    let mut picked: Vec<(i64, i16, &str, i64)> = Vec::new();
    let mut blocked: HashSet<&str> = HashSet::new();
    for r in &rows {
        if picked.len() >= MAX_GROUP_WRITES {
            break;
        }
        let (seq, caller, kind, entity, was): (i64, &str, i16, &str, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        if was == epoch {
            // Being sent by this drainer already.
            blocked.insert(entity);
            continue;
        }
        if blocked.contains(entity) {
            break;
        }
        if !callers.admits(caller) {
            blocked.insert(entity);
            continue;
        }
        picked.push((seq, kind, entity, was));
    }
    let n = group_len(
        picked.iter().map(|&(_, kind, entity, _)| {
            (
                WriteKind::from_code(kind as u8).unwrap_or(WriteKind::Create),
                entity,
            )
        }),
        max_requests,
    );
    picked.truncate(n);
    if picked.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let was_in_flight: HashMap<i64, bool> = picked.iter().map(|p| (p.0, p.3 != 0)).collect();
    let seqs: Vec<i64> = picked.iter().map(|p| p.0).collect();
    let mut claimed = tx
        .query(
            "UPDATE runstate_outbox_queue SET epoch = $3
             WHERE tenant = $1 AND seq = ANY($2)
             RETURNING seq, op, idx, caller, request_id, kind, entity, payload",
            &[&tenant, &seqs, &epoch],
        )
        .await?
        .into_iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            let kind: i16 = r.get(5);
            Ok(Claimed {
                op: r.get(1),
                index: r.get::<_, i32>(2) as u32,
                seq: seq as u64,
                caller: r.get(3),
                request_id: r.get(4),
                kind: WriteKind::from_code(kind as u8)
                    .ok_or_else(|| StoreError::Corrupt("an unknown write kind".into()))?,
                entity: r.get(6),
                payload: Bytes::from(r.get::<_, Vec<u8>>(7)),
                was_in_flight: was_in_flight.get(&seq).copied().unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    claimed.sort_by_key(|c| c.seq);
    tx.commit().await?;
    Ok(claimed)
}

async fn finish_once(
    c: &mut deadpool_postgres::Client,
    lease: &Lease,
    holder: Uuid,
    results: &[Finished],
    now: i64,
) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    let tenant = lease.tenant.as_str();
    lock_tenant(&tx, tenant).await?;
    check_lease(&tx, lease, holder).await?;
    let epoch = lease.epoch as i64;
    let (requeue, done): (Vec<&Finished>, Vec<&Finished>) = results
        .iter()
        .partition(|f| matches!(f.finish, Finish::Requeue));
    let columns = |list: &[&Finished]| -> (Vec<i64>, Vec<Uuid>, Vec<i32>) {
        (
            list.iter().map(|f| f.seq as i64).collect(),
            list.iter().map(|f| f.op).collect(),
            list.iter().map(|f| f.index as i32).collect(),
        )
    };
    if !requeue.is_empty() {
        let (seqs, ops, idxs) = columns(&requeue);
        tx.execute(
            "UPDATE runstate_outbox_queue q SET epoch = 0
             FROM unnest($2::bigint[], $3::uuid[], $4::int[]) AS f(seq, op, idx)
             WHERE q.tenant = $1 AND q.seq = f.seq AND q.op = f.op AND q.idx = f.idx
               AND q.epoch = $5",
            &[&tenant, &seqs, &ops, &idxs, &epoch],
        )
        .await?;
    }
    if !done.is_empty() {
        let (seqs, ops, idxs) = columns(&done);
        let removed = tx
            .query(
                "DELETE FROM runstate_outbox_queue q
                 USING unnest($2::bigint[], $3::uuid[], $4::int[]) AS f(seq, op, idx)
                 WHERE q.tenant = $1 AND q.seq = f.seq AND q.op = f.op AND q.idx = f.idx
                   AND q.epoch = $5
                 RETURNING q.seq, length(q.payload)",
                &[&tenant, &seqs, &ops, &idxs, &epoch],
            )
            .await?;
        let gone: HashSet<i64> = removed.iter().map(|r| r.get(0)).collect();
        let bytes: i64 = removed.iter().map(|r| i64::from(r.get::<_, i32>(1))).sum();
        tx.execute(
            "UPDATE runstate_outbox_tenants
             SET pending_writes = greatest(pending_writes - $2, 0),
                 pending_bytes = greatest(pending_bytes - $3, 0)
             WHERE tenant = $1",
            &[&tenant, &(gone.len() as i64), &bytes],
        )
        .await?;
        let ends = done
            .into_iter()
            .filter(|f| gone.contains(&(f.seq as i64)))
            .filter_map(|f| match &f.finish {
                Finish::Done(outcome) => Some((f.op, f.index as i32, outcome.clone())),
                Finish::Requeue => None,
            })
            .collect();
        end(&tx, ends, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn cancel_once(
    c: &mut deadpool_postgres::Client,
    caller: &str,
    id: OperationId,
    now: i64,
) -> Result<Option<Operation>, Fail> {
    let tx = c.transaction().await?;
    let Some(op) = load_own(&*tx, caller, id, false).await? else {
        return Ok(None);
    };
    if op.done_ms.is_none() {
        lock_tenant(&tx, &op.tenant).await?;
        let removed = tx
            .query(
                "DELETE FROM runstate_outbox_queue WHERE tenant = $1 AND op = $2 AND epoch = 0
                 RETURNING idx, length(payload)",
                &[&op.tenant, &id],
            )
            .await?;
        let bytes: i64 = removed.iter().map(|r| i64::from(r.get::<_, i32>(1))).sum();
        tx.execute(
            "UPDATE runstate_outbox_tenants
             SET pending_writes = greatest(pending_writes - $2, 0),
                 pending_bytes = greatest(pending_bytes - $3, 0)
             WHERE tenant = $1",
            &[&op.tenant, &(removed.len() as i64), &bytes],
        )
        .await?;
        let ends = removed
            .iter()
            .map(|r| (id, r.get::<_, i32>(0), Outcome::Cancelled))
            .collect();
        end(&tx, ends, now).await?;
    }
    Ok(Some(commit_view(tx, id).await?))
}

async fn delete_once(
    c: &mut deadpool_postgres::Client,
    caller: &str,
    id: OperationId,
) -> Result<Deleted, Fail> {
    let tx = c.transaction().await?;
    let Some(op) = load_own(&*tx, caller, id, true).await? else {
        return Ok(Deleted::NotFound);
    };
    if op.done_ms.is_none() {
        return Ok(Deleted::NotDone);
    }
    remove_ops(&tx, &[id]).await?;
    tx.commit().await?;
    Ok(Deleted::Deleted)
}

async fn purge_once(
    c: &mut deadpool_postgres::Client,
    before: i64,
    max: i64,
) -> Result<usize, Fail> {
    let tx = c.transaction().await?;
    let old: Vec<Uuid> = tx
        .query(
            "SELECT id FROM runstate_outbox_operations
             WHERE done_ms IS NOT NULL AND done_ms < $1
             ORDER BY done_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&before, &max],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !old.is_empty() {
        remove_ops(&tx, &old).await?;
    }
    tx.commit().await?;
    Ok(old.len())
}

/// Removes finished operations with their writes and request ids (which
/// may then be submitted again).
async fn remove_ops(tx: &Tx<'_>, ids: &[Uuid]) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "DELETE FROM runstate_outbox_request_ids WHERE op = ANY($1)",
        &[&ids],
    )
    .await?;
    tx.execute(
        "DELETE FROM runstate_outbox_operations WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(())
}

async fn list_once(c: &impl GenericClient, caller: &str, query: &ListQuery) -> Result<Page, Fail> {
    let size = query.page_size.max(1);
    let (after_ms, after_id) = match query.after {
        Some(a) => (a.create_ms.min(i64::MAX as u64) as i64, a.id),
        None => (i64::MAX, Uuid::max()),
    };
    let done: Option<bool> = query.done;
    let sql = format!(
        "SELECT {OP_COLUMNS} FROM runstate_outbox_operations
         WHERE caller = $1 AND (create_ms, id) < ($2, $3)
           AND ($4::boolean IS NULL OR (done_ms IS NOT NULL) = $4)
         ORDER BY create_ms DESC, id DESC LIMIT $5"
    );
    let rows = c
        .query(
            &sql,
            &[&caller, &after_ms, &after_id, &done, &(size as i64 + 1)],
        )
        .await?;
    let more = rows.len() > size;
    let mut heads: HashMap<String, (Option<i64>, i64)> = HashMap::new();
    let mut operations = Vec::with_capacity(size);
    let mut last = None;
    for r in rows.iter().take(size) {
        let op = OpRow::from_row(r);
        let head = match heads.get(&op.tenant) {
            Some(h) => *h,
            None => {
                let h = queue_head(c, &op.tenant).await?;
                heads.insert(op.tenant.clone(), h);
                h
            }
        };
        last = Some(Cursor {
            create_ms: op.create_ms.max(0) as u64,
            id: op.id,
        });
        operations.push(op.view(head.0, head.1));
    }
    Ok(Page {
        operations,
        next: last.filter(|_| more),
    })
}

#[tonic::async_trait]
impl Store for PgStore {
    async fn submit(
        &self,
        submission: Submission,
        limits: Limits,
    ) -> Result<Result<Operation, Refused>, StoreError> {
        call!(self, |c| submit_once(&mut c, &submission, limits))
    }

    async fn lease(&self, tenant: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let holder = self.holder;
        call!(self, |c| lease_once(&mut c, tenant, holder, ttl))
    }

    async fn release(&self) -> Result<(), StoreError> {
        let holder = self.holder;
        call!(self, |c| async move {
            c.execute(
                "DELETE FROM runstate_outbox_leases WHERE holder = $1",
                &[&holder],
            )
            .await?;
            Ok(())
        })
    }

    async fn claim(
        &self,
        lease: &Lease,
        callers: &Callers,
        max_requests: usize,
        _now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        let holder = self.holder;
        call!(self, |c| claim_once(
            &mut c,
            lease,
            holder,
            callers,
            max_requests
        ))
    }

    async fn finish(
        &self,
        lease: &Lease,
        results: Vec<Finished>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let holder = self.holder;
        let now = ms(now);
        call!(self, |c| finish_once(&mut c, lease, holder, &results, now))
    }

    async fn cancel(
        &self,
        caller: &str,
        id: OperationId,
        now: SystemTime,
    ) -> Result<Option<Operation>, StoreError> {
        let now = ms(now);
        call!(self, |c| cancel_once(&mut c, caller, id, now))
    }

    async fn get(&self, caller: &str, id: OperationId) -> Result<Option<Operation>, StoreError> {
        call!(self, |c| async {
            match load_own(&**c, caller, id, false).await? {
                Some(op) => Ok(Some(view_of(&**c, &op).await?)),
                None => Ok(None),
            }
        })
    }

    async fn results(
        &self,
        caller: &str,
        id: OperationId,
    ) -> Result<Option<Vec<WriteResult>>, StoreError> {
        call!(self, |c| async {
            // One snapshot for the ownership check and the rows.
            let tx = c.transaction().await?;
            if load_own(&*tx, caller, id, false).await?.is_none() {
                return Ok(None);
            }
            let rows = tx
                .query(
                    "SELECT request_id, state, outcome, name, status FROM runstate_outbox_writes
                     WHERE op = $1 ORDER BY idx",
                    &[&id],
                )
                .await?;
            tx.commit().await?;
            Ok(Some(
                rows.into_iter()
                    .map(|r| WriteResult {
                        request_id: r.get(0),
                        outcome: (r.get::<_, i16>(1) == ENDED)
                            .then(|| decode_outcome(r.get(2), r.get(3), r.get(4))),
                    })
                    .collect(),
            ))
        })
    }

    async fn list(&self, caller: &str, query: ListQuery) -> Result<Page, StoreError> {
        call!(self, |c| list_once(&**c, caller, &query))
    }

    async fn delete(&self, caller: &str, id: OperationId) -> Result<Deleted, StoreError> {
        call!(self, |c| delete_once(&mut c, caller, id))
    }

    async fn purge(&self, before: SystemTime, max: usize) -> Result<usize, StoreError> {
        let before = ms(before);
        let max = max.min(i64::MAX as usize) as i64;
        call!(self, |c| purge_once(&mut c, before, max))
    }

    async fn tenants(&self) -> Result<Vec<TenantQueue>, StoreError> {
        call!(self, |c| async {
            let rows = c
                .query(
                    "SELECT t.tenant, t.pending_writes, t.pending_bytes,
                            (SELECT q.enqueued_ms FROM runstate_outbox_queue q
                             WHERE q.tenant = t.tenant ORDER BY q.seq LIMIT 1)
                     FROM runstate_outbox_tenants t WHERE t.pending_writes > 0
                     ORDER BY t.tenant",
                    &[] as &[&(dyn ToSql + Sync)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| TenantQueue {
                    tenant: r.get(0),
                    pending_writes: r.get::<_, i64>(1).max(0) as u64,
                    pending_bytes: r.get::<_, i64>(2).max(0) as u64,
                    oldest: r.get::<_, Option<i64>>(3).map(time),
                })
                .collect())
        })
    }
}
