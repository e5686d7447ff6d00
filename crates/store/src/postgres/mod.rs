//! The PostgreSQL backend, for many workers on many hosts sharing one database.
//!
//! One writer connection group-commits run writes like the SQLite backend does: every write
//! waiting is fenced (journal position + owner) in one pipelined round, the survivors' rows go
//! in a second pipelined round, and one COMMIT (one WAL flush with `synchronous_commit=on`) makes
//! them all durable. Claims, heartbeats and the rest are single statements on a shared
//! connection; claims use `FOR UPDATE SKIP LOCKED` so workers never wait on each other.
//! Connections are re-established with backoff when the server goes away.

mod schema;

use crate::{
    Access, AuditRow, Claim, EffectLog, Error, FeedItem, GcReport, Inbox, InboxRow, Journal, LoadedRun, LogLine,
    Registry, RequestOutcome, RequestRow, RequestState, Retention, RunQuery, RunRow, RunWrite, StepRow, TokenRow,
    WorkerRow, WorkflowRow,
};
use cairn_core::payload::Payload;
use cairn_core::{Envelope, Event, RunId};
use futures_util::future::join_all;
use schema::MIGRATIONS;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::TERMINAL;
const MAX_GROUP: usize = 512;
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
}

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
        let fresh = Arc::new(Conn { client: connect(&self.config).await?, prepared: Mutex::new(Default::default()) });
        *guard = Some(fresh.clone());
        Ok(fresh)
    }
}

type Reply = oneshot::Sender<Result<(), Error>>;

pub struct PgStore {
    display: String,
    shared: Arc<Slot>,
    wake: Arc<tokio::sync::Notify>,
    writes: Mutex<mpsc::UnboundedSender<(Arc<RunWrite>, Reply)>>,
    /// When groups last failed for want of the server or disk.
    health: crate::WriteHealth,
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
        let shared = Arc::new(Slot { config: config.clone(), client: RwLock::new(None) });
        shared.get().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(listen(config.clone(), Arc::downgrade(&wake)));
        let writer = Arc::new(Slot { config, client: RwLock::new(None) });
        let health = crate::WriteHealth::default();
        tokio::spawn(write_loop(writer, rx, health.clone()));
        Ok(PgStore { display, shared, wake, writes: Mutex::new(tx), health })
    }

    async fn client(&self) -> Result<Arc<Conn>, Error> {
        self.shared.get().await
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        match tokio::time::timeout(CALL_TIMEOUT, client.query(sql, params)).await {
            Ok(r) => r.map_err(pg),
            Err(_) => {
                self.shared.reset().await;
                Err(Error::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))
            }
        }
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let client = self.client().await?;
        match tokio::time::timeout(CALL_TIMEOUT, client.execute(sql, params)).await {
            Ok(r) => r.map_err(pg),
            Err(_) => {
                self.shared.reset().await;
                Err(Error::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))
            }
        }
    }
}

/// The channel processes use to wake each other's idle workers.
const WAKE_CHANNEL: &str = "cairn_wake";

/// LISTENs on a connection of its own and turns notifications into wake-ups, reconnecting with
/// backoff; ends when the store is dropped.
async fn listen(config: tokio_postgres::Config, wake: std::sync::Weak<tokio::sync::Notify>) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        if wake.upgrade().is_none() {
            return;
        }
        if let Ok(Ok((client, mut connection))) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
            // The connection delivers notifications; drive it in its own task.
            let (tx, mut rx) = mpsc::unbounded_channel::<()>();
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if matches!(message, tokio_postgres::AsyncMessage::Notification(_)) && tx.send(()).is_err() {
                        return;
                    }
                }
            });
            if client.batch_execute(&format!("LISTEN {WAKE_CHANNEL}")).await.is_ok() {
                backoff = Duration::from_millis(100);
                // Anything may have happened while nobody listened.
                if let Some(w) = wake.upgrade() {
                    w.notify_waiters();
                }
                loop {
                    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
                    let Some(w) = wake.upgrade() else {
                        // The store is gone: stop listening.
                        driver.abort();
                        return;
                    };
                    match got {
                        Ok(Some(())) => w.notify_waiters(),
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
            }
            driver.abort();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
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

async fn write_loop(
    slot: Arc<Slot>,
    mut rx: mpsc::UnboundedReceiver<(Arc<RunWrite>, Reply)>,
    health: crate::WriteHealth,
) {
    let mut batch = Vec::new();
    let mut carry: Vec<(Arc<RunWrite>, Reply)> = Vec::new();
    loop {
        let first = match carry.is_empty() {
            true => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
            false => carry.remove(0),
        };
        batch.push(first);
        while batch.len() + carry.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // One write per run per group: the group's UPDATE fences by run id.
        let mut seen = std::collections::HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = batch.drain(..).partition(|(w, _)| seen.insert(w.run.id.clone()));
        batch = now;
        carry.extend(later);
        let writes: Vec<&RunWrite> = batch.iter().map(|(w, _)| &**w).collect();
        // While the server is away (a restart, a failover) hold the writes and try again with
        // backoff rather than fail every run in flight; give up after a while.
        let deadline = tokio::time::Instant::now() + OUTAGE_PATIENCE;
        let mut backoff = Duration::from_millis(100);
        let results = loop {
            let attempt = group_once(&slot, &writes).await;
            match attempt {
                Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        };
        health.note(results.as_ref().err());
        match results {
            Ok(results) => {
                for ((_, reply), r) in batch.drain(..).zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(match &e {
                        Error::Unavailable(m) => Error::Unavailable(m.clone()),
                        Error::Full(m) => Error::Full(m.clone()),
                        Error::Contention(m) => Error::Contention(m.clone()),
                        Error::Conflict { run_id, expected } => {
                            Error::Conflict { run_id: run_id.clone(), expected: *expected }
                        }
                        other => Error::Postgres(format!("group commit failed: {other}")),
                    }));
                }
            }
        }
    }
}

/// How long a group of writes waits for the server to come back before failing.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(30);

/// One try at committing a group on the writer connection.
/// Advisory lock key shared by writers and taken exclusively by gc ("CARNGC").
const GC_LOCK: i64 = 0x4341_524E_4743;
const GROUP_START: &str = "SELECT txid_current()::BIGINT, pg_advisory_xact_lock_shared($1)::TEXT";
/// How long one group may take before the connection is presumed dead.
const GROUP_TIMEOUT: Duration = Duration::from_secs(15);

/// One try at committing a group on the writer connection. A group whose COMMIT outcome was lost
/// with the connection is looked up by transaction id once the server answers again, so a
/// committed group is never written twice (nor reported as a conflict with itself).
async fn group_once(slot: &Slot, writes: &[&RunWrite]) -> Result<Vec<Result<(), Error>>, Error> {
    let client = slot.get().await?;
    let attempt = match tokio::time::timeout(GROUP_TIMEOUT, group_on(&client, writes)).await {
        Ok(r) => r,
        Err(_) => {
            slot.reset().await;
            return Err(Error::Unavailable(format!("no answer within {GROUP_TIMEOUT:?}")));
        }
    };
    match attempt {
        Ok(outcomes) => Ok(outcomes),
        Err(GroupFail::Failed(e)) => Err(e),
        Err(GroupFail::Unknown { xid, outcomes }) => {
            slot.reset().await;
            let deadline = tokio::time::Instant::now() + OUTAGE_PATIENCE;
            loop {
                let status = async {
                    let c = slot.get().await?;
                    let row = c.query_one("SELECT txid_status($1)::TEXT", &[&xid]).await.map_err(pg)?;
                    Ok::<Option<String>, Error>(row.get(0))
                }
                .await;
                match status {
                    Ok(Some(s)) if s == "committed" => return Ok(outcomes),
                    Ok(_) => return Err(Error::Unavailable(format!("transaction {xid} did not commit"))),
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

async fn group_on(client: &Conn, writes: &[&RunWrite]) -> Result<Vec<Result<(), Error>>, GroupFail> {
    match commit_group(client, writes).await {
        // One write broke the whole group (a bug or a constraint we did not fence): commit each
        // alone, so only the broken one fails.
        Err(GroupFail::Failed(e)) if writes.len() > 1 && !matches!(e, Error::Unavailable(_) | Error::Full(_)) => {
            let mut one_by_one = Vec::with_capacity(writes.len());
            for w in writes {
                one_by_one.push(match commit_group(client, &[*w]).await {
                    Ok(mut r) => r.pop().unwrap_or(Ok(())),
                    Err(GroupFail::Failed(e)) => Err(e),
                    Err(GroupFail::Unknown { .. }) => {
                        return Err(GroupFail::Failed(Error::Unavailable("connection lost mid-retry".into())));
                    }
                });
            }
            Ok(one_by_one)
        }
        other => other,
    }
}

fn cairn_core_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    v as i64
}

/// Fences every write, writes the rows of those that passed, and commits once. However many
/// writes the group holds, it costs a handful of statements: updates and rows go as arrays
/// (`UNNEST`), only creations go one by one.
/// Why a group did not simply commit.
enum GroupFail {
    /// The connection broke around COMMIT: transaction `xid` may have committed these outcomes.
    Unknown {
        xid: i64,
        outcomes: Vec<Result<(), Error>>,
    },
    Failed(Error),
}

impl From<Error> for GroupFail {
    fn from(e: Error) -> Self {
        GroupFail::Failed(e)
    }
}

async fn commit_group(client: &Conn, writes: &[&RunWrite]) -> Result<Vec<Result<(), Error>>, GroupFail> {
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let xid = std::sync::atomic::AtomicI64::new(0);
    let result = async {
        // Writers share the gc lock; gc takes it alone, so it never deletes a payload a commit
        // in flight is linking.
        let row = client.query_one(GROUP_START, &[&GC_LOCK]).await.map_err(pg)?;
        xid.store(row.get(0), std::sync::atomic::Ordering::Relaxed);
        let (creates, updates): (Vec<Indexed>, Vec<Indexed>) =
            writes.iter().copied().enumerate().partition(|(_, w)| w.expected_seq == 0);
        let mut outcomes: Vec<Result<(), Error>> = (0..writes.len()).map(|_| Ok(())).collect();
        for ((i, _), fenced) in creates.iter().zip(join_all(creates.iter().map(|(_, w)| fence_create(client, w))).await)
        {
            match fenced {
                Ok(()) => {}
                Err(e @ (Error::Conflict { .. } | Error::IdempotencyKey { .. })) => outcomes[*i] = Err(e),
                Err(e) => return Err(e),
            }
        }
        if !updates.is_empty() {
            let landed = fence_updates(client, &updates).await?;
            for (i, w) in &updates {
                if !landed.contains(&w.run.id) {
                    outcomes[*i] = Err(Error::Conflict { run_id: w.run.id.clone(), expected: w.expected_seq });
                }
            }
        }
        let rows: Vec<&RunWrite> = writes.iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(w, _)| *w).collect();
        write_rows(client, &rows).await?;
        if rows.iter().any(|w| w.release) {
            // Delivered at COMMIT: idle workers elsewhere look for the runs just handed out.
            client.execute("SELECT pg_notify('cairn_wake', '')", &[]).await.map_err(pg)?;
        }
        Ok(outcomes)
    }
    .await;
    match result {
        Ok(outcomes) => match client.batch_execute("COMMIT").await.map_err(pg) {
            Ok(()) => Ok(outcomes),
            // The connection broke around COMMIT: the group may or may not have committed.
            Err(Error::Unavailable(_)) => {
                Err(GroupFail::Unknown { xid: xid.load(std::sync::atomic::Ordering::Relaxed), outcomes })
            }
            Err(e) => Err(GroupFail::Failed(e)),
        },
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(GroupFail::Failed(e))
        }
    }
}

/// A write and its position in the group.
type Indexed<'a> = (usize, &'a RunWrite);

/// One UPDATE for every run write in the group, each fenced on journal position and owner;
/// returns the ids that passed.
async fn fence_updates(client: &Conn, updates: &[Indexed<'_>]) -> Result<std::collections::HashSet<String>, Error> {
    let runs: Vec<&RunRow> = updates.iter().map(|(_, w)| &w.run).collect();
    let col = |f: &dyn Fn(&RunRow) -> Option<String>| runs.iter().map(|r| f(r)).collect::<Vec<Option<String>>>();
    let num = |f: &dyn Fn(&RunRow) -> Option<i64>| runs.iter().map(|r| f(r)).collect::<Vec<Option<i64>>>();
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let versions = num(&|r| r.definition_version.map(i64::from));
    let statuses: Vec<String> = runs.iter().map(|r| r.status.clone()).collect();
    let current = col(&|r| r.current_step.clone());
    let fclass = col(&|r| r.failure_class.clone());
    let fmsg = col(&|r| r.failure_message.clone());
    let fstep = col(&|r| r.failed_step.clone());
    let last: Vec<i64> = runs.iter().map(|r| i(r.last_seq)).collect();
    let updated: Vec<i64> = runs.iter().map(|r| r.updated_at_ms).collect();
    let finished = num(&|r| r.finished_at_ms);
    let dhash = col(&|r| r.definition_hash.clone());
    let ohash = col(&|r| r.output_hash.clone());
    let artifact = col(&|r| r.artifact.clone());
    let new_owner: Vec<Option<String>> = updates.iter().map(|(_, w)| (!w.release).then(|| w.owner.clone())).collect();
    let lease: Vec<Option<i64>> = updates.iter().map(|(_, w)| (!w.release).then_some(w.lease_until_ms)).collect();
    let wake: Vec<Option<i64>> = updates.iter().map(|(_, w)| if w.release { w.run.wake_at_ms } else { None }).collect();
    let retain = num(&|r| r.retain_until_ms);
    let expected: Vec<i64> = updates.iter().map(|(_, w)| i(w.expected_seq)).collect();
    let owners: Vec<String> = updates.iter().map(|(_, w)| w.owner.clone()).collect();
    let rows = client
        .query(
            &client.stmt(FENCE_UPDATES).await?,
            &[
                &ids, &versions, &statuses, &current, &fclass, &fmsg, &fstep, &last, &updated, &finished, &dhash,
                &ohash, &artifact, &new_owner, &lease, &wake, &retain, &expected, &owners,
            ],
        )
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Fences one creation (the run row must not exist; its idempotency key must be free).
async fn fence_create(client: &Client, w: &RunWrite) -> Result<(), Error> {
    let r = &w.run;
    let (owner, lease) = if w.release { (None, None) } else { (Some(w.owner.as_str()), Some(w.lease_until_ms)) };
    let wake_at = if w.release { r.wake_at_ms } else { None };
    let version = r.definition_version.map(i64::from);
    let n = client
        .execute(
            "INSERT INTO runs (id, workflow, definition_version, status, goal, current_step, failure_class, \
             failure_message, failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, \
             definition_hash, output_hash, artifact, wake_at, retain_until) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20) ON CONFLICT (id) DO NOTHING",
            &[
                &r.id,
                &r.workflow,
                &version,
                &r.status,
                &r.goal,
                &r.current_step,
                &r.failure_class,
                &r.failure_message,
                &r.failed_step,
                &i(r.last_seq),
                &owner,
                &lease,
                &r.created_at_ms,
                &r.updated_at_ms,
                &r.finished_at_ms,
                &r.definition_hash,
                &r.output_hash,
                &r.artifact,
                &wake_at,
                &r.retain_until_ms,
            ],
        )
        .await
        .map_err(pg)?;
    if n == 0 {
        return Err(Error::Conflict { run_id: r.id.clone(), expected: 0 });
    }
    if let Some(idem) = &w.idempotency {
        let inserted = client
            .execute(
                "INSERT INTO idempotency (key, run_id, request_hash, created_at) VALUES ($1,$2,$3,$4) \
                 ON CONFLICT (key) DO NOTHING",
                &[&idem.key, &r.id, &idem.request_hash, &r.created_at_ms],
            )
            .await
            .map_err(pg)?;
        if inserted == 0 {
            // The key belongs to another run: take back the row this write just made.
            client.execute("DELETE FROM runs WHERE id=$1", &[&r.id]).await.map_err(pg)?;
            let row = client
                .query_one("SELECT run_id, request_hash FROM idempotency WHERE key=$1", &[&idem.key])
                .await
                .map_err(pg)?;
            let (run_id, hash): (String, String) = (row.get(0), row.get(1));
            return Err(Error::IdempotencyKey {
                key: idem.key.clone(),
                run_id,
                same_request: hash == idem.request_hash,
            });
        }
    }
    Ok(())
}

const FENCE_UPDATES: &str = "UPDATE runs AS r SET definition_version=v.definition_version, status=v.status, current_step=v.current_step, \
             failure_class=v.failure_class, failure_message=v.failure_message, failed_step=v.failed_step, \
             last_seq=v.last_seq, updated_at=v.updated_at, finished_at=v.finished_at, \
             definition_hash=v.definition_hash, output_hash=v.output_hash, artifact=v.artifact, owner=v.new_owner, \
             lease_expires_at=v.lease, wake_at=v.wake_at, retain_until=v.retain_until \
             FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], \
                         $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], \
                         $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], $18::BIGINT[], $19::TEXT[]) \
               AS v(id, definition_version, status, current_step, failure_class, failure_message, failed_step, \
                    last_seq, updated_at, finished_at, definition_hash, output_hash, artifact, new_owner, lease, \
                    wake_at, retain_until, expected_seq, owner) \
             WHERE r.id = v.id AND r.last_seq = v.expected_seq AND r.owner = v.owner \
             RETURNING r.id";
const INSERT_EVENTS: &str = "INSERT INTO events (run_id, seq, at, kind, schema, step_id, body) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[])";
const INSERT_PAYLOADS: &str = "INSERT INTO payloads (hash, size, body) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[]) \
                 ON CONFLICT (hash) DO NOTHING";
const INSERT_LINKS: &str =
    "INSERT INTO run_payloads (run_id, hash) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) ON CONFLICT DO NOTHING";
const UPSERT_STEPS: &str = "INSERT INTO steps (run_id, step_id, position, kind, status, attempts, not_before, started_at, \
                 finished_at, busy_ms, error_class, error_message, output_hash, skip_reason) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], \
                   $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[]) \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET position=excluded.position, status=excluded.status, attempts=excluded.attempts, \
                 not_before=excluded.not_before, started_at=excluded.started_at, finished_at=excluded.finished_at, \
                 busy_ms=excluded.busy_ms, error_class=excluded.error_class, error_message=excluded.error_message, \
                 output_hash=excluded.output_hash, skip_reason=excluded.skip_reason";
const INSERT_LOGS: &str = "INSERT INTO logs (run_id, step_id, attempt, at, level, message) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[])";
const WAKE_RELEASED: &str = "UPDATE runs AS r SET wake_at = \
                 (SELECT MIN(created_at) FROM inbox i WHERE i.run_id = r.id AND i.state = 'pending') \
                 WHERE r.id = ANY($1) AND EXISTS (SELECT 1 FROM inbox i WHERE i.run_id = r.id AND i.state = 'pending')";
/// Answers requests; only pending ones (an answered request is never answered again).
const ANSWER_REQUESTS: &str = "UPDATE inbox AS i SET state=v.state, code=v.code, message=v.message, \
                 journal_seq=v.journal_seq, decided_at=v.decided_at \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[]) \
                   AS v(id, state, code, message, journal_seq, decided_at, run_id) \
                 WHERE i.id = v.id AND i.run_id = v.run_id AND i.state = 'pending'";

/// The group's statements, prepared on the writer connection.
struct Prepared {
    insert_events: tokio_postgres::Statement,
    insert_payloads: tokio_postgres::Statement,
    insert_links: tokio_postgres::Statement,
    upsert_steps: tokio_postgres::Statement,
    insert_logs: tokio_postgres::Statement,
    wake_released: tokio_postgres::Statement,
    answer_requests: tokio_postgres::Statement,
}

/// Column arrays for one multi-row INSERT each.
#[derive(Default)]
struct EventCols {
    run: Vec<String>,
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<String>,
    schema: Vec<i64>,
    step: Vec<Option<String>>,
    body: Vec<String>,
}

#[derive(Default)]
struct StepCols {
    run: Vec<String>,
    step: Vec<String>,
    position: Vec<i64>,
    kind: Vec<String>,
    status: Vec<String>,
    attempts: Vec<i64>,
    not_before: Vec<Option<i64>>,
    started: Vec<Option<i64>>,
    finished: Vec<Option<i64>>,
    busy: Vec<i64>,
    error_class: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    output: Vec<Option<String>>,
    skip: Vec<Option<String>>,
}

#[derive(Default)]
struct RequestCols {
    id: Vec<i64>,
    state: Vec<&'static str>,
    code: Vec<Option<String>>,
    message: Vec<Option<String>>,
    seq: Vec<Option<i64>>,
    at: Vec<Option<i64>>,
    run: Vec<String>,
}

#[derive(Default)]
struct LogCols {
    run: Vec<String>,
    step: Vec<String>,
    attempt: Vec<i64>,
    at: Vec<i64>,
    level: Vec<String>,
    message: Vec<String>,
}

/// The journal and projection rows of the writes that passed their fence, as arrays.
async fn write_rows(client: &Conn, writes: &[&RunWrite]) -> Result<(), Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let prepared = Prepared {
        insert_events: client.stmt(INSERT_EVENTS).await?,
        insert_payloads: client.stmt(INSERT_PAYLOADS).await?,
        insert_links: client.stmt(INSERT_LINKS).await?,
        upsert_steps: client.stmt(UPSERT_STEPS).await?,
        insert_logs: client.stmt(INSERT_LOGS).await?,
        wake_released: client.stmt(WAKE_RELEASED).await?,
        answer_requests: client.stmt(ANSWER_REQUESTS).await?,
    };
    if writes.is_empty() {
        return Ok(());
    }
    let mut ev = EventCols::default();
    let mut payloads: std::collections::BTreeMap<&str, (i64, &[u8])> = Default::default();
    let mut links: std::collections::BTreeSet<(&str, &str)> = Default::default();
    let mut st = StepCols::default();
    let mut lg = LogCols::default();
    let mut released: Vec<String> = Vec::new();
    let mut rq = RequestCols::default();
    for w in writes {
        for q in &w.requests {
            rq.id.push(q.id);
            rq.state.push(q.state.as_str());
            rq.code.push(q.code.clone());
            rq.message.push(q.message.clone());
            rq.seq.push(q.journal_seq.map(i));
            rq.at.push(q.decided_at_ms);
            rq.run.push(w.run.id.clone());
        }
        let id = &w.run.id;
        for e in &w.events {
            ev.run.push(id.clone());
            ev.seq.push(i(e.seq));
            ev.at.push(e.at_ms);
            ev.kind.push(e.kind.to_string());
            ev.schema.push(i64::from(e.schema));
            ev.step.push(e.step.clone());
            ev.body.push(e.body.clone());
        }
        for p in &w.payloads {
            payloads.entry(p.reference.hash.as_str()).or_insert((i(p.reference.size), p.bytes.as_slice()));
            links.insert((id.as_str(), p.reference.hash.as_str()));
        }
        for s in &w.steps {
            st.run.push(id.clone());
            st.step.push(s.step_id.clone());
            st.position.push(i64::from(s.position));
            st.kind.push(s.kind.clone());
            st.status.push(s.status.clone());
            st.attempts.push(i64::from(s.attempts));
            st.not_before.push(s.not_before_ms);
            st.started.push(s.started_at_ms);
            st.finished.push(s.finished_at_ms);
            st.busy.push(i(s.busy_ms));
            st.error_class.push(s.error_class.clone());
            st.error_message.push(s.error_message.clone());
            st.output.push(s.output_hash.clone());
            st.skip.push(s.skip_reason.clone());
        }
        for l in &w.logs {
            lg.run.push(id.clone());
            lg.step.push(l.step_id.clone());
            lg.attempt.push(i64::from(l.attempt));
            lg.at.push(l.at_ms);
            lg.level.push(l.level.clone());
            lg.message.push(l.message.clone());
        }
        if w.release {
            released.push(id.clone());
        }
    }
    let hashes: Vec<&str> = payloads.keys().copied().collect();
    let sizes: Vec<i64> = payloads.values().map(|(size, _)| *size).collect();
    let bodies: Vec<&[u8]> = payloads.values().map(|(_, body)| *body).collect();
    let (link_runs, link_hashes): (Vec<&str>, Vec<&str>) = links.into_iter().unzip();
    let events = async {
        if ev.run.is_empty() {
            return Ok(0);
        }
        client
            .execute(&prepared.insert_events, &[&ev.run, &ev.seq, &ev.at, &ev.kind, &ev.schema, &ev.step, &ev.body])
            .await
    };
    let payload_rows = async {
        if hashes.is_empty() {
            return Ok(0);
        }
        client.execute(&prepared.insert_payloads, &[&hashes, &sizes, &bodies]).await
    };
    let link_rows = async {
        if link_runs.is_empty() {
            return Ok(0);
        }
        client.execute(&prepared.insert_links, &[&link_runs, &link_hashes]).await
    };
    let step_rows = async {
        if st.run.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &prepared.upsert_steps,
                &[
                    &st.run,
                    &st.step,
                    &st.position,
                    &st.kind,
                    &st.status,
                    &st.attempts,
                    &st.not_before,
                    &st.started,
                    &st.finished,
                    &st.busy,
                    &st.error_class,
                    &st.error_message,
                    &st.output,
                    &st.skip,
                ],
            )
            .await
    };
    let log_rows = async {
        if lg.run.is_empty() {
            return Ok(0);
        }
        client.execute(&prepared.insert_logs, &[&lg.run, &lg.step, &lg.attempt, &lg.at, &lg.level, &lg.message]).await
    };
    let wake_rows = async {
        if released.is_empty() {
            return Ok(0);
        }
        client.execute(&prepared.wake_released, &[&released]).await
    };
    let request_rows = async {
        if rq.id.is_empty() {
            return Ok(0);
        }
        client
            .execute(&prepared.answer_requests, &[&rq.id, &rq.state, &rq.code, &rq.message, &rq.seq, &rq.at, &rq.run])
            .await
    };
    let (a, b, c, d, e, f, g) =
        tokio::join!(events, payload_rows, link_rows, step_rows, log_rows, wake_rows, request_rows);
    for r in [a, b, c, d, e, f] {
        r.map_err(pg)?;
    }
    // Only the run's one decider answers its requests (the fence above): an answer that finds
    // its request already answered means the store was written behind our back.
    if g.map_err(pg)? != rq.id.len() as u64 {
        // Answered by someone else meanwhile: the write lost a race, like a failed fence.
        let run_id = writes.iter().find(|w| !w.requests.is_empty()).map(|w| w.run.id.clone()).unwrap_or_default();
        return Err(Error::Conflict { run_id, expected: 0 });
    }
    Ok(())
}

const RUN_COLUMNS: &str = "id, workflow, definition_version, status, goal, current_step, failure_class, failure_message, \
     failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, definition_hash, output_hash, \
     artifact, wake_at, retain_until";

fn run_row(r: &Row) -> RunRow {
    RunRow {
        id: r.get(0),
        workflow: r.get(1),
        definition_version: r.get::<_, Option<i64>>(2).map(|v| v as u32),
        status: r.get(3),
        goal: r.get(4),
        current_step: r.get(5),
        failure_class: r.get(6),
        failure_message: r.get(7),
        failed_step: r.get(8),
        last_seq: r.get::<_, i64>(9) as u64,
        owner: r.get(10),
        lease_expires_at_ms: r.get(11),
        created_at_ms: r.get(12),
        updated_at_ms: r.get(13),
        finished_at_ms: r.get(14),
        definition_hash: r.get(15),
        output_hash: r.get(16),
        artifact: r.get(17),
        wake_at_ms: r.get(18),
        retain_until_ms: r.get(19),
    }
}

fn step_row(r: &Row) -> StepRow {
    StepRow {
        step_id: r.get(0),
        position: r.get::<_, i64>(1) as u32,
        kind: r.get(2),
        status: r.get(3),
        attempts: r.get::<_, i64>(4) as u32,
        not_before_ms: r.get(5),
        started_at_ms: r.get(6),
        finished_at_ms: r.get(7),
        busy_ms: r.get::<_, i64>(8) as u64,
        error_class: r.get(9),
        error_message: r.get(10),
        output_hash: r.get(11),
        skip_reason: r.get(12),
    }
}

const REQUEST_COLUMNS: &str = "id, run_id, body, created_at, state, code, message, journal_seq, decided_at";

fn request_row(r: &Row) -> Result<RequestRow, Error> {
    let id: i64 = r.get(0);
    let state: String = r.get(4);
    let state =
        RequestState::parse(&state).ok_or_else(|| Error::Corrupt(format!("request {id} has state '{state}'")))?;
    Ok(RequestRow {
        id,
        run_id: r.get(1),
        body: r.get(2),
        accepted_at_ms: r.get(3),
        outcome: RequestOutcome {
            id,
            state,
            code: r.get(5),
            message: r.get(6),
            journal_seq: r.get::<_, Option<i64>>(7).map(|s| s as u64),
            decided_at_ms: r.get(8),
        },
    })
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

fn token_row(r: &Row) -> TokenRow {
    TokenRow {
        id: r.get(0),
        name: r.get(1),
        role: r.get(2),
        hash: r.get(3),
        created_at_ms: r.get(4),
        revoked_at_ms: r.get(5),
    }
}

fn envelope(run: &str, r: &Row, offset: usize) -> Result<Envelope, Error> {
    let seq: i64 = r.get(offset);
    let body: String = r.get(offset + 3);
    let event: Event = serde_json::from_str(&body)
        .map_err(|e| Error::Corrupt(format!("run {run} event {seq} does not parse: {e}")))?;
    Ok(Envelope { seq: seq as u64, at_ms: r.get(offset + 1), schema: r.get::<_, i64>(offset + 2) as u16, event })
}

fn parse_id(s: &str) -> Result<RunId, Error> {
    RunId::parse(s).map_err(Error::Corrupt)
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

    /// Wakes idle workers in every process (best effort: they also poll).
    async fn notify(&self) {
        let _ = self.execute("SELECT pg_notify('cairn_wake', '')", &[]).await;
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
        let rows = self
            .query(
                &format!(
                    "WITH open AS (SELECT id FROM runs WHERE id=$1 AND status NOT IN {TERMINAL} FOR UPDATE), \
                     ins AS (INSERT INTO inbox (run_id, body, created_at) \
                             SELECT id, $2, GREATEST($3, COALESCE((SELECT MAX(created_at) FROM inbox WHERE run_id=$1), $3)) \
                             FROM open RETURNING id, run_id), \
                     woken AS (UPDATE runs SET wake_at=LEAST(COALESCE(wake_at, $3), $3) \
                               WHERE id IN (SELECT run_id FROM ins) RETURNING id) \
                     SELECT id FROM ins"
                ),
                &[&id.as_str(), &body, &now_ms],
            )
            .await?;
        self.notify().await;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)))
    }

    async fn pending_inbox(&self, id: &RunId) -> Result<Vec<InboxRow>, Error> {
        let rows = self
            .query(
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
                 DELETE FROM runs WHERE id IN (SELECT id FROM gc_runs);"
            ))
            .await
            .map_err(pg)?;
            // The audit trail (refused requests too) and processes gone for a day are kept no
            // longer than finished runs.
            tx.execute("DELETE FROM audit WHERE at<$1", &[&cutoff]).await.map_err(pg)?;
            tx.execute("DELETE FROM workers WHERE seen_at<$1", &[&(now_ms - 86_400_000)]).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(GcReport { runs, events, payloads })
    }
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
