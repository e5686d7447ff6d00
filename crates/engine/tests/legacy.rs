//! Runs pinned by an older release keep behaving as they were planned: a definition records the
//! roles of its steps only since kinds declared them, and a `sleep` step of such a definition
//! still sleeps inside an attempt (new definitions make it a durable wait).

use cairn_core::validate::parse_definition;
use cairn_engine::{Engine, EngineConfig, NewRun};
use cairn_store::{Durability, Journal, SqliteStore};
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_pinned_before_it_became_a_wait_still_sleeps_in_an_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("l.db"), Durability::Normal).expect("open"));
    let engine = Engine::new(store.clone(), EngineConfig::new("legacy:1:x".into()), None);
    let kinds = cairn_engine::kinds::builtin().specs();
    let mut definition =
        parse_definition("name: old\nsteps:\n  - {id: nap, kind: sleep, with: {duration: 20ms}}\n", "old.yaml", &kinds)
            .expect("valid");
    assert!(definition.steps[0].role.is_some(), "new definitions record the wait role");
    definition.steps[0].role = None; // as pinned by an older release
    let new = NewRun::inline(definition, json!({}));
    let outcome =
        engine.start(cairn_engine::new_run_id(), new).await.expect("start").await.expect("join").expect("run");
    assert_eq!(outcome.status, cairn_core::RunStatus::Completed);
    let step = &outcome.state.steps[0];
    assert_eq!(step.attempts, 1, "it ran as an attempt");
    let output = step.output.as_ref().expect("output");
    let value = store.payload(&output.hash).await.expect("payload");
    assert_eq!(value, Some(json!({"slept_ms": 20})));
}
