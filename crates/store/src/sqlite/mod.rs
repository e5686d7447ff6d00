//! The embedded SQLite backend.
//!
//! One writer thread owns the write connection and *group-commits*: it takes every write that is
//! waiting (run transitions from all runs, claims, audit rows, ...), applies each inside its own
//! savepoint, and commits them with a single fsync. Readers use a second connection (WAL lets
//! them read while the writer writes).
//!
//! Durability: with `Durability::Full` (the default; `synchronous=FULL`) a commit that returned
//! survives a process crash *and* power loss. With `Durability::Normal` (`synchronous=NORMAL`) it
//! survives a process crash; a power loss may undo the last few commits, never corrupt the file.

mod queries;
mod schema;
mod tasks;
mod writer;

use crate::Error;
use rusqlite::{Connection, ErrorCode, OpenFlags, config::DbConfig};
use schema::MIGRATIONS;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;
use writer::{Msg, TxJob};

/// Marks a file as Cairn's (`PRAGMA application_id`): "CARN".
const APPLICATION_ID: i64 = 0x4341_524E;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A run's requests still to answer, in the order they were accepted.
const PENDING_INBOX: &str = "SELECT id, run_id, body FROM inbox WHERE run_id=?1 AND state='pending' ORDER BY id";
/// The ids of a run's pending requests, for the fence of a write that must answer them all.
const PENDING_IDS: &str = "SELECT id FROM inbox WHERE run_id=?1 AND state='pending'";

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

pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    tx: Mutex<mpsc::Sender<Msg>>,
    reader: Mutex<Connection>,
    health: crate::WriteHealth,
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
    // Plans never depend on the values bound. Without this SQLite marks a statement that filters
    // on a bound value and sorts (`WHERE run_id=?1 … ORDER BY id`) as depending on that value,
    // and rusqlite's cache, which clears a statement's bindings as it takes it back, makes SQLite
    // compile it again on every use: ≈ 12 % of the engine's CPU went to the one inbox read each
    // run makes as it ends (ARCHITECTURE.md, Performance). Cairn keeps no statistics for values to
    // matter, and the plans are the same (checked with EXPLAIN QUERY PLAN).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(|e| open_error(path, e))?;
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
    // One statement, so one snapshot: read apart, another process's migration could commit in
    // between (no id yet, then its tables) and the file would look like another application's.
    let (app_id, version, tables): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id()), \
                    (SELECT user_version FROM pragma_user_version()), \
                    (SELECT count(*) FROM sqlite_master WHERE type = 'table')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| open_error(path, e))?;
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

/// Cairn's schema is there (at any version).
fn has_schema(conn: &Connection, path: &Path) -> Result<bool, Error> {
    conn.query_row("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='runs'", [], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
        .map_err(|e| open_error(path, e))
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
        SqliteStore::open_with(path, durability, crate::Create::Yes)
    }

    /// Opens the database; with `Create::No` a missing file, or one without Cairn's schema, is
    /// refused and left as it was.
    pub fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
        create: crate::Create,
    ) -> Result<SqliteStore, Error> {
        let path = path.as_ref().to_path_buf();
        if create == crate::Create::No && !path.exists() {
            return Err(Error::NoSchema { path: path.display().to_string() });
        }
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
        if create == crate::Create::No && !has_schema(&writer, &path)? {
            return Err(Error::NoSchema { path: path.display().to_string() });
        }
        set_pragmas(&writer, &path, durability)?;
        if needs_migration {
            migrate(&mut writer, &path)?;
        }
        let reader = open_raw(&path)?;
        set_pragmas(&reader, &path, durability)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread_path = path.clone();
        let health = crate::WriteHealth::default();
        let thread_health = health.clone();
        std::thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            .spawn(move || writer::run(writer, rx, thread_path, thread_health))
            .map_err(|e| Error::Open { path: path.display().to_string(), detail: e.to_string() })?;
        Ok(SqliteStore { path, durability, tx: Mutex::new(tx), reader: Mutex::new(reader), health })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Why the last group of writes failed for want of the store, if it did.
    pub(crate) fn write_failure(&self) -> Option<Error> {
        self.health.failing()
    }

    fn send(&self, msg: Msg) -> Result<(), Error> {
        let tx = self.tx.lock().map_err(|_| Error::Closed)?;
        tx.send(msg).map_err(|_| Error::Closed)
    }

    /// Runs `f` inside the next group commit (in its own savepoint) and returns its value once
    /// the group is durable.
    async fn in_group<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (value_tx, value_rx) = oneshot::channel();
        let job: TxJob = Box::new(move |tx| {
            let v = f(tx)?;
            let _ = value_tx.send(v);
            Ok(())
        });
        let (reply, committed) = oneshot::channel();
        self.send(Msg::Tx(job, reply))?;
        committed.await.map_err(|_| Error::Closed)??;
        value_rx.await.map_err(|_| Error::Closed)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.reader.lock().map_err(|_| Error::Closed)?;
        f(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Inbox;
    use cairn_core::RunId;
    use rusqlite::StatementStatus;

    /// Statements that filter on a bound value and sort stay compiled across uses through the
    /// statement cache (each use binds another run's id), on the store's own connections.
    #[tokio::test]
    async fn cached_statements_are_not_compiled_again_for_new_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("t.db"), Durability::Full).expect("open");
        let ids: Vec<RunId> = (0..5).map(|i| RunId::parse(&format!("wf_{i}")).expect("id")).collect();
        for id in &ids {
            store.pending_inbox(id).await.expect("inbox");
        }
        const EVENTS: &str = "SELECT seq, at, schema, body FROM events WHERE run_id=?1 AND seq>?2 ORDER BY seq";
        const STEPS: &str = "SELECT step_id FROM steps WHERE run_id=?1 ORDER BY position";
        store
            .read(|conn| {
                for id in &ids {
                    conn.prepare_cached(EVENTS)?
                        .query_map(rusqlite::params![id.as_str(), 0], |_| Ok(()))?
                        .for_each(drop);
                    conn.prepare_cached(STEPS)?.query_map([id.as_str()], |_| Ok(()))?.for_each(drop);
                }
                for sql in [EVENTS, STEPS, PENDING_INBOX] {
                    assert_eq!(conn.prepare_cached(sql)?.get_status(StatementStatus::RePrepare), 0, "{sql}");
                }
                Ok(())
            })
            .expect("status");
    }
}
