//! Fair progress: one wide run never holds more than its share of an engine's activity slots,
//! so a small run started after it still gets to run at once.

use cairn_core::event::{Envelope, Event};
use cairn_core::validate::parse_definition;
use cairn_engine::{Engine, EngineConfig, NewRun};
use cairn_store::{Durability, Journal, SqliteStore};
use serde_json::json;
use std::sync::Arc;

/// Most attempts of one run that were in flight at the same moment, from its journal.
fn max_overlap(events: &[Envelope]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events {
        match e.event {
            Event::AttemptStarted { .. } => {
                now += 1;
                max = max.max(now);
            }
            Event::AttemptSucceeded { .. } | Event::AttemptFailed { .. } => now = now.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn run(yaml: &str) -> NewRun {
    NewRun::inline(parse_definition(yaml, "t.yaml", &cairn_engine::kinds::builtin().specs()).expect("valid"), json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_run_keeps_to_its_share_and_a_small_run_is_not_starved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("f.db"), Durability::Normal).expect("open"));
    let mut config = EngineConfig::new("fair:1:x".into());
    config.concurrency = 4;
    config.max_per_run = 2;
    let engine = Engine::new(store.clone(), config, None);

    let mut wide = String::from("name: wide\nsteps:\n");
    for i in 0..12 {
        wide.push_str(&format!("  - {{id: s{i}, kind: mock_model, with: {{prompt: busy, latency: 80ms}}}}\n"));
    }
    let wide_id = cairn_engine::new_run_id();
    let wide_task = engine.start(wide_id.clone(), run(&wide)).await.expect("start wide");
    let small_id = cairn_engine::new_run_id();
    let small_task = engine
        .start(
            small_id.clone(),
            run("name: small\nsteps:\n  - {id: only, kind: mock_model, with: {prompt: busy, latency: 10ms}}\n"),
        )
        .await
        .expect("start small");

    let small = small_task.await.expect("join").expect("small run");
    let wide_still_running = !wide_task.is_finished();
    let wide = wide_task.await.expect("join").expect("wide run");
    assert_eq!(small.status, cairn_core::RunStatus::Completed);
    assert_eq!(wide.status, cairn_core::RunStatus::Completed);
    assert!(wide_still_running, "the small run finished only after the wide one: it was starved");

    let wide_events = store.events(&wide_id).await.expect("events");
    assert_eq!(max_overlap(&wide_events), 2, "the wide run used more (or fewer) than its 2 slots");
    let small_events = store.events(&small_id).await.expect("events");
    let small_done = small_events.last().map(|e| e.at_ms).unwrap_or(i64::MAX);
    let wide_done = wide_events.last().map(|e| e.at_ms).unwrap_or(0);
    assert!(small_done + 200 < wide_done, "small finished at {small_done}, wide at {wide_done}");
}

/// Many runs waiting for few slots all get through: a slot a waiting run is woken with is used
/// by it, not handed on to the next waiter (which could pass it around while nobody starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_waiting_for_one_slot_all_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("w.db"), Durability::Normal).expect("open"));
    let mut config = EngineConfig::new("wait:1:x".into());
    config.concurrency = 1;
    config.max_per_run = 1;
    let engine = Engine::new(store.clone(), config, None);
    let yaml = "name: chain\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo, needs: [a]}\n  - {id: c, kind: echo, needs: [b]}\n";
    let mut tasks = Vec::new();
    for _ in 0..40 {
        tasks.push(engine.start(cairn_engine::new_run_id(), run(yaml)).await.expect("start"));
    }
    let all = async {
        for t in tasks {
            let outcome = t.await.expect("join").expect("run");
            assert_eq!(outcome.status, cairn_core::RunStatus::Completed);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), all)
        .await
        .expect("every run finished: none was left waiting for a slot it never got");
}
