//! Many processes on one PostgreSQL database: three `cairn worker`s and an API-only
//! `cairn serve --no-worker`. Hundreds of runs whose steps write to a real local HTTP service
//! (which applies each `Idempotency-Key` once and counts every request); one worker is
//! SIGKILLed mid-load. Every run completes, no step's effect is applied twice, the killed
//! worker's runs are recovered, and the survivors share the work.
//!
//! Needs PostgreSQL (`CAIRN_TEST_POSTGRES`, default postgres://postgres@127.0.0.1:5432/postgres);
//! without it the test says so and passes, unless `CAIRN_REQUIRE_POSTGRES=1` (as in CI).

mod common;

use cairn_core::Event;
use common::pg::Database;
use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the effect service saw.
#[derive(Default)]
struct Ledger {
    /// Requests per idempotency key (retries included).
    requests: HashMap<String, u32>,
    /// Keys whose effect was applied (once each, by construction of the service).
    applied: HashSet<String>,
    /// Requests per worker (the `X-Cairn-Worker` header), in arrival order.
    by_worker: Vec<String>,
}

/// A local HTTP service that applies each Idempotency-Key's effect once.
fn effect_service() -> (String, Arc<Mutex<Ledger>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let l = ledger.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let ledger = l.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let (mut key, mut worker, mut length) = (String::new(), String::new(), 0usize);
                let mut line = String::new();
                let mut complete = false;
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        complete = true;
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        let value = value.trim().to_string();
                        match name.trim().to_ascii_lowercase().as_str() {
                            "idempotency-key" => key = value,
                            "x-cairn-worker" => worker = value,
                            "content-length" => length = value.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                // A connection cut before its request arrived (the worker SIGKILLed while it was
                // connecting) asked for nothing: it is not a request.
                if !complete || reader.read_exact(&mut body).is_err() {
                    return;
                }
                let first = {
                    let mut l = ledger.lock().expect("ledger");
                    *l.requests.entry(key.clone()).or_default() += 1;
                    l.by_worker.push(worker);
                    l.applied.insert(key.clone())
                };
                let reply = json!({"applied": first, "key": key}).to_string();
                let _ = (&stream).write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len())
                        .as_bytes(),
                );
            });
        }
    });
    (addr, ledger)
}

#[test]
fn three_workers_and_an_api_share_one_database_and_survive_a_killed_worker() {
    let Some(db) = Database::create("mp") else { return };
    let env = Env::new();
    let (effects, ledger) = effect_service();
    let api = env.serve(&["--database", &db.url, "--no-worker"]);
    let mut workers: Vec<std::process::Child> = (0..3)
        .map(|_| env.spawn(&["worker", "--database", &db.url, "--lease-ms", "2000", "--max-per-run", "2"], &[]).0)
        .collect();
    let pids: Vec<String> = workers.iter().map(|w| w.id().to_string()).collect();

    let workflow = json!({"name": "effects", "steps": [
        {"id": "charge", "kind": "http", "with": {"url": format!("http://{effects}/charge"), "body": {"amount": 5}}},
        {"id": "pause", "kind": "mock_model", "needs": ["charge"], "with": {"prompt": "busy", "latency": "30ms"}},
        {"id": "notify", "kind": "http", "needs": ["pause"], "with": {"url": format!("http://{effects}/notify"), "body": {}}},
    ]});
    let total = 200;
    let ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let posters: Vec<_> = (0..4)
        .map(|_| {
            let (addr, ids, workflow) = (api.addr.clone(), ids.clone(), workflow.clone());
            std::thread::spawn(move || {
                for _ in 0..total / 4 {
                    let r = post(&addr, "/v1/runs", &json!({"workflow": workflow}));
                    assert_eq!(r.status, 201, "{}", r.body);
                    let id = serde_json::from_str::<serde_json::Value>(&r.body).expect("json")["id"]
                        .as_str()
                        .expect("id")
                        .to_string();
                    ids.lock().expect("ids").push(id);
                }
            })
        })
        .collect();

    // Kill one worker once it has done some of the work.
    let victim = pids[0].clone();
    wait_for("the first worker to have made requests", Duration::from_secs(30), || {
        ledger.lock().expect("ledger").by_worker.iter().filter(|w| w.contains(&format!(":{victim}:"))).count() >= 10
    });
    sigkill(&mut workers[0]);
    let killed_at = ledger.lock().expect("ledger").by_worker.len();
    for p in posters {
        p.join().expect("poster");
    }
    let ids = ids.lock().expect("ids").clone();
    assert_eq!(ids.len(), total);

    // Every run completes (the killed worker's after its leases expire).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = ids
            .iter()
            .filter(|id| {
                let r = get(&api.addr, &format!("/v1/runs/{id}"));
                serde_json::from_str::<serde_json::Value>(&r.body).is_ok_and(|v| v["status"] == "COMPLETED")
            })
            .count();
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {} runs completed", ids.len());
        std::thread::sleep(Duration::from_millis(200));
    }

    let ledger = ledger.lock().expect("ledger");
    // Each step's effect applied exactly once; retries after the kill reused the same key.
    let expected: HashSet<String> =
        ids.iter().flat_map(|id| [format!("{id}/charge/call-1"), format!("{id}/notify/call-1")]).collect();
    let missing: Vec<_> = expected.difference(&ledger.applied).take(5).collect();
    let unexpected: Vec<_> = ledger.applied.difference(&expected).take(5).collect();
    assert!(missing.is_empty() && unexpected.is_empty(), "effects missing {missing:?}, unexpected {unexpected:?}");
    assert_eq!(ledger.applied.len(), expected.len());
    let repeated = ledger.requests.values().filter(|n| **n > 1).count();
    // The journal: every step succeeded exactly once in every run.
    let mut recovered = 0;
    for id in &ids {
        let r = get(&api.addr, &format!("/v1/runs/{id}/events"));
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("events json");
        let events: Vec<cairn_core::Envelope> = serde_json::from_value(v["events"].clone()).expect("envelopes");
        for step in ["charge", "pause", "notify"] {
            let ok = events
                .iter()
                .filter(|e| matches!(&e.event, Event::AttemptSucceeded { step: s, .. } if s.as_str() == step))
                .count();
            assert_eq!(ok, 1, "run {id} step {step} succeeded {ok} times");
        }
        recovered += events
            .iter()
            .filter(
                |e| matches!(&e.event, Event::AttemptFailed { failure, .. } if failure.message.contains("interrupted")),
            )
            .count();
    }
    // The killed worker held leases; they were recovered (interrupted attempts recorded) or its
    // runs were simply idle when it died — either way each survivor did work after the kill.
    let after: Vec<&String> = ledger.by_worker[killed_at..].iter().collect();
    for pid in &pids[1..] {
        let n = after.iter().filter(|w| w.contains(&format!(":{pid}:"))).count();
        assert!(n > 0, "worker {pid} did no work after the kill (spread: {after:?})");
    }
    eprintln!(
        "multiproc: {} runs, {repeated} keys requested more than once, {recovered} interrupted attempts recovered",
        ids.len()
    );
    for w in workers.iter_mut().skip(1) {
        let _ = w.kill();
        let _ = w.wait();
    }
    drop(api);
}
