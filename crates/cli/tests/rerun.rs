//! Forks: `cairn rerun ID --from STEP` and `POST /v1/runs/{id}/rerun` start a new run linked to
//! its parent that reuses the recorded outputs before STEP and executes from there.

mod common;

use cairn_core::Event;
use cairn_core::event::RunSource;
use common::*;
use serde_json::json;

const WF: &str = "name: fixable\nsteps:\n  - {id: fetch, kind: echo, with: {data: 42}}\n  - {id: summarize, kind: mock_model, needs: [fetch], with: {prompt: \"sum {{ steps.fetch.output.data }}\"}}\n  - {id: send, kind: fail, needs: [summarize], with: {class: permanent, message: refused}}\n";

#[test]
fn rerun_reuses_what_came_before_the_step_and_links_to_its_parent() {
    let env = Env::new();
    let wf = env.write("wf.yaml", WF);
    assert_eq!(env.run(&["run", path_str(&wf)]).status.code(), Some(1));
    let parent = env.only_run().id;

    let out = env.run(&["rerun", &parent, "--from", "send"]);
    assert_eq!(out.status.code(), Some(1), "send still fails: {}", stderr(&out));
    assert!(stderr(&out).contains(&format!("forked from {parent} at step send")), "{}", stderr(&out));
    let child = env.runs().into_iter().find(|r| r.id != parent).expect("the fork").id;
    assert_eq!(env.started(&child, "fetch"), 0, "fetch was reused, not re-run");
    assert_eq!(env.started(&child, "summarize"), 0, "summarize was reused, not re-run");
    assert_eq!(env.started(&child, "send"), 1);
    for step in ["fetch", "summarize"] {
        assert_eq!(
            env.step(&child, step).output_hash,
            env.step(&parent, step).output_hash,
            "{step} output carried over"
        );
    }
    let events = env.events(&child);
    assert!(
        matches!(&events[0].event, Event::RunCreated { source: RunSource::Fork { parent: p, from_step, .. }, .. }
        if *p == parent && from_step == "send"),
        "{}",
        dump(&events)
    );
    env.assert_journal_is_sound(&child);

    // From an earlier step: it and everything after it run again.
    let out = env.run(&["rerun", &parent, "--from", "summarize"]);
    assert_eq!(out.status.code(), Some(1));
    let third = env.runs().into_iter().max_by_key(|r| r.created_at_ms).expect("runs").id;
    assert_eq!((env.started(&third, "fetch"), env.started(&third, "summarize")), (0, 1));
    env.assert_journal_is_sound(&third);

    // Bad requests are usage errors.
    let out = env.run(&["rerun", &parent, "--from", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no step 'nope'"), "{}", stderr(&out));
    let out = env.run(&["rerun", "wf_01XXXXXXXXXXXXXXXXXXXXXXXX", "--from", "send"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn rerun_over_the_api() {
    let env = Env::new();
    let server = env.serve(&[]);
    let addr = server.addr.as_str();
    let definition = json!({"name": "fixable", "steps": [
        {"id": "fetch", "kind": "echo", "with": {"data": 42}},
        {"id": "send", "kind": "echo", "needs": ["fetch"], "with": {"got": "{{ steps.fetch.output.data }}"}},
    ]});
    let r = post(addr, "/v1/runs?wait=5s", &json!({"workflow": definition}));
    assert_eq!(r.status, 201, "{}", r.body);
    let parent = r.json()["id"].as_str().expect("id").to_string();
    let r = post(addr, &format!("/v1/runs/{parent}/rerun"), &json!({"from": "send"}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["forked_from"]["run"], parent.as_str());
    let child = r.json()["id"].as_str().expect("id").to_string();
    wait_for("the fork to complete", std::time::Duration::from_secs(20), || {
        get(addr, &format!("/v1/runs/{child}")).json()["status"] == "COMPLETED"
    });
    assert_eq!(env.started(&child, "fetch"), 0);
    let r = post(addr, &format!("/v1/runs/{parent}/rerun"), &json!({"from": "nope"}));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(addr, &format!("/v1/runs/{parent}/rerun"), &json!({"step": "send"}));
    assert_eq!(r.status, 422, "{}", r.body);
}

#[test]
fn set_output_changes_what_a_step_before_the_fork_point_gave_and_refuses_what_runs_again() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: counter\nsteps:\n  - {id: pick, kind: echo, with: {intent: order}}\n  - {id: act, kind: echo, needs: [pick], with: {did: \"{{ steps.pick.output.intent }}\"}}\n",
    );
    assert!(env.run(&["run", path_str(&wf)]).status.success());
    let parent = env.only_run().id;
    let out = env.run(&["rerun", &parent, "--from", "act", "--set-output", r#"pick={"intent": "refund"}"#, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fork = env.runs().into_iter().find(|r| r.id != parent).expect("the fork").id;
    assert_eq!(env.started(&fork, "pick"), 0, "pick was set, not run");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &fork, "--step", "act", "--json"]))).expect("json");
    assert_eq!(shown["output"]["value"], json!({"did": "refund"}));
    let events = env.events(&fork);
    assert!(
        matches!(&events[0].event, Event::RunCreated { source: RunSource::Fork { set_outputs, .. }, .. } if set_outputs == &["pick".to_string()]),
        "{}",
        dump(&events)
    );
    // A step that runs again cannot be set; bad values are usage errors.
    let out = env.run(&["rerun", &parent, "--from", "pick", "--set-output", r#"act={"did": 1}"#]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("step 'act' runs again in the fork"), "{}", stderr(&out));
    let out = env.run(&["rerun", &parent, "--from", "act", "--set-output", "pick={nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--set-output pick: the value is not JSON"), "{}", stderr(&out));
    let out = env.run(&["rerun", &parent, "--from", "act", "--turn", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("a fork at a turn needs a model step"), "{}", stderr(&out));
}

#[test]
fn a_set_output_runs_again_what_depends_on_it_even_before_the_fork_point() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: chain\nsteps:\n  - {id: pick, kind: echo, with: {n: 1}}\n  - {id: act, kind: echo, needs: [pick], with: {n: \"{{ steps.pick.output.n }}\"}}\n  - {id: report, kind: echo, needs: [act], with: {n: \"{{ steps.act.output.n }}\"}}\n",
    );
    assert!(env.run(&["run", path_str(&wf)]).status.success());
    let parent = env.only_run().id;
    let out = env.run(&["rerun", &parent, "--from", "report", "--set-output", r#"pick={"n": 2}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fork = env.runs().into_iter().find(|r| r.id != parent).expect("the fork").id;
    assert_eq!((env.started(&fork, "pick"), env.started(&fork, "act")), (0, 1), "act depends on the set pick");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &fork, "--step", "report", "--json"]))).expect("json");
    assert_eq!(shown["output"]["value"], json!({"n": 2}));
}
