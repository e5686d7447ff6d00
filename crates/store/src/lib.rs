//! Storage for Cairn: the [`Store`] trait every backend implements, the rows it keeps, and the
//! embedded SQLite and the PostgreSQL backends.
//!
//! `Store` is the sum of role traits, so code can depend on the part it uses: [`Journal`] (runs,
//! their journals, leases and claims), [`Inbox`] (operator requests), [`EffectLog`] (results of
//! side effects), [`Registry`] (workflow definitions), [`Access`] (tokens and audit) and
//! [`Retention`] (gc). Calling a method on a concrete store (`AnyStore`, `SqliteStore`) needs
//! its role trait in scope; code generic over `S: Store` needs only `Store`.
//!
//! **Invariant: a run's journal events and its projection rows (run, steps, logs, payloads) are
//! written in one transaction, and only if the run's journal is still where the writer last saw
//! it and the writer still owns the run.** That check (`last_seq` + `owner`) is what lets many
//! processes share one database without two deciders overwriting each other.

mod any;
mod export;
mod observe;
pub mod postgres;
mod rows;
mod spend;
pub mod sqlite;
mod tasks;

pub use export::{EXPORT_FORMAT, export_document};

pub use any::AnyStore;
pub use postgres::PgStore;
pub use rows::{
    ActiveStep, ActiveWork, AuditRow, CallRow, FeedItem, IdempotencyKey, InboxRow, LogLine, Notify, RequestOutcome,
    RequestRow, RequestState, RunRow, RunWrite, StepRow, StoredEvent, TokenRow, WorkerRow, WorkflowRow,
};
pub use spend::{CallCost, CostBy, CostLine, Limit, Overspend, Reservation, Spend};
pub use sqlite::{Durability, SqliteStore};
pub use tasks::{NewTask, TaskAnswer, TaskClaim, TaskOutcome, TaskRow, TaskState};

/// Whether opening a database may create Cairn's schema in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Commands that write: create the schema (or migrate it) as needed.
    Yes,
    /// Commands that only read: refuse a database without Cairn's schema, changing nothing.
    /// An older schema is still migrated, as any start of a newer binary does.
    No,
}

use cairn_core::{Envelope, RunId};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// The finished run states as an SQL list (`status NOT IN {TERMINAL}`): runs in them are never
/// claimed, leased or woken.
pub(crate) const TERMINAL: &str = "('COMPLETED','COMPENSATED','FAILED','CANCELLED')";
/// The ready, retry-waiting and running steps of executing runs, least recently written runs
/// first, at most `limit` (a bind parameter: `?1` or `$1`), with the start of a running step's
/// attempt in flight (see [`Journal::active_work`]).
pub(crate) fn active_steps_sql(limit: &str) -> String {
    format!(
        "SELECT s.run_id, s.step_id, s.status, s.not_before, r.updated_at, r.definition_hash, \
         CASE WHEN s.status='RUNNING' THEN (SELECT MAX(e.at) FROM events e WHERE e.run_id=s.run_id \
         AND e.step_id=s.step_id AND e.kind='attempt_started') END \
         FROM runs r JOIN steps s ON s.run_id=r.id \
         WHERE r.status IN ('EXECUTING','COMPENSATING') AND s.status IN ('READY','RETRY_WAIT','RUNNING') \
         ORDER BY r.updated_at LIMIT {limit}"
    )
}

/// The other run states (`status IN {UNFINISHED}`, which an index on status can answer).
pub(crate) const UNFINISHED: &str = "('PENDING','PLANNING','EXECUTING','WAITING','PAUSED','COMPENSATING')";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is not a Cairn database ({detail}); point --db at a new file or at a database cairn created")]
    NotOurs { path: String, detail: String },
    #[error("{path} is locked by another process (waited {waited_ms} ms); stop the other writer or use another --db")]
    Locked { path: String, waited_ms: u64 },
    #[error("{path} was written by a newer cairn (schema {found}, this binary knows up to {known}); upgrade cairn")]
    NewerSchema { path: String, found: i64, known: i64 },
    #[error("cannot open {path}: {detail}")]
    Open { path: String, detail: String },
    /// A command that only reads was pointed at a database Cairn never wrote to.
    #[error("no Cairn schema in {path}; commands that write (cairn run, serve, worker) create it")]
    NoSchema { path: String },
    #[error("run {run_id} was changed by someone else (expected journal position {expected}); reload it")]
    Conflict { run_id: String, expected: u64 },
    /// A write that must answer every request waiting for its run (`RunWrite::answers_every_request`,
    /// a run's last write) found one it does not answer; nothing of it was written.
    #[error("run {run_id} has operator requests waiting that this write does not answer; answer them and write again")]
    RequestsWaiting { run_id: String },
    #[error("no run with id {0}; `cairn runs list` shows the runs in this database")]
    NotFound(String),
    #[error("idempotency key '{key}' was already used for run {run_id}")]
    IdempotencyKey { key: String, run_id: String, same_request: bool },
    #[error("workflow '{name}' version {version} is already registered with a different definition; raise `version`")]
    VersionExists { name: String, version: u32 },
    #[error("no workflow named '{0}'; `GET /v1/workflows` lists the registered ones")]
    WorkflowNotFound(String),
    #[error("a live token is already named '{name}' ({id}); pick another name, or revoke {id} first")]
    TokenNameTaken { name: String, id: String },
    #[error("'{name}' names {n} live tokens ({list}); revoke one by its id", n = ids.len(), list = ids.join(", "))]
    AmbiguousTokenName { name: String, ids: Vec<String> },
    #[error("no live token with id or name '{0}'; `cairn tokens list` (or `GET /v1/tokens`) shows them")]
    TokenNotFound(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// The disk holding the database is full: nothing was written. Writes succeed again once
    /// space is freed.
    #[error("the disk holding the database is full ({0}); nothing was written, and writes resume once space is freed")]
    Full(String),
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
    #[error("the database is unreachable ({0})")]
    Unavailable(String),
    /// The database refused a write because of another one at the same moment (a deadlock, a
    /// serialization failure); the same write succeeds when tried again.
    #[error("the database refused the write for now ({0}); try it again")]
    Contention(String),
    #[error("the store is shut down")]
    Closed,
}

impl Error {
    /// Worth trying again later (lock contention, a lost race), as opposed to a hard failure.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Locked { .. }
                | Error::Conflict { .. }
                | Error::Unavailable(_)
                | Error::Full(_)
                | Error::Contention(_)
        )
    }

    /// The store cannot take writes right now (disk full, server away, file locked), but will
    /// once that passes: the same write is worth trying again unchanged.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Locked { .. } | Error::Unavailable(_) | Error::Full(_) | Error::Contention(_))
    }

    /// A copy of a store-wide write failure (a full disk, an unreachable server), to report.
    pub(crate) fn write_failure_copy(&self) -> Option<Error> {
        match self {
            Error::Full(m) => Some(Error::Full(m.clone())),
            Error::Unavailable(m) => Some(Error::Unavailable(m.clone())),
            _ => None,
        }
    }
}

/// When writes last failed for want of the store (a full disk, a server away), for readiness.
/// Some writes may still succeed meanwhile (an update that fits in space already allocated), so
/// writes count as failing until none has failed for [`WriteHealth::QUIET`].
#[derive(Clone, Default)]
pub(crate) struct WriteHealth(Arc<std::sync::Mutex<Option<(std::time::Instant, Error)>>>);

impl WriteHealth {
    const QUIET: std::time::Duration = std::time::Duration::from_secs(5);

    /// Notes a write's outcome: a failure for want of the store is remembered.
    pub(crate) fn note(&self, outcome: Option<&Error>) {
        if let Some(failure) = outcome.and_then(Error::write_failure_copy)
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some((std::time::Instant::now(), failure));
        }
    }

    /// The last failure, if one happened within the quiet period.
    pub(crate) fn failing(&self) -> Option<Error> {
        let last = self.0.lock().ok()?;
        let (at, e) = last.as_ref()?;
        (at.elapsed() < Self::QUIET).then(|| e.write_failure_copy()).flatten()
    }
}

impl From<rusqlite::Error> for Error {
    /// A full disk and I/O failures are conditions to wait out, not damage or bugs.
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Error::Full(e.to_string()),
            Some(rusqlite::ErrorCode::SystemIoFailure) => Error::Unavailable(format!("I/O error: {e}")),
            _ => Error::Sqlite(e),
        }
    }
}

/// A run as loaded for resuming or replaying.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub run: RunRow,
    pub events: Vec<Envelope>,
    pub payloads: Vec<(String, Arc<Value>)>,
}

/// Filters for listing runs; newest first.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub status: Option<String>,
    pub workflow: Option<String>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    /// Continue after this (created_at, id) — the last row of the previous page.
    pub after: Option<(i64, String)>,
    pub limit: usize,
}

/// What `gc` removed (or would remove, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GcReport {
    pub runs: u64,
    pub events: u64,
    pub payloads: u64,
}

/// A request to take over runs that nobody is driving.
pub struct Claim<'a> {
    pub owner: &'a str,
    pub now_ms: i64,
    pub lease_until_ms: i64,
    /// Only this run (its lease must still be free to take).
    pub only: Option<&'a RunId>,
    /// True for an owner that is known to be gone (e.g. a dead process on this host), so its
    /// runs can be taken before the lease expires.
    pub owner_is_dead: &'a (dyn Fn(&str) -> bool + Sync),
    /// Take at most this many (0: no limit).
    pub limit: usize,
}

/// What the engine needs from a database: every role below. Implemented by SQLite (the embedded
/// default) and PostgreSQL; the conformance tests run against each. Code that needs only part of
/// it can ask for just that role (e.g. `impl EffectLog`), and code generic over `S: Store` can
/// call every method without importing the role traits.
pub trait Store: Journal + Inbox + EffectLog + Registry + Access + Retention + Tasks {}

impl<T: Journal + Inbox + EffectLog + Registry + Access + Retention + Tasks> Store for T {}

/// Runs' journals and their projections, and who drives which run (leases, claims, workers).
pub trait Journal: Send + Sync + 'static {
    // --- writing and reading runs ---
    /// Appends events and updates projections atomically; fails with `Conflict` if the run moved
    /// on or changed owner since `write.expected_seq`. The write is shared so that a writer can
    /// send the very same write again after a transient failure (`Error::is_transient`).
    fn commit(&self, write: impl Into<Arc<RunWrite>> + Send) -> impl Future<Output = Result<(), Error>> + Send;
    /// Why writes are failing right now (`Error::Full`, `Error::Unavailable`), or `None` while
    /// they succeed. Readiness reports this: reads may work while writes do not.
    fn write_failure(&self) -> Option<Error>;
    fn load_run(&self, id: &RunId) -> impl Future<Output = Result<LoadedRun, Error>> + Send;
    fn list_runs(&self, query: RunQuery) -> impl Future<Output = Result<Vec<RunRow>, Error>> + Send;
    fn get_run(&self, id: &RunId) -> impl Future<Output = Result<RunRow, Error>> + Send;
    fn steps(&self, id: &RunId) -> impl Future<Output = Result<Vec<StepRow>, Error>> + Send;
    fn events(&self, id: &RunId) -> impl Future<Output = Result<Vec<Envelope>, Error>> + Send;
    fn logs(&self, id: &RunId, step: Option<&str>) -> impl Future<Output = Result<Vec<LogLine>, Error>> + Send;
    fn payload(&self, hash: &str) -> impl Future<Output = Result<Option<Value>, Error>> + Send;
    fn events_after(&self, id: &RunId, after_seq: u64) -> impl Future<Output = Result<Vec<Envelope>, Error>> + Send;
    /// All runs' events after a global position, oldest first.
    fn feed(&self, after_gid: i64, limit: usize) -> impl Future<Output = Result<Vec<FeedItem>, Error>> + Send;
    fn last_gid(&self) -> impl Future<Output = Result<i64, Error>> + Send;
    fn idempotent_run(&self, key: &str) -> impl Future<Output = Result<Option<(String, String)>, Error>> + Send;

    // --- the database itself ---
    fn describe(&self) -> String;
    /// The database answers and its schema is current.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Milliseconds to add to this host's clock to read the database's. Leases and timers are
    /// compared across hosts, so every process measures time by the database's clock.
    fn clock_offset_ms(&self) -> impl Future<Output = Result<i64, Error>> + Send;
    /// Fires when work may have become ready in another process (a run created or handed back,
    /// a request queued), so idle workers need not poll; `None` where the backend cannot tell.
    fn wake_signal(&self) -> Option<Arc<tokio::sync::Notify>>;

    // --- leases and work distribution ---
    /// Takes over unfinished runs whose lease expired or whose owner is gone; returns their ids.
    fn claim_runs(&self, claim: Claim<'_>) -> impl Future<Output = Result<Vec<RunId>, Error>> + Send;
    /// Extends the lease on the given runs, those of them this owner holds and that are
    /// unfinished. Only runs a process actually drives are renewed, so a run it holds by mistake
    /// (a take-over cut short) is freed when its lease runs out.
    fn heartbeat(
        &self,
        owner: &str,
        runs: &[RunId],
        lease_until_ms: i64,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Gives up this owner's leases at once (clean shutdown), so another process can resume;
    /// the runs are due for a worker at `wake_at_ms`.
    fn release(&self, owner: &str, wake_at_ms: i64) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Takes up to `limit` runs that need a worker now (`wake_at` due) and that nobody holds.
    fn claim_ready(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RunId>, Error>> + Send;
    /// Lets go of one run, so any worker may take it at `wake_at` — or at once if requests wait
    /// in its inbox.
    fn release_run(
        &self,
        owner: &str,
        id: &RunId,
        wake_at_ms: Option<i64>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Takes a FAILED run nobody holds for a retry in place, if it is still at `expected_seq`
    /// (so two people retrying at once cannot both reopen it); false otherwise.
    fn reopen_run(
        &self,
        id: &RunId,
        owner: &str,
        lease_until_ms: i64,
        expected_seq: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    // --- processes that work runs for anyone ---
    /// Records (or refreshes) a serving/working process, so clients can tell whether anyone
    /// will pick up a run they leave behind.
    fn worker_seen(&self, worker: WorkerRow) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes a process that stops working (clean shutdown).
    fn worker_gone(&self, owner: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Processes seen at or after `seen_after_ms`, most recently seen first.
    fn workers(&self, seen_after_ms: i64) -> impl Future<Output = Result<Vec<WorkerRow>, Error>> + Send;
    /// What is in flight now (unfinished runs by state, leases expired before `now_ms`, and at
    /// most `limit` ready, retry-waiting or running steps of executing runs), for the stuck
    /// signals `/metrics` reads at each scrape.
    fn active_work(&self, now_ms: i64, limit: usize) -> impl Future<Output = Result<ActiveWork, Error>> + Send;
}

/// Operator requests queued for a run, applied in the order accepted, and their answers.
pub trait Inbox: Send + Sync + 'static {
    /// Accepts an operator request for a run: it joins the run's inbox behind the requests
    /// accepted before it (the returned id orders them) and the run becomes due at `now_ms`.
    /// `None` if the run is finished or unknown.
    fn push_inbox(
        &self,
        id: &RunId,
        body: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<i64>, Error>> + Send;
    /// The requests of one run still waiting to be applied, in the order they were accepted.
    fn pending_inbox(&self, id: &RunId) -> impl Future<Output = Result<Vec<InboxRow>, Error>> + Send;
    /// What became of a request (`None`: no such request).
    fn inbox_outcome(&self, request: i64) -> impl Future<Output = Result<Option<RequestOutcome>, Error>> + Send;
    /// Answers a request that is still pending outside a run write, only while its run is
    /// finished (it finished before the request's turn came); false if someone answered it first
    /// or the run is not finished (a retry reopened it: its driver answers).
    fn answer_inbox(&self, answer: RequestOutcome) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Every request a run was sent, in the order they were accepted, with their answers.
    fn run_requests(&self, id: &RunId) -> impl Future<Output = Result<Vec<RequestRow>, Error>> + Send;
    /// Runs this owner holds that have requests waiting.
    fn runs_with_inbox(&self, owner: &str) -> impl Future<Output = Result<Vec<RunId>, Error>> + Send;
}

/// Results of side-effecting calls, kept so a retried attempt does not repeat them.
pub trait EffectLog: Send + Sync + 'static {
    /// Keeps the result of a side-effecting call under its key (`run/step/call`) in its own
    /// commit, before the step's completion is journaled; the first result recorded wins.
    fn record_effect(
        &self,
        run_id: &RunId,
        key: &str,
        result: cairn_core::payload::Payload,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The logged result of a call, if an earlier attempt made it.
    fn effect(&self, key: &str) -> impl Future<Output = Result<Option<Value>, Error>> + Send;
    /// Records a call made inside an attempt, in its own commit, before the next call starts.
    /// `result` is the payload of a call that succeeded (`call.outcome == "ok"`). A call already
    /// recorded as `ok` at the same position is kept (the first success wins) and `Ok(false)`
    /// says so: the caller must use the recorded call, not its own; a `failed` one is replaced.
    fn record_call(
        &self,
        run_id: &RunId,
        call: CallRow,
        result: Option<cairn_core::payload::Payload>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// The calls recorded for a run (one step's, when given), in step and position order.
    fn calls(&self, run_id: &RunId, step: Option<&str>) -> impl Future<Output = Result<Vec<CallRow>, Error>> + Send;
    /// Reserves a budgeted call's worst case (`call.reserved`, `outcome = "reserved"`) before it
    /// is sent, if every limit still holds it on top of what its scope already holds (settled
    /// calls at their cost, other reservations at theirs; a reservation at the same position,
    /// left by an attempt that crashed, is replaced, not added). Reservations of one run are
    /// checked one at a time. `Some` says which limit refused, and nothing is written.
    fn reserve_call(
        &self,
        run_id: &RunId,
        call: CallRow,
        limits: Vec<Limit>,
    ) -> impl Future<Output = Result<Option<Overspend>, Error>> + Send;
    /// What each of these runs' settled model calls spent (runs without any are left out).
    fn spend(&self, runs: &[RunId]) -> impl Future<Output = Result<BTreeMap<String, Spend>, Error>> + Send;
    /// What model calls made since `since_ms` spent, grouped.
    fn cost_report(&self, since_ms: i64, by: CostBy) -> impl Future<Output = Result<Vec<CostLine>, Error>> + Send;
    /// A cached model answer under `key` that has not expired at `now_ms`.
    fn cached_answer(&self, key: &str, now_ms: i64) -> impl Future<Output = Result<Option<Value>, Error>> + Send;
    /// Keeps a model answer under `key` until `expires_at_ms` (replacing an older one).
    fn cache_answer(
        &self,
        key: &str,
        answer: &Value,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Registered workflow definitions, by name and version.
pub trait Registry: Send + Sync + 'static {
    /// Registers a definition version; Ok(false) if that exact version is already registered.
    fn put_workflow(
        &self,
        name: &str,
        version: u32,
        definition: cairn_core::payload::Payload,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    fn workflows(&self) -> impl Future<Output = Result<Vec<WorkflowRow>, Error>> + Send;
    /// The given version, or the newest.
    fn workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> impl Future<Output = Result<(WorkflowRow, Value), Error>> + Send;
}

/// API tokens and the audit trail of who did what.
pub trait Access: Send + Sync + 'static {
    /// Stores a token, refused with [`Error::TokenNameTaken`] while a live token has its name.
    /// The check and the insert are one atomic write (no two processes can both pass the check).
    fn create_token(&self, token: TokenRow) -> impl Future<Output = Result<(), Error>> + Send;
    fn token_by_hash(&self, hash: &str) -> impl Future<Output = Result<Option<TokenRow>, Error>> + Send;
    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRow>, Error>> + Send;
    /// Revokes the live token with this id, else the one live token with this name, and returns
    /// it. A name shared by several live tokens (databases from before names were unique) is
    /// refused with [`Error::AmbiguousTokenName`] listing their ids; nothing live matching is
    /// [`Error::TokenNotFound`].
    fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> impl Future<Output = Result<TokenRow, Error>> + Send;
    fn audit(&self, row: AuditRow) -> impl Future<Output = Result<(), Error>> + Send;
    fn audit_log(&self, limit: usize) -> impl Future<Output = Result<Vec<AuditRow>, Error>> + Send;
}

/// Tasks for external workers (see `tasks.rs`): queued per attempt, claimed by one worker at a
/// time under a lease, settled once with the attempt's token.
pub trait Tasks: Send + Sync + 'static {
    /// Queues a task; queuing the same token again changes nothing. Unsettled tasks of earlier
    /// attempts of the same step are cancelled (superseded): only the newest attempt may settle.
    fn enqueue_task(&self, task: NewTask) -> impl Future<Output = Result<(), Error>> + Send;
    /// Claims up to `limit` ready tasks of the claim's queues (and kinds), oldest first, for its
    /// worker until `lease_until_ms`. A task is claimed by one worker only, however many ask
    /// at once.
    fn claim_tasks(&self, claim: TaskClaim<'_>) -> impl Future<Output = Result<Vec<TaskRow>, Error>> + Send;
    /// Extends the lease of a task `worker` holds.
    fn heartbeat_task(
        &self,
        token: &str,
        worker: &str,
        lease_until_ms: i64,
    ) -> impl Future<Output = Result<TaskAnswer, Error>> + Send;
    /// Settles a task `worker` holds (its lease not yet expired at `now_ms`).
    fn finish_task(
        &self,
        token: &str,
        worker: &str,
        outcome: TaskOutcome,
        now_ms: i64,
    ) -> impl Future<Output = Result<TaskAnswer, Error>> + Send;
    /// Marks a claimed task whose lease expired before `now_ms` as lost; true if it was.
    fn expire_task(&self, token: &str, now_ms: i64) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Cancels a task that is not settled; true if it was.
    fn cancel_task(&self, token: &str) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Cancels a task as attempt `attempt` holds it: not once a newer attempt adopted it.
    fn withdraw_task(&self, token: &str, attempt: u32) -> impl Future<Output = Result<bool, Error>> + Send;
    /// A newer attempt of the step takes over an unfinished (or done, unread) task: it is named
    /// by that attempt from now on. False when it was settled otherwise or taken already.
    fn adopt_task(&self, token: &str, attempt: u32) -> impl Future<Output = Result<bool, Error>> + Send;
    /// The task with this token.
    fn task(&self, token: &str) -> impl Future<Output = Result<Option<TaskRow>, Error>> + Send;
    /// The task of the step's latest attempt that has one (to adopt a result a worker delivered
    /// while no engine waited for it).
    fn latest_task(&self, run_id: &str, step: &str) -> impl Future<Output = Result<Option<TaskRow>, Error>> + Send;
}

/// Deleting what is past its retention, across every role's tables.
pub trait Retention: Send + Sync + 'static {
    /// Deletes finished runs past their retention (per workflow, else `default_retention_ms`)
    /// with their journal, logs and payloads no longer referenced. Unfinished runs are never
    /// collected.
    fn gc(
        &self,
        now_ms: i64,
        default_retention_ms: u64,
        dry_run: bool,
    ) -> impl Future<Output = Result<GcReport, Error>> + Send;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sql_terminal_list_is_the_core_terminal_set() {
        let core: Vec<String> = cairn_core::RunStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(super::TERMINAL, format!("({})", core.join(",")));
        let rest: Vec<String> = cairn_core::RunStatus::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(super::UNFINISHED, format!("({})", rest.join(",")));
    }
}
