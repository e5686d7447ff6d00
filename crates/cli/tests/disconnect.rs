//! A client that gives up waiting strands nothing. An HTTP handler's work is dropped when its
//! client disconnects; a creation or a take-over to apply a request, cut off that way between
//! claiming a run and driving it, once left the run held by the server (its lease renewed
//! forever) with nobody driving it. Here PostgreSQL is made slow on purpose (a lock on the
//! journal table held for seconds) while clients send requests and hang up.

mod common;

use common::pg::Database;
use common::*;
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Sends a JSON POST and hangs up after `patience` without reading the answer.
fn post_and_hang_up(addr: &str, path: &str, body: &serde_json::Value, patience: Duration) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).expect("send");
    std::thread::sleep(patience);
    drop(stream);
}

fn status(addr: &str, id: &str) -> String {
    get(addr, &format!("/v1/runs/{id}")).json()["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn clients_that_hang_up_while_the_database_is_slow_strand_no_run() {
    let Some(db) = Database::create("hangup") else { return };
    let env = Env::new();
    let server = env.serve(&["--database", &db.url]);
    let addr = server.addr.as_str();
    let gated = json!({"name": "gated", "steps": [
        {"id": "gate", "kind": "approval"},
        {"id": "after", "kind": "echo", "needs": ["gate"], "with": {"ok": true}},
    ]});
    let r = post(addr, "/v1/runs", &json!({"workflow": gated}));
    assert_eq!(r.status, 201, "{}", r.body);
    let waiting = r.json()["id"].as_str().expect("id").to_string();
    wait_for("the run to wait at its gate", Duration::from_secs(20), || status(addr, &waiting) == "WAITING");

    // Hold the journal table for four seconds.
    let lock = Command::new("psql")
        .args([db.url.as_str(), "-qAt", "-c"])
        .arg("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;")
        .spawn()
        .expect("psql");
    std::thread::sleep(Duration::from_millis(500));
    let quick = json!({"name": "quick", "steps": [{"id": "a", "kind": "echo", "with": {"x": 1}}]});
    let hang_ups = [
        std::thread::spawn({
            let (addr, waiting) = (addr.to_string(), waiting.clone());
            move || {
                post_and_hang_up(
                    &addr,
                    &format!("/v1/runs/{waiting}/signals/nudge"),
                    &json!({"n": 1}),
                    Duration::from_millis(1500),
                )
            }
        }),
        std::thread::spawn({
            let addr = addr.to_string();
            move || post_and_hang_up(&addr, "/v1/runs", &json!({"workflow": quick}), Duration::from_millis(1500))
        }),
    ];
    for h in hang_ups {
        h.join().expect("client");
    }
    let mut lock = lock;
    assert!(lock.wait().expect("psql").success());

    // The signal that was accepted is applied, and the run it was taken over for is not left
    // held: an approval then goes through and the run completes. The run whose creation the
    // client stopped waiting for was created, and runs to its end — all without a restart.
    let started = Instant::now();
    wait_for("the signal to be applied", Duration::from_secs(30), || {
        let requests = get(addr, &format!("/v1/runs/{waiting}/requests")).json();
        requests["requests"].as_array().is_some_and(|r| r.len() == 1 && r[0]["state"] == "applied")
    });
    let r = post(addr, &format!("/v1/runs/{waiting}/approvals/gate"), &json!({"decision": "approve"}));
    assert_eq!(r.status, 200, "answered at once, not queued behind a run nobody drives: {}", r.body);
    wait_for("the approved run to complete", Duration::from_secs(30), || status(addr, &waiting) == "COMPLETED");
    let list = get(addr, "/v1/runs?workflow=quick").json();
    let runs = list["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "the creation went through once: {list}");
    let created = runs[0]["id"].as_str().expect("id").to_string();
    wait_for("the created run to complete", Duration::from_secs(30), || status(addr, &created) == "COMPLETED");
    assert!(started.elapsed() < Duration::from_secs(30));
}
