//! `for_each` and `loop`: instances, their inputs, joining, failures, retry in place and replay.

use super::tests::{Harness, fail_for_good, started, status};
use super::*;
use serde_json::json;

fn names(cmds: &[Command]) -> Vec<String> {
    started(cmds).into_iter().map(|(s, _)| s).collect()
}

fn replays(h: &Harness) {
    let payloads = h.state.payloads.iter().map(|(k, v)| (k.clone(), v.clone()));
    let again = replay(h.state.run_id.clone(), &h.journal, payloads).expect("the journal replays");
    assert_eq!(again.steps, h.state.steps);
}

const FETCH: &str = "\
name: t
steps:
  - {id: search, kind: echo}
  - id: fetch
    kind: echo
    needs: [search]
    for_each: \"{{ steps.search.output.urls }}\"
    max_parallel: 2
    with: {url: \"{{ item }}\", n: \"{{ index }}\"}
  - {id: report, kind: echo, needs: [fetch], with: {all: \"{{ steps.fetch.output }}\"}}
";

#[test]
fn for_each_runs_an_instance_per_item_at_most_max_parallel_at_once_and_joins_their_outputs_in_order() {
    let (mut h, _) = Harness::new(FETCH);
    let cmds = h.succeed("search", json!({"urls": ["a", "b", "c"]}));
    assert_eq!(
        started(&cmds),
        vec![
            ("fetch[0]".to_string(), json!({"url": "a", "n": 0})),
            ("fetch[1]".to_string(), json!({"url": "b", "n": 1}))
        ]
    );
    assert_eq!(status(&h, "fetch"), Some(StepStatus::Waiting));
    assert!(!h.state.step_state("fetch").is_some_and(|s| s.awaits_decision()), "no person decides a for_each");
    assert_eq!(
        started(&h.succeed("fetch[1]", json!("B"))),
        vec![("fetch[2]".to_string(), json!({"url": "c", "n": 2}))]
    );
    assert!(names(&h.succeed("fetch[2]", json!("C"))).is_empty(), "fetch[0] still runs");
    let cmds = h.succeed("fetch[0]", json!("A"));
    assert_eq!(started(&cmds), vec![("report".to_string(), json!({"all": ["A", "B", "C"]}))]);
    assert_eq!(status(&h, "fetch"), Some(StepStatus::Completed));
    h.succeed("report", json!(null));
    assert_eq!(h.state.status, RunStatus::Completed);
    let output = h.state.output.clone().and_then(|r| h.state.payload(&r).cloned()).expect("output");
    assert_eq!(output["fetch"], json!(["A", "B", "C"]));
    assert!(output.get("fetch[0]").is_none(), "instances are not the run's output: {output}");
    replays(&h);
}

#[test]
fn for_each_over_something_else_than_a_list_or_too_long_a_list_fails_the_step_saying_why() {
    let (mut h, _) = Harness::new(FETCH);
    h.succeed("search", json!({"urls": "http://one"}));
    assert_eq!(status(&h, "fetch"), Some(StepStatus::Failed));
    assert_eq!(h.state.status, RunStatus::Failed);
    let why = h.state.failure.clone().expect("failure").message;
    assert!(why.contains("`for_each` must give a list, but it gave a string (\"http://one\")"), "{why}");

    let capped = FETCH.replace("max_parallel: 2", "max_items: 2");
    let (mut h, _) = Harness::new(&capped);
    h.succeed("search", json!({"urls": [1, 2, 3]}));
    let why = h.state.failure.clone().expect("failure").message;
    assert!(why.contains("gave 3 items, more than the step's `max_items` of 2"), "{why}");

    let (mut h, _) = Harness::new(FETCH);
    let cmds = h.succeed("search", json!({"urls": []}));
    assert_eq!(started(&cmds), vec![("report".to_string(), json!({"all": []}))], "no items: done at once");
}

#[test]
fn a_failed_item_fails_the_step_and_skips_what_has_not_started_unless_it_continues() {
    let (mut h, _) = Harness::new(FETCH);
    h.succeed("search", json!({"urls": ["a", "b", "c"]}));
    fail_for_good(&mut h, "fetch[1]", "404");
    assert_eq!(status(&h, "fetch"), Some(StepStatus::Failed));
    assert_eq!(h.state.status, RunStatus::Failed);
    let why = h.state.failure.clone().expect("failure").message;
    assert!(why.contains("item 1 ('fetch[1]') failed: 404"), "{why}");
    assert_eq!(status(&h, "fetch[2]"), Some(StepStatus::Skipped), "what had not started is skipped");

    let going_on = FETCH.replace("max_parallel: 2", "max_parallel: 2\n    on_failure: continue");
    let (mut h, _) = Harness::new(&going_on);
    h.succeed("search", json!({"urls": ["a", "b", "c"]}));
    let cmds = fail_for_good(&mut h, "fetch[1]", "404");
    assert_eq!(names(&cmds), vec!["fetch[2]"], "the next item takes the slot");
    h.succeed("fetch[0]", json!("A"));
    let cmds = h.succeed("fetch[2]", json!("C"));
    assert_eq!(started(&cmds), vec![("report".to_string(), json!({"all": ["A", null, "C"]}))]);
    h.succeed("report", json!(null));
    // As a failed step with `continue` does, the failed item fails the run once all else is done.
    assert_eq!(h.state.status, RunStatus::Failed);
    let why = h.state.failure.clone().expect("failure").message;
    assert!(why.contains("1 step(s) failed") && why.contains("first: 'fetch[1]': 404"), "{why}");
    replays(&h);
}

#[test]
fn a_run_retried_in_place_runs_again_only_the_items_that_did_not_complete() {
    let (mut h, _) = Harness::new(FETCH);
    h.succeed("search", json!({"urls": ["a", "b", "c"]}));
    h.succeed("fetch[0]", json!("A"));
    fail_for_good(&mut h, "fetch[1]", "404");
    assert_eq!(h.state.status, RunStatus::Failed);
    let cmds = h.feed(Event::RunRetried { by: None });
    assert_eq!(names(&cmds), vec!["fetch[1]", "fetch[2]"], "fetch[0] keeps its output");
    assert_eq!(h.state.steps.len(), 6, "no instance is added twice");
    h.succeed("fetch[1]", json!("B"));
    let cmds = h.succeed("fetch[2]", json!("C"));
    assert_eq!(started(&cmds), vec![("report".to_string(), json!({"all": ["A", "B", "C"]}))]);
    replays(&h);
}

const REVIEW: &str = "\
name: t
steps:
  - id: review
    kind: echo
    loop: {until: \"output.score >= 8\", max_iterations: 3}
    with: {draft: \"{{ previous }}\", n: \"{{ iteration }}\"}
  - {id: publish, kind: echo, needs: [review], with: {best: \"{{ steps.review.output }}\", all: \"{{ steps.review.iterations }}\"}}
";

#[test]
fn a_loop_repeats_with_the_previous_output_until_its_condition_holds() {
    let (mut h, cmds) = Harness::new(REVIEW);
    assert_eq!(started(&cmds), vec![("review#1".to_string(), json!({"draft": null, "n": 1}))]);
    let cmds = h.succeed("review#1", json!({"score": 5}));
    assert_eq!(started(&cmds), vec![("review#2".to_string(), json!({"draft": {"score": 5}, "n": 2}))]);
    let cmds = h.succeed("review#2", json!({"score": 9}));
    assert_eq!(
        started(&cmds),
        vec![("publish".to_string(), json!({"best": {"score": 9}, "all": [{"score": 5}, {"score": 9}]}))]
    );
    let joined = recorded_note(&h, "review");
    assert!(joined.contains("held after iteration 2"), "{joined}");
    replays(&h);
}

#[test]
fn a_loop_stops_at_max_iterations_and_a_failed_iteration_fails_the_step() {
    let (mut h, _) = Harness::new(REVIEW);
    for n in 1..=3 {
        h.succeed(&format!("review#{n}"), json!({"score": n}));
    }
    assert_eq!(status(&h, "review"), Some(StepStatus::Completed));
    assert!(h.state.step_state("review#4").is_none());
    assert!(recorded_note(&h, "review").contains("stopped at max_iterations (3)"));

    let (mut h, _) = Harness::new(REVIEW);
    h.succeed("review#1", json!({"score": 1}));
    fail_for_good(&mut h, "review#2", "model down");
    assert_eq!(h.state.status, RunStatus::Failed);
    let why = h.state.failure.clone().expect("failure").message;
    assert!(why.contains("iteration 2 ('review#2') failed: model down"), "{why}");
    replays(&h);
}

fn recorded_note(h: &Harness, step: &str) -> String {
    h.journal
        .iter()
        .find_map(|e| match &e.event {
            Event::StepJoined { step: s, note, .. } if s.as_str() == step => Some(note.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn validation_refuses_what_a_dynamic_step_cannot_be_at_its_place() {
    let problems = |yaml: &str| {
        crate::validate::parse_definition(yaml, "t.yaml", &crate::kinds::for_tests())
            .expect_err("refused")
            .into_iter()
            .map(|p| (p.line, p.code, p.message))
            .collect::<Vec<_>>()
    };
    let found = problems(
        "name: t\nsteps:\n  - {id: a, kind: echo, loop: {until: 'output.ok'}}\n  - {id: b, kind: echo, for_each: 3}\n  - {id: c, kind: echo, max_parallel: 4}\n  - {id: d, kind: approval, for_each: [1]}\n  - {id: e, kind: echo, for_each: [1], on_failure: escalate}\n  - {id: f, kind: echo, with: {x: '{{ item }}'}}\n",
    );
    let codes: Vec<(Option<u64>, &str)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        codes,
        vec![
            (Some(3), "bad_loop"),
            (Some(4), "bad_for_each"),
            (Some(5), "bad_for_each"),
            (Some(6), "bad_for_each"),
            (Some(7), "bad_value"),
            (Some(8), "unknown_variable"),
        ],
        "{found:#?}"
    );
    assert!(found[0].2.contains("needs `max_iterations`"), "{}", found[0].2);
    // What only an instance sees is fine where it exists.
    crate::validate::parse_definition(FETCH, "t.yaml", &crate::kinds::for_tests()).expect("item and index");
    crate::validate::parse_definition(REVIEW, "t.yaml", &crate::kinds::for_tests()).expect("previous and iterations");
}

#[test]
fn a_failing_run_undoes_each_completed_item_of_a_for_each_step_not_the_step_itself() {
    let yaml = "\
name: t
steps:
  - id: book
    kind: echo
    for_each: [a, b]
    with: {seat: \"{{ item }}\"}
    compensate: {kind: echo, with: {cancel: \"{{ output.seat }}\"}}
  - {id: pay, kind: echo, needs: [book]}
";
    let (mut h, _) = Harness::new(yaml);
    h.succeed("book[0]", json!({"seat": "a"}));
    h.succeed("book[1]", json!({"seat": "b"}));
    let cmds = fail_for_good(&mut h, "pay", "card declined");
    let undo: Vec<(String, Value)> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::StartCompensation { step, input, .. } => Some((step.to_string(), input.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(undo, vec![("book[1]".to_string(), json!({"cancel": "b"}))], "newest completion first, one at a time");
    assert_eq!(h.state.status, RunStatus::Compensating);
    assert!(
        !h.state.pending_compensations().any(|i| h.state.steps[i].id.as_str() == "book"),
        "the step is undone through its items"
    );
}

#[test]
fn a_retry_in_place_leaves_the_items_of_a_step_that_went_on_without_them() {
    let going_on = FETCH.replace("max_parallel: 2", "max_parallel: 2\n    on_failure: continue");
    let (mut h, _) = Harness::new(&going_on);
    h.succeed("search", json!({"urls": ["a", "b"]}));
    fail_for_good(&mut h, "fetch[0]", "404");
    h.succeed("fetch[1]", json!("B"));
    fail_for_good(&mut h, "report", "disk full");
    assert_eq!(h.state.status, RunStatus::Failed);
    let cmds = h.feed(Event::RunRetried { by: None });
    assert_eq!(names(&cmds), vec!["report"], "fetch completed: its failed item stays as it was");
    assert_eq!(status(&h, "fetch[0]"), Some(StepStatus::Failed));
    h.succeed("report", json!(null));
    // The item still failed: the run ends as it did (a fork from `fetch` runs the items again).
    assert_eq!(h.state.status, RunStatus::Failed);
    assert!(h.state.steps.iter().all(|s| s.status.is_terminal()), "nothing is left pending");
    replays(&h);
}
