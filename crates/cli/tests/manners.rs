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
            let row = env.block(cairn_store::Journal::get_run(&run, &cairn_core::RunId::parse(&id).expect("id")));
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

// ---------------------------------------------------------------------------------------------
// One step in full, payloads inlined

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// `flaky` fails twice before it succeeds; `send` reads `fetch`'s output.
const FLAKY: &str = "name: flaky\nsteps:\n  - {id: fetch, kind: echo, with: {data: 42}}\n  - id: flaky\n    kind: noop\n    needs: [fetch]\n    inject: {fail_times: 2}\n    retry: {max_attempts: 3, initial_delay: 10ms, jitter: 0}\n  - {id: send, kind: echo, needs: [flaky], with: {got: \"{{ steps.fetch.output.data }}\"}}\n";

fn show_json(env: &Env, id: &str, step: &str) -> serde_json::Value {
    let (so, _) = expect_exit(&env.run(&["runs", "show", id, "--step", step, "--json"]), 0);
    serde_json::from_str(&so).unwrap_or_else(|e| panic!("runs show --json is not JSON ({e}):\n{so}"))
}

#[test]
fn runs_show_step_gives_attempts_errors_waits_and_the_payloads_instead_of_only_hash_and_size() {
    let env = Env::new();
    let wf = env.write("wf.yaml", FLAKY);
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    let id = env.only_run().id;

    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "flaky"]), 0);
    let attempts: Vec<&str> = so.lines().filter(|l| l.starts_with("  #")).collect();
    assert_eq!(attempts.len(), 3, "{so}");
    assert!(
        attempts[0]
            .contains("failed(transient): injected failure (attempt 1 of fail_times=2); waited 10ms for attempt 2/3"),
        "{so}"
    );
    assert!(attempts[1].contains("waited 20ms for attempt 3/3"), "{so}");
    assert!(attempts[2].ends_with(" ok"), "{so}");
    assert!(so.contains("\nstate     COMPLETED\n"), "{so}");

    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "send"]), 0);
    assert!(so.contains("\ninput\n{\n  \"got\": 42\n}\n"), "{so}");
    assert!(so.contains("\noutput\n{\n  \"got\": 42\n}\n"), "{so}");

    // --json: the same as one document, the payloads as the store has them.
    let flaky = show_json(&env, &id, "flaky");
    assert_eq!(flaky["state"], "COMPLETED");
    assert_eq!(flaky["attempts"].as_array().map(Vec::len), Some(3));
    assert_eq!(flaky["attempts"][0]["outcome"], "failed");
    assert_eq!(flaky["attempts"][0]["error"]["class"], "transient");
    assert_eq!(flaky["attempts"][0]["retry"]["delay_ms"], 10);
    assert_eq!(flaky["attempts"][2]["outcome"], "ok");
    let send = show_json(&env, &id, "send");
    assert_eq!(send["input"]["value"], serde_json::json!({"got": 42}));
    let row = env.step(&id, "send");
    assert_eq!(send["output"]["hash"], row.output_hash.as_deref().expect("an output"));
    let stored = env.block(cairn_store::Journal::payload(&env.store(), row.output_hash.as_deref().expect("hash")));
    assert_eq!(Some(&send["output"]["value"]), stored.expect("payload").as_ref());

    // An unknown step is named, with the steps there are.
    let (_, se) = expect_exit(&env.run(&["runs", "show", &id, "--step", "sned"]), 2);
    assert!(se.contains("has no step 'sned' (did you mean 'send'?); its steps: fetch, flaky, send"), "{se}");
}

#[test]
fn runs_show_step_cuts_a_payload_past_64_kib_unless_full() {
    let env = Env::new();
    let id = big_run(&env);
    let text = "x".repeat(200_000);
    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "s0"]), 0);
    assert!(so.len() < 2 * 64 * 1024 + 4096, "printed {} bytes", so.len());
    assert!(
        so.contains("… (cut at 64 KiB of 195 KiB; --full prints it all, --json gives it whole)"),
        "{}",
        &so[so.len() - 300..]
    );
    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "s0", "--full"]), 0);
    assert_eq!(so.matches(&text).count(), 2, "input and output whole");
    assert_eq!(show_json(&env, &id, "s0")["output"]["value"]["text"], text.as_str());
}

#[test]
fn runs_show_step_tells_approvals_skips_fallbacks_and_compensations() {
    let env = Env::new();
    // A gate, decided from another process.
    let wf = env.write(
        "gate.yaml",
        "name: gate\nsteps:\n  - {id: draft, kind: echo, with: {text: hi}}\n  - id: send\n    kind: echo\n    needs: [draft]\n    with: {body: \"{{ steps.draft.output.text }}\"}\n    approval: {prompt: \"Send {{ steps.draft.output.text }}?\", approvers: [ana]}\n  - {id: later, kind: noop, needs: [send], when: \"false\"}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "[step] send=blocked(manual approval)", LONG);
    let id = env.only_run().id;
    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "send"]), 0);
    assert!(
        so.contains("\napproval\n") && so.contains(" asked: Send hi? (approvers: ana)\n  waiting for a decision\n"),
        "{so}"
    );
    expect_exit(&env.run(&["approve", &id, "send", "--by", "ana", "--comment", "fine"]), 0);
    assert!(wait_exit(&mut child, LONG).success());
    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "send"]), 0);
    assert!(so.contains(" approved by ana: fine\n"), "{so}");
    let send = show_json(&env, &id, "send");
    assert_eq!(send["approvals"][0]["decision"], "approved");
    assert_eq!(send["approvals"][0]["prompt"], "Send hi?");
    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "later"]), 0);
    assert!(
        so.contains("\nstate     SKIPPED\n") && so.contains("\nskipped   ") && so.contains("\nattempts  none\n"),
        "{so}"
    );

    // A fallback, then a saga's undo.
    let saga = format!("{EXAMPLES}/fallback_saga.yaml");
    expect_exit(&env.run(&["run", &saga, "--input", "ship=fail"]), 1);
    let id = env.runs().into_iter().find(|r| r.workflow == "order-with-fallbacks").expect("saga run").id;
    let charge = show_json(&env, &id, "charge");
    assert_eq!(charge["state"], "COMPENSATED");
    let undo = &charge["compensation"]["attempts"][0];
    assert_eq!(undo["outcome"], "ok");
    assert_eq!(undo["input"]["value"], serde_json::json!({"refund": 19.5}));
    let (so, _) = expect_exit(&env.run(&["runs", "show", &id, "--step", "charge"]), 0);
    assert!(
        so.contains("\ncompensation\n") && so.contains("\ncompensation input (attempt 1)\n{\n  \"refund\": 19.5\n}"),
        "{so}"
    );
    let live = show_json(&env, &id, "live_price");
    assert_eq!(live["state"], "FAILED");
    assert_eq!(live["attempts"].as_array().map(Vec::len), Some(2));
    assert!(live["last_error"]["message"].as_str().unwrap_or_default().contains("127.0.0.1:1"), "{live}");
}

/// Every `{hash, size}` inside `v` has its payload beside it.
fn assert_refs_inlined(v: &serde_json::Value, seen: &mut usize) {
    match v {
        serde_json::Value::Object(m) if m.contains_key("hash") && m.contains_key("size") => {
            assert!(m.contains_key("value"), "a reference left without its payload: {v}");
            *seen += 1;
        }
        serde_json::Value::Object(m) => m.values().for_each(|v| assert_refs_inlined(v, seen)),
        serde_json::Value::Array(a) => a.iter().for_each(|v| assert_refs_inlined(v, seen)),
        _ => {}
    }
}

#[test]
fn runs_events_payloads_inlines_each_reference_instead_of_only_hash_and_size() {
    let env = Env::new();
    let wf = env.write("wf.yaml", FLAKY);
    expect_exit(&env.run(&["run", path_str(&wf)]), 0);
    let id = env.only_run().id;
    let (so, _) = expect_exit(&env.run(&["runs", "events", &id, "--payloads", "--json"]), 0);
    let mut refs = 0;
    for line in so.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("one JSON event per line");
        assert_refs_inlined(&event, &mut refs);
        if event["type"] == "attempt_succeeded" && event["step"] == "send" {
            assert_eq!(event["output"]["value"], serde_json::json!({"got": 42}), "{line}");
        }
        if event["type"] == "plan_recorded" {
            assert_eq!(event["definition"]["value"]["name"], "flaky", "{line}");
        }
    }
    assert!(refs >= 10, "only {refs} references in:\n{so}");
    assert_eq!(so.lines().count(), env.events(&id).len());
    let (so, _) = expect_exit(&env.run(&["runs", "events", &id, "--payloads"]), 0);
    assert!(so.contains("\"value\":{\"got\":42}"), "{so}");
    // Without --payloads the journal is as stored.
    let (so, _) = expect_exit(&env.run(&["runs", "events", &id]), 0);
    assert!(!so.contains("\"value\""), "{so}");

    // A long payload is cut in the text view, whole with --full or --json.
    let env = Env::new();
    let id = big_run(&env);
    let (so, _) = expect_exit(&env.run(&["runs", "events", &id, "--payloads"]), 0);
    assert!(so.contains("\"cut\":\"195 KiB of JSON; --full prints it\""), "long payloads are cut");
    assert!(!so.contains(&"x".repeat(100_000)));
    let (so, _) = expect_exit(&env.run(&["runs", "events", &id, "--payloads", "--full"]), 0);
    // In the plan's definition, the attempt's input and output, and the run's output.
    assert_eq!(so.matches(&"x".repeat(200_000)).count(), 4, "every one whole");
}

// ---------------------------------------------------------------------------------------------
// Help

/// The subcommands a `--help` text lists (without `help` itself).
fn subcommands(help: &str) -> Vec<String> {
    let Some(start) = help.find("\nCommands:\n") else { return Vec::new() };
    help[start + "\nCommands:\n".len()..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_command_help_has_an_example() {
    let env = Env::new();
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    let mut checked = Vec::new();
    let mut missing = Vec::new();
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (help, _) = expect_exit(&env.run(&args), 0);
        if !help.contains("\nExample") {
            missing.push(format!("cairn {}", path.join(" ")));
        }
        for sub in subcommands(&help) {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
        checked.push(path.join(" "));
    }
    assert!(checked.len() > 30, "only {} commands found: {checked:?}", checked.len());
    for known in ["runs show", "runs events", "tokens list", "replay", "plan"] {
        assert!(checked.iter().any(|c| c == known), "{known} not reached: {checked:?}");
    }
    assert!(missing.is_empty(), "no example in the help of: {}", missing.join(", "));
}
