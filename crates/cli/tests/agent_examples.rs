//! The agent examples of `examples/` run as written, offline on the scripted `mock` model, from a
//! copy of the directory (the mail gateway and help centre replaced by a recorder on loopback):
//! the router skips the branch not taken with its reason, the debate's rounds are loop
//! iterations, the onboarding agent's write waits for a person and is written as edited, the
//! inbox's sends wait and only the approved one is sent. Every run left replays without
//! divergence (checked when each test's `Env` is dropped).

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
const LONG: Duration = Duration::from_secs(30);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else if !entry.file_name().to_string_lossy().starts_with("cairn.db") {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// A copy of `examples/` in the test's directory, its services at `addr`.
fn examples(env: &Env, addr: &str) {
    copy_dir(Path::new(EXAMPLES), env.dir.path());
    let _ = std::fs::remove_file(env.dir.path().join("sandbox/out/onboarding_decision.json"));
    let config = std::fs::read_to_string(env.dir.path().join("cairn.toml")).expect("config");
    env.write("cairn.toml", &config.replace("127.0.0.1:9010", addr));
}

fn last_run(env: &Env, workflow: &str) -> String {
    env.runs().into_iter().find(|r| r.workflow == workflow).map(|r| r.id).expect("a run")
}

fn output(env: &Env, id: &str, step: &str) -> Value {
    let shown: Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", id, "--step", step, "--json"]))).expect("json");
    shown["output"]["value"].clone()
}

#[test]
fn research_fetches_the_pages_found_side_by_side_and_summarises_them_under_a_budget() {
    let env = Env::new();
    examples(&env, "127.0.0.1:9");
    let out = env.run(&["run", "research.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = last_run(&env, "research");
    assert_eq!(output(&env, &id, "fetch").as_array().map(Vec::len), Some(3), "three pages match the topic");
    assert!(output(&env, &id, "summary")["text"].as_str().unwrap_or_default().contains("idempotency keys"));
    let ledgers: Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "context", &id, "--step", "summary", "--json"])))
            .expect("json");
    let refs: Vec<&str> = ledgers[0]["ledger"]["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter(|c| c["selected"] == true)
        .filter_map(|c| c["ref"].as_str())
        .collect();
    assert_eq!(refs.len(), 3, "{ledgers}");
    assert!(refs.contains(&"pages#pages/journaling.md"), "{refs:?}");
}

#[test]
fn the_router_takes_one_branch_and_skips_the_other_with_the_models_reason_journaled() {
    let env = Env::new();
    examples(&env, "127.0.0.1:9");
    let out = env.run(&["run", "customer_service.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = last_run(&env, "customer-service");
    let choice = output(&env, &id, "classify")["json"].clone();
    assert_eq!(choice["intent"], "order");
    assert!(choice["rationale"].as_str().is_some_and(|r| !r.is_empty()), "{choice}");
    let skipped = env.step(&id, "query_knowledge");
    assert_eq!(skipped.status, "SKIPPED");
    assert!(
        skipped.skip_reason.unwrap_or_default().contains("intent == 'knowledge'"),
        "the reason names the condition"
    );
    assert_eq!(env.step(&id, "query_order").status, "COMPLETED");
    let gathered = output(&env, &id, "aggregate");
    assert_eq!(gathered["orders"]["row_count"], 2, "{gathered}");
    assert_eq!(env.step(&id, "reply").status, "COMPLETED");
    // The other branch: a general question goes to the help centre.
    let (addr, seen) = recorder(&[]);
    examples(&env, &addr);
    let out = env.run(&["run", "customer_service.yaml", "--input", "message=How do I return a kettle?"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other = env.runs().into_iter().find(|r| r.workflow == "customer-service" && r.id != id).expect("run").id;
    assert_eq!(env.step(&other, "query_order").status, "SKIPPED");
    assert_eq!(env.step(&other, "query_knowledge").status, "COMPLETED");
    let asked = seen.lock().expect("seen").clone();
    assert!(asked.len() == 1 && asked[0].method == "GET" && asked[0].path.starts_with("/kb?q=How"), "{asked:?}");
    assert!(output(&env, &other, "reply")["text"].as_str().unwrap_or_default().contains("returned within 30 days"));
}

#[test]
fn the_debate_runs_its_rounds_as_loop_iterations_and_a_judge_decides() {
    let env = Env::new();
    examples(&env, "127.0.0.1:9");
    let out = env.run(&["run", "debate.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = last_run(&env, "debate");
    let steps: Vec<String> = env.steps(&id).into_iter().map(|s| s.step_id).collect();
    assert!(steps.contains(&"rounds#1".to_string()) && steps.contains(&"rounds#2".to_string()), "{steps:?}");
    // The last round's answers, by debater; the skeptic changed its mind in round 2.
    let last = output(&env, &id, "rounds");
    assert_eq!(last["answers"]["skeptic"]["answer"], "yes", "{last}");
    let verdict = output(&env, &id, "judge")["json"].clone();
    assert_eq!((verdict["winner"].as_str(), verdict["answer"].as_str()), (Some("engineer"), Some("yes")));
    // Round 2's debaters saw round 1's answers.
    let rounds = env.runs().into_iter().filter(|r| r.workflow == "debate-round").count();
    assert_eq!(rounds, 2);
}

#[test]
fn the_onboarding_agents_write_waits_for_a_person_and_is_written_as_edited() {
    let env = Env::new();
    examples(&env, "127.0.0.1:9");
    let (mut child, lines) = env.spawn(&["run", "vendor_onboarding.yaml"], &[]);
    wait_line(&lines, "blocked(tool call approval)", LONG);
    sigkill(&mut child);
    let id = last_run(&env, "vendor-onboarding");
    let decision = env.dir.path().join("sandbox/out/onboarding_decision.json");
    assert!(!decision.exists(), "nothing written before the approval");
    let listed: Value = serde_json::from_str(&stdout(&env.run(&["approvals", "--json"]))).expect("json");
    assert_eq!(listed[0]["call"]["tool"], "decisions");
    assert!(listed[0]["call"]["reason"].as_str().unwrap_or_default().contains("the model says: record the decision"));
    let edited = r#"{"op": "write", "path": "onboarding_decision.json", "content": "{\"vendor\": \"Acme Tools Ltd\", \"decision\": \"review\"}"}"#;
    let out = env.run(&["approve", &id, "onboard", "--args", edited, "--by", "ops", "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["resume", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&decision).expect("the decision file");
    assert!(written.contains("\"review\""), "written as edited: {written}");
    let result = output(&env, &id, "onboard");
    assert_eq!((result["final"]["vendor"].as_str(), result["tool_calls"].as_u64()), (Some("Acme Tools Ltd"), Some(3)));
}

#[test]
fn the_inbox_skips_spam_and_sends_only_the_reply_a_person_approved() {
    let (addr, seen) = recorder(&[]);
    let env = Env::new();
    examples(&env, &addr);
    let (mut child, lines) = env.spawn(&["run", "inbox_triage.yaml"], &[]);
    wait_for("two sends waiting", LONG, || {
        let listed: Value = serde_json::from_str(&stdout(&env.run(&["approvals", "--json"]))).unwrap_or(Value::Null);
        listed.as_array().is_some_and(|l| l.len() == 2)
    });
    sigkill(&mut child);
    drop(lines);
    assert!(seen.lock().expect("seen").is_empty(), "nothing sent before a person decided");
    let listed: Value = serde_json::from_str(&stdout(&env.run(&["approvals", "--json"]))).expect("json");
    for waiting in listed.as_array().expect("list") {
        let run = waiting["run_id"].as_str().unwrap_or_default();
        let to = waiting["call"]["args"]["body"]["to"].as_str().unwrap_or_default();
        let out = if to == "ann@example.com" {
            env.run(&["approve", run, "send", "--by", "ops", "--detach"])
        } else {
            env.run(&["reject", run, "send", "--by", "ops", "--reason", "a person will call Bob", "--detach"])
        };
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The rejected send fails its email's run, and so the triage (the other emails go on).
    let out = env.run(&["resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let sent = seen.lock().expect("seen").clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].body.contains("ann@example.com") && sent[0].body.contains("refunded"), "{sent:?}");
    assert!(sent[0].key.as_deref().is_some_and(|k| k.ends_with("/send/call-1")), "{sent:?}");
    let children: Vec<_> = env.runs().into_iter().filter(|r| r.workflow == "triage-one").collect();
    assert_eq!(children.len(), 3);
    let spam = children.iter().find(|r| env.step(&r.id, "draft").status == "SKIPPED").expect("the spam");
    assert_eq!(env.step(&spam.id, "send").status, "SKIPPED");
    // The drafts' context: the handbook and the sender's orders, under 4,096 tokens.
    let drafted = children.iter().find(|r| env.step(&r.id, "send").status == "COMPLETED").expect("sent");
    let ledgers: Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "context", &drafted.id, "--json"]))).expect("json");
    assert_eq!(ledgers[0]["ledger"]["max_tokens"], 4096);
    let parent = last_run(&env, "inbox-triage");
    assert_eq!(env.runs().into_iter().find(|r| r.id == parent).map(|r| r.status).as_deref(), Some("FAILED"));
    let done = output(&env, &parent, "triage");
    assert_eq!(done.as_array().map(|items| items.iter().filter(|i| !i.is_null()).count()), Some(2), "{done}");
}
