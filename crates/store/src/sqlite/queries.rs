//! The [`crate::Store`] roles for SQLite: reads on the reader connection, writes inside the writer's group commit.

use super::SqliteStore;
use crate::{Access, EffectLog, Inbox, Journal, Registry, Retention};
use crate::{ActiveStep, ActiveWork, TERMINAL, UNFINISHED};
use crate::{
    AuditRow, CallCost, CallRow, Claim, CostBy, CostLine, Error, FeedItem, GcReport, InboxRow, Limit, LoadedRun,
    LogLine, Overspend, RequestOutcome, RequestRow, RequestState, Reservation, RunQuery, RunRow, RunWrite, Spend,
    StepRow, TokenRow, WorkerRow, WorkflowRow,
};
use cairn_core::payload::Payload;
use cairn_core::{Envelope, Event, RunId};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::oneshot;

const RUN_COLUMNS: &str = "id, workflow, definition_version, status, goal, current_step, failure_class, failure_message, \
     failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, definition_hash, output_hash, \
     artifact, wake_at, retain_until";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        workflow: r.get(1)?,
        definition_version: r.get(2)?,
        status: r.get(3)?,
        goal: r.get(4)?,
        current_step: r.get(5)?,
        failure_class: r.get(6)?,
        failure_message: r.get(7)?,
        failed_step: r.get(8)?,
        last_seq: r.get::<_, i64>(9)? as u64,
        owner: r.get(10)?,
        lease_expires_at_ms: r.get(11)?,
        created_at_ms: r.get(12)?,
        updated_at_ms: r.get(13)?,
        finished_at_ms: r.get(14)?,
        definition_hash: r.get(15)?,
        output_hash: r.get(16)?,
        artifact: r.get(17)?,
        wake_at_ms: r.get(18)?,
        retain_until_ms: r.get(19)?,
    })
}

fn get_run(conn: &Connection, id: &RunId) -> Result<RunRow, Error> {
    conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id=?1"))?
        .query_row([id.as_str()], run_row)
        .optional()?
        .ok_or_else(|| Error::NotFound(id.to_string()))
}

fn parse_event(run: &str, seq: i64, at: i64, schema: i64, body: &str) -> Result<Envelope, Error> {
    let event: Event =
        serde_json::from_str(body).map_err(|e| Error::Corrupt(format!("run {run} event {seq} does not parse: {e}")))?;
    Ok(Envelope { seq: seq as u64, at_ms: at, schema: schema as u16, event })
}

fn read_events(conn: &Connection, id: &RunId, after_seq: u64) -> Result<Vec<Envelope>, Error> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, at, schema, body FROM events WHERE run_id=?1 AND seq>?2 ORDER BY seq")?;
    let rows = stmt.query_map(params![id.as_str(), after_seq as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, at, schema, body) = row?;
        out.push(parse_event(id.as_str(), seq, at, schema, &body)?);
    }
    Ok(out)
}

const REQUEST_COLUMNS: &str = "id, run_id, body, created_at, state, code, message, journal_seq, decided_at";

/// A request row; its state is checked after the read (an unknown state is damage, not a
/// query error).
fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RequestRow, Error>> {
    let id: i64 = r.get(0)?;
    let state: String = r.get(4)?;
    let Some(parsed) = RequestState::parse(&state) else {
        return Ok(Err(Error::Corrupt(format!("request {id} has state '{state}'"))));
    };
    let outcome = RequestOutcome {
        id,
        state: parsed,
        code: r.get(5)?,
        message: r.get(6)?,
        journal_seq: r.get::<_, Option<i64>>(7)?.map(|s| s as u64),
        decided_at_ms: r.get(8)?,
    };
    Ok(Ok(RequestRow { id, run_id: r.get(1)?, body: r.get(2)?, accepted_at_ms: r.get(3)?, outcome }))
}

const TOKEN_COLUMNS: &str = "id, name, role, hash, created_at, revoked_at";

/// The ids of the live tokens named `name`, oldest first (more than one only in databases
/// written before names were unique).
fn live_token_named(conn: &Connection, name: &str) -> Result<Vec<String>, Error> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM tokens WHERE name=?1 AND revoked_at IS NULL ORDER BY created_at, id")?;
    let ids = stmt.query_map([name], |r| r.get(0))?;
    Ok(ids.collect::<Result<Vec<String>, _>>()?)
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        hash: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
    })
}

impl Journal for SqliteStore {
    async fn commit(&self, write: impl Into<Arc<RunWrite>> + Send) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(super::Msg::Write(write.into(), reply))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn write_failure(&self) -> Option<Error> {
        SqliteStore::write_failure(self)
    }

    async fn load_run(&self, id: &RunId) -> Result<LoadedRun, Error> {
        self.read(|conn| {
            let run = get_run(conn, id)?;
            let events = read_events(conn, id, 0)?;
            let mut stmt = conn.prepare_cached(
                "SELECT p.hash, p.body FROM run_payloads rp JOIN payloads p ON p.hash = rp.hash WHERE rp.run_id=?1",
            )?;
            let rows = stmt.query_map([id.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            let mut payloads = Vec::new();
            for row in rows {
                let (hash, body) = row?;
                let value: Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::Corrupt(format!("payload {hash} does not parse: {e}")))?;
                payloads.push((hash, Arc::new(value)));
            }
            Ok(LoadedRun { run, events, payloads })
        })
    }

    async fn claim_runs(&self, claim: Claim<'_>) -> Result<Vec<RunId>, Error> {
        // Read candidates, decide which owners are gone here (the predicate is not 'static),
        // then take them with a compare-and-set on owner and lease inside the group commit.
        // (id, owner, lease expiry, wake time)
        type Candidate = (String, Option<String>, Option<i64>, Option<i64>);
        let candidates: Vec<Candidate> = self.read(|conn| {
            let mut sql =
                format!("SELECT id, owner, lease_expires_at, wake_at FROM runs WHERE status NOT IN {TERMINAL}");
            if claim.only.is_some() {
                sql.push_str(" AND id=?1");
            }
            let mut stmt = conn.prepare(&sql)?;
            let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
            let rows: Vec<_> = match claim.only {
                Some(id) => stmt.query_map([id.as_str()], map)?.collect::<Result<_, _>>()?,
                None => stmt.query_map([], map)?.collect::<Result<_, _>>()?,
            };
            Ok(rows)
        })?;
        // Unheld runs are worth taking only if they have something to do (or are asked for by
        // id); a paused run without a wake time stays where it is.
        let takeable: Vec<(String, Option<String>, Option<i64>)> = candidates
            .into_iter()
            .filter(|(_, owner, lease, wake)| match owner {
                None => wake.is_some_and(|w| w <= claim.now_ms) || claim.only.is_some(),
                Some(o) => lease.is_none_or(|l| l < claim.now_ms) || (claim.owner_is_dead)(o),
            })
            .map(|(id, owner, lease, _)| (id, owner, lease))
            .take(if claim.limit == 0 { usize::MAX } else { claim.limit })
            .collect();
        let owner = claim.owner.to_string();
        let until = claim.lease_until_ms;
        self.in_group(move |tx| {
            let mut claimed = Vec::new();
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE runs SET owner=?1, lease_expires_at=?2, wake_at=NULL WHERE id=?3 AND owner IS ?4 \
                 AND lease_expires_at IS ?5 AND status NOT IN {TERMINAL}"
            ))?;
            // Compare-and-set on owner *and* lease: an owner that heartbeated since we looked
            // keeps its run.
            for (id, old, lease) in takeable {
                if stmt.execute(params![owner, until, id, old, lease])? == 1 {
                    claimed.push(RunId::parse(&id).map_err(Error::Corrupt)?);
                }
            }
            Ok(claimed)
        })
        .await
    }

    async fn heartbeat(&self, owner: &str, runs: &[RunId], lease_until_ms: i64) -> Result<u64, Error> {
        if runs.is_empty() {
            return Ok(0);
        }
        let owner = owner.to_string();
        let runs: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
        self.in_group(move |tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE runs SET lease_expires_at=?2 WHERE id=?3 AND owner=?1 AND status NOT IN {TERMINAL}"
            ))?;
            let mut n = 0;
            for id in &runs {
                n += stmt.execute(params![owner, lease_until_ms, id])?;
            }
            Ok(n as u64)
        })
        .await
    }

    async fn release(&self, owner: &str, wake_at_ms: i64) -> Result<u64, Error> {
        let owner = owner.to_string();
        self.in_group(move |tx| {
            // Held runs carry no wake time; whoever takes over must look at them at once.
            let n = tx.execute(
                &format!(
                    "UPDATE runs SET owner=NULL, lease_expires_at=NULL, wake_at=COALESCE(wake_at, ?2) \
                     WHERE owner=?1 AND status NOT IN {TERMINAL}"
                ),
                params![owner, wake_at_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn list_runs(&self, q: RunQuery) -> Result<Vec<RunRow>, Error> {
        self.read(|conn| {
            let limit = if q.limit == 0 { 50 } else { q.limit } as i64;
            let (after_at, after_id) = match &q.after {
                Some((at, id)) => (Some(*at), Some(id.as_str())),
                None => (None, None),
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR status=?1) AND (?2 IS NULL OR workflow=?2) \
                 AND (?3 IS NULL OR created_at>=?3) AND (?4 IS NULL OR created_at<?4) \
                 AND (?5 IS NULL OR (created_at, id) < (?5, ?6)) \
                 ORDER BY created_at DESC, id DESC LIMIT ?7"
            ))?;
            let rows = stmt.query_map(
                params![q.status, q.workflow, q.created_after_ms, q.created_before_ms, after_at, after_id, limit],
                run_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn get_run(&self, id: &RunId) -> Result<RunRow, Error> {
        self.read(|conn| get_run(conn, id))
    }

    async fn steps(&self, id: &RunId) -> Result<Vec<StepRow>, Error> {
        self.read(|conn| {
            get_run(conn, id)?;
            let mut stmt = conn.prepare_cached(
                "SELECT step_id, position, kind, status, attempts, not_before, started_at, finished_at, busy_ms, \
                 error_class, error_message, output_hash, skip_reason FROM steps WHERE run_id=?1 ORDER BY position",
            )?;
            let rows = stmt.query_map([id.as_str()], |r| {
                Ok(StepRow {
                    step_id: r.get(0)?,
                    position: r.get(1)?,
                    kind: r.get(2)?,
                    status: r.get(3)?,
                    attempts: r.get(4)?,
                    not_before_ms: r.get(5)?,
                    started_at_ms: r.get(6)?,
                    finished_at_ms: r.get(7)?,
                    busy_ms: r.get::<_, i64>(8)? as u64,
                    error_class: r.get(9)?,
                    error_message: r.get(10)?,
                    output_hash: r.get(11)?,
                    skip_reason: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn events(&self, id: &RunId) -> Result<Vec<Envelope>, Error> {
        self.read(|conn| {
            get_run(conn, id)?;
            read_events(conn, id, 0)
        })
    }

    async fn logs(&self, id: &RunId, step: Option<&str>) -> Result<Vec<LogLine>, Error> {
        self.read(|conn| {
            get_run(conn, id)?;
            let mut stmt = conn.prepare_cached(
                "SELECT step_id, attempt, at, level, message FROM logs WHERE run_id=?1 AND (?2 IS NULL OR step_id=?2) \
                 ORDER BY rowid",
            )?;
            let rows = stmt.query_map(params![id.as_str(), step], |r| {
                Ok(LogLine {
                    step_id: r.get(0)?,
                    attempt: r.get(1)?,
                    at_ms: r.get(2)?,
                    level: r.get(3)?,
                    message: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn payload(&self, hash: &str) -> Result<Option<Value>, Error> {
        self.read(|conn| {
            let body: Option<Vec<u8>> = conn
                .prepare_cached("SELECT body FROM payloads WHERE hash=?1")?
                .query_row([hash], |r| r.get(0))
                .optional()?;
            body.map(|b| serde_json::from_slice(&b).map_err(|e| Error::Corrupt(format!("payload {hash}: {e}"))))
                .transpose()
        })
    }

    fn describe(&self) -> String {
        format!("sqlite {} (WAL, durability {})", self.path.display(), self.durability.as_str())
    }

    async fn ping(&self) -> Result<(), Error> {
        self.read(|conn| {
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let known = super::MIGRATIONS.len() as i64;
            if version == known {
                Ok(())
            } else {
                Err(Error::NewerSchema { path: self.path.display().to_string(), found: version, known })
            }
        })
    }

    async fn clock_offset_ms(&self) -> Result<i64, Error> {
        // One file on one host: the host's clock is the database's.
        Ok(0)
    }

    fn wake_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    async fn claim_ready(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<RunId>, Error> {
        let owner = owner.to_string();
        self.in_group(move |tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE runs SET owner=?1, lease_expires_at=?2, wake_at=NULL WHERE id IN (\
                   SELECT id FROM runs WHERE wake_at IS NOT NULL AND wake_at<=?3 AND status NOT IN {TERMINAL} \
                   AND (owner IS NULL OR lease_expires_at<?3) ORDER BY wake_at LIMIT ?4) RETURNING id"
            ))?;
            let ids =
                stmt.query_map(params![owner, lease_until_ms, now_ms, limit as i64], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in ids {
                out.push(RunId::parse(&id?).map_err(Error::Corrupt)?);
            }
            Ok(out)
        })
        .await
    }

    async fn release_run(&self, owner: &str, id: &RunId, wake_at_ms: Option<i64>) -> Result<bool, Error> {
        let (owner, id) = (owner.to_string(), id.to_string());
        self.in_group(move |tx| {
            let n = tx.execute(
                "UPDATE runs SET owner=NULL, lease_expires_at=NULL, wake_at=?3 WHERE id=?1 AND owner=?2",
                params![id, owner, wake_at_ms],
            )?;
            super::writer::wake_if_inbox(tx, &id)?;
            Ok(n == 1)
        })
        .await
    }

    async fn reopen_run(&self, id: &RunId, owner: &str, lease_until_ms: i64, expected_seq: u64) -> Result<bool, Error> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.in_group(move |tx| {
            let n = tx.execute(
                "UPDATE runs SET owner=?2, lease_expires_at=?3, wake_at=NULL \
                 WHERE id=?1 AND owner IS NULL AND status='FAILED' AND last_seq=?4",
                params![id, owner, lease_until_ms, expected_seq as i64],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn worker_seen(&self, w: WorkerRow) -> Result<(), Error> {
        self.in_group(move |tx| {
            tx.prepare_cached(
                "INSERT INTO workers (owner, role, started_at, seen_at) VALUES (?1,?2,?3,?4) \
                 ON CONFLICT(owner) DO UPDATE SET seen_at=excluded.seen_at",
            )?
            .execute(params![w.owner, w.role, w.started_at_ms, w.seen_at_ms])?;
            Ok(())
        })
        .await
    }

    async fn worker_gone(&self, owner: &str) -> Result<(), Error> {
        let owner = owner.to_string();
        self.in_group(move |tx| {
            tx.prepare_cached("DELETE FROM workers WHERE owner=?1")?.execute([owner])?;
            Ok(())
        })
        .await
    }

    async fn workers(&self, seen_after_ms: i64) -> Result<Vec<WorkerRow>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT owner, role, started_at, seen_at FROM workers WHERE seen_at>=?1 ORDER BY seen_at DESC",
            )?;
            let rows = stmt.query_map([seen_after_ms], |r| {
                Ok(WorkerRow { owner: r.get(0)?, role: r.get(1)?, started_at_ms: r.get(2)?, seen_at_ms: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn active_work(&self, now_ms: i64, limit: usize) -> Result<ActiveWork, Error> {
        self.read(move |conn| {
            let mut by_status = conn.prepare_cached(&format!(
                "SELECT status, COUNT(*) FROM runs WHERE status IN {UNFINISHED} GROUP BY status ORDER BY status"
            ))?;
            let runs_by_status = by_status
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<Result<Vec<_>, _>>()?;
            let expired_leases: i64 = conn
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM runs WHERE status IN {UNFINISHED} AND owner IS NOT NULL \
                     AND lease_expires_at < ?1"
                ))?
                .query_row([now_ms], |r| r.get(0))?;
            let mut stmt = conn.prepare_cached(&crate::active_steps_sql("?1"))?;
            let steps = stmt
                .query_map([limit as i64], |r| {
                    Ok(ActiveStep {
                        run_id: r.get(0)?,
                        step_id: r.get(1)?,
                        status: r.get(2)?,
                        not_before_ms: r.get(3)?,
                        run_updated_at_ms: r.get(4)?,
                        definition_hash: r.get(5)?,
                        attempt_started_at_ms: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ActiveWork { runs_by_status, expired_leases: expired_leases as u64, steps })
        })
    }

    async fn events_after(&self, id: &RunId, after_seq: u64) -> Result<Vec<Envelope>, Error> {
        self.read(|conn| {
            get_run(conn, id)?;
            read_events(conn, id, after_seq)
        })
    }

    async fn feed(&self, after_gid: i64, limit: usize) -> Result<Vec<FeedItem>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT gid, run_id, seq, at, schema, body FROM events WHERE gid>?1 ORDER BY gid LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_gid, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (gid, run_id, seq, at, schema, body) = row?;
                let event = parse_event(&run_id, seq, at, schema, &body)?;
                out.push(FeedItem { gid, run_id, event });
            }
            Ok(out)
        })
    }

    async fn last_gid(&self) -> Result<i64, Error> {
        self.read(|conn| Ok(conn.query_row("SELECT COALESCE(MAX(gid), 0) FROM events", [], |r| r.get(0))?))
    }

    async fn idempotent_run(&self, key: &str) -> Result<Option<(String, String)>, Error> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT run_id, request_hash FROM idempotency WHERE key=?1")?
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        })
    }
}

impl Inbox for SqliteStore {
    async fn push_inbox(&self, id: &RunId, body: String, now: i64) -> Result<Option<i64>, Error> {
        let id = id.to_string();
        // The single writer orders acceptances: ids grow in the order requests were accepted.
        self.in_group(move |tx| super::writer::push_request(tx, &id, &body, now)).await
    }

    async fn pending_inbox(&self, id: &RunId) -> Result<Vec<InboxRow>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(super::PENDING_INBOX)?;
            let rows =
                stmt.query_map([id.as_str()], |r| Ok(InboxRow { id: r.get(0)?, run_id: r.get(1)?, body: r.get(2)? }))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn inbox_outcome(&self, request: i64) -> Result<Option<RequestOutcome>, Error> {
        let row = self.read(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {REQUEST_COLUMNS} FROM inbox WHERE id=?1"))?
                .query_row([request], request_row)
                .optional()?)
        })?;
        row.map(|r| r.map(|r| r.outcome)).transpose()
    }

    async fn run_requests(&self, id: &RunId) -> Result<Vec<RequestRow>, Error> {
        let rows = self.read(|conn| {
            get_run(conn, id)?;
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {REQUEST_COLUMNS} FROM inbox WHERE run_id=?1 ORDER BY id"))?;
            let rows = stmt.query_map([id.as_str()], request_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        rows.into_iter().collect()
    }

    async fn answer_inbox(&self, a: RequestOutcome) -> Result<bool, Error> {
        self.in_group(move |tx| {
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE inbox SET state=?2, code=?3, message=?4, journal_seq=?5, decided_at=?6 \
                         WHERE id=?1 AND state='pending' AND run_id IN (SELECT id FROM runs WHERE status IN {TERMINAL})"
                ))?
                .execute(params![
                    a.id,
                    a.state.as_str(),
                    a.code,
                    a.message,
                    a.journal_seq.map(|s| s as i64),
                    a.decided_at_ms
                ])?;
            Ok(n == 1)
        })
        .await
    }

    async fn runs_with_inbox(&self, owner: &str) -> Result<Vec<RunId>, Error> {
        let ids: Vec<String> = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT i.run_id FROM inbox i JOIN runs r ON r.id = i.run_id \
                 WHERE i.state='pending' AND r.owner=?1",
            )?;
            let rows = stmt.query_map([owner], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        ids.iter().map(|id| RunId::parse(id).map_err(Error::Corrupt)).collect()
    }
}

impl EffectLog for SqliteStore {
    async fn record_effect(&self, run_id: &RunId, key: &str, result: Payload, now_ms: i64) -> Result<(), Error> {
        let (run_id, key) = (run_id.to_string(), key.to_string());
        self.in_group(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO payloads (hash, size, body) VALUES (?1,?2,?3)",
                params![result.reference.hash, result.reference.size as i64, result.bytes],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO run_payloads (run_id, hash) VALUES (?1,?2)",
                params![run_id, result.reference.hash],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO effects (key, run_id, at, hash) VALUES (?1,?2,?3,?4)",
                params![key, run_id, now_ms, result.reference.hash],
            )?;
            Ok(())
        })
        .await
    }

    async fn effect(&self, key: &str) -> Result<Option<Value>, Error> {
        let hash: Option<String> = self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT hash FROM effects WHERE key=?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })?;
        match hash {
            Some(h) => self.payload(&h).await,
            None => Ok(None),
        }
    }

    async fn record_call(&self, run_id: &RunId, call: CallRow, result: Option<Payload>) -> Result<bool, Error> {
        let run_id = run_id.to_string();
        self.in_group(move |tx| {
            if let Some(result) = &result {
                tx.prepare_cached("INSERT OR IGNORE INTO payloads (hash, size, body) VALUES (?1,?2,?3)")?
                    .execute(params![result.reference.hash, result.reference.size as i64, result.bytes])?;
                tx.prepare_cached("INSERT OR IGNORE INTO run_payloads (run_id, hash) VALUES (?1,?2)")?
                    .execute(params![run_id, result.reference.hash])?;
            }
            // A success is final; a failure is replaced by the next attempt's call.
            let written = tx.prepare_cached(CALL_RECORD)?.execute(call_params(&run_id, &call))?;
            Ok(written > 0)
        })
        .await
    }

    async fn reserve_call(
        &self,
        run_id: &RunId,
        call: CallRow,
        limits: Vec<Limit>,
    ) -> Result<Option<Overspend>, Error> {
        let run_id = run_id.to_string();
        // The writer is one connection, so no other reservation comes between the sums and the row.
        self.in_group(move |tx| {
            let asked = call.reserved.unwrap_or(Reservation { usd: 0.0, tokens: 0 });
            for limit in &limits {
                let (usd, tokens): (f64, i64) = tx.query_row(
                    &format!("SELECT {HELD} FROM calls WHERE run_id=?1 AND (?2 IS NULL OR step=?2) AND NOT (step=?3 AND n=?4)"),
                    params![run_id, limit.step, call.step_id, call.n],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if let Some(over) = Overspend::check(limit, usd, tokens.max(0) as u64, asked) {
                    return Ok(Some(over));
                }
            }
            tx.prepare_cached(CALL_RECORD)?.execute(call_params(&run_id, &call))?;
            Ok(None)
        })
        .await
    }

    async fn cached_answer(&self, key: &str, now_ms: i64) -> Result<Option<Value>, Error> {
        self.read(|conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT answer FROM response_cache WHERE key=?1 AND expires_at>?2",
                    params![key, now_ms],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
        })
    }

    async fn cache_answer(&self, key: &str, answer: &Value, now_ms: i64, expires_at_ms: i64) -> Result<(), Error> {
        let (key, text) = (key.to_string(), answer.to_string());
        self.in_group(move |tx| {
            tx.execute(
                "INSERT INTO response_cache (key, answer, created_at, expires_at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT (key) DO UPDATE SET answer=excluded.answer, created_at=excluded.created_at,
                   expires_at=excluded.expires_at",
                params![key, text, now_ms, expires_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn spend(&self, runs: &[RunId]) -> Result<BTreeMap<String, Spend>, Error> {
        let ids: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {SPENT} FROM calls WHERE run_id=?1 AND model IS NOT NULL"))?;
            let mut out = BTreeMap::new();
            for id in ids {
                let spend = stmt.query_row(params![id], spend_of)?;
                if spend.calls > 0 {
                    out.insert(id, spend);
                }
            }
            Ok(out)
        })
    }

    async fn cost_report(&self, since_ms: i64, by: CostBy) -> Result<Vec<CostLine>, Error> {
        let key = match by {
            CostBy::Workflow => "r.workflow",
            CostBy::Model => "c.model",
            CostBy::Day => "strftime('%Y-%m-%d', c.at / 1000, 'unixepoch')",
        };
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {key}, COUNT(DISTINCT c.run_id), {SPENT_C} FROM calls c JOIN runs r ON r.id = c.run_id
                 WHERE c.model IS NOT NULL AND c.at >= ?1 GROUP BY 1 ORDER BY 1"
            ))?;
            let rows = stmt.query_map(params![since_ms], |r| {
                Ok(CostLine { key: r.get(0)?, runs: r.get::<_, i64>(1)?.max(0) as u64, spend: spend_at(r, 2)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn calls(&self, run_id: &RunId, step: Option<&str>) -> Result<Vec<CallRow>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT step, n, kind, request_hash, outcome, hash, error, attempt, duration_ms, at,
                   model, tokens_in, tokens_out, cost_usd, reserved_usd, reserved_tokens FROM calls
                 WHERE run_id=?1 AND (?2 IS NULL OR step=?2) ORDER BY step, n",
            )?;
            let rows = stmt.query_map(params![run_id.as_str(), step], |r| {
                Ok(CallRow {
                    step_id: r.get(0)?,
                    n: r.get(1)?,
                    kind: r.get(2)?,
                    request_hash: r.get(3)?,
                    outcome: r.get(4)?,
                    result_hash: r.get(5)?,
                    error: r.get(6)?,
                    attempt: r.get(7)?,
                    duration_ms: r.get::<_, i64>(8)?.max(0) as u64,
                    at_ms: r.get(9)?,
                    cost: match r.get::<_, Option<String>>(10)? {
                        Some(model) => Some(CallCost {
                            model,
                            tokens_in: r.get::<_, Option<i64>>(11)?.unwrap_or(0).max(0) as u64,
                            tokens_out: r.get::<_, Option<i64>>(12)?.unwrap_or(0).max(0) as u64,
                            cost_usd: r.get::<_, Option<f64>>(13)?.unwrap_or(0.0),
                        }),
                        None => None,
                    },
                    reserved: match r.get::<_, Option<f64>>(14)? {
                        Some(usd) => {
                            Some(Reservation { usd, tokens: r.get::<_, Option<i64>>(15)?.unwrap_or(0).max(0) as u64 })
                        }
                        None => None,
                    },
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

impl Registry for SqliteStore {
    async fn put_workflow(&self, name: &str, version: u32, definition: Payload, now_ms: i64) -> Result<bool, Error> {
        let name = name.to_string();
        self.in_group(move |tx| {
            let existing: Option<String> = tx
                .prepare_cached("SELECT definition_hash FROM workflows WHERE name=?1 AND version=?2")?
                .query_row(params![name, version], |r| r.get(0))
                .optional()?;
            match existing {
                Some(hash) if hash == definition.reference.hash => Ok(false),
                Some(_) => Err(Error::VersionExists { name, version }),
                None => {
                    tx.execute(
                        "INSERT OR IGNORE INTO payloads (hash, size, body) VALUES (?1,?2,?3)",
                        params![definition.reference.hash, definition.reference.size as i64, definition.bytes],
                    )?;
                    tx.execute(
                        "INSERT INTO workflows (name, version, definition_hash, created_at) VALUES (?1,?2,?3,?4)",
                        params![name, version, definition.reference.hash, now_ms],
                    )?;
                    Ok(true)
                }
            }
        })
        .await
    }

    async fn workflows(&self) -> Result<Vec<WorkflowRow>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, version, definition_hash, created_at FROM workflows ORDER BY name, version DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(WorkflowRow {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    definition_hash: r.get(2)?,
                    created_at_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn workflow(&self, name: &str, version: Option<u32>) -> Result<(WorkflowRow, Value), Error> {
        let row = self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT name, version, definition_hash, created_at FROM workflows WHERE name=?1 \
                     AND (?2 IS NULL OR version=?2) ORDER BY version DESC LIMIT 1",
                )?
                .query_row(params![name, version], |r| {
                    Ok(WorkflowRow {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        definition_hash: r.get(2)?,
                        created_at_ms: r.get(3)?,
                    })
                })
                .optional()?)
        })?;
        let row = row.ok_or_else(|| match version {
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

impl Access for SqliteStore {
    async fn create_token(&self, t: TokenRow) -> Result<(), Error> {
        // The writer holds the database's write lock for the whole group (`BEGIN IMMEDIATE`), so
        // no other writer, in this process or another, can slip a token in between check and insert.
        self.in_group(move |tx| {
            if let Some(id) = live_token_named(tx, &t.name)?.into_iter().next() {
                return Err(Error::TokenNameTaken { name: t.name, id });
            }
            tx.execute(
                "INSERT INTO tokens (id, name, role, hash, created_at, revoked_at) VALUES (?1,?2,?3,?4,?5,?6)",
                params![t.id, t.name, t.role, t.hash, t.created_at_ms, t.revoked_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, Error> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, name, role, hash, created_at, revoked_at FROM tokens WHERE hash=?1 AND revoked_at IS NULL",
                )?
                .query_row([hash], token_row)
                .optional()?)
        })
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, role, hash, created_at, revoked_at FROM tokens ORDER BY created_at",
            )?;
            let rows = stmt.query_map([], token_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<TokenRow, Error> {
        let key = id_or_name.to_string();
        self.in_group(move |tx| {
            let by_id = tx
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id=?1 AND revoked_at IS NULL"))?
                .query_row([&key], token_row)
                .optional()?;
            let mut token = match by_id {
                Some(t) => t,
                None => {
                    let ids = live_token_named(tx, &key)?;
                    match ids.as_slice() {
                        [] => return Err(Error::TokenNotFound(key)),
                        [id] => tx
                            .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id=?1"))?
                            .query_row([id], token_row)?,
                        _ => return Err(Error::AmbiguousTokenName { name: key, ids }),
                    }
                }
            };
            tx.execute("UPDATE tokens SET revoked_at=?2 WHERE id=?1", params![token.id, now_ms])?;
            token.revoked_at_ms = Some(now_ms);
            Ok(token)
        })
        .await
    }

    async fn audit(&self, a: AuditRow) -> Result<(), Error> {
        self.in_group(move |tx| {
            tx.prepare_cached(
                "INSERT INTO audit (at, actor, method, path, status, run_id) VALUES (?1,?2,?3,?4,?5,?6)",
            )?
            .execute(params![a.at_ms, a.actor, a.method, a.path, a.status, a.run_id])?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, actor, method, path, status, run_id FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok(AuditRow {
                    at_ms: r.get(0)?,
                    actor: r.get(1)?,
                    method: r.get(2)?,
                    path: r.get(3)?,
                    status: r.get(4)?,
                    run_id: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

impl Retention for SqliteStore {
    async fn gc(&self, now_ms: i64, default_retention_ms: u64, dry_run: bool) -> Result<GcReport, Error> {
        let cutoff = now_ms.saturating_sub(default_retention_ms as i64);
        self.in_group(move |tx| {
            tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS gc_runs (id TEXT PRIMARY KEY); DELETE FROM gc_runs;")?;
            tx.execute(
                &format!(
                    "INSERT INTO gc_runs SELECT id FROM runs WHERE status IN {TERMINAL} AND finished_at IS NOT NULL \
                     AND ((retain_until IS NOT NULL AND retain_until<?1) OR (retain_until IS NULL AND finished_at<?2))"
                ),
                params![now_ms, cutoff],
            )?;
            let count = |sql: &str| tx.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64);
            let runs = count("SELECT count(*) FROM gc_runs")?;
            let events = count("SELECT count(*) FROM events WHERE run_id IN (SELECT id FROM gc_runs)")?;
            let orphans = "SELECT hash FROM run_payloads WHERE run_id IN (SELECT id FROM gc_runs) \
                 EXCEPT SELECT hash FROM run_payloads WHERE run_id NOT IN (SELECT id FROM gc_runs) \
                 EXCEPT SELECT definition_hash FROM workflows";
            let payloads = count(&format!("SELECT count(*) FROM ({orphans})"))?;
            if !dry_run {
                tx.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS gc_payloads (hash TEXT PRIMARY KEY); DELETE FROM gc_payloads;
                     INSERT INTO gc_payloads {orphans};
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
                ))?;
                // The audit trail (refused requests too) and processes gone for a day are kept
                // no longer than finished runs.
                tx.execute("DELETE FROM audit WHERE at<?1", [cutoff])?;
                tx.execute("DELETE FROM response_cache WHERE expires_at<=?1", [now_ms])?;
                tx.execute("DELETE FROM workers WHERE seen_at<?1", [now_ms - 86_400_000])?;
            }
            Ok(GcReport { runs, events, payloads })
        })
        .await
    }
}

/// Records a call at its position unless a success is there already (parsed once per connection).
const CALL_RECORD: &str = "INSERT INTO calls (run_id, step, n, kind, request_hash, outcome, hash, error, attempt,
       duration_ms, at, model, tokens_in, tokens_out, cost_usd, reserved_usd, reserved_tokens)
     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)
     ON CONFLICT (run_id, step, n) DO UPDATE SET kind=excluded.kind, request_hash=excluded.request_hash,
       outcome=excluded.outcome, hash=excluded.hash, error=excluded.error, attempt=excluded.attempt,
       duration_ms=excluded.duration_ms, at=excluded.at, model=excluded.model, tokens_in=excluded.tokens_in,
       tokens_out=excluded.tokens_out, cost_usd=excluded.cost_usd, reserved_usd=excluded.reserved_usd,
       reserved_tokens=excluded.reserved_tokens
     WHERE calls.outcome <> 'ok'";

/// What a scope holds against its budgets: settled calls at their cost, reserved ones at their
/// worst case.
const HELD: &str = "COALESCE(SUM(CASE WHEN outcome = 'reserved' THEN reserved_usd ELSE cost_usd END), 0.0),
     COALESCE(SUM(CASE WHEN outcome = 'reserved' THEN reserved_tokens ELSE COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0) END), 0)";

/// What settled calls spent (a reservation not settled yet is no spending).
const SPENT: &str = "COUNT(*) FILTER (WHERE outcome <> 'reserved'),
     COALESCE(SUM(tokens_in) FILTER (WHERE outcome <> 'reserved'), 0),
     COALESCE(SUM(tokens_out) FILTER (WHERE outcome <> 'reserved'), 0),
     COALESCE(SUM(cost_usd) FILTER (WHERE outcome <> 'reserved'), 0.0)";
const SPENT_C: &str = "COUNT(*) FILTER (WHERE c.outcome <> 'reserved'),
     COALESCE(SUM(c.tokens_in) FILTER (WHERE c.outcome <> 'reserved'), 0),
     COALESCE(SUM(c.tokens_out) FILTER (WHERE c.outcome <> 'reserved'), 0),
     COALESCE(SUM(c.cost_usd) FILTER (WHERE c.outcome <> 'reserved'), 0.0)";

/// The parameters `?1`…`?17` of [`CALL_RECORD`].
fn call_params(run_id: &str, call: &CallRow) -> rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>> {
    use rusqlite::types::Value as V;
    let int = |n: u64| V::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let text = |t: &Option<String>| t.clone().map_or(V::Null, V::Text);
    let cost = call.cost.as_ref();
    rusqlite::params_from_iter(vec![
        V::Text(run_id.to_string()),
        V::Text(call.step_id.clone()),
        int(call.n.into()),
        V::Text(call.kind.clone()),
        V::Text(call.request_hash.clone()),
        V::Text(call.outcome.clone()),
        text(&call.result_hash),
        text(&call.error),
        int(call.attempt.into()),
        int(call.duration_ms),
        V::Integer(call.at_ms),
        text(&cost.map(|c| c.model.clone())),
        cost.map_or(V::Null, |c| int(c.tokens_in)),
        cost.map_or(V::Null, |c| int(c.tokens_out)),
        cost.map_or(V::Null, |c| V::Real(c.cost_usd)),
        call.reserved.map_or(V::Null, |r| V::Real(r.usd)),
        call.reserved.map_or(V::Null, |r| int(r.tokens)),
    ])
}

fn spend_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Spend> {
    spend_at(r, 0)
}

fn spend_at(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<Spend> {
    Ok(Spend {
        calls: r.get::<_, i64>(from)?.max(0) as u64,
        tokens_in: r.get::<_, i64>(from + 1)?.max(0) as u64,
        tokens_out: r.get::<_, i64>(from + 2)?.max(0) as u64,
        cost_usd: r.get(from + 3)?,
    })
}
