//! CLI manners: a closed pipe ends a command quietly, progress lines carry real durations,
//! unknown steps are named, a printed plan runs as written, a step can be inspected with its
//! payloads, and every command's help has an example.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Output, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// Asserts the exit code and that nothing panicked; returns (stdout, stderr).
#[track_caller]
fn expect_exit(out: &Output, code: i32) -> (String, String) {
    let (so, se) = (stdout(out), stderr(out));
    assert_eq!(out.status.code(), Some(code), "expected exit {code}\n--- stdout\n{so}\n--- stderr\n{se}");
    assert!(!se.contains("panicked"), "cairn panicked:\n{se}");
    (so, se)
}

// ---------------------------------------------------------------------------------------------
// A reader that goes away

/// A run whose journal and export are each larger than a pipe's buffer (64 KiB), so a reader
/// that stops after one line really cuts the writer off: 400 steps, one with a 200 KB output.
fn big_run(env: &Env) -> String {
    let mut yaml = String::from("name: big\nsteps:\n");
    yaml.push_str(&format!("  - {{id: s0, kind: echo, with: {{text: \"{}\"}}}}\n", "x".repeat(200_000)));
    for i in 1..400 {
        yaml.push_str(&format!("  - {{id: s{i}, kind: noop}}\n"));
    }
    let wf = env.write("big.yaml", &yaml);
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    env.only_run().id
}

/// Runs cairn with nobody reading its stdout at all: the pipe's read end is closed before the
/// process starts, so its very first write fails.
fn with_no_reader(env: &Env, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = env.cmd().args(args).stdout(writer).stderr(Stdio::piped()).spawn().expect("spawn");
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_exit(&mut child, LONG);
    Output { status, stdout: Vec::new(), stderr: err.join().expect("stderr reader") }
}

fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

/// `cairn ARGS | head -1`: reads one line of stdout, closes the pipe, and waits for the exit.
fn with_head_1(env: &Env, args: &[&str]) -> Output {
    let mut child = env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let err = drain(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("read one line");
    assert!(!first.is_empty(), "cairn {args:?} printed nothing");
    let status = wait_exit(&mut child, LONG);
    Output { status, stdout: first.into_bytes(), stderr: err.join().expect("stderr reader") }
}

#[track_caller]
fn assert_quiet_exit(out: &Output, what: &str) {
    let se = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{what}: exit {:?}, stderr:\n{se}", out.status.code());
    assert!(!se.contains("panicked") && !se.contains("Broken pipe"), "{what}: stderr:\n{se}");
}

#[test]
fn commands_piped_into_a_reader_that_closes_exit_quietly_instead_of_panicking() {
    let env = Env::new();
    let id = big_run(&env);
    let commands: [&[&str]; 4] = [&["runs", "list"], &["runs", "events", &id], &["export", &id], &["plan", "--list"]];
    for args in commands {
        assert_quiet_exit(&with_no_reader(&env, args), &format!("cairn {} with no reader", args.join(" ")));
    }
    // Outputs larger than the pipe's buffer, read one line at a time by `head -1`.
    for args in [&["runs", "events", &id][..], &["export", &id]] {
        let whole = env.run(args);
        assert!(whole.stdout.len() > 128 * 1024, "cairn {args:?} prints only {} bytes", whole.stdout.len());
        assert_quiet_exit(&with_head_1(&env, args), &format!("cairn {} | head -1", args.join(" ")));
    }
}

// ---------------------------------------------------------------------------------------------
// Durations of runs this process did not create

/// The `[workflow] …` line that ends the run, and the run's lifetime as the store has it
/// (`cairn runs list` shows the same).
fn last_workflow_line(se: &str, prefix: &str) -> String {
    se.lines()
        .rfind(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{se}"))
        .to_string()
}

fn lifetime(env: &Env) -> String {
    let run = env.only_run();
    let finished = run.finished_at_ms.expect("a finished run");
    cairn_core::duration::format_ms((finished - run.created_at_ms).max(0) as u64)
}

#[test]
fn a_resumed_run_says_how_long_it_took_instead_of_completed_in_nothing() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: resumed\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: b, kind: echo, needs: [a], with: {y: 2}}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "b")]);
    wait_line(&lines, "[debug] holding after activity b", LONG);
    sigkill(&mut child);
    let (_, se) = expect_exit(&env.run(&["resume"]), 0);
    let line = last_workflow_line(&se, "[workflow] completed");
    assert_eq!(line, format!("[workflow] completed in {}", lifetime(&env)), "{se}");
}

#[test]
fn a_run_retried_in_place_says_how_long_it_took_instead_of_failed_after_nothing() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: refused\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: pay, kind: fail, needs: [a], with: {class: permanent, message: refused}}\n",
    );
    expect_exit(&env.run(&["run", path_str(&wf)]), 1);
    let id = env.only_run().id;
    let (_, se) = expect_exit(&env.run(&["runs", "retry", &id]), 1);
    let line = last_workflow_line(&se, "[workflow] failed");
    assert_eq!(line, format!("[workflow] failed after {}: step 'pay' failed: refused", lifetime(&env)), "{se}");
}

// ---------------------------------------------------------------------------------------------
// Naming a step that is not there

/// `report` is skipped, so it never ran and wrote no log lines.
const THREE_STEPS: &str = "name: three\nsteps:\n  - {id: fetch, kind: echo, with: {x: 1}}\n  - {id: send_email, kind: noop, needs: [fetch]}\n  - {id: report, kind: noop, needs: [send_email], when: \"false\"}\n";

#[test]
fn runs_logs_of_an_unknown_step_exits_2_naming_the_steps_instead_of_printing_nothing() {
    let env = Env::new();
    let wf = env.write("wf.yaml", THREE_STEPS);
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    let id = env.only_run().id;

    let (so, se) = expect_exit(&env.run(&["runs", "logs", &id, "--step", "nope"]), 2);
    assert_eq!(so, "");
    assert_eq!(se.trim_end(), format!("error: run {id} has no step 'nope'; its steps: fetch, send_email, report"));
    let (_, se) = expect_exit(&env.run(&["runs", "logs", &id, "--step", "send_emial"]), 2);
    assert!(
        se.contains("has no step 'send_emial' (did you mean 'send_email'?); its steps: fetch, send_email, report"),
        "{se}"
    );

    // A step that exists but wrote nothing says so, and is not an error.
    let (so, se) = expect_exit(&env.run(&["runs", "logs", &id, "--step", "report"]), 0);
    assert_eq!(so, "");
    assert_eq!(se.trim_end(), format!("step 'report' of run {id} has no log lines"));
    let (so, _) = expect_exit(&env.run(&["runs", "logs", &id, "--step", "send_email"]), 0);
    assert!(so.contains(" send_email #1 info  attempt 1 started"), "{so}");
    // An unknown run is refused too, not listed as empty.
    let (_, se) = expect_exit(&env.run(&["runs", "logs", "wf_01M8K1QHTEB70DKVZ4F1EPVQY0"]), 2);
    assert!(se.contains("wf_01M8K1QHTEB70DKVZ4F1EPVQY0"), "{se}");
}

// ---------------------------------------------------------------------------------------------
// A printed plan is a runnable definition

/// The example goal of every entry `cairn plan --list` shows.
fn catalog_goals(env: &Env) -> Vec<String> {
    let (so, _) = expect_exit(&env.run(&["plan", "--list"]), 0);
    let goals: Vec<String> =
        so.lines().filter_map(|l| l.split("(e.g. \"").nth(1)?.split('"').next().map(String::from)).collect();
    assert!(goals.len() >= 10, "too few goals in:\n{so}");
    goals
}

/// `cairn run FILE` to its end, approving every approval gate it stops at from another process
/// (as a person would); returns the run's id.
fn run_approving(env: &Env, file: &str) -> String {
    let (mut child, lines) = env.spawn(&["run", file], &[]);
    let mut id = String::new();
    let mut seen = Vec::new();
    loop {
        let line =
            lines.recv_timeout(LONG).unwrap_or_else(|_| panic!("cairn run {file} went quiet:\n{}", seen.join("\n")));
        if let Some(rest) = line.strip_prefix("[workflow] id=") {
            id = rest.split_whitespace().next().unwrap_or_default().to_string();
        }
        if let Some(step) = line.strip_prefix("[step] ").and_then(|l| l.split_once("=blocked(manual approval)")) {
            let approve = env.run(&["approve", &id, step.0]);
            assert!(approve.status.success(), "{}", stderr(&approve));
        }
        let done = line.starts_with("[workflow] completed") || line.starts_with("[workflow] failed");
        seen.push(line);
        if done {
            break;
        }
    }
    let status = wait_exit(&mut child, LONG);
    assert!(status.success(), "cairn run {file}: {status:?}\n{}", seen.join("\n"));
    id
}

#[test]
fn a_plan_printed_for_every_catalog_goal_validates_and_runs_as_written() {
    let env = Env::new();
    for (n, goal) in catalog_goals(&env).iter().enumerate() {
        for format in ["yaml", "json"] {
            let (text, _) = expect_exit(&env.run(&["plan", "--goal", goal, "--format", format]), 0);
            let file = env.write(&format!("plan{n}.{format}"), &text);
            let (so, _) = expect_exit(&env.run(&["validate", path_str(&file)]), 0);
            assert!(so.contains(": ok ("), "{so}");
            let id = run_approving(&env, path_str(&file));
            let run = env.store();
            let row = env.block(cairn_store::Store::get_run(&run, &cairn_core::RunId::parse(&id).expect("id")));
            assert_eq!(row.expect("run").status, "COMPLETED", "{goal} ({format})");
            // The run is the plan: the same steps as running the goal itself.
            let planned: Vec<String> = match format {
                "json" => serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["steps"]
                    .as_array()
                    .expect("steps")
                    .iter()
                    .map(|s| s["id"].as_str().unwrap_or_default().to_string())
                    .collect(),
                _ => text.lines().filter_map(|l| l.strip_prefix("  - id: ")).map(String::from).collect(),
            };
            let ran: Vec<String> = env.steps(&id).into_iter().map(|s| s.step_id).collect();
            assert_eq!(ran, planned, "{goal} ({format})");
            assert!(!planned.is_empty());
        }
        // --json is for machines: its definition is that same document.
        let (text, _) = expect_exit(&env.run(&["plan", "--goal", goal, "--json"]), 0);
        let machine: serde_json::Value = serde_json::from_str(&text).expect("plan --json is JSON");
        let (printed, _) = expect_exit(&env.run(&["plan", "--goal", goal, "--format", "json"]), 0);
        assert_eq!(machine["definition"], serde_json::from_str::<serde_json::Value>(&printed).expect("JSON"));
        assert_eq!(machine["goal"], goal.as_str());
    }
}

#[test]
fn plan_json_output_was_refused_by_validate_for_an_unknown_field_format() {
    let env = Env::new();
    let goal = "summarize the report but do not send email";
    let (text, _) = expect_exit(&env.run(&["plan", "--goal", goal, "--json"]), 0);
    let machine: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(machine["plan"], serde_json::json!(["generate_summary"]));
    assert_eq!(machine["left_out"], serde_json::json!([{"entry": "send_email", "because": "do not send email"}]));
    let file = env.write("def.json", &serde_json::to_string_pretty(&machine["definition"]).expect("text"));
    let (so, _) = expect_exit(&env.run(&["validate", path_str(&file)]), 0);
    assert!(so.contains("ok (goal-summarize-the-report-but-do-not-send v1, 1 steps)"), "{so}");
    // The provenance travels with the file.
    let (yaml, _) = expect_exit(&env.run(&["plan", "--goal", goal, "--format", "yaml"]), 0);
    assert!(
        yaml.contains(
            "\ndescription: \"Planned from the goal \\\"summarize the report but do not send email\\\" (matched: \
             generate_summary; left out: send_email (\\\"do not send email\\\"))\"\n"
        ),
        "{yaml}"
    );
    let (_, se) = expect_exit(&env.run(&["plan", "--goal", goal, "--format", "yaml", "--json"]), 2);
    assert!(se.contains("cannot be used with"), "{se}");
}
