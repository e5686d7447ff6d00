//! The storage test harness: a fresh, isolated store per test on either backend, and the
//! `conformance!` macro that runs one test body against both.
//!
//! - SQLite: a new file in a temporary directory (removed when the store is dropped).
//! - PostgreSQL: a new schema `cairn_t_…` in the database named by `CAIRN_TEST_POSTGRES`
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`); the store connects with that schema
//!   as its `search_path`, and the schema is dropped when the store is dropped.
//!
//! When PostgreSQL is unreachable its cases are skipped with a notice on stderr, unless
//! `CAIRN_REQUIRE_POSTGRES=1` (CI), which turns that into a failure.
//!
//! This file is also compiled into `crates/engine/tests/property.rs` (by `#[path]`), so the
//! engine's property test opens its stores the same way; hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod journal;

use cairn_store::{AnyStore, Durability, Error, PgStore, SqliteStore};
use std::io::Write;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a test's database lives; dropping it removes the database.
enum Place {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres(PgSchema),
}

/// A store of its own for one test. Derefs to the store; `shared()` gives an `Arc` for tasks.
pub struct TestStore {
    // Field order matters: the store (and its connections) goes before its database.
    store: Arc<AnyStore>,
    place: Place,
}

impl Deref for TestStore {
    type Target = AnyStore;
    fn deref(&self) -> &AnyStore {
        &self.store
    }
}

impl TestStore {
    /// A fresh, empty, migrated store; `None` when the backend is PostgreSQL and it is
    /// unreachable (the notice has been printed), so the caller skips the case.
    pub async fn open(backend: Backend) -> Option<TestStore> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir for the SQLite test database");
                let path = dir.path().join("cairn.db");
                let store = SqliteStore::open(&path, Durability::Normal)
                    .unwrap_or_else(|e| panic!("opening SQLite store {} failed: {e}", path.display()));
                Some(TestStore { store: Arc::new(AnyStore::Sqlite(store)), place: Place::Sqlite { _dir: dir, path } })
            }
            Backend::Postgres => {
                let schema = PgSchema::create().await?;
                let store = PgStore::open(&schema.url)
                    .await
                    .unwrap_or_else(|e| panic!("opening PostgreSQL store in schema {} failed: {e}", schema.name));
                Some(TestStore { store: Arc::new(AnyStore::Postgres(store)), place: Place::Postgres(schema) })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self.place {
            Place::Sqlite { .. } => Backend::Sqlite,
            Place::Postgres(_) => Backend::Postgres,
        }
    }

    /// The store, for tasks that outlive a borrow (`tokio::spawn`, an `Engine`).
    pub fn shared(&self) -> Arc<AnyStore> {
        self.store.clone()
    }

    /// Opens a second store on the same database, as another process (or a restart) would.
    pub async fn reopen(&self) -> Result<AnyStore, Error> {
        match &self.place {
            Place::Sqlite { path, .. } => SqliteStore::open(path, Durability::Normal).map(AnyStore::Sqlite),
            Place::Postgres(schema) => PgStore::open(&schema.url).await.map(AnyStore::Postgres),
        }
    }

    /// Runs SQL on the database behind the store's back (to inspect tables or tamper with them).
    pub async fn raw_execute(&self, sql: &str) {
        match &self.place {
            Place::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("open raw SQLite connection");
                conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
                conn.execute_batch(sql).unwrap_or_else(|e| panic!("raw SQLite `{sql}` failed: {e}"));
            }
            Place::Postgres(schema) => {
                let client = pg_connect(&schema.url).await.unwrap_or_else(|e| panic!("raw connection: {e}"));
                client.batch_execute(sql).await.unwrap_or_else(|e| panic!("raw PostgreSQL `{sql}` failed: {e}"));
            }
        }
    }

    /// A connection of its own to the PostgreSQL schema behind the store (`None` on SQLite), to
    /// hold locks or end the store's connections from outside.
    pub async fn raw_client(&self) -> Option<tokio_postgres::Client> {
        match &self.place {
            Place::Sqlite { .. } => None,
            Place::Postgres(schema) => {
                Some(pg_connect(&schema.url).await.unwrap_or_else(|e| panic!("raw connection: {e}")))
            }
        }
    }

    /// The single integer a raw `SELECT count(*) …` (or similar) returns.
    pub async fn raw_count(&self, sql: &str) -> i64 {
        match &self.place {
            Place::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("open raw SQLite connection");
                conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("raw SQLite `{sql}` failed: {e}"))
            }
            Place::Postgres(schema) => {
                let client = pg_connect(&schema.url).await.unwrap_or_else(|e| panic!("raw connection: {e}"));
                let row =
                    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("raw PostgreSQL `{sql}` failed: {e}"));
                row.get(0)
            }
        }
    }
}

/// Runs one test body against each backend: `conformance!(name, |store| async move { … })`
/// defines the module `name` with the tests `name::sqlite` and `name::postgres` (a module,
/// because `macro_rules!` cannot paste identifiers; `cargo test postgres` still selects one
/// backend). `store` is a [`TestStore`]. Attributes before the name apply to both tests;
/// `ignore_postgres = "why",` after it ignores only the PostgreSQL one (a known backend bug).
#[allow(unused_macros)] // unused where the harness is compiled into the engine's tests
macro_rules! conformance {
    ($(#[$attr:meta])* $name:ident, $(ignore_postgres = $why:literal,)? |$store:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some($store) = crate::common::TestStore::open(crate::common::Backend::Sqlite).await {
                    $body.await
                }
            }

            $(#[$attr])*
            $(#[ignore = $why])?
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some($store) = crate::common::TestStore::open(crate::common::Backend::Postgres).await {
                    $body.await
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use conformance;

// ---------------------------------------------------------------------------------------------
// PostgreSQL: one schema per test

/// The database from `CAIRN_TEST_POSTGRES`, or the local default.
fn base_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES.into())
}

fn postgres_required() -> bool {
    std::env::var("CAIRN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// `base` with `search_path` set to `schema` for every connection made from it. tokio-postgres
/// percent-decodes URL parameters and sends `options` in the startup packet, so
/// `?options=-csearch_path%3Dx` reaches the server as `-csearch_path=x`.
fn url_with_schema(base: &str, schema: &str) -> String {
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-csearch_path%3D{schema}")
    } else {
        // The `key=value` form.
        format!("{base} options='-csearch_path={schema}'")
    }
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{url} is not a PostgreSQL URL: {e}"))?;
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| format!("connecting to {url} timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {url}: {}", with_sources(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `e: its source: its source…` (tokio-postgres keeps the useful part, e.g. "Connection refused", in
/// the source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

/// Why PostgreSQL cases are skipped, once known, so later cases skip without a connect timeout.
static UNREACHABLE: Mutex<Option<String>> = Mutex::new(None);
static NOTICE: Once = Once::new();

fn skip_postgres(reason: String) -> Option<PgSchema> {
    if postgres_required() {
        panic!("CAIRN_REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {reason}");
    }
    NOTICE.call_once(|| {
        // Straight to the process's stderr: the test harness captures `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** skipping PostgreSQL conformance tests: {reason}; set CAIRN_TEST_POSTGRES to a reachable \
             database (and CAIRN_REQUIRE_POSTGRES=1 to fail instead of skipping) ***\n"
        );
    });
    if let Ok(mut u) = UNREACHABLE.lock() {
        u.get_or_insert(reason);
    }
    None
}

struct PgSchema {
    base: String,
    name: String,
    /// `base` with this schema as the search path.
    url: String,
}

impl PgSchema {
    async fn create() -> Option<PgSchema> {
        let known = UNREACHABLE.lock().ok().and_then(|u| u.clone());
        if let Some(reason) = known {
            return skip_postgres(reason);
        }
        let base = base_url();
        let admin = match pg_connect(&base).await {
            Ok(c) => c,
            Err(reason) => return skip_postgres(reason),
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("cairn_t_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        if let Err(e) = admin.batch_execute(&format!("CREATE SCHEMA {name}")).await {
            panic!("PostgreSQL at {base} is reachable but CREATE SCHEMA {name} failed: {e}");
        }
        let url = url_with_schema(&base, &name);
        Some(PgSchema { base, name, url })
    }
}

impl Drop for PgSchema {
    /// Best effort, and never a panic (this also runs while a failed test unwinds). A thread of
    /// its own with its own runtime, since the test's runtime may be the one calling us.
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let admin = pg_connect(&base).await?;
                admin
                    .batch_execute(&format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(|e| format!("DROP SCHEMA {name}: {e}"))
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            let _ = writeln!(std::io::stderr(), "warning: test schema left behind: {e}");
        }
    }
}
