//! Secrets end to end: `{{ secrets.NAME }}` reaches the service that needs it and nothing else —
//! not the database file (nor its WAL), exports, logs, events, API answers or the process's
//! output — on SQLite and PostgreSQL, with `cairn run` and with `cairn serve` and a cairn.toml.

mod common;

use common::pg::Database;
use common::{Env, Server, call, output_within, stderr, stdout, wait_line};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// What the service saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: String,
    idempotency_key: String,
}

/// A service on 127.0.0.1 that wants `Authorization: Bearer TOKEN`: `/ok` answers 200
/// `{"ok": true}`, `/mirror` answers 200 with the header it got, `/echo` answers 500 with the
/// header in the body (a service that echoes credentials in its errors); a wrong token is 401.
fn service(token: &str) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let expected = format!("Bearer {token}");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut authorization, mut idempotency_key, mut length) = (String::new(), String::new(), 0usize);
            line.clear();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':') {
                    let value = value.trim().to_string();
                    match name.trim().to_ascii_lowercase().as_str() {
                        "authorization" => authorization = value,
                        "idempotency-key" => idempotency_key = value,
                        "content-length" => length = value.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let (status, reply) = if authorization != expected {
                ("401 Unauthorized", json!({"error": "bad token"}).to_string())
            } else {
                match path.as_str() {
                    "/ok" => ("200 OK", json!({"ok": true}).to_string()),
                    "/mirror" => ("200 OK", json!({"you_sent": authorization}).to_string()),
                    _ => (
                        "500 Internal Server Error",
                        format!("upstream refused the call; headers: Authorization: {authorization}"),
                    ),
                }
            };
            log.lock().expect("seen").push(Seen { path, authorization, idempotency_key });
            let _ = (&stream).write_all(
                format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len())
                    .as_bytes(),
            );
        }
    });
    (addr, seen)
}

/// A value that cannot turn up by chance.
fn secret_value(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("cairn-{tag}-{}-{nanos}-Zq", std::process::id())
}

/// Calls the service with the secret three ways (a write, a GET that mirrors the header, an
/// echo step) and once more where the service echoes it in a 500 (retried, then failed).
fn workflow(addr: &str) -> String {
    format!(
        "\
name: secret-calls
steps:
  - id: call
    kind: http
    with:
      url: http://{addr}/ok
      headers: {{Authorization: \"Bearer {{{{ secrets.API_TOKEN }}}}\"}}
      body: {{q: 1}}
  - id: mirror
    kind: http
    needs: [call]
    with:
      url: http://{addr}/mirror
      method: GET
      headers: {{Authorization: \"Bearer {{{{ secrets.API_TOKEN }}}}\"}}
  - id: echo
    kind: echo
    needs: [call]
    with: {{auth: \"Bearer {{{{ secrets.API_TOKEN }}}}\", ok: \"{{{{ steps.call.output.ok }}}}\"}}
  - id: leaky
    kind: http
    needs: [mirror, echo]
    retry: {{max_attempts: 2, initial_delay: 10ms, max_delay: 10ms}}
    with:
      url: http://{addr}/echo
      headers: {{Authorization: \"Bearer {{{{ secrets.API_TOKEN }}}}\"}}
"
    )
}

#[track_caller]
fn assert_hidden(what: &str, haystack: &[u8], value: &str) {
    let found = haystack.windows(value.len()).any(|w| w == value.as_bytes());
    assert!(!found, "{what} contains the secret's value");
}

/// The SQLite file and its WAL (and shared memory), as they are on disk.
fn sqlite_bytes(env: &Env) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", env.db.display())) {
            bytes.extend(b);
        }
    }
    assert!(!bytes.is_empty(), "no database file at {}", env.db.display());
    bytes
}

/// Every row of every table (events, payloads, logs, effects, runs, steps …), as pg_dump has it.
fn postgres_bytes(db: &Database) -> Vec<u8> {
    let out = Command::new("pg_dump").args(["--data-only", db.url.as_str()]).output().expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for table in ["events", "payloads", "logs"] {
        assert!(text.contains(&format!("COPY public.{table} ")), "pg_dump has no table {table}");
    }
    out.stdout
}

/// `cairn ARGS` on the test's database (PostgreSQL when `db` is given).
fn cairn(env: &Env, db: Option<&Database>, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = env.cmd();
    if let Some(db) = db {
        cmd.args(["--database", db.url.as_str()]);
    }
    cmd.args(args).env_remove("CAIRN_SECRET_API_TOKEN").env_remove("CAIRN_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    output_within(cmd.stdin(std::process::Stdio::null()), LONG)
}

/// Runs the workflow with `cairn run` (the value from CAIRN_SECRET_API_TOKEN), then greps
/// everything the run left and every way of reading it for the value.
fn a_secret_reaches_the_service_and_nowhere_else(postgres: bool) {
    let db = if postgres {
        match Database::create("secrets_run") {
            Some(db) => Some(db),
            None => return,
        }
    } else {
        None
    };
    let env = Env::new();
    let value = secret_value("run");
    let (addr, seen) = service(&value);
    let wf = env.write("wf.yaml", &workflow(&addr));
    let wf = wf.to_str().expect("path");
    let run = cairn(&env, db.as_ref(), &["run", wf, "--json"], &[("CAIRN_SECRET_API_TOKEN", &value)]);
    assert_eq!(run.status.code(), Some(1), "leaky fails the run: {}", stderr(&run));
    let mut printed = run.stdout.clone();
    printed.extend(&run.stderr);
    assert_hidden("cairn run's output", &printed, &value);
    let outcome: Value = serde_json::from_str(&stdout(&run)).expect("--json outcome");
    let id = outcome["run_id"].as_str().expect("run id").to_string();

    // The service got the value, on every call, with a key that does not depend on it.
    let seen = seen.lock().expect("seen").clone();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/ok", "/mirror", "/echo", "/echo"], "{seen:#?}");
    assert!(seen.iter().all(|s| s.authorization == format!("Bearer {value}")), "{seen:#?}");
    assert_eq!(seen[0].idempotency_key, format!("{id}/call/call-1"));

    // What the service echoed is redacted, in the output of a success and the error of a failure.
    let show = cairn(&env, db.as_ref(), &["runs", "show", &id, "--json"], &[]);
    assert!(show.status.success(), "{}", stderr(&show));
    let shown = stdout(&show);
    assert!(
        shown.contains("upstream refused the call; headers: Authorization: Bearer [redacted secret API_TOKEN]"),
        "{shown}"
    );
    let export = cairn(&env, db.as_ref(), &["export", &id], &[]);
    assert!(export.status.success(), "{}", stderr(&export));
    let exported = stdout(&export);
    assert!(
        exported.contains("\"you_sent\":\"Bearer [redacted secret API_TOKEN]\"")
            || exported.contains("\"you_sent\": \"Bearer [redacted secret API_TOKEN]\""),
        "the mirrored header is redacted"
    );
    assert!(exported.contains("Bearer {{ secrets.API_TOKEN }}"), "the journaled inputs keep the reference");

    // Nowhere to be found: the database, and every way of reading the run.
    let stored = match &db {
        Some(db) => postgres_bytes(db),
        None => sqlite_bytes(&env),
    };
    assert_hidden("the database", &stored, &value);
    for args in [
        vec!["export", id.as_str()],
        vec!["export", id.as_str(), "--format", "jsonl"],
        vec!["runs", "logs", id.as_str()],
        vec!["runs", "events", id.as_str()],
        vec!["runs", "events", id.as_str(), "--json"],
        vec!["runs", "show", id.as_str(), "--json"],
        vec!["runs", "list", "--json"],
    ] {
        let out = cairn(&env, db.as_ref(), &args, &[]);
        assert!(out.status.success(), "cairn {args:?}: {}", stderr(&out));
        assert_hidden(&format!("cairn {args:?}"), &[out.stdout, out.stderr].concat(), &value);
    }

    // A replay needs no secrets: it re-derives the references.
    let replay = cairn(&env, db.as_ref(), &["replay", &id], &[]);
    assert!(replay.status.success(), "replay without the secret: {}{}", stdout(&replay), stderr(&replay));
    assert!(!stdout(&replay).contains("diverge"), "{}", stdout(&replay));
}

#[test]
fn a_secret_reaches_the_service_and_nowhere_else_on_sqlite() {
    a_secret_reaches_the_service_and_nowhere_else(false);
}

#[test]
fn a_secret_reaches_the_service_and_nowhere_else_on_postgres() {
    a_secret_reaches_the_service_and_nowhere_else(true);
}

#[test]
fn a_missing_secret_fails_the_step_permanently_naming_the_secret() {
    let env = Env::new();
    let (addr, seen) = service("never-used");
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: t\nsteps:\n  - id: call\n    kind: http\n    retry: {{max_attempts: 5}}\n    with: {{url: http://{addr}/ok, headers: {{Authorization: \"Bearer {{{{ secrets.API_TOKEN }}}}\"}}}}\n"
        ),
    );
    let run = cairn(&env, None, &["run", wf.to_str().expect("path")], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let err = stderr(&run);
    assert!(
        err.contains("secret `API_TOKEN` is not available: set the environment variable `CAIRN_SECRET_API_TOKEN`"),
        "{err}"
    );
    let id = env.only_run().id;
    let step = env.step(&id, "call");
    assert_eq!((step.status.as_str(), step.attempts), ("FAILED", 1), "permanent: no retries");
    assert!(seen.lock().expect("seen").is_empty(), "nothing was sent");
}

/// Starts `cairn serve` with extra environment variables and waits until it listens.
fn serve_with(env: &Env, db: Option<&Database>, envs: &[(&str, &str)]) -> Server {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    if let Some(db) = db {
        args.extend(["--database", db.url.as_str()]);
    }
    let (child, lines) = env.spawn(&args, envs);
    let seen = wait_line(&lines, "listening on http://", Duration::from_secs(20));
    let line = seen.last().expect("the listening line");
    let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("address").to_string();
    Server { child, addr, lines }
}

/// `cairn serve` takes the value from the variable cairn.toml names (over a different
/// CAIRN_SECRET_API_TOKEN), and no API answer, log line or stored row has it.
fn serve_with_a_config_mapping(postgres: bool) {
    let db = if postgres {
        match Database::create("secrets_serve") {
            Some(db) => Some(db),
            None => return,
        }
    } else {
        None
    };
    let env = Env::new();
    let value = secret_value("serve");
    let decoy = secret_value("decoy");
    let (addr, seen) = service(&value);
    env.write("cairn.toml", "[secrets]\nAPI_TOKEN = { env = \"TEST_VAULT_API_TOKEN\" }\n");
    let mut server =
        serve_with(&env, db.as_ref(), &[("TEST_VAULT_API_TOKEN", &value), ("CAIRN_SECRET_API_TOKEN", &decoy)]);
    let api = server.addr.clone();
    let yaml = [("content-type", "application/yaml")];
    let r = call(&api, "POST", "/v1/workflows", &yaml, Some(&workflow(&addr)));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["warnings"], json!([]), "a template is not a literal credential");
    let r = call(
        &api,
        "POST",
        "/v1/runs?wait=30s",
        &[("content-type", "application/json")],
        Some(r#"{"workflow": "secret-calls"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let run = r.json();
    assert_eq!(run["status"], "FAILED", "{run:#}");
    let id = run["id"].as_str().expect("id").to_string();
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert!(seen.iter().all(|s| s.authorization == format!("Bearer {value}")), "the mapping wins: {seen:#?}");

    let mut answers = Vec::new();
    for path in [
        format!("/v1/runs/{id}"),
        format!("/v1/runs/{id}/steps"),
        format!("/v1/runs/{id}/events"),
        format!("/v1/runs/{id}/export"),
        format!("/v1/runs/{id}/steps/leaky/logs"),
        format!("/v1/runs/{id}/steps/mirror/logs"),
        format!("/v1/runs/{id}/events/stream"),
        "/v1/workflows/secret-calls".to_string(),
    ] {
        let r = call(&api, "GET", &path, &[], None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        assert_hidden(&format!("GET {path}"), r.body.as_bytes(), &value);
        answers.push(r.body);
    }
    assert!(answers[0].contains("Bearer [redacted secret API_TOKEN]"), "the echoed error is redacted: {}", answers[0]);

    // A literal credential registered is answered with a warning (and still registered).
    let leaky = "name: leaky\nsteps:\n  - id: a\n    kind: echo\n    with: {headers: {Authorization: Bearer abc123}}\n";
    let r = call(&api, "POST", "/v1/workflows", &yaml, Some(leaky));
    assert_eq!(r.status, 201, "{}", r.body);
    let warnings = r.json()["warnings"].clone();
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.starts_with("<request.yaml>:5:37: step `a`: `with.headers.Authorization`")),
        "{warnings:#}"
    );

    server.signal("TERM");
    server.wait_exit(Duration::from_secs(20));
    let lines: Vec<String> = server.lines.try_iter().collect();
    assert_hidden("cairn serve's stderr", lines.join("\n").as_bytes(), &value);
    let stored = match &db {
        Some(db) => postgres_bytes(db),
        None => sqlite_bytes(&env),
    };
    assert_hidden("the database", &stored, &value);
    assert_hidden("the database", &stored, &decoy);
}

#[test]
fn serve_reads_secrets_from_the_variables_cairn_toml_names_and_answers_none_on_sqlite() {
    serve_with_a_config_mapping(false);
}

#[test]
fn serve_reads_secrets_from_the_variables_cairn_toml_names_and_answers_none_on_postgres() {
    serve_with_a_config_mapping(true);
}

#[test]
fn validation_refuses_a_secret_in_a_condition_and_warns_on_a_literal_authorization_header() {
    let env = Env::new();
    let refused =
        env.write("when.yaml", "name: t\nsteps:\n  - id: a\n    kind: echo\n    when: \"secrets.API_TOKEN == 'x'\"\n");
    let out = cairn(&env, None, &["validate", refused.to_str().expect("path")], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "when.yaml:5:11: step `a`: `when` reads `secrets.API_TOKEN` (at 1:1 in the condition), but a condition \
             cannot read secrets"
        ),
        "{}",
        stdout(&out)
    );
    let leaky = env.write(
        "leaky.yaml",
        "name: t\nsteps:\n  - id: call\n    kind: http\n    with:\n      url: http://127.0.0.1:9/x\n      headers: {Authorization: \"Bearer abc123\"}\n",
    );
    let out = cairn(&env, None, &["validate", leaky.to_str().expect("path")], &[]);
    assert_eq!(out.status.code(), Some(0), "a warning is not a problem: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("leaky.yaml:7:32: warning: step `call`: `with.headers.Authorization` holds a literal credential"),
        "{text}"
    );
    assert!(text.contains("write `Bearer {{ secrets.API_TOKEN }}`") && !text.contains("abc123"), "{text}");
}

#[test]
fn a_broken_cairn_toml_is_refused_with_its_position_and_the_known_keys() {
    let env = Env::new();
    env.write("cairn.toml", "[secrets]\nAPI_TOKEN = { env = \"X\" }\n\n[secret]\nB = 1\n");
    let out = cairn(&env, None, &["runs", "list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cairn.toml:4:2: unknown key `secret`; the known keys are `secrets`, `kinds`"),
        "{}",
        stderr(&out)
    );
    let out = cairn(&env, None, &["--config", "nope.toml", "runs", "list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read the config file nope.toml"), "{}", stderr(&out));
    // CAIRN_CONFIG names another file; `config check` says where each secret comes from.
    let good = env.write("other.toml", "[secrets]\nAPI_TOKEN = { env = \"TEST_TOKEN_VAR\" }\n");
    let out = cairn(
        &env,
        None,
        &["config", "check"],
        &[("CAIRN_CONFIG", good.to_str().expect("path")), ("TEST_TOKEN_VAR", "abcd")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("secrets.API_TOKEN <- $TEST_TOKEN_VAR (set here)"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("abcd"));
}
