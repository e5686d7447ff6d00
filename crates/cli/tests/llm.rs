//! The `llm` kind against a scripted provider on loopback (in addition to the real model in
//! `models.rs`): structured output and its repair, error classes, fallback order, tokens and cost.

mod common;

use common::fake_model::{FakeProvider, Reply};
use common::*;
use serde_json::Value;

fn config(fake: &FakeProvider) -> String {
    format!(
        "default_model = \"fake\"\n\n[providers.fake]\ntype = \"openai\"\nbase_url = \"{}\"\nrequest_timeout = 2\n\n[models.fake]\nprovider = \"fake\"\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\nmax_output_tokens = 100\n\n[models.spare]\nprovider = \"fake\"\nmodel = \"spare-model\"\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 6.0\n",
        fake.base_url
    )
}

fn step_output(env: &Env, id: &str, step: &str) -> Value {
    let out = env.run(&["runs", "show", id, "--step", step, "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("json");
    shown["output"]["value"].clone()
}

const STRUCTURED: &str = "name: structured\nsteps:\n  - id: ask\n    kind: llm\n    with:\n      prompt: \"A city, as JSON.\"\n      output_schema: {type: object, properties: {city: {type: string}}, required: [city]}\n";

#[test]
fn an_answer_that_does_not_fit_the_schema_is_sent_back_once_naming_what_failed() {
    let fake = FakeProvider::start();
    fake.then([Reply::says("Sure! The city is Paris.", 10, 6), Reply::says("{\"city\": \"Paris\"}", 30, 5)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write("wf.yaml", STRUCTURED);
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let output = step_output(&env, &id, "ask");
    assert_eq!(output["json"]["city"], "Paris", "{output}");
    // Both calls are paid for: 40 in, 11 out at $1 / $2 per million.
    assert_eq!(output["usage"]["input_tokens"], 40);
    assert_eq!(output["usage"]["output_tokens"], 11);
    assert!((output["cost_usd"].as_f64().unwrap_or(0.0) - 62e-6).abs() < 1e-12, "{output}");
    let sent = fake.received();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["response_format"]["type"], "json_schema", "the provider is asked for JSON: {}", sent[0]);
    assert_eq!(sent[0]["response_format"]["json_schema"]["schema"]["required"][0], "city");
    let repair = sent[1]["messages"].as_array().expect("messages");
    assert_eq!(repair[repair.len() - 2]["content"], "Sure! The city is Paris.");
    let said = repair[repair.len() - 1]["content"].as_str().unwrap_or_default();
    assert!(said.contains("it is not JSON") && said.contains("Sure! The city"), "{said}");
}

#[test]
fn a_second_answer_that_does_not_fit_fails_the_step_as_malformed_output_and_is_never_passed_on() {
    let fake = FakeProvider::start();
    fake.then([Reply::says("{\"town\": \"Paris\"}", 10, 6), Reply::says("{\"city\": 7}", 30, 5)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write("wf.yaml", STRUCTURED);
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.only_run().id;
    let step = env.step(&id, "ask");
    assert_eq!(step.status, "FAILED");
    let failed = env
        .events(&id)
        .into_iter()
        .find_map(|e| match e.event {
            cairn_core::Event::StepFailed { failure, .. } => Some(failure),
            _ => None,
        })
        .expect("StepFailed");
    assert_eq!(failed.code.as_deref(), Some("malformed_output"), "{failed:?}");
    assert!(failed.message.contains("at /city: 7 is not of type \"string\""), "{}", failed.message);
    // Permanent: no third call, no retry.
    assert_eq!(fake.received().len(), 2);
    let first_repair = &fake.received()[1]["messages"];
    assert!(first_repair.to_string().contains("\\\"city\\\" is a required property"), "{first_repair}");
}

#[test]
fn a_busy_or_broken_model_hands_over_to_the_next_and_the_output_says_why() {
    let fake = FakeProvider::start();
    fake.then([Reply::rate_limited(30), Reply::says("hello", 7, 2)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf =
        env.write("wf.yaml", "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {model: [fake, spare], prompt: hi}}\n");
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let output = step_output(&env, &id, "ask");
    assert_eq!((output["model"].as_str(), output["text"].as_str()), (Some("spare"), Some("hello")), "{output}");
    let why = output["skipped"][0]["reason"].as_str().unwrap_or_default();
    assert!(why.starts_with("rate_limited: fake answered 429"), "{why}");
    // Priced at the model that answered.
    assert!((output["cost_usd"].as_f64().unwrap_or(0.0) - (7.0 * 3.0 + 2.0 * 6.0) / 1e6).abs() < 1e-12);
    let sent = fake.received();
    assert_eq!((sent[0]["model"].as_str(), sent[1]["model"].as_str()), (Some("fake-model"), Some("spare-model")));
}

#[test]
fn a_rate_limited_model_alone_is_retried_no_sooner_than_it_asked() {
    let fake = FakeProvider::start();
    fake.then([Reply::rate_limited(2), Reply::says("hello", 7, 2)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write("wf.yaml", "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {prompt: hi}}\n");
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let delay = env
        .events(&id)
        .into_iter()
        .find_map(|e| match e.event {
            cairn_core::Event::RetryScheduled { delay_ms, .. } => Some(delay_ms),
            _ => None,
        })
        .expect("a retry");
    assert!(delay >= 2000, "Retry-After: 2 is the floor of the delay, got {delay} ms");
}

#[test]
fn refusals_are_permanent_and_say_which_and_a_hang_is_a_timeout() {
    let fake = FakeProvider::start();
    let env = Env::new();
    env.write(
        "cairn.toml",
        &config(&fake).replace("[providers.fake]\n", "[providers.fake]\napi_key_env = \"CAIRN_TEST_FAKE_KEY\"\n"),
    );
    let wf = env.write(
        "wf.yaml",
        "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {prompt: hi}, retry: {max_attempts: 1}}\n",
    );
    for (reply, expected) in [
        (Reply::status(401, r#"{"error":"invalid key"}"#), "answered 401 for model 'fake-model'"),
        (Reply::status(404, r#"{"error":"no such model"}"#), "is the model id or base_url wrong?"),
        (Reply::status(400, r#"{"error":"maximum context length exceeded"}"#), "answered 400"),
        (Reply::status(200, "this is not json"), "the answer is not JSON"),
        (Reply::Hang(std::time::Duration::from_secs(5)), "failed(timeout)"),
    ] {
        fake.then([reply]);
        let out = env
            .cmd()
            .args(["run", path_str(&wf)])
            .env("CAIRN_TEST_FAKE_KEY", "sk-fake-secret-1")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "expected `{expected}` in: {}", stderr(&out));
        assert!(!stderr(&out).contains("sk-fake-secret-1"));
    }
    let sent_auth = fake.received().len();
    assert_eq!(sent_auth, 5, "one request each: permanent failures are not retried");
}
