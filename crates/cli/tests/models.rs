//! `cairn models`: the providers and model aliases `cairn.toml` declares, with prices and where
//! each key comes from (the key's value is never printed).

mod common;

use cairn_store::EffectLog;
use common::*;

const CONFIG: &str = "\
default_model = \"small\"

[providers.local]
type = \"openai\"
base_url = \"http://127.0.0.1:8000/v1\"
api_key_env = \"LOCAL_API_KEY\"

[models.small]
provider = \"local\"
model = \"SmolLM2-135M-Instruct\"
input_usd_per_mtok = 0.10
output_usd_per_mtok = 0.20
context_window = 4096
";

#[test]
fn models_lists_what_the_config_declares_and_never_a_key() {
    let env = Env::new();
    let out = env.run(&["models"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no models configured: steps use `mock_model`"), "{}", stdout(&out));

    env.write("cairn.toml", CONFIG);
    let out = env.cmd().args(["models"]).env("LOCAL_API_KEY", "sk-very-secret").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains("small (default)") && shown.contains("SmolLM2-135M-Instruct"), "{shown}");
    assert!(
        shown.contains("provider local: openai at http://127.0.0.1:8000/v1, key from $LOCAL_API_KEY (set here)"),
        "{shown}"
    );
    let out = env.cmd().args(["models", "--json"]).env("LOCAL_API_KEY", "sk-very-secret").output().expect("run");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["models"]["small"]["context_window"], 4096);
    assert_eq!(doc["providers"]["local"]["type"], "openai");
    for text in [shown, stdout(&out), stderr(&out)] {
        assert!(!text.contains("sk-very-secret"), "a key's value is never printed: {text}");
    }

    env.write("cairn.toml", &CONFIG.replace("provider = \"local\"", "provider = \"remote\""));
    let out = env.run(&["models"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cairn.toml:9:12: `models.small.provider` is `remote`"), "{}", stderr(&out));
}

#[test]
fn models_check_asks_each_provider_and_says_which_did_not_answer() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.local]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[providers.gone]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{closed}/v1\"\nconnect_timeout = 2\nrequest_timeout = 2\n\n[providers.keyed]\ntype = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"CAIRN_TEST_UNSET_KEY\"\n\n[models.small]\nprovider = \"local\"\nmodel = \"SmolLM2-135M-Instruct\"\n",
            server.base_url, server.base_url
        ),
    );
    let out = env.cmd().args(["models", "--check"]).env_remove("CAIRN_TEST_UNSET_KEY").output().expect("run");
    assert_eq!(out.status.code(), Some(3), "two providers do not answer: {}{}", stdout(&out), stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains(&format!("  ok: answers at {}/models: 1 model(s) listed", server.base_url)), "{shown}");
    assert!(
        shown.contains("provider gone: ") && shown.contains("  FAILED: connecting to http://127.0.0.1:"),
        "{shown}"
    );
    assert!(shown.contains("  FAILED: $CAIRN_TEST_UNSET_KEY is not set here"), "{shown}");
    assert!(stderr(&out).contains("2 provider(s) did not answer"), "{}", stderr(&out));

    // With the key set, it is sent (the local server ignores it) and never printed.
    let out = env
        .cmd()
        .args(["models", "--check", "--json"])
        .env("CAIRN_TEST_UNSET_KEY", "sk-local-secret-123")
        .output()
        .expect("run");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["checks"]["keyed"]["ok"], true, "{doc}");
    assert_eq!(doc["checks"]["gone"]["ok"], false, "{doc}");
    assert!(!stdout(&out).contains("sk-local-secret-123") && !stderr(&out).contains("sk-local-secret-123"));
}

fn model_config(server: &common::model::ModelServer) -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    format!(
        "default_model = \"small\"\n\n[providers.local]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[providers.dead]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{closed}/v1\"\nconnect_timeout = 1\n\n[models.small]\nprovider = \"local\"\nmodel = \"SmolLM2-135M-Instruct\"\ninput_usd_per_mtok = 0.10\noutput_usd_per_mtok = 0.20\n\n[models.gone]\nprovider = \"dead\"\nmodel = \"x\"\n",
        server.base_url
    )
}

#[test]
fn an_llm_step_asks_the_real_model_falls_back_past_one_that_is_away_and_counts_tokens_and_cost() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    env.write("cairn.toml", &model_config(&server));
    let wf = env.write(
        "wf.yaml",
        "name: ask\nsteps:\n  - id: ask\n    kind: llm\n    with: {model: [gone, small], system: \"Answer in one word.\", prompt: \"What colour is the sky?\", max_tokens: 8, temperature: 0}\n  - {id: after, kind: echo, needs: [ask], with: {said: \"{{ steps.ask.output.text }}\"}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--step", "ask", "--json"]))).expect("json");
    let output = &shown["output"]["value"];
    assert!(output["text"].as_str().is_some_and(|t| !t.trim().is_empty()), "{shown}");
    assert_eq!(output["model"], "small");
    assert_eq!(output["skipped"][0]["model"], "gone", "{shown}");
    assert!(output["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0), "{shown}");
    assert!(output["usage"]["output_tokens"].as_u64().is_some_and(|n| (1..=8).contains(&n)), "{shown}");
    assert_eq!(output["usage"]["estimated"], false);
    let cost = output["cost_usd"].as_f64().unwrap_or(0.0);
    let expected = (output["usage"]["input_tokens"].as_f64().unwrap_or(0.0) * 0.10
        + output["usage"]["output_tokens"].as_f64().unwrap_or(0.0) * 0.20)
        / 1e6;
    assert!((cost - expected).abs() < 1e-12 && cost > 0.0, "{cost} vs {expected}");
    env.assert_journal_is_sound(&id);
}

#[test]
fn an_llm_call_recorded_before_a_crash_is_not_paid_for_again_after_resume() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    env.write("cairn.toml", &model_config(&server));
    let wf = env.write(
        "wf.yaml",
        "name: ask\nsteps:\n  - id: ask\n    kind: llm\n    with: {model: [gone, small], prompt: \"Name a colour.\", max_tokens: 6, temperature: 0}\n",
    );
    // Two calls: the first model is away, the second answers; the process dies right after.
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_CALL", "ask/2")]);
    wait_line(&lines, "[debug] holding after call 2 of ask", std::time::Duration::from_secs(60));
    sigkill(&mut child);
    let id = env.only_run().id;
    assert_eq!(env.step(&id, "ask").status, "RUNNING");
    let out = env.run(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.only_run().status, "COMPLETED");
    let store = env.store();
    let calls = env.block(cairn_store::EffectLog::calls(&store, &cairn_core::RunId::parse(&id).expect("id"), None));
    let calls = calls.expect("calls");
    assert_eq!(calls.len(), 2, "{calls:?}");
    // The away model is asked again (a failed call is); the answer already paid for is not.
    assert_eq!((calls[0].attempt, calls[0].outcome.as_str()), (2, "failed"), "{calls:?}");
    assert_eq!((calls[1].kind.as_str(), calls[1].attempt, calls[1].outcome.as_str()), ("llm", 1, "ok"));
    let cost = calls[1].cost.as_ref().expect("priced");
    assert!(cost.tokens_out > 0 && cost.cost_usd > 0.0, "{cost:?}");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--json"]))).expect("json");
    assert_eq!(shown["usage"]["calls"], 2, "the away model's failed call is counted, at no cost: {shown}");
    let output = &serde_json::from_str::<serde_json::Value>(&stdout(
        &env.run(&["runs", "show", &id, "--step", "ask", "--json"]),
    ))
    .expect("json")["output"]["value"];
    assert_eq!((output["recorded"].as_bool(), output["cost_usd"].as_f64()), (Some(true), Some(0.0)), "{output}");
    let logs = stdout(&env.run(&["runs", "logs", &id]));
    assert!(logs.contains("returned the recorded result; not sent again"), "{logs}");
}

#[test]
fn an_llm_step_without_models_or_without_its_key_fails_saying_what_to_do() {
    let env = Env::new();
    let wf = env.write("wf.yaml", "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {prompt: hi}}\n");
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no models are configured: declare [providers.NAME] and [models.ALIAS]"),
        "{}",
        stderr(&out)
    );
    env.write(
        "cairn.toml",
        "[providers.cloud]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"CAIRN_TEST_NO_SUCH_KEY\"\n\n[models.big]\nprovider = \"cloud\"\nmodel = \"m\"\n",
    );
    let wf = env.write("wf2.yaml", "name: ask2\nsteps:\n  - {id: ask, kind: llm, with: {model: big, prompt: hi}}\n");
    let out = env.cmd().args(["run", path_str(&wf)]).env_remove("CAIRN_TEST_NO_SUCH_KEY").output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("$CAIRN_TEST_NO_SUCH_KEY (the key of provider 'cloud') is not set"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_llm_step_with_an_output_schema_gets_json_that_fits_it_from_the_real_model() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    env.write("cairn.toml", &model_config(&server));
    let wf = env.write(
        "wf.yaml",
        "name: structured\nsteps:\n  - id: ask\n    kind: llm\n    with:\n      prompt: \"Give the capital of France as JSON with keys city and country.\"\n      max_tokens: 60\n      temperature: 0\n      output_schema: {type: object, properties: {city: {type: string}, country: {type: string}}, required: [city, country]}\n  - {id: after, kind: echo, needs: [ask], with: {city: \"{{ steps.ask.output.json.city }}\"}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--step", "ask", "--json"]))).expect("json");
    let json = &shown["output"]["value"]["json"];
    assert!(json["city"].is_string() && json["country"].is_string(), "{shown}");
    let after: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--step", "after", "--json"]))).expect("json");
    assert_eq!(after["output"]["value"]["city"], json["city"], "{after}");
}

#[test]
fn the_model_planner_turns_the_seed_goal_into_a_valid_plan_that_runs_and_is_journaled() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    env.write("cairn.toml", &model_config(&server));
    let out = env.run(&["plan", "--goal", "generate summary and send email", "--planner", "model", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(plan["planner"], "model:small", "{plan}");
    assert!(plan["plan"].as_array().is_some_and(|p| !p.is_empty()), "{plan}");

    let out = env.run(&["run", "--goal", "generate summary and send email", "--planner", "model"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("(planned by model:small)"), "{}", stderr(&out));
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPLETED");
    let recorded = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::PlanRecorded { plan, .. } => plan,
        _ => None,
    });
    assert_eq!(
        recorded.and_then(|p| p.planner).as_deref(),
        Some("model:small"),
        "the plan is journaled with who made it"
    );
    // Replay derives the run from its journal and never asks the model again.
    drop(server);
    let out = env.run(&["replay", &id]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn with_a_default_model_the_catalogs_model_steps_call_it() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    env.write("cairn.toml", &model_config(&server));
    let out = env.run(&["run", "--goal", "generate summary and send email"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let summary = env.step(&id, "generate_summary");
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--step", "generate_summary", "--json"])))
            .expect("json");
    assert_eq!(shown["kind"], "llm", "{shown}");
    assert_eq!(shown["output"]["value"]["model"], "small", "{shown}");
    assert!(shown["output"]["value"]["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0), "{shown}");
    assert_eq!(summary.status, "COMPLETED");
    // Without a config the stand-in stays.
    let offline = Env::new();
    assert!(offline.run(&["run", "--goal", "generate summary and send email"]).status.success());
    let id = offline.only_run().id;
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&offline.run(&["runs", "show", &id, "--step", "generate_summary", "--json"])))
            .expect("json");
    assert_eq!(shown["kind"], "mock_model", "{shown}");
}

#[test]
fn an_agent_on_the_real_model_acts_in_the_json_action_format_and_its_final_answer_fits() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    let mut config = model_config(&server);
    config.push_str("\n[tools.workspace]\ntype = \"file\"\nroot = \"./box\"\n");
    std::fs::create_dir(env.dir.path().join("box")).expect("box");
    std::fs::write(env.dir.path().join("box/capital.txt"), "The capital of France is Paris.").expect("file");
    env.write("cairn.toml", &config);
    let wf = env.write(
        "wf.yaml",
        "name: agent\nsteps:\n  - id: find\n    kind: agent\n    with:\n      model: small\n      task: \"Read the file capital.txt with the workspace tool, then give the city as the final answer.\"\n      tools: [workspace]\n      max_turns: 6\n      max_tokens: 120\n      temperature: 0\n      output_schema: {type: object, properties: {city: {type: string}}, required: [city]}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    let id = env.only_run().id;
    let step = env.step(&id, "find");
    // A 135M model may or may not find its way in six turns; every answer it gives must be a
    // usable action (the provider holds it to the action schema), and an end is either a final
    // answer that fits or max_turns.
    match out.status.code() {
        Some(0) => {
            let shown: serde_json::Value =
                serde_json::from_str(&stdout(&env.run(&["runs", "show", &id, "--step", "find", "--json"])))
                    .expect("json");
            let output = &shown["output"]["value"];
            assert!(output["final"]["city"].is_string(), "{shown}");
            assert!(output["turns"].as_u64().is_some_and(|t| (1..=6).contains(&t)), "{shown}");
        }
        _ => assert_eq!(step.error_class.as_deref(), Some("max_turns"), "{step:?}\n{}", stderr(&out)),
    }
    let calls = env.block(env.store().calls(&cairn_core::RunId::parse(&id).expect("id"), Some("find"))).expect("calls");
    assert!(calls.iter().any(|c| c.kind == "llm"), "{calls:?}");
    env.assert_journal_is_sound(&id);
}

#[test]
fn an_agent_on_the_real_model_killed_after_its_first_turn_resumes_without_asking_it_again() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    let mut config = model_config(&server);
    config.push_str("\n[tools.workspace]\ntype = \"file\"\nroot = \"./box\"\n");
    std::fs::create_dir(env.dir.path().join("box")).expect("box");
    std::fs::write(env.dir.path().join("box/capital.txt"), "The capital of France is Paris.").expect("file");
    env.write("cairn.toml", &config);
    let wf = env.write(
        "wf.yaml",
        "name: agent\nsteps:\n  - id: find\n    kind: agent\n    retry: {max_attempts: 3, initial_delay: 100ms}\n    with:\n      model: small\n      task: \"Read the file capital.txt with the workspace tool, then give the city as the final answer.\"\n      tools: [workspace]\n      max_turns: 3\n      max_tokens: 120\n      temperature: 0\n",
    );
    // The process dies once the first model turn is recorded, before anything else is done.
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_CALL", "find/1")]);
    wait_line(&lines, "holding after call 1", std::time::Duration::from_secs(120));
    sigkill(&mut child);
    let id = env.only_run().id;
    let run = cairn_core::RunId::parse(&id).expect("id");
    let before = env.block(env.store().calls(&run, Some("find"))).expect("calls");
    assert_eq!(before.iter().map(|c| (c.n, c.kind.as_str(), c.attempt)).collect::<Vec<_>>(), [(1, "llm", 1)]);
    let out = env.run(&["resume"]);
    let step = env.step(&id, "find");
    assert!(out.status.success() || step.error_class.as_deref() == Some("max_turns"), "{step:?}\n{}", stderr(&out));
    // The paid first turn came back from the record: its row is still attempt 1's, and the next
    // attempt's log says so.
    let after = env.block(env.store().calls(&run, Some("find"))).expect("calls");
    let first = after.iter().find(|c| c.n == 1).expect("call 1");
    assert_eq!((first.attempt, first.request_hash.as_str()), (1, before[0].request_hash.as_str()));
    let logs = stdout(&env.run(&["runs", "logs", &id, "--step", "find"]));
    assert!(logs.contains("call 1 (llm,") && logs.contains("returned the recorded result; not sent again"), "{logs}");
    env.assert_journal_is_sound(&id);
}
