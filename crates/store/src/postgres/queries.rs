//! The [`crate::Store`] roles for PostgreSQL: single statements on the shared connection, and
//! run writes handed to the group-commit writer.

use super::PgStore;
use super::rows::{REQUEST_COLUMNS, RUN_COLUMNS, envelope, i, parse_id, request_row, run_row, step_row, token_row};
use super::schema::MIGRATIONS;
use super::writer::GC_LOCK;
use super::{connect, pg};
use crate::{
    Access, AuditRow, CallCost, CallRow, Claim, CostBy, CostLine, EffectLog, Error, FeedItem, GcReport, Inbox,
    InboxRow, Journal, Limit, LoadedRun, LogLine, Overspend, Registry, RequestOutcome, RequestRow, Reservation,
    Retention, RunQuery, RunRow, RunWrite, Spend, StepRow, TokenRow, WorkerRow, WorkflowRow,
};
use crate::{ActiveStep, ActiveWork, TERMINAL, UNFINISHED};
use cairn_core::payload::Payload;
use cairn_core::{Envelope, RunId};
use futures_util::future::join_all;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// This host's clock, in milliseconds since the epoch.
fn cairn_core_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A transaction that alone may change `tokens` until it ends. `SHARE ROW EXCLUSIVE` conflicts
/// with itself and with every insert or update, but not with reads, so authentication goes on
/// while a token is created or revoked. A single `INSERT … WHERE NOT EXISTS` would not do: under
/// READ COMMITTED two of them can both see no live token of a name and both insert.
async fn token_writer(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>, Error> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE").await.map_err(pg)?;
    Ok(tx)
}

/// The ids of the live tokens named `name`, oldest first (more than one only in databases
/// written before names were unique).
async fn live_token_named(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<Vec<String>, Error> {
    let rows = tx
        .query("SELECT id FROM tokens WHERE name=$1 AND revoked_at IS NULL ORDER BY created_at, id", &[&name])
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

impl PgStore {
    async fn run_row(&self, id: &RunId) -> Result<RunRow, Error> {
        let rows = self.query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id=$1"), &[&id.as_str()]).await?;
        rows.first().map(run_row).ok_or_else(|| Error::NotFound(id.to_string()))
    }

    async fn events_from(&self, id: &RunId, after: u64) -> Result<Vec<Envelope>, Error> {
        let rows = self
            .query(
                "SELECT seq, at, schema, body FROM events WHERE run_id=$1 AND seq>$2 ORDER BY seq",
                &[&id.as_str(), &i(after)],
            )
            .await?;
        rows.iter().map(|r| envelope(id.as_str(), r, 0)).collect()
    }
}

impl Journal for PgStore {
    async fn commit(&self, write: impl Into<Arc<RunWrite>> + Send) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.writes.lock().map_err(|_| Error::Closed)?.send((write.into(), reply)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn load_run(&self, id: &RunId) -> Result<LoadedRun, Error> {
        let run = self.run_row(id).await?;
        let events = self.events_from(id, 0).await?;
        let rows = self
            .query(
                "SELECT p.hash, p.body FROM run_payloads rp JOIN payloads p ON p.hash = rp.hash WHERE rp.run_id=$1",
                &[&id.as_str()],
            )
            .await?;
        let mut payloads = Vec::with_capacity(rows.len());
        for r in rows {
            let hash: String = r.get(0);
            let body: Vec<u8> = r.get(1);
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Corrupt(format!("payload {hash} does not parse: {e}")))?;
            payloads.push((hash, Arc::new(value)));
        }
        Ok(LoadedRun { run, events, payloads })
    }

    async fn claim_runs(&self, claim: Claim<'_>) -> Result<Vec<RunId>, Error> {
        let rows = match claim.only {
            Some(id) => {
                self.query(
                    &format!(
                        "SELECT id, owner, lease_expires_at, wake_at FROM runs WHERE status NOT IN {TERMINAL} AND id=$1"
                    ),
                    &[&id.as_str()],
                )
                .await?
            }
            None => {
                self.query(
                    &format!("SELECT id, owner, lease_expires_at, wake_at FROM runs WHERE status NOT IN {TERMINAL}"),
                    &[],
                )
                .await?
            }
        };
        let takeable: Vec<(String, Option<String>, Option<i64>)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, Option<String>>(1),
                    r.get::<_, Option<i64>>(2),
                    r.get::<_, Option<i64>>(3),
                )
            })
            .filter(|(_, owner, lease, wake)| match owner {
                None => wake.is_some_and(|w| w <= claim.now_ms) || claim.only.is_some(),
                Some(o) => lease.is_none_or(|l| l < claim.now_ms) || (claim.owner_is_dead)(o),
            })
            .map(|(id, owner, lease, _)| (id, owner, lease))
            .take(if claim.limit == 0 { usize::MAX } else { claim.limit })
            .collect();
        let client = self.client().await?;
        let sql = format!(
            "UPDATE runs SET owner=$1, lease_expires_at=$2, wake_at=NULL WHERE id=$3 AND owner IS NOT DISTINCT FROM $4 \
             AND lease_expires_at IS NOT DISTINCT FROM $5 AND status NOT IN {TERMINAL}"
        );
        let (owner, until) = (claim.owner, claim.lease_until_ms);
        let results = join_all(takeable.iter().map(|(id, old, lease)| {
            let (client, sql) = (&client, &sql);
            async move { client.execute(sql.as_str(), &[&owner, &until, id, old, lease]).await }
        }))
        .await;
        let mut claimed = Vec::new();
        for ((id, _, _), r) in takeable.iter().zip(results) {
            if r.map_err(pg)? == 1 {
                claimed.push(parse_id(id)?);
            }
        }
        Ok(claimed)
    }

    async fn heartbeat(&self, owner: &str, runs: &[RunId], lease_until_ms: i64) -> Result<u64, Error> {
        if runs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = runs.iter().map(|r| r.as_str()).collect();
        self.execute(
            &format!(
                "UPDATE runs SET lease_expires_at=$2 WHERE id = ANY($3) AND owner=$1 AND status NOT IN {TERMINAL}"
            ),
            &[&owner, &lease_until_ms, &ids],
        )
        .await
    }

    async fn release(&self, owner: &str, wake_at_ms: i64) -> Result<u64, Error> {
        let n = self
            .execute(
                &format!(
                    "UPDATE runs SET owner=NULL, lease_expires_at=NULL, wake_at=COALESCE(wake_at, $2) \
                 WHERE owner=$1 AND status NOT IN {TERMINAL}"
                ),
                &[&owner, &wake_at_ms],
            )
            .await?;
        self.notify().await;
        Ok(n)
    }

    async fn list_runs(&self, q: RunQuery) -> Result<Vec<RunRow>, Error> {
        let limit = if q.limit == 0 { 50 } else { q.limit } as i64;
        let (after_at, after_id) = match &q.after {
            Some((at, id)) => (Some(*at), Some(id.clone())),
            None => (None, None),
        };
        let rows = self
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::TEXT IS NULL OR status=$1) AND ($2::TEXT IS NULL OR workflow=$2) \
                     AND ($3::BIGINT IS NULL OR created_at>=$3) AND ($4::BIGINT IS NULL OR created_at<$4) \
                     AND ($5::BIGINT IS NULL OR (created_at, id) < ($5, $6::TEXT)) \
                     ORDER BY created_at DESC, id DESC LIMIT $7"
                ),
                &[&q.status, &q.workflow, &q.created_after_ms, &q.created_before_ms, &after_at, &after_id, &limit],
            )
            .await?;
        Ok(rows.iter().map(run_row).collect())
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRow, Error> {
        self.run_row(id).await
    }

    async fn steps(&self, id: &RunId) -> Result<Vec<StepRow>, Error> {
        self.run_row(id).await?;
        let rows = self
            .query(
                "SELECT step_id, position, kind, status, attempts, not_before, started_at, finished_at, busy_ms, \
                 error_class, error_message, output_hash, skip_reason FROM steps WHERE run_id=$1 ORDER BY position",
                &[&id.as_str()],
            )
            .await?;
        Ok(rows.iter().map(step_row).collect())
    }

    async fn events(&self, id: &RunId) -> Result<Vec<Envelope>, Error> {
        self.run_row(id).await?;
        self.events_from(id, 0).await
    }

    async fn logs(&self, id: &RunId, step: Option<&str>) -> Result<Vec<LogLine>, Error> {
        self.run_row(id).await?;
        let rows = self
            .query(
                "SELECT step_id, attempt, at, level, message FROM logs WHERE run_id=$1 AND ($2::TEXT IS NULL OR step_id=$2) \
                 ORDER BY id",
                &[&id.as_str(), &step],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LogLine {
                step_id: r.get(0),
                attempt: r.get::<_, i64>(1) as u32,
                at_ms: r.get(2),
                level: r.get(3),
                message: r.get(4),
            })
            .collect())
    }

    async fn payload(&self, hash: &str) -> Result<Option<Value>, Error> {
        let rows = self.query("SELECT body FROM payloads WHERE hash=$1", &[&hash]).await?;
        rows.first()
            .map(|r| {
                let body: Vec<u8> = r.get(0);
                serde_json::from_slice(&body).map_err(|e| Error::Corrupt(format!("payload {hash}: {e}")))
            })
            .transpose()
    }

    fn describe(&self) -> String {
        format!("postgres {} (synchronous_commit as configured on the server)", self.display)
    }

    async fn ping(&self) -> Result<(), Error> {
        let rows = self.query("SELECT value FROM cairn_meta WHERE key='schema_version'", &[]).await?;
        let found: i64 = rows.first().and_then(|r| r.get::<_, String>(0).parse().ok()).unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if found == known { Ok(()) } else { Err(Error::NewerSchema { path: self.display.clone(), found, known }) }
    }

    async fn claim_ready(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<RunId>, Error> {
        let rows = self
            .query(
                &format!(
                    "UPDATE runs SET owner=$1, lease_expires_at=$2, wake_at=NULL WHERE id IN (\
                       SELECT id FROM runs WHERE wake_at IS NOT NULL AND wake_at<=$3 AND status NOT IN {TERMINAL} \
                       AND (owner IS NULL OR lease_expires_at<$3) ORDER BY wake_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     RETURNING id"
                ),
                &[&owner, &lease_until_ms, &now_ms, &(limit as i64)],
            )
            .await?;
        rows.iter().map(|r| parse_id(&r.get::<_, String>(0))).collect()
    }

    async fn release_run(&self, owner: &str, id: &RunId, wake_at_ms: Option<i64>) -> Result<bool, Error> {
        // One statement: due at once if requests wait in the inbox, else at `wake_at_ms`.
        let n = self
            .execute(
                "UPDATE runs SET owner=NULL, lease_expires_at=NULL, \
                 wake_at=COALESCE((SELECT MIN(created_at) FROM inbox WHERE run_id=$1 AND state='pending'), $3) \
                 WHERE id=$1 AND owner=$2",
                &[&id.as_str(), &owner, &wake_at_ms],
            )
            .await?;
        self.notify().await;
        Ok(n == 1)
    }

    async fn clock_offset_ms(&self) -> Result<i64, Error> {
        let before = cairn_core_now();
        let rows = self.query("SELECT (extract(epoch from clock_timestamp()) * 1000)::BIGINT", &[]).await?;
        let after = cairn_core_now();
        let db: i64 = rows.first().map(|r| r.get(0)).unwrap_or(before);
        Ok(db - (before + after) / 2)
    }

    fn wake_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.wake.clone())
    }

    fn write_failure(&self) -> Option<Error> {
        self.health.failing()
    }

    async fn reopen_run(&self, id: &RunId, owner: &str, lease_until_ms: i64, expected_seq: u64) -> Result<bool, Error> {
        let n = self
            .execute(
                "UPDATE runs SET owner=$2, lease_expires_at=$3, wake_at=NULL \
                 WHERE id=$1 AND owner IS NULL AND status='FAILED' AND last_seq=$4",
                &[&id.as_str(), &owner, &lease_until_ms, &(expected_seq as i64)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn worker_seen(&self, w: WorkerRow) -> Result<(), Error> {
        self.execute(
            "INSERT INTO workers (owner, role, started_at, seen_at) VALUES ($1,$2,$3,$4) \
             ON CONFLICT (owner) DO UPDATE SET seen_at=excluded.seen_at",
            &[&w.owner, &w.role, &w.started_at_ms, &w.seen_at_ms],
        )
        .await?;
        Ok(())
    }

    async fn worker_gone(&self, owner: &str) -> Result<(), Error> {
        self.execute("DELETE FROM workers WHERE owner=$1", &[&owner]).await?;
        Ok(())
    }

    async fn workers(&self, seen_after_ms: i64) -> Result<Vec<WorkerRow>, Error> {
        let rows = self
            .query(
                "SELECT owner, role, started_at, seen_at FROM workers WHERE seen_at>=$1 ORDER BY seen_at DESC",
                &[&seen_after_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| WorkerRow { owner: r.get(0), role: r.get(1), started_at_ms: r.get(2), seen_at_ms: r.get(3) })
            .collect())
    }

    async fn active_work(&self, now_ms: i64, limit: usize) -> Result<ActiveWork, Error> {
        let rows = self
            .query(
                &format!(
                    "SELECT status, COUNT(*) FROM runs WHERE status IN {UNFINISHED} GROUP BY status ORDER BY status"
                ),
                &[],
            )
            .await?;
        let runs_by_status = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect();
        let rows = self
            .query(
                &format!(
                    "SELECT COUNT(*) FROM runs WHERE status IN {UNFINISHED} AND owner IS NOT NULL \
                     AND lease_expires_at < $1"
                ),
                &[&now_ms],
            )
            .await?;
        let expired_leases = rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64;
        let rows = self.query(&crate::active_steps_sql("$1"), &[&(limit as i64)]).await?;
        let steps = rows
            .iter()
            .map(|r| ActiveStep {
                run_id: r.get(0),
                step_id: r.get(1),
                status: r.get(2),
                not_before_ms: r.get(3),
                run_updated_at_ms: r.get(4),
                definition_hash: r.get(5),
                attempt_started_at_ms: r.get(6),
            })
            .collect();
        Ok(ActiveWork { runs_by_status, expired_leases, steps })
    }

    async fn events_after(&self, id: &RunId, after_seq: u64) -> Result<Vec<Envelope>, Error> {
        self.run_row(id).await?;
        self.events_from(id, after_seq).await
    }

    async fn feed(&self, after_gid: i64, limit: usize) -> Result<Vec<FeedItem>, Error> {
        let rows = self
            .query(
                "SELECT gid, run_id, seq, at, schema, body FROM events WHERE gid>$1 ORDER BY gid LIMIT $2",
                &[&after_gid, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let run_id: String = r.get(1);
                Ok(FeedItem { gid: r.get(0), event: envelope(&run_id, r, 2)?, run_id })
            })
            .collect()
    }

    async fn last_gid(&self) -> Result<i64, Error> {
        let rows = self.query("SELECT COALESCE(MAX(gid), 0) FROM events", &[]).await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    async fn idempotent_run(&self, key: &str) -> Result<Option<(String, String)>, Error> {
        let rows = self.query("SELECT run_id, request_hash FROM idempotency WHERE key=$1", &[&key]).await?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

impl Inbox for PgStore {
    async fn push_inbox(&self, id: &RunId, body: String, now_ms: i64) -> Result<Option<i64>, Error> {
        // The run's row lock (FOR UPDATE) is taken before the request's id is drawn and held to
        // commit, so one run's requests get ids in the order they were accepted (committed).
        let rows = self.query(&push_request_sql(), &[&id.as_str(), &body, &now_ms]).await?;
        self.notify().await;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)))
    }

    async fn pending_inbox(&self, id: &RunId) -> Result<Vec<InboxRow>, Error> {
        // Asked as every run ends: prepared once.
        let rows = self
            .query_prepared(
                "SELECT id, run_id, body FROM inbox WHERE run_id=$1 AND state='pending' ORDER BY id",
                &[&id.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|r| InboxRow { id: r.get(0), run_id: r.get(1), body: r.get(2) }).collect())
    }

    async fn inbox_outcome(&self, request: i64) -> Result<Option<RequestOutcome>, Error> {
        let rows = self.query(&format!("SELECT {REQUEST_COLUMNS} FROM inbox WHERE id=$1"), &[&request]).await?;
        rows.first().map(|r| request_row(r).map(|r| r.outcome)).transpose()
    }

    async fn run_requests(&self, id: &RunId) -> Result<Vec<RequestRow>, Error> {
        self.run_row(id).await?;
        let rows = self
            .query(&format!("SELECT {REQUEST_COLUMNS} FROM inbox WHERE run_id=$1 ORDER BY id"), &[&id.as_str()])
            .await?;
        rows.iter().map(request_row).collect()
    }

    async fn answer_inbox(&self, a: RequestOutcome) -> Result<bool, Error> {
        let n = self
            .execute(
                &format!(
                    "UPDATE inbox SET state=$2, code=$3, message=$4, journal_seq=$5, decided_at=$6 \
                     WHERE id=$1 AND state='pending' AND run_id IN (SELECT id FROM runs WHERE status IN {TERMINAL})"
                ),
                &[&a.id, &a.state.as_str(), &a.code, &a.message, &a.journal_seq.map(i), &a.decided_at_ms],
            )
            .await?;
        Ok(n == 1)
    }

    async fn runs_with_inbox(&self, owner: &str) -> Result<Vec<RunId>, Error> {
        let rows = self
            .query(
                "SELECT DISTINCT i.run_id FROM inbox i JOIN runs r ON r.id = i.run_id \
                 WHERE i.state='pending' AND r.owner=$1",
                &[&owner],
            )
            .await?;
        rows.iter().map(|r| parse_id(&r.get::<_, String>(0))).collect()
    }
}

impl EffectLog for PgStore {
    async fn record_effect(&self, run_id: &RunId, key: &str, result: Payload, now_ms: i64) -> Result<(), Error> {
        // One statement (one transaction), under the writers' side of the gc lock.
        self.execute(
            "WITH l AS (SELECT pg_advisory_xact_lock_shared($6::BIGINT)), \
             p AS (INSERT INTO payloads (hash, size, body) SELECT $3::TEXT, $4::BIGINT, $5::BYTEA FROM l \
                   ON CONFLICT (hash) DO NOTHING), \
             r AS (INSERT INTO run_payloads (run_id, hash) SELECT $2::TEXT, $3::TEXT FROM l ON CONFLICT DO NOTHING) \
             INSERT INTO effects (key, run_id, at, hash) SELECT $1::TEXT, $2::TEXT, $7::BIGINT, $3::TEXT FROM l \
             ON CONFLICT (key) DO NOTHING",
            &[
                &key,
                &run_id.as_str(),
                &result.reference.hash,
                &i(result.reference.size),
                &result.bytes,
                &GC_LOCK,
                &now_ms,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn effect(&self, key: &str) -> Result<Option<Value>, Error> {
        let rows = self.query("SELECT hash FROM effects WHERE key=$1", &[&key]).await?;
        match rows.first().map(|r| r.get::<_, String>(0)) {
            Some(h) => self.payload(&h).await,
            None => Ok(None),
        }
    }

    async fn record_call(&self, run_id: &RunId, call: CallRow, result: Option<Payload>) -> Result<bool, Error> {
        // One statement (one transaction), under the writers' side of the gc lock. A success is
        // final; a failure (or a reservation) is replaced by the call's next record.
        let (hash, size, bytes) = match &result {
            Some(p) => (Some(p.reference.hash.clone()), i(p.reference.size), p.bytes.clone()),
            None => (None, 0, Vec::new()),
        };
        let owned = CallParams::of(run_id, &call);
        let mut params = owned.refs(&call);
        params.extend([&GC_LOCK as &(dyn ToSql + Sync), &hash, &size, &bytes]);
        self.execute(
            &format!(
                "WITH l AS (SELECT pg_advisory_xact_lock_shared($18::BIGINT)), \
                 p AS (INSERT INTO payloads (hash, size, body) SELECT $19::TEXT, $20::BIGINT, $21::BYTEA FROM l \
                       WHERE $19::TEXT IS NOT NULL ON CONFLICT (hash) DO NOTHING), \
                 r AS (INSERT INTO run_payloads (run_id, hash) SELECT $1::TEXT, $19::TEXT FROM l \
                       WHERE $19::TEXT IS NOT NULL ON CONFLICT DO NOTHING) \
                 {CALL_UPSERT} SELECT {CALL_VALUES} FROM l {CALL_CONFLICT} WHERE calls.outcome <> 'ok'"
            ),
            &params,
        )
        .await
        .map(|written| written > 0)
    }

    async fn reserve_call(
        &self,
        run_id: &RunId,
        call: CallRow,
        limits: Vec<Limit>,
    ) -> Result<Option<Overspend>, Error> {
        // One transaction on its own connection: the run's reservations queue on an advisory lock
        // (its own key space: two 32-bit keys), so no other comes between the sums and the row.
        let mut client = connect(&self.shared.config).await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)::TEXT", &[&GC_LOCK]).await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock(7, hashtext($1))::TEXT", &[&run_id.as_str()]).await.map_err(pg)?;
        let asked = call.reserved.unwrap_or(Reservation { usd: 0.0, tokens: 0 });
        for limit in &limits {
            let row = tx
                .query_one(
                    &format!(
                        "SELECT {HELD} FROM calls WHERE run_id=$1 AND ($2::TEXT IS NULL OR step=$2) \
                         AND NOT (step=$3 AND n=$4)"
                    ),
                    &[&run_id.as_str(), &limit.step, &call.step_id, &(call.n as i32)],
                )
                .await
                .map_err(pg)?;
            let (usd, tokens): (f64, i64) = (row.get(0), row.get(1));
            if let Some(over) = Overspend::check(limit, usd, tokens.max(0) as u64, asked) {
                return Ok(Some(over));
            }
        }
        let owned = CallParams::of(run_id, &call);
        tx.execute(
            &format!("{CALL_UPSERT} VALUES ({CALL_VALUES}) {CALL_CONFLICT} WHERE calls.outcome <> 'ok'"),
            &owned.refs(&call),
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(None)
    }

    async fn cached_answer(&self, key: &str, now_ms: i64) -> Result<Option<Value>, Error> {
        let rows =
            self.query("SELECT answer FROM response_cache WHERE key=$1 AND expires_at>$2", &[&key, &now_ms]).await?;
        Ok(rows.first().and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()))
    }

    async fn cache_answer(&self, key: &str, answer: &Value, now_ms: i64, expires_at_ms: i64) -> Result<(), Error> {
        self.execute(
            "INSERT INTO response_cache (key, answer, created_at, expires_at) VALUES ($1,$2,$3,$4) \
             ON CONFLICT (key) DO UPDATE SET answer=excluded.answer, created_at=excluded.created_at, \
               expires_at=excluded.expires_at",
            &[&key, &answer.to_string(), &now_ms, &expires_at_ms],
        )
        .await
        .map(|_| ())
    }

    async fn spend(&self, runs: &[RunId]) -> Result<BTreeMap<String, Spend>, Error> {
        let ids: Vec<&str> = runs.iter().map(RunId::as_str).collect();
        let rows = self
            .query(
                &format!(
                    "SELECT run_id, {SPENT} FROM calls WHERE run_id = ANY($1) AND model IS NOT NULL GROUP BY run_id"
                ),
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), spend_at(r, 1))).filter(|(_, s)| s.calls > 0).collect())
    }

    async fn cost_report(&self, since_ms: i64, by: CostBy) -> Result<Vec<CostLine>, Error> {
        let key = match by {
            CostBy::Workflow => "r.workflow",
            CostBy::Model => "c.model",
            CostBy::Day => "to_char(to_timestamp(c.at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        };
        let spent =
            SPENT.replace("outcome", "c.outcome").replace("tokens_", "c.tokens_").replace("(cost_usd", "(c.cost_usd");
        let rows = self
            .query(
                &format!(
                    "SELECT {key}, COUNT(DISTINCT c.run_id), {spent} FROM calls c JOIN runs r ON r.id = c.run_id \
                     WHERE c.model IS NOT NULL AND c.at >= $1 GROUP BY 1 ORDER BY 1"
                ),
                &[&since_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CostLine { key: r.get(0), runs: r.get::<_, i64>(1).max(0) as u64, spend: spend_at(r, 2) })
            .collect())
    }

    async fn calls(&self, run_id: &RunId, step: Option<&str>) -> Result<Vec<CallRow>, Error> {
        let rows = self
            .query(
                "SELECT step, n, kind, request_hash, outcome, hash, error, attempt, duration_ms, at, \
                   model, tokens_in, tokens_out, cost_usd, reserved_usd, reserved_tokens FROM calls \
                 WHERE run_id=$1 AND ($2::TEXT IS NULL OR step=$2) ORDER BY step, n",
                &[&run_id.as_str(), &step],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CallRow {
                step_id: r.get(0),
                n: r.get::<_, i32>(1).max(0) as u32,
                kind: r.get(2),
                request_hash: r.get(3),
                outcome: r.get(4),
                result_hash: r.get(5),
                error: r.get(6),
                attempt: r.get::<_, i32>(7).max(0) as u32,
                duration_ms: r.get::<_, i64>(8).max(0) as u64,
                at_ms: r.get(9),
                cost: r.get::<_, Option<String>>(10).map(|model| CallCost {
                    model,
                    tokens_in: r.get::<_, Option<i64>>(11).unwrap_or(0).max(0) as u64,
                    tokens_out: r.get::<_, Option<i64>>(12).unwrap_or(0).max(0) as u64,
                    cost_usd: r.get::<_, Option<f64>>(13).unwrap_or(0.0),
                }),
                reserved: r
                    .get::<_, Option<f64>>(14)
                    .map(|usd| Reservation { usd, tokens: r.get::<_, Option<i64>>(15).unwrap_or(0).max(0) as u64 }),
            })
            .collect())
    }
}

impl Registry for PgStore {
    async fn put_workflow(&self, name: &str, version: u32, definition: Payload, now_ms: i64) -> Result<bool, Error> {
        // Payload and registry row together, under the writers' side of the gc lock.
        let mut client = connect(&self.shared.config).await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)::TEXT", &[&GC_LOCK]).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO payloads (hash, size, body) VALUES ($1,$2,$3) ON CONFLICT (hash) DO NOTHING",
            &[&definition.reference.hash, &i(definition.reference.size), &definition.bytes],
        )
        .await
        .map_err(pg)?;
        let inserted = tx
            .execute(
                "INSERT INTO workflows (name, version, definition_hash, created_at) VALUES ($1,$2,$3,$4) \
                 ON CONFLICT (name, version) DO NOTHING",
                &[&name, &i64::from(version), &definition.reference.hash, &now_ms],
            )
            .await
            .map_err(pg)?;
        let outcome = if inserted == 1 {
            Ok(true)
        } else {
            let rows = tx
                .query(
                    "SELECT definition_hash FROM workflows WHERE name=$1 AND version=$2",
                    &[&name, &i64::from(version)],
                )
                .await
                .map_err(pg)?;
            match rows.first().map(|r| r.get::<_, String>(0)) {
                Some(hash) if hash == definition.reference.hash => Ok(false),
                _ => Err(Error::VersionExists { name: name.to_string(), version }),
            }
        };
        tx.commit().await.map_err(pg)?;
        outcome
    }

    async fn workflows(&self) -> Result<Vec<WorkflowRow>, Error> {
        let rows = self
            .query("SELECT name, version, definition_hash, created_at FROM workflows ORDER BY name, version DESC", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| WorkflowRow {
                name: r.get(0),
                version: r.get::<_, i64>(1) as u32,
                definition_hash: r.get(2),
                created_at_ms: r.get(3),
            })
            .collect())
    }

    async fn workflow(&self, name: &str, version: Option<u32>) -> Result<(WorkflowRow, Value), Error> {
        let v = version.map(i64::from);
        let rows = self
            .query(
                "SELECT name, version, definition_hash, created_at FROM workflows WHERE name=$1 \
                 AND ($2::BIGINT IS NULL OR version=$2) ORDER BY version DESC LIMIT 1",
                &[&name, &v],
            )
            .await?;
        let row = rows
            .first()
            .map(|r| WorkflowRow {
                name: r.get(0),
                version: r.get::<_, i64>(1) as u32,
                definition_hash: r.get(2),
                created_at_ms: r.get(3),
            })
            .ok_or_else(|| match version {
                Some(v) => Error::WorkflowNotFound(format!("{name}@{v}")),
                None => Error::WorkflowNotFound(name.to_string()),
            })?;
        let value = self
            .payload(&row.definition_hash)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("workflow {name} definition payload is missing")))?;
        Ok((row, value))
    }
}

impl Access for PgStore {
    async fn create_token(&self, t: TokenRow) -> Result<(), Error> {
        let mut client = connect(&self.shared.config).await?;
        let tx = token_writer(&mut client).await?;
        if let Some(id) = live_token_named(&tx, &t.name).await?.into_iter().next() {
            return Err(Error::TokenNameTaken { name: t.name, id });
        }
        tx.execute(
            "INSERT INTO tokens (id, name, role, hash, created_at, revoked_at) VALUES ($1,$2,$3,$4,$5,$6)",
            &[&t.id, &t.name, &t.role, &t.hash, &t.created_at_ms, &t.revoked_at_ms],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, Error> {
        let rows = self
            .query(
                "SELECT id, name, role, hash, created_at, revoked_at FROM tokens WHERE hash=$1 AND revoked_at IS NULL",
                &[&hash],
            )
            .await?;
        Ok(rows.first().map(token_row))
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, Error> {
        let rows = self
            .query("SELECT id, name, role, hash, created_at, revoked_at FROM tokens ORDER BY created_at", &[])
            .await?;
        Ok(rows.iter().map(token_row).collect())
    }

    async fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<TokenRow, Error> {
        let mut client = connect(&self.shared.config).await?;
        let tx = token_writer(&mut client).await?;
        let select =
            "SELECT id, name, role, hash, created_at, revoked_at FROM tokens WHERE id=$1 AND revoked_at IS NULL";
        let mut token = match tx.query_opt(select, &[&id_or_name]).await.map_err(pg)? {
            Some(row) => token_row(&row),
            None => {
                let ids = live_token_named(&tx, id_or_name).await?;
                match ids.as_slice() {
                    [] => return Err(Error::TokenNotFound(id_or_name.to_string())),
                    [id] => token_row(&tx.query_one(select, &[id]).await.map_err(pg)?),
                    _ => return Err(Error::AmbiguousTokenName { name: id_or_name.to_string(), ids }),
                }
            }
        };
        tx.execute("UPDATE tokens SET revoked_at=$2 WHERE id=$1", &[&token.id, &now_ms]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        token.revoked_at_ms = Some(now_ms);
        Ok(token)
    }

    async fn audit(&self, a: AuditRow) -> Result<(), Error> {
        self.execute(
            "INSERT INTO audit (at, actor, method, path, status, run_id) VALUES ($1,$2,$3,$4,$5,$6)",
            &[&a.at_ms, &a.actor, &a.method, &a.path, &i64::from(a.status), &a.run_id],
        )
        .await
        .map(|_| ())
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, Error> {
        let rows = self
            .query(
                "SELECT at, actor, method, path, status, run_id FROM audit ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                at_ms: r.get(0),
                actor: r.get(1),
                method: r.get(2),
                path: r.get(3),
                status: r.get::<_, i64>(4) as u16,
                run_id: r.get(5),
            })
            .collect())
    }
}

impl Retention for PgStore {
    async fn gc(&self, now_ms: i64, default_retention_ms: u64, dry_run: bool) -> Result<GcReport, Error> {
        let cutoff = now_ms.saturating_sub(default_retention_ms as i64);
        let mut client = connect(&self.shared.config).await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Alone: no commit may link a payload gc is about to delete.
        tx.execute("SELECT pg_advisory_xact_lock($1)::TEXT", &[&GC_LOCK]).await.map_err(pg)?;
        tx.execute("CREATE TEMP TABLE gc_runs (id TEXT PRIMARY KEY) ON COMMIT DROP", &[]).await.map_err(pg)?;
        tx.execute(
            &format!(
                "INSERT INTO gc_runs SELECT id FROM runs WHERE status IN {TERMINAL} AND finished_at IS NOT NULL \
                 AND ((retain_until IS NOT NULL AND retain_until<$1) OR (retain_until IS NULL AND finished_at<$2))"
            ),
            &[&now_ms, &cutoff],
        )
        .await
        .map_err(pg)?;
        let orphans = "SELECT hash FROM run_payloads WHERE run_id IN (SELECT id FROM gc_runs) \
             EXCEPT SELECT hash FROM run_payloads WHERE run_id NOT IN (SELECT id FROM gc_runs) \
             EXCEPT SELECT definition_hash FROM workflows";
        let count = |sql: String| {
            let tx = &tx;
            async move { tx.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0) as u64).map_err(pg) }
        };
        let runs = count("SELECT count(*) FROM gc_runs".into()).await?;
        let events = count("SELECT count(*) FROM events WHERE run_id IN (SELECT id FROM gc_runs)".into()).await?;
        let payloads = count(format!("SELECT count(*) FROM ({orphans}) o")).await?;
        if !dry_run {
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE gc_payloads ON COMMIT DROP AS {orphans};
                 DELETE FROM payloads WHERE hash IN (SELECT hash FROM gc_payloads);
                 DELETE FROM run_payloads WHERE run_id IN (SELECT id FROM gc_runs);
                 DELETE FROM events WHERE run_id IN (SELECT id FROM gc_runs);
                 DELETE FROM steps WHERE run_id IN (SELECT id FROM gc_runs);
                 DELETE FROM logs WHERE run_id IN (SELECT id FROM gc_runs);
                 DELETE FROM idempotency WHERE run_id IN (SELECT id FROM gc_runs);
                 DELETE FROM inbox WHERE run_id IN (SELECT id FROM gc_runs);
                     DELETE FROM effects WHERE run_id IN (SELECT id FROM gc_runs);
                     DELETE FROM calls WHERE run_id IN (SELECT id FROM gc_runs);
                     DELETE FROM tasks WHERE run_id IN (SELECT id FROM gc_runs);
                 DELETE FROM runs WHERE id IN (SELECT id FROM gc_runs);"
            ))
            .await
            .map_err(pg)?;
            // The audit trail (refused requests too) and processes gone for a day are kept no
            // longer than finished runs.
            tx.execute("DELETE FROM audit WHERE at<$1", &[&cutoff]).await.map_err(pg)?;
            tx.execute("DELETE FROM response_cache WHERE expires_at<=$1", &[&now_ms]).await.map_err(pg)?;
            tx.execute("DELETE FROM workers WHERE seen_at<$1", &[&(now_ms - 86_400_000)]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(GcReport { runs, events, payloads })
    }
}

/// Accepts a request (`$2`) into run `$1`'s inbox at `$3` and makes the run due then; returns the
/// request's id, or nothing for a finished or unknown run.
pub(super) fn push_request_sql() -> String {
    format!(
        "WITH open AS (SELECT id FROM runs WHERE id=$1 AND status NOT IN {TERMINAL} FOR UPDATE), \
         ins AS (INSERT INTO inbox (run_id, body, created_at) \
                 SELECT id, $2, GREATEST($3, COALESCE((SELECT MAX(created_at) FROM inbox WHERE run_id=$1), $3)) \
                 FROM open RETURNING id, run_id), \
         woken AS (UPDATE runs SET wake_at=LEAST(COALESCE(wake_at, $3), $3) \
                   WHERE id IN (SELECT run_id FROM ins) RETURNING id) \
         SELECT id FROM ins"
    )
}

/// A call's row: inserted, or replacing the one at its position (the caller adds the condition).
const CALL_UPSERT: &str = "INSERT INTO calls (run_id, step, n, kind, request_hash, outcome, hash, error, attempt, \
     duration_ms, at, model, tokens_in, tokens_out, cost_usd, reserved_usd, reserved_tokens)";
const CALL_VALUES: &str = "$1::TEXT, $2::TEXT, $3::INTEGER, $4::TEXT, $5::TEXT, $6::TEXT, $7::TEXT, $8::TEXT, \
     $9::INTEGER, $10::BIGINT, $11::BIGINT, $12::TEXT, $13::BIGINT, $14::BIGINT, $15::DOUBLE PRECISION, \
     $16::DOUBLE PRECISION, $17::BIGINT";
const CALL_CONFLICT: &str = "ON CONFLICT (run_id, step, n) DO UPDATE SET kind=excluded.kind, \
     request_hash=excluded.request_hash, outcome=excluded.outcome, hash=excluded.hash, error=excluded.error, \
     attempt=excluded.attempt, duration_ms=excluded.duration_ms, at=excluded.at, model=excluded.model, \
     tokens_in=excluded.tokens_in, tokens_out=excluded.tokens_out, cost_usd=excluded.cost_usd, \
     reserved_usd=excluded.reserved_usd, reserved_tokens=excluded.reserved_tokens";

/// What a scope holds against its budgets: settled calls at their cost, reserved ones at their
/// worst case.
const HELD: &str = "COALESCE(SUM(CASE WHEN outcome = 'reserved' THEN reserved_usd ELSE cost_usd END), 0.0)::DOUBLE PRECISION, \
     COALESCE(SUM(CASE WHEN outcome = 'reserved' THEN reserved_tokens ELSE COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0) END), 0)::BIGINT";

/// What settled calls spent (a reservation not settled yet is no spending).
const SPENT: &str = "COUNT(*) FILTER (WHERE outcome <> 'reserved'), \
     COALESCE(SUM(tokens_in) FILTER (WHERE outcome <> 'reserved'), 0)::BIGINT, \
     COALESCE(SUM(tokens_out) FILTER (WHERE outcome <> 'reserved'), 0)::BIGINT, \
     COALESCE(SUM(cost_usd) FILTER (WHERE outcome <> 'reserved'), 0.0)::DOUBLE PRECISION";

/// The parameters `$1`…`$17` of [`CALL_VALUES`], converted to the columns' types.
struct CallParams {
    run: String,
    n: i32,
    attempt: i32,
    duration_ms: i64,
    model: Option<String>,
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
    cost_usd: Option<f64>,
    reserved_usd: Option<f64>,
    reserved_tokens: Option<i64>,
}

impl CallParams {
    fn of(run_id: &RunId, call: &CallRow) -> CallParams {
        let cost = call.cost.as_ref();
        CallParams {
            run: run_id.to_string(),
            n: call.n as i32,
            attempt: call.attempt as i32,
            duration_ms: i(call.duration_ms),
            model: cost.map(|c| c.model.clone()),
            tokens_in: cost.map(|c| i(c.tokens_in)),
            tokens_out: cost.map(|c| i(c.tokens_out)),
            cost_usd: cost.map(|c| c.cost_usd),
            reserved_usd: call.reserved.map(|r| r.usd),
            reserved_tokens: call.reserved.map(|r| i(r.tokens)),
        }
    }

    fn refs<'a>(&'a self, call: &'a CallRow) -> Vec<&'a (dyn ToSql + Sync)> {
        vec![
            &self.run,
            &call.step_id,
            &self.n,
            &call.kind,
            &call.request_hash,
            &call.outcome,
            &call.result_hash,
            &call.error,
            &self.attempt,
            &self.duration_ms,
            &call.at_ms,
            &self.model,
            &self.tokens_in,
            &self.tokens_out,
            &self.cost_usd,
            &self.reserved_usd,
            &self.reserved_tokens,
        ]
    }
}

fn spend_at(r: &tokio_postgres::Row, from: usize) -> Spend {
    Spend {
        calls: r.get::<_, i64>(from).max(0) as u64,
        tokens_in: r.get::<_, i64>(from + 1).max(0) as u64,
        tokens_out: r.get::<_, i64>(from + 2).max(0) as u64,
        cost_usd: r.get(from + 3),
    }
}
