//! Retry in place: `cairn runs retry ID` and `POST /v1/runs/{id}/retry` run a FAILED run again
//! under the same id from what did not succeed — completed steps keep their outputs, failed
//! steps get a fresh retry budget — and refuse runs that are not FAILED or were compensated.

mod common;

use cairn_core::Event;
use common::*;
use serde_json::json;
use std::time::Duration;

/// `flaky` fails its first three attempts; two per budget means it fails the first run and
/// succeeds on the second attempt of the retry.
const WF: &str = "name: flaky\nsteps:\n  - {id: fetch, kind: echo, with: {data: 42}}\n  - id: flaky\n    kind: noop\n    needs: [fetch]\n    inject: {fail_times: 3}\n    retry: {max_attempts: 2, initial_delay: 10ms}\n  - {id: send, kind: echo, needs: [flaky], with: {got: \"{{ steps.fetch.output.data }}\"}}\n";

#[test]
fn a_failed_run_retried_in_place_finishes_without_redoing_completed_steps() {
    let env = Env::new();
    let wf = env.write("wf.yaml", WF);
    assert_eq!(env.run(&["run", path_str(&wf)]).status.code(), Some(1));
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "send").status, "CANCELLED");

    let out = env.run(&["runs", "retry", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("retried in place"), "{}", stderr(&out));
    assert!(stderr(&out).contains("retry 4/4"), "a fresh budget of two more attempts: {}", stderr(&out));
    assert_eq!(env.runs().len(), 1, "the same run, not a new one");
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.failure_message, None);
    assert_eq!(env.started(&id, "fetch"), 1, "fetch kept its output");
    assert_eq!(env.started(&id, "flaky"), 4);
    assert_eq!(env.started(&id, "send"), 1);
    let retried = env.events(&id).iter().filter(|e| matches!(e.event, Event::RunRetried { .. })).count();
    assert_eq!(retried, 1);
    env.assert_journal_is_sound(&id);
    let out = env.run(&["replay", &id]);
    assert!(out.status.success() && stdout(&out).contains("retried in place by cli"), "{}", stdout(&out));

    // Only FAILED runs.
    let out = env.run(&["runs", "retry", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is COMPLETED; only a FAILED run can be retried in place"), "{}", stderr(&out));
}

#[test]
fn a_compensated_failure_is_not_retried_in_place() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: undone\nsteps:\n  - id: book\n    kind: echo\n    compensate: {kind: http, with: {url: \"http://127.0.0.1:1/x\"}, retry: {max_attempts: 1}}\n  - {id: pay, kind: fail, needs: [book], with: {class: permanent, message: refused}}\n",
    );
    assert_eq!(env.run(&["run", path_str(&wf)]).status.code(), Some(1));
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "FAILED", "the undo failed");
    let before = env.events(&id).len();
    let out = env.run(&["runs", "retry", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot be retried in place"), "{}", stderr(&out));
    assert_eq!(env.events(&id).len(), before, "nothing was recorded");
    // And it can still be retried by a later, valid path: the run is not left held.
    assert_eq!(env.only_run().owner, None);
}

#[test]
fn retry_over_the_api() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();
    let definition = json!({"name": "flaky", "steps": [
        {"id": "fetch", "kind": "echo", "with": {"data": 42}},
        {"id": "flaky", "kind": "noop", "needs": ["fetch"], "inject": {"fail_times": 1}, "retry": {"max_attempts": 1}},
    ]});
    let r = post(addr, "/v1/runs?wait=5s", &json!({"workflow": definition}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], "FAILED", "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = post(addr, &format!("/v1/runs/{id}/retry"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], id.as_str());
    wait_for("the retried run to complete", Duration::from_secs(20), || {
        get(addr, &format!("/v1/runs/{id}")).json()["status"] == "COMPLETED"
    });
    assert_eq!((env.started(&id, "fetch"), env.started(&id, "flaky")), (1, 2));
    let r = post(addr, &format!("/v1/runs/{id}/retry"), &json!({}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap_or_default().contains("only a FAILED run"), "{}", r.body);
    env.assert_journal_is_sound(&id);
}
