//! End-to-end tests of validation through the public entry points, and the helpers the phase
//! modules' tests share.

use super::{Problem, parse_definition, parse_definition_with_warnings};
use crate::definition::{Definition, FORMAT_VERSION, Inject, InputSpec, OnFailure, Trigger};
use crate::event::ErrorClass;
use crate::ids::StepId;
use crate::kinds;
use crate::retry::RetryPolicy;

fn problems(source: &str) -> Vec<Problem> {
    match parse_definition(source, "test.yaml") {
        Ok(def) => panic!("expected problems, got a definition: {def:#?}"),
        Err(p) => p,
    }
}

fn parse(source: &str, file: &str) -> Definition {
    parse_definition(source, file).unwrap_or_else(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("unexpected problems:\n{}", text.join("\n"))
    })
}

/// (line, column, step, code) of a problem, for compact exact assertions.
type Brief<'a> = (Option<u64>, Option<u64>, Option<&'a str>, &'a str);

fn summary(problems: &[Problem]) -> Vec<Brief<'_>> {
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

#[test]
fn validate_kind_defaults_apply_without_overrides() {
    let def = parse("name: x\nsteps:\n  - {id: a, kind: sleep}\n  - {id: b, kind: mock_model}\n", "x.yaml");
    let sleep = kinds::lookup("sleep").expect("sleep kind");
    let model = kinds::lookup("mock_model").expect("mock_model kind");
    assert_eq!((def.steps[0].retry, def.steps[0].timeout_ms), (sleep.retry, sleep.timeout_ms));
    assert_eq!((def.steps[1].retry, def.steps[1].timeout_ms), (model.retry, model.timeout_ms));
    assert_eq!((def.format, def.version), (FORMAT_VERSION, 1));
    assert!(def.steps.iter().all(|s| s.with.is_null() && s.needs.is_empty() && s.inject.is_none()));
}

const BROKEN: &str = "\
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
fn validate_cycle_message_prints_the_path_and_display_has_the_location() {
    let found = problems(BROKEN);
    assert_eq!(
        found[0].to_string(),
        "test.yaml:3:9: step `a`: cycle: a -> c -> b -> a (each step needs the next, so none can start); \
             remove one of these needs"
    );
    let cycles: Vec<_> = found.iter().filter(|p| p.code == "cycle").collect();
    assert_eq!(cycles.len(), 1, "one cycle, reported once");
}

#[test]
fn validate_finds_each_distinct_cycle_once() {
    let source = "\
name: loops
steps:
  - {id: a, kind: noop, needs: [b]}
  - {id: b, kind: noop, needs: [a, c]}
  - {id: c, kind: noop, needs: [b, c]}
  - {id: d, kind: noop, needs: [e]}
  - {id: e, kind: noop, needs: [d]}
";
    let found = problems(source);
    let messages: Vec<String> = found.iter().map(|p| format!("{}:{}", p.line.unwrap_or(0), p.message)).collect();
    assert_eq!(
        summary(&found).iter().map(|s| (s.2, s.3)).collect::<Vec<_>>(),
        [(Some("a"), "cycle"), (Some("b"), "cycle"), (Some("c"), "self_need"), (Some("d"), "cycle")],
        "{messages:#?}"
    );
    assert!(messages[0].starts_with("3:cycle: a -> b -> a "), "{messages:#?}");
    // Found from b's second edge while a -> b was still on the search path.
    assert!(messages[1].starts_with("4:cycle: b -> c -> b "), "{messages:#?}");
    assert!(messages[3].starts_with("6:cycle: d -> e -> d "), "{messages:#?}");
}

#[test]
fn validate_template_problems_point_at_the_string() {
    let source = "\
name: t
inputs: {x: {}}
steps:
  - id: a
    kind: echo
    with:
      ok: \"{{ inputs.x }}\"
      nested:
        list: [fine, \"{{ broken\"]
";
    let found = problems(source);
    assert_eq!(summary(&found), vec![(Some(9), Some(22), Some("a"), "bad_template")], "{found:#?}");
    assert!(found[0].message.contains("with.nested.list[1]"), "{}", found[0].message);
}

#[test]
fn validate_checks_values_ranges_and_durations() {
    let source = "\
cairn: 2
name: \"bad name!\"
version: 0
artifact: ../out.json
defaults:
  retry: {initial_delay: 2m}
  timeout: 0s
steps:
  - id: Upper
    kind: echo
    retry: {multiplier: 0.5, max_delay: 5 parsecs}
    timeout: 25h
    on_failure: shrug
    trigger: sometimes
    inject: {fail_rate: 1.5, fail_class: flaky, delay: -3, fail_times: -1}
";
    let found = problems(source);
    assert_eq!(
        summary(&found),
        vec![
            (Some(1), Some(8), None, "bad_value"),
            (Some(2), Some(7), None, "bad_name"),
            (Some(3), Some(10), None, "out_of_range"),
            (Some(4), Some(11), None, "bad_value"),
            (Some(6), Some(26), None, "out_of_range"),
            (Some(7), Some(12), None, "out_of_range"),
            (Some(9), Some(9), Some("Upper"), "bad_id"),
            (Some(11), Some(25), Some("Upper"), "out_of_range"),
            (Some(11), Some(41), Some("Upper"), "bad_duration"),
            (Some(12), Some(14), Some("Upper"), "out_of_range"),
            (Some(13), Some(17), Some("Upper"), "bad_value"),
            (Some(14), Some(14), Some("Upper"), "bad_value"),
            (Some(15), Some(25), Some("Upper"), "out_of_range"),
            (Some(15), Some(42), Some("Upper"), "bad_value"),
            (Some(15), Some(56), Some("Upper"), "bad_duration"),
            (Some(15), Some(72), Some("Upper"), "out_of_range"),
        ],
        "{found:#?}"
    );
    let on_failure = &found[10].message;
    assert!(on_failure.contains("`fail`") && on_failure.contains("`continue`"), "{on_failure}");
    assert!(on_failure.contains("escalate"), "{on_failure}");
    assert!(found[4].message.contains("gives steps of kind `echo` a max_delay of 5.0s"), "{}", found[4].message);
}

#[test]
fn validate_malformed_yaml_gives_line_and_column() {
    let found = problems("name: x\nsteps:\n  - id: a\n  id: b\n");
    assert_eq!(summary(&found), vec![(Some(4), Some(3), None, "parse")]);
    assert!(!found[0].message.contains('\n') && !found[0].message.contains("at line"), "{}", found[0].message);
}

#[test]
fn validate_unknown_and_missing_fields_are_problems() {
    let found = problems("name: x\nsteps:\n  - id: a\n    kinds: echo\n");
    assert_eq!(summary(&found), vec![(Some(4), Some(5), None, "unknown_field")]);
    assert!(found[0].message.starts_with("unknown field `kinds`; did you mean `kind`?"), "{}", found[0].message);

    let found = problems("name: x\nsteps:\n  - id: a\n");
    assert_eq!(summary(&found), vec![(Some(3), Some(5), None, "missing_field")]);
    assert_eq!(found[0].message, "missing required field `kind`");
}

#[test]
fn validate_empty_input_is_one_clear_problem() {
    for source in ["", "  \n", "# only a comment\n"] {
        let found = problems(source);
        assert_eq!(found.len(), 1, "{source:?}: {found:#?}");
        assert_eq!(found[0].code, "empty", "{source:?}");
        assert!(found[0].to_string().starts_with("test.yaml: the file holds no definition"), "{}", found[0]);
    }
    let found = problems("name: x\nsteps: []\n");
    assert_eq!(summary(&found), vec![(Some(2), Some(8), None, "no_steps")]);
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
        let result = parse_definition(&text, &name);
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
fn validate_fallbacks_name_another_step_once_and_make_no_cycle() {
    let ok = parse(
        "name: f\nsteps:\n  - {id: fetch, kind: noop, on_failure: {fallback: cached}}\n  - {id: cached, kind: noop}\n",
        "f.yaml",
    );
    assert_eq!(ok.steps[0].on_failure, OnFailure::Fallback(StepId::new("cached")));
    assert_eq!((ok.fallback_of(0), ok.primary_of(1), ok.effective_needs(1)), (Some(1), Some(0), vec![0]));

    let source = "\
name: f
steps:
  - {id: a, kind: noop, on_failure: {fallback: a}}
  - {id: b, kind: noop, on_failure: {fallback: cachd}}
  - {id: cached, kind: noop}
  - {id: c, kind: noop, on_failure: {fallback: cached}}
  - {id: d, kind: noop, on_failure: {fallback: cached}}
  - {id: e, kind: noop, on_failure: fallback}
  - {id: p, kind: noop, on_failure: {fallback: q}}
  - {id: q, kind: noop, needs: [r]}
  - {id: r, kind: noop, needs: [p]}
";
    let found = problems(source);
    assert_eq!(
        summary(&found),
        vec![
            (Some(3), Some(37), Some("a"), "self_fallback"),
            (Some(4), Some(37), Some("b"), "unknown_fallback"),
            (Some(7), Some(37), Some("d"), "duplicate_fallback"),
            (Some(8), Some(37), Some("e"), "bad_value"),
            (Some(10), Some(10), Some("q"), "cycle"),
        ],
        "{found:#?}"
    );
    assert!(found[1].message.contains("did you mean `cached`?"), "{}", found[1].message);
    assert!(found[2].message.contains("already the fallback of `c`"), "{}", found[2].message);
    assert!(found[3].message.contains("{fallback: STEP}"), "{}", found[3].message);
    assert!(found[4].message.contains("q -> r -> q") && found[4].message.contains("a fallback waits"));

    let found =
        problems("name: f\nsteps:\n  - {id: a, kind: noop, on_failure: {fallbak: b}}\n  - {id: b, kind: noop}\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].message.contains("`fallback: STEP`; found `fallbak`"), "{}", found[0].message);
}

#[test]
fn a_literal_authorization_header_is_a_warning_with_its_position_not_a_problem() {
    let source = "\
name: t
steps:
  - id: call
    kind: http
    with:
      url: http://127.0.0.1:9/x
      headers:
        Authorization: Bearer abc123
        X-Trace: fine
    compensate:
      kind: http
      with: {url: http://127.0.0.1:9/undo, body: {password: hunter2}, token: \"{{ secrets.API_TOKEN }}\"}
";
    let (definition, warnings) = parse_definition_with_warnings(source, "wf.yaml");
    assert!(definition.is_ok(), "{definition:?}");
    let brief: Vec<String> = warnings.iter().map(|w| w.as_warning()).collect();
    assert_eq!(brief.len(), 2, "{brief:#?}");
    assert!(
        brief[0]
            .starts_with("wf.yaml:8:24: warning: step `call`: `with.headers.Authorization` holds a literal credential"),
        "{}",
        brief[0]
    );
    assert!(brief[0].contains("write `Bearer {{ secrets.API_TOKEN }}`"), "{}", brief[0]);
    assert!(
        brief[1].starts_with("wf.yaml:12:61: warning: step `call`: `compensate.with.body.password`"),
        "{}",
        brief[1]
    );
    assert!(brief.iter().all(|w| !w.contains("abc123") && !w.contains("hunter2")), "values are never repeated");
    assert!(warnings.iter().all(|w| w.code == "literal_credential"));
    // The same definition with a problem keeps its warnings.
    let (definition, warnings) =
        parse_definition_with_warnings(&source.replace("kind: http\n    with", "kind: htp\n    with"), "wf.yaml");
    assert!(definition.is_err());
    assert_eq!(warnings.len(), 2);
}
