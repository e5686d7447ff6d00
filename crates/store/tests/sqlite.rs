//! What only the SQLite backend has: a database *file*, which may be garbage, another
//! application's SQLite database, or a newer cairn's (`PRAGMA user_version`). Cairn must refuse
//! all three without changing a byte of them.
//!
//! Everything a store does with its data is in the conformance suite (`tests/conformance.rs`),
//! which runs against SQLite and PostgreSQL alike.

use cairn_store::{Durability, Error, SqliteStore};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

fn open(path: &Path) -> SqliteStore {
    match SqliteStore::open(path, Durability::Normal) {
        Ok(s) => s,
        Err(e) => panic!("opening {} failed: {e}", path.display()),
    }
}

fn open_err(path: &Path) -> Error {
    match SqliteStore::open(path, Durability::Normal) {
        Ok(_) => panic!("opening {} should have failed", path.display()),
        Err(e) => e,
    }
}

fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("cairn.db")
}

/// Tables, rows and header pragmas of a foreign database, read with plain rusqlite.
fn foreign_snapshot(path: &Path) -> (Vec<String>, Vec<i64>, i64, i64) {
    let conn = Connection::open(path).expect("open with rusqlite");
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master ORDER BY name").expect("prepare");
    let tables: Vec<String> = stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
    let mut stmt = conn.prepare("SELECT x FROM foo ORDER BY x").expect("prepare");
    let rows: Vec<i64> = stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
    let user_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("user_version");
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).expect("application_id");
    (tables, rows, user_version, app_id)
}

fn make_foreign_db(path: &Path) {
    let conn = Connection::open(path).expect("create foreign db");
    conn.execute_batch("CREATE TABLE foo(x); INSERT INTO foo VALUES (1), (2);").expect("foreign schema");
}

// ---------------------------------------------------------------------------------------------
// Whose file is it?

#[test]
fn garbage_file_is_not_ours_and_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    std::fs::write(&path, "hello\n").expect("write");
    match open_err(&path) {
        Error::NotOurs { path: p, detail } => {
            assert_eq!(p, path.display().to_string());
            assert!(detail.contains("not an SQLite database"), "{detail}");
        }
        other => panic!("expected NotOurs, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "hello\n");

    // Larger garbage (several pages of non-SQLite bytes) too.
    let big: Vec<u8> = (0..16_384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &big).expect("write");
    assert!(matches!(open_err(&path), Error::NotOurs { .. }));
    assert_eq!(std::fs::read(&path).expect("read"), big);
}

#[test]
fn foreign_sqlite_db_is_not_ours_and_its_tables_are_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    make_foreign_db(&path);
    let before = foreign_snapshot(&path);
    match open_err(&path) {
        Error::NotOurs { detail, .. } => assert!(detail.contains("another application"), "{detail}"),
        other => panic!("expected NotOurs, got {other:?}"),
    }
    assert_eq!(foreign_snapshot(&path), before, "no table, row, user_version or application_id may change");
    assert_eq!(before.0, vec!["foo".to_string()]);
    assert_eq!(before.1, vec![1, 2]);
}

/// Regression: the store used to switch a file to WAL before finding out it belonged to someone
/// else, so refusing a foreign database still rewrote its header (file format bytes 18–19).
#[test]
fn foreign_sqlite_db_file_is_byte_for_byte_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    make_foreign_db(&path);
    let before = std::fs::read(&path).expect("read");
    assert!(matches!(open_err(&path), Error::NotOurs { .. }));
    let after = std::fs::read(&path).expect("read");
    let mode: String = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "delete", "the foreign db's journal mode was changed");
    assert!(
        before == after,
        "the foreign db's bytes changed (header bytes 18..20: {:?} -> {:?})",
        &before[18..20],
        &after[18..20]
    );
}

#[test]
fn newer_schema_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    drop(open(&path));
    let conn = Connection::open(&path).expect("open with rusqlite");
    let known: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("user_version");
    assert!(known >= 1, "a fresh Cairn db records its migrations in user_version, got {known}");
    conn.pragma_update(None, "user_version", known + 1).expect("bump user_version");
    drop(conn);
    match open_err(&path) {
        Error::NewerSchema { found, known: k, .. } => {
            assert_eq!(found, known + 1);
            assert_eq!(k, known);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}
