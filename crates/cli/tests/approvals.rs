//! Approval gates, named after the failure model: a run blocked at an approval survives
//! restarts, duplicate decisions are idempotent, rejections and deadlines follow their policy,
//! cancel and approve interact as documented, and every journal replays.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

fn gated(extra: &str) -> String {
    format!(
        "name: gated\nsteps:\n  - {{id: draft, kind: echo, with: {{text: hello}}}}\n  - id: review\n    kind: approval\n    needs: [draft]\n{extra}  - {{id: send, kind: echo, needs: [review], with: {{d: \"{{{{ steps.review.output.decision }}}}\"}}}}\n"
    )
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    wait_for(what, LONG, &mut ok);
}

#[test]
fn restart_while_blocked_at_an_approval_then_approve_and_finish() {
    let env = Env::new();
    let wf = env.write("wf.yaml", &gated(""));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "blocked(manual approval)", LONG);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "review").status, "WAITING");
    sigkill(&mut child);
    // The request survives the crash; a decision from another process is recorded.
    let out = env.run(&["approve", &id, "review", "--comment", "ok after restart", "--by", "ana"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(env.started(&id, "draft"), 1, "completed steps do not run again");
    env.assert_journal_is_sound(&id);
}

#[test]
fn rejection_fails_the_step_with_the_reason_and_the_run() {
    let env = Env::new();
    let wf = env.write("wf.yaml", &gated(""));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "blocked(manual approval)", LONG);
    let id = env.only_run().id;
    let out = env.run(&["reject", &id, "review", "--reason", "not today", "--by", "bo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = wait_exit(&mut child, LONG);
    assert_eq!(status.code(), Some(1));
    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    let review = env.step(&id, "review");
    assert_eq!(review.status, "FAILED");
    assert!(review.error_message.as_deref().unwrap_or("").contains("rejected by bo: not today"), "{review:?}");
    assert_eq!(env.step(&id, "send").status, "CANCELLED");
    env.assert_journal_is_sound(&id);
}

#[test]
fn deadlines_reject_or_escalate_as_configured() {
    let env = Env::new();
    let rejects = env.write("r.yaml", &gated("    approval: {deadline: 300ms, on_deadline: reject}\n"));
    let out = env.run(&["run", path_str(&rejects)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.only_run().id;
    let review = env.step(&id, "review");
    assert!(review.error_message.as_deref().unwrap_or("").contains("deadline passed"), "{review:?}");
    env.assert_journal_is_sound(&id);

    let env = Env::new();
    let waits = env.write("w.yaml", &gated("    approval: {deadline: 200ms, on_deadline: wait}\n"));
    let (mut child, lines) = env.spawn(&["run", path_str(&waits)], &[]);
    wait_line(&lines, "escalated, still waiting", LONG);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "review").status, "WAITING");
    assert!(env.run(&["approve", &id, "review"]).status.success());
    assert!(wait_exit(&mut child, LONG).success());
    assert_eq!(env.only_run().status, "COMPLETED");
    env.assert_journal_is_sound(&id);
}

#[test]
fn over_the_api_duplicates_are_idempotent_cancel_wins_and_approvals_are_listed() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();
    let workflow: Value = json!({"name": "gated", "steps": [
        {"id": "draft", "kind": "echo", "with": {"text": "hello"}},
        {"id": "review", "kind": "approval", "needs": ["draft"], "approval": {"prompt": "Send {{ steps.draft.output.text }}?", "approvers": ["anonymous"]}},
        {"id": "send", "kind": "echo", "needs": ["review"]},
    ]});
    let start = || {
        let r = post(addr, "/v1/runs", &json!({"workflow": workflow}));
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().expect("id").to_string()
    };
    let wait_step = |id: &str, status: &str| {
        let deadline = Instant::now() + LONG;
        loop {
            let v = get(addr, &format!("/v1/runs/{id}")).json();
            let s = v["steps"].as_array().and_then(|s| s.iter().find(|s| s["step_id"] == "review").cloned());
            if s.is_some_and(|s| s["status"] == status) {
                return v;
            }
            assert!(Instant::now() < deadline, "review never {status}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = start();
    wait_step(&first, "WAITING");
    let second = start();
    wait_step(&second, "WAITING");
    // Listed, oldest first, with the rendered prompt.
    let list = get(addr, "/v1/approvals").json();
    let runs: Vec<&str> =
        list["approvals"].as_array().expect("list").iter().filter_map(|a| a["run_id"].as_str()).collect();
    assert_eq!(runs, vec![first.as_str(), second.as_str()], "{list}");
    assert_eq!(list["approvals"][0]["prompt"], "Send hello?");

    // Bad decisions are the caller's mistake.
    let r = post(addr, &format!("/v1/runs/{first}/approvals/review"), &json!({"decision": "maybe"}));
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (422, json!("bad_decision")), "{}", r.body);
    let r = post(addr, &format!("/v1/runs/{first}/approvals/draft"), &json!({"decision": "approve"}));
    assert_eq!(r.status, 409, "{}", r.body);

    // Approve, then the same again: idempotent; the opposite: a conflict.
    let r = post(addr, &format!("/v1/runs/{first}/approvals/review"), &json!({"decision": "approve", "comment": "go"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(addr, &format!("/v1/runs/{first}/approvals/review"), &json!({"decision": "approve"}));
    assert_eq!((r.status, r.json()["delivery"].clone()), (200, json!("already_decided")), "{}", r.body);
    let r = post(addr, &format!("/v1/runs/{first}/approvals/review"), &json!({"decision": "reject"}));
    assert_eq!(r.status, 409, "{}", r.body);
    wait_run_status(addr, &first, "COMPLETED");

    // Cancel while waiting for approval; approving afterwards is a conflict.
    let r = post(addr, &format!("/v1/runs/{second}/cancel"), &json!({"reason": "no longer needed"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(addr, &format!("/v1/runs/{second}/approvals/review"), &json!({"decision": "approve"}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(get(addr, &format!("/v1/runs/{second}")).json()["status"], "CANCELLED");
    assert_eq!(get(addr, "/v1/approvals").json()["approvals"], json!([]));
    env.assert_journal_is_sound(&first);
    env.assert_journal_is_sound(&second);
}

fn wait_run_status(addr: &str, id: &str, status: &str) {
    wait_until(&format!("run {id} to be {status}"), || get(addr, &format!("/v1/runs/{id}")).json()["status"] == status);
}

#[test]
fn an_escalated_failure_waits_for_a_person_who_retries_skips_or_aborts() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: esc\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - id: send\n    kind: fail\n    needs: [a]\n    with: {class: transient, message: smtp down}\n    retry: {max_attempts: 2, initial_delay: 5ms}\n    on_failure: escalate\n  - {id: after, kind: echo, needs: [send], with: {sent: \"{{ steps.send.output.sent }}\"}}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "send=escalated(needs a decision)", LONG);
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "WAITING");
    // Retry: the step gets its retry budget again (two more attempts, numbered on), and fails
    // again, escalating again.
    assert!(env.run(&["escalation", &id, "send", "retry"]).status.success());
    let seen = wait_line(&lines, "send=escalated(needs a decision)", LONG);
    assert!(seen.iter().any(|l| l.contains("retry 4/4")), "{seen:#?}");
    assert_eq!(env.started(&id, "send"), 4);
    // Skip with an output: the step is done and what follows uses it.
    let out = env.run(&["escalation", &id, "send", "skip", "--output", "{\"sent\": false}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_exit(&mut child, LONG).success());
    assert_eq!(env.only_run().status, "COMPLETED");
    assert_eq!(env.step(&id, "send").status, "COMPLETED");
    let store = env.store();
    let after = env.step(&id, "after").output_hash.expect("after ran");
    let value = env.block(cairn_store::Journal::payload(&store, &after)).expect("payload");
    assert_eq!(value, Some(json!({"sent": false})));
    env.assert_journal_is_sound(&id);

    // Abort fails the run at once.
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: esc\nsteps:\n  - {id: send, kind: fail, with: {class: permanent}, on_failure: escalate}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "escalated(needs a decision)", LONG);
    let id = env.only_run().id;
    let out = env.run(&["escalation", &id, "send", "abort", "--by", "ana"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(wait_exit(&mut child, LONG).code(), Some(1));
    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    assert!(run.failure_message.as_deref().unwrap_or("").contains("aborted by ana"), "{run:?}");
    // Bad answers are usage errors.
    assert_eq!(env.run(&["escalation", &id, "send", "skip"]).status.code(), Some(2));
    assert_eq!(env.run(&["escalation", &id, "send", "later"]).status.code(), Some(2));
    env.assert_journal_is_sound(&id);
}

/// A run parked at an approval gate moves to a newer definition version when what it already did
/// is compatible, and is refused (naming the first incompatibility) when it is not.
#[test]
fn a_parked_run_migrates_to_a_compatible_version_and_refuses_an_incompatible_one() {
    let env = Env::new();
    let v1 = env.write("v1.yaml", &gated(""));
    let (mut child, lines) = env.spawn(&["run", path_str(&v1)], &[]);
    wait_line(&lines, "blocked(manual approval)", LONG);
    let id = env.only_run().id;

    // Incompatible: a step that already ran changed its kind.
    let bad = env.write(
        "bad.yaml",
        &gated("")
            .replace("name: gated", "name: gated\nversion: 3")
            .replace("kind: echo, with: {text: hello}", "kind: mock_model, with: {prompt: hello}"),
    );
    let out = env.run(&["runs", "migrate", &id, "--to-version", "3", "--file", path_str(&bad)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("step 'draft' changed kind"), "{}", stderr(&out));

    // Compatible: version 2 adds a step after the gate.
    let v2 = env.write(
        "v2.yaml",
        &format!(
            "{}  - {{id: audit, kind: echo, needs: [send], with: {{v: 2}}}}\n",
            gated("").replace("name: gated", "name: gated\nversion: 2")
        ),
    );
    let out = env.run(&["runs", "migrate", &id, "--to-version", "2", "--file", path_str(&v2)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.run(&["approve", &id, "review"]).status.success());
    assert!(wait_exit(&mut child, LONG).success());
    let run = env.only_run();
    assert_eq!((run.status.as_str(), run.definition_version), ("COMPLETED", Some(2)));
    assert_eq!(env.step(&id, "audit").status, "COMPLETED", "the new step ran");
    assert_eq!(env.started(&id, "draft"), 1);
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_run_parked_at_an_approval_by_an_older_release_finishes_after_the_upgrade() {
    // A database an earlier release (store schema 1) left with a run waiting at its gate.
    let env = Env::new();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db-schema1-parked-at-approval.sql");
    let sql = std::fs::read_to_string(&fixture).expect("fixture");
    rusqlite::Connection::open(&env.db).and_then(|c| c.execute_batch(&sql)).expect("restore the old database");
    let id = "wf_01M7ZTB4ZSKR16V55RDQWV3BE6";

    let out = env.run(&["approvals"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(
        listed.contains("Pay 120 EUR?") && listed.contains(&format!("cairn approve|reject {id} sign_off")),
        "{listed}"
    );
    let out = env.run(&["approvals", "--json"]);
    let waiting: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(waiting[0]["run_id"], id);
    assert_eq!(waiting[0]["approvers"], json!(["ana"]));
    // No worker runs on this database: the approval continues the run right here.
    let out = env.run(&["approve", id, "sign_off", "--by", "ana", "--comment", "after the upgrade"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("continuing {id} here")), "{}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(env.started(id, "prepare"), 1, "the step done before the upgrade does not run again");
    let pay = env.step(id, "pay").output_hash.expect("pay ran");
    let store = env.store();
    assert_eq!(env.block(cairn_store::Journal::payload(&store, &pay)).expect("payload"), Some(json!({"paid": 120})));
    let version: i64 = rusqlite::Connection::open(&env.db)
        .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .expect("user_version");
    assert!(version > 1, "the store was migrated (user_version {version})");
    env.assert_journal_is_sound(id);
    let out = env.run(&["approvals"]);
    assert!(stderr(&out).contains("nothing waits for a decision"), "{}", stderr(&out));
}
