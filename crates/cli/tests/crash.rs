//! Crash recovery with real kills: `cairn run` is SIGKILLed at chosen points, `cairn resume`
//! finishes the run, no completed step runs again, and the journal replays cleanly.

mod common;

use cairn_core::Event;
use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn kill_mid_activity_then_resume_reruns_only_the_interrupted_step() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: crash-mid\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: slow, kind: mock_model, needs: [a], with: {prompt: busy, latency: 1500ms}}\n  - {id: c, kind: echo, needs: [slow], with: {y: 2}}\n",
    );
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("step slow to be RUNNING", LONG, || {
        env.runs()
            .first()
            .is_some_and(|r| env.steps(&r.id).iter().any(|s| s.step_id == "slow" && s.status == "RUNNING"))
    });
    sigkill(&mut child);
    let run = env.only_run();
    assert_eq!(run.status, "EXECUTING");
    assert_eq!(env.step(&run.id, "a").status, "COMPLETED");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED", "{}", stderr(&out));
    assert_eq!(env.started(&run.id, "a"), 1, "a completed before the kill and must not run again");
    assert_eq!(env.started(&run.id, "slow"), 2, "the interrupted attempt is retried once");
    assert_eq!(env.started(&run.id, "c"), 1);
    let interrupted = env.events(&run.id).into_iter().any(|e| {
        matches!(&e.event, Event::AttemptFailed { step, failure, .. }
            if step.as_str() == "slow" && failure.message.contains("interrupted"))
    });
    assert!(interrupted, "the lost attempt is recorded as interrupted");
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn kill_during_backoff_then_resume_retries_on_time() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: crash-backoff\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - id: flaky\n    kind: noop\n    needs: [a]\n    inject: {fail_times: 1}\n    retry: {initial_delay: 1500ms, jitter: 0}\n",
    );
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("step flaky to wait for its retry", LONG, || {
        env.runs()
            .first()
            .is_some_and(|r| env.steps(&r.id).iter().any(|s| s.step_id == "flaky" && s.status == "RETRY_WAIT"))
    });
    sigkill(&mut child);
    let run = env.only_run();
    let not_before = env.step(&run.id, "flaky").not_before_ms.expect("a persisted retry timer");

    let out = env.run(&["resume", &run.id]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    let events = env.events(&run.id);
    let second_start = events
        .iter()
        .find(|e| matches!(&e.event, Event::AttemptStarted { step, attempt: 2, .. } if step.as_str() == "flaky"))
        .expect("attempt 2 started");
    assert!(second_start.at_ms >= not_before, "retried at {} before its timer {not_before}", second_start.at_ms);
    assert_eq!(env.started(&run.id, "a"), 1);
    assert_eq!(env.started(&run.id, "flaky"), 2, "backoff was not an attempt: no extra retry is spent");
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn kill_after_activity_returned_before_commit_then_resume() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: crash-after\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: b, kind: echo, needs: [a], with: {y: 2}}\n  - {id: c, kind: echo, needs: [b], with: {z: 3}}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "b")]);
    wait_line(&lines, "[debug] holding after activity b", LONG);
    sigkill(&mut child);
    let run = env.only_run();
    assert_eq!(env.step(&run.id, "b").status, "RUNNING", "b's result was never committed");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(env.started(&run.id, "a"), 1);
    assert_eq!(env.started(&run.id, "b"), 2, "at-least-once: the activity ran again after the crash");
    assert_eq!(env.started(&run.id, "c"), 1);
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn repeated_kills_at_varying_points_still_finish_exactly_once_per_completed_step() {
    let env = Env::new();
    let mut yaml = String::from("name: crash-loop\nsteps:\n");
    for i in 0..6 {
        let needs = if i == 0 { String::new() } else { format!(", needs: [s{}]", i - 1) };
        yaml.push_str(&format!("  - {{id: s{i}, kind: mock_model, with: {{prompt: busy, latency: 150ms}}{needs}}}\n"));
    }
    let wf = env.write("wf.yaml", &yaml);
    let (mut child, _l) = env.spawn(&["run", path_str(&wf)], &[]);
    let mut completed_before = Vec::new();
    for (round, pause) in [120u64, 260, 90].into_iter().enumerate() {
        wait_for("the run to exist", LONG, || !env.runs().is_empty());
        std::thread::sleep(Duration::from_millis(pause));
        sigkill(&mut child);
        let run = env.only_run();
        let done: Vec<String> =
            env.steps(&run.id).into_iter().filter(|s| s.status == "COMPLETED").map(|s| s.step_id).collect();
        completed_before.push(done);
        if round < 2 {
            let (c, _l) = env.spawn(&["resume"], &[]);
            child = c;
        }
    }
    let out = env.run(&["resume"]);
    let run = env.only_run();
    assert!(out.status.success() || run.status == "COMPLETED", "resume failed: {}", stderr(&out));
    assert_eq!(run.status, "COMPLETED");
    for i in 0..6 {
        let step = format!("s{i}");
        let succeeded = env
            .events(&run.id)
            .iter()
            .filter(|e| matches!(&e.event, Event::AttemptSucceeded { step: s, .. } if s.as_str() == step))
            .count();
        assert_eq!(succeeded, 1, "step {step} completed more than once");
    }
    // Whatever was completed at a kill stayed completed with its single attempt.
    for done in completed_before.iter().flatten() {
        assert_eq!(env.step(&run.id, done).status, "COMPLETED");
    }
    env.assert_journal_is_sound(&run.id);
}

/// The crash the effect log exists for: the external write returned, then the process died
/// before the result was committed. The resumed run takes the logged result instead of calling
/// again, so the service sees the write exactly once (not merely deduplicated).
#[test]
fn crash_after_an_external_write_returned_does_not_repeat_it() {
    let env = Env::new();
    let (service, counts) = counting_server();
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: pay\nsteps:\n  - {{id: a, kind: echo, with: {{x: 1}}}}\n  - {{id: pay, kind: http, needs: [a], with: {{url: \"http://{service}/charge\", body: {{amount: 5}}}}}}\n  - {{id: c, kind: echo, needs: [pay], with: {{paid: \"{{{{ steps.pay.output.ok }}}}\"}}}}\n"
        ),
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "pay")]);
    wait_line(&lines, "[debug] holding after activity pay", LONG);
    sigkill(&mut child);
    let run = env.only_run();
    assert_eq!(env.step(&run.id, "pay").status, "RUNNING", "the result was never committed");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    let key = format!("{}/pay/call-1", run.id);
    let seen = counts.lock().expect("counts").clone();
    assert_eq!(seen.get(&key), Some(&1), "the service saw the write {:?} times: {seen:?}", seen.get(&key));
    assert_eq!(env.started(&run.id, "pay"), 2, "the step ran twice; its effect once");
    let logs = env.run(&["runs", "logs", &run.id, "--step", "pay"]);
    assert!(stdout(&logs).contains("the effect was not repeated"), "{}", stdout(&logs));
    env.assert_journal_is_sound(&run.id);
}
