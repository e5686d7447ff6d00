//! One type for "whichever database the user pointed at": the binary picks SQLite or PostgreSQL
//! at run time, and everything above the store stays generic over [`Store`].

use crate::{
    AuditRow, Claim, Error, FeedItem, GcReport, InboxRow, LoadedRun, LogLine, PgStore, RequestOutcome, RequestRow,
    RunQuery, RunRow, RunWrite, SqliteStore, StepRow, Store, TokenRow, WorkerRow, WorkflowRow,
};
use cairn_core::{Envelope, RunId};
use serde_json::Value;

pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store for AnyStore {
    async fn record_effect(
        &self,
        run_id: &RunId,
        key: &str,
        result: cairn_core::payload::Payload,
        now_ms: i64,
    ) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.record_effect(run_id, key, result, now_ms).await,
            AnyStore::Postgres(s) => s.record_effect(run_id, key, result, now_ms).await,
        }
    }

    async fn effect(&self, key: &str) -> Result<Option<Value>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.effect(key).await,
            AnyStore::Postgres(s) => s.effect(key).await,
        }
    }

    async fn clock_offset_ms(&self) -> Result<i64, Error> {
        match self {
            AnyStore::Sqlite(s) => s.clock_offset_ms().await,
            AnyStore::Postgres(s) => s.clock_offset_ms().await,
        }
    }

    fn wake_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self {
            AnyStore::Sqlite(s) => s.wake_signal(),
            AnyStore::Postgres(s) => s.wake_signal(),
        }
    }

    async fn commit(&self, write: impl Into<std::sync::Arc<RunWrite>> + Send) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.commit(write).await,
            AnyStore::Postgres(s) => s.commit(write).await,
        }
    }

    fn write_failure(&self) -> Option<Error> {
        match self {
            AnyStore::Sqlite(s) => Store::write_failure(s),
            AnyStore::Postgres(s) => s.write_failure(),
        }
    }

    async fn load_run(&self, id: &RunId) -> Result<LoadedRun, Error> {
        match self {
            AnyStore::Sqlite(s) => s.load_run(id).await,
            AnyStore::Postgres(s) => s.load_run(id).await,
        }
    }

    async fn claim_runs(&self, claim: Claim<'_>) -> Result<Vec<RunId>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.claim_runs(claim).await,
            AnyStore::Postgres(s) => s.claim_runs(claim).await,
        }
    }

    async fn heartbeat(&self, owner: &str, lease_until_ms: i64) -> Result<u64, Error> {
        match self {
            AnyStore::Sqlite(s) => s.heartbeat(owner, lease_until_ms).await,
            AnyStore::Postgres(s) => s.heartbeat(owner, lease_until_ms).await,
        }
    }

    async fn release(&self, owner: &str, wake_at_ms: i64) -> Result<u64, Error> {
        match self {
            AnyStore::Sqlite(s) => s.release(owner, wake_at_ms).await,
            AnyStore::Postgres(s) => s.release(owner, wake_at_ms).await,
        }
    }

    async fn list_runs(&self, query: RunQuery) -> Result<Vec<RunRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.list_runs(query).await,
            AnyStore::Postgres(s) => s.list_runs(query).await,
        }
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRow, Error> {
        match self {
            AnyStore::Sqlite(s) => s.get_run(id).await,
            AnyStore::Postgres(s) => s.get_run(id).await,
        }
    }

    async fn steps(&self, id: &RunId) -> Result<Vec<StepRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.steps(id).await,
            AnyStore::Postgres(s) => s.steps(id).await,
        }
    }

    async fn events(&self, id: &RunId) -> Result<Vec<Envelope>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.events(id).await,
            AnyStore::Postgres(s) => s.events(id).await,
        }
    }

    async fn logs(&self, id: &RunId, step: Option<&str>) -> Result<Vec<LogLine>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.logs(id, step).await,
            AnyStore::Postgres(s) => s.logs(id, step).await,
        }
    }

    async fn payload(&self, hash: &str) -> Result<Option<Value>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.payload(hash).await,
            AnyStore::Postgres(s) => s.payload(hash).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            AnyStore::Sqlite(s) => s.describe(),
            AnyStore::Postgres(s) => s.describe(),
        }
    }

    async fn ping(&self) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.ping().await,
            AnyStore::Postgres(s) => s.ping().await,
        }
    }

    async fn claim_ready(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<RunId>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.claim_ready(owner, now_ms, lease_until_ms, limit).await,
            AnyStore::Postgres(s) => s.claim_ready(owner, now_ms, lease_until_ms, limit).await,
        }
    }

    async fn release_run(&self, owner: &str, id: &RunId, wake_at_ms: Option<i64>) -> Result<bool, Error> {
        match self {
            AnyStore::Sqlite(s) => s.release_run(owner, id, wake_at_ms).await,
            AnyStore::Postgres(s) => s.release_run(owner, id, wake_at_ms).await,
        }
    }

    async fn reopen_run(&self, id: &RunId, owner: &str, lease_until_ms: i64, expected_seq: u64) -> Result<bool, Error> {
        match self {
            AnyStore::Sqlite(s) => s.reopen_run(id, owner, lease_until_ms, expected_seq).await,
            AnyStore::Postgres(s) => s.reopen_run(id, owner, lease_until_ms, expected_seq).await,
        }
    }

    async fn push_inbox(&self, id: &RunId, body: String, now_ms: i64) -> Result<Option<i64>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.push_inbox(id, body, now_ms).await,
            AnyStore::Postgres(s) => s.push_inbox(id, body, now_ms).await,
        }
    }

    async fn pending_inbox(&self, id: &RunId) -> Result<Vec<InboxRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.pending_inbox(id).await,
            AnyStore::Postgres(s) => s.pending_inbox(id).await,
        }
    }

    async fn inbox_outcome(&self, request: i64) -> Result<Option<RequestOutcome>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.inbox_outcome(request).await,
            AnyStore::Postgres(s) => s.inbox_outcome(request).await,
        }
    }

    async fn answer_inbox(&self, answer: RequestOutcome) -> Result<bool, Error> {
        match self {
            AnyStore::Sqlite(s) => s.answer_inbox(answer).await,
            AnyStore::Postgres(s) => s.answer_inbox(answer).await,
        }
    }

    async fn run_requests(&self, id: &RunId) -> Result<Vec<RequestRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.run_requests(id).await,
            AnyStore::Postgres(s) => s.run_requests(id).await,
        }
    }

    async fn runs_with_inbox(&self, owner: &str) -> Result<Vec<RunId>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.runs_with_inbox(owner).await,
            AnyStore::Postgres(s) => s.runs_with_inbox(owner).await,
        }
    }

    async fn worker_seen(&self, worker: WorkerRow) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.worker_seen(worker).await,
            AnyStore::Postgres(s) => s.worker_seen(worker).await,
        }
    }

    async fn worker_gone(&self, owner: &str) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.worker_gone(owner).await,
            AnyStore::Postgres(s) => s.worker_gone(owner).await,
        }
    }

    async fn workers(&self, seen_after_ms: i64) -> Result<Vec<WorkerRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.workers(seen_after_ms).await,
            AnyStore::Postgres(s) => s.workers(seen_after_ms).await,
        }
    }

    async fn events_after(&self, id: &RunId, after_seq: u64) -> Result<Vec<Envelope>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.events_after(id, after_seq).await,
            AnyStore::Postgres(s) => s.events_after(id, after_seq).await,
        }
    }

    async fn feed(&self, after_gid: i64, limit: usize) -> Result<Vec<FeedItem>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.feed(after_gid, limit).await,
            AnyStore::Postgres(s) => s.feed(after_gid, limit).await,
        }
    }

    async fn last_gid(&self) -> Result<i64, Error> {
        match self {
            AnyStore::Sqlite(s) => s.last_gid().await,
            AnyStore::Postgres(s) => s.last_gid().await,
        }
    }

    async fn idempotent_run(&self, key: &str) -> Result<Option<(String, String)>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.idempotent_run(key).await,
            AnyStore::Postgres(s) => s.idempotent_run(key).await,
        }
    }

    async fn put_workflow(
        &self,
        name: &str,
        version: u32,
        definition: cairn_core::payload::Payload,
        now_ms: i64,
    ) -> Result<bool, Error> {
        match self {
            AnyStore::Sqlite(s) => s.put_workflow(name, version, definition, now_ms).await,
            AnyStore::Postgres(s) => s.put_workflow(name, version, definition, now_ms).await,
        }
    }

    async fn workflows(&self) -> Result<Vec<WorkflowRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.workflows().await,
            AnyStore::Postgres(s) => s.workflows().await,
        }
    }

    async fn workflow(&self, name: &str, version: Option<u32>) -> Result<(WorkflowRow, Value), Error> {
        match self {
            AnyStore::Sqlite(s) => s.workflow(name, version).await,
            AnyStore::Postgres(s) => s.workflow(name, version).await,
        }
    }

    async fn create_token(&self, token: TokenRow) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.create_token(token).await,
            AnyStore::Postgres(s) => s.create_token(token).await,
        }
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.token_by_hash(hash).await,
            AnyStore::Postgres(s) => s.token_by_hash(hash).await,
        }
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.tokens().await,
            AnyStore::Postgres(s) => s.tokens().await,
        }
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<TokenRow, Error> {
        match self {
            AnyStore::Sqlite(s) => s.revoke_token(id, now_ms).await,
            AnyStore::Postgres(s) => s.revoke_token(id, now_ms).await,
        }
    }

    async fn audit(&self, row: AuditRow) -> Result<(), Error> {
        match self {
            AnyStore::Sqlite(s) => s.audit(row).await,
            AnyStore::Postgres(s) => s.audit(row).await,
        }
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, Error> {
        match self {
            AnyStore::Sqlite(s) => s.audit_log(limit).await,
            AnyStore::Postgres(s) => s.audit_log(limit).await,
        }
    }

    async fn gc(&self, now_ms: i64, default_retention_ms: u64, dry_run: bool) -> Result<GcReport, Error> {
        match self {
            AnyStore::Sqlite(s) => s.gc(now_ms, default_retention_ms, dry_run).await,
            AnyStore::Postgres(s) => s.gc(now_ms, default_retention_ms, dry_run).await,
        }
    }
}
