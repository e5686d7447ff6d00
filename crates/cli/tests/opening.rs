//! Opening a database: commands that only read refuse a database Cairn never wrote to and leave
//! it untouched (they once created 13 tables in any PostgreSQL database they were pointed at);
//! an unreachable PostgreSQL server is retried for a stated time, then given up with the reason
//! (it once printed "retrying with backoff" and exited 3 milliseconds later).

mod common;

use common::pg::{Database, base_url};
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const READERS: &[&[&str]] = &[
    &["runs", "list"],
    &["runs", "show", "wf_01M7ZTB4ZSKR16V55RDQWV3BE6"],
    &["runs", "events", "wf_01M7ZTB4ZSKR16V55RDQWV3BE6"],
    &["runs", "requests", "wf_01M7ZTB4ZSKR16V55RDQWV3BE6"],
    &["export", "wf_01M7ZTB4ZSKR16V55RDQWV3BE6"],
    &["approvals"],
    &["replay", "wf_01M7ZTB4ZSKR16V55RDQWV3BE6"],
    &["tokens", "list"],
    &["gc", "--dry-run"],
    &["runs", "pause", "wf_01M7ZTB4ZSKR16V55RDQWV3BE6"],
];

fn psql_count(url: &str, sql: &str) -> i64 {
    let out = Command::new("psql").args([url, "-qAtc", sql]).output().expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

#[test]
fn reading_commands_refuse_a_postgres_database_without_cairn_schema_and_create_nothing() {
    let Some(db) = Database::create("noschema") else { return };
    let env = Env::new();
    let tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";
    for args in READERS {
        let mut all = vec!["--database", db.url.as_str()];
        all.extend_from_slice(args);
        let out = env.run(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no Cairn schema in postgres://") && stderr(&out).contains("commands that write"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(psql_count(&db.url, tables), 0, "{args:?} created tables");
    }
    // A command that writes creates the schema; then the readers work.
    let wf = env.write("wf.yaml", "name: one\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n");
    let out = env.run(&["--database", &db.url, "run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(psql_count(&db.url, tables) > 0);
    let out = env.run(&["--database", &db.url, "runs", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn reading_commands_refuse_an_empty_sqlite_file_and_leave_it_empty() {
    let env = Env::new();
    std::fs::write(&env.db, b"").expect("an empty file");
    for args in READERS {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no Cairn schema in"), "{args:?}: {}", stderr(&out));
        assert_eq!(std::fs::metadata(&env.db).expect("db").len(), 0, "{args:?} wrote to the file");
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn an_unreachable_postgres_is_retried_for_the_stated_time_then_given_up() {
    let env = Env::new();
    let url = format!("postgres://postgres@127.0.0.1:{}/cairn", closed_port());
    let started = Instant::now();
    let out = env.run(&["--database", &url, "--connect-timeout", "2s", "runs", "list"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("retrying for up to 2s"), "{err}");
    assert!(err.contains("cannot be reached after trying for") && err.contains("gave up"), "{err}");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "took {took:?}");
    // Asked not to wait, it gives up at once and says so.
    let out = env.run(&["--database", &url, "--connect-timeout", "0s", "runs", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot be reached") && !stderr(&out).contains("retrying"), "{}", stderr(&out));
}

#[test]
fn a_postgres_that_comes_up_within_the_wait_is_used() {
    let Some(db) = Database::create("lateup") else { return };
    let env = Env::new();
    let out = env.run(&["--database", &db.url, "gc", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "no schema yet: {}", stderr(&out));
    let wf = env.write("wf.yaml", "name: one\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n");
    assert!(env.run(&["--database", &db.url, "run", path_str(&wf)]).status.success());
    // The same database through a port that starts forwarding to the server after a second.
    let port = closed_port();
    let server = base_url().split('@').nth(1).and_then(|h| h.split('/').next()).unwrap_or("127.0.0.1:5432").to_string();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the late port");
        for client in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(&server) else { continue };
            pipe(client, upstream);
        }
    });
    let at = db.url.find('@').expect("a URL with user@host") + 1;
    let late = format!("{}127.0.0.1:{port}/{}", &db.url[..at], db.name);
    let out = env.run(&["--database", &late, "--connect-timeout", "20s", "runs", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("retrying for up to 20s"), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"workflow\": \"one\""), "{}", stdout(&out));
}

/// Copies bytes both ways between two sockets until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}
