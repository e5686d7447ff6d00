//! Journaled calls inside a step: each outside call is recorded (`run/step/call-N`, with a hash of
//! its request) before the next starts, so an attempt that runs again after SIGKILL gets the
//! recorded results back in order and sends only what was never recorded.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn five_writes(service: &str) -> String {
    let requests: Vec<String> =
        (1..=5).map(|i| format!("{{url: \"http://{service}/write/{i}\", body: {{n: {i}}}}}")).collect();
    format!(
        "name: five-writes\nsteps:\n  - id: writes\n    kind: http\n    retry: {{max_attempts: 3, initial_delay: 10ms}}\n    with:\n      requests: [{}]\n",
        requests.join(", ")
    )
}

#[test]
fn a_step_killed_after_its_third_call_resumes_and_the_service_sees_each_write_once() {
    let env = Env::new();
    let (service, counts) = counting_server();
    let wf = env.write("wf.yaml", &five_writes(&service));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_CALL", "writes/3")]);
    wait_line(&lines, "[debug] holding after call 3 of writes", LONG);
    sigkill(&mut child);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "writes").status, "RUNNING", "the attempt was cut off mid-step");
    let store = env.store();
    let recorded = env.block(cairn_store::EffectLog::calls(&store, &cairn_core::RunId::parse(&id).expect("id"), None));
    let recorded = recorded.expect("calls");
    assert_eq!(recorded.iter().map(|c| c.n).collect::<Vec<_>>(), [1, 2, 3], "{recorded:?}");
    assert!(recorded.iter().all(|c| c.outcome == "ok" && c.kind == "http" && c.attempt == 1), "{recorded:?}");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED");
    let seen = counts.lock().expect("counts").clone();
    for n in 1..=5 {
        let key = format!("{id}/writes/call-{n}");
        assert_eq!(seen.get(&key), Some(&1), "the service saw write {n} {:?} times: {seen:?}", seen.get(&key));
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    // The second attempt got calls 1-3 back from the log and made 4 and 5 itself.
    let calls = env.block(cairn_store::EffectLog::calls(&store, &cairn_core::RunId::parse(&id).expect("id"), None));
    let attempts: Vec<u32> = calls.expect("calls").iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 1, 1, 2, 2]);
    let logs = stdout(&env.run(&["runs", "logs", &id]));
    assert!(logs.contains("call 3 (http"), "{logs}");
    assert!(logs.contains("returned the recorded result; not sent again"), "{logs}");
    env.assert_journal_is_sound(&id);

    // The calls are visible wherever the step is: runs show, the export, replay and the API.
    let shown = stdout(&env.run(&["runs", "show", &id, "--step", "writes"]));
    assert!(shown.contains("calls\n  #1 "), "{shown}");
    assert_eq!(shown.matches("  http   ok  attempt ").count(), 5, "{shown}");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--step", "writes", "--json"]))).expect("json");
    assert_eq!(shown["calls"].as_array().map(Vec::len), Some(5), "{shown}");
    let export: serde_json::Value = serde_json::from_str(&stdout(&env.run(&["export", &id]))).expect("export");
    assert_eq!(export["calls"].as_array().map(Vec::len), Some(5));
    for call in export["calls"].as_array().into_iter().flatten() {
        let hash = call["result_hash"].as_str().unwrap_or_default();
        assert!(export["payloads"].get(hash).is_some(), "the export carries call results: {call}");
    }
    let replay = stdout(&env.run(&["replay", &id]));
    assert!(replay.contains("calls: call-1 http ok"), "{replay}");
    let server = env.serve(&[]);
    let reply = get(&server.addr, &format!("/v1/runs/{id}/steps/writes"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["step"]["status"], "COMPLETED");
    let ns: Vec<u64> = body["calls"].as_array().into_iter().flatten().filter_map(|c| c["n"].as_u64()).collect();
    assert_eq!(ns, [1, 2, 3, 4, 5], "{body}");
    assert_eq!(body["calls"][0]["kind"], "http");
    assert!(body["calls"][0]["duration_ms"].is_u64(), "{body}");
    let nope = get(&server.addr, &format!("/v1/runs/{id}/steps/nope"));
    assert_eq!((nope.status, nope.json()["error"]["code"].as_str()), (404, Some("step_not_found")));
    let unknown = get(&server.addr, "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7/steps/writes");
    assert_eq!((unknown.status, unknown.json()["error"]["code"].as_str()), (404, Some("run_not_found")));
}

#[test]
fn a_call_whose_request_changed_since_it_was_recorded_is_a_divergence_not_a_resend() {
    let env = Env::new();
    let (service, counts) = counting_server();
    let wf = env.write("wf.yaml", &five_writes(&service));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_CALL", "writes/2")]);
    wait_line(&lines, "[debug] holding after call 2 of writes", LONG);
    sigkill(&mut child);
    let id = env.only_run().id;
    // The recorded request 2 no longer matches what the step asks (as if its input changed).
    let db = rusqlite::Connection::open(&env.db).expect("open the database");
    let changed = db
        .execute("UPDATE calls SET request_hash=?1 WHERE step='writes' AND n=2", ["0".repeat(64)])
        .expect("change the recorded request");
    assert_eq!(changed, 1);
    drop(db);
    let out = env.run(&["resume"]);
    assert_eq!(out.status.code(), Some(1), "the run fails: {}", stderr(&out));
    let step = env.step(&id, "writes");
    assert_eq!(step.status, "FAILED");
    let message = step.error_message.clone().unwrap_or_default();
    assert!(message.contains("call 2 of step 'writes'") && message.contains("000000000000"), "{message}");
    let code = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::AttemptFailed { attempt: 2, failure, .. } => failure.code,
        _ => None,
    });
    assert_eq!(code.as_deref(), Some("call_divergence"));
    let seen = counts.lock().expect("counts").clone();
    assert_eq!(seen.get(&format!("{id}/writes/call-2")), Some(&1), "not sent again: {seen:?}");
    assert_eq!(seen.get(&format!("{id}/writes/call-3")), None, "nothing after the divergence: {seen:?}");
}
