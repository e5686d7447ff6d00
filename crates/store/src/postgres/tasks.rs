//! Tasks for external workers on PostgreSQL: a claim is one statement whose `FOR UPDATE SKIP
//! LOCKED` lets many workers ask at once without taking the same task or waiting on each other.

use super::PgStore;
use crate::{Error, NewTask, TaskAnswer, TaskClaim, TaskOutcome, TaskRow, TaskState, Tasks};
use tokio_postgres::Row;

const COLUMNS: &str = "token, run_id, step, attempt, queue, kind, input, deadline_at, state, worker, \
                       lease_expires_at, created_at, output, error_class, error_message, retry_after_ms";

fn task_row(r: &Row) -> TaskRow {
    let json = |i: usize| r.get::<_, Option<String>>(i).and_then(|t| serde_json::from_str(&t).ok());
    TaskRow {
        token: r.get(0),
        run_id: r.get(1),
        step: r.get(2),
        attempt: r.get::<_, i64>(3) as u32,
        queue: r.get(4),
        kind: r.get(5),
        input: json(6).unwrap_or(serde_json::Value::Null),
        deadline_ms: r.get(7),
        state: TaskState::parse(&r.get::<_, String>(8)).unwrap_or(TaskState::Cancelled),
        worker: r.get(9),
        lease_expires_at_ms: r.get(10),
        created_at_ms: r.get(11),
        output: json(12),
        error_class: r.get(13),
        error_message: r.get(14),
        retry_after_ms: r.get::<_, Option<i64>>(15).map(|ms| ms.max(0) as u64),
    }
}

impl PgStore {
    /// Why a task a worker names cannot be changed by it.
    async fn refusal(&self, token: &str) -> Result<TaskAnswer, Error> {
        Ok(match self.task(token).await? {
            Some(t) => TaskAnswer::Stale(t.state),
            None => TaskAnswer::Unknown,
        })
    }
}

impl Tasks for PgStore {
    async fn enqueue_task(&self, t: NewTask) -> Result<(), Error> {
        // An older attempt's task is superseded: its worker learns it at its next heartbeat.
        self.execute(
            "UPDATE tasks SET state='cancelled' WHERE run_id=$1 AND step=$2 AND attempt<$3 \
             AND state IN ('ready', 'claimed')",
            &[&t.run_id, &t.step, &i64::from(t.attempt)],
        )
        .await?;
        self.execute(
            "INSERT INTO tasks (token, run_id, step, attempt, queue, kind, input, deadline_at, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'ready', $9) ON CONFLICT (token) DO NOTHING",
            &[
                &t.token,
                &t.run_id,
                &t.step,
                &i64::from(t.attempt),
                &t.queue,
                &t.kind,
                &t.input.to_string(),
                &t.deadline_ms,
                &t.created_at_ms,
            ],
        )
        .await?;
        // Long polls waiting in other processes answer at once.
        self.notify().await;
        Ok(())
    }

    async fn claim_tasks(&self, claim: TaskClaim<'_>) -> Result<Vec<TaskRow>, Error> {
        if claim.queues.is_empty() || claim.limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                &format!(
                    "UPDATE tasks SET state='claimed', worker=$1, lease_expires_at=$2 WHERE token IN \
                     (SELECT token FROM tasks WHERE state='ready' AND queue = ANY($3) \
                      AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) \
                      AND (deadline_at IS NULL OR deadline_at > $6) \
                      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = tasks.run_id \
                      AND r.status IN {terminal}) \
                      ORDER BY created_at, token LIMIT $5 FOR UPDATE SKIP LOCKED) \
                     RETURNING {COLUMNS}",
                    terminal = crate::TERMINAL
                ),
                &[
                    &claim.worker,
                    &claim.lease_until_ms,
                    &claim.queues,
                    &claim.kinds,
                    &(claim.limit as i64),
                    &claim.now_ms,
                ],
            )
            .await?;
        let mut claimed: Vec<TaskRow> = rows.iter().map(task_row).collect();
        claimed.sort_by(|a, b| (a.created_at_ms, &a.token).cmp(&(b.created_at_ms, &b.token)));
        Ok(claimed)
    }

    async fn heartbeat_task(&self, token: &str, worker: &str, lease_until_ms: i64) -> Result<TaskAnswer, Error> {
        let n = self
            .execute(
                "UPDATE tasks SET lease_expires_at=$1 WHERE token=$2 AND worker=$3 AND state='claimed'",
                &[&lease_until_ms, &token, &worker],
            )
            .await?;
        if n == 1 { Ok(TaskAnswer::Ok) } else { self.refusal(token).await }
    }

    async fn finish_task(
        &self,
        token: &str,
        worker: &str,
        outcome: TaskOutcome,
        now_ms: i64,
    ) -> Result<TaskAnswer, Error> {
        let n = match outcome {
            TaskOutcome::Done(output) => {
                self.execute(
                    "UPDATE tasks SET state='done', output=$1 WHERE token=$2 AND worker=$3 AND state='claimed' \
                     AND lease_expires_at>=$4 AND (deadline_at IS NULL OR deadline_at>$4)",
                    &[&output.to_string(), &token, &worker, &now_ms],
                )
                .await?
            }
            TaskOutcome::Failed { class, message, retry_after_ms } => {
                self.execute(
                    "UPDATE tasks SET state='failed', error_class=$1, error_message=$2, retry_after_ms=$3 \
                     WHERE token=$4 AND worker=$5 AND state='claimed' AND lease_expires_at>=$6 AND (deadline_at IS NULL OR deadline_at>$6)",
                    &[&class, &message, &retry_after_ms.map(|ms| ms as i64), &token, &worker, &now_ms],
                )
                .await?
            }
        };
        if n != 1 {
            return self.refusal(token).await;
        }
        // The attempt waiting for it may be in another process.
        self.notify().await;
        Ok(TaskAnswer::Ok)
    }

    async fn expire_task(&self, token: &str, now_ms: i64) -> Result<bool, Error> {
        let n = self
            .execute(
                "UPDATE tasks SET state='lost' WHERE token=$1 AND state='claimed' AND lease_expires_at<$2",
                &[&token, &now_ms],
            )
            .await?;
        Ok(n == 1)
    }

    async fn cancel_task(&self, token: &str) -> Result<bool, Error> {
        let n = self
            .execute("UPDATE tasks SET state='cancelled' WHERE token=$1 AND state IN ('ready','claimed')", &[&token])
            .await?;
        Ok(n == 1)
    }

    async fn withdraw_task(&self, token: &str, attempt: u32) -> Result<bool, Error> {
        let n = self
            .execute(
                "UPDATE tasks SET state='cancelled' WHERE token=$1 AND attempt=$2 AND state IN ('ready','claimed')",
                &[&token, &i64::from(attempt)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn adopt_task(&self, token: &str, attempt: u32) -> Result<bool, Error> {
        let n = self
            .execute(
                "UPDATE tasks SET attempt=$2 WHERE token=$1 AND attempt<$2 AND state IN ('ready','claimed','done')",
                &[&token, &i64::from(attempt)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn task(&self, token: &str) -> Result<Option<TaskRow>, Error> {
        let rows = self.query(&format!("SELECT {COLUMNS} FROM tasks WHERE token=$1"), &[&token]).await?;
        Ok(rows.first().map(task_row))
    }

    async fn latest_task(&self, run_id: &str, step: &str) -> Result<Option<TaskRow>, Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks WHERE run_id=$1 AND step=$2 ORDER BY attempt DESC, created_at DESC LIMIT 1"
        );
        let rows = self.query(&sql, &[&run_id, &step]).await?;
        Ok(rows.first().map(task_row))
    }
}
