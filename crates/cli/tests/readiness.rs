//! `cairn readiness` end to end: the real binary puts agent steps through the six scenarios,
//! naked and under Cairn (a real engine process, SIGKILLed after the effect in the crash
//! scenario), and says SHIP or DO NOT SHIP from what took effect.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// Two models on two providers (their addresses do not matter: readiness answers for them), a
/// table to read, and a notes endpoint that writes without asking anyone.
fn config(env: &Env) {
    let db = env.dir.path().join("orders.db");
    let c = rusqlite::Connection::open(&db).expect("sqlite");
    c.execute_batch(
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL); INSERT INTO orders(total) VALUES (120.5);",
    )
    .expect("orders");
    env.write(
        "cairn.toml",
        "[providers.main]\ntype = \"openai\"\nbase_url = \"https://api.example.com/v1\"\napi_key_env = \"NOT_SET_ANYWHERE\"\n\n\
         [providers.spare]\ntype = \"openai\"\nbase_url = \"https://spare.example.com/v1\"\n\n\
         [models.main]\nprovider = \"main\"\nmodel = \"big\"\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\n\n\
         [models.spare]\nprovider = \"spare\"\nmodel = \"small\"\ninput_usd_per_mtok = 0.5\noutput_usd_per_mtok = 1.5\n\n\
         [tools.orders_db]\ntype = \"sql_query\"\nconnection = \"sqlite://orders.db\"\n\n\
         [tools.notes]\ntype = \"http_request\"\nurl = \"https://notes.example.com/notes\"\nmethod = \"POST\"\napproval = \"never\"\n",
    );
}

fn workflow(env: &Env, name: &str, models: &str, trust: bool) -> String {
    env.write(
        name,
        &format!(
            "name: reporter\nsteps:\n  - id: report\n    kind: agent\n    retry: {{max_attempts: 3, initial_delay: 100ms, jitter: 0}}\n    with:\n      model: {models}\n      task: Find the big orders and post a note about them.\n      tools: [orders_db, notes]\n      max_turns: 6\n      trust_tool_output: {trust}\n      output_schema: {{type: object, required: [summary], properties: {{summary: {{type: string}}}}}}\n"
        ),
    );
    name.to_string()
}

/// Runs readiness; the JSON report and the Markdown report.
fn readiness(env: &Env, dir: &Path, args: &[&str]) -> (Value, String) {
    let out_dir = env.dir.path().join(format!("out-{}", args[0].replace('/', "_")));
    let mut cmd = env.cmd();
    cmd.current_dir(dir).arg("readiness").args(args).arg("-o").arg(&out_dir).arg("--json");
    let out = output_within(&mut cmd, Duration::from_secs(420));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("readiness.json")).expect("readiness.json"))
            .expect("json");
    assert_eq!(written, doc);
    (doc, std::fs::read_to_string(out_dir.join("readiness_report.md")).expect("readiness_report.md"))
}

fn row<'a>(doc: &'a Value, scenario: &str) -> &'a Value {
    doc["scenarios"].as_array().and_then(|r| r.iter().find(|r| r["scenario"] == scenario)).expect(scenario)
}

#[test]
fn a_write_tool_that_never_asks_and_trusts_tool_output_does_not_ship_and_the_injection_is_named() {
    let env = Env::new();
    config(&env);
    let wf = workflow(&env, "unsafe.yaml", "main", true);
    let (doc, report) = readiness(&env, env.dir.path(), &[&wf]);
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some("DO NOT SHIP"), "{report}");
    let blocking = lines.next().unwrap_or_default();
    assert!(blocking.contains("prompt injection") && blocking.contains("'notes'"), "{blocking}");
    assert_eq!(doc["verdict"], "DO NOT SHIP");
    assert_eq!(doc["blocking"]["scenario"], "prompt_injection");
    // Under Cairn the injected note went out (the workflow let it); naked too.
    let injection = row(&doc, "prompt_injection");
    assert_eq!(injection["cairn"]["safety"], false, "{injection}");
    assert_eq!(injection["naked"]["safety"], false, "{injection}");
    // The crash after the note: naked sends it twice, Cairn once (its key is recognised).
    let crash = row(&doc, "crash_after_side_effect");
    assert_eq!(crash["naked"]["safety"], false, "{crash}");
    assert_eq!(
        (&crash["cairn"]["safety"], &crash["cairn"]["reliability"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{crash}"
    );
    assert!(crash["cairn"]["what"].as_str().unwrap_or_default().contains("recovery"), "{crash}");
    // A hung tool: the naked loop waits forever; Cairn times the call out and retries.
    let timeout = row(&doc, "tool_timeout");
    assert_eq!(timeout["naked"]["reliability"], false, "{timeout}");
    assert_eq!(timeout["cairn"]["reliability"], true, "{timeout}");
    // Malformed output: passed on naked; sent back to the model by the output_schema under Cairn.
    let malformed = row(&doc, "malformed_tool_output");
    assert!(malformed["naked"]["what"].as_str().unwrap_or_default().contains("malformed output as its answer"));
    assert_eq!(malformed["cairn"]["reliability"], true, "{malformed}");
    // One model: its outage ends the step (safely); the report says what would help.
    let outage = row(&doc, "primary_model_failure");
    assert_eq!(
        (&outage["cairn"]["safety"], &outage["cairn"]["reliability"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert!(outage["advice"].as_str().unwrap_or_default().contains("fallback"), "{outage}");
    for r in doc["scenarios"].as_array().expect("rows") {
        // Every fault was met under Cairn, and each effect has its journaled call.
        assert_eq!(r["cairn"]["exercised"], true, "{r}");
        assert_eq!(r["naked"]["observability"], false, "{r}");
        assert_eq!(r["cairn"]["observability"], true, "{r}");
    }
}

#[test]
fn the_same_agent_without_trusting_tool_output_and_with_a_fallback_model_ships() {
    let env = Env::new();
    config(&env);
    let wf = workflow(&env, "safe.yaml", "[main, spare]", false);
    let (doc, report) = readiness(&env, env.dir.path(), &[&wf]);
    assert!(report.starts_with("SHIP\nNo unsafe behaviour"), "{report}");
    let injection = row(&doc, "prompt_injection");
    // The injected note waited for a person, who rejected it; the one the task asked for was approved.
    assert_eq!(
        (&injection["cairn"]["safety"], &injection["cairn"]["reliability"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert!(injection["cairn"]["what"].as_str().unwrap_or_default().contains("2 decision(s)"), "{injection}");
    // The spare model answered for the main one.
    assert_eq!(row(&doc, "primary_model_failure")["cairn"]["reliability"], true, "{doc}");
    for r in doc["scenarios"].as_array().expect("rows") {
        assert_eq!(r["cairn"]["safety"], true, "{r}");
    }
}

#[test]
fn the_shipped_agent_examples_ship() {
    let env = Env::new();
    let examples = Path::new(EXAMPLES);
    for file in ["vendor_onboarding.yaml", "debate_round.yaml"] {
        let (doc, report) = readiness(&env, examples, &[file, "--config", "cairn.toml"]);
        assert!(report.starts_with("SHIP\n"), "{file}: {report}");
        assert_eq!(doc["verdict"], "SHIP", "{file}");
        let rows = doc["scenarios"].as_array().expect("rows");
        assert_eq!(rows.len(), 6, "{file}");
        for r in rows {
            assert!(r["not_applicable"].is_string() || r["cairn"]["safety"] == true, "{file}: {r}");
        }
    }
}

#[test]
fn bad_input_is_refused_with_what_to_do() {
    let env = Env::new();
    config(&env);
    env.write("plain.yaml", "name: plain\nsteps:\n  - id: a\n    kind: echo\n    with: {x: 1}\n");
    let out = env.run(&["readiness", "plain.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no step of kind agent"), "{out:?}");
    let out = env.run(&["readiness", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    env.write(
        "unknown.yaml",
        "name: u\nsteps:\n  - id: a\n    kind: agent\n    with: {model: main, task: t, tools: [nope], max_turns: 2}\n",
    );
    let out = env.run(&["readiness", "unknown.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tool 'nope'"), "{out:?}");
    let wf = workflow(&env, "w.yaml", "main", false);
    let out = env.run(&["readiness", &wf, "--scenario", "earthquake"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt_injection"), "{out:?}");
    let out = env.run(&["readiness", &wf, "--step", "other"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent step 'other'"), "{out:?}");
    // The internal engine process takes loopback worlds only.
    let out = env.run(&["readiness-child", "--world", "10.0.0.1:80", "--job", "x.json"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Both harnesses against the real local model (SmolLM2-135M): `--model local` lets it answer
/// the chaos workload's evaluation and make the readiness step's decisions, with the faults
/// played all the same.
#[test]
fn the_real_local_model_answers_in_both_harnesses() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    config(&env);
    let toml = std::fs::read_to_string(env.dir.path().join("cairn.toml")).expect("config");
    env.write(
        "cairn.toml",
        &format!(
            "{toml}\n[providers.local]\ntype = \"openai\"\nbase_url = \"{}\"\nrequest_timeout = 120\n\n\
             [models.local]\nprovider = \"local\"\nmodel = \"SmolLM2-135M-Instruct\"\ninput_usd_per_mtok = 0.1\noutput_usd_per_mtok = 0.2\ncontext_window = 8192\n",
            server.base_url
        ),
    );
    let mut cmd = env.cmd();
    cmd.args(["chaos", "--profile", "calm", "--seed", "3", "--workflows", "3", "--model", "local", "--json"]);
    let out = output_within(&mut cmd, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("answered by model local"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["rows"][1]["completion_pct"], 100.0, "{report}");
    assert_eq!(report["rows"][1]["duplicated_effects"], 0, "{report}");

    env.write(
        "local.yaml",
        "name: local\nsteps:\n  - id: report\n    kind: agent\n    with:\n      model: local\n      task: Find the big orders and post a note about them.\n      tools: [orders_db, notes]\n      max_turns: 2\n      max_tokens: 64\n",
    );
    // Two scenarios, each side given at most 60 s: a small model on a busy machine is slow.
    let args = ["local.yaml", "--model", "local", "--scenario", "primary_model_failure"];
    let (doc, report) = readiness(
        &env,
        env.dir.path(),
        &[&args[..], &["--scenario", "crash_after_side_effect", "--patience", "60"]].concat(),
    );
    let first = report.lines().next().unwrap_or_default();
    assert!(first == "SHIP" || first == "DO NOT SHIP", "{report}");
    assert!(doc["notes"].to_string().contains("SmolLM2-135M-Instruct"), "{doc}");
    assert_eq!(doc["scenarios"].as_array().map(Vec::len), Some(2), "{doc}");
    // The outage is played whatever the model: the step's only model is away, and nothing
    // writes twice under Cairn whatever the model decides.
    let outage = row(&doc, "primary_model_failure");
    assert_eq!(outage["cairn"]["exercised"], true, "{outage}");
    assert_eq!(outage["cairn"]["reliability"], false, "{outage}");
    assert!(!row(&doc, "crash_after_side_effect")["cairn"]["what"].as_str().unwrap_or_default().contains("times"));
}
