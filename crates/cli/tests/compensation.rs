//! Sagas: when a run fails (or is cancelled) after steps with a `compensate` block completed,
//! those steps are undone newest first, each at most once per success, surviving a crash in the
//! middle, and the run ends COMPENSATED — or FAILED naming the compensations that failed.

mod common;

use cairn_core::event::Event;
use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// Steps `a` then `b` with compensations built by `undo(step)`, then `c`, which fails for good.
fn saga(undo: impl Fn(&str) -> String, last: &str) -> String {
    format!(
        "name: saga\nsteps:\n  - id: a\n    kind: echo\n    with: {{booked: hotel}}\n    compensate: {}\n  - id: b\n    kind: echo\n    needs: [a]\n    with: {{booked: flight}}\n    compensate: {}\n{last}",
        undo("a"),
        undo("b")
    )
}

const FAILS: &str = "  - id: c\n    kind: noop\n    needs: [b]\n    inject: {fail_times: 10, fail_class: permanent}\n";

fn compensation_order(env: &Env, id: &str) -> Vec<String> {
    env.events(id)
        .iter()
        .filter_map(|e| match &e.event {
            Event::CompensationAttemptStarted { step, .. } => Some(step.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failure_undoes_the_completed_steps_newest_first_with_their_outputs() {
    let env = Env::new();
    let undo = |_: &str| "{kind: echo, with: {cancel: \"{{ output.booked }}\"}}".to_string();
    let wf = env.write("wf.yaml", &saga(undo, FAILS));
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("compensating"), "{err}");
    assert!(err.contains("ended COMPENSATED"), "{err}");
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPENSATED");
    assert_eq!(compensation_order(&env, &id), ["b", "a"]);
    assert_eq!(env.step(&id, "a").status, "COMPENSATED");
    assert_eq!(env.step(&id, "b").status, "COMPENSATED");
    assert_eq!(env.step(&id, "c").status, "FAILED");
    // The compensation saw the step's output.
    let store = env.store();
    let run_id = cairn_core::RunId::parse(&id).expect("run id");
    let loaded = env.block(cairn_store::Journal::load_run(&store, &run_id)).expect("load the run");
    let inputs: Vec<String> = loaded
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::CompensationAttemptStarted { input, .. } => {
                loaded.payloads.iter().find(|(h, _)| *h == input.hash).map(|(_, v)| v.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(inputs, [r#"{"cancel":"flight"}"#, r#"{"cancel":"hotel"}"#]);
    env.assert_journal_is_sound(&id);
    // COMPENSATED is final: nothing is left for a worker or `resume` to take.
    let out = env.run(&["resume", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already finished (COMPENSATED); nothing to resume"), "{}", stderr(&out));
    assert_eq!(compensation_order(&env, &id), ["b", "a"], "nothing ran again");
}

#[test]
fn a_failing_compensation_is_retried_then_the_run_fails_naming_it() {
    let env = Env::new();
    // Nothing listens on port 1: every call is refused.
    let undo = |s: &str| {
        if s == "a" {
            "{kind: http, with: {url: \"http://127.0.0.1:1/undo\"}, retry: {max_attempts: 2, initial_delay: 10ms}}"
                .to_string()
        } else {
            "{kind: echo, with: {undo: b}}".to_string()
        }
    };
    let wf = env.write("wf.yaml", &saga(undo, FAILS));
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.only_run().id;
    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    let message = run.failure_message.unwrap_or_default();
    assert!(message.contains("compensation failed for a"), "{message}");
    assert!(message.contains("step 'c' failed"), "the original cause is kept: {message}");
    assert_eq!(compensation_order(&env, &id), ["b", "a", "a"], "a's compensation was retried once");
    assert_eq!(env.step(&id, "b").status, "COMPENSATED");
    env.assert_journal_is_sound(&id);
}

#[test]
fn cancelling_a_run_undoes_what_it_completed() {
    let env = Env::new();
    let undo = |s: &str| format!("{{kind: echo, with: {{undo: {s}}}}}");
    let gate = "  - {id: c, kind: approval, needs: [b]}\n";
    let wf = env.write("wf.yaml", &saga(undo, gate));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "blocked(manual approval)", LONG);
    let id = env.only_run().id;
    let out = env.run(&["runs", "cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_exit(&mut child, LONG);
    assert_eq!(status.code(), Some(1));
    assert_eq!(env.only_run().status, "COMPENSATED");
    assert_eq!(compensation_order(&env, &id), ["b", "a"]);
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_compensating_run_cannot_be_paused_or_cancelled_and_says_so() {
    let env = Env::new();
    let undo = |_: &str| "{kind: mock_model, with: {prompt: busy, latency: 1500ms}}".to_string();
    let wf = env.write("wf.yaml", &saga(undo, FAILS));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "[workflow] compensating", LONG);
    let id = env.only_run().id;
    // Another process asks while `cairn run` drives the undo: refused at once, not queued.
    for verb in ["pause", "cancel", "unpause"] {
        let out = env.run(&["runs", verb, &id]);
        assert_eq!(out.status.code(), Some(2), "{verb}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("is COMPENSATING") && err.contains("runs to its end"), "{verb}: {err}");
    }
    assert_eq!(wait_exit(&mut child, LONG).code(), Some(1));
    assert_eq!(env.only_run().status, "COMPENSATED");
    assert_eq!(compensation_order(&env, &id), ["b", "a"], "every undo ran once");
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_crash_mid_compensation_resumes_without_repeating_finished_or_logged_undos() {
    let env = Env::new();
    let (service, counts) = counting_server();
    let undo = move |s: &str| format!("{{kind: http, with: {{url: \"http://{service}/undo/{s}\"}}}}");
    let wf = env.write("wf.yaml", &saga(undo, FAILS));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "a.compensate")]);
    wait_line(&lines, "[debug] holding after activity a.compensate", LONG);
    sigkill(&mut child);
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPENSATING");
    assert_eq!(env.step(&id, "b").status, "COMPENSATED");
    assert_eq!(env.step(&id, "a").status, "COMPENSATING", "a's undo ran but was never recorded");

    let out = env.run(&["resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPENSATED");
    assert_eq!(compensation_order(&env, &id), ["b", "a", "a"], "a's compensation was attempted again");
    let seen = counts.lock().expect("counts").clone();
    for step in ["a", "b"] {
        let key = format!("{id}/{step}.compensate/call-1");
        assert_eq!(seen.get(&key), Some(&1), "the service saw undo {step} {:?} times: {seen:?}", seen.get(&key));
    }
    env.assert_journal_is_sound(&id);
}

#[test]
fn an_undo_whose_input_does_not_render_gives_up_and_the_others_still_run() {
    let env = Env::new();
    let undo = |s: &str| {
        let field = if s == "b" { "missing" } else { "booked" };
        format!("{{kind: echo, with: {{cancel: \"{{{{ output.{field} }}}}\"}}}}")
    };
    let wf = env.write("wf.yaml", &saga(undo, FAILS));
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.only_run().id;
    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    let message = run.failure_message.unwrap_or_default();
    assert!(message.contains("compensation failed for b (compensation input does not render"), "{message}");
    assert_eq!(compensation_order(&env, &id), ["a"], "b was never attempted; a was still undone");
    assert_eq!(env.step(&id, "b").status, "COMPLETED");
    assert_eq!(env.step(&id, "a").status, "COMPENSATED");
    env.assert_journal_is_sound(&id);
}
