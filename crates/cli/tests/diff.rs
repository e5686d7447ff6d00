//! `cairn diff A B` and `GET /v1/runs/{a}/diff/{b}` on a run and its fork, against a scripted
//! model: the first divergence, reused steps equal, and the difference in tokens and cost.

mod common;

use common::fake_model::{FakeProvider, Reply};
use common::*;
use serde_json::Value;

#[test]
fn a_fork_that_asked_the_model_again_diverges_at_that_step_and_costs_the_difference() {
    let fake = FakeProvider::start();
    let env = Env::new();
    env.write(
        "cairn.toml",
        &format!(
            "default_model = \"fake\"\n\n[providers.fake]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[models.fake]\nprovider = \"fake\"\nmodel = \"m\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n",
            fake.base_url
        ),
    );
    let wf = env.write(
        "wf.yaml",
        "name: ask\nsteps:\n  - {id: start, kind: echo, with: {topic: otters}}\n  - {id: ask, kind: llm, needs: [start], with: {prompt: \"Say something about {{ steps.start.output.topic }}\"}}\n  - {id: after, kind: echo, needs: [ask], with: {said: \"{{ steps.ask.output.text }}\"}}\n",
    );
    fake.then([Reply::says("otters hold hands", 10, 4), Reply::says("otters sleep afloat", 10, 9)]);
    assert!(env.run(&["run", path_str(&wf)]).status.success());
    let a = env.only_run().id;
    let out = env.run(&["rerun", &a, "--from", "ask"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = env.runs().into_iter().find(|r| r.id != a).expect("the fork").id;
    let out = env.run(&["diff", &a, &b, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(d["first_divergence"]["step"], "ask", "{d}");
    let changed: Vec<(&str, bool)> = d["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["step"].as_str().unwrap_or(""), s["changed"] == true))
        .collect();
    assert_eq!(changed, [("start", false), ("ask", true), ("after", true)], "{d}");
    // 10 + 4 tokens in A, 10 + 9 in B (its `start` was reused, its model call made afresh).
    assert_eq!(d["spend"]["tokens"], 5, "{d}");
    assert!((d["spend"]["cost_usd"].as_f64().unwrap_or(0.0) - 10e-6).abs() < 1e-12, "{d}");
    let text = stdout(&env.run(&["diff", &a, &b]));
    assert!(text.contains("first divergence: step ask"), "{text}");
    assert!(text.contains("B − A: +5 tokens, +$0.000010"), "{text}");
    // The same over the API.
    let server = env.serve(&[]);
    let r = get(&server.addr, &format!("/v1/runs/{a}/diff/{b}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["first_divergence"]["step"], "ask");
    let r = get(&server.addr, &format!("/v1/runs/{a}/diff/wf_nope"));
    assert!(r.status == 400 || r.status == 404, "{}", r.body);
}
