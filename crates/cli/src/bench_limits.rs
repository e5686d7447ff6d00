//! The machine's own limits, measured by `cairn bench` in the same invocation as the workloads,
//! so that results read as ratios that hold on any machine: how many `fdatasync`s the database's
//! filesystem does a second, how many single-row SQLite commits with `synchronous=FULL` (and how
//! many rows a second in 100-row transactions), and on PostgreSQL how many single-row commits
//! with the server's `synchronous_commit`. Each probe runs for about a second on scratch files or
//! a scratch table, which it removes.

use crate::{CliError, CliResult};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long each probe runs.
const PROBE: Duration = Duration::from_millis(1_000);

/// Operations a second of `op`, run until [`PROBE`] has passed (at least 10 times).
fn rate(mut op: impl FnMut() -> std::io::Result<()>) -> std::io::Result<f64> {
    let started = Instant::now();
    let mut n = 0u64;
    while n < 10 || started.elapsed() < PROBE {
        op()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// `fdatasync`s a second on `dir`'s filesystem: a 4 KiB write at the start of a scratch file,
/// then `sync_data`, over and over.
fn fdatasync(dir: &Path) -> std::io::Result<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join(format!(".cairn-bench-fsync-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    let block = [7u8; 4096];
    let result = rate(|| {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// SQLite in WAL mode with `synchronous=FULL` (as Cairn's store): single-row commits a second,
/// and rows a second in transactions of 100.
fn sqlite(dir: &Path) -> std::io::Result<(f64, f64)> {
    let path = dir.join(format!(".cairn-bench-sqlite-{}.db", std::process::id()));
    let result = (|| {
        let conn = rusqlite::Connection::open(&path).map_err(io)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .map_err(io)?;
        let payload = vec![7u8; 200];
        let mut insert = conn.prepare("INSERT INTO t(v) VALUES (?1)").map_err(io)?;
        let single = rate(|| insert.execute([&payload]).map(|_| ()).map_err(io))?;
        drop(insert);
        let batched = rate(|| {
            let tx = conn.unchecked_transaction().map_err(io)?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO t(v) VALUES (?1)").map_err(io)?;
                for _ in 0..100 {
                    insert.execute([&payload]).map_err(io)?;
                }
            }
            tx.commit().map_err(io)
        })?;
        Ok((single, batched * 100.0))
    })();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result
}

/// The limits where the SQLite database lives: `{fdatasync_per_s, sqlite_commits_per_s,
/// sqlite_rows_per_s_batched}`.
pub async fn sqlite_limits(dir: &Path) -> CliResult<Value> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let sync = fdatasync(&dir)?;
        let (commits, rows) = sqlite(&dir)?;
        Ok::<_, std::io::Error>(json!({
            "fdatasync_per_s": sync,
            "fdatasync_ms": 1000.0 / sync,
            "sqlite_commits_per_s": commits,
            "sqlite_rows_per_s_batched": rows,
        }))
    })
    .await
    .map_err(|e| CliError::env(e.to_string()))?
    .map_err(|e| CliError::env(format!("cannot measure the disk's limits: {e}")))
}

/// Single-row commits a second on the PostgreSQL database (a scratch table, dropped after).
pub async fn postgres_limits(url: &str) -> CliResult<Value> {
    let fail = |e: tokio_postgres::Error| CliError::env(format!("cannot measure PostgreSQL's commit rate: {e}"));
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(fail)?;
    let driver = tokio::spawn(connection);
    let table = format!("cairn_bench_limit_{}", std::process::id());
    client.batch_execute(&format!("CREATE TABLE {table}(id BIGSERIAL PRIMARY KEY, v BYTEA)")).await.map_err(fail)?;
    let measured = async {
        let insert = client.prepare(&format!("INSERT INTO {table}(v) VALUES ($1)")).await?;
        let payload = vec![7u8; 200];
        let started = Instant::now();
        let mut n = 0u64;
        while n < 10 || started.elapsed() < PROBE {
            client.execute(&insert, &[&payload]).await?;
            n += 1;
        }
        let setting: String = client.query_one("SHOW synchronous_commit", &[]).await?.get(0);
        Ok::<_, tokio_postgres::Error>((n as f64 / started.elapsed().as_secs_f64(), setting))
    }
    .await;
    let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
    driver.abort();
    let (commits, setting) = measured.map_err(fail)?;
    Ok(
        json!({"postgres_commits_per_s": commits, "postgres_commit_ms": 1000.0 / commits, "synchronous_commit": setting}),
    )
}

/// The limits in a line.
pub fn describe(limits: &Value) -> String {
    let f = |k: &str| limits[k].as_f64().unwrap_or(0.0);
    let mut parts = Vec::new();
    if limits.get("fdatasync_per_s").is_some() {
        parts.push(format!("fdatasync {:.0}/s ({:.2} ms)", f("fdatasync_per_s"), f("fdatasync_ms")));
        parts.push(format!("SQLite FULL single-row commits {:.0}/s", f("sqlite_commits_per_s")));
        parts.push(format!("100-row transactions {:.0} rows/s", f("sqlite_rows_per_s_batched")));
    }
    if limits.get("postgres_commits_per_s").is_some() {
        parts.push(format!(
            "PostgreSQL single-row commits {:.0}/s ({:.2} ms, synchronous_commit={})",
            f("postgres_commits_per_s"),
            f("postgres_commit_ms"),
            limits["synchronous_commit"].as_str().unwrap_or("?")
        ));
    }
    format!("limits: {}", parts.join(" · "))
}

/// A result's ratios to the limits: workflows a second over single-row commits a second (in
/// flight), or the workflow's p50 in commit times (one at a time).
pub fn ratios(row: &mut Value, limits: &Value) {
    let commits = limits["sqlite_commits_per_s"].as_f64().or(limits["postgres_commits_per_s"].as_f64());
    let Some(commits) = commits.filter(|c| *c > 0.0) else { return };
    let per_s = row["workflows_per_s"].as_f64().unwrap_or(0.0);
    row["ratio_to_commit_limit"] = json!(per_s / commits);
    if row["in_flight"].as_u64() == Some(1) {
        let p50 = row["workflow_p50_ms"].as_f64().unwrap_or(0.0);
        let unit = limits["fdatasync_ms"].as_f64().or(limits["postgres_commit_ms"].as_f64()).unwrap_or(0.0);
        if unit > 0.0 {
            row["p50_in_commit_times"] = json!(p50 / unit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_disk_limits_are_measured_and_the_scratch_files_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = sqlite_limits(dir.path()).await.expect("limits");
        for k in ["fdatasync_per_s", "sqlite_commits_per_s", "sqlite_rows_per_s_batched"] {
            assert!(limits[k].as_f64().is_some_and(|v| v > 0.0), "{limits}");
        }
        // A transaction of 100 rows costs one commit: far more rows a second than commits.
        assert!(limits["sqlite_rows_per_s_batched"].as_f64() > limits["sqlite_commits_per_s"].as_f64());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "scratch files left");
        let mut row = json!({"in_flight": 1, "workflows_per_s": 100.0, "workflow_p50_ms": 10.0});
        ratios(&mut row, &limits);
        assert!(row["ratio_to_commit_limit"].as_f64().is_some() && row["p50_in_commit_times"].as_f64().is_some());
        assert!(describe(&limits).starts_with("limits: fdatasync"));
    }
}
