//! `on_failure: {fallback: STEP}`: when a step fails for good another step runs in its place,
//! and what needed the failed step carries on with the fallback's result — through a real
//! `cairn run`, a real SQLite file, a call refused on loopback and a SIGKILL mid-fallback.

mod common;

use cairn_core::event::Event;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// `fetch` calls a port nobody listens on (every attempt is refused); `cached` stands in for it
/// (after `delay`), and `report` needs `fetch`.
fn workflow(fetch_url: &str, delay: &str) -> String {
    format!(
        "name: fallback
steps:
  - id: fetch
    kind: http
    with: {{url: \"{fetch_url}\", body: {{q: prices}}}}
    retry: {{max_attempts: 2, initial_delay: 10ms, jitter: 0}}
    on_failure: {{fallback: cached}}
  - id: cached
    kind: echo
    with: {{prices: [1, 2], why: \"{{{{ steps.fetch.error.class }}}}\"}}
    inject: {{delay: {delay}}}
  - id: report
    kind: echo
    needs: [fetch]
    with: {{data: \"{{{{ steps.fetch.output }}}}\", via: \"{{{{ steps.fetch.fallback }}}}\"}}
"
    )
}

fn step_input(env: &Env, id: &str, step: &str) -> Value {
    let store = env.store();
    let run_id = cairn_core::RunId::parse(id).expect("run id");
    let loaded = env.block(cairn_store::Journal::load_run(&store, &run_id)).expect("load the run");
    let hash = loaded
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::AttemptStarted { step: s, input, .. } if s.as_str() == step => Some(input.hash.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{step} never started:\n{}", dump(&loaded.events)));
    loaded.payloads.iter().find(|(h, _)| *h == hash).map(|(_, v)| Value::clone(v)).expect("input payload")
}

fn run_output(env: &Env, id: &str) -> Value {
    let run = env.runs().into_iter().find(|r| r.id == id).expect("the run");
    let store = env.store();
    let out = env.block(cairn_store::Journal::payload(&store, run.output_hash.as_deref().expect("an output")));
    out.expect("payload").expect("stored")
}

#[test]
fn a_step_that_fails_for_good_is_replaced_by_its_fallback_and_the_run_completes() {
    let env = Env::new();
    let wf = env.write("wf.yaml", &workflow("http://127.0.0.1:1/prices", "0ms"));
    let out = env.run(&["run", path_str(&wf)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("(falls back to 'cached')"), "{err}");
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPLETED");
    let statuses: Vec<(String, String)> = env.steps(&id).into_iter().map(|s| (s.step_id, s.status)).collect();
    let expected = [("fetch", "FAILED"), ("cached", "COMPLETED"), ("report", "COMPLETED")];
    assert_eq!(statuses, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(env.started(&id, "fetch"), 2, "the primary used its whole retry budget first");
    assert_eq!(step_input(&env, &id, "cached"), json!({"prices": [1, 2], "why": "transient"}));
    let cached = json!({"prices": [1, 2], "why": "transient"});
    assert_eq!(step_input(&env, &id, "report"), json!({"data": cached, "via": "cached"}));
    let output = run_output(&env, &id);
    assert_eq!(output["fetch"], cached, "the run's output carries the stand-in's result for fetch: {output}");
    env.assert_journal_is_sound(&id);

    // Replay re-derives the same decisions and tells the story.
    let out = env.run(&["replay", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("replay ok:"), "{text}");
    assert!(text.contains("(falls back to 'cached')"), "{text}");
}

#[test]
fn a_fallback_is_skipped_when_its_step_succeeds() {
    let (addr, hits) = counting_server();
    let env = Env::new();
    let wf = env.write("wf.yaml", &workflow(&format!("http://{addr}/prices"), "0ms"));
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "cached").status, "SKIPPED");
    assert_eq!(env.step(&id, "cached").skip_reason.as_deref(), Some("fallback not needed: step 'fetch' is completed"));
    assert_eq!(env.started(&id, "cached"), 0);
    assert_eq!(step_input(&env, &id, "report")["via"], Value::Null);
    assert_eq!(hits.lock().expect("hits").values().sum::<u32>(), 1);
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_crash_while_the_fallback_runs_resumes_the_fallback_not_the_failed_step() {
    let env = Env::new();
    let wf = env.write("wf.yaml", &workflow("http://127.0.0.1:1/prices", "1500ms"));
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("the fallback to be RUNNING", LONG, || {
        env.runs()
            .first()
            .is_some_and(|r| env.steps(&r.id).iter().any(|s| s.step_id == "cached" && s.status == "RUNNING"))
    });
    sigkill(&mut child);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "fetch").status, "FAILED");

    let out = env.run(&["resume", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED", "{}", stderr(&out));
    assert_eq!(env.started(&id, "fetch"), 2, "the failed step is not tried again");
    assert_eq!(env.started(&id, "cached"), 2, "the interrupted fallback attempt is retried");
    assert_eq!(env.started(&id, "report"), 1);
    assert_eq!(step_input(&env, &id, "report")["via"], "cached");
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_failing_fallback_fails_the_run_and_bad_fallbacks_are_refused_before_anything_runs() {
    let env = Env::new();
    let wf = env.write(
        "wf.yaml",
        "name: both-fail\nsteps:\n  - {id: a, kind: fail, with: {class: permanent, message: primary down}, on_failure: {fallback: b}}\n  - {id: b, kind: fail, with: {class: permanent, message: spare down}}\n  - {id: c, kind: echo, needs: [a]}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "FAILED");
    let message = run.failure_message.unwrap_or_default();
    assert!(message.contains("step 'b' failed: spare down"), "{message}");
    assert_eq!(env.step(&run.id, "c").status, "CANCELLED");
    env.assert_journal_is_sound(&run.id);

    let bad = env.write(
        "bad.yaml",
        "name: bad\nsteps:\n  - {id: a, kind: echo, on_failure: {fallback: spar}}\n  - {id: spare, kind: echo}\n",
    );
    let out = env.run(&["run", path_str(&bad)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("bad.yaml:3:") && err.contains("did you mean `spare`?"), "{err}");
    assert_eq!(env.runs().len(), 1, "the invalid definition started nothing");
}
