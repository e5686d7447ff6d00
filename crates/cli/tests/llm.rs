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
    assert_eq!(failed.class, cairn_core::event::ErrorClass::MalformedOutput, "{failed:?}");
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
        (Reply::status(400, r#"{"error":"maximum context length exceeded"}"#), "failed(context_overflow)"),
        (Reply::status(200, "this is not json"), "the answer is not JSON"),
        (Reply::Hang(std::time::Duration::from_secs(5)), "failed(timeout)"),
        // A provider quoting the key back: it is redacted from what is kept and shown.
        (
            Reply::status(500, r#"{"error":"unexpected header Authorization: Bearer sk-fake-secret-1"}"#),
            "Bearer [redacted]",
        ),
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
    assert_eq!(sent_auth, 6, "one request each: permanent failures are not retried");
    for id in env.runs().iter().map(|r| r.id.clone()) {
        let kept = stdout(&env.run(&["export", &id]));
        assert!(!kept.contains("sk-fake-secret-1"), "the key is in no record");
    }
}

fn calls_of(env: &Env, id: &str) -> Vec<cairn_store::CallRow> {
    let store = env.store();
    env.block(cairn_store::EffectLog::calls(&store, &cairn_core::RunId::parse(id).expect("id"), None)).expect("calls")
}

#[test]
fn a_call_that_would_cross_the_budget_is_not_sent_and_fails_the_step_as_budget_exceeded() {
    let fake = FakeProvider::start();
    // Each call asks for at most 100 output tokens at $2/M and ~10 input at $1/M: ≈ $0.00021.
    // The first answer costs 1000 in + 100 out = $0.0012, leaving less than the next call needs.
    fake.then([Reply::says("one", 1000, 100)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write(
        "wf.yaml",
        "name: budgeted\nbudget: {max_cost_usd: 0.0013}\nsteps:\n  - {id: first, kind: llm, with: {prompt: hi, max_tokens: 100}}\n  - {id: second, kind: llm, needs: [first], with: {prompt: again, max_tokens: 100}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("failed(budget_exceeded)"), "{said}");
    assert!(said.contains("the budget of the run is $0.0013"), "{said}");
    assert_eq!(fake.received().len(), 1, "the second call was not sent");
    let id = env.only_run().id;
    let calls = calls_of(&env, &id);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let cost = calls[0].cost.as_ref().expect("priced");
    assert_eq!((cost.model.as_str(), cost.tokens_in, cost.tokens_out), ("fake", 1000, 100));
    // Step and run totals, from the recorded calls.
    let shown: Value = serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--json"]))).expect("json");
    assert!((shown["usage"]["cost_usd"].as_f64().unwrap_or(0.0) - 0.0012).abs() < 1e-12, "{shown}");
    assert_eq!(shown["step_usage"]["first"]["calls"], 1);
    let text = stdout(&env.run(&["runs", "show", &id]));
    assert!(text.contains("cost      $0.001200 (1 model call(s), 1000 tokens in, 100 out)"), "{text}");
    let export: Value = serde_json::from_str(&stdout(&env.run(&["export", &id]))).expect("json");
    assert_eq!(
        (export["usage"]["calls"].as_u64(), export["step_usage"]["first"]["tokens_in"].as_u64()),
        (Some(1), Some(1000))
    );
    assert_eq!(export["calls"][0]["cost"]["model"], "fake", "{}", export["calls"]);
}

#[test]
fn a_step_over_its_budget_waits_for_a_person_who_raises_it_and_the_run_goes_on() {
    let fake = FakeProvider::start();
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write(
        "wf.yaml",
        "name: escalated\nsteps:\n  - id: ask\n    kind: llm\n    with: {prompt: hi, max_tokens: 100}\n    budget: {max_tokens: 50, on_exceed: escalate}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "ask=escalated(needs a decision)", std::time::Duration::from_secs(30));
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "WAITING");
    assert!(fake.received().is_empty(), "nothing was sent");
    let waiting = stdout(&env.run(&["approvals", "--json"]));
    assert!(waiting.contains("stopped at the step's budget") && waiting.contains("50 tokens"), "{waiting}");
    // A raise that is no raise, and a raise for a step not stopped by a budget, are refused.
    let out = env.run(&["escalation", &id, "ask", "skip", "--max-tokens", "500"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for (args, said) in [
        (["--max-cost-usd", "5"], "has no max_cost_usd to raise; raise its max_tokens"),
        (["--max-tokens", "40"], "is 50 tokens; a raise must be above it, not 40"),
        (["--max-cost-usd", "nan"], "max_cost_usd must be a number above 0"),
    ] {
        let mut all = vec!["escalation", &id, "ask", "retry"];
        all.extend(args);
        let out = env.run(&all);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(stderr(&out).contains(said), "{args:?}: {}", stderr(&out));
    }
    let out = env.run(&["escalation", &id, "ask", "retry", "--max-tokens", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_exit(&mut child, std::time::Duration::from_secs(30)).success());
    assert_eq!(env.only_run().status, "COMPLETED");
    assert_eq!(fake.received().len(), 1);
    let raised = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::ApprovalDecided {
            action: Some(cairn_core::event::Escalation::Retry { raise, .. }), ..
        } => raise,
        _ => None,
    });
    let raised = raised.expect("the raise is journaled");
    assert_eq!((raised.step.map(|s| s.to_string()), raised.max_tokens), (Some("ask".into()), Some(1000)));
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_crash_between_reservation_and_settlement_counts_the_call_once() {
    let fake = FakeProvider::start();
    // The first request hangs (the process is killed meanwhile); the resumed attempt's answers.
    fake.then([Reply::Hang(std::time::Duration::from_secs(30)), Reply::says("late", 40, 10)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake).replace("request_timeout = 2", "request_timeout = 60"));
    let wf = env.write(
        "wf.yaml",
        "name: reserved\nbudget: {max_cost_usd: 0.001}\nsteps:\n  - {id: ask, kind: llm, with: {prompt: hi, max_tokens: 100}}\n",
    );
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_for("the call to be in flight", std::time::Duration::from_secs(30), || fake.received().len() == 1);
    sigkill(&mut child);
    let id = env.only_run().id;
    let held = calls_of(&env, &id);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].outcome, "reserved", "{held:?}");
    let reserved = held[0].reserved.expect("reservation");
    assert!(reserved.usd > 0.0 && reserved.tokens > 100, "{reserved:?}");
    let out = env.run(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED");
    let settled = calls_of(&env, &id);
    assert_eq!(settled.len(), 1, "the reservation was replaced, not added to: {settled:?}");
    assert_eq!((settled[0].outcome.as_str(), settled[0].attempt), ("ok", 2));
    let cost = settled[0].cost.as_ref().expect("priced");
    assert_eq!((cost.tokens_in, cost.tokens_out), (40, 10));
    let report: Value = serde_json::from_str(&stdout(&env.run(&["cost", "--by", "model", "--json"]))).expect("json");
    assert_eq!(report["groups"][0]["key"], "fake", "{report}");
    assert_eq!(report["total"]["calls"], 1, "{report}");
    assert!((report["total"]["cost_usd"].as_f64().unwrap_or(0.0) - 60e-6).abs() < 1e-12, "{report}");
}

#[test]
fn usage_a_provider_leaves_out_is_counted_and_marked_estimated() {
    let fake = FakeProvider::start();
    fake.then([Reply::says_without_usage("hello world")]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write("wf.yaml", "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {prompt: \"hello world\"}}\n");
    assert!(env.run(&["run", path_str(&wf)]).status.success());
    let output = step_output(&env, &env.only_run().id, "ask");
    assert_eq!(output["usage"]["estimated"], true, "{output}");
    assert_eq!(output["usage"]["output_tokens"], 2, "o200k counts `hello world` as 2: {output}");
    assert_eq!(output["usage"]["input_tokens"], 3 + 4 + 2, "{output}");
}

#[test]
fn a_provider_that_keeps_failing_is_skipped_while_its_breaker_is_open_and_the_api_shows_it() {
    let (flaky, spare) = (FakeProvider::start(), FakeProvider::start());
    flaky.then((0..10).map(|_| Reply::status(503, r#"{"error":"overloaded"}"#)));
    let env = Env::new();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.flaky]\ntype = \"openai\"\nbase_url = \"{}\"\nbreaker = {{failures = 2, cool_down = 600}}\n\n[providers.spare]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[models.a]\nprovider = \"flaky\"\nmodel = \"m-a\"\n\n[models.b]\nprovider = \"spare\"\nmodel = \"m-b\"\n",
            flaky.base_url, spare.base_url
        ),
    );
    let server = env.serve(&[]);
    let workflow = serde_json::json!({"name": "many", "steps": [
        {"id": "ask", "kind": "llm", "for_each": [1, 2, 3, 4, 5], "max_parallel": 1,
         "with": {"model": ["a", "b"], "prompt": "item {{ item }}"}}
    ]});
    let r = post(&server.addr, "/v1/runs?wait=30s", &serde_json::json!({"workflow": workflow}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], "COMPLETED", "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    assert_eq!(flaky.received().len(), 2, "two failures open the breaker; later items skip the provider");
    assert_eq!(spare.received().len(), 5);
    let last = step_output(&env, &id, "ask[4]");
    let why = last["skipped"][0]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("provider flaky: breaker open (2 failures in a row)"), "{last}");
    let providers = get(&server.addr, "/v1/providers").json();
    let flaky_view = &providers["providers"][0];
    assert_eq!((flaky_view["name"].as_str(), flaky_view["breaker"]["state"].as_str()), (Some("flaky"), Some("open")));
    assert_eq!(flaky_view["models"], serde_json::json!(["a"]));
    assert_eq!(providers["providers"][1]["breaker"]["state"], "closed", "{providers}");
}

#[test]
fn an_anthropic_provider_gets_a_messages_request_and_its_answer_and_forced_tool_are_read() {
    let fake = FakeProvider::start();
    fake.then([
        Reply::anthropic_says("Bonjour", 12, 3),
        Reply::anthropic_tool(serde_json::json!({"city": "Lyon"})),
        Reply::AnthropicStream { pieces: vec!["Bon".into(), "soir".into()] },
    ]);
    let env = Env::new();
    let base = fake.base_url.trim_end_matches("/v1");
    env.write(
        "cairn.toml",
        &format!(
            "[providers.claude]\ntype = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"CAIRN_TEST_ANTHROPIC_KEY\"\n\n[models.sonnet]\nprovider = \"claude\"\nmodel = \"claude-fake\"\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\nmax_output_tokens = 256\n"
        ),
    );
    let wf = env.write(
        "wf.yaml",
        "name: claude\nsteps:\n  - {id: hello, kind: llm, with: {model: sonnet, system: \"Answer in French.\", prompt: hello, stop: [\"END\"]}}\n  - id: city\n    kind: llm\n    needs: [hello]\n    with: {model: sonnet, prompt: \"A city in France, as JSON.\", output_schema: {type: object, properties: {city: {type: string}}, required: [city]}}\n",
    );
    let out = env
        .cmd()
        .args(["run", path_str(&wf)])
        .env("CAIRN_TEST_ANTHROPIC_KEY", "sk-ant-secret-9")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let hello = step_output(&env, &id, "hello");
    assert_eq!(
        (hello["text"].as_str(), hello["finish_reason"].as_str()),
        (Some("Bonjour"), Some("end_turn")),
        "{hello}"
    );
    assert!((hello["cost_usd"].as_f64().unwrap_or(0.0) - (12.0 * 3.0 + 3.0 * 15.0) / 1e6).abs() < 1e-12, "{hello}");
    assert_eq!(step_output(&env, &id, "city")["json"]["city"], "Lyon");
    let (sent, heads) = (fake.received(), fake.heads());
    assert_eq!(heads[0].line, "POST /v1/messages HTTP/1.1");
    assert_eq!(heads[0].headers.get("x-api-key").map(String::as_str), Some("sk-ant-secret-9"));
    assert_eq!(heads[0].headers.get("anthropic-version").map(String::as_str), Some("2023-06-01"));
    assert!(!heads[0].headers.contains_key("authorization"));
    assert_eq!(sent[0]["system"], "Answer in French.");
    assert_eq!(sent[0]["messages"], serde_json::json!([{"role": "user", "content": "hello"}]));
    assert_eq!((sent[0]["max_tokens"].as_u64(), sent[0]["stop_sequences"][0].as_str()), (Some(256), Some("END")));
    assert_eq!(sent[1]["tool_choice"]["name"], "output");
    let export = stdout(&env.run(&["export", &id]));
    assert!(!export.contains("sk-ant-secret-9"), "the key is in no record");
    // A streamed answer (what `cairn run` asks for, as its progress may watch) reads the same.
    assert_eq!(sent[0]["stream"], true);
    let wf = env
        .write("one.yaml", "name: one\nsteps:\n  - {id: hello, kind: llm, with: {model: sonnet, prompt: evening}}\n");
    let out = env
        .cmd()
        .args(["run", path_str(&wf)])
        .env("CAIRN_TEST_ANTHROPIC_KEY", "sk-ant-secret-9")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let streamed = step_output(&env, &env.runs()[0].id, "hello");
    assert_eq!((streamed["text"].as_str(), streamed["usage"]["output_tokens"].as_u64()), (Some("Bonsoir"), Some(2)));
    assert_eq!(
        (streamed["usage"]["input_tokens"].as_u64(), streamed["finish_reason"].as_str()),
        (Some(11), Some("end_turn"))
    );
}

#[test]
fn the_model_planner_over_the_api_plans_with_the_model_and_refuses_a_plan_it_cannot_fix() {
    let fake = FakeProvider::start();
    let good = serde_json::json!({"steps": [{"template": "generate_summary"}, {"template": "send_email"}]});
    let bad = serde_json::json!({"steps": [{"template": "write_a_poem"}]});
    fake.then([
        Reply::says(&good.to_string(), 300, 20),
        Reply::says("A short summary.", 40, 5),
        Reply::says(&bad.to_string(), 300, 20),
        Reply::says(&bad.to_string(), 320, 20),
    ]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let server = env.serve(&[]);
    let r = post(
        &server.addr,
        "/v1/runs?wait=20s",
        &serde_json::json!({"goal": "generate summary and send email", "planner": "model"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let sent = fake.received();
    let schema = &sent[0]["response_format"]["json_schema"]["schema"];
    assert_eq!(schema["properties"]["steps"]["maxItems"], 2, "two clauses, at most two steps: {schema}");
    // The plan's model step calls the model too (its catalog template uses llm now).
    assert_eq!(sent.len(), 2, "{sent:?}");
    let shown: Value = serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--json"]))).expect("json");
    assert_eq!(shown["step_usage"]["(plan)"]["tokens_in"], 300, "the planner's call is accounted: {shown}");
    assert_eq!(shown["usage"]["calls"], 2, "{shown}");
    let summary = step_output(&env, &id, "generate_summary");
    assert_eq!((summary["model"].as_str(), summary["text"].as_str()), (Some("fake"), Some("A short summary.")));

    let r = post(&server.addr, "/v1/runs", &serde_json::json!({"goal": "write a poem", "planner": "model"}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unplannable_goal");
    let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("`write_a_poem` is not a template"), "{message}");
    let retry = &fake.received()[3]["messages"];
    assert!(retry.to_string().contains("That plan cannot run"), "the problems were sent back once: {retry}");
    assert_eq!(fake.received().len(), 4, "sent back once, then refused");
    let r = post(&server.addr, "/v1/runs", &serde_json::json!({"workflow": "x", "planner": "model"}));
    assert_eq!(r.status, 422, "{}", r.body);
}

#[test]
fn an_opted_in_cache_answers_the_same_request_in_another_run_for_nothing_and_says_so() {
    let fake = FakeProvider::start();
    fake.then([Reply::says("Paris", 100, 10), Reply::says("Lyon", 100, 10)]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let cached = env.write(
        "wf.yaml",
        "name: cached\nsteps:\n  - {id: ask, kind: llm, with: {prompt: \"Capital of France?\", cache: {ttl: 1h}}}\n",
    );
    for _ in 0..2 {
        assert!(env.run(&["run", path_str(&cached)]).status.success());
    }
    assert_eq!(fake.received().len(), 1, "the second run was answered from the cache");
    let runs = env.runs();
    let (second, first) = (&runs[0].id, &runs[1].id);
    let hit = step_output(&env, second, "ask");
    assert_eq!((hit["text"].as_str(), hit["cache"]["hit"].as_bool()), (Some("Paris"), Some(true)), "{hit}");
    assert_eq!(hit["cost_usd"], 0.0);
    assert!((hit["cache"]["saved_usd"].as_f64().unwrap_or(0.0) - 120e-6).abs() < 1e-12, "{hit}");
    assert!(step_output(&env, first, "ask")["cache"].is_null());
    // The hit is a journaled call of its run, at no cost.
    let calls = calls_of(&env, second);
    assert_eq!((calls.len(), calls[0].cost.as_ref().map(|c| c.cost_usd)), (1, Some(0.0)));
    // Another request, or a step without the cache, asks the model.
    let other = env
        .write("other.yaml", "name: other\nsteps:\n  - {id: ask, kind: llm, with: {prompt: \"Capital of France?\"}}\n");
    assert!(env.run(&["run", path_str(&other)]).status.success());
    assert_eq!(fake.received().len(), 2);
    assert_eq!(step_output(&env, &env.runs()[0].id, "ask")["text"], "Lyon");
}

#[test]
fn watchers_get_the_tokens_as_they_stream_a_restart_before_a_retry_and_resume_without_repeats() {
    use std::time::Duration;
    let fake = FakeProvider::start();
    let piece = |t: &str| t.to_string();
    let gap = Duration::from_millis(150);
    fake.then([
        Reply::Stream { pieces: vec![piece("The "), piece("sky "), piece("is")], gap, whole: false },
        Reply::Stream { pieces: vec![piece("Blue"), piece(" it"), piece(" is"), piece(".")], gap, whole: true },
    ]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let server = env.serve(&[]);
    let workflow = serde_json::json!({"name": "streamed", "steps": [
        {"id": "ask", "kind": "llm", "with": {"prompt": "What colour is the sky?"},
         "retry": {"max_attempts": 3, "initial_delay": "10ms"}}
    ]});
    let r = post(&server.addr, "/v1/runs", &serde_json::json!({"workflow": workflow}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let path = format!("/v1/runs/{id}/events/stream");
    let mut sse = Sse::open(&server.addr, &path, &[]);
    let mut seen = Vec::new();
    let mut resumed_from = None;
    while let Ok(Some(e)) = sse.next(Duration::from_secs(20)) {
        if e.event == "llm.delta" && e.data["text"] == "Blue" {
            resumed_from = e.raw_id.clone();
        }
        let done = e.event == "run_completed";
        seen.push(e);
        if done {
            break;
        }
        // Reconnect once, right after the retry's first token, from that token's id.
        if let (Some(last), true) = (&resumed_from, seen.iter().filter(|e| e.event == "llm.delta").count() == 4) {
            let mut again = Sse::open(&server.addr, &path, &[("Last-Event-ID", last)]);
            let next = again.next(Duration::from_secs(10)).expect("an event").expect("not ended");
            assert_eq!((next.event.as_str(), next.data["text"].as_str()), ("llm.delta", Some(" it")), "{next:?}");
        }
    }
    let kinds: Vec<String> = seen
        .iter()
        .filter(|e| e.event.starts_with("llm."))
        .map(|e| format!("{}:{}", e.event, e.data["text"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds,
        [
            "llm.delta:The ",
            "llm.delta:sky ",
            "llm.delta:is",
            "llm.restart:",
            "llm.delta:Blue",
            "llm.delta: it",
            "llm.delta: is",
            "llm.delta:."
        ],
        "{seen:#?}"
    );
    let restart = seen.iter().find(|e| e.event == "llm.restart").expect("restart");
    assert_eq!((restart.data["step"].as_str(), restart.data["attempt"].as_u64()), (Some("ask"), Some(1)));
    assert!(restart.raw_id.as_deref().is_some_and(|i| i.contains('.')), "{restart:?}");
    // What is journaled is the final answer, whole.
    let output = step_output(&env, &id, "ask");
    assert_eq!((output["text"].as_str(), output["usage"]["output_tokens"].as_u64()), (Some("Blue it is."), Some(4)));
    assert!(fake.received().iter().all(|b| b["stream"] == true), "asked for a stream");
}

#[test]
fn absurd_hints_and_usage_from_a_provider_are_survived_not_believed() {
    let fake = FakeProvider::start();
    fake.then([
        Reply::Http(429, vec![("Retry-After", u64::MAX.to_string())], "{}".into()),
        Reply::says("garbage usage", u64::MAX, u64::MAX),
        Reply::says("fine", 10, 2),
    ]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write(
        "wf.yaml",
        "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {model: [fake, spare, fake], prompt: hi}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let output = step_output(&env, &id, "ask");
    assert_eq!(output["text"], "fine", "{output}");
    assert!(output["skipped"][1]["reason"].as_str().is_some_and(|r| r.contains("cannot be right")), "{output}");
    let report: Value = serde_json::from_str(&stdout(&env.run(&["cost", "--json"]))).expect("json");
    assert_eq!(report["total"]["tokens_in"], 10, "{report}");
}

#[test]
fn streamed_tokens_never_show_the_providers_key_and_characters_split_between_reads_arrive_whole() {
    use std::time::Duration;
    let fake = FakeProvider::start();
    let pieces = ["Ключ: Bea", "rer sk-fake-secr", "et-1 — 日本語", " ok."].map(str::to_string).to_vec();
    fake.then([Reply::Stream { pieces, gap: Duration::from_millis(60), whole: true }]);
    let env = Env::new();
    env.write(
        "cairn.toml",
        &config(&fake).replace("[providers.fake]\n", "[providers.fake]\napi_key_env = \"CAIRN_TEST_FAKE_KEY\"\n"),
    );
    let mut server = {
        let (child, lines) =
            env.spawn(&["serve", "--listen", "127.0.0.1:0"], &[("CAIRN_TEST_FAKE_KEY", "sk-fake-secret-1")]);
        let seen = wait_line(&lines, "listening on http://", Duration::from_secs(20));
        let addr = seen
            .last()
            .and_then(|l| l.split("http://").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .expect("addr")
            .to_string();
        Server { child, addr, lines }
    };
    let workflow = serde_json::json!({"name": "s", "steps": [{"id": "ask", "kind": "llm", "with": {"prompt": "hi"}}]});
    let r = post(&server.addr, "/v1/runs", &serde_json::json!({"workflow": workflow}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().expect("id").to_string();
    let mut sse = Sse::open(&server.addr, &format!("/v1/runs/{id}/events/stream"), &[]);
    let mut shown = String::new();
    while let Ok(Some(e)) = sse.next(Duration::from_secs(20)) {
        if e.event == "llm.delta" {
            shown.push_str(e.data["text"].as_str().unwrap_or_default());
        }
        if e.event == "run_completed" {
            break;
        }
    }
    assert_eq!(shown, "Ключ: Bearer [redacted] — 日本語 ok.", "watchers never see the key, and text arrives whole");
    let output = step_output(&env, &id, "ask");
    assert_eq!(output["text"], "Ключ: Bearer [redacted] — 日本語 ok.", "{output}");
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(20));
}

#[test]
fn an_answer_that_does_not_fit_its_schema_is_never_cached() {
    let fake = FakeProvider::start();
    fake.then([
        Reply::says("no json", 10, 2),
        Reply::says("still none", 10, 2),
        Reply::says("{\"city\": \"Paris\"}", 10, 2),
    ]);
    let env = Env::new();
    env.write("cairn.toml", &config(&fake));
    let wf = env.write(
        "wf.yaml",
        &STRUCTURED.replace("prompt: \"A city, as JSON.\"", "prompt: \"A city, as JSON.\"\n      cache: {ttl: 1h}"),
    );
    assert_eq!(env.run(&["run", path_str(&wf)]).status.code(), Some(1));
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "the second run asks the model again: {}", stderr(&out));
    assert_eq!(fake.received().len(), 3);
    assert_eq!(step_output(&env, &env.runs()[0].id, "ask")["json"]["city"], "Paris");
}
