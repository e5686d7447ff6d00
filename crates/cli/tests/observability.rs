//! What an operator watches: `GET /metrics` on a real `cairn serve`, counted from journaled facts
//! (a run replayed or resumed adds nothing it had counted), with bounded labels.

mod common;

use common::fake_model::{FakeProvider, Reply};
use common::*;
use serde_json::json;

/// The value of the sample `name{labels}` in a Prometheus text, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_runs_attempts_errors_calls_tokens_and_waiting_approvals_without_run_ids() {
    let fake = FakeProvider::start();
    fake.then([Reply::says("Hello.", 1000, 500)]);
    let env = Env::new();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.fake]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[models.fake]\nprovider = \"fake\"\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n",
            fake.base_url
        ),
    );
    let server = env.serve(&[]);
    let ask = json!({"name": "ask", "steps": [{"id": "hi", "kind": "llm", "with": {"model": "fake", "prompt": "hi"}}]});
    let r = post(&server.addr, "/v1/runs?wait=20s", &json!({"workflow": ask}));
    assert_eq!(r.json()["status"], "COMPLETED", "{}", r.body);
    let bad = json!({"name": "bad", "steps": [{"id": "x", "kind": "fail",
        "with": {"class": "transient", "message": "down"}, "retry": {"max_attempts": 2, "initial_delay": "5ms"}}]});
    let r = post(&server.addr, "/v1/runs?wait=20s", &json!({"workflow": bad}));
    assert_eq!(r.json()["status"], "FAILED", "{}", r.body);
    let gate = json!({"name": "gate", "steps": [{"id": "ok", "kind": "approval"}]});
    let r = post(&server.addr, "/v1/runs?wait=2s", &json!({"workflow": gate}));
    let waiting = r.json()["id"].as_str().expect("id").to_string();
    wait_for("the gate to wait", std::time::Duration::from_secs(10), || {
        get(&server.addr, "/v1/approvals").json()["approvals"].as_array().is_some_and(|a| a.len() == 1)
    });

    let m = get(&server.addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap_or_default().starts_with("text/plain"), "{:?}", m.header("content-type"));
    let text = m.body.clone();
    assert_eq!(sample(&text, "cairn_runs_started_total{workflow=\"ask\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_runs_finished_total{workflow=\"ask\",state=\"completed\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_runs_finished_total{workflow=\"bad\",state=\"failed\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_step_attempts_total{workflow=\"bad\",kind=\"fail\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cairn_step_errors_total{kind=\"fail\",class=\"transient\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cairn_retries_scheduled_total{kind=\"fail\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_calls_total{kind=\"llm\",name=\"fake\",outcome=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_model_tokens_total{model=\"fake\",direction=\"input\"}"), Some(1000.0), "{text}");
    assert_eq!(sample(&text, "cairn_model_tokens_total{model=\"fake\",direction=\"output\"}"), Some(500.0), "{text}");
    assert_eq!(sample(&text, "cairn_model_cost_microusd_total{model=\"fake\"}"), Some(2000.0), "{text}");
    assert_eq!(sample(&text, "cairn_approvals_waiting"), Some(1.0), "{text}");
    assert!(text.contains("cairn_run_seconds_count{workflow=\"ask\",state=\"completed\"} 1"), "{text}");
    assert!(!text.contains(&waiting) && !text.contains("wf_"), "no run ids in labels");
    // What is in flight now: the gate's run waits; nothing is stuck; the provider's breaker is
    // closed; the store's group commits are timed and counted.
    assert_eq!(sample(&text, "cairn_runs_active{state=\"waiting\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_runs_active{state=\"executing\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "cairn_runs_lease_expired"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "cairn_steps_running_past_timeout"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "cairn_breaker_state{provider=\"fake\",state=\"closed\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_breaker_state{provider=\"fake\",state=\"open\"}"), Some(0.0), "{text}");
    let groups = sample(&text, "cairn_store_commit_group_size_count{backend=\"sqlite\"}").unwrap_or(0.0);
    assert!(groups >= 3.0, "group commits are counted: {text}");
    assert!(text.contains("cairn_store_commit_seconds_bucket{backend=\"sqlite\",le=\"0.0001\"}"), "{text}");
}

#[test]
fn a_run_nobody_drives_shows_as_a_ready_step_getting_older_and_a_worker_serves_its_own_metrics() {
    let env = Env::new();
    // An API without workers: the run is created, its step is ready, and nobody starts it.
    let api = env.serve(&["--no-worker"]);
    let wf = json!({"name": "idle", "steps": [{"id": "x", "kind": "echo", "with": {"n": 1}}]});
    let r = post(&api.addr, "/v1/runs", &json!({"workflow": wf}));
    assert_eq!(r.status, 201, "{}", r.body);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let text = get(&api.addr, "/metrics").body;
    assert_eq!(sample(&text, "cairn_steps_ready"), Some(1.0), "{text}");
    let age = sample(&text, "cairn_step_ready_oldest_age_seconds").expect("the age of the oldest ready step");
    assert!(age >= 1.0, "the ready step has waited over a second: {text}");
    assert_eq!(sample(&text, "cairn_runs_active{state=\"executing\"}"), Some(1.0), "{text}");

    // A worker on the same database drives it, and serves its metrics on its own listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let listen = format!("127.0.0.1:{port}");
    let (mut worker, lines) = env.spawn(&["worker", "--metrics-listen", &listen], &[]);
    wait_line(&lines, "metrics at http://", std::time::Duration::from_secs(20));
    let id = r.json()["id"].as_str().expect("id").to_string();
    wait_for("the worker to finish the run", std::time::Duration::from_secs(20), || {
        get(&api.addr, &format!("/v1/runs/{id}")).json()["status"] == "COMPLETED"
    });
    let text = get(&listen, "/metrics").body;
    assert_eq!(sample(&text, "cairn_runs_finished_total{workflow=\"idle\",state=\"completed\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_steps_ready"), Some(0.0), "{text}");
    assert_eq!(get(&listen, "/v1/runs").status, 404, "the worker's listener serves /metrics only");
    sigkill(&mut worker);
    // A bad address is refused with the flag's name.
    let out = env.run(&["worker", "--metrics-listen", "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--metrics-listen 'nowhere' is not host:port"), "{}", stderr(&out));
}

#[test]
fn a_step_still_running_past_its_timeout_is_counted_as_stuck() {
    let env = Env::new();
    // The process finishes the attempt's work and then hangs before it commits: the step stays
    // RUNNING in the database past its 100 ms timeout (plus the 2 s grace).
    let (mut server, lines) =
        env.spawn(&["serve", "--listen", "127.0.0.1:0"], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "slow")]);
    let seen = wait_line(&lines, "listening on http://", std::time::Duration::from_secs(20));
    let addr =
        seen.last().and_then(|l| l.split("http://").nth(1)).and_then(|r| r.split_whitespace().next()).expect("addr");
    let wf = json!({"name": "hangs", "steps": [{"id": "slow", "kind": "echo", "timeout": "100ms", "with": {"n": 1}}]});
    assert_eq!(post(addr, "/v1/runs", &json!({"workflow": wf})).status, 201);
    wait_for("the stuck step to be counted", std::time::Duration::from_secs(15), || {
        sample(&get(addr, "/metrics").body, "cairn_steps_running_past_timeout") == Some(1.0)
    });
    sigkill(&mut server);
}

#[test]
fn json_logs_carry_the_run_step_and_attempt_of_each_line() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: logged\nsteps:\n  - id: fails\n    kind: fail\n    with: {class: transient, message: down}\n    retry: {max_attempts: 2, initial_delay: 5ms}\n",
    );
    let out = env.run(&["--log-format", "json", "run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "the run fails: {}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let finished: Vec<&serde_json::Value> = lines.iter().filter(|l| l["message"] == "attempt finished").collect();
    assert_eq!(finished.len(), 2, "one line per attempt: {lines:#?}");
    for (i, line) in finished.iter().enumerate() {
        assert_eq!(line["outcome"], "failed");
        assert_eq!(line["class"], "transient");
        assert_eq!(line["span"]["step"], "fails");
        assert_eq!(line["span"]["attempt"], i as u64 + 1);
        assert!(line["span"]["run_id"].as_str().is_some_and(|id| id.starts_with("wf_")), "{line}");
    }
    let out = env.run(&["--log-format", "xml", "run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'xml'") && stderr(&out).contains("json"), "{}", stderr(&out));
}

#[test]
fn top_shows_runs_by_state_stuck_signals_and_what_waits_for_a_person() {
    let env = Env::new();
    let api = env.serve(&["--no-worker"]);
    let gate = json!({"name": "gated", "steps": [{"id": "sign", "kind": "approval", "approval": {"prompt": "Sign the contract?"}}]});
    let idle = json!({"name": "idle", "steps": [{"id": "x", "kind": "echo", "with": {"n": 1}}]});
    for wf in [&gate, &idle] {
        assert_eq!(post(&api.addr, "/v1/runs", &json!({"workflow": wf})).status, 201);
    }
    let out = env.run(&["top", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // The gate waits as soon as the run is created; the other run's step waits for a worker.
    assert!(text.contains("executing 1 · waiting 1"), "{text}");
    assert!(text.contains("ready steps 1"), "{text}");
    assert!(text.contains("leases expired 0"), "{text}");
    assert!(text.contains("WAITING FOR A PERSON (1)") && text.contains("Sign the contract?"), "{text}");
    assert!(text.contains("EXECUTING (newest 1)") && text.contains("idle"), "{text}");
    let out = env.run(&["top", "--every", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
