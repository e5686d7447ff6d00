//! End-to-end tests of the real `cairn` binary, each against its own SQLite file: what a user
//! sees (exit code, messages) and what ends up in the journal.
//!
//! Exit codes: 0 ok · 1 the run FAILED/CANCELLED · 2 usage or bad input · 3 environment.

mod common;

use cairn_core::{ErrorClass, Event};
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Output;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// Asserts the exit code and that nothing panicked; returns (stdout, stderr).
#[track_caller]
fn expect_exit(out: &Output, code: i32) -> (String, String) {
    let (so, se) = (stdout(out), stderr(out));
    assert_eq!(out.status.code(), Some(code), "expected exit {code}\n--- stdout\n{so}\n--- stderr\n{se}");
    assert!(!se.contains("panicked"), "cairn panicked:\n{se}");
    (so, se)
}

fn examples() -> PathBuf {
    PathBuf::from(EXAMPLES)
}

/// The row of `step` in `cairn runs show` output, split on whitespace.
fn show_row(show: &str, step: &str) -> Vec<String> {
    show.lines()
        .find(|l| l.split_whitespace().next() == Some(step))
        .unwrap_or_else(|| panic!("no row for {step} in:\n{show}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn failures_of(env: &Env, id: &str, step: &str) -> Vec<cairn_core::Failure> {
    env.events(id)
        .into_iter()
        .filter_map(|e| match e.event {
            Event::AttemptFailed { step: s, failure, .. } if s.as_str() == step => Some(failure),
            _ => None,
        })
        .collect()
}

fn count_kind(env: &Env, id: &str, kind: &str) -> usize {
    env.events(id).iter().filter(|e| e.event.kind() == kind).count()
}

// ---------------------------------------------------------------------------------------------
// Goals

#[test]
fn goal_summary_and_email_runs_to_completion() {
    let env = Env::new();
    let out = env.run(&["run", "--goal", "generate summary and send email"]);
    let (_, err) = expect_exit(&out, 0);
    let started =
        err.lines().find(|l| l.starts_with("[workflow] id=wf_")).unwrap_or_else(|| panic!("no start line:\n{err}"));
    assert!(started.contains(" started"), "{started}");
    for needle in ["[step] generate_summary=ok (", "[step] send_email=ok (", "[workflow] completed"] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let summary_at = err.find("[step] generate_summary=ok").expect("summary line");
    let email_at = err.find("[step] send_email=ok").expect("email line");
    assert!(summary_at < email_at, "send_email needs generate_summary:\n{err}");

    let run = env.only_run();
    assert!(started.contains(&format!("id={} ", run.id)), "printed id is the stored id: {started} vs {}", run.id);
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.goal.as_deref(), Some("generate summary and send email"));
    assert!(run.output_hash.is_some());
    let steps = env.steps(&run.id);
    let ids: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(ids, ["generate_summary", "send_email"]);
    assert!(steps.iter().all(|s| s.status == "COMPLETED" && s.attempts == 1), "{steps:#?}");
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn goal_vendor_onboarding_writes_its_artifact() {
    let env = Env::new();
    // The run pauses at the policy screen until someone approves it from another process.
    let (mut child, lines) = env.spawn(&["run", "--goal", "vendor onboarding review"], &[]);
    let mut seen =
        wait_line(&lines, "[step] policy_screen=blocked(manual approval)", std::time::Duration::from_secs(20));
    let waiting = env.only_run();
    assert_eq!(waiting.status, "WAITING");
    let approve = env.run(&["approve", &waiting.id, "policy_screen", "--comment", "controls agreed", "--by", "ana"]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    seen.extend(wait_line(&lines, "[workflow] completed", std::time::Duration::from_secs(20)));
    seen.extend(wait_line(&lines, "[artifact] onboarding_decision.json", std::time::Duration::from_secs(20)));
    let status = wait_exit(&mut child, std::time::Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let err = seen.join("\n");
    assert!(err.contains("[approval] policy_screen approved by ana: controls agreed"), "{err}");
    for step in ["docs_collect", "policy_screen", "final_decision"] {
        assert!(err.contains(&format!("[step] {step}=ok (")), "missing {step} in:\n{err}");
    }
    assert!(err.contains("[artifact] onboarding_decision.json"), "{err}");

    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    let path = env.dir.path().join("onboarding_decision.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("artifact {} missing: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("artifact is JSON");
    assert_eq!(doc["run_id"], run.id.as_str());
    assert_eq!(doc["status"], "COMPLETED");
    let output = &doc["output"];
    for step in ["docs_collect", "policy_screen", "final_decision"] {
        assert!(output.get(step).is_some(), "output lacks {step}: {output}");
    }
    assert_eq!(output["final_decision"]["data"]["decision"], "approved_with_controls", "{output}");
    // The artifact holds exactly the run's recorded output.
    let store = env.store();
    let stored = env.block(cairn_store::Journal::payload(&store, run.output_hash.as_deref().expect("output")));
    assert_eq!(stored.expect("payload"), Some(output.clone()));
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn a_goal_that_says_do_not_send_email_plans_no_email_and_says_so() {
    let env = Env::new();
    let goal = "summarize the report but do not send email";
    let out = env.run(&["plan", "--goal", goal]);
    let (so, _) = expect_exit(&out, 0);
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        [
            "goal: summarize the report but do not send email",
            "  generate_summary [mock_model]",
            "left out: send_email (\"do not send email\")"
        ],
        "{so}"
    );
    let out = env.run(&["plan", "--goal", goal, "--json"]);
    let (so, _) = expect_exit(&out, 0);
    let plan: Value = serde_json::from_str(&so).expect("plan --json is JSON");
    assert_eq!(plan["plan"], json!(["generate_summary"]));
    assert_eq!(plan["left_out"], json!([{"entry": "send_email", "because": "do not send email"}]));

    // The run says it too, and journals it.
    let out = env.run(&["run", "--goal", goal]);
    let (_, se) = expect_exit(&out, 0);
    assert!(
        se.lines().any(|l| l == "[plan] goal \"summarize the report but do not send email\" -> generate_summary; left out: send_email (\"do not send email\")"),
        "{se}"
    );
    assert!(!se.contains("[step] send_email"), "{se}");
    let run = env.only_run();
    let steps: Vec<String> = env.steps(&run.id).into_iter().map(|s| s.step_id).collect();
    assert_eq!(steps, ["generate_summary"]);
    let recorded = env.events(&run.id).into_iter().find_map(|e| match e.event {
        Event::PlanRecorded { plan, .. } => plan,
        _ => None,
    });
    let left_out = recorded.map(|p| p.left_out).unwrap_or_default();
    assert_eq!(
        left_out.iter().map(|l| (l.entry.as_str(), l.because.as_str())).collect::<Vec<_>>(),
        [("send_email", "do not send email")]
    );

    // Nothing left to plan: exit 2, naming what was left out, and no run.
    let out = env.run(&["run", "--goal", "do NOT notify anyone"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("leaves nothing to plan (left out: notify (\"do NOT notify anyone\"))"), "{se}");
    assert_eq!(env.runs().len(), 1, "no run for a goal with nothing to plan");
}

#[test]
fn unmatched_goal_is_a_usage_error_listing_the_catalog() {
    let env = Env::new();
    let out = env.run(&["run", "--goal", "bake a cake"]);
    let (_, err) = expect_exit(&out, 2);
    assert!(err.contains("bake a cake"), "{err}");
    assert!(err.contains("The catalog can plan"), "{err}");
    assert!(err.contains("generate_summary"), "{err}");
    assert!(err.contains("--catalog"), "the message says how to teach the planner: {err}");
    assert!(env.runs().is_empty(), "no run is created for a goal that cannot be planned");
}

// ---------------------------------------------------------------------------------------------
// Failures, retries, timeouts

#[test]
fn transient_failure_retries_to_the_limit_then_fails_the_run() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: transient\nsteps:\n  - id: flaky\n    kind: noop\n    inject: {fail_times: 10}\n    retry: {max_attempts: 3, initial_delay: 10ms}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    let (_, err) = expect_exit(&out, 1);
    assert!(err.contains("[step] flaky=failed(transient) retry 2/3"), "{err}");
    assert!(err.contains("[step] flaky=failed(transient) retry 3/3"), "{err}");
    assert!(!err.contains("retry 4/3"), "{err}");
    assert!(err.contains("ended FAILED"), "{err}");

    let run = env.only_run();
    let show = env.run(&["runs", "show", &run.id]);
    let (show, _) = expect_exit(&show, 0);
    assert!(show.contains("state     FAILED"), "{show}");
    let row = show_row(&show, "flaky");
    assert_eq!(row[1], "FAILED", "{show}");
    assert_eq!(row[2], "3", "attempts column: {show}");
    assert!(row.join(" ").contains("injected failure (attempt 3 of fail_times=10)"), "last error shown: {show}");

    let events = env.run(&["runs", "events", &run.id]);
    let (events, _) = expect_exit(&events, 0);
    assert_eq!(events.lines().filter(|l| l.contains(" attempt_started ")).count(), 3, "{events}");
    assert_eq!(events.lines().filter(|l| l.contains(" retry_scheduled ")).count(), 2, "{events}");

    assert_eq!(run.status, "FAILED");
    assert_eq!(run.failure_class.as_deref(), Some("transient"));
    assert_eq!(run.failed_step.as_deref(), Some("flaky"));
    let message = run.failure_message.clone().unwrap_or_default();
    assert!(message.contains("gave up after 3 attempts"), "{message}");
    assert!(
        message.contains("injected failure (attempt 3 of fail_times=10)"),
        "the run carries the step's last reason: {message}"
    );
    let step = env.step(&run.id, "flaky");
    assert_eq!((step.status.as_str(), step.attempts), ("FAILED", 3));
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn permanent_failure_does_not_retry() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: permanent\nsteps:\n  - id: bad\n    kind: fail\n    with: {message: \"the ledger is closed\"}\n    retry: {max_attempts: 5, initial_delay: 10ms}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    let (_, err) = expect_exit(&out, 1);
    assert!(err.contains("[step] bad=failed(permanent): the ledger is closed"), "{err}");
    assert!(!err.contains("retry"), "a permanent error is never retried: {err}");

    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    assert_eq!(run.failure_class.as_deref(), Some("permanent"));
    assert!(run.failure_message.as_deref().unwrap_or("").contains("the ledger is closed"), "{run:?}");
    assert_eq!(env.started(&run.id, "bad"), 1);
    assert_eq!(count_kind(&env, &run.id, "retry_scheduled"), 0);
    assert_eq!(env.step(&run.id, "bad").attempts, 1);
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn hanging_step_times_out_on_every_attempt() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: hang\nsteps:\n  - id: stuck\n    kind: noop\n    inject: {hang: true}\n    timeout: 200ms\n    retry: {max_attempts: 2, initial_delay: 10ms}\n",
    );
    let began = std::time::Instant::now();
    let out = env.run(&["run", path_str(&wf)]);
    let (_, err) = expect_exit(&out, 1);
    assert!(began.elapsed() >= std::time::Duration::from_millis(400), "two 200ms timeouts cannot finish sooner");
    assert!(err.contains("[step] stuck=failed(timeout) retry 2/2"), "{err}");

    let run = env.only_run();
    let failures = failures_of(&env, &run.id, "stuck");
    assert_eq!(failures.len(), 2, "{failures:?}");
    for f in &failures {
        assert_eq!(f.class, ErrorClass::Timeout, "{f:?}");
        assert!(f.message.contains("timeout of 200ms"), "{f:?}");
    }
    assert_eq!(env.started(&run.id, "stuck"), 2);
    assert_eq!(run.status, "FAILED");
    assert_eq!(run.failure_class.as_deref(), Some("timeout"));
    assert_eq!(env.step(&run.id, "stuck").error_class.as_deref(), Some("timeout"));
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn output_over_the_cap_fails_permanently_without_truncating() {
    let env = Env::new();
    let text = "x".repeat(500);
    let wf = env.write(
        "wf.yaml",
        &format!("name: big\nsteps:\n  - id: blob\n    kind: echo\n    with: {{text: \"{text}\"}}\n    retry: {{max_attempts: 4, initial_delay: 10ms}}\n"),
    );
    let size = serde_json::to_vec(&json!({ "text": text })).expect("json").len();
    let out = env.run(&["run", path_str(&wf), "--max-output-bytes", "100"]);
    let (_, err) = expect_exit(&out, 1);
    assert!(
        err.contains(&format!("step 'blob' produced an output of {size} bytes, over the cap of 100 bytes")),
        "{err}"
    );
    assert!(err.contains("--max-output-bytes"), "the message says how to fix it: {err}");

    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    assert_eq!(run.failure_class.as_deref(), Some("permanent"));
    assert_eq!(env.started(&run.id, "blob"), 1, "over the cap is permanent: exactly one attempt");
    assert_eq!(count_kind(&env, &run.id, "attempt_succeeded"), 0);
    let step = env.step(&run.id, "blob");
    assert_eq!(
        (step.status.as_str(), step.error_class.as_deref(), step.output_hash.as_deref()),
        ("FAILED", Some("permanent"), None)
    );
    // No truncated copy of the output was stored anywhere.
    let export = env.run(&["export", &run.id]);
    let (doc, _) = expect_exit(&export, 0);
    let doc: Value = serde_json::from_str(&doc).expect("export JSON");
    for (hash, payload) in doc["payloads"].as_object().expect("payloads") {
        let s = payload.to_string();
        if s.contains("xxxxxxxxxx") {
            assert!(s.contains(&text), "payload {hash} holds a cut-down copy of the output: {s}");
        }
    }
    env.assert_journal_is_sound(&run.id);
}

// ---------------------------------------------------------------------------------------------
// Graph shapes

#[test]
fn skipped_branch_propagates_while_a_none_failed_join_still_runs() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: fan\ninputs:\n  mode: {default: shallow}\nsteps:\n\
         \x20 - {id: root, kind: echo, with: {a: 1}}\n\
         \x20 - {id: left, kind: sleep, needs: [root], with: {duration: 50ms}}\n\
         \x20 - {id: right, kind: echo, needs: [root], with: {r: 1}}\n\
         \x20 - {id: maybe, kind: echo, needs: [root], when: \"inputs.mode == 'deep'\", with: {m: 1}}\n\
         \x20 - {id: after_maybe, kind: echo, needs: [maybe], with: {x: 1}}\n\
         \x20 - {id: join, kind: echo, needs: [left, right, maybe, after_maybe], trigger: none_failed, with: {l: \"{{ steps.left.output.waited_ms }}\"}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    let (_, err) = expect_exit(&out, 0);
    assert!(err.contains("[step] maybe=skipped (condition `inputs.mode == 'deep'` is false)"), "{err}");
    assert!(err.contains("[step] after_maybe=skipped (dependency 'maybe' is skipped)"), "{err}");
    assert!(err.contains("[step] join=ok ("), "{err}");

    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    let status = |s: &str| env.step(&run.id, s).status;
    for s in ["root", "left", "right", "join"] {
        assert_eq!(status(s), "COMPLETED", "{s}");
    }
    assert_eq!(status("maybe"), "SKIPPED");
    assert_eq!(status("after_maybe"), "SKIPPED");
    assert_eq!(env.started(&run.id, "maybe"), 0);
    assert_eq!(env.started(&run.id, "after_maybe"), 0);
    assert_eq!(env.step(&run.id, "after_maybe").skip_reason.as_deref(), Some("dependency 'maybe' is skipped"));
    // The join saw its completed dependency's output.
    let store = env.store();
    let out_hash = env.step(&run.id, "join").output_hash.expect("join output");
    let join_out = env.block(cairn_store::Journal::payload(&store, &out_hash)).expect("payload");
    // `left` is a durable sleep: it waited at least its 50 ms, measured on the journal's clock.
    let waited = join_out.as_ref().and_then(|v| v["l"].as_i64()).unwrap_or(0);
    assert!(waited >= 50, "{join_out:?}");
    env.assert_journal_is_sound(&run.id);
}

#[test]
fn on_failure_continue_lets_independent_branches_finish() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: cont\nsteps:\n\
         \x20 - {id: broken, kind: fail, on_failure: continue, with: {message: \"branch broke\"}}\n\
         \x20 - {id: after_broken, kind: echo, needs: [broken], with: {never: true}}\n\
         \x20 - {id: fine, kind: sleep, with: {duration: 100ms}}\n\
         \x20 - {id: after_fine, kind: echo, needs: [fine], with: {ok: true}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    let (_, err) = expect_exit(&out, 1);
    assert!(err.contains("[step] broken=failed(permanent): branch broke"), "{err}");
    assert!(err.contains("[step] fine=ok ("), "{err}");
    assert!(err.contains("[step] after_fine=ok ("), "{err}");

    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    assert_eq!(run.failed_step.as_deref(), Some("broken"));
    let message = run.failure_message.clone().unwrap_or_default();
    assert!(message.contains("1 step(s) failed"), "{message}");
    assert!(message.contains("partial results recorded"), "{message}");
    assert!(message.contains("branch broke"), "{message}");
    let fine = env.step(&run.id, "fine");
    assert_eq!(fine.status, "COMPLETED");
    assert!(fine.output_hash.is_some(), "the independent branch's result is recorded");
    assert_eq!(env.step(&run.id, "after_fine").status, "COMPLETED");
    assert_eq!(env.step(&run.id, "broken").status, "FAILED");
    assert_eq!(env.step(&run.id, "after_broken").status, "SKIPPED");
    env.assert_journal_is_sound(&run.id);
}

// ---------------------------------------------------------------------------------------------
// Definitions

/// Line and 1-based column where `needle` first occurs in `text`.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, l[..c].chars().count() + 1)))
        .unwrap_or_else(|| panic!("{needle:?} not in the file"))
}

#[test]
fn validate_lists_every_problem_with_its_location() {
    let env = Env::new();
    let invalid = examples().join("invalid.yaml");
    let path = path_str(&invalid).to_string();
    let source = std::fs::read_to_string(&invalid).expect("examples/invalid.yaml");
    let out = env.run(&["validate", &path]);
    let (so, se) = expect_exit(&out, 2);
    let located: Vec<&str> = so
        .lines()
        .filter(|l| {
            l.strip_prefix(&format!("{path}:")).is_some_and(|rest| {
                let mut parts = rest.splitn(3, ':');
                let line = parts.next().is_some_and(|p| p.parse::<u32>().is_ok());
                let col = parts.next().is_some_and(|p| p.parse::<u32>().is_ok());
                line && col
            })
        })
        .collect();
    assert!(located.len() >= 5, "several problems, each with file:line:col:\n{so}");
    assert!(se.contains(&format!("{} problem(s) found", located.len())), "{se}");
    let (line, col) = locate(&source, "mock_modle");
    let kind = format!("{path}:{line}:{col}: ");
    assert!(
        so.lines().any(|l| l.starts_with(&kind) && l.contains("did you mean `mock_model`")),
        "the misspelt kind is reported at {kind}:\n{so}"
    );
    for needle in [
        "duplicate step id `fetch`",
        "cycle",
        "`fetch_all`",
        "`retry.jitter`",
        "retry-forever",
        "reads `inputs.recipient`",
        "add `summarise` to `needs`",
    ] {
        assert!(so.contains(needle), "missing {needle:?}:\n{so}");
    }
    assert!(env.runs().is_empty());
}

#[test]
fn validate_refuses_templates_and_conditions_reading_what_the_step_cannot_see_with_positions() {
    let env = Env::new();
    let source = "\
name: reads
inputs:
  topic: {default: otters}
steps:
  - {id: a, kind: echo}
  - {id: b, kind: echo}
  - id: c
    kind: echo
    needs: [a]
    when: \"steps.b.status == 'completed'\"
    with:
      nested: {list: [\"{{ inputs.tpoic }}\", \"{{ steps.a.output }} {{ steps.b.output }}\"]}
";
    let path = env.write("reads.yaml", source);
    let out = env.run(&["validate", "reads.yaml"]);
    let (so, se) = expect_exit(&out, 2);
    let (when_line, when_col) = locate(source, "\"steps.b.status");
    let (input_line, input_col) = locate(source, "\"{{ inputs.tpoic");
    let (step_line, step_col) = locate(source, "\"{{ steps.a.output");
    let expected = [
        format!(
            "reads.yaml:{when_line}:{when_col}: step `c`: `when` reads `steps.b` (at 1:1 in the condition), but step \
             `b` is not in this step's `needs`, directly or through the steps it needs, so its result is never \
             visible here; add `b` to `needs`"
        ),
        format!(
            "reads.yaml:{input_line}:{input_col}: step `c`: `with.nested.list[0]` reads `inputs.tpoic` (at 1:4 in the \
             template), but no input `tpoic` is declared; did you mean `topic`?"
        ),
        format!(
            "reads.yaml:{step_line}:{step_col}: step `c`: `with.nested.list[1]` reads `steps.b` (at 1:25 in the \
             template), but step `b` is not in this step's `needs`, directly or through the steps it needs, so its \
             result is never visible here; add `b` to `needs`"
        ),
    ];
    assert_eq!(so.lines().collect::<Vec<_>>(), expected, "{so}");
    assert!(se.contains("3 problem(s) found"), "{se}");

    // Running it is refused the same way, before anything is stored.
    let out = env.run(&["run", path_str(&path)]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("reads `inputs.tpoic`"), "{se}");
    assert!(!env.db.exists(), "a refused definition opens no database");
}

#[test]
fn validate_accepts_every_shipped_example() {
    let env = Env::new();
    let mut files: Vec<String> = std::fs::read_dir(examples())
        .expect("examples dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("invalid")))
        .map(|p| path_str(&p).to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = env.run(&args);
    let (so, _) = expect_exit(&out, 0);
    for f in &files {
        assert!(so.lines().any(|l| l.starts_with(&format!("{f}: ok ("))), "{f} not reported ok:\n{so}");
    }
}

#[test]
fn malformed_yaml_is_reported_with_line_and_column() {
    let env = Env::new();
    let bad = env.write("bad.yaml", "name: x\nsteps:\n  - {id: a, kind: echo\n");
    let out = env.run(&["validate", "bad.yaml"]);
    let (so, _) = expect_exit(&out, 2);
    assert!(so.starts_with("bad.yaml:3:"), "a location on the broken line: {so}");
    assert!(so.to_lowercase().contains("unclosed"), "{so}");

    let out = env.run(&["run", path_str(&bad)]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("is not a valid workflow"), "{se}");
    assert!(se.contains(&format!("{}:3:", path_str(&bad))), "{se}");
    assert!(env.runs().is_empty());
}

#[test]
fn missing_file_is_a_clear_usage_error() {
    let env = Env::new();
    let out = env.run(&["validate", "nowhere.yaml"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("nowhere.yaml: cannot read"), "{se}");
    let out = env.run(&["run", "nowhere.yaml"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("cannot read nowhere.yaml"), "{se}");
    assert!(!env.db.exists(), "nothing to run, nothing to store");
}

#[test]
fn running_an_invalid_definition_writes_nothing() {
    let env = Env::new();
    let invalid = examples().join("invalid.yaml");
    let out = env.run(&["run", path_str(&invalid)]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("is not a valid workflow"), "{se}");
    assert!(se.contains("did you mean `mock_model`"), "every problem is listed: {se}");
    assert!(env.runs().is_empty());

    // Same with a database that already holds a run: nothing is added to it.
    let ok = env.write("ok.yaml", "name: ok\nsteps:\n  - {id: a, kind: noop}\n");
    expect_exit(&env.run(&["run", path_str(&ok)]), 0);
    let before = env.only_run();
    let events_before = env.events(&before.id).len();
    expect_exit(&env.run(&["run", path_str(&invalid)]), 2);
    assert_eq!(env.only_run(), before);
    assert_eq!(env.events(&before.id).len(), events_before);
}

// ---------------------------------------------------------------------------------------------
// Ids and databases

#[test]
fn unknown_and_malformed_run_ids_are_usage_errors() {
    let env = Env::new();
    let wf = env.write("wf.yaml", "name: one\nsteps:\n  - {id: a, kind: noop}\n");
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    let unknown = "wf_01XXXXXXXXXXXXXXXXXXXXXXXX";
    for args in [vec!["runs", "show", unknown], vec!["runs", "events", unknown], vec!["export", unknown]] {
        let out = env.run(&args);
        let (so, se) = expect_exit(&out, 2);
        assert!(se.contains(&format!("no run with id {unknown}")), "{args:?}: {se}");
        assert!(se.contains("cairn runs list"), "the message says where to look: {se}");
        assert!(so.is_empty(), "{args:?} printed data for a run that does not exist: {so}");
    }
    let out = env.run(&["runs", "show", "123"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("'123' is not a run id"), "{se}");
    assert!(se.contains("wf_"), "the message shows what an id looks like: {se}");
}

#[test]
fn reading_a_missing_database_is_a_usage_error_with_a_hint() {
    let env = Env::new();
    let out = env.run(&["runs", "list"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains(&format!("no database at {}", env.db.display())), "{se}");
    assert!(se.contains("--db") && se.contains("CAIRN_DB"), "{se}");
    assert!(!env.db.exists(), "reading must not create the database");
}

#[test]
fn a_text_file_as_database_is_refused_with_exit_3() {
    let env = Env::new();
    std::fs::write(&env.db, "hello").expect("write");
    for args in [vec!["runs", "list"], vec!["run", "--goal", "generate summary and send email"]] {
        let out = env.run(&args);
        let (_, se) = expect_exit(&out, 3);
        assert!(se.contains("is not a Cairn database"), "{args:?}: {se}");
        assert!(se.contains("--db"), "the message says how to fix it: {se}");
    }
    assert_eq!(std::fs::read_to_string(&env.db).expect("read"), "hello");
}

#[test]
fn another_applications_sqlite_database_is_refused_and_its_tables_are_untouched() {
    let env = Env::new();
    let tables = |path: &std::path::Path| -> (Vec<String>, Vec<i64>) {
        let conn = rusqlite::Connection::open(path).expect("open");
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master ORDER BY name").expect("prepare");
        let names = stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
        let mut stmt = conn.prepare("SELECT x FROM foo ORDER BY x").expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
        (names, rows)
    };
    {
        let conn = rusqlite::Connection::open(&env.db).expect("create");
        conn.execute_batch("CREATE TABLE foo(x); INSERT INTO foo VALUES (42);").expect("schema");
    }
    let before = tables(&env.db);
    assert_eq!(before, (vec!["foo".to_string()], vec![42]));
    for args in [vec!["runs", "list"], vec!["run", "--goal", "generate summary and send email"]] {
        let out = env.run(&args);
        let (_, se) = expect_exit(&out, 3);
        assert!(se.contains("is not a Cairn database"), "{args:?}: {se}");
        assert!(se.contains("another application"), "{se}");
    }
    assert_eq!(tables(&env.db), before, "no Cairn table was added and no row changed");
    let user_version: i64 = rusqlite::Connection::open(&env.db)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(user_version, 0);
}

#[test]
fn a_locked_database_is_an_environment_error() {
    let env = Env::new();
    let wf = env.write("wf.yaml", "name: one\nsteps:\n  - {id: a, kind: noop}\n");
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    let conn = rusqlite::Connection::open(&env.db).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let out = env.run(&["run", path_str(&wf)]);
    let (_, se) = expect_exit(&out, 3);
    assert!(se.contains("is locked by another process"), "{se}");
    conn.execute_batch("ROLLBACK").expect("release");
    assert_eq!(env.runs().len(), 1, "the locked-out run left nothing behind");
}

// ---------------------------------------------------------------------------------------------
// Flags

#[test]
fn bad_inputs_and_chaos_specs_are_usage_errors() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: needs-topic\ninputs:\n  topic: {description: what to write about}\nsteps:\n  - {id: a, kind: echo, with: {t: \"{{ inputs.topic }}\"}}\n",
    );
    let out = env.run(&["run", path_str(&wf), "--input", "novalue"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("--input 'novalue' is not NAME=VALUE"), "{se}");

    let out = env.run(&["run", path_str(&wf)]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("needs input(s) topic"), "the missing input is named: {se}");

    let out = env.run(&["run", path_str(&wf), "--input", "topic=otters", "--chaos", "seed=1,rate=7"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("--chaos 'seed=1,rate=7'") && se.contains("rate must be between 0 and 1"), "{se}");
    let out = env.run(&["run", path_str(&wf), "--input", "topic=otters", "--chaos", "rate=0.5"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("seed is missing"), "{se}");
    assert!(env.runs().is_empty(), "no run for bad flags");

    let out = env.run(&["run", path_str(&wf), "--input", "topic=otters"]);
    expect_exit(&out, 0);
    let run = env.only_run();
    let hash = env.step(&run.id, "a").output_hash.expect("output");
    let store = env.store();
    assert_eq!(env.block(cairn_store::Journal::payload(&store, &hash)).expect("payload"), Some(json!({"t": "otters"})));
}

// ---------------------------------------------------------------------------------------------
// Machine-readable output

#[test]
fn an_unknown_input_name_is_refused_with_the_declared_names_and_nothing_is_stored() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: needs-topic\ninputs:\n  topic: {default: otters}\nsteps:\n  - {id: a, kind: echo, with: {t: \"{{ inputs.topic }}\"}}\n",
    );
    // A misspelt name would otherwise be ignored and the default used without a word.
    let out = env.run(&["run", path_str(&wf), "--input", "tpoic=beavers"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(
        se.contains("workflow 'needs-topic' has no input(s) `tpoic` (did you mean `topic`?); it declares: topic"),
        "{se}"
    );
    assert!(!env.db.exists(), "refused inputs open no database, so nothing is written");

    // A definition without an `inputs:` block takes none.
    let bare = env.write("bare.yaml", "name: bare\nsteps:\n  - {id: a, kind: noop}\n");
    let out = env.run(&["run", path_str(&bare), "--input", "x=1"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("has no input(s) `x`; it declares no inputs"), "{se}");
    assert!(!env.db.exists(), "refused inputs open no database, so nothing is written");

    // A goal run's implicit `goal` input still works, and an extra name is refused there too.
    let out = env.run(&["run", "--goal", "send email", "--input", "goal=send the report"]);
    expect_exit(&out, 0);
    let out = env.run(&["run", "--goal", "send email", "--input", "topic=x"]);
    let (_, se) = expect_exit(&out, 2);
    assert!(se.contains("has no input(s) `topic`; it declares: goal"), "{se}");
    assert_eq!(env.runs().len(), 1, "only the good goal run was stored");
}

#[test]
fn export_as_json_and_jsonl() {
    let env = Env::new();
    expect_exit(&env.run(&["run", "--goal", "generate summary and send email"]), 0);
    let run = env.only_run();
    let events = env.events(&run.id);

    let out = env.run(&["export", &run.id]);
    let (so, _) = expect_exit(&out, 0);
    let doc: Value = serde_json::from_str(&so).expect("export is JSON");
    assert_eq!(doc["format"], "cairn.run-export");
    assert_eq!(doc["run"]["id"], run.id.as_str());
    let exported = doc["events"].as_array().expect("events");
    assert_eq!(exported.len(), events.len());
    let payloads = doc["payloads"].as_object().expect("payloads");
    for e in &events {
        if let Some(r) = e.event.payload() {
            assert!(payloads.contains_key(&r.hash), "payload {} of event {} not exported", r.hash, e.seq);
        }
    }
    assert_eq!(doc["steps"].as_array().map(Vec::len), Some(2));

    let out = env.run(&["export", &run.id, "--format", "jsonl"]);
    let (so, _) = expect_exit(&out, 0);
    let lines: Vec<Value> =
        so.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert_eq!(lines.len(), events.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["run_id"], run.id.as_str(), "{line}");
        assert_eq!(line["seq"].as_u64(), Some(i as u64 + 1), "{line}");
    }
    assert_eq!(lines.first().map(|l| l["type"].clone()), Some(json!("run_created")));
    assert_eq!(lines.last().map(|l| l["type"].clone()), Some(json!("run_completed")));
}

#[test]
fn runs_list_show_and_events_speak_json() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: one\nsteps:\n  - {id: a, kind: noop}\n  - {id: b, kind: echo, needs: [a], with: {z: 1}}\n",
    );
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    expect_exit(&env.run(&["run", "--goal", "generate summary and send email"]), 0);

    let (so, _) = expect_exit(&env.run(&["runs", "list", "--json"]), 0);
    let list: Value = serde_json::from_str(&so).expect("runs list --json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|r| r["status"] == "COMPLETED" && r["id"].as_str().is_some_and(|s| s.starts_with("wf_"))));
    let id =
        list.iter().find(|r| r["workflow"] == "one").and_then(|r| r["id"].as_str()).expect("the file run").to_string();

    let (so, _) = expect_exit(&env.run(&["runs", "list", "--json", "--status", "failed"]), 0);
    assert_eq!(serde_json::from_str::<Value>(&so).expect("json"), json!([]));

    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--json"]), 0);
    let show: Value = serde_json::from_str(&so).expect("runs show --json");
    assert_eq!(show["run"]["id"], id.as_str());
    assert_eq!(show["steps"].as_array().map(Vec::len), Some(2));

    let (so, _) = expect_exit(&env.run(&["runs", "events", &id, "--json"]), 0);
    let events: Vec<Value> =
        so.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert_eq!(events.len(), env.events(&id).len());
    assert!(events.iter().enumerate().all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1)));
}

// ---------------------------------------------------------------------------------------------
// Chaos

#[test]
fn chaos_with_the_same_seed_fails_the_same_attempts() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: chaos-demo\ndefaults:\n  retry: {max_attempts: 10, initial_delay: 1ms}\nsteps:\n\
         \x20 - {id: a, kind: echo, with: {x: 1}}\n\
         \x20 - {id: b, kind: echo, needs: [a], with: {x: 2}}\n\
         \x20 - {id: c, kind: echo, needs: [a], with: {x: 3}}\n\
         \x20 - {id: d, kind: noop, needs: [b, c]}\n\
         \x20 - {id: e, kind: noop, needs: [d]}\n\
         \x20 - {id: f, kind: noop, needs: [e]}\n",
    );
    let attempts = |env: &Env| -> (String, Vec<(String, u32)>) {
        let out = env.run(&["run", path_str(&wf), "--chaos", "seed=7,rate=0.5"]);
        expect_exit(&out, 0);
        let run = env.runs().into_iter().next().expect("newest run");
        let counts = env.steps(&run.id).into_iter().map(|s| (s.step_id, s.attempts)).collect();
        env.assert_journal_is_sound(&run.id);
        (run.id, counts)
    };
    let (first_id, first) = attempts(&env);
    let (second_id, second) = attempts(&env);
    assert_ne!(first_id, second_id);
    assert_eq!(first, second, "same seed, same failure schedule");
    let total: u32 = first.iter().map(|(_, n)| n).sum();
    assert!(total > first.len() as u32, "chaos at rate 0.5 failed no attempt at all: {first:?}");
    let chaos_failures = env
        .events(&first_id)
        .into_iter()
        .filter(|e| matches!(&e.event, Event::AttemptFailed { failure, .. } if failure.message.contains("seed=7")))
        .count() as u32;
    assert_eq!(chaos_failures, total - first.len() as u32, "every extra attempt was caused by chaos");
}

/// `cairn bench` works end to end on a real file (a smoke test: numbers are not asserted, speed is
/// measured by running the benchmark, never by a timed test).
#[test]
fn bench_runs_every_scenario_and_reports_its_numbers() {
    let env = Env::new();
    let db = env.dir.path().join("bench.db");
    let out = env.run(&[
        "bench",
        "--workflows",
        "20",
        "--sequential",
        "5",
        "--in-flight",
        "5",
        "--bench-db",
        path_str(&db),
        "--json",
    ]);
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("a JSON line per scenario")).collect();
    assert_eq!(lines.len(), 5, "{}", stdout(&out));
    // The machine's own limits first, measured in the same invocation; each result's ratio to them.
    let limits = &lines[0]["limits"];
    assert!(limits["fdatasync_per_s"].as_f64().is_some_and(|v| v > 0.0), "{limits}");
    assert!(limits["sqlite_commits_per_s"].as_f64().is_some_and(|v| v > 0.0), "{limits}");
    for (r, (steps, in_flight)) in lines[1..].iter().zip([(3, 1), (10, 1), (3, 5), (10, 5)]) {
        assert_eq!((r["steps"].as_u64(), r["in_flight"].as_u64()), (Some(steps), Some(in_flight)));
        assert!(r["workflows_per_s"].as_f64().unwrap_or(0.0) > 0.0);
        assert!(r["workflow_p99_ms"].as_f64().unwrap_or(-1.0) >= r["workflow_p50_ms"].as_f64().unwrap_or(0.0));
        assert!(r["ratio_to_commit_limit"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert_eq!(r["p50_in_commit_times"].is_f64(), in_flight == 1, "{r}");
    }
    assert!(stderr(&out).contains("synchronous=FULL"), "the durability mode is printed: {}", stderr(&out));

    // Runs parked on a durable wait, then all signalled: every one completes.
    let parked = env.dir.path().join("park.db");
    let out = env.run(&[
        "bench",
        "--park",
        "--workflows",
        "40",
        "--in-flight",
        "8",
        "--bench-db",
        path_str(&parked),
        "--json",
    ]);
    assert!(out.status.success(), "bench --park failed: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON line");
    assert_eq!((r["shape"].as_str(), r["runs"].as_u64()), (Some("park"), Some(40)), "{r}");
    let store = cairn_store::SqliteStore::open(&parked, cairn_store::Durability::Normal).expect("open");
    let query = cairn_store::RunQuery { status: Some("COMPLETED".into()), limit: 100, ..Default::default() };
    let done = env.block(cairn_store::Journal::list_runs(&store, query)).expect("list");
    assert_eq!(done.len(), 40, "every parked run completed after its signal");

    // Agent runs: every turn and tool call made once (the bench checks), numbers reported.
    let agents = env.dir.path().join("agents").join("agent.db");
    std::fs::create_dir_all(agents.parent().expect("dir")).expect("mkdir");
    let out = env.run(&[
        "bench",
        "--agent",
        "--workflows",
        "12",
        "--in-flight",
        "4",
        "--turns",
        "3",
        "--latency",
        "5ms",
        "--bench-db",
        path_str(&agents),
        "--json",
    ]);
    assert!(out.status.success(), "bench --agent failed: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "the disk's limits, then the result: {text}");
    assert!(lines[0]["limits"]["sqlite_commits_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{text}");
    let r = &lines[1];
    assert_eq!((r["shape"].as_str(), r["model_turns"].as_u64()), (Some("agent"), Some(12 * 4)), "{r}");
    assert!(r["cpu_ms_per_turn"].as_f64().is_some() && r["solo_ms_per_turn"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    // Each against the limits measured in the same run.
    assert!(r["ratio_to_commit_limit"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["solo_turn_in_commit_times"].as_f64().unwrap_or(0.0) > 0.0, "{r}");

    // External workers over HTTP: every workflow completed, the numbers reported.
    let out =
        env.run(&["bench", "--external", "--workflows", "30", "--in-flight", "5", "--external-workers", "2", "--json"]);
    assert!(out.status.success(), "bench --external failed: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON line");
    assert_eq!((r["completed"].as_u64(), r["errors"].as_u64()), (Some(30), Some(0)), "{r}");
    assert!(r["tasks_per_s"].as_f64().unwrap_or(0.0) > 0.0 && r["task_round_trip_p99_ms"].is_number(), "{r}");
}

/// A workflow's own `retention` wins over the default; unfinished runs are never collected.
#[test]
fn per_workflow_retention_decides_when_a_finished_run_is_collected() {
    use cairn_store::Retention;
    let env = Env::new();
    let short = env.write("short.yaml", "name: short\nretention: 1m\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n");
    let plain = env.write("plain.yaml", "name: plain\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n");
    assert!(env.run(&["run", path_str(&short)]).status.success());
    assert!(env.run(&["run", path_str(&plain)]).status.success());
    let store = env.store();
    let now = cairn_engine::now_ms();
    let day = 86_400_000u64;
    // Two minutes later: only the run whose workflow keeps runs for a minute is gone.
    let report = env.block(store.gc(now + 120_000, 30 * day, false)).expect("gc");
    assert_eq!(report.runs, 1, "{report:?}");
    let left: Vec<String> = env.runs().into_iter().map(|r| r.workflow).collect();
    assert_eq!(left, vec!["plain".to_string()]);
    // Past the default retention the other one goes too, with its journal.
    let report = env.block(store.gc(now + (31 * day) as i64, 30 * day, false)).expect("gc");
    assert_eq!(report.runs, 1, "{report:?}");
    assert!(report.events > 0);
    assert!(env.runs().is_empty());
}

/// A request from a process that does not drive runs records the request and hands the run back
/// untouched: it starts no attempt it could not see through, and it never keeps the run.
#[test]
fn steering_from_the_cli_records_the_request_and_hands_the_run_back() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: steer\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: slow, kind: mock_model, needs: [a], with: {prompt: busy, latency: 10s}}\n",
    );
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("step slow to be RUNNING", std::time::Duration::from_secs(20), || {
        env.runs()
            .first()
            .is_some_and(|r| env.steps(&r.id).iter().any(|s| s.step_id == "slow" && s.status == "RUNNING"))
    });
    sigkill(&mut child);
    let id = env.only_run().id;

    let out = env.run(&["runs", "signal", &id, "nudge", "--data", "{\"n\": 1}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = env.events(&id);
    assert!(matches!(events.last().map(|e| &e.event), Some(Event::SignalReceived { .. })), "{}", dump(&events));
    assert_eq!(env.started(&id, "slow"), 1, "the steering process started no attempt");
    let run = env.only_run();
    assert_eq!(run.owner, None, "the run was handed back");
    assert!(run.wake_at_ms.is_some(), "and is due for a worker");

    // An illegal request records nothing, says why, and still leaves the run free.
    let out = env.run(&["runs", "unpause", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not paused (it is EXECUTING)"), "{}", stderr(&out));
    assert_eq!(env.only_run().owner, None);
    assert_eq!(env.events(&id).len(), events.len());
}

/// On PostgreSQL `cairn bench` measures the server's single-row commit rate first and gives each
/// result's ratio to it; the 10-step shapes run with one worker.
#[test]
fn bench_on_postgresql_reports_ratios_to_the_servers_commit_rate() {
    let Some(db) = common::pg::Database::create("bench_limits") else { return };
    let env = Env::new();
    let args = ["--database", &db.url, "bench", "--workflows", "20", "--sequential", "5", "--in-flight", "5", "--json"];
    let out = env.run(&args);
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let limits = &lines[0]["limits"];
    assert!(limits["postgres_commits_per_s"].as_f64().is_some_and(|v| v > 0.0), "{limits}");
    assert_eq!(limits["synchronous_commit"], "on", "{limits}");
    let rows = &lines[1..];
    assert_eq!(rows.len(), 8, "3-step × 2 shapes × 3 worker counts + 10-step × 2: {}", stdout(&out));
    assert_eq!(rows.iter().filter(|r| r["steps"] == 10).count(), 2);
    assert!(rows.iter().all(|r| r["ratio_to_commit_limit"].as_f64().is_some_and(|v| v > 0.0)));
}
