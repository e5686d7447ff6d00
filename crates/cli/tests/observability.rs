//! What an operator watches: `GET /metrics` on a real `cairn serve`, counted from journaled facts
//! (a run replayed or resumed adds nothing it had counted), with bounded labels.

mod common;

use common::fake_model::{FakeProvider, Reply};
use common::*;
use serde_json::json;

/// The value of the sample `name{labels}` in a Prometheus text, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_runs_attempts_errors_calls_tokens_and_waiting_approvals_without_run_ids() {
    let fake = FakeProvider::start();
    fake.then([Reply::says("Hello.", 1000, 500)]);
    let env = Env::new();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.fake]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[models.fake]\nprovider = \"fake\"\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n",
            fake.base_url
        ),
    );
    let server = env.serve(&[]);
    let ask = json!({"name": "ask", "steps": [{"id": "hi", "kind": "llm", "with": {"model": "fake", "prompt": "hi"}}]});
    let r = post(&server.addr, "/v1/runs?wait=20s", &json!({"workflow": ask}));
    assert_eq!(r.json()["status"], "COMPLETED", "{}", r.body);
    let bad = json!({"name": "bad", "steps": [{"id": "x", "kind": "fail",
        "with": {"class": "transient", "message": "down"}, "retry": {"max_attempts": 2, "initial_delay": "5ms"}}]});
    let r = post(&server.addr, "/v1/runs?wait=20s", &json!({"workflow": bad}));
    assert_eq!(r.json()["status"], "FAILED", "{}", r.body);
    let gate = json!({"name": "gate", "steps": [{"id": "ok", "kind": "approval"}]});
    let r = post(&server.addr, "/v1/runs?wait=2s", &json!({"workflow": gate}));
    let waiting = r.json()["id"].as_str().expect("id").to_string();
    wait_for("the gate to wait", std::time::Duration::from_secs(10), || {
        get(&server.addr, "/v1/approvals").json()["approvals"].as_array().is_some_and(|a| a.len() == 1)
    });

    let m = get(&server.addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap_or_default().starts_with("text/plain"), "{:?}", m.header("content-type"));
    let text = m.body.clone();
    assert_eq!(sample(&text, "cairn_runs_started_total{workflow=\"ask\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_runs_finished_total{workflow=\"ask\",state=\"completed\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_runs_finished_total{workflow=\"bad\",state=\"failed\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_step_attempts_total{workflow=\"bad\",kind=\"fail\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cairn_step_errors_total{kind=\"fail\",class=\"transient\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cairn_retries_scheduled_total{kind=\"fail\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_calls_total{kind=\"llm\",name=\"fake\",outcome=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cairn_model_tokens_total{model=\"fake\",direction=\"input\"}"), Some(1000.0), "{text}");
    assert_eq!(sample(&text, "cairn_model_tokens_total{model=\"fake\",direction=\"output\"}"), Some(500.0), "{text}");
    assert_eq!(sample(&text, "cairn_model_cost_microusd_total{model=\"fake\"}"), Some(2000.0), "{text}");
    assert_eq!(sample(&text, "cairn_approvals_waiting"), Some(1.0), "{text}");
    assert!(text.contains("cairn_run_seconds_count{workflow=\"ask\",state=\"completed\"} 1"), "{text}");
    assert!(!text.contains(&waiting) && !text.contains("wf_"), "no run ids in labels");
}
