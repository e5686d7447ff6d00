//! `subworkflow`: the child run is a decided, deterministic id; its end is the attempt's end.

use super::tests::{Harness, status};
use super::*;
use crate::ids::RunId;
use serde_json::json;

const PARENT: &str = "\
name: t
steps:
  - id: onboard
    kind: subworkflow
    retry: {max_attempts: 2, initial_delay: 1s, jitter: 0}
    with: {workflow: onboarding, inputs: {vendor: acme}}
  - {id: after, kind: echo, needs: [onboard], with: {got: \"{{ steps.onboard.output.id }}\"}}
";

fn children(cmds: &[Command]) -> Vec<(RunId, u32, Value)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::StartChild { child, attempt, input, .. } => Some((child.clone(), *attempt, input.clone())),
            _ => None,
        })
        .collect()
}

fn ended(h: &mut Harness, child: &RunId, attempt: u32, output: Option<Value>) -> Vec<Command> {
    let output = output.map(|v| {
        let p = Payload::of(&v);
        h.state.add_payload(&p, v);
        p.reference
    });
    let failure = output.is_none().then(|| Failure::new(ErrorClass::Transient, "child failed: no vendor"));
    let step = StepId::new("onboard");
    h.feed(Event::ChildEnded { step, attempt, child: child.to_string(), output, failure })
}

#[test]
fn a_subworkflow_starts_a_child_with_a_derived_id_and_completes_with_its_output() {
    let (mut h, cmds) = Harness::new(PARENT);
    let started = children(&cmds);
    assert_eq!(started.len(), 1, "{cmds:?}");
    let (child, attempt, input) = started[0].clone();
    assert_eq!((attempt, input), (1, json!({"workflow": "onboarding", "inputs": {"vendor": "acme"}})));
    assert_eq!(status(&h, "onboard"), Some(StepStatus::Waiting));
    assert!(!h.state.step_state("onboard").is_some_and(|s| s.awaits_decision()), "a person does not decide it");
    // The same run, step and attempt give the same child after a restart.
    let again = children(&resume_commands(&mut h.state.clone()).expect("resume"));
    assert_eq!(again.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), vec![child.clone()]);
    let cmds = ended(&mut h, &child, 1, Some(json!({"id": 42})));
    assert_eq!(super::tests::started(&cmds), vec![("after".to_string(), json!({"got": 42}))]);
    assert_eq!(status(&h, "onboard"), Some(StepStatus::Completed));
    assert_eq!(h.state.step_state("onboard").map(|s| s.attempts), Some(1));
}

#[test]
fn a_failed_child_is_a_failed_attempt_and_the_retry_starts_a_new_child() {
    let (mut h, cmds) = Harness::new(PARENT);
    let (first, ..) = children(&cmds)[0].clone();
    ended(&mut h, &first, 1, None);
    assert_eq!(status(&h, "onboard"), Some(StepStatus::RetryWait));
    let cmds = h.feed(Event::TimerFired { step: StepId::new("onboard") });
    let (second, attempt, _) = children(&cmds)[0].clone();
    assert_eq!(attempt, 2);
    assert_ne!(second, first, "a new attempt is a new child");
    // The first child's late report is refused: the step waits for the second.
    let stale = Event::ChildEnded {
        step: StepId::new("onboard"),
        attempt: 2,
        child: first.to_string(),
        output: None,
        failure: Some(Failure::new(ErrorClass::Permanent, "late")),
    };
    let env = Envelope { seq: h.state.last_seq + 1, at_ms: 1_000, schema: JOURNAL_SCHEMA, event: stale };
    assert!(decide(&mut h.state.clone(), &env).is_err(), "a child that is not the step's current one");
    ended(&mut h, &second, 2, None);
    assert_eq!(h.state.status, RunStatus::Failed);
    let why = h.state.failure.clone().expect("failure").message;
    assert!(why.contains("child failed: no vendor"), "{why}");
    let payloads = h.state.payloads.iter().map(|(k, v)| (k.clone(), v.clone()));
    replay(h.state.run_id.clone(), &h.journal, payloads).expect("replays");
}

#[test]
fn validation_refuses_what_does_not_apply_to_a_subworkflow() {
    let found = crate::validate::parse_definition(
        "name: t\nsteps:\n  - {id: a, kind: subworkflow, timeout: 1m, with: {workflow: x}}\n",
        "t.yaml",
        &crate::kinds::for_tests(),
    )
    .expect_err("refused");
    assert_eq!(found.iter().map(|p| (p.line, p.code)).collect::<Vec<_>>(), vec![(Some(3), "bad_subworkflow")]);
}

#[test]
fn an_escalated_subworkflow_waits_for_a_person_not_for_its_ended_child() {
    let escalating = PARENT.replace(
        "retry: {max_attempts: 2, initial_delay: 1s, jitter: 0}",
        "retry: {max_attempts: 1}\n    on_failure: escalate",
    );
    let (mut h, cmds) = Harness::new(&escalating);
    let (child, ..) = children(&cmds)[0].clone();
    ended(&mut h, &child, 1, None);
    let s = h.state.step_state("onboard").expect("step");
    assert!(s.awaits_decision() && !s.awaits_child(), "{s:?}");
    let again = Event::ChildEnded {
        step: StepId::new("onboard"),
        attempt: 1,
        child: child.to_string(),
        output: None,
        failure: Some(Failure::new(ErrorClass::Transient, "reported twice")),
    };
    let env = Envelope { seq: h.state.last_seq + 1, at_ms: 1_000, schema: JOURNAL_SCHEMA, event: again };
    assert!(decide(&mut h.state.clone(), &env).is_err(), "an ended child's end is not taken twice");
    let action = Some(crate::event::Escalation::Retry { fresh_budget: true, raise: None });
    let cmds = h.feed(Event::ApprovalDecided {
        step: StepId::new("onboard"),
        approved: true,
        by: None,
        comment: None,
        action,
        args: None,
    });
    let (second, attempt, _) = children(&cmds)[0].clone();
    assert_eq!(attempt, 2);
    assert_ne!(second, child);
}
