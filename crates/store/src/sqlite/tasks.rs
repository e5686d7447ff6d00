//! Tasks for external workers on SQLite: every change goes through the single writer's group
//! commit, so a claim is exclusive without locks.

use super::SqliteStore;
use crate::{Error, NewTask, TaskAnswer, TaskClaim, TaskOutcome, TaskRow, TaskState, Tasks};
use rusqlite::{OptionalExtension, params};

const COLUMNS: &str = "token, run_id, step, attempt, queue, kind, input, deadline_at, state, worker, \
                       lease_expires_at, created_at, output, error_class, error_message, retry_after_ms";

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    let json = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        let text: Option<String> = r.get(i)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    let state: String = r.get(8)?;
    Ok(TaskRow {
        token: r.get(0)?,
        run_id: r.get(1)?,
        step: r.get(2)?,
        attempt: r.get(3)?,
        queue: r.get(4)?,
        kind: r.get(5)?,
        input: json(6)?.unwrap_or(serde_json::Value::Null),
        deadline_ms: r.get(7)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Cancelled),
        worker: r.get(9)?,
        lease_expires_at_ms: r.get(10)?,
        created_at_ms: r.get(11)?,
        output: json(12)?,
        error_class: r.get(13)?,
        error_message: r.get(14)?,
        retry_after_ms: r.get::<_, Option<i64>>(15)?.map(|ms| ms.max(0) as u64),
    })
}

fn get(conn: &rusqlite::Connection, token: &str) -> Result<Option<TaskRow>, Error> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE token=?1"))?
        .query_row([token], task_row)
        .optional()?)
}

/// Why a task a worker names cannot be changed by it.
fn refusal(conn: &rusqlite::Connection, token: &str) -> Result<TaskAnswer, Error> {
    Ok(match get(conn, token)? {
        Some(t) => TaskAnswer::Stale(t.state),
        None => TaskAnswer::Unknown,
    })
}

impl Tasks for SqliteStore {
    async fn enqueue_task(&self, t: NewTask) -> Result<(), Error> {
        self.in_group(move |tx| {
            // An older attempt's task is superseded: its worker learns it at its next heartbeat.
            tx.prepare_cached(
                "UPDATE tasks SET state='cancelled' WHERE run_id=?1 AND step=?2 AND attempt<?3 \
                 AND state IN ('ready', 'claimed')",
            )?
            .execute(params![t.run_id, t.step, t.attempt])?;
            tx.prepare_cached(
                "INSERT INTO tasks (token, run_id, step, attempt, queue, kind, input, deadline_at, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'ready', ?9) ON CONFLICT (token) DO NOTHING",
            )?
            .execute(params![
                t.token,
                t.run_id,
                t.step,
                t.attempt,
                t.queue,
                t.kind,
                t.input.to_string(),
                t.deadline_ms,
                t.created_at_ms
            ])?;
            Ok(())
        })
        .await
    }

    async fn claim_tasks(&self, claim: TaskClaim<'_>) -> Result<Vec<TaskRow>, Error> {
        if claim.queues.is_empty() || claim.limit == 0 {
            return Ok(Vec::new());
        }
        let (queues, kinds) = (claim.queues.to_vec(), claim.kinds.to_vec());
        let (worker, until, limit, now) = (claim.worker.to_string(), claim.lease_until_ms, claim.limit, claim.now_ms);
        self.in_group(move |tx| {
            let marks = |n: usize, from: usize| (from..from + n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(",");
            let mut sql = format!(
                "SELECT token FROM tasks WHERE state='ready' AND queue IN ({}) \
                 AND (deadline_at IS NULL OR deadline_at > {now}) \
                 AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = tasks.run_id AND r.status IN {})",
                marks(queues.len(), 1),
                crate::TERMINAL
            );
            if !kinds.is_empty() {
                sql.push_str(&format!(" AND kind IN ({})", marks(kinds.len(), queues.len() + 1)));
            }
            sql.push_str(&format!(" ORDER BY created_at, token LIMIT {limit}"));
            let values: Vec<&dyn rusqlite::ToSql> =
                queues.iter().chain(kinds.iter()).map(|v| v as &dyn rusqlite::ToSql).collect();
            let tokens: Vec<String> =
                tx.prepare(&sql)?.query_map(values.as_slice(), |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut take = tx.prepare_cached(
                "UPDATE tasks SET state='claimed', worker=?1, lease_expires_at=?2 WHERE token=?3 AND state='ready'",
            )?;
            let mut claimed = Vec::with_capacity(tokens.len());
            for token in tokens {
                if take.execute(params![worker, until, token])? == 1
                    && let Some(row) = get(tx, &token)?
                {
                    claimed.push(row);
                }
            }
            Ok(claimed)
        })
        .await
    }

    async fn heartbeat_task(&self, token: &str, worker: &str, lease_until_ms: i64) -> Result<TaskAnswer, Error> {
        let (token, worker) = (token.to_string(), worker.to_string());
        self.in_group(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE tasks SET lease_expires_at=?1 WHERE token=?2 AND worker=?3 AND state='claimed'",
                )?
                .execute(params![lease_until_ms, token, worker])?;
            if n == 1 { Ok(TaskAnswer::Ok) } else { refusal(tx, &token) }
        })
        .await
    }

    async fn finish_task(
        &self,
        token: &str,
        worker: &str,
        outcome: TaskOutcome,
        now_ms: i64,
    ) -> Result<TaskAnswer, Error> {
        let (token, worker) = (token.to_string(), worker.to_string());
        self.in_group(move |tx| {
            let n = match outcome {
                TaskOutcome::Done(output) => tx
                    .prepare_cached(
                        "UPDATE tasks SET state='done', output=?1 WHERE token=?2 AND worker=?3 AND state='claimed' \
                         AND lease_expires_at>=?4 AND (deadline_at IS NULL OR deadline_at>?4)",
                    )?
                    .execute(params![output.to_string(), token, worker, now_ms])?,
                TaskOutcome::Failed { class, message, retry_after_ms } => tx
                    .prepare_cached(
                        "UPDATE tasks SET state='failed', error_class=?1, error_message=?2, retry_after_ms=?3 \
                         WHERE token=?4 AND worker=?5 AND state='claimed' AND lease_expires_at>=?6 AND (deadline_at IS NULL OR deadline_at>?6)",
                    )?
                    .execute(params![class, message, retry_after_ms.map(|ms| ms as i64), token, worker, now_ms])?,
            };
            if n == 1 { Ok(TaskAnswer::Ok) } else { refusal(tx, &token) }
        })
        .await
    }

    async fn expire_task(&self, token: &str, now_ms: i64) -> Result<bool, Error> {
        let token = token.to_string();
        self.in_group(move |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE tasks SET state='lost' WHERE token=?1 AND state='claimed' AND lease_expires_at<?2",
                )?
                .execute(params![token, now_ms])?
                == 1)
        })
        .await
    }

    async fn cancel_task(&self, token: &str) -> Result<bool, Error> {
        let token = token.to_string();
        self.in_group(move |tx| {
            Ok(tx
                .prepare_cached("UPDATE tasks SET state='cancelled' WHERE token=?1 AND state IN ('ready','claimed')")?
                .execute([token])?
                == 1)
        })
        .await
    }

    async fn withdraw_task(&self, token: &str, attempt: u32) -> Result<bool, Error> {
        let token = token.to_string();
        self.in_group(move |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE tasks SET state='cancelled' WHERE token=?1 AND attempt=?2 AND state IN ('ready','claimed')",
                )?
                .execute(params![token, attempt])?
                == 1)
        })
        .await
    }

    async fn adopt_task(&self, token: &str, attempt: u32) -> Result<bool, Error> {
        let token = token.to_string();
        self.in_group(move |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE tasks SET attempt=?2 WHERE token=?1 AND attempt<?2 AND state IN ('ready','claimed','done')",
                )?
                .execute(params![token, attempt])?
                == 1)
        })
        .await
    }

    async fn task(&self, token: &str) -> Result<Option<TaskRow>, Error> {
        self.read(|conn| get(conn, token))
    }

    async fn latest_task(&self, run_id: &str, step: &str) -> Result<Option<TaskRow>, Error> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tasks WHERE run_id=?1 AND step=?2 ORDER BY attempt DESC, created_at DESC LIMIT 1"
                ))?
                .query_row([run_id, step], task_row)
                .optional()?)
        })
    }
}
