//! `context:` under a token budget, against a scripted model on loopback and real sources (an
//! input's documents, a file through the sandboxed file tool, rows through the SQL tool): the
//! prompt holds only what fits, and the lineage ledger (`cairn runs context`, the API) says what
//! was observed, selected and rejected, with digests instead of text.

mod common;

use common::fake_model::{FakeProvider, Reply};
use common::*;
use serde_json::Value;

#[test]
fn only_the_best_matching_candidates_under_the_budget_reach_the_model_and_the_ledger_says_why() {
    let fake = FakeProvider::start();
    let env = Env::new();
    let c = rusqlite::Connection::open(env.dir.path().join("orders.db")).expect("sqlite");
    c.execute_batch("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, note TEXT); INSERT INTO orders(customer, note) VALUES ('ann', 'refund requested for a damaged kettle'), ('bob', 'delivered on time');")
        .expect("orders");
    std::fs::create_dir(env.dir.path().join("kb")).expect("kb");
    env.write(
        "kb/policy.md",
        "Refunds for damaged goods are paid at once, without a return.\n\nGift cards are never refunded.",
    );
    env.write(
        "cairn.toml",
        &format!(
            "default_model = \"fake\"\n\n[providers.fake]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[models.fake]\nprovider = \"fake\"\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n\n[tools.orders_db]\ntype = \"sql_query\"\nconnection = \"sqlite://orders.db\"\n\n[tools.kb]\ntype = \"file\"\nroot = \"kb\"\n",
            fake.base_url
        ),
    );
    fake.then([Reply::says("We will refund the kettle at once.", 90, 9)]);
    let wf = env.write(
        "wf.yaml",
        r#"name: reply
inputs:
  email: {default: "My kettle arrived damaged. I want a refund."}
  faq:
    default:
      - {id: shipping, text: "Shipping takes three days to most countries."}
      - {id: refunds, text: "Refunds are paid to the card used for the order, within 14 days."}
      - "Our office dog is called Biscuit."
steps:
  - id: draft
    kind: llm
    with:
      system: You answer customers.
      prompt: "Draft a reply to: {{ inputs.email }}"
      context:
        query: "damaged kettle refund"
        max_tokens: 40
        sources:
          - {name: faq, documents: "{{ inputs.faq }}"}
          - {name: policy, file: {tool: kb, path: policy.md}}
          - {name: orders, sql: {tool: orders_db, sql: "SELECT customer, note FROM orders ORDER BY id"}}
"#,
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.only_run().id;
    let messages = fake.received()[0]["messages"].clone();
    assert_eq!(messages[0]["content"], "You answer customers.", "the instructions stay as written");
    let system = messages[1]["content"].as_str().unwrap_or_default().to_string();
    assert!(system.starts_with("Context (selected from 6 candidate(s) under a budget of 40 tokens"), "{system}");
    assert!(system.ends_with("Draft a reply to: My kettle arrived damaged. I want a refund."), "{system}");
    assert!(system.contains("[orders#0]") && system.contains("damaged kettle"), "{system}");
    assert!(!system.contains("Biscuit") && !system.contains("three days"), "what does not match stays out: {system}");
    // The ledger: every candidate, with its verdict, digest and tokens, and no text.
    let shown = env.run(&["runs", "context", &id, "--step", "draft", "--json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let ledgers: Value = serde_json::from_str(&stdout(&shown)).expect("json");
    let ledger = &ledgers[0]["ledger"];
    assert_eq!((ledger["observed"].as_u64(), ledger["max_tokens"].as_u64()), (Some(6), Some(40)));
    assert!(ledger["used_tokens"].as_u64().unwrap_or(99) <= 40, "{ledger}");
    let verdicts: Vec<(String, String)> = ledger["candidates"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["ref"].as_str().unwrap_or_default().to_string(), r["why"].as_str().unwrap_or_default().to_string()))
        .collect();
    let verdict = |r: &str| verdicts.iter().find(|(x, _)| x == r).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(verdict("orders#0"), "selected", "{verdicts:?}");
    assert_eq!(verdict("faq#2"), "no_match", "{verdicts:?}");
    assert_eq!(verdict("orders#1"), "no_match", "{verdicts:?}");
    assert!(verdicts.iter().any(|(_, v)| v == "over_budget"), "the budget left something out: {verdicts:?}");
    assert!(!ledger.to_string().contains("kettle"), "digests, not text: {ledger}");
    let text = stdout(&env.run(&["runs", "context", &id]));
    assert!(text.contains("over budget") && text.contains("of 40 tokens"), "{text}");
    // The sources were read as journaled calls, then the ledger, then the model.
    use cairn_store::EffectLog;
    let store = env.store();
    let kinds: Vec<String> = env
        .block(store.calls(&cairn_core::RunId::parse(&id).expect("id"), Some("draft")))
        .expect("calls")
        .iter()
        .map(|c| c.kind.clone())
        .collect();
    assert_eq!(kinds, ["tool", "tool", "context", "llm"]);
    // The API says the same; an unknown step is a 404.
    let server = env.serve(&[]);
    let api = get(&server.addr, &format!("/v1/runs/{id}/context?step=draft")).json();
    assert_eq!(api["ledgers"][0]["ledger"], *ledger);
    assert_eq!(
        get(&server.addr, &format!("/v1/runs/{id}/context?step=nope")).json()["error"]["code"],
        "step_not_found"
    );
}

#[test]
fn a_context_source_that_would_write_is_refused_before_anything_is_sent() {
    let fake = FakeProvider::start();
    let env = Env::new();
    std::fs::create_dir(env.dir.path().join("kb")).expect("kb");
    env.write(
        "cairn.toml",
        &format!(
            "default_model = \"fake\"\n\n[providers.fake]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[models.fake]\nprovider = \"fake\"\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n\n[tools.hook]\ntype = \"http_request\"\nurl = \"http://127.0.0.1:9/x\"\nmethod = \"POST\"\n",
            fake.base_url
        ),
    );
    let wf = env.write(
        "wf.yaml",
        "name: bad\nsteps:\n  - id: draft\n    kind: llm\n    with:\n      prompt: hi\n      context:\n        max_tokens: 100\n        sources:\n          - {name: x, sql: {tool: hook, sql: \"SELECT 1\"}}\n",
    );
    let out = env.run(&["run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let step = env.step(&env.only_run().id, "draft");
    let error = step.error_message.unwrap_or_default();
    assert!(error.contains("context source 'x'") && error.contains("not a read"), "{error}");
    assert!(fake.received().is_empty(), "the model was not asked");
}
