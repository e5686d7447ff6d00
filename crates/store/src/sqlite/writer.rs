//! The writer thread: group commit of everything that writes.

use crate::{Error, RunWrite};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;
use tokio::sync::oneshot;

/// Most writes folded into one commit.
const MAX_GROUP: usize = 512;

/// Work that runs inside a group commit, in its own savepoint.
pub type TxJob = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(), Error> + Send>;

pub enum Msg {
    Write(Arc<RunWrite>, oneshot::Sender<Result<(), Error>>),
    Tx(TxJob, oneshot::Sender<Result<(), Error>>),
}

pub fn run(mut conn: Connection, rx: mpsc::Receiver<Msg>, path: PathBuf, health: crate::WriteHealth) {
    let mut pending: Vec<Msg> = Vec::new();
    while let Ok(first) = rx.recv() {
        pending.push(first);
        while pending.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(m) => pending.push(m),
                Err(_) => break,
            }
        }
        let failed = commit_group(&mut conn, &mut pending, &path);
        health.note(failed.as_ref());
    }
}

fn reply_of(m: Msg) -> oneshot::Sender<Result<(), Error>> {
    match m {
        Msg::Write(_, r) | Msg::Tx(_, r) => r,
    }
}

/// Commits a group; returns why writes failed for want of the store (disk full, I/O), if they did.
///
/// Run writes go first, without savepoints: a write its fence refuses (the run moved on, the key
/// is taken) is refused before it changed anything. (A savepoint per write made SQLite copy every
/// page the write touched into a statement journal: ≈ 13 % of the writer's time.) Should a write
/// fail after it changed something, the group is rolled back and its writes done again each in
/// its savepoint. Jobs go last, each in its savepoint (they cannot be run twice).
fn commit_group(conn: &mut Connection, pending: &mut Vec<Msg>, path: &Path) -> Option<Error> {
    let started = Instant::now();
    let writes = pending.len();
    // The requests of a group are independent: writes first, then jobs, each in arrival order.
    pending.sort_by_key(|m| matches!(m, Msg::Tx(..)));
    let mut replies = Vec::with_capacity(pending.len());
    let result = (|| -> Result<Vec<Result<(), Error>>, Error> {
        let runs: Vec<Arc<RunWrite>> = pending
            .iter()
            .filter_map(|m| match m {
                Msg::Write(w, _) => Some(w.clone()),
                Msg::Tx(..) => None,
            })
            .collect();
        let mut results = Vec::with_capacity(pending.len());
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for w in &runs {
            match apply_write(&tx, w) {
                Ok(()) => results.push(Ok(())),
                Err(Failed::Refused(e)) => results.push(Err(e)),
                Err(Failed::Broken(_)) => break,
            }
        }
        if results.len() < runs.len() {
            tx.rollback()?;
            results.clear();
            tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for w in &runs {
                results.push(in_savepoint(&tx, |tx| apply_write(tx, w).map_err(Failed::into_error))?);
            }
        }
        for msg in pending.drain(..) {
            match msg {
                Msg::Write(_, reply) => replies.push(reply),
                Msg::Tx(job, reply) => {
                    replies.push(reply);
                    results.push(in_savepoint(&tx, job)?);
                }
            }
        }
        tx.commit()?;
        Ok(results)
    })();
    // Anything not yet taken from `pending` (an error before the loop) fails with the group.
    replies.extend(pending.drain(..).map(reply_of));
    let transient = |r: &Result<(), Error>| r.as_ref().err().and_then(Error::write_failure_copy);
    match result {
        Ok(results) => {
            crate::observe::committed("sqlite", writes, started.elapsed());
            let failed = results.iter().find_map(transient);
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
            failed
        }
        Err(e) => {
            let busy = matches!(e, Error::Sqlite(ref s) if matches!(s.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)));
            let damaged = matches!(e, Error::Sqlite(ref s) if matches!(s.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)));
            for reply in replies {
                let err = match &e {
                    _ if busy => Error::Locked {
                        path: path.display().to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    },
                    Error::Full(m) => Error::Full(m.clone()),
                    Error::Unavailable(m) => Error::Unavailable(m.clone()),
                    _ if damaged => Error::Corrupt(format!("commit failed: {e}")),
                    other => Error::Unavailable(format!("the commit failed: {other}")),
                };
                let _ = reply.send(Err(err));
            }
            Some(match e {
                Error::Full(m) => Error::Full(m),
                other => Error::Unavailable(other.to_string()),
            })
        }
    }
}

/// Runs `f` in a savepoint of its own: its changes kept if it succeeds, undone if it fails.
fn in_savepoint(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), Error>,
) -> Result<Result<(), Error>, Error> {
    tx.prepare_cached("SAVEPOINT w")?.execute([])?;
    let outcome = f(tx);
    if outcome.is_err() {
        tx.prepare_cached("ROLLBACK TO w")?.execute([])?;
    }
    tx.prepare_cached("RELEASE w")?.execute([])?;
    Ok(outcome)
}

/// Why a run write did not go in.
enum Failed {
    /// Refused by its fence, before it changed anything.
    Refused(Error),
    /// Failed after it changed something: only a savepoint (or the whole group) undoes it.
    Broken(Error),
}

impl Failed {
    fn into_error(self) -> Error {
        match self {
            Failed::Refused(e) | Failed::Broken(e) => e,
        }
    }
}

fn apply_write(tx: &rusqlite::Transaction<'_>, w: &RunWrite) -> Result<(), Failed> {
    fence(tx, w).map_err(|e| match e {
        // Refusals come from rows found (or not): nothing was changed.
        e @ (Error::Conflict { .. } | Error::IdempotencyKey { .. } | Error::RequestsWaiting { .. }) => {
            Failed::Refused(e)
        }
        // An I/O error, a full disk: SQLite may have rolled the whole transaction back.
        other => Failed::Broken(other),
    })?;
    write_rows(tx, w).map_err(Failed::Broken)
}

/// The run's row, written only if the write is still the run's next (creation: the run and its
/// idempotency key are new; otherwise its journal position and owner are as the writer saw
/// them). Nothing is changed when it refuses: every check comes before the one statement that
/// writes, and a statement that fails is undone by SQLite.
fn fence(tx: &rusqlite::Transaction<'_>, w: &RunWrite) -> Result<(), Error> {
    let r = &w.run;
    if w.answers_every_request {
        let mut waiting = tx.prepare_cached(super::PENDING_IDS)?;
        for id in waiting.query_map([&r.id], |row| row.get::<_, i64>(0))? {
            let id = id?;
            if !w.requests.iter().any(|q| q.id == id) {
                return Err(Error::RequestsWaiting { run_id: r.id.clone() });
            }
        }
    }
    let (owner, lease) = if w.release { (None, None) } else { (Some(w.owner.as_str()), Some(w.lease_until_ms)) };
    // A held run needs no wake time: its owner drives it, and if the owner dies the expired
    // lease is what gets it claimed. Only runs let go of carry one.
    let wake_at = if w.release { r.wake_at_ms } else { None };
    if w.expected_seq == 0 {
        if let Some(idem) = &w.idempotency {
            let existing: Option<(String, String)> = tx
                .prepare_cached("SELECT run_id, request_hash FROM idempotency WHERE key=?1")?
                .query_row([&idem.key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some((run_id, hash)) = existing {
                return Err(Error::IdempotencyKey {
                    key: idem.key.clone(),
                    run_id,
                    same_request: hash == idem.request_hash,
                });
            }
        }
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO runs (id, workflow, definition_version, status, goal, current_step, failure_class, \
                 failure_message, failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, \
                 definition_hash, output_hash, artifact, wake_at, retain_until) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)",
            )?
            .execute(params![
                r.id,
                r.workflow,
                r.definition_version,
                r.status,
                r.goal,
                r.current_step,
                r.failure_class,
                r.failure_message,
                r.failed_step,
                r.last_seq as i64,
                owner,
                lease,
                r.created_at_ms,
                r.updated_at_ms,
                r.finished_at_ms,
                r.definition_hash,
                r.output_hash,
                r.artifact,
                wake_at,
                r.retain_until_ms
            ])?;
        if inserted == 0 {
            return Err(Error::Conflict { run_id: r.id.clone(), expected: 0 });
        }
    } else {
        let updated = tx
            .prepare_cached(
                "UPDATE runs SET definition_version=?2, status=?3, current_step=?4, failure_class=?5, failure_message=?6, \
                 failed_step=?7, last_seq=?8, updated_at=?9, finished_at=?10, definition_hash=?11, output_hash=?12, \
                 artifact=?13, owner=?14, lease_expires_at=?15, wake_at=?16, retain_until=?17 \
                 WHERE id=?1 AND last_seq=?18 AND owner=?19",
            )?
            .execute(params![
                r.id,
                r.definition_version,
                r.status,
                r.current_step,
                r.failure_class,
                r.failure_message,
                r.failed_step,
                r.last_seq as i64,
                r.updated_at_ms,
                r.finished_at_ms,
                r.definition_hash,
                r.output_hash,
                r.artifact,
                owner,
                lease,
                wake_at,
                r.retain_until_ms,
                w.expected_seq as i64,
                w.owner
            ])?;
        if updated == 0 {
            return Err(Error::Conflict { run_id: r.id.clone(), expected: w.expected_seq });
        }
    }
    Ok(())
}

/// Everything else the write records, once its fence let it through.
fn write_rows(tx: &rusqlite::Transaction<'_>, w: &RunWrite) -> Result<(), Error> {
    let r = &w.run;
    if w.expected_seq == 0
        && let Some(idem) = &w.idempotency
    {
        tx.prepare_cached("INSERT INTO idempotency (key, run_id, request_hash, created_at) VALUES (?1,?2,?3,?4)")?
            .execute(params![idem.key, r.id, idem.request_hash, r.created_at_ms])?;
    }
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO events (run_id, seq, at, kind, schema, step_id, body) VALUES (?1,?2,?3,?4,?5,?6,?7)",
        )?;
        for e in &w.events {
            ins.execute(params![r.id, e.seq as i64, e.at_ms, e.kind, e.schema, e.step, e.body])?;
        }
    }
    if !w.payloads.is_empty() {
        let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO payloads (hash, size, body) VALUES (?1,?2,?3)")?;
        let mut link = tx.prepare_cached("INSERT OR IGNORE INTO run_payloads (run_id, hash) VALUES (?1,?2)")?;
        for p in &w.payloads {
            ins.execute(params![p.reference.hash, p.reference.size as i64, p.bytes])?;
            link.execute(params![r.id, p.reference.hash])?;
        }
    }
    if !w.steps.is_empty() {
        let mut up = tx.prepare_cached(
            "INSERT INTO steps (run_id, step_id, position, kind, status, attempts, not_before, started_at, finished_at, \
             busy_ms, error_class, error_message, output_hash, skip_reason) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14) \
             ON CONFLICT(run_id, step_id) DO UPDATE SET position=excluded.position, status=excluded.status, attempts=excluded.attempts, \
             not_before=excluded.not_before, started_at=excluded.started_at, finished_at=excluded.finished_at, \
             busy_ms=excluded.busy_ms, error_class=excluded.error_class, error_message=excluded.error_message, \
             output_hash=excluded.output_hash, skip_reason=excluded.skip_reason",
        )?;
        for s in &w.steps {
            up.execute(params![
                r.id,
                s.step_id,
                s.position,
                s.kind,
                s.status,
                s.attempts,
                s.not_before_ms,
                s.started_at_ms,
                s.finished_at_ms,
                s.busy_ms as i64,
                s.error_class,
                s.error_message,
                s.output_hash,
                s.skip_reason
            ])?;
        }
    }
    if !w.requests.is_empty() {
        let mut answer = tx.prepare_cached(
            "UPDATE inbox SET state=?2, code=?3, message=?4, journal_seq=?5, decided_at=?6 \
             WHERE id=?1 AND run_id=?7 AND state='pending'",
        )?;
        for q in &w.requests {
            let n = answer.execute(params![
                q.id,
                q.state.as_str(),
                q.code,
                q.message,
                q.journal_seq.map(|s| s as i64),
                q.decided_at_ms,
                r.id
            ])?;
            // Only the run's one decider answers its requests; an answered request is never
            // answered again.
            if n != 1 {
                return Err(Error::Conflict { run_id: r.id.clone(), expected: w.expected_seq });
            }
        }
    }
    // After the answers: a request answered here no longer wakes its run. (A run's last write
    // found none waiting that it does not answer, in its fence: nothing can wake it.)
    if w.release && !w.answers_every_request {
        wake_if_inbox(tx, &r.id)?;
    }
    for n in &w.notify {
        push_request(tx, &n.run_id, &n.body, r.updated_at_ms)?;
    }
    if !w.logs.is_empty() {
        let mut ins = tx.prepare_cached(
            "INSERT INTO logs (run_id, step_id, attempt, at, level, message) VALUES (?1,?2,?3,?4,?5,?6)",
        )?;
        for l in &w.logs {
            ins.execute(params![r.id, l.step_id, l.attempt, l.at_ms, l.level, l.message])?;
        }
    }
    Ok(())
}

/// Accepts a request into a run's inbox (`None`: the run is finished or unknown) and makes the
/// run due now, so some worker looks at it even if it was idle.
pub(super) fn push_request(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    body: &str,
    now: i64,
) -> Result<Option<i64>, Error> {
    let open: Option<i64> = tx
        .prepare_cached(&format!("SELECT 1 FROM runs WHERE id=?1 AND status NOT IN {}", crate::TERMINAL))?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if open.is_none() {
        return Ok(None);
    }
    // Acceptance times never go back within a run (clocks of different requesters differ).
    tx.prepare_cached(
        "INSERT INTO inbox (run_id, body, created_at) \
         SELECT ?1, ?2, MAX(?3, COALESCE((SELECT MAX(created_at) FROM inbox WHERE run_id=?1), ?3))",
    )?
    .execute(params![id, body, now])?;
    let request = tx.last_insert_rowid();
    tx.prepare_cached("UPDATE runs SET wake_at=MIN(COALESCE(wake_at, ?2), ?2) WHERE id=?1")?
        .execute(params![id, now])?;
    Ok(Some(request))
}

/// A run let go while requests wait in its inbox must be picked up at once, whatever its own
/// next wake time is.
///
/// Asked on every release, and almost always answered "nothing waits": that question is a
/// statement of its own, cheaper than the update. (Before the connections fixed their plans,
/// see `open_raw`, one statement doing both was also compiled again on every use.)
pub fn wake_if_inbox(tx: &rusqlite::Transaction<'_>, run_id: &str) -> Result<(), Error> {
    let waiting: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM inbox WHERE run_id=?1 AND state='pending')")?
        .query_row([run_id], |r| r.get(0))?;
    if waiting {
        tx.prepare_cached(
            "UPDATE runs SET wake_at=(SELECT MIN(created_at) FROM inbox WHERE run_id=?1 AND state='pending') \
             WHERE id=?1",
        )?
        .execute([run_id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, StatementStatus};

    /// The question asked on every release stays compiled: binding another run's id does not
    /// make SQLite prepare it again.
    #[test]
    fn asking_whether_requests_wait_does_not_recompile_the_statement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).expect("open");
        super::super::migrate(&mut conn, &path).expect("schema");
        let tx = conn.transaction().expect("tx");
        tx.execute(
            "INSERT INTO runs (id, workflow, status, last_seq, created_at, updated_at) VALUES ('wf_b', 'w', 'WAITING', 1, 1, 1)",
            [],
        )
        .expect("run");
        tx.execute("INSERT INTO inbox (run_id, body, created_at) VALUES ('wf_b', '{}', 42)", []).expect("request");
        for id in ["wf_a", "wf_b", "wf_c", "wf_d", "wf_e"] {
            super::wake_if_inbox(&tx, id).expect("wake");
        }
        let asked = "SELECT EXISTS (SELECT 1 FROM inbox WHERE run_id=?1 AND state='pending')";
        assert_eq!(tx.prepare_cached(asked).expect("cached").get_status(StatementStatus::RePrepare), 0);
        // The run with a pending request is woken at the request's time.
        let at: Option<i64> = tx.query_row("SELECT wake_at FROM runs WHERE id='wf_b'", [], |r| r.get(0)).expect("row");
        assert_eq!(at, Some(42));
    }
}
