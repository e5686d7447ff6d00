//! External kinds and the worker protocol against a real `cairn serve` on loopback, with the
//! worker played over raw HTTP: a long poll answered as soon as a task is queued, heartbeats,
//! durable calls, results, a worker that goes silent (its lease lapses, its late result is refused
//! and the attempt is retried with the durable call from the record), a cancelled run seen by the
//! heartbeat, and bad input to every worker endpoint answered with 4xx JSON.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// echo → upper (an external kind on queue `rust`) → echo.
fn pipeline(retry: Value, timeout: &str) -> Value {
    json!({
        "name": "pipeline",
        "kinds": {"upper": {
            "queue": "rust",
            "effect": "read",
            "input_schema": {"type": "object", "required": ["text"]},
            "output_schema": {"type": "object", "required": ["text"]},
            "retry": retry,
            "timeout": timeout,
        }},
        "steps": [
            {"id": "a", "kind": "echo", "with": {"text": "hello"}},
            {"id": "b", "kind": "upper", "needs": ["a"], "with": {"text": "{{ steps.a.output.text }}"}},
            {"id": "c", "kind": "echo", "needs": ["b"], "with": {"got": "{{ steps.b.output.text }}"}},
        ],
    })
}

fn start(addr: &str, definition: &Value) -> String {
    let r = post(addr, "/v1/runs", &json!({"workflow": definition}));
    assert_eq!(r.status, 201, "start: {}", r.body);
    r.json()["id"].as_str().expect("id").to_string()
}

fn claim(addr: &str, wait_ms: u64, lease_ms: u64) -> Vec<Value> {
    let body = json!({"worker": "rust-test", "queues": ["rust"], "wait_ms": wait_ms, "lease_ms": lease_ms});
    let r = post(addr, "/v1/workers/claim", &body);
    assert_eq!(r.status, 200, "claim: {}", r.body);
    r.json()["tasks"].as_array().cloned().unwrap_or_default()
}

/// Claims that wait before any task exists, each answered when a run queues one: how long after
/// the task was queued each answer came (ms), with the claimed tasks and their runs. The best of
/// the rounds must be within 50 ms; every one well inside the 500 ms poll, or a wake-up was lost
/// (on a machine busy with other work a single round can be slower, so one round is no measure).
fn long_polls(addr: &str, rounds: usize) -> Vec<(i64, Value, String)> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let waiting = {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let tasks = claim(&addr, 20_000, 30_000);
                (tasks, now_ms())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let id = start(addr, &pipeline(json!({"max_attempts": 2}), "1m"));
        let (tasks, answered_at) = waiting.join().expect("claim thread");
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let latency = answered_at - tasks[0]["queued_at_ms"].as_i64().expect("queued_at_ms");
        out.push((latency, tasks[0].clone(), id));
    }
    let latencies: Vec<i64> = out.iter().map(|(l, _, _)| *l).collect();
    assert!(latencies.iter().min().is_some_and(|l| *l < 50), "long polls answered after {latencies:?} ms");
    assert!(latencies.iter().all(|l| *l < 400), "a wake-up was lost: long polls answered after {latencies:?} ms");
    out
}

fn wait_status(addr: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(addr, &format!("/v1/runs/{id}")).json();
        if v["status"] == status {
            return v;
        }
        assert!(Instant::now() < deadline, "run {id} never became {status}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_claims_calls_durably_and_completes_over_http() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    // Claims waiting before any task exists are answered as soon as one is queued.
    let mut polls = long_polls(&addr, 3);
    let (_, task, id) = polls.pop().expect("a round");
    let task = &task;
    assert_eq!(
        (task["run_id"].as_str(), task["step"].as_str(), task["attempt"].as_u64()),
        (Some(&*id), Some("b"), Some(1))
    );
    assert_eq!(task["input"], json!({"text": "hello"}));
    assert_eq!(task["kind"], "upper");
    let deadline = task["deadline_ms"].as_i64().expect("deadline");
    assert!((now_ms() + 50_000..now_ms() + 61_000).contains(&deadline), "a 1m timeout: {deadline}");
    let token = task["token"].as_str().expect("token").to_string();

    let hb = post(&addr, "/v1/workers/heartbeat", &json!({"token": token, "lease_ms": 60_000}));
    assert_eq!((hb.status, hb.json()["cancelled"].clone()), (200, json!(false)), "{}", hb.body);
    assert!(hb.json()["lease_expires_at_ms"].as_i64().expect("lease") > now_ms() + 55_000);

    // A durable call: not recorded, then recorded, then the record comes back.
    let call = |result: Option<Value>, hash: &str| {
        let mut body = json!({"token": token, "n": 1, "name": "shout", "request_hash": hash});
        if let Some(r) = result {
            body["result"] = r;
        }
        post(&addr, "/v1/workers/calls", &body)
    };
    assert_eq!(call(None, "h1").json(), json!({"recorded": false, "result": null, "attempt": null}));
    assert_eq!(call(Some(json!("HELLO")), "h1").json(), json!({"recorded": true, "result": "HELLO", "attempt": 1}));
    assert_eq!(call(None, "h1").json()["result"], "HELLO");
    let diverged = call(None, "h2");
    assert_eq!((diverged.status, diverged.json()["error"]["code"].clone()), (409, json!("call_divergence")));

    let done = post(&addr, "/v1/workers/complete", &json!({"token": token, "output": {"text": "HELLO"}}));
    assert_eq!(done.status, 200, "{}", done.body);
    let run = wait_status(&addr, &id, "COMPLETED");
    assert_eq!(run["output"]["c"], json!({"got": "HELLO"}), "{run}");
    // Settled once: a second result is refused and changes nothing.
    let again = post(&addr, "/v1/workers/complete", &json!({"token": token, "output": {"text": "OTHER"}}));
    assert_eq!((again.status, again.json()["error"]["code"].clone()), (409, json!("stale_token")));
    assert_eq!(again.json()["error"]["details"]["state"], "done");
    // The durable call is in the run's record, under the step.
    let calls = get(&addr, &format!("/v1/runs/{id}")).json()["calls"].clone();
    assert!(calls.as_array().is_some_and(|c| c.iter().any(|c| c["kind"] == "shout" && c["step_id"] == "b")), "{calls}");
}

#[test]
fn a_silent_worker_loses_its_task_its_late_result_is_refused_and_the_retry_skips_its_recorded_call() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    let id = start(&addr, &pipeline(json!({"max_attempts": 3, "initial_delay": "100ms"}), "1m"));
    let first = claim(&addr, 10_000, 1_000).remove(0);
    let token = first["token"].as_str().expect("token").to_string();
    let call = json!({"token": token, "n": 1, "name": "shout", "request_hash": "h1", "result": "HELLO"});
    assert_eq!(post(&addr, "/v1/workers/calls", &call).status, 200);
    // The worker goes silent past its lease: the engine gives the attempt up and tries again.
    let second = claim(&addr, 10_000, 30_000).remove(0);
    assert_eq!((second["step"].as_str(), second["attempt"].as_u64()), (Some("b"), Some(2)), "{second}");
    let late = post(&addr, "/v1/workers/complete", &json!({"token": token, "output": {"text": "LATE"}}));
    assert_eq!((late.status, late.json()["error"]["code"].clone()), (409, json!("stale_token")), "{}", late.body);
    let hb = post(&addr, "/v1/workers/heartbeat", &json!({"token": token}));
    assert_eq!(hb.json()["cancelled"], true, "{}", hb.body);
    // The retried attempt finds the first attempt's call in the record.
    let token2 = second["token"].as_str().expect("token").to_string();
    let lookup = json!({"token": token2, "n": 1, "name": "shout", "request_hash": "h1"});
    assert_eq!(
        post(&addr, "/v1/workers/calls", &lookup).json(),
        json!({"recorded": true, "result": "HELLO", "attempt": 1})
    );
    let done = post(&addr, "/v1/workers/complete", &json!({"token": token2, "output": {"text": "HELLO"}}));
    assert_eq!(done.status, 200, "{}", done.body);
    let run = wait_status(&addr, &id, "COMPLETED");
    let b = run["steps"].as_array().and_then(|s| s.iter().find(|s| s["step_id"] == "b").cloned()).expect("b");
    assert_eq!(b["attempts"], 2, "{b}");
    // An output that breaks the kind's output_schema fails the attempt for good.
    let id = start(&addr, &pipeline(json!({"max_attempts": 3}), "1m"));
    let task = claim(&addr, 10_000, 30_000).remove(0);
    let bad = json!({"token": task["token"], "output": {"txt": "no"}});
    assert_eq!(post(&addr, "/v1/workers/complete", &bad).status, 200);
    let run = wait_status(&addr, &id, "FAILED");
    assert!(run.to_string().contains("output_schema"), "{run}");
}

#[test]
fn a_cancelled_run_is_seen_by_the_heartbeat_and_a_failure_keeps_its_class() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    let id = start(&addr, &pipeline(json!({"max_attempts": 1}), "1m"));
    let task = claim(&addr, 10_000, 30_000).remove(0);
    assert_eq!(post(&addr, &format!("/v1/runs/{id}/cancel"), &json!({})).status, 200);
    wait_status(&addr, &id, "CANCELLED");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let hb = post(&addr, "/v1/workers/heartbeat", &json!({"token": task["token"]})).json();
        if hb["cancelled"] == true {
            assert_eq!(hb["state"], "cancelled", "{hb}");
            break;
        }
        assert!(Instant::now() < deadline, "the heartbeat never said cancelled: {hb}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let late = post(&addr, "/v1/workers/complete", &json!({"token": task["token"], "output": {"text": "x"}}));
    assert_eq!(late.status, 409);

    // A permanent failure fails the step without a retry, with the worker's message.
    let id = start(&addr, &pipeline(json!({"max_attempts": 3}), "1m"));
    let task = claim(&addr, 10_000, 30_000).remove(0);
    let fail = json!({"token": task["token"], "class": "permanent", "message": "the text is in Klingon"});
    assert_eq!(post(&addr, "/v1/workers/fail", &fail).status, 200);
    let run = wait_status(&addr, &id, "FAILED");
    assert!(run.to_string().contains("the text is in Klingon"), "{run}");
}

#[test]
fn bad_input_to_every_worker_endpoint_is_answered_with_4xx_json() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    let cases: Vec<(&str, Option<&str>, u16, &str)> = vec![
        ("/v1/workers/claim", Some(""), 400, "empty_body"),
        ("/v1/workers/claim", Some("{\"worker\": "), 400, "malformed_json"),
        ("/v1/workers/claim", Some(r#"{"worker": "w"}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "w", "queues": []}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "w", "queues": ["a b"]}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "w", "queues": ["q"], "wait_ms": 90000}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "w", "queues": ["q"], "max_tasks": 0}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "w", "queues": ["q"], "lease_ms": 5}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "\u0007", "queues": ["q"]}"#), 422, "invalid_request"),
        ("/v1/workers/claim", Some(r#"{"worker": "w", "queues": ["q"], "colour": 1}"#), 422, "invalid_request"),
        ("/v1/workers/heartbeat", Some(r#"{"token": "tk_nope"}"#), 404, "task_not_found"),
        ("/v1/workers/heartbeat", Some(r#"{"token": ""}"#), 422, "invalid_request"),
        ("/v1/workers/heartbeat", Some(r#"{"token": 5}"#), 422, "invalid_request"),
        ("/v1/workers/complete", Some(r#"{"token": "tk_nope", "output": 1}"#), 404, "task_not_found"),
        ("/v1/workers/complete", Some(r#"{"token": "tk_nope"}"#), 422, "invalid_request"),
        (
            "/v1/workers/fail",
            Some(r#"{"token": "tk_nope", "message": "x", "class": "approval_required"}"#),
            422,
            "invalid_request",
        ),
        ("/v1/workers/fail", Some(r#"{"token": "tk_nope", "message": "x"}"#), 404, "task_not_found"),
        (
            "/v1/workers/calls",
            Some(r#"{"token": "tk_nope", "n": 0, "name": "x", "request_hash": "h"}"#),
            422,
            "invalid_request",
        ),
        (
            "/v1/workers/calls",
            Some(r#"{"token": "tk_nope", "n": 1, "name": "x y", "request_hash": "h"}"#),
            422,
            "invalid_request",
        ),
        (
            "/v1/workers/calls",
            Some(r#"{"token": "tk_nope", "n": 1, "name": "x", "request_hash": "h h"}"#),
            422,
            "invalid_request",
        ),
        (
            "/v1/workers/calls",
            Some(r#"{"token": "tk_nope", "n": 1, "name": "x", "request_hash": "h"}"#),
            404,
            "task_not_found",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = call(&addr, "POST", path, &[("content-type", "application/json")], body);
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (status, Some(code)), "{path} {body:?}: {}", r.body);
    }
    let r = call(&addr, "POST", "/v1/workers/claim", &[("content-type", "text/plain")], Some("{}"));
    assert_eq!(r.status, 415, "{}", r.body);
    // A nested output deeper than a journal keeps is refused before anything changes.
    let deep = format!("{{\"token\": \"tk_nope\", \"output\": {}1{}}}", "[".repeat(100), "]".repeat(100));
    let r = call(&addr, "POST", "/v1/workers/complete", &[("content-type", "application/json")], Some(&deep));
    assert_eq!(r.status, 422, "{}", r.body);
    // Only the worker role and above may use them, when auth is on.
    drop(server);
    let admin = env.run(&["tokens", "create", "--role", "admin", "--name", "root"]);
    let viewer = env.run(&["tokens", "create", "--role", "viewer", "--name", "eyes"]);
    let worker = env.run(&["tokens", "create", "--role", "worker", "--name", "py"]);
    let secret = |o: &std::process::Output| {
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        text.split_whitespace()
            .find(|w| w.starts_with("cairn_"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{text}"))
    };
    let (_admin, viewer, worker) = (secret(&admin), secret(&viewer), secret(&worker));
    let server = env.serve(&["--auth", "on"]);
    let body = r#"{"worker": "w", "queues": ["q"], "wait_ms": 0}"#;
    let as_ = |token: &str| {
        let auth = format!("Bearer {token}");
        call(
            &server.addr,
            "POST",
            "/v1/workers/claim",
            &[("content-type", "application/json"), ("authorization", &auth)],
            Some(body),
        )
        .status
    };
    assert_eq!((as_(&viewer), as_(&worker)), (403, 200));
    let start = call(
        &server.addr,
        "POST",
        "/v1/runs",
        &[("content-type", "application/json"), ("authorization", &format!("Bearer {worker}"))],
        Some(r#"{"goal": "generate summary and send email"}"#),
    );
    assert_eq!(start.status, 403, "a worker token cannot start runs: {}", start.body);
}

#[test]
fn a_worker_sees_the_input_as_the_journal_holds_it_never_a_secrets_value() {
    let env = Env::new();
    let secret = "s3cr3t-worker-value-9137";
    let (mut child, lines) = env.spawn(&["serve", "--listen", "127.0.0.1:0"], &[("CAIRN_SECRET_API_TOKEN", secret)]);
    let seen = wait_line(&lines, "listening on http://", Duration::from_secs(20));
    let addr = seen
        .last()
        .and_then(|l| l.split("http://").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address")
        .to_string();
    let definition = json!({
        "name": "secretive",
        "kinds": {"call_api": {"queue": "rust"}},
        "steps": [{"id": "s", "kind": "call_api",
                   "with": {"auth": "Bearer {{ secrets.API_TOKEN }}", "url": "http://127.0.0.1:9/x"}}],
    });
    let id = start(&addr, &definition);
    let task = claim(&addr, 10_000, 30_000).remove(0);
    assert!(!task.to_string().contains(secret), "the secret's value reached the worker: {task}");
    assert_eq!(task["input"]["url"], "http://127.0.0.1:9/x");
    assert!(task["input"]["auth"].as_str().is_some_and(|a| a.starts_with("Bearer ")), "{task}");
    // The worker's output echoing a secret is redacted before it is journaled.
    let done = json!({"token": task["token"], "output": {"echo": format!("got {secret}")}});
    assert_eq!(post(&addr, "/v1/workers/complete", &done).status, 200);
    let run = wait_status(&addr, &id, "COMPLETED");
    assert!(!run.to_string().contains(secret), "{run}");
    let _ = child.kill();
    let _ = child.wait();
}

/// PostgreSQL, across processes: the API process (no engine) answers a waiting claim when the
/// engine in a `cairn worker` process queues a task (NOTIFY), and the engine hears the result
/// the API took.
#[test]
fn on_postgresql_the_api_and_the_engine_in_different_processes_hand_tasks_over_at_once() {
    let Some(db) = common::pg::Database::create("workers") else { return };
    let env = Env::new();
    let api = env.serve(&["--database", &db.url, "--no-worker"]);
    let (mut engine, _lines) = env.spawn(&["worker", "--database", &db.url, "--lease-ms", "2000"], &[]);
    let addr = api.addr.clone();
    for (round, (_, task, id)) in long_polls(&addr, 3).into_iter().enumerate() {
        assert_eq!(task["run_id"].as_str(), Some(id.as_str()));
        let started = Instant::now();
        let done = json!({"token": task["token"], "output": {"text": "HELLO"}});
        assert_eq!(post(&addr, "/v1/workers/complete", &done).status, 200);
        let run = wait_status(&addr, &id, "COMPLETED");
        assert_eq!(run["output"]["c"], json!({"got": "HELLO"}));
        assert!(started.elapsed() < Duration::from_millis(1_500), "round {round}: {:?} to finish", started.elapsed());
    }
    let _ = engine.kill();
    let _ = engine.wait();
}

/// The engine that queued a task dies (SIGKILL) while a worker holds it. The worker's result,
/// delivered while no engine waits, is taken by the next engine's attempt; a task still held
/// when the next engine comes is waited for, not handed out again.
#[test]
fn a_task_outlives_the_engine_that_queued_it_and_its_result_is_adopted_not_redone() {
    let env = Env::new();
    let api = env.serve(&["--no-worker"]);
    let addr = api.addr.clone();
    let engine = || env.spawn(&["worker", "--lease-ms", "2000"], &[]).0;
    let claim_none = |addr: &str| {
        let body = json!({"worker": "second", "queues": ["rust"], "wait_ms": 300});
        post(addr, "/v1/workers/claim", &body).json()["tasks"].as_array().map_or(0, Vec::len)
    };

    // 1. The result arrives while no engine runs.
    let mut first = engine();
    let id = start(&addr, &pipeline(json!({"max_attempts": 3, "initial_delay": "50ms"}), "1m"));
    let task = claim(&addr, 20_000, 60_000).remove(0);
    send_signal(&first, "KILL");
    let _ = first.wait();
    let done = json!({"token": task["token"], "output": {"text": "DONE WHILE DOWN"}});
    assert_eq!(post(&addr, "/v1/workers/complete", &done).status, 200);
    let mut second = engine();
    let run = wait_status(&addr, &id, "COMPLETED");
    assert_eq!(run["output"]["c"], json!({"got": "DONE WHILE DOWN"}), "{run}");
    assert_eq!(claim_none(&addr), 0, "the step was not handed to a worker again");

    // 2. The task is still held when the next engine comes: it waits for that worker.
    let id = start(&addr, &pipeline(json!({"max_attempts": 3, "initial_delay": "50ms"}), "1m"));
    let task = claim(&addr, 20_000, 60_000).remove(0);
    send_signal(&second, "KILL");
    let _ = second.wait();
    let mut third = engine();
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(claim_none(&addr), 0, "no second task while the first is held");
    let hb = post(&addr, "/v1/workers/heartbeat", &json!({"token": task["token"]})).json();
    assert_eq!(hb["cancelled"], false, "{hb}");
    let done = json!({"token": task["token"], "output": {"text": "HELD ACROSS"}});
    assert_eq!(post(&addr, "/v1/workers/complete", &done).status, 200);
    let run = wait_status(&addr, &id, "COMPLETED");
    assert_eq!(run["output"]["c"], json!({"got": "HELD ACROSS"}), "{run}");
    let _ = third.kill();
    let _ = third.wait();
}

#[test]
fn a_step_nobody_claims_times_out_naming_its_queue_and_its_task_is_withdrawn() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    let id = start(&addr, &pipeline(json!({"max_attempts": 1}), "300ms"));
    let run = wait_status(&addr, &id, "FAILED");
    assert!(run.to_string().contains("waited for a worker on queue `rust`"), "{run}");
    // The task was withdrawn with the attempt: a worker arriving late gets nothing.
    std::thread::sleep(Duration::from_millis(200));
    assert!(claim(&addr, 0, 30_000).is_empty(), "a timed-out attempt's task was still handed out");
}

/// `cairn serve` stopped with SIGTERM while a worker holds a task: the drain waits for it (up to
/// `--shutdown-timeout`), gives up without withdrawing the task, and the next server's engine
/// takes the worker's result: the attempt is not lost, the work not handed out again.
#[test]
fn a_graceful_stop_leaves_a_held_task_to_the_next_server() {
    let env = Env::new();
    let mut server = env.serve(&["--shutdown-timeout", "500ms"]);
    let id = start(&server.addr, &pipeline(json!({"max_attempts": 2, "initial_delay": "50ms"}), "1m"));
    let task = claim(&server.addr, 20_000, 60_000).remove(0);
    send_signal(&server.child, "TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success(), "a clean exit");
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    let hb = post(&addr, "/v1/workers/heartbeat", &json!({"token": task["token"]})).json();
    assert_eq!(hb["cancelled"], false, "the stop withdrew the task: {hb}");
    let done = json!({"token": task["token"], "output": {"text": "AFTER RESTART"}});
    assert_eq!(post(&addr, "/v1/workers/complete", &done).status, 200);
    let run = wait_status(&addr, &id, "COMPLETED");
    assert_eq!(run["output"]["c"], json!({"got": "AFTER RESTART"}), "{run}");
    let body = json!({"worker": "late", "queues": ["rust"], "wait_ms": 0});
    assert_eq!(post(&addr, "/v1/workers/claim", &body).json()["tasks"], json!([]));
}
