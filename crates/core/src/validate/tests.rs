//! End-to-end tests of validation through the public entry points, and the helpers the phase
//! modules' tests share.

use super::{Problem, parse_definition};
use crate::definition::{Definition, Inject, InputSpec, OnFailure, Trigger};
use crate::event::ErrorClass;
use crate::ids::StepId;
use crate::retry::RetryPolicy;

pub(super) fn problems(source: &str) -> Vec<Problem> {
    match parse_definition(source, "test.yaml", &crate::kinds::for_tests()) {
        Ok(def) => panic!("expected problems, got a definition: {def:#?}"),
        Err(p) => p,
    }
}

pub(super) fn parse(source: &str, file: &str) -> Definition {
    parse_definition(source, file, &crate::kinds::for_tests()).unwrap_or_else(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("unexpected problems:\n{}", text.join("\n"))
    })
}

/// (line, column, step, code) of a problem, for compact exact assertions.
pub(super) type Brief<'a> = (Option<u64>, Option<u64>, Option<&'a str>, &'a str);

pub(super) fn summary(problems: &[Problem]) -> Vec<Brief<'_>> {
    problems.iter().map(|p| (p.line, p.column, p.step.as_deref(), p.code)).collect()
}

const VALID_YAML: &str = r#"
cairn: 1
name: demo.flow
version: 2
inputs:
  topic: {default: otters, description: what to write about}
  audience:
defaults:
  retry: {max_attempts: 4, initial_delay: 250ms}
  timeout: 30s
steps:
  - id: gen
    kind: mock_model
    with: {prompt: "Write about {{ inputs.topic }}", n: [1, 2.5, true, null]}
    retry: {max_delay: 2s, jitter: 0}
  - id: send
    kind: echo
    needs: [gen]
    when: "steps.gen.status == 'completed'"
    timeout: none
    on_failure: continue
    trigger: all_done
    inject: {fail_times: 2, fail_rate: 0.5, fail_class: rate_limited, delay: 100, hang: false}
"#;

const VALID_JSON: &str = r#"{
  "cairn": 1,
  "name": "demo.flow",
  "version": 2,
  "inputs": {
    "topic": {"default": "otters", "description": "what to write about"},
    "audience": null
  },
  "defaults": {"retry": {"max_attempts": 4, "initial_delay": "250ms"}, "timeout": "30s"},
  "steps": [
    {
      "id": "gen",
      "kind": "mock_model",
      "with": {"prompt": "Write about {{ inputs.topic }}", "n": [1, 2.5, true, null]},
      "retry": {"max_delay": "2s", "jitter": 0}
    },
    {
      "id": "send",
      "kind": "echo",
      "needs": ["gen"],
      "when": "steps.gen.status == 'completed'",
      "timeout": "none",
      "on_failure": "continue",
      "trigger": "all_done",
      "inject": {"fail_times": 2, "fail_rate": 0.5, "fail_class": "rate_limited", "delay": 100, "hang": false}
    }
  ]
}"#;

#[test]
fn validate_yaml_and_json_compile_to_the_same_resolved_definition() {
    let def = parse(VALID_YAML, "demo.yaml");
    assert_eq!(def, parse(VALID_JSON, "demo.json"));

    assert_eq!((def.format, def.name.as_str(), def.version), (1, "demo.flow", 2));
    assert_eq!(def.inputs["topic"].default, Some(serde_json::json!("otters")));
    assert_eq!(def.inputs["audience"], InputSpec::default());

    let model = def.step("gen").expect("gen");
    // max_attempts and initial_delay from defaults, max_delay and jitter from the step,
    // multiplier from the mock_model kind; timeout from defaults.
    assert_eq!(
        model.retry,
        RetryPolicy { max_attempts: 4, initial_delay_ms: 250, multiplier: 2.0, max_delay_ms: 2_000, jitter: 0.0 }
    );
    assert_eq!(model.timeout_ms, Some(30_000));
    assert_eq!(model.with, serde_json::json!({"prompt": "Write about {{ inputs.topic }}", "n": [1, 2.5, true, null]}));
    assert_eq!((&model.on_failure, model.trigger, &model.inject), (&OnFailure::Fail, Trigger::AllSucceeded, &None));

    let send = def.step("send").expect("send");
    assert_eq!(
        send.retry,
        RetryPolicy { max_attempts: 4, initial_delay_ms: 250, multiplier: 2.0, max_delay_ms: 5_000, jitter: 0.2 }
    );
    assert_eq!(send.timeout_ms, None, "`timeout: none` overrides the default");
    assert_eq!(send.needs, vec![StepId::new("gen")]);
    assert_eq!((&send.on_failure, send.trigger), (&OnFailure::Continue, Trigger::AllDone));
    assert_eq!(
        send.inject,
        Some(Inject { fail_times: 2, fail_rate: 0.5, fail_class: ErrorClass::RateLimited, delay_ms: 100, hang: false })
    );
}

/// A file with one problem of each common sort; also used by `check`'s cycle test.
pub(super) const BROKEN: &str = "\
name: broken
steps:
  - id: a
    kind: echo
    needs: [c]
  - id: b
    kind: echo
    needs: [a]
  - id: c
    kind: echo
    needs: [b]
  - id: a
    kind: mock_modle
  - id: d
    kind: echo
    needs: [a, bb]
    when: \"inputs.x ==\"
    retry: {max_attempts: 0, jitter: 2.0}
";

#[test]
fn validate_reports_every_problem_in_source_order() {
    let found = problems(BROKEN);
    assert_eq!(
        summary(&found),
        vec![
            (Some(3), Some(9), Some("a"), "cycle"),
            (Some(12), Some(9), Some("a"), "duplicate_id"),
            (Some(13), Some(11), Some("a"), "unknown_kind"),
            (Some(16), Some(16), Some("d"), "unknown_need"),
            (Some(17), Some(11), Some("d"), "bad_condition"),
            (Some(18), Some(27), Some("d"), "out_of_range"),
            (Some(18), Some(38), Some("d"), "out_of_range"),
        ],
        "{found:#?}"
    );
    assert!(found[1].message.contains("line 3 already defines"), "{}", found[1].message);
    assert!(found[2].message.contains("did you mean `mock_model`?"), "{}", found[2].message);
    assert!(
        found[3].message.contains("`bb`") && found[3].message.contains("did you mean `b`?"),
        "{}",
        found[3].message
    );
    assert_eq!(
        found[4].message,
        "`when` is not a valid CEL condition (at 1:12 in the condition): Syntax error: mismatched input '<EOF>' \
             expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, \
             BYTES, IDENTIFIER}"
    );
    assert!(found[5].message.contains("between 1 and 100"), "{}", found[5].message);
    assert!(found[6].message.contains("between 0.0 and 1.0"), "{}", found[6].message);
}

#[test]
fn validate_problem_display_omits_unknown_parts() {
    let mut p = Problem {
        file: "f.yaml".into(),
        line: Some(4),
        column: Some(2),
        step: Some("a".into()),
        code: "x",
        message: "m".into(),
    };
    assert_eq!(p.to_string(), "f.yaml:4:2: step `a`: m");
    p.column = None;
    p.step = None;
    assert_eq!(p.to_string(), "f.yaml:4: m");
    p.line = None;
    assert_eq!(p.to_string(), "f.yaml: m");
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

#[test]
fn validate_examples_parse_and_invalid_yaml_fails_loudly() {
    let mut checked = 0;
    let entries = std::fs::read_dir(EXAMPLES).expect("examples directory");
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example readable");
        // The agent examples use the kinds of the engine (llm, tool, agent): the CLI's tests
        // validate and run those.
        if ["kind: llm", "kind: tool", "kind: agent"].iter().any(|k| text.contains(k)) {
            continue;
        }
        let result = parse_definition(&text, &name, &crate::kinds::for_tests());
        if name == "invalid.yaml" {
            let found = result.expect_err("invalid.yaml must not validate");
            assert!(found.len() >= 4, "{found:#?}");
            assert!(found.iter().all(|p| p.line.is_some()), "{found:#?}");
        } else if let Err(found) = result {
            let text: Vec<String> = found.iter().map(ToString::to_string).collect();
            panic!("example {name} does not validate:\n{}", text.join("\n"));
        }
        checked += 1;
    }
    assert!(checked >= 3, "expected the three examples, checked {checked}");
}

#[test]
fn validate_budgets_of_the_run_and_of_a_step_compile_and_bad_ones_are_named_where_they_are() {
    let def = parse(
        "name: b\nbudget: {max_cost_usd: 0.5}\nsteps:\n  - {id: a, kind: noop, budget: {max_tokens: 2000, on_exceed: escalate}}\n",
        "b.yaml",
    );
    let run = def.budget.expect("run budget");
    assert_eq!((run.max_cost_usd, run.max_tokens, run.on_exceed), (Some(0.5), None, crate::definition::OnExceed::Fail));
    let step = def.steps[0].budget.clone().expect("step budget");
    assert_eq!((step.max_tokens, step.on_exceed), (Some(2000), crate::definition::OnExceed::Escalate));
    let found = problems(
        "name: b\nbudget: {on_exceed: fail}\nsteps:\n  - {id: a, kind: noop, budget: {max_cost_usd: -1, on_exceed: later}}\n",
    );
    assert_eq!(
        summary(&found),
        vec![
            (Some(2), Some(9), None, "missing_field"),
            (Some(4), Some(48), Some("a"), "out_of_range"),
            (Some(4), Some(63), Some("a"), "bad_value")
        ],
        "{found:#?}"
    );
    assert!(
        found[2].message.contains("`budget.on_exceed: later` is not one of fail, escalate"),
        "{}",
        found[2].message
    );
}
