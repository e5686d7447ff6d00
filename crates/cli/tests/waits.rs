//! Durable waits (`kind: wait`): a run parked on a wait holds no worker and no attempt, survives
//! SIGKILL, and ends at its time or with its signal.

mod common;

use common::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_wait_killed_halfway_ends_on_its_original_time_after_resume_without_spending_an_attempt() {
    killed_halfway("wait");
}

#[test]
fn a_sleep_is_a_durable_wait_too() {
    killed_halfway("sleep");
}

fn killed_halfway(kind: &str) {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        &format!("name: pause\nsteps:\n  - {{id: cool_off, kind: {kind}, with: {{duration: 1500ms}}}}\n  - {{id: after, kind: echo, needs: [cool_off], with: {{waited: '{{{{ steps.cool_off.output.waited_ms }}}}'}}}}\n"),
    );
    let began = Instant::now();
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("the wait to begin", LONG, || env.runs().first().is_some_and(|r| r.status == "WAITING"));
    std::thread::sleep(Duration::from_millis(500));
    sigkill(&mut child);
    let id = env.only_run().id;
    let step = env.step(&id, "cool_off");
    assert_eq!((step.status.as_str(), step.attempts), ("WAITING", 0), "a wait holds no attempt");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    let elapsed = began.elapsed();
    assert_eq!(env.only_run().status, "COMPLETED");
    assert!(elapsed >= Duration::from_millis(1_400), "ended before its time: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1_500 + 3_000), "waited again from the start: {elapsed:?}");
    let step = env.step(&id, "cool_off");
    assert_eq!((step.status.as_str(), step.attempts), ("COMPLETED", 0));
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_signal_ends_a_wait_with_its_payload_and_a_missing_one_times_out_into_on_failure() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: signalled\nsteps:\n  - {id: approve, kind: wait, with: {signal: go, timeout: 1h}}\n  - {id: use, kind: echo, needs: [approve], with: {got: '{{ steps.approve.output.n }}'}}\n",
    );
    let out = env.run(&["run", path_str(&wf), "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let server = env.serve(&[]);
    wait_for("the wait to begin", LONG, || env.only_run().status == "WAITING");
    let out = env.run(&["runs", "signal", &id, "go", "--data", "{\"n\": 7}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the run to finish", LONG, || env.only_run().status == "COMPLETED");
    let output = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::AttemptStarted { step, input, .. } if step.as_str() == "use" => Some(input),
        _ => None,
    });
    let input = output.expect("use ran");
    let store = env.store();
    let value = env.block(cairn_store::Journal::payload(&store, &input.hash)).expect("payload");
    assert_eq!(value, Some(serde_json::json!({"got": 7})));
    drop(server);

    let wf = env.write(
        "late.yaml",
        "name: late\nsteps:\n  - {id: approve, kind: wait, with: {signal: go, timeout: 300ms}, on_failure: continue}\n  - {id: other, kind: echo}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("[step] approve=waiting for signal 'go' (until "), "{said}");
    assert!(said.contains("[step] other=ok ("), "{said}");
    assert!(said.contains("[step] approve=failed(timeout): no signal 'go' arrived within"), "{said}");
    let late = env.runs().into_iter().find(|r| r.workflow == "late").expect("late run");
    let step = env.step(&late.id, "approve");
    assert_eq!((step.status.as_str(), step.error_class.as_deref()), ("FAILED", Some("timeout")));
    assert_eq!(env.step(&late.id, "other").status, "COMPLETED");
}

#[test]
fn a_served_run_parked_on_a_wait_is_handed_back_and_woken_by_the_store_at_its_time() {
    let env = Env::new();
    let wf = env.write("wf.yaml", "name: parked\nsteps:\n  - {id: w, kind: wait, with: {duration: 2500ms}}\n");
    let server = env.serve(&[]);
    let out = env.run(&["run", path_str(&wf), "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    // Nothing runs and the wait is longer than the idle hand-back (1 s): the worker lets go and
    // the store holds the wake-up time.
    wait_for("the run to be handed back", LONG, || {
        let run = env.only_run();
        run.owner.is_none() && run.wake_at_ms.is_some()
    });
    assert_eq!(env.only_run().status, "WAITING");
    let shown = stdout(&env.run(&["runs", "show", &id, "--step", "w"]));
    assert!(
        shown.contains("wait\n  ") && shown.contains(" began, until ") && shown.contains("still waiting"),
        "{shown}"
    );
    // A durable wait is not a gate: no decision ends it early.
    let out = env.run(&["approve", &id, "w"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("in a durable wait"), "{}", stderr(&out));
    wait_for("the store to wake the run", LONG, || env.only_run().status == "COMPLETED");
    assert_eq!(env.step(&id, "w").attempts, 0);
    drop(server);
    env.assert_journal_is_sound(&id);
}
