//! Tools against real parts: a real SQLite file and PostgreSQL, a real HTTP service on loopback,
//! a real sandbox directory, the real binary (`cairn tools call`, `tool` steps, approvals,
//! SIGKILL). Every refusal is asserted by its message.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn config(env: &Env, text: &str) -> std::path::PathBuf {
    env.write("cairn.toml", text)
}

/// `cairn tools call NAME --args JSON [--yes]` in the test's directory: (exit code, stdout, stderr).
fn call(env: &Env, name: &str, args: &Value, yes: bool) -> (i32, String, String) {
    let args = args.to_string();
    let mut argv = vec!["tools", "call", name, "--args", args.as_str(), "--json"];
    if yes {
        argv.push("--yes");
    }
    let out = env.run(&argv);
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

fn refused(env: &Env, name: &str, args: Value, says: &str) {
    let (code, out, err) = call(env, name, &args, true);
    assert_ne!(code, 0, "{name} {args} was not refused: {out}");
    assert!(err.contains(says), "{name} {args}: expected `{says}` in: {err}");
}

fn orders_sqlite(env: &Env) {
    let db = env.dir.path().join("orders.db");
    let c = rusqlite::Connection::open(&db).expect("sqlite");
    c.execute_batch(
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, total REAL);
         INSERT INTO orders(customer, total) VALUES ('ann', 120.5), ('bob', 30), ('cy', 99.9);",
    )
    .expect("orders");
}

const SQL_REFUSALS: &[(&str, &str)] = &[
    ("DELETE FROM orders", "DELETE is not a query"),
    ("UPDATE orders SET total = 0", "UPDATE is not a query"),
    ("DROP TABLE orders", "DROP TABLE is not a query"),
    ("SELECT 1; SELECT 2", "2 statements"),
    ("SELECT 1; /* a comment */ DELETE FROM orders", "2 statements"),
    ("SELECT 1 -- hidden\n; DELETE FROM orders", "2 statements"),
];

#[test]
fn sql_queries_read_and_everything_that_writes_is_refused_on_sqlite() {
    let env = Env::new();
    orders_sqlite(&env);
    config(&env, "[tools.orders_db]\ntype = \"sql_query\"\nconnection = \"sqlite://orders.db\"\nmax_rows = 2\n");
    let (code, out, err) = call(
        &env,
        "orders_db",
        &json!({"sql": "SELECT customer, total FROM orders WHERE total > ?1 ORDER BY id", "params": [50]}),
        false,
    );
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(answer["rows"], json!([{"customer": "ann", "total": 120.5}, {"customer": "cy", "total": 99.9}]));
    let (_, out, _) = call(&env, "orders_db", &json!({"sql": "SELECT id FROM orders ORDER BY id"}), false);
    let answer: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((answer["row_count"].as_u64(), answer["truncated"].as_bool()), (Some(2), Some(true)), "max_rows caps");
    let mut refusals = SQL_REFUSALS.to_vec();
    refusals.extend([
        ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "data-modifying"),
        ("ATTACH DATABASE 'other.db' AS other", "ATTACH"),
        ("PRAGMA journal_mode = 'delete'", "PRAGMA journal_mode with a value"),
        ("PRAGMA query_only = 0", "PRAGMA query_only with a value"),
        ("SELECT load_extension('x')", "load_extension() is not allowed"),
    ]);
    for (sql, says) in refusals {
        refused(&env, "orders_db", json!({"sql": sql}), says);
    }
    // Nothing changed.
    let c = rusqlite::Connection::open(env.dir.path().join("orders.db")).expect("sqlite");
    let n: i64 = c.query_row("SELECT count(*) FROM orders WHERE total > 0", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 3);
    assert!(!env.dir.path().join("other.db").exists(), "ATTACH created nothing");
    // A schema failure names the field as a JSON pointer, what was given and what was expected.
    refused(&env, "orders_db", json!({"sql": 5}), "at /sql: 5 is not of type \"string\"");
    refused(
        &env,
        "orders_db",
        json!({"sql": "SELECT 1", "limit": 3}),
        "Additional properties are not allowed ('limit' was unexpected)",
    );
    // No value larger than the answer may hold is made, and the rows stop at the byte cap.
    let capped =
        "[tools.orders_db]\ntype = \"sql_query\"\nconnection = \"sqlite://orders.db\"\nmax_response_bytes = 2048\n";
    config(&env, capped);
    let huge = json!({"sql": "SELECT printf('%.*c', 30000000, 'x') AS x FROM orders"});
    refused(&env, "orders_db", huge, "over this tool's max_response_bytes (2048)");
    let (_, out, _) =
        call(&env, "orders_db", &json!({"sql": "SELECT printf('%.*c', 900, 'x') AS x FROM orders"}), false);
    let answer: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((answer["row_count"].as_u64(), answer["truncated"].as_bool()), (Some(2), Some(true)), "{out}");
}

/// A login role that can only read, dropped at the end of the test (after its database).
struct Reader(String);

impl Drop for Reader {
    fn drop(&mut self) {
        let base = common::pg::base_url();
        let drop = format!("DROP ROLE IF EXISTS {}", self.0);
        let _ = std::process::Command::new("psql").args([base.as_str(), "-qAtc", &drop]).output();
    }
}

#[test]
fn sql_queries_on_postgres_run_read_only_and_writes_in_disguise_are_refused() {
    let reader = Reader(format!("cairn_reader_{}", std::process::id()));
    let Some(db) = common::pg::Database::create("tools") else { return };
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql").args([db.url.as_str(), "-qAtc", sql]).output().expect("psql");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    psql(
        "CREATE TABLE orders(id serial PRIMARY KEY, customer text, total numeric); INSERT INTO orders(customer, total) VALUES ('ann', 120.5), ('bob', 30); CREATE SEQUENCE s;",
    );
    let env = Env::new();
    // A superuser's connection is refused: a read-only transaction does not stop its functions.
    config(&env, &format!("[tools.pg]\ntype = \"sql_query\"\nconnection = \"{}\"\n", db.url));
    refused(&env, "pg", json!({"sql": "SELECT 1"}), "is a superuser");
    psql(&format!(
        "DROP ROLE IF EXISTS {0}; CREATE ROLE {0} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {0}",
        reader.0
    ));
    let url = db.url.replacen("postgres@", &format!("{}@", reader.0), 1);
    config(&env, &format!("[tools.pg]\ntype = \"sql_query\"\nconnection = \"{url}\"\n"));
    let (code, out, err) = call(
        &env,
        "pg",
        &json!({"sql": "SELECT customer, total FROM orders WHERE total > $1 AND customer <> $2 ORDER BY id", "params": [50.25, "zed"]}),
        false,
    );
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(answer["rows"], json!([{"customer": "ann", "total": 120.5}]));
    let (_, out, _) = call(
        &env,
        "pg",
        &json!({"sql": "SELECT count(*) AS n FROM orders WHERE total > $1", "params": ["-0.001"]}),
        false,
    );
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["rows"], json!([{"n": 2}]));
    let (_, out, _) = call(
        &env,
        "pg",
        &json!({"sql": "SELECT count(*) AS n FROM orders WHERE total > $1", "params": [120.49999]}),
        false,
    );
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["rows"], json!([{"n": 1}]));
    assert_eq!(answer["columns"], json!(["customer", "total"]));
    let mut refusals = SQL_REFUSALS.to_vec();
    refusals.extend([
        ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "data-modifying"),
        ("SELECT * INTO t FROM orders", "SELECT … INTO"),
        ("SELECT pg_terminate_backend(1)", "pg_terminate_backend() is not allowed"),
        ("SELECT * FROM ts_stat('select to_tsvector(pg_terminate_backend(1)::text)')", "ts_stat() is not allowed"),
        ("SELECT nextval('s')", "nextval() is not allowed"),
        ("SELECT * FROM orders FOR UPDATE", "row locks"),
        ("COPY orders TO STDOUT", "COPY"),
    ]);
    for (sql, says) in refusals {
        refused(&env, "pg", json!({"sql": sql}), says);
    }
    assert_eq!(psql("SELECT count(*) FROM orders"), "2");
    assert_eq!(psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'"), "0");
    // The second guard on its own: a function that writes but is not on the deny-list is stopped
    // by the read-only transaction.
    psql(&format!(
        "CREATE FUNCTION wipe() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM orders RETURNING 1'; \
         GRANT EXECUTE ON FUNCTION wipe() TO {}",
        reader.0
    ));
    refused(&env, "pg", json!({"sql": "SELECT wipe()"}), "read-only transaction");
    assert_eq!(psql("SELECT count(*) FROM orders"), "2");
    // A statement timeout stops a long query.
    config(&env, &format!("[tools.pg]\ntype = \"sql_query\"\nconnection = \"{url}\"\nstatement_timeout = 0.3\n"));
    refused(&env, "pg", json!({"sql": "SELECT count(*) FROM generate_series(1, 100000000)"}), "timeout");
}

#[test]
fn http_requests_refuse_internal_addresses_disallowed_hosts_and_redirects_out() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    config(&env, "[tools.local]\ntype = \"http_request\"\nallow_hosts = [\"127.0.0.1\"]\n");
    // The default tool reaches public hosts only.
    for (url, says) in [
        ("http://127.0.0.1:9/x", "127.0.0.1, a loopback address; refused"),
        ("http://[::1]:9/x", "::1, a loopback address; refused"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a cloud metadata address; refused"),
        ("http://10.0.0.1/", "10.0.0.1, a private address; refused"),
        ("http://192.168.1.1/", "a private address; refused"),
        ("http://[::ffff:127.0.0.1]:9/", "an IPv4-mapped internal address; refused"),
        ("http://localhost:9/", "localhost resolves to 127.0.0.1, a loopback address; refused"),
        ("file:///etc/passwd", "does not match"),
    ] {
        refused(&env, "http_request", json!({"url": url}), says);
    }
    // An allowed host works (and a GET reads, so it needs no --yes); others are refused.
    let (code, out, err) =
        call(&env, "local", &json!({"url": format!("http://{addr}/ping"), "query": {"q": "a b"}}), false);
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((answer["status"].as_u64(), &answer["body"]), (Some(200), &json!({"ok": true})));
    refused(&env, "local", json!({"url": "http://example.com/"}), "host example.com is not in this tool's allow_hosts");
    // A redirect is checked like the first request: to a private address, or to a host that is
    // not allowed, it is not followed.
    let to = |target: &str| json!({"url": format!("http://{addr}/redirect?to={target}")});
    refused(&env, "local", to("http://10.1.2.3/"), "host 10.1.2.3 is not in this tool's allow_hosts");
    refused(&env, "local", to("http://localhost:1/"), "host localhost is not in this tool's allow_hosts");
    let followed = seen.lock().expect("seen").iter().filter(|s| s.path.starts_with("/redirect")).count();
    assert_eq!(followed, 2, "each redirect was asked once and not followed");
    // A write needs --yes here, and carries an idempotency key.
    let post = json!({"method": "POST", "url": format!("http://{addr}/notes"), "body": {"text": "hi"}});
    let (code, _, err) = call(&env, "local", &post, false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("writes with these arguments (effect write); add --yes"), "{err}");
    let (code, _, err) = call(&env, "local", &post, true);
    assert_eq!(code, 0, "{err}");
    let notes: Vec<Seen> = seen.lock().expect("seen").iter().filter(|s| s.path == "/notes").cloned().collect();
    assert_eq!(notes.len(), 1);
    assert_eq!((notes[0].method.as_str(), notes[0].body.as_str()), ("POST", "{\"text\":\"hi\"}"));
    assert!(notes[0].key.as_deref().is_some_and(|k| k.starts_with("cli/") && k.ends_with("/call-1")), "{notes:?}");
}

#[test]
fn files_stay_in_their_sandbox() {
    let env = Env::new();
    let sandbox = env.dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).expect("sandbox");
    std::os::unix::fs::symlink("/", sandbox.join("root")).expect("symlink");
    std::os::unix::fs::symlink("../cairn.toml", sandbox.join("config")).expect("symlink");
    let fifo = sandbox.join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    config(&env, "[tools.workspace]\ntype = \"file\"\nroot = \"./sandbox\"\nmax_file_bytes = 100\n");
    let (code, _, err) =
        call(&env, "workspace", &json!({"op": "write", "path": "notes/today.md", "content": "# Today"}), true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(sandbox.join("notes/today.md")).expect("written"), "# Today");
    let (_, out, _) = call(&env, "workspace", &json!({"op": "read", "path": "notes/today.md"}), false);
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["content"], "# Today");
    for (args, says) in [
        (json!({"op": "read", "path": "../cairn.toml"}), "contains `..`; paths may not leave the sandbox"),
        (json!({"op": "read", "path": "/etc/passwd"}), "is an absolute path"),
        (json!({"op": "read", "path": "root/etc/passwd"}), "leads out of the sandbox"),
        (json!({"op": "read", "path": "config"}), "leads out of the sandbox"),
        (json!({"op": "list", "path": "root"}), "leads out of the sandbox"),
        (json!({"op": "write", "path": "root/tmp/cairn-escape", "content": "x"}), "leads out of the sandbox"),
        (json!({"op": "read", "path": "pipe"}), "is not a regular file"),
        (
            json!({"op": "write", "path": "big.txt", "content": "x".repeat(101)}),
            "over this tool's max_file_bytes (100)",
        ),
        (json!({"op": "delete", "path": "notes"}), "at /op"),
    ] {
        refused(&env, "workspace", args, says);
    }
    assert!(!std::path::Path::new("/tmp/cairn-escape").exists());
}

/// A workflow: a read-only query, then a POST that needs approval.
fn notify_workflow(env: &Env, addr: &str) -> std::path::PathBuf {
    orders_sqlite(env);
    config(
        env,
        &format!(
            "[tools.orders_db]\ntype = \"sql_query\"\nconnection = \"sqlite://orders.db\"\n\n[tools.notify]\ntype = \"http_request\"\nallow_hosts = [\"127.0.0.1\"]\n\n# {addr}\n"
        ),
    );
    env.write(
        "wf.yaml",
        &format!(
            "name: report\nsteps:\n  - id: big\n    kind: tool\n    with:\n      tool: orders_db\n      args: {{sql: \"SELECT count(*) AS n FROM orders WHERE total > 50\"}}\n  - id: post\n    kind: tool\n    needs: [big]\n    with:\n      tool: notify\n      args:\n        method: POST\n        url: http://{addr}/notes\n        body: {{text: \"{{{{ steps.big.output.rows[0].n }}}} big orders\"}}\n"
        ),
    )
}

/// `cairn run` of the notify workflow, once its POST waits for approval: the process and the run.
fn blocked(env: &Env, addr: &str) -> (std::process::Child, String) {
    let wf = notify_workflow(env, addr);
    let (child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "blocked(tool call approval)", LONG);
    (child, env.only_run().id)
}

#[test]
fn a_write_waits_for_approval_survives_a_restart_and_is_sent_once_with_the_edited_arguments() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    let (mut child, id) = blocked(&env, &addr);
    assert_eq!(env.step(&id, "post").status, "WAITING");
    assert!(seen.lock().expect("seen").is_empty(), "nothing is sent before the approval");
    // The approvals list shows the tool, the arguments and why.
    let out = env.run(&["approvals", "--json"]);
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let call = &listed[0]["call"];
    assert_eq!(
        (call["tool"].as_str(), call["effect"].as_str(), call["call"].as_u64()),
        (Some("notify"), Some("write"), Some(1))
    );
    assert_eq!(call["args"]["body"], json!({"text": "2 big orders"}));
    assert!(call["reason"].as_str().unwrap_or_default().contains("calls that write need approval"), "{call}");
    // The process dies while it waits; the request survives.
    sigkill(&mut child);
    // Edited arguments that do not fit the schema are refused, naming the field.
    let bad = json!({"method": "POST", "url": 7});
    let out = env.run(&["approve", &id, "post", "--args", &bad.to_string(), "--detach"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("at /url: 7 is not of type \"string\""), "{}", stderr(&out));
    let edited =
        json!({"method": "POST", "url": format!("http://{addr}/notes"), "body": {"text": "2 big orders (edited)"}});
    let out = env.run(&["approve", &id, "post", "--args", &edited.to_string(), "--by", "ana", "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED");
    let sent = seen.lock().expect("seen").clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body, "{\"text\":\"2 big orders (edited)\"}");
    assert_eq!(sent[0].key.as_deref(), Some(format!("{id}/post/call-1").as_str()));
    // The journal says who approved what.
    let decided = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::ApprovalDecided { by, args, approved: true, .. } => Some((by, args)),
        _ => None,
    });
    assert_eq!(decided, Some((Some("ana".to_string()), Some(edited))));
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_rejected_write_fails_its_step_with_the_reason_and_is_never_sent() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    let (mut child, id) = blocked(&env, &addr);
    let out = env.run(&["reject", &id, "post", "--reason", "not to that channel", "--by", "bo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(wait_exit(&mut child, LONG).code(), Some(1));
    let post = env.step(&id, "post");
    assert_eq!(post.status, "FAILED");
    let message = post.error_message.unwrap_or_default();
    assert!(message.contains("rejected by bo: not to that channel"), "{message}");
    assert!(seen.lock().expect("seen").is_empty());
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_write_whose_result_was_recorded_is_not_sent_again_after_a_crash() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    let wf = notify_workflow(&env, &addr);
    // Approved by policy here, so the step runs straight through.
    let text = std::fs::read_to_string(env.dir.path().join("cairn.toml")).expect("config");
    config(&env, &text.replace("allow_hosts = [\"127.0.0.1\"]", "allow_hosts = [\"127.0.0.1\"]\napproval = \"never\""));
    // The process stops right after the tool returned, before the attempt's result is committed.
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "post")]);
    wait_line(&lines, "holding", LONG);
    assert_eq!(seen.lock().expect("seen").len(), 1);
    sigkill(&mut child);
    let out = env.run(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPLETED");
    assert_eq!(seen.lock().expect("seen").len(), 1, "the far side saw one request");
    assert!(env.started(&id, "post") >= 2, "the step ran again, and its call came back from the record");
    env.assert_journal_is_sound(&id);
}

#[test]
fn bad_tool_configuration_is_refused_at_its_line() {
    let env = Env::new();
    for (text, says) in [
        ("[tools.x]\ntype = \"ftp\"\n", "cairn.toml:1:1: `tools.x.type` is `ftp`; use http_request, sql_query or file"),
        ("[tools.x]\ntype = \"file\"\n", "`tools.x` (file) needs `root`"),
        ("[tools.x]\ntype = \"file\"\nroot = \"./nope\"\n", "tool 'x': its root `"),
        (
            "[tools.x]\ntype = \"sql_query\"\nconnection = \"sqlite://a.db\"\nroot = \"/\"\n",
            "unknown key `root` for type sql_query",
        ),
        ("[tools.x]\ntype = \"http_request\"\napproval = \"args.amount >\"\n", "is not CEL"),
        (
            "[tools.x]\ntype = \"http_request\"\nheaders = {Authorization = \"Bearer abc\"}\n",
            "would put a credential in this file",
        ),
        ("[mcp.fs]\ncommand = []\n", "`mcp.fs` needs `command"),
        ("[mcp.fs]\nurl = \"ftp://x\"\n", "not an http:// or https:// URL"),
    ] {
        config(&env, text);
        let out = env.run(&["tools", "list"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr(&out).contains(says), "{text}: {}", stderr(&out));
    }
}

#[test]
fn a_workflow_defines_http_tools_only_and_they_never_reach_internal_addresses() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    let bad = env.write(
        "bad.yaml",
        "name: bad\ntools:\n  db: {type: sql_query, connection: \"sqlite:///etc/x.db\"}\n  hook: {type: http_request, approval: \"args.x >\", retries: 3}\nsteps:\n  - {id: a, kind: tool, with: {tool: hook}}\n",
    );
    let out = env.run(&["validate", path_str(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    let err = format!("{}{}", stdout(&out), stderr(&out));
    assert!(err.contains("a workflow may define `http_request` tools only"), "{err}");
    assert!(err.contains("`tools.hook.approval` is not never, always or a CEL condition"), "{err}");
    assert!(err.contains("`tools.hook` has an unknown key `retries`"), "{err}");
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: own\ntools:\n  hook: {{type: http_request, allow_hosts: [\"127.0.0.1\"], approval: never, timeout: 5s}}\nsteps:\n  - {{id: ping, kind: tool, with: {{tool: hook, args: {{url: \"http://{addr}/x\"}}}}}}\n"
        ),
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.only_run().id;
    let message = env.step(&id, "ping").error_message.unwrap_or_default();
    assert!(message.contains("a workflow's own tools never reach internal addresses"), "{message}");
    // A workflow may not stand in for a tool the server declares.
    config(&env, "[tools.hook]\ntype = \"http_request\"\nallow_hosts = [\"127.0.0.1\"]\n");
    let wf = env.write(
        "shadow.yaml",
        &std::fs::read_to_string(&wf).expect("wf").replace("name: own", "name: shadow").replace("ping", "pong"),
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.runs().into_iter().find(|r| r.workflow == "shadow").expect("run").id;
    let message = env.step(&id, "pong").error_message.unwrap_or_default();
    assert!(message.contains("already a tool of this server's registry"), "{message}");
    assert!(seen.lock().expect("seen").is_empty());
}

#[test]
fn the_api_lists_tools_and_shows_a_waiting_call_that_is_approved_with_edited_arguments() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    notify_workflow(&env, &addr);
    let server = env.serve(&[]);
    let api = server.addr.clone();
    let tools = get(&api, "/v1/tools").json();
    let orders = tools["tools"].as_array().into_iter().flatten().find(|t| t["name"] == "orders_db").cloned();
    let orders = orders.expect("orders_db is listed");
    assert_eq!((orders["effect"].as_str(), orders["approval"].as_str()), (Some("read"), Some("never")));
    assert_eq!(orders["openai"]["function"]["parameters"]["required"], json!(["sql"]));
    assert_eq!(orders["anthropic"]["input_schema"]["required"], json!(["sql"]));
    let workflow = json!({"name": "api", "steps": [{"id": "post", "kind": "tool", "with": {"tool": "notify", "args": {
        "method": "POST", "url": format!("http://{addr}/notes"), "body": {"text": "from the API"}}}}]});
    let r = post(&api, "/v1/runs", &json!({"workflow": workflow}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let mut waiting = Value::Null;
    wait_for("the call to wait for approval", LONG, || {
        waiting = get(&api, "/v1/approvals").json();
        waiting["approvals"].as_array().is_some_and(|a| !a.is_empty())
    });
    let asked = &waiting["approvals"][0];
    assert_eq!(
        (asked["call"]["tool"].as_str(), asked["call"]["args"]["body"]["text"].as_str()),
        (Some("notify"), Some("from the API"))
    );
    let decide = format!("/v1/runs/{id}/approvals/post");
    let r = post(&api, &decide, &json!({"decision": "approve", "args": {"url": 5}}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "invalid_args");
    assert!(r.body.contains("at /url: 5 is not of type"), "{}", r.body);
    let r = post(&api, &decide, &json!({"decision": "reject", "args": {}}));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (422, Some("unexpected_args")));
    let edited =
        json!({"method": "POST", "url": format!("http://{addr}/notes"), "body": {"text": "edited in the API"}});
    let r = post(&api, &decide, &json!({"decision": "approve", "args": edited, "comment": "softer"}));
    assert!(r.status == 200 || r.status == 202, "{}", r.body);
    wait_for("the run to complete", LONG, || get(&api, &format!("/v1/runs/{id}")).json()["status"] == "COMPLETED");
    let sent = seen.lock().expect("seen").clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body, "{\"text\":\"edited in the API\"}");
}

#[test]
fn an_http_endpoint_tool_sends_to_its_url_only() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    config(
        &env,
        &format!("[tools.inbox]\ntype = \"http_request\"\nurl = \"http://{addr}/inbox\"\nmethod = \"POST\"\n"),
    );
    let listed = stdout(&env.run(&["tools", "show", "inbox", "--json"]));
    let shown: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!((shown["effect"].as_str(), shown["approval"].as_str()), (Some("write"), Some("by_effect")));
    assert_eq!(shown["input_schema"]["required"], json!([]));
    let (code, _, err) = call(&env, "inbox", &json!({"body": {"n": 1}, "query": {"from": "cli"}}), true);
    assert_eq!(code, 0, "{err}");
    refused(&env, "inbox", json!({"url": "http://10.0.0.1/"}), "'url' was unexpected");
    let sent = seen.lock().expect("seen").clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str(), sent[0].body.as_str()),
        ("POST", "/inbox?from=cli", "{\"n\":1}")
    );
}

#[test]
fn policies_see_canonical_arguments_and_edits_are_held_to_the_tools_rules() {
    let env = Env::new();
    let (addr, seen) = recorder(&[]);
    config(
        &env,
        "[tools.web]\ntype = \"http_request\"\nallow_hosts = [\"127.0.0.1\"]\napproval = \"args.method == 'DELETE'\"\n",
    );
    let wf = env.write(
        "wf.yaml",
        &format!("name: del\nsteps:\n  - {{id: d, kind: tool, with: {{tool: web, args: {{method: delete, url: \"http://{addr}/records/42\"}}}}}}\n"),
    );
    // `delete` is the DELETE the policy names.
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "blocked(tool call approval)", LONG);
    let id = env.only_run().id;
    let listed: Value = serde_json::from_str(&stdout(&env.run(&["approvals", "--json"]))).expect("json");
    assert_eq!(listed[0]["call"]["args"]["method"], "DELETE");
    // Edited arguments that the tool would refuse are refused at once.
    let elsewhere = json!({"method": "DELETE", "url": "http://127.0.0.2:9/x"});
    let out = env.run(&["approve", &id, "d", "--args", &elsewhere.to_string()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("host 127.0.0.2 is not in this tool's allow_hosts"), "{}", stderr(&out));
    assert!(env.run(&["approve", &id, "d", "--by", "ana"]).status.success());
    assert_eq!(wait_exit(&mut child, LONG).code(), Some(0));
    // The same approval again is answered; other arguments now are refused.
    let again = env.run(&["approve", &id, "d"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let other = json!({"method": "DELETE", "url": format!("http://{addr}/records/43")});
    let out = env.run(&["approve", &id, "d", "--args", &other.to_string()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("already finished (COMPLETED); nothing can change it"), "{}", stderr(&out));
    let sent = seen.lock().expect("seen").clone();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].method.as_str(), sent[0].path.as_str()), ("DELETE", "/records/42"));
}
