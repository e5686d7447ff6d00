//! The PostgreSQL backend, for many workers on many hosts sharing one database.
//!
//! One writer connection group-commits run writes like the SQLite backend does: every write
//! waiting is fenced (journal position + owner) and its rows written in one transaction, whose
//! one COMMIT (one WAL flush with `synchronous_commit=on`) makes them all durable — as a rule the
//! whole transaction is one pipelined round trip (`writer`). Claims, heartbeats and the rest are single statements on a shared
//! connection; claims use `FOR UPDATE SKIP LOCKED` so workers never wait on each other.
//! Connections are re-established with backoff when the server goes away.
//!
//! Layout: this file opens the database (connecting, migrating) and holds the connections;
//! `writer` group-commits run writes, `queries` answers every other call, `rows` maps result rows
//! to Cairn's types, and `wake` carries wake-ups between processes over LISTEN/NOTIFY.

mod queries;
mod rows;
mod schema;
mod tasks;
mod wake;
mod writer;

use crate::{Error, RunWrite};
use schema::MIGRATIONS;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{RwLock, mpsc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use writer::Reply;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A call on the shared connection that takes longer presumes the connection dead (a half-open
/// TCP connection after a failover would otherwise hang until the kernel gives up).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn pg(e: tokio_postgres::Error) -> Error {
    // Connection exceptions (class 08) and shutdowns (57P01..57P03) mean "the server is away",
    // not "the request is wrong": callers retry those. So is a server out of disk (53100).
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    let message = || e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    match code.as_deref() {
        Some("53100") => return Error::Full(message()),
        // Deadlock, serialization failure: the loser's write succeeds when sent again.
        Some("40P01" | "40001") => return Error::Contention(message()),
        _ => {}
    }
    let gone =
        code.as_deref().is_some_and(|code| code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03"));
    if gone || e.is_closed() || e.as_db_error().is_none() {
        Error::Unavailable(e.to_string())
    } else {
        Error::Postgres(e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))
    }
}

/// `postgres://user:secret@host/db` with the password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, Error> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| Error::Unavailable("connecting timed out".into()))?
        .map_err(pg)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects, retrying with backoff for up to `patience` while the server cannot be reached (a
/// refused connection, a timeout); other failures (a wrong password, a missing database) are
/// reported at once.
async fn connect_patiently(
    config: &tokio_postgres::Config,
    display: &str,
    patience: Duration,
) -> Result<Client, Error> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut told = false;
    loop {
        match connect(config).await {
            Ok(client) => return Ok(client),
            Err(Error::Unavailable(e)) if started.elapsed() + backoff <= patience => {
                if !told {
                    cairn_log(format_args!(
                        "cairn: cannot reach PostgreSQL at {display} ({e}); retrying for up to {}s",
                        patience.as_secs()
                    ));
                    told = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(Error::Unavailable(e)) => {
                let waited = if patience.is_zero() {
                    String::new()
                } else {
                    format!(" after trying for {}s", started.elapsed().as_secs())
                };
                return Err(Error::Open {
                    path: display.to_string(),
                    detail: format!(
                        "the server cannot be reached{waited} ({e}); gave up — check that it runs and accepts connections"
                    ),
                });
            }
            Err(e) => return Err(Error::Open { path: display.to_string(), detail: e.to_string() }),
        }
    }
}

/// A line for the operator (the store has no logger of its own; a closed stderr is ignored).
fn cairn_log(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// A client and the statements prepared on it (prepared once per connection: the hot
/// statements are parsed and planned once, not per group).
struct Conn {
    client: Client,
    prepared: Mutex<std::collections::HashMap<&'static str, tokio_postgres::Statement>>,
    /// The server process behind the writer's connection (pid, start time), so that one whose
    /// answers were lost can be ended before its transaction's fate is asked.
    backend: Option<(i32, String)>,
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Conn {
    async fn stmt(&self, sql: &'static str) -> Result<tokio_postgres::Statement, Error> {
        if let Some(s) = self.prepared.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return Ok(s);
        }
        let s = self.client.prepare(sql).await.map_err(pg)?;
        if let Ok(mut m) = self.prepared.lock() {
            m.insert(sql, s.clone());
        }
        Ok(s)
    }
}

/// A connection that is replaced when it breaks.
struct Slot {
    config: tokio_postgres::Config,
    client: RwLock<Option<Arc<Conn>>>,
    /// Settings for each new connection of this slot (empty: none).
    setup: &'static str,
}

/// The writer's statements are all arrays matched by key (UNNEST joined on primary keys): one
/// generic plan serves every group, where planning each execution again cost the server enough
/// to hold one-at-a-time runs to 271 workflows/s against 326 (ARCHITECTURE.md, Performance). A server without the setting
/// (before PostgreSQL 12) keeps its default.
const WRITER_SETUP: &str = "SET plan_cache_mode = force_generic_plan";

/// This connection's server process: its pid and when it started (a pid alone may be reused).
const BACKEND: &str = "SELECT pid, backend_start::TEXT FROM pg_stat_activity WHERE pid = pg_backend_pid()";

impl Slot {
    /// Forgets the connection (it stopped answering); the next `get` opens a new one.
    async fn reset(&self) {
        *self.client.write().await = None;
    }

    async fn get(&self) -> Result<Arc<Conn>, Error> {
        if let Some(c) = self.client.read().await.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let mut guard = self.client.write().await;
        if let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let client = connect(&self.config).await?;
        let mut backend = None;
        if !self.setup.is_empty() {
            let _ = client.batch_execute(self.setup).await;
            backend = client.query_one(BACKEND, &[]).await.ok().map(|row| (row.get(0), row.get(1)));
        }
        let fresh = Arc::new(Conn { client, prepared: Mutex::new(Default::default()), backend });
        *guard = Some(fresh.clone());
        Ok(fresh)
    }
}

pub struct PgStore {
    display: String,
    shared: Arc<Slot>,
    wake: Arc<tokio::sync::Notify>,
    writes: Mutex<mpsc::UnboundedSender<(Arc<RunWrite>, Reply)>>,
    /// When groups last failed for want of the server or disk.
    health: crate::WriteHealth,
    /// Groups the writer committed the careful way (see `groups_sent_carefully`).
    careful: Arc<std::sync::atomic::AtomicU64>,
}

impl PgStore {
    /// Connects, checks the database is Cairn's (or empty), and applies migrations under an
    /// advisory lock so processes starting together do not race.
    pub async fn open(url: &str) -> Result<PgStore, Error> {
        PgStore::open_with(url, crate::Create::Yes, Duration::ZERO).await
    }

    /// Like `open`; with `Create::No` a database without Cairn's schema is refused untouched.
    /// While the server cannot be reached (not up yet, restarting) connecting is retried with
    /// backoff for up to `patience`, then given up with the last error.
    pub async fn open_with(url: &str, create: crate::Create, patience: Duration) -> Result<PgStore, Error> {
        let display = redact(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Open { path: display.clone(), detail: format!("not a PostgreSQL URL: {e}") })?;
        config.keepalives(true).keepalives_idle(Duration::from_secs(15));
        let mut migrator = connect_patiently(&config, &display, patience).await?;
        if create == crate::Create::No {
            let has_schema: bool =
                migrator.query_one("SELECT to_regclass('cairn_meta') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
            if !has_schema {
                return Err(Error::NoSchema { path: display });
            }
        }
        migrate(&mut migrator, &display).await?;
        drop(migrator);
        let shared = Arc::new(Slot { config: config.clone(), client: RwLock::new(None), setup: "" });
        shared.get().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(wake::listen(config.clone(), Arc::downgrade(&wake)));
        let writer = Arc::new(Slot { config, client: RwLock::new(None), setup: WRITER_SETUP });
        let health = crate::WriteHealth::default();
        let careful = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(writer::write_loop(writer, rx, health.clone(), careful.clone()));
        Ok(PgStore { display, shared, wake, writes: Mutex::new(tx), health, careful })
    }

    /// How many groups of writes the writer committed the careful way, a statement and an
    /// answer at a time, since this store opened: groups with requests for other runs, and
    /// groups whose one-round-trip batch met a surprise (a fence that did not hold, a key
    /// taken, a request already answered) and was rolled back. A diagnostic: in steady work it
    /// stays near zero.
    pub fn groups_sent_carefully(&self) -> u64 {
        self.careful.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn client(&self) -> Result<Arc<Conn>, Error> {
        self.shared.get().await
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        self.answered(async { client.query(sql, params).await.map_err(pg) }).await
    }

    /// Like `query`, for a statement asked often: prepared once per connection, not each time
    /// (one round trip instead of two).
    async fn query_prepared(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        self.answered(async { client.query(&client.stmt(sql).await?, params).await.map_err(pg) }).await
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let client = self.client().await?;
        self.answered(async { client.execute(sql, params).await.map_err(pg) }).await
    }

    /// `call`'s answer, or `Unavailable` (and a new connection next time) if none comes within
    /// `CALL_TIMEOUT`.
    async fn answered<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => {
                self.shared.reset().await;
                Err(Error::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))
            }
        }
    }
}

async fn migrate(client: &mut Client, display: &str) -> Result<(), Error> {
    // Another process migrating holds this briefly; a stuck holder must not hang us forever.
    client.batch_execute("SET lock_timeout = '60s'").await.map_err(pg)?;
    client.execute("SELECT pg_advisory_lock(hashtext('cairn-migrate'))", &[]).await.map_err(pg)?;
    let result = async {
        let has_runs: bool = client.query_one("SELECT to_regclass('runs') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
        let has_meta: bool =
            client.query_one("SELECT to_regclass('cairn_meta') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
        if has_runs && !has_meta {
            return Err(Error::NotOurs {
                path: display.to_string(),
                detail: "it has a `runs` table that Cairn did not create; use another database or schema".into(),
            });
        }
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS cairn_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .await
            .map_err(pg)?;
        let version: i64 = client
            .query_opt("SELECT value FROM cairn_meta WHERE key='schema_version'", &[])
            .await
            .map_err(pg)?
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(Error::NewerSchema { path: display.to_string(), found: version, known });
        }
        let tx = client.transaction().await.map_err(pg)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO cairn_meta (key, value) VALUES ('schema_version', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&((i + 1).to_string())],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }
    .await;
    let _ = client.execute("SELECT pg_advisory_unlock(hashtext('cairn-migrate'))", &[]).await;
    result
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://cairn:s3cret@db:5432/cairn"), "postgres://cairn:***@db:5432/cairn");
        assert_eq!(redact("postgres://postgres@127.0.0.1/x"), "postgres://postgres@127.0.0.1/x");
    }
}
