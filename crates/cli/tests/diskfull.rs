//! The disk fills up under `cairn serve` with runs in flight, then space comes back. Once, runs
//! stayed EXECUTING behind leases their server kept renewing until a restart, `POST /v1/runs`
//! answered 500 "stored data is damaged", `/readyz` said ready, and the log filled with hundreds
//! of identical lines. Now: every run finishes once space is back, without a restart; meanwhile
//! the API answers 503 saying the disk is full, `/readyz` is not ready, repeated lines are
//! rate-limited; nothing is lost and the database is intact.
//!
//! Runs on a real 16 MiB tmpfs (mounting needs root, as in CI; elsewhere the test says so and
//! passes, unless `CAIRN_REQUIRE_TMPFS=1`).

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                common::pg::missing("CAIRN_REQUIRE_TMPFS", "a tmpfs", &format!("it could not be mounted ({why})"));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes 256 KiB chunks to `path` until the filesystem is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("ballast");
    let chunk = vec![7u8; 256 * 1024];
    let mut written = 0;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // The last partial chunk may have filled the rest; flush what the kernel holds.
    let _ = f.sync_all();
    written
}

fn workflow() -> serde_json::Value {
    json!({"name": "steady", "steps": [
        {"id": "a", "kind": "mock_model", "with": {"prompt": "busy", "latency": "300ms"}},
        {"id": "b", "kind": "echo", "needs": ["a"], "with": {"payload": "x".repeat(2000)}},
        {"id": "c", "kind": "mock_model", "needs": ["b"], "with": {"prompt": "busy", "latency": "300ms"}},
        {"id": "d", "kind": "echo", "needs": ["c"], "with": {"payload": "y".repeat(2000)}},
        {"id": "e", "kind": "mock_model", "needs": ["d"], "with": {"prompt": "busy", "latency": "300ms"}},
    ]})
}

/// Runs in flight under `cairn serve` (with `args` saying which database), the disk under the
/// database filled, then freed; checks what the API and the log say meanwhile and that every run
/// completes once space is back. Returns the runs' ids.
fn full_disk_episode(env: &Env, args: &[&str], disk: &Path) -> Vec<String> {
    let server = env.serve(args);
    let addr = server.addr.clone();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let r = post(&addr, "/v1/runs", &json!({"workflow": workflow()}));
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().expect("id").to_string());
    }
    let ballast: PathBuf = disk.join("ballast");
    drain(&server.lines);
    fill(&ballast);

    // While the disk is full: new runs are refused with 503 saying why, and the server is not
    // ready; reading still works.
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused.is_none() && Instant::now() < deadline {
        let r = post(&addr, "/v1/runs", &json!({"workflow": workflow()}));
        match r.status {
            201 => ids.push(r.json()["id"].as_str().expect("id").to_string()),
            _ => refused = Some(r),
        }
    }
    let refused = refused.expect("a create refused while the disk is full");
    assert_eq!(refused.status, 503, "{}", refused.body);
    let error = refused.json()["error"].clone();
    assert_eq!(error["code"], "disk_full", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("disk") && m.contains("full")), "{error}");
    wait_for("readyz to say not ready", Duration::from_secs(10), || {
        call(&addr, "GET", "/readyz", &[], None).status == 503
    });
    let ready = call(&addr, "GET", "/readyz", &[], None);
    assert!(ready.body.contains("full"), "{}", ready.body);
    assert_eq!(get(&addr, &format!("/v1/runs/{}", ids[0])).status, 200, "reads go on");
    std::thread::sleep(Duration::from_secs(3));

    // Space comes back: every accepted run finishes, without a restart.
    std::fs::remove_file(&ballast).expect("free the space");
    for id in &ids {
        wait_for(&format!("run {id} to complete"), Duration::from_secs(60), || {
            get(&addr, &format!("/v1/runs/{id}")).json()["status"] == "COMPLETED"
        });
    }
    wait_for("readyz to be ready again", Duration::from_secs(10), || {
        call(&addr, "GET", "/readyz", &[], None).status == 200
    });
    let r = post(&addr, "/v1/runs?wait=20s", &json!({"workflow": workflow()}));
    assert_eq!((r.status, r.json()["status"].clone()), (201, json!("COMPLETED")), "{}", r.body);
    ids.push(r.json()["id"].as_str().expect("id").to_string());

    // The log said what happened without repeating itself hundreds of times.
    let lines = drain(&server.lines);
    assert!(lines.len() < 60, "{} log lines during the episode:\n{}", lines.len(), lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("full")), "the log says the disk is full:\n{}", lines.join("\n"));
    ids
}

#[test]
fn a_full_disk_strands_no_run_and_the_api_says_so_on_sqlite() {
    let Some(disk) = Tmpfs::mount("16m") else { return };
    let mut env = Env::new();
    env.db = disk.path().join("cairn.db");
    let ids = full_disk_episode(&env, &[], disk.path());
    // Nothing lost, nothing damaged.
    let integrity = rusqlite::Connection::open(&env.db)
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    for id in &ids {
        assert_eq!(env.step(id, "e").status, "COMPLETED");
        env.assert_journal_is_sound(id);
    }
}

/// A database whose tables live in a tablespace on a small tmpfs: PostgreSQL itself keeps its
/// write-ahead log elsewhere and stays up, while this database's writes fail with "could not
/// extend file: No space left on device" (SQLSTATE 53100) once the tmpfs is full.
struct FullablePg {
    disk: Tmpfs,
    name: String,
    url: String,
}

impl FullablePg {
    fn create() -> Option<FullablePg> {
        if !common::pg::reachable() {
            return None;
        }
        let base = common::pg::base_url();
        let disk = Tmpfs::mount("24m")?;
        let space = disk.path().join("ts");
        std::fs::create_dir(&space).expect("tablespace dir");
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(disk.path()).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown the tablespace to postgres");
        let name = format!("cairn_full_{}", std::process::id());
        let psql = |sql: &str| {
            let out = Command::new("psql").args([base.as_str(), "-qAtc", sql]).output().expect("psql");
            assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        };
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("DROP TABLESPACE IF EXISTS {name}"));
        psql(&format!("CREATE TABLESPACE {name} LOCATION '{}'", space.display()));
        psql(&format!("CREATE DATABASE {name} TABLESPACE {name}"));
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("CAIRN_TEST_POSTGRES should end with /DATABASE: {base}"),
        };
        Some(FullablePg { disk, name, url })
    }
}

impl Drop for FullablePg {
    fn drop(&mut self) {
        let base = common::pg::base_url();
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP TABLESPACE IF EXISTS {}", self.name),
        ] {
            let _ = Command::new("psql").args([base.as_str(), "-qAtc", &sql]).output();
        }
    }
}

#[test]
fn a_full_disk_strands_no_run_and_the_api_says_so_on_postgres() {
    let Some(pg) = FullablePg::create() else { return };
    let env = Env::new();
    let ids = full_disk_episode(&env, &["--database", &pg.url], pg.disk.path());
    for id in &ids {
        let out = env.run(&["--database", &pg.url, "replay", id]);
        assert!(out.status.success(), "run {id} replays: {}", stderr(&out));
    }
}

fn drain(rx: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}
