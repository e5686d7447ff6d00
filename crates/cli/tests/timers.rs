//! A run waiting on a timer is handed back by `cairn serve` (it occupies no worker while it
//! waits) with the time it is due; a worker must take it again then. This once failed for
//! compensation timers: a saga whose undo failed transiently and retried seconds later was
//! released with no wake time and stayed COMPENSATING forever. Every kind of timer a run can
//! have is checked here, on SQLite and on PostgreSQL.

mod common;

use common::pg::Database;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Long enough that `serve` (which hands back runs idle for more than a second) lets go.
const DELAY: &str = "3s";

fn workflows() -> Vec<(&'static str, Value, &'static str)> {
    let retry = json!({"name": "retry-timer", "steps": [
        {"id": "flaky", "kind": "noop", "inject": {"fail_times": 1},
         "retry": {"max_attempts": 2, "initial_delay": DELAY, "jitter": 0}},
    ]});
    let deadline = json!({"name": "deadline-timer", "steps": [
        {"id": "sign_off", "kind": "approval", "approval": {"deadline": DELAY, "on_deadline": "reject"}},
    ]});
    let compensation = json!({"name": "compensation-timer", "steps": [
        {"id": "charge", "kind": "echo", "with": {"amount": 12},
         "compensate": {"kind": "fail", "with": {"class": "transient", "message": "bank busy"},
                        "retry": {"max_attempts": 2, "initial_delay": DELAY, "jitter": 0}}},
        {"id": "ship", "kind": "fail", "needs": ["charge"], "with": {"class": "permanent", "message": "no stock"}},
    ]});
    vec![
        ("COMPLETED", retry, "retry"),
        ("FAILED", deadline, "approval deadline"),
        ("FAILED", compensation, "compensation retry"),
    ]
}

fn released_runs_wake_when_their_timers_are_due(postgres: bool) {
    let db = if postgres {
        match Database::create("timers") {
            Some(db) => Some(db),
            None => return,
        }
    } else {
        None
    };
    let env = Env::new();
    let args: Vec<&str> = db.as_ref().map(|d| vec!["--database", d.url.as_str()]).unwrap_or_default();
    let server = env.serve(&args);
    let addr = server.addr.as_str();
    let started = Instant::now();
    let runs: Vec<(String, &str, &str)> = workflows()
        .into_iter()
        .map(|(end, wf, what)| {
            let r = post(addr, "/v1/runs", &json!({"workflow": wf}));
            assert_eq!(r.status, 201, "{}", r.body);
            (r.json()["id"].as_str().expect("id").to_string(), end, what)
        })
        .collect();
    // Each is handed back while it waits, with the time it is due...
    let row = |id: &str| -> Value {
        let mut all = args.clone();
        all.extend(["runs", "list", "--json", "--limit", "10"]);
        let out = env.run(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        let rows: Value = serde_json::from_str(&stdout(&out)).expect("json");
        rows.as_array().and_then(|r| r.iter().find(|r| r["id"] == id).cloned()).unwrap_or(Value::Null)
    };
    for (id, _, what) in &runs {
        wait_for(&format!("the {what} run to be handed back"), Duration::from_secs(20), || {
            let v = row(id);
            v["owner"].is_null() && v["wake_at_ms"].is_i64() && !v["status"].as_str().is_some_and(is_final)
        });
    }
    // ...and taken again then, to its end.
    for (id, end, what) in &runs {
        wait_for(&format!("the {what} run to end {end}"), Duration::from_secs(30), || {
            get(addr, &format!("/v1/runs/{id}")).json()["status"] == *end
        });
    }
    assert!(started.elapsed() >= Duration::from_secs(3), "each run waited for its timer");
    let compensation = &runs[2].0;
    let events = get(addr, &format!("/v1/runs/{compensation}/events")).json();
    let attempts: Vec<i64> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "compensation_attempt_started")
        .filter_map(|e| e["at_ms"].as_i64())
        .collect();
    assert_eq!(attempts.len(), 2, "the undo was retried once: {events}");
    assert!(attempts[1] - attempts[0] >= 3_000, "after its backoff: {attempts:?}");
    drop(server);
    if !postgres {
        for (id, _, _) in &runs {
            env.assert_journal_is_sound(id);
        }
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "CANCELLED" | "COMPENSATED")
}

#[test]
fn a_released_run_is_woken_for_every_kind_of_timer_on_sqlite() {
    released_runs_wake_when_their_timers_are_due(false);
}

#[test]
fn a_released_run_is_woken_for_every_kind_of_timer_on_postgres() {
    released_runs_wake_when_their_timers_are_due(true);
}
