//! The outbox's store: where accepted writes wait, on disk, until the drain
//! has delivered them, and where operations and their results are kept.
//!
//! The store never decodes a write: it keeps the encoded `RunStateWrite`
//! (`payload`) with the few facts it orders and groups by (kind, entity,
//! caller). Two implementations: the embedded redb file ([`super::redb`]),
//! for one process, and PostgreSQL, shared between replicas.
//!
//! Every mutating method returns only once its change is durable (fsynced
//! or committed), so an answer built on it survives a crash. A write moves
//! `pending` → `in flight` → `finished` (or `pending` → `cancelled`); it is
//! marked in flight durably before it is sent, so after a crash a write
//! still marked in flight under a dead drainer's lease is known to have
//! perhaps reached Graph.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// An operation's id; its name is `operations/{id}` (the hyphenated UUID).
pub type OperationId = uuid::Uuid;

/// What a write does; enough to group and coalesce it without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteKind {
    Create,
    Update,
    Delete,
}

impl WriteKind {
    pub fn code(self) -> u8 {
        match self {
            WriteKind::Create => 1,
            WriteKind::Update => 2,
            WriteKind::Delete => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(WriteKind::Create),
            2 => Some(WriteKind::Update),
            3 => Some(WriteKind::Delete),
            _ => None,
        }
    }
}

/// One validated write, as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWrite {
    pub request_id: uuid::Uuid,
    pub kind: WriteKind,
    /// The resource name it writes (for a create, the name it asks Graph
    /// to keep): writes to one entity are never sent in one group unless
    /// they are updates, which coalesce.
    pub entity: String,
    /// A hash of the write, to spot a request id reused for another write.
    pub fingerprint: u64,
    /// The encoded `RunStateWrite`.
    pub payload: Bytes,
}

/// A batch of writes from one caller, accepted or refused as a whole.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Who submitted ([`crate::state::identity::caller`]): only this caller
    /// sees the operation.
    pub caller: String,
    /// The Graph tenant the writes go to: they share its queue and budget.
    pub tenant: String,
    pub writes: Vec<NewWrite>,
    pub now: SystemTime,
}

/// The most writes and payload bytes one tenant may have pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_writes: u64,
    pub max_bytes: u64,
}

/// Why a submission was refused; nothing of it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The tenant's pending writes would pass [`Limits`].
    Full {
        pending_writes: u64,
        pending_bytes: u64,
    },
    /// `writes[index]`'s request id was submitted before by this caller
    /// with another write (another fingerprint).
    Reused { index: usize },
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Graph applied it: the written (or deleted) entity's name.
    Delivered { name: String },
    /// It failed: the encoded `google.rpc.Status` the synchronous RPC would
    /// have answered, details included.
    Failed { status: Bytes },
    /// Cancelled before it was sent.
    Cancelled,
}

/// One write's place in its operation's response.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteResult {
    pub request_id: uuid::Uuid,
    /// `None` while it is pending or in flight.
    pub outcome: Option<Outcome>,
}

/// Counts of an operation's writes by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub delivered: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Counts {
    /// Writes pending or in flight.
    pub fn pending(&self) -> u64 {
        self.total
            .saturating_sub(self.delivered + self.failed + self.cancelled)
    }
}

/// An operation as its caller sees it (without its results).
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: OperationId,
    pub tenant: String,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub counts: Counts,
    /// Set once every write has an outcome.
    pub done_time: Option<SystemTime>,
    /// Pending writes of the tenant queued before this operation's last
    /// pending write, its own included (0 once none is pending): for the
    /// estimated completion time.
    pub queued_ahead: u64,
}

impl Operation {
    pub fn done(&self) -> bool {
        self.done_time.is_some()
    }
}

/// Which of a caller's operations [`Store::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only done (`Some(true)`) or only unfinished (`Some(false)`) ones.
    pub done: Option<bool>,
    pub page_size: usize,
    /// Where the previous page ended ([`Page::next`]).
    pub after: Option<Cursor>,
}

/// A position in a caller's operations (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub create_ms: u64,
    pub id: OperationId,
}

/// One page of [`Store::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub operations: Vec<Operation>,
    pub next: Option<Cursor>,
}

/// What [`Store::delete`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NotFound,
    /// The operation still has writes pending or in flight.
    NotDone,
}

/// Which callers' writes [`Store::claim`] may take: those the drain has a
/// Graph token for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callers {
    Any,
    Only(Vec<String>),
}

impl Callers {
    pub fn admits(&self, caller: &str) -> bool {
        match self {
            Callers::Any => true,
            Callers::Only(list) => list.iter().any(|c| c == caller),
        }
    }
}

/// The right to drain one tenant's queue. `epoch` changes each time the
/// lease passes to a new holder (a new process, or a replica taking over
/// from a dead one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub tenant: String,
    pub epoch: u64,
}

/// A write taken from the queue to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub op: OperationId,
    /// Its place in the operation's writes.
    pub index: u32,
    /// Its place in the tenant's queue.
    pub seq: u64,
    pub caller: String,
    pub request_id: uuid::Uuid,
    pub kind: WriteKind,
    pub entity: String,
    pub payload: Bytes,
    /// It was in flight under an earlier lease whose holder died: it may
    /// have reached Graph.
    pub was_in_flight: bool,
}

/// The end of a claimed write.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Done(Outcome),
    /// It never left the gateway: back to pending, in its place.
    Requeue,
}

/// One claimed write's end, for [`Store::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub op: OperationId,
    pub index: u32,
    pub seq: u64,
    pub finish: Finish,
}

/// A tenant with pending writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQueue {
    pub tenant: String,
    /// Writes pending or in flight.
    pub pending_writes: u64,
    pub pending_bytes: u64,
    /// When its oldest pending write was accepted.
    pub oldest: Option<SystemTime>,
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// It cannot be reached or written now; the call may be retried.
    #[error("the outbox store is unavailable: {0}")]
    Unavailable(String),
    /// Its contents cannot be read (a corrupt file or an unknown format).
    #[error("the outbox store is corrupt: {0}")]
    Corrupt(String),
    /// The lease was lost to another holder: stop draining the tenant.
    #[error("the drain lease of this tenant passed to another holder")]
    LeaseLost,
}

/// The most writes one group may hold. Updates of one entity coalesce, so a
/// group may send fewer requests than it holds writes.
pub const MAX_GROUP_WRITES: usize = 1000;

/// How many of `writes` (oldest first) one group takes: at most
/// `max_requests` entities and [`MAX_GROUP_WRITES`] writes, and never two
/// writes to one entity unless every write to it in the group is an
/// update (they coalesce into one PATCH). Both stores cut groups with this.
pub fn group_len<'a>(
    writes: impl IntoIterator<Item = (WriteKind, &'a str)>,
    max_requests: usize,
) -> usize {
    let mut seen: std::collections::HashMap<&str, WriteKind> = Default::default();
    let mut n = 0;
    for (kind, entity) in writes {
        if n >= MAX_GROUP_WRITES {
            break;
        }
        match seen.get(entity) {
            Some(WriteKind::Update) if kind == WriteKind::Update => {}
            Some(_) => break,
            None if seen.len() >= max_requests => break,
            None => {
                seen.insert(entity, kind);
            }
        }
        n += 1;
    }
    n
}

/// Where accepted writes wait until delivered. Implementations serialise
/// their own mutations; every method may be called from many tasks at once.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new operation holding `submission.writes`, atomically: all
    /// of them or none. Returns once it is durable (fsync or commit);
    /// concurrent submissions may share one commit. A write whose request
    /// id this caller submitted before (and whose operation is still kept)
    /// is not queued again: it follows the first one and gets its outcome;
    /// the same id with another fingerprint refuses the whole submission
    /// ([`Refused::Reused`]). New writes count against the tenant's
    /// [`Limits`] ([`Refused::Full`]).
    async fn submit(
        &self,
        submission: Submission,
        limits: Limits,
    ) -> Result<Result<Operation, Refused>, StoreError>;

    /// Grants or renews the right to drain `tenant` for `ttl`; `None` while
    /// a live holder elsewhere has it. Read-only apart from the lease
    /// itself. An embedded store (one process) always grants it; a shared
    /// one grants it to one holder at a time, with a new epoch when it
    /// passes on (expiry on the store's own clock).
    async fn lease(&self, tenant: &str, ttl: Duration) -> Result<Option<Lease>, StoreError>;

    /// Gives up every drain lease this process holds, at shutdown once its
    /// drain has stopped, so another replica takes its tenants over at once
    /// instead of when the leases expire. Writes still marked in flight
    /// under them read as such to the next holder.
    async fn release(&self) -> Result<(), StoreError>;

    /// Takes the tenant's next group of pending writes, oldest first, from
    /// the callers `callers` admits (cut by [`group_len`] with
    /// `max_requests`), and marks them in flight under `lease`, durably,
    /// before returning: a crash after this reads as "was in flight".
    /// Writes left in flight under an older epoch come first, flagged
    /// [`Claimed::was_in_flight`]. Writes already in flight under this
    /// lease are skipped, and a later write to one of their entities ends
    /// the group, so groups may be claimed while others are in flight and
    /// one entity's writes still go in order. Fails with
    /// [`StoreError::LeaseLost`] when the lease passed on.
    async fn claim(
        &self,
        lease: &Lease,
        callers: &Callers,
        max_requests: usize,
        now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Records the end of claimed writes, durably: outcomes (also given to
    /// every write that follows one as a duplicate) or back to pending.
    /// Operations whose last write ends become done at `now`.
    async fn finish(
        &self,
        lease: &Lease,
        results: Vec<Finished>,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// Cancels the caller's operation, durably: its writes still pending
    /// end as [`Outcome::Cancelled`]; writes in flight go on, and writes
    /// that follow another operation's keep following it. `None` when the
    /// caller has no such operation.
    async fn cancel(
        &self,
        caller: &str,
        id: OperationId,
        now: SystemTime,
    ) -> Result<Option<Operation>, StoreError>;

    /// The caller's operation; `None` when it does not exist or is
    /// another caller's. Reads committed state only.
    async fn get(&self, caller: &str, id: OperationId) -> Result<Option<Operation>, StoreError>;

    /// The results of the caller's operation, in submission order; `None`
    /// as for [`Store::get`]. Reads committed state only.
    async fn results(
        &self,
        caller: &str,
        id: OperationId,
    ) -> Result<Option<Vec<WriteResult>>, StoreError>;

    /// The caller's operations, newest first, one page at a time.
    async fn list(&self, caller: &str, query: ListQuery) -> Result<Page, StoreError>;

    /// Removes the caller's finished operation and its results, durably.
    /// An unfinished one is kept ([`Deleted::NotDone`]).
    async fn delete(&self, caller: &str, id: OperationId) -> Result<Deleted, StoreError>;

    /// Removes, durably, at most `max` operations finished before
    /// `before`, with their results and request ids (which may then be
    /// submitted again). Returns how many were removed.
    async fn purge(&self, before: SystemTime, max: usize) -> Result<usize, StoreError>;

    /// The tenants with writes pending or in flight, for the drain and the
    /// metrics. Reads committed state only.
    async fn tenants(&self) -> Result<Vec<TenantQueue>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stop_at_a_second_write_to_one_entity_unless_both_update() {
        use WriteKind::*;
        let w = |k, e| (k, e);
        assert_eq!(group_len([w(Create, "a"), w(Update, "b")], 20), 2);
        assert_eq!(group_len([w(Create, "a"), w(Update, "a")], 20), 1);
        assert_eq!(
            group_len([w(Update, "a"), w(Update, "a"), w(Delete, "a")], 20),
            2
        );
        assert_eq!(
            group_len([w(Update, "a"), w(Update, "b"), w(Update, "a")], 20),
            3
        );
        assert_eq!(group_len([w(Update, "a"), w(Update, "b")], 1), 1);
        assert_eq!(group_len([w(Update, "a"), w(Update, "a")], 1), 2);
        assert_eq!(group_len(Vec::<(WriteKind, &str)>::new(), 20), 0);
    }
}
