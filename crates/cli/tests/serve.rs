//! `cairn serve` and `cairn worker` as real processes on loopback: SIGKILL under load, resumable
//! event streams, `runs watch`, graceful and hurried shutdown, a worker sharing the database,
//! crashed CLI runs finished by the server, tokens, and retention.

mod common;

use cairn_core::Event;
use cairn_store::Access;
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);
const GOAL: &str = "generate summary and send email";

/// echo → sleep → echo, the sleep as long as asked.
fn nap_workflow(name: &str, nap: &str) -> Value {
    json!({"name": name, "steps": [
        {"id": "a", "kind": "echo", "with": {"x": 1}},
        {"id": "nap", "kind": "mock_model", "needs": ["a"], "with": {"prompt": "busy", "latency": nap}},
        {"id": "c", "kind": "echo", "needs": ["nap"], "with": {"y": 2}},
    ]})
}

/// A chain of short sleeps: a run with a handful of events spread over time.
fn chain_workflow(name: &str, links: usize, each: &str) -> Value {
    let steps: Vec<Value> = (0..links)
        .map(|i| {
            let needs: Vec<String> = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
            json!({"id": format!("s{i}"), "kind": "mock_model", "needs": needs, "with": {"prompt": "busy", "latency": each}})
        })
        .collect();
    json!({"name": name, "steps": steps})
}

const WAITING_YAML: &str = "name: waits\nsteps:\n  - id: flaky\n    kind: noop\n    inject: {fail_times: 1}\n    retry: {initial_delay: 30s, max_delay: 60s, jitter: 0}\n";

fn start(addr: &str, body: Value) -> String {
    let r = post(addr, "/v1/runs", &body);
    assert_eq!(r.status, 201, "start a run: {}", r.body);
    r.json()["id"].as_str().expect("id").to_string()
}

/// Polls `GET /v1/runs/{id}` until `done` holds; returns that view.
fn wait_run(addr: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let r = get(addr, &format!("/v1/runs/{id}"));
        let v = r.json();
        if r.status == 200 && done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for run {id} to be {what}: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_status(addr: &str, id: &str, status: &str) -> Value {
    wait_run(addr, id, status, |v| v["status"] == status)
}

fn step_view<'a>(run: &'a Value, step: &str) -> &'a Value {
    run["steps"].as_array().and_then(|s| s.iter().find(|s| s["step_id"] == step)).expect("step in the view")
}

/// How many times each step's attempt succeeded, from the journal.
fn successes(env: &Env, id: &str) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in env.events(id) {
        if let Event::AttemptSucceeded { step, .. } = &e.event {
            *n.entry(step.to_string()).or_insert(0) += 1;
        }
    }
    n
}

/// Stops a server with SIGTERM and expects a clean exit.
fn stop(mut server: Server) {
    server.signal("TERM");
    let status = server.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "a clean shutdown exits 0");
}

#[derive(Default)]
struct Outcomes {
    accepted: Vec<String>,
    /// Connected, then lost the answer: the run may or may not exist.
    maybe: usize,
    /// Never reached the server.
    refused: usize,
    unexpected: Vec<String>,
}

#[test]
fn sigkill_under_load_loses_no_accepted_run_and_repeats_no_completed_step() {
    let env = Env::new();
    let mut server = env.serve(&[]);
    let addr = server.addr.clone();

    // Follow every run's events from now on, until the server dies.
    let mut feed = Sse::open(&addr, "/v1/events/stream", &[]);
    assert_eq!(feed.status, 200);
    let follower = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(Some(e)) = feed.next(Duration::from_secs(60)) {
            got.push(e);
        }
        got
    });

    let nap = json!({"workflow": nap_workflow("napper", "300ms")}).to_string();
    let goal = json!({"goal": GOAL}).to_string();
    let jobs: Vec<String> = (0..150).map(|i| if i % 5 == 4 { nap.clone() } else { goal.clone() }).collect();
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (jobs, next, outcomes, addr) = (jobs.clone(), next.clone(), outcomes.clone(), addr.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(body) = jobs.get(i) else { return };
                    let result = http(&addr, "POST", "/v1/runs", &[], Some(body));
                    let mut o = outcomes.lock().expect("lock");
                    match result {
                        Ok(r) if r.status == 201 => o.accepted.push(r.json()["id"].as_str().expect("id").to_string()),
                        Ok(r) => o.unexpected.push(format!("{} {}", r.status, r.body)),
                        Err(HttpError::Connect(_)) => o.refused += 1,
                        Err(HttpError::Io(_)) => o.maybe += 1,
                    }
                }
            })
        })
        .collect();
    wait_for("half the runs to be accepted", LONG, || outcomes.lock().expect("lock").accepted.len() >= jobs.len() / 2);
    sigkill(&mut server.child);
    for c in clients {
        c.join().expect("client thread");
    }
    let events = follower.join().expect("follower thread");
    let o = std::mem::take(&mut *outcomes.lock().expect("lock"));
    eprintln!(
        "before the kill: {} accepted, {} maybe, {} refused; {} stream events",
        o.accepted.len(),
        o.maybe,
        o.refused,
        events.len()
    );
    assert!(o.unexpected.is_empty(), "every answer was 201: {:#?}", o.unexpected);
    assert_eq!(o.accepted.len() + o.maybe + o.refused, jobs.len());
    assert!(o.accepted.len() < jobs.len(), "the kill came mid-load ({} accepted)", o.accepted.len());

    // What the stream delivered before the kill: ids strictly increasing, each run's seqs 1..n.
    assert!(!events.is_empty(), "the stream delivered events before the kill");
    let mut per_run: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_id = 0;
    for e in &events {
        let id = e.id.expect("every event has an id");
        assert!(id > last_id, "stream ids increase: {id} after {last_id}");
        last_id = id;
        let run = e.data["run_id"].as_str().expect("run_id").to_string();
        per_run.entry(run).or_default().push(e.data["seq"].as_u64().expect("seq"));
    }
    for (run, seqs) in &per_run {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "run {run}: the stream skipped or repeated an event");
    }

    // Restart on the same database: every accepted run finishes.
    let server = env.serve(&[]);
    let addr = server.addr.clone();
    let deadline = Instant::now() + LONG;
    let runs = loop {
        let r = get(&addr, "/v1/runs?limit=500");
        assert_eq!(r.status, 200, "{}", r.body);
        let runs: Vec<Value> = r.json()["runs"].as_array().expect("runs").clone();
        if runs.iter().all(|r| r["status"] == "COMPLETED") {
            break runs;
        }
        let open: Vec<String> = runs
            .iter()
            .filter(|r| r["status"] != "COMPLETED")
            .map(|r| format!("{} {}", r["id"], r["status"]))
            .collect();
        assert!(Instant::now() < deadline, "runs not finished after the restart: {open:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let in_db: HashSet<String> = runs.iter().map(|r| r["id"].as_str().expect("id").to_string()).collect();
    for id in &o.accepted {
        assert!(in_db.contains(id), "accepted run {id} was lost");
        assert_eq!(get(&addr, &format!("/v1/runs/{id}")).json()["status"], "COMPLETED");
    }
    assert!(
        in_db.len() <= o.accepted.len() + o.maybe,
        "{} runs exist but only {} were accepted and {} maybe",
        in_db.len(),
        o.accepted.len(),
        o.maybe
    );
    eprintln!("after the restart: {} runs, all COMPLETED", in_db.len());
    stop(server);

    for id in &in_db {
        for (step, n) in successes(&env, id) {
            assert_eq!(n, 1, "run {id}: step {step} succeeded {n} times");
        }
        env.assert_journal_is_sound(id);
    }
}

/// Reads up to `n` events (all of them when `n` is `None`) from one connection.
fn read_events(sse: &mut Sse, n: Option<usize>) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while n.is_none_or(|n| out.len() < n) {
        match sse.next(LONG) {
            Ok(Some(e)) => out.push(e),
            Ok(None) => break,
            Err(e) => panic!("stream stalled: {e}; got {out:#?}"),
        }
    }
    out
}

#[test]
fn run_stream_resumes_with_last_event_id_without_gaps_or_repeats() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();
    let id = start(addr, json!({"workflow": chain_workflow("chain", 4, "150ms")}));
    let path = format!("/v1/runs/{id}/events/stream");
    let mut seen: Vec<SseEvent> = Vec::new();
    let mut connections = 0;
    loop {
        connections += 1;
        assert!(connections < 50, "the stream never ended");
        let last = seen.last().and_then(|e| e.id).map(|n| n.to_string());
        let headers: Vec<(&str, &str)> = last.as_deref().map(|l| vec![("Last-Event-ID", l)]).unwrap_or_default();
        let mut sse = Sse::open(addr, &path, &headers);
        assert_eq!(sse.status, 200);
        assert!(sse.headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
        // Two events per connection, then hang up (the last connection reads to the end).
        let got = read_events(&mut sse, if connections < 4 { Some(2) } else { None });
        let finished = got.last().is_some_and(|e| e.event == "run_completed");
        seen.extend(got);
        if finished {
            break;
        }
    }
    let ids: Vec<i64> = seen.iter().map(|e| e.id.expect("id")).collect();
    let n = wait_status(addr, &id, "COMPLETED")["events"].as_i64().expect("events");
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "exactly the journal, once, in order");
    assert!(seen.iter().all(|e| e.data["seq"] == e.id.expect("id") && e.data["type"] == e.event.as_str()));
    assert_eq!(seen.last().expect("events").event, "run_completed");
    // After the end there is nothing more, and the stream closes at once.
    let mut sse = Sse::open(addr, &path, &[("Last-Event-ID", &n.to_string())]);
    assert!(read_events(&mut sse, None).is_empty());
    stop(server);
}

#[test]
fn all_runs_stream_resumes_with_last_event_id_without_gaps_or_repeats() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();
    // From now: nothing before the first connection is sent.
    let mut sse = Sse::open(addr, "/v1/events/stream", &[]);
    assert_eq!(sse.status, 200);
    let ids: Vec<String> =
        (0..3).map(|i| start(addr, json!({"workflow": chain_workflow(&format!("c{i}"), 3, "100ms")}))).collect();
    let mut seen = read_events(&mut sse, Some(4));
    drop(sse);
    let mut completed = HashSet::new();
    let mut connections = 1;
    while completed.len() < ids.len() {
        connections += 1;
        assert!(connections < 100, "runs never completed on the stream");
        let last = seen.last().and_then(|e| e.id).expect("an id").to_string();
        let mut sse = Sse::open(addr, "/v1/events/stream", &[("Last-Event-ID", &last)]);
        // Up to three events per connection, then hang up.
        for _ in 0..3 {
            let e = match sse.next(LONG) {
                Ok(Some(e)) => e,
                other => panic!("the all-runs stream never ends on its own: {other:?}"),
            };
            if e.event == "run_completed" {
                completed.insert(e.data["run_id"].as_str().expect("run_id").to_string());
            }
            seen.push(e);
            if completed.len() == ids.len() {
                break;
            }
        }
    }
    let gids: Vec<i64> = seen.iter().map(|e| e.id.expect("id")).collect();
    assert!(gids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase: {gids:?}");
    let mut per_run: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &seen {
        per_run
            .entry(e.data["run_id"].as_str().expect("run_id").to_string())
            .or_default()
            .push(e.data["seq"].as_u64().expect("seq"));
    }
    assert_eq!(per_run.keys().cloned().collect::<HashSet<_>>(), ids.iter().cloned().collect());
    for id in &ids {
        let n = get(addr, &format!("/v1/runs/{id}")).json()["events"].as_u64().expect("events");
        assert_eq!(per_run[id], (1..=n).collect::<Vec<_>>(), "run {id}: every event once, in order");
    }
    stop(server);
}

fn watch(env: &Env, id: &str, server: &Server) -> std::process::Output {
    output_within(env.cmd().args(["runs", "watch", id, "--server", &server.url()]), LONG)
}

#[test]
fn runs_watch_follows_a_run_and_exits_by_its_outcome() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();

    // A finished run: the whole story, exit 0.
    let r = post(addr, "/v1/runs?wait=10s", &json!({"goal": GOAL}));
    assert_eq!(r.status, 201);
    let done = r.json()["id"].as_str().expect("id").to_string();
    let out = watch(&env, &done, &server);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains(&format!("[workflow] id={done} started")), "{text}");
    assert!(text.contains("[plan] goal \"generate summary and send email\""), "{text}");
    assert!(text.contains("[step] generate_summary=ok"), "{text}");
    assert!(text.contains("[step] send_email=ok"), "{text}");
    assert!(text.lines().last().is_some_and(|l| l.starts_with("[workflow] completed")), "{text}");

    // A live run: followed as it happens, each step once.
    let live = start(addr, json!({"workflow": chain_workflow("live", 3, "200ms")}));
    let out = watch(&env, &live, &server);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    for s in ["s0", "s1", "s2"] {
        assert_eq!(text.matches(&format!("[step] {s}=ok")).count(), 1, "{text}");
    }

    // A cancelled run: exit 1.
    let waiting = start(addr, json!({"workflow": waiting_workflow()}));
    wait_status(addr, &waiting, "WAITING");
    let r = post(addr, &format!("/v1/runs/{waiting}/cancel"), &json!({"reason": "changed my mind"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let out = watch(&env, &waiting, &server);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains("[workflow] cancelled: changed my mind"), "{text}");

    // An unknown run is the caller's mistake.
    let out = watch(&env, &cairn_engine::new_run_id().to_string(), &server);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stop(server);
}

/// `WAITING_YAML` as JSON, for the API.
fn waiting_workflow() -> Value {
    json!({"name": "waits", "steps": [{"id": "flaky", "kind": "noop", "inject": {"fail_times": 1},
        "retry": {"initial_delay": "30s", "max_delay": "60s", "jitter": 0}}]})
}

/// Waits until the step is RUNNING according to the API.
fn wait_step_running(addr: &str, id: &str, step: &str) {
    wait_run(addr, id, &format!("running step {step}"), |v| step_view(v, step)["status"] == "RUNNING");
}

#[test]
fn sigterm_lets_the_attempt_in_flight_finish_and_the_next_start_completes_the_run() {
    let env = Env::new();
    let mut server = env.serve(&[]);
    let addr = server.addr.clone();
    let id = start(&addr, json!({"workflow": nap_workflow("graceful", "1500ms")}));
    wait_step_running(&addr, &id, "nap");
    // Open event streams must not hold the shutdown up: they end.
    let mut run_stream = Sse::open(&addr, &format!("/v1/runs/{id}/events/stream"), &[]);
    let mut all_stream = Sse::open(&addr, "/v1/events/stream", &[]);
    assert_eq!((run_stream.status, all_stream.status), (200, 200));
    let asked = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "a graceful shutdown exits 0");
    assert!(asked.elapsed() < Duration::from_secs(10));
    let streamed = read_events(&mut run_stream, None);
    assert!(streamed.iter().all(|e| e.event != "run_completed"), "{streamed:#?}");
    read_events(&mut all_stream, None);

    let nap = env.step(&id, "nap");
    assert_eq!(nap.status, "COMPLETED", "the attempt in flight finished: {nap:#?}");
    assert_eq!(nap.attempts, 1);
    assert_eq!(env.started(&id, "c"), 0, "nothing new starts while shutting down");
    let run = env.only_run();
    assert!(!matches!(run.status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED"), "{run:#?}");
    assert_eq!(run.owner, None, "the lease was released: {run:#?}");

    let server = env.serve(&[]);
    wait_status(&server.addr, &id, "COMPLETED");
    stop(server);
    assert_eq!(env.started(&id, "nap"), 1, "the finished attempt did not run again");
    assert_eq!(env.started(&id, "c"), 1);
    assert!(successes(&env, &id).values().all(|n| *n == 1));
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_second_sigterm_during_a_long_shutdown_exits_at_once() {
    let env = Env::new();
    let mut server = env.serve(&["--shutdown-timeout", "30s"]);
    let addr = server.addr.clone();
    let id = start(&addr, json!({"workflow": nap_workflow("hurried", "3s")}));
    wait_step_running(&addr, &id, "nap");
    server.signal("TERM");
    wait_line(&server.lines, "shutting down", LONG);
    let asked = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "the second signal exits with 130");
    assert!(asked.elapsed() < Duration::from_millis(2500), "at once, not after the step: {:?}", asked.elapsed());
    assert_eq!(env.step(&id, "nap").status, "RUNNING", "the attempt was cut off");

    // The next start takes the run over (its owner is dead) and finishes it.
    let server = env.serve(&[]);
    let done = wait_status(&server.addr, &id, "COMPLETED");
    assert_eq!(step_view(&done, "nap")["attempts"], 2, "{done:#}");
    stop(server);
    assert_eq!(env.started(&id, "a"), 1);
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_worker_and_a_server_share_one_database() {
    let env = Env::new();
    let (worker, worker_lines) = env.spawn(&["worker", "--lease-ms", "1000"], &[]);
    let mut worker = worker;
    wait_line(&worker_lines, "cairn worker:", LONG);
    // The server drives at most one run itself; the rest are left for any worker.
    let server = env.serve(&["--max-runs", "1"]);
    let addr = server.addr.clone();
    let mut ids = Vec::new();
    for i in 0..16 {
        let body =
            if i % 2 == 0 { json!({"goal": GOAL}) } else { json!({"workflow": nap_workflow("shared", "200ms")}) };
        ids.push(start(&addr, body));
    }
    for id in &ids {
        wait_status(&addr, id, "COMPLETED");
    }
    stop(server);
    send_signal(&worker, "TERM");
    assert_eq!(wait_exit(&mut worker, LONG).code(), Some(0), "the worker stops cleanly");
    for id in &ids {
        assert!(successes(&env, id).values().all(|n| *n == 1), "run {id} repeated a step");
        env.assert_journal_is_sound(id);
    }
}

#[test]
fn a_run_whose_cli_process_was_killed_is_finished_by_the_server() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: orphan\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: nap, kind: mock_model, needs: [a], with: {prompt: busy, latency: 1500ms}}\n  - {id: c, kind: echo, needs: [nap], with: {y: 2}}\n",
    );
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("step nap to be RUNNING", LONG, || {
        env.runs().first().is_some_and(|r| env.steps(&r.id).iter().any(|s| s.step_id == "nap" && s.status == "RUNNING"))
    });
    sigkill(&mut child);
    let id = env.only_run().id;

    let server = env.serve(&[]);
    let done = wait_status(&server.addr, &id, "COMPLETED");
    assert_eq!(step_view(&done, "nap")["attempts"], 2, "the interrupted attempt counts: {done:#}");
    assert_eq!(step_view(&done, "a")["attempts"], 1);
    stop(server);
    assert_eq!(env.started(&id, "nap"), 2);
    assert_eq!(env.started(&id, "a"), 1, "a completed before the kill and did not run again");
    let interrupted = env.events(&id).into_iter().any(|e| {
        matches!(&e.event, Event::AttemptFailed { step, failure, .. }
            if step.as_str() == "nap" && failure.message.contains("interrupted"))
    });
    assert!(interrupted, "the lost attempt is recorded as interrupted");
    env.assert_journal_is_sound(&id);
}

#[test]
fn tokens_created_on_the_command_line_open_a_server_with_auth_on() {
    let env = Env::new();
    let out = env.run(&["tokens", "create", "--role", "viewer", "--name", "dash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("cairn_"), "the token is printed on stdout: {token:?}");
    assert!(!stderr(&out).contains(&token), "the secret goes to stdout only");

    let server = env.serve(&["--auth", "on"]);
    let addr = server.addr.as_str();
    let bearer = format!("Bearer {token}");
    assert_eq!(get(addr, "/healthz").status, 200);
    let r = get(addr, "/v1/runs");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert_eq!(call(addr, "GET", "/v1/runs", &[("Authorization", "Bearer cairn_wrong")], None).status, 401);
    let r = call(addr, "GET", "/v1/runs", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json!({"goal": GOAL}).to_string();
    let r = call(addr, "POST", "/v1/runs", &[("Authorization", &bearer)], Some(&body));
    assert_eq!(r.status, 403, "a viewer cannot start runs: {}", r.body);

    let out = env.run(&["tokens", "revoke", "dash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(call(addr, "GET", "/v1/runs", &[("Authorization", &bearer)], None).status, 401);
    stop(server);
}

/// The live tokens in the test database as (id, name), oldest first.
fn live_tokens(env: &Env) -> Vec<(String, String)> {
    let tokens = env.block(env.store().tokens()).expect("tokens");
    tokens.into_iter().filter(|t| t.revoked_at_ms.is_none()).map(|t| (t.id, t.name)).collect()
}

/// The secret printed by `cairn tokens create`.
fn create_token(env: &Env, role: &str, name: &str) -> String {
    let out = env.run(&["tokens", "create", "--role", role, "--name", name]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn a_second_live_token_with_one_name_exits_2_and_prints_no_secret() {
    let env = Env::new();
    create_token(&env, "viewer", "ci");
    let holder = live_tokens(&env)[0].0.clone();
    let out = env.run(&["tokens", "create", "--role", "admin", "--name", "ci"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stdout(&out).trim().is_empty(), "no secret is printed: {}", stdout(&out));
    assert!(stderr(&out).contains(&holder), "the refusal names the token holding the name: {}", stderr(&out));
    assert_eq!(live_tokens(&env).len(), 1, "nothing was stored");

    let out = env.run(&["tokens", "create", "--role", "admin", "--name", "tok_ci"]);
    assert_eq!(out.status.code(), Some(2), "a name that reads as an id: {}", stderr(&out));

    let out = env.run(&["tokens", "revoke", "ci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&holder), "revoke says which token went: {}", stderr(&out));
    create_token(&env, "admin", "ci");
    assert_eq!(live_tokens(&env).len(), 1, "revoked, the name is free again");
    let out = env.run(&["tokens", "revoke", "tok_0000000000000000"]);
    assert_eq!(out.status.code(), Some(2), "unknown id: {}", stderr(&out));
}

#[test]
fn revoking_a_name_two_live_tokens_share_is_refused_until_one_goes_by_id() {
    let env = Env::new();
    let admin = create_token(&env, "admin", "root");
    let newer = create_token(&env, "viewer", "ci");
    // A second live "ci" as releases before unique names could leave it, with the id of that time.
    let legacy = format!("cairn_{}", "5e".repeat(24));
    let legacy_id = format!("tok_{}", &legacy[6..16]);
    let conn = rusqlite::Connection::open(&env.db).expect("open database");
    conn.execute(
        "INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?1, 'ci', 'viewer', ?2, 1)",
        rusqlite::params![legacy_id, cairn_core::payload::sha256_hex(legacy.as_bytes())],
    )
    .expect("insert legacy token");
    drop(conn);
    let newer_id = live_tokens(&env).into_iter().find(|(id, name)| name == "ci" && *id != legacy_id).expect("ci").0;

    let out = env.run(&["tokens", "revoke", "ci"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for id in [&legacy_id, &newer_id] {
        assert!(stderr(&out).contains(id.as_str()), "the refusal lists {id}: {}", stderr(&out));
    }
    assert_eq!(live_tokens(&env).len(), 3, "neither was revoked");

    let server = env.serve(&["--auth", "on"]);
    let addr = server.addr.as_str();
    let as_admin = format!("Bearer {admin}");
    for secret in [&legacy, &newer] {
        let r = call(addr, "GET", "/v1/runs", &[("Authorization", &format!("Bearer {secret}"))], None);
        assert_eq!(r.status, 200, "both keep working: {}", r.body);
    }
    let r = call(addr, "POST", "/v1/tokens/ci/revoke", &[("Authorization", &as_admin)], Some("{}"));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "ambiguous_token_name");
    assert_eq!(r.json()["error"]["details"]["ids"], json!([legacy_id, newer_id]), "oldest first");

    let out = env.run(&["tokens", "revoke", &legacy_id]);
    assert!(out.status.success(), "by id: {}", stderr(&out));
    let legacy_bearer = format!("Bearer {legacy}");
    assert_eq!(call(addr, "GET", "/v1/runs", &[("Authorization", &legacy_bearer)], None).status, 401);
    let r = call(addr, "POST", "/v1/tokens/ci/revoke", &[("Authorization", &as_admin)], Some("{}"));
    assert_eq!(r.status, 200, "one live 'ci' is left: {}", r.body);
    assert_eq!(r.json()["id"], newer_id.as_str());
    let r = call(addr, "POST", "/v1/tokens/ci/revoke", &[("Authorization", &as_admin)], Some("{}"));
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "token_not_found");
    stop(server);
    let out = env.run(&["tokens", "revoke", "ci"]);
    assert_eq!(out.status.code(), Some(2), "nothing live is named ci: {}", stderr(&out));
}

#[test]
fn a_refused_request_stays_a_401_when_the_audit_cannot_be_written() {
    let env = Env::new();
    let admin = create_token(&env, "admin", "root");
    let viewer = create_token(&env, "viewer", "dash");
    let server = env.serve(&["--auth", "on"]);
    let addr = server.addr.as_str();
    let stranger = format!("cairn_{}", "7a".repeat(24));
    let as_stranger = format!("Bearer {stranger}");
    assert_eq!(call(addr, "GET", "/v1/runs", &[("Authorization", &as_stranger)], None).status, 401);
    let audit = call(addr, "GET", "/v1/audit", &[("Authorization", &format!("Bearer {admin}"))], None);
    assert_eq!(audit.json()["audit"][0]["actor"], "unknown-token", "{}", audit.body);
    assert!(!audit.body.contains(&stranger[6..18]), "{}", audit.body);

    // From now on every audit write fails.
    let conn = rusqlite::Connection::open(&env.db).expect("open database");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.execute_batch(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
    )
    .expect("trigger");
    drop(conn);
    for _ in 0..20 {
        let r = call(addr, "GET", "/v1/runs", &[("Authorization", &as_stranger)], None);
        assert_eq!((r.status, r.json()["error"]["code"].clone()), (401, json!("unauthorized")), "{}", r.body);
        assert_eq!(get(addr, "/v1/runs").status, 401);
    }
    let body = json!({"goal": GOAL}).to_string();
    let r = call(addr, "POST", "/v1/runs", &[("Authorization", &format!("Bearer {viewer}"))], Some(&body));
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(addr, "POST", "/v1/runs", &[("Authorization", &format!("Bearer {admin}"))], Some(&body));
    assert_eq!(r.status, 201, "a request that was done is not undone by its audit: {}", r.body);
    let seen = wait_line(&server.lines, "[audit] could not record", LONG);
    assert!(seen.iter().all(|l| !l.contains(&stranger[6..18])), "{seen:#?}");
    stop(server);
}

fn gc_report(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "gc failed: {}", stderr(out));
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| panic!("gc --json: {e}: {}", stdout(out)))
}

fn listed(env: &Env) -> Vec<String> {
    let out = env.run(&["runs", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Value = serde_json::from_str(&stdout(&out)).expect("runs list --json");
    rows.as_array().expect("array").iter().map(|r| r["id"].as_str().expect("id").to_string()).collect()
}

#[test]
fn gc_deletes_finished_runs_past_retention_and_never_unfinished_ones() {
    let env = Env::new();
    let quick = env.write("quick.yaml", "name: quick\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n");
    for _ in 0..2 {
        let out = env.run(&["run", path_str(&quick)]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let waiting = env.write("waits.yaml", WAITING_YAML);
    let (mut child, _lines) = env.spawn(&["run", path_str(&waiting)], &[]);
    wait_for("the run to wait for its retry", LONG, || {
        env.runs().iter().any(|r| env.steps(&r.id).iter().any(|s| s.step_id == "flaky" && s.status == "RETRY_WAIT"))
    });
    sigkill(&mut child);
    let open = env.runs().into_iter().find(|r| r.workflow == "waits").expect("waiting run").id;
    let finished_at = env.runs().iter().filter_map(|r| r.finished_at_ms).max().expect("finished runs");
    wait_for("the finished runs to be older than 1ms", LONG, || cairn_engine::now_ms() > finished_at + 1);

    let dry = gc_report(&env.run(&["gc", "--retention", "1ms", "--dry-run", "--json"]));
    assert_eq!(dry["runs"], 2, "{dry}");
    assert!(dry["events"].as_u64().is_some_and(|n| n > 0), "{dry}");
    assert_eq!(env.runs().len(), 3, "a dry run deletes nothing");
    let out = env.run(&["gc", "--retention", "1ms", "--dry-run"]);
    assert!(stdout(&out).contains("would delete 2 finished run(s)"), "{}", stdout(&out));

    let report = gc_report(&env.run(&["gc", "--retention", "1ms", "--json"]));
    assert_eq!(report["runs"], dry["runs"], "the dry run predicted the real one");
    assert_eq!(report["events"], dry["events"]);
    assert_eq!(report["payloads"], dry["payloads"]);
    assert_eq!(listed(&env), vec![open.clone()], "only the unfinished run is left");
    env.assert_journal_is_sound(&open);
    let again = gc_report(&env.run(&["gc", "--retention", "1ms", "--json"]));
    assert_eq!(again["runs"], 0, "{again}");

    // Once it finishes it is collected too, and the listing is empty.
    let out = env.run(&["runs", "cancel", &open]);
    assert!(out.status.success(), "{}", stderr(&out));
    let finished_at = env.runs()[0].finished_at_ms.expect("cancelled runs record when");
    wait_for("the cancelled run to be older than 1ms", LONG, || cairn_engine::now_ms() > finished_at + 1);
    let report = gc_report(&env.run(&["gc", "--retention", "1ms", "--json"]));
    assert_eq!(report["runs"], 1, "{report}");
    assert!(listed(&env).is_empty());
    let out = env.run(&["runs", "list"]);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("wf_"), "{}", stdout(&out));
}

/// Regression: a request that reached a waiting run while the server was letting go of it was
/// queued (202) and applied seconds later, with the run claimed and released in a tight loop.
#[test]
fn requests_racing_an_idle_release_are_applied_at_once() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();
    for round in 0..10 {
        let id = start(addr, json!({"workflow": waiting_workflow()}));
        wait_status(addr, &id, "WAITING");
        let r = post(addr, &format!("/v1/runs/{id}/cancel"), &json!({"reason": format!("round {round}")}));
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        wait_status(addr, &id, "CANCELLED");
    }
}
