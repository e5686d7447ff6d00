//! Dynamic steps through the binary: a `for_each` or a `loop` killed with SIGKILL in the middle
//! resumes without repeating what was recorded; both run on PostgreSQL as on SQLite.

mod common;

use common::pg::Database;
use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_for_each_killed_mid_way_resumes_and_the_service_sees_each_item_once() {
    let env = Env::new();
    let (service, counts) = counting_server();
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: fan-out\nsteps:\n  - {{id: list, kind: echo, with: {{ids: [0, 1, 2, 3, 4, 5]}}}}\n  - id: fetch\n    kind: http\n    needs: [list]\n    for_each: \"{{{{ steps.list.output.ids }}}}\"\n    max_parallel: 2\n    with: {{url: \"http://{service}/item/{{{{ item }}}}\", body: {{n: \"{{{{ index }}}}\"}}}}\n  - {{id: count, kind: echo, needs: [fetch], with: {{n: \"{{{{ steps.fetch.output | length }}}}\"}}}}\n"
        ),
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "fetch[3]")]);
    wait_line(&lines, "[debug] holding after activity fetch[3]", LONG);
    std::thread::sleep(Duration::from_millis(300));
    sigkill(&mut child);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "fetch").status, "WAITING", "the step waits for its items, holding no attempt");
    assert_eq!(env.step(&id, "fetch[3]").status, "RUNNING", "cut off after its effect was logged");
    let done_before: Vec<String> =
        (0..6).map(|k| format!("fetch[{k}]")).filter(|s| env.step(&id, s).status == "COMPLETED").collect();
    assert!(done_before.contains(&"fetch[0]".to_string()), "{done_before:?}");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED");
    let seen = counts.lock().expect("counts").clone();
    for k in 0..6 {
        let key = format!("{id}/fetch[{k}]/call-1");
        assert_eq!(seen.get(&key), Some(&1), "the service saw item {k} {:?} times: {seen:?}", seen.get(&key));
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    for s in &done_before {
        assert_eq!(env.started(&id, s), 1, "{s} completed before the kill and did not run again");
    }
    assert_eq!(env.started(&id, "fetch[3]"), 2, "the cut-off item ran again (and got its logged result back)");
    assert_eq!(env.started(&id, "fetch"), 0, "the step itself runs no attempt");
    env.assert_journal_is_sound(&id);

    let shown = stdout(&env.run(&["runs", "show", &id, "--step", "fetch"]));
    assert!(shown.contains("for_each\n  6 item(s): fetch[0] … fetch[5]"), "{shown}");
    assert!(shown.contains("joined: 6 of 6 item(s) completed"), "{shown}");
    let shown = stdout(&env.run(&["runs", "show", &id, "--step", "fetch[2]"]));
    assert!(shown.contains("instance of step 'fetch'"), "{shown}");
    let replay = stdout(&env.run(&["replay", &id]));
    assert!(replay.contains("replay ok"), "{replay}");

    // A fork from the for_each step runs its items afresh; one from after it reuses its list.
    for from in ["fetch", "count"] {
        let out = env.run(&["rerun", &id, "--from", from]);
        assert!(out.status.success(), "rerun --from {from}: {}", stderr(&out));
    }
    let forks: Vec<_> = env.runs().into_iter().filter(|r| r.id != id).collect();
    assert_eq!(forks.len(), 2);
    for fork in forks {
        assert_eq!(fork.status, "COMPLETED", "{fork:?}");
        env.assert_journal_is_sound(&fork.id);
    }
}

#[test]
fn a_loop_killed_inside_an_iteration_resumes_there_and_each_iteration_is_sent_once() {
    let env = Env::new();
    let (service, counts) = counting_server();
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: refine\nsteps:\n  - id: review\n    kind: http\n    loop: {{until: \"iteration >= 4\", max_iterations: 6}}\n    with: {{url: \"http://{service}/review/{{{{ iteration }}}}\", body: {{previous: \"{{{{ previous }}}}\"}}}}\n  - {{id: after, kind: echo, needs: [review], with: {{n: \"{{{{ steps.review.iterations | length }}}}\"}}}}\n"
        ),
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "review#2")]);
    wait_line(&lines, "[debug] holding after activity review#2", LONG);
    sigkill(&mut child);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "review#1").status, "COMPLETED");
    assert_eq!(env.step(&id, "review#2").status, "RUNNING");
    assert!(env.steps(&id).iter().all(|s| s.step_id != "review#3"), "no iteration began after the cut-off one");

    let out = env.run(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED");
    let seen = counts.lock().expect("counts").clone();
    for n in 1..=4 {
        let key = format!("{id}/review#{n}/call-1");
        assert_eq!(seen.get(&key), Some(&1), "iteration {n} was sent {:?} times: {seen:?}", seen.get(&key));
    }
    assert_eq!(seen.len(), 4, "the loop stopped when its condition held: {seen:?}");
    assert_eq!(env.started(&id, "review#1"), 1);
    let after = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::AttemptStarted { step, input, .. } if step.as_str() == "after" => Some(input),
        _ => None,
    });
    let store = env.store();
    let input = env.block(cairn_store::Journal::payload(&store, &after.expect("after ran").hash)).expect("payload");
    assert_eq!(input, Some(serde_json::json!({"n": 4})));
    env.assert_journal_is_sound(&id);
}

#[test]
fn for_each_and_loop_run_on_postgres_as_on_sqlite() {
    let Some(db) = Database::create("dynamic") else { return };
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: both\nsteps:\n  - id: each\n    kind: echo\n    for_each: [a, b, c]\n    max_parallel: 2\n    with: {x: \"{{ item }}\"}\n  - id: again\n    kind: echo\n    needs: [each]\n    loop: {until: \"output.n >= 2\", max_iterations: 3}\n    with: {n: \"{{ iteration }}\", all: \"{{ steps.each.output | length }}\"}\n",
    );
    let out = env.run(&["run", path_str(&wf), "--database", &db.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("[step] each=ok (3 of 3 item(s) completed)"), "{said}");
    assert!(said.contains("[step] again=ok (`output.n >= 2` held after iteration 2)"), "{said}");
    let listed = stdout(&env.run(&["runs", "list", "--json", "--database", &db.url]));
    let runs: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let id = runs[0]["id"].as_str().expect("id").to_string();
    let shown = stdout(&env.run(&["runs", "show", &id, "--json", "--database", &db.url]));
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    let steps: Vec<String> = shown["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["step_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(steps, ["each", "again", "each[0]", "each[1]", "each[2]", "again#1", "again#2"], "{shown}");
    let replay = stdout(&env.run(&["replay", &id, "--database", &db.url]));
    assert!(replay.contains("replay ok"), "{replay}");
}

#[test]
fn a_loop_whose_output_nests_deeper_each_iteration_fails_at_the_limit_and_stays_readable() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: nest\nsteps:\n  - id: g\n    kind: echo\n    loop: {until: \"false\", max_iterations: 200}\n    with: {p: \"{{ previous }}\"}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nests 65 levels deep, over the limit of 64"), "{}", stderr(&out));
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "FAILED");
    for args in
        [vec!["replay", id.as_str()], vec!["export", id.as_str()], vec!["runs", "show", id.as_str(), "--step", "g#64"]]
    {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    env.assert_journal_is_sound(&id);
}
