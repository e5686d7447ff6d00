//! The embedded SQLite backend.
//!
//! One writer thread owns the write connection and *group-commits*: it takes every write that is
//! waiting (from all runs), applies each inside its own savepoint, and commits them with a single
//! fsync. Readers use a second connection (WAL lets them read while the writer writes).
//!
//! Durability: with `Durability::Full` (the default; `synchronous=FULL`) a commit that returned
//! survives a process crash *and* power loss. With `Durability::Normal` (`synchronous=NORMAL`) it
//! survives a process crash; a power loss may undo the last few commits, never corrupt the file.

use crate::{Claim, Error, LoadedRun, LogLine, RunQuery, RunRow, RunWrite, StepRow, Store};
use cairn_core::{Envelope, Event, RunId};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Marks a file as Cairn's (`PRAGMA application_id`): "CARN".
const APPLICATION_ID: i64 = 0x4341_524E;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most writes folded into one commit.
const MAX_GROUP: usize = 512;

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    definition_version INTEGER,
    status TEXT NOT NULL,
    goal TEXT,
    current_step TEXT,
    failure_class TEXT,
    failure_message TEXT,
    failed_step TEXT,
    last_seq INTEGER NOT NULL,
    owner TEXT,
    lease_expires_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER,
    definition_hash TEXT,
    output_hash TEXT,
    artifact TEXT
);
CREATE INDEX runs_by_status ON runs(status, created_at);
CREATE INDEX runs_by_created ON runs(created_at);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    not_before INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    busy_ms INTEGER NOT NULL,
    error_class TEXT,
    error_message TEXT,
    output_hash TEXT,
    skip_reason TEXT,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    schema INTEGER NOT NULL,
    step_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE payloads (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE run_payloads (
    run_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;
CREATE TABLE logs (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_run ON logs(run_id, step_id);
"#];

/// How hard a commit tries to survive failures; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Full,
    Normal,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Durability> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Some(Durability::Full),
            "normal" => Some(Durability::Normal),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full (synchronous=FULL: survives process crash and power loss)",
            Durability::Normal => "normal (synchronous=NORMAL: survives process crash, not power loss)",
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;
/// A write waiting for the next group commit, with where to send its result.
type Pending = (Box<RunWrite>, oneshot::Sender<Result<(), Error>>);

enum Msg {
    Write(Box<RunWrite>, oneshot::Sender<Result<(), Error>>),
    /// Runs alone in the writer thread (claims, heartbeats).
    Job(Job),
}

pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    tx: Mutex<mpsc::Sender<Msg>>,
    reader: Mutex<Connection>,
}

fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    let p = path.display().to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            Error::NotOurs { path: p, detail: "the file is not an SQLite database".into() }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::Locked { path: p, waited_ms: BUSY_TIMEOUT.as_millis() as u64 }
        }
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            Error::Open { path: p, detail: e.to_string() }
        }
        _ => Error::Open { path: p, detail: e.to_string() },
    }
}

fn open_raw(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(path, e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn set_pragmas(conn: &Connection, path: &Path, durability: Durability) -> Result<(), Error> {
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF;"))
        .map_err(|e| open_error(path, e))
}

/// Refuses files that are not Cairn's (or are from a newer Cairn) *before* changing anything in
/// them; returns whether migrations are needed.
fn check_ownership(conn: &Connection, path: &Path) -> Result<bool, Error> {
    let p = path.display().to_string();
    let read = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(|e| open_error(path, e));
    let app_id = read("PRAGMA application_id")?;
    let version = read("PRAGMA user_version")?;
    let tables = read("SELECT count(*) FROM sqlite_master WHERE type='table'")?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(Error::NotOurs {
            path: p,
            detail: format!("it is an SQLite database with {tables} tables of another application"),
        });
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::NewerSchema { path: p, found: version, known });
    }
    Ok(app_id != APPLICATION_ID || version < known)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let tx =
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| open_error(path, e))?;
    // Another process may have migrated (or claimed the file) while we waited for the lock.
    check_ownership(&tx, path)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies migrations.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<SqliteStore, Error> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            return Err(Error::Open {
                path: path.display().to_string(),
                detail: format!("directory {} does not exist", parent.display()),
            });
        }
        let mut writer = open_raw(&path)?;
        let needs_migration = check_ownership(&writer, &path)?;
        set_pragmas(&writer, &path, durability)?;
        if needs_migration {
            migrate(&mut writer, &path)?;
        }
        let reader = open_raw(&path)?;
        set_pragmas(&reader, &path, durability)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, thread_path))
            .map_err(|e| Error::Open { path: path.display().to_string(), detail: e.to_string() })?;
        Ok(SqliteStore { path, durability, tx: Mutex::new(tx), reader: Mutex::new(reader) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn send(&self, msg: Msg) -> Result<(), Error> {
        let tx = self.tx.lock().map_err(|_| Error::Closed)?;
        tx.send(msg).map_err(|_| Error::Closed)
    }

    /// Runs a job on the writer thread and waits for its result.
    async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Job(Box::new(move |conn| {
            let _ = reply.send(f(conn));
        })))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.reader.lock().map_err(|_| Error::Closed)?;
        f(&conn)
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Msg>, path: PathBuf) {
    let mut pending: Vec<Pending> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut jobs: Vec<Job> = Vec::new();
        match first {
            Msg::Write(w, r) => pending.push((w, r)),
            Msg::Job(j) => jobs.push(j),
        }
        while pending.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Write(w, r)) => pending.push((w, r)),
                Ok(Msg::Job(j)) => jobs.push(j),
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            commit_group(&mut conn, &mut pending, &path);
        }
        for job in jobs {
            job(&mut conn);
        }
    }
}

fn commit_group(conn: &mut Connection, pending: &mut Vec<Pending>, path: &Path) {
    let started = Instant::now();
    let result = (|| -> Result<Vec<Result<(), Error>>, Error> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(pending.len());
        for (w, _) in pending.iter() {
            tx.execute_batch("SAVEPOINT w")?;
            match apply_write(&tx, w) {
                Ok(()) => {
                    tx.execute_batch("RELEASE w")?;
                    results.push(Ok(()));
                }
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO w; RELEASE w")?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit()?;
        Ok(results)
    })();
    match result {
        Ok(results) => {
            for ((_, reply), r) in pending.drain(..).zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            let busy = matches!(e, Error::Sqlite(ref s) if matches!(s.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)));
            for (_, reply) in pending.drain(..) {
                let err = if busy {
                    Error::Locked { path: path.display().to_string(), waited_ms: started.elapsed().as_millis() as u64 }
                } else {
                    Error::Corrupt(format!("commit failed: {e}"))
                };
                let _ = reply.send(Err(err));
            }
        }
    }
}

fn apply_write(tx: &rusqlite::Transaction<'_>, w: &RunWrite) -> Result<(), Error> {
    let r = &w.run;
    if w.expected_seq == 0 {
        let inserted = tx.prepare_cached(
            "INSERT OR IGNORE INTO runs (id, workflow, definition_version, status, goal, current_step, failure_class, \
             failure_message, failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, \
             definition_hash, output_hash, artifact) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
        )?
        .execute(params![
            r.id, r.workflow, r.definition_version, r.status, r.goal, r.current_step, r.failure_class,
            r.failure_message, r.failed_step, r.last_seq as i64, w.owner, w.lease_until_ms, r.created_at_ms,
            r.updated_at_ms, r.finished_at_ms, r.definition_hash, r.output_hash, r.artifact
        ])?;
        if inserted == 0 {
            return Err(Error::Conflict { run_id: r.id.clone(), expected: 0 });
        }
    } else {
        let updated = tx
            .prepare_cached(
                "UPDATE runs SET definition_version=?2, status=?3, current_step=?4, failure_class=?5, failure_message=?6, \
                 failed_step=?7, last_seq=?8, updated_at=?9, finished_at=?10, definition_hash=?11, output_hash=?12, \
                 artifact=?13, lease_expires_at=?14 WHERE id=?1 AND last_seq=?15 AND owner=?16",
            )?
            .execute(params![
                r.id, r.definition_version, r.status, r.current_step, r.failure_class, r.failure_message,
                r.failed_step, r.last_seq as i64, r.updated_at_ms, r.finished_at_ms, r.definition_hash,
                r.output_hash, r.artifact, w.lease_until_ms, w.expected_seq as i64, w.owner
            ])?;
        if updated == 0 {
            return Err(Error::Conflict { run_id: r.id.clone(), expected: w.expected_seq });
        }
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
             ON CONFLICT(run_id, step_id) DO UPDATE SET status=excluded.status, attempts=excluded.attempts, \
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

const RUN_COLUMNS: &str = "id, workflow, definition_version, status, goal, current_step, failure_class, failure_message, \
     failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, definition_hash, output_hash, artifact";

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
    })
}

fn get_run(conn: &Connection, id: &RunId) -> Result<RunRow, Error> {
    conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id=?1"))?
        .query_row([id.as_str()], run_row)
        .optional()?
        .ok_or_else(|| Error::NotFound(id.to_string()))
}

fn read_events(conn: &Connection, id: &RunId) -> Result<Vec<Envelope>, Error> {
    let mut stmt = conn.prepare_cached("SELECT seq, at, schema, body FROM events WHERE run_id=?1 ORDER BY seq")?;
    let rows = stmt.query_map([id.as_str()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, at, schema, body) = row?;
        let event: Event = serde_json::from_str(&body)
            .map_err(|e| Error::Corrupt(format!("run {id} event {seq} does not parse: {e}")))?;
        out.push(Envelope { seq: seq as u64, at_ms: at, schema: schema as u16, event });
    }
    Ok(out)
}

const TERMINAL: &str = "('COMPLETED','FAILED','CANCELLED')";

impl Store for SqliteStore {
    async fn commit(&self, write: RunWrite) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Write(Box::new(write), reply))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn load_run(&self, id: &RunId) -> Result<LoadedRun, Error> {
        self.read(|conn| {
            let run = get_run(conn, id)?;
            let events = read_events(conn, id)?;
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
        // then take them with a compare-and-set on the writer thread.
        let candidates: Vec<(String, Option<String>, Option<i64>)> = self.read(|conn| {
            let mut sql = format!("SELECT id, owner, lease_expires_at FROM runs WHERE status NOT IN {TERMINAL}");
            if claim.only.is_some() {
                sql.push_str(" AND id=?1");
            }
            let mut stmt = conn.prepare(&sql)?;
            let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
            let rows: Vec<_> = match claim.only {
                Some(id) => stmt.query_map([id.as_str()], map)?.collect::<Result<_, _>>()?,
                None => stmt.query_map([], map)?.collect::<Result<_, _>>()?,
            };
            Ok(rows)
        })?;
        let takeable: Vec<(String, Option<String>, Option<i64>)> = candidates
            .into_iter()
            .filter(|(_, owner, lease)| match owner {
                None => true,
                Some(o) => lease.is_none_or(|l| l < claim.now_ms) || (claim.owner_is_dead)(o),
            })
            .collect();
        let owner = claim.owner.to_string();
        let until = claim.lease_until_ms;
        self.on_writer(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut claimed = Vec::new();
            {
                let mut stmt = tx.prepare(&format!(
                    "UPDATE runs SET owner=?1, lease_expires_at=?2 WHERE id=?3 AND owner IS ?4 \
                     AND lease_expires_at IS ?5 AND status NOT IN {TERMINAL}"
                ))?;
                // Compare-and-set on owner *and* lease: an owner that heartbeated since we looked
                // keeps its run.
                for (id, old, lease) in takeable {
                    if stmt.execute(params![owner, until, id, old, lease])? == 1 {
                        claimed.push(RunId::parse(&id).map_err(Error::Corrupt)?);
                    }
                }
            }
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn heartbeat(&self, owner: &str, lease_until_ms: i64) -> Result<u64, Error> {
        let owner = owner.to_string();
        self.on_writer(move |conn| {
            let n = conn.execute(
                &format!("UPDATE runs SET lease_expires_at=?2 WHERE owner=?1 AND status NOT IN {TERMINAL}"),
                params![owner, lease_until_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn release(&self, owner: &str) -> Result<u64, Error> {
        let owner = owner.to_string();
        self.on_writer(move |conn| {
            let n = conn.execute("UPDATE runs SET owner=NULL, lease_expires_at=NULL WHERE owner=?1", params![owner])?;
            Ok(n as u64)
        })
        .await
    }

    async fn list_runs(&self, query: RunQuery) -> Result<Vec<RunRow>, Error> {
        self.read(|conn| {
            let limit = if query.limit == 0 { 50 } else { query.limit } as i64;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR status=?1) AND (?2 IS NULL OR workflow=?2) \
                 ORDER BY created_at DESC, id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![query.status, query.workflow, limit], run_row)?;
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
            read_events(conn, id)
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
}
