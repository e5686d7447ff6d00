//! `cairn bench --shape map`: one run whose step runs `for_each` over many no-op items with
//! `max_parallel`, on the embedded SQLite store or on PostgreSQL. It measures what dynamic steps
//! cost: item-steps per second (each item is an instance with its own journaled attempt).

use crate::{CliError, CliResult};
use cairn_core::{RunStatus, StepStatus};
use cairn_engine::{Engine, EngineConfig, NewRun};
use cairn_store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

fn definition(items: usize, max_parallel: usize) -> String {
    format!(
        "name: bench-map\nsteps:\n  - id: list\n    kind: noop\n  - id: each\n    kind: noop\n    needs: [list]\n    for_each: {:?}\n    max_parallel: {max_parallel}\n    max_items: {items}\n",
        (0..items).collect::<Vec<_>>()
    )
}

/// Runs the map `rounds` times on `store` and prints one row per round.
pub async fn bench_map<S: Store>(store: Arc<S>, items: usize, max_parallel: usize, json_out: bool) -> CliResult {
    let mut config = EngineConfig::new(cairn_engine::owner_id());
    config.concurrency = max_parallel.max(1);
    config.max_per_run = max_parallel.max(1);
    let engine = Engine::new(store.clone(), config, None);
    cairn_engine::say!("cairn bench --shape map: {}", store.describe());
    cairn_engine::say!("host: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let text = definition(items, max_parallel);
    let def = cairn_core::validate::parse_definition(&text, "bench-map.yaml", crate::kinds::kinds())
        .map_err(|p| CliError::env(format!("the bench definition is invalid: {p:?}")))?;
    // A short warm-up round (page cache, prepared statements), then the measured one.
    for (round, n) in [("warm-up", items.min(500)), ("measured", items)] {
        let mut def = def.clone();
        if let Some(each) = def.steps.get_mut(1).and_then(|s| s.for_each.as_mut()) {
            each.items = json!((0..n).collect::<Vec<_>>());
        }
        let new = NewRun::inline(def, json!({}));
        let started = Instant::now();
        let driving = engine.start(cairn_engine::new_run_id(), new).await?;
        let outcome = driving.await.map_err(|e| CliError::env(e.to_string()))??;
        let seconds = started.elapsed().as_secs_f64();
        let state = &outcome.state;
        let done = state.steps.iter().filter(|s| s.status == StepStatus::Completed).count();
        if state.status != RunStatus::Completed || done != n + 2 {
            return Err(CliError::env(format!(
                "the map run ended {} with {done} of {} steps completed",
                state.status,
                n + 2
            )));
        }
        if round == "warm-up" {
            continue;
        }
        let row = json!({
            "shape": "map",
            "store": store.describe(),
            "items": n,
            "max_parallel": max_parallel,
            "seconds": seconds,
            "item_steps_per_s": n as f64 / seconds,
            "events": state.last_seq,
        });
        if json_out {
            crate::out!("{row}");
        } else {
            crate::out!(
                "for_each over {n} no-op items, max_parallel {max_parallel}: {seconds:.2} s, {:.0} item-steps/s ({} events journaled)",
                n as f64 / seconds,
                state.last_seq
            );
        }
    }
    engine.drain();
    Ok(())
}
