use super::*;
use crate::event::{ErrorClass, Failure};
use crate::event::{RunOptions, RunSource};
use crate::ids::{RunId, StepId};
use crate::payload::Payload;
use serde_json::json;

pub(super) struct Harness {
    pub(super) state: RunState,
    /// Every event fed and decided, in order.
    pub(super) journal: Vec<Envelope>,
}

impl Harness {
    pub(super) fn new(yaml: &str) -> (Harness, Vec<Command>) {
        Harness::with(
            crate::validate::parse_definition(yaml, "t.yaml", &crate::kinds::for_tests()).expect("valid definition"),
        )
    }

    /// A run of a definition as given, even one validation would refuse (stored before a
    /// check existed, or built by hand).
    fn with(def: crate::definition::Definition) -> (Harness, Vec<Command>) {
        let mut h = Harness { state: RunState::new(RunId::from_parts(1, 1)), journal: Vec::new() };
        let created = Event::RunCreated {
            workflow: def.name.clone(),
            source: RunSource::Definition { path: None },
            inputs: json!({}),
            options: RunOptions::default(),
        };
        h.feed(created);
        let value = serde_json::to_value(&def).expect("json");
        let payload = Payload::of(&value);
        h.state.add_payload(&payload, value);
        let cmds = h.feed(Event::PlanRecorded { definition: payload.reference, plan: None, reused: Vec::new() });
        (h, cmds)
    }

    pub(super) fn feed(&mut self, event: Event) -> Vec<Command> {
        let env = Envelope { seq: self.state.last_seq + 1, at_ms: 1_000, schema: JOURNAL_SCHEMA, event };
        self.journal.push(env.clone());
        let cmds = decide(&mut self.state, &env).expect("legal event");
        self.journal.extend(cmds.iter().filter_map(|c| match c {
            Command::Record(e) => Some(e.clone()),
            _ => None,
        }));
        cmds
    }

    pub(super) fn succeed(&mut self, step: &str, output: Value) -> Vec<Command> {
        let step = StepId::new(step);
        let attempt = self.state.step_state(step.as_str()).map_or(0, |s| s.attempts) + 1;
        let input = Payload::of(&Value::Null);
        self.state.add_payload(&input, Value::Null);
        self.feed(Event::AttemptStarted { step: step.clone(), attempt, input: input.reference });
        let out = Payload::of(&output);
        self.state.add_payload(&out, output);
        self.feed(Event::AttemptSucceeded { step, attempt, output: out.reference, duration_ms: 1 })
    }
}

pub(super) fn started(cmds: &[Command]) -> Vec<(String, Value)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::StartAttempt { step, input, .. } => Some((step.to_string(), input.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn independent_steps_start_together_and_a_step_starts_when_its_needs_settle() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a, b], with: {x: '{{ steps.a.output }}'}}\n";
    let (mut h, cmds) = Harness::new(yaml);
    let first: Vec<String> = started(&cmds).into_iter().map(|(s, _)| s).collect();
    assert_eq!(first, vec!["a", "b"]);
    assert!(started(&h.succeed("a", json!(7))).is_empty(), "c waits for b");
    assert_eq!(started(&h.succeed("b", json!(8))), vec![("c".to_string(), json!({"x": 7}))]);
}

#[test]
fn the_journaled_input_keeps_the_secret_reference_and_the_command_says_where_it_goes() {
    let yaml = "\
name: t
steps:
  - id: call
    kind: http
    with: {url: http://127.0.0.1:9/x, headers: {Authorization: \"Bearer {{ secrets.API_TOKEN }}\"}}
    compensate: {kind: http, with: {url: http://127.0.0.1:9/undo, body: {k: \"{{ secrets.UNDO_KEY }}\"}}}
  - {id: boom, kind: fail, needs: [call]}
";
    let (mut h, cmds) = Harness::new(yaml);
    let Some(Command::StartAttempt { input, secrets, .. }) =
        cmds.iter().find(|c| matches!(c, Command::StartAttempt { .. }))
    else {
        panic!("no attempt: {cmds:#?}")
    };
    assert_eq!(input["headers"]["Authorization"], json!("Bearer {{ secrets.API_TOKEN }}"));
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].pointer, "/headers/Authorization");
    assert_eq!(secrets[0].names().collect::<Vec<_>>(), vec!["API_TOKEN"]);
    h.succeed("call", json!({"id": 1}));
    let input = Payload::of(&Value::Null);
    h.state.add_payload(&input, Value::Null);
    h.feed(Event::AttemptStarted { step: StepId::new("boom"), attempt: 1, input: input.reference });
    let failure = Failure::new(ErrorClass::Permanent, "no");
    let cmds = h.feed(Event::AttemptFailed { step: StepId::new("boom"), attempt: 1, failure, duration_ms: 1 });
    let Some(Command::StartCompensation { input, secrets, .. }) =
        cmds.iter().find(|c| matches!(c, Command::StartCompensation { .. }))
    else {
        panic!("no compensation: {cmds:#?}")
    };
    assert_eq!(input["body"]["k"], json!("{{ secrets.UNDO_KEY }}"));
    assert_eq!(secrets[0].pointer, "/body/k");
}

#[test]
fn a_step_sees_only_the_steps_it_needs() {
    // c needs a only; b (done before c is decided) is invisible to it, so the input is the
    // same whenever c is decided or re-decided after a restart. Validation refuses such a
    // template; a definition that bypassed it (stored earlier) fails at run time.
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a], with: {x: '{{ steps.b.status }}'}}\n";
    let refused = crate::validate::parse_definition(yaml, "t.yaml", &crate::kinds::for_tests())
        .expect_err("refused by validation");
    assert_eq!(refused.iter().map(|p| p.code).collect::<Vec<_>>(), ["step_not_needed"]);
    let valid = yaml.replace("steps.b.status", "steps.a.status");
    let mut def =
        crate::validate::parse_definition(&valid, "t.yaml", &crate::kinds::for_tests()).expect("valid definition");
    def.steps[2].with = json!({"x": "{{ steps.b.status }}"});
    let (mut h, _) = Harness::with(def);
    h.succeed("b", json!(1));
    let cmds = h.succeed("a", json!(2));
    assert!(started(&cmds).is_empty());
    let failed = cmds.iter().any(|c| {
        matches!(c, Command::Record(Envelope { event: Event::StepFailed { step, failure }, .. })
            if step.as_str() == "c" && failure.class == ErrorClass::Permanent && failure.message.contains("steps.b"))
    });
    assert!(failed, "{cmds:#?}");
    assert_eq!(h.state.status, RunStatus::Failed);
}

#[test]
fn paused_runs_start_nothing_until_unpaused() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo, needs: [a]}\n";
    let (mut h, _) = Harness::new(yaml);
    h.feed(Event::RunPaused { by: Some("op".into()) });
    let cmds = h.succeed("a", json!(1));
    assert!(started(&cmds).is_empty(), "nothing starts while paused: {cmds:#?}");
    assert_eq!(h.state.step_state("b").map(|s| s.status), Some(StepStatus::Ready));
    assert_eq!(h.state.status, RunStatus::Paused);
    let cmds = h.feed(Event::RunUnpaused { by: None });
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(h.state.status, RunStatus::Executing);
}

#[test]
fn a_failed_run_retried_in_place_reruns_what_did_not_succeed_with_a_fresh_budget() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo, needs: [a], retry: {max_attempts: 2, jitter: 0}}\n  - {id: c, kind: echo, needs: [b]}\n";
    let (mut h, _) = Harness::new(yaml);
    h.succeed("a", json!(1));
    let fail = |h: &mut Harness, attempt: u32| {
        let input = Payload::of(&Value::Null);
        let step = StepId::new("b");
        h.feed(Event::AttemptStarted { step: step.clone(), attempt, input: input.reference });
        let failure = Failure::new(ErrorClass::Transient, "down");
        h.feed(Event::AttemptFailed { step, attempt, failure, duration_ms: 1 })
    };
    fail(&mut h, 1);
    h.feed(Event::TimerFired { step: StepId::new("b") });
    fail(&mut h, 2);
    assert_eq!(h.state.status, RunStatus::Failed);
    assert_eq!(h.state.step_state("c").map(|s| s.status), Some(StepStatus::Cancelled));

    let cmds = h.feed(Event::RunRetried { by: Some("ops".into()) });
    assert_eq!(h.state.status, RunStatus::Executing);
    assert_eq!(h.state.failure, None);
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["b"], "a keeps its output");
    let cmds = fail(&mut h, 3);
    let retried = cmds.iter().any(|c| {
        matches!(
            c,
            Command::Record(Envelope { event: Event::RetryScheduled { next_attempt: 4, max_attempts: 4, .. }, .. })
        )
    });
    assert!(retried, "the budget of 2 starts again after the retry: {cmds:?}");
    h.feed(Event::TimerFired { step: StepId::new("b") });
    assert_eq!(h.state.step_state("c").map(|s| s.status), Some(StepStatus::Pending));
    let out = Payload::of(&json!(2));
    h.state.add_payload(&out, json!(2));
    let input = Payload::of(&Value::Null);
    h.feed(Event::AttemptStarted { step: StepId::new("b"), attempt: 4, input: input.reference });
    let cmds =
        h.feed(Event::AttemptSucceeded { step: StepId::new("b"), attempt: 4, output: out.reference, duration_ms: 1 });
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["c"]);
}

pub(super) fn fail_for_good(h: &mut Harness, step: &str, message: &str) -> Vec<Command> {
    let input = Payload::of(&Value::Null);
    let step = StepId::new(step);
    let attempt = h.state.step_state(step.as_str()).map_or(0, |s| s.attempts) + 1;
    h.feed(Event::AttemptStarted { step: step.clone(), attempt, input: input.reference });
    let failure = Failure::new(ErrorClass::Permanent, message);
    h.feed(Event::AttemptFailed { step, attempt, failure, duration_ms: 1 })
}

pub(super) fn status(h: &Harness, step: &str) -> Option<StepStatus> {
    h.state.step_state(step).map(|s| s.status)
}

const FALLBACK: &str = "name: t\nsteps:\n  - {id: fetch, kind: echo, on_failure: {fallback: cached}}\n  - {id: cached, kind: echo, with: {why: '{{ steps.fetch.error.message }}'}}\n  - {id: report, kind: echo, needs: [fetch], with: {data: '{{ steps.fetch.output }}', via: '{{ steps.fetch.fallback }}', status: '{{ steps.fetch.status }}'}}\n";

#[test]
fn a_fallback_runs_when_its_step_fails_and_dependents_see_its_output_in_that_steps_place() {
    let (mut h, cmds) = Harness::new(FALLBACK);
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["fetch"], "the fallback waits");
    let cmds = fail_for_good(&mut h, "fetch", "upstream said 500");
    assert_eq!(
        started(&cmds),
        vec![("cached".to_string(), json!({"why": "upstream said 500 (falls back to 'cached')"}))]
    );
    assert_eq!(h.state.status, RunStatus::Executing, "the failure does not fail the run");
    assert_eq!(status(&h, "report"), Some(StepStatus::Pending), "report waits for the fallback");
    let cmds = h.succeed("cached", json!("stale"));
    assert_eq!(
        started(&cmds),
        vec![("report".to_string(), json!({"data": "stale", "via": "cached", "status": "COMPLETED"}))]
    );
    h.succeed("report", json!("ok"));
    assert_eq!(h.state.status, RunStatus::Completed);
    let out = h.state.output.clone().and_then(|r| h.state.payload(&r).map(|v| Value::clone(v)));
    assert_eq!(out, Some(json!({"fetch": "stale", "cached": "stale", "report": "ok"})));
}

#[test]
fn a_fallback_is_skipped_when_its_step_succeeds() {
    let (mut h, _) = Harness::new(FALLBACK);
    let cmds = h.succeed("fetch", json!("fresh"));
    assert_eq!(
        started(&cmds),
        vec![("report".to_string(), json!({"data": "fresh", "via": null, "status": "COMPLETED"}))]
    );
    assert_eq!(status(&h, "cached"), Some(StepStatus::Skipped));
    let reason = cmds.iter().find_map(|c| match c {
        Command::Record(Envelope { event: Event::StepSkipped { step, reason }, .. }) if step.as_str() == "cached" => {
            Some(reason.clone())
        }
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("fallback not needed: step 'fetch' is completed"));
    h.succeed("report", json!("ok"));
    assert_eq!(h.state.status, RunStatus::Completed, "a skipped fallback is no failure");
}

#[test]
fn a_failing_fallback_fails_the_run_naming_it() {
    let (mut h, _) = Harness::new(FALLBACK);
    fail_for_good(&mut h, "fetch", "down");
    fail_for_good(&mut h, "cached", "cache empty");
    assert_eq!(h.state.status, RunStatus::Failed);
    assert_eq!(h.state.failed_step.as_ref().map(|s| s.as_str()), Some("cached"));
    assert_eq!(status(&h, "report"), Some(StepStatus::Cancelled));
}

#[test]
fn fallbacks_chain_and_a_continuing_fallback_skips_the_dependents_with_the_reason() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, on_failure: {fallback: b}}\n  - {id: b, kind: echo, on_failure: {fallback: c}}\n  - {id: c, kind: echo, on_failure: continue}\n  - {id: d, kind: echo, needs: [a], with: {x: '{{ steps.a.output }}'}}\n  - {id: e, kind: echo}\n";
    let (mut h, _) = Harness::new(yaml);
    fail_for_good(&mut h, "a", "1");
    let cmds = fail_for_good(&mut h, "b", "2");
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["c"]);
    let cmds = fail_for_good(&mut h, "c", "3");
    let reason = cmds.iter().find_map(|c| match c {
        Command::Record(Envelope { event: Event::StepSkipped { step, reason }, .. }) if step.as_str() == "d" => {
            Some(reason.clone())
        }
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("dependency 'a' is failed (its fallback 'c' is failed)"));
    h.succeed("e", json!(1));
    assert_eq!(h.state.status, RunStatus::Failed, "nothing stood in for a");

    // The same chain where the last fallback works: d gets c's output for a.
    let (mut h, _) = Harness::new(yaml);
    fail_for_good(&mut h, "a", "1");
    fail_for_good(&mut h, "b", "2");
    let cmds = h.succeed("c", json!("third"));
    assert_eq!(started(&cmds), vec![("d".to_string(), json!({"x": "third"}))]);
    h.succeed("d", json!(1));
    h.succeed("e", json!(1));
    assert_eq!(h.state.status, RunStatus::Completed, "{:?}", h.state.failure);
}

#[test]
fn a_run_retried_in_place_keeps_a_step_its_fallback_covered() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, on_failure: {fallback: b}}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a]}\n";
    let (mut h, _) = Harness::new(yaml);
    fail_for_good(&mut h, "a", "down");
    h.succeed("b", json!("spare"));
    fail_for_good(&mut h, "c", "bug");
    assert_eq!(h.state.status, RunStatus::Failed);
    let cmds = h.feed(Event::RunRetried { by: None });
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["c"]);
    assert_eq!((status(&h, "a"), status(&h, "b")), (Some(StepStatus::Failed), Some(StepStatus::Completed)));
}

#[test]
fn an_escalation_retry_grants_a_fresh_budget_but_old_journals_keep_one_attempt_per_decision() {
    let old: crate::event::Escalation = serde_json::from_str(r#"{"do":"retry"}"#).expect("old decision");
    assert_eq!(old, crate::event::Escalation::Retry { fresh_budget: false, raise: None });
    let new = crate::event::Escalation::Retry { fresh_budget: true, raise: None };
    assert_eq!(serde_json::to_string(&new).expect("json"), r#"{"do":"retry","fresh_budget":true}"#);

    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, on_failure: escalate, retry: {max_attempts: 2, jitter: 0}}\n";
    let escalated = |cmds: &[Command]| {
        cmds.iter().any(|c| {
            matches!(c, Command::Record(Envelope { event: Event::ApprovalRequested { escalation: true, .. }, .. }))
        })
    };
    for (action, retried) in [(old, false), (new, true)] {
        let (mut h, _) = Harness::new(yaml);
        let attempt = |h: &mut Harness, n: u32| {
            let input = Payload::of(&Value::Null);
            h.feed(Event::AttemptStarted { step: StepId::new("a"), attempt: n, input: input.reference });
            let failure = Failure::new(ErrorClass::Transient, "down");
            h.feed(Event::AttemptFailed { step: StepId::new("a"), attempt: n, failure, duration_ms: 1 })
        };
        attempt(&mut h, 1);
        h.feed(Event::TimerFired { step: StepId::new("a") });
        assert!(escalated(&attempt(&mut h, 2)));
        h.feed(Event::ApprovalDecided {
            step: StepId::new("a"),
            approved: true,
            by: None,
            comment: None,
            action: Some(action.clone()),
            args: None,
        });
        let cmds = attempt(&mut h, 3);
        assert_eq!(escalated(&cmds), !retried, "{action:?}: {cmds:#?}");
        let scheduled = cmds.iter().any(|c| {
            matches!(
                c,
                Command::Record(Envelope { event: Event::RetryScheduled { next_attempt: 4, max_attempts: 4, .. }, .. })
            )
        });
        assert_eq!(scheduled, retried, "{action:?}: {cmds:#?}");
    }
}

#[test]
fn a_duplicated_or_late_attempt_result_is_refused_and_changes_nothing() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, retry: {max_attempts: 3, jitter: 0}}\n  - {id: b, kind: echo, needs: [a]}\n";
    let (mut h, _) = Harness::new(yaml);
    let a = StepId::new("a");
    let input = Payload::of(&Value::Null);
    h.state.add_payload(&input, Value::Null);
    // Attempt 1 is lost (its worker died); attempt 2 runs after the timer.
    h.feed(Event::AttemptStarted { step: a.clone(), attempt: 1, input: input.reference.clone() });
    let lost = Failure::new(ErrorClass::Transient, "interrupted: worker gone");
    h.feed(Event::AttemptFailed { step: a.clone(), attempt: 1, failure: lost, duration_ms: 1 });
    h.feed(Event::TimerFired { step: a.clone() });
    h.feed(Event::AttemptStarted { step: a.clone(), attempt: 2, input: input.reference });
    let out = Payload::of(&json!("late"));
    h.state.add_payload(&out, json!("late"));
    let at = |seq| Envelope {
        seq,
        at_ms: 1_000,
        schema: JOURNAL_SCHEMA,
        event: Event::AttemptSucceeded { step: a.clone(), attempt: 1, output: out.reference.clone(), duration_ms: 1 },
    };
    // The lost attempt's result arrives late: refused, nothing changes.
    let before = h.state.clone();
    let late = decide(&mut h.state, &at(before.last_seq + 1));
    assert!(matches!(late, Err(Error::Attempt { got: 1, current: 2, .. })), "{late:?}");
    assert_eq!(h.state, before);
    // Attempt 2's result, delivered twice: the first counts, the duplicate is refused.
    let done = Event::AttemptSucceeded { step: a.clone(), attempt: 2, output: out.reference.clone(), duration_ms: 1 };
    h.feed(done.clone());
    let before = h.state.clone();
    let again =
        decide(&mut h.state, &Envelope { seq: before.last_seq + 1, at_ms: 1_000, schema: JOURNAL_SCHEMA, event: done });
    assert!(again.is_err(), "a duplicate result must be refused");
    assert_eq!(h.state, before, "a refused event changes nothing");
    assert_eq!(h.state.step_state("b").map(|s| s.status), Some(StepStatus::Ready), "b started once");
}

#[test]
fn a_fallback_may_list_its_step_in_needs_and_a_dependent_that_tolerates_skips_still_sees_the_failure() {
    // `cached` names `fetch` in needs too (the natural "after fetch"): it runs, not waits on
    // itself. `audit` (none_failed) is skipped when fetch failed and nothing stood in for it.
    let yaml = "name: t\ninputs: {use_cache: {}}\nsteps:\n  - {id: fetch, kind: echo, on_failure: {fallback: cached}}\n  - {id: cached, kind: echo, needs: [fetch], when: 'inputs.use_cache == true'}\n  - {id: audit, kind: echo, needs: [fetch], trigger: none_failed}\n";
    let (mut h, _) = Harness::new(yaml);
    h.state.inputs = json!({"use_cache": true});
    let cmds = fail_for_good(&mut h, "fetch", "down");
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["cached"]);
    let cmds = h.succeed("cached", json!(1));
    assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["audit"]);

    let (mut h, _) = Harness::new(yaml);
    h.state.inputs = json!({"use_cache": false});
    fail_for_good(&mut h, "fetch", "down");
    assert_eq!(status(&h, "cached"), Some(StepStatus::Skipped));
    assert_eq!(status(&h, "audit"), Some(StepStatus::Skipped));
    assert_eq!(
        h.state.step_state("audit").and_then(|s| s.skip_reason.clone()).as_deref(),
        Some("dependency 'fetch' failed (its fallback 'cached' is skipped)")
    );
    assert_eq!(h.state.status, RunStatus::Failed, "nothing stood in for fetch");
}

#[test]
fn a_fork_decides_a_fallback_afresh_after_the_step_it_stood_in_for() {
    let (mut h, _) = Harness::new(FALLBACK);
    fail_for_good(&mut h, "fetch", "down");
    h.succeed("cached", json!("stale"));
    fail_for_good(&mut h, "report", "bug");
    let reused = crate::fork::reusable(&h.state, "report").expect("fork");
    assert!(reused.is_empty(), "fetch failed, so neither it nor its stand-in is reused: {reused:?}");
}

#[test]
fn migration_refuses_to_make_a_step_that_already_ran_into_a_fallback() {
    let yaml = "name: t\nsteps:\n  - {id: p, kind: echo}\n  - {id: g, kind: echo}\n";
    let (mut h, _) = Harness::new(yaml);
    h.succeed("g", json!(1));
    let v2 = crate::validate::parse_definition(
        "name: t\nversion: 2\nsteps:\n  - {id: p, kind: echo, on_failure: {fallback: g}}\n  - {id: g, kind: echo}\n",
        "v2.yaml",
        &crate::kinds::for_tests(),
    )
    .expect("valid");
    let problem = crate::fork::migration_problem(&h.state, &v2);
    assert_eq!(
        problem.as_deref(),
        Some("step 'g' already started; version 2 changes which step it is the fallback of")
    );
    let v3 = crate::validate::parse_definition(
        "name: t\nversion: 3\nsteps:\n  - {id: p, kind: echo, on_failure: {fallback: h}}\n  - {id: g, kind: echo}\n  - {id: h, kind: echo}\n",
        "v3.yaml",
        &crate::kinds::for_tests(),
    )
    .expect("valid");
    assert_eq!(crate::fork::migration_problem(&h.state, &v3), None, "a new fallback for a running step is fine");
}

fn armed(cmds: &[Command]) -> Vec<crate::timer::Timer> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ArmTimer(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_retry_timer_is_armed_for_its_attempt_and_refused_once_that_attempt_moved_on() {
    use crate::timer::{TimerId, TimerPurpose};
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, retry: {max_attempts: 3, jitter: 0}}\n";
    let (mut h, _) = Harness::new(yaml);
    let a = StepId::new("a");
    let input = Payload::of(&Value::Null);
    h.feed(Event::AttemptStarted { step: a.clone(), attempt: 1, input: input.reference.clone() });
    let failure = Failure::new(ErrorClass::Transient, "down");
    let cmds = h.feed(Event::AttemptFailed { step: a.clone(), attempt: 1, failure, duration_ms: 1 });
    let timers = armed(&cmds);
    let retry = TimerId { step: a.clone(), purpose: TimerPurpose::Retry { attempt: 2 } };
    assert_eq!(timers.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), vec![retry.clone()]);
    assert_eq!(h.state.pending_timers(), timers, "what decide armed is what the state lists");
    // A timer for another attempt, or of another purpose, is not this run's.
    let at_ms = timers[0].at_ms;
    let timer = |purpose| crate::timer::Timer { id: TimerId { step: a.clone(), purpose }, at_ms };
    assert!(h.state.fire_timer(&timer(TimerPurpose::Retry { attempt: 3 })).is_err());
    assert!(h.state.fire_timer(&timer(TimerPurpose::ApprovalDeadline)).is_err());
    let early = crate::timer::Timer { at_ms: at_ms - 1, ..timers[0].clone() };
    assert!(h.state.fire_timer(&early).is_err(), "armed for another time");
    let event = h.state.fire_timer(&timers[0]).expect("the armed timer fires");
    assert_eq!(event, Event::TimerFired { step: a.clone() });
    h.feed(event);
    assert!(h.state.pending_timers().is_empty());
    // Fired once, the same timer is stale: a second report would start a second attempt.
    assert!(h.state.fire_timer(&timers[0]).is_err());
}

#[test]
fn an_escalated_approval_deadline_is_not_pending_again_so_a_restart_does_not_escalate_twice() {
    use crate::timer::TimerPurpose;
    let yaml =
        "name: t\nsteps:\n  - id: a\n    kind: echo\n    approval: {prompt: ok?, deadline: 1h, on_deadline: wait}\n";
    let (mut h, cmds) = Harness::new(yaml);
    let timers = armed(&cmds);
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].id.purpose, TimerPurpose::ApprovalDeadline);
    assert_eq!(timers[0].at_ms, 1_000 + 3_600_000);
    let event = h.state.fire_timer(&timers[0]).expect("pending");
    let cmds = h.feed(event);
    assert!(cmds.iter().any(|c| matches!(c, Command::Record(Envelope { event: Event::ApprovalEscalated { .. }, .. }))));
    assert_eq!(status(&h, "a"), Some(StepStatus::Waiting));
    assert!(h.state.pending_timers().is_empty(), "{:?}", h.state.pending_timers());
    assert!(armed(&resume_commands(&mut h.state).expect("resume")).is_empty());
}

#[test]
fn a_paused_run_has_no_pending_timers_and_unpausing_arms_them_again() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, retry: {max_attempts: 3, jitter: 0}}\n";
    let (mut h, _) = Harness::new(yaml);
    let a = StepId::new("a");
    let input = Payload::of(&Value::Null);
    h.feed(Event::AttemptStarted { step: a.clone(), attempt: 1, input: input.reference });
    let failure = Failure::new(ErrorClass::Transient, "down");
    let timers = armed(&h.feed(Event::AttemptFailed { step: a, attempt: 1, failure, duration_ms: 1 }));
    h.feed(Event::RunPaused { by: None });
    assert!(h.state.pending_timers().is_empty());
    assert!(h.state.fire_timer(&timers[0]).is_err(), "a paused run's timer does not fire");
    let cmds = h.feed(Event::RunUnpaused { by: None });
    assert_eq!(armed(&cmds), timers);
}

fn recorded(cmds: &[Command]) -> Vec<&Event> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Record(e) => Some(&e.event),
            _ => None,
        })
        .collect()
}

fn signal(h: &mut Harness, name: &str, value: Value) -> Vec<Command> {
    let payload = Payload::of(&value);
    h.state.add_payload(&payload, value);
    h.feed(Event::SignalReceived { name: name.into(), payload: payload.reference, by: None })
}

#[test]
fn a_timed_wait_starts_no_attempt_arms_one_timer_and_ends_when_it_fires() {
    use crate::timer::TimerPurpose;
    let yaml = "name: t\nsteps:\n  - {id: w, kind: wait, with: {duration: 2s}}\n  - {id: after, kind: echo, needs: [w], with: {x: '{{ steps.w.output.waited_ms }}'}}\n";
    let (mut h, cmds) = Harness::new(yaml);
    assert!(started(&cmds).is_empty(), "a wait holds no attempt: {cmds:#?}");
    let timers = armed(&cmds);
    assert_eq!(timers.len(), 1);
    assert_eq!((timers[0].id.purpose, timers[0].at_ms), (TimerPurpose::Wait, 1_000 + 2_000));
    assert_eq!(h.state.pending_timers(), timers, "a restart arms the same timer");
    assert_eq!(status(&h, "w"), Some(StepStatus::Waiting));
    assert_eq!(h.state.status, RunStatus::Waiting);
    let fired = h.state.fire_timer(&timers[0]).expect("pending");
    let cmds = h.feed(fired);
    assert_eq!(status(&h, "w"), Some(StepStatus::Completed));
    assert_eq!(started(&cmds), vec![("after".to_string(), json!({"x": 0}))], "the test clock did not move");
    assert!(h.state.fire_timer(&timers[0]).is_err(), "a wait ends once");
}

#[test]
fn a_signal_wait_takes_signals_one_each_oldest_first_even_one_sent_before_it_began() {
    let yaml = "name: t\nsteps:\n  - {id: first, kind: wait, with: {signal: go}}\n  - {id: second, kind: wait, needs: [first], with: {signal: go}}\n";
    let (mut h, _) = Harness::new(yaml);
    assert!(h.state.pending_timers().is_empty(), "no timeout, no timer");
    let cmds = signal(&mut h, "other", json!(1));
    assert!(recorded(&cmds).is_empty(), "another name ends nothing");
    signal(&mut h, "go", json!({"n": 1}));
    // `second` began after both signals arrived... the second one is still there for it.
    signal(&mut h, "go", json!({"n": 2}));
    assert_eq!(status(&h, "first"), Some(StepStatus::Completed));
    assert_eq!(status(&h, "second"), Some(StepStatus::Completed));
    let out = |s: &str| h.state.output_of(h.state.step_index(s).expect("step")).map(|v| (**v).clone());
    assert_eq!((out("first"), out("second")), (Some(json!({"n": 1})), Some(json!({"n": 2}))));
    assert_eq!(h.state.status, RunStatus::Completed);
}

#[test]
fn a_signal_wait_that_times_out_fails_with_class_timeout_and_on_failure_applies() {
    let yaml = "name: t\nsteps:\n  - {id: w, kind: wait, with: {signal: go, timeout: 1h}, on_failure: continue}\n  - {id: other, kind: echo}\n";
    let (mut h, cmds) = Harness::new(yaml);
    let timers = armed(&cmds);
    assert_eq!(timers.len(), 1);
    h.succeed("other", json!(1));
    let fired = h.state.fire_timer(&timers[0]).expect("pending");
    h.feed(fired);
    let step = h.state.step_state("w").expect("w");
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(step.last_failure.as_ref().map(|f| f.class), Some(ErrorClass::Timeout));
    assert_eq!(h.state.status, RunStatus::Failed, "continue: the others finished, the run reports the failure");
    assert!(h.state.pending_timers().is_empty());
}

#[test]
fn a_wait_until_a_time_and_a_bad_wait_fail_or_wait_as_they_should() {
    use crate::timer::TimerPurpose;
    let yaml = "name: t\ninputs: {when: {}}\nsteps:\n  - {id: w, kind: wait, with: {until: '{{ inputs.when }}'}, on_failure: continue}\n";
    let mut def = crate::validate::parse_definition(yaml, "t.yaml", &crate::kinds::for_tests()).expect("valid");
    def.inputs.clear();
    let (h, cmds) = Harness::with(def.clone());
    // The template rendered nothing usable: the step fails with the reason, nothing waits.
    let step = h.state.step_state("w").expect("w");
    assert_eq!(step.status, StepStatus::Failed, "{cmds:#?}");
    assert!(armed(&cmds).is_empty());
    def.steps[0].with = json!({"until": "2027-01-01T00:00:00Z"});
    let (h, cmds) = Harness::with(def);
    assert_eq!(
        armed(&cmds).iter().map(|t| (t.id.purpose, t.at_ms)).collect::<Vec<_>>(),
        [(TimerPurpose::Wait, 1_798_761_600_000)]
    );
    assert_eq!(h.state.status, RunStatus::Waiting);
}

#[test]
fn validation_refuses_a_wait_without_exactly_one_of_duration_until_or_signal_at_its_place() {
    let kinds = crate::kinds::for_tests();
    for (with, needle) in [
        ("{}", "got none"),
        ("{duration: 1h, signal: go}", "got duration and signal"),
        ("{until: tomorrow}", "not an RFC 3339 time"),
        ("{duration: 1h, timeout: 2h}", "signal` wait only"),
        ("{duration: soon}", "with.duration"),
    ] {
        let yaml = format!("name: t\nsteps:\n  - id: w\n    kind: wait\n    with: {with}\n");
        let problems = crate::validate::parse_definition(&yaml, "t.yaml", &kinds).expect_err(with);
        assert_eq!((problems[0].line, problems[0].code), (Some(5), "bad_wait"), "{with}: {problems:?}");
        assert!(problems[0].message.contains(needle), "{with}: {}", problems[0].message);
    }
    let problems = crate::validate::parse_definition("name: t\nsteps:\n  - {id: w, kind: wait}\n", "t.yaml", &kinds)
        .expect_err("none");
    assert_eq!((problems[0].line, problems[0].code), (Some(3), "bad_wait"), "{problems:?}");
    let ok = "name: t\ninputs: {d: {}}\nsteps:\n  - {id: w, kind: wait, with: {duration: '{{ inputs.d }}'}}\n";
    assert!(crate::validate::parse_definition(ok, "t.yaml", &kinds).is_ok());
}

#[test]
fn a_paused_run_keeps_signals_for_its_waits_until_it_is_unpaused() {
    let yaml = "name: t\nsteps:\n  - {id: a, kind: wait, with: {signal: go}}\n  - {id: b, kind: wait, needs: [a], with: {signal: go}}\n";
    let (mut h, _) = Harness::new(yaml);
    h.feed(Event::RunPaused { by: None });
    assert!(recorded(&signal(&mut h, "go", json!(1))).is_empty(), "nothing moves while paused");
    signal(&mut h, "go", json!(2));
    assert_eq!(status(&h, "a"), Some(StepStatus::Waiting));
    let cmds = h.feed(Event::RunUnpaused { by: None });
    assert!(recorded(&cmds).iter().any(|e| matches!(e, Event::WaitEnded { .. })), "{cmds:#?}");
    assert_eq!((status(&h, "a"), status(&h, "b")), (Some(StepStatus::Completed), Some(StepStatus::Completed)));
    assert_eq!(h.state.status, RunStatus::Completed);
}

#[test]
fn a_decision_cannot_end_a_durable_wait() {
    let yaml = "name: t\nsteps:\n  - {id: w, kind: wait, with: {duration: 1h}}\n";
    let (mut h, _) = Harness::new(yaml);
    assert!(!h.state.step_state("w").expect("w").awaits_decision());
    let env = Envelope {
        seq: h.state.last_seq + 1,
        at_ms: 1_000,
        schema: JOURNAL_SCHEMA,
        event: Event::ApprovalDecided {
            step: StepId::new("w"),
            approved: true,
            by: None,
            comment: None,
            action: None,
            args: None,
        },
    };
    assert!(decide(&mut h.state, &env).is_err(), "refused by the state machine");
}

#[test]
fn an_approval_step_serializes_as_it_did_before_kinds_had_roles_and_a_wait_records_its_role() {
    let yaml =
        "name: t\nsteps:\n  - {id: ok, kind: approval}\n  - {id: w, kind: wait, with: {duration: 1s}, needs: [ok]}\n";
    let def = crate::validate::parse_definition(yaml, "t.yaml", &crate::kinds::for_tests()).expect("valid");
    let value = serde_json::to_value(&def).expect("json");
    assert!(value["steps"][0].get("role").is_none(), "{value}");
    assert_eq!(value["steps"][1]["role"], "wait");
    assert_eq!(def.steps[0].role(), crate::kinds::Role::Gate);
}

#[test]
fn validation_refuses_what_does_not_apply_to_a_wait() {
    let kinds = crate::kinds::for_tests();
    for (extra, needle) in [
        ("timeout: 5s", "no attempts to time out"),
        ("retry: {max_attempts: 2}", "`retry` and `inject` do not apply"),
        ("on_failure: escalate", "cannot escalate"),
    ] {
        let yaml = format!("name: t\nsteps:\n  - id: w\n    kind: wait\n    with: {{duration: 1s}}\n    {extra}\n");
        let problems = crate::validate::parse_definition(&yaml, "t.yaml", &kinds).expect_err(extra);
        assert!(problems.iter().any(|p| p.code == "bad_wait" && p.message.contains(needle)), "{extra}: {problems:?}");
    }
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, compensate: {kind: wait, with: {duration: 1s}}}\n";
    let problems = crate::validate::parse_definition(yaml, "t.yaml", &kinds).expect_err("compensate wait");
    assert!(problems[0].message.contains("compensate.kind cannot be `wait`"), "{problems:?}");
}

#[test]
fn a_call_that_needs_approval_parks_the_step_and_its_answer_reaches_the_next_attempt() {
    use crate::event::CallApproval;
    let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, retry: {max_attempts: 2, jitter: 0}}\n";
    let (mut h, _) = Harness::new(yaml);
    let a = StepId::new("a");
    let input = Payload::of(&Value::Null);
    h.state.add_payload(&input, Value::Null);
    let ask = |h: &mut Harness, attempt: u32| {
        h.feed(Event::AttemptStarted { step: a.clone(), attempt, input: input.reference.clone() });
        let call = CallApproval {
            call: 1,
            tool: "web".into(),
            args: json!({"url": "http://x/"}),
            effect: "write".into(),
            reason: "policy: always".into(),
        };
        let failure = Failure {
            approval: Some(Box::new(call)),
            ..Failure::new(ErrorClass::ApprovalRequired, "tool 'web' needs approval")
        };
        h.feed(Event::AttemptFailed { step: a.clone(), attempt, failure, duration_ms: 1 })
    };
    // The attempt stops before its call: the step waits for a person, with the call shown.
    let cmds = ask(&mut h, 1);
    let asked = cmds.iter().any(|c| {
        matches!(c, Command::Record(Envelope { event: Event::ApprovalRequested { call: Some(c), .. }, .. }) if c.tool == "web")
    });
    assert!(asked, "{cmds:#?}");
    assert_eq!(h.state.steps[0].status, StepStatus::Waiting);
    assert_eq!(h.state.status, RunStatus::Waiting);
    // A rejection does not fail the step: its next attempt gets the answer (and decides).
    let decided = |approved: bool, args: Option<Value>| Event::ApprovalDecided {
        step: a.clone(),
        approved,
        by: Some("ann".into()),
        comment: Some("too much".into()),
        action: None,
        args,
    };
    let cmds = h.feed(decided(false, None));
    assert_eq!(started(&cmds).len(), 1, "{cmds:#?}");
    assert_eq!(h.state.steps[0].call_decisions.len(), 1);
    assert!(!h.state.steps[0].call_decisions[0].approved);
    // Asked again (a new attempt, the same call), then approved with edited arguments: the
    // decision replaces the earlier one, and parked attempts do not use up the retry policy.
    ask(&mut h, 2);
    let cmds = h.feed(decided(true, Some(json!({"url": "http://y/"}))));
    assert_eq!(started(&cmds).len(), 1, "{cmds:#?}");
    let decisions = &h.state.steps[0].call_decisions;
    assert_eq!((decisions.len(), decisions[0].approved), (1, true));
    assert_eq!(decisions[0].args, Some(json!({"url": "http://y/"})));
    h.feed(Event::AttemptStarted { step: a.clone(), attempt: 3, input: input.reference.clone() });
    let failure = Failure::new(ErrorClass::Transient, "down");
    let cmds = h.feed(Event::AttemptFailed { step: a.clone(), attempt: 3, failure, duration_ms: 1 });
    let retried =
        cmds.iter().any(|c| matches!(c, Command::Record(Envelope { event: Event::RetryScheduled { .. }, .. })));
    assert!(retried, "a parked attempt is not a failed one: {cmds:#?}");
}

/// A run created from a prepared definition (serialised and read back once per process) is in
/// exactly the state its journal folds to; a definition prepared for another payload is not
/// taken for this one.
#[test]
fn a_prepared_definition_gives_the_state_the_journal_folds_to() {
    let def = crate::validate::parse_definition(
        "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo, needs: [a]}\n",
        "t.yaml",
        &crate::kinds::for_tests(),
    )
    .expect("valid definition");
    let other = crate::definition::PreparedDefinition::of(&crate::definition::Definition {
        name: "other".into(),
        ..def.clone()
    })
    .expect("prepared");
    let prepared = crate::definition::PreparedDefinition::of(&def).expect("prepared");
    for offered in [&prepared, &other] {
        let mut h = Harness { state: RunState::new(RunId::from_parts(1, 1)), journal: Vec::new() };
        h.feed(Event::RunCreated {
            workflow: def.name.clone(),
            source: RunSource::Definition { path: None },
            inputs: json!({}),
            options: RunOptions::default(),
        });
        h.state.add_definition(offered);
        let value = serde_json::to_value(&def).expect("json");
        h.state.add_payload(&Payload::of(&value), value);
        let cmds = h.feed(Event::PlanRecorded {
            definition: prepared.payload.reference.clone(),
            plan: None,
            reused: Vec::new(),
        });
        assert_eq!(started(&cmds).len(), 1);
        h.succeed("a", json!(1));
        assert_eq!(h.state.definition.as_deref().map(|d| d.name.as_str()), Some("t"));
        let payloads = h.state.payloads.iter().filter(|(hash, _)| **hash != other.payload.reference.hash);
        let folded = RunState::fold(
            h.state.run_id.clone(),
            &h.journal,
            payloads.map(|(hash, value)| (hash.clone(), value.clone())),
        )
        .expect("folds");
        let mut live = h.state.clone();
        live.payloads.remove(&other.payload.reference.hash);
        assert_eq!(live, folded);
    }
}
