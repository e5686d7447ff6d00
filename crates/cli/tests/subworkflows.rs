//! Subworkflows through the binary: a step starts a child run (a registered workflow or a file)
//! and waits for it durably; the child's output is the step's; parent and child link to each
//! other; cancelling the parent cancels the child; a parent killed while its child runs resumes
//! without starting a second child or repeating the child's recorded work.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn runs_by_workflow(env: &Env, workflow: &str) -> Vec<cairn_store::RunRow> {
    env.runs().into_iter().filter(|r| r.workflow == workflow).collect()
}

#[test]
fn a_subworkflow_runs_a_registered_or_file_child_and_takes_its_output_with_links_both_ways() {
    let env = Env::new();
    env.write("onboarding.yaml", "name: onboarding\nversion: 2\ninputs:\n  vendor: {}\nsteps:\n  - {id: check, kind: echo, with: {vendor: \"{{ inputs.vendor }}\", ok: true}}\n");
    let out = env.run(&["workflows", "register", path_str(&env.dir.path().join("onboarding.yaml"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("registered onboarding v2"), "{}", stdout(&out));
    std::fs::create_dir_all(env.dir.path().join("sub")).expect("mkdir");
    // A child started from a file may start its own from a file next to it.
    env.write("sub/leaf.yaml", "name: leaf\nsteps:\n  - {id: sent, kind: echo, with: {ok: true}}\n");
    env.write(
        "sub/notify.yaml",
        "name: notify\nsteps:\n  - {id: leaf, kind: subworkflow, with: {file: leaf.yaml}}\n  - {id: send, kind: echo, needs: [leaf], with: {sent: \"{{ steps.leaf.output.sent.ok }}\"}}\n",
    );
    let wf = env.write(
        "parent.yaml",
        "name: parent\nsteps:\n  - id: onboard\n    kind: subworkflow\n    with: {workflow: onboarding, version: 2, inputs: {vendor: acme}}\n  - id: notify\n    kind: subworkflow\n    needs: [onboard]\n    with: {file: sub/notify.yaml}\n  - {id: after, kind: echo, needs: [onboard, notify], with: {vendor: \"{{ steps.onboard.output.check.vendor }}\", sent: \"{{ steps.notify.output.send.sent }}\"}}\n",
    );
    let out = env.run(&["validate", path_str(&wf)]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("[step] onboard=waiting for child run "), "{said}");
    assert!(said.contains("(onboarding, child of "), "{said}");
    let parent = runs_by_workflow(&env, "parent").pop().expect("parent");
    let child = runs_by_workflow(&env, "onboarding").pop().expect("child");
    assert_eq!((parent.status.as_str(), child.status.as_str()), ("COMPLETED", "COMPLETED"));
    assert_eq!(runs_by_workflow(&env, "notify").len(), 1);
    let after = env.events(&parent.id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::AttemptStarted { step, input, .. } if step.as_str() == "after" => Some(input),
        _ => None,
    });
    let store = env.store();
    let input = env.block(cairn_store::Journal::payload(&store, &after.expect("after ran").hash)).expect("payload");
    assert_eq!(input, Some(serde_json::json!({"vendor": "acme", "sent": true})));
    assert_eq!(env.step(&parent.id, "onboard").attempts, 1);
    env.assert_journal_is_sound(&parent.id);
    env.assert_journal_is_sound(&child.id);

    // Linked both ways: runs show, the export and the API.
    let shown = stdout(&env.run(&["runs", "show", &parent.id]));
    assert!(shown.contains(&format!("child     {} (step onboard, attempt 1)", child.id)), "{shown}");
    let shown = stdout(&env.run(&["runs", "show", &child.id]));
    assert!(shown.contains(&format!("parent    {} (step onboard, attempt 1)", parent.id)), "{shown}");
    let shown = stdout(&env.run(&["runs", "show", &parent.id, "--step", "onboard"]));
    assert!(shown.contains("child runs\n  #1 ") && shown.contains(&format!("{} completed", child.id)), "{shown}");
    let export: serde_json::Value = serde_json::from_str(&stdout(&env.run(&["export", &child.id]))).expect("export");
    assert_eq!(export["links"]["parent"]["run_id"], parent.id.as_str());
    let server = env.serve(&[]);
    let body = get(&server.addr, &format!("/v1/runs/{}", parent.id)).json();
    let children: Vec<&str> =
        body["children"].as_array().into_iter().flatten().filter_map(|c| c["run_id"].as_str()).collect();
    assert_eq!(children.len(), 2, "{body}");
    assert!(children.contains(&child.id.as_str()), "{body}");
    let body = get(&server.addr, &format!("/v1/runs/{}", child.id)).json();
    assert_eq!(body["parent"]["run_id"], parent.id.as_str(), "{body}");
    assert_eq!(body["parent"]["step"], "onboard");

    // A definition posted to the API names no files on the server: the step fails, saying why.
    let posted = serde_json::json!({"workflow": {"name": "api", "steps": [
        {"id": "s", "kind": "subworkflow", "with": {"file": "onboarding.yaml"}}
    ]}});
    let reply = post(&server.addr, "/v1/runs?wait=10s", &posted);
    let body = reply.json();
    assert_eq!(body["status"], "FAILED", "{body}");
    let why = body["failure"]["message"].as_str().or(body["failure_message"].as_str()).unwrap_or_default().to_string();
    let why = if why.is_empty() { body.to_string() } else { why };
    assert!(why.contains("is read only for runs started from a local file"), "{why}");
}

#[test]
fn validate_refuses_an_unknown_workflow_or_a_missing_file_at_its_place() {
    let env = Env::new();
    env.write("onboarding.yaml", "name: onboarding\nsteps:\n  - {id: a, kind: noop}\n");
    let out = env.run(&["workflows", "register", path_str(&env.dir.path().join("onboarding.yaml"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wf = env.write(
        "p.yaml",
        "name: p\nsteps:\n  - id: a\n    kind: subworkflow\n    with: {workflow: onbaording}\n  - id: b\n    kind: subworkflow\n    with: {file: missing.yaml}\n  - id: c\n    kind: subworkflow\n    with: {workflow: onboarding, version: 3}\n  - id: d\n    kind: subworkflow\n    with: {file: ../outside.yaml}\n",
    );
    let out = env.run(&["validate", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let said = stdout(&out);
    assert!(said.contains("p.yaml:5:22: step `a`: no workflow `onbaording` is registered in "), "{said}");
    assert!(said.contains("did you mean `onboarding`?"), "{said}");
    assert!(said.contains("p.yaml:8:18: step `b`: cannot read the child workflow "), "{said}");
    assert!(said.contains("step `c`: workflow `onboarding` has no version 3 registered"), "{said}");
    assert!(said.contains("step `d`: `with.file` must be a path inside this file's directory"), "{said}");
}

#[test]
fn cancelling_the_parent_cancels_the_child_it_waits_for() {
    let env = Env::new();
    env.write("slow.yaml", "name: slow\nsteps:\n  - {id: hold, kind: wait, with: {signal: never}}\n");
    let wf = env
        .write("parent.yaml", "name: parent\nsteps:\n  - {id: run_slow, kind: subworkflow, with: {file: slow.yaml}}\n");
    let server = env.serve(&[]);
    let out = env.run(&["run", path_str(&wf), "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the child to wait", LONG, || {
        runs_by_workflow(&env, "slow").first().is_some_and(|r| r.status == "WAITING")
    });
    let parent = runs_by_workflow(&env, "parent").pop().expect("parent");
    assert_eq!(env.step(&parent.id, "run_slow").status, "WAITING", "the parent waits for its child");
    let out = env.run(&["runs", "cancel", &parent.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the child to be cancelled", LONG, || {
        runs_by_workflow(&env, "slow").first().is_some_and(|r| r.status == "CANCELLED")
    });
    let child = runs_by_workflow(&env, "slow").pop().expect("child");
    assert!(child.failure_message.unwrap_or_default().contains(&format!("its parent run {} ended", parent.id)));
    assert_eq!(runs_by_workflow(&env, "parent")[0].status, "CANCELLED");
    drop(server);
    env.assert_journal_is_sound(&parent.id);
    env.assert_journal_is_sound(&child.id);

    // Without any worker running: the command that cancels the parent cancels the child too.
    let out = env.run(&["run", path_str(&wf), "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parent = stdout(&out).trim().to_string();
    let waiting = runs_by_workflow(&env, "slow").into_iter().filter(|r| r.status != "CANCELLED").count();
    assert_eq!(waiting, 1, "the detached run created its child before it returned");
    let out = env.run(&["runs", "cancel", &parent]);
    assert!(out.status.success(), "{}", stderr(&out));
    let statuses: Vec<String> = runs_by_workflow(&env, "slow").into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["CANCELLED", "CANCELLED"]);
}

#[test]
fn a_parent_killed_while_its_child_runs_resumes_with_the_same_child_and_nothing_repeated() {
    let env = Env::new();
    let (service, counts) = counting_server();
    env.write(
        "child.yaml",
        &format!("name: child\nsteps:\n  - {{id: work, kind: http, with: {{url: \"http://{service}/work\", body: {{}}}}}}\n  - {{id: more, kind: echo, needs: [work]}}\n"),
    );
    let wf = env.write("parent.yaml", "name: parent\nsteps:\n  - {id: sub, kind: subworkflow, with: {file: child.yaml}}\n  - {id: after, kind: echo, needs: [sub]}\n");
    let (mut child_process, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "work")]);
    wait_line(&lines, "[debug] holding after activity work", LONG);
    sigkill(&mut child_process);
    let parent = runs_by_workflow(&env, "parent").pop().expect("parent");
    let child = runs_by_workflow(&env, "child").pop().expect("child");
    assert_eq!(env.step(&parent.id, "sub").status, "WAITING");
    assert_eq!(env.step(&child.id, "work").status, "RUNNING");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    wait_for("both runs to complete", LONG, || {
        runs_by_workflow(&env, "parent").first().is_some_and(|r| r.status == "COMPLETED")
    });
    assert_eq!(runs_by_workflow(&env, "child").len(), 1, "no second child was started");
    assert_eq!(runs_by_workflow(&env, "child")[0].status, "COMPLETED");
    let seen = counts.lock().expect("counts").clone();
    assert_eq!(seen.get(&format!("{}/work/call-1", child.id)), Some(&1), "the child's work was not repeated: {seen:?}");
    assert_eq!(env.step(&parent.id, "sub").attempts, 1);
    env.assert_journal_is_sound(&parent.id);
    env.assert_journal_is_sound(&child.id);
}

#[test]
fn on_postgres_a_child_reports_its_end_and_a_cancelled_parent_cancels_its_child() {
    let Some(db) = common::pg::Database::create("subworkflows") else { return };
    let env = Env::new();
    env.write(
        "child.yaml",
        "name: child\ninputs:\n  n: {}\nsteps:\n  - {id: twice, kind: echo, with: {n: \"{{ inputs.n }}\"}}\n",
    );
    let wf = env.write(
        "parent.yaml",
        "name: parent\nsteps:\n  - id: each\n    kind: subworkflow\n    for_each: [1, 2, 3]\n    with: {file: child.yaml, inputs: {n: \"{{ item }}\"}}\n  - {id: sum, kind: echo, needs: [each], with: {all: \"{{ steps.each.output }}\"}}\n",
    );
    let out = env.run(&["run", path_str(&wf), "--database", &db.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("[step] each=ok (3 of 3 item(s) completed)"), "{said}");
    let listed = stdout(&env.run(&["runs", "list", "--json", "--database", &db.url]));
    let runs: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let runs = runs.as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 4, "a parent and one child per item: {runs:?}");
    assert!(runs.iter().all(|r| r["status"] == "COMPLETED"), "{runs:?}");

    env.write("slow.yaml", "name: slow\nsteps:\n  - {id: hold, kind: wait, with: {signal: never}}\n");
    let wf =
        env.write("waits.yaml", "name: waits\nsteps:\n  - {id: sub, kind: subworkflow, with: {file: slow.yaml}}\n");
    let server = env.serve(&["--database", &db.url]);
    let out = env.run(&["run", path_str(&wf), "--detach", "--database", &db.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parent = stdout(&out).trim().to_string();
    let status_of = |workflow: &str| -> Vec<String> {
        let listed = stdout(&env.run(&["runs", "list", "--json", "--database", &db.url]));
        let runs: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
        runs.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["workflow"] == workflow)
            .filter_map(|r| r["status"].as_str().map(str::to_string))
            .collect()
    };
    wait_for("the child to wait", LONG, || status_of("slow") == ["WAITING"]);
    let out = env.run(&["runs", "cancel", &parent, "--database", &db.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the child to be cancelled", LONG, || status_of("slow") == ["CANCELLED"]);
    drop(server);
}

#[test]
fn a_workflow_that_starts_itself_directly_or_through_another_is_refused_before_any_child_runs() {
    let env = Env::new();
    // Each item would start three more of itself, without end.
    let wf = env.write(
        "again.yaml",
        "name: again\nsteps:\n  - {id: deeper, kind: subworkflow, for_each: [1, 2, 3], with: {file: again.yaml}}\n",
    );
    let out = output_within(env.cmd().args(["run", path_str(&wf)]), LONG);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(runs_by_workflow(&env, "again").len(), 1, "no child was started");
    assert!(stderr(&out).contains("workflow 'again' would start itself (again → again)"), "{}", stderr(&out));
    // Through another workflow.
    env.write("ping.yaml", "name: ping\nsteps:\n  - {id: to_pong, kind: subworkflow, with: {file: pong.yaml}}\n");
    env.write("pong.yaml", "name: pong\nsteps:\n  - {id: to_ping, kind: subworkflow, with: {file: ping.yaml}}\n");
    let out = output_within(env.cmd().args(["run", path_str(&env.dir.path().join("ping.yaml"))]), LONG);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("(ping → pong → ping)"), "{}", stderr(&out));
    assert_eq!(runs_by_workflow(&env, "pong").len(), 1);
}
