//! One type for "whichever database the user pointed at": the binary picks SQLite or PostgreSQL
//! at run time, and everything above the store stays generic over [`Store`].

use crate::{
    Access, AuditRow, CallRow, Claim, EffectLog, Error, FeedItem, GcReport, Inbox, InboxRow, Journal, LoadedRun,
    LogLine, PgStore, Registry, RequestOutcome, RequestRow, Retention, RunQuery, RunRow, RunWrite, SqliteStore,
    StepRow, TokenRow, WorkerRow, WorkflowRow,
};
use cairn_core::{Envelope, RunId};
use serde_json::Value;

pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// The same call on whichever backend this is.
macro_rules! each {
    ($store:ident, $s:ident => $call:expr) => {
        match $store {
            AnyStore::Sqlite($s) => $call,
            AnyStore::Postgres($s) => $call,
        }
    };
}

impl Journal for AnyStore {
    async fn clock_offset_ms(&self) -> Result<i64, Error> {
        each!(self, s => s.clock_offset_ms().await)
    }

    fn wake_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        each!(self, s => s.wake_signal())
    }

    async fn commit(&self, write: impl Into<std::sync::Arc<RunWrite>> + Send) -> Result<(), Error> {
        each!(self, s => s.commit(write).await)
    }

    fn write_failure(&self) -> Option<Error> {
        each!(self, s => Journal::write_failure(s))
    }

    async fn load_run(&self, id: &RunId) -> Result<LoadedRun, Error> {
        each!(self, s => s.load_run(id).await)
    }

    async fn claim_runs(&self, claim: Claim<'_>) -> Result<Vec<RunId>, Error> {
        each!(self, s => s.claim_runs(claim).await)
    }

    async fn heartbeat(&self, owner: &str, runs: &[RunId], lease_until_ms: i64) -> Result<u64, Error> {
        each!(self, s => s.heartbeat(owner, runs, lease_until_ms).await)
    }

    async fn release(&self, owner: &str, wake_at_ms: i64) -> Result<u64, Error> {
        each!(self, s => s.release(owner, wake_at_ms).await)
    }

    async fn list_runs(&self, query: RunQuery) -> Result<Vec<RunRow>, Error> {
        each!(self, s => s.list_runs(query).await)
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRow, Error> {
        each!(self, s => s.get_run(id).await)
    }

    async fn steps(&self, id: &RunId) -> Result<Vec<StepRow>, Error> {
        each!(self, s => s.steps(id).await)
    }

    async fn events(&self, id: &RunId) -> Result<Vec<Envelope>, Error> {
        each!(self, s => s.events(id).await)
    }

    async fn logs(&self, id: &RunId, step: Option<&str>) -> Result<Vec<LogLine>, Error> {
        each!(self, s => s.logs(id, step).await)
    }

    async fn payload(&self, hash: &str) -> Result<Option<Value>, Error> {
        each!(self, s => s.payload(hash).await)
    }

    fn describe(&self) -> String {
        each!(self, s => s.describe())
    }

    async fn ping(&self) -> Result<(), Error> {
        each!(self, s => s.ping().await)
    }

    async fn claim_ready(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<RunId>, Error> {
        each!(self, s => s.claim_ready(owner, now_ms, lease_until_ms, limit).await)
    }

    async fn release_run(&self, owner: &str, id: &RunId, wake_at_ms: Option<i64>) -> Result<bool, Error> {
        each!(self, s => s.release_run(owner, id, wake_at_ms).await)
    }

    async fn reopen_run(&self, id: &RunId, owner: &str, lease_until_ms: i64, expected_seq: u64) -> Result<bool, Error> {
        each!(self, s => s.reopen_run(id, owner, lease_until_ms, expected_seq).await)
    }

    async fn worker_seen(&self, worker: WorkerRow) -> Result<(), Error> {
        each!(self, s => s.worker_seen(worker).await)
    }

    async fn worker_gone(&self, owner: &str) -> Result<(), Error> {
        each!(self, s => s.worker_gone(owner).await)
    }

    async fn workers(&self, seen_after_ms: i64) -> Result<Vec<WorkerRow>, Error> {
        each!(self, s => s.workers(seen_after_ms).await)
    }

    async fn active_work(&self, now_ms: i64, limit: usize) -> Result<crate::ActiveWork, Error> {
        each!(self, s => s.active_work(now_ms, limit).await)
    }

    async fn events_after(&self, id: &RunId, after_seq: u64) -> Result<Vec<Envelope>, Error> {
        each!(self, s => s.events_after(id, after_seq).await)
    }

    async fn feed(&self, after_gid: i64, limit: usize) -> Result<Vec<FeedItem>, Error> {
        each!(self, s => s.feed(after_gid, limit).await)
    }

    async fn last_gid(&self) -> Result<i64, Error> {
        each!(self, s => s.last_gid().await)
    }

    async fn idempotent_run(&self, key: &str) -> Result<Option<(String, String)>, Error> {
        each!(self, s => s.idempotent_run(key).await)
    }
}

impl Inbox for AnyStore {
    async fn push_inbox(&self, id: &RunId, body: String, now_ms: i64) -> Result<Option<i64>, Error> {
        each!(self, s => s.push_inbox(id, body, now_ms).await)
    }

    async fn pending_inbox(&self, id: &RunId) -> Result<Vec<InboxRow>, Error> {
        each!(self, s => s.pending_inbox(id).await)
    }

    async fn inbox_outcome(&self, request: i64) -> Result<Option<RequestOutcome>, Error> {
        each!(self, s => s.inbox_outcome(request).await)
    }

    async fn answer_inbox(&self, answer: RequestOutcome) -> Result<bool, Error> {
        each!(self, s => s.answer_inbox(answer).await)
    }

    async fn run_requests(&self, id: &RunId) -> Result<Vec<RequestRow>, Error> {
        each!(self, s => s.run_requests(id).await)
    }

    async fn runs_with_inbox(&self, owner: &str) -> Result<Vec<RunId>, Error> {
        each!(self, s => s.runs_with_inbox(owner).await)
    }
}

impl EffectLog for AnyStore {
    async fn record_effect(
        &self,
        run_id: &RunId,
        key: &str,
        result: cairn_core::payload::Payload,
        now_ms: i64,
    ) -> Result<(), Error> {
        each!(self, s => s.record_effect(run_id, key, result, now_ms).await)
    }

    async fn effect(&self, key: &str) -> Result<Option<Value>, Error> {
        each!(self, s => s.effect(key).await)
    }

    async fn record_call(
        &self,
        run_id: &RunId,
        call: CallRow,
        result: Option<cairn_core::payload::Payload>,
    ) -> Result<bool, Error> {
        each!(self, s => s.record_call(run_id, call, result).await)
    }

    async fn calls(&self, run_id: &RunId, step: Option<&str>) -> Result<Vec<CallRow>, Error> {
        each!(self, s => s.calls(run_id, step).await)
    }

    async fn reserve_call(
        &self,
        run_id: &RunId,
        call: CallRow,
        limits: Vec<crate::Limit>,
    ) -> Result<Option<crate::Overspend>, Error> {
        each!(self, s => s.reserve_call(run_id, call, limits).await)
    }

    async fn spend(&self, runs: &[RunId]) -> Result<std::collections::BTreeMap<String, crate::Spend>, Error> {
        each!(self, s => s.spend(runs).await)
    }

    async fn cost_report(&self, since_ms: i64, by: crate::CostBy) -> Result<Vec<crate::CostLine>, Error> {
        each!(self, s => s.cost_report(since_ms, by).await)
    }

    async fn cached_answer(&self, key: &str, now_ms: i64) -> Result<Option<Value>, Error> {
        each!(self, s => s.cached_answer(key, now_ms).await)
    }

    async fn cache_answer(&self, key: &str, answer: &Value, now_ms: i64, expires_at_ms: i64) -> Result<(), Error> {
        each!(self, s => s.cache_answer(key, answer, now_ms, expires_at_ms).await)
    }
}

impl Registry for AnyStore {
    async fn put_workflow(
        &self,
        name: &str,
        version: u32,
        definition: cairn_core::payload::Payload,
        now_ms: i64,
    ) -> Result<bool, Error> {
        each!(self, s => s.put_workflow(name, version, definition, now_ms).await)
    }

    async fn workflows(&self) -> Result<Vec<WorkflowRow>, Error> {
        each!(self, s => s.workflows().await)
    }

    async fn workflow(&self, name: &str, version: Option<u32>) -> Result<(WorkflowRow, Value), Error> {
        each!(self, s => s.workflow(name, version).await)
    }
}

impl Access for AnyStore {
    async fn create_token(&self, token: TokenRow) -> Result<(), Error> {
        each!(self, s => s.create_token(token).await)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, Error> {
        each!(self, s => s.token_by_hash(hash).await)
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, Error> {
        each!(self, s => s.tokens().await)
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<TokenRow, Error> {
        each!(self, s => s.revoke_token(id, now_ms).await)
    }

    async fn audit(&self, row: AuditRow) -> Result<(), Error> {
        each!(self, s => s.audit(row).await)
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, Error> {
        each!(self, s => s.audit_log(limit).await)
    }
}

impl crate::Tasks for AnyStore {
    async fn enqueue_task(&self, task: crate::NewTask) -> Result<(), Error> {
        each!(self, s => s.enqueue_task(task).await)
    }
    async fn claim_tasks(&self, claim: crate::TaskClaim<'_>) -> Result<Vec<crate::TaskRow>, Error> {
        each!(self, s => s.claim_tasks(claim).await)
    }
    async fn heartbeat_task(&self, token: &str, worker: &str, lease_until_ms: i64) -> Result<crate::TaskAnswer, Error> {
        each!(self, s => s.heartbeat_task(token, worker, lease_until_ms).await)
    }
    async fn finish_task(
        &self,
        token: &str,
        worker: &str,
        outcome: crate::TaskOutcome,
        now_ms: i64,
    ) -> Result<crate::TaskAnswer, Error> {
        each!(self, s => s.finish_task(token, worker, outcome, now_ms).await)
    }
    async fn expire_task(&self, token: &str, now_ms: i64) -> Result<bool, Error> {
        each!(self, s => s.expire_task(token, now_ms).await)
    }
    async fn cancel_task(&self, token: &str) -> Result<bool, Error> {
        each!(self, s => s.cancel_task(token).await)
    }
    async fn withdraw_task(&self, token: &str, attempt: u32) -> Result<bool, Error> {
        each!(self, s => s.withdraw_task(token, attempt).await)
    }
    async fn adopt_task(&self, token: &str, attempt: u32) -> Result<bool, Error> {
        each!(self, s => s.adopt_task(token, attempt).await)
    }
    async fn task(&self, token: &str) -> Result<Option<crate::TaskRow>, Error> {
        each!(self, s => s.task(token).await)
    }
    async fn latest_task(&self, run_id: &str, step: &str) -> Result<Option<crate::TaskRow>, Error> {
        each!(self, s => s.latest_task(run_id, step).await)
    }
}

impl Retention for AnyStore {
    async fn gc(&self, now_ms: i64, default_retention_ms: u64, dry_run: bool) -> Result<GcReport, Error> {
        each!(self, s => s.gc(now_ms, default_retention_ms, dry_run).await)
    }
}
