//! The drain: one task per tenant with pending writes takes the tenant's
//! drain lease, claims its oldest writes (marked in flight on disk before
//! they are sent), sends them through the write engine (budget permits,
//! the tenant pause on a 429, `$batch` groups, exactly-once creates), and
//! records each outcome. A write found in flight from before a crash is
//! sent again only where that is safe: a create only where Graph keeps
//! client ids (a copy that got through then answers 409 and is read back),
//! otherwise it ends as OUTCOME_UNKNOWN; updates (idempotent PATCHes) and
//! deletes are sent again.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use prost::Message;
use tokio::{task::JoinSet, time::Instant};

use super::{
    Outbox,
    coalesce::coalesce,
    store::{Callers, Claimed, Finish, Finished, Lease, Outcome, Store, StoreError, TenantQueue},
};
use crate::convert::resources::Resource;
use crate::graph::{Call, GraphError};
use crate::grpc::{
    status,
    submit::{Change, Plan, plan},
};
use crate::metrics as m;
use crate::pb;
use crate::state::identity;
use crate::write::{CreateError, Engine, NewState, Via};

/// The gateway's own Graph token, when it has one (a static token or a
/// credential): it serves the writes of its own identity.
pub type Fallback =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<HeaderValue>> + Send>> + Send + Sync>;

/// How long a group's Graph calls may take (budget waits and throttling
/// included) before its writes that were not applied go back to the queue
/// (where a cancel still reaches them).
const GROUP_DEADLINE: Duration = Duration::from_secs(30);
/// The pause after a group none of whose writes could be sent.
const IDLE_AFTER_REQUEUE: Duration = Duration::from_secs(2);
/// Groups of a tenant in flight at once, at most (fewer where the budget's
/// limit is lower).
const GROUPS_IN_FLIGHT: usize = 2;
/// How long a drain lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a tenant's lease is renewed while its groups are in flight
/// (a claim renews it too).
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often the drain looks for work when not woken.
const TICK: Duration = Duration::from_secs(1);
/// How often finished operations past retention are removed.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Tenants named in the metrics; the rest are summed as `other`.
const METRIC_TENANTS: usize = 20;

/// Delivers the outbox's writes.
pub struct Drain {
    outbox: Arc<Outbox>,
    engine: Engine,
    fallback: Fallback,
    /// Requests (states) per claimed group: the `$batch` concurrency × 20,
    /// at most the budget's limit (a group must fit in one window).
    max_requests: usize,
    /// Requests of a tenant's groups in flight at once: [`GROUPS_IN_FLIGHT`]
    /// groups, at most the budget's limit (so a claimed write waits at most about one
    /// window, well within [`GROUP_DEADLINE`]).
    in_flight: usize,
    /// Set by [`Drain::stop`]: claim nothing more, record what is in flight.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The tenants' drain tasks, aborted when dropped.
#[derive(Default)]
struct TenantTasks(HashMap<String, tokio::task::JoinHandle<()>>);

impl Drop for TenantTasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

impl Drain {
    pub(crate) fn new(
        outbox: Arc<Outbox>,
        engine: Engine,
        fallback: Fallback,
        batch_concurrency: usize,
    ) -> Self {
        let mut max_requests = crate::graph::MAX_BATCH * batch_concurrency.max(1);
        let mut in_flight = max_requests * GROUPS_IN_FLIGHT;
        if let Some(budget) = outbox.budget {
            let limit = budget.limit.max(1) as usize;
            max_requests = max_requests.min(limit);
            in_flight = in_flight.min(limit);
        }
        Self {
            outbox,
            engine,
            fallback,
            max_requests,
            in_flight,
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Stops the drain: no group is claimed any more; [`Drain::run`] returns
    /// once the groups in flight are recorded.
    pub(crate) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Runs until [`Drain::stop`] (or until aborted, which aborts the
    /// tenants' tasks too): starts a task for each tenant with pending
    /// writes, keeps the metrics and removes expired operations.
    pub async fn run(self: Arc<Self>) {
        let mut running = TenantTasks::default();
        let mut labelled: HashSet<String> = HashSet::new();
        let mut purged = Instant::now() - PURGE_EVERY;
        let mut stopping = self.stopping.subscribe();
        while !*stopping.borrow_and_update() {
            let running = &mut running.0;
            running.retain(|_, task| !task.is_finished());
            let tenants = match self.outbox.store() {
                Ok(store) => store.tenants().await,
                Err(e) => Err(e),
            };
            match tenants {
                Ok(tenants) => {
                    record_queues(&tenants, &mut labelled);
                    for t in tenants {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            running.entry(t.tenant)
                        {
                            let drain = Arc::clone(&self);
                            let tenant = slot.key().clone();
                            slot.insert(tokio::spawn(drain.tenant(tenant)));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the outbox drain cannot read its store"),
            }
            if purged.elapsed() >= PURGE_EVERY {
                purged = Instant::now();
                self.purge().await;
            }
            tokio::select! {
                _ = self.outbox.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = stopping.changed() => {}
            }
        }
        for (_, task) in std::mem::take(&mut running.0) {
            let _ = task.await;
        }
    }

    async fn purge(&self) {
        let before = SystemTime::now() - self.outbox.retention;
        let Ok(store) = self.outbox.store() else {
            return;
        };
        loop {
            match store.purge(before, 1000).await {
                Ok(1000) => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            removed = n,
                            "removed finished operations past --operation-retention"
                        );
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove expired operations");
                    return;
                }
            }
        }
    }

    /// The callers whose writes can be sent now (a token is known).
    async fn callers(&self) -> Callers {
        if let Some(token) = (self.fallback)().await {
            self.outbox
                .tokens
                .remember(&identity::caller(&token), &token);
        }
        Callers::Only(self.outbox.tokens.callers())
    }

    /// Drains one tenant while it holds the lease and has sendable writes.
    /// Groups overlap: the next group is claimed while earlier ones are in
    /// flight (up to `in_flight` requests), so the budget's next window is
    /// already waited for when it opens. The store keeps one entity's
    /// writes in order: a claim skips writes in flight under the lease and
    /// stops at a later write to one of their entities.
    async fn tenant(self: Arc<Self>, tenant: String) {
        let Ok(store) = self.outbox.store().map(Arc::clone) else {
            return;
        };
        // Each group is sent in a task of its own (so it moves on while
        // this loop claims and records), with its lease and request count.
        let mut flying: JoinSet<Vec<Finished>> = JoinSet::new();
        let mut groups: HashMap<tokio::task::Id, (Lease, usize)> = HashMap::new();
        let mut requests = 0;
        // Whether a claim may find more now, and whether to stop claiming
        // (the store failed or the lease is gone) once the flying groups
        // are recorded.
        let mut more = true;
        let mut stop = false;
        // No claims before this, after a group none of whose writes could
        // be sent (the budget or Graph said wait).
        let mut hold: Option<Instant> = None;
        let mut stopping = self.stopping.subscribe();
        // The lease is renewed by each claim, and every RENEW_EVERY while
        // groups are in flight.
        let mut renewed = Instant::now();
        loop {
            if *stopping.borrow_and_update() {
                stop = true;
            }
            let held = hold.is_some_and(|h| h > Instant::now());
            let epoch = groups.values().next().map(|(lease, _)| lease.epoch);
            if more && !stop && !held && requests < self.in_flight {
                renewed = Instant::now();
                match self
                    .claim(&*store, &tenant, self.in_flight - requests, epoch)
                    .await
                {
                    Next::Group(lease, claimed) => {
                        let n = count_requests(&claimed);
                        requests += n;
                        let drain = Arc::clone(&self);
                        let task = flying.spawn(async move { drain.deliver(claimed).await });
                        groups.insert(task.id(), (lease, n));
                        continue;
                    }
                    Next::Empty => more = false,
                    Next::Stop => stop = true,
                }
            }
            let claiming = more && !stop;
            let hold_until = hold.filter(|h| claiming && *h > Instant::now());
            if flying.is_empty() {
                match hold_until {
                    Some(h) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(h) => {}
                            _ = stopping.changed() => {}
                        }
                        continue;
                    }
                    None if claiming => continue,
                    None => return,
                }
            }
            let next = tokio::select! {
                done = flying.join_next_with_id() => done,
                _ = tokio::time::sleep_until(hold_until.unwrap_or(renewed)), if hold_until.is_some() => continue,
                _ = tokio::time::sleep_until(renewed + RENEW_EVERY) => {
                    renewed = Instant::now();
                    if !renew(&*store, &tenant, epoch).await {
                        stop = true;
                    }
                    continue;
                }
                _ = stopping.changed(), if !stop => continue,
            };
            let (id, finished) = match next {
                Some(Ok((id, finished))) => (id, Some(finished)),
                Some(Err(e)) => (e.id(), None),
                None => continue,
            };
            let Some((lease, n)) = groups.remove(&id) else {
                continue;
            };
            requests -= n;
            // Later writes to its entities may be claimed now.
            more = true;
            let Some(finished) = finished else {
                // Its writes stay in flight: the next process reads them as
                // such.
                tracing::error!("an outbox group's task failed; its writes stay marked in flight");
                stop = true;
                continue;
            };
            if finished.iter().all(|f| f.finish == Finish::Requeue) {
                hold = Some(Instant::now() + IDLE_AFTER_REQUEUE);
            }
            if !record(&*store, &lease, finished).await {
                stop = true;
            }
            self.outbox.progress.notify_waiters();
        }
    }

    /// Renews the lease and claims the tenant's next group of at most
    /// `max_requests` requests. While groups claimed under `flying` (an
    /// epoch) are in flight, a lease of another epoch claims nothing: its
    /// claim would take their writes as left over from a dead holder.
    async fn claim(
        &self,
        store: &dyn Store,
        tenant: &str,
        max_requests: usize,
        flying: Option<u64>,
    ) -> Next {
        let lease = match store.lease(tenant, LEASE_TTL).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return Next::Stop,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the outbox drain lease");
                return Next::Stop;
            }
        };
        if flying.is_some_and(|e| e != lease.epoch) {
            return Next::Empty;
        }
        let callers = self.callers().await;
        let max_requests = max_requests.min(self.max_requests);
        match store
            .claim(&lease, &callers, max_requests, SystemTime::now())
            .await
        {
            Ok(c) if c.is_empty() => Next::Empty,
            Ok(c) => Next::Group(lease, c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim outbox writes");
                Next::Stop
            }
        }
    }

    /// Sends a claimed group; one end per write.
    async fn deliver(&self, claimed: Vec<Claimed>) -> Vec<Finished> {
        let host = self.engine.host().to_owned();
        let mut ends: Vec<Option<Finish>> = vec![None; claimed.len()];
        let mut by_caller: HashMap<&str, Vec<(usize, Plan)>> = HashMap::new();
        for (i, c) in claimed.iter().enumerate() {
            let mut errors = Vec::new();
            let planned = pb::RunStateWrite::decode(c.payload.clone())
                .ok()
                .and_then(|w| plan(w, "", &mut errors));
            let Some((plan, _)) = planned else {
                ends[i] = Some(failed(&tonic::Status::internal(
                    "the stored write cannot be read back",
                )));
                continue;
            };
            if c.was_in_flight && !self.may_resend(&plan) {
                ends[i] = Some(failed(&status::outcome_unknown(
                    "the gateway stopped while this create was in flight, and Graph does not keep client ids, so sending it again could create a duplicate",
                    &host,
                )));
                continue;
            }
            by_caller.entry(&c.caller).or_default().push((i, plan));
        }
        let deadline = Instant::now() + GROUP_DEADLINE;
        let mut sends = Vec::new();
        for (caller, plans) in by_caller {
            let Some(token) = self.outbox.tokens.get(caller) else {
                for (i, _) in plans {
                    ends[i] = Some(Finish::Requeue);
                }
                continue;
            };
            sends.push(self.send(plans, token, deadline, &claimed));
        }
        for done in futures_util::future::join_all(sends).await {
            for (i, end) in done {
                ends[i] = Some(end);
            }
        }
        claimed
            .iter()
            .zip(ends)
            .map(|(c, end)| {
                let finish = end.unwrap_or(Finish::Requeue);
                match &finish {
                    Finish::Done(Outcome::Delivered { .. }) => {
                        metrics::counter!(m::OUTBOX_DELIVERED).increment(1)
                    }
                    Finish::Done(Outcome::Failed { .. }) => {
                        metrics::counter!(m::OUTBOX_FAILED).increment(1)
                    }
                    _ => {}
                }
                Finished {
                    op: c.op,
                    index: c.index,
                    seq: c.seq,
                    finish,
                }
            })
            .collect()
    }

    /// Whether a write that was in flight at a crash may be sent again.
    fn may_resend(&self, plan: &Plan) -> bool {
        match plan {
            Plan::CreateUser(n) => self.engine.keeps_client_ids(&n.collection),
            Plan::CreateDevice(n) => self.engine.keeps_client_ids(&n.collection),
            Plan::CreateCompliance(n) => self.engine.keeps_client_ids(&n.collection),
            Plan::Update(_) | Plan::Delete(_) => true,
        }
    }

    /// Sends one caller's writes of a group with its token.
    async fn send(
        &self,
        plans: Vec<(usize, Plan)>,
        token: HeaderValue,
        deadline: Instant,
        claimed: &[Claimed],
    ) -> Vec<(usize, Finish)> {
        let mut users = Vec::new();
        let mut devices = Vec::new();
        let mut compliance = Vec::new();
        let mut changes = Vec::new();
        for (i, plan) in plans {
            match plan {
                Plan::CreateUser(n) => users.push((i, n)),
                Plan::CreateDevice(n) => devices.push((i, n)),
                Plan::CreateCompliance(n) => compliance.push((i, n)),
                Plan::Update(c) | Plan::Delete(c) => changes.push((i, c)),
            }
        }
        let (a, b, c, d) = tokio::join!(
            self.create(users, &token, deadline),
            self.create(devices, &token, deadline),
            self.create(compliance, &token, deadline),
            self.change(changes, &token, deadline, claimed),
        );
        a.into_iter().chain(b).chain(c).chain(d).collect()
    }

    async fn create<R: Resource>(
        &self,
        items: Vec<(usize, NewState<R>)>,
        token: &HeaderValue,
        deadline: Instant,
    ) -> Vec<(usize, Finish)> {
        if items.is_empty() {
            return Vec::new();
        }
        let (index, states): (Vec<usize>, Vec<NewState<R>>) = items.into_iter().unzip();
        let results = Box::pin(self.engine.create(states, Via::Batch, token, deadline)).await;
        let host = self.engine.host();
        index
            .into_iter()
            .zip(results)
            .map(|(i, r)| {
                let end = match r {
                    Ok((resource, _)) => Finish::Done(Outcome::Delivered {
                        name: resource.name().to_owned(),
                    }),
                    Err(CreateError::Graph(e)) if never_sent(&e) => Finish::Requeue,
                    Err(e) => failed(&crate::grpc::create_status(e, "request_id", R::FIELD, host)),
                };
                (i, end)
            })
            .collect()
    }

    async fn change(
        &self,
        changes: Vec<(usize, Change)>,
        token: &HeaderValue,
        deadline: Instant,
        claimed: &[Claimed],
    ) -> Vec<(usize, Finish)> {
        if changes.is_empty() {
            return Vec::new();
        }
        let before = changes.len();
        let merged = coalesce(changes);
        metrics::counter!(m::OUTBOX_COALESCED).increment((before - merged.len()) as u64);
        let requests = merged
            .iter()
            .map(|m| {
                let body =
                    m.change.body.as_ref().map(|b| {
                        Bytes::from(serde_json::to_vec(b).unwrap_or_else(|_| b"{}".to_vec()))
                    });
                (m.change.path.clone(), body)
            })
            .collect();
        let call = Call {
            authorization: token,
            deadline,
        };
        let results = self.engine.change_all(requests, Via::Batch, &call).await;
        let host = self.engine.host();
        let mut out = Vec::new();
        for (m, result) in merged.into_iter().zip(results) {
            let was_in_flight = m.writes.iter().any(|&i| claimed[i].was_in_flight);
            let end = match result {
                Ok(_) => Finish::Done(Outcome::Delivered {
                    name: m.change.name.clone(),
                }),
                Err(GraphError::Status(e))
                    if e.status == StatusCode::NOT_FOUND
                        && m.change.body.is_none()
                        && (m.change.allow_missing || was_in_flight) =>
                {
                    // Gone, as asked (perhaps by this delete before a crash).
                    Finish::Done(Outcome::Delivered {
                        name: m.change.name.clone(),
                    })
                }
                Err(e) if never_sent(&e) => Finish::Requeue,
                Err(e) => failed(&status::from_graph(e, host)),
            };
            out.extend(m.writes.into_iter().map(|i| (i, end.clone())));
        }
        out
    }
}

/// What a claim found.
enum Next {
    Group(Lease, Vec<Claimed>),
    /// Nothing to send now (perhaps only later writes to entities in flight).
    Empty,
    /// The lease is gone or the store failed: claim no more.
    Stop,
}

/// Requests a claimed group sends at most: one per entity (a group holds
/// two writes to one entity only when they are updates, which coalesce).
fn count_requests(claimed: &[Claimed]) -> usize {
    claimed
        .iter()
        .map(|c| c.entity.as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// Records a group's ends, retrying a failing store a few times; false when
/// they could not be recorded (they stay in flight: the next process reads
/// them as such).
async fn record(store: &dyn Store, lease: &Lease, finished: Vec<Finished>) -> bool {
    let mut tries = 0;
    loop {
        match store
            .finish(lease, finished.clone(), SystemTime::now())
            .await
        {
            Ok(()) => return true,
            Err(e) if tries < 5 && !matches!(e, StoreError::LeaseLost) => {
                tries += 1;
                tracing::warn!(error = %e, "cannot record outbox outcomes; retrying");
                tokio::time::sleep(Duration::from_millis(200 << tries)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox outcomes lost; their writes stay marked in flight");
                return false;
            }
        }
    }
}

/// Errors of a write that was certainly not applied and may be sent later
/// (never sent, or refused by Graph's throttling): it goes back to the queue.
/// Renews the tenant's lease while groups claimed under `epoch` are in
/// flight; false once it passed to another holder (their outcomes will be
/// refused) or cannot be renewed.
async fn renew(store: &dyn Store, tenant: &str, epoch: Option<u64>) -> bool {
    match store.lease(tenant, LEASE_TTL).await {
        Ok(Some(lease)) if epoch.is_none_or(|e| e == lease.epoch) => true,
        Ok(_) => {
            tracing::warn!("the outbox drain lease passed to another holder");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot renew the outbox drain lease");
            false
        }
    }
}

fn never_sent(e: &GraphError) -> bool {
    match e {
        GraphError::Unsent | GraphError::WriteBudget { .. } => true,
        GraphError::Status(s) => matches!(
            s.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ),
        _ => false,
    }
}

fn failed(s: &tonic::Status) -> Finish {
    let status = crate::grpc::rpc_status(s);
    Finish::Done(Outcome::Failed {
        status: Bytes::from(status.encode_to_vec()),
    })
}

/// Sets the queue gauges: the busiest tenants by name, the rest as `other`,
/// and zero for tenants named before that are gone.
fn record_queues(tenants: &[TenantQueue], labelled: &mut HashSet<String>) {
    let mut sorted: Vec<&TenantQueue> = tenants.iter().collect();
    sorted.sort_by_key(|t| std::cmp::Reverse(t.pending_writes));
    let now = SystemTime::now();
    let age = |t: &TenantQueue| {
        t.oldest
            .and_then(|o| now.duration_since(o).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let mut named = HashSet::new();
    let (mut other_pending, mut other_age) = (0u64, 0f64);
    for (i, t) in sorted.iter().enumerate() {
        if i < METRIC_TENANTS {
            let label = t.tenant.clone();
            metrics::gauge!(m::OUTBOX_PENDING, "tenant" => label.clone())
                .set(t.pending_writes as f64);
            metrics::gauge!(m::OUTBOX_OLDEST, "tenant" => label.clone()).set(age(t));
            named.insert(label);
        } else {
            other_pending += t.pending_writes;
            other_age = other_age.max(age(t));
        }
    }
    metrics::gauge!(m::OUTBOX_PENDING, "tenant" => "other").set(other_pending as f64);
    metrics::gauge!(m::OUTBOX_OLDEST, "tenant" => "other").set(other_age);
    for gone in labelled.difference(&named) {
        metrics::gauge!(m::OUTBOX_PENDING, "tenant" => gone.clone()).set(0.0);
        metrics::gauge!(m::OUTBOX_OLDEST, "tenant" => gone.clone()).set(0.0);
    }
    *labelled = named;
}
